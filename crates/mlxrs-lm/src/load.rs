//! Loading a checkpoint folder or Hub repo into a ready model + tokenizer
//! (python `mlx_lm.load(path_or_repo)`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxrs_core::{Array, Device, DeviceType, Dtype};
use mlxrs_nn::{QuantConfig, Weights};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hub::{ModelFiles, resolve_model};
use crate::model::{LanguageModel, build_model};
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
  match Device::default_device() {
    Ok(d) if d.kind == DeviceType::Gpu => None,
    _ => Some(Dtype::Float32),
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
  let config = ModelConfig::from_dir(dir)?;
  let files = ModelFiles::scan(dir)?;
  let cfg = config.text_config();
  let mut model = build_model(&cfg)?;
  let weights = load_weights(&files.weights)?;
  let weights = model.sanitize(weights)?;
  let mut w = Weights::new(weights);
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
  Ok((model, config))
}

/// Load a model folder, Hub repo id or `.gguf` file (python
/// `mlx_lm.load`; GGUF: [`crate::gguf`]).
pub fn load(model: &str, opts: &LoadOptions) -> Result<LoadedModel> {
  let dtype = opts.dtype.or_else(default_dtype);
  if crate::gguf::is_gguf_path(model) {
    let path = crate::gguf::resolve_gguf(model)?;
    let (m, config, tokenizer) = crate::gguf::load_gguf_model(&path, dtype, opts.no_tokenizer)?;
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
  let (m, config) = load_model_dir(&path, dtype)?;
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
