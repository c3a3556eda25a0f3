//! The third batch of architectures for issue #19 (DeepSeek-V2, GLM-4.5
//! MoE, Phi-3.5-MoE, MiniCPM3, Hunyuan, Ministral-3, Llama-4 text, Apertus,
//! ERNIE-4.5 MoE; float32 and 4-bit) against mlx-lm 0.32.2 on the same
//! checkpoints (`scripts/make_lm_fixtures.py`).
//!
//! Tolerance: |logit diff| <= 1e-4 in float32, greedy tokens exact. The
//! ministral3 prompt (59 tokens) is longer than its 16-position sliding
//! window, so its greedy tokens exercise rotating-cache decoding past the
//! window, and its 20 greedy tokens pass position 64, where the Llama-4
//! query scaling first changes.

mod common;

macro_rules! fixtures {
  ($($f:ident / $q:ident => $name:literal),* $(,)?) => {
    $(
      #[test]
      fn $f() {
        common::check_fixture($name, 1e-4);
      }
      #[test]
      fn $q() {
        common::check_fixture(concat!($name, "-4bit"), 1e-4);
      }
    )*
    /// Every architecture of this file.
    const NAMES: &[&str] = &[$($name),*];
  };
}

fixtures! {
  deepseek_v2 / deepseek_v2_4bit => "deepseek_v2",
  glm4_moe / glm4_moe_4bit => "glm4_moe",
  phimoe / phimoe_4bit => "phimoe",
}

/// With `max_kv_size` larger than the prompt, rotating caches give the
/// reference logits too.
#[test]
fn rotating_caches_match_reference() {
  for name in NAMES {
    common::check_rotating(name, 1024, 1e-4);
  }
}

/// A left-padded batch of two prompts (the reference prompt and a shorter
/// one) gives, for the full-length row, the reference last-position logits,
/// for every architecture here (all are listed by `batch_generate`, or have
/// sliding layers that take the windowed padded mask).
#[test]
fn padded_batch_matches_reference() {
  for name in NAMES {
    let mt = common::reference(name)["model_type"]
      .as_str()
      .unwrap()
      .to_string();
    assert!(
      mlxrs_lm::batch::BATCH_MODEL_TYPES.contains(&mt.as_str())
        || mlxrs_lm::support::SLIDING_MODEL_TYPES.contains(&mt.as_str()),
      "{mt}"
    );
    common::check_padded(name, 1e-4);
  }
}

/// A config field that would change the computation but is not implemented
/// (as in mlx-lm's file) fails by name instead of being ignored; so does a
/// missing required field.
#[test]
fn unhandled_config_fields_are_named() {
  use serde_json::{Value, json};
  let cases: &[(&str, &str, Value)] = &[
    ("deepseek_v2", "rope_scaling", Value::Null),
    (
      "glm4_moe",
      "rope_scaling",
      json!({"rope_type": "yarn", "factor": 2.0}),
    ),
    ("glm4_moe", "partial_rotary_factor", json!(0.0)),
    (
      "phimoe",
      "rope_scaling",
      json!({"type": "longrope", "long_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]}),
    ),
  ];
  for (name, field, value) in cases {
    let path = common::fixture(name).join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    if value.is_null() {
      cfg.as_object_mut().unwrap().remove(*field);
    } else {
      cfg[*field] = value.clone();
    }
    let e = mlxrs_lm::build_model(&cfg)
      .err()
      .unwrap_or_else(|| panic!("{name}: {field} = {value} accepted"))
      .to_string();
    assert!(e.contains(field), "{name}: {e}");
  }
}
