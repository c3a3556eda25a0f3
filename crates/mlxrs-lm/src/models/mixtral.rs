//! Mixtral: mlx-lm's `models/mixtral.py` — the Llama/Mistral attention with
//! a sparse MoE MLP in every layer (`block_sparse_moe`): top-k on the raw
//! router logits, softmax over the k, experts in a [`SwitchGlu`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, Linear, Module, RmsNorm, Rope, SwitchGlu, Weights,
  module,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_caches, check_heads, check_moe, default_caches, last_axis, stack_experts};
use super::checkpoint::{self, Shared, Trainable};
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

fn d_vocab() -> i32 {
  32000
}
fn d_hidden() -> i32 {
  4096
}
fn d_inter() -> i32 {
  14336
}
fn d_layers() -> i32 {
  32
}
fn d_heads() -> i32 {
  32
}
fn d_topk() -> i32 {
  2
}
fn d_kv() -> Option<i32> {
  Some(8)
}
fn d_experts() -> i32 {
  8
}
fn d_eps() -> f32 {
  1e-5
}
fn d_theta() -> f32 {
  1e6
}

/// `ModelArgs` of mlx-lm's mixtral.py (same defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct MixtralArgs {
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `hidden_size`
  #[serde(default = "d_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size` (per expert)
  #[serde(default = "d_inter")]
  pub intermediate_size: i32,
  /// `num_hidden_layers`
  #[serde(default = "d_layers")]
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `head_dim` (default `hidden_size / num_attention_heads`, as mlx-lm;
  /// a tensor-parallel rank sets it, see [`crate::shard`])
  #[serde(default)]
  pub head_dim: Option<i32>,
  /// `num_experts_per_tok`
  #[serde(default = "d_topk")]
  pub num_experts_per_tok: i32,
  /// `num_key_value_heads` (null: `num_attention_heads`)
  #[serde(default = "d_kv")]
  pub num_key_value_heads: Option<i32>,
  /// `num_local_experts`
  #[serde(default = "d_experts")]
  pub num_local_experts: i32,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
}

struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  n_heads: i32,
  n_kv_heads: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention {
  q_proj,
  k_proj,
  v_proj,
  o_proj
});

impl Attention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads =
      |t: Array, n: i32| ops::transpose_axes(&ops::reshape(&t, &[b, l, n, -1])?, &[0, 2, 1, 3]);
    let q = heads(self.q_proj.forward(x)?, self.n_heads)?;
    let k = heads(self.k_proj.forward(x)?, self.n_kv_heads)?;
    let v = heads(self.v_proj.forward(x)?, self.n_kv_heads)?;
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    self.o_proj.forward(&ops::reshape(
      &ops::transpose_axes(&o, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)
  }
}

/// `MixtralSparseMoeBlock`.
struct SparseMoe {
  gate: Linear,
  switch_mlp: SwitchGlu,
  top_k: i32,
}
module!(SparseMoe { gate, switch_mlp });

impl SparseMoe {
  fn forward(&self, x: &Array) -> Result<Array> {
    let gates = self.gate.forward(x)?;
    let k = self.top_k;
    let inds = ops::stop_gradient(&last_axis(
      &ops::argpartition_axis(&ops::negative(&gates)?, k - 1, -1)?,
      0,
      k,
    )?)?;
    let scores = ops::softmax_axis(&ops::take_along_axis(&gates, &inds, -1)?, -1, true)?;
    let y = self.switch_mlp.forward(x, &inds)?;
    ops::sum_axis(
      &ops::multiply(&y, &ops::expand_dims(&scores, -1)?)?,
      -2,
      false,
    )
  }
}

struct Block {
  self_attn: Attention,
  block_sparse_moe: SparseMoe,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block {
  self_attn,
  block_sparse_moe,
  input_layernorm,
  post_attention_layernorm
});

impl Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = ops::add(
      x,
      &self
        .self_attn
        .forward(&self.input_layernorm.forward(x)?, mask, cache)?,
    )?;
    ops::add(
      &h,
      &self
        .block_sparse_moe
        .forward(&self.post_attention_layernorm.forward(&h)?)?,
    )
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

/// mlx-lm `mixtral.Model`.
pub struct Mixtral {
  args: MixtralArgs,
  model: Inner,
  lm_head: Option<Linear>,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(Mixtral { model, lm_head });

impl Mixtral {
  /// Build from parsed args.
  pub fn new(args: MixtralArgs) -> Result<Mixtral> {
    let (h, n_heads) = (args.hidden_size, args.num_attention_heads);
    let n_kv = args.num_key_value_heads.unwrap_or(n_heads);
    check_heads("mixtral", h, n_heads, n_kv, args.num_hidden_layers)?;
    check_moe("mixtral", args.num_local_experts, args.num_experts_per_tok)?;
    // mlx-lm: head_dim = hidden_size // num_attention_heads.
    let head_dim = args.head_dim.unwrap_or(h / n_heads);
    let eps = args.rms_norm_eps;
    let layers: Vec<Block> = (0..args.num_hidden_layers)
      .map(|_| Block {
        self_attn: Attention {
          q_proj: Linear::new(h, n_heads * head_dim, false),
          k_proj: Linear::new(h, n_kv * head_dim, false),
          v_proj: Linear::new(h, n_kv * head_dim, false),
          o_proj: Linear::new(n_heads * head_dim, h, false),
          n_heads,
          n_kv_heads: n_kv,
          scale: (head_dim as f32).powf(-0.5),
          // mlx-lm uses a plain nn.RoPE (rope_scaling is not applied).
          rope: Rope::new(head_dim, args.rope_traditional, args.rope_theta, 1.0),
        },
        block_sparse_moe: SparseMoe {
          gate: Linear::new(h, args.num_local_experts, false),
          switch_mlp: SwitchGlu::new(
            h,
            args.intermediate_size,
            args.num_local_experts,
            GluActivation::SwiGlu,
            false,
          ),
          top_k: args.num_experts_per_tok,
        },
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
      })
      .collect();
    let lm_head = (!args.tie_word_embeddings).then(|| Linear::new(h, args.vocab_size, false));
    Ok(Mixtral {
      model: Inner {
        embed_tokens: Embedding::new(args.vocab_size, h),
        layers: layers.into_iter().map(Shared::new).collect(),
        norm: RmsNorm::new(h, eps),
      },
      lm_head,
      args,
      ckpt: None,
    })
  }
}

/// Registry entry for `mixtral`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(Mixtral::new(parse_args(config)?)?))
}

impl Mixtral {
  /// The decoder stack; `key_valid` (rows of a left-padded batch, see
  /// [`LanguageModel::hidden_padded`]) replaces the causal mask by padded ones.
  fn run(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
  ) -> Result<Array> {
    check_caches(caches.len(), self.model.layers.len())?;
    let mut h = self.model.embed_tokens.forward(tokens)?;
    let n = tokens.dim(-1).unwrap_or(1);
    let mask = match (caches.first(), key_valid) {
      (Some(c), Some(kv)) => crate::batch::padded_mask(kv, n, c.offset, None)?,
      (Some(c), None) => c.make_mask(n, None)?,
      (None, _) => AttnMask::None,
    };
    let mut pace = PrefillPace::for_input(&h);
    for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
      let prefix = || format!("model.layers.{i}");
      h = checkpoint::block(&self.ckpt, layer, prefix, &h, &mask, cache, Block::forward)?;
      pace.layer_done(&h)?;
    }
    self.model.norm.forward(&h)
  }
}

impl LanguageModel for Mixtral {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.run(tokens, caches, None)
  }

  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    crate::batch::check_padded_caches(caches)?;
    self.run(tokens, caches, Some(key_valid))
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    match &self.lm_head {
      Some(head) => head.forward(hidden),
      None => self.model.embed_tokens.as_linear(hidden),
    }
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    default_caches(self.model.layers.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  /// mlx-lm `Model.sanitize`: HF `block_sparse_moe.experts.{e}.w1/w2/w3`
  /// stacked into `switch_mlp.gate_proj/down_proj/up_proj`.
  fn sanitize(&self, mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    if self.args.tie_word_embeddings {
      weights.remove("lm_head.weight");
    }
    weights.retain(|k, _| !k.contains("self_attn.rotary_emb.inv_freq"));
    let prefixes: Vec<String> = (0..self.args.num_hidden_layers)
      .map(|l| format!("model.layers.{l}.block_sparse_moe"))
      .collect();
    stack_experts(
      &mut weights,
      &prefixes,
      self.args.num_local_experts,
      &[("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")],
    )?;
    Ok(weights)
  }

  fn vocab_size(&self) -> i32 {
    self.args.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }

  fn set_grad_checkpoint(&mut self, trainable: Option<BTreeSet<String>>) -> Result<()> {
    self.ckpt = trainable.map(Arc::new);
    Ok(())
  }
}
