//! Tensor parallelism: one model split over the ranks of an MLX distributed
//! group (python mlx-lm `Model.shard(group)`, built on mlx.nn's
//! `shard_linear` / `AllToShardedLinear` / `ShardedToAllLinear`).
//!
//! Megatron-style split of every decoder layer, as mlx-lm does it:
//!
//! - `q_proj`, `k_proj`, `v_proj`, `gate_proj`, `up_proj` are
//!   *all-to-sharded*: rank `r` of `N` keeps rows `[r * out/N, (r+1) *
//!   out/N)` of the weight (and of a quantized checkpoint's scales / biases,
//!   and of the layer's bias), so it computes its own heads / hidden
//!   features from the full input;
//! - `o_proj`, `down_proj` are *sharded-to-all*: rank `r` keeps the matching
//!   column slice, and the layer sums its partial output over the group
//!   (`all_sum`) before adding the bias, which every rank holds whole;
//! - the head counts (`num_attention_heads`, `num_key_value_heads`) and the
//!   hidden sizes (`intermediate_size`, `moe_intermediate_size`) of the
//!   config are divided by `N`, `head_dim` made explicit;
//! - MoE experts (`switch_mlp.{gate,up,down}_proj`, stacked `[E, out, in]`)
//!   are split the same way on each expert's hidden features, as mlx-lm's
//!   `shard_inplace` does; the router stays whole on every rank.
//!
//! Embeddings, norms and the LM head stay replicated (as in mlx-lm).
//!
//! Instead of a `shard` method per architecture, the split is a rule on
//! parameter names applied to the checkpoint before
//! [`LanguageModel::load`](crate::LanguageModel::load): each rank builds the
//! model from the divided config and keeps only its slices of the weight
//! map, and the loader marks the sharded-to-all layers through
//! [`Weights::sharded_to_all`]. So the model files need no change, and a
//! rank never holds the other ranks' slices after loading.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use serde_json::Value;

/// Model types whose layers follow the naming the split rule expects and
/// whose tensor-parallel output was checked against one process.
pub const TENSOR_PARALLEL_MODEL_TYPES: &[&str] = &[
  "llama",
  "mistral",
  "qwen2",
  "qwen3",
  "qwen3_moe",
  "mixtral",
  "gemma2",
  "gpt_oss",
  "deepseek_v3",
];

/// Layers split by output rows (python `AllToShardedLinear`).
pub const ALL_TO_SHARDED: &[&str] = &[
  "q_proj",
  "k_proj",
  "v_proj",
  "gate_proj",
  "up_proj",
  "q_b_proj",
];

/// Per-head stacked projections (`[heads, ...]`) split on the head axis:
/// DeepSeek-V3's `embed_q` / `unembed_out` (its `kv_b_proj` pre-split per
/// head; python `x[sh : sh + num_heads]` in `DeepseekV3Model.shard`).
pub const PER_HEAD: &[&str] = &["embed_q", "unembed_out"];

/// Layers split by input columns whose output is summed over the group
/// (python `ShardedToAllLinear`).
pub const SHARDED_TO_ALL: &[&str] = &["o_proj", "down_proj"];

/// This process's place in a tensor-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorShard {
  /// This rank (`0..size`).
  pub rank: i32,
  /// The group size.
  pub size: i32,
}

impl TensorShard {
  /// A checked shard position.
  pub fn new(rank: i32, size: i32) -> Result<TensorShard> {
    if size < 1 || rank < 0 || rank >= size {
      return Err(Error::InvalidArgument(format!(
        "tensor parallel: rank {rank} is not in a group of {size}"
      )));
    }
    Ok(TensorShard { rank, size })
  }
}

fn int_field(cfg: &Value, k: &str) -> Option<i64> {
  cfg.get(k).and_then(Value::as_i64)
}

/// The config one rank builds its model from (python `shard` dividing
/// `n_heads` / `n_kv_heads` and the linear layers' widths): head counts and
/// hidden sizes divided by `size`, `head_dim` explicit. A count that `size`
/// does not divide, or an unsupported architecture, is an error naming it.
pub fn shard_config(config: &Value, size: i32) -> Result<Value> {
  let mt = config
    .get("model_type")
    .and_then(Value::as_str)
    .unwrap_or("?");
  if !TENSOR_PARALLEL_MODEL_TYPES.contains(&mt) {
    return Err(Error::InvalidArgument(format!(
      "tensor parallel: model type {mt:?} has no shard rule; supported: {}",
      TENSOR_PARALLEL_MODEL_TYPES.join(", ")
    )));
  }
  let n = i64::from(size);
  if n < 1 {
    return Err(Error::InvalidArgument(format!(
      "tensor parallel: bad group size {size}"
    )));
  }
  let mut out = config.clone();
  let obj = out
    .as_object_mut()
    .ok_or_else(|| Error::InvalidArgument("config.json is not an object".into()))?;
  let heads = int_field(config, "num_attention_heads")
    .ok_or_else(|| Error::InvalidArgument("config.json has no num_attention_heads".into()))?;
  let kv = int_field(config, "num_key_value_heads").unwrap_or(heads);
  let hidden = int_field(config, "hidden_size")
    .ok_or_else(|| Error::InvalidArgument("config.json has no hidden_size".into()))?;
  let head_dim =
    int_field(config, "head_dim").unwrap_or(if heads > 0 { hidden / heads } else { 0 });
  let mut divide = |key: &str, v: i64, what: &str| -> Result<()> {
    if v <= 0 || v % n != 0 {
      return Err(Error::InvalidArgument(format!(
        "tensor parallel over {n} ranks: {what} {key} = {v} is not divisible by {n}"
      )));
    }
    obj.insert(key.to_string(), Value::from(v / n));
    Ok(())
  };
  divide("num_attention_heads", heads, "the attention head count")?;
  divide("num_key_value_heads", kv, "the key/value head count")?;
  if let Some(v) = int_field(config, "intermediate_size") {
    divide("intermediate_size", v, "the MLP width")?;
  }
  if let Some(v) = int_field(config, "moe_intermediate_size") {
    divide("moe_intermediate_size", v, "the expert MLP width")?;
  }
  obj.insert("head_dim".into(), Value::from(head_dim));
  Ok(out)
}

/// How the checkpoint tensor `name` with `ndim` dimensions is split over
/// the ranks: `Some(axis)`, or `None` when every rank keeps it whole.
pub fn split_axis(name: &str, ndim: usize) -> Option<usize> {
  let mut parts = name.rsplit('.');
  let param = parts.next()?;
  let layer = parts.next()?;
  if ALL_TO_SHARDED.contains(&layer) {
    match param {
      "weight" | "scales" | "biases" if ndim >= 2 => Some(ndim - 2),
      "bias" if ndim >= 1 => Some(ndim - 1),
      _ => None,
    }
  } else if PER_HEAD.contains(&layer) {
    match param {
      "weight" | "scales" | "biases" if ndim >= 3 => Some(0),
      _ => None,
    }
  } else if layer == "self_attn" && param == "sinks" && ndim == 1 {
    // gpt-oss: one learned attention sink per query head, split with the
    // heads (python `shard_inplace(self_attn.sinks, "all-to-sharded")`).
    Some(0)
  } else if SHARDED_TO_ALL.contains(&layer) {
    match param {
      "weight" | "scales" | "biases" if ndim >= 2 => Some(ndim - 1),
      _ => None,
    }
  } else {
    None
  }
}

/// Rank `shard.rank`'s slices of a (sanitized) checkpoint map, per the rules
/// of the [module docs](self). Each slice is a fresh array, evaluated here,
/// so the full tensor it came from is released as soon as it is dropped. A
/// dimension the group size does not divide is an error naming the tensor
/// (for a quantized layer split by columns, that includes its scale
/// groups).
pub fn shard_weights(
  weights: HashMap<String, Array>,
  shard: TensorShard,
) -> Result<HashMap<String, Array>> {
  let n = shard.size;
  let mut out = HashMap::with_capacity(weights.len());
  let mut names: Vec<String> = weights.keys().cloned().collect();
  names.sort();
  let mut weights = weights;
  for name in names {
    let Some(a) = weights.remove(&name) else {
      continue;
    };
    let shape = a.shape();
    let Some(axis) = split_axis(&name, shape.len()) else {
      out.insert(name, a);
      continue;
    };
    if n == 1 {
      out.insert(name, a);
      continue;
    }
    let dim = shape[axis];
    if dim % n != 0 {
      let hint = if name.ends_with(".scales") || name.ends_with(".biases") {
        " (quantization groups: each rank needs whole groups of the layer's input features)"
      } else {
        ""
      };
      return Err(Error::InvalidArgument(format!(
        "tensor parallel over {n} ranks: {name} {shape:?} axis {axis} ({dim}) is not divisible by {n}{hint}"
      )));
    }
    let part = dim / n;
    let start = f64::from(shard.rank * part);
    let idx = ops::arange(start, start + f64::from(part), 1.0, Dtype::Int32)?;
    let mut s = ops::take_axis(&a, &idx, axis as i32)?;
    drop(a);
    s.eval()?;
    out.insert(name, s);
  }
  Ok(out)
}

/// FNV-1a over what identifies a checkpoint folder: `config.json`'s bytes
/// and the name and size of every `*.safetensors` file.
fn model_fingerprint(dir: &std::path::Path) -> Result<u32> {
  let mut h: u32 = 0x811c_9dc5;
  let mut eat = |bytes: &[u8]| {
    for &b in bytes {
      h ^= u32::from(b);
      h = h.wrapping_mul(0x0100_0193);
    }
  };
  let config = std::fs::read(dir.join("config.json"))
    .map_err(|e| Error::InvalidArgument(format!("{}: config.json: {e}", dir.display())))?;
  eat(&config);
  let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", dir.display())))?
    .filter_map(|e| {
      let e = e.ok()?;
      let name = e.file_name().into_string().ok()?;
      name
        .ends_with(".safetensors")
        .then(|| Some((name, e.metadata().ok()?.len())))?
    })
    .collect();
  files.sort();
  for (name, len) in files {
    eat(name.as_bytes());
    eat(&len.to_le_bytes());
  }
  Ok(h)
}

/// Check, collectively over the global distributed group, that every rank
/// is about to load the same checkpoint (`config.json` and the weight
/// files' names and sizes agree): a mismatch would otherwise show as a hang
/// or garbage in the first collective. Every rank must call it at the same
/// point; with one process it checks nothing. python mlx-lm has no such
/// check.
pub fn check_same_model(dir: &std::path::Path) -> Result<()> {
  use mlxrs_core::distributed::all_sum;
  let fp = model_fingerprint(dir)?;
  // 16-bit halves, so the sums of up to 32768 ranks cannot overflow.
  let mine = Array::from_slice(&[(fp >> 16) as i32, (fp & 0xffff) as i32, 1], &[3])?;
  let sums = all_sum(&mine, None)?.to_vec::<i32>()?;
  let n = sums[2].max(1);
  let differs = sums[0] != ((fp >> 16) as i32) * n || sums[1] != ((fp & 0xffff) as i32) * n;
  let flag = Array::from_slice(&[differs as i32], &[1])?;
  let bad = all_sum(&flag, None)?.to_vec::<i32>()?[0];
  if bad > 0 {
    return Err(Error::InvalidArgument(format!(
      "the ranks load different models: {bad} of {n} rank(s) see model files ({}: config.json and the *.safetensors names and sizes) that differ from the others'; every rank needs the same checkpoint",
      dir.display()
    )));
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn config_divides_heads_and_widths() {
    let c = serde_json::json!({"model_type": "llama", "hidden_size": 64,
      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64});
    let s = shard_config(&c, 2).unwrap();
    assert_eq!(s["num_attention_heads"], 2);
    assert_eq!(s["num_key_value_heads"], 1);
    assert_eq!(s["intermediate_size"], 32);
    assert_eq!(s["head_dim"], 16);
    let e = shard_config(&c, 4).unwrap_err().to_string();
    assert!(
      e.contains("num_key_value_heads = 2 is not divisible by 4"),
      "{e}"
    );
    let e = shard_config(&serde_json::json!({"model_type": "phi3"}), 2)
      .unwrap_err()
      .to_string();
    assert!(e.contains("no shard rule"), "{e}");
  }

  #[test]
  fn split_rules_by_name() {
    assert_eq!(
      split_axis("model.layers.0.self_attn.q_proj.weight", 2),
      Some(0)
    );
    assert_eq!(
      split_axis("model.layers.0.self_attn.q_proj.bias", 1),
      Some(0)
    );
    assert_eq!(
      split_axis("model.layers.0.self_attn.o_proj.scales", 2),
      Some(1)
    );
    assert_eq!(split_axis("model.layers.0.self_attn.o_proj.bias", 1), None);
    assert_eq!(
      split_axis("model.layers.0.mlp.switch_mlp.up_proj.weight", 3),
      Some(1)
    );
    assert_eq!(
      split_axis("model.layers.0.mlp.switch_mlp.down_proj.weight", 3),
      Some(2)
    );
    assert_eq!(split_axis("model.layers.0.mlp.gate.weight", 2), None);
    assert_eq!(split_axis("model.embed_tokens.weight", 2), None);
  }

  #[test]
  fn weights_slices_are_the_rank_rows_and_columns() {
    let w =
      Array::from_slice::<f32>(&(0..8).map(|v| v as f32).collect::<Vec<_>>(), &[2, 4]).unwrap();
    let mut m = HashMap::new();
    m.insert("l.q_proj.weight".to_string(), w.clone());
    m.insert("l.o_proj.weight".to_string(), w);
    let out = shard_weights(m, TensorShard::new(1, 2).unwrap()).unwrap();
    let q = out["l.q_proj.weight"].clone().to_vec::<f32>().unwrap();
    assert_eq!(q, vec![4.0, 5.0, 6.0, 7.0]);
    let o = out["l.o_proj.weight"].clone().to_vec::<f32>().unwrap();
    assert_eq!(o, vec![2.0, 3.0, 6.0, 7.0]);
    let mut bad = HashMap::new();
    bad.insert(
      "l.q_proj.weight".to_string(),
      Array::from_slice::<f32>(&[0.0; 3], &[3, 1]).unwrap(),
    );
    let e = shard_weights(bad, TensorShard::new(0, 2).unwrap())
      .unwrap_err()
      .to_string();
    assert!(e.contains("l.q_proj.weight"), "{e}");
  }
}
