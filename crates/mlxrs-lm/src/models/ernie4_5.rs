//! ERNIE 4.5 (dense, e.g. ERNIE-4.5-0.3B): mlx-lm's `models/ernie4_5.py` —
//! the Llama block with `use_bias` on every projection (attention and MLP)
//! and interleaved (traditional) RoPE without scaling.

use mlxrs_core::Result;
use serde_json::{Value, json};

use super::base::reject_unhandled;
use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// Registry entry for `ernie4_5`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "ernie4_5", "rope_scaling", |_| false)?;
  for field in ["use_bias", "tie_word_embeddings", "max_position_embeddings"] {
    if config.get(field).is_none_or(Value::is_null) {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "config.json (ernie4_5): missing field `{field}`"
      )));
    }
  }
  let bias = config["use_bias"].as_bool().unwrap_or(false);
  let mut cfg = config.clone();
  if let Some(o) = cfg.as_object_mut() {
    o.insert("rope_traditional".into(), json!(true));
    o.insert("mlp_bias".into(), json!(bias));
  }
  let args: LlamaArgs = parse_args(&cfg)?;
  Ok(Box::new(Llama::new(
    args,
    Variant {
      qkv_bias: bias,
      o_bias: bias,
      ..Variant::default()
    },
  )?))
}
