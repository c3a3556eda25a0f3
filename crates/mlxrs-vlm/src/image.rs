//! Image loading and resampling with the semantics of the Python stack the
//! VLM processors are checked against:
//!
//! - [`load_image`] / [`decode_image`]: `transformers.image_utils.load_image`
//!   and `mlx_vlm.utils.load_image` — open (png, jpeg, webp, gif's first
//!   frame), apply the EXIF orientation (`PIL.ImageOps.exif_transpose`),
//!   convert to RGB (`Image.convert("RGB")`, which drops alpha; or, with
//!   [`AlphaMode::OverWhite`], transformers' `convert_to_rgb`, which
//!   composites transparency over white exactly as `Image.alpha_composite`).
//! - [`resize`]: `PIL.Image.resize(size, resample)` for 8-bit RGB, the
//!   resize transformers' PIL backend uses. It is a port of Pillow's
//!   `Resample.c` (separable convolution with the filter support scaled by
//!   the downscale factor — i.e. antialiased —, 22-bit fixed-point
//!   coefficients, a horizontal pass rounded to 8 bits, then a vertical
//!   pass), so outputs are bit-identical to Pillow's.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{Error, Result};

/// Images larger than this many pixels are refused (the decoders' own
/// allocation limit, 512 MiB, applies too).
pub const MAX_PIXELS: u64 = 1 << 28;

/// An 8-bit RGB image, rows top to bottom, `[height, width, 3]` (PIL's
/// `np.array(img)` layout).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
  width: u32,
  height: u32,
  data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "RgbImage({}x{})", self.width, self.height)
  }
}

impl RgbImage {
  /// An image from `[height, width, 3]` bytes; sizes must be positive and
  /// match the data.
  pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
    if width == 0 || height == 0 {
      return Err(Error::image(
        "<pixels>",
        format!("zero-size image ({width}x{height})"),
      ));
    }
    let need = width as u64 * height as u64 * 3;
    if data.len() as u64 != need {
      return Err(Error::image(
        "<pixels>",
        format!(
          "{width}x{height} RGB needs {need} bytes, got {}",
          data.len()
        ),
      ));
    }
    Ok(RgbImage {
      width,
      height,
      data,
    })
  }

  /// Width in pixels.
  pub fn width(&self) -> u32 {
    self.width
  }

  /// Height in pixels.
  pub fn height(&self) -> u32 {
    self.height
  }

  /// The bytes, `[height, width, 3]`.
  pub fn as_raw(&self) -> &[u8] {
    &self.data
  }

  /// The pixel at column `x`, row `y` (`None` outside the image).
  pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
    if x >= self.width || y >= self.height {
      return None;
    }
    let i = (y as usize * self.width as usize + x as usize) * 3;
    Some([self.data[i], self.data[i + 1], self.data[i + 2]])
  }
}

/// How transparency becomes RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaMode {
  /// Drop the alpha channel (`PIL.Image.convert("RGB")`, as
  /// `transformers.image_utils.load_image` and `mlx_vlm.utils.load_image`
  /// do when they read a file).
  #[default]
  Drop,
  /// Composite over white (`transformers.image_transforms.convert_to_rgb`,
  /// which image processors apply to in-memory RGBA images).
  OverWhite,
}

/// Read and decode an image file (see [`decode_image`]).
pub fn load_image(path: impl AsRef<Path>, alpha: AlphaMode) -> Result<RgbImage> {
  let path = path.as_ref();
  let name = path.display().to_string();
  let bytes = std::fs::read(path).map_err(|e| Error::image(&name, format!("cannot read: {e}")))?;
  decode_named(&bytes, &name, alpha)
}

/// Decode an encoded image (png, jpeg, webp, or a gif's first frame),
/// applying its EXIF orientation, to RGB.
pub fn decode_image(bytes: &[u8], alpha: AlphaMode) -> Result<RgbImage> {
  decode_named(bytes, "<bytes>", alpha)
}

fn decode_named(bytes: &[u8], name: &str, alpha: AlphaMode) -> Result<RgbImage> {
  if bytes.is_empty() {
    return Err(Error::image(name, "empty file"));
  }
  let reader = ImageReader::new(Cursor::new(bytes))
    .with_guessed_format()
    .map_err(|e| Error::image(name, format!("cannot read: {e}")))?;
  match reader.format() {
    None => {
      return Err(Error::image(
        name,
        "unrecognized or unsupported image format (supported: png, jpeg, webp, gif)",
      ));
    }
    Some(f) if !f.reading_enabled() => {
      return Err(Error::image(
        name,
        format!("unsupported image format {f:?} (supported: png, jpeg, webp, gif)"),
      ));
    }
    Some(_) => {}
  }
  let mut decoder = reader
    .into_decoder()
    .map_err(|e| Error::image(name, format!("cannot decode: {e}")))?;
  let (w, h) = decoder.dimensions();
  if w == 0 || h == 0 {
    return Err(Error::image(name, format!("zero-size image ({w}x{h})")));
  }
  if w as u64 * h as u64 > MAX_PIXELS {
    return Err(Error::image(
      name,
      format!("image too large ({w}x{h} pixels, limit {MAX_PIXELS})"),
    ));
  }
  // A missing or unreadable EXIF block means "no transform", as in PIL.
  let orientation = decoder
    .orientation()
    .unwrap_or(image::metadata::Orientation::NoTransforms);
  let mut img = DynamicImage::from_decoder(decoder)
    .map_err(|e| Error::image(name, format!("cannot decode: {e}")))?;
  img.apply_orientation(orientation);
  to_rgb(img, name, alpha)
}

/// Pillow's `SHIFTFORDIV255`: `a / 255` for the ranges used by
/// `ImagingAlphaComposite`.
fn div255(a: u32) -> u32 {
  ((a >> 8) + a) >> 8
}

/// `Image.alpha_composite(white, px)` then `.convert("RGB")` for one RGBA
/// pixel (Pillow's `AlphaComposite.c`, 7 extra bits of precision).
fn over_white(px: [u8; 4]) -> [u8; 3] {
  const PREC: u32 = 7;
  let sa = px[3] as u32;
  if sa == 0 {
    return [255, 255, 255];
  }
  let blend = 255 * (255 - sa);
  let outa255 = sa * 255 + blend;
  let coef1 = sa * 255 * 255 * (1 << PREC) / outa255;
  let coef2 = 255 * (1 << PREC) - coef1;
  let c = |s: u8| -> u8 {
    let t = s as u32 * coef1 + 255 * coef2;
    (div255(t + (0x80 << PREC)) >> PREC) as u8
  };
  [c(px[0]), c(px[1]), c(px[2])]
}

fn to_rgb(img: DynamicImage, name: &str, alpha: AlphaMode) -> Result<RgbImage> {
  let (w, h) = (img.width(), img.height());
  let data = if img.color().has_alpha() {
    let rgba = img.to_rgba8().into_raw();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for px in rgba.chunks_exact(4) {
      match alpha {
        AlphaMode::Drop => out.extend_from_slice(&px[..3]),
        AlphaMode::OverWhite => out.extend_from_slice(&over_white([px[0], px[1], px[2], px[3]])),
      }
    }
    out
  } else {
    img.to_rgb8().into_raw()
  };
  RgbImage::new(w, h, data).map_err(|e| Error::image(name, e.to_string()))
}

/// Pillow's resampling filters (`PIL.Image.Resampling`; the integer values
/// are the ones `preprocessor_config.json`'s `resample` uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
  /// `NEAREST` (0).
  Nearest,
  /// `LANCZOS` (1), support 3.
  Lanczos,
  /// `BILINEAR` (2), support 1.
  Bilinear,
  /// `BICUBIC` (3), support 2, `a = -0.5`.
  Bicubic,
  /// `BOX` (4), support 0.5.
  Box,
  /// `HAMMING` (5), support 1.
  Hamming,
}

impl Resample {
  /// From PIL's integer code.
  pub fn from_pil(code: i64) -> Option<Resample> {
    Some(match code {
      0 => Resample::Nearest,
      1 => Resample::Lanczos,
      2 => Resample::Bilinear,
      3 => Resample::Bicubic,
      4 => Resample::Box,
      5 => Resample::Hamming,
      _ => return None,
    })
  }

  fn support(self) -> f64 {
    match self {
      Resample::Nearest => 0.0,
      Resample::Box => 0.5,
      Resample::Bilinear | Resample::Hamming => 1.0,
      Resample::Bicubic => 2.0,
      Resample::Lanczos => 3.0,
    }
  }

  fn filter(self, x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
      if x == 0.0 {
        return 1.0;
      }
      let x = x * std::f64::consts::PI;
      x.sin() / x
    }
    match self {
      Resample::Nearest => 0.0,
      Resample::Box => {
        if x > -0.5 && x <= 0.5 {
          1.0
        } else {
          0.0
        }
      }
      Resample::Bilinear => {
        let x = x.abs();
        if x < 1.0 { 1.0 - x } else { 0.0 }
      }
      Resample::Hamming => {
        let x = x.abs();
        if x == 0.0 {
          1.0
        } else if x >= 1.0 {
          0.0
        } else {
          let x = x * std::f64::consts::PI;
          // Pillow writes the constants as C floats.
          x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
        }
      }
      Resample::Bicubic => {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
          ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
          (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
          0.0
        }
      }
      Resample::Lanczos => {
        if (-3.0..3.0).contains(&x) {
          sinc(x) * sinc(x / 3.0)
        } else {
          0.0
        }
      }
    }
  }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output
/// index, the first input index, the tap count and fixed-point weights.
struct Coeffs {
  ksize: usize,
  bounds: Vec<(usize, usize)>,
  k: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize, filter: Resample) -> Coeffs {
  let (in0, in1) = (0.0f32, in_size as f32);
  let scale = (in1 - in0) as f64 / out_size as f64;
  let filterscale = scale.max(1.0);
  let support = filter.support() * filterscale;
  let ksize = support.ceil() as usize * 2 + 1;
  let mut bounds = Vec::with_capacity(out_size);
  let mut k = vec![0i32; out_size * ksize];
  let mut w = vec![0f64; ksize];
  for xx in 0..out_size {
    let center = in0 as f64 + (xx as f64 + 0.5) * scale;
    let ss = 1.0 / filterscale;
    // C's (int) cast truncates toward zero.
    let xmin = ((center - support + 0.5) as i64).max(0) as usize;
    let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
    let n = xmax.saturating_sub(xmin).min(ksize);
    let mut ww = 0.0;
    for (x, wx) in w.iter_mut().enumerate().take(n) {
      let v = filter.filter((x as f64 + xmin as f64 - center + 0.5) * ss);
      *wx = v;
      ww += v;
    }
    for x in 0..n {
      let v = if ww != 0.0 { w[x] / ww } else { w[x] };
      let f = v * (1u32 << PRECISION_BITS) as f64;
      k[xx * ksize + x] = if v < 0.0 {
        (-0.5 + f) as i32
      } else {
        (0.5 + f) as i32
      };
    }
    bounds.push((xmin, n));
  }
  Coeffs { ksize, bounds, k }
}

fn clip8(v: i64) -> u8 {
  if v >= (1i64 << PRECISION_BITS << 8) {
    255
  } else if v <= 0 {
    0
  } else {
    (v >> PRECISION_BITS) as u8
  }
}

/// Resize to `width` x `height` with a Pillow filter, bit-identical to
/// `PIL.Image.resize((width, height), resample)` on an RGB image.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Resample) -> Result<RgbImage> {
  if width == 0 || height == 0 {
    return Err(Error::invalid(format!(
      "cannot resize to a zero size ({width}x{height})"
    )));
  }
  if width as u64 * height as u64 > MAX_PIXELS {
    return Err(Error::invalid(format!(
      "resize target {width}x{height} is too large"
    )));
  }
  if width == img.width && height == img.height {
    return Ok(img.clone());
  }
  if filter == Resample::Nearest {
    return Ok(resize_nearest(img, width, height));
  }
  let (iw, ih) = (img.width as usize, img.height as usize);
  let (ow, oh) = (width as usize, height as usize);
  // Pillow >= 13 runs the vertical pass first when the height shrinks by
  // more than twice as many pixels as the width (python-pillow PR 9549);
  // the intermediate rounding to 8 bits makes the order observable.
  let vertical_first = ow != iw && oh < ih && (ih - oh) as i64 > 2 * (iw as i64 - ow as i64);
  if vertical_first {
    let t = resample_rows(&img.data, iw, ih, oh, filter);
    let t = transpose(&t, iw, oh);
    let t = resample_rows(&t, oh, iw, ow, filter);
    return RgbImage::new(width, height, transpose(&t, oh, ow));
  }
  let t = if ow != iw {
    resample_cols(&img.data, iw, ih, ow, oh, filter)
  } else {
    img.data.clone()
  };
  if oh == ih {
    return RgbImage::new(width, height, t);
  }
  RgbImage::new(width, height, resample_rows(&t, ow, ih, oh, filter))
}

/// The horizontal pass over the rows the vertical pass will read (Pillow's
/// `ybox_first..ybox_last`); returns a full-height buffer (unread rows 0).
fn resample_cols(
  src: &[u8],
  iw: usize,
  ih: usize,
  ow: usize,
  oh: usize,
  filter: Resample,
) -> Vec<u8> {
  let horiz = precompute(iw, ow, filter);
  let (first, last) = if oh != ih {
    let vert = precompute(ih, oh, filter);
    (
      vert.bounds[0].0,
      vert.bounds[oh - 1].0 + vert.bounds[oh - 1].1,
    )
  } else {
    (0, ih)
  };
  let mut out = vec![0u8; ih * ow * 3];
  for y in first..last {
    let row = &src[y * iw * 3..(y + 1) * iw * 3];
    for xx in 0..ow {
      let (xmin, n) = horiz.bounds[xx];
      let k = &horiz.k[xx * horiz.ksize..xx * horiz.ksize + n];
      for c in 0..3 {
        let mut ss: i64 = 1 << (PRECISION_BITS - 1);
        for (x, &kx) in k.iter().enumerate() {
          ss += row[(x + xmin) * 3 + c] as i64 * kx as i64;
        }
        out[(y * ow + xx) * 3 + c] = clip8(ss);
      }
    }
  }
  out
}

/// The vertical pass: `[ih, w, 3]` -> `[oh, w, 3]`.
fn resample_rows(src: &[u8], w: usize, ih: usize, oh: usize, filter: Resample) -> Vec<u8> {
  let vert = precompute(ih, oh, filter);
  let mut out = vec![0u8; oh * w * 3];
  for yy in 0..oh {
    let (ymin, n) = vert.bounds[yy];
    let k = &vert.k[yy * vert.ksize..yy * vert.ksize + n];
    for x in 0..w {
      for c in 0..3 {
        let mut ss: i64 = 1 << (PRECISION_BITS - 1);
        for (y, &ky) in k.iter().enumerate() {
          ss += src[((y + ymin) * w + x) * 3 + c] as i64 * ky as i64;
        }
        out[(yy * w + x) * 3 + c] = clip8(ss);
      }
    }
  }
  out
}

/// `[h, w, 3]` -> `[w, h, 3]`.
fn transpose(src: &[u8], w: usize, h: usize) -> Vec<u8> {
  let mut out = vec![0u8; src.len()];
  for y in 0..h {
    for x in 0..w {
      let (s, d) = ((y * w + x) * 3, (x * h + y) * 3);
      out[d..d + 3].copy_from_slice(&src[s..s + 3]);
    }
  }
  out
}

/// Pillow's `NEAREST` resize (an affine transform sampling pixel centres).
fn resize_nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
  let (iw, ih) = (img.width as usize, img.height as usize);
  let (ow, oh) = (width as usize, height as usize);
  let sx = iw as f64 / ow as f64;
  let sy = ih as f64 / oh as f64;
  let mut out = vec![0u8; ow * oh * 3];
  let mut yo = sy * 0.5;
  for y in 0..oh {
    let yin = if yo < 0.0 {
      0
    } else {
      (yo as usize).min(ih - 1)
    };
    let mut xo = sx * 0.5;
    for x in 0..ow {
      let xin = if xo < 0.0 {
        0
      } else {
        (xo as usize).min(iw - 1)
      };
      let s = (yin * iw + xin) * 3;
      out[(y * ow + x) * 3..(y * ow + x) * 3 + 3].copy_from_slice(&img.data[s..s + 3]);
      xo += sx;
    }
    yo += sy;
  }
  RgbImage {
    width,
    height,
    data: out,
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn zero_size_and_bad_data_are_errors() {
    assert!(RgbImage::new(0, 3, vec![]).is_err());
    assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
  }

  #[test]
  fn over_white_matches_pillow_corner_cases() {
    assert_eq!(over_white([10, 20, 30, 255]), [10, 20, 30]);
    assert_eq!(over_white([10, 20, 30, 0]), [255, 255, 255]);
    // 50% black over white is mid grey.
    let g = over_white([0, 0, 0, 128])[0];
    assert!((126..=128).contains(&g), "{g}");
  }

  #[test]
  fn identity_resize_copies_and_constant_stays_constant() {
    let img = RgbImage::new(5, 3, vec![77; 45]).unwrap();
    assert_eq!(resize(&img, 5, 3, Resample::Bicubic).unwrap(), img);
    for f in [
      Resample::Bicubic,
      Resample::Bilinear,
      Resample::Lanczos,
      Resample::Box,
      Resample::Hamming,
    ] {
      let r = resize(&img, 11, 2, f).unwrap();
      assert!(r.as_raw().iter().all(|&v| v == 77), "{f:?}");
    }
    assert!(resize(&img, 0, 2, Resample::Bicubic).is_err());
  }

  #[test]
  fn decode_errors_are_clear() {
    let e = decode_image(b"", AlphaMode::Drop).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = decode_image(b"definitely not an image", AlphaMode::Drop)
      .unwrap_err()
      .to_string();
    assert!(e.contains("unrecognized"), "{e}");
    // A BMP header: recognized, but not a supported format.
    let e = decode_image(b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0", AlphaMode::Drop)
      .unwrap_err()
      .to_string();
    assert!(
      e.contains("unsupported") || e.contains("unrecognized"),
      "{e}"
    );
  }
}
