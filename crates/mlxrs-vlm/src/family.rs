//! The per-family half of a loaded VLM: a [`VisionFamily`] holds the vision
//! tower, projector, image processor and the slot through which prepared
//! image features reach the language model, and implements the processor
//! (python `processor(text=..., images=...)`) and the feature merge
//! (python `Model.get_input_embeddings`). [`crate::VlmModel`] dispatches to
//! it; adding a family is one module with a `load` function plus one line
//! in [`crate::model`]'s registry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::load::{default_dtype, load_weights};
use mlxrs_lm::{LanguageModel, LoadedModel, ModelConfig, ModelFiles, Tokenizer};
use mlxrs_nn::{Module, QuantConfig, Weights};

use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::model::{LoadOptions, VlmInput};
use crate::processors::{ClipImageProcessor, Qwen2VlImageProcessor};
use crate::vision_cache::{FeatureKey, VisionFeatureCache};

/// What a family's processor and merge step read from the loaded model.
pub(crate) struct Shared<'a> {
  /// The tokenizer.
  pub tokenizer: &'a Tokenizer,
  /// The image placeholder token (`<image>`, `<|image_pad|>`, ...).
  pub image_token: &'a str,
  /// The language model's compute dtype (features are cast to it).
  pub dtype: Dtype,
  /// The image-feature cache.
  pub cache: &'a VisionFeatureCache,
}

impl Shared<'_> {
  /// The image features of `input` (vision tower + projector, cast to the
  /// compute dtype) from the feature cache, else `compute()`, stored.
  pub fn features(
    &self,
    input: &VlmInput,
    compute: impl FnOnce() -> Result<Array>,
  ) -> Result<Array> {
    self.cache.get_or_compute(FeatureKey::of(input), compute)
  }
}

/// One VLM family's processor + vision half (see the module docs).
///
/// `process` and `process_ids` default to each other (decode / encode):
/// a family implements at least one of them.
pub(crate) trait VisionFamily: Send {
  /// python `processor(text=text, images=images)`: expand the placeholders
  /// and process the images.
  fn process(&self, s: &Shared<'_>, text: &str, images: &[RgbImage]) -> Result<VlmInput> {
    let ids = s.tokenizer.encode(text, false)?;
    self.process_ids(s, ids, images)
  }

  /// [`VisionFamily::process`] for already-encoded ids.
  fn process_ids(&self, s: &Shared<'_>, ids: Vec<u32>, images: &[RgbImage]) -> Result<VlmInput> {
    let text = s.tokenizer.decode(&ids, false)?;
    self.process(s, &text, images)
  }

  /// Compute the image features of `input` and put them in the slot the
  /// language model reads (`None` without images).
  fn set_prompt(&self, s: &Shared<'_>, input: &VlmInput) -> Result<()>;

  /// Forget the prepared prompt.
  fn clear_prompt(&self);

  /// The CLIP-style image processor, where the family has one.
  fn clip_processor(&self) -> Option<&ClipImageProcessor> {
    None
  }

  /// Whether mlx-vlm puts the image parts before the text in the user
  /// message (Qwen2.5-VL).
  fn images_first(&self) -> bool {
    false
  }

  /// The prompt for families that use no chat template (PaliGemma:
  /// `"<image>" * n + prompt`); `None` means the chat template is used.
  fn plain_prompt(&self, _s: &Shared<'_>, _prompt: &str, _num_images: usize) -> Option<String> {
    None
  }
}

/// What a family's loader returns.
pub(crate) struct LoadedFamily {
  /// The language model, its config and tokenizer.
  pub lm: LoadedModel,
  /// The vision half.
  pub family: Box<dyn VisionFamily>,
  /// The image placeholder token.
  pub image_token: String,
  /// The Qwen2-VL image processor (families without one: `None`).
  pub qwen_processor: Option<Qwen2VlImageProcessor>,
}

impl LoadedFamily {
  /// A family without a Qwen2-VL image processor: its language model
  /// ([`loaded_model`]), vision half and image token.
  pub fn clip(lm: LoadedModel, family: Box<dyn VisionFamily>, image_token: String) -> Self {
    LoadedFamily {
      lm,
      family,
      image_token,
      qwen_processor: None,
    }
  }
}

/// A family's loader: checkpoint folder, its config.json, options.
pub(crate) type Loader = fn(&Path, ModelConfig, &LoadOptions) -> Result<LoadedFamily>;

/// Open a checkpoint's weights (python `load_weights` + `sanitize`), with
/// the dtype and quantization of `config` / `opts`.
pub(crate) fn open_weights(
  path: &Path,
  config: &ModelConfig,
  opts: &LoadOptions,
  sanitize: impl FnOnce(HashMap<String, Array>) -> Result<HashMap<String, Array>>,
) -> Result<Weights> {
  let files = ModelFiles::scan(path)?;
  let weights = sanitize(load_weights(&files.weights)?)?;
  let mut w = Weights::new(weights);
  w.dtype = opts.dtype.or_else(default_dtype);
  if let Some((_, q)) = config.quantization_config() {
    w.quant = Some(QuantConfig::from_json(q)?);
  }
  Ok(w)
}

/// Check that every tensor was used and evaluate the parameters.
pub(crate) fn finish_weights(path: &Path, w: Weights, params: Vec<Array>) -> Result<()> {
  w.finish()
    .map_err(|e| Error::config(path.join("model.safetensors"), "<tensors>", e.to_string()))?;
  mlxrs_core::eval(&params)?;
  Ok(())
}

/// Load the language model, `vision_tower` and `multi_modal_projector`
/// parts of a checkpoint (python `load_model` for the LLaVA-shaped
/// families), check every tensor was used, evaluate them, and open the
/// tokenizer. Returns the tokenizer and the image token
/// (config.json `image_token_index`).
pub(crate) fn load_tower_model(
  path: &Path,
  mut w: Weights,
  text: &mut impl LanguageModel,
  vision: &mut impl Module,
  projector: &mut impl Module,
  image_token_index: u32,
) -> Result<(Tokenizer, String)> {
  text.load(&mut w);
  vision.load(&mut w, "vision_tower");
  projector.load(&mut w, "multi_modal_projector");
  let mut params = Vec::new();
  text.visit(&mut |_, a| params.push(a.clone()));
  vision.visit("", &mut |_, a| params.push(a.clone()));
  projector.visit("", &mut |_, a| params.push(a.clone()));
  finish_weights(path, w, params)?;
  let tokenizer = Tokenizer::from_dir(path)?;
  let image_token = token_name(&tokenizer, path, "image_token_index", image_token_index)?;
  Ok((tokenizer, image_token))
}

/// The error for an image processor whose output size (`key` of
/// preprocessor_config.json) is not the vision tower's `image_size`.
pub(crate) fn size_mismatch(path: &Path, key: &str, got: &dyn std::fmt::Debug, size: u32) -> Error {
  Error::config(
    path.join("preprocessor_config.json"),
    key,
    format!("{got:?} does not match the vision tower's image_size {size}"),
  )
}

/// The [`LoadedModel`] of a family's language model.
pub(crate) fn loaded_model(
  path: &Path,
  config: ModelConfig,
  tokenizer: Tokenizer,
  text: Box<dyn LanguageModel>,
  opts: &LoadOptions,
) -> LoadedModel {
  let max_context = config.max_position_embeddings().ok().flatten();
  LoadedModel {
    model: text,
    config,
    tokenizer: Some(tokenizer),
    path: path.to_path_buf(),
    dtype: opts.dtype.or_else(default_dtype),
    max_context,
  }
}

/// The token string of `id` (config.json `key`), or a config error.
pub(crate) fn token_name(tokenizer: &Tokenizer, path: &Path, key: &str, id: u32) -> Result<String> {
  tokenizer.id_to_token(id).ok_or_else(|| {
    Error::config(
      path.join("config.json"),
      key,
      format!("token id {id} is not in the tokenizer's vocabulary"),
    )
  })
}

/// Per prompt position: the feature row of an image token (in order),
/// else -1.
pub(crate) fn feature_rows(ids: &[u32], img_id: u32) -> Vec<i32> {
  let mut row = 0;
  ids
    .iter()
    .map(|&t| {
      if t == img_id {
        row += 1;
        row - 1
      } else {
        -1
      }
    })
    .collect()
}

/// The merge step of the families whose processor fills
/// `input.clip_pixels` (python `get_input_embeddings` up to the
/// `masked_scatter`): `check(n_images, n_image_tokens)` validates the
/// counts, `features` maps the NHWC pixels to `[.., hidden]` features
/// (cached, then cast to the compute dtype), and the prompt
/// `make(ids, features, feature_row)` goes in `slot` (`None` without
/// images; image tokens without pixels are an error).
pub(crate) fn set_clip_prompt<T>(
  s: &Shared<'_>,
  input: &VlmInput,
  img_id: u32,
  slot: &Arc<Mutex<Option<T>>>,
  check: impl FnOnce(usize, usize) -> Result<()>,
  features: impl FnOnce(&Array) -> Result<Array>,
  make: impl FnOnce(Vec<u32>, Array, Vec<i32>) -> T,
) -> Result<()> {
  let ids = &input.input_ids;
  let n_img_tokens = ids.iter().filter(|&&t| t == img_id).count();
  let state = match &input.clip_pixels {
    None => {
      if n_img_tokens > 0 {
        return Err(no_pixels(n_img_tokens, s.image_token));
      }
      None
    }
    Some(pv) => {
      check(pv.n, n_img_tokens)?;
      let f = s.features(input, || {
        Ok(ops::astype(&features(&pv.to_nhwc()?)?, s.dtype)?)
      })?;
      Some(make(ids.clone(), f, feature_rows(ids, img_id)))
    }
  };
  set_slot(slot, state)
}

/// The [`set_clip_prompt`] check for `per_image` tokens per image.
pub(crate) fn tokens_per_image(per_image: usize) -> impl FnOnce(usize, usize) -> Result<()> {
  move |n_images, n_img_tokens| {
    let n_feat = n_images * per_image;
    if n_feat != n_img_tokens {
      return Err(feature_mismatch(n_img_tokens, n_feat));
    }
    Ok(())
  }
}

/// Replace the prompt a language model reads.
pub(crate) fn set_slot<T>(slot: &Arc<Mutex<Option<T>>>, v: Option<T>) -> Result<()> {
  *slot
    .lock()
    .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))? = v;
  Ok(())
}

/// Empty a slot (ignoring poisoning).
pub(crate) fn clear_slot<T>(slot: &Arc<Mutex<Option<T>>>) {
  if let Ok(mut g) = slot.lock() {
    *g = None;
  }
}

/// The error for a prompt whose placeholder count differs from the image
/// count.
pub(crate) fn placeholder_mismatch(n_ph: usize, token: &str, n_images: usize) -> Error {
  Error::invalid(format!(
    "the prompt has {n_ph} image placeholder(s) ({token}) but {n_images} image(s) were given; \
     use one placeholder per image (the chat template adds them for {{\"type\": \"image\"}} parts)"
  ))
}

/// The error for image tokens without pixel values.
pub(crate) fn no_pixels(n_img_tokens: usize, token: &str) -> Error {
  Error::invalid(format!(
    "the prompt has {n_img_tokens} image token(s) ({token}) but no images"
  ))
}

/// The error for image tokens that do not match the feature count.
pub(crate) fn feature_mismatch(n_img_tokens: usize, n_feat: usize) -> Error {
  Error::invalid(format!(
    "the prompt has {n_img_tokens} image token(s) but the images make {n_feat} features \
     (process the prompt with VlmModel::process to expand the placeholders)"
  ))
}
