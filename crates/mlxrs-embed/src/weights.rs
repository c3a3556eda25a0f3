//! Checkpoint tensors: `model.safetensors` or a sharded
//! `model.safetensors.index.json`, converted to `float32` (python
//! `transformers` `from_pretrained(..., dtype=torch.float32)`).
//!
//! Names are looked up below a prefix detected from an anchor tensor, so the
//! same loader reads a bare `BertModel` checkpoint (`embeddings.…`) and one
//! saved from a task head (`bert.embeddings.…`, `model.layers.…`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxrs_core::{Array, Dtype, io, ops};

use crate::error::{Error, Result, read_json};

/// The tensors of a checkpoint, taken out one by one by the model loaders.
pub struct Weights {
  path: PathBuf,
  tensors: HashMap<String, Array>,
  prefix: String,
}

impl Weights {
  /// Load every tensor of `dir`'s safetensors checkpoint.
  pub fn load_dir(dir: &Path) -> Result<Weights> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let mut tensors = HashMap::new();
    let path = if single.is_file() {
      tensors = io::load_safetensors(&single)?.0;
      single
    } else if index.is_file() {
      let v = read_json(&index)?;
      let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config(&index, "weight_map", "missing or not an object"))?;
      let mut files: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
      files.sort_unstable();
      files.dedup();
      for f in files {
        let (t, _) = io::load_safetensors(dir.join(f))?;
        tensors.extend(t);
      }
      index
    } else if dir.join("pytorch_model.bin").is_file() {
      return Err(Error::folder(
        dir,
        "weights are only in pytorch_model.bin (pickle); convert them to model.safetensors",
      ));
    } else {
      return Err(Error::folder(
        dir,
        "no model.safetensors (or model.safetensors.index.json)",
      ));
    };
    Ok(Weights {
      path,
      tensors,
      prefix: String::new(),
    })
  }

  /// Load one safetensors file.
  pub fn load_file(path: &Path) -> Result<Weights> {
    let tensors = io::load_safetensors(path)?.0;
    Ok(Weights {
      path: path.to_path_buf(),
      tensors,
      prefix: String::new(),
    })
  }

  /// The weights file (or index).
  pub fn path(&self) -> &Path {
    &self.path
  }

  /// Use the prefix under which `anchor` (a tensor every checkpoint of the
  /// architecture has, e.g. `embeddings.word_embeddings.weight`) is stored:
  /// the shortest key ending in `.{anchor}` or equal to it.
  pub fn detect_prefix(&mut self, anchor: &str) -> Result<()> {
    if self.tensors.contains_key(anchor) {
      self.prefix.clear();
      return Ok(());
    }
    let dotted = format!(".{anchor}");
    let best = self
      .tensors
      .keys()
      .filter(|k| k.ends_with(&dotted))
      .min_by_key(|k| k.len());
    match best {
      Some(k) => {
        self.prefix = k[..k.len() - anchor.len()].to_string();
        Ok(())
      }
      None => Err(Error::weight(
        &self.path,
        anchor,
        "missing (is this the right architecture?)",
      )),
    }
  }

  /// Look names up below `prefix` from now on (`""`: the file's root).
  pub fn set_prefix(&mut self, prefix: &str) {
    self.prefix = prefix.to_string();
  }

  /// The current prefix.
  pub fn prefix(&self) -> &str {
    &self.prefix
  }

  /// Whether `name` (below the prefix) exists.
  pub fn contains(&self, name: &str) -> bool {
    self.tensors.contains_key(&format!("{}{name}", self.prefix))
  }

  /// Take `name` (below the prefix) as float32, checking its shape.
  pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Array> {
    self
      .take_opt(name, shape)?
      .ok_or_else(|| Error::weight(&self.path, &format!("{}{name}", self.prefix), "missing"))
  }

  /// Like [`Weights::take`], `None` when absent.
  pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Array>> {
    let full = format!("{}{name}", self.prefix);
    let Some(a) = self.tensors.remove(&full) else {
      return Ok(None);
    };
    let got: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
    if got != shape {
      return Err(Error::weight(
        &self.path,
        &full,
        format!("shape {got:?}, expected {shape:?}"),
      ));
    }
    Ok(Some(to_f32(a)?))
  }

  /// Take a tensor of any shape (split fused projections, ...).
  pub fn take_any(&mut self, name: &str) -> Result<Array> {
    let full = format!("{}{name}", self.prefix);
    let a = self
      .tensors
      .remove(&full)
      .ok_or_else(|| Error::weight(&self.path, &full, "missing"))?;
    to_f32(a)
  }
}

/// Float32 and evaluated (read from the file now, converted once).
fn to_f32(a: Array) -> Result<Array> {
  let mut a = if a.dtype() == Dtype::Float32 {
    a
  } else {
    ops::astype(&a, Dtype::Float32)?
  };
  a.eval()?;
  Ok(a)
}
