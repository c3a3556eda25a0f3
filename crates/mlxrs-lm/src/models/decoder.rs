//! The model shell most mlx-lm architectures share (`Model` +
//! `<Arch>Model` of their files): `model.embed_tokens`, a stack of decoder
//! layers, a final norm, an optional `lm_head` (tied to the embeddings
//! otherwise). An architecture file defines its layer ([`Layer`]) and
//! builds a [`Decoder`]; the forward, masks (full / sliding / left-padded),
//! caches, sanitize and loading live here once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mlxrs_core::{Array, Result};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, KvCacheKind, LayerNorm, Linear, Module, RmsNorm, Weights, join,
};

use super::attention::layer_masks;
use super::checkpoint::{self, Shared, Trainable};
use super::prefill_pace::PrefillPace;
use crate::model::LanguageModel;

/// One decoder layer: `x -> x'` over its KV cache.
pub(crate) trait Layer: Module + Send {
  /// The layer over `x` `[B, L, hidden]`.
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array>;
  /// Whether the layer attends over a sliding window.
  fn sliding(&self) -> bool {
    false
  }
  /// [`Layer::forward`] with state handed from layer to layer (Hunyuan's
  /// cross-layer attention: the k/v projections of the last layer that
  /// computed its own). Most layers ignore it.
  fn forward_shared(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: &mut KvCache,
    _shared: &mut Option<(Array, Array)>,
  ) -> Result<Array> {
    self.forward(x, mask, cache)
  }
  /// This layer's part of `sanitize`, over the tensors under `prefix`
  /// (`model.layers.{i}`): HF layouts whose split needs the layer's own
  /// shapes (fused projections). Run after [`DecoderOpts::sanitize`].
  fn sanitize(&self, _prefix: &str, _weights: &mut HashMap<String, Array>) -> Result<()> {
    Ok(())
  }
  /// [`LanguageModel::fuse_projections`] for this layer (default: none).
  fn fuse_projections(&mut self) -> Result<()> {
    Ok(())
  }
  /// One decoded row `x` (`[1, 1, hidden]`) with the previous layer's
  /// output `delta` not yet added: the layer's output as `(h, r)` with `r`
  /// left for the next layer to add (`None`: nothing left; see
  /// [`super::fused_rows`]). Default: add `delta`, then
  /// [`Layer::forward_shared`].
  fn forward_row(
    &self,
    x: &Array,
    delta: Option<&Array>,
    mask: &AttnMask,
    cache: &mut KvCache,
    shared: &mut Option<(Array, Array)>,
  ) -> Result<(Array, Option<Array>)> {
    let h = super::fused_rows::add_pending(x, delta)?;
    Ok((self.forward_shared(&h, mask, cache, shared)?, None))
  }
}

/// A normalization layer (RMSNorm or LayerNorm).
pub(crate) trait Norm: Module + Send {
  /// The norm of `x` over its last axis.
  fn apply(&self, x: &Array) -> Result<Array>;
}

impl Norm for RmsNorm {
  fn apply(&self, x: &Array) -> Result<Array> {
    self.forward(x)
  }
}

impl Norm for LayerNorm {
  fn apply(&self, x: &Array) -> Result<Array> {
    self.forward(x)
  }
}

/// The parts under `model.`: embeddings, layers, final norm, under the
/// names in `names` (`embed_tokens` / `layers` / `norm` by default).
struct Inner {
  embed_tokens: Embedding,
  layers: Vec<Shared<Box<dyn Layer>>>,
  norm: Box<dyn Norm>,
  names: Names,
}

/// Parameter names of a [`Decoder`]'s parts (`<root>.<embed>`,
/// `<root>.<layers>.{i}`, `<root>.<norm>`), e.g. EXAONE's
/// `transformer.wte` / `transformer.h` / `transformer.ln_f`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Names {
  /// Prefix of the stack (`model`).
  pub root: &'static str,
  /// The embedding table (`embed_tokens`).
  pub embed: &'static str,
  /// The layer list (`layers`).
  pub layers: &'static str,
  /// The final norm (`norm`).
  pub norm: &'static str,
  /// The output projection, from the top (`lm_head`; GPT-NeoX
  /// `model.embed_out`).
  pub head: &'static str,
}

impl Module for Inner {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.embed_tokens.load(w, &join(prefix, self.names.embed));
    self.layers.load(w, &join(prefix, self.names.layers));
    self.norm.load(w, &join(prefix, self.names.norm));
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.embed_tokens.visit(&join(prefix, self.names.embed), f);
    self.layers.visit(&join(prefix, self.names.layers), f);
    self.norm.visit(&join(prefix, self.names.norm), f);
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self
      .embed_tokens
      .visit_mut(&join(prefix, self.names.embed), f);
    self.layers.visit_mut(&join(prefix, self.names.layers), f);
    self.norm.visit_mut(&join(prefix, self.names.norm), f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self
      .embed_tokens
      .visit_frozen(&join(prefix, self.names.embed), f);
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
      .embed_tokens
      .visit_quantizable_mut(&join(prefix, self.names.embed), f);
    self
      .layers
      .visit_quantizable_mut(&join(prefix, self.names.layers), f);
  }
}

/// Options of a [`Decoder`] beyond its parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecoderOpts {
  /// Vocabulary size.
  pub vocab_size: i32,
  /// Sliding window of the layers that say [`Layer::sliding`].
  pub window: Option<i32>,
  /// Factor on the logits (Cohere `logit_scale`).
  pub logit_scale: Option<f32>,
  /// Factor on the input embeddings (GraniteMoE `embedding_multiplier`).
  pub embed_scale: Option<f32>,
  /// Whether a tied checkpoint's `lm_head.*` is dropped by sanitize.
  pub tied: bool,
  /// MoE: HF per-expert `mlp.experts.{e}.{gate,up,down}_proj` tensors are
  /// stacked into `mlp.switch_mlp.*` by sanitize (this many experts).
  pub stack_experts: Option<i32>,
  /// The architecture's own weight fixes, run first by sanitize (mlx-lm's
  /// renames of HF keys, e.g. GPT-NeoX).
  pub sanitize: Option<SanitizeFn>,
}

/// A weight-map fix (python `Model.sanitize`).
pub(crate) type SanitizeFn = fn(HashMap<String, Array>) -> Result<HashMap<String, Array>>;

/// A decoder-only LM assembled from an architecture's layers.
pub(crate) struct Decoder {
  model: Inner,
  lm_head: Option<Linear>,
  opts: DecoderOpts,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
  /// Why left-padded batches are refused, if they are
  /// ([`Decoder::without_padded_batches`]).
  no_padded: Option<&'static str>,
  /// Its layers read arrays on the host in the forward pass
  /// ([`LanguageModel::evaluates_in_forward`]).
  host_reads: bool,
}

impl Module for Decoder {
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
    self
      .lm_head
      .visit_mut(&join(prefix, self.model.names.head), f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self
      .model
      .visit_frozen(&join(prefix, self.model.names.root), f);
    self
      .lm_head
      .visit_frozen(&join(prefix, self.model.names.head), f);
  }
  fn set_training(&mut self, training: bool) {
    self.model.set_training(training);
  }
  fn visit_quantizable_mut(
    &mut self,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    let root = self.model.names.root;
    self.model.visit_quantizable_mut(&join(prefix, root), f);
    self
      .lm_head
      .visit_quantizable_mut(&join(prefix, self.model.names.head), f);
  }
}

impl Decoder {
  /// Assemble; `lm_head` `None` ties the output projection to the
  /// embeddings.
  pub fn new(
    embed_tokens: Embedding,
    layers: Vec<Box<dyn Layer>>,
    norm: Box<dyn Norm>,
    norm_name: &'static str,
    lm_head: Option<Linear>,
    opts: DecoderOpts,
  ) -> Decoder {
    Decoder {
      model: Inner {
        embed_tokens,
        layers: layers.into_iter().map(Shared::new).collect(),
        norm,
        names: Names {
          root: "model",
          embed: "embed_tokens",
          layers: "layers",
          norm: norm_name,
          head: "lm_head",
        },
      },
      lm_head,
      opts,
      ckpt: None,
      no_padded: None,
      host_reads: false,
    }
  }

  /// The same model refusing left-padded batches
  /// ([`LanguageModel::hidden_padded`] is then an error saying `why`):
  /// for layers whose attention scores depend on absolute positions, which
  /// the padded batches' shared cache offset would shift for padded rows.
  pub fn without_padded_batches(mut self, why: &'static str) -> Decoder {
    self.no_padded = Some(why);
    self
  }

  /// The same model, saying that its layers read arrays on the host in the
  /// forward pass ([`LanguageModel::evaluates_in_forward`]).
  pub fn with_host_reads(mut self) -> Decoder {
    self.host_reads = true;
    self
  }

  /// The same model with its parameters under `names`.
  pub fn with_names(mut self, names: Names) -> Decoder {
    self.model.names = names;
    self
  }

  fn run(
    &self,
    mut h: Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
    mask: Option<&AttnMask>,
  ) -> Result<Array> {
    if let Some(s) = self.opts.embed_scale {
      h = (h * s)?;
    }
    let n = h.dim(1).unwrap_or(1);
    let sliding: Vec<bool> = self
      .model
      .layers
      .iter()
      .map(|l| l.lock().sliding())
      .collect();
    let (fa, swa) = layer_masks(&sliding, caches, n, self.opts.window, key_valid, mask)?;
    let mut shared = None;
    let s = h.shape();
    if self.ckpt.is_none() && s.len() == 3 && s[0] == 1 && s[1] == 1 {
      // One row of one token: a layer may leave its output's last add to
      // the next layer's norm (`Layer::forward_row`, `fused_rows`).
      let mut delta: Option<Array> = None;
      for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
        let m = if sliding[i] { &swa } else { &fa };
        let (x, d) = layer
          .lock()
          .forward_row(&h, delta.as_ref(), m, cache, &mut shared)?;
        h = x;
        delta = d;
      }
      return self
        .model
        .norm
        .apply(&super::fused_rows::add_pending(&h, delta.as_ref())?);
    }
    // A long prefill on a GPU queues layer by layer (`prefill_pace`).
    let mut pace = PrefillPace::for_input(&h);
    for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
      let m = if sliding[i] { &swa } else { &fa };
      h = match &self.ckpt {
        None => layer.lock().forward_shared(&h, m, cache, &mut shared)?,
        Some(trainable) => self.checkpointed(i, layer, trainable, &h, m, cache, &mut shared)?,
      };
      pace.layer_done(&h)?;
    }
    self.model.norm.apply(&h)
  }

  /// Layer `i` over `h` as one checkpointed function of `h`, the handed-on
  /// state (Hunyuan's shared k/v) and the layer's trainable tensors
  /// ([`checkpoint::run`]). The cache is left as it was (its state at the
  /// call is what the layer sees, on both passes).
  #[allow(clippy::too_many_arguments)]
  fn checkpointed(
    &self,
    i: usize,
    layer: &Shared<Box<dyn Layer>>,
    trainable: &BTreeSet<String>,
    h: &Array,
    mask: &AttnMask,
    cache: &KvCache,
    shared: &mut Option<(Array, Array)>,
  ) -> Result<Array> {
    let names = self.model.names;
    let prefix = join(&join(names.root, names.layers), &i.to_string());
    let mut inputs = vec![h.clone()];
    if let Some((k, v)) = shared.as_ref() {
      inputs.extend([k.clone(), v.clone()]);
    }
    let (mask, cache) = (mask.clone(), cache.clone());
    let out = checkpoint::run(layer, &prefix, trainable, &inputs, move |l, xs| {
      let mut sh = match xs {
        [_, k, v] => Some((k.clone(), v.clone())),
        _ => None,
      };
      let y = l.forward_shared(&xs[0], &mask, &mut cache.clone(), &mut sh)?;
      let mut out = vec![y];
      if let Some((k, v)) = sh {
        out.extend([k, v]);
      }
      Ok(out)
    })?;
    let mut it = out.into_iter();
    let y = it.next().ok_or_else(|| {
      mlxrs_core::Error::InvalidArgument(format!("grad checkpoint ({prefix}): no output"))
    })?;
    *shared = match (it.next(), it.next()) {
      (Some(k), Some(v)) => Some((k, v)),
      _ => None,
    };
    Ok(y)
  }
}

impl LanguageModel for Decoder {
  fn evaluates_in_forward(&self) -> bool {
    self.host_reads
  }

  fn fuse_projections(&mut self) -> Result<()> {
    for l in &self.model.layers {
      l.lock().fuse_projections()?;
    }
    match &mut self.lm_head {
      Some(head) => head.keep_transposed(),
      None => self.model.embed_tokens.keep_transposed(),
    }
  }

  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.run(self.embed_tokens(tokens)?, caches, None, None)
  }

  fn embed_tokens(&self, tokens: &Array) -> Result<Array> {
    self.model.embed_tokens.forward(tokens)
  }

  fn hidden_from_embeddings(
    &self,
    embeddings: &Array,
    caches: &mut [KvCache],
    mask: Option<&AttnMask>,
  ) -> Result<Array> {
    self.run(embeddings.clone(), caches, None, mask)
  }

  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    if let Some(why) = self.no_padded {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "batched generation (left-padded prompts) is not supported for this architecture: {why}"
      )));
    }
    crate::batch::check_padded_caches(caches)?;
    self.run(self.embed_tokens(tokens)?, caches, Some(key_valid), None)
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    let out = match &self.lm_head {
      Some(head) => head.forward(hidden)?,
      None => self.model.embed_tokens.as_linear(hidden)?,
    };
    match self.opts.logit_scale {
      Some(s) => out * s,
      None => Ok(out),
    }
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .map(
        |l| match (l.lock().sliding(), self.opts.window, max_kv_size) {
          (true, Some(w), _) => KvCache::new(KvCacheKind::Rotating {
            max_size: w,
            keep: 0,
          }),
          (_, _, Some(m)) => KvCache::new(KvCacheKind::Rotating {
            max_size: m,
            keep: 4,
          }),
          _ => KvCache::standard(),
        },
      )
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let mut weights = match self.opts.sanitize {
      Some(f) => f(weights)?,
      None => weights,
    };
    let names = self.model.names;
    for (i, l) in self.model.layers.iter().enumerate() {
      let prefix = join(&join(names.root, names.layers), &i.to_string());
      l.lock().sanitize(&prefix, &mut weights)?;
    }
    weights.retain(|k, _| !k.contains("rotary_emb.inv_freq"));
    if self.opts.tied {
      for k in [
        "lm_head.weight",
        "lm_head.scales",
        "lm_head.biases",
        "lm_head.bias",
      ] {
        weights.remove(k);
      }
    }
    if let Some(n) = self.opts.stack_experts {
      let prefixes: Vec<String> = (0..self.model.layers.len())
        .map(|l| format!("model.layers.{l}.mlp"))
        .collect();
      super::base::stack_experts(
        &mut weights,
        &prefixes,
        n,
        &[
          ("gate_proj", "gate_proj"),
          ("up_proj", "up_proj"),
          ("down_proj", "down_proj"),
        ],
      )?;
    }
    Ok(weights)
  }

  fn vocab_size(&self) -> i32 {
    self.opts.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }

  fn set_grad_checkpoint(&mut self, trainable: Option<BTreeSet<String>>) -> Result<()> {
    self.ckpt = trainable.map(Arc::new);
    Ok(())
  }
}
