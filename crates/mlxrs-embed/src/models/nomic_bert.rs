//! Nomic BERT (`nomic_bert`, nomic-embed-text): post-norm BERT with rotary
//! positions, no position table, SwiGLU MLP and bias-free projections.
//! Python: transformers `NomicBertModel` and nomic's original
//! `modeling_hf_nomic_bert.py` (mlx-embeddings `models/nomic_bert.py`).
//!
//! Both tensor namings load: the original one that hub checkpoints (and
//! transformers' `save_pretrained`) use — `emb_ln`, `encoder.layers.N.attn.
//! Wqkv`, `mlp.fc11` (up) / `fc12` (gate) / `fc2`, `norm1` / `norm2` — and
//! transformers' in-memory one (`self_attn.q_proj`, `mlp.up_proj`, ...).

use std::collections::HashMap;

use mlxrs_core::{Array, ops};
use mlxrs_nn::{Embedding, LayerNorm, Linear, Rope, join, module};

use super::{Encoder, ModelInput, activation, dim, rope_theta};
use crate::activation::Activation;
use crate::attention::{AttnPattern, Heads, attend, attention_mask};
use crate::checkpoint::Checkpoint;
use crate::config::JsonConfig;
use crate::error::Result;

/// The tensor every Nomic BERT checkpoint has (its path gives the prefix).
pub const ANCHOR: &str = "embeddings.word_embeddings.weight";

struct Layer {
  wqkv: Linear,
  o: Linear,
  norm1: LayerNorm,
  up: Linear,
  gate: Linear,
  down: Linear,
  norm2: LayerNorm,
}

module!(Layer {
  wqkv => "attn.Wqkv",
  o => "attn.out_proj",
  norm1,
  up => "mlp.fc11",
  gate => "mlp.fc12",
  down => "mlp.fc2",
  norm2,
});

/// A Nomic BERT encoder (nomic's original tensor names; see [`sanitize`]).
pub struct NomicBert {
  word: Embedding,
  token_type: Option<Embedding>,
  emb_norm: LayerNorm,
  layers: Vec<Layer>,
  act: Activation,
  hidden: usize,
  heads: usize,
  head_dim: usize,
  rope: Rope,
  pad: Option<u32>,
}

module!(NomicBert {
  word => "embeddings.word_embeddings",
  token_type => "embeddings.token_type_embeddings",
  emb_norm => "emb_ln",
  layers => "encoder.layers",
});

/// Rename transformers' in-memory naming under `prefix` to nomic's original
/// one (python mlx-embeddings' `sanitize`): `embeddings.LayerNorm` ->
/// `emb_ln`, `layers.N.self_attn.{q,k,v}_proj` -> one fused
/// `encoder.layers.N.attn.Wqkv` (rows concatenated, so packed quantized
/// weights fuse the same way), `o_proj` -> `attn.out_proj`,
/// `post_attention_layernorm` -> `norm1`, `up_proj` / `gate_proj` /
/// `down_proj` -> `fc11` / `fc12` / `fc2`, `post_mlp_layernorm` -> `norm2`.
/// Checkpoints already in the original naming are left alone.
pub fn sanitize(t: &mut HashMap<String, Array>, prefix: &str) -> Result<()> {
  if t.contains_key(&join(prefix, "emb_ln.weight")) {
    return Ok(());
  }
  let head = join(prefix, "");
  let renames = [
    ("self_attn.o_proj.", "attn.out_proj."),
    ("post_attention_layernorm.", "norm1."),
    ("mlp.up_proj.", "mlp.fc11."),
    ("mlp.gate_proj.", "mlp.fc12."),
    ("mlp.down_proj.", "mlp.fc2."),
    ("post_mlp_layernorm.", "norm2."),
  ];
  let keys: Vec<String> = t.keys().cloned().collect();
  let mut qkv: HashMap<String, [Option<Array>; 3]> = HashMap::new();
  for k in keys {
    let Some(rest) = k.strip_prefix(head.as_str()) else {
      continue;
    };
    let rest = rest.to_string();
    if let Some(r) = rest.strip_prefix("embeddings.LayerNorm.") {
      if let Some(a) = t.remove(&k) {
        t.insert(join(prefix, &format!("emb_ln.{r}")), a);
      }
      continue;
    }
    let Some(r) = rest.strip_prefix("layers.") else {
      continue;
    };
    let (layer, tail) = r.split_once('.').unwrap_or((r, ""));
    let base = format!("encoder.layers.{layer}.");
    for (i, p) in [
      "self_attn.q_proj.",
      "self_attn.k_proj.",
      "self_attn.v_proj.",
    ]
    .iter()
    .enumerate()
    {
      if let Some(param) = tail.strip_prefix(p) {
        let a = t.remove(&k);
        qkv
          .entry(join(prefix, &format!("{base}attn.Wqkv.{param}")))
          .or_default()[i] = a;
      }
    }
    for (from, to) in renames {
      if let Some(param) = tail.strip_prefix(from) {
        if let Some(a) = t.remove(&k) {
          t.insert(join(prefix, &format!("{base}{to}{param}")), a);
        }
      }
    }
  }
  for (key, parts) in qkv {
    match parts {
      [Some(q), Some(k), Some(v)] => {
        t.insert(key, ops::concatenate_axis(&[q, k, v], 0)?);
      }
      _ => {
        return Err(crate::error::Error::InvalidArgument(format!(
          "{key}: q_proj, k_proj and v_proj must all be present"
        )));
      }
    }
  }
  Ok(())
}

impl NomicBert {
  /// Build from `config.json` (transformers' or nomic's field names),
  /// unloaded; the naming (nomic's original or transformers') is the one
  /// `ckpt` uses under `prefix`.
  pub fn new(cfg: &JsonConfig, ckpt: &Checkpoint, prefix: &str) -> Result<NomicBert> {
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
    let (theta, rscale) = rope_theta(cfg, None, &["rotary_emb_base", "rope_theta"], 1000.0)?;
    let interleaved = cfg.bool_or(&["rotary_emb_interleaved"], false)?;

    let has = |name: &str| ckpt.has(&join(prefix, name));
    let h = dim(cfg, "hidden_size", hidden)?;
    let i = dim(cfg, "intermediate_size", inter)?;
    // Projections take their bias when the file has one (nomic's
    // `qkv_proj_bias` / `mlp_fc1_bias` defaults differ between versions).
    let ln = || LayerNorm::new(h, eps, true, true);
    let layers = (0..n)
      .map(|k| {
        let lin = |name: &str, i: i32, o: i32| {
          Linear::new(i, o, has(&format!("encoder.layers.{k}.{name}.bias")))
        };
        Layer {
          wqkv: lin("attn.Wqkv", h, 3 * h),
          o: lin("attn.out_proj", h, h),
          norm1: ln(),
          up: lin("mlp.fc11", h, i),
          gate: lin("mlp.fc12", h, i),
          down: lin("mlp.fc2", i, h),
          norm2: ln(),
        }
      })
      .collect();
    let token_type = (types > 0 && has("embeddings.token_type_embeddings.weight"))
      .then(|| dim(cfg, "type_vocab_size", types).map(|t| Embedding::new(t, h)))
      .transpose()?;
    Ok(NomicBert {
      word: Embedding::new(dim(cfg, "vocab_size", vocab)?, h),
      token_type,
      emb_norm: ln(),
      layers,
      act,
      hidden,
      heads,
      head_dim,
      rope: Rope::new(rotary_dims as i32, interleaved, theta, rscale),
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
      let qkv = l.wqkv.forward(&x)?;
      let q = ops::slice(&qkv, &[0, 0, 0], &[b, t, hh], &[1, 1, 1])?;
      let k = ops::slice(&qkv, &[0, 0, hh], &[b, t, 2 * hh], &[1, 1, 1])?;
      let v = ops::slice(&qkv, &[0, 0, 2 * hh], &[b, t, 3 * hh], &[1, 1, 1])?;
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
        |t, _| Ok(self.rope.forward(&t, 0)?),
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
