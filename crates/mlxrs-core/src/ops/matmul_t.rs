//! `x @ w.T`, the product every `Linear` layer computes, with faster
//! paths for decode steps on the CPU (float32 and affine-quantized `w`).

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

/// `x @ dequantize(w, scales, biases).T`, what `mlx.nn.QuantizedLinear`
/// computes (python `mx.quantized_matmul(x, w, scales, biases,
/// transpose=True, group_size, bits, mode)`); equal to
/// [`quantized_matmul`](super::quantized_matmul) with `transpose = true`.
///
/// MLX's CPU quantized matmul is a scalar loop (a 4-bit SmolLM2-135M
/// decoded at ~7 tok/s on a 2-core VM). On a CPU stream with float32 `x`,
/// affine 4- or 8-bit groups of 32/64/128 and evaluated float32 scales and
/// biases (a quantized checkpoint loaded with float32 compute), at most 32
/// rows (decode, batched decode) go through a vectorised kernel (per group:
/// unpack once,
/// `scale * dot(x, q) + bias * sum(x)`) and more rows (prefill) through one
/// dequantized float32 copy of `w` and BLAS sgemm. On a GPU stream, affine
/// groups with `scales` in `x`'s dtype and at least 256 rows (prefill;
/// `MLXRS_GPU_DEQUANT_ROWS` sets the count, 0 turns it off; not under a
/// gradient or other transformation) run as `x @ dequantize(w).T`: from
/// about 256 rows MLX's quantized GEMM is slower than dequantizing and
/// running the dense one (up to ~3x at 2048 rows on an H100). The same
/// dense path serves float32 `x` with groups of 128 and more than 32 rows
/// on a GPU, under a transformation too: MLX 0.32.4's CUDA quantized GEMM
/// fails there. A vector `x` runs as one row on a GPU (MLX's CUDA matvec
/// fails on it). Anything else (fewer GPU rows, other modes or dtypes) is
/// MLX's op. Gradients flow to `x` only, as for MLX's op.
///
/// C: `mlxrs_quantized_matmul_t` (an mlxrs primitive, not an MLX op).
pub fn quantized_matmul_t(
  x: &Array,
  w: &Array,
  scales: &Array,
  biases: Option<&Array>,
  group_size: i32,
  bits: i32,
  mode: &str,
) -> Result<Array> {
  let mut res = Array::null();
  let mode = std::ffi::CString::new(mode)
    .map_err(|_| crate::Error::InvalidArgument("quantization mode contains a NUL byte".into()))?;
  let biases = biases.map_or(
    mlxrs_sys::mlx_array {
      ctx: std::ptr::null_mut(),
    },
    |b| b.0,
  );
  // SAFETY: the array handles are live borrows (or a NULL handle for no
  // biases) the C layer only reads during the call; `mode` outlives it; the
  // out-handle is fresh and owned by `res`.
  check(unsafe {
    mlxrs_sys::mlxrs_quantized_matmul_t(
      &mut res.0,
      x.0,
      w.0,
      scales.0,
      biases,
      group_size,
      bits,
      mode.as_ptr(),
      default_stream(),
    )
  })?;
  Ok(res)
}
