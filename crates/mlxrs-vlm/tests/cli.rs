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

fn chat_args<'a>(model: &'a str, images: &'a [PathBuf], max_tokens: usize) -> vlm::VlmChatArgs<'a> {
  vlm::VlmChatArgs {
    model,
    dtype: None,
    images,
    system: None,
    opts: args(model, images, false).opts.with_max_tokens(max_tokens),
    verbose: true,
  }
}

trait MaxTokens {
  fn with_max_tokens(self, n: usize) -> Self;
}

impl MaxTokens for GenerateOptions {
  fn with_max_tokens(mut self, n: usize) -> Self {
    self.step.max_tokens = n;
    self
  }
}

/// `mlxrs chat --model VLM --image A` fed a scripted stdin session (turn 1
/// with `--image`, a text turn, `/image B` + turn 3): the streamed replies
/// are mlx-vlm's on the same multi-turn conversation
/// (`models/tiny-vlm/ARCH/chat_reference.json`, made by
/// `scripts/make_vlm_fixtures.py --chat`), turns 2-3 reuse the KV cache,
/// turn 2 hits the image-feature cache.
fn scripted_chat(arch: &str) {
  let model = root().join("tiny-vlm").join(arch).display().to_string();
  let r: serde_json::Value = serde_json::from_str(
    &std::fs::read_to_string(
      root()
        .join("tiny-vlm")
        .join(arch)
        .join("chat_reference.json"),
    )
    .unwrap(),
  )
  .unwrap();
  let turns = r["turns"].as_array().unwrap();
  let img = |t: &serde_json::Value| -> Vec<PathBuf> {
    t["images"]
      .as_array()
      .unwrap()
      .iter()
      .map(|f| root().join("tiny-vlm/images").join(f.as_str().unwrap()))
      .collect()
  };
  let first = img(&turns[0]);
  let mut script = String::new();
  for (k, t) in turns.iter().enumerate() {
    if k > 0 {
      for p in img(t) {
        script.push_str(&format!("/image {}\n", p.display()));
      }
    }
    script.push_str(t["user"].as_str().unwrap());
    script.push('\n');
  }
  script.push_str("/exit\n");
  let max_tokens = r["max_tokens"].as_u64().unwrap() as usize;
  let mut out = Vec::new();
  vlm::chat(
    &chat_args(&model, &first, max_tokens),
    &mut std::io::Cursor::new(script),
    &mut out,
  )
  .unwrap();
  let out = String::from_utf8(out).unwrap();
  // Each reply follows a prompt marker and ends the line.
  let mut rest = out.as_str();
  for (k, t) in turns.iter().enumerate() {
    let want = format!(">> {}\n", t["text"].as_str().unwrap());
    let at = rest
      .find(&want)
      .unwrap_or_else(|| panic!("{arch} turn {k}: reply {want:?} not in {out:?}"));
    rest = &rest[at + want.len()..];
    let info_end = rest.find('\n').unwrap();
    let info = &rest[..info_end];
    assert!(info.starts_with("[INFO] prompt "), "{info}");
    let want_prompt = t["input_ids"].as_array().unwrap().len();
    assert!(
      info.contains(&format!("prompt {want_prompt} tokens")),
      "{arch} turn {k}: {info}"
    );
    if k == 1 {
      assert!(!info.contains(" 0 reused"), "{arch} turn {k}: {info}");
      assert!(
        info.contains("image features: 1 hit(s), 0 miss(es)"),
        "{arch} turn {k}: {info}"
      );
    }
    if k == 2 {
      assert!(
        info.contains("image features: 0 hit(s), 1 miss(es)"),
        "{arch} turn {k}: {info}"
      );
    }
  }
}

#[test]
fn chat_scripted_session_qwen2_vl() {
  scripted_chat("qwen2_vl");
}

#[test]
fn chat_scripted_session_llava() {
  scripted_chat("llava");
}

#[test]
fn chat_cli_errors_and_commands() {
  let model = root().join("tiny-vlm/qwen2_vl").display().to_string();
  let missing = [root().join("tiny-vlm/images/nope.png")];
  let e = vlm::chat(
    &chat_args(&model, &missing, 4),
    &mut std::io::Cursor::new(""),
    &mut Vec::new(),
  )
  .unwrap_err()
  .to_string();
  assert!(e.contains("nope.png") && e.contains("no such file"), "{e}");
  let pali = root().join("tiny-vlm/paligemma").display().to_string();
  let e = format!(
    "{:#}",
    vlm::chat(
      &chat_args(&pali, &[], 4),
      &mut std::io::Cursor::new(""),
      &mut Vec::new()
    )
    .unwrap_err()
  );
  assert!(e.contains("no chat template"), "{e}");
  // Bad /image paths and commands are reported, the session goes on.
  let script = "/image\n/image /no/such.png\nHello\n/clear\nHello\nq\n";
  let mut out = Vec::new();
  vlm::chat(
    &chat_args(&model, &[], 4),
    &mut std::io::Cursor::new(script),
    &mut out,
  )
  .unwrap();
  let out = String::from_utf8(out).unwrap();
  assert!(out.contains("[ERROR] /image needs a file path"), "{out}");
  assert!(out.contains("/no/such.png"), "{out}");
  assert!(out.contains("[INFO] Conversation cleared."), "{out}");
  assert_eq!(out.matches("[INFO] prompt ").count(), 2, "{out}");
}
