//! KV caches (mlx-lm `models/cache.py`, mlx-swift-lm `KVCache`):
//! [`KvCache`] grows in steps of 256 positions (`KVCache`), or keeps a fixed
//! window with `keep` sink tokens (`RotatingKVCache`).

use mlxrs_core::{Array, Error, Result, ops};

/// Which cache behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheKind {
  /// Unbounded, step-grown (`KVCache`).
  Standard,
  /// At most `max_size` positions; the first `keep` are never evicted
  /// (`RotatingKVCache(max_size, keep)`).
  Rotating {
    /// Window size.
    max_size: i32,
    /// Leading positions always kept.
    keep: i32,
  },
}

/// A per-layer key/value cache of `[B, kv_heads, T, head_dim]` tensors.
pub struct KvCache {
  kind: KvCacheKind,
  keys: Option<Array>,
  values: Option<Array>,
  /// Positions seen so far (the next token's RoPE offset).
  pub offset: i32,
  /// Valid positions stored in the buffers (`offset` for the standard
  /// cache; at most `max_size` for the rotating one).
  len: i32,
  /// Rotating only: next write index in the window.
  idx: i32,
  step: i32,
}

fn full_slice(a: &Array, axis: usize, start: i32, stop: i32) -> Result<Array> {
  let shape = a.shape();
  let mut st = vec![0; shape.len()];
  let mut sp = shape.clone();
  st[axis] = start;
  sp[axis] = stop;
  ops::slice(a, &st, &sp, &vec![1; shape.len()])
}

fn update_at(buf: &Array, upd: &Array, axis: usize, start: i32) -> Result<Array> {
  let shape = buf.shape();
  let mut st = vec![0; shape.len()];
  let mut sp = shape.clone();
  st[axis] = start;
  sp[axis] = start + upd.dim(axis as i32).unwrap_or(0);
  ops::slice_update(buf, upd, &st, &sp, &vec![1; shape.len()])
}

impl KvCache {
  /// An empty cache of `kind`.
  pub fn new(kind: KvCacheKind) -> KvCache {
    KvCache { kind, keys: None, values: None, offset: 0, len: 0, idx: 0, step: 256 }
  }

  /// An empty standard cache.
  pub fn standard() -> KvCache {
    KvCache::new(KvCacheKind::Standard)
  }

  /// The kind.
  pub fn kind(&self) -> KvCacheKind {
    self.kind
  }

  /// Whether nothing is cached.
  pub fn is_empty(&self) -> bool {
    self.offset == 0
  }

  /// Append `k`, `v` (`[B, H, T, D]`) and return all cached keys/values to
  /// attend over (python `cache.update_and_fetch(keys, values)`).
  pub fn update_and_fetch(&mut self, k: &Array, v: &Array) -> Result<(Array, Array)> {
    let ks = k.shape();
    if ks.len() != 4 || v.ndim() != 4 {
      return Err(Error::InvalidArgument(format!(
        "KV cache expects [B, heads, T, head_dim] keys/values, got {:?} / {:?}",
        ks,
        v.shape()
      )));
    }
    match self.kind {
      KvCacheKind::Standard => self.update_standard(k, v),
      KvCacheKind::Rotating { max_size, keep } => self.update_rotating(k, v, max_size, keep),
    }
  }

  fn grow(&self, k: &Array, v: &Array, extra: i32) -> Result<(Array, Array)> {
    let (ks, vs) = (k.shape(), v.shape());
    let n = ((extra + self.step - 1) / self.step) * self.step;
    let nk = ops::zeros(&[ks[0], ks[1], n, ks[3]], k.dtype())?;
    let nv = ops::zeros(&[vs[0], vs[1], n, vs[3]], v.dtype())?;
    Ok((nk, nv))
  }

  fn update_standard(&mut self, k: &Array, v: &Array) -> Result<(Array, Array)> {
    let t = k.dim(2).unwrap_or(0);
    let prev = self.offset;
    let cap = self.keys.as_ref().map(|a| a.dim(2).unwrap_or(0)).unwrap_or(0);
    if self.keys.is_none() || prev + t > cap {
      let (nk, nv) = self.grow(k, v, t)?;
      match (self.keys.take(), self.values.take()) {
        (Some(mut ok), Some(mut ov)) => {
          if prev % self.step != 0 {
            ok = full_slice(&ok, 2, 0, prev)?;
            ov = full_slice(&ov, 2, 0, prev)?;
          }
          self.keys = Some(ops::concatenate_axis(&[ok, nk], 2)?);
          self.values = Some(ops::concatenate_axis(&[ov, nv], 2)?);
        }
        _ => {
          self.keys = Some(nk);
          self.values = Some(nv);
        }
      }
    }
    self.offset += t;
    self.len = self.offset;
    let keys = update_at(self.keys.as_ref().unwrap(), k, 2, prev)?;
    let values = update_at(self.values.as_ref().unwrap(), v, 2, prev)?;
    let out = (full_slice(&keys, 2, 0, self.offset)?, full_slice(&values, 2, 0, self.offset)?);
    self.keys = Some(keys);
    self.values = Some(values);
    Ok(out)
  }

  fn update_rotating(&mut self, k: &Array, v: &Array, max_size: i32, keep: i32) -> Result<(Array, Array)> {
    let t = k.dim(2).unwrap_or(0);
    if t > 1 || self.keys.is_none() {
      // Multi-token update (prefill): concatenate in temporal order, then
      // trim to the window (keeping `keep` sink positions), as mlx-lm's
      // `_update_concat` does. The result may exceed max_size for this call
      // so every new query still sees its full causal context.
      // As mlx-lm's `_update_concat`: the cached part is first cut to the
      // last `max_size - 1` positions (plus the `keep` sinks), so each new
      // query sees a full window.
      let (ck, cv) = match (self.keys.take(), self.values.take()) {
        (Some(ok), Some(ov)) => {
          let cut = |a: &Array| -> Result<Array> {
            let a = self.temporal_order(a, keep)?;
            let n = a.dim(2).unwrap_or(0);
            if n <= max_size - 1 {
              return Ok(a);
            }
            let head = full_slice(&a, 2, 0, keep)?;
            let tail = full_slice(&a, 2, n - (max_size - 1 - keep), n)?;
            ops::concatenate_axis(&[head, tail], 2)
          };
          let (ok, ov) = (cut(&ok)?, cut(&ov)?);
          (ops::concatenate_axis(&[ok, k.clone()], 2)?, ops::concatenate_axis(&[ov, v.clone()], 2)?)
        }
        _ => (k.clone(), v.clone()),
      };
      self.offset += t;
      let total = ck.dim(2).unwrap_or(0);
      let out = (ck.clone(), cv.clone());
      // Keep the sinks plus the last (max_size - keep) positions.
      let (sk, sv) = if total > max_size {
        let trim = |a: &Array| -> Result<Array> {
          let head = full_slice(a, 2, 0, keep)?;
          let tail = full_slice(a, 2, total - (max_size - keep), total)?;
          ops::concatenate_axis(&[head, tail], 2)
        };
        (trim(&ck)?, trim(&cv)?)
      } else {
        (ck, cv)
      };
      self.len = sk.dim(2).unwrap_or(0);
      self.idx = self.len;
      self.keys = Some(sk);
      self.values = Some(sv);
      return Ok(out);
    }
    // Single-token update: write in place, wrapping within [keep, max_size).
    let cap = self.keys.as_ref().unwrap().dim(2).unwrap_or(0);
    if cap < max_size && self.idx >= cap {
      let grow_by = self.step.min(max_size - cap);
      let ks = k.shape();
      let vs = v.shape();
      let nk = ops::zeros(&[ks[0], ks[1], grow_by, ks[3]], k.dtype())?;
      let nv = ops::zeros(&[vs[0], vs[1], grow_by, vs[3]], v.dtype())?;
      self.keys = Some(ops::concatenate_axis(&[self.keys.take().unwrap(), nk], 2)?);
      self.values = Some(ops::concatenate_axis(&[self.values.take().unwrap(), nv], 2)?);
    }
    if self.idx >= max_size {
      self.idx = keep;
    }
    let keys = update_at(self.keys.as_ref().unwrap(), k, 2, self.idx)?;
    let values = update_at(self.values.as_ref().unwrap(), v, 2, self.idx)?;
    self.idx += 1;
    self.offset += 1;
    self.len = (self.len + 1).min(max_size);
    let out = if self.len < keys.dim(2).unwrap_or(0) {
      (full_slice(&keys, 2, 0, self.len)?, full_slice(&values, 2, 0, self.len)?)
    } else {
      (keys.clone(), values.clone())
    };
    self.keys = Some(keys);
    self.values = Some(values);
    Ok(out)
  }

  /// The rotating buffer rearranged so positions are in temporal order.
  fn temporal_order(&self, a: &Array, keep: i32) -> Result<Array> {
    let n = a.dim(2).unwrap_or(0);
    let valid = full_slice(a, 2, 0, self.len.min(n))?;
    if self.idx >= self.len || self.idx <= keep {
      return Ok(valid);
    }
    let head = full_slice(&valid, 2, 0, keep)?;
    let newer = full_slice(&valid, 2, self.idx, self.len)?;
    let older = full_slice(&valid, 2, keep, self.idx)?;
    ops::concatenate_axis(&[head, newer, older], 2)
  }

  /// The attention mask for `n` new tokens (mlx-lm's `cache.make_mask` /
  /// `create_attention_mask`), with an optional sliding `window`.
  pub fn make_mask(&self, n: i32, window: Option<i32>) -> Result<crate::AttnMask> {
    use crate::attention::{AttnMask, causal_mask};
    match self.kind {
      KvCacheKind::Standard => AttnMask::causal(n, self.offset, window),
      KvCacheKind::Rotating { max_size, .. } => {
        if n > 1 {
          let w = window.unwrap_or(max_size);
          let off = (max_size - 1).min(self.offset);
          if off + n > w { Ok(AttnMask::Array(causal_mask(n, off, Some(w))?)) } else { Ok(AttnMask::Causal) }
        } else {
          Ok(AttnMask::None)
        }
      }
    }
  }

  /// Drop the last `n` positions (python `cache.trim(n)`); returns how many
  /// were trimmed. Rotating caches can trim only while not yet wrapped.
  pub fn trim(&mut self, n: i32) -> i32 {
    let n = n.min(self.offset).max(0);
    match self.kind {
      KvCacheKind::Standard => {
        self.offset -= n;
        self.len = self.offset;
        n
      }
      KvCacheKind::Rotating { max_size, .. } => {
        if self.offset > max_size {
          return 0;
        }
        self.offset -= n;
        self.len = self.offset;
        self.idx = self.offset;
        n
      }
    }
  }

  /// The valid cached `(keys, values)`, in temporal order (python
  /// `cache.state`), for saving prompt caches.
  pub fn state(&self) -> Result<Option<(Array, Array)>> {
    match (&self.keys, &self.values) {
      (Some(k), Some(v)) => match self.kind {
        KvCacheKind::Standard => Ok(Some((full_slice(k, 2, 0, self.offset)?, full_slice(v, 2, 0, self.offset)?))),
        KvCacheKind::Rotating { keep, .. } => Ok(Some((self.temporal_order(k, keep)?, self.temporal_order(v, keep)?))),
      },
      _ => Ok(None),
    }
  }

  /// Restore from saved `(keys, values)` with `offset` positions seen.
  pub fn set_state(&mut self, keys: Array, values: Array, offset: i32) {
    self.len = keys.dim(2).unwrap_or(0);
    self.idx = self.len;
    self.offset = offset;
    self.keys = Some(keys);
    self.values = Some(values);
  }
}
