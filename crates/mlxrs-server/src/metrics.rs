//! Server metrics in the Prometheus text format (`GET /metrics`):
//! request and token counters, queue depth, running batch size,
//! prompt-cache hits, and histograms of time to first token and per-request
//! decode speed.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A fixed-bucket histogram (Prometheus `histogram`).
pub struct Histogram {
  bounds: &'static [f64],
  inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
  fn new(bounds: &'static [f64]) -> Histogram {
    Histogram {
      bounds,
      inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
    }
  }

  /// Record one observation.
  pub fn observe(&self, v: f64) {
    if !v.is_finite() {
      return;
    }
    if let Ok(mut g) = self.inner.lock() {
      for (i, b) in self.bounds.iter().enumerate() {
        if v <= *b {
          g.0[i] += 1;
        }
      }
      g.1 += v;
      g.2 += 1;
    }
  }

  fn render(&self, out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    if let Ok(g) = self.inner.lock() {
      for (b, c) in self.bounds.iter().zip(&g.0) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
      }
      let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", g.2);
      let _ = writeln!(out, "{name}_sum {}", g.1);
      let _ = writeln!(out, "{name}_count {}", g.2);
    }
  }
}

/// All counters and gauges, shared by the HTTP side and the engine.
pub struct Metrics {
  /// Requests answered successfully, per endpoint.
  pub requests_chat: AtomicU64,
  /// `/v1/completions` requests answered successfully.
  pub requests_completions: AtomicU64,
  /// Requests refused or failed (4xx/5xx).
  pub requests_failed: AtomicU64,
  /// Prompt tokens admitted.
  pub prompt_tokens: AtomicU64,
  /// Tokens generated.
  pub generation_tokens: AtomicU64,
  /// Rows waiting to join the batch.
  pub queue_depth: AtomicUsize,
  /// Rows in the running batch.
  pub running: AtomicUsize,
  /// Most rows ever in the running batch at once.
  pub running_peak: AtomicUsize,
  /// Rows that reused a cached prompt prefix.
  pub prompt_cache_hits: AtomicU64,
  /// Prompt positions reused from the prompt cache.
  pub cached_tokens: AtomicU64,
  /// Decode steps run while a joining prompt was prefilled in chunks.
  pub interleaved_steps: AtomicU64,
  /// Prompt groups prefilled as one batch into an empty batch.
  pub prefill_groups: AtomicU64,
  /// Rows those groups held.
  pub prefill_group_rows: AtomicU64,
  /// Rows refused because their KV cache would pass `--memory-limit-gb`.
  pub memory_refused: AtomicU64,
  /// Draft tokens proposed (speculative decoding).
  pub draft_tokens: AtomicU64,
  /// Draft tokens accepted.
  pub draft_accepted: AtomicU64,
  /// Seconds from arrival to first token.
  pub ttft: Histogram,
  /// Decode tokens per second of each finished row.
  pub tps: Histogram,
}

impl Default for Metrics {
  fn default() -> Self {
    Metrics {
      requests_chat: AtomicU64::new(0),
      requests_completions: AtomicU64::new(0),
      requests_failed: AtomicU64::new(0),
      prompt_tokens: AtomicU64::new(0),
      generation_tokens: AtomicU64::new(0),
      queue_depth: AtomicUsize::new(0),
      running: AtomicUsize::new(0),
      running_peak: AtomicUsize::new(0),
      prompt_cache_hits: AtomicU64::new(0),
      cached_tokens: AtomicU64::new(0),
      interleaved_steps: AtomicU64::new(0),
      prefill_groups: AtomicU64::new(0),
      prefill_group_rows: AtomicU64::new(0),
      memory_refused: AtomicU64::new(0),
      draft_tokens: AtomicU64::new(0),
      draft_accepted: AtomicU64::new(0),
      ttft: Histogram::new(&[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
      tps: Histogram::new(&[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
    }
  }
}

impl Metrics {
  /// The Prometheus text exposition.
  pub fn render(&self) -> String {
    let mut s = String::new();
    let c = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
      let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    let _ = writeln!(
      s,
      "# HELP mlxrs_requests_total Requests answered, by endpoint and outcome.\n# TYPE mlxrs_requests_total counter"
    );
    let _ = writeln!(
      s,
      "mlxrs_requests_total{{endpoint=\"chat\",outcome=\"ok\"}} {}",
      self.requests_chat.load(Ordering::Relaxed)
    );
    let _ = writeln!(
      s,
      "mlxrs_requests_total{{endpoint=\"completions\",outcome=\"ok\"}} {}",
      self.requests_completions.load(Ordering::Relaxed)
    );
    let _ = writeln!(
      s,
      "mlxrs_requests_total{{endpoint=\"any\",outcome=\"error\"}} {}",
      self.requests_failed.load(Ordering::Relaxed)
    );
    c(
      &mut s,
      "mlxrs_prompt_tokens_total",
      "Prompt tokens admitted.",
      "counter",
      self.prompt_tokens.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_generation_tokens_total",
      "Tokens generated.",
      "counter",
      self.generation_tokens.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_queue_depth",
      "Rows waiting to join the decode batch.",
      "gauge",
      self.queue_depth.load(Ordering::Relaxed) as u64,
    );
    c(
      &mut s,
      "mlxrs_running_batch_size",
      "Rows in the running decode batch.",
      "gauge",
      self.running.load(Ordering::Relaxed) as u64,
    );
    c(
      &mut s,
      "mlxrs_running_batch_size_peak",
      "Most rows ever in the running decode batch at once.",
      "gauge",
      self.running_peak.load(Ordering::Relaxed) as u64,
    );
    c(
      &mut s,
      "mlxrs_prompt_cache_hits_total",
      "Rows that reused a cached prompt prefix.",
      "counter",
      self.prompt_cache_hits.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_prompt_cache_tokens_total",
      "Prompt positions reused from the prompt cache.",
      "counter",
      self.cached_tokens.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_prefill_interleaved_steps_total",
      "Decode steps run while a joining prompt was prefilled in chunks.",
      "counter",
      self.interleaved_steps.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_prefill_groups_total",
      "Groups of prompts prefilled together as one batch.",
      "counter",
      self.prefill_groups.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_prefill_group_rows_total",
      "Rows prefilled in groups.",
      "counter",
      self.prefill_group_rows.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_memory_refused_total",
      "Rows refused because their KV cache would pass --memory-limit-gb.",
      "counter",
      self.memory_refused.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_draft_tokens_total",
      "Draft tokens proposed (speculative decoding, --draft-model).",
      "counter",
      self.draft_tokens.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_draft_accepted_total",
      "Draft tokens accepted (speculative decoding, --draft-model).",
      "counter",
      self.draft_accepted.load(Ordering::Relaxed),
    );
    c(
      &mut s,
      "mlxrs_mlx_active_memory_bytes",
      "Bytes held by live MLX arrays (python mx.get_active_memory()).",
      "gauge",
      mlxrs_core::memory::active_memory().unwrap_or(0) as u64,
    );
    self.ttft.render(
      &mut s,
      "mlxrs_time_to_first_token_seconds",
      "Seconds from a request's arrival to its first token.",
    );
    self.tps.render(
      &mut s,
      "mlxrs_generation_tokens_per_second",
      "Decode tokens per second of each finished row.",
    );
    s
  }
}
