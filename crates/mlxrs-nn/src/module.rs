//! The module system: [`Module`] (python `mlx.nn.Module`'s parameter tree)
//! and [`Weights`], the strict loader behind `Module::load`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mlxrs_core::{Array, Dtype, Error, Result};

use crate::quant::{QuantConfig, QuantParams, Quantizable};

/// `prefix.name`, or `name` when the prefix is empty (mlx's dotted
/// parameter paths: `model.layers.0.self_attn.q_proj.weight`).
pub fn join(prefix: &str, name: &str) -> String {
  if prefix.is_empty() {
    name.to_string()
  } else {
    format!("{prefix}.{name}")
  }
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

  /// Visit every parameter mutably, with its frozen flag (which the
  /// visitor may change). Layers holding parameters implement it; the
  /// containers (`Vec`, `Option`, `Box`) and [`module!`](crate::module!) forward it. The
  /// default visits nothing, so a hand-written module that does not
  /// implement it is invisible to [`Module::update`] (which then reports
  /// its paths as unknown), `freeze`, `set_dtype` and the optimizers.
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    let _ = (prefix, f);
  }

  /// Visit every parameter with its frozen flag (python: a parameter is
  /// frozen when its module's `_no_grad` holds its name). The default
  /// reports everything [`Module::visit`] sees as trainable.
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.visit(prefix, &mut |k, a| f(k, a, false));
  }

  /// Set training (`true`) or evaluation mode (python `model.train(mode)`);
  /// only mode-dependent layers ([`crate::Dropout`], [`crate::BatchNorm`])
  /// store it. Default: nothing to do.
  fn set_training(&mut self, training: bool) {
    let _ = training;
  }

  /// Visit every layer that can be quantized (python: modules with
  /// `to_quantized`: `Linear`, `Embedding`, mlx-lm's `SwitchLinear`), for
  /// [`crate::quantize`]. Default: none.
  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    let _ = (prefix, f);
  }

  /// The parameters that are not frozen (python
  /// `tree_flatten(model.trainable_parameters())`).
  fn trainable_parameters(&self) -> BTreeMap<String, Array> {
    let mut out = BTreeMap::new();
    self.visit_frozen("", &mut |k, a, frozen| {
      if !frozen {
        out.insert(k.to_string(), a.clone());
      }
    });
    out
  }

  /// Paths of the frozen parameters.
  fn frozen_paths(&self) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    self.visit_frozen("", &mut |k, _, frozen| {
      if frozen {
        out.insert(k.to_string());
      }
    });
    out
  }

  /// Freeze every parameter (python `model.freeze()`).
  fn freeze(&mut self) {
    self.visit_mut("", &mut |_, _, fz| *fz = true);
  }

  /// Unfreeze every parameter (python `model.unfreeze()`).
  fn unfreeze(&mut self) {
    self.visit_mut("", &mut |_, _, fz| *fz = false);
  }

  /// Freeze the parameters under each path prefix (`"layers.0"`,
  /// `"layers.0.mlp.up_proj.bias"`; matched by whole dotted components).
  /// A prefix that matches no parameter is an error naming it.
  fn freeze_paths(&mut self, prefixes: &[&str]) -> Result<()> {
    set_frozen_by(self, prefixes, true, path_has_prefix)
  }

  /// Unfreeze the parameters under each path prefix (see
  /// [`Module::freeze_paths`]).
  fn unfreeze_paths(&mut self, prefixes: &[&str]) -> Result<()> {
    set_frozen_by(self, prefixes, false, path_has_prefix)
  }

  /// Freeze every parameter whose own name is one of `keys`, in all
  /// sub-modules (python `model.freeze(keys=["bias"])`). A key found
  /// nowhere is an error (python `strict=True`).
  fn freeze_keys(&mut self, keys: &[&str]) -> Result<()> {
    set_frozen_by(self, keys, true, |p, k| p.rsplit('.').next() == Some(k))
  }

  /// Unfreeze every parameter whose own name is one of `keys` (python
  /// `model.unfreeze(keys=[...])`).
  fn unfreeze_keys(&mut self, keys: &[&str]) -> Result<()> {
    set_frozen_by(self, keys, false, |p, k| p.rsplit('.').next() == Some(k))
  }

  /// Replace parameters by path (python `model.update(params, strict)`):
  /// only the given paths change. With `strict`, a path the model does not
  /// have is an error; a shape mismatch is an error either way (it would
  /// only fail later, inside a matmul). All problems are reported at once
  /// and nothing is changed when there is one.
  fn update<I>(&mut self, params: I, strict: bool) -> Result<()>
  where
    Self: Sized,
    I: IntoIterator<Item = (String, Array)>,
  {
    let mut map: HashMap<String, Array> = params.into_iter().collect();
    let mut problems = Vec::new();
    let mut known = BTreeSet::new();
    self.visit_frozen("", &mut |k, a, _| {
      if let Some(n) = map.get(k) {
        if n.shape() != a.shape() {
          problems.push(format!(
            "parameter {k} has shape {:?}, got {:?}",
            a.shape(),
            n.shape()
          ));
        }
      }
      known.insert(k.to_string());
    });
    if strict {
      let mut unknown: Vec<_> = map
        .keys()
        .filter(|k| !known.contains(*k))
        .cloned()
        .collect();
      unknown.sort();
      problems.extend(
        unknown
          .into_iter()
          .map(|k| format!("module has no parameter {k}")),
      );
    }
    if !problems.is_empty() {
      return Err(Error::InvalidArgument(format!(
        "update: {}",
        problems.join("; ")
      )));
    }
    self.visit_mut("", &mut |k, a, _| {
      if let Some(n) = map.remove(k) {
        *a = n;
      }
    });
    Ok(())
  }

  /// Cast parameters to `dtype` (python `model.set_dtype(dtype,
  /// predicate)`): by default only floating-point ones (quantized weights
  /// and integer tables stay as they are).
  fn set_dtype(&mut self, dtype: Dtype, predicate: Option<&dyn Fn(Dtype) -> bool>) -> Result<()> {
    let mut err = None;
    self.visit_mut("", &mut |k, a, _| {
      let cast = match predicate {
        Some(p) => p(a.dtype()),
        None => a.dtype().is_float(),
      };
      if cast && err.is_none() && a.dtype() != dtype {
        match mlxrs_core::ops::astype(a, dtype) {
          Ok(c) => *a = c,
          Err(e) => err = Some(Error::InvalidArgument(format!("set_dtype: {k}: {e}"))),
        }
      }
    });
    err.map_or(Ok(()), Err)
  }

  /// Training mode (python `model.train()`).
  fn train(&mut self) {
    self.set_training(true);
  }

  /// Evaluation mode (python `model.eval()`).
  fn eval(&mut self) {
    self.set_training(false);
  }
}

/// Whether dotted `path` lies under `prefix` (whole components): `""`
/// matches everything, `"layers.1"` matches `layers.1.weight` but not
/// `layers.10.weight`.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
  prefix.is_empty()
    || path == prefix
    || (path.len() > prefix.len()
      && path.starts_with(prefix)
      && path.as_bytes()[prefix.len()] == b'.')
}

fn set_frozen_by<M: Module + ?Sized>(
  m: &mut M,
  patterns: &[&str],
  frozen: bool,
  matches: impl Fn(&str, &str) -> bool,
) -> Result<()> {
  let mut hit = vec![false; patterns.len()];
  m.visit_mut("", &mut |k, _, fz| {
    for (i, p) in patterns.iter().enumerate() {
      if matches(k, p) {
        hit[i] = true;
        *fz = frozen;
      }
    }
  });
  let missing: Vec<&str> = patterns
    .iter()
    .zip(&hit)
    .filter(|(_, h)| !**h)
    .map(|(p, _)| *p)
    .collect();
  if missing.is_empty() {
    Ok(())
  } else {
    Err(Error::InvalidArgument(format!(
      "{}: no parameter matches {missing:?}",
      if frozen { "freeze" } else { "unfreeze" }
    )))
  }
}

/// The per-parameter frozen flags of a layer (python's `Module._no_grad`,
/// the local names excluded from `trainable_parameters`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frozen(BTreeSet<String>);

impl Frozen {
  /// Whether local parameter `name` is frozen.
  pub fn contains(&self, name: &str) -> bool {
    self.0.contains(name)
  }

  /// Freeze or unfreeze local parameter `name`.
  pub fn set(&mut self, name: &str, frozen: bool) {
    if frozen {
      self.0.insert(name.to_string());
    } else {
      self.0.remove(name);
    }
  }

  /// Visit parameter `name` of a layer at `prefix` mutably with its flag
  /// (the building block of [`Module::visit_mut`] for layers).
  pub fn visit_mut(
    &mut self,
    prefix: &str,
    name: &str,
    value: &mut Array,
    f: &mut dyn FnMut(&str, &mut Array, &mut bool),
  ) {
    let mut fz = self.contains(name);
    f(&join(prefix, name), value, &mut fz);
    self.set(name, fz);
  }

  /// Report parameter `name` with its flag (for [`Module::visit_frozen`]).
  pub fn visit(
    &self,
    prefix: &str,
    name: &str,
    value: &Array,
    f: &mut dyn FnMut(&str, &Array, bool),
  ) {
    f(&join(prefix, name), value, self.contains(name));
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
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    for (i, m) in self.iter_mut().enumerate() {
      m.visit_mut(&join(prefix, &i.to_string()), f);
    }
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    for (i, m) in self.iter().enumerate() {
      m.visit_frozen(&join(prefix, &i.to_string()), f);
    }
  }
  fn set_training(&mut self, training: bool) {
    for m in self.iter_mut() {
      m.set_training(training);
    }
  }
  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    for (i, m) in self.iter_mut().enumerate() {
      m.visit_quantizable_mut(&join(prefix, &i.to_string()), f);
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
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    if let Some(m) = self {
      m.visit_mut(prefix, f);
    }
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    if let Some(m) = self {
      m.visit_frozen(prefix, f);
    }
  }
  fn set_training(&mut self, training: bool) {
    if let Some(m) = self {
      m.set_training(training);
    }
  }
  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    if let Some(m) = self {
      m.visit_quantizable_mut(prefix, f);
    }
  }
}

impl<T: Module + ?Sized> Module for Box<T> {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    (**self).load(w, prefix)
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    (**self).visit(prefix, f)
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    (**self).visit_mut(prefix, f)
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    (**self).visit_frozen(prefix, f)
  }
  fn set_training(&mut self, training: bool) {
    (**self).set_training(training)
  }
  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    (**self).visit_quantizable_mut(prefix, f)
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
  frozen: bool,
}

impl Param {
  /// An unloaded parameter of `shape`, cast to the load dtype like weights.
  pub fn new(shape: &[i32]) -> Param {
    Param {
      value: Array::scalar(0.0f32),
      shape: shape.to_vec(),
      raw: false,
      frozen: false,
    }
  }

  /// A parameter with a value (e.g. a freshly initialised one).
  pub fn from_value(value: Array) -> Param {
    Param {
      shape: value.shape(),
      value,
      raw: false,
      frozen: false,
    }
  }

  /// An unloaded parameter kept in its checkpoint dtype (python: excluded
  /// by the model's `cast_predicate`).
  pub fn new_uncast(shape: &[i32]) -> Param {
    Param {
      raw: true,
      ..Param::new(shape)
    }
  }
}

impl Module for Param {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.value = if self.raw {
      w.take_raw(prefix, Some(&self.shape))
    } else {
      w.take(prefix, Some(&self.shape))
    };
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(prefix, &self.value);
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    f(prefix, &mut self.value, &mut self.frozen);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    f(prefix, &self.value, self.frozen);
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
      fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut $crate::Array, &mut bool)) {
        $( $crate::Module::visit_mut(&mut self.$field, &$crate::join(prefix, $crate::module!(@name $field $($name)?)), f); )*
      }
      fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &$crate::Array, bool)) {
        $( $crate::Module::visit_frozen(&self.$field, &$crate::join(prefix, $crate::module!(@name $field $($name)?)), f); )*
      }
      fn set_training(&mut self, training: bool) {
        $( $crate::Module::set_training(&mut self.$field, training); )*
      }
      fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn $crate::Quantizable)) {
        $( $crate::Module::visit_quantizable_mut(&mut self.$field, &$crate::join(prefix, $crate::module!(@name $field $($name)?)), f); )*
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
  /// Attach low-rank adapters to the `Linear` layers whose `lora_a` /
  /// `lora_b` (and DoRA `m`) are in the map (mlx-lm's `load_adapters`);
  /// `None`: such keys are reported as unexpected.
  pub adapter: Option<crate::lora::AdapterSettings>,
  ignored: Vec<String>,
  fill: Option<(Dtype, Array)>,
  /// Layer names (the last path component, e.g. `o_proj`, `down_proj`)
  /// whose output is summed over the distributed group after the matmul,
  /// bias added once after the sum (python `mlx.nn.ShardedToAllLinear`):
  /// set by a tensor-parallel loader whose weight map holds this rank's
  /// column slices of those layers. Empty: no layer communicates.
  pub sharded_to_all: Vec<String>,
  layers: Vec<crate::lora::AdaptableLayer>,
}

impl Weights {
  /// Wrap a tensor map.
  pub fn new(map: HashMap<String, Array>) -> Self {
    Weights {
      map,
      problems: Vec::new(),
      dtype: None,
      quant: None,
      adapter: None,
      ignored: Vec::new(),
      fill: None,
      sharded_to_all: Vec::new(),
      layers: Vec::new(),
    }
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

  /// Whether the layer at `path` is one of [`Weights::sharded_to_all`]
  /// (matched on its last path component).
  pub fn is_sharded_to_all(&self, path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    self.sharded_to_all.iter().any(|n| n == last)
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

  /// Note a layer that adapters can wrap, as it loads (`Linear`,
  /// `Embedding`, `SwitchLinear` call this).
  pub(crate) fn record_layer(&mut self, layer: crate::lora::AdaptableLayer) {
    self.layers.push(layer);
  }

  /// The layers loaded so far that low-rank adapters can wrap, in load
  /// order (what mlx-lm's `linear_to_lora_layers` would convert).
  pub fn layers(&self) -> &[crate::lora::AdaptableLayer] {
    &self.layers
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
            self.problems.push(format!(
              "parameter {key} has shape {:?}, expected {s:?}",
              a.shape()
            ));
          }
        }
        self.cast(a)
      }
    }
  }

  /// Take `key` if present (shape-checked), else `None` with no problem.
  pub fn take_opt(&mut self, key: &str, shape: Option<&[i32]>) -> Option<Array> {
    if self.map.contains_key(key) {
      Some(self.take(key, shape))
    } else {
      None
    }
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
    let more = if n > 30 {
      format!("\n  ... and {} more", n - 30)
    } else {
      String::new()
    };
    Err(Error::InvalidArgument(format!(
      "weights do not match the model ({n} problems):\n  {}{more}",
      shown.join("\n  ")
    )))
  }
}
