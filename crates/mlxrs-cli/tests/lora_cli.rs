//! `mlxrs lora` / `mlxrs fuse` / `generate --adapter-path` end to end on the
//! tiny llama (a few steps; the numerics are checked against mlx-lm in
//! `crates/mlxrs-lm/tests/lora.rs`).

use std::path::Path;
use std::process::Command;

fn mlxrs() -> Command {
  Command::new(env!("CARGO_BIN_EXE_mlxrs"))
}

fn tiny(name: &str) -> String {
  format!("{}/../../models/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> (bool, String, String) {
  let out = mlxrs().args(args).output().unwrap();
  (
    out.status.success(),
    String::from_utf8_lossy(&out.stdout).into_owned(),
    String::from_utf8_lossy(&out.stderr).into_owned(),
  )
}

fn write_data(dir: &Path) {
  std::fs::create_dir_all(dir).unwrap();
  let line =
    |i: usize| format!("{{\"prompt\": \"Question {i}?\", \"completion\": \"Answer {i}.\"}}\n");
  std::fs::write(
    dir.join("train.jsonl"),
    (0..6).map(line).collect::<String>(),
  )
  .unwrap();
  std::fs::write(
    dir.join("valid.jsonl"),
    (0..2).map(line).collect::<String>(),
  )
  .unwrap();
}

#[test]
fn lora_trains_saves_generates_and_fuses() {
  let t = tempfile::tempdir().unwrap();
  let data = t.path().join("data");
  write_data(&data);
  let ad = t.path().join("ad");
  let (ok, out, err) = run(&[
    "lora",
    "--model",
    &tiny("llama"),
    "--train",
    "--data",
    data.to_str().unwrap(),
    "--iters",
    "4",
    "--batch-size",
    "2",
    "--num-layers",
    "1",
    "--learning-rate",
    "1e-3",
    "--steps-per-report",
    "2",
    "--save-every",
    "2",
    "--max-seq-length",
    "40",
    "--adapter-path",
    ad.to_str().unwrap(),
    "--json",
  ]);
  assert!(ok, "{err}");
  let events: Vec<serde_json::Value> = out
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
  let trains: Vec<_> = events.iter().filter(|e| e["event"] == "train").collect();
  assert_eq!(trains.len(), 2, "{out}");
  assert!(trains[0]["train_loss"].as_f64().unwrap().is_finite());
  assert!(trains[0]["tokens_per_second"].as_f64().unwrap() > 0.0);
  assert!(events.iter().any(|e| e["event"] == "val"));
  // Sequences longer than --max-seq-length are truncated with a warning.
  assert!(err.contains("will be truncated to 40"), "{err}");
  for f in [
    "adapter_config.json",
    "adapters.safetensors",
    "0000002_adapters.safetensors",
    "0000004_adapters.safetensors",
  ] {
    assert!(ad.join(f).is_file(), "{f} missing");
  }
  let (ok, out, err) = run(&[
    "generate",
    "--model",
    &tiny("llama"),
    "--adapter-path",
    ad.to_str().unwrap(),
    "--prompt",
    "Question 1?",
    "--max-tokens",
    "4",
    "--json",
  ]);
  assert!(ok, "{err}");
  let with_ad: serde_json::Value = serde_json::from_str(&out).unwrap();
  let fused = t.path().join("fused");
  let (ok, _, err) = run(&[
    "fuse",
    "--model",
    &tiny("llama"),
    "--adapter-path",
    ad.to_str().unwrap(),
    "--save-path",
    fused.to_str().unwrap(),
  ]);
  assert!(ok, "{err}");
  let (ok, out, err) = run(&[
    "generate",
    "--model",
    fused.to_str().unwrap(),
    "--prompt",
    "Question 1?",
    "--max-tokens",
    "4",
    "--json",
  ]);
  assert!(ok, "{err}");
  let from_fused: serde_json::Value = serde_json::from_str(&out).unwrap();
  assert_eq!(with_ad["tokens"], from_fused["tokens"]);
}

#[test]
fn lora_bad_input_is_reported() {
  let t = tempfile::tempdir().unwrap();
  let data = t.path().join("data");
  write_data(&data);
  std::fs::write(
    data.join("train.jsonl"),
    "{\"text\": \"a\"}\n{\"text\": \"b\"\n",
  )
  .unwrap();
  let (ok, _, err) = run(&[
    "lora",
    "--model",
    &tiny("llama"),
    "--train",
    "--data",
    data.to_str().unwrap(),
  ]);
  assert!(!ok);
  assert!(err.contains("train.jsonl:2: invalid JSON"), "{err}");
  std::fs::write(data.join("train.jsonl"), "").unwrap();
  let (ok, _, err) = run(&[
    "lora",
    "--model",
    &tiny("llama"),
    "--train",
    "--data",
    data.to_str().unwrap(),
  ]);
  assert!(!ok);
  assert!(err.contains("the dataset is empty"), "{err}");
  // Adapters for another model.
  let ad = format!(
    "{}/../mlxrs-lm/tests/data/lora/mlx_adapter",
    env!("CARGO_MANIFEST_DIR")
  );
  let (ok, _, err) = run(&[
    "generate",
    "--model",
    &tiny("qwen3"),
    "--adapter-path",
    &ad,
    "--prompt",
    "x",
  ]);
  assert!(!ok);
  assert!(
    err.contains("incompatible tensors") && err.contains("lora_b"),
    "{err}"
  );
}
