//! A prompt cache saved to a file (mlx-lm's safetensors layout) and loaded
//! back continues generation exactly as if the whole prompt had been given
//! at once.

mod common;

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype};
use mlxrs_lm::{StepConfig, TokenGenerator, load_model_dir};

#[test]
fn saved_prompt_cache_continues_identically() {
  let r = common::reference("qwen3");
  let prompt: Vec<i32> = r["prompt_ids"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_i64().unwrap() as i32)
    .collect();
  let (a, b) = prompt.split_at(40);
  let (model, _) = load_model_dir(&common::fixture("qwen3"), Some(Dtype::Float32)).unwrap();
  let cfg = StepConfig {
    max_tokens: 12,
    ..StepConfig::default()
  };

  let whole: Vec<i32> = TokenGenerator::new(model.as_ref(), &prompt, &cfg, None)
    .unwrap()
    .map(|s| s.unwrap().token)
    .collect();

  let mut caches = model.make_caches(None);
  model
    .hidden(
      &Array::from_slice(a, &[1, a.len() as i32]).unwrap(),
      &mut caches,
    )
    .unwrap();
  let f = std::env::temp_dir().join(format!("mlxrs-lm-pc-{}.safetensors", std::process::id()));
  mlxrs_nn::save_kv_caches(&f, &caches, &HashMap::new()).unwrap();
  let (loaded, _) = mlxrs_nn::load_kv_caches(&f).unwrap();
  assert_eq!(loaded[0].offset, a.len() as i32);
  let cont: Vec<i32> = TokenGenerator::new(model.as_ref(), b, &cfg, Some(loaded))
    .unwrap()
    .map(|s| s.unwrap().token)
    .collect();
  assert_eq!(cont, whole);
  // A corrupt cache file is an error.
  std::fs::write(&f, b"not a cache").unwrap();
  assert!(mlxrs_nn::load_kv_caches(&f).is_err());
}
