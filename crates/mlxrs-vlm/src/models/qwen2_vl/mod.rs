//! Qwen2-VL and Qwen2.5-VL: mlx-vlm's `models/qwen2_vl/` and
//! `models/qwen2_5_vl/` (`vision.py`, `language.py`, `qwen2_vl.py`).
//!
//! - Vision tower: a Conv3d patch embedding (`[C, T, P, P]` patches), 2-D
//!   rotary embeddings over (row, column) patch positions, pre-norm ViT
//!   blocks attending within each image (Qwen2.5-VL: within windows of
//!   `window_size` pixels, except the `fullatt_block_indexes` blocks), and a
//!   merger that concatenates each `merge_size x merge_size` group of patches
//!   and projects it to the language model's width.
//! - Language model: the Qwen2 decoder with multimodal RoPE (M-RoPE): each
//!   position has a (temporal, height, width) triple, and the rotary
//!   frequencies are split in `mrope_section` chunks, each rotated by one of
//!   the three coordinates. Text tokens use the same value for all three;
//!   image tokens use their grid coordinates (mlx-vlm's `get_rope_index`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::LanguageModel;
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, LayerNorm, Linear, Module, Param, RmsNorm, Weights,
  attention_with_cache_update, join, module, swiglu,
};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

mod config;
mod text;
mod vision;

pub use config::*;
pub use text::*;
pub use vision::*;

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

fn scalar(v: f64, dtype: Dtype) -> Result<Array> {
  Ok(Array::scalar_as(v, dtype)?)
}

/// `rotate_half`: `concat([-x2, x1], -1)` for halves `x1`, `x2` of the last axis.
fn rotate_half(x: &Array) -> Result<Array> {
  let s = x.shape();
  let nd = s.len();
  let d = s[nd - 1];
  let mut start = vec![0; nd];
  let mut stop = s.clone();
  let strides = vec![1; nd];
  stop[nd - 1] = d / 2;
  let x1 = ops::slice(x, &start, &stop, &strides)?;
  start[nd - 1] = d / 2;
  stop[nd - 1] = d;
  let x2 = ops::slice(x, &start, &stop, &strides)?;
  Ok(ops::concatenate_axis(&[ops::negative(&x2)?, x1], -1)?)
}

/// MLX's exact GELU as `nn.GELU()` computes it: `x * (1 + erf(x / sqrt(2))) / 2`.
fn gelu_exact(x: &Array) -> Result<Array> {
  let dt = x.dtype();
  let e = ops::erf(&ops::divide(x, &scalar(std::f64::consts::SQRT_2, dt)?)?)?;
  let y = ops::multiply(x, &ops::add(&scalar(1.0, dt)?, &e)?)?;
  Ok(ops::divide(&y, &scalar(2.0, dt)?)?)
}

/// `nn.GELU(approx="fast")`: `x * sigmoid(1.702 x)`.
fn gelu_fast(x: &Array) -> Result<Array> {
  Ok(mlxrs_nn::gelu_fast_approx(x)?)
}

/// `1 / base ** (arange(0, dim, 2) / dim)` computed by MLX (float32), as
/// mlx-vlm's `compute_inv_freq` / `VisionRotaryEmbedding`.
fn inv_freq(dim: i32, base: f32) -> Result<Array> {
  let idx = ops::arange(0.0, dim as f64, 2.0, Dtype::Float32)?;
  let e = ops::divide(&idx, &scalar(dim as f64, Dtype::Float32)?)?;
  let p = ops::power(&scalar(base as f64, Dtype::Float32)?, &e)?;
  Ok(ops::divide(&scalar(1.0, Dtype::Float32)?, &p)?)
}

enum Norm {
  Layer(LayerNorm),
  Rms(RmsNorm),
}

impl Norm {
  fn new(family: Family, dims: i32) -> Norm {
    match family {
      Family::Qwen2Vl => Norm::Layer(LayerNorm::new(dims, 1e-6, true, true)),
      Family::Qwen25Vl => Norm::Rms(RmsNorm::new(dims, 1e-6)),
    }
  }
  fn forward(&self, x: &Array) -> Result<Array> {
    Ok(match self {
      Norm::Layer(n) => n.forward(x)?,
      Norm::Rms(n) => n.forward(x)?,
    })
  }
}

impl Module for Norm {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    match self {
      Norm::Layer(n) => n.load(w, prefix),
      Norm::Rms(n) => n.load(w, prefix),
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Norm::Layer(n) => n.visit(prefix, f),
      Norm::Rms(n) => n.visit(prefix, f),
    }
  }
}

// ---------------------------------------------------------------------------
// Build and load
// ---------------------------------------------------------------------------

/// A built (unloaded) Qwen2-VL: vision tower + language model.
pub struct Qwen2Vl {
  /// The vision tower.
  pub vision: VisionTower,
  /// The language model.
  pub text: Qwen2VlText,
  /// The parsed config.
  pub config: Qwen2VlConfig,
}

impl Qwen2Vl {
  /// Build from config.json (`raw`) and its merged text config.
  pub fn new(family: Family, raw: &Value, text: &Value, slot: PromptSlot) -> Result<Qwen2Vl> {
    let config = Qwen2VlConfig::parse(family, raw, text)?;
    Ok(Qwen2Vl {
      vision: VisionTower::new(&config)?,
      text: Qwen2VlText::new(&config, slot)?,
      config,
    })
  }

  /// mlx-vlm's `Model.sanitize` + `VisionModel.sanitize`: HF key layouts
  /// (`visual.*`, `model.*`, `lm_head`, transformers 5's
  /// `model.visual.*` / `model.language_model.*`) to mlx-vlm's
  /// (`vision_tower.*`, `language_model.model.*`, `language_model.lm_head`),
  /// PyTorch Conv3d weights `[O, C, T, P, P]` to MLX's `[O, T, P, P, C]`,
  /// unused buffers dropped, and a tied head removed.
  pub fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let mut out = HashMap::with_capacity(weights.len());
    let c = self.config.vision.in_channels;
    for (k, v) in weights {
      if k.contains("position_ids") || k.contains("rotary_emb.inv_freq") {
        continue;
      }
      let key = if k.starts_with("vision_tower.") || k.starts_with("language_model.") {
        k
      } else if let Some(r) = k
        .strip_prefix("model.visual.")
        .or_else(|| k.strip_prefix("visual."))
      {
        format!("vision_tower.{r}")
      } else if let Some(r) = k.strip_prefix("model.language_model.") {
        format!("language_model.model.{r}")
      } else if let Some(r) = k.strip_prefix("model.") {
        format!("language_model.model.{r}")
      } else if let Some(r) = k.strip_prefix("lm_head.") {
        format!("language_model.lm_head.{r}")
      } else {
        k
      };
      let v = if key == "vision_tower.patch_embed.proj.weight" {
        let s = v.shape();
        if s.len() == 5 && s[4] != c && s[1] == c {
          ops::transpose_axes(&v, &[0, 2, 3, 4, 1])?
        } else {
          v
        }
      } else {
        v
      };
      out.insert(key, v);
    }
    if self.text.tie {
      for s in ["weight", "scales", "biases"] {
        out.remove(&format!("language_model.lm_head.{s}"));
      }
    }
    Ok(out)
  }
}

// ---------------------------------------------------------------------------
// VlmModel glue (processor + feature merge)
// ---------------------------------------------------------------------------

/// The Qwen2-VL / Qwen2.5-VL half of a [`crate::VlmModel`].
pub(crate) struct Qwen2VlFamily {
  vision: VisionTower,
  config: Qwen2VlConfig,
  processor: crate::processors::Qwen2VlImageProcessor,
  slot: PromptSlot,
}

/// Load a `qwen2_vl` / `qwen2_5_vl` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &crate::model::LoadOptions,
) -> Result<crate::family::LoadedFamily> {
  use crate::family::{finish_weights, loaded_model, open_weights, token_name};
  let family = match config.model_type()? {
    "qwen2_5_vl" => Family::Qwen25Vl,
    _ => Family::Qwen2Vl,
  };
  let slot: PromptSlot = Arc::new(Mutex::new(None));
  let mut m = Qwen2Vl::new(family, config.raw(), &config.text_config(), slot.clone())?;
  let mut w = open_weights(path, &config, opts, |w| m.sanitize(w))?;
  LanguageModel::load(&mut m.text, &mut w);
  Module::load(&mut m.vision, &mut w, "vision_tower");
  let mut params = Vec::new();
  LanguageModel::visit(&m.text, &mut |_, a| params.push(a.clone()));
  Module::visit(&m.vision, "", &mut |_, a| params.push(a.clone()));
  finish_weights(path, w, params)?;
  mlxrs_lm::fuse_for_inference(&mut m.text)?;
  let tokenizer = mlxrs_lm::Tokenizer::from_dir(path)?;
  let image_token = token_name(&tokenizer, path, "image_token_id", m.config.image_token_id)?;
  let processor = crate::processors::Qwen2VlImageProcessor::from_dir(path)?;
  let v = &m.config.vision;
  if processor.patch_size as i32 != v.patch_size
    || processor.merge_size as i32 != v.spatial_merge_size
    || processor.temporal_patch_size as i32 != v.temporal_patch_size
  {
    return Err(Error::config(
      path.join("preprocessor_config.json"),
      "patch_size",
      format!(
        "patch {} / merge {} / temporal {} do not match config.json's vision_config ({} / {} / {})",
        processor.patch_size,
        processor.merge_size,
        processor.temporal_patch_size,
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
  Ok(crate::family::LoadedFamily {
    lm: loaded_model(path, config, tokenizer, Box::new(text), opts),
    family: Box::new(Qwen2VlFamily {
      vision,
      config: qcfg,
      processor: processor.clone(),
      slot,
    }),
    image_token,
    qwen_processor: Some(processor),
  })
}

impl Qwen2VlFamily {
  fn no_video(&self, s: &crate::family::Shared<'_>, ids: &[u32]) -> Result<()> {
    if ids.contains(&self.config.video_token_id) {
      let tok = s
        .tokenizer
        .id_to_token(self.config.video_token_id)
        .unwrap_or_default();
      return Err(Error::invalid(format!(
        "the prompt holds a video placeholder ({tok}); videos are not supported yet"
      )));
    }
    Ok(())
  }
}

impl crate::family::VisionFamily for Qwen2VlFamily {
  /// python `Qwen2VLProcessor.__call__`: each `<|image_pad|>` becomes
  /// `t * h * w / merge_size^2` of them.
  fn process_ids(
    &self,
    s: &crate::family::Shared<'_>,
    ids: Vec<u32>,
    images: &[crate::image::RgbImage],
  ) -> Result<crate::model::VlmInput> {
    let img_id = self.config.image_token_id;
    self.no_video(s, &ids)?;
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
    let mut pv = self.processor.preprocess(images)?;
    if pv.cols as i32 != self.vision.patch_dim() {
      return Err(Error::invalid(format!(
        "the image processor makes patches of {} values but the vision tower expects {}",
        pv.cols,
        self.vision.patch_dim()
      )));
    }
    let m2 = (self.processor.merge_size * self.processor.merge_size) as usize;
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
    let mut input = crate::model::VlmInput::text(out);
    input.pixel_values = Some(pv);
    Ok(input)
  }

  /// Vision features in place of the image tokens, M-RoPE positions: put
  /// in the slot the language model reads (its positions are not the
  /// token index, so it keeps the prompt itself), no input embeddings.
  fn prompt_embeddings(
    &self,
    s: &crate::family::Shared<'_>,
    input: &crate::model::VlmInput,
  ) -> Result<Option<mlxrs_lm::PromptEmbeddings>> {
    let config = &self.config;
    let ids = &input.input_ids;
    self.no_video(s, ids)?;
    let img_id = config.image_token_id;
    let n_img_tokens = ids.iter().filter(|&&t| t == img_id).count();
    let state = match &input.pixel_values {
      None => {
        if n_img_tokens > 0 {
          return Err(crate::family::no_pixels(n_img_tokens, s.image_token));
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
          return Err(crate::family::feature_mismatch(n_img_tokens, n_feat));
        }
        let features = s.features(input, || {
          let f = self.vision.forward(&pv.to_array()?, &pv.grid_thw)?;
          Ok(ops::astype(&f, s.dtype)?)
        })?;
        let (positions, rope_delta) = rope_index(ids, &pv.grid_thw, config)?;
        Some(MultimodalPrompt {
          ids: ids.clone(),
          features: Some(features),
          feature_row: crate::family::feature_rows(ids, img_id),
          positions,
          rope_delta,
        })
      }
    };
    crate::family::set_slot(&self.slot, state)?;
    Ok(None)
  }

  fn clear_prompt(&self) {
    crate::family::clear_slot(&self.slot);
  }

  fn images_first(&self) -> bool {
    self.config.family == Family::Qwen25Vl
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn cfg() -> Qwen2VlConfig {
    let raw = serde_json::json!({
      "model_type": "qwen2_vl", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "vocab_size": 20,
      "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
      "image_token_id": 9, "vision_start_token_id": 8, "video_token_id": 7,
      "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 64, "num_heads": 2}
    });
    Qwen2VlConfig::parse(Family::Qwen2Vl, &raw, &raw).unwrap()
  }

  #[test]
  fn rope_index_text_image_text() {
    let c = cfg();
    // 2 text, vision_start, 4 image tokens (grid 1x4x4 -> 2x2 merged), 2 text.
    let ids = [1, 2, 8, 9, 9, 9, 9, 3, 4];
    let (p, delta) = rope_index(&ids, &[[1, 4, 4]], &c).unwrap();
    assert_eq!(p[0], vec![0, 1, 2, 3, 3, 3, 3, 5, 6]);
    assert_eq!(p[1], vec![0, 1, 2, 3, 3, 4, 4, 5, 6]);
    assert_eq!(p[2], vec![0, 1, 2, 3, 4, 3, 4, 5, 6]);
    assert_eq!(delta, 7 - 9);
    // No images: plain positions.
    let (p, d) = rope_index(&[1, 2, 3], &[], &c).unwrap();
    assert_eq!((p[1].clone(), d), (vec![0, 1, 2], 0));
  }

  #[test]
  fn window_index_partial_windows() {
    // llm grid 3 x 5 (patch grid 6 x 10), windows of 2 x 2 merged tokens.
    let (idx, cu) = window_index(&[[1, 6, 10]], 56, 2, 14);
    assert_eq!(idx.len(), 15);
    assert_eq!(&idx[..4], &[0, 1, 5, 6]);
    assert_eq!(cu, vec![0, 16, 32, 40, 48, 56, 60]);
    let mut sorted = idx.clone();
    sorted.sort();
    assert_eq!(sorted, (0..15).collect::<Vec<_>>());
  }

  #[test]
  fn transformers5_rope_parameters() {
    let raw = serde_json::json!({"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 20,
      "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0, "mrope_section": [4, 2, 2]},
      "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 64, "num_heads": 2}});
    let c = Qwen2VlConfig::parse(Family::Qwen2Vl, &raw, &raw).unwrap();
    assert_eq!((c.mrope_section, c.text.rope_theta), ([4, 2, 2], 5000.0));
  }

  #[test]
  fn bad_configs_are_errors() {
    let raw = serde_json::json!({"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 5, "rms_norm_eps": 1e-6, "vocab_size": 20});
    let e = Qwen2VlConfig::parse(Family::Qwen2Vl, &raw, &raw)
      .unwrap_err()
      .to_string();
    assert!(e.contains("inconsistent"), "{e}");
    let raw = serde_json::json!({"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 20,
      "rope_scaling": {"type": "yarn"}});
    let e = Qwen2VlConfig::parse(Family::Qwen2Vl, &raw, &raw)
      .unwrap_err()
      .to_string();
    assert!(e.contains("mrope"), "{e}");
  }
}
