//! `mlxrs bench` (python `mlx_lm.benchmark`): prompt and generation speed of
//! a model folder or a named real-model shape with random weights.

use anyhow::{Result, bail};
use clap::Args;
use mlxrs_core::Dtype;
use mlxrs_lm::bench::{SHAPES, random_model, run_batch_trial, run_trial};
use mlxrs_lm::{LoadOptions, load};

/// `mlxrs bench` arguments.
#[derive(Args)]
pub struct BenchArgs {
  /// Model folder or repo id (its real weights).
  #[arg(long, conflicts_with = "shape")]
  model: Option<String>,
  /// A named shape with random weights: llama-3.2-1b, qwen3-0.6b, qwen3-4b,
  /// smollm2-135m, llama-3.1-8b.
  #[arg(long)]
  shape: Option<String>,
  /// Prompt tokens.
  #[arg(short = 'p', long = "prompt-tokens", default_value_t = 512)]
  prompt_tokens: usize,
  /// Generated tokens.
  #[arg(short = 'g', long = "generation-tokens", default_value_t = 256)]
  generation_tokens: usize,
  /// Rows decoded together (python `mlx_lm.benchmark -b`): with more than
  /// one, the prompts go through the continuous-batching engine and
  /// `generation_tps` is the aggregate over rows.
  #[arg(short = 'b', long = "batch-size", default_value_t = 1)]
  batch_size: usize,
  /// Trials (the first is a warm-up and not averaged when there are more).
  #[arg(short = 'n', long = "num-trials", default_value_t = 3)]
  num_trials: usize,
  /// Weights dtype: float32 / bfloat16 / float16 (default: float32 on CPU,
  /// bfloat16 on GPU).
  #[arg(long)]
  dtype: Option<String>,
  /// Quantize the random weights of `--shape` to this many bits (affine:
  /// 2, 3, 4, 5, 6, 8).
  #[arg(long = "quantize-bits", short = 'q')]
  bits: Option<i32>,
  /// Quantization group size for `-q` (32, 64, 128; default 64).
  #[arg(long = "group-size")]
  group_size: Option<i32>,
  /// One JSON object per trial plus the average.
  #[arg(long)]
  json: bool,
  /// Write the named shape's config.json to this path and exit (the
  /// side-by-side runner gives it to Python mlx-lm).
  #[arg(long = "dump-config")]
  dump_config: Option<std::path::PathBuf>,
}

impl BenchArgs {
  /// Check every flag before loading anything, naming the flag and value.
  fn validate(&self) -> Result<()> {
    if self.model.is_some() && (self.bits.is_some() || self.group_size.is_some()) {
      bail!(
        "-q/--quantize-bits and --group-size apply to --shape (random weights); a --model is benchmarked as stored (quantize it with its own config)"
      );
    }
    if self.bits.is_none() && self.group_size.is_some() {
      bail!("--group-size needs -q/--quantize-bits");
    }
    if let Some(b) = self.bits {
      mlxrs_lm::limits::check_affine_quant(
        "-q/--quantize-bits",
        b,
        "--group-size",
        self.group_size(),
      )?;
    }
    if self.num_trials == 0 {
      bail!("--num-trials 0: must be >= 1");
    }
    if self.generation_tokens == 0 {
      bail!("--generation-tokens 0: must be >= 1");
    }
    if self.prompt_tokens == 0 {
      bail!("--prompt-tokens 0: must be >= 1");
    }
    if self.batch_size == 0 {
      bail!("--batch-size 0: must be >= 1");
    }
    Ok(())
  }

  fn group_size(&self) -> i32 {
    self.group_size.unwrap_or(64)
  }
}

/// Run the benchmark.
pub fn run(a: BenchArgs) -> Result<()> {
  let gpu = mlxrs_core::Device::default_is_gpu();
  let dtype = match a.dtype.as_deref() {
    Some(n) => match Dtype::parse(n) {
      Some(d) if d.is_float() => d,
      _ => bail!("--dtype {n:?}: expected float32, bfloat16 or float16"),
    },
    None if gpu => Dtype::Bfloat16,
    None => Dtype::Float32,
  };
  if let Some(p) = &a.dump_config {
    let Some(s) = &a.shape else {
      bail!("--dump-config needs --shape")
    };
    mlxrs_core::atomic::atomic_write(
      p,
      serde_json::to_string_pretty(&mlxrs_lm::bench::shape_config(s)?)?,
    )
    .map_err(|e| anyhow::anyhow!("--dump-config: {e}"))?;
    return Ok(());
  }
  a.validate()?;
  let model = match (&a.model, &a.shape) {
    (Some(m), None) => {
      load(
        m,
        &LoadOptions {
          dtype: Some(dtype),
          no_tokenizer: true,
        },
      )?
      .model
    }
    (None, Some(s)) => random_model(s, dtype, a.bits, a.group_size(), 0)?,
    _ => bail!("give --model PATH or --shape NAME ({})", SHAPES.join(", ")),
  };
  let device = mlxrs_core::Device::default_device()
    .map(|d| d.to_string())
    .unwrap_or_default();
  let what = a.model.clone().or(a.shape.clone()).unwrap_or_default();
  let quant = a
    .bits
    .map(|b| format!("{b}-bit g{}", a.group_size()))
    .unwrap_or_else(|| "none".into());
  if !a.json {
    println!(
      "mlxrs bench: {what}, dtype {dtype}, quantization {quant}, batch {}, device {device}",
      a.batch_size
    );
    println!(
      "(compute dtype {dtype}{})",
      if gpu {
        ""
      } else {
        ": on CPU float32 is the fast path; bf16 matmul is slow there"
      }
    );
  }
  let mut results = Vec::new();
  for i in 0..a.num_trials {
    let r = if a.batch_size > 1 {
      run_batch_trial(
        model.as_ref(),
        a.batch_size,
        a.prompt_tokens,
        a.generation_tokens,
        i as u64,
      )?
    } else {
      run_trial(
        model.as_ref(),
        a.prompt_tokens,
        a.generation_tokens,
        i as u64,
      )?
    };
    if a.json {
      println!("{}", serde_json::json!({"trial": i, "result": r}));
    } else {
      println!(
        "Trial {}: prompt_tps={:.3}, generation_tps={:.3}, peak_memory={:.3} GB",
        i + 1,
        r.prompt_tps,
        r.generation_tps,
        r.peak_memory_gb
      );
    }
    results.push(r);
  }
  let used: Vec<_> = if results.len() > 1 {
    results[1..].to_vec()
  } else {
    results.clone()
  };
  let n = used.len() as f64;
  let p = used.iter().map(|r| r.prompt_tps).sum::<f64>() / n;
  let g = used.iter().map(|r| r.generation_tps).sum::<f64>() / n;
  let m = used.iter().map(|r| r.peak_memory_gb).fold(0.0, f64::max);
  if a.json {
    println!(
      "{}",
      serde_json::json!({"average": {"prompt_tps": p, "generation_tps": g, "peak_memory_gb": m},
        "model": what, "dtype": dtype.to_string(), "quantization": quant, "device": device,
        "prompt_tokens": a.prompt_tokens, "generation_tokens": a.generation_tokens,
        "batch_size": a.batch_size})
    );
  } else {
    println!("Averages: prompt_tps={p:.3}, generation_tps={g:.3}, peak_memory={m:.3} GB");
  }
  Ok(())
}
