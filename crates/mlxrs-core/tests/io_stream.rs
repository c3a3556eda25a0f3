//! Safetensors / `.npy` over Rust streams (`mlxrs_core::io::*_from` /
//! `*_to`), replayed against python: `scripts/make_op_refs.py --only io`
//! writes with `mx.save_safetensors(BytesIO)` / `mx.save(BytesIO)` into
//! `tests/data/op_refs/io/` and records what `mx.load(BytesIO)` reads back.
//! Values must match exactly (loading only moves bytes), and the bytes
//! mlxrs writes must equal python's.

use std::collections::HashMap;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use mlxrs_core::io::{load_npy_from, load_safetensors_from, save_npy_to, save_safetensors_to};
use mlxrs_core::{Array, Dtype, Error, ops};
use serde_json::Value;

fn dir() -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/op_refs/io")
}

fn bytes(name: &str) -> Vec<u8> {
  std::fs::read(dir().join(name)).unwrap()
}

fn expected() -> Value {
  serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

/// `a` equals python's record (dtype name, shape, values as float32).
fn assert_matches(name: &str, a: &Array, want: &Value) {
  let dt = want["dtype"].as_str().unwrap();
  assert_eq!(Some(a.dtype()), Dtype::parse(dt), "{name}: dtype");
  let shape: Vec<i32> = want["shape"]
    .as_array()
    .unwrap()
    .iter()
    .map(|d| d.as_i64().unwrap() as i32)
    .collect();
  assert_eq!(a.shape(), shape, "{name}: shape");
  let got = ops::astype(a, Dtype::Float32)
    .unwrap()
    .to_vec::<f32>()
    .unwrap();
  let want: Vec<f32> = want["values"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_f64().unwrap() as f32)
    .collect();
  assert_eq!(got, want, "{name}: values");
}

fn assert_map(got: &HashMap<String, Array>, want: &Value) {
  let want = want.as_object().unwrap();
  assert_eq!(got.len(), want.len());
  for (k, w) in want {
    assert_matches(k, &got[k], w);
  }
}

#[test]
fn loads_python_safetensors_from_a_cursor() {
  let exp = expected();
  let (one, meta) = load_safetensors_from(&mut Cursor::new(bytes("one.safetensors"))).unwrap();
  assert_map(&one, &exp["one"]);
  let want_meta: HashMap<String, String> =
    serde_json::from_value(exp["one_metadata"].clone()).unwrap();
  assert_eq!(meta, want_meta);
  // The stream is read from its start whatever its position.
  let mut c = Cursor::new(bytes("multi.safetensors"));
  c.seek(SeekFrom::Start(17)).unwrap();
  let (multi, meta) = load_safetensors_from(&mut c).unwrap();
  assert_map(&multi, &exp["multi"]);
  assert!(meta.is_empty());
}

#[test]
fn loads_python_npy_from_a_cursor() {
  let a = load_npy_from(&mut Cursor::new(bytes("a.npy"))).unwrap();
  assert_matches("npy", &a, &expected()["npy"]);
}

#[test]
fn writes_the_bytes_python_writes() {
  let want = bytes("one.safetensors");
  let (one, meta) = load_safetensors_from(&mut Cursor::new(want.clone())).unwrap();
  let mut out = Cursor::new(Vec::new());
  save_safetensors_to(&mut out, &one, &meta).unwrap();
  assert_eq!(out.into_inner(), want);

  let want = bytes("a.npy");
  let a = load_npy_from(&mut Cursor::new(want.clone())).unwrap();
  let mut out = Cursor::new(Vec::new());
  save_npy_to(&mut out, &a).unwrap();
  assert_eq!(out.into_inner(), want);
}

#[test]
fn round_trips_through_a_cursor() {
  let exp = expected();
  let (multi, _) = load_safetensors_from(&mut Cursor::new(bytes("multi.safetensors"))).unwrap();
  let meta = HashMap::from([("k".to_string(), "v".to_string())]);
  let mut buf = Cursor::new(Vec::new());
  save_safetensors_to(&mut buf, &multi, &meta).unwrap();
  let (back, back_meta) = load_safetensors_from(&mut buf).unwrap();
  assert_map(&back, &exp["multi"]);
  assert_eq!(back_meta, meta);
}

/// A reader over `data` that fails (or panics) when asked for bytes at or
/// past `fail_at` (the tensor data, read by MLX during evaluation).
struct Faulty {
  inner: Cursor<Vec<u8>>,
  fail_at: u64,
  panic: bool,
}

impl Read for Faulty {
  fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
    if self.inner.position() + buf.len() as u64 > self.fail_at {
      if self.panic {
        panic!("reader exploded");
      }
      return Err(std::io::Error::other("disk on fire"));
    }
    self.inner.read(buf)
  }
}

impl Seek for Faulty {
  fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
    self.inner.seek(to)
  }
}

fn data_start(file: &[u8]) -> u64 {
  8 + u64::from_le_bytes(file[..8].try_into().unwrap())
}

#[test]
fn failing_reader_is_an_error() {
  let file = bytes("multi.safetensors");
  let fail_at = data_start(&file) + 4;
  for panic in [false, true] {
    let mut r = Faulty {
      inner: Cursor::new(file.clone()),
      fail_at,
      panic,
    };
    match load_safetensors_from(&mut r) {
      Err(Error::Io { source, .. }) => {
        let want = if panic {
          "reader exploded"
        } else {
          "disk on fire"
        };
        assert!(source.to_string().contains(want), "{source}");
      }
      other => panic!("expected an io error, got {other:?}"),
    }
  }
  // A stream cut inside the data: a format error from the header check.
  let mut short = Cursor::new(file[..file.len() - 3].to_vec());
  assert!(matches!(
    load_safetensors_from(&mut short),
    Err(Error::Format { .. })
  ));
  // npy: failing inside the data.
  let npy = bytes("a.npy");
  let mut r = Faulty {
    inner: Cursor::new(npy.clone()),
    fail_at: npy.len() as u64 - 8,
    panic: false,
  };
  match load_npy_from(&mut r) {
    Err(Error::Io { source, .. }) => {
      assert!(source.to_string().contains("disk on fire"), "{source}")
    }
    other => panic!("expected an io error, got {other:?}"),
  }
}

/// A writer that accepts `room` bytes, then fails.
struct Full {
  inner: Cursor<Vec<u8>>,
  room: usize,
}

impl Write for Full {
  fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
    if self.inner.get_ref().len() + buf.len() > self.room {
      return Err(std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "no space left",
      ));
    }
    self.inner.write(buf)
  }
  fn flush(&mut self) -> std::io::Result<()> {
    Ok(())
  }
}

impl Seek for Full {
  fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
    self.inner.seek(to)
  }
}

#[test]
fn failing_writer_is_an_error() {
  let (multi, _) = load_safetensors_from(&mut Cursor::new(bytes("multi.safetensors"))).unwrap();
  let mut w = Full {
    inner: Cursor::new(Vec::new()),
    room: 40,
  };
  match save_safetensors_to(&mut w, &multi, &HashMap::new()) {
    Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::StorageFull),
    other => panic!("expected an io error, got {other:?}"),
  }
  let a = Array::from_slice::<f32>(&[1.0, 2.0], &(2,)).unwrap();
  let mut w = Full {
    inner: Cursor::new(Vec::new()),
    room: 10,
  };
  assert!(matches!(save_npy_to(&mut w, &a), Err(Error::Io { .. })));
}
