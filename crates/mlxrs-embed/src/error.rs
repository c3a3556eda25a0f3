//! The one error type of mlxrs-embed. Python sentence-transformers raises
//! `OSError`, `ValueError`, `KeyError` or a tokenizer `Exception` from its
//! loaders and `encode`; here every failure is an [`Error`] value naming the
//! file, field or input at fault, and nothing panics.

use std::path::{Path, PathBuf};

/// Errors from loading and running embedding models.
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
    /// The field (a dotted path such as `rope_parameters.rope_theta`).
    field: String,
    /// What is wrong with it.
    message: String,
  },
  /// A model folder is unusable as a whole (no `config.json`, a module
  /// folder `modules.json` lists is missing, ...).
  #[error("{}: {message}", path.display())]
  Folder {
    /// The folder or file.
    path: PathBuf,
    /// What is wrong.
    message: String,
  },
  /// `config.json` names a `model_type` mlxrs-embed has no implementation of.
  #[error(
    "{}: unsupported architecture (model_type) {model_type:?}; supported: {}",
    path.display(),
    crate::models::SUPPORTED.join(", ")
  )]
  UnsupportedArchitecture {
    /// The `config.json`.
    path: PathBuf,
    /// The `model_type` found there.
    model_type: String,
  },
  /// The tokenizer could not be loaded or failed to encode.
  #[error("tokenizer{}: {message}", path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
  Tokenizer {
    /// The tokenizer file involved, when there is one.
    path: Option<PathBuf>,
    /// What went wrong.
    message: String,
  },
  /// A weight the architecture needs is absent or has the wrong shape.
  #[error("{}: weight `{name}`: {message}", path.display())]
  Weight {
    /// The weights file (or folder).
    path: PathBuf,
    /// The tensor name.
    name: String,
    /// What is wrong.
    message: String,
  },
  /// An input is longer than the model accepts and truncation is off.
  #[error(
    "input {index} has {tokens} tokens, more than the maximum sequence length {limit}; \
     enable truncation (EmbedOptions::truncate / --truncate) or shorten it"
  )]
  InputTooLong {
    /// Position of the input in the batch given to `embed`.
    index: usize,
    /// Its token count (special tokens included).
    tokens: usize,
    /// The limit.
    limit: usize,
  },
  /// An input text file is not usable (invalid UTF-8, ...).
  #[error("{}:{line}: {message}", path.display())]
  InputFile {
    /// The file.
    path: PathBuf,
    /// 1-based line number.
    line: usize,
    /// What is wrong.
    message: String,
  },
  /// A bad argument (unknown prompt name, zero batch size, ...).
  #[error("invalid argument: {0}")]
  InvalidArgument(String),
  /// MLX (or mlxrs-core) failed.
  #[error(transparent)]
  Mlx(#[from] mlxrs_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
  pub(crate) fn config(path: &Path, field: &str, message: impl Into<String>) -> Error {
    Error::Config {
      path: path.to_path_buf(),
      field: field.to_string(),
      message: message.into(),
    }
  }

  pub(crate) fn folder(path: &Path, message: impl Into<String>) -> Error {
    Error::Folder {
      path: path.to_path_buf(),
      message: message.into(),
    }
  }

  pub(crate) fn weight(path: &Path, name: &str, message: impl Into<String>) -> Error {
    Error::Weight {
      path: path.to_path_buf(),
      name: name.to_string(),
      message: message.into(),
    }
  }
}

/// Read a JSON file into a `serde_json::Value`.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
  let bytes = std::fs::read(path).map_err(|source| Error::Io {
    path: path.to_path_buf(),
    source,
  })?;
  serde_json::from_slice(&bytes).map_err(|source| Error::Json {
    path: path.to_path_buf(),
    source,
  })
}
