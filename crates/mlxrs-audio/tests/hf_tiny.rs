//! Tiny random Hugging Face Whisper checkpoints (80 and 128 mel bins, made
//! with transformers by scripts/make_whisper_refs.py) against transformers'
//! encoder output and decoder logits.

mod common;

use mlxrs_audio::Whisper;
use mlxrs_audio::whisper::ModelFormat;
use mlxrs_core::{Array, ops};

#[test]
fn tiny_checkpoints_match_transformers() {
  for n_mels in [80, 128] {
    let dir = common::data().join(format!("tiny-hf-{n_mels}"));
    let w = Whisper::load(&dir).unwrap();
    assert_eq!(w.format, ModelFormat::HuggingFace);
    let c = w.config();
    assert_eq!(
      (c.n_mels, c.n_audio_ctx, c.n_text_ctx, c.n_vocab),
      (n_mels, 50, 40, 320)
    );
    assert_eq!(c.suppress_tokens, vec![5, 6]);
    assert_eq!(c.begin_suppress_tokens, vec![7, 2]);
    let refs = dir.join("reference.safetensors");
    let (feats, fs) = common::tensor(&refs, "input_features");
    let x = Array::from_slice(&feats, &[1, fs[1] as i32, fs[2] as i32]).unwrap();
    let x = ops::transpose_axes(&x, &[0, 2, 1]).unwrap();
    let mut enc = w.model.encode(&x).unwrap();
    let (want_enc, _) = common::tensor(&refs, "encoder_last_hidden_state");
    let d_enc = common::max_diff(&enc.to_vec::<f32>().unwrap(), &want_enc);

    let (m, _) = mlxrs_core::io::load_safetensors(&refs).unwrap();
    let ids = m["decoder_input_ids"].clone();
    let mut st = w.model.decoder_state(&enc).unwrap();
    let mut logits = w.model.decode(&ids, &mut st).unwrap();
    let (want, _) = common::tensor(&refs, "logits");
    let d_all = common::max_diff(&logits.to_vec::<f32>().unwrap(), &want);

    // Token by token through the cache gives the same logits.
    let n = ids.dim(1).unwrap();
    let mut st = w.model.decoder_state(&enc).unwrap();
    let mut steps = Vec::new();
    for i in 0..n {
      let t = ops::slice(&ids, &[0, i], &[1, i + 1], &[1, 1]).unwrap();
      steps.push(w.model.decode(&t, &mut st).unwrap());
    }
    let mut inc = ops::concatenate_axis(&steps, 1).unwrap();
    let d_inc = common::max_diff(&inc.to_vec::<f32>().unwrap(), &want);
    eprintln!(
      "tiny-hf-{n_mels}: encoder max |diff| {d_enc:e}, logits {d_all:e}, incremental {d_inc:e}"
    );
    assert!(d_enc < 1e-4 && d_all < 1e-4 && d_inc < 1e-4);
  }
}

#[test]
fn bad_folders_and_inputs_are_errors() {
  let tmp = tempfile::tempdir().unwrap();
  let e = Whisper::load(tmp.path()).err().unwrap().to_string();
  assert!(e.contains("no model.bin"), "{e}");
  assert!(Whisper::load(tmp.path().join("nope")).is_err());
  // A truncated model.bin.
  std::fs::write(tmp.path().join("model.bin"), [6u8, 0, 0, 0, 12, 0]).unwrap();
  let e = Whisper::load(tmp.path()).err().unwrap().to_string();
  assert!(e.contains("truncated"), "{e}");
  // A config that does not match the weights.
  let t2 = tempfile::tempdir().unwrap();
  let src = common::data().join("tiny-hf-80");
  std::fs::copy(
    src.join("model.safetensors"),
    t2.path().join("model.safetensors"),
  )
  .unwrap();
  let cfg = std::fs::read_to_string(src.join("config.json"))
    .unwrap()
    .replace("\"d_model\": 32", "\"d_model\": 48");
  std::fs::write(t2.path().join("config.json"), cfg).unwrap();
  let e = Whisper::load(t2.path()).err().unwrap().to_string();
  assert!(e.contains("shape"), "{e}");
  // Wrong mel bins into the encoder.
  let w = Whisper::load(&src).unwrap();
  let x = Array::zeros(&[1, 100, 64], mlxrs_core::Dtype::Float32).unwrap();
  assert!(w.model.encode(&x).is_err());
  // Transcribing needs a tokenizer.
  let a = mlxrs_audio::Audio::from_samples_16k(vec![0.0; 1600]);
  let e = w
    .transcribe(&a, &Default::default())
    .err()
    .unwrap()
    .to_string();
  assert!(e.contains("tokenizer"), "{e}");
}
