//! Qwen2 / Qwen2.5: mlx-lm's `models/qwen2.py` — the Llama block with
//! biases on q/k/v (never on o), tied embeddings by default.

use mlxrs_core::Result;
use serde_json::Value;

use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// Registry entry for `qwen2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let mut cfg = config.clone();
  if cfg.get("tie_word_embeddings").is_none() {
    cfg["tie_word_embeddings"] = Value::Bool(true);
  }
  if cfg.get("rope_theta").is_none() {
    cfg["rope_theta"] = serde_json::json!(1000000.0);
  }
  let args: LlamaArgs = parse_args(&cfg)?;
  Ok(Box::new(Llama::new(
    args,
    Variant {
      qkv_bias: true,
      o_bias: false,
      qk_norm: false,
      ..Variant::default()
    },
  )?))
}
