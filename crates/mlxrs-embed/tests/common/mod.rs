//! Shared helpers of the mlxrs-embed integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mlxrs_core::io::load_safetensors;

/// `models/tiny-embed/<arch>` of the repository.
pub fn tiny(arch: &str) -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR"))
    .join("../../models/tiny-embed")
    .join(arch)
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

/// A float32 tensor of a reference safetensors file, flattened, with its shape.
pub fn tensor(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
  let (mut m, _) = load_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
  let a = m
    .get_mut(name)
    .unwrap_or_else(|| panic!("{}: no tensor {name}", path.display()));
  let shape = a.shape().iter().map(|&d| d as usize).collect();
  (a.to_vec::<f32>().unwrap(), shape)
}

/// Rows of a `[n, d]` flat buffer.
pub fn rows(flat: &[f32], d: usize) -> Vec<Vec<f32>> {
  flat.chunks(d).map(<[f32]>::to_vec).collect()
}

/// Token-id lists of a reference JSON field.
pub fn id_lists(v: &serde_json::Value) -> Vec<Vec<u32>> {
  v.as_array()
    .expect("list")
    .iter()
    .map(|r| {
      r.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
    })
    .collect()
}

/// Strings of a reference JSON field.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
  v.as_array()
    .expect("list")
    .iter()
    .map(|s| s.as_str().expect("string").to_string())
    .collect()
}

/// Read a JSON file.
pub fn json(path: &Path) -> serde_json::Value {
  serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    .unwrap()
}

/// max |a - b|.
pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
  assert_eq!(a.len(), b.len());
  a.iter()
    .zip(b)
    .map(|(x, y)| (x - y).abs())
    .fold(0.0, f32::max)
}
