//! Gemma 4 (text): mlx-lm's `models/gemma4_text.py`.
//!
//! `layer_types` mix sliding-window layers (`head_dim`, RoPE from
//! `rope_parameters.sliding_attention`, rotating caches of
//! `sliding_window`) and full layers (`global_head_dim`, usually a
//! `proportional` RoPE over part of the head; with `attention_k_eq_v` the
//! values are the keys' projection and `num_global_key_value_heads` kv
//! heads). Queries and keys are RMS-normalized per head, values by a
//! weightless RMSNorm; the attention scale is 1. The last
//! `num_kv_shared_layers` layers compute no keys/values: each reuses those
//! (and the position offset) of the last earlier layer of its type and
//! has no cache; their MLPs are twice as wide (`use_double_wide_mlp`).
//! Blocks: four norms around attention and a GeGLU MLP, optionally plus a
//! top-k MoE (`enable_moe_block`: a router with its own RMSNorm scale and
//! per-expert scales, GeGLU experts), optionally per-layer inputs
//! (`hidden_size_per_layer_input`: a per-layer token embedding plus a
//! projection of the embeddings, gating a residual branch), and a
//! `layer_scalar`. Embeddings times `sqrt(hidden_size)`, logits
//! soft-capped by `final_logit_softcapping`.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, KvCacheKind, Linear, Module, Param, RmsNorm, Rope,
  SwitchGlu, Weights, gelu_approx, module, sdpa_with_cache,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::base::{check_caches, check_heads, check_moe, last_axis};
use crate::model::{LanguageModel, parse_args};

fn d_hidden() -> i32 {
  1536
}
fn d_layers() -> i32 {
  35
}
fn d_inter() -> i32 {
  6144
}
fn d_heads() -> i32 {
  8
}
fn d_head_dim() -> i32 {
  256
}
fn d_global_head_dim() -> Option<i32> {
  Some(512)
}
fn d_eps() -> f32 {
  1e-6
}
fn d_vocab() -> i32 {
  262144
}
fn d_one() -> i32 {
  1
}
fn d_shared() -> i32 {
  20
}
fn d_pli() -> i32 {
  256
}
fn d_window() -> i32 {
  512
}
fn d_pattern() -> i32 {
  5
}
fn d_max_pos() -> i32 {
  131072
}
fn d_softcap() -> Option<f32> {
  Some(30.0)
}
fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's gemma4_text.py (same defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma4TextArgs {
  /// `hidden_size`
  #[serde(default = "d_hidden")]
  pub hidden_size: i32,
  /// `num_hidden_layers`
  #[serde(default = "d_layers")]
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  #[serde(default = "d_inter")]
  pub intermediate_size: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `head_dim` (sliding layers)
  #[serde(default = "d_head_dim")]
  pub head_dim: i32,
  /// `global_head_dim` (full layers; null/0: `head_dim`)
  #[serde(default = "d_global_head_dim")]
  pub global_head_dim: Option<i32>,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `vocab_size_per_layer_input`
  #[serde(default = "d_vocab")]
  pub vocab_size_per_layer_input: i32,
  /// `num_key_value_heads`
  #[serde(default = "d_one")]
  pub num_key_value_heads: i32,
  /// `num_global_key_value_heads` (full layers with `attention_k_eq_v`)
  pub num_global_key_value_heads: Option<i32>,
  /// `num_kv_shared_layers`
  #[serde(default = "d_shared")]
  pub num_kv_shared_layers: i32,
  /// `hidden_size_per_layer_input` (0: no per-layer inputs)
  #[serde(default = "d_pli")]
  pub hidden_size_per_layer_input: i32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_parameters` (per layer type; mlx-lm's default when null)
  pub rope_parameters: Option<Value>,
  /// `sliding_window`
  #[serde(default = "d_window")]
  pub sliding_window: i32,
  /// `sliding_window_pattern` (for the default `layer_types`)
  #[serde(default = "d_pattern")]
  pub sliding_window_pattern: i32,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
  /// `attention_k_eq_v`
  #[serde(default)]
  pub attention_k_eq_v: bool,
  /// `final_logit_softcapping`
  #[serde(default = "d_softcap")]
  pub final_logit_softcapping: Option<f32>,
  /// `use_double_wide_mlp`
  #[serde(default = "d_true")]
  pub use_double_wide_mlp: bool,
  /// `enable_moe_block`
  #[serde(default)]
  pub enable_moe_block: bool,
  /// `num_experts`
  pub num_experts: Option<i32>,
  /// `top_k_experts`
  pub top_k_experts: Option<i32>,
  /// `moe_intermediate_size`
  pub moe_intermediate_size: Option<i32>,
  /// `layer_types`
  pub layer_types: Option<Vec<String>>,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (gemma4_text): {msg}"))
}

/// Keys/values (full history, `[B, kv, T, d]`) and the position offset a
/// layer attended with, for the KV-shared layers after it.
type SharedKv = (Array, Array, i32);

/// `Attention` of gemma4_text.py.
struct G4Attention {
  q_proj: Linear,
  k_proj: Option<Linear>,
  v_proj: Option<Linear>,
  o_proj: Linear,
  q_norm: RmsNorm,
  k_norm: Option<RmsNorm>,
  n_heads: i32,
  n_kv_heads: i32,
  head_dim: i32,
  eps: f32,
  rope: Rope,
}
module!(G4Attention {
  q_proj,
  k_proj,
  v_proj,
  o_proj,
  q_norm,
  k_norm
});

impl G4Attention {
  fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: Option<&mut KvCache>,
    shared: Option<&SharedKv>,
  ) -> Result<(Array, SharedKv)> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let q = ops::reshape(
      &self.q_proj.forward(x)?,
      &[b, l, self.n_heads, self.head_dim],
    )?;
    let q = ops::transpose_axes(&self.q_norm.forward(&q)?, &[0, 2, 1, 3])?;
    let (keys, values, offset) = match (shared, &self.k_proj, &self.k_norm, cache) {
      (Some((k, v, off)), ..) => (k.clone(), v.clone(), *off),
      (None, Some(kp), Some(kn), Some(cache)) => {
        let shape = [b, l, self.n_kv_heads, self.head_dim];
        let k = ops::reshape(&kp.forward(x)?, &shape)?;
        let v = match &self.v_proj {
          Some(vp) => ops::reshape(&vp.forward(x)?, &shape)?,
          None => k.clone(),
        };
        let offset = cache.offset;
        let k = ops::transpose_axes(&kn.forward(&k)?, &[0, 2, 1, 3])?;
        let k = self.rope.forward(&k, offset)?;
        let v = ops::transpose_axes(
          &mlxrs_core::fast::rms_norm(&v, None, self.eps)?,
          &[0, 2, 1, 3],
        )?;
        let (k, v) = cache.update_and_fetch(&k, &v)?;
        (k, v, offset)
      }
      _ => {
        return Err(Error::InvalidArgument(
          "gemma4_text: a KV-shared layer without keys/values to share".into(),
        ));
      }
    };
    let q = self.rope.forward(&q, offset)?;
    let o = sdpa_with_cache(&q, &keys, &values, 1.0, mask, None)?;
    let o = self.o_proj.forward(&ops::reshape(
      &ops::transpose_axes(&o, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)?;
    Ok((o, (keys, values, offset)))
  }
}

/// The GeGLU `MLP`.
struct Mlp {
  gate_proj: Linear,
  down_proj: Linear,
  up_proj: Linear,
}
module!(Mlp {
  gate_proj,
  down_proj,
  up_proj
});

impl Mlp {
  fn new(h: i32, inter: i32) -> Mlp {
    Mlp {
      gate_proj: Linear::new(h, inter, false),
      down_proj: Linear::new(inter, h, false),
      up_proj: Linear::new(h, inter, false),
    }
  }
  fn forward(&self, x: &Array) -> Result<Array> {
    self.down_proj.forward(&ops::multiply(
      &gelu_approx(&self.gate_proj.forward(x)?)?,
      &self.up_proj.forward(x)?,
    )?)
  }
}

/// `Router`: RMSNorm (weight `scale * hidden^-0.5`) -> `proj` -> top-k ->
/// softmax over the k -> times `per_expert_scale`.
struct Router {
  proj: Linear,
  scale: Param,
  per_expert_scale: Param,
  eps: f32,
  root_size: f32,
  top_k: i32,
}
module!(Router {
  proj,
  scale,
  per_expert_scale
});

impl Router {
  fn forward(&self, x: &Array) -> Result<(Array, Array)> {
    let w = ops::multiply(
      &self.scale.value,
      &Array::scalar_as(self.root_size as f64, self.scale.value.dtype())?,
    )?;
    let x = mlxrs_core::fast::rms_norm(x, Some(&w), self.eps)?;
    let scores = self.proj.forward(&x)?;
    let e = scores.dim(-1).unwrap_or(0);
    let k = self.top_k;
    let inds = ops::stop_gradient(&last_axis(
      &ops::argpartition_axis(&scores, e - k, -1)?,
      e - k,
      e,
    )?)?;
    let w = ops::softmax_axis(&ops::take_along_axis(&scores, &inds, -1)?, -1, false)?;
    let w = ops::multiply(&w, &ops::take(&self.per_expert_scale.value, &inds)?)?;
    Ok((inds, w))
  }
}

/// `Experts`.
struct Experts {
  switch_glu: SwitchGlu,
}
module!(Experts { switch_glu });

/// The MoE parts of a `DecoderLayer` (`enable_moe_block`).
struct MoeParts {
  router: Router,
  experts: Experts,
  post_feedforward_layernorm_1: RmsNorm,
  post_feedforward_layernorm_2: RmsNorm,
  pre_feedforward_layernorm_2: RmsNorm,
}
module!(MoeParts {
  router,
  experts,
  post_feedforward_layernorm_1,
  post_feedforward_layernorm_2,
  pre_feedforward_layernorm_2
});

/// The per-layer-input gate of a `DecoderLayer`.
struct PerLayer {
  per_layer_input_gate: Linear,
  per_layer_projection: Linear,
  post_per_layer_input_norm: RmsNorm,
}
module!(PerLayer {
  per_layer_input_gate,
  per_layer_projection,
  post_per_layer_input_norm
});

/// `DecoderLayer`.
struct Block {
  self_attn: G4Attention,
  mlp: Mlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  pre_feedforward_layernorm: RmsNorm,
  post_feedforward_layernorm: RmsNorm,
  moe: Option<MoeParts>,
  per_layer: Option<PerLayer>,
  layer_scalar: Param,
  sliding: bool,
}

impl Module for Block {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.self_attn.load(w, &j("self_attn"));
    self.mlp.load(w, &j("mlp"));
    self.input_layernorm.load(w, &j("input_layernorm"));
    self
      .post_attention_layernorm
      .load(w, &j("post_attention_layernorm"));
    self
      .pre_feedforward_layernorm
      .load(w, &j("pre_feedforward_layernorm"));
    self
      .post_feedforward_layernorm
      .load(w, &j("post_feedforward_layernorm"));
    // The MoE and per-layer parts sit directly under the layer.
    self.moe.load(w, prefix);
    self.per_layer.load(w, prefix);
    self.layer_scalar.load(w, &j("layer_scalar"));
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.self_attn.visit(&j("self_attn"), f);
    self.mlp.visit(&j("mlp"), f);
    self.input_layernorm.visit(&j("input_layernorm"), f);
    self
      .post_attention_layernorm
      .visit(&j("post_attention_layernorm"), f);
    self
      .pre_feedforward_layernorm
      .visit(&j("pre_feedforward_layernorm"), f);
    self
      .post_feedforward_layernorm
      .visit(&j("post_feedforward_layernorm"), f);
    self.moe.visit(prefix, f);
    self.per_layer.visit(prefix, f);
    self.layer_scalar.visit(&j("layer_scalar"), f);
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.self_attn.visit_mut(&j("self_attn"), f);
    self.mlp.visit_mut(&j("mlp"), f);
    self.input_layernorm.visit_mut(&j("input_layernorm"), f);
    self
      .post_attention_layernorm
      .visit_mut(&j("post_attention_layernorm"), f);
    self
      .pre_feedforward_layernorm
      .visit_mut(&j("pre_feedforward_layernorm"), f);
    self
      .post_feedforward_layernorm
      .visit_mut(&j("post_feedforward_layernorm"), f);
    self.moe.visit_mut(prefix, f);
    self.per_layer.visit_mut(prefix, f);
    self.layer_scalar.visit_mut(&j("layer_scalar"), f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.self_attn.visit_frozen(&j("self_attn"), f);
    self.mlp.visit_frozen(&j("mlp"), f);
    self.input_layernorm.visit_frozen(&j("input_layernorm"), f);
    self
      .post_attention_layernorm
      .visit_frozen(&j("post_attention_layernorm"), f);
    self
      .pre_feedforward_layernorm
      .visit_frozen(&j("pre_feedforward_layernorm"), f);
    self
      .post_feedforward_layernorm
      .visit_frozen(&j("post_feedforward_layernorm"), f);
    self.moe.visit_frozen(prefix, f);
    self.per_layer.visit_frozen(prefix, f);
    self.layer_scalar.visit_frozen(&j("layer_scalar"), f);
  }
  fn visit_quantizable_mut(
    &mut self,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.self_attn.visit_quantizable_mut(&j("self_attn"), f);
    self.mlp.visit_quantizable_mut(&j("mlp"), f);
    self.moe.visit_quantizable_mut(prefix, f);
    self.per_layer.visit_quantizable_mut(prefix, f);
  }
}

impl Block {
  fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: Option<&mut KvCache>,
    shared: Option<&SharedKv>,
    per_layer_input: Option<&Array>,
  ) -> Result<(Array, SharedKv)> {
    let (a, kv) = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache, shared)?;
    let h = ops::add(x, &self.post_attention_layernorm.forward(&a)?)?;
    let f = match &self.moe {
      Some(m) => {
        let h1 = m.post_feedforward_layernorm_1.forward(
          &self
            .mlp
            .forward(&self.pre_feedforward_layernorm.forward(&h)?)?,
        )?;
        let (inds, w) = m.router.forward(&h)?;
        let y = m
          .experts
          .switch_glu
          .forward(&m.pre_feedforward_layernorm_2.forward(&h)?, &inds)?;
        let y = ops::sum_axis(&ops::multiply(&ops::expand_dims(&w, -1)?, &y)?, -2, false)?;
        ops::add(&h1, &m.post_feedforward_layernorm_2.forward(&y)?)?
      }
      None => self
        .mlp
        .forward(&self.pre_feedforward_layernorm.forward(&h)?)?,
    };
    let mut h = ops::add(&h, &self.post_feedforward_layernorm.forward(&f)?)?;
    if let (Some(p), Some(pli)) = (&self.per_layer, per_layer_input) {
      let g = gelu_approx(&p.per_layer_input_gate.forward(&h)?)?;
      let g = p.per_layer_projection.forward(&ops::multiply(&g, pli)?)?;
      h = ops::add(&h, &p.post_per_layer_input_norm.forward(&g)?)?;
    }
    Ok((ops::multiply(&h, &self.layer_scalar.value)?, kv))
  }
}

/// The per-layer-input parts of `Gemma4TextModel`.
struct PerLayerInputs {
  embed_tokens_per_layer: Embedding,
  per_layer_model_projection: Linear,
  per_layer_projection_norm: RmsNorm,
}
module!(PerLayerInputs {
  embed_tokens_per_layer,
  per_layer_model_projection,
  per_layer_projection_norm
});

/// `Gemma4TextModel`.
struct Inner {
  embed_tokens: Embedding,
  layers: Vec<Block>,
  norm: RmsNorm,
  per_layer: Option<PerLayerInputs>,
}

impl Module for Inner {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.embed_tokens.load(w, &j("embed_tokens"));
    self.layers.load(w, &j("layers"));
    self.norm.load(w, &j("norm"));
    self.per_layer.load(w, prefix);
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.embed_tokens.visit(&j("embed_tokens"), f);
    self.layers.visit(&j("layers"), f);
    self.norm.visit(&j("norm"), f);
    self.per_layer.visit(prefix, f);
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.embed_tokens.visit_mut(&j("embed_tokens"), f);
    self.layers.visit_mut(&j("layers"), f);
    self.norm.visit_mut(&j("norm"), f);
    self.per_layer.visit_mut(prefix, f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self.embed_tokens.visit_frozen(&j("embed_tokens"), f);
    self.layers.visit_frozen(&j("layers"), f);
    self.norm.visit_frozen(&j("norm"), f);
    self.per_layer.visit_frozen(prefix, f);
  }
  fn visit_quantizable_mut(
    &mut self,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut dyn mlxrs_nn::Quantizable),
  ) {
    let j = |n: &str| mlxrs_nn::join(prefix, n);
    self
      .embed_tokens
      .visit_quantizable_mut(&j("embed_tokens"), f);
    self.layers.visit_quantizable_mut(&j("layers"), f);
    self.per_layer.visit_quantizable_mut(prefix, f);
  }
}

/// mlx-lm `gemma4_text.Model`.
pub struct Gemma4Text {
  args: Gemma4TextArgs,
  model: Inner,
  lm_head: Option<Linear>,
  /// Per layer: the layer whose keys/values it uses (itself unless shared).
  previous_kvs: Vec<usize>,
  /// Layers with their own keys/values (and caches): `0..first_kv_shared`.
  first_kv_shared: usize,
}
module!(Gemma4Text { model, lm_head });

impl Gemma4Text {
  /// Build from parsed args.
  pub fn new(mut a: Gemma4TextArgs) -> Result<Gemma4Text> {
    let (h, nh, n) = (a.hidden_size, a.num_attention_heads, a.num_hidden_layers);
    check_heads("gemma4_text", h, nh, a.num_key_value_heads, n)?;
    if a.head_dim <= 0 || a.sliding_window <= 0 || a.sliding_window_pattern <= 0 {
      return Err(bad(
        "head_dim, sliding_window and sliding_window_pattern must be positive".into(),
      ));
    }
    if a.num_kv_shared_layers < 0 || a.num_kv_shared_layers > n {
      return Err(bad(format!(
        "num_kv_shared_layers ({}) must be in 0..={n}",
        a.num_kv_shared_layers
      )));
    }
    let rope_parameters = a.rope_parameters.clone().unwrap_or_else(|| {
      json!({
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                           "rope_type": "proportional"},
        "sliding_attention": {"partial_rotary_factor": 1.0, "rope_theta": 10000.0,
                              "rope_type": "default"},
      })
    });
    let types = a.layer_types.clone().unwrap_or_else(|| {
      let p = a.sliding_window_pattern as usize;
      (0..n as usize)
        .map(|i| {
          if i % p == p - 1 {
            "full_attention"
          } else {
            "sliding_attention"
          }
          .to_string()
        })
        .collect()
    });
    if types.len() != n as usize {
      return Err(bad(format!(
        "field \"layer_types\" has {} entries for {n} layers",
        types.len()
      )));
    }
    let first_kv_shared = (n - a.num_kv_shared_layers) as usize;
    let eps = a.rms_norm_eps;
    let mut layers = Vec::with_capacity(n as usize);
    let mut last_of_type: HashMap<String, usize> = HashMap::new();
    let mut previous_kvs = Vec::with_capacity(n as usize);
    for (i, t) in types.iter().enumerate() {
      let sliding = match t.as_str() {
        "sliding_attention" => true,
        "full_attention" => false,
        other => {
          return Err(bad(format!(
            "field \"layer_types\" has {other:?}; supported: sliding_attention, full_attention"
          )));
        }
      };
      let has_kv = i < first_kv_shared;
      if has_kv {
        last_of_type.insert(t.clone(), i);
        previous_kvs.push(i);
      } else {
        previous_kvs.push(*last_of_type.get(t).ok_or_else(|| {
          bad(format!(
            "KV-shared layer {i} ({t}) has no earlier {t} layer to share with"
          ))
        })?);
      }
      let hd = match a.global_head_dim {
        Some(g) if !sliding && g > 0 => g,
        _ => a.head_dim,
      };
      let k_eq_v = a.attention_k_eq_v && !sliding;
      let nkv = match a.num_global_key_value_heads {
        Some(g) if k_eq_v => g,
        _ => a.num_key_value_heads,
      };
      check_heads("gemma4_text", h, nh, nkv, n)?;
      let rp = rope_parameters
        .get(t.as_str())
        .cloned()
        .unwrap_or(json!({}));
      let theta = rp
        .get("rope_theta")
        .and_then(Value::as_f64)
        .unwrap_or(10000.0) as f32;
      let rope = Rope::from_config(
        hd,
        theta,
        a.rope_traditional,
        Some(&rp),
        Some(a.max_position_embeddings),
      )?;
      let self_attn = G4Attention {
        q_proj: Linear::new(h, nh * hd, false),
        k_proj: has_kv.then(|| Linear::new(h, nkv * hd, false)),
        v_proj: (has_kv && !k_eq_v).then(|| Linear::new(h, nkv * hd, false)),
        o_proj: Linear::new(nh * hd, h, false),
        q_norm: RmsNorm::new(hd, eps),
        k_norm: has_kv.then(|| RmsNorm::new(hd, eps)),
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        eps,
        rope,
      };
      let double = a.use_double_wide_mlp && first_kv_shared > 0 && i >= first_kv_shared;
      let moe = if a.enable_moe_block {
        let (Some(e), Some(k), Some(mi)) =
          (a.num_experts, a.top_k_experts, a.moe_intermediate_size)
        else {
          return Err(bad(
            "enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size".into(),
          ));
        };
        check_moe("gemma4_text", e, k)?;
        Some(MoeParts {
          router: Router {
            proj: Linear::new(h, e, false),
            scale: Param::new(&[h]),
            per_expert_scale: Param::new(&[e]),
            eps,
            root_size: (h as f32).powf(-0.5),
            top_k: k,
          },
          experts: Experts {
            switch_glu: SwitchGlu::new(h, mi, e, GluActivation::GeGlu, false),
          },
          post_feedforward_layernorm_1: RmsNorm::new(h, eps),
          post_feedforward_layernorm_2: RmsNorm::new(h, eps),
          pre_feedforward_layernorm_2: RmsNorm::new(h, eps),
        })
      } else {
        None
      };
      let p = a.hidden_size_per_layer_input;
      layers.push(Block {
        self_attn,
        mlp: Mlp::new(h, a.intermediate_size * if double { 2 } else { 1 }),
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
        pre_feedforward_layernorm: RmsNorm::new(h, eps),
        post_feedforward_layernorm: RmsNorm::new(h, eps),
        moe,
        per_layer: (p > 0).then(|| PerLayer {
          per_layer_input_gate: Linear::new(h, p, false),
          per_layer_projection: Linear::new(p, h, false),
          post_per_layer_input_norm: RmsNorm::new(h, eps),
        }),
        layer_scalar: Param::new(&[1]),
        sliding,
      });
    }
    let p = a.hidden_size_per_layer_input;
    let per_layer = (p > 0).then(|| PerLayerInputs {
      embed_tokens_per_layer: Embedding::new(a.vocab_size_per_layer_input, n * p),
      per_layer_model_projection: Linear::new(h, n * p, false),
      per_layer_projection_norm: RmsNorm::new(p, eps),
    });
    a.layer_types = Some(types);
    Ok(Gemma4Text {
      model: Inner {
        embed_tokens: Embedding::new(a.vocab_size, h),
        layers,
        norm: RmsNorm::new(h, eps),
        per_layer,
      },
      lm_head: (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
      previous_kvs,
      first_kv_shared,
      args: a,
    })
  }

  /// `_get_per_layer_inputs` + `_project_per_layer_inputs`:
  /// `[B, L, layers, per_layer]`.
  fn per_layer_inputs(&self, tokens: &Array, h: &Array) -> Result<Option<Array>> {
    let Some(p) = &self.model.per_layer else {
      return Ok(None);
    };
    let a = &self.args;
    let (n, ps) = (a.num_hidden_layers, a.hidden_size_per_layer_input);
    let inputs = p.embed_tokens_per_layer.forward(tokens)?;
    let inputs = ops::multiply(
      &inputs,
      &Array::scalar_as((ps as f64).sqrt(), inputs.dtype())?,
    )?;
    let inputs = ops::unflatten(&inputs, -1, &[n, ps])?;
    let proj = p.per_layer_model_projection.forward(h)?;
    let proj = ops::multiply(
      &proj,
      &Array::scalar_as((a.hidden_size as f64).powf(-0.5), proj.dtype())?,
    )?;
    let proj = p
      .per_layer_projection_norm
      .forward(&ops::unflatten(&proj, -1, &[n, ps])?)?;
    let s = ops::add(&proj, &inputs)?;
    Ok(Some(ops::multiply(
      &s,
      &Array::scalar_as(0.5f64.sqrt(), s.dtype())?,
    )?))
  }

  fn run(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
  ) -> Result<Array> {
    check_caches(caches.len(), self.first_kv_shared)?;
    let h = self.model.embed_tokens.forward(tokens)?;
    let mut h = ops::multiply(
      &h,
      &Array::scalar_as((self.args.hidden_size as f64).sqrt(), h.dtype())?,
    )?;
    let pli = self.per_layer_inputs(tokens, &h)?;
    let n = tokens.dim(-1).unwrap_or(1);
    let window = self.args.sliding_window;
    // One mask per layer type, from the first cache of that type.
    let mask_for = |sliding: bool| -> Result<AttnMask> {
      let first = self
        .model
        .layers
        .iter()
        .take(self.first_kv_shared)
        .position(|l| l.sliding == sliding);
      let w = sliding.then_some(window);
      match (first, key_valid) {
        (Some(i), Some(kv)) => crate::batch::padded_mask(kv, n, caches[i].offset, w),
        (Some(i), None) => caches[i].make_mask(n, w),
        (None, _) => Ok(AttnMask::None),
      }
    };
    let (full_mask, swa_mask) = (mask_for(false)?, mask_for(true)?);
    let mut shared: Vec<Option<SharedKv>> = vec![None; self.model.layers.len()];
    for (i, layer) in self.model.layers.iter().enumerate() {
      let mask = if layer.sliding { &swa_mask } else { &full_mask };
      let per = match &pli {
        Some(p) => Some(ops::squeeze_axes(
          &super::base::slice_axis(p, 2, i as i32, i as i32 + 1)?,
          &[2],
        )?),
        None => None,
      };
      let src = self.previous_kvs[i];
      let (cache, from) = if i < self.first_kv_shared {
        (Some(&mut caches[i]), None)
      } else {
        (None, shared[src].as_ref())
      };
      let (out, kv) = layer.forward(&h, mask, cache, from, per.as_ref())?;
      h = out;
      shared[i] = Some(kv);
    }
    self.model.norm.forward(&h)
  }
}

/// Registry entry for `gemma4_text`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(Gemma4Text::new(parse_args(config)?)?))
}

impl LanguageModel for Gemma4Text {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.run(tokens, caches, None)
  }

  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    crate::batch::check_padded_caches(caches)?;
    self.run(tokens, caches, Some(key_valid))
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    let out = match &self.lm_head {
      Some(head) => head.forward(hidden)?,
      None => self.model.embed_tokens.as_linear(hidden)?,
    };
    match self.args.final_logit_softcapping {
      Some(c) => {
        let c = Array::scalar_as(c as f64, out.dtype())?;
        ops::multiply(&ops::tanh(&ops::divide(&out, &c)?)?, &c)
      }
      None => Ok(out),
    }
  }

  /// mlx-lm's `make_cache`: one per layer with its own keys/values —
  /// rotating caches of `sliding_window` for sliding layers, standard ones
  /// (rotating with 4 kept under `max_kv_size`) for full layers.
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .take(self.first_kv_shared)
      .map(|l| match (l.sliding, max_kv_size) {
        (true, _) => KvCache::new(KvCacheKind::Rotating {
          max_size: self.args.sliding_window,
          keep: 0,
        }),
        (false, Some(m)) => KvCache::new(KvCacheKind::Rotating {
          max_size: m,
          keep: 4,
        }),
        (false, None) => KvCache::standard(),
      })
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  /// mlx-lm `Model.sanitize`: rotary buffers and activation-range stats
  /// dropped, the KV-shared layers' k/v projections and k norms dropped,
  /// HF's fused experts (`experts.gate_up_proj` `[E, 2 * inter, hidden]`,
  /// `experts.down_proj`) renamed into `experts.switch_glu.*`; a tied
  /// `lm_head` dropped.
  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let first = self.first_kv_shared;
    let mut out = HashMap::with_capacity(weights.len());
    for (k, v) in weights {
      const SKIP: [&str; 5] = [
        "self_attn.rotary_emb",
        "input_max",
        "input_min",
        "output_max",
        "output_min",
      ];
      if SKIP.iter().any(|s| k.contains(s)) {
        continue;
      }
      if [
        ".self_attn.k_proj",
        ".self_attn.v_proj",
        ".self_attn.k_norm",
      ]
      .iter()
      .any(|s| k.contains(s))
      {
        let idx = k
          .split("layers.")
          .nth(1)
          .and_then(|r| r.split('.').next())
          .and_then(|i| i.parse::<usize>().ok());
        if idx.is_some_and(|i| i >= first) {
          continue;
        }
      }
      if let Some(base) = k.strip_suffix(".experts.gate_up_proj") {
        let parts = ops::split(&v, 2, -2)?;
        for (name, p) in ["gate_proj", "up_proj"].iter().zip(parts) {
          out.insert(
            format!("{base}.experts.switch_glu.{name}.weight"),
            ops::contiguous(&p, false)?,
          );
        }
        continue;
      }
      if let Some(base) = k.strip_suffix(".experts.down_proj") {
        out.insert(format!("{base}.experts.switch_glu.down_proj.weight"), v);
        continue;
      }
      out.insert(k, v);
    }
    if self.lm_head.is_none() {
      for k in ["lm_head.weight", "lm_head.scales", "lm_head.biases"] {
        out.remove(k);
      }
    }
    Ok(out)
  }

  fn vocab_size(&self) -> i32 {
    self.args.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }
}
