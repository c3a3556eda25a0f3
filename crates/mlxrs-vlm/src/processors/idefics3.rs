//! Idefics3 / SmolVLM image processor: transformers'
//! `Idefics3ImageProcessor` / `SmolVLMImageProcessor` (PIL backend; the two
//! are the same algorithm).
//!
//! Per image: resize so the longest edge is `size.longest_edge` (the short
//! side rounded up to even), then up to multiples of
//! `max_image_size.longest_edge` (`resize_for_vision_encoder`), cut into
//! `rows x cols` tiles of that size and append the whole image resized to
//! one tile (the global image); images that fit one tile are not split.
//! Every resize is Pillow-exact ([`crate::image::resize`], LANCZOS by
//! default); then rescale and normalize (mean = std = 0.5 by default).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::image::{RgbImage, resize};
use crate::processors::{ClipImageProcessor, ClipPixels};

/// transformers' `MAX_IMAGE_SIZE` (4k) bound on the resized image.
const MAX_IMAGE_SIZE: u32 = 4096;

/// `Idefics3ImageProcessor` settings (`preprocessor_config.json`).
#[derive(Debug, Clone)]
pub struct Idefics3ImageProcessor {
  /// Rescale / normalize / `resample` settings (no resize or crop).
  pub clip: ClipImageProcessor,
  /// `do_resize`
  pub do_resize: bool,
  /// `size.longest_edge`
  pub longest_edge: u32,
  /// `do_image_splitting`
  pub do_image_splitting: bool,
  /// `max_image_size.longest_edge` (the tile size).
  pub tile: u32,
}

fn longest(path: &Path, v: &Value, key: &str, default: u32) -> Result<u32> {
  match v.get(key) {
    None | Some(Value::Null) => Ok(default),
    Some(s) => s
      .get("longest_edge")
      .and_then(Value::as_u64)
      .filter(|&n| n > 0 && n <= MAX_IMAGE_SIZE as u64)
      .map(|n| n as u32)
      .ok_or_else(|| {
        Error::config(
          path,
          key,
          format!("expected {{\"longest_edge\": N}} with 0 < N <= {MAX_IMAGE_SIZE}, got {s}"),
        )
      }),
  }
}

/// python `_resize_output_size_rescale_to_max_len`: the longest edge becomes
/// `max_len`, the other keeps the aspect ratio (truncated, then made even).
/// (height, width)
pub fn rescale_to_max_len(height: u32, width: u32, max_len: u32) -> (u32, u32) {
  let aspect = width as f64 / height as f64;
  let even = |x: i64| if x % 2 != 0 { x + 1 } else { x };
  let (h, w) = if width >= height {
    let w = max_len as i64;
    (even((w as f64 / aspect) as i64), w)
  } else {
    let h = max_len as i64;
    (h, even((h as f64 * aspect) as i64))
  };
  (h.max(1) as u32, w.max(1) as u32)
}

/// python `_resize_output_size_scale_below_upper_bound`. (height, width)
pub fn scale_below_upper_bound(height: u32, width: u32, max_len: u32) -> (u32, u32) {
  let aspect = width as f64 / height as f64;
  let (mut h, mut w) = (height as i64, width as i64);
  if width >= height && width > max_len {
    w = max_len as i64;
    h = (w as f64 / aspect) as i64;
  } else if height > width && height > max_len {
    h = max_len as i64;
    w = (h as f64 * aspect) as i64;
  }
  (h.max(1) as u32, w.max(1) as u32)
}

/// python `resize_for_vision_encoder`'s size: both sides up to multiples of
/// `tile` (the short side from the truncated aspect-kept size). (height,
/// width)
pub fn vision_encoder_size(height: u32, width: u32, tile: u32) -> (u32, u32) {
  let aspect = width as f64 / height as f64;
  let up = |x: f64| ((x / tile as f64).ceil() * tile as f64) as u32;
  if width >= height {
    let w = up(width as f64);
    let h = (w as f64 / aspect) as i64;
    (up(h as f64), w)
  } else {
    let h = up(height as f64);
    let w = (h as f64 * aspect) as i64;
    (h, up(w as f64))
  }
}

impl Idefics3ImageProcessor {
  /// Read `preprocessor_config.json` (defaults where absent; a
  /// `processor_config.json` `image_processor.size` overrides `size`, as
  /// mlx-vlm's SmolVLM processor does).
  pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
    let dir = dir.as_ref();
    let path = dir.join("preprocessor_config.json");
    let read = |p: &Path| -> Result<Value> {
      let text =
        std::fs::read_to_string(p).map_err(|e| Error::config(p, "<file>", e.to_string()))?;
      serde_json::from_str(&text).map_err(|e| Error::config(p, "<json>", e.to_string()))
    };
    let mut v = if path.is_file() {
      read(&path)?
    } else {
      Value::Object(Default::default())
    };
    let proc = dir.join("processor_config.json");
    if proc.is_file() {
      if let Some(size) = read(&proc)?
        .get("image_processor")
        .and_then(|p| p.get("size"))
      {
        if let Value::Object(m) = &mut v {
          m.insert("size".into(), size.clone());
        }
      }
    }
    Self::from_value(&path, &v)
  }

  /// Settings from a parsed `preprocessor_config.json`.
  pub fn from_value(path: &Path, v: &Value) -> Result<Self> {
    let Value::Object(m) = v else {
      return Err(Error::config(path, "<root>", "expected a JSON object"));
    };
    // The rescale / normalize part through the CLIP parser, with
    // Idefics3's defaults (LANCZOS, mean = std = 0.5) and no resize / crop.
    let mut c = m.clone();
    for k in ["size", "crop_size", "do_center_crop", "do_resize"] {
      c.remove(k);
    }
    c.entry("image_mean")
      .or_insert(serde_json::json!([0.5, 0.5, 0.5]));
    c.entry("image_std")
      .or_insert(serde_json::json!([0.5, 0.5, 0.5]));
    c.entry("resample").or_insert(serde_json::json!(1));
    c.insert("do_center_crop".into(), Value::Bool(false));
    let mut clip = ClipImageProcessor::from_value(path, &Value::Object(c))?;
    clip.do_resize = false;
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(true);
    let tile = longest(path, v, "max_image_size", 364)?;
    Ok(Idefics3ImageProcessor {
      clip,
      do_resize: flag("do_resize"),
      longest_edge: longest(path, v, "size", 4 * 364)?,
      do_image_splitting: flag("do_image_splitting"),
      tile,
    })
  }

  /// One image's frames (tiles row by row, then the global image; or the
  /// single resized image) and its (rows, cols) (0, 0 when not split).
  pub fn frames(&self, img: &RgbImage) -> Result<(Vec<RgbImage>, (u32, u32))> {
    let resize_to = |img: &RgbImage, h: u32, w: u32| -> Result<RgbImage> {
      if (h, w) == (img.height(), img.width()) {
        Ok(img.clone())
      } else {
        resize(img, w, h, self.clip.resample)
      }
    };
    let mut img = img.clone();
    if self.do_resize {
      let (h, w) = rescale_to_max_len(img.height(), img.width(), self.longest_edge);
      let (h, w) = scale_below_upper_bound(h, w, MAX_IMAGE_SIZE);
      img = resize_to(&img, h, w)?;
    }
    let t = self.tile;
    if !self.do_image_splitting {
      return Ok((vec![resize_to(&img, t, t)?], (0, 0)));
    }
    let (h, w) = vision_encoder_size(img.height(), img.width(), t);
    let img = resize_to(&img, h, w)?;
    if h <= t && w <= t {
      return Ok((vec![img], (0, 0)));
    }
    let (rows, cols) = ((h - t) / t + 1, (w - t) / t + 1);
    let raw = img.as_raw();
    let mut frames = Vec::with_capacity((rows * cols + 1) as usize);
    for r in 0..rows {
      for c in 0..cols {
        let mut data = Vec::with_capacity((t * t * 3) as usize);
        for y in r * t..(r + 1) * t {
          let s = ((y * w + c * t) * 3) as usize;
          data.extend_from_slice(&raw[s..s + (t * 3) as usize]);
        }
        frames.push(RgbImage::new(t, t, data)?);
      }
    }
    frames.push(resize_to(&img, t, t)?);
    Ok((frames, (rows, cols)))
  }

  /// python `Idefics3ImageProcessor(images, return_row_col_info=True)` for
  /// one prompt: every image's frames stacked `[frames, 3, tile, tile]`
  /// (one prompt: no batch padding) and each image's (rows, cols).
  pub fn preprocess(&self, images: &[RgbImage]) -> Result<(ClipPixels, Vec<(u32, u32)>)> {
    if images.is_empty() {
      return Err(Error::invalid("no images to process"));
    }
    let t = self.tile as usize;
    let mut data = Vec::new();
    let mut n = 0;
    let mut grids = Vec::with_capacity(images.len());
    for img in images {
      let (frames, rc) = self.frames(img)?;
      for f in &frames {
        if (f.height() as usize, f.width() as usize) != (t, t) {
          // transformers pads smaller frames with zeros plus a pixel mask;
          // with splitting on every frame is a full tile.
          return Err(Error::invalid(format!(
            "frame of {}x{} is not a full {t}x{t} tile (padding is not supported)",
            f.width(),
            f.height()
          )));
        }
        self.clip.push_chw(f, &mut data);
        n += 1;
      }
      grids.push(rc);
    }
    Ok((
      ClipPixels {
        data,
        n,
        height: t,
        width: t,
      },
      grids,
    ))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn sizes_follow_transformers() {
    // 900x20 -> longest 84: height int(84 / 45) = 1 -> even 2.
    assert_eq!(rescale_to_max_len(20, 900, 84), (2, 84));
    assert_eq!(vision_encoder_size(2, 84, 42), (42, 84));
    assert_eq!(rescale_to_max_len(1, 1, 84), (84, 84));
    assert_eq!(rescale_to_max_len(53, 37, 84), (84, 58));
    assert_eq!(scale_below_upper_bound(5000, 100, 4096), (4096, 81));
  }
}
