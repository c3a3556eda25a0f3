//! Owned `mlx_string` (internal).

use std::ffi::CStr;

/// RAII over `mlx_string`.
pub(crate) struct MlxString(pub(crate) mlxrs_sys::mlx_string);

impl MlxString {
  pub(crate) fn new() -> Self {
    // SAFETY: returns a NULL-ctx handle; no allocation.
    MlxString(unsafe { mlxrs_sys::mlx_string_new() })
  }

  pub(crate) fn as_str(&self) -> std::borrow::Cow<'_, str> {
    // SAFETY: `mlx_string_data` returns a NUL-terminated buffer owned by the
    // handle ("" for NULL ctx), valid while `self` lives unchanged.
    unsafe { CStr::from_ptr(mlxrs_sys::mlx_string_data(self.0)) }.to_string_lossy()
  }
}

impl Drop for MlxString {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_string_free(self.0) };
  }
}
