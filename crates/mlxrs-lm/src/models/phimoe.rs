//! Phi-3.5-MoE (and Phi-mini-MoE): mlx-lm's `models/phimoe.py` — LayerNorm
//! blocks, q/k/v/o biases, `SuScaledRoPE` (the long factors and
//! `long_mscale`; plain RoPE when `rope_scaling` is null), and a
//! `block_sparse_moe` of SwiGLU experts routed by HF's `sparsemixer`
//! (inference path); `lm_head` with a bias. HF per-expert `w1`/`w2`/`w3`
//! tensors are stacked by `sanitize`.

use std::collections::HashMap;

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, LayerNorm, Linear, Rope, SwitchGlu, module,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, check_moe, stack_found_experts};
use super::decoder::{Decoder, DecoderOpts, Layer};
use crate::model::{LanguageModel, parse_args};

fn d_vocab() -> i32 {
  32064
}
fn d_hidden() -> i32 {
  4096
}
fn d_inter() -> i32 {
  6400
}
fn d_layers() -> i32 {
  32
}
fn d_heads() -> i32 {
  32
}
fn d_kv() -> i32 {
  8
}
fn d_max_pos() -> i32 {
  131072
}
fn d_orig_pos() -> i32 {
  4096
}
fn d_eps() -> f32 {
  1e-6
}
fn d_experts() -> i32 {
  16
}
fn d_topk() -> i32 {
  2
}
fn d_theta() -> f32 {
  10000.0
}
fn d_jitter() -> f32 {
  0.01
}

/// `ModelArgs` of mlx-lm's phimoe.py (same defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct PhiMoeArgs {
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
  /// `num_key_value_heads`
  #[serde(default = "d_kv")]
  pub num_key_value_heads: i32,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
  /// `original_max_position_embeddings`
  #[serde(default = "d_orig_pos")]
  pub original_max_position_embeddings: i32,
  /// `rms_norm_eps` (the LayerNorms' epsilon)
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `rope_scaling` (`long_factor`, `long_mscale`; null: plain RoPE)
  pub rope_scaling: Option<Value>,
  /// `num_local_experts`
  #[serde(default = "d_experts")]
  pub num_local_experts: i32,
  /// `num_experts_per_tok`
  #[serde(default = "d_topk")]
  pub num_experts_per_tok: i32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `router_jitter_noise` (sparsemixer's band)
  #[serde(default = "d_jitter")]
  pub router_jitter_noise: f32,
}

/// `PhiMoESparseMoeBlock`.
struct SparseMixerMoe {
  gate: Linear,
  switch_mlp: SwitchGlu,
  top_k: i32,
  jitter_eps: f32,
}
module!(SparseMixerMoe { gate, switch_mlp });

/// HF's `sparsemixer` at inference (python `phimoe.sparsemixer`): `top_k`
/// rounds, each taking the best remaining expert and, as its weight, its
/// softmax probability among the experts within a relative band
/// `2 * jitter_eps` of it.
fn sparsemixer(gates: &Array, top_k: i32, jitter_eps: f32) -> Result<(Array, Array)> {
  let dt = gates.dtype();
  let neg_inf = Array::scalar_as(f64::NEG_INFINITY, dt)?;
  let band_eps = Array::scalar_as(2.0 * jitter_eps as f64, dt)?;
  let mut masked = gates.clone();
  let (mut inds, mut scores) = (Vec::new(), Vec::new());
  let abs = ops::abs(gates)?;
  for _ in 0..top_k {
    let top = ops::max_axis(&masked, -1, true)?;
    let ind = ops::stop_gradient(&ops::argmax_axis(&masked, -1, true)?)?;
    let factor = ops::maximum(&abs, &top)?;
    let rel = ops::divide(&ops::subtract(&top, gates)?, &factor)?;
    let band = ops::where_(&ops::greater(&rel, &band_eps)?, &neg_inf, &masked)?;
    let band = ops::softmax_axis(&band, -1, true)?;
    scores.push(ops::take_along_axis(&band, &ind, -1)?);
    masked = ops::put_along_axis(&masked, &ind, &neg_inf, -1)?;
    inds.push(ind);
  }
  Ok((
    ops::concatenate_axis(&inds, -1)?,
    ops::concatenate_axis(&scores, -1)?,
  ))
}

impl SparseMixerMoe {
  fn forward(&self, x: &Array) -> Result<Array> {
    let (inds, scores) = sparsemixer(&self.gate.forward(x)?, self.top_k, self.jitter_eps)?;
    let y = self.switch_mlp.forward(x, &inds)?;
    ops::sum_axis(
      &ops::multiply(&y, &ops::expand_dims(&scores, -1)?)?,
      -2,
      false,
    )
  }
}

/// `PhiMoEDecoderLayer`.
struct Block {
  self_attn: Attention,
  block_sparse_moe: SparseMixerMoe,
  input_layernorm: LayerNorm,
  post_attention_layernorm: LayerNorm,
}
module!(Block {
  self_attn,
  block_sparse_moe,
  input_layernorm,
  post_attention_layernorm
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()
  }

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
}

fn sanitize(mut w: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  stack_found_experts(
    &mut w,
    "block_sparse_moe",
    &[("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")],
  )?;
  Ok(w)
}

/// The attention's RoPE: `SuScaledRoPE` over the whole head from the long
/// factors, or a plain RoPE when `rope_scaling` is null.
fn make_rope(a: &PhiMoeArgs, head_dim: i32) -> Result<Rope> {
  match a.rope_scaling.as_ref().filter(|v| !v.is_null()) {
    None => Ok(Rope::new(head_dim, false, a.rope_theta, 1.0)),
    Some(rs) => {
      let need = |k: &str| {
        rs.get(k).filter(|v| !v.is_null()).cloned().ok_or_else(|| {
          mlxrs_core::Error::InvalidArgument(format!(
            "config.json (phimoe): field \"rope_scaling\" needs {k:?}"
          ))
        })
      };
      let cfg = json!({
        "type": "longrope",
        "original_max_position_embeddings": a.original_max_position_embeddings,
        "long_factor": need("long_factor")?,
        "long_mscale": need("long_mscale")?,
      });
      Rope::from_config(
        head_dim,
        a.rope_theta,
        false,
        Some(&cfg),
        Some(a.max_position_embeddings),
      )
    }
  }
}

/// Registry entry for `phimoe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: PhiMoeArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("phimoe", h, nh, nkv, a.num_hidden_layers)?;
  check_moe("phimoe", a.num_local_experts, a.num_experts_per_tok)?;
  let hd = h / nh;
  let dims = AttnDims::new(h, nh, nkv, hd, (true, true));
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    layers.push(Box::new(Block {
      self_attn: Attention::new(dims, Some(make_rope(&a, hd)?)),
      block_sparse_moe: SparseMixerMoe {
        gate: Linear::new(h, a.num_local_experts, false),
        switch_mlp: SwitchGlu::new(
          h,
          a.intermediate_size,
          a.num_local_experts,
          GluActivation::SwiGlu,
          false,
        ),
        top_k: a.num_experts_per_tok,
        jitter_eps: a.router_jitter_noise,
      },
      input_layernorm: LayerNorm::new(h, eps, true, true),
      post_attention_layernorm: LayerNorm::new(h, eps, true, true),
    }));
  }
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(LayerNorm::new(h, eps, true, true)),
    "norm",
    Some(Linear::new(h, a.vocab_size, true)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied: false,
      stack_experts: None,
      sanitize: Some(sanitize),
    },
  )))
}
