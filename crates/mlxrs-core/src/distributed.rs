//! Distributed communication between MLX processes: python
//! `mlx.core.distributed` (`mx.distributed.init`, `all_sum`, `all_gather`,
//! `send`, `recv`, ...), C++ `mlx::core::distributed`.
//!
//! A [`Group`] comes from [`init`]. Which backend and which peers are used is
//! configured as for python, by environment variables set by a launcher
//! (`mlx.launch`) or by hand. For the `ring` backend (TCP, shipped in every
//! MLX build):
//!
//! - `MLX_RANK`: this process's rank;
//! - `MLX_HOSTFILE`: a JSON file with one list of `"ip:port"` strings per
//!   rank, e.g. `[["127.0.0.1:5000"], ["127.0.0.1:5001"]]`;
//! - `MLX_RING_VERBOSE=1`: log the connection set-up.
//!
//! Without a configured backend, `init(false, "any")` returns the singleton
//! group (rank 0 of 1) on which every collective is the identity, as in
//! python.
//!
//! The collectives are lazy ops like any other: the communication happens
//! when the result is evaluated, and a failure (a backend without that
//! operation, a peer that went away) is an [`Error::Mlx`] from
//! [`Array::eval`]. The ring backend has no `sum_scatter` and no
//! [`Group::split`]. On a GPU machine, run the collectives of the ring
//! backend on the CPU (python `stream=mx.cpu`): wrap the calls in
//! [`with_device`](crate::with_device)`(Device::CPU, ..)`.

use mlxrs_sys::mlx_distributed_group;

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result, check, cstring, last_error};
use crate::stream::default_stream;

/// A group of communicating processes (python `mx.distributed.Group`).
/// Owns its C handle; dropping it releases this process's reference (the
/// backend's connections stay open while MLX holds them).
pub struct Group(mlx_distributed_group);

// SAFETY: the handle owns a heap `mlx::core::distributed::Group`, a
// shared_ptr to the backend's group object; MLX's collectives may be issued
// from any thread, so moving the handle between threads is sound. Not `Sync`
// (two threads issuing collectives on one group at once would interleave
// their messages).
unsafe impl Send for Group {}

impl Drop for Group {
  fn drop(&mut self) {
    // SAFETY: owned handle from `mlx_distributed_init` / `_split`; the free
    // function accepts a NULL ctx.
    unsafe { mlxrs_sys::mlx_distributed_group_free(self.0) };
  }
}

impl std::fmt::Debug for Group {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "Group(rank={}, size={})", self.rank(), self.size())
  }
}

/// Drop MLX's cached distributed backends (C++
/// `distributed::clear_backends()`; no python equivalent), so the next
/// [`init`] sets one up again (e.g. after changing `MLX_RANK` /
/// `MLX_HOSTFILE`). Groups already made keep their backend.
pub fn clear_backends() -> Result<()> {
  // SAFETY: no arguments.
  check(unsafe { mlxrs_sys::mlx_distributed_clear_backends() })
}

/// Whether a distributed backend is available in this MLX build (python
/// `mx.distributed.is_available(backend)`); `None` asks about any backend.
pub fn is_available(backend: Option<&str>) -> bool {
  let bk = match backend.map(cstring).transpose() {
    Ok(b) => b,
    Err(_) => return false,
  };
  // SAFETY: `bk` (or NULL) lives across the call and is only read.
  unsafe {
    mlxrs_sys::mlx_distributed_is_available(bk.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
  }
}

/// Initialise the distributed backend and return the group of all processes
/// (python `mx.distributed.init(strict=strict, backend=backend)`).
///
/// `backend` is `"any"`, `"ring"`, `"mpi"`, `"nccl"` or `"jaccl"`. With
/// `strict = false` a backend that cannot start gives the singleton group;
/// with `strict = true` it is an error.
pub fn init(strict: bool, backend: &str) -> Result<Group> {
  let bk = cstring(backend)?;
  // SAFETY: `bk` lives across the call; the returned handle is owned by the
  // `Group` (or NULL on failure, with the message recorded).
  let g = unsafe { mlxrs_sys::mlx_distributed_init(strict, bk.as_ptr()) };
  if g.ctx.is_null() {
    return Err(Error::Mlx(last_error()));
  }
  Ok(Group(g))
}

/// The payload of [`init_with_all_gather`]'s callback.
type AllGather = Box<dyn Fn(i32, i32, &[u8], &mut [u8]) -> Result<()> + Send + Sync>;

unsafe extern "C" fn all_gather_call(
  src: *const std::ffi::c_char,
  dst: *mut std::ffi::c_char,
  n: usize,
  rank: i32,
  size: i32,
  p: *mut std::ffi::c_void,
) -> std::ffi::c_int {
  let run = || -> Result<()> {
    let total = usize::try_from(size)
      .ok()
      .and_then(|s| s.checked_mul(n))
      .ok_or_else(|| Error::InvalidArgument(format!("all_gather: bad group size {size}")))?;
    // SAFETY: `p` is the live `AllGather` given to
    // `mlxrs_distributed_init_all_gather` (freed only by `drop_all_gather`).
    let f = unsafe { &*(p as *const AllGather) };
    let (src, dst) = if n == 0 {
      (&[][..], &mut [][..])
    } else {
      // SAFETY: MLX passes `n` readable bytes at `src` and `size * n`
      // writable bytes at `dst` (C++ `AllGatherFn` contract).
      unsafe {
        (
          std::slice::from_raw_parts(src.cast::<u8>(), n),
          std::slice::from_raw_parts_mut(dst.cast::<u8>(), total),
        )
      }
    };
    f(rank, size, src, dst)
  };
  match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
    Ok(Ok(())) => 0,
    _ => 1,
  }
}

unsafe extern "C" fn drop_all_gather(p: *mut std::ffi::c_void) {
  // SAFETY: `p` came from `Box::into_raw` in `init_with_all_gather`; the C
  // layer calls this once.
  let b = unsafe { Box::from_raw(p as *mut AllGather) };
  let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(b)));
}

/// [`init`] for the JACCL backend with a custom side channel (python
/// `mx.distributed.init(strict, backend="jaccl", all_gather_factory=...)`;
/// C++ `init(strict, bk, AllGatherFactory)`). `all_gather(rank, size, src,
/// dst)` must gather `src` of every rank into `dst` (`size * src.len()`
/// bytes, rank r's at `r * src.len()`); an `Err` or a panic fails the
/// backend's set-up. `backend` must be `"jaccl"` (as in python). JACCL is
/// macOS's Thunderbolt RDMA backend: elsewhere a strict init is an error and
/// a non-strict one the singleton group.
pub fn init_with_all_gather<F>(strict: bool, backend: &str, all_gather: F) -> Result<Group>
where
  F: Fn(i32, i32, &[u8], &mut [u8]) -> Result<()> + Send + Sync + 'static,
{
  if backend != "jaccl" {
    return Err(Error::InvalidArgument(format!(
      "init_with_all_gather: the all_gather side channel is only supported with backend \"jaccl\", not {backend:?}"
    )));
  }
  let bk = cstring(backend)?;
  let boxed: AllGather = Box::new(all_gather);
  let p = Box::into_raw(Box::new(boxed)).cast::<std::ffi::c_void>();
  // SAFETY: the callback and destructor match the payload's type; the C
  // layer owns `p` from here (also on failure); `bk` lives across the call.
  let g = unsafe {
    mlxrs_sys::mlxrs_distributed_init_all_gather(
      strict,
      bk.as_ptr(),
      Some(all_gather_call),
      p,
      Some(drop_all_gather),
    )
  };
  if g.ctx.is_null() {
    return Err(Error::Mlx(last_error()));
  }
  Ok(Group(g))
}

macro_rules! collectives {
  ($($(#[$m:meta])* $name:ident => $c:ident;)*) => {$(
    $(#[$m])*
    pub fn $name(x: &Array, group: Option<&Group>) -> Result<Array> {
      let mut res = Array::null();
      // SAFETY: `x` and the group are live borrows only read during the
      // call; the out-handle is fresh and owned by `res`.
      check(unsafe { mlxrs_sys::$c(&mut res.0, x.0, Group::raw(group), default_stream()) })?;
      Ok(res)
    }
  )*};
}

collectives! {
  /// Element-wise sum of `x` over all processes of `group` (`None`: the
  /// global group). Python `mx.distributed.all_sum(x, group=group)`.
  all_sum => mlx_distributed_all_sum;
  /// Concatenate `x` of every process along axis 0, in rank order. Python
  /// `mx.distributed.all_gather(x, group=group)`.
  all_gather => mlx_distributed_all_gather;
  /// Element-wise maximum over all processes. Python
  /// `mx.distributed.all_max(x, group=group)`.
  all_max => mlx_distributed_all_max;
  /// Element-wise minimum over all processes. Python
  /// `mx.distributed.all_min(x, group=group)`.
  all_min => mlx_distributed_all_min;
  /// Sum over all processes, then each keeps its slice of axis 0
  /// (reduce-scatter). Python `mx.distributed.sum_scatter(x, group=group)`.
  /// Not supported by the ring backend (an error at evaluation).
  sum_scatter => mlx_distributed_sum_scatter;
}

impl Group {
  /// This process's rank in the group (python `group.rank()`).
  pub fn rank(&self) -> i32 {
    // SAFETY: query on a live, non-null handle (checked in `init`/`split`).
    unsafe { mlxrs_sys::mlx_distributed_group_rank(self.0) }
  }

  /// The number of processes in the group (python `group.size()`).
  pub fn size(&self) -> i32 {
    // SAFETY: query on a live, non-null handle.
    unsafe { mlxrs_sys::mlx_distributed_group_size(self.0) }
  }

  /// Split into sub-groups: processes passing the same `color` form one
  /// group, ranked by `key` (`None`: by the current rank). Python
  /// `group.split(color, key=-1)`. The ring backend does not support it
  /// (an error).
  pub fn split(&self, color: i32, key: Option<i32>) -> Result<Group> {
    // SAFETY: live handle; the result is owned by the new `Group` or NULL.
    let g = unsafe { mlxrs_sys::mlx_distributed_group_split(self.0, color, key.unwrap_or(-1)) };
    if g.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(Group(g))
  }

  fn raw(g: Option<&Group>) -> mlx_distributed_group {
    g.map_or(
      mlx_distributed_group {
        ctx: std::ptr::null_mut(),
      },
      |g| g.0,
    )
  }
}

/// Send `x` to rank `dst`; the result is a token to evaluate (python
/// `mx.distributed.send(x, dst, group=group)`).
pub fn send(x: &Array, dst: i32, group: Option<&Group>) -> Result<Array> {
  let mut res = Array::null();
  // SAFETY: live borrows only read during the call; fresh owned out-handle.
  check(unsafe {
    mlxrs_sys::mlx_distributed_send(&mut res.0, x.0, dst, Group::raw(group), default_stream())
  })?;
  Ok(res)
}

/// Receive an array of `shape` and `dtype` from rank `src` (python
/// `mx.distributed.recv(shape, dtype, src, group=group)`).
pub fn recv(shape: &[i32], dtype: Dtype, src: i32, group: Option<&Group>) -> Result<Array> {
  let mut res = Array::null();
  // SAFETY: `shape` outlives the call; fresh owned out-handle.
  check(unsafe {
    mlxrs_sys::mlx_distributed_recv(
      &mut res.0,
      shape.as_ptr(),
      shape.len(),
      dtype.to_raw(),
      src,
      Group::raw(group),
      default_stream(),
    )
  })?;
  Ok(res)
}

/// Receive an array shaped and typed like `x` from rank `src` (python
/// `mx.distributed.recv_like(x, src, group=group)`).
pub fn recv_like(x: &Array, src: i32, group: Option<&Group>) -> Result<Array> {
  let mut res = Array::null();
  // SAFETY: live borrows only read during the call; fresh owned out-handle.
  check(unsafe {
    mlxrs_sys::mlx_distributed_recv_like(&mut res.0, x.0, src, Group::raw(group), default_stream())
  })?;
  Ok(res)
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Without MLX_HOSTFILE / MLX_RANK, python `mx.distributed.init()` is the
  /// singleton group and collectives are the identity; a strict ring init
  /// fails.
  #[test]
  fn singleton_group() {
    if std::env::var_os("MLX_HOSTFILE").is_some() {
      return;
    }
    assert!(is_available(Some("ring")));
    let g = init(false, "any").unwrap();
    assert_eq!((g.rank(), g.size()), (0, 1));
    let x = Array::from_slice::<f32>(&[1.0, -2.0, 3.5], &[3]).unwrap();
    let mut s = all_sum(&x, Some(&g)).unwrap();
    assert_eq!(s.to_vec::<f32>().unwrap(), vec![1.0, -2.0, 3.5]);
    let mut a = all_gather(&x, None).unwrap();
    assert_eq!(a.to_vec::<f32>().unwrap(), vec![1.0, -2.0, 3.5]);
    assert!(init(true, "ring").is_err());
    // Clearing the backend cache keeps existing groups usable, and a later
    // init sets up the singleton group again.
    clear_backends().unwrap();
    let mut s2 = all_sum(&x, Some(&g)).unwrap();
    assert_eq!(s2.to_vec::<f32>().unwrap(), vec![1.0, -2.0, 3.5]);
    let g2 = init(false, "any").unwrap();
    assert_eq!((g2.rank(), g2.size()), (0, 1));
  }

  /// JACCL with a custom side channel, as python on this (Linux) build:
  /// `init(strict=True, backend="jaccl", all_gather_factory=f)` raises
  /// "Cannot initialize jaccl distributed backend.", the non-strict one is
  /// the singleton group, `f` is never called, and another backend is an
  /// error (python: ValueError).
  #[test]
  fn jaccl_all_gather_init() {
    if is_available(Some("jaccl")) {
      return;
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let f = |_: i32, _: i32, _: &[u8], _: &mut [u8]| -> Result<()> {
      CALLS.fetch_add(1, Ordering::SeqCst);
      Ok(())
    };
    let e = init_with_all_gather(true, "jaccl", f).unwrap_err();
    assert_eq!(
      e.to_string(),
      Error::Mlx("Cannot initialize jaccl distributed backend.".into()).to_string()
    );
    let g = init_with_all_gather(false, "jaccl", f).unwrap();
    assert_eq!((g.rank(), g.size()), (0, 1));
    assert!(matches!(
      init_with_all_gather(false, "ring", f),
      Err(Error::InvalidArgument(_))
    ));
    assert_eq!(CALLS.load(Ordering::SeqCst), 0);
  }
}
