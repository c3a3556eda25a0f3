//! GLM-4 (GLM-4-9B-0414 / GLM-Z1): mlx-lm's `models/glm4.py` — RMSNorm
//! blocks with four norms (pre-attention, post-attention-branch,
//! pre-MLP, post-MLP-branch), q/k/v biases (never o_proj), RoPE over the
//! first `partial_rotary_factor` of each head (interleaved by default), a
//! fused `gate_up_proj` SwiGLU MLP, always an `lm_head`.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mlp::FusedSwiGluMlp;
use super::phi::partial_rope_dims;
use crate::model::{LanguageModel, parse_args};

fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's glm4.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Glm4Args {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `attention_bias`
  pub attention_bias: bool,
  /// `head_dim`
  pub head_dim: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `partial_rotary_factor`
  pub partial_rotary_factor: f32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default = "d_true")]
  pub rope_traditional: bool,
}

struct Block {
  self_attn: Attention,
  mlp: FusedSwiGluMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  post_self_attn_layernorm: RmsNorm,
  post_mlp_layernorm: RmsNorm,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm,
  post_self_attn_layernorm,
  post_mlp_layernorm
});

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let a = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let x = ops::add(x, &self.post_self_attn_layernorm.forward(&a)?)?;
    let m = self
      .mlp
      .forward(&self.post_attention_layernorm.forward(&x)?)?;
    ops::add(&self.post_mlp_layernorm.forward(&m)?, &x)
  }

  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.mlp.fuse_projections()
  }
}

/// Registry entry for `glm4`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "glm4", "rope_scaling", |_| false)?;
  let a: Glm4Args = parse_args(config)?;
  let (h, nh, nkv, hd) = (
    a.hidden_size,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.head_dim,
  );
  check_heads("glm4", h, nh, nkv, a.num_hidden_layers)?;
  let rope_dims = partial_rope_dims("glm4", a.partial_rotary_factor, hd)?;
  let dims = AttnDims::new(h, nh, nkv, hd, (a.attention_bias, false));
  let eps = a.rms_norm_eps;
  let layers = (0..a.num_hidden_layers)
    .map(|_| {
      Box::new(Block {
        self_attn: Attention::new(
          dims,
          Some(Rope::new(rope_dims, a.rope_traditional, a.rope_theta, 1.0)),
        ),
        mlp: FusedSwiGluMlp::new(h, a.intermediate_size),
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
        post_self_attn_layernorm: RmsNorm::new(h, eps),
        post_mlp_layernorm: RmsNorm::new(h, eps),
      }) as Box<dyn Layer>
    })
    .collect();
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    Some(Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied: false,
      stack_experts: None,
      sanitize: None,
    },
  )))
}
