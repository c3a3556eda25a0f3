//! Loading a checkpoint folder or Hub repo into a ready model + tokenizer
//! (python `mlx_lm.load(path_or_repo)`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxrs_core::{Array, Device, Dtype};
use mlxrs_nn::{QuantConfig, Weights};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hub::{ModelFiles, resolve_model};
use crate::model::{LanguageModel, build_model};
use crate::shard::{SHARDED_TO_ALL, TensorShard};
use crate::tokenizer::Tokenizer;

/// Load options.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
  /// Compute dtype for floating-point weights. `None`: float32 on the CPU
  /// (MLX's CPU bf16/f16 matmul is slow; f32 uses BLAS), the checkpoint's
  /// own dtype on a GPU.
  pub dtype: Option<Dtype>,
  /// Skip the tokenizer (weights-only uses such as benchmarks).
  pub no_tokenizer: bool,
}

/// A loaded model with its config and tokenizer.
pub struct LoadedModel {
  /// The network.
  pub model: Box<dyn LanguageModel>,
  /// config.json (+ generation_config.json).
  pub config: ModelConfig,
  /// The tokenizer (absent with `no_tokenizer`).
  pub tokenizer: Option<Tokenizer>,
  /// The resolved local folder.
  pub path: PathBuf,
  /// The compute dtype of floating-point weights.
  pub dtype: Option<Dtype>,
  /// The context length (`max_position_embeddings`), when the config has it.
  pub max_context: Option<usize>,
}

/// The default compute dtype for the current default device (see
/// [`LoadOptions::dtype`]).
pub fn default_dtype() -> Option<Dtype> {
  if Device::default_is_gpu() {
    None
  } else {
    Some(Dtype::Float32)
  }
}

/// Read every weight file of a checkpoint into one map.
pub fn load_weights(files: &[PathBuf]) -> Result<HashMap<String, Array>> {
  let mut all = HashMap::new();
  for f in files {
    let (m, _) = mlxrs_core::io::load_safetensors(f)?;
    for (k, v) in m {
      if all.insert(k.clone(), v).is_some() {
        return Err(Error::Core(mlxrs_core::Error::Format {
          path: f.display().to_string(),
          msg: format!("tensor {k:?} appears in more than one shard"),
        }));
      }
    }
  }
  Ok(all)
}

/// Build a model from a folder's config and weights (no tokenizer).
pub fn load_model_dir(
  dir: &Path,
  dtype: Option<Dtype>,
) -> Result<(Box<dyn LanguageModel>, ModelConfig)> {
  load_model_dir_sharded(dir, dtype, None)
}

/// [`load_model_dir`], optionally as one rank of a tensor-parallel group
/// (python `model.shard(group)` after `load_model`): the model is built from
/// the divided config and takes only this rank's slices (see
/// [`crate::shard`]). The returned [`ModelConfig`] is the checkpoint's own.
pub fn load_model_dir_sharded(
  dir: &Path,
  dtype: Option<Dtype>,
  shard: Option<TensorShard>,
) -> Result<(Box<dyn LanguageModel>, ModelConfig)> {
  load_dir(dir, dtype, shard, None)
}

/// [`load_model_dir`] as rank `rank` of a `size`-rank pipeline (python
/// `model.model.pipeline(group)` after `load_model`, mlx-lm's
/// `--pipeline`): the model is built with only this rank's decoder layers
/// and takes only their tensors (see [`crate::pipeline`]). The returned
/// [`ModelConfig`] is the checkpoint's own.
pub fn load_model_dir_pipeline(
  dir: &Path,
  dtype: Option<Dtype>,
  rank: i32,
  size: i32,
) -> Result<(Box<dyn LanguageModel>, ModelConfig)> {
  load_dir(dir, dtype, None, Some((rank, size)))
}

fn load_dir(
  dir: &Path,
  dtype: Option<Dtype>,
  shard: Option<TensorShard>,
  pipeline: Option<(i32, i32)>,
) -> Result<(Box<dyn LanguageModel>, ModelConfig)> {
  let config = ModelConfig::from_dir(dir)?;
  let files = ModelFiles::scan(dir)?;
  let mut cfg = config.text_config();
  if let Some(s) = shard {
    cfg = crate::shard::shard_config(&cfg, s.size)?;
  }
  let stage = match pipeline {
    Some((rank, size)) => {
      let layers = cfg
        .get("num_hidden_layers")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| {
          Error::Core(mlxrs_core::Error::InvalidArgument(
            "config has no num_hidden_layers; cannot split it into a pipeline".into(),
          ))
        })?;
      let stage = crate::pipeline::PipelineStage::new(rank, size, layers as i32)?;
      cfg = crate::pipeline::pipeline_config(&cfg, stage)?;
      Some(stage)
    }
    None => None,
  };
  let mut model = build_model(&cfg)?;
  let weights = load_weights(&files.weights)?;
  let mut weights = model.sanitize(weights)?;
  if let Some(s) = shard {
    weights = crate::shard::shard_weights(weights, s)?;
  }
  if let Some(stage) = stage {
    weights = crate::pipeline::pipeline_weights(weights, stage);
    model.set_pipeline(stage)?;
  }
  let mut w = Weights::new(weights);
  if shard.is_some() {
    w.sharded_to_all = SHARDED_TO_ALL.iter().map(|s| s.to_string()).collect();
  }
  w.dtype = dtype;
  if let Some((_, q)) = config.quantization_config() {
    w.quant = Some(QuantConfig::from_json(q).map_err(Error::Core)?);
  }
  model.load(&mut w);
  w.finish().map_err(|e| {
    Error::Core(mlxrs_core::Error::Format {
      path: dir.display().to_string(),
      msg: e.to_string(),
    })
  })?;
  // Evaluate the parameters now (as python's `mx.eval(model.parameters())`)
  // so that a truncated or unreadable shard fails here, not mid-generation.
  let mut params = Vec::new();
  model.visit(&mut |_, a| params.push(a.clone()));
  mlxrs_core::eval(&params)?;
  drop(params);
  crate::model::fuse_for_inference(model.as_mut())?;
  Ok((model, config))
}

/// Load a model folder, Hub repo id or `.gguf` file (python
/// `mlx_lm.load`; GGUF: [`crate::gguf`]).
pub fn load(model: &str, opts: &LoadOptions) -> Result<LoadedModel> {
  load_sharded(model, opts, None)
}

/// [`load`], optionally as one rank of a tensor-parallel group (python
/// `mlx_lm.load` then `model.shard(group)`; see [`crate::shard`]).
pub fn load_sharded(
  model: &str,
  opts: &LoadOptions,
  shard: Option<TensorShard>,
) -> Result<LoadedModel> {
  load_split(model, opts, shard, None)
}

/// [`load`] as rank `rank` of a `size`-rank pipeline (python `mlx_lm`'s
/// `pipeline_load`: `load` then `model.model.pipeline(group)`; see
/// [`crate::pipeline`]).
pub fn load_pipeline(model: &str, opts: &LoadOptions, rank: i32, size: i32) -> Result<LoadedModel> {
  load_split(model, opts, None, Some((rank, size)))
}

fn load_split(
  model: &str,
  opts: &LoadOptions,
  shard: Option<TensorShard>,
  pipeline: Option<(i32, i32)>,
) -> Result<LoadedModel> {
  let dtype = opts.dtype.or_else(default_dtype);
  if crate::gguf::is_gguf_path(model) {
    if shard.is_some() || pipeline.is_some() {
      return Err(Error::Core(mlxrs_core::Error::InvalidArgument(
        "tensor- or pipeline-parallel loading of .gguf files is not supported; convert it to an MLX folder first (gguf::to_mlx_folder)".into(),
      )));
    }
    let path = crate::gguf::resolve_gguf(model)?;
    let (mut m, config, tokenizer) = crate::gguf::load_gguf_model(&path, dtype, opts.no_tokenizer)?;
    crate::model::fuse_for_inference(m.as_mut())?;
    let max_context = config.max_position_embeddings().ok().flatten();
    return Ok(LoadedModel {
      model: m,
      config,
      tokenizer,
      path,
      dtype,
      max_context,
    });
  }
  let path = resolve_model(model)?;
  if shard.is_some() || pipeline.is_some() {
    crate::shard::check_same_model(&path)?;
  }
  let (m, config) = load_dir(&path, dtype, shard, pipeline)?;
  let tokenizer = if opts.no_tokenizer {
    None
  } else {
    Some(Tokenizer::from_dir(&path)?)
  };
  let max_context = config.max_position_embeddings().ok().flatten();
  Ok(LoadedModel {
    model: m,
    config,
    tokenizer,
    path,
    dtype,
    max_context,
  })
}
