//! `clip_timestamps` and `hallucination_silence_threshold` of Whisper
//! tiny.en (real weights, CTranslate2 format) against faster-whisper's
//! transcripts with the same options (`scripts/make_whisper_refs.py clips`
//! writes tests/data/clips.json): the long clip cut into clips, and the
//! sentences clip followed by 40 s of digital silence, where tiny.en
//! hallucinates an improbable " You" that the threshold removes.
//!
//! Segment tokens, text and seek equal; segment and word times within
//! 0.02 s and word probabilities within 2e-3 (the tolerances of
//! word_timestamps.rs: DTW boundaries are discrete 20 ms frames).

mod common;

use mlxrs_audio::{Audio, TranscribeOptions, Whisper, load_audio, parse_clip_timestamps};
use serde_json::Value;

/// The run's audio as clips.json describes it: committed clips and zeros.
fn build_audio(parts: &Value) -> Audio {
  let mut samples = Vec::new();
  for p in parts.as_array().unwrap() {
    match p[0].as_str().unwrap() {
      "clip" => {
        let name = p[1].as_str().unwrap();
        let a = load_audio(common::data().join(format!("audio/{name}.wav"))).unwrap();
        assert_eq!(a.sample_rate, 16000);
        samples.extend_from_slice(&a.samples);
      }
      "zeros" => samples.extend(std::iter::repeat_n(0f32, p[1].as_u64().unwrap() as usize)),
      o => panic!("unknown audio part {o}"),
    }
  }
  Audio::from_samples_16k(samples)
}

#[test]
fn clips_and_hallucination_threshold_match_faster_whisper() {
  let model = Whisper::load(common::tiny_en()).unwrap();
  let refs: Value =
    serde_json::from_str(&std::fs::read_to_string(common::data().join("clips.json")).unwrap())
      .unwrap();
  let mut failures = Vec::new();
  let (mut max_dt, mut max_dp) = (0f64, 0f64);
  for run in refs["runs"].as_array().unwrap() {
    let audio = build_audio(&run["audio"]);
    let mut opts = TranscribeOptions {
      temperatures: vec![0.0],
      ..TranscribeOptions::default()
    };
    if let Some(c) = run.get("clip_timestamps").and_then(Value::as_str) {
      opts.clip_timestamps = parse_clip_timestamps(c).unwrap();
    }
    opts.word_timestamps = run
      .get("word_timestamps")
      .and_then(Value::as_bool)
      .unwrap_or(false);
    opts.hallucination_silence_threshold = run
      .get("hallucination_silence_threshold")
      .and_then(Value::as_f64)
      .map(|v| v as f32);
    let name = format!(
      "clips={:?} threshold={:?}",
      opts.clip_timestamps, opts.hallucination_silence_threshold
    );
    let got = model.transcribe(&audio, &opts).unwrap();
    let want = run["segments"].as_array().unwrap();
    let gt: Vec<&str> = got.segments.iter().map(|s| s.text.as_str()).collect();
    let wt: Vec<&str> = want.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert_eq!(gt, wt, "{name}: segment texts");
    for (i, (g, w)) in got.segments.iter().zip(want).enumerate() {
      let toks: Vec<u32> = w["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
      assert_eq!(g.tokens, toks, "{name} segment {i}: tokens");
      assert_eq!(
        g.seek as u64,
        w["seek"].as_u64().unwrap(),
        "{name} segment {i}: seek"
      );
      let d = (g.start - w["start"].as_f64().unwrap())
        .abs()
        .max((g.end - w["end"].as_f64().unwrap()).abs());
      max_dt = max_dt.max(d);
      if d > 0.02 + 1e-9 {
        failures.push(format!(
          "{name} segment {i}: [{}, {}] vs [{}, {}]",
          g.start, g.end, w["start"], w["end"]
        ));
      }
      match (&g.words, w["words"].as_array()) {
        (None, None) => {}
        (Some(gw), Some(ww)) => {
          let gs: Vec<&str> = gw.iter().map(|x| x.word.as_str()).collect();
          let ws: Vec<&str> = ww.iter().map(|x| x["word"].as_str().unwrap()).collect();
          assert_eq!(gs, ws, "{name} segment {i}: words");
          for (a, b) in gw.iter().zip(ww) {
            let d = (a.start - b["start"].as_f64().unwrap())
              .abs()
              .max((a.end - b["end"].as_f64().unwrap()).abs());
            let dp = (f64::from(a.probability) - b["probability"].as_f64().unwrap()).abs();
            max_dt = max_dt.max(d);
            max_dp = max_dp.max(dp);
            if d > 0.02 + 1e-9 || dp > 2e-3 {
              failures.push(format!(
                "{name} {:?}: [{}, {}] p={}",
                a.word, a.start, a.end, a.probability
              ));
            }
          }
        }
        (g, w) => panic!("{name} segment {i}: words {g:?} vs {w:?}"),
      }
    }
  }
  eprintln!("max time diff {max_dt:.3} s, max word probability diff {max_dp:.2e}");
  assert!(failures.is_empty(), "{}", failures.join("\n"));
  // The threshold run differs from the run without it (the reference
  // really exercises the option).
  let runs = refs["runs"].as_array().unwrap();
  let n = |i: usize| runs[i]["segments"].as_array().unwrap().len();
  assert!(
    n(4) < n(3),
    "the threshold removed no segment in the reference"
  );
}

#[test]
fn bad_clip_and_threshold_options_are_clear_errors() {
  for (s, want) in [
    ("0,abc", "\"abc\" is not a number"),
    ("-1", "must be a finite number"),
    ("inf", "must be a finite number"),
  ] {
    let e = parse_clip_timestamps(s).unwrap_err().to_string();
    assert!(e.contains(want), "{s}: {e}");
  }
  assert_eq!(parse_clip_timestamps("").unwrap(), Vec::<f64>::new());
  assert_eq!(parse_clip_timestamps(" 0, 5.5 ").unwrap(), vec![0.0, 5.5]);

  let model = Whisper::load(common::tiny_en()).unwrap();
  let audio = Audio::from_samples_16k(vec![0.0; 1600]);
  let cases = [
    (
      TranscribeOptions {
        hallucination_silence_threshold: Some(2.0),
        ..TranscribeOptions::default()
      },
      "needs word_timestamps",
    ),
    (
      TranscribeOptions {
        hallucination_silence_threshold: Some(-1.0),
        word_timestamps: true,
        ..TranscribeOptions::default()
      },
      "must be a finite number",
    ),
    (
      TranscribeOptions {
        clip_timestamps: vec![0.0, 1.0],
        vad_filter: Some(Default::default()),
        ..TranscribeOptions::default()
      },
      "cannot be combined",
    ),
    (
      TranscribeOptions {
        clip_timestamps: vec![f64::NAN],
        ..TranscribeOptions::default()
      },
      "must be a finite number",
    ),
  ];
  for (o, want) in cases {
    let e = model.transcribe(&audio, &o).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
  }
}
