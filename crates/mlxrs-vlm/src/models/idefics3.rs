//! Idefics3 and SmolVLM (python `mlx_vlm.models.idefics3` /
//! `mlx_vlm.models.smolvlm`, the same model): a SigLIP-style vision tower
//! over every tile, a pixel-shuffle connector (`scale_factor^2` patches
//! folded into one token, then a linear projection), and a Llama language
//! model. The processor splits images into tiles plus a global image
//! ([`crate::processors::idefics3`]) and writes each image as
//! `<fake_token_around_image><row_r_col_c><image>*N ... \n` per tile row,
//! then `\n<fake_token_around_image><global-img><image>*N<fake_token_around_image>`
//! (python `Idefics3Processor` / `SmolVLMProcessor`).

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::PromptEmbeddings;
use mlxrs_nn::{Linear, Module, module};
use serde_json::Value;

use super::llava::LlavaTextArgs;
use crate::error::{Error, Result};
use crate::family::{LoadedFamily, Shared, VisionFamily};
use crate::image::RgbImage;
use crate::model::{LoadOptions, VlmInput};
use crate::processors::ClipImageProcessor;
use crate::processors::idefics3::Idefics3ImageProcessor;
use crate::vision::{SiglipVision, SiglipVisionArgs};

struct ProjMlp {
  proj: Linear,
}
module!(ProjMlp { proj });

/// python `Idefics3Connector`: pixel shuffle + `modality_projection`.
pub struct Connector {
  modality_projection: ProjMlp,
  scale: i32,
}
module!(Connector {
  modality_projection
});

impl Connector {
  /// python `pixel_shuffle` then the projection: `[n, seq, D]` to
  /// `[n, seq / s^2, text_hidden]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let sh = x.shape();
    let (b, seq, d) = (sh[0], sh[1], sh[2]);
    let s = self.scale;
    let side = (seq as f64).sqrt() as i32;
    if side * side != seq || side % s != 0 {
      return Err(Error::invalid(format!(
        "pixel shuffle needs a square patch grid divisible by {s}, got {seq} patches"
      )));
    }
    let x = ops::reshape(x, &[b, side, side / s, d * s])?;
    let x = ops::transpose_axes(&x, &[0, 2, 1, 3])?;
    let x = ops::reshape(&x, &[b, side / s, side / s, d * s * s])?;
    let x = ops::transpose_axes(&x, &[0, 2, 1, 3])?;
    let x = ops::reshape(&x, &[b, seq / (s * s), d * s * s])?;
    Ok(self.modality_projection.proj.forward(&x)?)
  }
}

/// The Idefics3 / SmolVLM half of a [`crate::VlmModel`].
pub(crate) struct Idefics3Family {
  vision: SiglipVision,
  connector: Connector,
  positions: Array,
  processor: Idefics3ImageProcessor,
  image_token_id: u32,
  /// Image tokens per frame (`(image_size / patch / scale)^2`).
  seq_len: usize,
  fake: String,
  global: String,
}

/// mlx-vlm's `VisionEmbeddings` position ids for a full (unpadded) tile:
/// fractional coordinates `i / n` bucketed against `arange(1/n, 1, 1/n)`,
/// computed with the same MLX float32 ops (for `n` without an exact
/// reciprocal some buckets repeat, e.g. `n = 6`: `0 1 2 3 4 4`).
fn bucketed_positions(n: i32) -> Result<Array> {
  let nf = n as f64;
  let boundaries = ops::arange(1.0 / nf, 1.0, 1.0 / nf, Dtype::Float32)?;
  let frac = ops::divide(
    &ops::arange(0.0, nf, 1.0, Dtype::Float32)?,
    &Array::scalar_as(nf, Dtype::Float32)?,
  )?;
  let hi = Array::scalar_as(1.0 - 1e-6, Dtype::Float32)?;
  let lo = Array::scalar_as(0.0, Dtype::Float32)?;
  let frac = ops::clip(&frac, Some(&lo), Some(&hi))?;
  let ge = ops::greater_equal(
    &ops::expand_dims(&frac, 1)?,
    &ops::expand_dims(&boundaries, 0)?,
  )?;
  let mut bucket = ops::sum_axis(&ops::astype(&ge, Dtype::Int32)?, 1, false)?;
  let b = bucket.to_vec::<i32>()?;
  let ids: Vec<i32> = b
    .iter()
    .flat_map(|&h| b.iter().map(move |&w| h * n + w))
    .collect();
  Ok(Array::from_slice(&ids, &[n * n])?)
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
  serde_json::from_value(v.clone())
    .map_err(|e| Error::invalid(format!("config.json `{what}`: {e}")))
}

/// The text config with mlx-vlm's Idefics3 / SmolVLM defaults
/// (`rope_theta` 1e6; heads from `head_dim`).
fn text_args(raw: &Value) -> Result<LlavaTextArgs> {
  let mut t = raw
    .get("text_config")
    .cloned()
    .ok_or_else(|| Error::invalid("config.json: idefics3 needs a `text_config`"))?;
  let Value::Object(m) = &mut t else {
    return Err(Error::invalid(
      "config.json: `text_config` is not an object",
    ));
  };
  m.entry("rope_theta")
    .or_insert(serde_json::json!(1_000_000.0));
  if !m.contains_key("num_attention_heads") {
    let hidden = m.get("hidden_size").and_then(Value::as_i64).unwrap_or(4096);
    let heads = match m.get("head_dim").and_then(Value::as_i64) {
      Some(hd) if hd > 0 => hidden / hd,
      _ => 32,
    };
    m.insert("num_attention_heads".into(), serde_json::json!(heads));
  }
  let a: LlavaTextArgs = parse(&t, "text_config")?;
  a.check_rope_scaling()?;
  if !matches!(a.model_type.as_str(), "llama" | "smolvlm" | "") {
    return Err(Error::invalid(format!(
      "config.json: idefics3 with a `{}` language model is not supported (llama only)",
      a.model_type
    )));
  }
  Ok(a)
}

/// The vision config with mlx-vlm's SmolVLM defaults for missing sizes.
fn vision_args(raw: &Value, smolvlm: bool) -> Result<SiglipVisionArgs> {
  let mut v = raw
    .get("vision_config")
    .cloned()
    .unwrap_or_else(|| Value::Object(Default::default()));
  let Value::Object(m) = &mut v else {
    return Err(Error::invalid(
      "config.json: `vision_config` is not an object",
    ));
  };
  if smolvlm {
    let hidden = m.get("hidden_size").and_then(Value::as_i64).unwrap_or(1152);
    m.entry("hidden_size").or_insert(serde_json::json!(hidden));
    let heads = if hidden % 64 == 0 { hidden / 64 } else { 16 };
    m.entry("num_attention_heads")
      .or_insert(serde_json::json!(heads));
    let layers = if hidden <= 768 { 12 } else { 27 };
    m.entry("num_hidden_layers")
      .or_insert(serde_json::json!(layers));
    let inter = match hidden {
      768 => 3072,
      1152 => 4304,
      h => h * 4,
    };
    m.entry("intermediate_size")
      .or_insert(serde_json::json!(inter));
    m.entry("image_size").or_insert(serde_json::json!(384));
  } else {
    for k in ["hidden_size", "num_attention_heads", "patch_size"] {
      if !m.contains_key(k) {
        return Err(Error::invalid(format!(
          "config.json: vision_config.{k} is missing"
        )));
      }
    }
    m.entry("num_hidden_layers")
      .or_insert(serde_json::json!(12));
    m.entry("intermediate_size")
      .or_insert(serde_json::json!(3072));
  }
  let a: SiglipVisionArgs = parse(&v, "vision_config")?;
  let pos = |x: i32| x > 0;
  if !(pos(a.hidden_size)
    && pos(a.num_attention_heads)
    && a.hidden_size % a.num_attention_heads == 0
    && pos(a.patch_size)
    && pos(a.image_size)
    && a.image_size % a.patch_size == 0)
  {
    return Err(Error::invalid(
      "config.json: inconsistent idefics3 vision sizes (heads, patch, image size)",
    ));
  }
  Ok(a)
}

/// python `Model.sanitize`: HF names (`model.vision_model.*`,
/// `model.text_model.*`, `model.connector.*`, `lm_head.*`) to mlx-vlm's,
/// PyTorch conv layout to MLX's; the language model's tensors go under
/// `language_model.model.*` (the shared Llama's layout).
fn sanitize(weights: HashMap<String, Array>, channels: i32) -> Result<HashMap<String, Array>> {
  let mut out = HashMap::with_capacity(weights.len());
  for (k, v) in weights {
    let k = match k.strip_prefix("model.") {
      Some(r) => r.to_string(),
      None if k.starts_with("lm_head.") => format!("language_model.{k}"),
      None => k,
    };
    let k = match k.strip_prefix("text_model.") {
      Some(r) => format!("language_model.{r}"),
      None => k,
    };
    let k = match k.strip_prefix("language_model.") {
      Some(r) if !r.starts_with("lm_head.") && !r.starts_with("model.") => {
        format!("language_model.model.{r}")
      }
      _ => k,
    };
    if k.contains("position_ids") || k.contains("rotary_emb.inv_freq") {
      continue;
    }
    if k.ends_with("patch_embedding.weight") {
      let s = v.shape();
      if s.len() == 4 && s[3] != channels && s[1] == channels {
        out.insert(k, ops::transpose_axes(&v, &[0, 2, 3, 1])?);
        continue;
      }
    }
    out.insert(k, v);
  }
  Ok(out)
}

/// Load an `idefics3` / `smolvlm` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &LoadOptions,
) -> Result<LoadedFamily> {
  use crate::family::{build_text, load_vlm_weights, loaded_model, open_vlm_weights, token_name};
  let raw = config.raw();
  let smolvlm = config.model_type()? == "smolvlm";
  let va = vision_args(raw, smolvlm)?;
  let mut ta = text_args(raw)?;
  let scale = raw.get("scale_factor").and_then(Value::as_i64).unwrap_or(2) as i32;
  let side = va.image_size / va.patch_size;
  if scale <= 0 || side % scale != 0 {
    return Err(Error::config(
      path.join("config.json"),
      "scale_factor",
      format!("{scale} does not divide the {side}x{side} patch grid"),
    ));
  }
  let image_token_id = raw
    .get("image_token_id")
    .or_else(|| raw.get("image_token_index"))
    .and_then(Value::as_u64)
    .unwrap_or(49153) as u32;
  let w = open_vlm_weights(path, &config, opts, |w| sanitize(w, va.num_channels))?;
  // mlx-vlm's language model always has an lm_head; HF checkpoints with
  // tied embeddings have none.
  ta.tie_word_embeddings = !w.text.has("lm_head.weight");
  let mut text = build_text(&ta.lm_config())?;
  let mut vision = SiglipVision::new(&va)?;
  let mut connector = Connector {
    modality_projection: ProjMlp {
      proj: Linear::new(va.hidden_size * scale * scale, ta.hidden_size, false),
    },
    scale,
  };
  load_vlm_weights(path, w, text.as_mut(), |w| {
    Module::load(&mut vision, w, "");
    Module::load(&mut connector, w, "connector");
    let mut params = Vec::new();
    Module::visit(&vision, "", &mut |_, a| params.push(a.clone()));
    Module::visit(&connector, "", &mut |_, a| params.push(a.clone()));
    params
  })?;
  let tokenizer = mlxrs_lm::Tokenizer::from_dir(path)?;
  let image_token = token_name(&tokenizer, path, "image_token_id", image_token_id)?;
  let processor = Idefics3ImageProcessor::from_dir(path)?;
  if processor.tile != va.image_size as u32 {
    return Err(Error::config(
      path.join("preprocessor_config.json"),
      "max_image_size",
      format!(
        "tiles of {} do not match the vision tower's image_size {}",
        processor.tile, va.image_size
      ),
    ));
  }
  let seq_len = ((side / scale) * (side / scale)) as usize;
  let proc = path.join("processor_config.json");
  if let Ok(text) = std::fs::read_to_string(&proc) {
    let v: Value =
      serde_json::from_str(&text).map_err(|e| Error::config(&proc, "<json>", e.to_string()))?;
    if let Some(n) = v.get("image_seq_len").and_then(Value::as_u64) {
      if n as usize != seq_len {
        return Err(Error::config(
          &proc,
          "image_seq_len",
          format!("{n} does not match the model's {seq_len} tokens per tile"),
        ));
      }
    }
  }
  let positions = bucketed_positions(side)?;
  Ok(LoadedFamily {
    lm: loaded_model(path, config, tokenizer, text, opts),
    family: Box::new(Idefics3Family {
      vision,
      connector,
      positions,
      processor,
      image_token_id,
      seq_len,
      fake: "<fake_token_around_image>".into(),
      global: "<global-img>".into(),
    }),
    image_token,
    qwen_processor: None,
  })
}

impl Idefics3Family {
  /// python `get_image_prompt_string` for one image of (rows, cols).
  fn image_prompt(&self, image_token: &str, rows: u32, cols: u32) -> String {
    let run = image_token.repeat(self.seq_len);
    let global = format!("{}{}{run}{}", self.fake, self.global, self.fake);
    if rows == 0 && cols == 0 {
      return global;
    }
    let mut s = String::new();
    for r in 1..=rows {
      for c in 1..=cols {
        s.push_str(&format!("{}<row_{r}_col_{c}>{run}", self.fake));
      }
      s.push('\n');
    }
    s.push('\n');
    s + &global
  }
}

impl VisionFamily for Idefics3Family {
  /// python `Idefics3Processor.__call__`: tiles + global image per image,
  /// each `<image>` replaced by its tile prompt.
  fn process(&self, s: &Shared<'_>, text: &str, images: &[RgbImage]) -> Result<VlmInput> {
    let tok = s.image_token;
    let n_ph = text.matches(tok).count();
    if n_ph != images.len() {
      return Err(crate::family::placeholder_mismatch(n_ph, tok, images.len()));
    }
    if images.is_empty() {
      return Ok(VlmInput::text(s.tokenizer.encode(text, false)?));
    }
    let (pv, grids) = self.processor.preprocess(images)?;
    let mut parts = text.split(tok);
    let mut full = parts.next().unwrap_or_default().to_string();
    for (&(r, c), rest) in grids.iter().zip(parts) {
      full.push_str(&self.image_prompt(tok, r, c));
      full.push_str(rest);
    }
    let mut input = VlmInput::text(s.tokenizer.encode(&full, false)?);
    input.clip_pixels = Some(pv);
    Ok(input)
  }

  /// Vision features of every frame, pixel-shuffled and projected, in
  /// place of the image tokens (python `get_input_embeddings`).
  fn prompt_embeddings(
    &self,
    s: &Shared<'_>,
    input: &VlmInput,
  ) -> Result<Option<PromptEmbeddings>> {
    crate::family::clip_prompt(
      s,
      input,
      self.image_token_id,
      crate::family::tokens_per_image(self.seq_len),
      |pv| {
        let x = ops::astype(pv, self.vision.dtype())?;
        let f = self
          .vision
          .forward_with_positions(&x, Some(&self.positions))?;
        let f = self.connector.forward(&f)?;
        let d = f.dim(-1).unwrap_or(0);
        Ok(ops::reshape(&f, &[-1, d])?)
      },
    )
  }

  fn clip_processor(&self) -> Option<&ClipImageProcessor> {
    Some(&self.processor.clip)
  }

  fn images_first(&self) -> bool {
    true
  }
}
