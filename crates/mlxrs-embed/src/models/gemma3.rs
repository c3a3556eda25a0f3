//! Gemma 3 text (`gemma3_text`; EmbeddingGemma): scaled embeddings, RMSNorm
//! with `1 + weight` scales around both attention and MLP, GQA attention
//! with q/k norms, GeGLU (tanh GELU) MLP, and interleaved sliding-window /
//! global layers with their own RoPE thetas. Python: transformers
//! `Gemma3TextModel` (mlx-embeddings `models/gemma3_text.py`).
//!
//! With `use_bidirectional_attention` (EmbeddingGemma) global layers see
//! every key and sliding layers keys with `|q - k| <= sliding_window / 2`;
//! otherwise attention is causal (sliding: `0 <= q - k < sliding_window`).

use mlxrs_core::Array;
use mlxrs_nn::{Embedding, Linear, RmsNorm, Rope, module};

use super::{Encoder, ModelInput, activation, dim, layer_types, rope_theta};
use crate::activation::Activation;
use crate::attention::{AttnPattern, Heads, attend, attention_mask};
use crate::config::JsonConfig;
use crate::error::Result;

/// The tensor every Gemma 3 checkpoint has (its path gives the prefix).
pub const ANCHOR: &str = "embed_tokens.weight";

struct Layer {
  in_norm: RmsNorm,
  q: Linear,
  k: Linear,
  v: Linear,
  o: Linear,
  q_norm: RmsNorm,
  k_norm: RmsNorm,
  post_attn_norm: RmsNorm,
  pre_ff_norm: RmsNorm,
  post_ff_norm: RmsNorm,
  gate: Linear,
  up: Linear,
  down: Linear,
  sliding: bool,
}

module!(Layer {
  in_norm => "input_layernorm",
  q => "self_attn.q_proj",
  k => "self_attn.k_proj",
  v => "self_attn.v_proj",
  o => "self_attn.o_proj",
  q_norm => "self_attn.q_norm",
  k_norm => "self_attn.k_norm",
  post_attn_norm => "post_attention_layernorm",
  pre_ff_norm => "pre_feedforward_layernorm",
  post_ff_norm => "post_feedforward_layernorm",
  gate => "mlp.gate_proj",
  up => "mlp.up_proj",
  down => "mlp.down_proj",
});

/// A Gemma 3 text model used as an encoder.
pub struct Gemma3 {
  embed: Embedding,
  embed_scale: f32,
  layers: Vec<Layer>,
  norm: RmsNorm,
  act: Activation,
  hidden: usize,
  heads: usize,
  kv_heads: usize,
  head_dim: usize,
  scale: f32,
  global_rope: Rope,
  local_rope: Rope,
  full_pattern: AttnPattern,
  sliding_pattern: AttnPattern,
  pad: Option<u32>,
}

module!(Gemma3 {
  embed => "embed_tokens",
  layers,
  norm,
});

impl Gemma3 {
  /// Build from `config.json`, unloaded.
  pub fn new(cfg: &JsonConfig) -> Result<Gemma3> {
    let hidden = cfg.positive(&["hidden_size"])?;
    let n = cfg.positive(&["num_hidden_layers"])?;
    let heads = cfg.positive(&["num_attention_heads"])?;
    let kv_heads = cfg.opt_usize(&["num_key_value_heads"])?.unwrap_or(heads);
    let inter = cfg.positive(&["intermediate_size"])?;
    let vocab = cfg.positive(&["vocab_size"])?;
    let eps = cfg.f64_or(&["rms_norm_eps"], 1e-6)? as f32;
    let bias = cfg.bool_or(&["attention_bias"], false)?;
    let act = activation(
      cfg,
      &["hidden_activation", "hidden_act"],
      "gelu_pytorch_tanh",
    )?;
    let head_dim = super::head_dim(cfg, hidden, heads)?;
    if kv_heads == 0 || heads % kv_heads != 0 {
      return Err(cfg.invalid(
        "num_key_value_heads",
        format!("{kv_heads} does not divide {heads} heads"),
      ));
    }
    if cfg.get("attn_logit_softcapping").is_some() {
      return Err(cfg.invalid(
        "attn_logit_softcapping",
        "attention logit soft-capping is not supported",
      ));
    }
    let scalar = cfg.f64_or(&["query_pre_attn_scalar"], head_dim as f64)?;
    if scalar <= 0.0 {
      return Err(cfg.invalid("query_pre_attn_scalar", "must be positive"));
    }
    let pattern = cfg
      .opt_usize(&["sliding_window_pattern", "_sliding_window_pattern"])?
      .unwrap_or(6)
      .max(1);
    let sliding = layer_types(cfg, n, |i| (i + 1) % pattern != 0)?;
    let window = cfg.opt_usize(&["sliding_window"])?.unwrap_or(4096);
    let bidirectional = cfg.bool_or(&["use_bidirectional_attention"], false)?;
    let (full_pattern, sliding_pattern) = if bidirectional {
      // transformers: window' = window // 2 + 1, allowed |q - k| < window'.
      (AttnPattern::Full, AttnPattern::Window(window / 2))
    } else {
      (AttnPattern::Causal, AttnPattern::CausalWindow(window))
    };
    let global_rope = rope_theta(cfg, Some("full_attention"), &["rope_theta"], 1_000_000.0)?;
    let local_rope = rope_theta(
      cfg,
      Some("sliding_attention"),
      &["rope_local_base_freq"],
      10_000.0,
    )?;

    let h = dim(cfg, "hidden_size", hidden)?;
    let i = dim(cfg, "intermediate_size", inter)?;
    let hd = dim(cfg, "head_dim", head_dim)?;
    let qd = dim(cfg, "num_attention_heads", heads * head_dim)?;
    let kvd = dim(cfg, "num_key_value_heads", kv_heads * head_dim)?;
    // Gemma's RMSNorm scales by `1 + weight`.
    let norm = |d: i32| RmsNorm::new_plus_one(d, eps);
    let layers = sliding
      .iter()
      .map(|&sliding| Layer {
        in_norm: norm(h),
        q: Linear::new(h, qd, bias),
        k: Linear::new(h, kvd, bias),
        v: Linear::new(h, kvd, bias),
        o: Linear::new(qd, h, bias),
        q_norm: norm(hd),
        k_norm: norm(hd),
        post_attn_norm: norm(h),
        pre_ff_norm: norm(h),
        post_ff_norm: norm(h),
        gate: Linear::new(h, i, false),
        up: Linear::new(h, i, false),
        down: Linear::new(i, h, false),
        sliding,
      })
      .collect();
    let rope = |(theta, scale): (f32, f32)| Rope::new(hd, false, theta, scale);
    Ok(Gemma3 {
      embed: Embedding::new(dim(cfg, "vocab_size", vocab)?, h),
      embed_scale: (hidden as f32).sqrt(),
      layers,
      norm: norm(h),
      act,
      hidden,
      heads,
      kv_heads,
      head_dim,
      scale: (1.0 / scalar.sqrt()) as f32,
      global_rope: rope(global_rope),
      local_rope: rope(local_rope),
      full_pattern,
      sliding_pattern,
      pad: cfg.opt_usize(&["pad_token_id"])?.map(|p| p as u32),
    })
  }
}

impl Encoder for Gemma3 {
  fn forward(&self, input: &ModelInput<'_>) -> Result<Array> {
    let mut x = (&self.embed.forward(input.ids)? * self.embed_scale)?;
    let full = attention_mask(input.mask, self.full_pattern)?;
    let local = attention_mask(input.mask, self.sliding_pattern)?;
    for l in &self.layers {
      let rope = if l.sliding {
        &self.local_rope
      } else {
        &self.global_rope
      };
      let mask = if l.sliding { &local } else { &full };
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
        self.scale,
        mask,
        |t, is_q| {
          let n = if is_q { &l.q_norm } else { &l.k_norm };
          Ok(rope.forward(&n.forward(&t)?, 0)?)
        },
      )?;
      x = (&x + &l.post_attn_norm.forward(&l.o.forward(&a)?)?)?;
      let h = l.pre_ff_norm.forward(&x)?;
      let m = (&self.act.forward(&l.gate.forward(&h)?)? * &l.up.forward(&h)?)?;
      x = (&x + &l.post_ff_norm.forward(&l.down.forward(&m)?)?)?;
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
    "gemma3_text"
  }

  fn pad_token_id(&self) -> Option<u32> {
    self.pad
  }
}
