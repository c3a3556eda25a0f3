//! Magnitude / phase STFT and its inverse with a periodic Hann window, as
//! iSTFTNet vocoders use them (python StyleTTS2 / Kokoro `TorchSTFT`:
//! `torch.stft(x, n_fft, hop, win, hann_window(win), center=True,
//! pad_mode="reflect", return_complex=True)` -> `abs`, `angle`, and
//! `torch.istft(mag * exp(1j * phase), ...)`), over MLX's `fft::stft` /
//! `fft::istft` (which match torch's to float precision).

use mlxrs_core::fft::{self, FftNorm};
use mlxrs_core::{Array, Complex32, Dtype, Error, Result, ops};

/// A fixed-size STFT (python Kokoro `TorchSTFT(filter_length, hop_length,
/// win_length)`).
pub struct Stft {
  /// FFT size (`filter_length`).
  pub n_fft: i32,
  /// Hop in samples.
  pub hop: i32,
  /// Window length.
  pub win: i32,
  window: Array,
}

impl Stft {
  /// With a periodic Hann window of `win` samples (python
  /// `torch.hann_window(win)`).
  pub fn new(n_fft: i32, hop: i32, win: i32) -> Result<Stft> {
    if n_fft < 2 || hop < 1 || win < 2 || win > n_fft {
      return Err(Error::InvalidArgument(format!(
        "Stft: need n_fft >= 2, hop >= 1, 2 <= win <= n_fft; got {n_fft}, {hop}, {win}"
      )));
    }
    let w = ops::hanning(win + 1)?;
    let window = ops::slice(&w, &[0], &[win], &[1])?;
    Ok(Stft {
      n_fft,
      hop,
      win,
      window,
    })
  }

  /// The complex spectrum `[B, n_fft / 2 + 1, frames]` of `x` `[B, T]`
  /// (centred, reflect-padded).
  pub fn complex(&self, x: &Array) -> Result<Array> {
    if x.ndim() != 2 {
      return Err(Error::InvalidArgument(format!(
        "Stft: expected [B, T], got {:?}",
        x.shape()
      )));
    }
    fft::stft(
      x,
      self.n_fft,
      Some(self.hop),
      Some(self.win),
      Some(&self.window),
      true,
      "reflect",
      FftNorm::Backward,
      Some(true),
    )
  }

  /// `(|X|, angle(X))`, each `[B, n_fft / 2 + 1, frames]` (python
  /// `TorchSTFT.transform`; the angle as `torch.angle`, in `(-pi, pi]`).
  pub fn transform(&self, x: &Array) -> Result<(Array, Array)> {
    let c = self.complex(x)?;
    let re = ops::real(&c)?;
    let im = ops::imag(&c)?;
    Ok((ops::abs(&c)?, ops::arctan2(&im, &re)?))
  }

  /// The signal `[B, hop * (frames - 1)]` of a magnitude / phase pair
  /// `[B, n_fft / 2 + 1, frames]` (python `TorchSTFT.inverse`:
  /// `torch.istft(mag * exp(1j * phase), ..., center=True)`).
  pub fn inverse(&self, mag: &Array, phase: &Array) -> Result<Array> {
    if mag.shape() != phase.shape() || mag.ndim() != 3 || mag.dim(1) != Some(self.n_fft / 2 + 1) {
      return Err(Error::InvalidArgument(format!(
        "Stft::inverse: expected magnitude and phase [B, {}, frames], got {:?} and {:?}",
        self.n_fft / 2 + 1,
        mag.shape(),
        phase.shape()
      )));
    }
    let re = ops::multiply(mag, &ops::cos(phase)?)?;
    let im = ops::multiply(mag, &ops::sin(phase)?)?;
    let c = complex_from(&re, &im)?;
    fft::istft(
      &c,
      Some(self.n_fft),
      Some(self.hop),
      Some(self.win),
      Some(&self.window),
      true,
      FftNorm::Backward,
      Some(true),
      None,
    )
  }
}

/// `re + 1j * im` as complex64.
pub fn complex_from(re: &Array, im: &Array) -> Result<Array> {
  let i = Array::from_slice::<Complex32>(&[Complex32::new(0.0, 1.0)], &[1])?;
  let re = ops::astype(re, Dtype::Complex64)?;
  let im = ops::astype(im, Dtype::Complex64)?;
  ops::add(&re, &ops::multiply(&im, &i)?)
}
