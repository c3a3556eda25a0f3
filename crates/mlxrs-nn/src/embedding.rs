//! `Embedding` (python `mlx.nn.Embedding` / `nn.QuantizedEmbedding`, swift
//! `Embedding`), with `as_linear` for tied output heads.

use mlxrs_core::{Array, Result, ops};

use crate::module::{Module, Weights, join};
use crate::quant::QuantParams;

/// A token-embedding table `[num_embeddings, dims]`, dense or quantized.
pub struct Embedding {
  /// Vocabulary size.
  pub num_embeddings: i32,
  /// Embedding width.
  pub dims: i32,
  /// The table (packed uint32 when quantized).
  pub weight: Array,
  /// Quantization, when loaded quantized.
  pub quant: Option<QuantParams>,
  /// Per-group scales (quantized only).
  pub scales: Option<Array>,
  /// Per-group biases (quantized affine only).
  pub biases: Option<Array>,
}

impl Embedding {
  /// An unloaded table (python `nn.Embedding(num_embeddings, dims)`).
  pub fn new(num_embeddings: i32, dims: i32) -> Embedding {
    Embedding { num_embeddings, dims, weight: Array::scalar(0.0f32), quant: None, scales: None, biases: None }
  }

  /// Look up rows for integer `ids` (any shape): result `[..., dims]`.
  pub fn forward(&self, ids: &Array) -> Result<Array> {
    match &self.quant {
      None => ops::take_axis(&self.weight, ids, 0),
      Some(q) => {
        let w = ops::take_axis(&self.weight, ids, 0)?;
        let s = ops::take_axis(self.scales.as_ref().expect("scales"), ids, 0)?;
        let b = match &self.biases {
          Some(b) => Some(ops::take_axis(b, ids, 0)?),
          None => None,
        };
        ops::dequantize(&w, &s, b.as_ref(), Some(q.group_size), Some(q.bits), &q.mode, None, None)
      }
    }
  }

  /// Use the table as an output projection: `x @ W.T` (python
  /// `embed_tokens.as_linear(x)`, for tied word embeddings).
  pub fn as_linear(&self, x: &Array) -> Result<Array> {
    match &self.quant {
      None => ops::matmul(x, &ops::transpose(&self.weight)?),
      Some(q) => ops::quantized_matmul(
        x,
        &self.weight,
        self.scales.as_ref().expect("scales"),
        self.biases.as_ref(),
        true,
        Some(q.group_size),
        Some(q.bits),
        &q.mode,
      ),
    }
  }
}

impl Module for Embedding {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let (weight, scales, biases, quant) =
      crate::linear::load_maybe_quantized(w, prefix, self.num_embeddings, self.dims);
    self.weight = weight;
    self.scales = scales;
    self.biases = biases;
    self.quant = quant;
  }

  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&join(prefix, "weight"), &self.weight);
    if let Some(s) = &self.scales {
      f(&join(prefix, "scales"), s);
    }
    if let Some(b) = &self.biases {
      f(&join(prefix, "biases"), b);
    }
  }
}
