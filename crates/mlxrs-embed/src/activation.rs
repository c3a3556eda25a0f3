//! Activation functions by their transformers / torch names (`hidden_act`,
//! `hidden_activation`, a Dense module's `activation_function`), applied
//! with `mlxrs-nn`'s activations (python `mlx.nn.gelu`, `gelu_approx`,
//! `silu`, ...) or, on the CPU, with the vectorized host kernels of
//! [`crate::host`].

use mlxrs_core::{Array, Dtype};

use crate::error::Result;
use crate::host;

/// An element-wise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
  /// Exact GELU, `x * Φ(x)` (transformers `"gelu"`, torch `nn.GELU()`).
  Gelu,
  /// Tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`,
  /// `"gelu_fast"`).
  GeluTanh,
  /// `x * sigmoid(x)` (`"silu"`, `"swish"`, nomic's `"swiglu"` gate).
  Silu,
  /// `max(x, 0)` (`"relu"`).
  Relu,
  /// `tanh(x)`.
  Tanh,
  /// `sigmoid(x)`.
  Sigmoid,
  /// `x`.
  Identity,
}

impl Activation {
  /// Parse a transformers activation name.
  pub fn parse(name: &str) -> Option<Activation> {
    Some(match name {
      "gelu" => Activation::Gelu,
      "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
      "silu" | "swish" | "swiglu" => Activation::Silu,
      "relu" => Activation::Relu,
      "tanh" => Activation::Tanh,
      "sigmoid" => Activation::Sigmoid,
      "linear" | "identity" => Activation::Identity,
      _ => return None,
    })
  }

  /// Apply element-wise. On the CPU, float32 GELU / SiLU / tanh / sigmoid
  /// run as vectorized host kernels ([`crate::host`]); elsewhere they are
  /// `mlxrs-nn`'s MLX-op activations.
  pub fn forward(self, x: &Array) -> Result<Array> {
    if on_cpu() && x.dtype() == Dtype::Float32 {
      match self {
        Activation::Gelu => return host::gelu(x),
        Activation::GeluTanh => return host::gelu_tanh(x),
        Activation::Silu => return host::silu(x),
        Activation::Tanh => return host::tanh(x),
        Activation::Sigmoid => return host::sigmoid(x),
        Activation::Relu | Activation::Identity => {}
      }
    }
    Ok(match self {
      Activation::Gelu => mlxrs_nn::gelu(x)?,
      Activation::GeluTanh => mlxrs_nn::gelu_approx(x)?,
      Activation::Silu => mlxrs_nn::silu(x)?,
      Activation::Relu => mlxrs_nn::relu(x)?,
      Activation::Tanh => mlxrs_core::ops::tanh(x)?,
      Activation::Sigmoid => mlxrs_nn::sigmoid(x)?,
      Activation::Identity => x.clone(),
    })
  }
}

/// Whether ops run on the CPU device (where MLX evaluates element-wise ops
/// one scalar at a time, so the [`crate::host`] kernels are used).
pub(crate) fn on_cpu() -> bool {
  mlxrs_core::Device::default_device()
    .map(|d| d.kind == mlxrs_core::DeviceType::Cpu)
    .unwrap_or(true)
}
