//! A loaded vision-language model and its processor: python
//! `mlx_vlm.load(path)` (model + processor), `prompt_utils.apply_chat_template`,
//! `utils.prepare_inputs` and `generate` / `stream_generate`, on top of
//! mlxrs-lm's generation loop.

use std::path::{Path, PathBuf};

use mlxrs_core::{Array, ops};
use mlxrs_lm::{
  ChatOptions, Content, GenerateOptions, LoadedModel, Message, ModelConfig, Output,
  PromptEmbeddings, StepConfig, TextStream, TokenGenerator, Tokenizer, resolve_model,
};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::family::{Loader, Shared, VisionFamily};
use crate::image::{AlphaMode, RgbImage, load_image};
use crate::models;
use crate::processors::{ClipImageProcessor, ClipPixels, PixelValues, Qwen2VlImageProcessor};
use crate::vision_cache::{DEFAULT_VISION_CACHE_SIZE, VisionCacheStats, VisionFeatureCache};

/// The families: `model_type` and its loader (each family module's
/// `load`). Adding a family is its module plus one line here.
const REGISTRY: &[(&str, Loader)] = &[
  ("gemma3", models::gemma3::load),
  ("idefics3", models::idefics3::load),
  ("llava", models::llava::load),
  ("llava_next", models::llava_next::load),
  ("paligemma", models::paligemma::load),
  ("qwen2_5_vl", models::qwen2_vl::load),
  ("qwen2_vl", models::qwen2_vl::load),
  ("smolvlm", models::idefics3::load),
];

/// The vision-language `model_type`s this build supports (sorted).
pub const MODEL_TYPES: &[&str] = &[
  "gemma3",
  "idefics3",
  "llava",
  "llava_next",
  "paligemma",
  "qwen2_5_vl",
  "qwen2_vl",
  "smolvlm",
];

fn loader_of(model_type: &str) -> Option<Loader> {
  REGISTRY
    .iter()
    .find(|(t, _)| *t == model_type)
    .map(|(_, l)| *l)
}

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
  /// `pixel_values` `[n, 3, H, W]`, when there are images (LLaVA,
  /// PaliGemma, Gemma 3; LLaVA-NeXT: every image's tiles, base image
  /// first, stacked).
  pub clip_pixels: Option<ClipPixels>,
  /// `image_sizes` (height, width) of the original images (LLaVA-NeXT;
  /// empty for other families).
  pub image_sizes: Vec<[u32; 2]>,
}

impl VlmInput {
  /// Prompt ids without images.
  pub fn text(input_ids: Vec<u32>) -> VlmInput {
    VlmInput {
      input_ids,
      pixel_values: None,
      clip_pixels: None,
      image_sizes: Vec::new(),
    }
  }

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
/// ordinary [`LoadedModel`] built by [`mlxrs_lm::build_model`] from the
/// checkpoint's `text_config` (so mlxrs-lm's sampling, caches, streaming
/// and stop rules apply unchanged), the vision tower and image processor
/// sit beside it. A prompt with images is prefilled from its input
/// embeddings ([`VlmModel::prompt_embeddings`]). Qwen2-VL's language model
/// (M-RoPE positions) keeps the prepared prompt's state itself: one
/// generation at a time per model for that family.
pub struct VlmModel {
  /// The language model, its config and tokenizer.
  pub lm: LoadedModel,
  /// The image processor (`preprocessor_config.json`) of the Qwen2-VL
  /// family (the defaults for other families; see
  /// [`VlmModel::clip_processor`]).
  pub image_processor: Qwen2VlImageProcessor,
  /// How files given to [`VlmModel::load_images`] become RGB.
  pub alpha: AlphaMode,
  family: Box<dyn VisionFamily>,
  vision_cache: VisionFeatureCache,
  dtype: mlxrs_core::Dtype,
  model_type: String,
  image_token: String,
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

/// Whether the checkpoint folder's config.json is a supported
/// vision-language model (`Ok(false)` for a text-only one).
pub fn is_vlm_dir(dir: impl AsRef<Path>) -> Result<bool> {
  let config = ModelConfig::from_dir(dir.as_ref())?;
  Ok(loader_of(config.model_type()?).is_some())
}

/// Load a model folder or Hub repo id (python `mlx_vlm.load`).
pub fn load(model: &str, opts: &LoadOptions) -> Result<VlmModel> {
  let path = resolve_model(model)?;
  load_dir(&path, opts)
}

/// The dtype of the language model's embedding (image features are cast
/// to it).
fn lm_dtype(lm: &LoadedModel) -> mlxrs_core::Dtype {
  let mut d = mlxrs_core::Dtype::Float32;
  let mut first = true;
  lm.model.visit(&mut |k, a| {
    if first && k.ends_with("embed_tokens.weight") && a.dtype().is_float() {
      d = a.dtype();
      first = false;
    }
  });
  d
}

/// Load a checkpoint folder (see [`load`]).
pub fn load_dir(path: &Path, opts: &LoadOptions) -> Result<VlmModel> {
  let config = ModelConfig::from_dir(path)?;
  let model_type = config.model_type()?.to_string();
  let Some(loader) = loader_of(&model_type) else {
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
  let l = loader(path, config, opts)?;
  let dtype = lm_dtype(&l.lm);
  Ok(VlmModel {
    lm: l.lm,
    dtype,
    image_processor: l.qwen_processor.unwrap_or_default(),
    alpha: AlphaMode::Drop,
    family: l.family,
    vision_cache: VisionFeatureCache::new(DEFAULT_VISION_CACHE_SIZE),
    model_type,
    image_token: l.image_token,
  })
}

impl VlmModel {
  /// `model_type` from config.json.
  pub fn model_type(&self) -> &str {
    &self.model_type
  }

  /// The CLIP / SigLIP-style image processor (LLaVA, LLaVA-NeXT,
  /// PaliGemma, Gemma 3; `None` for the Qwen2-VL family).
  pub fn clip_processor(&self) -> Option<&ClipImageProcessor> {
    self.family.clip_processor()
  }

  /// Whether the family builds prompts without a chat template
  /// (PaliGemma: `"<image>" * n + prompt`).
  pub fn uses_plain_prompt(&self) -> bool {
    self.family.plain_prompt(&self.shared(), "", 0).is_some()
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

  fn shared(&self) -> Shared<'_> {
    Shared {
      tokenizer: self.tokenizer(),
      image_token: &self.image_token,
      dtype: self.dtype,
      cache: &self.vision_cache,
      lm: self.lm.model.as_ref(),
    }
  }

  /// Hit / miss counters and size of the image-feature cache (python
  /// mlx-vlm `VisionFeatureCache`, which has `len()` but no counters).
  /// Every prompt with images is one lookup: a hit skips the vision tower.
  pub fn vision_cache_stats(&self) -> VisionCacheStats {
    self.vision_cache.stats()
  }

  /// Empty the image-feature cache (python `vision_cache.clear()`); the
  /// counters are kept (see [`VlmModel::reset_vision_cache_stats`]).
  pub fn clear_vision_cache(&self) {
    self.vision_cache.clear();
  }

  /// Zero the hit / miss counters of the image-feature cache.
  pub fn reset_vision_cache_stats(&self) {
    self.vision_cache.reset_stats();
  }

  /// Set how many image sets the feature cache keeps (python
  /// `VisionFeatureCache(max_size=n)`; default
  /// [`crate::vision_cache::DEFAULT_VISION_CACHE_SIZE`]); 0 turns it off.
  /// Shrinking drops the least recently used entries.
  pub fn set_vision_cache_size(&self, entries: usize) {
    self.vision_cache.set_capacity(entries);
  }

  /// Read image files (see [`crate::image::load_image`]), naming the file
  /// in errors.
  pub fn load_images(&self, paths: &[impl AsRef<Path>]) -> Result<Vec<RgbImage>> {
    paths.iter().map(|p| load_image(p, self.alpha)).collect()
  }

  /// The user message mlx-vlm builds for a text prompt and `num_images`
  /// images (`prompt_utils.get_message_json`: a text part and one
  /// `{"type": "image"}` part per image — after the text for most
  /// families, before it for Qwen2.5-VL).
  pub fn user_message(&self, prompt: &str, num_images: usize) -> Message {
    let text = json!({"type": "text", "text": prompt, "content": prompt});
    let images = std::iter::repeat_n(json!({"type": "image"}), num_images);
    let parts: Vec<Value> = if self.family.images_first() {
      images.chain(std::iter::once(text)).collect()
    } else {
      std::iter::once(text).chain(images).collect()
    };
    Message::new("user", Content::Parts(parts))
  }

  /// The system message mlx-vlm builds for `text` (`get_message_json` with
  /// role `system`): one `{"type": "text"}` part, as the user message's, so
  /// templates that render list-of-parts content only (llava-hf,
  /// Idefics3, SmolVLM) see it too.
  pub fn system_message(&self, text: &str) -> Message {
    let part = json!({"type": "text", "text": text, "content": text});
    Message::new("system", Content::Parts(vec![part]))
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
    if let Some(p) = self.family.plain_prompt(&self.shared(), prompt, num_images) {
      return Ok(p);
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
      msgs.push(self.system_message(s));
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
  /// to its image's token count.
  pub fn process(&self, text: &str, images: &[RgbImage]) -> Result<VlmInput> {
    self.family.process(&self.shared(), text, images)
  }

  /// [`VlmModel::process`] for already-encoded ids.
  pub fn process_ids(&self, ids: Vec<u32>, images: &[RgbImage]) -> Result<VlmInput> {
    self.family.process_ids(&self.shared(), ids, images)
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
    let plain = self
      .family
      .plain_prompt(&self.shared(), prompt, images.len())
      .is_some();
    if raw || (!self.tokenizer().has_chat_template() && !plain) {
      return self.process(prompt, images);
    }
    let text = self.format_prompt(prompt, images.len(), system)?;
    self.process(&text, images)
  }

  /// The prompt's input embeddings with the image features merged in
  /// (python `model.get_input_embeddings(input_ids, pixel_values)`), which
  /// the generation prefills from; `None` for a text-only prompt (and for
  /// Qwen2-VL, whose language model reads the prepared prompt itself).
  pub fn prompt_embeddings(&self, input: &VlmInput) -> Result<Option<PromptEmbeddings>> {
    self.family.prompt_embeddings(&self.shared(), input)
  }

  /// Forget the multimodal prompt Qwen2-VL's language model keeps (it then
  /// behaves as a plain text model); other families keep none.
  pub fn clear_prompt(&self) {
    self.family.clear_prompt();
  }

  /// Stream a generation (python `mlx_vlm.stream_generate`): mlxrs-lm's
  /// [`TextStream`] over the language model, with the images merged into
  /// the prompt.
  pub fn stream<'a>(&'a self, input: &VlmInput, opts: &GenerateOptions) -> Result<TextStream<'a>> {
    let e = self.prompt_embeddings(input)?;
    Ok(TextStream::with_embeddings(
      &self.lm,
      &input.input_ids,
      e.as_ref(),
      opts,
      None,
    )?)
  }

  /// Token-level generation (python `mlx_vlm.generate.generate_step`): an
  /// iterator of sampled ids that ignores EOS, over the language model with
  /// the images merged into the prompt.
  pub fn token_generator<'a>(
    &'a self,
    input: &VlmInput,
    cfg: &StepConfig,
  ) -> Result<TokenGenerator<'a>> {
    let e = self.prompt_embeddings(input)?;
    let ids: Vec<i32> = input.input_ids.iter().map(|&t| t as i32).collect();
    Ok(TokenGenerator::with_embeddings(
      self.lm.model.as_ref(),
      &ids,
      e.as_ref(),
      cfg,
      None,
    )?)
  }

  /// Generate to completion (python `mlx_vlm.generate`).
  pub fn generate(&self, input: &VlmInput, opts: &GenerateOptions) -> Result<Output> {
    Ok(mlxrs_lm::collect(self.stream(input, opts)?)?)
  }

  /// Logits `[vocab]` at the last prompt position of a full forward with
  /// fresh caches (python `model(input_ids, pixel_values, cache=...)
  /// .logits[0, -1]`).
  pub fn prompt_logits(&self, input: &VlmInput) -> Result<Array> {
    if input.input_ids.is_empty() {
      return Err(Error::invalid("the prompt is empty (no tokens)"));
    }
    let e = self.prompt_embeddings(input)?;
    let model = self.lm.model.as_ref();
    let mut caches = model.make_caches(None);
    let h = match &e {
      Some(e) => model.hidden_from_embeddings(&e.embeddings, &mut caches, e.mask.as_ref())?,
      None => {
        let ids: Vec<i32> = input.input_ids.iter().map(|&t| t as i32).collect();
        let x = Array::from_slice(&ids, &[1, ids.len() as i32])?;
        model.hidden(&x, &mut caches)?
      }
    };
    let s = h.shape();
    let last = ops::slice(&h, &[0, s[1] - 1, 0], &s, &[1, 1, 1])?;
    let logits = model.logits(&last)?;
    Ok(ops::reshape(&logits, &[-1])?)
  }
}
