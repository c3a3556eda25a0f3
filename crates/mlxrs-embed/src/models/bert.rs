//! BERT and the RoBERTa family (`bert`, `roberta`, `xlm-roberta`,
//! `camembert`): learned absolute positions, post-norm encoder layers.
//! Python: transformers `BertModel` / `XLMRobertaModel` (mlx-embeddings
//! `models/bert.py`, `models/xlm_roberta.py`).
//!
//! RoBERTa models differ only in their position ids, which start after the
//! padding index and skip padding tokens
//! (`create_position_ids_from_input_ids`).

use mlxrs_core::{Array, Dtype, ops};

use super::{Encoder, ModelInput, activation};
use crate::config::JsonConfig;
use crate::error::Result;
use crate::layers::{
  Activation, AttnPattern, Embedding, Heads, LayerNorm, Linear, attend, attention_mask,
};
use crate::weights::Weights;

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

/// A BERT / RoBERTa encoder.
pub struct Bert {
  model_type: String,
  word: Embedding,
  pos: Embedding,
  token_type: Option<Embedding>,
  emb_norm: LayerNorm,
  layers: Vec<Layer>,
  act: Activation,
  hidden: usize,
  heads: usize,
  head_dim: usize,
  max_pos: usize,
  pad: u32,
  /// RoBERTa-style position ids (`padding_idx + 1 + …`).
  roberta_positions: bool,
}

impl Bert {
  /// Build from `config.json` and the checkpoint.
  pub fn load(cfg: &JsonConfig, w: &mut Weights) -> Result<Bert> {
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
    w.detect_prefix("embeddings.word_embeddings.weight")?;
    let word = Embedding::load(w, "embeddings.word_embeddings", vocab, hidden)?;
    let pos = Embedding::load(w, "embeddings.position_embeddings", max_pos, hidden)?;
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
    let emb_norm = LayerNorm::load(w, "embeddings.LayerNorm", hidden, eps, true)?;
    let mut layers = Vec::with_capacity(layers_n);
    for i in 0..layers_n {
      let p = format!("encoder.layer.{i}");
      layers.push(Layer {
        q: Linear::load(
          w,
          &format!("{p}.attention.self.query"),
          hidden,
          hidden,
          true,
        )?,
        k: Linear::load(w, &format!("{p}.attention.self.key"), hidden, hidden, true)?,
        v: Linear::load(
          w,
          &format!("{p}.attention.self.value"),
          hidden,
          hidden,
          true,
        )?,
        o: Linear::load(
          w,
          &format!("{p}.attention.output.dense"),
          hidden,
          hidden,
          true,
        )?,
        attn_norm: LayerNorm::load(
          w,
          &format!("{p}.attention.output.LayerNorm"),
          hidden,
          eps,
          true,
        )?,
        up: Linear::load(w, &format!("{p}.intermediate.dense"), hidden, inter, true)?,
        down: Linear::load(w, &format!("{p}.output.dense"), inter, hidden, true)?,
        out_norm: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), hidden, eps, true)?,
      });
    }
    Ok(Bert {
      model_type,
      word,
      pos,
      token_type,
      emb_norm,
      layers,
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
