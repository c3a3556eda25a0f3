//! The gated MLPs mlx-lm architectures share: SwiGLU (`MLP` of llama.py,
//! stablelm.py, cohere.py, ...: `down(silu(gate(x)) * up(x))`) and the
//! Gemma family's GELU-gated one (`down(gelu(gate(x)) * up(x))`).

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{Linear, StackedLinear, gelu, gelu_approx, module, swiglu};

use super::base::{split_at, split_halves};

/// The gate and up halves of a stacked gate | up output `y`, cut for the
/// down projection `down`: [`split_halves`] (one row: each half with its own
/// row stride, which MLX's dense matmul needs to take the gated product
/// without a copy), or a plain cut where `down` is quantized without an
/// adapter (MLX's quantized matmul takes the row stride as is, and the cut
/// saves `split_halves`' reshape node).
fn gate_up_halves(y: &Array, down: &Linear) -> Result<[Array; 2]> {
  if down.quant.is_some() && down.adapter.is_none() {
    let half = y.shape().last().copied().unwrap_or(0) / 2;
    split_at(y, &[half], -1)
  } else {
    split_halves(y)
  }
}

/// `mlp` of a Llama-shaped block: `gate_proj`, `up_proj`, `down_proj`.
pub(crate) struct SwiGluMlp {
  gate_proj: Linear,
  down_proj: Linear,
  up_proj: Linear,
  /// gate | up as one projection (see [`SwiGluMlp::fuse_projections`]).
  gate_up: StackedLinear,
}
module!(SwiGluMlp {
  gate_proj,
  down_proj,
  up_proj,
  gate_up
});

impl SwiGluMlp {
  /// An unloaded MLP `hidden -> inter -> hidden`.
  pub fn new(hidden: i32, inter: i32, bias: bool) -> SwiGluMlp {
    SwiGluMlp {
      gate_proj: Linear::new(hidden, inter, bias),
      down_proj: Linear::new(inter, hidden, bias),
      up_proj: Linear::new(hidden, inter, bias),
      gate_up: StackedLinear::default(),
    }
  }

  /// Stack gate and up into one projection for inference (one matmul per
  /// step instead of two; [`Linear::stack_outputs`]), as
  /// [`super::attention::Attention::fuse_projections`] does for q/k/v, and
  /// keep the weights' transposes ready for a GPU
  /// ([`Linear::keep_transposed`]).
  pub fn fuse_projections(&mut self) -> Result<()> {
    self
      .gate_up
      .stack(&mut [&mut self.gate_proj, &mut self.up_proj])?;
    if self.gate_up.get().is_none() {
      self.gate_proj.keep_transposed()?;
      self.up_proj.keep_transposed()?;
    }
    self.down_proj.keep_transposed()
  }

  /// The stacked gate | up projection, while stacked
  /// ([`SwiGluMlp::fuse_projections`]).
  pub fn stacked_gate_up(&self) -> Option<&Linear> {
    self.gate_up.get()
  }

  /// The down projection of the gated activation `silu(gate) * up`
  /// (computed by the caller, e.g. fused with the norm and gate | up).
  pub fn down(&self, act: &Array) -> Result<Array> {
    self.down_proj.forward(act)
  }

  /// The MLP of `x`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    if let Some(gu) = self.gate_up.get() {
      let [gate, up] = gate_up_halves(&gu.forward(x)?, &self.down_proj)?;
      return self.down_proj.forward(&swiglu(&gate, &up)?);
    }
    self.down_proj.forward(&swiglu(
      &self.gate_proj.forward(x)?,
      &self.up_proj.forward(x)?,
    )?)
  }
}

/// The same MLP with gate and up fused (`gate_up_proj`, split gate | up:
/// GLM-4, Phi-3).
pub(crate) struct FusedSwiGluMlp {
  gate_up_proj: Linear,
  down_proj: Linear,
}
module!(FusedSwiGluMlp {
  gate_up_proj,
  down_proj
});

impl FusedSwiGluMlp {
  /// An unloaded MLP `hidden -> 2 * inter | inter -> hidden`, bias-free.
  pub fn new(hidden: i32, inter: i32) -> FusedSwiGluMlp {
    FusedSwiGluMlp {
      gate_up_proj: Linear::new(hidden, 2 * inter, false),
      down_proj: Linear::new(inter, hidden, false),
    }
  }

  /// Keep the projections' transposes ready for a GPU
  /// ([`Linear::keep_transposed`]; gate | up is one layer already).
  pub fn fuse_projections(&mut self) -> Result<()> {
    self.gate_up_proj.keep_transposed()?;
    self.down_proj.keep_transposed()
  }

  /// The gate | up projection.
  pub fn gate_up(&self) -> &Linear {
    &self.gate_up_proj
  }

  /// The down projection of the gated activation `silu(gate) * up`
  /// (computed by the caller, e.g. fused with the norm and gate | up).
  pub fn down(&self, act: &Array) -> Result<Array> {
    self.down_proj.forward(act)
  }

  /// The MLP of `x`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let [gate, up] = gate_up_halves(&self.gate_up_proj.forward(x)?, &self.down_proj)?;
    self.down_proj.forward(&swiglu(&gate, &up)?)
  }
}

/// The GELU-gated MLP of the Gemma family (gemma.py, gemma2.py,
/// gemma3_text.py): `down(gelu(gate(x)) * up(x))`, bias-free, with the tanh
/// approximation of GELU (`nn.gelu_approx`) or the exact one (`nn.gelu`).
pub(crate) struct GeluMlp {
  gate_proj: Linear,
  down_proj: Linear,
  up_proj: Linear,
  tanh: bool,
  /// gate | up as one projection (see [`GeluMlp::fuse_projections`]).
  gate_up: StackedLinear,
}
module!(GeluMlp {
  gate_proj,
  down_proj,
  up_proj,
  gate_up
});

impl GeluMlp {
  /// An unloaded MLP `hidden -> inter -> hidden`; `tanh` picks the GELU.
  pub fn new(hidden: i32, inter: i32, tanh: bool) -> GeluMlp {
    GeluMlp {
      gate_proj: Linear::new(hidden, inter, false),
      down_proj: Linear::new(inter, hidden, false),
      up_proj: Linear::new(hidden, inter, false),
      tanh,
      gate_up: StackedLinear::default(),
    }
  }

  /// Stack gate and up into one projection for inference, as
  /// [`SwiGluMlp::fuse_projections`].
  pub fn fuse_projections(&mut self) -> Result<()> {
    self
      .gate_up
      .stack(&mut [&mut self.gate_proj, &mut self.up_proj])?;
    if self.gate_up.get().is_none() {
      self.gate_proj.keep_transposed()?;
      self.up_proj.keep_transposed()?;
    }
    self.down_proj.keep_transposed()
  }

  /// The stacked gate | up projection, while stacked
  /// ([`GeluMlp::fuse_projections`]).
  pub fn stacked_gate_up(&self) -> Option<&Linear> {
    self.gate_up.get()
  }

  /// The MLP from the stacked gate | up projection's output `y` (computed
  /// by the caller, e.g. fused with the norm before it).
  pub fn forward_projected(&self, y: &Array) -> Result<Array> {
    let [g, u] = gate_up_halves(y, &self.down_proj)?;
    self.gated(&g, &u)
  }

  /// `down(gelu(g) * u)`.
  fn gated(&self, g: &Array, u: &Array) -> Result<Array> {
    let g = if self.tanh { gelu_approx(g)? } else { gelu(g)? };
    self.down_proj.forward(&ops::multiply(&g, u)?)
  }

  /// The MLP of `x`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    match self.gate_up.get() {
      Some(gu) => self.forward_projected(&gu.forward(x)?),
      None => self.gated(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?),
    }
  }
}
