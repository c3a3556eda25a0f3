//! LFM2 (Liquid AI): mlx-lm's `models/lfm2.py` — a hybrid of gated short
//! convolutions and attention. Each layer is `h = x + op(norm(x))`, `h +
//! SwiGLU(norm(h))`, where `op` is either attention (per-head RMSNorm on q
//! and k, `q_layernorm` / `k_layernorm`, RoPE) for the layers in
//! `full_attn_idxs` / `layer_types == "full_attention"`, or a `ShortConv`:
//! `in_proj` to `B, C, x`, a depthwise causal conv of `B * x` (state: the
//! last `conv_L_cache - 1` inputs), times `C`, `out_proj`. The final norm is
//! `embedding_norm`; the output projection is always the tied embeddings.
//! Caches: `KVCache` for attention layers, `ArraysCache(1)` for the others.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Conv1d, Embedding, KvCache, Linear, RmsNorm, Rope, module, swiglu};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::ssm::causal_conv;
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  1_000_000.0
}

/// `ModelArgs` of mlx-lm's lfm2.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Lfm2Args {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads` (default: `num_attention_heads`)
  #[serde(default)]
  pub num_key_value_heads: Option<i32>,
  /// `norm_eps`
  pub norm_eps: f32,
  /// `conv_bias` (conv, in_proj, out_proj of the short convolutions)
  pub conv_bias: bool,
  /// `conv_L_cache`: the short convolution's kernel width.
  #[serde(rename = "conv_L_cache")]
  pub conv_l_cache: i32,
  /// `block_dim`
  pub block_dim: i32,
  /// `block_multiple_of`
  pub block_multiple_of: i32,
  /// `block_ffn_dim_multiplier`
  pub block_ffn_dim_multiplier: Option<f32>,
  /// `block_auto_adjust_ff_dim`
  pub block_auto_adjust_ff_dim: bool,
  /// `block_ff_dim` (default: `intermediate_size`)
  #[serde(default)]
  pub block_ff_dim: Option<i32>,
  /// `intermediate_size`
  #[serde(default)]
  pub intermediate_size: Option<i32>,
  /// `rope_theta` (`rope_parameters.rope_theta` overrides it)
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_parameters`
  #[serde(default)]
  pub rope_parameters: Option<Value>,
  /// `full_attn_idxs` (default: from `layer_types`)
  #[serde(default)]
  pub full_attn_idxs: Option<Vec<i32>>,
  /// `layer_types` (`full_attention` or `conv`)
  #[serde(default)]
  pub layer_types: Option<Vec<String>>,
}

struct ShortConv {
  conv: Conv1d,
  in_proj: Linear,
  out_proj: Linear,
}
module!(ShortConv {
  conv,
  in_proj,
  out_proj
});

impl ShortConv {
  fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
    let slots = cache.arrays_mut()?;
    let p = ops::split(&self.in_proj.forward(x)?, 3, -1)?;
    let bx = (&p[0] * &p[2])?;
    let (conv, state) = causal_conv(&self.conv, &bx, slots.get(0))?;
    slots.set(0, state)?;
    self.out_proj.forward(&(&p[1] * &conv)?)
  }
}

struct Mlp {
  w1: Linear,
  w2: Linear,
  w3: Linear,
}
module!(Mlp { w1, w2, w3 });

struct Layer {
  self_attn: Option<Attention>,
  conv: Option<ShortConv>,
  feed_forward: Mlp,
  operator_norm: RmsNorm,
  ffn_norm: RmsNorm,
}
module!(Layer {
  self_attn,
  conv,
  feed_forward,
  operator_norm,
  ffn_norm
});

impl HybridLayer for Layer {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let n = self.operator_norm.forward(x)?;
    let r = match (&self.self_attn, &self.conv) {
      (Some(a), _) => a.forward(&n, mask, cache)?,
      (None, Some(c)) => {
        let r = c.forward(&n, cache)?;
        cache.offset += x.dim(1).unwrap_or(0);
        r
      }
      (None, None) => {
        return Err(Error::InvalidArgument(
          "lfm2 layer without an operator".into(),
        ));
      }
    };
    let h = (x + &r)?;
    let f = &self.feed_forward;
    let g = self.ffn_norm.forward(&h)?;
    let y = f
      .w2
      .forward(&swiglu(&f.w1.forward(&g)?, &f.w3.forward(&g)?)?)?;
    &h + &y
  }
  fn new_cache(&self) -> Option<KvCache> {
    Some(if self.self_attn.is_some() {
      KvCache::standard()
    } else {
      KvCache::arrays(1)
    })
  }
  fn is_attention(&self) -> bool {
    self.self_attn.is_some()
  }
}

/// mlx-lm lfm2.py's `sanitize`: HF conv weights `[C, 1, K]` -> `[C, K, 1]`.
fn sanitize(mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  for (k, v) in weights.iter_mut() {
    if k.contains("conv.weight") && v.ndim() == 3 && v.dim(-1) > v.dim(1) {
      *v = ops::transpose_axes(v, &[0, 2, 1])?;
    }
  }
  Ok(weights)
}

/// Registry entry for `lfm2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // mlx-lm's lfm2.py uses a plain RoPE.
  super::base::reject_unhandled(config, "lfm2", "rope_scaling", |_| false)?;
  let a: Lfm2Args = parse_args(config)?;
  let bad = |m: String| Error::InvalidArgument(format!("config.json (lfm2): {m}"));
  let h = a.hidden_size;
  let nh = a.num_attention_heads;
  let nkv = a.num_key_value_heads.unwrap_or(nh);
  super::base::check_heads("lfm2", h, nh, nkv, a.num_hidden_layers)?;
  if h % nh != 0 || a.conv_l_cache < 1 || a.block_multiple_of < 1 {
    return Err(bad(format!(
      "hidden_size ({h}) must be a multiple of num_attention_heads ({nh}); conv_L_cache and \
       block_multiple_of must be positive"
    )));
  }
  let mut ff = a.block_ff_dim.or(a.intermediate_size).ok_or_else(|| {
    bad("config must specify either 'block_ff_dim' or 'intermediate_size'".into())
  })?;
  if a.block_auto_adjust_ff_dim {
    ff = (2.0 * ff as f64 / 3.0) as i32;
    if let Some(m) = a.block_ffn_dim_multiplier {
      ff = (m as f64 * ff as f64) as i32;
    }
    let m = a.block_multiple_of;
    ff = m * ((ff + m - 1) / m);
  }
  let theta = a
    .rope_parameters
    .as_ref()
    .and_then(|p| p.get("rope_theta"))
    .and_then(Value::as_f64)
    .map_or(a.rope_theta, |t| t as f32);
  let full: Vec<i32> = match (&a.full_attn_idxs, &a.layer_types) {
    (Some(f), _) => f.clone(),
    (None, Some(t)) => (0..t.len() as i32)
      .filter(|&i| t[i as usize] == "full_attention")
      .collect(),
    (None, None) => return Err(bad("needs full_attn_idxs or layer_types".into())),
  };
  let hd = h / nh;
  let eps = a.norm_eps;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let is_attn = full.contains(&i);
    let self_attn = is_attn.then(|| {
      let mut d = AttnDims::new(h, nh, nkv, hd, (false, false));
      d.qk_norm = Some(eps);
      Attention::new(d, Some(Rope::new(hd, false, theta, 1.0))).with_names(
        "out_proj",
        "q_layernorm",
        "k_layernorm",
      )
    });
    let conv = if is_attn {
      None
    } else {
      Some(ShortConv {
        conv: Conv1d::new(h, h, a.conv_l_cache, 1, 0, 1, h, a.conv_bias)?,
        in_proj: Linear::new(h, 3 * h, a.conv_bias),
        out_proj: Linear::new(h, h, a.conv_bias),
      })
    };
    layers.push(Box::new(Layer {
      self_attn,
      conv,
      feed_forward: Mlp {
        w1: Linear::new(a.block_dim, ff, false),
        w2: Linear::new(ff, a.block_dim, false),
        w3: Linear::new(a.block_dim, ff, false),
      },
      operator_norm: RmsNorm::new(h, eps),
      ffn_norm: RmsNorm::new(h, eps),
    }));
  }
  Ok(Box::new(HybridLm::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    None,
    Names {
      root: "model",
      embed: "embed_tokens",
      layers: "layers",
      norm: "embedding_norm",
      head: "lm_head",
    },
    a.vocab_size,
    Some(sanitize),
  )))
}
