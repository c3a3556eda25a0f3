//! `mlxrs generate --model M --image FILE... --prompt P`: generation with
//! images in the prompt (python `mlx_vlm.generate --model M --image FILE
//! --prompt P`). The generate command calls [`generate`] when `--image` is
//! given; everything else (sampling flags, `--max-kv-size`, `--stop`,
//! `--json`, the timing lines) behaves as for text models.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mlxrs_core::Dtype;
use mlxrs_lm::GenerateOptions;

/// The generate command's arguments that matter with `--image`.
pub struct VlmArgs<'a> {
  /// Model folder or Hub repo id.
  pub model: &'a str,
  /// Compute dtype (`--dtype`).
  pub dtype: Option<Dtype>,
  /// Image files, one per image placeholder, in order (`--image`).
  pub images: &'a [PathBuf],
  /// The prompt text.
  pub prompt: &'a str,
  /// System prompt (`--system-prompt`).
  pub system: Option<&'a str>,
  /// Use the prompt as is, without the chat template
  /// (`--ignore-chat-template`); it must then hold one image placeholder
  /// per image (`<|vision_start|><|image_pad|><|vision_end|>` for
  /// Qwen2-VL, `<image>` for LLaVA / LLaVA-NeXT / PaliGemma,
  /// `<start_of_image>` for Gemma 3).
  pub raw: bool,
  /// Sampling, caches, stop strings.
  pub opts: GenerateOptions,
  /// Print one JSON object instead of streaming (`--json`).
  pub json: bool,
  /// Print the timing lines (`--verbose`).
  pub verbose: bool,
}

/// Load the VLM, build the prompt with the images and stream the answer to
/// `out` in the format of `mlxrs generate`.
pub fn generate(a: &VlmArgs<'_>, out: &mut dyn Write) -> Result<()> {
  if a.images.is_empty() {
    bail!("--image: no image files given");
  }
  if a.prompt.is_empty() {
    bail!("the prompt is empty");
  }
  for p in a.images {
    if !p.is_file() {
      bail!("--image {}: no such file", p.display());
    }
  }
  let m = mlxrs_vlm::load(a.model, &mlxrs_vlm::LoadOptions { dtype: a.dtype })
    .with_context(|| format!("--image needs a vision-language model; loading {}", a.model))?;
  let images = m.load_images(a.images)?;
  let input = m.prepare(a.prompt, &images, a.system, a.raw)?;
  let mut text = String::new();
  let mut tokens = Vec::new();
  let mut last = None;
  if !a.json && a.verbose {
    writeln!(out, "==========")?;
    let files: Vec<String> = a.images.iter().map(|p| p.display().to_string()).collect();
    writeln!(out, "Files: {}", files.join(", "))?;
  }
  for r in m.stream(&input, &a.opts)? {
    let r = r?;
    if !a.json {
      write!(out, "{}", r.text)?;
      out.flush()?;
    }
    text.push_str(&r.text);
    if r.token >= 0 {
      tokens.push(r.token);
    }
    last = Some(r);
  }
  let last = last.context("no output (max tokens is 0?)")?;
  let device = mlxrs_core::Device::default_device()
    .map(|d| d.to_string())
    .unwrap_or_default();
  let dtype_s = m
    .lm
    .dtype
    .map(|d| d.to_string())
    .unwrap_or_else(|| "checkpoint".into());
  let grids: Vec<[u32; 3]> = input.image_grid_thw().to_vec();
  if a.json {
    let v = serde_json::json!({
      "text": text,
      "tokens": tokens,
      "prompt_ids": input.input_ids,
      "image_grid_thw": grids,
      "image_sizes": input.image_sizes,
      "finish_reason": last.finish_reason,
      "prompt_tokens": last.prompt_tokens,
      "prompt_tps": last.prompt_tps,
      "generation_tokens": last.generation_tokens,
      "generation_tps": last.generation_tps,
      "peak_memory_gb": last.peak_memory_gb,
      "device": device,
      "dtype": dtype_s,
    });
    writeln!(out, "{}", serde_json::to_string(&v)?)?;
  } else if a.verbose {
    writeln!(out, "\n==========")?;
    let n_img: usize = input
      .input_ids
      .iter()
      .filter(|&&t| Some(t) == m.tokenizer().token_to_id(m.image_token()))
      .count();
    writeln!(
      out,
      "Prompt: {} tokens ({} image tokens), {:.3} tokens-per-sec",
      last.prompt_tokens, n_img, last.prompt_tps
    )?;
    writeln!(
      out,
      "Generation: {} tokens, {:.3} tokens-per-sec",
      last.generation_tokens, last.generation_tps
    )?;
    writeln!(out, "Peak memory: {:.3} GB", last.peak_memory_gb)?;
    writeln!(out, "Device: {device}, compute dtype: {dtype_s}")?;
  }
  Ok(())
}
