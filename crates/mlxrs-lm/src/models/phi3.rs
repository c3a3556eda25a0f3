//! Phi-3 / Phi-4-mini: mlx-lm's `models/phi3.py` — a Llama-shaped block
//! with a fused `qkv_proj` (split q | k | v) and a fused `gate_up_proj`
//! (split gate | up), partial rotary embeddings (`partial_rotary_factor`)
//! and longrope ("su") scaling, untied by default.

use std::collections::BTreeSet;
use std::sync::Arc;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, Linear, Module, RmsNorm, Rope, Weights, module, sdpa_with_cache,
  swiglu,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::base::check_heads;
use super::checkpoint::{self, Shared, Trainable};
use super::prefill_pace::PrefillPace;
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
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let q_end = self.n_heads * self.head_dim;
    let k_end = q_end + self.n_kv_heads * self.head_dim;
    let mut parts =
      ops::split_sections(&self.qkv_proj.forward(x)?, &[q_end, k_end], -1)?.into_iter();
    let (Some(q), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
      return Err(Error::Mlx("qkv split returned fewer than 3 parts".into()));
    };
    let heads =
      |t: Array, n: i32| ops::transpose_axes(&ops::reshape(&t, &[b, l, n, -1])?, &[0, 2, 1, 3]);
    let q = heads(q, self.n_heads)?;
    let k = heads(k, self.n_kv_heads)?;
    let v = heads(v, self.n_kv_heads)?;
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let (k, v) = cache.update_and_fetch(&k, &v)?;
    let o = sdpa_with_cache(&q, &k, &v, self.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    self.o_proj.forward(&o)
  }
}

struct Mlp {
  gate_up_proj: Linear,
  down_proj: Linear,
}
module!(Mlp {
  gate_up_proj,
  down_proj
});

impl Mlp {
  fn forward(&self, x: &Array) -> Result<Array> {
    let mut parts = ops::split(&self.gate_up_proj.forward(x)?, 2, -1)?.into_iter();
    let (Some(gate), Some(up)) = (parts.next(), parts.next()) else {
      return Err(Error::Mlx(
        "gate_up split returned fewer than 2 parts".into(),
      ));
    };
    self.down_proj.forward(&swiglu(&gate, &up)?)
  }
}

struct Block {
  self_attn: Attention,
  mlp: Mlp,
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
  layers: Vec<Shared<Block>>,
  norm: RmsNorm,
}
module!(Inner {
  embed_tokens,
  layers,
  norm
});

/// A Phi-3 decoder (mlx-lm `phi3.Model`).
pub struct Phi3 {
  args: Phi3Args,
  model: Inner,
  lm_head: Option<Linear>,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(Phi3 { model, lm_head });

impl Phi3 {
  /// Build from parsed args.
  pub fn new(args: Phi3Args) -> Result<Phi3> {
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
    let mut layers = Vec::new();
    for _ in 0..args.num_hidden_layers {
      layers.push(Block {
        self_attn: Attention {
          qkv_proj: Linear::new(h, (n_heads + 2 * n_kv) * hd, false),
          o_proj: Linear::new(n_heads * hd, h, false),
          n_heads,
          n_kv_heads: n_kv,
          head_dim: hd,
          scale: (hd as f32).powf(-0.5),
          rope: make_rope(&args, rope_dim)?,
        },
        mlp: Mlp {
          gate_up_proj: Linear::new(h, 2 * args.intermediate_size, false),
          down_proj: Linear::new(args.intermediate_size, h, false),
        },
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
      });
    }
    let lm_head = (!args.tie_word_embeddings).then(|| Linear::new(h, args.vocab_size, false));
    Ok(Phi3 {
      model: Inner {
        embed_tokens: Embedding::new(args.vocab_size, h),
        layers: layers.into_iter().map(Shared::new).collect(),
        norm: RmsNorm::new(h, eps),
      },
      lm_head,
      args,
      ckpt: None,
    })
  }
}

/// Registry entry for `phi3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(Phi3::new(parse_args(config)?)?))
}

impl Phi3 {
  /// The decoder stack; `key_valid` (rows of a left-padded batch, see
  /// [`LanguageModel::hidden_padded`]) replaces the causal mask by padded ones.
  fn run(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
  ) -> Result<Array> {
    if caches.len() != self.model.layers.len() {
      return Err(Error::InvalidArgument(format!(
        "{} caches for {} layers",
        caches.len(),
        self.model.layers.len()
      )));
    }
    let mut h = self.model.embed_tokens.forward(tokens)?;
    let n = tokens.dim(-1).unwrap_or(1);
    let mask = match (caches.first(), key_valid) {
      (Some(c), Some(kv)) => crate::batch::padded_mask(kv, n, c.offset, None)?,
      (Some(c), None) => c.make_mask(n, None)?,
      (None, _) => AttnMask::None,
    };
    let mut pace = PrefillPace::for_input(&h);
    for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
      let prefix = || format!("model.layers.{i}");
      h = checkpoint::block(&self.ckpt, layer, prefix, &h, &mask, cache, Block::forward)?;
      pace.layer_done(&h)?;
    }
    self.model.norm.forward(&h)
  }
}

impl LanguageModel for Phi3 {
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
    match &self.lm_head {
      Some(head) => head.forward(hidden),
      None => self.model.embed_tokens.as_linear(hidden),
    }
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    super::base::default_caches(self.model.layers.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
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
