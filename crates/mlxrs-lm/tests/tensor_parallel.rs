//! Tensor-parallel generation over MLX's `ring` backend on loopback, as
//! `mlx.launch --backend ring -n 2` runs mlx-lm's sharded models: each test
//! starts this test binary twice (the ignored `tp_worker` test) with
//! `MLX_RANK` = 0 / 1 and `MLX_HOSTFILE` naming two `127.0.0.1` ports. Each
//! rank loads only its slices of a tiny fixture (`load_model_dir_sharded`)
//! and reports the last-position logits of a forward pass over the
//! reference prompt and 20 greedy tokens of cached decoding.
//!
//! Compared against: the fixture's `reference.json`, written by mlx-lm
//! 0.32.2 in ONE process on the unsharded checkpoint
//! (`scripts/make_lm_fixtures.py`). Greedy tokens must be equal on every
//! rank; logits within 1e-4 absolute (float32; max |logit| of the
//! references is ~10; the split only reorders the sums of o_proj / down_proj
//! into per-rank partial sums plus an all_sum). Both ranks must also agree
//! with each other exactly (all_sum gives every rank the same bytes).
//!
//! A hang (a peer that never connects) fails the test after `TIMEOUT`
//! instead of blocking CI: the parent kills the workers. A rank that dies
//! mid-run must make its peer exit within `DEAD_PEER_TIMEOUT`.

use std::path::PathBuf;
use std::time::Duration;

use mlxrs_core::{Array, Device, Dtype, distributed as dist, memory, with_device};
use mlxrs_lm::shard::{TensorShard, split_axis};
use mlxrs_lm::{StepConfig, TokenGenerator, load_model_dir_sharded};
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

/// The worker: does nothing unless started by a test below.
#[test]
#[ignore = "started by the tensor-parallel tests in a child process"]
fn tp_worker() {
  let Some(name) = std::env::var_os("MLXRS_TP_WORKER") else {
    return;
  };
  let name = name.to_string_lossy().to_string();
  // The ring backend communicates from the CPU stream (python
  // `stream=mx.cpu`); on a CPU-only build this is the default anyway.
  with_device(Device::CPU, || worker(&name)).expect("cpu stream");
}

fn worker(name: &str) {
  let g = dist::init(true, "ring").expect("ring init");
  let (rank, size) = (g.rank(), g.size());
  if std::env::var("MLXRS_TP_DIE_RANK").ok() == Some(rank.to_string()) {
    // A rank that dies after the group is up: its peer must not hang.
    std::process::exit(3);
  }
  let r: Value =
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
      .unwrap();
  let prompt = ints(&r["prompt_ids"]);
  memory::reset_peak_memory().unwrap();
  let shard = TensorShard::new(rank, size).unwrap();
  let (model, _) = match load_model_dir_sharded(&fixture(name), Some(Dtype::Float32), Some(shard)) {
    Ok(m) => m,
    Err(e) => {
      println!("TP_ERROR rank={rank} {e}");
      std::process::exit(2);
    }
  };
  let mut param_bytes = 0usize;
  model.visit(&mut |_, a| param_bytes += a.nbytes());
  let (active, peak) = (
    memory::active_memory().unwrap(),
    memory::peak_memory().unwrap(),
  );
  let mut caches = model.make_caches(None);
  let x = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
  let mut logits = model.forward(&x, &mut caches).unwrap();
  logits.eval().unwrap();
  let all = logits.to_vec::<f32>().unwrap();
  let v = model.vocab_size() as usize;
  let last = all[all.len() - v..].to_vec();
  let cfg = StepConfig {
    max_tokens: 20,
    ..StepConfig::default()
  };
  let tokens: Vec<i32> = TokenGenerator::new(model.as_ref(), &prompt, &cfg, None)
    .unwrap()
    .map(|s| s.unwrap().token)
    .collect();
  let out = serde_json::json!({
    "rank": rank, "size": size, "tokens": tokens, "logits_last": last,
    "param_bytes": param_bytes, "active_after_load": active, "peak_after_load": peak,
  });
  println!("TP_RESULT {out}");
}

/// `n` ranks on `name`: tokens equal to mlx-lm's single process, logits
/// within `TOL`, both ranks identical.
fn check_tp(name: &str, n: usize) {
  let r: Value =
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
      .unwrap();
  let want_tokens = ints(&r["greedy_tokens"]);
  let want_logits: Vec<f32> = r["logits_last"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_f64().unwrap() as f32)
    .collect();
  // The unsharded model's bytes: replicated tensors + those split 1/n.
  let (full, _) = load_model_dir_sharded(&fixture(name), Some(Dtype::Float32), None).unwrap();
  let (mut replicated, mut split) = (0usize, 0usize);
  full.visit(&mut |k, a| {
    if split_axis(k, a.ndim()).is_some() {
      split += a.nbytes();
    } else {
      replicated += a.nbytes();
    }
  });
  drop(full);
  let run = run_ranks("tp", name, n, None, TIMEOUT);
  assert!(
    !run.timed_out,
    "{name}: ranks did not finish within {TIMEOUT:?} (killed):\n{}",
    run.report
  );
  let mut first: Option<Value> = None;
  for k in 0..n {
    assert!(
      run.status[k].is_some_and(|s| s.success()),
      "{name}: rank {k} failed:\n{}",
      run.report
    );
    let v = result_line("tp", &run.out[k])
      .unwrap_or_else(|| panic!("{name}: rank {k} printed no result:\n{}", run.report));
    assert_eq!(v["rank"], k as i64);
    assert_eq!(v["size"], n as i64);
    assert_eq!(
      ints(&v["tokens"]),
      want_tokens,
      "{name}: rank {k} greedy tokens"
    );
    let got: Vec<f32> = v["logits_last"]
      .as_array()
      .unwrap()
      .iter()
      .map(|x| x.as_f64().unwrap() as f32)
      .collect();
    assert_eq!(got.len(), want_logits.len());
    let max_diff = got
      .iter()
      .zip(&want_logits)
      .map(|(g, w)| (g - w).abs())
      .fold(0.0f32, f32::max);
    assert!(
      max_diff <= TOL,
      "{name}: rank {k} max |logit diff| {max_diff} > {TOL}"
    );
    // Each rank holds the replicated tensors and exactly 1/n of the rest.
    assert_eq!(
      v["param_bytes"].as_u64(),
      Some((replicated + split / n) as u64),
      "{name}: rank {k} parameter bytes"
    );
    eprintln!(
      "{name} rank {k}/{n}: max |logit diff| vs mlx-lm {max_diff:.2e}, 20 greedy tokens equal; \
       unsharded {} B (replicated {replicated} B + split {split} B), this rank's params {} B, \
       active after load {} B, peak during load {} B",
      replicated + split,
      v["param_bytes"],
      v["active_after_load"],
      v["peak_after_load"]
    );
    match &first {
      None => first = Some(v),
      Some(f) => assert_eq!(
        f["logits_last"], v["logits_last"],
        "{name}: ranks disagree on the logits"
      ),
    }
  }
}

#[test]
fn llama_two_ranks() {
  check_tp("llama", 2);
}

#[test]
fn llama_4bit_two_ranks() {
  check_tp("llama-4bit", 2);
}

#[test]
fn qwen3_two_ranks() {
  check_tp("qwen3", 2);
}

#[test]
fn qwen2_4bit_two_ranks() {
  check_tp("qwen2-4bit", 2);
}

#[test]
fn qwen3_moe_two_ranks() {
  check_tp("qwen3_moe", 2);
}

#[test]
fn mixtral_two_ranks() {
  check_tp("mixtral", 2);
}

#[test]
fn gemma2_two_ranks() {
  check_tp("gemma2", 2);
}

/// gpt-oss: attention sinks split with the heads, expert biases of
/// gate/up split with their rows, down_proj's bias added once after the sum.
#[test]
fn gpt_oss_two_ranks() {
  check_tp("gpt_oss", 2);
}

/// DeepSeek-V3 (MLA): q_b_proj rows and the per-head embed_q /
/// unembed_out split with the heads, routed and shared experts split,
/// the router and the low-rank q_a / kv_a projections replicated.
#[test]
fn deepseek_v3_two_ranks() {
  check_tp("deepseek_v3", 2);
}

/// mixtral-4bit's experts have 32 hidden features in one quantization
/// group of 32: down_proj's columns cannot be split in two, and every rank
/// says so (naming the tensor) instead of loading a wrong model.
#[test]
fn mixtral_4bit_refuses_a_split_quantization_group() {
  let run = run_ranks("tp", "mixtral-4bit", 2, None, TIMEOUT);
  assert!(!run.timed_out, "did not finish:\n{}", run.report);
  for k in 0..2 {
    assert_eq!(
      run.status[k].and_then(|s| s.code()),
      Some(2),
      "rank {k}:\n{}",
      run.report
    );
    assert!(
      run.out[k].contains("switch_mlp.down_proj.biases [4, 64, 1] axis 2 (1) is not divisible by 2 (quantization groups"),
      "rank {k}:\n{}",
      run.report
    );
  }
}

/// Four ranks need four key/value heads: a copy of the llama fixture with
/// each of its 2 kv heads repeated twice (`k_proj` / `v_proj` rows, as
/// grouped-query attention shares them: query head h reads kv head h / 2,
/// so the model computes exactly the same function) is split over 4 ranks
/// (1 query head, 1 kv head, 16 MLP features each) and must still match
/// mlx-lm's single-process reference for the original fixture.
#[test]
fn llama_four_ranks_kv_heads_repeated() {
  let src = fixture("llama");
  let dir = std::env::temp_dir().join(format!("mlxrs-tp4-llama-{}", std::process::id()));
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
  let (kv, hd) = (
    cfg["num_key_value_heads"].as_i64().unwrap() as i32,
    cfg["head_dim"].as_i64().unwrap() as i32,
  );
  cfg["num_key_value_heads"] = Value::from(kv * 2);
  std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
  let (mut w, meta) = mlxrs_core::io::load_safetensors(src.join("model.safetensors")).unwrap();
  for (k, a) in w.iter_mut() {
    if k.ends_with("k_proj.weight") || k.ends_with("v_proj.weight") {
      let cols = a.shape()[1];
      let h = mlxrs_core::ops::reshape(a, &[kv, hd, cols]).unwrap();
      let h = mlxrs_core::ops::repeat_axis(&h, 2, 0).unwrap();
      *a = mlxrs_core::ops::reshape(&h, &[2 * kv * hd, cols]).unwrap();
    }
  }
  mlxrs_core::io::save_safetensors(dir.join("model.safetensors"), &w, &meta).unwrap();
  let name = dir.to_string_lossy().to_string();
  check_tp(&name, 4);
  let _ = std::fs::remove_dir_all(&dir);
}

/// The fixtures have 2 key/value heads: 4 ranks cannot split them, and
/// every rank says so instead of loading a wrong model.
#[test]
fn four_ranks_refuse_two_kv_heads() {
  let run = run_ranks("tp", "llama", 4, None, TIMEOUT);
  assert!(!run.timed_out, "did not finish:\n{}", run.report);
  for k in 0..4 {
    assert_eq!(
      run.status[k].and_then(|s| s.code()),
      Some(2),
      "rank {k}:\n{}",
      run.report
    );
    assert!(
      run.out[k].contains("num_key_value_heads = 2 is not divisible by 4"),
      "rank {k}:\n{}",
      run.report
    );
  }
}

/// Rank 1 exits right after the group is set up; rank 0, blocked in its
/// first all_sum, must end (with an error) rather than hang.
#[test]
fn dead_rank_does_not_hang_its_peer() {
  let run = run_ranks("tp", "llama", 2, Some(1), DEAD_PEER_TIMEOUT);
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
  eprintln!(
    "rank 0 ended {:?} after start:\n{}",
    run.elapsed, run.report
  );
}
