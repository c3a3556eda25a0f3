//! SmolLM3: mlx-lm's `models/smollm3.py` — the Llama body where selected
//! layers skip rotary embeddings entirely ("NoPE"): `no_rope_layers[i] == 1`
//! means layer `i` uses RoPE, `0` means it does not (default: every
//! `no_rope_layer_interval`-th layer is NoPE). Tied by default.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, Linear, Module, RmsNorm, Rope, Weights, module, sdpa_with_cache,
  swiglu,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::check_heads;
use super::checkpoint::{self, Shared, Trainable};
use super::llama::LlamaArgs;
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

fn d_interval() -> i32 {
  4
}

/// The fields smollm3.py's `ModelArgs` adds to llama.py's.
#[derive(Debug, Clone, Deserialize)]
pub struct SmolLm3Extra {
  /// `no_rope_layer_interval`
  #[serde(default = "d_interval")]
  pub no_rope_layer_interval: i32,
  /// `no_rope_layers`: 1 = RoPE, 0 = NoPE, one entry per layer.
  pub no_rope_layers: Option<Vec<i32>>,
}

struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  n_heads: i32,
  n_kv_heads: i32,
  scale: f32,
  /// `None` on NoPE layers.
  rope: Option<Rope>,
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
    let mut q = heads(self.q_proj.forward(x)?, self.n_heads)?;
    let mut k = heads(self.k_proj.forward(x)?, self.n_kv_heads)?;
    let v = heads(self.v_proj.forward(x)?, self.n_kv_heads)?;
    if let Some(rope) = &self.rope {
      q = rope.forward(&q, cache.offset)?;
      k = rope.forward(&k, cache.offset)?;
    }
    let (k, v) = cache.update_and_fetch(&k, &v)?;
    let o = sdpa_with_cache(&q, &k, &v, self.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    self.o_proj.forward(&o)
  }
}

struct Mlp {
  gate_proj: Linear,
  down_proj: Linear,
  up_proj: Linear,
}
module!(Mlp {
  gate_proj,
  down_proj,
  up_proj
});

impl Mlp {
  fn forward(&self, x: &Array) -> Result<Array> {
    self.down_proj.forward(&swiglu(
      &self.gate_proj.forward(x)?,
      &self.up_proj.forward(x)?,
    )?)
  }
}

struct Block {
  self_attn: Attention,
  mlp: Mlp,
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
  layers: Vec<Shared<Block>>,
  norm: RmsNorm,
}
module!(Inner {
  embed_tokens,
  layers,
  norm
});

/// A SmolLM3 decoder (mlx-lm `smollm3.Model`).
pub struct SmolLm3 {
  args: LlamaArgs,
  model: Inner,
  lm_head: Option<Linear>,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(SmolLm3 { model, lm_head });

impl SmolLm3 {
  /// Build from llama.py's args plus the NoPE layout.
  pub fn new(args: LlamaArgs, extra: SmolLm3Extra) -> Result<SmolLm3> {
    let h = args.hidden_size;
    let n_heads = args.num_attention_heads;
    let n_kv = args.num_key_value_heads.unwrap_or(n_heads);
    let n_layers = args.num_hidden_layers;
    check_heads("smollm3", h, n_heads, n_kv, n_layers)?;
    let use_rope: Vec<bool> = match &extra.no_rope_layers {
      Some(v) if v.len() == n_layers as usize => v.iter().map(|&x| x != 0).collect(),
      Some(v) => {
        return Err(Error::InvalidArgument(format!(
          "config: no_rope_layers has {} entries for {n_layers} layers",
          v.len()
        )));
      }
      None if extra.no_rope_layer_interval <= 0 => {
        return Err(Error::InvalidArgument(format!(
          "config: no_rope_layer_interval must be positive, got {}",
          extra.no_rope_layer_interval
        )));
      }
      None => (0..n_layers)
        .map(|i| (i + 1) % extra.no_rope_layer_interval != 0)
        .collect(),
    };
    let layer_types = args
      .layer_types
      .clone()
      .unwrap_or_else(|| vec!["full_attention".to_string(); n_layers as usize]);
    if layer_types.len() != n_layers as usize {
      return Err(Error::InvalidArgument(format!(
        "config: layer_types has {} entries for {n_layers} layers",
        layer_types.len()
      )));
    }
    let hd = args.head_dim.unwrap_or(h / n_heads);
    let (eps, bias, mlp_bias, inter) = (
      args.rms_norm_eps,
      args.attention_bias,
      args.mlp_bias,
      args.intermediate_size,
    );
    let mut layers = Vec::new();
    for (lt, &rope_on) in layer_types.iter().zip(&use_rope) {
      let rope = if rope_on {
        Some(Rope::from_config(
          hd,
          args.rope_theta,
          args.rope_traditional,
          args.rope_scaling.as_ref(),
          args.max_position_embeddings,
        )?)
      } else {
        None
      };
      layers.push(Block {
        self_attn: Attention {
          q_proj: Linear::new(h, n_heads * hd, bias),
          k_proj: Linear::new(h, n_kv * hd, bias),
          v_proj: Linear::new(h, n_kv * hd, bias),
          o_proj: Linear::new(n_heads * hd, h, bias),
          n_heads,
          n_kv_heads: n_kv,
          scale: (hd as f32).powf(-0.5),
          rope,
        },
        mlp: Mlp {
          gate_proj: Linear::new(h, inter, mlp_bias),
          down_proj: Linear::new(inter, h, mlp_bias),
          up_proj: Linear::new(h, inter, mlp_bias),
        },
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
        sliding: lt == "sliding_attention",
      });
    }
    let lm_head = (!args.tie_word_embeddings).then(|| Linear::new(h, args.vocab_size, false));
    Ok(SmolLm3 {
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

/// Registry entry for `smollm3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(SmolLm3::new(
    parse_args(config)?,
    parse_args(config)?,
  )?))
}

impl SmolLm3 {
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
    let fa_mask = match (
      self.model.layers.iter().position(|l| !l.lock().sliding),
      key_valid,
    ) {
      (Some(i), Some(kv)) => crate::batch::padded_mask(kv, n, caches[i].offset, None)?,
      (Some(i), None) => caches[i].make_mask(n, None)?,
      (None, _) => AttnMask::None,
    };
    let swa_mask = match (
      self.model.layers.iter().position(|l| l.lock().sliding),
      key_valid,
    ) {
      (Some(i), Some(kv)) => {
        crate::batch::padded_mask(kv, n, caches[i].offset, self.args.sliding_window)?
      }
      (Some(i), None) => caches[i].make_mask(n, self.args.sliding_window)?,
      (None, _) => AttnMask::None,
    };
    let mut pace = PrefillPace::for_input(&h);
    for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
      let mask = if layer.lock().sliding {
        &swa_mask
      } else {
        &fa_mask
      };
      let prefix = || format!("model.layers.{i}");
      h = checkpoint::block(&self.ckpt, layer, prefix, &h, mask, cache, Block::forward)?;
      pace.layer_done(&h)?;
    }
    self.model.norm.forward(&h)
  }
}

impl LanguageModel for SmolLm3 {
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

  /// As mlx-lm (smollm3.py defines no `make_cache`): standard caches, or
  /// rotating ones keeping 4 sink positions under `max_kv_size`.
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    super::base::default_caches(self.model.layers.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn sanitize(&self, mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    weights.retain(|k, _| !k.contains("self_attn.rotary_emb.inv_freq"));
    if self.args.tie_word_embeddings {
      for k in ["lm_head.weight", "lm_head.scales", "lm_head.biases"] {
        weights.remove(k);
      }
    }
    Ok(weights)
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
