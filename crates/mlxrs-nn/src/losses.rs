//! Loss functions (python `mlx.nn.losses`): cross entropy (with label
//! smoothing, class weights, and an `ignore_index` python lacks), binary
//! cross entropy, MSE, L1, smooth L1, Huber, KL divergence, NLL, cosine
//! similarity, hinge, log-cosh. Shape mismatches are errors naming both
//! shapes.

use mlxrs_core::{Array, Dtype, Error, Result, ops};

/// How per-element losses are combined (python `reduction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
  /// Keep per-element losses.
  None,
  /// Average.
  Mean,
  /// Sum.
  Sum,
}

fn reduce(loss: Array, r: Reduction) -> Result<Array> {
  match r {
    Reduction::None => Ok(loss),
    Reduction::Mean => ops::mean(&loss, false),
    Reduction::Sum => ops::sum(&loss, false),
  }
}

/// A python float combined with `a` (weakly typed: takes `a`'s float dtype).
fn s(a: &Array, v: f64) -> Result<Array> {
  let dt = a.dtype();
  Array::scalar_as(v, if dt.is_float() { dt } else { Dtype::Float32 })
}

fn same_shape(what: &str, a: &Array, b: &Array) -> Result<()> {
  if a.shape() != b.shape() {
    return Err(Error::InvalidArgument(format!(
      "{what}: shape {:?} does not match shape {:?}",
      a.shape(),
      b.shape()
    )));
  }
  Ok(())
}

fn apply_weights(loss: Array, weights: Option<&Array>) -> Result<Array> {
  match weights {
    Some(w) => {
      if w.shape() != loss.shape() {
        return Err(Error::InvalidArgument(format!(
          "Weights with shape {:?} is not the same as output loss with shape {:?}.",
          w.shape(),
          loss.shape()
        )));
      }
      ops::multiply(&loss, w)
    }
    None => Ok(loss),
  }
}

/// Options of [`cross_entropy`] (python's keyword arguments, plus
/// `ignore_index`).
#[derive(Debug, Clone, Copy)]
pub struct CrossEntropy<'a> {
  /// Per-element weights, shaped like the unreduced loss.
  pub weights: Option<&'a Array>,
  /// The class axis (default `-1`).
  pub axis: i32,
  /// Label smoothing in `[0, 1)`.
  pub label_smoothing: f32,
  /// Class-index targets equal to this contribute no loss, and `Mean`
  /// averages over the others only (PyTorch's `ignore_index`, e.g. `-100`
  /// for padding).
  pub ignore_index: Option<i32>,
  /// Reduction (python default `None`).
  pub reduction: Reduction,
}

impl Default for CrossEntropy<'_> {
  fn default() -> Self {
    CrossEntropy {
      weights: None,
      axis: -1,
      label_smoothing: 0.0,
      ignore_index: None,
      reduction: Reduction::None,
    }
  }
}

/// Cross entropy of `logits` against class indices (`logits` without the
/// class axis) or probabilities (same shape as `logits`) (python
/// `nn.losses.cross_entropy`).
pub fn cross_entropy(logits: &Array, targets: &Array, o: CrossEntropy<'_>) -> Result<Array> {
  if !(0.0..1.0).contains(&o.label_smoothing) {
    return Err(Error::InvalidArgument(format!(
      "Label smoothing must be in [0, 1), got {}.",
      o.label_smoothing
    )));
  }
  let nd = logits.ndim() as i32;
  if nd == 0 || o.axis < -nd || o.axis >= nd {
    return Err(Error::InvalidArgument(format!(
      "cross_entropy: axis {} out of range for logits {:?}",
      o.axis,
      logits.shape()
    )));
  }
  let axis = if o.axis < 0 { o.axis + nd } else { o.axis };
  let as_probs = targets.ndim() == logits.ndim();
  let mut dropped = logits.shape();
  dropped.remove(axis as usize);
  if (as_probs && targets.shape() != logits.shape()) || (!as_probs && targets.shape() != dropped) {
    return Err(Error::InvalidArgument(format!(
      "Targets shape {:?} does not match logits shape {:?}.",
      targets.shape(),
      logits.shape()
    )));
  }
  if as_probs && o.ignore_index.is_some() {
    return Err(Error::InvalidArgument(
      "cross_entropy: ignore_index needs class-index targets".into(),
    ));
  }
  if !as_probs && !targets.dtype().is_integer() {
    return Err(Error::InvalidArgument(format!(
      "cross_entropy: class targets must be integers, got {}",
      targets.dtype()
    )));
  }
  let (targets, keep) = match o.ignore_index {
    Some(ig) => {
      let igv = Array::scalar_as(ig as f64, targets.dtype())?;
      let keep = ops::not_equal(targets, &igv)?;
      let zero = Array::scalar_as(0.0, targets.dtype())?;
      (ops::where_(&keep, targets, &zero)?, Some(keep))
    }
    None => (targets.clone(), None),
  };
  let ls = o.label_smoothing as f64;
  // python (mlx 0.32): on the GPU, class targets without smoothing over
  // the last axis go through `mx.fast.cross_entropy`, a fused kernel that
  // accumulates in float32; everywhere else the composite below.
  let fast = !as_probs
    && ls == 0.0
    && axis == nd - 1
    && logits.dtype().is_float()
    && mlxrs_core::Device::default_is_gpu();
  let mut loss = if fast {
    ops::astype(
      &mlxrs_core::fast::cross_entropy(logits, &targets)?,
      logits.dtype(),
    )?
  } else {
    composite_cross_entropy(logits, &targets, axis, as_probs, ls)?
  };
  loss = apply_weights(loss, o.weights)?;
  match keep {
    None => reduce(loss, o.reduction),
    Some(keep) => {
      let loss = ops::multiply(&loss, &ops::astype(&keep, loss.dtype())?)?;
      match o.reduction {
        Reduction::Mean => {
          let n = ops::sum(&ops::astype(&keep, loss.dtype())?, false)?;
          ops::divide(&ops::sum(&loss, false)?, &ops::maximum(&n, &s(&n, 1.0)?)?)
        }
        r => reduce(loss, r),
      }
    }
  }
}

/// Cross entropy from max-shifted logits: `logsumexp - score`, with label
/// smoothing `ls` (python's non-fused path).
fn composite_cross_entropy(
  logits: &Array,
  targets: &Array,
  axis: i32,
  as_probs: bool,
  ls: f64,
) -> Result<Array> {
  let logits = ops::subtract(
    logits,
    &ops::stop_gradient(&ops::max_axis(logits, axis, true)?)?,
  )?;
  let score = if as_probs {
    ops::sum_axis(&ops::multiply(&logits, targets)?, axis, false)?
  } else {
    ops::squeeze_axis(
      &ops::take_along_axis(&logits, &ops::expand_dims(targets, axis)?, axis)?,
      axis,
    )?
  };
  let lse = ops::logsumexp_axis(&logits, axis, false)?;
  if ls > 0.0 {
    let adjusted = ops::multiply(&s(&score, 1.0 - ls)?, &score)?;
    let mean_logits = ops::mean_axis(&logits, axis, false)?;
    let smoothed = ops::multiply(&ops::negative(&mean_logits)?, &s(&mean_logits, ls)?)?;
    ops::add(&ops::subtract(&lse, &adjusted)?, &smoothed)
  } else {
    ops::subtract(&lse, &score)
  }
}

/// Binary cross entropy of logits (`with_logits`) or probabilities
/// against `targets` in `[0, 1]` (python `nn.losses.binary_cross_entropy`,
/// default reduction `Mean`).
pub fn binary_cross_entropy(
  inputs: &Array,
  targets: &Array,
  weights: Option<&Array>,
  with_logits: bool,
  reduction: Reduction,
) -> Result<Array> {
  same_shape("binary_cross_entropy", inputs, targets)?;
  let loss = if with_logits {
    ops::subtract(
      &ops::logaddexp(&s(inputs, 0.0)?, inputs)?,
      &ops::multiply(inputs, targets)?,
    )?
  } else {
    let lo = s(inputs, -100.0)?;
    let li = ops::clip(&ops::log(inputs)?, Some(&lo), None)?;
    let lin = ops::clip(
      &ops::log(&ops::subtract(&s(inputs, 1.0)?, inputs)?)?,
      Some(&lo),
      None,
    )?;
    let a = ops::multiply(targets, &li)?;
    let b = ops::multiply(&ops::subtract(&s(targets, 1.0)?, targets)?, &lin)?;
    ops::negative(&ops::add(&a, &b)?)?
  };
  reduce(apply_weights(loss, weights)?, reduction)
}

/// `|p - t|` (python `nn.losses.l1_loss`, default `Mean`).
pub fn l1_loss(predictions: &Array, targets: &Array, reduction: Reduction) -> Result<Array> {
  same_shape("l1_loss", predictions, targets)?;
  reduce(ops::abs(&ops::subtract(predictions, targets)?)?, reduction)
}

/// `(p - t)^2` (python `nn.losses.mse_loss`, default `Mean`).
pub fn mse_loss(predictions: &Array, targets: &Array, reduction: Reduction) -> Result<Array> {
  same_shape("mse_loss", predictions, targets)?;
  reduce(
    ops::square(&ops::subtract(predictions, targets)?)?,
    reduction,
  )
}

/// Negative log likelihood of log-probabilities at the class-index targets
/// (python `nn.losses.nll_loss`).
pub fn nll_loss(inputs: &Array, targets: &Array, axis: i32, reduction: Reduction) -> Result<Array> {
  let t = ops::expand_dims(targets, axis)?;
  reduce(
    ops::negative(&ops::squeeze_axis(
      &ops::take_along_axis(inputs, &t, axis)?,
      axis,
    )?)?,
    reduction,
  )
}

/// `sum(exp(t) * (t - x), axis)` for log-probabilities (python
/// `nn.losses.kl_div_loss`).
pub fn kl_div_loss(
  inputs: &Array,
  targets: &Array,
  axis: i32,
  reduction: Reduction,
) -> Result<Array> {
  same_shape("kl_div_loss", inputs, targets)?;
  let l = ops::sum_axis(
    &ops::multiply(&ops::exp(targets)?, &ops::subtract(targets, inputs)?)?,
    axis,
    false,
  )?;
  reduce(l, reduction)
}

/// Smooth L1 (python `nn.losses.smooth_l1_loss(p, t, beta)`, default
/// `Mean`): `0.5 d^2 / beta` below `beta`, `|d| - beta / 2` above.
pub fn smooth_l1_loss(
  predictions: &Array,
  targets: &Array,
  beta: f32,
  reduction: Reduction,
) -> Result<Array> {
  same_shape("smooth_l1_loss", predictions, targets)?;
  let d = ops::abs(&ops::subtract(predictions, targets)?)?;
  let b = beta as f64;
  let quad = ops::divide(&ops::multiply(&s(&d, 0.5)?, &ops::square(&d)?)?, &s(&d, b)?)?;
  let lin = ops::subtract(&ops::abs(&d)?, &s(&d, 0.5 * b)?)?;
  reduce(
    ops::where_(&ops::less(&d, &s(&d, b)?)?, &quad, &lin)?,
    reduction,
  )
}

/// Huber loss (python `nn.losses.huber_loss(x, t, delta)`).
pub fn huber_loss(
  inputs: &Array,
  targets: &Array,
  delta: f32,
  reduction: Reduction,
) -> Result<Array> {
  let e = ops::subtract(inputs, targets)?;
  let a = ops::abs(&e)?;
  let q = ops::minimum(&a, &s(&a, delta as f64)?)?;
  let lin = ops::subtract(&a, &q)?;
  let l = ops::add(
    &ops::multiply(&s(&q, 0.5)?, &ops::square(&q)?)?,
    &ops::multiply(&s(&lin, delta as f64)?, &lin)?,
  )?;
  reduce(l, reduction)
}

/// `max(1 - x * t, 0)` (python `nn.losses.hinge_loss`).
pub fn hinge_loss(inputs: &Array, targets: &Array, reduction: Reduction) -> Result<Array> {
  let m = ops::subtract(&s(inputs, 1.0)?, &ops::multiply(inputs, targets)?)?;
  reduce(ops::maximum(&m, &s(&m, 0.0)?)?, reduction)
}

/// `log(cosh(x - t))` (python `nn.losses.log_cosh_loss`).
pub fn log_cosh_loss(inputs: &Array, targets: &Array, reduction: Reduction) -> Result<Array> {
  let e = ops::subtract(inputs, targets)?;
  let l = ops::subtract(
    &ops::logaddexp(&e, &ops::negative(&e)?)?,
    &s(&e, std::f64::consts::LN_2)?,
  )?;
  reduce(l, reduction)
}

/// Cosine similarity along `axis` (python
/// `nn.losses.cosine_similarity_loss(x1, x2, axis, eps)`; python's
/// default axis is 1).
pub fn cosine_similarity_loss(
  x1: &Array,
  x2: &Array,
  axis: i32,
  eps: f32,
  reduction: Reduction,
) -> Result<Array> {
  let n1 = mlxrs_core::linalg::norm_l2(x1, Some(&[axis]), false)?;
  let n2 = mlxrs_core::linalg::norm_l2(x2, Some(&[axis]), false)?;
  let num = ops::sum_axis(&ops::multiply(x1, x2)?, axis, false)?;
  let den = ops::maximum(&ops::multiply(&n1, &n2)?, &s(&n1, eps as f64)?)?;
  reduce(ops::divide(&num, &den)?, reduction)
}

/// Gaussian negative log likelihood (python
/// `nn.losses.gaussian_nll_loss(x, t, vars, full, eps)`).
pub fn gaussian_nll_loss(
  inputs: &Array,
  targets: &Array,
  vars: &Array,
  full: bool,
  eps: f32,
  reduction: Reduction,
) -> Result<Array> {
  same_shape("gaussian_nll_loss", inputs, targets)?;
  same_shape("gaussian_nll_loss", inputs, vars)?;
  let v = ops::maximum(vars, &s(vars, eps as f64)?)?;
  let t = ops::add(
    &ops::log(&v)?,
    &ops::divide(&ops::square(&ops::subtract(targets, inputs)?)?, &v)?,
  )?;
  let mut l = ops::multiply(&s(&t, 0.5)?, &t)?;
  if full {
    l = ops::add(&l, &s(&l, 0.5 * (2.0 * std::f64::consts::PI).ln())?)?;
  }
  reduce(l, reduction)
}
