//! The residual add fused into the RMSNorm after it.
//!
//! A pre-norm decoder layer adds each branch's output to the residual stream
//! and normalizes the sum for the next branch: python mlx-lm writes
//! `h = x + r; y = mx.fast.rms_norm(h, w, eps)`, two kernels. [`add_rms_norm`]
//! returns the same `(h, y)` and, on MLX's CUDA backend, computes them with
//! one custom kernel that reproduces MLX's `add` and `rms_norm` kernels bit
//! for bit (C: `mlxrs_fast_add_rms_norm`). A decode step of a small model is
//! bound by the host's cost per kernel, so a Llama layer's 13 kernels become
//! 11. Elsewhere (CPU, Metal, inside a transformation, shapes the kernel does
//! not take, `MLXRS_FUSE_ADD_NORM=0`) it is those two MLX ops.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::check;
use crate::stream::default_stream;
use crate::{Array, Dtype, Result, ops};

/// Per kernel configuration (dtype, width, eps): whether the fused kernel
/// compiled and ran. Its first use evaluates it once on a zero row, so a
/// device whose runtime compiler cannot build it falls back to MLX's ops
/// instead of failing every later evaluation.
static PROBED: Mutex<Option<HashMap<(Dtype, i32, u32), bool>>> = Mutex::new(None);

fn call(
  x: &Array,
  delta: &Array,
  weight: &Array,
  eps: f32,
  allow: bool,
) -> Result<(Array, Array, bool)> {
  let (mut h, mut y) = (Array::null(), Array::null());
  let mut fused = false;
  // SAFETY: array handles are live borrows the C layer only reads during the
  // call; the out-handles are fresh and owned here; `fused` outlives the call.
  check(unsafe {
    mlxrs_sys::mlxrs_fast_add_rms_norm(
      &mut h.0,
      &mut y.0,
      x.0,
      delta.0,
      weight.0,
      eps,
      allow,
      &mut fused,
      default_stream(),
    )
  })?;
  Ok((h, y, fused))
}

fn probed(key: (Dtype, i32, u32)) -> Option<bool> {
  PROBED
    .lock()
    .unwrap_or_else(|p| p.into_inner())
    .get_or_insert_with(HashMap::new)
    .get(&key)
    .copied()
}

/// Whether the fused kernel of this configuration runs here: evaluated
/// once on a zero row the first time the C layer chooses it.
fn probe(x: &Array, weight: &Array, eps: f32, key: (Dtype, i32, u32)) -> Result<bool> {
  let row = ops::zeros(&[1, key.1], x.dtype())?;
  let (h, y, _) = call(&row, &row, weight, eps, true)?;
  let ok = match crate::eval(&[h, y]) {
    Ok(()) => true,
    Err(e) => {
      eprintln!(
        "mlxrs: the fused add + RMSNorm kernel ({:?}, width {}) failed to run ({e}); \
         using MLX's add and rms_norm",
        key.0, key.1
      );
      false
    }
  };
  PROBED
    .lock()
    .unwrap_or_else(|p| p.into_inner())
    .get_or_insert_with(HashMap::new)
    .insert(key, ok);
  Ok(ok)
}

fn add_rms_norm_impl(
  x: &Array,
  delta: &Array,
  weight: &Array,
  eps: f32,
) -> Result<(Array, Array, bool)> {
  let key = (
    x.dtype(),
    x.shape().last().copied().unwrap_or(0),
    eps.to_bits(),
  );
  let state = probed(key);
  if state == Some(false) {
    return call(x, delta, weight, eps, false);
  }
  let out = call(x, delta, weight, eps, true)?;
  if out.2 && state.is_none() && !probe(x, weight, eps, key)? {
    return call(x, delta, weight, eps, false);
  }
  Ok(out)
}

/// `(h, y)` with `h = x + delta` and `y = rms_norm(h, weight, eps)`: python
/// `h = x + delta; y = mx.fast.rms_norm(h, weight, eps)`, the same values,
/// as one kernel on a CUDA device (see the module docs).
pub fn add_rms_norm(x: &Array, delta: &Array, weight: &Array, eps: f32) -> Result<(Array, Array)> {
  let (h, y, _) = add_rms_norm_impl(x, delta, weight, eps)?;
  Ok((h, y))
}

/// Whether [`add_rms_norm`] takes the fused kernel for these arrays on the
/// default stream (for tests and timing).
pub fn add_rms_norm_is_fused(x: &Array, delta: &Array, weight: &Array, eps: f32) -> Result<bool> {
  Ok(add_rms_norm_impl(x, delta, weight, eps)?.2)
}
