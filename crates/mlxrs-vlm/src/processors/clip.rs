//! CLIP / SigLIP-style image processor: transformers' `CLIPImageProcessor`
//! (LLaVA-1.5; `image_processing_clip.py`, PIL backend: resize so the
//! shortest edge is `size.shortest_edge`, Pillow-exact, see
//! [`crate::image::resize`], center crop to `crop_size`, rescale,
//! normalize) and `SiglipImageProcessor` (PaliGemma: resize to
//! `size.height x size.width`, no crop).

use std::path::Path;

use mlxrs_core::Array;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::image::{Resample, RgbImage, resize};

/// `CLIPImageProcessor` settings (`preprocessor_config.json`).
#[derive(Debug, Clone)]
pub struct ClipImageProcessor {
  /// `size.shortest_edge`.
  pub shortest_edge: u32,
  /// `size.height` / `size.width`: resize to exactly this (height, width)
  /// instead of by the shortest edge.
  pub fixed_size: Option<(u32, u32)>,
  /// `crop_size` (height, width).
  pub crop: (u32, u32),
  /// `do_resize`
  pub do_resize: bool,
  /// `do_center_crop`
  pub do_center_crop: bool,
  /// `do_rescale`
  pub do_rescale: bool,
  /// `rescale_factor`
  pub rescale_factor: f64,
  /// `do_normalize`
  pub do_normalize: bool,
  /// `image_mean`
  pub image_mean: [f32; 3],
  /// `image_std`
  pub image_std: [f32; 3],
  /// `resample` (PIL code; bicubic by default)
  pub resample: Resample,
}

impl Default for ClipImageProcessor {
  fn default() -> Self {
    ClipImageProcessor {
      shortest_edge: 336,
      fixed_size: None,
      crop: (336, 336),
      do_resize: true,
      do_center_crop: true,
      do_rescale: true,
      rescale_factor: 1.0 / 255.0,
      do_normalize: true,
      image_mean: crate::processors::qwen2_vl::OPENAI_CLIP_MEAN,
      image_std: crate::processors::qwen2_vl::OPENAI_CLIP_STD,
      resample: Resample::Bicubic,
    }
  }
}

/// Processed images `[n, 3, height, width]` (python `pixel_values`, NCHW).
#[derive(Debug, Clone)]
pub struct ClipPixels {
  /// Row-major NCHW float32 values.
  pub data: Vec<f32>,
  /// Number of images.
  pub n: usize,
  /// Height.
  pub height: usize,
  /// Width.
  pub width: usize,
}

impl ClipPixels {
  /// `pixel_values.transpose(0, 2, 3, 1)`: NHWC, what MLX's conv takes.
  pub fn to_nhwc(&self) -> Result<Array> {
    let a = Array::from_slice(
      &self.data,
      &[self.n as i32, 3, self.height as i32, self.width as i32],
    )?;
    Ok(mlxrs_core::ops::transpose_axes(&a, &[0, 2, 3, 1])?)
  }
}

fn u32_of(path: &Path, v: &Value, key: &str) -> Result<Option<u32>> {
  match v.get(key) {
    None | Some(Value::Null) => Ok(None),
    Some(x) => x
      .as_u64()
      .filter(|&n| n > 0 && n <= 1 << 16)
      .map(|n| Some(n as u32))
      .ok_or_else(|| Error::config(path, key, format!("expected a positive integer, got {x}"))),
  }
}

/// `(height, width, is_shortest_edge)`
fn size_of(path: &Path, v: &Value) -> Result<Option<(u32, u32, bool)>> {
  match v {
    Value::Number(_) => {
      Ok(u32_of(path, &serde_json::json!({ "s": v }), "s")?.map(|s| (s, s, false)))
    }
    Value::Object(_) => {
      if let Some(s) = u32_of(path, v, "shortest_edge")? {
        return Ok(Some((s, s, true)));
      }
      match (u32_of(path, v, "height")?, u32_of(path, v, "width")?) {
        (Some(h), Some(w)) => Ok(Some((h, w, false))),
        _ => Err(Error::config(path, "size", format!("unsupported size {v}"))),
      }
    }
    _ => Err(Error::config(path, "size", format!("unsupported size {v}"))),
  }
}

impl ClipImageProcessor {
  /// Read `preprocessor_config.json` from a checkpoint folder (defaults
  /// where absent).
  pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
    let path = dir.as_ref().join("preprocessor_config.json");
    if !path.is_file() {
      return Ok(Self::default());
    }
    let text =
      std::fs::read_to_string(&path).map_err(|e| Error::config(&path, "<file>", e.to_string()))?;
    let v: Value =
      serde_json::from_str(&text).map_err(|e| Error::config(&path, "<json>", e.to_string()))?;
    Self::from_value(&path, &v)
  }

  /// Settings from a parsed `preprocessor_config.json`.
  pub fn from_value(path: &Path, v: &Value) -> Result<Self> {
    if !v.is_object() {
      return Err(Error::config(path, "<root>", "expected a JSON object"));
    }
    let mut p = Self::default();
    if let Some(s) = v.get("size") {
      match size_of(path, s)? {
        Some((h, _, true)) => p.shortest_edge = h,
        Some((h, w, false)) => p.fixed_size = Some((h, w)),
        None => {}
      }
    }
    if let Some(s) = v.get("crop_size") {
      if let Some((h, w, _)) = size_of(path, s)? {
        p.crop = (h, w);
      }
    }
    let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
    p.do_resize = flag("do_resize", true);
    // CLIP configs carry crop_size; SigLIP ones neither crop_size nor do_center_crop.
    p.do_center_crop = flag("do_center_crop", v.get("crop_size").is_some());
    p.do_rescale = flag("do_rescale", true);
    p.do_normalize = flag("do_normalize", true);
    if let Some(f) = v.get("rescale_factor").and_then(Value::as_f64) {
      p.rescale_factor = f;
    }
    for (key, dst) in [
      ("image_mean", &mut p.image_mean),
      ("image_std", &mut p.image_std),
    ] {
      if let Some(a) = v.get(key) {
        let vals: Vec<f32> = a
          .as_array()
          .map(|a| {
            a.iter()
              .filter_map(|x| x.as_f64().map(|f| f as f32))
              .collect()
          })
          .unwrap_or_default();
        if vals.len() != 3 || (key == "image_std" && vals.contains(&0.0)) {
          return Err(Error::config(
            path,
            key,
            format!("expected 3 numbers (non-zero std), got {a}"),
          ));
        }
        dst.copy_from_slice(&vals);
      }
    }
    if let Some(r) = v.get("resample").and_then(Value::as_i64) {
      p.resample = Resample::from_pil(r)
        .ok_or_else(|| Error::config(path, "resample", format!("unknown PIL filter {r}")))?;
    }
    Ok(p)
  }

  /// transformers' `get_resize_output_image_size(default_to_square=False)`:
  /// the short side becomes `shortest_edge`, the long side
  /// `int(shortest_edge * long / short)`. Returns (height, width).
  pub fn output_size(&self, height: u32, width: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
      (width, height)
    } else {
      (height, width)
    };
    let s = self.shortest_edge;
    let l = ((s as f64 * long as f64 / short as f64) as u32).max(1);
    if width <= height { (l, s) } else { (s, l) }
  }

  /// Resize and center crop one image (uint8, before rescaling).
  pub fn resize_crop(&self, img: &RgbImage) -> Result<RgbImage> {
    let mut img = img.clone();
    if self.do_resize {
      let (h, w) = self
        .fixed_size
        .unwrap_or_else(|| self.output_size(img.height(), img.width()));
      // Pillow's `resize` returns a copy when the size is unchanged.
      if (h, w) != (img.height(), img.width()) {
        img = resize(&img, w, h, self.resample)?;
      }
    }
    if self.do_center_crop {
      let (ch, cw) = self.crop;
      let (h, w) = (img.height(), img.width());
      if ch > h || cw > w {
        return Err(Error::invalid(format!(
          "center crop {cw}x{ch} is larger than the resized image {w}x{h} (padding is not supported)"
        )));
      }
      let (top, left) = ((h - ch) / 2, (w - cw) / 2);
      let raw = img.as_raw();
      let mut out = Vec::with_capacity((ch * cw * 3) as usize);
      for y in top..top + ch {
        let start = ((y * w + left) * 3) as usize;
        out.extend_from_slice(&raw[start..start + (cw * 3) as usize]);
      }
      img = RgbImage::new(cw, ch, out)?;
    }
    Ok(img)
  }

  /// Rescale (float64 then float32, as numpy) and normalize (float32) one
  /// image, appending its CHW values to `data`.
  pub fn push_chw(&self, img: &RgbImage, data: &mut Vec<f32>) {
    let raw = img.as_raw();
    let n = (img.height() * img.width()) as usize;
    data.reserve(3 * n);
    for c in 0..3 {
      for i in 0..n {
        let v = raw[i * 3 + c];
        let mut f = if self.do_rescale {
          (v as f64 * self.rescale_factor) as f32
        } else {
          v as f32
        };
        if self.do_normalize {
          f = (f - self.image_mean[c]) / self.image_std[c];
        }
        data.push(f);
      }
    }
  }

  /// python `CLIPImageProcessor(images)["pixel_values"]`: all images must
  /// end up the same size (they do with center cropping).
  pub fn preprocess(&self, images: &[RgbImage]) -> Result<ClipPixels> {
    if images.is_empty() {
      return Err(Error::invalid("no images to process"));
    }
    let mut data = Vec::new();
    let mut size = None;
    for (n, img) in images.iter().enumerate() {
      let img = self.resize_crop(img)?;
      let (hh, ww) = (img.height() as usize, img.width() as usize);
      match size {
        None => size = Some((hh, ww)),
        Some(s) if s != (hh, ww) => {
          return Err(Error::invalid(format!(
            "image {n} becomes {ww}x{hh} but image 0 became {}x{}; enable center cropping",
            s.1, s.0
          )));
        }
        _ => {}
      }
      self.push_chw(&img, &mut data);
    }
    let (height, width) = size.unwrap_or((0, 0));
    Ok(ClipPixels {
      data,
      n: images.len(),
      height,
      width,
    })
  }
}
