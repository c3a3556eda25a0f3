//! ERNIE-4.5 MoE (ERNIE-4.5-21B-A3B / 300B-A47B text): mlx-lm's
//! `models/ernie4_5_moe.py` — the ERNIE-4.5 Llama block (biases on every
//! projection when `use_bias`, interleaved RoPE) whose MLP, on the layers
//! `moe_layer_start_index..=moe_layer_end_index` every
//! `moe_layer_interval`-th, is a top-k MoE (softmax or sigmoid gate in
//! float32, the chosen weights renormalized) plus shared experts. As in
//! mlx-lm, `sanitize` drops the multi-token-prediction block and the
//! `e_score_correction_bias` tensors, and stacks per-expert tensors.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, Linear, RmsNorm, Rope, SwitchGlu, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, check_moe, last_axis, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

fn d_one() -> i32 {
  1
}
fn d_softmax() -> String {
  "softmax".into()
}

/// `ModelArgs` of mlx-lm's ernie4_5_moe.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Ernie45MoeArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `max_position_embeddings`
  pub max_position_embeddings: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `use_bias`
  pub use_bias: bool,
  /// `tie_word_embeddings`
  pub tie_word_embeddings: bool,
  /// `moe_num_experts`
  pub moe_num_experts: i32,
  /// `moe_layer_start_index` (an int or a list: its minimum)
  #[serde(default)]
  pub moe_layer_start_index: Value,
  /// `moe_intermediate_size` (0: `intermediate_size`)
  #[serde(default)]
  pub moe_intermediate_size: i32,
  /// `moe_k`
  #[serde(default = "d_one")]
  pub moe_k: i32,
  /// `moe_layer_interval`
  #[serde(default = "d_one")]
  pub moe_layer_interval: i32,
  /// `moe_num_shared_experts`
  #[serde(default)]
  pub moe_num_shared_experts: i32,
  /// `moe_layer_end_index` (an int or a list: its maximum; default the
  /// last layer)
  pub moe_layer_end_index: Option<Value>,
  /// `head_dim` (default `hidden_size / num_attention_heads`)
  pub head_dim: Option<i32>,
  /// `moe_gate_act` (`softmax` / `sigmoid`)
  #[serde(default = "d_softmax")]
  pub moe_gate_act: String,
}

/// `Ernie4_5_MoeMLP`.
struct ErnieMoe {
  gate: Linear,
  switch_mlp: SwitchGlu,
  shared_experts: Option<SwiGluMlp>,
  k: i32,
  sigmoid: bool,
}
module!(ErnieMoe {
  gate,
  switch_mlp,
  shared_experts
});

impl ErnieMoe {
  fn forward(&self, x: &Array) -> Result<Array> {
    let g = ops::astype(&self.gate.forward(x)?, Dtype::Float32)?;
    let gates = if self.sigmoid {
      ops::sigmoid(&g)?
    } else {
      ops::softmax_axis(&g, -1, false)?
    };
    let k = self.k;
    let inds = ops::stop_gradient(&last_axis(
      &ops::argpartition_axis(&ops::negative(&gates)?, k - 1, -1)?,
      0,
      k,
    )?)?;
    let scores = ops::take_along_axis(&gates, &inds, -1)?;
    let denom = ops::maximum(&ops::sum_axis(&scores, -1, true)?, &Array::scalar(1e-12f32))?;
    let scores = ops::divide(&scores, &denom)?;
    let y = self.switch_mlp.forward(x, &inds)?;
    let dt = y.dtype();
    let y = ops::astype(
      &ops::sum_axis(
        &ops::multiply(&y, &ops::expand_dims(&scores, -1)?)?,
        -2,
        false,
      )?,
      dt,
    )?;
    match &self.shared_experts {
      Some(s) => ops::add(&y, &s.forward(x)?),
      None => Ok(y),
    }
  }
}

/// `Ernie4_5_DecoderLayer`.
struct Block {
  self_attn: Attention,
  dense: Option<SwiGluMlp>,
  moe: Option<ErnieMoe>,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block { self_attn, dense => "mlp", moe => "mlp", input_layernorm, post_attention_layernorm });

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let n = self.post_attention_layernorm.forward(&h)?;
    let r = match (&self.moe, &self.dense) {
      (Some(m), _) => m.forward(&n)?,
      (None, Some(d)) => d.forward(&n)?,
      (None, None) => {
        return Err(Error::InvalidArgument(
          "ernie4_5_moe: layer without an MLP".into(),
        ));
      }
    };
    ops::add(&h, &r)
  }
}

/// ernie4_5_moe.py's sanitize, before expert stacking: drop the MTP block
/// and `e_score_correction_bias` (unused by mlx-lm's gate, so here too).
fn sanitize(mut w: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  const DROP: [&str; 5] = [
    "mtp_block.",
    "mtp_linear_proj.",
    "mtp_hidden_norm.",
    "mtp_emb_norm.",
    "e_score_correction_bias",
  ];
  w.retain(|k, _| !DROP.iter().any(|p| k.contains(p)));
  Ok(w)
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (ernie4_5_moe): {msg}"))
}

/// An int, or the min / max of a list of ints.
fn index_of(v: &Value, field: &str, max: bool) -> Result<i32> {
  let x = match v {
    Value::Null => Some(0),
    Value::Array(a) => {
      let xs: Option<Vec<i64>> = a.iter().map(Value::as_i64).collect();
      xs.and_then(|xs| {
        if max {
          xs.into_iter().max()
        } else {
          xs.into_iter().min()
        }
      })
    }
    other => other.as_i64(),
  };
  x.and_then(|x| i32::try_from(x).ok()).ok_or_else(|| {
    bad(format!(
      "field {field:?} = {v} must be an int or a list of ints"
    ))
  })
}

/// Registry entry for `ernie4_5_moe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // ernie4_5_moe.py: a plain (interleaved) RoPE.
  reject_unhandled(config, "ernie4_5_moe", "rope_scaling", |_| false)?;
  let a: Ernie45MoeArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("ernie4_5_moe", h, nh, nkv, a.num_hidden_layers)?;
  let sigmoid = match a.moe_gate_act.as_str() {
    "softmax" => false,
    "sigmoid" => true,
    other => {
      return Err(bad(format!(
        "field \"moe_gate_act\" = {other:?} is not supported (softmax, sigmoid)"
      )));
    }
  };
  if a.moe_layer_interval <= 0 {
    return Err(bad("field \"moe_layer_interval\" must be positive".into()));
  }
  let start = index_of(&a.moe_layer_start_index, "moe_layer_start_index", false)?;
  let end = match &a.moe_layer_end_index {
    Some(v) if !v.is_null() => index_of(v, "moe_layer_end_index", true)?,
    _ => a.num_hidden_layers - 1,
  };
  let hd = a.head_dim.unwrap_or(h / nh);
  let b = a.use_bias;
  let dims = AttnDims::new(h, nh, nkv, hd, (b, b));
  let eps = a.rms_norm_eps;
  let moe_inter = if a.moe_intermediate_size != 0 {
    a.moe_intermediate_size
  } else {
    a.intermediate_size
  };
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let is_moe = (i + 1) % a.moe_layer_interval == 0 && i >= start && i <= end;
    let moe = if is_moe {
      check_moe("ernie4_5_moe", a.moe_num_experts, a.moe_k)?;
      Some(ErnieMoe {
        gate: Linear::new(h, a.moe_num_experts, false),
        switch_mlp: SwitchGlu::new(h, moe_inter, a.moe_num_experts, GluActivation::SwiGlu, b),
        shared_experts: (a.moe_num_shared_experts > 0)
          .then(|| SwiGluMlp::new(h, moe_inter * a.moe_num_shared_experts, b)),
        k: a.moe_k,
        sigmoid,
      })
    } else {
      None
    };
    layers.push(Box::new(Block {
      self_attn: Attention::new(dims, Some(Rope::new(hd, true, a.rope_theta, 1.0))),
      dense: moe
        .is_none()
        .then(|| SwiGluMlp::new(h, a.intermediate_size, b)),
      moe,
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
    }));
  }
  let tied = a.tie_word_embeddings;
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!tied).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied,
      stack_experts: Some(a.moe_num_experts),
      sanitize: Some(sanitize),
    },
  )))
}
