//! Qwen1.5-MoE / Qwen2-MoE: mlx-lm's `models/qwen2_moe.py` — the Qwen2
//! attention (q/k/v biases, no o bias, head_dim = hidden / heads, plain
//! RoPE) with every MLP a softmax top-k sparse MoE plus a shared expert
//! gated by `sigmoid(shared_expert_gate(x))`; HF per-expert tensors are
//! stacked by `sanitize`.

use mlxrs_core::Result;
use mlxrs_nn::{Embedding, Linear, RmsNorm, Rope};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, check_moe, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::moe::{MoeBlock, SparseMoe};
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  1000000.0
}

/// `ModelArgs` of mlx-lm's qwen2_moe.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2MoeArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `num_experts`
  pub num_experts: i32,
  /// `moe_intermediate_size`
  pub moe_intermediate_size: i32,
  /// `shared_expert_intermediate_size`
  pub shared_expert_intermediate_size: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads` (default `num_attention_heads`)
  pub num_key_value_heads: Option<i32>,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
}

/// Registry entry for `qwen2_moe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // qwen2_moe.py: plain RoPE, every layer sparse, no norm of the top-k.
  reject_unhandled(config, "qwen2_moe", "rope_scaling", |_| false)?;
  reject_unhandled(config, "qwen2_moe", "norm_topk_prob", |v| {
    v == &Value::Bool(false)
  })?;
  reject_unhandled(config, "qwen2_moe", "mlp_only_layers", |v| {
    v.as_array().is_some_and(Vec::is_empty)
  })?;
  reject_unhandled(config, "qwen2_moe", "decoder_sparse_step", |v| {
    v.as_i64() == Some(1)
  })?;
  let a: Qwen2MoeArgs = parse_args(config)?;
  let (h, nh) = (a.hidden_size, a.num_attention_heads);
  let nkv = a.num_key_value_heads.unwrap_or(nh);
  check_heads("qwen2_moe", h, nh, nkv, a.num_hidden_layers)?;
  check_moe("qwen2_moe", a.num_experts, a.num_experts_per_tok)?;
  let hd = h / nh;
  let dims = AttnDims::new(h, nh, nkv, hd, (true, false));
  let eps = a.rms_norm_eps;
  let layers = (0..a.num_hidden_layers)
    .map(|_| {
      Box::new(MoeBlock {
        self_attn: Attention::new(
          dims,
          Some(Rope::new(hd, a.rope_traditional, a.rope_theta, 1.0)),
        ),
        mlp: SparseMoe::new(
          h,
          a.moe_intermediate_size,
          a.num_experts,
          a.num_experts_per_tok,
          false,
          Some(a.shared_expert_intermediate_size),
        ),
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
      }) as Box<dyn Layer>
    })
    .collect();
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied: a.tie_word_embeddings,
      stack_experts: Some(a.num_experts),
      sanitize: None,
    },
  )))
}
