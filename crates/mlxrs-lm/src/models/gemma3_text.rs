//! Gemma 3 (text): mlx-lm's `models/gemma3_text.py` — the Gemma 2 block
//! with per-head `(1 + w)` q/k norms before RoPE, fused attention, and a
//! repeating pattern of sliding-window layers (local RoPE base) and global
//! layers (`rope_theta`, optional `rope_scaling`). Embeddings are scaled by
//! `sqrt(hidden_size)` rounded to bfloat16. The output head is tied exactly
//! when the checkpoint has no `lm_head.weight`.

use std::collections::BTreeSet;
use std::sync::Arc;

use mlxrs_core::{Array, Dtype, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, KvCacheKind, Linear, Module, RmsNorm, Rope, Weights, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::check_heads;
use super::checkpoint::{self, Shared, Trainable};
use super::fused_rows;
use super::mlp::GeluMlp;
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

fn d_hidden() -> i32 {
  1152
}
fn d_layers() -> i32 {
  26
}
fn d_inter() -> i32 {
  6912
}
fn d_heads() -> i32 {
  4
}
fn d_head_dim() -> i32 {
  256
}
fn d_eps() -> f32 {
  1.0e-6
}
fn d_vocab() -> i32 {
  262144
}
fn d_kv() -> i32 {
  1
}
fn d_theta() -> f32 {
  1_000_000.0
}
fn d_local_theta() -> f32 {
  10_000.0
}
fn d_qpas() -> f64 {
  256.0
}
fn d_window() -> i32 {
  512
}
fn d_pattern() -> i32 {
  6
}
fn d_max_pos() -> i32 {
  32768
}

/// `ModelArgs` of mlx-lm's gemma3_text.py (every field has a default there).
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3TextArgs {
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
  /// `head_dim`
  #[serde(default = "d_head_dim")]
  pub head_dim: i32,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `num_key_value_heads`
  #[serde(default = "d_kv")]
  pub num_key_value_heads: i32,
  /// `rope_theta` (global layers)
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_local_base_freq` (sliding layers, never scaled)
  #[serde(default = "d_local_theta")]
  pub rope_local_base_freq: f32,
  /// `query_pre_attn_scalar`: attention scale is its inverse square root.
  #[serde(default = "d_qpas")]
  pub query_pre_attn_scalar: f64,
  /// `sliding_window`
  #[serde(default = "d_window")]
  pub sliding_window: i32,
  /// `sliding_window_pattern`: layer `i` is global iff `(i + 1) % pattern == 0`
  /// (`layer_types` is not consulted, as in mlx-lm).
  #[serde(default = "d_pattern")]
  pub sliding_window_pattern: i32,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
  /// `rope_scaling` (global layers only)
  pub rope_scaling: Option<Value>,
}

/// `x + y`, except in float16 where the sum is taken in float32 and clipped
/// to the float16 range (mlx-lm's `clip_residual`).
fn clip_residual(x: &Array, y: &Array) -> Result<Array> {
  if x.dtype() != Dtype::Float16 {
    return ops::add(x, y);
  }
  let sum = ops::add(
    &ops::astype(x, Dtype::Float32)?,
    &ops::astype(y, Dtype::Float32)?,
  )?;
  let bound = 65504.0;
  let lo = Array::scalar_as(-bound, Dtype::Float32)?;
  let hi = Array::scalar_as(bound, Dtype::Float32)?;
  ops::astype(&ops::clip(&sum, Some(&lo), Some(&hi))?, Dtype::Float16)
}

struct Block {
  self_attn: Attention,
  mlp: GeluMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  pre_feedforward_layernorm: RmsNorm,
  post_feedforward_layernorm: RmsNorm,
  sliding: bool,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm,
  pre_feedforward_layernorm,
  post_feedforward_layernorm
});

impl Block {
  /// One decoded row per batch row, `x` (`[B, hidden]`), with the previous
  /// block's `post_feedforward_layernorm` output `delta` not yet added:
  /// `(h, r)`, whose sum is the block's output. Each pre-norm takes the add
  /// before it and the stacked projection after it as one kernel where it
  /// can (`fused_rows`; one row on a CUDA device), else MLX's ops run. Not
  /// for float16, whose residual adds are clipped (`clip_residual`).
  fn forward_row(
    &self,
    x: &Array,
    delta: Option<&Array>,
    mask: &AttnMask,
    cache: &mut KvCache,
  ) -> Result<(Array, Array)> {
    let (h, r) = fused_rows::attention_row(
      &self.input_layernorm,
      &self.self_attn,
      x,
      delta,
      mask,
      cache,
    )?;
    let r = self.post_attention_layernorm.forward(&r)?;
    let fused = match self.mlp.stacked_gate_up() {
      Some(gu) => self
        .pre_feedforward_layernorm
        .fused_with(&h, Some(&r), gu, false)?,
      None => None,
    };
    let (h, m) = match fused {
      Some((h, y)) => (h, self.mlp.forward_projected(&y)?),
      None => {
        let h = ops::add(&h, &r)?;
        let m = self
          .mlp
          .forward(&self.pre_feedforward_layernorm.forward(&h)?)?;
        (h, m)
      }
    };
    Ok((h, self.post_feedforward_layernorm.forward(&m)?))
  }

  /// Compile the kernels [`Block::forward_row`] runs (q|k|v without and
  /// with a pending residual, gate|up) now rather than at the first token.
  fn warm(&self) -> Result<()> {
    if let Some(qkv) = self.self_attn.stacked_qkv() {
      fused_rows::warm(&self.input_layernorm, qkv, &[false, true], false)?;
    }
    if let Some(gu) = self.mlp.stacked_gate_up() {
      fused_rows::warm(&self.pre_feedforward_layernorm, gu, &[true], false)?;
    }
    Ok(())
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = clip_residual(x, &self.post_attention_layernorm.forward(&r)?)?;
    let r = self
      .mlp
      .forward(&self.pre_feedforward_layernorm.forward(&h)?)?;
    clip_residual(&h, &self.post_feedforward_layernorm.forward(&r)?)
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

/// A Gemma 3 text decoder (mlx-lm `gemma3_text.Model`).
pub struct Gemma3Text {
  args: Gemma3TextArgs,
  model: Inner,
  /// Dropped at load time when the checkpoint has no `lm_head.weight`.
  lm_head: Option<Linear>,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(Gemma3Text { model, lm_head });

impl Gemma3Text {
  /// Build from parsed args.
  pub fn new(args: Gemma3TextArgs) -> Result<Gemma3Text> {
    let (h, n_heads, n_kv, hd) = (
      args.hidden_size,
      args.num_attention_heads,
      args.num_key_value_heads,
      args.head_dim,
    );
    check_heads("gemma3_text", h, n_heads, n_kv, args.num_hidden_layers)?;
    if args.sliding_window_pattern <= 0
      || args.sliding_window <= 0
      || args.query_pre_attn_scalar <= 0.0
    {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "config: sliding_window_pattern ({}), sliding_window ({}) and query_pre_attn_scalar ({}) must be positive",
        args.sliding_window_pattern, args.sliding_window, args.query_pre_attn_scalar
      )));
    }
    let eps = args.rms_norm_eps;
    let mut layers = Vec::new();
    for i in 0..args.num_hidden_layers {
      let sliding = (i + 1) % args.sliding_window_pattern != 0;
      let rope = if sliding {
        Rope::new(hd, false, args.rope_local_base_freq, 1.0)
      } else {
        Rope::from_config(
          hd,
          args.rope_theta,
          false,
          args.rope_scaling.as_ref(),
          Some(args.max_position_embeddings),
        )?
      };
      let dims = AttnDims {
        qk_norm: Some(eps),
        scale: args.query_pre_attn_scalar.powf(-0.5) as f32,
        ..AttnDims::new(h, n_heads, n_kv, hd, (false, false))
      };
      layers.push(Block {
        self_attn: Attention::new(dims, Some(rope)).with_plus_one_qk_norms(),
        mlp: GeluMlp::new(h, args.intermediate_size, true),
        input_layernorm: RmsNorm::new_plus_one(h, eps),
        post_attention_layernorm: RmsNorm::new_plus_one(h, eps),
        pre_feedforward_layernorm: RmsNorm::new_plus_one(h, eps),
        post_feedforward_layernorm: RmsNorm::new_plus_one(h, eps),
        sliding,
      });
    }
    Ok(Gemma3Text {
      model: Inner {
        embed_tokens: Embedding::new(args.vocab_size, h),
        layers: layers.into_iter().map(Shared::new).collect(),
        norm: RmsNorm::new_plus_one(h, eps),
      },
      lm_head: Some(Linear::new(h, args.vocab_size, false)),
      args,
      ckpt: None,
    })
  }
}

/// Registry entry for `gemma3_text`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(Gemma3Text::new(parse_args(config)?)?))
}

impl LanguageModel for Gemma3Text {
  fn fuse_projections(&mut self) -> Result<()> {
    for b in &self.model.layers {
      let mut b = b.lock();
      b.self_attn.fuse_projections()?;
      b.mlp.fuse_projections()?;
    }
    match &mut self.lm_head {
      Some(head) => head.keep_transposed()?,
      None => self.model.embed_tokens.keep_transposed()?,
    }
    // Compile the fused decode kernels at load, not at the first token.
    match self.model.layers.first() {
      Some(b) => b.lock().warm(),
      None => Ok(()),
    }
  }

  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.hidden_from_embeddings(&self.embed_tokens(tokens)?, caches, None)
  }

  fn embed_tokens(&self, tokens: &Array) -> Result<Array> {
    self.model.embed_tokens.forward(tokens)
  }

  fn hidden_from_embeddings(
    &self,
    embeddings: &Array,
    caches: &mut [KvCache],
    mask: Option<&AttnMask>,
  ) -> Result<Array> {
    super::base::check_caches(caches.len(), self.model.layers.len())?;
    let h = embeddings;
    // The scale is sqrt(hidden) rounded to bfloat16, then cast to h's dtype
    // (mlx-lm scales `input_embeddings` too).
    let scale = Array::scalar_as((self.args.hidden_size as f64).sqrt(), Dtype::Bfloat16)?;
    let mut h = ops::multiply(h, &ops::astype(&scale, h.dtype())?)?;
    let n = h.dim(1).unwrap_or(1);
    let global = self.model.layers.iter().position(|l| !l.lock().sliding);
    let global_mask = match (global, mask) {
      (_, Some(m)) => m.clone(),
      (Some(i), None) => caches[i].make_mask(n, None)?,
      (None, None) => AttnMask::None,
    };
    let sliding_mask = match (self.model.layers.first(), mask) {
      (_, Some(m)) => m.clone(),
      (Some(l), None) if l.lock().sliding => {
        caches[0].make_mask(n, Some(self.args.sliding_window))?
      }
      _ => AttnMask::None,
    };
    // One token per row (a decode step): the layers run on `[B, hidden]`
    // rows, as Llama's do (no flatten / unflatten nodes around the
    // matmuls; the shared `Attention` takes such rows).
    // Outside float16, each block's last residual add is left to the next
    // block's first norm (`Block::forward_row`).
    if n == 1 && self.ckpt.is_none() {
      let s = h.shape();
      let mut x = ops::reshape(&h, &[s[0], s[2]])?;
      let mut delta: Option<Array> = None;
      for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
        let layer = layer.lock();
        let mask = if layer.sliding {
          &sliding_mask
        } else {
          &global_mask
        };
        if x.dtype() == Dtype::Float16 {
          x = layer.forward(&x, mask, cache)?;
        } else {
          let (h, r) = layer.forward_row(&x, delta.as_ref(), mask, cache)?;
          x = h;
          delta = Some(r);
        }
      }
      let x = fused_rows::add_pending(&x, delta.as_ref())?;
      return ops::reshape(&self.model.norm.forward(&x)?, &s);
    }
    let mut pace = PrefillPace::for_input(&h);
    for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
      let mask = if layer.lock().sliding {
        &sliding_mask
      } else {
        &global_mask
      };
      let prefix = || format!("model.layers.{i}");
      h = checkpoint::block(&self.ckpt, layer, prefix, &h, mask, cache, Block::forward)?;
      pace.layer_done(&h)?;
    }
    self.model.norm.forward(&h)
  }

  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    crate::batch::check_padded_caches(caches)?;
    super::base::check_caches(caches.len(), self.model.layers.len())?;
    let n = tokens.dim(1).unwrap_or(1);
    let offset = caches.first().map(|c| c.offset).unwrap_or(0);
    if caches.iter().any(|c| c.offset != offset) {
      return Err(mlxrs_core::Error::InvalidArgument(
        "padded batches need every layer's cache at the same offset".into(),
      ));
    }
    // Standard caches of the whole width: sliding layers see their window
    // through the mask (python `BatchRotatingKVCache` rotates instead).
    let global = crate::batch::padded_mask(key_valid, n, offset, None)?;
    let sliding = crate::batch::padded_mask(key_valid, n, offset, Some(self.args.sliding_window))?;
    let e = self.embed_tokens(tokens)?;
    let scale = Array::scalar_as((self.args.hidden_size as f64).sqrt(), Dtype::Bfloat16)?;
    let mut h = ops::multiply(&e, &ops::astype(&scale, e.dtype())?)?;
    let mut pace = PrefillPace::for_input(&h);
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      let mask = if layer.lock().sliding {
        &sliding
      } else {
        &global
      };
      h = layer.lock().forward(&h, mask, cache)?;
      pace.layer_done(&h)?;
    }
    self.model.norm.forward(&h)
  }

  fn make_batch_caches(&self) -> Option<Vec<KvCache>> {
    Some(
      (0..self.model.layers.len())
        .map(|_| KvCache::standard())
        .collect(),
    )
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    match &self.lm_head {
      Some(head) => head.forward(hidden),
      None => self.model.embed_tokens.as_linear(hidden),
    }
  }

  /// Sliding layers get a rotating cache of `sliding_window` positions,
  /// global layers a standard one. As mlx-lm's `make_cache`, `max_kv_size`
  /// is not used.
  fn make_caches(&self, _max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .map(|l| {
        if l.lock().sliding {
          KvCache::new(KvCacheKind::Rotating {
            max_size: self.args.sliding_window,
            keep: 0,
          })
        } else {
          KvCache::standard()
        }
      })
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    if !w.has("lm_head.weight") {
      self.lm_head = None;
    }
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
