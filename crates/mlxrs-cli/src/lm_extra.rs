//! `mlxrs generate` extras: per-token log-probabilities in `--json`,
//! speculative decoding (`--draft-model`), and batch generation (repeated
//! `--prompt` or `--prompts-file`; python `mlx_lm.batch_generate`).

use std::io::Write;

use anyhow::{Context, Result, bail};
use mlxrs_core::Dtype;
use mlxrs_lm::{
  GenerateOptions, LoadOptions, LoadedModel, Response, batch_generate, load, prompt_ids,
};

use crate::{GenerateArgs, parse_dtype, step_config};

/// Per-token figures collected from the stream for `--json`.
#[derive(Default)]
pub struct PerToken {
  logprobs: Vec<Option<f32>>,
  top: Vec<Vec<(i32, f32)>>,
  from_draft: Vec<bool>,
}

impl PerToken {
  pub fn push(&mut self, r: &Response) {
    self.logprobs.push(r.logprob);
    self.top.push(r.top_logprobs.clone());
    self.from_draft.push(r.from_draft);
  }

  /// Add `logprobs` (always), `top_logprobs` (when asked) and, with a
  /// draft model, `from_draft` and the acceptance counts to `v`.
  pub fn add_to(
    self,
    mut v: serde_json::Value,
    top: bool,
    draft: Option<(usize, usize)>,
  ) -> serde_json::Value {
    v["logprobs"] = serde_json::json!(self.logprobs);
    if top {
      v["top_logprobs"] = serde_json::json!(self.top);
    }
    if let Some((proposed, accepted)) = draft {
      v["from_draft"] = serde_json::json!(self.from_draft);
      v["draft_tokens_proposed"] = serde_json::json!(proposed);
      v["draft_tokens_accepted"] = serde_json::json!(accepted);
    }
    v
  }
}

/// Load `--draft-model` (with its tokenizer, to compare vocabularies).
pub fn load_draft(a: &GenerateArgs, dtype: Option<Dtype>) -> Result<Option<LoadedModel>> {
  match &a.draft_model {
    None => Ok(None),
    Some(d) => {
      if !a.image.is_empty() {
        bail!("--draft-model cannot be combined with --image");
      }
      if a.num_draft_tokens == 0 {
        bail!("--num-draft-tokens must be > 0");
      }
      let m = load(
        d,
        &LoadOptions {
          dtype,
          no_tokenizer: false,
        },
      )
      .with_context(|| format!("loading --draft-model {d}"))?;
      Ok(Some(m))
    }
  }
}

fn batch_prompts(a: &GenerateArgs) -> Result<Vec<String>> {
  if let Some(p) = &a.prompts_file {
    let bytes =
      std::fs::read(p).with_context(|| format!("reading --prompts-file {}", p.display()))?;
    let s = String::from_utf8(bytes).map_err(|e| {
      anyhow::anyhow!(
        "--prompts-file {}: not valid UTF-8 (invalid byte at offset {})",
        p.display(),
        e.utf8_error().valid_up_to()
      )
    })?;
    let v: Vec<String> = s
      .lines()
      .map(|l| l.trim_end_matches('\r'))
      .filter(|l| !l.trim().is_empty())
      .map(String::from)
      .collect();
    if v.is_empty() {
      bail!("--prompts-file {}: no prompts (one per line)", p.display());
    }
    return Ok(v);
  }
  if a.prompt.iter().any(|p| p == "-") {
    bail!("--prompt - (stdin) cannot be used with several prompts; use --prompts-file");
  }
  if let Some(i) = a.prompt.iter().position(String::is_empty) {
    bail!("prompt {i} is empty");
  }
  Ok(a.prompt.clone())
}

/// `mlxrs generate --prompt A --prompt B ...` / `--prompts-file F`.
pub fn batch(a: &GenerateArgs, out: &mut dyn Write) -> Result<()> {
  if !a.image.is_empty() {
    bail!("--image cannot be combined with several prompts");
  }
  if a.prompt_cache_file.is_some() {
    bail!("--prompt-cache-file cannot be combined with several prompts");
  }
  if a.draft_model.is_some() {
    bail!("--draft-model cannot be combined with several prompts");
  }
  let prompts = batch_prompts(a)?;
  let dtype = parse_dtype(&a.model.dtype)?;
  let m = load(
    &a.model.model,
    &LoadOptions {
      dtype,
      no_tokenizer: false,
    },
  )?;
  let tok = m
    .tokenizer
    .as_ref()
    .context("the model was loaded without a tokenizer")?;
  let ids = prompts
    .iter()
    .map(|p| prompt_ids(tok, p, a.system_prompt.as_deref(), a.ignore_chat_template))
    .collect::<std::result::Result<Vec<_>, _>>()?;
  let mut opts = GenerateOptions {
    step: step_config(&a.sampling),
    stop: a.sampling.stop.clone(),
  };
  opts.step.top_logprobs = a.top_logprobs;
  // The shared context rule: left-padded rows all span the longest prompt.
  let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
  let bound = mlxrs_lm::limits::bound_generation(m.max_context, 0, longest, opts.step.max_tokens)?;
  if let Some(n) = &bound.note {
    eprintln!("[WARNING] {n}");
  }
  opts.step.max_tokens = bound.max_tokens;
  let outs = batch_generate(m.model.as_ref(), tok, &ids, &opts)?;
  let device = mlxrs_core::Device::default_device()
    .map(|d| d.to_string())
    .unwrap_or_default();
  if a.json {
    let arr: Vec<serde_json::Value> = outs
      .iter()
      .zip(&prompts)
      .zip(&ids)
      .map(|((o, p), pid)| {
        let mut v = serde_json::json!({
          "prompt": p,
          "text": o.text,
          "tokens": o.tokens,
          "prompt_ids": pid,
          "finish_reason": o.finish_reason,
          "prompt_tokens": o.prompt_tokens,
          "generation_tokens": o.generation_tokens,
          "logprobs": o.logprobs,
          "batch_prompt_tps": o.prompt_tps,
          "batch_generation_tps": o.generation_tps,
          "peak_memory_gb": o.peak_memory_gb,
          "device": device,
        });
        if a.top_logprobs > 0 {
          v["top_logprobs"] = serde_json::json!(o.top_logprobs);
        }
        v
      })
      .collect();
    writeln!(out, "{}", serde_json::to_string(&arr)?)?;
    return Ok(());
  }
  for (i, (o, p)) in outs.iter().zip(&prompts).enumerate() {
    writeln!(out, "========== [{i}] {p}")?;
    writeln!(out, "{}", o.text)?;
  }
  if a.verbose {
    if let Some(o) = outs.first() {
      let generated: usize = outs.iter().map(|o| o.generation_tokens).sum();
      let prompt: usize = outs.iter().map(|o| o.prompt_tokens).sum();
      writeln!(out, "==========")?;
      writeln!(
        out,
        "Batch of {}: prompt {prompt} tokens, {:.3} tokens-per-sec",
        outs.len(),
        o.prompt_tps
      )?;
      writeln!(
        out,
        "Generation: {generated} tokens, {:.3} tokens-per-sec",
        o.generation_tps
      )?;
      writeln!(out, "Peak memory: {:.3} GB", o.peak_memory_gb)?;
      writeln!(out, "Device: {device}")?;
    }
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use clap::Parser;

  use super::*;
  use crate::{Cli, Cmd};

  fn tiny(name: &str) -> String {
    format!("{}/../../models/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
  }

  fn gen_args(args: &[&str]) -> GenerateArgs {
    let mut v = vec!["mlxrs", "generate"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v).unwrap().cmd {
      Cmd::Generate(g) => g,
      _ => unreachable!("generate"),
    }
  }

  #[test]
  fn batch_json_rows_equal_single_prompt_generation() {
    let model = tiny("llama");
    let a = gen_args(&[
      "--model",
      &model,
      "--prompt",
      "Hello",
      "--prompt",
      "The quick brown fox",
      "-m",
      "5",
      "--json",
      "--ignore-chat-template",
      "--top-logprobs",
      "3",
    ]);
    let mut buf = Vec::new();
    batch(&a, &mut buf).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let m = load(
      &model,
      &LoadOptions {
        dtype: None,
        no_tokenizer: false,
      },
    )
    .unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    for (row, p) in rows.iter().zip(["Hello", "The quick brown fox"]) {
      assert_eq!(row["prompt"], p);
      let ids = prompt_ids(tok, p, None, true).unwrap();
      let opts = GenerateOptions {
        step: mlxrs_lm::StepConfig {
          max_tokens: 5,
          ..Default::default()
        },
        stop: vec![],
      };
      let single = mlxrs_lm::generate(&m, &ids, &opts).unwrap();
      let got: Vec<i32> = row["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect();
      assert_eq!(got, single.tokens, "{p}");
      assert_eq!(row["text"], single.text.as_str());
      let lps = row["logprobs"].as_array().unwrap();
      assert_eq!(lps.len(), got.len());
      for (a, b) in lps.iter().zip(&single.logprobs) {
        assert!((a.as_f64().unwrap() as f32 - b).abs() < 1e-3);
      }
      assert_eq!(row["top_logprobs"][0].as_array().unwrap().len(), 3);
    }
  }

  #[test]
  fn prompts_file_skips_blank_lines_and_flags_parse() {
    let dir = std::env::temp_dir().join(format!("mlxrs-prompts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("p.txt");
    std::fs::write(&f, "first\r\n\n  \nsecond\n").unwrap();
    let a = gen_args(&["--model", "m", "--prompts-file", f.to_str().unwrap()]);
    assert_eq!(
      batch_prompts(&a).unwrap(),
      vec!["first".to_string(), "second".to_string()]
    );
    std::fs::write(&f, "\n\n").unwrap();
    assert!(
      batch_prompts(&a)
        .unwrap_err()
        .to_string()
        .contains("no prompts")
    );
    let a = gen_args(&["--model", "m", "--prompt", "x", "--prompt", "-"]);
    assert!(batch_prompts(&a).unwrap_err().to_string().contains("stdin"));
    let a = gen_args(&[
      "--model",
      "m",
      "--prompt",
      "x",
      "--draft-model",
      "d",
      "--num-draft-tokens",
      "5",
    ]);
    assert_eq!(
      (a.draft_model.as_deref(), a.num_draft_tokens),
      (Some("d"), 5)
    );
    let a = gen_args(&["--model", "m", "--prompt", "x"]);
    assert_eq!((a.num_draft_tokens, a.top_logprobs), (3, 0));
    assert!(
      Cli::try_parse_from([
        "mlxrs",
        "generate",
        "--model",
        "m",
        "--prompt",
        "x",
        "--prompts-file",
        "f"
      ])
      .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
  }

  #[test]
  fn speculative_json_fields() {
    let a = gen_args(&[
      "--model",
      &tiny("qwen3"),
      "--draft-model",
      &tiny("qwen3-4bit"),
      "--prompt",
      "Hello",
      "-m",
      "9",
    ]);
    let m = load(&a.model.model, &LoadOptions::default()).unwrap();
    let d = load_draft(&a, None).unwrap().unwrap();
    let ids = prompt_ids(m.tokenizer.as_ref().unwrap(), "Hello", None, true).unwrap();
    let mut opts = GenerateOptions {
      step: step_config(&a.sampling),
      stop: vec![],
    };
    opts.step.max_tokens = 9;
    let mut stream = mlxrs_lm::TextStream::new_speculative(&m, &d, &ids, &opts).unwrap();
    let mut per = PerToken::default();
    let mut toks = Vec::new();
    for r in &mut stream {
      let r = r.unwrap();
      if r.token >= 0 {
        per.push(&r);
        toks.push(r.token);
      }
    }
    let stats = stream.draft_stats();
    let v = per.add_to(serde_json::json!({}), false, stats);
    let plain = mlxrs_lm::generate(&m, &ids, &opts).unwrap();
    assert_eq!(toks, plain.tokens);
    let flags = v["from_draft"].as_array().unwrap();
    assert_eq!(flags.len(), toks.len());
    let accepted = flags.iter().filter(|x| x.as_bool().unwrap()).count();
    assert_eq!(
      v["draft_tokens_accepted"].as_u64().unwrap() as usize,
      accepted
    );
    assert!(v.get("top_logprobs").is_none());
    assert_eq!(v["logprobs"].as_array().unwrap().len(), toks.len());
  }
}
