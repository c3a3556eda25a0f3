//! Token generation: mlx-lm's `generate_step` — chunked prefill, then a
//! decode loop that queues step `n + 1` on the device (`async_eval`) before
//! reading step `n`'s token, so the host never waits on the GPU except for
//! the one sampled id.

use mlxrs_core::{Array, Error, Result, ops};
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
  /// Quantize the KV cache to this many bits (`--kv-bits`).
  pub kv_bits: Option<i32>,
  /// Group size of the quantized KV cache (`--kv-group-size`, 64).
  pub kv_group_size: i32,
  /// Quantize once the cache holds this many positions
  /// (`--quantized-kv-start`, mlx-lm's default 5000).
  pub quantized_kv_start: i32,
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
      kv_bits: None,
      kv_group_size: 64,
      quantized_kv_start: 5000,
    }
  }
}

/// One generated token.
pub struct Step {
  /// The token id.
  pub token: i32,
  /// Log-probabilities over the vocabulary `[V]` (if requested).
  pub logprobs: Option<Array>,
}

/// Iterator over generated tokens (python `generate_step(prompt, model)`).
pub struct TokenGenerator<'m> {
  model: &'m dyn LanguageModel,
  /// Per-layer caches (reusable as a prompt cache after generation).
  pub caches: Vec<KvCache>,
  sampler: Sampler,
  logits_cfg: LogitsConfig,
  tokens: Vec<i32>,
  pending: Option<(Array, Array)>,
  produced: usize,
  max_tokens: usize,
  return_logprobs: bool,
  /// Seconds spent in prefill (incl. the first token).
  pub prompt_time: f64,
  /// Prompt tokens processed.
  pub prompt_tokens: usize,
  failed: bool,
  kv_quant: Option<(i32, i32, i32)>,
}

fn last_position(h: &Array) -> Result<Array> {
  // h: [B, T, H] -> [B, 1, H]
  let s = h.shape();
  ops::slice(h, &[0, s[1] - 1, 0], &s, &[1, 1, 1])
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
    if prompt.is_empty() {
      return Err(Error::InvalidArgument("the prompt is empty (no tokens)".into()));
    }
    let vocab = model.vocab_size();
    if let Some(&bad) = prompt.iter().find(|&&t| t < 0 || t >= vocab) {
      return Err(Error::InvalidArgument(format!("prompt token {bad} is outside the vocabulary [0, {vocab})")));
    }
    if cfg.prefill_step_size == 0 {
      return Err(Error::InvalidArgument("prefill_step_size must be > 0".into()));
    }
    cfg.logits.validate(vocab)?;
    let sampler = Sampler::new(cfg.sampler.clone(), vocab)?;
    let caches = caches.unwrap_or_else(|| model.make_caches(cfg.max_kv_size));
    let mut g = TokenGenerator {
      model,
      caches,
      sampler,
      logits_cfg: cfg.logits.clone(),
      tokens: Vec::new(),
      pending: None,
      produced: 0,
      max_tokens: cfg.max_tokens,
      return_logprobs: cfg.return_logprobs,
      prompt_time: 0.0,
      prompt_tokens: prompt.len(),
      failed: false,
      kv_quant: cfg.kv_bits.map(|b| (b, cfg.kv_group_size, cfg.quantized_kv_start)),
    };
    if let Some(b) = cfg.kv_bits {
      if ![2, 3, 4, 6, 8].contains(&b) {
        return Err(Error::InvalidArgument(format!("kv_bits must be one of 2, 3, 4, 6, 8; got {b}")));
      }
    }
    let t0 = std::time::Instant::now();
    // Prefill all but the last token in chunks, evaluating the caches.
    let mut done = 0;
    while prompt.len() - done > 1 {
      let n = cfg.prefill_step_size.min(prompt.len() - done - 1);
      let chunk = &prompt[done..done + n];
      let x = Array::from_slice(chunk, &[1, n as i32])?;
      let _ = g.model.hidden(&x, &mut g.caches)?;
      g.maybe_quantize_caches()?;
      let mut state: Vec<Array> = Vec::new();
      for c in &g.caches {
        if let Some((k, v)) = c.state()? {
          state.push(k);
          state.push(v);
        }
      }
      mlxrs_core::eval(&state)?;
      done += n;
    }
    if g.logits_cfg.is_active() {
      g.tokens.extend_from_slice(&prompt[..done]);
    }
    let last = &prompt[done..];
    let (y, lp) = g.step_tokens(last)?;
    let mut y_eval = y.clone();
    y_eval.eval()?;
    g.prompt_time = t0.elapsed().as_secs_f64();
    g.pending = Some((y, lp));
    Ok(g)
  }

  /// mlx-lm's `maybe_quantize_kv_cache`: once a standard cache holds more
  /// than `quantized_kv_start` positions, replace it by a quantized copy.
  fn maybe_quantize_caches(&mut self) -> Result<()> {
    if let Some((bits, group, start)) = self.kv_quant {
      for c in self.caches.iter_mut() {
        if !c.is_quantized() && c.kind() == mlxrs_nn::KvCacheKind::Standard && c.chunk_size().is_none() && c.offset > start {
          *c = c.to_quantized(group, bits)?;
        }
      }
    }
    Ok(())
  }

  fn step_tokens(&mut self, input: &[i32]) -> Result<(Array, Array)> {
    let x = Array::from_slice(input, &[1, input.len() as i32])?;
    self.step_array(&x, input)
  }

  fn step_array(&mut self, x: &Array, host_tokens: &[i32]) -> Result<(Array, Array)> {
    let h = self.model.hidden(x, &mut self.caches)?;
    self.maybe_quantize_caches()?;
    let h = last_position(&h)?;
    let logits = self.model.logits(&h)?;
    let s = logits.shape();
    let mut logits = ops::reshape(&logits, &[s[0], s[2]])?;
    if self.logits_cfg.is_active() {
      self.tokens.extend_from_slice(host_tokens);
      logits = self.logits_cfg.apply(&self.tokens, &logits)?;
    }
    let lse = ops::logsumexp_axis(&logits, -1, true)?;
    let logprobs = ops::subtract(&logits, &lse)?;
    // Cast inside the step so the token is ready as soon as the step is:
    // a cast added after queueing the next step would wait behind it.
    let y = ops::astype(&self.sampler.sample(&logprobs)?, mlxrs_core::Dtype::Int32)?;
    Ok((y, logprobs))
  }

  fn advance(&mut self) -> Result<Option<Step>> {
    if self.produced >= self.max_tokens {
      return Ok(None);
    }
    let (mut y, lp) = match self.pending.take() {
      Some(p) => p,
      None => return Ok(None),
    };
    // Queue the next step before reading this one (unless it is the last, or
    // a logits processor needs this token on the host first).
    let needs_host = self.logits_cfg.is_active();
    if self.produced + 1 < self.max_tokens && !needs_host {
      let x = ops::reshape(&y, &[1, 1])?;
      let (ny, nlp) = self.step_array(&x, &[])?;
      mlxrs_core::async_eval(std::slice::from_ref(&ny))?;
      self.pending = Some((ny, nlp));
    }
    let token = y.to_vec::<i32>()?[0];
    if self.produced + 1 < self.max_tokens && needs_host {
      let (ny, nlp) = self.step_tokens(&[token])?;
      self.pending = Some((ny, nlp));
    }
    self.produced += 1;
    let logprobs = if self.return_logprobs { Some(ops::reshape(&lp, &[-1])?) } else { None };
    Ok(Some(Step { token, logprobs }))
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
