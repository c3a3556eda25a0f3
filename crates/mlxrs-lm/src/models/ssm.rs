//! The recurrent pieces of state-space models, as MLX ops (mlx-lm's
//! `models/ssm.py` and the scan inside `models/mamba.py`):
//!
//! - [`causal_conv`]: a depthwise causal `Conv1d` over `[B, T, C]` that
//!   continues from (and returns) the last `kernel - 1` inputs, the
//!   "conv state" slot of an `ArraysCache`;
//! - [`selective_scan`]: Mamba-1's selective scan, step by step as
//!   `MambaBlock.ssm_step`;
//! - [`ssd`]: Mamba-2's chunked SSD scan (python `ssm_attn`, chunks of 256
//!   positions), which every Mamba-2-style mixer (mamba2, nemotron_h,
//!   falcon_h1, granitemoehybrid) shares.
//!
//! On a Metal GPU mlx-lm decodes single tokens of Mamba-2 with a custom
//! kernel; the chunked scan computes the same recurrence and is what mlx-lm
//! itself runs on the CPU.

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::Conv1d;

/// `a[..., start:stop, ...]` on `axis`.
pub(crate) fn slice_axis(a: &Array, axis: usize, start: i32, stop: i32) -> Result<Array> {
  let shape = a.shape();
  let mut st = vec![0; shape.len()];
  let mut sp = shape.clone();
  st[axis] = start;
  sp[axis] = stop;
  ops::slice(a, &st, &sp, &vec![1; shape.len()])
}

/// Depthwise causal convolution with carried state (python
/// `mx.concatenate([conv_state, x], 1)` or `mx.pad(x, K - 1)`, then the
/// `Conv1d`): `x` `[B, T, C]`, `state` the previous `[B, K - 1, C]` inputs
/// (zeros when `None`). Returns the convolution (before any activation)
/// `[B, T, C]` and the new state.
pub(crate) fn causal_conv(
  conv: &Conv1d,
  x: &Array,
  state: Option<&Array>,
) -> Result<(Array, Array)> {
  let k = conv.kernel_size;
  let s = x.shape();
  let full = match state {
    Some(st) => {
      let ss = st.shape();
      if ss.len() != 3 || ss[0] != s[0] || ss[1] != k - 1 || ss[2] != s[2] {
        return Err(Error::InvalidArgument(format!(
          "conv state {ss:?} does not fit input {s:?} (kernel {k})"
        )));
      }
      ops::concatenate_axis(&[st.clone(), x.clone()], 1)?
    }
    None => ops::pad_pairs(x, &[(0, 0), (k - 1, 0), (0, 0)], 0.0, "constant")?,
  };
  let t = full.dim(1).unwrap_or(0);
  let new_state = slice_axis(&full, 1, t - (k - 1), t)?;
  Ok((conv.forward(&full)?, new_state))
}

/// Mamba-1's selective scan (python `MambaBlock.ssm_step` over every
/// position): `x` `[B, T, I]` (after the convolution and SiLU), `delta`
/// `[B, T, I]` (after `softplus(dt_proj(.))`), `b`, `c` `[B, T, N]`, `a`
/// `[I, N]` (`-exp(A_log)`), `d` `[I]`, `state` `[B, I, N]` or `None`.
/// Returns `y` `[B, T, I]` and the last state.
pub(crate) fn selective_scan(
  x: &Array,
  delta: &Array,
  b: &Array,
  c: &Array,
  a: &Array,
  d: &Array,
  state: Option<Array>,
) -> Result<(Array, Array)> {
  let t_len = x.dim(1).unwrap_or(0);
  let mut state = state;
  let mut ys = Vec::with_capacity(t_len as usize);
  let at =
    |v: &Array, t: i32| -> Result<Array> { ops::squeeze_axis(&slice_axis(v, 1, t, t + 1)?, 1) };
  for t in 0..t_len {
    let (xt, dt, bt, ct) = (at(x, t)?, at(delta, t)?, at(b, t)?, at(c, t)?);
    let mut new = ((&dt * &xt)?.expand_dims(-1)? * &bt.expand_dims(1)?)?;
    if let Some(s) = &state {
      let decay = ops::exp(&(&dt.expand_dims(-1)? * a)?)?;
      new = (new + &(s * &decay)?)?;
    }
    let y = ops::squeeze_axis(&new.matmul(&ct.expand_dims(-1)?)?, 2)?;
    ys.push((y + &(d * &xt)?)?);
    state = Some(new);
  }
  let state =
    state.ok_or_else(|| Error::InvalidArgument("selective scan over 0 positions".into()))?;
  Ok((ops::stack_axis(&ys, 1)?, state))
}

/// python `compute_dt`: `clip(softplus(dt + dt_bias), lo, hi)` in float32.
pub(crate) fn compute_dt(dt: &Array, dt_bias: &Array, limit: (f32, f32)) -> Result<Array> {
  let dt = (ops::astype(dt, Dtype::Float32)? + dt_bias)?;
  let dt = mlxrs_nn::softplus(&dt)?;
  ops::clip(
    &dt,
    Some(&Array::scalar(limit.0)),
    Some(&Array::scalar(limit.1)),
  )
}

/// python `segsum(x)`: `[..., l]` -> `[..., l, l]` of `sum(x[j+1..=i])`
/// below the diagonal (0 on it, -inf-free since no mask is used).
fn segsum(x: &Array) -> Result<Array> {
  let l = x.dim(-1).unwrap_or(0);
  let x = ops::repeat_axis(&x.expand_dims(-1)?, l, -1)?;
  let x = ops::tril(&x, -1)?;
  ops::cumsum_axis(&x, -2, false, true, None)
}

/// Positions per chunk of [`ssd`] (python `ssm_attn(step=256)`).
pub(crate) const SSD_CHUNK: i32 = 256;

/// Mamba-2's SSD scan (python `ssm_attn` without mask / lengths): `x`
/// `[B, L, H, Dh]`, `a_log` `[H]`, `b`, `c` `[B, L, G, N]`, `d` `[H]`, `dt`
/// `[B, L, H]` (before `compute_dt`), `dt_bias` `[H]`, `state` `[B, H, Dh,
/// N]` or `None`. Returns `y` `[B, L, H, Dh]` (x's dtype) and the new state.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ssd(
  x: &Array,
  a_log: &Array,
  b: &Array,
  c: &Array,
  d: &Array,
  dt: &Array,
  dt_bias: &Array,
  state: Option<Array>,
  time_step_limit: (f32, f32),
) -> Result<(Array, Array)> {
  let xs = x.shape();
  let (bsz, l, h, dh) = (xs[0], xs[1], xs[2], xs[3]);
  let bs = b.shape();
  let (g, n) = (bs[2], bs[3]);
  if g <= 0 || h % g != 0 {
    return Err(Error::InvalidArgument(format!(
      "ssd: {h} heads are not a multiple of {g} groups"
    )));
  }
  let repeats = h / g;
  let dt = compute_dt(dt, dt_bias, time_step_limit)?;
  let a = ops::negative(&ops::exp(&ops::astype(a_log, dt.dtype())?)?)?;
  let dt_a = (&dt * &a.reshape(&[1, 1, -1])?)?;
  let dtx = (&dt.reshape(&[bsz, l, h, 1])? * x)?;
  let mut state = state;
  let mut ys = Vec::new();
  let mut i = 0;
  while i < l {
    let e = (i + SSD_CHUNK).min(l);
    let s = e - i;
    let dtx_c = slice_axis(&dtx, 1, i, e)?;
    let dta_c = slice_axis(&dt_a, 1, i, e)?;
    let b_c = ops::transpose_axes(&slice_axis(b, 1, i, e)?, &[0, 2, 3, 1])?; // [B, G, N, s]
    let c_c = slice_axis(c, 1, i, e)?; // [B, s, G, N]
    let cb = c_c.swapaxes(1, 2)?.matmul(&b_c)?; // [B, G, s, s]
    let cb = ops::repeat_axis(&cb, repeats, 1)?; // [B, H, s, s]
    let decay = ops::exp(&segsum(&dta_c.swapaxes(1, 2)?)?)?; // [B, H, s, s]
    let att = ops::tril(&(&cb * &decay)?, 0)?;
    let mut y = att.matmul(&dtx_c.swapaxes(1, 2)?)?.swapaxes(1, 2)?; // [B, s, H, Dh]
    let last = slice_axis(&decay, 2, s - 1, s)?; // [B, H, 1, s]
    let last = ops::transpose_axes(&last, &[0, 3, 1, 2])?; // [B, s, H, 1]
    let bh = ops::repeat_axis(&b_c, repeats, 1)?.swapaxes(2, 3)?; // [B, H, s, N]
    let dtxdecay = (&dtx_c * &last)?.swapaxes(1, 2)?.swapaxes(2, 3)?; // [B, H, Dh, s]
    let mut next = dtxdecay.matmul(&bh)?; // [B, H, Dh, N]
    if let Some(prev) = &state {
      let cum = ops::exp(&ops::cumsum_axis(&dta_c, -2, false, true, None)?)?; // [B, s, H]
      let cum_last = slice_axis(&cum, 1, s - 1, s)?.reshape(&[bsz, h, 1, 1])?;
      next = (next + &(&cum_last * prev)?)?;
      let c6 = c_c.reshape(&[bsz, s, g, 1, n, 1])?;
      let y_prev = prev.reshape(&[bsz, 1, g, repeats, dh, n])?.matmul(&c6)?;
      let y_prev = ops::flatten(&ops::squeeze_axis(&y_prev, -1)?, 2, 3)?; // [B, s, H, Dh]
      y = (y + &(&cum.expand_dims(-1)? * &y_prev)?)?;
    }
    ys.push(ops::astype(&y, x.dtype())?);
    state = Some(next);
    i = e;
  }
  let state = state.ok_or_else(|| Error::InvalidArgument("ssd over 0 positions".into()))?;
  let y = (ops::concatenate_axis(&ys, 1)? + &(x * &d.reshape(&[1, 1, h, 1])?)?)?;
  Ok((y, state))
}
