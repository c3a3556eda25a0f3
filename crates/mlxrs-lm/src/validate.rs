//! The language-model config check: every size, count and constant in a
//! (merged) `config.json` is validated here, once, before any architecture
//! builds layers from it. Errors name the field and its value. (python
//! mlx-lm trusts the config: a negative `num_hidden_layers` or a zero
//! `hidden_size` fails deep inside model construction, or not at all.)

use serde_json::Value;

use mlxrs_core::{Error, Result};

/// More layers than any released model has by far; a larger count is a
/// corrupt config (and would try to build that many layers).
pub const MAX_LAYERS: u64 = 4096;

/// Counts that must be integers >= 1 when present (`null` = absent).
const POSITIVE: &[&str] = &[
  "num_hidden_layers",
  "hidden_size",
  "intermediate_size",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "vocab_size",
  "max_position_embeddings",
  "moe_intermediate_size",
  "num_experts",
  "num_local_experts",
  "n_routed_experts",
  "num_experts_per_tok",
  "sliding_window",
];

/// Floats that must be finite and > 0 when present.
const POSITIVE_FLOAT: &[&str] = &["rope_theta"];

/// Floats that must be finite and >= 0 when present.
const NON_NEGATIVE_FLOAT: &[&str] = &["rms_norm_eps", "layer_norm_eps", "norm_eps"];

fn bad(mt: &str, msg: String) -> Error {
  Error::InvalidArgument(format!("config.json ({mt}): {msg}"))
}

/// Check the text model's config (`config.json` with `text_config` merged,
/// as given to [`crate::build_model`]): every count in [`POSITIVE`] is an
/// integer >= 1 (and fits `i32`; `num_hidden_layers` at most
/// [`MAX_LAYERS`]), `rope_theta` is finite and > 0, norm epsilons are finite
/// and >= 0, `num_attention_heads` is a multiple of `num_key_value_heads`,
/// `hidden_size` a multiple of `num_attention_heads` when there is no
/// `head_dim`, and `num_experts_per_tok` at most the number of experts.
pub fn validate_text_config(config: &Value) -> Result<()> {
  let mt = config
    .get("model_type")
    .and_then(Value::as_str)
    .unwrap_or("?");
  let field = |name: &str| config.get(name).filter(|v| !v.is_null());
  let mut ints = std::collections::HashMap::new();
  for &name in POSITIVE {
    let Some(v) = field(name) else { continue };
    let n = match v.as_u64() {
      Some(n) if n >= 1 && n <= i32::MAX as u64 => n,
      _ => {
        // sliding_window 0 is how some configs say "none".
        if name == "sliding_window" && v.as_u64() == Some(0) {
          continue;
        }
        return Err(bad(
          mt,
          format!("{name} must be a positive integer, got {v}"),
        ));
      }
    };
    ints.insert(name, n);
  }
  if let Some(&n) = ints.get("num_hidden_layers") {
    if n > MAX_LAYERS {
      return Err(bad(
        mt,
        format!("num_hidden_layers {n} is more than {MAX_LAYERS}: a corrupt config?"),
      ));
    }
  }
  for &name in POSITIVE_FLOAT {
    let Some(v) = field(name) else { continue };
    match v.as_f64() {
      Some(x) if x.is_finite() && x > 0.0 => {}
      _ => {
        return Err(bad(
          mt,
          format!("{name} must be a finite number > 0, got {v}"),
        ));
      }
    }
  }
  for &name in NON_NEGATIVE_FLOAT {
    let Some(v) = field(name) else { continue };
    match v.as_f64() {
      Some(x) if x.is_finite() && x >= 0.0 => {}
      _ => {
        return Err(bad(
          mt,
          format!("{name} must be a finite number >= 0, got {v}"),
        ));
      }
    }
  }
  if let (Some(&h), Some(&kv)) = (
    ints.get("num_attention_heads"),
    ints.get("num_key_value_heads"),
  ) {
    if h % kv != 0 {
      return Err(bad(
        mt,
        format!("num_attention_heads {h} is not a multiple of num_key_value_heads {kv}"),
      ));
    }
  }
  if let (Some(&d), Some(&h), None) = (
    ints.get("hidden_size"),
    ints.get("num_attention_heads"),
    ints.get("head_dim"),
  ) {
    if d % h != 0 {
      return Err(bad(
        mt,
        format!(
          "hidden_size {d} is not a multiple of num_attention_heads {h} (and there is no head_dim)"
        ),
      ));
    }
  }
  let experts = ["num_experts", "num_local_experts", "n_routed_experts"]
    .iter()
    .find_map(|n| ints.get(n).map(|&e| (*n, e)));
  if let (Some(&k), Some((name, e))) = (ints.get("num_experts_per_tok"), experts) {
    if k > e {
      return Err(bad(
        mt,
        format!("num_experts_per_tok {k} is more than {name} {e}"),
      ));
    }
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;
  use serde_json::json;

  fn base() -> Value {
    json!({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
      "vocab_size": 100, "rope_theta": 10000.0, "rms_norm_eps": 1e-5})
  }

  fn err_with(field: &str, v: Value) -> String {
    let mut c = base();
    c[field] = v;
    validate_text_config(&c).unwrap_err().to_string()
  }

  #[test]
  fn names_the_field_and_value() {
    assert!(validate_text_config(&base()).is_ok());
    let e = err_with("num_hidden_layers", json!(-1));
    assert!(
      e.contains("num_hidden_layers must be a positive integer, got -1"),
      "{e}"
    );
    let e = err_with("hidden_size", json!(0));
    assert!(
      e.contains("hidden_size must be a positive integer, got 0"),
      "{e}"
    );
    let e = err_with("hidden_size", json!(-8));
    assert!(e.contains("hidden_size"), "{e}");
    let e = err_with("num_hidden_layers", json!(1_000_000));
    assert!(e.contains("more than 4096"), "{e}");
    let e = err_with("rope_theta", json!(0));
    assert!(
      e.contains("rope_theta must be a finite number > 0, got 0"),
      "{e}"
    );
    let e = err_with("num_key_value_heads", json!(3));
    assert!(e.contains("not a multiple of num_key_value_heads 3"), "{e}");
    let e = err_with("hidden_size", json!(66));
    assert!(e.contains("hidden_size 66 is not a multiple"), "{e}");
    let e = err_with("vocab_size", json!("100"));
    assert!(e.contains("vocab_size"), "{e}");
    let mut c = base();
    c["head_dim"] = json!(32);
    c["hidden_size"] = json!(66);
    assert!(validate_text_config(&c).is_ok());
    c["num_local_experts"] = json!(4);
    c["num_experts_per_tok"] = json!(8);
    let e = validate_text_config(&c).unwrap_err().to_string();
    assert!(e.contains("num_experts_per_tok 8"), "{e}");
  }
}
