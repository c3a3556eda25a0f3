//! EXAONE 4 (LG AI): mlx-lm's `models/exaone4.py` — OLMo-2-style blocks
//! without pre-norms (each branch output normalized before its residual
//! add), per-head RMSNorm on q and k, a SwiGLU MLP; with
//! `sliding_window_pattern` (e.g. `"LLLG"`) the `L` layers attend over a
//! sliding window with RoPE and the `G` layers attend globally without
//! positional encoding (NoPE); without a pattern every layer is global with
//! RoPE.

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::check_heads;
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's exaone4.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Exaone4Args {
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
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `max_position_embeddings`
  pub max_position_embeddings: i32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `head_dim`
  pub head_dim: i32,
  /// `tie_word_embeddings`
  pub tie_word_embeddings: bool,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `sliding_window`
  pub sliding_window: Option<i32>,
  /// `sliding_window_pattern` (`L` local / `G` global per layer, cyclic)
  pub sliding_window_pattern: Option<String>,
}

struct Block {
  self_attn: Attention,
  mlp: SwiGluMlp,
  post_attention_layernorm: RmsNorm,
  post_feedforward_layernorm: RmsNorm,
  local: bool,
}
module!(Block {
  self_attn,
  mlp,
  post_attention_layernorm,
  post_feedforward_layernorm
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.mlp.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self.self_attn.forward(x, mask, cache)?;
    let h = ops::add(x, &self.post_attention_layernorm.forward(&r)?)?;
    let r = self.mlp.forward(&h)?;
    ops::add(&h, &self.post_feedforward_layernorm.forward(&r)?)
  }

  fn sliding(&self) -> bool {
    self.local
  }
}

/// Registry entry for `exaone4`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: Exaone4Args = parse_args(config)?;
  let (h, nh, nkv, hd) = (
    a.hidden_size,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.head_dim,
  );
  check_heads("exaone4", h, nh, nkv, a.num_hidden_layers)?;
  let pattern: Option<Vec<bool>> = match a.sliding_window_pattern.as_deref() {
    None => None,
    Some(p) => {
      let v: Vec<bool> = p.chars().map(|c| c == 'L').collect();
      if v.is_empty()
        || p.chars().any(|c| c != 'L' && c != 'G')
        || !v.contains(&true)
        || !v.contains(&false)
        || a.sliding_window.is_none_or(|w| w <= 0)
      {
        return Err(Error::InvalidArgument(format!(
          "config.json (exaone4): field \"sliding_window_pattern\" = {p:?} must mix 'L' and 'G' \
           (with a positive sliding_window)"
        )));
      }
      Some(v)
    }
  };
  let mut dims = AttnDims::new(h, nh, nkv, hd, (false, false));
  dims.qk_norm = Some(a.rms_norm_eps);
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..a.num_hidden_layers as usize {
    let local = pattern.as_ref().map(|p| p[i % p.len()]);
    // exaone4.py: RoPE on local layers, or everywhere without a pattern.
    let rope = if local != Some(false) {
      Some(Rope::from_config(
        hd,
        a.rope_theta,
        false,
        a.rope_scaling.as_ref(),
        Some(a.max_position_embeddings),
      )?)
    } else {
      None
    };
    layers.push(Box::new(Block {
      self_attn: Attention::new(dims, rope),
      mlp: SwiGluMlp::new(h, a.intermediate_size, false),
      post_attention_layernorm: RmsNorm::new(h, eps),
      post_feedforward_layernorm: RmsNorm::new(h, eps),
      local: local.unwrap_or(false),
    }));
  }
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: pattern.and(a.sliding_window),
      logit_scale: None,
      embed_scale: None,
      tied: a.tie_word_embeddings,
      stack_experts: None,
      sanitize: None,
    },
  )))
}
