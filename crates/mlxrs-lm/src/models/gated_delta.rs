//! The gated delta rule (mlx-lm's `models/gated_delta.py`), as MLX ops: the
//! linear-attention recurrence of Qwen3-Next / Qwen3.5's `GatedDeltaNet`.
//! Per head, with state `S` `[Dv, Dk]`, decay `g`, write strength `beta`:
//! `S = g * S; S += k (x) ((v - S k) * beta); y = S q`. mlx-lm runs a Metal
//! kernel for this on the GPU and the same per-step ops
//! (`gated_delta_ops`) elsewhere; this is the latter.

use mlxrs_core::{Array, Dtype, Result, ops};

use super::ssm::slice_axis;

/// python `normalize_qk`: L2-normalise q and k over the head dim (eps
/// added to the sum of squares) and fold the `inv_scale^2` readout scale
/// into q, `inv_scale` into k.
pub(crate) fn normalize_qk(
  q: &Array,
  k: &Array,
  inv_scale: f32,
  eps: f32,
) -> Result<(Array, Array)> {
  let rms_eps = eps * inv_scale * inv_scale;
  let q = (mlxrs_core::fast::rms_norm(q, None, rms_eps)? * (inv_scale * inv_scale))?;
  let k = (mlxrs_core::fast::rms_norm(k, None, rms_eps)? * inv_scale)?;
  Ok((q, k))
}

/// python `compute_g`: `exp(-exp(A_log) * softplus(a + dt_bias))` (float32).
pub(crate) fn compute_g(a_log: &Array, a: &Array, dt_bias: &Array) -> Result<Array> {
  let decay = ops::exp(&ops::astype(a_log, Dtype::Float32)?)?;
  let sp = mlxrs_nn::softplus(&(a + dt_bias)?)?;
  ops::exp(&ops::negative(&(&decay * &sp)?)?)
}

/// python `gated_delta_ops` (no mask): `q`, `k` `[B, T, Hk, Dk]`, `v` `[B,
/// T, Hv, Dv]`, `g` `[B, T, Hv]` (scalar gate per head) or `[B, T, Hv, Dk]`
/// (per key channel, Kimi's KDA), `beta` `[B, T, Hv]`, `state` `[B, Hv, Dv,
/// Dk]`.
/// Returns `y` `[B, T, Hv, Dv]` (q's dtype) and the new state.
pub(crate) fn gated_delta_ops(
  q: &Array,
  k: &Array,
  v: &Array,
  g: &Array,
  beta: &Array,
  state: Array,
) -> Result<(Array, Array)> {
  let (hk, hv) = (q.dim(2).unwrap_or(1), v.dim(2).unwrap_or(1));
  let (q, k) = if hv / hk > 1 {
    (
      ops::repeat_axis(q, hv / hk, -2)?,
      ops::repeat_axis(k, hv / hk, -2)?,
    )
  } else {
    (q.clone(), k.clone())
  };
  let t_len = q.dim(1).unwrap_or(0);
  let at =
    |a: &Array, t: i32| -> Result<Array> { ops::squeeze_axis(&slice_axis(a, 1, t, t + 1)?, 1) };
  let mut state = state;
  let mut ys = Vec::with_capacity(t_len as usize);
  for t in 0..t_len {
    let (qt, kt, vt, gt, bt) = (at(&q, t)?, at(&k, t)?, at(v, t)?, at(g, t)?, at(beta, t)?);
    let decay = if gt.ndim() == 2 {
      ops::expand_dims_axes(&gt, &[-1, -2])?
    } else {
      gt.expand_dims(-2)?
    };
    state = (&state * &decay)?;
    let k4 = kt.expand_dims(-2)?; // [B, H, 1, Dk]
    let kv_mem = ops::sum_axis(&(&state * &k4)?, -1, false)?; // [B, H, Dv]
    let delta = ((&vt - &kv_mem)? * &bt.expand_dims(-1)?)?;
    state = (&state + &(&k4 * &delta.expand_dims(-1)?)?)?;
    let y = ops::sum_axis(&(&state * &qt.expand_dims(-2)?)?, -1, false)?;
    ys.push(ops::astype(&y, q.dtype())?);
  }
  Ok((ops::stack_axis(&ys, 1)?, state))
}

/// python `gated_delta_update` (no mask, no lower bound): `beta =
/// sigmoid(b)`, `g = compute_g(A_log, a, dt_bias)`, a zero float32 state
/// when `None`, then [`gated_delta_ops`]. q and k come normalised by
/// [`normalize_qk`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_delta_update(
  q: &Array,
  k: &Array,
  v: &Array,
  a: &Array,
  b: &Array,
  a_log: &Array,
  dt_bias: &Array,
  state: Option<Array>,
) -> Result<(Array, Array)> {
  let beta = ops::sigmoid(b)?;
  let g = compute_g(a_log, a, dt_bias)?;
  let state = match state {
    Some(s) => s,
    None => {
      let (qs, vs) = (q.shape(), v.shape());
      ops::zeros(&[qs[0], vs[2], vs[3], qs[3]], Dtype::Float32)?
    }
  };
  gated_delta_ops(q, k, v, &g, &beta, state)
}
