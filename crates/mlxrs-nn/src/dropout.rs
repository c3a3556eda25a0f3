//! Dropout (python `mlx.nn.Dropout`, `nn.Dropout2d`): active only in
//! training mode ([`crate::Module::train`]). Unlike python, whose modules
//! start in training mode, these start in evaluation mode (a loaded model
//! is used for inference); call `train()` to enable them.

use mlxrs_core::{Array, Error, Result, ops, random};

use crate::module::{Module, Weights};

/// Zero each element with probability `p` and scale the rest by `1 / (1 -
/// p)` while training (python `nn.Dropout(p)`).
#[derive(Debug, Clone)]
pub struct Dropout {
  /// Drop probability, in `[0, 1)`.
  pub p: f32,
  /// Training mode.
  pub training: bool,
  channels: bool,
}

impl Dropout {
  /// Element-wise dropout. `p` outside `[0, 1)` is an error.
  pub fn new(p: f32) -> Result<Dropout> {
    if !(0.0..1.0).contains(&p) {
      return Err(Error::InvalidArgument(format!(
        "The dropout probability {p} is not in [0, 1)"
      )));
    }
    Ok(Dropout {
      p,
      training: false,
      channels: false,
    })
  }

  /// Channel-wise dropout of `[N, H, W, C]` / `[H, W, C]` inputs (python
  /// `nn.Dropout2d(p)`): whole channels are zeroed.
  pub fn new_2d(p: f32) -> Result<Dropout> {
    Ok(Dropout {
      channels: true,
      ..Dropout::new(p)?
    })
  }

  /// Apply with MLX's global random key.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    self.forward_with_key(x, None)
  }

  /// Apply with an explicit random `key` (reproducible masks).
  pub fn forward_with_key(&self, x: &Array, key: Option<&Array>) -> Result<Array> {
    if self.channels && !(x.ndim() == 3 || x.ndim() == 4) {
      return Err(Error::InvalidArgument(format!(
        "Received input with {} dimensions. Expected 3 or 4 dimensions.",
        x.ndim()
      )));
    }
    let keep = 1.0 - self.p;
    if keep == 1.0 || !self.training {
      return Ok(x.clone());
    }
    let mut shape = x.shape();
    if self.channels {
      let nd = shape.len();
      shape[nd - 2] = 1;
      shape[nd - 3] = 1;
    }
    let mask = random::bernoulli(&Array::scalar(keep), &shape, key)?;
    let y = ops::multiply(&ops::astype(&mask, x.dtype())?, x)?;
    ops::multiply(&y, &Array::scalar_as(1.0 / keep as f64, x.dtype())?)
  }
}

impl Module for Dropout {
  fn load(&mut self, _w: &mut Weights, _prefix: &str) {}
  fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Array)) {}
  fn set_training(&mut self, training: bool) {
    self.training = training;
  }
}
