//! Long-form transcription: seeking over 30 s windows, splitting window
//! results into segments at timestamps, temperature fallback and the
//! thresholds (python `faster_whisper.WhisperModel.generate_segments`).

use std::io::Write;

use mlxrs_core::{Array, ops};

use crate::audio::{Audio, SAMPLE_RATE, to_whisper_rate};
use crate::error::{Error, Result};
use crate::mel::{HOP_LENGTH, log_mel_spectrogram};
use crate::timing::{Word, add_word_timestamps, get_end};
use crate::tokenizer::WhisperTokenizer;
use crate::whisper::Whisper;

use super::decode::*;
use super::hallucination;
use super::options::*;
use super::rules::*;

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
pub(super) struct Split {
  pub(super) segments: Vec<(f64, f64, Vec<u32>)>,
  pub(super) seek: usize,
  pub(super) single_end: bool,
}

pub(super) fn split_by_timestamps(
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
  pub(super) fn tok(&self) -> Result<&WhisperTokenizer> {
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
      if !opts.clip_timestamps.is_empty() {
        return Err(Error::InvalidArgument(
          "vad_filter and clip_timestamps cannot be combined (faster-whisper ignores the VAD when \
           clips are given): pick one"
            .into(),
        ));
      }
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
    let clips = seek_clips(&opts.clip_timestamps, content_frames)?;

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
        // faster-whisper detects on features[:, start:start + 3000], the
        // trailing frame included, from the first clip's start (python
        // `int(start * frames_per_second)` when inside the audio, else 0);
        // the encoding is reused for the first window only when it covers
        // the same frames.
        let total = content_frames + 1;
        let det_start = opts
          .clip_timestamps
          .first()
          .map(|s| s * 100.0)
          .filter(|f| *f < content_frames as f64)
          .map(|f| f as usize)
          .unwrap_or(0);
        let xa = self.encode_window(&features, det_start, window.min(total - det_start))?;
        let probs = self.detect_language_encoded(&xa)?;
        let (l, p) = probs.first().cloned().unwrap_or(("en".into(), 1.0));
        let first = clips.first().copied().unwrap_or((0, content_frames));
        let reusable =
          det_start == 0 && content_frames >= window && first.0 == 0 && first.1 >= window;
        (l, p, if reusable { Some(xa) } else { None })
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
    let mut last_speech_timestamp = 0f64;
    let mut segments: Vec<Segment> = Vec::new();
    let mut encoded = first_encoded;
    let content_duration = content_frames as f64 * time_per_frame;
    // python: `for seek_clip_start, seek_clip_end in seek_clips: while seek <
    // seek_clip_end`, flattened as faster-whisper writes it.
    let mut clip_idx = 0usize;
    let mut seek = clips.first().map(|c| c.0).unwrap_or(0);
    while clip_idx < clips.len() {
      let (clip_start, clip_end) = clips[clip_idx];
      let clip_end = clip_end.min(content_frames);
      if seek < clip_start {
        seek = clip_start;
      }
      if seek >= clip_end {
        clip_idx += 1;
        if let Some(c) = clips.get(clip_idx) {
          seek = c.0;
        }
        continue;
      }
      let time_offset = seek as f64 * time_per_frame;
      let window_end_time = (seek + window) as f64 * time_per_frame;
      let segment_size = window.min(content_frames - seek).min(clip_end - seek);
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
              // python `round`: half to even.
              seek = (e * 100.0).round_ties_even() as usize;
            }
          }
        }
        if let Some(th) = opts.hallucination_silence_threshold {
          let w = hallucination::Window {
            spans: subsegments.iter().map(|s| (s.0, s.1)).collect(),
            words: &words,
            time_offset,
            segment_duration,
            window_end_time,
            previous_seek,
            last_speech_timestamp,
            content_duration,
            content_frames,
          };
          match hallucination::check(&w, f64::from(th)) {
            hallucination::Skip::None => {}
            hallucination::Skip::Window(to) => {
              seek = to;
              continue;
            }
            hallucination::Skip::Tail { keep, seek: to } => {
              seek = to;
              subsegments.truncate(keep);
              words.truncate(keep);
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

  pub(super) fn check_options(&self, o: &TranscribeOptions) -> Result<()> {
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
    if let Some(th) = o.hallucination_silence_threshold {
      if !th.is_finite() || th < 0.0 {
        return Err(Error::InvalidArgument(format!(
          "hallucination_silence_threshold {th} must be a finite number of seconds >= 0"
        )));
      }
      if !o.word_timestamps {
        return Err(Error::InvalidArgument(
          "hallucination_silence_threshold needs word_timestamps (faster-whisper silently \
           ignores it without them)"
            .into(),
        ));
      }
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
