//! The one error type of mlxrs-vlm. mlx-vlm / transformers raise
//! `PIL.UnidentifiedImageError`, `ValueError` or `IndexError` from their
//! image loaders and processors; here every failure is an [`Error`] value
//! that names the image, file or field at fault, and nothing panics.

use std::path::PathBuf;

/// Errors from loading images, processing prompts and running VLMs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  /// An image could not be read or decoded (missing file, corrupt data,
  /// unsupported format, zero size, ...).
  #[error("image {source_name}: {message}")]
  Image {
    /// The file path, or a description such as `<bytes>`.
    source_name: String,
    /// What is wrong with it.
    message: String,
  },
  /// A processor setting (`preprocessor_config.json`, ...) is missing or
  /// invalid.
  #[error("{}: field `{field}`: {message}", path.display())]
  Config {
    /// The file the field was read from.
    path: PathBuf,
    /// The field.
    field: String,
    /// What is wrong with it.
    message: String,
  },
  /// The prompt and the images do not fit together (placeholder count,
  /// image on a text-only model, ...), or another caller argument is
  /// invalid.
  #[error("invalid input: {0}")]
  InvalidInput(String),
  /// The checkpoint's `model_type` has no vision-language implementation.
  #[error("model type `{model_type}` is not a supported vision-language model (supported: {})", supported.join(", "))]
  UnsupportedModelType {
    /// The `model_type` read from `config.json`.
    model_type: String,
    /// The model types this build supports.
    supported: Vec<String>,
  },
  /// An error from mlxrs-lm (config, tokenizer, chat template, generation).
  #[error(transparent)]
  Lm(#[from] mlxrs_lm::Error),
  /// An error from mlxrs-core (MLX itself).
  #[error(transparent)]
  Core(#[from] mlxrs_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
  /// An [`Error::Image`] for the image named `source_name`.
  pub fn image(source_name: impl Into<String>, message: impl Into<String>) -> Self {
    Error::Image {
      source_name: source_name.into(),
      message: message.into(),
    }
  }

  /// An [`Error::Config`] for `field` of the file at `path`.
  pub fn config(
    path: impl Into<PathBuf>,
    field: impl Into<String>,
    message: impl Into<String>,
  ) -> Self {
    Error::Config {
      path: path.into(),
      field: field.into(),
      message: message.into(),
    }
  }

  /// An [`Error::InvalidInput`].
  pub fn invalid(message: impl Into<String>) -> Self {
    Error::InvalidInput(message.into())
  }
}

impl From<Error> for mlxrs_lm::Error {
  /// Carry a VLM error through mlxrs-lm's generation API (which returns
  /// [`mlxrs_lm::Error`]).
  fn from(e: Error) -> Self {
    match e {
      Error::Lm(e) => e,
      Error::Core(e) => mlxrs_lm::Error::Core(e),
      other => mlxrs_lm::Error::InvalidArgument(other.to_string()),
    }
  }
}
