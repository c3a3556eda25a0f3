//! `Linear` (python `mlx.nn.Linear` / `nn.QuantizedLinear`, swift `Linear` /
//! `QuantizedLinear`): `y = x @ W.T + b`, dense or quantized, decided at load
//! time by whether `<path>.scales` is in the checkpoint (mlx-lm's
//! `class_predicate`).

use mlxrs_core::{Array, Dtype, Error, Result, ops};

use crate::module::{Frozen, Module, Weights, join};
use crate::quant::{QuantParams, Quantizable};

/// A linear layer, dense or quantized.
pub struct Linear {
  /// Input features.
  pub in_dims: i32,
  /// Output features.
  pub out_dims: i32,
  /// `[out, in]` (dense) or packed `[out, in * bits / 32]` uint32 (quantized).
  pub weight: Array,
  /// `[out]`, when the layer has a bias.
  pub bias: Option<Array>,
  has_bias: bool,
  /// Quantization, when loaded from a quantized checkpoint.
  pub quant: Option<QuantParams>,
  /// Per-group scales (quantized only).
  pub scales: Option<Array>,
  /// Per-group biases (quantized `affine` only).
  pub biases: Option<Array>,
  /// Sum the matmul's output over the global distributed group before the
  /// bias is added (python `mlx.nn.ShardedToAllLinear` /
  /// `QuantizedShardedToAllLinear`): this rank holds a column slice of the
  /// weight and its share of the input features. Set at load time from
  /// [`Weights::sharded_to_all`].
  pub all_reduce: bool,
  /// A low-rank adapter on top of the layer (mlx-lm's `LoRALinear` /
  /// `DoRALinear` wrapping it), attached when the loaded weights hold
  /// `<path>.lora_a` (see [`crate::lora::AdapterSettings`]).
  pub adapter: Option<Box<crate::lora::LinearAdapter>>,
  frozen: Frozen,
}

/// `uniform(-scale, scale, shape)` from `key` (or the global key), float32.
pub(crate) fn uniform_init(shape: &[i32], scale: f32, key: Option<&Array>) -> Result<Array> {
  let lo = Array::scalar(-scale);
  let hi = Array::scalar(scale);
  mlxrs_core::random::uniform(&lo, &hi, shape, Dtype::Float32, key)
}

impl Linear {
  /// An unloaded layer of the given shape (python `nn.Linear(in, out, bias)`).
  pub fn new(in_dims: i32, out_dims: i32, bias: bool) -> Linear {
    Linear {
      in_dims,
      out_dims,
      weight: Array::scalar(0.0f32),
      bias: None,
      has_bias: bias,
      quant: None,
      scales: None,
      biases: None,
      all_reduce: false,
      adapter: None,
      frozen: Frozen::default(),
    }
  }

  /// A freshly initialised layer, as python `nn.Linear(in, out, bias)`
  /// builds it: weight and bias `uniform(-1/sqrt(in), 1/sqrt(in))`, drawn
  /// from `key` (or MLX's global key).
  pub fn init(in_dims: i32, out_dims: i32, bias: bool, key: Option<&Array>) -> Result<Linear> {
    if in_dims <= 0 || out_dims <= 0 {
      return Err(Error::InvalidArgument(format!(
        "Linear: dims must be positive, got {in_dims} -> {out_dims}"
      )));
    }
    let scale = (1.0 / in_dims as f32).sqrt();
    let (kw, kb) = match key {
      Some(k) => {
        let (a, b) = mlxrs_core::random::split(k)?;
        (Some(a), Some(b))
      }
      None => (None, None),
    };
    let weight = uniform_init(&[out_dims, in_dims], scale, kw.as_ref())?;
    let b = if bias {
      Some(uniform_init(&[out_dims], scale, kb.as_ref())?)
    } else {
      None
    };
    Ok(Linear::from_weights(weight, b))
  }

  /// A dense layer from explicit tensors (`weight` is `[out, in]`).
  pub fn from_weights(weight: Array, bias: Option<Array>) -> Linear {
    let s = weight.shape();
    let (out_dims, in_dims) = (
      s.first().copied().unwrap_or(0),
      s.get(1).copied().unwrap_or(0),
    );
    Linear {
      in_dims,
      out_dims,
      has_bias: bias.is_some(),
      weight,
      bias,
      quant: None,
      scales: None,
      biases: None,
      all_reduce: false,
      adapter: None,
      frozen: Frozen::default(),
    }
  }

  /// `x @ W.T + b` over the last axis of `x` (plus the adapter's update
  /// when one is attached).
  pub fn forward(&self, x: &Array) -> Result<Array> {
    match &self.adapter {
      Some(ad) => ad.forward(self, x),
      None => self.forward_base(x),
    }
  }

  /// `x @ W.T + b` of the base layer alone, ignoring any adapter (with
  /// [`Linear::all_reduce`]: `all_sum(x @ W.T) + b`).
  pub fn forward_base(&self, x: &Array) -> Result<Array> {
    if self.all_reduce {
      let y = self.matmul(x)?;
      let y = mlxrs_core::distributed::all_sum(&y, None)?;
      return match &self.bias {
        Some(b) => ops::add(&y, b),
        None => Ok(y),
      };
    }
    match &self.quant {
      Some(q) => {
        let scales = self.scales.as_ref().ok_or_else(|| {
          Error::InvalidArgument("quantized Linear has no scales (not loaded)".into())
        })?;
        let y = ops::quantized_matmul(
          x,
          &self.weight,
          scales,
          self.biases.as_ref(),
          true,
          Some(q.group_size),
          Some(q.bits),
          q.mode.as_str(),
        )?;
        match &self.bias {
          Some(b) => ops::add(&y, b),
          None => Ok(y),
        }
      }
      None => match &self.bias {
        // One or two rows (a decode step): `matmul_t`'s gemv, then the bias.
        Some(b) if rows(x) <= 2 => ops::add(&ops::matmul_t(x, &self.weight)?, b),
        Some(b) => ops::addmm(b, x, &ops::transpose(&self.weight)?, 1.0, 1.0),
        None => ops::matmul_t(x, &self.weight),
      },
    }
  }

  /// `x @ W.T` without the bias.
  fn matmul(&self, x: &Array) -> Result<Array> {
    match &self.quant {
      Some(q) => {
        let scales = self.scales.as_ref().ok_or_else(|| {
          Error::InvalidArgument("quantized Linear has no scales (not loaded)".into())
        })?;
        ops::quantized_matmul(
          x,
          &self.weight,
          scales,
          self.biases.as_ref(),
          true,
          Some(q.group_size),
          Some(q.bits),
          q.mode.as_str(),
        )
      }
      None => ops::matmul_t(x, &self.weight),
    }
  }

  /// The weight as a dense `[out, in]` matrix (dequantized when quantized).
  pub fn dense_weight(&self) -> Result<Array> {
    match &self.quant {
      None => Ok(self.weight.clone()),
      Some(q) => {
        let scales = self.scales.as_ref().ok_or_else(|| {
          Error::InvalidArgument("quantized Linear has no scales (not loaded)".into())
        })?;
        ops::dequantize(
          &self.weight,
          scales,
          self.biases.as_ref(),
          Some(q.group_size),
          Some(q.bits),
          q.mode.as_str(),
          None,
          None,
        )
      }
    }
  }

  /// Quantize this (dense, loaded) layer in place (python
  /// `nn.QuantizedLinear.from_linear`).
  pub fn quantize(&mut self, q: &QuantParams) -> Result<()> {
    if self.quant.is_some() {
      return Ok(());
    }
    let parts = ops::quantize(
      &self.weight,
      Some(q.group_size),
      Some(q.bits),
      q.mode.as_str(),
      None,
    )?;
    let mut it = parts.into_iter();
    self.weight = it
      .next()
      .ok_or_else(|| mlxrs_core::Error::Mlx("quantize returned nothing".into()))?;
    self.scales = it.next();
    self.biases = if q.has_biases() { it.next() } else { None };
    self.quant = Some(*q);
    self.freeze_all();
    Ok(())
  }

  fn freeze_all(&mut self) {
    for n in ["weight", "scales", "biases", "bias"] {
      self.frozen.set(n, true);
    }
  }
}

impl Quantizable for Linear {
  fn kind(&self) -> &'static str {
    "Linear"
  }
  fn dense_shape(&self) -> Vec<i32> {
    vec![self.out_dims, self.in_dims]
  }
  fn quantization(&self) -> Option<&QuantParams> {
    self.quant.as_ref()
  }
  fn weight(&self) -> &Array {
    &self.weight
  }
  fn quantize(&mut self, q: &QuantParams) -> Result<()> {
    Linear::quantize(self, q)
  }
}

/// Load a possibly-quantized weight for a layer whose dense weight is
/// `[rows, cols]`: returns (weight, scales, biases, params). Shared by
/// [`Linear`] and [`crate::Embedding`].
pub(crate) fn load_maybe_quantized(
  w: &mut Weights,
  prefix: &str,
  rows: i32,
  cols: i32,
) -> (Array, Option<Array>, Option<Array>, Option<QuantParams>) {
  match w
    .quant_for(prefix)
    .filter(|q| cols % q.group_size.max(1) == 0)
  {
    Some(q) => {
      let packed = cols * q.bits / 32;
      let groups = cols / q.group_size.max(1);
      let weight = w.take_packed(&join(prefix, "weight"), &[rows, packed]);
      let scales = w.take_raw(&join(prefix, "scales"), Some(&[rows, groups]));
      let biases = if q.has_biases() {
        Some(w.take_raw(&join(prefix, "biases"), Some(&[rows, groups])))
      } else {
        None
      };
      (weight, Some(scales), biases, Some(q))
    }
    None => (
      w.take(&join(prefix, "weight"), Some(&[rows, cols])),
      None,
      None,
      None,
    ),
  }
}

impl Module for Linear {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let (weight, scales, biases, quant) =
      load_maybe_quantized(w, prefix, self.out_dims, self.in_dims);
    self.weight = weight;
    self.scales = scales;
    self.biases = biases;
    self.quant = quant;
    self.all_reduce = w.is_sharded_to_all(prefix);
    self.bias = if self.has_bias {
      Some(w.take(&join(prefix, "bias"), Some(&[self.out_dims])))
    } else {
      None
    };
    if self.quant.is_some() {
      self.freeze_all();
    }
    self.adapter = crate::lora::LinearAdapter::load(w, prefix, self.in_dims, self.out_dims);
  }

  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.frozen.visit_mut(prefix, "weight", &mut self.weight, f);
    if let Some(s) = &mut self.scales {
      self.frozen.visit_mut(prefix, "scales", s, f);
    }
    if let Some(b) = &mut self.biases {
      self.frozen.visit_mut(prefix, "biases", b, f);
    }
    if let Some(b) = &mut self.bias {
      self.frozen.visit_mut(prefix, "bias", b, f);
    }
    if let Some(ad) = &mut self.adapter {
      ad.visit_mut(prefix, f);
    }
  }

  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.frozen.visit(prefix, "weight", &self.weight, f);
    if let Some(s) = &self.scales {
      self.frozen.visit(prefix, "scales", s, f);
    }
    if let Some(b) = &self.biases {
      self.frozen.visit(prefix, "biases", b, f);
    }
    if let Some(b) = &self.bias {
      self.frozen.visit(prefix, "bias", b, f);
    }
    if let Some(ad) = &self.adapter {
      ad.visit(prefix, &mut |k, a| f(k, a, false));
    }
  }

  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    f(prefix, self);
  }

  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&join(prefix, "weight"), &self.weight);
    if let Some(s) = &self.scales {
      f(&join(prefix, "scales"), s);
    }
    if let Some(b) = &self.biases {
      f(&join(prefix, "biases"), b);
    }
    if let Some(b) = &self.bias {
      f(&join(prefix, "bias"), b);
    }
    if let Some(ad) = &self.adapter {
      ad.visit(prefix, f);
    }
  }
}

/// Rows of `x` `[..., K]` (the product of its leading axes).
fn rows(x: &Array) -> usize {
  let s = x.shape();
  s[..s.len().saturating_sub(1)]
    .iter()
    .map(|&d| d.max(0) as usize)
    .product()
}
