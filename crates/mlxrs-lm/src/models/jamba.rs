//! Jamba (AI21): mlx-lm's `models/jamba.py` — a hybrid of Mamba-1 mixers
//! ([`super::mamba::Mixer`] with weighted RMSNorms on delta, B, C) and
//! attention without positional encoding (`attn_layer_period` /
//! `attn_layer_offset`, or `layers_block_type`), each followed by a SwiGLU
//! MLP or, every `expert_layer_period` layers, a top-k MoE whose scores are
//! the softmax of the chosen router logits. Caches: `ArraysCache(2)` for
//! Mamba layers, `KVCache` for attention layers.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, GluActivation, KvCache, Linear, RmsNorm, SwitchGlu, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::mamba::{Mixer, sanitize_conv, time_step_rank};
use super::mlp::SwiGluMlp;
use super::moe::topk_then_softmax;
use crate::model::{LanguageModel, parse_args};

fn d_auto() -> Value {
  Value::from("auto")
}
fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's jamba.py.
#[derive(Debug, Clone, Deserialize)]
pub struct JambaArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size` (MLP and each expert)
  pub intermediate_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `attn_layer_offset`
  pub attn_layer_offset: i32,
  /// `attn_layer_period`
  pub attn_layer_period: i32,
  /// `expert_layer_offset`
  pub expert_layer_offset: i32,
  /// `expert_layer_period`
  pub expert_layer_period: i32,
  /// `mamba_d_conv`
  pub mamba_d_conv: i32,
  /// `mamba_d_state`
  pub mamba_d_state: i32,
  /// `mamba_expand`
  pub mamba_expand: i32,
  /// `num_experts` (<= 1: no MoE)
  pub num_experts: i32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `mamba_dt_rank` (integer or `"auto"`)
  #[serde(default = "d_auto")]
  pub mamba_dt_rank: Value,
  /// `mamba_proj_bias`
  #[serde(default)]
  pub mamba_proj_bias: bool,
  /// `mamba_conv_bias`
  #[serde(default = "d_true")]
  pub mamba_conv_bias: bool,
  /// `layers_block_type` (`attention` / `mamba`; default from the period)
  #[serde(default)]
  pub layers_block_type: Option<Vec<String>>,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
}

/// `JambaSparseMoeBlock`: the top-k router logits, softmaxed, weight the
/// chosen experts.
struct Moe {
  router: Linear,
  switch_mlp: SwitchGlu,
  top_k: i32,
}
module!(Moe { router, switch_mlp });

impl Moe {
  fn forward(&self, x: &Array) -> Result<Array> {
    let (inds, scores) = topk_then_softmax(&self.router.forward(x)?, self.top_k)?;
    let y = self.switch_mlp.forward(x, &inds)?;
    ops::sum_axis(&(&y * &scores.expand_dims(-1)?)?, -2, false)
  }
}

enum Ffn {
  Dense(SwiGluMlp),
  Sparse(Moe),
}

impl mlxrs_nn::Module for Ffn {
  fn load(&mut self, w: &mut mlxrs_nn::Weights, p: &str) {
    match self {
      Ffn::Dense(m) => m.load(w, p),
      Ffn::Sparse(m) => m.load(w, p),
    }
  }
  fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Ffn::Dense(m) => m.visit(p, f),
      Ffn::Sparse(m) => m.visit(p, f),
    }
  }
  fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    match self {
      Ffn::Dense(m) => m.visit_mut(p, f),
      Ffn::Sparse(m) => m.visit_mut(p, f),
    }
  }
  fn visit_frozen(&self, p: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    match self {
      Ffn::Dense(m) => m.visit_frozen(p, f),
      Ffn::Sparse(m) => m.visit_frozen(p, f),
    }
  }
  fn visit_quantizable_mut(
    &mut self,
    p: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    match self {
      Ffn::Dense(m) => m.visit_quantizable_mut(p, f),
      Ffn::Sparse(m) => m.visit_quantizable_mut(p, f),
    }
  }
}

struct Layer {
  self_attn: Option<Attention>,
  mamba: Option<Mixer>,
  feed_forward: Ffn,
  input_layernorm: RmsNorm,
  pre_ff_layernorm: RmsNorm,
}
module!(Layer {
  self_attn,
  mamba,
  feed_forward,
  input_layernorm,
  pre_ff_layernorm
});

impl HybridLayer for Layer {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let n = self.input_layernorm.forward(x)?;
    let h = match (&self.self_attn, &self.mamba) {
      (Some(a), _) => a.forward(&n, mask, cache)?,
      (None, Some(m)) => {
        let h = m.forward(&n, cache)?;
        cache.offset += x.dim(1).unwrap_or(0);
        h
      }
      _ => return Err(Error::InvalidArgument("jamba layer without a mixer".into())),
    };
    let r = (x + &h)?;
    let f = self.pre_ff_layernorm.forward(&r)?;
    let f = match &self.feed_forward {
      Ffn::Dense(m) => m.forward(&f)?,
      Ffn::Sparse(m) => m.forward(&f)?,
    };
    &r + &f
  }
  fn new_cache(&self) -> Option<KvCache> {
    Some(if self.self_attn.is_some() {
      KvCache::standard()
    } else {
      KvCache::arrays(2)
    })
  }
  fn is_attention(&self) -> bool {
    self.self_attn.is_some()
  }
}

/// mlx-lm jamba.py's `sanitize`: conv weights to MLX layout, per-expert
/// tensors stacked into `switch_mlp` (the tied head is dropped by
/// [`HybridLm`]).
fn sanitize_with(
  weights: HashMap<String, Array>,
  n_layers: i32,
  n_experts: i32,
) -> Result<HashMap<String, Array>> {
  let mut w = sanitize_conv(weights)?;
  let prefixes: Vec<String> = (0..n_layers)
    .map(|l| format!("model.layers.{l}.feed_forward"))
    .collect();
  super::base::stack_experts(
    &mut w,
    &prefixes,
    n_experts,
    &[
      ("gate_proj", "gate_proj"),
      ("down_proj", "down_proj"),
      ("up_proj", "up_proj"),
    ],
  )?;
  Ok(w)
}

struct Jamba {
  inner: HybridLm,
  n_layers: i32,
  n_experts: i32,
}

impl LanguageModel for Jamba {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.inner.hidden(tokens, caches)
  }
  fn logits(&self, hidden: &Array) -> Result<Array> {
    self.inner.logits(hidden)
  }
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self.inner.make_caches(max_kv_size)
  }
  fn load(&mut self, w: &mut mlxrs_nn::Weights) {
    self.inner.load(w)
  }
  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let w = sanitize_with(weights, self.n_layers, self.n_experts)?;
    self.inner.sanitize(w)
  }
  fn vocab_size(&self) -> i32 {
    self.inner.vocab_size()
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(f)
  }
}

/// Registry entry for `jamba`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: JambaArgs = parse_args(config)?;
  let h = a.hidden_size;
  super::base::check_heads(
    "jamba",
    h,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.num_hidden_layers,
  )?;
  let bad = |m: String| Error::InvalidArgument(format!("config.json (jamba): {m}"));
  if a.attn_layer_period <= 0 || a.expert_layer_period <= 0 || a.mamba_expand <= 0 {
    return Err(bad(
      "attn_layer_period, expert_layer_period and mamba_expand must be positive".into(),
    ));
  }
  if a.num_experts > 1 {
    super::base::check_moe("jamba", a.num_experts, a.num_experts_per_tok)?;
  }
  let types: Vec<String> = match &a.layers_block_type {
    Some(t) => t.clone(),
    None => (0..a.num_hidden_layers)
      .map(|i| {
        if i % a.attn_layer_period == a.attn_layer_offset {
          "attention".to_string()
        } else {
          "mamba".to_string()
        }
      })
      .collect(),
  };
  let rank = time_step_rank("jamba", &a.mamba_dt_rank, h)?;
  let inner = a.mamba_expand * h;
  let hd = h / a.num_attention_heads;
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for (i, t) in types.iter().enumerate() {
    let i = i as i32;
    let (self_attn, mamba) = match t.as_str() {
      "attention" => (
        Some(Attention::new(
          AttnDims::new(
            h,
            a.num_attention_heads,
            a.num_key_value_heads,
            hd,
            (false, false),
          ),
          None,
        )),
        None,
      ),
      "mamba" => (
        None,
        Some(Mixer::new(
          h,
          inner,
          a.mamba_d_state,
          a.mamba_d_conv,
          rank,
          a.mamba_proj_bias,
          a.mamba_conv_bias,
          None,
          Some(eps),
        )?),
      ),
      other => {
        return Err(bad(format!(
          "layers_block_type entry {other:?} is not attention or mamba"
        )));
      }
    };
    let sparse = a.num_experts > 1 && (i + a.expert_layer_offset) % a.expert_layer_period == 0;
    layers.push(Box::new(Layer {
      self_attn,
      mamba,
      feed_forward: if sparse {
        Ffn::Sparse(Moe {
          router: Linear::new(h, a.num_experts, false),
          switch_mlp: SwitchGlu::new(
            h,
            a.intermediate_size,
            a.num_experts,
            GluActivation::SwiGlu,
            false,
          ),
          top_k: a.num_experts_per_tok,
        })
      } else {
        Ffn::Dense(SwiGluMlp::new(h, a.intermediate_size, false))
      },
      input_layernorm: RmsNorm::new(h, eps),
      pre_ff_layernorm: RmsNorm::new(h, eps),
    }));
  }
  if !types.iter().any(|t| t == "attention") || !types.iter().any(|t| t == "mamba") {
    // python indexes the first attention and mamba layer (`.index`), so a
    // stack without either fails there too.
    return Err(bad(
      "the layer stack needs at least one attention and one mamba layer".into(),
    ));
  }
  let inner_lm = HybridLm::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    Names {
      root: "model",
      embed: "embed_tokens",
      layers: "layers",
      norm: "final_layernorm",
      head: "lm_head",
    },
    a.vocab_size,
    None,
  );
  Ok(Box::new(Jamba {
    inner: inner_lm,
    n_layers: a.num_hidden_layers,
    n_experts: a.num_experts,
  }))
}
