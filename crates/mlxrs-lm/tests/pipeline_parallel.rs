//! Pipeline-parallel generation over MLX's `ring` backend on loopback, as
//! `mlx.launch --backend ring -n N` runs `mlx_lm.generate --pipeline`: each
//! test starts this test binary N times (the ignored `pp_worker` test) with
//! `MLX_RANK` = 0..N and `MLX_HOSTFILE` naming N `127.0.0.1` ports. Each
//! rank loads only its own decoder layers (`load_model_dir_pipeline`;
//! rank 0 holds the last ones) and reports the last-position logits of a
//! forward pass over the reference prompt and 20 greedy tokens of cached
//! decoding.
//!
//! Compared against: the fixture's `reference.json`, written by mlx-lm
//! 0.32.2 in ONE process on the whole checkpoint
//! (`scripts/make_lm_fixtures.py`), and for the 4-layer copy used with 4
//! ranks, mlxrs in this (one) process. Greedy tokens must be equal on every
//! rank; logits within 1e-4 absolute (float32; the pipeline changes no sum,
//! so in practice the logits equal the single-process ones); every rank
//! must report the same logits (they come from rank 0 by all_gather).
//!
//! A hang fails the test after `TIMEOUT` (the parent kills the workers). A
//! rank that dies mid-run must make its peers exit within
//! `DEAD_PEER_TIMEOUT`.

use std::path::PathBuf;
use std::time::Duration;

use mlxrs_core::{Array, Device, Dtype, distributed as dist, memory, with_device};
use mlxrs_lm::{StepConfig, TokenGenerator, load_model_dir, load_model_dir_pipeline};
use serde_json::Value;

#[path = "common/ranks.rs"]
mod ranks;
use ranks::{result_line, run_ranks};

const TIMEOUT: Duration = Duration::from_secs(120);
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(60);
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("../../models/tiny")
    .join(name)
}

fn ints(v: &Value) -> Vec<i32> {
  v.as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_i64().unwrap() as i32)
    .collect()
}

fn floats(v: &Value) -> Vec<f32> {
  v.as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_f64().unwrap() as f32)
    .collect()
}

fn prompt_of(name: &str) -> Vec<i32> {
  let r: Value =
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
      .unwrap();
  ints(&r["prompt_ids"])
}

/// Last-position logits of a forward pass over `prompt`, then 20 greedy
/// tokens (the same on one process and on every rank).
fn run_model(model: &dyn mlxrs_lm::model::LanguageModel, prompt: &[i32]) -> (Vec<f32>, Vec<i32>) {
  let mut caches = model.make_caches(None);
  let x = Array::from_slice(prompt, &[1, prompt.len() as i32]).unwrap();
  let mut logits = model.forward(&x, &mut caches).unwrap();
  logits.eval().unwrap();
  let all = logits.to_vec::<f32>().unwrap();
  let v = model.vocab_size() as usize;
  let last = all[all.len() - v..].to_vec();
  let cfg = StepConfig {
    max_tokens: 20,
    ..StepConfig::default()
  };
  let tokens: Vec<i32> = TokenGenerator::new(model, prompt, &cfg, None)
    .unwrap()
    .map(|s| s.unwrap().token)
    .collect();
  (last, tokens)
}

/// The worker: does nothing unless started by a test below.
#[test]
#[ignore = "started by the pipeline-parallel tests in a child process"]
fn pp_worker() {
  let Some(name) = std::env::var_os("MLXRS_PP_WORKER") else {
    return;
  };
  let name = name.to_string_lossy().to_string();
  // The ring backend communicates from the CPU stream.
  with_device(Device::CPU, || worker(&name)).expect("cpu stream");
}

fn worker(name: &str) {
  let g = dist::init(true, "ring").expect("ring init");
  let (rank, size) = (g.rank(), g.size());
  if std::env::var("MLXRS_PP_DIE_RANK").ok() == Some(rank.to_string()) {
    // A rank that dies after the group is up: its peers must not hang.
    std::process::exit(3);
  }
  let prompt = prompt_of(name);
  memory::reset_peak_memory().unwrap();
  let (model, _) = match load_model_dir_pipeline(&fixture(name), Some(Dtype::Float32), rank, size) {
    Ok(m) => m,
    Err(e) => {
      println!("PP_ERROR rank={rank} {e}");
      std::process::exit(2);
    }
  };
  let mut param_bytes = 0usize;
  model.visit(&mut |_, a| param_bytes += a.nbytes());
  let (active, peak) = (
    memory::active_memory().unwrap(),
    memory::peak_memory().unwrap(),
  );
  let (last, tokens) = run_model(model.as_ref(), &prompt);
  let out = serde_json::json!({
    "rank": rank, "size": size, "tokens": tokens, "logits_last": last,
    "param_bytes": param_bytes, "active_after_load": active, "peak_after_load": peak,
  });
  println!("PP_RESULT {out}");
}

/// The decoder layer of a parameter path (`model.layers.{i}.…`).
fn layer_of(path: &str) -> Option<usize> {
  path
    .strip_prefix("model.layers.")?
    .split('.')
    .next()?
    .parse()
    .ok()
}

/// `n` ranks on `name`: tokens equal to `want_tokens`, logits within `TOL`
/// of `want_logits`, all ranks identical, each holding the shared tensors
/// plus exactly its own layers (rank 0 the last ones).
fn check_pp(name: &str, n: usize, want_tokens: &[i32], want_logits: &[f32], against: &str) {
  let (full, _) = load_model_dir(&fixture(name), Some(Dtype::Float32)).unwrap();
  let mut shared = 0usize;
  let mut per_layer: Vec<usize> = Vec::new();
  full.visit(&mut |k, a| match layer_of(k) {
    Some(i) => {
      if per_layer.len() <= i {
        per_layer.resize(i + 1, 0);
      }
      per_layer[i] += a.nbytes();
    }
    None => shared += a.nbytes(),
  });
  drop(full);
  let n_layers = per_layer.len();
  let run = run_ranks("pp", name, n, None, TIMEOUT);
  assert!(
    !run.timed_out,
    "{name}: ranks did not finish within {TIMEOUT:?} (killed):\n{}",
    run.report
  );
  let mut first: Option<Value> = None;
  let mut end = n_layers;
  for k in 0..n {
    assert!(
      run.status[k].is_some_and(|s| s.success()),
      "{name}: rank {k} failed:\n{}",
      run.report
    );
    let v = result_line("pp", &run.out[k])
      .unwrap_or_else(|| panic!("{name}: rank {k} printed no result:\n{}", run.report));
    assert_eq!(v["rank"], k as i64);
    assert_eq!(v["size"], n as i64);
    assert_eq!(
      ints(&v["tokens"]),
      want_tokens,
      "{name}: rank {k} greedy tokens"
    );
    let got = floats(&v["logits_last"]);
    assert_eq!(got.len(), want_logits.len());
    let max_diff = got
      .iter()
      .zip(want_logits)
      .map(|(g, w)| (g - w).abs())
      .fold(0.0f32, f32::max);
    assert!(
      max_diff <= TOL,
      "{name}: rank {k} max |logit diff| {max_diff} > {TOL}"
    );
    // Rank k holds layers [start, end), counted back from the last layer.
    let share = n_layers / n + usize::from(k < n_layers % n);
    let start = end - share;
    let own: usize = per_layer[start..end].iter().sum();
    assert_eq!(
      v["param_bytes"].as_u64(),
      Some((shared + own) as u64),
      "{name}: rank {k} parameter bytes (layers {start}..{end})"
    );
    eprintln!(
      "{name} rank {k}/{n}: layers {start}..{end}, max |logit diff| vs {against} {max_diff:.2e}, \
       20 greedy tokens equal; whole model {} B (shared {shared} B), this rank's params {} B, \
       active after load {} B, peak during load {} B",
      shared + per_layer.iter().sum::<usize>(),
      v["param_bytes"],
      v["active_after_load"],
      v["peak_after_load"]
    );
    end = start;
    match &first {
      None => first = Some(v),
      Some(f) => assert_eq!(
        f["logits_last"], v["logits_last"],
        "{name}: ranks disagree on the logits"
      ),
    }
  }
  assert_eq!(end, 0, "{name}: the ranks' layers do not start at layer 0");
}

/// `n` ranks on fixture `name` against mlx-lm's single-process reference.
fn check_against_mlx_lm(name: &str, n: usize) {
  let r: Value =
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
      .unwrap();
  check_pp(
    name,
    n,
    &ints(&r["greedy_tokens"]),
    &floats(&r["logits_last"]),
    "mlx-lm",
  );
}

#[test]
fn llama_two_stages() {
  check_against_mlx_lm("llama", 2);
}

#[test]
fn llama_4bit_two_stages() {
  check_against_mlx_lm("llama-4bit", 2);
}

#[test]
fn qwen3_two_stages() {
  check_against_mlx_lm("qwen3", 2);
}

#[test]
fn qwen3_4bit_two_stages() {
  check_against_mlx_lm("qwen3-4bit", 2);
}

/// A copy of fixture `name` with its layers repeated to `layers` (layer
/// `i` of the copy is layer `i % L` of the original), in a temp folder.
fn deeper_copy(name: &str, layers: i64) -> PathBuf {
  let src = fixture(name);
  let dir = std::env::temp_dir().join(format!("mlxrs-pp-deep-{name}-{}", std::process::id()));
  std::fs::create_dir_all(&dir).unwrap();
  for f in std::fs::read_dir(&src).unwrap() {
    let f = f.unwrap().path();
    let n = f.file_name().unwrap().to_string_lossy().to_string();
    if n.ends_with(".json") && n != "config.json" && n != "model.safetensors.index.json" {
      std::fs::copy(&f, dir.join(&n)).unwrap();
    }
  }
  let mut cfg: Value =
    serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
  let orig = cfg["num_hidden_layers"].as_i64().unwrap();
  cfg["num_hidden_layers"] = Value::from(layers);
  std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
  let (w, meta) = mlxrs_core::io::load_safetensors(src.join("model.safetensors")).unwrap();
  let mut out = std::collections::HashMap::new();
  for (k, a) in &w {
    match layer_of(k) {
      Some(i) => {
        let tail = &k[format!("model.layers.{i}.").len()..];
        for j in (0..layers).filter(|j| j % orig == i as i64) {
          out.insert(format!("model.layers.{j}.{tail}"), a.clone());
        }
      }
      None => {
        out.insert(k.clone(), a.clone());
      }
    }
  }
  mlxrs_core::io::save_safetensors(dir.join("model.safetensors"), &out, &meta).unwrap();
  dir
}

/// 4 ranks (one layer each) on a 4-layer copy of the llama fixture, and
/// 3 ranks on a 5-layer copy (uneven shares 2, 2, 1): equal to the same
/// copy in one process.
#[test]
fn llama_four_and_three_stages_deeper_copy() {
  for (layers, n) in [(4, 4), (5, 3)] {
    let dir = deeper_copy("llama", layers);
    let name = dir.to_string_lossy().to_string();
    let (model, _) = load_model_dir(&dir, Some(Dtype::Float32)).unwrap();
    let (logits, tokens) = run_model(model.as_ref(), &prompt_of("llama"));
    drop(model);
    check_pp(&name, n, &tokens, &logits, "one process");
    let _ = std::fs::remove_dir_all(&dir);
  }
}

/// More ranks than layers: every rank refuses with a clear error.
#[test]
fn more_ranks_than_layers_refused() {
  let run = run_ranks("pp", "llama", 4, None, TIMEOUT);
  assert!(!run.timed_out, "did not finish:\n{}", run.report);
  for k in 0..4 {
    assert_eq!(
      run.status[k].and_then(|s| s.code()),
      Some(2),
      "rank {k}:\n{}",
      run.report
    );
    assert!(
      run.out[k].contains("a pipeline over 4 ranks needs at least 4 layers; the model has 2"),
      "rank {k}:\n{}",
      run.report
    );
  }
}

/// Rank 1 (the first stage) exits right after the group is set up; rank
/// 0, blocked in its recv, must end (with an error) rather than hang.
#[test]
fn dead_stage_does_not_hang_the_next() {
  let run = run_ranks("pp", "llama", 2, Some(1), DEAD_PEER_TIMEOUT);
  assert!(
    !run.timed_out,
    "rank 0 still running {DEAD_PEER_TIMEOUT:?} after rank 1 died:\n{}",
    run.report
  );
  assert_eq!(
    run.status[1].and_then(|s| s.code()),
    Some(3),
    "{}",
    run.report
  );
  assert!(
    !run.status[0].is_some_and(|s| s.success()),
    "rank 0 cannot have succeeded without its peer:\n{}",
    run.report
  );
  eprintln!("rank 0 ended {:?} after start", run.elapsed);
}
