//! Gradients of a loss with respect to a module's trainable parameters
//! (python `mlx.nn.value_and_grad(model, fn)`), over
//! [`mlxrs_core::transforms::value_and_grad`].
//!
//! MLX traces the loss function with the parameters as inputs, so the
//! function must reach the model while it runs; MLX closures are
//! `'static`, so the model is shared as `Arc<Mutex<M>>` (locked only
//! inside each call). The model's own parameters are restored after the
//! call (python leaves the traced copies in the model until the optimizer
//! replaces them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mlxrs_core::transforms::{Closure, value_and_grad as core_value_and_grad};
use mlxrs_core::{Array, Error, Result};

use crate::module::Module;

type LossFn<M> = dyn Fn(&M, &[Array]) -> Result<Vec<Array>> + Send + Sync;

/// `loss_fn` with gradients for a module (python `nn.value_and_grad`).
pub struct ModuleValueAndGrad<M> {
  model: Arc<Mutex<M>>,
  loss: Arc<LossFn<M>>,
}

/// Build python's `nn.value_and_grad(model, loss_fn)`: `loss_fn(model,
/// inputs)` returns the loss (a scalar) first, then anything else to pass
/// through.
pub fn value_and_grad<M, F>(model: Arc<Mutex<M>>, loss_fn: F) -> ModuleValueAndGrad<M>
where
  M: Module + Send + 'static,
  F: Fn(&M, &[Array]) -> Result<Vec<Array>> + Send + Sync + 'static,
{
  ModuleValueAndGrad {
    model,
    loss: Arc::new(loss_fn),
  }
}

fn poisoned() -> Error {
  Error::InvalidArgument("model mutex is poisoned (a previous call panicked)".into())
}

impl<M: Module + Send + 'static> ModuleValueAndGrad<M> {
  /// The shared model.
  pub fn model(&self) -> &Arc<Mutex<M>> {
    &self.model
  }

  /// `(outputs of loss_fn, gradients of the loss by trainable parameter
  /// path)` at `inputs`. The model's mutex must not be held by the caller.
  pub fn call(&self, inputs: &[Array]) -> Result<(Vec<Array>, BTreeMap<String, Array>)> {
    let params = self
      .model
      .lock()
      .map_err(|_| poisoned())?
      .trainable_parameters();
    if params.is_empty() {
      return Err(Error::InvalidArgument(
        "value_and_grad: the model has no trainable parameters".into(),
      ));
    }
    let names: Vec<String> = params.keys().cloned().collect();
    let values: Vec<Array> = params.into_values().collect();
    let n = names.len();
    let (model, loss, nm) = (self.model.clone(), self.loss.clone(), names.clone());
    let f = Closure::new(move |args: &[Array]| {
      let mut m = model.lock().map_err(|_| poisoned())?;
      m.update(nm.iter().cloned().zip(args[..n].iter().cloned()), true)?;
      let out = loss(&m, &args[n..])?;
      if out.is_empty() {
        return Err(Error::InvalidArgument(
          "value_and_grad: the loss function returned nothing".into(),
        ));
      }
      Ok(out)
    })?;
    let argnums: Vec<i32> = (0..n as i32).collect();
    let vg = core_value_and_grad(&f, &argnums)?;
    let mut args = values.clone();
    args.extend(inputs.iter().cloned());
    let result = vg.call(&args);
    // Put the real parameters back (the traced copies were left in).
    self
      .model
      .lock()
      .map_err(|_| poisoned())?
      .update(names.iter().cloned().zip(values), true)?;
    let (outs, grads) = result?;
    Ok((outs, names.into_iter().zip(grads).collect()))
  }
}
