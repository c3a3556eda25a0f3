//! MiniCPM: mlx-lm's `models/minicpm.py` — the Llama block (no biases,
//! head_dim = hidden / heads) with muP scales: embeddings times
//! `scale_emb`, each residual branch times `scale_depth /
//! sqrt(num_hidden_layers)`, and (untied only) the final hidden divided by
//! `hidden_size / dim_model_base` before the head; an untied checkpoint
//! without `lm_head` uses the embedding table.

use mlxrs_core::{Error, Result};
use serde::Deserialize;
use serde_json::{Value, json};

use super::base::with_default;
use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// The muP fields of mlx-lm minicpm.py's `ModelArgs` (the rest are
/// llama.py's).
#[derive(Debug, Clone, Deserialize)]
pub struct MiniCpmScales {
  /// `dim_model_base`
  pub dim_model_base: i32,
  /// `scale_depth`
  pub scale_depth: f32,
  /// `scale_emb`
  pub scale_emb: f32,
}

/// Registry entry for `minicpm`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let mut cfg = with_default(
    config,
    &[
      ("tie_word_embeddings", json!(false)),
      ("rope_theta", json!(1000000.0)),
    ],
  );
  if let Some(o) = cfg.as_object_mut() {
    o.remove("head_dim");
    o.insert("attention_bias".into(), json!(false));
    o.insert("mlp_bias".into(), json!(false));
  }
  let s: MiniCpmScales = parse_args(&cfg)?;
  let args: LlamaArgs = parse_args(&cfg)?;
  if s.dim_model_base <= 0 || args.num_hidden_layers <= 0 {
    return Err(Error::InvalidArgument(
      "config.json (minicpm): dim_model_base and num_hidden_layers must be positive".into(),
    ));
  }
  let tied = args.tie_word_embeddings;
  let layers = args.num_hidden_layers as f32;
  let divisor = if tied {
    1.0
  } else {
    args.hidden_size as f32 / s.dim_model_base as f32
  };
  Ok(Box::new(Llama::new(
    args,
    Variant {
      embedding_scale: s.scale_emb,
      residual_scale: s.scale_depth / layers.sqrt(),
      logits_divisor: divisor,
      head_from_embeddings: true,
      ..Variant::default()
    },
  )?))
}
