//! InternLM2 / InternLM2.5: mlx-lm's `models/internlm2.py` — the Llama block
//! under InternLM names (`model.tok_embeddings`, `attention.wqkv` / `wo`,
//! `feed_forward.w1` / `w3` / `w2`, `attention_norm`, `ffn_norm`, `output`)
//! with a fused `wqkv` laid out per key/value group (`[kv_heads, q_per_kv +
//! 2, head_dim]`), biases on `wqkv` / `wo` (`bias`, default on), untied by
//! default; `rope_scaling` must be `linear` or `dynamic`.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module, swiglu};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_heads, reject_unhandled};
use super::decoder::{Decoder, DecoderOpts, Layer, Names};
use crate::model::{LanguageModel, parse_args};

fn d_true() -> bool {
  true
}
fn d_max_pos() -> i32 {
  32768
}
fn d_theta() -> f32 {
  10000.0
}

/// `ModelArgs` of mlx-lm's internlm2.py.
#[derive(Debug, Clone, Deserialize)]
pub struct InternLm2Args {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `bias` (on `wqkv` and `wo`)
  #[serde(default = "d_true")]
  pub bias: bool,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
  /// `num_key_value_heads` (default `num_attention_heads`)
  pub num_key_value_heads: Option<i32>,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
}

struct Attention {
  wqkv: Linear,
  wo: Linear,
  n_kv_heads: i32,
  groups: i32,
  head_dim: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention { wqkv, wo });

impl Attention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let (g, hd, nkv) = (self.groups, self.head_dim, self.n_kv_heads);
    let qkv = ops::reshape(&self.wqkv.forward(x)?, &[b, l, nkv, g + 2, hd])?;
    let part = |start: i32, stop: i32| {
      ops::slice(
        &qkv,
        &[0, 0, 0, start, 0],
        &[b, l, nkv, stop, hd],
        &[1, 1, 1, 1, 1],
      )
    };
    let heads = |t: Array| -> Result<Array> {
      ops::transpose_axes(&ops::reshape(&t, &[b, l, -1, hd])?, &[0, 2, 1, 3])
    };
    let q = self.rope.forward(&heads(part(0, g)?)?, cache.offset)?;
    let k = self.rope.forward(&heads(part(g, g + 1)?)?, cache.offset)?;
    let v = heads(part(g + 1, g + 2)?)?;
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    self.wo.forward(&o)
  }
}

struct FeedForward {
  w1: Linear,
  w2: Linear,
  w3: Linear,
}
module!(FeedForward { w1, w2, w3 });

struct Block {
  attention: Attention,
  feed_forward: FeedForward,
  attention_norm: RmsNorm,
  ffn_norm: RmsNorm,
}
module!(Block {
  attention,
  feed_forward,
  attention_norm,
  ffn_norm
});

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .attention
      .forward(&self.attention_norm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let n = self.ffn_norm.forward(&h)?;
    let f = &self.feed_forward;
    let r = f
      .w2
      .forward(&swiglu(&f.w1.forward(&n)?, &f.w3.forward(&n)?)?)?;
    ops::add(&h, &r)
  }
}

/// mlx-lm internlm2.py's `sanitize`: drop the rotary frequency buffers.
fn sanitize(mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  weights.retain(|k, _| !k.contains("attention.rope.inv_freq"));
  Ok(weights)
}

/// Registry entry for `internlm2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  reject_unhandled(config, "internlm2", "rope_scaling", |v| {
    let t = v.get("type").or_else(|| v.get("rope_type"));
    matches!(t.and_then(Value::as_str), Some("linear" | "dynamic"))
  })?;
  let a: InternLm2Args = parse_args(config)?;
  let (h, nh) = (a.hidden_size, a.num_attention_heads);
  let nkv = a.num_key_value_heads.unwrap_or(nh);
  check_heads("internlm2", h, nh, nkv, a.num_hidden_layers)?;
  if h % nh != 0 {
    return Err(Error::InvalidArgument(format!(
      "config.json (internlm2): hidden_size ({h}) must be a multiple of num_attention_heads ({nh})"
    )));
  }
  let hd = h / nh;
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    let rope = Rope::from_config(
      hd,
      a.rope_theta,
      a.rope_traditional,
      a.rope_scaling.as_ref(),
      Some(a.max_position_embeddings),
    )?;
    layers.push(Box::new(Block {
      attention: Attention {
        wqkv: Linear::new(h, (nh + 2 * nkv) * hd, a.bias),
        wo: Linear::new(nh * hd, h, a.bias),
        n_kv_heads: nkv,
        groups: nh / nkv,
        head_dim: hd,
        scale: (hd as f32).powf(-0.5),
        rope,
      },
      feed_forward: FeedForward {
        w1: Linear::new(h, a.intermediate_size, false),
        w2: Linear::new(a.intermediate_size, h, false),
        w3: Linear::new(h, a.intermediate_size, false),
      },
      attention_norm: RmsNorm::new(h, eps),
      ffn_norm: RmsNorm::new(h, eps),
    }));
  }
  let decoder = Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied: false,
      stack_experts: None,
      sanitize: Some(sanitize),
    },
  )
  .with_names(Names {
    root: "model",
    embed: "tok_embeddings",
    layers: "layers",
    norm: "norm",
    head: "output",
  });
  Ok(Box::new(decoder))
}
