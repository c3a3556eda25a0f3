//! Ling / Ring (Bailing-MoE, Bailing-MoE-2): mlx-lm's
//! `models/bailing_moe.py` — attention with one fused `query_key_value`
//! projection (optional bias) and output `dense`, optional per-head q/k
//! RMSNorm before a (partial) RoPE; dense SwiGLU MLPs for the first
//! `first_k_dense_replace` layers, then a MoE routed by `gate.gate_proj`
//! (softmax or sigmoid scores, an optional `expert_bias` used only to
//! select, grouped top-k, renormalized, scaled by `routed_scaling_factor`)
//! plus shared experts. `sanitize` normalizes the `lm_head` columns when
//! `norm_head`, moves HF's `mlp.gate.weight` under `gate_proj`, and stacks
//! per-expert tensors.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, Linear, Param, RmsNorm, Rope, SwitchGlu, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_heads, check_moe, stack_found_experts};
use super::decoder::{Decoder, DecoderOpts, Layer, Names};
use super::mlp::SwiGluMlp;
use super::moe::{check_groups, group_expert_select};
use crate::model::{LanguageModel, parse_args};

fn d_one_f() -> f32 {
  1.0
}
fn d_one() -> i32 {
  1
}
fn d_four() -> i32 {
  4
}
fn d_true() -> bool {
  true
}
fn d_softmax() -> String {
  "softmax".into()
}

/// `ModelArgs` of mlx-lm's bailing_moe.py (same defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct BailingMoeArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size` (dense layers)
  pub intermediate_size: i32,
  /// `max_position_embeddings`
  pub max_position_embeddings: i32,
  /// `moe_intermediate_size` (per expert)
  pub moe_intermediate_size: i32,
  /// `num_experts`
  pub num_experts: i32,
  /// `num_shared_experts`
  pub num_shared_experts: i32,
  /// `norm_topk_prob`
  pub norm_topk_prob: bool,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `first_k_dense_replace`
  pub first_k_dense_replace: i32,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `use_bias` (MLPs, experts, `dense`)
  #[serde(default)]
  pub use_bias: bool,
  /// `use_qkv_bias`
  #[serde(default)]
  pub use_qkv_bias: bool,
  /// `norm_head` (normalize the `lm_head` columns in sanitize)
  #[serde(default)]
  pub norm_head: bool,
  /// `use_qk_norm`
  #[serde(default)]
  pub use_qk_norm: bool,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
  /// `partial_rotary_factor`
  #[serde(default = "d_one_f")]
  pub partial_rotary_factor: f32,
  /// `rotary_dim` (overrides `partial_rotary_factor`)
  pub rotary_dim: Option<i32>,
  /// `moe_router_enable_expert_bias`
  #[serde(default)]
  pub moe_router_enable_expert_bias: bool,
  /// `routed_scaling_factor`
  #[serde(default = "d_one_f")]
  pub routed_scaling_factor: f32,
  /// `score_function` (`softmax` / `sigmoid`)
  #[serde(default = "d_softmax")]
  pub score_function: String,
  /// `n_group`
  #[serde(default = "d_one")]
  pub n_group: i32,
  /// `topk_group`
  #[serde(default = "d_four")]
  pub topk_group: i32,
  /// `moe_shared_expert_intermediate_size` (default `moe_intermediate_size`)
  pub moe_shared_expert_intermediate_size: Option<i32>,
  /// `moe_router_enable_shared_expert`
  #[serde(default = "d_true")]
  pub moe_router_enable_shared_expert: bool,
}

/// `BailingMoeAttention`.
struct BailingAttention {
  query_key_value: Linear,
  dense: Linear,
  query_layernorm: Option<RmsNorm>,
  key_layernorm: Option<RmsNorm>,
  n_heads: i32,
  n_kv_heads: i32,
  head_dim: i32,
  rope: Rope,
}
module!(BailingAttention {
  query_key_value,
  dense,
  query_layernorm,
  key_layernorm
});

impl BailingAttention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let (q_size, kv_size) = (
      self.n_heads * self.head_dim,
      self.n_kv_heads * self.head_dim,
    );
    let qkv = self.query_key_value.forward(x)?;
    let parts = ops::split_sections(&qkv, &[q_size, q_size + kv_size], -1)?;
    let [q, k, v] = <[Array; 3]>::try_from(parts)
      .map_err(|_| Error::Mlx("split did not return three parts".into()))?;
    let heads = |t: &Array, n: i32| -> Result<Array> {
      ops::transpose_axes(&ops::reshape(t, &[b, l, n, self.head_dim])?, &[0, 2, 1, 3])
    };
    let (mut q, mut k, v) = (
      heads(&q, self.n_heads)?,
      heads(&k, self.n_kv_heads)?,
      heads(&v, self.n_kv_heads)?,
    );
    if let (Some(qn), Some(kn)) = (&self.query_layernorm, &self.key_layernorm) {
      q = qn.forward(&q)?;
      k = kn.forward(&k)?;
    }
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let scale = (self.head_dim as f32).powf(-0.5);
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, scale, mask, None)?;
    self.dense.forward(&ops::reshape(
      &ops::transpose_axes(&o, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)
  }
}

/// `BailingMoeGate`.
struct Gate {
  gate_proj: Linear,
  expert_bias: Option<Param>,
  sigmoid: bool,
  top_k: i32,
  n_group: i32,
  topk_group: i32,
  norm_topk_prob: bool,
  routed_scaling_factor: f32,
}
module!(Gate {
  gate_proj,
  expert_bias
});

/// `BailingMoeSparseMoeBlock`.
struct BailingMoe {
  switch_mlp: SwitchGlu,
  gate: Gate,
  shared_experts: Option<SwiGluMlp>,
}
module!(BailingMoe {
  switch_mlp,
  gate,
  shared_experts
});

impl BailingMoe {
  fn forward(&self, x: &Array) -> Result<Array> {
    let g = &self.gate;
    let logits = g.gate_proj.forward(x)?;
    let in_type = logits.dtype();
    let f = ops::astype(&logits, Dtype::Float32)?;
    let scores = if g.sigmoid {
      ops::sigmoid(&f)?
    } else {
      ops::softmax_axis(&f, -1, false)?
    };
    let (inds, w) = group_expert_select(
      &scores,
      g.expert_bias.as_ref().map(|b| &b.value),
      g.top_k,
      g.n_group,
      g.topk_group,
      g.norm_topk_prob.then_some(1e-20),
      g.routed_scaling_factor,
    )?;
    let w = ops::astype(&w, in_type)?;
    let y = self.switch_mlp.forward(x, &inds)?;
    let dt = y.dtype();
    let y = ops::astype(
      &ops::sum_axis(&ops::multiply(&y, &ops::expand_dims(&w, -1)?)?, -2, false)?,
      dt,
    )?;
    match &self.shared_experts {
      Some(s) => ops::add(&y, &s.forward(x)?),
      None => Ok(y),
    }
  }
}

/// `BailingMoeDecoderLayer`.
struct Block {
  attention: BailingAttention,
  dense: Option<SwiGluMlp>,
  moe: Option<BailingMoe>,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block { attention, dense => "mlp", moe => "mlp", input_layernorm, post_attention_layernorm });

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .attention
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let n = self.post_attention_layernorm.forward(&h)?;
    let r = match (&self.moe, &self.dense) {
      (Some(m), _) => m.forward(&n)?,
      (None, Some(d)) => d.forward(&n)?,
      (None, None) => {
        return Err(Error::InvalidArgument(
          "bailing_moe: layer without an MLP".into(),
        ));
      }
    };
    ops::add(&h, &r)
  }
}

/// bailing_moe.py's sanitize (without `norm_head`): HF's router
/// `mlp.gate.{weight,bias}` moved to `mlp.gate.gate_proj.*`, per-expert
/// tensors stacked.
fn sanitize(mut w: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  let gates: Vec<String> = w
    .keys()
    .filter(|k| k.ends_with(".mlp.gate.weight") || k.ends_with(".mlp.gate.bias"))
    .cloned()
    .collect();
  for k in gates {
    if let Some(v) = w.remove(&k) {
      w.insert(k.replace(".mlp.gate.", ".mlp.gate.gate_proj."), v);
    }
  }
  stack_found_experts(
    &mut w,
    "mlp",
    &[
      ("gate_proj", "gate_proj"),
      ("down_proj", "down_proj"),
      ("up_proj", "up_proj"),
    ],
  )?;
  Ok(w)
}

/// [`sanitize`] with `norm_head`: `lm_head.weight` divided by its norm over
/// the vocabulary axis (+1e-7), computed in float32.
fn sanitize_norm_head(mut w: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  if let Some(h) = w.remove("lm_head.weight") {
    let dt = h.dtype();
    let f = ops::astype(&h, Dtype::Float32)?;
    let norm = ops::sqrt(&ops::sum_axis(&ops::square(&f)?, 0, true)?)?;
    let norm = ops::add(&norm, &Array::scalar(1e-7f32))?;
    w.insert(
      "lm_head.weight".into(),
      ops::astype(&ops::divide(&h, &norm)?, dt)?,
    );
  }
  sanitize(w)
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (bailing_moe): {msg}"))
}

/// Registry entry for `bailing_moe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: BailingMoeArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("bailing_moe", h, nh, nkv, a.num_hidden_layers)?;
  check_moe("bailing_moe", a.num_experts, a.num_experts_per_tok)?;
  check_groups("bailing_moe", a.num_experts, a.n_group, a.topk_group)?;
  let sigmoid = match a.score_function.as_str() {
    "sigmoid" => true,
    "softmax" => false,
    other => {
      return Err(bad(format!(
        "field \"score_function\" = {other:?} is not supported (softmax, sigmoid)"
      )));
    }
  };
  if a.norm_head && a.tie_word_embeddings {
    return Err(bad("norm_head needs an untied lm_head".into()));
  }
  let hd = h / nh;
  let rope_dims = a
    .rotary_dim
    .unwrap_or((hd as f32 * a.partial_rotary_factor) as i32);
  if rope_dims <= 0 || rope_dims > hd {
    return Err(bad(format!(
      "rotary_dim / partial_rotary_factor give {rope_dims} rotated dims (head_dim {hd})"
    )));
  }
  let eps = a.rms_norm_eps;
  let b = a.use_bias;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let rope = Rope::from_config(
      rope_dims,
      a.rope_theta,
      false,
      a.rope_scaling.as_ref(),
      Some(a.max_position_embeddings),
    )?;
    let attention = BailingAttention {
      query_key_value: Linear::new(h, (nh + 2 * nkv) * hd, a.use_qkv_bias),
      dense: Linear::new(nh * hd, h, b),
      query_layernorm: a.use_qk_norm.then(|| RmsNorm::new(hd, eps)),
      key_layernorm: a.use_qk_norm.then(|| RmsNorm::new(hd, eps)),
      n_heads: nh,
      n_kv_heads: nkv,
      head_dim: hd,
      rope,
    };
    let moe = (i >= a.first_k_dense_replace).then(|| {
      let shared = a
        .moe_shared_expert_intermediate_size
        .unwrap_or(a.moe_intermediate_size);
      BailingMoe {
        switch_mlp: SwitchGlu::new(
          h,
          a.moe_intermediate_size,
          a.num_experts,
          GluActivation::SwiGlu,
          b,
        ),
        gate: Gate {
          gate_proj: Linear::new(h, a.num_experts, false),
          // mlx-lm's cast_predicate keeps it in its checkpoint dtype.
          expert_bias: a
            .moe_router_enable_expert_bias
            .then(|| Param::new_uncast(&[a.num_experts])),
          sigmoid,
          top_k: a.num_experts_per_tok,
          n_group: a.n_group,
          topk_group: a.topk_group,
          norm_topk_prob: a.norm_topk_prob,
          routed_scaling_factor: a.routed_scaling_factor,
        },
        shared_experts: (a.num_shared_experts > 0 && a.moe_router_enable_shared_expert)
          .then(|| SwiGluMlp::new(h, shared * a.num_shared_experts, b)),
      }
    });
    layers.push(Box::new(Block {
      attention,
      dense: moe
        .is_none()
        .then(|| SwiGluMlp::new(h, a.intermediate_size, b)),
      moe,
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
    }));
  }
  let tied = a.tie_word_embeddings;
  Ok(Box::new(
    Decoder::new(
      Embedding::new(a.vocab_size, h),
      layers,
      Box::new(RmsNorm::new(h, eps)),
      "norm",
      (!tied).then(|| Linear::new(h, a.vocab_size, false)),
      DecoderOpts {
        vocab_size: a.vocab_size,
        window: None,
        logit_scale: None,
        embed_scale: None,
        tied,
        stack_experts: None,
        sanitize: Some(if a.norm_head {
          sanitize_norm_head
        } else {
          sanitize
        }),
      },
    )
    .with_names(Names {
      root: "model",
      embed: "word_embeddings",
      layers: "layers",
      norm: "norm",
      head: "lm_head",
    }),
  ))
}
