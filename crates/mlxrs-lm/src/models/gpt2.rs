//! GPT-2 and GPT-BigCode (StarCoder 1, SantaCoder): mlx-lm's
//! `models/gpt2.py` and `models/gpt_bigcode.py` — learned absolute
//! positions (`wpe`), pre-LayerNorm blocks with a fused `c_attn` (q | k |
//! v; BigCode: multi-query, one k/v head), a GELU MLP (`c_fc`, `c_proj`;
//! GPT-2 tanh-approximate, BigCode exact), `ln_f`, logits from the tied
//! `wte` (BigCode: or an `lm_head`). GPT-2's weights live under `model.`,
//! BigCode's under `transformer.`; GPT-2's `sanitize` takes HF checkpoints
//! (Conv1D weights transposed, no prefix, `attn.bias` buffers dropped) as
//! mlx-lm does.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, LayerNorm, Linear, Module, Quantizable, Weights, gelu, gelu_approx,
  join, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::attention::layer_masks;
use super::base::{check_heads, last_axis};
use super::prefill_pace::PrefillPace;
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's gpt2.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Args {
  /// `n_embd`
  pub n_embd: i32,
  /// `n_head`
  pub n_head: i32,
  /// `n_layer`
  pub n_layer: i32,
  /// `n_positions` (rows of `wpe`: the longest sequence)
  pub n_positions: i32,
  /// `layer_norm_epsilon`
  pub layer_norm_epsilon: f32,
  /// `vocab_size`
  pub vocab_size: i32,
}

struct Attn {
  c_attn: Linear,
  c_proj: Linear,
  n_head: i32,
  n_kv: i32,
  scale: f32,
}
module!(Attn { c_attn, c_proj });

impl Attn {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l, d) = (s[0], s[1], s[2]);
    let qkv = self.c_attn.forward(x)?;
    let kv = self.n_kv * (d / self.n_head);
    let heads = |start: i32, stop: i32, n: i32| -> Result<Array> {
      let t = last_axis(&qkv, start, stop)?;
      ops::transpose_axes(&ops::reshape(&t, &[b, l, n, -1])?, &[0, 2, 1, 3])
    };
    let q = heads(0, d, self.n_head)?;
    let k = heads(d, d + kv, self.n_kv)?;
    let v = heads(d + kv, d + 2 * kv, self.n_kv)?;
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    self.c_proj.forward(&o)
  }
}

struct Mlp {
  c_fc: Linear,
  c_proj: Linear,
}
module!(Mlp { c_fc, c_proj });

struct Block {
  attn: Attn,
  mlp: Mlp,
  ln_1: LayerNorm,
  ln_2: LayerNorm,
  exact_gelu: bool,
}
module!(Block {
  attn,
  mlp,
  ln_1,
  ln_2
});

impl Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let h = ops::add(x, &self.attn.forward(&self.ln_1.forward(x)?, mask, cache)?)?;
    let f = self.mlp.c_fc.forward(&self.ln_2.forward(&h)?)?;
    let f = if self.exact_gelu {
      gelu(&f)?
    } else {
      gelu_approx(&f)?
    };
    let m = self.mlp.c_proj.forward(&f)?;
    ops::add(&h, &m)
  }
}

struct Inner {
  wte: Embedding,
  wpe: Embedding,
  h: Vec<Block>,
  ln_f: LayerNorm,
}
module!(Inner { wte, wpe, h, ln_f });

/// A GPT-2 / GPT-BigCode decoder (mlx-lm `gpt2.Model` /
/// `gpt_bigcode.Model`).
pub struct Gpt2 {
  args: Gpt2Args,
  /// `model` (GPT-2) or `transformer` (BigCode).
  root: &'static str,
  model: Inner,
  lm_head: Option<Linear>,
}

impl Module for Gpt2 {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.model.load(w, &join(prefix, self.root));
    self.lm_head.load(w, &join(prefix, "lm_head"));
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.model.visit(&join(prefix, self.root), f);
    self.lm_head.visit(&join(prefix, "lm_head"), f);
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.model.visit_mut(&join(prefix, self.root), f);
    self.lm_head.visit_mut(&join(prefix, "lm_head"), f);
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.model.visit_frozen(&join(prefix, self.root), f);
    self.lm_head.visit_frozen(&join(prefix, "lm_head"), f);
  }
  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    self
      .model
      .visit_quantizable_mut(&join(prefix, self.root), f);
    self
      .lm_head
      .visit_quantizable_mut(&join(prefix, "lm_head"), f);
  }
}

/// `ModelArgs` fields of mlx-lm's gpt_bigcode.py beyond GPT-2's.
#[derive(Debug, Clone, Deserialize)]
pub struct BigCodeArgs {
  /// `n_inner` (MLP width)
  pub n_inner: i32,
  /// `multi_query` (one k/v head)
  #[serde(default = "d_true")]
  pub multi_query: bool,
  /// `attention_bias`
  #[serde(default = "d_true")]
  pub attention_bias: bool,
  /// `mlp_bias`
  #[serde(default = "d_true")]
  pub mlp_bias: bool,
  /// `tie_word_embeddings`
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
}

fn d_true() -> bool {
  true
}

/// Registry entry for `gpt2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: Gpt2Args = parse_args(config)?;
  let d = a.n_embd;
  let b = BigCodeArgs {
    n_inner: 4 * d,
    multi_query: false,
    attention_bias: true,
    mlp_bias: true,
    tie_word_embeddings: true,
  };
  new(a, b, "model", false)
}

/// Registry entry for `gpt_bigcode`.
pub fn build_bigcode(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: Gpt2Args = parse_args(config)?;
  let b: BigCodeArgs = parse_args(config)?;
  new(a, b, "transformer", true)
}

fn new(
  a: Gpt2Args,
  b: BigCodeArgs,
  root: &'static str,
  exact_gelu: bool,
) -> Result<Box<dyn LanguageModel>> {
  let (d, nh) = (a.n_embd, a.n_head);
  let nkv = if b.multi_query { 1 } else { nh };
  check_heads("gpt2", d, nh, nh, a.n_layer)?;
  if d % nh != 0 || a.n_positions <= 0 {
    return Err(Error::InvalidArgument(format!(
      "config.json (gpt2): n_embd ({d}) must be a multiple of n_head ({nh}) and n_positions positive"
    )));
  }
  if b.n_inner <= 0 {
    return Err(Error::InvalidArgument(
      "config.json (gpt_bigcode): n_inner must be positive".into(),
    ));
  }
  let eps = a.layer_norm_epsilon;
  let kv = nkv * (d / nh);
  let h = (0..a.n_layer)
    .map(|_| Block {
      attn: Attn {
        c_attn: Linear::new(d, d + 2 * kv, b.attention_bias),
        c_proj: Linear::new(d, d, b.attention_bias),
        n_head: nh,
        n_kv: nkv,
        scale: ((d / nh) as f32).powf(-0.5),
      },
      mlp: Mlp {
        c_fc: Linear::new(d, b.n_inner, b.mlp_bias),
        c_proj: Linear::new(b.n_inner, d, b.mlp_bias),
      },
      ln_1: LayerNorm::new(d, eps, true, true),
      ln_2: LayerNorm::new(d, eps, true, true),
      exact_gelu,
    })
    .collect();
  Ok(Box::new(Gpt2 {
    model: Inner {
      wte: Embedding::new(a.vocab_size, d),
      wpe: Embedding::new(a.n_positions, d),
      h,
      ln_f: LayerNorm::new(d, eps, true, true),
    },
    lm_head: (!b.tie_word_embeddings).then(|| Linear::new(d, a.vocab_size, false)),
    root,
    args: a,
  }))
}

impl Gpt2 {
  fn run(&self, x: &Array, caches: &mut [KvCache], mask: Option<&AttnMask>) -> Result<Array> {
    let n = x.dim(1).unwrap_or(1);
    let sliding = vec![false; self.model.h.len()];
    let (fa, _) = layer_masks(&sliding, caches, n, None, None, mask)?;
    // Absolute positions continue from the cache offset (mlx-lm: offset
    // of the first cache); past `n_positions` there is no embedding.
    let offset = caches.first().map(|c| c.offset).unwrap_or(0);
    if offset + n > self.args.n_positions {
      return Err(Error::InvalidArgument(format!(
        "gpt2: position {} is past n_positions ({})",
        offset + n - 1,
        self.args.n_positions
      )));
    }
    let pos: Vec<i32> = (offset..offset + n).collect();
    let pos = Array::from_slice(&pos, &[n])?;
    let mut h = ops::add(x, &self.model.wpe.forward(&pos)?)?;
    let mut pace = PrefillPace::for_input(&h);
    for (layer, cache) in self.model.h.iter().zip(caches.iter_mut()) {
      h = layer.forward(&h, &fa, cache)?;
      pace.layer_done(&h)?;
    }
    self.model.ln_f.forward(&h)
  }
}

impl LanguageModel for Gpt2 {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    self.run(&self.embed_tokens(tokens)?, caches, None)
  }

  fn embed_tokens(&self, tokens: &Array) -> Result<Array> {
    self.model.wte.forward(tokens)
  }

  fn hidden_from_embeddings(
    &self,
    embeddings: &Array,
    caches: &mut [KvCache],
    mask: Option<&AttnMask>,
  ) -> Result<Array> {
    self.run(embeddings, caches, mask)
  }

  fn logits(&self, hidden: &Array) -> Result<Array> {
    match &self.lm_head {
      Some(head) => head.forward(hidden),
      None => self.model.wte.as_linear(hidden),
    }
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    super::base::default_caches(self.model.h.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }

  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    if self.root != "model" {
      return Ok(weights);
    }
    let mut out = HashMap::with_capacity(weights.len());
    for (k, v) in weights {
      // HF layout: `h.{i}.attn.bias` is a causal-mask buffer; Conv1D
      // weights are stored [in, out].
      if k.starts_with("h.") && k.ends_with(".attn.bias") {
        continue;
      }
      let conv1d = k.starts_with("h.")
        && [
          ".attn.c_attn.weight",
          ".attn.c_proj.weight",
          ".mlp.c_fc.weight",
          ".mlp.c_proj.weight",
        ]
        .iter()
        .any(|s| k.ends_with(s));
      let v = if conv1d { ops::transpose(&v)? } else { v };
      let k = if k.starts_with("model.") {
        k
      } else {
        format!("model.{k}")
      };
      out.insert(k, v);
    }
    Ok(out)
  }

  fn vocab_size(&self) -> i32 {
    self.args.vocab_size
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }
}
