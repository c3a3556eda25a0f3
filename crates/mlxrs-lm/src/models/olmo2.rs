//! OLMo 2: mlx-lm's `models/olmo2.py` — a Llama-shaped model whose blocks
//! have no pre-norms: each branch output is normalized before the residual
//! add (`x + norm(attn(x))`, `h + norm(mlp(h))`), and q/k are RMS-normalized
//! over the whole projection (all heads at once) before RoPE. Tied by
//! default.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, Linear, Module, RmsNorm, Rope, Weights, module, swiglu,
};
use serde_json::Value;

use super::base::check_heads;
use super::checkpoint::{self, Shared, Trainable};
use super::llama::LlamaArgs;
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  q_norm: RmsNorm,
  k_norm: RmsNorm,
  n_heads: i32,
  n_kv_heads: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention {
  q_proj,
  k_proj,
  v_proj,
  o_proj,
  q_norm,
  k_norm
});

impl Attention {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads =
      |t: Array, n: i32| ops::transpose_axes(&ops::reshape(&t, &[b, l, n, -1])?, &[0, 2, 1, 3]);
    let q = heads(self.q_norm.forward(&self.q_proj.forward(x)?)?, self.n_heads)?;
    let k = heads(
      self.k_norm.forward(&self.k_proj.forward(x)?)?,
      self.n_kv_heads,
    )?;
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
  post_attention_layernorm: RmsNorm,
  post_feedforward_layernorm: RmsNorm,
  sliding: bool,
}
module!(Block {
  self_attn,
  mlp,
  post_attention_layernorm,
  post_feedforward_layernorm
});

impl Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = ops::add(
      x,
      &self
        .post_attention_layernorm
        .forward(&self.self_attn.forward(x, mask, cache)?)?,
    )?;
    ops::add(
      &h,
      &self
        .post_feedforward_layernorm
        .forward(&self.mlp.forward(&h)?)?,
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

/// An OLMo 2 decoder (mlx-lm `olmo2.Model`), or OLMo 3's (its
/// `sliding_attention` layers). Its config has the fields of llama.py's
/// `ModelArgs` (OLMo 2 ignores `layer_types` / `sliding_window`).
pub struct Olmo2 {
  args: LlamaArgs,
  model: Inner,
  lm_head: Option<Linear>,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(Olmo2 { model, lm_head });

impl Olmo2 {
  /// Build from parsed args (OLMo 2: every layer full attention).
  pub fn new(args: LlamaArgs) -> Result<Olmo2> {
    let full = vec![false; args.num_hidden_layers.max(0) as usize];
    Olmo2::with_sliding(args, &full, true)
  }

  /// Build with `sliding[i]` saying whether layer `i` is a sliding-window
  /// layer (OLMo 3: plain RoPE of `rope_theta` there, `rope_scaling` only on
  /// full layers); `mlp_bias_allowed` false forces bias-free MLPs.
  pub fn with_sliding(args: LlamaArgs, sliding: &[bool], mlp_bias_allowed: bool) -> Result<Olmo2> {
    let h = args.hidden_size;
    let n_heads = args.num_attention_heads;
    let n_kv = args.num_key_value_heads.unwrap_or(n_heads);
    check_heads("olmo2", h, n_heads, n_kv, args.num_hidden_layers)?;
    let hd = args.head_dim.unwrap_or(h / n_heads);
    let (eps, bias, mlp_bias, inter) = (
      args.rms_norm_eps,
      args.attention_bias,
      args.mlp_bias && mlp_bias_allowed,
      args.intermediate_size,
    );
    if sliding.len() != args.num_hidden_layers as usize {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "config.json: {} layer types for {} layers",
        sliding.len(),
        args.num_hidden_layers
      )));
    }
    let mut layers = Vec::new();
    for &sl in sliding {
      let rope = if sl {
        Rope::new(hd, args.rope_traditional, args.rope_theta, 1.0)
      } else {
        Rope::from_config(
          hd,
          args.rope_theta,
          args.rope_traditional,
          args.rope_scaling.as_ref(),
          args.max_position_embeddings,
        )?
      };
      layers.push(Block {
        self_attn: Attention {
          q_proj: Linear::new(h, n_heads * hd, bias),
          k_proj: Linear::new(h, n_kv * hd, bias),
          v_proj: Linear::new(h, n_kv * hd, bias),
          o_proj: Linear::new(n_heads * hd, h, bias),
          q_norm: RmsNorm::new(n_heads * hd, eps),
          k_norm: RmsNorm::new(n_kv * hd, eps),
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
        post_attention_layernorm: RmsNorm::new(h, eps),
        post_feedforward_layernorm: RmsNorm::new(h, eps),
        sliding: sl,
      });
    }
    let lm_head = (!args.tie_word_embeddings).then(|| Linear::new(h, args.vocab_size, false));
    Ok(Olmo2 {
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

/// Registry entry for `olmo2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(Olmo2::new(parse_args(config)?)?))
}

impl Olmo2 {
  /// The decoder stack; `key_valid` (rows of a left-padded batch, see
  /// [`LanguageModel::hidden_padded`]) replaces the causal mask by padded ones.
  fn run(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
  ) -> Result<Array> {
    super::base::check_caches(caches.len(), self.model.layers.len())?;
    let mut h = self.model.embed_tokens.forward(tokens)?;
    let n = tokens.dim(-1).unwrap_or(1);
    // One mask per layer kind, from the first cache of that kind.
    let mask_for = |sliding: bool, caches: &[KvCache]| -> Result<AttnMask> {
      let window = if sliding {
        self.args.sliding_window
      } else {
        None
      };
      let i = self
        .model
        .layers
        .iter()
        .position(|l| l.lock().sliding == sliding);
      match (i, key_valid) {
        (Some(i), Some(kv)) => crate::batch::padded_mask(kv, n, caches[i].offset, window),
        (Some(i), None) => caches[i].make_mask(n, window),
        (None, _) => Ok(AttnMask::None),
      }
    };
    let full = mask_for(false, caches)?;
    let swa = mask_for(true, caches)?;
    let mut pace = PrefillPace::for_input(&h);
    for (i, (layer, cache)) in self.model.layers.iter().zip(caches.iter_mut()).enumerate() {
      let mask = if layer.lock().sliding { &swa } else { &full };
      let prefix = || format!("model.layers.{i}");
      h = checkpoint::block(&self.ckpt, layer, prefix, &h, mask, cache, Block::forward)?;
      pace.layer_done(&h)?;
    }
    self.model.norm.forward(&h)
  }
}

impl LanguageModel for Olmo2 {
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
    self
      .model
      .layers
      .iter()
      .map(
        |l| match (l.lock().sliding, self.args.sliding_window, max_kv_size) {
          (true, Some(w), _) => KvCache::new(mlxrs_nn::KvCacheKind::Rotating {
            max_size: w,
            keep: 0,
          }),
          (_, _, m) => super::base::default_caches(1, m)
            .pop()
            .unwrap_or_else(KvCache::standard),
        },
      )
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn sanitize(&self, mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    weights.retain(|k, _| !k.contains("self_attn.rotary_emb.inv_freq"));
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
