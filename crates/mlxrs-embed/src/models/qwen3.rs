//! Qwen3 as an embedding model (Qwen3-Embedding): the causal decoder stack
//! — RMSNorm, GQA attention with per-head q/k RMSNorm and RoPE, SwiGLU MLP
//! — read out by last-token pooling. Python: transformers `Qwen3Model`
//! (mlx-embeddings `models/qwen3.py`).

use mlxrs_core::Array;

use super::{Encoder, ModelInput, activation, rope_theta};
use crate::config::JsonConfig;
use crate::error::Result;
use crate::layers::{
  Activation, AttnPattern, Embedding, Heads, Linear, RmsNorm, attend, attention_mask, rope,
};
use crate::weights::Weights;

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
  rope: (f32, f32),
  pad: Option<u32>,
}

impl Qwen3 {
  /// Build from `config.json` and the checkpoint.
  pub fn load(cfg: &JsonConfig, w: &mut Weights) -> Result<Qwen3> {
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
    let rope = rope_theta(cfg, None, &["rope_theta"], 1_000_000.0)?;
    w.detect_prefix("embed_tokens.weight")?;
    let embed = Embedding::load(w, "embed_tokens", vocab, hidden)?;
    let (qd, kvd) = (heads * head_dim, kv_heads * head_dim);
    let mut layers = Vec::with_capacity(n);
    for i in 0..n {
      let p = format!("layers.{i}");
      layers.push(Layer {
        in_norm: RmsNorm::load(w, &format!("{p}.input_layernorm"), hidden, eps, false)?,
        q: Linear::load(w, &format!("{p}.self_attn.q_proj"), hidden, qd, bias)?,
        k: Linear::load(w, &format!("{p}.self_attn.k_proj"), hidden, kvd, bias)?,
        v: Linear::load(w, &format!("{p}.self_attn.v_proj"), hidden, kvd, bias)?,
        o: Linear::load(w, &format!("{p}.self_attn.o_proj"), qd, hidden, bias)?,
        q_norm: RmsNorm::load(w, &format!("{p}.self_attn.q_norm"), head_dim, eps, false)?,
        k_norm: RmsNorm::load(w, &format!("{p}.self_attn.k_norm"), head_dim, eps, false)?,
        post_norm: RmsNorm::load(
          w,
          &format!("{p}.post_attention_layernorm"),
          hidden,
          eps,
          false,
        )?,
        gate: Linear::load(w, &format!("{p}.mlp.gate_proj"), hidden, inter, false)?,
        up: Linear::load(w, &format!("{p}.mlp.up_proj"), hidden, inter, false)?,
        down: Linear::load(w, &format!("{p}.mlp.down_proj"), inter, hidden, false)?,
      });
    }
    let norm = RmsNorm::load(w, "norm", hidden, eps, false)?;
    Ok(Qwen3 {
      embed,
      layers,
      norm,
      act,
      hidden,
      heads,
      kv_heads,
      head_dim,
      rope,
      pad: cfg.opt_usize(&["pad_token_id"])?.map(|p| p as u32),
    })
  }
}

impl Encoder for Qwen3 {
  fn forward(&self, input: &ModelInput<'_>) -> Result<Array> {
    let mut x = self.embed.forward(input.ids)?;
    // Right padding: a causal mask plus the key mask keeps every real token's
    // view identical to the unpadded sequence.
    let mask = attention_mask(input.mask, AttnPattern::Causal)?;
    let scale = 1.0 / (self.head_dim as f32).sqrt();
    let (theta, rscale) = self.rope;
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
          rope(&n.forward(&t)?, self.head_dim, theta, rscale)
        },
      )?;
      x = (&x + &l.o.forward(&a)?)?;
      let h = l.post_norm.forward(&x)?;
      let m = (&self.act.forward(&l.gate.forward(&h)?)? * &l.up.forward(&h)?)?;
      x = (&x + &l.down.forward(&m)?)?;
    }
    self.norm.forward(&x)
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
