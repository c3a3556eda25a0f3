//! Token sampling and logits processors, computed on the device: mlx-lm's
//! `sample_utils.make_sampler` (temperature, top-p, min-p, XTC, top-k) and
//! `make_logits_processors` (logit bias, repetition / presence / frequency
//! penalties).
//!
//! Randomness uses an explicit MLX key sequence seeded like python's
//! `mx.random.seed(seed)`: each draw splits the state key, keeps the first
//! half as the new state and uses the second, as MLX's global key sequence
//! does.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops, random};

/// Sampling settings (python `make_sampler` arguments). `temp == 0` is
/// greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
  /// Temperature; 0 = greedy.
  pub temp: f32,
  /// Nucleus mass in (0, 1); 0 or 1 = off.
  pub top_p: f32,
  /// Min-p in [0, 1]; 0 = off.
  pub min_p: f32,
  /// Tokens min-p never removes.
  pub min_tokens_to_keep: i32,
  /// Keep the k most likely; 0 = off.
  pub top_k: i32,
  /// XTC probability in [0, 1]; 0 = off.
  pub xtc_probability: f32,
  /// XTC threshold in [0, 0.5].
  pub xtc_threshold: f32,
  /// Token ids XTC never removes (EOS, newline).
  pub xtc_special_tokens: Vec<i32>,
  /// Seed for reproducible sampling (python `mx.random.seed`); `None` uses
  /// the time.
  pub seed: Option<u64>,
}

impl Default for SamplerConfig {
  fn default() -> Self {
    SamplerConfig {
      temp: 0.0,
      top_p: 0.0,
      min_p: 0.0,
      min_tokens_to_keep: 1,
      top_k: 0,
      xtc_probability: 0.0,
      xtc_threshold: 0.1,
      xtc_special_tokens: Vec::new(),
      seed: None,
    }
  }
}

impl SamplerConfig {
  /// Check ranges as mlx-lm does, with messages naming the value.
  pub fn validate(&self, vocab: i32) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if !self.temp.is_finite() || self.temp < 0.0 {
      return bad(format!(
        "temperature must be a finite value >= 0, got {}",
        self.temp
      ));
    }
    if !(0.0..=1.0).contains(&self.top_p) {
      return bad(format!("top_p must be in [0, 1], got {}", self.top_p));
    }
    if !(0.0..=1.0).contains(&self.min_p) {
      return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
    }
    if self.min_tokens_to_keep < 1 {
      return bad(format!(
        "min_tokens_to_keep must be >= 1, got {}",
        self.min_tokens_to_keep
      ));
    }
    if self.top_k < 0 || (self.top_k > 0 && self.top_k >= vocab) {
      return bad(format!(
        "top_k must be 0 (off) or in (0, {vocab}), got {}",
        self.top_k
      ));
    }
    if !(0.0..=1.0).contains(&self.xtc_probability) {
      return bad(format!(
        "xtc_probability must be in [0, 1], got {}",
        self.xtc_probability
      ));
    }
    if !(0.0..=0.5).contains(&self.xtc_threshold) {
      return bad(format!(
        "xtc_threshold must be in [0, 0.5], got {}",
        self.xtc_threshold
      ));
    }
    Ok(())
  }
}

/// A device-side sampler with its own random key sequence.
pub struct Sampler {
  cfg: SamplerConfig,
  key: Option<Array>,
}

fn neg_inf(dtype: Dtype) -> Result<Array> {
  Array::scalar_as(f64::NEG_INFINITY, dtype)
}

impl Sampler {
  /// A sampler for `cfg` (validated against `vocab`).
  pub fn new(cfg: SamplerConfig, vocab: i32) -> Result<Sampler> {
    cfg.validate(vocab)?;
    let seed = cfg.seed.unwrap_or_else(|| {
      std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
    });
    let key = if cfg.temp == 0.0 {
      None
    } else {
      Some(random::key(seed)?)
    };
    Ok(Sampler { cfg, key })
  }

  /// The random key the next sample splits (`None` when greedy): a lazy
  /// array until evaluated.
  pub(crate) fn key(&self) -> Option<&Array> {
    self.key.as_ref()
  }

  /// Put back a key returned by [`Sampler::key`] (a decode step that was
  /// built and then dropped).
  pub(crate) fn set_key(&mut self, key: Option<Array>) {
    self.key = key;
  }

  /// Whether this is greedy decoding.
  pub fn is_greedy(&self) -> bool {
    self.cfg.temp == 0.0
  }

  fn next_key(&mut self) -> Result<Array> {
    let k = self
      .key
      .as_ref()
      .ok_or_else(|| Error::InvalidArgument("greedy sampler has no key".into()))?;
    let both = random::split_num(k, 2)?;
    let state = ops::take_axis(&both, &Array::scalar(0i32), 0)?;
    let sub = ops::take_axis(&both, &Array::scalar(1i32), 0)?;
    self.key = Some(state);
    Ok(sub)
  }

  /// Sample token ids `[B]` from log-probabilities `[B, V]`.
  pub fn sample(&mut self, logprobs: &Array) -> Result<Array> {
    if self.is_greedy() {
      return ops::argmax_axis(logprobs, -1, false);
    }
    let mut lp = logprobs.clone();
    let c = self.cfg.clone();
    if c.top_p > 0.0 && c.top_p < 1.0 {
      lp = apply_top_p(&lp, c.top_p)?;
    }
    if c.min_p != 0.0 {
      lp = apply_min_p(&lp, c.min_p, c.min_tokens_to_keep)?;
    }
    if c.xtc_probability > 0.0 {
      let k = self.next_key()?;
      lp = apply_xtc(
        &lp,
        c.xtc_probability,
        c.xtc_threshold,
        &c.xtc_special_tokens,
        &k,
      )?;
    }
    if c.top_k > 0 {
      lp = apply_top_k(&lp, c.top_k)?;
    }
    let k = self.next_key()?;
    let scaled = ops::multiply(&lp, &Array::scalar_as(1.0 / c.temp as f64, lp.dtype())?)?;
    random::categorical(&scaled, -1, Some(&k))
  }
}

/// Sampled ids as `int32` (the dtype steps hand to the host and feed back
/// to the model). MLX's `argmax` and `categorical` give `uint32`; an id is
/// far below 2^31, so its bits read the same as `int32`, and a `view` (a
/// shared buffer, no kernel) replaces a conversion (one kernel per step on
/// a GPU).
pub(crate) fn token_ids(ids: &Array) -> Result<Array> {
  match ids.dtype() {
    Dtype::Uint32 => ops::view(ids, Dtype::Int32),
    _ => ops::astype(ids, Dtype::Int32),
  }
}

/// Keep the `k` largest log-probs (python `apply_top_k`).
pub fn apply_top_k(logprobs: &Array, k: i32) -> Result<Array> {
  let v = logprobs.dim(-1).unwrap_or(0);
  if !(0 < k && k < v) {
    return Err(Error::InvalidArgument(format!(
      "top_k has to be in (0, {v}), got {k}"
    )));
  }
  let neg = ops::negative(logprobs)?;
  let part = ops::argpartition_axis(&neg, k - 1, -1)?;
  let shape = part.shape();
  let nd = shape.len();
  let mut start = vec![0; nd];
  start[nd - 1] = k;
  let idx = ops::slice(&part, &start, &shape, &vec![1; nd])?;
  ops::put_along_axis(logprobs, &idx, &neg_inf(logprobs.dtype())?, -1)
}

/// Min-p filtering (python `apply_min_p`).
pub fn apply_min_p(logprobs: &Array, min_p: f32, min_tokens_to_keep: i32) -> Result<Array> {
  let top = ops::max_axis(logprobs, -1, true)?;
  let thresh = ops::add(
    &top,
    &Array::scalar_as((min_p as f64).ln(), logprobs.dtype())?,
  )?;
  let mut remove = ops::less(logprobs, &thresh)?;
  if min_tokens_to_keep > 1 {
    let part = ops::argpartition_axis(logprobs, -min_tokens_to_keep, -1)?;
    let shape = part.shape();
    let nd = shape.len();
    let mut start = vec![0; nd];
    start[nd - 1] = shape[nd - 1] - min_tokens_to_keep;
    let idx = ops::slice(&part, &start, &shape, &vec![1; nd])?;
    remove = ops::put_along_axis(&remove, &idx, &Array::scalar(false), -1)?;
  }
  ops::where_(&remove, &neg_inf(logprobs.dtype())?, logprobs)
}

/// Nucleus filtering (python `apply_top_p`).
pub fn apply_top_p(logprobs: &Array, top_p: f32) -> Result<Array> {
  let sorted = ops::sort_axis(logprobs, -1)?;
  let probs = ops::exp(&ops::astype(&sorted, Dtype::Float32)?)?;
  let above = ops::cumsum_axis(&probs, -1, true, false, None)?;
  let shape = probs.shape();
  let nd = shape.len();
  let mut stop1 = shape.clone();
  stop1[nd - 1] = 1;
  let first = |a: &Array| ops::slice(a, &vec![0; nd], &stop1, &vec![1; nd]);
  let total = ops::add(&first(&above)?, &first(&probs)?)?;
  let limit = ops::multiply(&total, &Array::scalar(top_p))?;
  let dropped = ops::sum_axis(&ops::greater_equal(&above, &limit)?, -1, true)?;
  let dropped = ops::astype(&dropped, Dtype::Int32)?;
  let threshold = ops::take_along_axis(&sorted, &dropped, -1)?;
  ops::where_(
    &ops::less(logprobs, &threshold)?,
    &neg_inf(logprobs.dtype())?,
    logprobs,
  )
}

/// XTC ("exclude top choices", python `apply_xtc`), with an explicit key.
pub fn apply_xtc(
  logits: &Array,
  prob: f32,
  threshold: f32,
  special: &[i32],
  key: &Array,
) -> Result<Array> {
  let probs = ops::softmax_axis(logits, -1, false)?;
  let inf = Array::scalar(f32::INFINITY);
  let above = ops::where_(
    &ops::greater(&probs, &Array::scalar(threshold))?,
    &probs,
    &inf,
  )?;
  let mut mask = ops::greater(&probs, &ops::min_axis(&above, -1, true)?)?;
  if !special.is_empty() {
    let v = logits.dim(-1).unwrap_or(0);
    let mut keep = vec![true; v as usize];
    for &t in special {
      if (0..v).contains(&t) {
        keep[t as usize] = false;
      }
    }
    mask = ops::logical_and(&mask, &Array::from_slice(&keep, &[v])?)?;
  }
  let u = random::uniform(
    &Array::scalar(0.0f32),
    &Array::scalar(1.0f32),
    &[],
    Dtype::Float32,
    Some(key),
  )?;
  let filtered = ops::where_(&mask, &neg_inf(logits.dtype())?, logits)?;
  ops::where_(&ops::greater(&u, &Array::scalar(prob))?, logits, &filtered)
}

/// Logits processors (python `make_logits_processors`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitsConfig {
  /// Additive bias per token id.
  pub logit_bias: HashMap<i32, f32>,
  /// Sign-aware multiplicative penalty on recent tokens (> 0).
  pub repetition_penalty: Option<f32>,
  /// Tokens considered by the repetition penalty (default 20).
  pub repetition_context_size: usize,
  /// Subtracted once from recent tokens' logits.
  pub presence_penalty: Option<f32>,
  /// Tokens considered by the presence penalty.
  pub presence_context_size: usize,
  /// Subtracted per occurrence in recent tokens.
  pub frequency_penalty: Option<f32>,
  /// Tokens considered by the frequency penalty.
  pub frequency_context_size: usize,
}

impl LogitsConfig {
  /// Penalties off, context sizes 20 (mlx-lm's defaults).
  pub fn new() -> Self {
    LogitsConfig {
      repetition_context_size: 20,
      presence_context_size: 20,
      frequency_context_size: 20,
      ..Default::default()
    }
  }

  /// Whether any processor is active.
  pub fn is_active(&self) -> bool {
    !self.logit_bias.is_empty()
      || self.repetition_penalty.is_some_and(|p| p != 0.0)
      || self.presence_penalty.is_some_and(|p| p != 0.0)
      || self.frequency_penalty.is_some_and(|p| p != 0.0)
  }

  /// Check values, naming the bad one.
  pub fn validate(&self, vocab: i32) -> Result<()> {
    if let Some(p) = self.repetition_penalty {
      // Python mlx-lm accepts 0 and then divides logits by it; here 0
      // would silently mean "off" (see `is_active`): refuse it.
      if !p.is_finite() || p <= 0.0 {
        return Err(Error::InvalidArgument(format!(
          "repetition_penalty must be a finite float > 0 (1 = off), got {p}"
        )));
      }
    }
    for (&t, b) in &self.logit_bias {
      if !(0..vocab).contains(&t) || !b.is_finite() {
        return Err(Error::InvalidArgument(format!(
          "logit_bias: token {t} (bias {b}) is out of range [0, {vocab})"
        )));
      }
    }
    Ok(())
  }

  /// Apply to `logits` `[1, V]` given the tokens so far.
  pub fn apply(&self, tokens: &[i32], logits: &Array) -> Result<Array> {
    let v = logits.dim(-1).unwrap_or(0);
    let mut add = vec![0.0f32; v as usize];
    let mut mul: Option<Vec<i32>> = None;
    for (&t, &b) in &self.logit_bias {
      if (0..v).contains(&t) {
        add[t as usize] += b;
      }
    }
    let recent = |n: usize| &tokens[tokens.len().saturating_sub(n)..];
    if let Some(p) = self.presence_penalty.filter(|p| *p != 0.0) {
      let mut seen = std::collections::HashSet::new();
      for &t in recent(self.presence_context_size) {
        if (0..v).contains(&t) && seen.insert(t) {
          add[t as usize] -= p;
        }
      }
    }
    if let Some(p) = self.frequency_penalty.filter(|p| *p != 0.0) {
      for &t in recent(self.frequency_context_size) {
        if (0..v).contains(&t) {
          add[t as usize] -= p;
        }
      }
    }
    if self.repetition_penalty.is_some_and(|p| p != 0.0) {
      mul = Some(
        recent(self.repetition_context_size)
          .iter()
          .copied()
          .filter(|t| (0..v).contains(t))
          .collect(),
      );
    }
    let mut out = logits.clone();
    if let (Some(ids), Some(p)) = (mul, self.repetition_penalty) {
      if !ids.is_empty() {
        // mlx-lm: logits[:, tokens] = where(sel < 0, sel * p, sel / p),
        // applied once per distinct token.
        let mut uniq = ids;
        uniq.sort();
        uniq.dedup();
        let idx = Array::from_slice(&uniq, &[1, uniq.len() as i32])?;
        let sel = ops::take_along_axis(&out, &idx, -1)?;
        let pa = Array::scalar_as(p as f64, out.dtype())?;
        let zero = Array::scalar_as(0.0, out.dtype())?;
        let new = ops::where_(
          &ops::less(&sel, &zero)?,
          &ops::multiply(&sel, &pa)?,
          &ops::divide(&sel, &pa)?,
        )?;
        out = ops::put_along_axis(&out, &idx, &new, -1)?;
      }
    }
    if add.iter().any(|x| *x != 0.0) {
      let a = ops::astype(&Array::from_slice(&add, &[1, v])?, out.dtype())?;
      out = ops::add(&out, &a)?;
    }
    Ok(out)
  }
}

#[cfg(test)]
mod token_id_tests {
  use super::*;

  /// `argmax` gives `uint32`; `token_ids` reads the same ids as `int32`.
  #[test]
  fn token_ids_keep_the_ids() -> Result<()> {
    let lp = Array::from_slice::<f32>(&[0.1, 0.9, 0.0, 0.5, 0.2, 0.7], &[2, 3])?;
    let am = ops::argmax_axis(&lp, -1, false)?;
    assert_eq!(am.dtype(), Dtype::Uint32);
    let mut ids = token_ids(&am)?;
    assert_eq!(ids.dtype(), Dtype::Int32);
    assert_eq!(ids.to_vec::<i32>()?, vec![1, 2]);
    let mut same = token_ids(&Array::from_slice::<i32>(&[7, 151_935], &[2])?)?;
    assert_eq!(same.to_vec::<i32>()?, vec![7, 151_935]);
    let mut wide = token_ids(&Array::from_slice::<i64>(&[3, 4], &[2])?)?;
    assert_eq!(wide.dtype(), Dtype::Int32);
    assert_eq!(wide.to_vec::<i32>()?, vec![3, 4]);
    Ok(())
  }
}
