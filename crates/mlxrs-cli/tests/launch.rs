//! `mlxrs launch` (python `mlx.launch`) end to end on loopback: two ranks
//! of `mlxrs generate` over the ring backend shard the tiny checkpoints
//! tensor-parallel and must print the same greedy tokens as one process;
//! a rank that dies stops the job within a bounded time.
//!
//! Every child is bounded: `--timeout` on the launcher, and the test kills
//! a launcher that outlives `LIMIT`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

fn mlxrs() -> Command {
  Command::new(env!("CARGO_BIN_EXE_mlxrs"))
}

/// `mlxrs launch --timeout 100 --hostfile H --ssh-cmd S`, ranks' command to
/// be appended after `--`.
fn launch_hosts(hostfile: &std::path::Path, ssh: &std::path::Path) -> Command {
  let mut l = mlxrs();
  l.args(["launch", "--timeout", "100", "--hostfile"])
    .arg(hostfile)
    .arg("--ssh-cmd")
    .arg(ssh);
  l
}

fn tiny(name: &str) -> String {
  format!("{}/../../models/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Run `c` to completion, killing it after `LIMIT`; also returns the time.
fn bounded(mut c: Command) -> (Output, Duration) {
  let start = Instant::now();
  let mut child = c
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start mlxrs");
  // Drain the pipes on threads so a chatty child never blocks.
  let mut so = child.stdout.take().unwrap();
  let mut se = child.stderr.take().unwrap();
  let t1 = std::thread::spawn(move || {
    let mut v = Vec::new();
    let _ = std::io::Read::read_to_end(&mut so, &mut v);
    v
  });
  let t2 = std::thread::spawn(move || {
    let mut v = Vec::new();
    let _ = std::io::Read::read_to_end(&mut se, &mut v);
    v
  });
  let status = loop {
    if let Some(s) = child.try_wait().unwrap() {
      break s;
    }
    if start.elapsed() > LIMIT {
      let _ = child.kill();
      break child.wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
  };
  let out = Output {
    status,
    stdout: t1.join().unwrap(),
    stderr: t2.join().unwrap(),
  };
  (out, start.elapsed())
}

fn generate_args(model: &str) -> Vec<String> {
  [
    "generate",
    "--model",
    &tiny(model),
    "--prompt",
    "The quick brown fox",
    "--max-tokens",
    "12",
    "--json",
  ]
  .iter()
  .map(|s| s.to_string())
  .collect()
}

fn tokens(json_line: &str) -> Vec<i64> {
  let v: serde_json::Value = serde_json::from_str(json_line).expect("generate --json output");
  v["tokens"]
    .as_array()
    .expect("tokens")
    .iter()
    .map(|t| t.as_i64().unwrap())
    .collect()
}

/// Two ranks of `generate` vs one process, on `model`.
fn check_two_ranks(model: &str) {
  check_two_ranks_with(model, &[], "tensor-parallel");
}

/// Two ranks of `generate` with `extra` arguments vs one process.
fn check_two_ranks_with(model: &str, extra: &[&str], what: &str) {
  check_launch(&["-n", "2"], model, extra, what);
}

/// `mlxrs launch LAUNCH -- generate ... EXTRA` vs one process.
fn check_launch(launch: &[&str], model: &str, extra: &[&str], what: &str) {
  let mut single = mlxrs();
  single.args(generate_args(model));
  let (one, _) = bounded(single);
  assert!(
    one.status.success(),
    "{}",
    String::from_utf8_lossy(&one.stderr)
  );
  let want = tokens(String::from_utf8_lossy(&one.stdout).trim());
  assert!(!want.is_empty());

  let mut l = mlxrs();
  l.arg("launch")
    .args(launch)
    .args(["--timeout", "100", "--"])
    .args(generate_args(model))
    .args(extra);
  let (two, took) = bounded(l);
  let stdout = String::from_utf8_lossy(&two.stdout).to_string();
  assert!(
    two.status.success(),
    "{model}: launch failed:\n{stdout}\n{}",
    String::from_utf8_lossy(&two.stderr)
  );
  // Rank 0 prints, rank 1 is silent (python mlx-lm prints on rank 0 only).
  let lines: Vec<&str> = stdout.lines().collect();
  assert_eq!(lines.len(), 1, "{model}: {stdout}");
  let line = lines[0]
    .strip_prefix("[0] ")
    .unwrap_or_else(|| panic!("{model}: no rank prefix: {stdout}"));
  assert_eq!(tokens(line), want, "{model}: {what} greedy tokens");
  eprintln!(
    "{model}: 2 ranks {what}, {} greedy tokens equal to one process ({took:?})",
    want.len()
  );
}

#[test]
fn launch_generate_two_ranks_llama() {
  check_two_ranks("llama");
}

#[test]
fn launch_generate_two_ranks_qwen3_4bit() {
  check_two_ranks("qwen3-4bit");
}

#[test]
fn launch_generate_pipeline_llama() {
  check_two_ranks_with("llama", &["--pipeline"], "pipeline-parallel");
}

#[test]
fn launch_generate_pipeline_qwen3_4bit() {
  check_two_ranks_with("qwen3-4bit", &["--pipeline"], "pipeline-parallel");
}

/// `--pipeline` on an architecture without pipeline support is refused.
#[test]
fn launch_generate_pipeline_refuses_an_unsupported_model() {
  let mut l = mlxrs();
  l.args(["launch", "-n", "2", "--timeout", "100", "--"])
    .args(generate_args("phi3"))
    .arg("--pipeline");
  let (out, _) = bounded(l);
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(!out.status.success(), "{err}");
  assert!(err.contains("has no pipeline support"), "{err}");
}

/// Rank 1 is killed (SIGKILL) while rank 0 waits: the launcher stops rank 0
/// and fails with a message naming rank 1, well before rank 0's 60 s.
#[test]
fn launch_stops_every_rank_when_one_dies() {
  let mut l = mlxrs();
  l.args([
    "launch",
    "-n",
    "2",
    "--",
    "sh",
    "-c",
    "if [ \"$MLX_RANK\" = 1 ]; then sleep 0.3; kill -9 $$; fi; exec sleep 60",
  ]);
  let (out, took) = bounded(l);
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(!out.status.success(), "{err}");
  assert!(err.contains("rank 1 failed"), "{err}");
  assert!(err.contains("stopped the other ranks"), "{err}");
  assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// A job past `--timeout` is stopped.
#[test]
fn launch_timeout_stops_the_job() {
  let mut l = mlxrs();
  l.args(["launch", "-n", "2", "--timeout", "1", "--", "sleep", "60"]);
  let (out, took) = bounded(l);
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(!out.status.success(), "{err}");
  assert!(err.contains("--timeout 1s"), "{err}");
  assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// Generate under the launcher refuses a model it cannot split, on every
/// rank, with the reason.
#[test]
fn launch_generate_refuses_an_unsplittable_model() {
  let mut l = mlxrs();
  l.args(["launch", "-n", "2", "--timeout", "100", "--"])
    .args(generate_args("phi3"));
  let (out, _) = bounded(l);
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(!out.status.success(), "{err}");
  assert!(err.contains("has no shard rule"), "{err}");
}

/// Ranks that would load different checkpoints (here: the fake ssh of
/// `host-b` rewrites the model path, as a second machine with another
/// folder at that path would) stop with a clear error before any shape
/// clash, instead of hanging in a collective.
#[test]
fn ranks_with_different_models_are_refused() {
  let (dir, _ssh, _log, hostfile) = fake_hosts("mismatch");
  let ssh = dir.join("fake-ssh-swap");
  std::fs::write(
    &ssh,
    "#!/bin/sh\nhost=\"$1\"\nshift\nif [ \"$host\" = host-b ]; then exec sh -c \"$(printf '%s' \"$1\" | sed 's#tiny/llama#tiny/mistral#g')\"; else exec sh -c \"$1\"; fi\n",
  )
  .unwrap();
  {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
  }
  for extra in [&[][..], &["--pipeline"][..]] {
    let mut l = launch_hosts(&hostfile, &ssh);
    l.arg("--").args(generate_args("llama")).args(extra);
    let (out, took) = bounded(l);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
      err.contains("the ranks load different models"),
      "{extra:?}: {err}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
  }
  let _ = std::fs::remove_dir_all(&dir);
}

/// Whether Open MPI's `mpirun` is on the PATH (the MPI tests need it:
/// `apt-get install openmpi-bin`).
fn have_mpirun() -> bool {
  let ok = Command::new("mpirun")
    .arg("--version")
    .output()
    .is_ok_and(|o| o.status.success());
  if !ok {
    eprintln!("skipped: no mpirun on the PATH (apt-get install openmpi-bin)");
  }
  ok
}

/// `--backend mpi` (python `mlx.launch --backend mpi`): mpirun starts the
/// ranks, MLX's MPI backend connects them; the tensor-parallel tokens equal
/// one process's, f32 and 4-bit.
#[test]
fn launch_generate_mpi() {
  if !have_mpirun() {
    return;
  }
  for model in ["llama", "qwen3-4bit"] {
    check_launch(
      &["--backend", "mpi", "-n", "2"],
      model,
      &[],
      "MPI tensor-parallel",
    );
  }
}

/// Under MPI a rank that fails (a model without a shard rule) ends the job
/// with an error naming it, and `mpirun` itself missing is a clear error.
#[test]
fn launch_mpi_failures_are_reported() {
  let mut l = mlxrs();
  l.args([
    "launch",
    "--backend",
    "mpi",
    "--mpirun",
    "no-such-mpirun",
    "--",
  ])
  .args(generate_args("llama"));
  let (out, _) = bounded(l);
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(!out.status.success());
  assert!(
    err.contains("no-such-mpirun") && err.contains("MPI installed"),
    "{err}"
  );
  if !have_mpirun() {
    return;
  }
  let mut l = mlxrs();
  l.args([
    "launch",
    "--backend",
    "mpi",
    "-n",
    "2",
    "--timeout",
    "100",
    "--",
  ])
  .args(generate_args("phi3"));
  let (out, took) = bounded(l);
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(!out.status.success(), "{err}");
  assert!(err.contains("has no shard rule"), "{err}");
  assert!(err.contains("mpirun failed"), "{err}");
  assert!(took < Duration::from_secs(60), "{took:?}");
}

/// A folder with a fake ssh (a script that logs the host it was given and
/// runs the command here, its stdin passed on as real ssh does) and a
/// two-entry hostfile on 127.0.0.1: (folder, ssh, log, hostfile).
fn fake_hosts(tag: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
  let dir = std::env::temp_dir().join(format!("mlxrs-launch-{tag}-{}", std::process::id()));
  std::fs::create_dir_all(&dir).unwrap();
  let log = dir.join("ssh.log");
  let ssh = dir.join("fake-ssh");
  std::fs::write(
    &ssh,
    format!(
      "#!/bin/sh\necho \"$1\" >> '{}'\nshift\nexec sh -c \"$1\"\n",
      log.display()
    ),
  )
  .unwrap();
  {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
  }
  let hostfile = dir.join("hosts.json");
  std::fs::write(
    &hostfile,
    r#"[{"ssh": "host-a", "ips": ["127.0.0.1"]}, {"ssh": "host-b", "ips": ["127.0.0.1"]}]"#,
  )
  .unwrap();
  (dir, ssh, log, hostfile)
}

/// Processes whose environment holds `needle` (Linux `/proc`).
#[cfg(target_os = "linux")]
fn processes_with_env(needle: &str) -> Vec<u32> {
  let Ok(rd) = std::fs::read_dir("/proc") else {
    return Vec::new();
  };
  rd.filter_map(|e| {
    let e = e.ok()?;
    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
    let env = std::fs::read(e.path().join("environ")).ok()?;
    String::from_utf8_lossy(&env)
      .contains(needle)
      .then_some(pid)
  })
  .collect()
}

/// Remote ranks stop when their launcher goes away, even by SIGKILL (which
/// it cannot catch): each rank runs under a watchdog on its ssh session's
/// stdin, which the launcher holds open.
#[cfg(target_os = "linux")]
#[test]
fn remote_ranks_stop_when_the_launcher_is_killed() {
  let (dir, ssh, _log, hostfile) = fake_hosts("watchdog");
  let port = std::net::TcpListener::bind("127.0.0.1:0")
    .unwrap()
    .local_addr()
    .unwrap()
    .port();
  let mut l = launch_hosts(&hostfile, &ssh);
  l.args(["--", "serve", "--model", &tiny("llama"), "--port"])
    .arg(port.to_string())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
  let mut launcher = l.spawn().unwrap();
  // The ranks' MLX_HOSTFILE lives in the launcher's own temporary folder.
  let needle = format!("mlxrs-launch-{}/hosts.json", launcher.id());
  let t0 = Instant::now();
  while processes_with_env(&needle).len() < 2 {
    assert!(t0.elapsed() < LIMIT, "the ranks did not start");
    std::thread::sleep(Duration::from_millis(50));
  }
  // Serving and idle: nothing more is written to the dead launcher's pipes
  // (a write would end a rank by SIGPIPE, watchdog or not).
  while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
    assert!(t0.elapsed() < LIMIT, "rank 0 never listened");
    std::thread::sleep(Duration::from_millis(50));
  }
  std::thread::sleep(Duration::from_millis(300));
  launcher.kill().unwrap();
  let _ = launcher.wait();
  let t1 = Instant::now();
  while !processes_with_env(&needle).is_empty() {
    assert!(
      t1.elapsed() < Duration::from_secs(20),
      "ranks still running 20 s after the launcher died: {:?}",
      processes_with_env(&needle)
    );
    std::thread::sleep(Duration::from_millis(50));
  }
  let _ = std::fs::remove_dir_all(&dir);
}

/// `--hostfile` (python `mlx.launch --hostfile`) with two entries whose
/// addresses are 127.0.0.1, through a fake ssh (a script that logs the host
/// it was given and runs the command here): tensor-parallel tokens equal to
/// one process, and each rank went through ssh to its own host.
#[test]
fn launch_hostfile_through_ssh() {
  let (dir, ssh, log, hostfile) = fake_hosts("hosts");

  let mut single = mlxrs();
  single.args(generate_args("llama"));
  let (one, _) = bounded(single);
  assert!(one.status.success());
  let want = tokens(String::from_utf8_lossy(&one.stdout).trim());

  let mut l = launch_hosts(&hostfile, &ssh);
  l.arg("--").args(generate_args("llama"));
  let (out, _) = bounded(l);
  let stdout = String::from_utf8_lossy(&out.stdout).to_string();
  assert!(
    out.status.success(),
    "{stdout}\n{}",
    String::from_utf8_lossy(&out.stderr)
  );
  let line = stdout
    .lines()
    .find_map(|l| l.strip_prefix("[0] "))
    .unwrap_or_else(|| panic!("no rank 0 output: {stdout}"));
  assert_eq!(tokens(line), want);
  let mut called: Vec<String> = std::fs::read_to_string(&log)
    .unwrap()
    .lines()
    .map(String::from)
    .collect();
  called.sort();
  assert_eq!(called, ["host-a", "host-b"]);
  let _ = std::fs::remove_dir_all(&dir);
}

/// A malformed hostfile is refused with the expected format.
#[test]
fn launch_hostfile_malformed_is_refused() {
  let dir = std::env::temp_dir().join(format!("mlxrs-launch-badhosts-{}", std::process::id()));
  std::fs::create_dir_all(&dir).unwrap();
  let hostfile = dir.join("hosts.json");
  std::fs::write(&hostfile, r#"[["127.0.0.1:5000"]]"#).unwrap();
  let mut l = mlxrs();
  l.args(["launch", "--hostfile"])
    .arg(&hostfile)
    .args(["--", "sh", "-c", "true"]);
  let (out, _) = bounded(l);
  let err = String::from_utf8_lossy(&out.stderr);
  assert!(!out.status.success(), "{err}");
  assert!(err.contains("expected a JSON list of"), "{err}");
  let _ = std::fs::remove_dir_all(&dir);
}
