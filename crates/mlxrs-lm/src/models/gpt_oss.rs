//! gpt-oss: mlx-lm's `models/gpt_oss.py` — attention with learned sinks and
//! biases on every projection, alternating sliding-window / full layers,
//! yarn RoPE, and a MoE MLP in every layer (router with bias, top-k on the
//! logits then softmax over the k, experts with biases and the clamped
//! `SwigluOAI` activation).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, KvCacheKind, Linear, Module, Param, RmsNorm, Rope,
  SwitchGlu, Weights, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_caches, check_heads, check_moe, last_axis};
use super::checkpoint::{self, Shared, Trainable};
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

fn d_layers() -> i32 {
  36
}
fn d_experts() -> i32 {
  128
}
fn d_topk() -> i32 {
  4
}
fn d_vocab() -> i32 {
  201088
}
fn d_eps() -> f32 {
  1e-5
}
fn d_hidden() -> i32 {
  2880
}
fn d_head_dim() -> i32 {
  64
}
fn d_heads() -> i32 {
  64
}
fn d_kv() -> i32 {
  8
}
fn d_window() -> i32 {
  128
}
fn d_theta() -> f32 {
  150000.0
}

/// `ModelArgs` of mlx-lm's gpt_oss.py (same defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct GptOssArgs {
  /// `num_hidden_layers`
  #[serde(default = "d_layers")]
  pub num_hidden_layers: i32,
  /// `num_local_experts`
  #[serde(default = "d_experts")]
  pub num_local_experts: i32,
  /// `num_experts_per_tok`
  #[serde(default = "d_topk")]
  pub num_experts_per_tok: i32,
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `hidden_size`
  #[serde(default = "d_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size` (per expert)
  #[serde(default = "d_hidden")]
  pub intermediate_size: i32,
  /// `head_dim`
  #[serde(default = "d_head_dim")]
  pub head_dim: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  #[serde(default = "d_kv")]
  pub num_key_value_heads: i32,
  /// `sliding_window`
  #[serde(default = "d_window")]
  pub sliding_window: i32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `layer_types` (default: sliding, full, sliding, full, ...)
  pub layer_types: Option<Vec<String>>,
}

/// mlx-lm's `SwigluOAI()` defaults (the config's `swiglu_limit` is not read
/// by mlx-lm either).
const SWIGLU_ALPHA: f32 = 1.702;
const SWIGLU_LIMIT: f32 = 7.0;

/// `AttentionBlock`.
struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  sinks: Param,
  head_dim: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention {
  q_proj,
  k_proj,
  v_proj,
  o_proj,
  sinks
});

impl Attention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads = |t: Array| ops::swapaxes(&ops::reshape(&t, &[b, l, -1, self.head_dim])?, 1, 2);
    let q = heads(self.q_proj.forward(x)?)?;
    let k = heads(self.k_proj.forward(x)?)?;
    let v = heads(self.v_proj.forward(x)?)?;
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let o = mlxrs_nn::attention_with_cache_update(
      &q,
      &k,
      &v,
      cache,
      self.scale,
      mask,
      Some(&self.sinks.value),
    )?;
    self
      .o_proj
      .forward(&ops::reshape(&ops::swapaxes(&o, 1, 2)?, &[b, l, -1])?)
  }
}

/// `MLPBlock`.
struct MoeMlp {
  experts: SwitchGlu,
  router: Linear,
  top_k: i32,
  num_experts: i32,
}
module!(MoeMlp { experts, router });

impl MoeMlp {
  fn forward(&self, x: &Array) -> Result<Array> {
    let g = self.router.forward(x)?;
    // mlx-lm's `mlx_topk`: argpartition(kth=-k)[..., -k:].
    let (e, k) = (self.num_experts, self.top_k);
    let indices = ops::stop_gradient(&last_axis(
      &ops::argpartition_axis(&g, e - k, -1)?,
      e - k,
      e,
    )?)?;
    let expert_weights = ops::softmax_axis(&ops::take_along_axis(&g, &indices, -1)?, -1, true)?;
    let y = self.experts.forward(x, &indices)?;
    ops::sum_axis(
      &ops::multiply(&y, &ops::expand_dims(&expert_weights, -1)?)?,
      -2,
      false,
    )
  }
}

struct Block {
  self_attn: Attention,
  mlp: MoeMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  sliding: bool,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = ops::add(
      x,
      &self
        .self_attn
        .forward(&self.input_layernorm.forward(x)?, mask, cache)?,
    )?;
    ops::add(
      &h,
      &self
        .mlp
        .forward(&self.post_attention_layernorm.forward(&h)?)?,
    )
  }
}

struct Inner {
  embed_tokens: Embedding,
  norm: RmsNorm,
  layers: Vec<Shared<Block>>,
}
module!(Inner {
  embed_tokens,
  norm,
  layers
});

/// mlx-lm `gpt_oss.Model`.
pub struct GptOss {
  args: GptOssArgs,
  model: Inner,
  lm_head: Linear,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(GptOss { model, lm_head });

impl GptOss {
  /// Build from parsed args.
  pub fn new(args: GptOssArgs) -> Result<GptOss> {
    let (h, n_heads, n_kv, hd) = (
      args.hidden_size,
      args.num_attention_heads,
      args.num_key_value_heads,
      args.head_dim,
    );
    check_heads("gpt_oss", h, n_heads, n_kv, args.num_hidden_layers)?;
    check_moe("gpt_oss", args.num_local_experts, args.num_experts_per_tok)?;
    if hd <= 0 || args.sliding_window <= 0 {
      return Err(Error::InvalidArgument(
        "config (gpt_oss): head_dim and sliding_window must be positive".into(),
      ));
    }
    let n_layers = args.num_hidden_layers.max(0) as usize;
    let layer_types = match &args.layer_types {
      Some(t) => t.clone(),
      None => ["sliding_attention", "full_attention"]
        .iter()
        .cycle()
        .take(n_layers)
        .map(|s| s.to_string())
        .collect(),
    };
    if layer_types.len() != n_layers {
      return Err(Error::InvalidArgument(format!(
        "config (gpt_oss): {} layer_types for {n_layers} layers",
        layer_types.len()
      )));
    }
    let mut layers = Vec::with_capacity(n_layers);
    for lt in &layer_types {
      let sliding = match lt.as_str() {
        "sliding_attention" => true,
        "full_attention" => false,
        other => {
          return Err(Error::InvalidArgument(format!(
            "config (gpt_oss): unknown layer type {other:?}"
          )));
        }
      };
      layers.push(Block {
        self_attn: Attention {
          q_proj: Linear::new(h, n_heads * hd, true),
          k_proj: Linear::new(h, n_kv * hd, true),
          v_proj: Linear::new(h, n_kv * hd, true),
          o_proj: Linear::new(n_heads * hd, h, true),
          sinks: Param::new(&[n_heads]),
          head_dim: hd,
          scale: 1.0 / (hd as f32).sqrt(),
          rope: Rope::from_config(hd, args.rope_theta, false, args.rope_scaling.as_ref(), None)?,
        },
        mlp: MoeMlp {
          experts: SwitchGlu::new(
            h,
            args.intermediate_size,
            args.num_local_experts,
            GluActivation::SwigluOai {
              alpha: SWIGLU_ALPHA,
              limit: SWIGLU_LIMIT,
            },
            true,
          ),
          router: Linear::new(h, args.num_local_experts, true),
          top_k: args.num_experts_per_tok,
          num_experts: args.num_local_experts,
        },
        input_layernorm: RmsNorm::new(h, args.rms_norm_eps),
        post_attention_layernorm: RmsNorm::new(h, args.rms_norm_eps),
        sliding,
      });
    }
    Ok(GptOss {
      model: Inner {
        embed_tokens: Embedding::new(args.vocab_size, h),
        norm: RmsNorm::new(h, args.rms_norm_eps),
        layers: layers.into_iter().map(Shared::new).collect(),
      },
      lm_head: Linear::new(h, args.vocab_size, false),
      args,
      ckpt: None,
    })
  }
}

/// Registry entry for `gpt_oss`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(GptOss::new(parse_args(config)?)?))
}

/// `v[..., start::2, :]` (`axis` = -2) or `v[..., start::2]` (`axis` = -1).
fn every_other(v: &Array, start: i32, axis: i32) -> Result<Array> {
  let shape = v.shape();
  let nd = shape.len() as i32;
  let ax = if axis < 0 { axis + nd } else { axis };
  if ax < 0 || ax >= nd {
    return Err(Error::InvalidArgument(format!(
      "gpt_oss sanitize: tensor of shape {shape:?} has no axis {axis}"
    )));
  }
  let mut st = vec![0; nd as usize];
  let mut strides = vec![1; nd as usize];
  st[ax as usize] = start;
  strides[ax as usize] = 2;
  ops::contiguous(&ops::slice(v, &st, &shape, &strides)?, false)
}

impl LanguageModel for GptOss {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    check_caches(caches.len(), self.model.layers.len())?;
    let mut x = self.model.embed_tokens.forward(tokens)?;
    let n = tokens.dim(-1).unwrap_or(1);
    let layers = &self.model.layers;
    let full_mask = match layers.iter().position(|l| !l.lock().sliding) {
      Some(i) => caches[i].make_mask(n, None)?,
      None => AttnMask::None,
    };
    let swa_mask = match layers.iter().position(|l| l.lock().sliding) {
      Some(i) => caches[i].make_mask(n, Some(self.args.sliding_window))?,
      None => AttnMask::None,
    };
    let mut pace = PrefillPace::for_input(&x);
    for (i, (layer, cache)) in layers.iter().zip(caches.iter_mut()).enumerate() {
      let mask = if layer.lock().sliding {
        &swa_mask
      } else {
        &full_mask
      };
      let prefix = || format!("model.layers.{i}");
      x = checkpoint::block(&self.ckpt, layer, prefix, &x, mask, cache, Block::forward)?;
      pace.layer_done(&x)?;
    }
    self.model.norm.forward(&x)
  }

  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    crate::batch::check_padded_caches(caches)?;
    check_caches(caches.len(), self.model.layers.len())?;
    let n = tokens.dim(-1).unwrap_or(1);
    let offset = caches.first().map(|c| c.offset).unwrap_or(0);
    if caches.iter().any(|c| c.offset != offset) {
      return Err(Error::InvalidArgument(
        "padded batches need every layer's cache at the same offset".into(),
      ));
    }
    // Whole-width standard caches ([`LanguageModel::make_batch_caches`]):
    // sliding layers see their window through the mask.
    let full = crate::batch::padded_mask(key_valid, n, offset, None)?;
    let swa = crate::batch::padded_mask(key_valid, n, offset, Some(self.args.sliding_window))?;
    let mut x = self.model.embed_tokens.forward(tokens)?;
    let mut pace = PrefillPace::for_input(&x);
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      let b = layer.lock();
      x = b.forward(&x, if b.sliding { &swa } else { &full }, cache)?;
      pace.layer_done(&x)?;
    }
    self.model.norm.forward(&x)
  }

  fn make_batch_caches(&self) -> Option<Vec<KvCache>> {
    Some(
      (0..self.model.layers.len())
        .map(|_| KvCache::standard())
        .collect(),
    )
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    self.lm_head.forward(hidden)
  }

  /// mlx-lm `Model.make_cache`: full layers get a standard cache (rotating
  /// with 4 kept positions under `max_kv_size`), sliding layers a rotating
  /// cache of `sliding_window`.
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .map(|l| match (l.lock().sliding, max_kv_size) {
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

  /// mlx-lm `Model.sanitize`: HF `experts.gate_up_proj` (gate and up rows
  /// interleaved: even = gate, odd = up) split into `gate_proj` / `up_proj`,
  /// `*_proj_bias` renamed to `*_proj.bias`, MXFP4 `_blocks` / `_scales`
  /// renamed to `.weight` (viewed as uint32) / `.scales`.
  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    if weights.keys().any(|k| k.contains("gate_proj.weight")) {
      return Ok(weights); // already in mlx-lm layout
    }
    let mut out = HashMap::with_capacity(weights.len() + weights.len() / 8);
    let blocks = |k: &str, v: Array| -> Result<(String, Array)> {
      let mut k = k.to_string();
      let mut v = v;
      if k.contains("_blocks") {
        v = ops::flatten(&ops::view(&v, mlxrs_core::Dtype::Uint32)?, -2, -1)?;
        k = k.replace("_blocks", ".weight");
      }
      if k.contains("_scales") {
        k = k.replace("_scales", ".scales");
      }
      Ok((k, v))
    };
    for (k, v) in weights {
      if k.contains("gate_up_proj") && !k.contains("bias") {
        let (k, v) = blocks(&k, v)?;
        out.insert(
          k.replace("gate_up_proj", "gate_proj"),
          every_other(&v, 0, -2)?,
        );
        out.insert(
          k.replace("gate_up_proj", "up_proj"),
          every_other(&v, 1, -2)?,
        );
      } else if k.contains("down_proj") && !k.contains("bias") {
        let (k, v) = blocks(&k, v)?;
        out.insert(k, v);
      } else if k.contains("gate_up_proj_bias") {
        out.insert(
          k.replace("gate_up_proj_bias", "gate_proj.bias"),
          every_other(&v, 0, -1)?,
        );
        out.insert(
          k.replace("gate_up_proj_bias", "up_proj.bias"),
          every_other(&v, 1, -1)?,
        );
      } else if k.contains("down_proj_bias") {
        out.insert(k.replace("down_proj_bias", "down_proj.bias"), v);
      } else {
        out.insert(k, v);
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

  fn set_grad_checkpoint(&mut self, trainable: Option<BTreeSet<String>>) -> Result<()> {
    self.ckpt = trainable.map(Arc::new);
    Ok(())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn sanitize_deinterleaves_gate_up() {
    let cfg = serde_json::json!({
      "model_type": "gpt_oss", "num_hidden_layers": 2, "num_local_experts": 2, "num_experts_per_tok": 1,
      "vocab_size": 16, "hidden_size": 4, "intermediate_size": 2, "head_dim": 2, "num_attention_heads": 2,
      "num_key_value_heads": 1, "sliding_window": 4
    });
    let m = build(&cfg).unwrap();
    // [E=2, 2*inter=4, hidden=4]: row r of expert e holds 100e + r.
    let v: Vec<f32> = (0..2)
      .flat_map(|e| (0..4).flat_map(move |r| [(100 * e + r) as f32; 4]))
      .collect();
    let mut w = HashMap::new();
    w.insert(
      "model.layers.0.mlp.experts.gate_up_proj".to_string(),
      Array::from_slice(&v, &[2, 4, 4]).unwrap(),
    );
    w.insert(
      "model.layers.0.mlp.experts.gate_up_proj_bias".to_string(),
      Array::from_slice(&[0.0f32, 1., 2., 3.], &[1, 4]).unwrap(),
    );
    w.insert(
      "model.layers.0.mlp.experts.down_proj_bias".to_string(),
      Array::from_slice(&[0.0f32; 4], &[1, 4]).unwrap(),
    );
    let mut out = m.sanitize(w).unwrap();
    let g = out
      .get_mut("model.layers.0.mlp.experts.gate_proj")
      .unwrap()
      .to_vec::<f32>()
      .unwrap();
    let u = out
      .get_mut("model.layers.0.mlp.experts.up_proj")
      .unwrap()
      .to_vec::<f32>()
      .unwrap();
    assert_eq!(
      g.iter().step_by(4).copied().collect::<Vec<_>>(),
      vec![0., 2., 100., 102.]
    );
    assert_eq!(
      u.iter().step_by(4).copied().collect::<Vec<_>>(),
      vec![1., 3., 101., 103.]
    );
    assert_eq!(
      out
        .get_mut("model.layers.0.mlp.experts.up_proj.bias")
        .unwrap()
        .to_vec::<f32>()
        .unwrap(),
      vec![1., 3.]
    );
    assert!(out.contains_key("model.layers.0.mlp.experts.down_proj.bias"));
  }
}
