//! Possible hallucinations, for `hallucination_silence_threshold` (python
//! faster-whisper `generate_segments`'s `word_anomaly_score`,
//! `is_segment_anomaly` and the silence skipping around them).

use crate::timing::Word;

/// The punctuation faster-whisper leaves out when scoring a segment's
/// words (its `prepend_punctuations` + `append_punctuations` defaults).
const PUNCTUATION: &str = "\"'“¿([{-\"'.。,，!！?？:：”)]}、";

/// How odd a word is (python `word_anomaly_score`): improbable, shorter
/// than 0.133 s or longer than 2 s.
fn word_anomaly_score(w: &Word) -> f64 {
  let duration = w.end - w.start;
  let mut score = 0.0;
  if w.probability < 0.15 {
    score += 1.0;
  }
  if duration < 0.133 {
    score += (0.133 - duration) * 15.0;
  }
  if duration > 2.0 {
    score += duration - 2.0;
  }
  score
}

/// Whether a segment with `words` is a possible hallucination (python
/// `is_segment_anomaly`): its first 8 non-punctuation words score >= 3, or
/// about one per word. No words: no.
pub(super) fn is_segment_anomaly(words: Option<&[Word]>) -> bool {
  let Some(words) = words.filter(|w| !w.is_empty()) else {
    return false;
  };
  // python `w["word"] not in punctuation` is a substring test.
  let kept: Vec<&Word> = words
    .iter()
    .filter(|w| !PUNCTUATION.contains(w.word.as_str()))
    .take(8)
    .collect();
  let score: f64 = kept.iter().map(|w| word_anomaly_score(w)).sum();
  score >= 3.0 || score + 0.01 >= kept.len() as f64
}

/// What the silence check decided for one window.
pub(super) enum Skip {
  /// Keep the window's segments as they are.
  None,
  /// Drop the whole window and seek here (leading silence before a
  /// possible hallucination).
  Window(usize),
  /// Keep the segments before `keep`, drop the rest and seek here.
  Tail { keep: usize, seek: usize },
}

/// The window being checked.
pub(super) struct Window<'a> {
  /// Segment `(start, end)` times, after word alignment.
  pub(super) spans: Vec<(f64, f64)>,
  /// Each segment's words.
  pub(super) words: &'a [Vec<Word>],
  /// Seconds at the window's start, its decoded length and where a full
  /// 30 s window would end.
  pub(super) time_offset: f64,
  pub(super) segment_duration: f64,
  pub(super) window_end_time: f64,
  /// Mel frame the window started at.
  pub(super) previous_seek: usize,
  /// End of the last speech so far (seconds).
  pub(super) last_speech_timestamp: f64,
  /// Audio length in seconds and frames.
  pub(super) content_duration: f64,
  pub(super) content_frames: usize,
}

/// python `round(x * frames_per_second)`: half to even.
fn frames(seconds: f64) -> usize {
  (seconds * 100.0).round_ties_even().max(0.0) as usize
}

/// The silence skipping of python faster-whisper's `generate_segments`
/// with `hallucination_silence_threshold = threshold`.
pub(super) fn check(w: &Window<'_>, threshold: f64) -> Skip {
  let words_of = |i: usize| w.words.get(i).map(Vec::as_slice);
  let next_with_words =
    |from: usize| (from..w.spans.len()).find(|&i| words_of(i).is_some_and(|x| !x.is_empty()));
  // A possible hallucination first: skip the leading silence.
  if let Some(first) = next_with_words(0) {
    if is_segment_anomaly(words_of(first)) {
      let gap = w.spans[first].0 - w.time_offset;
      if gap > threshold {
        // `.max`: never seek backwards or stay in place (python could for
        // a gap under 5 ms, which word times rounded to 10 ms never give).
        return Skip::Window((w.previous_seek + frames(gap)).max(w.previous_seek + 1));
      }
    }
  }
  // A possible hallucination surrounded by silence or more of them: drop
  // it and what follows, seek past its start.
  let mut hal_last_end = w.last_speech_timestamp;
  for si in 0..w.spans.len() {
    if words_of(si).is_none_or(<[Word]>::is_empty) {
      continue;
    }
    let (start, end) = w.spans[si];
    if is_segment_anomaly(words_of(si)) {
      let next = next_with_words(si + 1);
      let hal_next_start = match next.and_then(words_of).and_then(<[Word]>::first) {
        Some(word) => word.start,
        None => w.time_offset + w.segment_duration,
      };
      let silence_before =
        start - hal_last_end > threshold || start < threshold || start - w.time_offset < 2.0;
      let silence_after = hal_next_start - end > threshold
        || is_segment_anomaly(next.and_then(words_of))
        || w.window_end_time - end < 2.0;
      if silence_before && silence_after {
        let mut seek = frames((w.time_offset + 1.0).max(start));
        if w.content_duration - end < threshold {
          seek = w.content_frames;
        }
        return Skip::Tail { keep: si, seek };
      }
    }
    hal_last_end = end;
  }
  Skip::None
}

#[cfg(test)]
mod tests {
  use super::*;

  fn word(t: &str, start: f64, end: f64, p: f32) -> Word {
    Word {
      word: t.into(),
      start,
      end,
      probability: p,
    }
  }

  /// The scores python's `word_anomaly_score` / `is_segment_anomaly` give
  /// (worked by hand from their definitions).
  #[test]
  fn anomaly_scores() {
    // p < 0.15: 1; 0.1 s long: (0.133 - 0.1) * 15 = 0.495; 3 s: 1.
    assert!((word_anomaly_score(&word(" a", 0.0, 0.5, 0.1)) - 1.0).abs() < 1e-12);
    assert!((word_anomaly_score(&word(" a", 0.0, 0.1, 0.9)) - 0.495).abs() < 1e-9);
    assert!((word_anomaly_score(&word(" a", 0.0, 3.0, 0.9)) - 1.0).abs() < 1e-12);
    // One improbable word: score 1 + 0.01 >= 1 word.
    assert!(is_segment_anomaly(Some(&[word(" You", 45.2, 46.6, 0.04)])));
    // One normal word: 0.01 < 1.
    assert!(!is_segment_anomaly(Some(&[word(" you", 20.0, 21.4, 0.24)])));
    // Punctuation-only words do not count; no words: no anomaly.
    assert!(!is_segment_anomaly(Some(&[
      word(" hi", 0.0, 0.5, 0.9),
      word(".", 0.5, 0.5, 0.01)
    ])));
    assert!(!is_segment_anomaly(Some(&[])));
    assert!(!is_segment_anomaly(None));
  }
}
