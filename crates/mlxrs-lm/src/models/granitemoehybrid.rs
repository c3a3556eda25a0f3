//! Granite 4.0 hybrid (`granitemoehybrid`): mlx-lm's
//! `models/granitemoehybrid.py` — `layer_types` of Mamba-2 mixers
//! ([`super::mamba2::Mamba2Mixer`], gated RMSNorm over the whole inner
//! dim) and attention (scale `attention_multiplier`, RoPE unless
//! `position_embedding_type` is `nope`), each followed by a SwiGLU MLP or,
//! with `num_local_experts`, a top-k MoE (softmax over the chosen router
//! logits) plus a shared fused-SwiGLU MLP; Granite's muP scalars
//! (`embedding_multiplier`, `residual_multiplier`, logits divided by
//! `logits_scaling`). Caches: `ArraysCache(2)` for Mamba layers, `KVCache`
//! for attention layers.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, Linear, RmsNorm, Rope, SwitchGlu, module, swiglu,
};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::mamba2::{Mamba2Mixer, time_step_limit};
use super::mlp::SwiGluMlp;
use super::moe::topk_then_softmax;
use crate::model::{LanguageModel, parse_args};

fn d_rope_type() -> String {
  "rope".into()
}
fn d_true() -> bool {
  true
}
fn d_limit() -> Vec<f64> {
  vec![0.001, 100.0]
}
fn d_theta() -> f32 {
  10000.0
}

/// `ModelArgs` of mlx-lm's granitemoehybrid.py.
#[derive(Debug, Clone, Deserialize)]
pub struct GraniteMoeHybridArgs {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size` (dense MLP / each expert)
  pub intermediate_size: i32,
  /// `max_position_embeddings`
  pub max_position_embeddings: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `attention_bias`
  pub attention_bias: bool,
  /// `embedding_multiplier`
  pub embedding_multiplier: f32,
  /// `attention_multiplier` (the attention scale)
  pub attention_multiplier: f32,
  /// `logits_scaling` (logits are divided by it)
  pub logits_scaling: f32,
  /// `residual_multiplier`
  pub residual_multiplier: f32,
  /// `layer_types` (`mamba` / `attention`)
  pub layer_types: Vec<String>,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `num_local_experts` (absent / 0: dense)
  #[serde(default)]
  pub num_local_experts: Option<i32>,
  /// `num_experts_per_tok`
  #[serde(default)]
  pub num_experts_per_tok: Option<i32>,
  /// `shared_intermediate_size`
  #[serde(default)]
  pub shared_intermediate_size: Option<i32>,
  /// `mamba_n_heads`
  #[serde(default)]
  pub mamba_n_heads: Option<i32>,
  /// `mamba_d_head`
  #[serde(default)]
  pub mamba_d_head: Option<i32>,
  /// `mamba_proj_bias`
  #[serde(default)]
  pub mamba_proj_bias: Option<bool>,
  /// `mamba_d_state`
  #[serde(default)]
  pub mamba_d_state: Option<i32>,
  /// `mamba_d_conv`
  #[serde(default)]
  pub mamba_d_conv: Option<i32>,
  /// `mamba_n_groups`
  #[serde(default)]
  pub mamba_n_groups: Option<i32>,
  /// `mamba_conv_bias`
  #[serde(default)]
  pub mamba_conv_bias: Option<bool>,
  /// `mlp_bias`
  #[serde(default)]
  pub mlp_bias: bool,
  /// `position_embedding_type` (`rope` or `nope`)
  #[serde(default = "d_rope_type")]
  pub position_embedding_type: String,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
  /// `time_step_limit`
  #[serde(default = "d_limit")]
  pub time_step_limit: Vec<f64>,
  /// `rope_theta` (`rope_parameters.rope_theta` overrides it)
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_parameters`
  #[serde(default)]
  pub rope_parameters: Option<Value>,
}

struct Router {
  layer: Linear,
}
module!(Router { layer });

struct Moe {
  switch_mlp: SwitchGlu,
  router: Router,
  top_k: i32,
}
module!(Moe { switch_mlp, router });

struct SharedMlp {
  input_linear: Linear,
  output_linear: Linear,
}
module!(SharedMlp {
  input_linear,
  output_linear
});

struct Layer {
  input_layernorm: RmsNorm,
  mamba: Option<Mamba2Mixer>,
  self_attn: Option<Attention>,
  shared_mlp: Option<SharedMlp>,
  block_sparse_moe: Option<Moe>,
  mlp: Option<SwiGluMlp>,
  post_attention_layernorm: RmsNorm,
  residual_multiplier: f32,
}
module!(Layer {
  input_layernorm,
  mamba,
  self_attn,
  shared_mlp,
  block_sparse_moe,
  mlp,
  post_attention_layernorm
});

impl HybridLayer for Layer {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let n = self.input_layernorm.forward(x)?;
    let h = match (&self.mamba, &self.self_attn) {
      (Some(m), _) => {
        let h = m.forward(&n, cache)?;
        cache.offset += x.dim(1).unwrap_or(0);
        h
      }
      (None, Some(a)) => a.forward(&n, mask, cache)?,
      _ => {
        return Err(Error::InvalidArgument(
          "granitemoehybrid layer without a mixer".into(),
        ));
      }
    };
    let h = (x + &(h * self.residual_multiplier)?)?;
    let normed = self.post_attention_layernorm.forward(&h)?;
    let out = match (&self.block_sparse_moe, &self.shared_mlp, &self.mlp) {
      (Some(moe), Some(sh), _) => {
        let (inds, gates) = topk_then_softmax(&moe.router.layer.forward(&normed)?, moe.top_k)?;
        let y = moe.switch_mlp.forward(&normed, &inds)?;
        let y = ops::sum_axis(&(&y * &gates.expand_dims(-1)?)?, -2, false)?;
        let gu = ops::split(&sh.input_linear.forward(&normed)?, 2, -1)?;
        let s = sh.output_linear.forward(&swiglu(&gu[0], &gu[1])?)?;
        (y + &s)?
      }
      (_, _, Some(m)) => m.forward(&normed)?,
      _ => {
        return Err(Error::InvalidArgument(
          "granitemoehybrid layer without an MLP".into(),
        ));
      }
    };
    &h + &(out * self.residual_multiplier)?
  }
  fn new_cache(&self) -> Option<KvCache> {
    Some(if self.mamba.is_some() {
      KvCache::arrays(2)
    } else {
      KvCache::standard()
    })
  }
  fn is_attention(&self) -> bool {
    self.self_attn.is_some()
  }
}

/// mlx-lm granitemoehybrid.py's `sanitize`: conv weights to MLX layout;
/// HF's fused expert `input_linear` / `output_linear` into `switch_mlp`
/// (MoE), or a dense checkpoint's `shared_mlp` into `mlp`.
fn sanitize_with(
  weights: HashMap<String, Array>,
  n_layers: i32,
  use_moe: bool,
) -> Result<HashMap<String, Array>> {
  let mut w = super::mamba::sanitize_conv(weights)?;
  let missing = |k: &str| Error::InvalidArgument(format!("sanitize: missing {k}"));
  if use_moe && w.contains_key("model.layers.0.block_sparse_moe.input_linear.weight") {
    for l in 0..n_layers {
      let p = format!("model.layers.{l}.block_sparse_moe");
      let k = format!("{p}.input_linear.weight");
      let iw = w.remove(&k).ok_or_else(|| missing(&k))?;
      let half = iw.dim(1).unwrap_or(0) / 2;
      let parts = ops::split_sections(&iw, &[half], 1)?;
      w.insert(format!("{p}.switch_mlp.gate_proj.weight"), parts[0].clone());
      w.insert(format!("{p}.switch_mlp.up_proj.weight"), parts[1].clone());
      let k = format!("{p}.output_linear.weight");
      let ow = w.remove(&k).ok_or_else(|| missing(&k))?;
      w.insert(format!("{p}.switch_mlp.down_proj.weight"), ow);
    }
  } else if !use_moe && w.contains_key("model.layers.0.shared_mlp.input_linear.weight") {
    for l in 0..n_layers {
      let p = format!("model.layers.{l}.shared_mlp");
      let k = format!("{p}.input_linear.weight");
      let iw = w.remove(&k).ok_or_else(|| missing(&k))?;
      let parts = ops::split(&iw, 2, 0)?;
      w.insert(
        format!("model.layers.{l}.mlp.gate_proj.weight"),
        parts[0].clone(),
      );
      w.insert(
        format!("model.layers.{l}.mlp.up_proj.weight"),
        parts[1].clone(),
      );
      let k = format!("{p}.output_linear.weight");
      let ow = w.remove(&k).ok_or_else(|| missing(&k))?;
      w.insert(format!("model.layers.{l}.mlp.down_proj.weight"), ow);
    }
  }
  Ok(w)
}

struct GraniteMoeHybrid {
  inner: HybridLm,
  n_layers: i32,
  use_moe: bool,
}

impl LanguageModel for GraniteMoeHybrid {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.inner.hidden(tokens, caches)
  }
  fn logits(&self, hidden: &Array) -> Result<Array> {
    self.inner.logits(hidden)
  }
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self.inner.make_caches(max_kv_size)
  }
  fn load(&mut self, w: &mut mlxrs_nn::Weights) {
    self.inner.load(w)
  }
  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let w = sanitize_with(weights, self.n_layers, self.use_moe)?;
    self.inner.sanitize(w)
  }
  fn vocab_size(&self) -> i32 {
    self.inner.vocab_size()
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(f)
  }
}

/// Registry entry for `granitemoehybrid`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let arch = "granitemoehybrid";
  // mlx-lm applies RoPE for any value other than "nope".
  super::base::reject_unhandled(config, arch, "position_embedding_type", |v| {
    v == "rope" || v == "nope"
  })?;
  let a: GraniteMoeHybridArgs = parse_args(config)?;
  let bad = |m: String| Error::InvalidArgument(format!("config.json ({arch}): {m}"));
  let h = a.hidden_size;
  let n_layers = a.layer_types.len() as i32;
  super::base::check_heads(
    arch,
    h,
    a.num_attention_heads,
    a.num_key_value_heads,
    n_layers,
  )?;
  if a.logits_scaling == 0.0 {
    return Err(bad("logits_scaling must not be 0".into()));
  }
  let use_moe = a.num_local_experts.unwrap_or(0) > 0;
  let (experts, top_k) = (
    a.num_local_experts.unwrap_or(0),
    a.num_experts_per_tok.unwrap_or(0),
  );
  if use_moe {
    super::base::check_moe(arch, experts, top_k)?;
  }
  let need = |v: Option<i32>, name: &str| -> Result<i32> {
    match v {
      Some(x) if x > 0 => Ok(x),
      _ => Err(bad(format!("mamba layers need a positive {name}"))),
    }
  };
  let theta = a
    .rope_parameters
    .as_ref()
    .and_then(|p| p.get("rope_theta"))
    .and_then(Value::as_f64)
    .map_or(a.rope_theta, |t| t as f32);
  let limit = time_step_limit(arch, &a.time_step_limit)?;
  let hd = h / a.num_attention_heads;
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for t in &a.layer_types {
    let (mamba, self_attn) = match t.as_str() {
      "mamba" => {
        let (nh, dh, g) = (
          need(a.mamba_n_heads, "mamba_n_heads")?,
          need(a.mamba_d_head, "mamba_d_head")?,
          need(a.mamba_n_groups, "mamba_n_groups")?,
        );
        if nh % g != 0 {
          return Err(bad(format!(
            "mamba_n_heads ({nh}) must be a multiple of mamba_n_groups ({g})"
          )));
        }
        (
          Some(
            Mamba2Mixer::new(
              h,
              nh,
              dh,
              g,
              need(a.mamba_d_state, "mamba_d_state")?,
              need(a.mamba_d_conv, "mamba_d_conv")?,
              a.mamba_proj_bias.unwrap_or(false),
              a.mamba_conv_bias.unwrap_or(false),
              eps,
              None,
              limit,
            )?
            .with_raw_a_log(),
          ),
          None,
        )
      }
      "attention" => {
        let mut d = AttnDims::new(
          h,
          a.num_attention_heads,
          a.num_key_value_heads,
          hd,
          (a.attention_bias, a.attention_bias),
        );
        d.scale = a.attention_multiplier;
        let rope = (a.position_embedding_type != "nope").then(|| Rope::new(hd, false, theta, 1.0));
        (None, Some(Attention::new(d, rope)))
      }
      other => return Err(bad(format!("unknown layer type {other:?} in layer_types"))),
    };
    let (shared_mlp, block_sparse_moe, mlp) = if use_moe {
      let sh = a
        .shared_intermediate_size
        .filter(|&s| s > 0)
        .ok_or_else(|| bad("MoE layers need a positive shared_intermediate_size".into()))?;
      (
        Some(SharedMlp {
          input_linear: Linear::new(h, 2 * sh, false),
          output_linear: Linear::new(sh, h, false),
        }),
        Some(Moe {
          switch_mlp: SwitchGlu::new(
            h,
            a.intermediate_size,
            experts,
            GluActivation::SwiGlu,
            false,
          ),
          router: Router {
            layer: Linear::new(h, experts, false),
          },
          top_k,
        }),
        None,
      )
    } else {
      (
        None,
        None,
        Some(SwiGluMlp::new(h, a.intermediate_size, a.mlp_bias)),
      )
    };
    layers.push(Box::new(Layer {
      input_layernorm: RmsNorm::new(h, eps),
      mamba,
      self_attn,
      shared_mlp,
      block_sparse_moe,
      mlp,
      post_attention_layernorm: RmsNorm::new(h, eps),
      residual_multiplier: a.residual_multiplier,
    }));
  }
  let inner = HybridLm::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    Names {
      root: "model",
      embed: "embed_tokens",
      layers: "layers",
      norm: "norm",
      head: "lm_head",
    },
    a.vocab_size,
    None,
  )
  .with_embed_scale(Some(a.embedding_multiplier))
  .with_logit_scale(Some(1.0 / a.logits_scaling));
  Ok(Box::new(GraniteMoeHybrid {
    inner,
    n_layers,
    use_moe,
  }))
}
