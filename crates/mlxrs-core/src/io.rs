//! Array files: safetensors (python `mx.load` / `mx.save_safetensors`, swift
//! `loadArrays` / `save(arrays:url:)`) and `.npy` (`mx.load` / `mx.save`).
//!
//! Safetensors headers are validated in Rust before MLX reads the file, so a
//! corrupt or truncated file is an [`Error::Format`] naming the problem
//! rather than a failure deep inside lazy evaluation.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_char;
use std::io::Read;
use std::path::Path;

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result, check, cstring};
use crate::stream::default_stream;

/// Largest safetensors JSON header accepted (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
  /// Element type.
  pub dtype: Dtype,
  /// Dimensions.
  pub shape: Vec<i32>,
  /// Byte range in the data section.
  pub data_offsets: (u64, u64),
}

/// A parsed and validated safetensors header.
#[derive(Debug, Clone, Default)]
pub struct SafetensorsHeader {
  /// Tensors by name.
  pub tensors: BTreeMap<String, TensorInfo>,
  /// The `__metadata__` string map.
  pub metadata: BTreeMap<String, String>,
}

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
  Error::Format { path: path.display().to_string(), msg: msg.into() }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
  Error::Io { path: path.display().to_string(), source: e }
}

/// Read and validate a safetensors file's header: every tensor's dtype is
/// one MLX has, its shape fits `i32`, its byte range matches
/// `numel * itemsize` and lies inside the file.
pub fn read_safetensors_header(path: impl AsRef<Path>) -> Result<SafetensorsHeader> {
  let path = path.as_ref();
  let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
  let file_len = f.metadata().map_err(|e| io_err(path, e))?.len();
  if file_len < 8 {
    return Err(fmt_err(path, format!("not a safetensors file: {file_len} bytes, need at least 8")));
  }
  let mut len_buf = [0u8; 8];
  f.read_exact(&mut len_buf).map_err(|e| io_err(path, e))?;
  let n = u64::from_le_bytes(len_buf);
  if n > MAX_HEADER || n > file_len - 8 {
    return Err(fmt_err(
      path,
      format!("safetensors header length {n} exceeds the file ({file_len} bytes) or the 100 MB limit"),
    ));
  }
  let mut header = vec![0u8; n as usize];
  f.read_exact(&mut header).map_err(|e| io_err(path, e))?;
  let json: serde_json::Value = serde_json::from_slice(&header)
    .map_err(|e| fmt_err(path, format!("safetensors header is not valid JSON: {e}")))?;
  let obj = json
    .as_object()
    .ok_or_else(|| fmt_err(path, "safetensors header is not a JSON object"))?;
  let data_len = file_len - 8 - n;
  let mut out = SafetensorsHeader::default();
  for (name, entry) in obj {
    if name == "__metadata__" {
      let m = entry
        .as_object()
        .ok_or_else(|| fmt_err(path, "__metadata__ is not an object"))?;
      for (k, v) in m {
        let v = v
          .as_str()
          .ok_or_else(|| fmt_err(path, format!("__metadata__[{k:?}] is not a string")))?;
        out.metadata.insert(k.clone(), v.to_string());
      }
      continue;
    }
    let bad = |m: &str| fmt_err(path, format!("tensor {name:?}: {m}"));
    let dtype_s = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("missing dtype"))?;
    let dtype = Dtype::parse(dtype_s)
      .filter(|_| dtype_s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
      .ok_or_else(|| bad(&format!("dtype {dtype_s} is not supported by MLX")))?;
    let shape_v = entry.get("shape").and_then(|s| s.as_array()).ok_or_else(|| bad("missing shape"))?;
    let mut shape = Vec::with_capacity(shape_v.len());
    for d in shape_v {
      let d = d
        .as_u64()
        .filter(|&d| d <= i32::MAX as u64)
        .ok_or_else(|| bad(&format!("invalid dimension {d}")))?;
      shape.push(d as i32);
    }
    let offs = entry
      .get("data_offsets")
      .and_then(|o| o.as_array())
      .filter(|o| o.len() == 2)
      .ok_or_else(|| bad("missing data_offsets [begin, end]"))?;
    let (b, e) = match (offs[0].as_u64(), offs[1].as_u64()) {
      (Some(b), Some(e)) if b <= e => (b, e),
      _ => return Err(bad("data_offsets must be two non-negative integers, begin <= end")),
    };
    if e > data_len {
      return Err(bad(&format!(
        "data ends at byte {e} but the file's data section has {data_len} bytes (truncated file?)"
      )));
    }
    let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let want = numel
      .and_then(|n| n.checked_mul(dtype.size() as u64))
      .ok_or_else(|| bad("shape overflows"))?;
    if e - b != want {
      return Err(bad(&format!(
        "{} bytes of data for shape {shape:?} {dtype} (needs {want})",
        e - b
      )));
    }
    out.tensors.insert(name.clone(), TensorInfo { dtype, shape, data_offsets: (b, e) });
  }
  Ok(out)
}

struct MapArr(mlxrs_sys::mlx_map_string_to_array);
impl Drop for MapArr {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_map_string_to_array_free(self.0) };
  }
}
struct MapStr(mlxrs_sys::mlx_map_string_to_string);
impl Drop for MapStr {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_map_string_to_string_free(self.0) };
  }
}

fn path_cstring(path: &Path) -> Result<std::ffi::CString> {
  let s = path
    .to_str()
    .ok_or_else(|| Error::InvalidArgument(format!("path is not UTF-8: {}", path.display())))?;
  cstring(s)
}

/// Load all tensors of a safetensors file and its metadata (python
/// `mx.load(path, return_metadata=True)`). The header is validated first;
/// tensor data is read lazily by MLX when evaluated.
pub fn load_safetensors(
  path: impl AsRef<Path>,
) -> Result<(HashMap<String, Array>, HashMap<String, String>)> {
  let path = path.as_ref();
  let header = read_safetensors_header(path)?;
  let c_path = path_cstring(path)?;
  let mut arrays = MapArr(mlxrs_sys::mlx_map_string_to_array { ctx: std::ptr::null_mut() });
  let mut meta = MapStr(mlxrs_sys::mlx_map_string_to_string { ctx: std::ptr::null_mut() });
  // SAFETY: the out-handles are owned by the guards above; `c_path` lives
  // across the call; the stream is NULL (default) or a live thread-local one.
  check(unsafe {
    mlxrs_sys::mlx_load_safetensors(&mut arrays.0, &mut meta.0, c_path.as_ptr(), default_stream())
  })
  .map_err(|e| fmt_err(path, e.to_string()))?;
  let mut out = HashMap::with_capacity(header.tensors.len());
  // SAFETY: iterator over the live map owned by `arrays`, freed by the guard.
  let it = unsafe { mlxrs_sys::mlx_map_string_to_array_iterator_new(arrays.0) };
  struct It(mlxrs_sys::mlx_map_string_to_array_iterator);
  impl Drop for It {
    fn drop(&mut self) {
      // SAFETY: owned iterator handle; NULL ctx accepted.
      unsafe { mlxrs_sys::mlx_map_string_to_array_iterator_free(self.0) };
    }
  }
  let it = It(it);
  loop {
    let mut key: *const c_char = std::ptr::null();
    let mut a = Array::null();
    // SAFETY: `it` iterates the live map `arrays`; `key` points into the
    // map (copied out at once) and the value handle is owned by `a`.
    let rc = unsafe { mlxrs_sys::mlx_map_string_to_array_iterator_next(&mut key, &mut a.0, it.0) };
    if rc == 2 {
      break;
    }
    check(rc)?;
    out.insert(crate::array::cstr_to_string(key), a);
  }
  Ok((out, header.metadata.into_iter().collect()))
}

/// Save `arrays` (and string `metadata`) as a safetensors file (python
/// `mx.save_safetensors(path, arrays, metadata)`). Evaluates the arrays.
pub fn save_safetensors(
  path: impl AsRef<Path>,
  arrays: &HashMap<String, Array>,
  metadata: &HashMap<String, String>,
) -> Result<()> {
  let path = path.as_ref();
  let c_path = path_cstring(path)?;
  // SAFETY: fresh owned map handles, freed by the guards.
  let map = MapArr(unsafe { mlxrs_sys::mlx_map_string_to_array_new() });
  // SAFETY: as above.
  let meta = MapStr(unsafe { mlxrs_sys::mlx_map_string_to_string_new() });
  for (k, v) in arrays {
    let ck = cstring(k)?;
    if v.is_null() {
      return Err(Error::InvalidArgument(format!("array {k:?} is an empty handle")));
    }
    // SAFETY: live map and array handles; the key is copied by the C layer.
    check(unsafe { mlxrs_sys::mlx_map_string_to_array_insert(map.0, ck.as_ptr(), v.0) })?;
  }
  for (k, v) in metadata {
    let (ck, cv) = (cstring(k)?, cstring(v)?);
    // SAFETY: live map handle; key and value are copied by the C layer.
    check(unsafe { mlxrs_sys::mlx_map_string_to_string_insert(meta.0, ck.as_ptr(), cv.as_ptr()) })?;
  }
  // SAFETY: live handles and path for the duration of the call.
  check(unsafe { mlxrs_sys::mlx_save_safetensors(c_path.as_ptr(), map.0, meta.0) })
    .map_err(|e| fmt_err(path, e.to_string()))
}

/// Load a `.npy` file (python `mx.load("x.npy")`).
pub fn load_npy(path: impl AsRef<Path>) -> Result<Array> {
  let path = path.as_ref();
  if !path.is_file() {
    return Err(io_err(path, std::io::Error::from(std::io::ErrorKind::NotFound)));
  }
  let c_path = path_cstring(path)?;
  let mut out = Array::null();
  // SAFETY: out-handle owned by `out`; path lives across the call.
  check(unsafe { mlxrs_sys::mlx_load(&mut out.0, c_path.as_ptr(), default_stream()) })
    .map_err(|e| fmt_err(path, e.to_string()))?;
  Ok(out)
}

/// Save an array as `.npy` (python `mx.save("x.npy", a)`).
pub fn save_npy(path: impl AsRef<Path>, array: &Array) -> Result<()> {
  let path = path.as_ref();
  let c_path = path_cstring(path)?;
  if array.is_null() {
    return Err(Error::InvalidArgument("empty array handle".into()));
  }
  // SAFETY: live handle and path for the duration of the call.
  check(unsafe { mlxrs_sys::mlx_save(c_path.as_ptr(), array.0) }).map_err(|e| fmt_err(path, e.to_string()))
}

#[cfg(test)]
mod tests {
  use super::*;

  fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mlxrs-io-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
  }

  /// Writes a safetensors file by hand (the format: u64 LE header length,
  /// JSON header, raw little-endian data).
  fn write_raw(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
  }

  #[test]
  fn round_trip_with_metadata() {
    let p = tmp("rt.safetensors");
    let a = Array::from_slice::<f32>(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &(2, 3)).unwrap();
    let b = Array::from_slice::<i32>(&[7, 8], &(2,)).unwrap();
    let arrays = HashMap::from([("a".to_string(), a), ("b.c".to_string(), b)]);
    let meta = HashMap::from([("format".to_string(), "mlx".to_string())]);
    save_safetensors(&p, &arrays, &meta).unwrap();
    let (mut got, got_meta) = load_safetensors(&p).unwrap();
    assert_eq!(got_meta.get("format").map(String::as_str), Some("mlx"));
    let ga = got.get_mut("a").unwrap();
    assert_eq!(ga.shape(), vec![2, 3]);
    assert_eq!(ga.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(got.get_mut("b.c").unwrap().to_vec::<i32>().unwrap(), vec![7, 8]);
  }

  /// A hand-written file: one F32 tensor of shape [2] = bytes of 1.5, -2.0.
  #[test]
  fn reads_hand_written_file() {
    let p = tmp("hand.safetensors");
    let mut data = 1.5f32.to_le_bytes().to_vec();
    data.extend_from_slice(&(-2.0f32).to_le_bytes());
    write_raw(&p, r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &data);
    let (mut m, _) = load_safetensors(&p).unwrap();
    assert_eq!(m.get_mut("x").unwrap().to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
  }

  fn expect_format_err(header: &str, data: &[u8], needle: &str) {
    let p = tmp(&format!("bad-{}.safetensors", needle.replace(' ', "_")));
    write_raw(&p, header, data);
    match load_safetensors(&p) {
      Err(Error::Format { msg, .. }) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
      other => panic!("expected a format error containing {needle:?}, got {other:?}"),
    }
  }

  #[test]
  fn corrupt_files_are_errors() {
    expect_format_err("not json", &[], "not valid JSON");
    expect_format_err(r#"[1,2]"#, &[], "not a JSON object");
    expect_format_err(r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8], "truncated");
    expect_format_err(r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8], "needs 12");
    expect_format_err(r#"{"x":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}"#, &[0; 1], "not supported");
    expect_format_err(r#"{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#, &[], "invalid dimension");
    expect_format_err(r#"{"x":{"dtype":"F32","shape":[1]}}"#, &[], "data_offsets");
    // Header length larger than the file.
    let p = tmp("short.safetensors");
    std::fs::write(&p, 1000u64.to_le_bytes()).unwrap();
    assert!(matches!(load_safetensors(&p), Err(Error::Format { .. })));
    // Fewer than 8 bytes.
    std::fs::write(&p, [1u8, 2]).unwrap();
    assert!(matches!(load_safetensors(&p), Err(Error::Format { .. })));
    // Missing file.
    assert!(matches!(load_safetensors(tmp("missing.safetensors")), Err(Error::Io { .. })));
  }

  #[test]
  fn npy_round_trip() {
    let p = tmp("a.npy");
    let a = Array::from_slice::<f32>(&[0.5, 1.5, 2.5], &(3, 1)).unwrap();
    save_npy(&p, &a).unwrap();
    let mut b = load_npy(&p).unwrap();
    assert_eq!(b.shape(), vec![3, 1]);
    assert_eq!(b.to_vec::<f32>().unwrap(), vec![0.5, 1.5, 2.5]);
    std::fs::write(&p, b"garbage").unwrap();
    assert!(load_npy(&p).is_err());
  }
}
