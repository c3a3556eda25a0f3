//! Cohere (Command-R) and Cohere2 (Command-R7B, Command-A): mlx-lm's
//! `models/cohere.py` / `cohere2.py` — one LayerNorm (optionally bias-free)
//! feeding attention and a SwiGLU MLP in parallel (`x + attn(h) + mlp(h)`),
//! interleaved (traditional) RoPE, always tied embeddings, logits times
//! `logit_scale`. Cohere2: explicit `head_dim`, every
//! `sliding_window_pattern`-th layer global without positional encoding,
//! the others sliding-window layers with RoPE. `use_qk_norm` (Command-R+)
//! is refused.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, LayerNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  8000000.0
}
fn d_eps() -> f32 {
  1e-5
}
fn d_logit_scale() -> f32 {
  0.0625
}

/// `ModelArgs` of mlx-lm's cohere.py.
#[derive(Debug, Clone, Deserialize)]
pub struct CohereArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `layer_norm_eps`
  #[serde(default = "d_eps")]
  pub layer_norm_eps: f32,
  /// `logit_scale`
  #[serde(default = "d_logit_scale")]
  pub logit_scale: f32,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `layer_norm_bias`
  #[serde(default)]
  pub layer_norm_bias: bool,
}

struct Block {
  self_attn: Attention,
  mlp: SwiGluMlp,
  input_layernorm: LayerNorm,
  sliding: bool,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.mlp.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = self.input_layernorm.forward(x)?;
    let a = self.self_attn.forward(&h, mask, cache)?;
    ops::add(&ops::add(&a, &self.mlp.forward(&h)?)?, x)
  }

  fn sliding(&self) -> bool {
    self.sliding
  }
}

/// The Cohere2 fields of mlx-lm cohere2.py's `ModelArgs`.
#[derive(Debug, Clone, Deserialize)]
pub struct Cohere2Window {
  /// `head_dim`
  pub head_dim: i32,
  /// `sliding_window`
  pub sliding_window: i32,
  /// `sliding_window_pattern` (every n-th layer is global)
  pub sliding_window_pattern: i32,
}

/// Registry entry for `cohere`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "cohere", "use_qk_norm", |v| {
    v == &Value::Bool(false)
  })?;
  new(config, None)
}

/// Registry entry for `cohere2`.
pub fn build2(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let w: Cohere2Window = parse_args(config)?;
  if w.sliding_window <= 0 || w.sliding_window_pattern <= 0 || w.head_dim <= 0 {
    return Err(mlxrs_core::Error::InvalidArgument(
      "config.json (cohere2): head_dim, sliding_window and sliding_window_pattern must be positive"
        .into(),
    ));
  }
  new(config, Some(w))
}

fn new(config: &Value, window: Option<Cohere2Window>) -> Result<Box<dyn LanguageModel>> {
  let arch = if window.is_some() {
    "cohere2"
  } else {
    "cohere"
  };
  reject_unhandled(config, arch, "rope_scaling", |_| false)?;
  let a: CohereArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads(arch, h, nh, nkv, a.num_hidden_layers)?;
  let hd = window.as_ref().map(|w| w.head_dim).unwrap_or(h / nh);
  let dims = AttnDims::new(h, nh, nkv, hd, (a.attention_bias, a.attention_bias));
  let (eps, nb) = (a.layer_norm_eps, a.layer_norm_bias);
  let layers = (0..a.num_hidden_layers)
    .map(|i| {
      // cohere2.py: layer i is global (no RoPE) iff (i + 1) % pattern == 0.
      let sliding = window
        .as_ref()
        .is_some_and(|w| (i + 1) % w.sliding_window_pattern != 0);
      let rope = (window.is_none() || sliding).then(|| Rope::new(hd, true, a.rope_theta, 1.0));
      Box::new(Block {
        self_attn: Attention::new(dims, rope),
        mlp: SwiGluMlp::new(h, a.intermediate_size, false),
        input_layernorm: LayerNorm::new(h, eps, true, nb),
        sliding,
      }) as Box<dyn Layer>
    })
    .collect();
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(LayerNorm::new(h, eps, true, nb)),
    "norm",
    None,
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: window.as_ref().map(|w| w.sliding_window),
      logit_scale: Some(a.logit_scale),
      embed_scale: None,
      tied: true,
      stack_experts: None,
      sanitize: None,
    },
  )))
}
