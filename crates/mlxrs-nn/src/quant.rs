//! Quantization settings: the `quantization` block of an mlx-community
//! config.json (python `mlx.nn.quantize(model, group_size, bits, mode)` and
//! mlx-lm's per-layer overrides).

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result};

use crate::module::Module;

/// MLX quantization modes (python `mx.quantize(mode=...)`). In config.json
/// (mlx-lm's `quantization` block) the lowercase name.
#[derive(
  Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum QuantMode {
  /// Per-group scale and bias (`"affine"`, MLX's default).
  #[default]
  Affine,
  /// OCP microscaling FP4 (`"mxfp4"`).
  Mxfp4,
  /// NVIDIA FP4 (`"nvfp4"`).
  Nvfp4,
  /// OCP microscaling FP8 (`"mxfp8"`).
  Mxfp8,
}

impl QuantMode {
  /// Every mode, in MLX's order.
  pub const ALL: [QuantMode; 4] = [
    QuantMode::Affine,
    QuantMode::Mxfp4,
    QuantMode::Nvfp4,
    QuantMode::Mxfp8,
  ];

  /// The mode's name in configs and in MLX (`"affine"`, ...).
  pub fn as_str(self) -> &'static str {
    match self {
      QuantMode::Affine => "affine",
      QuantMode::Mxfp4 => "mxfp4",
      QuantMode::Nvfp4 => "nvfp4",
      QuantMode::Mxfp8 => "mxfp8",
    }
  }

  /// Parse a mode name; `None` for unknown names.
  pub fn parse(name: &str) -> Option<QuantMode> {
    QuantMode::ALL.into_iter().find(|m| m.as_str() == name)
  }

  /// Parse a mode name, or an error listing the valid ones.
  pub fn from_name(name: &str) -> Result<QuantMode> {
    QuantMode::parse(name).ok_or_else(|| {
      Error::InvalidArgument(format!(
        "quantization: unknown mode {name:?} (affine, mxfp4, nvfp4, mxfp8)"
      ))
    })
  }

  /// `(group_size, bits)` MLX uses when a layer's quantization leaves them
  /// out (python `mlx.nn.layers.quantized._defaults_for_mode`: affine 64/4,
  /// mxfp4 32/4, nvfp4 16/4, mxfp8 32/8).
  pub fn defaults(self) -> (i32, i32) {
    match self {
      QuantMode::Affine => (64, 4),
      QuantMode::Mxfp4 => (32, 4),
      QuantMode::Nvfp4 => (16, 4),
      QuantMode::Mxfp8 => (32, 8),
    }
  }

  /// Whether this mode stores per-group biases (only `affine` does).
  pub fn has_biases(self) -> bool {
    self == QuantMode::Affine
  }
}

impl std::fmt::Display for QuantMode {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(self.as_str())
  }
}

/// How one layer is quantized (python `nn.QuantizedLinear`'s
/// `group_size`, `bits`, `mode`; the kwargs of `to_quantized`). The one
/// quantization-parameter type of mlxrs: nn layers, caches, mlx-lm config
/// parsing and conversion all use it. Serialized it is an mlx-lm
/// `quantization` entry: `{"group_size": 64, "bits": 4, "mode": "affine"}`
/// (a missing `mode` reads as affine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct QuantParams {
  /// Elements per scale group (32, 64, 128; 16 for nvfp4).
  pub group_size: i32,
  /// Bits per element (2, 3, 4, 5, 6, 8).
  pub bits: i32,
  /// The mode.
  #[serde(default)]
  pub mode: QuantMode,
}

impl QuantParams {
  /// Whether this mode stores per-group biases (only `affine` does).
  pub fn has_biases(&self) -> bool {
    self.mode.has_biases()
  }

  /// Validated parameters, with the mode's defaults for a missing group
  /// size / bit width (python `_defaults_for_mode`). `mode` is a name
  /// (`"affine"`, ...); unknown names are an error.
  pub fn new(group_size: Option<i32>, bits: Option<i32>, mode: &str) -> Result<QuantParams> {
    let mode = QuantMode::from_name(mode)?;
    let (g, b) = mode.defaults();
    let p = QuantParams {
      group_size: group_size.unwrap_or(g),
      bits: bits.unwrap_or(b),
      mode,
    };
    p.validate()?;
    Ok(p)
  }

  /// Check bits and group size.
  pub fn validate(&self) -> Result<()> {
    if ![2, 3, 4, 5, 6, 8].contains(&self.bits) {
      return Err(Error::InvalidArgument(format!(
        "quantization: unsupported bits {}",
        self.bits
      )));
    }
    if self.group_size <= 0 {
      return Err(Error::InvalidArgument(format!(
        "quantization: invalid group_size {}",
        self.group_size
      )));
    }
    Ok(())
  }
}

/// A layer that can be quantized in place (python: a module with
/// `to_quantized`, i.e. `nn.Linear`, `nn.Embedding`, mlx-lm's
/// `SwitchLinear`).
pub trait Quantizable {
  /// The layer's type name (`"Linear"`, `"Embedding"`, `"SwitchLinear"`).
  fn kind(&self) -> &'static str;
  /// The dense weight's shape (the last axis is the one quantized).
  fn dense_shape(&self) -> Vec<i32>;
  /// The current quantization, if already quantized.
  fn quantization(&self) -> Option<&QuantParams>;
  /// The weight (dense, or packed when quantized).
  fn weight(&self) -> &Array;
  /// Quantize the (dense, loaded) weight in place; its parameters become
  /// frozen, as python's quantized layers freeze themselves.
  fn quantize(&mut self, q: &QuantParams) -> Result<()>;
}

/// Which layers [`quantize`] quantizes: `(path, layer) -> bool`.
pub type QuantPredicate<'a> = &'a dyn Fn(&str, &dyn Quantizable) -> bool;

/// Quantize a model's quantizable layers in place (python
/// `nn.quantize(model, group_size, bits, mode=mode, class_predicate=...)`).
/// `group_size` / `bits` default to the mode's values. With no
/// `predicate` every dense layer whose input width the group size divides
/// is quantized (python would instead fail inside `mx.quantize`); the
/// predicate gets each layer's path and the layer. Returns the paths
/// quantized. Already-quantized layers are left alone.
pub fn quantize<M: Module + ?Sized>(
  model: &mut M,
  group_size: Option<i32>,
  bits: Option<i32>,
  mode: &str,
  predicate: Option<QuantPredicate<'_>>,
) -> Result<Vec<String>> {
  let q = QuantParams::new(group_size, bits, mode)?;
  quantize_with(model, &|path, layer| {
    let ok = match predicate {
      Some(p) => p(path, layer),
      None => layer
        .dense_shape()
        .last()
        .is_some_and(|&d| d % q.group_size == 0),
    };
    ok.then_some(q)
  })
}

/// Quantize with per-layer parameters: `choose(path, layer)` returns the
/// parameters for that layer, or `None` to leave it dense (python: a
/// `class_predicate` returning a dict / `False`, as mlx-lm's mixed-bit
/// recipes do). Errors name the layer.
pub fn quantize_with<M: Module + ?Sized>(
  model: &mut M,
  choose: &dyn Fn(&str, &dyn Quantizable) -> Option<QuantParams>,
) -> Result<Vec<String>> {
  let mut done = Vec::new();
  let mut err: Option<Error> = None;
  model.visit_quantizable_mut("", &mut |path, layer| {
    if err.is_some() || layer.quantization().is_some() {
      return;
    }
    if let Some(q) = choose(path, &*layer) {
      let r = q.validate().and_then(|_| {
        let cols = layer.dense_shape().last().copied().unwrap_or(0);
        if cols % q.group_size != 0 {
          return Err(Error::InvalidArgument(format!(
            "last dimension {cols} is not a multiple of group_size {}",
            q.group_size
          )));
        }
        layer.quantize(&q)
      });
      match r {
        Ok(()) => done.push(path.to_string()),
        Err(e) => {
          err = Some(Error::InvalidArgument(format!(
            "quantize {path} ({}): {e}",
            layer.kind()
          )))
        }
      }
    }
  });
  match err {
    Some(e) => Err(e),
    None => Ok(done),
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
    // A field a per-layer entry leaves out takes the mode's default, not
    // the top-level value: mlx-lm passes the entry as `to_quantized(**entry)`,
    // whose defaults are `mode="affine"` and that mode's group size / bits
    // (python `_defaults_for_mode`), e.g. rwkv7's `{"bits": 8}` is 8-bit
    // with groups of 64 under a 4-bit / 32 top level.
    let parse = |o: &serde_json::Map<String, serde_json::Value>| -> Result<QuantParams> {
      let gs = o
        .get("group_size")
        .and_then(|x| x.as_i64())
        .map(|x| x as i32);
      let bits = o.get("bits").and_then(|x| x.as_i64()).map(|x| x as i32);
      let mode = match o.get("mode") {
        None | Some(serde_json::Value::Null) => QuantMode::default(),
        Some(m) => QuantMode::from_name(m.as_str().ok_or_else(|| {
          Error::InvalidArgument(format!("quantization: mode {m} is not a string"))
        })?)?,
      };
      let (dg, db) = mode.defaults();
      let p = QuantParams {
        group_size: gs.unwrap_or(dg),
        bits: bits.unwrap_or(db),
        mode,
      };
      p.validate()?;
      Ok(p)
    };
    let default = parse(obj)?;
    let mut layers = HashMap::new();
    for (k, val) in obj {
      match val {
        serde_json::Value::Object(o) => {
          layers.insert(k.clone(), Some(parse(o)?));
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
      Some(p) => *p,
      None => Some(self.default),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn serde_is_an_mlx_lm_quantization_entry() {
    // mlx-lm writes `{"group_size": 64, "bits": 4, "mode": "affine"}`;
    // older configs have no `mode` (affine).
    let p: QuantParams =
      serde_json::from_str(r#"{"group_size": 32, "bits": 4, "mode": "mxfp4"}"#).unwrap();
    assert_eq!(
      p,
      QuantParams {
        group_size: 32,
        bits: 4,
        mode: QuantMode::Mxfp4
      }
    );
    let p: QuantParams = serde_json::from_str(r#"{"group_size": 64, "bits": 8}"#).unwrap();
    assert_eq!(p.mode, QuantMode::Affine);
    assert_eq!(
      serde_json::to_value(p).unwrap(),
      serde_json::json!({"group_size": 64, "bits": 8, "mode": "affine"})
    );
    assert!(
      serde_json::from_str::<QuantParams>(r#"{"group_size": 64, "bits": 4, "mode": "fp3"}"#)
        .is_err()
    );
    for m in QuantMode::ALL {
      assert_eq!(QuantMode::parse(m.as_str()), Some(m));
      assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
    }
  }

  #[test]
  fn parses_defaults_and_overrides() {
    let v: serde_json::Value = serde_json::from_str(
      r#"{"group_size": 64, "bits": 4, "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8}, "lm_head": false}"#,
    )
    .unwrap();
    let q = QuantConfig::from_json(&v).unwrap();
    assert_eq!(
      q.default,
      QuantParams {
        group_size: 64,
        bits: 4,
        mode: QuantMode::Affine
      }
    );
    assert_eq!(
      q.for_layer("model.layers.0.mlp.down_proj"),
      Some(QuantParams {
        group_size: 32,
        bits: 8,
        mode: QuantMode::Affine
      })
    );
    assert_eq!(q.for_layer("lm_head"), None);
    assert_eq!(q.for_layer("model.layers.1.mlp.down_proj"), Some(q.default));
    assert!(QuantConfig::from_json(&serde_json::json!({"bits": 7})).is_err());
    assert!(QuantConfig::from_json(&serde_json::json!({"mode": "bogus"})).is_err());
    assert!(QuantConfig::from_json(&serde_json::json!(3)).is_err());
  }
}
