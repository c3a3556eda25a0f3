//! Decoded rows through pre-norm blocks with the residual adds moved into
//! the next norm, so that each norm, the add before it and the projection
//! after it run as one kernel on a CUDA device
//! ([`mlxrs_nn::RmsNorm::fused_with`], `mlxrs_core::fast::norm_matvec`).
//!
//! A block's output `h + r` is returned as the pair `(h, r)`; the next
//! block's first norm takes the add (the final norm's caller adds the last
//! pair). Where the kernels do not apply (CPU, Metal, several rows, biases,
//! adapters) the same function runs MLX's ops, so the CPU's token tests
//! cover the wiring. No Python twin (mlx-lm adds each residual in its
//! block).

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, KvCache, Linear, RmsNorm};

use super::attention::Attention;
use super::mlp::{FusedSwiGluMlp, SwiGluMlp};

/// The attention of a block whose decoded rows take a fused norm + q | k | v
/// projection.
pub(crate) trait RowAttention {
  /// The q | k | v projection as one layer, if it is one now.
  fn stacked_qkv(&self) -> Option<&Linear>;
  /// The attention from the stacked projection's output `qkv` of `x`.
  fn forward_projected(
    &self,
    x: &Array,
    qkv: Array,
    mask: &AttnMask,
    cache: &mut KvCache,
  ) -> Result<Array>;
  /// The attention of `x`.
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array>;
}

/// The SwiGLU MLP of a block whose decoded rows take a fused norm + gate |
/// up projection + SwiGLU.
pub(crate) trait RowMlp {
  /// The gate | up projection as one layer, if it is one now.
  fn stacked_gate_up(&self) -> Option<&Linear>;
  /// The down projection of the gated activation.
  fn down(&self, act: &Array) -> Result<Array>;
  /// The MLP of `x`.
  fn forward(&self, x: &Array) -> Result<Array>;
}

impl RowAttention for Attention {
  fn stacked_qkv(&self) -> Option<&Linear> {
    Attention::stacked_qkv(self)
  }
  fn forward_projected(
    &self,
    x: &Array,
    qkv: Array,
    mask: &AttnMask,
    cache: &mut KvCache,
  ) -> Result<Array> {
    Attention::forward_projected(self, x, qkv, mask, cache)
  }
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    Attention::forward(self, x, mask, cache)
  }
}

impl RowMlp for SwiGluMlp {
  fn stacked_gate_up(&self) -> Option<&Linear> {
    SwiGluMlp::stacked_gate_up(self)
  }
  fn down(&self, act: &Array) -> Result<Array> {
    SwiGluMlp::down(self, act)
  }
  fn forward(&self, x: &Array) -> Result<Array> {
    SwiGluMlp::forward(self, x)
  }
}

impl RowMlp for FusedSwiGluMlp {
  fn stacked_gate_up(&self) -> Option<&Linear> {
    Some(self.gate_up())
  }
  fn down(&self, act: &Array) -> Result<Array> {
    FusedSwiGluMlp::down(self, act)
  }
  fn forward(&self, x: &Array) -> Result<Array> {
    FusedSwiGluMlp::forward(self, x)
  }
}

/// `x + delta`, or `x` without a pending `delta`.
pub(crate) fn add_pending(x: &Array, delta: Option<&Array>) -> Result<Array> {
  match delta {
    Some(d) => ops::add(x, d),
    None => Ok(x.clone()),
  }
}

/// The parts of a Llama-shaped pre-norm block (`h = x + attn(norm1(x));
/// out = h + mlp(norm2(h))`), borrowed from the block.
pub(crate) struct PrenormBlock<'a, A: RowAttention = Attention, M: RowMlp = SwiGluMlp> {
  pub input_norm: &'a RmsNorm,
  pub attn: &'a A,
  pub post_norm: &'a RmsNorm,
  pub mlp: &'a M,
}

impl<A: RowAttention, M: RowMlp> PrenormBlock<'_, A, M> {
  /// The block over one decoded row `x` with the previous block's output
  /// `delta` not yet added: `(h, r)`, the residual stream after attention
  /// and the MLP's output, whose sum is the block's output. With stacked
  /// projections on a CUDA device: 8 kernels instead of 13.
  pub fn row(
    &self,
    x: &Array,
    delta: Option<&Array>,
    mask: &AttnMask,
    cache: &mut KvCache,
  ) -> Result<(Array, Array)> {
    let (h, r) = attention_row(self.input_norm, self.attn, x, delta, mask, cache)?;
    let fused_mlp = match self.mlp.stacked_gate_up() {
      Some(gu) => self.post_norm.fused_with(&h, Some(&r), gu, true)?,
      None => None,
    };
    match fused_mlp {
      Some((h, act)) => Ok((h, self.mlp.down(&act)?)),
      None => {
        let h = ops::add(&h, &r)?;
        let r = self.mlp.forward(&self.post_norm.forward(&h)?)?;
        Ok((h, r))
      }
    }
  }

  /// Compile the kernels [`PrenormBlock::row`] runs for blocks shaped like
  /// this one now (at load) rather than at the first decoded token: on a
  /// CUDA device each kernel shape is compiled at run time (~1-3 s; three:
  /// q|k|v without and with a pending residual, gate|up). Nothing happens
  /// where the kernels do not apply.
  pub fn warm(&self) -> Result<()> {
    let (Some(qkv), Some(gate_up)) = (self.attn.stacked_qkv(), self.mlp.stacked_gate_up()) else {
      return Ok(());
    };
    warm(self.input_norm, qkv, &[false, true], false)?;
    warm(self.post_norm, gate_up, &[true], true)
  }
}

/// The attention half of a pre-norm block over one decoded row `x` with
/// `delta` pending: `(h, r)` with `h = x + delta` and `r =
/// attn(norm(h))`, the add, norm and q | k | v projection as one kernel
/// where it can (for blocks whose MLP is not a [`RowMlp`], e.g. MoE).
pub(crate) fn attention_row<A: RowAttention>(
  norm: &RmsNorm,
  attn: &A,
  x: &Array,
  delta: Option<&Array>,
  mask: &AttnMask,
  cache: &mut KvCache,
) -> Result<(Array, Array)> {
  let fused = match attn.stacked_qkv() {
    Some(qkv) => norm.fused_with(x, delta, qkv, false)?,
    None => None,
  };
  match fused {
    Some((h, y)) => {
      let r = attn.forward_projected(&h, y, mask, cache)?;
      Ok((h, r))
    }
    None => {
      let h = add_pending(x, delta)?;
      let r = attn.forward(&norm.forward(&h)?, mask, cache)?;
      Ok((h, r))
    }
  }
}

/// The norms and attention of a pre-norm block whose MLP is no single
/// projection (an MoE), borrowed from the block: decoded rows take the
/// fused add + norm + q | k | v ([`attention_row`]) and leave the MLP's
/// output to the next block's norm.
pub(crate) struct PrenormAttention<'a, A: RowAttention = Attention> {
  pub input_norm: &'a RmsNorm,
  pub attn: &'a A,
  pub post_norm: &'a RmsNorm,
}

impl<A: RowAttention> PrenormAttention<'_, A> {
  /// The block over one decoded row `x` with `delta` pending, its MLP
  /// `mlp`: `(h, r)`, the residual stream after attention and the MLP's
  /// output, whose sum is the block's output.
  pub fn row(
    &self,
    x: &Array,
    delta: Option<&Array>,
    mask: &AttnMask,
    cache: &mut KvCache,
    mlp: impl FnOnce(&Array) -> Result<Array>,
  ) -> Result<(Array, Array)> {
    let (h, r) = attention_row(self.input_norm, self.attn, x, delta, mask, cache)?;
    let h = ops::add(&h, &r)?;
    let r = mlp(&self.post_norm.forward(&h)?)?;
    Ok((h, r))
  }

  /// Compile the q | k | v kernels [`PrenormAttention::row`] runs now (at
  /// load) rather than at the first decoded token.
  pub fn warm(&self) -> Result<()> {
    match self.attn.stacked_qkv() {
      Some(qkv) => warm(self.input_norm, qkv, &[false, true], false),
      None => Ok(()),
    }
  }
}

/// Compile now the kernels `norm.fused_with(x, delta, proj, swiglu)` runs
/// for one row, without (`false`) and with (`true`) a pending `delta` as
/// listed in `pending` (see [`PrenormBlock::warm`]). Nothing happens where
/// the kernels do not apply.
pub(crate) fn warm(norm: &RmsNorm, proj: &Linear, pending: &[bool], swiglu: bool) -> Result<()> {
  let x = ops::zeros(&[1, norm.dims], norm.weight.dtype())?;
  for &p in pending {
    norm.fused_with(&x, p.then_some(&x), proj, swiglu)?;
  }
  Ok(())
}
