//! Text in, text out: mlx-lm's `stream_generate` / `generate` on top of the
//! token generator — prompt building (chat template or raw), streaming
//! detokenization that never splits a character, EOS ids, stop strings, and
//! the timing figures mlx-lm prints.

use std::time::Instant;

use mlxrs_core::memory;
use mlxrs_nn::KvCache;

use crate::chat::{ChatOptions, Message};
use crate::error::{Error, Result};
use crate::generate::{PromptEmbeddings, Step, StepConfig, TokenGenerator};
use crate::load::LoadedModel;
use crate::speculative::SpeculativeGenerator;
use crate::tokenizer::Tokenizer;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
  /// An EOS token or a stop string.
  Stop,
  /// `max_tokens` reached.
  Length,
}

/// Text-level generation settings (python `stream_generate` kwargs).
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
  /// Token-level settings (max tokens, sampling, processors, caches).
  pub step: StepConfig,
  /// Stop when the output contains any of these (not included in the text).
  pub stop: Vec<String>,
}

/// One streamed piece (python `GenerationResponse`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Response {
  /// New text since the last response (may be empty while a multi-byte
  /// character or a possible stop string is held back).
  pub text: String,
  /// The token id generated at this step.
  pub token: i32,
  /// Set on the last response.
  pub finish_reason: Option<FinishReason>,
  /// Prompt tokens processed.
  pub prompt_tokens: usize,
  /// Prompt tokens per second (prefill).
  pub prompt_tps: f64,
  /// Tokens generated so far.
  pub generation_tokens: usize,
  /// Generated tokens per second so far (excluding prefill).
  pub generation_tps: f64,
  /// Peak MLX memory in GB.
  pub peak_memory_gb: f64,
  /// Log-probability of `token` (python `logprobs[token]`); `None` on a
  /// final response that carries no token (`token == -1`).
  pub logprob: Option<f32>,
  /// The step's most likely `(token, logprob)`, most likely first
  /// ([`StepConfig::top_logprobs`] of them; empty when 0).
  pub top_logprobs: Vec<(i32, f32)>,
  /// Whether the draft model proposed `token` (python
  /// `GenerationResponse.from_draft`; false without a draft model).
  pub from_draft: bool,
}

/// The token source of a [`TextStream`]: plain or speculative decoding.
enum Source<'m> {
  Plain(TokenGenerator<'m>),
  Speculative(SpeculativeGenerator<'m>),
}

impl Source<'_> {
  fn next(&mut self) -> Option<mlxrs_core::Result<Step>> {
    match self {
      Source::Plain(g) => g.next(),
      Source::Speculative(g) => g.next(),
    }
  }
  fn produced(&self) -> usize {
    match self {
      Source::Plain(g) => g.produced(),
      Source::Speculative(g) => g.produced(),
    }
  }
  fn max_tokens(&self) -> usize {
    match self {
      Source::Plain(g) => g.max_tokens(),
      Source::Speculative(g) => g.max_tokens(),
    }
  }
  fn prompt_tokens(&self) -> usize {
    match self {
      Source::Plain(g) => g.prompt_tokens,
      Source::Speculative(g) => g.prompt_tokens,
    }
  }
  fn prompt_time(&self) -> f64 {
    match self {
      Source::Plain(g) => g.prompt_time,
      Source::Speculative(g) => g.prompt_time,
    }
  }
}

/// Build prompt ids as `mlx_lm.generate` does: with a chat template (and no
/// `raw`), `[system?, user: prompt]` rendered with the generation prompt;
/// otherwise the plain text encoded with the tokenizer's special tokens.
pub fn prompt_ids(
  tok: &Tokenizer,
  prompt: &str,
  system: Option<&str>,
  raw: bool,
) -> Result<Vec<u32>> {
  if !raw && tok.has_chat_template() {
    let mut msgs = Vec::new();
    if let Some(s) = system {
      msgs.push(Message::system(s));
    }
    msgs.push(Message::user(prompt));
    let opts = ChatOptions {
      add_generation_prompt: true,
      ..ChatOptions::default()
    };
    tok.apply_chat_template_ids(&msgs, &opts)
  } else {
    tok.encode(prompt, true)
  }
}

/// A streaming generation (iterator of [`Response`]).
pub struct TextStream<'m> {
  tokens_gen: Source<'m>,
  tok: &'m Tokenizer,
  detok: crate::detokenizer::StreamingDetokenizer,
  stop: Vec<String>,
  text: String,
  emitted: usize,
  t_start: Instant,
  done: bool,
  clamp_note: Option<String>,
}

/// `step` with `max_tokens` bounded by `m`'s context (the shared rule,
/// [`crate::limits::bound_generation`]), and the clamp note if any.
fn bounded_step(
  m: &LoadedModel,
  cached: usize,
  prompt: usize,
  step: &StepConfig,
) -> Result<(StepConfig, Option<String>)> {
  let b = crate::limits::bound_generation(m.max_context, cached, prompt, step.max_tokens)?;
  let mut step = step.clone();
  step.max_tokens = b.max_tokens;
  Ok((step, b.note))
}

impl<'m> TextStream<'m> {
  /// Prefill `prompt` and get ready to stream. `cache` continues a prompt
  /// cache (e.g. a chat's previous turns).
  pub fn new(
    m: &'m LoadedModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    cache: Option<Vec<KvCache>>,
  ) -> Result<Self> {
    Self::with_embeddings(m, prompt, None, opts, cache)
  }

  /// [`TextStream::new`] with the prefill on prompt input embeddings
  /// (python `stream_generate(..., input_embeddings=...)`; see
  /// [`TokenGenerator::with_embeddings`]).
  pub fn with_embeddings(
    m: &'m LoadedModel,
    prompt: &[u32],
    embeddings: Option<&PromptEmbeddings>,
    opts: &GenerateOptions,
    cache: Option<Vec<KvCache>>,
  ) -> Result<Self> {
    let tok = m.tokenizer.as_ref().ok_or_else(|| {
      Error::Core(mlxrs_core::Error::InvalidArgument(format!(
        "{}: loaded without a tokenizer",
        m.path.display()
      )))
    })?;
    if opts.stop.iter().any(String::is_empty) {
      return Err(Error::Core(mlxrs_core::Error::InvalidArgument(
        "stop strings must not be empty".into(),
      )));
    }
    let cached = cache
      .as_ref()
      .and_then(|c| c.first())
      .map_or(0, |c| c.offset.max(0) as usize);
    let (step, note) = bounded_step(m, cached, prompt.len(), &opts.step)?;
    let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let _ = memory::reset_peak_memory();
    let tokens_gen = Source::Plain(TokenGenerator::with_embeddings(
      m.model.as_ref(),
      &ids,
      embeddings,
      &step,
      cache,
    )?);
    Self::with_source(tok, opts, tokens_gen, note)
  }

  /// Set when `max_tokens` was clamped to the model's context
  /// ([`crate::limits::bound_generation`]): a message for the user.
  pub fn clamp_note(&self) -> Option<&str> {
    self.clamp_note.as_deref()
  }

  /// Speculative decoding with `draft` (python `stream_generate(model,
  /// tokenizer, prompt, draft_model=draft, num_draft_tokens=...)`): the
  /// draft proposes [`StepConfig::num_draft_tokens`] tokens per step and
  /// `m` verifies them in one forward pass. Each [`Response::from_draft`]
  /// says whether the draft proposed that token. Errors if the two
  /// vocabularies differ.
  pub fn new_speculative(
    m: &'m LoadedModel,
    draft: &'m LoadedModel,
    prompt: &[u32],
    opts: &GenerateOptions,
  ) -> Result<Self> {
    let tok = m.tokenizer.as_ref().ok_or_else(|| {
      Error::Core(mlxrs_core::Error::InvalidArgument(format!(
        "{}: loaded without a tokenizer",
        m.path.display()
      )))
    })?;
    if let Some(dt) = &draft.tokenizer {
      if dt.vocab_size() != tok.vocab_size() {
        return Err(Error::Core(mlxrs_core::Error::InvalidArgument(format!(
          "the draft model's tokenizer ({}: {} tokens) differs from the main model's ({}: {} tokens)",
          draft.path.display(),
          dt.vocab_size(),
          m.path.display(),
          tok.vocab_size()
        ))));
      }
    }
    let (step, note) = bounded_step(m, 0, prompt.len(), &opts.step)?;
    let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let _ = memory::reset_peak_memory();
    let g = SpeculativeGenerator::new(m.model.as_ref(), draft.model.as_ref(), &ids, &step)?;
    Self::with_source(tok, opts, Source::Speculative(g), note)
  }

  fn with_source(
    tok: &'m Tokenizer,
    opts: &GenerateOptions,
    tokens_gen: Source<'m>,
    clamp_note: Option<String>,
  ) -> Result<Self> {
    if opts.stop.iter().any(String::is_empty) {
      return Err(Error::Core(mlxrs_core::Error::InvalidArgument(
        "stop strings must not be empty".into(),
      )));
    }
    Ok(TextStream {
      clamp_note,
      tokens_gen,
      tok,
      detok: tok.detokenizer(),
      stop: opts.stop.clone(),
      text: String::new(),
      emitted: 0,
      t_start: Instant::now(),
      done: false,
    })
  }

  /// The caches (a prompt cache for the next turn), once the stream ends.
  pub fn into_cache(self) -> Vec<KvCache> {
    match self.tokens_gen {
      Source::Plain(g) => g.into_caches(),
      Source::Speculative(g) => g.caches,
    }
  }

  /// Speculative decoding only: `(proposed, accepted)` draft tokens so far.
  pub fn draft_stats(&self) -> Option<(usize, usize)> {
    match &self.tokens_gen {
      Source::Plain(_) => None,
      Source::Speculative(g) => Some((g.drafted, g.accepted)),
    }
  }

  /// Length of the longest suffix of `text` that is a proper prefix of a
  /// stop string (held back until it is decided).
  fn held_back(&self) -> usize {
    let mut hold = 0;
    for s in &self.stop {
      for (i, _) in s.char_indices().skip(1) {
        if self.text.ends_with(&s[..i]) {
          hold = hold.max(i);
        }
      }
    }
    hold
  }

  fn response(&self, text: String, step: Option<&Step>, finish: Option<FinishReason>) -> Response {
    let n = self.tokens_gen.produced();
    let token = step.map(|s| s.token).unwrap_or(-1);
    let gen_time = self.t_start.elapsed().as_secs_f64();
    Response {
      text,
      token,
      finish_reason: finish,
      prompt_tokens: self.tokens_gen.prompt_tokens(),
      prompt_tps: self.tokens_gen.prompt_tokens() as f64 / self.tokens_gen.prompt_time().max(1e-9),
      generation_tokens: n,
      generation_tps: if n > 1 {
        (n - 1) as f64 / gen_time.max(1e-9)
      } else {
        0.0
      },
      peak_memory_gb: memory::peak_memory().unwrap_or(0) as f64 / 1e9,
      logprob: step.map(|s| s.logprob),
      top_logprobs: step.map(|s| s.top_logprobs.clone()).unwrap_or_default(),
      from_draft: step.is_some_and(|s| s.from_draft),
    }
  }

  fn step(&mut self) -> Result<Option<Response>> {
    if self.done {
      return Ok(None);
    }
    if self.tokens_gen.produced() == 0 {
      // Time generation from the first decoded token, as mlx-lm does.
      self.t_start = Instant::now();
    }
    let step = match self.tokens_gen.next() {
      None => {
        self.done = true;
        self.detok.finalize();
        self.text.push_str(&self.detok.last_segment());
        let rest = self.text[self.emitted..].to_string();
        return Ok(Some(self.response(rest, None, Some(FinishReason::Length))));
      }
      Some(s) => s?,
    };
    let id = step.token as u32;
    if self.tok.is_eos(id) {
      self.done = true;
      self.detok.finalize();
      self.text.push_str(&self.detok.last_segment());
      let rest = self.text[self.emitted..].to_string();
      return Ok(Some(self.response(
        rest,
        Some(&step),
        Some(FinishReason::Stop),
      )));
    }
    self.detok.add_token(id);
    self.text.push_str(&self.detok.last_segment());
    // Stop strings: cut at the first occurrence at or after what was emitted
    // (minus what could have started before it).
    let search_from = self
      .emitted
      .saturating_sub(self.stop.iter().map(|s| s.len()).max().unwrap_or(0));
    let search_from = (0..=search_from)
      .rev()
      .find(|&i| self.text.is_char_boundary(i))
      .unwrap_or(0);
    if let Some(pos) = self
      .stop
      .iter()
      .filter_map(|s| {
        self.text[search_from..]
          .find(s.as_str())
          .map(|p| p + search_from)
      })
      .min()
    {
      self.done = true;
      let end = pos.max(self.emitted);
      let out = self.text[self.emitted..end].to_string();
      self.emitted = end;
      return Ok(Some(self.response(
        out,
        Some(&step),
        Some(FinishReason::Stop),
      )));
    }
    let mut end = self.text.len() - self.held_back();
    while !self.text.is_char_boundary(end) {
      end -= 1;
    }
    let end = end.max(self.emitted);
    let out = self.text[self.emitted..end].to_string();
    self.emitted = end;
    let at_limit = self.tokens_gen.produced() >= self.max_tokens();
    if at_limit {
      self.done = true;
      self.detok.finalize();
      self.text.push_str(&self.detok.last_segment());
      let rest = self.text[self.emitted..].to_string();
      self.emitted = self.text.len();
      return Ok(Some(self.response(
        out + &rest,
        Some(&step),
        Some(FinishReason::Length),
      )));
    }
    Ok(Some(self.response(out, Some(&step), None)))
  }

  fn max_tokens(&self) -> usize {
    self.tokens_gen.max_tokens()
  }
}

impl Iterator for TextStream<'_> {
  type Item = Result<Response>;
  fn next(&mut self) -> Option<Self::Item> {
    match self.step() {
      Ok(Some(r)) => Some(Ok(r)),
      Ok(None) => None,
      Err(e) => {
        self.done = true;
        Some(Err(e))
      }
    }
  }
}

/// The whole result of [`generate`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Output {
  /// The generated text.
  pub text: String,
  /// Generated token ids (incl. a final EOS if one was produced).
  pub tokens: Vec<i32>,
  /// Why it ended.
  pub finish_reason: FinishReason,
  /// Prompt tokens.
  pub prompt_tokens: usize,
  /// Prefill tokens/s.
  pub prompt_tps: f64,
  /// Tokens generated.
  pub generation_tokens: usize,
  /// Decode tokens/s.
  pub generation_tps: f64,
  /// Peak MLX memory (GB).
  pub peak_memory_gb: f64,
  /// Log-probability of each token of `tokens`.
  pub logprobs: Vec<f32>,
  /// Per token, the top alternatives (empty unless requested).
  pub top_logprobs: Vec<Vec<(i32, f32)>>,
  /// Per token, whether the draft model proposed it (speculative decoding).
  pub from_draft: Vec<bool>,
}

/// Generate to completion (python `mlx_lm.generate`).
pub fn generate(m: &LoadedModel, prompt: &[u32], opts: &GenerateOptions) -> Result<Output> {
  collect(TextStream::new(m, prompt, opts, None)?)
}

/// Speculative [`generate`] with a draft model (python `mlx_lm.generate(model,
/// tokenizer, prompt, draft_model=draft, num_draft_tokens=...)`).
pub fn generate_speculative(
  m: &LoadedModel,
  draft: &LoadedModel,
  prompt: &[u32],
  opts: &GenerateOptions,
) -> Result<Output> {
  collect(TextStream::new_speculative(m, draft, prompt, opts)?)
}

/// Drain a stream into an [`Output`].
pub fn collect(stream: TextStream<'_>) -> Result<Output> {
  let mut text = String::new();
  let mut tokens = Vec::new();
  let (mut logprobs, mut top_logprobs, mut from_draft) = (Vec::new(), Vec::new(), Vec::new());
  let mut last = None;
  for r in stream {
    let r = r?;
    text.push_str(&r.text);
    if r.token >= 0 {
      tokens.push(r.token);
      logprobs.push(r.logprob.unwrap_or(f32::NAN));
      top_logprobs.push(r.top_logprobs.clone());
      from_draft.push(r.from_draft);
    }
    last = Some(r);
  }
  let last = last
    .ok_or_else(|| Error::Core(mlxrs_core::Error::InvalidArgument("max_tokens is 0".into())))?;
  Ok(Output {
    text,
    tokens,
    finish_reason: last.finish_reason.unwrap_or(FinishReason::Length),
    prompt_tokens: last.prompt_tokens,
    prompt_tps: last.prompt_tps,
    generation_tokens: last.generation_tokens,
    generation_tps: last.generation_tps,
    peak_memory_gb: last.peak_memory_gb,
    logprobs,
    top_logprobs,
    from_draft,
  })
}
