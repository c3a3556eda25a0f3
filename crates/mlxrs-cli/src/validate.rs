//! Flag validation: one `validate()` per argument struct, run before any
//! model is loaded, naming the flag and the value it got. Ranges follow the
//! library's own checks (so an error here is the one a library caller would
//! see later, only earlier).

use anyhow::{Result, bail};

use crate::{CachePromptArgs, ChatArgs, GenerateArgs, SamplingArgs};

fn finite(flag: &str, v: f32) -> Result<()> {
  if !v.is_finite() {
    bail!("{flag} {v}: must be a finite number");
  }
  Ok(())
}

fn in_range(flag: &str, v: f32, lo: f32, hi: f32) -> Result<()> {
  finite(flag, v)?;
  if v < lo || v > hi {
    bail!("{flag} {v}: must be in [{lo}, {hi}]");
  }
  Ok(())
}

/// `--max-kv-size`: a rotating cache needs at least one position.
pub(crate) fn check_max_kv_size(v: Option<i32>) -> Result<()> {
  if let Some(n) = v {
    if n < 1 {
      bail!("--max-kv-size {n}: must be >= 1 (the number of cached positions)");
    }
  }
  Ok(())
}

impl SamplingArgs {
  /// Check every sampling / cache flag.
  pub(crate) fn validate(&self) -> Result<()> {
    if self.max_tokens == 0 {
      bail!("--max-tokens 0: must be >= 1");
    }
    finite("--temp", self.temp)?;
    if self.temp < 0.0 {
      bail!(
        "--temp {}: the temperature must be >= 0 (0 = greedy)",
        self.temp
      );
    }
    in_range("--top-p", self.top_p, 0.0, 1.0)?;
    if self.top_k < 0 {
      bail!("--top-k {}: must be >= 0 (0 = off)", self.top_k);
    }
    in_range("--min-p", self.min_p, 0.0, 1.0)?;
    in_range("--xtc-probability", self.xtc_probability, 0.0, 1.0)?;
    in_range("--xtc-threshold", self.xtc_threshold, 0.0, 0.5)?;
    if let Some(p) = self.repetition_penalty {
      finite("--repetition-penalty", p)?;
      if p <= 0.0 {
        bail!("--repetition-penalty {p}: must be > 0 (1 = off)");
      }
    }
    if self.repetition_context_size == 0 {
      bail!("--repetition-context-size 0: must be >= 1");
    }
    if let Some(p) = self.presence_penalty {
      finite("--presence-penalty", p)?;
    }
    if let Some(p) = self.frequency_penalty {
      finite("--frequency-penalty", p)?;
    }
    check_max_kv_size(self.max_kv_size)?;
    if let Some(b) = self.kv_bits {
      mlxrs_lm::limits::check_affine_quant("--kv-bits", b, "--kv-group-size", self.kv_group_size)?;
      if self.quantized_kv_start < 0 {
        bail!(
          "--quantized-kv-start {}: must be >= 0",
          self.quantized_kv_start
        );
      }
    }
    if let Some(s) = self.stop.iter().find(|s| s.is_empty()) {
      bail!("--stop {s:?}: a stop string must not be empty");
    }
    Ok(())
  }
}

impl GenerateArgs {
  /// Check every `generate` flag.
  pub(crate) fn validate(&self) -> Result<()> {
    self.sampling.validate()?;
    if self.draft_model.is_some() && self.num_draft_tokens == 0 {
      bail!("--num-draft-tokens 0: must be >= 1");
    }
    Ok(())
  }
}

impl ChatArgs {
  /// Check every `chat` flag.
  pub(crate) fn validate(&self) -> Result<()> {
    self.sampling.validate()
  }
}

impl CachePromptArgs {
  /// Check every `cache-prompt` flag, including that the cache file can be
  /// written (not a directory, its directory exists) before the prefill.
  pub(crate) fn validate(&self) -> Result<()> {
    check_max_kv_size(self.max_kv_size)?;
    mlxrs_core::atomic::check_writable_target(&self.prompt_cache_file)
      .map_err(|e| anyhow::anyhow!("--prompt-cache-file: {e}"))?;
    Ok(())
  }
}
