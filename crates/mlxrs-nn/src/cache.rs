//! KV caches (mlx-lm `models/cache.py`, mlx-swift-lm `KVCache`):
//! [`KvCache`] grows in steps of 256 positions (`KVCache`), or keeps a fixed
//! window with `keep` sink tokens (`RotatingKVCache`), or stores keys and
//! values quantized (`QuantizedKVCache`, see [`KvCache::quantized`]), or
//! keeps only the current attention chunk (`ChunkedKVCache`, see
//! [`KvCache::chunked`]). [`ArraysCache`] holds recurrent (SSM) state and
//! [`CacheList`] groups caches of one layer; [`LayerCache`] is any of them.
//! Prompt caches are saved and loaded in mlx-lm's safetensors layout
//! ([`crate::prompt_cache`]).

use mlxrs_core::{Array, Dtype, Error, Result, ops};

use crate::quant::QuantParams;

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
  /// Quantized caches: the (affine) parameters; keys/values then live in
  /// `qkeys` / `qvalues` as `(packed, scales, biases)`.
  quant: Option<QuantParams>,
  qkeys: Option<Vec<Array>>,
  qvalues: Option<Vec<Array>>,
  /// Chunked caches: the chunk size, and the absolute position of the
  /// first stored key (`start_position`).
  chunk: Option<i32>,
  start: i32,
}

/// What a cache update returns for attention: dense `[B, H, T, D]` keys
/// and values, or quantized `(packed, scales, biases)` triples.
pub enum CachedKv {
  /// Dense keys and values.
  Dense(Array, Array),
  /// Quantized keys and values (mlx-lm's `QuantizedKVCache`).
  Quantized {
    /// `(packed, scales, biases)` keys.
    keys: Vec<Array>,
    /// `(packed, scales, biases)` values.
    values: Vec<Array>,
    /// The quantization.
    params: QuantParams,
  },
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
    KvCache {
      kind,
      keys: None,
      values: None,
      offset: 0,
      len: 0,
      idx: 0,
      step: 256,
      quant: None,
      qkeys: None,
      qvalues: None,
      chunk: None,
      start: 0,
    }
  }

  /// An empty quantized cache (mlx-lm `QuantizedKVCache(group_size,
  /// bits)`, affine mode): keys and values are quantized as they arrive;
  /// attention runs on them with [`crate::attention_with_cache_update`]
  /// (or dequantized by [`KvCache::update_and_fetch`]). Its
  /// [`KvCache::kind`] is `Standard` (it grows the same way).
  pub fn quantized(group_size: i32, bits: i32) -> Result<KvCache> {
    let q = QuantParams {
      group_size,
      bits,
      mode: "affine".into(),
    };
    q.validate()?;
    Ok(KvCache {
      quant: Some(q),
      ..KvCache::standard()
    })
  }

  /// An empty chunked cache (mlx-lm `ChunkedKVCache(chunk_size)`): like
  /// the standard cache, but [`KvCache::maybe_trim_front`] drops keys
  /// older than the last `chunk_size` positions. Its [`KvCache::kind`] is
  /// `Standard`.
  pub fn chunked(chunk_size: i32) -> Result<KvCache> {
    if chunk_size <= 0 {
      return Err(Error::InvalidArgument(format!(
        "ChunkedKVCache: chunk_size must be positive, got {chunk_size}"
      )));
    }
    Ok(KvCache {
      chunk: Some(chunk_size),
      ..KvCache::standard()
    })
  }

  /// The mlx-lm class this cache corresponds to (`KVCache`,
  /// `RotatingKVCache`, `QuantizedKVCache`, `ChunkedKVCache`).
  pub fn class_name(&self) -> &'static str {
    match (self.kind, &self.quant, self.chunk) {
      (KvCacheKind::Rotating { .. }, _, _) => "RotatingKVCache",
      (_, Some(_), _) => "QuantizedKVCache",
      (_, _, Some(_)) => "ChunkedKVCache",
      _ => "KVCache",
    }
  }

  /// The quantization of a quantized cache.
  pub fn quantization(&self) -> Option<&QuantParams> {
    self.quant.as_ref()
  }

  /// Whether keys/values are stored quantized.
  pub fn is_quantized(&self) -> bool {
    self.quant.is_some()
  }

  /// The chunk size of a chunked cache.
  pub fn chunk_size(&self) -> Option<i32> {
    self.chunk
  }

  /// Chunked caches: absolute position of the first stored key
  /// (python `start_position`).
  pub fn start_position(&self) -> i32 {
    self.start
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

  /// Positions held (python `cache.size()`): `offset`, at most `max_size`
  /// for a rotating cache, the chunk's length for a chunked one.
  pub fn size(&self) -> i32 {
    match self.kind {
      KvCacheKind::Rotating { max_size, .. } => self.offset.min(max_size),
      KvCacheKind::Standard => self.offset - self.start,
    }
  }

  /// Bytes held by the buffers (python `cache.nbytes`).
  pub fn nbytes(&self) -> usize {
    let dense = [&self.keys, &self.values]
      .iter()
      .filter_map(|a| a.as_ref())
      .map(|a| a.nbytes())
      .sum::<usize>();
    let q = [&self.qkeys, &self.qvalues]
      .iter()
      .filter_map(|a| a.as_ref())
      .flat_map(|v| v.iter())
      .map(|a| a.nbytes())
      .sum::<usize>();
    dense + q
  }

  fn check_kv(k: &Array, v: &Array) -> Result<()> {
    let (ks, vs) = (k.shape(), v.shape());
    if ks.len() != 4 || vs.len() != 4 || ks[..3] != vs[..3] {
      return Err(Error::InvalidArgument(format!(
        "KV cache expects [B, heads, T, head_dim] keys/values with matching B, heads, T; got {ks:?} / {vs:?}"
      )));
    }
    Ok(())
  }

  fn check_layout(&self, k: &Array, v: &Array) -> Result<()> {
    let (ks, vs) = (k.shape(), v.shape());
    let held = match (&self.keys, &self.values, &self.qkeys) {
      (Some(a), Some(b), _) => Some((a.shape(), b.shape(), 32)),
      (_, _, Some(q)) => {
        let bits = self.quant.as_ref().map(|q| q.bits).unwrap_or(32);
        let qv = self.qvalues.as_ref().unwrap_or(q);
        Some((q[0].shape(), qv[0].shape(), bits))
      }
      _ => None,
    };
    // A `bits`-bit row of `d` values packs into `d * bits / 32` uint32s
    // (mlx-lm's `d // (32 // bits)` is only right when bits divides 32).
    if let Some((hk, hv, bits)) = held {
      let unpacked = |p: i32| p * 32 / bits;
      if hk[..2] != ks[..2] || unpacked(hk[3]) != ks[3] || unpacked(hv[3]) != vs[3] {
        return Err(Error::InvalidArgument(format!(
          "KV cache update {ks:?} / {vs:?} does not match the cached batch/heads/head_dim ({hk:?} / {hv:?})"
        )));
      }
    }
    Ok(())
  }

  /// Append `k`, `v` (`[B, H, T, D]`) and return all cached keys/values to
  /// attend over (python `cache.update_and_fetch(keys, values)`). A
  /// quantized cache returns its keys/values dequantized; use
  /// [`KvCache::update_and_fetch_any`] to get them quantized.
  pub fn update_and_fetch(&mut self, k: &Array, v: &Array) -> Result<(Array, Array)> {
    match self.update_and_fetch_any(k, v)? {
      CachedKv::Dense(k, v) => Ok((k, v)),
      CachedKv::Quantized {
        keys,
        values,
        params,
      } => {
        let dq = |t: &[Array], dt: Dtype| {
          ops::dequantize(
            &t[0],
            &t[1],
            t.get(2),
            Some(params.group_size),
            Some(params.bits),
            &params.mode,
            None,
            Some(dt),
          )
        };
        Ok((dq(&keys, k.dtype())?, dq(&values, v.dtype())?))
      }
    }
  }

  /// Append `k`, `v` and return what attention should use: dense keys and
  /// values, or quantized triples for a quantized cache (what mlx-lm's
  /// `update_and_fetch` returns for each class).
  pub fn update_and_fetch_any(&mut self, k: &Array, v: &Array) -> Result<CachedKv> {
    KvCache::check_kv(k, v)?;
    self.check_layout(k, v)?;
    if self.quant.is_some() {
      let (keys, values) = self.update_quantized(k, v)?;
      return Ok(CachedKv::Quantized {
        keys,
        values,
        params: self.quant.clone().unwrap(),
      });
    }
    let (k, v) = match self.kind {
      KvCacheKind::Standard if self.chunk.is_some() => self.update_chunked(k, v)?,
      KvCacheKind::Standard => self.update_standard(k, v)?,
      KvCacheKind::Rotating { max_size, keep } => self.update_rotating(k, v, max_size, keep)?,
    };
    Ok(CachedKv::Dense(k, v))
  }

  /// python `QuantizedKVCache.update_and_fetch`.
  fn update_quantized(&mut self, k: &Array, v: &Array) -> Result<(Vec<Array>, Vec<Array>)> {
    let q = self.quant.clone().unwrap();
    let (ks, vs) = (k.shape(), v.shape());
    let (b, h, n) = (ks[0], ks[1], ks[2]);
    for (what, d) in [("keys", ks[3]), ("values", vs[3])] {
      if d % q.group_size != 0 {
        return Err(Error::InvalidArgument(format!(
          "QuantizedKVCache: {what} head_dim {d} is not a multiple of group_size {}",
          q.group_size
        )));
      }
    }
    let prev = self.offset;
    let cap = self
      .qkeys
      .as_ref()
      .map(|t| t[0].dim(2).unwrap_or(0))
      .unwrap_or(0);
    if self.qkeys.is_none() || prev + n > cap {
      let new_steps = (self.step + n - 1) / self.step * self.step;
      let init = |d: i32, dt: Dtype| -> Result<Vec<Array>> {
        Ok(vec![
          ops::zeros(&[b, h, new_steps, d * q.bits / 32], Dtype::Uint32)?,
          ops::zeros(&[b, h, new_steps, d / q.group_size], dt)?,
          ops::zeros(&[b, h, new_steps, d / q.group_size], dt)?,
        ])
      };
      match (self.qkeys.take(), self.qvalues.take()) {
        (Some(ok), Some(ov)) => {
          let expand = |t: Vec<Array>| -> Result<Vec<Array>> {
            t.into_iter()
              .map(|x| {
                let x = if prev % self.step != 0 {
                  full_slice(&x, 2, 0, prev)?
                } else {
                  x
                };
                let s = x.shape();
                let z = ops::zeros(&[s[0], s[1], new_steps, s[3]], x.dtype())?;
                ops::concatenate_axis(&[x, z], 2)
              })
              .collect()
          };
          self.qkeys = Some(expand(ok)?);
          self.qvalues = Some(expand(ov)?);
        }
        _ => {
          self.qkeys = Some(init(ks[3], k.dtype())?);
          self.qvalues = Some(init(vs[3], k.dtype())?);
        }
      }
    }
    self.offset += n;
    self.len = self.offset;
    let qk = ops::quantize(k, Some(q.group_size), Some(q.bits), &q.mode, None)?;
    let qv = ops::quantize(v, Some(q.group_size), Some(q.bits), &q.mode, None)?;
    let write = |buf: &mut Vec<Array>, upd: &[Array]| -> Result<()> {
      for (b, u) in buf.iter_mut().zip(upd) {
        let u = if u.dtype() != b.dtype() {
          ops::astype(u, b.dtype())?
        } else {
          u.clone()
        };
        *b = update_at(b, &u, 2, prev)?;
      }
      Ok(())
    };
    write(self.qkeys.as_mut().unwrap(), &qk)?;
    write(self.qvalues.as_mut().unwrap(), &qv)?;
    Ok((
      self.quantized_view(self.qkeys.as_ref().unwrap())?,
      self.quantized_view(self.qvalues.as_ref().unwrap())?,
    ))
  }

  fn quantized_view(&self, t: &[Array]) -> Result<Vec<Array>> {
    t.iter()
      .map(|x| {
        if x.dim(2) == Some(self.offset) {
          Ok(x.clone())
        } else {
          full_slice(x, 2, 0, self.offset)
        }
      })
      .collect()
  }

  /// python `ChunkedKVCache.update_and_fetch`.
  fn update_chunked(&mut self, k: &Array, v: &Array) -> Result<(Array, Array)> {
    let t = k.dim(2).unwrap_or(0);
    let prev = self.offset - self.start;
    let cap = self
      .keys
      .as_ref()
      .map(|a| a.dim(2).unwrap_or(0))
      .unwrap_or(0);
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
    let end = self.offset - self.start;
    self.len = end;
    let keys = update_at(self.keys.as_ref().unwrap(), k, 2, prev)?;
    let values = update_at(self.values.as_ref().unwrap(), v, 2, prev)?;
    let out = (
      full_slice(&keys, 2, 0, end)?,
      full_slice(&values, 2, 0, end)?,
    );
    self.keys = Some(keys);
    self.values = Some(values);
    Ok(out)
  }

  /// Chunked caches: drop keys older than the last `chunk_size` positions
  /// (python `ChunkedKVCache.maybe_trim_front`). No-op for other kinds.
  pub fn maybe_trim_front(&mut self) -> Result<()> {
    let Some(chunk) = self.chunk else {
      return Ok(());
    };
    if let (Some(k), Some(v)) = (&self.keys, &self.values) {
      let valid = self.offset - self.start;
      if valid > chunk {
        let trim = valid - chunk;
        self.start += trim;
        let (k, v) = (
          full_slice(k, 2, trim, valid)?,
          full_slice(v, 2, trim, valid)?,
        );
        self.keys = Some(k);
        self.values = Some(v);
        self.len = chunk;
      }
    }
    Ok(())
  }

  /// Convert a standard cache to a quantized one holding the same
  /// positions (python `KVCache.to_quantized(group_size, bits)`, used by
  /// mlx-lm's `maybe_quantize_kv_cache`). Other kinds are an error.
  pub fn to_quantized(&self, group_size: i32, bits: i32) -> Result<KvCache> {
    if self.kind != KvCacheKind::Standard || self.chunk.is_some() || self.quant.is_some() {
      return Err(Error::InvalidArgument(format!(
        "{} cannot be converted to a QuantizedKVCache",
        self.class_name()
      )));
    }
    let mut c = KvCache::quantized(group_size, bits)?;
    c.offset = self.offset;
    c.len = self.offset;
    if let (Some(k), Some(v)) = (&self.keys, &self.values) {
      let q = c.quant.clone().unwrap();
      for (what, d) in [
        ("keys", k.dim(-1).unwrap_or(0)),
        ("values", v.dim(-1).unwrap_or(0)),
      ] {
        if d % q.group_size != 0 {
          return Err(Error::InvalidArgument(format!(
            "cannot quantize the KV cache: the {what}' head_dim {d} is not a multiple of the group size {} (--kv-group-size)",
            q.group_size
          )));
        }
      }
      let quant = |a: &Array| ops::quantize(a, Some(q.group_size), Some(q.bits), &q.mode, None);
      c.qkeys = Some(quant(&full_slice(k, 2, 0, self.offset)?)?);
      c.qvalues = Some(quant(&full_slice(v, 2, 0, self.offset)?)?);
    }
    Ok(c)
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
    let cap = self
      .keys
      .as_ref()
      .map(|a| a.dim(2).unwrap_or(0))
      .unwrap_or(0);
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
    let out = (
      full_slice(&keys, 2, 0, self.offset)?,
      full_slice(&values, 2, 0, self.offset)?,
    );
    self.keys = Some(keys);
    self.values = Some(values);
    Ok(out)
  }

  fn update_rotating(
    &mut self,
    k: &Array,
    v: &Array,
    max_size: i32,
    keep: i32,
  ) -> Result<(Array, Array)> {
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
          (
            ops::concatenate_axis(&[ok, k.clone()], 2)?,
            ops::concatenate_axis(&[ov, v.clone()], 2)?,
          )
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
      self.values = Some(ops::concatenate_axis(
        &[self.values.take().unwrap(), nv],
        2,
      )?);
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
      (
        full_slice(&keys, 2, 0, self.len)?,
        full_slice(&values, 2, 0, self.len)?,
      )
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
      KvCacheKind::Standard => AttnMask::causal(n, self.offset - self.start, window),
      KvCacheKind::Rotating { max_size, .. } => {
        if n > 1 {
          let w = window.unwrap_or(max_size);
          let off = (max_size - 1).min(self.offset);
          if off + n > w {
            Ok(AttnMask::Array(causal_mask(n, off, Some(w))?))
          } else {
            Ok(AttnMask::Causal)
          }
        } else {
          Ok(AttnMask::None)
        }
      }
    }
  }

  /// Drop the last `n` positions (python `cache.trim(n)`); returns how many
  /// were trimmed. Rotating caches can trim only while not yet wrapped.
  pub fn trim(&mut self, n: i32) -> i32 {
    let n = n.min(self.offset - self.start).max(0);
    match self.kind {
      KvCacheKind::Standard => {
        self.offset -= n;
        self.len = self.offset - self.start;
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

  /// Whether [`KvCache::trim`] can remove positions (python
  /// `is_trimmable`): always, except a rotating cache that has wrapped.
  pub fn is_trimmable(&self) -> bool {
    match self.kind {
      KvCacheKind::Rotating { max_size, .. } => self.offset < max_size,
      KvCacheKind::Standard => true,
    }
  }

  /// The valid cached `(keys, values)`, in temporal order (python
  /// `cache.state`), for saving prompt caches. Quantized caches return
  /// them dequantized.
  pub fn state(&self) -> Result<Option<(Array, Array)>> {
    if let (Some(q), Some(k), Some(v)) = (&self.quant, &self.qkeys, &self.qvalues) {
      let dq = |t: &[Array]| {
        let t = self.quantized_view(t)?;
        ops::dequantize(
          &t[0],
          &t[1],
          t.get(2),
          Some(q.group_size),
          Some(q.bits),
          &q.mode,
          None,
          Some(t[1].dtype()),
        )
      };
      return Ok(Some((dq(k)?, dq(v)?)));
    }
    match (&self.keys, &self.values) {
      (Some(k), Some(v)) => match self.kind {
        KvCacheKind::Standard => {
          let n = self.offset - self.start;
          Ok(Some((full_slice(k, 2, 0, n)?, full_slice(v, 2, 0, n)?)))
        }
        KvCacheKind::Rotating { keep, .. } => Ok(Some((
          self.temporal_order(k, keep)?,
          self.temporal_order(v, keep)?,
        ))),
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

  /// mlx-lm's `cache.state` tree for this class (see
  /// [`crate::prompt_cache`]): `KVCache` `[keys, values, offset]`,
  /// `RotatingKVCache` `[keys, values, offset, keep, max_size, _idx]`,
  /// `QuantizedKVCache` `[[k, k_scales, k_biases], [v, ...], offset,
  /// group_size, bits]`, `ChunkedKVCache` `[keys, values, offset,
  /// chunk_size, start_position]`. Buffers are cut to the valid positions
  /// (mlx-lm saves its whole step-grown buffers; it loads either).
  pub fn to_state(&self) -> Result<StateNode> {
    use StateNode as S;
    let int = |v: i32| S::Int(v as i64);
    let opt = |a: Option<Array>| a.map(S::Array).unwrap_or(S::None);
    Ok(match (self.kind, &self.quant) {
      (KvCacheKind::Rotating { max_size, keep }, _) => {
        let (k, v) = self
          .state()?
          .map(|(k, v)| (Some(k), Some(v)))
          .unwrap_or((None, None));
        let n = k.as_ref().and_then(|k| k.dim(2)).unwrap_or(0);
        S::List(vec![
          opt(k),
          opt(v),
          int(self.offset),
          int(keep),
          int(max_size),
          int(n),
        ])
      }
      (_, Some(q)) => {
        let view = |t: &Option<Vec<Array>>| -> Result<StateNode> {
          Ok(match t {
            Some(t) => S::List(self.quantized_view(t)?.into_iter().map(S::Array).collect()),
            None => S::None,
          })
        };
        S::List(vec![
          view(&self.qkeys)?,
          view(&self.qvalues)?,
          int(self.offset),
          int(q.group_size),
          int(q.bits),
        ])
      }
      _ => {
        let (k, v) = self
          .state()?
          .map(|(k, v)| (Some(k), Some(v)))
          .unwrap_or((None, None));
        match self.chunk {
          Some(c) => S::List(vec![
            opt(k),
            opt(v),
            int(self.offset),
            int(c),
            int(self.start),
          ]),
          None => S::List(vec![opt(k), opt(v), int(self.offset)]),
        }
      }
    })
  }

  /// Rebuild a cache from mlx-lm's class name and `cache.state` tree (the
  /// inverse of [`KvCache::to_state`], also accepting mlx-lm's full
  /// buffers and its `ConcatenateKVCache`). Errors name what is wrong.
  pub fn from_state(class: &str, state: StateNode) -> Result<KvCache> {
    let bad = |m: &str| Error::InvalidArgument(format!("{class} state: {m}"));
    let items = state.into_list().ok_or_else(|| bad("expected a list"))?;
    let need = |n: usize| {
      if items.len() == n {
        Ok(())
      } else {
        Err(bad(&format!("expected {n} entries, got {}", items.len())))
      }
    };
    let get_int = |i: usize, what: &str| -> Result<i32> {
      items[i]
        .as_int()
        .map(|x| x as i32)
        .ok_or_else(|| bad(&format!("{what} must be an integer")))
    };
    let get_arr = |i: usize, what: &str| -> Result<Option<Array>> {
      match &items[i] {
        StateNode::Array(a) => Ok(Some(a.clone())),
        StateNode::None => Ok(None),
        _ => Err(bad(&format!("{what} must be an array or None"))),
      }
    };
    let check4 = |k: &Option<Array>, v: &Option<Array>| -> Result<()> {
      match (k, v) {
        (Some(k), Some(v))
          if k.ndim() == 4 && v.ndim() == 4 && k.shape()[..3] == v.shape()[..3] =>
        {
          Ok(())
        }
        (None, None) => Ok(()),
        _ => Err(bad(
          "keys/values must both be [B, heads, T, D] arrays (same B, heads, T) or both None",
        )),
      }
    };
    match class {
      "KVCache" | "ConcatenateKVCache" => {
        if class == "KVCache" {
          need(3)?
        } else {
          need(2)?
        }
        let (k, v) = (get_arr(0, "keys")?, get_arr(1, "values")?);
        check4(&k, &v)?;
        let cap = k.as_ref().and_then(|k| k.dim(2)).unwrap_or(0);
        let offset = if class == "KVCache" {
          get_int(2, "offset")?
        } else {
          cap
        };
        if offset < 0 || offset > cap {
          return Err(bad(&format!(
            "offset {offset} outside the {cap} stored positions"
          )));
        }
        let mut c = KvCache::standard();
        if let (Some(k), Some(v)) = (k, v) {
          c.set_state(k, v, offset);
          c.len = offset;
        }
        Ok(c)
      }
      "RotatingKVCache" => {
        need(6)?;
        let (k, v) = (get_arr(0, "keys")?, get_arr(1, "values")?);
        check4(&k, &v)?;
        let (offset, keep, max_size, idx) = (
          get_int(2, "offset")?,
          get_int(3, "keep")?,
          get_int(4, "max_size")?,
          get_int(5, "_idx")?,
        );
        if max_size <= 0 || keep < 0 || keep > max_size || offset < 0 {
          return Err(bad(&format!(
            "invalid offset {offset} / keep {keep} / max_size {max_size}"
          )));
        }
        let mut c = KvCache::new(KvCacheKind::Rotating { max_size, keep });
        if let (Some(k), Some(v)) = (k, v) {
          let n = k.dim(2).unwrap_or(0);
          if idx < 0 || idx > n {
            return Err(bad(&format!("_idx {idx} outside the {n} stored positions")));
          }
          // python `_temporal_order`, then the trim its next update does.
          let order = |a: &Array| -> Result<Array> {
            let a = if idx == n {
              a.clone()
            } else if idx < offset {
              ops::concatenate_axis(
                &[
                  full_slice(a, 2, 0, keep.min(n))?,
                  full_slice(a, 2, idx, n)?,
                  full_slice(a, 2, keep.min(idx), idx)?,
                ],
                2,
              )?
            } else {
              full_slice(a, 2, 0, idx)?
            };
            let m = a.dim(2).unwrap_or(0);
            if m > max_size {
              ops::concatenate_axis(
                &[
                  full_slice(&a, 2, 0, keep)?,
                  full_slice(&a, 2, m - (max_size - keep), m)?,
                ],
                2,
              )
            } else {
              Ok(a)
            }
          };
          let (k, v) = (order(&k)?, order(&v)?);
          c.set_state(k, v, offset);
        } else {
          c.offset = offset;
        }
        Ok(c)
      }
      "QuantizedKVCache" => {
        need(5)?;
        let (offset, group_size, bits) = (
          get_int(2, "offset")?,
          get_int(3, "group_size")?,
          get_int(4, "bits")?,
        );
        let mut c = KvCache::quantized(group_size, bits).map_err(|e| bad(&e.to_string()))?;
        let trip = |i: usize, what: &str| -> Result<Option<Vec<Array>>> {
          match &items[i] {
            StateNode::None => Ok(None),
            StateNode::List(l) if (2..=3).contains(&l.len()) => l
              .iter()
              .map(|x| match x {
                StateNode::Array(a) if a.ndim() == 4 => Ok(a.clone()),
                _ => Err(bad(&format!("{what} must hold 4-D arrays"))),
              })
              .collect::<Result<Vec<_>>>()
              .map(Some),
            _ => Err(bad(&format!(
              "{what} must be (packed, scales[, biases]) or None"
            ))),
          }
        };
        let (qk, qv) = (trip(0, "keys")?, trip(1, "values")?);
        if let (Some(qk), Some(qv)) = (&qk, &qv) {
          let cap = qk[0].dim(2).unwrap_or(0);
          if offset < 0 || offset > cap || qv[0].dim(2) != Some(cap) {
            return Err(bad(&format!(
              "offset {offset} outside the {cap} stored positions"
            )));
          }
          if qk.len() != 3 || qv.len() != 3 {
            return Err(bad(
              "affine quantized keys/values need (packed, scales, biases)",
            ));
          }
        }
        c.qkeys = qk;
        c.qvalues = qv;
        c.offset = offset;
        c.len = offset;
        Ok(c)
      }
      "ChunkedKVCache" => {
        need(5)?;
        let (k, v) = (get_arr(0, "keys")?, get_arr(1, "values")?);
        check4(&k, &v)?;
        let (offset, chunk, start) = (
          get_int(2, "offset")?,
          get_int(3, "chunk_size")?,
          get_int(4, "start_position")?,
        );
        let mut c = KvCache::chunked(chunk).map_err(|e| bad(&e.to_string()))?;
        let cap = k.as_ref().and_then(|k| k.dim(2)).unwrap_or(0);
        if start < 0 || offset < start || (k.is_some() && offset - start > cap) {
          return Err(bad(&format!(
            "offset {offset} / start_position {start} do not fit {cap} stored positions"
          )));
        }
        c.start = start;
        c.offset = offset;
        if let (Some(k), Some(v)) = (k, v) {
          c.keys = Some(k);
          c.values = Some(v);
        }
        c.len = offset - start;
        Ok(c)
      }
      other => Err(Error::InvalidArgument(format!(
        "{other} is not a key/value cache class"
      ))),
    }
  }
}

/// A node of mlx-lm's `cache.state` tree: arrays, python scalars /
/// strings / `None`, and (nested) lists.
#[derive(Clone)]
pub enum StateNode {
  /// An array.
  Array(Array),
  /// A python `int`.
  Int(i64),
  /// A python `float`.
  Float(f64),
  /// A python `bool`.
  Bool(bool),
  /// A python `str` (e.g. `CacheList`'s sub-cache class names).
  Str(String),
  /// `None`.
  None,
  /// A list or tuple.
  List(Vec<StateNode>),
}

impl StateNode {
  /// The list's items.
  pub fn into_list(self) -> Option<Vec<StateNode>> {
    match self {
      StateNode::List(l) => Some(l),
      _ => None,
    }
  }

  /// An integer (also a bool).
  pub fn as_int(&self) -> Option<i64> {
    match self {
      StateNode::Int(i) => Some(*i),
      StateNode::Bool(b) => Some(*b as i64),
      _ => None,
    }
  }
}

/// Per-layer recurrent state for SSM / linear-attention layers (mlx-lm
/// `ArraysCache(size)`): `size` slots, each an array or empty, plus the
/// batch's optional `left_padding` / `lengths`.
#[derive(Clone, Default)]
pub struct ArraysCache {
  /// The state slots.
  pub cache: Vec<Option<Array>>,
  /// Left padding per batch row (batched generation).
  pub left_padding: Option<Array>,
  /// Valid lengths per batch row.
  pub lengths: Option<Array>,
}

impl ArraysCache {
  /// `size` empty slots.
  pub fn new(size: usize) -> ArraysCache {
    ArraysCache {
      cache: vec![None; size],
      left_padding: None,
      lengths: None,
    }
  }

  /// Slot `i` (python `cache[i]`); out of range is `None`.
  pub fn get(&self, i: usize) -> Option<&Array> {
    self.cache.get(i).and_then(|a| a.as_ref())
  }

  /// Set slot `i` (python `cache[i] = value`); out of range is an error.
  pub fn set(&mut self, i: usize, value: Array) -> Result<()> {
    let n = self.cache.len();
    let slot = self.cache.get_mut(i).ok_or_else(|| {
      Error::InvalidArgument(format!("ArraysCache: slot {i} out of range (size {n})"))
    })?;
    *slot = Some(value);
    Ok(())
  }

  /// Whether the first slot is empty (python `empty()`).
  pub fn is_empty(&self) -> bool {
    self.cache.first().map(|a| a.is_none()).unwrap_or(true)
  }

  /// Bytes held.
  pub fn nbytes(&self) -> usize {
    self.cache.iter().flatten().map(|a| a.nbytes()).sum()
  }

  /// The padding mask for `n` new steps (python `ArraysCache.make_mask`):
  /// `[B, n]` booleans from `left_padding` / `lengths`, or `None`.
  pub fn make_mask(&self, n: i32) -> Result<Option<Array>> {
    let pos = ops::arange(0.0, n as f64, 1.0, Dtype::Int32)?;
    let mut mask = None;
    if let Some(lp) = &self.left_padding {
      mask = Some(ops::greater_equal(&pos, &ops::expand_dims(lp, 1)?)?);
    }
    if let Some(l) = &self.lengths {
      let inl = ops::less(&pos, &ops::expand_dims(l, 1)?)?;
      mask = Some(match mask {
        Some(m) => ops::logical_and(&m, &inl)?,
        None => inl,
      });
    }
    Ok(mask)
  }

  /// mlx-lm's state `[cache, left_padding, lengths]`.
  pub fn to_state(&self) -> StateNode {
    let opt = |a: &Option<Array>| a.clone().map(StateNode::Array).unwrap_or(StateNode::None);
    StateNode::List(vec![
      StateNode::List(self.cache.iter().map(opt).collect()),
      opt(&self.left_padding),
      opt(&self.lengths),
    ])
  }

  /// Rebuild from mlx-lm's state.
  pub fn from_state(state: StateNode) -> Result<ArraysCache> {
    let bad = |m: &str| Error::InvalidArgument(format!("ArraysCache state: {m}"));
    let items = state.into_list().ok_or_else(|| bad("expected a list"))?;
    if items.len() != 3 {
      return Err(bad(&format!("expected 3 entries, got {}", items.len())));
    }
    let opt = |n: &StateNode| -> Result<Option<Array>> {
      match n {
        StateNode::Array(a) => Ok(Some(a.clone())),
        StateNode::None => Ok(None),
        _ => Err(bad("entries must be arrays or None")),
      }
    };
    let cache = match &items[0] {
      StateNode::List(l) => l.iter().map(opt).collect::<Result<Vec<_>>>()?,
      _ => return Err(bad("cache must be a list")),
    };
    Ok(ArraysCache {
      cache,
      left_padding: opt(&items[1])?,
      lengths: opt(&items[2])?,
    })
  }
}

/// Several caches for one layer (mlx-lm `CacheList(*caches)`, e.g. a
/// hybrid layer's attention + SSM state).
#[derive(Default)]
pub struct CacheList {
  /// The caches.
  pub caches: Vec<LayerCache>,
}

/// Any per-layer cache (what a prompt-cache file holds per layer).
pub enum LayerCache {
  /// A key/value cache (standard, rotating, quantized or chunked).
  Kv(KvCache),
  /// Recurrent state.
  Arrays(ArraysCache),
  /// A group of caches.
  List(CacheList),
}

impl From<KvCache> for LayerCache {
  fn from(c: KvCache) -> LayerCache {
    LayerCache::Kv(c)
  }
}

impl From<ArraysCache> for LayerCache {
  fn from(c: ArraysCache) -> LayerCache {
    LayerCache::Arrays(c)
  }
}

impl From<CacheList> for LayerCache {
  fn from(c: CacheList) -> LayerCache {
    LayerCache::List(c)
  }
}

impl LayerCache {
  /// mlx-lm's class name.
  pub fn class_name(&self) -> &'static str {
    match self {
      LayerCache::Kv(c) => c.class_name(),
      LayerCache::Arrays(_) => "ArraysCache",
      LayerCache::List(_) => "CacheList",
    }
  }

  /// mlx-lm's `cache.state` tree.
  pub fn to_state(&self) -> Result<StateNode> {
    Ok(match self {
      LayerCache::Kv(c) => c.to_state()?,
      LayerCache::Arrays(c) => c.to_state(),
      LayerCache::List(l) => StateNode::List(
        l.caches
          .iter()
          .map(|c| {
            Ok(StateNode::List(vec![
              c.to_state()?,
              StateNode::Str(c.class_name().into()),
            ]))
          })
          .collect::<Result<Vec<_>>>()?,
      ),
    })
  }

  /// Rebuild from mlx-lm's class name and state (python
  /// `globals()[class].from_state(state)`); an unknown class is an error
  /// naming it.
  pub fn from_state(class: &str, state: StateNode) -> Result<LayerCache> {
    match class {
      "ArraysCache" => Ok(LayerCache::Arrays(ArraysCache::from_state(state)?)),
      "CacheList" => {
        let bad = |m: &str| Error::InvalidArgument(format!("CacheList state: {m}"));
        let items = state.into_list().ok_or_else(|| bad("expected a list"))?;
        let mut caches = Vec::with_capacity(items.len());
        for it in items {
          let mut pair = it
            .into_list()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| bad("entries must be [state, class]"))?;
          let name = match pair.pop() {
            Some(StateNode::Str(s)) => s,
            _ => return Err(bad("class name must be a string")),
          };
          caches.push(LayerCache::from_state(
            &name,
            pair.pop().unwrap_or(StateNode::None),
          )?);
        }
        Ok(LayerCache::List(CacheList { caches }))
      }
      "KVCache" | "ConcatenateKVCache" | "RotatingKVCache" | "QuantizedKVCache"
      | "ChunkedKVCache" => Ok(LayerCache::Kv(KvCache::from_state(class, state)?)),
      other => Err(Error::InvalidArgument(format!(
        "unsupported cache class {other:?} (supported: KVCache, RotatingKVCache, QuantizedKVCache, ChunkedKVCache, ConcatenateKVCache, ArraysCache, CacheList)"
      ))),
    }
  }

  /// Whether it can be trimmed (python `is_trimmable`; `ArraysCache`
  /// cannot).
  pub fn is_trimmable(&self) -> bool {
    match self {
      LayerCache::Kv(c) => c.is_trimmable(),
      LayerCache::Arrays(_) => false,
      LayerCache::List(l) => l.caches.iter().all(|c| c.is_trimmable()),
    }
  }

  /// Drop the last `n` positions; returns how many were dropped (0 when
  /// not trimmable).
  pub fn trim(&mut self, n: i32) -> i32 {
    if !self.is_trimmable() {
      return 0;
    }
    match self {
      LayerCache::Kv(c) => c.trim(n),
      LayerCache::Arrays(_) => 0,
      LayerCache::List(l) => l.caches.iter_mut().map(|c| c.trim(n)).last().unwrap_or(0),
    }
  }

  /// Bytes held.
  pub fn nbytes(&self) -> usize {
    match self {
      LayerCache::Kv(c) => c.nbytes(),
      LayerCache::Arrays(c) => c.nbytes(),
      LayerCache::List(l) => l.caches.iter().map(|c| c.nbytes()).sum(),
    }
  }

  /// The key/value cache, if this is one.
  pub fn as_kv(&self) -> Option<&KvCache> {
    match self {
      LayerCache::Kv(c) => Some(c),
      _ => None,
    }
  }

  /// The key/value cache, mutably.
  pub fn as_kv_mut(&mut self) -> Option<&mut KvCache> {
    match self {
      LayerCache::Kv(c) => Some(c),
      _ => None,
    }
  }
}

/// Trim every cache by `n` positions if all can be trimmed (python
/// `trim_prompt_cache`); returns how many were trimmed.
pub fn trim_prompt_cache(caches: &mut [LayerCache], n: i32) -> i32 {
  if caches.is_empty() || !caches.iter().all(|c| c.is_trimmable()) {
    return 0;
  }
  let trimmed: Vec<i32> = caches.iter_mut().map(|c| c.trim(n)).collect();
  trimmed[0]
}

impl std::fmt::Debug for KvCache {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct(self.class_name())
      .field("kind", &self.kind)
      .field("offset", &self.offset)
      .field("size", &self.size())
      .finish()
  }
}

impl std::fmt::Debug for StateNode {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match self {
      StateNode::Array(a) => write!(f, "Array({:?} {})", a.shape(), a.dtype()),
      StateNode::Int(i) => write!(f, "{i}"),
      StateNode::Float(x) => write!(f, "{x}"),
      StateNode::Bool(b) => write!(f, "{b}"),
      StateNode::Str(s) => write!(f, "{s:?}"),
      StateNode::None => write!(f, "None"),
      StateNode::List(l) => f.debug_list().entries(l).finish(),
    }
  }
}

impl std::fmt::Debug for ArraysCache {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let shapes: Vec<Option<Vec<i32>>> = self
      .cache
      .iter()
      .map(|a| a.as_ref().map(|a| a.shape()))
      .collect();
    f.debug_struct("ArraysCache")
      .field("cache", &shapes)
      .finish()
  }
}

impl std::fmt::Debug for CacheList {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("CacheList")
      .field("caches", &self.caches)
      .finish()
  }
}

impl std::fmt::Debug for LayerCache {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match self {
      LayerCache::Kv(c) => c.fmt(f),
      LayerCache::Arrays(c) => c.fmt(f),
      LayerCache::List(c) => c.fmt(f),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// 3-, 5- and 6-bit quantized caches (32 is not a multiple of those bit
  /// widths: a row of `d` values packs into `d * bits / 32` words) hold
  /// exactly what MLX's own `quantize` + `dequantize` give for the same keys.
  #[test]
  fn quantized_cache_odd_bits() {
    let key = mlxrs_core::random::key(7).unwrap();
    let x =
      mlxrs_core::random::normal(&[1, 2, 8, 64], Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap();
    let first = ops::slice(&x, &[0, 0, 0, 0], &[1, 2, 5, 64], &[1, 1, 1, 1]).unwrap();
    let rest = ops::slice(&x, &[0, 0, 5, 0], &[1, 2, 8, 64], &[1, 1, 1, 1]).unwrap();
    for bits in [3, 5, 6] {
      let mut c = KvCache::quantized(32, bits).unwrap();
      c.update_and_fetch(&first, &first).unwrap();
      let (mut k, _) = c.update_and_fetch(&rest, &rest).unwrap();
      assert_eq!(k.shape(), vec![1, 2, 8, 64], "bits {bits}");
      let q = ops::quantize(&x, Some(32), Some(bits), "affine", None).unwrap();
      let mut want = ops::dequantize(
        &q[0],
        &q[1],
        q.get(2),
        Some(32),
        Some(bits),
        "affine",
        None,
        Some(Dtype::Float32),
      )
      .unwrap();
      assert_eq!(
        k.to_vec::<f32>().unwrap(),
        want.to_vec::<f32>().unwrap(),
        "bits {bits}"
      );
    }
  }
}
