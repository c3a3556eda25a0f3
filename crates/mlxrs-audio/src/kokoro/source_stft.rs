//! The magnitude / phase spectrum of the harmonic source as the Kokoro ONNX
//! export computes it (python: kokoro's `TorchSTFT.transform` exported as
//! the ONNX `STFT` op, `sqrt(re^2 + im^2)` and an `atan`-based `atan2`).
//!
//! Why not [`mlxrs_nn::Stft::transform`]: the source STFT has `n_fft = 20`,
//! and the phase of its DC and Nyquist bins is a feature the generator's
//! noise convolutions read. Those bins have an imaginary part of exactly 0
//! in exact arithmetic, so their phase is `0` or `+-pi` by the *sign of the
//! rounding error* of the DFT. An FFT (torch, MLX, mlx-audio) returns an
//! exact 0 there (phase `+pi` wherever the real part is negative);
//! onnxruntime computes a length-20 DFT with Bluestein's chirp-z algorithm
//! in float32 (two radix-2 FFTs of 64 points), whose rounding leaves
//! imaginary parts of ~1e-7 of either sign, and the export's `atan2`
//! decomposition (`atan(im / re) +- pi` by the sign of `im`) turns them
//! into `+pi` or `-pi`. On the reference sentence 57 % of the Nyquist
//! phases differ by 2 pi between the two conventions, and that alone moves
//! the log-mel spectrogram of the output by 0.057 (mean |diff|, log10);
//! everything after the features matches to 1e-5 (docs/tts.md).
//!
//! So the spectrum is taken with the DFT matrix onnxruntime's algorithm
//! applies: the float32 Bluestein transform (onnxruntime
//! `core/providers/cpu/signal/dft.cc`, `dft_bluestein_z_chirp` + `fft_radix2`,
//! its constants rounded the way the C library's `sinf` / `cosf` round
//! them) run once on the unit impulses. It is a linear map up to the
//! rounding of the intermediate sums, so one `[n_fft, 2 * bins]` product
//! per frame reproduces the export's rounding *pattern* (the sign of the
//! DC / Nyquist imaginary part agrees with onnxruntime's on 99.98 % of the
//! frames of the reference sentence) while every other bin is the DFT to
//! float precision (|E - exact DFT| < 1e-5).

use mlxrs_core::{Array, Dtype, ops};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
struct C32 {
  re: f32,
  im: f32,
}

impl C32 {
  const ZERO: C32 = C32 { re: 0.0, im: 0.0 };

  /// `std::complex<float>` multiplication without FMA contraction.
  fn mul(self, o: C32) -> C32 {
    C32 {
      re: self.re * o.re - self.im * o.im,
      im: self.re * o.im + self.im * o.re,
    }
  }

  fn add(self, o: C32) -> C32 {
    C32 {
      re: self.re + o.re,
      im: self.im + o.im,
    }
  }
}

/// `sinf` / `cosf` of a float32 angle, correctly rounded (glibc's are, to
/// within the cases that do not occur here).
fn cis(angle: f32) -> C32 {
  let a = f64::from(angle);
  C32 {
    re: a.cos() as f32,
    im: a.sin() as f32,
  }
}

fn bit_reverse(x: usize, bits: u32) -> usize {
  if bits == 0 {
    0
  } else {
    x.reverse_bits() >> (usize::BITS - bits)
  }
}

/// onnxruntime's `fft_radix2` (forward twiddles `v` in bit-reversed order,
/// reused for the inverse as onnxruntime does: the output of the inverse is
/// then index-reversed, which the caller undoes).
fn fft_radix2(x: &[C32], v: &[C32], inverse: bool) -> Vec<C32> {
  let m = x.len();
  let bits = m.trailing_zeros();
  let mut y: Vec<C32> = (0..m).map(|i| x[bit_reverse(i, bits)]).collect();
  let mut size = 2;
  let mut cur = 0;
  while size <= m {
    let mid = size / 2;
    cur += 1;
    for k in 0..mid {
      let w1 = v[bit_reverse(k, cur)];
      let w2 = v[bit_reverse(mid + k, cur)];
      let mut j = 0;
      while j < m {
        let (e, o) = (y[k + j], y[k + j + mid]);
        y[k + j] = e.add(w1.mul(o));
        y[k + j + mid] = e.add(w2.mul(o));
        j += size;
      }
    }
    size <<= 1;
  }
  if inverse {
    let s = m as f32;
    for c in &mut y {
      c.re /= s;
      c.im /= s;
    }
  }
  y
}

/// onnxruntime's float32 Bluestein DFT of a length-`n` real frame,
/// one-sided (`n / 2 + 1` bins).
struct Bluestein {
  n: usize,
  m: usize,
  v: Vec<C32>,
  chirp: Vec<C32>,
  b_fft: Vec<C32>,
}

impl Bluestein {
  fn new(n: usize) -> Bluestein {
    let m = (2 * n - 1).next_power_of_two();
    let pi = std::f32::consts::PI;
    let tau = 2.0 * pi;
    // onnxruntime: (-1.f * tau) / M; the negation is exact
    let av = -tau / m as f32;
    let bits = m.trailing_zeros();
    let mut v = vec![C32::ZERO; m];
    for i in 0..m {
      v[bit_reverse(i, bits)] = cis(i as f32 * av);
    }
    let mut chirp = vec![C32::ZERO; m];
    let mut b = vec![C32::ZERO; m];
    for i in 0..n {
      // direction * pi * n * n / N, left to right in float (direction = -1)
      let e = -pi * i as f32 * i as f32 / n as f32;
      chirp[i] = cis(e);
      b[i] = C32 {
        re: chirp[i].re,
        im: -chirp[i].im,
      };
    }
    for i in (m - n + 1)..m {
      b[i] = b[m - i];
    }
    let b_fft = fft_radix2(&b, &v, false);
    Bluestein {
      n,
      m,
      v,
      chirp,
      b_fft,
    }
  }

  fn dft(&self, x: &[f32]) -> Vec<C32> {
    let mut a = vec![C32::ZERO; self.m];
    for (i, &xi) in x.iter().enumerate().take(self.n) {
      a[i] = C32 { re: xi, im: 0.0 }.mul(self.chirp[i]);
    }
    let mut a = fft_radix2(&a, &self.v, false);
    for (ai, bi) in a.iter_mut().zip(&self.b_fft) {
      *ai = ai.mul(*bi);
    }
    let a = fft_radix2(&a, &self.v, true);
    (0..self.n / 2 + 1)
      .map(|i| {
        let c = if i == 0 { a[0] } else { a[self.m - i] };
        c.mul(self.chirp[i])
      })
      .collect()
  }
}

/// The `[n, 2 * (n / 2 + 1)]` matrix (real parts, then imaginary parts) of
/// onnxruntime's float32 length-`n` DFT for `n` not a power of two: row `j`
/// is the transform of the unit impulse at `j`.
pub fn export_dft_matrix(n: usize) -> Vec<f32> {
  let bins = n / 2 + 1;
  let bl = Bluestein::new(n);
  let mut out = vec![0f32; n * 2 * bins];
  let mut e = vec![0f32; n];
  for j in 0..n {
    e.iter_mut().for_each(|v| *v = 0.0);
    e[j] = 1.0;
    for (k, c) in bl.dft(&e).iter().enumerate() {
      out[j * 2 * bins + k] = c.re;
      out[j * 2 * bins + bins + k] = c.im;
    }
  }
  out
}

/// The export's source spectrum: centred frames (reflect padding of
/// `n_fft / 2`), a periodic Hann window, the [`export_dft_matrix`], then
/// magnitude and phase.
pub(crate) struct SourceStft {
  n_fft: i32,
  hop: i32,
  window: Array,
  /// `[n_fft, 2 * bins]`.
  dft: Array,
}

impl SourceStft {
  pub(crate) fn new(n_fft: i32, hop: i32) -> Result<SourceStft> {
    if n_fft < 4 || hop < 1 {
      return Err(Error::Model(format!(
        "kokoro: source STFT needs n_fft >= 4 and hop >= 1, got {n_fft} / {hop}"
      )));
    }
    let n = n_fft as usize;
    let bins = n / 2 + 1;
    let dft = if n.is_power_of_two() {
      // onnxruntime's radix-2 path: the exact DFT up to float rounding
      let mut m = vec![0f32; n * 2 * bins];
      for j in 0..n {
        for k in 0..bins {
          let a = -2.0 * std::f64::consts::PI * (j * k) as f64 / n as f64;
          m[j * 2 * bins + k] = a.cos() as f32;
          m[j * 2 * bins + bins + k] = a.sin() as f32;
        }
      }
      m
    } else {
      export_dft_matrix(n)
    };
    // torch.hann_window(n_fft) (periodic), as the export's constant holds it
    let window: Vec<f32> = (0..n)
      .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
      .collect();
    Ok(SourceStft {
      n_fft,
      hop,
      window: Array::from_slice::<f32>(&window, &[1, n_fft])?,
      dft: Array::from_slice::<f32>(&dft, &[n_fft, 2 * bins as i32])?,
    })
  }

  /// `x` `[1, T]` -> channels-last `[1, frames, n_fft + 2]`: magnitudes,
  /// then phases (python `torch.cat([mag, phase], dim=1)` transposed).
  pub(crate) fn features(&self, x: &Array) -> Result<Array> {
    let t = x.shape()[1];
    let half = self.n_fft / 2;
    if t <= half {
      return Err(Error::InvalidArgument(format!(
        "kokoro: source of {t} samples is too short for the STFT"
      )));
    }
    // reflect padding: x[half..=1] | x | x[t-2..=t-1-half]
    let idx: Vec<i32> = (-half..t + half)
      .map(|i| {
        if i < 0 {
          -i
        } else if i >= t {
          2 * (t - 1) - i
        } else {
          i
        }
      })
      .collect();
    let padded_len = t + 2 * half;
    let frames = 1 + (padded_len - self.n_fft) / self.hop;
    let mut fidx = Vec::with_capacity((frames * self.n_fft) as usize);
    for f in 0..frames {
      for j in 0..self.n_fft {
        fidx.push(idx[(f * self.hop + j) as usize]);
      }
    }
    let fidx = Array::from_slice::<i32>(&fidx, &[frames, self.n_fft])?;
    let x1 = ops::reshape(&ops::astype(x, Dtype::Float32)?, &[t])?;
    let fr = ops::multiply(&ops::take_axis(&x1, &fidx, 0)?, &self.window)?; // [F, n_fft]
    let spec = ops::matmul(&fr, &self.dft)?; // [F, 2 * bins]
    let bins = self.n_fft / 2 + 1;
    let re = ops::slice(&spec, &[0, 0], &[frames, bins], &[1, 1])?;
    let im = ops::slice(&spec, &[0, bins], &[frames, 2 * bins], &[1, 1])?;
    let mag = ops::sqrt(&ops::add(&ops::square(&re)?, &ops::square(&im)?)?)?;
    // the export's atan2: atan(im / re), +- pi by the sign of im where re < 0
    // (-pi for im == 0); 0 where both are 0 (the export has NaN there)
    let zero = Array::scalar(0.0f32);
    let pi = Array::scalar(std::f32::consts::PI);
    let both0 = ops::logical_and(&ops::equal(&re, &zero)?, &ops::equal(&im, &zero)?)?;
    let safe_re = ops::where_(&both0, &Array::scalar(1.0f32), &re)?;
    let at = ops::arctan(&ops::divide(&im, &safe_re)?)?;
    let shifted = ops::where_(
      &ops::greater(&im, &zero)?,
      &ops::add(&at, &pi)?,
      &ops::subtract(&at, &pi)?,
    )?;
    let phase = ops::where_(&ops::less(&re, &zero)?, &shifted, &at)?;
    let feats = ops::concatenate_axis(&[mag, phase], 1)?;
    Ok(ops::reshape(&feats, &[1, frames, 2 * bins])?)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn export_dft_is_the_dft_with_float_rounding() {
    for n in [20usize, 12, 6] {
      let m = export_dft_matrix(n);
      let bins = n / 2 + 1;
      let mut worst = 0f64;
      for j in 0..n {
        for k in 0..bins {
          let a = -2.0 * std::f64::consts::PI * (j * k) as f64 / n as f64;
          worst = worst
            .max((f64::from(m[j * 2 * bins + k]) - a.cos()).abs())
            .max((f64::from(m[j * 2 * bins + bins + k]) - a.sin()).abs());
        }
      }
      assert!(worst < 1e-5, "n = {n}: {worst}");
    }
    // the rounding the export's phase depends on: DC / Nyquist imaginary parts
    // are not exactly 0 (an FFT's are)
    let m = export_dft_matrix(20);
    let nonzero = (0..20).filter(|j| m[j * 22 + 11 + 10] != 0.0).count();
    assert!(nonzero > 10, "{nonzero}");
  }

  #[test]
  fn bluestein_matches_a_direct_dft() {
    let bl = Bluestein::new(20);
    let x: Vec<f32> = (0..20).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
    let y = bl.dft(&x);
    for (k, c) in y.iter().enumerate() {
      let (mut re, mut im) = (0f64, 0f64);
      for (j, &xj) in x.iter().enumerate() {
        let a = -2.0 * std::f64::consts::PI * (j * k) as f64 / 20.0;
        re += f64::from(xj) * a.cos();
        im += f64::from(xj) * a.sin();
      }
      assert!((f64::from(c.re) - re).abs() < 1e-4 && (f64::from(c.im) - im).abs() < 1e-4);
    }
  }
}
