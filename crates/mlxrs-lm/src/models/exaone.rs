//! EXAONE 3 / 3.5 (LG AI): mlx-lm's `models/exaone.py` — the Llama block
//! under other names: `transformer.wte`, `transformer.h.{i}` with `ln_1`,
//! `attn.attention.{q,k,v,out}_proj`, `ln_2`, `mlp.c_fc_0` (gate) /
//! `c_fc_1` (up) / `c_proj`, and `transformer.ln_f`; tied by default.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{AttnMask, Embedding, KvCache, Linear, RmsNorm, Rope, module, swiglu};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnDims};
use super::base::check_heads;
use super::decoder::{Decoder, DecoderOpts, Layer, Names};
use crate::model::{LanguageModel, parse_args};

fn d_true() -> bool {
  true
}

/// `ModelArgs` of mlx-lm's exaone.py.
#[derive(Debug, Clone, Deserialize)]
pub struct ExaoneArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_layers`
  pub num_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `layer_norm_epsilon`
  pub layer_norm_epsilon: f32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `head_dim` (default `hidden_size / num_attention_heads`)
  pub head_dim: Option<i32>,
  /// `max_position_embeddings`
  pub max_position_embeddings: Option<i32>,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_scaling`
  pub rope_scaling: Option<Value>,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
  /// `mlp_bias`
  #[serde(default)]
  pub mlp_bias: bool,
}

struct Attn {
  attention: Attention,
}
module!(Attn { attention });

struct Mlp {
  c_fc_0: Linear,
  c_fc_1: Linear,
  c_proj: Linear,
}
module!(Mlp {
  c_fc_0,
  c_fc_1,
  c_proj
});

struct Block {
  ln_1: RmsNorm,
  attn: Attn,
  ln_2: RmsNorm,
  mlp: Mlp,
}
module!(Block {
  ln_1,
  attn,
  ln_2,
  mlp
});

impl Layer for Block {
  fn fuse_projections(&mut self) -> Result<()> {
    self.attn.attention.fuse_projections()
  }

  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = ops::add(
      x,
      &self
        .attn
        .attention
        .forward(&self.ln_1.forward(x)?, mask, cache)?,
    )?;
    let n = self.ln_2.forward(&h)?;
    let m = &self.mlp;
    let r = m
      .c_proj
      .forward(&swiglu(&m.c_fc_0.forward(&n)?, &m.c_fc_1.forward(&n)?)?)?;
    ops::add(&h, &r)
  }
}

/// Registry entry for `exaone`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: ExaoneArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("exaone", h, nh, nkv, a.num_layers)?;
  let hd = a.head_dim.unwrap_or(h / nh);
  let dims = AttnDims::new(h, nh, nkv, hd, (a.attention_bias, a.attention_bias));
  let eps = a.layer_norm_epsilon;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for _ in 0..a.num_layers {
    let rope = Rope::from_config(
      hd,
      a.rope_theta,
      a.rope_traditional,
      a.rope_scaling.as_ref(),
      a.max_position_embeddings,
    )?;
    layers.push(Box::new(Block {
      ln_1: RmsNorm::new(h, eps),
      attn: Attn {
        attention: Attention::new(dims, Some(rope)).with_o_name("out_proj"),
      },
      ln_2: RmsNorm::new(h, eps),
      mlp: Mlp {
        c_fc_0: Linear::new(h, a.intermediate_size, a.mlp_bias),
        c_fc_1: Linear::new(h, a.intermediate_size, a.mlp_bias),
        c_proj: Linear::new(a.intermediate_size, h, a.mlp_bias),
      },
    }));
  }
  let decoder = Decoder::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, eps)),
    "ln_f",
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    DecoderOpts {
      vocab_size: a.vocab_size,
      window: None,
      logit_scale: None,
      embed_scale: None,
      tied: a.tie_word_embeddings,
      stack_experts: None,
      sanitize: None,
    },
  )
  .with_names(Names {
    root: "transformer",
    embed: "wte",
    layers: "h",
    norm: "ln_f",
    head: "lm_head",
  });
  Ok(Box::new(decoder))
}
