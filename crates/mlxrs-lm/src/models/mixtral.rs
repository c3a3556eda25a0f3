//! Mixtral: mlx-lm's `models/mixtral.py` — the Llama/Mistral attention with
//! a sparse MoE MLP in every layer (`block_sparse_moe`): top-k on the raw
//! router logits, softmax over the k, experts in a [`SwitchGlu`]. On the
//! shared `Decoder` and `Attention`.

use std::collections::HashMap;

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, Linear, RmsNorm, Rope, SwitchGlu, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, check_moe, last_axis, stack_experts};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::fused_rows;
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
  /// `num_local_experts` (sanitize stacks the HF experts).
  n_experts: i32,
}
module!(Block {
  self_attn,
  block_sparse_moe,
  input_layernorm,
  post_attention_layernorm
});

impl Block {
  /// The block's norms and attention for [`fused_rows::PrenormAttention`]
  /// (decoded rows: the MoE output is left to the next layer's norm).
  fn parts(&self) -> fused_rows::PrenormAttention<'_> {
    fused_rows::PrenormAttention {
      input_norm: &self.input_layernorm,
      attn: &self.self_attn,
      post_norm: &self.post_attention_layernorm,
    }
  }
}

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let r = self
      .block_sparse_moe
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &r)
  }

  /// mlx-lm `Model.sanitize`: HF `block_sparse_moe.experts.{e}.w1/w2/w3`
  /// stacked into `switch_mlp.gate_proj/down_proj/up_proj`.
  fn sanitize(&self, prefix: &str, weights: &mut HashMap<String, Array>) -> Result<()> {
    stack_experts(
      weights,
      &[format!("{prefix}.block_sparse_moe")],
      self.n_experts,
      &[("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")],
    )
  }

  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.parts().warm()
  }

  fn forward_row(
    &self,
    x: &Array,
    delta: Option<&Array>,
    mask: &AttnMask,
    cache: &mut KvCache,
    _shared: &mut Option<(Array, Array)>,
  ) -> Result<(Array, Option<Array>)> {
    let (h, r) = self
      .parts()
      .row(x, delta, mask, cache, |n| self.block_sparse_moe.forward(n))?;
    Ok((h, Some(r)))
  }
}

/// Registry entry for `mixtral` (mlx-lm `mixtral.Model`).
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let args: MixtralArgs = parse_args(config)?;
  let (h, n_heads) = (args.hidden_size, args.num_attention_heads);
  let n_kv = args.num_key_value_heads.unwrap_or(n_heads);
  check_heads("mixtral", h, n_heads, n_kv, args.num_hidden_layers)?;
  check_moe("mixtral", args.num_local_experts, args.num_experts_per_tok)?;
  // mlx-lm: head_dim = hidden_size // num_attention_heads.
  let head_dim = args.head_dim.unwrap_or(h / n_heads);
  let eps = args.rms_norm_eps;
  let dims = AttnDims::new(h, n_heads, n_kv, head_dim, (false, false));
  let layers: Vec<Box<dyn Layer>> = (0..args.num_hidden_layers)
    .map(|_| {
      Box::new(Block {
        // mlx-lm uses a plain nn.RoPE (rope_scaling is not applied).
        self_attn: Attention::new(
          dims,
          Some(Rope::new(
            head_dim,
            args.rope_traditional,
            args.rope_theta,
            1.0,
          )),
        ),
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
        n_experts: args.num_local_experts,
      }) as Box<dyn Layer>
    })
    .collect();
  let tied = args.tie_word_embeddings;
  Ok(Box::new(Decoder::new(
    Embedding::new(args.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!tied).then(|| Linear::new(h, args.vocab_size, false)),
    DecoderOpts {
      vocab_size: args.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied,
      stack_experts: None,
      sanitize: None,
    },
  )))
}
