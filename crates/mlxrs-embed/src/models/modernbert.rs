//! ModernBERT: pre-norm encoder with RoPE, fused `Wqkv`, GeGLU MLP, and
//! alternating global / local (sliding-window) attention. Python:
//! transformers `ModernBertModel` (mlx-embeddings `models/modernbert.py`).
//!
//! Local layers attend to keys with `|q - k| <= local_attention / 2` and use
//! `local_rope_theta`; global layers see every key and use
//! `global_rope_theta`.

use mlxrs_core::{Array, ops};
use mlxrs_nn::{Embedding, LayerNorm, Linear, Rope, module};

use super::{Encoder, ModelInput, activation, dim, layer_types, rope_theta};
use crate::activation::Activation;
use crate::attention::{AttnPattern, Heads, attend, attention_mask};
use crate::config::JsonConfig;
use crate::error::Result;

/// The tensor every ModernBERT checkpoint has (its path gives the prefix).
pub const ANCHOR: &str = "embeddings.tok_embeddings.weight";

struct Layer {
  attn_norm: Option<LayerNorm>,
  wqkv: Linear,
  wo: Linear,
  mlp_norm: LayerNorm,
  wi: Linear,
  mlp_wo: Linear,
  sliding: bool,
}

module!(Layer {
  attn_norm,
  wqkv => "attn.Wqkv",
  wo => "attn.Wo",
  mlp_norm,
  wi => "mlp.Wi",
  mlp_wo => "mlp.Wo",
});

/// A ModernBERT encoder.
pub struct ModernBert {
  tok: Embedding,
  emb_norm: LayerNorm,
  layers: Vec<Layer>,
  final_norm: LayerNorm,
  act: Activation,
  hidden: usize,
  heads: usize,
  head_dim: usize,
  inter: usize,
  window_radius: usize,
  global_rope: Rope,
  local_rope: Rope,
  pad: Option<u32>,
}

module!(ModernBert {
  tok => "embeddings.tok_embeddings",
  emb_norm => "embeddings.norm",
  layers,
  final_norm,
});

impl ModernBert {
  /// Build from `config.json`, unloaded.
  pub fn new(cfg: &JsonConfig) -> Result<ModernBert> {
    let hidden = cfg.positive(&["hidden_size"])?;
    let n = cfg.positive(&["num_hidden_layers"])?;
    let heads = cfg.positive(&["num_attention_heads"])?;
    let inter = cfg.positive(&["intermediate_size"])?;
    let vocab = cfg.positive(&["vocab_size"])?;
    let eps = cfg.f64_or(&["norm_eps"], 1e-5)? as f32;
    let norm_bias = cfg.bool_or(&["norm_bias"], false)?;
    let attn_bias = cfg.bool_or(&["attention_bias"], false)?;
    let mlp_bias = cfg.bool_or(&["mlp_bias"], false)?;
    let act = activation(cfg, &["hidden_activation"], "gelu")?;
    let every = cfg
      .opt_usize(&["global_attn_every_n_layers"])?
      .unwrap_or(3)
      .max(1);
    let sliding = layer_types(cfg, n, |i| i % every != 0)?;
    let local = cfg.opt_usize(&["local_attention"])?.unwrap_or(128);
    let global_rope = rope_theta(
      cfg,
      Some("full_attention"),
      &["global_rope_theta"],
      160_000.0,
    )?;
    let local_rope = rope_theta(
      cfg,
      Some("sliding_attention"),
      &["local_rope_theta"],
      10_000.0,
    )?;
    if hidden % heads != 0 {
      return Err(cfg.invalid(
        "num_attention_heads",
        format!("hidden size {hidden} is not a multiple of {heads}"),
      ));
    }
    let head_dim = hidden / heads;
    let h = dim(cfg, "hidden_size", hidden)?;
    let i = dim(cfg, "intermediate_size", inter)?;
    let ln = || LayerNorm::new(h, eps, true, norm_bias);
    let layers = sliding
      .iter()
      .enumerate()
      .map(|(k, &sliding)| Layer {
        attn_norm: (k != 0).then(ln),
        wqkv: Linear::new(h, 3 * h, attn_bias),
        wo: Linear::new(h, h, attn_bias),
        mlp_norm: ln(),
        wi: Linear::new(h, 2 * i, mlp_bias),
        mlp_wo: Linear::new(i, h, mlp_bias),
        sliding,
      })
      .collect();
    let rope = |(theta, scale): (f32, f32)| Rope::new(head_dim as i32, false, theta, scale);
    Ok(ModernBert {
      tok: Embedding::new(dim(cfg, "vocab_size", vocab)?, h),
      emb_norm: ln(),
      layers,
      final_norm: ln(),
      act,
      hidden,
      heads,
      head_dim,
      inter,
      window_radius: local / 2,
      global_rope: rope(global_rope),
      local_rope: rope(local_rope),
      pad: cfg.opt_usize(&["pad_token_id"])?.map(|p| p as u32),
    })
  }
}

impl Encoder for ModernBert {
  fn forward(&self, input: &ModelInput<'_>) -> Result<Array> {
    let mut x = self.emb_norm.forward(&self.tok.forward(input.ids)?)?;
    let global = attention_mask(input.mask, AttnPattern::Full)?;
    let local = attention_mask(input.mask, AttnPattern::Window(self.window_radius))?;
    let (b, t) = (input.batch as i32, input.seq as i32);
    let scale = 1.0 / (self.head_dim as f32).sqrt();
    for l in &self.layers {
      let h = match &l.attn_norm {
        Some(n) => n.forward(&x)?,
        None => x.clone(),
      };
      // Wqkv -> [B, T, 3, H, D]: q, k, v are contiguous thirds.
      let qkv = l.wqkv.forward(&h)?;
      let hh = self.hidden as i32;
      let q = ops::slice(&qkv, &[0, 0, 0], &[b, t, hh], &[1, 1, 1])?;
      let k = ops::slice(&qkv, &[0, 0, hh], &[b, t, 2 * hh], &[1, 1, 1])?;
      let v = ops::slice(&qkv, &[0, 0, 2 * hh], &[b, t, 3 * hh], &[1, 1, 1])?;
      let rope = if l.sliding {
        &self.local_rope
      } else {
        &self.global_rope
      };
      let mask = if l.sliding { &local } else { &global };
      let a = attend(
        &q,
        &k,
        &v,
        Heads {
          q: self.heads,
          kv: self.heads,
          dim: self.head_dim,
        },
        scale,
        mask,
        |t, _| Ok(rope.forward(&t, 0)?),
      )?;
      x = (&x + &l.wo.forward(&a)?)?;
      let h = l.mlp_norm.forward(&x)?;
      let gi = l.wi.forward(&h)?;
      let i = self.inter as i32;
      let inp = ops::slice(&gi, &[0, 0, 0], &[b, t, i], &[1, 1, 1])?;
      let gate = ops::slice(&gi, &[0, 0, i], &[b, t, 2 * i], &[1, 1, 1])?;
      let m = (&self.act.forward(&inp)? * &gate)?;
      x = (&x + &l.mlp_wo.forward(&m)?)?;
    }
    Ok(self.final_norm.forward(&x)?)
  }

  fn hidden_size(&self) -> usize {
    self.hidden
  }

  fn max_positions(&self) -> Option<usize> {
    None
  }

  fn model_type(&self) -> &str {
    "modernbert"
  }

  fn pad_token_id(&self) -> Option<u32> {
    self.pad
  }
}
