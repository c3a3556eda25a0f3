//! Gemma 3: mlx-vlm's `models/gemma3/` (`vision.py`, `language.py`,
//! `gemma3.py`).
//!
//! - Vision tower: SigLIP ([`SiglipVision`], every image of the batch).
//! - Projector (`Gemma3MultiModalProjector`): the patch grid average-pooled
//!   to `sqrt(mm_tokens_per_image)` per side, RMSNorm (`1 + w`), times
//!   `mm_input_projection_weight`; features divided by
//!   `sqrt(hidden_size)` (top level, 2048 by default as mlx-vlm).
//! - Language model: Gemma 3 text (q/k RMSNorm, four norms per block,
//!   `query_pre_attn_scalar`, sliding-window layers with their own RoPE
//!   base except every `sliding_window_pattern`-th), embeddings times
//!   `sqrt(hidden)` rounded to bfloat16 as mlx-vlm, causal attention, the
//!   output layer tied to the embedding as mlx-vlm loads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::LanguageModel;
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, KvCacheKind, Linear, Module, Param, RmsNorm, Rope, Weights,
  attention_with_cache_update, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::paligemma::{SiglipVision, SiglipVisionArgs};
use crate::error::{Error, Result};

fn d_heads() -> i32 {
  8
}
fn d_head_dim() -> i32 {
  256
}
fn d_eps() -> f32 {
  1e-6
}
fn d_vocab() -> i32 {
  262208
}
fn d_kv() -> i32 {
  4
}
fn d_global() -> f32 {
  1_000_000.0
}
fn d_local() -> f32 {
  10_000.0
}
fn d_qpas() -> f32 {
  256.0
}
fn d_window() -> i32 {
  1024
}
fn d_mm() -> i32 {
  256
}
fn d_pattern() -> i32 {
  6
}
fn d_max_pos() -> i32 {
  4096
}

/// `TextConfig` of mlx-vlm's `gemma3/config.py`.
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3TextArgs {
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `head_dim`
  #[serde(default = "d_head_dim")]
  pub head_dim: i32,
  /// `rms_norm_eps`
  #[serde(default = "d_eps")]
  pub rms_norm_eps: f32,
  /// `vocab_size`
  #[serde(default = "d_vocab")]
  pub vocab_size: i32,
  /// `num_key_value_heads`
  #[serde(default = "d_kv")]
  pub num_key_value_heads: i32,
  /// `rope_global_base_freq`
  #[serde(default = "d_global")]
  pub rope_global_base_freq: f32,
  /// `rope_local_base_freq`
  #[serde(default = "d_local")]
  pub rope_local_base_freq: f32,
  /// `rope_traditional`
  #[serde(default)]
  pub rope_traditional: bool,
  /// `query_pre_attn_scalar`
  #[serde(default = "d_qpas")]
  pub query_pre_attn_scalar: f32,
  /// `sliding_window`
  #[serde(default = "d_window")]
  pub sliding_window: i32,
  /// `rope_scaling` (global layers)
  pub rope_scaling: Option<Value>,
  /// `mm_tokens_per_image`
  #[serde(default = "d_mm")]
  pub mm_tokens_per_image: i32,
  /// `sliding_window_pattern`
  #[serde(default = "d_pattern")]
  pub sliding_window_pattern: i32,
  /// `max_position_embeddings`
  #[serde(default = "d_max_pos")]
  pub max_position_embeddings: i32,
}

/// `ModelConfig` of mlx-vlm's `gemma3/config.py`.
#[derive(Debug, Clone)]
pub struct Gemma3Config {
  /// `vision_config`
  pub vision: SiglipVisionArgs,
  /// `text_config`
  pub text: Gemma3TextArgs,
  /// `image_token_index`
  pub image_token_index: u32,
  /// `pad_token_id`
  pub pad_token_id: u32,
  /// top-level `hidden_size` (the image-feature divisor; 2048 by default)
  pub hidden_size: i32,
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

impl Gemma3Config {
  /// Parse config.json (top-level keys fill in missing text keys, as
  /// mlx-vlm's `from_dict`).
  pub fn parse(raw: &Value) -> Result<Gemma3Config> {
    let empty = Value::Object(Default::default());
    let vision: SiglipVisionArgs =
      parse(raw.get("vision_config").unwrap_or(&empty), "vision_config")?;
    let mut tv = raw.get("text_config").cloned().unwrap_or(empty.clone());
    if let (Some(o), Some(top)) = (tv.as_object_mut(), raw.as_object()) {
      for k in ["mm_tokens_per_image"] {
        if !o.contains_key(k) {
          if let Some(v) = top.get(k) {
            o.insert(k.to_string(), v.clone());
          }
        }
      }
    }
    let text: Gemma3TextArgs = parse(&tv, "text_config")?;
    let pos = |x: i32| x > 0;
    let v = &vision;
    let pps = if pos(v.patch_size) {
      v.image_size / v.patch_size
    } else {
      0
    };
    let tps = (text.mm_tokens_per_image as f64).sqrt() as i32;
    if !(pos(v.hidden_size)
      && pos(v.num_attention_heads)
      && v.hidden_size % v.num_attention_heads == 0
      && pos(pps)
      && pos(tps)
      && tps * tps == text.mm_tokens_per_image
      && pps % tps == 0
      && pos(text.hidden_size)
      && pos(text.num_attention_heads)
      && pos(text.num_key_value_heads)
      && text.num_attention_heads % text.num_key_value_heads == 0
      && pos(text.head_dim)
      && pos(text.vocab_size)
      && pos(text.sliding_window_pattern)
      && pos(text.sliding_window)
      && text.query_pre_attn_scalar > 0.0)
    {
      return Err(Error::invalid(
        "config.json: inconsistent gemma3 sizes (heads, patches, mm_tokens_per_image)",
      ));
    }
    let hidden_size = raw
      .get("hidden_size")
      .and_then(Value::as_i64)
      .map(|x| x as i32)
      .unwrap_or(2048);
    if hidden_size <= 0 {
      return Err(Error::invalid("config.json: hidden_size must be positive"));
    }
    Ok(Gemma3Config {
      image_token_index: u32_key(raw, "image_token_index", 262144)?,
      pad_token_id: u32_key(raw, "pad_token_id", 0)?,
      vision,
      text,
      hidden_size,
    })
  }

  /// Image tokens per image (`mm_tokens_per_image`).
  pub fn tokens_per_image(&self) -> usize {
    self.text.mm_tokens_per_image as usize
  }
}

/// python `Gemma3MultiModalProjector`.
pub struct Gemma3Projector {
  mm_input_projection_weight: Param,
  mm_soft_emb_norm: RmsNorm,
  pps: i32,
  kernel: i32,
}
module!(Gemma3Projector {
  mm_input_projection_weight,
  mm_soft_emb_norm
});

impl Gemma3Projector {
  /// Vision features `[b, patches, Dv]` -> `[b, mm_tokens, Dt]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let s = x.shape();
    let (b, d) = (s[0], s[2]);
    let (p, k) = (self.pps, self.kernel);
    let t = p / k;
    // [b, p, p, d] -> [b, t, k, t, k, d] -> mean over the two k axes.
    let g = ops::reshape(x, &[b, t, k, t, k, d])?;
    let sum = ops::sum_axes(&g, &[2, 4], false)?;
    let pooled = ops::divide(&sum, &Array::scalar_as((k * k) as f64, sum.dtype())?)?;
    let pooled = ops::reshape(&pooled, &[b, t * t, d])?;
    let n = self.mm_soft_emb_norm.forward(&pooled)?;
    let w = ops::astype(&self.mm_input_projection_weight.value, n.dtype())?;
    Ok(ops::astype(&ops::matmul(&n, &w)?, x.dtype())?)
  }
}

/// The prompt the language model merges image features into.
pub struct Gemma3Prompt {
  /// Prompt ids (image tokens expanded).
  pub ids: Vec<u32>,
  /// Scaled image features `[n_image_tokens, hidden]`.
  pub features: Array,
  /// Per prompt position: the feature row of an image token, else -1.
  pub feature_row: Vec<i32>,
}

/// Shared slot for the prepared multimodal prompt.
pub type Gemma3Slot = Arc<Mutex<Option<Gemma3Prompt>>>;

struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  q_norm: RmsNorm,
  k_norm: RmsNorm,
  n_heads: i32,
  n_kv: i32,
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
  pre_feedforward_layernorm: RmsNorm,
  post_feedforward_layernorm: RmsNorm,
  sliding: bool,
}
module!(Block {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm,
  pre_feedforward_layernorm,
  post_feedforward_layernorm
});

/// python `clip_residual`: float16 sums clipped to the float16 range.
fn residual(x: &Array, y: &Array) -> Result<Array> {
  if x.dtype() != Dtype::Float16 {
    return Ok(ops::add(x, y)?);
  }
  let s = ops::add(
    &ops::astype(x, Dtype::Float32)?,
    &ops::astype(y, Dtype::Float32)?,
  )?;
  let b = 65504.0;
  let (lo, hi) = (
    Array::scalar_as(-b, Dtype::Float32)?,
    Array::scalar_as(b, Dtype::Float32)?,
  );
  let c = ops::clip(&s, Some(&lo), Some(&hi))?;
  Ok(ops::astype(&c, Dtype::Float16)?)
}

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
    let q = a
      .q_norm
      .forward(&heads(a.q_proj.forward(&h)?, a.n_heads)?)?;
    let k = a.k_norm.forward(&heads(a.k_proj.forward(&h)?, a.n_kv)?)?;
    let v = heads(a.v_proj.forward(&h)?, a.n_kv)?;
    let q = a.rope.forward(&q, cache.offset)?;
    let k = a.rope.forward(&k, cache.offset)?;
    let o = attention_with_cache_update(&q, &k, &v, cache, a.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    let r = self
      .post_attention_layernorm
      .forward(&a.o_proj.forward(&o)?)?;
    let h = residual(x, &r)?;
    let m = self.pre_feedforward_layernorm.forward(&h)?;
    let g = mlxrs_nn::gelu_approx(&self.mlp.gate_proj.forward(&m)?)?;
    let m = self
      .mlp
      .down_proj
      .forward(&ops::multiply(&g, &self.mlp.up_proj.forward(&m)?)?)?;
    residual(&h, &self.post_feedforward_layernorm.forward(&m)?)
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

/// Gemma 3's language model (python `gemma3/language.py`, weights under
/// `language_model.*`).
pub struct Gemma3Text {
  model: Inner,
  lm_head: Linear,
  vocab: i32,
  hidden: i32,
  pad_id: i32,
  window: i32,
  slot: Gemma3Slot,
}
module!(Gemma3Text { model, lm_head });

impl Gemma3Text {
  /// An unloaded model.
  pub fn new(c: &Gemma3Config, slot: Gemma3Slot) -> Result<Gemma3Text> {
    let t = &c.text;
    let h = t.hidden_size;
    let (nh, nkv, hd) = (t.num_attention_heads, t.num_key_value_heads, t.head_dim);
    let mut layers = Vec::new();
    for i in 0..t.num_hidden_layers {
      let sliding = (i + 1) % t.sliding_window_pattern != 0;
      let rope = if sliding {
        Rope::new(hd, t.rope_traditional, t.rope_local_base_freq, 1.0)
      } else {
        Rope::from_config(
          hd,
          t.rope_global_base_freq,
          t.rope_traditional,
          t.rope_scaling.as_ref(),
          Some(t.max_position_embeddings),
        )?
      };
      layers.push(Block {
        self_attn: Attention {
          q_proj: Linear::new(h, nh * hd, false),
          k_proj: Linear::new(h, nkv * hd, false),
          v_proj: Linear::new(h, nkv * hd, false),
          o_proj: Linear::new(nh * hd, h, false),
          q_norm: RmsNorm::new_plus_one(hd, t.rms_norm_eps),
          k_norm: RmsNorm::new_plus_one(hd, t.rms_norm_eps),
          n_heads: nh,
          n_kv: nkv,
          scale: t.query_pre_attn_scalar.powf(-0.5),
          rope,
        },
        mlp: Mlp {
          gate_proj: Linear::new(h, t.intermediate_size, false),
          down_proj: Linear::new(t.intermediate_size, h, false),
          up_proj: Linear::new(h, t.intermediate_size, false),
        },
        input_layernorm: RmsNorm::new_plus_one(h, t.rms_norm_eps),
        post_attention_layernorm: RmsNorm::new_plus_one(h, t.rms_norm_eps),
        pre_feedforward_layernorm: RmsNorm::new_plus_one(h, t.rms_norm_eps),
        post_feedforward_layernorm: RmsNorm::new_plus_one(h, t.rms_norm_eps),
        sliding,
      });
    }
    Ok(Gemma3Text {
      model: Inner {
        embed_tokens: Embedding::new(t.vocab_size, h),
        layers,
        norm: RmsNorm::new_plus_one(h, t.rms_norm_eps),
      },
      lm_head: Linear::new(h, t.vocab_size, false),
      vocab: t.vocab_size,
      hidden: h,
      pad_id: c.pad_token_id as i32,
      window: t.sliding_window,
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
    let h = ops::where_(&pad, &Array::scalar_as(0.0, h.dtype())?, &h)?;
    Ok(ops::where_(&img, &gathered, &h)?)
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
    let h = self.embed(tokens, offset, n)?;
    // python: h *= mx.array(hidden ** 0.5, mx.bfloat16).astype(h.dtype)
    let norm = ops::astype(
      &Array::scalar_as((self.hidden as f64).sqrt(), Dtype::Bfloat16)?,
      h.dtype(),
    )?;
    let mut h = ops::multiply(&h, &norm)?;
    let fa = self.model.layers.iter().position(|l| !l.sliding);
    let swa = self.model.layers.iter().position(|l| l.sliding);
    let fa_mask = match fa {
      Some(i) => caches[i].make_mask(n, None)?,
      None => AttnMask::None,
    };
    let swa_mask = match swa {
      Some(i) => caches[i].make_mask(n, Some(self.window))?,
      None => AttnMask::None,
    };
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      let mask = if layer.sliding { &swa_mask } else { &fa_mask };
      h = layer.forward(&h, mask, cache)?;
    }
    Ok(self.model.norm.forward(&h)?)
  }
}

impl LanguageModel for Gemma3Text {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> mlxrs_core::Result<Array> {
    self.hidden_inner(tokens, caches).map_err(|e| match e {
      Error::Core(c) => c,
      other => mlxrs_core::Error::InvalidArgument(other.to_string()),
    })
  }

  fn logits(&self, hidden: &Array) -> mlxrs_core::Result<Array> {
    self.lm_head.forward(hidden)
  }

  /// python `make_cache`: rotating caches of `sliding_window` (keep 0) for
  /// sliding layers, standard ones for global layers.
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .map(|l| {
        if l.sliding {
          KvCache::new(KvCacheKind::Rotating {
            max_size: self.window,
            keep: 0,
          })
        } else {
          match max_kv_size {
            Some(m) => KvCache::new(KvCacheKind::Rotating {
              max_size: m,
              keep: 4,
            }),
            None => KvCache::standard(),
          }
        }
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

/// The whole model, unloaded (python `gemma3.Model`).
pub struct Gemma3 {
  /// `vision_tower`
  pub vision: SiglipVision,
  /// `multi_modal_projector`
  pub projector: Gemma3Projector,
  /// `language_model`
  pub text: Gemma3Text,
  /// Parsed config.
  pub config: Gemma3Config,
}

impl Gemma3 {
  /// Build from config.json.
  pub fn new(raw: &Value, slot: Gemma3Slot) -> Result<Gemma3> {
    let config = Gemma3Config::parse(raw)?;
    let v = &config.vision;
    let pps = v.image_size / v.patch_size;
    let tps = (config.text.mm_tokens_per_image as f64).sqrt() as i32;
    Ok(Gemma3 {
      vision: SiglipVision::new(v)?,
      projector: Gemma3Projector {
        mm_input_projection_weight: Param::new(&[v.hidden_size, config.text.hidden_size]),
        mm_soft_emb_norm: RmsNorm::new_plus_one(v.hidden_size, v.layer_norm_eps),
        pps,
        kernel: pps / tps,
      },
      text: Gemma3Text::new(&config, slot)?,
      config,
    })
  }

  /// Image features `[n_images * mm_tokens, hidden]` for NHWC pixels,
  /// divided by `sqrt(hidden_size)`.
  pub fn image_features(
    vision: &SiglipVision,
    projector: &Gemma3Projector,
    c: &Gemma3Config,
    pixels: &Array,
  ) -> Result<Array> {
    let x = ops::astype(pixels, vision.dtype())?;
    let f = projector.forward(&vision.forward(&x)?)?;
    let d = f.dim(-1).unwrap_or(0);
    let f = ops::reshape(&f, &[-1, d])?;
    let div = Array::scalar_as((c.hidden_size as f64).sqrt() as f32 as f64, f.dtype())?;
    Ok(ops::divide(&f, &div)?)
  }

  /// Weight fixes (python `sanitize`): rotary `inv_freq` dropped,
  /// PyTorch-layout patch embedding to MLX's, HF names (`model.*`,
  /// `lm_head`) to mlx-vlm's; without a top-level `lm_head.weight` the
  /// output layer is the embedding (mlx-vlm's rule, which also replaces a
  /// `language_model.lm_head.weight`).
  pub fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let c = self.config.vision.num_channels;
    // mlx-vlm's `LanguageModel.sanitize` ties the output layer to the
    // embedding unless the checkpoint has a top-level `lm_head.weight`
    // (so mlx-vlm's own `language_model.lm_head.weight` is replaced too).
    let own_head = weights.contains_key("lm_head.weight");
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
      if k.ends_with("patch_embedding.weight") {
        let s = v.shape();
        if s.len() == 4 && s[3] != c && s[1] == c {
          out.insert(k, ops::transpose_axes(&v, &[0, 2, 3, 1])?);
          continue;
        }
      }
      out.insert(k, v);
    }
    if !own_head {
      out.retain(|k, _| !k.starts_with("language_model.lm_head."));
      for suffix in ["weight", "scales", "biases"] {
        if let Some(e) = out
          .get(&format!("language_model.model.embed_tokens.{suffix}"))
          .cloned()
        {
          out.insert(format!("language_model.lm_head.{suffix}"), e);
        }
      }
    }
    Ok(out)
  }
}

// ---------------------------------------------------------------------------
// VlmModel glue (processor + feature merge)
// ---------------------------------------------------------------------------

/// The Gemma 3 half of a [`crate::VlmModel`].
pub(crate) struct Gemma3Family {
  vision: SiglipVision,
  projector: Gemma3Projector,
  config: Gemma3Config,
  processor: crate::processors::ClipImageProcessor,
  slot: Gemma3Slot,
  boi: String,
  eoi: String,
}

/// Load a `gemma3` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &crate::model::LoadOptions,
) -> Result<crate::family::LoadedFamily> {
  use crate::family::{load_tower_model, loaded_model, open_weights, size_mismatch, token_name};
  let slot: Gemma3Slot = Arc::new(Mutex::new(None));
  let mut m = Gemma3::new(config.raw(), slot.clone())?;
  let w = open_weights(path, &config, opts, |w| m.sanitize(w))?;
  let (tokenizer, image_token) = load_tower_model(
    path,
    w,
    &mut m.text,
    &mut m.vision,
    &mut m.projector,
    m.config.image_token_index,
  )?;
  let name = |key: &str, default: &str| -> Result<String> {
    match config.raw().get(key).and_then(Value::as_u64) {
      Some(id) => token_name(&tokenizer, path, key, id as u32),
      None => Ok(default.to_string()),
    }
  };
  let boi = name("boi_token_index", "<start_of_image>")?;
  let eoi = name("eoi_token_index", "<end_of_image>")?;
  let processor = crate::processors::ClipImageProcessor::from_dir(path)?;
  let pre = path.join("preprocessor_config.json");
  if let Ok(text) = std::fs::read_to_string(&pre) {
    let v: Value =
      serde_json::from_str(&text).map_err(|e| Error::config(&pre, "<json>", e.to_string()))?;
    if v.get("do_pan_and_scan").and_then(Value::as_bool) == Some(true) {
      return Err(Error::config(
        &pre,
        "do_pan_and_scan",
        "pan and scan is not supported yet; set it to false",
      ));
    }
  }
  let size = m.config.vision.image_size as u32;
  if processor.do_resize && processor.fixed_size != Some((size, size)) {
    return Err(size_mismatch(path, "size", &processor.fixed_size, size));
  }
  let Gemma3 {
    vision,
    projector,
    text,
    config: gcfg,
  } = m;
  Ok(crate::family::LoadedFamily::clip(
    loaded_model(path, config, tokenizer, Box::new(text), opts),
    Box::new(Gemma3Family {
      vision,
      projector,
      config: gcfg,
      processor,
      slot,
      boi,
      eoi,
    }),
    image_token,
  ))
}

impl crate::family::VisionFamily for Gemma3Family {
  /// python `Gemma3Processor.__call__` (no pan and scan): each
  /// `<start_of_image>` becomes `"\n\n<start_of_image>" +
  /// "<image_soft_token>" * mm_tokens_per_image + "<end_of_image>\n\n"`.
  fn process(
    &self,
    s: &crate::family::Shared<'_>,
    text: &str,
    images: &[crate::image::RgbImage],
  ) -> Result<crate::model::VlmInput> {
    let n_ph = text.matches(self.boi.as_str()).count();
    if n_ph != images.len() {
      return Err(crate::family::placeholder_mismatch(
        n_ph,
        &self.boi,
        images.len(),
      ));
    }
    if images.is_empty() {
      return Ok(crate::model::VlmInput::text(
        s.tokenizer.encode(text, false)?,
      ));
    }
    let full = format!(
      "\n\n{}{}{}\n\n",
      self.boi,
      s.image_token.repeat(self.config.tokens_per_image()),
      self.eoi
    );
    let ids = s
      .tokenizer
      .encode(&text.replace(self.boi.as_str(), &full), false)?;
    let mut input = crate::model::VlmInput::text(ids);
    input.clip_pixels = Some(self.processor.preprocess(images)?);
    Ok(input)
  }

  /// SigLIP features, pooled, normed, projected and scaled, in place of the
  /// image tokens' embeddings (python `masked_scatter`).
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
      |pv| Gemma3::image_features(&self.vision, &self.projector, &self.config, pv),
      |ids, features, feature_row| Gemma3Prompt {
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
