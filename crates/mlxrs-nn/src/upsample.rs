//! Spatial upsampling of channels-last inputs (python `mlx.nn.Upsample`
//! with `mode="nearest"` or `"linear"`, and the functions
//! `upsample_nearest` / `upsample_linear`).

use mlxrs_core::{Array, Dtype, Error, Result, ops};

/// Upsampling algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsampleMode {
  /// Nearest neighbour.
  Nearest,
  /// (Multi-)linear interpolation, separable over the spatial axes.
  Linear,
}

/// Upsample `[N, spatial..., C]` by a factor per spatial axis (python
/// `nn.Upsample(scale_factor, mode, align_corners)`).
#[derive(Debug, Clone)]
pub struct Upsample {
  /// One factor per spatial axis, or a single factor for all.
  pub scale_factor: Vec<f64>,
  /// Nearest or linear.
  pub mode: UpsampleMode,
  /// Linear only: align the corner pixels of input and output.
  pub align_corners: bool,
}

impl Upsample {
  /// A layer; factors must be positive.
  pub fn new(scale_factor: &[f64], mode: UpsampleMode, align_corners: bool) -> Result<Upsample> {
    if scale_factor.is_empty() || scale_factor.iter().any(|&s| s.is_nan() || s <= 0.0) {
      return Err(Error::InvalidArgument(format!(
        "[Upsample] scale factors must be positive, got {scale_factor:?}"
      )));
    }
    Ok(Upsample {
      scale_factor: scale_factor.to_vec(),
      mode,
      align_corners,
    })
  }

  /// Apply to `x` `[N, spatial..., C]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let dims = x.ndim() as i32 - 2;
    if dims <= 0 {
      return Err(Error::InvalidArgument(format!(
        "[Upsample] The input should have at least 1 spatial dimension which means it should be at least 3D but {}D was provided",
        x.ndim()
      )));
    }
    let scales = if self.scale_factor.len() == 1 {
      vec![self.scale_factor[0]; dims as usize]
    } else if self.scale_factor.len() == dims as usize {
      self.scale_factor.clone()
    } else {
      return Err(Error::InvalidArgument(format!(
        "[Upsample] One scale per spatial dimension is required but scale_factor={:?} and the number of spatial dimensions were {dims}",
        self.scale_factor
      )));
    };
    match self.mode {
      UpsampleMode::Nearest => upsample_nearest(x, &scales),
      UpsampleMode::Linear => upsample_linear(x, &scales, self.align_corners),
    }
  }
}

fn out_size(n: i32, scale: f64) -> Result<i32> {
  let m = (scale * n as f64) as i64;
  if m <= 0 || m > i32::MAX as i64 {
    return Err(Error::InvalidArgument(format!(
      "[Upsample] output size {m} for input size {n} x {scale} is invalid"
    )));
  }
  Ok(m as i32)
}

fn f32s(v: f64) -> Array {
  Array::scalar(v as f32)
}

/// Nearest-neighbour upsampling (python `upsample_nearest(x,
/// scale_factor)`): integer factors repeat each element, others pick
/// `round((i + 0.5) * N / M - 0.5)` (`i * N / M` when shrinking).
pub fn upsample_nearest(x: &Array, scale_factor: &[f64]) -> Result<Array> {
  let dims = x.ndim().saturating_sub(2);
  if dims == 0 || dims != scale_factor.len() {
    return Err(Error::InvalidArgument(
      "A scale needs to be provided for each spatial dimension".into(),
    ));
  }
  let shape = x.shape();
  if scale_factor.iter().all(|s| s.fract() == 0.0 && *s >= 1.0) {
    let mut sh = shape.clone();
    for d in 0..dims {
      sh.insert(2 + 2 * d, 1);
    }
    let y = ops::reshape(x, &sh)?;
    for d in 0..dims {
      sh[2 + 2 * d] = scale_factor[d] as i32;
    }
    let y = ops::broadcast_to(&y, &sh)?;
    let mut out = vec![shape[0]];
    for d in 0..dims {
      out.push(shape[d + 1] * scale_factor[d] as i32);
    }
    out.push(shape[dims + 1]);
    return ops::reshape(&y, &out);
  }
  let mut y = x.clone();
  for (d, &s) in scale_factor.iter().enumerate() {
    let n = shape[d + 1];
    let m = out_size(n, s)?;
    let mut idx = ops::arange(0.0, m as f64, 1.0, Dtype::Float32)?;
    let ratio = n as f64 / m as f64;
    if m > n {
      idx = ops::subtract(
        &ops::multiply(&ops::add(&idx, &f32s(0.5))?, &f32s(ratio))?,
        &f32s(0.5),
      )?;
      idx = ops::round(&idx, 0)?;
    } else {
      idx = ops::multiply(&idx, &f32s(ratio))?;
    }
    let idx = ops::astype(&idx, Dtype::Uint32)?;
    y = ops::take_axis(&y, &idx, d as i32 + 1)?;
  }
  Ok(y)
}

/// Linear upsampling (python `upsample_linear(x, scale_factor,
/// align_corners)`), applied one spatial axis at a time.
pub fn upsample_linear(x: &Array, scale_factor: &[f64], align_corners: bool) -> Result<Array> {
  let dims = x.ndim().saturating_sub(2);
  if dims == 0 || dims != scale_factor.len() {
    return Err(Error::InvalidArgument(
      "A scale needs to be provided for each spatial dimension".into(),
    ));
  }
  let shape = x.shape();
  let mut out = x.clone();
  for (d, &s) in scale_factor.iter().enumerate() {
    let n = shape[d + 1];
    let m = out_size(n, s)?;
    let ar = ops::arange(0.0, m as f64, 1.0, Dtype::Float32)?;
    // python `_scaled_indices`.
    let idx = if align_corners {
      ops::multiply(&ar, &f32s((n - 1) as f64 / (m - 1).max(1) as f64))?
    } else {
      let step = 1.0 / s;
      let start = ((m - 1) as f64 * step - n as f64 + 1.0) / 2.0;
      ops::subtract(&ops::multiply(&ar, &f32s(step))?, &f32s(start))?
    };
    let idx = ops::clip(&idx, Some(&f32s(0.0)), Some(&f32s((n - 1) as f64)))?;
    let l = ops::floor(&idx)?;
    let r = ops::ceil(&idx)?;
    let w = ops::subtract(&idx, &l)?;
    // Weight shaped to broadcast over [N, ..., M (axis d+1), ..., C].
    let mut wshape = vec![1; dims + 1];
    wshape[d] = m;
    let w = ops::reshape(&w, &wshape)?;
    let wl = ops::subtract(&f32s(1.0), &w)?;
    let xl = ops::take_axis(&out, &ops::astype(&l, Dtype::Uint32)?, d as i32 + 1)?;
    let xr = ops::take_axis(&out, &ops::astype(&r, Dtype::Uint32)?, d as i32 + 1)?;
    out = ops::add(&ops::multiply(&xl, &wl)?, &ops::multiply(&xr, &w)?)?;
  }
  Ok(out)
}
