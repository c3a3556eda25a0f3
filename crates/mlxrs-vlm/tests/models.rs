//! The tiny Qwen2-VL / Qwen2.5-VL checkpoints of `models/tiny-vlm/` against
//! mlx-vlm's references (`scripts/make_vlm_fixtures.py`): prompt ids and
//! grids exact, last-position logits within 1e-4 (float32), 20 greedy tokens
//! exact; plus generation through the streaming API and bad-input errors.

use std::path::{Path, PathBuf};

use mlxrs_vlm::{
  GenerateOptions, LoadOptions, RgbImage, SamplerConfig, StepConfig, VlmInput, VlmModel, load_dir,
};
use serde_json::Value;

const LOGIT_TOL: f32 = 1e-4;

fn root() -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn model(arch: &str) -> VlmModel {
  load_dir(&root().join("tiny-vlm").join(arch), &LoadOptions::default()).unwrap()
}

fn reference(arch: &str) -> Value {
  let p = root().join("tiny-vlm").join(arch).join("reference.json");
  serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn images(m: &VlmModel, case: &Value) -> Vec<RgbImage> {
  let files: Vec<PathBuf> = case["images"]
    .as_array()
    .unwrap()
    .iter()
    .map(|f| root().join("tiny-vlm/images").join(f.as_str().unwrap()))
    .collect();
  m.load_images(&files).unwrap()
}

fn greedy(max_tokens: usize) -> StepConfig {
  StepConfig {
    max_tokens,
    sampler: SamplerConfig {
      temp: 0.0,
      ..SamplerConfig::default()
    },
    ..StepConfig::default()
  }
}

fn check_arch(arch: &str) {
  let m = model(arch);
  let r = reference(arch);
  let mut worst = 0f32;
  for case in r["cases"].as_array().unwrap() {
    let name = case["name"].as_str().unwrap();
    let imgs = images(&m, case);
    let text = m
      .format_prompt(case["prompt"].as_str().unwrap(), imgs.len(), None)
      .unwrap();
    assert_eq!(
      text,
      case["prompt_text"].as_str().unwrap(),
      "{arch}/{name}: prompt text"
    );
    let input = m
      .prepare(case["prompt"].as_str().unwrap(), &imgs, None, false)
      .unwrap();
    let want_ids: Vec<u32> = case["input_ids"]
      .as_array()
      .unwrap()
      .iter()
      .map(|v| v.as_u64().unwrap() as u32)
      .collect();
    assert_eq!(input.input_ids, want_ids, "{arch}/{name}: input ids");
    let want_grid: Vec<[u32; 3]> = case["image_grid_thw"]
      .as_array()
      .unwrap()
      .iter()
      .map(|g| {
        let g: Vec<u32> = g
          .as_array()
          .unwrap()
          .iter()
          .map(|v| v.as_u64().unwrap() as u32)
          .collect();
        [g[0], g[1], g[2]]
      })
      .collect();
    assert_eq!(
      input.image_grid_thw(),
      want_grid.as_slice(),
      "{arch}/{name}: grids"
    );
    if let Some(sizes) = case.get("image_sizes").and_then(Value::as_array) {
      let want: Vec<[u32; 2]> = sizes
        .iter()
        .map(|s| [s[0].as_u64().unwrap() as u32, s[1].as_u64().unwrap() as u32])
        .collect();
      assert_eq!(input.image_sizes, want, "{arch}/{name}: image_sizes");
    }
    if let Some(pv) = &input.pixel_values {
      let sum: f64 = pv.data.iter().map(|&v| v as f64).sum();
      let want = case["pixel_values"]["sum"].as_f64().unwrap();
      // mlx-vlm rescales in float32 (transformers in float64): ~1 ulp apart.
      assert!(
        (sum - want).abs() < 1e-6 * pv.data.len() as f64,
        "{arch}/{name}: pixel sum {sum} vs {want}"
      );
    }
    if let Some(pv) = &input.clip_pixels {
      // Every value against transformers' CLIPImageProcessor (what
      // mlx-vlm's LlavaProcessor runs), saved by the fixture script.
      let dir = root().join("tiny-vlm").join(arch);
      let (mut t, _) =
        mlxrs_core::io::load_safetensors(dir.join("pixel_values.safetensors")).unwrap();
      let want = t.get_mut(name).unwrap();
      assert_eq!(
        want.shape(),
        vec![pv.n as i32, 3, pv.height as i32, pv.width as i32],
        "{arch}/{name}: pixel shape"
      );
      let want = want.to_vec::<f32>().unwrap();
      let d = pv
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
      assert!(d <= 1e-4, "{arch}/{name}: pixel values max diff {d}");
      eprintln!("{arch}/{name}: pixel values max diff {d:e}");
    }
    // Logits of a full forward.
    let mut logits = m.prompt_logits(&input).unwrap();
    let got = logits.to_vec::<f32>().unwrap();
    let want: Vec<f32> = case["logits_last"]
      .as_array()
      .unwrap()
      .iter()
      .map(|v| v.as_f64().unwrap() as f32)
      .collect();
    assert_eq!(got.len(), want.len());
    let d = got
      .iter()
      .zip(&want)
      .map(|(a, b)| (a - b).abs())
      .fold(0f32, f32::max);
    worst = worst.max(d);
    assert!(d <= LOGIT_TOL, "{arch}/{name}: max logit diff {d}");
    // 20 greedy tokens (EOS not honoured), through the cached decode loop.
    let want_tokens: Vec<i32> = case["greedy_tokens"]
      .as_array()
      .unwrap()
      .iter()
      .map(|v| v.as_i64().unwrap() as i32)
      .collect();
    let toks: Vec<i32> = m
      .token_generator(&input, &greedy(want_tokens.len()))
      .unwrap()
      .map(|s| s.unwrap().token)
      .collect();
    assert_eq!(toks, want_tokens, "{arch}/{name}: greedy tokens");
    eprintln!(
      "{arch}/{name}: max logit diff {d:e}, {} greedy tokens exact",
      toks.len()
    );
  }
  eprintln!("{arch}: worst max logit diff {worst:e}");
}

#[test]
fn qwen2_vl_matches_mlx_vlm() {
  check_arch("qwen2_vl");
}

#[test]
fn qwen2_5_vl_matches_mlx_vlm() {
  check_arch("qwen2_5_vl");
}

#[test]
fn llava_matches_mlx_vlm() {
  // CLIP tower (feature layer -2, class token dropped), projector, llama LM.
  check_arch("llava");
}

#[test]
fn llava_next_matches_transformers() {
  // Any-resolution tiles (base + best-resolution grid), unpadded feature
  // grid with image_newline per row; one image, a tall one, two images
  // (one 45:1 wide) and text only. Ids and pixel values: mlx-vlm's
  // processor == transformers' LlavaNextProcessor; logits and greedy
  // tokens: transformers' LlavaNextForConditionalGeneration (float32).
  check_arch("llava_next");
}

#[test]
fn llava_next_pixels_match_transformers() {
  // transformers' LlavaNextImageProcessorPil on varied images, every
  // value (the batch padding dropped), tolerance 1e-4.
  let dir = root().join("tiny-vlm/llava_next");
  let r = reference("llava_next");
  let p = mlxrs_vlm::processors::LlavaNextImageProcessor::from_dir(&dir, None).unwrap();
  let (mut t, _) = mlxrs_core::io::load_safetensors(dir.join("pixel_values.safetensors")).unwrap();
  let cases = r["pixel_cases"].as_array().unwrap();
  assert!(cases.len() >= 7);
  for case in cases {
    let f = case["image"].as_str().unwrap();
    let img = mlxrs_vlm::load_image(
      root().join("tiny-vlm/images").join(f),
      mlxrs_vlm::AlphaMode::Drop,
    )
    .unwrap();
    let (pv, sizes) = p.preprocess(&[img]).unwrap();
    let s = &case["image_sizes"][0];
    assert_eq!(
      sizes,
      vec![[s[0].as_u64().unwrap() as u32, s[1].as_u64().unwrap() as u32]],
      "{f}: image_sizes"
    );
    let want = t.get_mut(&format!("img.{f}")).unwrap();
    assert_eq!(
      want.shape(),
      vec![pv.n as i32, 3, pv.height as i32, pv.width as i32],
      "{f}: pixel shape"
    );
    let want = want.to_vec::<f32>().unwrap();
    let d = pv
      .data
      .iter()
      .zip(&want)
      .map(|(a, b)| (a - b).abs())
      .fold(0f32, f32::max);
    assert!(d <= 1e-4, "{f}: pixel values max diff {d}");
    eprintln!("llava_next pixels {f}: {} tiles, max diff {d:e}", pv.n);
  }
}

#[test]
fn llava_next_bad_input_is_an_error() {
  let m = model("llava_next");
  assert_eq!(m.model_type(), "llava_next");
  assert_eq!(m.image_token(), "<image>");
  let imgs = m
    .load_images(&[
      root().join("tiny-vlm/images/scene_a_64x48.png"),
      root().join("tiny-vlm/images/scene_b_90x60.png"),
    ])
    .unwrap();
  // More images than placeholders, and the reverse.
  let e = err(m.process("USER: <image>\nhi", &imgs));
  assert!(
    e.contains("1 image placeholder(s)") && e.contains("2 image(s)"),
    "{e}"
  );
  let e = err(m.process("USER: <image><image>\nhi", &imgs[..1]));
  assert!(
    e.contains("2 image placeholder(s)") && e.contains("1 image(s)"),
    "{e}"
  );
  let e = err(m.process("USER: hi", &imgs[..1]));
  assert!(e.contains("0 image placeholder(s)"), "{e}");
  // Image tokens without pixels, pixels without image_sizes, a tile
  // count that does not match image_sizes, too few image tokens.
  let input = m.process("USER: <image>\nhi", &imgs[..1]).unwrap();
  let mut no_px = input.clone();
  no_px.clip_pixels = None;
  let e = err(m.prompt_logits(&no_px));
  assert!(e.contains("but no images"), "{e}");
  let mut no_sizes = input.clone();
  no_sizes.image_sizes.clear();
  let e = err(m.prompt_logits(&no_sizes));
  assert!(e.contains("image_sizes"), "{e}");
  let mut bad_tiles = input.clone();
  bad_tiles.image_sizes = vec![[900, 20]];
  let e = err(m.prompt_logits(&bad_tiles));
  assert!(e.contains("tiles"), "{e}");
  let mut short = input.clone();
  let first = short.input_ids.iter().position(|&t| t == 400).unwrap();
  short.input_ids.remove(first);
  let e = err(m.prompt_logits(&short));
  assert!(e.contains("image token(s) but the images make"), "{e}");
  // Zero-size images cannot be built or decoded (a PNG whose header says
  // 0x1).
  let e = err(RgbImage::new(0, 5, vec![]));
  assert!(e.contains("zero-size image"), "{e}");
  let e = err(mlxrs_vlm::decode_image(
    &png_header_only(0, 1),
    mlxrs_vlm::AlphaMode::Drop,
  ));
  assert!(!e.is_empty());
}

/// A PNG signature + IHDR of `w x h` (8-bit RGB) + IEND, no image data.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
  fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
      c ^= b as u32;
      for _ in 0..8 {
        c = if c & 1 != 0 {
          0xedb8_8320 ^ (c >> 1)
        } else {
          c >> 1
        };
      }
    }
    !c
  }
  fn chunk(out: &mut Vec<u8>, ty: &[u8], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut td = ty.to_vec();
    td.extend_from_slice(data);
    out.extend_from_slice(&td);
    out.extend_from_slice(&crc32(&td).to_be_bytes());
  }
  let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
  let mut ihdr = Vec::new();
  ihdr.extend_from_slice(&w.to_be_bytes());
  ihdr.extend_from_slice(&h.to_be_bytes());
  ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
  chunk(&mut out, b"IHDR", &ihdr);
  chunk(&mut out, b"IEND", &[]);
  out
}

#[test]
fn idefics3_matches_mlx_vlm() {
  // SigLIP-style tower with mlx-vlm's bucketed positions (6x6 patches:
  // 0 1 2 3 4 4), pixel-shuffle connector, llama LM; images split into
  // tiles + a global image with <fake_token_around_image>/<row_r_col_c>/
  // <global-img> prompts. One image, two (one 45:1 wide), a 1x1, text.
  check_arch("idefics3");
}

#[test]
fn smolvlm_matches_mlx_vlm() {
  // model_type smolvlm: mlx-vlm's alias of the Idefics3 model, with
  // transformers' SmolVLMImageProcessor.
  check_arch("smolvlm");
}

#[test]
fn idefics3_pixels_match_transformers() {
  // transformers' Idefics3ImageProcessorPil (resize longest edge, resize
  // to tile multiples, tiles + global; all LANCZOS) on varied images, every
  // value, tolerance 1e-4 (SmolVLMImageProcessorPil is the same code; the
  // smolvlm model cases check it).
  for arch in ["idefics3"] {
    let dir = root().join("tiny-vlm").join(arch);
    let r = reference(arch);
    let p = mlxrs_vlm::processors::Idefics3ImageProcessor::from_dir(&dir).unwrap();
    let (mut t, _) =
      mlxrs_core::io::load_safetensors(dir.join("pixel_values.safetensors")).unwrap();
    let cases = r["pixel_cases"].as_array().unwrap();
    assert!(cases.len() >= 7);
    for case in cases {
      let f = case["image"].as_str().unwrap();
      let img = mlxrs_vlm::load_image(
        root().join("tiny-vlm/images").join(f),
        mlxrs_vlm::AlphaMode::Drop,
      )
      .unwrap();
      let (pv, grids) = p.preprocess(&[img]).unwrap();
      let rc = &case["rows_cols"][0];
      assert_eq!(
        grids,
        vec![(
          rc[0].as_u64().unwrap() as u32,
          rc[1].as_u64().unwrap() as u32
        )],
        "{arch} {f}: rows / cols"
      );
      let want = t.get_mut(&format!("img.{f}")).unwrap();
      assert_eq!(
        want.shape(),
        vec![pv.n as i32, 3, pv.height as i32, pv.width as i32],
        "{arch} {f}: pixel shape"
      );
      let want = want.to_vec::<f32>().unwrap();
      let d = pv
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
      assert!(d <= 1e-4, "{arch} {f}: pixel values max diff {d}");
      eprintln!("{arch} pixels {f}: {} frames, max diff {d:e}", pv.n);
    }
  }
}

#[test]
fn idefics3_bad_input_is_an_error() {
  let m = model("idefics3");
  assert_eq!(m.image_token(), "<image>");
  let imgs = m
    .load_images(&[
      root().join("tiny-vlm/images/scene_a_64x48.png"),
      root().join("tiny-vlm/images/scene_b_90x60.png"),
    ])
    .unwrap();
  let e = err(m.process("User:<image>hi", &imgs));
  assert!(
    e.contains("1 image placeholder(s)") && e.contains("2 image(s)"),
    "{e}"
  );
  let e = err(m.process("User:<image><image>hi", &imgs[..1]));
  assert!(
    e.contains("2 image placeholder(s)") && e.contains("1 image(s)"),
    "{e}"
  );
  let e = err(m.process("User: hi", &imgs[..1]));
  assert!(e.contains("0 image placeholder(s)"), "{e}");
  // The expansion: 2x2 tiles + global, 9 tokens each.
  let input = m.process("User:<image>hi", &imgs[..1]).unwrap();
  let img_id = m.tokenizer().token_to_id("<image>").unwrap();
  assert_eq!(
    input.input_ids.iter().filter(|&&t| t == img_id).count(),
    5 * 9
  );
  assert_eq!(input.clip_pixels.as_ref().unwrap().n, 5);
  let text = m.tokenizer().decode(&input.input_ids, false).unwrap();
  assert!(
    text.contains("<fake_token_around_image><row_2_col_2><image>")
      && text.contains("\n\n<fake_token_around_image><global-img><image>"),
    "{text}"
  );
  let mut no_px = input.clone();
  no_px.clip_pixels = None;
  let e = err(m.prompt_logits(&no_px));
  assert!(e.contains("but no images"), "{e}");
  let mut extra = input.clone();
  let pv = extra.clip_pixels.as_mut().unwrap();
  pv.data.extend_from_within(..pv.data.len() / 5);
  pv.n = 6;
  let e = err(m.prompt_logits(&extra));
  assert!(e.contains("make 54 features"), "{e}");
  // Zero-size images cannot exist.
  let e = err(RgbImage::new(5, 0, vec![]));
  assert!(e.contains("zero-size image"), "{e}");
}

#[test]
fn paligemma_matches_mlx_vlm() {
  // SigLIP tower, linear projector, Gemma LM; one image per prompt, the
  // prompt attends bidirectionally (mlx-vlm's generation path).
  check_arch("paligemma");
}

#[test]
fn gemma3_matches_mlx_vlm() {
  // SigLIP tower, avg-pool + RMSNorm projector, Gemma 3 text with a
  // sliding-window layer (window 8, shorter than every prompt).
  check_arch("gemma3");
}

#[test]
fn qwen2_vl_4bit_matches_mlx_vlm() {
  // mlx-vlm's converter output: 4-bit language model, float vision tower.
  check_arch("qwen2_vl-4bit");
}

#[test]
fn streaming_generation_uses_the_lm_pipeline() {
  let m = model("qwen2_vl");
  let r = reference("qwen2_vl");
  let case = &r["cases"][0];
  let imgs = images(&m, case);
  let input = m
    .prepare(case["prompt"].as_str().unwrap(), &imgs, None, false)
    .unwrap();
  let want: Vec<i32> = case["greedy_tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_i64().unwrap() as i32)
    .collect();
  // Chunked prefill (chunks of 7 tokens cut through the image tokens).
  let opts = GenerateOptions {
    step: StepConfig {
      prefill_step_size: 7,
      ..greedy(12)
    },
    stop: vec![],
  };
  let out = m.generate(&input, &opts).unwrap();
  let eos = m.tokenizer().eos_token_ids().to_vec();
  let until_eos: Vec<i32> = want
    .iter()
    .copied()
    .take_while(|t| !eos.contains(&(*t as u32)))
    .take(12)
    .collect();
  assert_eq!(&out.tokens[..until_eos.len()], until_eos.as_slice());
  let text: String = m
    .stream(
      &input,
      &GenerateOptions {
        step: greedy(12),
        stop: vec![],
      },
    )
    .unwrap()
    .map(|r| r.unwrap().text)
    .collect();
  assert_eq!(text, out.text);
  let decoded = m
    .tokenizer()
    .decode(
      &out.tokens.iter().map(|&t| t as u32).collect::<Vec<_>>(),
      true,
    )
    .unwrap();
  assert_eq!(text, decoded);
  // A rotating cache (max_kv_size) also works.
  let opts = GenerateOptions {
    step: StepConfig {
      max_kv_size: Some(256),
      ..greedy(5)
    },
    stop: vec![],
  };
  let o2 = m.generate(&input, &opts).unwrap();
  assert_eq!(&o2.tokens[..], &out.tokens[..o2.tokens.len()]);
}

#[test]
fn text_follow_up_reuses_the_image_turn_cache() {
  // A second, text-only turn continues the first turn's caches: its
  // positions continue at offset + rope_delta (mlx-vlm's decode rule).
  let m = model("qwen2_vl");
  let img = m
    .load_images(&[root().join("tiny-vlm/images/scene_a_64x48.png")])
    .unwrap();
  let input = m
    .prepare("Describe this image.", &img, None, false)
    .unwrap();
  let opts = GenerateOptions {
    step: greedy(4),
    stop: vec![],
  };
  let mut s = m.stream(&input, &opts).unwrap();
  for r in &mut s {
    r.unwrap();
  }
  let cache = s.into_cache();
  let follow = m
    .tokenizer()
    .encode("<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n", false)
    .unwrap();
  let n: Vec<_> = mlxrs_vlm::TextStream::new(&m.lm, &follow, &opts, Some(cache))
    .unwrap()
    .collect();
  assert!(!n.is_empty() && n.iter().all(|r| r.is_ok()));
}

#[test]
fn several_images_in_chat_messages() {
  // Explicit messages with image parts, in the same order as the reference.
  let m = model("qwen2_vl");
  let r = reference("qwen2_vl");
  let case = &r["cases"][1];
  let imgs = images(&m, case);
  let msg = m.user_message(case["prompt"].as_str().unwrap(), 2);
  let text = m.apply_chat_template(&[msg]).unwrap();
  let input = m.process(&text, &imgs).unwrap();
  let want_ids: Vec<u32> = case["input_ids"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_u64().unwrap() as u32)
    .collect();
  assert_eq!(input.input_ids, want_ids);
}

fn err<T: std::fmt::Debug>(r: mlxrs_vlm::Result<T>) -> String {
  r.expect_err("expected an error").to_string()
}

#[test]
fn bad_inputs_give_clear_errors() {
  let m = model("qwen2_vl");
  let img = m
    .load_images(&[root().join("tiny-vlm/images/scene_a_64x48.png")])
    .unwrap();
  let two = [img[0].clone(), img[0].clone()];
  // More images than placeholders, and the reverse.
  let text = m.format_prompt("Describe.", 1, None).unwrap();
  let e = err(m.process(&text, &two));
  assert!(
    e.contains("1 image placeholder(s)") && e.contains("2 image(s)"),
    "{e}"
  );
  let text2 = m.format_prompt("Describe.", 2, None).unwrap();
  let e = err(m.process(&text2, &img));
  assert!(
    e.contains("2 image placeholder(s)") && e.contains("1 image(s)"),
    "{e}"
  );
  // Raw prompt without placeholders.
  let e = err(m.prepare("no placeholder here", &img, None, true));
  assert!(e.contains("0 image placeholder(s)"), "{e}");
  // Image tokens without pixel values, and a hand-made input whose token
  // count does not match its images.
  let mut input = m.prepare("Describe.", &img, None, false).unwrap();
  let pv = input.pixel_values.take();
  let e = err(m.prompt_logits(&input));
  assert!(e.contains("but no images"), "{e}");
  input.pixel_values = pv;
  input
    .input_ids
    .retain(|&t| t != m.tokenizer().token_to_id("<|image_pad|>").unwrap());
  input
    .input_ids
    .push(m.tokenizer().token_to_id("<|image_pad|>").unwrap());
  let e = err(m.prompt_logits(&input));
  assert!(
    e.contains("1 image token(s)") && e.contains("4 features"),
    "{e}"
  );
  // Corrupt / unsupported / missing image files name the file.
  let e = err(m.load_images(&[root().join("tiny-vlm/images/truncated.png")]));
  assert!(e.contains("truncated.png") && e.contains("decode"), "{e}");
  let e = err(m.load_images(&[root().join("tiny-vlm/qwen2_vl/config.json")]));
  assert!(
    e.contains("config.json") && e.contains("unsupported"),
    "{e}"
  );
  let e = err(m.load_images(&[root().join("tiny-vlm/images/missing.png")]));
  assert!(e.contains("missing.png"), "{e}");
  // Aspect ratio beyond 200.
  let wide = m
    .load_images(&[root().join("tiny-vlm/images/too_wide_301x1.png")])
    .unwrap();
  let e = err(m.prepare("x", &wide, None, false));
  assert!(e.contains("aspect ratio"), "{e}");
  // A text-only model refuses to load as a VLM.
  let e = err(load_dir(
    &root().join("tiny/llama"),
    &LoadOptions::default(),
  ));
  assert!(e.contains("text-only") && e.contains("llama"), "{e}");
  assert!(!mlxrs_vlm::is_vlm_dir(root().join("tiny/llama")).unwrap());
  assert!(mlxrs_vlm::is_vlm_dir(root().join("tiny-vlm/qwen2_vl")).unwrap());
  // Videos are not supported: a clear error, not garbage.
  let e = err(m.process(
    "<|vision_start|><|video_pad|><|vision_end|>What happens?",
    &[],
  ));
  assert!(e.contains("video"), "{e}");
  // Text-only prompts still work (no images, no placeholders).
  let t = m.prepare("Hello", &[], None, false).unwrap();
  assert!(t.pixel_values.is_none());
  let _ = m.prompt_logits(&t).unwrap();
}

#[test]
fn stale_prompt_is_detected() {
  // Driving the language model directly with other tokens while an image
  // prompt is set gives an error instead of silently wrong positions.
  let m = model("qwen2_vl");
  let img = m
    .load_images(&[root().join("tiny-vlm/images/scene_a_64x48.png")])
    .unwrap();
  let input = m
    .prepare("Describe this image.", &img, None, false)
    .unwrap();
  let _ = m.prompt_logits(&input).unwrap();
  let other: Vec<u32> = vec![1, 2, 3];
  let e = mlxrs_lm::generate(
    &m.lm,
    &other,
    &GenerateOptions {
      step: greedy(2),
      stop: vec![],
    },
  )
  .unwrap_err()
  .to_string();
  assert!(e.contains("differ from the multimodal prompt"), "{e}");
  m.clear_prompt();
  let o = mlxrs_lm::generate(
    &m.lm,
    &other,
    &GenerateOptions {
      step: greedy(2),
      stop: vec![],
    },
  )
  .unwrap();
  assert!(!o.tokens.is_empty());
  let _: &VlmInput = &input;
}

#[test]
fn llava_bad_input_is_an_error() {
  let m = model("llava");
  assert_eq!(m.image_token(), "<image>");
  assert!(m.clip_processor().is_some());
  let img = m
    .load_images(&[root().join("tiny-vlm/images/scene_a_64x48.png")])
    .unwrap();
  // A placeholder without an image, an image without a placeholder.
  let e = err(m.process("USER: <image>\nhi", &[]));
  assert!(e.contains("1 image placeholder(s)"), "{e}");
  let e = err(m.process("USER: hi", &img));
  assert!(e.contains("0 image placeholder(s)"), "{e}");
  // Image tokens but the pixels dropped; pixels of two images for one.
  let mut input = m.process("USER: <image>\nhi", &img).unwrap();
  assert_eq!(input.input_ids.iter().filter(|&&t| t == 400).count(), 16);
  let pv = input.clip_pixels.take();
  let e = err(m.prompt_logits(&input));
  assert!(e.contains("but no images"), "{e}");
  let mut pv = pv.unwrap();
  pv.data.extend_from_within(..);
  pv.n = 2;
  input.clip_pixels = Some(pv);
  let e = err(m.prompt_logits(&input));
  assert!(e.contains("make 32 features"), "{e}");
}

#[test]
fn paligemma_bad_input_is_an_error() {
  let m = model("paligemma");
  assert_eq!(m.image_token(), "<image>");
  let imgs = m
    .load_images(&[
      root().join("tiny-vlm/images/scene_a_64x48.png"),
      root().join("tiny-vlm/images/scene_b_90x60.png"),
    ])
    .unwrap();
  // One image per prompt, as mlx-vlm; none is refused too.
  let e = err(m.prepare("Compare.", &imgs, None, false));
  assert!(e.contains("exactly one image"), "{e}");
  let e = err(m.prepare("Hi.", &[], None, false));
  assert!(e.contains("exactly one image"), "{e}");
  // Without an <image> placeholder the tokens are prepended (python
  // build_string_from_input): same ids as the templated prompt.
  let a = m
    .prepare("Describe this image.", &imgs[..1], None, false)
    .unwrap();
  let b = m.process("Describe this image.", &imgs[..1]).unwrap();
  assert_eq!(a.input_ids, b.input_ids);
  let mut input = a;
  input.clip_pixels = None;
  let e = err(m.prompt_logits(&input));
  assert!(e.contains("but no images"), "{e}");
}

#[test]
fn gemma3_bad_input_is_an_error() {
  let m = model("gemma3");
  assert_eq!(m.image_token(), "<image_soft_token>");
  let img = m
    .load_images(&[root().join("tiny-vlm/images/scene_a_64x48.png")])
    .unwrap();
  let e = err(m.process("<start_of_image><start_of_image>", &img));
  assert!(e.contains("2 image placeholder(s)"), "{e}");
  let e = err(m.process("hi", &img));
  assert!(e.contains("0 image placeholder(s)"), "{e}");
  let mut input = m.process("<start_of_image>", &img).unwrap();
  assert_eq!(input.input_ids.iter().filter(|&&t| t == 406).count(), 4);
  input.clip_pixels = None;
  let e = err(m.prompt_logits(&input));
  assert!(e.contains("but no images"), "{e}");
}

#[test]
fn system_prompt_reaches_every_template() {
  // `mlx_vlm.generate --system S` renders (scripts/make_vlm_system_refs.py):
  // the system message as list-of-parts content, which the Idefics3 /
  // SmolVLM (and llava-hf) templates need; PaliGemma has no template and
  // keeps the last message only, as mlx-vlm.
  let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/system_prompt_refs.json");
  let r: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
  let system = r["system"].as_str().unwrap();
  let prompt = r["prompt"].as_str().unwrap();
  for case in r["cases"].as_array().unwrap() {
    let fam = case["family"].as_str().unwrap();
    let m = model(fam);
    let got = m.format_prompt(prompt, 1, Some(system)).unwrap();
    assert_eq!(got, case["text"].as_str().unwrap(), "{fam}");
    if fam != "paligemma" {
      assert!(got.contains(system), "{fam}: {got:?}");
    }
  }
}
