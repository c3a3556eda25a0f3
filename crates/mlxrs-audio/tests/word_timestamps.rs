//! Word-level timestamps of Whisper tiny.en (real weights, CTranslate2
//! format) against faster-whisper's `word_timestamps=True` transcripts of
//! the committed espeak-ng clips (`scripts/make_whisper_refs.py words`).
//!
//! Tolerances: word start / end within 0.02 s (one encoder frame: DTW is
//! discrete, so a float32 rounding difference in the attention can at most
//! move a boundary by one 20 ms frame; in practice they are equal), word
//! probabilities within 2e-3 (as avg_logprob in transcribe_tiny_en), words
//! and segment tokens equal.

mod common;

use mlxrs_audio::{TranscribeOptions, Whisper, load_audio};
use serde_json::Value;

#[test]
fn words_match_faster_whisper() {
  let model = Whisper::load(common::tiny_en()).unwrap();
  let refs: Value =
    serde_json::from_str(&std::fs::read_to_string(common::data().join("words.json")).unwrap())
      .unwrap();
  let opts = TranscribeOptions {
    temperatures: vec![0.0],
    word_timestamps: true,
    // The device rules (the GPU default); transcribe_tiny_en checks both.
    rules_on_device: Some(true),
    ..TranscribeOptions::default()
  };
  let (mut n_words, mut exact, mut max_dt, mut max_dp) = (0usize, 0usize, 0f64, 0f64);
  let mut failures = Vec::new();
  for run in refs["runs"].as_array().unwrap() {
    let clip = run["clip"].as_str().unwrap();
    let audio = load_audio(common::data().join(format!("audio/{clip}.wav"))).unwrap();
    let got = model.transcribe(&audio, &opts).unwrap();
    let want = run["segments"].as_array().unwrap();
    assert_eq!(got.segments.len(), want.len(), "{clip}: segment count");
    for (i, (g, w)) in got.segments.iter().zip(want).enumerate() {
      let wt: Vec<u32> = w["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
      assert_eq!(g.tokens, wt, "{clip} segment {i}: tokens");
      assert_eq!(
        g.seek as u64,
        w["seek"].as_u64().unwrap(),
        "{clip} segment {i}: seek"
      );
      let ds = (g.start - w["start"].as_f64().unwrap()).abs();
      let de = (g.end - w["end"].as_f64().unwrap()).abs();
      max_dt = max_dt.max(ds).max(de);
      if ds > 0.02 + 1e-9 || de > 0.02 + 1e-9 {
        failures.push(format!(
          "{clip} segment {i}: [{}, {}] vs [{}, {}]",
          g.start, g.end, w["start"], w["end"]
        ));
      }
      let gw = g.words.as_ref().expect("words requested");
      let ww = w["words"].as_array().unwrap();
      let gs: Vec<&str> = gw.iter().map(|x| x.word.as_str()).collect();
      let ws: Vec<&str> = ww.iter().map(|x| x["word"].as_str().unwrap()).collect();
      assert_eq!(gs, ws, "{clip} segment {i}: words");
      for (a, b) in gw.iter().zip(ww) {
        n_words += 1;
        let ds = (a.start - b["start"].as_f64().unwrap()).abs();
        let de = (a.end - b["end"].as_f64().unwrap()).abs();
        let dp = (f64::from(a.probability) - b["probability"].as_f64().unwrap()).abs();
        max_dt = max_dt.max(ds).max(de);
        max_dp = max_dp.max(dp);
        if ds < 1e-9 && de < 1e-9 {
          exact += 1;
        }
        if ds > 0.02 + 1e-9 || de > 0.02 + 1e-9 || dp > 2e-3 {
          failures.push(format!(
            "{clip} {:?}: got [{}, {}] p={}, want [{}, {}] p={}",
            a.word, a.start, a.end, a.probability, b["start"], b["end"], b["probability"]
          ));
        }
      }
    }
  }
  eprintln!(
    "{n_words} words, {exact} with identical start/end; max time diff {max_dt:.3} s, max probability diff {max_dp:.2e}"
  );
  assert!(n_words > 50, "too few words compared: {n_words}");
  assert!(failures.is_empty(), "{}", failures.join("\n"));
}
