//! SmolLM3: mlx-lm's `models/smollm3.py` — the Llama body where selected
//! layers skip rotary embeddings entirely ("NoPE"): `no_rope_layers[i] == 1`
//! means layer `i` uses RoPE, `0` means it does not (default: every
//! `no_rope_layer_interval`-th layer is NoPE). Tied by default. Built on
//! `models/llama.rs` (as smollm3.py wraps `llama.LlamaModel`), so decoded
//! rows take its fused kernels; one difference: a config with
//! `sliding_attention` layers gets llama.py's rotating caches for them
//! (smollm3.py defines no `make_cache` and keeps every key; the masks give
//! the same attention).

use mlxrs_core::{Error, Result};
use serde::Deserialize;
use serde_json::Value;

use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

fn d_interval() -> i32 {
  4
}

/// The fields smollm3.py's `ModelArgs` adds to llama.py's.
#[derive(Debug, Clone, Deserialize)]
pub struct SmolLm3Extra {
  /// `no_rope_layer_interval`
  #[serde(default = "d_interval")]
  pub no_rope_layer_interval: i32,
  /// `no_rope_layers`: 1 = RoPE, 0 = NoPE, one entry per layer.
  pub no_rope_layers: Option<Vec<i32>>,
}

impl SmolLm3Extra {
  /// Whether each of `n_layers` layers rotates (`ModelArgs.__post_init__`).
  fn use_rope(&self, n_layers: i32) -> Result<Vec<bool>> {
    match &self.no_rope_layers {
      Some(v) => Ok(v.iter().map(|&x| x != 0).collect()),
      None if self.no_rope_layer_interval <= 0 => Err(Error::InvalidArgument(format!(
        "config: no_rope_layer_interval must be positive, got {}",
        self.no_rope_layer_interval
      ))),
      None => Ok(
        (0..n_layers)
          .map(|i| (i + 1) % self.no_rope_layer_interval != 0)
          .collect(),
      ),
    }
  }
}

/// Registry entry for `smollm3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let args: LlamaArgs = parse_args(config)?;
  let extra: SmolLm3Extra = parse_args(config)?;
  let use_rope = extra.use_rope(args.num_hidden_layers)?;
  let bias = args.attention_bias;
  let mut model = Llama::new(
    args,
    Variant {
      qkv_bias: bias,
      o_bias: bias,
      ..Variant::default()
    },
  )?;
  model.without_rope(&use_rope)?;
  Ok(Box::new(model))
}
