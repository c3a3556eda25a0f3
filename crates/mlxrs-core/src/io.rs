//! Array files: safetensors (python `mx.load` / `mx.save_safetensors`, swift
//! `loadArrays` / `save(arrays:url:)`), GGUF (`mx.load` / `mx.save_gguf`) and
//! `.npy` (`mx.load` / `mx.save`), from paths or from Rust streams
//! (`load_safetensors_from`, `save_safetensors_to`, `load_npy_from`,
//! `save_npy_to`: python's file-object forms).
//!
//! Safetensors and GGUF headers are validated in Rust before MLX reads the
//! file, so a corrupt or truncated file is an [`Error::Format`] naming the
//! problem rather than a failure deep inside lazy evaluation (or, for GGUF,
//! a crash inside MLX's parser, which trusts the file).

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_char;
use std::io::Read;
use std::path::Path;

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result, check, cstring};
use crate::stream::default_stream;

pub mod gguf_blocks;
mod stream;
pub use stream::{load_npy_from, load_safetensors_from, save_npy_to, save_safetensors_to};

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
  Error::Format {
    path: path.display().to_string(),
    msg: msg.into(),
  }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
  Error::Io {
    path: path.display().to_string(),
    source: e,
  }
}

/// Read and validate a safetensors file's header, strictly: the JSON is an
/// object without duplicated names (top level and `__metadata__`); the
/// `safetensors` crate's metadata parsing and validation (known dtype,
/// non-negative shape, `shape x dtype size == byte range`, byte ranges
/// contiguous from 0 with no overlap or gap); the ranges cover the data
/// section exactly (no truncation, no trailing bytes); and, for MLX, every
/// dtype is one MLX has and every dimension fits `i32`.
pub fn read_safetensors_header(path: impl AsRef<Path>) -> Result<SafetensorsHeader> {
  let path = path.as_ref();
  let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
  let file_len = f.metadata().map_err(|e| io_err(path, e))?.len();
  header_from(&mut f, file_len, path)
}

/// The header's top-level entries in file order, duplicates kept (a serde
/// map visitor sees every key; `serde_json::Value` and the `safetensors`
/// crate's `HashMap` keep only the last of a repeated name).
struct RawHeader {
  tensors: Vec<(String, safetensors::tensor::TensorInfo)>,
  metadata: Option<Vec<(String, String)>>,
}

/// `__metadata__`: `null` or an object of strings, duplicates kept.
struct RawMeta(Option<Vec<(String, String)>>);

impl<'de> serde::Deserialize<'de> for RawMeta {
  fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
      type Value = RawMeta;
      fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null or an object of strings")
      }
      fn visit_unit<E>(self) -> std::result::Result<RawMeta, E> {
        Ok(RawMeta(None))
      }
      fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut m: A,
      ) -> std::result::Result<RawMeta, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = m.next_key::<String>()? {
          let v = m
            .next_value::<String>()
            .map_err(|e| serde::de::Error::custom(format!("__metadata__[{k:?}]: {e}")))?;
          out.push((k, v));
        }
        Ok(RawMeta(Some(out)))
      }
    }
    d.deserialize_any(V)
  }
}

impl<'de> serde::Deserialize<'de> for RawHeader {
  fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
      type Value = RawHeader;
      fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
      }
      fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut m: A,
      ) -> std::result::Result<RawHeader, A::Error> {
        let mut out = RawHeader {
          tensors: Vec::new(),
          metadata: None,
        };
        while let Some(k) = m.next_key::<String>()? {
          if k == "__metadata__" {
            if out.metadata.is_some() {
              return Err(serde::de::Error::custom("duplicated \"__metadata__\""));
            }
            out.metadata = Some(m.next_value::<RawMeta>()?.0.unwrap_or_default());
            continue;
          }
          let info = m
            .next_value::<safetensors::tensor::TensorInfo>()
            .map_err(|e| serde::de::Error::custom(format!("tensor {k:?}: {e}")))?;
          out.tensors.push((k, info));
        }
        Ok(out)
      }
    }
    d.deserialize_any(V)
  }
}

/// The first name that appears twice in `names`.
fn first_duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
  let mut seen = std::collections::HashSet::new();
  names.into_iter().find(|n| !seen.insert(*n))
}

/// Why the `safetensors` crate rejected `tensors` (sorted by offset): its
/// errors do not name the tensor or the sizes, so find them.
fn explain_invalid(
  e: safetensors::SafeTensorError,
  tensors: &[(String, safetensors::tensor::TensorInfo)],
) -> String {
  use safetensors::SafeTensorError as E;
  match e {
    E::InvalidOffset(name) => {
      let (b, e) = tensors
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t.data_offsets)
        .unwrap_or((0, 0));
      format!(
        "tensor {name:?}: data_offsets [{b}, {e}] overlap another tensor or leave a gap (byte ranges must be contiguous from 0)"
      )
    }
    E::TensorInvalidInfo | E::MisalignedSlice | E::ValidationOverflow => {
      for (name, t) in tensors {
        let bits = t
          .shape
          .iter()
          .try_fold(1usize, |a, &d| a.checked_mul(d))
          .and_then(|n| n.checked_mul(t.dtype.bitsize()));
        let (b, en) = t.data_offsets;
        match bits {
          None => return format!("tensor {name:?}: shape {:?} overflows", t.shape),
          Some(bits) if bits % 8 != 0 || en - b != bits / 8 => {
            return format!(
              "tensor {name:?}: {} bytes of data for shape {:?} {:?} (needs {})",
              en - b,
              t.shape,
              t.dtype,
              bits.div_ceil(8)
            );
          }
          _ => {}
        }
      }
      e.to_string()
    }
    other => other.to_string(),
  }
}

/// [`read_safetensors_header`] over any reader positioned at the start of a
/// safetensors stream of `file_len` bytes (`path` names it in errors).
pub(crate) fn header_from(
  f: &mut impl Read,
  file_len: u64,
  path: &Path,
) -> Result<SafetensorsHeader> {
  if file_len < 8 {
    return Err(fmt_err(
      path,
      format!("not a safetensors file: {file_len} bytes, need at least 8"),
    ));
  }
  let mut len_buf = [0u8; 8];
  f.read_exact(&mut len_buf).map_err(|e| io_err(path, e))?;
  let n = u64::from_le_bytes(len_buf);
  if n > MAX_HEADER || n > file_len - 8 {
    return Err(fmt_err(
      path,
      format!(
        "safetensors header length {n} exceeds the file ({file_len} bytes) or the 100 MB limit"
      ),
    ));
  }
  let mut header = vec![0u8; n as usize];
  f.read_exact(&mut header).map_err(|e| io_err(path, e))?;
  if serde_json::from_slice::<serde::de::IgnoredAny>(&header).is_err() {
    let e = serde_json::from_slice::<serde_json::Value>(&header)
      .err()
      .map(|e| e.to_string())
      .unwrap_or_default();
    return Err(fmt_err(
      path,
      format!("safetensors header is not valid JSON: {e}"),
    ));
  }
  if !header.trim_ascii_start().starts_with(b"{") {
    return Err(fmt_err(path, "safetensors header is not a JSON object"));
  }
  let raw: RawHeader = serde_json::from_slice(&header)
    .map_err(|e| fmt_err(path, format!("invalid safetensors header: {e}")))?;
  // What serde maps would hide: a repeated name silently keeps the last.
  if let Some(d) = first_duplicate(raw.tensors.iter().map(|(n, _)| n.as_str())) {
    return Err(fmt_err(
      path,
      format!("tensor name {d:?} appears twice in the safetensors header"),
    ));
  }
  let meta = raw.metadata.unwrap_or_default();
  if let Some(d) = first_duplicate(meta.iter().map(|(k, _)| k.as_str())) {
    return Err(fmt_err(
      path,
      format!("__metadata__ key {d:?} appears twice in the safetensors header"),
    ));
  }
  // The safetensors crate's validation: sizes and contiguous offsets.
  let mut tensors = raw.tensors;
  tensors.sort_by_key(|(_, t)| t.data_offsets);
  let metadata = safetensors::tensor::Metadata::new(None, tensors.clone())
    .map_err(|e| fmt_err(path, explain_invalid(e, &tensors)))?;
  let data_len = file_len - 8 - n;
  let end = metadata.data_len() as u64;
  if end > data_len {
    let (name, t) = tensors.last().expect("end > 0 means a tensor");
    return Err(fmt_err(
      path,
      format!(
        "tensor {name:?}: data ends at byte {} but the file's data section has {data_len} bytes (truncated file?)",
        t.data_offsets.1
      ),
    ));
  }
  if end < data_len {
    return Err(fmt_err(
      path,
      format!(
        "{} trailing bytes after the last tensor's data (data section {data_len} bytes, tensors cover {end})",
        data_len - end
      ),
    ));
  }
  let mut out = SafetensorsHeader {
    metadata: meta.into_iter().collect(),
    ..Default::default()
  };
  for (name, t) in tensors {
    let bad = |m: &str| fmt_err(path, format!("tensor {name:?}: {m}"));
    let dtype_s = format!("{:?}", t.dtype);
    let dtype = Dtype::parse(&dtype_s)
      .ok_or_else(|| bad(&format!("dtype {dtype_s} is not supported by MLX")))?;
    let mut shape = Vec::with_capacity(t.shape.len());
    for &d in &t.shape {
      if d > i32::MAX as usize {
        return Err(bad(&format!("invalid dimension {d} (MLX needs < 2^31)")));
      }
      shape.push(d as i32);
    }
    let (b, e) = t.data_offsets;
    out.tensors.insert(
      name,
      TensorInfo {
        dtype,
        shape,
        data_offsets: (b as u64, e as u64),
      },
    );
  }
  Ok(out)
}

pub(crate) struct MapArr(pub(crate) mlxrs_sys::mlx_map_string_to_array);
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
  let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
  let validated = f.metadata().map_err(|e| io_err(path, e))?;
  let header = header_from(&mut f, validated.len(), path)?;
  let c_path = path_cstring(path)?;
  let mut arrays = MapArr(mlxrs_sys::mlx_map_string_to_array {
    ctx: std::ptr::null_mut(),
  });
  let mut meta = MapStr(mlxrs_sys::mlx_map_string_to_string {
    ctx: std::ptr::null_mut(),
  });
  // SAFETY: the out-handles are owned by the guards above; `c_path` lives
  // across the call; the stream is NULL (default) or a live thread-local one.
  check(unsafe {
    mlxrs_sys::mlx_load_safetensors(
      &mut arrays.0,
      &mut meta.0,
      c_path.as_ptr(),
      default_stream(),
    )
  })
  .map_err(|e| fmt_err(path, e.to_string()))?;
  // MLX opened the path itself: if another file was renamed over it after
  // the validation (an atomic writer), MLX may hold the new file and the
  // header checked above the old one. Never mix them.
  #[cfg(unix)]
  {
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if (now.dev(), now.ino()) != (validated.dev(), validated.ino()) {
      return Err(fmt_err(
        path,
        "the file was replaced while it was being loaded; load it again",
      ));
    }
  }
  let out = map_entries(&arrays, header.tensors.len())?;
  Ok((out, header.metadata.into_iter().collect()))
}

/// The entries of a C map of arrays.
fn map_entries(arrays: &MapArr, n: usize) -> Result<HashMap<String, Array>> {
  map_entries_raw(arrays.0, n)
}

/// The entries of a live (borrowed) C map of arrays, `n` a capacity hint.
pub(crate) fn map_entries_raw(
  arrays: mlxrs_sys::mlx_map_string_to_array,
  n: usize,
) -> Result<HashMap<String, Array>> {
  let mut out = HashMap::with_capacity(n);
  if arrays.ctx.is_null() {
    return Ok(out);
  }
  // SAFETY: iterator over the live map `arrays` (the caller keeps it alive),
  // freed by the guard.
  let it = unsafe { mlxrs_sys::mlx_map_string_to_array_iterator_new(arrays) };
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
  Ok(out)
}

/// Save `arrays` (and string `metadata`) as a safetensors file (python
/// `mx.save_safetensors(path, arrays, metadata)`). Evaluates the arrays.
///
/// The file is written atomically ([`crate::atomic::atomic_write_with`]): a
/// temporary file beside `path`, `fsync`, rename. Unlike python, `path` is
/// used as given (MLX appends `.safetensors` to a name without that
/// extension; mlxrs writes exactly the file it is told to).
pub fn save_safetensors(
  path: impl AsRef<Path>,
  arrays: &HashMap<String, Array>,
  metadata: &HashMap<String, String>,
) -> Result<()> {
  let path = path.as_ref();
  crate::atomic::atomic_write_with(path, |f| {
    save_safetensors_to(f, arrays, metadata).map_err(|e| match e {
      Error::Io { source, .. } => io_err(path, source),
      e => fmt_err(path, e.to_string()),
    })
  })
}

/// `arrays` as a C map.
pub(crate) fn c_array_map(arrays: &HashMap<String, Array>) -> Result<MapArr> {
  // SAFETY: fresh owned map handle, freed by the guard.
  let map = MapArr(unsafe { mlxrs_sys::mlx_map_string_to_array_new() });
  for (k, v) in arrays {
    let ck = cstring(k)?;
    if v.is_null() {
      return Err(Error::InvalidArgument(format!(
        "array {k:?} is an empty handle"
      )));
    }
    // SAFETY: live map and array handles; the key is copied by the C layer.
    check(unsafe { mlxrs_sys::mlx_map_string_to_array_insert(map.0, ck.as_ptr(), v.0) })?;
  }
  Ok(map)
}

/// `arrays` and `metadata` as C maps.
fn c_maps(
  arrays: &HashMap<String, Array>,
  metadata: &HashMap<String, String>,
) -> Result<(MapArr, MapStr)> {
  let map = c_array_map(arrays)?;
  // SAFETY: fresh owned map handle, freed by the guard.
  let meta = MapStr(unsafe { mlxrs_sys::mlx_map_string_to_string_new() });
  for (k, v) in metadata {
    let (ck, cv) = (cstring(k)?, cstring(v)?);
    // SAFETY: live map handle; key and value are copied by the C layer.
    check(unsafe { mlxrs_sys::mlx_map_string_to_string_insert(meta.0, ck.as_ptr(), cv.as_ptr()) })?;
  }
  Ok((map, meta))
}

/// Load a `.npy` file (python `mx.load("x.npy")`).
pub fn load_npy(path: impl AsRef<Path>) -> Result<Array> {
  let path = path.as_ref();
  if !path.is_file() {
    return Err(io_err(
      path,
      std::io::Error::from(std::io::ErrorKind::NotFound),
    ));
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
  if array.is_null() {
    return Err(Error::InvalidArgument("empty array handle".into()));
  }
  if path.extension().is_none_or(|e| e != "npy") {
    return Err(Error::InvalidArgument(format!(
      ".npy file name must end in .npy (MLX would append it): {}",
      path.display()
    )));
  }
  // Written atomically: a temporary `.npy` beside `path`, then renamed.
  crate::atomic::atomic_write_to_path(path, |tmp| {
    let c_path = path_cstring(tmp)?;
    let _lock = crate::eval_lock::eval_guard();
    // SAFETY: live handle and path for the duration of the call.
    check(unsafe { mlxrs_sys::mlx_save(c_path.as_ptr(), array.0) })
      .map_err(|e| fmt_err(path, e.to_string()))
  })
}

// ---------------------------------------------------------------- gguf

/// GGUF metadata value types (the GGUF spec's `gguf_metadata_value_type`).
const GGUF_UINT32: u32 = 4;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;
const GGUF_FLOAT64: u32 = 12;

/// Longest key / tensor name accepted (GGUF keys are short ASCII paths).
const GGUF_MAX_NAME: u64 = 1 << 20;
/// gguflib's `GGUF_TENSOR_MAX_DIM` (MLX aborts the process above it).
const GGUF_MAX_DIM: u32 = 8;

/// A GGUF metadata value, as MLX loads and saves it (python: the values of
/// the metadata dict of `mx.load("f.gguf", return_metadata=True)`; C++
/// `GGUFMetaData`).
///
/// Numbers and numeric lists are arrays (a GGUF scalar is a 0-d array, a
/// list a 1-d one); MLX saves arrays of `float32`, `bool` and the 8- to
/// 64-bit integer types, of at most one dimension and not empty.
#[derive(Debug, Clone)]
pub enum GgufMeta {
  /// A number (0-d) or a list of numbers (1-d).
  Array(Array),
  /// A string (GGUF strings are bytes; invalid UTF-8 is replaced on load).
  String(String),
  /// A list of strings (e.g. `tokenizer.ggml.tokens`).
  Strings(Vec<String>),
}

/// The type of one metadata value in a GGUF header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufValueType {
  /// A scalar of GGUF value type `t` (`0..=7`, `10`, `11`).
  Scalar(u32),
  /// A string of `len` bytes.
  String(u64),
  /// A list of `len` values of type `elem`.
  Array {
    /// Element value type.
    elem: u32,
    /// Number of elements.
    len: u64,
  },
}

/// One tensor's entry in a GGUF header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
  /// GGML tensor type id (`0` f32, `1` f16, `2` q4_0, ...).
  pub ggml_type: u32,
  /// Its name (`"f32"`, `"q4_0"`, ...).
  pub type_name: &'static str,
  /// Dimensions in MLX (row-major) order, i.e. GGUF's reversed.
  pub shape: Vec<i32>,
  /// Absolute byte offset of the data in the file.
  pub offset: u64,
  /// Bytes of data.
  pub nbytes: u64,
}

/// A parsed and validated GGUF header.
#[derive(Debug, Clone, Default)]
pub struct GgufHeader {
  /// Format version (2 or 3).
  pub version: u32,
  /// Data alignment (`general.alignment`, default 32).
  pub alignment: u64,
  /// Metadata value types by key, in file order.
  pub metadata: Vec<(String, GgufValueType)>,
  /// Tensors by name.
  pub tensors: BTreeMap<String, GgufTensorInfo>,
  /// Absolute offset of the tensor data section.
  pub data_offset: u64,
}

/// Byte size of a fixed-size GGUF metadata value type.
fn gguf_scalar_size(t: u32) -> Option<u64> {
  Some(match t {
    0 | 1 | 7 => 1,
    2 | 3 => 2,
    4..=6 => 4,
    10..=12 => 8,
    _ => return None,
  })
}

/// `(name, items per block, bytes per block)` of the GGML tensor types
/// mlxrs reads ([`load_gguf_tensor`]; sizes as ggml's / gguf-py's
/// `GGML_QUANT_SIZES`): f32, f16, bf16, i8, i16, i32 and the block formats
/// of [`gguf_blocks`] (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k ... q6_k, iq4_nl,
/// iq4_xs).
fn gguf_tensor_type(t: u32) -> Option<(&'static str, u64, u64)> {
  Some(match t {
    0 => ("f32", 1, 4),
    1 => ("f16", 1, 2),
    2 => ("q4_0", 32, 18),
    3 => ("q4_1", 32, 20),
    6 => ("q5_0", 32, 22),
    7 => ("q5_1", 32, 24),
    8 => ("q8_0", 32, 34),
    10 => ("q2_k", 256, 84),
    11 => ("q3_k", 256, 110),
    12 => ("q4_k", 256, 144),
    13 => ("q5_k", 256, 176),
    14 => ("q6_k", 256, 210),
    20 => ("iq4_nl", 32, 18),
    23 => ("iq4_xs", 256, 136),
    24 => ("i8", 1, 1),
    25 => ("i16", 1, 2),
    26 => ("i32", 1, 4),
    30 => ("bf16", 1, 2),
    _ => return None,
  })
}

/// Whether MLX 0.32.4's own GGUF loader ([`load_gguf`]) takes GGML type
/// `t`: it refuses q5_0, q5_1, q3_k and q5_k. (What it does with q2_k and
/// q4_k is not always right: its gguflib sizes q2_k blocks as 82 bytes
/// instead of ggml's 84, so every block after the first is misread, and its
/// q4_k values differ from gguf-py's for some scale bytes. mlxrs's model
/// loader reads tensors with [`load_gguf_tensor`] instead.)
fn mlx_loads_type(t: u32) -> bool {
  matches!(t, 0 | 1 | 2 | 3 | 8 | 10 | 12 | 14 | 24 | 25 | 26 | 30)
}

/// The name of any GGML tensor type id (ggml.h's `ggml_type`), for errors.
fn ggml_type_name(t: u32) -> String {
  #[rustfmt::skip]
  const NAMES: [&str; 40] = [
    "f32", "f16", "q4_0", "q4_1", "removed q4_2", "removed q4_3", "q5_0", "q5_1", "q8_0", "q8_1",
    "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s",
    "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16",
    "removed q4_0_4_4", "removed q4_0_4_8", "removed q4_0_8_8", "tq1_0", "tq2_0",
    "removed iq4_nl_4_4", "removed iq4_nl_4_8", "removed iq4_nl_8_8", "mxfp4",
  ];
  format!(
    "{t} ({})",
    NAMES.get(t as usize).copied().unwrap_or("unknown")
  )
}

/// Bounds-checked little-endian reader over a file's prefix.
struct GgufReader<'p> {
  r: std::io::BufReader<std::fs::File>,
  pos: u64,
  len: u64,
  path: &'p Path,
}

impl GgufReader<'_> {
  fn err(&self, msg: impl Into<String>) -> Error {
    fmt_err(
      self.path,
      format!("GGUF: {} (at byte {})", msg.into(), self.pos),
    )
  }

  fn need(&self, n: u64, what: &str) -> Result<()> {
    if n > self.len - self.pos {
      return Err(self.err(format!(
        "{what} needs {n} bytes but the file has {} left (truncated file?)",
        self.len - self.pos
      )));
    }
    Ok(())
  }

  fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
    self.need(n, what)?;
    let mut b = vec![0u8; n as usize];
    self
      .r
      .read_exact(&mut b)
      .map_err(|e| io_err(self.path, e))?;
    self.pos += n;
    Ok(b)
  }

  fn skip(&mut self, n: u64, what: &str) -> Result<()> {
    self.need(n, what)?;
    // `n` fits i64: it is at most the file length.
    self
      .r
      .seek_relative(n as i64)
      .map_err(|e| io_err(self.path, e))?;
    self.pos += n;
    Ok(())
  }

  fn u32(&mut self, what: &str) -> Result<u32> {
    let b = self.bytes(4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
  }

  fn u64(&mut self, what: &str) -> Result<u64> {
    let b = self.bytes(8, what)?;
    Ok(u64::from_le_bytes([
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
    ]))
  }

  /// A length-prefixed name (key or tensor name).
  fn name(&mut self, what: &str) -> Result<String> {
    let n = self.u64(what)?;
    if n > GGUF_MAX_NAME {
      return Err(self.err(format!("{what} is {n} bytes long (limit {GGUF_MAX_NAME})")));
    }
    Ok(String::from_utf8_lossy(&self.bytes(n, what)?).into_owned())
  }

  /// A string value (invalid UTF-8 replaced), length checked as
  /// [`Self::skip_string`].
  fn string(&mut self, what: &str) -> Result<String> {
    let n = self.u64(what)?;
    if n > i32::MAX as u64 {
      return Err(self.err(format!(
        "{what}: string of {n} bytes is longer than MLX supports"
      )));
    }
    Ok(String::from_utf8_lossy(&self.bytes(n, what)?).into_owned())
  }

  /// A string value: length checked (MLX takes it as an `int`), then skipped.
  fn skip_string(&mut self, what: &str) -> Result<u64> {
    let n = self.u64(what)?;
    if n > i32::MAX as u64 {
      return Err(self.err(format!(
        "{what}: string of {n} bytes is longer than MLX supports"
      )));
    }
    self.skip(n, what)?;
    Ok(n)
  }
}

/// Read and validate a GGUF file's header (metadata and tensor table) the
/// way MLX 0.32.4's loader (gguflib) walks it, so that anything that would
/// make it read out of bounds, divide by zero or abort is an error here:
/// truncated entries, unknown value or tensor types, nested arrays,
/// `float64` metadata (MLX mis-sizes it and misparses the rest of the file),
/// zero alignment, more than 8 dimensions, dimensions over `i32::MAX`,
/// quantized tensors whose rows are not whole blocks, duplicate tensor
/// names, and tensor data outside the file.
pub fn read_gguf_header(path: impl AsRef<Path>) -> Result<GgufHeader> {
  read_gguf_impl(path.as_ref(), false).map(|(h, _)| h)
}

/// Read a GGUF file's header and metadata values in Rust, without MLX's
/// loader (python: `gguf.GGUFReader(path)`'s fields; the values are
/// represented as [`load_gguf`] returns them: numbers and numeric lists as
/// 0-d / 1-d arrays of the stored type, strings, string lists). Validated
/// as [`read_gguf_header`]. Tensor data is then read per tensor with
/// [`load_gguf_tensor`]; the file is only read.
pub fn read_gguf(path: impl AsRef<Path>) -> Result<(GgufHeader, HashMap<String, GgufMeta>)> {
  read_gguf_impl(path.as_ref(), true)
}

/// A GGUF metadata number (0-d) or list of numbers (1-d) of value type `t`
/// from its little-endian bytes.
fn gguf_meta_array(t: u32, b: &[u8], list: bool) -> Result<Array> {
  fn mk<T: crate::dtype::ArrayElement, const N: usize>(
    b: &[u8],
    list: bool,
    f: impl Fn([u8; N]) -> T,
  ) -> Result<Array> {
    let v: Vec<T> = b
      .chunks_exact(N)
      .map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        f(a)
      })
      .collect();
    if list {
      let n = i32::try_from(v.len())
        .map_err(|_| Error::InvalidArgument("GGUF metadata list too long".into()))?;
      Array::from_slice(&v, &[n])
    } else {
      Array::from_slice(&v, &[] as &[i32])
    }
  }
  match t {
    0 => mk(b, list, u8::from_le_bytes),
    1 => mk(b, list, i8::from_le_bytes),
    2 => mk(b, list, u16::from_le_bytes),
    3 => mk(b, list, i16::from_le_bytes),
    4 => mk(b, list, u32::from_le_bytes),
    5 => mk(b, list, i32::from_le_bytes),
    6 => mk(b, list, f32::from_le_bytes),
    7 => mk(b, list, |[x]: [u8; 1]| x != 0),
    10 => mk(b, list, u64::from_le_bytes),
    11 => mk(b, list, i64::from_le_bytes),
    _ => Err(Error::InvalidArgument(format!(
      "GGUF metadata value type {t} is not a number"
    ))),
  }
}

fn read_gguf_impl(path: &Path, collect: bool) -> Result<(GgufHeader, HashMap<String, GgufMeta>)> {
  let mut values = HashMap::new();
  let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
  let len = f.metadata().map_err(|e| io_err(path, e))?.len();
  let mut r = GgufReader {
    r: std::io::BufReader::new(f),
    pos: 0,
    len,
    path,
  };
  if len < 24 {
    return Err(fmt_err(
      path,
      format!("not a GGUF file: {len} bytes, need at least 24"),
    ));
  }
  if r.bytes(4, "magic")? != b"GGUF" {
    return Err(fmt_err(path, "not a GGUF file (no GGUF magic)"));
  }
  let version = r.u32("version")?;
  if !(2..=3).contains(&version) {
    return Err(r.err(format!("version {version} is not supported (only 2 and 3)")));
  }
  let n_tensors = r.u64("tensor count")?;
  let n_kv = r.u64("metadata count")?;
  let mut out = GgufHeader {
    version,
    alignment: 32,
    ..Default::default()
  };
  for _ in 0..n_kv {
    let key = r.name("metadata key")?;
    let t = r.u32("metadata value type")?;
    let what = format!("metadata {key:?}");
    let ty = match t {
      GGUF_FLOAT64 => {
        return Err(r.err(format!(
          "{what} is a float64, which MLX's GGUF loader mis-sizes (it would misparse the rest of \
           the file)"
        )));
      }
      GGUF_STRING if collect => {
        let v = r.string(&what)?;
        let n = v.len() as u64;
        values.insert(key.clone(), GgufMeta::String(v));
        GgufValueType::String(n)
      }
      GGUF_STRING => GgufValueType::String(r.skip_string(&what)?),
      GGUF_ARRAY => {
        let elem = r.u32(&what)?;
        let n = r.u64(&what)?;
        if n > i32::MAX as u64 {
          return Err(r.err(format!(
            "{what}: array of {n} elements is longer than MLX supports"
          )));
        }
        match elem {
          GGUF_FLOAT64 => {
            return Err(r.err(format!(
              "{what} is a float64 array, which MLX's GGUF loader mis-sizes (it would misparse \
               the rest of the file)"
            )));
          }
          GGUF_ARRAY => {
            return Err(r.err(format!("{what}: nested arrays are not supported by MLX")));
          }
          GGUF_STRING if collect => {
            // Capacity bounded by the bytes left (each string takes >= 8).
            let mut v = Vec::with_capacity(n.min((r.len - r.pos) / 8) as usize);
            for _ in 0..n {
              v.push(r.string(&what)?);
            }
            values.insert(key.clone(), GgufMeta::Strings(v));
          }
          GGUF_STRING => {
            for _ in 0..n {
              r.skip_string(&what)?;
            }
          }
          e => match gguf_scalar_size(e) {
            Some(sz) if collect => {
              let b = r.bytes(n * sz, &what)?;
              let a =
                gguf_meta_array(e, &b, true).map_err(|err| r.err(format!("{what}: {err}")))?;
              values.insert(key.clone(), GgufMeta::Array(a));
            }
            Some(sz) => r.skip(n * sz, &what)?,
            None => return Err(r.err(format!("{what}: unknown array element type {e}"))),
          },
        }
        GgufValueType::Array { elem, len: n }
      }
      t => match gguf_scalar_size(t) {
        Some(sz) => {
          if key == "general.alignment" && t == GGUF_UINT32 {
            let a = r.u32(&what)?;
            if a == 0 {
              return Err(r.err("general.alignment is 0"));
            }
            out.alignment = a as u64;
            if collect {
              values.insert(key.clone(), GgufMeta::Array(Array::scalar(a)));
            }
          } else if collect {
            let b = r.bytes(sz, &what)?;
            let a = gguf_meta_array(t, &b, false).map_err(|err| r.err(format!("{what}: {err}")))?;
            values.insert(key.clone(), GgufMeta::Array(a));
          } else {
            r.skip(sz, &what)?;
          }
          GgufValueType::Scalar(t)
        }
        None => return Err(r.err(format!("{what}: unknown value type {t}"))),
      },
    };
    out.metadata.push((key, ty));
  }
  // The tensor table: (name, type, dims, relative offset) per tensor.
  let mut table = Vec::new();
  for _ in 0..n_tensors {
    let name = r.name("tensor name")?;
    let ndim = r.u32("tensor rank")?;
    if ndim > GGUF_MAX_DIM {
      return Err(r.err(format!(
        "tensor {name:?} has {ndim} dimensions (at most {GGUF_MAX_DIM})"
      )));
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
      dims.push(r.u64("tensor dimension")?);
    }
    let t = r.u32("tensor type")?;
    let rel = r.u64("tensor offset")?;
    table.push((name, t, dims, rel));
  }
  let pad = (out.alignment - r.pos % out.alignment) % out.alignment;
  out.data_offset = r.pos + pad;
  for (name, t, dims, rel) in table {
    let bad = |m: String| fmt_err(path, format!("GGUF: tensor {name:?}: {m}"));
    let (type_name, per_block, block_bytes) = gguf_tensor_type(t).ok_or_else(|| {
      bad(format!(
        "tensor type {} is not supported (mlxrs reads f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, \
         q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs, i8, i16, i32)",
        ggml_type_name(t)
      ))
    })?;
    if let Some(&d) = dims.iter().find(|&&d| d > i32::MAX as u64) {
      return Err(bad(format!("dimension {d} exceeds i32::MAX")));
    }
    let numel = dims
      .iter()
      .try_fold(1u64, |acc, &d| acc.checked_mul(d))
      .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
    // Block formats: rows must be whole blocks (as ggml requires).
    if per_block > 1 && dims.first().is_none_or(|&d| d % per_block != 0) {
      return Err(bad(format!(
        "{type_name} needs a first (row) dimension that is a multiple of {per_block}, got {dims:?}"
      )));
    }
    let nbytes = numel
      .div_ceil(per_block)
      .checked_mul(block_bytes)
      .ok_or_else(|| bad("size overflows".into()))?;
    let offset = out
      .data_offset
      .checked_add(rel)
      .filter(|o| *o <= len)
      .ok_or_else(|| {
        bad(format!(
          "data offset {rel} lies past the end of the file ({len} bytes)"
        ))
      })?;
    if nbytes > len - offset {
      return Err(bad(format!(
        "{nbytes} bytes of data at byte {offset} run past the end of the file ({len} bytes; \
         truncated file?)"
      )));
    }
    let shape = dims.iter().rev().map(|&d| d as i32).collect();
    let info = GgufTensorInfo {
      ggml_type: t,
      type_name,
      shape,
      offset,
      nbytes,
    };
    if out.tensors.insert(name.clone(), info).is_some() {
      return Err(fmt_err(
        path,
        format!("GGUF: duplicate tensor name {name:?}"),
      ));
    }
  }
  Ok((out, values))
}

/// One GGUF tensor as MLX arrays ([`load_gguf_tensor`]).
#[derive(Debug)]
pub enum GgufTensor {
  /// A float or integer tensor (block formats when dequantized).
  Dense(Array),
  /// An MLX affine-quantized matrix (group 32): packed uint32 `weight`,
  /// `scales`, `biases` of the last axis, as `mx.quantize` returns them.
  Quantized {
    /// Packed values, `[..., cols * bits / 32]` uint32.
    weight: Array,
    /// `[..., cols / 32]`: float16 for q4_0 / q4_1 / q5_x / q8_0, float32
    /// for the K-quants.
    scales: Array,
    /// Same shape and dtype as `scales`.
    biases: Array,
    /// Bits per weight.
    bits: i32,
    /// Group size (always 32).
    group_size: i32,
    /// Whether the values are exactly the GGUF tensor's (`false`: requantized
    /// from its dequantized values, see [`gguf_requant_bits`]).
    exact: bool,
  },
}

/// MLX affine bits a block type without an exact MLX form (q2_k, q3_k,
/// q6_k: 16-element sub-blocks, below MLX's smallest group of 32; iq4_nl,
/// iq4_xs: non-uniform levels) is requantized to by [`load_gguf_tensor`]:
/// two more bits than the type (q2_k 4, q3_k 5, q6_k 8, iq4_* 6), so the new
/// grid (per 32 values) is about 4x finer than the type's own and adds
/// little error to it.
pub fn gguf_requant_bits(ggml_type: u32) -> Option<i32> {
  match ggml_type {
    gguf_blocks::Q2_K => Some(4),
    gguf_blocks::Q3_K => Some(5),
    gguf_blocks::Q6_K => Some(8),
    gguf_blocks::IQ4_NL | gguf_blocks::IQ4_XS => Some(6),
    _ => None,
  }
}

/// Read one tensor of a GGUF file (its entry from [`read_gguf`]) from the
/// file's bytes, without MLX's loader (python: `gguf.GGUFReader` +
/// `gguf.quants.dequantize`). f32, f16, bf16 and integer tensors come back
/// as they are. Block formats: with `dequantize`, float32 values (equal to
/// gguf-py's); otherwise MLX affine-quantized (group 32), exactly for q4_0,
/// q4_1, q5_0, q5_1, q8_0, q4_k and q5_k ([`gguf_blocks::to_affine`]),
/// requantized with `mx.quantize` to [`gguf_requant_bits`] for q2_k, q3_k,
/// q6_k, iq4_nl, iq4_xs. Only tensors of 2 or more dimensions stay
/// quantized.
pub fn load_gguf_tensor(
  path: impl AsRef<Path>,
  info: &GgufTensorInfo,
  dequantize: bool,
) -> Result<GgufTensor> {
  let path = path.as_ref();
  let bad = |m: String| fmt_err(path, format!("GGUF tensor data ({}): {m}", info.type_name));
  let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
  let len = f.metadata().map_err(|e| io_err(path, e))?.len();
  if info
    .offset
    .checked_add(info.nbytes)
    .is_none_or(|end| end > len)
  {
    return Err(bad(format!(
      "{} bytes at byte {} run past the end of the file ({len} bytes; truncated or changed \
       file?)",
      info.nbytes, info.offset
    )));
  }
  use std::io::Seek;
  f.seek(std::io::SeekFrom::Start(info.offset))
    .map_err(|e| io_err(path, e))?;
  let mut data = vec![0u8; info.nbytes as usize];
  f.read_exact(&mut data).map_err(|e| io_err(path, e))?;
  let shape = &info.shape;
  let numel = shape.iter().map(|&d| d as usize).product::<usize>();
  fn le<T: crate::dtype::ArrayElement, const N: usize>(
    b: &[u8],
    shape: &[i32],
    f: impl Fn([u8; N]) -> T,
  ) -> Result<Array> {
    let v: Vec<T> = b
      .chunks_exact(N)
      .map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        f(a)
      })
      .collect();
    Array::from_slice(&v, shape)
  }
  let t = info.ggml_type;
  let dense = match t {
    0 => Some(le(&data, shape, f32::from_le_bytes)?),
    1 => Some(le(&data, shape, half::f16::from_le_bytes)?),
    30 => Some(le(&data, shape, half::bf16::from_le_bytes)?),
    24 => Some(le(&data, shape, i8::from_le_bytes)?),
    25 => Some(le(&data, shape, i16::from_le_bytes)?),
    26 => Some(le(&data, shape, i32::from_le_bytes)?),
    _ => None,
  };
  if let Some(a) = dense {
    return Ok(GgufTensor::Dense(a));
  }
  let cols = shape.last().copied().unwrap_or(1);
  if dequantize || shape.len() < 2 || cols % 32 != 0 {
    let v = gguf_blocks::dequantize(t, &data, numel).map_err(bad)?;
    return Ok(GgufTensor::Dense(Array::from_slice(&v, shape)?));
  }
  let lead = &shape[..shape.len() - 1];
  let with_last = |last: i32| -> Vec<i32> {
    let mut s = lead.to_vec();
    s.push(last);
    s
  };
  if gguf_blocks::has_affine(t) {
    let a = gguf_blocks::to_affine(t, &data, numel).map_err(bad)?;
    let bits = a.bits as i32;
    let weight = Array::from_slice(&a.packed, &with_last(cols / 32 * bits))?;
    let gshape = with_last(cols / 32);
    let (scales, biases) = if a.f16_exact {
      let h = |v: &[f32]| {
        v.iter()
          .map(|&x| half::f16::from_f32(x))
          .collect::<Vec<_>>()
      };
      (
        Array::from_slice(&h(&a.scales), &gshape)?,
        Array::from_slice(&h(&a.biases), &gshape)?,
      )
    } else {
      (
        Array::from_slice(&a.scales, &gshape)?,
        Array::from_slice(&a.biases, &gshape)?,
      )
    };
    return Ok(GgufTensor::Quantized {
      weight,
      scales,
      biases,
      bits,
      group_size: 32,
      exact: true,
    });
  }
  let bits = gguf_requant_bits(t).ok_or_else(|| bad("no MLX form for this type".into()))?;
  let v = gguf_blocks::dequantize(t, &data, numel).map_err(bad)?;
  let w = Array::from_slice(&v, shape)?;
  let mut q = crate::ops::quantize(&w, Some(32), Some(bits), "affine", None)?;
  if q.len() != 3 {
    return Err(bad(format!("mx.quantize returned {} arrays", q.len())));
  }
  // Evaluated now, so the float32 copy is freed per tensor (not held by
  // lazy graphs until the whole model is evaluated).
  crate::transforms::eval(&q)?;
  let biases = q.pop().unwrap_or_else(Array::null);
  let scales = q.pop().unwrap_or_else(Array::null);
  let weight = q.pop().unwrap_or_else(Array::null);
  Ok(GgufTensor::Quantized {
    weight,
    scales,
    biases,
    bits,
    group_size: 32,
    exact: false,
  })
}

struct GgufMetaHandle(mlxrs_sys::mlxrs_gguf_meta);
impl Drop for GgufMetaHandle {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlxrs_gguf_meta_free(self.0) };
  }
}

/// Copy `len` bytes at `p` (owned by the C layer) into a `String`.
fn c_bytes(p: *const c_char, len: usize) -> String {
  if p.is_null() || len == 0 {
    return String::new();
  }
  // SAFETY: the C layer returned `p` pointing at `len` bytes of a live
  // std::string; they are copied out at once.
  let b = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
  String::from_utf8_lossy(b).into_owned()
}

/// Load all tensors of a GGUF file and its metadata (python
/// `mx.load("f.gguf", return_metadata=True)`). The header is validated
/// first ([`read_gguf_header`]), so a corrupt or truncated file is an
/// [`Error::Format`]. Quantized q4_0 / q4_1 / q8_0 tensors `x.weight` come
/// back as MLX-quantized `x.weight` (uint32), `x.scales` and `x.biases`;
/// bf16 and k-quants are converted to float16.
///
/// MLX's loader opens the file read-write (gguflib maps it shared), so a
/// read-only file is an error. The file must not change between the
/// validation and the load.
pub fn load_gguf(
  path: impl AsRef<Path>,
) -> Result<(HashMap<String, Array>, HashMap<String, GgufMeta>)> {
  let path = path.as_ref();
  let header = read_gguf_header(path)?;
  if let Some((name, info)) = header
    .tensors
    .iter()
    .find(|(_, i)| !mlx_loads_type(i.ggml_type))
  {
    return Err(fmt_err(
      path,
      format!(
        "GGUF: tensor {name:?}: tensor type {} is not supported by MLX's GGUF loader (it reads \
         f32, f16, bf16, q4_0, q4_1, q8_0, q2_k, q4_k, q6_k, i8, i16, i32); read it with \
         mlxrs_core::io::read_gguf + load_gguf_tensor",
        ggml_type_name(info.ggml_type)
      ),
    ));
  }
  if let Err(e) = std::fs::OpenOptions::new()
    .read(true)
    .write(true)
    .open(path)
  {
    return Err(fmt_err(
      path,
      format!("MLX's GGUF loader opens files read-write, and this one cannot be ({e})"),
    ));
  }
  let c_path = path_cstring(path)?;
  let mut arrays = MapArr(mlxrs_sys::mlx_map_string_to_array {
    ctx: std::ptr::null_mut(),
  });
  let mut meta = GgufMetaHandle(mlxrs_sys::mlxrs_gguf_meta {
    ctx: std::ptr::null_mut(),
  });
  // SAFETY: the out-handles are owned by the guards above; `c_path` lives
  // across the call; the stream is NULL (default) or a live thread-local one.
  // The file's structure was validated above.
  check(unsafe {
    mlxrs_sys::mlx_load_gguf(
      &mut arrays.0,
      &mut meta.0,
      c_path.as_ptr(),
      default_stream(),
    )
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
  // SAFETY: query on the live handle owned by `meta`.
  let n = unsafe { mlxrs_sys::mlxrs_gguf_meta_size(meta.0) };
  let mut md = HashMap::with_capacity(n);
  for i in 0..n {
    let (mut k, mut klen) = (std::ptr::null(), 0usize);
    let mut kind = mlxrs_sys::mlxrs_gguf_meta_kind::MLXRS_GGUF_META_NONE;
    // SAFETY: `i < size` of the live handle; the out-pointers are locals;
    // the key points into the map and is copied at once.
    check(unsafe { mlxrs_sys::mlxrs_gguf_meta_get(&mut k, &mut klen, &mut kind, meta.0, i) })?;
    let key = c_bytes(k, klen);
    use mlxrs_sys::mlxrs_gguf_meta_kind as K;
    let v = match kind {
      K::MLXRS_GGUF_META_ARRAY => {
        let mut a = Array::null();
        // SAFETY: entry `i` holds an array; the out-handle is owned by `a`.
        check(unsafe { mlxrs_sys::mlxrs_gguf_meta_get_array(&mut a.0, meta.0, i) })?;
        GgufMeta::Array(a)
      }
      K::MLXRS_GGUF_META_STRING => {
        let (mut p, mut l) = (std::ptr::null(), 0usize);
        // SAFETY: entry `i` holds a string; `p` points into the map and is
        // copied at once.
        check(unsafe { mlxrs_sys::mlxrs_gguf_meta_get_string(&mut p, &mut l, meta.0, i) })?;
        GgufMeta::String(c_bytes(p, l))
      }
      K::MLXRS_GGUF_META_STRINGS => {
        let mut m = 0usize;
        // SAFETY: entry `i` holds a string list; `m` is a local.
        check(unsafe { mlxrs_sys::mlxrs_gguf_meta_get_strings_size(&mut m, meta.0, i) })?;
        let mut v = Vec::with_capacity(m);
        for j in 0..m {
          let (mut p, mut l) = (std::ptr::null(), 0usize);
          // SAFETY: `j < m`; `p` points into the map and is copied at once.
          check(unsafe {
            mlxrs_sys::mlxrs_gguf_meta_get_strings_at(&mut p, &mut l, meta.0, i, j)
          })?;
          v.push(c_bytes(p, l));
        }
        GgufMeta::Strings(v)
      }
      K::MLXRS_GGUF_META_NONE => continue,
    };
    md.insert(key, v);
  }
  Ok((out, md))
}

/// Save `arrays` and `metadata` as a GGUF file (python
/// `mx.save_gguf(path, arrays, metadata)`). Evaluates the arrays. MLX
/// writes tensors of float32, float16, int8, int16 and int32, and metadata
/// arrays as described on [`GgufMeta`]; anything else is an error. `path`
/// must end in `.gguf` (MLX would silently append it), and a uint32
/// `general.alignment` must be 32 (MLX always writes 32-byte alignment).
pub fn save_gguf(
  path: impl AsRef<Path>,
  arrays: &HashMap<String, Array>,
  metadata: &HashMap<String, GgufMeta>,
) -> Result<()> {
  let path = path.as_ref();
  if path.extension().is_none_or(|e| e != "gguf") {
    return Err(Error::InvalidArgument(format!(
      "GGUF file name must end in .gguf (MLX would append it): {}",
      path.display()
    )));
  }
  path_cstring(path)?;
  // SAFETY: fresh owned handles, freed by the guards.
  let map = MapArr(unsafe { mlxrs_sys::mlx_map_string_to_array_new() });
  // SAFETY: as above.
  let meta = GgufMetaHandle(unsafe { mlxrs_sys::mlxrs_gguf_meta_new() });
  if meta.0.ctx.is_null() {
    return Err(Error::Mlx(crate::error::last_error()));
  }
  for (k, v) in arrays {
    let ck = cstring(k)?;
    if v.is_null() {
      return Err(Error::InvalidArgument(format!(
        "array {k:?} is an empty handle"
      )));
    }
    // SAFETY: live map and array handles; the key is copied by the C layer.
    check(unsafe { mlxrs_sys::mlx_map_string_to_array_insert(map.0, ck.as_ptr(), v.0) })?;
  }
  for (k, v) in metadata {
    let ck = cstring(k)?;
    match v {
      GgufMeta::Array(a) => {
        if a.is_null() {
          return Err(Error::InvalidArgument(format!(
            "metadata {k:?} is an empty array handle"
          )));
        }
        // MLX writes 32-byte alignment whatever this says, but its loader
        // honours a uint32 scalar `general.alignment`: the file would not load.
        if k == "general.alignment" && a.dtype() == Dtype::Uint32 && a.ndim() == 0 {
          let v = a.clone().item::<u32>()?;
          if v != 32 {
            return Err(Error::InvalidArgument(format!(
              "general.alignment = {v}: MLX writes GGUF data 32-byte aligned"
            )));
          }
        }
        // SAFETY: live handles; the C layer copies the key and shares the array.
        check(unsafe { mlxrs_sys::mlxrs_gguf_meta_insert_array(meta.0, ck.as_ptr(), a.0) })?;
      }
      GgufMeta::String(s) => {
        // SAFETY: `s` is `len` readable bytes for the call; the C layer copies them.
        check(unsafe {
          mlxrs_sys::mlxrs_gguf_meta_insert_string(meta.0, ck.as_ptr(), s.as_ptr().cast(), s.len())
        })?;
      }
      GgufMeta::Strings(v) => {
        let ptrs: Vec<*const c_char> = v.iter().map(|s| s.as_ptr().cast()).collect();
        let lens: Vec<usize> = v.iter().map(String::len).collect();
        // SAFETY: `ptrs[i]` points at `lens[i]` readable bytes of `v[i]`, all
        // alive across the call; the C layer copies them.
        check(unsafe {
          mlxrs_sys::mlxrs_gguf_meta_insert_strings(
            meta.0,
            ck.as_ptr(),
            ptrs.as_ptr(),
            lens.as_ptr(),
            v.len(),
          )
        })?;
      }
    }
  }
  // Written atomically: a temporary `.gguf` beside `path`, then renamed.
  crate::atomic::atomic_write_to_path(path, |tmp| {
    let c_path = path_cstring(tmp)?;
    let _lock = crate::eval_lock::eval_guard();
    // SAFETY: live handles and path for the duration of the call.
    check(unsafe { mlxrs_sys::mlx_save_gguf(c_path.as_ptr(), map.0, meta.0) })
      .map_err(|e| fmt_err(path, e.to_string()))
  })
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
    assert_eq!(
      ga.to_vec::<f32>().unwrap(),
      vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    assert_eq!(
      got.get_mut("b.c").unwrap().to_vec::<i32>().unwrap(),
      vec![7, 8]
    );
  }

  /// A hand-written file: one F32 tensor of shape [2] = bytes of 1.5, -2.0.
  #[test]
  fn reads_hand_written_file() {
    let p = tmp("hand.safetensors");
    let mut data = 1.5f32.to_le_bytes().to_vec();
    data.extend_from_slice(&(-2.0f32).to_le_bytes());
    write_raw(
      &p,
      r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
      &data,
    );
    let (mut m, _) = load_safetensors(&p).unwrap();
    assert_eq!(
      m.get_mut("x").unwrap().to_vec::<f32>().unwrap(),
      vec![1.5, -2.0]
    );
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
    expect_format_err(
      r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
      &[0; 8],
      "truncated",
    );
    expect_format_err(
      r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
      &[0; 8],
      "needs 12",
    );
    expect_format_err(
      r#"{"x":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}"#,
      &[0; 1],
      "not supported",
    );
    expect_format_err(
      r#"{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#,
      &[],
      "expected usize",
    );
    expect_format_err(r#"{"x":{"dtype":"F32","shape":[1]}}"#, &[], "data_offsets");
    // Strict parsing (issue #20): what a serde map would hide or MLX would
    // read past.
    expect_format_err(
      r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
      &[0; 8],
      "appears twice",
    );
    expect_format_err(
      r#"{"__metadata__":{"a":"1","a":"2"},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
      &[0; 4],
      "key \"a\" appears twice",
    );
    expect_format_err(
      r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
      &[0; 8],
      "overlap",
    );
    expect_format_err(
      r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
      &[0; 8],
      "contiguous",
    );
    expect_format_err(
      r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
      &[0; 12],
      "8 trailing bytes",
    );
    expect_format_err(
      r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":3}}"#,
      &[0; 4],
      "__metadata__",
    );
    // Header length larger than the file.
    let p = tmp("short.safetensors");
    std::fs::write(&p, 1000u64.to_le_bytes()).unwrap();
    assert!(matches!(load_safetensors(&p), Err(Error::Format { .. })));
    // Fewer than 8 bytes.
    std::fs::write(&p, [1u8, 2]).unwrap();
    assert!(matches!(load_safetensors(&p), Err(Error::Format { .. })));
    // Missing file.
    assert!(matches!(
      load_safetensors(tmp("missing.safetensors")),
      Err(Error::Io { .. })
    ));
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
