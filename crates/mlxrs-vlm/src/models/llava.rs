//! LLaVA (1.5 layout): mlx-vlm's `models/llava/` (`vision.py`,
//! `language.py`, `llava.py`).
//!
//! - Vision tower: CLIP ViT (`ClipVisionModel`): a Conv2d patch embedding
//!   without bias, a class token, learned position embeddings, `pre_layrnorm`
//!   and pre-norm encoder layers (fast-GELU MLP). The features are the hidden
//!   states of `vision_feature_layer` (default -2), without the class token
//!   for the `default` select strategy.
//! - Projector (`LlavaMultiModalProjector`): `linear_2(gelu(linear_1(x)))`.
//! - Language model: a Llama decoder whose image-token embeddings are
//!   replaced by the projected image features (`_merge_input_ids_with_image_features`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::LanguageModel;
use mlxrs_nn::{
  AttnMask, Conv2d, Embedding, KvCache, KvCacheKind, LayerNorm, Linear, Module, Param, RmsNorm,
  Rope, Weights, attention_with_cache_update, module, swiglu,
};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

fn d_layers() -> i32 {
  24
}
fn d_hidden() -> i32 {
  1024
}
fn d_inter() -> i32 {
  4096
}
fn d_heads() -> i32 {
  16
}
fn d_image() -> i32 {
  336
}
fn d_patch() -> i32 {
  14
}
fn d_channels() -> i32 {
  3
}
fn d_ln_eps() -> f32 {
  1e-5
}
fn d_theta() -> f32 {
  10000.0
}
fn d_rms_eps() -> f32 {
  1e-6
}
fn d_max_pos() -> i32 {
  4096
}
fn d_t_hidden() -> i32 {
  4096
}
fn d_t_layers() -> i32 {
  32
}
fn d_t_inter() -> i32 {
  11008
}
fn d_t_heads() -> i32 {
  32
}
fn d_t_vocab() -> i32 {
  32000
}

/// `VisionConfig` of mlx-vlm's `llava/config.py` (CLIP).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionArgs {
  /// `model_type` (`clip_vision_model`)
  #[serde(default)]
  pub model_type: String,
  /// `num_hidden_layers`
  #[serde(default = "d_layers")]
  pub num_hidden_layers: i32,
  /// `hidden_size`
  #[serde(default = "d_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size`
  #[serde(default = "d_inter")]
  pub intermediate_size: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `image_size`
  #[serde(default = "d_image")]
  pub image_size: i32,
  /// `patch_size`
  #[serde(default = "d_patch")]
  pub patch_size: i32,
  /// `num_channels`
  #[serde(default = "d_channels")]
  pub num_channels: i32,
  /// `layer_norm_eps`
  #[serde(default = "d_ln_eps")]
  pub layer_norm_eps: f32,
}

/// `TextConfig` of mlx-vlm's `llava/config.py` (Llama; the same defaults,
/// which HF llava-1.5 configs rely on).
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaTextArgs {
  /// `model_type` (`llama`)
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
  #[serde(default = "d_t_heads")]
  pub num_attention_heads: i32,
  /// `rms_norm_eps`
  #[serde(default = "d_rms_eps")]
  pub rms_norm_eps: f32,
  /// `vocab_size`
  #[serde(default = "d_t_vocab")]
  pub vocab_size: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: Option<i32>,
  /// `rope_theta`
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `rope_scaling` (linear only, as mlx-vlm)
  pub rope_scaling: Option<Value>,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
}

/// `ModelConfig` of mlx-vlm's `llava/config.py`.
#[derive(Debug, Clone)]
pub struct LlavaConfig {
  /// `vision_config`
  pub vision: ClipVisionArgs,
  /// `text_config`
  pub text: LlavaTextArgs,
  /// `image_token_index`
  pub image_token_index: u32,
  /// `vision_feature_layer` (python indexing into the hidden states:
  /// embeddings, then one per layer; negative counts from the end)
  pub vision_feature_layer: i32,
  /// `vision_feature_select_strategy == "default"` (drop the class token)
  pub drop_cls: bool,
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
  serde_json::from_value(v.clone())
    .map_err(|e| Error::invalid(format!("config.json `{what}`: {e}")))
}

impl LlavaConfig {
  /// Parse config.json (`text_config` / `vision_config` sub-objects).
  pub fn parse(raw: &Value) -> Result<LlavaConfig> {
    let empty = Value::Object(Default::default());
    let vision: ClipVisionArgs =
      parse(raw.get("vision_config").unwrap_or(&empty), "vision_config")?;
    let text_v = raw
      .get("text_config")
      .ok_or_else(|| Error::invalid("config.json: llava needs a `text_config`"))?;
    let text: LlavaTextArgs = parse(text_v, "text_config")?;
    if !matches!(text.model_type.as_str(), "llama" | "mistral" | "") {
      return Err(Error::invalid(format!(
        "config.json: llava with a `{}` language model is not supported (llama only)",
        text.model_type
      )));
    }
    if !matches!(vision.model_type.as_str(), "clip_vision_model" | "") {
      return Err(Error::invalid(format!(
        "config.json: llava with a `{}` vision tower is not supported (clip_vision_model only)",
        vision.model_type
      )));
    }
    let pos = |x: i32| x > 0;
    if !(pos(vision.hidden_size)
      && pos(vision.num_attention_heads)
      && vision.hidden_size % vision.num_attention_heads == 0
      && pos(vision.patch_size)
      && pos(vision.image_size)
      && vision.image_size % vision.patch_size == 0
      && vision.num_hidden_layers >= 0
      && pos(text.hidden_size)
      && pos(text.num_attention_heads)
      && text.hidden_size % text.num_attention_heads == 0
      && text
        .num_key_value_heads
        .is_none_or(|k| pos(k) && text.num_attention_heads % k == 0)
      && pos(text.vocab_size))
    {
      return Err(Error::invalid(
        "config.json: inconsistent llava sizes (heads, patch, image size)",
      ));
    }
    let image_token_index = raw
      .get("image_token_index")
      .or_else(|| raw.get("image_token_id"))
      .and_then(Value::as_u64)
      .unwrap_or(32000);
    let vision_feature_layer = match raw.get("vision_feature_layer") {
      None | Some(Value::Null) => -2,
      Some(v) => v.as_i64().map(|x| x as i32).ok_or_else(|| {
        Error::invalid(format!(
          "config.json: vision_feature_layer {v} (a list of layers is not supported)"
        ))
      })?,
    };
    let n_states = vision.num_hidden_layers + 1;
    if vision_feature_layer >= n_states || vision_feature_layer < -n_states {
      return Err(Error::invalid(format!(
        "config.json: vision_feature_layer {vision_feature_layer} is out of range for {n_states} hidden states"
      )));
    }
    let strategy = raw
      .get("vision_feature_select_strategy")
      .and_then(Value::as_str)
      .unwrap_or("default");
    if !matches!(strategy, "default" | "full") {
      return Err(Error::invalid(format!(
        "config.json: unknown vision_feature_select_strategy `{strategy}`"
      )));
    }
    Ok(LlavaConfig {
      vision,
      text,
      image_token_index: u32::try_from(image_token_index)
        .map_err(|_| Error::invalid("config.json: image_token_index is too large"))?,
      vision_feature_layer,
      drop_cls: strategy == "default",
    })
  }

  /// Image tokens per image: patches (+ the class token with the `full`
  /// strategy) — python `LlavaProcessor`'s `num_image_tokens`.
  pub fn tokens_per_image(&self) -> usize {
    let g = (self.vision.image_size / self.vision.patch_size) as usize;
    g * g + usize::from(!self.drop_cls)
  }
}

// ---------------------------------------------------------------------------
// CLIP vision tower
// ---------------------------------------------------------------------------

struct ClipAttention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  out_proj: Linear,
  heads: i32,
  scale: f32,
}
module!(ClipAttention {
  q_proj,
  k_proj,
  v_proj,
  out_proj
});

impl ClipAttention {
  fn forward(&self, x: &Array) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads = |t: Array| -> Result<Array> {
      Ok(ops::transpose_axes(
        &ops::reshape(&t, &[b, l, self.heads, -1])?,
        &[0, 2, 1, 3],
      )?)
    };
    let q = heads(self.q_proj.forward(x)?)?;
    let k = heads(self.k_proj.forward(x)?)?;
    let v = heads(self.v_proj.forward(x)?)?;
    let o = scaled_dot_product_attention(&q, &k, &v, self.scale, Mask::None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    Ok(self.out_proj.forward(&o)?)
  }
}

struct ClipMlp {
  fc1: Linear,
  fc2: Linear,
}
module!(ClipMlp { fc1, fc2 });

struct ClipLayer {
  self_attn: ClipAttention,
  layer_norm1: LayerNorm,
  mlp: ClipMlp,
  layer_norm2: LayerNorm,
}
module!(ClipLayer {
  self_attn,
  layer_norm1,
  mlp,
  layer_norm2
});

impl ClipLayer {
  fn forward(&self, x: &Array) -> Result<Array> {
    let y = self.self_attn.forward(&self.layer_norm1.forward(x)?)?;
    let x = ops::add(x, &y)?;
    let y = self.layer_norm2.forward(&x)?;
    let y = self
      .mlp
      .fc2
      .forward(&mlxrs_nn::gelu_fast_approx(&self.mlp.fc1.forward(&y)?)?)?;
    Ok(ops::add(&x, &y)?)
  }
}

struct ClipEncoder {
  layers: Vec<ClipLayer>,
}
module!(ClipEncoder { layers });

struct ClipEmbeddings {
  class_embedding: Param,
  patch_embedding: Conv2d,
  position_embedding: Embedding,
}
module!(ClipEmbeddings {
  class_embedding,
  patch_embedding,
  position_embedding
});

struct ClipInner {
  embeddings: ClipEmbeddings,
  pre_layrnorm: LayerNorm,
  encoder: ClipEncoder,
  post_layernorm: LayerNorm,
}
module!(ClipInner {
  embeddings,
  pre_layrnorm,
  encoder,
  post_layernorm
});

/// CLIP vision tower (python `VisionModel`, weights under
/// `vision_tower.vision_model.*`).
pub struct ClipVision {
  vision_model: ClipInner,
  args: ClipVisionArgs,
}
module!(ClipVision { vision_model });

impl ClipVision {
  /// An unloaded tower.
  pub fn new(a: &ClipVisionArgs) -> Result<ClipVision> {
    let d = a.hidden_size;
    let layers = (0..a.num_hidden_layers)
      .map(|_| ClipLayer {
        self_attn: ClipAttention {
          q_proj: Linear::new(d, d, true),
          k_proj: Linear::new(d, d, true),
          v_proj: Linear::new(d, d, true),
          out_proj: Linear::new(d, d, true),
          heads: a.num_attention_heads,
          scale: ((d / a.num_attention_heads) as f32).powf(-0.5),
        },
        layer_norm1: LayerNorm::new(d, a.layer_norm_eps, true, true),
        mlp: ClipMlp {
          fc1: Linear::new(d, a.intermediate_size, true),
          fc2: Linear::new(a.intermediate_size, d, true),
        },
        layer_norm2: LayerNorm::new(d, a.layer_norm_eps, true, true),
      })
      .collect();
    let g = a.image_size / a.patch_size;
    Ok(ClipVision {
      vision_model: ClipInner {
        embeddings: ClipEmbeddings {
          class_embedding: Param::new(&[d]),
          patch_embedding: Conv2d::new(
            a.num_channels,
            d,
            (a.patch_size, a.patch_size),
            (a.patch_size, a.patch_size),
            (0, 0),
            (1, 1),
            1,
            false,
          )?,
          position_embedding: Embedding::new(g * g + 1, d),
        },
        pre_layrnorm: LayerNorm::new(d, 1e-5, true, true),
        encoder: ClipEncoder { layers },
        post_layernorm: LayerNorm::new(d, 1e-5, true, true),
      },
      args: a.clone(),
    })
  }

  /// The hidden states of layer `feature_layer` (python
  /// `vision_tower(x, output_hidden_states=True)[-1][feature_layer]`) for
  /// NHWC pixels `[N, image_size, image_size, C]`: `[N, 1 + patches, D]`.
  pub fn hidden_state(&self, pixels: &Array, feature_layer: i32) -> Result<Array> {
    let s = pixels.shape();
    let a = &self.args;
    if s.len() != 4 || s[1] != a.image_size || s[2] != a.image_size || s[3] != a.num_channels {
      return Err(Error::invalid(format!(
        "the vision tower takes [N, {0}, {0}, {1}] pixels, got {s:?}",
        a.image_size, a.num_channels
      )));
    }
    let m = &self.vision_model;
    let x = ops::astype(pixels, self.dtype())?;
    let p = m.embeddings.patch_embedding.forward(&x)?;
    let ps = p.shape();
    let p = ops::reshape(&p, &[ps[0], ps[1] * ps[2], ps[3]])?;
    let cls = ops::broadcast_to(
      &ops::reshape(&m.embeddings.class_embedding.value, &[1, 1, -1])?,
      &[ps[0], 1, ps[3]],
    )?;
    let x = ops::concatenate_axis(&[ops::astype(&cls, p.dtype())?, p], 1)?;
    let n_pos = x.dim(1).unwrap_or(0);
    let ids = ops::arange(0.0, n_pos as f64, 1.0, Dtype::Int32)?;
    let pos = ops::expand_dims(&m.embeddings.position_embedding.forward(&ids)?, 0)?;
    let mut x = m.pre_layrnorm.forward(&ops::add(&x, &pos)?)?;
    let n_states = m.encoder.layers.len() as i32 + 1;
    let want = if feature_layer < 0 {
      n_states + feature_layer
    } else {
      feature_layer
    };
    if want < 0 || want >= n_states {
      return Err(Error::invalid(format!(
        "vision_feature_layer {feature_layer} out of range"
      )));
    }
    for layer in m.encoder.layers.iter().take(want as usize) {
      x = layer.forward(&x)?;
    }
    Ok(x)
  }

  /// Parameter dtype (of the patch embedding).
  pub fn dtype(&self) -> Dtype {
    let mut d = Dtype::Float32;
    self
      .vision_model
      .embeddings
      .patch_embedding
      .visit("", &mut |_, a| d = a.dtype());
    if !d.is_float() {
      return Dtype::Float32;
    }
    d
  }
}

/// python `LlavaMultiModalProjector`.
pub struct Projector {
  linear_1: Linear,
  linear_2: Linear,
}
module!(Projector { linear_1, linear_2 });

/// MLX's exact GELU as `nn.GELU()` computes it: `x * (1 + erf(x / sqrt(2))) / 2`.
fn gelu_exact(x: &Array) -> Result<Array> {
  let dt = x.dtype();
  let s = |v: f64| Array::scalar_as(v, dt);
  let e = ops::erf(&ops::divide(x, &s(std::f64::consts::SQRT_2)?)?)?;
  let y = ops::multiply(x, &ops::add(&s(1.0)?, &e)?)?;
  Ok(ops::divide(&y, &s(2.0)?)?)
}

impl Projector {
  /// `linear_2(gelu(linear_1(x)))`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    Ok(
      self
        .linear_2
        .forward(&gelu_exact(&self.linear_1.forward(x)?)?)?,
    )
  }
}

// ---------------------------------------------------------------------------
// Language model
// ---------------------------------------------------------------------------

/// The prompt the language model merges image features into.
pub struct LlavaPrompt {
  /// Prompt ids (image tokens expanded).
  pub ids: Vec<u32>,
  /// Projected image features `[n_image_tokens, hidden]`.
  pub features: Array,
  /// Per prompt position: the feature row of an image token, else -1.
  pub feature_row: Vec<i32>,
}

/// Shared slot for the prepared multimodal prompt.
pub type LlavaSlot = Arc<Mutex<Option<LlavaPrompt>>>;

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
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
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
    let m = self.mlp.down_proj.forward(&swiglu(
      &self.mlp.gate_proj.forward(&m)?,
      &self.mlp.up_proj.forward(&m)?,
    )?)?;
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

/// The Llama language model of LLaVA (python `llava/language.py`
/// `LanguageModel`, weights under `language_model.*`). As an
/// [`mlxrs_lm::LanguageModel`], prompt positions read the image features
/// prepared in its slot.
pub struct LlavaText {
  model: Inner,
  lm_head: Option<Linear>,
  vocab: i32,
  slot: LlavaSlot,
}
module!(LlavaText { model, lm_head });

impl LlavaText {
  /// An unloaded model.
  pub fn new(t: &LlavaTextArgs, slot: LlavaSlot) -> Result<LlavaText> {
    let h = t.hidden_size;
    let nh = t.num_attention_heads;
    let nkv = t.num_key_value_heads.unwrap_or(nh);
    let hd = h / nh;
    // mlx-vlm's llava: linear rope scaling only (`scale = 1 / factor`).
    let scaling = match &t.rope_scaling {
      None | Some(Value::Null) => None,
      Some(v) => {
        let ty = v
          .get("type")
          .or_else(|| v.get("rope_type"))
          .and_then(Value::as_str);
        if ty != Some("linear") || v.get("factor").and_then(Value::as_f64).is_none() {
          return Err(Error::invalid(format!(
            "config.json: llava rope_scaling {v} (only linear is supported)"
          )));
        }
        Some(v.clone())
      }
    };
    let mut layers = Vec::new();
    for _ in 0..t.num_hidden_layers {
      layers.push(Block {
        self_attn: Attention {
          q_proj: Linear::new(h, nh * hd, false),
          k_proj: Linear::new(h, nkv * hd, false),
          v_proj: Linear::new(h, nkv * hd, false),
          o_proj: Linear::new(nh * hd, h, false),
          n_heads: nh,
          n_kv: nkv,
          scale: (hd as f32).powf(-0.5),
          rope: Rope::from_config(
            hd,
            t.rope_theta,
            t.rope_traditional,
            scaling.as_ref(),
            Some(t.max_position_embeddings),
          )?,
        },
        mlp: Mlp {
          gate_proj: Linear::new(h, t.intermediate_size, false),
          down_proj: Linear::new(t.intermediate_size, h, false),
          up_proj: Linear::new(h, t.intermediate_size, false),
        },
        input_layernorm: RmsNorm::new(h, t.rms_norm_eps),
        post_attention_layernorm: RmsNorm::new(h, t.rms_norm_eps),
      });
    }
    Ok(LlavaText {
      model: Inner {
        embed_tokens: Embedding::new(t.vocab_size, h),
        layers,
        norm: RmsNorm::new(h, t.rms_norm_eps),
      },
      lm_head: (!t.tie_word_embeddings).then(|| Linear::new(h, t.vocab_size, false)),
      vocab: t.vocab_size,
      slot,
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
        "tokens at positions {start}..{end} differ from the multimodal prompt prepared by LlavaModel; \
         generate through it, or clear the prompt before text-only use"
      )));
    }
    let rows = &st.feature_row[start..end];
    if !rows.iter().any(|&r| r >= 0) {
      return Ok(h);
    }
    let idx: Vec<i32> = rows.iter().map(|&r| r.max(0)).collect();
    let mask: Vec<bool> = rows.iter().map(|&r| r >= 0).collect();
    let idx = Array::from_slice(&idx, &[n])?;
    let mask = Array::from_slice(&mask, &[1, n, 1])?;
    let gathered = ops::expand_dims(&ops::take_axis(&st.features, &idx, 0)?, 0)?;
    Ok(ops::where_(&mask, &ops::astype(&gathered, h.dtype())?, &h)?)
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
    let mut h = self.embed(tokens, offset, n)?;
    let mask = match caches.first() {
      Some(c) => c.make_mask(n, None)?,
      None => AttnMask::None,
    };
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      h = layer.forward(&h, &mask, cache)?;
    }
    Ok(self.model.norm.forward(&h)?)
  }
}

impl LanguageModel for LlavaText {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> mlxrs_core::Result<Array> {
    self.hidden_inner(tokens, caches).map_err(|e| match e {
      Error::Core(c) => c,
      other => mlxrs_core::Error::InvalidArgument(other.to_string()),
    })
  }

  fn logits(&self, hidden: &Array) -> mlxrs_core::Result<Array> {
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

/// The whole model, unloaded (python `llava.Model`).
pub struct Llava {
  /// `vision_tower`
  pub vision: ClipVision,
  /// `multi_modal_projector`
  pub projector: Projector,
  /// `language_model`
  pub text: LlavaText,
  /// Parsed config.
  pub config: LlavaConfig,
}

impl Llava {
  /// Build from config.json.
  pub fn new(raw: &Value, slot: LlavaSlot) -> Result<Llava> {
    let config = LlavaConfig::parse(raw)?;
    let vd = config.vision.hidden_size;
    let td = config.text.hidden_size;
    Ok(Llava {
      vision: ClipVision::new(&config.vision)?,
      projector: Projector {
        linear_1: Linear::new(vd, td, true),
        linear_2: Linear::new(td, td, true),
      },
      text: LlavaText::new(&config.text, slot)?,
      config,
    })
  }

  /// python `Model.sanitize` + `VisionModel.sanitize` +
  /// `LanguageModel.sanitize`: drop `position_ids` and rotary `inv_freq`,
  /// put a PyTorch-layout patch embedding `[out, in, kh, kw]` into MLX's
  /// `[out, kh, kw, in]`, drop a tied `lm_head`. HF-layout names
  /// (`model.vision_tower.*`, `model.language_model.*`, `lm_head.*`) are
  /// mapped to mlx-vlm's.
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
      } else if let Some(r) = k.strip_prefix("lm_head.") {
        format!("language_model.lm_head.{r}")
      } else {
        k
      };
      if k.contains("position_ids") || k.contains("rotary_emb.inv_freq") {
        continue;
      }
      if self.config.text.tie_word_embeddings && k.starts_with("language_model.lm_head.") {
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

/// The LLaVA half of a [`crate::VlmModel`].
pub(crate) struct LlavaFamily {
  vision: ClipVision,
  projector: Projector,
  config: LlavaConfig,
  processor: crate::processors::ClipImageProcessor,
  slot: LlavaSlot,
}

/// Load a `llava` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &crate::model::LoadOptions,
) -> Result<crate::family::LoadedFamily> {
  use crate::family::{load_tower_model, loaded_model, open_weights, size_mismatch};
  let slot: LlavaSlot = Arc::new(Mutex::new(None));
  let mut m = Llava::new(config.raw(), slot.clone())?;
  let w = open_weights(path, &config, opts, |w| m.sanitize(w))?;
  let (tokenizer, image_token) = load_tower_model(
    path,
    w,
    &mut m.text,
    &mut m.vision,
    &mut m.projector,
    m.config.image_token_index,
  )?;
  let processor = crate::processors::ClipImageProcessor::from_dir(path)?;
  let size = m.config.vision.image_size as u32;
  if processor.do_center_crop && processor.crop != (size, size) {
    return Err(size_mismatch(path, "crop_size", &processor.crop, size));
  }
  let Llava {
    vision,
    projector,
    text,
    config: lcfg,
  } = m;
  Ok(crate::family::LoadedFamily::clip(
    loaded_model(path, config, tokenizer, Box::new(text), opts),
    Box::new(LlavaFamily {
      vision,
      projector,
      config: lcfg,
      processor,
      slot,
    }),
    image_token,
  ))
}

/// Expand each image token of `ids` to `counts[k]` tokens (image `k`).
pub(crate) fn expand_image_tokens(ids: Vec<u32>, img_id: u32, counts: &[usize]) -> Vec<u32> {
  let total: usize = counts.iter().sum();
  let mut out = Vec::with_capacity(ids.len() + total);
  let mut k = 0;
  for t in ids {
    if t == img_id {
      out.extend(std::iter::repeat_n(
        img_id,
        counts.get(k).copied().unwrap_or(1),
      ));
      k += 1;
    } else {
      out.push(t);
    }
  }
  out
}

/// The CLIP features of `pixels` (NHWC) at the configured layer, the class
/// token dropped with the `default` strategy, projected:
/// `[n, tokens_per_image, hidden]` (python `get_input_embeddings` up to the
/// merge).
pub(crate) fn clip_features(
  vision: &ClipVision,
  projector: &Projector,
  config: &LlavaConfig,
  pixels: &Array,
) -> Result<Array> {
  let hs = vision.hidden_state(pixels, config.vision_feature_layer)?;
  let hs = if config.drop_cls {
    let s = hs.shape();
    ops::slice(&hs, &[0, 1, 0], &s, &[1, 1, 1])?
  } else {
    hs
  };
  projector.forward(&hs)
}

impl crate::family::VisionFamily for LlavaFamily {
  /// python `LlavaProcessor.__call__`: CLIP pixel values, each `<image>`
  /// expanded to `patches (+1 with the "full" strategy)` tokens.
  fn process_ids(
    &self,
    s: &crate::family::Shared<'_>,
    ids: Vec<u32>,
    images: &[crate::image::RgbImage],
  ) -> Result<crate::model::VlmInput> {
    let img_id = self.config.image_token_index;
    let n_ph = ids.iter().filter(|&&t| t == img_id).count();
    if n_ph != images.len() {
      return Err(crate::family::placeholder_mismatch(
        n_ph,
        s.image_token,
        images.len(),
      ));
    }
    if images.is_empty() {
      return Ok(crate::model::VlmInput::text(ids));
    }
    let pv = self.processor.preprocess(images)?;
    let counts = vec![self.config.tokens_per_image(); images.len()];
    let mut input = crate::model::VlmInput::text(expand_image_tokens(ids, img_id, &counts));
    input.clip_pixels = Some(pv);
    Ok(input)
  }

  /// CLIP features of the chosen layer, projected, in place of the image
  /// tokens' embeddings (python `get_input_embeddings`).
  fn set_prompt(
    &self,
    s: &crate::family::Shared<'_>,
    input: &crate::model::VlmInput,
  ) -> Result<()> {
    crate::family::set_clip_prompt(
      s,
      input,
      self.config.image_token_index,
      &self.slot,
      crate::family::tokens_per_image(self.config.tokens_per_image()),
      |pv| {
        let f = clip_features(&self.vision, &self.projector, &self.config, pv)?;
        let d = f.dim(-1).unwrap_or(0);
        Ok(ops::reshape(&f, &[-1, d])?)
      },
      |ids, features, feature_row| LlavaPrompt {
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
}
