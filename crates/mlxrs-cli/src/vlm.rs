//! `mlxrs generate --model M --image FILE... --prompt P`: generation with
//! images in the prompt (python `mlx_vlm.generate --model M --image FILE
//! --prompt P`). The generate command calls [`generate`] when `--image` is
//! given; everything else (sampling flags, `--max-kv-size`, `--stop`,
//! `--json`, the timing lines) behaves as for text models.
//!
//! `mlxrs chat --model VLM [--image FILE...]`: the multi-turn REPL with
//! images (python `mlx_vlm.chat`), see [`chat`].

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

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

/// The chat command's arguments for a vision-language model.
pub struct VlmChatArgs<'a> {
  /// Model folder or Hub repo id.
  pub model: &'a str,
  /// Compute dtype (`--dtype`).
  pub dtype: Option<Dtype>,
  /// Images attached to the first user message (`--image`).
  pub images: &'a [PathBuf],
  /// System prompt (`--system-prompt`).
  pub system: Option<&'a str>,
  /// Sampling, caches, stop strings (per reply).
  pub opts: GenerateOptions,
  /// Print per-turn statistics (tokens prefilled / reused, image-feature
  /// cache hits, time to first token) after each reply.
  pub verbose: bool,
}

/// The multi-turn REPL with images (python `mlx_vlm.chat`): reads user
/// lines from `input`, streams replies to `out`. Commands: `/image PATH`
/// attaches an image to the next user message, `/clear` (or `r`) resets
/// the conversation, `/exit` (or `q`, or end of input) quits, `/help`.
/// Each turn renders the whole conversation with the chat template and
/// prefills only what the previous turns' KV cache does not hold; images
/// of earlier turns come from the image-feature cache.
pub fn chat(a: &VlmChatArgs<'_>, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<()> {
  for p in a.images {
    if !p.is_file() {
      bail!("--image {}: no such file", p.display());
    }
  }
  let m = mlxrs_vlm::load(a.model, &mlxrs_vlm::LoadOptions { dtype: a.dtype })
    .with_context(|| format!("loading {}", a.model))?;
  let mut session = mlxrs_vlm::VlmChat::new(&m, a.system, a.opts.clone())?;
  for img in m.load_images(a.images)? {
    session.add_image(img);
  }
  writeln!(
    out,
    "[INFO] Starting chat session with {}. Commands: /image PATH, /clear, /exit (or q).",
    a.model
  )?;
  if !a.images.is_empty() {
    writeln!(
      out,
      "[INFO] {} image(s) attached to the first message.",
      a.images.len()
    )?;
  }
  loop {
    write!(out, ">> ")?;
    out.flush()?;
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
      break;
    }
    let line = line.trim_end_matches(['\n', '\r']);
    let (cmd, rest) = match line.split_once(char::is_whitespace) {
      Some((c, r)) => (c, r.trim()),
      None => (line, ""),
    };
    match cmd {
      "q" | "/exit" | "/quit" => break,
      "r" | "/clear" | "/reset" => {
        session.reset();
        writeln!(out, "[INFO] Conversation cleared.")?;
        continue;
      }
      "/help" => {
        writeln!(
          out,
          "/image PATH: attach an image to the next message; /clear: reset; /exit: quit"
        )?;
        continue;
      }
      "/image" => {
        if rest.is_empty() {
          writeln!(out, "[ERROR] /image needs a file path")?;
          continue;
        }
        match m.load_images(&[Path::new(rest)]) {
          Ok(mut v) => {
            session.add_image(v.remove(0));
            writeln!(out, "[INFO] Image {rest} attached to the next message.")?;
          }
          Err(e) => writeln!(out, "[ERROR] {e}")?,
        }
        continue;
      }
      _ if line.trim().is_empty() => continue,
      _ => {}
    }
    let before = m.vision_cache_stats();
    let mut write_err = None;
    let turn = session.send(line, &mut |t| {
      if write_err.is_none() {
        if let Err(e) = write!(out, "{t}").and_then(|_| out.flush()) {
          write_err = Some(e);
        }
      }
    });
    if let Some(e) = write_err {
      return Err(e.into());
    }
    let turn = match turn {
      Ok(t) => t,
      Err(e) => {
        // A bad turn (e.g. an image the model cannot take) leaves the
        // conversation as it was, without the pending images.
        session.clear_pending();
        writeln!(out, "\n[ERROR] {e} (pending images dropped)")?;
        continue;
      }
    };
    writeln!(out)?;
    if a.verbose {
      let after = m.vision_cache_stats();
      writeln!(
        out,
        "[INFO] prompt {} tokens ({} prefilled, {} reused from the cache), image features: {} hit(s), {} miss(es); \
         time to first token {:.3}s, {:.1} tokens-per-sec",
        turn.prompt_tokens,
        turn.prefilled,
        turn.reused,
        after.hits - before.hits,
        after.misses - before.misses,
        turn.ttft_s,
        turn.generation_tps
      )?;
    }
  }
  Ok(())
}
