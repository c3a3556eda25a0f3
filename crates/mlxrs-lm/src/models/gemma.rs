//! Gemma (1): mlx-lm's `models/gemma.py` — Llama-shaped blocks with
//! `(1 + w)` RMSNorms, a GELU-gated MLP, embeddings scaled by
//! `sqrt(hidden_size)` and a tied output head. Also the text side of
//! PaliGemma (mlx-vlm's `paligemma/language.py`).

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, Linear, Module, RmsNorm, Rope, Weights, gelu, gelu_approx, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_caches, check_heads, default_caches};
use crate::model::{LanguageModel, parse_args};

fn d_theta() -> f32 {
  10000.0
}

/// `ModelArgs` of mlx-lm's gemma.py.
#[derive(Debug, Clone, Deserialize)]
pub struct GemmaArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `head_dim`
  pub head_dim: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `attention_bias` (PaliGemma's text config; mlx-lm: none)
  #[serde(default)]
  pub attention_bias: bool,
  /// `hidden_activation`: the tanh approximation of GELU for
  /// `gelu_pytorch_tanh` / `gelu_new` / `gelu_fast` / `tanh` (what
  /// transformers and mlx-vlm's PaliGemma run); exact GELU for `gelu` or
  /// when absent (mlx-lm's gemma.py always uses `nn.gelu`).
  pub hidden_activation: Option<String>,
}

struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  n_heads: i32,
  n_kv_heads: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention {
  q_proj,
  k_proj,
  v_proj,
  o_proj
});

impl Attention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads =
      |t: Array, n: i32| ops::transpose_axes(&ops::reshape(&t, &[b, l, n, -1])?, &[0, 2, 1, 3]);
    let q = heads(self.q_proj.forward(x)?, self.n_heads)?;
    let k = heads(self.k_proj.forward(x)?, self.n_kv_heads)?;
    let v = heads(self.v_proj.forward(x)?, self.n_kv_heads)?;
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    self.o_proj.forward(&o)
  }
}

struct Mlp {
  gate_proj: Linear,
  down_proj: Linear,
  up_proj: Linear,
  tanh_gelu: bool,
}
module!(Mlp {
  gate_proj,
  down_proj,
  up_proj
});

impl Mlp {
  fn forward(&self, x: &Array) -> Result<Array> {
    let g = self.gate_proj.forward(x)?;
    let g = if self.tanh_gelu {
      gelu_approx(&g)?
    } else {
      gelu(&g)?
    };
    self
      .down_proj
      .forward(&ops::multiply(&g, &self.up_proj.forward(x)?)?)
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

/// A Gemma decoder (mlx-lm `gemma.Model`); output embeddings are tied.
pub struct Gemma {
  args: GemmaArgs,
  model: Inner,
}
module!(Gemma { model });

impl Gemma {
  /// Build from parsed args.
  pub fn new(args: GemmaArgs) -> Result<Gemma> {
    let (h, n_heads, n_kv, hd) = (
      args.hidden_size,
      args.num_attention_heads,
      args.num_key_value_heads,
      args.head_dim,
    );
    check_heads("gemma", h, n_heads, n_kv, args.num_hidden_layers)?;
    if hd <= 0 {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "config (gemma): head_dim ({hd}) must be positive"
      )));
    }
    let tanh_gelu = match args.hidden_activation.as_deref() {
      None | Some("gelu") => false,
      Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "tanh") => true,
      Some(other) => {
        return Err(mlxrs_core::Error::InvalidArgument(format!(
          "config (gemma): unsupported hidden_activation {other:?}"
        )));
      }
    };
    let (eps, bias) = (args.rms_norm_eps, args.attention_bias);
    let layers = (0..args.num_hidden_layers)
      .map(|_| Block {
        self_attn: Attention {
          q_proj: Linear::new(h, n_heads * hd, bias),
          k_proj: Linear::new(h, n_kv * hd, bias),
          v_proj: Linear::new(h, n_kv * hd, bias),
          o_proj: Linear::new(n_heads * hd, h, bias),
          n_heads,
          n_kv_heads: n_kv,
          scale: (hd as f32).powf(-0.5),
          rope: Rope::new(hd, args.rope_traditional, args.rope_theta, 1.0),
        },
        mlp: Mlp {
          gate_proj: Linear::new(h, args.intermediate_size, false),
          down_proj: Linear::new(args.intermediate_size, h, false),
          up_proj: Linear::new(h, args.intermediate_size, false),
          tanh_gelu,
        },
        input_layernorm: RmsNorm::new_plus_one(h, eps),
        post_attention_layernorm: RmsNorm::new_plus_one(h, eps),
      })
      .collect();
    Ok(Gemma {
      model: Inner {
        embed_tokens: Embedding::new(args.vocab_size, h),
        layers,
        norm: RmsNorm::new_plus_one(h, eps),
      },
      args,
    })
  }
}

/// Registry entry for `gemma`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(Gemma::new(parse_args(config)?)?))
}

impl LanguageModel for Gemma {
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
    check_caches(caches.len(), self.model.layers.len())?;
    // python `h * (hidden_size ** 0.5)`: the float is cast to h's dtype.
    let norm = Array::scalar_as(
      (self.args.hidden_size as f64).sqrt() as f32 as f64,
      embeddings.dtype(),
    )?;
    let mut h = ops::multiply(embeddings, &norm)?;
    let n = h.dim(1).unwrap_or(1);
    let mask = match (mask, caches.first()) {
      (Some(m), _) => m.clone(),
      (None, Some(c)) => c.make_mask(n, None)?,
      (None, None) => AttnMask::None,
    };
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      h = layer.forward(&h, &mask, cache)?;
    }
    self.model.norm.forward(&h)
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    self.model.embed_tokens.as_linear(hidden)
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    default_caches(self.model.layers.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn sanitize(
    &self,
    mut weights: std::collections::HashMap<String, Array>,
  ) -> Result<std::collections::HashMap<String, Array>> {
    weights
      .retain(|k, _| !k.contains("self_attn.rotary_emb.inv_freq") && !k.starts_with("lm_head."));
    Ok(weights)
  }

  fn vocab_size(&self) -> i32 {
    self.args.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }
}
