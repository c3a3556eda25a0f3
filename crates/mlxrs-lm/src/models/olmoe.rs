//! OLMoE: mlx-lm's `models/olmoe.py` — pre-norm Llama-style blocks whose
//! attention RMS-normalizes q and k over the whole projection (OLMo-2
//! style) before RoPE, and whose MLP is a softmax top-k sparse MoE
//! (`norm_topk_prob` optional); HF per-expert tensors are stacked by
//! `sanitize`. Tied by default.

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
  10000.0
}
fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's olmoe.py.
#[derive(Debug, Clone, Deserialize)]
pub struct OlmoeArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size` (per expert)
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_experts`
  pub num_experts: i32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `norm_topk_prob`
  #[serde(default)]
  pub norm_topk_prob: bool,
  /// `head_dim` (default `hidden_size / num_attention_heads`)
  pub head_dim: Option<i32>,
  /// `max_position_embeddings`
  pub max_position_embeddings: Option<i32>,
  /// `num_key_value_heads` (default `num_attention_heads`)
  pub num_key_value_heads: Option<i32>,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
}

/// Registry entry for `olmoe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // olmoe.py's experts take `mlp_bias`; biased experts are not implemented.
  reject_unhandled(config, "olmoe", "mlp_bias", |v| v == &Value::Bool(false))?;
  // HF's `clip_qkv` clamps q/k/v; olmoe.py (and this) does not.
  reject_unhandled(config, "olmoe", "clip_qkv", |_| false)?;
  let a: OlmoeArgs = parse_args(config)?;
  let (h, nh) = (a.hidden_size, a.num_attention_heads);
  let nkv = a.num_key_value_heads.unwrap_or(nh);
  check_heads("olmoe", h, nh, nkv, a.num_hidden_layers)?;
  check_moe("olmoe", a.num_experts, a.num_experts_per_tok)?;
  let hd = a.head_dim.unwrap_or(h / nh);
  let mut dims = AttnDims::new(h, nh, nkv, hd, (a.attention_bias, a.attention_bias));
  dims.qk_norm_full = Some(a.rms_norm_eps);
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    let rope = Rope::from_config(
      hd,
      a.rope_theta,
      a.rope_traditional,
      a.rope_scaling.as_ref(),
      a.max_position_embeddings,
    )?;
    layers.push(Box::new(MoeBlock {
      self_attn: Attention::new(dims, Some(rope)),
      mlp: SparseMoe::new(
        h,
        a.intermediate_size,
        a.num_experts,
        a.num_experts_per_tok,
        a.norm_topk_prob,
        None,
      ),
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
    }));
  }
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
