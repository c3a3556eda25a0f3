//! Nomic BERT (`nomic_bert`, nomic-embed-text): post-norm BERT with rotary
//! positions, no position table, SwiGLU MLP and bias-free projections.
//! Python: transformers `NomicBertModel` and nomic's original
//! `modeling_hf_nomic_bert.py` (mlx-embeddings `models/nomic_bert.py`).
//!
//! Both tensor namings load: the original one that hub checkpoints (and
//! transformers' `save_pretrained`) use — `emb_ln`, `encoder.layers.N.attn.
//! Wqkv`, `mlp.fc11` (up) / `fc12` (gate) / `fc2`, `norm1` / `norm2` — and
//! transformers' in-memory one (`self_attn.q_proj`, `mlp.up_proj`, ...).

use mlxrs_core::{Array, ops};

use super::{Encoder, ModelInput, activation, rope_theta};
use crate::config::JsonConfig;
use crate::error::Result;
use crate::layers::{
  Activation, AttnPattern, Embedding, Heads, LayerNorm, Linear, attend, attention_mask, rope_with,
};
use crate::weights::Weights;

enum Qkv {
  Fused(Linear),
  Split(Linear, Linear, Linear),
}

struct Layer {
  qkv: Qkv,
  o: Linear,
  norm1: LayerNorm,
  up: Linear,
  gate: Linear,
  down: Linear,
  norm2: LayerNorm,
}

/// A Nomic BERT encoder.
pub struct NomicBert {
  word: Embedding,
  token_type: Option<Embedding>,
  emb_norm: LayerNorm,
  layers: Vec<Layer>,
  act: Activation,
  hidden: usize,
  heads: usize,
  head_dim: usize,
  rotary_dims: usize,
  rope: (f32, f32),
  interleaved: bool,
  pad: Option<u32>,
}

impl NomicBert {
  /// Build from `config.json` (transformers' or nomic's field names) and
  /// the checkpoint.
  pub fn load(cfg: &JsonConfig, w: &mut Weights) -> Result<NomicBert> {
    let hidden = cfg.positive(&["hidden_size", "n_embd"])?;
    let n = cfg.positive(&["num_hidden_layers", "n_layer"])?;
    let heads = cfg.positive(&["num_attention_heads", "n_head"])?;
    let inter = cfg
      .opt_usize(&["intermediate_size", "n_inner"])?
      .unwrap_or(4 * hidden);
    let vocab = cfg.positive(&["vocab_size"])?;
    let types = cfg.opt_usize(&["type_vocab_size"])?.unwrap_or(2);
    let eps = cfg.f64_or(&["layer_norm_eps", "layer_norm_epsilon"], 1e-12)? as f32;
    let act = activation(cfg, &["hidden_act", "activation_function"], "silu")?;
    let head_dim = super::head_dim(cfg, hidden, heads)?;
    if head_dim * heads != hidden {
      return Err(cfg.invalid("head_dim", "heads * head_dim must equal the hidden size"));
    }
    if cfg.bool_or(&["prenorm"], false)? {
      return Err(cfg.invalid("prenorm", "pre-norm Nomic BERT is not supported"));
    }
    let fraction = cfg.f64_or(&["rotary_emb_fraction"], 1.0)?;
    let rotary_dims = ((head_dim as f64) * fraction).round() as usize;
    if rotary_dims == 0 || rotary_dims > head_dim || rotary_dims % 2 != 0 {
      return Err(cfg.invalid(
        "rotary_emb_fraction",
        format!("gives {rotary_dims} rotary dims of {head_dim}"),
      ));
    }
    let rope = rope_theta(cfg, None, &["rotary_emb_base", "rope_theta"], 1000.0)?;
    let interleaved = cfg.bool_or(&["rotary_emb_interleaved"], false)?;

    w.detect_prefix("embeddings.word_embeddings.weight")?;
    let original = w.contains("emb_ln.weight");
    let word = Embedding::load(w, "embeddings.word_embeddings", vocab, hidden)?;
    let token_type = if types > 0 && w.contains("embeddings.token_type_embeddings.weight") {
      Some(Embedding::load(
        w,
        "embeddings.token_type_embeddings",
        types,
        hidden,
      )?)
    } else {
      None
    };
    let emb_norm = LayerNorm::load(
      w,
      if original {
        "emb_ln"
      } else {
        "embeddings.LayerNorm"
      },
      hidden,
      eps,
      true,
    )?;
    let mut layers = Vec::with_capacity(n);
    for i in 0..n {
      let layer = if original {
        let p = format!("encoder.layers.{i}");
        Layer {
          qkv: Qkv::Fused(Linear::load_opt_bias(
            w,
            &format!("{p}.attn.Wqkv"),
            hidden,
            3 * hidden,
          )?),
          o: Linear::load_opt_bias(w, &format!("{p}.attn.out_proj"), hidden, hidden)?,
          norm1: LayerNorm::load(w, &format!("{p}.norm1"), hidden, eps, true)?,
          up: Linear::load_opt_bias(w, &format!("{p}.mlp.fc11"), hidden, inter)?,
          gate: Linear::load_opt_bias(w, &format!("{p}.mlp.fc12"), hidden, inter)?,
          down: Linear::load_opt_bias(w, &format!("{p}.mlp.fc2"), inter, hidden)?,
          norm2: LayerNorm::load(w, &format!("{p}.norm2"), hidden, eps, true)?,
        }
      } else {
        let p = format!("layers.{i}");
        let lin = |w: &mut Weights, name: &str, i: usize, o: usize| {
          Linear::load_opt_bias(w, &format!("{p}.{name}"), i, o)
        };
        Layer {
          qkv: Qkv::Split(
            lin(w, "self_attn.q_proj", hidden, hidden)?,
            lin(w, "self_attn.k_proj", hidden, hidden)?,
            lin(w, "self_attn.v_proj", hidden, hidden)?,
          ),
          o: lin(w, "self_attn.o_proj", hidden, hidden)?,
          norm1: LayerNorm::load(
            w,
            &format!("{p}.post_attention_layernorm"),
            hidden,
            eps,
            true,
          )?,
          up: lin(w, "mlp.up_proj", hidden, inter)?,
          gate: lin(w, "mlp.gate_proj", hidden, inter)?,
          down: lin(w, "mlp.down_proj", inter, hidden)?,
          norm2: LayerNorm::load(w, &format!("{p}.post_mlp_layernorm"), hidden, eps, true)?,
        }
      };
      layers.push(layer);
    }
    Ok(NomicBert {
      word,
      token_type,
      emb_norm,
      layers,
      act,
      hidden,
      heads,
      head_dim,
      rotary_dims,
      rope,
      interleaved,
      pad: cfg.opt_usize(&["pad_token_id"])?.map(|p| p as u32),
    })
  }
}

impl Encoder for NomicBert {
  fn forward(&self, input: &ModelInput<'_>) -> Result<Array> {
    let mut x = self.word.forward(input.ids)?;
    if let Some(tt) = &self.token_type {
      x = (&x + &tt.forward(input.type_ids)?)?;
    }
    x = self.emb_norm.forward(&x)?;
    let mask = attention_mask(input.mask, AttnPattern::Full)?;
    let scale = 1.0 / (self.head_dim as f32).sqrt();
    let (b, t, hh) = (input.batch as i32, input.seq as i32, self.hidden as i32);
    for l in &self.layers {
      let (q, k, v) = match &l.qkv {
        Qkv::Fused(f) => {
          let qkv = f.forward(&x)?;
          (
            ops::slice(&qkv, &[0, 0, 0], &[b, t, hh], &[1, 1, 1])?,
            ops::slice(&qkv, &[0, 0, hh], &[b, t, 2 * hh], &[1, 1, 1])?,
            ops::slice(&qkv, &[0, 0, 2 * hh], &[b, t, 3 * hh], &[1, 1, 1])?,
          )
        }
        Qkv::Split(q, k, v) => (q.forward(&x)?, k.forward(&x)?, v.forward(&x)?),
      };
      let (theta, rscale) = self.rope;
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
        &mask,
        |t, _| rope_with(&t, self.rotary_dims, theta, rscale, self.interleaved),
      )?;
      x = l.norm1.forward(&(&x + &l.o.forward(&a)?)?)?;
      let m = (&self.act.forward(&l.gate.forward(&x)?)? * &l.up.forward(&x)?)?;
      x = l.norm2.forward(&(&x + &l.down.forward(&m)?)?)?;
    }
    Ok(x)
  }

  fn hidden_size(&self) -> usize {
    self.hidden
  }

  fn max_positions(&self) -> Option<usize> {
    None
  }

  fn model_type(&self) -> &str {
    "nomic_bert"
  }

  fn pad_token_id(&self) -> Option<u32> {
    self.pad
  }
}
