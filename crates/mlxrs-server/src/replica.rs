//! Serving under `mlxrs launch` (python `mlx_lm.server` run by
//! `mlx.launch`, its distributed mode): rank 0 runs the HTTP server and the
//! [`crate::engine`]; every other rank runs [`follow`] and computes the
//! same batches on its own tensor shard, so the collectives inside the
//! sharded model ([`mlxrs_lm::shard`]) line up.
//!
//! Design: a replicated batch. The engine drives a [`Batch`], a thin
//! wrapper over [`BatchGenerator`]; read-only questions (width, whether a
//! prompt can start, ...) go straight to the generator (`Deref`), and every
//! operation that changes it (`start`, `advance`, `step`, `remove`,
//! `cancel_pending`, `clear`) is first sent to the other ranks, then
//! applied. Followers hold an identical generator over their shard and
//! apply the same operations in the same order with the same arguments
//! (row id, prompt ids, [`RowConfig`] with its sampler settings and seed),
//! so every rank runs the same forward passes.
//!
//! The channel is MLX's own: an `all_sum` of an int32 array to which the
//! followers contribute zeros, so every rank reads rank 0's words. Each
//! operation is one fixed header of [`HEADER`] words (sequence number,
//! operation, row id, payload length, a digest of the previous operation's
//! tokens); `start` adds a second `all_sum` with the prompt and the row's
//! settings. A decode step therefore costs one small collective on top of
//! the model's own.
//!
//! Sampling: every rank sees the same logits (the sharded layers end in an
//! `all_sum`), and a row's sampler draws from an explicit key sequence, so
//! a seeded row samples the same token everywhere; rank 0 gives every
//! unseeded row a fresh random seed and sends it. The header's digest of
//! the previous operation's tokens lets a follower notice that it sampled
//! differently from rank 0 and stop (the launcher then stops the job)
//! instead of silently feeding its shard other tokens.
//!
//! Refused under the launcher: constrained decoding (`response_format`
//! schemas, forced or strict tool calls: the request gets a 400, see
//! [`crate::api`]) and speculative decoding (`--draft-model`, an error at
//! start-up). The prompt cache is off (the CLI logs it), so a prefix cache
//! never has to be replicated.
//!
//! Faults: a request that fails on rank 0 (bad ids, NaN logits, ...) fails
//! the same way on every rank, so it still fails alone. The channel itself
//! failing (a peer died: MLX's ring backend turns a closed connection into
//! an error) is fatal: rank 0 logs it and exits, a follower returns the
//! error; `mlxrs launch` then stops every other rank.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};

use mlxrs_core::{Array, Error, Result, distributed as dist};
use mlxrs_lm::{
  BatchGenerator, LanguageModel, LogitsConfig, NewRow, RowConfig, RowToken, SamplerConfig,
};
use mlxrs_nn::KvCache;

/// Words of an operation's header: `[seq, op, id_lo, id_hi, payload_len,
/// digest]`.
pub const HEADER: usize = 6;

const OP_START: i32 = 1;
const OP_ADVANCE: i32 = 2;
const OP_STEP: i32 = 3;
const OP_REMOVE: i32 = 4;
const OP_CANCEL: i32 = 5;
const OP_CLEAR: i32 = 6;
const OP_STOP: i32 = 7;

/// The message of the error that refuses constrained decoding under the
/// launcher.
pub const NO_CONSTRAINTS: &str = "constrained decoding (response_format with a schema, forced or \
                                  strict tool calls) is not available when serving under `mlxrs \
                                  launch`";

/// `words` summed over every rank (the followers pass zeros: the result is
/// rank 0's words on every rank).
fn exchange(words: &[i32]) -> Result<Vec<i32>> {
  let x = Array::from_slice(words, &[words.len() as i32])?;
  dist::all_sum(&x, None)?.to_vec::<i32>()
}

/// A digest of the tokens an operation produced (row id and token).
fn digest<'a>(toks: impl IntoIterator<Item = &'a RowToken>) -> i32 {
  toks.into_iter().fold(17i32, |h, t| {
    h.wrapping_mul(31)
      .wrapping_add(t.id as i32)
      .wrapping_mul(31)
      .wrapping_add(t.token)
  })
}

/// The sending end on rank 0.
struct Link {
  seq: i32,
  digest: i32,
  seeds: RandomState,
}

impl Link {
  fn send(&mut self, op: i32, id: u64, payload: &[i32]) {
    self.seq = self.seq.wrapping_add(1);
    let head = [
      self.seq,
      op,
      id as u32 as i32,
      (id >> 32) as u32 as i32,
      payload.len() as i32,
      self.digest,
    ];
    let sent = exchange(&head).and_then(|_| {
      if payload.is_empty() {
        Ok(())
      } else {
        exchange(payload).map(|_| ())
      }
    });
    if let Err(e) = sent {
      // The group is broken (a rank died): this rank cannot compute
      // alone, and `mlxrs launch` stops the job once one rank fails.
      eprintln!("mlxrs serve: lost the other ranks ({e}); stopping");
      std::process::exit(1);
    }
  }

  /// A fresh random seed for an unseeded row.
  fn seed(&mut self) -> u64 {
    self.seeds.hash_one(self.seq)
  }
}

/// The engine's batch: a [`BatchGenerator`] whose state changes are
/// replicated to the other ranks under the launcher (see the module docs);
/// without a group it is the generator itself.
pub struct Batch<'m> {
  inner: BatchGenerator<'m>,
  link: Option<Link>,
}

impl<'m> Deref for Batch<'m> {
  type Target = BatchGenerator<'m>;

  fn deref(&self) -> &BatchGenerator<'m> {
    &self.inner
  }
}

impl<'m> Batch<'m> {
  /// Wrap `inner`; with `replicate`, this is rank 0 of a group whose other
  /// ranks run [`follow`].
  pub fn new(inner: BatchGenerator<'m>, replicate: bool) -> Batch<'m> {
    Batch {
      inner,
      link: replicate.then(|| Link {
        seq: 0,
        digest: 0,
        seeds: RandomState::new(),
      }),
    }
  }

  /// [`BatchGenerator::start`]; under the launcher an unseeded row gets a
  /// seed (the same on every rank) and constrained rows are refused.
  pub fn start(
    &mut self,
    id: u64,
    prompt: &[i32],
    prefix: Option<Vec<KvCache>>,
    row: &RowConfig,
  ) -> Result<Option<RowToken>> {
    let Some(link) = &mut self.link else {
      return self.inner.start(id, prompt, prefix, row);
    };
    if row.constraint.is_some() {
      return Err(Error::InvalidArgument(NO_CONSTRAINTS.into()));
    }
    if prefix.is_some() {
      return Err(Error::InvalidArgument(
        "the prompt cache is off when serving under `mlxrs launch`".into(),
      ));
    }
    let mut row = row.clone();
    if row.sampler.seed.is_none() {
      row.sampler.seed = Some(link.seed());
    }
    let mut payload = Vec::with_capacity(prompt.len() + 32);
    encode_start(&mut payload, prompt, &row);
    link.send(OP_START, id, &payload);
    let r = self.inner.start(id, prompt, None, &row);
    link.digest = digest(r.as_ref().ok().and_then(Option::as_ref));
    r
  }

  /// [`BatchGenerator::start_embedded`] (a vision-language prompt): one
  /// process only, since vision models are not served under the launcher.
  pub fn start_embedded(
    &mut self,
    id: u64,
    prompt: &[i32],
    embeddings: mlxrs_lm::PromptEmbeddings,
    row: &RowConfig,
  ) -> Result<Option<RowToken>> {
    if self.link.is_some() {
      return Err(Error::InvalidArgument(
        "prompts with images are not served under `mlxrs launch`".into(),
      ));
    }
    self.inner.start_embedded(id, prompt, embeddings, row)
  }

  /// Whether state changes go to other ranks (serving under `mlxrs
  /// launch`).
  pub fn replicated(&self) -> bool {
    self.link.is_some()
  }

  /// [`BatchGenerator::insert_batch`]: one process only (under the
  /// launcher rows start one at a time, [`Batch::start`]).
  pub fn insert_batch(&mut self, group: &[NewRow<'_>]) -> Result<Vec<RowToken>> {
    if self.link.is_some() {
      return Err(Error::InvalidArgument(
        "grouped prefill is not replicated under `mlxrs launch`: start rows one at a time".into(),
      ));
    }
    self.inner.insert_batch(group)
  }

  /// [`BatchGenerator::advance`].
  pub fn advance(&mut self) -> Result<Option<RowToken>> {
    let Some(link) = &mut self.link else {
      return self.inner.advance();
    };
    link.send(OP_ADVANCE, 0, &[]);
    let r = self.inner.advance();
    link.digest = digest(r.as_ref().ok().and_then(Option::as_ref));
    r
  }

  /// [`BatchGenerator::step`].
  pub fn step(&mut self) -> Result<Vec<RowToken>> {
    let Some(link) = &mut self.link else {
      return self.inner.step();
    };
    link.send(OP_STEP, 0, &[]);
    let r = self.inner.step();
    link.digest = digest(r.as_deref().unwrap_or(&[]));
    r
  }

  /// [`BatchGenerator::remove`].
  pub fn remove(&mut self, id: u64) -> Result<bool> {
    if let Some(link) = &mut self.link {
      link.send(OP_REMOVE, id, &[]);
    }
    self.inner.remove(id)
  }

  /// [`BatchGenerator::cancel_pending`].
  pub fn cancel_pending(&mut self) -> Option<u64> {
    if let Some(link) = &mut self.link {
      link.send(OP_CANCEL, 0, &[]);
    }
    self.inner.cancel_pending()
  }

  /// [`BatchGenerator::clear`].
  pub fn clear(&mut self) {
    if let Some(link) = &mut self.link {
      link.send(OP_CLEAR, 0, &[]);
    }
    self.inner.clear()
  }

  /// Tell the followers to return (the engine stopped). Single process:
  /// nothing.
  pub fn stop(&mut self) {
    if let Some(link) = &mut self.link {
      link.send(OP_STOP, 0, &[]);
    }
  }
}

/// The engine's generator for `model` (its pad id, else 0), as every rank
/// builds it: its batching probe runs a forward pass, so all ranks must.
pub fn new_generator<'m>(
  model: &'m dyn LanguageModel,
  prefill_step_size: usize,
  pad: i32,
) -> Result<BatchGenerator<'m>> {
  BatchGenerator::new(model, prefill_step_size, pad)
    .or_else(|_| BatchGenerator::new(model, prefill_step_size, 0))
}

fn bits(x: f32) -> i32 {
  x.to_bits() as i32
}

fn push_u64(w: &mut Vec<i32>, v: u64) {
  w.push(v as u32 as i32);
  w.push((v >> 32) as u32 as i32);
}

fn push_opt(w: &mut Vec<i32>, v: Option<f32>) {
  w.push(i32::from(v.is_some()));
  w.push(bits(v.unwrap_or(0.0)));
}

/// `start`'s payload: the prompt and every [`RowConfig`] field but the
/// constraint (refused). Exhaustive destructuring: a new field must be
/// sent too.
fn encode_start(w: &mut Vec<i32>, prompt: &[i32], row: &RowConfig) {
  let RowConfig {
    sampler,
    logits,
    top_logprobs,
    constraint: _,
    allow_nan,
  } = row;
  let SamplerConfig {
    temp,
    top_p,
    min_p,
    min_tokens_to_keep,
    top_k,
    xtc_probability,
    xtc_threshold,
    xtc_special_tokens,
    seed,
  } = sampler;
  let LogitsConfig {
    logit_bias,
    repetition_penalty,
    repetition_context_size,
    presence_penalty,
    presence_context_size,
    frequency_penalty,
    frequency_context_size,
  } = logits;
  w.push(prompt.len() as i32);
  w.extend_from_slice(prompt);
  for f in [*temp, *top_p, *min_p] {
    w.push(bits(f));
  }
  w.push(*min_tokens_to_keep);
  w.push(*top_k);
  w.push(bits(*xtc_probability));
  w.push(bits(*xtc_threshold));
  w.push(xtc_special_tokens.len() as i32);
  w.extend_from_slice(xtc_special_tokens);
  w.push(i32::from(seed.is_some()));
  push_u64(w, seed.unwrap_or(0));
  let mut bias: Vec<(i32, f32)> = logit_bias.iter().map(|(&t, &b)| (t, b)).collect();
  bias.sort_unstable_by_key(|&(t, _)| t);
  w.push(bias.len() as i32);
  for (t, b) in bias {
    w.push(t);
    w.push(bits(b));
  }
  push_opt(w, *repetition_penalty);
  push_u64(w, *repetition_context_size as u64);
  push_opt(w, *presence_penalty);
  push_u64(w, *presence_context_size as u64);
  push_opt(w, *frequency_penalty);
  push_u64(w, *frequency_context_size as u64);
  push_u64(w, *top_logprobs as u64);
  w.push(i32::from(*allow_nan));
}

/// Reads a payload back, failing (never panicking) on a short one.
struct Reader<'a> {
  w: &'a [i32],
  at: usize,
}

impl Reader<'_> {
  fn take(&mut self, n: usize) -> Result<&[i32]> {
    let end = self.at.checked_add(n).filter(|&e| e <= self.w.len());
    let Some(end) = end else {
      return Err(Error::InvalidArgument(
        "serve replica: a truncated operation from rank 0".into(),
      ));
    };
    let s = &self.w[self.at..end];
    self.at = end;
    Ok(s)
  }

  fn i(&mut self) -> Result<i32> {
    Ok(self.take(1)?[0])
  }

  fn len(&mut self) -> Result<usize> {
    usize::try_from(self.i()?)
      .map_err(|_| Error::InvalidArgument("serve replica: a negative length".into()))
  }

  fn f(&mut self) -> Result<f32> {
    Ok(f32::from_bits(self.i()? as u32))
  }

  fn u64(&mut self) -> Result<u64> {
    let lo = self.i()? as u32 as u64;
    let hi = self.i()? as u32 as u64;
    Ok(lo | (hi << 32))
  }

  fn opt(&mut self) -> Result<Option<f32>> {
    let on = self.i()? != 0;
    let v = self.f()?;
    Ok(on.then_some(v))
  }
}

/// The inverse of [`encode_start`].
fn decode_start(w: &[i32]) -> Result<(Vec<i32>, RowConfig)> {
  let mut r = Reader { w, at: 0 };
  let n = r.len()?;
  let prompt = r.take(n)?.to_vec();
  let temp = r.f()?;
  let top_p = r.f()?;
  let min_p = r.f()?;
  let min_tokens_to_keep = r.i()?;
  let top_k = r.i()?;
  let xtc_probability = r.f()?;
  let xtc_threshold = r.f()?;
  let n = r.len()?;
  let xtc_special_tokens = r.take(n)?.to_vec();
  let seeded = r.i()? != 0;
  let seed = r.u64()?;
  let n = r.len()?;
  let mut logit_bias = std::collections::HashMap::with_capacity(n);
  for _ in 0..n {
    let t = r.i()?;
    logit_bias.insert(t, r.f()?);
  }
  let repetition_penalty = r.opt()?;
  let repetition_context_size = r.u64()? as usize;
  let presence_penalty = r.opt()?;
  let presence_context_size = r.u64()? as usize;
  let frequency_penalty = r.opt()?;
  let frequency_context_size = r.u64()? as usize;
  let top_logprobs = r.u64()? as usize;
  let allow_nan = r.i()? != 0;
  let row = RowConfig {
    sampler: SamplerConfig {
      temp,
      top_p,
      min_p,
      min_tokens_to_keep,
      top_k,
      xtc_probability,
      xtc_threshold,
      xtc_special_tokens,
      seed: seeded.then_some(seed),
    },
    logits: LogitsConfig {
      logit_bias,
      repetition_penalty,
      repetition_context_size,
      presence_penalty,
      presence_context_size,
      frequency_penalty,
      frequency_context_size,
    },
    top_logprobs,
    constraint: None,
    allow_nan,
  };
  Ok((prompt, row))
}

/// A follower rank's loop (ranks > 0 under `mlxrs launch`): receive rank
/// 0's batch operations and apply them to `batch`, until rank 0 stops
/// (`Ok`) or the channel fails or the ranks diverge (`Err`). An operation
/// that fails here failed on rank 0 too (the same request's error); it is
/// not an error of the loop.
pub fn follow_ops(batch: &mut BatchGenerator<'_>) -> Result<()> {
  let mut seq = 0i32;
  let mut last = 0i32;
  loop {
    let head = exchange(&[0; HEADER])?;
    seq = seq.wrapping_add(1);
    if head.len() != HEADER || head[0] != seq {
      return Err(Error::InvalidArgument(format!(
        "serve replica: operation {seq} expected from rank 0, got header {head:?}"
      )));
    }
    if head[5] != last {
      return Err(Error::InvalidArgument(
        "serve replica: this rank sampled other tokens than rank 0 (the ranks diverged)".into(),
      ));
    }
    let id = (head[2] as u32 as u64) | ((head[3] as u32 as u64) << 32);
    let payload_len = usize::try_from(head[4])
      .map_err(|_| Error::InvalidArgument("serve replica: a negative payload length".into()))?;
    let payload = if payload_len > 0 {
      exchange(&vec![0; payload_len])?
    } else {
      Vec::new()
    };
    // Panics in the model code are caught as the engine catches them (a
    // panic leaves rank 0's digest as it was, so this one's too).
    let run = |f: &mut dyn FnMut() -> i32| catch_unwind(AssertUnwindSafe(f)).unwrap_or(last);
    last = match head[1] {
      OP_START => {
        let (prompt, row) = decode_start(&payload)?;
        run(&mut || match batch.start(id, &prompt, None, &row) {
          Ok(t) => digest(t.as_ref()),
          Err(_) => digest(None),
        })
      }
      OP_ADVANCE => run(&mut || match batch.advance() {
        Ok(t) => digest(t.as_ref()),
        Err(_) => digest(None),
      }),
      OP_STEP => run(&mut || match batch.step() {
        Ok(t) => digest(&t),
        Err(_) => digest(None),
      }),
      OP_REMOVE => {
        let _ = batch.remove(id);
        last
      }
      OP_CANCEL => {
        batch.cancel_pending();
        last
      }
      OP_CLEAR => {
        batch.clear();
        last
      }
      OP_STOP => return Ok(()),
      op => {
        return Err(Error::InvalidArgument(format!(
          "serve replica: unknown operation {op} from rank 0"
        )));
      }
    };
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn start_payload_round_trips() {
    let mut row = RowConfig::default();
    row.sampler.temp = 0.7;
    row.sampler.top_p = 0.9;
    row.sampler.top_k = 5;
    row.sampler.xtc_special_tokens = vec![2, 13];
    row.sampler.seed = Some(u64::MAX - 3);
    row.logits = LogitsConfig::new();
    row.logits.logit_bias.insert(7, -1.5);
    row.logits.logit_bias.insert(3, 2.0);
    row.logits.repetition_penalty = Some(1.1);
    row.logits.frequency_penalty = Some(0.25);
    row.top_logprobs = 4;
    row.allow_nan = true;
    let mut w = Vec::new();
    encode_start(&mut w, &[1, 2, 3], &row);
    let (p, back) = decode_start(&w).unwrap();
    assert_eq!(p, vec![1, 2, 3]);
    assert_eq!(back.sampler, row.sampler);
    assert_eq!(back.logits, row.logits);
    assert_eq!(back.top_logprobs, 4);
    assert!(back.allow_nan && back.constraint.is_none());
  }

  #[test]
  fn truncated_payload_is_an_error() {
    let mut w = Vec::new();
    encode_start(&mut w, &[1, 2, 3], &RowConfig::default());
    for cut in 0..w.len() {
      assert!(decode_start(&w[..cut]).is_err(), "cut at {cut}");
    }
    assert!(decode_start(&[-5]).is_err());
  }
}
