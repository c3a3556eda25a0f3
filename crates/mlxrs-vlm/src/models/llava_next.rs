//! LLaVA-NeXT (LLaVA-1.6): the LLaVA CLIP tower, projector and Llama
//! language model ([`super::llava`]) with any-resolution tiling. Each image
//! becomes a base tile plus the tiles of its best `image_grid_pinpoints`
//! resolution ([`crate::processors::LlavaNextImageProcessor`]); the tiles'
//! features are laid back out as one grid, the padding rows / columns are
//! cut off (`unpad_image`), an `image_newline` vector ends every row, and
//! the base tile's features go first — transformers'
//! `LlavaNextModel.pack_image_features` (python
//! `LlavaNextForConditionalGeneration`).
//!
//! mlx-vlm 0.7.10's `llava_next.Model` does not pack features this way
//! (no unpadding or spatial layout, only the first image used); mlxrs
//! follows transformers, which is what the checkpoints were trained with.

use mlxrs_core::{Array, ops};
use mlxrs_lm::PromptEmbeddings;
use mlxrs_nn::{Module, Param};

use super::llava::{Llava, LlavaConfig, Projector, clip_features, expand_image_tokens};
use crate::error::{Error, Result};
use crate::family::{LoadedFamily, Shared, VisionFamily};
use crate::image::RgbImage;
use crate::model::{LoadOptions, VlmInput};
use crate::processors::llava_next::{select_best_resolution, unpad_bounds};
use crate::processors::{ClipImageProcessor, LlavaNextImageProcessor};
use crate::vision::ClipVision;

/// The LLaVA-NeXT half of a [`crate::VlmModel`].
pub(crate) struct LlavaNextFamily {
  vision: ClipVision,
  projector: Projector,
  image_newline: Array,
  config: LlavaConfig,
  processor: LlavaNextImageProcessor,
}

/// Load a `llava_next` checkpoint (python `mlx_vlm.load`; the model is
/// transformers' `LlavaNextForConditionalGeneration`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &LoadOptions,
) -> Result<LoadedFamily> {
  use crate::family::{load_vlm_weights, loaded_model, open_vlm_weights, token_name};
  let mut m = Llava::new(config.raw())?;
  if !m.config.drop_cls {
    return Err(Error::config(
      path.join("config.json"),
      "vision_feature_select_strategy",
      "llava_next supports the `default` strategy only (the tiles' features must form a grid)",
    ));
  }
  let mut newline = Param::new(&[m.config.text.hidden_size]);
  let w = open_vlm_weights(path, &config, opts, |w| {
    let w = w
      .into_iter()
      .map(|(k, v)| match k.as_str() {
        "model.image_newline" => ("image_newline".to_string(), v),
        _ => (k, v),
      })
      .collect();
    m.sanitize(w)
  })?;
  load_vlm_weights(path, w, m.text.as_mut(), |w| {
    Module::load(&mut m.vision, w, "vision_tower");
    Module::load(&mut m.projector, w, "multi_modal_projector");
    Module::load(&mut newline, w, "image_newline");
    let mut params = Vec::new();
    Module::visit(&m.vision, "", &mut |_, a| params.push(a.clone()));
    Module::visit(&m.projector, "", &mut |_, a| params.push(a.clone()));
    params.push(newline.value.clone());
    params
  })?;
  let tokenizer = mlxrs_lm::Tokenizer::from_dir(path)?;
  let image_token = token_name(
    &tokenizer,
    path,
    "image_token_index",
    m.config.image_token_index,
  )?;
  let processor =
    LlavaNextImageProcessor::from_dir(path, config.raw().get("image_grid_pinpoints"))?;
  let size = m.config.vision.image_size as u32;
  if processor.tile_size() != size
    || (processor.clip.do_center_crop && processor.clip.crop != (size, size))
  {
    return Err(Error::config(
      path.join("preprocessor_config.json"),
      "crop_size",
      format!(
        "tiles of {:?} do not match the vision tower's image_size {size}",
        processor.clip.crop
      ),
    ));
  }
  let Llava {
    vision,
    projector,
    text,
    config: lcfg,
  } = m;
  Ok(LoadedFamily {
    lm: loaded_model(path, config, tokenizer, text, opts),
    family: Box::new(LlavaNextFamily {
      vision,
      projector,
      image_newline: newline.value,
      config: lcfg,
      processor,
    }),
    image_token,
    qwen_processor: None,
  })
}

impl LlavaNextFamily {
  /// Features per side of one tile (`image_size / patch_size`).
  fn side(&self) -> u32 {
    (self.config.vision.image_size / self.config.vision.patch_size) as u32
  }

  /// The tile grid (rows, cols) of an image of (height, width) and its
  /// kept feature rectangle after unpadding.
  fn layout(&self, height: u32, width: u32) -> ((u32, u32), (u32, u32, u32, u32)) {
    let (bh, bw) = select_best_resolution(height, width, &self.processor.grid_pinpoints);
    let t = self.processor.tile_size();
    let (gr, gc) = (bh / t, bw / t);
    let s = self.side();
    ((gr, gc), unpad_bounds(height, width, gr * s, gc * s))
  }

  /// Image tokens of an image of (height, width): base tile + unpadded
  /// grid with one newline per row (python `LlavaNextProcessor.
  /// _get_number_of_features` with one additional token, minus the class
  /// token of the `default` strategy).
  pub(crate) fn tokens_for(&self, height: u32, width: u32) -> usize {
    let s = self.side() as usize;
    let (_, (r0, r1, c0, c1)) = self.layout(height, width);
    let (rows, cols) = ((r1 - r0) as usize, (c1 - c0) as usize);
    s * s + rows * (cols + 1)
  }

  /// python `pack_image_features` for one image: `feats` `[tiles, s*s, D]`
  /// (base tile first) to `[tokens, D]`.
  fn pack(&self, feats: &Array, height: u32, width: u32) -> Result<Array> {
    let shape = feats.shape();
    let (n, d) = (shape[0], shape[2]);
    let s = self.side() as i32;
    let base = ops::reshape(
      &ops::slice(feats, &[0, 0, 0], &[1, shape[1], d], &[1, 1, 1])?,
      &[-1, d],
    )?;
    if n == 1 {
      let nl = ops::reshape(&ops::astype(&self.image_newline, base.dtype())?, &[1, d])?;
      return Ok(ops::concatenate_axis(&[base, nl], 0)?);
    }
    let ((gr, gc), (r0, r1, c0, c1)) = self.layout(height, width);
    let (gr, gc) = (gr as i32, gc as i32);
    if n - 1 != gr * gc {
      return Err(Error::invalid(format!(
        "an image of {width}x{height} has {} tiles, expected {} (process it with VlmModel::process)",
        n - 1,
        gr * gc
      )));
    }
    let grid = ops::slice(feats, &[1, 0, 0], &shape, &[1, 1, 1])?;
    let grid = ops::reshape(&grid, &[gr, gc, s, s, d])?;
    let grid = ops::transpose_axes(&grid, &[0, 2, 1, 3, 4])?;
    let grid = ops::reshape(&grid, &[gr * s, gc * s, d])?;
    let grid = ops::slice(
      &grid,
      &[r0 as i32, c0 as i32, 0],
      &[r1 as i32, c1 as i32, d],
      &[1, 1, 1],
    )?;
    let rows = (r1 - r0) as i32;
    let nl = ops::astype(&self.image_newline, grid.dtype())?;
    let nl = ops::broadcast_to(&ops::reshape(&nl, &[1, 1, d])?, &[rows, 1, d])?;
    let grid = ops::concatenate_axis(&[grid, nl], 1)?;
    let grid = ops::reshape(&grid, &[-1, d])?;
    Ok(ops::concatenate_axis(&[base, grid], 0)?)
  }
}

impl VisionFamily for LlavaNextFamily {
  /// python `LlavaNextProcessor.__call__`: any-resolution tiles, each
  /// `<image>` expanded to its image's token count.
  fn process_ids(&self, s: &Shared<'_>, ids: Vec<u32>, images: &[RgbImage]) -> Result<VlmInput> {
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
      return Ok(VlmInput::text(ids));
    }
    let (pv, sizes) = self.processor.preprocess(images)?;
    let counts: Vec<usize> = sizes.iter().map(|&[h, w]| self.tokens_for(h, w)).collect();
    let mut input = VlmInput::text(expand_image_tokens(ids, img_id, &counts));
    input.clip_pixels = Some(pv);
    input.image_sizes = sizes;
    Ok(input)
  }

  /// CLIP features of every tile, projected, packed per image, in place of
  /// the image tokens' embeddings.
  fn prompt_embeddings(
    &self,
    s: &Shared<'_>,
    input: &VlmInput,
  ) -> Result<Option<PromptEmbeddings>> {
    let ids = &input.input_ids;
    let img_id = self.config.image_token_index;
    let n_img_tokens = ids.iter().filter(|&&t| t == img_id).count();
    match &input.clip_pixels {
      None => {
        if n_img_tokens > 0 {
          return Err(crate::family::no_pixels(n_img_tokens, s.image_token));
        }
        Ok(None)
      }
      Some(pv) => {
        if input.image_sizes.is_empty() {
          return Err(Error::invalid(
            "LLaVA-NeXT pixel values need image_sizes (process the prompt with VlmModel::process)",
          ));
        }
        let tiles: Vec<usize> = input
          .image_sizes
          .iter()
          .map(|&[h, w]| self.processor.num_tiles(h, w))
          .collect();
        let n_tiles: usize = tiles.iter().sum();
        if n_tiles != pv.n {
          return Err(Error::invalid(format!(
            "the pixel values hold {} tiles but image_sizes {:?} make {n_tiles}",
            pv.n, input.image_sizes
          )));
        }
        let n_feat: usize = input
          .image_sizes
          .iter()
          .map(|&[h, w]| self.tokens_for(h, w))
          .sum();
        if n_feat != n_img_tokens {
          return Err(crate::family::feature_mismatch(n_img_tokens, n_feat));
        }
        let features = s.features(input, || {
          let f = clip_features(&self.vision, &self.projector, &self.config, &pv.to_nhwc()?)?;
          let fs = f.shape();
          let mut per_image = Vec::with_capacity(tiles.len());
          let mut start = 0;
          for (&k, &[h, w]) in tiles.iter().zip(&input.image_sizes) {
            let end = start + k as i32;
            let part = ops::slice(&f, &[start, 0, 0], &[end, fs[1], fs[2]], &[1, 1, 1])?;
            per_image.push(self.pack(&part, h, w)?);
            start = end;
          }
          Ok(ops::astype(
            &ops::concatenate_axis(&per_image, 0)?,
            s.dtype,
          )?)
        })?;
        let e = crate::family::merge_features(s, ids, img_id, Some(&features), None)?;
        Ok(Some(PromptEmbeddings::causal(e)))
      }
    }
  }

  fn clip_processor(&self) -> Option<&ClipImageProcessor> {
    Some(&self.processor.clip)
  }
}
