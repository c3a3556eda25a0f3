//! Encoder self-attention over a padded batch: the additive mask of an
//! attention pattern (bidirectional, causal, sliding windows) and the
//! head split / `mx.fast.scaled_dot_product_attention` / merge around it
//! (python transformers' `eager` / `sdpa` attention of encoder models).
//! Encoders see the whole sequence at once, so there is no KV cache here
//! (decoders use `mlxrs_nn::attention_with_cache_update`).

use mlxrs_core::{Array, Dtype, fast, ops};

use crate::activation::on_cpu;
use crate::error::Result;
use crate::host;

/// Which query/key pairs may attend, besides the key being a real token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnPattern {
  /// Every (real) key.
  Full,
  /// Keys at or before the query (decoder models).
  Causal,
  /// Keys with `|q - k| <= radius` (ModernBERT local attention, bidirectional
  /// Gemma sliding layers).
  Window(usize),
  /// Keys with `0 <= q - k < size` (causal sliding window).
  CausalWindow(usize),
}

/// The additive attention mask for `sdpa`: 0 where attention is allowed,
/// the most negative finite f32 elsewhere (finite so that a fully masked
/// padding row stays finite, as transformers' `finfo.min` masks do).
/// `key_mask` is `[B, T]` (1 = real token); the result broadcasts to
/// `[B, heads, T, T]`.
pub fn attention_mask(key_mask: &Array, pattern: AttnPattern) -> Result<Array> {
  let shape = key_mask.shape();
  let (b, t) = (shape[0], shape[1]);
  let keys = ops::greater(key_mask, &Array::scalar_as(0.0, key_mask.dtype())?)?;
  let keys = ops::reshape(&keys, &[b, 1, 1, t])?;
  let allowed = if pattern == AttnPattern::Full {
    keys
  } else {
    let pos = ops::arange(0.0, f64::from(t), 1.0, Dtype::Int32)?;
    let q = ops::reshape(&pos, &[t, 1])?;
    let k = ops::reshape(&pos, &[1, t])?;
    let d = ops::subtract(&q, &k)?; // q - k
    let zero = Array::scalar_as(0.0, Dtype::Int32)?;
    let int = |v: usize| Array::scalar_as(v as f64, Dtype::Int32);
    let pat = match pattern {
      AttnPattern::Full => unreachable!("handled above"),
      AttnPattern::Causal => ops::greater_equal(&d, &zero)?,
      AttnPattern::Window(r) => ops::less_equal(&ops::abs(&d)?, &int(r)?)?,
      AttnPattern::CausalWindow(s) => {
        ops::logical_and(&ops::greater_equal(&d, &zero)?, &ops::less(&d, &int(s)?)?)?
      }
    };
    ops::logical_and(&keys, &ops::reshape(&pat, &[1, 1, t, t])?)?
  };
  let zero = Array::scalar_as(0.0, Dtype::Float32)?;
  let neg = Array::scalar_as(f64::from(f32::MIN), Dtype::Float32)?;
  Ok(ops::where_(&allowed, &zero, &neg)?)
}

/// Head layout of an attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
  /// Query heads.
  pub q: usize,
  /// Key / value heads (GQA when fewer than `q`).
  pub kv: usize,
  /// Width of one head.
  pub dim: usize,
}

/// Multi-head attention core: `q` `[B, T, Hq*D]`, `k`/`v` `[B, T, Hkv*D]`
/// after projection; returns `[B, T, Hq*D]` (python
/// `mx.fast.scaled_dot_product_attention` between the head split and
/// merge). `prep` is applied to the `[B, H, T, D]` queries (`true`) and keys
/// (`false`): per-head norms, RoPE. On the CPU the softmax runs as a host
/// kernel between two MLX matmuls (same math as MLX's CPU sdpa fallback).
pub fn attend(
  q: &Array,
  k: &Array,
  v: &Array,
  heads: Heads,
  scale: f32,
  mask: &Array,
  prep: impl Fn(Array, bool) -> Result<Array>,
) -> Result<Array> {
  let s = q.shape();
  let (b, t) = (s[0], s[1]);
  let split = |x: &Array, h: usize| -> Result<Array> {
    let x = ops::reshape(x, &[b, t, h as i32, heads.dim as i32])?;
    Ok(ops::transpose_axes(&x, &[0, 2, 1, 3])?)
  };
  let q = prep(split(q, heads.q)?, true)?;
  let k = prep(split(k, heads.kv)?, false)?;
  let v = split(v, heads.kv)?;
  let o = if on_cpu() && q.dtype() == Dtype::Float32 {
    // MLX's CPU sdpa is these two matmuls around a scalar-exp softmax; the
    // host softmax is vectorized and multi-threaded.
    let rep = (heads.q / heads.kv) as i32;
    let (k, v) = if rep > 1 {
      (ops::repeat_axis(&k, rep, 1)?, ops::repeat_axis(&v, rep, 1)?)
    } else {
      (k, v)
    };
    let sc = (&ops::matmul(&(&q * scale)?, &ops::swapaxes(&k, -1, -2)?)? + mask)?;
    ops::matmul(&host::softmax(&sc)?, &v)?
  } else {
    fast::scaled_dot_product_attention(&q, &k, &v, scale, fast::Mask::Array(mask))?
  };
  let o = ops::transpose_axes(&o, &[0, 2, 1, 3])?;
  Ok(ops::reshape(&o, &[b, t, (heads.q * heads.dim) as i32])?)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn attention_mask_patterns() {
    let km = Array::from_slice(&[1i32, 1, 1, 0], &[1, 4]).unwrap();
    let allowed = |p| -> Vec<bool> {
      let m = attention_mask(&km, p).unwrap();
      let mut m = ops::broadcast_to(&m, &[1, 1, 4, 4]).unwrap();
      m.to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|&v| v == 0.0)
        .collect()
    };
    let full = allowed(AttnPattern::Full);
    assert_eq!(&full[..4], &[true, true, true, false]);
    let causal = allowed(AttnPattern::Causal);
    assert_eq!(&causal[4..8], &[true, true, false, false]);
    let win = allowed(AttnPattern::Window(1));
    assert_eq!(&win[..4], &[true, true, false, false]);
    assert_eq!(&win[8..12], &[false, true, true, false]);
    let cw = allowed(AttnPattern::CausalWindow(2));
    assert_eq!(&cw[8..12], &[false, true, true, false]);
  }
}
