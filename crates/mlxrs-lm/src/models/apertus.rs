//! Apertus (swiss-ai Apertus-8B / 70B): mlx-lm's `models/apertus.py` — a
//! Llama-style decoder with per-head q/k RMSNorm, RoPE from `rope_scaling`
//! (llama3 in the released checkpoints), pre-norms named
//! `attention_layernorm` / `feedforward_layernorm`, and a non-gated MLP
//! `down(xielu(up(x)))` whose xIELU activation has trained per-layer
//! scalars (`act_fn.alpha_p` / `alpha_n` / `beta` / `eps`).

use std::collections::HashMap;

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, Param, RmsNorm, Rope, module, xielu};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's apertus.py.
#[derive(Debug, Clone, Deserialize)]
pub struct ApertusArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `mlp_bias`
  pub mlp_bias: bool,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `max_position_embeddings`
  pub max_position_embeddings: i32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `tie_word_embeddings`
  pub tie_word_embeddings: bool,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
}

/// `XieLU`: the trained scalars of the xIELU activation.
struct XieLu {
  alpha_p: Param,
  alpha_n: Param,
  beta: Param,
  eps: Param,
}
module!(XieLu {
  alpha_p,
  alpha_n,
  beta,
  eps
});

/// `ApertusMLP`.
struct Mlp {
  up_proj: Linear,
  down_proj: Linear,
  act_fn: XieLu,
}
module!(Mlp {
  up_proj,
  down_proj,
  act_fn
});

impl Mlp {
  fn forward(&self, x: &Array) -> Result<Array> {
    let a = &self.act_fn;
    let u = self.up_proj.forward(x)?;
    self.down_proj.forward(&xielu(
      &u,
      &a.alpha_p.value,
      &a.alpha_n.value,
      &a.beta.value,
      &a.eps.value,
    )?)
  }
}

/// `ApertusDecoderLayer`.
struct Block {
  self_attn: Attention,
  mlp: Mlp,
  attention_layernorm: RmsNorm,
  feedforward_layernorm: RmsNorm,
}
module!(Block {
  self_attn,
  mlp,
  attention_layernorm,
  feedforward_layernorm
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.attention_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let r = self.mlp.forward(&self.feedforward_layernorm.forward(&h)?)?;
    ops::add(&h, &r)
  }
}

/// apertus.py's sanitize: the xIELU `alpha_p` / `alpha_n` squeezed to
/// scalars.
fn sanitize(mut w: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  for (k, v) in w.iter_mut() {
    if k.ends_with("alpha_p") || k.ends_with("alpha_n") {
      *v = ops::squeeze(v)?;
    }
  }
  Ok(w)
}

/// Registry entry for `apertus`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // apertus.py has no post-norm variant (nor does this).
  reject_unhandled(config, "apertus", "post_norm", |v| v == &Value::Bool(false))?;
  // apertus.py's attention has no q/k/v/o biases.
  reject_unhandled(config, "apertus", "attention_bias", |v| {
    v == &Value::Bool(false)
  })?;
  let a: ApertusArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("apertus", h, nh, nkv, a.num_hidden_layers)?;
  let hd = h / nh;
  let eps = a.rms_norm_eps;
  let mut dims = AttnDims::new(h, nh, nkv, hd, (false, false));
  dims.qk_norm = Some(eps);
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    let rope = Rope::from_config(
      hd,
      a.rope_theta,
      a.rope_traditional,
      a.rope_scaling.as_ref(),
      Some(a.max_position_embeddings),
    )?;
    layers.push(Box::new(Block {
      self_attn: Attention::new(dims, Some(rope)),
      mlp: Mlp {
        up_proj: Linear::new(h, a.intermediate_size, a.mlp_bias),
        down_proj: Linear::new(a.intermediate_size, h, a.mlp_bias),
        act_fn: XieLu {
          alpha_p: Param::new(&[]),
          alpha_n: Param::new(&[]),
          beta: Param::new(&[]),
          eps: Param::new(&[]),
        },
      },
      attention_layernorm: RmsNorm::new(h, eps),
      feedforward_layernorm: RmsNorm::new(h, eps),
    }));
  }
  let tied = a.tie_word_embeddings;
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!tied).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied,
      stack_experts: None,
      sanitize: Some(sanitize),
    },
  )))
}
