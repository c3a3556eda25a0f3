//! Quantization settings: the `quantization` block of an mlx-community
//! config.json (python `mlx.nn.quantize(model, group_size, bits, mode)` and
//! mlx-lm's per-layer overrides).

use std::collections::HashMap;

use mlxrs_core::{Error, Result};

/// How one layer is quantized (python `nn.QuantizedLinear`'s
/// `group_size`, `bits`, `mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantParams {
  /// Elements per scale group (32, 64, 128).
  pub group_size: i32,
  /// Bits per element (2, 3, 4, 5, 6, 8).
  pub bits: i32,
  /// `affine`, `mxfp4`, `nvfp4` or `mxfp8`.
  pub mode: String,
}

impl QuantParams {
  /// Whether this mode stores per-group biases (only `affine` does).
  pub fn has_biases(&self) -> bool {
    self.mode == "affine"
  }
}

/// A checkpoint's quantization config: defaults plus per-layer overrides
/// (`"model.layers.0.mlp.gate_proj": {"group_size": 32, "bits": 8}` or
/// `false` for a layer left unquantized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantConfig {
  /// Default parameters.
  pub default: QuantParams,
  /// Per-layer: `Some` override, or `None` for "not quantized".
  pub layers: HashMap<String, Option<QuantParams>>,
}

impl QuantConfig {
  /// Parse config.json's `quantization` (or `quantization_config`) value.
  pub fn from_json(v: &serde_json::Value) -> Result<QuantConfig> {
    let obj = v
      .as_object()
      .ok_or_else(|| Error::InvalidArgument("quantization: expected an object".into()))?;
    let parse = |o: &serde_json::Map<String, serde_json::Value>, base: Option<&QuantParams>| -> Result<QuantParams> {
      let gs = o.get("group_size").and_then(|x| x.as_i64()).map(|x| x as i32);
      let bits = o.get("bits").and_then(|x| x.as_i64()).map(|x| x as i32);
      let mode = o.get("mode").and_then(|x| x.as_str()).map(str::to_string);
      let p = QuantParams {
        group_size: gs.or(base.map(|b| b.group_size)).unwrap_or(64),
        bits: bits.or(base.map(|b| b.bits)).unwrap_or(4),
        mode: mode.or(base.map(|b| b.mode.clone())).unwrap_or_else(|| "affine".into()),
      };
      if ![2, 3, 4, 5, 6, 8].contains(&p.bits) {
        return Err(Error::InvalidArgument(format!("quantization: unsupported bits {}", p.bits)));
      }
      if p.group_size <= 0 {
        return Err(Error::InvalidArgument(format!("quantization: invalid group_size {}", p.group_size)));
      }
      if !["affine", "mxfp4", "nvfp4", "mxfp8"].contains(&p.mode.as_str()) {
        return Err(Error::InvalidArgument(format!("quantization: unknown mode {:?}", p.mode)));
      }
      Ok(p)
    };
    let default = parse(obj, None)?;
    let mut layers = HashMap::new();
    for (k, val) in obj {
      match val {
        serde_json::Value::Object(o) => {
          layers.insert(k.clone(), Some(parse(o, Some(&default))?));
        }
        serde_json::Value::Bool(false) => {
          layers.insert(k.clone(), None);
        }
        _ => {}
      }
    }
    Ok(QuantConfig { default, layers })
  }

  /// The parameters for the layer at `path` (None = left unquantized).
  pub fn for_layer(&self, path: &str) -> Option<QuantParams> {
    match self.layers.get(path) {
      Some(p) => p.clone(),
      None => Some(self.default.clone()),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn parses_defaults_and_overrides() {
    let v: serde_json::Value = serde_json::from_str(
      r#"{"group_size": 64, "bits": 4, "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8}, "lm_head": false}"#,
    )
    .unwrap();
    let q = QuantConfig::from_json(&v).unwrap();
    assert_eq!(q.default, QuantParams { group_size: 64, bits: 4, mode: "affine".into() });
    assert_eq!(
      q.for_layer("model.layers.0.mlp.down_proj"),
      Some(QuantParams { group_size: 32, bits: 8, mode: "affine".into() })
    );
    assert_eq!(q.for_layer("lm_head"), None);
    assert_eq!(q.for_layer("model.layers.1.mlp.down_proj"), Some(q.default.clone()));
    assert!(QuantConfig::from_json(&serde_json::json!({"bits": 7})).is_err());
    assert!(QuantConfig::from_json(&serde_json::json!({"mode": "bogus"})).is_err());
    assert!(QuantConfig::from_json(&serde_json::json!(3)).is_err());
  }
}
