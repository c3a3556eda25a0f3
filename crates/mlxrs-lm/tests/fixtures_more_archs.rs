//! The architectures added for issue #19 (Granite, Helium, InternLM3,
//! OLMo 3, ...; float32 and 4-bit) against mlx-lm 0.32.2 on the same
//! checkpoints (`scripts/make_lm_fixtures.py`).
//!
//! Tolerance: |logit diff| <= 1e-4 in float32 (the references' max |logit|
//! is 3..19), greedy tokens exact. The olmo3 / exaone4 / cohere2 prompts
//! (58-59 tokens) are longer than their 16-position sliding windows, so their
//! greedy tokens exercise rotating-cache decoding past the window.

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
  mimo / mimo_4bit => "mimo",
  exaone4 / exaone4_4bit => "exaone4",
  cohere2 / cohere2_4bit => "cohere2",
  internlm2 / internlm2_4bit => "internlm2",
  nemotron / nemotron_4bit => "nemotron",
  granitemoe / granitemoe_4bit => "granitemoe",
  olmoe / olmoe_4bit => "olmoe",
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
/// for every architecture here that `batch_generate` lists (and olmo3 /
/// exaone4 / cohere2: their sliding layers take the windowed padded mask, although
/// `batch_generate` refuses their rotating caches). GPT-2 / BigCode (absolute positions) have
/// no padded entry, as in mlx-lm.
#[test]
fn padded_batch_matches_reference() {
  let mut checked = 0;
  for name in NAMES {
    let mt = common::reference(name)["model_type"]
      .as_str()
      .unwrap()
      .to_string();
    let mt = mt.as_str();
    if mlxrs_lm::batch::BATCH_MODEL_TYPES.contains(&mt)
      || mlxrs_lm::support::SLIDING_MODEL_TYPES.contains(&mt)
    {
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
    ("olmoe", "clip_qkv", json!(8.0)),
    (
      "olmo3",
      "layer_types",
      json!(["sliding_attention", "chunked_attention"]),
    ),
    ("glm4", "partial_rotary_factor", json!(0.0)),
    ("phi3", "partial_rotary_factor", json!(0.0)),
    ("smollm3", "no_rope_layers", json!([1, 0, 1])),
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

/// HF-layout checkpoints (what `mlx_lm.convert` reads) map onto the mlx-lm
/// names by `sanitize`, as mlx-lm's own `sanitize` does: GPT-2 (no `model.`
/// prefix, Conv1D weights `[in, out]`, `attn.bias` buffers), GPT-NeoX
/// (`gpt_neox.*`, attention buffers), Qwen2-MoE (per-expert tensors) and
/// GraniteMoE (fused `input_linear`, `output_linear`).
/// The fixture's weights are rewritten into the HF layout, sanitized, and
/// must come back exactly.
#[test]
fn hf_layouts_sanitize_to_mlx_names() {
  use std::collections::HashMap;

  use mlxrs_core::{Array, Dtype, ops};
  type Map = HashMap<String, Array>;
  type ToHf = fn(Map) -> Map;
  let to_hf: &[(&str, ToHf)] = &[
    ("gpt2", |w| {
      let mut out = Map::new();
      for (k, v) in w {
        let k = k.strip_prefix("model.").unwrap().to_string();
        let conv = [".c_attn.weight", ".c_proj.weight", ".c_fc.weight"]
          .iter()
          .any(|s| k.ends_with(s));
        let v = if conv { ops::transpose(&v).unwrap() } else { v };
        out.insert(k, v);
      }
      out.insert(
        "h.0.attn.bias".into(),
        ops::zeros(&[1, 1, 4, 4], Dtype::Float32).unwrap(),
      );
      out
    }),
    ("gpt_neox", |w| {
      let mut out = Map::new();
      for (k, v) in w {
        let k = k
          .replace("model.h.", "gpt_neox.layers.")
          .replace("model.embed_in.", "gpt_neox.embed_in.")
          .replace("model.final_layer_norm.", "gpt_neox.final_layer_norm.")
          .replace("model.embed_out.", "embed_out.");
        out.insert(k, v);
      }
      out.insert(
        "gpt_neox.layers.0.attention.masked_bias".into(),
        ops::zeros(&[1], Dtype::Float32).unwrap(),
      );
      out
    }),
    ("qwen2_moe", |w| {
      let mut out = Map::new();
      for (k, v) in w {
        if let Some((p, rest)) = k.split_once(".mlp.switch_mlp.") {
          let n = v.shape()[0];
          for e in 0..n {
            let s = v.shape();
            let mut start = vec![0; s.len()];
            let mut stop = s.clone();
            start[0] = e;
            stop[0] = e + 1;
            let one = ops::slice(&v, &start, &stop, &vec![1; s.len()]).unwrap();
            let one = ops::squeeze_axes(&one, &[0]).unwrap();
            out.insert(format!("{p}.mlp.experts.{e}.{rest}"), one);
          }
        } else {
          out.insert(k, v);
        }
      }
      out
    }),
    ("granitemoe", |w| {
      let mut out = Map::new();
      let mut w = w;
      let gates: Vec<String> = w
        .keys()
        .filter(|k| k.ends_with(".switch_mlp.gate_proj.weight"))
        .cloned()
        .collect();
      for g in gates {
        let gate = w.remove(&g).unwrap();
        let up = w.remove(&g.replace("gate_proj", "up_proj")).unwrap();
        let down = w.remove(&g.replace("gate_proj", "down_proj")).unwrap();
        out.insert(
          g.replace("switch_mlp.gate_proj", "input_linear"),
          ops::concatenate_axis(&[gate, up], 1).unwrap(),
        );
        out.insert(g.replace("switch_mlp.gate_proj", "output_linear"), down);
      }
      out.extend(w);
      out
    }),
  ];
  for (name, f) in to_hf {
    let (model, _) =
      mlxrs_lm::load_model_dir(&common::fixture(name), Some(Dtype::Float32)).unwrap();
    let orig =
      mlxrs_lm::load::load_weights(&[common::fixture(name).join("model.safetensors")]).unwrap();
    let back = model.sanitize(f(orig.clone())).unwrap();
    let mut a: Vec<_> = orig.keys().collect();
    let mut b: Vec<_> = back.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{name}: keys");
    for (k, v) in &orig {
      let mut x = v.clone();
      let mut y = back[k].clone();
      assert_eq!(x.shape(), y.shape(), "{name}: {k}");
      assert_eq!(
        x.to_vec::<f32>().unwrap(),
        y.to_vec::<f32>().unwrap(),
        "{name}: {k}"
      );
    }
  }
}
