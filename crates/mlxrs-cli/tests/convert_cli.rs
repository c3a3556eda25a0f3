//! `mlxrs convert` end to end: convert a tiny checkpoint, then generate from
//! the output; the tokens equal those from the folder `mlx_lm.convert`
//! wrote with the same flags (`models/tiny/llama-4bit`).

use std::path::PathBuf;
use std::process::Command;

fn mlxrs() -> Command {
  Command::new(env!("CARGO_BIN_EXE_mlxrs"))
}

fn tiny(name: &str) -> String {
  format!("{}/../../models/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A fresh scratch folder under the system temp dir, removed on drop.
struct Scratch(PathBuf);
impl Scratch {
  fn new(tag: &str) -> Scratch {
    let p = std::env::temp_dir().join(format!("mlxrs-convert-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Scratch(p)
  }
}
impl Drop for Scratch {
  fn drop(&mut self) {
    let _ = std::fs::remove_dir_all(&self.0);
  }
}

fn tokens(model: &str) -> Vec<serde_json::Value> {
  tokens_with(model, &[])
}

fn tokens_with(model: &str, extra: &[&str]) -> Vec<serde_json::Value> {
  let out = mlxrs()
    .args([
      "generate",
      "--model",
      model,
      "--prompt",
      "Hello",
      "--max-tokens",
      "8",
      "--json",
    ])
    .args(extra)
    .output()
    .unwrap();
  assert!(
    out.status.success(),
    "{}",
    String::from_utf8_lossy(&out.stderr)
  );
  let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
  v["tokens"].as_array().unwrap().clone()
}

#[test]
fn convert_then_generate_matches_mlx_lm_conversion() {
  let s = Scratch::new("gen");
  let dst = s.0.join("llama-q4");
  let out = mlxrs()
    .args(["convert", "--hf-path", &tiny("llama"), "--mlx-path"])
    .arg(&dst)
    .args(["-q", "--q-group-size", "32", "--json"])
    .output()
    .unwrap();
  assert!(
    out.status.success(),
    "{}",
    String::from_utf8_lossy(&out.stderr)
  );
  let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
  assert_eq!(rep["shards"], serde_json::json!(["model.safetensors"]));
  assert!(rep["quantized_layers"].as_u64().unwrap() > 0, "{rep}");
  let ours = tokens(dst.to_str().unwrap());
  assert!(!ours.is_empty());
  assert_eq!(ours, tokens(&tiny("llama-4bit")));

  // converting into the same (now non-empty) folder is refused
  let out = mlxrs()
    .args(["convert", "--hf-path", &tiny("llama"), "--mlx-path"])
    .arg(&dst)
    .output()
    .unwrap();
  assert!(!out.status.success());
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(
    err.contains("not empty") && err.contains("--overwrite"),
    "{err}"
  );
  // a bad size is refused before any work
  let out = mlxrs()
    .args(["convert", "--hf-path", &tiny("llama"), "--mlx-path"])
    .arg(s.0.join("other"))
    .args(["--max-shard-size", "lots"])
    .output()
    .unwrap();
  assert!(!out.status.success());
  assert!(String::from_utf8_lossy(&out.stderr).contains("--max-shard-size"));
  assert!(!s.0.join("other").exists());
}

/// `mlxrs convert --hf-path file.gguf` writes an MLX folder (the GGUF issue's
/// "convert from GGUF"): generating from it gives the same tokens as
/// generating from the GGUF file itself, and no staging folder is left.
#[test]
fn convert_from_gguf_generates_like_the_gguf() {
  let s = Scratch::new("gguf");
  let gguf = format!(
    "{}/../../models/tiny-gguf/llama-mixed.gguf",
    env!("CARGO_MANIFEST_DIR")
  );
  let dst = s.0.join("llama-from-gguf");
  let out = mlxrs()
    .args(["convert", "--hf-path", &gguf, "--mlx-path"])
    .arg(&dst)
    .output()
    .unwrap();
  assert!(
    out.status.success(),
    "{}",
    String::from_utf8_lossy(&out.stderr)
  );
  assert!(dst.join("model.safetensors").is_file());
  assert!(dst.join("config.json").is_file());
  let left: Vec<_> = std::fs::read_dir(&s.0)
    .unwrap()
    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
    .collect();
  assert_eq!(left, vec!["llama-from-gguf".to_string()], "{left:?}");
  // float16 compute: the GGUF path widens the float16 scales to the compute
  // dtype while a folder keeps them as stored, so both run the same only in
  // float16 (see the gguf round-trip test).
  let want = tokens_with(&gguf, &[]);
  assert!(!want.is_empty());
  let f16 = ["--dtype", "float16"];
  assert_eq!(
    tokens_with(&gguf, &f16),
    tokens_with(dst.to_str().unwrap(), &f16)
  );
}
