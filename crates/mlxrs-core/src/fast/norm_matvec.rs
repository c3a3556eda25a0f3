//! A decoder layer's residual add, RMSNorm and the projection after them as
//! one kernel, for one decoded row on a CUDA device.
//!
//! A pre-norm layer adds each branch's output to the residual stream,
//! normalizes the sum and projects it: python mlx-lm writes
//! `h = x + r; y = proj(norm(h))`, and for the MLP `silu(gate) * up` after a
//! gate | up projection. Unfused that is three kernels (add, `rms_norm`, the
//! matrix-vector product) or five (with the compiled SwiGLU's split halves);
//! a decode step of a small model is bound by the host's cost per kernel, so
//! [`norm_matvec`] makes it one custom kernel that reproduces MLX's own
//! kernels bit for bit (C: `mlxrs_fast_norm_matvec`; which kernels and in
//! what order, in its source). It returns `None` wherever it does not apply
//! (CPU, Metal, more than one row, other layouts, inside a transformation,
//! `MLXRS_FUSE_NORM_MATVEC=0`, or a device whose runtime compiler failed to
//! build the kernel once, or weights not yet evaluated): the caller then
//! runs MLX's ops. Dense bfloat16 / float16 / float32 and affine 4- / 8-bit
//! weights, each checked bit for bit against MLX's ops on an H100
//! (docs/lm.md). Each kernel shape is compiled at run time on first use
//! (~1-3 s).
//!
//! No Python twin (mlx-lm runs `x + r`, `nn.RMSNorm`, `nn.Linear` /
//! `nn.QuantizedLinear` and `swiglu` separately; this gives their values).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::check;
use crate::stream::default_stream;
use crate::{Array, Result, ops};

/// The projection a [`norm_matvec`] call ends with: `[N, K]` dense weights,
/// or affine-quantized ones (`[N, K * bits / 32]` uint32 with `[N, K /
/// group_size]` scales and biases in the activations' dtype).
#[derive(Clone, Copy)]
pub enum Projection<'a> {
  /// `y = n @ weight.T`.
  Dense(&'a Array),
  /// `y = mx.quantized_matmul(n, weight, scales, biases, True, group_size,
  /// bits)` (affine mode).
  Affine {
    /// Packed weights.
    weight: &'a Array,
    /// Per-group scales.
    scales: &'a Array,
    /// Per-group biases.
    biases: &'a Array,
    /// Bits per element (4 or 8 take the kernel).
    bits: i32,
    /// Elements per group (32, 64, 128 take the kernel).
    group_size: i32,
  },
}

impl<'a> Projection<'a> {
  /// `(weight, scales, biases, bits, group_size)`; no scales / biases and
  /// zero bits for dense weights.
  fn parts(self) -> (&'a Array, Option<&'a Array>, Option<&'a Array>, i32, i32) {
    match self {
      Projection::Dense(w) => (w, None, None, 0, 0),
      Projection::Affine {
        weight,
        scales,
        biases,
        bits,
        group_size,
      } => (weight, Some(scales), Some(biases), bits, group_size),
    }
  }
}

/// Per kernel shape: whether the fused kernel built and ran. Its first use
/// evaluates it once, so a device whose runtime compiler cannot build it
/// falls back to MLX's ops instead of failing every later evaluation.
type Key = (crate::Dtype, i32, i32, bool, bool, i32, i32, u32);
static PROBED: Mutex<Option<HashMap<Key, bool>>> = Mutex::new(None);

fn call(
  x: &Array,
  delta: Option<&Array>,
  norm_weight: &Array,
  eps: f32,
  proj: Projection<'_>,
  swiglu: bool,
) -> Result<Option<(Array, Array)>> {
  let empty = Array::null();
  let (w, scales, biases, bits, group) = proj.parts();
  let (mut h, mut y) = (Array::null(), Array::null());
  let mut fused = false;
  // SAFETY: the array handles are live borrows (or the NULL-ctx `empty`)
  // that the C layer only reads during the call; the out-handles are fresh
  // and owned here; `fused` outlives the call.
  check(unsafe {
    mlxrs_sys::mlxrs_fast_norm_matvec(
      &mut h.0,
      &mut y.0,
      &mut fused,
      x.0,
      delta.unwrap_or(&empty).0,
      norm_weight.0,
      eps,
      w.0,
      scales.unwrap_or(&empty).0,
      biases.unwrap_or(&empty).0,
      bits,
      group,
      swiglu,
      default_stream(),
    )
  })?;
  Ok(fused.then_some((h, y)))
}

fn probe_state(key: Key) -> Option<bool> {
  PROBED
    .lock()
    .unwrap_or_else(|p| p.into_inner())
    .get_or_insert_with(HashMap::new)
    .get(&key)
    .copied()
}

/// `(h, y)`: `h = x + delta` (`x` itself without `delta`), `n =
/// rms_norm(h, norm_weight, eps)`, `y` the projection of `n` (with
/// `swiglu`, `silu(gate) * up` of the stacked gate | up projection), as one
/// kernel giving MLX's ops' values bit for bit; `None` where it does not
/// apply (see the module docs), and the caller runs MLX's ops.
pub fn norm_matvec(
  x: &Array,
  delta: Option<&Array>,
  norm_weight: &Array,
  eps: f32,
  proj: Projection<'_>,
  swiglu: bool,
) -> Result<Option<(Array, Array)>> {
  let (w, _, _, bits, group) = proj.parts();
  let key: Key = (
    x.dtype(),
    x.shape().last().copied().unwrap_or(0),
    w.dim(0).unwrap_or(0),
    delta.is_some(),
    swiglu,
    bits,
    group,
    eps.to_bits(),
  );
  let state = probe_state(key);
  if state == Some(false) {
    return Ok(None);
  }
  let out = call(x, delta, norm_weight, eps, proj, swiglu)?;
  if let (Some(_), None) = (&out, state) {
    // First use of this shape: build and run it once on zeros.
    let zx = ops::zeros_like(x)?;
    let zd = delta.map(ops::zeros_like).transpose()?;
    let ok = match call(&zx, zd.as_ref(), norm_weight, eps, proj, swiglu)? {
      Some((h, y)) => match crate::eval(&[h, y]) {
        Ok(()) => true,
        Err(e) => {
          eprintln!(
            "mlxrs: the fused norm + matvec kernel ({:?}, width {}) failed to run ({e}); \
             using MLX's ops",
            x.dtype(),
            key.1
          );
          false
        }
      },
      None => false,
    };
    PROBED
      .lock()
      .unwrap_or_else(|p| p.into_inner())
      .get_or_insert_with(HashMap::new)
      .insert(key, ok);
    if !ok {
      return Ok(None);
    }
  }
  Ok(out)
}
