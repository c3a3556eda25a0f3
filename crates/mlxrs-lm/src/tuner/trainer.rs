//! Training loop (python `mlx_lm.tuner.trainer`): length-sorted padded
//! batches, the masked next-token loss, gradient steps over the trainable
//! parameters (adapters, or the last blocks for a full fine-tune),
//! gradient accumulation, evaluation and periodic adapter saves.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use mlxrs_core::transforms::{Closure, value_and_grad};
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::optim::Optimizer;
use mlxrs_nn::{AdapterSettings, KvCache, QuantConfig};

use super::adapters::{parameters, reload};
use super::datasets::Example;
use crate::error::{Error, Result};
use crate::model::LanguageModel;

fn bad(msg: String) -> Error {
  Error::InvalidArgument(msg)
}

/// A padded batch: `tokens` `[B, L]` int32 (zero padded) and `lengths`
/// `[B, 2]` int32 rows `(offset, length)` (python `iterate_batches`'
/// yield).
#[derive(Clone)]
pub struct Batch {
  /// Token ids `[B, L]`.
  pub tokens: Array,
  /// `(prompt offset, length)` per row `[B, 2]`.
  pub lengths: Array,
}

/// numpy's legacy `RandomState` (MT19937), as far as batch order needs it:
/// mlx-lm shuffles its batches with `np.random.seed(seed)` then
/// `np.random.permutation(n)` per epoch (and per evaluation), so the same
/// seed gives mlxrs the same batch order and the same validation subsets.
#[derive(Clone)]
pub struct Rng {
  mt: Box<[u32; 624]>,
  pos: usize,
}

impl std::fmt::Debug for Rng {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Rng").field("pos", &self.pos).finish()
  }
}

impl Rng {
  /// python `np.random.seed(seed)` (an integer seed: `init_genrand`).
  pub fn new(seed: u32) -> Rng {
    let mut mt = Box::new([0u32; 624]);
    mt[0] = seed;
    for i in 1..624 {
      let p = mt[i - 1];
      mt[i] = 1_812_433_253u32
        .wrapping_mul(p ^ (p >> 30))
        .wrapping_add(i as u32);
    }
    Rng { mt, pos: 624 }
  }

  /// The next 32-bit output (MT19937 `genrand_int32`).
  fn next_u32(&mut self) -> u32 {
    if self.pos >= 624 {
      let mt = &mut self.mt;
      for i in 0..624 {
        let y = (mt[i] & 0x8000_0000) | (mt[(i + 1) % 624] & 0x7fff_ffff);
        let mut v = mt[(i + 397) % 624] ^ (y >> 1);
        if y & 1 != 0 {
          v ^= 0x9908_b0df;
        }
        mt[i] = v;
      }
      self.pos = 0;
    }
    let mut y = self.mt[self.pos];
    self.pos += 1;
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c_5680;
    y ^= (y << 15) & 0xefc6_0000;
    y ^ (y >> 18)
  }

  /// A uniform integer in `0..=max` (numpy's `random_interval`: masked
  /// rejection sampling; every `max` here fits 32 bits).
  fn interval(&mut self, max: u32) -> u32 {
    if max == 0 {
      return 0;
    }
    let mut mask = max;
    for sh in [1, 2, 4, 8, 16] {
      mask |= mask >> sh;
    }
    loop {
      let v = self.next_u32() & mask;
      if v <= max {
        return v;
      }
    }
  }

  /// python `np.random.permutation(n)`: `arange(n)` shuffled by the legacy
  /// Fisher-Yates (`i` from `n - 1` down to 1, swap with `interval(i)`).
  pub fn permutation(&mut self, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
      let j = self.interval(i as u32) as usize;
      v.swap(i, j);
    }
    v
  }
}

/// Groups of `batch_size` example indices after sorting by length (python
/// `iterate_batches`' `batch_idx`); the remainder is dropped.
pub fn batch_indices(data: &[Example], batch_size: usize) -> Result<Vec<Vec<usize>>> {
  if batch_size == 0 {
    return Err(bad("batch size must be positive".into()));
  }
  if data.len() < batch_size {
    return Err(bad(format!(
      "dataset must have at least batch_size={batch_size} examples but only has {}",
      data.len()
    )));
  }
  let mut idx: Vec<usize> = (0..data.len()).collect();
  idx.sort_by_key(|&i| data[i].tokens.len());
  Ok(idx.chunks_exact(batch_size).map(|c| c.to_vec()).collect())
}

/// Pad examples into a [`Batch`] (python `iterate_batches`' body): the
/// width is the longest length rounded up to a multiple of 32, plus 1,
/// capped at `max_seq_length`; longer sequences are truncated. Returns the
/// batch and, when something was truncated, the longest original length.
pub fn make_batch(examples: &[&Example], max_seq_length: usize) -> Result<(Batch, Option<usize>)> {
  let longest = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
  if longest == 0 {
    return Err(bad("a batch holds only empty examples".into()));
  }
  let pad_to = 32;
  let width = (1 + pad_to * longest.div_ceil(pad_to)).min(max_seq_length);
  let b = examples.len();
  let mut toks = vec![0i32; b * width];
  let mut lens = Vec::with_capacity(2 * b);
  for (j, e) in examples.iter().enumerate() {
    let n = e.tokens.len().min(max_seq_length);
    for (t, &id) in e.tokens[..n].iter().enumerate() {
      toks[j * width + t] = id as i32;
    }
    lens.push(e.offset as i32);
    lens.push(n as i32);
  }
  let batch = Batch {
    tokens: Array::from_slice(&toks, &[b as i32, width as i32])?,
    lengths: Array::from_slice(&lens, &[b as i32, 2])?,
  };
  Ok((batch, (longest > max_seq_length).then_some(longest)))
}

/// The caches a training forward runs with: python's `cache=None` for
/// every plain attention layer ([`KvCache::none`]: keys and values reach
/// attention as computed, as in mlx-lm, not sliced out of a step-grown
/// buffer); the model's own caches where the layer needs one to work
/// (sliding-window, chunked, recurrent state).
fn training_caches(model: &dyn LanguageModel) -> Vec<KvCache> {
  model
    .make_caches(None)
    .into_iter()
    .map(|c| {
      if c.class_name() == "KVCache" {
        KvCache::none()
      } else {
        c
      }
    })
    .collect()
}

/// mlx-lm's `default_loss`: mean cross entropy of the next token over the
/// positions `offset < t <= length` of each row. Returns `(loss, ntoks)`.
pub fn default_loss(model: &dyn LanguageModel, batch: &Batch) -> Result<(Array, Array)> {
  let s = batch.tokens.shape();
  let (b, l) = (s[0], s[1]);
  if l < 2 {
    return Err(bad("a batch needs at least 2 positions".into()));
  }
  let inputs = ops::slice(&batch.tokens, &[0, 0], &[b, l - 1], &[1, 1])?;
  let targets = ops::slice(&batch.tokens, &[0, 1], &[b, l], &[1, 1])?;
  let mut caches = training_caches(model);
  let logits = model.forward(&inputs, &mut caches)?;
  let steps = ops::arange(1.0, l as f64, 1.0, Dtype::Int32)?;
  let off = ops::slice(&batch.lengths, &[0, 0], &[b, 1], &[1, 1])?;
  let len = ops::slice(&batch.lengths, &[0, 1], &[b, 2], &[1, 1])?;
  let mask = ops::logical_and(
    &ops::greater_equal(&steps, &off)?,
    &ops::less_equal(&steps, &len)?,
  )?;
  let ce = mlxrs_nn::losses::cross_entropy(&logits, &targets, Default::default())?;
  let ce = ops::multiply(&ce, &ops::astype(&mask, ce.dtype())?)?;
  let ntoks = ops::sum(&ops::astype(&mask, Dtype::Int32)?, false)?;
  let loss = ops::divide(
    &ops::sum(&ops::astype(&ce, Dtype::Float32)?, false)?,
    &ops::astype(&ntoks, Dtype::Float32)?,
  )?;
  Ok((loss, ntoks))
}

/// What is trained.
pub struct Trainer {
  model: Arc<Mutex<Box<dyn LanguageModel>>>,
  frozen: HashMap<String, Array>,
  /// The trainable parameters (current values), by path.
  pub trainable: BTreeMap<String, Array>,
  quant: Option<QuantConfig>,
  adapter: Option<AdapterSettings>,
  grad_accum: Option<BTreeMap<String, Array>>,
  compile: bool,
  compiled: Option<CompiledStep>,
  grad_checkpoint: bool,
}

/// A compiled training step (python `train`'s `@partial(mx.compile,
/// inputs=state, outputs=state) step`): inputs are the trainable values,
/// the optimizer's state arrays, the learning rate and step count, and the
/// batch; outputs the loss, the token count, the updated values and the
/// updated optimizer state.
struct CompiledStep {
  f: Closure,
  /// Number of optimizer state arrays per trainable tensor.
  slots: Vec<usize>,
  /// Whether the learning rate is an input (Adafactor's relative step
  /// has none).
  has_lr: bool,
}

fn poisoned() -> Error {
  bad("model mutex is poisoned".into())
}

impl Trainer {
  /// Train `trainable` (paths of `model`'s parameters, which may include
  /// adapter tensors not yet in the model: their initial values) and keep
  /// the rest of `model`'s parameters fixed. `adapter` carries the LoRA
  /// scale / dropout when adapters are trained.
  pub fn new(
    model: Box<dyn LanguageModel>,
    trainable: BTreeMap<String, Array>,
    quant: Option<QuantConfig>,
    adapter: Option<AdapterSettings>,
  ) -> Result<Trainer> {
    if trainable.is_empty() {
      return Err(bad("nothing to train (no trainable parameters)".into()));
    }
    let mut frozen = parameters(model.as_ref());
    for k in trainable.keys() {
      frozen.remove(k);
    }
    let t = Trainer {
      model: Arc::new(Mutex::new(model)),
      frozen,
      trainable,
      quant,
      adapter,
      grad_accum: None,
      compile: true,
      compiled: None,
      grad_checkpoint: false,
    };
    t.install(false)?;
    Ok(t)
  }

  fn settings(&self, training: bool) -> Option<AdapterSettings> {
    self.adapter.map(|a| AdapterSettings { training, ..a })
  }

  /// Put the current trainable values into the model.
  fn install(&self, training: bool) -> Result<()> {
    let mut m = self.model.lock().map_err(|_| poisoned())?;
    let mut all = self.frozen.clone();
    all.extend(self.trainable.iter().map(|(k, v)| (k.clone(), v.clone())));
    reload(
      m.as_mut(),
      all,
      self.quant.as_ref(),
      self.settings(training),
    )
    .map(|_| ())
  }

  /// The model with the current trainable values, for evaluation or
  /// generation (the trainer keeps it).
  pub fn model(&self) -> &Arc<Mutex<Box<dyn LanguageModel>>> {
    &self.model
  }

  /// Give the model back (with the trained values installed, gradient
  /// checkpointing off).
  pub fn into_model(mut self) -> Result<Box<dyn LanguageModel>> {
    self.install(false)?;
    if self.grad_checkpoint {
      self.set_grad_checkpoint(false)?;
    }
    // The compiled step holds the model too.
    self.compiled = None;
    let m = Arc::try_unwrap(self.model).map_err(|_| bad("model still shared".into()))?;
    m.into_inner().map_err(|_| poisoned())
  }

  /// Gradient checkpointing (python `mlx_lm.lora --grad-checkpoint`,
  /// `tuner.trainer.grad_checkpoint`): each decoder block runs as one
  /// checkpointed function of its input and its trainable tensors, so the
  /// backward pass recomputes the blocks' activations instead of keeping
  /// them (less memory, about one more forward pass of compute). Works
  /// with the compiled step and quantized bases. An architecture without
  /// it ([`LanguageModel::set_grad_checkpoint`]) is an error.
  pub fn set_grad_checkpoint(&mut self, on: bool) -> Result<()> {
    let trainable = on.then(|| self.trainable.keys().cloned().collect());
    self
      .model
      .lock()
      .map_err(|_| poisoned())?
      .set_grad_checkpoint(trainable)?;
    self.grad_checkpoint = on;
    // A compiled step traced in the other mode is stale.
    self.compiled = None;
    Ok(())
  }

  /// `value_and_grad` of [`default_loss`] over the model: inputs are the
  /// trainable values (in key order), then the batch's tokens and lengths;
  /// outputs `(loss, ntoks)` and the gradients of the trainable values.
  fn loss_grad_fn(&self) -> Result<mlxrs_core::transforms::ValueAndGrad> {
    let names: Vec<String> = self.trainable.keys().cloned().collect();
    let n = names.len();
    let (model, frozen, quant, settings) = (
      self.model.clone(),
      self.frozen.clone(),
      self.quant.clone(),
      self.settings(true),
    );
    let f = Closure::new(move |args: &[Array]| {
      let mut m = model
        .lock()
        .map_err(|_| mlxrs_core::Error::InvalidArgument("model mutex is poisoned".into()))?;
      let mut all = frozen.clone();
      all.extend(names.iter().cloned().zip(args[..n].iter().cloned()));
      reload(m.as_mut(), all, quant.as_ref(), settings).map_err(to_core)?;
      let b = Batch {
        tokens: args[n].clone(),
        lengths: args[n + 1].clone(),
      };
      let (loss, ntoks) = default_loss(m.as_ref(), &b).map_err(to_core)?;
      Ok(vec![loss, ntoks])
    })?;
    let argnums: Vec<i32> = (0..n as i32).collect();
    Ok(value_and_grad(&f, &argnums)?)
  }

  /// Loss and gradients of the trainable parameters on `batch` (python
  /// `nn.value_and_grad(model, default_loss)`). Returns `(loss, ntoks,
  /// grads)`.
  pub fn loss_and_grad(&self, batch: &Batch) -> Result<(Array, Array, BTreeMap<String, Array>)> {
    let vg = self.loss_grad_fn()?;
    let mut args: Vec<Array> = self.trainable.values().cloned().collect();
    args.push(batch.tokens.clone());
    args.push(batch.lengths.clone());
    let result = vg.call(&args);
    self.install(false)?;
    let (outs, grads) = result?;
    let mut it = outs.into_iter();
    let loss = it.next().ok_or_else(|| bad("loss missing".into()))?;
    let ntoks = it.next().ok_or_else(|| bad("ntoks missing".into()))?;
    Ok((
      loss,
      ntoks,
      self.trainable.keys().cloned().zip(grads).collect(),
    ))
  }

  /// Compile the training step (on by default, as mlx-lm's): an update
  /// without gradient accumulation and without adapter dropout runs as one
  /// compiled graph (loss, gradients, optimizer update); the other steps
  /// are not compiled (dropout draws random numbers, which a trace would
  /// freeze). `MLX_DISABLE_COMPILE=1` also turns it off.
  pub fn set_compile(&mut self, on: bool) {
    self.compile = on;
    if !on {
      self.compiled = None;
    }
  }

  fn build_compiled(&self, opt: &dyn Optimizer) -> Result<CompiledStep> {
    let vg = self.loss_grad_fn()?;
    let names: Vec<String> = self.trainable.keys().cloned().collect();
    let slot_map = &opt.state().slots;
    let mut slots = Vec::with_capacity(names.len());
    for k in &names {
      let v = slot_map
        .get(k)
        .ok_or_else(|| bad(format!("optimizer has no state for {k}")))?;
      slots.push(v.len());
    }
    let has_lr = opt.state().learning_rate.is_some();
    let shadow = Mutex::new(opt.boxed_clone());
    let n = names.len();
    let counts = slots.clone();
    let f = Closure::new(move |args: &[Array]| {
      let total: usize = counts.iter().sum();
      let params: BTreeMap<String, Array> = names
        .iter()
        .cloned()
        .zip(args[..n].iter().cloned())
        .collect();
      let mut state = BTreeMap::new();
      let mut at = n;
      for (k, &c) in names.iter().zip(&counts) {
        state.insert(k.clone(), args[at..at + c].to_vec());
        at += c;
      }
      debug_assert_eq!(at, n + total);
      let lr = has_lr.then(|| args[at].clone());
      let at = at + usize::from(has_lr);
      let step = args[at].clone();
      let mut vg_args: Vec<Array> = args[..n].to_vec();
      vg_args.extend_from_slice(&args[at + 1..at + 3]);
      let (outs, grads) = vg.call(&vg_args)?;
      let grads: BTreeMap<String, Array> = names.iter().cloned().zip(grads).collect();
      let mut o = shadow
        .lock()
        .map_err(|_| mlxrs_core::Error::InvalidArgument("optimizer mutex is poisoned".into()))?;
      o.state_mut().slots = state;
      let new = o.apply_gradients_with(&grads, &params, lr.as_ref(), &step)?;
      let mut res = outs;
      res.extend(new.into_values());
      let st = std::mem::take(&mut o.state_mut().slots);
      for k in &names {
        res.extend(st.get(k).cloned().unwrap_or_default());
      }
      Ok(res)
    })?;
    Ok(CompiledStep {
      f: mlxrs_core::transforms::compile(&f, false)?,
      slots,
      has_lr,
    })
  }

  /// One update by the compiled step; `(loss, ntoks)` unevaluated.
  fn compiled_update(&mut self, batch: &Batch, opt: &mut dyn Optimizer) -> Result<(Array, Array)> {
    opt.init(&self.trainable)?;
    let fits = |c: &CompiledStep| {
      c.has_lr == opt.state().learning_rate.is_some()
        && self
          .trainable
          .keys()
          .zip(&c.slots)
          .all(|(k, &n)| opt.state().slots.get(k).map(Vec::len) == Some(n))
    };
    if !self.compiled.as_ref().is_some_and(fits) {
      self.compiled = Some(self.build_compiled(opt)?);
    }
    let c = self
      .compiled
      .as_ref()
      .ok_or_else(|| bad("no compiled step".into()))?;
    let mut args: Vec<Array> = self.trainable.values().cloned().collect();
    for k in self.trainable.keys() {
      args.extend(opt.state().slots.get(k).cloned().unwrap_or_default());
    }
    if c.has_lr {
      args.push(Array::scalar(opt.learning_rate().unwrap_or(0.0)));
    }
    args.push(Array::scalar((opt.step() + 1) as f32));
    args.push(batch.tokens.clone());
    args.push(batch.lengths.clone());
    let result = c.f.call(&args);
    let mut out = match result {
      Ok(o) => o.into_iter(),
      Err(e) => {
        // A failed trace leaves placeholders in the model.
        self.install(false)?;
        return Err(e.into());
      }
    };
    let loss = out.next().ok_or_else(|| bad("loss missing".into()))?;
    let ntoks = out.next().ok_or_else(|| bad("ntoks missing".into()))?;
    let names: Vec<String> = self.trainable.keys().cloned().collect();
    let mut new = BTreeMap::new();
    for k in &names {
      new.insert(
        k.clone(),
        out.next().ok_or_else(|| bad("parameter missing".into()))?,
      );
    }
    let mut slots = BTreeMap::new();
    for (k, &n) in names.iter().zip(&c.slots) {
      let v: Vec<Array> = out.by_ref().take(n).collect();
      if v.len() != n {
        return Err(bad("optimizer state missing".into()));
      }
      slots.insert(k.clone(), v);
    }
    let st = opt.state_mut();
    st.step += 1;
    st.slots = slots;
    self.trainable = new;
    Ok((loss, ntoks))
  }

  /// One training step (python `train`'s `step`): gradients on `batch`,
  /// summed with the pending ones; when `do_update`, averaged over
  /// `accum_steps` and applied by `opt`. Returns `(loss, ntoks)`
  /// (evaluated).
  pub fn step(
    &mut self,
    batch: &Batch,
    opt: &mut dyn Optimizer,
    do_update: bool,
    accum_steps: usize,
  ) -> Result<(f32, i64)> {
    let dropout = self.adapter.is_some_and(|a| a.dropout > 0.0);
    if self.compile && do_update && accum_steps <= 1 && self.grad_accum.is_none() && !dropout {
      let (mut loss, ntoks) = self.compiled_update(batch, opt)?;
      let mut all: Vec<Array> = self.trainable.values().cloned().collect();
      all.extend(opt.state_arrays());
      all.push(loss.clone());
      all.push(ntoks.clone());
      mlxrs_core::eval(&all)?;
      self.install(false)?;
      let l: f32 = loss.item()?;
      let t: i32 = ops::astype(&ntoks, Dtype::Int32)?.item()?;
      return Ok((l, t as i64));
    }
    let (mut loss, ntoks, mut grads) = self.loss_and_grad(batch)?;
    if let Some(prev) = self.grad_accum.take() {
      for (k, g) in grads.iter_mut() {
        if let Some(p) = prev.get(k) {
          *g = ops::add(g, p)?;
        }
      }
    }
    if do_update {
      if accum_steps > 1 {
        let d = Array::scalar(accum_steps as f32);
        for g in grads.values_mut() {
          *g = ops::divide(g, &ops::astype(&d, g.dtype())?)?;
        }
      }
      self.trainable = opt.apply_gradients(&grads, &self.trainable)?;
      let mut all: Vec<Array> = self.trainable.values().cloned().collect();
      all.extend(opt.state_arrays());
      mlxrs_core::eval(&all)?;
      self.install(false)?;
    } else {
      mlxrs_core::eval(&grads.values().cloned().collect::<Vec<_>>())?;
      self.grad_accum = Some(grads);
    }
    let l: f32 = loss.item()?;
    let t: i32 = ops::astype(&ntoks, Dtype::Int32)?.item()?;
    Ok((l, t as i64))
  }

  /// Average loss over batches (python `evaluate`): token-weighted.
  pub fn evaluate(&self, batches: &[Batch]) -> Result<f32> {
    let m = self.model.lock().map_err(|_| poisoned())?;
    let (mut total, mut toks) = (0f64, 0i64);
    for b in batches {
      let (mut l, n) = default_loss(m.as_ref(), b)?;
      let mut n = ops::astype(&n, Dtype::Int32)?;
      let n: i32 = n.item()?;
      let l: f32 = l.item()?;
      total += l as f64 * n as f64;
      toks += n as i64;
    }
    if toks == 0 {
      return Err(bad("no tokens to evaluate".into()));
    }
    Ok((total / toks as f64) as f32)
  }
}

fn to_core(e: Error) -> mlxrs_core::Error {
  match e {
    Error::Core(c) => c,
    o => mlxrs_core::Error::InvalidArgument(o.to_string()),
  }
}
