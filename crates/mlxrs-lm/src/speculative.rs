//! Speculative decoding: mlx-lm's `speculative_generate_step`. A small
//! draft model proposes `num_draft_tokens` tokens one by one; the main model
//! scores the last accepted token plus all proposals in one forward pass and
//! keeps the proposals up to the first one it would not have sampled itself,
//! then adds its own token. Both caches are trimmed back past the rejected
//! proposals. With greedy sampling the output equals plain greedy decoding
//! of the main model.

use std::collections::VecDeque;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::KvCache;

use crate::generate::{Step, StepArrays, StepConfig};
use crate::model::LanguageModel;
use crate::sample::Sampler;

/// Iterator over tokens of speculative decoding (python
/// `speculative_generate_step(prompt, model, draft_model,
/// num_draft_tokens=...)`). Each [`Step`] says whether the draft proposed it
/// ([`Step::from_draft`]).
pub struct SpeculativeGenerator<'m> {
  model: &'m dyn LanguageModel,
  draft: &'m dyn LanguageModel,
  /// The main model's per-layer caches (positions of the prompt and the
  /// tokens yielded so far, once the stream ends).
  pub caches: Vec<KvCache>,
  /// The draft model's caches.
  pub draft_caches: Vec<KvCache>,
  sampler: Sampler,
  num_draft: usize,
  top_logprobs: usize,
  return_logprobs: bool,
  /// Next input of the main model (the last token it has not processed).
  y: Vec<i32>,
  /// Next input of the draft model.
  draft_y: Vec<i32>,
  queue: VecDeque<Step>,
  produced: usize,
  max_tokens: usize,
  allow_nan: bool,
  failed: bool,
  /// Seconds spent in prefill.
  pub prompt_time: f64,
  /// Prompt tokens processed.
  pub prompt_tokens: usize,
  /// Draft tokens proposed / accepted so far.
  pub drafted: usize,
  /// Draft tokens accepted so far.
  pub accepted: usize,
}

fn prefill(
  model: &dyn LanguageModel,
  caches: &mut [KvCache],
  prompt: &[i32],
  step: usize,
) -> Result<()> {
  let mut done = 0;
  while prompt.len() - done > 1 {
    let n = step.min(prompt.len() - done - 1);
    let x = Array::from_slice(&prompt[done..done + n], &[1, n as i32])?;
    let _ = model.hidden(&x, caches)?;
    let mut state = Vec::new();
    for c in caches.iter() {
      if let Some((k, v)) = c.state()? {
        state.push(k);
        state.push(v);
      }
    }
    mlxrs_core::eval(&state)?;
    done += n;
  }
  Ok(())
}

fn trim_all(caches: &mut [KvCache], n: usize, which: &str) -> Result<()> {
  if n == 0 {
    return Ok(());
  }
  for c in caches.iter_mut() {
    let got = c.trim(n as i32);
    if got != n as i32 {
      return Err(Error::InvalidArgument(format!(
        "speculative decoding: the {which} model's KV cache cannot be trimmed by {n} (a rotating cache has wrapped); \
         speculative decoding needs trimmable caches"
      )));
    }
  }
  Ok(())
}

impl<'m> SpeculativeGenerator<'m> {
  /// Prefill `prompt` in both models and get ready to decode. The two
  /// models must share a vocabulary (the draft's tokens are fed to the main
  /// model). `cfg.num_draft_tokens` proposals per step (mlx-lm's CLI
  /// default 3). Unsupported here (an `Err`): logits processors
  /// (penalties), `max_kv_size` and `kv_bits`.
  pub fn new(
    model: &'m dyn LanguageModel,
    draft: &'m dyn LanguageModel,
    prompt: &[i32],
    cfg: &StepConfig,
  ) -> Result<SpeculativeGenerator<'m>> {
    let vocab = model.vocab_size();
    if draft.vocab_size() != vocab {
      return Err(Error::InvalidArgument(format!(
        "speculative decoding: the draft model's vocabulary ({}) differs from the main model's ({vocab}); \
         both must use the same tokenizer",
        draft.vocab_size()
      )));
    }
    if cfg.num_draft_tokens == 0 {
      return Err(Error::InvalidArgument(
        "num_draft_tokens must be > 0".into(),
      ));
    }
    if cfg.logits.is_active() {
      return Err(Error::InvalidArgument(
        "speculative decoding does not support logits processors (repetition/presence/frequency penalties) yet".into(),
      ));
    }
    if cfg.max_kv_size.is_some() || cfg.kv_bits.is_some() {
      return Err(Error::InvalidArgument(
        "speculative decoding needs trimmable full-precision caches: --max-kv-size and --kv-bits are not supported with a draft model"
          .into(),
      ));
    }
    if prompt.is_empty() {
      return Err(Error::InvalidArgument(
        "the prompt is empty (no tokens)".into(),
      ));
    }
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
    let sampler = Sampler::new(cfg.sampler.clone(), vocab)?;
    let mut caches = model.make_caches(None);
    let mut draft_caches = draft.make_caches(None);
    // python `speculative_generate_step` needs `can_trim_prompt_cache`: the
    // rejected draft positions are trimmed away, which recurrent state
    // (ArraysCache: SSM / linear attention) cannot undo.
    for (which, c) in [("main", &caches), ("draft", &draft_caches)] {
      if c.iter().any(KvCache::is_recurrent) {
        return Err(Error::InvalidArgument(format!(
          "speculative decoding needs trimmable caches, but the {which} model keeps recurrent \
           (SSM / linear-attention) state that cannot be rewound"
        )));
      }
    }
    let t0 = std::time::Instant::now();
    prefill(draft, &mut draft_caches, prompt, cfg.prefill_step_size)?;
    prefill(model, &mut caches, prompt, cfg.prefill_step_size)?;
    let last = prompt[prompt.len() - 1];
    Ok(SpeculativeGenerator {
      model,
      draft,
      caches,
      draft_caches,
      sampler,
      num_draft: cfg.num_draft_tokens,
      top_logprobs: cfg.top_logprobs,
      return_logprobs: cfg.return_logprobs,
      y: vec![last],
      draft_y: vec![last],
      queue: VecDeque::new(),
      produced: 0,
      max_tokens: cfg.max_tokens,
      allow_nan: cfg.allow_nan,
      failed: false,
      prompt_time: t0.elapsed().as_secs_f64(),
      prompt_tokens: prompt.len(),
      drafted: 0,
      accepted: 0,
    })
  }

  /// Run `model` over `input` and sample its last `n` positions.
  fn step(
    model: &dyn LanguageModel,
    caches: &mut [KvCache],
    sampler: &mut Sampler,
    input: &Array,
    n: i32,
    top: usize,
  ) -> Result<StepArrays> {
    let h = model.hidden(input, caches)?;
    let s = h.shape();
    let h = ops::slice(&h, &[0, s[1] - n, 0], &s, &[1, 1, 1])?;
    let logits = model.logits(&h)?;
    let v = logits.dim(-1).unwrap_or(1);
    let logits = ops::reshape(&logits, &[n, v])?;
    let lse = ops::logsumexp_axis(&logits, -1, true)?;
    let logprobs = ops::subtract(&logits, &lse)?;
    let y = crate::sample::token_ids(&sampler.sample(&logprobs)?)?;
    StepArrays::new(y, logprobs, top)
  }

  /// One draft-and-verify round; queues the accepted tokens.
  fn round(&mut self) -> Result<()> {
    let num_draft = (self.max_tokens - self.produced).min(self.num_draft);
    // Draft: propose `num_draft` tokens, each fed back as the next input.
    let mut drafts: Vec<Array> = Vec::with_capacity(num_draft);
    let mut x = Array::from_slice(&self.draft_y, &[1, self.draft_y.len() as i32])?;
    for _ in 0..num_draft {
      let st = Self::step(
        self.draft,
        &mut self.draft_caches,
        &mut self.sampler,
        &x,
        1,
        0,
      )?;
      mlxrs_core::async_eval(std::slice::from_ref(&st.y))?;
      x = ops::reshape(&st.y, &[1, 1])?;
      drafts.push(st.y);
    }
    // Verify: the main model scores its pending token plus every proposal.
    let mut parts = vec![Array::from_slice(&self.y, &[self.y.len() as i32])?];
    parts.extend(drafts.iter().cloned());
    let input = ops::reshape(&ops::concatenate_axis(&parts, 0)?, &[1, -1])?;
    let st = Self::step(
      self.model,
      &mut self.caches,
      &mut self.sampler,
      &input,
      num_draft as i32 + 1,
      self.top_logprobs,
    )?;
    let mut outs = st.outputs();
    outs.extend(drafts.iter().cloned());
    mlxrs_core::eval(&outs)?;
    let draft_tokens: Vec<i32> = if drafts.is_empty() {
      Vec::new()
    } else {
      let mut d = ops::concatenate_axis(&drafts, 0)?;
      d.to_vec::<i32>()?
    };
    let rows = st.read()?;
    for (i, (_, lp, _)) in rows.iter().enumerate() {
      crate::generate::check_finite_logprob(*lp, self.produced + i, self.allow_nan)?;
    }
    let row_lp = |i: usize| -> Result<Option<Array>> {
      if self.return_logprobs {
        let v = st.logprobs.dim(-1).unwrap_or(1);
        Ok(Some(ops::reshape(
          &ops::slice(&st.logprobs, &[i as i32, 0], &[i as i32 + 1, v], &[1, 1])?,
          &[-1],
        )?))
      } else {
        Ok(None)
      }
    };
    let mut n = 0;
    while n < num_draft {
      let (t, lp, top) = rows[n].clone();
      if t != draft_tokens[n] {
        break;
      }
      self.queue.push_back(Step {
        token: t,
        logprobs: row_lp(n)?,
        logprob: lp,
        top_logprobs: top,
        from_draft: true,
      });
      n += 1;
      self.produced += 1;
      if self.produced == self.max_tokens {
        break;
      }
    }
    self.drafted += num_draft;
    self.accepted += n;
    if self.produced < self.max_tokens {
      let (t, lp, top) = rows[n].clone();
      self.queue.push_back(Step {
        token: t,
        logprobs: row_lp(n)?,
        logprob: lp,
        top_logprobs: top,
        from_draft: false,
      });
      self.produced += 1;
    }
    let last = rows[n].0;
    self.y = vec![last];
    // All proposals accepted: the draft has not yet seen its last proposal.
    self.draft_y = if n == num_draft && num_draft > 0 {
      vec![draft_tokens[num_draft - 1], last]
    } else {
      vec![last]
    };
    trim_all(&mut self.caches, num_draft - n, "main")?;
    trim_all(
      &mut self.draft_caches,
      (num_draft - n).saturating_sub(1),
      "draft",
    )?;
    Ok(())
  }

  fn advance(&mut self) -> Result<Option<Step>> {
    if let Some(s) = self.queue.pop_front() {
      return Ok(Some(s));
    }
    if self.produced >= self.max_tokens {
      return Ok(None);
    }
    self.round()?;
    Ok(self.queue.pop_front())
  }

  /// The token budget.
  pub fn max_tokens(&self) -> usize {
    self.max_tokens
  }

  /// Tokens handed out so far.
  pub fn produced(&self) -> usize {
    self.produced - self.queue.len()
  }
}

impl Iterator for SpeculativeGenerator<'_> {
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
