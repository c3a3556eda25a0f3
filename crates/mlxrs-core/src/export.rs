//! Function export and graph printing: python `mx.export_function`,
//! `mx.import_function`, `mx.exporter`, `mx.export_to_dot`; swift
//! `exportFunction(to:shapeless:_:)`, `exportFunctions(to:shapeless:_:build:)`,
//! `importFunction(from:)`.
//!
//! An exported function (`.mlxfn` file) is the traced graph of a
//! [`Closure`] with its captured arrays as constants; importing it gives a
//! closure computing the same outputs, without the Rust code, that can be
//! called, transformed and compiled like any other. Inputs must match a
//! traced signature (dtypes and shapes; dtypes and ranks for a shapeless
//! export).

use std::ffi::CString;
use std::path::Path;

use crate::array::Array;
use crate::closure::{Closure, check_call};
use crate::error::{Error, Result, cstring, last_error};
use crate::string::MlxString;
use crate::vector::VectorArray;

fn path_cstring(path: &Path) -> Result<CString> {
  let s = path
    .to_str()
    .ok_or_else(|| Error::InvalidArgument(format!("path is not UTF-8: {}", path.display())))?;
  cstring(s)
}

/// Trace `f` at `example_args` and write its graph to `path` (python
/// `mx.export_function(path, f, *example_args, shapeless=...)`, swift
/// `exportFunction(to:shapeless:_:)`). With `shapeless`, the import accepts
/// inputs of any shape with the same dtypes and ranks.
pub fn export_function(
  path: impl AsRef<Path>,
  f: &Closure,
  example_args: &[Array],
  shapeless: bool,
) -> Result<()> {
  let c_path = path_cstring(path.as_ref())?;
  let args = VectorArray::from_arrays(example_args)?;
  // SAFETY: live handles and NUL-terminated path for the call.
  check_call(unsafe {
    mlxrs_sys::mlx_export_function(c_path.as_ptr(), f.0, args.0, shapeless)
  })
}

/// The function exported to `path`, as a [`Closure`] (python
/// `mx.import_function(path)`, swift `importFunction(from:)`). Calling it
/// with inputs matching none of the exported signatures is an error that
/// lists them.
///
/// The file is read now (a bad file fails here) and once more by each
/// other thread that calls the closure: MLX 0.32 binds imported ops to the
/// stream of the first thread that used MLX, so each calling thread gets
/// its own copy, with its ops moved to that thread's default streams. The
/// file must therefore stay in place while the closure is used from new
/// threads.
pub fn import_function(path: impl AsRef<Path>) -> Result<Closure> {
  let path = path.as_ref();
  if let Err(e) = std::fs::metadata(path) {
    return Err(Error::Io { path: path.display().to_string(), source: e });
  }
  let c_path = path_cstring(path)?;
  let mut res = Closure::null();
  // SAFETY: NUL-terminated path for the call; out-handle owned by `res`.
  check_call(unsafe { mlxrs_sys::mlx_import_function(&mut res.0, c_path.as_ptr()) })?;
  Ok(res)
}

/// Several traces of one function in one file, e.g. one per input shape or
/// per number of inputs (python `mx.exporter(path, f, shapeless=...)`,
/// swift `exportFunctions(to:shapeless:_:build:)`). The file is complete
/// after each [`trace`](Self::trace); dropping the exporter closes it.
pub struct FunctionExporter(mlxrs_sys::mlx_function_exporter);

// SAFETY: the handle owns a C++ FunctionExporter (an open file and a copy of
// a `Closure`'s function, which is `Send`); it is only used through
// `&mut self`.
unsafe impl Send for FunctionExporter {}

impl Drop for FunctionExporter {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_function_exporter_free(self.0) };
  }
}

impl std::fmt::Debug for FunctionExporter {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("FunctionExporter").field("ctx", &self.0.ctx).finish()
  }
}

impl FunctionExporter {
  /// Create (truncate) `path` for traces of `f`.
  pub fn new(path: impl AsRef<Path>, f: &Closure, shapeless: bool) -> Result<FunctionExporter> {
    let c_path = path_cstring(path.as_ref())?;
    // SAFETY: live closure and NUL-terminated path for the call.
    let raw = unsafe { mlxrs_sys::mlx_function_exporter_new(c_path.as_ptr(), f.0, shapeless) };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(FunctionExporter(raw))
  }

  /// Trace the function at `args` and append the trace (python
  /// `exporter(*args)`). A signature already traced is an error.
  pub fn trace(&mut self, args: &[Array]) -> Result<()> {
    let v = VectorArray::from_arrays(args)?;
    // SAFETY: live handles for the call.
    check_call(unsafe { mlxrs_sys::mlx_function_exporter_apply(self.0, v.0) })
  }
}

/// The graph computing `outputs` in Graphviz dot format (python
/// `mx.export_to_dot(file, *outputs)`, which writes it to a file; render with
/// `dot -Tsvg`).
pub fn export_to_dot(outputs: &[Array]) -> Result<String> {
  let v = VectorArray::from_arrays(outputs)?;
  let mut s = MlxString::new();
  // SAFETY: live vector; out-handle owned by `s`.
  crate::error::check(unsafe { mlxrs_sys::mlxrs_export_to_dot(&mut s.0, v.0) })?;
  Ok(s.as_str().into_owned())
}

/// The graph computing `outputs` as text, one line per node (C++
/// `print_graph`).
pub fn print_graph(outputs: &[Array]) -> Result<String> {
  let v = VectorArray::from_arrays(outputs)?;
  let mut s = MlxString::new();
  // SAFETY: live vector; out-handle owned by `s`.
  crate::error::check(unsafe { mlxrs_sys::mlxrs_print_graph(&mut s.0, v.0) })?;
  Ok(s.as_str().into_owned())
}
