//! The few layers the encoders need, written with mlxrs-core ops (python
//! `mlx.nn` / `torch.nn` equivalents named on each). Kept small and local so
//! they can later be swapped for `mlxrs-nn`'s.
//!
//! All weights are `float32`: on the CPU, f32 is MLX's fast path.

use mlxrs_core::{Array, Dtype, fast, ops};

use crate::error::Result;
use crate::host;
use crate::weights::Weights;

/// `y = x @ W.T + b` (python `nn.Linear`).
pub struct Linear {
  w_t: Array,
  b: Option<Array>,
}

impl Linear {
  /// `prefix.weight` `[out, in]` and `prefix.bias` `[out]` (required when
  /// `bias`).
  pub fn load(
    w: &mut Weights,
    prefix: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
  ) -> Result<Linear> {
    let weight = w.take(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
    let b = if bias {
      Some(w.take(&format!("{prefix}.bias"), &[out_dim])?)
    } else {
      None
    };
    Linear::from_parts(weight, b)
  }

  /// Like [`Linear::load`], with the bias used when the file has it.
  pub fn load_opt_bias(
    w: &mut Weights,
    prefix: &str,
    in_dim: usize,
    out_dim: usize,
  ) -> Result<Linear> {
    let weight = w.take(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
    let b = w.take_opt(&format!("{prefix}.bias"), &[out_dim])?;
    Linear::from_parts(weight, b)
  }

  /// From a `[out, in]` weight and an optional `[out]` bias.
  pub fn from_parts(weight: Array, bias: Option<Array>) -> Result<Linear> {
    let mut w_t = ops::transpose(&weight)?;
    w_t.eval()?;
    Ok(Linear { w_t, b: bias })
  }

  /// Output width.
  pub fn out_features(&self) -> usize {
    self.w_t.dim(1).unwrap_or(0) as usize
  }

  /// Apply to `[..., in]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let y = ops::matmul(x, &self.w_t)?;

    match &self.b {
      Some(b) => Ok((&y + b)?),
      None => Ok(y),
    }
  }
}

/// Layer normalization over the last axis (python `nn.LayerNorm`,
/// `mx.fast.layer_norm`).
pub struct LayerNorm {
  weight: Array,
  bias: Option<Array>,
  eps: f32,
}

impl LayerNorm {
  /// `prefix.weight` (and `prefix.bias` when `bias`), width `dim`.
  pub fn load(
    w: &mut Weights,
    prefix: &str,
    dim: usize,
    eps: f32,
    bias: bool,
  ) -> Result<LayerNorm> {
    let weight = w.take(&format!("{prefix}.weight"), &[dim])?;
    let bias = if bias {
      Some(w.take(&format!("{prefix}.bias"), &[dim])?)
    } else {
      None
    };
    Ok(LayerNorm { weight, bias, eps })
  }

  /// Apply.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    Ok(fast::layer_norm(
      x,
      Some(&self.weight),
      self.bias.as_ref(),
      self.eps,
    )?)
  }
}

/// RMS normalization over the last axis (python `nn.RMSNorm`,
/// `mx.fast.rms_norm`).
pub struct RmsNorm {
  weight: Array,
  eps: f32,
}

impl RmsNorm {
  /// `prefix.weight`, width `dim`. With `one_plus`, the scale is
  /// `1 + weight` (Gemma's `Gemma3RMSNorm`).
  pub fn load(
    w: &mut Weights,
    prefix: &str,
    dim: usize,
    eps: f32,
    one_plus: bool,
  ) -> Result<RmsNorm> {
    let mut weight = w.take(&format!("{prefix}.weight"), &[dim])?;
    if one_plus {
      weight = (&weight + 1.0)?;
      weight.eval()?;
    }
    Ok(RmsNorm { weight, eps })
  }

  /// Apply.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    Ok(fast::rms_norm(x, Some(&self.weight), self.eps)?)
  }
}

/// A lookup table (python `nn.Embedding`).
pub struct Embedding {
  weight: Array,
}

impl Embedding {
  /// `prefix.weight` `[vocab, dim]`.
  pub fn load(w: &mut Weights, prefix: &str, vocab: usize, dim: usize) -> Result<Embedding> {
    Ok(Embedding {
      weight: w.take(&format!("{prefix}.weight"), &[vocab, dim])?,
    })
  }

  /// Rows for integer `ids` of any shape: `[..., dim]`.
  pub fn forward(&self, ids: &Array) -> Result<Array> {
    Ok(ops::take_axis(&self.weight, ids, 0)?)
  }
}

/// Activation functions by their transformers name (`hidden_act` /
/// `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
  /// Exact GELU, `x * Φ(x)` (transformers `"gelu"`, torch `nn.GELU()`).
  Gelu,
  /// Tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`,
  /// `"gelu_fast"`).
  GeluTanh,
  /// `x * sigmoid(x)` (`"silu"`, `"swish"`, nomic's `"swiglu"` gate).
  Silu,
  /// `max(x, 0)` (`"relu"`).
  Relu,
  /// `tanh(x)`.
  Tanh,
  /// `sigmoid(x)`.
  Sigmoid,
  /// `x`.
  Identity,
}

impl Activation {
  /// Parse a transformers activation name.
  pub fn parse(name: &str) -> Option<Activation> {
    Some(match name {
      "gelu" => Activation::Gelu,
      "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
      "silu" | "swish" | "swiglu" => Activation::Silu,
      "relu" => Activation::Relu,
      "tanh" => Activation::Tanh,
      "sigmoid" => Activation::Sigmoid,
      "linear" | "identity" => Activation::Identity,
      _ => return None,
    })
  }

  /// Apply element-wise. On the CPU, float32 GELU / SiLU / tanh / sigmoid
  /// run as vectorized host kernels ([`crate::host`]); elsewhere they are
  /// MLX ops.
  pub fn forward(self, x: &Array) -> Result<Array> {
    if on_cpu() && x.dtype() == Dtype::Float32 {
      match self {
        Activation::Gelu => return host::gelu(x),
        Activation::GeluTanh => return host::gelu_tanh(x),
        Activation::Silu => return host::silu(x),
        Activation::Tanh => return host::tanh(x),
        Activation::Sigmoid => return host::sigmoid(x),
        Activation::Relu | Activation::Identity => {}
      }
    }
    Ok(match self {
      Activation::Gelu => {
        // 0.5 * x * (1 + erf(x / sqrt(2)))
        let e = ops::erf(&(x * std::f32::consts::FRAC_1_SQRT_2)?)?;
        (&(x * 0.5)? * &(&e + 1.0)?)?
      }
      Activation::GeluTanh => {
        // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        let x3 = (&ops::square(x)? * x)?;
        let inner = (&(x + &(&x3 * 0.044715)?)? * c)?;
        (&(x * 0.5)? * &(&ops::tanh(&inner)? + 1.0)?)?
      }
      Activation::Silu => (x * &ops::sigmoid(x)?)?,
      Activation::Relu => ops::maximum(x, &Array::scalar_as(0.0, x.dtype())?)?,
      Activation::Tanh => ops::tanh(x)?,
      Activation::Sigmoid => ops::sigmoid(x)?,
      Activation::Identity => x.clone(),
    })
  }
}

/// Whether ops run on the CPU device (where MLX evaluates element-wise ops
/// one scalar at a time, so the [`crate::host`] kernels are used).
pub(crate) fn on_cpu() -> bool {
  mlxrs_core::Device::default_device()
    .map(|d| d.kind == mlxrs_core::DeviceType::Cpu)
    .unwrap_or(true)
}

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

/// RoPE on `[B, H, T, D]` (python `mx.fast.rope(x, dims, traditional=False,
/// base=theta, scale, offset=0)`; transformers' `rotate_half` form), over
/// the first `dims` features of each head.
pub fn rope(x: &Array, dims: usize, theta: f32, scale: f32) -> Result<Array> {
  rope_with(x, dims, theta, scale, false)
}

/// [`rope`] with the `traditional` (interleaved pairs) layout selectable.
pub fn rope_with(
  x: &Array,
  dims: usize,
  theta: f32,
  scale: f32,
  traditional: bool,
) -> Result<Array> {
  Ok(fast::rope(
    x,
    dims as i32,
    traditional,
    Some(theta),
    scale,
    0,
    None,
  )?)
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
