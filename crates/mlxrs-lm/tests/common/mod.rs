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
  reference_file(name, "reference.json")
}

/// One of a fixture's reference files (`reference_batch.json`, ...).
pub fn reference_file(name: &str, file: &str) -> Value {
  let p = fixture(name).join(file);
  serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// A fixture loaded in float32 with its tokenizer.
pub fn loaded(name: &str) -> mlxrs_lm::LoadedModel {
  mlxrs_lm::load(
    fixture(name).to_str().unwrap(),
    &mlxrs_lm::LoadOptions {
      dtype: Some(Dtype::Float32),
      no_tokenizer: false,
    },
  )
  .unwrap()
}

/// A JSON array of integers.
pub fn ints(v: &Value) -> Vec<i32> {
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

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
  a.iter()
    .zip(b)
    .map(|(g, w)| (g - w).abs())
    .fold(0f32, f32::max)
}

/// The reference last-position logits again, with the model's caches made
/// for `max_kv_size` (rotating where it is larger than the prompt).
pub fn check_rotating(name: &str, max_kv_size: i32, tol: f32) {
  let r = reference(name);
  let (model, _) = load_model_dir(&fixture(name), Some(Dtype::Float32)).unwrap();
  let prompt = ints(&r["prompt_ids"]);
  let want: Vec<f32> = r["logits_last"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_f64().unwrap() as f32)
    .collect();
  let mut caches = model.make_caches(Some(max_kv_size));
  let x = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
  let all = model
    .forward(&x, &mut caches)
    .unwrap()
    .to_vec::<f32>()
    .unwrap();
  let d = max_abs_diff(&all[all.len() - want.len()..], &want);
  assert!(
    d <= tol,
    "{name}: max |logit diff| {d} with rotating caches"
  );
}

/// A left-padded batch (`hidden_padded`, standard caches) of the reference
/// prompt and the same prompt without its last 5 tokens: row 0's last
/// position gives the reference logits, row 1's the logits of a single
/// forward over the short prompt.
pub fn check_padded(name: &str, tol: f32) {
  let r = reference(name);
  let (model, _) = load_model_dir(&fixture(name), Some(Dtype::Float32)).unwrap();
  let prompt = ints(&r["prompt_ids"]);
  let want: Vec<f32> = r["logits_last"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_f64().unwrap() as f32)
    .collect();
  let (n, pad) = (prompt.len(), 5usize);
  let short = &prompt[..n - pad];
  let mut rows = prompt.clone();
  rows.extend(std::iter::repeat_n(0, pad));
  rows.extend_from_slice(short);
  let x = Array::from_slice(&rows, &[2, n as i32]).unwrap();
  let key_valid = vec![vec![true; n], (0..n).map(|j| j >= pad).collect()];
  let mut caches: Vec<mlxrs_nn::KvCache> = (0..model.make_caches(None).len())
    .map(|_| mlxrs_nn::KvCache::standard())
    .collect();
  let h = model.hidden_padded(&x, &mut caches, &key_valid).unwrap();
  let all = model.logits(&h).unwrap().to_vec::<f32>().unwrap();
  let v = want.len();
  let row0 = &all[(n - 1) * v..n * v];
  let row1 = &all[(2 * n - 1) * v..2 * n * v];
  let d0 = max_abs_diff(row0, &want);
  assert!(
    d0 <= tol,
    "{name}: padded batch row 0 max |logit diff| {d0}"
  );
  let mut c = model.make_caches(None);
  let xs = Array::from_slice(short, &[1, short.len() as i32]).unwrap();
  let single = model.forward(&xs, &mut c).unwrap().to_vec::<f32>().unwrap();
  let d1 = max_abs_diff(row1, &single[single.len() - v..]);
  assert!(
    d1 <= tol,
    "{name}: padded batch row 1 max |logit diff| {d1}"
  );
}
