//! The CLI glue (`crates/mlxrs-cli/src/vlm.rs`, what `mlxrs generate
//! --image` runs) compiled against this crate and run on the tiny model:
//! streamed text, `--json` output, and its errors.

#[path = "../../mlxrs-cli/src/vlm.rs"]
mod vlm;

use std::path::{Path, PathBuf};

use mlxrs_vlm::{GenerateOptions, SamplerConfig, StepConfig};

fn root() -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn args<'a>(model: &'a str, images: &'a [PathBuf], json: bool) -> vlm::VlmArgs<'a> {
  vlm::VlmArgs {
    model,
    dtype: None,
    images,
    prompt: "Describe this image.",
    system: None,
    raw: false,
    opts: GenerateOptions {
      step: StepConfig {
        max_tokens: 8,
        sampler: SamplerConfig {
          temp: 0.0,
          ..SamplerConfig::default()
        },
        ..StepConfig::default()
      },
      stop: vec![],
    },
    json,
    verbose: true,
  }
}

#[test]
fn generate_with_an_image() {
  let model = root().join("tiny-vlm/qwen2_vl").display().to_string();
  let images = [root().join("tiny-vlm/images/scene_a_64x48.png")];
  let mut out = Vec::new();
  vlm::generate(&args(&model, &images, true), &mut out).unwrap();
  let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
  let reference: serde_json::Value = serde_json::from_str(
    &std::fs::read_to_string(root().join("tiny-vlm/qwen2_vl/reference.json")).unwrap(),
  )
  .unwrap();
  let want: Vec<i64> = reference["cases"][0]["greedy_tokens"]
    .as_array()
    .unwrap()
    .iter()
    .take(8)
    .map(|t| t.as_i64().unwrap())
    .collect();
  let got: Vec<i64> = v["tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|t| t.as_i64().unwrap())
    .collect();
  assert_eq!(got, want[..got.len()]);
  assert_eq!(v["image_grid_thw"], serde_json::json!([[1, 4, 4]]));
  let mut out = Vec::new();
  vlm::generate(&args(&model, &images, false), &mut out).unwrap();
  let s = String::from_utf8(out).unwrap();
  assert!(
    s.contains("Files: ") && s.contains("(4 image tokens)") && s.contains("Generation:"),
    "{s}"
  );
}

#[test]
fn generate_with_an_image_llava_next() {
  // Any-resolution tiling through the CLI glue: the tokens of the
  // reference (transformers' greedy decode) and the image size.
  let model = root().join("tiny-vlm/llava_next").display().to_string();
  let images = [root().join("tiny-vlm/images/scene_a_64x48.png")];
  let mut out = Vec::new();
  vlm::generate(&args(&model, &images, true), &mut out).unwrap();
  let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
  let reference: serde_json::Value = serde_json::from_str(
    &std::fs::read_to_string(root().join("tiny-vlm/llava_next/reference.json")).unwrap(),
  )
  .unwrap();
  let case = &reference["cases"][0];
  assert_eq!(v["prompt_ids"], case["input_ids"]);
  let want: Vec<i64> = case["greedy_tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|t| t.as_i64().unwrap())
    .collect();
  let got: Vec<i64> = v["tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|t| t.as_i64().unwrap())
    .collect();
  assert!(!got.is_empty());
  assert_eq!(got, want[..got.len()]);
  assert_eq!(v["image_sizes"], serde_json::json!([[48, 64]]));
}

#[test]
fn generate_with_an_image_smolvlm() {
  // Image splitting + pixel shuffle through the CLI glue: mlx-vlm's ids
  // and greedy tokens.
  let model = root().join("tiny-vlm/smolvlm").display().to_string();
  let images = [root().join("tiny-vlm/images/scene_a_64x48.png")];
  let mut out = Vec::new();
  vlm::generate(&args(&model, &images, true), &mut out).unwrap();
  let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
  let reference: serde_json::Value = serde_json::from_str(
    &std::fs::read_to_string(root().join("tiny-vlm/smolvlm/reference.json")).unwrap(),
  )
  .unwrap();
  let case = &reference["cases"][0];
  assert_eq!(v["prompt_ids"], case["input_ids"]);
  let want: Vec<i64> = case["greedy_tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|t| t.as_i64().unwrap())
    .collect();
  let got: Vec<i64> = v["tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|t| t.as_i64().unwrap())
    .collect();
  assert!(!got.is_empty());
  assert_eq!(got, want[..got.len()]);
}

#[test]
fn cli_errors() {
  let model = root().join("tiny-vlm/qwen2_vl").display().to_string();
  let missing = [root().join("tiny-vlm/images/nope.png")];
  let e = vlm::generate(&args(&model, &missing, false), &mut Vec::new())
    .unwrap_err()
    .to_string();
  assert!(e.contains("nope.png") && e.contains("no such file"), "{e}");
  let text_only = root().join("tiny/llama").display().to_string();
  let images = [root().join("tiny-vlm/images/scene_a_64x48.png")];
  let e = format!(
    "{:#}",
    vlm::generate(&args(&text_only, &images, false), &mut Vec::new()).unwrap_err()
  );
  assert!(
    e.contains("text-only") && e.contains("cannot take images"),
    "{e}"
  );
  let e = vlm::generate(&args(&model, &[], false), &mut Vec::new())
    .unwrap_err()
    .to_string();
  assert!(e.contains("no image files"), "{e}");
}
