//! The one error type of mlxrs-lm. Python mlx-lm / transformers raise
//! `FileNotFoundError`, `json.JSONDecodeError`, `KeyError`, `ValueError` or
//! `jinja2.TemplateError` from their loaders; here every failure is an
//! [`Error`] value that names the file, field or template at fault, and
//! nothing panics.

use std::path::{Path, PathBuf};

/// Errors from loading and driving language-model checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  /// A file could not be read (missing, unreadable, ...).
  #[error("{}: {source}", path.display())]
  Io {
    /// The file.
    path: PathBuf,
    /// The cause.
    #[source]
    source: std::io::Error,
  },
  /// A file is not valid UTF-8 text.
  #[error("{}: not valid UTF-8 text ({source})", path.display())]
  Utf8 {
    /// The file.
    path: PathBuf,
    /// The cause.
    #[source]
    source: std::str::Utf8Error,
  },
  /// A JSON file could not be parsed.
  #[error("{}: invalid JSON: {source}", path.display())]
  Json {
    /// The file.
    path: PathBuf,
    /// The cause.
    #[source]
    source: serde_json::Error,
  },
  /// A configuration field is missing or has the wrong type / value.
  #[error("{}: field `{field}`: {message}", path.display())]
  Config {
    /// The file the field was read from.
    path: PathBuf,
    /// The field (a dotted path such as `text_config.model_type`).
    field: String,
    /// What is wrong with it.
    message: String,
  },
  /// The tokenizer could not be loaded or failed to encode / decode.
  #[error("tokenizer{}: {message}", path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
  Tokenizer {
    /// The tokenizer file involved, when there is one.
    path: Option<PathBuf>,
    /// What went wrong.
    message: String,
  },
  /// A chat template failed to compile or render.
  #[error("chat template `{name}`: {message}")]
  Template {
    /// The template's name (`default`, `tool_use`, or `<inline>`).
    name: String,
    /// The template engine's message, with the line where known.
    message: String,
  },
  /// The checkpoint's `model_type` has no implementation.
  #[error("unsupported model type `{model_type}` (supported: {})", supported.join(", "))]
  UnsupportedModelType {
    /// The `model_type` read from `config.json`.
    model_type: String,
    /// The model types this build supports.
    supported: Vec<String>,
  },
  /// A model could not be located locally or on the Hugging Face Hub.
  #[error("model `{model}`: {message}")]
  Hub {
    /// The model argument (a folder or an `org/name` repo id).
    model: String,
    /// What was missing or failed.
    message: String,
  },
  /// A caller-supplied argument is invalid (an unknown token, ...).
  #[error("invalid argument: {0}")]
  InvalidArgument(String),
  /// An error from mlxrs-core (MLX itself).
  #[error(transparent)]
  Core(#[from] mlxrs_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
  /// An [`Error::UnsupportedModelType`] listing `supported` (the model
  /// registry's list, as mlx-lm's `_get_classes` reports
  /// `Model type {model_type} not supported.`).
  pub fn unsupported_model_type(model_type: &str, supported: &[&str]) -> Self {
    Error::UnsupportedModelType {
      model_type: model_type.to_string(),
      supported: supported.iter().map(|s| s.to_string()).collect(),
    }
  }

  /// An [`Error::Config`] for `field` of the file at `path`.
  pub fn config(
    path: impl AsRef<Path>,
    field: impl Into<String>,
    message: impl Into<String>,
  ) -> Self {
    Error::Config {
      path: path.as_ref().to_path_buf(),
      field: field.into(),
      message: message.into(),
    }
  }

  pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
    Error::Io {
      path: path.as_ref().to_path_buf(),
      source,
    }
  }

  pub(crate) fn tokenizer(path: Option<&Path>, message: impl Into<String>) -> Self {
    Error::Tokenizer {
      path: path.map(Path::to_path_buf),
      message: message.into(),
    }
  }

  pub(crate) fn hub(model: &str, message: impl Into<String>) -> Self {
    Error::Hub {
      model: model.to_string(),
      message: message.into(),
    }
  }
}

/// Read a whole file as UTF-8 text; errors name the file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
  let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
  match String::from_utf8(bytes) {
    Ok(s) => Ok(s),
    Err(e) => Err(Error::Utf8 {
      path: path.to_path_buf(),
      source: e.utf8_error(),
    }),
  }
}

/// Read and parse a JSON file; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
  let text = read_text(path)?;
  parse_json(path, &text)
}

/// Parse JSON text read from `path`. Python's `json.load` also accepts the
/// bare `NaN`, `Infinity` and `-Infinity` literals some configs contain;
/// those are rewritten to transformers' tagged form
/// `{"__float__": "Infinity"}`, which the typed accessors understand.
pub(crate) fn parse_json(path: &Path, text: &str) -> Result<serde_json::Value> {
  match serde_json::from_str(text) {
    Ok(v) => Ok(v),
    Err(first) => match tag_bare_non_finite(text) {
      Some(tagged) => serde_json::from_str(&tagged).map_err(|_| Error::Json {
        path: path.to_path_buf(),
        source: first,
      }),
      None => Err(Error::Json {
        path: path.to_path_buf(),
        source: first,
      }),
    },
  }
}

/// Replace `NaN`, `Infinity` and `-Infinity` outside strings with tagged
/// objects; `None` when there are none.
fn tag_bare_non_finite(text: &str) -> Option<String> {
  let mut out = String::with_capacity(text.len());
  let mut changed = false;
  let mut in_string = false;
  let mut escaped = false;
  let mut rest = text;
  while let Some(c) = rest.chars().next() {
    if in_string {
      out.push(c);
      if escaped {
        escaped = false;
      } else if c == '\\' {
        escaped = true;
      } else if c == '"' {
        in_string = false;
      }
      rest = &rest[c.len_utf8()..];
      continue;
    }
    let tags = [
      ("-Infinity", "-Infinity"),
      ("Infinity", "Infinity"),
      ("NaN", "NaN"),
    ];
    if let Some((lit, tag)) = tags.iter().find(|(lit, _)| rest.starts_with(lit)) {
      out.push_str(&format!("{{\"__float__\": \"{tag}\"}}"));
      rest = &rest[lit.len()..];
      changed = true;
      continue;
    }
    if c == '"' {
      in_string = true;
    }
    out.push(c);
    rest = &rest[c.len_utf8()..];
  }
  changed.then_some(out)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn bare_non_finite_literals_are_tagged() {
    let v = parse_json(
      Path::new("x.json"),
      r#"{"a": NaN, "b": [-Infinity, "NaN"]}"#,
    )
    .unwrap();
    assert_eq!(v["a"]["__float__"], "NaN");
    assert_eq!(v["b"][0]["__float__"], "-Infinity");
    assert_eq!(v["b"][1], "NaN");
  }

  #[test]
  fn invalid_json_names_the_file() {
    let e = parse_json(Path::new("dir/config.json"), "{not json").unwrap_err();
    let msg = e.to_string();
    assert!(
      msg.contains("dir/config.json") && msg.contains("invalid JSON"),
      "{msg}"
    );
  }

  #[test]
  fn unsupported_model_type_lists_supported() {
    let e = Error::unsupported_model_type("foo", &["llama", "qwen2"]);
    assert_eq!(
      e.to_string(),
      "unsupported model type `foo` (supported: llama, qwen2)"
    );
  }
}
