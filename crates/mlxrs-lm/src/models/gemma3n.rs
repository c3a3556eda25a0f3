//! Gemma 3n (text side): mlx-lm's `models/gemma3n.py`, reading
//! `text_config`; parameters under `model.language_model.`.
//!
//! Sliding / full layers (`layer_types`; RoPE bases `rope_local_base_freq`
//! / `rope_theta`), q/k RMSNorm, weightless v norm, attention scale 1; the
//! last `num_kv_shared_layers` layers attend over the keys/values just
//! written to the cache of the last earlier layer of their type (one
//! position offset for the whole forward). Around each block: AltUp
//! (`altup_num_inputs` streams, predicted and corrected by tiny learned
//! coefficient maps routed by the active stream), LAuReL (a low-rank
//! residual), per-layer inputs gating streams 1.., and in the MLP the
//! `activation_sparsity_pattern` (GELU over `x - (mean + std *
//! sqrt(2) erfinv(2 s - 1))`). Streams start as projections of the scaled
//! embeddings at the embeddings' RMS magnitude and are averaged back at
//! the end; tied head, soft-capped logits. `sanitize` drops the vision /
//! audio towers.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, KvCacheKind, Linear, Module, Param, RmsNorm, Rope, Weights,
  gelu_approx, module, sdpa_with_cache,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_caches, check_heads, slice_axis};
use crate::model::{LanguageModel, parse_args};

/// `TextConfig` of mlx-lm's gemma3n.py (config.json `text_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3nTextConfig {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size` (an int, or one per layer)
  pub intermediate_size: Value,
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
  /// `num_kv_shared_layers`
  pub num_kv_shared_layers: i32,
  /// `vocab_size_per_layer_input`
  pub vocab_size_per_layer_input: i32,
  /// `sliding_window`
  pub sliding_window: i32,
  /// `rope_local_base_freq` (sliding layers)
  pub rope_local_base_freq: f32,
  /// `rope_theta` (full layers)
  pub rope_theta: f32,
  /// `final_logit_softcapping`
  pub final_logit_softcapping: Option<f32>,
  /// `layer_types`
  pub layer_types: Vec<String>,
  /// `activation_sparsity_pattern` (per layer)
  pub activation_sparsity_pattern: Option<Vec<f32>>,
  /// `hidden_size_per_layer_input`
  pub hidden_size_per_layer_input: i32,
  /// `altup_num_inputs`
  pub altup_num_inputs: i32,
  /// `altup_coef_clip`
  pub altup_coef_clip: Option<f32>,
  /// `altup_correct_scale`
  pub altup_correct_scale: bool,
  /// `altup_active_idx`
  pub altup_active_idx: i32,
  /// `laurel_rank`
  pub laurel_rank: i32,
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (gemma3n): {msg}"))
}

/// `x ** p` (python's power, so the rounding matches).
fn pow_s(x: &Array, p: f64) -> Result<Array> {
  ops::power(x, &Array::scalar_as(p, x.dtype())?)
}

/// `x * s` for a python float `s`.
fn mul_s(x: &Array, s: f64) -> Result<Array> {
  ops::multiply(x, &Array::scalar_as(s, x.dtype())?)
}

/// `a[i]` along the first axis.
fn index0(a: &Array, i: i32) -> Result<Array> {
  ops::squeeze_axes(&slice_axis(a, 0, i, i + 1)?, &[0])
}

/// `Gemma3nAttention`.
struct G3nAttention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  q_norm: RmsNorm,
  k_norm: RmsNorm,
  head_dim: i32,
  eps: f32,
  rope: Rope,
}
module!(G3nAttention {
  q_proj,
  k_proj,
  v_proj,
  o_proj,
  q_norm,
  k_norm
});

impl G3nAttention {
  /// Attention; `shared`: the owner's keys/values of this forward (a
  /// KV-shared layer), else this layer's own, written to `cache` and
  /// returned.
  fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: Option<&mut KvCache>,
    shared: Option<&(Array, Array)>,
    offset: i32,
  ) -> Result<(Array, Option<(Array, Array)>)> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let q = ops::reshape(&self.q_proj.forward(x)?, &[b, l, -1, self.head_dim])?;
    let q = self.q_norm.forward(&q)?;
    let (kv, own) = match (shared, cache) {
      (Some(kv), _) => (kv.clone(), None),
      (None, cache) => {
        let k = ops::reshape(&self.k_proj.forward(x)?, &[b, l, -1, self.head_dim])?;
        let k = ops::transpose_axes(&self.k_norm.forward(&k)?, &[0, 2, 1, 3])?;
        let k = self.rope.forward(&k, offset)?;
        let v = ops::reshape(&self.v_proj.forward(x)?, &[b, l, -1, self.head_dim])?;
        let v = ops::transpose_axes(
          &mlxrs_core::fast::rms_norm(&v, None, self.eps)?,
          &[0, 2, 1, 3],
        )?;
        let kv = match cache {
          Some(c) => c.update_and_fetch(&k, &v)?,
          None => (k, v),
        };
        (kv.clone(), Some(kv))
      }
    };
    let q = self
      .rope
      .forward(&ops::transpose_axes(&q, &[0, 2, 1, 3])?, offset)?;
    let o = sdpa_with_cache(&q, &kv.0, &kv.1, 1.0, mask, None)?;
    let o = self.o_proj.forward(&ops::reshape(
      &ops::transpose_axes(&o, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)?;
    Ok((o, own))
  }
}

/// The GeLU `MLP` with optional activation sparsity.
struct Mlp {
  gate_proj: Linear,
  up_proj: Linear,
  down_proj: Linear,
  /// `sqrt(2) * erfinv(2 * sparsity - 1)` when the sparsity is > 0.
  std_multiplier: Option<Array>,
}
module!(Mlp {
  gate_proj,
  up_proj,
  down_proj
});

impl Mlp {
  fn forward(&self, x: &Array) -> Result<Array> {
    let g = self.gate_proj.forward(x)?;
    let a = match &self.std_multiplier {
      Some(m) => {
        // gelu_topk
        let mean = ops::mean_axis(&g, -1, true)?;
        let std = ops::std_axis(&g, -1, true, 0)?;
        let cutoff = ops::add(&mean, &ops::multiply(&std, &ops::astype(m, std.dtype())?)?)?;
        let zero = Array::scalar_as(0.0, g.dtype())?;
        gelu_approx(&ops::maximum(&zero, &ops::subtract(&g, &cutoff)?)?)?
      }
      None => gelu_approx(&g)?,
    };
    self
      .down_proj
      .forward(&ops::multiply(&a, &self.up_proj.forward(x)?)?)
  }
}

/// A bare coefficient matrix (`Linear` without bias, used in float32 and
/// clipped).
struct Coefs {
  weight: Param,
}
module!(Coefs { weight });

impl Coefs {
  fn forward(&self, x: &Array, clip: Option<f32>) -> Result<Array> {
    let mut w = ops::astype(&self.weight.value, Dtype::Float32)?;
    if let Some(c) = clip {
      let (lo, hi) = (Array::scalar(-c), Array::scalar(c));
      w = ops::clip(&w, Some(&lo), Some(&hi))?;
    }
    ops::matmul(x, &ops::transpose(&w)?)
  }
}

/// `Gemma3nAltUp`.
struct AltUp {
  correct_output_scale: Param,
  correction_coefs: Coefs,
  prediction_coefs: Coefs,
  modality_router: Linear,
  router_norm: RmsNorm,
  n: i32,
  active: i32,
  hidden: i32,
  clip: Option<f32>,
}
module!(AltUp {
  correct_output_scale,
  correction_coefs,
  prediction_coefs,
  modality_router,
  router_norm
});

impl AltUp {
  fn modalities(&self, x: &Array) -> Result<Array> {
    let r = mul_s(&self.router_norm.forward(x)?, (self.hidden as f64).powi(-1))?;
    ops::tanh(&ops::astype(
      &self.modality_router.forward(&r)?,
      Dtype::Float32,
    )?)
  }

  /// `predict`: `[n, B, L, H]` -> `[n, B, L, H]`.
  fn predict(&self, x: &Array) -> Result<Array> {
    let m = self.modalities(&index0(x, self.active)?)?;
    let s = m.shape();
    let coefs = self.prediction_coefs.forward(&m, self.clip)?;
    let coefs = ops::reshape(&coefs, &[s[0], s[1], self.n, self.n])?;
    let coefs = ops::transpose_axes(&coefs, &[0, 1, 3, 2])?;
    let x_up = ops::astype(x, Dtype::Float32)?;
    let p = ops::matmul(&ops::transpose_axes(&x_up, &[1, 2, 3, 0])?, &coefs)?;
    let p = ops::add(&ops::transpose_axes(&p, &[3, 0, 1, 2])?, &x_up)?;
    ops::astype(&p, x.dtype())
  }

  /// `correct`.
  fn correct(&self, predictions: &Array, activated: &Array) -> Result<Array> {
    let m = self.modalities(activated)?;
    let coefs = ops::add(
      &self.correction_coefs.forward(&m, self.clip)?,
      &Array::scalar(1.0f32),
    )?;
    let innovation = ops::subtract(activated, &index0(predictions, self.active)?)?;
    let coefs = ops::moveaxis(&coefs, 2, 0)?;
    let c = ops::multiply(
      &ops::expand_dims(&innovation, 0)?,
      &ops::expand_dims(&coefs, -1)?,
    )?;
    ops::astype(&ops::add(&c, predictions)?, activated.dtype())
  }
}

/// `Gemma3nLaurelBlock`.
struct Laurel {
  linear_left: Linear,
  linear_right: Linear,
  post_laurel_norm: RmsNorm,
}
module!(Laurel {
  linear_left,
  linear_right,
  post_laurel_norm
});

/// `Gemma3nDecoderLayer`.
struct Block {
  self_attn: G3nAttention,
  mlp: Mlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  pre_feedforward_layernorm: RmsNorm,
  post_feedforward_layernorm: RmsNorm,
  altup: AltUp,
  laurel: Laurel,
  per_layer_input_gate: Linear,
  per_layer_projection: Linear,
  post_per_layer_input_norm: RmsNorm,
  sliding: bool,
  correct_scale: bool,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm,
  pre_feedforward_layernorm,
  post_feedforward_layernorm,
  altup,
  laurel,
  per_layer_input_gate,
  per_layer_projection,
  post_per_layer_input_norm
});

impl Block {
  fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: Option<&mut KvCache>,
    shared: Option<&(Array, Array)>,
    per_layer_input: &Array,
    offset: i32,
  ) -> Result<(Array, Option<(Array, Array)>)> {
    let active = self.altup.active;
    let predictions = self.altup.predict(x)?;
    let active_prediction = index0(&predictions, active)?;
    let apn = self.input_layernorm.forward(&active_prediction)?;
    let lr = &self.laurel;
    let laurel = ops::add(
      &apn,
      &lr
        .post_laurel_norm
        .forward(&lr.linear_right.forward(&lr.linear_left.forward(&apn)?)?)?,
    )?;
    let (attn, own) = self.self_attn.forward(&apn, mask, cache, shared, offset)?;
    let attn = self.post_attention_layernorm.forward(&attn)?;
    let attn_gated = ops::add(&active_prediction, &attn)?;
    let attn_laurel = mul_s(&ops::add(&attn_gated, &laurel)?, 2f64.powf(-0.5))?;
    let ffw = self
      .mlp
      .forward(&self.pre_feedforward_layernorm.forward(&attn_laurel)?)?;
    let gated = ops::add(
      &attn_laurel,
      &self.post_feedforward_layernorm.forward(&ffw)?,
    )?;
    let corrected = self.altup.correct(&predictions, &gated)?;
    let mut first = index0(&corrected, active)?;
    if self.correct_scale {
      first = ops::multiply(&first, &self.altup.correct_output_scale.value)?;
    }
    let first = gelu_approx(&self.per_layer_input_gate.forward(&first)?)?;
    let first = self
      .per_layer_projection
      .forward(&ops::multiply(&first, per_layer_input)?)?;
    let first = self.post_per_layer_input_norm.forward(&first)?;
    // corrected[1:] += first
    let n = corrected.dim(0).unwrap_or(1);
    let head = slice_axis(&corrected, 0, 0, 1)?;
    let rest = ops::add(&slice_axis(&corrected, 0, 1, n)?, &first)?;
    Ok((ops::concatenate_axis(&[head, rest], 0)?, own))
  }
}

/// `LanguageModel` of gemma3n.py.
struct Inner {
  embed_tokens: Embedding,
  layers: Vec<Block>,
  embed_tokens_per_layer: Embedding,
  per_layer_model_projection: Linear,
  per_layer_projection_norm: RmsNorm,
  altup_projections: Vec<Linear>,
  altup_unembed_projections: Vec<Linear>,
  norm: RmsNorm,
}
module!(Inner {
  embed_tokens,
  layers,
  embed_tokens_per_layer,
  per_layer_model_projection,
  per_layer_projection_norm,
  altup_projections,
  altup_unembed_projections,
  norm
});

/// `model.language_model`.
struct Outer {
  language_model: Inner,
}
module!(Outer { language_model });

/// mlx-lm `gemma3n.Model` (text).
pub struct Gemma3n {
  c: Gemma3nTextConfig,
  model: Outer,
  first_kv_shared: usize,
  /// Per layer: the cache it writes (its own) or reads (KV-shared).
  cache_idx: Vec<usize>,
}
module!(Gemma3n { model });

impl Gemma3n {
  /// Build from `text_config`.
  pub fn new(c: Gemma3nTextConfig) -> Result<Gemma3n> {
    let (h, nh, n) = (c.hidden_size, c.num_attention_heads, c.num_hidden_layers);
    check_heads("gemma3n", h, nh, c.num_key_value_heads, n)?;
    if c.head_dim <= 0 || c.sliding_window <= 0 || c.altup_num_inputs < 1 || c.laurel_rank <= 0 {
      return Err(bad(
        "head_dim, sliding_window, altup_num_inputs and laurel_rank must be positive".into(),
      ));
    }
    if c.altup_active_idx < 0 || c.altup_active_idx >= c.altup_num_inputs {
      return Err(bad(format!(
        "altup_active_idx ({}) must be below altup_num_inputs ({})",
        c.altup_active_idx, c.altup_num_inputs
      )));
    }
    if c.layer_types.len() != n as usize {
      return Err(bad(format!(
        "field \"layer_types\" has {} entries for {n} layers",
        c.layer_types.len()
      )));
    }
    if c.num_kv_shared_layers < 0 || c.num_kv_shared_layers > n {
      return Err(bad(format!(
        "num_kv_shared_layers ({}) must be in 0..={n}",
        c.num_kv_shared_layers
      )));
    }
    let first_kv_shared = (n - c.num_kv_shared_layers) as usize;
    let mut sliding = Vec::with_capacity(n as usize);
    for t in &c.layer_types {
      sliding.push(match t.as_str() {
        "sliding_attention" => true,
        "full_attention" => false,
        other => {
          return Err(bad(format!(
            "field \"layer_types\" has {other:?}; supported: sliding_attention, full_attention"
          )));
        }
      });
    }
    if !sliding.contains(&true) || !sliding.contains(&false) {
      return Err(bad(
        "layer_types must have both sliding_attention and full_attention layers".into(),
      ));
    }
    let last_of = |s: bool| sliding[..first_kv_shared].iter().rposition(|x| *x == s);
    let mut cache_idx = Vec::with_capacity(n as usize);
    for (i, s) in sliding.iter().enumerate() {
      if i < first_kv_shared {
        cache_idx.push(i);
      } else {
        cache_idx.push(last_of(*s).ok_or_else(|| {
          bad(format!(
            "KV-shared layer {i} has no earlier layer of its type"
          ))
        })?);
      }
    }
    let inter: Vec<i32> = match &c.intermediate_size {
      Value::Array(v) => v
        .iter()
        .map(|x| x.as_i64().and_then(|x| i32::try_from(x).ok()))
        .collect::<Option<Vec<_>>>()
        .filter(|v| v.len() >= n as usize)
        .ok_or_else(|| bad("field \"intermediate_size\" must be an int or one per layer".into()))?,
      v => vec![
        v.as_i64()
          .and_then(|x| i32::try_from(x).ok())
          .ok_or_else(|| bad("field \"intermediate_size\" must be an int".into()))?;
        n as usize
      ],
    };
    let eps = c.rms_norm_eps;
    let p = c.hidden_size_per_layer_input;
    let na = c.altup_num_inputs;
    let mut layers = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
      let sp = c
        .activation_sparsity_pattern
        .as_ref()
        .map(|v| v.get(i).copied().unwrap_or(0.0))
        .unwrap_or(0.0);
      let std_multiplier = if sp > 0.0 {
        let e = ops::erfinv(&Array::scalar((2.0 * sp as f64 - 1.0) as f32))?;
        Some(ops::multiply(
          &Array::scalar(std::f64::consts::SQRT_2 as f32),
          &e,
        )?)
      } else {
        None
      };
      let base = if sliding[i] {
        c.rope_local_base_freq
      } else {
        c.rope_theta
      };
      layers.push(Block {
        self_attn: G3nAttention {
          q_proj: Linear::new(h, nh * c.head_dim, false),
          k_proj: Linear::new(h, c.num_key_value_heads * c.head_dim, false),
          v_proj: Linear::new(h, c.num_key_value_heads * c.head_dim, false),
          o_proj: Linear::new(nh * c.head_dim, h, false),
          q_norm: RmsNorm::new(c.head_dim, eps),
          k_norm: RmsNorm::new(c.head_dim, eps),
          head_dim: c.head_dim,
          eps,
          rope: Rope::new(c.head_dim, false, base, 1.0),
        },
        mlp: Mlp {
          gate_proj: Linear::new(h, inter[i], false),
          up_proj: Linear::new(h, inter[i], false),
          down_proj: Linear::new(inter[i], h, false),
          std_multiplier,
        },
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
        pre_feedforward_layernorm: RmsNorm::new(h, eps),
        post_feedforward_layernorm: RmsNorm::new(h, eps),
        altup: AltUp {
          correct_output_scale: Param::new(&[h]),
          correction_coefs: Coefs {
            weight: Param::new(&[na, na]),
          },
          prediction_coefs: Coefs {
            weight: Param::new(&[na * na, na]),
          },
          modality_router: Linear::new(h, na, false),
          router_norm: RmsNorm::new(h, eps),
          n: na,
          active: c.altup_active_idx,
          hidden: h,
          clip: c.altup_coef_clip,
        },
        laurel: Laurel {
          linear_left: Linear::new(h, c.laurel_rank, false),
          linear_right: Linear::new(c.laurel_rank, h, false),
          post_laurel_norm: RmsNorm::new(h, eps),
        },
        per_layer_input_gate: Linear::new(h, p, false),
        per_layer_projection: Linear::new(p, h, false),
        post_per_layer_input_norm: RmsNorm::new(h, eps),
        sliding: sliding[i],
        correct_scale: c.altup_correct_scale,
      });
    }
    Ok(Gemma3n {
      model: Outer {
        language_model: Inner {
          embed_tokens: Embedding::new(c.vocab_size, h),
          layers,
          embed_tokens_per_layer: Embedding::new(c.vocab_size_per_layer_input, n * p),
          per_layer_model_projection: Linear::new(h, n * p, false),
          per_layer_projection_norm: RmsNorm::new(p, eps),
          altup_projections: (1..na).map(|_| Linear::new(h, h, false)).collect(),
          altup_unembed_projections: (1..na).map(|_| Linear::new(h, h, false)).collect(),
          norm: RmsNorm::new(h, eps),
        },
      },
      first_kv_shared,
      cache_idx,
      c,
    })
  }

  /// `[B, L, layers, per_layer]` per-layer inputs, projected and mixed.
  fn per_layer_inputs(&self, tokens: &Array, h: &Array) -> Result<Array> {
    let m = &self.model.language_model;
    let c = &self.c;
    let (n, p) = (c.num_hidden_layers, c.hidden_size_per_layer_input);
    let limit = Array::scalar_as(c.vocab_size_per_layer_input as f64, tokens.dtype())?;
    let toks = ops::where_(
      &ops::less(tokens, &limit)?,
      tokens,
      &ops::zeros_like(tokens)?,
    )?;
    let inputs = mul_s(
      &m.embed_tokens_per_layer.forward(&toks)?,
      (p as f64).powf(0.5),
    )?;
    let inputs = ops::unflatten(&inputs, -1, &[n, p])?;
    let proj = mul_s(
      &m.per_layer_model_projection.forward(h)?,
      (c.hidden_size as f64).powf(-0.5),
    )?;
    let proj = m
      .per_layer_projection_norm
      .forward(&ops::unflatten(&proj, -1, &[n, p])?)?;
    mul_s(&ops::add(&proj, &inputs)?, 2f64.powf(-0.5))
  }

  /// Streams 1.. rescaled to the RMS magnitude of stream 0 (python's
  /// `h[1:] * (target / maximum(mags, finfo.min))`).
  fn match_magnitudes(h: &Array, target: &Array) -> Result<Array> {
    let n = h.dim(0).unwrap_or(1);
    let head = slice_axis(h, 0, 0, 1)?;
    let rest = slice_axis(h, 0, 1, n)?;
    let mags = pow_s(&ops::mean_axis(&ops::square(&rest)?, -1, true)?, 0.5)?;
    let min = Array::scalar_as(mlxrs_nn::attention::finfo_min(mags.dtype()), mags.dtype())?;
    let rest = ops::multiply(&rest, &ops::divide(target, &ops::maximum(&mags, &min)?)?)?;
    ops::concatenate_axis(&[head, rest], 0)
  }

  fn run(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
  ) -> Result<Array> {
    check_caches(caches.len(), self.first_kv_shared)?;
    let m = &self.model.language_model;
    let h = mul_s(
      &m.embed_tokens.forward(tokens)?,
      (self.c.hidden_size as f64).powf(0.5),
    )?;
    let pli = self.per_layer_inputs(tokens, &h)?;
    let n = tokens.dim(-1).unwrap_or(1);
    let first = |s: bool| m.layers.iter().position(|l| l.sliding == s);
    let mask_at = |i: Option<usize>, w: Option<i32>| -> Result<AttnMask> {
      match (i.and_then(|i| caches.get(i)), key_valid) {
        (Some(c), Some(kv)) => crate::batch::padded_mask(kv, n, c.offset, w),
        (Some(c), None) => c.make_mask(n, w),
        (None, _) => Ok(AttnMask::None),
      }
    };
    let global = mask_at(first(false), None)?;
    let swa = mask_at(first(true), Some(self.c.sliding_window))?;
    let target = pow_s(&ops::mean_axis(&ops::square(&h)?, -1, true)?, 0.5)?;
    let mut streams = vec![h.clone()];
    for p in &m.altup_projections {
      streams.push(p.forward(&h)?);
    }
    let mut x = Self::match_magnitudes(&ops::stack(&streams)?, &target)?;
    let offset = caches.first().map_or(0, |c| c.offset);
    let mut written: Vec<Option<(Array, Array)>> = vec![None; caches.len()];
    for (i, layer) in m.layers.iter().enumerate() {
      let mask = if layer.sliding { &swa } else { &global };
      let per = ops::squeeze_axes(&slice_axis(&pli, 2, i as i32, i as i32 + 1)?, &[2])?;
      let ci = self.cache_idx[i];
      let (cache, shared) = if i < self.first_kv_shared {
        (caches.get_mut(ci), None)
      } else {
        (None, written.get(ci).and_then(Option::as_ref))
      };
      if i >= self.first_kv_shared && shared.is_none() {
        return Err(Error::InvalidArgument(format!(
          "gemma3n: KV-shared layer {i} has no keys/values from layer {ci}"
        )));
      }
      let (out, own) = layer.forward(&x, mask, cache, shared, &per, offset)?;
      x = out;
      if let Some(kv) = own
        && i < written.len()
      {
        written[i] = Some(kv);
      }
    }
    let target = pow_s(
      &ops::mean_axis(&ops::square(&index0(&x, 0)?)?, -1, true)?,
      0.5,
    )?;
    let mut streams = vec![index0(&x, 0)?];
    for (j, p) in m.altup_unembed_projections.iter().enumerate() {
      streams.push(p.forward(&index0(&x, j as i32 + 1)?)?);
    }
    let x = Self::match_magnitudes(&ops::stack(&streams)?, &target)?;
    m.norm.forward(&ops::mean_axis(&x, 0, false)?)
  }
}

/// Registry entry for `gemma3n`: its `text_config` (the loader merges it
/// into the top level; a raw config.json works too).
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let tc = match config.get("text_config") {
    Some(t) if t.is_object() => t,
    Some(Value::Null) | None => config,
    Some(_) => return Err(bad("field \"text_config\" must be an object".into())),
  };
  // gemma3n.py: plain RoPE whatever `rope_scaling` says.
  super::base::reject_unhandled(tc, "gemma3n", "rope_scaling", |_| false)?;
  Ok(Box::new(Gemma3n::new(parse_args(tc)?)?))
}

impl LanguageModel for Gemma3n {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.run(tokens, caches, None)
  }

  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    crate::batch::check_padded_caches(caches)?;
    self.run(tokens, caches, Some(key_valid))
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    let out = self.model.language_model.embed_tokens.as_linear(hidden)?;
    match self.c.final_logit_softcapping {
      Some(c) => {
        let c = Array::scalar_as(c as f64, out.dtype())?;
        ops::multiply(&ops::tanh(&ops::divide(&out, &c)?)?, &c)
      }
      None => Ok(out),
    }
  }

  /// mlx-lm's `make_cache`: one per layer with its own keys/values,
  /// rotating caches of `sliding_window` for sliding layers, standard (or,
  /// under `max_kv_size`, rotating with 4 kept) for full layers.
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .language_model
      .layers
      .iter()
      .take(self.first_kv_shared)
      .map(|l| match (l.sliding, max_kv_size) {
        (true, _) => KvCache::new(KvCacheKind::Rotating {
          max_size: self.c.sliding_window,
          keep: 0,
        }),
        (false, Some(m)) => KvCache::new(KvCacheKind::Rotating {
          max_size: m,
          keep: 4,
        }),
        (false, None) => KvCache::standard(),
      })
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  /// mlx-lm `Model.sanitize`: the vision / audio towers and their
  /// embedders dropped.
  fn sanitize(&self, mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    const DROP: [&str; 4] = [
      "model.vision_tower.",
      "model.audio_tower.",
      "model.embed_audio.",
      "model.embed_vision.",
    ];
    weights.retain(|k, _| !DROP.iter().any(|p| k.starts_with(p)));
    Ok(weights)
  }

  fn vocab_size(&self) -> i32 {
    self.c.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }
}
