//! Seed-OSS (ByteDance): mlx-lm's `models/seed_oss.py` — the Llama block
//! with separate input (`attention_bias`, q/k/v) and output
//! (`attention_out_bias`, o_proj) biases and an explicit `head_dim`; tied
//! by default.

use mlxrs_core::Result;
use serde_json::{Value, json};

use super::base::with_default;
use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// Registry entry for `seed_oss`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  if config.get("head_dim").is_none_or(Value::is_null) {
    return Err(mlxrs_core::Error::InvalidArgument(
      "config.json (seed_oss): missing field `head_dim`".into(),
    ));
  }
  let cfg = with_default(config, &[("tie_word_embeddings", json!(true))]);
  let out_bias = cfg
    .get("attention_out_bias")
    .and_then(Value::as_bool)
    .unwrap_or(false);
  let args: LlamaArgs = parse_args(&cfg)?;
  let in_bias = args.attention_bias;
  Ok(Box::new(Llama::new(
    args,
    Variant {
      qkv_bias: in_bias,
      o_bias: out_bias,
      ..Variant::default()
    },
  )?))
}
