//! Llama-4 text decoder as mlx-lm's `models/llama4_text.py` has it: dense
//! Llama blocks (MLP `feed_forward` of width `intermediate_size_mlp`),
//! interleaved RoPE only on the layers `no_rope_layers` marks (truthy =
//! RoPE, the others NoPE), optional weightless per-head q/k RMSNorm, and an
//! untied head named `output`. mlx-lm's file has no chunked attention (that
//! is its `llama4.py`, the multimodal MoE), so a config asking for it
//! (`attention_chunk_size`) fails by name.

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer, Names};
use super::fused_rows;
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's llama4_text.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Llama4TextArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `intermediate_size_mlp` (the MLP width)
  pub intermediate_size_mlp: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `head_dim`
  pub head_dim: i32,
  /// `tie_word_embeddings`
  pub tie_word_embeddings: bool,
  /// `no_rope_layers` (per layer: non-zero = RoPE)
  pub no_rope_layers: Vec<Value>,
  /// `use_qk_norm`
  pub use_qk_norm: bool,
}

/// `TransformerBlock`.
struct Block {
  self_attn: Attention,
  feed_forward: SwiGluMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block {
  self_attn,
  feed_forward,
  input_layernorm,
  post_attention_layernorm
});

impl Block {
  /// The block's parts for [`fused_rows::PrenormBlock`].
  fn parts(&self) -> fused_rows::PrenormBlock<'_> {
    fused_rows::PrenormBlock {
      input_norm: &self.input_layernorm,
      attn: &self.self_attn,
      post_norm: &self.post_attention_layernorm,
      mlp: &self.feed_forward,
    }
  }
}

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.feed_forward.fuse_projections()?;
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
    let (h, r) = self.parts().row(x, delta, mask, cache)?;
    Ok((h, Some(r)))
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let r = self
      .feed_forward
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &r)
  }
}

/// Python truthiness of a `no_rope_layers` entry.
fn truthy(v: &Value) -> bool {
  match v {
    Value::Bool(b) => *b,
    Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
    Value::Null => false,
    _ => true,
  }
}

/// Registry entry for `llama4_text`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "llama4_text", "attention_chunk_size", |_| false)?;
  reject_unhandled(config, "llama4_text", "rope_scaling", |_| false)?;
  let a: Llama4TextArgs = parse_args(config)?;
  let (h, nh, nkv, hd) = (
    a.hidden_size,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.head_dim,
  );
  check_heads("llama4_text", h, nh, nkv, a.num_hidden_layers)?;
  if a.no_rope_layers.len() < a.num_hidden_layers as usize {
    return Err(Error::InvalidArgument(format!(
      "config.json (llama4_text): field \"no_rope_layers\" has {} entries for {} layers",
      a.no_rope_layers.len(),
      a.num_hidden_layers
    )));
  }
  let dims = AttnDims::new(h, nh, nkv, hd, (false, false));
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..a.num_hidden_layers as usize {
    let rope = truthy(&a.no_rope_layers[i]).then(|| Rope::new(hd, true, a.rope_theta, 1.0));
    let mut attn = Attention::new(dims, rope);
    if a.use_qk_norm {
      attn = attn.with_plain_qk_norm(eps);
    }
    layers.push(Box::new(Block {
      self_attn: attn,
      feed_forward: SwiGluMlp::new(h, a.intermediate_size_mlp, false),
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
        sanitize: None,
      },
    )
    .with_names(Names {
      root: "model",
      embed: "embed_tokens",
      layers: "layers",
      norm: "norm",
      head: "output",
    }),
  ))
}
