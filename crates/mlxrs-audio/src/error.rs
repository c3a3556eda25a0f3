//! The error type of mlxrs-audio.

use std::path::PathBuf;

/// Everything that can go wrong loading audio, a model, or transcribing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  /// An MLX operation failed.
  #[error(transparent)]
  Mlx(#[from] mlxrs_core::Error),
  /// A file could not be read.
  #[error("{path}: {source}")]
  Io {
    /// The file.
    path: PathBuf,
    /// The cause.
    source: std::io::Error,
  },
  /// The audio could not be decoded (not audio, empty, truncated, unsupported codec...).
  #[error("{0}")]
  Audio(String),
  /// A model folder or file is malformed or unsupported.
  #[error("{0}")]
  Model(String),
  /// A bad argument (option value, input shape, ...).
  #[error("{0}")]
  InvalidArgument(String),
  /// The tokenizer failed.
  #[error("tokenizer: {0}")]
  Tokenizer(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
  let path = path.into();
  move |source| Error::Io { path, source }
}
