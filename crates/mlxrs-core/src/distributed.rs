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
  }
}
