//! Qwen3: mlx-lm's `models/qwen3.py` — the Llama block with per-head
//! RMSNorm on queries and keys before RoPE, explicit `head_dim`.

use mlxrs_core::Result;
use serde_json::Value;

use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// Registry entry for `qwen3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let args: LlamaArgs = parse_args(config)?;
  let bias = args.attention_bias;
  Ok(Box::new(Llama::new(
    args,
    Variant {
      qkv_bias: bias,
      o_bias: bias,
      qk_norm: true,
      ..Variant::default()
    },
  )?))
}
