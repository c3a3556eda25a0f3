//! StarCoder2: mlx-lm's `models/starcoder2.py` — pre-LayerNorm blocks,
//! biased q/k/v/o, plain RoPE, a GELU MLP (`c_fc`, `c_proj`), tied by
//! default.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, LayerNorm, Linear, Rope, gelu, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use crate::model::{LanguageModel, parse_args};

fn d_eps() -> f32 {
  1e-5
}
fn d_vocab() -> i32 {
  49152
}
fn d_theta() -> f32 {
  100000.0
}
fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's starcoder2.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Starcoder2Args {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `norm_epsilon`
  #[serde(default = "d_eps")]
  pub norm_epsilon: f32,
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
}

struct Mlp {
  c_fc: Linear,
  c_proj: Linear,
}
module!(Mlp { c_fc, c_proj });

struct Block {
  self_attn: Attention,
  mlp: Mlp,
  input_layernorm: LayerNorm,
  post_attention_layernorm: LayerNorm,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let m = &self.mlp;
    let r = m.c_proj.forward(&gelu(
      &m.c_fc
        .forward(&self.post_attention_layernorm.forward(&h)?)?,
    )?)?;
    ops::add(&h, &r)
  }
}

/// Registry entry for `starcoder2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // starcoder2.py always has biases and applies no rope scaling.
  reject_unhandled(config, "starcoder2", "use_bias", |v| {
    v == &Value::Bool(true)
  })?;
  reject_unhandled(config, "starcoder2", "rope_scaling", |_| false)?;
  let a: Starcoder2Args = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("starcoder2", h, nh, nkv, a.num_hidden_layers)?;
  let hd = h / nh;
  let dims = AttnDims {
    hidden: h,
    n_heads: nh,
    n_kv_heads: nkv,
    head_dim: hd,
    qkv_bias: true,
    o_bias: true,
    qk_norm: None,
    qk_norm_full: None,
    scale: (hd as f32).powf(-0.5),
  };
  let layers = (0..a.num_hidden_layers)
    .map(|_| {
      Box::new(Block {
        self_attn: Attention::new(dims, Some(Rope::new(hd, false, a.rope_theta, 1.0))),
        mlp: Mlp {
          c_fc: Linear::new(h, a.intermediate_size, true),
          c_proj: Linear::new(a.intermediate_size, h, true),
        },
        input_layernorm: LayerNorm::new(h, a.norm_epsilon, true, true),
        post_attention_layernorm: LayerNorm::new(h, a.norm_epsilon, true, true),
      }) as Box<dyn Layer>
    })
    .collect();
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(LayerNorm::new(h, a.norm_epsilon, true, true)),
    "norm",
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied: a.tie_word_embeddings,
      stack_experts: None,
      sanitize: None,
    },
  )))
}
