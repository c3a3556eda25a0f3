//! Normalization layers: `RmsNorm` (python `mlx.nn.RMSNorm`) and `LayerNorm`
//! (`mlx.nn.LayerNorm`), both on MLX's fused `mx.fast` kernels, plus
//! `GroupNorm` (`nn.GroupNorm`) and `BatchNorm` (`nn.BatchNorm`).

use mlxrs_core::{Array, Dtype, Error, Result, fast, ops};

use crate::module::{Frozen, Module, Weights, join};

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
  frozen: Frozen,
}

impl RmsNorm {
  /// An unloaded norm.
  pub fn new(dims: i32, eps: f32) -> RmsNorm {
    RmsNorm {
      dims,
      weight: Array::scalar(1.0f32),
      eps,
      plus_one: false,
      frozen: Frozen::default(),
    }
  }

  /// Gemma's variant: scale by `1 + weight`.
  pub fn new_plus_one(dims: i32, eps: f32) -> RmsNorm {
    RmsNorm {
      plus_one: true,
      ..RmsNorm::new(dims, eps)
    }
  }

  /// A norm with weight ones (python `nn.RMSNorm(dims, eps)`).
  pub fn init(dims: i32, eps: f32) -> Result<RmsNorm> {
    let mut n = RmsNorm::new(dims, eps);
    n.weight = ops::ones(&[dims], Dtype::Float32)?;
    Ok(n)
  }

  /// Normalize over the last axis.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    fast::rms_norm(x, Some(&self.weight), self.eps)
  }

  /// A pre-norm layer's input for one decoded row as one kernel: `(h, y)`
  /// with `h = x + delta` (`x` without `delta`) and `y = proj(norm(h))`, or
  /// with `swiglu` and a stacked gate | up `proj`, `y = silu(gate) * up`
  /// (python: `h = x + delta; y = proj(norm(h))`; see
  /// [`fast::norm_matvec`]). `None` where the fused kernel does not apply
  /// (the caller runs these ops itself).
  pub fn fused_with(
    &self,
    x: &Array,
    delta: Option<&Array>,
    proj: &crate::Linear,
    swiglu: bool,
  ) -> Result<Option<(Array, Array)>> {
    match proj.as_projection() {
      Some(p) => fast::norm_matvec(x, delta, &self.weight, self.eps, p, swiglu),
      None => Ok(None),
    }
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
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.frozen.visit_mut(prefix, "weight", &mut self.weight, f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.frozen.visit(prefix, "weight", &self.weight, f);
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
  frozen: Frozen,
}

impl LayerNorm {
  /// An unloaded norm (python `nn.LayerNorm(dims, eps, affine, bias)`).
  pub fn new(dims: i32, eps: f32, affine: bool, bias: bool) -> LayerNorm {
    LayerNorm {
      dims,
      weight: None,
      bias: None,
      eps,
      affine,
      has_bias: bias,
      frozen: Frozen::default(),
    }
  }

  /// A norm with weight ones and bias zeros (python `nn.LayerNorm(dims,
  /// eps, affine, bias)`).
  pub fn init(dims: i32, eps: f32, affine: bool, bias: bool) -> Result<LayerNorm> {
    let mut n = LayerNorm::new(dims, eps, affine, bias);
    if affine {
      n.weight = Some(ops::ones(&[dims], Dtype::Float32)?);
      if bias {
        n.bias = Some(ops::zeros(&[dims], Dtype::Float32)?);
      }
    }
    Ok(n)
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
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    affine_visit_mut(
      &mut self.frozen,
      &mut self.weight,
      &mut self.bias,
      prefix,
      f,
    );
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    affine_visit(&self.frozen, &self.weight, &self.bias, prefix, f);
  }
}

fn affine_visit_mut(
  frozen: &mut Frozen,
  weight: &mut Option<Array>,
  bias: &mut Option<Array>,
  prefix: &str,
  f: &mut dyn FnMut(&str, &mut Array, &mut bool),
) {
  if let Some(a) = weight {
    frozen.visit_mut(prefix, "weight", a, f);
  }
  if let Some(a) = bias {
    frozen.visit_mut(prefix, "bias", a, f);
  }
}

fn affine_visit(
  frozen: &Frozen,
  weight: &Option<Array>,
  bias: &Option<Array>,
  prefix: &str,
  f: &mut dyn FnMut(&str, &Array, bool),
) {
  if let Some(a) = weight {
    frozen.visit(prefix, "weight", a, f);
  }
  if let Some(a) = bias {
    frozen.visit(prefix, "bias", a, f);
  }
}

fn scalar(v: f64) -> Array {
  Array::scalar(v as f32)
}

/// `weight * x + bias` when affine.
fn apply_affine(x: Array, weight: &Option<Array>, bias: &Option<Array>) -> Result<Array> {
  let x = match weight {
    Some(w) => ops::multiply(w, &x)?,
    None => x,
  };
  match bias {
    Some(b) => ops::add(&x, b),
    None => Ok(x),
  }
}

/// Group normalization over the features (last axis) split into groups,
/// and the spatial axes between batch and features (python
/// `nn.GroupNorm(num_groups, dims, eps, affine, pytorch_compatible)`).
pub struct GroupNorm {
  /// Number of groups.
  pub num_groups: i32,
  /// Features.
  pub dims: i32,
  /// Epsilon.
  pub eps: f32,
  /// PyTorch's grouping (contiguous feature blocks) instead of MLX's
  /// default (strided: feature `i` is in group `i % num_groups`).
  pub pytorch_compatible: bool,
  /// Scale `[dims]` (affine only).
  pub weight: Option<Array>,
  /// Shift `[dims]` (affine only).
  pub bias: Option<Array>,
  affine: bool,
  frozen: Frozen,
}

impl GroupNorm {
  /// A norm with weight ones / bias zeros when `affine`. Errors as python
  /// does for a non-positive group count or features not divisible by it.
  pub fn new(
    num_groups: i32,
    dims: i32,
    eps: f32,
    affine: bool,
    pytorch_compatible: bool,
  ) -> Result<GroupNorm> {
    if eps <= 0.0 {
      return Err(Error::InvalidArgument(format!(
        "GroupNorm: eps must be positive, got {eps}"
      )));
    }
    if num_groups <= 0 || dims <= 0 || dims % num_groups != 0 {
      return Err(Error::InvalidArgument(format!(
        "GroupNorm: {dims} features must be positive and divisible by {num_groups} groups"
      )));
    }
    let (weight, bias) = if affine {
      (
        Some(ops::ones(&[dims], Dtype::Float32)?),
        Some(ops::zeros(&[dims], Dtype::Float32)?),
      )
    } else {
      (None, None)
    };
    Ok(GroupNorm {
      num_groups,
      dims,
      eps,
      pytorch_compatible,
      weight,
      bias,
      affine,
      frozen: Frozen::default(),
    })
  }

  /// Normalize `x` `[B, ..., dims]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let s = x.shape();
    if s.len() < 2 || s[s.len() - 1] != self.dims {
      return Err(Error::InvalidArgument(format!(
        "GroupNorm: expected input [B, ..., {}], got {s:?}",
        self.dims
      )));
    }
    let (b, g) = (s[0], self.num_groups);
    let gs = self.dims / g;
    let y = if self.pytorch_compatible {
      let t = ops::reshape(x, &[b, -1, g, gs])?;
      let t = ops::reshape(&ops::transpose_axes(&t, &[0, 2, 1, 3])?, &[b, g, -1])?;
      let t = fast::layer_norm(&t, None, None, self.eps)?;
      let t = ops::reshape(&t, &[b, g, -1, gs])?;
      ops::reshape(&ops::transpose_axes(&t, &[0, 2, 1, 3])?, &s)?
    } else {
      let t = ops::reshape(x, &[b, -1, g])?;
      let mean = ops::mean_axis(&t, 1, true)?;
      let var = ops::var_axis(&t, 1, true, 0)?;
      let eps = Array::scalar_as(self.eps as f64, var.dtype())?;
      let t = ops::multiply(
        &ops::subtract(&t, &mean)?,
        &ops::rsqrt(&ops::add(&var, &eps)?)?,
      )?;
      ops::reshape(&t, &s)?
    };
    apply_affine(y, &self.weight, &self.bias)
  }
}

impl Module for GroupNorm {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    if self.affine {
      self.weight = Some(w.take(&join(prefix, "weight"), Some(&[self.dims])));
      self.bias = Some(w.take(&join(prefix, "bias"), Some(&[self.dims])));
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.visit_frozen(prefix, &mut |k, a, _| f(k, a));
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    affine_visit_mut(
      &mut self.frozen,
      &mut self.weight,
      &mut self.bias,
      prefix,
      f,
    );
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    affine_visit(&self.frozen, &self.weight, &self.bias, prefix, f);
  }
}

/// Batch normalization over `NC`, `NLC` or `NHWC` inputs (python
/// `nn.BatchNorm(num_features, eps, momentum, affine,
/// track_running_stats)`). In evaluation mode (the default after loading
/// weights; python starts in training mode) the running statistics are
/// used; in training mode the batch's, and [`BatchNorm::forward_mut`]
/// also updates the running statistics. `running_mean` / `running_var`
/// are parameters (loaded and saved) that are always frozen.
pub struct BatchNorm {
  /// Features (last axis).
  pub num_features: i32,
  /// Epsilon.
  pub eps: f32,
  /// Running-statistics momentum.
  pub momentum: f32,
  /// Scale (affine only).
  pub weight: Option<Array>,
  /// Shift (affine only).
  pub bias: Option<Array>,
  /// Running mean (when tracking).
  pub running_mean: Option<Array>,
  /// Running variance (when tracking).
  pub running_var: Option<Array>,
  /// Training mode.
  pub training: bool,
  affine: bool,
  frozen: Frozen,
}

impl BatchNorm {
  /// A norm with weight ones / bias zeros, running mean zeros / var ones,
  /// in evaluation mode.
  pub fn new(
    num_features: i32,
    eps: f32,
    momentum: f32,
    affine: bool,
    track_running_stats: bool,
  ) -> Result<BatchNorm> {
    if eps <= 0.0 || num_features <= 0 {
      return Err(Error::InvalidArgument(format!(
        "BatchNorm: eps ({eps}) and num_features ({num_features}) must be positive"
      )));
    }
    let n = [num_features];
    let (weight, bias) = if affine {
      (
        Some(ops::ones(&n, Dtype::Float32)?),
        Some(ops::zeros(&n, Dtype::Float32)?),
      )
    } else {
      (None, None)
    };
    let (running_mean, running_var) = if track_running_stats {
      (
        Some(ops::zeros(&n, Dtype::Float32)?),
        Some(ops::ones(&n, Dtype::Float32)?),
      )
    } else {
      (None, None)
    };
    let mut frozen = Frozen::default();
    frozen.set("running_mean", true);
    frozen.set("running_var", true);
    Ok(BatchNorm {
      num_features,
      eps,
      momentum,
      weight,
      bias,
      running_mean,
      running_var,
      training: false,
      affine,
      frozen,
    })
  }

  fn stats(&self, x: &Array, ddof: i32) -> Result<(Array, Array)> {
    let axes: Vec<i32> = (0..x.ndim() as i32 - 1).collect();
    Ok((
      ops::mean_axes(x, &axes, false)?,
      ops::var_axes(x, &axes, false, ddof)?,
    ))
  }

  fn check(&self, x: &Array) -> Result<()> {
    let nd = x.ndim();
    if !(2..=4).contains(&nd) || x.dim(-1) != Some(self.num_features) {
      return Err(Error::InvalidArgument(format!(
        "BatchNorm: expected a 2-4 dimensional input with {} features last, got {:?}",
        self.num_features,
        x.shape()
      )));
    }
    if self.training && x.shape()[..nd - 1].iter().product::<i32>() == 1 {
      return Err(Error::InvalidArgument(
        "BatchNorm training requires more than one value per channel".into(),
      ));
    }
    Ok(())
  }

  fn normalize(&self, x: &Array, mean: &Array, var: &Array) -> Result<Array> {
    let eps = Array::scalar_as(self.eps as f64, var.dtype())?;
    let y = ops::multiply(
      &ops::subtract(x, mean)?,
      &ops::rsqrt(&ops::add(var, &eps)?)?,
    )?;
    apply_affine(y, &self.weight, &self.bias)
  }

  /// Normalize `x` (no running-statistics update).
  pub fn forward(&self, x: &Array) -> Result<Array> {
    self.check(x)?;
    match (&self.running_mean, &self.running_var, self.training) {
      (Some(m), Some(v), false) => self.normalize(x, m, v),
      _ => {
        let (m, v) = self.stats(x, 0)?;
        self.normalize(x, &m, &v)
      }
    }
  }

  /// Normalize `x`; in training mode with running statistics, also update
  /// them with `momentum` (unbiased batch variance), as python's
  /// `__call__` does.
  pub fn forward_mut(&mut self, x: &Array) -> Result<Array> {
    self.check(x)?;
    if self.training {
      if let (Some(rm), Some(rv)) = (&self.running_mean, &self.running_var) {
        let (mean, _) = self.stats(x, 0)?;
        let (_, uvar) = self.stats(x, 1)?;
        let mu = self.momentum as f64;
        let nm = ops::add(
          &ops::multiply(&scalar(1.0 - mu), rm)?,
          &ops::multiply(&scalar(mu), &mean)?,
        )?;
        let nv = ops::add(
          &ops::multiply(&scalar(1.0 - mu), rv)?,
          &ops::multiply(&scalar(mu), &uvar)?,
        )?;
        self.running_mean = Some(nm);
        self.running_var = Some(nv);
      }
    }
    self.forward(x)
  }
}

impl Module for BatchNorm {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let n = [self.num_features];
    if self.affine {
      self.weight = Some(w.take(&join(prefix, "weight"), Some(&n)));
      self.bias = Some(w.take(&join(prefix, "bias"), Some(&n)));
    }
    if self.running_mean.is_some() {
      self.running_mean = Some(w.take(&join(prefix, "running_mean"), Some(&n)));
      self.running_var = Some(w.take(&join(prefix, "running_var"), Some(&n)));
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.visit_frozen(prefix, &mut |k, a, _| f(k, a));
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    affine_visit_mut(
      &mut self.frozen,
      &mut self.weight,
      &mut self.bias,
      prefix,
      f,
    );
    if let Some(a) = &mut self.running_mean {
      self.frozen.visit_mut(prefix, "running_mean", a, f);
    }
    if let Some(a) = &mut self.running_var {
      self.frozen.visit_mut(prefix, "running_var", a, f);
    }
    // python's BatchNorm.unfreeze re-freezes the running statistics.
    self.frozen.set("running_mean", true);
    self.frozen.set("running_var", true);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    affine_visit(&self.frozen, &self.weight, &self.bias, prefix, f);
    if let Some(a) = &self.running_mean {
      self.frozen.visit(prefix, "running_mean", a, f);
    }
    if let Some(a) = &self.running_var {
      self.frozen.visit(prefix, "running_var", a, f);
    }
  }
  fn set_training(&mut self, training: bool) {
    self.training = training;
  }
}
