//! Gemma 3: mlx-vlm's `models/gemma3/` (`vision.py`, `language.py`,
//! `gemma3.py`).
//!
//! - Vision tower: SigLIP ([`crate::vision::siglip`], every image of the
//!   batch).
//! - Projector (`Gemma3MultiModalProjector`): the patch grid average-pooled
//!   to `sqrt(mm_tokens_per_image)` per side, RMSNorm (`1 + w`), times
//!   `mm_input_projection_weight`; features divided by
//!   `sqrt(hidden_size)` (top level, 2048 by default as mlx-vlm).
//! - Language model: mlxrs-lm's `gemma3_text` built from `text_config`
//!   (mlx-vlm's defaults; `rope_global_base_freq` is its `rope_theta`):
//!   causal attention, the output layer tied to the embedding as mlx-vlm
//!   loads it; pad tokens embed to zero when the prompt has images.

use std::collections::HashMap;

use mlxrs_core::{Array, ops};
use mlxrs_lm::{LanguageModel, PromptEmbeddings};
use mlxrs_nn::{Param, RmsNorm, module};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::vision::{SiglipVision, SiglipVisionArgs};

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

impl Gemma3TextArgs {
  /// The mlxrs-lm config of this language model (`gemma3_text`) with
  /// mlx-vlm's defaults filled in.
  pub fn lm_config(&self) -> Value {
    json!({
      "model_type": "gemma3_text",
      "hidden_size": self.hidden_size,
      "num_hidden_layers": self.num_hidden_layers,
      "intermediate_size": self.intermediate_size,
      "num_attention_heads": self.num_attention_heads,
      "head_dim": self.head_dim,
      "rms_norm_eps": self.rms_norm_eps,
      "vocab_size": self.vocab_size,
      "num_key_value_heads": self.num_key_value_heads,
      "rope_theta": self.rope_global_base_freq,
      "rope_local_base_freq": self.rope_local_base_freq,
      "query_pre_attn_scalar": self.query_pre_attn_scalar,
      "sliding_window": self.sliding_window,
      "sliding_window_pattern": self.sliding_window_pattern,
      "max_position_embeddings": self.max_position_embeddings,
      "rope_scaling": self.rope_scaling,
    })
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

/// The whole model, unloaded (python `gemma3.Model`).
pub struct Gemma3 {
  /// `vision_tower`
  pub vision: SiglipVision,
  /// `multi_modal_projector`
  pub projector: Gemma3Projector,
  /// `language_model` (mlxrs-lm's `gemma3_text`)
  pub text: Box<dyn LanguageModel>,
  /// Parsed config.
  pub config: Gemma3Config,
}

impl Gemma3 {
  /// Build from config.json.
  pub fn new(raw: &Value) -> Result<Gemma3> {
    let config = Gemma3Config::parse(raw)?;
    if config.text.rope_traditional {
      return Err(Error::invalid(
        "config.json `text_config`: rope_traditional is not supported for gemma3",
      ));
    }
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
      text: crate::family::build_text(&config.text.lm_config())?,
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
      // Without `lm_head.*` mlxrs-lm's gemma3_text ties the output layer.
      out.retain(|k, _| !k.starts_with("language_model.lm_head."));
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
  boi: String,
  eoi: String,
}

/// Load a `gemma3` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &crate::model::LoadOptions,
) -> Result<crate::family::LoadedFamily> {
  use crate::family::{
    load_tower_model, loaded_model, open_vlm_weights, size_mismatch, token_name,
  };
  let mut m = Gemma3::new(config.raw())?;
  let w = open_vlm_weights(path, &config, opts, |w| m.sanitize(w))?;
  let (tokenizer, image_token) = load_tower_model(
    path,
    w,
    m.text.as_mut(),
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
    loaded_model(path, config, tokenizer, text, opts),
    Box::new(Gemma3Family {
      vision,
      projector,
      config: gcfg,
      processor,
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
  /// image tokens' embeddings (python `masked_scatter`), pad tokens zeroed.
  fn prompt_embeddings(
    &self,
    s: &crate::family::Shared<'_>,
    input: &crate::model::VlmInput,
  ) -> Result<Option<PromptEmbeddings>> {
    let img_id = self.config.image_token_index;
    let Some(f) = crate::family::pixel_features(
      s,
      input,
      img_id,
      crate::family::tokens_per_image(self.config.tokens_per_image()),
      |pv| Gemma3::image_features(&self.vision, &self.projector, &self.config, pv),
    )?
    else {
      return Ok(None);
    };
    let e = crate::family::merge_features(
      s,
      &input.input_ids,
      img_id,
      Some(&f),
      Some(self.config.pad_token_id),
    )?;
    Ok(Some(PromptEmbeddings::causal(e)))
  }

  fn clip_processor(&self) -> Option<&crate::processors::ClipImageProcessor> {
    Some(&self.processor)
  }
}
