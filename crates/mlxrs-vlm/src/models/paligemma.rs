//! PaliGemma: mlx-vlm's `models/paligemma/` (`vision.py`, `language.py`,
//! `paligemma.py`).
//!
//! - Vision tower: SigLIP ViT ([`crate::vision::siglip`]).
//! - Projector: one linear layer to `projection_dim`; features are divided
//!   by `sqrt(hidden_size)` before they replace the image tokens (the Gemma
//!   embedding scale `sqrt(hidden)` then applies to all positions).
//! - Language model: mlxrs-lm's Gemma built from `text_config`; pad tokens
//!   embed to zero. As mlx-vlm with `use_bidirectional_attention`
//!   (PaliGemma's default), no attention mask is applied and the prompt
//!   runs in one pass: it attends bidirectionally, then decoding is causal
//!   by construction.

use std::collections::HashMap;

use mlxrs_core::{Array, ops};
use mlxrs_lm::{LanguageModel, PromptEmbeddings};
use mlxrs_nn::{AttnMask, Linear, module};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::vision::{SiglipVision, SiglipVisionArgs};

fn d_heads() -> i32 {
  16
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

impl GemmaArgs {
  /// The mlxrs-lm config of this language model: Gemma with mlx-vlm's
  /// defaults filled in; `head_dim` is `hidden_size / num_attention_heads`
  /// (mlx-vlm's Gemma 1 ignores the `head_dim` key).
  pub fn lm_config(&self) -> Value {
    let n_heads = self.num_attention_heads;
    json!({
      "model_type": "gemma",
      "hidden_size": self.hidden_size,
      "num_hidden_layers": self.num_hidden_layers,
      "intermediate_size": self.intermediate_size,
      "num_attention_heads": n_heads,
      "num_key_value_heads": self.num_key_value_heads.unwrap_or(n_heads),
      "head_dim": self.hidden_size / n_heads.max(1),
      "rms_norm_eps": self.rms_norm_eps,
      "vocab_size": self.vocab_size,
      "rope_theta": self.rope_theta,
      "rope_traditional": self.rope_traditional,
      "attention_bias": self.attention_bias,
      "hidden_activation": self.hidden_activation,
    })
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

/// The whole model, unloaded (python `paligemma.Model`).
pub struct PaliGemma {
  /// `vision_tower`
  pub vision: SiglipVision,
  /// `multi_modal_projector`
  pub projector: PaliProjector,
  /// `language_model` (mlxrs-lm's Gemma)
  pub text: Box<dyn LanguageModel>,
  /// Parsed config.
  pub config: PaliGemmaConfig,
}

impl PaliGemma {
  /// Build from config.json.
  pub fn new(raw: &Value) -> Result<PaliGemma> {
    let config = PaliGemmaConfig::parse(raw)?;
    Ok(PaliGemma {
      vision: SiglipVision::new(&config.vision)?,
      projector: PaliProjector {
        linear: Linear::new(config.vision.hidden_size, config.projection_dim, true),
      },
      text: crate::family::build_text(&config.text.lm_config())?,
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
  bos: String,
}

/// Load a `paligemma` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &crate::model::LoadOptions,
) -> Result<crate::family::LoadedFamily> {
  use crate::family::{
    load_tower_model, loaded_model, open_vlm_weights, size_mismatch, token_name,
  };
  let mut m = PaliGemma::new(config.raw())?;
  let w = open_vlm_weights(path, &config, opts, |w| m.sanitize(w))?;
  let (tokenizer, image_token) = load_tower_model(
    path,
    w,
    m.text.as_mut(),
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
    loaded_model(path, config, tokenizer, text, opts),
    Box::new(PaliFamily {
      vision,
      projector,
      config: pcfg,
      processor,
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
  /// embeddings, pad tokens zeroed; the prompt runs in one pass without a
  /// mask when it attends bidirectionally.
  fn prompt_embeddings(
    &self,
    s: &crate::family::Shared<'_>,
    input: &crate::model::VlmInput,
  ) -> Result<Option<PromptEmbeddings>> {
    let n_feat = self.config.tokens_per_image();
    let img_id = self.config.image_token_index;
    let f = crate::family::pixel_features(
      s,
      input,
      img_id,
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
    )?;
    // Without images mlx-vlm embeds the ids as they are (no pad rule).
    let zero = f.as_ref().map(|_| self.config.pad_token_id);
    let e = crate::family::merge_features(s, &input.input_ids, img_id, f.as_ref(), zero)?;
    let bidirectional = self.config.bidirectional;
    Ok(Some(PromptEmbeddings {
      embeddings: e,
      mask: bidirectional.then_some(AttnMask::None),
      one_pass: bidirectional,
    }))
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
