//! LLaVA (1.5 layout): mlx-vlm's `models/llava/` (`vision.py`,
//! `language.py`, `llava.py`).
//!
//! - Vision tower: CLIP ViT ([`crate::vision::clip`]). The features are the
//!   hidden states of `vision_feature_layer` (default -2), without the class
//!   token for the `default` select strategy.
//! - Projector (`LlavaMultiModalProjector`): `linear_2(gelu(linear_1(x)))`.
//! - Language model: mlxrs-lm's Llama built from `text_config`; the image
//!   tokens' embeddings are replaced by the projected image features
//!   (`_merge_input_ids_with_image_features`).

use std::collections::HashMap;

use mlxrs_core::{Array, ops};
use mlxrs_lm::{LanguageModel, PromptEmbeddings};
use mlxrs_nn::{Linear, module};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::vision::{ClipVision, ClipVisionArgs};

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

impl LlavaTextArgs {
  /// The mlxrs-lm config of this language model: Llama with mlx-vlm's
  /// defaults filled in; `head_dim` is `hidden_size / num_attention_heads`
  /// (mlx-vlm's llava ignores a `head_dim` key).
  pub fn lm_config(&self) -> Value {
    json!({
      "model_type": "llama",
      "hidden_size": self.hidden_size,
      "num_hidden_layers": self.num_hidden_layers,
      "intermediate_size": self.intermediate_size,
      "num_attention_heads": self.num_attention_heads,
      "num_key_value_heads": self.num_key_value_heads,
      "head_dim": self.hidden_size / self.num_attention_heads.max(1),
      "rms_norm_eps": self.rms_norm_eps,
      "vocab_size": self.vocab_size,
      "rope_theta": self.rope_theta,
      "rope_traditional": self.rope_traditional,
      "rope_scaling": self.rope_scaling,
      "max_position_embeddings": self.max_position_embeddings,
      "tie_word_embeddings": self.tie_word_embeddings,
    })
  }

  /// mlx-vlm's llava takes linear `rope_scaling` only.
  pub(crate) fn check_rope_scaling(&self) -> Result<()> {
    match &self.rope_scaling {
      None | Some(Value::Null) => Ok(()),
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
        Ok(())
      }
    }
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

/// The whole model, unloaded (python `llava.Model`).
pub struct Llava {
  /// `vision_tower`
  pub vision: ClipVision,
  /// `multi_modal_projector`
  pub projector: Projector,
  /// `language_model` (mlxrs-lm's Llama)
  pub text: Box<dyn LanguageModel>,
  /// Parsed config.
  pub config: LlavaConfig,
}

impl Llava {
  /// Build from config.json.
  pub fn new(raw: &Value) -> Result<Llava> {
    let config = LlavaConfig::parse(raw)?;
    config.text.check_rope_scaling()?;
    let vd = config.vision.hidden_size;
    let td = config.text.hidden_size;
    Ok(Llava {
      vision: ClipVision::new(&config.vision)?,
      projector: Projector {
        linear_1: Linear::new(vd, td, true),
        linear_2: Linear::new(td, td, true),
      },
      text: crate::family::build_text(&config.text.lm_config())?,
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
}

/// Load a `llava` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &crate::model::LoadOptions,
) -> Result<crate::family::LoadedFamily> {
  use crate::family::{load_tower_model, loaded_model, open_vlm_weights, size_mismatch};
  let mut m = Llava::new(config.raw())?;
  let w = open_vlm_weights(path, &config, opts, |w| m.sanitize(w))?;
  let (tokenizer, image_token) = load_tower_model(
    path,
    w,
    m.text.as_mut(),
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
    loaded_model(path, config, tokenizer, text, opts),
    Box::new(LlavaFamily {
      vision,
      projector,
      config: lcfg,
      processor,
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
  fn prompt_embeddings(
    &self,
    s: &crate::family::Shared<'_>,
    input: &crate::model::VlmInput,
  ) -> Result<Option<PromptEmbeddings>> {
    crate::family::clip_prompt(
      s,
      input,
      self.config.image_token_index,
      crate::family::tokens_per_image(self.config.tokens_per_image()),
      |pv| {
        let f = clip_features(&self.vision, &self.projector, &self.config, pv)?;
        let d = f.dim(-1).unwrap_or(0);
        Ok(ops::reshape(&f, &[-1, d])?)
      },
    )
  }

  fn clip_processor(&self) -> Option<&crate::processors::ClipImageProcessor> {
    Some(&self.processor)
  }
}
