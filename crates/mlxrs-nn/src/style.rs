//! Style-conditioned normalisation and weight normalisation, as StyleTTS2 /
//! Kokoro use them (python `torch.nn.InstanceNorm1d`, StyleTTS2's `AdaIN1d`
//! and `AdaLayerNorm`, `torch.nn.utils.weight_norm`; mlx-audio's Kokoro
//! `InstanceNorm1d`, `AdaIN1d`, `AdaLayerNorm`, `weight_norm`).

use mlxrs_core::{Array, Error, Result, fast, ops};

use crate::linear::Linear;

/// Instance norm over `[B, C, L]`: each `(b, c)` row normalised over `L`
/// with the biased variance, no affine (python `nn.InstanceNorm1d(C,
/// affine=False)`).
pub fn instance_norm1d(x: &Array, eps: f32) -> Result<Array> {
  if x.ndim() != 3 {
    return Err(Error::InvalidArgument(format!(
      "instance_norm1d: expected [B, C, L], got {:?}",
      x.shape()
    )));
  }
  let mean = ops::mean_axis(x, -1, true)?;
  let var = ops::var_axis(x, -1, true, 0)?;
  let xc = (x - &mean)?;
  &xc * &ops::rsqrt(&(&var + eps)?)?
}

/// [`instance_norm1d`] in channels-last layout: `x` `[B, L, C]`, each
/// `(b, c)` column normalised over `L`.
pub fn instance_norm1d_nlc(x: &Array, eps: f32) -> Result<Array> {
  if x.ndim() != 3 {
    return Err(Error::InvalidArgument(format!(
      "instance_norm1d_nlc: expected [B, L, C], got {:?}",
      x.shape()
    )));
  }
  let mean = ops::mean_axis(x, 1, true)?;
  let var = ops::var_axis(x, 1, true, 0)?;
  let xc = (x - &mean)?;
  &xc * &ops::rsqrt(&(&var + eps)?)?
}

/// `(gamma, beta)` of a style projection `fc(s)` `[B, 2C]`, each `[B, C]`.
fn gamma_beta(fc: &Linear, s: &Array) -> Result<(Array, Array)> {
  let h = fc.forward(s)?;
  let parts = ops::split(&h, 2, -1)?;
  let mut it = parts.into_iter();
  match (it.next(), it.next()) {
    (Some(g), Some(b)) => Ok((g, b)),
    _ => Err(Error::InvalidArgument(
      "style projection split failed".into(),
    )),
  }
}

/// Adaptive instance norm (python StyleTTS2 `AdaIN1d(style_dim,
/// num_features)`): `(1 + gamma) * InstanceNorm1d(x) + beta` with
/// `[gamma, beta] = fc(s)`, over `x` `[B, C, L]` and a style `s` `[B, S]`.
pub struct AdaIn1d {
  /// `Linear(style_dim, 2 * C)`.
  pub fc: Linear,
}

impl AdaIn1d {
  /// `x` `[B, C, L]`, `s` `[B, S]` -> `[B, C, L]`.
  pub fn forward(&self, x: &Array, s: &Array) -> Result<Array> {
    let (g, b) = gamma_beta(&self.fc, s)?;
    let g = ops::expand_dims(&g, -1)?;
    let b = ops::expand_dims(&b, -1)?;
    let n = instance_norm1d(x, 1e-5)?;
    (&(&g + 1.0)? * &n)? + &b
  }

  /// The same over channels-last `x` `[B, L, C]` (what MLX convolutions
  /// take): normalised over `L`, scaled per channel.
  pub fn forward_nlc(&self, x: &Array, s: &Array) -> Result<Array> {
    let (g, b) = gamma_beta(&self.fc, s)?;
    let g = ops::expand_dims(&g, 1)?;
    let b = ops::expand_dims(&b, 1)?;
    let n = instance_norm1d_nlc(x, 1e-5)?;
    (&(&g + 1.0)? * &n)? + &b
  }
}

/// Adaptive layer norm (python StyleTTS2 `AdaLayerNorm(style_dim,
/// channels)`): `(1 + gamma) * LayerNorm(x) + beta` over the last axis of `x`
/// `[B, T, C]`, with `[gamma, beta] = fc(s)`, `s` `[B, S]`.
pub struct AdaLayerNorm {
  /// `Linear(style_dim, 2 * C)`.
  pub fc: Linear,
  /// Epsilon (1e-5).
  pub eps: f32,
}

impl AdaLayerNorm {
  /// `x` `[B, T, C]`, `s` `[B, S]` -> `[B, T, C]`.
  pub fn forward(&self, x: &Array, s: &Array) -> Result<Array> {
    let (g, b) = gamma_beta(&self.fc, s)?;
    let g = ops::expand_dims(&g, 1)?;
    let b = ops::expand_dims(&b, 1)?;
    let n = fast::layer_norm(x, None, None, self.eps)?;
    (&(&g + 1.0)? * &n)? + &b
  }
}

/// The weight of a weight-normalised layer (python
/// `torch._weight_norm(v, g, dim=0)`): `g * v / ||v||`, the norm taken over
/// every axis but the first; `g` has `v`'s first dimension (any shape with
/// that many elements). A row of `v` that is all zeros gives a zero row (torch
/// would give NaN).
pub fn weight_norm(v: &Array, g: &Array) -> Result<Array> {
  let s = v.shape();
  let n0 = s.first().copied().unwrap_or(0);
  let gn: i64 = g.shape().iter().map(|&d| i64::from(d)).product();
  if s.len() < 2 || gn != i64::from(n0) {
    return Err(Error::InvalidArgument(format!(
      "weight_norm: v {:?} needs rank >= 2 and g with {} elements, got g {:?}",
      s,
      n0,
      g.shape()
    )));
  }
  let axes: Vec<i32> = (1..s.len() as i32).collect();
  let norm = ops::sqrt(&ops::sum_axes(&ops::square(v)?, &axes, true)?)?;
  let zero = ops::equal(&norm, &Array::scalar(0.0f32))?;
  let norm = ops::where_(&zero, &Array::scalar(1.0f32), &norm)?;
  let mut gshape = vec![1; s.len()];
  gshape[0] = n0;
  let g = ops::reshape(g, &gshape)?;
  &(v / &norm)? * &g
}

/// The `(g, v)` pair that [`weight_norm`] maps back to `w` (`g = ||w||`,
/// `v = w`), `g` shaped `[out, 1, ..., 1]` as torch stores `weight_g`: what a
/// converter writes for a layer whose weight norm was folded.
pub fn weight_norm_split(w: &Array) -> Result<(Array, Array)> {
  let s = w.shape();
  if s.len() < 2 {
    return Err(Error::InvalidArgument(format!(
      "weight_norm_split: rank >= 2 needed, got {s:?}"
    )));
  }
  let axes: Vec<i32> = (1..s.len() as i32).collect();
  let g = ops::sqrt(&ops::sum_axes(&ops::square(w)?, &axes, true)?)?;
  Ok((g, w.clone()))
}
