//! MiniCPM3: mlx-lm's `models/minicpm3.py` — multi-head latent attention
//! with an explicit `kv_b_proj` ([`MlaAttention`], `v_head_dim = hidden /
//! heads`, latent norms at eps 1e-5) and `SuScaledRoPE` on the rope part;
//! MiniCPM's scalings: embeddings times `scale_emb`, each residual branch
//! times `scale_depth / sqrt(num_hidden_layers)`, and (untied) the final
//! hidden state divided by `hidden_size / dim_model_base` before `lm_head`.

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::{Value, json};

use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mla::{MlaAttention, MlaDims};
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  1000000.0
}

/// `ModelArgs` of mlx-lm's minicpm3.py.
#[derive(Debug, Clone, Deserialize)]
pub struct MiniCpm3Args {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `dim_model_base`
  pub dim_model_base: i32,
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
  /// `q_lora_rank`
  pub q_lora_rank: i32,
  /// `qk_nope_head_dim`
  pub qk_nope_head_dim: i32,
  /// `qk_rope_head_dim`
  pub qk_rope_head_dim: i32,
  /// `kv_lora_rank`
  pub kv_lora_rank: i32,
  /// `scale_depth`
  pub scale_depth: f32,
  /// `scale_emb`
  pub scale_emb: f32,
  /// `max_position_embeddings`
  pub max_position_embeddings: i32,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_scaling` (required: SuScaledRoPE's factors)
  pub rope_scaling: Option<Value>,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
}

/// `DecoderLayer`: pre-norm, both branches scaled by
/// `scale_depth / sqrt(num_hidden_layers)`.
struct Block {
  self_attn: MlaAttention,
  mlp: SwiGluMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  residual_scale: f32,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &(r * self.residual_scale)?)?;
    let r = self
      .mlp
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &(r * self.residual_scale)?)
  }
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (minicpm3): {msg}"))
}

/// `SuScaledRoPE` of minicpm3.py: the long factors (default 1), the
/// original length from `rope_scaling` (default 4096), the default mscale.
fn make_rope(a: &MiniCpm3Args) -> Result<Rope> {
  let rs = a
    .rope_scaling
    .as_ref()
    .and_then(Value::as_object)
    .ok_or_else(|| bad("field \"rope_scaling\" (SuScaledRoPE's factors) is required".into()))?;
  let get = |k: &str, d: Value| rs.get(k).filter(|v| !v.is_null()).cloned().unwrap_or(d);
  let cfg = json!({
    "type": "longrope",
    "original_max_position_embeddings": get("original_max_position_embeddings", json!(4096)),
    "long_factor": get("long_factor", json!(1.0)),
  });
  Rope::from_config(
    a.qk_rope_head_dim,
    a.rope_theta,
    false,
    Some(&cfg),
    Some(a.max_position_embeddings),
  )
}

/// Registry entry for `minicpm3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: MiniCpm3Args = parse_args(config)?;
  let (h, nh) = (a.hidden_size, a.num_attention_heads);
  if nh <= 0 || a.num_hidden_layers <= 0 || a.dim_model_base <= 0 {
    return Err(bad(
      "num_attention_heads, num_hidden_layers and dim_model_base must be positive".into(),
    ));
  }
  let dims = MlaDims {
    hidden: h,
    n_heads: nh,
    q_lora_rank: Some(a.q_lora_rank),
    kv_lora_rank: a.kv_lora_rank,
    nope: a.qk_nope_head_dim,
    rope: a.qk_rope_head_dim,
    v_head_dim: h / nh,
    bias: a.attention_bias,
    o_bias: a.attention_bias,
    latent_eps: 1e-5,
    scale: ((a.qk_nope_head_dim + a.qk_rope_head_dim) as f32).powf(-0.5),
  };
  dims.check("minicpm3")?;
  let eps = a.rms_norm_eps;
  let residual_scale = a.scale_depth / (a.num_hidden_layers as f32).sqrt();
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    layers.push(Box::new(Block {
      self_attn: MlaAttention::new(dims, make_rope(&a)?),
      mlp: SwiGluMlp::new(h, a.intermediate_size, false),
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
      residual_scale,
    }));
  }
  let tied = a.tie_word_embeddings;
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!tied).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      // lm_head(x / (hidden / base)) == lm_head(x) * (base / hidden): no bias.
      logit_scale: (!tied).then(|| a.dim_model_base as f32 / h as f32),
      embed_scale: Some(a.scale_emb),
      tied,
      stack_experts: None,
      sanitize: None,
    },
  )))
}
