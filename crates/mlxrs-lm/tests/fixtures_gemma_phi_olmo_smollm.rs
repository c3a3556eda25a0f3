//! Gemma / Gemma 2 / Gemma 3 (text) / Phi-3 / OLMo 2 / SmolLM3 (float32 and 4-bit)
//! against mlx-lm 0.32.2 on the same checkpoints.
//!
//! Tolerance: |logit diff| <= 1e-4 in float32 for every architecture (the
//! references' max |logit| is 5..12). The gemma3_text prompt is longer than
//! its 16-position sliding window, so its greedy tokens exercise rotating-
//! cache decoding past the window.

mod common;

#[test]
fn gemma() {
  common::check_fixture("gemma", 1e-4);
}
#[test]
fn gemma_4bit() {
  common::check_fixture("gemma-4bit", 1e-4);
}
#[test]
fn gemma2() {
  common::check_fixture("gemma2", 1e-4);
}
#[test]
fn gemma2_4bit() {
  common::check_fixture("gemma2-4bit", 1e-4);
}
#[test]
fn gemma3_text() {
  common::check_fixture("gemma3_text", 1e-4);
}
#[test]
fn gemma3_text_4bit() {
  common::check_fixture("gemma3_text-4bit", 1e-4);
}
#[test]
fn phi3() {
  common::check_fixture("phi3", 1e-4);
}
#[test]
fn phi3_4bit() {
  common::check_fixture("phi3-4bit", 1e-4);
}
#[test]
fn olmo2() {
  common::check_fixture("olmo2", 1e-4);
}
#[test]
fn olmo2_4bit() {
  common::check_fixture("olmo2-4bit", 1e-4);
}
#[test]
fn smollm3() {
  common::check_fixture("smollm3", 1e-4);
}
#[test]
fn smollm3_4bit() {
  common::check_fixture("smollm3-4bit", 1e-4);
}

/// With `max_kv_size` larger than the prompt, rotating caches (or, for
/// gemma3_text, its own cache layout, which ignores `max_kv_size`) give the
/// reference logits too; gemma2's explicit-mask attention takes its
/// rotating-cache path here.
#[test]
fn rotating_caches_match_reference() {
  use mlxrs_core::{Array, Dtype};
  for name in ["gemma2", "gemma3_text", "phi3", "olmo2", "smollm3"] {
    let r = common::reference(name);
    let (model, _) =
      mlxrs_lm::load_model_dir(&common::fixture(name), Some(Dtype::Float32)).unwrap();
    let prompt: Vec<i32> = r["prompt_ids"]
      .as_array()
      .unwrap()
      .iter()
      .map(|x| x.as_i64().unwrap() as i32)
      .collect();
    let want: Vec<f32> = r["logits_last"]
      .as_array()
      .unwrap()
      .iter()
      .map(|x| x.as_f64().unwrap() as f32)
      .collect();
    let mut caches = model.make_caches(Some(1024));
    let x = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
    let all = model
      .forward(&x, &mut caches)
      .unwrap()
      .to_vec::<f32>()
      .unwrap();
    let last = &all[all.len() - want.len()..];
    let max_diff = last
      .iter()
      .zip(&want)
      .map(|(g, w)| (g - w).abs())
      .fold(0.0f32, f32::max);
    assert!(
      max_diff <= 1e-4,
      "{name}: max |logit diff| {max_diff} with rotating caches"
    );
  }
}
