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

mod decode;
mod hallucination;
mod options;
mod rules;
mod segmentation;

pub use decode::{GenerateParams, Generation, generate};
pub use options::{Segment, Task, TranscribeOptions, Transcription, parse_clip_timestamps};
pub use segmentation::compression_ratio;

#[cfg(test)]
mod tests {
  use mlxrs_core::{Array, ops};

  use super::decode::*;
  use super::rules::*;
  use super::segmentation::*;
  use crate::tokenizer::SpecialTokens;

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
