//! A loaded vision-language model and its processor: python
//! `mlx_vlm.load(path)` (model + processor), `prompt_utils.apply_chat_template`,
//! `utils.prepare_inputs` and `generate` / `stream_generate`, on top of
//! mlxrs-lm's generation loop.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mlxrs_core::{Array, ops};
use mlxrs_lm::load::{default_dtype, load_weights};
use mlxrs_lm::{
  ChatOptions, Content, GenerateOptions, LanguageModel, LoadedModel, Message, ModelConfig,
  ModelFiles, Output, StepConfig, TextStream, TokenGenerator, Tokenizer, resolve_model,
};
use mlxrs_nn::{Module, QuantConfig, Weights};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::image::{AlphaMode, RgbImage, load_image};
use crate::models::gemma3::{Gemma3, Gemma3Config, Gemma3Projector, Gemma3Prompt, Gemma3Slot};
use crate::models::llava::{ClipVision, Llava, LlavaConfig, LlavaPrompt, LlavaSlot, Projector};
use crate::models::paligemma::{
  PaliGemma, PaliGemmaConfig, PaliProjector, PaliPrompt, PaliSlot, SiglipVision,
};
use crate::models::qwen2_vl::{
  Family, MultimodalPrompt, PromptSlot, Qwen2Vl, Qwen2VlConfig, VisionTower, rope_index,
};
use crate::processors::{ClipImageProcessor, ClipPixels, PixelValues, Qwen2VlImageProcessor};

/// The vision-language `model_type`s this build supports.
pub const MODEL_TYPES: &[&str] = &["gemma3", "llava", "paligemma", "qwen2_5_vl", "qwen2_vl"];

/// Load options (python `mlx_vlm.load` kwargs).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
  /// Compute dtype for floating-point weights (`None`: float32 on the CPU,
  /// the checkpoint's own on a GPU, as [`mlxrs_lm::LoadOptions`]).
  pub dtype: Option<mlxrs_core::Dtype>,
}

/// Processed model inputs (python `prepare_inputs(...)` / the processor's
/// `BatchFeature`): prompt ids with every image placeholder expanded to its
/// image's token count, and the images' pixel values and grids.
#[derive(Debug, Clone)]
pub struct VlmInput {
  /// Prompt token ids (`input_ids[0]`).
  pub input_ids: Vec<u32>,
  /// `pixel_values` and `image_grid_thw`, when there are images
  /// (Qwen2-VL family).
  pub pixel_values: Option<PixelValues>,
  /// `pixel_values` `[n, 3, H, W]`, when there are images (LLaVA).
  pub clip_pixels: Option<ClipPixels>,
}

impl VlmInput {
  /// `image_grid_thw` (empty without images).
  pub fn image_grid_thw(&self) -> &[[u32; 3]] {
    self
      .pixel_values
      .as_ref()
      .map(|p| p.grid_thw.as_slice())
      .unwrap_or(&[])
  }
}

/// A vision-language model ready to generate: the language half is an
/// ordinary [`LoadedModel`] (so mlxrs-lm's sampling, caches, streaming and
/// stop rules apply unchanged), the vision tower and image processor sit
/// beside it. One generation at a time per model: preparing a new prompt
/// replaces the multimodal state the language model reads.
pub struct VlmModel {
  /// The language model, its config and tokenizer.
  pub lm: LoadedModel,
  /// The image processor (`preprocessor_config.json`) of the Qwen2-VL
  /// family (the defaults for other families; see
  /// [`VlmModel::clip_processor`]).
  pub image_processor: Qwen2VlImageProcessor,
  /// How files given to [`VlmModel::load_images`] become RGB.
  pub alpha: AlphaMode,
  arch: Arch,
  model_type: String,
  image_token: String,
}

// One per loaded model: the size difference between variants is irrelevant.
#[allow(clippy::large_enum_variant)]
enum Arch {
  Qwen {
    vision: VisionTower,
    config: Qwen2VlConfig,
    slot: PromptSlot,
  },
  Llava(Box<LlavaParts>),
  Pali(Box<PaliParts>),
  Gemma3(Box<Gemma3Parts>),
}

struct Gemma3Parts {
  vision: SiglipVision,
  projector: Gemma3Projector,
  config: Gemma3Config,
  processor: ClipImageProcessor,
  slot: Gemma3Slot,
  boi: String,
  eoi: String,
}

struct PaliParts {
  vision: SiglipVision,
  projector: PaliProjector,
  config: PaliGemmaConfig,
  processor: ClipImageProcessor,
  slot: PaliSlot,
  bos: String,
}

struct LlavaParts {
  vision: ClipVision,
  projector: Projector,
  config: LlavaConfig,
  processor: ClipImageProcessor,
  slot: LlavaSlot,
}

impl std::fmt::Debug for VlmModel {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("VlmModel")
      .field("path", &self.lm.path)
      .field("model_type", &self.model_type)
      .field("image_token", &self.image_token)
      .finish_non_exhaustive()
  }
}

fn family_of(model_type: &str) -> Option<Family> {
  match model_type {
    "qwen2_vl" => Some(Family::Qwen2Vl),
    "qwen2_5_vl" => Some(Family::Qwen25Vl),
    _ => None,
  }
}

/// Whether the checkpoint folder's config.json is a supported
/// vision-language model (`Ok(false)` for a text-only one).
pub fn is_vlm_dir(dir: impl AsRef<Path>) -> Result<bool> {
  let config = ModelConfig::from_dir(dir.as_ref())?;
  let mt = config.model_type()?;
  Ok(family_of(mt).is_some() || matches!(mt, "llava" | "paligemma" | "gemma3"))
}

/// Load a model folder or Hub repo id (python `mlx_vlm.load`).
pub fn load(model: &str, opts: &LoadOptions) -> Result<VlmModel> {
  let path = resolve_model(model)?;
  load_dir(&path, opts)
}

/// Load a checkpoint folder (see [`load`]).
pub fn load_dir(path: &Path, opts: &LoadOptions) -> Result<VlmModel> {
  let config = ModelConfig::from_dir(path)?;
  let model_type = config.model_type()?.to_string();
  if model_type == "llava" {
    return load_llava(path, config, opts);
  }
  if model_type == "paligemma" {
    return load_paligemma(path, config, opts);
  }
  if model_type == "gemma3" {
    return load_gemma3(path, config, opts);
  }
  let Some(family) = family_of(&model_type) else {
    if mlxrs_lm::supported_model_types().contains(&model_type.as_str()) {
      return Err(Error::invalid(format!(
        "{} is a text-only model (model_type `{model_type}`): it cannot take images; load it with mlxrs_lm::load",
        path.display()
      )));
    }
    return Err(Error::UnsupportedModelType {
      model_type,
      supported: MODEL_TYPES.iter().map(|s| s.to_string()).collect(),
    });
  };
  let files = ModelFiles::scan(path)?;
  let slot: PromptSlot = Arc::new(Mutex::new(None));
  let mut m = Qwen2Vl::new(family, config.raw(), &config.text_config(), slot.clone())?;
  let weights = m.sanitize(load_weights(&files.weights)?)?;
  let dtype = opts.dtype.or_else(default_dtype);
  let mut w = Weights::new(weights);
  w.dtype = dtype;
  if let Some((_, q)) = config.quantization_config() {
    w.quant = Some(QuantConfig::from_json(q)?);
  }
  LanguageModel::load(&mut m.text, &mut w);
  Module::load(&mut m.vision, &mut w, "vision_tower");
  w.finish()
    .map_err(|e| Error::config(path.join("model.safetensors"), "<tensors>", e.to_string()))?;
  let mut params = Vec::new();
  LanguageModel::visit(&m.text, &mut |_, a| params.push(a.clone()));
  Module::visit(&m.vision, "", &mut |_, a| params.push(a.clone()));
  mlxrs_core::eval(&params)?;

  let tokenizer = Tokenizer::from_dir(path)?;
  let image_token = tokenizer
    .id_to_token(m.config.image_token_id)
    .ok_or_else(|| {
      Error::config(
        path.join("config.json"),
        "image_token_id",
        format!(
          "token id {} is not in the tokenizer's vocabulary",
          m.config.image_token_id
        ),
      )
    })?;
  let image_processor = Qwen2VlImageProcessor::from_dir(path)?;
  let v = &m.config.vision;
  if image_processor.patch_size as i32 != v.patch_size
    || image_processor.merge_size as i32 != v.spatial_merge_size
    || image_processor.temporal_patch_size as i32 != v.temporal_patch_size
  {
    return Err(Error::config(
      path.join("preprocessor_config.json"),
      "patch_size",
      format!(
        "patch {} / merge {} / temporal {} do not match config.json's vision_config ({} / {} / {})",
        image_processor.patch_size,
        image_processor.merge_size,
        image_processor.temporal_patch_size,
        v.patch_size,
        v.spatial_merge_size,
        v.temporal_patch_size
      ),
    ));
  }
  let Qwen2Vl {
    vision,
    text,
    config: qcfg,
  } = m;
  let max_context = config.max_position_embeddings().ok().flatten();
  let lm = LoadedModel {
    model: Box::new(text),
    config,
    tokenizer: Some(tokenizer),
    path: path.to_path_buf(),
    dtype,
    max_context,
  };
  Ok(VlmModel {
    lm,
    image_processor,
    alpha: AlphaMode::Drop,
    arch: Arch::Qwen {
      vision,
      config: qcfg,
      slot,
    },
    model_type,
    image_token,
  })
}

/// [`load_dir`] for `model_type: paligemma` (python
/// `mlx_vlm.models.paligemma`).
fn load_paligemma(path: &Path, config: ModelConfig, opts: &LoadOptions) -> Result<VlmModel> {
  let files = ModelFiles::scan(path)?;
  let slot: PaliSlot = Arc::new(Mutex::new(None));
  let mut m = PaliGemma::new(config.raw(), slot.clone())?;
  let weights = m.sanitize(load_weights(&files.weights)?)?;
  let dtype = opts.dtype.or_else(default_dtype);
  let mut w = Weights::new(weights);
  w.dtype = dtype;
  if let Some((_, q)) = config.quantization_config() {
    w.quant = Some(QuantConfig::from_json(q)?);
  }
  LanguageModel::load(&mut m.text, &mut w);
  Module::load(&mut m.vision, &mut w, "vision_tower");
  Module::load(&mut m.projector, &mut w, "multi_modal_projector");
  w.finish()
    .map_err(|e| Error::config(path.join("model.safetensors"), "<tensors>", e.to_string()))?;
  let mut params = Vec::new();
  LanguageModel::visit(&m.text, &mut |_, a| params.push(a.clone()));
  Module::visit(&m.vision, "", &mut |_, a| params.push(a.clone()));
  Module::visit(&m.projector, "", &mut |_, a| params.push(a.clone()));
  mlxrs_core::eval(&params)?;
  let tokenizer = Tokenizer::from_dir(path)?;
  let name = |id: u32, key: &str| {
    tokenizer.id_to_token(id).ok_or_else(|| {
      Error::config(
        path.join("config.json"),
        key,
        format!("token id {id} is not in the tokenizer's vocabulary"),
      )
    })
  };
  let image_token = name(m.config.image_token_index, "image_token_index")?;
  let bos_id = config
    .raw()
    .get("bos_token_id")
    .and_then(Value::as_u64)
    .unwrap_or(2) as u32;
  let bos = name(bos_id, "bos_token_id")?;
  let processor = ClipImageProcessor::from_dir(path)?;
  let size = m.config.vision.image_size as u32;
  let out = if processor.do_center_crop {
    Some(processor.crop)
  } else {
    processor.fixed_size
  };
  if processor.do_resize && out != Some((size, size)) {
    return Err(Error::config(
      path.join("preprocessor_config.json"),
      "size",
      format!("{out:?} does not match the vision tower's image_size {size}"),
    ));
  }
  let PaliGemma {
    vision,
    projector,
    text,
    config: pcfg,
  } = m;
  let max_context = config.max_position_embeddings().ok().flatten();
  let lm = LoadedModel {
    model: Box::new(text),
    config,
    tokenizer: Some(tokenizer),
    path: path.to_path_buf(),
    dtype,
    max_context,
  };
  Ok(VlmModel {
    lm,
    image_processor: Qwen2VlImageProcessor::default(),
    alpha: AlphaMode::Drop,
    arch: Arch::Pali(Box::new(PaliParts {
      vision,
      projector,
      config: pcfg,
      processor,
      slot,
      bos,
    })),
    model_type: "paligemma".to_string(),
    image_token,
  })
}

/// [`load_dir`] for `model_type: gemma3` (python `mlx_vlm.models.gemma3`).
fn load_gemma3(path: &Path, config: ModelConfig, opts: &LoadOptions) -> Result<VlmModel> {
  let files = ModelFiles::scan(path)?;
  let slot: Gemma3Slot = Arc::new(Mutex::new(None));
  let mut m = Gemma3::new(config.raw(), slot.clone())?;
  let weights = m.sanitize(load_weights(&files.weights)?)?;
  let dtype = opts.dtype.or_else(default_dtype);
  let mut w = Weights::new(weights);
  w.dtype = dtype;
  if let Some((_, q)) = config.quantization_config() {
    w.quant = Some(QuantConfig::from_json(q)?);
  }
  LanguageModel::load(&mut m.text, &mut w);
  Module::load(&mut m.vision, &mut w, "vision_tower");
  Module::load(&mut m.projector, &mut w, "multi_modal_projector");
  w.finish()
    .map_err(|e| Error::config(path.join("model.safetensors"), "<tensors>", e.to_string()))?;
  let mut params = Vec::new();
  LanguageModel::visit(&m.text, &mut |_, a| params.push(a.clone()));
  Module::visit(&m.vision, "", &mut |_, a| params.push(a.clone()));
  Module::visit(&m.projector, "", &mut |_, a| params.push(a.clone()));
  mlxrs_core::eval(&params)?;
  let tokenizer = Tokenizer::from_dir(path)?;
  let name = |key: &str, default: &str| -> Result<String> {
    match config.raw().get(key).and_then(Value::as_u64) {
      Some(id) => tokenizer.id_to_token(id as u32).ok_or_else(|| {
        Error::config(
          path.join("config.json"),
          key,
          format!("token id {id} is not in the tokenizer's vocabulary"),
        )
      }),
      None => Ok(default.to_string()),
    }
  };
  let image_token = tokenizer
    .id_to_token(m.config.image_token_index)
    .ok_or_else(|| {
      Error::config(
        path.join("config.json"),
        "image_token_index",
        format!(
          "token id {} is not in the tokenizer's vocabulary",
          m.config.image_token_index
        ),
      )
    })?;
  let boi = name("boi_token_index", "<start_of_image>")?;
  let eoi = name("eoi_token_index", "<end_of_image>")?;
  let processor = ClipImageProcessor::from_dir(path)?;
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
    return Err(Error::config(
      path.join("preprocessor_config.json"),
      "size",
      format!(
        "{:?} does not match the vision tower's image_size {size}",
        processor.fixed_size
      ),
    ));
  }
  let Gemma3 {
    vision,
    projector,
    text,
    config: gcfg,
  } = m;
  let max_context = config.max_position_embeddings().ok().flatten();
  let lm = LoadedModel {
    model: Box::new(text),
    config,
    tokenizer: Some(tokenizer),
    path: path.to_path_buf(),
    dtype,
    max_context,
  };
  Ok(VlmModel {
    lm,
    image_processor: Qwen2VlImageProcessor::default(),
    alpha: AlphaMode::Drop,
    arch: Arch::Gemma3(Box::new(Gemma3Parts {
      vision,
      projector,
      config: gcfg,
      processor,
      slot,
      boi,
      eoi,
    })),
    model_type: "gemma3".to_string(),
    image_token,
  })
}

/// [`load_dir`] for `model_type: llava` (python `mlx_vlm.models.llava`).
fn load_llava(path: &Path, config: ModelConfig, opts: &LoadOptions) -> Result<VlmModel> {
  let files = ModelFiles::scan(path)?;
  let slot: LlavaSlot = Arc::new(Mutex::new(None));
  let mut m = Llava::new(config.raw(), slot.clone())?;
  let weights = m.sanitize(load_weights(&files.weights)?)?;
  let dtype = opts.dtype.or_else(default_dtype);
  let mut w = Weights::new(weights);
  w.dtype = dtype;
  if let Some((_, q)) = config.quantization_config() {
    w.quant = Some(QuantConfig::from_json(q)?);
  }
  LanguageModel::load(&mut m.text, &mut w);
  Module::load(&mut m.vision, &mut w, "vision_tower");
  Module::load(&mut m.projector, &mut w, "multi_modal_projector");
  w.finish()
    .map_err(|e| Error::config(path.join("model.safetensors"), "<tensors>", e.to_string()))?;
  let mut params = Vec::new();
  LanguageModel::visit(&m.text, &mut |_, a| params.push(a.clone()));
  Module::visit(&m.vision, "", &mut |_, a| params.push(a.clone()));
  Module::visit(&m.projector, "", &mut |_, a| params.push(a.clone()));
  mlxrs_core::eval(&params)?;
  let tokenizer = Tokenizer::from_dir(path)?;
  let image_token = tokenizer
    .id_to_token(m.config.image_token_index)
    .ok_or_else(|| {
      Error::config(
        path.join("config.json"),
        "image_token_index",
        format!(
          "token id {} is not in the tokenizer's vocabulary",
          m.config.image_token_index
        ),
      )
    })?;
  let processor = ClipImageProcessor::from_dir(path)?;
  let size = m.config.vision.image_size as u32;
  if processor.do_center_crop && processor.crop != (size, size) {
    return Err(Error::config(
      path.join("preprocessor_config.json"),
      "crop_size",
      format!(
        "{:?} does not match the vision tower's image_size {size}",
        processor.crop
      ),
    ));
  }
  let Llava {
    vision,
    projector,
    text,
    config: lcfg,
  } = m;
  let max_context = config.max_position_embeddings().ok().flatten();
  let lm = LoadedModel {
    model: Box::new(text),
    config,
    tokenizer: Some(tokenizer),
    path: path.to_path_buf(),
    dtype,
    max_context,
  };
  Ok(VlmModel {
    lm,
    image_processor: Qwen2VlImageProcessor::default(),
    alpha: AlphaMode::Drop,
    arch: Arch::Llava(Box::new(LlavaParts {
      vision,
      projector,
      config: lcfg,
      processor,
      slot,
    })),
    model_type: "llava".to_string(),
    image_token,
  })
}

impl VlmModel {
  /// `model_type` from config.json.
  pub fn model_type(&self) -> &str {
    &self.model_type
  }

  /// The CLIP image processor of a LLaVA model (`None` for other families).
  pub fn clip_processor(&self) -> Option<&ClipImageProcessor> {
    match &self.arch {
      Arch::Llava(l) => Some(&l.processor),
      Arch::Pali(p) => Some(&p.processor),
      Arch::Gemma3(g) => Some(&g.processor),
      Arch::Qwen { .. } => None,
    }
  }

  /// The image placeholder token (`<|image_pad|>`, LLaVA `<image>`).
  pub fn image_token(&self) -> &str {
    &self.image_token
  }

  /// The tokenizer.
  pub fn tokenizer(&self) -> &Tokenizer {
    // `load_dir` always sets it.
    self
      .lm
      .tokenizer
      .as_ref()
      .expect("VlmModel always has a tokenizer")
  }

  /// The checkpoint folder.
  pub fn path(&self) -> &PathBuf {
    &self.lm.path
  }

  /// Read image files (see [`crate::image::load_image`]), naming the file
  /// in errors.
  pub fn load_images(&self, paths: &[impl AsRef<Path>]) -> Result<Vec<RgbImage>> {
    paths.iter().map(|p| load_image(p, self.alpha)).collect()
  }

  /// The user message mlx-vlm builds for a text prompt and `num_images`
  /// images (`prompt_utils.get_message_json`: a text part and one
  /// `{"type": "image"}` part per image — after the text for Qwen2-VL,
  /// before it for Qwen2.5-VL).
  pub fn user_message(&self, prompt: &str, num_images: usize) -> Message {
    let text = json!({"type": "text", "text": prompt, "content": prompt});
    let images = std::iter::repeat_n(json!({"type": "image"}), num_images);
    let parts: Vec<Value> = match &self.arch {
      Arch::Qwen { config, .. } if config.family == Family::Qwen25Vl => {
        images.chain(std::iter::once(text)).collect()
      }
      _ => std::iter::once(text).chain(images).collect(),
    };
    Message::new("user", Content::Parts(parts))
  }

  /// The prompt text for `prompt` with `num_images` images (python
  /// `apply_chat_template(processor, config, prompt, num_images=...)`, with
  /// an optional system message first).
  pub fn format_prompt(
    &self,
    prompt: &str,
    num_images: usize,
    system: Option<&str>,
  ) -> Result<String> {
    if let Arch::Pali(_) = &self.arch {
      // mlx-vlm: no chat template, `"<image>" * num_images + prompt`.
      return Ok(self.image_token.repeat(num_images) + prompt);
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
      msgs.push(Message::system(s));
    }
    msgs.push(self.user_message(prompt, num_images));
    self.apply_chat_template(&msgs)
  }

  /// Render messages (content may hold `{"type": "image"}` parts) with the
  /// chat template and the generation prompt.
  pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String> {
    let opts = ChatOptions {
      add_generation_prompt: true,
      ..ChatOptions::default()
    };
    Ok(self.tokenizer().apply_chat_template(messages, &opts)?)
  }

  /// The processor (python `processor(text=text, images=images)`): encode
  /// `text` (without adding special tokens), check that it holds one image
  /// placeholder per image, process the images and expand each placeholder
  /// to its image's `t * h * w / merge_size^2` tokens.
  pub fn process(&self, text: &str, images: &[RgbImage]) -> Result<VlmInput> {
    if let Arch::Pali(p) = &self.arch {
      return self.process_pali(p, text, images);
    }
    if let Arch::Gemma3(g) = &self.arch {
      return self.process_gemma3(g, text, images);
    }
    let ids = self.tokenizer().encode(text, false)?;
    self.process_ids(ids, images)
  }

  /// [`VlmModel::process`] for already-encoded ids.
  pub fn process_ids(&self, ids: Vec<u32>, images: &[RgbImage]) -> Result<VlmInput> {
    let (vision, img_id) = match &self.arch {
      Arch::Llava(l) => return self.process_llava(l, ids, images),
      Arch::Pali(p) => {
        let text = self.tokenizer().decode(&ids, false)?;
        return self.process_pali(p, &text, images);
      }
      Arch::Gemma3(g) => {
        let text = self.tokenizer().decode(&ids, false)?;
        return self.process_gemma3(g, &text, images);
      }
      Arch::Qwen { vision, config, .. } => (vision, config.image_token_id),
    };
    self.no_video(&ids)?;
    let n_ph = ids.iter().filter(|&&t| t == img_id).count();
    if n_ph != images.len() {
      return Err(Error::invalid(format!(
        "the prompt has {n_ph} image placeholder(s) ({}) but {} image(s) were given; \
         use one placeholder per image (the chat template adds them for {{\"type\": \"image\"}} parts)",
        self.image_token,
        images.len()
      )));
    }
    if images.is_empty() {
      return Ok(VlmInput {
        input_ids: ids,
        pixel_values: None,
        clip_pixels: None,
      });
    }
    let mut pv = self.image_processor.preprocess(images)?;
    if pv.cols as i32 != vision.patch_dim() {
      return Err(Error::invalid(format!(
        "the image processor makes patches of {} values but the vision tower expects {}",
        pv.cols,
        vision.patch_dim()
      )));
    }
    let m2 = (self.image_processor.merge_size * self.image_processor.merge_size) as usize;
    let mut out = Vec::with_capacity(ids.len());
    let mut k = 0;
    for t in ids {
      if t == img_id {
        let [gt, gh, gw] = pv.grid_thw[k];
        let n = gt as usize * gh as usize * gw as usize / m2;
        out.extend(std::iter::repeat_n(img_id, n));
        k += 1;
      } else {
        out.push(t);
      }
    }
    pv.grid_thw.shrink_to_fit();
    Ok(VlmInput {
      input_ids: out,
      pixel_values: Some(pv),
      clip_pixels: None,
    })
  }

  /// PaliGemma's processor (python `PaliGemmaProcessor.__call__`): one
  /// image; every `<image>` becomes `image_seq_length` of them, the BOS
  /// token goes after the last one (or first, without any: then the image
  /// tokens are prepended as `build_string_from_input` does), and `"\n"`
  /// ends the prompt.
  fn process_pali(&self, p: &PaliParts, text: &str, images: &[RgbImage]) -> Result<VlmInput> {
    if images.len() != 1 {
      return Err(Error::invalid(format!(
        "PaliGemma takes exactly one image per prompt (as mlx-vlm), got {}",
        images.len()
      )));
    }
    let tok = &self.image_token;
    let n = p.config.tokens_per_image();
    let s = if text.contains(tok.as_str()) {
      let mut e = text.replace(tok.as_str(), &tok.repeat(n));
      let at = e.rfind(tok.as_str()).map(|i| i + tok.len()).unwrap_or(0);
      e.insert_str(at, &p.bos);
      e + "\n"
    } else {
      format!("{}{}{text}\n", tok.repeat(n), p.bos)
    };
    let ids = self.tokenizer().encode(&s, false)?;
    let n_img = ids
      .iter()
      .filter(|&&t| t == p.config.image_token_index)
      .count();
    if n_img != n {
      return Err(Error::invalid(format!(
        "the prompt has {n_img} image tokens after expansion, expected {n} (one <image> per prompt)"
      )));
    }
    let pv = p.processor.preprocess(images)?;
    Ok(VlmInput {
      input_ids: ids,
      pixel_values: None,
      clip_pixels: Some(pv),
    })
  }

  /// Gemma 3's processor (python `Gemma3Processor.__call__`, no pan and
  /// scan): each `<start_of_image>` becomes `"\n\n<start_of_image>" +
  /// "<image_soft_token>" * mm_tokens_per_image + "<end_of_image>\n\n"`.
  fn process_gemma3(&self, g: &Gemma3Parts, text: &str, images: &[RgbImage]) -> Result<VlmInput> {
    let n_ph = text.matches(g.boi.as_str()).count();
    if n_ph != images.len() {
      return Err(Error::invalid(format!(
        "the prompt has {n_ph} image placeholder(s) ({}) but {} image(s) were given; \
         use one placeholder per image (the chat template adds them for {{\"type\": \"image\"}} parts)",
        g.boi,
        images.len()
      )));
    }
    let full = format!(
      "\n\n{}{}{}\n\n",
      g.boi,
      self.image_token.repeat(g.config.tokens_per_image()),
      g.eoi
    );
    let s = if images.is_empty() {
      text.to_string()
    } else {
      text.replace(g.boi.as_str(), &full)
    };
    let ids = self.tokenizer().encode(&s, false)?;
    let clip_pixels = if images.is_empty() {
      None
    } else {
      Some(g.processor.preprocess(images)?)
    };
    Ok(VlmInput {
      input_ids: ids,
      pixel_values: None,
      clip_pixels,
    })
  }

  /// LLaVA's processor (python `LlavaProcessor.__call__`): CLIP pixel
  /// values, each `<image>` expanded to `patches (+1 with the "full"
  /// strategy)` tokens.
  fn process_llava(&self, l: &LlavaParts, ids: Vec<u32>, images: &[RgbImage]) -> Result<VlmInput> {
    let img_id = l.config.image_token_index;
    let n_ph = ids.iter().filter(|&&t| t == img_id).count();
    if n_ph != images.len() {
      return Err(Error::invalid(format!(
        "the prompt has {n_ph} image placeholder(s) ({}) but {} image(s) were given; \
         use one placeholder per image (the chat template adds them for {{\"type\": \"image\"}} parts)",
        self.image_token,
        images.len()
      )));
    }
    if images.is_empty() {
      return Ok(VlmInput {
        input_ids: ids,
        pixel_values: None,
        clip_pixels: None,
      });
    }
    let pv = l.processor.preprocess(images)?;
    let n = l.config.tokens_per_image();
    let mut out = Vec::with_capacity(ids.len() + images.len() * n);
    for t in ids {
      if t == img_id {
        out.extend(std::iter::repeat_n(img_id, n));
      } else {
        out.push(t);
      }
    }
    Ok(VlmInput {
      input_ids: out,
      pixel_values: None,
      clip_pixels: Some(pv),
    })
  }

  /// Build the chat prompt for `prompt` and `images` and process it
  /// (python: `apply_chat_template` + `prepare_inputs`). With `raw`, or
  /// when the tokenizer has no chat template, `prompt` is used as is and
  /// must hold the placeholders itself.
  pub fn prepare(
    &self,
    prompt: &str,
    images: &[RgbImage],
    system: Option<&str>,
    raw: bool,
  ) -> Result<VlmInput> {
    if raw || (!self.tokenizer().has_chat_template() && !matches!(self.arch, Arch::Pali(_))) {
      return self.process(prompt, images);
    }
    let text = self.format_prompt(prompt, images.len(), system)?;
    self.process(&text, images)
  }

  fn no_video(&self, ids: &[u32]) -> Result<()> {
    let Arch::Qwen { config, .. } = &self.arch else {
      return Ok(());
    };
    if ids.contains(&config.video_token_id) {
      let tok = self
        .tokenizer()
        .id_to_token(config.video_token_id)
        .unwrap_or_default();
      return Err(Error::invalid(format!(
        "the prompt holds a video placeholder ({tok}); videos are not supported yet"
      )));
    }
    Ok(())
  }

  /// Compute the image features and M-RoPE positions of `input` and hand
  /// them to the language model for the next generation.
  fn set_prompt(&self, input: &VlmInput) -> Result<()> {
    let (vision, config, slot) = match &self.arch {
      Arch::Llava(l) => return self.set_prompt_llava(l, input),
      Arch::Pali(p) => return self.set_prompt_pali(p, input),
      Arch::Gemma3(g) => return self.set_prompt_gemma3(g, input),
      Arch::Qwen {
        vision,
        config,
        slot,
      } => (vision, config, slot),
    };
    let ids = &input.input_ids;
    self.no_video(ids)?;
    let img_id = config.image_token_id;
    let n_img_tokens = ids.iter().filter(|&&t| t == img_id).count();
    let state = match &input.pixel_values {
      None => {
        if n_img_tokens > 0 {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) ({}) but no images",
            self.image_token
          )));
        }
        None
      }
      Some(pv) => {
        let m2 = (config.vision.spatial_merge_size * config.vision.spatial_merge_size) as usize;
        let n_feat: usize = pv
          .grid_thw
          .iter()
          .map(|g| g[0] as usize * g[1] as usize * g[2] as usize / m2)
          .sum();
        if n_feat != n_img_tokens {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) but the images make {n_feat} features \
             (process the prompt with VlmModel::process to expand the placeholders)"
          )));
        }
        let features = vision.forward(&pv.to_array()?, &pv.grid_thw)?;
        let features = ops::astype(&features, self.lm_dtype())?;
        let mut row = 0;
        let feature_row = ids
          .iter()
          .map(|&t| {
            if t == img_id {
              row += 1;
              row - 1
            } else {
              -1
            }
          })
          .collect();
        let (positions, rope_delta) = rope_index(ids, &pv.grid_thw, config)?;
        Some(MultimodalPrompt {
          ids: ids.clone(),
          features: Some(features),
          feature_row,
          positions,
          rope_delta,
        })
      }
    };
    *slot
      .lock()
      .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))? = state;
    Ok(())
  }

  /// PaliGemma: SigLIP features, projected and scaled, in place of the
  /// image tokens' embeddings.
  fn set_prompt_pali(&self, p: &PaliParts, input: &VlmInput) -> Result<()> {
    let ids = &input.input_ids;
    let img_id = p.config.image_token_index;
    let n_img_tokens = ids.iter().filter(|&&t| t == img_id).count();
    let state = match &input.clip_pixels {
      None => {
        if n_img_tokens > 0 {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) ({}) but no images",
            self.image_token
          )));
        }
        None
      }
      Some(pv) => {
        let n_feat = p.config.tokens_per_image();
        if pv.n != 1 || n_feat != n_img_tokens {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) and {} image(s); PaliGemma takes one image \
             of {n_feat} tokens (process the prompt with VlmModel::process)",
            pv.n
          )));
        }
        let f = PaliGemma::image_features(&p.vision, &p.projector, &p.config, &pv.to_nhwc()?)?;
        let features = ops::astype(&f, self.lm_dtype())?;
        let mut row = 0;
        let feature_row = ids
          .iter()
          .map(|&t| {
            if t == img_id {
              row += 1;
              row - 1
            } else {
              -1
            }
          })
          .collect();
        Some(PaliPrompt {
          ids: ids.clone(),
          features,
          feature_row,
        })
      }
    };
    *p.slot
      .lock()
      .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))? = state;
    Ok(())
  }

  /// Gemma 3: SigLIP features, pooled, normed, projected and scaled, in
  /// place of the image tokens' embeddings (python `masked_scatter`).
  fn set_prompt_gemma3(&self, g: &Gemma3Parts, input: &VlmInput) -> Result<()> {
    let ids = &input.input_ids;
    let img_id = g.config.image_token_index;
    let n_img_tokens = ids.iter().filter(|&&t| t == img_id).count();
    let state = match &input.clip_pixels {
      None => {
        if n_img_tokens > 0 {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) ({}) but no images",
            self.image_token
          )));
        }
        None
      }
      Some(pv) => {
        let n_feat = pv.n * g.config.tokens_per_image();
        if n_feat != n_img_tokens {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) but the images make {n_feat} features \
             (process the prompt with VlmModel::process to expand the placeholders)"
          )));
        }
        let f = Gemma3::image_features(&g.vision, &g.projector, &g.config, &pv.to_nhwc()?)?;
        let features = ops::astype(&f, self.lm_dtype())?;
        let mut row = 0;
        let feature_row = ids
          .iter()
          .map(|&t| {
            if t == img_id {
              row += 1;
              row - 1
            } else {
              -1
            }
          })
          .collect();
        Some(Gemma3Prompt {
          ids: ids.clone(),
          features,
          feature_row,
        })
      }
    };
    *g.slot
      .lock()
      .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))? = state;
    Ok(())
  }

  /// LLaVA: CLIP features of the chosen layer, projected, in place of the
  /// image tokens' embeddings (python `get_input_embeddings`).
  fn set_prompt_llava(&self, l: &LlavaParts, input: &VlmInput) -> Result<()> {
    let ids = &input.input_ids;
    let img_id = l.config.image_token_index;
    let n_img_tokens = ids.iter().filter(|&&t| t == img_id).count();
    let state = match &input.clip_pixels {
      None => {
        if n_img_tokens > 0 {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) ({}) but no images",
            self.image_token
          )));
        }
        None
      }
      Some(pv) => {
        let n_feat = pv.n * l.config.tokens_per_image();
        if n_feat != n_img_tokens {
          return Err(Error::invalid(format!(
            "the prompt has {n_img_tokens} image token(s) but the images make {n_feat} features \
             (process the prompt with VlmModel::process to expand the placeholders)"
          )));
        }
        let hs = l
          .vision
          .hidden_state(&pv.to_nhwc()?, l.config.vision_feature_layer)?;
        let hs = if l.config.drop_cls {
          let s = hs.shape();
          ops::slice(&hs, &[0, 1, 0], &s, &[1, 1, 1])?
        } else {
          hs
        };
        let f = l.projector.forward(&hs)?;
        let d = f.dim(-1).unwrap_or(0);
        let features = ops::astype(&ops::reshape(&f, &[-1, d])?, self.lm_dtype())?;
        let mut row = 0;
        let feature_row = ids
          .iter()
          .map(|&t| {
            if t == img_id {
              row += 1;
              row - 1
            } else {
              -1
            }
          })
          .collect();
        Some(LlavaPrompt {
          ids: ids.clone(),
          features,
          feature_row,
        })
      }
    };
    *l.slot
      .lock()
      .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))? = state;
    Ok(())
  }

  fn lm_dtype(&self) -> mlxrs_core::Dtype {
    let mut d = mlxrs_core::Dtype::Float32;
    let mut first = true;
    self.lm.model.visit(&mut |k, a| {
      if first && k.ends_with("embed_tokens.weight") && a.dtype().is_float() {
        d = a.dtype();
        first = false;
      }
    });
    d
  }

  /// Forget the multimodal prompt (the language model then behaves as a
  /// plain text model).
  pub fn clear_prompt(&self) {
    match &self.arch {
      Arch::Qwen { slot, .. } => {
        if let Ok(mut g) = slot.lock() {
          *g = None;
        }
      }
      Arch::Llava(l) => {
        if let Ok(mut g) = l.slot.lock() {
          *g = None;
        }
      }
      Arch::Pali(p) => {
        if let Ok(mut g) = p.slot.lock() {
          *g = None;
        }
      }
      Arch::Gemma3(m) => {
        if let Ok(mut g) = m.slot.lock() {
          *g = None;
        }
      }
    }
  }

  /// Stream a generation (python `mlx_vlm.stream_generate`): mlxrs-lm's
  /// [`TextStream`] over the language model, with the images merged into
  /// the prompt.
  pub fn stream<'a>(&'a self, input: &VlmInput, opts: &GenerateOptions) -> Result<TextStream<'a>> {
    self.set_prompt(input)?;
    Ok(TextStream::new(&self.lm, &input.input_ids, opts, None)?)
  }

  /// Token-level generation (python `mlx_vlm.generate.generate_step`): an
  /// iterator of sampled ids that ignores EOS, over the language model with
  /// the images merged into the prompt.
  pub fn token_generator<'a>(
    &'a self,
    input: &VlmInput,
    cfg: &StepConfig,
  ) -> Result<TokenGenerator<'a>> {
    self.set_prompt(input)?;
    let ids: Vec<i32> = input.input_ids.iter().map(|&t| t as i32).collect();
    Ok(TokenGenerator::new(
      self.lm.model.as_ref(),
      &ids,
      cfg,
      None,
    )?)
  }

  /// Generate to completion (python `mlx_vlm.generate`).
  pub fn generate(&self, input: &VlmInput, opts: &GenerateOptions) -> Result<Output> {
    self.set_prompt(input)?;
    Ok(mlxrs_lm::generate(&self.lm, &input.input_ids, opts)?)
  }

  /// Logits `[vocab]` at the last prompt position of a full forward with
  /// fresh caches (python `model(input_ids, pixel_values, cache=...)
  /// .logits[0, -1]`).
  pub fn prompt_logits(&self, input: &VlmInput) -> Result<Array> {
    if input.input_ids.is_empty() {
      return Err(Error::invalid("the prompt is empty (no tokens)"));
    }
    self.set_prompt(input)?;
    let model = self.lm.model.as_ref();
    let mut caches = model.make_caches(None);
    let ids: Vec<i32> = input.input_ids.iter().map(|&t| t as i32).collect();
    let x = Array::from_slice(&ids, &[1, ids.len() as i32])?;
    let h = model.hidden(&x, &mut caches)?;
    let s = h.shape();
    let last = ops::slice(&h, &[0, s[1] - 1, 0], &s, &[1, 1, 1])?;
    let logits = model.logits(&last)?;
    Ok(ops::reshape(&logits, &[-1])?)
  }
}
