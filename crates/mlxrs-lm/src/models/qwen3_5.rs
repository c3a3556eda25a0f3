//! Qwen3.5 (text side; dense `qwen3_5` and MoE `qwen3_5_moe`): mlx-lm's
//! `models/qwen3_5.py` / `qwen3_5_moe.py` — Qwen3-Next's hybrid
//! ([`super::qwen3_next`]: gated attention every `full_attention_interval`
//! layers, `GatedDeltaNet` linear attention otherwise) with separate
//! `in_proj_qkv` / `in_proj_z` / `in_proj_b` / `in_proj_a` projections, RoPE
//! from `rope_parameters`, the config under `text_config` (or flat) and the
//! weights under `language_model.` (HF `model.language_model.`; vision
//! weights are dropped). MoE checkpoints use the MoE block on every layer
//! (HF's fused `experts.gate_up_proj` is split). Caches: `ArraysCache(2)`
//! for linear layers, `KVCache` for attention layers.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Conv1d, Embedding, KvCache, Linear, Param, RmsNorm, Rope, module};
use serde::Deserialize;
use serde_json::Value;

use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::mlp::SwiGluMlp;
use super::moe::SparseMoe;
use super::qwen3_next::{DeltaDims, GatedAttention, Mlp, NormGated, delta_core};
use crate::model::{LanguageModel, parse_args};

fn d_interval() -> i32 {
  4
}
fn d_true() -> bool {
  true
}
fn d_rope() -> Value {
  serde_json::json!({"type": "default", "mrope_section": [11, 11, 10], "rope_theta": 100000, "partial_rotary_factor": 0.25})
}

/// `TextModelArgs` of mlx-lm's qwen3_5.py (mlx-lm's defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3_5Args {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size`
  #[serde(default)]
  pub intermediate_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `max_position_embeddings`
  #[serde(default)]
  pub max_position_embeddings: Option<i32>,
  /// `linear_num_value_heads`
  pub linear_num_value_heads: i32,
  /// `linear_num_key_heads`
  pub linear_num_key_heads: i32,
  /// `linear_key_head_dim`
  pub linear_key_head_dim: i32,
  /// `linear_value_head_dim`
  pub linear_value_head_dim: i32,
  /// `linear_conv_kernel_dim`
  pub linear_conv_kernel_dim: i32,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `head_dim` (default `hidden_size / num_attention_heads`)
  #[serde(default)]
  pub head_dim: Option<i32>,
  /// `full_attention_interval`
  #[serde(default = "d_interval")]
  pub full_attention_interval: i32,
  /// `num_experts` (0: dense)
  #[serde(default)]
  pub num_experts: i32,
  /// `num_experts_per_tok`
  #[serde(default)]
  pub num_experts_per_tok: i32,
  /// `shared_expert_intermediate_size`
  #[serde(default)]
  pub shared_expert_intermediate_size: i32,
  /// `moe_intermediate_size`
  #[serde(default)]
  pub moe_intermediate_size: i32,
  /// `norm_topk_prob`
  #[serde(default = "d_true")]
  pub norm_topk_prob: bool,
  /// `rope_parameters` (`rope_theta`, `partial_rotary_factor`, type)
  #[serde(default = "d_rope")]
  pub rope_parameters: Value,
}

struct GatedDeltaNet {
  conv1d: Conv1d,
  in_proj_qkv: Linear,
  in_proj_z: Linear,
  in_proj_b: Linear,
  in_proj_a: Linear,
  dt_bias: Param,
  a_log: Param,
  norm: NormGated,
  out_proj: Linear,
  d: DeltaDims,
}
module!(GatedDeltaNet {
  conv1d,
  in_proj_qkv,
  in_proj_z,
  in_proj_b,
  in_proj_a,
  dt_bias,
  a_log => "A_log",
  norm,
  out_proj
});

impl GatedDeltaNet {
  fn new(d: DeltaDims) -> Result<GatedDeltaNet> {
    let cd = d.conv_dim();
    Ok(GatedDeltaNet {
      conv1d: Conv1d::new(cd, cd, d.kernel, 1, 0, 1, cd, false)?,
      in_proj_qkv: Linear::new(d.hidden, cd, false),
      in_proj_z: Linear::new(d.hidden, d.value_dim(), false),
      in_proj_b: Linear::new(d.hidden, d.v_heads, false),
      in_proj_a: Linear::new(d.hidden, d.v_heads, false),
      dt_bias: Param::new(&[d.v_heads]),
      // python `cast_predicate`: A_log keeps its checkpoint dtype.
      a_log: Param::new_uncast(&[d.v_heads]),
      norm: NormGated {
        weight: Param::new(&[d.v_dim]),
        eps: d.eps,
      },
      out_proj: Linear::new(d.value_dim(), d.hidden, false),
      d,
    })
  }

  fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let d = &self.d;
    let qkv = self.in_proj_qkv.forward(x)?;
    let z = self
      .in_proj_z
      .forward(x)?
      .reshape(&[b, l, d.v_heads, d.v_dim])?;
    let bb = self.in_proj_b.forward(x)?;
    let aa = self.in_proj_a.forward(x)?;
    let out = delta_core(
      d,
      &self.conv1d,
      &self.a_log.value,
      &self.dt_bias.value,
      &self.norm,
      &qkv,
      &z,
      &bb,
      &aa,
      cache,
    )?;
    self.out_proj.forward(&out)
  }
}

struct Layer {
  linear_attn: Option<GatedDeltaNet>,
  self_attn: Option<GatedAttention>,
  mlp: Mlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Layer {
  linear_attn,
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl HybridLayer for Layer {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let n = self.input_layernorm.forward(x)?;
    let r = match (&self.linear_attn, &self.self_attn) {
      (Some(la), _) => {
        let r = la.forward(&n, cache)?;
        cache.offset += x.dim(1).unwrap_or(0);
        r
      }
      (None, Some(sa)) => sa.forward(&n, mask, cache)?,
      _ => {
        return Err(Error::InvalidArgument(
          "qwen3_5 layer without a mixer".into(),
        ));
      }
    };
    let h = (x + &r)?;
    &h + &self
      .mlp
      .forward(&self.post_attention_layernorm.forward(&h)?)?
  }
  fn new_cache(&self) -> Option<KvCache> {
    Some(if self.linear_attn.is_some() {
      KvCache::arrays(2)
    } else {
      KvCache::standard()
    })
  }
  fn is_attention(&self) -> bool {
    self.self_attn.is_some()
  }
}

/// mlx-lm's `Model.sanitize` (qwen3_5 / qwen3_5_moe) then
/// `TextModel.sanitize`.
fn sanitize_with(
  weights: HashMap<String, Array>,
  n_layers: i32,
  tied: bool,
) -> Result<HashMap<String, Array>> {
  let mut w: HashMap<String, Array> = HashMap::with_capacity(weights.len());
  for (k, v) in weights {
    if k.starts_with("vision_tower") || k.starts_with("model.visual") {
      continue;
    }
    let k = if let Some(rest) = k.strip_prefix("model.language_model") {
      format!("language_model.model{rest}")
    } else if k.starts_with("language_model.") {
      k
    } else {
      format!("language_model.{k}")
    };
    w.insert(k, v);
  }
  for l in 0..n_layers {
    let p = format!("language_model.model.layers.{l}.mlp");
    if let Some(gu) = w.remove(&format!("{p}.experts.gate_up_proj")) {
      let mid = gu.dim(-2).unwrap_or(0) / 2;
      let parts = ops::split_sections(&gu, &[mid], -2)?;
      w.insert(format!("{p}.switch_mlp.gate_proj.weight"), parts[0].clone());
      w.insert(format!("{p}.switch_mlp.up_proj.weight"), parts[1].clone());
      let down = w.remove(&format!("{p}.experts.down_proj")).ok_or_else(|| {
        Error::InvalidArgument(format!(
          "sanitize: {p}.experts.gate_up_proj without experts.down_proj"
        ))
      })?;
      w.insert(format!("{p}.switch_mlp.down_proj.weight"), down);
    }
  }
  let unsanitized = w
    .iter()
    .any(|(k, v)| k.contains("conv1d.weight") && v.dim(-1) != Some(1));
  w.retain(|k, _| !k.contains("mtp."));
  if tied {
    w.remove("language_model.lm_head.weight");
  }
  let norm_keys = [
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
  ];
  for (k, v) in w.iter_mut() {
    if k.contains("conv1d.weight") && v.ndim() == 3 && v.dim(-1) != Some(1) {
      *v = ops::moveaxis(v, 2, 1)?;
    }
    if unsanitized && norm_keys.iter().any(|s| k.ends_with(s)) && v.ndim() == 1 {
      *v = (&*v + 1.0)?;
    }
  }
  Ok(w)
}

struct Qwen3_5 {
  inner: HybridLm,
  n_layers: i32,
  tied: bool,
}

impl LanguageModel for Qwen3_5 {
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
    let w = sanitize_with(weights, self.n_layers, self.tied)?;
    self.inner.sanitize(w)
  }
  fn vocab_size(&self) -> i32 {
    self.inner.vocab_size()
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(f)
  }
}

/// Registry entry for `qwen3_5` and `qwen3_5_moe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let text = match config.get("text_config") {
    Some(t) if t.is_object() => {
      let mut t = t.clone();
      if t.get("model_type").is_none() {
        t["model_type"] = config.get("model_type").cloned().unwrap_or(Value::Null);
      }
      t
    }
    _ => config.clone(),
  };
  let a: Qwen3_5Args = parse_args(&text)?;
  let arch = "qwen3_5";
  let h = a.hidden_size;
  super::base::check_heads(
    arch,
    h,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.num_hidden_layers,
  )?;
  let head_dim = a.head_dim.unwrap_or(h / a.num_attention_heads);
  if a.full_attention_interval <= 0 || head_dim <= 0 {
    return Err(Error::InvalidArgument(format!(
      "config.json ({arch}): full_attention_interval and head_dim must be positive"
    )));
  }
  if a.num_experts > 0 {
    super::base::check_moe(arch, a.num_experts, a.num_experts_per_tok)?;
  }
  let d = DeltaDims {
    hidden: h,
    k_heads: a.linear_num_key_heads,
    v_heads: a.linear_num_value_heads,
    k_dim: a.linear_key_head_dim,
    v_dim: a.linear_value_head_dim,
    kernel: a.linear_conv_kernel_dim,
    eps: a.rms_norm_eps,
  };
  d.check(arch)?;
  super::qwen3_next::check_layer_types(
    &text,
    arch,
    a.num_hidden_layers,
    a.full_attention_interval,
  )?;
  // python `__post_init__`: `rope_type` -> `type`; theta and the rotary
  // fraction from `rope_parameters`.
  let mut rp = a.rope_parameters.clone();
  if rp.is_object() && rp.get("type").is_none() {
    if let Some(t) = rp.get("rope_type").cloned() {
      rp["type"] = t;
    }
  }
  let num = |k: &str, dflt: f64| rp.get(k).and_then(Value::as_f64).unwrap_or(dflt);
  let (theta, frac) = (
    num("rope_theta", 100000.0) as f32,
    num("partial_rotary_factor", 0.25),
  );
  let rope_dims = (head_dim as f64 * frac) as i32;
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let linear = (i + 1) % a.full_attention_interval != 0;
    layers.push(Box::new(Layer {
      linear_attn: if linear {
        Some(GatedDeltaNet::new(d)?)
      } else {
        None
      },
      self_attn: if linear {
        None
      } else {
        Some(GatedAttention::new(
          h,
          a.num_attention_heads,
          a.num_key_value_heads,
          head_dim,
          a.attention_bias,
          eps,
          Rope::from_config(
            rope_dims,
            theta,
            false,
            (!rp.is_null()).then_some(&rp),
            a.max_position_embeddings,
          )?,
        ))
      },
      mlp: if a.num_experts > 0 {
        Mlp::Sparse(Box::new(SparseMoe::new(
          h,
          a.moe_intermediate_size,
          a.num_experts,
          a.num_experts_per_tok,
          a.norm_topk_prob,
          Some(a.shared_expert_intermediate_size),
        )))
      } else {
        Mlp::Dense(Box::new(SwiGluMlp::new(h, a.intermediate_size, false)))
      },
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
    }));
  }
  let inner = HybridLm::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    Names {
      root: "language_model.model",
      embed: "embed_tokens",
      layers: "layers",
      norm: "norm",
      head: "language_model.lm_head",
    },
    a.vocab_size,
    None,
  );
  Ok(Box::new(Qwen3_5 {
    inner,
    n_layers: a.num_hidden_layers,
    tied: a.tie_word_embeddings,
  }))
}
