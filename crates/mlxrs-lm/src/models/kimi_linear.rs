//! Kimi-Linear (Moonshot): mlx-lm's `models/kimi_linear.py` — a hybrid of
//! Kimi Delta Attention (KDA: q/k/v each through a short depthwise causal
//! conv, L2-normalised q/k, the gated delta rule with a per-channel decay
//! from a low-rank `f_a` / `f_b` projection, [`super::gated_delta`], an
//! RMSNorm gated by `sigmoid(g_b(g_a(x)))`) on the layers listed in
//! `linear_attn_config.kda_layers` and multi-head latent attention without
//! positional encoding (MLA: the latent cache holds `kv_a_layernorm`'d
//! latents and the `k_pe` part; `embed_q` / `unembed_out` absorb the
//! up-projections) on the others; MLPs are SwiGLU or a sigmoid/softmax-routed
//! MoE with a correction bias, grouped top-k and shared experts. Caches:
//! `ArraysCache(4)` (q/k/v conv states, delta state) for KDA layers,
//! `KVCache` for MLA layers.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::attention::causal_mask;
use mlxrs_nn::{
  AttnMask, Conv1d, Embedding, GluActivation, KvCache, Linear, MultiLinear, Param, RmsNorm,
  SwitchGlu, module, sdpa_with_cache, silu,
};
use serde::Deserialize;
use serde_json::Value;

use super::decoder::Names;
use super::gated_delta::{gated_delta_update, normalize_qk};
use super::hybrid::{HybridLayer, HybridLm};
use super::mlp::SwiGluMlp;
use super::moe::group_expert_select;
use super::ssm::slice_axis;
use crate::model::{LanguageModel, parse_args};

fn d_one() -> i32 {
  1
}
fn d_sigmoid() -> String {
  "sigmoid".into()
}
fn d_true() -> bool {
  true
}
fn d_one_f() -> f32 {
  1.0
}

/// `ModelArgs` of mlx-lm's kimi_linear.py.
#[derive(Debug, Clone, Deserialize)]
pub struct KimiLinearArgs {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `head_dim`
  pub head_dim: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `linear_attn_config` (`num_heads`, `head_dim`, `kda_layers`,
  /// `short_conv_kernel_size`)
  pub linear_attn_config: Value,
  /// `num_experts`
  pub num_experts: i32,
  /// `moe_intermediate_size`
  pub moe_intermediate_size: i32,
  /// `kv_lora_rank`
  pub kv_lora_rank: i32,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
  /// `qk_nope_head_dim` (default `head_dim`)
  #[serde(default)]
  pub qk_nope_head_dim: Option<i32>,
  /// `qk_rope_head_dim` (default 0; no RoPE is applied)
  #[serde(default)]
  pub qk_rope_head_dim: Option<i32>,
  /// `v_head_dim` (default `head_dim`)
  #[serde(default)]
  pub v_head_dim: Option<i32>,
  /// `num_experts_per_token`
  #[serde(default = "d_one")]
  pub num_experts_per_token: i32,
  /// `num_shared_experts`
  #[serde(default)]
  pub num_shared_experts: i32,
  /// `moe_router_activation_func` (`sigmoid` or `softmax`)
  #[serde(default = "d_sigmoid")]
  pub moe_router_activation_func: String,
  /// `moe_renormalize`
  #[serde(default = "d_true")]
  pub moe_renormalize: bool,
  /// `routed_scaling_factor`
  #[serde(default = "d_one_f")]
  pub routed_scaling_factor: f32,
  /// `first_k_dense_replace`
  #[serde(default)]
  pub first_k_dense_replace: i32,
  /// `moe_layer_freq`
  #[serde(default = "d_one")]
  pub moe_layer_freq: i32,
  /// `num_expert_group`
  #[serde(default = "d_one")]
  pub num_expert_group: i32,
  /// `topk_group`
  #[serde(default = "d_one")]
  pub topk_group: i32,
}

/// `mx.finfo(dtype).min`.
fn finfo_min(dt: Dtype) -> f64 {
  match dt {
    Dtype::Float16 => -65504.0,
    Dtype::Bfloat16 => -3.389_531_389_251_535_5e38,
    _ => f32::MIN as f64,
  }
}

/// `KimiMLAAttention`.
struct Mla {
  q_proj: Linear,
  kv_a_proj_with_mqa: Linear,
  kv_a_layernorm: RmsNorm,
  embed_q: MultiLinear,
  unembed_out: MultiLinear,
  o_proj: Linear,
  heads: i32,
  nope: i32,
  rope: i32,
  rank: i32,
  scale: f32,
}
module!(Mla {
  q_proj,
  kv_a_proj_with_mqa,
  kv_a_layernorm,
  embed_q,
  unembed_out,
  o_proj
});

impl Mla {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let q = self
      .q_proj
      .forward(x)?
      .reshape(&[b, l, self.heads, self.nope + self.rope])?
      .transpose_axes(&[0, 2, 1, 3])?;
    let qp = ops::split_sections(&q, &[self.nope], -1)?;
    let ckv = ops::split_sections(&self.kv_a_proj_with_mqa.forward(x)?, &[self.rank], -1)?;
    let k_pe = ckv[1]
      .reshape(&[b, l, 1, self.rope])?
      .transpose_axes(&[0, 2, 1, 3])?;
    let latent = self.kv_a_layernorm.forward(&ckv[0])?.expand_dims(1)?;
    let (latent, k_pe) = cache.update_and_fetch(&latent, &k_pe)?;
    let mut pe = (&qp[1] * self.scale)?.matmul(&k_pe.swapaxes(-1, -2)?)?;
    let m = match mask {
      AttnMask::None => None,
      AttnMask::Array(m) => Some(m.clone()),
      AttnMask::Causal => {
        let lk = k_pe.dim(2).unwrap_or(l);
        Some(causal_mask(l, lk - l, None)?)
      }
    };
    if let Some(m) = m {
      let min = Array::scalar_as(finfo_min(pe.dtype()), pe.dtype())?;
      pe = ops::where_(&m, &pe, &min)?;
    }
    let out = if l == 1 {
      let ql = self.embed_q.forward(&qp[0], true)?;
      let o = sdpa_with_cache(
        &ql,
        &latent,
        &latent,
        self.scale,
        &AttnMask::Array(pe),
        None,
      )?;
      self.unembed_out.forward(&o, true)?
    } else {
      let k = self.embed_q.forward(&latent, false)?;
      let v = self.unembed_out.forward(&latent, true)?;
      sdpa_with_cache(&qp[0], &k, &v, self.scale, &AttnMask::Array(pe), None)?
    };
    self
      .o_proj
      .forward(&out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, -1])?)
  }
}

/// `ShortConv1d`: a depthwise causal conv + SiLU with carried state.
struct ShortConv {
  conv: Conv1d,
}
module!(ShortConv { conv });

/// `KimiDeltaAttention`.
struct Kda {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  q_conv: ShortConv,
  k_conv: ShortConv,
  v_conv: ShortConv,
  f_a_proj: Linear,
  f_b_proj: Linear,
  b_proj: Linear,
  g_a_proj: Linear,
  g_b_proj: Linear,
  a_log: Param,
  dt_bias: Param,
  o_norm: RmsNorm,
  o_proj: Linear,
  heads: i32,
  head_dim: i32,
}
module!(Kda {
  q_proj,
  k_proj,
  v_proj,
  q_conv,
  k_conv,
  v_conv,
  f_a_proj,
  f_b_proj,
  b_proj,
  g_a_proj,
  g_b_proj,
  a_log => "A_log",
  dt_bias,
  o_norm,
  o_proj
});

impl Kda {
  fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
    let slots = cache.arrays_mut()?;
    let s = x.shape();
    let (b, t) = (s[0], s[1]);
    let (h, d) = (self.heads, self.head_dim);
    let conv = |c: &ShortConv, inp: Array, st: Option<&Array>| -> Result<(Array, Array)> {
      let k = c.conv.kernel_size;
      let st = match st {
        Some(st) => st.clone(),
        None => ops::zeros(&[b, k - 1, h * d], inp.dtype())?,
      };
      let full = ops::concatenate_axis(&[st, inp], 1)?;
      let n = full.dim(1).unwrap_or(0);
      let out = silu(&c.conv.forward(&full)?)?;
      Ok((out, slice_axis(&full, 1, n - (k - 1), n)?))
    };
    let (q, qs) = conv(&self.q_conv, self.q_proj.forward(x)?, slots.get(0))?;
    let (k, ks) = conv(&self.k_conv, self.k_proj.forward(x)?, slots.get(1))?;
    let (v, vs) = conv(&self.v_conv, self.v_proj.forward(x)?, slots.get(2))?;
    let q = q.reshape(&[b, t, h, d])?;
    let k = k.reshape(&[b, t, h, d])?;
    let v = v.reshape(&[b, t, h, d])?;
    let (q, k) = normalize_qk(&q, &k, (d as f32).powf(-0.5), 1e-6)?;
    let a = self
      .f_b_proj
      .forward(&self.f_a_proj.forward(x)?)?
      .reshape(&[b, t, h, d])?;
    let bl = self.b_proj.forward(x)?.reshape(&[b, t, h])?;
    let (out, state) = gated_delta_update(
      &q,
      &k,
      &v,
      &a,
      &bl,
      &self.a_log.value.reshape(&[h, 1])?,
      &self.dt_bias.value.reshape(&[h, d])?,
      slots.get(3).cloned(),
    )?;
    slots.set(0, qs)?;
    slots.set(1, ks)?;
    slots.set(2, vs)?;
    slots.set(3, state)?;
    let gate = self
      .g_b_proj
      .forward(&self.g_a_proj.forward(x)?)?
      .reshape(&[b, t, h, d])?;
    let out = (self.o_norm.forward(&out.reshape(&[b, t, h, d])?)? * &ops::sigmoid(&gate)?)?;
    self.o_proj.forward(&out.reshape(&[b, t, -1])?)
  }
}

/// `KimiSparseMoE`.
struct Moe {
  gate: Linear,
  switch_mlp: SwitchGlu,
  e_score_correction_bias: Param,
  shared_experts: Option<SwiGluMlp>,
  top_k: i32,
  n_group: i32,
  topk_group: i32,
  scaling: f32,
  renormalize: bool,
  softmax: bool,
}
module!(Moe {
  gate,
  switch_mlp,
  e_score_correction_bias,
  shared_experts
});

impl Moe {
  /// python `_group_expert_select` then the weighted expert sum.
  fn forward(&self, x: &Array) -> Result<Array> {
    let gates = self.gate.forward(x)?;
    let orig = if self.softmax {
      ops::softmax_axis(&gates, -1, true)?
    } else {
      ops::sigmoid(&gates)?
    };
    let (inds, w) = group_expert_select(
      &orig,
      Some(&self.e_score_correction_bias.value),
      self.top_k,
      self.n_group,
      self.topk_group,
      self.renormalize.then_some(1e-20),
      self.scaling,
    )?;
    let y = self.switch_mlp.forward(x, &inds)?;
    let y = ops::sum_axis(&(&y * &w.expand_dims(-1)?)?, -2, false)?;
    match &self.shared_experts {
      Some(s) => &y + &s.forward(x)?,
      None => Ok(y),
    }
  }
}

enum Ffn {
  Dense(Box<SwiGluMlp>),
  Sparse(Box<Moe>),
}

impl mlxrs_nn::Module for Ffn {
  fn load(&mut self, w: &mut mlxrs_nn::Weights, p: &str) {
    match self {
      Ffn::Dense(m) => m.load(w, p),
      Ffn::Sparse(m) => m.load(w, p),
    }
  }
  fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Ffn::Dense(m) => m.visit(p, f),
      Ffn::Sparse(m) => m.visit(p, f),
    }
  }
  fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    match self {
      Ffn::Dense(m) => m.visit_mut(p, f),
      Ffn::Sparse(m) => m.visit_mut(p, f),
    }
  }
  fn visit_frozen(&self, p: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    match self {
      Ffn::Dense(m) => m.visit_frozen(p, f),
      Ffn::Sparse(m) => m.visit_frozen(p, f),
    }
  }
  fn visit_quantizable_mut(
    &mut self,
    p: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    match self {
      Ffn::Dense(m) => m.visit_quantizable_mut(p, f),
      Ffn::Sparse(m) => m.visit_quantizable_mut(p, f),
    }
  }
}

enum Mixer {
  Kda(Box<Kda>),
  Mla(Box<Mla>),
}

impl mlxrs_nn::Module for Mixer {
  fn load(&mut self, w: &mut mlxrs_nn::Weights, p: &str) {
    match self {
      Mixer::Kda(m) => m.load(w, p),
      Mixer::Mla(m) => m.load(w, p),
    }
  }
  fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Mixer::Kda(m) => m.visit(p, f),
      Mixer::Mla(m) => m.visit(p, f),
    }
  }
  fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    match self {
      Mixer::Kda(m) => m.visit_mut(p, f),
      Mixer::Mla(m) => m.visit_mut(p, f),
    }
  }
  fn visit_frozen(&self, p: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    match self {
      Mixer::Kda(m) => m.visit_frozen(p, f),
      Mixer::Mla(m) => m.visit_frozen(p, f),
    }
  }
  fn visit_quantizable_mut(
    &mut self,
    p: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    match self {
      Mixer::Kda(m) => m.visit_quantizable_mut(p, f),
      Mixer::Mla(m) => m.visit_quantizable_mut(p, f),
    }
  }
}

struct Layer {
  self_attn: Mixer,
  mlp: Ffn,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Layer {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl HybridLayer for Layer {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let n = self.input_layernorm.forward(x)?;
    let y = match &self.self_attn {
      Mixer::Kda(k) => {
        let y = k.forward(&n, cache)?;
        cache.offset += x.dim(1).unwrap_or(0);
        y
      }
      Mixer::Mla(m) => m.forward(&n, mask, cache)?,
    };
    let h = (x + &y)?;
    let z = self.post_attention_layernorm.forward(&h)?;
    let z = match &self.mlp {
      Ffn::Dense(m) => m.forward(&z)?,
      Ffn::Sparse(m) => m.forward(&z)?,
    };
    &h + &z
  }
  fn new_cache(&self) -> Option<KvCache> {
    Some(match self.self_attn {
      Mixer::Kda(_) => KvCache::arrays(4),
      Mixer::Mla(_) => KvCache::standard(),
    })
  }
  fn is_attention(&self) -> bool {
    matches!(self.self_attn, Mixer::Mla(_))
  }
}

/// mlx-lm kimi_linear.py's `sanitize` (unquantized HF layout): drop
/// `model.mtp*`; per-expert `block_sparse_moe.experts.{e}.w1/w2/w3` stacked
/// into `mlp.switch_mlp`, the gate / bias / shared experts moved under
/// `mlp`; `q/k/v_conv1d` to `q/k/v_conv.conv` in MLX layout; `dt_bias`
/// flattened; `kv_b_proj` split into `embed_q` / `unembed_out`.
fn sanitize_with(
  weights: HashMap<String, Array>,
  a: &KimiLinearArgs,
  sparse: &[bool],
  linear: &[bool],
) -> Result<HashMap<String, Array>> {
  let mut w: HashMap<String, Array> = weights
    .into_iter()
    .filter(|(k, _)| !k.starts_with("model.mtp"))
    .collect();
  for l in 0..a.num_hidden_layers as usize {
    let p = format!("model.layers.{l}");
    if sparse[l] {
      let (src, dst) = (format!("{p}.block_sparse_moe"), format!("{p}.mlp"));
      for (s, d) in [("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")] {
        if w.contains_key(&format!("{src}.experts.0.{s}.weight")) {
          let mut parts = Vec::new();
          for e in 0..a.num_experts {
            let k = format!("{src}.experts.{e}.{s}.weight");
            parts.push(w.remove(&k).ok_or_else(|| {
              Error::InvalidArgument(format!("sanitize: missing expert tensor {k}"))
            })?);
          }
          w.insert(format!("{dst}.switch_mlp.{d}.weight"), ops::stack(&parts)?);
        }
      }
      for name in ["gate_proj", "up_proj", "down_proj"] {
        if let Some(t) = w.remove(&format!("{src}.shared_experts.{name}.weight")) {
          w.insert(format!("{dst}.shared_experts.{name}.weight"), t);
        }
      }
      if let Some(t) = w.remove(&format!("{src}.gate.weight")) {
        w.insert(format!("{dst}.gate.weight"), t);
      }
      if let Some(t) = w.remove(&format!("{src}.gate.e_score_correction_bias")) {
        w.insert(format!("{dst}.e_score_correction_bias"), t);
      }
    }
    let ap = format!("{p}.self_attn");
    if linear[l] {
      for (s, d) in [
        ("q_conv1d", "q_conv"),
        ("k_conv1d", "k_conv"),
        ("v_conv1d", "v_conv"),
      ] {
        if let Some(t) = w.remove(&format!("{ap}.{s}.weight")) {
          let t = if t.ndim() == 3 {
            ops::moveaxis(&t, 2, 1)?
          } else {
            t
          };
          w.insert(format!("{ap}.{d}.conv.weight"), t);
        }
      }
      if let Some(t) = w.get_mut(&format!("{ap}.dt_bias")) {
        if t.ndim() > 1 {
          *t = t.reshape(&[-1])?;
        }
      }
    }
    if let Some(v) = w.remove(&format!("{ap}.kv_b_proj.weight")) {
      if w.contains_key(&format!("{ap}.kv_b_proj.scales")) {
        return Err(Error::InvalidArgument(
          "kimi_linear: a quantized kv_b_proj is not supported; convert from the unquantized checkpoint".into(),
        ));
      }
      let nope = a.qk_nope_head_dim.unwrap_or(a.head_dim);
      let vh = a.v_head_dim.unwrap_or(a.head_dim);
      let v = v.reshape(&[a.num_attention_heads, nope + vh, -1])?;
      let wk = slice_axis(&v, 1, 0, nope)?.swapaxes(-1, -2)?;
      let wv = slice_axis(&v, 1, nope, nope + vh)?;
      w.insert(format!("{ap}.embed_q.weight"), ops::contiguous(&wk, false)?);
      w.insert(
        format!("{ap}.unembed_out.weight"),
        ops::contiguous(&wv, false)?,
      );
    }
  }
  Ok(w)
}

struct KimiLinear {
  inner: HybridLm,
  args: KimiLinearArgs,
  sparse: Vec<bool>,
  linear: Vec<bool>,
}

impl LanguageModel for KimiLinear {
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
    let w = sanitize_with(weights, &self.args, &self.sparse, &self.linear)?;
    self.inner.sanitize(w)
  }
  fn vocab_size(&self) -> i32 {
    self.inner.vocab_size()
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(f)
  }
}

/// Registry entry for `kimi_linear`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let arch = "kimi_linear";
  let a: KimiLinearArgs = parse_args(config)?;
  let bad = |m: String| Error::InvalidArgument(format!("config.json ({arch}): {m}"));
  let h = a.hidden_size;
  super::base::check_heads(
    arch,
    h,
    a.num_attention_heads,
    a.num_key_value_heads,
    a.num_hidden_layers,
  )?;
  let lc = &a.linear_attn_config;
  let geti = |k: &str| lc.get(k).and_then(Value::as_i64).map(|v| v as i32);
  let (kh, kd) = (
    geti("num_heads").ok_or_else(|| bad("linear_attn_config.num_heads is missing".into()))?,
    geti("head_dim").ok_or_else(|| bad("linear_attn_config.head_dim is missing".into()))?,
  );
  let kernel = geti("short_conv_kernel_size").unwrap_or(4);
  let kda: Vec<i32> = lc
    .get("kda_layers")
    .and_then(Value::as_array)
    .ok_or_else(|| bad("linear_attn_config.kda_layers is missing".into()))?
    .iter()
    .map(|v| v.as_i64().map(|x| x as i32))
    .collect::<Option<Vec<_>>>()
    .ok_or_else(|| bad("linear_attn_config.kda_layers must be integers".into()))?;
  if kh <= 0 || kd <= 0 || kernel <= 0 || a.kv_lora_rank <= 0 || a.moe_layer_freq <= 0 {
    return Err(bad(
      "linear_attn_config num_heads / head_dim / short_conv_kernel_size, kv_lora_rank and \
       moe_layer_freq must be positive"
        .into(),
    ));
  }
  if !matches!(a.moe_router_activation_func.as_str(), "sigmoid" | "softmax") {
    return Err(bad(format!(
      "moe_router_activation_func {:?} is not supported (sigmoid, softmax)",
      a.moe_router_activation_func
    )));
  }
  if a.num_experts > 0 {
    super::base::check_moe(arch, a.num_experts, a.num_experts_per_token)?;
  }
  let nope = a.qk_nope_head_dim.unwrap_or(a.head_dim);
  let rope = a.qk_rope_head_dim.unwrap_or(0);
  let vh = a.v_head_dim.unwrap_or(a.head_dim);
  let nh = a.num_attention_heads;
  let eps = a.rms_norm_eps;
  let (mut sparse, mut linear) = (Vec::new(), Vec::new());
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let is_linear = kda.contains(&(i + 1));
    let is_sparse = a.num_experts > 0 && i >= a.first_k_dense_replace && i % a.moe_layer_freq == 0;
    sparse.push(is_sparse);
    linear.push(is_linear);
    let pd = kh * kd;
    let self_attn = if is_linear {
      Mixer::Kda(Box::new(Kda {
        q_proj: Linear::new(h, pd, false),
        k_proj: Linear::new(h, pd, false),
        v_proj: Linear::new(h, pd, false),
        q_conv: ShortConv {
          conv: Conv1d::new(pd, pd, kernel, 1, 0, 1, pd, false)?,
        },
        k_conv: ShortConv {
          conv: Conv1d::new(pd, pd, kernel, 1, 0, 1, pd, false)?,
        },
        v_conv: ShortConv {
          conv: Conv1d::new(pd, pd, kernel, 1, 0, 1, pd, false)?,
        },
        f_a_proj: Linear::new(h, kd, false),
        f_b_proj: Linear::new(kd, pd, false),
        b_proj: Linear::new(h, kh, false),
        g_a_proj: Linear::new(h, kd, false),
        g_b_proj: Linear::new(kd, pd, false),
        // python `cast_predicate`: A_log and dt_bias keep their dtype.
        a_log: Param::new_uncast(&[1, 1, kh, 1]),
        dt_bias: Param::new_uncast(&[pd]),
        o_norm: RmsNorm::new(kd, eps),
        o_proj: Linear::new(pd, h, false),
        heads: kh,
        head_dim: kd,
      }))
    } else {
      Mixer::Mla(Box::new(Mla {
        q_proj: Linear::new(h, nh * (nope + rope), false),
        kv_a_proj_with_mqa: Linear::new(h, a.kv_lora_rank + rope, false),
        kv_a_layernorm: RmsNorm::new(a.kv_lora_rank, eps),
        embed_q: MultiLinear::new(nope, a.kv_lora_rank, nh),
        unembed_out: MultiLinear::new(a.kv_lora_rank, vh, nh),
        o_proj: Linear::new(nh * vh, h, false),
        heads: nh,
        nope,
        rope,
        rank: a.kv_lora_rank,
        scale: ((nope + rope) as f32).powf(-0.5),
      }))
    };
    let mlp = if is_sparse {
      Ffn::Sparse(Box::new(Moe {
        gate: Linear::new(h, a.num_experts, false),
        switch_mlp: SwitchGlu::new(
          h,
          a.moe_intermediate_size,
          a.num_experts,
          GluActivation::SwiGlu,
          false,
        ),
        e_score_correction_bias: Param::new_uncast(&[a.num_experts]),
        shared_experts: (a.num_shared_experts > 0)
          .then(|| SwiGluMlp::new(h, a.moe_intermediate_size * a.num_shared_experts, false)),
        top_k: a.num_experts_per_token,
        n_group: a.num_expert_group,
        topk_group: a.topk_group,
        scaling: a.routed_scaling_factor,
        renormalize: a.moe_renormalize,
        softmax: a.moe_router_activation_func == "softmax",
      }))
    } else {
      Ffn::Dense(Box::new(SwiGluMlp::new(h, a.intermediate_size, false)))
    };
    layers.push(Box::new(Layer {
      self_attn,
      mlp,
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
    }));
  }
  if !linear.iter().any(|&l| !l) || !linear.iter().any(|&l| l) {
    return Err(bad(
      "kda_layers must leave at least one attention layer and name at least one KDA layer".into(),
    ));
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
  Ok(Box::new(KimiLinear {
    inner,
    args: a,
    sparse,
    linear,
  }))
}
