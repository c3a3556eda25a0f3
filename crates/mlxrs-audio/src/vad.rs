//! Voice activity detection for `vad_filter` (python faster-whisper's
//! `vad.get_speech_timestamps` + `collect_chunks` + `SpeechTimestampsMap`):
//! find the speech regions, transcribe only them (concatenated), and map the
//! segment times back to the original audio.
//!
//! faster-whisper runs Silero VAD through ONNX Runtime; mlxrs uses the
//! `earshot` crate (a maintained pure-Rust neural VAD on 16 ms frames)
//! with faster-whisper's segmentation rules and defaults on top.

use crate::transcribe::Segment;

/// Samples per VAD frame (earshot's fixed 16 ms at 16 kHz).
const FRAME: usize = 256;
const RATE: usize = 16_000;

/// VAD settings (python faster-whisper `VadOptions`; same defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct VadOptions {
  /// Speech probability at or above which a frame is speech.
  pub threshold: f32,
  /// Silence threshold (python `neg_threshold`; default `threshold - 0.15`).
  pub neg_threshold: Option<f32>,
  /// Speech regions shorter than this are dropped (ms).
  pub min_speech_duration_ms: u32,
  /// Silence shorter than this does not end a speech region (ms).
  pub min_silence_duration_ms: u32,
  /// Padding added to each side of a speech region (ms).
  pub speech_pad_ms: u32,
}

impl Default for VadOptions {
  fn default() -> Self {
    VadOptions {
      threshold: 0.5,
      neg_threshold: None,
      min_speech_duration_ms: 0,
      min_silence_duration_ms: 2000,
      speech_pad_ms: 400,
    }
  }
}

/// Speech regions `[start, end)` (sample indices) of 16 kHz mono `samples`
/// (python `get_speech_timestamps`, with earshot's per-frame scores).
pub fn speech_timestamps(samples: &[f32], o: &VadOptions) -> Vec<(usize, usize)> {
  let mut det = earshot::Detector::default();
  let mut frame = [0i16; FRAME];
  let probs: Vec<f32> = samples
    .chunks(FRAME)
    .map(|c| {
      for (d, s) in frame
        .iter_mut()
        .zip(c.iter().chain(std::iter::repeat(&0.0)))
      {
        *d = (s.clamp(-1.0, 1.0) * 32767.0) as i16;
      }
      det.predict_i16(&frame)
    })
    .collect();
  regions(&probs, samples.len(), o)
}

/// faster-whisper's segmentation of per-frame speech probabilities into
/// padded regions (no `max_speech_duration_s`: unbounded, its default).
fn regions(probs: &[f32], len: usize, o: &VadOptions) -> Vec<(usize, usize)> {
  let ms = |v: u32| RATE * v as usize / 1000;
  let (min_speech, min_silence, pad) = (
    ms(o.min_speech_duration_ms),
    ms(o.min_silence_duration_ms),
    ms(o.speech_pad_ms),
  );
  let neg = o.neg_threshold.unwrap_or((o.threshold - 0.15).max(0.01));
  let mut speeches: Vec<(usize, usize)> = Vec::new();
  let (mut triggered, mut start, mut temp_end) = (false, 0usize, 0usize);
  for (i, &p) in probs.iter().enumerate() {
    let at = FRAME * i;
    if p >= o.threshold && temp_end != 0 {
      temp_end = 0;
    }
    if p >= o.threshold && !triggered {
      triggered = true;
      start = at;
      continue;
    }
    if p < neg && triggered {
      if temp_end == 0 {
        temp_end = at;
      }
      if at - temp_end < min_silence {
        continue;
      }
      if temp_end - start > min_speech {
        speeches.push((start, temp_end));
      }
      triggered = false;
      temp_end = 0;
    }
  }
  if triggered && len - start > min_speech {
    speeches.push((start, len));
  }
  let n = speeches.len();
  for i in 0..n {
    if i == 0 {
      speeches[0].0 = speeches[0].0.saturating_sub(pad);
    }
    if i + 1 < n {
      let silence = speeches[i + 1].0.saturating_sub(speeches[i].1);
      if silence < 2 * pad {
        speeches[i].1 += silence / 2;
        speeches[i + 1].0 = speeches[i + 1].0.saturating_sub(silence / 2);
      } else {
        speeches[i].1 = (speeches[i].1 + pad).min(len);
        speeches[i + 1].0 = speeches[i + 1].0.saturating_sub(pad);
      }
    } else {
      speeches[i].1 = (speeches[i].1 + pad).min(len);
    }
  }
  speeches
}

/// The speech regions of `samples`, concatenated (python `collect_chunks`).
pub fn collect_chunks(samples: &[f32], chunks: &[(usize, usize)]) -> Vec<f32> {
  chunks
    .iter()
    .flat_map(|&(s, e)| {
      samples[s.min(samples.len())..e.min(samples.len())]
        .iter()
        .copied()
    })
    .collect()
}

/// Maps times in the concatenated speech back to the original audio
/// (python `SpeechTimestampsMap`).
#[derive(Debug, Clone)]
pub struct TimeMap {
  /// Per chunk: (start in the concatenated audio, start in the original), s.
  starts: Vec<(f64, f64)>,
}

impl TimeMap {
  /// The map for `chunks` (sample ranges of the original audio).
  pub fn new(chunks: &[(usize, usize)]) -> TimeMap {
    let mut at = 0usize;
    let starts = chunks
      .iter()
      .map(|&(s, e)| {
        let r = (at as f64 / RATE as f64, s as f64 / RATE as f64);
        at += e - s;
        r
      })
      .collect();
    TimeMap { starts }
  }

  /// Original time of `t` seconds of the concatenated speech. An end time
  /// (`is_end`) that falls exactly on a chunk boundary belongs to the chunk
  /// before it (python `get_original_time(time, is_end=True)`).
  pub fn original(&self, t: f64, is_end: bool) -> f64 {
    let i = self
      .starts
      .partition_point(|&(c, _)| if is_end { c < t } else { c <= t })
      .saturating_sub(1);
    match self.starts.get(i) {
      Some(&(c, o)) => o + (t - c),
      None => t,
    }
  }

  /// Move a segment (and its words) to original times.
  pub fn apply(&self, s: &mut Segment) {
    s.start = self.original(s.start, false);
    s.end = self.original(s.end, true);
    for w in s.words.iter_mut().flatten() {
      w.start = self.original(w.start, false);
      w.end = self.original(w.end, true);
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn regions_follow_faster_whisper_rules() {
    // 16 ms frames: speech in frames 100..200 and 210..300, silence
    // elsewhere; the 10-frame (160 ms) gap is shorter than min_silence, so
    // one region, padded by 400 ms (6400 samples) each side.
    let mut p = vec![0.0f32; 1000];
    for (i, x) in p.iter_mut().enumerate() {
      if (100..200).contains(&i) || (210..300).contains(&i) {
        *x = 0.9;
      }
    }
    let len = 1000 * FRAME;
    let r = regions(&p, len, &VadOptions::default());
    assert_eq!(r, vec![(100 * FRAME - 6400, 300 * FRAME + 6400)]);
    assert!(regions(&[0.0; 100], 100 * FRAME, &VadOptions::default()).is_empty());
  }

  #[test]
  fn time_map_and_silence() {
    let m = TimeMap::new(&[(16_000, 32_000), (80_000, 96_000)]);
    assert_eq!(m.original(0.5, false), 1.5);
    assert_eq!(m.original(1.25, false), 5.25);
    // The boundary (1 s of speech): a start opens chunk 2, an end closes 1.
    assert_eq!(m.original(1.0, false), 5.0);
    assert_eq!(m.original(1.0, true), 2.0);
    // Digital silence has no speech.
    assert!(speech_timestamps(&vec![0.0; 16_000 * 5], &VadOptions::default()).is_empty());
  }
}
