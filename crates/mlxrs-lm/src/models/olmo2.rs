//! OLMo 2: mlx-lm's `models/olmo2.py` — a Llama-shaped model whose blocks
//! have no pre-norms: each branch output is normalized before the residual
//! add (`x + norm(attn(x))`, `h + norm(mlp(h))`), and q/k are RMS-normalized
//! over the whole projection (all heads at once) before RoPE. Tied by
//! default. On the shared `Decoder`, `Attention` and `SwiGluMlp`.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::check_heads;
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::llama::LlamaArgs;
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

struct Block {
  self_attn: Attention,
  mlp: SwiGluMlp,
  post_attention_layernorm: RmsNorm,
  post_feedforward_layernorm: RmsNorm,
  sliding: bool,
}
module!(Block {
  self_attn,
  mlp,
  post_attention_layernorm,
  post_feedforward_layernorm
});

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self.self_attn.forward(x, mask, cache)?;
    let h = ops::add(x, &self.post_attention_layernorm.forward(&r)?)?;
    let r = self.mlp.forward(&h)?;
    ops::add(&h, &self.post_feedforward_layernorm.forward(&r)?)
  }

  fn sliding(&self) -> bool {
    self.sliding
  }

  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.mlp.fuse_projections()
  }
}

/// An OLMo 2 decoder (mlx-lm `olmo2.Model`: every layer full attention),
/// or OLMo 3's with `sliding[i]` saying whether layer `i` is a
/// sliding-window layer (plain RoPE of `rope_theta` there, `rope_scaling`
/// only on full layers); `mlp_bias_allowed` false forces bias-free MLPs.
/// Its config has the fields of llama.py's `ModelArgs` (OLMo 2 ignores
/// `layer_types` / `sliding_window`).
pub fn build_with_sliding(
  args: LlamaArgs,
  sliding: &[bool],
  mlp_bias_allowed: bool,
) -> Result<Box<dyn LanguageModel>> {
  let h = args.hidden_size;
  let n_heads = args.num_attention_heads;
  let n_kv = args.num_key_value_heads.unwrap_or(n_heads);
  check_heads("olmo2", h, n_heads, n_kv, args.num_hidden_layers)?;
  let hd = args.head_dim.unwrap_or(h / n_heads);
  let (eps, bias, mlp_bias, inter) = (
    args.rms_norm_eps,
    args.attention_bias,
    args.mlp_bias && mlp_bias_allowed,
    args.intermediate_size,
  );
  if sliding.len() != args.num_hidden_layers as usize {
    return Err(mlxrs_core::Error::InvalidArgument(format!(
      "config.json: {} layer types for {} layers",
      sliding.len(),
      args.num_hidden_layers
    )));
  }
  let dims = AttnDims {
    qk_norm_full: Some(eps),
    ..AttnDims::new(h, n_heads, n_kv, hd, (bias, bias))
  };
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for &sl in sliding {
    let rope = if sl {
      Rope::new(hd, args.rope_traditional, args.rope_theta, 1.0)
    } else {
      Rope::from_config(
        hd,
        args.rope_theta,
        args.rope_traditional,
        args.rope_scaling.as_ref(),
        args.max_position_embeddings,
      )?
    };
    layers.push(Box::new(Block {
      self_attn: Attention::new(dims, Some(rope)),
      mlp: SwiGluMlp::new(h, inter, mlp_bias),
      post_attention_layernorm: RmsNorm::new(h, eps),
      post_feedforward_layernorm: RmsNorm::new(h, eps),
      sliding: sl,
    }));
  }
  let tied = args.tie_word_embeddings;
  Ok(Box::new(Decoder::new(
    Embedding::new(args.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!tied).then(|| Linear::new(h, args.vocab_size, false)),
    DecoderOpts {
      vocab_size: args.vocab_size,
      window: args.sliding_window,
      logit_scale: None,
      embed_scale: None,
      tied,
      stack_experts: None,
      sanitize: None,
    },
  )))
}

/// Registry entry for `olmo2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let args: LlamaArgs = parse_args(config)?;
  let full = vec![false; args.num_hidden_layers.max(0) as usize];
  build_with_sliding(args, &full, true)
}
