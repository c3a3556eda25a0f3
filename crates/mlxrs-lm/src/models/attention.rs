//! The attention layer and decoder-stack loop most mlx-lm architectures
//! share (`Attention` of llama.py / starcoder2.py / stablelm.py / ...):
//! `q_proj`/`k_proj`/`v_proj`/`o_proj`, optional per-head RMSNorm on q and
//! k, RoPE (possibly over only the first dims of each head), scaled dot-
//! product attention over a KV cache; and the per-layer mask selection
//! (full / sliding window / left-padded batch) of their `Model.__call__`.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{
  AttnMask, KvCache, Linear, Module, Quantizable, RmsNorm, Rope, StackedLinear, Weights, join,
};

use super::base::split_at;

/// Shape of an [`Attention`] layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnDims {
  /// Model width (input and output of the layer).
  pub hidden: i32,
  /// Query heads.
  pub n_heads: i32,
  /// Key/value heads.
  pub n_kv_heads: i32,
  /// Per-head width.
  pub head_dim: i32,
  /// Bias on q/k/v.
  pub qkv_bias: bool,
  /// Bias on o_proj.
  pub o_bias: bool,
  /// Per-head RMSNorm (eps) on q and k before RoPE (Qwen3).
  pub qk_norm: Option<f32>,
  /// RMSNorm (eps) over the whole q and k projections (all heads at once,
  /// OLMo-2 / OLMoE style) instead.
  pub qk_norm_full: Option<f32>,
  /// Attention scale (usually `head_dim^-0.5`).
  pub scale: f32,
}

impl AttnDims {
  /// The usual layout: `head_dim^-0.5` scale, no q/k norm.
  pub fn new(
    hidden: i32,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    bias: (bool, bool),
  ) -> AttnDims {
    AttnDims {
      hidden,
      n_heads,
      n_kv_heads,
      head_dim,
      qkv_bias: bias.0,
      o_bias: bias.1,
      qk_norm: None,
      qk_norm_full: None,
      scale: (head_dim as f32).powf(-0.5),
    }
  }
}

/// `self_attn` of a Llama-shaped block.
pub(crate) struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  q_norm: Option<RmsNorm>,
  k_norm: Option<RmsNorm>,
  n_heads: i32,
  n_kv_heads: i32,
  scale: f32,
  /// `None`: no positional encoding (NoPE layers).
  rope: Option<Rope>,
  /// q/k norms over the whole projection rather than per head.
  norm_full: bool,
  /// The output projection's name (`o_proj`; phi: `dense`).
  o_name: &'static str,
  /// The q/k norms' names (`q_norm`, `k_norm`; LFM2: `q_layernorm`,
  /// `k_layernorm`).
  qk_names: (&'static str, &'static str),
  /// Llama-4 attention-temperature scaling of the queries after RoPE:
  /// `(beta, original_max_position_embeddings)`.
  query_scaling: Option<(f32, f32)>,
  /// Weightless per-head RMSNorm (eps) on q and k before RoPE (Llama-4).
  plain_qk_norm: Option<f32>,
  /// q/k/v as one stacked projection (see [`Attention::fuse_projections`]);
  /// dropped whenever the weights may change.
  qkv: StackedLinear,
  /// With per-head q/k norms of one eps: their weights side by side,
  /// `[1, n_heads + n_kv_heads, 1, head_dim]`, so a decoded token's query and
  /// key heads are normalized in one go (kept and dropped with `qkv`).
  qk_norm_weight: Option<(Array, f32)>,
}

impl Attention {
  fn named(&self) -> [(&'static str, &dyn Module); 6] {
    [
      ("q_proj", &self.q_proj),
      ("k_proj", &self.k_proj),
      ("v_proj", &self.v_proj),
      (self.o_name, &self.o_proj),
      (self.qk_names.0, &self.q_norm),
      (self.qk_names.1, &self.k_norm),
    ]
  }

  fn named_mut(&mut self) -> [(&'static str, &mut dyn Module); 6] {
    [
      ("q_proj", &mut self.q_proj),
      ("k_proj", &mut self.k_proj),
      ("v_proj", &mut self.v_proj),
      (self.o_name, &mut self.o_proj),
      (self.qk_names.0, &mut self.q_norm),
      (self.qk_names.1, &mut self.k_norm),
    ]
  }

  /// Drop the decode-only stacks (they are rebuilt by
  /// [`Attention::fuse_projections`]).
  fn forget_stacks(&mut self) {
    self.qkv.forget();
    self.qk_norm_weight = None;
  }

  /// The same layer with its output projection named `name` (phi's
  /// `dense`).
  pub fn with_o_name(mut self, name: &'static str) -> Attention {
    self.o_name = name;
    self
  }

  /// The same layer with its output projection named `o` and its q/k
  /// norms `q`, `k` (LFM2's `out_proj`, `q_layernorm`, `k_layernorm`).
  pub fn with_names(mut self, o: &'static str, q: &'static str, k: &'static str) -> Attention {
    self.o_name = o;
    self.qk_names = (q, k);
    self
  }

  /// The same layer scaling its roped queries at position `p` by
  /// `1 + beta * ln(1 + floor(p / original_max))` (mlx-lm's
  /// `_get_llama_4_attn_scale`: Ministral-3).
  pub fn with_query_scaling(mut self, beta: f32, original_max: f32) -> Attention {
    self.query_scaling = Some((beta, original_max));
    self
  }

  /// The same layer with Gemma's `(1 + w)` q/k norms (`RMSNorm` of
  /// gemma3_text.py: the loaded weight plus one), of the shape and eps it
  /// was built with.
  pub fn with_plus_one_qk_norms(mut self) -> Attention {
    for norm in [&mut self.q_norm, &mut self.k_norm].into_iter().flatten() {
      *norm = RmsNorm::new_plus_one(norm.dims, norm.eps);
    }
    self
  }

  /// The same layer RMS-normalizing each head of q and k without a weight
  /// (`mx.fast.rms_norm(x, None, eps)`, Llama-4) before RoPE.
  pub fn with_plain_qk_norm(mut self, eps: f32) -> Attention {
    self.plain_qk_norm = Some(eps);
    self
  }
}

impl Module for Attention {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.forget_stacks();
    for (n, m) in self.named_mut() {
      m.load(w, &join(prefix, n));
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    for (n, m) in self.named() {
      m.visit(&join(prefix, n), f);
    }
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.forget_stacks();
    for (n, m) in self.named_mut() {
      m.visit_mut(&join(prefix, n), f);
    }
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    for (n, m) in self.named() {
      m.visit_frozen(&join(prefix, n), f);
    }
  }
  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    self.forget_stacks();
    for (n, m) in self.named_mut() {
      m.visit_quantizable_mut(&join(prefix, n), f);
    }
  }
}

impl Attention {
  /// An unloaded layer of shape `d` with positional encoding `rope`.
  pub fn new(d: AttnDims, rope: Option<Rope>) -> Attention {
    let (h, hd) = (d.hidden, d.head_dim);
    Attention {
      q_proj: Linear::new(h, d.n_heads * hd, d.qkv_bias),
      k_proj: Linear::new(h, d.n_kv_heads * hd, d.qkv_bias),
      v_proj: Linear::new(h, d.n_kv_heads * hd, d.qkv_bias),
      o_proj: Linear::new(d.n_heads * hd, h, d.o_bias),
      q_norm: match (d.qk_norm_full, d.qk_norm) {
        (Some(eps), _) => Some(RmsNorm::new(d.n_heads * hd, eps)),
        (None, eps) => eps.map(|eps| RmsNorm::new(hd, eps)),
      },
      k_norm: match (d.qk_norm_full, d.qk_norm) {
        (Some(eps), _) => Some(RmsNorm::new(d.n_kv_heads * hd, eps)),
        (None, eps) => eps.map(|eps| RmsNorm::new(hd, eps)),
      },
      norm_full: d.qk_norm_full.is_some(),
      n_heads: d.n_heads,
      n_kv_heads: d.n_kv_heads,
      scale: d.scale,
      rope,
      o_name: "o_proj",
      qk_names: ("q_norm", "k_norm"),
      query_scaling: None,
      plain_qk_norm: None,
      qkv: StackedLinear::default(),
      qk_norm_weight: None,
    }
  }

  /// Stack q/k/v into one projection for inference (one matmul per step
  /// instead of three; [`Linear::stack_outputs`]). The separate layers keep
  /// their names and values (they become views of the stacked weights), so
  /// saving, inspecting and reloading see the same model; any change to
  /// the weights (`load`, `visit_mut`, quantization) drops the stacked
  /// copy, and layers with adapters are never stacked.
  /// Their weights' transposes (and `o_proj`'s) are kept ready for a GPU
  /// ([`Linear::keep_transposed`]).
  pub fn fuse_projections(&mut self) -> Result<()> {
    self
      .qkv
      .stack(&mut [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj])?;
    self.qk_norm_weight = match (&self.q_norm, &self.k_norm, self.qkv.get()) {
      (Some(qn), Some(kn), Some(_))
        if !self.norm_full && qn.eps == kn.eps && qn.weight.dtype() == kn.weight.dtype() =>
      {
        // `[1, heads, 1, d]`: the shape of one row's heads, so a single-row
        // step multiplies without a broadcast node.
        let rows = |w: &Array, n: i32| -> Result<Array> {
          let d = w.dim(-1).unwrap_or(0);
          ops::broadcast_to(&ops::reshape(w, &[1, 1, 1, -1])?, &[1, n, 1, d])
        };
        let mut w = ops::concatenate_axis(
          &[
            rows(&qn.weight, self.n_heads)?,
            rows(&kn.weight, self.n_kv_heads)?,
          ],
          1,
        )?;
        w.eval()?;
        Some((w, qn.eps))
      }
      _ => None,
    };
    if self.qkv.get().is_none() {
      for p in [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj] {
        p.keep_transposed()?;
      }
    }
    self.o_proj.keep_transposed()
  }

  /// Attention over `x` `[B, L, hidden]`, appending to `cache`; or over
  /// `x` `[B, hidden]`, one decoded token per row, returning `[B, hidden]`
  /// (a decode step kept two-dimensional has no flatten / unflatten nodes
  /// around its matmuls).
  pub fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    self.forward_with(x, None, mask, cache)
  }

  /// No rotary embedding in this layer (SmolLM3's NoPE layers: mlx-lm
  /// swaps `self_attn.rope` for a no-op).
  pub fn drop_rope(&mut self) {
    self.rope = None;
  }

  /// The stacked q | k | v projection, while the projections are stacked
  /// ([`Attention::fuse_projections`]).
  pub fn stacked_qkv(&self) -> Option<&Linear> {
    self.qkv.get()
  }

  /// [`Attention::forward`] from the stacked projection's output `qkv`
  /// (computed by the caller, e.g. fused with the norm before it); `x` gives
  /// the input's shape.
  pub fn forward_projected(
    &self,
    x: &Array,
    qkv: Array,
    mask: &AttnMask,
    cache: &mut KvCache,
  ) -> Result<Array> {
    self.forward_with(x, Some(qkv), mask, cache)
  }

  fn forward_with(
    &self,
    x: &Array,
    projected: Option<Array>,
    mask: &AttnMask,
    cache: &mut KvCache,
  ) -> Result<Array> {
    let s = x.shape();
    let rows = s.len() == 2;
    let (b, l) = (s[0], if rows { 1 } else { s[1] });
    let full = self.norm_full;
    let plain = self.plain_qk_norm;
    let heads = |t: Array, n: i32, norm: &Option<RmsNorm>, qk: bool| -> Result<Array> {
      let t = match (full, norm) {
        (true, Some(nm)) => nm.forward(&t)?,
        _ => t,
      };
      let norm = if full { &None } else { norm };
      // One decoded token: `[B, 1, n*d]` is already laid out as
      // `[B, n, 1, d]`, so one reshape stands for reshape + transpose (two
      // fewer graph nodes per projection for MLX to build and encode).
      let t = if l == 1 {
        ops::reshape(&t, &[b, n, 1, -1])?
      } else {
        ops::reshape(&t, &[b, l, n, -1])?
      };
      let t = match (norm, plain) {
        (Some(nm), _) => nm.forward(&t)?,
        (None, Some(eps)) if qk => mlxrs_core::fast::rms_norm(&t, None, eps)?,
        _ => t,
      };
      if l == 1 {
        Ok(t)
      } else {
        ops::transpose_axes(&t, &[0, 2, 1, 3])
      }
    };
    let plain_qk = self.q_norm.is_none() && self.k_norm.is_none() && plain.is_none();
    let (nq, nk) = (self.q_proj.out_dims, self.k_proj.out_dims);
    let stacked = match (self.qkv.get(), projected) {
      (Some(qkv), Some(y)) => Some((y, qkv.out_dims)),
      (Some(qkv), None) => Some((qkv.forward(x)?, qkv.out_dims)),
      (None, None) => None,
      (None, Some(_)) => {
        return Err(mlxrs_core::Error::InvalidArgument(
          "attention: a precomputed q|k|v projection needs stacked projections".into(),
        ));
      }
    };
    let (mut q, k, v) = match (&stacked, &self.rope, &self.qk_norm_weight) {
      // Stacked projections, no q/k norms: rotate the query and key heads
      // in one RoPE call (one kernel instead of two) and split after. One
      // decoded token: all heads are `[B, heads, 1, d]` after one reshape,
      // then one split.
      (Some((y, _)), Some(rope), _) if plain_qk && l == 1 => {
        let nqk = self.n_heads + self.n_kv_heads;
        let all = ops::reshape(y, &[b, nqk + self.n_kv_heads, 1, -1])?;
        let [qk, v] = split_at(&all, &[nqk], 1)?;
        let [q, k] = split_at(&rope.forward(&qk, cache.offset)?, &[self.n_heads], 1)?;
        (q, k, v)
      }
      // Stacked projections with per-head q/k norms (Qwen3), one decoded
      // token: `rms_norm(x, w)` is `rms_norm(x) * w` to the bit (MLX
      // rounds the normalized value to the dtype before the weight), so the
      // query and key heads share one weightless norm, one multiply by
      // their weights side by side and one RoPE (three kernels, not four).
      (Some((y, _)), Some(rope), Some((w, eps)))
        if l == 1 && plain.is_none() && w.dtype() == y.dtype() =>
      {
        let nqk = self.n_heads + self.n_kv_heads;
        let all = ops::reshape(y, &[b, nqk + self.n_kv_heads, 1, -1])?;
        let [qk, v] = split_at(&all, &[nqk], 1)?;
        let qk = ops::multiply(&mlxrs_core::fast::rms_norm(&qk, None, *eps)?, w)?;
        let [q, k] = split_at(&rope.forward(&qk, cache.offset)?, &[self.n_heads], 1)?;
        (q, k, v)
      }
      (Some((y, _)), Some(rope), _) if plain_qk => {
        let [qk, v] = split_at(y, &[nq + nk], -1)?;
        let qk = rope.forward(
          &heads(qk, self.n_heads + self.n_kv_heads, &None, false)?,
          cache.offset,
        )?;
        let [q, k] = split_at(&qk, &[self.n_heads], 1)?;
        (q, k, heads(v, self.n_kv_heads, &None, false)?)
      }
      (_, rope, _) => {
        let (q, k, v) = match &stacked {
          Some((y, _)) => {
            let [q, k, v] = split_at(y, &[nq, nq + nk], -1)?;
            (q, k, v)
          }
          None => (
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
          ),
        };
        let mut q = heads(q, self.n_heads, &self.q_norm, true)?;
        let mut k = heads(k, self.n_kv_heads, &self.k_norm, true)?;
        if let Some(rope) = rope {
          q = rope.forward(&q, cache.offset)?;
          k = rope.forward(&k, cache.offset)?;
        }
        (q, k, heads(v, self.n_kv_heads, &None, false)?)
      }
    };
    if let Some((beta, orig)) = self.query_scaling {
      q = ops::multiply(
        &q,
        &llama4_attn_scale(l, cache.offset, beta, orig, q.dtype())?,
      )?;
    }
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    let o = if rows {
      ops::reshape(&o, &[b, -1])?
    } else if l == 1 {
      ops::reshape(&o, &[b, 1, -1])?
    } else {
      ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?
    };
    self.o_proj.forward(&o)
  }
}

/// mlx-lm's `_get_llama_4_attn_scale(size, offset, beta, original_max)`:
/// `1 + beta * ln(1 + floor((arange(size) + offset) / original_max))` as a
/// `[size, 1]` column in `dt`.
pub(crate) fn llama4_attn_scale(
  size: i32,
  offset: i32,
  beta: f32,
  original_max: f32,
  dt: mlxrs_core::Dtype,
) -> Result<Array> {
  let pos = ops::arange(0.0, size as f64, 1.0, mlxrs_core::Dtype::Float32)?;
  let pos = ops::add(&pos, &Array::scalar(offset as f32))?;
  let steps = ops::floor(&ops::divide(&pos, &Array::scalar(original_max))?)?;
  let s = ops::add(
    &ops::multiply(
      &ops::log(&ops::add(&steps, &Array::scalar(1.0f32))?)?,
      &Array::scalar(beta),
    )?,
    &Array::scalar(1.0f32),
  )?;
  ops::astype(&ops::expand_dims(&s, -1)?, dt)
}

/// The masks of one forward: one for full-attention layers, one for
/// sliding-window layers (`window`), each built from the first cache of
/// its kind (mlx-lm's `fa_idx` / `swa_idx`). `key_valid` (rows of a left-
/// padded batch) gives padded masks, `mask` overrides both.
pub(crate) fn layer_masks(
  sliding: &[bool],
  caches: &[KvCache],
  n: i32,
  window: Option<i32>,
  key_valid: Option<&[Vec<bool>]>,
  mask: Option<&AttnMask>,
) -> Result<(AttnMask, AttnMask)> {
  super::base::check_caches(caches.len(), sliding.len())?;
  let one = |want_sliding: bool| -> Result<AttnMask> {
    let w = if want_sliding { window } else { None };
    match (
      sliding.iter().position(|s| *s == want_sliding),
      key_valid,
      mask,
    ) {
      (_, _, Some(m)) => Ok(m.clone()),
      (Some(i), Some(kv), None) => crate::batch::padded_mask(kv, n, caches[i].offset, w),
      (Some(i), None, None) => caches[i].make_mask(n, w),
      (None, _, None) => Ok(AttnMask::None),
    }
  };
  Ok((one(false)?, one(true)?))
}
