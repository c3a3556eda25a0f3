//! Gemma (1): mlx-lm's `models/gemma.py` — Llama-shaped blocks with
//! `(1 + w)` RMSNorms, a GELU-gated MLP, embeddings scaled by
//! `sqrt(hidden_size)` and a tied output head. Also the text side of
//! PaliGemma (mlx-vlm's `paligemma/language.py`).

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::check_heads;
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mlp::GeluMlp;
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  10000.0
}

/// `ModelArgs` of mlx-lm's gemma.py.
#[derive(Debug, Clone, Deserialize)]
pub struct GemmaArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `head_dim`
  pub head_dim: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `attention_bias` (PaliGemma's text config; mlx-lm: none)
  #[serde(default)]
  pub attention_bias: bool,
  /// `hidden_activation`: the tanh approximation of GELU for
  /// `gelu_pytorch_tanh` / `gelu_new` / `gelu_fast` / `tanh` (what
  /// transformers and mlx-vlm's PaliGemma run); exact GELU for `gelu` or
  /// when absent (mlx-lm's gemma.py always uses `nn.gelu`).
  pub hidden_activation: Option<String>,
}

struct Block {
  self_attn: Attention,
  mlp: GeluMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.mlp.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let r = self
      .mlp
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &r)
  }
}

/// Registry entry for `gemma`: a [`Decoder`] of Llama-shaped blocks with
/// `(1 + w)` RMSNorms (`RmsNorm::new_plus_one`), a GELU-gated MLP,
/// embeddings scaled by `sqrt(hidden_size)` (python `h * (hidden_size **
/// 0.5)`, the float cast to h's dtype) and the output tied to the
/// embeddings (mlx-lm `gemma.Model`).
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let args: GemmaArgs = parse_args(config)?;
  let (h, n_heads, n_kv, hd) = (
    args.hidden_size,
    args.num_attention_heads,
    args.num_key_value_heads,
    args.head_dim,
  );
  check_heads("gemma", h, n_heads, n_kv, args.num_hidden_layers)?;
  if hd <= 0 {
    return Err(mlxrs_core::Error::InvalidArgument(format!(
      "config (gemma): head_dim ({hd}) must be positive"
    )));
  }
  let tanh_gelu = match args.hidden_activation.as_deref() {
    None | Some("gelu") => false,
    Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "tanh") => true,
    Some(other) => {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "config (gemma): unsupported hidden_activation {other:?}"
      )));
    }
  };
  let eps = args.rms_norm_eps;
  let bias = args.attention_bias;
  let dims = AttnDims::new(h, n_heads, n_kv, hd, (bias, bias));
  let layers = (0..args.num_hidden_layers)
    .map(|_| {
      Box::new(Block {
        self_attn: Attention::new(
          dims,
          Some(Rope::new(hd, args.rope_traditional, args.rope_theta, 1.0)),
        ),
        mlp: GeluMlp::new(h, args.intermediate_size, tanh_gelu),
        input_layernorm: RmsNorm::new_plus_one(h, eps),
        post_attention_layernorm: RmsNorm::new_plus_one(h, eps),
      }) as Box<dyn Layer>
    })
    .collect();
  Ok(Box::new(Decoder::new(
    Embedding::new(args.vocab_size, h),
    layers,
    Box::new(RmsNorm::new_plus_one(h, eps)),
    "norm",
    None,
    DecoderOpts {
      vocab_size: args.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: Some((h as f64).sqrt() as f32),
      tied: true,
      stack_experts: None,
      sanitize: Some(drop_lm_head),
    },
  )))
}

/// mlx-lm's gemma `sanitize` keeps no `lm_head.*` (the head is tied), even
/// the quantized or biased forms a converted checkpoint may carry.
fn drop_lm_head(
  mut weights: std::collections::HashMap<String, Array>,
) -> Result<std::collections::HashMap<String, Array>> {
  weights.retain(|k, _| !k.starts_with("lm_head."));
  Ok(weights)
}
