//! The one error type of mlxrs-core and the `check` bridge from the C layer's
//! `int` return codes. Python raises `ValueError` / `RuntimeError`; Swift
//! MLX reports through its error handler; here every failure is an
//! [`Error`] value and nothing panics or exits.

use std::ffi::{CStr, CString, c_int};

use crate::dtype::Dtype;

/// Errors from MLX or from mlxrs's own argument checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  /// MLX rejected the call (shape, dtype, axis or value errors, allocation
  /// failures, ...). Carries MLX's message.
  #[error("mlx: {0}")]
  Mlx(String),
  /// A typed read (`to_vec::<T>`, `item::<T>`) asked for the wrong element
  /// type.
  #[error("dtype mismatch: the array holds {actual:?}, but {requested:?} was requested")]
  DtypeMismatch {
    /// The array's dtype.
    actual: Dtype,
    /// The dtype of the requested Rust element type.
    requested: Dtype,
  },
  /// An argument mlxrs checks before calling MLX (shape/data length,
  /// dimension overflow, interior NUL in a string, ...).
  #[error("invalid argument: {0}")]
  InvalidArgument(String),
  /// A file is not in the format it should be (corrupt or truncated
  /// safetensors, ...).
  #[error("{path}: {msg}")]
  Format {
    /// The file.
    path: String,
    /// What is wrong.
    msg: String,
  },
  /// A file could not be read or written.
  #[error("{path}: {source}")]
  Io {
    /// The file.
    path: String,
    /// The cause.
    #[source]
    source: std::io::Error,
  },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The calling thread's last C-layer error message.
pub(crate) fn last_error() -> String {
  // SAFETY: `mlxrs_last_error` returns a pointer to a thread-local,
  // NUL-terminated string owned by the C layer, valid until the next failing
  // call on this thread; it is copied out immediately.
  let msg = unsafe { CStr::from_ptr(mlxrs_sys::mlxrs_last_error()) };
  let s = msg.to_string_lossy().into_owned();
  if s.is_empty() {
    "unknown MLX error".to_string()
  } else {
    s
  }
}

/// Turn a C-layer return code into a `Result`: `0` is success, anything else
/// is an [`Error::Mlx`] carrying the message the C layer recorded.
pub fn check(rc: c_int) -> Result<()> {
  if rc == 0 {
    Ok(())
  } else {
    Err(Error::Mlx(last_error()))
  }
}

/// A `CString` for the C layer, or an error naming the interior NUL.
pub(crate) fn cstring(s: &str) -> Result<CString> {
  CString::new(s).map_err(|_| Error::InvalidArgument(format!("string contains a NUL byte: {s:?}")))
}
