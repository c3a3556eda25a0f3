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
  // A seed outside numpy's range (batch order draws from numpy's MT19937).
  let (ok, _, err) = run(&[
    "lora",
    "--model",
    &tiny("llama"),
    "--test",
    "--data",
    data.to_str().unwrap(),
    "--seed",
    "4294967296",
  ]);
  assert!(!ok);
  assert!(err.contains("--seed 4294967296 is out of range"), "{err}");
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

/// `--grad-checkpoint` from the CLI: the same run's reported losses equal
/// the run without it (recomputing a block's activations changes no
/// value), it is written to adapter_config.json, and an architecture with
/// its own block loop refuses it clearly.
#[test]
fn lora_grad_checkpoint_gives_the_same_losses() {
  let t = tempfile::tempdir().unwrap();
  let data = t.path().join("data");
  write_data(&data);
  let train = |extra: &[&str], model: &str, ad: &str| {
    let ad = t.path().join(ad);
    let mut args = vec![
      "lora",
      "--model",
      model,
      "--train",
      "--data",
      data.to_str().unwrap(),
      "--iters",
      "4",
      "--batch-size",
      "2",
      "--num-layers",
      "2",
      "--steps-per-report",
      "1",
      "--adapter-path",
      ad.to_str().unwrap(),
      "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = run(&args);
    let losses: Vec<f64> = out
      .lines()
      .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
      .filter(|e| e["event"] == "train")
      .map(|e| e["train_loss"].as_f64().unwrap())
      .collect();
    (ok, losses, err, ad)
  };
  let llama = tiny("llama");
  let (ok, plain, err, _) = train(&[], &llama, "plain");
  assert!(ok, "{err}");
  let (ok, ckpt, err, ad) = train(&["--grad-checkpoint"], &llama, "ckpt");
  assert!(ok, "{err}");
  assert_eq!(plain.len(), 4);
  assert_eq!(plain, ckpt);
  let cfg: serde_json::Value =
    serde_json::from_str(&std::fs::read_to_string(ad.join("adapter_config.json")).unwrap())
      .unwrap();
  assert_eq!(cfg["grad_checkpoint"], true, "{cfg}");
  let (ok, _, err, _) = train(&["--grad-checkpoint"], &tiny("deepseek_v3"), "d3");
  assert!(!ok);
  assert!(
    err.contains("gradient checkpointing") && err.contains("deepseek_v3"),
    "{err}"
  );
}
