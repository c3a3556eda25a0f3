//! Memory accounting and limits: python `mx.get_active_memory()`,
//! `mx.get_peak_memory()`, `mx.reset_peak_memory()`, `mx.get_cache_memory()`,
//! `mx.set_memory_limit()`, `mx.set_cache_limit()`, `mx.set_wired_limit()`,
//! `mx.clear_cache()`; swift `Memory` / `GPU` namespace; C++
//! `get_array_buffer_size`.

use crate::error::{Result, check};

macro_rules! getter {
  ($(#[$m:meta])* $name:ident => $c:ident) => {
    $(#[$m])*
    pub fn $name() -> Result<usize> {
      let mut v = 0usize;
      // SAFETY: plain out-pointer to a local.
      check(unsafe { mlxrs_sys::$c(&mut v) })?;
      Ok(v)
    }
  };
}

macro_rules! setter {
  ($(#[$m:meta])* $name:ident => $c:ident) => {
    $(#[$m])*
    pub fn $name(limit: usize) -> Result<usize> {
      let mut prev = 0usize;
      // SAFETY: plain out-pointer to a local and a value argument.
      check(unsafe { mlxrs_sys::$c(&mut prev, limit) })?;
      Ok(prev)
    }
  };
}

getter!(
  /// Bytes held by live arrays (`mx.get_active_memory()`).
  active_memory => mlx_get_active_memory
);
getter!(
  /// High-water mark of active memory since start or the last reset
  /// (`mx.get_peak_memory()`).
  peak_memory => mlx_get_peak_memory
);
getter!(
  /// Bytes held in MLX's buffer cache (`mx.get_cache_memory()`).
  cache_memory => mlx_get_cache_memory
);
getter!(
  /// The memory limit (`mx.get_memory_limit()`).
  memory_limit => mlx_get_memory_limit
);
setter!(
  /// Set the memory limit; returns the previous one (`mx.set_memory_limit`).
  set_memory_limit => mlx_set_memory_limit
);
setter!(
  /// Set the buffer-cache limit; returns the previous one (`mx.set_cache_limit`).
  set_cache_limit => mlx_set_cache_limit
);
setter!(
  /// Set the wired-memory limit (Metal; a no-op elsewhere); returns the
  /// previous one (`mx.set_wired_limit`).
  set_wired_limit => mlx_set_wired_limit
);

/// Reset the peak-memory counter (`mx.reset_peak_memory()`).
pub fn reset_peak_memory() -> Result<()> {
  // SAFETY: no arguments.
  check(unsafe { mlxrs_sys::mlx_reset_peak_memory() })
}

/// Release cached buffers (`mx.clear_cache()`).
pub fn clear_cache() -> Result<()> {
  // SAFETY: no arguments.
  check(unsafe { mlxrs_sys::mlx_clear_cache() })
}

/// Bytes of the data buffers behind `arrays`, each buffer counted once
/// (C++ `get_array_buffer_size`; no python equivalent). Evaluates the
/// arrays first: MLX reads their buffers.
pub fn array_buffer_size(arrays: &[crate::Array]) -> Result<usize> {
  crate::transforms::eval(arrays)?;
  let v = crate::vector::VectorArray::from_arrays(arrays)?;
  let mut n = 0usize;
  // SAFETY: live owned vector of evaluated arrays; out-pointer to a local.
  check(unsafe { mlxrs_sys::mlx_get_array_buffer_size(&mut n, v.0) })?;
  Ok(n)
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::Array;

  #[test]
  fn peak_tracks_an_allocation() {
    // A 1 MiB f32 array (262144 * 4 bytes) evaluated must raise the peak to
    // at least that much above its reset value.
    reset_peak_memory().unwrap();
    let data = vec![1.0f32; 262_144];
    let mut a = Array::from_slice(&data, &(512, 512)).unwrap();
    a.eval().unwrap();
    assert!(peak_memory().unwrap() >= 1 << 20);
    assert!(active_memory().unwrap() >= 1 << 20);
    let prev = set_cache_limit(1 << 30).unwrap();
    assert_eq!(set_cache_limit(prev).unwrap(), 1 << 30);
    clear_cache().unwrap();
  }

  #[test]
  fn array_buffer_size_counts_shared_buffers_once() {
    // 1000 f32 (4000 bytes) + 10 i32 (40 bytes). MLX counts allocated
    // buffer sizes, which can be larger than the data when a buffer comes
    // from its cache (other tests run in parallel), hence `>=`. A reshape
    // shares the buffer of its input, so listing it again adds nothing.
    let a = Array::from_slice(&vec![0.5f32; 1000], &(10, 100)).unwrap();
    let b = Array::from_slice(&[3i32; 10], &(10,)).unwrap();
    let v = crate::ops::reshape(&a, &[1000]).unwrap();
    let sa = array_buffer_size(std::slice::from_ref(&a)).unwrap();
    let sb = array_buffer_size(std::slice::from_ref(&b)).unwrap();
    assert!(sa >= 4000 && sb >= 40, "{sa} {sb}");
    assert_eq!(array_buffer_size(&[a.clone(), b.clone()]).unwrap(), sa + sb);
    assert_eq!(array_buffer_size(&[a.clone(), v, b]).unwrap(), sa + sb);
    assert_eq!(array_buffer_size(&[a.clone(), a]).unwrap(), sa);
    assert_eq!(array_buffer_size(&[]).unwrap(), 0);
  }
}
