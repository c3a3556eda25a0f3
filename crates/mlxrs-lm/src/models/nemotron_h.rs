//! Nemotron-H (NVIDIA's hybrid Mamba-2 / attention / MLP stacks): mlx-lm's
//! `models/nemotron_h.py`. The layer stack is spelled by
//! `hybrid_override_pattern` (`M` Mamba-2 mixer, `*` attention without
//! positional encoding, `-` squared-ReLU MLP, `E` MoE) or `layers_block_type`
//! / `layer_types`; every block is `x + mixer(RMSNorm(x))`. The Mamba-2
//! mixer is [`super::mamba2::Mamba2Mixer`] with a group-wise gated norm.
//! Caches: `ArraysCache(2)` per `M` block, `KVCache` per `*` block, none for
//! MLP blocks. MoE blocks (`E`, Nemotron-3 Nano) are not implemented: such a
//! config fails naming the pattern.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, module, relu2};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::mamba::sanitize_conv;
use super::mamba2::{Mamba2Mixer, time_step_limit};
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's nemotron_h.py (the dense part).
#[derive(Debug, Clone, Deserialize)]
pub struct NemotronHArgs {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size` (MLP blocks)
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `attention_bias`
  pub attention_bias: bool,
  /// `mamba_num_heads`
  pub mamba_num_heads: i32,
  /// `mamba_head_dim`
  pub mamba_head_dim: i32,
  /// `mamba_proj_bias` (in_proj, out_proj)
  pub mamba_proj_bias: bool,
  /// `ssm_state_size`
  pub ssm_state_size: i32,
  /// `conv_kernel`
  pub conv_kernel: i32,
  /// `n_groups`
  pub n_groups: i32,
  /// `mlp_bias`
  pub mlp_bias: bool,
  /// `layer_norm_epsilon`
  pub layer_norm_epsilon: f32,
  /// `use_conv_bias`
  pub use_conv_bias: bool,
  /// `hybrid_override_pattern`: a string or list of `M`, `*`, `-`, `E`.
  #[serde(default)]
  pub hybrid_override_pattern: Option<Value>,
  /// `layers_block_type` (transformers' spelling of the pattern)
  #[serde(default)]
  pub layers_block_type: Option<Vec<String>>,
  /// `layer_types` (alias of `layers_block_type`)
  #[serde(default)]
  pub layer_types: Option<Vec<String>>,
  /// `head_dim` (default `hidden_size / num_attention_heads`)
  #[serde(default)]
  pub head_dim: Option<i32>,
  /// `time_step_limit` (default `[0, inf)`)
  #[serde(default)]
  pub time_step_limit: Option<Vec<f64>>,
}

struct Mlp {
  up_proj: Linear,
  down_proj: Linear,
}
module!(Mlp { up_proj, down_proj });

enum Mixer {
  Mamba(Mamba2Mixer),
  Attn(Attention),
  Mlp(Mlp),
}

impl mlxrs_nn::Module for Mixer {
  fn load(&mut self, w: &mut mlxrs_nn::Weights, p: &str) {
    match self {
      Mixer::Mamba(m) => m.load(w, p),
      Mixer::Attn(m) => m.load(w, p),
      Mixer::Mlp(m) => m.load(w, p),
    }
  }
  fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Mixer::Mamba(m) => m.visit(p, f),
      Mixer::Attn(m) => m.visit(p, f),
      Mixer::Mlp(m) => m.visit(p, f),
    }
  }
  fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    match self {
      Mixer::Mamba(m) => m.visit_mut(p, f),
      Mixer::Attn(m) => m.visit_mut(p, f),
      Mixer::Mlp(m) => m.visit_mut(p, f),
    }
  }
  fn visit_frozen(&self, p: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    match self {
      Mixer::Mamba(m) => m.visit_frozen(p, f),
      Mixer::Attn(m) => m.visit_frozen(p, f),
      Mixer::Mlp(m) => m.visit_frozen(p, f),
    }
  }
  fn visit_quantizable_mut(
    &mut self,
    p: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    match self {
      Mixer::Mamba(m) => m.visit_quantizable_mut(p, f),
      Mixer::Attn(m) => m.visit_quantizable_mut(p, f),
      Mixer::Mlp(m) => m.visit_quantizable_mut(p, f),
    }
  }
}

struct Block {
  norm: RmsNorm,
  mixer: Mixer,
}
module!(Block { norm, mixer });

impl HybridLayer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = self.norm.forward(x)?;
    let y = match &self.mixer {
      Mixer::Mamba(m) => {
        let y = m.forward(&h, cache)?;
        cache.offset += x.dim(1).unwrap_or(0);
        y
      }
      Mixer::Attn(a) => a.forward(&h, mask, cache)?,
      Mixer::Mlp(m) => m.down_proj.forward(&relu2(&m.up_proj.forward(&h)?)?)?,
    };
    x + &y
  }
  fn new_cache(&self) -> Option<KvCache> {
    match self.mixer {
      Mixer::Mamba(_) => Some(KvCache::arrays(2)),
      Mixer::Attn(_) => Some(KvCache::standard()),
      Mixer::Mlp(_) => None,
    }
  }
  fn is_attention(&self) -> bool {
    matches!(self.mixer, Mixer::Attn(_))
  }
}

/// The block pattern as characters (python `__post_init__`).
fn pattern(a: &NemotronHArgs) -> Result<Vec<char>> {
  let bad = |m: String| Error::InvalidArgument(format!("config.json (nemotron_h): {m}"));
  if let Some(p) = &a.hybrid_override_pattern {
    return match p {
      Value::String(s) => Ok(s.chars().collect()),
      Value::Array(l) => l
        .iter()
        .map(|c| match c.as_str() {
          Some(s) if s.chars().count() == 1 => Ok(s.chars().next().unwrap_or('?')),
          _ => Err(bad(format!(
            "hybrid_override_pattern entry {c} is not one character"
          ))),
        })
        .collect(),
      other => Err(bad(format!(
        "hybrid_override_pattern must be a string or list, got {other}"
      ))),
    };
  }
  let types = a
    .layers_block_type
    .as_ref()
    .or(a.layer_types.as_ref())
    .ok_or_else(|| {
      bad("the config must have layers_block_type or hybrid_override_pattern to describe the layer stack".into())
    })?;
  types
    .iter()
    .map(|t| match t.as_str() {
      "full_attention" | "attention" => Ok('*'),
      "linear_attention" | "mamba" | "conv" => Ok('M'),
      "moe" => Ok('E'),
      "mlp" => Ok('-'),
      other => Err(bad(format!("unsupported layers_block_type {other:?}"))),
    })
    .collect()
}

/// mlx-lm nemotron_h.py's `sanitize` (dense part): drop `mtp.*`, conv
/// weights to MLX layout.
fn sanitize(mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  weights.retain(|k, _| !k.starts_with("mtp."));
  sanitize_conv(weights)
}

/// Registry entry for `nemotron_h`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: NemotronHArgs = parse_args(config)?;
  let pat = pattern(&a)?;
  let h = a.hidden_size;
  let hd = a.head_dim.unwrap_or(if a.num_attention_heads > 0 {
    h / a.num_attention_heads
  } else {
    0
  });
  super::base::check_heads(
    "nemotron_h",
    h,
    a.num_attention_heads,
    a.num_key_value_heads,
    pat.len() as i32,
  )?;
  if hd <= 0
    || [
      a.mamba_num_heads,
      a.mamba_head_dim,
      a.ssm_state_size,
      a.conv_kernel,
      a.n_groups,
    ]
    .iter()
    .any(|&v| v <= 0)
    || a.mamba_num_heads % a.n_groups != 0
  {
    return Err(Error::InvalidArgument(format!(
      "config.json (nemotron_h): mamba_num_heads ({}) must be a positive multiple of n_groups ({}); \
       head dims, ssm_state_size and conv_kernel positive",
      a.mamba_num_heads, a.n_groups
    )));
  }
  let limit = match &a.time_step_limit {
    Some(v) => time_step_limit("nemotron_h", v)?,
    None => (0.0, f32::INFINITY),
  };
  let inner = a.mamba_num_heads * a.mamba_head_dim;
  let eps = a.layer_norm_epsilon;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for c in &pat {
    let mixer = match c {
      'M' => Mixer::Mamba(
        Mamba2Mixer::new(
          h,
          a.mamba_num_heads,
          a.mamba_head_dim,
          a.n_groups,
          a.ssm_state_size,
          a.conv_kernel,
          a.mamba_proj_bias,
          a.use_conv_bias,
          eps,
          Some(inner / a.n_groups),
          limit,
        )?
        .with_raw_a_log(),
      ),
      '*' => Mixer::Attn(Attention::new(
        AttnDims::new(
          h,
          a.num_attention_heads,
          a.num_key_value_heads,
          hd,
          (a.attention_bias, a.attention_bias),
        ),
        None,
      )),
      '-' => Mixer::Mlp(Mlp {
        up_proj: Linear::new(h, a.intermediate_size, a.mlp_bias),
        down_proj: Linear::new(a.intermediate_size, h, a.mlp_bias),
      }),
      other => {
        return Err(Error::InvalidArgument(format!(
          "config.json (nemotron_h): hybrid_override_pattern block {other:?} is not supported \
           (supported: M mamba, * attention, - MLP; E (MoE) blocks are not implemented)"
        )));
      }
    };
    layers.push(Box::new(Block {
      norm: RmsNorm::new(h, eps),
      mixer,
    }));
  }
  Ok(Box::new(HybridLm::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    Some(Linear::new(h, a.vocab_size, false)),
    Names {
      root: "backbone",
      embed: "embeddings",
      layers: "layers",
      norm: "norm_f",
      head: "lm_head",
    },
    a.vocab_size,
    Some(sanitize),
  )))
}
