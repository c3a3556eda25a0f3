//! Prompt caches written by Python mlx-lm (`save_prompt_cache` after a
//! prompt, for the tiny fixtures in models/tiny) load into mlxrs caches, and
//! greedy generation continued from them matches mlx-lm's continuation
//! (references by `scripts/make_nn_refs.py`).

use mlxrs_core::{Array, Dtype};
use mlxrs_lm::load_model_dir;
use mlxrs_nn::*;
use serde_json::Value;

fn path(p: &str) -> std::path::PathBuf {
  std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn continue_from_python_cache(name: &str, tol: f32) {
  let refs: Value =
    serde_json::from_str(&std::fs::read_to_string(path("tests/data/prompt_cache.json")).unwrap())
      .unwrap();
  let r = &refs[name];
  let fixture = r["fixture"].as_str().unwrap();
  let (model, _) = load_model_dir(
    &path("../../models/tiny").join(fixture),
    Some(Dtype::Float32),
  )
  .unwrap();
  let file = path(&format!("tests/data/prompt_cache_{name}.safetensors"));
  let (mut caches, meta) = load_kv_caches(&file).unwrap();
  assert_eq!(meta.get("fixture").map(String::as_str), Some(fixture));
  let classes: Vec<&str> = caches.iter().map(|c| c.class_name()).collect();
  let want_classes: Vec<&str> = r["classes"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_str().unwrap())
    .collect();
  assert_eq!(classes, want_classes);
  let prompt_len = r["prompt"].as_array().unwrap().len() as i32;
  assert!(caches.iter().all(|c| c.offset == prompt_len));

  let want: Vec<i32> = r["continuation"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_i64().unwrap() as i32)
    .collect();
  let want_logits: Vec<f32> = r["first_step_logits"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_f64().unwrap() as f32)
    .collect();
  let mut tok = r["first_token"].as_i64().unwrap() as i32;
  let mut got = Vec::new();
  let mut max_diff = 0.0f32;
  for i in 0..want.len() {
    let x = Array::from_slice(&[tok], &[1, 1]).unwrap();
    let mut logits = model.forward(&x, &mut caches).unwrap();
    let v = logits.to_vec::<f32>().unwrap();
    if i == 0 {
      max_diff = v
        .iter()
        .zip(&want_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    }
    tok = v
      .iter()
      .enumerate()
      .fold((0, f32::MIN), |b, (j, &x)| if x > b.1 { (j, x) } else { b })
      .0 as i32;
    got.push(tok);
  }
  eprintln!(
    "{name}: caches {classes:?} from mlx-lm; first-step max |logit diff| {max_diff:.2e}; {} greedy tokens {}",
    want.len(),
    if got == want { "equal" } else { "DIFFER" }
  );
  assert!(
    max_diff <= tol,
    "{name}: first continuation step max |logit diff| {max_diff} > {tol}"
  );
  assert_eq!(got, want, "{name}: greedy continuation");

  // Saving from mlxrs and loading again continues identically too.
  let (mut c2, _) = load_kv_caches(&file).unwrap();
  let tmp = std::env::temp_dir().join(format!(
    "mlxrs-nn-{name}-{}.safetensors",
    std::process::id()
  ));
  save_kv_caches(&tmp, &c2, &meta).unwrap();
  let (mut c3, m3) = load_kv_caches(&tmp).unwrap();
  std::fs::remove_file(&tmp).ok();
  assert_eq!(m3, meta);
  let x = Array::from_slice(&[r["first_token"].as_i64().unwrap() as i32], &[1, 1]).unwrap();
  let mut a = model.forward(&x, &mut c2).unwrap();
  let mut b = model.forward(&x, &mut c3).unwrap();
  assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
}

#[test]
fn llama_kv_cache_from_mlx_lm() {
  continue_from_python_cache("llama", 1e-4);
}

#[test]
fn llama_rotating_cache_from_mlx_lm() {
  continue_from_python_cache("llama_rotating", 1e-4);
}

#[test]
fn qwen3_quantized_cache_from_mlx_lm() {
  // mlx-lm attends with quantized matmuls, mlxrs-lm's qwen3 over the
  // dequantized cache: the same numbers up to float rounding.
  continue_from_python_cache("qwen3_q8", 1e-3);
}
