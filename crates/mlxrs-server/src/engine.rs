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

use mlxrs_lm::{FinishReason, LoadedModel, NewRow, RowConfig, RowToken, Tokenizer};
use mlxrs_vlm::{VlmInput, VlmModel};
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
    /// Prompt tokens (a vision prompt's image placeholders expanded).
    prompt_tokens: usize,
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
  /// The prompt's images, one per image placeholder (a vision model).
  pub images: Vec<mlxrs_vlm::RgbImage>,
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
  /// The model's context (a vision prompt is bounded again once its image
  /// placeholders are expanded).
  pub max_context: Option<usize>,
  /// This is rank 0 of a tensor-parallel group (`mlxrs launch`): replay
  /// every batch change on the other ranks ([`crate::replica`]).
  pub replicate: bool,
}

struct Waiting {
  index: usize,
  prompt: Arc<Vec<i32>>,
  /// A vision prompt: ids expanded, images processed (the vision tower
  /// runs when the row starts).
  vision: Option<Arc<VlmInput>>,
  /// A vision prompt with its own attention mask: starts only into an
  /// empty batch.
  alone: bool,
  /// A group holding this row failed ([`Engine::insert_group`]): it
  /// starts on its own.
  solo: bool,
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
  /// Whether the row's cache may enter the prompt cache (not a vision
  /// prompt's: its ids do not say which images it saw).
  cacheable: bool,
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
  /// The vision half when the model is a vision-language model.
  vlm: Option<&'m VlmModel>,
  tok: &'m Tokenizer,
  cfg: EngineConfig,
  metrics: Arc<Metrics>,
  cache: PromptCache,
  waiting: VecDeque<Waiting>,
  running: Vec<Running>,
  prefilling: Option<Prefilling>,
  next_id: u64,
}

/// Row `w`'s settings: choices of one request sample from consecutive
/// seeds.
fn row_config(w: &Waiting) -> RowConfig {
  let mut row = w.params.row.clone();
  if let Some(s) = row.sampler.seed {
    row.sampler.seed = Some(s.wrapping_add(w.index as u64));
  }
  row
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
  p.downcast_ref::<&str>()
    .map(|s| s.to_string())
    .or_else(|| p.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "internal error".into())
}

/// The model the engine serves.
pub enum Served {
  /// A language model.
  Text(Box<LoadedModel>),
  /// A vision-language model: its language half decodes; prompts with
  /// images are prefilled from their input embeddings.
  Vision(Box<VlmModel>),
}

impl Served {
  /// The language model that decodes.
  pub fn lm(&self) -> &LoadedModel {
    match self {
      Served::Text(m) => m,
      Served::Vision(v) => &v.lm,
    }
  }

  fn vlm(&self) -> Option<&VlmModel> {
    match self {
      Served::Text(_) => None,
      Served::Vision(v) => Some(v),
    }
  }
}

/// Run the engine loop until `rx` closes and no work is left.
/// `draft`: the speculative decoding draft model (used while one greedy row
/// runs alone).
pub fn run(
  served: Served,
  draft: Option<LoadedModel>,
  rx: Receiver<Job>,
  cfg: EngineConfig,
  metrics: Arc<Metrics>,
) {
  let m = served.lm();
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
    vlm: served.vlm(),
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
    let n = j.params.n;
    let (prompt, vision, params) = match self.vision_prompt(&j) {
      Ok((prompt, vision, max_tokens)) => {
        let mut params = j.params;
        params.max_tokens = max_tokens;
        (Arc::new(prompt), vision.map(Arc::new), Arc::new(params))
      }
      Err(message) => {
        self.dequeued(n);
        for index in 0..n {
          let _ = j.events.send(Event::Error {
            index,
            message: message.clone(),
          });
        }
        return;
      }
    };
    for index in 0..params.n {
      self.waiting.push_back(Waiting {
        index,
        prompt: Arc::clone(&prompt),
        vision: vision.clone(),
        alone: false,
        solo: false,
        params: Arc::clone(&params),
        events: j.events.clone(),
        arrived: j.arrived,
      });
    }
  }

  /// The job's prompt ids, its processed images (a vision model's prompt
  /// with images: placeholders expanded, python `prepare_inputs`) and its
  /// token budget bounded by the context for the expanded prompt.
  fn vision_prompt(&self, j: &Job) -> Result<(Vec<i32>, Option<VlmInput>, usize), String> {
    let Some(vlm) = self.vlm else {
      if !j.images.is_empty() {
        return Err("image inputs need a vision model; this server runs a text model".into());
      }
      return Ok((
        j.prompt.iter().map(|&t| t as i32).collect(),
        None,
        j.params.max_tokens,
      ));
    };
    let input = vlm
      .process_ids(j.prompt.clone(), &j.images)
      .map_err(|e| format!("the images: {e}"))?;
    let ids: Vec<i32> = input.input_ids.iter().map(|&t| t as i32).collect();
    let max_tokens =
      mlxrs_lm::limits::bound_generation(self.cfg.max_context, 0, ids.len(), j.params.max_tokens)
        .map_err(|e| e.to_string())?
        .max_tokens;
    let has_images = input.pixel_values.is_some() || input.clip_pixels.is_some();
    Ok((ids, has_images.then_some(input), max_tokens))
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
    let group = self.take_group();
    if !group.is_empty() {
      prefills += 1;
      let r = catch_unwind(AssertUnwindSafe(|| self.insert_group(group)));
      if let Err(p) = r {
        self.fail_all(&format!("internal error: {}", panic_message(p.as_ref())));
        return;
      }
    }
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
      let end = self.end_width();
      let rows = self.running.len();
      let fits = |w: &Waiting| {
        let join = self.batch.join_width(w.prompt.len());
        self.batch.can_start(w.prompt.len())
          && (self.batch.is_empty()
            || self.within_bounds(rows + 1, end, join + w.params.max_tokens))
      };
      // A prompt with images joins running rows when the model allows it
      // (causal, no sliding windows), else it waits for an empty batch and
      // the rows behind it wait with it, so it is not overtaken forever.
      let mut pick = None;
      for (i, w) in self.waiting.iter().enumerate() {
        if w.vision.is_some() {
          if self.batch.is_empty() || (!w.alone && self.batch.embeddings_can_join() && fits(w)) {
            pick = Some(i);
          }
          break;
        }
        if fits(w) {
          pick = Some(i);
          break;
        }
      }
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

  /// The width the running rows reach if each uses its whole budget.
  fn end_width(&self) -> usize {
    self.batch.width()
      + self
        .running
        .iter()
        .map(|r| r.params.max_tokens.saturating_sub(r.generated.len()))
        .max()
        .unwrap_or(0)
  }

  /// Whether `rows` rows fit once a joining row needs `width` positions
  /// (its prompt's place in the batch plus its `max_tokens`): within the
  /// context bound and, with `--memory-limit-gb`, the memory for `rows`
  /// rows of the larger of `width` and `end` (the running rows' own end,
  /// [`Engine::end_width`]).
  fn within_bounds(&self, rows: usize, end: usize, width: usize) -> bool {
    width <= self.cfg.max_width
      && self
        .cfg
        .memory
        .as_ref()
        .is_none_or(|m| m.fits(rows, end.max(width)))
  }

  /// Waiting rows to prefill together (python `BatchGenerator`'s prompt
  /// batches of `prefill_batch_size`): text prompts from the front of the
  /// queue, in order, at most `prompt_concurrency` of them and the decode
  /// capacity left, each within the width and memory bounds (as
  /// [`Engine::admit`] checks a lone row). Into an empty batch the group's
  /// width is its longest prompt; joining running rows, only prompts that
  /// fit the batch's width in one prefill turn (`len <= width` and
  /// `len <= prefill_step_size`) group, longer ones join chunk by chunk
  /// ([`mlxrs_lm::BatchGenerator::start`]). Empty (each row then starts on
  /// its own, [`Engine::insert`]) when fewer than two qualify, while a
  /// prefill is pending, under the launcher, or when the first row would
  /// start an empty batch from a cached prefix (a lone start reuses it).
  fn take_group(&mut self) -> Vec<Waiting> {
    let running = self.running.len();
    let max = self
      .cfg
      .prompt_concurrency
      .max(1)
      .min(self.capacity().saturating_sub(running));
    if max < 2
      || self.waiting.len() < 2
      || self.prefilling.is_some()
      || !self.batch.batchable()
      || self.batch.replicated()
    {
      return Vec::new();
    }
    let joining = !self.batch.is_empty();
    let width = self.batch.width();
    let front = &self.waiting[0];
    if !joining && self.cfg.prompt_cache_size > 0 && self.cache.reuses(&front.prompt) {
      return Vec::new();
    }
    let end = self.end_width();
    let (mut n, mut longest, mut budget) = (0, 0, 0);
    for w in &self.waiting {
      let len = w.prompt.len();
      if n == max
        || w.vision.is_some()
        || w.solo
        || (joining && (len > width || len > self.cfg.prefill_step_size))
      {
        break;
      }
      let l = if joining { width } else { longest.max(len) };
      let b = budget.max(w.params.max_tokens);
      // A row starting an empty batch is bounded by its own context only.
      let alone = !joining && n == 0;
      if !alone && !self.within_bounds(running + n + 1, end, l + b) {
        break;
      }
      (n, longest, budget) = (n + 1, l, b);
    }
    if n < 2 {
      return Vec::new();
    }
    self.dequeued(n);
    self.waiting.drain(..n).collect()
  }

  /// Prefill `group` ([`Engine::take_group`]) as one batch
  /// ([`mlxrs_lm::BatchGenerator::insert_batch`]). If the group is refused
  /// (a bad row, NaN logits; the batch is then unchanged), its rows go back
  /// to the front of the queue, in order, to start one by one through the
  /// lone-row admission (each when it fits), so a failing request fails
  /// alone.
  fn insert_group(&mut self, group: Vec<Waiting>) {
    if let Some(vlm) = self.vlm {
      vlm.clear_prompt();
    }
    let first = self.next_id;
    self.next_id += group.len() as u64;
    let cfgs: Vec<RowConfig> = group.iter().map(row_config).collect();
    let rows: Vec<NewRow> = group
      .iter()
      .zip(&cfgs)
      .zip(first..)
      .map(|((w, cfg), id)| NewRow {
        id,
        prompt: &w.prompt,
        cfg,
      })
      .collect();
    let r = self.batch.insert_batch(&rows);
    drop(rows);
    match r {
      Ok(tokens) => {
        self.metrics.prefill_groups.fetch_add(1, Ordering::Relaxed);
        self
          .metrics
          .prefill_group_rows
          .fetch_add(tokens.len() as u64, Ordering::Relaxed);
        for ((w, t), id) in group.into_iter().zip(tokens).zip(first..) {
          self.joined(Prefilling { w, id, cached: 0 }, t);
        }
      }
      Err(_) => {
        self
          .metrics
          .queue_depth
          .fetch_add(group.len(), Ordering::Relaxed);
        for w in group.into_iter().rev() {
          self.waiting.push_front(Waiting { solo: true, ..w });
        }
      }
    }
  }

  fn insert(&mut self, w: Waiting) {
    let id = self.next_id;
    self.next_id += 1;
    let mut cached = 0;
    let mut prefix = None;
    if self.batch.is_empty()
      && self.batch.batchable()
      && self.cfg.prompt_cache_size > 0
      && w.vision.is_none()
    {
      match self.cache.lookup(&w.prompt) {
        Ok(Some((c, n))) => {
          prefix = Some(c);
          cached = n;
        }
        Ok(None) => {}
        Err(_) => self.cache.clear(),
      }
    }
    let row = row_config(&w);
    if let Some(vlm) = self.vlm {
      // The vision tower and the merge (Qwen2-VL keeps the prepared
      // prompt in its language model instead: `None`); a text prompt
      // clears what a previous one left there.
      let embeddings = match &w.vision {
        None => {
          vlm.clear_prompt();
          None
        }
        Some(input) => match vlm.prompt_embeddings(input) {
          Ok(e) => e,
          Err(e) => {
            let _ = w.events.send(Event::Error {
              index: w.index,
              message: format!("the images: {e}"),
            });
            return;
          }
        },
      };
      if let Some(e) = embeddings {
        if !self.batch.is_empty() && (e.mask.is_some() || e.one_pass) {
          // Its own mask (e.g. PaliGemma's bidirectional prefix): back to
          // the front of the queue until the batch drains.
          self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
          self.waiting.push_front(Waiting { alone: true, ..w });
          return;
        }
        match self.batch.start_embedded(id, &w.prompt, e, &row) {
          Ok(Some(t)) => self.joined(Prefilling { w, id, cached }, t),
          Ok(None) => self.prefilling = Some(Prefilling { w, id, cached }),
          Err(e) => {
            let _ = w.events.send(Event::Error {
              index: w.index,
              message: e.to_string(),
            });
          }
        }
        return;
      }
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
      cacheable: w.vision.is_none(),
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
    // Before the client hears of it: a metrics read after the last answer
    // sees the row gone.
    self
      .metrics
      .running
      .store(self.running.len(), Ordering::Relaxed);
    if let Some(f) = finish {
      if self.cfg.prompt_cache_size > 0 && r.cacheable {
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
        prompt_tokens: r.prompt.len(),
      });
    }
    if let Err(e) = self.batch.remove(id) {
      self.fail_all(&e.to_string());
    }
  }
}
