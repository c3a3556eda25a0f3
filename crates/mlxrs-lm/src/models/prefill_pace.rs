//! How far a long quantized prefill may run ahead of the GPU (no Python
//! twin: mlx-lm builds and queues a prefill chunk's whole graph at once).
//!
//! On a GPU, from `MLXRS_GPU_DEQUANT_ROWS` rows (prefill) a quantized
//! matrix is multiplied as `x @ dequantize(w).T`
//! ([`mlxrs_core::ops::quantized_matmul_t`]): one dense copy of the matrix
//! per call, alive until the GPU has run its matmul. The host encodes a
//! chunk's layers much faster than the GPU runs them, so without a bound
//! nearly every layer's dense copies are alive at once: +1.2-1.8 GB of peak
//! memory at a 2048-token Llama-3.2-1B 4-bit prefill on an H100
//! (docs/performance.md, session 15), about the model's bf16 size, the
//! memory quantization is there to save. [`PrefillPace`] queues each
//! layer's output as it is built and, once more than
//! `MLXRS_PREFILL_LAYERS_AHEAD` layers (default 2; 0: no bound) are
//! queued, waits for the oldest, so at most that many layers' dense copies
//! are alive while the GPU stays busy.

use std::collections::VecDeque;

use mlxrs_core::{Array, Device, Result, ops};

use crate::model::LanguageModel;

/// Layers queued ahead of the one being waited for (`MLXRS_PREFILL_LAYERS_AHEAD`,
/// read once; default 2; 0 turns the bound off; a value that is not a
/// non-negative integer reads as the default).
fn layers_ahead() -> usize {
  static AHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
  *AHEAD.get_or_init(|| {
    std::env::var("MLXRS_PREFILL_LAYERS_AHEAD")
      .ok()
      .and_then(|v| v.trim().parse().ok())
      .unwrap_or(2)
  })
}

/// Whether `model` has affine-quantized matrices (a `scales` tensor).
fn has_quantized_weights(model: &dyn LanguageModel) -> bool {
  let mut found = false;
  model.visit(&mut |name, _| found |= name.ends_with(".scales"));
  found
}

/// Layer-by-layer queueing of a forward pass over `[B, T, hidden]` inputs
/// (see the module docs).
pub(crate) struct PrefillPace {
  queued: VecDeque<Array>,
  ahead: usize,
}

impl PrefillPace {
  /// A pace for a forward pass of `model` over `h` when its quantized
  /// matrices take the dense GPU path: the default stream is a GPU's, more
  /// than one position per row (a prefill, not a decode step), at least
  /// [`ops::gpu_dequant_rows`] rows, and no function transformation
  /// tracing `h` (a gradient keeps what it needs anyway, and evaluating
  /// inside it would be wrong); `None` otherwise.
  pub(crate) fn for_input(model: &dyn LanguageModel, h: &Array) -> Option<PrefillPace> {
    let ahead = layers_ahead();
    let s = h.shape();
    let min_rows = ops::gpu_dequant_rows();
    if ahead == 0 || s.len() != 3 || s[1] < 2 || min_rows <= 0 || h.is_tracer() {
      return None;
    }
    if (s[0] as i64) * (s[1] as i64) < min_rows || !Device::default_is_gpu() {
      return None;
    }
    has_quantized_weights(model).then(|| PrefillPace {
      queued: VecDeque::new(),
      ahead,
    })
  }

  /// Layer output `h` is built: queue it, and wait for the oldest queued
  /// output once more than the allowed number are in flight.
  pub(crate) fn layer_done(&mut self, h: &Array) -> Result<()> {
    mlxrs_core::async_eval(std::slice::from_ref(h))?;
    self.queued.push_back(h.clone());
    if self.queued.len() > self.ahead {
      if let Some(oldest) = self.queued.pop_front() {
        mlxrs_core::eval(&[oldest])?;
      }
    }
    Ok(())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// The queue never holds more than `ahead` outputs, the waited-for ones
  /// leave it oldest first, and the chain's value is what it is unpaced.
  #[test]
  fn keeps_at_most_ahead_queued() -> Result<()> {
    let mut pace = PrefillPace {
      queued: VecDeque::new(),
      ahead: 2,
    };
    let mut h = ops::ones(&[1, 4, 8], mlxrs_core::Dtype::Float32)?;
    let mut plain = h.clone();
    for i in 0..5 {
      let (a, b) = (Array::scalar(1.5f32), Array::scalar(i as f32));
      h = ops::add(&ops::multiply(&h, &a)?, &b)?;
      plain = ops::add(&ops::multiply(&plain, &a)?, &b)?;
      pace.layer_done(&h)?;
      assert_eq!(pace.queued.len(), (i + 1).min(2));
      assert_eq!(pace.queued.back().map(Array::id), Some(h.id()));
    }
    assert_eq!(h.to_vec::<f32>()?, plain.to_vec::<f32>()?);
    Ok(())
  }
}
