//! Owned `mlx_vector_array` (a C++ `std::vector<array>`), the argument and
//! result type of multi-array ops.

use mlxrs_sys::mlx_vector_array;

use crate::array::Array;
use crate::error::{Error, Result, check};

/// RAII over `mlx_vector_array`.
pub struct VectorArray(pub(crate) mlx_vector_array);

impl Drop for VectorArray {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_vector_array_free(self.0) };
  }
}

impl VectorArray {
  /// An empty-handle out-parameter.
  pub(crate) fn null() -> VectorArray {
    VectorArray(mlx_vector_array {
      ctx: std::ptr::null_mut(),
    })
  }

  /// A vector holding (shared references to) `arrays`.
  pub fn from_arrays(arrays: &[Array]) -> Result<VectorArray> {
    if arrays.iter().any(Array::is_null) {
      return Err(Error::InvalidArgument(
        "empty array handle in a list of arrays".into(),
      ));
    }
    let raw: Vec<mlxrs_sys::mlx_array> = arrays.iter().map(|a| a.0).collect();
    // SAFETY: `raw` holds `len` live handles for the duration of the call;
    // the C layer copies (refcounts) each into a new owned vector.
    let v = VectorArray(unsafe { mlxrs_sys::mlx_vector_array_new_data(raw.as_ptr(), raw.len()) });
    if v.0.ctx.is_null() {
      return Err(Error::Mlx(crate::error::last_error()));
    }
    Ok(v)
  }

  /// Number of arrays.
  pub fn len(&self) -> usize {
    // SAFETY: query on an owned handle (NULL ctx yields 0).
    unsafe { mlxrs_sys::mlx_vector_array_size(self.0) }
  }

  /// Whether it holds no arrays.
  pub fn is_empty(&self) -> bool {
    self.len() == 0
  }

  /// The arrays, as owned handles.
  pub fn to_vec(&self) -> Result<Vec<Array>> {
    let n = self.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
      let mut a = Array::null();
      // SAFETY: `i < len`; the out-handle is owned by `a`.
      check(unsafe { mlxrs_sys::mlx_vector_array_get(&mut a.0, self.0, i) })?;
      out.push(a);
    }
    Ok(out)
  }

  /// The raw handle, borrowed.
  pub fn as_raw(&self) -> mlx_vector_array {
    self.0
  }
}
