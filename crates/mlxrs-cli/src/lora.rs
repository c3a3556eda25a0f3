//! `mlxrs lora` (python `mlx_lm.lora`) and `mlxrs fuse` (python
//! `mlx_lm.fuse`): fine-tune with LoRA / DoRA / full on a dense or
//! quantized checkpoint, and merge adapters into the weights. The library
//! side is `mlxrs_lm::tuner`; `docs/lora.md` is the guide.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use mlxrs_core::Array;
use mlxrs_lm::tuner::{
  self, AdapterConfig, Batch, Example, FineTuneType, LoraParameters, Rng, Trainer,
};
use mlxrs_lm::{LoadOptions, LoadedModel, load};
use mlxrs_nn::optim::{self, LearningRate, Optimizer};
use mlxrs_nn::{AdapterSettings, QuantConfig};
use serde_json::{Value, json};

/// `mlxrs lora` flags (named as mlx_lm.lora's; a `-c config.yaml` sets any
/// of them by its snake_case name, flags given on the command line win).
#[derive(Args)]
pub struct LoraArgs {
  /// Model folder or Hugging Face repo id (a quantized one trains QLoRA).
  #[arg(long)]
  model: Option<String>,
  /// Compute dtype for float weights (default float32 on CPU).
  #[arg(long)]
  dtype: Option<String>,
  /// Train.
  #[arg(long)]
  train: bool,
  /// Evaluate on test.jsonl after training (or of the --adapter-path
  /// adapters without --train).
  #[arg(long)]
  test: bool,
  /// Folder with train.jsonl / valid.jsonl / test.jsonl.
  #[arg(long)]
  data: Option<PathBuf>,
  /// lora, dora or full.
  #[arg(long = "fine-tune-type")]
  fine_tune_type: Option<String>,
  /// adam, adamw, sgd or adafactor.
  #[arg(long)]
  optimizer: Option<String>,
  /// No loss on the prompt tokens (chat / completions data).
  #[arg(long = "mask-prompt")]
  mask_prompt: bool,
  /// Number of (last) layers to fine-tune (default 16; -1: all).
  #[arg(long = "num-layers", allow_negative_numbers = true)]
  num_layers: Option<i32>,
  /// Minibatch size (default 4).
  #[arg(long = "batch-size")]
  batch_size: Option<usize>,
  /// Training iterations (default 1000).
  #[arg(long)]
  iters: Option<usize>,
  /// Validation batches (default 25; -1: the whole set).
  #[arg(long = "val-batches", allow_negative_numbers = true)]
  val_batches: Option<i64>,
  /// Learning rate (default 1e-5).
  #[arg(long = "learning-rate")]
  learning_rate: Option<f32>,
  /// Steps between loss reports (default 10).
  #[arg(long = "steps-per-report")]
  steps_per_report: Option<usize>,
  /// Steps between validations (default 200).
  #[arg(long = "steps-per-eval")]
  steps_per_eval: Option<usize>,
  /// Adapter weights to start from.
  #[arg(long = "resume-adapter-file")]
  resume_adapter_file: Option<PathBuf>,
  /// Where adapters are saved / loaded (default `adapters`).
  #[arg(long = "adapter-path")]
  adapter_path: Option<PathBuf>,
  /// Save the adapters every N steps (default 100).
  #[arg(long = "save-every")]
  save_every: Option<usize>,
  /// Test batches (default 500; -1: the whole set).
  #[arg(long = "test-batches", allow_negative_numbers = true)]
  test_batches: Option<i64>,
  /// Longest sequence; longer ones are truncated (default 2048).
  #[arg(long = "max-seq-length")]
  max_seq_length: Option<usize>,
  /// A YAML (or JSON) config file (mlx-lm's `-c`), incl. `lora_parameters`
  /// and `lr_schedule`.
  #[arg(long, short = 'c')]
  config: Option<PathBuf>,
  /// Gradient checkpointing: recompute each block's activations in the
  /// backward pass instead of keeping them (less memory, more compute).
  #[arg(long = "grad-checkpoint")]
  grad_checkpoint: bool,
  /// Steps whose gradients are summed before an update (default 1).
  #[arg(long = "grad-accumulation-steps")]
  grad_accumulation_steps: Option<usize>,
  /// Random seed (default 0).
  #[arg(long)]
  seed: Option<u64>,
  /// One JSON object per report line on stdout.
  #[arg(long)]
  json: bool,
  /// Run the training step without compiling it (mlxrs only; mlx-lm
  /// always compiles it): for comparison and debugging.
  #[arg(long = "no-compile")]
  no_compile: bool,
}

/// The merged settings (defaults < config file < flags).
struct Settings {
  model: String,
  data: PathBuf,
  ft: FineTuneType,
  optimizer: String,
  mask_prompt: bool,
  num_layers: i32,
  batch_size: usize,
  iters: usize,
  val_batches: i64,
  learning_rate: f32,
  steps_per_report: usize,
  steps_per_eval: usize,
  adapter_path: PathBuf,
  save_every: usize,
  test_batches: i64,
  max_seq_length: usize,
  grad_accum: usize,
  grad_checkpoint: bool,
  seed: u64,
  lora: LoraParameters,
  lr_schedule: Option<Value>,
  resume: Option<PathBuf>,
}

fn read_config(p: &Path) -> Result<serde_json::Map<String, Value>> {
  let text = std::fs::read_to_string(p).with_context(|| format!("reading -c {}", p.display()))?;
  let v: Value =
    serde_yaml::from_str(&text).with_context(|| format!("-c {}: invalid YAML", p.display()))?;
  match v {
    Value::Object(m) => Ok(m),
    Value::Null => Ok(Default::default()),
    _ => bail!("-c {}: the config must be a mapping", p.display()),
  }
}

fn settings(a: &LoraArgs) -> Result<Settings> {
  let c = match &a.config {
    Some(p) => read_config(p)?,
    None => Default::default(),
  };
  let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
  let i = |k: &str| c.get(k).and_then(Value::as_i64);
  let f = |k: &str| c.get(k).and_then(Value::as_f64);
  let b = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
  let pos = |name: &str, v: i64| -> Result<usize> {
    if v <= 0 {
      bail!("--{name} must be positive, got {v}");
    }
    Ok(v as usize)
  };
  let model = a
    .model
    .clone()
    .or_else(|| s("model"))
    .context("give --model (or `model:` in the config)")?;
  let lora = match c.get("lora_parameters") {
    Some(v) => LoraParameters::from_json(v)?,
    None => LoraParameters::default(),
  };
  Ok(Settings {
    model,
    data: a
      .data
      .clone()
      .or_else(|| s("data").map(PathBuf::from))
      .unwrap_or_else(|| "data".into()),
    ft: FineTuneType::parse(
      &a.fine_tune_type
        .clone()
        .or_else(|| s("fine_tune_type"))
        .unwrap_or("lora".into()),
    )?,
    optimizer: a
      .optimizer
      .clone()
      .or_else(|| s("optimizer"))
      .unwrap_or("adam".into())
      .to_lowercase(),
    mask_prompt: a.mask_prompt || b("mask_prompt"),
    grad_checkpoint: a.grad_checkpoint || b("grad_checkpoint"),
    num_layers: a
      .num_layers
      .or(i("num_layers").map(|v| v as i32))
      .unwrap_or(16),
    batch_size: pos(
      "batch-size",
      a.batch_size
        .map(|v| v as i64)
        .or(i("batch_size"))
        .unwrap_or(4),
    )?,
    iters: pos(
      "iters",
      a.iters.map(|v| v as i64).or(i("iters")).unwrap_or(1000),
    )?,
    val_batches: a.val_batches.or(i("val_batches")).unwrap_or(25),
    learning_rate: a
      .learning_rate
      .or(f("learning_rate").map(|v| v as f32))
      .unwrap_or(1e-5),
    steps_per_report: pos(
      "steps-per-report",
      a.steps_per_report
        .map(|v| v as i64)
        .or(i("steps_per_report"))
        .unwrap_or(10),
    )?,
    steps_per_eval: pos(
      "steps-per-eval",
      a.steps_per_eval
        .map(|v| v as i64)
        .or(i("steps_per_eval"))
        .unwrap_or(200),
    )?,
    adapter_path: a
      .adapter_path
      .clone()
      .or_else(|| s("adapter_path").map(PathBuf::from))
      .unwrap_or_else(|| "adapters".into()),
    save_every: pos(
      "save-every",
      a.save_every
        .map(|v| v as i64)
        .or(i("save_every"))
        .unwrap_or(100),
    )?,
    test_batches: a.test_batches.or(i("test_batches")).unwrap_or(500),
    max_seq_length: pos(
      "max-seq-length",
      a.max_seq_length
        .map(|v| v as i64)
        .or(i("max_seq_length"))
        .unwrap_or(2048),
    )?,
    grad_accum: pos(
      "grad-accumulation-steps",
      a.grad_accumulation_steps
        .map(|v| v as i64)
        .or(i("grad_accumulation_steps"))
        .unwrap_or(1),
    )?,
    seed: a.seed.or(i("seed").map(|v| v as u64)).unwrap_or(0),
    lora,
    lr_schedule: c.get("lr_schedule").filter(|v| !v.is_null()).cloned(),
    resume: a
      .resume_adapter_file
      .clone()
      .or_else(|| s("resume_adapter_file").map(PathBuf::from)),
  })
}

/// python `build_schedule`: `{name, arguments, warmup?, warmup_init?}`.
fn build_schedule(v: &Value) -> Result<LearningRate> {
  let name = v
    .get("name")
    .and_then(Value::as_str)
    .context("lr_schedule.name missing")?;
  let args: Vec<f64> = v
    .get("arguments")
    .and_then(Value::as_array)
    .context("lr_schedule.arguments must be a list")?
    .iter()
    .map(|x| x.as_f64().context("lr_schedule.arguments must be numbers"))
    .collect::<Result<_>>()?;
  let arg = |k: usize| {
    args
      .get(k)
      .copied()
      .with_context(|| format!("lr_schedule {name}: needs {} arguments", k + 1))
  };
  let init = arg(0)?;
  let main = match name {
    "cosine_decay" => {
      optim::cosine_decay(init, arg(1)? as u64, args.get(2).copied().unwrap_or(0.0))?
    }
    "linear_schedule" => optim::linear_schedule(init, arg(1)?, arg(2)? as u64)?,
    "exponential_decay" => optim::exponential_decay(init, arg(1)?),
    "step_decay" => optim::step_decay(init, arg(1)?, arg(2)? as u64)?,
    o => bail!(
      "lr_schedule: unknown schedule {o:?} (cosine_decay, linear_schedule, exponential_decay, step_decay)"
    ),
  };
  let warmup = v.get("warmup").and_then(Value::as_u64).unwrap_or(0);
  if warmup == 0 {
    return Ok(LearningRate::Scheduled(main));
  }
  let wi = v.get("warmup_init").and_then(Value::as_f64).unwrap_or(0.0);
  let w = optim::linear_schedule(wi, init, warmup)?;
  Ok(LearningRate::Scheduled(optim::join_schedules(
    vec![w, main],
    &[warmup + 1],
  )?))
}

fn make_optimizer(s: &Settings) -> Result<Box<dyn Optimizer>> {
  let lr = match &s.lr_schedule {
    Some(v) => build_schedule(v)?,
    None => LearningRate::Constant(s.learning_rate),
  };
  Ok(match s.optimizer.as_str() {
    "adam" => Box::new(optim::Adam::new(lr)),
    "adamw" => Box::new(optim::Adam::adamw(lr, 0.01)),
    "sgd" => Box::new(optim::Sgd::new(lr, 0.0, 0.0, 0.0, false)?),
    "adafactor" => Box::new(optim::Adafactor::new().with_learning_rate(lr)),
    o => bail!("unsupported optimizer {o:?} (adam, adamw, sgd, adafactor)"),
  })
}

/// Batches cycling over `data` (python `iterate_batches` with
/// `loop=True`): each pass in a fresh `np.random.permutation` order, drawn
/// when the pass's first batch is taken.
struct BatchIter<'a> {
  data: &'a [Example],
  groups: Vec<Vec<usize>>,
  order: Vec<usize>,
  pos: usize,
  max_seq: usize,
  warned: bool,
}

impl<'a> BatchIter<'a> {
  fn new(data: &'a [Example], bs: usize, max_seq: usize) -> Result<Self> {
    Ok(BatchIter {
      data,
      groups: tuner::batch_indices(data, bs)?,
      order: Vec::new(),
      pos: 0,
      max_seq,
      warned: false,
    })
  }

  fn next_batch(&mut self, rng: &mut Rng) -> Result<Batch> {
    if self.pos == self.order.len() {
      self.order = rng.permutation(self.groups.len());
      self.pos = 0;
    }
    let g = &self.groups[self.order[self.pos]];
    self.pos += 1;
    let ex: Vec<&Example> = g.iter().map(|&i| &self.data[i]).collect();
    let (b, longest) = tuner::make_batch(&ex, self.max_seq)?;
    if let (Some(l), false) = (longest, self.warned) {
      eprintln!(
        "[WARNING] Some sequences are longer than {} tokens. The longest sentence {l} will be truncated to {}. Consider pre-splitting your data to save memory.",
        self.max_seq, self.max_seq
      );
      self.warned = true;
    }
    Ok(b)
  }
}

/// The batches one evaluation runs (python `evaluate`: one pass of
/// `iterate_batches` in permuted order, the first `n`, all for `n < 0`).
fn eval_batches(data: &[Example], s: &Settings, n: i64, rng: &mut Rng) -> Result<Vec<Batch>> {
  if n == 0 {
    return Ok(Vec::new());
  }
  let mut it = BatchIter::new(data, s.batch_size, s.max_seq_length)?;
  let total = it.groups.len();
  let n = if n < 0 {
    total
  } else {
    (n as usize).min(total)
  };
  (0..n).map(|_| it.next_batch(rng)).collect()
}

fn peak_gb() -> f64 {
  mlxrs_core::memory::peak_memory().unwrap_or(0) as f64 / 1e9
}

fn report(json: bool, v: Value, text: String) {
  if json {
    println!("{v}");
  } else {
    eprintln!("{text}");
  }
}

fn save_adapters(trainable: &BTreeMap<String, Array>, file: &Path) -> Result<()> {
  let m: HashMap<String, Array> = trainable
    .iter()
    .map(|(k, v)| (k.clone(), v.clone()))
    .collect();
  tuner::adapters::save_safetensors_atomic(file, &m)?;
  Ok(())
}

fn write_adapter_config(s: &Settings, path: &Path) -> Result<()> {
  let cfg = json!({
    "model": s.model,
    "fine_tune_type": s.ft.name(),
    "num_layers": s.num_layers,
    "lora_parameters": if s.ft == FineTuneType::Full { Value::Null } else { s.lora.to_json() },
    "batch_size": s.batch_size,
    "iters": s.iters,
    "learning_rate": format!("{}", s.learning_rate).parse::<f64>().unwrap_or(s.learning_rate as f64),
    "optimizer": s.optimizer,
    "max_seq_length": s.max_seq_length,
    "mask_prompt": s.mask_prompt,
    "grad_accumulation_steps": s.grad_accum,
    "grad_checkpoint": s.grad_checkpoint,
    "seed": s.seed,
    "lr_schedule": s.lr_schedule,
    "data": s.data,
    "adapter_path": s.adapter_path,
  });
  tuner::adapters::write_atomic(
    &path.join("adapter_config.json"),
    serde_json::to_string_pretty(&cfg)?.as_bytes(),
  )?;
  Ok(())
}

/// What to train: `(trainable initial values, adapter settings)`.
fn trainable_set(
  m: &mut LoadedModel,
  quant: Option<&QuantConfig>,
  s: &Settings,
) -> Result<(BTreeMap<String, Array>, Option<AdapterSettings>)> {
  let params = tuner::adapters::parameters(m.model.as_ref());
  let n = tuner::adapters::num_blocks(&params) as i32;
  let nl = if s.num_layers < 0 { n } else { s.num_layers };
  if nl > n {
    bail!("requested to train {nl} layers but the model only has {n} layers");
  }
  match s.ft {
    FineTuneType::Full => {
      if quant.is_some() {
        bail!(
          "--fine-tune-type full needs an unquantized model (use lora or dora on a quantized one)"
        );
      }
      let first = (n - nl) as usize;
      let t: BTreeMap<String, Array> = params
        .iter()
        .filter(|(k, _)| tuner::adapters::block_index(k).is_some_and(|i| i >= first))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
      Ok((t, None))
    }
    ft => {
      let layers = tuner::adaptable_layers(m.model.as_mut(), quant)?;
      let targets = tuner::lora_targets(&layers, nl, s.lora.keys.as_deref())?;
      let key = mlxrs_core::random::key(s.seed)?;
      let init = tuner::init_adapters(
        &params,
        quant,
        &targets,
        s.lora.rank,
        ft == FineTuneType::Dora,
        &key,
      )?;
      let settings = AdapterSettings {
        scale: s.lora.scale,
        dropout: s.lora.dropout,
        training: false,
      };
      Ok((init.into_iter().collect(), Some(settings)))
    }
  }
}

/// `mlxrs lora`.
pub fn run(a: LoraArgs) -> Result<()> {
  if !a.train && !a.test {
    bail!("nothing to do: give --train and/or --test");
  }
  let s = settings(&a)?;
  mlxrs_core::random::seed(s.seed)?;
  // python `run`: `np.random.seed(args.seed)`; every batch order (training
  // passes, validation, test) then draws from that one generator.
  let mut rng = Rng::new(u32::try_from(s.seed).map_err(|_| {
    anyhow::anyhow!(
      "--seed {} is out of range: numpy's seeds are 0 to 2**32 - 1",
      s.seed
    )
  })?);
  let dtype = match &a.dtype {
    None => None,
    Some(n) => Some(
      mlxrs_core::Dtype::parse(n)
        .filter(|d| d.is_float())
        .with_context(|| format!("--dtype {n:?}"))?,
    ),
  };
  let mut m = load(
    &s.model,
    &LoadOptions {
      dtype,
      no_tokenizer: false,
    },
  )?;
  let quant = tuner::quant_config(&m.config)?;
  let tok = m.tokenizer.as_ref().context("the model has no tokenizer")?;
  let (train, valid, test) = tuner::load_local(&s.data, tok, s.mask_prompt)?;
  if a.train && train.is_empty() {
    bail!(
      "training set not found or empty: {}/train.jsonl",
      s.data.display()
    );
  }
  if a.test && test.is_empty() {
    bail!(
      "test set not found or empty: {}/test.jsonl",
      s.data.display()
    );
  }
  let mut model = if a.train {
    if valid.is_empty() {
      eprintln!(
        "Warning: validation set not found or empty. Training will proceed without validation."
      );
    }
    let trainer = train_model(
      &mut m,
      quant.clone(),
      &s,
      (&train, &valid),
      &mut rng,
      a.json,
      !a.no_compile,
    )?;
    trainer.into_model()?
  } else {
    let mut model = std::mem::replace(&mut m.model, Box::new(Placeholder));
    tuner::load_adapters(model.as_mut(), quant.as_ref(), &s.adapter_path)?;
    model
  };
  if a.test {
    let batches = eval_batches(&test, &s, s.test_batches, &mut rng)?;
    let t = Instant::now();
    let loss = eval_model(model.as_mut(), &batches)?;
    report(
      a.json,
      json!({"event": "test", "test_loss": loss, "test_ppl": loss.exp(), "seconds": t.elapsed().as_secs_f64()}),
      format!("Test loss {loss:.3}, Test ppl {:.3}.", loss.exp()),
    );
  }
  Ok(())
}

fn eval_model(model: &mut dyn mlxrs_lm::LanguageModel, batches: &[Batch]) -> Result<f32> {
  let (mut total, mut toks) = (0f64, 0i64);
  for b in batches {
    let (mut l, n) = tuner::default_loss(model, b)?;
    let n: i32 = mlxrs_core::ops::astype(&n, mlxrs_core::Dtype::Int32)?.item()?;
    total += l.item::<f32>()? as f64 * n as f64;
    toks += n as i64;
  }
  if toks == 0 {
    bail!("no tokens to evaluate");
  }
  Ok((total / toks as f64) as f32)
}

fn train_model(
  m: &mut LoadedModel,
  quant: Option<QuantConfig>,
  s: &Settings,
  (train, valid): (&[Example], &[Example]),
  rng: &mut Rng,
  json_out: bool,
  compile: bool,
) -> Result<Trainer> {
  let (mut init, settings) = trainable_set(m, quant.as_ref(), s)?;
  if let Some(p) = &s.resume {
    let (w, _) = mlxrs_core::io::load_safetensors(p)
      .with_context(|| format!("--resume-adapter-file {}", p.display()))?;
    let mut bad = Vec::new();
    for (k, v) in w {
      match init.get(&k) {
        Some(cur) if cur.shape() == v.shape() => {
          init.insert(k, v);
        }
        Some(cur) => bad.push(format!(
          "  {k}: shape {:?}, expected {:?}",
          v.shape(),
          cur.shape()
        )),
        None => bad.push(format!("  {k}: not a trainable parameter")),
      }
    }
    if !bad.is_empty() {
      bad.sort();
      bail!(
        "--resume-adapter-file {} does not fit this model and settings:\n{}",
        p.display(),
        bad.join("\n")
      );
    }
    eprintln!("Loading fine-tuned weights from {}", p.display());
  }
  let total: usize = tuner::adapters::parameters(m.model.as_ref())
    .values()
    .map(|a| a.size())
    .sum();
  let ntrain: usize = init.values().map(|a| a.size()).sum();
  eprintln!(
    "Trainable parameters: {:.3}% ({:.3}M/{:.3}M)",
    100.0 * ntrain as f64 / total.max(1) as f64,
    ntrain as f64 / 1e6,
    total as f64 / 1e6
  );
  std::fs::create_dir_all(&s.adapter_path)
    .with_context(|| format!("creating {}", s.adapter_path.display()))?;
  write_adapter_config(s, &s.adapter_path)?;
  let model = std::mem::replace(&mut m.model, Box::new(Placeholder));
  let mut trainer = Trainer::new(model, init, quant, settings)?;
  trainer.set_compile(compile);
  if s.grad_checkpoint {
    let mt = m.config.model_type().unwrap_or("?").to_string();
    trainer
      .set_grad_checkpoint(true)
      .map_err(|e| anyhow::anyhow!("--grad-checkpoint: {e} (model_type {mt})"))?;
  }
  let mut opt = make_optimizer(s)?;
  let mut batches = BatchIter::new(train, s.batch_size, s.max_seq_length)?;
  let adapter_file = s.adapter_path.join("adapters.safetensors");
  let (mut losses, mut ntoks, mut steps, mut trained, mut train_time) =
    (0f64, 0i64, 0usize, 0i64, 0f64);
  let _ = mlxrs_core::memory::reset_peak_memory();
  let start = Instant::now();
  for it in 1..=s.iters {
    // python takes the iteration's batch before its validation (both draw
    // from the same generator).
    let b = batches.next_batch(rng)?;
    if !valid.is_empty() && (it == 1 || it % s.steps_per_eval == 0 || it == s.iters) {
      let vb = eval_batches(valid, s, s.val_batches, rng)?;
      let t = Instant::now();
      let vl = trainer.evaluate(&vb)?;
      report(
        json_out,
        json!({"event": "val", "iteration": it - 1, "val_loss": vl, "val_time": t.elapsed().as_secs_f64()}),
        format!(
          "Iter {it}: Val loss {vl:.3}, Val took {:.3}s",
          t.elapsed().as_secs_f64()
        ),
      );
    }
    let t = Instant::now();
    let (l, n) = trainer.step(&b, opt.as_mut(), it % s.grad_accum == 0, s.grad_accum)?;
    train_time += t.elapsed().as_secs_f64();
    losses += l as f64;
    ntoks += n;
    steps += 1;
    if it % s.steps_per_report == 0 || it == s.iters {
      let loss = losses / steps as f64;
      trained += ntoks;
      let lr = opt.learning_rate().unwrap_or(f32::NAN);
      let tps = ntoks as f64 / train_time;
      let its = steps as f64 / train_time;
      let eta = (s.iters - it) as f64 / its.max(1e-9);
      report(
        json_out,
        json!({"event": "train", "iteration": it, "train_loss": loss, "learning_rate": lr,
               "iterations_per_second": its, "tokens_per_second": tps, "trained_tokens": trained,
               "peak_memory": peak_gb()}),
        format!(
          "Iter {it}: Train loss {loss:.3}, Learning Rate {lr:.3e}, It/sec {its:.3}, Tokens/sec {tps:.1}, Trained Tokens {trained}, Peak mem {:.3} GB, ETA {eta:.0}s",
          peak_gb()
        ),
      );
      losses = 0.0;
      ntoks = 0;
      steps = 0;
      train_time = 0.0;
    }
    if it % s.save_every == 0 {
      save_adapters(&trainer.trainable, &adapter_file)?;
      let ck = s.adapter_path.join(format!("{it:07}_adapters.safetensors"));
      save_adapters(&trainer.trainable, &ck)?;
      report(
        json_out,
        json!({"event": "save", "iteration": it, "path": ck}),
        format!(
          "Iter {it}: Saved adapter weights to {} and {}.",
          adapter_file.display(),
          ck.display()
        ),
      );
    }
  }
  save_adapters(&trainer.trainable, &adapter_file)?;
  report(
    json_out,
    json!({"event": "done", "path": adapter_file, "seconds": start.elapsed().as_secs_f64(), "peak_memory": peak_gb()}),
    format!("Saved final weights to {}.", adapter_file.display()),
  );
  let _ = std::io::stdout().flush();
  Ok(trainer)
}

/// Stands in for the model while the trainer owns it.
struct Placeholder;

impl mlxrs_lm::LanguageModel for Placeholder {
  fn hidden(&self, _: &Array, _: &mut [mlxrs_nn::KvCache]) -> mlxrs_core::Result<Array> {
    Err(mlxrs_core::Error::InvalidArgument(
      "model moved to the trainer".into(),
    ))
  }
  fn logits(&self, h: &Array) -> mlxrs_core::Result<Array> {
    Ok(h.clone())
  }
  fn make_caches(&self, _: Option<i32>) -> Vec<mlxrs_nn::KvCache> {
    Vec::new()
  }
  fn load(&mut self, _: &mut mlxrs_nn::Weights) {}
  fn vocab_size(&self) -> i32 {
    0
  }
  fn visit(&self, _: &mut dyn FnMut(&str, &Array)) {}
}

/// Load `--adapter-path` adapters into a loaded model (python `load(...,
/// adapter_path=)`), for `mlxrs generate`.
pub fn apply_adapters(m: &mut LoadedModel, dir: &Path) -> Result<()> {
  let quant = tuner::quant_config(&m.config)?;
  tuner::load_adapters(m.model.as_mut(), quant.as_ref(), dir)?;
  Ok(())
}

/// `mlxrs fuse` flags (python `mlx_lm.fuse`).
#[derive(Args)]
pub struct FuseArgs {
  /// The base model folder or repo id.
  #[arg(long)]
  model: String,
  /// Output folder.
  #[arg(long = "save-path", default_value = "fused_model")]
  save_path: PathBuf,
  /// Adapter folder (adapter_config.json + adapters.safetensors).
  #[arg(long = "adapter-path", default_value = "adapters")]
  adapter_path: PathBuf,
  /// Write a dequantized (dense) model.
  #[arg(long)]
  dequantize: bool,
}

/// `mlxrs fuse`: merge adapters into the weights and write an MLX folder
/// (`model.safetensors`, `config.json`, tokenizer files) that mlx-lm
/// loads. Every file is written to a temporary name, then renamed.
pub fn fuse(a: FuseArgs) -> Result<()> {
  // Keep the checkpoint's dtype (no float32 upcast on the CPU).
  let path = mlxrs_lm::resolve_model(&a.model)?;
  let (mut model, config) = mlxrs_lm::load_model_dir(&path, None)?;
  let quant = tuner::quant_config(&config)?;
  let layers = tuner::adaptable_layers(model.as_mut(), quant.as_ref())?;
  let ac: AdapterConfig = tuner::load_adapters(model.as_mut(), quant.as_ref(), &a.adapter_path)?;
  let params = tuner::adapters::parameters(model.as_ref());
  let fused = tuner::fuse_params(
    &params,
    &layers,
    quant.as_ref(),
    ac.lora.scale,
    a.dequantize,
  )?;
  write_model_folder(&path, &a.save_path, &fused, a.dequantize)?;
  eprintln!("Fused model saved to {}", a.save_path.display());
  Ok(())
}

fn write_model_folder(
  src: &Path,
  dst: &Path,
  weights: &HashMap<String, Array>,
  dequantize: bool,
) -> Result<()> {
  std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
  if dst.canonicalize().ok() == src.canonicalize().ok() {
    bail!("--save-path must differ from the model folder");
  }
  tuner::adapters::save_safetensors_atomic(&dst.join("model.safetensors"), weights)?;
  let cfg_text = std::fs::read_to_string(src.join("config.json")).context("reading config.json")?;
  let mut cfg: Value = serde_json::from_str(&cfg_text).context("config.json")?;
  if dequantize {
    if let Some(o) = cfg.as_object_mut() {
      o.remove("quantization");
      o.remove("quantization_config");
    }
  }
  tuner::adapters::write_atomic(
    &dst.join("config.json"),
    serde_json::to_string_pretty(&cfg)?.as_bytes(),
  )?;
  for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
    let p = e?.path();
    let name = p
      .file_name()
      .map(|n| n.to_string_lossy().to_string())
      .unwrap_or_default();
    let skip = name == "config.json"
      || name.ends_with(".safetensors")
      || name.ends_with(".safetensors.index.json")
      || !p.is_file();
    if skip {
      continue;
    }
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    tuner::adapters::write_atomic(&dst.join(&name), &bytes)?;
  }
  Ok(())
}
