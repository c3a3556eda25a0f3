//! Streams: python `mx.Stream`, `mx.default_stream(device)`, `mx.new_stream`,
//! `mx.stream(s)` (context manager), `mx.synchronize`; swift `StreamOrDevice`.
//!
//! MLX keeps a default stream per thread (since 0.31). Every mlxrs op runs on
//! [`default_stream`]: the stream set by the innermost [`with_stream`] on
//! this thread, else MLX's default stream of the default device for this
//! thread.

use std::cell::RefCell;

use mlxrs_sys::mlx_stream;

use crate::device::{Device, RawDevice};
use crate::error::{Result, check};

/// An owned MLX stream handle.
pub struct Stream(pub(crate) mlx_stream);

// SAFETY: the handle owns a heap `mlx::core::Stream`, a plain value
// (device + index) with no thread affinity; moving it is sound.
unsafe impl Send for Stream {}

impl Drop for Stream {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_stream_free(self.0) };
  }
}

impl Clone for Stream {
  fn clone(&self) -> Self {
    // SAFETY: a NULL-ctx handle, then a copy of the live source into it.
    let mut out = Stream(unsafe { mlxrs_sys::mlx_stream_new() });
    if !self.0.ctx.is_null() {
      // SAFETY: live source; out-handle owned by `out`.
      unsafe { mlxrs_sys::mlx_stream_set(&mut out.0, self.0) };
    }
    out
  }
}

impl Stream {
  /// A new stream on `device` (`mx.new_stream(device)`).
  pub fn new(device: Device) -> Result<Stream> {
    let d = device.raw();
    // SAFETY: live device handle; returns an owned stream handle (NULL on
    // failure, with the error recorded).
    let s = Stream(unsafe { mlxrs_sys::mlx_stream_new_device(d.0) });
    if s.0.ctx.is_null() {
      return Err(crate::Error::Mlx(crate::error::last_error()));
    }
    Ok(s)
  }

  /// The calling thread's default stream of `device`
  /// (`mx.default_stream(device)`).
  pub fn default_for(device: Device) -> Result<Stream> {
    let d = device.raw();
    // SAFETY: NULL-ctx out-handle owned by `s`, filled by the call.
    let mut s = Stream(unsafe { mlxrs_sys::mlx_stream_new() });
    // SAFETY: live device handle; out-handle owned by `s`.
    check(unsafe { mlxrs_sys::mlx_get_default_stream(&mut s.0, d.0) })?;
    Ok(s)
  }

  /// The device this stream runs on.
  pub fn device(&self) -> Result<Device> {
    // SAFETY: NULL-ctx out-handle owned by `d`.
    let mut d = RawDevice(unsafe { mlxrs_sys::mlx_device_new() });
    // SAFETY: live stream; out-handle owned by `d`.
    check(unsafe { mlxrs_sys::mlx_stream_get_device(&mut d.0, self.0) })?;
    d.to_device()
  }

  /// Wait for all work queued on this stream (`mx.synchronize(s)`).
  pub fn synchronize(&self) -> Result<()> {
    // SAFETY: live stream handle.
    check(unsafe { mlxrs_sys::mlx_synchronize(self.0) })
  }

  /// The raw handle, borrowed.
  pub fn as_raw(&self) -> mlx_stream {
    self.0
  }
}

thread_local! {
  static STREAM_STACK: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

/// The stream mlxrs ops use on this thread: the innermost [`with_stream`]'s,
/// else a NULL handle, which the C layer reads as "MLX's default stream of
/// the default device" for the calling thread.
pub fn default_stream() -> mlx_stream {
  STREAM_STACK.with(|s| {
    s.borrow().last().map(|s| s.0).unwrap_or(mlx_stream {
      ctx: std::ptr::null_mut(),
    })
  })
}

/// Run `f` with every mlxrs op on this thread using `stream` (python
/// `with mx.stream(s): ...`, swift `Stream.withNewDefaultStream`).
pub fn with_stream<R>(stream: &Stream, f: impl FnOnce() -> R) -> R {
  struct Pop;
  impl Drop for Pop {
    fn drop(&mut self) {
      STREAM_STACK.with(|s| s.borrow_mut().pop());
    }
  }
  STREAM_STACK.with(|s| s.borrow_mut().push(stream.clone()));
  let _pop = Pop;
  f()
}

/// Run `f` with `stream` as MLX's own default stream of its device on this
/// thread (C++ `mx::set_default_stream`), restoring the previous one after.
/// Unlike [`with_stream`], mlxrs ops in `f` pass no stream of their own and
/// follow MLX's default, as do the ops MLX makes by itself and the compiled
/// functions (MLX keys its compile cache on its default stream), so
/// everything `f` builds is on `stream`. Inside `f`, an inner
/// [`with_stream`] still takes precedence.
pub fn with_default_stream<R>(stream: &Stream, f: impl FnOnce() -> R) -> Result<R> {
  let prev = Stream::default_for(stream.device()?)?;
  struct Restore(Stream);
  impl Drop for Restore {
    fn drop(&mut self) {
      // SAFETY: live stream handle owned by `self`.
      unsafe { mlxrs_sys::mlx_set_default_stream(self.0.0) };
      STREAM_STACK.with(|s| s.borrow_mut().pop());
    }
  }
  // SAFETY: live stream handle.
  check(unsafe { mlxrs_sys::mlx_set_default_stream(stream.0) })?;
  // A NULL entry: ops use MLX's default stream, even under an outer
  // `with_stream`.
  STREAM_STACK.with(|s| {
    s.borrow_mut().push(Stream(mlx_stream {
      ctx: std::ptr::null_mut(),
    }))
  });
  let _restore = Restore(prev);
  Ok(f())
}

/// Run `f` with ops on the default stream of `device` (python
/// `with mx.stream(mx.cpu): ...`).
pub fn with_device<R>(device: Device, f: impl FnOnce() -> R) -> Result<R> {
  let s = Stream::default_for(device)?;
  Ok(with_stream(&s, f))
}

/// Wait for all queued work on the default stream (`mx.synchronize()`).
pub fn synchronize() -> Result<()> {
  // SAFETY: NULL or a live stream from the thread-local stack.
  check(unsafe { mlxrs_sys::mlx_synchronize(default_stream()) })
}
