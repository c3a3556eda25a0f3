//! Log-mel features exactly as Whisper computes them: 25 ms Hann frames
//! (`n_fft` 400, periodic window), 10 ms hop, reflect-padded centred STFT,
//! power spectrum, Slaney mel filterbank (80 or 128 bins), `log10` clamped to
//! `max - 8`, scaled `(x + 4) / 4`. Computed with MLX ops ([`fft::rfft`],
//! `matmul`, ...), so it runs on whichever device is the default.
//!
//! Python: `faster_whisper.feature_extractor.FeatureExtractor.__call__`
//! (openai `whisper.audio.log_mel_spectrogram`), with the filterbank of
//! `librosa.filters.mel(sr=16000, n_fft=400, n_mels=n)` computed in code.
//!
//! [`fft::rfft`]: mlxrs_core::fft::rfft

use mlxrs_core::fft::{FftNorm, rfft};
use mlxrs_core::{Array, ops};

use crate::error::{Error, Result};

/// FFT size (python `whisper.audio.N_FFT`).
pub const N_FFT: usize = 400;
/// Hop between frames in samples (`HOP_LENGTH`).
pub const HOP_LENGTH: usize = 160;
/// Window length in seconds (`CHUNK_LENGTH`).
pub const CHUNK_LENGTH: usize = 30;
/// Samples in a 30 s window (`N_SAMPLES`).
pub const N_SAMPLES: usize = CHUNK_LENGTH * crate::audio::SAMPLE_RATE as usize;
/// Mel frames in a 30 s window (`N_FRAMES`).
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;
/// Frequency bins of the one-sided spectrum.
pub const N_FREQS: usize = N_FFT / 2 + 1;

/// The Slaney-style mel filterbank, `[n_mels, 201]` row-major, for 16 kHz
/// audio and `n_fft` 400: python `librosa.filters.mel(sr=16000, n_fft=400,
/// n_mels=n_mels)` (what `whisper/assets/mel_filters.npz` holds, and what
/// `FeatureExtractor.get_mel_filters` computes). Computed in `f64`, returned
/// as `f32`.
pub fn mel_filters(n_mels: usize) -> Result<Vec<f32>> {
  if n_mels == 0 || n_mels > 512 {
    return Err(Error::InvalidArgument(format!(
      "mel_filters: n_mels must be in 1..=512, got {n_mels}"
    )));
  }
  let sr = f64::from(crate::audio::SAMPLE_RATE);
  let fftfreqs: Vec<f64> = (0..N_FREQS).map(|k| k as f64 * sr / N_FFT as f64).collect();
  // Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), log above.
  let f_sp = 200.0 / 3.0;
  let min_log_hz = 1000.0;
  let min_log_mel = min_log_hz / f_sp;
  let logstep = 6.4f64.ln() / 27.0;
  let hz_to_mel = |f: f64| {
    if f >= min_log_hz {
      min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
      f / f_sp
    }
  };
  let mel_to_hz = |m: f64| {
    if m >= min_log_mel {
      min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
      f_sp * m
    }
  };
  let max_mel = hz_to_mel(sr / 2.0);
  let n = n_mels + 2;
  // numpy.linspace(0, max_mel, n): start + i * step, the last point exact.
  let step = max_mel / (n - 1) as f64;
  let freqs: Vec<f64> = (0..n)
    .map(|i| mel_to_hz(if i == n - 1 { max_mel } else { i as f64 * step }))
    .collect();
  let fdiff: Vec<f64> = freqs.windows(2).map(|w| w[1] - w[0]).collect();
  let mut out = vec![0f32; n_mels * N_FREQS];
  for i in 0..n_mels {
    let enorm = 2.0 / (freqs[i + 2] - freqs[i]);
    for (k, &fk) in fftfreqs.iter().enumerate() {
      let lower = -(freqs[i] - fk) / fdiff[i];
      let upper = (freqs[i + 2] - fk) / fdiff[i + 1];
      let w = lower.min(upper).max(0.0);
      out[i * N_FREQS + k] = (w * enorm) as f32;
    }
  }
  Ok(out)
}

/// The periodic Hann window of length `n`: python
/// `np.hanning(n + 1)[:-1]` / `torch.hann_window(n)`.
pub fn hann_window(n: usize) -> Vec<f32> {
  (0..n)
    .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
    .collect()
}

/// numpy's `reflect` padding index (repeated reflection for long pads).
fn reflect_index(i: i64, len: i64) -> usize {
  if len == 1 {
    return 0;
  }
  let period = 2 * (len - 1);
  let mut j = i.rem_euclid(period);
  if j >= len {
    j = period - j;
  }
  j as usize
}

/// Frames per chunk of the STFT (bounds the `[frames, 400]` matrix).
const STFT_CHUNK: usize = 3000;

/// Log-mel spectrogram `[n_mels, frames]` (float32) of 16 kHz mono
/// `samples`, after appending `padding` zero samples: python
/// `FeatureExtractor()(waveform, padding=padding)` (faster-whisper uses
/// `padding=160`; openai whisper's `log_mel_spectrogram(audio, padding=N_SAMPLES)`
/// appends 30 s). `frames = (len + padding) / 160`; the `max - 8` clamp is
/// over the whole result, as in python.
pub fn log_mel_spectrogram(samples: &[f32], n_mels: usize, padding: usize) -> Result<Array> {
  let mut log = log10_mel(samples, n_mels, padding)?;
  let mx = ops::max(&log, false)?;
  let floor = ops::subtract(&mx, &Array::scalar(8.0f32))?;
  log = ops::maximum(&log, &floor)?;
  let log = ops::add(&log, &Array::scalar(4.0f32))?;
  Ok(ops::divide(&log, &Array::scalar(4.0f32))?)
}

/// `log10(max(mel_filters @ |stft|^2, 1e-10))`, `[n_mels, frames]`.
fn log10_mel(samples: &[f32], n_mels: usize, padding: usize) -> Result<Array> {
  if samples.is_empty() && padding == 0 {
    return Err(Error::InvalidArgument(
      "log_mel_spectrogram: no samples".into(),
    ));
  }
  if samples.iter().any(|v| !v.is_finite()) {
    return Err(Error::InvalidArgument(
      "log_mel_spectrogram: the audio holds NaN or infinite samples".into(),
    ));
  }
  let filters = mel_filters(n_mels)?;
  let filters = Array::from_slice(&filters, &[n_mels as i32, N_FREQS as i32])?;
  let filters_t = ops::transpose(&filters)?;
  let window = Array::from_slice(&hann_window(N_FFT), &[N_FFT as i32])?;
  let len = samples.len() + padding;
  let half = (N_FFT / 2) as i64;
  let at = |i: i64| -> f32 {
    let j = reflect_index(i, len as i64);
    if j < samples.len() { samples[j] } else { 0.0 }
  };
  // Frames of the centred STFT, then python drops the last one.
  let n_frames = len / HOP_LENGTH;
  if n_frames == 0 {
    return Err(Error::InvalidArgument(format!(
      "log_mel_spectrogram: {} samples (+{padding} padding) make no 10 ms frame",
      samples.len()
    )));
  }
  let mut parts = Vec::new();
  let mut f0 = 0;
  while f0 < n_frames {
    let f1 = (f0 + STFT_CHUNK).min(n_frames);
    let nf = f1 - f0;
    let start = (f0 * HOP_LENGTH) as i64 - half;
    let span = (nf - 1) * HOP_LENGTH + N_FFT;
    let seg: Vec<f32> = (0..span as i64).map(|k| at(start + k)).collect();
    let seg = Array::from_slice(&seg, &[span as i32])?;
    let frames = ops::as_strided(&seg, &[nf as i32, N_FFT as i32], &[HOP_LENGTH as i64, 1], 0)?;
    let frames = ops::multiply(&frames, &window)?;
    let spec = rfft(&frames, N_FFT as i32, -1, FftNorm::Backward)?;
    let mag = ops::square(&ops::abs(&spec)?)?;
    // [nf, 201] @ [201, n_mels] -> [nf, n_mels]
    let mel = ops::matmul(&mag, &filters_t)?;
    let mel = ops::maximum(&mel, &Array::scalar(1e-10f32))?;
    let mut l = ops::log10(&mel)?;
    l.eval()?;
    parts.push(l);
    f0 = f1;
  }
  let all = if parts.len() == 1 {
    parts.pop().expect("one part")
  } else {
    ops::concatenate_axis(&parts, 0)?
  };
  Ok(ops::transpose(&all)?)
}

/// Pad (with zeros) or trim `[n_mels, frames]` features to `frames`
/// columns: python `faster_whisper.audio.pad_or_trim(features)`.
pub fn pad_or_trim(features: &Array, frames: usize) -> Result<Array> {
  let s = features.shape();
  if s.len() != 2 {
    return Err(Error::InvalidArgument(format!(
      "pad_or_trim: expected [n_mels, frames], got {s:?}"
    )));
  }
  let (m, n) = (s[0], s[1] as usize);
  if n == frames {
    return Ok(features.clone());
  }
  if n > frames {
    return Ok(ops::slice(features, &[0, 0], &[m, frames as i32], &[1, 1])?);
  }
  Ok(ops::pad(
    features,
    &[1],
    &[0],
    &[(frames - n) as i32],
    &Array::scalar(0.0f32),
    "constant",
  )?)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn filters_are_slaney_shaped() {
    let f = mel_filters(80).unwrap();
    assert_eq!(f.len(), 80 * 201);
    assert!(f.iter().all(|v| *v >= 0.0));
    // Every band has some weight.
    for i in 0..80 {
      assert!(
        f[i * 201..(i + 1) * 201].iter().any(|v| *v > 0.0),
        "band {i}"
      );
    }
    assert!(mel_filters(0).is_err());
  }

  #[test]
  fn reflect_matches_numpy() {
    // np.pad([0,1,2,3], 3, mode="reflect") == [3,2,1,0,1,2,3,2,1,0]
    let got: Vec<usize> = (-3..7).map(|i| reflect_index(i, 4)).collect();
    assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
  }

  #[test]
  fn shapes_and_errors() {
    let x: Vec<f32> = (0..16_000)
      .map(|i| ((i as f32) * 0.01).sin() * 0.1)
      .collect();
    let m = log_mel_spectrogram(&x, 80, 160).unwrap();
    assert_eq!(m.shape(), vec![80, 101]);
    assert!(log_mel_spectrogram(&[], 80, 0).is_err());
    assert!(log_mel_spectrogram(&[f32::NAN; 400], 80, 0).is_err());
    let p = pad_or_trim(&m, 3000).unwrap();
    assert_eq!(p.shape(), vec![80, 3000]);
  }
}
