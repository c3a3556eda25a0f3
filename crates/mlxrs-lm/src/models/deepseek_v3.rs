//! DeepSeek-V3: mlx-lm's `models/deepseek_v3.py`.
//!
//! Multi-head latent attention (MLA): queries through a low-rank
//! `q_a_proj -> q_a_layernorm -> q_b_proj`, keys/values through one shared
//! compressed latent (`kv_a_proj_with_mqa -> kv_a_layernorm`) plus a shared
//! roped key part; `kv_b_proj` is pre-split into per-head `embed_q` /
//! `unembed_out` ([`MultiLinear`]). The rope half of the scores is computed
//! explicitly and passed to the fused attention as an additive mask (masked
//! positions at `finfo.min`); the cache holds the latent `[B, 1, T, kv_lora]`
//! as its "keys" and the roped `k_pe` `[B, 1, T, rope]` as its "values" of a
//! standard [`KvCache`]. Prefill expands the latent to per-head keys/values;
//! single-token decoding attends over the latent directly.
//!
//! The MLP is dense for the first `first_k_dense_replace` layers, then a MoE
//! (`noaux_tc` routing: sigmoid scores, `e_score_correction_bias` used only
//! to select, group-limited top-k, weights renormalized and scaled by
//! `routed_scaling_factor`) plus shared experts.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::attention::causal_mask;
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, Linear, Module, MultiLinear, RmsNorm, Rope, Weights, module,
  sdpa_with_cache,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_caches, check_moe, default_caches, slice_axis, stack_experts};
use super::mlp::SwiGluMlp;
use super::moe::{DeepseekMoe, DeepseekRouter, Routing, check_groups};
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

fn d_vocab() -> i32 {
  102400
}
fn d_hidden() -> i32 {
  4096
}
fn d_inter() -> i32 {
  11008
}
fn d_moe_inter() -> i32 {
  1407
}
fn d_layers() -> i32 {
  30
}
fn d_heads() -> i32 {
  32
}
fn d_one_f() -> f32 {
  1.0
}
fn d_one() -> i32 {
  1
}
fn d_kv_lora() -> i32 {
  512
}
fn d_q_lora() -> Option<i32> {
  Some(1536)
}
fn d_rope_dim() -> i32 {
  64
}
fn d_v_dim() -> i32 {
  128
}
fn d_nope_dim() -> i32 {
  128
}
fn d_topk_method() -> String {
  "noaux_tc".into()
}
fn d_true() -> bool {
  true
}
fn d_max_pos() -> i32 {
  2048
}
fn d_eps() -> f32 {
  1e-6
}
fn d_theta() -> f32 {
  10000.0
}

/// `ModelArgs` of mlx-lm's deepseek_v3.py (same defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct DeepseekV3Args {
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `hidden_size`
  #[serde(default = "d_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size` (dense layers)
  #[serde(default = "d_inter")]
  pub intermediate_size: i32,
  /// `moe_intermediate_size` (per expert)
  #[serde(default = "d_moe_inter")]
  pub moe_intermediate_size: i32,
  /// `num_hidden_layers`
  #[serde(default = "d_layers")]
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `n_shared_experts`
  pub n_shared_experts: Option<i32>,
  /// `n_routed_experts` (none: every layer dense)
  pub n_routed_experts: Option<i32>,
  /// `routed_scaling_factor`
  #[serde(default = "d_one_f")]
  pub routed_scaling_factor: f32,
  /// `kv_lora_rank`
  #[serde(default = "d_kv_lora")]
  pub kv_lora_rank: i32,
  /// `q_lora_rank` (null: a full-rank `q_proj`)
  #[serde(default = "d_q_lora")]
  pub q_lora_rank: Option<i32>,
  /// `qk_rope_head_dim`
  #[serde(default = "d_rope_dim")]
  pub qk_rope_head_dim: i32,
  /// `v_head_dim`
  #[serde(default = "d_v_dim")]
  pub v_head_dim: i32,
  /// `qk_nope_head_dim`
  #[serde(default = "d_nope_dim")]
  pub qk_nope_head_dim: i32,
  /// `topk_method` (only `noaux_tc`)
  #[serde(default = "d_topk_method")]
  pub topk_method: String,
  /// `norm_topk_prob`
  #[serde(default = "d_true")]
  pub norm_topk_prob: bool,
  /// `n_group`
  #[serde(default = "d_one")]
  pub n_group: i32,
  /// `topk_group`
  #[serde(default = "d_one")]
  pub topk_group: i32,
  /// `num_experts_per_tok`
  #[serde(default = "d_one")]
  pub num_experts_per_tok: i32,
  /// `moe_layer_freq`
  #[serde(default = "d_one")]
  pub moe_layer_freq: i32,
  /// `first_k_dense_replace`
  #[serde(default)]
  pub first_k_dense_replace: i32,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
}

/// `mx.finfo(dtype).min`.
fn finfo_min(dt: Dtype) -> f64 {
  match dt {
    Dtype::Float16 => -65504.0,
    Dtype::Bfloat16 => -3.3895313892515355e38,
    Dtype::Float64 => f64::MIN,
    _ => f32::MIN as f64,
  }
}

/// `DeepseekV3Attention`.
struct Attention {
  q_proj: Option<Linear>,
  q_a_proj: Option<Linear>,
  q_a_layernorm: Option<RmsNorm>,
  q_b_proj: Option<Linear>,
  kv_a_proj_with_mqa: Linear,
  kv_a_layernorm: RmsNorm,
  embed_q: MultiLinear,
  unembed_out: MultiLinear,
  o_proj: Linear,
  num_heads: i32,
  nope: i32,
  rope_dim: i32,
  kv_lora: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention {
  q_proj,
  q_a_proj,
  q_a_layernorm,
  q_b_proj,
  kv_a_proj_with_mqa,
  kv_a_layernorm,
  embed_q,
  unembed_out,
  o_proj
});

impl Attention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let q = match (
      &self.q_proj,
      &self.q_a_proj,
      &self.q_a_layernorm,
      &self.q_b_proj,
    ) {
      (Some(p), ..) => p.forward(x)?,
      (None, Some(a), Some(n), Some(bp)) => bp.forward(&n.forward(&a.forward(x)?)?)?,
      _ => {
        return Err(Error::InvalidArgument(
          "deepseek_v3: attention has no query projection".into(),
        ));
      }
    };
    let q = ops::transpose_axes(
      &ops::reshape(&q, &[b, l, self.num_heads, self.nope + self.rope_dim])?,
      &[0, 2, 1, 3],
    )?;
    let (q_nope, q_pe) = split2(&q, self.nope)?;
    let (compressed, k_pe) = split2(&self.kv_a_proj_with_mqa.forward(x)?, self.kv_lora)?;
    let k_pe = ops::transpose_axes(
      &ops::reshape(&k_pe, &[b, l, 1, self.rope_dim])?,
      &[0, 2, 1, 3],
    )?;
    let kv_latent = self.kv_a_layernorm.forward(&compressed)?;

    let q_pe = self.rope.forward(&q_pe, cache.offset)?;
    let k_pe = self.rope.forward(&k_pe, cache.offset)?;
    let kv_latent = ops::expand_dims(&kv_latent, 1)?;
    let (kv_latent, k_pe) = cache.update_and_fetch(&kv_latent, &k_pe)?;

    let scale = Array::scalar_as(self.scale as f64, q_pe.dtype())?;
    let mut pe_scores = ops::matmul(
      &ops::multiply(&q_pe, &scale)?,
      &ops::swapaxes(&k_pe, -1, -2)?,
    )?;
    let mask_arr = match mask {
      AttnMask::None => None,
      AttnMask::Array(m) => Some(m.clone()),
      AttnMask::Causal => {
        // mlx-lm asks for an explicit mask (`return_array=True`).
        let lk = k_pe.dim(2).unwrap_or(l);
        Some(causal_mask(l, lk - l, None)?)
      }
    };
    if let Some(m) = mask_arr {
      let min = Array::scalar_as(finfo_min(pe_scores.dtype()), pe_scores.dtype())?;
      pe_scores = ops::where_(&m, &pe_scores, &min)?;
    }

    let out = if l == 1 {
      let q_lat = self.embed_q.forward(&q_nope, true)?;
      let o = sdpa_with_cache(
        &q_lat,
        &kv_latent,
        &kv_latent,
        self.scale,
        &AttnMask::Array(pe_scores),
        None,
      )?;
      self.unembed_out.forward(&o, true)?
    } else {
      let k = self.embed_q.forward(&kv_latent, false)?;
      let v = self.unembed_out.forward(&kv_latent, true)?;
      sdpa_with_cache(
        &q_nope,
        &k,
        &v,
        self.scale,
        &AttnMask::Array(pe_scores),
        None,
      )?
    };
    self.o_proj.forward(&ops::reshape(
      &ops::transpose_axes(&out, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)
  }
}

/// `mx.split(a, [at], axis=-1)`.
fn split2(a: &Array, at: i32) -> Result<(Array, Array)> {
  match <[Array; 2]>::try_from(ops::split_sections(a, &[at], -1)?) {
    Ok([x, y]) => Ok((x, y)),
    Err(_) => Err(Error::Mlx("split did not return two parts".into())),
  }
}

struct Block {
  self_attn: Attention,
  dense: Option<SwiGluMlp>,
  moe: Option<DeepseekMoe>,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block { self_attn, dense => "mlp", moe => "mlp", input_layernorm, post_attention_layernorm });

impl Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = ops::add(
      x,
      &self
        .self_attn
        .forward(&self.input_layernorm.forward(x)?, mask, cache)?,
    )?;
    let n = self.post_attention_layernorm.forward(&h)?;
    let r = match (&self.moe, &self.dense) {
      (Some(m), _) => m.forward(&n)?,
      (None, Some(d)) => d.forward(&n)?,
      (None, None) => {
        return Err(Error::InvalidArgument(
          "deepseek_v3: layer without an MLP".into(),
        ));
      }
    };
    ops::add(&h, &r)
  }
}

struct Inner {
  embed_tokens: Embedding,
  layers: Vec<Block>,
  norm: RmsNorm,
}
module!(Inner {
  embed_tokens,
  layers,
  norm
});

/// mlx-lm `deepseek_v3.Model`.
pub struct DeepseekV3 {
  args: DeepseekV3Args,
  model: Inner,
  lm_head: Linear,
}
module!(DeepseekV3 { model, lm_head });

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config (deepseek_v3): {msg}"))
}

impl DeepseekV3 {
  /// Build from parsed args.
  pub fn new(a: DeepseekV3Args) -> Result<DeepseekV3> {
    let (h, nh) = (a.hidden_size, a.num_attention_heads);
    if h <= 0
      || nh <= 0
      || a.kv_lora_rank <= 0
      || a.qk_rope_head_dim <= 0
      || a.qk_nope_head_dim < 0
      || a.v_head_dim <= 0
    {
      return Err(bad(
        "hidden_size, num_attention_heads, kv_lora_rank and head dims must be positive".into(),
      ));
    }
    if a.topk_method != "noaux_tc" {
      return Err(bad(format!(
        "unsupported topk_method {:?} (only \"noaux_tc\")",
        a.topk_method
      )));
    }
    if a.moe_layer_freq <= 0 {
      return Err(bad("moe_layer_freq must be positive".into()));
    }
    if let Some(e) = a.n_routed_experts {
      check_moe("deepseek_v3", e, a.num_experts_per_tok)?;
      check_groups("deepseek_v3", e, a.n_group, a.topk_group)?;
    }
    let q_head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;
    let mut scale = (q_head_dim as f32).powf(-0.5);
    if let Some(rs) = a.rope_scaling.as_ref().filter(|v| !v.is_null()) {
      let mscale_all_dim = rs
        .get("mscale_all_dim")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
      if mscale_all_dim != 0.0 {
        let factor = rs
          .get("factor")
          .and_then(Value::as_f64)
          .ok_or_else(|| bad("rope_scaling needs a factor".into()))?;
        if factor > 1.0 {
          let s = 0.1 * mscale_all_dim * factor.ln() + 1.0;
          scale = scale * (s as f32) * (s as f32);
        }
      }
    }
    let eps = a.rms_norm_eps;
    let mut layers = Vec::new();
    for i in 0..a.num_hidden_layers {
      let rope = Rope::from_config(
        a.qk_rope_head_dim,
        a.rope_theta,
        true,
        a.rope_scaling.as_ref(),
        Some(a.max_position_embeddings),
      )?;
      let lora = a.q_lora_rank;
      let self_attn = Attention {
        q_proj: lora
          .is_none()
          .then(|| Linear::new(h, nh * q_head_dim, false)),
        q_a_proj: lora.map(|r| Linear::new(h, r, a.attention_bias)),
        q_a_layernorm: lora.map(|r| RmsNorm::new(r, 1e-6)),
        q_b_proj: lora.map(|r| Linear::new(r, nh * q_head_dim, false)),
        kv_a_proj_with_mqa: Linear::new(h, a.kv_lora_rank + a.qk_rope_head_dim, a.attention_bias),
        kv_a_layernorm: RmsNorm::new(a.kv_lora_rank, 1e-6),
        embed_q: MultiLinear::new(a.qk_nope_head_dim, a.kv_lora_rank, nh),
        unembed_out: MultiLinear::new(a.kv_lora_rank, a.v_head_dim, nh),
        o_proj: Linear::new(nh * a.v_head_dim, h, a.attention_bias),
        num_heads: nh,
        nope: a.qk_nope_head_dim,
        rope_dim: a.qk_rope_head_dim,
        kv_lora: a.kv_lora_rank,
        scale,
        rope,
      };
      let moe = match a.n_routed_experts {
        Some(e) if i >= a.first_k_dense_replace && i % a.moe_layer_freq == 0 => {
          Some(DeepseekMoe::new(
            h,
            a.moe_intermediate_size,
            e,
            a.n_shared_experts.map(|n| a.moe_intermediate_size * n),
            DeepseekRouter {
              routing: Routing::NoauxTc {
                norm_topk_prob: a.norm_topk_prob,
              },
              top_k: a.num_experts_per_tok,
              n_group: a.n_group,
              topk_group: a.topk_group,
              routed_scaling_factor: a.routed_scaling_factor,
            },
          ))
        }
        _ => None,
      };
      layers.push(Block {
        self_attn,
        dense: moe
          .is_none()
          .then(|| SwiGluMlp::new(h, a.intermediate_size, false)),
        moe,
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
      });
    }
    Ok(DeepseekV3 {
      model: Inner {
        embed_tokens: Embedding::new(a.vocab_size, h),
        layers,
        norm: RmsNorm::new(h, eps),
      },
      lm_head: Linear::new(h, a.vocab_size, false),
      args: a,
    })
  }
}

/// Registry entry for `deepseek_v3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(DeepseekV3::new(parse_args(config)?)?))
}

/// mlx-lm's `dequant`: block-wise (128 x 128) FP8 weight times its
/// `weight_scale_inv`, to bfloat16.
fn dequant_fp8(weight: &Array, scale_inv: &Array) -> Result<Array> {
  let bs = 128;
  let w = ops::from_fp8(weight, Dtype::Bfloat16)?;
  let s = w.shape();
  if s.len() != 2 {
    return Err(Error::InvalidArgument(format!(
      "deepseek_v3 sanitize: fp8 weight of shape {s:?} is not 2-D"
    )));
  }
  let (m, n) = (s[0], s[1]);
  let (pb, ps) = ((bs - m % bs) % bs, (bs - n % bs) % bs);
  let zero = Array::scalar_as(0.0, w.dtype())?;
  let w = ops::pad(&w, &[0, 1], &[0, 0], &[pb, ps], &zero, "constant")?;
  let w = ops::reshape(&w, &[(m + pb) / bs, bs, (n + ps) / bs, bs])?;
  let w = ops::multiply(&w, &ops::expand_dims_axes(scale_inv, &[1, 3])?)?;
  let w = ops::reshape(&w, &[m + pb, n + ps])?;
  ops::astype(&ops::slice(&w, &[0, 0], &[m, n], &[1, 1])?, Dtype::Bfloat16)
}

impl DeepseekV3 {
  /// mlx-lm's `kv_b_proj` split into `embed_q` (`[H, kv_lora, nope]`, the
  /// key half transposed) and `unembed_out` (`[H, v, kv_lora]`), dequantizing
  /// and requantizing when quantized.
  fn split_kv_b(&self, weights: &mut HashMap<String, Array>, prefix: &str) -> Result<()> {
    let a = &self.args;
    let Some(v) = weights.remove(&format!("{prefix}.kv_b_proj.weight")) else {
      return Ok(());
    };
    let scales = weights.remove(&format!("{prefix}.kv_b_proj.scales"));
    let mut q = None;
    let v = match scales {
      Some(sc) => {
        let biases = weights.remove(&format!("{prefix}.kv_b_proj.biases"));
        let dims = a.kv_lora_rank;
        let bits = v.dim(-1).unwrap_or(0) * 32 / dims;
        let groups = sc.dim(-1).unwrap_or(0);
        if bits <= 0 || groups <= 0 {
          return Err(Error::InvalidArgument(format!(
            "deepseek_v3 sanitize: bad quantized {prefix}.kv_b_proj"
          )));
        }
        let group_size = dims / groups;
        q = Some((bits, group_size));
        ops::dequantize(
          &v,
          &sc,
          biases.as_ref(),
          Some(group_size),
          Some(bits),
          "affine",
          None,
          None,
        )?
      }
      None => v,
    };
    let head_dim = a.qk_nope_head_dim + a.v_head_dim;
    let v = ops::reshape(&v, &[a.num_attention_heads, head_dim, -1])?;
    let wk = ops::contiguous(
      &ops::swapaxes(&slice_axis(&v, 1, 0, a.qk_nope_head_dim)?, -1, -2)?,
      false,
    )?;
    let wv = ops::contiguous(&slice_axis(&v, 1, a.qk_nope_head_dim, head_dim)?, false)?;
    for (name, w) in [("embed_q", wk), ("unembed_out", wv)] {
      match q {
        Some((bits, gs)) => {
          let mut parts = ops::quantize(&w, Some(gs), Some(bits), "affine", None)?.into_iter();
          let (Some(qw), Some(qs), Some(qb)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::Mlx("quantize returned too few arrays".into()));
          };
          weights.insert(format!("{prefix}.{name}.weight"), qw);
          weights.insert(format!("{prefix}.{name}.scales"), qs);
          weights.insert(format!("{prefix}.{name}.biases"), qb);
        }
        None => {
          weights.insert(format!("{prefix}.{name}.weight"), w);
        }
      }
    }
    Ok(())
  }
}

impl DeepseekV3 {
  /// The decoder stack; `key_valid` (rows of a left-padded batch, see
  /// [`LanguageModel::hidden_padded`]) replaces the causal mask by padded ones.
  fn run(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
  ) -> Result<Array> {
    check_caches(caches.len(), self.model.layers.len())?;
    let mut h = self.model.embed_tokens.forward(tokens)?;
    let n = tokens.dim(-1).unwrap_or(1);
    // mlx-lm: `create_attention_mask(h, cache[0], return_array=True)`; a
    // `Causal` answer is turned into the explicit array per layer, once the
    // cached key length is known.
    let mask = match (caches.first(), key_valid) {
      (Some(c), Some(kv)) => crate::batch::padded_mask(kv, n, c.offset, None)?,
      (Some(c), None) => c.make_mask(n, None)?,
      (None, _) => AttnMask::None,
    };
    let mut pace = PrefillPace::for_input(&h);
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      h = layer.forward(&h, &mask, cache)?;
      pace.layer_done(&h)?;
    }
    self.model.norm.forward(&h)
  }
}

impl LanguageModel for DeepseekV3 {
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
    self.lm_head.forward(hidden)
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    default_caches(self.model.layers.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  /// mlx-lm `Model.sanitize`: int4 (`weight_packed` / `weight_scale` /
  /// `weight_shape`) remapped to affine `weight` / `scales` / `biases`;
  /// FP8 weights (`weight_scale_inv`) dequantized to bfloat16; per-expert
  /// tensors stacked into `switch_mlp`; `kv_b_proj` split into `embed_q` /
  /// `unembed_out`; the multi-token-prediction layer (`model.layers.61`) and
  /// `rotary_emb.inv_freq` dropped.
  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let a = &self.args;
    // int4 (compressed-tensors pack-quantized) -> mlx affine.
    let mut w1 = HashMap::with_capacity(weights.len());
    for (k, v) in &weights {
      if let Some(base) = k.strip_suffix("weight_shape") {
        let packed = weights
          .get(&format!("{base}weight_packed"))
          .ok_or_else(|| {
            Error::InvalidArgument(format!("sanitize: {k} without {base}weight_packed"))
          })?;
        let s = weights.get(&format!("{base}weight_scale")).ok_or_else(|| {
          Error::InvalidArgument(format!("sanitize: {k} without {base}weight_scale"))
        })?;
        w1.insert(format!("{base}weight"), ops::view(packed, Dtype::Uint32)?);
        w1.insert(format!("{base}scales"), s.clone());
        w1.insert(
          format!("{base}biases"),
          ops::multiply(s, &Array::scalar_as(-8.0, s.dtype())?)?,
        );
      } else if !(k.ends_with("weight_scale") || k.ends_with("weight_packed")) {
        w1.entry(k.clone()).or_insert_with(|| v.clone());
      }
    }
    drop(weights);
    // FP8 block dequantization.
    let mut w2 = HashMap::with_capacity(w1.len());
    for (k, v) in &w1 {
      if k.contains("weight_scale_inv") {
        let wk = k.replace("_scale_inv", "");
        let weight = w1.get(&wk).ok_or_else(|| {
          Error::InvalidArgument(format!("sanitize: {k} without its weight {wk}"))
        })?;
        w2.insert(wk, dequant_fp8(weight, v)?);
      } else if !w2.contains_key(k) {
        w2.insert(k.clone(), v.clone());
      }
    }
    drop(w1);
    let mut weights = w2;
    if let Some(e) = a.n_routed_experts {
      let prefixes: Vec<String> = (0..a.num_hidden_layers)
        .map(|l| format!("model.layers.{l}.mlp"))
        .collect();
      stack_experts(
        &mut weights,
        &prefixes,
        e,
        &[
          ("gate_proj", "gate_proj"),
          ("down_proj", "down_proj"),
          ("up_proj", "up_proj"),
        ],
      )?;
    }
    for l in 0..a.num_hidden_layers {
      self.split_kv_b(&mut weights, &format!("model.layers.{l}.self_attn"))?;
    }
    weights.retain(|k, _| !k.starts_with("model.layers.61") && !k.contains("rotary_emb.inv_freq"));
    Ok(weights)
  }

  fn vocab_size(&self) -> i32 {
    self.args.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn cfg() -> Value {
    serde_json::json!({
      "model_type": "deepseek_v3", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 8,
      "moe_intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2, "kv_lora_rank": 4,
      "q_lora_rank": null, "qk_rope_head_dim": 2, "v_head_dim": 3, "qk_nope_head_dim": 5,
      "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1
    })
  }

  #[test]
  fn sanitize_splits_kv_b_and_drops_mtp() {
    let m = build(&cfg()).unwrap();
    // kv_b_proj: [H * (nope + v), kv_lora] = [16, 4]; head h row r = 100h + r.
    let v: Vec<f32> = (0..2)
      .flat_map(|h| (0..8).flat_map(move |r| [(100 * h + r) as f32; 4]))
      .collect();
    let mut w = HashMap::new();
    w.insert(
      "model.layers.0.self_attn.kv_b_proj.weight".to_string(),
      Array::from_slice(&v, &[16, 4]).unwrap(),
    );
    w.insert(
      "model.layers.61.mlp.gate.weight".to_string(),
      Array::scalar(0.0f32),
    );
    w.insert(
      "model.layers.0.self_attn.rotary_emb.inv_freq".to_string(),
      Array::scalar(0.0f32),
    );
    let mut out = m.sanitize(w).unwrap();
    assert_eq!(out.len(), 2);
    let eq = out
      .get_mut("model.layers.0.self_attn.embed_q.weight")
      .unwrap();
    assert_eq!(eq.shape(), vec![2, 4, 5]);
    assert_eq!(eq.to_vec::<f32>().unwrap()[..5], [0., 1., 2., 3., 4.]);
    let uo = out
      .get_mut("model.layers.0.self_attn.unembed_out.weight")
      .unwrap();
    assert_eq!(uo.shape(), vec![2, 3, 4]);
    assert_eq!(uo.to_vec::<f32>().unwrap()[12..16], [105.; 4]);
  }

  #[test]
  fn bad_group_config_is_an_error() {
    let mut c = cfg();
    c["n_group"] = 3.into();
    assert!(build(&c).is_err());
    let mut c = cfg();
    c["topk_method"] = "greedy".into();
    assert!(build(&c).is_err());
  }
}
