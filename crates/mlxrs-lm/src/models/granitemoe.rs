//! GraniteMoE (IBM Granite 3.x MoE): mlx-lm's `models/granitemoe.py` —
//! Granite's scaled Llama block (embedding / attention / residual
//! multipliers, logits divided by `logits_scaling`) with every MLP a sparse
//! MoE (`block_sparse_moe`): top-k experts by router logit, softmax over
//! those k, SwiGLU experts. `sanitize` splits HF's fused `input_linear`
//! (gate | up) and renames `output_linear` as mlx-lm does.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, Linear, RmsNorm, Rope, SwitchGlu, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::{check_heads, check_moe, last_axis};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::granite::GraniteScales;
use crate::model::{LanguageModel, parse_args};

fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's granitemoe.py (the multipliers are
/// [`GraniteScales`]).
#[derive(Debug, Clone, Deserialize)]
pub struct GraniteMoeArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size` (per expert)
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `max_position_embeddings`
  pub max_position_embeddings: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `attention_bias`
  pub attention_bias: bool,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `num_local_experts`
  pub num_local_experts: i32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
}

struct Router {
  layer: Linear,
}
module!(Router { layer });

struct Moe {
  router: Router,
  switch_mlp: SwitchGlu,
  num_experts: i32,
  top_k: i32,
}
module!(Moe { router, switch_mlp });

impl Moe {
  fn forward(&self, x: &Array) -> Result<Array> {
    let logits = self.router.layer.forward(x)?;
    let (e, k) = (self.num_experts, self.top_k);
    let inds = ops::stop_gradient(&last_axis(
      &ops::argpartition_axis(&logits, e - k, -1)?,
      e - k,
      e,
    )?)?;
    let top = ops::take_along_axis(&logits, &inds, -1)?;
    let gates = ops::softmax_axis(&ops::astype(&top, mlxrs_core::Dtype::Float32)?, -1, false)?;
    let y = self.switch_mlp.forward(x, &inds)?;
    let dt = y.dtype();
    ops::astype(
      &ops::sum_axis(
        &ops::multiply(&y, &ops::expand_dims(&gates, -1)?)?,
        -2,
        false,
      )?,
      dt,
    )
  }
}

struct Block {
  self_attn: Attention,
  block_sparse_moe: Moe,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  residual: f32,
}
module!(Block {
  self_attn,
  block_sparse_moe,
  input_layernorm,
  post_attention_layernorm
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &(r * self.residual)?)?;
    let r = self
      .block_sparse_moe
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &(r * self.residual)?)
  }
}

/// mlx-lm granitemoe.py's `sanitize`: `input_linear` `[E, 2I, H]` ->
/// `switch_mlp.gate_proj` | `up_proj`, `output_linear` -> `down_proj`.
fn sanitize(mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  let keys: Vec<String> = weights
    .keys()
    .filter(|k| k.ends_with(".block_sparse_moe.input_linear.weight"))
    .cloned()
    .collect();
  for key in keys {
    let Some(v) = weights.remove(&key) else {
      continue;
    };
    let parts = ops::split(&v, 2, 1)?;
    let [gate, up]: [Array; 2] = parts.try_into().map_err(|_| {
      Error::InvalidArgument(format!("sanitize: {key} does not split into gate | up"))
    })?;
    weights.insert(key.replace("input_linear", "switch_mlp.gate_proj"), gate);
    weights.insert(key.replace("input_linear", "switch_mlp.up_proj"), up);
    let out = key.replace("input_linear", "output_linear");
    if let Some(d) = weights.remove(&out) {
      weights.insert(out.replace("output_linear", "switch_mlp.down_proj"), d);
    }
  }
  Ok(weights)
}

/// Registry entry for `granitemoe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let s: GraniteScales = parse_args(config)?;
  let a: GraniteMoeArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("granitemoe", h, nh, nkv, a.num_hidden_layers)?;
  check_moe("granitemoe", a.num_local_experts, a.num_experts_per_tok)?;
  if s.logits_scaling == 0.0 {
    return Err(Error::InvalidArgument(
      "config.json (granitemoe): logits_scaling must be non-zero".into(),
    ));
  }
  let hd = h / nh;
  let mut dims = AttnDims::new(h, nh, nkv, hd, (a.attention_bias, a.attention_bias));
  dims.scale = s.attention_multiplier;
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    let rope = Rope::from_config(
      hd,
      a.rope_theta,
      false,
      a.rope_scaling.as_ref(),
      Some(a.max_position_embeddings),
    )?;
    layers.push(Box::new(Block {
      self_attn: Attention::new(dims, Some(rope)),
      block_sparse_moe: Moe {
        router: Router {
          layer: Linear::new(h, a.num_local_experts, false),
        },
        switch_mlp: SwitchGlu::new(
          h,
          a.intermediate_size,
          a.num_local_experts,
          GluActivation::SwiGlu,
          false,
        ),
        num_experts: a.num_local_experts,
        top_k: a.num_experts_per_tok,
      },
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
      residual: s.residual_multiplier,
    }));
  }
  Ok(Box::new(Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: Some(1.0 / s.logits_scaling),
      embed_scale: Some(s.embedding_multiplier),
      tied: a.tie_word_embeddings,
      stack_experts: None,
      sanitize: Some(sanitize),
    },
  )))
}
