//! Pipeline parallelism: the decoder layers of one model split over the
//! ranks of an MLX distributed group (python mlx-lm's `PipelineMixin`,
//! `model.model.pipeline(group)`, used by `mlx_lm.generate --pipeline`
//! under `mlx.launch`).
//!
//! As in mlx-lm the layers are split in reverse order: the LAST rank
//! (`size - 1`) holds the first layers and rank 0 the last ones. A forward
//! pass on every rank:
//!
//! 1. embeds the tokens (every rank holds the embedding table);
//! 2. unless it is the last rank, replaces that input by the activations
//!    received from rank `r + 1` (`recv_like`);
//! 3. runs its own layers (with its own KV caches);
//! 4. unless it is rank 0, sends its output to rank `r - 1`;
//! 5. all-gathers the outputs and keeps rank 0's, so that every rank has the
//!    final hidden state, applies the norm and the head, and samples the
//!    same token.
//!
//! Each rank's share of layers is `L / N`, one more for the ranks below
//! `L % N`. (mlx-lm 0.32 computes the start of a rank's range from its own
//! share, so with `L % N != 0` its ranges overlap; here they are
//! contiguous and cover every layer once.)
//!
//! As for tensor parallelism ([`crate::shard`]), the split works on the
//! config and the parameter names before `Module::load`: a rank builds a
//! model of only its `end - start` layers ([`pipeline_config`]) and keeps
//! only their tensors, renumbered from 0 ([`pipeline_weights`]); so a rank
//! never holds another rank's layers. Embeddings, final norm and LM head
//! are replicated (as in mlx-lm).

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, distributed as dist, ops};
use serde_json::Value;

/// Model types whose forward pass runs a pipeline stage (the Llama-shaped
/// decoder, [`crate::models::llama`]) and whose pipeline output was checked
/// against one process (llama, qwen3; mistral and qwen2 share the code).
pub const PIPELINE_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// This process's stage of a pipeline: rank, group size and its range of
/// the checkpoint's decoder layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStage {
  /// This rank (`0..size`); rank 0 holds the last layers.
  pub rank: i32,
  /// The group size.
  pub size: i32,
  /// First layer (checkpoint index) of this rank.
  pub start: i32,
  /// One past this rank's last layer.
  pub end: i32,
}

impl PipelineStage {
  /// The stage of `rank` of `size` for a model of `num_layers` layers.
  /// Errors when a rank would get no layer.
  pub fn new(rank: i32, size: i32, num_layers: i32) -> Result<PipelineStage> {
    if size < 1 || rank < 0 || rank >= size {
      return Err(Error::InvalidArgument(format!(
        "pipeline rank {rank} of {size} is not a valid position"
      )));
    }
    if num_layers < size {
      return Err(Error::InvalidArgument(format!(
        "a pipeline over {size} ranks needs at least {size} layers; the model has {num_layers}"
      )));
    }
    let share = |r: i32| num_layers / size + i32::from(r < num_layers % size);
    // Ranks above this one hold the earlier layers.
    let start: i32 = (rank + 1..size).map(share).sum();
    Ok(PipelineStage {
      rank,
      size,
      start,
      end: start + share(rank),
    })
  }

  /// Number of layers this rank runs.
  pub fn layers(&self) -> i32 {
    self.end - self.start
  }

  /// Run this stage: `h` is the embedded input (used on the last rank, and
  /// as the shape / dtype of the activations received elsewhere), `layers`
  /// runs this rank's layers. Returns rank 0's output on every rank.
  /// Ranks other than 0 evaluate their layers' output here (to send it).
  pub fn forward(&self, h: Array, layers: impl FnOnce(Array) -> Result<Array>) -> Result<Array> {
    let mut h = h;
    if self.rank < self.size - 1 {
      h = dist::recv_like(&h, self.rank + 1, None)?;
    }
    let mut h = layers(h)?;
    if self.rank != 0 {
      h = dist::send(&h, self.rank - 1, None)?;
      // Send now: a caller may evaluate only the KV caches (the prompt
      // prefill does), which do not depend on the send, while the next
      // rank's caches wait on its recv. (mlx-lm makes the last cache depend
      // on the send instead, `mx.depends`.)
      h.eval()?;
    }
    let batch = h.dim(0).unwrap_or(1);
    let all = dist::all_gather(&h, None)?;
    let mut stop = all.shape();
    stop[0] = batch;
    let start = vec![0; stop.len()];
    let strides = vec![1; stop.len()];
    ops::slice(&all, &start, &stop, &strides)
  }
}

/// The config a rank builds its model from: `num_hidden_layers` is the
/// rank's share and `layer_types` (when present) its slice.
pub fn pipeline_config(config: &Value, stage: PipelineStage) -> Result<Value> {
  let mt = config
    .get("model_type")
    .and_then(Value::as_str)
    .unwrap_or("");
  if !PIPELINE_MODEL_TYPES.contains(&mt) {
    return Err(Error::InvalidArgument(format!(
      "model type {mt:?} has no pipeline support (supported: {})",
      PIPELINE_MODEL_TYPES.join(", ")
    )));
  }
  let mut c = config.clone();
  let obj = c
    .as_object_mut()
    .ok_or_else(|| Error::InvalidArgument("config is not a JSON object".into()))?;
  obj.insert("num_hidden_layers".into(), stage.layers().into());
  if let Some(Value::Array(types)) = obj.get("layer_types") {
    let (s, e) = (stage.start as usize, stage.end as usize);
    if types.len() < e {
      return Err(Error::InvalidArgument(format!(
        "layer_types has {} entries, fewer than the layers",
        types.len()
      )));
    }
    let part = Value::Array(types[s..e].to_vec());
    obj.insert("layer_types".into(), part);
  }
  Ok(c)
}

/// The layer index of a decoder-layer tensor name (`model.layers.{i}.…`).
fn layer_index(name: &str) -> Option<(i32, &str)> {
  let rest = name.strip_prefix("model.layers.")?;
  let (i, tail) = rest.split_once('.')?;
  Some((i.parse().ok()?, tail))
}

/// Keep the tensors of this rank's layers, renumbered from 0, and every
/// tensor outside the decoder layers (embeddings, norm, head).
pub fn pipeline_weights(
  weights: HashMap<String, Array>,
  stage: PipelineStage,
) -> HashMap<String, Array> {
  weights
    .into_iter()
    .filter_map(|(k, v)| match layer_index(&k) {
      Some((i, tail)) if (stage.start..stage.end).contains(&i) => {
        Some((format!("model.layers.{}.{tail}", i - stage.start), v))
      }
      Some(_) => None,
      None => Some((k, v)),
    })
    .collect()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn stages_cover_every_layer_once_in_reverse() {
    for (l, n) in [(2, 2), (4, 4), (5, 2), (7, 3), (10, 4)] {
      let st: Vec<PipelineStage> = (0..n)
        .map(|r| PipelineStage::new(r, n, l).unwrap())
        .collect();
      assert_eq!(st[n as usize - 1].start, 0);
      assert_eq!(st[0].end, l);
      for r in 0..n as usize - 1 {
        assert_eq!(st[r + 1].end, st[r].start, "L={l} N={n}");
        assert!(st[r].layers() >= 1);
      }
    }
    assert!(PipelineStage::new(0, 4, 2).is_err());
  }

  #[test]
  fn weights_renumbered() {
    let a = Array::from_slice(&[1f32], &[1]).unwrap();
    let w: HashMap<String, Array> = [
      "model.layers.0.mlp.w",
      "model.layers.1.mlp.w",
      "model.layers.2.mlp.w",
      "model.norm.weight",
    ]
    .iter()
    .map(|k| (k.to_string(), a.clone()))
    .collect();
    let st = PipelineStage::new(0, 2, 3).unwrap(); // rank 0: layers 1..3
    assert_eq!((st.start, st.end), (1, 3));
    let mut keys: Vec<String> = pipeline_weights(w, st).into_keys().collect();
    keys.sort();
    assert_eq!(
      keys,
      [
        "model.layers.0.mlp.w",
        "model.layers.1.mlp.w",
        "model.norm.weight"
      ]
    );
  }
}
