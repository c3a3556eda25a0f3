//! Nemotron-H (NVIDIA's hybrid Mamba-2 / attention / MLP stacks): mlx-lm's
//! `models/nemotron_h.py`. The layer stack is spelled by
//! `hybrid_override_pattern` (`M` Mamba-2 mixer, `*` attention without
//! positional encoding, `-` squared-ReLU MLP, `E` MoE) or `layers_block_type`
//! / `layer_types`; every block is `x + mixer(RMSNorm(x))`. The Mamba-2
//! mixer is [`super::mamba2::Mamba2Mixer`] with a group-wise gated norm; the
//! MoE (Nemotron-3 Nano) routes with sigmoid scores, a correction bias and
//! grouped top-k ([`super::moe::group_expert_select`]) to squared-ReLU experts
//! (optionally in a smaller latent space) plus shared experts.
//! Caches: `ArraysCache(2)` per `M` block, `KVCache` per `*` block, none for
//! MLP / MoE blocks.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, Param, RmsNorm, SwitchLinear, module, relu2};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::mamba::sanitize_conv;
use super::mamba2::{Mamba2Mixer, time_step_limit};
use super::moe::group_expert_select;
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
  /// `moe_intermediate_size` (`E` blocks)
  #[serde(default)]
  pub moe_intermediate_size: Option<i32>,
  /// `moe_shared_expert_intermediate_size`
  #[serde(default)]
  pub moe_shared_expert_intermediate_size: Option<i32>,
  /// `moe_latent_size`: experts run in this smaller space
  #[serde(default)]
  pub moe_latent_size: Option<i32>,
  /// `n_group`
  #[serde(default)]
  pub n_group: Option<i32>,
  /// `n_routed_experts`
  #[serde(default)]
  pub n_routed_experts: Option<i32>,
  /// `n_shared_experts`
  #[serde(default)]
  pub n_shared_experts: Option<i32>,
  /// `topk_group`
  #[serde(default)]
  pub topk_group: Option<i32>,
  /// `num_experts_per_tok`
  #[serde(default)]
  pub num_experts_per_tok: Option<i32>,
  /// `norm_topk_prob`
  #[serde(default)]
  pub norm_topk_prob: Option<bool>,
  /// `routed_scaling_factor`
  #[serde(default)]
  pub routed_scaling_factor: Option<f32>,
}

/// `MoEGate`: a bare router weight and its correction bias (both kept in
/// their checkpoint dtype / never quantized, as mlx-lm).
struct Gate {
  weight: Param,
  e_score_correction_bias: Param,
}
module!(Gate {
  weight,
  e_score_correction_bias
});

/// `SwitchMLP` with `ReLU2`: per-expert `fc1` / `fc2`.
struct SwitchMlp {
  fc1: SwitchLinear,
  fc2: SwitchLinear,
}
module!(SwitchMlp { fc1, fc2 });

/// `NemotronHMoE`.
struct Moe {
  switch_mlp: SwitchMlp,
  gate: Gate,
  shared_experts: Option<Mlp>,
  fc1_latent_proj: Option<Linear>,
  fc2_latent_proj: Option<Linear>,
  top_k: i32,
  n_group: i32,
  topk_group: i32,
  norm_topk_prob: bool,
  scaling: f32,
}
module!(Moe {
  switch_mlp,
  gate,
  shared_experts,
  fc1_latent_proj,
  fc2_latent_proj
});

impl Moe {
  fn forward(&self, x: &Array) -> Result<Array> {
    let g = &self.gate;
    let logits = x.matmul(&ops::transpose(&g.weight.value)?)?;
    let scores = ops::sigmoid(&ops::astype(&logits, Dtype::Float32)?)?;
    let (inds, w) = group_expert_select(
      &scores,
      Some(&g.e_score_correction_bias.value),
      self.top_k,
      self.n_group,
      self.topk_group,
      self.norm_topk_prob.then_some(1e-20),
      self.scaling,
    )?;
    let h = match &self.fc1_latent_proj {
      Some(p) => p.forward(x)?,
      None => x.clone(),
    };
    let inds = ops::stop_gradient(&inds)?;
    let xe = ops::expand_dims_axes(&h, &[-2, -3])?;
    let up = self.switch_mlp.fc1.forward(&xe, &inds, false)?;
    let y = self.switch_mlp.fc2.forward(&relu2(&up)?, &inds, false)?;
    let y = ops::squeeze_axis(&y, -2)?;
    let dt = y.dtype();
    let y = ops::astype(&ops::sum_axis(&(&y * &w.expand_dims(-1)?)?, -2, false)?, dt)?;
    let y = match &self.fc2_latent_proj {
      Some(p) => p.forward(&y)?,
      None => y,
    };
    match &self.shared_experts {
      Some(s) => &y + &s.down_proj.forward(&relu2(&s.up_proj.forward(x)?)?)?,
      None => Ok(y),
    }
  }
}

struct Mlp {
  up_proj: Linear,
  down_proj: Linear,
}
module!(Mlp { up_proj, down_proj });

enum Mixer {
  Mamba(Box<Mamba2Mixer>),
  Attn(Box<Attention>),
  Mlp(Box<Mlp>),
  Moe(Box<Moe>),
}

impl mlxrs_nn::Module for Mixer {
  fn load(&mut self, w: &mut mlxrs_nn::Weights, p: &str) {
    match self {
      Mixer::Mamba(m) => m.load(w, p),
      Mixer::Attn(m) => m.load(w, p),
      Mixer::Mlp(m) => m.load(w, p),
      Mixer::Moe(m) => m.load(w, p),
    }
  }
  fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Mixer::Mamba(m) => m.visit(p, f),
      Mixer::Attn(m) => m.visit(p, f),
      Mixer::Mlp(m) => m.visit(p, f),
      Mixer::Moe(m) => m.visit(p, f),
    }
  }
  fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    match self {
      Mixer::Mamba(m) => m.visit_mut(p, f),
      Mixer::Attn(m) => m.visit_mut(p, f),
      Mixer::Mlp(m) => m.visit_mut(p, f),
      Mixer::Moe(m) => m.visit_mut(p, f),
    }
  }
  fn visit_frozen(&self, p: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    match self {
      Mixer::Mamba(m) => m.visit_frozen(p, f),
      Mixer::Attn(m) => m.visit_frozen(p, f),
      Mixer::Mlp(m) => m.visit_frozen(p, f),
      Mixer::Moe(m) => m.visit_frozen(p, f),
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
      Mixer::Moe(m) => m.visit_quantizable_mut(p, f),
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
      Mixer::Moe(m) => m.forward(&h)?,
    };
    x + &y
  }
  fn new_cache(&self) -> Option<KvCache> {
    match self.mixer {
      Mixer::Mamba(_) => Some(KvCache::arrays(2)),
      Mixer::Attn(_) => Some(KvCache::standard()),
      Mixer::Mlp(_) | Mixer::Moe(_) => None,
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

/// mlx-lm nemotron_h.py's `sanitize`: drop `mtp.*`, conv weights to MLX
/// layout, per-expert `mixer.experts.{e}.up_proj` / `down_proj` stacked into
/// `mixer.switch_mlp.fc1` / `fc2`.
fn sanitize(mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  weights.retain(|k, _| !k.starts_with("mtp."));
  let mut w = sanitize_conv(weights)?;
  let mut prefixes: Vec<String> = w
    .keys()
    .filter(|k| k.starts_with("backbone.layers.") && k.ends_with(".mixer.experts.0.up_proj.weight"))
    .map(|k| k.trim_end_matches(".experts.0.up_proj.weight").to_string())
    .collect();
  prefixes.sort();
  for p in &prefixes {
    let n = (0..)
      .take_while(|e| w.contains_key(&format!("{p}.experts.{e}.up_proj.weight")))
      .count() as i32;
    super::base::stack_experts(
      &mut w,
      std::slice::from_ref(p),
      n,
      &[("up_proj", "fc1"), ("down_proj", "fc2")],
    )?;
  }
  Ok(w)
}

/// An `E` block from the config (its MoE fields are then required).
fn moe(a: &NemotronHArgs) -> Result<Moe> {
  let need = |v: Option<i32>, name: &str| -> Result<i32> {
    v.filter(|&x| x > 0).ok_or_else(|| {
      Error::InvalidArgument(format!(
        "config.json (nemotron_h): MoE (E) blocks need a positive {name}"
      ))
    })
  };
  let e = need(a.n_routed_experts, "n_routed_experts")?;
  let k = need(a.num_experts_per_tok, "num_experts_per_tok")?;
  super::base::check_moe("nemotron_h", e, k)?;
  let inter = need(a.moe_intermediate_size, "moe_intermediate_size")?;
  let n_group = a.n_group.unwrap_or(1).max(1);
  let topk_group = a.topk_group.unwrap_or(1);
  if e % n_group != 0 || topk_group < 1 || topk_group > n_group {
    return Err(Error::InvalidArgument(format!(
      "config.json (nemotron_h): n_routed_experts ({e}) must split into n_group ({n_group}) \
       groups and topk_group ({topk_group}) be in 1..={n_group}"
    )));
  }
  let h = a.hidden_size;
  let inp = a.moe_latent_size.unwrap_or(h);
  let shared = match a.n_shared_experts {
    Some(_) => {
      let s = need(
        a.moe_shared_expert_intermediate_size,
        "moe_shared_expert_intermediate_size",
      )?;
      Some(Mlp {
        up_proj: Linear::new(h, s, a.mlp_bias),
        down_proj: Linear::new(s, h, a.mlp_bias),
      })
    }
    None => None,
  };
  Ok(Moe {
    switch_mlp: SwitchMlp {
      fc1: SwitchLinear::new(inp, inter, e, false),
      fc2: SwitchLinear::new(inter, inp, e, false),
    },
    gate: Gate {
      weight: Param::new(&[e, h]),
      e_score_correction_bias: Param::new_uncast(&[e]),
    },
    shared_experts: shared,
    fc1_latent_proj: a.moe_latent_size.map(|l| Linear::new(h, l, a.mlp_bias)),
    fc2_latent_proj: a.moe_latent_size.map(|l| Linear::new(l, h, a.mlp_bias)),
    top_k: k,
    n_group,
    topk_group,
    norm_topk_prob: a.norm_topk_prob.unwrap_or(false),
    scaling: a.routed_scaling_factor.unwrap_or(1.0),
  })
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
      'M' => Mixer::Mamba(Box::new(
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
      )),
      '*' => Mixer::Attn(Box::new(Attention::new(
        AttnDims::new(
          h,
          a.num_attention_heads,
          a.num_key_value_heads,
          hd,
          (a.attention_bias, a.attention_bias),
        ),
        None,
      ))),
      '-' => Mixer::Mlp(Box::new(Mlp {
        up_proj: Linear::new(h, a.intermediate_size, a.mlp_bias),
        down_proj: Linear::new(a.intermediate_size, h, a.mlp_bias),
      })),
      'E' => Mixer::Moe(Box::new(moe(&a)?)),
      other => {
        return Err(Error::InvalidArgument(format!(
          "config.json (nemotron_h): hybrid_override_pattern block {other:?} is not supported \
           (supported: M mamba, * attention, - MLP, E MoE)"
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
