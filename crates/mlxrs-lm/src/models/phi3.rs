//! Phi-3 / Phi-4-mini: mlx-lm's `models/phi3.py` — a Llama-shaped block
//! with a fused `qkv_proj` (split q | k | v) and a fused `gate_up_proj`
//! (split gate | up), partial rotary embeddings (`partial_rotary_factor`)
//! and longrope ("su") scaling, untied by default. On the shared
//! `Decoder`; decoded rows take the fused norm + projection kernels
//! (`fused_rows`), its q | k | v and gate | up being one projection each.

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module, sdpa_with_cache};
use serde::Deserialize;
use serde_json::{Value, json};

use super::base::{check_heads, split_at};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::fused_rows::{self, RowAttention};
use super::mlp::FusedSwiGluMlp;
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  10000.0
}
fn d_one() -> f64 {
  1.0
}
fn d_max_pos() -> i32 {
  131072
}
fn d_orig_max_pos() -> i32 {
  4096
}

/// `ModelArgs` of mlx-lm's phi3.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Phi3Args {
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
  /// `num_key_value_heads` (default `num_attention_heads`)
  pub num_key_value_heads: Option<i32>,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_scaling` (`longrope` / `su` / `linear`; other types are ignored
  /// with plain RoPE, as mlx-lm does after its warning)
  pub rope_scaling: Option<Value>,
  /// `partial_rotary_factor`: the leading fraction of each head rotated.
  #[serde(default = "d_one")]
  pub partial_rotary_factor: f64,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
  /// `original_max_position_embeddings` (longrope's base length; the
  /// top-level key, not the one inside `rope_scaling`)
  #[serde(default = "d_orig_max_pos")]
  pub original_max_position_embeddings: i32,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
}

/// The rotary embedding phi3.py builds for `dims` rotated features.
fn make_rope(args: &Phi3Args, dims: i32) -> Result<Rope> {
  let plain = |scale: f32| Rope::new(dims, args.rope_traditional, args.rope_theta, scale);
  // An absent, null or empty `rope_scaling` means plain RoPE.
  let s = match &args.rope_scaling {
    Some(Value::Object(m)) if !m.is_empty() => m,
    None | Some(Value::Null) => return Ok(plain(1.0)),
    Some(Value::Object(_)) => return Ok(plain(1.0)),
    Some(other) => {
      return Err(Error::InvalidArgument(format!(
        "config: rope_scaling must be an object, got {other}"
      )));
    }
  };
  let (Some(ty), Some(long)) = (s.get("type"), s.get("long_factor")) else {
    return Err(Error::InvalidArgument(
      "config: rope_scaling must contain keys \"long_factor\" and \"type\"".into(),
    ));
  };
  match ty.as_str() {
    Some("longrope") | Some("su") => {
      // SuScaledRoPE: the long factors with the top-level original length;
      // phi3.py never passes a `long_mscale`.
      let cfg = json!({
        "type": "longrope",
        "long_factor": long,
        "original_max_position_embeddings": args.original_max_position_embeddings,
      });
      Rope::from_config(
        dims,
        args.rope_theta,
        false,
        Some(&cfg),
        Some(args.max_position_embeddings),
      )
    }
    Some("linear") => {
      let factor = s
        .get("factor")
        .and_then(Value::as_f64)
        .filter(|f| *f != 0.0)
        .ok_or_else(|| {
          Error::InvalidArgument(
            "config: linear rope_scaling needs a non-zero numeric \"factor\"".into(),
          )
        })?;
      Ok(plain((1.0 / factor) as f32))
    }
    _ => Ok(plain(1.0)),
  }
}

struct Attention {
  qkv_proj: Linear,
  o_proj: Linear,
  n_heads: i32,
  n_kv_heads: i32,
  head_dim: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention { qkv_proj, o_proj });

impl Attention {
  fn fuse_projections(&mut self) -> Result<()> {
    self.qkv_proj.keep_transposed()?;
    self.o_proj.keep_transposed()
  }
}

impl RowAttention for Attention {
  fn stacked_qkv(&self) -> Option<&Linear> {
    Some(&self.qkv_proj)
  }

  fn forward_projected(
    &self,
    x: &Array,
    qkv: Array,
    mask: &AttnMask,
    cache: &mut KvCache,
  ) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let (nq, nkv) = (self.n_heads, self.n_kv_heads);
    let (q, k, v) = if l == 1 {
      // One decoded token: `[B, 1, heads * d]` is already laid out as
      // `[B, heads, 1, d]`, so one reshape, and the query and key heads
      // rotate in one RoPE call.
      let all = ops::reshape(&qkv, &[b, nq + 2 * nkv, 1, self.head_dim])?;
      let [qk, v] = split_at(&all, &[nq + nkv], 1)?;
      let [q, k] = split_at(&self.rope.forward(&qk, cache.offset)?, &[nq], 1)?;
      (q, k, v)
    } else {
      let hd = self.head_dim;
      let [q, k, v] = split_at(&qkv, &[nq * hd, (nq + nkv) * hd], -1)?;
      let heads =
        |t: Array, n: i32| ops::transpose_axes(&ops::reshape(&t, &[b, l, n, -1])?, &[0, 2, 1, 3]);
      let q = self.rope.forward(&heads(q, nq)?, cache.offset)?;
      let k = self.rope.forward(&heads(k, nkv)?, cache.offset)?;
      (q, k, heads(v, nkv)?)
    };
    let (k, v) = cache.update_and_fetch(&k, &v)?;
    let o = sdpa_with_cache(&q, &k, &v, self.scale, mask, None)?;
    let o = if l == 1 {
      ops::reshape(&o, &[b, 1, -1])?
    } else {
      ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?
    };
    self.o_proj.forward(&o)
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    self.forward_projected(x, self.qkv_proj.forward(x)?, mask, cache)
  }
}

struct Block {
  self_attn: Attention,
  mlp: FusedSwiGluMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Block {
  /// The block's parts for [`fused_rows::PrenormBlock`].
  fn parts(&self) -> fused_rows::PrenormBlock<'_, Attention, FusedSwiGluMlp> {
    fused_rows::PrenormBlock {
      input_norm: &self.input_layernorm,
      attn: &self.self_attn,
      post_norm: &self.post_attention_layernorm,
      mlp: &self.mlp,
    }
  }
}

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let r = self
      .mlp
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &r)
  }

  fn fuse_projections(&mut self) -> Result<()> {
    self.self_attn.fuse_projections()?;
    self.mlp.fuse_projections()?;
    self.parts().warm()
  }

  fn forward_row(
    &self,
    x: &Array,
    delta: Option<&Array>,
    mask: &AttnMask,
    cache: &mut KvCache,
    _shared: &mut Option<(Array, Array)>,
  ) -> Result<(Array, Option<Array>)> {
    let (h, r) = self.parts().row(x, delta, mask, cache)?;
    Ok((h, Some(r)))
  }
}

/// Registry entry for `phi3` (mlx-lm `phi3.Model`).
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let args: Phi3Args = parse_args(config)?;
  let h = args.hidden_size;
  let n_heads = args.num_attention_heads;
  let n_kv = args.num_key_value_heads.unwrap_or(n_heads);
  check_heads("phi3", h, n_heads, n_kv, args.num_hidden_layers)?;
  // phi3.py ignores any `head_dim` key.
  let hd = h / n_heads;
  let rope_dim = (hd as f64 * args.partial_rotary_factor) as i32;
  if rope_dim <= 0 || rope_dim > hd {
    return Err(Error::InvalidArgument(format!(
      "config: partial_rotary_factor {} gives {rope_dim} rotary dims of head_dim {hd}; need 1..={hd}",
      args.partial_rotary_factor
    )));
  }
  let eps = args.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..args.num_hidden_layers {
    layers.push(Box::new(Block {
      self_attn: Attention {
        qkv_proj: Linear::new(h, (n_heads + 2 * n_kv) * hd, false),
        o_proj: Linear::new(n_heads * hd, h, false),
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: (hd as f32).powf(-0.5),
        rope: make_rope(&args, rope_dim)?,
      },
      mlp: FusedSwiGluMlp::new(h, args.intermediate_size),
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
    }));
  }
  let tied = args.tie_word_embeddings;
  Ok(Box::new(Decoder::new(
    Embedding::new(args.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "norm",
    (!tied).then(|| Linear::new(h, args.vocab_size, false)),
    DecoderOpts {
      vocab_size: args.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied,
      stack_experts: None,
      sanitize: None,
    },
  )))
}
