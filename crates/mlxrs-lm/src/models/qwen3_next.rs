//! Qwen3-Next: mlx-lm's `models/qwen3_next.py` — a hybrid where three of
//! every `full_attention_interval` (4) layers are `GatedDeltaNet` linear
//! attention ([`super::gated_delta`]: a fused `in_proj_qkvz` / `in_proj_ba`
//! laid out per key head, a depthwise causal conv over q|k|v, L2-normalised
//! q/k, the gated delta rule, a gated RMSNorm per value head) and the fourth
//! is gated attention (`q_proj` gives queries and a sigmoid output gate per
//! head, q/k RMSNorm, partial RoPE). MLPs are SwiGLU or the softmax top-k
//! MoE with a sigmoid-gated shared expert (`decoder_sparse_step`,
//! `mlp_only_layers`). Caches: `ArraysCache(2)` (conv state, delta state)
//! for linear layers, `KVCache` for attention layers.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::{AttnMask, Conv1d, Embedding, KvCache, Linear, Param, RmsNorm, Rope, module, silu};
use serde::Deserialize;
use serde_json::Value;

use super::decoder::Names;
use super::gated_delta::{gated_delta_update, normalize_qk};
use super::hybrid::{HybridLayer, HybridLm};
use super::mlp::SwiGluMlp;
use super::moe::SparseMoe;
use super::ssm::causal_conv;
use crate::model::{LanguageModel, parse_args};

fn d_interval() -> i32 {
  4
}
fn d_sparse_step() -> i32 {
  1
}

/// `ModelArgs` of mlx-lm's qwen3_next.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3NextArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size` (dense MLP layers)
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `head_dim`
  pub head_dim: i32,
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
  /// `num_experts` (0: no MoE)
  pub num_experts: i32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `decoder_sparse_step`
  #[serde(default = "d_sparse_step")]
  pub decoder_sparse_step: i32,
  /// `shared_expert_intermediate_size`
  pub shared_expert_intermediate_size: i32,
  /// `mlp_only_layers`
  #[serde(default)]
  pub mlp_only_layers: Vec<i32>,
  /// `moe_intermediate_size`
  pub moe_intermediate_size: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `partial_rotary_factor`
  pub partial_rotary_factor: f32,
  /// `max_position_embeddings`
  pub max_position_embeddings: i32,
  /// `norm_topk_prob`
  #[serde(default)]
  pub norm_topk_prob: bool,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `rope_scaling`
  #[serde(default)]
  pub rope_scaling: Option<Value>,
  /// `full_attention_interval`: every n-th layer is attention.
  #[serde(default = "d_interval")]
  pub full_attention_interval: i32,
}

/// The gated RMSNorm of Qwen3-Next / Qwen3.5 (python
/// `Qwen3NextRMSNormGated`): `silu(gate) * rms_norm(x) * weight`, computed
/// in float32 (`precise_swiglu`).
pub(crate) struct NormGated {
  pub weight: Param,
  pub eps: f32,
}
module!(NormGated { weight });

impl NormGated {
  pub fn forward(&self, h: &Array, gate: &Array) -> Result<Array> {
    let x = mlxrs_core::fast::rms_norm(h, Some(&self.weight.value), self.eps)?;
    let g = silu(&ops::astype(gate, Dtype::Float32)?)?;
    ops::astype(&(&g * &ops::astype(&x, Dtype::Float32)?)?, h.dtype())
  }
}

/// Gated attention (python `Qwen3NextAttention`), shared with Qwen3.5.
pub(crate) struct GatedAttention {
  pub q_proj: Linear,
  pub k_proj: Linear,
  pub v_proj: Linear,
  pub o_proj: Linear,
  pub q_norm: RmsNorm,
  pub k_norm: RmsNorm,
  pub rope: Rope,
  pub n_heads: i32,
  pub n_kv: i32,
  pub head_dim: i32,
}
module!(GatedAttention {
  q_proj,
  k_proj,
  v_proj,
  o_proj,
  q_norm,
  k_norm
});

impl GatedAttention {
  /// An unloaded layer.
  #[allow(clippy::too_many_arguments)]
  pub fn new(
    hidden: i32,
    n_heads: i32,
    n_kv: i32,
    head_dim: i32,
    bias: bool,
    eps: f32,
    rope: Rope,
  ) -> GatedAttention {
    GatedAttention {
      q_proj: Linear::new(hidden, n_heads * head_dim * 2, bias),
      k_proj: Linear::new(hidden, n_kv * head_dim, bias),
      v_proj: Linear::new(hidden, n_kv * head_dim, bias),
      o_proj: Linear::new(n_heads * head_dim, hidden, bias),
      q_norm: RmsNorm::new(head_dim, eps),
      k_norm: RmsNorm::new(head_dim, eps),
      rope,
      n_heads,
      n_kv,
      head_dim,
    }
  }

  pub fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let qg = self.q_proj.forward(x)?.reshape(&[b, l, self.n_heads, -1])?;
    let qg = ops::split(&qg, 2, -1)?;
    let gate = qg[1].reshape(&[b, l, -1])?;
    let q = self.q_norm.forward(&qg[0])?.transpose_axes(&[0, 2, 1, 3])?;
    let k = self.k_proj.forward(x)?.reshape(&[b, l, self.n_kv, -1])?;
    let k = self.k_norm.forward(&k)?.transpose_axes(&[0, 2, 1, 3])?;
    let v = self
      .v_proj
      .forward(x)?
      .reshape(&[b, l, self.n_kv, -1])?
      .transpose_axes(&[0, 2, 1, 3])?;
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let scale = (self.head_dim as f32).powf(-0.5);
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, scale, mask, None)?;
    let o = o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, -1])?;
    self.o_proj.forward(&(&o * &ops::sigmoid(&gate)?)?)
  }
}

/// Shape of a gated-delta layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeltaDims {
  pub hidden: i32,
  pub k_heads: i32,
  pub v_heads: i32,
  pub k_dim: i32,
  pub v_dim: i32,
  pub kernel: i32,
  pub eps: f32,
}

impl DeltaDims {
  pub fn check(&self, arch: &str) -> Result<()> {
    let d = self;
    if [d.k_heads, d.v_heads, d.k_dim, d.v_dim, d.kernel]
      .iter()
      .any(|&v| v <= 0)
      || d.v_heads % d.k_heads != 0
    {
      return Err(Error::InvalidArgument(format!(
        "config.json ({arch}): linear_num_value_heads ({}) must be a positive multiple of \
         linear_num_key_heads ({}); head dims and linear_conv_kernel_dim positive",
        d.v_heads, d.k_heads
      )));
    }
    Ok(())
  }
  pub fn key_dim(&self) -> i32 {
    self.k_heads * self.k_dim
  }
  pub fn value_dim(&self) -> i32 {
    self.v_heads * self.v_dim
  }
  pub fn conv_dim(&self) -> i32 {
    2 * self.key_dim() + self.value_dim()
  }
}

/// The conv + gated delta rule + gated norm part every `GatedDeltaNet`
/// shares: `qkv` `[B, S, conv_dim]` (q | k | v), `z` `[B, S, Hv, Dv]`,
/// `b`, `a` `[B, S, Hv]`. Returns `[B, S, value_dim]` before `out_proj`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn delta_core(
  d: &DeltaDims,
  conv1d: &Conv1d,
  a_log: &Array,
  dt_bias: &Array,
  norm: &NormGated,
  qkv: &Array,
  z: &Array,
  b: &Array,
  a: &Array,
  cache: &mut KvCache,
) -> Result<Array> {
  let slots = cache.arrays_mut()?;
  let s = qkv.shape();
  let (bs, sl) = (s[0], s[1]);
  let (conv, conv_state) = causal_conv(conv1d, qkv, slots.get(0))?;
  let conv = silu(&conv)?;
  let kd = d.key_dim();
  let p = ops::split_sections(&conv, &[kd, 2 * kd], -1)?;
  let q = p[0].reshape(&[bs, sl, d.k_heads, d.k_dim])?;
  let k = p[1].reshape(&[bs, sl, d.k_heads, d.k_dim])?;
  let v = p[2].reshape(&[bs, sl, d.v_heads, d.v_dim])?;
  let (q, k) = normalize_qk(&q, &k, (d.k_dim as f32).powf(-0.5), 1e-6)?;
  let (out, state) = gated_delta_update(&q, &k, &v, a, b, a_log, dt_bias, slots.get(1).cloned())?;
  slots.set(0, conv_state)?;
  slots.set(1, state)?;
  norm.forward(&out, z)?.reshape(&[bs, sl, -1])
}

struct GatedDeltaNet {
  conv1d: Conv1d,
  in_proj_qkvz: Linear,
  in_proj_ba: Linear,
  dt_bias: Param,
  a_log: Param,
  norm: NormGated,
  out_proj: Linear,
  d: DeltaDims,
}
module!(GatedDeltaNet {
  conv1d,
  in_proj_qkvz,
  in_proj_ba,
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
      in_proj_qkvz: Linear::new(d.hidden, 2 * d.key_dim() + 2 * d.value_dim(), false),
      in_proj_ba: Linear::new(d.hidden, 2 * d.v_heads, false),
      dt_bias: Param::new(&[d.v_heads]),
      a_log: Param::new(&[d.v_heads]),
      norm: NormGated {
        weight: Param::new(&[d.v_dim]),
        eps: d.eps,
      },
      out_proj: Linear::new(d.value_dim(), d.hidden, false),
      d,
    })
  }

  fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
    let d = &self.d;
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let (nk, dn, nv, dv) = (d.k_heads, d.k_dim, d.v_heads, d.v_dim);
    // python `fix_query_key_value_ordering`: per key head q | k | v | z.
    let qkvz = self.in_proj_qkvz.forward(x)?.reshape(&[b, l, nk, -1])?;
    let ba = self.in_proj_ba.forward(x)?.reshape(&[b, l, nk, -1])?;
    let r = nv / nk;
    let p = ops::split_sections(&qkvz, &[dn, 2 * dn, 2 * dn + r * dv], -1)?;
    let v = p[2].reshape(&[b, l, -1, dv])?;
    let z = p[3].reshape(&[b, l, -1, dv])?;
    let pb = ops::split_sections(&ba, &[r], -1)?;
    let bb = pb[0].reshape(&[b, l, nv])?;
    let aa = pb[1].reshape(&[b, l, nv])?;
    let qkv = ops::concatenate_axis(
      &[
        p[0].reshape(&[b, l, -1])?,
        p[1].reshape(&[b, l, -1])?,
        v.reshape(&[b, l, -1])?,
      ],
      -1,
    )?;
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

/// A layer's MLP: dense SwiGLU or the sparse MoE.
pub(crate) enum Mlp {
  Dense(Box<SwiGluMlp>),
  Sparse(Box<SparseMoe>),
}

impl mlxrs_nn::Module for Mlp {
  fn load(&mut self, w: &mut mlxrs_nn::Weights, prefix: &str) {
    match self {
      Mlp::Dense(m) => m.load(w, prefix),
      Mlp::Sparse(m) => m.load(w, prefix),
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Mlp::Dense(m) => m.visit(prefix, f),
      Mlp::Sparse(m) => m.visit(prefix, f),
    }
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    match self {
      Mlp::Dense(m) => m.visit_mut(prefix, f),
      Mlp::Sparse(m) => m.visit_mut(prefix, f),
    }
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    match self {
      Mlp::Dense(m) => m.visit_frozen(prefix, f),
      Mlp::Sparse(m) => m.visit_frozen(prefix, f),
    }
  }
  fn visit_quantizable_mut(
    &mut self,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    match self {
      Mlp::Dense(m) => m.visit_quantizable_mut(prefix, f),
      Mlp::Sparse(m) => m.visit_quantizable_mut(prefix, f),
    }
  }
}

impl Mlp {
  pub fn forward(&self, x: &Array) -> Result<Array> {
    match self {
      Mlp::Dense(m) => m.forward(x),
      Mlp::Sparse(m) => m.forward(x),
    }
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
          "qwen3_next layer without a mixer".into(),
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

/// mlx-lm qwen3_next.py's `sanitize` of an HF checkpoint (recognised by
/// per-expert tensors): drop `mtp.*`, stack the experts, conv weights to
/// MLX layout, and `+ 1` on the RMSNorm weights (HF stores them as offsets).
fn sanitize_with(
  mut weights: HashMap<String, Array>,
  num_experts: i32,
  tied: bool,
) -> Result<HashMap<String, Array>> {
  let mut moe_layers: Vec<String> = weights
    .keys()
    .filter(|k| k.starts_with("model.layers.") && k.ends_with(".mlp.experts.0.up_proj.weight"))
    .map(|k| k.trim_end_matches(".experts.0.up_proj.weight").to_string())
    .collect();
  if moe_layers.is_empty() {
    return Ok(weights);
  }
  moe_layers.sort();
  weights.retain(|k, _| !k.contains("mtp."));
  if tied {
    weights.remove("lm_head.weight");
  }
  super::base::stack_experts(
    &mut weights,
    &moe_layers,
    num_experts,
    &[
      ("up_proj", "up_proj"),
      ("down_proj", "down_proj"),
      ("gate_proj", "gate_proj"),
    ],
  )?;
  let norm_keys = [
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
  ];
  for (k, v) in weights.iter_mut() {
    if k.contains("conv1d.weight") && v.ndim() == 3 && v.dim(-1) != Some(1) {
      *v = ops::moveaxis(v, 2, 1)?;
    }
    if norm_keys.iter().any(|s| k.ends_with(s)) && v.ndim() == 1 {
      *v = (&*v + 1.0)?;
    }
  }
  Ok(weights)
}

/// The model with its config-dependent sanitize.
struct Qwen3Next {
  inner: HybridLm,
  num_experts: i32,
  tied: bool,
}

impl LanguageModel for Qwen3Next {
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
    let w = sanitize_with(weights, self.num_experts, self.tied)?;
    self.inner.sanitize(w)
  }
  fn vocab_size(&self) -> i32 {
    self.inner.vocab_size()
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(f)
  }
}

/// HF configs may list `layer_types`; mlx-lm places attention by
/// `full_attention_interval` only, so a list that disagrees with it is
/// refused by name.
pub(crate) fn check_layer_types(
  config: &Value,
  arch: &str,
  n_layers: i32,
  interval: i32,
) -> Result<()> {
  let want: Vec<Value> = (0..n_layers)
    .map(|i| {
      Value::from(if (i + 1) % interval != 0 {
        "linear_attention"
      } else {
        "full_attention"
      })
    })
    .collect();
  super::base::reject_unhandled(config, arch, "layer_types", |v| v.as_array() == Some(&want))
}

/// Registry entry for `qwen3_next`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: Qwen3NextArgs = parse_args(config)?;
  let h = a.hidden_size;
  super::base::check_heads(
    "qwen3_next",
    h,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.num_hidden_layers,
  )?;
  if a.full_attention_interval <= 0 || a.decoder_sparse_step <= 0 || a.head_dim <= 0 {
    return Err(Error::InvalidArgument(
      "config.json (qwen3_next): full_attention_interval, decoder_sparse_step and head_dim must be positive".into(),
    ));
  }
  if a.num_experts > 0 {
    super::base::check_moe("qwen3_next", a.num_experts, a.num_experts_per_tok)?;
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
  d.check("qwen3_next")?;
  check_layer_types(
    config,
    "qwen3_next",
    a.num_hidden_layers,
    a.full_attention_interval,
  )?;
  let rope_dims = (a.head_dim as f32 * a.partial_rotary_factor) as i32;
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let linear = (i + 1) % a.full_attention_interval != 0;
    let sparse =
      !a.mlp_only_layers.contains(&i) && a.num_experts > 0 && (i + 1) % a.decoder_sparse_step == 0;
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
          a.head_dim,
          a.attention_bias,
          eps,
          Rope::from_config(
            rope_dims,
            a.rope_theta,
            false,
            a.rope_scaling.as_ref(),
            Some(a.max_position_embeddings),
          )?,
        ))
      },
      mlp: if sparse {
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
      root: "model",
      embed: "embed_tokens",
      layers: "layers",
      norm: "norm",
      head: "lm_head",
    },
    a.vocab_size,
    None,
  );
  Ok(Box::new(Qwen3Next {
    inner,
    num_experts: a.num_experts,
    tied: a.tie_word_embeddings,
  }))
}
