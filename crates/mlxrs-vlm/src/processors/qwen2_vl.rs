//! The Qwen2-VL / Qwen2.5-VL image processor: transformers'
//! `Qwen2VLImageProcessor` (PIL backend, `Qwen2VLImageProcessorPil` in
//! transformers 5) and mlx-vlm's numpy port of it — `smart_resize` to a
//! multiple of `patch_size * merge_size` within `[min_pixels, max_pixels]`,
//! a Pillow resize, rescale, normalize, and patchify into
//! `pixel_values [sum(t*h*w), C * temporal_patch_size * patch * patch]`
//! with `image_grid_thw [n_images, 3]`.

use std::path::{Path, PathBuf};

use mlxrs_core::Array;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::image::{Resample, RgbImage, resize};

/// transformers' `OPENAI_CLIP_MEAN` (Python's literals, rounded to f32).
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// transformers' `OPENAI_CLIP_STD` (Python's literals, rounded to f32).
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Settings of `Qwen2VLImageProcessor` (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageProcessor {
  /// Lower bound on `height * width` after resizing (`min_pixels` /
  /// `size.shortest_edge`).
  pub min_pixels: u64,
  /// Upper bound on `height * width` after resizing (`max_pixels` /
  /// `size.longest_edge`).
  pub max_pixels: u64,
  /// Spatial patch size (14 for Qwen2-VL).
  pub patch_size: u32,
  /// Frames per temporal patch (an image is repeated this many times).
  pub temporal_patch_size: u32,
  /// Patches merged per side into one LM token.
  pub merge_size: u32,
  /// Per-channel mean.
  pub image_mean: [f32; 3],
  /// Per-channel standard deviation.
  pub image_std: [f32; 3],
  /// Scale applied to the 0..255 values (`1/255`).
  pub rescale_factor: f64,
  /// Apply `rescale_factor`.
  pub do_rescale: bool,
  /// Apply mean / std.
  pub do_normalize: bool,
  /// Resize with `smart_resize` (off: sizes must already be multiples of
  /// `patch_size * merge_size`).
  pub do_resize: bool,
  /// Resampling filter (`resample`, PIL code; bicubic by default).
  pub resample: Resample,
}

impl Default for Qwen2VlImageProcessor {
  fn default() -> Self {
    Qwen2VlImageProcessor {
      min_pixels: 56 * 56,
      max_pixels: 28 * 28 * 1280,
      patch_size: 14,
      temporal_patch_size: 2,
      merge_size: 2,
      image_mean: OPENAI_CLIP_MEAN,
      image_std: OPENAI_CLIP_STD,
      rescale_factor: 1.0 / 255.0,
      do_rescale: true,
      do_normalize: true,
      do_resize: true,
      resample: Resample::Bicubic,
    }
  }
}

/// Processed images: the flat patch matrix and per-image grids.
#[derive(Debug, Clone)]
pub struct PixelValues {
  /// Row-major `[rows, cols]` float32 patches.
  pub data: Vec<f32>,
  /// Number of patches (`sum(t * h * w)`).
  pub rows: usize,
  /// Values per patch (`C * temporal_patch_size * patch * patch`).
  pub cols: usize,
  /// `image_grid_thw`: `[t, h, w]` in patches, per image.
  pub grid_thw: Vec<[u32; 3]>,
}

impl PixelValues {
  /// `pixel_values` as an MLX array `[rows, cols]` (float32).
  pub fn to_array(&self) -> Result<Array> {
    Ok(Array::from_slice(
      &self.data,
      &[self.rows as i32, self.cols as i32],
    )?)
  }

  /// One patch row.
  pub fn row(&self, i: usize) -> Option<&[f32]> {
    (i < self.rows).then(|| &self.data[i * self.cols..(i + 1) * self.cols])
  }
}

fn get_u64(path: &Path, v: &Value, key: &str) -> Result<Option<u64>> {
  match v.get(key) {
    None | Some(Value::Null) => Ok(None),
    Some(x) => x
      .as_u64()
      .or_else(|| {
        x.as_f64()
          .filter(|f| *f >= 0.0 && f.fract() == 0.0)
          .map(|f| f as u64)
      })
      .map(Some)
      .ok_or_else(|| {
        Error::config(
          path,
          key,
          format!("expected a non-negative integer, got {x}"),
        )
      }),
  }
}

fn get_bool(path: &Path, v: &Value, key: &str) -> Result<Option<bool>> {
  match v.get(key) {
    None | Some(Value::Null) => Ok(None),
    Some(Value::Bool(b)) => Ok(Some(*b)),
    Some(x) => Err(Error::config(
      path,
      key,
      format!("expected true or false, got {x}"),
    )),
  }
}

fn get_triple(path: &Path, v: &Value, key: &str) -> Result<Option<[f32; 3]>> {
  match v.get(key) {
    None | Some(Value::Null) => Ok(None),
    Some(Value::Number(n)) => {
      let f = n.as_f64().unwrap_or(0.0) as f32;
      Ok(Some([f, f, f]))
    }
    Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
      let f = |i: usize| a[i].as_f64().unwrap_or(0.0) as f32;
      Ok(Some([f(0), f(1), f(2)]))
    }
    Some(x) => Err(Error::config(
      path,
      key,
      format!("expected 3 numbers, got {x}"),
    )),
  }
}

/// Python's `round()` (half to even) for the non-negative ratios of
/// `smart_resize`.
fn py_round(x: f64) -> f64 {
  x.round_ties_even()
}

impl Qwen2VlImageProcessor {
  /// Read `preprocessor_config.json` (and `processor_config.json`'s
  /// `image_processor` block, as mlx-vlm does) from a checkpoint folder;
  /// defaults where absent.
  pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
    let dir = dir.as_ref();
    let pre = dir.join("preprocessor_config.json");
    let mut raw = if pre.is_file() {
      read_json(&pre)?
    } else {
      Value::Object(Default::default())
    };
    let proc = dir.join("processor_config.json");
    if proc.is_file() {
      if let Some(Value::Object(extra)) = read_json(&proc)?.get("image_processor") {
        if let Value::Object(o) = &mut raw {
          for (k, v) in extra {
            o.insert(k.clone(), v.clone());
          }
        }
      }
    }
    Self::from_value(&pre, &raw)
  }

  /// Settings from a parsed `preprocessor_config.json` (`path` names it in
  /// errors). `min_pixels` / `max_pixels` override `size.shortest_edge` /
  /// `size.longest_edge`, as in transformers.
  pub fn from_value(path: &Path, v: &Value) -> Result<Self> {
    if !v.is_object() {
      return Err(Error::config(path, "<root>", "expected a JSON object"));
    }
    let mut p = Qwen2VlImageProcessor::default();
    if let Some(size) = v.get("size").filter(|s| s.is_object()) {
      if let Some(x) = get_u64(path, size, "shortest_edge")? {
        p.min_pixels = x;
      }
      if let Some(x) = get_u64(path, size, "longest_edge")? {
        p.max_pixels = x;
      }
    }
    if let Some(x) = get_u64(path, v, "min_pixels")? {
      p.min_pixels = x;
    }
    if let Some(x) = get_u64(path, v, "max_pixels")? {
      p.max_pixels = x;
    }
    let small = |key: &str, x: u64| -> Result<u32> {
      if x == 0 || x > 4096 {
        return Err(Error::config(
          path,
          key,
          format!("must be in 1..=4096, got {x}"),
        ));
      }
      Ok(x as u32)
    };
    if let Some(x) = get_u64(path, v, "patch_size")? {
      p.patch_size = small("patch_size", x)?;
    }
    if let Some(x) = get_u64(path, v, "temporal_patch_size")? {
      p.temporal_patch_size = small("temporal_patch_size", x)?;
    }
    if let Some(x) = get_u64(path, v, "merge_size")? {
      p.merge_size = small("merge_size", x)?;
    }
    if let Some(x) = get_triple(path, v, "image_mean")? {
      p.image_mean = x;
    }
    if let Some(x) = get_triple(path, v, "image_std")? {
      if x.contains(&0.0) {
        return Err(Error::config(path, "image_std", "must not contain 0"));
      }
      p.image_std = x;
    }
    match v.get("rescale_factor") {
      None | Some(Value::Null) => {}
      Some(x) => {
        p.rescale_factor = x.as_f64().ok_or_else(|| {
          Error::config(
            path,
            "rescale_factor",
            format!("expected a number, got {x}"),
          )
        })?
      }
    }
    if let Some(b) = get_bool(path, v, "do_rescale")? {
      p.do_rescale = b;
    }
    if let Some(b) = get_bool(path, v, "do_normalize")? {
      p.do_normalize = b;
    }
    if let Some(b) = get_bool(path, v, "do_resize")? {
      p.do_resize = b;
    }
    if let Some(code) = v.get("resample").filter(|x| !x.is_null()) {
      p.resample = code.as_i64().and_then(Resample::from_pil).ok_or_else(|| {
        Error::config(
          path,
          "resample",
          format!("expected a PIL filter code 0..=5, got {code}"),
        )
      })?;
    }
    if p.min_pixels > p.max_pixels {
      return Err(Error::config(
        path,
        "min_pixels",
        format!(
          "min_pixels ({}) is larger than max_pixels ({})",
          p.min_pixels, p.max_pixels
        ),
      ));
    }
    Ok(p)
  }

  /// `patch_size * merge_size`: the side multiple images are resized to.
  pub fn factor(&self) -> u32 {
    self.patch_size * self.merge_size
  }

  /// transformers' `smart_resize(height, width, factor, min_pixels,
  /// max_pixels)`: the `(height, width)` an image is resized to. Errors
  /// (as transformers' `ValueError`) when the aspect ratio exceeds 200.
  pub fn smart_resize(&self, height: u32, width: u32) -> Result<(u32, u32)> {
    if height == 0 || width == 0 {
      return Err(Error::invalid(format!(
        "zero-size image ({width}x{height})"
      )));
    }
    let (h, w) = (height as f64, width as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
      return Err(Error::invalid(format!(
        "image of {width}x{height}: absolute aspect ratio must be smaller than 200, got {ratio}"
      )));
    }
    let f = self.factor() as f64;
    let mut h_bar = py_round(h / f) * f;
    let mut w_bar = py_round(w / f) * f;
    let (minp, maxp) = (self.min_pixels as f64, self.max_pixels as f64);
    if h_bar * w_bar > maxp {
      let beta = (h * w / maxp).sqrt();
      h_bar = f.max((h / beta / f).floor() * f);
      w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < minp {
      let beta = (minp / (h * w)).sqrt();
      h_bar = (h * beta / f).ceil() * f;
      w_bar = (w * beta / f).ceil() * f;
    }
    if h_bar < 1.0 || w_bar < 1.0 || h_bar * w_bar > crate::image::MAX_PIXELS as f64 {
      return Err(Error::invalid(format!(
        "image of {width}x{height} resizes to {w_bar}x{h_bar} (min_pixels {}, max_pixels {})",
        self.min_pixels, self.max_pixels
      )));
    }
    Ok((h_bar as u32, w_bar as u32))
  }

  /// The number of LM tokens an image of `height` x `width` becomes
  /// (`t * h * w / merge_size^2`).
  pub fn num_image_tokens(&self, height: u32, width: u32) -> Result<usize> {
    let (h, w) = if self.do_resize {
      self.smart_resize(height, width)?
    } else {
      (height, width)
    };
    let m = self.merge_size as usize;
    Ok((h / self.patch_size) as usize * (w / self.patch_size) as usize / (m * m))
  }

  /// Resize one image as the processor does (`smart_resize` + Pillow).
  pub fn resize_image(&self, img: &RgbImage) -> Result<RgbImage> {
    if !self.do_resize {
      return Ok(img.clone());
    }
    let (h, w) = self.smart_resize(img.height(), img.width())?;
    resize(img, w, h, self.resample)
  }

  /// Process images into `pixel_values` and `image_grid_thw`
  /// (`Qwen2VLImageProcessor(images=...)`).
  pub fn preprocess(&self, images: &[RgbImage]) -> Result<PixelValues> {
    if images.is_empty() {
      return Err(Error::invalid("no images to process"));
    }
    let ps = self.patch_size as usize;
    let tps = self.temporal_patch_size as usize;
    let ms = self.merge_size as usize;
    let cols = 3 * tps * ps * ps;
    let mut data = Vec::new();
    let mut grid_thw = Vec::with_capacity(images.len());
    let mut rows = 0;
    for (n, img) in images.iter().enumerate() {
      let img = self.resize_image(img)?;
      let (hh, ww) = (img.height() as usize, img.width() as usize);
      if hh % (ps * ms) != 0 || ww % (ps * ms) != 0 {
        return Err(Error::invalid(format!(
          "image {n}: {ww}x{hh} is not a multiple of patch_size * merge_size = {} (enable do_resize)",
          ps * ms
        )));
      }
      // Rescale (in float64, then float32, as numpy) and normalize (float32).
      let mut chw = vec![0f32; 3 * hh * ww];
      let raw = img.as_raw();
      for y in 0..hh {
        for x in 0..ww {
          for c in 0..3 {
            let v = raw[(y * ww + x) * 3 + c];
            let mut f = if self.do_rescale {
              (v as f64 * self.rescale_factor) as f32
            } else {
              v as f32
            };
            if self.do_normalize {
              f = (f - self.image_mean[c]) / self.image_std[c];
            }
            chw[(c * hh + y) * ww + x] = f;
          }
        }
      }
      let (gh, gw) = (hh / ps, ww / ps);
      data.reserve(gh * gw * cols);
      // Rows in (gh/ms, gw/ms, ms, ms) order; each row (C, T, ps, ps).
      for bh in 0..gh / ms {
        for bw in 0..gw / ms {
          for mh in 0..ms {
            for mw in 0..ms {
              let (py0, px0) = ((bh * ms + mh) * ps, (bw * ms + mw) * ps);
              for c in 0..3 {
                for _t in 0..tps {
                  for py in 0..ps {
                    let start = (c * hh + py0 + py) * ww + px0;
                    data.extend_from_slice(&chw[start..start + ps]);
                  }
                }
              }
            }
          }
        }
      }
      rows += gh * gw;
      grid_thw.push([1, gh as u32, gw as u32]);
    }
    Ok(PixelValues {
      data,
      rows,
      cols,
      grid_thw,
    })
  }
}

fn read_json(path: &Path) -> Result<Value> {
  let text = std::fs::read_to_string(path)
    .map_err(|e| Error::config(PathBuf::from(path), "<file>", format!("cannot read: {e}")))?;
  serde_json::from_str(&text)
    .map_err(|e| Error::config(PathBuf::from(path), "<root>", format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn smart_resize_matches_transformers_examples() {
    let p = Qwen2VlImageProcessor::default();
    // 1x1 is upscaled to the minimum (56x56), as transformers does.
    assert_eq!(p.smart_resize(1, 1).unwrap(), (56, 56));
    // Python rounds half to even: 42 / 28 = 1.5 -> 2, 70 / 28 = 2.5 -> 2.
    assert_eq!(p.smart_resize(42, 70).unwrap(), (56, 56));
    assert_eq!(p.smart_resize(480, 640).unwrap(), (476, 644));
    let e = p.smart_resize(1, 300).unwrap_err().to_string();
    assert!(e.contains("aspect ratio"), "{e}");
    assert!(p.smart_resize(0, 5).is_err());
  }

  #[test]
  fn config_overrides_and_bad_fields() {
    let path = Path::new("preprocessor_config.json");
    let v = serde_json::json!({"size": {"shortest_edge": 100, "longest_edge": 5000}, "max_pixels": 4000, "resample": 2});
    let p = Qwen2VlImageProcessor::from_value(path, &v).unwrap();
    assert_eq!(
      (p.min_pixels, p.max_pixels, p.resample),
      (100, 4000, Resample::Bilinear)
    );
    let e = Qwen2VlImageProcessor::from_value(path, &serde_json::json!({"resample": 9}))
      .unwrap_err()
      .to_string();
    assert!(e.contains("resample"), "{e}");
    let e = Qwen2VlImageProcessor::from_value(path, &serde_json::json!({"image_std": [1, 0, 1]}))
      .unwrap_err()
      .to_string();
    assert!(e.contains("image_std"), "{e}");
    let e = Qwen2VlImageProcessor::from_value(path, &serde_json::json!({"patch_size": "x"}))
      .unwrap_err()
      .to_string();
    assert!(e.contains("patch_size"), "{e}");
  }

  #[test]
  fn patchify_layout() {
    // A 56x56 image (no resize needed) whose value encodes (y, x, c).
    let mut raw = Vec::new();
    for y in 0..56u32 {
      for x in 0..56u32 {
        raw.extend_from_slice(&[(y * 4) as u8, (x * 4) as u8, 7]);
      }
    }
    let img = RgbImage::new(56, 56, raw).unwrap();
    let p = Qwen2VlImageProcessor {
      do_rescale: false,
      do_normalize: false,
      ..Default::default()
    };
    let pv = p.preprocess(&[img]).unwrap();
    assert_eq!(
      (pv.rows, pv.cols, pv.grid_thw.clone()),
      (16, 1176, vec![[1, 4, 4]])
    );
    // Row 1 = block (0, 0), sub-patch (mh 0, mw 1): x from 14; row 2: y from 14.
    let r1 = pv.row(1).unwrap();
    assert_eq!((r1[0], r1[14 * 14 * 2]), (0.0, 56.0)); // channel 0 = y*4, channel 1 starts at x=14
    let r2 = pv.row(2).unwrap();
    assert_eq!(r2[0], 56.0);
    // The temporal copies are equal.
    assert_eq!(&r1[..196], &r1[196..392]);
  }
}
