//! DBRX (databricks/dbrx-base, dbrx-instruct): mlx-lm's `models/dbrx.py` —
//! `transformer.wte` / `blocks` / `norm_f`, bias-free LayerNorms, one fused
//! `Wqkv` projection clipped to `±clip_qkv`, a plain RoPE, and a softmax
//! top-k MoE (weights L1-renormalized) whose experts stay separate MLPs
//! (`ffn.experts.{e}.{w1,v1,w2}`: `w2(silu(w1 x) * v1 x)`). `sanitize`
//! splits HF's stacked `ffn.experts.mlp.{w1,v1,w2}` per expert (`w2`
//! transposed).

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, LayerNorm, Linear, Rope, module, swiglu};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_heads, check_moe, last_axis};
use super::decoder::{Decoder, DecoderOpts, Layer, Names};
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's dbrx.py.
#[derive(Debug, Clone, Deserialize)]
pub struct DbrxArgs {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `d_model`
  pub d_model: i32,
  /// `ffn_config` (`ffn_hidden_size`, `moe_num_experts`, `moe_top_k`)
  pub ffn_config: FfnConfig,
  /// `attn_config` (`kv_n_heads`, `clip_qkv`, `rope_theta`)
  pub attn_config: AttnConfig,
  /// `n_layers`
  pub n_layers: i32,
  /// `n_heads`
  pub n_heads: i32,
}

/// DBRX `ffn_config`.
#[derive(Debug, Clone, Deserialize)]
pub struct FfnConfig {
  /// `ffn_hidden_size` (per expert)
  pub ffn_hidden_size: i32,
  /// `moe_num_experts`
  pub moe_num_experts: i32,
  /// `moe_top_k`
  pub moe_top_k: i32,
}

/// DBRX `attn_config`.
#[derive(Debug, Clone, Deserialize)]
pub struct AttnConfig {
  /// `kv_n_heads`
  pub kv_n_heads: i32,
  /// `clip_qkv` (null: no clipping)
  pub clip_qkv: Option<f32>,
  /// `rope_theta`
  pub rope_theta: f32,
}

/// `Attention` of dbrx.py.
struct DbrxAttention {
  wqkv: Linear,
  out_proj: Linear,
  n_heads: i32,
  n_kv_heads: i32,
  head_dim: i32,
  clip: Option<f32>,
  rope: Rope,
}
module!(DbrxAttention { wqkv => "Wqkv", out_proj });

impl DbrxAttention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l, d) = (s[0], s[1], s[2]);
    let mut qkv = self.wqkv.forward(x)?;
    if let Some(c) = self.clip {
      let lo = Array::scalar_as(-c as f64, qkv.dtype())?;
      let hi = Array::scalar_as(c as f64, qkv.dtype())?;
      qkv = ops::clip(&qkv, Some(&lo), Some(&hi))?;
    }
    let kv = self.head_dim * self.n_kv_heads;
    let parts = ops::split_sections(&qkv, &[d, d + kv], -1)?;
    let [q, k, v] = <[Array; 3]>::try_from(parts)
      .map_err(|_| Error::Mlx("split did not return three parts".into()))?;
    let heads = |t: &Array, n: i32| -> Result<Array> {
      ops::transpose_axes(&ops::reshape(t, &[b, l, n, -1])?, &[0, 2, 1, 3])
    };
    let q = self.rope.forward(&heads(&q, self.n_heads)?, cache.offset)?;
    let k = self
      .rope
      .forward(&heads(&k, self.n_kv_heads)?, cache.offset)?;
    let v = heads(&v, self.n_kv_heads)?;
    let scale = (self.head_dim as f32).powf(-0.5);
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, scale, mask, None)?;
    self.out_proj.forward(&ops::reshape(
      &ops::transpose_axes(&o, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)
  }
}

/// `NormAttnNorm`.
struct NormAttnNorm {
  norm_1: LayerNorm,
  norm_2: LayerNorm,
  attn: DbrxAttention,
}
module!(NormAttnNorm {
  norm_1,
  norm_2,
  attn
});

/// One expert (`MLP` of dbrx.py).
struct Expert {
  v1: Linear,
  w1: Linear,
  w2: Linear,
}
module!(Expert { v1, w1, w2 });

impl Expert {
  fn forward(&self, x: &Array) -> Result<Array> {
    self
      .w2
      .forward(&swiglu(&self.w1.forward(x)?, &self.v1.forward(x)?)?)
  }
}

/// `Router`.
struct Router {
  layer: Linear,
}
module!(Router { layer });

/// `SparseMoeBlock`.
struct Ffn {
  router: Router,
  experts: Vec<Expert>,
  top_k: i32,
}
module!(Ffn { router, experts });

impl Ffn {
  fn forward(&self, x: &Array) -> Result<Array> {
    let shape = x.shape();
    let d = shape.last().copied().unwrap_or(0);
    let x = ops::reshape(x, &[-1, d])?;
    let n = x.dim(0).unwrap_or(0);
    let ne = self.top_k;
    let gates = ops::softmax_axis(
      &ops::astype(&self.router.layer.forward(&x)?, Dtype::Float32)?,
      -1,
      false,
    )?;
    let inds = ops::stop_gradient(&last_axis(
      &ops::argpartition_axis(&ops::negative(&gates)?, ne - 1, -1)?,
      0,
      ne,
    )?)?;
    let scores = ops::take_along_axis(&gates, &inds, -1)?;
    let l1 = ops::sum_axis(&ops::abs(&scores)?, -1, true)?;
    let scores = ops::astype(&ops::divide(&scores, &l1)?, x.dtype())?;
    let y = if n == 1 {
      // One token (decoding): only its experts, as mlx-lm's loop does.
      let mut ids = inds.clone();
      let ids = ids.to_vec::<u32>()?;
      let mut outs = Vec::with_capacity(ids.len());
      for e in ids {
        let ex = self
          .experts
          .get(e as usize)
          .ok_or_else(|| Error::Mlx(format!("dbrx: expert {e} out of range")))?;
        outs.push(ex.forward(&x)?);
      }
      ops::stack_axis(&outs, 1)?
    } else {
      // Every expert over every token, then each token's top-k gathered:
      // the same sums as mlx-lm's per-token loop, in a few large ops.
      let all: Vec<Array> = self
        .experts
        .iter()
        .map(|ex| ex.forward(&x))
        .collect::<Result<_>>()?;
      let all = ops::stack_axis(&all, 1)?;
      ops::take_along_axis(&all, &ops::expand_dims(&inds, -1)?, 1)?
    };
    let y = ops::sum_axis(
      &ops::multiply(&y, &ops::expand_dims(&scores, -1)?)?,
      1,
      false,
    )?;
    ops::reshape(&y, &shape)
  }
}

/// `DecoderLayer`: `h = x + attn(norm_1(x)); h + ffn(norm_2(h))`.
struct Block {
  norm_attn_norm: NormAttnNorm,
  ffn: Ffn,
}
module!(Block {
  norm_attn_norm,
  ffn
});

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let na = &self.norm_attn_norm;
    let h = ops::add(&na.attn.forward(&na.norm_1.forward(x)?, mask, cache)?, x)?;
    ops::add(&self.ffn.forward(&na.norm_2.forward(&h)?)?, &h)
  }

  /// dbrx.py's sanitize for this block: HF's stacked
  /// `ffn.experts.mlp.{w1,v1,w2}` (`[experts * ffn, d_model]`) split into
  /// `ffn.experts.{e}.*.weight`, `w2` transposed.
  fn sanitize(&self, prefix: &str, w: &mut HashMap<String, Array>) -> Result<()> {
    let n = self.ffn.experts.len() as i32;
    let keys: Vec<String> = w
      .keys()
      .filter(|k| k.starts_with(&format!("{prefix}.")) && k.contains("experts.mlp"))
      .cloned()
      .collect();
    for k in keys {
      let Some(v) = w.remove(&k) else { continue };
      for (e, part) in ops::split(&v, n, 0)?.into_iter().enumerate() {
        let part = if k.ends_with("w2") {
          ops::transpose(&part)?
        } else {
          part
        };
        w.insert(
          format!("{}.weight", k.replace(".mlp", &format!(".{e}"))),
          part,
        );
      }
    }
    Ok(())
  }
}

/// Registry entry for `dbrx`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: DbrxArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.d_model, a.n_heads, a.attn_config.kv_n_heads);
  check_heads("dbrx", h, nh, nkv, a.n_layers)?;
  let f = &a.ffn_config;
  check_moe("dbrx", f.moe_num_experts, f.moe_top_k)?;
  let hd = h / nh;
  let ln = || LayerNorm::new(h, 1e-5, true, false);
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..a.n_layers {
    layers.push(Box::new(Block {
      norm_attn_norm: NormAttnNorm {
        norm_1: ln(),
        norm_2: ln(),
        attn: DbrxAttention {
          wqkv: Linear::new(h, (2 * nkv + nh) * hd, false),
          out_proj: Linear::new(h, h, false),
          n_heads: nh,
          n_kv_heads: nkv,
          head_dim: hd,
          clip: a.attn_config.clip_qkv,
          rope: Rope::new(hd, false, a.attn_config.rope_theta, 1.0),
        },
      },
      ffn: Ffn {
        router: Router {
          layer: Linear::new(h, f.moe_num_experts, false),
        },
        experts: (0..f.moe_num_experts)
          .map(|_| Expert {
            v1: Linear::new(h, f.ffn_hidden_size, false),
            w1: Linear::new(h, f.ffn_hidden_size, false),
            w2: Linear::new(f.ffn_hidden_size, h, false),
          })
          .collect(),
        top_k: f.moe_top_k,
      },
    }));
  }
  Ok(Box::new(
    Decoder::new(
      Embedding::new(a.vocab_size, h),
      layers,
      Box::new(ln()),
      "norm_f",
      Some(Linear::new(h, a.vocab_size, false)),
      DecoderOpts {
        vocab_size: a.vocab_size,
        window: None,
        logit_scale: None,
        embed_scale: None,
        tied: false,
        stack_experts: None,
        sanitize: None,
      },
    )
    .with_names(Names {
      root: "transformer",
      embed: "wte",
      layers: "blocks",
      norm: "norm_f",
      head: "lm_head",
    })
    // A decoded token's experts are picked on the host, as mlx-lm does.
    .with_host_reads(),
  ))
}
