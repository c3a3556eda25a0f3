//! The gated SwiGLU MLP most mlx-lm architectures share (`MLP` of
//! llama.py, stablelm.py, cohere.py, ...): `down(silu(gate(x)) * up(x))`.

use mlxrs_core::{Array, Result};
use mlxrs_nn::{Linear, module, swiglu};

/// `mlp` of a Llama-shaped block: `gate_proj`, `up_proj`, `down_proj`.
pub(crate) struct SwiGluMlp {
  gate_proj: Linear,
  down_proj: Linear,
  up_proj: Linear,
}
module!(SwiGluMlp {
  gate_proj,
  down_proj,
  up_proj
});

impl SwiGluMlp {
  /// An unloaded MLP `hidden -> inter -> hidden`.
  pub fn new(hidden: i32, inter: i32, bias: bool) -> SwiGluMlp {
    SwiGluMlp {
      gate_proj: Linear::new(hidden, inter, bias),
      down_proj: Linear::new(inter, hidden, bias),
      up_proj: Linear::new(hidden, inter, bias),
    }
  }

  /// The MLP of `x`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
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

  /// The MLP of `x`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let gu = self.gate_up_proj.forward(x)?;
    let half = gu.shape().last().copied().unwrap_or(0) / 2;
    let gate = super::base::last_axis(&gu, 0, half)?;
    let up = super::base::last_axis(&gu, half, 2 * half)?;
    self.down_proj.forward(&swiglu(&gate, &up)?)
  }
}
