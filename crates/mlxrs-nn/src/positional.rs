//! Sinusoidal positional encoding (python
//! `mlx.nn.SinusoidalPositionalEncoding`).

use mlxrs_core::{Array, Dtype, Error, Result, ops};

/// `[sin(x * sigma); cos(x * sigma)] * scale` with `dims / 2` frequencies
/// log-spaced from `max_freq` down to `min_freq` (python
/// `nn.SinusoidalPositionalEncoding(dims, min_freq, max_freq, scale,
/// cos_first, full_turns)`).
pub struct SinusoidalPositionalEncoding {
  /// Output width.
  pub dims: i32,
  /// Output scale (python default `sqrt(2 / dims)`).
  pub scale: f32,
  /// `[cos; sin]` instead of `[sin; cos]`.
  pub cos_first: bool,
  sigmas: Array,
}

impl SinusoidalPositionalEncoding {
  /// Build the frequencies; `dims` must be positive and even.
  pub fn new(
    dims: i32,
    min_freq: f64,
    max_freq: f64,
    scale: Option<f32>,
    cos_first: bool,
    full_turns: bool,
  ) -> Result<SinusoidalPositionalEncoding> {
    if dims <= 0 || dims % 2 != 0 {
      return Err(Error::InvalidArgument(format!(
        "[SinusoidalPositionalEncoding] dims must be positive and even but got {dims}."
      )));
    }
    if min_freq <= 0.0 || max_freq <= 0.0 {
      return Err(Error::InvalidArgument(
        "SinusoidalPositionalEncoding: frequencies must be positive".into(),
      ));
    }
    let half = dims / 2;
    // python: one_zero = 1 - arange(half) / (half - 1) (float32), then
    // exp(one_zero * (log max - log min) + log min).
    let one_zero = if dims == 2 {
      Array::from_slice(&[1.0f32], &[1])?
    } else {
      let r = ops::arange(0.0, half as f64, 1.0, Dtype::Int32)?;
      let r = ops::divide(&r, &Array::scalar((half - 1) as f32))?;
      ops::subtract(&Array::scalar(1.0f32), &r)?
    };
    let (lmin, lmax) = (min_freq.ln(), max_freq.ln());
    let span = Array::scalar((lmax - lmin) as f32);
    let mut sigmas = ops::exp(&ops::add(
      &ops::multiply(&one_zero, &span)?,
      &Array::scalar(lmin as f32),
    )?)?;
    if full_turns {
      sigmas = ops::multiply(&sigmas, &Array::scalar((2.0 * std::f64::consts::PI) as f32))?;
    }
    Ok(SinusoidalPositionalEncoding {
      dims,
      scale: scale.unwrap_or((2.0 / dims as f32).sqrt()),
      cos_first,
      sigmas,
    })
  }

  /// With python's defaults (`min_freq 1e-4`, `max_freq 1`, default scale).
  pub fn with_defaults(dims: i32) -> Result<SinusoidalPositionalEncoding> {
    SinusoidalPositionalEncoding::new(dims, 0.0001, 1.0, None, false, false)
  }

  /// Encode positions `x` (any shape) -> `[..., dims]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let y = ops::multiply(&ops::expand_dims(x, -1)?, &self.sigmas)?;
    let (c, s) = (ops::cos(&y)?, ops::sin(&y)?);
    let y = if self.cos_first {
      ops::concatenate_axis(&[c, s], -1)?
    } else {
      ops::concatenate_axis(&[s, c], -1)?
    };
    if self.scale != 1.0 {
      ops::multiply(&y, &Array::scalar_as(self.scale as f64, y.dtype())?)
    } else {
      Ok(y)
    }
  }
}
