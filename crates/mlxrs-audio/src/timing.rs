//! Word-level timestamps from the cross-attention of the alignment heads
//! (python `faster_whisper.WhisperModel.find_alignment` /
//! `add_word_timestamps` over CTranslate2's `Whisper.align`, and openai
//! whisper's `timing.py`).
//!
//! For one decoded window: the decoder is run once over
//! `sot sequence + <|notimestamps|> + text tokens + <|endoftext|>`; the
//! pre-softmax cross-attention scores of the alignment heads are
//! softmaxed over the window's content frames, standardized over the token
//! axis, median-filtered (width 7, reflect padding) over frames and averaged
//! over heads; dynamic time warping of the negated matrix maps tokens to
//! encoder frames (20 ms each). Tokens are grouped into words (split on
//! spaces / punctuation, or on unicode boundaries for zh / ja / th / lo /
//! my / yue), punctuation is merged into its neighbours and the long-word
//! heuristics at sentence and segment boundaries are applied.

use mlxrs_core::{Array, ops};

use crate::error::{Error, Result};
use crate::tokenizer::WhisperTokenizer;
use crate::whisper::WhisperModel;

/// One word with its timing (python `faster_whisper.transcribe.Word`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Word {
  /// The word's text (with its leading space and merged punctuation).
  pub word: String,
  /// Start (seconds, rounded to 0.01).
  pub start: f64,
  /// End (seconds, rounded to 0.01).
  pub end: f64,
  /// Mean probability of its tokens.
  pub probability: f32,
}

/// CTranslate2's `WhisperAlignmentResult`: the DTW path as (text index,
/// frame index) pairs and each text token's probability.
#[derive(Debug, Clone)]
pub struct Alignment {
  /// Monotonic (token row, encoder frame) pairs; rows run over the text
  /// tokens plus the end-of-text position.
  pub pairs: Vec<(usize, usize)>,
  /// `softmax(logits[:eot])[token]` of each text token.
  pub text_token_probs: Vec<f32>,
}

/// A word before rounding (python's alignment dicts).
#[derive(Debug, Clone)]
struct Timing {
  word: String,
  tokens: Vec<u32>,
  start: f64,
  end: f64,
  probability: f32,
}

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Encoder frames per second (`16000 / (160 * 2)`).
const TOKENS_PER_SECOND: f64 = 50.0;

/// Dynamic time warping of `-x` (`n` x `m`, row-major): CTranslate2's
/// `negative_dtw` (openai's `dtw_cpu` on `-x`), with its tie-breaking
/// (diagonal, then up, else left).
pub fn negative_dtw(x: &[f32], n: usize, m: usize) -> Vec<(usize, usize)> {
  let w = m + 1;
  let mut cost = vec![f32::INFINITY; (n + 1) * w];
  let mut trace = vec![-1i8; (n + 1) * w];
  cost[0] = 0.0;
  for j in 1..=m {
    for i in 1..=n {
      let c0 = cost[(i - 1) * w + j - 1];
      let c1 = cost[(i - 1) * w + j];
      let c2 = cost[i * w + j - 1];
      let (c, t) = if c0 < c1 && c0 < c2 {
        (c0, 0)
      } else if c1 < c0 && c1 < c2 {
        (c1, 1)
      } else {
        (c2, 2)
      };
      cost[i * w + j] = -x[(i - 1) * m + j - 1] + c;
      trace[i * w + j] = t;
    }
  }
  trace[..w].fill(2);
  for k in 0..=n {
    trace[k * w] = 1;
  }
  let (mut i, mut j) = (n, m);
  let mut out = Vec::with_capacity(n + m);
  while i > 0 && j > 0 {
    out.push((i - 1, j - 1));
    match trace[i * w + j] {
      0 => {
        i -= 1;
        j -= 1;
      }
      1 => i -= 1,
      _ => j -= 1,
    }
  }
  out.reverse();
  out
}

/// Median filter of odd `width` over `row` with reflect padding (no edge
/// repeat), CTranslate2's `MedianFilter` / openai's `median_filter`. Rows
/// not longer than `width / 2` are returned unchanged.
pub fn median_filter(row: &[f32], width: usize) -> Vec<f32> {
  let depth = row.len() as isize;
  let rank = (width / 2) as isize;
  if depth <= rank {
    return row.to_vec();
  }
  let mut window = vec![0f32; width];
  (0..depth)
    .map(|j| {
      for k in -rank..=rank {
        let mut read = (j + k).abs();
        if read >= depth {
          read = depth - (read - depth) - 2;
        }
        window[(k + rank) as usize] = row[read.clamp(0, depth - 1) as usize];
      }
      window.select_nth_unstable_by(rank as usize, |a, b| a.total_cmp(b));
      window[rank as usize]
    })
    .collect()
}

/// CTranslate2's `WhisperReplica::align` for one window: `xa` is the
/// encoder output `[1, frames, d]`, `sot_sequence` the task tokens
/// (`<|startoftranscript|>` [+ language + task]), `text` the text tokens,
/// `num_frames` the window's content mel frames.
#[allow(clippy::too_many_arguments)]
pub fn align(
  model: &WhisperModel,
  tok: &WhisperTokenizer,
  xa: &Array,
  sot_sequence: &[u32],
  text: &[u32],
  num_frames: usize,
  median_filter_width: usize,
) -> Result<Alignment> {
  let sp = &tok.special;
  let heads = &model.config.alignment_heads;
  if heads.is_empty() {
    return Err(Error::Model(
      "word timestamps: the model has no alignment heads".into(),
    ));
  }
  let mut input: Vec<i32> = sot_sequence.iter().map(|&t| t as i32).collect();
  input.push(sp.no_timestamps as i32);
  input.extend(text.iter().map(|&t| t as i32));
  input.push(sp.eot as i32);
  let t_len = input.len() as i32;
  let offset = sot_sequence.len();
  let ids = Array::from_slice(&input, &[1, t_len])?;
  let mut state = model.decoder_state(xa)?;
  let (hidden, qks) = model.decode_hidden_with_cross_qk(&ids, &mut state)?;

  // Text token probabilities over the text vocabulary [0, eot).
  let n_text = text.len() as i32;
  let text_token_probs = if n_text > 0 {
    let d = hidden.dim(2).unwrap_or(0);
    let h = ops::slice(
      &hidden,
      &[0, offset as i32, 0],
      &[1, offset as i32 + n_text, d],
      &[1, 1, 1],
    )?;
    let logits = model.logits(&h)?;
    let logits = ops::slice(&logits, &[0, 0, 0], &[1, n_text, sp.eot as i32], &[1, 1, 1])?;
    let lse = ops::logsumexp_axis(&logits, -1, true)?;
    let idx: Vec<i32> = text.iter().map(|&t| t as i32).collect();
    let idx = Array::from_slice(&idx, &[1, n_text, 1])?;
    let picked = ops::take_along_axis(&logits, &idx, -1)?;
    let mut p = ops::exp(&ops::subtract(&picked, &lse)?)?;
    p.to_vec::<f32>()?
  } else {
    Vec::new()
  };

  // Alignment-head attention: softmax over the content frames.
  let total_frames = qks.first().and_then(|q| q.dim(3)).unwrap_or(0);
  let nf = ((num_frames / 2) as i32).min(total_frames);
  if nf <= 0 {
    return Ok(Alignment {
      pairs: Vec::new(),
      text_token_probs,
    });
  }
  let mut sel = Vec::with_capacity(heads.len());
  for &(l, hh) in heads {
    let qk = qks
      .get(l as usize)
      .ok_or_else(|| Error::Model(format!("alignment head layer {l} is not a decoder layer")))?;
    sel.push(ops::slice(
      qk,
      &[0, hh, 0, 0],
      &[1, hh + 1, t_len, nf],
      &[1, 1, 1, 1],
    )?);
  }
  let w = ops::concatenate_axis(&sel, 1)?;
  let mut w = ops::softmax_axis(&w, -1, true)?;
  let w = w.to_vec::<f32>()?;
  let (nh, t, f) = (heads.len(), t_len as usize, nf as usize);

  // Standardize over tokens (population variance, epsilon 0), median
  // filter over frames, mean over heads.
  let mut mean_heads = vec![0f32; t * f];
  let mut col = vec![0f32; t];
  for h in 0..nh {
    let base = h * t * f;
    let mut norm = vec![0f32; t * f];
    for fr in 0..f {
      for (ti, c) in col.iter_mut().enumerate() {
        *c = w[base + ti * f + fr];
      }
      let mean = col.iter().sum::<f32>() / t as f32;
      let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / t as f32;
      let inv = 1.0 / var.sqrt();
      for (ti, c) in col.iter().enumerate() {
        norm[ti * f + fr] = (c - mean) * inv;
      }
    }
    for ti in 0..t {
      let filtered = median_filter(&norm[ti * f..(ti + 1) * f], median_filter_width);
      for (acc, v) in mean_heads[ti * f..(ti + 1) * f].iter_mut().zip(filtered) {
        *acc += v;
      }
    }
  }
  for v in &mut mean_heads {
    *v /= nh as f32;
  }
  let rows = text.len() + 1;
  let matrix = &mean_heads[offset * f..(offset + rows) * f];
  Ok(Alignment {
    pairs: negative_dtw(matrix, rows, f),
    text_token_probs,
  })
}

/// Languages written without spaces (python `split_to_word_tokens`).
fn splits_on_unicode(language: &str) -> bool {
  matches!(language, "zh" | "ja" | "th" | "lo" | "my" | "yue")
}

/// Python `Tokenizer.split_tokens_on_unicode`.
fn split_tokens_on_unicode(
  tok: &WhisperTokenizer,
  tokens: &[u32],
) -> Result<(Vec<String>, Vec<Vec<u32>>)> {
  let decoded_full: Vec<char> = tok.decode_with_timestamps(tokens)?.chars().collect();
  let repl = '\u{fffd}';
  let mut words = Vec::new();
  let mut word_tokens = Vec::new();
  let mut current: Vec<u32> = Vec::new();
  let mut unicode_offset = 0usize;
  for &t in tokens {
    current.push(t);
    let decoded = tok.decode_with_timestamps(&current)?;
    let chars: Vec<char> = decoded.chars().collect();
    let idx = chars
      .iter()
      .position(|&c| c == repl)
      .map(|i| i + unicode_offset);
    let complete = match idx {
      None => true,
      Some(i) => i < decoded_full.len() && decoded_full[i] == repl,
    };
    if complete {
      unicode_offset += chars.len();
      words.push(decoded);
      word_tokens.push(std::mem::take(&mut current));
    }
  }
  Ok((words, word_tokens))
}

/// Python `Tokenizer.split_to_word_tokens`.
fn split_to_word_tokens(
  tok: &WhisperTokenizer,
  tokens: &[u32],
  language: &str,
) -> Result<(Vec<String>, Vec<Vec<u32>>)> {
  let (subwords, subword_tokens) = split_tokens_on_unicode(tok, tokens)?;
  if splits_on_unicode(language) {
    return Ok((subwords, subword_tokens));
  }
  let mut words: Vec<String> = Vec::new();
  let mut word_tokens: Vec<Vec<u32>> = Vec::new();
  for (sw, st) in subwords.into_iter().zip(subword_tokens) {
    let special = st.first().is_some_and(|&t| t >= tok.special.eot);
    let with_space = sw.starts_with(' ');
    let punctuation = PUNCTUATION.contains(sw.trim());
    if special || with_space || punctuation || words.is_empty() {
      words.push(sw);
      word_tokens.push(st);
    } else if let (Some(w), Some(wt)) = (words.last_mut(), word_tokens.last_mut()) {
      w.push_str(&sw);
      wt.extend(st);
    }
  }
  Ok((words, word_tokens))
}

/// Python `WhisperModel.find_alignment` for one window.
#[allow(clippy::too_many_arguments)]
fn find_alignment(
  model: &WhisperModel,
  tok: &WhisperTokenizer,
  xa: &Array,
  sot_sequence: &[u32],
  text: &[u32],
  num_frames: usize,
  language: &str,
) -> Result<Vec<Timing>> {
  if text.is_empty() {
    return Ok(Vec::new());
  }
  let al = align(model, tok, xa, sot_sequence, text, num_frames, 7)?;
  let mut with_eot = text.to_vec();
  with_eot.push(tok.special.eot);
  let (words, word_tokens) = split_to_word_tokens(tok, &with_eot, language)?;
  if word_tokens.len() <= 1 || al.pairs.is_empty() {
    return Ok(Vec::new());
  }
  let mut boundaries = vec![0usize];
  for wt in &word_tokens[..word_tokens.len() - 1] {
    let last = boundaries.last().copied().unwrap_or(0);
    boundaries.push(last + wt.len());
  }
  // Frame of each row's first visit (python's `jumps`).
  let mut jump_times = Vec::new();
  for (k, &(ti, fi)) in al.pairs.iter().enumerate() {
    if k == 0 || ti != al.pairs[k - 1].0 {
      jump_times.push(fi as f64 / TOKENS_PER_SECOND);
    }
  }
  let mut out = Vec::new();
  for (wi, (word, tokens)) in words.into_iter().zip(word_tokens).enumerate() {
    if wi + 1 >= boundaries.len() {
      break;
    }
    let (i, j) = (boundaries[wi], boundaries[wi + 1]);
    let (Some(&start), Some(&end)) = (jump_times.get(i), jump_times.get(j)) else {
      break;
    };
    let probs =
      &al.text_token_probs[i.min(al.text_token_probs.len())..j.min(al.text_token_probs.len())];
    let probability = if probs.is_empty() {
      f32::NAN
    } else {
      probs.iter().sum::<f32>() / probs.len() as f32
    };
    out.push(Timing {
      word,
      tokens,
      start,
      end,
      probability,
    });
  }
  Ok(out)
}

/// Python `merge_punctuations`.
fn merge_punctuations(al: &mut [Timing], prepended: &str, appended: &str) {
  if al.len() >= 2 {
    let mut i = al.len() as isize - 2;
    let mut j = al.len() - 1;
    while i >= 0 {
      let iu = i as usize;
      let prev = &al[iu];
      if prev.word.starts_with(' ') && prepended.contains(prev.word.trim()) {
        let (pw, pt) = (
          std::mem::take(&mut al[iu].word),
          std::mem::take(&mut al[iu].tokens),
        );
        let f = &mut al[j];
        f.word = pw + &f.word;
        let mut t = pt;
        t.extend(f.tokens.iter().copied());
        f.tokens = t;
      } else {
        j = iu;
      }
      i -= 1;
    }
  }
  let (mut i, mut j) = (0usize, 1usize);
  while j < al.len() {
    if !al[i].word.ends_with(' ') && appended.contains(al[j].word.as_str()) {
      let (fw, ft) = (
        std::mem::take(&mut al[j].word),
        std::mem::take(&mut al[j].tokens),
      );
      al[i].word.push_str(&fw);
      al[i].tokens.extend(ft);
    } else {
      i = j;
    }
    j += 1;
  }
}

/// `np.median`.
fn median(v: &mut [f64]) -> f64 {
  if v.is_empty() {
    return f64::NAN;
  }
  v.sort_by(|a, b| a.total_cmp(b));
  let n = v.len();
  if n % 2 == 1 {
    v[n / 2]
  } else {
    (v[n / 2 - 1] + v[n / 2]) / 2.0
  }
}

/// Python `round(x, 2)` for the (never tied) times here.
fn round2(x: f64) -> f64 {
  (x * 100.0).round() / 100.0
}

/// A window's segments as `_split_segments_by_timestamps` makes them:
/// (start, end, tokens).
pub(crate) type SubSegment = (f64, f64, Vec<u32>);

/// Python `WhisperModel.add_word_timestamps` for one window (`seek` its
/// first mel frame, `num_frames` its content frames): returns each
/// sub-segment's words and updates their start / end as python does.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_word_timestamps(
  model: &WhisperModel,
  tok: &WhisperTokenizer,
  xa: &Array,
  sot_sequence: &[u32],
  language: &str,
  segments: &mut [SubSegment],
  seek: usize,
  num_frames: usize,
  prepend_punctuations: &str,
  append_punctuations: &str,
  mut last_speech_timestamp: f64,
) -> Result<Vec<Vec<Word>>> {
  if segments.is_empty() {
    return Ok(Vec::new());
  }
  let eot = tok.special.eot;
  let per_segment: Vec<Vec<u32>> = segments
    .iter()
    .map(|s| s.2.iter().copied().filter(|&t| t < eot).collect())
    .collect();
  let text: Vec<u32> = per_segment.iter().flatten().copied().collect();
  let mut alignment = find_alignment(model, tok, xa, sot_sequence, &text, num_frames, language)?;
  let mut durations: Vec<f64> = alignment
    .iter()
    .map(|w| w.end - w.start)
    .filter(|&d| d != 0.0)
    .collect();
  let median_duration = if durations.is_empty() {
    0.0
  } else {
    median(&mut durations).min(0.7)
  };
  let max_duration = median_duration * 2.0;
  if !durations.is_empty() {
    let marks = ".。!！?？";
    for i in 1..alignment.len() {
      if alignment[i].end - alignment[i].start > max_duration {
        if marks.contains(alignment[i].word.as_str()) {
          alignment[i].end = alignment[i].start + max_duration;
        } else if marks.contains(alignment[i - 1].word.as_str()) {
          alignment[i].start = alignment[i].end - max_duration;
        }
      }
    }
  }
  merge_punctuations(&mut alignment, prepend_punctuations, append_punctuations);

  let time_offset = seek as f64 / 100.0;
  let mut word_index = 0;
  let mut out = Vec::with_capacity(segments.len());
  for (si, seg) in segments.iter_mut().enumerate() {
    let mut saved_tokens = 0;
    let mut words: Vec<Word> = Vec::new();
    while word_index < alignment.len() && saved_tokens < per_segment[si].len() {
      let timing = &alignment[word_index];
      if !timing.word.is_empty() {
        words.push(Word {
          word: timing.word.clone(),
          start: round2(time_offset + timing.start),
          end: round2(time_offset + timing.end),
          probability: timing.probability,
        });
      }
      saved_tokens += timing.tokens.len();
      word_index += 1;
    }
    if !words.is_empty() {
      let n = words.len();
      if words[0].end - last_speech_timestamp > median_duration * 4.0
        && (words[0].end - words[0].start > max_duration
          || (n > 1 && words[1].end - words[0].start > max_duration * 2.0))
      {
        if n > 1 && words[1].end - words[1].start > max_duration {
          let boundary = (words[1].end / 2.0).max(words[1].end - max_duration);
          words[0].end = boundary;
          words[1].start = boundary;
        }
        words[0].start = (words[0].end - max_duration).max(0.0);
      }
      if seg.0 < words[0].end && seg.0 - 0.5 > words[0].start {
        words[0].start = (words[0].end - median_duration).min(seg.0).max(0.0);
      } else {
        seg.0 = words[0].start;
      }
      let last = n - 1;
      if seg.1 > words[last].start && seg.1 + 0.5 < words[last].end {
        words[last].end = (words[last].start + median_duration).max(seg.1);
      } else {
        seg.1 = words[last].end;
      }
      last_speech_timestamp = seg.1;
    }
    out.push(words);
  }
  Ok(out)
}

/// Python `faster_whisper.utils.get_end`: the last word's end, else the
/// last segment's end.
pub(crate) fn get_end(segments: &[SubSegment], words: &[Vec<Word>]) -> Option<f64> {
  words
    .iter()
    .rev()
    .find_map(|w| w.last().map(|w| w.end))
    .or_else(|| segments.last().map(|s| s.1))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn dtw_follows_the_diagonal_of_a_clear_path() {
    // Rows 0..3 peak at frames 0, 2, 4: the path visits each peak.
    let (n, m) = (3, 6);
    let mut x = vec![0f32; n * m];
    x[0] = 1.0;
    x[m + 2] = 1.0;
    x[2 * m + 4] = 1.0;
    let p = negative_dtw(&x, n, m);
    assert_eq!(p.first(), Some(&(0, 0)));
    assert_eq!(p.last(), Some(&(2, 5)));
    assert!(p.contains(&(1, 2)) && p.contains(&(2, 4)));
    assert!(p.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
  }

  #[test]
  fn median_filter_reflects() {
    // scipy / torch reflect padding: [3, 2, | 1, 2, 3, 10, 5 |, 10, 3]
    let r = median_filter(&[1.0, 2.0, 3.0, 10.0, 5.0], 5);
    assert_eq!(r, vec![2.0, 2.0, 3.0, 5.0, 5.0]);
    assert_eq!(median_filter(&[4.0, 1.0], 7), vec![4.0, 1.0]);
  }

  #[test]
  fn punctuation_merges_like_python() {
    let t = |w: &str| Timing {
      word: w.into(),
      tokens: vec![1],
      start: 0.0,
      end: 0.0,
      probability: 1.0,
    };
    let mut al = vec![t(" \""), t("Hi"), t("."), t(" there"), t("!")];
    merge_punctuations(&mut al, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、");
    let words: Vec<&str> = al.iter().map(|w| w.word.as_str()).collect();
    assert_eq!(words, vec!["", " \"Hi.", "", " there!", ""]);
    assert_eq!(al[1].tokens.len(), 3);
  }
}
