//! Issue #20 end to end: malformed configs, weights and flag values are
//! clear errors (exit 1, the field or flag named), generation is bounded by
//! the model's context, NaN logits stop with an error, and files are
//! written where (and as) the user asked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mlxrs() -> Command {
  Command::new(env!("CARGO_BIN_EXE_mlxrs"))
}

fn tiny(name: &str) -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../models/tiny/{name}"))
}

fn scratch(name: &str) -> PathBuf {
  let d = std::env::temp_dir().join(format!("mlxrs-harden-{}-{name}", std::process::id()));
  let _ = std::fs::remove_dir_all(&d);
  std::fs::create_dir_all(&d).unwrap();
  d
}

/// A copy of the tiny llama with `edit` applied to its config.json.
fn llama_with(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
  let d = scratch(name);
  for e in std::fs::read_dir(tiny("llama")).unwrap() {
    let e = e.unwrap();
    std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
  }
  let p = d.join("config.json");
  let mut c: serde_json::Value =
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
  edit(&mut c);
  std::fs::write(&p, c.to_string()).unwrap();
  d
}

fn run(args: &[&str]) -> Output {
  mlxrs().args(args).output().unwrap()
}

fn fails_with(args: &[&str], needle: &str) {
  let out = run(args);
  let err = String::from_utf8_lossy(&out.stderr);
  assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
  assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
  assert!(!err.contains("panicked"), "{args:?}: {err}");
}

fn gen_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
  let mut v = vec![
    "generate",
    "--model",
    model,
    "--prompt",
    "Hello",
    "--ignore-chat-template",
  ];
  v.extend_from_slice(extra);
  v
}

#[test]
fn bad_config_values_name_the_field() {
  let cases: [(&str, serde_json::Value, &str); 4] = [
    (
      "num_hidden_layers",
      serde_json::json!(-1),
      "num_hidden_layers must be a positive integer, got -1",
    ),
    (
      "hidden_size",
      serde_json::json!(0),
      "hidden_size must be a positive integer, got 0",
    ),
    (
      "hidden_size",
      serde_json::json!(-64),
      "hidden_size must be a positive integer, got -64",
    ),
    (
      "rope_theta",
      serde_json::json!(0),
      "rope_theta must be a finite number > 0",
    ),
  ];
  for (i, (field, v, needle)) in cases.into_iter().enumerate() {
    let d = llama_with(&format!("cfg{i}"), |c| c[field] = v);
    fails_with(&gen_args(d.to_str().unwrap(), &["-m", "2"]), needle);
  }
}

#[test]
fn bad_flag_values_name_the_flag() {
  let m = tiny("llama");
  let m = m.to_str().unwrap();
  let cases: [(&[&str], &str); 8] = [
    (&["--repetition-penalty", "0"], "--repetition-penalty 0"),
    (&["--max-kv-size", "0"], "--max-kv-size 0"),
    (&["--kv-bits", "7"], "--kv-bits 7"),
    (
      &["--kv-bits", "4", "--kv-group-size", "0"],
      "--kv-group-size 0",
    ),
    (&["--top-p", "1.5"], "--top-p 1.5"),
    (&["--max-tokens", "0"], "--max-tokens 0"),
    (&["--min-p", "nan"], "--min-p NaN"),
    (&["--stop", ""], "stop string"),
  ];
  for (extra, needle) in cases {
    fails_with(&gen_args(m, extra), needle);
  }
  fails_with(
    &["bench", "--model", m, "-q", "17", "-n", "1"],
    "apply to --shape",
  );
  fails_with(
    &["bench", "--shape", "smollm2-135m", "-q", "17"],
    "-q/--quantize-bits 17",
  );
  fails_with(
    &[
      "bench",
      "--shape",
      "smollm2-135m",
      "-q",
      "4",
      "--group-size",
      "0",
    ],
    "--group-size 0",
  );
  let missing = scratch("dump").join("no/such/dir/c.json");
  fails_with(
    &[
      "bench",
      "--shape",
      "smollm2-135m",
      "--dump-config",
      missing.to_str().unwrap(),
    ],
    "no/such/dir",
  );
}

/// `--max-tokens 10^12` is clamped to the model's 512-position context with
/// a note (it used to generate forever).
#[test]
fn max_tokens_is_bounded_by_the_context() {
  let m = tiny("llama");
  let out = run(&gen_args(
    m.to_str().unwrap(),
    &["--max-tokens", "1000000000000", "--json"],
  ));
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(out.status.success(), "{err}");
  assert!(err.contains("clamped to"), "{err}");
  let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
  let p = v["prompt_tokens"].as_u64().unwrap();
  let n = v["tokens"].as_array().unwrap().len() as u64;
  assert!(p + n <= 512, "{p} + {n} > 512");
}

/// NaN weights: an error by default, a warning with `--allow-nan`.
#[test]
fn nan_logits_stop_generation() {
  let d = llama_with("nan", |_| {});
  let f = d.join("model.safetensors");
  let mut bytes = std::fs::read(&f).unwrap();
  let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
  let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
  let offs = &h["model.norm.weight"]["data_offsets"];
  let (b, e) = (
    offs[0].as_u64().unwrap() as usize,
    offs[1].as_u64().unwrap() as usize,
  );
  for c in bytes[8 + n + b..8 + n + e].chunks_mut(4) {
    c.copy_from_slice(&f32::NAN.to_le_bytes());
  }
  std::fs::write(&f, bytes).unwrap();
  let m = d.to_str().unwrap();
  fails_with(&gen_args(m, &["-m", "4"]), "non-finite logits");
  let out = run(&gen_args(m, &["-m", "4", "--allow-nan", "--json"]));
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(out.status.success(), "{err}");
  assert!(err.contains("NaN/Inf"), "{err}");
}

/// `--kv-bits 3` and `6` (documented, MLX supports them) quantize the cache
/// and generate (qwen3: head_dim 32); the cache arithmetic is checked
/// against MLX's quantize/dequantize in mlxrs-nn's unit tests. A head_dim
/// the group size does not divide is a clear error.
#[test]
fn kv_bits_3_and_6_run() {
  fails_with(
    &gen_args(
      tiny("llama").to_str().unwrap(),
      &[
        "--kv-bits",
        "4",
        "--kv-group-size",
        "32",
        "--quantized-kv-start",
        "0",
      ],
    ),
    "head_dim 16 is not a multiple of the group size 32",
  );
  let m = tiny("qwen3");
  for bits in ["3", "6"] {
    let out = run(&gen_args(
      m.to_str().unwrap(),
      &[
        "-m",
        "6",
        "--kv-bits",
        bits,
        "--kv-group-size",
        "32",
        "--quantized-kv-start",
        "0",
        "--json",
      ],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--kv-bits {bits}: {err}");
  }
}

/// cache-prompt: writes exactly the named file and reports it; refuses a
/// directory or a missing directory before any work; applies the context
/// rule to the prompt.
#[test]
fn cache_prompt_targets_and_limits() {
  let d = scratch("cp");
  let m = tiny("llama");
  let m = m.to_str().unwrap();
  let f = d.join("ctx");
  let out = run(&[
    "cache-prompt",
    "--model",
    m,
    "--prompt",
    "The quick brown fox",
    "--ignore-chat-template",
    "--prompt-cache-file",
    f.to_str().unwrap(),
  ]);
  assert!(
    out.status.success(),
    "{}",
    String::from_utf8_lossy(&out.stderr)
  );
  assert!(String::from_utf8_lossy(&out.stdout).contains(f.to_str().unwrap()));
  let names: Vec<_> = std::fs::read_dir(&d)
    .unwrap()
    .map(|e| e.unwrap().file_name().into_string().unwrap())
    .collect();
  assert_eq!(
    names,
    vec!["ctx".to_string()],
    "exactly the named file, no temp left"
  );
  let cp = |target: &str, prompt: &str| -> Vec<String> {
    [
      "cache-prompt",
      "--model",
      m,
      "--prompt",
      prompt,
      "--ignore-chat-template",
      "--prompt-cache-file",
      target,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
  };
  let dir = d.to_str().unwrap().to_string();
  let a = cp(&dir, "x");
  fails_with(
    &a.iter().map(String::as_str).collect::<Vec<_>>(),
    "is a directory",
  );
  let missing = d.join("nope/ctx").to_str().unwrap().to_string();
  let a = cp(&missing, "x");
  fails_with(
    &a.iter().map(String::as_str).collect::<Vec<_>>(),
    "does not exist",
  );
  let long = "word ".repeat(600);
  let a = cp(f.to_str().unwrap(), &long);
  fails_with(
    &a.iter().map(String::as_str).collect::<Vec<_>>(),
    "more than the model's context of 512",
  );
  // The failed runs left the good cache alone.
  let out = run(&gen_args(
    m,
    &["-m", "2", "--prompt-cache-file", f.to_str().unwrap()],
  ));
  assert!(
    out.status.success(),
    "{}",
    String::from_utf8_lossy(&out.stderr)
  );
}
