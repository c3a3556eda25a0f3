//! The image-feature cache (python `mlx_vlm.vision_cache.VisionFeatureCache`
//! with `processed_image_key`): a small LRU of vision-tower + projector
//! outputs keyed by a hash of the preprocessed pixel values and their
//! layout (`image_grid_thw`, tile count, image sizes), so a repeated image
//! set (chat turns, repeated `generate` calls) skips the vision tower.
//!
//! As in mlx-vlm, one entry holds the features of one prompt's image set
//! (all of its images together): a prompt whose images are exactly those
//! of an earlier prompt hits; any other set misses and is computed.

use std::collections::VecDeque;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use mlxrs_core::Array;

use crate::error::{Error, Result};
use crate::model::VlmInput;

/// The default number of cached image sets (python mlx-vlm: 20 entries;
/// here fewer since an entry can hold several images).
pub const DEFAULT_VISION_CACHE_SIZE: usize = 8;

/// Hit / miss counters of the feature cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VisionCacheStats {
  /// Lookups answered from the cache (vision tower skipped).
  pub hits: u64,
  /// Lookups that ran the vision tower.
  pub misses: u64,
  /// Entries held now.
  pub entries: usize,
  /// Most entries held (0: the cache is off).
  pub capacity: usize,
}

/// A cache key: a 128-bit hash (two independently seeded 64-bit hashes) of
/// the pixel values, their shape and the image metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FeatureKey([u64; 2]);

impl FeatureKey {
  /// The key of `input`'s processed images (python `processed_image_key`:
  /// pixel values + `image_grid_thw` + `image_*` metadata); `None` without
  /// images.
  pub(crate) fn of(input: &VlmInput) -> Option<FeatureKey> {
    if input.pixel_values.is_none() && input.clip_pixels.is_none() {
      return None;
    }
    // The values' bit patterns, hashed as one slice (one `write` call).
    let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let qwen = input.pixel_values.as_ref().map(|p| bits(&p.data));
    let clip = input.clip_pixels.as_ref().map(|p| bits(&p.data));
    let mut out = [0u64; 2];
    for (i, o) in out.iter_mut().enumerate() {
      let mut h = DefaultHasher::new();
      (i as u64 ^ 0x9e37_79b9_7f4a_7c15).hash(&mut h);
      if let Some(pv) = &input.pixel_values {
        "qwen".hash(&mut h);
        (pv.rows, pv.cols).hash(&mut h);
        pv.grid_thw.hash(&mut h);
        qwen.hash(&mut h);
      }
      if let Some(cp) = &input.clip_pixels {
        "clip".hash(&mut h);
        (cp.n, cp.height, cp.width).hash(&mut h);
        clip.hash(&mut h);
      }
      input.image_sizes.hash(&mut h);
      *o = h.finish();
    }
    Some(FeatureKey(out))
  }
}

struct Inner {
  /// Most recently used last.
  entries: VecDeque<(FeatureKey, Array)>,
  capacity: usize,
  hits: u64,
  misses: u64,
}

/// The LRU itself (see the module docs). Shared by `&self` through a
/// mutex; [`crate::VlmModel`] owns one.
pub(crate) struct VisionFeatureCache {
  inner: Mutex<Inner>,
}

impl VisionFeatureCache {
  pub(crate) fn new(capacity: usize) -> VisionFeatureCache {
    VisionFeatureCache {
      inner: Mutex::new(Inner {
        entries: VecDeque::new(),
        capacity,
        hits: 0,
        misses: 0,
      }),
    }
  }

  fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
    self
      .inner
      .lock()
      .map_err(|_| Error::invalid("the vision feature cache is poisoned"))
  }

  /// The features for `key` from the cache, else `compute()` (evaluated,
  /// then stored, evicting the least recently used entry when full).
  /// Without a key (no images) or with capacity 0, `compute()` runs
  /// uncached.
  pub(crate) fn get_or_compute(
    &self,
    key: Option<FeatureKey>,
    compute: impl FnOnce() -> Result<Array>,
  ) -> Result<Array> {
    let Some(key) = key else {
      return compute();
    };
    {
      let mut g = self.lock()?;
      if g.capacity == 0 {
        g.misses += 1;
        drop(g);
        return compute();
      }
      if let Some(i) = g.entries.iter().position(|(k, _)| *k == key) {
        g.hits += 1;
        let e = g
          .entries
          .remove(i)
          .ok_or_else(|| Error::invalid("vision cache index"))?;
        let a = e.1.clone();
        g.entries.push_back(e);
        return Ok(a);
      }
      g.misses += 1;
    }
    // Compute outside the lock; evaluate so the entry holds data, not a
    // graph that would re-run the vision tower.
    let a = compute()?;
    mlxrs_core::eval(std::slice::from_ref(&a))?;
    let mut g = self.lock()?;
    if !g.entries.iter().any(|(k, _)| *k == key) {
      while g.entries.len() >= g.capacity {
        g.entries.pop_front();
      }
      g.entries.push_back((key, a.clone()));
    }
    Ok(a)
  }

  pub(crate) fn clear(&self) {
    if let Ok(mut g) = self.inner.lock() {
      g.entries.clear();
    }
  }

  pub(crate) fn reset_stats(&self) {
    if let Ok(mut g) = self.inner.lock() {
      g.hits = 0;
      g.misses = 0;
    }
  }

  pub(crate) fn set_capacity(&self, capacity: usize) {
    if let Ok(mut g) = self.inner.lock() {
      g.capacity = capacity;
      while g.entries.len() > capacity {
        g.entries.pop_front();
      }
    }
  }

  pub(crate) fn stats(&self) -> VisionCacheStats {
    match self.inner.lock() {
      Ok(g) => VisionCacheStats {
        hits: g.hits,
        misses: g.misses,
        entries: g.entries.len(),
        capacity: g.capacity,
      },
      Err(_) => VisionCacheStats::default(),
    }
  }
}
