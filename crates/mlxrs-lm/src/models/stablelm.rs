//! StableLM (StableLM-2, StableLM-3B-4E1T): mlx-lm's `models/stablelm.py`
//! — pre-LayerNorm blocks (or one norm feeding attention and MLP in
//! parallel, `use_parallel_residual`), RoPE over the first
//! `partial_rotary_factor` of each head, optional q/k/v biases, a SwiGLU
//! MLP, always an `lm_head`. `qk_layernorm` (StableLM-2-12B) is refused.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, LayerNorm, Linear, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's stablelm.py.
#[derive(Debug, Clone, Deserialize)]
pub struct StableLmArgs {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `use_qkv_bias`
  pub use_qkv_bias: bool,
  /// `partial_rotary_factor`
  pub partial_rotary_factor: f32,
  /// `layer_norm_eps`
  pub layer_norm_eps: f32,
  /// `use_parallel_residual`
  #[serde(default)]
  pub use_parallel_residual: bool,
}

struct Block {
  self_attn: Attention,
  mlp: SwiGluMlp,
  input_layernorm: LayerNorm,
  /// Absent with `use_parallel_residual`.
  post_attention_layernorm: Option<LayerNorm>,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.mlp.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = self.input_layernorm.forward(x)?;
    let r = self.self_attn.forward(&h, mask, cache)?;
    match &self.post_attention_layernorm {
      None => ops::add(&ops::add(x, &r)?, &self.mlp.forward(&h)?),
      Some(norm) => {
        let h = ops::add(x, &r)?;
        ops::add(&h, &self.mlp.forward(&norm.forward(&h)?)?)
      }
    }
  }
}

/// Registry entry for `stablelm`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "stablelm", "qk_layernorm", |v| {
    v == &Value::Bool(false)
  })?;
  reject_unhandled(config, "stablelm", "rope_scaling", |_| false)?;
  let a: StableLmArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("stablelm", h, nh, nkv, a.num_hidden_layers)?;
  let hd = h / nh;
  let rope_dims = super::phi::partial_rope_dims("stablelm", a.partial_rotary_factor, hd)?;
  let dims = AttnDims {
    hidden: h,
    n_heads: nh,
    n_kv_heads: nkv,
    head_dim: hd,
    qkv_bias: a.use_qkv_bias,
    o_bias: false,
    qk_norm: None,
    qk_norm_full: None,
    scale: (hd as f32).powf(-0.5),
  };
  let eps = a.layer_norm_eps;
  let layers = (0..a.num_hidden_layers)
    .map(|_| {
      Box::new(Block {
        self_attn: Attention::new(dims, Some(Rope::new(rope_dims, false, a.rope_theta, 1.0))),
        mlp: SwiGluMlp::new(h, a.intermediate_size, false),
        input_layernorm: LayerNorm::new(h, eps, true, true),
        post_attention_layernorm: (!a.use_parallel_residual)
          .then(|| LayerNorm::new(h, eps, true, true)),
      }) as Box<dyn Layer>
    })
    .collect();
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(LayerNorm::new(h, eps, true, true)),
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
