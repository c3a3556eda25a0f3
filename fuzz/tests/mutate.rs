//! Stable-toolchain stand-in for the fuzz targets: a deterministic mutation
//! loop over the seed corpus (`seeds/`), for `MLXRS_FUZZ_SECS` seconds per
//! target (default 3). `cargo test --manifest-path fuzz/Cargo.toml --test mutate`.

use std::time::{Duration, Instant};

use mlxrs_fuzz::Mutator;

fn seeds(dir: &str) -> Vec<Vec<u8>> {
  let d = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds/");
  let mut out: Vec<Vec<u8>> = std::fs::read_dir(format!("{d}{dir}"))
    .unwrap()
    .map(|e| std::fs::read(e.unwrap().path()).unwrap())
    .collect();
  out.sort();
  assert!(!out.is_empty(), "no seeds in {d}{dir}");
  out
}

fn run(dir: &str, target: fn(&[u8])) {
  let secs = std::env::var("MLXRS_FUZZ_SECS")
    .ok()
    .and_then(|s| s.parse().ok())
    .unwrap_or(3);
  let seeds = seeds(dir);
  let mut m = Mutator::new(0x5eed_0000 + dir.len() as u64);
  let end = Instant::now() + Duration::from_secs(secs);
  let mut n = 0u64;
  while Instant::now() < end {
    let mut data = seeds[n as usize % seeds.len()].clone();
    m.mutate(&mut data);
    target(&data);
    n += 1;
  }
  eprintln!("{dir}: {n} mutated inputs, no crash");
}

#[test]
fn safetensors_mutations() {
  run("safetensors", mlxrs_fuzz::safetensors);
}

#[test]
fn gguf_mutations() {
  run("gguf", mlxrs_fuzz::gguf);
}

#[test]
fn config_mutations() {
  run("config", mlxrs_fuzz::config);
}

#[test]
fn tokenizer_mutations() {
  run("tokenizer", mlxrs_fuzz::tokenizer);
}

#[test]
fn wav_mutations() {
  run("wav", mlxrs_fuzz::wav);
}

#[test]
fn image_mutations() {
  run("image", mlxrs_fuzz::image);
}
