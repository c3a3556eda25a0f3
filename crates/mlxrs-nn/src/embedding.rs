//! `Embedding` (python `mlx.nn.Embedding` / `nn.QuantizedEmbedding`, swift
//! `Embedding`), with `as_linear` for tied output heads.

use mlxrs_core::{Array, Error, Result, ops};

use crate::module::{Frozen, Module, Weights, join};
use crate::quant::{QuantParams, Quantizable};
use crate::transposed::TransposedWeight;

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
  /// A low-rank adapter on the table (mlx-lm's `LoRAEmbedding` /
  /// `DoRAEmbedding`), attached at load time when the weights carry one.
  pub adapter: Option<Box<crate::lora::EmbeddingAdapter>>,
  frozen: Frozen,
  /// `weight.T` kept for GPU `as_linear` ([`Embedding::keep_transposed`]).
  transposed: TransposedWeight,
}

fn scales_of(s: &Option<Array>) -> Result<&Array> {
  s.as_ref()
    .ok_or_else(|| Error::InvalidArgument("quantized Embedding has no scales (not loaded)".into()))
}

impl Embedding {
  /// An unloaded table (python `nn.Embedding(num_embeddings, dims)`).
  pub fn new(num_embeddings: i32, dims: i32) -> Embedding {
    Embedding {
      num_embeddings,
      dims,
      weight: Array::scalar(0.0f32),
      quant: None,
      scales: None,
      biases: None,
      adapter: None,
      frozen: Frozen::default(),
      transposed: TransposedWeight::default(),
    }
  }

  /// A dense table from an explicit `[num_embeddings, dims]` weight.
  pub fn from_weight(weight: Array) -> Result<Embedding> {
    let s = weight.shape();
    if s.len() != 2 {
      return Err(Error::InvalidArgument(format!(
        "Embedding weight must be 2-D, got {s:?}"
      )));
    }
    let mut e = Embedding::new(s[0], s[1]);
    e.weight = weight;
    Ok(e)
  }

  /// A freshly initialised table, as python `nn.Embedding(n, dims)`:
  /// `normal(0, 1/sqrt(dims))` from `key` (or MLX's global key).
  pub fn init(num_embeddings: i32, dims: i32, key: Option<&Array>) -> Result<Embedding> {
    let scale = (1.0 / dims.max(1) as f32).sqrt();
    let w = mlxrs_core::random::normal(
      &[num_embeddings, dims],
      mlxrs_core::Dtype::Float32,
      0.0,
      scale,
      key,
    )?;
    Embedding::from_weight(w)
  }

  /// Quantize the (dense, loaded) table in place (python
  /// `nn.QuantizedEmbedding.from_embedding`); its parameters become frozen.
  pub fn quantize(&mut self, q: &QuantParams) -> Result<()> {
    if self.quant.is_some() {
      return Ok(());
    }
    self.transposed.clear();
    let parts = ops::quantize(
      &self.weight,
      Some(q.group_size),
      Some(q.bits),
      q.mode.as_str(),
      None,
    )?;
    let mut it = parts.into_iter();
    self.weight = it
      .next()
      .ok_or_else(|| Error::Mlx("quantize returned nothing".into()))?;
    self.scales = it.next();
    self.biases = if q.has_biases() { it.next() } else { None };
    self.quant = Some(*q);
    for n in ["weight", "scales", "biases"] {
      self.frozen.set(n, true);
    }
    Ok(())
  }

  /// Look up rows for integer `ids` (any shape): result `[..., dims]`
  /// (with the adapter's update when one is attached).
  pub fn forward(&self, ids: &Array) -> Result<Array> {
    let y = self.lookup(ids)?;
    match &self.adapter {
      Some(ad) => ad.forward(&y, ids),
      None => Ok(y),
    }
  }

  fn lookup(&self, ids: &Array) -> Result<Array> {
    match &self.quant {
      None => ops::take_axis(&self.weight, ids, 0),
      Some(q) => {
        let w = ops::take_axis(&self.weight, ids, 0)?;
        let s = ops::take_axis(scales_of(&self.scales)?, ids, 0)?;
        let b = match &self.biases {
          Some(b) => Some(ops::take_axis(b, ids, 0)?),
          None => None,
        };
        ops::dequantize(
          &w,
          &s,
          b.as_ref(),
          Some(q.group_size),
          Some(q.bits),
          q.mode.as_str(),
          None,
          None,
        )
      }
    }
  }

  /// Keep `weight.T` ready for [`Embedding::as_linear`] on a GPU (as
  /// [`crate::Linear::keep_transposed`]); nothing for a quantized table.
  pub fn keep_transposed(&mut self) -> Result<()> {
    if self.quant.is_some() {
      self.transposed.clear();
      return Ok(());
    }
    self.transposed.keep(&self.weight)
  }

  /// Use the table as an output projection: `x @ W.T` (python
  /// `embed_tokens.as_linear(x)`, for tied word embeddings), with the
  /// adapter's update when one is attached.
  pub fn as_linear(&self, x: &Array) -> Result<Array> {
    let y = self.as_linear_base(x)?;
    match &self.adapter {
      Some(ad) => {
        let table = (ad.m.is_some() && self.quant.is_none()).then_some(&self.weight);
        ad.as_linear(&y, x, table)
      }
      None => Ok(y),
    }
  }

  fn as_linear_base(&self, x: &Array) -> Result<Array> {
    match &self.quant {
      None => self.transposed.matmul_t(x, &self.weight),
      Some(q) => ops::quantized_matmul_t(
        x,
        &self.weight,
        scales_of(&self.scales)?,
        self.biases.as_ref(),
        q.group_size,
        q.bits,
        q.mode.as_str(),
      ),
    }
  }
}

impl Module for Embedding {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.transposed.clear();
    let (weight, scales, biases, quant) =
      crate::linear::load_maybe_quantized(w, prefix, self.num_embeddings, self.dims);
    self.weight = weight;
    self.scales = scales;
    self.biases = biases;
    self.quant = quant;
    if self.quant.is_some() {
      for n in ["weight", "scales", "biases"] {
        self.frozen.set(n, true);
      }
    }
    w.record_layer(crate::lora::AdaptableLayer {
      path: prefix.to_string(),
      kind: crate::lora::AdapterKind::Embedding,
      shape: vec![self.num_embeddings, self.dims],
      quantized: self.quant.is_some(),
    });
    self.adapter = crate::lora::EmbeddingAdapter::load(w, prefix, self.num_embeddings, self.dims);
    if self.quant.is_some() && self.adapter.as_ref().is_some_and(|a| a.m.is_some()) {
      w.problem(format!(
        "{prefix}: DoRA on a quantized embedding is not supported (mlx-lm refuses it too)"
      ));
    }
  }

  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.transposed.clear();
    self.frozen.visit_mut(prefix, "weight", &mut self.weight, f);
    if let Some(s) = &mut self.scales {
      self.frozen.visit_mut(prefix, "scales", s, f);
    }
    if let Some(b) = &mut self.biases {
      self.frozen.visit_mut(prefix, "biases", b, f);
    }
    if let Some(ad) = &mut self.adapter {
      ad.visit_tensors_mut(prefix, f);
    }
  }

  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.frozen.visit(prefix, "weight", &self.weight, f);
    if let Some(s) = &self.scales {
      self.frozen.visit(prefix, "scales", s, f);
    }
    if let Some(b) = &self.biases {
      self.frozen.visit(prefix, "biases", b, f);
    }
    if let Some(ad) = &self.adapter {
      ad.visit_tensors(prefix, &mut |k, a| f(k, a, false));
    }
  }

  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    self.transposed.clear();
    f(prefix, self);
  }

  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&join(prefix, "weight"), &self.weight);
    if let Some(s) = &self.scales {
      f(&join(prefix, "scales"), s);
    }
    if let Some(b) = &self.biases {
      f(&join(prefix, "biases"), b);
    }
    if let Some(ad) = &self.adapter {
      ad.visit_tensors(prefix, f);
    }
  }
}

impl Quantizable for Embedding {
  fn kind(&self) -> &'static str {
    "Embedding"
  }
  fn dense_shape(&self) -> Vec<i32> {
    vec![self.num_embeddings, self.dims]
  }
  fn quantization(&self) -> Option<&QuantParams> {
    self.quant.as_ref()
  }
  fn weight(&self) -> &Array {
    &self.weight
  }
  fn quantize(&mut self, q: &QuantParams) -> Result<()> {
    Embedding::quantize(self, q)
  }
}
