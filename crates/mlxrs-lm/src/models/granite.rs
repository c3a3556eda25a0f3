//! Granite (IBM Granite 3.x dense): mlx-lm's `models/granite.py` — the
//! Llama block with four scalar multipliers: on the input embeddings, as
//! the attention scale, on each residual branch, and a divisor of the
//! logits.

use mlxrs_core::Result;
use serde::Deserialize;
use serde_json::{Value, json};

use super::base::with_default;
use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// The multipliers of mlx-lm granite.py's `ModelArgs` (the rest are
/// llama.py's).
#[derive(Debug, Clone, Deserialize)]
pub struct GraniteScales {
  /// `embedding_multiplier`
  pub embedding_multiplier: f32,
  /// `attention_multiplier` (the attention scale)
  pub attention_multiplier: f32,
  /// `residual_multiplier`
  pub residual_multiplier: f32,
  /// `logits_scaling` (logits are divided by it)
  pub logits_scaling: f32,
}

/// Registry entry for `granite`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let mut cfg = with_default(config, &[("tie_word_embeddings", json!(true))]);
  // granite.py: head_dim is always hidden_size / num_attention_heads.
  if let Some(o) = cfg.as_object_mut() {
    o.remove("head_dim");
  }
  let s: GraniteScales = parse_args(&cfg)?;
  let args: LlamaArgs = parse_args(&cfg)?;
  if s.logits_scaling == 0.0 {
    return Err(mlxrs_core::Error::InvalidArgument(
      "config.json (granite): logits_scaling must be non-zero".into(),
    ));
  }
  let bias = args.attention_bias;
  Ok(Box::new(Llama::new(
    args,
    Variant {
      qkv_bias: bias,
      o_bias: bias,
      embedding_scale: s.embedding_multiplier,
      residual_scale: s.residual_multiplier,
      attention_scale: Some(s.attention_multiplier),
      logits_divisor: s.logits_scaling,
      ..Variant::default()
    },
  )?))
}
