//! Qwen3 as an embedding model (Qwen3-Embedding): the causal decoder stack
//! — RMSNorm, GQA attention with per-head q/k RMSNorm and RoPE, SwiGLU MLP
//! — read out by last-token pooling. Python: transformers `Qwen3Model`
//! (mlx-embeddings `models/qwen3.py`).

use mlxrs_core::Array;
use mlxrs_nn::{Embedding, Linear, RmsNorm, Rope, module};

use super::{Encoder, ModelInput, activation, dim, rope_theta};
use crate::activation::Activation;
use crate::attention::{AttnPattern, Heads, attend, attention_mask};
use crate::config::JsonConfig;
use crate::error::Result;

/// The tensor every Qwen3 checkpoint has (its path gives the prefix).
pub const ANCHOR: &str = "embed_tokens.weight";

struct Layer {
  in_norm: RmsNorm,
  q: Linear,
  k: Linear,
  v: Linear,
  o: Linear,
  q_norm: RmsNorm,
  k_norm: RmsNorm,
  post_norm: RmsNorm,
  gate: Linear,
  up: Linear,
  down: Linear,
}

module!(Layer {
  in_norm => "input_layernorm",
  q => "self_attn.q_proj",
  k => "self_attn.k_proj",
  v => "self_attn.v_proj",
  o => "self_attn.o_proj",
  q_norm => "self_attn.q_norm",
  k_norm => "self_attn.k_norm",
  post_norm => "post_attention_layernorm",
  gate => "mlp.gate_proj",
  up => "mlp.up_proj",
  down => "mlp.down_proj",
});

/// A Qwen3 decoder used as an encoder.
pub struct Qwen3 {
  embed: Embedding,
  layers: Vec<Layer>,
  norm: RmsNorm,
  act: Activation,
  hidden: usize,
  heads: usize,
  kv_heads: usize,
  head_dim: usize,
  rope: Rope,
  pad: Option<u32>,
}

module!(Qwen3 {
  embed => "embed_tokens",
  layers,
  norm,
});

impl Qwen3 {
  /// Build from `config.json`, unloaded.
  pub fn new(cfg: &JsonConfig) -> Result<Qwen3> {
    let hidden = cfg.positive(&["hidden_size"])?;
    let n = cfg.positive(&["num_hidden_layers"])?;
    let heads = cfg.positive(&["num_attention_heads"])?;
    let kv_heads = cfg.opt_usize(&["num_key_value_heads"])?.unwrap_or(heads);
    let inter = cfg.positive(&["intermediate_size"])?;
    let vocab = cfg.positive(&["vocab_size"])?;
    let eps = cfg.f64_or(&["rms_norm_eps"], 1e-6)? as f32;
    let bias = cfg.bool_or(&["attention_bias"], false)?;
    let act = activation(cfg, &["hidden_act"], "silu")?;
    let head_dim = super::head_dim(cfg, hidden, heads)?;
    if kv_heads == 0 || heads % kv_heads != 0 {
      return Err(cfg.invalid(
        "num_key_value_heads",
        format!("{kv_heads} does not divide {heads} heads"),
      ));
    }
    if cfg.bool_or(&["use_sliding_window"], false)? {
      return Err(cfg.invalid(
        "use_sliding_window",
        "sliding-window Qwen3 layers are not supported",
      ));
    }
    let (theta, rscale) = rope_theta(cfg, None, &["rope_theta"], 1_000_000.0)?;
    let h = dim(cfg, "hidden_size", hidden)?;
    let i = dim(cfg, "intermediate_size", inter)?;
    let hd = dim(cfg, "head_dim", head_dim)?;
    let qd = dim(cfg, "num_attention_heads", heads * head_dim)?;
    let kvd = dim(cfg, "num_key_value_heads", kv_heads * head_dim)?;
    let layers = (0..n)
      .map(|_| Layer {
        in_norm: RmsNorm::new(h, eps),
        q: Linear::new(h, qd, bias),
        k: Linear::new(h, kvd, bias),
        v: Linear::new(h, kvd, bias),
        o: Linear::new(qd, h, bias),
        q_norm: RmsNorm::new(hd, eps),
        k_norm: RmsNorm::new(hd, eps),
        post_norm: RmsNorm::new(h, eps),
        gate: Linear::new(h, i, false),
        up: Linear::new(h, i, false),
        down: Linear::new(i, h, false),
      })
      .collect();
    Ok(Qwen3 {
      embed: Embedding::new(dim(cfg, "vocab_size", vocab)?, h),
      layers,
      norm: RmsNorm::new(h, eps),
      act,
      hidden,
      heads,
      kv_heads,
      head_dim,
      rope: Rope::new(hd, false, theta, rscale),
      pad: cfg.opt_usize(&["pad_token_id"])?.map(|p| p as u32),
    })
  }
}

impl Encoder for Qwen3 {
  fn unused_tensors(&self) -> &'static [&'static str] {
    &["rotary_emb.inv_freq"]
  }

  fn forward(&self, input: &ModelInput<'_>) -> Result<Array> {
    let mut x = self.embed.forward(input.ids)?;
    // Right padding: a causal mask plus the key mask keeps every real token's
    // view identical to the unpadded sequence.
    let mask = attention_mask(input.mask, AttnPattern::Causal)?;
    let scale = 1.0 / (self.head_dim as f32).sqrt();
    for l in &self.layers {
      let h = l.in_norm.forward(&x)?;
      let a = attend(
        &l.q.forward(&h)?,
        &l.k.forward(&h)?,
        &l.v.forward(&h)?,
        Heads {
          q: self.heads,
          kv: self.kv_heads,
          dim: self.head_dim,
        },
        scale,
        &mask,
        |t, is_q| {
          let n = if is_q { &l.q_norm } else { &l.k_norm };
          Ok(self.rope.forward(&n.forward(&t)?, 0)?)
        },
      )?;
      x = (&x + &l.o.forward(&a)?)?;
      let h = l.post_norm.forward(&x)?;
      let m = (&self.act.forward(&l.gate.forward(&h)?)? * &l.up.forward(&h)?)?;
      x = (&x + &l.down.forward(&m)?)?;
    }
    Ok(self.norm.forward(&x)?)
  }

  fn hidden_size(&self) -> usize {
    self.hidden
  }

  fn max_positions(&self) -> Option<usize> {
    None
  }

  fn model_type(&self) -> &str {
    "qwen3"
  }

  fn pad_token_id(&self) -> Option<u32> {
    self.pad
  }
}
