//! Options and results of [`crate::Whisper::transcribe`] (python
//! faster-whisper `transcribe(...)` arguments, `Segment`,
//! `TranscriptionInfo`).

use crate::error::{Error, Result};
use crate::timing::Word;

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
  /// Transcribe only these clips: `[start, end, start, end, ...]` in
  /// seconds (python faster-whisper `clip_timestamps`, given there as the
  /// string `"0,5.5,10,..."`, see [`parse_clip_timestamps`]); an odd count
  /// runs the last clip to the end of the audio. Each clip is decoded in
  /// windows of at most 30 s that never cross its end. Empty (default): the
  /// whole audio (python `"0"`). Cannot be combined with `vad_filter`
  /// (faster-whisper silently ignores the VAD then).
  pub clip_timestamps: Vec<f64>,
  /// With `word_timestamps`: skip silent periods longer than this many
  /// seconds around a possible hallucination, i.e. a segment whose first
  /// words are improbable (p < 0.15) or oddly short or long (python
  /// faster-whisper `hallucination_silence_threshold`). `None` (default):
  /// off. Needs `word_timestamps` (faster-whisper ignores it without them).
  pub hallucination_silence_threshold: Option<f32>,
}

/// Parse faster-whisper's `clip_timestamps` string (`"0,5.5,10,20"`:
/// comma-separated seconds; empty = no clip at all, `"0"` = the whole
/// audio) into [`TranscribeOptions::clip_timestamps`]. Every value must be a
/// finite number >= 0; the error names the bad item.
pub fn parse_clip_timestamps(s: &str) -> Result<Vec<f64>> {
  let s = s.trim();
  if s.is_empty() {
    return Ok(Vec::new());
  }
  s.split(',')
    .map(|item| {
      let v: f64 = item.trim().parse().map_err(|_| {
        Error::InvalidArgument(format!(
          "clip_timestamps: {item:?} is not a number (expected seconds like \"0,5.5,10,20\")"
        ))
      })?;
      check_clip_value(v)?;
      Ok(v)
    })
    .collect()
}

fn check_clip_value(v: f64) -> Result<()> {
  if !v.is_finite() || v < 0.0 {
    return Err(Error::InvalidArgument(format!(
      "clip_timestamps: {v} must be a finite number of seconds >= 0"
    )));
  }
  Ok(())
}

/// The `(start, end)` mel-frame pairs of the clips (python
/// `generate_segments`'s `seek_clips`): seconds times 100 frames per second
/// rounded half to even (python `round`), the end of the audio appended to
/// an odd count, `[(0, content_frames)]` for none.
pub(crate) fn seek_clips(clips: &[f64], content_frames: usize) -> Result<Vec<(usize, usize)>> {
  let mut points = Vec::with_capacity(clips.len() + 1);
  for &v in clips {
    check_clip_value(v)?;
    // Clamped: a clip past the audio is simply empty, as in python.
    let f = (v * 100.0).round_ties_even().min(usize::MAX as f64 / 4.0);
    points.push(f as usize);
  }
  if points.is_empty() {
    points.push(0);
  }
  if points.len() % 2 == 1 {
    points.push(content_frames);
  }
  Ok(points.chunks(2).map(|p| (p[0], p[1])).collect())
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
      clip_timestamps: Vec::new(),
      hallucination_silence_threshold: None,
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
