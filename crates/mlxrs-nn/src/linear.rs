//! `Linear` (python `mlx.nn.Linear` / `nn.QuantizedLinear`, swift `Linear` /
//! `QuantizedLinear`): `y = x @ W.T + b`, dense or quantized, decided at load
//! time by whether `<path>.scales` is in the checkpoint (mlx-lm's
//! `class_predicate`).

use mlxrs_core::{Array, Dtype, Error, Result, ops};

use crate::module::{Frozen, Module, Weights, join};
use crate::quant::{QuantParams, Quantizable};
use crate::transposed::TransposedWeight;

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
  /// `weight.T` kept for GPU matmuls ([`Linear::keep_transposed`]).
  transposed: TransposedWeight,
}

/// A stacked projection kept for inference ([`Linear::stack_outputs`]):
/// put it among a layer's module fields and it forgets the stack whenever
/// the weights may change (`load`, `visit_mut`, quantization), while
/// holding no parameters of its own (the stacked layers keep theirs).
#[derive(Default)]
pub struct StackedLinear(Option<Linear>);

impl StackedLinear {
  /// The stacked layer, while it is current.
  pub fn get(&self) -> Option<&Linear> {
    self.0.as_ref()
  }

  /// Stack `parts` unless already stacked (`None` where they cannot be:
  /// see [`Linear::stack_outputs`]), its transpose kept ready for a GPU
  /// ([`Linear::keep_transposed`]).
  pub fn stack(&mut self, parts: &mut [&mut Linear]) -> Result<()> {
    if self.0.is_none() {
      self.0 = Linear::stack_outputs(parts)?;
      if let Some(l) = &mut self.0 {
        l.keep_transposed()?;
      }
    }
    Ok(())
  }

  /// Drop the stack (the parts' own weights stay valid).
  pub fn forget(&mut self) {
    self.0 = None;
  }
}

impl Module for StackedLinear {
  fn load(&mut self, _w: &mut crate::module::Weights, _prefix: &str) {
    self.forget();
  }
  fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Array)) {}
  fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.forget();
  }
  fn visit_quantizable_mut(
    &mut self,
    _prefix: &str,
    _f: &mut dyn FnMut(&str, &mut dyn crate::quant::Quantizable),
  ) {
    self.forget();
  }
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
      transposed: TransposedWeight::default(),
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
      transposed: TransposedWeight::default(),
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
      Some(_) => {
        let y = self.matmul(x)?;
        match &self.bias {
          Some(b) => ops::add(&y, b),
          None => Ok(y),
        }
      }
      None => match &self.bias {
        // One or two rows (a decode step): `matmul_t`'s gemv, then the bias.
        Some(b) if rows(x) <= 2 => ops::add(&self.matmul(x)?, b),
        Some(b) => ops::addmm(b, x, &self.transposed.of(&self.weight)?, 1.0, 1.0),
        None => self.matmul(x),
      },
    }
  }

  /// One layer computing the outputs of `parts` side by side: their
  /// weights (and scales, biases) stacked along the output axis, so that a
  /// single matmul replaces `parts.len()` (q/k/v, or gate/up: a decode
  /// step then launches fewer kernels). The stacked arrays are evaluated
  /// and each part's arrays become row slices of them (views sharing the
  /// stacked memory, not copies), so the model's size does not grow.
  ///
  /// `None` when the parts cannot share one matmul: fewer than two, an
  /// adapter or an all-reduce on one of them, different input widths,
  /// quantizations, dtypes, or bias presence.
  ///
  /// No Python twin: mlx-lm runs the projections separately.
  pub fn stack_outputs(parts: &mut [&mut Linear]) -> Result<Option<Linear>> {
    let Some(first) = parts.first() else {
      return Ok(None);
    };
    let (in_dims, quant, has_bias) = (first.in_dims, first.quant, first.bias.is_some());
    let (dtype, scaled, biased) = (
      first.weight.dtype(),
      first.scales.is_some(),
      first.biases.is_some(),
    );
    let compatible = parts.len() >= 2
      && parts.iter().all(|p| {
        p.adapter.is_none()
          && !p.all_reduce
          && p.in_dims == in_dims
          && p.quant == quant
          && p.bias.is_some() == has_bias
          && p.weight.dtype() == dtype
          && p.scales.is_some() == scaled
          && p.biases.is_some() == biased
          && p.weight.shape().first() == Some(&p.out_dims)
      });
    if !compatible {
      return Ok(None);
    }
    let stack = |get: &dyn Fn(&Linear) -> Option<Array>| -> Result<Option<Array>> {
      let xs: Option<Vec<Array>> = parts.iter().map(|p| get(p)).collect();
      xs.map(|xs| ops::concatenate_axis(&xs, 0)).transpose()
    };
    let weight = stack(&|p| Some(p.weight.clone()))?.expect("every part has a weight");
    let bias = stack(&|p| p.bias.clone())?;
    let scales = stack(&|p| p.scales.clone())?;
    let biases = stack(&|p| p.biases.clone())?;
    let mut all: Vec<Array> = vec![weight.clone()];
    all.extend(bias.iter().chain(&scales).chain(&biases).cloned());
    mlxrs_core::eval(&all)?;
    let out_dims = parts.iter().map(|p| p.out_dims).sum();
    // Each part now reads its rows of the stacked arrays.
    let rows = |a: &Array, start: i32, n: i32| -> Result<Array> {
      let s = a.shape();
      let mut lo = vec![0; s.len()];
      let mut hi = s.clone();
      lo[0] = start;
      hi[0] = start + n;
      ops::slice(a, &lo, &hi, &vec![1; s.len()])
    };
    let mut start = 0;
    let mut views = Vec::new();
    for p in parts.iter_mut() {
      let n = p.out_dims;
      p.transposed.clear();
      p.weight = rows(&weight, start, n)?;
      views.push(p.weight.clone());
      for (mine, stacked) in [
        (&mut p.bias, &bias),
        (&mut p.scales, &scales),
        (&mut p.biases, &biases),
      ] {
        if let Some(st) = stacked {
          *mine = Some(rows(st, start, n)?);
          views.extend(mine.clone());
        }
      }
      start += n;
    }
    mlxrs_core::eval(&views)?;
    Ok(Some(Linear {
      in_dims,
      out_dims,
      weight,
      has_bias,
      bias,
      quant,
      scales,
      biases,
      all_reduce: false,
      adapter: None,
      frozen: Frozen::default(),
      transposed: TransposedWeight::default(),
    }))
  }

  /// `x @ W.T` without the bias.
  fn matmul(&self, x: &Array) -> Result<Array> {
    match &self.quant {
      Some(q) => {
        let scales = self.scales.as_ref().ok_or_else(|| {
          Error::InvalidArgument("quantized Linear has no scales (not loaded)".into())
        })?;
        ops::quantized_matmul_t(
          x,
          &self.weight,
          scales,
          self.biases.as_ref(),
          q.group_size,
          q.bits,
          q.mode.as_str(),
        )
      }
      None => self.transposed.matmul_t(x, &self.weight),
    }
  }

  /// This layer as the projection a fused norm + matvec kernel ends with
  /// ([`mlxrs_core::fast::norm_matvec`]): its dense or affine-quantized
  /// weights; `None` with a bias, an adapter, an all-reduce or another
  /// quantization mode. No Python twin.
  pub fn as_projection(&self) -> Option<mlxrs_core::fast::Projection<'_>> {
    if self.bias.is_some() || self.adapter.is_some() || self.all_reduce {
      return None;
    }
    match (&self.quant, &self.scales, &self.biases) {
      (None, _, _) => Some(mlxrs_core::fast::Projection::Dense(&self.weight)),
      (Some(q), Some(scales), Some(biases)) if q.mode == crate::quant::QuantMode::Affine => {
        Some(mlxrs_core::fast::Projection::Affine {
          weight: &self.weight,
          scales,
          biases,
          bits: q.bits,
          group_size: q.group_size,
        })
      }
      _ => None,
    }
  }

  /// Keep `weight.T` ready as an evaluated view (no copy) for the matmuls
  /// of a dense layer on a GPU, so an inference graph has no transpose
  /// node per call; nothing on the CPU or for a quantized layer. Used
  /// while the layer holds that same weight; the loaders call it through
  /// the models' `fuse_projections`. No Python twin.
  pub fn keep_transposed(&mut self) -> Result<()> {
    if self.quant.is_some() {
      self.transposed.clear();
      return Ok(());
    }
    self.transposed.keep(&self.weight)
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
    self.transposed.clear();
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
    self.transposed.clear();
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
    w.record_layer(crate::lora::AdaptableLayer {
      path: prefix.to_string(),
      kind: crate::lora::AdapterKind::Linear,
      shape: vec![self.out_dims, self.in_dims],
      quantized: self.quant.is_some(),
    });
    self.adapter = crate::lora::LinearAdapter::load(w, prefix, self.in_dims, self.out_dims);
  }

  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.transposed.clear();
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
      ad.visit_tensors_mut(prefix, f);
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
      ad.visit_tensors(prefix, &mut |k, a| f(k, a, false));
    }
  }

  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    self.transposed.clear();
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
      ad.visit_tensors(prefix, f);
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

#[cfg(test)]
mod stack_tests {
  use super::*;
  use crate::quant::QuantParams;

  fn layer(i: i32, o: i32, bias: bool, seed: u64) -> Result<Linear> {
    let k = mlxrs_core::random::key(seed)?;
    Linear::init(i, o, bias, Some(&k))
  }

  fn close(a: &Array, b: &Array) -> Result<f32> {
    let d = ops::abs(&ops::subtract(a, b)?)?;
    ops::max(&d, false)?.item::<f32>()
  }

  /// A stacked layer computes its parts' outputs side by side (dense, with
  /// and without bias, and 4-bit), and the parts still compute what they
  /// did, now from views of the stacked arrays.
  #[test]
  fn stacked_outputs_equal_the_parts() -> Result<()> {
    let x = mlxrs_core::random::normal(&[3, 32], Dtype::Float32, 0.0, 1.0, None)?;
    for (bias, quant) in [(false, false), (true, false), (false, true), (true, true)] {
      let mut parts = vec![
        layer(32, 48, bias, 1)?,
        layer(32, 16, bias, 2)?,
        layer(32, 16, bias, 3)?,
      ];
      if quant {
        let q = QuantParams::new(Some(32), Some(4), "affine")?;
        for p in &mut parts {
          p.quantize(&q)?;
        }
      }
      let before: Vec<Array> = parts.iter().map(|p| p.forward(&x)).collect::<Result<_>>()?;
      let mut refs: Vec<&mut Linear> = parts.iter_mut().collect();
      let st = Linear::stack_outputs(&mut refs)?.expect("compatible parts stack");
      assert_eq!((st.in_dims, st.out_dims), (32, 80));
      let y = st.forward(&x)?;
      let want = ops::concatenate_axis(&before, -1)?;
      assert_eq!(y.shape(), vec![3, 80]);
      assert!(close(&y, &want)? < 1e-5, "bias {bias} quant {quant}");
      // (Float32 rounding only: an evaluated quantized view may take the CPU
      // quantized kernel where the lazy original took MLX's op.)
      for (p, b) in parts.iter().zip(&before) {
        let d = close(&p.forward(&x)?, b)?;
        assert!(d < 1e-5, "part changed by {d} (bias {bias} quant {quant})");
      }
    }
    Ok(())
  }

  /// Parts that cannot share a matmul are left alone.
  #[test]
  fn incompatible_parts_do_not_stack() -> Result<()> {
    let (mut a, mut b) = (layer(32, 16, false, 1)?, layer(32, 16, true, 2)?);
    assert!(Linear::stack_outputs(&mut [&mut a, &mut b])?.is_none());
    let (mut a, mut b) = (layer(32, 16, false, 1)?, layer(24, 16, false, 2)?);
    assert!(Linear::stack_outputs(&mut [&mut a, &mut b])?.is_none());
    let (mut a, mut b) = (layer(32, 16, false, 1)?, layer(32, 16, false, 2)?);
    b.quantize(&QuantParams::new(Some(32), Some(4), "affine")?)?;
    assert!(Linear::stack_outputs(&mut [&mut a, &mut b])?.is_none());
    let mut a = layer(32, 16, false, 1)?;
    assert!(Linear::stack_outputs(&mut [&mut a])?.is_none());
    Ok(())
  }

  /// The cached stack is dropped by anything that may change weights.
  #[test]
  fn stacked_linear_forgets_on_weight_changes() -> Result<()> {
    let (mut a, mut b) = (layer(8, 4, false, 1)?, layer(8, 4, false, 2)?);
    let mut s = StackedLinear::default();
    s.stack(&mut [&mut a, &mut b])?;
    assert!(s.get().is_some());
    s.visit_mut("x", &mut |_, _, _| {});
    assert!(s.get().is_none());
    s.stack(&mut [&mut a, &mut b])?;
    s.visit_quantizable_mut("x", &mut |_, _| {});
    assert!(s.get().is_none());
    s.stack(&mut [&mut a, &mut b])?;
    s.load(&mut crate::module::Weights::new(Default::default()), "x");
    assert!(s.get().is_none());
    let mut n = 0;
    s.visit("x", &mut |_, _| n += 1);
    assert_eq!(n, 0, "no parameters of its own");
    Ok(())
  }
}
