//! GGUF load / save (`mlxrs_core::io::{load_gguf, save_gguf, read_gguf_header}`).
//!
//! References: `tests/data/gguf/` (made by `scripts/make_op_refs.py`):
//! `mlx_saved.gguf` written by python `mx.save_gguf`, `crafted.gguf` packed
//! by hand with every tensor type MLX loads (q4_0 / q4_1 / q8_0 kept
//! quantized, k-quants and bf16 converted to float16) and 64-byte alignment,
//! and python `mx.load`'s result for both (`expected.safetensors`,
//! `expected.json`).
//!
//! Corrupt files are built here byte by byte (GGUF v3: magic, version,
//! tensor count, metadata count, metadata, tensor table, aligned data). Each
//! of them makes MLX 0.32.4's own parser crash (segfault, SIGFPE, abort) or
//! misread; the Rust validation must turn every one into an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxrs_core::io::{GgufMeta, load_gguf, read_gguf_header, save_gguf};
use mlxrs_core::{Array, Dtype, Error, ops};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gguf");

fn tmp(name: &str) -> PathBuf {
  let d = std::env::temp_dir().join(format!("mlxrs-gguf-{}", std::process::id()));
  std::fs::create_dir_all(&d).unwrap();
  d.join(name)
}

/// Elements widened to f64 (bit-exact for every dtype used here), NaN-safe
/// comparison by bits.
fn values(a: &Array) -> Vec<u64> {
  let d = a.dtype();
  if d == Dtype::Uint64 || d == Dtype::Int64 {
    return ops::astype(a, Dtype::Int64)
      .unwrap()
      .to_vec::<i64>()
      .unwrap()
      .into_iter()
      .map(|x| x as u64)
      .collect();
  }
  ops::astype(a, Dtype::Float64)
    .unwrap()
    .to_vec::<f64>()
    .unwrap()
    .into_iter()
    .map(f64::to_bits)
    .collect()
}

fn assert_same(what: &str, got: &Array, want: &Array) {
  assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
  assert_eq!(got.shape(), want.shape(), "{what}: shape");
  assert_eq!(values(got), values(want), "{what}: values");
}

#[test]
fn loads_python_saved_and_crafted_files_like_python() {
  let (expected, _) =
    mlxrs_core::io::load_safetensors(format!("{DATA}/expected.safetensors")).unwrap();
  let json: serde_json::Value =
    serde_json::from_str(&std::fs::read_to_string(format!("{DATA}/expected.json")).unwrap())
      .unwrap();
  let strings = json["strings"].as_object().unwrap();
  for stem in ["mlx_saved", "crafted"] {
    let (tensors, meta) = load_gguf(format!("{DATA}/{stem}.gguf")).unwrap();
    let want_t: Vec<&String> = expected
      .keys()
      .filter(|k| k.starts_with(&format!("{stem}/")) && !k.contains("/meta/"))
      .collect();
    assert_eq!(tensors.len(), want_t.len(), "{stem}: tensor count");
    for k in want_t {
      let name = &k[stem.len() + 1..];
      let got = tensors
        .get(name)
        .unwrap_or_else(|| panic!("{stem}: no tensor {name}"));
      assert_same(k, got, &expected[k]);
    }
    let want_arrays = expected
      .keys()
      .filter(|k| k.starts_with(&format!("{stem}/meta/")))
      .count();
    let want_strings = strings
      .keys()
      .filter(|k| k.starts_with(&format!("{stem}/")))
      .count();
    assert_eq!(
      meta.len(),
      want_arrays + want_strings,
      "{stem}: metadata count"
    );
    for (key, v) in &meta {
      match v {
        GgufMeta::Array(a) => assert_same(key, a, &expected[&format!("{stem}/meta/{key}")]),
        GgufMeta::String(s) => assert_eq!(strings[&format!("{stem}/{key}")], *s, "{key}"),
        GgufMeta::Strings(l) => assert_eq!(
          strings[&format!("{stem}/{key}")],
          serde_json::json!(l),
          "{key}"
        ),
      }
    }
  }
}

/// The tensor table of `crafted.gguf`: MLX-order shapes, block-rounded sizes
/// and data offsets aligned to its `general.alignment` of 64.
#[test]
fn header_of_crafted_file() {
  let h = read_gguf_header(format!("{DATA}/crafted.gguf")).unwrap();
  assert_eq!((h.version, h.alignment), (3, 64));
  assert_eq!(h.data_offset % 64, 0);
  assert_eq!(h.metadata.len(), 4);
  let t = &h.tensors["q6_k.weight"];
  assert_eq!(
    (t.type_name, t.shape.clone(), t.nbytes),
    ("q6_k", vec![2, 256], 420)
  );
  let t = &h.tensors["q4_0.weight"];
  assert_eq!(
    (t.type_name, t.shape.clone(), t.nbytes),
    ("q4_0", vec![2, 64], 72)
  );
  assert_eq!(h.tensors["empty"].nbytes, 0);
  assert!(
    h.tensors
      .values()
      .all(|t| t.offset % 64 == 0 && t.offset >= h.data_offset)
  );
}

#[test]
fn round_trip_with_metadata() {
  let p = tmp("rt.gguf");
  let a = Array::from_slice::<f32>(&[1.0, -2.0, 3.5, 4.0, 5.0, 6.25], &(2, 3)).unwrap();
  let b = Array::from_slice(
    &[
      mlxrs_core::f16::from_f32(0.5),
      mlxrs_core::f16::from_f32(-1.0),
    ],
    &(2,),
  )
  .unwrap();
  let c = Array::from_slice::<i8>(&[-128, 0, 127], &(3,)).unwrap();
  let d = Array::from_slice::<i16>(&[-300, 300], &(1, 2)).unwrap();
  let e = Array::from_slice::<i32>(&[i32::MIN, 7], &(2,)).unwrap();
  let s = Array::scalar(9.5f32);
  let arrays: HashMap<String, Array> = [
    ("w.f32", &a),
    ("w.f16", &b),
    ("i8", &c),
    ("i16", &d),
    ("i32", &e),
    ("s", &s),
  ]
  .into_iter()
  .map(|(k, v)| (k.to_string(), v.clone()))
  .collect();
  let meta: HashMap<String, GgufMeta> = [
    ("general.name", GgufMeta::String("tiny model é".into())),
    ("empty", GgufMeta::String(String::new())),
    (
      "tokens",
      GgufMeta::Strings(vec!["<s>".into(), "".into(), "▁the".into()]),
    ),
    ("no_tokens", GgufMeta::Strings(vec![])),
    (
      "n",
      GgufMeta::Array(Array::from_slice::<u32>(&[3], &()).unwrap()),
    ),
    (
      "scores",
      GgufMeta::Array(Array::from_slice::<f32>(&[0.5, -1.0], &(2,)).unwrap()),
    ),
    (
      "flags",
      GgufMeta::Array(Array::from_slice::<bool>(&[true, false], &(2,)).unwrap()),
    ),
    (
      "ids",
      GgufMeta::Array(Array::from_slice::<i64>(&[i64::MIN, 1], &(2,)).unwrap()),
    ),
    (
      "u64",
      GgufMeta::Array(Array::from_slice::<u64>(&[u64::MAX], &()).unwrap()),
    ),
  ]
  .into_iter()
  .map(|(k, v)| (k.to_string(), v))
  .collect();
  save_gguf(&p, &arrays, &meta).unwrap();
  let (got, got_meta) = load_gguf(&p).unwrap();
  assert_eq!(got.len(), arrays.len());
  for (k, v) in &arrays {
    assert_same(k, &got[k], v);
  }
  assert_eq!(got_meta.len(), meta.len());
  for (k, v) in &meta {
    match (v, &got_meta[k]) {
      (GgufMeta::Array(w), GgufMeta::Array(g)) => assert_same(k, g, w),
      (GgufMeta::String(w), GgufMeta::String(g)) => assert_eq!(g, w),
      (GgufMeta::Strings(w), GgufMeta::Strings(g)) => assert_eq!(g, w),
      (w, g) => panic!("{k}: saved {w:?}, loaded {g:?}"),
    }
  }
  // The header agrees.
  let h = read_gguf_header(&p).unwrap();
  assert_eq!(h.tensors["w.f32"].shape, vec![2, 3]);
  assert_eq!(h.tensors["s"].shape, Vec::<i32>::new());
}

#[test]
fn save_errors() {
  let a = HashMap::from([(
    "a".to_string(),
    Array::from_slice::<f32>(&[1.0], &(1,)).unwrap(),
  )]);
  let none = HashMap::new();
  // MLX would append `.gguf` and write elsewhere.
  assert!(matches!(
    save_gguf(tmp("x.bin"), &a, &none),
    Err(Error::InvalidArgument(_))
  ));
  assert!(save_gguf(tmp("x"), &a, &none).is_err());
  // Types MLX cannot write: a bfloat16 tensor; 2-d, empty and float16
  // metadata arrays.
  let bf = HashMap::from([(
    "b".to_string(),
    Array::scalar_as(1.0, Dtype::Bfloat16).unwrap(),
  )]);
  assert!(save_gguf(tmp("bf.gguf"), &bf, &none).is_err());
  for m in [
    Array::from_slice::<f32>(&[1.0; 4], &(2, 2)).unwrap(),
    Array::from_slice::<f32>(&[], &(0,)).unwrap(),
    Array::scalar_as(1.0, Dtype::Float16).unwrap(),
  ] {
    let meta = HashMap::from([("k".to_string(), GgufMeta::Array(m))]);
    assert!(save_gguf(tmp("m.gguf"), &a, &meta).is_err());
  }
  // An alignment MLX would not write (its loader would then misread the file).
  let al = HashMap::from([(
    "general.alignment".to_string(),
    GgufMeta::Array(Array::from_slice::<u32>(&[64], &()).unwrap()),
  )]);
  assert!(matches!(
    save_gguf(tmp("al.gguf"), &a, &al),
    Err(Error::InvalidArgument(_))
  ));
  // A NUL in a key.
  let nul = HashMap::from([("a\0b".to_string(), Array::scalar(1.0f32))]);
  assert!(matches!(
    save_gguf(tmp("n.gguf"), &nul, &none),
    Err(Error::InvalidArgument(_))
  ));
}

// ------------------------------------------------------------------ corrupt files

fn gstr(s: &[u8]) -> Vec<u8> {
  let mut v = (s.len() as u64).to_le_bytes().to_vec();
  v.extend_from_slice(s);
  v
}

/// A metadata entry: key, value type, packed value.
fn kv(key: &str, t: u32, val: &[u8]) -> Vec<u8> {
  let mut v = gstr(key.as_bytes());
  v.extend_from_slice(&t.to_le_bytes());
  v.extend_from_slice(val);
  v
}

/// A tensor-table entry: name, GGML-order dims, type, relative offset.
fn tinfo(name: &str, dims: &[u64], t: u32, off: u64) -> Vec<u8> {
  let mut v = gstr(name.as_bytes());
  v.extend_from_slice(&(dims.len() as u32).to_le_bytes());
  for d in dims {
    v.extend_from_slice(&d.to_le_bytes());
  }
  v.extend_from_slice(&t.to_le_bytes());
  v.extend_from_slice(&off.to_le_bytes());
  v
}

/// A GGUF file with the given counts (which may lie), raw metadata and
/// tensor-table entries, padding to `align`, then `data`.
fn gguf(
  version: u32,
  n_t: u64,
  n_kv: u64,
  kvs: &[Vec<u8>],
  infos: &[Vec<u8>],
  align: usize,
  data: &[u8],
) -> Vec<u8> {
  let mut v = b"GGUF".to_vec();
  v.extend_from_slice(&version.to_le_bytes());
  v.extend_from_slice(&n_t.to_le_bytes());
  v.extend_from_slice(&n_kv.to_le_bytes());
  for x in kvs.iter().chain(infos) {
    v.extend_from_slice(x);
  }
  while v.len() % align != 0 {
    v.push(0);
  }
  v.extend_from_slice(data);
  v
}

/// One f32 tensor `w` of 4 elements, plus `kvs`.
fn simple(kvs: &[Vec<u8>]) -> Vec<u8> {
  gguf(
    3,
    1,
    kvs.len() as u64,
    kvs,
    &[tinfo("w", &[4], 0, 0)],
    32,
    &[0u8; 16],
  )
}

fn expect_err(name: &str, bytes: &[u8], needle: &str) {
  let p = tmp(&format!("bad-{name}.gguf"));
  std::fs::write(&p, bytes).unwrap();
  match load_gguf(&p) {
    Err(Error::Format { msg, .. }) => {
      assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}")
    }
    other => panic!("{name}: expected a format error containing {needle:?}, got {other:?}"),
  }
}

#[test]
fn valid_simple_file_loads() {
  let p = tmp("simple.gguf");
  std::fs::write(&p, simple(&[kv("k", 8, &gstr(b"v"))])).unwrap();
  let (t, m) = load_gguf(&p).unwrap();
  assert_eq!(t["w"].shape(), vec![4]);
  assert!(matches!(&m["k"], GgufMeta::String(s) if s == "v"));
}

#[test]
fn corrupt_files_are_errors() {
  let u32b = |x: u32| x.to_le_bytes().to_vec();
  let u64b = |x: u64| x.to_le_bytes().to_vec();
  let arr_hdr = |t: u32, n: u64| [u32b(t), u64b(n)].concat();
  expect_err("short", b"GGUF\x03\0\0\0", "need at least 24");
  expect_err(
    "magic",
    &[b"GGUX".as_slice(), &[0u8; 28]].concat(),
    "no GGUF magic",
  );
  expect_err("v1", &gguf(1, 0, 0, &[], &[], 1, &[]), "version 1");
  // Counts larger than the file.
  expect_err(
    "kv-count",
    &gguf(3, 0, u64::MAX, &[], &[], 1, &[]),
    "truncated",
  );
  expect_err(
    "tensor-count",
    &gguf(3, 1 << 40, 0, &[], &[], 1, &[]),
    "truncated",
  );
  // Metadata: huge key / string / array lengths, unknown types, nested and
  // float64 values (MLX mis-sizes float64 and segfaults), zero alignment
  // (SIGFPE in MLX).
  expect_err(
    "key-len",
    &simple(&[[u64b(u64::MAX - 3), u32b(8)].concat()]),
    "limit",
  );
  expect_err("str-len", &simple(&[kv("k", 8, &u64b(1000))]), "truncated");
  expect_err(
    "str-huge",
    &simple(&[kv("k", 8, &u64b(u64::MAX))]),
    "longer than MLX supports",
  );
  expect_err(
    "type",
    &simple(&[kv("k", 13, &[0; 8])]),
    "unknown value type 13",
  );
  expect_err(
    "f64",
    &simple(&[kv("k", 12, &1.5f64.to_le_bytes())]),
    "float64",
  );
  expect_err(
    "f64-array",
    &simple(&[kv(
      "k",
      9,
      &[arr_hdr(12, 1), 1.5f64.to_le_bytes().to_vec()].concat(),
    )]),
    "float64",
  );
  expect_err(
    "nested",
    &simple(&[kv("k", 9, &[arr_hdr(9, 1), arr_hdr(0, 0)].concat())]),
    "nested",
  );
  expect_err(
    "array-len",
    &simple(&[kv("k", 9, &arr_hdr(4, 1 << 31))]),
    "longer than MLX supports",
  );
  expect_err(
    "array-data",
    &simple(&[kv("k", 9, &arr_hdr(4, 1 << 20))]),
    "truncated",
  );
  expect_err(
    "array-elem",
    &simple(&[kv("k", 9, &arr_hdr(42, 1))]),
    "unknown array element type",
  );
  expect_err(
    "str-array",
    &simple(&[kv(
      "k",
      9,
      &[arr_hdr(8, 2), gstr(b"a"), u64b(1 << 20)].concat(),
    )]),
    "truncated",
  );
  expect_err(
    "align0",
    &simple(&[kv("general.alignment", 4, &u32b(0))]),
    "alignment is 0",
  );
  // Tensor table: more than 8 dims (MLX aborts), unknown / deprecated /
  // unsupported types (type 4 divides by zero in gguflib), dims over
  // i32::MAX, overflowing shapes, data past the end, duplicate names,
  // quantized tensors with no or partial rows (UB / error in MLX).
  let one = |dims: &[u64], t: u32, off: u64, data: &[u8]| {
    gguf(3, 1, 0, &[], &[tinfo("w", dims, t, off)], 32, data)
  };
  expect_err("ndim9", &one(&[1; 9], 0, 0, &[0; 4]), "9 dimensions");
  expect_err("type4", &one(&[32], 4, 0, &[0; 64]), "tensor type 4");
  expect_err("type99", &one(&[1], 99, 0, &[0; 4]), "tensor type 99");
  expect_err("q5_0", &one(&[32], 6, 0, &[0; 22]), "tensor type 6");
  expect_err(
    "dim-big",
    &one(&[1 << 31], 0, 0, &[0; 4]),
    "exceeds i32::MAX",
  );
  expect_err(
    "overflow",
    &one(&[i32::MAX as u64; 4], 0, 0, &[0; 4]),
    "overflows",
  );
  expect_err("past-end", &one(&[4], 0, 8, &[0; 16]), "past the end");
  expect_err(
    "offset-huge",
    &one(&[4], 0, u64::MAX - 8, &[0; 16]),
    "past the end",
  );
  expect_err("q8-ndim0", &one(&[], 8, 0, &[0; 34]), "multiple of 32");
  expect_err("q4-row", &one(&[16, 2], 2, 0, &[0; 36]), "multiple of 32");
  let dup = gguf(
    3,
    2,
    0,
    &[],
    &[tinfo("w", &[1], 0, 0), tinfo("w", &[1], 0, 32)],
    32,
    &[0; 36],
  );
  expect_err("dup", &dup, "duplicate tensor name");
  // Truncating a valid file anywhere is an error.
  let full = std::fs::read(format!("{DATA}/crafted.gguf")).unwrap();
  for cut in (0..full.len()).step_by(7) {
    expect_err(&format!("cut{cut}"), &full[..cut], "");
  }
  // Missing file / a directory.
  assert!(matches!(
    load_gguf(tmp("missing.gguf")),
    Err(Error::Io { .. })
  ));
  assert!(load_gguf(std::env::temp_dir()).is_err());
}

/// MLX's parser opens GGUF files read-write; a read-only file is an error
/// (unless the test runs as a user who can write it anyway, like root).
#[test]
fn read_only_file() {
  let p = tmp("ro.gguf");
  std::fs::write(&p, simple(&[])).unwrap();
  let mut perm = std::fs::metadata(&p).unwrap().permissions();
  perm.set_readonly(true);
  std::fs::set_permissions(&p, perm).unwrap();
  let writable = std::fs::OpenOptions::new().write(true).open(&p).is_ok();
  let r = load_gguf(&p);
  if writable {
    assert!(r.is_ok(), "{r:?}");
  } else {
    assert!(
      matches!(r, Err(Error::Format { ref msg, .. }) if msg.contains("read-write")),
      "{r:?}"
    );
  }
  let _ = std::fs::remove_file(Path::new(&p));
}

/// Random edits (xorshift, fixed seed) of the reference files: every result
/// is either a clean load or an error, never a crash. `cargo fuzz run gguf`
/// (fuzz/) does this coverage-guided.
#[test]
fn mutated_files_never_crash() {
  let seeds = [
    std::fs::read(format!("{DATA}/crafted.gguf")).unwrap(),
    std::fs::read(format!("{DATA}/mlx_saved.gguf")).unwrap(),
  ];
  let mut x = 0x9e37_79b9_7f4a_7c15u64;
  let mut next = move || {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
  };
  let p = tmp("mutated.gguf");
  let (mut ok, mut err) = (0, 0);
  for i in 0..1500 {
    let mut d = seeds[i % 2].clone();
    for _ in 0..1 + next() % 3 {
      let at = (next() % d.len() as u64) as usize;
      match next() % 3 {
        0 => d[at] ^= 1 << (next() % 8),
        1 => d[at] = [0u8, 1, 0x7f, 0x80, 0xff][(next() % 5) as usize],
        _ => d.truncate(at.max(24)),
      }
    }
    std::fs::write(&p, &d).unwrap();
    match load_gguf(&p) {
      Ok((mut t, _)) => {
        for a in t.values_mut() {
          let _ = a.eval();
        }
        ok += 1
      }
      Err(_) => err += 1,
    }
  }
  assert!(ok > 0 && err > 0, "{ok} loaded, {err} rejected");
}

// ------------------------------------------- read_gguf / load_gguf_tensor

/// `read_gguf` (Rust) gives the same metadata as MLX's loader, and
/// `load_gguf_tensor` the same tensors for the types MLX keeps (f32, f16,
/// q4_0 / q4_1 / q8_0 as packed weight, scales, biases: bit for bit).
#[test]
fn rust_reader_matches_mlx_loader() {
  use mlxrs_core::io::{GgufTensor, load_gguf_tensor, read_gguf};
  for stem in ["mlx_saved", "crafted"] {
    let p = format!("{DATA}/{stem}.gguf");
    let (mlx_t, mlx_m) = load_gguf(&p).unwrap();
    let (h, meta) = read_gguf(&p).unwrap();
    assert_eq!(meta.len(), mlx_m.len(), "{stem}: metadata count");
    for (k, v) in &meta {
      match (v, &mlx_m[k]) {
        (GgufMeta::Array(a), GgufMeta::Array(b)) => assert_same(k, a, b),
        (GgufMeta::String(a), GgufMeta::String(b)) => assert_eq!(a, b, "{k}"),
        (GgufMeta::Strings(a), GgufMeta::Strings(b)) => assert_eq!(a, b, "{k}"),
        (a, b) => panic!("{stem}: {k}: {a:?} vs {b:?}"),
      }
    }
    let mut compared = 0;
    for (name, info) in &h.tensors {
      // MLX converts bf16 and K-quants to float16 (see load_gguf_tensor's
      // own reference test below for those).
      if !matches!(info.ggml_type, 0 | 1 | 2 | 3 | 8 | 24 | 25 | 26) {
        continue;
      }
      match load_gguf_tensor(&p, info, false).unwrap() {
        GgufTensor::Dense(a) => assert_same(name, &a, &mlx_t[name]),
        GgufTensor::Quantized {
          weight,
          scales,
          biases,
          exact,
          ..
        } => {
          assert!(exact);
          let base = name.trim_end_matches(".weight");
          assert_same(name, &weight, &mlx_t[name]);
          assert_same(name, &scales, &mlx_t[&format!("{base}.scales")]);
          assert_same(name, &biases, &mlx_t[&format!("{base}.biases")]);
        }
      }
      compared += 1;
    }
    assert!(compared >= 2, "{stem}: {compared} tensors compared");
  }
}

/// Every block type against gguf-py's `gguf.quants.dequantize`
/// (tests/data/gguf/quants.gguf + quants_ref.safetensors, made by
/// scripts/make_gguf_quant_refs.py): dequantized values equal bit for bit;
/// the exact MLX affine forms dequantize (MLX's `dequantize`) to the same
/// values; requantized types (q2_k, q3_k, q6_k) stay within a step of their
/// new grid (RMS error below 0.35 steps).
#[test]
fn block_types_match_gguf_py() {
  use mlxrs_core::io::{GgufTensor, gguf_requant_bits, load_gguf_tensor, read_gguf};
  let p = format!("{DATA}/quants.gguf");
  let (refs, _) =
    mlxrs_core::io::load_safetensors(format!("{DATA}/quants_ref.safetensors")).unwrap();
  let (h, _) = read_gguf(&p).unwrap();
  assert_eq!(h.tensors.len(), 14);
  for (name, info) in &h.tensors {
    let want = ops::astype(&refs[name], Dtype::Float32)
      .unwrap()
      .to_vec::<f32>()
      .unwrap();
    let GgufTensor::Dense(d) = load_gguf_tensor(&p, info, true).unwrap() else {
      panic!("{name}: dequantize gives a dense tensor");
    };
    let got = ops::astype(&d, Dtype::Float32)
      .unwrap()
      .to_vec::<f32>()
      .unwrap();
    let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(bad, 0, "{name}: dequantized: {bad} values differ");
    match load_gguf_tensor(&p, info, false).unwrap() {
      GgufTensor::Dense(_) => assert!(matches!(info.ggml_type, 1 | 30), "{name}"),
      GgufTensor::Quantized {
        weight,
        scales,
        biases,
        bits,
        group_size,
        exact,
      } => {
        // Widened to float32 as the model loader does for float32 compute
        // (MLX dequantizes in the scales' dtype).
        let scales = ops::astype(&scales, Dtype::Float32).unwrap();
        let biases = ops::astype(&biases, Dtype::Float32).unwrap();
        let mut dq = ops::dequantize(
          &weight,
          &scales,
          Some(&biases),
          Some(group_size),
          Some(bits),
          "affine",
          None,
          Some(Dtype::Float32),
        )
        .unwrap();
        assert_eq!(dq.shape(), d.shape(), "{name}");
        let dq = dq.to_vec::<f32>().unwrap();
        if exact {
          let bad = dq.iter().zip(&want).filter(|(a, b)| a != b).count();
          assert_eq!(bad, 0, "{name}: exact affine form: {bad} values differ");
        } else {
          assert_eq!(Some(bits), gguf_requant_bits(info.ggml_type), "{name}");
          let mut s = ops::astype(&scales, Dtype::Float32).unwrap();
          let s = s.to_vec::<f32>().unwrap();
          // mx.quantize's affine grid puts one group end exactly on the
          // grid, so the other end may round by up to a full step; on
          // average the error is that of uniform rounding (step / sqrt 12).
          let mut sq = 0.0f64;
          for (i, (a, b)) in dq.iter().zip(&want).enumerate() {
            let step = s[i / 32].abs();
            assert!(
              (a - b).abs() <= step * 1.001 + 1e-7,
              "{name}[{i}]: {a} vs {b} (step {step})"
            );
            sq += ((a - b) as f64 / step as f64).powi(2);
          }
          let rms = (sq / dq.len() as f64).sqrt();
          assert!(rms < 0.35, "{name}: rms error {rms} steps");
        }
      }
    }
  }
}

/// The Rust reader on the mutated files of [`mutated_files_never_crash`]
/// plus `quants.gguf` (every block type): `read_gguf`, then every tensor
/// with `load_gguf_tensor` quantized and dequantized; errors, never a crash.
#[test]
fn mutated_files_never_crash_rust_reader() {
  use mlxrs_core::io::{GgufTensor, load_gguf_tensor, read_gguf};
  let seeds = [
    std::fs::read(format!("{DATA}/crafted.gguf")).unwrap(),
    std::fs::read(format!("{DATA}/quants.gguf")).unwrap(),
  ];
  let mut x = 0x2545_f491_4f6c_dd1du64;
  let mut next = move || {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
  };
  let p = tmp("mutated-rust.gguf");
  let (mut ok, mut err) = (0, 0);
  for i in 0..600 {
    let mut d = seeds[i % 2].clone();
    for _ in 0..1 + next() % 3 {
      let at = (next() % d.len() as u64) as usize;
      match next() % 3 {
        0 => d[at] ^= 1 << (next() % 8),
        1 => d[at] = [0u8, 1, 0x7f, 0x80, 0xff][(next() % 5) as usize],
        _ => d.truncate(at.max(24)),
      }
    }
    std::fs::write(&p, &d).unwrap();
    let Ok((h, _)) = read_gguf(&p) else {
      err += 1;
      continue;
    };
    for info in h.tensors.values() {
      for deq in [false, true] {
        match load_gguf_tensor(&p, info, deq) {
          Ok(GgufTensor::Dense(mut a)) => {
            let _ = a.eval();
          }
          Ok(GgufTensor::Quantized {
            mut weight,
            mut scales,
            ..
          }) => {
            let _ = weight.eval();
            let _ = scales.eval();
          }
          Err(_) => {}
        }
      }
    }
    ok += 1;
  }
  assert!(ok > 0 && err > 0, "{ok} read, {err} rejected");
}
