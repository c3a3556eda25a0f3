//! Token generation: mlx-lm's `generate_step` — chunked prefill, then a
//! decode loop that queues step `n + 1` on the device (`async_eval`) before
//! reading step `n`'s token, so the host never waits on the GPU except for
//! the one sampled id. Optionally the queueing itself (MLX encoding every
//! kernel of the step) runs on an evaluation thread
//! ([`mlxrs_core::eval_thread`]) while this thread builds the next step.

use mlxrs_core::eval_thread::{EvalThread, Queued, Ready};
use mlxrs_core::{Array, Device, Error, Result, ops};
use mlxrs_nn::KvCache;

use crate::model::LanguageModel;
use crate::sample::{LogitsConfig, Sampler, SamplerConfig};

/// Token-level generation settings (python `generate_step` kwargs).
#[derive(Debug, Clone)]
pub struct StepConfig {
  /// Tokens to generate at most.
  pub max_tokens: usize,
  /// Sampling.
  pub sampler: SamplerConfig,
  /// Logits processors.
  pub logits: LogitsConfig,
  /// Rotating-cache size (`--max-kv-size`).
  pub max_kv_size: Option<i32>,
  /// Prompt tokens per prefill chunk (python `prefill_step_size`, 2048).
  pub prefill_step_size: usize,
  /// Return each step's log-probabilities `[V]`.
  pub return_logprobs: bool,
  /// Also report the `top_logprobs` most likely tokens of each step with
  /// their log-probabilities (0 = off; the sampled token's own
  /// log-probability is always reported). Python: `GenerationResponse.logprobs`
  /// `[V]`, from which mlx-lm's server takes its `top_logprobs`.
  pub top_logprobs: usize,
  /// Draft tokens per speculative step (python `num_draft_tokens`;
  /// `mlx_lm.generate --num-draft-tokens`, default 3). Used only with a draft
  /// model ([`crate::SpeculativeGenerator`]).
  pub num_draft_tokens: usize,
  /// Quantize the KV cache to this many bits (`--kv-bits`).
  pub kv_bits: Option<i32>,
  /// Group size of the quantized KV cache (`--kv-group-size`, 64).
  pub kv_group_size: i32,
  /// Quantize once the cache holds this many positions
  /// (`--quantized-kv-start`, mlx-lm's default 5000).
  pub quantized_kv_start: i32,
  /// Keep generating when a step's logits are NaN/Inf (`--allow-nan`). By
  /// default such a step is an error ([`check_finite_logprob`]): broken
  /// weights or config (e.g. `rope_theta` 0) would otherwise emit token 0
  /// forever. Python mlx-lm has no such guard.
  pub allow_nan: bool,
}

/// The NaN/Inf logits guard: the sampled token's log-probability (already
/// read on the host each step, so this costs no device sync) is finite
/// whenever the step's logits are; NaN or Inf there means the logits are
/// garbage. An error naming the step unless `allow_nan`.
pub fn check_finite_logprob(logprob: f32, step: usize, allow_nan: bool) -> Result<()> {
  if logprob.is_finite() || allow_nan {
    return Ok(());
  }
  Err(Error::InvalidArgument(format!(
    "the model produced non-finite logits at generated token {step} (log-probability {logprob}): \
     the weights or config are broken (NaN/Inf weights, rope_theta 0, ...); pass --allow-nan \
     (StepConfig::allow_nan) to keep the output anyway"
  )))
}

impl Default for StepConfig {
  fn default() -> Self {
    StepConfig {
      max_tokens: 256,
      sampler: SamplerConfig::default(),
      logits: LogitsConfig::new(),
      max_kv_size: None,
      prefill_step_size: 2048,
      return_logprobs: false,
      top_logprobs: 0,
      num_draft_tokens: 3,
      kv_bits: None,
      kv_group_size: 64,
      quantized_kv_start: 5000,
      allow_nan: false,
    }
  }
}

/// One generated token.
pub struct Step {
  /// The token id.
  pub token: i32,
  /// Log-probabilities over the vocabulary `[V]` (if requested).
  pub logprobs: Option<Array>,
  /// The log-probability of `token` (after logits processors; python
  /// `logprobs[token]`).
  pub logprob: f32,
  /// The `top_logprobs` most likely `(token, logprob)`, most likely first
  /// (empty unless [`StepConfig::top_logprobs`] > 0).
  pub top_logprobs: Vec<(i32, f32)>,
  /// Whether a draft model proposed this token and the main model accepted
  /// it (python `GenerationResponse.from_draft`); always false without a
  /// draft model.
  pub from_draft: bool,
}

/// One row's host result: `(token, logprob, top (token, logprob)s)`.
pub(crate) type RowStep = (i32, f32, Vec<(i32, f32)>);

/// Device-side results of one step for `R` rows: sampled ids `[R]`, the
/// log-softmax `[R, V]`, the sampled ids' log-probabilities `[R]` and, with
/// `top > 0`, the top ids `[R, top]` and their log-probabilities.
pub(crate) struct StepArrays {
  pub y: Array,
  pub logprobs: Array,
  pub token_lp: Array,
  pub top: Option<(Array, Array)>,
}

impl StepArrays {
  /// Compute the per-token figures for sampled `y` `[R]` from `logprobs`
  /// `[R, V]`.
  pub(crate) fn new(y: Array, logprobs: Array, top: usize) -> Result<StepArrays> {
    // Every array `read()` copies to the host is made here, in its final
    // dtype, so it is part of the queued step: a cast made at read time
    // would be a new graph node that MLX runs behind the *next* queued step,
    // and the host would wait for that whole step (on a GPU this costs
    // 25-35% of decode speed with bf16 logits; on the CPU f32 -> f32 casts
    // are no-ops, which is why it only showed on the GPU).
    let idx = ops::expand_dims(&y, -1)?;
    let token_lp = ops::reshape(&ops::take_along_axis(&logprobs, &idx, -1)?, &[-1])?;
    let token_lp = ops::astype(&token_lp, mlxrs_core::Dtype::Float32)?;
    let top = if top > 0 {
      let v = logprobs.dim(-1).unwrap_or(1);
      let k = (top as i32).min(v);
      let neg = ops::negative(&logprobs)?;
      let part = ops::argpartition_axis(&neg, k - 1, -1)?;
      let r = part.dim(0).unwrap_or(1);
      let ids = ops::slice(&part, &[0, 0], &[r, k], &[1, 1])?;
      let vals = ops::take_along_axis(&logprobs, &ids, -1)?;
      Some((
        ops::astype(&ids, mlxrs_core::Dtype::Int32)?,
        ops::astype(&vals, mlxrs_core::Dtype::Float32)?,
      ))
    } else {
      None
    };
    Ok(StepArrays {
      y,
      logprobs,
      token_lp,
      top,
    })
  }

  /// The same step for the rows at `idx` `[n]` (int32) only.
  pub(crate) fn select_rows(&self, idx: &Array) -> Result<StepArrays> {
    let take = |a: &Array| ops::take_axis(a, idx, 0);
    Ok(StepArrays {
      y: take(&self.y)?,
      logprobs: take(&self.logprobs)?,
      token_lp: take(&self.token_lp)?,
      top: match &self.top {
        Some((i, v)) => Some((take(i)?, take(v)?)),
        None => None,
      },
    })
  }

  /// The arrays to evaluate with the token.
  pub(crate) fn outputs(&self) -> Vec<Array> {
    let mut v = vec![self.y.clone(), self.token_lp.clone()];
    if let Some((i, l)) = &self.top {
      v.push(i.clone());
      v.push(l.clone());
    }
    v
  }

  /// Host copies: per row `(token, logprob, top)`. Builds no graph node
  /// (see [`StepArrays::new`]): it only waits for this step's own arrays.
  pub(crate) fn read(&self) -> Result<Vec<RowStep>> {
    let outs = self.outputs();
    let at = |i: usize| outs[i].clone();
    self.rows(|i| at(i).to_vec::<i32>(), |i| at(i).to_vec::<f32>())
  }

  /// [`StepArrays::read`] of a step queued on an [`EvalThread`] with
  /// `reads` = [`StepArrays::outputs`].
  fn read_ready(&self, ready: &Ready) -> Result<Vec<RowStep>> {
    self.rows(|i| ready.read::<i32>(i), |i| ready.read::<f32>(i))
  }

  /// The rows from the host copies of [`StepArrays::outputs`]`[i]`.
  fn rows(
    &self,
    ints: impl Fn(usize) -> Result<Vec<i32>>,
    floats: impl Fn(usize) -> Result<Vec<f32>>,
  ) -> Result<Vec<RowStep>> {
    let toks = ints(0)?;
    let lps = floats(1)?;
    let tops = match &self.top {
      Some((ids, _)) => {
        let k = ids.dim(-1).unwrap_or(0) as usize;
        let (ids, vals) = (ints(2)?, floats(3)?);
        (0..toks.len())
          .map(|r| {
            let mut row: Vec<(i32, f32)> =
              (0..k).map(|j| (ids[r * k + j], vals[r * k + j])).collect();
            row.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            row
          })
          .collect()
      }
      None => vec![Vec::new(); toks.len()],
    };
    Ok(
      toks
        .into_iter()
        .zip(lps)
        .zip(tops)
        .map(|((t, l), tp)| (t, l, tp))
        .collect(),
    )
  }
}

/// A decode step built and queued (or evaluated), waiting to be read.
struct Pending {
  st: StepArrays,
  /// The evaluation thread's receipt, when the step was queued there.
  queued: Option<Queued>,
}

impl Pending {
  fn new(st: StepArrays) -> Pending {
    Pending { st, queued: None }
  }

  /// The step's tokens and log-probabilities; with an evaluation thread,
  /// once it has queued the step, and the time its `async_eval` took.
  fn read(self) -> Result<(Vec<RowStep>, Option<std::time::Duration>)> {
    match self.queued {
      Some(q) => {
        let ready = q.wait()?;
        Ok((self.st.read_ready(&ready)?, Some(ready.took)))
      }
      None => Ok((self.st.read()?, None)),
    }
  }
}

/// Prompt input embeddings for the prefill (python `generate_step(prompt,
/// model, input_embeddings=...)`): a vision-language model's prompt with
/// the image features merged in. Decoding continues from token ids.
#[derive(Clone)]
pub struct PromptEmbeddings {
  /// `[1, T, hidden]`: one row per prompt token (see
  /// [`LanguageModel::embed_tokens`]).
  pub embeddings: Array,
  /// Mask for the prompt's forward passes (see
  /// [`LanguageModel::hidden_from_embeddings`]); `None`: causal.
  pub mask: Option<mlxrs_nn::AttnMask>,
  /// Run the whole prompt in one forward pass instead of chunks (a prompt
  /// that attends bidirectionally, as PaliGemma's; mlx-vlm turns chunked
  /// prefill off for it).
  pub one_pass: bool,
}

impl PromptEmbeddings {
  /// Causal, chunked prefill of `embeddings` `[1, T, hidden]`.
  pub fn causal(embeddings: Array) -> PromptEmbeddings {
    PromptEmbeddings {
      embeddings,
      mask: None,
      one_pass: false,
    }
  }

  /// Rows `start..` (the part of a prompt a reused cache does not hold).
  pub fn suffix(&self, start: usize) -> Result<PromptEmbeddings> {
    let s = self.embeddings.shape();
    if s.len() != 3 || start as i32 > s[1] {
      return Err(Error::InvalidArgument(format!(
        "prompt embeddings {s:?}: no rows from {start}"
      )));
    }
    Ok(PromptEmbeddings {
      embeddings: ops::slice(&self.embeddings, &[0, start as i32, 0], &s, &[1, 1, 1])?,
      mask: self.mask.clone(),
      one_pass: self.one_pass,
    })
  }
}

/// Rows `start..stop` of `[1, T, H]` embeddings.
fn rows(e: &Array, start: usize, stop: usize) -> Result<Array> {
  let s = e.shape();
  ops::slice(
    e,
    &[0, start as i32, 0],
    &[s[0], stop as i32, s[2]],
    &[1, 1, 1],
  )
}

/// Iterator over generated tokens (python `generate_step(prompt, model)`).
pub struct TokenGenerator<'m> {
  model: &'m dyn LanguageModel,
  /// Per-layer caches (reusable as a prompt cache after generation:
  /// [`TokenGenerator::into_caches`]).
  caches: Vec<KvCache>,
  sampler: Sampler,
  logits_cfg: LogitsConfig,
  tokens: Vec<i32>,
  pending: Option<Pending>,
  /// Where decode steps are queued: `None` queues them on this thread.
  eval_thread: Option<&'static EvalThread>,
  top_logprobs: usize,
  produced: usize,
  max_tokens: usize,
  return_logprobs: bool,
  /// Seconds spent in prefill (incl. the first token).
  pub prompt_time: f64,
  /// Prompt tokens processed.
  pub prompt_tokens: usize,
  failed: bool,
  kv_quant: Option<(i32, i32, i32)>,
  allow_nan: bool,
  /// Where decode time goes (`MLXRS_DECODE_TIMING=1`), printed on drop.
  timing: Option<DecodeTiming>,
}

/// Host time of the pipelined decode loop, split by phase: building step
/// `n + 1`'s graph, queueing it (`async_eval`: MLX encodes every kernel; on
/// the evaluation thread, if one is used, while this thread goes on), and
/// waiting for step `n`'s token (with an evaluation thread: for its
/// queueing to finish, then for the token). On a GPU the device runs step
/// `n + 1` during the wait for step `n`, so when `wait` is near zero the
/// host is the bottleneck, not the device.
#[derive(Default)]
struct DecodeTiming {
  steps: u32,
  build: std::time::Duration,
  queue: std::time::Duration,
  wait: std::time::Duration,
  threaded: bool,
}

/// With `MLXRS_DECODE_DOT=FILE` (and `MLXRS_DECODE_TIMING=1`), the graph of
/// the first queued decode step in Graphviz form (`mx.export_to_dot`), to
/// count what MLX evaluates per step on the device at hand.
fn write_step_graph(outputs: &[Array]) -> Result<()> {
  if let Some(path) = std::env::var_os("MLXRS_DECODE_DOT") {
    let dot = mlxrs_core::export::export_to_dot(outputs)?;
    std::fs::write(&path, dot).map_err(|e| {
      Error::InvalidArgument(format!(
        "MLXRS_DECODE_DOT: cannot write {}: {e}",
        std::path::Path::new(&path).display()
      ))
    })?;
  }
  Ok(())
}

impl Drop for DecodeTiming {
  fn drop(&mut self) {
    if self.steps == 0 {
      return;
    }
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / self.steps as f64;
    eprintln!(
      "decode timing over {} steps, per step: build {:.0} us, queue (async_eval{}) {:.0} us, \
       wait for token {:.0} us",
      self.steps,
      us(self.build),
      if self.threaded {
        ", on the evaluation thread"
      } else {
        ""
      },
      us(self.queue),
      us(self.wait)
    );
  }
}

/// `--max-kv-size` asks for rotating caches; a model with recurrent layers
/// (SSM / linear attention: `ArraysCache` state) keeps its whole history in
/// that state and cannot bound it (mlx-lm's `make_cache` silently ignores the
/// flag for them): an error rather than an unbounded cache.
fn check_max_kv_size(caches: &[KvCache], max_kv_size: Option<i32>) -> Result<()> {
  if max_kv_size.is_some() && caches.iter().any(KvCache::is_recurrent) {
    return Err(Error::InvalidArgument(
      "max_kv_size (rotating KV caches) is not supported by this model: its recurrent \
       (SSM / linear-attention) layers keep state that cannot be windowed"
        .into(),
    ));
  }
  Ok(())
}

/// The last position's hidden states as rows: `[B, T, H]` -> `[B, H]` (one
/// reshape for a decode step's `T = 1`: no slice node, and the LM head's
/// matmul then needs no flatten / unflatten either).
fn last_position(h: &Array) -> Result<Array> {
  let s = h.shape();
  let last = if s[1] == 1 {
    h.clone()
  } else {
    ops::slice(h, &[0, s[1] - 1, 0], &s, &[1, 1, 1])?
  };
  ops::reshape(&last, &[s[0], s[2]])
}

impl<'m> TokenGenerator<'m> {
  /// Prefill `prompt` and prepare to decode. `caches` continues an existing
  /// prompt cache (its positions precede `prompt`); `None` makes fresh ones.
  pub fn new(
    model: &'m dyn LanguageModel,
    prompt: &[i32],
    cfg: &StepConfig,
    caches: Option<Vec<KvCache>>,
  ) -> Result<TokenGenerator<'m>> {
    Self::with_embeddings(model, prompt, None, cfg, caches)
  }

  /// [`TokenGenerator::new`] whose prefill runs on `embeddings` (one row
  /// per `prompt` token) instead of the prompt ids' own embeddings (python
  /// `generate_step(..., input_embeddings=...)`); `prompt` still feeds the
  /// logits processors.
  pub fn with_embeddings(
    model: &'m dyn LanguageModel,
    prompt: &[i32],
    embeddings: Option<&PromptEmbeddings>,
    cfg: &StepConfig,
    caches: Option<Vec<KvCache>>,
  ) -> Result<TokenGenerator<'m>> {
    if let Some(e) = embeddings {
      let s = e.embeddings.shape();
      if s.len() != 3 || s[0] != 1 || s[1] as usize != prompt.len() {
        return Err(Error::InvalidArgument(format!(
          "prompt embeddings {s:?} do not match the {} prompt tokens (want [1, {}, hidden])",
          prompt.len(),
          prompt.len()
        )));
      }
    }
    if prompt.is_empty() {
      return Err(Error::InvalidArgument(
        "the prompt is empty (no tokens)".into(),
      ));
    }
    let vocab = model.vocab_size();
    if let Some(&bad) = prompt.iter().find(|&&t| t < 0 || t >= vocab) {
      return Err(Error::InvalidArgument(format!(
        "prompt token {bad} is outside the vocabulary [0, {vocab})"
      )));
    }
    if cfg.prefill_step_size == 0 {
      return Err(Error::InvalidArgument(
        "prefill_step_size must be > 0".into(),
      ));
    }
    cfg.logits.validate(vocab)?;
    let sampler = Sampler::new(cfg.sampler.clone(), vocab)?;
    if let Some(n) = cfg.max_kv_size {
      if n < 1 {
        return Err(Error::InvalidArgument(format!(
          "max_kv_size must be >= 1, got {n}"
        )));
      }
    }
    if let Some(b) = cfg.kv_bits {
      crate::limits::check_affine_quant("kv_bits", b, "kv_group_size", cfg.kv_group_size)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
      if cfg.quantized_kv_start < 0 {
        return Err(Error::InvalidArgument(format!(
          "quantized_kv_start must be >= 0, got {}",
          cfg.quantized_kv_start
        )));
      }
    }
    let caches = caches.unwrap_or_else(|| model.make_caches(cfg.max_kv_size));
    check_max_kv_size(&caches, cfg.max_kv_size)?;
    let mut g = TokenGenerator {
      model,
      caches,
      sampler,
      logits_cfg: cfg.logits.clone(),
      tokens: Vec::new(),
      pending: None,
      eval_thread: None,
      produced: 0,
      max_tokens: cfg.max_tokens,
      return_logprobs: cfg.return_logprobs,
      top_logprobs: cfg.top_logprobs,
      prompt_time: 0.0,
      prompt_tokens: prompt.len(),
      failed: false,
      kv_quant: cfg
        .kv_bits
        .map(|b| (b, cfg.kv_group_size, cfg.quantized_kv_start)),
      allow_nan: cfg.allow_nan,
      timing: std::env::var_os("MLXRS_DECODE_TIMING")
        .is_some_and(|v| v != "0")
        .then(DecodeTiming::default),
    };
    let t0 = std::time::Instant::now();
    // Prefill all but the last token in chunks, evaluating the caches.
    let mut done = 0;
    let one_pass = embeddings.is_some_and(|e| e.one_pass);
    while prompt.len() - done > 1 && !one_pass {
      let n = cfg.prefill_step_size.min(prompt.len() - done - 1);
      let _ = match embeddings {
        Some(e) => g.model.hidden_from_embeddings(
          &rows(&e.embeddings, done, done + n)?,
          &mut g.caches,
          e.mask.as_ref(),
        )?,
        None => {
          let chunk = &prompt[done..done + n];
          let x = Array::from_slice(chunk, &[1, n as i32])?;
          g.model.hidden(&x, &mut g.caches)?
        }
      };
      g.maybe_quantize_caches()?;
      let state: Vec<Array> = g.caches.iter().flat_map(KvCache::held_arrays).collect();
      mlxrs_core::eval(&state)?;
      done += n;
    }
    if g.logits_cfg.is_active() {
      g.tokens.extend_from_slice(&prompt[..done]);
    }
    let last = &prompt[done..];
    let st = match embeddings {
      Some(e) => {
        let h = g.model.hidden_from_embeddings(
          &rows(&e.embeddings, done, prompt.len())?,
          &mut g.caches,
          e.mask.as_ref(),
        )?;
        g.step_hidden(h, last)?
      }
      None => g.step_tokens(last)?,
    };
    mlxrs_core::eval(&st.outputs())?;
    let st = Pending::new(st);
    g.prompt_time = t0.elapsed().as_secs_f64();
    g.pending = Some(st);
    // The evaluation thread, with `MLXRS_EVAL_THREAD=1`: off by default, as
    // it measured no faster on an H100 (docs/performance.md, session 12).
    if std::env::var("MLXRS_EVAL_THREAD").as_deref() == Ok("1") {
      g.set_eval_thread(true)?;
    }
    Ok(g)
  }

  /// Queue decode steps on the process's evaluation thread
  /// ([`mlxrs_core::eval_thread`]) while this thread builds the next one
  /// (`true`), or on this thread (`false`, the default; `MLXRS_EVAL_THREAD=1`
  /// turns it on); the tokens are the same. On an H100 it measured 0.98x
  /// of one thread (MLX's own queueing is the longer part of a step, and
  /// the two threads slow each other down: docs/performance.md).
  /// Generation that needs a step's token on the host before it can build
  /// the next step (logits processors), quantizes its KV cache, or whose
  /// model evaluates inside its forward pass
  /// ([`LanguageModel::evaluates_in_forward`]) stays on this thread.
  /// Returns whether steps now go to the evaluation thread.
  pub fn set_eval_thread(&mut self, on: bool) -> Result<bool> {
    let possible =
      !self.logits_cfg.is_active() && self.kv_quant.is_none() && !self.model.evaluates_in_forward();
    self.eval_thread = if on && possible {
      // Whatever the steps carry over from this thread (the caches, the
      // sampler's key chain) is evaluated here: a node still lazy on this
      // thread's stream could not be evaluated on the evaluation thread.
      let mut held: Vec<Array> = self.caches.iter().flat_map(KvCache::held_arrays).collect();
      held.extend(self.sampler.key().cloned());
      self.settle();
      mlxrs_core::eval(&held)?;
      Some(EvalThread::shared(Device::default_device()?)?)
    } else {
      None
    };
    if let Some(t) = self.timing.as_mut() {
      t.threaded = self.eval_thread.is_some();
    }
    Ok(self.eval_thread.is_some())
  }

  /// The caches so far (python's `prompt_cache` list), once any step sent
  /// to the evaluation thread is queued.
  pub fn caches(&mut self) -> &[KvCache] {
    self.settle();
    &self.caches
  }

  /// The caches, a prompt cache for the next turn (python passes its
  /// `prompt_cache` list in and reads it after), once any queued step is.
  pub fn into_caches(mut self) -> Vec<KvCache> {
    self.settle();
    std::mem::take(&mut self.caches)
  }

  /// Wait until a step sent to the evaluation thread is queued, so that
  /// this thread may evaluate graphs that start from the caches.
  fn settle(&mut self) {
    if let Some(q) = self.pending.as_mut().and_then(|p| p.queued.take()) {
      let _ = q.wait();
    }
  }

  /// mlx-lm's `maybe_quantize_kv_cache`: once a standard cache holds more
  /// than `quantized_kv_start` positions, replace it by a quantized copy.
  fn maybe_quantize_caches(&mut self) -> Result<()> {
    if let Some((bits, group, start)) = self.kv_quant {
      for c in self.caches.iter_mut() {
        // Recurrent state (`ArraysCache` / `CacheList`) has no
        // `to_quantized` in mlx-lm and stays as it is.
        if !c.is_quantized()
          && !c.is_recurrent()
          && c.kind() == mlxrs_nn::KvCacheKind::Standard
          && c.chunk_size().is_none()
          && c.offset > start
        {
          *c = c.to_quantized(group, bits)?;
        }
      }
    }
    Ok(())
  }

  fn step_tokens(&mut self, input: &[i32]) -> Result<StepArrays> {
    let x = Array::from_slice(input, &[1, input.len() as i32])?;
    self.step_array(&x, input)
  }

  /// One decode step from the previous step's sampled id `y` `[1]`.
  fn decode_step(&mut self, y: &Array) -> Result<Pending> {
    let x = ops::reshape(y, &[1, 1])?;
    Ok(Pending::new(self.step_array(&x, &[])?))
  }

  fn step_array(&mut self, x: &Array, host_tokens: &[i32]) -> Result<StepArrays> {
    let h = self.model.hidden(x, &mut self.caches)?;
    self.step_hidden(h, host_tokens)
  }

  /// The rest of a step once the model has produced hidden states `h`.
  fn step_hidden(&mut self, h: Array, host_tokens: &[i32]) -> Result<StepArrays> {
    self.maybe_quantize_caches()?;
    let h = last_position(&h)?;
    let mut logits = self.model.logits(&h)?;
    if self.logits_cfg.is_active() {
      self.tokens.extend_from_slice(host_tokens);
      logits = self.logits_cfg.apply(&self.tokens, &logits)?;
    }
    let lse = ops::logsumexp_axis(&logits, -1, true)?;
    let logprobs = ops::subtract(&logits, &lse)?;
    // Cast inside the step so the token is ready as soon as the step is:
    // a cast added after queueing the next step would wait behind it.
    let y = crate::sample::token_ids(&self.sampler.sample(&logprobs)?)?;
    StepArrays::new(y, logprobs, self.top_logprobs)
  }

  fn advance(&mut self) -> Result<Option<Step>> {
    if self.produced >= self.max_tokens {
      return Ok(None);
    }
    let cur = match self.pending.take() {
      Some(p) => p,
      None => return Ok(None),
    };
    // Queue the next step before reading this one (unless it is the last, or
    // a logits processor needs this token on the host first).
    let needs_host = self.logits_cfg.is_active();
    let t0 = self.timing.as_ref().map(|_| std::time::Instant::now());
    if self.produced + 1 < self.max_tokens && !needs_host {
      let mut next = match self.eval_thread {
        Some(t) => mlxrs_core::with_default_stream(&t.stream(), || self.decode_step(&cur.st.y))??,
        None => self.decode_step(&cur.st.y)?,
      };
      let t1 = t0.map(|_| std::time::Instant::now());
      if self.timing.as_ref().is_some_and(|t| t.steps == 0) {
        write_step_graph(&next.st.outputs())?;
      }
      match self.eval_thread {
        Some(t) => {
          let outs = next.st.outputs();
          next.queued = Some(t.queue(outs.clone(), &outs)?);
        }
        None => mlxrs_core::async_eval(&next.st.outputs())?,
      }
      if let (Some(tm), Some(t0), Some(t1)) = (self.timing.as_mut(), t0, t1) {
        tm.build += t1 - t0;
        if self.eval_thread.is_none() {
          tm.queue += t1.elapsed();
        }
      }
      self.pending = Some(next);
    }
    let t2 = t0.map(|_| std::time::Instant::now());
    let logprobs = if self.return_logprobs {
      Some(ops::reshape(&cur.st.logprobs, &[-1])?)
    } else {
      None
    };
    let (rows, queued) = cur.read()?;
    let (token, logprob, top_logprobs) = rows
      .into_iter()
      .next()
      .ok_or_else(|| Error::InvalidArgument("empty step".into()))?;
    if let (Some(tm), Some(t2)) = (self.timing.as_mut(), t2) {
      tm.wait += t2.elapsed();
      tm.queue += queued.unwrap_or_default();
      tm.steps += 1;
    }
    check_finite_logprob(logprob, self.produced, self.allow_nan)?;
    if self.produced + 1 < self.max_tokens && needs_host {
      let next = self.step_tokens(&[token])?;
      self.pending = Some(Pending::new(next));
    }
    self.produced += 1;
    Ok(Some(Step {
      token,
      logprobs,
      logprob,
      top_logprobs,
      from_draft: false,
    }))
  }

  /// The token budget.
  pub fn max_tokens(&self) -> usize {
    self.max_tokens
  }

  /// Generated so far.
  pub fn produced(&self) -> usize {
    self.produced
  }
}

impl Drop for TokenGenerator<'_> {
  fn drop(&mut self) {
    // A step still being queued on the evaluation thread holds clones of
    // the caches' arrays there; let it finish before they go.
    self.settle();
  }
}

impl Iterator for TokenGenerator<'_> {
  type Item = Result<Step>;
  fn next(&mut self) -> Option<Self::Item> {
    if self.failed {
      return None;
    }
    match self.advance() {
      Ok(Some(s)) => Some(Ok(s)),
      Ok(None) => None,
      Err(e) => {
        self.failed = true;
        Some(Err(e))
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use mlxrs_core::Dtype;

  /// The decode loop reads a step's arrays after queueing the next step, so
  /// everything `read()` copies must already be in its final dtype: a cast
  /// made at read time would run behind the next step (the 25-35% GPU decode
  /// regression of 5ec8ada). Guard it with bf16 logprobs, as a GPU has.
  #[test]
  fn step_arrays_are_final_before_read() -> Result<()> {
    let lp = Array::from_slice(&[-0.5f32, -1.5, -2.5, -3.5, -0.25, -4.0], &[2, 3])?;
    let lp = ops::astype(&lp, Dtype::Bfloat16)?;
    let y = Array::from_slice(&[0i32, 2], &[2])?;
    let st = StepArrays::new(y, lp, 2)?;
    assert_eq!(st.token_lp.dtype(), Dtype::Float32);
    let (ids, vals) = st.top.as_ref().expect("top requested");
    assert_eq!(ids.dtype(), Dtype::Int32);
    assert_eq!(vals.dtype(), Dtype::Float32);
    mlxrs_core::eval(&st.outputs())?;
    let rows = st.read()?;
    assert_eq!(rows[0].0, 0);
    assert_eq!(rows[0].1, -0.5);
    assert_eq!(rows[1].1, -4.0);
    assert_eq!(rows[0].2, vec![(0, -0.5), (1, -1.5)]);
    assert_eq!(rows[1].2, vec![(1, -0.25), (0, -3.5)]);
    Ok(())
  }
}
