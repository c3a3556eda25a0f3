//! The module system: [`Module`] (python `mlx.nn.Module`'s parameter tree)
//! and [`Weights`], the strict loader behind `Module::load`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mlxrs_core::{Array, Dtype, Error, Result};

use crate::quant::{QuantConfig, QuantParams};

/// `prefix.name`, or `name` when the prefix is empty (mlx's dotted
/// parameter paths: `model.layers.0.self_attn.q_proj.weight`).
pub fn join(prefix: &str, name: &str) -> String {
  if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// A tree of named parameters. Python: `mlx.nn.Module` (`parameters()`,
/// `load_weights`, `update`); swift: `Module`.
pub trait Module {
  /// Take this module's parameters out of `w`, under `prefix`.
  fn load(&mut self, w: &mut Weights, prefix: &str);
  /// Visit every parameter as `(path, array)`.
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array));

  /// All parameters by path (python `tree_flatten(model.parameters())`).
  fn parameters(&self) -> BTreeMap<String, Array> {
    let mut out = BTreeMap::new();
    self.visit("", &mut |k, a| {
      out.insert(k.to_string(), a.clone());
    });
    out
  }

  /// Total number of parameters (elements).
  fn num_parameters(&self) -> usize {
    let mut n = 0;
    self.visit("", &mut |_, a| n += a.size());
    n
  }

  /// Replace parameters from a flat map, strictly (python
  /// `model.load_weights(items, strict=True)`): missing, unexpected or
  /// wrong-shape entries are one error listing them all.
  fn load_weights(&mut self, weights: HashMap<String, Array>) -> Result<()>
  where
    Self: Sized,
  {
    let mut w = Weights::new(weights);
    self.load(&mut w, "");
    w.finish()
  }
}

impl<T: Module> Module for Vec<T> {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    for (i, m) in self.iter_mut().enumerate() {
      m.load(w, &join(prefix, &i.to_string()));
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    for (i, m) in self.iter().enumerate() {
      m.visit(&join(prefix, &i.to_string()), f);
    }
  }
}

impl<T: Module> Module for Option<T> {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    if let Some(m) = self {
      m.load(w, prefix);
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    if let Some(m) = self {
      m.visit(prefix, f);
    }
  }
}

impl<T: Module> Module for Box<T> {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    (**self).load(w, prefix)
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    (**self).visit(prefix, f)
  }
}

/// A bare parameter tensor stored directly under its own path (python: an
/// `mx.array` attribute of a module, e.g. gpt-oss's `self.sinks` or
/// DeepSeek's `gate.e_score_correction_bias`).
pub struct Param {
  /// The value (empty until loaded).
  pub value: Array,
  shape: Vec<i32>,
  raw: bool,
}

impl Param {
  /// An unloaded parameter of `shape`, cast to the load dtype like weights.
  pub fn new(shape: &[i32]) -> Param {
    Param { value: Array::scalar(0.0f32), shape: shape.to_vec(), raw: false }
  }

  /// An unloaded parameter kept in its checkpoint dtype (python: excluded
  /// by the model's `cast_predicate`).
  pub fn new_uncast(shape: &[i32]) -> Param {
    Param { raw: true, ..Param::new(shape) }
  }
}

impl Module for Param {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.value = if self.raw { w.take_raw(prefix, Some(&self.shape)) } else { w.take(prefix, Some(&self.shape)) };
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(prefix, &self.value);
  }
}

/// Implement [`Module`] for a struct by listing its sub-module fields
/// (each itself a `Module`: layers, `Vec`s of layers, `Option`s):
///
/// ```ignore
/// mlxrs_nn::module!(Mlp { gate_proj, up_proj, down_proj });
/// // a field stored under another name: `field => "hf.name"`
/// mlxrs_nn::module!(Block { attn => "self_attn", mlp });
/// ```
#[macro_export]
macro_rules! module {
  ($ty:ty { $($field:ident $(=> $name:literal)?),* $(,)? }) => {
    impl $crate::Module for $ty {
      fn load(&mut self, w: &mut $crate::Weights, prefix: &str) {
        $( $crate::Module::load(&mut self.$field, w, &$crate::join(prefix, $crate::module!(@name $field $($name)?))); )*
      }
      fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &$crate::Array)) {
        $( $crate::Module::visit(&self.$field, &$crate::join(prefix, $crate::module!(@name $field $($name)?)), f); )*
      }
    }
  };
  (@name $field:ident) => { stringify!($field) };
  (@name $field:ident $name:literal) => { $name };
}

/// A named tensor map being consumed by [`Module::load`]. Every problem
/// (missing key, wrong shape, leftover key) is recorded, and [`finish`]
/// reports them all in one error.
///
/// [`finish`]: Weights::finish
pub struct Weights {
  map: HashMap<String, Array>,
  problems: Vec<String>,
  /// Cast floating-point tensors to this dtype as they are taken (python
  /// `model.set_dtype`), leaving quantized / integer tensors alone.
  pub dtype: Option<Dtype>,
  /// The checkpoint's quantization config, if any.
  pub quant: Option<QuantConfig>,
  ignored: Vec<String>,
  fill: Option<(Dtype, Array)>,
}

impl Weights {
  /// Wrap a tensor map.
  pub fn new(map: HashMap<String, Array>) -> Self {
    Weights { map, problems: Vec::new(), dtype: None, quant: None, ignored: Vec::new(), fill: None }
  }

  /// An empty map that invents every requested parameter: normal(0, 0.02)
  /// floats of `dtype` (packed quantized weights as random bits) from a
  /// seeded key. Used to benchmark a real model shape without its weights
  /// (as `mlx_lm.benchmark` does with random weights). With `quant` set,
  /// every quantizable layer is built quantized.
  pub fn random(dtype: Dtype, seed: u64, quant: Option<QuantConfig>) -> Result<Self> {
    let mut w = Weights::new(HashMap::new());
    w.fill = Some((dtype, mlxrs_core::random::key(seed)?));
    w.quant = quant;
    Ok(w)
  }

  /// Whether this map invents missing parameters ([`Weights::random`]).
  pub fn is_random(&self) -> bool {
    self.fill.is_some()
  }

  fn invent(&mut self, shape: &[i32], packed: bool) -> Option<Array> {
    let (dtype, key) = self.fill.as_mut()?;
    let dtype = *dtype;
    let both = mlxrs_core::random::split_num(key, 2).ok()?;
    let next = mlxrs_core::ops::take_axis(&both, &Array::scalar(0i32), 0).ok()?;
    let sub = mlxrs_core::ops::take_axis(&both, &Array::scalar(1i32), 0).ok()?;
    *key = next;
    if packed {
      // 4-byte random bits are uint32, the packed-weight dtype.
      return mlxrs_core::random::bits(shape, 4, Some(&sub)).ok();
    }
    let a = mlxrs_core::random::normal(shape, Dtype::Float32, 0.0, 0.02, Some(&sub)).ok()?;
    mlxrs_core::ops::astype(&a, dtype).ok()
  }

  /// Take a packed (uint32) quantized weight; like [`Weights::take_raw`].
  pub fn take_packed(&mut self, key: &str, shape: &[i32]) -> Array {
    if self.fill.is_some() && !self.map.contains_key(key) {
      if let Some(a) = self.invent(shape, true) {
        return a;
      }
    }
    self.take_raw(key, Some(shape))
  }

  /// Keys that may be left over without error (substring match), e.g.
  /// `rotary_emb.inv_freq`.
  pub fn ignore(&mut self, pattern: &str) {
    self.ignored.push(pattern.to_string());
  }

  /// Whether `key` is present (and not yet taken).
  pub fn has(&self, key: &str) -> bool {
    self.map.contains_key(key)
  }

  /// Remove and return `key` without checks (for sanitize-style rewrites).
  pub fn remove(&mut self, key: &str) -> Option<Array> {
    self.map.remove(key)
  }

  /// Insert or replace a tensor (for sanitize-style rewrites).
  pub fn insert(&mut self, key: impl Into<String>, a: Array) {
    self.map.insert(key.into(), a);
  }

  /// Keys still present.
  pub fn keys(&self) -> impl Iterator<Item = &String> {
    self.map.keys()
  }

  /// Record a problem (shown by [`Weights::finish`]).
  pub fn problem(&mut self, msg: String) {
    self.problems.push(msg);
  }

  fn cast(&self, a: Array) -> Array {
    match self.dtype {
      Some(d) if a.dtype().is_float() && a.dtype() != d => match mlxrs_core::ops::astype(&a, d) {
        Ok(c) => c,
        Err(_) => a,
      },
      _ => a,
    }
  }

  /// Take `key`, checking its shape when `shape` is given. A missing key or
  /// a mismatch is recorded and an empty handle returned.
  pub fn take(&mut self, key: &str, shape: Option<&[i32]>) -> Array {
    if self.fill.is_some() && !self.map.contains_key(key) {
      if let Some(a) = shape.and_then(|s| self.invent(s, false)) {
        return a;
      }
    }
    match self.map.remove(key) {
      None => {
        self.problems.push(format!("missing parameter {key}"));
        Array::from_slice::<f32>(&[], &[0]).unwrap_or_else(|_| Array::scalar(0.0f32))
      }
      Some(a) => {
        if let Some(s) = shape {
          if a.shape() != s {
            self.problems.push(format!("parameter {key} has shape {:?}, expected {s:?}", a.shape()));
          }
        }
        self.cast(a)
      }
    }
  }

  /// Take `key` if present (shape-checked), else `None` with no problem.
  pub fn take_opt(&mut self, key: &str, shape: Option<&[i32]>) -> Option<Array> {
    if self.map.contains_key(key) { Some(self.take(key, shape)) } else { None }
  }

  /// Take `key` without casting (quantized weights, scales, integer tables).
  pub fn take_raw(&mut self, key: &str, shape: Option<&[i32]>) -> Array {
    let saved = self.dtype.take();
    let a = self.take(key, shape);
    self.dtype = saved;
    a
  }

  /// The quantization parameters for the module at `path`, if its
  /// `path.scales` is in the map (mlx-lm's `class_predicate`): per-layer
  /// override from config, else the config's default; an error is recorded
  /// when scales exist but the config has no quantization block.
  pub fn quant_for(&mut self, path: &str) -> Option<QuantParams> {
    if self.fill.is_some() {
      return self.quant.as_ref().and_then(|q| q.for_layer(path));
    }
    if !self.map.contains_key(&join(path, "scales")) {
      return None;
    }
    match &self.quant {
      Some(q) => q.for_layer(path),
      None => {
        self.problems.push(format!(
          "{path}.scales present but config.json has no quantization block"
        ));
        None
      }
    }
  }

  /// Finish loading: error if anything was missing, mismatched or left
  /// over (listing each, sorted).
  pub fn finish(mut self) -> Result<()> {
    let left: BTreeSet<String> = self
      .map
      .keys()
      .filter(|k| !self.ignored.iter().any(|p| k.contains(p.as_str())))
      .cloned()
      .collect();
    for k in left {
      self.problems.push(format!("unexpected parameter {k}"));
    }
    if self.problems.is_empty() {
      return Ok(());
    }
    self.problems.sort();
    let n = self.problems.len();
    let shown: Vec<_> = self.problems.iter().take(30).cloned().collect();
    let more = if n > 30 { format!("\n  ... and {} more", n - 30) } else { String::new() };
    Err(Error::InvalidArgument(format!(
      "weights do not match the model ({n} problems):\n  {}{more}",
      shown.join("\n  ")
    )))
  }
}
