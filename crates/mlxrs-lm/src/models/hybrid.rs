//! The model shell of state-space and hybrid architectures (mlx-lm's
//! `mamba.py`, `mamba2.py`, `lfm2.py`, `qwen3_next.py`, ...): an embedding
//! table, a stack of layers each with its own cache kind (an `ArraysCache`
//! of recurrent state for SSM / linear-attention layers, a `KVCache` for
//! attention layers), a final norm and an `lm_head` (or the tied
//! embeddings). The causal mask comes from the first attention layer's cache
//! (mlx-lm's `fa_idx`); recurrent layers take none (no left-padded batches).
//! Layers without state (Nemotron-H's MLP blocks) have no cache entry.

use std::collections::HashMap;

use mlxrs_core::{Array, Result};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, Module, Weights, join};

use super::decoder::{Names, Norm, SanitizeFn};
use crate::model::LanguageModel;

/// One layer of a hybrid stack.
pub(crate) trait HybridLayer: Module + Send {
  /// The layer over `x` `[B, L, hidden]` (the residual included); `mask`
  /// is the causal attention mask (unused by recurrent layers).
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array>;
  /// A fresh cache of this layer's kind (python `make_cache` entry);
  /// `None` for a layer that keeps no state (Nemotron-H's MLP blocks: the
  /// model's cache list then has no entry for it).
  fn new_cache(&self) -> Option<KvCache>;
  /// Whether the layer attends over a key/value cache.
  fn is_attention(&self) -> bool;
}

/// The parts under the root: embeddings, layers, final norm.
struct Inner {
  embed: Embedding,
  layers: Vec<Box<dyn HybridLayer>>,
  norm: Box<dyn Norm>,
  names: Names,
}

impl Module for Inner {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.embed.load(w, &join(prefix, self.names.embed));
    self.layers.load(w, &join(prefix, self.names.layers));
    self.norm.load(w, &join(prefix, self.names.norm));
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.embed.visit(&join(prefix, self.names.embed), f);
    self.layers.visit(&join(prefix, self.names.layers), f);
    self.norm.visit(&join(prefix, self.names.norm), f);
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.embed.visit_mut(&join(prefix, self.names.embed), f);
    self.layers.visit_mut(&join(prefix, self.names.layers), f);
    self.norm.visit_mut(&join(prefix, self.names.norm), f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.embed.visit_frozen(&join(prefix, self.names.embed), f);
    self
      .layers
      .visit_frozen(&join(prefix, self.names.layers), f);
    self.norm.visit_frozen(&join(prefix, self.names.norm), f);
  }
  fn set_training(&mut self, training: bool) {
    self.layers.set_training(training);
  }
  fn visit_quantizable_mut(
    &mut self,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    self
      .embed
      .visit_quantizable_mut(&join(prefix, self.names.embed), f);
    self
      .layers
      .visit_quantizable_mut(&join(prefix, self.names.layers), f);
  }
}

/// A hybrid (or purely recurrent) language model.
pub(crate) struct HybridLm {
  model: Inner,
  lm_head: Option<Linear>,
  vocab_size: i32,
  sanitize: Option<SanitizeFn>,
  logit_scale: Option<f32>,
  embed_scale: Option<f32>,
}

impl Module for HybridLm {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let root = self.model.names.root;
    self.model.load(w, &join(prefix, root));
    self.lm_head.load(w, &join(prefix, self.model.names.head));
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.model.visit(&join(prefix, self.model.names.root), f);
    self.lm_head.visit(&join(prefix, self.model.names.head), f);
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    let root = self.model.names.root;
    self.model.visit_mut(&join(prefix, root), f);
    let head = self.model.names.head;
    self.lm_head.visit_mut(&join(prefix, head), f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    let (root, head) = (self.model.names.root, self.model.names.head);
    self.model.visit_frozen(&join(prefix, root), f);
    self.lm_head.visit_frozen(&join(prefix, head), f);
  }
  fn set_training(&mut self, training: bool) {
    self.model.set_training(training);
  }
  fn visit_quantizable_mut(
    &mut self,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    let (root, head) = (self.model.names.root, self.model.names.head);
    self.model.visit_quantizable_mut(&join(prefix, root), f);
    self.lm_head.visit_quantizable_mut(&join(prefix, head), f);
  }
}

impl HybridLm {
  /// Assemble; `lm_head` `None` ties the output projection to the
  /// embeddings (a tied checkpoint's `lm_head.*` is dropped by sanitize).
  pub fn new(
    embed: Embedding,
    layers: Vec<Box<dyn HybridLayer>>,
    norm: Box<dyn Norm>,
    lm_head: Option<Linear>,
    names: Names,
    vocab_size: i32,
    sanitize: Option<SanitizeFn>,
  ) -> HybridLm {
    HybridLm {
      model: Inner {
        embed,
        layers,
        norm,
        names,
      },
      lm_head,
      vocab_size,
      sanitize,
      logit_scale: None,
      embed_scale: None,
    }
  }

  /// The same model with its input embeddings multiplied by `s`
  /// (GraniteMoeHybrid's `embedding_multiplier`).
  pub fn with_embed_scale(mut self, s: Option<f32>) -> HybridLm {
    self.embed_scale = s;
    self
  }

  /// The same model with its logits multiplied by `s` (Falcon-H1's tied
  /// `lm_head_multiplier / embedding_multiplier`).
  pub fn with_logit_scale(mut self, s: Option<f32>) -> HybridLm {
    self.logit_scale = s;
    self
  }
}

impl LanguageModel for HybridLm {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    // Cache slot of each layer (stateless layers have none).
    let mut slots = Vec::with_capacity(self.model.layers.len());
    let mut next = 0;
    for l in &self.model.layers {
      let has = l.new_cache().is_some();
      slots.push(has.then_some(next));
      next += has as usize;
    }
    super::base::check_caches(caches.len(), next)?;
    let mut h = self.model.embed.forward(tokens)?;
    if let Some(s) = self.embed_scale {
      h = (h * s)?;
    }
    let n = h.dim(1).unwrap_or(1);
    let first_attn = self
      .model
      .layers
      .iter()
      .zip(&slots)
      .find_map(|(l, s)| if l.is_attention() { *s } else { None });
    let mask = match first_attn {
      Some(i) => caches[i].make_mask(n, None)?,
      None => AttnMask::None,
    };
    for (layer, slot) in self.model.layers.iter().zip(&slots) {
      h = match slot {
        Some(i) => layer.forward(&h, &mask, &mut caches[*i])?,
        None => layer.forward(&h, &mask, &mut KvCache::standard())?,
      };
    }
    self.model.norm.apply(&h)
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    let out = match &self.lm_head {
      Some(head) => head.forward(hidden)?,
      None => self.model.embed.as_linear(hidden)?,
    };
    match self.logit_scale {
      Some(s) => out * s,
      None => Ok(out),
    }
  }

  /// mlx-lm's `make_cache`: each layer's own kind. `max_kv_size` is
  /// refused by generation for models with recurrent layers
  /// (`TokenGenerator::new`), so it is not applied here.
  fn make_caches(&self, _max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .filter_map(|l| l.new_cache())
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let mut weights = match self.sanitize {
      Some(f) => f(weights)?,
      None => weights,
    };
    if self.lm_head.is_none() {
      let head = self.model.names.head;
      for kind in ["weight", "scales", "biases", "bias"] {
        weights.remove(&format!("{head}.{kind}"));
      }
    }
    Ok(weights)
  }

  fn vocab_size(&self) -> i32 {
    self.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }
}
