//! Shared test helpers: the tiny fixtures under `models/tiny` and their
//! mlx-lm references (made by `scripts/make_lm_fixtures.py`).
#![allow(dead_code)]

use std::path::PathBuf;

use mlxrs_core::{Array, Dtype};
use mlxrs_lm::{StepConfig, TokenGenerator, load_model_dir};
use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("../../models/tiny")
    .join(name)
}

pub fn reference(name: &str) -> Value {
  let p = fixture(name).join("reference.json");
  serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ints(v: &Value) -> Vec<i32> {
  v.as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_i64().unwrap() as i32)
    .collect()
}

/// Checks one fixture against its reference: the last-position logits of a
/// forward pass over `prompt_ids` within `tol` (absolute, float32), and the
/// 20 greedy tokens of cached decoding exactly.
pub fn check_fixture(name: &str, tol: f32) {
  let r = reference(name);
  let (model, _cfg) = load_model_dir(&fixture(name), Some(Dtype::Float32)).unwrap();
  let prompt = ints(&r["prompt_ids"]);
  let want: Vec<f32> = r["logits_last"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_f64().unwrap() as f32)
    .collect();

  let mut caches = model.make_caches(None);
  let x = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
  let mut logits = model.forward(&x, &mut caches).unwrap();
  let s = logits.shape();
  assert_eq!(
    s,
    vec![1, prompt.len() as i32, want.len() as i32],
    "{name}: logits shape"
  );
  let all = logits.to_vec::<f32>().unwrap();
  let last = &all[all.len() - want.len()..];
  let mut max_diff = 0.0f32;
  for (g, w) in last.iter().zip(&want) {
    max_diff = max_diff.max((g - w).abs());
  }
  assert!(
    max_diff <= tol,
    "{name}: max |logit diff| {max_diff} > {tol}"
  );

  let cfg = StepConfig {
    max_tokens: 20,
    ..StepConfig::default()
  };
  let got: Vec<i32> = TokenGenerator::new(model.as_ref(), &prompt, &cfg, None)
    .unwrap()
    .map(|s| s.unwrap().token)
    .collect();
  assert_eq!(got, ints(&r["greedy_tokens"]), "{name}: greedy tokens");
  eprintln!("{name}: max |logit diff| {max_diff:.2e} (tol {tol:.0e}), 20 greedy tokens equal");

  // The input-embeddings entry (what a VLM's text side uses): prefilling
  // from `embed_tokens` gives mlx-lm's logits and greedy tokens too.
  if let Ok(e) = model.embed_tokens(&x) {
    let mut caches = model.make_caches(None);
    let h = model.hidden_from_embeddings(&e, &mut caches, None).unwrap();
    let mut l = model.logits(&h).unwrap();
    let all = l.to_vec::<f32>().unwrap();
    let last = &all[all.len() - want.len()..];
    let d = last
      .iter()
      .zip(&want)
      .map(|(g, w)| (g - w).abs())
      .fold(0f32, f32::max);
    assert!(
      d <= tol,
      "{name}: embeddings path max |logit diff| {d} > {tol}"
    );
    let pe = mlxrs_lm::PromptEmbeddings::causal(e);
    let got: Vec<i32> =
      TokenGenerator::with_embeddings(model.as_ref(), &prompt, Some(&pe), &cfg, None)
        .unwrap()
        .map(|s| s.unwrap().token)
        .collect();
    assert_eq!(
      got,
      ints(&r["greedy_tokens"]),
      "{name}: embeddings path greedy tokens"
    );
  }
}
