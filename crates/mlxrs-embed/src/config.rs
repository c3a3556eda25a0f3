//! Typed access to JSON configuration files (`config.json`, the
//! sentence-transformers module configs, `tokenizer_config.json`).
//!
//! Python reads these with `json.load` and `getattr(config, name, default)`;
//! here a missing or mistyped field is an [`Error::Config`] naming the file
//! and the field, never a panic.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result, read_json};

/// A parsed JSON object and the file it came from.
#[derive(Debug, Clone)]
pub struct JsonConfig {
  path: PathBuf,
  value: Value,
}

impl JsonConfig {
  /// Read and parse `path`; it must hold a JSON object.
  pub fn load(path: impl AsRef<Path>) -> Result<JsonConfig> {
    let path = path.as_ref();
    let value = read_json(path)?;
    if !value.is_object() {
      return Err(Error::folder(path, "expected a JSON object"));
    }
    Ok(JsonConfig {
      path: path.to_path_buf(),
      value,
    })
  }

  /// Wrap an already-parsed value (tests, nested sub-configs).
  pub fn from_value(path: impl AsRef<Path>, value: Value) -> JsonConfig {
    JsonConfig {
      path: path.as_ref().to_path_buf(),
      value,
    }
  }

  /// The file.
  pub fn path(&self) -> &Path {
    &self.path
  }

  /// The raw JSON.
  pub fn value(&self) -> &Value {
    &self.value
  }

  /// The value at a dotted path (`rope_parameters.rope_theta`), `None` when
  /// absent or JSON `null`.
  pub fn get(&self, field: &str) -> Option<&Value> {
    let mut v = &self.value;
    for part in field.split('.') {
      v = v.get(part)?;
    }
    (!v.is_null()).then_some(v)
  }

  fn err(&self, field: &str, msg: impl Into<String>) -> Error {
    Error::config(&self.path, field, msg)
  }

  /// First present field among `names` (aliases, e.g. `hidden_size` /
  /// `n_embd`), with its name.
  fn first<'s, 'n>(&'s self, names: &[&'n str]) -> Option<(&'n str, &'s Value)> {
    names.iter().find_map(|n| self.get(n).map(|v| (*n, v)))
  }

  /// An optional non-negative integer under any of `names`.
  pub fn opt_usize(&self, names: &[&str]) -> Result<Option<usize>> {
    match self.first(names) {
      None => Ok(None),
      Some((n, v)) => v
        .as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .map(Some)
        .ok_or_else(|| self.err(n, format!("expected a non-negative integer, got {v}"))),
    }
  }

  /// A required non-negative integer under any of `names`.
  pub fn usize(&self, names: &[&str]) -> Result<usize> {
    self
      .opt_usize(names)?
      .ok_or_else(|| self.err(names[0], "missing"))
  }

  /// A required positive integer under any of `names`.
  pub fn positive(&self, names: &[&str]) -> Result<usize> {
    let v = self.usize(names)?;
    if v == 0 {
      return Err(self.err(names[0], "must be positive"));
    }
    Ok(v)
  }

  /// An optional integer (possibly negative) under any of `names`.
  pub fn opt_i64(&self, names: &[&str]) -> Result<Option<i64>> {
    match self.first(names) {
      None => Ok(None),
      Some((n, v)) => v
        .as_i64()
        .map(Some)
        .ok_or_else(|| self.err(n, format!("expected an integer, got {v}"))),
    }
  }

  /// An optional number under any of `names`.
  pub fn opt_f64(&self, names: &[&str]) -> Result<Option<f64>> {
    match self.first(names) {
      None => Ok(None),
      Some((n, v)) => v
        .as_f64()
        .map(Some)
        .ok_or_else(|| self.err(n, format!("expected a number, got {v}"))),
    }
  }

  /// A number under any of `names`, or `default`.
  pub fn f64_or(&self, names: &[&str], default: f64) -> Result<f64> {
    Ok(self.opt_f64(names)?.unwrap_or(default))
  }

  /// An optional boolean under any of `names`.
  pub fn opt_bool(&self, names: &[&str]) -> Result<Option<bool>> {
    match self.first(names) {
      None => Ok(None),
      Some((n, v)) => v
        .as_bool()
        .map(Some)
        .ok_or_else(|| self.err(n, format!("expected true/false, got {v}"))),
    }
  }

  /// A boolean under any of `names`, or `default`.
  pub fn bool_or(&self, names: &[&str], default: bool) -> Result<bool> {
    Ok(self.opt_bool(names)?.unwrap_or(default))
  }

  /// An optional string under any of `names`.
  pub fn opt_str(&self, names: &[&str]) -> Result<Option<&str>> {
    match self.first(names) {
      None => Ok(None),
      Some((n, v)) => v
        .as_str()
        .map(Some)
        .ok_or_else(|| self.err(n, format!("expected a string, got {v}"))),
    }
  }

  /// A string under any of `names`, or `default`.
  pub fn str_or<'a>(&'a self, names: &[&str], default: &'a str) -> Result<&'a str> {
    Ok(self.opt_str(names)?.unwrap_or(default))
  }

  /// An optional list of strings.
  pub fn opt_str_list(&self, field: &str) -> Result<Option<Vec<String>>> {
    match self.get(field) {
      None => Ok(None),
      Some(Value::Array(items)) => items
        .iter()
        .map(|v| {
          v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.err(field, format!("expected a list of strings, found {v}")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some),
      Some(v) => Err(self.err(field, format!("expected a list of strings, got {v}"))),
    }
  }

  /// A config error for `field` of this file (for checks made by callers).
  pub fn invalid(&self, field: &str, msg: impl Into<String>) -> Error {
    self.err(field, msg)
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use serde_json::json;

  #[test]
  fn typed_fields_and_aliases() {
    let c = JsonConfig::from_value(
      "c.json",
      json!({"hidden_size": 8, "n_layer": 2, "eps": 1e-5, "flag": true, "name": "x",
             "rope": {"theta": 10.5}, "nothing": null, "neg": -3, "list": ["a", "b"]}),
    );
    assert_eq!(c.usize(&["hidden_size"]).unwrap(), 8);
    assert_eq!(c.usize(&["num_hidden_layers", "n_layer"]).unwrap(), 2);
    assert_eq!(c.opt_f64(&["rope.theta"]).unwrap(), Some(10.5));
    assert_eq!(c.opt_usize(&["nothing"]).unwrap(), None);
    assert!(c.bool_or(&["flag"], false).unwrap());
    assert_eq!(c.str_or(&["name"], "y").unwrap(), "x");
    assert_eq!(c.opt_i64(&["neg"]).unwrap(), Some(-3));
    assert_eq!(c.opt_str_list("list").unwrap().unwrap(), vec!["a", "b"]);
  }

  #[test]
  fn wrong_types_name_the_field() {
    let c = JsonConfig::from_value("c.json", json!({"hidden_size": "big", "neg": -1, "z": 0}));
    let e = c.usize(&["hidden_size"]).unwrap_err().to_string();
    assert!(
      e.contains("c.json") && e.contains("hidden_size") && e.contains("integer"),
      "{e}"
    );
    assert!(c.usize(&["neg"]).is_err());
    assert!(
      c.positive(&["z"])
        .unwrap_err()
        .to_string()
        .contains("positive")
    );
    let e = c.usize(&["missing_field"]).unwrap_err().to_string();
    assert!(e.contains("missing_field") && e.contains("missing"), "{e}");
  }

  #[test]
  fn load_rejects_non_objects_and_bad_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.json");
    std::fs::write(&p, "[1, 2]").unwrap();
    assert!(
      JsonConfig::load(&p)
        .unwrap_err()
        .to_string()
        .contains("JSON object")
    );
    std::fs::write(&p, "{not json").unwrap();
    assert!(matches!(JsonConfig::load(&p), Err(Error::Json { .. })));
    assert!(matches!(
      JsonConfig::load(dir.path().join("none.json")),
      Err(Error::Io { .. })
    ));
  }
}
