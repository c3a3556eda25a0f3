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

/// Buffers grow in steps of this many positions (python `step = 256`).
const STEP: i32 = 256;

/// Dense key and value buffers `[B, kv_heads, capacity, head_dim]`.
#[derive(Clone)]
struct Dense {
  keys: Array,
  values: Array,
}

/// Quantized key and value buffers, each `(packed, scales, biases)` of
/// capacity positions.
#[derive(Clone)]
struct Packed {
  keys: Vec<Array>,
  values: Vec<Array>,
}

/// The state of each cache class: only what that class can hold.
#[derive(Clone)]
enum State {
  /// `KVCache`: `offset` valid positions at the start of the buffers.
  Standard { buf: Option<Dense> },
  /// `RotatingKVCache`: `len` valid positions, the next single-token write
  /// at `idx` (wrapping within `[keep, max_size)`).
  Rotating {
    max_size: i32,
    keep: i32,
    len: i32,
    idx: i32,
    buf: Option<Dense>,
  },
  /// `QuantizedKVCache`: `offset` valid positions, quantized.
  Quantized {
    params: QuantParams,
    buf: Option<Packed>,
  },
  /// `ChunkedKVCache`: `offset - start` valid positions; `start` is the
  /// absolute position of the first stored key.
  Chunked {
    chunk: i32,
    start: i32,
    buf: Option<Dense>,
  },
  /// `ArraysCache`: a recurrent layer's state slots (convolution window,
  /// SSM / linear-attention state); no keys or values.
  Arrays(ArraysCache),
  /// `CacheList`: several caches of one layer (a hybrid layer's SSM state
  /// and attention keys/values).
  List(Vec<KvCache>),
  /// No cache (python `cache=None`): keys and values go straight to
  /// attention and nothing is kept.
  Pass,
}

/// A per-layer key/value cache of `[B, kv_heads, T, head_dim]` tensors:
/// one of mlx-lm's `KVCache`, `RotatingKVCache`, `QuantizedKVCache` or
/// `ChunkedKVCache`, each holding only its own state.
#[derive(Clone)]
pub struct KvCache {
  /// Positions seen so far (the next token's RoPE offset).
  pub offset: i32,
  state: State,
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

/// Positions a buffer holds (its axis 2).
fn capacity(a: &Array) -> i32 {
  a.dim(2).unwrap_or(0)
}

impl Dense {
  /// Zeros for `extra` positions (rounded up to [`STEP`]) shaped as `k`, `v`.
  fn zeros_for(k: &Array, v: &Array, extra: i32) -> Result<Dense> {
    let (ks, vs) = (k.shape(), v.shape());
    let n = ((extra + STEP - 1) / STEP) * STEP;
    Ok(Dense {
      keys: ops::zeros(&[ks[0], ks[1], n, ks[3]], k.dtype())?,
      values: ops::zeros(&[vs[0], vs[1], n, vs[3]], v.dtype())?,
    })
  }

  /// The first `n` positions.
  fn head(&self, n: i32) -> Result<(Array, Array)> {
    Ok((
      full_slice(&self.keys, 2, 0, n)?,
      full_slice(&self.values, 2, 0, n)?,
    ))
  }

  /// python `KVCache.update_and_fetch` on buffers holding `prev` valid
  /// positions: grow by whole steps when needed, write `k`, `v` at `prev`,
  /// return the buffers and the `prev + T` valid positions.
  fn append(buf: Option<Dense>, prev: i32, k: &Array, v: &Array) -> Result<(Dense, Array, Array)> {
    let t = k.dim(2).unwrap_or(0);
    let buf = match buf {
      Some(b) if prev + t <= capacity(&b.keys) => b,
      Some(b) => {
        let new = Dense::zeros_for(k, v, t)?;
        let (ok, ov) = if prev % STEP != 0 {
          b.head(prev)?
        } else {
          (b.keys, b.values)
        };
        Dense {
          keys: ops::concatenate_axis(&[ok, new.keys], 2)?,
          values: ops::concatenate_axis(&[ov, new.values], 2)?,
        }
      }
      None => Dense::zeros_for(k, v, t)?,
    };
    let buf = Dense {
      keys: update_at(&buf.keys, k, 2, prev)?,
      values: update_at(&buf.values, v, 2, prev)?,
    };
    let (ok, ov) = buf.head(prev + t)?;
    Ok((buf, ok, ov))
  }
}

/// The first `n` positions of quantized triples.
fn quantized_view(t: &[Array], n: i32) -> Result<Vec<Array>> {
  t.iter()
    .map(|x| {
      if x.dim(2) == Some(n) {
        Ok(x.clone())
      } else {
        full_slice(x, 2, 0, n)
      }
    })
    .collect()
}

fn dequantize_triple(t: &[Array], q: &QuantParams, dt: Dtype) -> Result<Array> {
  ops::dequantize(
    &t[0],
    &t[1],
    t.get(2),
    Some(q.group_size),
    Some(q.bits),
    q.mode.as_str(),
    None,
    Some(dt),
  )
}

/// A rotating buffer of `len` valid positions, next write at `idx`,
/// rearranged so positions are in temporal order.
fn temporal_order(a: &Array, keep: i32, len: i32, idx: i32) -> Result<Array> {
  let n = capacity(a);
  let valid = full_slice(a, 2, 0, len.min(n))?;
  if idx >= len || idx <= keep {
    return Ok(valid);
  }
  let head = full_slice(&valid, 2, 0, keep)?;
  let newer = full_slice(&valid, 2, idx, len)?;
  let older = full_slice(&valid, 2, keep, idx)?;
  ops::concatenate_axis(&[head, newer, older], 2)
}

impl KvCache {
  /// An empty cache of `kind`.
  pub fn new(kind: KvCacheKind) -> KvCache {
    let state = match kind {
      KvCacheKind::Standard => State::Standard { buf: None },
      KvCacheKind::Rotating { max_size, keep } => State::Rotating {
        max_size,
        keep,
        len: 0,
        idx: 0,
        buf: None,
      },
    };
    KvCache { offset: 0, state }
  }

  /// An empty quantized cache (mlx-lm `QuantizedKVCache(group_size,
  /// bits)`, affine mode): keys and values are quantized as they arrive;
  /// attention runs on them with [`crate::attention_with_cache_update`]
  /// (or dequantized by [`KvCache::update_and_fetch`]). Its
  /// [`KvCache::kind`] is `Standard` (it grows the same way).
  pub fn quantized(group_size: i32, bits: i32) -> Result<KvCache> {
    let params = QuantParams {
      group_size,
      bits,
      mode: crate::quant::QuantMode::Affine,
    };
    params.validate()?;
    Ok(KvCache {
      offset: 0,
      state: State::Quantized { params, buf: None },
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
      offset: 0,
      state: State::Chunked {
        chunk: chunk_size,
        start: 0,
        buf: None,
      },
    })
  }

  /// The mlx-lm class this cache corresponds to (`KVCache`,
  /// `RotatingKVCache`, `QuantizedKVCache`, `ChunkedKVCache`).
  pub fn class_name(&self) -> &'static str {
    match self.state {
      State::Standard { .. } => "KVCache",
      State::Rotating { .. } => "RotatingKVCache",
      State::Quantized { .. } => "QuantizedKVCache",
      State::Chunked { .. } => "ChunkedKVCache",
      State::Arrays(_) => "ArraysCache",
      State::List(_) => "CacheList",
      State::Pass => "None",
    }
  }

  /// The quantization of a quantized cache.
  pub fn quantization(&self) -> Option<&QuantParams> {
    match &self.state {
      State::Quantized { params, .. } => Some(params),
      _ => None,
    }
  }

  /// Whether keys/values are stored quantized.
  pub fn is_quantized(&self) -> bool {
    matches!(self.state, State::Quantized { .. })
  }

  /// The chunk size of a chunked cache.
  pub fn chunk_size(&self) -> Option<i32> {
    match self.state {
      State::Chunked { chunk, .. } => Some(chunk),
      _ => None,
    }
  }

  /// Chunked caches: absolute position of the first stored key
  /// (python `start_position`); 0 for other kinds.
  pub fn start_position(&self) -> i32 {
    match self.state {
      State::Chunked { start, .. } => start,
      _ => 0,
    }
  }

  /// An empty standard cache.
  pub fn standard() -> KvCache {
    KvCache::new(KvCacheKind::Standard)
  }

  /// No cache (python `model(inputs, cache=None)`, what mlx-lm's trainer
  /// runs): [`KvCache::update_and_fetch`] returns the new keys and values
  /// as they are (no step-grown buffer, no copy), nothing is kept and the
  /// offset stays 0, so every call starts at position 0. Its
  /// [`KvCache::class_name`] is `"None"`; it has no state to save.
  pub fn none() -> KvCache {
    KvCache {
      offset: 0,
      state: State::Pass,
    }
  }

  /// An empty recurrent-state cache of `size` slots (mlx-lm
  /// `ArraysCache(size)`, what SSM / linear-attention layers use: e.g. a
  /// Mamba layer's convolution window and SSM state). It holds no
  /// keys/values: [`KvCache::update_and_fetch`] is an error, it cannot be
  /// trimmed (so speculative rewinding and prompt-cache prefix trimming
  /// refuse it), and its [`KvCache::offset`] counts the positions a model
  /// fed it in this process (mlx-lm's state has no offset, so a loaded one
  /// starts at 0). Layers reach the slots with [`KvCache::arrays_mut`].
  pub fn arrays(size: usize) -> KvCache {
    KvCache {
      offset: 0,
      state: State::Arrays(ArraysCache::new(size)),
    }
  }

  /// Several caches for one layer (mlx-lm `CacheList(*caches)`, e.g.
  /// Falcon-H1's `CacheList(ArraysCache(2), KVCache())`); layers reach them
  /// with [`KvCache::list_mut`].
  pub fn list(caches: Vec<KvCache>) -> KvCache {
    KvCache {
      offset: 0,
      state: State::List(caches),
    }
  }

  /// A [`LayerCache`] (what [`crate::load_prompt_cache`] returns) as the
  /// cache type models take.
  pub fn from_layer(c: LayerCache) -> KvCache {
    match c {
      LayerCache::Kv(k) => k,
      LayerCache::Arrays(a) => KvCache {
        offset: 0,
        state: State::Arrays(a),
      },
      LayerCache::List(l) => KvCache::list(l.caches.into_iter().map(KvCache::from_layer).collect()),
    }
  }

  /// Whether this cache holds recurrent state (an `ArraysCache`, or a
  /// `CacheList` with one) rather than only keys/values: such caches
  /// cannot be trimmed, rotated, quantized or batched by padding.
  pub fn is_recurrent(&self) -> bool {
    match &self.state {
      State::Arrays(_) => true,
      State::List(l) => l.iter().any(KvCache::is_recurrent),
      _ => false,
    }
  }

  /// Whether this cache is itself an `ArraysCache` or `CacheList`.
  fn is_recurrent_state(&self) -> bool {
    matches!(self.state, State::Arrays(_) | State::List(_))
  }

  /// The state slots of an `ArraysCache` (python `cache[i]` /
  /// `cache[i] = x`); any other class is an error naming it.
  pub fn arrays_mut(&mut self) -> Result<&mut ArraysCache> {
    let class = self.class_name();
    match &mut self.state {
      State::Arrays(a) => Ok(a),
      _ => Err(Error::InvalidArgument(format!(
        "expected an ArraysCache (recurrent layer state), got a {class}"
      ))),
    }
  }

  /// The state slots of an `ArraysCache`, read-only.
  pub fn as_arrays(&self) -> Option<&ArraysCache> {
    match &self.state {
      State::Arrays(a) => Some(a),
      _ => None,
    }
  }

  /// The caches of a `CacheList`; any other class is an error naming it.
  pub fn list_mut(&mut self) -> Result<&mut [KvCache]> {
    let class = self.class_name();
    match &mut self.state {
      State::List(l) => Ok(l),
      _ => Err(Error::InvalidArgument(format!(
        "expected a CacheList, got a {class}"
      ))),
    }
  }

  /// Every array the cache holds (keys/values buffers, quantized triples,
  /// recurrent state), e.g. to evaluate them between prefill chunks.
  pub fn held_arrays(&self) -> Vec<Array> {
    match &self.state {
      State::Standard { buf } | State::Rotating { buf, .. } | State::Chunked { buf, .. } => buf
        .iter()
        .flat_map(|b| [b.keys.clone(), b.values.clone()])
        .collect(),
      State::Quantized { buf, .. } => buf
        .iter()
        .flat_map(|b| b.keys.iter().chain(&b.values).cloned())
        .collect(),
      State::Arrays(a) => a.cache.iter().flatten().cloned().collect(),
      State::List(l) => l.iter().flat_map(KvCache::held_arrays).collect(),
      State::Pass => Vec::new(),
    }
  }

  /// The kind (quantized and chunked caches grow as `Standard`).
  pub fn kind(&self) -> KvCacheKind {
    match self.state {
      State::Rotating { max_size, keep, .. } => KvCacheKind::Rotating { max_size, keep },
      _ => KvCacheKind::Standard,
    }
  }

  /// Whether nothing is cached.
  pub fn is_empty(&self) -> bool {
    self.offset == 0
  }

  /// Positions held (python `cache.size()`): `offset`, at most `max_size`
  /// for a rotating cache, the chunk's length for a chunked one.
  pub fn size(&self) -> i32 {
    match self.state {
      State::Rotating { max_size, .. } => self.offset.min(max_size),
      State::Chunked { start, .. } => self.offset - start,
      // python `_BaseCache.size()`: recurrent state has no positions.
      State::Arrays(_) => 0,
      State::List(ref l) => l.iter().map(KvCache::size).max().unwrap_or(0),
      _ => self.offset,
    }
  }

  /// Bytes held by the buffers (python `cache.nbytes`).
  pub fn nbytes(&self) -> usize {
    match &self.state {
      State::Standard { buf } | State::Rotating { buf, .. } | State::Chunked { buf, .. } => buf
        .as_ref()
        .map(|b| b.keys.nbytes() + b.values.nbytes())
        .unwrap_or(0),
      State::Quantized { buf, .. } => buf
        .as_ref()
        .map(|b| b.keys.iter().chain(&b.values).map(|a| a.nbytes()).sum())
        .unwrap_or(0),
      State::Arrays(a) => a.nbytes(),
      State::List(l) => l.iter().map(KvCache::nbytes).sum(),
      State::Pass => 0,
    }
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
    let held = match &self.state {
      State::Standard { buf: Some(b) }
      | State::Rotating { buf: Some(b), .. }
      | State::Chunked { buf: Some(b), .. } => Some((b.keys.shape(), b.values.shape(), 32)),
      State::Quantized {
        params,
        buf: Some(b),
      } => Some((b.keys[0].shape(), b.values[0].shape(), params.bits)),
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
      } => Ok((
        dequantize_triple(&keys, &params, k.dtype())?,
        dequantize_triple(&values, &params, v.dtype())?,
      )),
    }
  }

  /// Append `k`, `v` and return what attention should use: dense keys and
  /// values, or quantized triples for a quantized cache (what mlx-lm's
  /// `update_and_fetch` returns for each class).
  pub fn update_and_fetch_any(&mut self, k: &Array, v: &Array) -> Result<CachedKv> {
    KvCache::check_kv(k, v)?;
    if self.is_recurrent_state() {
      return Err(Error::InvalidArgument(format!(
        "{} holds recurrent state, not keys/values: update_and_fetch is not defined for it",
        self.class_name()
      )));
    }
    self.check_layout(k, v)?;
    if matches!(self.state, State::Rotating { .. }) {
      let (ok, ov) = self.update_rotating(k, v)?;
      return Ok(CachedKv::Dense(ok, ov));
    }
    let t = k.dim(2).unwrap_or(0);
    let prev = self.offset;
    match &mut self.state {
      State::Standard { buf } => {
        let (b, ok, ov) = Dense::append(buf.take(), prev, k, v)?;
        *buf = Some(b);
        self.offset += t;
        Ok(CachedKv::Dense(ok, ov))
      }
      State::Chunked { start, buf, .. } => {
        let (b, ok, ov) = Dense::append(buf.take(), prev - *start, k, v)?;
        *buf = Some(b);
        self.offset += t;
        Ok(CachedKv::Dense(ok, ov))
      }
      State::Quantized { params, buf } => {
        let params = *params;
        let (b, keys, values) = KvCache::append_quantized(buf.take(), &params, prev, k, v)?;
        *buf = Some(b);
        self.offset += t;
        Ok(CachedKv::Quantized {
          keys,
          values,
          params,
        })
      }
      State::Rotating { .. } => Err(Error::InvalidArgument(
        "rotating caches update through update_rotating".into(),
      )),
      State::Arrays(_) | State::List(_) => Err(Error::InvalidArgument(
        "recurrent caches hold no keys/values".into(),
      )),
      State::Pass => Ok(CachedKv::Dense(k.clone(), v.clone())),
    }
  }

  /// python `QuantizedKVCache.update_and_fetch` on buffers holding `prev`
  /// valid positions.
  fn append_quantized(
    buf: Option<Packed>,
    q: &QuantParams,
    prev: i32,
    k: &Array,
    v: &Array,
  ) -> Result<(Packed, Vec<Array>, Vec<Array>)> {
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
    let new_steps = (STEP + n - 1) / STEP * STEP;
    let buf = match buf {
      Some(p) if prev + n <= capacity(&p.keys[0]) => p,
      Some(p) => {
        let expand = |t: Vec<Array>| -> Result<Vec<Array>> {
          t.into_iter()
            .map(|x| {
              let x = if prev % STEP != 0 {
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
        Packed {
          keys: expand(p.keys)?,
          values: expand(p.values)?,
        }
      }
      None => {
        let init = |d: i32, dt: Dtype| -> Result<Vec<Array>> {
          Ok(vec![
            ops::zeros(&[b, h, new_steps, d * q.bits / 32], Dtype::Uint32)?,
            ops::zeros(&[b, h, new_steps, d / q.group_size], dt)?,
            ops::zeros(&[b, h, new_steps, d / q.group_size], dt)?,
          ])
        };
        Packed {
          keys: init(ks[3], k.dtype())?,
          values: init(vs[3], k.dtype())?,
        }
      }
    };
    let qk = ops::quantize(k, Some(q.group_size), Some(q.bits), q.mode.as_str(), None)?;
    let qv = ops::quantize(v, Some(q.group_size), Some(q.bits), q.mode.as_str(), None)?;
    let write = |buf: Vec<Array>, upd: &[Array]| -> Result<Vec<Array>> {
      buf
        .iter()
        .zip(upd)
        .map(|(b, u)| {
          let u = if u.dtype() != b.dtype() {
            ops::astype(u, b.dtype())?
          } else {
            u.clone()
          };
          update_at(b, &u, 2, prev)
        })
        .collect()
    };
    let buf = Packed {
      keys: write(buf.keys, &qk)?,
      values: write(buf.values, &qv)?,
    };
    let end = prev + n;
    let (vk, vv) = (
      quantized_view(&buf.keys, end)?,
      quantized_view(&buf.values, end)?,
    );
    Ok((buf, vk, vv))
  }

  /// Chunked caches: drop keys older than the last `chunk_size` positions
  /// (python `ChunkedKVCache.maybe_trim_front`). No-op for other kinds.
  pub fn maybe_trim_front(&mut self) -> Result<()> {
    let offset = self.offset;
    if let State::Chunked {
      chunk,
      start,
      buf: Some(b),
    } = &mut self.state
    {
      let valid = offset - *start;
      if valid > *chunk {
        let trim = valid - *chunk;
        *start += trim;
        *b = Dense {
          keys: full_slice(&b.keys, 2, trim, valid)?,
          values: full_slice(&b.values, 2, trim, valid)?,
        };
      }
    }
    Ok(())
  }

  /// Convert a standard cache to a quantized one holding the same
  /// positions (python `KVCache.to_quantized(group_size, bits)`, used by
  /// mlx-lm's `maybe_quantize_kv_cache`). Other kinds are an error.
  pub fn to_quantized(&self, group_size: i32, bits: i32) -> Result<KvCache> {
    let State::Standard { buf } = &self.state else {
      return Err(Error::InvalidArgument(format!(
        "{} cannot be converted to a QuantizedKVCache",
        self.class_name()
      )));
    };
    let mut c = KvCache::quantized(group_size, bits)?;
    c.offset = self.offset;
    if let (Some(b), State::Quantized { params, buf: qbuf }) = (buf, &mut c.state) {
      let q = *params;
      for (what, d) in [
        ("keys", b.keys.dim(-1).unwrap_or(0)),
        ("values", b.values.dim(-1).unwrap_or(0)),
      ] {
        if d % q.group_size != 0 {
          return Err(Error::InvalidArgument(format!(
            "cannot quantize the KV cache: the {what}' head_dim {d} is not a multiple of the group size {} (--kv-group-size)",
            q.group_size
          )));
        }
      }
      let quant =
        |a: &Array| ops::quantize(a, Some(q.group_size), Some(q.bits), q.mode.as_str(), None);
      let (k, v) = b.head(self.offset)?;
      *qbuf = Some(Packed {
        keys: quant(&k)?,
        values: quant(&v)?,
      });
    }
    Ok(c)
  }

  /// python `RotatingKVCache.update_and_fetch`.
  fn update_rotating(&mut self, k: &Array, v: &Array) -> Result<(Array, Array)> {
    let t = k.dim(2).unwrap_or(0);
    let State::Rotating {
      max_size,
      keep,
      len,
      idx,
      buf,
    } = &mut self.state
    else {
      return Err(Error::InvalidArgument(
        "update_rotating on a non-rotating cache".into(),
      ));
    };
    let (max_size, keep) = (*max_size, *keep);
    let single = match buf.take() {
      Some(b) if t == 1 => b,
      old => {
        // Multi-token update (prefill): concatenate in temporal order, then
        // trim to the window (keeping `keep` sink positions), as mlx-lm's
        // `_update_concat` does. The cached part is first cut to the last
        // `max_size - 1` positions (plus the sinks), so each new query sees
        // a full window; the result may exceed max_size for this call.
        let (ck, cv) = match old {
          Some(b) => {
            let cut = |a: &Array| -> Result<Array> {
              let a = temporal_order(a, keep, *len, *idx)?;
              let n = capacity(&a);
              if n < max_size {
                return Ok(a);
              }
              let head = full_slice(&a, 2, 0, keep)?;
              let tail = full_slice(&a, 2, n - (max_size - 1 - keep), n)?;
              ops::concatenate_axis(&[head, tail], 2)
            };
            let (ok, ov) = (cut(&b.keys)?, cut(&b.values)?);
            (
              ops::concatenate_axis(&[ok, k.clone()], 2)?,
              ops::concatenate_axis(&[ov, v.clone()], 2)?,
            )
          }
          None => (k.clone(), v.clone()),
        };
        self.offset += t;
        let total = capacity(&ck);
        let out = (ck.clone(), cv.clone());
        // Keep the sinks plus the last (max_size - keep) positions.
        let kept = if total > max_size {
          let trim = |a: &Array| -> Result<Array> {
            let head = full_slice(a, 2, 0, keep)?;
            let tail = full_slice(a, 2, total - (max_size - keep), total)?;
            ops::concatenate_axis(&[head, tail], 2)
          };
          Dense {
            keys: trim(&ck)?,
            values: trim(&cv)?,
          }
        } else {
          Dense {
            keys: ck,
            values: cv,
          }
        };
        *len = capacity(&kept.keys);
        *idx = *len;
        *buf = Some(kept);
        return Ok(out);
      }
    };
    // Single-token update: write in place, wrapping within [keep, max_size).
    let cap = capacity(&single.keys);
    let b = if cap < max_size && *idx >= cap {
      let grow_by = STEP.min(max_size - cap);
      let (ks, vs) = (k.shape(), v.shape());
      let nk = ops::zeros(&[ks[0], ks[1], grow_by, ks[3]], k.dtype())?;
      let nv = ops::zeros(&[vs[0], vs[1], grow_by, vs[3]], v.dtype())?;
      Dense {
        keys: ops::concatenate_axis(&[single.keys, nk], 2)?,
        values: ops::concatenate_axis(&[single.values, nv], 2)?,
      }
    } else {
      single
    };
    if *idx >= max_size {
      *idx = keep;
    }
    let b = Dense {
      keys: update_at(&b.keys, k, 2, *idx)?,
      values: update_at(&b.values, v, 2, *idx)?,
    };
    *idx += 1;
    self.offset += 1;
    *len = (*len + 1).min(max_size);
    let out = if *len < capacity(&b.keys) {
      b.head(*len)?
    } else {
      (b.keys.clone(), b.values.clone())
    };
    *buf = Some(b);
    Ok(out)
  }

  /// The attention mask for `n` new tokens (mlx-lm's `cache.make_mask` /
  /// `create_attention_mask`), with an optional sliding `window`.
  pub fn make_mask(&self, n: i32, window: Option<i32>) -> Result<crate::AttnMask> {
    use crate::attention::{AttnMask, causal_mask};
    if let State::List(l) = &self.state {
      // A hybrid layer's list: the mask of its key/value cache.
      if let Some(kv) = l.iter().find(|c| !c.is_recurrent_state()) {
        return kv.make_mask(n, window);
      }
    }
    match self.state {
      State::Rotating { max_size, .. } => {
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
      _ => AttnMask::causal(n, self.offset - self.start_position(), window),
    }
  }

  /// Drop the last `n` positions (python `cache.trim(n)`); returns how many
  /// were trimmed. Rotating caches can trim only while not yet wrapped.
  pub fn trim(&mut self, n: i32) -> i32 {
    if !self.is_trimmable() {
      return 0;
    }
    if let State::List(l) = &mut self.state {
      // python `CacheList.trim`: every sub-cache (all trimmable here).
      return l.iter_mut().map(|c| c.trim(n)).last().unwrap_or(0);
    }
    let n = n.min(self.offset - self.start_position()).max(0);
    if let State::Rotating {
      max_size, len, idx, ..
    } = &mut self.state
    {
      if self.offset > *max_size {
        return 0;
      }
      *len = self.offset - n;
      *idx = *len;
    }
    self.offset -= n;
    n
  }

  /// Whether [`KvCache::trim`] can remove positions (python
  /// `is_trimmable`): always, except a rotating cache that has wrapped.
  pub fn is_trimmable(&self) -> bool {
    match self.state {
      State::Rotating { max_size, .. } => self.offset < max_size,
      // python: `ArraysCache` has no `trim`; `CacheList` is trimmable when
      // all its caches are.
      State::Arrays(_) => false,
      State::List(ref l) => l.iter().all(KvCache::is_trimmable),
      _ => true,
    }
  }

  /// The valid cached `(keys, values)`, in temporal order (python
  /// `cache.state`), for saving prompt caches. Quantized caches return
  /// them dequantized.
  pub fn state(&self) -> Result<Option<(Array, Array)>> {
    match &self.state {
      State::Standard { buf: Some(b) } => Ok(Some(b.head(self.offset)?)),
      State::Chunked {
        start,
        buf: Some(b),
        ..
      } => Ok(Some(b.head(self.offset - start)?)),
      State::Rotating {
        keep,
        len,
        idx,
        buf: Some(b),
        ..
      } => Ok(Some((
        temporal_order(&b.keys, *keep, *len, *idx)?,
        temporal_order(&b.values, *keep, *len, *idx)?,
      ))),
      State::Quantized {
        params,
        buf: Some(b),
      } => {
        let dq = |t: &[Array]| {
          let t = quantized_view(t, self.offset)?;
          dequantize_triple(&t, params, t[1].dtype())
        };
        Ok(Some((dq(&b.keys)?, dq(&b.values)?)))
      }
      _ => Ok(None),
    }
  }

  /// Restore from saved `(keys, values)` (`[B, H, T, D]`, temporal order)
  /// with `offset` positions seen; a quantized cache quantizes them.
  pub fn set_state(&mut self, keys: Array, values: Array, offset: i32) -> Result<()> {
    KvCache::check_kv(&keys, &values)?;
    let n = capacity(&keys);
    self.offset = offset;
    match &mut self.state {
      State::Standard { buf } | State::Chunked { buf, .. } => {
        *buf = Some(Dense { keys, values });
      }
      State::Rotating { len, idx, buf, .. } => {
        *len = n;
        *idx = n;
        *buf = Some(Dense { keys, values });
      }
      State::Quantized { params, buf } => {
        let q = *params;
        let quant =
          |a: &Array| ops::quantize(a, Some(q.group_size), Some(q.bits), q.mode.as_str(), None);
        *buf = Some(Packed {
          keys: quant(&keys)?,
          values: quant(&values)?,
        });
      }
      State::Arrays(_) | State::List(_) | State::Pass => {
        return Err(Error::InvalidArgument(format!(
          "{} holds no keys/values to restore",
          self.class_name()
        )));
      }
    }
    Ok(())
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
    let dense = || -> Result<(StateNode, StateNode)> {
      Ok(match self.state()? {
        Some((k, v)) => (S::Array(k), S::Array(v)),
        None => (S::None, S::None),
      })
    };
    Ok(match &self.state {
      State::Rotating { max_size, keep, .. } => {
        let kv = self.state()?;
        let n = kv.as_ref().and_then(|(k, _)| k.dim(2)).unwrap_or(0);
        let (k, v) = match kv {
          Some((k, v)) => (Some(k), Some(v)),
          None => (None, None),
        };
        S::List(vec![
          opt(k),
          opt(v),
          int(self.offset),
          int(*keep),
          int(*max_size),
          int(n),
        ])
      }
      State::Quantized { params, buf } => {
        let view = |t: Option<&Vec<Array>>| -> Result<StateNode> {
          Ok(match t {
            Some(t) => S::List(
              quantized_view(t, self.offset)?
                .into_iter()
                .map(S::Array)
                .collect(),
            ),
            None => S::None,
          })
        };
        S::List(vec![
          view(buf.as_ref().map(|b| &b.keys))?,
          view(buf.as_ref().map(|b| &b.values))?,
          int(self.offset),
          int(params.group_size),
          int(params.bits),
        ])
      }
      State::Chunked { chunk, start, .. } => {
        let (k, v) = dense()?;
        S::List(vec![k, v, int(self.offset), int(*chunk), int(*start)])
      }
      State::Standard { .. } => {
        let (k, v) = dense()?;
        S::List(vec![k, v, int(self.offset)])
      }
      State::Pass => {
        return Err(Error::InvalidArgument(
          "a pass-through cache (cache=None) has no state to save".into(),
        ));
      }
      State::Arrays(a) => a.to_state(),
      // python `CacheList.state`: `[(c.state, type(c).__name__), ...]`.
      State::List(l) => S::List(
        l.iter()
          .map(|c| Ok(S::List(vec![c.to_state()?, S::Str(c.class_name().into())])))
          .collect::<Result<Vec<_>>>()?,
      ),
    })
  }

  /// Rebuild a cache from mlx-lm's class name and `cache.state` tree (the
  /// inverse of [`KvCache::to_state`], also accepting mlx-lm's full
  /// buffers and its `ConcatenateKVCache`). Errors name what is wrong.
  pub fn from_state(class: &str, state: StateNode) -> Result<KvCache> {
    if matches!(class, "ArraysCache" | "MambaCache" | "CacheList") {
      return LayerCache::from_state(class, state).map(KvCache::from_layer);
    }
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
    let get_dense = || -> Result<Option<Dense>> {
      let arr = |i: usize, what: &str| -> Result<Option<Array>> {
        match &items[i] {
          StateNode::Array(a) => Ok(Some(a.clone())),
          StateNode::None => Ok(None),
          _ => Err(bad(&format!("{what} must be an array or None"))),
        }
      };
      match (arr(0, "keys")?, arr(1, "values")?) {
        (Some(k), Some(v))
          if k.ndim() == 4 && v.ndim() == 4 && k.shape()[..3] == v.shape()[..3] =>
        {
          Ok(Some(Dense { keys: k, values: v }))
        }
        (None, None) => Ok(None),
        _ => Err(bad(
          "keys/values must both be [B, heads, T, D] arrays (same B, heads, T) or both None",
        )),
      }
    };
    match class {
      "KVCache" | "ConcatenateKVCache" => {
        need(if class == "KVCache" { 3 } else { 2 })?;
        let buf = get_dense()?;
        let cap = buf.as_ref().map(|b| capacity(&b.keys)).unwrap_or(0);
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
        Ok(KvCache {
          offset,
          state: State::Standard { buf },
        })
      }
      "RotatingKVCache" => {
        need(6)?;
        let buf = get_dense()?;
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
        c.offset = offset;
        if let Some(b) = buf {
          let n = capacity(&b.keys);
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
            let m = capacity(&a);
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
          c.set_state(order(&b.keys)?, order(&b.values)?, offset)?;
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
        let packed = match (trip(0, "keys")?, trip(1, "values")?) {
          (Some(qk), Some(qv)) => {
            let cap = capacity(&qk[0]);
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
            Some(Packed {
              keys: qk,
              values: qv,
            })
          }
          (None, None) => None,
          _ => return Err(bad("keys and values must both be present or both None")),
        };
        if let State::Quantized { buf, .. } = &mut c.state {
          *buf = packed;
        }
        c.offset = offset;
        Ok(c)
      }
      "ChunkedKVCache" => {
        need(5)?;
        let buf = get_dense()?;
        let (offset, chunk, start) = (
          get_int(2, "offset")?,
          get_int(3, "chunk_size")?,
          get_int(4, "start_position")?,
        );
        if chunk <= 0 {
          return Err(bad(&format!("chunk_size must be positive, got {chunk}")));
        }
        let cap = buf.as_ref().map(|b| capacity(&b.keys)).unwrap_or(0);
        if start < 0 || offset < start || (buf.is_some() && offset - start > cap) {
          return Err(bad(&format!(
            "offset {offset} / start_position {start} do not fit {cap} stored positions"
          )));
        }
        Ok(KvCache {
          offset,
          state: State::Chunked { chunk, start, buf },
        })
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
      .field("kind", &self.kind())
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

  /// `KvCache::none()` (python `cache=None`): keys and values come back
  /// as given, twice in a row, with nothing kept and the offset at 0.
  #[test]
  fn none_cache_passes_through() {
    let key = mlxrs_core::random::key(3).unwrap();
    let x =
      mlxrs_core::random::normal(&[2, 2, 5, 8], Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap();
    let y = ops::multiply(&x, &Array::scalar(2.0f32)).unwrap();
    let mut c = KvCache::none();
    for _ in 0..2 {
      let (mut k, mut v) = c.update_and_fetch(&x, &y).unwrap();
      assert_eq!(k.shape(), vec![2, 2, 5, 8]);
      let mut want_k = x.clone();
      let mut want_v = y.clone();
      assert_eq!(k.to_vec::<f32>().unwrap(), want_k.to_vec::<f32>().unwrap());
      assert_eq!(v.to_vec::<f32>().unwrap(), want_v.to_vec::<f32>().unwrap());
      assert_eq!(c.offset, 0);
    }
    assert_eq!(c.class_name(), "None");
    assert_eq!(c.nbytes(), 0);
    assert!(c.held_arrays().is_empty());
    assert!(c.state().unwrap().is_none());
    let Err(e) = c.to_state() else {
      panic!("a pass-through cache has no state to save");
    };
    let e = e.to_string();
    assert!(e.contains("no state"), "{e}");
    assert!(c.set_state(x.clone(), y.clone(), 5).is_err());
  }

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

  fn kv(t: i32, d: i32) -> (Array, Array) {
    let n = (2 * t * d) as usize;
    let k: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let v: Vec<f32> = (0..n).map(|i| ((i % 11) as f32 - 5.0) / 5.0).collect();
    (
      Array::from_slice(&k, &[1, 2, t, d]).unwrap(),
      Array::from_slice(&v, &[1, 2, t, d]).unwrap(),
    )
  }

  /// Each class keeps its own state: a quantized cache restored from dense
  /// keys/values stores them quantized (its state reads back within the
  /// 8-bit step), conversions only exist where mlx-lm has them, and a
  /// wrapped rotating cache cannot be trimmed.
  #[test]
  fn states_stay_per_class() {
    let (k, v) = kv(5, 64);
    let mut q = KvCache::quantized(64, 8).unwrap();
    q.set_state(k.clone(), v.clone(), 5).unwrap();
    assert_eq!(q.class_name(), "QuantizedKVCache");
    let (mut sk, _) = q.state().unwrap().unwrap();
    let mut want = k.clone();
    let d = sk
      .to_vec::<f32>()
      .unwrap()
      .iter()
      .zip(want.to_vec::<f32>().unwrap())
      .map(|(a, b)| (a - b).abs())
      .fold(0f32, f32::max);
    // 8 bits over a [-1, 1] range: one step is 2/255.
    assert!(d <= 2.0 / 255.0, "{d}");

    let rot = KvCache::new(KvCacheKind::Rotating {
      max_size: 4,
      keep: 0,
    });
    assert!(rot.to_quantized(64, 8).is_err());
    assert!(KvCache::chunked(2).unwrap().to_quantized(64, 8).is_err());
    assert!(q.to_quantized(64, 8).is_err());

    let mut rot = rot;
    rot.update_and_fetch(&k, &v).unwrap();
    assert_eq!((rot.offset, rot.size()), (5, 4));
    assert!(!rot.is_trimmable());
    assert_eq!(rot.trim(1), 0);

    let mut std_c = KvCache::standard();
    std_c.update_and_fetch(&k, &v).unwrap();
    let c = std_c.to_quantized(64, 8).unwrap();
    assert_eq!((c.class_name(), c.offset), ("QuantizedKVCache", 5));
    assert_eq!(std_c.trim(2), 2);
    assert_eq!(std_c.state().unwrap().unwrap().0.shape(), vec![1, 2, 3, 64]);
  }
}
