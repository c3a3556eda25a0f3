//! Nemotron (NVIDIA Nemotron-3 / Minitron dense): mlx-lm's
//! `models/nemotron.py` — pre-norm blocks with `LayerNorm1P` (LayerNorm
//! whose scale is stored minus one), RoPE over the first
//! `partial_rotary_factor` of each head (linear `rope_scaling` only), a
//! squared-ReLU MLP (`up_proj`, `down_proj`), untied by default.

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, LayerNorm, Linear, Module, Quantizable, Rope, Weights, module,
  relu2,
};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer, Norm};
use super::phi::partial_rope_dims;
use crate::model::{LanguageModel, parse_args};

fn d_prf() -> f32 {
  0.5
}
fn d_theta() -> f32 {
  10000.0
}

/// `ModelArgs` of mlx-lm's nemotron.py.
#[derive(Debug, Clone, Deserialize)]
pub struct NemotronArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `norm_eps`
  pub norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `head_dim` (default `hidden_size / num_attention_heads`)
  pub head_dim: Option<i32>,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `mlp_bias`
  #[serde(default)]
  pub mlp_bias: bool,
  /// `partial_rotary_factor`
  #[serde(default = "d_prf")]
  pub partial_rotary_factor: f32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_scaling` (`linear` only)
  pub rope_scaling: Option<Value>,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
}

/// `NemotronLayerNorm1P`: `layer_norm(x) * (weight + 1) + bias`.
struct LayerNorm1P {
  inner: LayerNorm,
  plain: LayerNorm,
}

impl LayerNorm1P {
  fn new(dims: i32, eps: f32) -> LayerNorm1P {
    LayerNorm1P {
      inner: LayerNorm::new(dims, eps, true, true),
      plain: LayerNorm::new(dims, eps, false, false),
    }
  }
}

impl Module for LayerNorm1P {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.inner.load(w, prefix);
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(prefix, f);
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.inner.visit_mut(prefix, f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.inner.visit_frozen(prefix, f);
  }
  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    self.inner.visit_quantizable_mut(prefix, f);
  }
}

impl Norm for LayerNorm1P {
  fn apply(&self, x: &Array) -> Result<Array> {
    let (Some(w), Some(b)) = (&self.inner.weight, &self.inner.bias) else {
      return Err(Error::InvalidArgument(
        "nemotron: LayerNorm1P used before its weights were loaded".into(),
      ));
    };
    let n = self.plain.forward(x)?;
    ops::add(&ops::multiply(&n, &(w + 1.0)?)?, b)
  }
}

struct Mlp {
  up_proj: Linear,
  down_proj: Linear,
}
module!(Mlp { up_proj, down_proj });

struct Block {
  self_attn: Attention,
  mlp: Mlp,
  input_layernorm: LayerNorm1P,
  post_attention_layernorm: LayerNorm1P,
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
      .forward(&self.input_layernorm.apply(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let n = self.post_attention_layernorm.apply(&h)?;
    let r = self
      .mlp
      .down_proj
      .forward(&relu2(&self.mlp.up_proj.forward(&n)?)?)?;
    ops::add(&h, &r)
  }
}

/// Registry entry for `nemotron`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "nemotron", "rope_scaling", |v| {
    let t = v.get("type").or_else(|| v.get("rope_type"));
    t.and_then(Value::as_str) == Some("linear") && v.get("factor").is_some_and(Value::is_f64)
  })?;
  let a: NemotronArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("nemotron", h, nh, nkv, a.num_hidden_layers)?;
  let hd = a.head_dim.unwrap_or(h / nh);
  let rope_dims = partial_rope_dims("nemotron", a.partial_rotary_factor, hd)?;
  let scale = match &a.rope_scaling {
    Some(s) => 1.0 / s.get("factor").and_then(Value::as_f64).unwrap_or(1.0) as f32,
    None => 1.0,
  };
  let dims = AttnDims::new(h, nh, nkv, hd, (a.attention_bias, a.attention_bias));
  let eps = a.norm_eps;
  let layers = (0..a.num_hidden_layers)
    .map(|_| {
      Box::new(Block {
        self_attn: Attention::new(dims, Some(Rope::new(rope_dims, false, a.rope_theta, scale))),
        mlp: Mlp {
          up_proj: Linear::new(h, a.intermediate_size, a.mlp_bias),
          down_proj: Linear::new(a.intermediate_size, h, a.mlp_bias),
        },
        input_layernorm: LayerNorm1P::new(h, eps),
        post_attention_layernorm: LayerNorm1P::new(h, eps),
      }) as Box<dyn Layer>
    })
    .collect();
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(LayerNorm1P::new(h, eps)),
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
