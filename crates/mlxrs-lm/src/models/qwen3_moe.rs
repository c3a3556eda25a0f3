//! Qwen3-MoE: mlx-lm's `models/qwen3_moe.py` — the Qwen3 block (per-head
//! q/k RMSNorm, plain RoPE) with a sparse MoE MLP: softmax over all experts,
//! top-k, optional renormalization (`norm_topk_prob`), experts in a
//! [`SwitchGlu`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, Linear, Module, RmsNorm, Rope, Weights, module, sdpa_with_cache,
  swiglu,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_caches, check_heads, check_moe, default_caches, stack_experts};
use super::checkpoint::{self, Shared, Trainable};
use super::moe::SparseMoe;
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

fn d_one() -> i32 {
  1
}

/// `ModelArgs` of mlx-lm's qwen3_moe.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3MoeArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size` (dense layers)
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_experts`
  pub num_experts: i32,
  /// `num_experts_per_tok`
  pub num_experts_per_tok: i32,
  /// `decoder_sparse_step`: every n-th layer is MoE
  #[serde(default = "d_one")]
  pub decoder_sparse_step: i32,
  /// `mlp_only_layers`: layers forced dense
  #[serde(default)]
  pub mlp_only_layers: Vec<i32>,
  /// `moe_intermediate_size`
  pub moe_intermediate_size: i32,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `head_dim`
  pub head_dim: Option<i32>,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `tie_word_embeddings`
  pub tie_word_embeddings: bool,
  /// `norm_topk_prob`
  pub norm_topk_prob: bool,
}

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
    let heads = |t: Array, n: i32| ops::reshape(&t, &[b, l, n, -1]);
    let q = ops::transpose_axes(
      &self
        .q_norm
        .forward(&heads(self.q_proj.forward(x)?, self.n_heads)?)?,
      &[0, 2, 1, 3],
    )?;
    let k = ops::transpose_axes(
      &self
        .k_norm
        .forward(&heads(self.k_proj.forward(x)?, self.n_kv_heads)?)?,
      &[0, 2, 1, 3],
    )?;
    let v = ops::transpose_axes(
      &heads(self.v_proj.forward(x)?, self.n_kv_heads)?,
      &[0, 2, 1, 3],
    )?;
    let q = self.rope.forward(&q, cache.offset)?;
    let k = self.rope.forward(&k, cache.offset)?;
    let (k, v) = cache.update_and_fetch(&k, &v)?;
    let o = sdpa_with_cache(&q, &k, &v, self.scale, mask, None)?;
    self.o_proj.forward(&ops::reshape(
      &ops::transpose_axes(&o, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)
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
  dense: Option<Mlp>,
  moe: Option<SparseMoe>,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(Block { self_attn, dense => "mlp", moe => "mlp", input_layernorm, post_attention_layernorm });

impl Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = ops::add(
      x,
      &self
        .self_attn
        .forward(&self.input_layernorm.forward(x)?, mask, cache)?,
    )?;
    let n = self.post_attention_layernorm.forward(&h)?;
    let r = match (&self.moe, &self.dense) {
      (Some(m), _) => m.forward(&n)?,
      (None, Some(d)) => d.forward(&n)?,
      (None, None) => {
        return Err(Error::InvalidArgument(
          "qwen3_moe: layer without an MLP".into(),
        ));
      }
    };
    ops::add(&h, &r)
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

/// mlx-lm `qwen3_moe.Model`.
pub struct Qwen3Moe {
  args: Qwen3MoeArgs,
  model: Inner,
  lm_head: Option<Linear>,
  /// Gradient checkpointing (see [`LanguageModel::set_grad_checkpoint`]).
  ckpt: Trainable,
}
module!(Qwen3Moe { model, lm_head });

impl Qwen3Moe {
  /// Build from parsed args.
  pub fn new(args: Qwen3MoeArgs) -> Result<Qwen3Moe> {
    let (h, n_heads, n_kv) = (
      args.hidden_size,
      args.num_attention_heads,
      args.num_key_value_heads,
    );
    check_heads("qwen3_moe", h, n_heads, n_kv, args.num_hidden_layers)?;
    if args.num_experts > 0 {
      check_moe("qwen3_moe", args.num_experts, args.num_experts_per_tok)?;
    }
    if args.decoder_sparse_step <= 0 {
      return Err(Error::InvalidArgument(
        "config (qwen3_moe): decoder_sparse_step must be positive".into(),
      ));
    }
    let head_dim = args.head_dim.unwrap_or(h / n_heads);
    let eps = args.rms_norm_eps;
    let mut layers = Vec::new();
    for i in 0..args.num_hidden_layers {
      let is_moe = !args.mlp_only_layers.contains(&i)
        && args.num_experts > 0
        && (i + 1) % args.decoder_sparse_step == 0;
      layers.push(Shared::new(Block {
        self_attn: Attention {
          q_proj: Linear::new(h, n_heads * head_dim, false),
          k_proj: Linear::new(h, n_kv * head_dim, false),
          v_proj: Linear::new(h, n_kv * head_dim, false),
          o_proj: Linear::new(n_heads * head_dim, h, false),
          q_norm: RmsNorm::new(head_dim, eps),
          k_norm: RmsNorm::new(head_dim, eps),
          n_heads,
          n_kv_heads: n_kv,
          scale: (head_dim as f32).powf(-0.5),
          // mlx-lm uses a plain nn.RoPE here (rope_scaling is not applied).
          rope: Rope::new(head_dim, false, args.rope_theta, 1.0),
        },
        dense: (!is_moe).then(|| Mlp {
          gate_proj: Linear::new(h, args.intermediate_size, false),
          down_proj: Linear::new(args.intermediate_size, h, false),
          up_proj: Linear::new(h, args.intermediate_size, false),
        }),
        moe: is_moe.then(|| {
          SparseMoe::new(
            h,
            args.moe_intermediate_size,
            args.num_experts,
            args.num_experts_per_tok,
            args.norm_topk_prob,
            None,
          )
        }),
        input_layernorm: RmsNorm::new(h, eps),
        post_attention_layernorm: RmsNorm::new(h, eps),
      }));
    }
    let lm_head = (!args.tie_word_embeddings).then(|| Linear::new(h, args.vocab_size, false));
    Ok(Qwen3Moe {
      model: Inner {
        embed_tokens: Embedding::new(args.vocab_size, h),
        layers,
        norm: RmsNorm::new(h, eps),
      },
      lm_head,
      args,
      ckpt: None,
    })
  }
}

/// Registry entry for `qwen3_moe`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  Ok(Box::new(Qwen3Moe::new(parse_args(config)?)?))
}

impl Qwen3Moe {
  /// The decoder stack; `key_valid` (rows of a left-padded batch, see
  /// [`LanguageModel::hidden_padded`]) replaces the causal mask by padded ones.
  fn run(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: Option<&[Vec<bool>]>,
  ) -> Result<Array> {
    check_caches(caches.len(), self.model.layers.len())?;
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

impl LanguageModel for Qwen3Moe {
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
    default_caches(self.model.layers.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn sanitize(&self, mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    if self.args.tie_word_embeddings {
      weights.remove("lm_head.weight");
    }
    weights.retain(|k, _| !k.contains("self_attn.rotary_emb.inv_freq"));
    let prefixes: Vec<String> = (0..self.args.num_hidden_layers)
      .map(|l| format!("model.layers.{l}.mlp"))
      .collect();
    stack_experts(
      &mut weights,
      &prefixes,
      self.args.num_experts,
      &[
        ("gate_proj", "gate_proj"),
        ("up_proj", "up_proj"),
        ("down_proj", "down_proj"),
      ],
    )?;
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

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn sanitize_stacks_hf_experts() {
    let cfg = serde_json::json!({
      "model_type": "qwen3_moe", "hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 2, "num_experts": 2, "num_experts_per_tok": 1, "decoder_sparse_step": 1,
      "mlp_only_layers": [], "moe_intermediate_size": 4, "rms_norm_eps": 1e-6, "vocab_size": 16,
      "num_key_value_heads": 1, "head_dim": 4, "rope_theta": 1e6, "tie_word_embeddings": false,
      "norm_topk_prob": true
    });
    let m = build(&cfg).unwrap();
    let mut w = HashMap::new();
    for e in 0..2 {
      for n in ["gate_proj", "up_proj", "down_proj"] {
        w.insert(
          format!("model.layers.0.mlp.experts.{e}.{n}.weight"),
          ops::zeros(&[4, 8], mlxrs_core::Dtype::Float32).unwrap(),
        );
      }
    }
    let out = m.sanitize(w).unwrap();
    assert_eq!(
      out["model.layers.0.mlp.switch_mlp.up_proj.weight"].shape(),
      vec![2, 4, 8]
    );
    assert_eq!(out.len(), 3);
    let mut bad = serde_json::Map::new();
    bad.clone_from(cfg.as_object().unwrap());
    bad.insert("num_experts_per_tok".into(), 3.into());
    assert!(build(&Value::Object(bad)).is_err());
  }
}
