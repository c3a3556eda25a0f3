//! Llama / Mistral / Qwen2 / Qwen3 (float32, 4-bit, bf16 weights) against
//! mlx-lm 0.32.2 on the same checkpoints.
//!
//! Tolerance: logits are compared in float32 with |diff| <= 1e-4 (the
//! references' max |logit| is ~10, so this is ~1e-5 relative: summation order
//! differences between MLX's CPU kernels called from Python and from Rust are
//! the same kernels, so diffs are usually exactly 0).

mod common;

#[test]
fn llama() {
  common::check_fixture("llama", 1e-4);
}
#[test]
fn llama_4bit() {
  common::check_fixture("llama-4bit", 1e-4);
}
#[test]
fn llama_bf16_weights() {
  common::check_fixture("llama-bf16", 1e-4);
}
#[test]
fn mistral() {
  common::check_fixture("mistral", 1e-4);
}
#[test]
fn mistral_4bit() {
  common::check_fixture("mistral-4bit", 1e-4);
}
#[test]
fn qwen2() {
  common::check_fixture("qwen2", 1e-4);
}
#[test]
fn qwen2_4bit() {
  common::check_fixture("qwen2-4bit", 1e-4);
}
#[test]
fn qwen3() {
  common::check_fixture("qwen3", 1e-4);
}
#[test]
fn qwen3_4bit() {
  common::check_fixture("qwen3-4bit", 1e-4);
}

/// Loading stacks q/k/v and gate/up into one matmul each (Llama-shaped
/// models and the shared decoder loop: gemma, cohere;
/// `LanguageModel::fuse_projections`). The same checkpoint loaded by hand
/// without stacking gives the same logits (prompt and decode steps: Qwen3's
/// decode normalizes q and k heads in one go) within float32 rounding, the
/// same greedy tokens, and the same parameters.
#[test]
fn stacked_projections_match_separate() {
  use mlxrs_core::{Array, Dtype};
  use mlxrs_lm::config::ModelConfig;
  use mlxrs_lm::tuner::adapters::parameters;
  use mlxrs_nn::{QuantConfig, Weights};
  for name in [
    "llama",
    "qwen3",
    "qwen3-4bit",
    "mistral",
    "gemma-4bit",
    "cohere",
  ] {
    let dir = common::fixture(name);
    let (stacked, _) = mlxrs_lm::load_model_dir(&dir, Some(Dtype::Float32)).unwrap();
    // What `load_model_dir` does, minus `fuse_for_inference`.
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let mut plain = mlxrs_lm::build_model(&cfg.text_config()).unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
      .unwrap()
      .map(|e| e.unwrap().path())
      .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
      .collect();
    let weights = plain
      .sanitize(mlxrs_lm::load::load_weights(&files).unwrap())
      .unwrap();
    let mut w = Weights::new(weights);
    w.dtype = Some(Dtype::Float32);
    w.quant = cfg
      .quantization_config()
      .map(|(_, q)| QuantConfig::from_json(q).unwrap());
    plain.load(&mut w);
    w.finish().unwrap();
    let (ps, pp) = (parameters(stacked.as_ref()), parameters(plain.as_ref()));
    assert_eq!(
      ps.keys().collect::<std::collections::BTreeSet<_>>(),
      pp.keys().collect(),
      "{name}: parameter names"
    );
    let prompt: Vec<i32> = (1..12).collect();
    let x = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
    let run = |m: &dyn mlxrs_lm::LanguageModel| -> (Vec<f32>, Vec<i32>) {
      let mut caches = m.make_caches(None);
      let mut all = m.forward(&x, &mut caches).unwrap().to_vec::<f32>().unwrap();
      // Greedy decode 8 steps (one row: the decode path).
      let v = m.vocab_size() as usize;
      let mut row = all[all.len() - v..].to_vec();
      let mut toks = Vec::new();
      for _ in 0..8 {
        let t = (0..v).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as i32;
        toks.push(t);
        let y = Array::from_slice(&[t], &[1, 1]).unwrap();
        row = m.forward(&y, &mut caches).unwrap().to_vec::<f32>().unwrap();
        // The decode steps' logits are compared too (their own code path).
        all.extend_from_slice(&row);
      }
      (all, toks)
    };
    let (ls, ts) = run(stacked.as_ref());
    let (lp, tp) = run(plain.as_ref());
    let d = common::max_abs_diff(&ls, &lp);
    assert!(
      d <= 1e-4,
      "{name}: stacked vs separate logits differ by {d}"
    );
    assert_eq!(ts, tp, "{name}: greedy tokens");
    for (k, a) in &ps {
      let (mut a, mut b) = (a.clone(), pp[k].clone());
      assert_eq!(a.shape(), b.shape(), "{name}: {k}");
      if a.dtype() == Dtype::Float32 {
        assert_eq!(
          a.to_vec::<f32>().unwrap(),
          b.to_vec::<f32>().unwrap(),
          "{name}: {k}"
        );
      }
    }
  }
}
