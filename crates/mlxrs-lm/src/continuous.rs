//! Continuous batching: python `mlx_lm.generate.BatchGenerator` — rows
//! (requests) join and leave a running decode batch at token boundaries,
//! each with its own sampler, logits processors and top-logprobs count.
//!
//! Layout: the batch shares one cache offset (as in [`crate::batch`]); a
//! row's tokens sit at the right end of its buffer row, left-padded with
//! keys that per-row masks ([`LanguageModel::hidden_padded`]) hide. A row
//! joining a running batch of width `W` is prefilled on its own in caches
//! that start at offset `W - len` with masked zero keys (so its RoPE
//! positions line up with the batch's and only its own tokens are
//! computed), then its cache is concatenated to the batch's along the batch axis
//! (mlx-lm's `BatchKVCache.extend`); a finished row is filtered out
//! (`BatchKVCache.filter`). Because positions are shared, a prompt longer
//! than the batch's width cannot join until the batch has grown to it (or
//! emptied): [`BatchGenerator::fits`]. RoPE scores depend only on position
//! differences, so a row's greedy tokens are those of a lone run up to float
//! rounding (the server's tests check them equal).
//!
//! [`BatchGenerator::start`] / [`BatchGenerator::advance`] spread a joining
//! row's prefill over several loop turns (`prefill_step_size` tokens each,
//! one [`BatchGenerator::step`] of the running rows between two), laying
//! the row out for the width the batch will have when it joins, so running
//! rows keep decoding while a long prompt arrives. Models with
//! sliding-window layers batch through
//! [`LanguageModel::make_batch_caches`] (whole-width caches, windows in the
//! masks).
//!
//! A lone row without padding runs the plain [`LanguageModel::hidden`]
//! path, exactly as [`crate::TokenGenerator`] does; architectures without
//! [`LanguageModel::hidden_padded`] (or with rotating caches) can therefore
//! still be served one row at a time ([`BatchGenerator::batchable`]).

use std::sync::Arc;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::{AttnMask, KvCache, KvCacheKind};

use crate::generate::{PromptEmbeddings, RowStep, StepArrays};
use crate::model::LanguageModel;
use crate::sample::{LogitsConfig, Sampler, SamplerConfig};

/// Per-row generation settings (the per-request part of python
/// `BatchGenerator.insert(prompts, max_tokens, samplers, logits_processors)`).
#[derive(Debug, Clone, Default)]
pub struct RowConfig {
  /// Sampling (temperature, top-p/k, min-p, seed).
  pub sampler: SamplerConfig,
  /// Logits processors (bias, repetition/presence/frequency penalties).
  pub logits: LogitsConfig,
  /// Report this many most likely tokens per step (0 = off).
  pub top_logprobs: usize,
  /// Constrained decoding: each row gets its own [`TokenConstraint`]
  /// from this factory; disallowed tokens are masked before sampling.
  pub constraint: Option<Constraint>,
  /// Keep going when the row's logits are NaN/Inf (the NaN guard of
  /// [`crate::generate::check_finite_logprob`], as `StepConfig::allow_nan`);
  /// by default such a step is an error.
  pub allow_nan: bool,
}

/// The per-row state of a token constraint (constrained decoding; python:
/// a grammar logits processor such as `llguidance`'s or `outlines`'): which
/// tokens may come next, and which one was taken.
pub trait TokenConstraint: Send {
  /// The tokens allowed next as a bitset (bit `t % 32` of word `t / 32`
  /// set for an allowed token `t`; ids past the end are not allowed), or
  /// `None` when any token may come. [`BatchGenerator`] calls it on the
  /// host after it queued the step's forward pass (`async_eval`), so the
  /// mask is computed while the model runs. An implementation that fails
  /// should allow only its end-of-sequence tokens rather than nothing.
  fn allowed(&mut self) -> Option<Vec<u32>>;
  /// The token sampled for the row.
  fn commit(&mut self, token: i32);
}

/// Makes a fresh [`TokenConstraint`] for each row that uses it (so the
/// `n` choices of one request keep separate states).
pub trait ConstraintFactory: Send + Sync {
  /// A constraint at its start state, or why it cannot start.
  fn start(&self) -> std::result::Result<Box<dyn TokenConstraint>, String>;
}

/// A shareable [`ConstraintFactory`] for [`RowConfig::constraint`].
#[derive(Clone)]
pub struct Constraint(pub Arc<dyn ConstraintFactory>);

impl std::fmt::Debug for Constraint {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("Constraint")
  }
}

/// Each row's allowed-token mask (`None` for unconstrained rows), computed
/// on up to 8 host threads when several rows are constrained.
fn row_masks(rows: &mut [RowState]) -> Vec<Option<Vec<u32>>> {
  let n = rows.iter().filter(|r| r.constraint.is_some()).count();
  let threads = std::thread::available_parallelism()
    .map(|t| t.get())
    .unwrap_or(1)
    .min(8);
  if n < 4 || threads < 2 {
    return rows
      .iter_mut()
      .map(|r| r.constraint.as_mut().and_then(|c| c.allowed()))
      .collect();
  }
  let chunk = rows.len().div_ceil(threads);
  std::thread::scope(|s| {
    let handles: Vec<_> = rows
      .chunks_mut(chunk)
      .map(|part| {
        let len = part.len();
        let h = s.spawn(move || {
          part
            .iter_mut()
            .map(|r| r.constraint.as_mut().and_then(|c| c.allowed()))
            .collect::<Vec<_>>()
        });
        (h, len)
      })
      .collect();
    // A panicking constraint leaves its rows of this step unmasked.
    handles
      .into_iter()
      .flat_map(|(h, len)| h.join().unwrap_or_else(|_| vec![None; len]))
      .collect()
  })
}

/// Add `-inf` to the logits (`[1, v]`) of tokens the bitset `mask` leaves
/// out.
fn apply_mask(logits: &Array, mask: &[u32]) -> Result<Array> {
  let v = logits.dim(-1).unwrap_or(0).max(0) as usize;
  let mut add = vec![f32::NEG_INFINITY; v];
  let mut any = false;
  for (t, a) in add.iter_mut().enumerate() {
    if mask.get(t / 32).is_some_and(|w| w >> (t % 32) & 1 == 1) {
      *a = 0.0;
      any = true;
    }
  }
  if !any {
    // Nothing allowed inside the model's vocabulary (a tokenizer larger
    // than the embedding): leave this row unconstrained rather than fail
    // the whole batch.
    return Ok(logits.clone());
  }
  let add = Array::from_slice(&add, &[1, v as i32])?;
  let add = ops::astype(&add, logits.dtype())?;
  ops::add(logits, &add)
}

/// One generated token of one row.
#[derive(Debug, Clone)]
pub struct RowToken {
  /// The row's id (as given to [`BatchGenerator::insert`]).
  pub id: u64,
  /// The token.
  pub token: i32,
  /// Its log-probability (after logits processors).
  pub logprob: f32,
  /// The row's `top_logprobs` most likely `(token, logprob)`, most likely
  /// first.
  pub top_logprobs: Vec<(i32, f32)>,
}

/// One row of [`BatchGenerator::insert_batch`]: its id, prompt ids and
/// settings.
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
  /// The row's id (unique in the batch).
  pub id: u64,
  /// Its prompt token ids.
  pub prompt: &'a [i32],
  /// Its sampler, processors and top-logprobs count.
  pub cfg: &'a RowConfig,
}

struct RowState {
  id: u64,
  sampler: Sampler,
  logits: LogitsConfig,
  /// Prompt + generated tokens (kept only when a processor needs them).
  history: Vec<i32>,
  /// The last sampled token (not yet fed to the model).
  last: i32,
  top: usize,
  /// Leading padding positions of this row.
  pad: usize,
  /// Constrained decoding state.
  constraint: Option<Box<dyn TokenConstraint>>,
  /// Tokens generated so far (for the NaN guard's message).
  produced: usize,
  allow_nan: bool,
  /// Prompt + generated tokens, `last` included (feeds the draft model).
  seq: Vec<i32>,
}

/// The draft model of speculative decoding for a lone row
/// ([`BatchGenerator::set_draft`]).
struct Draft<'m> {
  model: &'m dyn LanguageModel,
  caches: Vec<KvCache>,
  num: usize,
  /// The row whose leading tokens the draft caches hold.
  row: Option<u64>,
  /// Tokens proposed / accepted so far.
  drafted: usize,
  accepted: usize,
}

/// A running decode batch (python `BatchGenerator`).
pub struct BatchGenerator<'m> {
  model: &'m dyn LanguageModel,
  caches: Vec<KvCache>,
  /// Per row, which of the `width` key positions are real tokens.
  valid: Vec<Vec<bool>>,
  rows: Vec<RowState>,
  prefill_step_size: usize,
  /// Why rows cannot run together (`None`: they can).
  refusal: Option<String>,
  /// A joining row whose prefill is spread over several loop turns
  /// ([`BatchGenerator::start`]).
  pending: Option<Pending>,
  draft: Option<Draft<'m>>,
  /// The id under the padding columns of a grouped prefill
  /// ([`BatchGenerator::insert_batch`]).
  pad_id: i32,
  /// The next decode step, already queued (see [`BatchGenerator::step`]).
  ahead: Option<Ahead>,
}

/// A decode step queued before the previous one was read (python
/// `BatchGenerator` keeps `batch.y` one step ahead the same way): it fed
/// every row's `last` token, so the caches hold one position more than the
/// rows have seen, and it has advanced the rows' sampler keys.
struct Ahead {
  st: StepArrays,
  /// The rows' sampler keys before it was built.
  keys: Vec<Option<Array>>,
}

/// A row being prefilled in chunks between decode steps.
struct Pending {
  id: u64,
  prompt: Vec<i32>,
  caches: Vec<KvCache>,
  /// Prompt tokens processed.
  done: usize,
  /// Leading padding positions (the batch width at merge minus the prompt).
  pad: usize,
  row_valid: Vec<bool>,
  sampler: Sampler,
  cfg: RowConfig,
  /// Prompt tokens per turn (`usize::MAX`: all at once).
  budget: usize,
  /// Whether rows were running when the prefill started.
  joining: bool,
  /// Constrained decoding state.
  constraint: Option<Box<dyn TokenConstraint>>,
  /// The prompt's input embeddings (a vision-language prompt), prefilled
  /// instead of the ids' ([`BatchGenerator::start_embedded`]).
  embeddings: Option<PromptEmbeddings>,
}

fn bad(msg: impl Into<String>) -> Error {
  Error::InvalidArgument(msg.into())
}

/// `e` with the row it concerns named first.
fn for_row(id: u64, e: Error) -> Error {
  match e {
    Error::InvalidArgument(m) => bad(format!("row {id}: {m}")),
    other => other,
  }
}

/// Drop the last `n` positions of every cache.
fn trim_caches(caches: &mut [KvCache], n: usize) -> Result<()> {
  for c in caches.iter_mut() {
    if c.trim(n as i32) != n as i32 {
      return Err(bad(format!(
        "a KV cache cannot be trimmed by {n} positions"
      )));
    }
  }
  Ok(())
}

fn eval_caches(caches: &[KvCache]) -> Result<()> {
  let mut state = Vec::new();
  for c in caches {
    if let Some((k, v)) = c.state()? {
      state.push(k);
      state.push(v);
    }
  }
  mlxrs_core::eval(&state)
}

/// Queue the next token of every row from the rows' logits `[B, V]`: one
/// argmax when every row samples greedily without processors or
/// constraints, else each row through its own processors, constraint mask
/// and sampler (constrained rows' masks are computed on the host while the
/// forward pass runs).
fn sample_rows(rows: &mut [RowState], logits: Array) -> Result<StepArrays> {
  let top = rows.iter().map(|r| r.top).max().unwrap_or(0);
  let simple = rows
    .iter()
    .all(|r| r.sampler.is_greedy() && !r.logits.is_active() && r.constraint.is_none());
  if simple {
    let lse = ops::logsumexp_axis(&logits, -1, true)?;
    let logprobs = ops::subtract(&logits, &lse)?;
    let y = crate::sample::token_ids(&ops::argmax_axis(&logprobs, -1, false)?)?;
    return StepArrays::new(y, logprobs, top);
  }
  let v = logits.dim(-1).unwrap_or(0);
  let mut logits = logits;
  let mut masks: Vec<Option<Vec<u32>>> = Vec::new();
  if rows.iter().any(|r| r.constraint.is_some()) {
    logits.async_eval()?;
    masks = row_masks(rows);
  }
  let mut lps = Vec::with_capacity(rows.len());
  let mut ys = Vec::with_capacity(rows.len());
  for (i, r) in rows.iter_mut().enumerate() {
    let i = i as i32;
    let mut l = ops::slice(&logits, &[i, 0], &[i + 1, v], &[1, 1])?;
    if r.logits.is_active() {
      l = r.logits.apply(&r.history, &l)?;
    }
    if let Some(Some(m)) = masks.get(i as usize) {
      l = apply_mask(&l, m)?;
    }
    let lse = ops::logsumexp_axis(&l, -1, true)?;
    let lp = ops::subtract(&l, &lse)?;
    ys.push(crate::sample::token_ids(&r.sampler.sample(&lp)?)?);
    lps.push(lp);
  }
  let y = ops::concatenate_axis(&ys, 0)?;
  let logprobs = ops::concatenate_axis(&lps, 0)?;
  StepArrays::new(y, logprobs, top)
}

/// Hand a step's tokens (read from [`sample_rows`]'s arrays) to `rows`,
/// in row order. The NaN guard first: a row whose logits went non-finite
/// fails the step and its error names the row (python mlx-lm has none);
/// then nothing has changed.
fn take_tokens(rows: &mut [RowState], got: Vec<RowStep>) -> Result<Vec<RowToken>> {
  for (r, (_, lp, _)) in rows.iter().zip(&got) {
    crate::generate::check_finite_logprob(*lp, r.produced, r.allow_nan)
      .map_err(|e| for_row(r.id, e))?;
  }
  let mut res = Vec::with_capacity(rows.len());
  for (r, (t, lp, mut tp)) in rows.iter_mut().zip(got) {
    r.last = t;
    r.produced += 1;
    r.seq.push(t);
    if r.logits.is_active() {
      r.history.push(t);
    }
    if let Some(c) = r.constraint.as_mut() {
      c.commit(t);
    }
    tp.truncate(r.top);
    res.push(RowToken {
      id: r.id,
      token: t,
      logprob: lp,
      top_logprobs: tp,
    });
  }
  Ok(res)
}

impl<'m> BatchGenerator<'m> {
  /// An empty batch for `model`. `pad_id` (any valid id) feeds the probe
  /// that tells whether the architecture batches; `prefill_step_size` is the prompt
  /// chunk (python `prefill_step_size`, 2048).
  pub fn new(
    model: &'m dyn LanguageModel,
    prefill_step_size: usize,
    pad_id: i32,
  ) -> Result<BatchGenerator<'m>> {
    if prefill_step_size == 0 {
      return Err(bad("prefill_step_size must be > 0"));
    }
    if pad_id < 0 || pad_id >= model.vocab_size() {
      return Err(bad(format!(
        "pad id {pad_id} is outside the vocabulary [0, {})",
        model.vocab_size()
      )));
    }
    let fresh = || {
      model
        .make_batch_caches()
        .unwrap_or_else(|| model.make_caches(None))
    };
    let caches = fresh();
    // A padded forward over an empty batch tells whether the architecture
    // implements `hidden_padded`; rotating caches never batch.
    let standard = caches.iter().all(|c| {
      c.kind() == KvCacheKind::Standard
        && !c.is_quantized()
        && !c.is_recurrent()
        && c.chunk_size().is_none()
    });
    let refusal = if !standard {
      Some(
        "batched generation needs plain key/value caches; this model keeps recurrent, rotating, \
         quantized or chunked caches"
          .to_string(),
      )
    } else {
      let mut probe = fresh();
      let x = Array::from_slice(&[pad_id], &[1, 1])?;
      model
        .hidden_padded(&x, &mut probe, &[vec![true]])
        .err()
        .map(|e| match e {
          Error::InvalidArgument(m) => m,
          other => other.to_string(),
        })
    };
    Ok(BatchGenerator {
      model,
      caches,
      valid: Vec::new(),
      rows: Vec::new(),
      prefill_step_size,
      refusal,
      pending: None,
      draft: None,
      pad_id,
      ahead: None,
    })
  }

  /// Fresh (empty) caches for the batch
  /// ([`LanguageModel::make_batch_caches`]).
  fn fresh_caches(&self) -> Vec<KvCache> {
    self
      .model
      .make_batch_caches()
      .unwrap_or_else(|| self.model.make_caches(None))
  }

  /// Whether more than one row can run at once (the architecture has
  /// [`LanguageModel::hidden_padded`] and standard caches).
  pub fn batchable(&self) -> bool {
    self.refusal.is_none()
  }

  /// Why more than one row cannot run at once (the model's own reason),
  /// `None` when [`BatchGenerator::batchable`].
  pub fn batch_refusal(&self) -> Option<&str> {
    self.refusal.as_deref()
  }

  /// Rows running.
  pub fn len(&self) -> usize {
    self.rows.len()
  }

  /// Whether no row runs.
  pub fn is_empty(&self) -> bool {
    self.rows.is_empty()
  }

  /// The shared cache width (positions held per row, padding included;
  /// the position of a step queued ahead is not counted: it belongs to
  /// tokens the rows have not seen yet).
  pub fn width(&self) -> usize {
    if self.rows.is_empty() {
      0
    } else {
      self
        .caches
        .first()
        .map(|c| c.offset.max(0) as usize)
        .unwrap_or(0)
        .saturating_sub(usize::from(self.ahead.is_some()))
    }
  }

  /// Whether a prompt of `len` tokens can join now: always into an empty
  /// batch; otherwise only for a batchable model and `len <= width`.
  pub fn fits(&self, len: usize) -> bool {
    self.rows.is_empty() || (self.batchable() && len <= self.width())
  }

  /// Bytes held by the batch caches.
  pub fn nbytes(&self) -> usize {
    self.caches.iter().map(KvCache::nbytes).sum()
  }

  /// The prompt chunks of a `len`-token prompt, as [`crate::generate`]
  /// splits them: chunks of at most `prefill_step_size` tokens that leave
  /// the last token, then the rest (whose logits give the first token).
  fn pieces(&self, len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut done = 0;
    while len - done > 1 {
      let n = self.prefill_step_size.min(len - done - 1);
      out.push(n);
      done += n;
    }
    out.push(len - done);
    out
  }

  /// Loop turns [`BatchGenerator::start`] + [`BatchGenerator::advance`]
  /// spend on a `len`-token prompt joining running rows: consecutive
  /// pieces are grouped while a turn holds at most `prefill_step_size`
  /// tokens (at least one piece per turn).
  pub fn prefill_turns(&self, len: usize) -> usize {
    if len == 0 {
      return 1;
    }
    let mut turns = 0;
    let mut used = usize::MAX;
    for n in self.pieces(len) {
      if used == usize::MAX || used + n > self.prefill_step_size {
        turns += 1;
        used = n;
      } else {
        used += n;
      }
    }
    turns
  }

  /// The batch width once a `len`-token prompt started now has joined
  /// through [`BatchGenerator::start`]: one decode step runs after each of
  /// its turns but the last, so the width grows by `turns - 1` meanwhile.
  pub fn join_width(&self, len: usize) -> usize {
    if self.rows.is_empty() {
      len
    } else {
      self.width() + self.prefill_turns(len) - 1
    }
  }

  /// Whether a `len`-token prompt can [`BatchGenerator::start`] now: no
  /// other prefill is pending, and either the batch is empty or the model
  /// batches and the prompt fits the width the batch will have when it
  /// joins ([`BatchGenerator::join_width`]).
  pub fn can_start(&self, len: usize) -> bool {
    self.pending.is_none()
      && (self.rows.is_empty() || (self.batchable() && len <= self.join_width(len)))
  }

  /// The id of the row whose prefill is pending, if any.
  pub fn pending(&self) -> Option<u64> {
    self.pending.as_ref().map(|p| p.id)
  }

  /// Drop the pending prefill (its client went away); its id, if any.
  pub fn cancel_pending(&mut self) -> Option<u64> {
    self.pending.take().map(|p| p.id)
  }

  /// Prefill `prompt` as row `id` and return its first token, all at once
  /// (python `BatchGenerator.insert` + the prompt processing of the next
  /// step). `prefix` (only into an empty batch) continues a prompt cache
  /// holding the first `prefix.offset` tokens of `prompt`; at least one
  /// prompt token must be left to process. Errors leave the running rows
  /// untouched. Needs [`BatchGenerator::fits`].
  pub fn insert(
    &mut self,
    id: u64,
    prompt: &[i32],
    prefix: Option<Vec<KvCache>>,
    cfg: &RowConfig,
  ) -> Result<RowToken> {
    if !self.fits(prompt.len()) {
      return Err(bad(format!(
        "a prompt of {} tokens does not fit a running batch of width {}",
        prompt.len(),
        self.width()
      )));
    }
    self.begin(id, prompt, prefix, cfg, false)?;
    loop {
      if let Some(t) = self.advance()? {
        return Ok(t);
      }
    }
  }

  /// Prefill several rows together and return their first tokens, in the
  /// order given (python `BatchGenerator`'s prompt batches,
  /// `prefill_batch_size`): the prompts are left-padded to the longest
  /// one and go through the model as one `[rows, len]` batch per
  /// `prefill_step_size` chunk, instead of one forward pass per row as
  /// [`BatchGenerator::insert`] makes. Into an empty batch the group starts
  /// it (its width: the longest prompt); joining running rows, every
  /// prompt must fit the batch's width ([`BatchGenerator::fits`]) and the
  /// group is laid out for it. One unpadded row runs the computation of
  /// [`BatchGenerator::insert`]; other rows' tokens equal a lone run's up
  /// to float rounding (RoPE scores depend on position differences only).
  /// Every row is checked before anything runs; an error (a bad row, a duplicate id, another prefill
  /// pending, non-finite logits) names the row and leaves the batch as it
  /// was, so a caller can fall back to inserting rows one by one. A model
  /// that does not batch takes one row at a time
  /// ([`BatchGenerator::batchable`]).
  pub fn insert_batch(&mut self, group: &[NewRow<'_>]) -> Result<Vec<RowToken>> {
    if group.is_empty() {
      return Ok(Vec::new());
    }
    self.settle()?;
    if self.pending.is_some() {
      return Err(bad("another prefill is pending"));
    }
    let joining = !self.rows.is_empty();
    if (group.len() > 1 || joining)
      && let Some(why) = &self.refusal
    {
      return Err(bad(format!(
        "this model does not batch, one row at a time into an empty batch: {why}"
      )));
    }
    let longest = group.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    let width = if joining { self.width() } else { longest };
    let mut rows = Vec::with_capacity(group.len());
    for (i, r) in group.iter().enumerate() {
      let row = |e: Error| for_row(r.id, e);
      if group[..i].iter().any(|o| o.id == r.id) {
        return Err(bad(format!("row {} appears twice in the group", r.id)));
      }
      let (sampler, constraint) = self.check_row(r.id, r.prompt, r.cfg).map_err(row)?;
      if r.prompt.len() > width {
        return Err(row(bad(format!(
          "a prompt of {} tokens does not fit a running batch of width {width}",
          r.prompt.len()
        ))));
      }
      rows.push(RowState {
        id: r.id,
        sampler,
        logits: r.cfg.logits.clone(),
        history: if r.cfg.logits.is_active() {
          r.prompt.to_vec()
        } else {
          Vec::new()
        },
        last: 0,
        top: r.cfg.top_logprobs,
        pad: width - r.prompt.len(),
        constraint,
        produced: 0,
        allow_nan: r.cfg.allow_nan,
        seq: r.prompt.to_vec(),
      });
    }
    // The group's key positions: `skip = width - longest` leading ones
    // that are never computed (zero keys, caches starting at that offset,
    // as a lone joining row's), then `longest` computed columns of which
    // each row's leading `longest - len` are padding.
    let b = group.len();
    let skip = width - longest;
    let valid: Vec<Vec<bool>> = rows
      .iter()
      .map(|r| (0..width).map(|j| j >= r.pad).collect())
      .collect();
    let mut grid = Vec::with_capacity(b * longest);
    for r in group {
      grid.extend(std::iter::repeat_n(self.pad_id, longest - r.prompt.len()));
      grid.extend_from_slice(r.prompt);
    }
    let mut caches = if skip > 0 {
      self.padding_caches(b, skip)?
    } else {
      self.fresh_caches()
    };
    let padded = rows.iter().any(|r| r.pad > 0);
    let mut done = 0;
    let mut last = None;
    for n in self.pieces(longest) {
      let mut chunk = Vec::with_capacity(b * n);
      for i in 0..b {
        chunk.extend_from_slice(&grid[i * longest + done..i * longest + done + n]);
      }
      let x = Array::from_slice(&chunk, &[b as i32, n as i32])?;
      let h = if b == 1 && !padded {
        self.model.hidden(&x, &mut caches)?
      } else {
        let kv: Vec<Vec<bool>> = valid
          .iter()
          .map(|v| v[..skip + done + n].to_vec())
          .collect();
        self.model.hidden_padded(&x, &mut caches, &kv)?
      };
      done += n;
      if done < longest {
        eval_caches(&caches)?;
      } else {
        last = Some(h);
      }
    }
    let h = last.ok_or_else(|| bad("internal: no prompt chunk"))?;
    let s = h.shape();
    let h = ops::slice(&h, &[0, s[1] - 1, 0], &s, &[1, 1, 1])?;
    let logits = ops::reshape(&self.model.logits(&h)?, &[b as i32, -1])?;
    let st = sample_rows(&mut rows, logits)?;
    let mut outs = st.outputs();
    for c in &caches {
      if let Some((k, v)) = c.state()? {
        outs.push(k);
        outs.push(v);
      }
    }
    mlxrs_core::eval(&outs)?;
    // The NaN guard is inside: until the merge below, the running rows are
    // untouched.
    let tokens = take_tokens(&mut rows, st.read()?)?;
    if joining {
      self.caches = self.merged_caches(&caches)?;
      self.valid.extend(valid);
    } else {
      self.caches = caches;
      self.valid = valid;
    }
    self.rows.extend(rows);
    Ok(tokens)
  }

  /// Start row `id`'s prefill, chunked prefill interleaved with decode
  /// (python `prefill_step_size`; vLLM's chunked prefill): into an empty
  /// batch the whole prompt is processed now (as
  /// [`BatchGenerator::insert`]); joining running rows, each call
  /// processes at most `prefill_step_size` prompt tokens and the caller
  /// runs one [`BatchGenerator::step`] between two calls of
  /// [`BatchGenerator::advance`], so running rows keep decoding while a
  /// long prompt arrives. The row is laid out for the width the batch will
  /// have when it joins ([`BatchGenerator::join_width`]). `Some(token)`:
  /// the row joined; `None`: call [`BatchGenerator::advance`] after the
  /// next step. Needs [`BatchGenerator::can_start`].
  pub fn start(
    &mut self,
    id: u64,
    prompt: &[i32],
    prefix: Option<Vec<KvCache>>,
    cfg: &RowConfig,
  ) -> Result<Option<RowToken>> {
    if !self.can_start(prompt.len()) {
      return Err(self.cannot_start(prompt.len()));
    }
    self.begin(id, prompt, prefix, cfg, true)?;
    self.advance()
  }

  /// Whether a prompt given as causal input embeddings can join running
  /// rows ([`BatchGenerator::start_embedded`]): the model batches and has
  /// no sliding-window layers (a joining prompt's forward takes one
  /// explicit mask for every layer, which has no window).
  pub fn embeddings_can_join(&self) -> bool {
    self.batchable() && self.model.make_batch_caches().is_none()
  }

  /// Start row `id` from its prompt's input embeddings (a vision-language
  /// prompt with the image features merged in; python mlx-vlm's
  /// `generate_step(input_ids, model, pixel_values, ...)`), as
  /// [`BatchGenerator::start`] starts one from ids: into an empty batch the
  /// prompt is prefilled now, in `prefill_step_size` chunks (one pass when
  /// `embeddings.one_pass`), as [`crate::TokenGenerator::with_embeddings`]
  /// does; joining running rows (a causal prompt only, and
  /// [`BatchGenerator::embeddings_can_join`]) it is laid out for the width
  /// the batch will have, behind masked padding, and prefilled a chunk per
  /// turn. Decoding then continues from token ids. `prompt` holds the ids
  /// the embeddings stand for (the penalties' and the row cache's
  /// history). Needs [`BatchGenerator::can_start`].
  pub fn start_embedded(
    &mut self,
    id: u64,
    prompt: &[i32],
    embeddings: PromptEmbeddings,
    cfg: &RowConfig,
  ) -> Result<Option<RowToken>> {
    let s = embeddings.embeddings.shape();
    if s.len() != 3 || s[0] != 1 || s[1] as usize != prompt.len() {
      return Err(bad(format!(
        "prompt embeddings {s:?} do not match a prompt of {} tokens (expected [1, {}, hidden])",
        prompt.len(),
        prompt.len()
      )));
    }
    if !self.rows.is_empty() {
      if embeddings.mask.is_some() || embeddings.one_pass {
        return Err(bad(
          "a prompt with its own attention mask starts only into an empty batch",
        ));
      }
      if !self.embeddings_can_join() {
        return Err(bad(
          "this model's prompts given as input embeddings start only into an empty batch",
        ));
      }
    }
    if !self.can_start(prompt.len()) {
      return Err(self.cannot_start(prompt.len()));
    }
    self.begin(id, prompt, None, cfg, true)?;
    if let Some(p) = self.pending.as_mut() {
      p.embeddings = Some(embeddings);
    }
    self.advance()
  }

  /// Why a `len`-token prompt cannot [`BatchGenerator::start`] now.
  fn cannot_start(&self, len: usize) -> Error {
    bad(format!(
      "a prompt of {len} tokens cannot start now (running batch of width {}{})",
      self.width(),
      if self.pending.is_some() {
        ", another prefill pending"
      } else {
        ""
      }
    ))
  }

  /// Check a new row (a prompt of valid ids, a fresh id, valid settings)
  /// and make its sampler and constraint state.
  fn check_row(
    &self,
    id: u64,
    prompt: &[i32],
    cfg: &RowConfig,
  ) -> Result<(Sampler, Option<Box<dyn TokenConstraint>>)> {
    if prompt.is_empty() {
      return Err(bad("the prompt is empty (no tokens)"));
    }
    let vocab = self.model.vocab_size();
    if let Some(&t) = prompt.iter().find(|&&t| t < 0 || t >= vocab) {
      return Err(bad(format!(
        "prompt token {t} is outside the vocabulary [0, {vocab})"
      )));
    }
    if self.rows.iter().any(|r| r.id == id) {
      return Err(bad(format!("row {id} is already in the batch")));
    }
    cfg.logits.validate(vocab)?;
    let sampler = Sampler::new(cfg.sampler.clone(), vocab)?;
    let constraint = match &cfg.constraint {
      Some(c) => Some(c.0.start().map_err(bad)?),
      None => None,
    };
    Ok((sampler, constraint))
  }

  /// Validate and set up a pending prefill.
  fn begin(
    &mut self,
    id: u64,
    prompt: &[i32],
    prefix: Option<Vec<KvCache>>,
    cfg: &RowConfig,
    interleave: bool,
  ) -> Result<()> {
    if self.pending.is_some() {
      return Err(bad("another prefill is pending"));
    }
    self.settle()?;
    let (sampler, constraint) = self.check_row(id, prompt, cfg)?;
    let joining = !self.rows.is_empty();
    let (target, budget) = if !joining {
      (prompt.len(), usize::MAX)
    } else if interleave {
      (self.join_width(prompt.len()), self.prefill_step_size)
    } else {
      (self.width(), usize::MAX)
    };
    if target < prompt.len() {
      return Err(bad(format!(
        "a prompt of {} tokens does not fit a running batch of width {}",
        prompt.len(),
        self.width()
      )));
    }
    let pad = target - prompt.len();
    let (caches, done) = match prefix {
      Some(c) if !joining => {
        let n = c.first().map(|c| c.offset.max(0) as usize).unwrap_or(0);
        if c.len() != self.caches.len() || n >= prompt.len() {
          return Err(bad(format!(
            "prompt cache of {n} positions does not fit a prompt of {} tokens",
            prompt.len()
          )));
        }
        (c, n)
      }
      _ if pad > 0 => (self.padding_caches(1, pad)?, 0),
      _ => (self.fresh_caches(), 0),
    };
    // The row's key positions: `pad` masked ones (zero keys, never
    // computed: the caches start at offset `pad`, so the prompt gets the
    // RoPE positions it will have in the batch), then the prompt.
    let row_valid: Vec<bool> = (0..pad + prompt.len()).map(|j| j >= pad).collect();
    self.pending = Some(Pending {
      id,
      prompt: prompt.to_vec(),
      caches,
      done,
      pad,
      row_valid,
      sampler,
      cfg: cfg.clone(),
      budget,
      joining,
      constraint,
      embeddings: None,
    });
    Ok(())
  }

  /// One more turn of the pending prefill (see [`BatchGenerator::start`]):
  /// `Some(token)` once the row joined the batch, `None` while prompt
  /// chunks are left (or nothing is pending). An error drops the pending
  /// row and leaves the running rows untouched.
  pub fn advance(&mut self) -> Result<Option<RowToken>> {
    if self.pending.is_none() {
      return Ok(None);
    }
    self.settle()?;
    let Some(p) = self.pending.take() else {
      return Ok(None);
    };
    match self.advance_pending(p)? {
      Ok(t) => Ok(Some(t)),
      Err(p) => {
        self.pending = Some(p);
        Ok(None)
      }
    }
  }

  /// Process `p`'s next turn: the joined row's first token, or `p` back
  /// when chunks are left.
  fn advance_pending(&mut self, mut p: Pending) -> Result<std::result::Result<RowToken, Pending>> {
    let model = self.model;
    let pad = p.pad;
    let len = p.prompt.len();
    // Prompt positions `from..to`: their ids, or their input embeddings.
    let forward = |p: &mut Pending, from: usize, to: usize| -> Result<Array> {
      if let Some(e) = &p.embeddings {
        let s = e.embeddings.shape();
        let rows = ops::slice(
          &e.embeddings,
          &[0, from as i32, 0],
          &[1, to as i32, s[2]],
          &[1, 1, 1],
        )?;
        if pad == 0 {
          return model.hidden_from_embeddings(&rows, &mut p.caches, e.mask.as_ref());
        }
        // Behind `pad` masked positions: causal over the prompt's own keys.
        let n = to - from;
        let keys = pad + to;
        let allowed: Vec<bool> = (0..n)
          .flat_map(|q| (0..keys).map(move |k| k >= pad && k <= pad + from + q))
          .collect();
        let m = Array::from_slice(&allowed, &[1, 1, n as i32, keys as i32])?;
        return model.hidden_from_embeddings(&rows, &mut p.caches, Some(&AttnMask::Array(m)));
      }
      let x = Array::from_slice(&p.prompt[from..to], &[1, (to - from) as i32])?;
      if pad == 0 {
        model.hidden(&x, &mut p.caches)
      } else {
        model.hidden_padded(&x, &mut p.caches, &[p.row_valid[..pad + to].to_vec()])
      }
    };
    let one_pass = p.embeddings.as_ref().is_some_and(|e| e.one_pass);
    let mut used = 0;
    while len - p.done > 1 && !one_pass {
      let n = self.prefill_step_size.min(len - p.done - 1);
      if used > 0 && used + n > p.budget {
        return Ok(Err(p));
      }
      let from = p.done;
      let _ = forward(&mut p, from, from + n)?;
      eval_caches(&p.caches)?;
      p.done += n;
      used += n;
    }
    let n = len - p.done;
    if used > 0 && used + n > p.budget {
      return Ok(Err(p));
    }
    let from = p.done;
    let h = forward(&mut p, from, len)?;
    let s = h.shape();
    let h = ops::slice(&h, &[0, s[1] - 1, 0], &s, &[1, 1, 1])?;
    let logits = ops::reshape(&model.logits(&h)?, &[1, -1])?;
    let cfg = &p.cfg;
    let mut history = Vec::new();
    let logits = if cfg.logits.is_active() {
      history.extend_from_slice(&p.prompt);
      cfg.logits.apply(&history, &logits)?
    } else {
      logits
    };
    let logits = match p.constraint.as_mut() {
      Some(c) => {
        // Start the forward pass, then compute the mask meanwhile.
        let mut l = logits;
        l.async_eval()?;
        match c.allowed() {
          Some(m) => apply_mask(&l, &m)?,
          None => l,
        }
      }
      None => logits,
    };
    let lse = ops::logsumexp_axis(&logits, -1, true)?;
    let logprobs = ops::subtract(&logits, &lse)?;
    let y = crate::sample::token_ids(&p.sampler.sample(&logprobs)?)?;
    let st = StepArrays::new(y, logprobs, cfg.top_logprobs)?;
    let mut outs = st.outputs();
    for c in &p.caches {
      if let Some((k, v)) = c.state()? {
        outs.push(k);
        outs.push(v);
      }
    }
    mlxrs_core::eval(&outs)?;
    let (token, logprob, top) = st
      .read()?
      .into_iter()
      .next()
      .ok_or_else(|| bad("empty step"))?;
    // The NaN guard, before the row joins (the running rows stay untouched).
    crate::generate::check_finite_logprob(logprob, 0, cfg.allow_nan)?;
    // Merge into the batch (nothing above touched the running rows).
    let Pending {
      id,
      prompt: mut p_prompt,
      caches,
      row_valid,
      sampler,
      cfg,
      joining,
      mut constraint,
      ..
    } = p;
    if self.rows.is_empty() {
      // An empty batch (or one that drained while this row prefilled).
      self.caches = caches;
      self.valid = vec![row_valid];
    } else {
      let w = self.width();
      if !joining || w != row_valid.len() {
        return Err(bad(format!(
          "internal: a row prefilled for width {} cannot join a batch of width {w}",
          row_valid.len()
        )));
      }
      self.caches = self.merged_caches(&caches)?;
      self.valid.push(row_valid);
    }
    if cfg.logits.is_active() {
      history.push(token);
    }
    if let Some(c) = constraint.as_mut() {
      c.commit(token);
    }
    self.rows.push(RowState {
      id,
      sampler,
      logits: cfg.logits.clone(),
      history,
      last: token,
      top: cfg.top_logprobs,
      pad,
      constraint,
      produced: 1,
      allow_nan: cfg.allow_nan,
      seq: {
        let mut q = std::mem::take(&mut p_prompt);
        q.push(token);
        q
      },
    });
    Ok(Ok(RowToken {
      id,
      token,
      logprob,
      top_logprobs: top,
    }))
  }

  /// Caches of `rows` rows holding `pad` masked positions (zero keys and
  /// values shaped like the batch's), offset `pad`.
  fn padding_caches(&self, rows: usize, pad: usize) -> Result<Vec<KvCache>> {
    self
      .caches
      .iter()
      .map(|c| {
        let (k, v) = c.state()?.ok_or_else(|| bad("empty batch cache"))?;
        let zeros = |a: &Array| {
          let s = a.shape();
          ops::zeros(&[rows as i32, s[1], pad as i32, s[3]], a.dtype())
        };
        let mut n = KvCache::standard();
        n.set_state(zeros(&k)?, zeros(&v)?, pad as i32)?;
        Ok(n)
      })
      .collect()
  }

  /// The batch's caches with `rows` (caches of joining rows laid out for
  /// the batch's width) appended along the batch axis (python
  /// `BatchKVCache.extend`).
  fn merged_caches(&self, rows: &[KvCache]) -> Result<Vec<KvCache>> {
    let w = self.width() as i32;
    let mut merged = Vec::with_capacity(self.caches.len());
    for (b, r) in self.caches.iter().zip(rows) {
      let (bk, bv) = b.state()?.ok_or_else(|| bad("empty batch cache"))?;
      let (rk, rv) = r.state()?.ok_or_else(|| bad("empty row cache"))?;
      let k = ops::concatenate_axis(&[bk, rk], 0)?;
      let v = ops::concatenate_axis(&[bv, rv], 0)?;
      let mut c = KvCache::standard();
      c.set_state(k, v, w)?;
      merged.push(c);
    }
    Ok(merged)
  }

  /// One decode step for every row (python `BatchGenerator.next()`): feeds
  /// each row's last token and returns each row's next one, in row order.
  ///
  /// As python's, it queues the step after this one before reading this
  /// one's tokens, from the tokens still on the device, so the device
  /// computes while the host reads and returns: when every row samples
  /// without logits processors or constraints (which need each token on the
  /// host first), no draft model is set, no prefill is pending and the
  /// caches can be trimmed. Removing a row keeps that queued step for the
  /// others; anything else that changes the batch (inserting, a prefill
  /// turn, a draft model) first takes it back (the caches drop its
  /// position, the rows' sampler keys are restored), so the tokens are
  /// those of stepping one at a time.
  pub fn step(&mut self) -> Result<Vec<RowToken>> {
    if self.rows.is_empty() {
      return Ok(Vec::new());
    }
    if self.speculative_now() {
      self.settle()?;
      let Some(mut d) = self.draft.take() else {
        return Err(bad("internal: no draft model"));
      };
      let r = self.speculative_step(&mut d);
      if r.is_err() {
        d.row = None;
      }
      self.draft = Some(d);
      return r;
    }
    let b = self.rows.len() as i32;
    let cur = match self.ahead.take() {
      Some(a) => a.st,
      None => {
        let last: Vec<i32> = self.rows.iter().map(|r| r.last).collect();
        let st = self.forward_step(&Array::from_slice(&last, &[b, 1])?)?;
        mlxrs_core::async_eval(&self.step_outputs(&st)?)?;
        st
      }
    };
    if self.can_look_ahead() {
      let keys = self.rows.iter().map(|r| r.sampler.key().cloned()).collect();
      let st = self.forward_step(&ops::reshape(&cur.y, &[b, 1])?)?;
      mlxrs_core::async_eval(&self.step_outputs(&st)?)?;
      self.ahead = Some(Ahead { st, keys });
    }
    let r = cur.read().and_then(|got| take_tokens(&mut self.rows, got));
    if r.is_err() {
      self.settle()?;
    }
    r
  }

  /// Build one decode step from `x` `[B, 1]` (each row's next input).
  fn forward_step(&mut self, x: &Array) -> Result<StepArrays> {
    let b = self.rows.len();
    let h = if b == 1 && self.rows[0].pad == 0 {
      self.model.hidden(x, &mut self.caches)?
    } else {
      let mut valid = self.valid.clone();
      for v in valid.iter_mut() {
        v.push(true);
      }
      let h = self.model.hidden_padded(x, &mut self.caches, &valid)?;
      self.valid = valid;
      h
    };
    if b == 1 && self.rows[0].pad == 0 {
      self.valid[0].push(true);
    }
    let logits = ops::reshape(&self.model.logits(&h)?, &[b as i32, -1])?;
    sample_rows(&mut self.rows, logits)
  }

  /// A step's arrays to evaluate: its outputs and the caches it wrote.
  fn step_outputs(&self, st: &StepArrays) -> Result<Vec<Array>> {
    let mut outs = st.outputs();
    for c in &self.caches {
      if let Some((k, v)) = c.state()? {
        outs.push(k);
        outs.push(v);
      }
    }
    Ok(outs)
  }

  /// Whether [`BatchGenerator::step`] may queue the next step before
  /// reading this one.
  fn can_look_ahead(&self) -> bool {
    self.draft.is_none()
      && self.pending.is_none()
      && self
        .rows
        .iter()
        .all(|r| !r.logits.is_active() && r.constraint.is_none())
      && self
        .caches
        .iter()
        .all(|c| c.kind() == mlxrs_nn::KvCacheKind::Standard && c.is_trimmable())
  }

  /// Take back a step queued ahead (see [`BatchGenerator::step`]): the
  /// caches drop the position it wrote, every row its key position, and
  /// the rows' sampler keys are those before it. Returns the step, which
  /// may still be computing.
  fn settle(&mut self) -> Result<Option<StepArrays>> {
    let Some(a) = self.ahead.take() else {
      return Ok(None);
    };
    trim_caches(&mut self.caches, 1)?;
    for v in self.valid.iter_mut() {
      v.pop();
    }
    for (r, k) in self.rows.iter_mut().zip(a.keys) {
      r.sampler.set_key(k);
    }
    Ok(Some(a.st))
  }

  /// Wait for a step taken back by an emptied batch, so its memory is
  /// free when the batch is.
  fn drain(st: Option<StepArrays>) -> Result<()> {
    match st {
      Some(st) => mlxrs_core::eval(&st.outputs()),
      None => Ok(()),
    }
  }

  /// Use `draft` for speculative decoding (python
  /// `speculative_generate_step`, mlx_lm.server's `--draft-model`) while
  /// the batch has one row that samples greedily without logits
  /// processors, constraints or top-logprobs: each step then proposes
  /// `num_draft_tokens` draft tokens, verifies them in one forward pass of
  /// the model and returns the accepted ones plus the model's own next
  /// token (the greedy tokens of plain decoding). Other batches step
  /// normally; the draft catches up on the row's tokens when it is used
  /// again. Both models need trimmable (standard) caches and one
  /// vocabulary.
  pub fn set_draft(&mut self, draft: &'m dyn LanguageModel, num_draft_tokens: usize) -> Result<()> {
    if num_draft_tokens == 0 {
      return Err(bad("num_draft_tokens must be > 0"));
    }
    self.settle()?;
    if draft.vocab_size() != self.model.vocab_size() {
      return Err(bad(format!(
        "the draft model's vocabulary ({}) differs from the model's ({}); both must use the same tokenizer",
        draft.vocab_size(),
        self.model.vocab_size()
      )));
    }
    let trimmable = |c: &[KvCache]| {
      c.iter()
        .all(|c| c.kind() == KvCacheKind::Standard && !c.is_quantized() && c.chunk_size().is_none())
    };
    let caches = draft.make_caches(None);
    if !trimmable(&caches) || !trimmable(&self.fresh_caches()) {
      return Err(bad(
        "speculative decoding needs standard (trimmable) KV caches in both models",
      ));
    }
    self.draft = Some(Draft {
      model: draft,
      caches,
      num: num_draft_tokens,
      row: None,
      drafted: 0,
      accepted: 0,
    });
    Ok(())
  }

  /// Draft tokens proposed and accepted so far (speculative decoding).
  pub fn draft_stats(&self) -> (usize, usize) {
    self
      .draft
      .as_ref()
      .map_or((0, 0), |d| (d.drafted, d.accepted))
  }

  /// Whether the next step is speculative (see [`BatchGenerator::set_draft`]).
  fn speculative_now(&self) -> bool {
    self.draft.is_some()
      && self.pending.is_none()
      && self.rows.len() == 1
      && self.rows.iter().all(|r| {
        r.pad == 0
          && r.top == 0
          && r.sampler.is_greedy()
          && !r.logits.is_active()
          && r.constraint.is_none()
      })
      && self
        .caches
        .first()
        .is_some_and(|c| c.offset as usize + 1 == self.rows[0].seq.len())
  }

  /// One speculative step of the lone row (python
  /// `speculative_generate_step`'s loop body, greedy).
  fn speculative_step(&mut self, d: &mut Draft<'m>) -> Result<Vec<RowToken>> {
    let (id, seq) = match self.rows.first() {
      Some(r) => (r.id, r.seq.clone()),
      None => return Ok(Vec::new()),
    };
    let w = seq.len() - 1;
    let last = seq[w];
    if d.row != Some(id) {
      d.caches = d.model.make_caches(None);
      d.row = Some(id);
    }
    // Catch the draft up on the row's tokens (all but `last`).
    let mut off = d
      .caches
      .first()
      .map(|c| c.offset.max(0) as usize)
      .unwrap_or(0);
    if off > w {
      trim_caches(&mut d.caches, off - w)?;
      off = w;
    }
    while off < w {
      let n = self.prefill_step_size.min(w - off);
      let x = Array::from_slice(&seq[off..off + n], &[1, n as i32])?;
      let _ = d.model.hidden(&x, &mut d.caches)?;
      eval_caches(&d.caches)?;
      off += n;
    }
    // Propose `k` tokens.
    let k = d.num;
    let mut y = Array::from_slice(&[last], &[1, 1])?;
    let mut props = Vec::with_capacity(k);
    for _ in 0..k {
      let h = d.model.hidden(&y, &mut d.caches)?;
      let l = ops::reshape(&d.model.logits(&h)?, &[1, -1])?;
      let t = crate::sample::token_ids(&ops::argmax_axis(&l, -1, false)?)?;
      y = ops::reshape(&t, &[1, 1])?;
      props.push(t);
    }
    let mut proposed = ops::concatenate_axis(&props, 0)?;
    let drafted: Vec<i32> = proposed.to_vec()?;
    // Verify `last` + the proposals in one forward pass.
    let mut inp = Vec::with_capacity(k + 1);
    inp.push(last);
    inp.extend_from_slice(&drafted);
    let x = Array::from_slice(&inp, &[1, (k + 1) as i32])?;
    let h = self.model.hidden(&x, &mut self.caches)?;
    let logits = ops::reshape(&self.model.logits(&h)?, &[(k + 1) as i32, -1])?;
    let lse = ops::logsumexp_axis(&logits, -1, true)?;
    let lp = ops::subtract(&logits, &lse)?;
    let mut ys = crate::sample::token_ids(&ops::argmax_axis(&lp, -1, false)?)?;
    let chosen = ops::take_along_axis(&lp, &ops::expand_dims(&ys, 1)?, 1)?;
    let mut outs = vec![ys.clone(), chosen.clone()];
    for c in &self.caches {
      if let Some((k, v)) = c.state()? {
        outs.push(k);
        outs.push(v);
      }
    }
    mlxrs_core::eval(&outs)?;
    let ys: Vec<i32> = ys.to_vec()?;
    let lps: Vec<f32> = ops::astype(&chosen, Dtype::Float32)?.to_vec()?;
    let mut n = 0;
    while n < k && drafted[n] == ys[n] {
      n += 1;
    }
    // The model took `k + 1` inputs and keeps `n + 1`; the draft took `k`
    // (`last` and all proposals but the final one) and keeps at most `n + 1`.
    trim_caches(&mut self.caches, k - n)?;
    trim_caches(&mut d.caches, k - k.min(n + 1))?;
    d.drafted += k;
    d.accepted += n;
    let r = &mut self.rows[0];
    for &t in &ys[..=n] {
      r.seq.push(t);
      self.valid[0].push(true);
    }
    r.last = ys[n];
    Ok(
      (0..=n)
        .map(|i| RowToken {
          id,
          token: ys[i],
          logprob: lps[i],
          top_logprobs: Vec::new(),
        })
        .collect(),
    )
  }

  /// The prompt cache of row `id` (python: the cache mlx-lm's server keeps
  /// for the next turn): its positions as a lone cache, if the row has no
  /// padding (it started the batch) and standard caches; it holds the prompt and every
  /// generated token but the last.
  pub fn row_cache(&self, id: u64) -> Result<Option<Vec<KvCache>>> {
    let Some(i) = self.rows.iter().position(|r| r.id == id) else {
      return Ok(None);
    };
    if self.rows[i].pad != 0 || !self.batchable() {
      return Ok(None);
    }
    let w = self.width() as i32;
    let idx = Array::from_slice(&[i as i32], &[1])?;
    let mut out = Vec::with_capacity(self.caches.len());
    for c in &self.caches {
      let (k, v) = c.state()?.ok_or_else(|| bad("empty batch cache"))?;
      let k = ops::take_axis(&k, &idx, 0)?;
      let v = ops::take_axis(&v, &idx, 0)?;
      // Evaluate now so the copy does not keep the batch buffers alive.
      mlxrs_core::eval(&[k.clone(), v.clone()])?;
      let mut n = KvCache::standard();
      n.set_state(k, v, w)?;
      out.push(n);
    }
    Ok(Some(out))
  }

  /// Remove row `id` (python `BatchKVCache.filter`); `false` if absent.
  /// An emptied batch frees its caches. A step queued ahead (see
  /// [`BatchGenerator::step`]) stays queued for the other rows.
  pub fn remove(&mut self, id: u64) -> Result<bool> {
    let Some(i) = self.rows.iter().position(|r| r.id == id) else {
      return Ok(false);
    };
    if self.rows.len() == 1 {
      BatchGenerator::drain(self.settle()?)?;
      self.rows.clear();
      self.valid.clear();
      self.caches = self.fresh_caches();
      return Ok(true);
    }
    let keep: Vec<i32> = (0..self.rows.len() as i32)
      .filter(|&j| j != i as i32)
      .collect();
    let idx = Array::from_slice(&keep, &[keep.len() as i32])?;
    // Every position the caches hold, the queued step's included.
    let w = self.caches.first().map_or(0, |c| c.offset.max(0));
    let mut kept = Vec::with_capacity(self.caches.len());
    for c in &self.caches {
      let (k, v) = c.state()?.ok_or_else(|| bad("empty batch cache"))?;
      let mut n = KvCache::standard();
      n.set_state(
        ops::take_axis(&k, &idx, 0)?,
        ops::take_axis(&v, &idx, 0)?,
        w,
      )?;
      kept.push(n);
    }
    if let Some(a) = self.ahead.as_mut() {
      a.st = a.st.select_rows(&idx)?;
      a.keys.remove(i);
    }
    self.caches = kept;
    self.rows.remove(i);
    self.valid.remove(i);
    Ok(true)
  }

  /// Drop every row (and a pending prefill) and free the caches (e.g.
  /// after a failed step).
  pub fn clear(&mut self) {
    self.pending = None;
    // Best effort: a failed step's queued successor may fail too.
    let _ = BatchGenerator::drain(self.ahead.take().map(|a| a.st));
    self.rows.clear();
    self.valid.clear();
    self.caches = self.fresh_caches();
  }

  /// Ids of the running rows, in row order.
  pub fn ids(&self) -> Vec<u64> {
    self.rows.iter().map(|r| r.id).collect()
  }
}
