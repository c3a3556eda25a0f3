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

fn sdpa_with_sinks(q: &Array, k: &Array, v: &Array, scale: f32, mask: &AttnMask, sinks: &Array) -> Result<Array> {
  let (mode, arr) = match mask {
    AttnMask::None => ("", None),
    AttnMask::Causal => ("causal", None),
    AttnMask::Array(a) => ("array", Some(a)),
  };
  let _ = ops::stop_gradient; // keep the ops import used in all cfgs
  mlxrs_core::fast::scaled_dot_product_attention_full(q, k, v, scale, mode, arr, Some(sinks))
}
