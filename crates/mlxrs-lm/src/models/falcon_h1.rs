//! Falcon-H1 (TII): mlx-lm's `models/falcon_h1.py` — every layer runs a
//! Mamba-2 mixer and attention side by side on the same normed input
//! (`h = x + mamba(n) + attn(n)`), then a SwiGLU MLP. The mixer is
//! [`super::mamba2::Mamba2Mixer`] (gated RMSNorm over the whole inner dim
//! when `mamba_rms_norm`, optionally before the gate, plain `silu(gate) * y`
//! otherwise); attention is Llama-style with RoPE. HF checkpoints' muP
//! multipliers are folded into the weights by `sanitize` (as mlx-lm does);
//! a tied head scales the logits by `lm_head_multiplier /
//! embedding_multiplier`. Caches: one `CacheList(ArraysCache(2), KVCache())`
//! per layer.

use std::collections::HashMap;

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, Param, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::mamba2::{GatedRmsNorm, Mamba2Mixer};
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

macro_rules! dflt {
  ($($f:ident: $t:ty = $v:expr;)*) => {
    $( fn $f() -> $t { $v } )*
  };
}
dflt! {
  d_attn_out: f32 = 0.9375;
  d_emb_mult: f32 = 5.656_854;
  d_head_dim: i32 = 64;
  d_hidden: i32 = 1024;
  d_inter: i32 = 2048;
  d_key_mult: f32 = 0.390_625;
  d_lm_mult: f32 = 0.039_062_5;
  d_true: bool = true;
  d_one: f32 = 1.0;
  d_conv: i32 = 4;
  d_head: i32 = 64;
  d_ssm: i32 = 1536;
  d_state: i32 = 128;
  d_groups: i32 = 1;
  d_mheads: i32 = 24;
  d_max_pos: i32 = 131_072;
  d_mlp_mult: Vec<f32> = vec![0.883_883_5, 0.585_937_5];
  d_heads: i32 = 8;
  d_layers: i32 = 36;
  d_kv: i32 = 2;
  d_eps: f32 = 1e-5;
  d_theta: f32 = 1e11;
  d_ssm_in: f32 = 1.25;
  d_ssm_mults: Vec<f32> = vec![0.353_553_4, 0.25, 0.353_553_4, 0.5, 0.353_553_4];
  d_ssm_out: f32 = 0.235_702_27;
  d_vocab: i32 = 32784;
}

/// `ModelArgs` of mlx-lm's falcon_h1.py (with its defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct FalconH1Args {
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `attention_in_multiplier` (folded into q/k by sanitize)
  #[serde(default = "d_one")]
  pub attention_in_multiplier: f32,
  /// `attention_out_multiplier` (folded into o_proj)
  #[serde(default = "d_attn_out")]
  pub attention_out_multiplier: f32,
  /// `embedding_multiplier`
  #[serde(default = "d_emb_mult")]
  pub embedding_multiplier: f32,
  /// `head_dim`
  #[serde(default = "d_head_dim")]
  pub head_dim: i32,
  /// `hidden_size`
  #[serde(default = "d_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size`
  #[serde(default = "d_inter")]
  pub intermediate_size: i32,
  /// `key_multiplier`
  #[serde(default = "d_key_mult")]
  pub key_multiplier: f32,
  /// `lm_head_multiplier`
  #[serde(default = "d_lm_mult")]
  pub lm_head_multiplier: f32,
  /// `mamba_conv_bias`
  #[serde(default = "d_true")]
  pub mamba_conv_bias: bool,
  /// `mamba_d_conv`
  #[serde(default = "d_conv")]
  pub mamba_d_conv: i32,
  /// `mamba_d_head`
  #[serde(default = "d_head")]
  pub mamba_d_head: i32,
  /// `mamba_d_ssm`
  #[serde(default = "d_ssm")]
  pub mamba_d_ssm: i32,
  /// `mamba_d_state`
  #[serde(default = "d_state")]
  pub mamba_d_state: i32,
  /// `mamba_n_groups`
  #[serde(default = "d_groups")]
  pub mamba_n_groups: i32,
  /// `mamba_n_heads`
  #[serde(default = "d_mheads")]
  pub mamba_n_heads: i32,
  /// `mamba_norm_before_gate`
  #[serde(default)]
  pub mamba_norm_before_gate: bool,
  /// `mamba_proj_bias` (in_proj)
  #[serde(default)]
  pub mamba_proj_bias: bool,
  /// `mamba_rms_norm`
  #[serde(default)]
  pub mamba_rms_norm: bool,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
  /// `mlp_bias`
  #[serde(default)]
  pub mlp_bias: bool,
  /// `mlp_multipliers` (gate, down; folded by sanitize)
  #[serde(default = "d_mlp_mult")]
  pub mlp_multipliers: Vec<f32>,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `num_hidden_layers`
  #[serde(default = "d_layers")]
  pub num_hidden_layers: i32,
  /// `num_key_value_heads`
  #[serde(default = "d_kv")]
  pub num_key_value_heads: i32,
  /// `projectors_bias` (the mixer's out_proj)
  #[serde(default)]
  pub projectors_bias: bool,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_scaling`
  #[serde(default)]
  pub rope_scaling: Option<Value>,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `ssm_in_multiplier`
  #[serde(default = "d_ssm_in")]
  pub ssm_in_multiplier: f32,
  /// `ssm_multipliers` (per in_proj segment; folded by sanitize)
  #[serde(default = "d_ssm_mults")]
  pub ssm_multipliers: Vec<f32>,
  /// `ssm_out_multiplier`
  #[serde(default = "d_ssm_out")]
  pub ssm_out_multiplier: f32,
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
}

struct Layer {
  feed_forward: SwiGluMlp,
  mamba: Mamba2Mixer,
  self_attn: Attention,
  input_layernorm: RmsNorm,
  pre_ff_layernorm: RmsNorm,
}
module!(Layer {
  feed_forward,
  mamba,
  self_attn,
  input_layernorm,
  pre_ff_layernorm
});

impl HybridLayer for Layer {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let t = x.dim(1).unwrap_or(0);
    let subs = cache.list_mut()?;
    let [ssm, kv] = subs else {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "falcon_h1 layers take a CacheList of (ArraysCache, KVCache), got {} caches",
        subs.len()
      )));
    };
    let h = self.input_layernorm.forward(x)?;
    let m = self.mamba.forward(&h, ssm)?;
    ssm.offset += t;
    let a = self.self_attn.forward(&h, mask, kv)?;
    let h = ((x + &m)? + &a)?;
    cache.offset += t;
    let f = self
      .feed_forward
      .forward(&self.pre_ff_layernorm.forward(&h)?)?;
    &h + &f
  }
  fn new_cache(&self) -> Option<KvCache> {
    Some(KvCache::list(vec![KvCache::arrays(2), KvCache::standard()]))
  }
  fn is_attention(&self) -> bool {
    true
  }
}

/// mlx-lm falcon_h1.py's `sanitize`: for an HF checkpoint (conv weights
/// `[C, 1, K]`), fold the muP multipliers into the weights and move the
/// conv weights to MLX layout.
fn sanitize_with(
  weights: HashMap<String, Array>,
  a: &FalconH1Args,
) -> Result<HashMap<String, Array>> {
  let Some(c1d) = weights.get("model.layers.0.mamba.conv1d.weight") else {
    return Ok(weights);
  };
  if c1d.ndim() != 3 || c1d.dim(-1) <= c1d.dim(1) {
    return Ok(weights);
  }
  let mup = {
    let (i, gs, h) = (
      a.mamba_d_ssm,
      a.mamba_n_groups * a.mamba_d_state,
      a.mamba_n_heads,
    );
    let mut v = Vec::new();
    for (n, m) in [i, i, gs, gs, h].into_iter().zip(&a.ssm_multipliers) {
      v.extend(std::iter::repeat_n(*m, n.max(0) as usize));
    }
    let len = v.len() as i32;
    Array::from_slice(&v, &[len, 1])?
  };
  let mut out = HashMap::with_capacity(weights.len());
  for (name, p) in weights {
    let scale = |p: &Array, s: f32| -> Result<Array> { p * s };
    let p = if name.ends_with("embed_tokens.weight") {
      scale(&p, a.embedding_multiplier)?
    } else if name.ends_with("lm_head.weight") {
      scale(&p, a.lm_head_multiplier)?
    } else if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
      scale(&p, a.attention_in_multiplier)?
    } else if name.ends_with("key_proj.weight") {
      scale(&p, a.attention_in_multiplier * a.key_multiplier)?
    } else if name.ends_with("o_proj.weight") {
      scale(&p, a.attention_out_multiplier)?
    } else if name.ends_with("out_proj.weight") {
      scale(&p, a.ssm_out_multiplier)?
    } else if name.ends_with("gate_proj.weight") {
      scale(&p, a.mlp_multipliers.first().copied().unwrap_or(1.0))?
    } else if name.ends_with("down_proj.weight") {
      scale(&p, a.mlp_multipliers.get(1).copied().unwrap_or(1.0))?
    } else if name.ends_with("in_proj.weight") {
      let m = (&ops::astype(&mup, p.dtype())? * a.ssm_in_multiplier)?;
      (&p * &m)?
    } else if name.contains("conv1d.weight") {
      ops::transpose_axes(&p, &[0, 2, 1])?
    } else {
      p
    };
    out.insert(name, p);
  }
  Ok(out)
}

struct FalconH1 {
  inner: HybridLm,
  args: FalconH1Args,
}

impl LanguageModel for FalconH1 {
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
    let w = sanitize_with(weights, &self.args)?;
    self.inner.sanitize(w)
  }
  fn vocab_size(&self) -> i32 {
    self.inner.vocab_size()
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(f)
  }
}

/// Registry entry for `falcon_h1`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: FalconH1Args = parse_args(config)?;
  let h = a.hidden_size;
  super::base::check_heads(
    "falcon_h1",
    h,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.num_hidden_layers,
  )?;
  let (nh, hd) = (a.mamba_n_heads, a.mamba_d_head);
  if nh <= 0
    || hd <= 0
    || a.mamba_n_groups <= 0
    || nh % a.mamba_n_groups != 0
    || a.mamba_d_ssm != nh * hd
    || a.head_dim <= 0
    || a.ssm_multipliers.len() != 5
    || a.mlp_multipliers.len() != 2
  {
    return Err(mlxrs_core::Error::InvalidArgument(format!(
      "config.json (falcon_h1): mamba_d_ssm ({}) must equal mamba_n_heads ({nh}) x mamba_d_head \
       ({hd}), mamba_n_heads a multiple of mamba_n_groups ({}), head_dim positive, 5 \
       ssm_multipliers and 2 mlp_multipliers",
      a.mamba_d_ssm, a.mamba_n_groups
    )));
  }
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    let mut mamba = Mamba2Mixer::new(
      h,
      nh,
      hd,
      a.mamba_n_groups,
      a.mamba_d_state,
      a.mamba_d_conv,
      a.mamba_proj_bias,
      a.mamba_conv_bias,
      eps,
      None,
      (0.0, f32::INFINITY),
    )?;
    mamba.out_proj = Linear::new(a.mamba_d_ssm, h, a.projectors_bias);
    mamba.norm = a.mamba_rms_norm.then(|| GatedRmsNorm {
      weight: Param::new(&[a.mamba_d_ssm]),
      eps,
      group: None,
      before_gate: a.mamba_norm_before_gate,
    });
    layers.push(Box::new(Layer {
      feed_forward: SwiGluMlp::new(h, a.intermediate_size, a.mlp_bias),
      mamba,
      self_attn: Attention::new(
        AttnDims::new(
          h,
          a.num_attention_heads,
          a.num_key_value_heads,
          a.head_dim,
          (a.attention_bias, a.attention_bias),
        ),
        Some(Rope::from_config(
          a.head_dim,
          a.rope_theta,
          a.rope_traditional,
          a.rope_scaling.as_ref(),
          Some(a.max_position_embeddings),
        )?),
      ),
      input_layernorm: RmsNorm::new(h, eps),
      pre_ff_layernorm: RmsNorm::new(h, eps),
    }));
  }
  let tied = a.tie_word_embeddings;
  let inner = HybridLm::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    (!tied).then(|| Linear::new(h, a.vocab_size, false)),
    Names {
      root: "model",
      embed: "embed_tokens",
      layers: "layers",
      norm: "final_layernorm",
      head: "lm_head",
    },
    a.vocab_size,
    None,
  )
  .with_logit_scale(tied.then(|| a.lm_head_multiplier / a.embedding_multiplier));
  Ok(Box::new(FalconH1 { inner, args: a }))
}
