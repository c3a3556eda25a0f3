//! Phi (Phi-1, Phi-1.5, Phi-2): mlx-lm's `models/phi.py` — one LayerNorm
//! feeding attention and MLP in parallel (`x + attn(h) + mlp(h)`), biased
//! q/k/v and output projection (`dense`), RoPE over the first
//! `partial_rotary_factor` of each head, a tanh-GELU MLP (`fc1`, `fc2`),
//! `final_layernorm`, and an `lm_head` with a bias.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, LayerNorm, Linear, Rope, gelu_approx, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use crate::model::{LanguageModel, parse_args};

fn d_vocab() -> i32 {
  51200
}
fn d_prf() -> f32 {
  0.4
}
fn d_eps() -> f32 {
  1e-5
}
fn d_theta() -> f32 {
  10000.0
}

/// `ModelArgs` of mlx-lm's phi.py.
#[derive(Debug, Clone, Deserialize)]
pub struct PhiArgs {
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_key_value_heads` (default `num_attention_heads`)
  pub num_key_value_heads: Option<i32>,
  /// `partial_rotary_factor`
  #[serde(default = "d_prf")]
  pub partial_rotary_factor: f32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `layer_norm_eps`
  #[serde(default = "d_eps")]
  pub layer_norm_eps: f32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
}

struct Mlp {
  fc1: Linear,
  fc2: Linear,
}
module!(Mlp { fc1, fc2 });

struct Block {
  self_attn: Attention,
  input_layernorm: LayerNorm,
  mlp: Mlp,
}
module!(Block {
  self_attn,
  input_layernorm,
  mlp
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = self.input_layernorm.forward(x)?;
    let a = self.self_attn.forward(&h, mask, cache)?;
    let m = self
      .mlp
      .fc2
      .forward(&gelu_approx(&self.mlp.fc1.forward(&h)?)?)?;
    ops::add(&ops::add(&a, &m)?, x)
  }
}

/// Rotated dims of a head (`int(partial_rotary_factor * head_dim)`), or an
/// error naming the field.
pub(crate) fn partial_rope_dims(arch: &str, factor: f32, head_dim: i32) -> Result<i32> {
  let dims = (factor * head_dim as f32) as i32;
  if factor > 0.0 && dims > 0 && dims <= head_dim {
    Ok(dims)
  } else {
    Err(mlxrs_core::Error::InvalidArgument(format!(
      "config.json ({arch}): field \"partial_rotary_factor\" = {factor} must give 1..={head_dim} rotated dims"
    )))
  }
}

/// Registry entry for `phi`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "phi", "rope_scaling", |_| false)?;
  let a: PhiArgs = parse_args(config)?;
  let (h, nh) = (a.hidden_size, a.num_attention_heads);
  let nkv = a.num_key_value_heads.unwrap_or(nh);
  check_heads("phi", h, nh, nkv, a.num_hidden_layers)?;
  let hd = h / nh;
  let rope_dims = partial_rope_dims("phi", a.partial_rotary_factor, hd)?;
  let dims = AttnDims::new(h, nh, nkv, hd, (true, true));
  let eps = a.layer_norm_eps;
  let layers = (0..a.num_hidden_layers)
    .map(|_| {
      Box::new(Block {
        self_attn: Attention::new(dims, Some(Rope::new(rope_dims, false, a.rope_theta, 1.0)))
          .with_o_name("dense"),
        input_layernorm: LayerNorm::new(h, eps, true, true),
        mlp: Mlp {
          fc1: Linear::new(h, a.intermediate_size, true),
          fc2: Linear::new(a.intermediate_size, h, true),
        },
      }) as Box<dyn Layer>
    })
    .collect();
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(LayerNorm::new(h, eps, true, true)),
    "final_layernorm",
    Some(Linear::new(h, a.vocab_size, true)),
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
