//! Admission control under `--memory-limit-gb` (python `mlx_lm.server`
//! only calls `mx.set_memory_limit`): the server estimates what a row
//! needs (the model's weights plus the KV cache of every row at the batch's
//! final width) and refuses or delays rows that would pass the limit.
//!
//! Why the server does it itself: MLX's `set_memory_limit` is a guideline
//! for graph evaluation. On GPU backends an allocation over it first waits
//! for scheduled work to free memory; on the CPU backend it is not enforced
//! at all (an allocation over the limit succeeds at once; checked with MLX
//! 0.32.4). An allocation fails only when the system itself is out of
//! memory. So a request whose cache would not fit is refused up front with
//! a 400 naming the limit, and a row that fits alone but not beside the
//! running rows waits in the queue until they finish.
//!
//! The estimate counts the weights (every parameter's bytes) and the KV
//! cache, measured per position on a one-token probe in the compute dtype
//! (rotating caches capped at their window). Prefill activations are not
//! counted: `--prefill-step-size` bounds them.

use mlxrs_core::{Array, Result};
use mlxrs_lm::LanguageModel;

/// What rows of the served model need in memory (see the module docs).
#[derive(Debug, Clone)]
pub struct MemoryBudget {
  /// The limit in bytes (`--memory-limit-gb`).
  pub limit: usize,
  /// Bytes of the model's weights.
  pub weights: usize,
  /// Per cache layer: KV bytes per position of one row, and the most
  /// positions the layer keeps (a rotating cache's window).
  per_pos: Vec<(usize, Option<usize>)>,
}

impl MemoryBudget {
  /// Measure `model` (one-token forward of `token` on fresh caches).
  pub fn probe(model: &dyn LanguageModel, limit: usize, token: i32) -> Result<MemoryBudget> {
    let mut weights = 0;
    model.visit(&mut |_, a| weights += a.nbytes());
    let mut caches = model.make_caches(None);
    let x = Array::from_slice(&[token], &[1, 1])?;
    let h = model.hidden(&x, &mut caches)?;
    mlxrs_core::eval(&[h])?;
    let mut per_pos = Vec::with_capacity(caches.len());
    for c in &caches {
      let bytes = match c.state()? {
        Some((k, v)) => {
          mlxrs_core::eval(&[k.clone(), v.clone()])?;
          (k.nbytes() + v.nbytes()) / c.size().max(1) as usize
        }
        None => 0,
      };
      let cap = match c.kind() {
        mlxrs_nn::KvCacheKind::Rotating { max_size, .. } => Some(max_size.max(1) as usize),
        _ => None,
      };
      per_pos.push((bytes, cap));
    }
    Ok(MemoryBudget {
      limit,
      weights,
      per_pos,
    })
  }

  /// KV bytes of `rows` rows holding `width` positions each.
  pub fn kv_bytes(&self, rows: usize, width: usize) -> usize {
    self
      .per_pos
      .iter()
      .map(|&(b, cap)| b.saturating_mul(cap.map_or(width, |c| c.min(width))))
      .fold(0usize, usize::saturating_add)
      .saturating_mul(rows)
  }

  /// Weights plus the KV cache of `rows` rows of `width` positions.
  pub fn need(&self, rows: usize, width: usize) -> usize {
    self.weights.saturating_add(self.kv_bytes(rows, width))
  }

  /// Whether `rows` rows of `width` positions fit the limit.
  pub fn fits(&self, rows: usize, width: usize) -> bool {
    self.need(rows, width) <= self.limit
  }

  /// `Err(message)` when one row of a `prompt`-token prompt generating up
  /// to `max_tokens` tokens cannot fit the limit even alone.
  pub fn check_row(&self, prompt: usize, max_tokens: usize) -> std::result::Result<(), String> {
    let width = prompt.saturating_add(max_tokens);
    if self.fits(1, width) {
      return Ok(());
    }
    let gb = |b: usize| b as f64 / 1e9;
    Err(format!(
      "this request needs about {:.3} GB ({:.3} GB of weights + {:.3} GB of KV cache for {prompt} \
       prompt + {max_tokens} max_tokens positions), over the server's memory limit of {:.3} GB \
       (--memory-limit-gb); send a shorter prompt or a smaller max_tokens",
      gb(self.need(1, width)),
      gb(self.weights),
      gb(self.kv_bytes(1, width)),
      gb(self.limit)
    ))
  }
}
