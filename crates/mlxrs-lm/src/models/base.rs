//! Pieces every architecture shares (mlx-lm's `models/base.py` and the
//! common parts of its `sanitize` / `make_cache`): config checks, the
//! per-layer cache list, expert stacking for MoE checkpoints.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{KvCache, KvCacheKind};

/// Check an attention layout: `hidden_size` positive, `num_hidden_layers`
/// non-negative, query heads a positive multiple of key/value heads.
pub(crate) fn check_heads(
  arch: &str,
  hidden: i32,
  n_heads: i32,
  n_kv: i32,
  layers: i32,
) -> Result<()> {
  if hidden <= 0 || n_heads <= 0 || n_kv <= 0 || n_heads % n_kv != 0 || layers < 0 {
    return Err(Error::InvalidArgument(format!(
      "config ({arch}): num_attention_heads ({n_heads}) must be a positive multiple of \
       num_key_value_heads ({n_kv}), hidden_size ({hidden}) positive and num_hidden_layers \
       ({layers}) non-negative"
    )));
  }
  Ok(())
}

/// MoE config check: `0 < top_k <= experts`.
pub(crate) fn check_moe(arch: &str, experts: i32, top_k: i32) -> Result<()> {
  if experts <= 0 || top_k <= 0 || top_k > experts {
    return Err(Error::InvalidArgument(format!(
      "config ({arch}): experts per token ({top_k}) must be in 1..={experts} (the number of experts)"
    )));
  }
  Ok(())
}

/// Check one cache per layer.
pub(crate) fn check_caches(n_caches: usize, n_layers: usize) -> Result<()> {
  if n_caches != n_layers {
    return Err(Error::InvalidArgument(format!(
      "{n_caches} caches for {n_layers} layers"
    )));
  }
  Ok(())
}

/// Default caches, one per layer (mlx-lm `make_prompt_cache`): standard, or
/// rotating with 4 kept positions under `max_kv_size`.
pub fn default_caches(n_layers: usize, max_kv_size: Option<i32>) -> Vec<KvCache> {
  (0..n_layers)
    .map(|_| match max_kv_size {
      Some(m) => KvCache::new(KvCacheKind::Rotating {
        max_size: m,
        keep: 4,
      }),
      None => KvCache::standard(),
    })
    .collect()
}

/// `a` cut along `axis` at the indices `at` into `N` consecutive parts
/// (python `mx.split(a, at, axis)`): MLX's `Split`, one graph node with `N`
/// outputs where a slice per part would be `N` nodes (a decode step walks
/// every node).
pub(crate) fn split_at<const N: usize>(a: &Array, at: &[i32], axis: i32) -> Result<[Array; N]> {
  ops::split_sections(a, at, axis)?
    .try_into()
    .map_err(|v: Vec<Array>| {
      Error::InvalidArgument(format!(
        "split at {at:?} gave {} parts, expected {N}",
        v.len()
      ))
    })
}

/// `a` cut into two equal halves along its last axis (the gate | up
/// output of a stacked projection), as `split_at(a, &[half], -1)`. For one
/// row (every axis but the last of size 1, a decode step) the row is cut
/// as `[.., 2, half]` instead, so each half is a view with its own row
/// stride: cut along the last axis, a half keeps the row stride of the
/// whole row, MLX's element-wise kernels (the compiled SwiGLU) give their
/// output that stride, and MLX's CUDA matmul then copies that output
/// before the down projection (one copy kernel per layer; a CUDA-graph
/// census of a llama-3.2-1b decode step showed 16 of its 233 kernels were
/// such copies, docs/performance.md). Same values either way.
pub(crate) fn split_halves(a: &Array) -> Result<[Array; 2]> {
  let s = a.shape();
  let n = s.len();
  let last = s.last().copied().unwrap_or(0);
  if last % 2 != 0 {
    return Err(Error::InvalidArgument(format!(
      "cannot halve a last axis of {last} (shape {s:?})"
    )));
  }
  if n >= 2 && s[..n - 1].iter().all(|&d| d == 1) {
    let mut rows = s[..n - 2].to_vec();
    rows.extend([2, last / 2]);
    return split_at(&ops::reshape(a, &rows)?, &[1], -2);
  }
  split_at(a, &[last / 2], -1)
}

/// `a[..., start:stop]` on the last axis.
pub(crate) fn last_axis(a: &Array, start: i32, stop: i32) -> Result<Array> {
  let shape = a.shape();
  let nd = shape.len();
  let mut st = vec![0; nd];
  let mut sp = shape.clone();
  st[nd - 1] = start;
  sp[nd - 1] = stop;
  ops::slice(a, &st, &sp, &vec![1; nd])
}

/// Stack HF per-expert tensors `<prefix>.experts.{e}.<src>.<kind>` into
/// `<prefix>.switch_mlp.<dst>.<kind>` (the `sanitize` loops of mlx-lm's MoE
/// models), for every layer prefix that has expert 0. Missing experts are an
/// error.
pub(crate) fn stack_experts(
  weights: &mut HashMap<String, Array>,
  layer_prefixes: &[String],
  num_experts: i32,
  names: &[(&str, &str)],
) -> Result<()> {
  for p in layer_prefixes {
    for (src, dst) in names {
      for kind in ["weight", "scales", "biases", "bias"] {
        if !weights.contains_key(&format!("{p}.experts.0.{src}.{kind}")) {
          continue;
        }
        let mut parts = Vec::with_capacity(num_experts as usize);
        for e in 0..num_experts {
          let key = format!("{p}.experts.{e}.{src}.{kind}");
          parts.push(weights.remove(&key).ok_or_else(|| {
            Error::InvalidArgument(format!("sanitize: missing expert tensor {key}"))
          })?);
        }
        weights.insert(format!("{p}.switch_mlp.{dst}.{kind}"), ops::stack(&parts)?);
      }
    }
  }
  Ok(())
}

/// Fail, naming the field, when `config` sets `field` to a value other than
/// null or one `ok` accepts: a feature of the checkpoint this implementation
/// (like mlx-lm's) does not compute, which would otherwise be silently
/// ignored.
pub(crate) fn reject_unhandled(
  config: &serde_json::Value,
  arch: &str,
  field: &str,
  ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<()> {
  match config.get(field) {
    None | Some(serde_json::Value::Null) => Ok(()),
    Some(v) if ok(v) => Ok(()),
    Some(v) => Err(Error::InvalidArgument(format!(
      "config.json ({arch}): field {field:?} = {v} is not supported by this architecture"
    ))),
  }
}

/// `config` with `key` set to `value` where it is absent or null (an
/// architecture's default that differs from the shared args struct's).
pub(crate) fn with_default(
  config: &serde_json::Value,
  defaults: &[(&str, serde_json::Value)],
) -> serde_json::Value {
  let mut cfg = config.clone();
  for (k, v) in defaults {
    if cfg.get(*k).is_none_or(serde_json::Value::is_null) {
      cfg[*k] = v.clone();
    }
  }
  cfg
}

/// `a[start:stop]` along `axis` (negative counts from the end).
pub(crate) fn slice_axis(a: &Array, axis: i32, start: i32, stop: i32) -> Result<Array> {
  let shape = a.shape();
  let nd = shape.len();
  let ax = if axis < 0 {
    (axis + nd as i32) as usize
  } else {
    axis as usize
  };
  let mut st = vec![0; nd];
  let mut sp = shape.clone();
  st[ax] = start;
  sp[ax] = stop;
  ops::slice(a, &st, &sp, &vec![1; nd])
}

/// [`stack_experts`] for a `sanitize` that does not know the layer or
/// expert counts (a [`super::decoder::SanitizeFn`]): every
/// `<prefix>.experts.0.<src>.*` of the map names a layer prefix (ending in
/// `.<block>`), and its experts are `0..=` the largest index found there.
pub(crate) fn stack_found_experts(
  weights: &mut HashMap<String, Array>,
  block: &str,
  names: &[(&str, &str)],
) -> Result<()> {
  let mut count: HashMap<String, i32> = HashMap::new();
  let needle = format!(".{block}.experts.");
  for k in weights.keys() {
    if let Some(i) = k.find(&needle) {
      let prefix = &k[..i + needle.len() - ".experts.".len()];
      let rest = &k[i + needle.len()..];
      if let Some(e) = rest.split('.').next().and_then(|e| e.parse::<i32>().ok()) {
        let c = count.entry(prefix.to_string()).or_insert(0);
        *c = (*c).max(e + 1);
      }
    }
  }
  for (prefix, n) in count {
    stack_experts(weights, std::slice::from_ref(&prefix), n, names)?;
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;

  fn values(a: &Array) -> Vec<f32> {
    let mut a = a.clone();
    a.to_vec::<f32>().unwrap()
  }

  /// One row or many, `split_halves` gives the halves `split_at` gives.
  #[test]
  fn split_halves_matches_split_at() {
    for shape in [
      vec![1, 8],
      vec![1, 1, 8],
      vec![3, 8],
      vec![2, 1, 8],
      vec![8],
    ] {
      let n: i32 = shape.iter().product();
      let a = ops::reshape(
        &Array::arange(0.0, n as f64, 1.0, mlxrs_core::Dtype::Float32).unwrap(),
        &shape,
      )
      .unwrap();
      let [g, u] = split_halves(&a).unwrap();
      let [g2, u2] = split_at::<2>(&a, &[4], -1).unwrap();
      let mut half = shape.clone();
      *half.last_mut().unwrap() = 4;
      assert_eq!(g.shape(), half, "{shape:?}");
      assert_eq!(u.shape(), half, "{shape:?}");
      assert_eq!(values(&g), values(&g2), "{shape:?}");
      assert_eq!(values(&u), values(&u2), "{shape:?}");
    }
    let odd = Array::from_slice::<f32>(&[1.0, 2.0, 3.0], &[1, 3]).unwrap();
    assert!(split_halves(&odd).is_err());
  }
}
