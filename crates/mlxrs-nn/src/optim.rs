//! Optimizers and learning-rate schedules (python `mlx.optimizers`): SGD
//! (momentum, dampening, Nesterov, weight decay), Adam, AdamW, Adafactor,
//! Lion; `linear_schedule`, `cosine_decay`, `step_decay`,
//! `exponential_decay`, `join_schedules` (warmup); `clip_grad_norm`.
//!
//! Parameters and gradients are flat maps by dotted path (python's trees,
//! `tree_flatten`ed), e.g. [`crate::Module::trainable_parameters`]. As in
//! python, a schedule is evaluated at the step count *before* the update,
//! and the update rules see the incremented step. Each update is written
//! with the same operations (and float32 scalars) as python's, so results
//! match it to float rounding.
//!
//! ```ignore
//! let warmup_cosine = join_schedules(
//!   vec![linear_schedule(0.0, 1e-3, 100)?, cosine_decay(1e-3, 900, 0.0)?],
//!   &[100],
//! )?;
//! let mut opt = Adam::adamw(warmup_cosine, 0.01);
//! let vg = value_and_grad(model.clone(), loss_fn); // model: Arc<Mutex<M>>
//! let (loss, grads) = vg.call(&[x, y])?;
//! let (grads, _norm) = clip_grad_norm(&grads, 1.0)?;
//! let mut m = model.lock().unwrap();
//! opt.update(&mut *m, &grads)?;
//! mlxrs_core::eval(&[m.parameters().into_values().collect::<Vec<_>>(), opt.state_arrays()].concat())?;
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use mlxrs_core::{Array, Dtype, Error, Result, ops};

use crate::module::Module;

/// A learning-rate schedule: step (before the update) -> rate.
pub type Schedule = Arc<dyn Fn(u64) -> f32 + Send + Sync>;

/// A constant rate or a [`Schedule`].
#[derive(Clone)]
pub enum LearningRate {
  /// The same rate every step.
  Constant(f32),
  /// A rate per step.
  Scheduled(Schedule),
}

impl LearningRate {
  /// The rate at `step`.
  pub fn at(&self, step: u64) -> f32 {
    match self {
      LearningRate::Constant(v) => *v,
      LearningRate::Scheduled(s) => s(step),
    }
  }
}

impl From<f32> for LearningRate {
  fn from(v: f32) -> Self {
    LearningRate::Constant(v)
  }
}

impl From<Schedule> for LearningRate {
  fn from(s: Schedule) -> Self {
    LearningRate::Scheduled(s)
  }
}

/// `init * rate^step` (python `optimizers.exponential_decay`).
pub fn exponential_decay(init: f64, decay_rate: f64) -> Schedule {
  let (init, rate) = (init as f32, decay_rate as f32);
  Arc::new(move |step| init * rate.powf(step as f32))
}

/// `init * rate^(step / step_size)` (integer division; python
/// `optimizers.step_decay`).
pub fn step_decay(init: f64, decay_rate: f64, step_size: u64) -> Result<Schedule> {
  if step_size < 1 {
    return Err(Error::InvalidArgument(format!(
      "step_size must be greater than 0, but got {step_size}."
    )));
  }
  let (init, rate) = (init as f32, decay_rate as f32);
  Ok(Arc::new(move |step| {
    init * rate.powf((step / step_size) as f32)
  }))
}

/// Cosine decay from `init` to `end` over `decay_steps`, then `end`
/// (python `optimizers.cosine_decay`).
pub fn cosine_decay(init: f64, decay_steps: u64, end: f64) -> Result<Schedule> {
  if decay_steps < 1 {
    return Err(Error::InvalidArgument(format!(
      "decay_steps must be greater than 0, but got {decay_steps}."
    )));
  }
  let w = (std::f64::consts::PI / decay_steps as f64) as f32;
  let span = (init - end) as f32;
  let end = end as f32;
  Ok(Arc::new(move |step| {
    let s = step.min(decay_steps) as f32;
    let decay = 0.5f32 * (1.0f32 + (w * s).cos());
    end + decay * span
  }))
}

/// Linear from `init` to `end` over `steps`, then `end` (python
/// `optimizers.linear_schedule`; a warmup when `init` is 0).
pub fn linear_schedule(init: f64, end: f64, steps: u64) -> Result<Schedule> {
  if steps < 1 {
    return Err(Error::InvalidArgument(format!(
      "steps must be greater than 0, but got {steps}."
    )));
  }
  let slope = ((end - init) / steps as f64) as f32;
  let init = init as f32;
  Ok(Arc::new(move |step| step.min(steps) as f32 * slope + init))
}

/// `schedules[0]` until `boundaries[0]`, then `schedules[1]` (restarted at
/// step 0), ... (python `optimizers.join_schedules`).
pub fn join_schedules(schedules: Vec<Schedule>, boundaries: &[u64]) -> Result<Schedule> {
  if schedules.is_empty() {
    return Err(Error::InvalidArgument(
      "Must provide at least 1 schedule to join.".into(),
    ));
  }
  if schedules.len() != boundaries.len() + 1 {
    return Err(Error::InvalidArgument(format!(
      "Received {} boundaries but expected {}.",
      boundaries.len(),
      schedules.len() - 1
    )));
  }
  let b = boundaries.to_vec();
  Ok(Arc::new(move |step| {
    let mut out = schedules[0](step);
    for (bd, s) in b.iter().zip(&schedules[1..]) {
      if step >= *bd {
        out = s(step - bd);
      }
    }
    out
  }))
}

/// Scale `grads` so their global L2 norm is at most `max_norm`; returns
/// the clipped gradients and the norm before clipping (python
/// `optimizers.clip_grad_norm`).
pub fn clip_grad_norm(
  grads: &BTreeMap<String, Array>,
  max_norm: f32,
) -> Result<(BTreeMap<String, Array>, Array)> {
  if max_norm < 0.0 {
    return Err(Error::InvalidArgument(format!(
      "max_norm should be >=0, {max_norm} was provided instead"
    )));
  }
  let mut acc = Array::scalar(0.0f32);
  for g in grads.values() {
    let g32 = if g.dtype() == Dtype::Float16 {
      ops::astype(g, Dtype::Float32)?
    } else {
      g.clone()
    };
    acc = ops::add(&acc, &ops::sum(&ops::square(&g32)?, false)?)?;
  }
  let total = ops::sqrt(&acc)?;
  let norm_dt = total.dtype();
  let denom = ops::add(&total, &Array::scalar_as(1e-6, norm_dt)?)?;
  let normalizer = ops::minimum(
    &ops::divide(&Array::scalar_as(max_norm as f64, norm_dt)?, &denom)?,
    &Array::scalar_as(1.0, norm_dt)?,
  )?;
  let mut out = BTreeMap::new();
  for (k, g) in grads {
    let scaled = ops::multiply(g, &normalizer)?;
    let scaled = if g.dtype().is_float() && scaled.dtype() != g.dtype() {
      ops::astype(&scaled, g.dtype())?
    } else {
      scaled
    };
    out.insert(k.clone(), scaled);
  }
  Ok((out, total))
}

/// A python float combined with an array of `dtype` (weakly typed).
fn sc(v: f64, dtype: Dtype) -> Result<Array> {
  Array::scalar_as(
    v,
    if dtype.is_float() {
      dtype
    } else {
      Dtype::Float32
    },
  )
}

/// The step counter, learning rate and per-parameter state shared by all
/// optimizers (python `Optimizer.state`).
#[derive(Clone)]
pub struct OptimizerState {
  /// Updates applied so far (python `optimizer.step`).
  pub step: u64,
  /// The learning rate (`None`: Adafactor's relative step size).
  pub learning_rate: Option<LearningRate>,
  /// Per-parameter state arrays, by parameter path.
  pub slots: BTreeMap<String, Vec<Array>>,
}

/// An optimizer's update rule for one parameter.
trait Rule {
  fn init_single(&self, p: &Array) -> Result<Vec<Array>>;
  /// `lr` is python's `learning_rate` array (float32), `step` the
  /// incremented step.
  fn apply_single(
    &self,
    g: &Array,
    p: &Array,
    st: &mut Vec<Array>,
    lr: Option<&Array>,
    step: &Array,
  ) -> Result<Array>;
}

/// A gradient-based optimizer (python `mlx.optimizers.Optimizer`).
pub trait Optimizer {
  /// Parameters after one update with `grads` (python
  /// `apply_gradients(gradients, parameters)`): one entry per gradient;
  /// every gradient needs a parameter of the same shape.
  fn apply_gradients(
    &mut self,
    grads: &BTreeMap<String, Array>,
    params: &BTreeMap<String, Array>,
  ) -> Result<BTreeMap<String, Array>>;

  /// [`apply_gradients`](Optimizer::apply_gradients) with the learning
  /// rate and the incremented step count given as float32 scalar arrays
  /// instead of taken from the state (the step counter is still
  /// incremented): for a compiled training step, where they must be inputs
  /// of the trace (python passes `optimizer.state` to `mx.compile`'s
  /// `inputs` / `outputs`). `lr` `None` uses the state's rate.
  fn apply_gradients_with(
    &mut self,
    grads: &BTreeMap<String, Array>,
    params: &BTreeMap<String, Array>,
    lr: Option<&Array>,
    step: &Array,
  ) -> Result<BTreeMap<String, Array>>;

  /// Create the missing per-parameter state arrays for `params` (python
  /// `Optimizer.init`), so that a compiled step can take them as inputs.
  fn init(&mut self, params: &BTreeMap<String, Array>) -> Result<()>;

  /// A copy of this optimizer (settings and state), for tracing a compiled
  /// step.
  fn boxed_clone(&self) -> Box<dyn Optimizer + Send>;

  /// The step counter, learning rate and state.
  fn state(&self) -> &OptimizerState;

  /// Mutable access to the state (e.g. to reset or set the learning rate).
  fn state_mut(&mut self) -> &mut OptimizerState;

  /// Updates applied so far.
  fn step(&self) -> u64 {
    self.state().step
  }

  /// The learning rate the next update uses.
  fn learning_rate(&self) -> Option<f32> {
    let s = self.state();
    s.learning_rate.as_ref().map(|l| l.at(s.step))
  }

  /// Set a constant learning rate or a schedule (python
  /// `optimizer.learning_rate = ...`).
  fn set_learning_rate(&mut self, lr: LearningRate) {
    self.state_mut().learning_rate = Some(lr);
  }

  /// Every state array, to evaluate with the parameters after an update
  /// (python `mx.eval(model.parameters(), optimizer.state)`).
  fn state_arrays(&self) -> Vec<Array> {
    self.state().slots.values().flatten().cloned().collect()
  }

  /// Apply `grads` to `model`'s parameters (python
  /// `optimizer.update(model, gradients)`).
  fn update<M: Module + ?Sized>(
    &mut self,
    model: &mut M,
    grads: &BTreeMap<String, Array>,
  ) -> Result<()>
  where
    Self: Sized,
  {
    let params = model.parameters();
    let new = self.apply_gradients(grads, &params)?;
    let mut err = None;
    model.visit_mut("", &mut |k, a, _| {
      if let Some(n) = new.get(k) {
        if err.is_none() && n.shape() != a.shape() {
          err = Some(Error::InvalidArgument(format!(
            "optimizer update of {k} changed its shape"
          )));
        }
        *a = n.clone();
      }
    });
    err.map_or(Ok(()), Err)
  }
}

fn apply_rule<R: Rule>(
  rule: &R,
  st: &mut OptimizerState,
  grads: &BTreeMap<String, Array>,
  params: &BTreeMap<String, Array>,
  given: Option<(Option<&Array>, &Array)>,
) -> Result<BTreeMap<String, Array>> {
  let mut problems = Vec::new();
  for (k, g) in grads {
    match params.get(k) {
      None => problems.push(format!("gradient {k} has no parameter")),
      Some(p) if p.shape() != g.shape() => problems.push(format!(
        "gradient {k} has shape {:?}, parameter {:?}",
        g.shape(),
        p.shape()
      )),
      _ => {}
    }
  }
  if !problems.is_empty() {
    return Err(Error::InvalidArgument(format!(
      "apply_gradients: {}",
      problems.join("; ")
    )));
  }
  let state_lr = st
    .learning_rate
    .as_ref()
    .map(|l| Array::scalar(l.at(st.step)));
  st.step += 1;
  let (lr, step) = match given {
    Some((l, s)) => (l.cloned().or(state_lr), s.clone()),
    None => (state_lr, Array::scalar(st.step as f32)),
  };
  let mut out = BTreeMap::new();
  for (k, g) in grads {
    let p = &params[k];
    if !st.slots.contains_key(k) {
      st.slots.insert(k.clone(), rule.init_single(p)?);
    }
    let slot = st.slots.get_mut(k).expect("inserted above");
    let lr_g = match &lr {
      Some(l) => Some(ops::astype(
        l,
        if g.dtype().is_float() {
          g.dtype()
        } else {
          Dtype::Float32
        },
      )?),
      None => None,
    };
    out.insert(
      k.clone(),
      rule.apply_single(g, p, slot, lr_g.as_ref(), &step)?,
    );
  }
  Ok(out)
}

macro_rules! optimizer_impl {
  ($ty:ty) => {
    impl Optimizer for $ty {
      fn apply_gradients(
        &mut self,
        grads: &BTreeMap<String, Array>,
        params: &BTreeMap<String, Array>,
      ) -> Result<BTreeMap<String, Array>> {
        let mut st = std::mem::replace(
          &mut self.state,
          OptimizerState {
            step: 0,
            learning_rate: None,
            slots: BTreeMap::new(),
          },
        );
        let r = apply_rule(&*self, &mut st, grads, params, None);
        self.state = st;
        r
      }
      fn apply_gradients_with(
        &mut self,
        grads: &BTreeMap<String, Array>,
        params: &BTreeMap<String, Array>,
        lr: Option<&Array>,
        step: &Array,
      ) -> Result<BTreeMap<String, Array>> {
        let mut st = std::mem::replace(&mut self.state, new_state(None));
        let r = apply_rule(&*self, &mut st, grads, params, Some((lr, step)));
        self.state = st;
        r
      }
      fn init(&mut self, params: &BTreeMap<String, Array>) -> Result<()> {
        for (k, p) in params {
          if !self.state.slots.contains_key(k) {
            let v = self.init_single(p)?;
            self.state.slots.insert(k.clone(), v);
          }
        }
        Ok(())
      }
      fn boxed_clone(&self) -> Box<dyn Optimizer + Send> {
        Box::new(self.clone())
      }
      fn state(&self) -> &OptimizerState {
        &self.state
      }
      fn state_mut(&mut self) -> &mut OptimizerState {
        &mut self.state
      }
    }
  };
}

fn new_state(lr: Option<LearningRate>) -> OptimizerState {
  OptimizerState {
    step: 0,
    learning_rate: lr,
    slots: BTreeMap::new(),
  }
}

fn lr_of(lr: Option<&Array>) -> Result<&Array> {
  lr.ok_or_else(|| Error::InvalidArgument("optimizer has no learning rate".into()))
}

/// Stochastic gradient descent (python `optimizers.SGD(learning_rate,
/// momentum, weight_decay, dampening, nesterov)`).
#[derive(Clone)]
pub struct Sgd {
  /// Momentum (0: plain SGD).
  pub momentum: f64,
  /// L2 penalty added to the gradient.
  pub weight_decay: f64,
  /// Momentum dampening.
  pub dampening: f64,
  /// Nesterov momentum.
  pub nesterov: bool,
  state: OptimizerState,
}

impl Sgd {
  /// SGD; Nesterov needs a positive momentum and zero dampening.
  pub fn new(
    learning_rate: impl Into<LearningRate>,
    momentum: f64,
    weight_decay: f64,
    dampening: f64,
    nesterov: bool,
  ) -> Result<Sgd> {
    if nesterov && (momentum <= 0.0 || dampening != 0.0) {
      return Err(Error::InvalidArgument(
        "Nesterov momentum requires a momentum and zero dampening.".into(),
      ));
    }
    Ok(Sgd {
      momentum,
      weight_decay,
      dampening,
      nesterov,
      state: new_state(Some(learning_rate.into())),
    })
  }
}

impl Rule for Sgd {
  fn init_single(&self, p: &Array) -> Result<Vec<Array>> {
    Ok(vec![ops::zeros_like(p)?])
  }
  fn apply_single(
    &self,
    g: &Array,
    p: &Array,
    st: &mut Vec<Array>,
    lr: Option<&Array>,
    _step: &Array,
  ) -> Result<Array> {
    let lr = lr_of(lr)?;
    let dt = g.dtype();
    let mut g = g.clone();
    if self.weight_decay != 0.0 {
      g = ops::add(&g, &ops::multiply(&sc(self.weight_decay, p.dtype())?, p)?)?;
    }
    if self.momentum <= 0.0 {
      return ops::subtract(p, &ops::multiply(lr, &g)?);
    }
    let mut v = ops::multiply(&sc(self.momentum, dt)?, &st[0])?;
    if self.dampening > 0.0 {
      v = ops::add(&v, &ops::multiply(&sc(1.0 - self.dampening, dt)?, &g)?)?;
    } else {
      v = ops::add(&v, &g)?;
    }
    let update = if self.nesterov {
      ops::add(&g, &ops::multiply(&sc(self.momentum, dt)?, &v)?)?
    } else {
      v.clone()
    };
    st[0] = v;
    ops::subtract(p, &ops::multiply(lr, &update)?)
  }
}
optimizer_impl!(Sgd);

/// Adam (python `optimizers.Adam(learning_rate, betas, eps,
/// bias_correction)`); with `weight_decay` it is AdamW.
#[derive(Clone)]
pub struct Adam {
  /// `(beta1, beta2)`.
  pub betas: (f64, f64),
  /// Denominator epsilon.
  pub eps: f64,
  /// Bias-correct the moments.
  pub bias_correction: bool,
  /// Decoupled weight decay (AdamW; 0 for Adam).
  pub weight_decay: f64,
  state: OptimizerState,
}

/// AdamW is [`Adam`] with decoupled weight decay.
pub type AdamW = Adam;

impl Adam {
  /// Adam with python's defaults otherwise (`betas (0.9, 0.999)`, `eps
  /// 1e-8`, no bias correction).
  pub fn new(learning_rate: impl Into<LearningRate>) -> Adam {
    Adam {
      betas: (0.9, 0.999),
      eps: 1e-8,
      bias_correction: false,
      weight_decay: 0.0,
      state: new_state(Some(learning_rate.into())),
    }
  }

  /// AdamW (python `optimizers.AdamW(learning_rate, weight_decay=...)`,
  /// default decay 0.01).
  pub fn adamw(learning_rate: impl Into<LearningRate>, weight_decay: f64) -> Adam {
    Adam {
      weight_decay,
      ..Adam::new(learning_rate)
    }
  }

  /// Set the betas (each in `[0, 1)`).
  pub fn with_betas(mut self, b1: f64, b2: f64) -> Result<Adam> {
    for (i, b) in [b1, b2].iter().enumerate() {
      if !(0.0..1.0).contains(b) {
        return Err(Error::InvalidArgument(format!(
          "Adam beta{} should be in [0, 1), {b} was provided instead",
          i + 1
        )));
      }
    }
    self.betas = (b1, b2);
    Ok(self)
  }

  /// Set epsilon (>= 0).
  pub fn with_eps(mut self, eps: f64) -> Result<Adam> {
    if eps < 0.0 {
      return Err(Error::InvalidArgument(format!(
        "Adam epsilon should be >=0, {eps} was provided instead"
      )));
    }
    self.eps = eps;
    Ok(self)
  }

  /// Enable bias correction.
  pub fn with_bias_correction(mut self, on: bool) -> Adam {
    self.bias_correction = on;
    self
  }
}

impl Rule for Adam {
  fn init_single(&self, p: &Array) -> Result<Vec<Array>> {
    Ok(vec![ops::zeros_like(p)?, ops::zeros_like(p)?])
  }
  fn apply_single(
    &self,
    g: &Array,
    p: &Array,
    st: &mut Vec<Array>,
    lr: Option<&Array>,
    step: &Array,
  ) -> Result<Array> {
    let lr = lr_of(lr)?;
    let dt = g.dtype();
    let p = if self.weight_decay != 0.0 {
      // AdamW: parameter * (1 - lr * weight_decay)
      let f = ops::subtract(
        &sc(1.0, lr.dtype())?,
        &ops::multiply(lr, &sc(self.weight_decay, lr.dtype())?)?,
      )?;
      ops::multiply(p, &f)?
    } else {
      p.clone()
    };
    let (b1, b2) = self.betas;
    let m = ops::add(
      &ops::multiply(&sc(b1, dt)?, &st[0])?,
      &ops::multiply(&sc(1.0 - b1, dt)?, g)?,
    )?;
    let v = ops::add(
      &ops::multiply(&sc(b2, dt)?, &st[1])?,
      &ops::multiply(&sc(1.0 - b2, dt)?, &ops::square(g)?)?,
    )?;
    st[0] = m.clone();
    st[1] = v.clone();
    let eps = sc(self.eps, dt)?;
    if self.bias_correction {
      let stp = step.clone();
      let p1 = ops::power(&Array::scalar(b1 as f32), &stp)?;
      let p2 = ops::power(&Array::scalar(b2 as f32), &stp)?;
      let c1 = ops::astype(
        &ops::divide(lr, &ops::subtract(&Array::scalar(1.0f32), &p1)?)?,
        dt,
      )?;
      let c2 = ops::astype(
        &ops::rsqrt(&ops::subtract(&Array::scalar(1.0f32), &p2)?)?,
        dt,
      )?;
      let num = ops::multiply(&c1, &m)?;
      let den = ops::add(&ops::multiply(&ops::sqrt(&v)?, &c2)?, &eps)?;
      ops::subtract(&p, &ops::divide(&num, &den)?)
    } else {
      ops::subtract(
        &p,
        &ops::divide(&ops::multiply(lr, &m)?, &ops::add(&ops::sqrt(&v)?, &eps)?)?,
      )
    }
  }
}
optimizer_impl!(Adam);

/// Lion (python `optimizers.Lion(learning_rate, betas, weight_decay)`).
#[derive(Clone)]
pub struct Lion {
  /// `(beta1, beta2)` (default `(0.9, 0.99)`).
  pub betas: (f64, f64),
  /// Decoupled weight decay.
  pub weight_decay: f64,
  state: OptimizerState,
}

impl Lion {
  /// Lion; betas in `[0, 1)`.
  pub fn new(
    learning_rate: impl Into<LearningRate>,
    betas: (f64, f64),
    weight_decay: f64,
  ) -> Result<Lion> {
    for (i, b) in [betas.0, betas.1].iter().enumerate() {
      if !(0.0..1.0).contains(b) {
        return Err(Error::InvalidArgument(format!(
          "Lion beta{} should be in [0, 1), {b} was provided instead",
          i + 1
        )));
      }
    }
    Ok(Lion {
      betas,
      weight_decay,
      state: new_state(Some(learning_rate.into())),
    })
  }
}

impl Rule for Lion {
  fn init_single(&self, p: &Array) -> Result<Vec<Array>> {
    Ok(vec![ops::zeros_like(p)?])
  }
  fn apply_single(
    &self,
    g: &Array,
    p: &Array,
    st: &mut Vec<Array>,
    lr: Option<&Array>,
    _step: &Array,
  ) -> Result<Array> {
    let lr = lr_of(lr)?;
    let dt = g.dtype();
    let (b1, b2) = self.betas;
    let c = ops::add(
      &ops::multiply(&sc(b1, dt)?, &st[0])?,
      &ops::multiply(&sc(1.0 - b1, dt)?, g)?,
    )?;
    st[0] = ops::add(
      &ops::multiply(&sc(b2, dt)?, &st[0])?,
      &ops::multiply(&sc(1.0 - b2, dt)?, g)?,
    )?;
    let mut p = p.clone();
    if self.weight_decay > 0.0 {
      let f = ops::subtract(
        &sc(1.0, lr.dtype())?,
        &ops::multiply(lr, &sc(self.weight_decay, lr.dtype())?)?,
      )?;
      p = ops::multiply(&f, &p)?;
    }
    ops::subtract(&p, &ops::multiply(lr, &ops::sign(&c)?)?)
  }
}
optimizer_impl!(Lion);

/// Adafactor (python `optimizers.Adafactor(learning_rate, eps,
/// clip_threshold, decay_rate, beta_1, weight_decay, scale_parameter,
/// relative_step, warmup_init)`): factored second moments for matrices.
#[derive(Clone)]
pub struct Adafactor {
  /// `(eps1, eps2)` (default `(1e-30, 1e-3)`).
  pub eps: (f64, f64),
  /// Update RMS clip (default 1).
  pub clip_threshold: f64,
  /// Second-moment decay exponent (default -0.8).
  pub decay_rate: f64,
  /// First-moment decay (`None`: no first moment).
  pub beta_1: Option<f64>,
  /// Weight decay.
  pub weight_decay: f64,
  /// Scale the step by the parameter RMS.
  pub scale_parameter: bool,
  /// Use `min(1e-2, 1/sqrt(step))` instead of the learning rate.
  pub relative_step: bool,
  /// Warmup for the relative step (`1e-6 * step`).
  pub warmup_init: bool,
  state: OptimizerState,
}

impl Adafactor {
  /// Adafactor with python's defaults (relative step, no learning rate).
  pub fn new() -> Adafactor {
    Adafactor {
      eps: (1e-30, 1e-3),
      clip_threshold: 1.0,
      decay_rate: -0.8,
      beta_1: None,
      weight_decay: 0.0,
      scale_parameter: true,
      relative_step: true,
      warmup_init: false,
      state: new_state(None),
    }
  }

  /// With a learning rate (only used when `relative_step` is false).
  pub fn with_learning_rate(mut self, lr: impl Into<LearningRate>) -> Adafactor {
    self.state.learning_rate = Some(lr.into());
    self
  }
}

impl Default for Adafactor {
  fn default() -> Self {
    Adafactor::new()
  }
}

fn rms(x: &Array) -> Result<Array> {
  ops::sqrt(&ops::mean(&ops::square(x)?, false)?)
}

impl Rule for Adafactor {
  fn init_single(&self, p: &Array) -> Result<Vec<Array>> {
    let s = p.shape();
    let dt = p.dtype();
    let mut v = if s.len() >= 2 {
      let row = &s[..s.len() - 1];
      let mut col = s[..s.len() - 2].to_vec();
      col.push(s[s.len() - 1]);
      vec![ops::zeros(row, dt)?, ops::zeros(&col, dt)?]
    } else {
      vec![ops::zeros_like(p)?]
    };
    if self.beta_1.is_some() {
      v.push(ops::zeros_like(p)?);
    }
    Ok(v)
  }

  fn apply_single(
    &self,
    g: &Array,
    p: &Array,
    st: &mut Vec<Array>,
    lr: Option<&Array>,
    step: &Array,
  ) -> Result<Array> {
    let factored = g.ndim() >= 2;
    let prms = rms(p)?;
    let dt = prms.dtype();
    let stp = step.clone();
    let rel = if self.relative_step {
      let min_step = if self.warmup_init {
        ops::multiply(&Array::scalar(1e-6f32), &stp)?
      } else {
        Array::scalar(1e-2f32)
      };
      ops::minimum(&min_step, &ops::rsqrt(&stp)?)?
    } else {
      lr_of(lr)?.clone()
    };
    let rel = ops::astype(&rel, dt)?;
    let learning_rate = if self.scale_parameter {
      ops::multiply(&ops::maximum(&sc(self.eps.1, dt)?, &prms)?, &rel)?
    } else {
      rel
    };
    let beta_2 = ops::subtract(
      &sc(1.0, dt)?,
      &ops::astype(
        &ops::power(&stp, &Array::scalar(self.decay_rate as f32))?,
        dt,
      )?,
    )?;
    let one_minus = ops::subtract(&sc(1.0, dt)?, &beta_2)?;
    let upd0 = ops::add(&ops::square(g)?, &sc(self.eps.0, g.dtype())?)?;
    let mut update = if factored {
      let row = ops::add(
        &ops::multiply(&beta_2, &st[0])?,
        &ops::multiply(&one_minus, &ops::mean_axis(&upd0, -1, false)?)?,
      )?;
      let col = ops::add(
        &ops::multiply(&beta_2, &st[1])?,
        &ops::multiply(&one_minus, &ops::mean_axis(&upd0, -2, false)?)?,
      )?;
      st[0] = row.clone();
      st[1] = col.clone();
      let r = ops::rsqrt(&ops::divide(&row, &ops::mean_axis(&row, -1, true)?)?)?;
      let c = ops::rsqrt(&col)?;
      let approx = ops::multiply(&ops::expand_dims(&r, -1)?, &ops::expand_dims(&c, -2)?)?;
      ops::multiply(&approx, g)?
    } else {
      let e = ops::add(
        &ops::multiply(&beta_2, &st[0])?,
        &ops::multiply(&one_minus, &upd0)?,
      )?;
      st[0] = e.clone();
      ops::multiply(&ops::rsqrt(&e)?, g)?
    };
    let r = ops::divide(&rms(&update)?, &sc(self.clip_threshold, dt)?)?;
    update = ops::divide(&update, &ops::maximum(&sc(1.0, dt)?, &r)?)?;
    update = ops::multiply(&learning_rate, &update)?;
    if let Some(b1) = self.beta_1 {
      let i = st.len() - 1;
      let ea = ops::add(
        &ops::multiply(&sc(b1, dt)?, &st[i])?,
        &ops::multiply(&sc(1.0 - b1, dt)?, &update)?,
      )?;
      st[i] = ea.clone();
      update = ea;
    }
    let mut p = p.clone();
    if self.weight_decay != 0.0 {
      let f = ops::multiply(&sc(-self.weight_decay, dt)?, &learning_rate)?;
      p = ops::add(&p, &ops::multiply(&p, &f)?)?;
    }
    ops::subtract(&p, &update)
  }
}
optimizer_impl!(Adafactor);
