//! State-space and hybrid architectures (issue #19: mamba, ...) against
//! mlx-lm 0.32.2 on the same tiny checkpoints (`scripts/make_lm_fixtures.py`,
//! float32 and 4-bit).
//!
//! Per architecture: last-position logits within 1e-4 (float32) and 20
//! greedy tokens equal (`common::check_fixture`); a long prompt (> 256
//! tokens: more than one SSD chunk, and prefilled in chunks of 64 as
//! mlx-lm's reference did) with its logits and greedy tokens; mlx-lm's own
//! `save_prompt_cache` file of the prompt (all but its last token) loaded
//! and continued to the reference greedy tokens; and our own save/load
//! round trip of that cache giving the same tokens.

mod common;

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype};
use mlxrs_lm::{StepConfig, TokenGenerator, load_model_dir};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
  v.as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_f64().unwrap() as f32)
    .collect()
}

fn greedy(
  model: &dyn mlxrs_lm::LanguageModel,
  prompt: &[i32],
  prefill: usize,
  caches: Option<Vec<mlxrs_nn::KvCache>>,
) -> Vec<i32> {
  let cfg = StepConfig {
    max_tokens: 20,
    prefill_step_size: prefill,
    ..StepConfig::default()
  };
  TokenGenerator::new(model, prompt, &cfg, caches)
    .unwrap()
    .map(|s| s.unwrap().token)
    .collect()
}

/// The long prompt: one forward's last logits, and greedy decoding after a
/// prefill in chunks of `long_prefill_step_size`.
fn check_long(name: &str) {
  let r = common::reference(name);
  let (model, _) = load_model_dir(&common::fixture(name), Some(Dtype::Float32)).unwrap();
  let prompt = common::ints(&r["long_prompt_ids"]);
  assert!(
    prompt.len() > 256,
    "{name}: long prompt of {}",
    prompt.len()
  );
  let want = floats(&r["long_logits_last"]);
  let mut caches = model.make_caches(None);
  let x = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
  let all = model
    .forward(&x, &mut caches)
    .unwrap()
    .to_vec::<f32>()
    .unwrap();
  let d = all[all.len() - want.len()..]
    .iter()
    .zip(&want)
    .map(|(a, b)| (a - b).abs())
    .fold(0f32, f32::max);
  assert!(d <= 1e-4, "{name}: long prompt max |logit diff| {d}");
  let step = r["long_prefill_step_size"].as_u64().unwrap() as usize;
  assert_eq!(
    greedy(model.as_ref(), &prompt, step, None),
    common::ints(&r["long_greedy_tokens"]),
    "{name}: long prompt greedy tokens"
  );
}

/// mlx-lm's prompt cache of all prompt tokens but the last, continued from
/// the last token, gives the reference greedy tokens; so does our own
/// save + load of the same caches.
fn check_prompt_cache(name: &str) {
  let r = common::reference(name);
  let dir = common::fixture(name);
  let (model, _) = load_model_dir(&dir, Some(Dtype::Float32)).unwrap();
  let prompt = common::ints(&r["prompt_ids"]);
  let want = common::ints(&r["greedy_tokens"]);
  let pc = &r["prompt_cache"];
  let (loaded, meta) = mlxrs_nn::load_kv_caches(dir.join(pc["file"].as_str().unwrap())).unwrap();
  assert_eq!(
    meta.get("tokens").map(String::as_str),
    Some(pc["tokens"].to_string().as_str())
  );
  let classes: Vec<&str> = loaded.iter().map(|c| c.class_name()).collect();
  let want_classes: Vec<String> = pc["classes"]
    .as_array()
    .unwrap()
    .iter()
    .map(|c| c.as_str().unwrap().to_string())
    .collect();
  assert_eq!(classes, want_classes, "{name}: cache classes");
  let last = &prompt[prompt.len() - 1..];
  assert_eq!(
    greedy(model.as_ref(), last, 2048, Some(loaded)),
    want,
    "{name}: continued from mlx-lm's prompt cache"
  );

  let mut caches = model.make_caches(None);
  let head = &prompt[..prompt.len() - 1];
  model
    .hidden(
      &Array::from_slice(head, &[1, head.len() as i32]).unwrap(),
      &mut caches,
    )
    .unwrap();
  let f = std::env::temp_dir().join(format!(
    "mlxrs-ssm-pc-{name}-{}.safetensors",
    std::process::id()
  ));
  mlxrs_nn::save_kv_caches(&f, &caches, &HashMap::new()).unwrap();
  let (back, _) = mlxrs_nn::load_kv_caches(&f).unwrap();
  let _ = std::fs::remove_file(&f);
  assert_eq!(
    greedy(model.as_ref(), last, 2048, Some(back)),
    want,
    "{name}: continued from our saved prompt cache"
  );
}

/// What recurrent caches cannot do is refused by name: rotating caches
/// (`max_kv_size`), speculative rewinding, trimming.
fn check_refusals(name: &str) {
  let (model, _) = load_model_dir(&common::fixture(name), Some(Dtype::Float32)).unwrap();
  // The support table (docs/models.md) lists it as recurrent: no rotating
  // caches, no speculative decoding, no padded batches.
  let mt = common::reference(name)["model_type"]
    .as_str()
    .unwrap()
    .to_string();
  let row = mlxrs_lm::support::model_support()
    .into_iter()
    .find(|m| m.model_type == mt)
    .unwrap();
  assert!(
    row.recurrent && !row.rotating_cache && !row.speculative && !row.batch,
    "{mt}"
  );
  let x = Array::from_slice(&[1, 2, 3], &[1, 3]).unwrap();
  let mut c = model.make_caches(None);
  assert!(
    model.hidden_padded(&x, &mut c, &[vec![true; 3]]).is_err(),
    "{mt}: padded batch"
  );
  let cfg = StepConfig {
    max_kv_size: Some(64),
    max_tokens: 2,
    ..StepConfig::default()
  };
  let e = TokenGenerator::new(model.as_ref(), &[1, 2, 3], &cfg, None)
    .err()
    .expect("max_kv_size must be refused");
  assert!(e.to_string().contains("max_kv_size"), "{e}");
  let cfg = StepConfig {
    max_tokens: 2,
    ..StepConfig::default()
  };
  let e = mlxrs_lm::SpeculativeGenerator::new(model.as_ref(), model.as_ref(), &[1, 2, 3], &cfg)
    .err()
    .expect("speculative decoding must be refused");
  assert!(e.to_string().contains("recurrent"), "{e}");
  let mut caches = model.make_caches(None);
  model
    .hidden(
      &Array::from_slice(&[1, 2, 3], &[1, 3]).unwrap(),
      &mut caches,
    )
    .unwrap();
  let rec: Vec<_> = caches.iter_mut().filter(|c| c.is_recurrent()).collect();
  assert!(!rec.is_empty());
  for c in rec {
    assert!(!c.is_trimmable());
    assert_eq!(c.trim(1), 0);
  }
}

/// A config field the implementation does not handle (or a malformed one)
/// fails with the field's name.
fn check_config_error(name: &str, field: &str, value: Value) {
  let dir = common::fixture(name);
  let mut cfg: Value =
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
  cfg[field] = value;
  let e = mlxrs_lm::model::build_model(&cfg)
    .err()
    .expect("config must be refused");
  assert!(e.to_string().contains(field), "{name}: {e}");
}

macro_rules! ssm_fixtures {
  ($($m:ident => $name:literal, $field:literal = $val:expr;)*) => {
    $(
      mod $m {
        use super::*;
        #[test]
        fn f32_logits_and_greedy() {
          common::check_fixture($name, 1e-4);
        }
        #[test]
        fn q4_logits_and_greedy() {
          common::check_fixture(concat!($name, "-4bit"), 1e-4);
        }
        #[test]
        fn long_prompt_chunked_prefill() {
          check_long($name);
          check_long(concat!($name, "-4bit"));
        }
        #[test]
        fn prompt_cache_round_trip() {
          check_prompt_cache($name);
        }
        #[test]
        fn refusals() {
          check_refusals($name);
        }
        #[test]
        fn config_field_named() {
          check_config_error($name, $field, $val);
        }
      }
    )*
  };
}

ssm_fixtures! {
  mamba => "mamba", "time_step_rank" = serde_json::json!("bogus");
  mamba2 => "mamba2", "norm_before_gate" = serde_json::json!(true);
  qwen3_next => "qwen3_next", "layer_types" = serde_json::json!(["full_attention", "linear_attention", "full_attention"]);
  qwen3_5 => "qwen3_5", "layer_types" = serde_json::json!(["linear_attention", "linear_attention", "full_attention"]);
  qwen3_5_moe => "qwen3_5_moe", "num_experts_per_tok" = serde_json::json!(9);
  nemotron_h => "nemotron_h", "hybrid_override_pattern" = serde_json::json!("M-*X-");
  falcon_h1 => "falcon_h1", "mamba_d_ssm" = serde_json::json!(96);
  jamba => "jamba", "layers_block_type" = serde_json::json!(["mamba", "attention", "linear"]);
  granitemoehybrid => "granitemoehybrid", "position_embedding_type" = serde_json::json!("alibi");
  recurrent_gemma => "recurrent_gemma", "block_types" = serde_json::json!(["recurrent"]);
  rwkv7 => "rwkv7", "head_dim" = serde_json::json!(24);
  kimi_linear => "kimi_linear", "moe_router_activation_func" = serde_json::json!("relu");
  lfm2 => "lfm2", "rope_scaling" = serde_json::json!({"type": "linear", "factor": 2.0});
}

/// Checkpoints in the HF layout (depthwise conv weights `[C, 1, K]`, as
/// `transformers` saves them) load through `sanitize` (mlx-lm's `moveaxis`)
/// to the same logits as the MLX-layout fixture.
#[test]
fn hf_conv_layout_is_sanitized() {
  // (qwen3_next / qwen3_5 treat an HF conv layout as a whole HF checkpoint:
  // per-expert tensors, offset norms; not this partial rewrite.)
  for name in ["mamba", "mamba2", "jamba", "nemotron_h", "granitemoehybrid"] {
    let src = common::fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
      let p = e.unwrap().path();
      if p.is_file() && p.file_name().unwrap() != "model.safetensors" {
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
      }
    }
    let (mut w, meta) = mlxrs_core::io::load_safetensors(src.join("model.safetensors")).unwrap();
    let mut moved = 0;
    for (k, v) in w.iter_mut() {
      if k.contains("conv1d.weight") {
        *v = mlxrs_core::ops::swapaxes(v, 1, 2).unwrap();
        moved += 1;
      }
    }
    assert!(moved > 0, "{name}: no conv weights");
    mlxrs_core::io::save_safetensors(tmp.path().join("model.safetensors"), &w, &meta).unwrap();
    let r = common::reference(name);
    let (model, _) = load_model_dir(tmp.path(), Some(Dtype::Float32)).unwrap();
    let prompt = common::ints(&r["prompt_ids"]);
    let want = floats(&r["logits_last"]);
    let x = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
    let all = model
      .forward(&x, &mut model.make_caches(None))
      .unwrap()
      .to_vec::<f32>()
      .unwrap();
    let d = all[all.len() - want.len()..]
      .iter()
      .zip(&want)
      .map(|(a, b)| (a - b).abs())
      .fold(0f32, f32::max);
    assert!(d <= 1e-4, "{name}: HF conv layout max |logit diff| {d}");
  }
}
