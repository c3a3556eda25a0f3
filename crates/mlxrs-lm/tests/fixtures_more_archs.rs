//! The architectures added for issue #19 (Granite, Helium, InternLM3,
//! OLMo 3, ...; float32 and 4-bit) against mlx-lm 0.32.2 on the same
//! checkpoints (`scripts/make_lm_fixtures.py`).
//!
//! Tolerance: |logit diff| <= 1e-4 in float32 (the references' max |logit|
//! is 5..11), greedy tokens exact. The olmo3 prompt (58 tokens) is longer
//! than its 16-position sliding window, so its greedy tokens exercise
//! rotating-cache decoding past the window.

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
  granite / granite_4bit => "granite",
  helium / helium_4bit => "helium",
  internlm3 / internlm3_4bit => "internlm3",
  olmo3 / olmo3_4bit => "olmo3",
  starcoder2 / starcoder2_4bit => "starcoder2",
  stablelm / stablelm_4bit => "stablelm",
  phi / phi_4bit => "phi",
  cohere / cohere_4bit => "cohere",
  glm4 / glm4_4bit => "glm4",
  minicpm / minicpm_4bit => "minicpm",
  seed_oss / seed_oss_4bit => "seed_oss",
  ernie4_5 / ernie4_5_4bit => "ernie4_5",
  gpt2 / gpt2_4bit => "gpt2",
  gpt_bigcode / gpt_bigcode_4bit => "gpt_bigcode",
  qwen2_moe / qwen2_moe_4bit => "qwen2_moe",
  exaone / exaone_4bit => "exaone",
  gpt_neox / gpt_neox_4bit => "gpt_neox",
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
/// for every architecture here that `batch_generate` lists (and olmo3: its
/// sliding layers take the windowed padded mask, although `batch_generate`
/// refuses its rotating caches). GPT-2 / BigCode (absolute positions) have
/// no padded entry, as in mlx-lm.
#[test]
fn padded_batch_matches_reference() {
  let mut checked = 0;
  for name in NAMES {
    let mt = common::reference(name)["model_type"]
      .as_str()
      .unwrap()
      .to_string();
    if mlxrs_lm::batch::BATCH_MODEL_TYPES.contains(&mt.as_str()) || mt == "olmo3" {
      common::check_padded(name, 1e-4);
      checked += 1;
    }
  }
  assert_eq!(checked, NAMES.len() - 2, "all but gpt2 / gpt_bigcode");
}

/// A config field that would change the computation but is not implemented
/// (as in mlx-lm's file) fails by name instead of being ignored; so does a
/// missing required field.
#[test]
fn unhandled_config_fields_are_named() {
  use serde_json::{Value, json};
  let cases: &[(&str, &str, Value)] = &[
    ("cohere", "use_qk_norm", json!(true)),
    ("stablelm", "qk_layernorm", json!(true)),
    (
      "helium",
      "rope_scaling",
      json!({"rope_type": "linear", "factor": 2.0}),
    ),
    ("starcoder2", "use_bias", json!(false)),
    (
      "internlm3",
      "rope_scaling",
      json!({"rope_type": "yarn", "factor": 2.0}),
    ),
    ("qwen2_moe", "norm_topk_prob", json!(true)),
    ("qwen2_moe", "mlp_only_layers", json!([0])),
    (
      "olmo3",
      "layer_types",
      json!(["sliding_attention", "chunked_attention"]),
    ),
    ("glm4", "partial_rotary_factor", json!(0.0)),
    ("granite", "logits_scaling", Value::Null),
    ("minicpm", "scale_emb", Value::Null),
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
