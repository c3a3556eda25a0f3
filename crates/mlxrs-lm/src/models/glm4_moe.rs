//! GLM-4.5 / GLM-4.6 (and GLM-4.5-Air): mlx-lm's `models/glm4_moe.py` —
//! pre-norm blocks whose attention has q/k/v biases (`attention_bias`),
//! optional per-head q/k RMSNorm and a plain RoPE over the first
//! `partial_rotary_factor` of each head; dense SwiGLU MLPs for the first
//! `first_k_dense_replace` layers, then DeepSeek-V3-style MoE (sigmoid
//! scores, `e_score_correction_bias`, grouped `noaux_tc` top-k, scaled by
//! `routed_scaling_factor`) plus shared experts. `sanitize` stacks HF
//! per-expert tensors and drops the multi-token-prediction layer.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, check_moe, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mlp::SwiGluMlp;
use super::moe::{DeepseekMoe, DeepseekRouter, Routing, check_groups};
use super::phi::partial_rope_dims;
use crate::model::{LanguageModel, parse_args};

fn d_half() -> f32 {
  0.5
}
fn d_topk_method() -> String {
  "noaux_tc".into()
}
fn d_sigmoid() -> String {
  "sigmoid".into()
}

/// `ModelArgs` of mlx-lm's glm4_moe.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Glm4MoeArgs {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size` (dense layers)
  pub intermediate_size: i32,
  /// `moe_intermediate_size` (per expert)
  pub moe_intermediate_size: i32,
  /// `norm_topk_prob`
  pub norm_topk_prob: bool,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `n_group`
  pub n_group: i32,
  /// `head_dim`
  pub head_dim: i32,
  /// `topk_group`
  pub topk_group: i32,
  /// `n_shared_experts`
  pub n_shared_experts: Option<i32>,
  /// `n_routed_experts` (none: every layer dense)
  pub n_routed_experts: Option<i32>,
  /// `routed_scaling_factor`
  pub routed_scaling_factor: f32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `first_k_dense_replace`
  pub first_k_dense_replace: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `use_qk_norm`
  #[serde(default)]
  pub use_qk_norm: bool,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `partial_rotary_factor`
  #[serde(default = "d_half")]
  pub partial_rotary_factor: f32,
  /// `scoring_func` (only `sigmoid`)
  #[serde(default = "d_sigmoid")]
  pub scoring_func: String,
  /// `topk_method` (only `noaux_tc`)
  #[serde(default = "d_topk_method")]
  pub topk_method: String,
}

/// `DecoderLayer`: pre-norm, attention, dense or MoE MLP.
struct Block {
  self_attn: Attention,
  dense: Option<SwiGluMlp>,
  moe: Option<DeepseekMoe>,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block { self_attn, dense => "mlp", moe => "mlp", input_layernorm, post_attention_layernorm });

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    match &mut self.dense {
      Some(d) => d.fuse_projections(),
      None => Ok(()),
    }
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let n = self.post_attention_layernorm.forward(&h)?;
    let r = match (&self.moe, &self.dense) {
      (Some(m), _) => m.forward(&n)?,
      (None, Some(d)) => d.forward(&n)?,
      (None, None) => {
        return Err(Error::InvalidArgument(
          "glm4_moe: layer without an MLP".into(),
        ));
      }
    };
    ops::add(&h, &r)
  }
}

/// mlx-lm's sanitize drops `model.layers.{num_hidden_layers}` (the
/// multi-token-prediction layer); it is recognized here by its `eh_proj`.
fn drop_mtp(mut w: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  let mtp: Vec<String> = w
    .keys()
    .filter_map(|k| k.strip_suffix(".eh_proj.weight"))
    .map(|p| format!("{p}."))
    .collect();
  w.retain(|k, _| !mtp.iter().any(|p| k.starts_with(p.as_str())));
  Ok(w)
}

/// Registry entry for `glm4_moe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // glm4_moe.py: a plain RoPE whatever `rope_scaling` says.
  reject_unhandled(config, "glm4_moe", "rope_scaling", |_| false)?;
  let a: Glm4MoeArgs = parse_args(config)?;
  if a.scoring_func != "sigmoid" || a.topk_method != "noaux_tc" {
    return Err(Error::InvalidArgument(format!(
      "config.json (glm4_moe): scoring_func {:?} / topk_method {:?} not supported (only sigmoid / \
       noaux_tc)",
      a.scoring_func, a.topk_method
    )));
  }
  let (h, nh, nkv, hd) = (
    a.hidden_size,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.head_dim,
  );
  check_heads("glm4_moe", h, nh, nkv, a.num_hidden_layers)?;
  if let Some(e) = a.n_routed_experts {
    check_moe("glm4_moe", e, a.num_experts_per_tok)?;
    check_groups("glm4_moe", e, a.n_group, a.topk_group)?;
  }
  let rope_dims = partial_rope_dims("glm4_moe", a.partial_rotary_factor, hd)?;
  let mut dims = AttnDims::new(h, nh, nkv, hd, (a.attention_bias, false));
  dims.qk_norm = a.use_qk_norm.then_some(a.rms_norm_eps);
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let moe = match a.n_routed_experts {
      Some(e) if i >= a.first_k_dense_replace => Some(DeepseekMoe::new(
        h,
        a.moe_intermediate_size,
        e,
        a.n_shared_experts.map(|n| a.moe_intermediate_size * n),
        DeepseekRouter {
          routing: Routing::NoauxTc {
            norm_topk_prob: a.norm_topk_prob,
          },
          top_k: a.num_experts_per_tok,
          n_group: a.n_group,
          topk_group: a.topk_group,
          routed_scaling_factor: a.routed_scaling_factor,
        },
      )),
      _ => None,
    };
    layers.push(Box::new(Block {
      self_attn: Attention::new(dims, Some(Rope::new(rope_dims, false, a.rope_theta, 1.0))),
      dense: moe
        .is_none()
        .then(|| SwiGluMlp::new(h, a.intermediate_size, false)),
      moe,
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
    }));
  }
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    Some(Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied: false,
      stack_experts: a.n_routed_experts,
      sanitize: Some(drop_mtp),
    },
  )))
}
