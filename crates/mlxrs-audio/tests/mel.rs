//! Mel filterbanks and log-mel features against faster-whisper's
//! (`scripts/make_whisper_refs.py` -> tests/data/mel.safetensors).

mod common;

use mlxrs_audio::load_audio;
use mlxrs_audio::mel::{log_mel_spectrogram, mel_filters};

#[test]
fn filterbanks_match_the_reference_to_1e_5() {
  let refs = common::data().join("mel.safetensors");
  for n in [80usize, 128] {
    let (want, shape) = common::tensor(&refs, &format!("filters{n}"));
    assert_eq!(shape, vec![n, 201]);
    let got = mel_filters(n).unwrap();
    let d = common::max_diff(&got, &want);
    eprintln!("filters{n}: max |diff| = {d:e}");
    assert!(d < 1e-5, "filters{n}: max diff {d}");
  }
}

fn check(
  name: &str,
  n_mels: usize,
  samples: &[f32],
  padding: usize,
  frames: Option<usize>,
  tol: f32,
) {
  let refs = common::data().join("mel.safetensors");
  let (want, shape) = common::tensor(&refs, name);
  let mut got = log_mel_spectrogram(samples, n_mels, padding).unwrap();
  if let Some(f) = frames {
    got = mlxrs_core::ops::slice(&got, &[0, 0], &[n_mels as i32, f as i32], &[1, 1]).unwrap();
  }
  assert_eq!(
    got.shape().iter().map(|&d| d as usize).collect::<Vec<_>>(),
    shape,
    "{name} shape"
  );
  let got = got.to_vec::<f32>().unwrap();
  let d = common::max_diff(&got, &want);
  let mean = got
    .iter()
    .zip(&want)
    .map(|(a, b)| (a - b).abs())
    .sum::<f32>()
    / got.len() as f32;
  eprintln!(
    "{name}: max |diff| = {d:e}, mean |diff| = {mean:e} over {} values",
    got.len()
  );
  assert!(d < tol, "{name}: max diff {d}");
}

#[test]
fn log_mel_matches_faster_whisper() {
  let audio = load_audio(common::data().join("audio/sentences.wav")).unwrap();
  check("mel80", 80, &audio.samples, 160, None, 1e-4);
  check("mel128_2s", 128, &audio.samples[..32000], 160, None, 1e-4);
  // openai whisper's padding (30 s of zeros), first 4 s.
  check(
    "mel80_openai_pad_2s",
    80,
    &audio.samples[..32000],
    480_000,
    Some(400),
    1e-4,
  );
}
