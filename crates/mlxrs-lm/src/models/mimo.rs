//! MiMo (Xiaomi): mlx-lm's `models/mimo.py` — the Qwen2 block (q/k/v
//! biases, no o bias), untied by default, rope_theta 10000 by default; the
//! multi-token-prediction layers of the checkpoint (`model.mtp_layers.*`)
//! are dropped by `sanitize`.

use mlxrs_core::Result;
use serde_json::{Value, json};

use super::base::with_default;
use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// Registry entry for `mimo`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let mut cfg = with_default(
    config,
    &[
      ("tie_word_embeddings", json!(false)),
      ("rope_theta", json!(10000.0)),
    ],
  );
  if let Some(o) = cfg.as_object_mut() {
    // mimo.py (as qwen2.py): head_dim = hidden / heads, no layer types.
    o.remove("head_dim");
    o.remove("layer_types");
  }
  let args: LlamaArgs = parse_args(&cfg)?;
  Ok(Box::new(Llama::new(
    args,
    Variant {
      qkv_bias: true,
      o_bias: false,
      drop_prefixes: &["model.mtp_layers."],
      ..Variant::default()
    },
  )?))
}
