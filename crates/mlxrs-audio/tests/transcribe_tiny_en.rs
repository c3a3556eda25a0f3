//! Whisper tiny.en (real weights, CTranslate2 format) against
//! faster-whisper's greedy transcripts of the committed espeak-ng clips
//! (`scripts/make_whisper_refs.py`): tokens and segment timestamps must be
//! equal (greedy runs, and one beam_size=5 run), with the decoding rules
//! applied on the device and, separately, on the host
//! (`TranscribeOptions::rules_on_device`).

mod common;

use mlxrs_audio::{TranscribeOptions, Whisper, load_audio};
use serde_json::Value;

fn options(v: &Value, on_device: bool) -> TranscribeOptions {
  let mut o = TranscribeOptions {
    beam_size: 1,
    temperatures: vec![0.0],
    rules_on_device: Some(on_device),
    ..TranscribeOptions::default()
  };
  if let Some(b) = v.get("condition_on_previous_text").and_then(Value::as_bool) {
    o.condition_on_previous_text = b;
  }
  if let Some(b) = v.get("without_timestamps").and_then(Value::as_bool) {
    o.without_timestamps = b;
  }
  if let Some(b) = v.get("beam_size").and_then(Value::as_u64) {
    o.beam_size = b as usize;
  }
  if let Some(p) = v.get("initial_prompt").and_then(Value::as_str) {
    o.initial_prompt = Some(p.to_string());
  }
  o
}

#[test]
fn greedy_matches_faster_whisper() {
  check_against_reference(true);
}

#[test]
fn greedy_matches_faster_whisper_host_rules() {
  check_against_reference(false);
}

fn check_against_reference(on_device: bool) {
  let model = Whisper::load(common::tiny_en()).unwrap();
  let refs: Value = serde_json::from_str(
    &std::fs::read_to_string(common::data().join("transcripts.json")).unwrap(),
  )
  .unwrap();
  let mut total_tokens = 0;
  let mut matched_tokens = 0;
  let mut max_ts_diff = 0f64;
  let mut failures = Vec::new();
  for run in refs["runs"].as_array().unwrap() {
    let clip = run["clip"].as_str().unwrap();
    let variant = run["variant"].as_str().unwrap();
    let audio = load_audio(common::data().join(format!("audio/{clip}.wav"))).unwrap();
    let t0 = std::time::Instant::now();
    let got = model
      .transcribe(&audio, &options(&run["options"], on_device))
      .unwrap();
    let want = run["segments"].as_array().unwrap();
    eprintln!(
      "{clip}/{variant}: {} segments (want {}), {:.2} s for {:.2} s of audio",
      got.segments.len(),
      want.len(),
      t0.elapsed().as_secs_f64(),
      audio.duration()
    );
    for (i, w) in want.iter().enumerate() {
      let wt: Vec<u32> = w["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
      total_tokens += wt.len();
      let Some(g) = got.segments.get(i) else {
        failures.push(format!("{clip}/{variant}: segment {i} missing"));
        continue;
      };
      matched_tokens += wt.iter().zip(&g.tokens).take_while(|(a, b)| a == b).count();
      if g.tokens != wt {
        failures.push(format!(
          "{clip}/{variant} segment {i}: tokens\n  got  {:?}\n  want {wt:?}",
          g.tokens
        ));
      }
      let (ws, we) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
      let d = (g.start - ws).abs().max((g.end - we).abs());
      max_ts_diff = max_ts_diff.max(d);
      if d > 1e-9 {
        failures.push(format!(
          "{clip}/{variant} segment {i}: [{}, {}] vs [{ws}, {we}]",
          g.start, g.end
        ));
      }
      assert_eq!(
        g.text,
        w["text"].as_str().unwrap(),
        "{clip}/{variant} segment {i} text"
      );
      assert_eq!(
        g.seek as u64,
        w["seek"].as_u64().unwrap(),
        "{clip}/{variant} segment {i} seek"
      );
      let lp = (g.avg_logprob - w["avg_logprob"].as_f64().unwrap()).abs();
      let ns = (f64::from(g.no_speech_prob) - w["no_speech_prob"].as_f64().unwrap()).abs();
      assert!(
        lp < 2e-3 && ns < 2e-3,
        "{clip}/{variant} segment {i}: avg_logprob diff {lp}, no_speech_prob diff {ns}"
      );
    }
    if got.segments.len() != want.len() {
      failures.push(format!(
        "{clip}/{variant}: {} segments, want {}",
        got.segments.len(),
        want.len()
      ));
    }
  }
  eprintln!(
    "rules on the {}: tokens matched: {matched_tokens}/{total_tokens}; max timestamp diff {max_ts_diff:e} s",
    if on_device { "device" } else { "host" }
  );
  assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn suppress_list_matches_faster_whisper() {
  let model = Whisper::load(common::tiny_en()).unwrap();
  let refs: Value = serde_json::from_str(
    &std::fs::read_to_string(common::data().join("transcripts.json")).unwrap(),
  )
  .unwrap();
  let want: Vec<u32> = refs["suppress_tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_u64().unwrap() as u32)
    .collect();
  assert_eq!(model.suppressed_tokens(&[-1]).unwrap(), want);
  let ns: Vec<u32> = refs["non_speech_tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_u64().unwrap() as u32)
    .collect();
  assert_eq!(
    model
      .tokenizer
      .as_ref()
      .unwrap()
      .non_speech_tokens()
      .unwrap(),
    ns
  );
}
