//! The multi-process harness of the tensor- and pipeline-parallel tests:
//! start this test binary `n` times as the ignored `{kind}_worker` test
//! (`MLX_RANK`, `MLX_HOSTFILE` naming `n` loopback ports, the fixture in
//! `MLXRS_{KIND}_WORKER`), wait with a time limit, kill leftovers, and
//! collect each rank's output and its `{KIND}_RESULT` JSON line. `kind` is
//! `"tp"` or `"pp"`.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_ports(n: usize) -> Vec<u16> {
  // Hold every listener until all are chosen so the ports differ.
  let ls: Vec<TcpListener> = (0..n)
    .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free local port"))
    .collect();
  ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn spawn(kind: &str, name: &str, rank: usize, hostfile: &Path, die: Option<usize>) -> Child {
  let worker = format!("{kind}_worker");
  let mut c = Command::new(std::env::current_exe().expect("test binary path"));
  c.args([
    "--ignored",
    "--exact",
    worker.as_str(),
    "--nocapture",
    "--test-threads=1",
  ])
  .env(format!("MLXRS_{}_WORKER", kind.to_uppercase()), name)
  .env("MLX_RANK", rank.to_string())
  .env("MLX_HOSTFILE", hostfile)
  .stdout(Stdio::piped())
  .stderr(Stdio::piped());
  if let Some(d) = die {
    c.env(
      format!("MLXRS_{}_DIE_RANK", kind.to_uppercase()),
      d.to_string(),
    );
  }
  c.spawn().expect("start worker")
}

pub struct Run {
  pub status: Vec<Option<std::process::ExitStatus>>,
  pub out: Vec<String>,
  pub report: String,
  pub timed_out: bool,
  pub elapsed: Duration,
}

/// Start `n` ranks on fixture `name`, wait at most `limit`, kill leftovers.
pub fn run_ranks(kind: &str, name: &str, n: usize, die: Option<usize>, limit: Duration) -> Run {
  let tag = name.replace(['/', '\\'], "_");
  let dir = std::env::temp_dir().join(format!(
    "mlxrs-{kind}-{}-{tag}-{n}-{}",
    std::process::id(),
    die.is_some()
  ));
  std::fs::create_dir_all(&dir).unwrap();
  let hostfile = dir.join("hosts.json");
  let hosts: Vec<Vec<String>> = free_ports(n)
    .into_iter()
    .map(|p| vec![format!("127.0.0.1:{p}")])
    .collect();
  std::fs::write(&hostfile, serde_json::to_string(&hosts).unwrap()).unwrap();
  let mut kids: Vec<Child> = (0..n)
    .map(|r| spawn(kind, name, r, &hostfile, die))
    .collect();
  let start = Instant::now();
  let mut status = vec![None; n];
  while status.iter().any(Option::is_none) && start.elapsed() < limit {
    for (k, c) in kids.iter_mut().enumerate() {
      if status[k].is_none() {
        status[k] = c.try_wait().expect("wait worker");
      }
    }
    std::thread::sleep(Duration::from_millis(50));
  }
  let elapsed = start.elapsed();
  let timed_out = status.iter().any(Option::is_none);
  let mut report = String::new();
  let mut outs = Vec::new();
  for (k, c) in kids.iter_mut().enumerate() {
    if status[k].is_none() {
      let _ = c.kill();
      let _ = c.wait();
    }
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(s) = c.stdout.as_mut() {
      let _ = s.read_to_string(&mut out);
    }
    if let Some(s) = c.stderr.as_mut() {
      let _ = s.read_to_string(&mut err);
    }
    let tail: String = err
      .chars()
      .rev()
      .take(2000)
      .collect::<Vec<_>>()
      .into_iter()
      .rev()
      .collect();
    report.push_str(&format!("--- rank {k}: {:?}\n{out}\n{tail}\n", status[k]));
    outs.push(out);
  }
  let _ = std::fs::remove_dir_all(&dir);
  Run {
    status,
    out: outs,
    report,
    timed_out,
    elapsed,
  }
}

pub fn result_line(kind: &str, out: &str) -> Option<Value> {
  let tag = format!("{}_RESULT ", kind.to_uppercase());
  out
    .lines()
    .find_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
    .and_then(|j| serde_json::from_str(j).ok())
}
