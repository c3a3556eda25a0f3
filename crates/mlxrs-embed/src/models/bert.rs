//! BERT and the RoBERTa family (`bert`, `roberta`, `xlm-roberta`,
//! `camembert`): learned absolute positions, post-norm encoder layers.
//! Python: transformers `BertModel` / `XLMRobertaModel` (mlx-embeddings
//! `models/bert.py`, `models/xlm_roberta.py`).
//!
//! RoBERTa models differ only in their position ids, which start after the
//! padding index and skip padding tokens
//! (`create_position_ids_from_input_ids`).

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::{Embedding, LayerNorm, Linear, module};

use super::{Encoder, ModelInput, activation};
use crate::activation::Activation;
use crate::attention::{AttnPattern, Heads, attend, attention_mask};
use crate::checkpoint::Checkpoint;
use crate::config::JsonConfig;
use crate::error::Result;

/// The tensor every BERT-family checkpoint has (its path gives the prefix).
pub const ANCHOR: &str = "embeddings.word_embeddings.weight";

struct Layer {
  q: Linear,
  k: Linear,
  v: Linear,
  o: Linear,
  attn_norm: LayerNorm,
  up: Linear,
  down: Linear,
  out_norm: LayerNorm,
}

module!(Layer {
  q => "attention.self.query",
  k => "attention.self.key",
  v => "attention.self.value",
  o => "attention.output.dense",
  attn_norm => "attention.output.LayerNorm",
  up => "intermediate.dense",
  down => "output.dense",
  out_norm => "output.LayerNorm",
});

/// A BERT / RoBERTa encoder (python `BertModel`, with its pooler when the
/// checkpoint has one).
pub struct Bert {
  model_type: String,
  word: Embedding,
  pos: Embedding,
  token_type: Option<Embedding>,
  emb_norm: LayerNorm,
  layers: Vec<Layer>,
  /// `pooler.dense` (`tanh(W h_cls + b)`, used by sequence-classification
  /// heads), when the checkpoint has it.
  pub pooler: Option<Linear>,
  act: Activation,
  hidden: usize,
  heads: usize,
  head_dim: usize,
  max_pos: usize,
  pad: u32,
  /// RoBERTa-style position ids (`padding_idx + 1 + …`).
  roberta_positions: bool,
}

module!(Bert {
  word => "embeddings.word_embeddings",
  pos => "embeddings.position_embeddings",
  token_type => "embeddings.token_type_embeddings",
  emb_norm => "embeddings.LayerNorm",
  layers => "encoder.layer",
  pooler => "pooler.dense",
});

impl Bert {
  /// Build from `config.json`, unloaded; the optional parts (token types,
  /// pooler) are those `ckpt` has under `prefix`.
  pub fn new(cfg: &JsonConfig, ckpt: &Checkpoint, prefix: &str) -> Result<Bert> {
    let model_type = cfg.str_or(&["model_type"], "bert")?.to_string();
    let roberta_positions = model_type != "bert";
    let hidden = cfg.positive(&["hidden_size"])?;
    let layers_n = cfg.positive(&["num_hidden_layers"])?;
    let heads = cfg.positive(&["num_attention_heads"])?;
    let inter = cfg.positive(&["intermediate_size"])?;
    let vocab = cfg.positive(&["vocab_size"])?;
    let max_pos = cfg.positive(&["max_position_embeddings"])?;
    let types = cfg.opt_usize(&["type_vocab_size"])?.unwrap_or(2);
    let eps = cfg.f64_or(&["layer_norm_eps"], 1e-12)? as f32;
    let pad = cfg
      .opt_usize(&["pad_token_id"])?
      .unwrap_or(if roberta_positions { 1 } else { 0 });
    let act = activation(cfg, &["hidden_act"], "gelu")?;
    if let Some(pe) = cfg.opt_str(&["position_embedding_type"])? {
      if pe != "absolute" {
        return Err(cfg.invalid(
          "position_embedding_type",
          format!("only \"absolute\" is supported, got {pe:?}"),
        ));
      }
    }
    if hidden % heads != 0 {
      return Err(cfg.invalid(
        "num_attention_heads",
        format!("hidden size {hidden} is not a multiple of {heads}"),
      ));
    }
    if roberta_positions && max_pos <= pad + 1 {
      return Err(cfg.invalid(
        "max_position_embeddings",
        "too small for RoBERTa position ids",
      ));
    }
    let has = |name: &str| ckpt.has(&mlxrs_nn::join(prefix, name));
    let h = super::dim(cfg, "hidden_size", hidden)?;
    let i = super::dim(cfg, "intermediate_size", inter)?;
    let ln = || LayerNorm::new(h, eps, true, true);
    let layers = (0..layers_n)
      .map(|_| Layer {
        q: Linear::new(h, h, true),
        k: Linear::new(h, h, true),
        v: Linear::new(h, h, true),
        o: Linear::new(h, h, true),
        attn_norm: ln(),
        up: Linear::new(h, i, true),
        down: Linear::new(i, h, true),
        out_norm: ln(),
      })
      .collect();
    Ok(Bert {
      model_type,
      word: Embedding::new(super::dim(cfg, "vocab_size", vocab)?, h),
      pos: Embedding::new(super::dim(cfg, "max_position_embeddings", max_pos)?, h),
      token_type: (types > 0 && has("embeddings.token_type_embeddings.weight"))
        .then(|| super::dim(cfg, "type_vocab_size", types).map(|t| Embedding::new(t, h)))
        .transpose()?,
      emb_norm: ln(),
      layers,
      pooler: has("pooler.dense.weight").then(|| Linear::new(h, h, true)),
      act,
      hidden,
      heads,
      head_dim: hidden / heads,
      max_pos,
      pad: pad as u32,
      roberta_positions,
    })
  }

  fn position_ids(&self, input: &ModelInput<'_>) -> Result<Array> {
    let (b, t) = (input.batch, input.seq);
    if !self.roberta_positions {
      return Ok(ops::arange(0.0, t as f64, 1.0, Dtype::Int32)?);
    }
    // create_position_ids_from_input_ids: cumsum(ids != pad) * (ids != pad) + pad
    let pad = self.pad as i32;
    let mut pos = vec![pad; b * t];
    for r in 0..b {
      let mut n = 0;
      for c in 0..t {
        if input.host_ids[r * t + c] != pad {
          n += 1;
          pos[r * t + c] = pad + n;
        }
      }
    }
    Ok(Array::from_slice(&pos, &[b as i32, t as i32])?)
  }
}

impl Encoder for Bert {
  fn unused_tensors(&self) -> &'static [&'static str] {
    &["embeddings.position_ids"]
  }

  fn forward(&self, input: &ModelInput<'_>) -> Result<Array> {
    let mut x = self.word.forward(input.ids)?;
    x = (&x + &self.pos.forward(&self.position_ids(input)?)?)?;
    if let Some(tt) = &self.token_type {
      x = (&x + &tt.forward(input.type_ids)?)?;
    }
    x = self.emb_norm.forward(&x)?;
    let mask = attention_mask(input.mask, AttnPattern::Full)?;
    let scale = 1.0 / (self.head_dim as f32).sqrt();
    for l in &self.layers {
      let a = attend(
        &l.q.forward(&x)?,
        &l.k.forward(&x)?,
        &l.v.forward(&x)?,
        Heads {
          q: self.heads,
          kv: self.heads,
          dim: self.head_dim,
        },
        scale,
        &mask,
        |t, _| Ok(t),
      )?;
      x = l.attn_norm.forward(&(&x + &l.o.forward(&a)?)?)?;
      let h = self.act.forward(&l.up.forward(&x)?)?;
      x = l.out_norm.forward(&(&x + &l.down.forward(&h)?)?)?;
    }
    Ok(x)
  }

  fn hidden_size(&self) -> usize {
    self.hidden
  }

  fn max_positions(&self) -> Option<usize> {
    Some(if self.roberta_positions {
      self.max_pos - self.pad as usize - 1
    } else {
      self.max_pos
    })
  }

  fn model_type(&self) -> &str {
    &self.model_type
  }

  fn pad_token_id(&self) -> Option<u32> {
    Some(self.pad)
  }
}
