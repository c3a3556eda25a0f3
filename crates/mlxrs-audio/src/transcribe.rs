//! Transcription as faster-whisper does it (python
//! `faster_whisper.WhisperModel.transcribe` over CTranslate2's
//! `Whisper.generate`): the prompt (`<|startofprev|>` + previous text, the
//! sot sequence), token suppression (`suppress_blank`, `suppress_tokens`
//! with `-1` = the non-speech symbols), the timestamp rules
//! (`ApplyTimestampRules`), sequential long-form decoding that seeks over
//! 30 s windows, the no-speech / compression-ratio / average-log-prob
//! thresholds with temperature fallback, `condition_on_previous_text`, and
//! language detection for multilingual models.
//!
//! Greedy decoding (`beam_size = 1`, temperature 0) is token-exact with
//! faster-whisper on the committed references; beam search follows
//! CTranslate2's `BeamSearch`, sampling uses mlxrs's own generator.

use std::io::Write;

use mlxrs_core::{Array, ops};

use crate::audio::{Audio, SAMPLE_RATE, to_whisper_rate};
use crate::error::{Error, Result};
use crate::mel::{HOP_LENGTH, log_mel_spectrogram};
use crate::timing::{Word, add_word_timestamps, get_end};
use crate::tokenizer::{SpecialTokens, WhisperTokenizer};
use crate::whisper::{DecoderState, Whisper, WhisperModel};

/// What to do with the speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
  /// Transcribe in the spoken language.
  #[default]
  Transcribe,
  /// Translate to English.
  Translate,
}

impl std::str::FromStr for Task {
  type Err = Error;
  fn from_str(s: &str) -> Result<Task> {
    match s {
      "transcribe" => Ok(Task::Transcribe),
      "translate" => Ok(Task::Translate),
      o => Err(Error::InvalidArgument(format!(
        "task {o:?}: expected transcribe or translate"
      ))),
    }
  }
}

/// Options of [`Whisper::transcribe`], named and defaulted as
/// faster-whisper's `transcribe(...)` arguments except `beam_size` (1:
/// greedy).
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
  /// Spoken language code (`"en"`); `None` detects it (multilingual models)
  /// or means English (`.en` models).
  pub language: Option<String>,
  /// Transcribe or translate.
  pub task: Task,
  /// Beam size at temperature 0 (1 = greedy).
  pub beam_size: usize,
  /// Samples drawn at temperature > 0; the best is kept.
  pub best_of: usize,
  /// Beam search patience factor.
  pub patience: f32,
  /// Exponent of the length normalization of scores.
  pub length_penalty: f32,
  /// Temperatures tried in order when a window fails the thresholds.
  pub temperatures: Vec<f32>,
  /// Fail a window whose gzip compression ratio is above this.
  pub compression_ratio_threshold: Option<f32>,
  /// Fail a window whose average log-probability is below this.
  pub log_prob_threshold: Option<f32>,
  /// Skip a window as silent when `<|nospeech|>` is above this and the
  /// log-probability failed.
  pub no_speech_threshold: Option<f32>,
  /// Prompt each window with the previous text.
  pub condition_on_previous_text: bool,
  /// Stop conditioning after a window decoded above this temperature.
  pub prompt_reset_on_temperature: f32,
  /// Text prompt for the first window.
  pub initial_prompt: Option<String>,
  /// Forced text prefix of the first window.
  pub prefix: Option<String>,
  /// Suppress blank / end-of-text at the first sampled position.
  pub suppress_blank: bool,
  /// Token ids to suppress; `-1` adds the non-speech symbols. Empty: none.
  pub suppress_tokens: Vec<i64>,
  /// Decode text only (`<|notimestamps|>`): one segment per window.
  pub without_timestamps: bool,
  /// The first timestamp cannot be later than this (seconds).
  pub max_initial_timestamp: f32,
  /// Maximum new tokens per window (default: half the decoder context).
  pub max_new_tokens: Option<usize>,
  /// Seed of the sampler at temperature > 0.
  pub seed: u64,
  /// Word-level timestamps from the cross-attention of the alignment heads
  /// (python `word_timestamps=True`); fills [`Segment::words`] and, as
  /// faster-whisper does, moves segment boundaries and the next window's
  /// seek to the word timings.
  pub word_timestamps: bool,
  /// With `word_timestamps`: punctuation merged into the following word.
  pub prepend_punctuations: String,
  /// With `word_timestamps`: punctuation merged into the previous word.
  pub append_punctuations: String,
  /// Where greedy / sampled decoding applies the token rules (no python
  /// equivalent: mlx-whisper always filters on the device):
  /// `Some(true)` with MLX ops on the device, reading back only the chosen
  /// token; `Some(false)` on a host copy of each step's logits; `None`
  /// (default): `MLXRS_WHISPER_HOST_RULES=1` / `=0` picks host / device,
  /// unset picks the device on a GPU and the host on the CPU backend (where
  /// MLX's elementwise `exp` over the 51864 logits costs more than Rust's).
  /// Both give the same tokens; beam search always uses the host.
  pub rules_on_device: Option<bool>,
  /// Transcribe only the speech found by voice activity detection
  /// (python faster-whisper `vad_filter=True, vad_parameters=...`): silence
  /// is cut out before decoding and segment times are mapped back. `None`
  /// (default): decode everything, as faster-whisper does by default.
  pub vad_filter: Option<crate::vad::VadOptions>,
}

impl Default for TranscribeOptions {
  fn default() -> Self {
    TranscribeOptions {
      language: None,
      task: Task::Transcribe,
      beam_size: 1,
      best_of: 5,
      patience: 1.0,
      length_penalty: 1.0,
      temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
      compression_ratio_threshold: Some(2.4),
      log_prob_threshold: Some(-1.0),
      no_speech_threshold: Some(0.6),
      condition_on_previous_text: true,
      prompt_reset_on_temperature: 0.5,
      initial_prompt: None,
      prefix: None,
      suppress_blank: true,
      suppress_tokens: vec![-1],
      without_timestamps: false,
      max_initial_timestamp: 1.0,
      max_new_tokens: None,
      seed: 0,
      word_timestamps: false,
      prepend_punctuations: "\"'“¿([{-".into(),
      append_punctuations: "\"'.。,，!！?？:：”)]}、".into(),
      rules_on_device: None,
      vad_filter: None,
    }
  }
}

/// One transcribed segment (python `faster_whisper.transcribe.Segment`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Segment {
  /// 1-based index.
  pub id: usize,
  /// Mel frame where its window started.
  pub seek: usize,
  /// Start (seconds).
  pub start: f64,
  /// End (seconds).
  pub end: f64,
  /// Decoded text (with its leading space).
  pub text: String,
  /// Its tokens, timestamps included.
  pub tokens: Vec<u32>,
  /// Temperature its window was decoded at.
  pub temperature: f32,
  /// Average log-probability of its window.
  pub avg_logprob: f64,
  /// gzip compression ratio of its window's text.
  pub compression_ratio: f64,
  /// Probability of `<|nospeech|>` for its window.
  pub no_speech_prob: f32,
  /// Its words with their timings (with `word_timestamps`).
  #[serde(skip_serializing_if = "Option::is_none")]
  pub words: Option<Vec<Word>>,
}

/// The result of [`Whisper::transcribe`] (segments + python's `TranscriptionInfo`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transcription {
  /// Segments in time order.
  pub segments: Vec<Segment>,
  /// Language code used.
  pub language: String,
  /// Its probability (1 when given or English-only).
  pub language_probability: f32,
  /// Audio duration in seconds.
  pub duration: f64,
}

impl Transcription {
  /// All segment texts joined.
  pub fn text(&self) -> String {
    self.segments.iter().map(|s| s.text.as_str()).collect()
  }
}

/// One decoding result of a window (CTranslate2's `WhisperGenerationResult`).
#[derive(Debug, Clone)]
pub struct Generation {
  /// Sampled tokens (no prefix, no end-of-text).
  pub tokens: Vec<u32>,
  /// Length-normalized cumulative log-probability.
  pub score: f32,
  /// `P(<|nospeech|>)` at the sot position.
  pub no_speech_prob: f32,
}

/// Per-window decoding parameters (CTranslate2's `WhisperOptions`).
#[derive(Debug, Clone)]
pub struct GenerateParams {
  /// Beam size (temperature 0).
  pub beam_size: usize,
  /// Patience factor.
  pub patience: f32,
  /// Length penalty exponent.
  pub length_penalty: f32,
  /// Prompt + new tokens at most.
  pub max_length: usize,
  /// Sampling temperature (0: argmax / beam).
  pub temperature: f32,
  /// Samples to draw when `temperature > 0`.
  pub num_hypotheses: usize,
  /// Suppress `begin_suppress_tokens` at the first sampled position.
  pub suppress_blank: bool,
  /// Suppressed everywhere (explicit ids).
  pub suppress_tokens: Vec<u32>,
  /// Index of the latest allowed first timestamp (`round(1.0 / 0.02)`).
  pub max_initial_timestamp_index: usize,
  /// Greedy / sampled decoding applies the rules on the device (see
  /// [`TranscribeOptions::rules_on_device`]); beam search ignores it.
  pub rules_on_device: bool,
}

/// A small, seeded generator (splitmix64) for sampling.
struct Rng(u64);

impl Rng {
  fn next_f64(&mut self) -> f64 {
    self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = self.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
  }
}

const DISABLED: f32 = f32::MIN;

fn log_softmax(x: &[f32]) -> Vec<f32> {
  let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
  let s: f32 = x.iter().map(|v| (v - m).exp()).sum();
  let lse = m + s.ln();
  x.iter().map(|v| v - lse).collect()
}

fn logsumexp(x: &[f32]) -> f32 {
  let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
  if m == f32::NEG_INFINITY {
    return m;
  }
  m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
}

fn argmax(x: &[f32]) -> usize {
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
struct Rules<'a> {
  sp: &'a SpecialTokens,
  params: &'a GenerateParams,
  begin_suppress: &'a [u32],
  timestamps: bool,
  prefix_len: usize,
  vocab: usize,
}

impl Rules<'_> {
  /// `seq`: every token sampled so far in this hypothesis (prefix included).
  fn apply(&self, step: usize, seq: &[u32], logits: &mut [f32]) {
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
struct Bounds {
  text_below: usize,
  ts_below: usize,
  from: usize,
  check: bool,
}

impl Rules<'_> {
  /// [`Rules::apply`]'s sequence-dependent part as [`Bounds`] (same
  /// branches, same order), for the device path.
  fn bounds(&self, step: usize, seq: &[u32]) -> Bounds {
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
fn log_softmax_dev(x: &Array) -> Result<Array> {
  Ok(ops::subtract(x, &ops::logsumexp_axis(x, 0, true)?)?)
}

/// [`Rules`] as MLX ops: the decoding rules run on the device and only the
/// chosen token and its log-probability (plus `P(<|nospeech|>)` at the
/// first step) come back to the host, as python mlx-whisper keeps its logit
/// filters on the device. Token-for-token the same choices as
/// [`Rules::apply`] + host `log_softmax` / argmax (the old path, kept
/// behind `MLXRS_WHISPER_HOST_RULES=1`).
struct DeviceRules {
  vocab: usize,
  tb: usize,
  /// Token ids `[vocab]` (int32).
  idx: Array,
  /// Token ids with the text ids replaced by `i32::MAX`, so that
  /// `ts_idx < b` selects the timestamps `[timestamp_begin, b)`.
  ts_idx: Array,
  /// Text ids (`id < timestamp_begin`, bool `[vocab]`).
  text: Array,
  /// Suppressed at every step (bool `[vocab]`): `suppress_tokens` and, with
  /// timestamps, `<|notimestamps|>`.
  always: Array,
  /// `always` plus `begin_suppress_tokens` (the first sampled step with
  /// `suppress_blank`).
  first: Array,
  /// The value of a suppressed logit (`f32::MIN`, as the host path).
  disabled: Array,
}

impl DeviceRules {
  fn new(rules: &Rules<'_>) -> Result<DeviceRules> {
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
  fn log_probs(
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
fn blocked_cdf(probs: &Array, vocab: usize) -> Result<Array> {
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
fn sample_dev(logp: &Array, vocab: usize, u: f64) -> Result<Array> {
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
const CDF_BLOCK: usize = 64;

/// [`TranscribeOptions::rules_on_device`] resolved: the option, else
/// `MLXRS_WHISPER_HOST_RULES` (`1`: host, `0`: device), else the device
/// unless MLX's default device is the CPU.
fn rules_on_device(opt: Option<bool>) -> Result<bool> {
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

/// The sot-sequence end of `prompt`: (index of sot, prompt length up to
/// and including the last special token).
fn prompt_layout(prompt: &[u32], sp: &SpecialTokens) -> Result<(usize, usize)> {
  let sot = prompt.iter().position(|&t| t == sp.sot).ok_or_else(|| {
    Error::InvalidArgument("the prompt has no <|startoftranscript|> token".into())
  })?;
  let mut len = sot;
  while len < prompt.len() && prompt[len] >= sp.sot && prompt[len] <= sp.no_timestamps {
    len += 1;
  }
  Ok((sot, len))
}

fn last_logits(model: &WhisperModel, hidden: &Array, pos: i32) -> Result<Vec<f32>> {
  let d = hidden.dim(2).unwrap_or(0);
  let h = ops::slice(hidden, &[0, pos, 0], &[1, pos + 1, d], &[1, 1, 1])?;
  let mut l = model.logits(&h)?;
  Ok(l.to_vec::<f32>()?)
}

/// The logits `[vocab]` (float32, on the device) at position `pos` of `hidden`.
fn logits_row(model: &WhisperModel, hidden: &Array, pos: i32) -> Result<Array> {
  let d = hidden.dim(2).unwrap_or(0);
  let h = ops::slice(hidden, &[0, pos, 0], &[1, pos + 1, d], &[1, 1, 1])?;
  let l = model.logits(&h)?;
  let l = ops::reshape(&l, &[-1])?;
  Ok(ops::astype(&l, mlxrs_core::Dtype::Float32)?)
}

fn feed(model: &WhisperModel, tokens: &[u32], state: &mut DecoderState) -> Result<Array> {
  let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
  let a = Array::from_slice(&ids, &[1, ids.len() as i32])?;
  model.decode_hidden(&a, state)
}

fn softmax_at(logits: &[f32], id: u32) -> f32 {
  let lp = log_softmax(logits);
  lp.get(id as usize).map(|v| v.exp()).unwrap_or(0.0)
}

/// Decode one window: CTranslate2's `WhisperReplica::generate` for one
/// prompt. `xa` is the encoder output `[1, T, d]`.
pub fn generate(
  model: &WhisperModel,
  sp: &SpecialTokens,
  xa: &Array,
  prompt: &[u32],
  params: &GenerateParams,
  rng_seed: u64,
) -> Result<Vec<Generation>> {
  let (sot_index, prompt_length) = prompt_layout(prompt, sp)?;
  if prompt_length == 0 {
    return Err(Error::InvalidArgument("empty prompt".into()));
  }
  let vocab = model.config.n_vocab as usize;
  if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
    return Err(Error::InvalidArgument(format!(
      "prompt token {bad} is outside the vocabulary of {vocab}"
    )));
  }
  let mut state = model.decoder_state(xa)?;
  let sot_is_start = sot_index == prompt_length - 1;
  let mut no_speech_prob = 0.0;
  let mut start_step = 0usize;
  if prompt_length > 1 {
    let h = feed(model, &prompt[..prompt_length - 1], &mut state)?;
    if !sot_is_start {
      no_speech_prob = softmax_at(&last_logits(model, &h, sot_index as i32)?, sp.no_speech);
    }
    start_step = prompt_length - 1;
  }
  let total = params.max_length;
  let max_length = (total / 2).min(total.saturating_sub(start_step));
  let prefix: Vec<u32> = prompt[prompt_length..].to_vec();
  let start = prompt[prompt_length - 1];
  let timestamps = start != sp.no_timestamps;
  let begin: Vec<u32> = model.config.begin_suppress_tokens.clone();
  let rules = Rules {
    sp,
    params,
    begin_suppress: &begin,
    timestamps,
    prefix_len: prefix.len(),
    vocab,
  };
  let dev = if params.rules_on_device {
    Some(DeviceRules::new(&rules)?)
  } else {
    None
  };
  let ctx_left = (model.config.n_text_ctx as usize).saturating_sub(start_step);
  let max_steps = (prefix.len() + max_length).min(ctx_left);
  if params.temperature > 0.0 {
    let mut out = Vec::new();
    let mut rng = Rng(rng_seed ^ 0x5EED);
    for _ in 0..params.num_hypotheses.max(1) {
      let mut st = model.decoder_state(xa)?;
      if prompt_length > 1 {
        feed(model, &prompt[..prompt_length - 1], &mut st)?;
      }
      let (g, nsp) = greedy(
        model,
        &rules,
        dev.as_ref(),
        &mut st,
        start,
        &prefix,
        max_steps,
        params,
        sot_is_start,
        Some(&mut rng),
      )?;
      if sot_is_start {
        no_speech_prob = nsp;
      }
      out.push(g);
    }
    out.sort_by(|a, b| {
      b.score
        .partial_cmp(&a.score)
        .unwrap_or(std::cmp::Ordering::Equal)
    });
    out
      .iter_mut()
      .for_each(|g| g.no_speech_prob = no_speech_prob);
    return Ok(out);
  }
  if params.beam_size > 1 {
    let (g, nsp) = beam_search(
      model,
      &rules,
      state,
      start,
      &prefix,
      max_steps,
      params,
      sot_is_start,
    )?;
    let nsp = if sot_is_start { nsp } else { no_speech_prob };
    return Ok(vec![Generation {
      no_speech_prob: nsp,
      ..g
    }]);
  }
  let (mut g, nsp) = greedy(
    model,
    &rules,
    dev.as_ref(),
    &mut state,
    start,
    &prefix,
    max_steps,
    params,
    sot_is_start,
    None,
  )?;
  g.no_speech_prob = if sot_is_start { nsp } else { no_speech_prob };
  Ok(vec![g])
}

/// Greedy / sampled decoding of one hypothesis: with `dev` the rules run on
/// the device ([`greedy_device`]), else on host copies of the logits.
#[allow(clippy::too_many_arguments)]
fn greedy(
  model: &WhisperModel,
  rules: &Rules<'_>,
  dev: Option<&DeviceRules>,
  state: &mut DecoderState,
  start: u32,
  prefix: &[u32],
  max_steps: usize,
  params: &GenerateParams,
  sot_is_start: bool,
  rng: Option<&mut Rng>,
) -> Result<(Generation, f32)> {
  match dev {
    Some(d) => greedy_device(
      model,
      rules,
      d,
      state,
      start,
      prefix,
      max_steps,
      params,
      sot_is_start,
      rng,
    ),
    None => greedy_host(
      model,
      rules,
      state,
      start,
      prefix,
      max_steps,
      params,
      sot_is_start,
      rng,
    ),
  }
}

/// [`greedy`] with the rules on the device: per step only the chosen token,
/// its log-probability and (first step) `P(<|nospeech|>)` are read back.
#[allow(clippy::too_many_arguments)]
fn greedy_device(
  model: &WhisperModel,
  rules: &Rules<'_>,
  dev: &DeviceRules,
  state: &mut DecoderState,
  start: u32,
  prefix: &[u32],
  max_steps: usize,
  params: &GenerateParams,
  sot_is_start: bool,
  mut rng: Option<&mut Rng>,
) -> Result<(Generation, f32)> {
  let sp = rules.sp;
  let mut seq: Vec<u32> = Vec::new();
  let mut hyp: Vec<u32> = Vec::new();
  let mut score = 0f32;
  let mut no_speech = 0f32;
  let mut input = start;
  for step in 0..max_steps {
    let h = feed(model, &[input], state)?;
    let logits = logits_row(model, &h, 0)?;
    let lp = dev.log_probs(rules, step, &seq, &logits)?;
    let tok = if step < prefix.len() {
      Array::scalar(prefix[step] as i32)
    } else if let Some(r) = rng.as_deref_mut() {
      // Inverse-CDF sampling of softmax(lp / t) with the host's uniform draw.
      let t = Array::scalar(params.temperature.max(1e-6));
      let p = log_softmax_dev(&ops::divide(&lp, &t)?)?;
      sample_dev(&p, dev.vocab, r.next_f64())?
    } else {
      ops::astype(&ops::argmax(&lp, false)?, mlxrs_core::Dtype::Int32)?
    };
    let tok_lp = ops::take(&lp, &tok)?;
    let mut parts = vec![ops::astype(&tok, mlxrs_core::Dtype::Float32)?, tok_lp];
    if step == 0 && sot_is_start {
      let ns = Array::scalar(sp.no_speech as i32);
      parts.push(ops::exp(&ops::take(&log_softmax_dev(&logits)?, &ns)?)?);
    }
    let vals = ops::stack(&parts)?.to_vec::<f32>()?;
    let tok = vals[0] as u32;
    if let Some(&ns) = vals.get(2) {
      no_speech = ns;
    }
    seq.push(tok);
    score += vals[1];
    let is_eot = tok == sp.eot;
    if !is_eot && step >= prefix.len() {
      hyp.push(tok);
    }
    if is_eot && step >= prefix.len() {
      break;
    }
    input = tok;
  }
  let len = hyp.len() as f32;
  let score = score / len.powf(params.length_penalty);
  Ok((
    Generation {
      tokens: hyp,
      score,
      no_speech_prob: 0.0,
    },
    no_speech,
  ))
}

/// [`greedy`] with the rules on a host copy of each step's logits (the path
/// before [`greedy_device`]; `MLXRS_WHISPER_HOST_RULES=1`).
#[allow(clippy::too_many_arguments)]
fn greedy_host(
  model: &WhisperModel,
  rules: &Rules<'_>,
  state: &mut DecoderState,
  start: u32,
  prefix: &[u32],
  max_steps: usize,
  params: &GenerateParams,
  sot_is_start: bool,
  mut rng: Option<&mut Rng>,
) -> Result<(Generation, f32)> {
  let sp = rules.sp;
  let mut seq: Vec<u32> = Vec::new();
  let mut hyp: Vec<u32> = Vec::new();
  let mut score = 0f32;
  let mut no_speech = 0f32;
  let mut input = start;
  for step in 0..max_steps {
    let h = feed(model, &[input], state)?;
    let mut logits = last_logits(model, &h, 0)?;
    if step == 0 && sot_is_start {
      no_speech = softmax_at(&logits, sp.no_speech);
    }
    rules.apply(step, &seq, &mut logits);
    let lp = log_softmax(&logits);
    let tok = if step < prefix.len() {
      prefix[step] as usize
    } else if let Some(r) = rng.as_deref_mut() {
      let t = params.temperature.max(1e-6);
      let scaled: Vec<f32> = lp.iter().map(|v| v / t).collect();
      let p = log_softmax(&scaled);
      let u = r.next_f64();
      let mut acc = 0f64;
      let mut pick = argmax(&p);
      for (i, v) in p.iter().enumerate() {
        acc += f64::from(v.exp());
        if acc > u {
          pick = i;
          break;
        }
      }
      pick
    } else {
      argmax(&lp)
    };
    seq.push(tok as u32);
    score += lp[tok];
    let is_eot = tok as u32 == sp.eot;
    if !is_eot && step >= prefix.len() {
      hyp.push(tok as u32);
    }
    if is_eot && step >= prefix.len() {
      break;
    }
    input = tok as u32;
  }
  let len = hyp.len() as f32;
  let score = score / len.powf(params.length_penalty);
  Ok((
    Generation {
      tokens: hyp,
      score,
      no_speech_prob: 0.0,
    },
    no_speech,
  ))
}

/// Beam search at temperature 0 (python `BeamSearchDecoder` /
/// CTranslate2's `BeamSearch`): keep the `beam_size` best live sequences by
/// cumulative log-probability; a sequence ending in end-of-text becomes a
/// finished candidate scored `sum / len^length_penalty`; stop once
/// `round(beam_size * patience)` candidates are collected.
#[allow(clippy::too_many_arguments)]
fn beam_search(
  model: &WhisperModel,
  rules: &Rules<'_>,
  state: DecoderState,
  start: u32,
  prefix: &[u32],
  max_steps: usize,
  params: &GenerateParams,
  sot_is_start: bool,
) -> Result<(Generation, f32)> {
  struct Beam {
    seq: Vec<u32>,
    score: f32,
    state: DecoderState,
  }
  let sp = rules.sp;
  let k = params.beam_size;
  let max_candidates = ((k as f32) * params.patience).round().max(1.0) as usize;
  let norm = |hyp: &[u32], s: f32| s / (hyp.len() as f32).powf(params.length_penalty);
  let mut beams = vec![Beam {
    seq: Vec::new(),
    score: 0.0,
    state,
  }];
  let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
  let mut no_speech = 0f32;
  for step in 0..max_steps {
    // (score, beam, token)
    let mut cands: Vec<(f32, usize, u32)> = Vec::new();
    for (bi, b) in beams.iter_mut().enumerate() {
      let input = b.seq.last().copied().unwrap_or(start);
      let h = feed(model, &[input], &mut b.state)?;
      let mut logits = last_logits(model, &h, 0)?;
      if step == 0 && sot_is_start {
        no_speech = softmax_at(&logits, sp.no_speech);
      }
      rules.apply(step, &b.seq, &mut logits);
      let lp = log_softmax(&logits);
      if step < prefix.len() {
        let t = prefix[step];
        cands.push((b.score + lp[t as usize], bi, t));
        continue;
      }
      let mut idx: Vec<usize> = (0..lp.len()).collect();
      let take = (2 * k).min(idx.len());
      idx.select_nth_unstable_by(take - 1, |&a, &c| {
        lp[c]
          .partial_cmp(&lp[a])
          .unwrap_or(std::cmp::Ordering::Equal)
      });
      for &i in &idx[..take] {
        cands.push((b.score + lp[i], bi, i as u32));
      }
    }
    cands.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut next: Vec<Beam> = Vec::new();
    for &(s, bi, t) in &cands {
      if next.len() >= k {
        break;
      }
      let mut seq = beams[bi].seq.clone();
      seq.push(t);
      if t == sp.eot && step >= prefix.len() {
        let hyp = seq[prefix.len()..seq.len() - 1].to_vec();
        let sc = norm(&hyp, s);
        finished.push((hyp, sc));
        continue;
      }
      next.push(Beam {
        seq,
        score: s,
        state: beams[bi].state.clone(),
      });
    }
    beams = next;
    if beams.is_empty() || finished.len() >= max_candidates {
      break;
    }
  }
  if finished.is_empty() {
    for b in &beams {
      let hyp = b.seq[prefix.len().min(b.seq.len())..].to_vec();
      let sc = norm(&hyp, b.score);
      finished.push((hyp, sc));
    }
  }
  finished.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
  let (tokens, score) = finished
    .into_iter()
    .next()
    .unwrap_or((Vec::new(), f32::NEG_INFINITY));
  Ok((
    Generation {
      tokens,
      score,
      no_speech_prob: 0.0,
    },
    no_speech,
  ))
}

/// gzip (zlib) compression ratio of `text` (python `get_compression_ratio`).
pub fn compression_ratio(text: &str) -> f64 {
  let bytes = text.as_bytes();
  if bytes.is_empty() {
    return 0.0;
  }
  let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
  let _ = e.write_all(bytes);
  let z = e.finish().unwrap_or_default();
  bytes.len() as f64 / z.len().max(1) as f64
}

/// Window results split into segments: python `_split_segments_by_timestamps`.
struct Split {
  segments: Vec<(f64, f64, Vec<u32>)>,
  seek: usize,
  single_end: bool,
}

fn split_by_timestamps(
  tb: u32,
  tokens: &[u32],
  time_offset: f64,
  segment_size: usize,
  segment_duration: f64,
  mut seek: usize,
) -> Split {
  let precision = 0.02;
  let n = tokens.len();
  let single_end = n >= 2 && tokens[n - 2] < tb && tb <= tokens[n - 1];
  let single_timestamp_ending = single_end;
  let consecutive: Vec<usize> = (1..n)
    .filter(|&i| tokens[i] >= tb && tokens[i - 1] >= tb)
    .collect();
  let mut segments = Vec::new();
  if !consecutive.is_empty() {
    let mut slices = consecutive;
    if single_end {
      slices.push(n);
    }
    let mut last = 0;
    for &cur in &slices {
      let sl = &tokens[last..cur];
      let s = time_offset + f64::from(sl[0] - tb) * precision;
      let e = time_offset + f64::from(sl[sl.len() - 1] - tb) * precision;
      segments.push((s, e, sl.to_vec()));
      last = cur;
    }
    if single_end {
      seek += segment_size;
    } else {
      let pos = tokens[last - 1] - tb;
      seek += pos as usize * 2;
    }
  } else {
    let mut duration = segment_duration;
    let ts: Vec<u32> = tokens.iter().copied().filter(|&t| t >= tb).collect();
    if let Some(&l) = ts.last() {
      if l != tb {
        duration = f64::from(l - tb) * precision;
      }
    }
    segments.push((time_offset, time_offset + duration, tokens.to_vec()));
    seek += segment_size;
  }
  Split {
    segments,
    seek,
    single_end: single_timestamp_ending,
  }
}

impl Whisper {
  fn tok(&self) -> Result<&WhisperTokenizer> {
    self.tokenizer.as_ref().ok_or_else(|| {
      Error::Model(format!(
        "{}: no tokenizer.json or vocabulary.txt in the model folder (needed to transcribe)",
        self.path.display()
      ))
    })
  }

  /// The suppress list faster-whisper passes to CTranslate2
  /// (`get_suppressed_tokens`).
  pub fn suppressed_tokens(&self, suppress: &[i64]) -> Result<Vec<u32>> {
    if suppress.is_empty() {
      return Ok(Vec::new());
    }
    let tok = self.tok()?;
    let sp = &tok.special;
    let mut out: Vec<u32> = suppress
      .iter()
      .filter(|&&t| t >= 0)
      .map(|&t| t as u32)
      .collect();
    if suppress.contains(&-1) {
      if tok.can_encode() {
        out.extend(tok.non_speech_tokens()?);
      } else {
        out.extend(self.config().suppress_tokens.iter().copied());
      }
    }
    if let Some(bad) = suppress
      .iter()
      .find(|&&t| t < -1 || t >= i64::from(self.config().n_vocab))
    {
      return Err(Error::InvalidArgument(format!(
        "suppress_tokens: {bad} is not a token id (or -1)"
      )));
    }
    out.extend([
      sp.transcribe,
      sp.translate,
      sp.sot,
      sp.sot_prev,
      sp.sot_lm,
      sp.no_speech,
    ]);
    out.sort_unstable();
    out.dedup();
    Ok(out)
  }

  /// Log-mel features `[n_mels, frames]` of 16 kHz audio, as faster-whisper
  /// computes them (`padding=160`).
  pub fn features(&self, samples: &[f32]) -> Result<Array> {
    log_mel_spectrogram(samples, self.config().n_mels as usize, HOP_LENGTH)
  }

  /// Encode the window of `features` starting at frame `seek` and spanning
  /// `size` frames, zero-padded to the model's window.
  pub fn encode_window(&self, features: &Array, seek: usize, size: usize) -> Result<Array> {
    let m = self.config().n_mels;
    let win = 2 * self.config().n_audio_ctx;
    let seg = ops::slice(
      features,
      &[0, seek as i32],
      &[m, (seek + size) as i32],
      &[1, 1],
    )?;
    let seg = crate::mel::pad_or_trim(&seg, win as usize)?;
    let x = ops::expand_dims(&ops::transpose(&seg)?, 0)?;
    let mut y = self.model.encode(&x)?;
    y.eval()?;
    Ok(y)
  }

  /// Language probabilities of an encoded window, most likely first (python
  /// `WhisperModel.detect_language` on one segment).
  pub fn detect_language_encoded(&self, xa: &Array) -> Result<Vec<(String, f32)>> {
    let tok = self.tok()?;
    let sp = &tok.special;
    if sp.languages.is_empty() || !self.config().is_multilingual() {
      return Ok(vec![("en".into(), 1.0)]);
    }
    let mut st = self.model.decoder_state(xa)?;
    let h = feed(&self.model, &[sp.sot], &mut st)?;
    let logits = last_logits(&self.model, &h, 0)?;
    let vals: Vec<f32> = sp
      .languages
      .iter()
      .map(|(_, i)| logits.get(*i as usize).copied().unwrap_or(DISABLED))
      .collect();
    let lp = log_softmax(&vals);
    let mut out: Vec<(String, f32)> = sp
      .languages
      .iter()
      .zip(lp)
      .map(|((c, _), l)| (c.clone(), l.exp()))
      .collect();
    out.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    Ok(out)
  }

  /// The task tokens that start every window: `<|startoftranscript|>`, then
  /// for multilingual models the language and `<|transcribe|>` /
  /// `<|translate|>` (python `faster_whisper.tokenizer.Tokenizer.sot_sequence`).
  pub fn sot_sequence(&self, language: &str, task: Task) -> Result<Vec<u32>> {
    let sp = &self.tok()?.special;
    if !self.config().is_multilingual() {
      if task == Task::Translate {
        return Err(Error::InvalidArgument(
          "task translate needs a multilingual model (this one is English-only)".into(),
        ));
      }
      return Ok(vec![sp.sot]);
    }
    let lang = sp.language(language).ok_or_else(|| {
      Error::InvalidArgument(format!("language {language:?} is not one this model knows"))
    })?;
    let task = match task {
      Task::Transcribe => sp.transcribe,
      Task::Translate => sp.translate,
    };
    Ok(vec![sp.sot, lang, task])
  }

  /// Language probabilities of the first 30 s of `audio`, most likely first
  /// (python `WhisperModel.detect_language(audio)` with one segment;
  /// English-only models answer `[("en", 1.0)]`).
  pub fn detect_language(&self, audio: &Audio) -> Result<Vec<(String, f32)>> {
    let audio = if audio.sample_rate == SAMPLE_RATE {
      std::borrow::Cow::Borrowed(audio)
    } else {
      std::borrow::Cow::Owned(to_whisper_rate(audio.clone())?)
    };
    if audio.samples.is_empty() {
      return Err(Error::InvalidArgument(
        "detect_language: the audio has no samples".into(),
      ));
    }
    let features = self.features(&audio.samples)?;
    // faster-whisper: features[:, :3000] (the trailing frame included), padded.
    let total = (features.dim(1).unwrap_or(1) as usize).max(1);
    let window = 2 * self.config().n_audio_ctx as usize;
    let xa = self.encode_window(&features, 0, window.min(total))?;
    self.detect_language_encoded(&xa)
  }

  /// Transcribe `audio` (resampled to 16 kHz first when needed). Python:
  /// `segments, info = WhisperModel(path).transcribe(audio, ...)`.
  pub fn transcribe(&self, audio: &Audio, opts: &TranscribeOptions) -> Result<Transcription> {
    self.transcribe_with(audio, opts, |_| {})
  }

  /// [`Whisper::transcribe_with`] through a trait object (one
  /// instantiation: the VAD path calls back into it).
  fn transcribe_dyn(
    &self,
    audio: &Audio,
    opts: &TranscribeOptions,
    on_segment: &mut dyn FnMut(&Segment),
  ) -> Result<Transcription> {
    self.transcribe_with(audio, opts, on_segment)
  }

  /// [`Whisper::transcribe`], calling `on_segment` as each segment is final.
  pub fn transcribe_with(
    &self,
    audio: &Audio,
    opts: &TranscribeOptions,
    mut on_segment: impl FnMut(&Segment),
  ) -> Result<Transcription> {
    let audio = if audio.sample_rate == SAMPLE_RATE {
      std::borrow::Cow::Borrowed(audio)
    } else {
      std::borrow::Cow::Owned(to_whisper_rate(audio.clone())?)
    };
    if audio.samples.is_empty() {
      return Err(Error::InvalidArgument(
        "transcribe: the audio has no samples".into(),
      ));
    }
    self.check_options(opts)?;
    if let Some(v) = &opts.vad_filter {
      // faster-whisper: transcribe the concatenated speech, then map the
      // times back; no speech at all gives no segments.
      let duration = audio.samples.len() as f64 / f64::from(SAMPLE_RATE);
      let chunks = crate::vad::speech_timestamps(&audio.samples, v);
      let speech = crate::vad::collect_chunks(&audio.samples, &chunks);
      if speech.is_empty() {
        return Ok(Transcription {
          segments: Vec::new(),
          language: opts.language.clone().unwrap_or_else(|| "en".into()),
          language_probability: 1.0,
          duration,
        });
      }
      let map = crate::vad::TimeMap::new(&chunks);
      let inner = TranscribeOptions {
        vad_filter: None,
        ..opts.clone()
      };
      let mut t = self.transcribe_dyn(&Audio::from_samples_16k(speech), &inner, &mut |s| {
        let mut s = s.clone();
        map.apply(&mut s);
        on_segment(&s);
      })?;
      t.segments.iter_mut().for_each(|s| map.apply(s));
      t.duration = duration;
      return Ok(t);
    }
    let tok = self.tok()?;
    let sp = tok.special.clone();
    let cfg = self.config().clone();
    let duration = audio.samples.len() as f64 / f64::from(SAMPLE_RATE);
    let features = self.features(&audio.samples)?;
    let content_frames = features.dim(1).unwrap_or(1) as usize - 1;
    let window = 2 * cfg.n_audio_ctx as usize;
    let time_per_frame = HOP_LENGTH as f64 / f64::from(SAMPLE_RATE);
    let max_length = cfg.n_text_ctx as usize;

    // Language.
    let multilingual = cfg.is_multilingual();
    let (language, language_probability, first_encoded) = match (&opts.language, multilingual) {
      (Some(l), true) => {
        if sp.language(l).is_none() {
          return Err(Error::InvalidArgument(format!(
            "language {l:?} is not one this model knows"
          )));
        }
        (l.clone(), 1.0, None)
      }
      (_, false) => ("en".to_string(), 1.0, None),
      (None, true) => {
        // faster-whisper detects on features[:, :3000], the trailing frame
        // included; the encoding is reused for the first window only when it
        // covers the same frames.
        let total = content_frames + 1;
        let xa = self.encode_window(&features, 0, window.min(total))?;
        let probs = self.detect_language_encoded(&xa)?;
        let (l, p) = probs.first().cloned().unwrap_or(("en".into(), 1.0));
        (
          l,
          p,
          if content_frames >= window {
            Some(xa)
          } else {
            None
          },
        )
      }
    };
    let sot_seq = self.sot_sequence(&language, opts.task)?;
    let suppress = self.suppressed_tokens(&opts.suppress_tokens)?;
    let max_initial_timestamp_index =
      (f64::from(opts.max_initial_timestamp) / 0.02).round() as usize;
    let on_device = rules_on_device(opts.rules_on_device)?;

    let mut all_tokens: Vec<u32> = Vec::new();
    if let Some(p) = &opts.initial_prompt {
      all_tokens.extend(tok.encode(&format!(" {}", p.trim()))?);
    }
    let mut prompt_reset_since = 0usize;
    let mut seek = 0usize;
    let mut last_speech_timestamp = 0f64;
    let mut segments: Vec<Segment> = Vec::new();
    let mut encoded = first_encoded;
    while seek < content_frames {
      let time_offset = seek as f64 * time_per_frame;
      let segment_size = window.min(content_frames - seek);
      let segment_duration = segment_size as f64 * time_per_frame;
      let xa = match encoded.take() {
        Some(x) if seek == 0 => x,
        _ => self.encode_window(&features, seek, segment_size)?,
      };
      let previous = &all_tokens[prompt_reset_since..];
      // Prompt (python get_prompt).
      let mut prompt = Vec::new();
      if !previous.is_empty() {
        prompt.push(sp.sot_prev);
        let keep = max_length / 2 - 1;
        prompt.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
      }
      prompt.extend_from_slice(&sot_seq);
      if opts.without_timestamps {
        prompt.push(sp.no_timestamps);
      }
      if let (Some(pf), 0) = (&opts.prefix, seek) {
        let mut pt = tok.encode(&format!(" {}", pf.trim()))?;
        pt.truncate((max_length / 2 - 1).min(pt.len()));
        if !opts.without_timestamps {
          prompt.push(sp.timestamp_begin());
        }
        prompt.extend(pt);
      }
      let max_len = match opts.max_new_tokens {
        Some(n) => prompt.len() + n,
        None => max_length,
      };
      if max_len > max_length {
        return Err(Error::InvalidArgument(format!(
          "the prompt ({} tokens) plus max_new_tokens exceeds the model's {max_length} positions",
          prompt.len()
        )));
      }
      // generate_with_fallback
      let mut results: Vec<(Generation, f64, f32, f64)> = Vec::new();
      let mut below_cr: Vec<usize> = Vec::new();
      let mut chosen: Option<(Generation, f64, f32, f64)> = None;
      let mut last_temp = 0.0;
      for (ti, &temperature) in opts.temperatures.iter().enumerate() {
        last_temp = temperature;
        let params = GenerateParams {
          beam_size: if temperature > 0.0 { 1 } else { opts.beam_size },
          patience: opts.patience,
          length_penalty: opts.length_penalty,
          max_length: max_len,
          temperature,
          num_hypotheses: if temperature > 0.0 { opts.best_of } else { 1 },
          suppress_blank: opts.suppress_blank,
          suppress_tokens: suppress.clone(),
          max_initial_timestamp_index,
          rules_on_device: on_device,
        };
        let seed = opts
          .seed
          .wrapping_add((seek as u64) << 8)
          .wrapping_add(ti as u64);
        let g = generate(&self.model, &sp, &xa, &prompt, &params, seed)?
          .into_iter()
          .next()
          .ok_or_else(|| Error::InvalidArgument("decoding produced no hypothesis".into()))?;
        let seq_len = g.tokens.len() as f64;
        let cum = f64::from(g.score) * seq_len.powf(f64::from(opts.length_penalty));
        let avg_logprob = cum / (seq_len + 1.0);
        let text = tok.decode(&g.tokens)?;
        let cr = compression_ratio(text.trim());
        let mut needs_fallback = false;
        if let Some(t) = opts.compression_ratio_threshold {
          if cr > f64::from(t) {
            needs_fallback = true;
          } else {
            below_cr.push(results.len());
          }
        }
        if let Some(t) = opts.log_prob_threshold {
          if avg_logprob < f64::from(t) {
            needs_fallback = true;
          }
        }
        if let (Some(ns), Some(lpt)) = (opts.no_speech_threshold, opts.log_prob_threshold) {
          if g.no_speech_prob > ns && avg_logprob < f64::from(lpt) {
            needs_fallback = false;
          }
        }
        results.push((g, avg_logprob, temperature, cr));
        if !needs_fallback {
          chosen = results.pop();
          break;
        }
      }
      let (result, avg_logprob, temperature, cr) = match chosen {
        Some(c) => c,
        None => {
          let pool: Vec<usize> = if below_cr.is_empty() {
            (0..results.len()).collect()
          } else {
            below_cr
          };
          let best = pool
            .into_iter()
            .max_by(|&a, &b| {
              results[a]
                .1
                .partial_cmp(&results[b].1)
                .unwrap_or(std::cmp::Ordering::Less)
            })
            .ok_or_else(|| Error::InvalidArgument("no temperatures to decode with".into()))?;
          let r = results.swap_remove(best);
          (r.0, r.1, last_temp, r.3)
        }
      };
      if let Some(ns) = opts.no_speech_threshold {
        let mut skip = result.no_speech_prob > ns;
        if let Some(lpt) = opts.log_prob_threshold {
          if avg_logprob > f64::from(lpt) {
            skip = false;
          }
        }
        if skip {
          seek += segment_size;
          continue;
        }
      }
      let previous_seek = seek;
      let split = split_by_timestamps(
        sp.timestamp_begin(),
        &result.tokens,
        time_offset,
        segment_size,
        segment_duration,
        seek,
      );
      seek = split.seek;
      let mut subsegments = split.segments;
      let mut words: Vec<Vec<Word>> = Vec::new();
      if opts.word_timestamps {
        words = add_word_timestamps(
          &self.model,
          tok,
          &xa,
          &sot_seq,
          &language,
          &mut subsegments,
          previous_seek,
          segment_size,
          &opts.prepend_punctuations,
          &opts.append_punctuations,
          last_speech_timestamp,
        )?;
        if !split.single_end {
          if let Some(e) = get_end(&subsegments, &words) {
            if e > time_offset {
              seek = (e * 100.0).round() as usize;
            }
          }
        }
        if let Some(e) = get_end(&subsegments, &words) {
          last_speech_timestamp = e;
        }
      }
      let mut words = words.into_iter();
      for (start, end, toks) in subsegments {
        let seg_words = words.next();
        let text = tok.decode(&toks)?;
        if start == end || text.trim().is_empty() {
          continue;
        }
        all_tokens.extend_from_slice(&toks);
        let s = Segment {
          id: segments.len() + 1,
          seek: previous_seek,
          start,
          end,
          text,
          tokens: toks,
          temperature,
          avg_logprob,
          compression_ratio: cr,
          no_speech_prob: result.no_speech_prob,
          words: if opts.word_timestamps {
            Some(seg_words.unwrap_or_default())
          } else {
            None
          },
        };
        on_segment(&s);
        segments.push(s);
      }
      if !opts.condition_on_previous_text || temperature > opts.prompt_reset_on_temperature {
        prompt_reset_since = all_tokens.len();
      }
    }
    Ok(Transcription {
      segments,
      language,
      language_probability,
      duration,
    })
  }

  fn check_options(&self, o: &TranscribeOptions) -> Result<()> {
    if o.beam_size == 0 {
      return Err(Error::InvalidArgument("beam_size must be >= 1".into()));
    }
    if o.best_of == 0 {
      return Err(Error::InvalidArgument("best_of must be >= 1".into()));
    }
    if o.temperatures.is_empty() {
      return Err(Error::InvalidArgument(
        "temperatures: give at least one (0 = greedy)".into(),
      ));
    }
    if let Some(t) = o.temperatures.iter().find(|t| !t.is_finite() || **t < 0.0) {
      return Err(Error::InvalidArgument(format!(
        "temperature {t} must be finite and >= 0"
      )));
    }
    if !o.patience.is_finite() || o.patience <= 0.0 {
      return Err(Error::InvalidArgument(format!(
        "patience {} must be > 0",
        o.patience
      )));
    }
    if !o.max_initial_timestamp.is_finite() || o.max_initial_timestamp < 0.0 {
      return Err(Error::InvalidArgument(
        "max_initial_timestamp must be >= 0".into(),
      ));
    }
    if o.task == Task::Translate && !self.config().is_multilingual() {
      return Err(Error::InvalidArgument(
        "task translate needs a multilingual model (this one is English-only)".into(),
      ));
    }
    if !self.config().is_multilingual() {
      if let Some(l) = &o.language {
        if l != "en" {
          return Err(Error::InvalidArgument(format!(
            "language {l:?}: this model is English-only (use \"en\" or a multilingual model)"
          )));
        }
      }
    }
    Ok(())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn compression_ratio_matches_zlib() {
    // python: len(b"hello hello hello hello") / len(zlib.compress(b"hello hello hello hello")) = 23 / 16
    let r = compression_ratio("hello hello hello hello");
    assert!((r - 23.0 / 16.0).abs() < 1e-12, "{r}");
  }

  /// The device rules disable the same ids and give the same argmax and
  /// log-probabilities (within float rounding) as the host rules, over
  /// random logits and sequences of a small vocabulary: every branch of
  /// the timestamp rules, the begin suppression and the
  /// timestamps-more-likely check both ways.
  #[test]
  fn device_rules_match_host() {
    let sp = SpecialTokens {
      eot: 40,
      sot: 41,
      translate: 42,
      transcribe: 43,
      sot_lm: 44,
      sot_prev: 45,
      no_speech: 46,
      no_timestamps: 47,
      languages: Vec::new(),
    };
    let tb = sp.timestamp_begin();
    let vocab = 100usize;
    let mut rng = Rng(7);
    let mut cases = 0;
    let mut checked_off = 0;
    for (timestamps, prefix_len, suppress_blank) in [
      (true, 0, true),
      (true, 2, true),
      (false, 0, true),
      (true, 0, false),
    ] {
      let params = GenerateParams {
        beam_size: 1,
        patience: 1.0,
        length_penalty: 1.0,
        max_length: 64,
        temperature: 0.0,
        num_hypotheses: 1,
        suppress_blank,
        suppress_tokens: vec![3, 17, sp.sot, sp.no_speech],
        max_initial_timestamp_index: 10,
        rules_on_device: true,
      };
      let begin = [5u32, sp.eot];
      let rules = Rules {
        sp: &sp,
        params: &params,
        begin_suppress: &begin,
        timestamps,
        prefix_len,
        vocab,
      };
      let dev = DeviceRules::new(&rules).unwrap();
      for _ in 0..150 {
        let len = (rng.next_f64() * 7.0) as usize;
        let seq: Vec<u32> = (0..len)
          .map(|_| {
            if rng.next_f64() < 0.5 {
              tb + (rng.next_f64() * (vocab as u32 - tb) as f64) as u32
            } else {
              (rng.next_f64() * 40.0) as u32
            }
          })
          .collect();
        // Timestamp logits high half of the time, so the check goes both ways.
        let ts_boost = if rng.next_f64() < 0.5 { 3.0 } else { 0.0 };
        let logits: Vec<f32> = (0..vocab)
          .map(|i| {
            let b = if i >= tb as usize { ts_boost } else { 0.0 };
            (rng.next_f64() * 6.0 - 3.0) as f32 + b
          })
          .collect();
        let step = seq.len();
        let mut host = logits.clone();
        rules.apply(step, &seq, &mut host);
        let hlp = log_softmax(&host);
        let x = Array::from_slice(&logits, &[vocab as i32]).unwrap();
        let dlp = dev
          .log_probs(&rules, step, &seq, &x)
          .unwrap()
          .to_vec::<f32>()
          .unwrap();
        for i in 0..vocab {
          let (h, d) = (host[i] == DISABLED, dlp[i] < -1e30);
          assert_eq!(
            h, d,
            "id {i} step {step} seq {seq:?} ts {timestamps} prefix {prefix_len}"
          );
          if !h {
            assert!(
              (hlp[i] - dlp[i]).abs() < 1e-5,
              "id {i}: {} vs {}",
              hlp[i],
              dlp[i]
            );
          }
        }
        assert_eq!(argmax(&hlp), argmax(&dlp), "seq {seq:?}");
        if rules.bounds(step, &seq).check && host[..tb as usize].iter().all(|&v| v == DISABLED) {
          checked_off += 1;
        }
        cases += 1;
      }
    }
    assert_eq!(cases, 600);
    assert!(
      checked_off > 10,
      "the timestamp check fired {checked_off} times"
    );
  }

  #[test]
  fn split_mirrors_python() {
    let tb = 100;
    // <|0.00|> a b <|1.00|><|1.00|> c <|2.00|>  (single timestamp ending)
    let toks = [100, 1, 2, 150, 150, 3, 200];
    let s = split_by_timestamps(tb, &toks, 0.0, 3000, 30.0, 0);
    assert_eq!(s.segments.len(), 2);
    assert_eq!(s.segments[0].2, vec![100, 1, 2, 150]);
    assert!((s.segments[1].0 - 1.0).abs() < 1e-12 && (s.segments[1].1 - 2.0).abs() < 1e-12);
    assert_eq!(s.seek, 3000);
    // Without single ending: seek to the last timestamp.
    let toks = [100, 1, 150, 150, 3, 4];
    let s = split_by_timestamps(tb, &toks, 0.0, 3000, 30.0, 0);
    assert_eq!(s.segments.len(), 1);
    assert_eq!(s.seek, 100);
  }

  /// The device sampler picks the host sampler's id (float64 running sum)
  /// for the same uniform draws, on flat distributions over the full
  /// 51864-id vocabulary, the hardest case for float32 rounding.
  #[test]
  fn device_sampling_matches_host() {
    let vocab = 51864usize;
    let mut rng = Rng(3);
    let logits: Vec<f32> = (0..vocab)
      .map(|_| (rng.next_f64() * 20.0 - 10.0) as f32)
      .collect();
    let lp = log_softmax(&logits);
    let lpa = Array::from_slice(&lp, &[vocab as i32]).unwrap();
    for t in [1.0f32, 0.4] {
      let scaled: Vec<f32> = lp.iter().map(|v| v / t).collect();
      let p = log_softmax(&scaled);
      let pd = log_softmax_dev(&ops::divide(&lpa, &Array::scalar(t)).unwrap()).unwrap();
      for _ in 0..20 {
        let u = rng.next_f64();
        let mut acc = 0f64;
        let mut pick = argmax(&p);
        for (i, v) in p.iter().enumerate() {
          acc += f64::from(v.exp());
          if acc > u {
            pick = i;
            break;
          }
        }
        let got = sample_dev(&pd, vocab, u).unwrap().item::<i32>().unwrap();
        assert_eq!(got as usize, pick, "t {t} u {u}");
      }
    }
    // Past the total: the argmax.
    let all = log_softmax_dev(&lpa).unwrap();
    let got = sample_dev(&all, vocab, 1.5).unwrap().item::<i32>().unwrap();
    assert_eq!(got as usize, argmax(&lp));
  }
}
