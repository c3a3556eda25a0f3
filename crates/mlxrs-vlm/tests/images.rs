//! Image decoding, Pillow-exact resizing and the Qwen2-VL image processor
//! against the references of `scripts/make_vlm_fixtures.py`
//! (`models/tiny-vlm/images/`): transformers' `Qwen2VLImageProcessorPil`
//! pixel values (tolerance 1e-4), Pillow resizes (exact), bad images (clear
//! errors).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxrs_core::Array;
use mlxrs_vlm::image::{AlphaMode, Resample, RgbImage, decode_image, load_image, resize};
use mlxrs_vlm::processors::Qwen2VlImageProcessor;
use serde_json::Value;

const TOL: f32 = 1e-4;

fn dir() -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm/images")
}

struct Refs {
  json: Value,
  tensors: HashMap<String, Array>,
}

fn refs() -> Refs {
  let json: Value =
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap();
  let (tensors, _) = mlxrs_core::io::load_safetensors(dir().join("reference.safetensors")).unwrap();
  Refs { json, tensors }
}

fn u8_tensor(r: &Refs, key: &str) -> (Vec<i32>, Vec<u8>) {
  let mut a = r
    .tensors
    .get(key)
    .unwrap_or_else(|| panic!("missing {key}"))
    .clone();
  (a.shape(), a.to_vec::<u8>().unwrap())
}

/// Max absolute difference and count of differing bytes.
fn byte_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
  assert_eq!(a.len(), b.len());
  let mut max = 0;
  let mut n = 0;
  for (x, y) in a.iter().zip(b) {
    let d = x.abs_diff(*y);
    max = max.max(d);
    n += (d > 0) as usize;
  }
  (max, n)
}

fn processor() -> Qwen2VlImageProcessor {
  Qwen2VlImageProcessor::from_dir(dir().join("../qwen2_vl")).unwrap()
}

#[test]
fn pixel_values_match_transformers() {
  let r = refs();
  let p = processor();
  let mut worst = 0f32;
  let mut report = Vec::new();
  for case in r.json["cases"].as_array().unwrap() {
    let name = case["case"].as_str().unwrap();
    let file = case["file"].as_str().unwrap();
    let alpha = if case["alpha"] == "over_white" {
      AlphaMode::OverWhite
    } else {
      AlphaMode::Drop
    };
    let img = load_image(dir().join(file), alpha).unwrap();
    let want_size: Vec<u64> = case["decoded_size"]
      .as_array()
      .unwrap()
      .iter()
      .map(|v| v.as_u64().unwrap())
      .collect();
    assert_eq!(
      [img.width() as u64, img.height() as u64],
      [want_size[0], want_size[1]],
      "{name}: decoded size"
    );
    // Decoders: exact for lossless formats; the JPEG decoder (zune-jpeg vs
    // libjpeg-turbo) may differ by a little.
    let jpeg = file.ends_with(".jpg");
    if r.tensors.contains_key(&format!("{name}.decoded")) {
      let (_, want) = u8_tensor(&r, &format!("{name}.decoded"));
      let (max, n) = byte_diff(img.as_raw(), &want);
      report.push(format!("{name}: decoded max diff {max} ({n} bytes)"));
      if !jpeg {
        assert_eq!(max, 0, "{name}: decoded pixels differ from Pillow");
      }
    }
    // Resize: bit-identical to Pillow (from Pillow's own decoded pixels for
    // the JPEG, so the decoder difference is not counted twice).
    let src = if jpeg {
      let (s, want) = u8_tensor(&r, &format!("{name}.decoded"));
      RgbImage::new(s[1] as u32, s[0] as u32, want).unwrap()
    } else {
      img.clone()
    };
    let resized = p.resize_image(&src).unwrap();
    let (rs, want_resized) = u8_tensor(&r, &format!("{name}.resized"));
    assert_eq!(
      [resized.height() as i32, resized.width() as i32],
      [rs[0], rs[1]],
      "{name}: resized size"
    );
    let (max, n) = byte_diff(resized.as_raw(), &want_resized);
    assert_eq!((max, n), (0, 0), "{name}: resize differs from Pillow");
    // Pixel values.
    let pv = p.preprocess(std::slice::from_ref(&src)).unwrap();
    let grid: Vec<u64> = case["image_grid_thw"]
      .as_array()
      .unwrap()
      .iter()
      .map(|v| v.as_u64().unwrap())
      .collect();
    assert_eq!(
      pv.grid_thw,
      vec![[grid[0] as u32, grid[1] as u32, grid[2] as u32]],
      "{name}"
    );
    let shape: Vec<usize> = case["shape"]
      .as_array()
      .unwrap()
      .iter()
      .map(|v| v.as_u64().unwrap() as usize)
      .collect();
    assert_eq!((pv.rows, pv.cols), (shape[0], shape[1]), "{name}");
    let mut rows = r.tensors[&format!("{name}.rows")].clone();
    let want_rows = rows.to_vec::<f32>().unwrap();
    for (j, ri) in case["sample_rows"].as_array().unwrap().iter().enumerate() {
      let ri = ri.as_u64().unwrap() as usize;
      let got = pv.row(ri).unwrap();
      let want = &want_rows[j * pv.cols..(j + 1) * pv.cols];
      for (g, w) in got.iter().zip(want) {
        worst = worst.max((g - w).abs());
      }
    }
    let sum: f64 = pv.data.iter().map(|&v| v as f64).sum();
    let abs_sum: f64 = pv.data.iter().map(|&v| (v as f64).abs()).sum();
    let n = pv.data.len() as f64;
    assert!(
      (sum - case["sum"].as_f64().unwrap()).abs() < 1e-5 * n,
      "{name}: sum {sum} vs {}",
      case["sum"]
    );
    assert!(
      (abs_sum - case["abs_sum"].as_f64().unwrap()).abs() < 1e-5 * n,
      "{name}: abs sum"
    );
    // The JPEG through our own decoder stays close.
    if jpeg {
      let own = p.preprocess(std::slice::from_ref(&img)).unwrap();
      let d = own
        .data
        .iter()
        .zip(&pv.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
      report.push(format!(
        "{name}: pixel values through zune-jpeg max diff {d:.4}"
      ));
    }
  }
  eprintln!(
    "{}\npixel values: max |diff| vs transformers = {worst:e}",
    report.join("\n")
  );
  assert!(worst <= TOL, "pixel values differ by {worst}");
}

#[test]
fn every_pillow_filter_is_bit_exact() {
  let r = refs();
  let f = &r.json["filters"];
  let img = load_image(dir().join(f["image"].as_str().unwrap()), AlphaMode::Drop).unwrap();
  for e in f["resizes"].as_array().unwrap() {
    let name = e["filter"].as_str().unwrap();
    let filter = Resample::from_pil(e["code"].as_i64().unwrap()).unwrap();
    let (w, h) = (
      e["size"][0].as_u64().unwrap() as u32,
      e["size"][1].as_u64().unwrap() as u32,
    );
    let got = resize(&img, w, h, filter).unwrap();
    let (_, want) = u8_tensor(&r, &format!("filter.{name}.{w}x{h}"));
    assert_eq!(byte_diff(got.as_raw(), &want), (0, 0), "{name} {w}x{h}");
  }
}

#[test]
fn refused_images_give_clear_errors() {
  let r = refs();
  let p = processor();
  for e in r.json["errors"].as_array().unwrap() {
    let file = e["file"].as_str().unwrap();
    let res = load_image(dir().join(file), AlphaMode::Drop).and_then(|img| p.preprocess(&[img]));
    let msg = res.expect_err(file).to_string();
    let expect = e["expect"].as_str().unwrap();
    assert!(msg.contains(expect), "{file}: {msg}");
    eprintln!(
      "{file}: {msg}  (python: {})",
      e["python_error"].as_str().unwrap()
    );
  }
}

#[test]
fn bad_image_inputs() {
  // Missing file: names the path.
  let e = load_image(dir().join("nope.png"), AlphaMode::Drop)
    .unwrap_err()
    .to_string();
  assert!(e.contains("nope.png") && e.contains("cannot read"), "{e}");
  // Corrupt / unsupported bytes.
  let e = decode_image(b"GIF89a", AlphaMode::Drop)
    .unwrap_err()
    .to_string();
  assert!(e.contains("decode"), "{e}");
  let e = decode_image(b"\x00\x01\x02\x03 random", AlphaMode::Drop)
    .unwrap_err()
    .to_string();
  assert!(e.contains("unrecognized or unsupported"), "{e}");
  // A PNG whose header says 0x0 pixels.
  let mut png =
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x00\x00\x00\x00\x00\x08\x02\x00\x00\x00"
      .to_vec();
  png.extend_from_slice(&[0, 0, 0, 0]);
  let e = decode_image(&png, AlphaMode::Drop).unwrap_err().to_string();
  assert!(e.contains("image <bytes>"), "{e}");
  // No images to process.
  assert!(processor().preprocess(&[]).is_err());
}
