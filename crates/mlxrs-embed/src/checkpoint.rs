//! Reading a checkpoint into the `mlxrs-nn` modules of an encoder: the
//! tensors of `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), the `quantization` block of
//! `config.json`, and a strict load (python transformers
//! `from_pretrained(..., dtype=torch.float32)`; for quantized MLX folders
//! mlx-embeddings' `load` with `nn.quantize` from the config).
//!
//! Floating-point weights are computed in float32; quantized layers (their
//! `<path>.scales` is in the file) stay packed and run as
//! `quantized_matmul`. Every missing, mis-shaped or unexpected tensor is
//! reported at once ([`mlxrs_nn::Weights::finish`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxrs_core::{Array, Dtype, io};
use mlxrs_nn::{Module, QuantConfig, Weights};

use crate::config::JsonConfig;
use crate::error::{Error, Result, read_json};

/// The tensors of a checkpoint, before they are loaded into a model.
pub struct Checkpoint {
  path: PathBuf,
  tensors: HashMap<String, Array>,
  quant: Option<QuantConfig>,
}

/// One module to fill from a [`Checkpoint`] and the path it sits under.
pub type Part<'a> = (&'a mut dyn Module, &'a str);

impl Checkpoint {
  /// Every tensor of `dir`'s safetensors checkpoint.
  pub fn read_dir(dir: &Path) -> Result<Checkpoint> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
      return Checkpoint::read_file(&single);
    }
    if index.is_file() {
      let v = read_json(&index)?;
      let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config(&index, "weight_map", "missing or not an object"))?;
      let mut files: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
      files.sort_unstable();
      files.dedup();
      let mut tensors = HashMap::new();
      for f in files {
        let (t, _) = io::load_safetensors(dir.join(f))?;
        for (k, a) in t {
          if tensors.insert(k.clone(), a).is_some() {
            return Err(Error::weight(&index, &k, "appears in more than one shard"));
          }
        }
      }
      return Ok(Checkpoint {
        path: index,
        tensors,
        quant: None,
      });
    }
    if dir.join("pytorch_model.bin").is_file() {
      return Err(Error::folder(
        dir,
        "weights are only in pytorch_model.bin (pickle); convert them to model.safetensors",
      ));
    }
    Err(Error::folder(
      dir,
      "no model.safetensors (or model.safetensors.index.json)",
    ))
  }

  /// The tensors of one safetensors file.
  pub fn read_file(path: &Path) -> Result<Checkpoint> {
    Ok(Checkpoint {
      path: path.to_path_buf(),
      tensors: io::load_safetensors(path)?.0,
      quant: None,
    })
  }

  /// Take the quantization of `config.json` (`quantization`, or an MLX
  /// style `quantization_config`), as mlx-lm / mlx-embeddings write it.
  pub fn with_quantization(mut self, cfg: &JsonConfig) -> Result<Checkpoint> {
    let field = ["quantization", "quantization_config"]
      .into_iter()
      .find(|f| cfg.get(f).is_some());
    if let Some(f) = field {
      let v = cfg.get(f).unwrap_or(&serde_json::Value::Null);
      if v.get("quant_method").is_some() {
        return Err(cfg.invalid(
          f,
          "only MLX quantization (group_size / bits / mode) is supported",
        ));
      }
      self.quant = Some(QuantConfig::from_json(v).map_err(|e| cfg.invalid(f, e.to_string()))?);
    }
    Ok(self)
  }

  /// The weights file (or index).
  pub fn path(&self) -> &Path {
    &self.path
  }

  /// The tensors by name, for an architecture's renames (python
  /// `sanitize`).
  pub fn tensors_mut(&mut self) -> &mut HashMap<String, Array> {
    &mut self.tensors
  }

  /// Whether tensor `key` is in the checkpoint.
  pub fn has(&self, key: &str) -> bool {
    self.tensors.contains_key(key)
  }

  /// The shape of tensor `key`, if present.
  pub fn shape(&self, key: &str) -> Option<Vec<i32>> {
    self.tensors.get(key).map(Array::shape)
  }

  /// The path under which `anchor` (a tensor every checkpoint of the
  /// architecture has, e.g. `embeddings.word_embeddings.weight`) is stored:
  /// `""` for a bare model, `"bert"` for one saved from a task head, `"model"`
  /// for a causal-LM checkpoint (the shortest key ending in `.{anchor}`).
  pub fn prefix_of(&self, anchor: &str) -> Result<String> {
    if self.tensors.contains_key(anchor) {
      return Ok(String::new());
    }
    let dotted = format!(".{anchor}");
    self
      .tensors
      .keys()
      .filter(|k| k.ends_with(&dotted))
      .min_by_key(|k| k.len())
      .map(|k| k[..k.len() - dotted.len()].to_string())
      .ok_or_else(|| {
        Error::weight(
          &self.path,
          anchor,
          "missing (is this the right architecture?)",
        )
      })
  }

  /// Fill `parts` from the checkpoint, strictly (python
  /// `model.load_weights(..., strict=True)`): tensors for which `skip`
  /// holds (heads and buffers the encoder does not use) are dropped first;
  /// every other tensor must belong to a part, and every parameter of a
  /// part must be present with its shape. Floating-point weights become
  /// float32; the parameters are evaluated here, so an unreadable file
  /// fails now.
  pub fn load(self, parts: &mut [Part<'_>], skip: &dyn Fn(&str) -> bool) -> Result<()> {
    let Checkpoint {
      path,
      tensors,
      quant,
    } = self;
    let tensors = tensors.into_iter().filter(|(k, _)| !skip(k)).collect();
    let mut w = Weights::new(tensors);
    w.dtype = Some(Dtype::Float32);
    w.quant = quant;
    for (m, prefix) in parts.iter_mut() {
      m.load(&mut w, prefix);
    }
    w.finish().map_err(|e| {
      let msg = match e {
        mlxrs_core::Error::InvalidArgument(m) => m,
        other => other.to_string(),
      };
      Error::folder(&path, msg)
    })?;
    let mut params = Vec::new();
    for (m, _) in parts.iter() {
      m.visit("", &mut |_, a| params.push(a.clone()));
    }
    mlxrs_core::eval(&params)?;
    Ok(())
  }
}
