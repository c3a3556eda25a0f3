//! Llama (and Mistral, and the Llama-shaped core shared by Qwen2/Qwen3):
//! mlx-lm's `models/llama.py`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, KvCacheKind, Linear, Module, RmsNorm, Rope, Weights, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims, layer_masks};
use super::checkpoint::{self, Shared, Trainable};
use super::fused_rows;
use super::mlp::SwiGluMlp;
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  10000.0
}
fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's llama.py.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `head_dim` (default `hidden_size / num_attention_heads`)
  pub head_dim: Option<i32>,
  /// `max_position_embeddings`
  pub max_position_embeddings: Option<i32>,
  /// `num_key_value_heads` (default `num_attention_heads`)
  pub num_key_value_heads: Option<i32>,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `mlp_bias`
  #[serde(default)]
  pub mlp_bias: bool,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
  /// `layer_types` (`full_attention` / `sliding_attention`)
  pub layer_types: Option<Vec<String>>,
  /// `sliding_window`
  pub sliding_window: Option<i32>,
}

/// Differences between the Llama-shaped families.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
  /// Bias on q/k/v (Qwen2: always; Llama: `attention_bias`).
  pub qkv_bias: bool,
  /// Bias on o_proj (Llama: `attention_bias`; Qwen2: never).
  pub o_bias: bool,
  /// RMSNorm on per-head q and k before RoPE (Qwen3).
  pub qk_norm: bool,
  /// Factor on the input embeddings (Granite `embedding_multiplier`).
  pub embedding_scale: f32,
  /// Factor on each branch output before its residual add (Granite
  /// `residual_multiplier`).
  pub residual_scale: f32,
  /// Attention scale instead of `head_dim^-0.5` (Granite
  /// `attention_multiplier`).
  pub attention_scale: Option<f32>,
  /// Divisor of the logits (Granite `logits_scaling`).
  pub logits_divisor: f32,
  /// An untied checkpoint without `lm_head.*` takes the embedding table
  /// as its head (MiniCPM's `sanitize`).
  pub head_from_embeddings: bool,
  /// Checkpoint tensors under these prefixes are dropped by sanitize
  /// (MiMo's `model.mtp_layers.`).
  pub drop_prefixes: &'static [&'static str],
}

impl Default for Variant {
  fn default() -> Variant {
    Variant {
      qkv_bias: false,
      o_bias: false,
      qk_norm: false,
      embedding_scale: 1.0,
      residual_scale: 1.0,
      attention_scale: None,
      logits_divisor: 1.0,
      head_from_embeddings: false,
      drop_prefixes: &[],
    }
  }
}

/// `x * s`, skipped when `s == 1` (bit-identical to the unscaled model).
fn scaled(x: Array, s: f32) -> Result<Array> {
  if s == 1.0 { Ok(x) } else { x * s }
}

struct Block {
  self_attn: Attention,
  mlp: SwiGluMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  sliding: bool,
  residual_scale: f32,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Block {
  /// The block's parts for [`fused_rows::PrenormBlock`].
  fn parts(&self) -> fused_rows::PrenormBlock<'_> {
    fused_rows::PrenormBlock {
      input_norm: &self.input_layernorm,
      attn: &self.self_attn,
      post_norm: &self.post_attention_layernorm,
      mlp: &self.mlp,
    }
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &scaled(r, self.residual_scale)?)?;
    let r = self
      .mlp
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &scaled(r, self.residual_scale)?)
  }

  /// One decoded row `x` (`[1, hidden]`) with the previous block's output
  /// `delta` not yet added: `(h, r)`, whose sum is the block's output
  /// ([`fused_rows::PrenormBlock::row`]: each norm with the add before it
  /// and the projection after it as one kernel where it can).
  fn forward_row(
    &self,
    x: &Array,
    delta: Option<&Array>,
    mask: &AttnMask,
    cache: &mut KvCache,
  ) -> Result<(Array, Array)> {
    self.parts().row(x, delta, mask, cache)
  }
}

struct Inner {
  embed_tokens: Embedding,
  layers: Vec<Shared<Block>>,
  norm: RmsNorm,
}
module!(Inner {
  embed_tokens,
  layers,
  norm
});

/// A Llama-shaped decoder (mlx-lm `llama.Model`).
pub struct Llama {
  args: LlamaArgs,
  variant: Variant,
  model: Inner,
  lm_head: Option<Linear>,
  pipeline: Option<crate::pipeline::PipelineStage>,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(Llama { model, lm_head });

impl Llama {
  /// Build from parsed args and the family's variant flags.
  pub fn new(args: LlamaArgs, v: Variant) -> Result<Llama> {
    let n_heads = args.num_attention_heads;
    let n_kv = args.num_key_value_heads.unwrap_or(n_heads);
    super::base::check_heads(
      "llama",
      args.hidden_size,
      n_heads,
      n_kv,
      args.num_hidden_layers,
    )?;
    let head_dim = args.head_dim.unwrap_or(args.hidden_size / n_heads);
    let h = args.hidden_size;
    let layer_types = args
      .layer_types
      .clone()
      .unwrap_or_else(|| vec!["full_attention".to_string(); args.num_hidden_layers as usize]);
    let mut layers = Vec::new();
    for lt in &layer_types {
      let rope = Rope::from_config(
        head_dim,
        args.rope_theta,
        args.rope_traditional,
        args.rope_scaling.as_ref(),
        args.max_position_embeddings,
      )?;
      let dims = AttnDims {
        hidden: h,
        n_heads,
        n_kv_heads: n_kv,
        head_dim,
        qkv_bias: v.qkv_bias,
        o_bias: v.o_bias,
        qk_norm: v.qk_norm.then_some(args.rms_norm_eps),
        qk_norm_full: None,
        scale: v.attention_scale.unwrap_or((head_dim as f32).powf(-0.5)),
      };
      layers.push(Shared::new(Block {
        self_attn: Attention::new(dims, Some(rope)),
        mlp: SwiGluMlp::new(h, args.intermediate_size, args.mlp_bias),
        input_layernorm: RmsNorm::new(h, args.rms_norm_eps),
        post_attention_layernorm: RmsNorm::new(h, args.rms_norm_eps),
        sliding: lt == "sliding_attention",
        residual_scale: v.residual_scale,
      }));
    }
    let lm_head = (!args.tie_word_embeddings).then(|| Linear::new(h, args.vocab_size, false));
    Ok(Llama {
      model: Inner {
        embed_tokens: Embedding::new(args.vocab_size, h),
        layers,
        norm: RmsNorm::new(h, args.rms_norm_eps),
      },
      lm_head,
      args,
      variant: v,
      pipeline: None,
      ckpt: None,
    })
  }

  /// Leave out the rotary embedding of each layer `i` with `!use_rope[i]`
  /// (SmolLM3's NoPE layers; python smollm3.py sets those layers'
  /// `self_attn.rope` to a no-op).
  pub fn without_rope(&mut self, use_rope: &[bool]) -> Result<()> {
    if use_rope.len() != self.model.layers.len() {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "config: no_rope_layers has {} entries for {} layers",
        use_rope.len(),
        self.model.layers.len()
      )));
    }
    for (layer, &on) in self.model.layers.iter().zip(use_rope) {
      if !on {
        layer.lock().self_attn.drop_rope();
      }
    }
    Ok(())
  }
}

/// Registry entry for `llama` / `mistral`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let args: LlamaArgs = parse_args(config)?;
  let v = Variant {
    qkv_bias: args.attention_bias,
    o_bias: args.attention_bias,
    ..Variant::default()
  };
  Ok(Box::new(Llama::new(args, v)?))
}

/// Whether `h` (`[B, T, hidden]`) holds a single row of a single token.
fn is_one_row(h: &Array) -> bool {
  let s = h.shape();
  s.len() == 3 && s[0] == 1 && s[1] == 1
}

impl Llama {
  /// The decoder stack over input embeddings `h`; `key_valid` (rows of a
  /// left-padded batch, see [`LanguageModel::hidden_padded`]) replaces the
  /// causal masks by per-row padded ones, `mask` replaces them for every
  /// layer (see [`LanguageModel::hidden_from_embeddings`]).
  fn run(
    &self,
    mut h: Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
    mask: Option<&AttnMask>,
  ) -> Result<Array> {
    h = scaled(h, self.variant.embedding_scale)?;
    let n = h.dim(1).unwrap_or(1);
    let sliding: Vec<bool> = self.model.layers.iter().map(|l| l.lock().sliding).collect();
    let (fa_mask, swa_mask) = layer_masks(
      &sliding,
      caches,
      n,
      self.args.sliding_window,
      key_valid,
      mask,
    )?;
    // A long prefill on a GPU queues layer by layer (`prefill_pace`; not
    // under pipeline parallelism, whose stages wait on each other).
    let mut pace = match &self.pipeline {
      None => PrefillPace::for_input(&h),
      Some(_) => PrefillPace::off(),
    };
    let mut layers = |mut h: Array| -> Result<Array> {
      for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
        let mask = if sliding[i] { &swa_mask } else { &fa_mask };
        h = match &self.ckpt {
          None => layer.lock().forward(&h, mask, cache)?,
          Some(trainable) => {
            // Python `grad_checkpoint`: the block as one checkpointed
            // function of `h` and its trainable tensors; the cache is left
            // as it was.
            let (mask, cache) = (mask.clone(), cache.clone());
            let prefix = format!("model.layers.{i}");
            let out = checkpoint::run(
              layer,
              &prefix,
              trainable,
              std::slice::from_ref(&h),
              move |b, xs| Ok(vec![b.forward(&xs[0], &mask, &mut cache.clone())?]),
            )?;
            out.into_iter().next().ok_or_else(|| {
              mlxrs_core::Error::InvalidArgument(format!("grad checkpoint ({prefix}): no output"))
            })?
          }
        };
        pace.layer_done(&h)?;
      }
      Ok(h)
    };
    match &self.pipeline {
      Some(stage) => self.model.norm.forward(&stage.forward(h, layers)?),
      // One row of one token with unscaled residuals: each block's output
      // is added inside the next block's first norm (`Block::forward_row`).
      None
        if n == 1
          && self.ckpt.is_none()
          && is_one_row(&h)
          && self.variant.residual_scale == 1.0 =>
      {
        let s = h.shape();
        let mut x = ops::reshape(&h, &[1, s[2]])?;
        let mut delta: Option<Array> = None;
        for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
          let mask = if sliding[i] { &swa_mask } else { &fa_mask };
          let (h, r) = layer.lock().forward_row(&x, delta.as_ref(), mask, cache)?;
          x = h;
          delta = Some(r);
        }
        let x = fused_rows::add_pending(&x, delta.as_ref())?;
        ops::reshape(&self.model.norm.forward(&x)?, &s)
      }
      // One token per row (a decode step): the layers run on `[B, hidden]`,
      // so no matmul of the step flattens / unflattens its input (fewer
      // graph nodes for MLX to walk; `Attention` takes such rows).
      None if n == 1 && self.ckpt.is_none() => {
        let s = h.shape();
        let rows = layers(ops::reshape(&h, &[s[0], s[2]])?)?;
        ops::reshape(&self.model.norm.forward(&rows)?, &s)
      }
      None => self.model.norm.forward(&layers(h)?),
    }
  }
}

impl LanguageModel for Llama {
  fn fuse_projections(&mut self) -> Result<()> {
    for b in &self.model.layers {
      let mut b = b.lock();
      b.self_attn.fuse_projections()?;
      b.mlp.fuse_projections()?;
    }
    match &mut self.lm_head {
      Some(head) => head.keep_transposed()?,
      None => self.model.embed_tokens.keep_transposed()?,
    }
    // Compile the fused decode kernels at load, not at the first token.
    match self.model.layers.first() {
      Some(b) => {
        let b = b.lock();
        b.parts().warm()
      }
      None => Ok(()),
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
    crate::batch::check_padded_caches(caches)?;
    self.run(self.embed_tokens(tokens)?, caches, Some(key_valid), None)
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    let out = match &self.lm_head {
      Some(head) => head.forward(hidden)?,
      None => self.model.embed_tokens.as_linear(hidden)?,
    };
    scaled(out, 1.0 / self.variant.logits_divisor)
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .map(|l| {
        let sliding = l.lock().sliding;
        let window = if sliding {
          self.args.sliding_window
        } else {
          None
        };
        match window.or(max_kv_size) {
          Some(m) => KvCache::new(KvCacheKind::Rotating {
            max_size: m,
            keep: if sliding { 0 } else { 4 },
          }),
          None => KvCache::standard(),
        }
      })
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn sanitize(&self, mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    weights.retain(|k, _| {
      !k.contains("self_attn.rotary_emb.inv_freq")
        && !self.variant.drop_prefixes.iter().any(|p| k.starts_with(p))
    });
    if self.args.tie_word_embeddings {
      weights.remove("lm_head.weight");
      weights.remove("lm_head.scales");
      weights.remove("lm_head.biases");
    } else if self.variant.head_from_embeddings && !weights.contains_key("lm_head.weight") {
      for kind in ["weight", "scales", "biases"] {
        if let Some(w) = weights.get(&format!("model.embed_tokens.{kind}")) {
          weights.insert(format!("lm_head.{kind}"), w.clone());
        }
      }
    }
    Ok(weights)
  }

  fn vocab_size(&self) -> i32 {
    self.args.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }

  fn evaluates_in_forward(&self) -> bool {
    // A pipeline stage evaluates its output to send it.
    self.pipeline.is_some()
  }

  fn set_pipeline(&mut self, stage: crate::pipeline::PipelineStage) -> Result<()> {
    if stage.layers() != self.model.layers.len() as i32 {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "pipeline stage has {} layers but the model was built with {}",
        stage.layers(),
        self.model.layers.len()
      )));
    }
    self.pipeline = Some(stage);
    Ok(())
  }

  fn set_grad_checkpoint(&mut self, trainable: Option<BTreeSet<String>>) -> Result<()> {
    self.ckpt = trainable.map(Arc::new);
    Ok(())
  }
}
