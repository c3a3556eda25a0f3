//! `--kv-bits`: generation with an 8-bit quantized KV cache from the first
//! token (quantized_kv_start 0) equals mlx-lm's `generate_step(kv_bits=8,
//! kv_group_size=32, quantized_kv_start=0)` on the tiny Qwen3 fixture
//! (reference: scripts/make_kv_quant_ref.py).

mod common;

use mlxrs_core::Dtype;
use mlxrs_lm::{StepConfig, TokenGenerator, load_model_dir};

#[test]
fn quantized_kv_cache_matches_mlx_lm() {
  let r = common::reference("qwen3");
  let kv: serde_json::Value = serde_json::from_str(
    &std::fs::read_to_string(common::fixture("qwen3").join("reference_kv8.json")).unwrap(),
  )
  .unwrap();
  let prompt: Vec<i32> = r["prompt_ids"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_i64().unwrap() as i32)
    .collect();
  let want: Vec<i32> = kv["greedy_tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_i64().unwrap() as i32)
    .collect();
  let (model, _) = load_model_dir(&common::fixture("qwen3"), Some(Dtype::Float32)).unwrap();
  let cfg = StepConfig {
    max_tokens: 20,
    kv_bits: Some(8),
    kv_group_size: 32,
    quantized_kv_start: 0,
    ..StepConfig::default()
  };
  let mut g = TokenGenerator::new(model.as_ref(), &prompt, &cfg, None).unwrap();
  let got: Vec<i32> = (&mut g).map(|s| s.unwrap().token).collect();
  assert_eq!(got, want);
  assert!(
    g.caches().iter().all(|c| c.is_quantized()),
    "caches were not quantized"
  );
  // Bit widths MLX's quantize lacks (it has 2, 3, 4, 5, 6, 8) and group
  // sizes other than 32 / 64 / 128 are an error naming the setting.
  for (bits, group, needle) in [(7, 64, "kv_bits 7"), (4, 16, "kv_group_size 16")] {
    let bad = StepConfig {
      kv_bits: Some(bits),
      kv_group_size: group,
      ..cfg.clone()
    };
    let e = TokenGenerator::new(model.as_ref(), &prompt, &bad, None)
      .err()
      .expect("an error")
      .to_string();
    assert!(e.contains(needle), "{e}");
  }
}
