//! Ministral-3 (Mistral's 3B / 8B / 14B "Ministral 3" text decoders):
//! mlx-lm's `models/ministral3.py` — the Llama block (no biases, SwiGLU),
//! RoPE from `rope_parameters` (yarn), the queries scaled after RoPE by the
//! Llama-4 attention temperature `1 + beta * ln(1 + floor(pos / original))`
//! (`llama_4_scaling_beta`), and `layer_types` mixing full and
//! sliding-window layers (rotating caches of `sliding_window`). Tied by
//! default.

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::check_heads;
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::fused_rows;
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's ministral3.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Ministral3Args {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `head_dim` (default `hidden_size / num_attention_heads`)
  pub head_dim: Option<i32>,
  /// `max_position_embeddings`
  pub max_position_embeddings: Option<i32>,
  /// `num_key_value_heads` (default `num_attention_heads`)
  pub num_key_value_heads: Option<i32>,
  /// `rope_parameters` (`rope_theta`, `llama_4_scaling_beta`,
  /// `original_max_position_embeddings`, the rope scaling)
  pub rope_parameters: Value,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
  /// `layer_types` (`full_attention` / `sliding_attention`)
  pub layer_types: Option<Vec<String>>,
  /// `sliding_window`
  pub sliding_window: Option<i32>,
}

/// `TransformerBlock`.
struct Block {
  self_attn: Attention,
  mlp: SwiGluMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  sliding: bool,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Block {
  /// The block's parts for [`fused_rows::PrenormBlock`].
  fn parts(&self) -> fused_rows::PrenormBlock<'_> {
    fused_rows::PrenormBlock {
      input_norm: &self.input_layernorm,
      attn: &self.self_attn,
      post_norm: &self.post_attention_layernorm,
      mlp: &self.mlp,
    }
  }
}

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.mlp.fuse_projections()?;
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
    let (h, r) = self.parts().row(x, delta, mask, cache)?;
    Ok((h, Some(r)))
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let r = self
      .mlp
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &r)
  }
  fn sliding(&self) -> bool {
    self.sliding
  }
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (ministral3): {msg}"))
}

/// Registry entry for `ministral3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: Ministral3Args = parse_args(config)?;
  let (h, nh) = (a.hidden_size, a.num_attention_heads);
  let nkv = a.num_key_value_heads.unwrap_or(nh);
  check_heads("ministral3", h, nh, nkv, a.num_hidden_layers)?;
  let hd = a.head_dim.unwrap_or(h / nh);
  let rp = &a.rope_parameters;
  let num = |k: &str| {
    rp.get(k)
      .and_then(Value::as_f64)
      .ok_or_else(|| bad(format!("field \"rope_parameters\" needs a numeric {k:?}")))
  };
  let (theta, beta, orig) = (
    num("rope_theta")? as f32,
    num("llama_4_scaling_beta")? as f32,
    num("original_max_position_embeddings")? as f32,
  );
  if orig <= 0.0 {
    return Err(bad(
      "rope_parameters.original_max_position_embeddings must be positive".into(),
    ));
  }
  let types = a
    .layer_types
    .clone()
    .unwrap_or_else(|| vec!["full_attention".into(); a.num_hidden_layers as usize]);
  if types.len() != a.num_hidden_layers as usize {
    return Err(bad(format!(
      "field \"layer_types\" has {} entries for {} layers",
      types.len(),
      a.num_hidden_layers
    )));
  }
  let dims = AttnDims::new(h, nh, nkv, hd, (false, false));
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for t in &types {
    let sliding = match t.as_str() {
      "sliding_attention" => true,
      "full_attention" => false,
      other => {
        return Err(bad(format!(
          "field \"layer_types\" has {other:?}; supported: sliding_attention, full_attention"
        )));
      }
    };
    let rope = Rope::from_config(hd, theta, false, Some(rp), a.max_position_embeddings)?;
    layers.push(Box::new(Block {
      self_attn: Attention::new(dims, Some(rope)).with_query_scaling(beta, orig),
      mlp: SwiGluMlp::new(h, a.intermediate_size, false),
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
      sliding,
    }));
  }
  let window = match a.sliding_window {
    Some(w) if w > 0 => Some(w),
    None if !types.iter().any(|t| t == "sliding_attention") => None,
    _ => {
      return Err(bad(
        "field \"sliding_window\" must be a positive integer with sliding layers".into(),
      ));
    }
  };
  let tied = a.tie_word_embeddings;
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!tied).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window,
      logit_scale: None,
      embed_scale: None,
      tied,
      stack_experts: None,
      sanitize: Some(fp8_scales),
    },
  )))
}

/// ministral3.py's sanitize: FP8 weights times their `weight_scale_inv`
/// (one scale per tensor); `activation_scale` tensors dropped.
fn fp8_scales(
  weights: std::collections::HashMap<String, Array>,
) -> Result<std::collections::HashMap<String, Array>> {
  let mut out = std::collections::HashMap::with_capacity(weights.len());
  for (k, v) in &weights {
    if k.contains("weight_scale_inv") {
      let wk = k.replace("_scale_inv", "");
      let w = weights
        .get(&wk)
        .ok_or_else(|| Error::InvalidArgument(format!("sanitize: {k} without its weight {wk}")))?;
      out.insert(wk, ops::multiply(w, v)?);
    } else if k.contains("activation_scale") {
      continue;
    } else if !out.contains_key(k) {
      out.insert(k.clone(), v.clone());
    }
  }
  Ok(out)
}
