//! `x @ w.T`, the product every `Linear` layer computes, with a faster
//! path for decode steps on the CPU.

use crate::array::Array;
use crate::error::{Result, check};
use crate::stream::default_stream;

/// `x @ w.T` for `x` `[..., K]` and `w` `[N, K]` (python `x @ w.T`, what
/// `mlx.nn.Linear` computes). Equal to `matmul(x, transpose(w))`; for at
/// most 2 rows of float32 on a CPU stream with `w` an evaluated
/// row-contiguous matrix it runs BLAS's `sgemv` once per row instead of
/// MLX's `sgemm` (OpenBLAS streams a one-row sgemm's weights at about a
/// third of sgemv's bandwidth, so a decode step's Linear layers run ~2-3x
/// faster); gradients flow as through `matmul`.
///
/// C: `mlxrs_matmul_t` (an mlxrs primitive, not an MLX op). Shapes that do
/// not multiply are an [`crate::Error::Mlx`].
pub fn matmul_t(x: &Array, w: &Array) -> Result<Array> {
  let mut res = Array::null();
  // SAFETY: the array handles are live borrows the C layer only reads during
  // the call; the out-handle is fresh and owned by `res`.
  check(unsafe { mlxrs_sys::mlxrs_matmul_t(&mut res.0, x.0, w.0, default_stream()) })?;
  Ok(res)
}
