//! How far a long prefill may run ahead of the GPU (no Python twin:
//! mlx-lm builds and queues a prefill chunk's whole graph at once).
//!
//! MLX keeps every buffer a queued kernel reads or writes until the GPU has
//! run that kernel. The host builds and encodes a prefill chunk's layers
//! much faster than the GPU runs them, so without a bound nearly every
//! layer's activations are alive at once, and, for a quantized model whose
//! long products take the dense path of
//! [`mlxrs_core::ops::quantized_matmul_t`], every layer's dense copy of its
//! matrices as well: a 2048-token Llama-3.2-1B 4-bit prefill peaked at
//! 4.6-5.1 GB on an H100, more than the bf16 model's 4.9 GB.
//! [`PrefillPace`] queues each layer's output as it is built and, once more
//! than `MLXRS_PREFILL_LAYERS_AHEAD` layers (default 2; 0: no bound) are
//! queued, waits for the oldest, so only that many layers are in flight
//! while the GPU stays busy. Measured on an H100 (docs/performance.md,
//! session 16; 2048-token prompts, peak memory unbounded -> paced, mlx-lm
//! in brackets): llama-3.1-8b bf16 23.95 -> 17.3 GB (19.6-19.8),
//! llama-3.2-1b bf16 4.8-4.9 -> 3.05 GB (3.84), llama-3.2-1b 4-bit
//! 4.6-5.1 -> 1.64-1.69 GB (2.60), llama-3.1-8b 4-bit 21.2 -> 7.0 GB (7.66);
//! prefill speed the same within the rounds' spread, tokens and
//! log-probabilities identical.

use std::collections::VecDeque;

use mlxrs_core::{Array, Device, Result};

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

/// Rows (batch x positions) from which a GPU forward pass is paced.
const MIN_ROWS: i64 = 256;

/// Layer-by-layer queueing of a forward pass over `[B, T, hidden]` inputs
/// (see the module docs); inactive (every call a no-op) where pacing does
/// not apply.
pub(crate) struct PrefillPace {
  queued: VecDeque<Array>,
  /// Layers allowed in flight; 0 when inactive.
  ahead: usize,
}

impl PrefillPace {
  /// The pace of a forward pass over `h`: active on a GPU (the default
  /// stream is a GPU's) for more than one position per row (a prefill,
  /// not a decode step), at least 256 rows, and no function transformation
  /// tracing `h` (a gradient keeps what it needs anyway, and evaluating
  /// inside it would be wrong); inactive otherwise.
  pub(crate) fn for_input(h: &Array) -> PrefillPace {
    let s = h.shape();
    let applies = s.len() == 3
      && s[1] >= 2
      && (s[0] as i64) * (s[1] as i64) >= MIN_ROWS
      && !h.is_tracer()
      && Device::default_is_gpu();
    PrefillPace {
      queued: VecDeque::new(),
      ahead: if applies { layers_ahead() } else { 0 },
    }
  }

  /// An inactive pace (pipeline stages, whose evaluation waits on other
  /// processes).
  pub(crate) fn off() -> PrefillPace {
    PrefillPace {
      queued: VecDeque::new(),
      ahead: 0,
    }
  }

  /// Layer output `h` is built: when active, queue it, and wait for the
  /// oldest queued output once more than the allowed number are in flight.
  pub(crate) fn layer_done(&mut self, h: &Array) -> Result<()> {
    if self.ahead == 0 {
      return Ok(());
    }
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
  use mlxrs_core::ops;

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

  /// Off the GPU, for a decode step and for too few rows, the pace is
  /// inactive: nothing is queued.
  #[test]
  fn inactive_where_it_does_not_apply() -> Result<()> {
    let x = ops::ones(&[1, 512, 8], mlxrs_core::Dtype::Float32)?;
    let one = ops::ones(&[300, 1, 8], mlxrs_core::Dtype::Float32)?;
    let few = ops::ones(&[1, 100, 8], mlxrs_core::Dtype::Float32)?;
    for (h, gpu_only) in [(&x, true), (&one, false), (&few, false)] {
      let mut pace = PrefillPace::for_input(h);
      assert_eq!(
        pace.ahead > 0,
        gpu_only && Device::default_is_gpu() && layers_ahead() > 0
      );
      if pace.ahead == 0 {
        pace.layer_done(h)?;
        assert!(pace.queued.is_empty());
      }
    }
    let mut off = PrefillPace::off();
    off.layer_done(&x)?;
    assert!(off.queued.is_empty());
    Ok(())
  }
}
