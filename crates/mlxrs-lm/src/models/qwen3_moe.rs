//! Qwen3-MoE: mlx-lm's `models/qwen3_moe.py` — the Qwen3 block (per-head
//! q/k RMSNorm, plain RoPE) with a sparse MoE MLP: softmax over all experts,
//! top-k, optional renormalization (`norm_topk_prob`), experts in a
//! `SwitchGlu`. On the shared `Decoder` and `Attention`.

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, check_moe};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::fused_rows;
use super::mlp::SwiGluMlp;
use super::moe::SparseMoe;
use crate::model::{LanguageModel, parse_args};

fn d_one() -> i32 {
  1
}

/// `ModelArgs` of mlx-lm's qwen3_moe.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3MoeArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size` (dense layers)
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_experts`
  pub num_experts: i32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `decoder_sparse_step`: every n-th layer is MoE
  #[serde(default = "d_one")]
  pub decoder_sparse_step: i32,
  /// `mlp_only_layers`: layers forced dense
  #[serde(default)]
  pub mlp_only_layers: Vec<i32>,
  /// `moe_intermediate_size`
  pub moe_intermediate_size: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `head_dim`
  pub head_dim: Option<i32>,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `tie_word_embeddings`
  pub tie_word_embeddings: bool,
  /// `norm_topk_prob`
  pub norm_topk_prob: bool,
}

struct Block {
  self_attn: Attention,
  dense: Option<SwiGluMlp>,
  moe: Option<SparseMoe>,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block { self_attn, dense => "mlp", moe => "mlp", input_layernorm, post_attention_layernorm });

impl Block {
  /// The block's norms and attention for [`fused_rows::PrenormAttention`]
  /// (decoded rows: the MoE output is left to the next layer's norm).
  fn parts(&self) -> fused_rows::PrenormAttention<'_> {
    fused_rows::PrenormAttention {
      input_norm: &self.input_layernorm,
      attn: &self.self_attn,
      post_norm: &self.post_attention_layernorm,
    }
  }

  /// The MLP (sparse or dense) of the normalized `n`.
  fn mlp(&self, n: &Array) -> Result<Array> {
    match (&self.moe, &self.dense) {
      (Some(m), _) => m.forward(n),
      (None, Some(d)) => d.forward(n),
      (None, None) => Err(Error::InvalidArgument(
        "qwen3_moe: layer without an MLP".into(),
      )),
    }
  }
}

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let r = self.mlp(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &r)
  }

  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    if let Some(d) = &mut self.dense {
      d.fuse_projections()?;
    }
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
    let (h, r) = self.parts().row(x, delta, mask, cache, |n| self.mlp(n))?;
    Ok((h, Some(r)))
  }
}

/// Registry entry for `qwen3_moe` (mlx-lm `qwen3_moe.Model`).
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let args: Qwen3MoeArgs = parse_args(config)?;
  let (h, n_heads, n_kv) = (
    args.hidden_size,
    args.num_attention_heads,
    args.num_key_value_heads,
  );
  check_heads("qwen3_moe", h, n_heads, n_kv, args.num_hidden_layers)?;
  if args.num_experts > 0 {
    check_moe("qwen3_moe", args.num_experts, args.num_experts_per_tok)?;
  }
  if args.decoder_sparse_step <= 0 {
    return Err(Error::InvalidArgument(
      "config (qwen3_moe): decoder_sparse_step must be positive".into(),
    ));
  }
  let head_dim = args.head_dim.unwrap_or(h / n_heads);
  let eps = args.rms_norm_eps;
  let dims = AttnDims {
    qk_norm: Some(eps),
    ..AttnDims::new(h, n_heads, n_kv, head_dim, (false, false))
  };
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..args.num_hidden_layers {
    let is_moe = !args.mlp_only_layers.contains(&i)
      && args.num_experts > 0
      && (i + 1) % args.decoder_sparse_step == 0;
    layers.push(Box::new(Block {
      // mlx-lm uses a plain nn.RoPE here (rope_scaling is not applied).
      self_attn: Attention::new(dims, Some(Rope::new(head_dim, false, args.rope_theta, 1.0))),
      dense: (!is_moe).then(|| SwiGluMlp::new(h, args.intermediate_size, false)),
      moe: is_moe.then(|| {
        SparseMoe::new(
          h,
          args.moe_intermediate_size,
          args.num_experts,
          args.num_experts_per_tok,
          args.norm_topk_prob,
          None,
        )
      }),
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
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
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied,
      stack_experts: Some(args.num_experts),
      sanitize: None,
    },
  )))
}

#[cfg(test)]
mod tests {
  use std::collections::HashMap;

  use super::*;

  #[test]
  fn sanitize_stacks_hf_experts() {
    let cfg = serde_json::json!({
      "model_type": "qwen3_moe", "hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 2, "num_experts": 2, "num_experts_per_tok": 1, "decoder_sparse_step": 1,
      "mlp_only_layers": [], "moe_intermediate_size": 4, "rms_norm_eps": 1e-6, "vocab_size": 16,
      "num_key_value_heads": 1, "head_dim": 4, "rope_theta": 1e6, "tie_word_embeddings": false,
      "norm_topk_prob": true
    });
    let m = build(&cfg).unwrap();
    let mut w = HashMap::new();
    for e in 0..2 {
      for n in ["gate_proj", "up_proj", "down_proj"] {
        w.insert(
          format!("model.layers.0.mlp.experts.{e}.{n}.weight"),
          ops::zeros(&[4, 8], mlxrs_core::Dtype::Float32).unwrap(),
        );
      }
    }
    let out = m.sanitize(w).unwrap();
    assert_eq!(
      out["model.layers.0.mlp.switch_mlp.up_proj.weight"].shape(),
      vec![2, 4, 8]
    );
    assert_eq!(out.len(), 3);
    let mut bad = serde_json::Map::new();
    bad.clone_from(cfg.as_object().unwrap());
    bad.insert("num_experts_per_tok".into(), 3.into());
    assert!(build(&Value::Object(bad)).is_err());
  }
}
