//! The `mlxrs` binary end to end on the bundled tiny checkpoint.

use std::process::Command;

fn mlxrs() -> Command {
  Command::new(env!("CARGO_BIN_EXE_mlxrs"))
}

fn tiny(name: &str) -> String {
  format!("{}/../../models/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn generate_json_reports_text_tokens_and_timings() {
  let out = mlxrs()
    .args([
      "generate",
      "--model",
      &tiny("llama"),
      "--prompt",
      "Hello",
      "--max-tokens",
      "5",
      "--json",
    ])
    .output()
    .unwrap();
  assert!(
    out.status.success(),
    "{}",
    String::from_utf8_lossy(&out.stderr)
  );
  let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
  let n = v["tokens"].as_array().unwrap().len();
  assert!((1..=5).contains(&n), "{v}");
  assert!(v["text"].is_string() && v["generation_tps"].is_number() && v["prompt_tps"].is_number());
  assert_eq!(v["dtype"], "float32");
}

#[test]
fn bad_input_fails_cleanly() {
  let cases: Vec<(Vec<String>, &str)> = vec![
    (
      vec![
        "generate".into(),
        "--model".into(),
        tiny("nope"),
        "--prompt".into(),
        "x".into(),
      ],
      "no such folder",
    ),
    (
      vec![
        "generate".into(),
        "--model".into(),
        tiny("llama"),
        "--prompt".into(),
        "".into(),
      ],
      "empty",
    ),
    (
      vec![
        "generate".into(),
        "--model".into(),
        tiny("llama"),
        "--prompt".into(),
        "x".into(),
        "--temp=-1".into(),
      ],
      "temperature",
    ),
    (
      vec![
        "generate".into(),
        "--model".into(),
        tiny("llama"),
        "--prompt".into(),
        "x".into(),
        "--dtype".into(),
        "int8".into(),
      ],
      "dtype",
    ),
  ];
  for (args, needle) in cases {
    let out = mlxrs().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
  }
  let p = std::env::temp_dir().join(format!("mlxrs-bad-{}.txt", std::process::id()));
  std::fs::write(&p, [0x66, 0x6f, 0xff, 0xfe]).unwrap();
  let out = mlxrs()
    .args([
      "generate",
      "--model",
      &tiny("llama"),
      "--prompt-file",
      p.to_str().unwrap(),
    ])
    .output()
    .unwrap();
  assert_eq!(out.status.code(), Some(1));
  assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
}

/// `cache-prompt` then `generate --prompt-cache-file` runs end to end (the
/// numerical equivalence with an uncached prompt is tested in mlxrs-lm's
/// tests/prompt_cache.rs), and a cache made for another model is an error.
#[test]
fn prompt_cache_round_trip() {
  let f = std::env::temp_dir().join(format!("mlxrs-pc-{}.safetensors", std::process::id()));
  let out = mlxrs()
    .args([
      "cache-prompt",
      "--model",
      &tiny("llama"),
      "--prompt",
      "The quick brown fox",
      "--ignore-chat-template",
    ])
    .args(["--prompt-cache-file", f.to_str().unwrap()])
    .output()
    .unwrap();
  assert!(
    out.status.success(),
    "{}",
    String::from_utf8_lossy(&out.stderr)
  );
  let run = |extra: &[&str], prompt: &str| -> serde_json::Value {
    let o = mlxrs()
      .args([
        "generate",
        "--model",
        &tiny("llama"),
        "--prompt",
        prompt,
        "--ignore-chat-template",
        "-m",
        "8",
        "--json",
      ])
      .args(extra)
      .output()
      .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
  };
  let cached = run(&["--prompt-cache-file", f.to_str().unwrap()], " jumps");
  assert!(!cached["tokens"].as_array().unwrap().is_empty());
  // qwen3's KV heads have another head_dim than llama's cache: rejected.
  let bad = mlxrs()
    .args([
      "generate",
      "--model",
      &tiny("qwen3"),
      "--prompt",
      "x",
      "--prompt-cache-file",
      f.to_str().unwrap(),
    ])
    .output()
    .unwrap();
  assert_eq!(
    bad.status.code(),
    Some(1),
    "a cache from another model must be rejected"
  );
}
