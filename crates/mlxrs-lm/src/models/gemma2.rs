//! Gemma 2: mlx-lm's `models/gemma2.py` — `(1 + w)` RMSNorms around both
//! sub-blocks (four per layer), embeddings scaled by `sqrt(hidden_size)`,
//! GELU-tanh MLP, and attention computed explicitly so its scores can be
//! tanh-softcapped; the tied output logits are softcapped too.

use std::collections::BTreeSet;
use std::sync::Arc;

use mlxrs_core::{Array, Dtype, Result, ops};
use mlxrs_nn::attention::causal_mask;
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, KvCacheKind, Linear, Module, RmsNorm, Rope, Weights, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::check_heads;
use super::checkpoint::{self, Shared, Trainable};
use super::mlp::GeluMlp;
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  10000.0
}
fn d_attn_cap() -> Option<f32> {
  Some(50.0)
}
fn d_final_cap() -> Option<f32> {
  Some(30.0)
}
fn d_qpas() -> f64 {
  144.0
}

/// `ModelArgs` of mlx-lm's gemma2.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma2Args {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `head_dim`
  pub head_dim: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `attn_logit_softcapping` (default 50; `null` disables it, as in HF)
  #[serde(default = "d_attn_cap")]
  pub attn_logit_softcapping: Option<f32>,
  /// `final_logit_softcapping` (default 30; `null` disables it, as in HF)
  #[serde(default = "d_final_cap")]
  pub final_logit_softcapping: Option<f32>,
  /// `query_pre_attn_scalar`: attention scale is its inverse square root.
  #[serde(default = "d_qpas")]
  pub query_pre_attn_scalar: f64,
}

/// `x * value` with `value` as a scalar of `x`'s dtype (python `x * float`).
pub(crate) fn scale_by(x: &Array, value: f64) -> Result<Array> {
  ops::multiply(x, &Array::scalar_as(value, x.dtype())?)
}

/// `tanh(x / cap) * cap` (Gemma's logit softcapping).
fn softcap(x: &Array, cap: f32) -> Result<Array> {
  let c = Array::scalar_as(cap as f64, x.dtype())?;
  ops::multiply(&ops::tanh(&ops::divide(x, &c)?)?, &c)
}

/// `mx.finfo(dtype).min` for the float dtypes attention runs in.
fn finfo_min(d: Dtype) -> f64 {
  match d {
    Dtype::Float16 => -65504.0,
    Dtype::Bfloat16 => -3.3895313892515355e38,
    Dtype::Float64 => f64::MIN,
    _ => f32::MIN as f64,
  }
}

struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  n_heads: i32,
  n_kv_heads: i32,
  head_dim: i32,
  scale: f64,
  softcap: Option<f32>,
  rope: Rope,
}
module!(Attention {
  q_proj,
  k_proj,
  v_proj,
  o_proj
});

impl Attention {
  /// `mask` is `None` or an explicit boolean `[T_q, T_kv]` array.
  fn forward(&self, x: &Array, mask: Option<&Array>, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads =
      |t: Array, n: i32| ops::transpose_axes(&ops::reshape(&t, &[b, l, n, -1])?, &[0, 2, 1, 3]);
    let q = heads(self.q_proj.forward(x)?, self.n_heads)?;
    let k = heads(self.k_proj.forward(x)?, self.n_kv_heads)?;
    let v = heads(self.v_proj.forward(x)?, self.n_kv_heads)?;
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let (mut k, mut v) = cache.update_and_fetch(&k, &v)?;
    let mut q = scale_by(&q, self.scale)?;
    let repeats = self.n_heads / self.n_kv_heads;
    if repeats > 1 {
      // Group query heads by their kv head instead of repeating k/v.
      q = ops::reshape(&q, &[b, self.n_kv_heads, repeats, l, self.head_dim])?;
      k = ops::expand_dims(&k, 2)?;
      v = ops::expand_dims(&v, 2)?;
    }
    let mut scores = ops::matmul(&q, &ops::swapaxes(&k, -1, -2)?)?;
    if let Some(cap) = self.softcap {
      scores = softcap(&scores, cap)?;
    }
    // A per-row `[B, 1, T_q, T_kv]` mask (left-padded batches) needs the
    // extra group axis of the grouped scores `[B, kv, rep, T_q, T_kv]`.
    let grouped;
    let mask = match mask {
      Some(m) if repeats > 1 && m.ndim() == 4 => {
        grouped = ops::expand_dims(m, 2)?;
        Some(&grouped)
      }
      other => other,
    };
    if let Some(m) = mask {
      scores = if m.dtype() == Dtype::Bool {
        ops::where_(
          m,
          &scores,
          &Array::scalar_as(finfo_min(scores.dtype()), scores.dtype())?,
        )?
      } else {
        ops::add(&scores, m)?
      };
    }
    let p = ops::softmax_axis(&scores, -1, true)?;
    let mut o = ops::matmul(&p, &v)?;
    if repeats > 1 {
      o = ops::reshape(&o, &[b, self.n_heads, l, self.head_dim])?;
    }
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    self.o_proj.forward(&o)
  }
}

struct Block {
  self_attn: Attention,
  mlp: GeluMlp,
  input_layernorm: RmsNorm,
  pre_feedforward_layernorm: RmsNorm,
  post_feedforward_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  pre_feedforward_layernorm,
  post_feedforward_layernorm,
  post_attention_layernorm
});

impl Block {
  fn forward(&self, x: &Array, mask: Option<&Array>, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &self.post_attention_layernorm.forward(&r)?)?;
    let r = self
      .mlp
      .forward(&self.pre_feedforward_layernorm.forward(&h)?)?;
    ops::add(&h, &self.post_feedforward_layernorm.forward(&r)?)
  }
}

struct Inner {
  embed_tokens: Embedding,
  layers: Vec<Shared<Block>>,
  norm: RmsNorm,
}
module!(Inner {
  embed_tokens,
  layers,
  norm
});

/// A Gemma 2 decoder (mlx-lm `gemma2.Model`); output embeddings are always
/// tied.
pub struct Gemma2 {
  args: Gemma2Args,
  model: Inner,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(Gemma2 { model });

impl Gemma2 {
  /// Build from parsed args.
  pub fn new(args: Gemma2Args) -> Result<Gemma2> {
    let (h, n_heads, n_kv, hd) = (
      args.hidden_size,
      args.num_attention_heads,
      args.num_key_value_heads,
      args.head_dim,
    );
    check_heads("gemma2", h, n_heads, n_kv, args.num_hidden_layers)?;
    if args.query_pre_attn_scalar <= 0.0 {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "config: query_pre_attn_scalar must be positive, got {}",
        args.query_pre_attn_scalar
      )));
    }
    let eps = args.rms_norm_eps;
    let layers: Vec<Block> = (0..args.num_hidden_layers)
      .map(|_| Block {
        self_attn: Attention {
          q_proj: Linear::new(h, n_heads * hd, false),
          k_proj: Linear::new(h, n_kv * hd, false),
          v_proj: Linear::new(h, n_kv * hd, false),
          o_proj: Linear::new(n_heads * hd, h, false),
          n_heads,
          n_kv_heads: n_kv,
          head_dim: hd,
          scale: 1.0 / args.query_pre_attn_scalar.sqrt(),
          softcap: args.attn_logit_softcapping,
          rope: Rope::new(hd, args.rope_traditional, args.rope_theta, 1.0),
        },
        mlp: GeluMlp::new(h, args.intermediate_size, true),
        input_layernorm: RmsNorm::new_plus_one(h, eps),
        pre_feedforward_layernorm: RmsNorm::new_plus_one(h, eps),
        post_feedforward_layernorm: RmsNorm::new_plus_one(h, eps),
        post_attention_layernorm: RmsNorm::new_plus_one(h, eps),
      })
      .collect();
    Ok(Gemma2 {
      model: Inner {
        embed_tokens: Embedding::new(args.vocab_size, h),
        layers: layers.into_iter().map(Shared::new).collect(),
        norm: RmsNorm::new_plus_one(h, eps),
      },
      args,
      ckpt: None,
    })
  }
}

/// Registry entry for `gemma2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(Gemma2::new(parse_args(config)?)?))
}

impl Gemma2 {
  /// The decoder stack over input embeddings `h` (scaled here by
  /// `sqrt(hidden_size)`); `key_valid` (rows of a left-padded batch, see
  /// [`LanguageModel::hidden_padded`]) replaces the causal mask by padded
  /// ones, `mask` replaces it (see
  /// [`LanguageModel::hidden_from_embeddings`]).
  fn run(
    &self,
    h: &Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
    mask: Option<&AttnMask>,
  ) -> Result<Array> {
    super::base::check_caches(caches.len(), self.model.layers.len())?;
    let mut h = scale_by(h, (self.args.hidden_size as f64).sqrt())?;
    let n = h.dim(1).unwrap_or(1);
    // mlx-lm asks for an explicit array mask here (`return_array=True`).
    let as_array = |m: AttnMask, c: &KvCache| -> Result<Option<Array>> {
      Ok(match m {
        AttnMask::None => None,
        AttnMask::Array(a) => Some(a),
        AttnMask::Causal => {
          let off = match c.kind() {
            KvCacheKind::Rotating { max_size, .. } => (max_size - 1).min(c.offset),
            KvCacheKind::Standard => c.offset,
          };
          Some(causal_mask(n, off, None)?)
        }
      })
    };
    let mask = match (caches.first(), key_valid, mask) {
      (Some(c), _, Some(m)) => as_array(m.clone(), c)?,
      (Some(c), Some(kv), None) => as_array(crate::batch::padded_mask(kv, n, c.offset, None)?, c)?,
      (Some(c), None, None) => as_array(c.make_mask(n, None)?, c)?,
      (None, _, _) => None,
    };
    let mask = mask.map_or(AttnMask::None, AttnMask::Array);
    let forward = |b: &Block, x: &Array, m: &AttnMask, c: &mut KvCache| match m {
      AttnMask::Array(a) => b.forward(x, Some(a), c),
      _ => b.forward(x, None, c),
    };
    let mut pace = PrefillPace::for_input(&h);
    for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
      let prefix = || format!("model.layers.{i}");
      h = checkpoint::block(&self.ckpt, layer, prefix, &h, &mask, cache, forward)?;
      pace.layer_done(&h)?;
    }
    self.model.norm.forward(&h)
  }
}

impl LanguageModel for Gemma2 {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.run(&self.embed_tokens(tokens)?, caches, None, None)
  }

  fn embed_tokens(&self, tokens: &Array) -> Result<Array> {
    self.model.embed_tokens.forward(tokens)
  }

  fn hidden_from_embeddings(
    &self,
    embeddings: &Array,
    caches: &mut [KvCache],
    mask: Option<&AttnMask>,
  ) -> Result<Array> {
    self.run(embeddings, caches, None, mask)
  }

  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    crate::batch::check_padded_caches(caches)?;
    self.run(&self.embed_tokens(tokens)?, caches, Some(key_valid), None)
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    let out = self.model.embed_tokens.as_linear(hidden)?;
    match self.args.final_logit_softcapping {
      Some(cap) => softcap(&out, cap),
      None => Ok(out),
    }
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    super::base::default_caches(self.model.layers.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn vocab_size(&self) -> i32 {
    self.args.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }

  fn set_grad_checkpoint(&mut self, trainable: Option<BTreeSet<String>>) -> Result<()> {
    self.ckpt = trainable.map(Arc::new);
    Ok(())
  }
}
