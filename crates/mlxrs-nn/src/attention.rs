//! Attention with cache update: mlx-lm's `scaled_dot_product_attention(q, k,
//! v, cache, scale, mask, sinks)` and `create_attention_mask`, over MLX's
//! fused `mx.fast.scaled_dot_product_attention`.

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Result, ops};

/// The mask an attention call needs (mlx-lm's `create_attention_mask`
/// result: `None`, `"causal"`, or an explicit array).
#[derive(Clone)]
pub enum AttnMask {
  /// No mask (a single query token).
  None,
  /// Implicit causal mask (the kernel offsets it by `T_kv - T_q`).
  Causal,
  /// Explicit boolean/additive mask broadcastable to `[B, H, T_q, T_kv]`.
  Array(Array),
}

impl AttnMask {
  /// mlx-lm's `create_attention_mask(h, cache, window_size)` for `n` new
  /// tokens after `offset` cached ones: none for a single token, causal
  /// otherwise, or an explicit sliding-window mask when the window is
  /// shorter than the span.
  pub fn causal(n: i32, offset: i32, window: Option<i32>) -> Result<AttnMask> {
    match window {
      Some(w) if n > 1 && offset + n > w => Ok(AttnMask::Array(causal_mask(n, offset, Some(w))?)),
      Some(w) if n == 1 && offset + 1 > w => Ok(AttnMask::Array(causal_mask(1, offset, Some(w))?)),
      _ if n == 1 => Ok(AttnMask::None),
      _ => Ok(AttnMask::Causal),
    }
  }
}

/// Boolean `[n, offset + n]` mask: query `i` (absolute `offset + i`) sees key
/// `j` iff `j <= offset + i` and, with a window, `offset + i < j + window`
/// (mlx-lm's `create_causal_mask`).
pub fn causal_mask(n: i32, offset: i32, window: Option<i32>) -> Result<Array> {
  let total = offset + n;
  let mut m = Vec::with_capacity((n * total) as usize);
  for i in 0..n {
    let qi = offset + i;
    for j in 0..total {
      let mut ok = qi >= j;
      if let Some(w) = window {
        ok = ok && qi < j + w;
      }
      m.push(ok);
    }
  }
  Array::from_slice(&m, &[n, total])
}

/// Fused attention over `q` `[B, Hq, Tq, D]` and the (already cache-updated)
/// `k`, `v` `[B, Hkv, Tkv, D]`, with optional attention sinks `[Hq]`.
pub fn sdpa_with_cache(
  q: &Array,
  k: &Array,
  v: &Array,
  scale: f32,
  mask: &AttnMask,
  sinks: Option<&Array>,
) -> Result<Array> {
  if let Some(s) = sinks {
    return sdpa_with_sinks(q, k, v, scale, mask, s);
  }
  let m = match mask {
    AttnMask::None => Mask::None,
    AttnMask::Causal => Mask::Causal,
    AttnMask::Array(a) => Mask::Array(a),
  };
  scaled_dot_product_attention(q, k, v, scale, m)
}

fn sdpa_with_sinks(
  q: &Array,
  k: &Array,
  v: &Array,
  scale: f32,
  mask: &AttnMask,
  sinks: &Array,
) -> Result<Array> {
  let (mode, arr) = match mask {
    AttnMask::None => ("", None),
    AttnMask::Causal => ("causal", None),
    AttnMask::Array(a) => ("array", Some(a)),
  };
  mlxrs_core::fast::scaled_dot_product_attention_full(q, k, v, scale, mode, arr, Some(sinks))
}

/// Attention over quantized keys / values (mlx-lm
/// `quantized_scaled_dot_product_attention(queries, q_keys, q_values,
/// scale, mask, group_size, bits)`): `q` `[B, Hq, Tq, D]`, keys / values
/// `(packed, scales, biases)` `[B, Hkv, Tkv, ...]`; grouped-query heads
/// are handled by a reshape, as in python.
pub fn quantized_sdpa(
  q: &Array,
  q_keys: &[Array],
  q_values: &[Array],
  scale: f32,
  mask: &AttnMask,
  group_size: i32,
  bits: i32,
) -> Result<Array> {
  use mlxrs_core::{Dtype, Error};
  if q.ndim() != 4 || q_keys.len() < 2 || q_values.len() < 2 || q_keys[0].ndim() != 4 {
    return Err(Error::InvalidArgument(format!(
      "quantized attention expects q [B, H, T, D] and (packed, scales, biases) keys/values, got q {:?}",
      q.shape()
    )));
  }
  let qs = q.shape();
  let (b, n_q, l, d) = (qs[0], qs[1], qs[2], qs[3]);
  let n_kv = q_keys[0].dim(-3).unwrap_or(1);
  if n_kv <= 0 || n_q % n_kv != 0 {
    return Err(Error::InvalidArgument(format!(
      "{n_q} query heads are not a multiple of {n_kv} key/value heads"
    )));
  }
  let reps = n_q / n_kv;
  let mut queries = ops::multiply(q, &Array::scalar_as(scale as f64, q.dtype())?)?;
  let expand =
    |t: &[Array]| -> Result<Vec<Array>> { t.iter().map(|x| ops::expand_dims(x, -3)).collect() };
  let (ks, vs) = if reps > 1 {
    queries = ops::reshape(&queries, &[b, n_kv, reps, l, d])?;
    (expand(q_keys)?, expand(q_values)?)
  } else {
    (q_keys.to_vec(), q_values.to_vec())
  };
  let mut scores = ops::quantized_matmul(
    &queries,
    &ks[0],
    &ks[1],
    ks.get(2),
    true,
    Some(group_size),
    Some(bits),
    "affine",
  )?;
  let mask_arr = match mask {
    AttnMask::None => None,
    AttnMask::Causal => {
      let s = scores.shape();
      let (ql, kl) = (s[s.len() - 2], s[s.len() - 1]);
      let qi = ops::arange((kl - ql) as f64, kl as f64, 1.0, Dtype::Int32)?;
      let ki = ops::arange(0.0, kl as f64, 1.0, Dtype::Int32)?;
      Some(ops::greater_equal(
        &ops::expand_dims(&qi, 1)?,
        &ops::expand_dims(&ki, 0)?,
      )?)
    }
    AttnMask::Array(a) => Some(a.clone()),
  };
  if let Some(mut m) = mask_arr {
    if reps > 1 && m.ndim() > 3 {
      m = ops::expand_dims(&m, -3)?;
    }
    scores = if m.dtype() == Dtype::Bool {
      let min = Array::scalar_as(finfo_min(scores.dtype()), scores.dtype())?;
      ops::where_(&m, &scores, &min)?
    } else {
      ops::add(&scores, &m)?
    };
  }
  let scores = ops::softmax_axis(&scores, -1, true)?;
  let out = ops::quantized_matmul(
    &scores,
    &vs[0],
    &vs[1],
    vs.get(2),
    false,
    Some(group_size),
    Some(bits),
    "affine",
  )?;
  if reps > 1 {
    ops::reshape(&out, &[b, n_q, l, -1])
  } else {
    Ok(out)
  }
}

/// The most negative finite value of a float dtype (python
/// `mx.finfo(dtype).min`).
pub fn finfo_min(dtype: mlxrs_core::Dtype) -> f64 {
  use mlxrs_core::Dtype;
  match dtype {
    Dtype::Float16 => -65504.0,
    Dtype::Bfloat16 => -3.3895313892515355e38,
    Dtype::Float64 => f64::MIN,
    _ => f32::MIN as f64,
  }
}

/// Update `cache` with this step's `k`, `v` and attend (mlx-lm's
/// `cache.update_and_fetch` followed by `scaled_dot_product_attention(q,
/// k, v, cache, scale, mask, sinks)`): a quantized cache runs
/// [`quantized_sdpa`] on its quantized keys/values, every other cache the
/// fused kernel. Sinks with a quantized cache are an error, as in python.
#[allow(clippy::too_many_arguments)]
pub fn attention_with_cache_update(
  q: &Array,
  k: &Array,
  v: &Array,
  cache: &mut crate::KvCache,
  scale: f32,
  mask: &AttnMask,
  sinks: Option<&Array>,
) -> Result<Array> {
  if cache.is_quantized() && sinks.is_some() {
    return Err(mlxrs_core::Error::InvalidArgument(
      "Quantized SDPA does not support attention sinks.".into(),
    ));
  }
  match cache.update_and_fetch_any(k, v)? {
    crate::cache::CachedKv::Dense(k, v) => sdpa_with_cache(q, &k, &v, scale, mask, sinks),
    crate::cache::CachedKv::Quantized {
      keys,
      values,
      params,
    } => quantized_sdpa(
      q,
      &keys,
      &values,
      scale,
      mask,
      params.group_size,
      params.bits,
    ),
  }
}

/// Multi-head attention with input/output projections (python
/// `nn.MultiHeadAttention(dims, num_heads, query_input_dims,
/// key_input_dims, value_input_dims, value_dims, value_output_dims,
/// bias)`): parameters `query_proj`, `key_proj`, `value_proj`,
/// `out_proj`.
pub struct MultiHeadAttention {
  /// Heads.
  pub num_heads: i32,
  /// `[dims, query_input_dims]`.
  pub query_proj: crate::Linear,
  /// `[dims, key_input_dims]`.
  pub key_proj: crate::Linear,
  /// `[value_dims, value_input_dims]`.
  pub value_proj: crate::Linear,
  /// `[value_output_dims, value_dims]`.
  pub out_proj: crate::Linear,
}

crate::module!(MultiHeadAttention {
  query_proj,
  key_proj,
  value_proj,
  out_proj
});

/// Optional widths of [`MultiHeadAttention`] (python's keyword arguments;
/// `None` means python's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct MhaDims {
  /// Query input width (default `dims`).
  pub query_input_dims: Option<i32>,
  /// Key input width (default `dims`).
  pub key_input_dims: Option<i32>,
  /// Value input width (default the key input width).
  pub value_input_dims: Option<i32>,
  /// Projected value width (default `dims`).
  pub value_dims: Option<i32>,
  /// Output width (default `dims`).
  pub value_output_dims: Option<i32>,
}

impl MultiHeadAttention {
  fn dims_of(dims: i32, num_heads: i32, o: MhaDims) -> Result<[(i32, i32); 4]> {
    if num_heads <= 0 || dims <= 0 || dims % num_heads != 0 {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "The input feature dimensions should be divisible by the number of heads ({dims} % {num_heads}) != 0"
      )));
    }
    let qi = o.query_input_dims.unwrap_or(dims);
    let ki = o.key_input_dims.unwrap_or(dims);
    let vi = o.value_input_dims.unwrap_or(ki);
    let vd = o.value_dims.unwrap_or(dims);
    let vo = o.value_output_dims.unwrap_or(dims);
    Ok([(qi, dims), (ki, dims), (vi, vd), (vd, vo)])
  }

  /// An unloaded layer (fill with [`crate::Module::load`]).
  pub fn new(dims: i32, num_heads: i32, opts: MhaDims, bias: bool) -> Result<MultiHeadAttention> {
    let d = MultiHeadAttention::dims_of(dims, num_heads, opts)?;
    let lin = |(i, o): (i32, i32)| crate::Linear::new(i, o, bias);
    Ok(MultiHeadAttention {
      num_heads,
      query_proj: lin(d[0]),
      key_proj: lin(d[1]),
      value_proj: lin(d[2]),
      out_proj: lin(d[3]),
    })
  }

  /// A freshly initialised layer (python init), from `key` or the global key.
  pub fn init(
    dims: i32,
    num_heads: i32,
    opts: MhaDims,
    bias: bool,
    key: Option<&Array>,
  ) -> Result<MultiHeadAttention> {
    let d = MultiHeadAttention::dims_of(dims, num_heads, opts)?;
    let keys = match key {
      Some(k) => {
        let ks = mlxrs_core::random::split_num(k, 4)?;
        (0..4)
          .map(|i| ops::take_axis(&ks, &Array::scalar(i), 0).map(Some))
          .collect::<Result<Vec<_>>>()?
      }
      None => vec![None, None, None, None],
    };
    let lin = |j: usize| crate::Linear::init(d[j].0, d[j].1, bias, keys[j].as_ref());
    Ok(MultiHeadAttention {
      num_heads,
      query_proj: lin(0)?,
      key_proj: lin(1)?,
      value_proj: lin(2)?,
      out_proj: lin(3)?,
    })
  }

  /// Attend `queries` `[B, Lq, qi]` to `keys` `[B, Lk, ki]` / `values`
  /// `[B, Lk, vi]`; `mask` is an additive or boolean mask broadcastable to
  /// `[B, heads, Lq, Lk]`.
  pub fn forward(
    &self,
    queries: &Array,
    keys: &Array,
    values: &Array,
    mask: Option<&Array>,
  ) -> Result<Array> {
    let q = self.query_proj.forward(queries)?;
    let k = self.key_proj.forward(keys)?;
    let v = self.value_proj.forward(values)?;
    let h = self.num_heads;
    let heads = |t: &Array| -> Result<Array> {
      ops::transpose_axes(&ops::unflatten(t, -1, &[h, -1])?, &[0, 2, 1, 3])
    };
    let (q, k, v) = (heads(&q)?, heads(&k)?, heads(&v)?);
    let scale = (1.0 / q.dim(-1).unwrap_or(1) as f64).sqrt() as f32;
    let m = match mask {
      Some(a) => Mask::Array(a),
      None => Mask::None,
    };
    let o = scaled_dot_product_attention(&q, &k, &v, scale, m)?;
    let o = ops::flatten(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, -2, -1)?;
    self.out_proj.forward(&o)
  }

  /// python `MultiHeadAttention.create_additive_causal_mask(N, dtype)`:
  /// `[N, N]` with `finfo(dtype).min` above the diagonal.
  pub fn create_additive_causal_mask(n: i32, dtype: mlxrs_core::Dtype) -> Result<Array> {
    let idx = ops::arange(0.0, n as f64, 1.0, mlxrs_core::Dtype::Int32)?;
    let m = ops::less(&ops::expand_dims(&idx, 1)?, &ops::expand_dims(&idx, 0)?)?;
    ops::multiply(
      &ops::astype(&m, dtype)?,
      &Array::scalar_as(finfo_min(dtype), dtype)?,
    )
  }
}
