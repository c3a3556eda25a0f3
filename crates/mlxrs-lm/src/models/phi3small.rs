//! Phi-3-small: mlx-lm's `models/phi3small.py` — LayerNorm blocks; one
//! fused `query_key_value` projection (per kv head: its query heads, then
//! k, then v) and `dense`, both with biases; muP scalings (embeddings times
//! `mup_embedding_multiplier`, attention scale `mup_attn_multiplier /
//! head_dim`, logits divided by `mup_width_multiplier`); every
//! `dense_attention_every_n_layers`-th layer (from layer 0) attends
//! block-sparsely, computed as mlx-lm does (dense scores plus its causal
//! mask *added* as 0/1, plus `-inf` outside the local / vertical-stride
//! blocks, aligned to the last query rows); the GeGELU MLP (interleaved
//! gelu / linear halves of `up_proj`, clipped at `gegelu_limit`); tied
//! embeddings, with the logits of the fixed padding ids
//! 100256..100351 set to `-inf` (those inside the vocabulary).

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::attention::causal_mask;
use mlxrs_nn::{AttnMask, Embedding, KvCache, LayerNorm, Linear, Rope, Weights, module};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_heads, slice_axis};
use super::decoder::{Decoder, DecoderOpts, Layer, Names};
use crate::model::{LanguageModel, parse_args};

fn d_one() -> f32 {
  1.0
}
fn d_true() -> bool {
  true
}
fn d_ten() -> f32 {
  10.0
}
fn d_eight() -> f32 {
  8.0
}
fn d_base() -> f32 {
  1000000.0
}
fn d_block() -> i32 {
  64
}
fn d_local() -> i32 {
  16
}
fn d_stride() -> i32 {
  8
}

/// `ModelArgs` of mlx-lm's phi3small.py (same defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Phi3SmallArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `dense_attention_every_n_layers` (layers `i % n == 0` are block-sparse)
  pub dense_attention_every_n_layers: i32,
  /// `ff_intermediate_size`
  pub ff_intermediate_size: i32,
  /// `gegelu_limit`
  pub gegelu_limit: f32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `layer_norm_epsilon`
  pub layer_norm_epsilon: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `mup_attn_multiplier`
  #[serde(default = "d_one")]
  pub mup_attn_multiplier: f32,
  /// `mup_use_scaling`
  #[serde(default = "d_true")]
  pub mup_use_scaling: bool,
  /// `mup_embedding_multiplier` (0: none)
  #[serde(default = "d_ten")]
  pub mup_embedding_multiplier: f32,
  /// `mup_width_multiplier` (0: none)
  #[serde(default = "d_eight")]
  pub mup_width_multiplier: f32,
  /// `rope_embedding_base`
  #[serde(default = "d_base")]
  pub rope_embedding_base: f32,
  /// `rope_position_scale`
  #[serde(default = "d_one")]
  pub rope_position_scale: f32,
  /// `blocksparse_block_size` (32 or 64)
  #[serde(default = "d_block")]
  pub blocksparse_block_size: i32,
  /// `blocksparse_num_local_blocks`
  #[serde(default = "d_local")]
  pub blocksparse_num_local_blocks: i32,
  /// `blocksparse_vert_stride`
  #[serde(default = "d_stride")]
  pub blocksparse_vert_stride: i32,
}

/// Block-sparse settings of a layer.
#[derive(Debug, Clone, Copy)]
struct BlockSparse {
  block: i32,
  local: i32,
  stride: i32,
}

/// `Attention` of phi3small.py.
struct P3sAttention {
  query_key_value: Linear,
  dense: Linear,
  n_heads: i32,
  n_kv_heads: i32,
  head_dim: i32,
  scale: f32,
  rope: Rope,
  sparse: Option<BlockSparse>,
}
module!(P3sAttention {
  query_key_value,
  dense
});

impl P3sAttention {
  /// mlx-lm's `_block_sparse_mask(q_len, kv_len)` (the dense one):
  /// `[kv_heads, q_per_kv, q_len, kv_len]` booleans.
  fn block_sparse_mask(&self, bs: BlockSparse, q_len: i32, kv_len: i32) -> Result<Array> {
    let b = bs.block;
    let kv_blocks = (kv_len + b - 1) / b;
    let q_blocks = (q_len + b - 1) / b;
    let i32s = |a: i32, z: i32| ops::arange(a as f64, z as f64, 1.0, Dtype::Int32);
    let q_pos = ops::reshape(&i32s(kv_blocks - q_blocks, kv_blocks)?, &[1, -1, 1])?;
    let k_pos = ops::reshape(&i32s(0, kv_blocks)?, &[1, 1, -1])?;
    let vert = ops::add(
      &ops::reshape(&i32s(0, kv_blocks)?, &[1, -1])?,
      &ops::reshape(&i32s(1, self.n_heads + 1)?, &[-1, 1])?,
    )?;
    let vert = ops::remainder(&vert, &Array::scalar(bs.stride))?;
    let vert = ops::expand_dims(&ops::equal(&vert, &Array::scalar(0i32))?, 1)?;
    let diff = ops::subtract(&q_pos, &k_pos)?;
    let local = ops::less(&diff, &Array::scalar(bs.local))?;
    let block_mask = ops::logical_and(
      &ops::greater_equal(&q_pos, &k_pos)?,
      &ops::logical_or(&local, &vert)?,
    )?;
    let block_mask = ops::reshape(
      &block_mask,
      &[
        self.n_kv_heads,
        self.n_heads / self.n_kv_heads,
        q_blocks,
        kv_blocks,
      ],
    )?;
    let dense = ops::repeat_axis(&ops::repeat_axis(&block_mask, b, -1)?, b, -2)?;
    let rows = q_blocks * b;
    let dense = slice_axis(&dense, -2, rows - q_len, rows)?;
    slice_axis(&dense, -1, 0, kv_len)
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let per = self.n_heads / self.n_kv_heads;
    let qkv = ops::reshape(
      &self.query_key_value.forward(x)?,
      &[b, l, -1, per + 2, self.head_dim],
    )?;
    let q = ops::flatten(&slice_axis(&qkv, -2, 0, per)?, -3, -2)?;
    let k = ops::squeeze_axes(&slice_axis(&qkv, -2, per, per + 1)?, &[-2])?;
    let v = ops::squeeze_axes(&slice_axis(&qkv, -2, per + 1, per + 2)?, &[-2])?;
    let t = |a: &Array| ops::transpose_axes(a, &[0, 2, 1, 3]);
    let q = self.rope.forward(&t(&q)?, cache.offset)?;
    let k = self.rope.forward(&t(&k)?, cache.offset)?;
    let v = t(&v)?;
    let o = match self.sparse {
      None => mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?,
      Some(bs) => {
        let (k, v) = cache.update_and_fetch(&k, &v)?;
        let kv_len = k.dim(2).unwrap_or(l);
        let q = ops::multiply(&Array::scalar_as(self.scale as f64, q.dtype())?, &q)?;
        let q = ops::reshape(&q, &[b, self.n_kv_heads, per, l, -1])?;
        let k = ops::expand_dims(&k, 2)?;
        let v = ops::expand_dims(&v, 2)?;
        let mut scores = ops::matmul(&q, &ops::swapaxes(&k, -1, -2)?)?;
        // mlx-lm adds its (boolean) mask to the scores: 1 where allowed.
        let m = match mask {
          AttnMask::None => None,
          AttnMask::Causal => Some(causal_mask(l, kv_len - l, None)?),
          AttnMask::Array(m) => Some(m.clone()),
        };
        if let Some(m) = m {
          scores = ops::add(&scores, &ops::astype(&m, scores.dtype())?)?;
        }
        let dense = self.block_sparse_mask(bs, l, kv_len)?;
        let zero = Array::scalar_as(0.0, scores.dtype())?;
        let ninf = Array::scalar_as(f64::NEG_INFINITY, scores.dtype())?;
        scores = ops::add(&scores, &ops::where_(&dense, &zero, &ninf)?)?;
        let p = ops::softmax_axis(&scores, -1, true)?;
        ops::reshape(&ops::matmul(&p, &v)?, &[b, self.n_heads, l, -1])?
      }
    };
    self.dense.forward(&ops::reshape(&t(&o)?, &[b, l, -1])?)
  }
}

/// `MLP`: GeGELU over `up_proj`'s interleaved halves.
struct Mlp {
  up_proj: Linear,
  down_proj: Linear,
  limit: f32,
}
module!(Mlp { up_proj, down_proj });

impl Mlp {
  fn forward(&self, x: &Array) -> Result<Array> {
    let u = self.up_proj.forward(x)?;
    let s = u.shape();
    let nd = s.len();
    // x[..., ::2] and x[..., 1::2]
    let strided = |start: i32| -> Result<Array> {
      let mut st = vec![0; nd];
      let mut strides = vec![1; nd];
      st[nd - 1] = start;
      strides[nd - 1] = 2;
      ops::slice(&u, &st, &s, &strides)
    };
    let (g, lin) = (strided(0)?, strided(1)?);
    let dt = u.dtype();
    let lim = Array::scalar_as(self.limit as f64, dt)?;
    let nlim = Array::scalar_as(-self.limit as f64, dt)?;
    let g = ops::where_(&ops::isinf(&g)?, &g, &ops::clip(&g, None, Some(&lim))?)?;
    let lin = ops::where_(
      &ops::isinf(&lin)?,
      &lin,
      &ops::clip(&lin, Some(&nlim), Some(&lim))?,
    )?;
    let gelu = ops::multiply(
      &g,
      &ops::sigmoid(&ops::multiply(&Array::scalar_as(1.702, dt)?, &g)?)?,
    )?;
    let out = ops::multiply(&gelu, &ops::add(&lin, &Array::scalar_as(1.0, dt)?)?)?;
    self.down_proj.forward(&out)
  }
}

/// `TransformerBlock`.
struct Block {
  self_attn: P3sAttention,
  mlp: Mlp,
  input_layernorm: LayerNorm,
  post_attention_layernorm: LayerNorm,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

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
}

/// The token ids mlx-lm's phi3small masks out of the logits.
fn dummy_ids() -> Vec<i32> {
  let mut v = vec![100256, 100258, 100259, 100260, 100264, 100265];
  v.extend(100267..100352);
  v
}

/// `out[..., ids] = -inf` for logits `[..., vocab]` (ids inside the
/// vocabulary).
fn mask_ids(out: &Array, ids: &Array, vocab: i32) -> Result<Array> {
  // A [vocab] row of 0 / -inf, broadcast over the logits.
  let row = ops::zeros(&[vocab], out.dtype())?;
  let ninf = Array::scalar_as(f64::NEG_INFINITY, out.dtype())?;
  let n = ids.dim(0).unwrap_or(0);
  let row = ops::put_along_axis(&row, ids, &ops::broadcast_to(&ninf, &[n])?, 0)?;
  ops::add(out, &row)
}

/// mlx-lm `phi3small.Model`: the shared decoder plus the padding-id mask.
pub struct Phi3Small {
  inner: Decoder,
  /// The padding ids inside the vocabulary.
  masked: Option<Array>,
  vocab_size: i32,
}

impl LanguageModel for Phi3Small {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.inner.hidden(tokens, caches)
  }
  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    self.inner.hidden_padded(tokens, caches, key_valid)
  }
  /// The tied head, divided by `mup_width_multiplier`, padding ids at
  /// `-inf`.
  fn logits(&self, hidden: &Array) -> Result<Array> {
    let out = self.inner.logits(hidden)?;
    match &self.masked {
      Some(ids) => mask_ids(&out, ids, self.vocab_size),
      None => Ok(out),
    }
  }
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self.inner.make_caches(max_kv_size)
  }
  fn load(&mut self, w: &mut Weights) {
    self.inner.load(w);
  }
  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    self.inner.sanitize(weights)
  }
  fn vocab_size(&self) -> i32 {
    self.vocab_size
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    self.inner.visit(f);
  }
  fn set_grad_checkpoint(
    &mut self,
    trainable: Option<std::collections::BTreeSet<String>>,
  ) -> Result<()> {
    self.inner.set_grad_checkpoint(trainable)
  }
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (phi3small): {msg}"))
}

/// Registry entry for `phi3small`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: Phi3SmallArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("phi3small", h, nh, nkv, a.num_hidden_layers)?;
  if a.dense_attention_every_n_layers <= 0 {
    return Err(bad(
      "field \"dense_attention_every_n_layers\" must be positive".into(),
    ));
  }
  if ![32, 64].contains(&a.blocksparse_block_size) {
    return Err(bad(format!(
      "field \"blocksparse_block_size\" = {} is not supported (32, 64)",
      a.blocksparse_block_size
    )));
  }
  if a.blocksparse_vert_stride <= 0 {
    return Err(bad(
      "field \"blocksparse_vert_stride\" must be positive".into(),
    ));
  }
  let hd = h / nh;
  let scale = if a.mup_use_scaling {
    a.mup_attn_multiplier / hd as f32
  } else {
    1.0 / (hd as f32).sqrt()
  };
  let eps = a.layer_norm_epsilon;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let sparse = (i % a.dense_attention_every_n_layers == 0).then_some(BlockSparse {
      block: a.blocksparse_block_size,
      local: a.blocksparse_num_local_blocks,
      stride: a.blocksparse_vert_stride,
    });
    layers.push(Box::new(Block {
      self_attn: P3sAttention {
        query_key_value: Linear::new(h, (nh + 2 * nkv) * hd, true),
        dense: Linear::new(h, h, true),
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale,
        rope: Rope::new(hd, false, a.rope_embedding_base, a.rope_position_scale),
        sparse,
      },
      mlp: Mlp {
        up_proj: Linear::new(h, 2 * a.ff_intermediate_size, true),
        down_proj: Linear::new(a.ff_intermediate_size, h, true),
        limit: a.gegelu_limit,
      },
      input_layernorm: LayerNorm::new(h, eps, true, true),
      post_attention_layernorm: LayerNorm::new(h, eps, true, true),
    }));
  }
  let inner = Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(LayerNorm::new(h, eps, true, true)),
    "final_layernorm",
    None,
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: (a.mup_width_multiplier != 0.0).then(|| 1.0 / a.mup_width_multiplier),
      embed_scale: (a.mup_embedding_multiplier != 0.0).then_some(a.mup_embedding_multiplier),
      tied: true,
      stack_experts: None,
      sanitize: None,
    },
  )
  .with_names(Names {
    root: "model",
    embed: "embed_tokens",
    layers: "layers",
    norm: "final_layernorm",
    head: "lm_head",
  })
  .without_padded_batches("its block-sparse attention masks by absolute position blocks");
  let ids: Vec<i32> = dummy_ids()
    .into_iter()
    .filter(|i| *i < a.vocab_size)
    .collect();
  let masked = if ids.is_empty() {
    None
  } else {
    let n = ids.len() as i32;
    Some(Array::from_slice(&ids, &[n])?)
  };
  Ok(Box::new(Phi3Small {
    inner,
    masked,
    vocab_size: a.vocab_size,
  }))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn padding_ids_inside_the_vocabulary_are_masked() {
    let vocab = 100_262;
    let ids: Vec<i32> = dummy_ids().into_iter().filter(|i| *i < vocab).collect();
    assert_eq!(ids, [100256, 100258, 100259, 100260]);
    let ids = Array::from_slice(&ids, &[4]).unwrap();
    let out = ops::ones(&[2, vocab], Dtype::Float32).unwrap();
    let mut m = mask_ids(&out, &ids, vocab).unwrap();
    let v = m.to_vec::<f32>().unwrap();
    for row in v.chunks(vocab as usize) {
      let inf: Vec<usize> = (0..row.len()).filter(|i| row[*i].is_infinite()).collect();
      assert_eq!(inf, [100256, 100258, 100259, 100260]);
      assert_eq!(row[100257], 1.0);
    }
  }
}
