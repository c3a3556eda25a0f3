//! InternLM3: mlx-lm's `models/internlm3.py` — the Llama block with
//! `qkv_bias` on q/k/v *and* o_proj, `bias` on the MLP, untied by default;
//! `rope_scaling` must be `linear` or `dynamic`.

use mlxrs_core::Result;
use serde_json::{Value, json};

use super::base::{reject_unhandled, with_default};
use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// Registry entry for `internlm3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "internlm3", "rope_scaling", |v| {
    let t = v.get("rope_type").or_else(|| v.get("type"));
    matches!(t.and_then(Value::as_str), Some("linear" | "dynamic"))
  })?;
  let mut cfg = with_default(
    config,
    &[
      ("tie_word_embeddings", json!(false)),
      ("max_position_embeddings", json!(32768)),
      ("bias", json!(false)),
      ("qkv_bias", json!(false)),
    ],
  );
  let qkv_bias = cfg["qkv_bias"].as_bool().unwrap_or(false);
  if let Some(o) = cfg.as_object_mut() {
    o.remove("head_dim");
    let bias = o.get("bias").cloned().unwrap_or(json!(false));
    o.insert("mlp_bias".into(), bias);
  }
  let args: LlamaArgs = parse_args(&cfg)?;
  Ok(Box::new(Llama::new(
    args,
    Variant {
      qkv_bias,
      o_bias: qkv_bias,
      ..Variant::default()
    },
  )?))
}
