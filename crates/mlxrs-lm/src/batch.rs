//! Batch generation: mlx-lm's `batch_generate`. Prompts of different
//! lengths are left-padded to one `[B, T]` batch; per-row masks hide the
//! padding, one forward pass per step serves every row, and each row stops
//! on its own (EOS, a stop string, or `max_tokens`).
//!
//! Positions: mlx-lm gives every row its own RoPE offset (`BatchKVCache`
//! offsets `-left_padding`); here all rows share the cache offset, so a
//! row's real tokens sit `padding` positions later. RoPE attention scores
//! depend only on position differences, so the result is the same up to
//! float rounding (the tests check greedy tokens equal the single-prompt
//! ones and mlx-lm's `batch_generate`).

use std::time::Instant;

use mlxrs_core::{Array, memory};
use mlxrs_nn::{AttnMask, KvCacheKind};

use crate::continuous::{BatchGenerator, NewRow, RowConfig, RowToken};
use crate::error::{Error, Result};
use crate::model::LanguageModel;
use crate::text::{FinishReason, GenerateOptions, Output};
use crate::tokenizer::Tokenizer;

/// `model_type`s whose models implement [`LanguageModel::hidden_padded`].
pub const BATCH_MODEL_TYPES: &[&str] = &[
  "apertus",
  "bailing_moe",
  "cohere",
  "dbrx",
  "deepseek_v2",
  "deepseek_v3",
  "ernie4_5",
  "ernie4_5_moe",
  "exaone",
  "gemma",
  "gemma2",
  "gemma3_text",
  "glm4",
  "glm4_moe",
  "gpt_neox",
  "gpt_oss",
  "granite",
  "granitemoe",
  "helium",
  "internlm2",
  "internlm3",
  "llama",
  "llama4_text",
  "mimo",
  "minicpm",
  "minicpm3",
  "mistral",
  "mixtral",
  "nemotron",
  "olmo2",
  "olmoe",
  "phi",
  "phi3",
  "phimoe",
  "qwen2",
  "qwen2_moe",
  "qwen3",
  "qwen3_moe",
  "seed_oss",
  "smollm3",
  "stablelm",
  "starcoder2",
];

fn bad(msg: impl Into<String>) -> Error {
  Error::Core(mlxrs_core::Error::InvalidArgument(msg.into()))
}

/// The `[B, 1, n, offset + n]` boolean mask of `n` new queries after
/// `offset` cached positions: causal (and within `window`), and a key that
/// is padding in its row (`key_valid[b][j] == false`) is seen only by its
/// own position (so that padding rows stay finite and never leak into real
/// tokens).
pub(crate) fn padded_mask(
  key_valid: &[Vec<bool>],
  n: i32,
  offset: i32,
  window: Option<i32>,
) -> mlxrs_core::Result<AttnMask> {
  let total = offset + n;
  let b = key_valid.len();
  let mut m = Vec::with_capacity(b * (n * total) as usize);
  for row in key_valid {
    if row.len() != total as usize {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "key_valid rows have {} positions, the cache will hold {total}",
        row.len()
      )));
    }
    for i in 0..n {
      let q = offset + i;
      for j in 0..total {
        let mut ok = q >= j && (row[j as usize] || q == j);
        if let Some(w) = window {
          ok = ok && q < j + w;
        }
        m.push(ok);
      }
    }
  }
  Ok(AttnMask::Array(Array::from_slice(
    &m,
    &[b as i32, 1, n, total],
  )?))
}

/// Padded batches need standard caches (positions are not rotated or
/// quantized): an `Err` otherwise.
pub(crate) fn check_padded_caches(caches: &[mlxrs_nn::KvCache]) -> mlxrs_core::Result<()> {
  if caches
    .iter()
    .any(|c| c.kind() != KvCacheKind::Standard || c.is_quantized() || c.chunk_size().is_some())
  {
    return Err(mlxrs_core::Error::InvalidArgument(
      "batched generation needs standard (non-rotating, non-quantized, non-chunked) KV caches"
        .into(),
    ));
  }
  Ok(())
}

struct Row {
  id: u64,
  tokens: Vec<i32>,
  logprobs: Vec<f32>,
  top: Vec<Vec<(i32, f32)>>,
  /// Set when a stop string ended the row: the text before it.
  text: Option<String>,
  finish: Option<FinishReason>,
}

impl Row {
  /// Take the row's next token; `true` once it is done (EOS, a stop
  /// string, or `max_tokens`).
  fn push(&mut self, t: &RowToken, tokenizer: &Tokenizer, opts: &GenerateOptions) -> Result<bool> {
    self.tokens.push(t.token);
    self.logprobs.push(t.logprob);
    self.top.push(t.top_logprobs.clone());
    if tokenizer.is_eos(t.token as u32) {
      self.finish = Some(FinishReason::Stop);
      return Ok(true);
    }
    if !opts.stop.is_empty() {
      let max_stop = opts.stop.iter().map(String::len).max().unwrap_or(0);
      let ids: Vec<u32> = self.tokens.iter().map(|&x| x as u32).collect();
      let text = tokenizer.decode(&ids, false)?;
      let from = text.len().saturating_sub(max_stop + 8);
      let from = (0..=from)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
      if let Some(pos) = opts
        .stop
        .iter()
        .filter_map(|s| text[from..].find(s.as_str()).map(|p| p + from))
        .min()
      {
        self.text = Some(text[..pos].to_string());
        self.finish = Some(FinishReason::Stop);
        return Ok(true);
      }
    }
    if self.tokens.len() >= opts.step.max_tokens {
      self.finish = Some(FinishReason::Length);
      return Ok(true);
    }
    Ok(false)
  }
}

/// Generate for several prompts at once (python `mlx_lm.batch_generate(model,
/// tokenizer, prompts, max_tokens=...)`, which runs mlx-lm's
/// `BatchGenerator`): prompt token ids of any lengths, one [`Output`] per
/// prompt in order. The prompts are prefilled as one left-padded batch and
/// decoded together by [`BatchGenerator`]; each row ends on its own, on an
/// EOS token (kept as the last of its `tokens`, as [`crate::generate`] does;
/// mlx-lm's `token_ids` drop it), a stop string (cut from the text) or
/// `max_tokens`, and leaves the batch then. Row `i` samples with
/// `opts.step`'s sampler, seeded `seed + i` when a seed is given, and its own
/// logits processors. Timings (`prompt_tps`, `generation_tps`) are those of
/// the whole batch.
///
/// Supported: the architectures in [`BATCH_MODEL_TYPES`], sliding-window
/// ones included ([`LanguageModel::make_batch_caches`]). Refused with an
/// `Err`: other architectures (more than one prompt), `max_kv_size` and
/// `kv_bits`.
pub fn batch_generate(
  model: &dyn LanguageModel,
  tokenizer: &Tokenizer,
  prompts: &[Vec<u32>],
  opts: &GenerateOptions,
) -> Result<Vec<Output>> {
  let cfg = &opts.step;
  if prompts.is_empty() {
    return Err(bad("batch_generate: no prompts"));
  }
  if let Some(i) = prompts.iter().position(Vec::is_empty) {
    return Err(bad(format!(
      "batch_generate: prompt {i} is empty (no tokens)"
    )));
  }
  if cfg.max_tokens == 0 {
    return Err(bad("max_tokens is 0"));
  }
  if opts.stop.iter().any(String::is_empty) {
    return Err(bad("stop strings must not be empty"));
  }
  if cfg.max_kv_size.is_some() || cfg.kv_bits.is_some() {
    return Err(bad(
      "batch generation does not support --max-kv-size or --kv-bits",
    ));
  }
  if cfg.prefill_step_size == 0 {
    return Err(bad("prefill_step_size must be > 0"));
  }
  let vocab = model.vocab_size();
  for (i, p) in prompts.iter().enumerate() {
    if let Some(&t) = p.iter().find(|&&t| t as i64 >= vocab as i64) {
      return Err(bad(format!(
        "prompt {i}: token {t} is outside the vocabulary [0, {vocab})"
      )));
    }
  }
  let pad_id = tokenizer
    .eos_token_id()
    .map(|t| t as i32)
    .filter(|&t| t < vocab)
    .unwrap_or(0);
  let mut batch = BatchGenerator::new(model, cfg.prefill_step_size, pad_id)?;
  if prompts.len() > 1
    && let Some(why) = batch.batch_refusal()
  {
    return Err(bad(why.to_string()));
  }
  let ids: Vec<Vec<i32>> = prompts
    .iter()
    .map(|p| p.iter().map(|&t| t as i32).collect())
    .collect();
  let row_cfgs: Vec<RowConfig> = (0..prompts.len())
    .map(|i| {
      let mut sampler = cfg.sampler.clone();
      sampler.seed = sampler.seed.map(|s| s.wrapping_add(i as u64));
      RowConfig {
        sampler,
        logits: cfg.logits.clone(),
        top_logprobs: cfg.top_logprobs,
        constraint: None,
        allow_nan: cfg.allow_nan,
      }
    })
    .collect();
  let new_rows: Vec<NewRow> = ids
    .iter()
    .zip(&row_cfgs)
    .enumerate()
    .map(|(i, (prompt, cfg))| NewRow {
      id: i as u64,
      prompt,
      cfg,
    })
    .collect();
  let mut rows: Vec<Row> = (0..prompts.len() as u64)
    .map(|id| Row {
      id,
      tokens: Vec::new(),
      logprobs: Vec::new(),
      top: Vec::new(),
      text: None,
      finish: None,
    })
    .collect();
  let _ = memory::reset_peak_memory();
  let t0 = Instant::now();
  let mut next = batch.insert_batch(&new_rows)?;
  let prompt_time = t0.elapsed().as_secs_f64();
  let t1 = Instant::now();
  loop {
    for t in &next {
      let row = rows
        .iter_mut()
        .find(|r| r.id == t.id)
        .ok_or_else(|| bad("internal: a token for an unknown row"))?;
      if row.push(t, tokenizer, opts)? {
        batch.remove(row.id)?;
      }
    }
    if batch.is_empty() {
      break;
    }
    next = batch.step()?;
  }
  let gen_time = t1.elapsed().as_secs_f64();
  let total_prompt: usize = prompts.iter().map(Vec::len).sum();
  let total_gen: usize = rows.iter().map(|r| r.tokens.len()).sum();
  let peak = memory::peak_memory().unwrap_or(0) as f64 / 1e9;
  rows
    .into_iter()
    .zip(prompts)
    .map(|(r, p)| {
      let finish = r.finish.unwrap_or(FinishReason::Length);
      let text = match r.text {
        Some(t) => t,
        None => {
          let ids: Vec<u32> = r
            .tokens
            .iter()
            .filter(|&&t| !tokenizer.is_eos(t as u32))
            .map(|&t| t as u32)
            .collect();
          tokenizer.decode(&ids, false)?
        }
      };
      Ok(Output {
        text,
        generation_tokens: r.tokens.len(),
        from_draft: vec![false; r.tokens.len()],
        tokens: r.tokens,
        finish_reason: finish,
        prompt_tokens: p.len(),
        prompt_tps: total_prompt as f64 / prompt_time.max(1e-9),
        generation_tps: total_gen as f64 / gen_time.max(1e-9),
        peak_memory_gb: peak,
        logprobs: r.logprobs,
        top_logprobs: r.top,
      })
    })
    .collect()
}
