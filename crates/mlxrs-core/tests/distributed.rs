//! Two processes over loopback with MLX's `ring` backend, as `mlx.launch
//! --backend ring` runs them: `two_ranks_over_ring` starts this test binary
//! twice (the ignored `ring_worker` test) with `MLX_RANK` = 0 / 1 and
//! `MLX_HOSTFILE` naming two `127.0.0.1` ports, and checks both exit cleanly.
//!
//! Each worker checks the collectives against values it computes locally
//! from what every rank contributes (rank r holds `base * (r + 1)`):
//! all_sum, all_gather, all_max, all_min, send / recv / recv_like between
//! the two ranks, and that the ring backend's unsupported operations
//! (`sum_scatter`, `Group::split`) are errors, as in python mlx 0.32.4
//! (`[ring] sum_scatter not supported.`, `[ring] Group split not
//! supported.`). Float32 values here are small integers and halves, so
//! sums are exact: comparisons are exact.
//!
//! A hang (a peer that never connects) fails the test after
//! `TIMEOUT` instead of blocking CI: the parent kills both workers.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlxrs_core::{Array, Device, Dtype, distributed as dist, with_device};

const TIMEOUT: Duration = Duration::from_secs(90);
const BASE: [f32; 4] = [1.0, -2.0, 3.5, 0.5];

fn scaled(r: i32) -> Vec<f32> {
  BASE.iter().map(|v| v * (r + 1) as f32).collect()
}

fn vals(mut a: Array) -> Vec<f32> {
  a.eval().expect("evaluate");
  a.to_vec::<f32>().expect("read")
}

/// The worker: does nothing unless started by `two_ranks_over_ring`.
#[test]
#[ignore = "started by two_ranks_over_ring in a child process"]
fn ring_worker() {
  if std::env::var_os("MLXRS_RING_WORKER").is_none() {
    return;
  }
  // The ring backend communicates from the CPU stream (python
  // `stream=mx.cpu`); on a CPU-only build this is the default anyway.
  with_device(Device::CPU, ring_checks).expect("cpu stream");
}

fn ring_checks() {
  let g = dist::init(true, "ring").expect("ring init");
  let (r, n) = (g.rank(), g.size());
  assert_eq!(n, 2, "world size");
  let x = Array::from_slice::<f32>(&scaled(r), &[4]).unwrap();
  let all: Vec<Vec<f32>> = (0..n).map(scaled).collect();

  let want_sum: Vec<f32> = (0..4).map(|i| all.iter().map(|v| v[i]).sum()).collect();
  assert_eq!(
    vals(dist::all_sum(&x, Some(&g)).unwrap()),
    want_sum,
    "all_sum"
  );
  // The global group (None) is the same group here.
  assert_eq!(
    vals(dist::all_sum(&x, None).unwrap()),
    want_sum,
    "all_sum global"
  );
  let want_gather: Vec<f32> = all.concat();
  let gathered = dist::all_gather(&x, Some(&g)).unwrap();
  assert_eq!(gathered.shape(), vec![8]);
  assert_eq!(vals(gathered), want_gather, "all_gather");
  let want_max: Vec<f32> = (0..4)
    .map(|i| all.iter().map(|v| v[i]).fold(f32::MIN, f32::max))
    .collect();
  let want_min: Vec<f32> = (0..4)
    .map(|i| all.iter().map(|v| v[i]).fold(f32::MAX, f32::min))
    .collect();
  assert_eq!(
    vals(dist::all_max(&x, Some(&g)).unwrap()),
    want_max,
    "all_max"
  );
  assert_eq!(
    vals(dist::all_min(&x, Some(&g)).unwrap()),
    want_min,
    "all_min"
  );

  // Point to point: 0 -> 1 with recv, then 1 -> 0 (value + 1) with recv_like.
  if r == 0 {
    let mut tok = dist::send(&x, 1, Some(&g)).unwrap();
    tok.eval().expect("send");
    let back = vals(dist::recv_like(&x, 1, Some(&g)).unwrap());
    let want: Vec<f32> = all[0].iter().map(|v| v + 1.0).collect();
    assert_eq!(back, want, "recv_like from rank 1");
  } else {
    let got = dist::recv(&[4], Dtype::Float32, 0, Some(&g)).unwrap();
    assert_eq!(got.dtype(), Dtype::Float32);
    let v = vals(got.clone());
    assert_eq!(v, all[0], "recv from rank 0");
    let mut tok = dist::send(&(&got + 1.0).unwrap(), 0, Some(&g)).unwrap();
    tok.eval().expect("send back");
  }

  // Unsupported by the ring backend: errors, not aborts.
  let mut ss = dist::sum_scatter(&x, Some(&g)).unwrap();
  let e = ss.eval().expect_err("ring has no sum_scatter");
  assert!(e.to_string().contains("sum_scatter"), "{e}");
  let e = g.split(r, None).expect_err("ring has no split");
  assert!(e.to_string().contains("split"), "{e}");
  println!("RING_WORKER_OK rank={r} size={n}");
}

fn free_port() -> u16 {
  TcpListener::bind("127.0.0.1:0")
    .and_then(|l| l.local_addr())
    .map(|a| a.port())
    .expect("a free local port")
}

fn spawn(rank: usize, hostfile: &std::path::Path) -> Child {
  Command::new(std::env::current_exe().expect("test binary path"))
    .args([
      "--ignored",
      "--exact",
      "ring_worker",
      "--nocapture",
      "--test-threads=1",
    ])
    .env("MLXRS_RING_WORKER", "1")
    .env("MLX_RANK", rank.to_string())
    .env("MLX_HOSTFILE", hostfile)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start worker")
}

#[test]
fn two_ranks_over_ring() {
  let dir = std::env::temp_dir().join(format!("mlxrs-ring-{}", std::process::id()));
  std::fs::create_dir_all(&dir).unwrap();
  let hostfile = dir.join("hosts.json");
  let (p0, mut p1) = (free_port(), free_port());
  while p1 == p0 {
    p1 = free_port();
  }
  std::fs::write(
    &hostfile,
    format!("[[\"127.0.0.1:{p0}\"], [\"127.0.0.1:{p1}\"]]"),
  )
  .unwrap();

  let mut kids: Vec<Child> = (0..2).map(|r| spawn(r, &hostfile)).collect();
  let start = Instant::now();
  let mut status = [None, None];
  while status.iter().any(Option::is_none) && start.elapsed() < TIMEOUT {
    for (k, c) in kids.iter_mut().enumerate() {
      if status[k].is_none() {
        status[k] = c.try_wait().expect("wait worker");
      }
    }
    std::thread::sleep(Duration::from_millis(50));
  }
  let timed_out = status.iter().any(Option::is_none);
  let mut report = String::new();
  for (k, c) in kids.iter_mut().enumerate() {
    if status[k].is_none() {
      let _ = c.kill();
      status[k] = c.wait().ok();
    }
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(s) = c.stdout.as_mut() {
      let _ = s.read_to_string(&mut out);
    }
    if let Some(s) = c.stderr.as_mut() {
      let _ = s.read_to_string(&mut err);
    }
    report.push_str(&format!("--- rank {k}: {:?}\n{out}\n{err}\n", status[k]));
  }
  let _ = std::fs::remove_dir_all(&dir);
  assert!(
    !timed_out,
    "ring workers did not finish within {TIMEOUT:?} (killed):\n{report}"
  );
  for (k, st) in status.iter().enumerate() {
    assert!(
      st.is_some_and(|s| s.success()),
      "rank {k} failed:\n{report}"
    );
    assert!(
      report.contains(&format!("RING_WORKER_OK rank={k} size=2")),
      "rank {k} did not run its checks:\n{report}"
    );
  }
}
