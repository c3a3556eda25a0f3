//! Pooling over the spatial axes of channels-last inputs (python
//! `mlx.nn.MaxPool1d`, `nn.AvgPool1d`, `nn.MaxPool2d`, `nn.AvgPool2d`):
//! sliding windows taken with `mx.as_strided` (a reshape when the windows
//! tile the input), then `max` / `mean` over the window axes, exactly as
//! python's `_Pool` does.

use mlxrs_core::{Array, Error, Result, ops};

/// `max` or `mean`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
  /// Maximum over the window (padding is `-inf`).
  Max,
  /// Average over the window (padding is `0`, counted in the mean).
  Avg,
}

/// A pooling layer over `n` spatial axes (`[N, L, C]` or `[N, H, W, C]`).
#[derive(Debug, Clone)]
pub struct Pool {
  /// Max or average.
  pub kind: PoolKind,
  /// Window per spatial axis.
  pub kernel_size: Vec<i32>,
  /// Stride per spatial axis (python default: the kernel size).
  pub stride: Vec<i32>,
  /// Padding per spatial axis (both sides).
  pub padding: Vec<i32>,
}

impl Pool {
  /// A pool over `kernel_size.len()` spatial axes; `stride` defaults to the
  /// kernel size. Errors name a non-positive kernel/stride or negative
  /// padding.
  pub fn new(
    kind: PoolKind,
    kernel_size: &[i32],
    stride: Option<&[i32]>,
    padding: &[i32],
  ) -> Result<Pool> {
    let n = kernel_size.len();
    let stride = stride.unwrap_or(kernel_size).to_vec();
    let name = match kind {
      PoolKind::Max => "MaxPool",
      PoolKind::Avg => "AvgPool",
    };
    if n == 0 || stride.len() != n || padding.len() != n {
      return Err(Error::InvalidArgument(format!(
        "[{name}{n}d] kernel_size {kernel_size:?}, stride {stride:?} and padding {padding:?} must have one entry per spatial axis"
      )));
    }
    if kernel_size.iter().any(|&k| k <= 0) {
      return Err(Error::InvalidArgument(format!(
        "[{name}{n}d] 'kernel_size' must be positive but got {kernel_size:?}."
      )));
    }
    if stride.iter().any(|&s| s <= 0) {
      return Err(Error::InvalidArgument(format!(
        "[{name}{n}d] 'stride' must be positive but got {stride:?}."
      )));
    }
    if padding.iter().any(|&p| p < 0) {
      return Err(Error::InvalidArgument(format!(
        "[{name}{n}d] 'padding' must be non-negative but got {padding:?}."
      )));
    }
    Ok(Pool {
      kind,
      kernel_size: kernel_size.to_vec(),
      stride,
      padding: padding.to_vec(),
    })
  }

  /// `nn.MaxPool1d(kernel_size, stride, padding)`.
  pub fn max1d(kernel_size: i32, stride: Option<i32>, padding: i32) -> Result<Pool> {
    Pool::new(
      PoolKind::Max,
      &[kernel_size],
      stride.as_ref().map(std::slice::from_ref),
      &[padding],
    )
  }

  /// `nn.AvgPool1d(kernel_size, stride, padding)`.
  pub fn avg1d(kernel_size: i32, stride: Option<i32>, padding: i32) -> Result<Pool> {
    Pool::new(
      PoolKind::Avg,
      &[kernel_size],
      stride.as_ref().map(std::slice::from_ref),
      &[padding],
    )
  }

  /// `nn.MaxPool2d(kernel_size, stride, padding)`.
  pub fn max2d(
    kernel_size: (i32, i32),
    stride: Option<(i32, i32)>,
    padding: (i32, i32),
  ) -> Result<Pool> {
    let st = stride.map(|s| [s.0, s.1]);
    Pool::new(
      PoolKind::Max,
      &[kernel_size.0, kernel_size.1],
      st.as_ref().map(|s| &s[..]),
      &[padding.0, padding.1],
    )
  }

  /// `nn.AvgPool2d(kernel_size, stride, padding)`.
  pub fn avg2d(
    kernel_size: (i32, i32),
    stride: Option<(i32, i32)>,
    padding: (i32, i32),
  ) -> Result<Pool> {
    let st = stride.map(|s| [s.0, s.1]);
    Pool::new(
      PoolKind::Avg,
      &[kernel_size.0, kernel_size.1],
      st.as_ref().map(|s| &s[..]),
      &[padding.0, padding.1],
    )
  }

  /// Pool `x` `[N, spatial..., C]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let n = self.kernel_size.len();
    if x.ndim() != n + 2 {
      return Err(Error::InvalidArgument(format!(
        "pooling over {n} spatial axes expects a {}-D input [N, ..., C], got {:?}",
        n + 2,
        x.shape()
      )));
    }
    let x = if self.padding.iter().any(|&p| p > 0) {
      let axes: Vec<i32> = (1..=n as i32).collect();
      let v = match self.kind {
        PoolKind::Max => f64::NEG_INFINITY,
        PoolKind::Avg => 0.0,
      };
      let pv = Array::scalar_as(v, x.dtype())?;
      ops::pad(x, &axes, &self.padding, &self.padding, &pv, "constant")?
    } else {
      x.clone()
    };
    let s = x.shape();
    for i in 0..n {
      if s[i + 1] < self.kernel_size[i] {
        return Err(Error::InvalidArgument(format!(
          "pooling window {:?} is larger than the (padded) input {:?}",
          self.kernel_size, s
        )));
      }
    }
    let w = sliding_windows(&x, &self.kernel_size, &self.stride)?;
    let axes: Vec<i32> = (-(n as i32) - 1..-1).collect();
    match self.kind {
      PoolKind::Max => ops::max_axes(&w, &axes, false),
      PoolKind::Avg => ops::mean_axes(&w, &axes, false),
    }
  }
}

/// python `_sliding_windows(x, window_shape, window_strides)`: `[N,
/// out..., window..., C]`.
fn sliding_windows(x: &Array, window: &[i32], strides: &[i32]) -> Result<Array> {
  let shape = x.shape();
  let nd = shape.len();
  let spatial = &shape[1..nd - 1];
  if spatial
    .iter()
    .zip(window)
    .zip(strides)
    .all(|((s, w), st)| w == st && s % w == 0)
  {
    // Non-overlapping windows: a reshape + transpose.
    let mut new_shape = vec![shape[0]];
    for (s, w) in spatial.iter().zip(window) {
      new_shape.push(s / w);
      new_shape.push(*w);
    }
    new_shape.push(shape[nd - 1]);
    let last = new_shape.len() - 1;
    let mut order = vec![0i32];
    order.extend((1..last).step_by(2).map(|i| i as i32));
    order.extend((2..last).step_by(2).map(|i| i as i32));
    order.push(last as i32);
    return ops::transpose_axes(&ops::reshape(x, &new_shape)?, &order);
  }
  // Row-major element strides of x.
  let mut st = vec![1i64; nd];
  for i in (0..nd - 1).rev() {
    st[i] = st[i + 1] * shape[i + 1] as i64;
  }
  let mut final_shape = vec![shape[0]];
  final_shape.extend(
    spatial
      .iter()
      .zip(window)
      .zip(strides)
      .map(|((s, w), t)| (s - w) / t + 1),
  );
  final_shape.extend_from_slice(window);
  final_shape.push(shape[nd - 1]);
  let mut final_strides = vec![st[0]];
  final_strides.extend(
    st[1..nd - 1]
      .iter()
      .zip(strides)
      .map(|(o, t)| o * *t as i64),
  );
  final_strides.extend_from_slice(&st[1..nd - 1]);
  final_strides.push(st[nd - 1]);
  // as_strided reads the buffer as row-major: make sure it is.
  let xc = ops::contiguous(x, false)?;
  ops::as_strided(&xc, &final_shape, &final_strides, 0)
}
