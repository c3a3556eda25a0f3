//! DeepSeek-V2 (and V2-Lite / V2.5 / Coder-V2): mlx-lm's
//! `models/deepseek_v2.py` — multi-head latent attention with an explicit
//! `kv_b_proj` ([`MlaAttention`]) and DeepSeek's yarn RoPE (interleaved, on
//! the `qk_rope_head_dim` part only, the attention scale times
//! `mscale(factor, mscale_all_dim)^2`); dense SwiGLU MLPs for the first
//! `first_k_dense_replace` layers, then every `moe_layer_freq`-th layer a
//! softmax-routed MoE (`greedy` or `group_limited_greedy`, weights scaled by
//! `routed_scaling_factor`, never renormalized) plus shared experts. HF
//! per-expert tensors are stacked by `sanitize`.

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::base::check_moe;
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mla::{MlaAttention, MlaDims};
use super::mlp::SwiGluMlp;
use super::moe::{DeepseekMoe, DeepseekRouter, Routing};
use crate::model::{LanguageModel, parse_args};

fn d_vocab() -> i32 {
  102400
}
fn d_hidden() -> i32 {
  4096
}
fn d_inter() -> i32 {
  11008
}
fn d_moe_inter() -> i32 {
  1407
}
fn d_layers() -> i32 {
  30
}
fn d_heads() -> i32 {
  32
}
fn d_one_f() -> f32 {
  1.0
}
fn d_one() -> i32 {
  1
}
fn d_kv_lora() -> i32 {
  512
}
fn d_q_lora() -> Option<i32> {
  Some(1536)
}
fn d_rope_dim() -> i32 {
  64
}
fn d_v_dim() -> i32 {
  128
}
fn d_nope_dim() -> i32 {
  128
}
fn d_topk_method() -> String {
  "gready".into()
}
fn d_eps() -> f32 {
  1e-6
}
fn d_theta() -> f32 {
  10000.0
}

/// `ModelArgs` of mlx-lm's deepseek_v2.py (same defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct DeepseekV2Args {
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `hidden_size`
  #[serde(default = "d_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size` (dense layers)
  #[serde(default = "d_inter")]
  pub intermediate_size: i32,
  /// `moe_intermediate_size` (per expert)
  #[serde(default = "d_moe_inter")]
  pub moe_intermediate_size: i32,
  /// `num_hidden_layers`
  #[serde(default = "d_layers")]
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `n_shared_experts`
  pub n_shared_experts: Option<i32>,
  /// `n_routed_experts` (none: every layer dense)
  pub n_routed_experts: Option<i32>,
  /// `routed_scaling_factor`
  #[serde(default = "d_one_f")]
  pub routed_scaling_factor: f32,
  /// `kv_lora_rank`
  #[serde(default = "d_kv_lora")]
  pub kv_lora_rank: i32,
  /// `q_lora_rank` (null: a full-rank `q_proj`)
  #[serde(default = "d_q_lora")]
  pub q_lora_rank: Option<i32>,
  /// `qk_rope_head_dim`
  #[serde(default = "d_rope_dim")]
  pub qk_rope_head_dim: i32,
  /// `v_head_dim`
  #[serde(default = "d_v_dim")]
  pub v_head_dim: i32,
  /// `qk_nope_head_dim`
  #[serde(default = "d_nope_dim")]
  pub qk_nope_head_dim: i32,
  /// `topk_method` (`group_limited_greedy`; anything else is plain greedy,
  /// as in mlx-lm)
  #[serde(default = "d_topk_method")]
  pub topk_method: String,
  /// `n_group`
  pub n_group: Option<i32>,
  /// `topk_group`
  pub topk_group: Option<i32>,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: Option<i32>,
  /// `moe_layer_freq`
  #[serde(default = "d_one")]
  pub moe_layer_freq: i32,
  /// `first_k_dense_replace`
  #[serde(default)]
  pub first_k_dense_replace: i32,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_scaling` (required: its `factor` and yarn keys)
  pub rope_scaling: Option<Value>,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (deepseek_v2): {msg}"))
}

/// `DeepseekV2DecoderLayer`: pre-norm, MLA, dense or MoE MLP.
struct Block {
  self_attn: MlaAttention,
  dense: Option<SwiGluMlp>,
  moe: Option<DeepseekMoe>,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block { self_attn, dense => "mlp", moe => "mlp", input_layernorm, post_attention_layernorm });

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let n = self.post_attention_layernorm.forward(&h)?;
    let r = match (&self.moe, &self.dense) {
      (Some(m), _) => m.forward(&n)?,
      (None, Some(d)) => d.forward(&n)?,
      (None, None) => return Err(bad("layer without an MLP".into())),
    };
    ops::add(&h, &r)
  }
}

/// `DeepseekV2YarnRotaryEmbedding` as a [`Rope`] (always yarn, whatever
/// `type` says) and the attention scale factor `mscale(factor,
/// mscale_all_dim)^2`.
fn yarn_rope(a: &DeepseekV2Args) -> Result<(Rope, f32)> {
  let rs = a
    .rope_scaling
    .as_ref()
    .and_then(Value::as_object)
    .ok_or_else(|| bad("rope_scaling (an object with a factor) is required".into()))?;
  let factor = rs
    .get("factor")
    .and_then(Value::as_f64)
    .ok_or_else(|| bad("rope_scaling needs a numeric \"factor\"".into()))?;
  let mut cfg = serde_json::Map::new();
  cfg.insert("type".into(), "yarn".into());
  for k in [
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
  ] {
    if let Some(v) = rs.get(k).filter(|v| !v.is_null()) {
      cfg.insert(k.into(), v.clone());
    }
  }
  let rope = Rope::from_config(
    a.qk_rope_head_dim,
    a.rope_theta,
    true,
    Some(&Value::Object(cfg)),
    None,
  )?;
  let all = rs
    .get("mscale_all_dim")
    .and_then(Value::as_f64)
    .unwrap_or(0.0);
  let m = if all != 0.0 && factor > 1.0 {
    0.1 * all * factor.ln() + 1.0
  } else {
    1.0
  };
  Ok((rope, (m * m) as f32))
}

/// Registry entry for `deepseek_v2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: DeepseekV2Args = parse_args(config)?;
  let h = a.hidden_size;
  let eps = a.rms_norm_eps;
  let group_limited = a.topk_method == "group_limited_greedy";
  let (n_group, topk_group) = (a.n_group.unwrap_or(1), a.topk_group.unwrap_or(1));
  let top_k = a.num_experts_per_tok.unwrap_or(1);
  if let Some(e) = a.n_routed_experts {
    check_moe("deepseek_v2", e, top_k)?;
    if group_limited {
      if a.n_group.is_none() || a.topk_group.is_none() {
        return Err(bad(
          "group_limited_greedy needs n_group and topk_group".into(),
        ));
      }
      if n_group <= 0 || e % n_group != 0 {
        return Err(bad(format!(
          "n_routed_experts ({e}) must split into n_group ({n_group}) groups"
        )));
      }
      if topk_group <= 0 || topk_group > n_group {
        return Err(bad(format!(
          "topk_group ({topk_group}) must be in 1..={n_group}"
        )));
      }
    }
  }
  if a.moe_layer_freq <= 0 {
    return Err(bad("moe_layer_freq must be positive".into()));
  }
  let (_, mscale2) = yarn_rope(&a)?;
  let dims = MlaDims {
    hidden: h,
    n_heads: a.num_attention_heads,
    q_lora_rank: a.q_lora_rank,
    kv_lora_rank: a.kv_lora_rank,
    nope: a.qk_nope_head_dim,
    rope: a.qk_rope_head_dim,
    v_head_dim: a.v_head_dim,
    bias: a.attention_bias,
    o_bias: a.attention_bias,
    latent_eps: 1e-6,
    scale: ((a.qk_nope_head_dim + a.qk_rope_head_dim) as f32).powf(-0.5) * mscale2,
  };
  dims.check("deepseek_v2")?;
  if a.num_hidden_layers < 0 || a.vocab_size <= 0 {
    return Err(bad(
      "num_hidden_layers and vocab_size must be positive".into(),
    ));
  }
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let moe = match a.n_routed_experts {
      Some(e) if i >= a.first_k_dense_replace && i % a.moe_layer_freq == 0 => {
        Some(DeepseekMoe::new(
          h,
          a.moe_intermediate_size,
          e,
          a.n_shared_experts.map(|n| a.moe_intermediate_size * n),
          DeepseekRouter {
            routing: Routing::Softmax { group_limited },
            top_k,
            n_group,
            topk_group,
            routed_scaling_factor: a.routed_scaling_factor,
          },
        ))
      }
      _ => None,
    };
    layers.push(Box::new(Block {
      self_attn: MlaAttention::new(dims, yarn_rope(&a)?.0),
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
      sanitize: None,
    },
  )))
}
