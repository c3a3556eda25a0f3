//! LLaVA-NeXT's any-resolution image processor: transformers'
//! `LlavaNextImageProcessor` (PIL backend, `image_processing_pil_llava_next.py`).
//!
//! Per image: pick the best of `image_grid_pinpoints` for its size
//! (`select_best_resolution`), resize into it keeping the aspect ratio
//! (`get_patch_output_size`, Pillow-exact), pad with black to the full
//! resolution (centered), cut it into `crop_size` tiles, and put the whole
//! image resized to the tile size first (the "base" tile); every tile then
//! goes through the CLIP steps (resize by shortest edge, center crop,
//! rescale, normalize).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::image::{RgbImage, resize};
use crate::processors::{ClipImageProcessor, ClipPixels};

/// transformers' default `image_grid_pinpoints` (height, width).
pub const DEFAULT_PINPOINTS: [(u32, u32); 5] =
  [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];

/// `LlavaNextImageProcessor` settings (`preprocessor_config.json`).
#[derive(Debug, Clone)]
pub struct LlavaNextImageProcessor {
  /// The per-tile CLIP steps (`size`, `crop_size`, rescale, normalize,
  /// `resample`).
  pub clip: ClipImageProcessor,
  /// `image_grid_pinpoints` as (height, width).
  pub grid_pinpoints: Vec<(u32, u32)>,
}

/// python `select_best_resolution(original_size, possible_resolutions)`:
/// the resolution that keeps the most of the image (after an
/// aspect-preserving downscale), then wastes the least. Sizes are
/// (height, width).
pub fn select_best_resolution(height: u32, width: u32, pinpoints: &[(u32, u32)]) -> (u32, u32) {
  let (oh, ow) = (height as f64, width as f64);
  let mut best = pinpoints.first().copied().unwrap_or((height, width));
  let mut max_effective = 0i64;
  let mut min_wasted = i64::MAX;
  for &(h, w) in pinpoints {
    let scale = (w as f64 / ow).min(h as f64 / oh);
    let (dw, dh) = ((ow * scale) as i64, (oh * scale) as i64);
    let effective = (dw * dh).min(width as i64 * height as i64);
    let wasted = w as i64 * h as i64 - effective;
    if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
      max_effective = effective;
      min_wasted = wasted;
      best = (h, w);
    }
  }
  best
}

/// python `get_patch_output_size`: the aspect-preserving size (height,
/// width) of an image resized into `target` (height, width).
pub fn patch_output_size(height: u32, width: u32, target: (u32, u32)) -> (u32, u32) {
  let (th, tw) = target;
  let scale_w = tw as f64 / width as f64;
  let scale_h = th as f64 / height as f64;
  if scale_w < scale_h {
    let nh = ((height as f64 * scale_w).ceil() as u32).min(th);
    (nh, tw)
  } else {
    let nw = ((width as f64 * scale_h).ceil() as u32).min(tw);
    (th, nw)
  }
}

/// python `round(x, 7)` followed by `int()` (truncation), as transformers'
/// `unpad_image` computes the unpadded size.
fn int_round7(x: f64) -> i64 {
  let r = (x * 1e7).round_ties_even() / 1e7;
  r as i64
}

/// python `unpad_image` / `LlavaNextProcessor._get_unpadded_features` on a
/// feature grid of `rows x cols` for an image of (height, width): the kept
/// `(row_start, row_end, col_start, col_end)`.
pub fn unpad_bounds(height: u32, width: u32, rows: u32, cols: u32) -> (u32, u32, u32, u32) {
  let original_aspect = width as f64 / height as f64;
  let current_aspect = cols as f64 / rows as f64;
  if original_aspect > current_aspect {
    let scale = cols as f64 / width as f64;
    let new_h = int_round7(height as f64 * scale).max(0) as u32;
    let pad = rows.saturating_sub(new_h) / 2;
    (pad, rows - pad, 0, cols)
  } else {
    let scale = rows as f64 / height as f64;
    let new_w = int_round7(width as f64 * scale).max(0) as u32;
    let pad = cols.saturating_sub(new_w) / 2;
    (0, rows, pad, cols - pad)
  }
}

impl LlavaNextImageProcessor {
  /// Read `preprocessor_config.json` from a checkpoint folder (defaults
  /// where absent); `config_pinpoints` (config.json's
  /// `image_grid_pinpoints`) is used when the preprocessor has none.
  pub fn from_dir(dir: impl AsRef<Path>, config_pinpoints: Option<&Value>) -> Result<Self> {
    let path = dir.as_ref().join("preprocessor_config.json");
    let v: Value = if path.is_file() {
      let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::config(&path, "<file>", e.to_string()))?;
      serde_json::from_str(&text).map_err(|e| Error::config(&path, "<json>", e.to_string()))?
    } else {
      Value::Object(Default::default())
    };
    let clip = ClipImageProcessor::from_value(&path, &v)?;
    let pins = v.get("image_grid_pinpoints").or(config_pinpoints);
    let grid_pinpoints = match pins {
      None | Some(Value::Null) => DEFAULT_PINPOINTS.to_vec(),
      Some(p) => parse_pinpoints(&path, p)?,
    };
    let p = LlavaNextImageProcessor {
      clip,
      grid_pinpoints,
    };
    let t = p.tile_size();
    if let Some(&(h, w)) = p
      .grid_pinpoints
      .iter()
      .find(|(h, w)| h % t != 0 || w % t != 0)
    {
      return Err(Error::config(
        &path,
        "image_grid_pinpoints",
        format!("{h}x{w} is not a multiple of the tile size {t}"),
      ));
    }
    Ok(p)
  }

  /// The tile size: `crop_size.height` (python `patch_size` of
  /// `get_image_patches`).
  pub fn tile_size(&self) -> u32 {
    self.clip.crop.0
  }

  /// The (height, width) the base tile is resized to: `size` (height,
  /// width) or `shortest_edge` squared.
  fn base_size(&self) -> (u32, u32) {
    self
      .clip
      .fixed_size
      .unwrap_or((self.clip.shortest_edge, self.clip.shortest_edge))
  }

  /// Tiles of one image (python `get_image_patches` + `image_size_to_num_patches`):
  /// the base tile, then the padded best-resolution image cut row by row.
  pub fn tiles(&self, img: &RgbImage) -> Result<Vec<RgbImage>> {
    let (h, w) = (img.height(), img.width());
    if h == 0 || w == 0 {
      return Err(Error::invalid(format!("zero-size image ({w}x{h})")));
    }
    let best = select_best_resolution(h, w, &self.grid_pinpoints);
    let (nh, nw) = patch_output_size(h, w, best);
    let resized = if (nh, nw) == (h, w) {
      img.clone()
    } else {
      resize(img, nw, nh, self.clip.resample)?
    };
    // Pad with zeros (black) to `best`, centered (python divmod split).
    let (bh, bw) = best;
    let (top, left) = ((bh - nh) / 2, (bw - nw) / 2);
    let mut padded = vec![0u8; (bh * bw * 3) as usize];
    let src = resized.as_raw();
    for y in 0..nh {
      let d = (((y + top) * bw + left) * 3) as usize;
      let s = (y * nw * 3) as usize;
      padded[d..d + (nw * 3) as usize].copy_from_slice(&src[s..s + (nw * 3) as usize]);
    }
    let t = self.tile_size();
    let (sh, sw) = self.base_size();
    let base = if (sh, sw) == (h, w) {
      img.clone()
    } else {
      resize(img, sw, sh, self.clip.resample)?
    };
    let mut out = vec![base];
    for ty in (0..bh).step_by(t as usize) {
      for tx in (0..bw).step_by(t as usize) {
        let mut data = Vec::with_capacity((t * t * 3) as usize);
        for y in ty..ty + t {
          let s = ((y * bw + tx) * 3) as usize;
          data.extend_from_slice(&padded[s..s + (t * 3) as usize]);
        }
        out.push(RgbImage::new(t, t, data)?);
      }
    }
    Ok(out)
  }

  /// Number of tiles (base included) of an image of (height, width)
  /// (python `image_size_to_num_patches`).
  pub fn num_tiles(&self, height: u32, width: u32) -> usize {
    let (bh, bw) = select_best_resolution(height, width, &self.grid_pinpoints);
    let t = self.tile_size();
    (bh.div_ceil(t) * bw.div_ceil(t)) as usize + 1
  }

  /// python `LlavaNextImageProcessor(images)`: every image's tiles
  /// stacked `[sum(tiles), 3, tile, tile]` (the batch padding of
  /// `pixel_values` dropped, as the model does) and `image_sizes`
  /// (height, width).
  pub fn preprocess(&self, images: &[RgbImage]) -> Result<(ClipPixels, Vec<[u32; 2]>)> {
    if images.is_empty() {
      return Err(Error::invalid("no images to process"));
    }
    let mut data = Vec::new();
    let mut n = 0;
    let mut size = None;
    let mut sizes = Vec::with_capacity(images.len());
    for img in images {
      for tile in self.tiles(img)? {
        let tile = self.clip.resize_crop(&tile)?;
        let hw = (tile.height() as usize, tile.width() as usize);
        match size {
          None => size = Some(hw),
          Some(s) if s != hw => {
            return Err(Error::invalid(format!(
              "tiles of different sizes ({}x{} and {}x{}); check size / crop_size",
              s.1, s.0, hw.1, hw.0
            )));
          }
          _ => {}
        }
        self.clip.push_chw(&tile, &mut data);
        n += 1;
      }
      sizes.push([img.height(), img.width()]);
    }
    let (height, width) = size.unwrap_or((0, 0));
    Ok((
      ClipPixels {
        data,
        n,
        height,
        width,
      },
      sizes,
    ))
  }
}

fn parse_pinpoints(path: &Path, v: &Value) -> Result<Vec<(u32, u32)>> {
  let bad = || {
    Error::config(
      path,
      "image_grid_pinpoints",
      format!("expected a non-empty list of [height, width] pairs, got {v}"),
    )
  };
  let list = v.as_array().filter(|a| !a.is_empty()).ok_or_else(bad)?;
  list
    .iter()
    .map(|p| {
      let a = p.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
      let get = |x: &Value| {
        x.as_u64()
          .filter(|&n| n > 0 && n <= 1 << 14)
          .map(|n| n as u32)
          .ok_or_else(bad)
      };
      Ok((get(&a[0])?, get(&a[1])?))
    })
    .collect()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn best_resolution_and_output_size() {
    let pins = DEFAULT_PINPOINTS;
    // transformers: a 1x1 image takes the first resolution (least waste).
    assert_eq!(select_best_resolution(1, 1, &pins), (336, 672));
    assert_eq!(select_best_resolution(500, 1000, &pins), (336, 672));
    assert_eq!(select_best_resolution(1000, 1000, &pins), (672, 672));
    // 20 * (126 / 900) = 2.8000000000000003 -> ceil 3.
    assert_eq!(patch_output_size(20, 900, (42, 126)), (3, 126));
    assert_eq!(unpad_bounds(1, 1, 3, 6), (0, 3, 1, 5));
  }
}
