//! RecurrentGemma (Griffin): mlx-lm's `models/recurrent_gemma.py` —
//! residual blocks cycling through `block_types` (`recurrent` /
//! `attention`). A recurrent block gates `linear_x(x)` through a depthwise
//! causal conv (`conv_1d`, state: the last `conv1d_width - 1` inputs) and
//! the RG-LRU (per-head block-diagonal input / recurrence gates, `a =
//! exp(-8 * gate_a * softplus(recurrent_param))`,
//! `h = a * h + sqrt(1 - a^2) * gate_x * x`) times `gelu(linear_y(x))`; attention blocks are local
//! multi-query attention over a sliding window (half-head RoPE). Gemma's
//! `1 + weight` RMSNorms, `sqrt(hidden)` embedding scale and a tanh
//! logit soft cap. Caches: `ArraysCache(2)` (conv state, LRU state) for
//! recurrent blocks, `RotatingKVCache(attention_window_size)` for
//! attention blocks.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Conv1d, Embedding, KvCache, KvCacheKind, Linear, Param, RmsNorm, Rope, gelu_approx,
  module,
};
use serde::Deserialize;
use serde_json::Value;

use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::ssm::{causal_conv, slice_axis};
use crate::model::{LanguageModel, parse_args};

fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's recurrent_gemma.py.
#[derive(Debug, Clone, Deserialize)]
pub struct RecurrentGemmaArgs {
  /// `attention_bias` (not used by mlx-lm's blocks)
  #[serde(default)]
  pub attention_bias: bool,
  /// `conv1d_width`
  pub conv1d_width: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size` (the MLP's gate and up are half of it)
  pub intermediate_size: i32,
  /// `logits_soft_cap` (0 / null: none)
  #[serde(default)]
  pub logits_soft_cap: Option<f32>,
  /// `num_attention_heads` (also the RG-LRU heads)
  pub num_attention_heads: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `rms_norm_eps` (the final norm; block norms use 1e-5)
  pub rms_norm_eps: f32,
  /// `attention_window_size`
  pub attention_window_size: i32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `embeddings_scale_by_sqrt_dim`
  #[serde(default = "d_true")]
  pub embeddings_scale_by_sqrt_dim: bool,
  /// `block_types` (or `_block_types`), cycled over the layers
  #[serde(default, alias = "_block_types")]
  pub block_types: Option<Vec<String>>,
}

struct RgLru {
  recurrent_param: Param,
  input_gate_weight: Param,
  input_gate_bias: Param,
  recurrent_gate_weight: Param,
  recurrent_gate_bias: Param,
  heads: i32,
}
module!(RgLru {
  recurrent_param,
  input_gate_weight,
  input_gate_bias,
  recurrent_gate_weight,
  recurrent_gate_bias
});

impl RgLru {
  /// python `RGLRU.__call__` + `rnn_scan`: `x` `[B, L, W]`, `h0` the last
  /// state `[B, W]`.
  fn forward(&self, x: &Array, h0: Option<&Array>) -> Result<(Array, Array)> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let block = |w: &Param, bias: &Param| -> Result<Array> {
      let h = x.reshape(&[b, l, self.heads, -1])?;
      let h = (h.swapaxes(1, 2)?.matmul(&w.value)?.swapaxes(1, 2)? + &bias.value)?;
      ops::sigmoid(&ops::flatten(&h, 2, 3)?)
    };
    let gate_x = block(&self.input_gate_weight, &self.input_gate_bias)?;
    let gate_a = block(&self.recurrent_gate_weight, &self.recurrent_gate_bias)?;
    let log_a = ((&gate_a * -8.0)? * &mlxrs_nn::softplus(&self.recurrent_param.value)?)?;
    let a = ops::exp(&log_a)?;
    let a_square = ops::exp(&(&log_a * 2.0)?)?;
    let gated_x = (x * &gate_x)?;
    let mut multiplier = ops::sqrt(&(1.0 - &a_square)?)?;
    if h0.is_none() {
      // python `multiplier[:, 0, :] = 1.0` (the first position of a fresh
      // sequence).
      let ms = multiplier.shape();
      let one = ops::ones(&[ms[0], 1, ms[2]], multiplier.dtype())?;
      multiplier = ops::concatenate_axis(&[one, slice_axis(&multiplier, 1, 1, ms[1])?], 1)?;
    }
    let xn = (&gated_x * &ops::astype(&multiplier, x.dtype())?)?;
    // python `rnn_scan`.
    if l == 1 {
      return match h0 {
        None => Ok((xn.clone(), ops::squeeze_axis(&xn, 1)?)),
        Some(h) => {
          let y = ((&a * &h.expand_dims(1)?)? + &xn)?;
          let last = ops::squeeze_axis(&y, 1)?;
          Ok((y, last))
        }
      };
    }
    let mut h = match h0 {
      Some(h) => h.clone(),
      None => ops::zeros(&[b, s[2]], xn.dtype())?,
    };
    let mut ys = Vec::with_capacity(l as usize);
    for t in 0..l {
      let at = ops::squeeze_axis(&slice_axis(&a, 1, t, t + 1)?, 1)?;
      let xt = ops::squeeze_axis(&slice_axis(&xn, 1, t, t + 1)?, 1)?;
      h = ((&at * &h)? + &xt)?;
      ys.push(h.clone());
    }
    Ok((ops::stack_axis(&ys, 1)?, h))
  }
}

struct Recurrent {
  linear_y: Linear,
  linear_x: Linear,
  linear_out: Linear,
  conv_1d: Conv1d,
  rg_lru: RgLru,
}
module!(Recurrent {
  linear_y,
  linear_x,
  linear_out,
  conv_1d,
  rg_lru
});

impl Recurrent {
  fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
    let slots = cache.arrays_mut()?;
    let y = gelu_approx(&self.linear_y.forward(x)?)?;
    let xx = self.linear_x.forward(x)?;
    let (xx, conv_state) = causal_conv(&self.conv_1d, &xx, slots.get(0))?;
    let (xx, h) = self.rg_lru.forward(&xx, slots.get(1))?;
    slots.set(0, conv_state)?;
    slots.set(1, h)?;
    self.linear_out.forward(&(&xx * &y)?)
  }
}

struct LocalAttention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  rope: Rope,
  heads: i32,
  scale: f32,
}
module!(LocalAttention {
  q_proj,
  k_proj,
  v_proj,
  o_proj
});

impl LocalAttention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let q = self
      .q_proj
      .forward(x)?
      .reshape(&[b, l, self.heads, -1])?
      .transpose_axes(&[0, 2, 1, 3])?;
    let k = self
      .k_proj
      .forward(x)?
      .reshape(&[b, l, 1, -1])?
      .transpose_axes(&[0, 2, 1, 3])?;
    let v = self
      .v_proj
      .forward(x)?
      .reshape(&[b, l, 1, -1])?
      .transpose_axes(&[0, 2, 1, 3])?;
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    self
      .o_proj
      .forward(&o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, -1])?)
  }
}

enum Temporal {
  Recurrent(Recurrent),
  Attention(LocalAttention),
}

impl mlxrs_nn::Module for Temporal {
  fn load(&mut self, w: &mut mlxrs_nn::Weights, p: &str) {
    match self {
      Temporal::Recurrent(m) => m.load(w, p),
      Temporal::Attention(m) => m.load(w, p),
    }
  }
  fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Temporal::Recurrent(m) => m.visit(p, f),
      Temporal::Attention(m) => m.visit(p, f),
    }
  }
  fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    match self {
      Temporal::Recurrent(m) => m.visit_mut(p, f),
      Temporal::Attention(m) => m.visit_mut(p, f),
    }
  }
  fn visit_frozen(&self, p: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    match self {
      Temporal::Recurrent(m) => m.visit_frozen(p, f),
      Temporal::Attention(m) => m.visit_frozen(p, f),
    }
  }
  fn visit_quantizable_mut(
    &mut self,
    p: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    match self {
      Temporal::Recurrent(m) => m.visit_quantizable_mut(p, f),
      Temporal::Attention(m) => m.visit_quantizable_mut(p, f),
    }
  }
}

struct Mlp {
  up_proj: Linear,
  gate_proj: Linear,
  down_proj: Linear,
}
module!(Mlp {
  up_proj,
  gate_proj,
  down_proj
});

struct Block {
  temporal_pre_norm: RmsNorm,
  temporal_block: Temporal,
  channel_pre_norm: RmsNorm,
  mlp_block: Mlp,
  window: i32,
}
module!(Block {
  temporal_pre_norm,
  temporal_block,
  channel_pre_norm,
  mlp_block
});

impl HybridLayer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let n = self.temporal_pre_norm.forward(x)?;
    let t = match &self.temporal_block {
      Temporal::Recurrent(r) => {
        let y = r.forward(&n, cache)?;
        cache.offset += x.dim(1).unwrap_or(0);
        y
      }
      Temporal::Attention(a) => a.forward(&n, mask, cache)?,
    };
    let residual = (&t + x)?;
    let c = self.channel_pre_norm.forward(&residual)?;
    let m = &self.mlp_block;
    let y = m
      .down_proj
      .forward(&(gelu_approx(&m.gate_proj.forward(&c)?)? * &m.up_proj.forward(&c)?)?)?;
    &y + &residual
  }
  fn new_cache(&self) -> Option<KvCache> {
    Some(match self.temporal_block {
      Temporal::Recurrent(_) => KvCache::arrays(2),
      Temporal::Attention(_) => KvCache::new(KvCacheKind::Rotating {
        max_size: self.window,
        keep: 0,
      }),
    })
  }
  fn is_attention(&self) -> bool {
    matches!(self.temporal_block, Temporal::Attention(_))
  }
}

/// mlx-lm recurrent_gemma.py's `sanitize`: HF conv weights to MLX layout.
fn sanitize(mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  for (k, v) in weights.iter_mut() {
    if k.contains("conv_1d.weight") && v.ndim() == 3 && v.dim(-1) != Some(1) {
      *v = ops::moveaxis(v, 2, 1)?;
    }
  }
  Ok(weights)
}

/// RecurrentGemma with its tanh logit soft cap.
struct RecurrentGemma {
  inner: HybridLm,
  soft_cap: Option<f32>,
}

impl LanguageModel for RecurrentGemma {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.inner.hidden(tokens, caches)
  }
  fn logits(&self, hidden: &Array) -> Result<Array> {
    let l = self.inner.logits(hidden)?;
    match self.soft_cap {
      Some(c) => ops::tanh(&(&l / c)?)? * c,
      None => Ok(l),
    }
  }
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self.inner.make_caches(max_kv_size)
  }
  fn load(&mut self, w: &mut mlxrs_nn::Weights) {
    self.inner.load(w)
  }
  /// python: the model keeps `lm_head` when the checkpoint has one and
  /// ties it to the embeddings otherwise; here the head always exists and a
  /// checkpoint without one gets the embedding table (and its quantization)
  /// as the head, the same product as `embed_tokens.as_linear`.
  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let mut w = self.inner.sanitize(weights)?;
    if !w.contains_key("lm_head.weight") {
      for kind in ["weight", "scales", "biases"] {
        if let Some(e) = w.get(&format!("model.embed_tokens.{kind}")).cloned() {
          w.insert(format!("lm_head.{kind}"), e);
        }
      }
    }
    Ok(w)
  }
  fn vocab_size(&self) -> i32 {
    self.inner.vocab_size()
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(f)
  }
}

/// Registry entry for `recurrent_gemma`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: RecurrentGemmaArgs = parse_args(config)?;
  let bad = |m: String| Error::InvalidArgument(format!("config.json (recurrent_gemma): {m}"));
  let (w, nh) = (a.hidden_size, a.num_attention_heads);
  super::base::check_heads("recurrent_gemma", w, nh, 1, a.num_hidden_layers)?;
  if w % nh != 0 || a.conv1d_width < 1 || a.attention_window_size < 1 || a.intermediate_size < 2 {
    return Err(bad(format!(
      "hidden_size ({w}) must be a multiple of num_attention_heads ({nh}); conv1d_width, \
       attention_window_size and intermediate_size positive"
    )));
  }
  let types = a
    .block_types
    .clone()
    .filter(|t| !t.is_empty())
    .ok_or_else(|| bad("needs block_types (or _block_types)".into()))?;
  if !types.iter().any(|t| t == "attention") {
    return Err(bad("block_types needs an \"attention\" entry".into()));
  }
  let hd = w / nh;
  let half = a.intermediate_size / 2;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for i in 0..a.num_hidden_layers as usize {
    let temporal = match types[i % types.len()].as_str() {
      "recurrent" => Temporal::Recurrent(Recurrent {
        linear_y: Linear::new(w, w, true),
        linear_x: Linear::new(w, w, true),
        linear_out: Linear::new(w, w, true),
        conv_1d: Conv1d::new(w, w, a.conv1d_width, 1, 0, 1, w, true)?,
        rg_lru: RgLru {
          recurrent_param: Param::new(&[w]),
          input_gate_weight: Param::new(&[nh, hd, hd]),
          input_gate_bias: Param::new(&[nh, hd]),
          recurrent_gate_weight: Param::new(&[nh, hd, hd]),
          recurrent_gate_bias: Param::new(&[nh, hd]),
          heads: nh,
        },
      }),
      // python: anything but "recurrent" is local attention.
      _ => Temporal::Attention(LocalAttention {
        q_proj: Linear::new(w, w, false),
        k_proj: Linear::new(w, hd, false),
        v_proj: Linear::new(w, hd, false),
        o_proj: Linear::new(w, w, true),
        rope: Rope::new(hd / 2, false, 10000.0, 1.0),
        heads: nh,
        scale: (hd as f32).powf(-0.5),
      }),
    };
    layers.push(Box::new(Block {
      temporal_pre_norm: RmsNorm::new_plus_one(w, 1e-5),
      temporal_block: temporal,
      channel_pre_norm: RmsNorm::new_plus_one(w, 1e-5),
      mlp_block: Mlp {
        up_proj: Linear::new(w, half, true),
        gate_proj: Linear::new(w, half, true),
        down_proj: Linear::new(half, w, true),
      },
      window: a.attention_window_size,
    }));
  }
  let inner = HybridLm::new(
    Embedding::new(a.vocab_size, w),
    layers,
    Box::new(RmsNorm::new_plus_one(w, a.rms_norm_eps)),
    Some(Linear::new(w, a.vocab_size, false)),
    Names {
      root: "model",
      embed: "embed_tokens",
      layers: "layers",
      norm: "final_norm",
      head: "lm_head",
    },
    a.vocab_size,
    Some(sanitize),
  )
  .with_embed_scale(a.embeddings_scale_by_sqrt_dim.then(|| (w as f32).sqrt()));
  Ok(Box::new(RecurrentGemma {
    inner,
    soft_cap: a.logits_soft_cap.filter(|&c| c != 0.0),
  }))
}
