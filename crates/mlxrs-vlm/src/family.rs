//! The per-family half of a loaded VLM: a [`VisionFamily`] holds the vision
//! tower, projector and image processor, and implements the processor
//! (python `processor(text=..., images=...)`) and the feature merge
//! (python `Model.get_input_embeddings`): the prompt's input embeddings,
//! which the language model (an ordinary mlxrs-lm model built by
//! [`mlxrs_lm::build_model`] from `text_config`) prefills from.
//! [`crate::VlmModel`] dispatches to it; adding a family is one module with
//! a `load` function plus one line in [`crate::model`]'s registry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::load::{default_dtype, load_weights};
use mlxrs_lm::{LanguageModel, LoadedModel, ModelConfig, ModelFiles, PromptEmbeddings, Tokenizer};
use mlxrs_nn::{Module, QuantConfig, Weights};
use serde_json::Value;

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
  /// The language model (its token embeddings).
  pub lm: &'a dyn LanguageModel,
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

  /// The prompt's input embeddings with the image features merged in
  /// (python `get_input_embeddings`), which the generation prefills from;
  /// `None`: prefill from the token ids (a text-only prompt). A family
  /// whose language model keeps its own per-prompt state (Qwen2-VL's
  /// M-RoPE positions) sets that state here and returns `None`.
  fn prompt_embeddings(&self, s: &Shared<'_>, input: &VlmInput)
  -> Result<Option<PromptEmbeddings>>;

  /// Forget per-prompt state kept by [`VisionFamily::prompt_embeddings`]
  /// (Qwen2-VL only).
  fn clear_prompt(&self) {}

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

/// The language model of a VLM (python mlx-vlm's `language_model`):
/// [`mlxrs_lm::build_model`] on `text` (the family's `text_config` with
/// mlx-vlm's defaults filled in). It must take input embeddings.
pub(crate) fn build_text(text: &Value) -> Result<Box<dyn LanguageModel>> {
  let mt = text
    .get("model_type")
    .and_then(Value::as_str)
    .unwrap_or("?");
  if !mlxrs_lm::EMBEDDINGS_MODEL_TYPES.contains(&mt) {
    return Err(Error::invalid(format!(
      "config.json `text_config`: a `{mt}` language model cannot take image features; supported: {}",
      mlxrs_lm::EMBEDDINGS_MODEL_TYPES.join(", ")
    )));
  }
  mlxrs_lm::build_model(text).map_err(|e| Error::invalid(format!("config.json `text_config`: {e}")))
}

/// A checkpoint's tensors split as mlx-vlm's module tree: the language
/// model's (`language_model.` stripped, so the mlxrs-lm model takes them at
/// its root; the family's sanitize already did the language model's) and the rest
/// (vision tower, projector, ...).
pub(crate) struct VlmWeights {
  /// The language model's tensors.
  pub text: Weights,
  /// Everything else.
  pub rest: Weights,
}

/// Open a checkpoint's weights (python `load_weights` + `sanitize`) with
/// the dtype and quantization of `config` / `opts`, split into the
/// language model's and the rest (see [`VlmWeights`]); `sanitize` maps the
/// checkpoint's names to mlx-vlm's (`language_model.model.*`, ...).
pub(crate) fn open_vlm_weights(
  path: &Path,
  config: &ModelConfig,
  opts: &LoadOptions,
  sanitize: impl FnOnce(HashMap<String, Array>) -> Result<HashMap<String, Array>>,
) -> Result<VlmWeights> {
  const PREFIX: &str = "language_model.";
  let all = open_weights(path, config, opts, sanitize)?;
  let (dtype, quant) = (all.dtype, all.quant.clone());
  let (mut t, mut r) = (HashMap::new(), HashMap::new());
  let keys: Vec<String> = all.keys().cloned().collect();
  let mut all = all;
  for k in keys {
    if let Some(v) = all.remove(&k) {
      match k.strip_prefix(PREFIX) {
        Some(rest) => t.insert(rest.to_string(), v),
        None => r.insert(k, v),
      };
    }
  }
  let mut tw = Weights::new(t);
  tw.dtype = dtype;
  tw.quant = quant.clone().map(|mut q| {
    q.layers = q
      .layers
      .into_iter()
      .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|k| (k.to_string(), v)))
      .collect();
    q
  });
  let mut rw = Weights::new(r);
  rw.dtype = dtype;
  rw.quant = quant;
  Ok(VlmWeights { text: tw, rest: rw })
}

/// Load the language model from `w.text`, let `load_rest` load the other
/// modules from `w.rest`, check every tensor was used (the language
/// model's are named with their `language_model.` prefix in errors),
/// evaluate the parameters (the language model's and `params`) and ready
/// the language model for decoding as `mlxrs_lm::load` does (stacked
/// projections, [`mlxrs_lm::fuse_for_inference`]).
pub(crate) fn load_vlm_weights(
  path: &Path,
  mut w: VlmWeights,
  text: &mut dyn LanguageModel,
  load_rest: impl FnOnce(&mut Weights) -> Vec<Array>,
) -> Result<()> {
  text.load(&mut w.text);
  let mut params = load_rest(&mut w.rest);
  text.visit(&mut |_, a| params.push(a.clone()));
  w.text.finish().map_err(|e| {
    Error::config(
      path.join("model.safetensors"),
      "<tensors>",
      format!("language_model: {e}"),
    )
  })?;
  finish_weights(path, w.rest, params)?;
  mlxrs_lm::fuse_for_inference(text)?;
  Ok(())
}

/// Load the language model, `vision_tower` and `multi_modal_projector`
/// parts of a checkpoint (python `load_model` for the LLaVA-shaped
/// families), check every tensor was used, evaluate them, and open the
/// tokenizer. Returns the tokenizer and the image token
/// (config.json `image_token_index`).
pub(crate) fn load_tower_model(
  path: &Path,
  w: VlmWeights,
  text: &mut dyn LanguageModel,
  vision: &mut impl Module,
  projector: &mut impl Module,
  image_token_index: u32,
) -> Result<(Tokenizer, String)> {
  load_vlm_weights(path, w, text, |w| {
    vision.load(w, "vision_tower");
    projector.load(w, "multi_modal_projector");
    let mut params = Vec::new();
    vision.visit("", &mut |_, a| params.push(a.clone()));
    projector.visit("", &mut |_, a| params.push(a.clone()));
    params
  })?;
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

/// The image features of a prompt whose processor filled
/// `input.clip_pixels` (python `get_input_embeddings` up to the
/// `masked_scatter`): `check(n_images, n_image_tokens)` validates the
/// counts, `features` maps the NHWC pixels to `[n_image_tokens, hidden]`
/// features (cached, then cast to the compute dtype). `None` without
/// images; image tokens without pixels are an error.
pub(crate) fn pixel_features(
  s: &Shared<'_>,
  input: &VlmInput,
  img_id: u32,
  check: impl FnOnce(usize, usize) -> Result<()>,
  features: impl FnOnce(&Array) -> Result<Array>,
) -> Result<Option<Array>> {
  let n_img_tokens = input.input_ids.iter().filter(|&&t| t == img_id).count();
  match &input.clip_pixels {
    None => {
      if n_img_tokens > 0 {
        return Err(no_pixels(n_img_tokens, s.image_token));
      }
      Ok(None)
    }
    Some(pv) => {
      check(pv.n, n_img_tokens)?;
      let f = s.features(input, || {
        Ok(ops::astype(&features(&pv.to_nhwc()?)?, s.dtype)?)
      })?;
      Ok(Some(f))
    }
  }
}

/// python `get_input_embeddings`'s merge: the language model's token
/// embeddings of `ids` `[1, T, hidden]`, the rows of image tokens
/// (`img_id`) replaced in order by the rows of `features`
/// (`masked_scatter`), and the rows of `zero_id` tokens (PaliGemma and
/// Gemma 3's pad token) other than image tokens set to zero.
pub(crate) fn merge_features(
  s: &Shared<'_>,
  ids: &[u32],
  img_id: u32,
  features: Option<&Array>,
  zero_id: Option<u32>,
) -> Result<Array> {
  let n = ids.len() as i32;
  let tokens: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
  let h = s.lm.embed_tokens(&Array::from_slice(&tokens, &[1, n])?)?;
  let rows = feature_rows(ids, img_id);
  let img: Vec<bool> = rows.iter().map(|&r| r >= 0).collect();
  let h = match zero_id {
    Some(z) if ids.iter().zip(&img).any(|(&t, &i)| t == z && !i) => {
      let pad: Vec<bool> = ids.iter().zip(&img).map(|(&t, &i)| t == z && !i).collect();
      let pad = Array::from_slice(&pad, &[1, n, 1])?;
      ops::where_(&pad, &Array::scalar_as(0.0, h.dtype())?, &h)?
    }
    _ => h,
  };
  let Some(f) = features else {
    return Ok(h);
  };
  if !img.iter().any(|&i| i) {
    return Ok(h);
  }
  let idx: Vec<i32> = rows.iter().map(|&r| r.max(0)).collect();
  let idx = Array::from_slice(&idx, &[n])?;
  let img = Array::from_slice(&img, &[1, n, 1])?;
  let gathered = ops::expand_dims(&ops::take_axis(f, &idx, 0)?, 0)?;
  Ok(ops::where_(&img, &ops::astype(&gathered, h.dtype())?, &h)?)
}

/// [`pixel_features`] merged into the prompt ([`merge_features`], no pad
/// rule) for a causal prefill; `None` without images.
pub(crate) fn clip_prompt(
  s: &Shared<'_>,
  input: &VlmInput,
  img_id: u32,
  check: impl FnOnce(usize, usize) -> Result<()>,
  features: impl FnOnce(&Array) -> Result<Array>,
) -> Result<Option<PromptEmbeddings>> {
  let Some(f) = pixel_features(s, input, img_id, check, features)? else {
    return Ok(None);
  };
  let e = merge_features(s, &input.input_ids, img_id, Some(&f), None)?;
  Ok(Some(PromptEmbeddings::causal(e)))
}

/// The [`pixel_features`] check for `per_image` tokens per image.
pub(crate) fn tokens_per_image(per_image: usize) -> impl FnOnce(usize, usize) -> Result<()> {
  move |n_images, n_img_tokens| {
    let n_feat = n_images * per_image;
    if n_feat != n_img_tokens {
      return Err(feature_mismatch(n_img_tokens, n_feat));
    }
    Ok(())
  }
}

/// Replace the prompt a language model reads (Qwen2-VL's slot).
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
