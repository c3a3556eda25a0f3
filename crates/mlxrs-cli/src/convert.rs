//! `mlxrs convert` (python `mlx_lm.convert`): Hugging Face / mlx-community
//! folder -> MLX folder, with dtype cast, quantization or dequantization.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use mlxrs_lm::convert::{ConvertOptions, DEFAULT_MAX_SHARD_BYTES, convert};

/// `mlxrs convert` arguments (named as mlx_lm.convert's).
#[derive(Args)]
pub struct ConvertArgs {
  /// Source: a local folder or a cached Hugging Face repo id.
  #[arg(long = "hf-path", visible_alias = "model")]
  hf_path: String,
  /// Destination folder.
  #[arg(long = "mlx-path", default_value = "mlx_model")]
  mlx_path: PathBuf,
  /// Quantize the model.
  #[arg(short = 'q', long)]
  quantize: bool,
  /// Group size for quantization (default per mode: affine 64, mxfp4 32,
  /// nvfp4 16, mxfp8 32).
  #[arg(long = "q-group-size")]
  q_group_size: Option<i32>,
  /// Bits per weight for quantization (default per mode: 4, mxfp8 8).
  #[arg(long = "q-bits")]
  q_bits: Option<i32>,
  /// Quantization mode.
  #[arg(long = "q-mode", default_value = "affine",
        value_parser = ["affine", "mxfp4", "nvfp4", "mxfp8"])]
  q_mode: String,
  /// Mixed-bit quantization recipe (affine only).
  #[arg(long = "quant-predicate",
        value_parser = ["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"])]
  quant_predicate: Option<String>,
  /// Dtype of the non-quantized parameters (default: config.json's
  /// `torch_dtype`, else the weights' own).
  #[arg(long, value_parser = ["float16", "bfloat16", "float32"])]
  dtype: Option<String>,
  /// Dequantize a quantized model.
  #[arg(short = 'd', long)]
  dequantize: bool,
  /// Replace an existing non-empty --mlx-path.
  #[arg(long)]
  overwrite: bool,
  /// Largest weight file, e.g. 5GB (mlx-lm's), 500MB, or bytes.
  #[arg(long = "max-shard-size", hide = true)]
  max_shard_size: Option<String>,
  /// Print the report as JSON on stdout.
  #[arg(long)]
  json: bool,
}

/// Parse `5GB` / `500MB` / `123` (GB and MB are GiB / MiB, as mlx-lm's
/// shard limit).
fn parse_size(s: &str) -> Result<u64> {
  let t = s.trim().to_ascii_uppercase();
  let (num, mul) = if let Some(n) = t.strip_suffix("GB") {
    (n, 1u64 << 30)
  } else if let Some(n) = t.strip_suffix("MB") {
    (n, 1u64 << 20)
  } else if let Some(n) = t.strip_suffix("KB") {
    (n, 1u64 << 10)
  } else {
    (t.as_str(), 1)
  };
  match num.trim().parse::<f64>() {
    Ok(x) if x > 0.0 && x.is_finite() => Ok((x * mul as f64) as u64),
    _ => bail!("--max-shard-size {s:?}: expected a size such as 5GB, 500MB or a byte count"),
  }
}

/// Run the conversion.
pub fn run(a: ConvertArgs) -> Result<()> {
  let opts = ConvertOptions {
    hf_path: a.hf_path,
    mlx_path: a.mlx_path,
    dtype: a.dtype,
    quantize: a.quantize,
    q_group_size: a.q_group_size,
    q_bits: a.q_bits,
    q_mode: a.q_mode,
    quant_predicate: a.quant_predicate,
    dequantize: a.dequantize,
    overwrite: a.overwrite,
    max_shard_bytes: match a.max_shard_size.as_deref() {
      Some(s) => parse_size(s)?,
      None => DEFAULT_MAX_SHARD_BYTES,
    },
    progress: true,
  };
  let report = convert(&opts)?;
  if a.json {
    println!("{}", serde_json::to_string(&report)?);
  }
  Ok(())
}
