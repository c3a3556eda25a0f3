//! Two processes, one GPU each, talking through MLX's `nccl` distributed
//! backend (python `mx.distributed.init(backend="nccl")` under
//! `mlx.launch --backend nccl -n 2`).
//!
//! ```sh
//! cargo build -p mlxrs-core --example nccl_two_gpus
//! # on a machine with 2 NVIDIA GPUs and the mlx-cuda wheel (docs/gpu.md):
//! LD_LIBRARY_PATH=/path/to/mlx-cuda/mlx/lib ./nccl_two_gpus
//! ```
//!
//! Without arguments this is the launcher: it starts itself twice with
//! `--worker`, as ranks 0 and 1, with the environment that MLX 0.32.4's
//! NCCL backend reads (`mlx/distributed/nccl/nccl.cpp`, `nccl::init`) and
//! that `mlx.launch` sets (`mlx/_distributed_utils/launch.py`,
//! `launch_nccl`):
//!
//! - `MLX_RANK`: the rank;
//! - `MLX_WORLD_SIZE`: the number of ranks (2);
//! - `NCCL_HOST_IP`, `NCCL_PORT`: where rank 0 hands out the NCCL unique id
//!   over TCP (here 127.0.0.1 and a free port; both can be overridden by
//!   setting them before starting the launcher);
//! - `CUDA_VISIBLE_DEVICES`: one GPU per rank, as `mlx.launch` does
//!   (`CUDA_VISIBLE_DEVICES={rank % repeat_hosts}`). Each worker then sees
//!   a single GPU, MLX's `gpu:0`, and NCCL's `cudaSetDevice(rank % ndev)`
//!   picks the same one. If the launcher's own `CUDA_VISIBLE_DEVICES` lists
//!   GPUs (e.g. `2,3`), rank r gets the r-th of them;
//! - `MLX_NCCL_TIMEOUT` (ms; MLX's default 300000): how long rank 1 retries
//!   connecting to rank 0; set to 30000 unless already set.
//!
//! `nccl_two_gpus --worker` runs one rank from that environment alone (so it
//! also runs under `mlx.launch --backend nccl -n 2 -- nccl_two_gpus
//! --worker`). Each worker checks, on GPU arrays of float32 small integers
//! (exact sums), against values computed locally: `all_sum` (on the group
//! and the global group), `all_gather` (1-D and 2-D), `all_max`, `all_min`,
//! `sum_scatter` and `Group::split` (NCCL has them all in MLX 0.32.4), then
//! times an `all_sum` of 64M float32 (256 MiB) and prints its bandwidth. It
//! prints one line per check and `NCCL OK rank R` at the end; a mismatch
//! exits non-zero with a message.
//!
//! The launcher forwards the workers' output prefixed with `[rank R]`,
//! kills both and exits non-zero if they have not finished within 60 s (or
//! soon after one of them fails), and exits 0 only if both printed
//! `NCCL OK`. On a libmlx without the CUDA backend or without NCCL (the CPU
//! wheel) it prints an error and exits 2 without starting anything.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mlxrs_core::{Array, Device, DeviceType, Dtype, distributed as dist, ops};

const WORLD: usize = 2;
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the other rank may go on after one rank failed.
const GRACE: Duration = Duration::from_secs(3);
/// Rank r contributes `BASE * (r + 1)`: the signs make max / min come from
/// different ranks per element.
const BASE: [f32; 6] = [1.0, -2.0, 3.0, 0.0, 5.0, -7.0];
/// Elements of the timed all_sum (64M float32, 256 MiB).
const BIG: i32 = 64 * 1024 * 1024;
const WARMUP: usize = 2;
const ITERS: usize = 10;

type Res<T> = std::result::Result<T, String>;

fn main() {
  let args: Vec<String> = std::env::args().skip(1).collect();
  let code = match args
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>()
    .as_slice()
  {
    [] => launcher(),
    ["--worker"] => worker_main(),
    _ => {
      eprintln!("usage: nccl_two_gpus            (launcher: starts ranks 0 and 1)");
      eprintln!("       nccl_two_gpus --worker   (one rank; environment as set by the launcher)");
      2
    }
  };
  std::process::exit(code);
}

// ---------------------------------------------------------------- launcher

fn free_port() -> Res<u16> {
  TcpListener::bind("127.0.0.1:0")
    .and_then(|l| l.local_addr())
    .map(|a| a.port())
    .map_err(|e| format!("no free local port: {e}"))
}

/// Forward a worker's stream line by line with a rank prefix; returns
/// whether the line `NCCL OK rank R` was seen.
fn forward<R: Read + Send + 'static>(src: R, rank: usize, to_stderr: bool) -> JoinHandle<bool> {
  std::thread::spawn(move || {
    let want = format!("NCCL OK rank {rank}");
    let mut seen = false;
    for line in BufReader::new(src).lines() {
      let Ok(line) = line else { break };
      seen |= line.trim() == want;
      if to_stderr {
        let _ = writeln!(std::io::stderr().lock(), "[rank {rank}] {line}");
      } else {
        let _ = writeln!(std::io::stdout().lock(), "[rank {rank}] {line}");
      }
    }
    seen
  })
}

fn kill(kids: &mut [Option<Child>]) {
  for c in kids.iter_mut().flatten() {
    let _ = c.kill();
    let _ = c.wait();
  }
}

fn launcher() -> i32 {
  println!("launcher: mlx {}", mlxrs_core::version());
  if !Device::is_available(DeviceType::Gpu) {
    eprintln!(
      "error: the loaded libmlx has no GPU backend (the CPU wheel?). This example needs MLX's \
       CUDA backend (mlx-cuda wheel, LD_LIBRARY_PATH=<mlx-cuda>/mlx/lib, see docs/gpu.md) and \
       2 NVIDIA GPUs."
    );
    return 2;
  }
  if !dist::is_available(Some("nccl")) {
    eprintln!(
      "error: the loaded libmlx has no NCCL distributed backend \
       (mx.distributed.is_available(\"nccl\") is false); use the mlx-cuda wheel."
    );
    return 2;
  }

  // One GPU per rank, as mlx.launch: CUDA_VISIBLE_DEVICES=<rank>, or the
  // rank-th entry of the launcher's own CUDA_VISIBLE_DEVICES.
  let gpus: Vec<String> = match std::env::var("CUDA_VISIBLE_DEVICES") {
    Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
    _ => (0..WORLD).map(|r| r.to_string()).collect(),
  };
  if gpus.len() < WORLD {
    eprintln!("error: CUDA_VISIBLE_DEVICES={gpus:?} names fewer than {WORLD} GPUs");
    return 2;
  }
  let host = std::env::var("NCCL_HOST_IP").unwrap_or_else(|_| "127.0.0.1".into());
  let port = match std::env::var("NCCL_PORT") {
    Ok(p) => p,
    Err(_) => match free_port() {
      Ok(p) => p.to_string(),
      Err(e) => {
        eprintln!("error: {e}");
        return 2;
      }
    },
  };
  let nccl_timeout = std::env::var("MLX_NCCL_TIMEOUT").unwrap_or_else(|_| "30000".into());
  let exe = match std::env::current_exe() {
    Ok(p) => p,
    Err(e) => {
      eprintln!("error: cannot find this program's path: {e}");
      return 2;
    }
  };

  let mut kids: Vec<Option<Child>> = Vec::new();
  let mut readers: Vec<(JoinHandle<bool>, JoinHandle<bool>)> = Vec::new();
  for (rank, gpu) in gpus.iter().take(WORLD).enumerate() {
    println!(
      "launcher: rank {rank}: MLX_RANK={rank} MLX_WORLD_SIZE={WORLD} NCCL_HOST_IP={host} \
       NCCL_PORT={port} CUDA_VISIBLE_DEVICES={gpu} MLX_NCCL_TIMEOUT={nccl_timeout}"
    );
    let spawned = Command::new(&exe)
      .arg("--worker")
      .env("MLX_RANK", rank.to_string())
      .env("MLX_WORLD_SIZE", WORLD.to_string())
      .env("NCCL_HOST_IP", &host)
      .env("NCCL_PORT", &port)
      .env("CUDA_VISIBLE_DEVICES", gpu)
      .env("MLX_NCCL_TIMEOUT", &nccl_timeout)
      .stdin(Stdio::null())
      .stdout(Stdio::piped())
      .stderr(Stdio::piped())
      .spawn();
    match spawned {
      Ok(mut c) => {
        let (out, err) = (c.stdout.take(), c.stderr.take());
        if let (Some(out), Some(err)) = (out, err) {
          readers.push((forward(out, rank, false), forward(err, rank, true)));
        }
        kids.push(Some(c));
      }
      Err(e) => {
        eprintln!("error: cannot start rank {rank} ({}): {e}", exe.display());
        kill(&mut kids);
        return 2;
      }
    }
  }

  let start = Instant::now();
  let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; WORLD];
  let mut first_failure: Option<Instant> = None;
  let mut killed_reason: Option<String> = None;
  while status.iter().any(Option::is_none) {
    for (k, c) in kids.iter_mut().enumerate() {
      let Some(c) = c.as_mut().filter(|_| status[k].is_none()) else {
        continue;
      };
      match c.try_wait() {
        Ok(Some(s)) => {
          status[k] = Some(s);
          if !s.success() && first_failure.is_none() {
            first_failure = Some(Instant::now());
          }
        }
        Ok(None) => {}
        Err(e) => eprintln!("launcher: waiting for rank {k}: {e}"),
      }
    }
    if status.iter().all(Option::is_some) {
      break;
    }
    if start.elapsed() >= TIMEOUT {
      killed_reason = Some(format!("timed out after {TIMEOUT:?}"));
    } else if first_failure.is_some_and(|t| t.elapsed() >= GRACE) {
      killed_reason = Some(format!("the other rank failed {GRACE:?} earlier"));
    }
    if let Some(why) = &killed_reason {
      for (k, c) in kids.iter_mut().enumerate() {
        let Some(c) = c.as_mut().filter(|_| status[k].is_none()) else {
          continue;
        };
        eprintln!("launcher: killing rank {k} ({why})");
        let _ = c.kill();
        status[k] = c.wait().ok();
      }
      break;
    }
    std::thread::sleep(Duration::from_millis(50));
  }

  let oks: Vec<bool> = readers
    .into_iter()
    .map(|(o, e)| {
      let _ = e.join();
      o.join().unwrap_or(false)
    })
    .collect();
  let mut passed = killed_reason.is_none();
  for (k, st) in status.iter().copied().enumerate() {
    let ok = oks.get(k).copied().unwrap_or(false);
    println!(
      "launcher: rank {k}: {}, NCCL OK line {}",
      st.map_or("exit status unknown".to_string(), |s| s.to_string()),
      if ok { "seen" } else { "missing" }
    );
    passed &= ok && st.is_some_and(|s| s.success());
  }
  if let Some(why) = killed_reason {
    eprintln!("launcher: FAILED: workers killed: {why}");
    return 3;
  }
  if passed {
    println!(
      "launcher: both ranks passed (NCCL OK) in {:.1} s",
      start.elapsed().as_secs_f64()
    );
    0
  } else {
    eprintln!("launcher: FAILED: a rank failed (see its output above)");
    1
  }
}

// ----------------------------------------------------------------- worker

fn worker_main() -> i32 {
  let rank = std::env::var("MLX_RANK").unwrap_or_else(|_| "?".into());
  match worker() {
    Ok(r) => {
      println!("NCCL OK rank {r}");
      0
    }
    Err(e) => {
      eprintln!("rank {rank} FAILED: {e}");
      1
    }
  }
}

fn mlx<T>(what: &str, r: mlxrs_core::Result<T>) -> Res<T> {
  r.map_err(|e| format!("{what}: {e}"))
}

/// Evaluate (on the GPU stream) and read back.
fn vals(what: &str, mut a: Array) -> Res<Vec<f32>> {
  mlx(what, a.eval())?;
  mlx(what, a.to_vec::<f32>())
}

fn expect(r: i32, what: &str, a: Array, want_shape: &[i32], want: &[f32]) -> Res<()> {
  let shape = a.shape();
  if shape != want_shape {
    return Err(format!("{what}: shape {shape:?}, expected {want_shape:?}"));
  }
  let got = vals(what, a)?;
  if got != want {
    return Err(format!("{what}: got {got:?}, expected {want:?}"));
  }
  println!("rank {r}: {what} OK {got:?}");
  Ok(())
}

fn contrib(r: i32) -> Vec<f32> {
  BASE.iter().map(|v| v * (r + 1) as f32).collect()
}

fn elementwise(n: i32, f: impl Fn(&[f32]) -> f32) -> Vec<f32> {
  let all: Vec<Vec<f32>> = (0..n).map(contrib).collect();
  (0..BASE.len())
    .map(|i| f(&all.iter().map(|v| v[i]).collect::<Vec<_>>()))
    .collect()
}

fn worker() -> Res<i32> {
  let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "<unset>".into());
  println!(
    "worker: mlx {} MLX_RANK={} MLX_WORLD_SIZE={} NCCL_HOST_IP={} NCCL_PORT={} \
     CUDA_VISIBLE_DEVICES={}",
    mlxrs_core::version(),
    env("MLX_RANK"),
    env("MLX_WORLD_SIZE"),
    env("NCCL_HOST_IP"),
    env("NCCL_PORT"),
    env("CUDA_VISIBLE_DEVICES")
  );
  if !Device::is_available(DeviceType::Gpu) {
    return Err("no GPU: the loaded libmlx has no CUDA backend or no GPU is visible".into());
  }
  let dev = mlx("default device", Device::default_device())?;
  if dev.kind != DeviceType::Gpu {
    return Err(format!("default device is {dev}, expected a GPU"));
  }

  let g = mlx(
    "distributed::init(true, \"nccl\")",
    dist::init(true, "nccl"),
  )?;
  let (r, n) = (g.rank(), g.size());
  let env_rank = std::env::var("MLX_RANK")
    .ok()
    .and_then(|s| s.parse::<i32>().ok());
  if n != WORLD as i32 || env_rank != Some(r) {
    return Err(format!(
      "init: rank {r} of {n}, expected rank {env_rank:?} of {WORLD} (MLX_RANK / MLX_WORLD_SIZE)"
    ));
  }
  println!("rank {r}: init OK: rank {r} of {n}, default device {dev}");

  let len = BASE.len() as i32;
  let x = mlx("x", Array::from_slice::<f32>(&contrib(r), &[len]))?;

  let want_sum = elementwise(n, |v| v.iter().sum());
  expect(
    r,
    "all_sum",
    mlx("all_sum", dist::all_sum(&x, Some(&g)))?,
    &[len],
    &want_sum,
  )?;
  expect(
    r,
    "all_sum (global group)",
    mlx("all_sum", dist::all_sum(&x, None))?,
    &[len],
    &want_sum,
  )?;

  let want_gather: Vec<f32> = (0..n).flat_map(contrib).collect();
  expect(
    r,
    "all_gather",
    mlx("all_gather", dist::all_gather(&x, Some(&g)))?,
    &[len * n],
    &want_gather,
  )?;
  let x2 = mlx("x2", Array::from_slice::<f32>(&contrib(r), &[2, len / 2]))?;
  expect(
    r,
    "all_gather 2-D",
    mlx("all_gather", dist::all_gather(&x2, Some(&g)))?,
    &[2 * n, len / 2],
    &want_gather,
  )?;

  let want_max = elementwise(n, |v| v.iter().copied().fold(f32::MIN, f32::max));
  expect(
    r,
    "all_max",
    mlx("all_max", dist::all_max(&x, Some(&g)))?,
    &[len],
    &want_max,
  )?;
  let want_min = elementwise(n, |v| v.iter().copied().fold(f32::MAX, f32::min));
  expect(
    r,
    "all_min",
    mlx("all_min", dist::all_min(&x, Some(&g)))?,
    &[len],
    &want_min,
  )?;

  // Reduce-scatter: the sum of every rank's x, rank r keeps rows
  // [r * len / n, (r + 1) * len / n).
  let chunk = (len / n) as usize;
  let lo = r as usize * chunk;
  expect(
    r,
    "sum_scatter",
    mlx("sum_scatter", dist::sum_scatter(&x, Some(&g)))?,
    &[len / n],
    &want_sum[lo..lo + chunk],
  )?;

  // Split with one colour and reversed keys: same two processes, ranks
  // swapped, so an all_gather on the new group comes in reverse order.
  let sub = mlx("Group::split", g.split(0, Some(n - 1 - r)))?;
  if (sub.rank(), sub.size()) != (n - 1 - r, n) {
    return Err(format!(
      "split(0, key={}): rank {} of {}, expected rank {} of {n}",
      n - 1 - r,
      sub.rank(),
      sub.size(),
      n - 1 - r
    ));
  }
  let want_rev: Vec<f32> = (0..n).rev().flat_map(contrib).collect();
  expect(
    r,
    "split (reversed keys) + all_gather",
    mlx("all_gather", dist::all_gather(&x, Some(&sub)))?,
    &[len * n],
    &want_rev,
  )?;

  bandwidth(r, n, &g)?;
  Ok(r)
}

/// Check that every element of `y` is `want` (reduced on the GPU).
fn all_equal(what: &str, y: &Array, want: f32) -> Res<()> {
  let mut hi = mlx(what, ops::max(y, false))?;
  let mut lo = mlx(what, ops::min(y, false))?;
  let (hi, lo) = (mlx(what, hi.item::<f32>())?, mlx(what, lo.item::<f32>())?);
  if hi != want || lo != want {
    return Err(format!(
      "{what}: elements in [{lo}, {hi}], expected all {want}"
    ));
  }
  Ok(())
}

fn bandwidth(r: i32, n: i32, g: &dist::Group) -> Res<()> {
  let mut x = mlx(
    "big x",
    Array::full(&[BIG], f64::from(r + 1), Dtype::Float32),
  )?;
  mlx("big x", x.eval())?;
  let want = (1..=n).sum::<i32>() as f32;
  let what = format!("all_sum {}M float32", BIG >> 20);
  let mut times = Vec::with_capacity(ITERS);
  for i in 0..WARMUP + ITERS {
    let t = Instant::now();
    let mut y = mlx(&what, dist::all_sum(&x, Some(g)))?;
    mlx(&what, y.eval())?;
    mlx(&what, mlxrs_core::synchronize())?;
    let dt = t.elapsed();
    if i >= WARMUP {
      times.push(dt.as_secs_f64());
    }
    if i == 0 || i == WARMUP + ITERS - 1 {
      all_equal(&what, &y, want)?;
    }
  }
  let bytes = f64::from(BIG) * 4.0;
  let best = times.iter().copied().fold(f64::INFINITY, f64::min);
  let mean = times.iter().sum::<f64>() / times.len() as f64;
  // nccl-tests convention: bus bandwidth = algorithm bandwidth * 2(n-1)/n.
  let bus = 2.0 * f64::from(n - 1) / f64::from(n);
  println!(
    "rank {r}: {what} ({:.0} MiB) OK, all = {want}; {ITERS} runs: best {:.3} ms, mean {:.3} ms; \
     algbw {:.1} GB/s (best) {:.1} GB/s (mean), busbw {:.1} GB/s (best)",
    bytes / (1 << 20) as f64,
    best * 1e3,
    mean * 1e3,
    bytes / best / 1e9,
    bytes / mean / 1e9,
    bytes / best / 1e9 * bus
  );
  Ok(())
}
