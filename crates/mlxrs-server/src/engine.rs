//! The engine: one dedicated thread owns the model, the running decode batch
//! ([`mlxrs_lm::BatchGenerator`]) and the prompt cache (MLX arrays and
//! default streams are per thread; the model is `Send`, not `Sync`). HTTP
//! handlers send it [`Job`]s over a channel and read their tokens back over
//! a per-request channel. Continuous batching: each loop turn admits
//! waiting rows (up to `prompt_concurrency` prefills, while fewer than
//! `decode_concurrency` rows run), then runs one decode step for every row;
//! a row that finishes, fails or whose client went away leaves at once.
//!
//! Under `mlxrs launch` (python `mlx_lm.server` distributed mode) the
//! batch is a [`crate::replica::Batch`] that replays every change on the
//! other ranks ([`EngineConfig::replicate`]); single-process it forwards
//! straight to the generator.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use mlxrs_lm::{FinishReason, LoadedModel, RowConfig, RowToken, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::memory_budget::MemoryBudget;
use crate::metrics::Metrics;
use crate::prompt_cache::PromptCache;
use crate::replica::{self, Batch};
use crate::row_text::RowText;

/// Per-request generation settings.
#[derive(Debug, Clone)]
pub struct GenParams {
  /// Tokens to generate at most, per choice.
  pub max_tokens: usize,
  /// Sampler, logits processors, top-logprobs.
  pub row: RowConfig,
  /// Stop strings.
  pub stop: Vec<String>,
  /// Choices (`n`).
  pub n: usize,
}

/// What the engine reports to a request.
#[derive(Debug)]
pub enum Event {
  /// A token of choice `index` and the text it completed (may be empty).
  Token {
    /// Choice index.
    index: usize,
    /// New text.
    text: String,
    /// The token id.
    token: i32,
    /// Its log-probability.
    logprob: f32,
    /// The top alternatives (if requested).
    top: Vec<(i32, f32)>,
  },
  /// Choice `index` ended.
  Done {
    /// Choice index.
    index: usize,
    /// Why.
    finish: FinishReason,
    /// Tokens generated (incl. a final EOS).
    completion_tokens: usize,
    /// Prompt positions reused from the prompt cache.
    cached_tokens: usize,
  },
  /// Choice `index` failed; the message says why.
  Error {
    /// Choice index.
    index: usize,
    /// What went wrong.
    message: String,
  },
}

/// One request for the engine.
pub struct Job {
  /// Prompt token ids.
  pub prompt: Vec<u32>,
  /// Settings.
  pub params: GenParams,
  /// Where the engine sends [`Event`]s; dropping the receiver cancels.
  pub events: UnboundedSender<Event>,
  /// Arrival time (for time-to-first-token).
  pub arrived: Instant,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
  /// Rows decoded together at most.
  pub decode_concurrency: usize,
  /// Prompts prefilled per loop turn at most.
  pub prompt_concurrency: usize,
  /// Prompt-cache entries (0 = off).
  pub prompt_cache_size: usize,
  /// Prompt-cache bytes.
  pub prompt_cache_bytes: Option<usize>,
  /// Prefill chunk.
  pub prefill_step_size: usize,
  /// No new row joins a batch whose width plus the row's `max_tokens`
  /// exceeds this (the batch drains and restarts narrow instead).
  pub max_width: usize,
  /// `--memory-limit-gb` admission: no row joins a running batch whose
  /// caches at their final width would then pass the limit (it waits
  /// until rows finish).
  pub memory: Option<Arc<MemoryBudget>>,
  /// Draft tokens per speculative step (with a draft model).
  pub num_draft_tokens: usize,
  /// This is rank 0 of a tensor-parallel group (`mlxrs launch`): replay
  /// every batch change on the other ranks ([`crate::replica`]).
  pub replicate: bool,
}

struct Waiting {
  index: usize,
  prompt: Arc<Vec<i32>>,
  params: Arc<GenParams>,
  events: UnboundedSender<Event>,
  arrived: Instant,
}

struct Running {
  id: u64,
  index: usize,
  prompt: Arc<Vec<i32>>,
  params: Arc<GenParams>,
  events: UnboundedSender<Event>,
  text: RowText,
  generated: Vec<i32>,
  cached: usize,
  first_token: Instant,
}

/// A row whose prompt is prefilled in chunks between decode steps
/// ([`mlxrs_lm::BatchGenerator::start`]).
struct Prefilling {
  w: Waiting,
  id: u64,
  cached: usize,
}

struct Engine<'m> {
  batch: Batch<'m>,
  tok: &'m Tokenizer,
  cfg: EngineConfig,
  metrics: Arc<Metrics>,
  cache: PromptCache,
  waiting: VecDeque<Waiting>,
  running: Vec<Running>,
  prefilling: Option<Prefilling>,
  next_id: u64,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
  p.downcast_ref::<&str>()
    .map(|s| s.to_string())
    .or_else(|| p.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "internal error".into())
}

/// Run the engine loop until `rx` closes and no work is left.
/// `draft`: the speculative decoding draft model (used while one greedy row
/// runs alone).
pub fn run(
  m: LoadedModel,
  draft: Option<LoadedModel>,
  rx: Receiver<Job>,
  cfg: EngineConfig,
  metrics: Arc<Metrics>,
) {
  let Some(tok) = m.tokenizer.as_ref() else {
    return;
  };
  let pad = tok.pad_token_id().or(tok.eos_token_id()).unwrap_or(0) as i32;
  let generator = replica::new_generator(m.model.as_ref(), cfg.prefill_step_size, pad);
  let batch = match generator.and_then(|mut b| {
    if let Some(d) = &draft {
      b.set_draft(d.model.as_ref(), cfg.num_draft_tokens)?;
    }
    Ok(b)
  }) {
    Ok(b) => Batch::new(b, cfg.replicate),
    Err(e) => {
      // Answer every job with the error rather than hanging its client.
      for j in rx.iter() {
        let _ = metrics
          .queue_depth
          .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
            Some(q.saturating_sub(j.params.n))
          });
        for index in 0..j.params.n {
          let _ = j.events.send(Event::Error {
            index,
            message: format!("the engine could not start: {e}"),
          });
        }
      }
      return;
    }
  };
  let mut e = Engine {
    batch,
    tok,
    cache: PromptCache::new(cfg.prompt_cache_size, cfg.prompt_cache_bytes),
    cfg,
    metrics,
    waiting: VecDeque::new(),
    running: Vec::new(),
    prefilling: None,
    next_id: 0,
  };
  let mut open = true;
  // `MLXRS_SERVE_TRACE=1`: one stderr line per loop turn (rows, width,
  // admit and step milliseconds) to see where time goes.
  let trace = std::env::var_os("MLXRS_SERVE_TRACE").is_some_and(|v| v == "1");
  loop {
    if e.running.is_empty() && e.waiting.is_empty() && e.prefilling.is_none() {
      if !open {
        break;
      }
      match rx.recv() {
        Ok(j) => e.enqueue(j),
        Err(_) => break,
      }
    }
    loop {
      match rx.try_recv() {
        Ok(j) => e.enqueue(j),
        Err(TryRecvError::Empty) => break,
        Err(TryRecvError::Disconnected) => {
          open = false;
          break;
        }
      }
    }
    e.drop_cancelled();
    let t0 = Instant::now();
    e.admit();
    e.metrics
      .running_peak
      .fetch_max(e.running.len(), Ordering::Relaxed);
    e.metrics.running.store(e.running.len(), Ordering::Relaxed);
    let t1 = Instant::now();
    let (rows, width) = (e.batch.len(), e.batch.width());
    e.step();
    if trace {
      eprintln!(
        "engine: rows {rows} width {width} waiting {} admit {:.2} ms step {:.2} ms",
        e.waiting.len(),
        (t1 - t0).as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3
      );
    }
    e.metrics.running.store(e.running.len(), Ordering::Relaxed);
  }
  e.batch.stop();
}

impl Engine<'_> {
  /// `n` rows left the queue (the HTTP side counted them in).
  fn dequeued(&self, n: usize) {
    let _ = self
      .metrics
      .queue_depth
      .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
        Some(q.saturating_sub(n))
      });
  }

  fn enqueue(&mut self, j: Job) {
    let prompt: Arc<Vec<i32>> = Arc::new(j.prompt.iter().map(|&t| t as i32).collect());
    let params = Arc::new(j.params);
    for index in 0..params.n {
      self.waiting.push_back(Waiting {
        index,
        prompt: Arc::clone(&prompt),
        params: Arc::clone(&params),
        events: j.events.clone(),
        arrived: j.arrived,
      });
    }
  }

  fn drop_cancelled(&mut self) {
    let before = self.waiting.len();
    self.waiting.retain(|w| !w.events.is_closed());
    self.dequeued(before - self.waiting.len());
    let gone: Vec<u64> = self
      .running
      .iter()
      .filter(|r| r.events.is_closed())
      .map(|r| r.id)
      .collect();
    for id in gone {
      self.finish_row(id, None);
    }
    if self
      .prefilling
      .as_ref()
      .is_some_and(|p| p.w.events.is_closed())
    {
      self.prefilling = None;
      self.batch.cancel_pending();
    }
  }

  fn capacity(&self) -> usize {
    if self.batch.batchable() {
      self.cfg.decode_concurrency.max(1)
    } else {
      1
    }
  }

  /// Admit waiting rows: first the next chunk of a pending prefill, then
  /// new rows while none is pending (a long prompt joining running rows is
  /// prefilled `prefill_step_size` tokens per loop turn, one decode step
  /// between two chunks, so running rows keep streaming).
  fn admit(&mut self) {
    let mut prefills = 0;
    if self.prefilling.is_some() {
      prefills += 1;
      let r = catch_unwind(AssertUnwindSafe(|| self.batch.advance()));
      match r {
        Ok(Ok(Some(t))) => {
          if let Some(p) = self.prefilling.take() {
            self.joined(p, t);
          }
        }
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
          if let Some(p) = self.prefilling.take() {
            let _ = p.w.events.send(Event::Error {
              index: p.w.index,
              message: err.to_string(),
            });
          }
        }
        Err(p) => {
          self.fail_all(&format!("internal error: {}", panic_message(p.as_ref())));
          return;
        }
      }
    }
    while self.prefilling.is_none()
      && prefills < self.cfg.prompt_concurrency.max(1)
      && self.running.len() < self.capacity()
    {
      // The width the running rows reach if each uses its whole budget.
      let end = self.batch.width()
        + self
          .running
          .iter()
          .map(|r| r.params.max_tokens.saturating_sub(r.generated.len()))
          .max()
          .unwrap_or(0);
      let rows = self.running.len();
      let pick = self.waiting.iter().position(|w| {
        let join = self.batch.join_width(w.prompt.len());
        self.batch.can_start(w.prompt.len())
          && (self.batch.is_empty()
            || (join + w.params.max_tokens <= self.cfg.max_width
              && self
                .cfg
                .memory
                .as_ref()
                .is_none_or(|b| b.fits(rows + 1, end.max(join + w.params.max_tokens)))))
      });
      let Some(i) = pick else { break };
      let Some(w) = self.waiting.remove(i) else {
        break;
      };
      self.dequeued(1);
      prefills += 1;
      let r = catch_unwind(AssertUnwindSafe(|| self.insert(w)));
      if let Err(p) = r {
        // A panic inside the model code: the batch state is unknown.
        self.fail_all(&format!("internal error: {}", panic_message(p.as_ref())));
      }
    }
  }

  fn insert(&mut self, w: Waiting) {
    let id = self.next_id;
    self.next_id += 1;
    let mut cached = 0;
    let mut prefix = None;
    if self.batch.is_empty() && self.batch.batchable() && self.cfg.prompt_cache_size > 0 {
      match self.cache.lookup(&w.prompt) {
        Ok(Some((c, n))) => {
          prefix = Some(c);
          cached = n;
        }
        Ok(None) => {}
        Err(_) => self.cache.clear(),
      }
    }
    // Choices of one request sample from consecutive seeds.
    let mut row = w.params.row.clone();
    if let Some(s) = row.sampler.seed {
      row.sampler.seed = Some(s.wrapping_add(w.index as u64));
    }
    match self.batch.start(id, &w.prompt, prefix, &row) {
      Ok(Some(t)) => self.joined(Prefilling { w, id, cached }, t),
      Ok(None) => self.prefilling = Some(Prefilling { w, id, cached }),
      Err(e) => {
        let _ = w.events.send(Event::Error {
          index: w.index,
          message: e.to_string(),
        });
      }
    }
  }

  /// Row `p` joined the batch with its first token `t`.
  fn joined(&mut self, p: Prefilling, t: RowToken) {
    let Prefilling { w, id, cached } = p;
    self.metrics.ttft.observe(w.arrived.elapsed().as_secs_f64());
    self
      .metrics
      .prompt_tokens
      .fetch_add(w.prompt.len() as u64, Ordering::Relaxed);
    if cached > 0 {
      self
        .metrics
        .prompt_cache_hits
        .fetch_add(1, Ordering::Relaxed);
      self
        .metrics
        .cached_tokens
        .fetch_add(cached as u64, Ordering::Relaxed);
    }
    self.running.push(Running {
      id,
      index: w.index,
      text: RowText::new(self.tok, w.params.stop.clone()),
      prompt: w.prompt,
      params: w.params,
      events: w.events,
      generated: Vec::new(),
      cached,
      first_token: Instant::now(),
    });
    self.route(t);
  }

  fn step(&mut self) {
    if self.running.is_empty() {
      return;
    }
    if self.prefilling.is_some() {
      self
        .metrics
        .interleaved_steps
        .fetch_add(1, Ordering::Relaxed);
    }
    let r = catch_unwind(AssertUnwindSafe(|| self.batch.step()));
    let (drafted, accepted) = self.batch.draft_stats();
    self
      .metrics
      .draft_tokens
      .store(drafted as u64, Ordering::Relaxed);
    self
      .metrics
      .draft_accepted
      .store(accepted as u64, Ordering::Relaxed);
    match r {
      Ok(Ok(toks)) => {
        for t in toks {
          self.route(t);
        }
      }
      Ok(Err(err)) => self.fail_all(&err.to_string()),
      Err(p) => self.fail_all(&format!("internal error: {}", panic_message(p.as_ref()))),
    }
  }

  /// Every running row gets `message` as its error; the batch restarts.
  fn fail_all(&mut self, message: &str) {
    if let Some(p) = self.prefilling.take() {
      let _ = p.w.events.send(Event::Error {
        index: p.w.index,
        message: message.to_string(),
      });
    }
    for r in self.running.drain(..) {
      let _ = r.events.send(Event::Error {
        index: r.index,
        message: message.to_string(),
      });
    }
    self.batch.clear();
  }

  fn route(&mut self, t: RowToken) {
    let Some(r) = self.running.iter_mut().find(|r| r.id == t.id) else {
      return;
    };
    r.generated.push(t.token);
    self
      .metrics
      .generation_tokens
      .fetch_add(1, Ordering::Relaxed);
    let (text, finish) = r.text.push(
      self.tok,
      t.token as u32,
      r.generated.len(),
      r.params.max_tokens,
    );
    let sent = r.events.send(Event::Token {
      index: r.index,
      text,
      token: t.token,
      logprob: t.logprob,
      top: t.top_logprobs,
    });
    if sent.is_err() {
      self.finish_row(t.id, None);
    } else if let Some(f) = finish {
      self.finish_row(t.id, Some(f));
    }
  }

  /// Remove row `id`; with a finish reason, report it and keep its cache.
  fn finish_row(&mut self, id: u64, finish: Option<FinishReason>) {
    let Some(i) = self.running.iter().position(|r| r.id == id) else {
      return;
    };
    let r = self.running.remove(i);
    if let Some(f) = finish {
      if self.cfg.prompt_cache_size > 0 {
        if let Ok(Some(mut c)) = self.batch.row_cache(id) {
          // The cache holds the prompt and all generated tokens but the last
          // (after a speculative step that ran past the row's end, more:
          // trimmed back).
          let mut key: Vec<i32> = r.prompt.as_ref().clone();
          key.extend_from_slice(&r.generated[..r.generated.len().saturating_sub(1)]);
          let fits = c.iter_mut().all(|c| {
            let extra = c.offset - key.len() as i32;
            extra >= 0 && c.trim(extra) == extra
          });
          if fits {
            self.cache.insert(key, c);
          }
        }
      }
      let n = r.generated.len();
      let secs = r.first_token.elapsed().as_secs_f64();
      if n > 1 && secs > 0.0 {
        self.metrics.tps.observe((n - 1) as f64 / secs);
      }
      let _ = r.events.send(Event::Done {
        index: r.index,
        finish: f,
        completion_tokens: n,
        cached_tokens: r.cached,
      });
    }
    if let Err(e) = self.batch.remove(id) {
      self.fail_all(&e.to_string());
    }
  }
}
