//! GPT-NeoX (Pythia, GPT-NeoX-20B): mlx-lm's `models/gpt_neox.py` — a fused
//! `query_key_value` laid out per head (`[heads, q | k | v]`), RoPE over the
//! first `rotary_pct` of each head, biased `dense` output, LayerNorms before
//! attention and MLP (in parallel by default, `use_parallel_residual`), a
//! tanh-GELU MLP (`dense_h_to_4h`, `dense_4h_to_h`), and the output
//! projection `model.embed_out`. `sanitize` maps HF names (`gpt_neox.*`)
//! as mlx-lm does.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, LayerNorm, Linear, Rope, gelu_approx, module};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_heads, last_axis};
use super::decoder::{Decoder, DecoderOpts, Layer, Names};
use super::phi::partial_rope_dims;
use crate::model::{LanguageModel, parse_args};

fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's gpt_neox.py.
#[derive(Debug, Clone, Deserialize)]
pub struct GptNeoxArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `layer_norm_eps`
  pub layer_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `rotary_emb_base`
  pub rotary_emb_base: f32,
  /// `rotary_pct`
  pub rotary_pct: f32,
  /// `use_parallel_residual`
  #[serde(default = "d_true")]
  pub use_parallel_residual: bool,
}

struct Attention {
  query_key_value: Linear,
  dense: Linear,
  n_heads: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention {
  query_key_value,
  dense
});

impl Attention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let qkv = ops::reshape(&self.query_key_value.forward(x)?, &[b, l, self.n_heads, -1])?;
    let hd = qkv.shape()[3] / 3;
    let part = |i: i32| -> Result<Array> {
      ops::transpose_axes(&last_axis(&qkv, i * hd, (i + 1) * hd)?, &[0, 2, 1, 3])
    };
    let q = self.rope.forward(&part(0)?, cache.offset)?;
    let k = self.rope.forward(&part(1)?, cache.offset)?;
    let v = part(2)?;
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    self.dense.forward(&o)
  }
}

struct Mlp {
  dense_h_to_4h: Linear,
  dense_4h_to_h: Linear,
}
module!(Mlp {
  dense_h_to_4h,
  dense_4h_to_h
});

struct Block {
  attention: Attention,
  mlp: Mlp,
  input_layernorm: LayerNorm,
  post_attention_layernorm: LayerNorm,
  parallel: bool,
}
module!(Block {
  attention,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let mlp = |h: &Array| -> Result<Array> {
      self
        .mlp
        .dense_4h_to_h
        .forward(&gelu_approx(&self.mlp.dense_h_to_4h.forward(h)?)?)
    };
    let a = self
      .attention
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    if self.parallel {
      let f = mlp(&self.post_attention_layernorm.forward(x)?)?;
      ops::add(&ops::add(&a, &f)?, x)
    } else {
      let h = ops::add(x, &a)?;
      ops::add(&h, &mlp(&self.post_attention_layernorm.forward(&h)?)?)
    }
  }
}

/// mlx-lm gpt_neox.py's `sanitize`: drop the attention buffers, put every
/// key under `model.`, `gpt_neox.layers.` -> `h.`, `gpt_neox.` -> ``.
fn sanitize(weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  let mut out = HashMap::with_capacity(weights.len());
  for (k, v) in weights {
    if [
      ".attention.bias",
      ".attention.masked_bias",
      ".attention.rotary_emb.inv_freq",
    ]
    .iter()
    .any(|s| k.ends_with(s))
    {
      continue;
    }
    let k = if k.starts_with("model.") {
      k
    } else {
      format!("model.{k}")
    };
    let k = k
      .replace(".gpt_neox.layers.", ".h.")
      .replace(".gpt_neox.", ".");
    out.insert(k, v);
  }
  Ok(out)
}

/// Registry entry for `gpt_neox`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: GptNeoxArgs = parse_args(config)?;
  let (h, nh) = (a.hidden_size, a.num_attention_heads);
  check_heads("gpt_neox", h, nh, nh, a.num_hidden_layers)?;
  if h % nh != 0 {
    return Err(Error::InvalidArgument(format!(
      "config.json (gpt_neox): hidden_size ({h}) must be a multiple of num_attention_heads ({nh})"
    )));
  }
  let hd = h / nh;
  let rope_dims = partial_rope_dims("gpt_neox", a.rotary_pct, hd)?;
  let eps = a.layer_norm_eps;
  let layers = (0..a.num_hidden_layers)
    .map(|_| {
      Box::new(Block {
        attention: Attention {
          query_key_value: Linear::new(h, 3 * h, true),
          dense: Linear::new(h, h, true),
          n_heads: nh,
          scale: (hd as f32).powf(-0.5),
          rope: Rope::new(rope_dims, false, a.rotary_emb_base, 1.0),
        },
        mlp: Mlp {
          dense_h_to_4h: Linear::new(h, 4 * h, true),
          dense_4h_to_h: Linear::new(4 * h, h, true),
        },
        input_layernorm: LayerNorm::new(h, eps, true, true),
        post_attention_layernorm: LayerNorm::new(h, eps, true, true),
        parallel: a.use_parallel_residual,
      }) as Box<dyn Layer>
    })
    .collect();
  let decoder = Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(LayerNorm::new(h, eps, true, true)),
    "final_layer_norm",
    Some(Linear::new(h, a.vocab_size, false)),
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
    embed: "embed_in",
    layers: "h",
    norm: "final_layer_norm",
    head: "model.embed_out",
  });
  Ok(Box::new(decoder))
}
