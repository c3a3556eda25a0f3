//! Safetensors and `.npy` over Rust streams instead of paths: python
//! `mx.load(file_object)` / `mx.save_safetensors(file_object, ...)` /
//! `mx.save(file_object, a)`; C++ `load` / `save` / `load_safetensors` /
//! `save_safetensors` over `io::Reader` / `io::Writer`. The C layer is
//! mlx-c's `mlx_io_reader` / `mlx_io_writer` (a vtable of callbacks on a
//! descriptor).
//!
//! The stream is borrowed for the call only: loads evaluate the arrays
//! before returning (MLX would otherwise read the tensor data later, on its
//! io threads), then the stream is detached from MLX, so a reference MLX
//! might keep can no longer reach it. An I/O error or a panic inside the
//! stream is caught in the callback (never unwinds into C++) and returned
//! as an [`Error::Io`].

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::io::{Read, Seek, SeekFrom, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{MapArr, MapStr, c_maps, header_from, map_entries};
use crate::array::Array;
use crate::error::{Error, Result, check};
use crate::stream::default_stream;

/// What the callbacks need from a stream (a reader or a writer).
trait RawStream: Send {
  fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64>;
  fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
  fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()>;
}

struct Reader<'a, R>(&'a mut R);
impl<R: Read + Seek + Send> RawStream for Reader<'_, R> {
  fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
    self.0.seek(to)
  }
  fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
    self.0.read_exact(buf)
  }
  fn write_all(&mut self, _: &[u8]) -> std::io::Result<()> {
    Err(std::io::Error::new(
      std::io::ErrorKind::Unsupported,
      "write on a reader",
    ))
  }
}

struct Writer<'a, W>(&'a mut W);
impl<W: Write + Seek + Send> RawStream for Writer<'_, W> {
  fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
    self.0.seek(to)
  }
  fn read_exact(&mut self, _: &mut [u8]) -> std::io::Result<()> {
    Err(std::io::Error::new(
      std::io::ErrorKind::Unsupported,
      "read on a writer",
    ))
  }
  fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
    self.0.write_all(buf)
  }
}

/// The descriptor the C callbacks receive. `stream` is a lifetime-erased
/// borrow, cleared by [`Attached`]'s drop before the borrow ends.
struct Desc {
  stream: Mutex<Option<*mut (dyn RawStream + 'static)>>,
  failed: AtomicBool,
  error: Mutex<Option<std::io::Error>>,
  label: CString,
}

// SAFETY: the stream pointer is only dereferenced under the mutex, and the
// stream it points at is `Send`.
unsafe impl Send for Desc {}
// SAFETY: as above; every field is accessed through a mutex or an atomic.
unsafe impl Sync for Desc {}

impl Desc {
  fn fail(&self, e: std::io::Error) {
    self.failed.store(true, Ordering::SeqCst);
    if let Ok(mut slot) = self.error.lock()
      && slot.is_none()
    {
      *slot = Some(e);
    }
  }

  /// Run `f` on the stream, catching its errors and panics.
  fn with<T>(&self, default: T, f: impl FnOnce(&mut dyn RawStream) -> std::io::Result<T>) -> T {
    if self.failed.load(Ordering::SeqCst) {
      return default;
    }
    // A poisoned lock means another callback panicked (and records why).
    let Ok(guard) = self.stream.lock() else {
      self.failed.store(true, Ordering::SeqCst);
      return default;
    };
    let r = catch_unwind(AssertUnwindSafe(move || {
      let p = guard
        .ok_or_else(|| std::io::Error::other("stream used after the call that borrowed it"))?;
      // SAFETY: `p` is set only while the borrow it was made from is alive
      // (cleared by `Attached::drop` before the borrow ends), and the mutex
      // guard gives exclusive access.
      f(unsafe { &mut *p })
    }));
    match r {
      Ok(Ok(v)) => v,
      Ok(Err(e)) => {
        self.fail(e);
        default
      }
      Err(p) => {
        let msg = p
          .downcast_ref::<&str>()
          .map(|s| s.to_string())
          .or_else(|| p.downcast_ref::<String>().cloned())
          .unwrap_or_else(|| "a panic".into());
        self.fail(std::io::Error::other(format!("stream panicked: {msg}")));
        default
      }
    }
  }

  fn take_error(&self) -> Option<Error> {
    if !self.failed.load(Ordering::SeqCst) {
      return None;
    }
    let e = self.error.lock().ok().and_then(|mut s| s.take());
    Some(Error::Io {
      path: self.label.to_string_lossy().into_owned(),
      source: e.unwrap_or_else(|| std::io::Error::other("stream failed")),
    })
  }
}

/// # Safety
/// `d` is a descriptor made by [`Attached::new`] (kept alive by the C side).
unsafe fn desc<'a>(d: *mut c_void) -> &'a Desc {
  // SAFETY: per the function's contract.
  unsafe { &*(d as *const Desc) }
}

extern "C" fn cb_is_open(d: *mut c_void) -> bool {
  // SAFETY: `d` is our descriptor (the vtable is only installed with it).
  let d = unsafe { desc(d) };
  d.stream.lock().map(|s| s.is_some()).unwrap_or(false)
}
extern "C" fn cb_good(d: *mut c_void) -> bool {
  // SAFETY: as in `cb_is_open`.
  !unsafe { desc(d) }.failed.load(Ordering::SeqCst)
}
extern "C" fn cb_tell(d: *mut c_void) -> usize {
  // SAFETY: as in `cb_is_open`.
  unsafe { desc(d) }.with(0, |s| s.seek(SeekFrom::Current(0)).map(|p| p as usize))
}
extern "C" fn cb_seek(d: *mut c_void, off: i64, whence: c_int) {
  // SAFETY: as in `cb_is_open`.
  unsafe { desc(d) }.with((), |s| {
    let to = match whence {
      1 => SeekFrom::Current(off),
      2 => SeekFrom::End(off),
      _ => SeekFrom::Start(
        u64::try_from(off).map_err(|_| std::io::Error::other("negative seek offset"))?,
      ),
    };
    s.seek(to).map(|_| ())
  })
}
extern "C" fn cb_read(d: *mut c_void, data: *mut c_char, n: usize) {
  // SAFETY: as in `cb_is_open`.
  unsafe { desc(d) }.with((), |s| {
    if n == 0 {
      return Ok(());
    }
    // SAFETY: MLX passes a buffer of `n` writable bytes.
    let buf = unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), n) };
    s.read_exact(buf)
  })
}
extern "C" fn cb_read_at(d: *mut c_void, data: *mut c_char, n: usize, off: usize) {
  // SAFETY: as in `cb_is_open`.
  unsafe { desc(d) }.with((), |s| {
    s.seek(SeekFrom::Start(off as u64))?;
    if n == 0 {
      return Ok(());
    }
    // SAFETY: MLX passes a buffer of `n` writable bytes.
    let buf = unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), n) };
    s.read_exact(buf)
  })
}
extern "C" fn cb_write(d: *mut c_void, data: *const c_char, n: usize) {
  // SAFETY: as in `cb_is_open`.
  unsafe { desc(d) }.with((), |s| {
    if n == 0 {
      return Ok(());
    }
    // SAFETY: MLX passes `n` readable bytes.
    let buf = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), n) };
    s.write_all(buf)
  })
}
extern "C" fn cb_label(d: *mut c_void) -> *const c_char {
  // SAFETY: as in `cb_is_open`; the label lives as long as the descriptor.
  unsafe { desc(d) }.label.as_ptr()
}
extern "C" fn cb_drop(d: *mut c_void) {
  // SAFETY: `d` came from `Arc::into_raw` in `Attached::new`; the C side
  // calls this once, when its last reference is gone.
  drop(unsafe { Arc::from_raw(d as *const Desc) });
}

const VTABLE: mlxrs_sys::mlx_io_vtable = mlxrs_sys::mlx_io_vtable {
  is_open: Some(cb_is_open),
  good: Some(cb_good),
  tell: Some(cb_tell),
  seek: Some(cb_seek),
  read: Some(cb_read),
  read_at_offset: Some(cb_read_at),
  write: Some(cb_write),
  label: Some(cb_label),
};

/// A stream lent to MLX for the lifetime `'a`; dropping it (also on an
/// early return or a panic) detaches the stream.
struct Attached<'a> {
  desc: Arc<Desc>,
  _borrow: std::marker::PhantomData<&'a mut ()>,
}

impl<'a> Attached<'a> {
  fn new(stream: &'a mut (dyn RawStream + 'a), label: &str) -> Attached<'a> {
    let p: *mut (dyn RawStream + 'a) = stream;
    // SAFETY: only the lifetime changes (same fat-pointer layout); the
    // pointer is cleared in `drop`, before `'a` ends.
    let p: *mut (dyn RawStream + 'static) = unsafe { std::mem::transmute(p) };
    let desc = Arc::new(Desc {
      stream: Mutex::new(Some(p)),
      failed: AtomicBool::new(false),
      error: Mutex::new(None),
      label: CString::new(label).unwrap_or_default(),
    });
    Attached {
      desc,
      _borrow: std::marker::PhantomData,
    }
  }

  /// A C-side reference to the descriptor, released by `cb_drop`.
  fn c_ref(&self) -> *mut c_void {
    Arc::into_raw(self.desc.clone()) as *mut c_void
  }
}

impl Drop for Attached<'_> {
  fn drop(&mut self) {
    // Poisoned or not, clear the pointer.
    match self.desc.stream.lock() {
      Ok(mut g) => *g = None,
      Err(p) => *p.into_inner() = None,
    }
  }
}

struct CReader(mlxrs_sys::mlx_io_reader);
impl Drop for CReader {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_io_reader_free(self.0) };
  }
}
struct CWriter(mlxrs_sys::mlx_io_writer);
impl Drop for CWriter {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_io_writer_free(self.0) };
  }
}

fn c_reader(a: &Attached<'_>) -> Result<CReader> {
  // SAFETY: the vtable's callbacks accept this descriptor; `cb_drop`
  // releases the reference passed here (also on failure).
  let r =
    CReader(unsafe { mlxrs_sys::mlxrs_io_reader_new_payload(a.c_ref(), VTABLE, Some(cb_drop)) });
  if r.0.ctx.is_null() {
    return Err(Error::Mlx(crate::error::last_error()));
  }
  Ok(r)
}

fn c_writer(a: &Attached<'_>) -> Result<CWriter> {
  // SAFETY: as in `c_reader`.
  let w =
    CWriter(unsafe { mlxrs_sys::mlxrs_io_writer_new_payload(a.c_ref(), VTABLE, Some(cb_drop)) });
  if w.0.ctx.is_null() {
    return Err(Error::Mlx(crate::error::last_error()));
  }
  Ok(w)
}

/// The stream's error if it failed, else `e`.
fn prefer_stream_error(a: &Attached<'_>, e: Error) -> Error {
  a.desc.take_error().unwrap_or(e)
}

/// Load every tensor of a safetensors stream and its metadata (python
/// `mx.load(file_object, format="safetensors", return_metadata=True)`),
/// e.g. from a `std::io::Cursor<Vec<u8>>` holding a downloaded file. The
/// stream is read from its start; the header is validated first (as
/// [`load_safetensors`](super::load_safetensors) does), and the arrays are
/// evaluated before returning. A stream error (or panic) is an
/// [`Error::Io`]; a malformed stream an [`Error::Format`].
pub fn load_safetensors_from<R: Read + Seek + Send>(
  reader: &mut R,
) -> Result<(HashMap<String, Array>, HashMap<String, String>)> {
  const LABEL: &str = "<safetensors reader>";
  let io = |e| Error::Io {
    path: LABEL.into(),
    source: e,
  };
  let len = reader.seek(SeekFrom::End(0)).map_err(io)?;
  reader.seek(SeekFrom::Start(0)).map_err(io)?;
  let header = header_from(reader, len, Path::new(LABEL))?;
  reader.seek(SeekFrom::Start(0)).map_err(io)?;
  let mut raw = Reader(reader);
  let att = Attached::new(&mut raw, LABEL);
  let r = c_reader(&att)?;
  let mut arrays = MapArr(mlxrs_sys::mlx_map_string_to_array {
    ctx: std::ptr::null_mut(),
  });
  let mut meta = MapStr(mlxrs_sys::mlx_map_string_to_string {
    ctx: std::ptr::null_mut(),
  });
  // SAFETY: the out-handles are owned by the guards; `r` is a live reader
  // whose descriptor stays attached until `att` drops (after evaluation).
  let rc = unsafe {
    mlxrs_sys::mlx_load_safetensors_reader(&mut arrays.0, &mut meta.0, r.0, default_stream())
  };
  check(rc).map_err(|e| prefer_stream_error(&att, e))?;
  let out = map_entries(&arrays, header.tensors.len())?;
  drop(arrays);
  let list: Vec<Array> = out.values().cloned().collect();
  crate::transforms::eval(&list).map_err(|e| prefer_stream_error(&att, e))?;
  drop(r);
  if let Some(e) = att.desc.take_error() {
    return Err(e);
  }
  Ok((out, header.metadata.into_iter().collect()))
}

/// Write `arrays` and `metadata` as safetensors to a stream (python
/// `mx.save_safetensors(file_object, arrays, metadata)`), starting at its
/// current position. Evaluates the arrays.
pub fn save_safetensors_to<W: Write + Seek + Send>(
  writer: &mut W,
  arrays: &HashMap<String, Array>,
  metadata: &HashMap<String, String>,
) -> Result<()> {
  let (map, meta) = c_maps(arrays, metadata)?;
  let mut raw = Writer(writer);
  let att = Attached::new(&mut raw, "<safetensors writer>");
  let w = c_writer(&att)?;
  let _lock = crate::eval_lock::eval_guard();
  // SAFETY: live handles for the call; the writer is attached until `att`
  // drops.
  let rc = unsafe { mlxrs_sys::mlx_save_safetensors_writer(w.0, map.0, meta.0) };
  check(rc).map_err(|e| prefer_stream_error(&att, e))?;
  drop(w);
  match att.desc.take_error() {
    Some(e) => Err(e),
    None => Ok(()),
  }
}

/// Load a `.npy` array from a stream (python `mx.load(file_object,
/// format="npy")`), read from its current position. Evaluates it.
pub fn load_npy_from<R: Read + Seek + Send>(reader: &mut R) -> Result<Array> {
  let mut raw = Reader(reader);
  let att = Attached::new(&mut raw, "<npy reader>");
  let r = c_reader(&att)?;
  let mut out = Array::null();
  // SAFETY: out-handle owned by `out`; `r` is live and attached until `att`
  // drops (after evaluation).
  let rc = unsafe { mlxrs_sys::mlx_load_reader(&mut out.0, r.0, default_stream()) };
  check(rc).map_err(|e| prefer_stream_error(&att, e))?;
  out.eval().map_err(|e| prefer_stream_error(&att, e))?;
  drop(r);
  if let Some(e) = att.desc.take_error() {
    return Err(e);
  }
  Ok(out)
}

/// Write `array` as `.npy` to a stream (python `mx.save(file_object, a)`).
pub fn save_npy_to<W: Write + Seek + Send>(writer: &mut W, array: &Array) -> Result<()> {
  if array.is_null() {
    return Err(Error::InvalidArgument("empty array handle".into()));
  }
  let mut raw = Writer(writer);
  let att = Attached::new(&mut raw, "<npy writer>");
  let w = c_writer(&att)?;
  let _lock = crate::eval_lock::eval_guard();
  // SAFETY: live handles for the call; the writer is attached until `att`
  // drops.
  let rc = unsafe { mlxrs_sys::mlx_save_writer(w.0, array.0) };
  check(rc).map_err(|e| prefer_stream_error(&att, e))?;
  drop(w);
  match att.desc.take_error() {
    Some(e) => Err(e),
    None => Ok(()),
  }
}
