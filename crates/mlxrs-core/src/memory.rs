//! Memory accounting and limits: python `mx.get_active_memory()`,
//! `mx.get_peak_memory()`, `mx.reset_peak_memory()`, `mx.get_cache_memory()`,
//! `mx.set_memory_limit()`, `mx.set_cache_limit()`, `mx.set_wired_limit()`,
//! `mx.clear_cache()`; swift `Memory` / `GPU` namespace.

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
}
