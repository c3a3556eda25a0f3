//! Operators and methods over the generated ops.
//!
//! - `std::ops` arithmetic: `&a + &b`, `&a - 1.0`, `2.0 * &a`, `-&a`, and
//!   with an owned left operand (`(&a + &b)? * 2.0`) (python `a + b`, swift
//!   `a + b`). MLX reports shape / dtype errors when
//!   the graph node is built, and an operator cannot return an error
//!   alongside its value, so `Output = Result<Array>`: write `(&a + &b)?`.
//!   Nothing panics.
//! - Methods for the most used ops: `a.reshape(&[2, 3])?`, `a.sum_axes(..)`,
//!   `a.matmul(&b)` (python `a.reshape(2, 3)`, `a.sum(axis=..)`, `a @ b`).
//! - Constructors: [`Array::zeros`], [`Array::ones`], [`Array::full`],
//!   [`Array::arange`], [`Array::eye`].

use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::array::{Array, ShapeLike};
use crate::dtype::Dtype;
use crate::error::Result;

use super::generated as g;

/// `value` as an array that combines with `a` like a python scalar: floating
/// arrays keep their dtype (`bf16 + 1.0` stays `bf16`); other arrays get a
/// `float32` scalar (`int32 + 0.5` is `float32`), as python's weakly typed
/// scalars do.
fn scalar_for(a: &Array, value: f32) -> Result<Array> {
  let dt = a.dtype();
  if dt.is_float() || dt == Dtype::Complex64 {
    Array::scalar_as(
      f64::from(value),
      if dt == Dtype::Complex64 {
        Dtype::Float32
      } else {
        dt
      },
    )
  } else {
    Array::scalar_as(f64::from(value), Dtype::Float32)
  }
}

macro_rules! binary_op {
  ($trait:ident, $method:ident, $op:ident, $py:literal) => {
    #[doc = concat!("`&a ", $py, " &b` (python `a ", $py, " b`, [`", stringify!($op), "`](super::", stringify!($op), ")), with broadcasting.")]
    impl $trait<&Array> for &Array {
      type Output = Result<Array>;
      fn $method(self, rhs: &Array) -> Result<Array> {
        g::$op(self, rhs)
      }
    }

    #[doc = concat!("`&a ", $py, " x` for a scalar `x` (python `a ", $py, " x`).")]
    impl $trait<f32> for &Array {
      type Output = Result<Array>;
      fn $method(self, rhs: f32) -> Result<Array> {
        g::$op(self, &scalar_for(self, rhs)?)
      }
    }

    /// The same, consuming the left operand (chains without `&`).
    impl $trait<&Array> for Array {
      type Output = Result<Array>;
      fn $method(self, rhs: &Array) -> Result<Array> {
        g::$op(&self, rhs)
      }
    }

    /// The same, consuming the left operand.
    impl $trait<f32> for Array {
      type Output = Result<Array>;
      fn $method(self, rhs: f32) -> Result<Array> {
        g::$op(&self, &scalar_for(&self, rhs)?)
      }
    }

    #[doc = concat!("`x ", $py, " &a` for a scalar `x` (python `x ", $py, " a`).")]
    impl $trait<&Array> for f32 {
      type Output = Result<Array>;
      fn $method(self, rhs: &Array) -> Result<Array> {
        g::$op(&scalar_for(rhs, self)?, rhs)
      }
    }
  };
}

binary_op!(Add, add, add, "+");
binary_op!(Sub, sub, subtract, "-");
binary_op!(Mul, mul, multiply, "*");
binary_op!(Div, div, divide, "/");

/// `-&a` (python `-a`, [`negative`](super::negative)).
impl Neg for &Array {
  type Output = Result<Array>;
  fn neg(self) -> Result<Array> {
    g::negative(self)
  }
}

/// `-a`, consuming `a`.
impl Neg for Array {
  type Output = Result<Array>;
  fn neg(self) -> Result<Array> {
    g::negative(&self)
  }
}

impl Array {
  /// An array of zeros (python `mx.zeros(shape, dtype)`, swift
  /// `MLXArray.zeros`).
  pub fn zeros(shape: &(impl ShapeLike + ?Sized), dtype: Dtype) -> Result<Array> {
    g::zeros(&shape.dims(), dtype)
  }

  /// An array of ones (python `mx.ones(shape, dtype)`).
  pub fn ones(shape: &(impl ShapeLike + ?Sized), dtype: Dtype) -> Result<Array> {
    g::ones(&shape.dims(), dtype)
  }

  /// An array filled with `value` cast to `dtype` (python
  /// `mx.full(shape, value, dtype)`).
  pub fn full(shape: &(impl ShapeLike + ?Sized), value: f64, dtype: Dtype) -> Result<Array> {
    g::full(&shape.dims(), &Array::scalar_as(value, dtype)?, dtype)
  }

  /// `start, start + step, ...` below `stop` (python
  /// `mx.arange(start, stop, step, dtype)`).
  pub fn arange(start: f64, stop: f64, step: f64, dtype: Dtype) -> Result<Array> {
    g::arange(start, stop, step, dtype)
  }

  /// The `n x n` identity matrix (python `mx.eye(n, dtype=dtype)`).
  pub fn eye(n: i32, dtype: Dtype) -> Result<Array> {
    g::eye(n, n, 0, dtype)
  }

  /// The same elements with another shape; one dimension may be `-1`
  /// (python `a.reshape(shape)`).
  pub fn reshape(&self, shape: &(impl ShapeLike + ?Sized)) -> Result<Array> {
    g::reshape(self, &shape.dims())
  }

  /// Reverse the axes (python `a.T` / `a.transpose()`).
  pub fn transpose(&self) -> Result<Array> {
    g::transpose(self)
  }

  /// Permute the axes (python `a.transpose(axes)`).
  pub fn transpose_axes(&self, axes: &[i32]) -> Result<Array> {
    g::transpose_axes(self, axes)
  }

  /// Swap two axes (python `a.swapaxes(axis1, axis2)`).
  pub fn swapaxes(&self, axis1: i32, axis2: i32) -> Result<Array> {
    g::swapaxes(self, axis1, axis2)
  }

  /// Insert a size-1 axis at `axis` (python `mx.expand_dims(a, axis)`).
  pub fn expand_dims(&self, axis: i32) -> Result<Array> {
    g::expand_dims(self, axis)
  }

  /// Remove all size-1 axes (python `a.squeeze()`).
  pub fn squeeze(&self) -> Result<Array> {
    g::squeeze(self)
  }

  /// Convert to `dtype` (python `a.astype(dtype)`).
  pub fn astype(&self, dtype: Dtype) -> Result<Array> {
    g::astype(self, dtype)
  }

  /// Sum over `axes` (python `a.sum(axis=axes, keepdims=keepdims)`).
  pub fn sum_axes(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
    g::sum_axes(self, axes, keepdims)
  }

  /// Mean over `axes` (python `a.mean(axis=axes, keepdims=keepdims)`).
  pub fn mean_axes(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
    g::mean_axes(self, axes, keepdims)
  }

  /// Indices of the maxima along `axis` (python `a.argmax(axis, keepdims)`).
  pub fn argmax(&self, axis: i32, keepdims: bool) -> Result<Array> {
    g::argmax_axis(self, axis, keepdims)
  }

  /// Matrix product (python `a @ b`).
  pub fn matmul(&self, other: &Array) -> Result<Array> {
    g::matmul(self, other)
  }

  /// Element-wise `e^x` (python `mx.exp(a)`).
  pub fn exp(&self) -> Result<Array> {
    g::exp(self)
  }

  /// Element-wise square root (python `mx.sqrt(a)`).
  pub fn sqrt(&self) -> Result<Array> {
    g::sqrt(self)
  }

  /// Softmax along `axis` (python `mx.softmax(a, axis)`).
  pub fn softmax(&self, axis: i32) -> Result<Array> {
    g::softmax_axis(self, axis, false)
  }
}

/// Pad `a` with `(before, after)` elements per axis: python
/// `mx.pad(a, pad_width=[(lo, hi), ...], mode=mode, constant_values=value)`,
/// swift `padded(a, widths:)`.
///
/// `pairs` has one pair per axis of `a`, or a single pair used for every
/// axis (python's `pad_width=[(lo, hi)]`). `value` (cast to `a`'s dtype) is
/// used by `mode = "constant"`; `"edge"` repeats the border elements. MLX
/// also accepts `"reflect"`, `"symmetric"` and `"wrap"` (later MLX versions).
/// A wrong number of pairs, a negative width or an unknown mode is an
/// error. C: `mlxrs_pad_pairs` (C++ `pad` with `std::pair` widths).
pub fn pad_pairs(a: &Array, pairs: &[(i32, i32)], value: f64, mode: &str) -> Result<Array> {
  let nd = a.ndim();
  let pairs: Vec<(i32, i32)> = match pairs.len() {
    1 if nd != 1 => vec![pairs[0]; nd],
    n if n == nd => pairs.to_vec(),
    n => {
      return Err(crate::Error::InvalidArgument(format!(
        "pad_pairs: {n} (before, after) pairs for an array with {nd} axes (shape {:?}); give one per axis or one for all",
        a.shape()
      )));
    }
  };
  if let Some((axis, p)) = pairs.iter().enumerate().find(|(_, p)| p.0 < 0 || p.1 < 0) {
    return Err(crate::Error::InvalidArgument(format!(
      "pad_pairs: negative pad width {p:?} for axis {axis}"
    )));
  }
  let lo: Vec<i32> = pairs.iter().map(|p| p.0).collect();
  let hi: Vec<i32> = pairs.iter().map(|p| p.1).collect();
  let value = Array::scalar_as(value, a.dtype())?;
  let c_mode = crate::error::cstring(mode)?;
  let mut out = Array::null();
  // SAFETY: `a` and `value` are live handles only read during the call; `lo`
  // and `hi` hold `lo.len()` ints each and `c_mode` outlives the call; the
  // out-handle is fresh and owned by `out`.
  crate::error::check(unsafe {
    mlxrs_sys::mlxrs_pad_pairs(
      &mut out.0,
      a.0,
      lo.as_ptr(),
      hi.as_ptr(),
      lo.len(),
      value.0,
      c_mode.as_ptr(),
      crate::stream::default_stream(),
    )
  })?;
  Ok(out)
}
