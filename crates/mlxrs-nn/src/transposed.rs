//! A dense weight's transpose kept ready for GPU matmuls (no Python twin).
//!
//! `x @ W.T` on a GPU builds a `Transpose` node for `W.T` in every call,
//! and MLX's eval walks and encodes each node of every decode step. A
//! transpose made once and evaluated is a strided view of the weight (no
//! copy) that later graphs take as a leaf: one node fewer per matmul per
//! step. The CPU keeps `ops::matmul_t` (its sgemv path wants `W` itself).

use mlxrs_core::{Array, Device, Result, ops};

/// `W.T` of a dense weight, made by [`TransposedWeight::keep`] and used only
/// while the layer still holds that same weight (compared by
/// [`Array::id`]: a replaced weight, e.g. a training step's tracer or a
/// reload, never meets a stale transpose).
#[derive(Default)]
pub(crate) struct TransposedWeight(Option<(Array, Array)>);

impl TransposedWeight {
  /// Keep `w.T` as an evaluated view when ops run on a GPU (the CPU
  /// keeps nothing).
  pub(crate) fn keep(&mut self, w: &Array) -> Result<()> {
    self.0 = None;
    if !Device::default_is_gpu() {
      return Ok(());
    }
    self.keep_any_device(w)
  }

  fn keep_any_device(&mut self, w: &Array) -> Result<()> {
    let mut t = ops::transpose(w)?;
    t.eval()?;
    self.0 = Some((w.clone(), t));
    Ok(())
  }

  /// Drop the transpose (and the weight it pins).
  pub(crate) fn clear(&mut self) {
    self.0 = None;
  }

  /// `x @ w.T`: the kept transpose when it was made from `w`, else
  /// [`ops::matmul_t`].
  pub(crate) fn matmul_t(&self, x: &Array, w: &Array) -> Result<Array> {
    match &self.0 {
      Some((src, t)) if src.id() == w.id() => ops::matmul(x, t),
      _ => ops::matmul_t(x, w),
    }
  }

  /// `w.T`: the kept transpose when it was made from `w`, else a new one.
  pub(crate) fn of(&self, w: &Array) -> Result<Array> {
    match &self.0 {
      Some((src, t)) if src.id() == w.id() => Ok(t.clone()),
      _ => ops::transpose(w),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use mlxrs_core::Dtype;

  fn max_diff(a: &Array, b: &Array) -> Result<f32> {
    ops::max(&ops::abs(&ops::subtract(a, b)?)?, false)?.item::<f32>()
  }

  /// A kept transpose computes `x @ W.T` as `matmul_t` does (to float32
  /// rounding: BLAS sgemm with a transposed operand vs sgemv), only
  /// for the weight it was made from: a replaced weight (another array, even
  /// of the same shape) goes back to `matmul_t`, and a cleared one too.
  #[test]
  fn kept_transpose_serves_only_its_weight() -> Result<()> {
    let w = mlxrs_core::random::normal(&[24, 16], Dtype::Float32, 0.0, 1.0, None)?;
    let other = mlxrs_core::random::normal(&[24, 16], Dtype::Float32, 0.0, 1.0, None)?;
    let x = mlxrs_core::random::normal(&[3, 16], Dtype::Float32, 0.0, 1.0, None)?;
    let mut t = TransposedWeight::default();
    t.keep_any_device(&w)?;
    assert!(max_diff(&t.matmul_t(&x, &w)?, &ops::matmul_t(&x, &w)?)? < 1e-5);
    assert_eq!(t.of(&w)?.shape(), vec![16, 24]);
    // A clone is the same array; another array is not.
    assert_eq!(w.clone().id(), w.id());
    assert_ne!(other.id(), w.id());
    let want = ops::matmul_t(&x, &other)?;
    assert_eq!(max_diff(&t.matmul_t(&x, &other)?, &want)?, 0.0);
    assert_eq!(max_diff(&t.of(&other)?, &ops::transpose(&other)?)?, 0.0);
    t.clear();
    assert_eq!(
      max_diff(&t.matmul_t(&x, &w)?, &ops::matmul_t(&x, &w)?)?,
      0.0
    );
    Ok(())
  }
}
