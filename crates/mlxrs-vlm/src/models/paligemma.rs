//! PaliGemma: mlx-vlm's `models/paligemma/` (`vision.py`, `language.py`,
//! `paligemma.py`).
//!
//! - Vision tower: SigLIP ViT (Conv2d patch embedding with bias, learned
//!   positions, pre-norm encoder layers with tanh-GELU MLPs,
//!   `post_layernorm` over every patch).
//! - Projector: one linear layer to `projection_dim`; features are divided
//!   by `sqrt(hidden_size)` before they replace the image tokens (the Gemma
//!   embedding scale `sqrt(hidden)` then applies to all positions).
//! - Language model: Gemma (RMSNorm `1 + w`, tanh-GELU gated MLP, tied
//!   embeddings); pad tokens embed to zero. As mlx-vlm with
//!   `use_bidirectional_attention` (PaliGemma's default), no attention mask
//!   is applied: the prompt attends bidirectionally, then decoding is
//!   causal by construction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::LanguageModel;
use mlxrs_nn::{
  AttnMask, Conv2d, Embedding, KvCache, KvCacheKind, LayerNorm, Linear, Module, RmsNorm, Rope,
  Weights, attention_with_cache_update, module,
};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

fn d_v_layers() -> i32 {
  27
}
fn d_v_hidden() -> i32 {
  1152
}
fn d_v_inter() -> i32 {
  4304
}
fn d_heads() -> i32 {
  16
}
fn d_patch() -> i32 {
  14
}
fn d_image() -> i32 {
  224
}
fn d_channels() -> i32 {
  3
}
fn d_eps() -> f32 {
  1e-6
}
fn d_t_hidden() -> i32 {
  2048
}
fn d_t_layers() -> i32 {
  18
}
fn d_t_inter() -> i32 {
  8192
}
fn d_t_vocab() -> i32 {
  256000
}
fn d_head_dim() -> i32 {
  256
}
fn d_theta() -> f32 {
  10000.0
}
fn d_act() -> String {
  "gelu_pytorch_tanh".to_string()
}

/// `VisionConfig` of mlx-vlm's `paligemma/config.py` (SigLIP).
#[derive(Debug, Clone, Deserialize)]
pub struct SiglipVisionArgs {
  /// `num_hidden_layers`
  #[serde(default = "d_v_layers")]
  pub num_hidden_layers: i32,
  /// `hidden_size`
  #[serde(default = "d_v_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size`
  #[serde(default = "d_v_inter")]
  pub intermediate_size: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `patch_size`
  #[serde(default = "d_patch")]
  pub patch_size: i32,
  /// `projection_dim` (default: the top-level `projection_dim`, else 2048)
  pub projection_dim: Option<i32>,
  /// `image_size`
  #[serde(default = "d_image")]
  pub image_size: i32,
  /// `num_channels`
  #[serde(default = "d_channels")]
  pub num_channels: i32,
  /// `layer_norm_eps`
  #[serde(default = "d_eps")]
  pub layer_norm_eps: f32,
}

/// `TextConfig` of mlx-vlm's `paligemma/config.py` (Gemma).
#[derive(Debug, Clone, Deserialize)]
pub struct GemmaArgs {
  /// `model_type` (`gemma`; `gemma2` is refused)
  #[serde(default)]
  pub model_type: String,
  /// `hidden_size`
  #[serde(default = "d_t_hidden")]
  pub hidden_size: i32,
  /// `num_hidden_layers`
  #[serde(default = "d_t_layers")]
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  #[serde(default = "d_t_inter")]
  pub intermediate_size: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: Option<i32>,
  /// `vocab_size`
  #[serde(default = "d_t_vocab")]
  pub vocab_size: i32,
  /// `head_dim` (Gemma 1 uses `hidden_size / num_attention_heads`)
  #[serde(default = "d_head_dim")]
  pub head_dim: i32,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `hidden_activation` (or `hidden_act`)
  #[serde(default = "d_act", alias = "hidden_act")]
  pub hidden_activation: String,
  /// `attention_bias`
  #[serde(default)]
  pub attention_bias: bool,
}

/// `ModelConfig` of mlx-vlm's `paligemma/config.py`.
#[derive(Debug, Clone)]
pub struct PaliGemmaConfig {
  /// `vision_config`
  pub vision: SiglipVisionArgs,
  /// `text_config`
  pub text: GemmaArgs,
  /// `image_token_index`
  pub image_token_index: u32,
  /// `pad_token_id`
  pub pad_token_id: u32,
  /// top-level `hidden_size` (the image-feature divisor)
  pub hidden_size: i32,
  /// `projection_dim`
  pub projection_dim: i32,
  /// `use_bidirectional_attention` (default true, as mlx-vlm)
  pub bidirectional: bool,
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
  serde_json::from_value(v.clone())
    .map_err(|e| Error::invalid(format!("config.json `{what}`: {e}")))
}

fn u32_key(raw: &Value, key: &str, default: u64) -> Result<u32> {
  let v = match raw.get(key) {
    None | Some(Value::Null) => default,
    Some(x) => x.as_u64().ok_or_else(|| {
      Error::invalid(format!("config.json `{key}`: expected an integer, got {x}"))
    })?,
  };
  u32::try_from(v).map_err(|_| Error::invalid(format!("config.json `{key}` is too large")))
}

impl PaliGemmaConfig {
  /// Parse config.json.
  pub fn parse(raw: &Value) -> Result<PaliGemmaConfig> {
    let empty = Value::Object(Default::default());
    let vision: SiglipVisionArgs =
      parse(raw.get("vision_config").unwrap_or(&empty), "vision_config")?;
    let tv = raw.get("text_config").unwrap_or(&empty);
    let text: GemmaArgs = parse(tv, "text_config")?;
    if !matches!(text.model_type.as_str(), "gemma" | "") {
      return Err(Error::invalid(format!(
        "config.json: paligemma with a `{}` language model is not supported (gemma only)",
        text.model_type
      )));
    }
    if !matches!(
      text.hidden_activation.as_str(),
      "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "tanh" | "gelu"
    ) {
      return Err(Error::invalid(format!(
        "config.json: unsupported activation `{}` for PaliGemma",
        text.hidden_activation
      )));
    }
    let pos = |x: i32| x > 0;
    if !(pos(vision.hidden_size)
      && pos(vision.num_attention_heads)
      && vision.hidden_size % vision.num_attention_heads == 0
      && pos(vision.patch_size)
      && vision.image_size >= vision.patch_size
      && vision.num_hidden_layers >= 0
      && pos(text.hidden_size)
      && pos(text.num_attention_heads)
      && text.hidden_size % text.num_attention_heads == 0
      && text
        .num_key_value_heads
        .is_none_or(|k| pos(k) && text.num_attention_heads % k == 0)
      && pos(text.vocab_size))
    {
      return Err(Error::invalid("config.json: inconsistent paligemma sizes"));
    }
    let projection_dim = vision
      .projection_dim
      .or_else(|| {
        raw
          .get("projection_dim")
          .and_then(Value::as_i64)
          .map(|x| x as i32)
      })
      .unwrap_or(2048);
    if projection_dim != text.hidden_size {
      return Err(Error::invalid(format!(
        "config.json: projection_dim {projection_dim} differs from the text hidden_size {}",
        text.hidden_size
      )));
    }
    let hidden_size = raw
      .get("hidden_size")
      .and_then(Value::as_i64)
      .map(|x| x as i32)
      .unwrap_or(2048);
    if hidden_size <= 0 {
      return Err(Error::invalid("config.json: hidden_size must be positive"));
    }
    let bidirectional = tv
      .get("use_bidirectional_attention")
      .and_then(Value::as_bool)
      .unwrap_or(true);
    Ok(PaliGemmaConfig {
      image_token_index: u32_key(raw, "image_token_index", 257152)?,
      pad_token_id: u32_key(raw, "pad_token_id", 0)?,
      vision,
      text,
      hidden_size,
      projection_dim,
      bidirectional,
    })
  }

  /// Image tokens per image (`(image_size / patch_size)^2`).
  pub fn tokens_per_image(&self) -> usize {
    let g = (self.vision.image_size / self.vision.patch_size) as usize;
    g * g
  }
}

// ---------------------------------------------------------------------------
// SigLIP
// ---------------------------------------------------------------------------

struct SigAttention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  out_proj: Linear,
  heads: i32,
  scale: f32,
}
module!(SigAttention {
  q_proj,
  k_proj,
  v_proj,
  out_proj
});

struct SigMlp {
  fc1: Linear,
  fc2: Linear,
}
module!(SigMlp { fc1, fc2 });

struct SigLayer {
  self_attn: SigAttention,
  layer_norm1: LayerNorm,
  mlp: SigMlp,
  layer_norm2: LayerNorm,
}
module!(SigLayer {
  self_attn,
  layer_norm1,
  mlp,
  layer_norm2
});

impl SigLayer {
  fn forward(&self, x: &Array) -> Result<Array> {
    let a = &self.self_attn;
    let y = self.layer_norm1.forward(x)?;
    let s = y.shape();
    let (b, l) = (s[0], s[1]);
    let heads = |t: Array| -> Result<Array> {
      Ok(ops::transpose_axes(
        &ops::reshape(&t, &[b, l, a.heads, -1])?,
        &[0, 2, 1, 3],
      )?)
    };
    let q = heads(a.q_proj.forward(&y)?)?;
    let k = heads(a.k_proj.forward(&y)?)?;
    let v = heads(a.v_proj.forward(&y)?)?;
    let o = scaled_dot_product_attention(&q, &k, &v, a.scale, Mask::None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    let h = ops::add(x, &a.out_proj.forward(&o)?)?;
    let m = self.layer_norm2.forward(&h)?;
    let m = self
      .mlp
      .fc2
      .forward(&mlxrs_nn::gelu_approx(&self.mlp.fc1.forward(&m)?)?)?;
    Ok(ops::add(&h, &m)?)
  }
}

struct SigEncoder {
  layers: Vec<SigLayer>,
}
module!(SigEncoder { layers });

struct SigEmbeddings {
  patch_embedding: Conv2d,
  position_embedding: Embedding,
}
module!(SigEmbeddings {
  patch_embedding,
  position_embedding
});

struct SigInner {
  embeddings: SigEmbeddings,
  encoder: SigEncoder,
  post_layernorm: LayerNorm,
}
module!(SigInner {
  embeddings,
  encoder,
  post_layernorm
});

/// SigLIP vision tower (python `VisionModel`, weights under
/// `vision_tower.vision_model.*`).
pub struct SiglipVision {
  vision_model: SigInner,
  args: SiglipVisionArgs,
}
module!(SiglipVision { vision_model });

impl SiglipVision {
  /// An unloaded tower.
  pub fn new(a: &SiglipVisionArgs) -> Result<SiglipVision> {
    let d = a.hidden_size;
    let layers = (0..a.num_hidden_layers)
      .map(|_| SigLayer {
        self_attn: SigAttention {
          q_proj: Linear::new(d, d, true),
          k_proj: Linear::new(d, d, true),
          v_proj: Linear::new(d, d, true),
          out_proj: Linear::new(d, d, true),
          heads: a.num_attention_heads,
          scale: ((d / a.num_attention_heads) as f32).powf(-0.5),
        },
        layer_norm1: LayerNorm::new(d, a.layer_norm_eps, true, true),
        mlp: SigMlp {
          fc1: Linear::new(d, a.intermediate_size, true),
          fc2: Linear::new(a.intermediate_size, d, true),
        },
        layer_norm2: LayerNorm::new(d, a.layer_norm_eps, true, true),
      })
      .collect();
    let g = a.image_size / a.patch_size;
    Ok(SiglipVision {
      vision_model: SigInner {
        embeddings: SigEmbeddings {
          patch_embedding: Conv2d::new(
            a.num_channels,
            d,
            (a.patch_size, a.patch_size),
            (a.patch_size, a.patch_size),
            (0, 0),
            (1, 1),
            1,
            true,
          )?,
          position_embedding: Embedding::new(g * g, d),
        },
        encoder: SigEncoder { layers },
        post_layernorm: LayerNorm::new(d, 1e-5, true, true),
      },
      args: a.clone(),
    })
  }

  /// `post_layernorm(encoder(embeddings(x)))` for NHWC pixels: `[N, patches, D]`.
  pub fn forward(&self, pixels: &Array) -> Result<Array> {
    self.forward_with_positions(pixels, None)
  }

  /// Patches per side (`image_size / patch_size`).
  pub fn patches_per_side(&self) -> i32 {
    self.args.image_size / self.args.patch_size
  }

  /// [`SiglipVision::forward`] with explicit position ids `[patches]`
  /// (`None`: `0..patches`; Idefics3 buckets them, see
  /// [`crate::models::idefics3`]).
  pub fn forward_with_positions(&self, pixels: &Array, positions: Option<&Array>) -> Result<Array> {
    let s = pixels.shape();
    let a = &self.args;
    if s.len() != 4 || s[1] != a.image_size || s[2] != a.image_size || s[3] != a.num_channels {
      return Err(Error::invalid(format!(
        "the vision tower takes [N, {0}, {0}, {1}] pixels, got {s:?}",
        a.image_size, a.num_channels
      )));
    }
    let m = &self.vision_model;
    let x = m.embeddings.patch_embedding.forward(pixels)?;
    let ps = x.shape();
    let x = ops::reshape(&x, &[ps[0], ps[1] * ps[2], ps[3]])?;
    let n = x.dim(1).unwrap_or(0);
    let ids = match positions {
      Some(p) => p.clone(),
      None => ops::arange(0.0, n as f64, 1.0, Dtype::Int32)?,
    };
    let mut x = ops::add(
      &x,
      &ops::expand_dims(&m.embeddings.position_embedding.forward(&ids)?, 0)?,
    )?;
    for layer in &m.encoder.layers {
      x = layer.forward(&x)?;
    }
    Ok(m.post_layernorm.forward(&x)?)
  }

  /// Parameter dtype (of the patch embedding).
  pub fn dtype(&self) -> Dtype {
    let mut d = Dtype::Float32;
    self
      .vision_model
      .embeddings
      .patch_embedding
      .visit("", &mut |_, a| d = a.dtype());
    if d.is_float() { d } else { Dtype::Float32 }
  }
}

/// python `PaliGemmaMultiModalProjector`.
pub struct PaliProjector {
  linear: Linear,
}
module!(PaliProjector { linear });

impl PaliProjector {
  /// `linear(x)`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    Ok(self.linear.forward(x)?)
  }
}

// ---------------------------------------------------------------------------
// Gemma
// ---------------------------------------------------------------------------

/// The prompt the language model merges image features into.
pub struct PaliPrompt {
  /// Prompt ids (image tokens expanded).
  pub ids: Vec<u32>,
  /// Scaled image features `[n_image_tokens, hidden]`.
  pub features: Array,
  /// Per prompt position: the feature row of an image token, else -1.
  pub feature_row: Vec<i32>,
}

/// Shared slot for the prepared multimodal prompt.
pub type PaliSlot = Arc<Mutex<Option<PaliPrompt>>>;

struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  n_heads: i32,
  n_kv: i32,
  scale: f32,
  rope: Rope,
}
module!(Attention {
  q_proj,
  k_proj,
  v_proj,
  o_proj
});

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
  fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: &mut KvCache,
    exact_gelu: bool,
  ) -> Result<Array> {
    let a = &self.self_attn;
    let h = self.input_layernorm.forward(x)?;
    let s = h.shape();
    let (b, l) = (s[0], s[1]);
    let heads = |t: Array, n: i32| -> Result<Array> {
      Ok(ops::transpose_axes(
        &ops::reshape(&t, &[b, l, n, -1])?,
        &[0, 2, 1, 3],
      )?)
    };
    let q = heads(a.q_proj.forward(&h)?, a.n_heads)?;
    let k = heads(a.k_proj.forward(&h)?, a.n_kv)?;
    let v = heads(a.v_proj.forward(&h)?, a.n_kv)?;
    let q = a.rope.forward(&q, cache.offset)?;
    let k = a.rope.forward(&k, cache.offset)?;
    let o = attention_with_cache_update(&q, &k, &v, cache, a.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    let h = ops::add(x, &a.o_proj.forward(&o)?)?;
    let m = self.post_attention_layernorm.forward(&h)?;
    let g = self.mlp.gate_proj.forward(&m)?;
    let g = if exact_gelu {
      mlxrs_nn::gelu(&g)?
    } else {
      mlxrs_nn::gelu_approx(&g)?
    };
    let m = self
      .mlp
      .down_proj
      .forward(&ops::multiply(&g, &self.mlp.up_proj.forward(&m)?)?)?;
    Ok(ops::add(&h, &m)?)
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

/// PaliGemma's Gemma language model (python `paligemma/language.py`,
/// weights under `language_model.*`).
pub struct PaliGemmaText {
  model: Inner,
  vocab: i32,
  hidden: i32,
  pad_id: i32,
  exact_gelu: bool,
  bidirectional: bool,
  slot: PaliSlot,
  /// Hidden states of the whole prompt, run in one pass when the
  /// generation loop prefills it in chunks (mlx-lm prefills all but the
  /// last token first), and the next prompt position not yet returned.
  pending: Mutex<Option<(usize, Array)>>,
}
module!(PaliGemmaText { model });

impl PaliGemmaText {
  /// An unloaded model.
  pub fn new(c: &PaliGemmaConfig, slot: PaliSlot) -> Result<PaliGemmaText> {
    let t = &c.text;
    let h = t.hidden_size;
    let nh = t.num_attention_heads;
    let nkv = t.num_key_value_heads.unwrap_or(nh);
    // mlx-vlm: Gemma 1 ignores head_dim.
    let hd = h / nh;
    let mut layers = Vec::new();
    for _ in 0..t.num_hidden_layers {
      layers.push(Block {
        self_attn: Attention {
          q_proj: Linear::new(h, nh * hd, t.attention_bias),
          k_proj: Linear::new(h, nkv * hd, t.attention_bias),
          v_proj: Linear::new(h, nkv * hd, t.attention_bias),
          o_proj: Linear::new(nh * hd, h, t.attention_bias),
          n_heads: nh,
          n_kv: nkv,
          scale: (hd as f32).powf(-0.5),
          rope: Rope::new(hd, t.rope_traditional, t.rope_theta, 1.0),
        },
        mlp: Mlp {
          gate_proj: Linear::new(h, t.intermediate_size, false),
          down_proj: Linear::new(t.intermediate_size, h, false),
          up_proj: Linear::new(h, t.intermediate_size, false),
        },
        input_layernorm: RmsNorm::new_plus_one(h, t.rms_norm_eps),
        post_attention_layernorm: RmsNorm::new_plus_one(h, t.rms_norm_eps),
      });
    }
    Ok(PaliGemmaText {
      model: Inner {
        embed_tokens: Embedding::new(t.vocab_size, h),
        layers,
        norm: RmsNorm::new_plus_one(h, t.rms_norm_eps),
      },
      vocab: t.vocab_size,
      hidden: h,
      pad_id: c.pad_token_id as i32,
      exact_gelu: t.hidden_activation == "gelu",
      bidirectional: c.bidirectional,
      slot,
      pending: Mutex::new(None),
    })
  }

  fn embed(&self, tokens: &Array, offset: i32, n: i32) -> Result<Array> {
    let h = self.model.embed_tokens.forward(tokens)?;
    let guard = self
      .slot
      .lock()
      .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))?;
    let Some(st) = guard.as_ref() else {
      return Ok(h);
    };
    let (start, end) = (offset as usize, (offset + n) as usize);
    if start >= st.ids.len() {
      return Ok(h);
    }
    if end > st.ids.len() {
      return Err(Error::invalid(format!(
        "tokens at positions {start}..{end} run past the end of the multimodal prompt ({} tokens)",
        st.ids.len()
      )));
    }
    let mut tk = tokens.clone();
    let got = tk.to_vec::<i32>()?;
    let want = &st.ids[start..end];
    if got.len() != want.len() || got.iter().zip(want).any(|(a, b)| *a as u32 != *b) {
      return Err(Error::invalid(format!(
        "tokens at positions {start}..{end} differ from the multimodal prompt prepared by VlmModel"
      )));
    }
    let rows = &st.feature_row[start..end];
    let idx: Vec<i32> = rows.iter().map(|&r| r.max(0)).collect();
    let img: Vec<bool> = rows.iter().map(|&r| r >= 0).collect();
    let pad: Vec<bool> = got.iter().map(|&t| t == self.pad_id).collect();
    let idx = Array::from_slice(&idx, &[n])?;
    let img = Array::from_slice(&img, &[1, n, 1])?;
    let pad = Array::from_slice(&pad, &[1, n, 1])?;
    let gathered = ops::astype(
      &ops::expand_dims(&ops::take_axis(&st.features, &idx, 0)?, 0)?,
      h.dtype(),
    )?;
    let h = ops::where_(&img, &gathered, &h)?;
    let zero = Array::scalar_as(0.0, h.dtype())?;
    Ok(ops::where_(&pad, &zero, &h)?)
  }

  fn hidden_inner(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    if caches.len() != self.model.layers.len() {
      return Err(Error::invalid(format!(
        "{} caches for {} layers",
        caches.len(),
        self.model.layers.len()
      )));
    }
    let s = tokens.shape();
    if s.len() != 2 || s[0] != 1 {
      return Err(Error::invalid(format!("tokens must be [1, T], got {s:?}")));
    }
    let n = s[1];
    let offset = caches.first().map(|c| c.offset).unwrap_or(0);
    if self.bidirectional {
      // The prompt attends bidirectionally and must run in one pass (as
      // mlx-vlm, which turns chunked prefill off for PaliGemma): a chunk
      // at the start of a longer prepared prompt runs the whole prompt and
      // keeps the remaining hidden states for the following chunks.
      let prompt = {
        let g = self
          .slot
          .lock()
          .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))?;
        g.as_ref().map(|st| st.ids.clone())
      };
      if let Some(ids) = prompt {
        let len = ids.len();
        let mut pend = self
          .pending
          .lock()
          .map_err(|_| Error::invalid("the prefill state is poisoned"))?;
        if offset == 0 {
          *pend = None;
        }
        if offset == 0 && (n as usize) < len {
          let all: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
          let full = Array::from_slice(&all, &[1, len as i32])?;
          let h = self.run(&full, 0, len as i32, caches)?;
          let sh = h.shape();
          let head = ops::slice(&h, &[0, 0, 0], &[1, n, sh[2]], &[1, 1, 1])?;
          *pend = Some((n as usize, h));
          let mut tk = tokens.clone();
          let got = tk.to_vec::<i32>()?;
          if got[..] != all[..n as usize] {
            *pend = None;
            return Err(Error::invalid(
              "the first prompt chunk differs from the prepared prompt",
            ));
          }
          return Ok(head);
        }
        if let Some((next, h)) = pend.take() {
          let end = next + n as usize;
          if offset as usize == len && end <= len {
            let mut tk = tokens.clone();
            let got = tk.to_vec::<i32>()?;
            if got
              .iter()
              .zip(&ids[next..end])
              .any(|(a, b)| *a as u32 != *b)
            {
              return Err(Error::invalid(
                "a prompt chunk differs from the prepared prompt",
              ));
            }
            let sh = h.shape();
            let part = ops::slice(
              &h,
              &[0, next as i32, 0],
              &[1, end as i32, sh[2]],
              &[1, 1, 1],
            )?;
            if end < len {
              *pend = Some((end, h));
            }
            return Ok(part);
          }
        }
      }
    }
    self.run(tokens, offset, n, caches)
  }

  fn run(&self, tokens: &Array, offset: i32, n: i32, caches: &mut [KvCache]) -> Result<Array> {
    let h = self.embed(tokens, offset, n)?;
    // python: h * mx.array(hidden ** 0.5, dtype=h.dtype)
    let norm = Array::scalar_as((self.hidden as f64).sqrt() as f32 as f64, h.dtype())?;
    let mut h = ops::multiply(&h, &norm)?;
    let mask = match (self.bidirectional, caches.first()) {
      (false, Some(c)) => c.make_mask(n, None)?,
      _ => AttnMask::None,
    };
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      h = layer.forward(&h, &mask, cache, self.exact_gelu)?;
    }
    Ok(self.model.norm.forward(&h)?)
  }
}

impl LanguageModel for PaliGemmaText {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> mlxrs_core::Result<Array> {
    self.hidden_inner(tokens, caches).map_err(|e| match e {
      Error::Core(c) => c,
      other => mlxrs_core::Error::InvalidArgument(other.to_string()),
    })
  }

  fn logits(&self, hidden: &Array) -> mlxrs_core::Result<Array> {
    self.model.embed_tokens.as_linear(hidden)
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .map(|_| match max_kv_size {
        Some(m) => KvCache::new(KvCacheKind::Rotating {
          max_size: m,
          keep: 4,
        }),
        None => KvCache::standard(),
      })
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "language_model");
  }

  fn vocab_size(&self) -> i32 {
    self.vocab
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "language_model", f);
  }
}

/// The whole model, unloaded (python `paligemma.Model`).
pub struct PaliGemma {
  /// `vision_tower`
  pub vision: SiglipVision,
  /// `multi_modal_projector`
  pub projector: PaliProjector,
  /// `language_model`
  pub text: PaliGemmaText,
  /// Parsed config.
  pub config: PaliGemmaConfig,
}

impl PaliGemma {
  /// Build from config.json.
  pub fn new(raw: &Value, slot: PaliSlot) -> Result<PaliGemma> {
    let config = PaliGemmaConfig::parse(raw)?;
    Ok(PaliGemma {
      vision: SiglipVision::new(&config.vision)?,
      projector: PaliProjector {
        linear: Linear::new(config.vision.hidden_size, config.projection_dim, true),
      },
      text: PaliGemmaText::new(&config, slot)?,
      config,
    })
  }

  /// Image features for NHWC pixels of ONE image: `[patches, hidden]`,
  /// projected and divided by `sqrt(hidden_size)` (python
  /// `get_input_embeddings` + `_prepare_inputs_for_multimodal`).
  pub fn image_features(
    vision: &SiglipVision,
    projector: &PaliProjector,
    c: &PaliGemmaConfig,
    pixels: &Array,
  ) -> Result<Array> {
    let x = ops::astype(pixels, vision.dtype())?;
    let f = vision.forward(&x)?;
    let f = projector.forward(&f)?;
    let d = f.dim(-1).unwrap_or(0);
    let f = ops::reshape(&f, &[-1, d])?;
    let div = Array::scalar_as((c.hidden_size as f64).sqrt() as f32 as f64, f.dtype())?;
    Ok(ops::divide(&f, &div)?)
  }

  /// Weight fixes (python `sanitize`): drop `position_ids` / rotary
  /// `inv_freq`, PyTorch-layout patch embedding to MLX's, HF names
  /// (`model.*`) to mlx-vlm's, and a (tied) `lm_head`.
  pub fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let c = self.config.vision.num_channels;
    let mut out = HashMap::with_capacity(weights.len());
    for (k, v) in weights {
      let k = if let Some(r) = k.strip_prefix("model.language_model.") {
        format!("language_model.model.{r}")
      } else if let Some(r) = k.strip_prefix("model.vision_tower.") {
        format!("vision_tower.{r}")
      } else if let Some(r) = k.strip_prefix("model.multi_modal_projector.") {
        format!("multi_modal_projector.{r}")
      } else {
        k
      };
      if k.contains("position_ids") || k.contains("rotary_emb.inv_freq") || k.contains("lm_head.") {
        continue;
      }
      if k.ends_with("patch_embedding.weight") {
        let s = v.shape();
        if s.len() == 4 && s[3] != c && s[1] == c {
          out.insert(k, ops::transpose_axes(&v, &[0, 2, 3, 1])?);
          continue;
        }
      }
      out.insert(k, v);
    }
    Ok(out)
  }
}

// ---------------------------------------------------------------------------
// VlmModel glue (processor + feature merge)
// ---------------------------------------------------------------------------

/// The PaliGemma half of a [`crate::VlmModel`].
pub(crate) struct PaliFamily {
  vision: SiglipVision,
  projector: PaliProjector,
  config: PaliGemmaConfig,
  processor: crate::processors::ClipImageProcessor,
  slot: PaliSlot,
  bos: String,
}

/// Load a `paligemma` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &crate::model::LoadOptions,
) -> Result<crate::family::LoadedFamily> {
  use crate::family::{load_tower_model, loaded_model, open_weights, size_mismatch, token_name};
  let slot: PaliSlot = Arc::new(Mutex::new(None));
  let mut m = PaliGemma::new(config.raw(), slot.clone())?;
  let w = open_weights(path, &config, opts, |w| m.sanitize(w))?;
  let (tokenizer, image_token) = load_tower_model(
    path,
    w,
    &mut m.text,
    &mut m.vision,
    &mut m.projector,
    m.config.image_token_index,
  )?;
  let bos_id = config
    .raw()
    .get("bos_token_id")
    .and_then(Value::as_u64)
    .unwrap_or(2) as u32;
  let bos = token_name(&tokenizer, path, "bos_token_id", bos_id)?;
  let processor = crate::processors::ClipImageProcessor::from_dir(path)?;
  let size = m.config.vision.image_size as u32;
  let out = if processor.do_center_crop {
    Some(processor.crop)
  } else {
    processor.fixed_size
  };
  if processor.do_resize && out != Some((size, size)) {
    return Err(size_mismatch(path, "size", &out, size));
  }
  let PaliGemma {
    vision,
    projector,
    text,
    config: pcfg,
  } = m;
  Ok(crate::family::LoadedFamily::clip(
    loaded_model(path, config, tokenizer, Box::new(text), opts),
    Box::new(PaliFamily {
      vision,
      projector,
      config: pcfg,
      processor,
      slot,
      bos,
    }),
    image_token,
  ))
}

impl crate::family::VisionFamily for PaliFamily {
  /// python `PaliGemmaProcessor.__call__`: one image; every `<image>`
  /// becomes `image_seq_length` of them, the BOS token goes after the last
  /// one (or first, without any: then the image tokens are prepended as
  /// `build_string_from_input` does), and `"\n"` ends the prompt.
  fn process(
    &self,
    s: &crate::family::Shared<'_>,
    text: &str,
    images: &[crate::image::RgbImage],
  ) -> Result<crate::model::VlmInput> {
    if images.len() != 1 {
      return Err(Error::invalid(format!(
        "PaliGemma takes exactly one image per prompt (as mlx-vlm), got {}",
        images.len()
      )));
    }
    let tok = s.image_token;
    let n = self.config.tokens_per_image();
    let st = if text.contains(tok) {
      let mut e = text.replace(tok, &tok.repeat(n));
      let at = e.rfind(tok).map(|i| i + tok.len()).unwrap_or(0);
      e.insert_str(at, &self.bos);
      e + "\n"
    } else {
      format!("{}{}{text}\n", tok.repeat(n), self.bos)
    };
    let ids = s.tokenizer.encode(&st, false)?;
    let n_img = ids
      .iter()
      .filter(|&&t| t == self.config.image_token_index)
      .count();
    if n_img != n {
      return Err(Error::invalid(format!(
        "the prompt has {n_img} image tokens after expansion, expected {n} (one <image> per prompt)"
      )));
    }
    let mut input = crate::model::VlmInput::text(ids);
    input.clip_pixels = Some(self.processor.preprocess(images)?);
    Ok(input)
  }

  /// SigLIP features, projected and scaled, in place of the image tokens'
  /// embeddings.
  fn set_prompt(
    &self,
    s: &crate::family::Shared<'_>,
    input: &crate::model::VlmInput,
  ) -> Result<()> {
    let n_feat = self.config.tokens_per_image();
    crate::family::set_clip_prompt(
      s,
      input,
      self.config.image_token_index,
      &self.slot,
      |n_images, n_img_tokens| {
        if n_images != 1 || n_feat != n_img_tokens {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) and {n_images} image(s); PaliGemma \
             takes one image of {n_feat} tokens (process the prompt with VlmModel::process)"
          )));
        }
        Ok(())
      },
      |pv| PaliGemma::image_features(&self.vision, &self.projector, &self.config, pv),
      |ids, features, feature_row| PaliPrompt {
        ids,
        features,
        feature_row,
      },
    )
  }

  fn clear_prompt(&self) {
    crate::family::clear_slot(&self.slot);
  }

  fn clip_processor(&self) -> Option<&crate::processors::ClipImageProcessor> {
    Some(&self.processor)
  }

  /// mlx-vlm: no chat template, `"<image>" * num_images + prompt`.
  fn plain_prompt(
    &self,
    s: &crate::family::Shared<'_>,
    prompt: &str,
    num_images: usize,
  ) -> Option<String> {
    Some(s.image_token.repeat(num_images) + prompt)
  }
}
