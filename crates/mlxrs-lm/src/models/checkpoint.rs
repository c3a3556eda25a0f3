//! Gradient checkpointing of decoder blocks (python mlx-lm
//! `tuner/trainer.py` `grad_checkpoint(layer)`: each block's `__call__`
//! becomes `mx.checkpoint(inner_fn)(block.trainable_parameters(), *args)`,
//! where `inner_fn` writes the parameters into the block (`block.update`)
//! and runs the original call).
//!
//! Here a block runs as one [`mlxrs_core::transforms::checkpoint`]ed
//! closure whose inputs are the block's inputs (the hidden state, ...)
//! followed by the block's trainable tensors (LoRA `lora_a` / `lora_b`,
//! DoRA `m`, or all of its weights under a full fine-tune): gradients flow
//! to them through the checkpoint, while the block's intermediate
//! activations are recomputed in the backward pass instead of being kept.
//! Frozen tensors (a quantized base included) are constants of the
//! closure, so no gradient is formed for them.
//!
//! The closure is called again by the backward pass, after the model's
//! forward has returned, so it cannot borrow the block: blocks of the
//! shared block loops ([`super::decoder::Decoder`], [`super::llama::Llama`])
//! are held in a [`Shared`] cell, which the closure keeps a handle on.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mlxrs_core::transforms::{Closure, checkpoint};
use mlxrs_core::{Array, Error, Result};
use mlxrs_nn::{AttnMask, KvCache, Module, Quantizable, Weights};

/// A block held behind a shared lock, so that a checkpointed closure can
/// reach it after the forward pass that created it has returned.
pub(crate) struct Shared<T>(Arc<Mutex<T>>);

impl<T> Shared<T> {
  /// Wrap a block.
  pub fn new(t: T) -> Shared<T> {
    Shared(Arc::new(Mutex::new(t)))
  }

  /// The block (a lock poisoned by a panic elsewhere still gives it: the
  /// block holds only arrays, which a panic cannot leave half-written).
  pub fn lock(&self) -> MutexGuard<'_, T> {
    self.0.lock().unwrap_or_else(PoisonError::into_inner)
  }
}

impl<T: Module> Module for Shared<T> {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.lock().load(w, prefix)
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.lock().visit(prefix, f)
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.lock().visit_mut(prefix, f)
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.lock().visit_frozen(prefix, f)
  }
  fn set_training(&mut self, training: bool) {
    self.lock().set_training(training)
  }
  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    self.lock().visit_quantizable_mut(prefix, f)
  }
}

/// The checkpointing switch of a model: `Some(paths)` of the trainable
/// parameters (as [`crate::LanguageModel::visit`] names them) while it is
/// on.
pub(crate) type Trainable = Option<Arc<BTreeSet<String>>>;

/// Run `f(block, inputs)` checkpointed (python `mx.checkpoint(inner_fn)
/// (block.trainable_parameters(), *args)`): the block at `prefix`'s
/// parameters named in `trainable` become inputs of the checkpointed
/// closure after `inputs`, are written into the block while `f` runs (and
/// the previous values put back after), and get gradients through the
/// checkpoint. Returns `f`'s outputs.
///
/// A block whose parameters its [`Module::visit_mut`] does not reach is an
/// error (its gradients would silently be lost).
pub(crate) fn run<T, F>(
  block: &Shared<T>,
  prefix: &str,
  trainable: &BTreeSet<String>,
  inputs: &[Array],
  f: F,
) -> Result<Vec<Array>>
where
  T: Module + Send + 'static,
  F: Fn(&T, &[Array]) -> Result<Vec<Array>> + Send + 'static,
{
  let mut names = Vec::new();
  let mut params = Vec::new();
  block.lock().visit(prefix, &mut |k, a| {
    if trainable.contains(k) {
      names.push(k.to_string());
      params.push(a.clone());
    }
  });
  let n_in = inputs.len();
  let cell = block.0.clone();
  let prefix = prefix.to_string();
  let index: HashMap<String, usize> = names
    .iter()
    .enumerate()
    .map(|(i, k)| (k.clone(), i))
    .collect();
  let inner = Closure::new(move |args: &[Array]| {
    if args.len() != n_in + names.len() {
      return Err(Error::InvalidArgument(format!(
        "grad checkpoint ({prefix}): {} inputs, expected {}",
        args.len(),
        n_in + names.len()
      )));
    }
    let mut b = cell.lock().unwrap_or_else(PoisonError::into_inner);
    let mut saved: Vec<Option<Array>> = vec![None; names.len()];
    b.visit_mut(&prefix, &mut |k, a, _| {
      if let Some(&i) = index.get(k) {
        saved[i] = Some(std::mem::replace(a, args[n_in + i].clone()));
      }
    });
    let missing: Vec<&str> = names
      .iter()
      .zip(&saved)
      .filter(|(_, s)| s.is_none())
      .map(|(k, _)| k.as_str())
      .collect();
    let out = if missing.is_empty() {
      f(&b, &args[..n_in])
    } else {
      Err(Error::InvalidArgument(format!(
        "grad checkpoint: the block at {prefix} does not expose {} to updates (visit_mut)",
        missing.join(", ")
      )))
    };
    b.visit_mut(&prefix, &mut |k, a, _| {
      if let Some(s) = index.get(k).and_then(|&i| saved[i].take()) {
        *a = s;
      }
    });
    out
  })?;
  let mut args = inputs.to_vec();
  args.extend(params);
  checkpoint(&inner)?.call(&args)
}

/// One block of a model's own layer loop: `forward(block, h, mask, cache)`,
/// run through [`run`] (checkpointed) when `ckpt` is on. The cache is left
/// as it was then (training passes fresh caches and discards them). The
/// usual body of a block loop that supports
/// [`crate::LanguageModel::set_grad_checkpoint`].
pub(crate) fn block<T>(
  ckpt: &Trainable,
  layer: &Shared<T>,
  prefix: impl FnOnce() -> String,
  h: &Array,
  mask: &AttnMask,
  cache: &mut KvCache,
  forward: fn(&T, &Array, &AttnMask, &mut KvCache) -> Result<Array>,
) -> Result<Array>
where
  T: Module + Send + 'static,
{
  let Some(trainable) = ckpt else {
    return forward(&layer.lock(), h, mask, cache);
  };
  let prefix = prefix();
  let (mask, cache) = (mask.clone(), cache.clone());
  let out = run(
    layer,
    &prefix,
    trainable,
    std::slice::from_ref(h),
    move |b, xs| Ok(vec![forward(b, &xs[0], &mask, &mut cache.clone())?]),
  )?;
  out
    .into_iter()
    .next()
    .ok_or_else(|| Error::InvalidArgument(format!("grad checkpoint ({prefix}): no output")))
}
