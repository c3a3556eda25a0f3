//! Graph evaluation: python `mx.eval(*arrays)` / `mx.async_eval(*arrays)`,
//! swift `eval(...)` / `asyncEval(...)`.

use crate::array::Array;
use crate::error::{Result, check};
use crate::vector::VectorArray;

/// Evaluate all `arrays` together (shared subgraphs computed once).
pub fn eval(arrays: &[Array]) -> Result<()> {
  let v = VectorArray::from_arrays(arrays)?;
  // SAFETY: live owned vector handle.
  check(unsafe { mlxrs_sys::mlx_eval(v.0) })
}

/// Schedule evaluation of `arrays` and return at once; a later read or
/// [`eval`] waits for it.
pub fn async_eval(arrays: &[Array]) -> Result<()> {
  let v = VectorArray::from_arrays(arrays)?;
  // SAFETY: live owned vector handle.
  check(unsafe { mlxrs_sys::mlx_async_eval(v.0) })
}
