//! Element-wise kernels run on host memory, for the CPU device: GELU (erf and
//! tanh forms), SiLU, tanh, sigmoid and the attention softmax.
//!
//! MLX's CPU backend evaluates element-wise ops one scalar at a time on one
//! thread (its x86 SIMD width is 1), so a GELU built from MLX ops costs ~30
//! passes over the FFN activations and the softmax inside
//! `scaled_dot_product_attention` a scalar `exp` per score. On the CPU the
//! encoders instead evaluate the input, run these branch-free loops (which
//! the compiler vectorizes) on rayon's thread pool, and hand the result back
//! as a new array: one copy out, one pass, one copy in. Python has no
//! equivalent: it is what PyTorch's fused CPU kernels do for `F.gelu` /
//! `softmax`.

use mlxrs_core::{Array, Dtype};
use rayon::prelude::*;

use crate::error::Result;

/// Apply `f` to the `row`-long rows of `data`, in parallel on rayon's
/// global pool (`RAYON_NUM_THREADS` threads, default: all cores) when the
/// data is large enough to pay for it.
fn par_rows(data: &mut [f32], row: usize, f: impl Fn(&mut [f32]) + Sync) {
  let row = row.max(1);
  if data.len() < 32_768 {
    data.chunks_mut(row).for_each(&f);
    return;
  }
  // ~16K elements per task, whole rows.
  let per = (16_384 / row).max(1) * row;
  data
    .par_chunks_mut(per)
    .for_each(|chunk| chunk.chunks_mut(row).for_each(&f));
}

/// Evaluate `x` (float32), run `f` over its rows of the last axis, and
/// return the result with `x`'s shape.
fn map_rows(x: &Array, f: impl Fn(&mut [f32]) + Sync) -> Result<Array> {
  let mut x = if x.dtype() == Dtype::Float32 {
    x.clone()
  } else {
    mlxrs_core::ops::astype(x, Dtype::Float32)?
  };
  let shape = x.shape();
  let row = shape.last().copied().unwrap_or(1).max(1) as usize;
  let mut v = x.to_vec::<f32>()?;
  par_rows(&mut v, row, f);
  Ok(Array::from_slice(&v, &shape)?)
}

/// Eigen's float `erf` rational approximation (`generic_fast_erf_float`),
/// max abs error 4e-7.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
  let x = x.clamp(-4.0, 4.0);
  let x2 = x * x;
  let mut p = -2.72614225801306e-10f32;
  p = p * x2 + 2.77068142495902e-08;
  p = p * x2 + -2.10102402082508e-06;
  p = p * x2 + -5.69250639462346e-05;
  p = p * x2 + -7.34990630326855e-04;
  p = p * x2 + -2.95459980854025e-03;
  p = p * x2 + -1.60960333262415e-02;
  let mut q = -1.45660718464996e-05f32;
  q = q * x2 + -2.13374055278905e-04;
  q = q * x2 + -1.68282697438203e-03;
  q = q * x2 + -7.37332916720468e-03;
  q = q * x2 + -1.42647390514189e-02;
  x * p / q
}

/// Eigen's float `tanh` rational approximation (`ptanh_float`), max abs
/// error 4e-7.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
  let x = x.clamp(-7.90531110763549805, 7.90531110763549805);
  let x2 = x * x;
  let mut p = -2.76076847742355e-16f32;
  p = p * x2 + 2.00018790482477e-13;
  p = p * x2 + -8.60467152213735e-11;
  p = p * x2 + 5.12229709037114e-08;
  p = p * x2 + 1.48572235717979e-05;
  p = p * x2 + 6.37261928875436e-04;
  p = p * x2 + 4.89352455891786e-03;
  let mut q = 1.19825839466702e-06f32;
  q = q * x2 + 1.18534705686654e-04;
  q = q * x2 + 2.26843463243900e-03;
  q = q * x2 + 4.89352518554385e-03;
  x * p / q
}

/// `e^x` for `x <= 0`-ish softmax inputs, branch-free: `2^n e^g` with
/// `|g| <= ln2/2` (degree-7 Taylor) and `2^n` built in the exponent bits;
/// relative error < 1e-6; inputs clamped to `[-87, 88]`.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
  let x = x.clamp(-87.0, 88.0);
  let t = x * std::f32::consts::LOG2_E;
  // Round to nearest by the 1.5 * 2^23 trick (exact for |t| < 2^22; no
  // libm call, so the loop vectorizes on baseline x86-64).
  const MAGIC: f32 = 12_582_912.0;
  let n = (t + MAGIC) - MAGIC;
  let g = (t - n) * std::f32::consts::LN_2;
  let mut p = 1.0f32 / 5040.0;
  p = p * g + 1.0 / 720.0;
  p = p * g + 1.0 / 120.0;
  p = p * g + 1.0 / 24.0;
  p = p * g + 1.0 / 6.0;
  p = p * g + 0.5;
  p = p * g + 1.0;
  p = p * g + 1.0;
  p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))` (python
/// `nn.GELU()` / transformers `"gelu"`).
pub fn gelu(x: &Array) -> Result<Array> {
  map_rows(x, |r| {
    for v in r.iter_mut() {
      *v = 0.5 * *v * (1.0 + erf_f32(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
  })
}

/// Tanh GELU (transformers `"gelu_pytorch_tanh"`).
pub fn gelu_tanh(x: &Array) -> Result<Array> {
  let c = (2.0f32 / std::f32::consts::PI).sqrt();
  map_rows(x, move |r| {
    for v in r.iter_mut() {
      let y = *v;
      *v = 0.5 * y * (1.0 + tanh_f32(c * (y + 0.044715 * y * y * y)));
    }
  })
}

/// `x * sigmoid(x)` (transformers `"silu"`).
pub fn silu(x: &Array) -> Result<Array> {
  map_rows(x, |r| {
    for v in r.iter_mut() {
      let y = *v;
      *v = y * (0.5 + 0.5 * tanh_f32(0.5 * y));
    }
  })
}

/// `tanh(x)` (python `mx.tanh`).
pub fn tanh(x: &Array) -> Result<Array> {
  map_rows(x, |r| r.iter_mut().for_each(|v| *v = tanh_f32(*v)))
}

/// `sigmoid(x) = (1 + tanh(x / 2)) / 2` (python `mx.sigmoid`).
pub fn sigmoid(x: &Array) -> Result<Array> {
  map_rows(x, |r| {
    r.iter_mut()
      .for_each(|v| *v = 0.5 + 0.5 * tanh_f32(0.5 * *v))
  })
}

/// Softmax over the last axis (python `mx.softmax(x, axis=-1)`).
pub fn softmax(x: &Array) -> Result<Array> {
  map_rows(x, |r| {
    let m = r.iter().copied().fold(f32::MIN, f32::max);
    let mut s = 0.0f32;
    for v in r.iter_mut() {
      *v = exp_f32(*v - m);
      s += *v;
    }
    let inv = 1.0 / s;
    for v in r.iter_mut() {
      *v *= inv;
    }
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn scalar_kernels_match_libm() {
    let xs: Vec<f32> = (-9000..=9000).map(|i| i as f32 * 1e-3).collect();
    let tanh = xs
      .iter()
      .map(|&x| (f64::from(tanh_f32(x)) - f64::from(x).tanh()).abs())
      .fold(0.0, f64::max);
    assert!(tanh < 5e-7, "tanh {tanh}");
    let exp = xs
      .iter()
      .map(|&x| ((f64::from(exp_f32(x)) - f64::from(x).exp()) / f64::from(x).exp()).abs())
      .fold(0.0, f64::max);
    assert!(exp < 1e-6, "exp {exp}");
    // erf against MLX's erf.
    let a = Array::from_slice(&xs, &[xs.len() as i32]).unwrap();
    let mut e = mlxrs_core::ops::erf(&a).unwrap();
    let e = e.to_vec::<f32>().unwrap();
    let erf = xs
      .iter()
      .zip(&e)
      .map(|(&x, &y)| (erf_f32(x) - y).abs())
      .fold(0.0f32, f32::max);
    assert!(erf < 5e-7, "erf {erf}");
  }

  #[test]
  fn array_kernels() {
    let xs: Vec<f32> = (0..3 * 70_000)
      .map(|i| ((i % 977) as f32 - 488.0) * 0.01)
      .collect();
    let a = Array::from_slice(&xs, &[3, 70_000]).unwrap();
    let mut g = gelu(&a).unwrap();
    assert_eq!(g.shape(), vec![3, 70_000]);
    let g = g.to_vec::<f32>().unwrap();
    let mut s = softmax(&a).unwrap().to_vec::<f32>().unwrap();
    let mut r = mlxrs_core::ops::softmax_axis(&a, -1, true).unwrap();
    let r = r.to_vec::<f32>().unwrap();
    let d = s
      .iter()
      .zip(&r)
      .map(|(x, y)| ((x - y) / y.max(1e-30)).abs())
      .fold(0.0f32, f32::max);
    assert!(d < 2e-6, "softmax rel {d}");
    for (x, y) in xs.iter().zip(&g).step_by(997) {
      let want = 0.5 * f64::from(*x) * (1.0 + libm_erf(f64::from(*x) / 2f64.sqrt()));
      assert!(
        (f64::from(*y) - want).abs() < 1e-6,
        "gelu({x}) = {y}, want {want}"
      );
    }
    s.clear();
  }

  /// erf via its Taylor / continued-fraction-free series (|x| < 6), f64.
  fn libm_erf(x: f64) -> f64 {
    let mut sum = 0.0f64;
    let mut term = x;
    let mut n = 0.0f64;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 5.0 {
      sum += term / (2.0 * n + 1.0);
      n += 1.0;
      term *= -x * x / n;
      if n > 400.0 {
        break;
      }
    }
    (sum * 2.0 / std::f64::consts::PI.sqrt()).clamp(-1.0, 1.0)
  }
}
