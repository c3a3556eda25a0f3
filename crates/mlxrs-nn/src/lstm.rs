//! Long short-term memory over `[B, T, in]` sequences, one or both
//! directions (python `torch.nn.LSTM(input, hidden, batch_first=True,
//! bidirectional=...)`; mlx-audio's Kokoro `LSTM` with `Wx_forward`,
//! `Wh_forward`, `bias_ih_forward`, `bias_hh_forward` and the `_backward`
//! twins). Gates are in torch order `i, f, g, o`.

use mlxrs_core::{Array, Error, Result, ops};

/// The weights of one direction: `wx` `[4h, in]`, `wh` `[4h, h]`, and the
/// summed bias `b_ih + b_hh` `[4h]`.
pub struct LstmDirection {
  /// Input projection `[4h, in]` (torch `weight_ih_l0`).
  pub wx: Array,
  /// Recurrent projection `[4h, h]` (torch `weight_hh_l0`).
  pub wh: Array,
  /// `bias_ih + bias_hh` `[4h]`, if the layer has biases.
  pub bias: Option<Array>,
}

impl LstmDirection {
  /// Checked constructor: `wx` `[4h, in]`, `wh` `[4h, h]`, biases `[4h]`.
  pub fn new(wx: Array, wh: Array, b_ih: Option<Array>, b_hh: Option<Array>) -> Result<Self> {
    let (sx, sh) = (wx.shape(), wh.shape());
    if sx.len() != 2 || sh.len() != 2 || sh[0] != 4 * sh[1] || sx[0] != sh[0] {
      return Err(Error::InvalidArgument(format!(
        "LSTM: expected Wx [4h, in] and Wh [4h, h], got {sx:?} and {sh:?}"
      )));
    }
    for b in [&b_ih, &b_hh].into_iter().flatten() {
      if b.shape() != [sh[0]] {
        return Err(Error::InvalidArgument(format!(
          "LSTM: bias has shape {:?}, expected [{}]",
          b.shape(),
          sh[0]
        )));
      }
    }
    let bias = match (b_ih, b_hh) {
      (Some(a), Some(b)) => Some(ops::add(&a, &b)?),
      (Some(a), None) | (None, Some(a)) => Some(a),
      (None, None) => None,
    };
    Ok(LstmDirection { wx, wh, bias })
  }

  /// Hidden size `h`.
  pub fn hidden(&self) -> i32 {
    self.wh.shape()[1]
  }

  /// Runs over `x` `[B, T, in]` forwards (or backwards when `reverse`),
  /// from zero state; returns the hidden states `[B, T, h]` in time order.
  pub fn run(&self, x: &Array, reverse: bool) -> Result<Array> {
    let s = x.shape();
    if s.len() != 3 || s[2] != self.wx.shape()[1] {
      return Err(Error::InvalidArgument(format!(
        "LSTM: expected input [B, T, {}], got {s:?}",
        self.wx.shape()[1]
      )));
    }
    let (b, t) = (s[0], s[1]);
    let h_dim = self.hidden();
    let wx_t = ops::transpose(&self.wx)?;
    let mut xp = ops::matmul(x, &wx_t)?;
    if let Some(bias) = &self.bias {
      xp = ops::add(&xp, bias)?;
    }
    let mut h = ops::zeros(&[b, h_dim], x.dtype())?;
    let mut c = ops::zeros(&[b, h_dim], x.dtype())?;
    let mut outs: Vec<Array> = Vec::with_capacity(t as usize);
    for step in 0..t {
      let idx = if reverse { t - 1 - step } else { step };
      let xt = ops::slice(&xp, &[0, idx, 0], &[b, idx + 1, 4 * h_dim], &[1, 1, 1])?;
      let xt = ops::reshape(&xt, &[b, 4 * h_dim])?;
      // One row per step at batch 1: `matmul_t`'s gemv on the CPU.
      let g = ops::add(&xt, &ops::matmul_t(&h, &self.wh)?)?;
      let parts = ops::split(&g, 4, -1)?;
      let i = ops::sigmoid(&parts[0])?;
      let f = ops::sigmoid(&parts[1])?;
      let gg = ops::tanh(&parts[2])?;
      let o = ops::sigmoid(&parts[3])?;
      c = ops::add(&ops::multiply(&f, &c)?, &ops::multiply(&i, &gg)?)?;
      h = ops::multiply(&o, &ops::tanh(&c)?)?;
      outs.push(h.clone());
    }
    if reverse {
      outs.reverse();
    }
    ops::stack_axis(&outs, 1)
  }
}

/// A one- or two-direction LSTM layer (python `torch.nn.LSTM(...,
/// batch_first=True, bidirectional=backward.is_some())`).
pub struct Lstm {
  /// The forward direction.
  pub forward: LstmDirection,
  /// The backward direction (bidirectional layers).
  pub backward: Option<LstmDirection>,
}

impl Lstm {
  /// `[B, T, in]` -> `[B, T, h]` (or `[B, T, 2h]`: forward then backward
  /// states concatenated, as torch does).
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let f = self.forward.run(x, false)?;
    match &self.backward {
      None => Ok(f),
      Some(bw) => {
        let b = bw.run(x, true)?;
        ops::concatenate_axis(&[f, b], -1)
      }
    }
  }
}
