//! Generation benchmark (python `mlx_lm.benchmark`): a model folder or a
//! named real-model shape with random weights made in-process, timed for
//! prompt processing and generation.

use std::time::Instant;

use mlxrs_core::{Array, Dtype, memory};
use mlxrs_nn::{QuantConfig, Weights};
use serde_json::{Value, json};

use crate::continuous::{BatchGenerator, NewRow, RowConfig};
use crate::error::{Error, Result};
use crate::generate::{StepConfig, TokenGenerator};
use crate::model::{LanguageModel, build_model};

/// Prompts prefilled together by [`run_batch_trial`] (python
/// `BatchGenerator(prefill_batch_size=8)`).
pub const PREFILL_BATCH_SIZE: usize = 8;

/// Named shapes (config.json of the real models, weights random).
pub const SHAPES: &[&str] = &[
  "llama-3.2-1b",
  "qwen3-0.6b",
  "qwen3-4b",
  "smollm2-135m",
  "llama-3.1-8b",
  "gemma3-270m",
  "gemma3-1b",
];

/// The config.json of a named shape.
pub fn shape_config(name: &str) -> Result<Value> {
  let c = match name {
    "llama-3.2-1b" => json!({
      "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
      "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-5,
      "vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 131072,
      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "tie_word_embeddings": true}),
    "llama-3.1-8b" => json!({
      "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
      "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
      "vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 131072,
      "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "tie_word_embeddings": false}),
    "qwen3-0.6b" => json!({
      "model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28, "intermediate_size": 3072,
      "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
      "vocab_size": 151936, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
      "tie_word_embeddings": true}),
    "qwen3-4b" => json!({
      "model_type": "qwen3", "hidden_size": 2560, "num_hidden_layers": 36, "intermediate_size": 9728,
      "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
      "vocab_size": 151936, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
      "tie_word_embeddings": true}),
    "smollm2-135m" => json!({
      "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
      "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
      "vocab_size": 49152, "rope_theta": 100000.0, "max_position_embeddings": 8192,
      "tie_word_embeddings": true}),
    "gemma3-270m" => json!({
      "model_type": "gemma3_text", "hidden_size": 640, "num_hidden_layers": 18, "intermediate_size": 2048,
      "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "rms_norm_eps": 1e-6,
      "vocab_size": 262144, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
      "query_pre_attn_scalar": 256.0, "sliding_window": 512, "sliding_window_pattern": 6,
      "max_position_embeddings": 32768}),
    "gemma3-1b" => json!({
      "model_type": "gemma3_text", "hidden_size": 1152, "num_hidden_layers": 26, "intermediate_size": 6912,
      "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "rms_norm_eps": 1e-6,
      "vocab_size": 262144, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
      "query_pre_attn_scalar": 256.0, "sliding_window": 512, "sliding_window_pattern": 6,
      "max_position_embeddings": 32768}),
    other => {
      return Err(Error::Core(mlxrs_core::Error::InvalidArgument(format!(
        "unknown shape {other:?}; known: {}",
        SHAPES.join(", ")
      ))));
    }
  };
  Ok(c)
}

/// A model of a named shape with random weights of `dtype`, quantized to
/// `bits` (group `group_size`, affine) when given.
pub fn random_model(
  name: &str,
  dtype: Dtype,
  bits: Option<i32>,
  group_size: i32,
  seed: u64,
) -> Result<Box<dyn LanguageModel>> {
  let cfg = shape_config(name)?;
  let mut model = build_model(&cfg)?;
  let quant = match bits {
    Some(b) => Some(QuantConfig::from_json(
      &json!({"group_size": group_size, "bits": b}),
    )?),
    None => None,
  };
  let mut w = Weights::random(dtype, seed, quant)?;
  model.load(&mut w);
  w.finish()?;
  let mut params = Vec::new();
  model.visit(&mut |_, a| params.push(a.clone()));
  mlxrs_core::eval(&params)?;
  drop(params);
  crate::model::fuse_for_inference(model.as_mut())?;
  Ok(model)
}

/// One benchmark trial's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
  /// Prompt tokens.
  pub prompt_tokens: usize,
  /// Prompt tokens / s.
  pub prompt_tps: f64,
  /// Generated tokens.
  pub generation_tokens: usize,
  /// Generated tokens / s (after the first token).
  pub generation_tps: f64,
  /// Peak MLX memory, GB.
  pub peak_memory_gb: f64,
}

/// Time prefill of `prompt_tokens` random ids and greedy generation of
/// `gen_tokens` (python `mlx_lm.benchmark`'s trial).
pub fn run_trial(
  model: &dyn LanguageModel,
  prompt_tokens: usize,
  gen_tokens: usize,
  seed: u64,
) -> Result<BenchResult> {
  if prompt_tokens == 0 || gen_tokens == 0 {
    return Err(Error::Core(mlxrs_core::Error::InvalidArgument(
      "prompt and generation lengths must be > 0".into(),
    )));
  }
  let vocab = model.vocab_size();
  let mut ids = mlxrs_core::random::randint(
    &Array::scalar(0i32),
    &Array::scalar(vocab),
    &[prompt_tokens as i32],
    Dtype::Int32,
    Some(&mlxrs_core::random::key(seed)?),
  )?;
  let prompt = ids.to_vec::<i32>()?;
  memory::reset_peak_memory()?;
  let cfg = StepConfig {
    max_tokens: gen_tokens,
    ..StepConfig::default()
  };
  let mut g = TokenGenerator::new(model, &prompt, &cfg, None)?;
  let mut n = 0;
  let mut t_first = None;
  for s in &mut g {
    s?;
    n += 1;
    if n == 1 {
      t_first = Some(Instant::now());
    }
  }
  let gen_time = t_first.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
  Ok(BenchResult {
    prompt_tokens,
    prompt_tps: prompt_tokens as f64 / g.prompt_time.max(1e-9),
    generation_tokens: n,
    generation_tps: if n > 1 {
      (n - 1) as f64 / gen_time.max(1e-9)
    } else {
      0.0
    },
    peak_memory_gb: memory::peak_memory()? as f64 / 1e9,
  })
}

/// Time a batch of `batch` random prompts of `prompt_tokens` ids each,
/// decoded greedily together for `gen_tokens` tokens per row through the
/// continuous-batching [`BatchGenerator`] (python `mlx_lm.benchmark -b`,
/// which runs `BatchGenerator`). `prompt_tps`: all prompt tokens over the
/// time until every row has its first token; `generation_tps`: the tokens
/// after that, summed over rows, over the rest of the time (aggregate
/// decode throughput).
pub fn run_batch_trial(
  model: &dyn LanguageModel,
  batch: usize,
  prompt_tokens: usize,
  gen_tokens: usize,
  seed: u64,
) -> Result<BenchResult> {
  if batch == 0 || prompt_tokens == 0 || gen_tokens == 0 {
    return Err(Error::Core(mlxrs_core::Error::InvalidArgument(
      "batch size, prompt and generation lengths must be > 0".into(),
    )));
  }
  let vocab = model.vocab_size();
  let ids = mlxrs_core::random::randint(
    &Array::scalar(0i32),
    &Array::scalar(vocab),
    &[batch as i32, prompt_tokens as i32],
    Dtype::Int32,
    Some(&mlxrs_core::random::key(seed)?),
  )?
  .to_vec::<i32>()?;
  memory::reset_peak_memory()?;
  let t0 = Instant::now();
  let mut batcher = BatchGenerator::new(model, 2048, 0)?;
  if !batcher.batchable() && batch > 1 {
    return Err(Error::Core(mlxrs_core::Error::InvalidArgument(
      "this architecture does not batch (no left-padded forward); use a batch size of 1".into(),
    )));
  }
  let cfg = RowConfig::default();
  let rows: Vec<NewRow> = ids
    .chunks(prompt_tokens)
    .enumerate()
    .map(|(i, prompt)| NewRow {
      id: i as u64,
      prompt,
      cfg: &cfg,
    })
    .collect();
  for group in rows.chunks(PREFILL_BATCH_SIZE) {
    batcher.insert_batch(group)?;
  }
  let t1 = Instant::now();
  let mut n = 0;
  for _ in 1..gen_tokens {
    n += batcher.step()?.len();
  }
  let decode = t1.elapsed().as_secs_f64();
  Ok(BenchResult {
    prompt_tokens: batch * prompt_tokens,
    prompt_tps: (batch * prompt_tokens) as f64 / (t1 - t0).as_secs_f64().max(1e-9),
    generation_tokens: n + batch,
    generation_tps: if n > 0 {
      n as f64 / decode.max(1e-9)
    } else {
      0.0
    },
    peak_memory_gb: memory::peak_memory()? as f64 / 1e9,
  })
}
