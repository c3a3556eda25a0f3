//! Normalization layers: `RmsNorm` (python `mlx.nn.RMSNorm`) and `LayerNorm`
//! (`mlx.nn.LayerNorm`), both on MLX's fused `mx.fast` kernels.

use mlxrs_core::{Array, Result, fast, ops};

use crate::module::{Module, Weights, join};

/// RMS normalization: `x / sqrt(mean(x^2) + eps) * weight`.
pub struct RmsNorm {
  /// Width.
  pub dims: i32,
  /// Scale `[dims]`.
  pub weight: Array,
  /// Epsilon.
  pub eps: f32,
  /// Gemma-style `(1 + weight)` scaling: the stored weight is offset by one
  /// at load time.
  pub plus_one: bool,
}

impl RmsNorm {
  /// An unloaded norm.
  pub fn new(dims: i32, eps: f32) -> RmsNorm {
    RmsNorm { dims, weight: Array::scalar(1.0f32), eps, plus_one: false }
  }

  /// Gemma's variant: scale by `1 + weight`.
  pub fn new_plus_one(dims: i32, eps: f32) -> RmsNorm {
    RmsNorm { plus_one: true, ..RmsNorm::new(dims, eps) }
  }

  /// Normalize over the last axis.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    fast::rms_norm(x, Some(&self.weight), self.eps)
  }
}

impl Module for RmsNorm {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let weight = w.take(&join(prefix, "weight"), Some(&[self.dims]));
    self.weight = if self.plus_one {
      let one = Array::scalar_as(1.0, weight.dtype()).unwrap_or_else(|_| Array::scalar(1.0f32));
      ops::add(&weight, &one).unwrap_or(weight)
    } else {
      weight
    };
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&join(prefix, "weight"), &self.weight);
  }
}

/// Layer normalization with optional affine weight and bias.
pub struct LayerNorm {
  /// Width.
  pub dims: i32,
  /// Scale `[dims]` (affine only).
  pub weight: Option<Array>,
  /// Shift `[dims]` (affine with bias only).
  pub bias: Option<Array>,
  /// Epsilon.
  pub eps: f32,
  affine: bool,
  has_bias: bool,
}

impl LayerNorm {
  /// An unloaded norm (python `nn.LayerNorm(dims, eps, affine, bias)`).
  pub fn new(dims: i32, eps: f32, affine: bool, bias: bool) -> LayerNorm {
    LayerNorm { dims, weight: None, bias: None, eps, affine, has_bias: bias }
  }

  /// Normalize over the last axis.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    fast::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)
  }
}

impl Module for LayerNorm {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    if self.affine {
      self.weight = Some(w.take(&join(prefix, "weight"), Some(&[self.dims])));
      if self.has_bias {
        self.bias = Some(w.take(&join(prefix, "bias"), Some(&[self.dims])));
      }
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    if let Some(a) = &self.weight {
      f(&join(prefix, "weight"), a);
    }
    if let Some(a) = &self.bias {
      f(&join(prefix, "bias"), a);
    }
  }
}
