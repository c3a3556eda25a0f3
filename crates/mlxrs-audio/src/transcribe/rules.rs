//! The token-level rules of a decoding step: suppression and
//! CTranslate2's `ApplyTimestampRules`, on the host ([`Rules`]) or as MLX
//! ops on the device ([`DeviceRules`]), and the sampling helpers.

use mlxrs_core::{Array, ops};

use crate::error::{Error, Result};
use crate::tokenizer::SpecialTokens;

use super::decode::GenerateParams;

pub(super) const DISABLED: f32 = f32::MIN;

pub(super) fn log_softmax(x: &[f32]) -> Vec<f32> {
  let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
  let s: f32 = x.iter().map(|v| (v - m).exp()).sum();
  let lse = m + s.ln();
  x.iter().map(|v| v - lse).collect()
}

pub(super) fn logsumexp(x: &[f32]) -> f32 {
  let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
  if m == f32::NEG_INFINITY {
    return m;
  }
  m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
}

pub(super) fn argmax(x: &[f32]) -> usize {
  let mut best = 0;
  for (i, v) in x.iter().enumerate() {
    if *v > x[best] {
      best = i;
    }
  }
  best
}

/// The token-level rules: suppression and CTranslate2's
/// `ApplyTimestampRules`, applied to one step's `logits` in place.
pub(super) struct Rules<'a> {
  pub(super) sp: &'a SpecialTokens,
  pub(super) params: &'a GenerateParams,
  pub(super) begin_suppress: &'a [u32],
  pub(super) timestamps: bool,
  pub(super) prefix_len: usize,
  pub(super) vocab: usize,
}

impl Rules<'_> {
  /// `seq`: every token sampled so far in this hypothesis (prefix included).
  pub(super) fn apply(&self, step: usize, seq: &[u32], logits: &mut [f32]) {
    let n = logits.len();
    let off = |lo: usize, hi: usize, l: &mut [f32]| {
      for v in &mut l[lo.min(n)..hi.min(n)] {
        *v = DISABLED;
      }
    };
    for &t in &self.params.suppress_tokens {
      off(t as usize, t as usize + 1, logits);
    }
    if self.params.suppress_blank && step == self.prefix_len {
      for &t in self.begin_suppress {
        off(t as usize, t as usize + 1, logits);
      }
    }
    if !self.timestamps {
      return;
    }
    let tb = self.sp.timestamp_begin() as usize;
    let end = self.vocab; // exclusive
    let eot = self.sp.eot as usize;
    let nt = self.sp.no_timestamps as usize;
    off(nt, nt + 1, logits);
    let sample_begin = self.prefix_len;
    let mut check = false;
    if step == sample_begin && step == 0 {
      off(0, tb, logits);
      off(
        tb + self.params.max_initial_timestamp_index + 1,
        end,
        logits,
      );
    } else if step > sample_begin {
      let last = seq[step - 1] as usize;
      if last >= tb {
        let penult = if step - 1 > sample_begin {
          seq[step - 2] as usize
        } else {
          last
        };
        if penult >= tb {
          off(tb, end, logits);
        } else {
          off(0, eot, logits);
          off(tb, last, logits);
          check = true;
        }
      } else {
        check = true;
        for t in (sample_begin..step).rev() {
          let tok = seq[t] as usize;
          if tok >= tb {
            off(tb, tok + 1, logits);
            break;
          }
        }
      }
    }
    if check && tb < n {
      let lp = log_softmax(logits);
      let ts = logsumexp(&lp[tb..]);
      let text = lp[..tb].iter().copied().fold(f32::NEG_INFINITY, f32::max);
      if ts > text {
        off(0, tb, logits);
      }
    }
  }
}

/// The timestamp rules of one step as index bounds (what
/// [`Rules::apply`] disables, without the static suppression): text ids
/// `[0, text_below)`, timestamps `[timestamp_begin, ts_below)` and
/// `[from, vocab)`; `check`: then apply the "timestamps more likely than
/// any text token" rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bounds {
  pub(super) text_below: usize,
  pub(super) ts_below: usize,
  pub(super) from: usize,
  pub(super) check: bool,
}

impl Rules<'_> {
  /// [`Rules::apply`]'s sequence-dependent part as [`Bounds`] (same
  /// branches, same order), for the device path.
  pub(super) fn bounds(&self, step: usize, seq: &[u32]) -> Bounds {
    let tb = self.sp.timestamp_begin() as usize;
    let end = self.vocab;
    let mut b = Bounds {
      text_below: 0,
      ts_below: tb,
      from: end,
      check: false,
    };
    if !self.timestamps {
      return b;
    }
    let eot = self.sp.eot as usize;
    let sample_begin = self.prefix_len;
    if step == sample_begin && step == 0 {
      b.text_below = tb;
      b.from = (tb + self.params.max_initial_timestamp_index + 1).min(end);
    } else if step > sample_begin {
      let last = seq[step - 1] as usize;
      if last >= tb {
        let penult = if step - 1 > sample_begin {
          seq[step - 2] as usize
        } else {
          last
        };
        if penult >= tb {
          b.ts_below = end;
        } else {
          b.text_below = eot;
          b.ts_below = last;
          b.check = true;
        }
      } else {
        b.check = true;
        for t in (sample_begin..step).rev() {
          let tok = seq[t] as usize;
          if tok >= tb {
            b.ts_below = tok + 1;
            break;
          }
        }
      }
    }
    b.check &= tb < self.vocab;
    b
  }
}

/// `x - logsumexp(x)` on the device (`x`: `[vocab]`).
pub(super) fn log_softmax_dev(x: &Array) -> Result<Array> {
  Ok(ops::subtract(x, &ops::logsumexp_axis(x, 0, true)?)?)
}

/// [`Rules`] as MLX ops: the decoding rules run on the device and only the
/// chosen token and its log-probability (plus `P(<|nospeech|>)` at the
/// first step) come back to the host, as python mlx-whisper keeps its logit
/// filters on the device. Token-for-token the same choices as
/// [`Rules::apply`] + host `log_softmax` / argmax (the old path, kept
/// behind `MLXRS_WHISPER_HOST_RULES=1`).
pub(super) struct DeviceRules {
  pub(super) vocab: usize,
  pub(super) tb: usize,
  /// Token ids `[vocab]` (int32).
  pub(super) idx: Array,
  /// Token ids with the text ids replaced by `i32::MAX`, so that
  /// `ts_idx < b` selects the timestamps `[timestamp_begin, b)`.
  pub(super) ts_idx: Array,
  /// Text ids (`id < timestamp_begin`, bool `[vocab]`).
  pub(super) text: Array,
  /// Suppressed at every step (bool `[vocab]`): `suppress_tokens` and, with
  /// timestamps, `<|notimestamps|>`.
  pub(super) always: Array,
  /// `always` plus `begin_suppress_tokens` (the first sampled step with
  /// `suppress_blank`).
  pub(super) first: Array,
  /// The value of a suppressed logit (`f32::MIN`, as the host path).
  pub(super) disabled: Array,
}

impl DeviceRules {
  pub(super) fn new(rules: &Rules<'_>) -> Result<DeviceRules> {
    let vocab = rules.vocab;
    let tb = rules.sp.timestamp_begin() as usize;
    let ids: Vec<i32> = (0..vocab as i32).collect();
    let ts_ids: Vec<i32> = ids
      .iter()
      .map(|&i| if (i as usize) < tb { i32::MAX } else { i })
      .collect();
    let text: Vec<bool> = (0..vocab).map(|i| i < tb).collect();
    let mut always = vec![false; vocab];
    for &t in &rules.params.suppress_tokens {
      if let Some(v) = always.get_mut(t as usize) {
        *v = true;
      }
    }
    if rules.timestamps {
      if let Some(v) = always.get_mut(rules.sp.no_timestamps as usize) {
        *v = true;
      }
    }
    let mut first = always.clone();
    for &t in rules.begin_suppress {
      if let Some(v) = first.get_mut(t as usize) {
        *v = true;
      }
    }
    let n = [vocab as i32];
    Ok(DeviceRules {
      vocab,
      tb,
      idx: Array::from_slice(&ids, &n)?,
      ts_idx: Array::from_slice(&ts_ids, &n)?,
      text: Array::from_slice(&text, &n)?,
      always: Array::from_slice(&always, &n)?,
      first: Array::from_slice(&first, &n)?,
      disabled: Array::scalar(DISABLED),
    })
  }

  /// The log-probabilities `[vocab]` after the rules of `step` (python
  /// `log_softmax(rules(logits))`), lazily; `logits`: `[vocab]` float32.
  pub(super) fn log_probs(
    &self,
    rules: &Rules<'_>,
    step: usize,
    seq: &[u32],
    logits: &Array,
  ) -> Result<Array> {
    let b = rules.bounds(step, seq);
    let first = rules.params.suppress_blank && step == rules.prefix_len;
    let mut m = if first {
      self.first.clone()
    } else {
      self.always.clone()
    };
    let thr = |v: usize| Array::scalar(v.min(i32::MAX as usize) as i32);
    if b.text_below > 0 {
      m = ops::logical_or(&m, &ops::less(&self.idx, &thr(b.text_below))?)?;
    }
    if b.ts_below > self.tb {
      m = ops::logical_or(&m, &ops::less(&self.ts_idx, &thr(b.ts_below))?)?;
    }
    if b.from < self.vocab {
      m = ops::logical_or(&m, &ops::greater_equal(&self.idx, &thr(b.from))?)?;
    }
    let mut x = ops::where_(&m, &self.disabled, logits)?;
    if b.check {
      let lp = log_softmax_dev(&x)?;
      let (v, tb) = (self.vocab as i32, self.tb as i32);
      let ts = ops::logsumexp_axis(&ops::slice(&lp, &[tb], &[v], &[1])?, 0, false)?;
      let text = ops::max_axis(&ops::slice(&lp, &[0], &[tb], &[1])?, 0, false)?;
      let off = ops::logical_and(&ops::greater(&ts, &text)?, &self.text)?;
      x = ops::where_(&off, &self.disabled, &x)?;
    }
    log_softmax_dev(&x)
  }
}

/// The running sum of `probs` (`[vocab]`, float32) in id order, padded with
/// the total to a multiple of [`CDF_BLOCK`]: float32 sums within blocks of
/// `CDF_BLOCK` ids, then over the block totals, which keeps the rounding
/// near the host's float64 running sum (a plain float32 running sum over
/// 51864 ids drifts by ~1e-4, enough to move a sampled id).
pub(super) fn blocked_cdf(probs: &Array, vocab: usize) -> Result<Array> {
  let nb = vocab.div_ceil(CDF_BLOCK);
  let pad = nb * CDF_BLOCK - vocab;
  let x = if pad > 0 {
    let z = ops::zeros(&[pad as i32], mlxrs_core::Dtype::Float32)?;
    ops::concatenate(&[probs.clone(), z])?
  } else {
    probs.clone()
  };
  let x = ops::reshape(&x, &[nb as i32, CDF_BLOCK as i32])?;
  let inner = ops::cumsum_axis(&x, 1, false, true, None)?;
  let totals = ops::sum_axis(&x, 1, true)?;
  let before = ops::cumsum_axis(&totals, 0, false, false, None)?;
  Ok(ops::reshape(&ops::add(&inner, &before)?, &[-1])?)
}

/// The first id whose running probability exceeds `u` (as an int32 0-d
/// array), or the argmax of `logp` when rounding leaves the total at or
/// below `u`: the host sampler's inverse-CDF pick, on the device.
pub(super) fn sample_dev(logp: &Array, vocab: usize, u: f64) -> Result<Array> {
  let cdf = blocked_cdf(&ops::exp(logp)?, vocab)?;
  let u = Array::scalar(u as f32);
  let below = ops::astype(&ops::less_equal(&cdf, &u)?, mlxrs_core::Dtype::Int32)?;
  let pick = ops::sum_axis(&below, 0, false)?;
  let best = ops::astype(&ops::argmax(logp, false)?, mlxrs_core::Dtype::Int32)?;
  Ok(ops::where_(
    &ops::less(&pick, &Array::scalar(vocab as i32))?,
    &pick,
    &best,
  )?)
}

/// Ids per block of [`DeviceRules::cdf`].
pub(super) const CDF_BLOCK: usize = 64;

/// [`TranscribeOptions::rules_on_device`] resolved: the option, else
/// `MLXRS_WHISPER_HOST_RULES` (`1`: host, `0`: device), else the device
/// unless MLX's default device is the CPU.
pub(super) fn rules_on_device(opt: Option<bool>) -> Result<bool> {
  if let Some(b) = opt {
    return Ok(b);
  }
  match std::env::var("MLXRS_WHISPER_HOST_RULES") {
    Ok(v) => match v.trim() {
      "1" => Ok(false),
      "0" => Ok(true),
      _ => Err(Error::InvalidArgument(format!(
        "MLXRS_WHISPER_HOST_RULES={v:?}: expected 1 (rules on the host) or 0 (on the device)"
      ))),
    },
    Err(_) => {
      let d = mlxrs_core::Device::default_device()?;
      Ok(d.kind != mlxrs_core::DeviceType::Cpu)
    }
  }
}
