//! Language detection and the translate task on a tiny random multilingual
//! (51865-token) `WhisperForConditionalGeneration` against transformers 5.24
//! and faster-whisper's logic (`scripts/make_whisper_refs.py multi`):
//! - language probabilities = softmax over the language tokens of the logits
//!   after `<|startoftranscript|>` (CTranslate2 `detect_language`), within
//!   1e-4, on the reference's own log-mel input;
//! - the same through `Whisper::detect_language(audio)` / `transcribe`
//!   (mlxrs's log-mel, 2.5e-5 from python's): same language, probability
//!   within 1e-3;
//! - sot sequences equal faster-whisper `Tokenizer(...).sot_sequence` for
//!   transcribe / translate x en / fr / de; the translate prompt's last
//!   logits within 1e-4 (relative to the largest) of transformers'.

mod common;

use mlxrs_audio::transcribe::Task;
use mlxrs_audio::{TranscribeOptions, Whisper, load_audio};
use mlxrs_core::Array;

fn ints(path: &std::path::Path, name: &str) -> Vec<u32> {
  let (v, _) = common::tensor(path, name);
  v.into_iter().map(|x| x as u32).collect()
}

#[test]
fn detect_language_and_translate_match_reference() {
  let dir = common::data().join("tiny-multi");
  let refp = dir.join("reference.safetensors");
  let w = Whisper::load(&dir).unwrap();
  assert!(w.config().is_multilingual());
  assert_eq!(w.config().alignment_heads, vec![(1, 0), (1, 1), (0, 1)]);
  let sp = w.tokenizer.as_ref().unwrap().special.clone();
  assert_eq!(sp.languages.len(), 99);

  // Language probabilities on python's features (committed without the
  // zero padding to 3000 frames, which encode_window adds as python did).
  let (feats, fs) = common::tensor(&refp, "input_features");
  let f = Array::from_slice(&feats, &[fs[0] as i32, fs[1] as i32]).unwrap();
  let xa = w.encode_window(&f, 0, fs[1]).unwrap();
  let got = w.detect_language_encoded(&xa).unwrap();
  let lang_ids = ints(&refp, "lang_ids");
  let (want, _) = common::tensor(&refp, "lang_probs");
  let mut max_d = 0f32;
  for (id, p) in lang_ids.iter().zip(&want) {
    let code = &sp.languages.iter().find(|(_, i)| i == id).unwrap().0;
    let g = got.iter().find(|(c, _)| c == code).unwrap().1;
    max_d = max_d.max((g - p).abs());
  }
  let best = want
    .iter()
    .enumerate()
    .max_by(|a, b| a.1.total_cmp(b.1))
    .unwrap();
  let best_code = sp
    .languages
    .iter()
    .find(|(_, i)| *i == lang_ids[best.0])
    .unwrap()
    .0
    .clone();
  eprintln!(
    "detect_language: max prob diff {max_d:e}; top {:?} (python {best_code} {})",
    got[0], best.1
  );
  assert!(max_d < 1e-4, "language probabilities differ by {max_d}");
  assert_eq!(got[0].0, best_code);

  // End to end from audio (mlxrs's own log-mel).
  let audio = load_audio(common::data().join("audio/sentences.wav")).unwrap();
  let det = w.detect_language(&audio).unwrap();
  assert_eq!(det[0].0, best_code);
  assert!(
    (det[0].1 - best.1).abs() < 1e-3,
    "{:?} vs {}",
    det[0],
    best.1
  );

  // sot sequences.
  for task in ["transcribe", "translate"] {
    for lang in ["en", "fr", "de"] {
      let want = ints(&refp, &format!("sot_{task}_{lang}"));
      let got = w.sot_sequence(lang, task.parse().unwrap()).unwrap();
      assert_eq!(got, want, "sot sequence {task}/{lang}");
    }
  }

  // The translate prompt through the decoder.
  let prompt = ints(&refp, "translate_prompt");
  let (want_logits, ls) = common::tensor(&refp, "translate_logits");
  let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
  let ids = Array::from_slice(&ids, &[1, ids.len() as i32]).unwrap();
  let mut st = w.model.decoder_state(&xa).unwrap();
  let logits = w.model.decode(&ids, &mut st).unwrap();
  let n = prompt.len() as i32;
  let mut last =
    mlxrs_core::ops::slice(&logits, &[0, n - 1, 0], &[1, n, ls[1] as i32], &[1, 1, 1]).unwrap();
  assert_eq!(ls[0], 1);
  let got_logits = last.to_vec::<f32>().unwrap();
  let scale = want_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
  let d = common::max_diff(&got_logits, &want_logits);
  eprintln!("translate prompt logits: max diff {d:e} (max |logit| {scale})");
  assert!(d < 1e-4 * scale.max(1.0), "translate logits differ by {d}");

  // transcribe(): detection inside, and the translate task runs.
  let opts = TranscribeOptions {
    temperatures: vec![0.0],
    max_new_tokens: Some(8),
    ..TranscribeOptions::default()
  };
  let t = w.transcribe(&audio, &opts).unwrap();
  assert_eq!(t.language, best_code);
  assert!((t.language_probability - best.1).abs() < 1e-3);
  let opts = TranscribeOptions {
    language: Some("fr".into()),
    task: Task::Translate,
    ..opts
  };
  let t = w.transcribe(&audio, &opts).unwrap();
  assert_eq!(t.language, "fr");
  assert_eq!(t.language_probability, 1.0);
}
