//! `mlxrs launch`: start N local ranks of a distributed job (python
//! `mlx.launch`), and the rank side used by `mlxrs generate` when it runs
//! under a launcher (python mlx-lm's `mx.distributed.init()` +
//! `model.shard(group)`).
//!
//! `mlxrs launch -n 2 -- generate --model M --prompt P` starts two copies of
//! this binary (`generate ...`; a first word that is not an mlxrs
//! subcommand is run as a program instead), each with its backend's
//! environment:
//!
//! - `ring` (TCP, every MLX build): `MLX_RANK`, `MLX_HOSTFILE` (a JSON list
//!   with one `["127.0.0.1:port"]` per rank, written to a temporary folder)
//!   and `MLX_WORLD_SIZE`;
//! - `nccl` (CUDA builds; one GPU per rank): `MLX_RANK`, `MLX_WORLD_SIZE`,
//!   `NCCL_HOST_IP=127.0.0.1`, `NCCL_PORT`, `CUDA_VISIBLE_DEVICES=rank`, as
//!   `mlx.launch --backend nccl` sets them for local ranks.
//!
//! With `--hostfile` (mlx.launch's JSON hostfile, ring backend) each rank
//! is started on its host through `ssh HOST 'cd ... && env ... mlxrs ...'`
//! instead (`--ssh-cmd` replaces `ssh`).
//!
//! `MLXRS_DIST_BACKEND` tells the ranks which backend to initialise. Every
//! output line is forwarded with a `[rank] ` prefix. When a rank fails (a
//! non-zero exit or a signal) the launcher kills the others and exits with
//! an error naming it, so a job never hangs on a dead peer; `--timeout`
//! bounds the whole job. SIGTERM or SIGINT (ctrl-c) to the launcher kills
//! every rank too (and the launcher exits with an error), so
//! `mlxrs launch -n 2 -- serve ...` stops as a whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use mlxrs_core::distributed as dist;
use mlxrs_lm::shard::TensorShard;
use mlxrs_lm::{LoadOptions, LoadedModel};

/// The subcommands of this binary a launch may name directly.
const SUBCOMMANDS: &[&str] = &[
  "generate",
  "chat",
  "serve",
  "bench",
  "embed",
  "transcribe",
  "cache-prompt",
  "info",
];

/// `mlxrs launch` options (python `mlx.launch`).
#[derive(Args)]
pub struct LaunchArgs {
  /// Number of local ranks.
  #[arg(short = 'n', long = "num-ranks", default_value_t = 2)]
  num_ranks: usize,
  /// Distributed backend: ring (TCP), nccl (one GPU per rank) or mpi (the
  /// ranks started by `mpirun`, MLX's MPI backend).
  #[arg(long, default_value = "ring")]
  backend: String,
  /// The MPI launcher for `--backend mpi` (Open MPI's `mpirun`).
  #[arg(long, default_value = "mpirun")]
  mpirun: String,
  /// First port of the ring hostfile / the NCCL port (default: free ports
  /// chosen by the system).
  #[arg(long = "starting-port")]
  starting_port: Option<u16>,
  /// Stop every rank after this many seconds (0: no limit).
  #[arg(long, default_value_t = 0)]
  timeout: u64,
  /// Log the backend's connection set-up (`MLX_RING_VERBOSE=1` /
  /// `NCCL_DEBUG=INFO`) and the launcher's steps.
  #[arg(long)]
  verbose: bool,
  /// Start one rank per entry of this JSON hostfile over ssh (python
  /// `mlx.launch --hostfile`; format `[{"ssh": "host", "ips": ["10.0.0.1"]},
  /// ...]`, ring backend): rank r runs on entry r's `ssh` host and listens
  /// on its first `ips` entry (else the `ssh` name). `-n` is ignored.
  #[arg(long)]
  hostfile: Option<PathBuf>,
  /// The ssh program used with `--hostfile` (called as `SSH HOST COMMAND`).
  #[arg(long = "ssh-cmd", default_value = "ssh")]
  ssh_cmd: String,
  /// The command each rank runs: an mlxrs subcommand (`generate ...`) or a
  /// program with its arguments. Put it after `--`.
  #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
  command: Vec<String>,
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
  // Hold every listener until all are chosen so the ports differ.
  let ls = (0..n)
    .map(|_| TcpListener::bind("127.0.0.1:0"))
    .collect::<std::io::Result<Vec<_>>>()
    .context("choosing free local ports")?;
  ls.iter()
    .map(|l| Ok(l.local_addr()?.port()))
    .collect::<std::io::Result<Vec<_>>>()
    .context("choosing free local ports")
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
  fn drop(&mut self) {
    let _ = std::fs::remove_dir_all(&self.0);
  }
}

/// Forward `src` line by line to stdout or stderr with a rank prefix.
fn forward(
  rank: usize,
  src: impl Read + Send + 'static,
  to_err: bool,
) -> std::thread::JoinHandle<()> {
  forward_lines(src, to_err, move |line| {
    format!("[{rank}] {}", String::from_utf8_lossy(line))
  })
}

/// Forward `src` line by line to stdout or stderr, each line as `map`
/// rewrites it (a newline added where it lacks one).
fn forward_lines(
  src: impl Read + Send + 'static,
  to_err: bool,
  map: impl Fn(&[u8]) -> String + Send + 'static,
) -> std::thread::JoinHandle<()> {
  std::thread::spawn(move || {
    let mut r = BufReader::new(src);
    let mut line = Vec::new();
    loop {
      line.clear();
      match r.read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => break,
        Ok(_) => {
          let mut out = map(&line);
          if !out.ends_with('\n') {
            out.push('\n');
          }
          let _ = if to_err {
            std::io::stderr().lock().write_all(out.as_bytes())
          } else {
            std::io::stdout().lock().write_all(out.as_bytes())
          };
        }
      }
    }
  })
}

fn describe(s: &ExitStatus) -> String {
  match s.code() {
    Some(c) => format!("exit status {c}"),
    None => format!("{s}"),
  }
}

/// One entry of an `mlx.launch` JSON hostfile.
#[derive(serde::Deserialize)]
struct HostEntry {
  /// The name given to ssh.
  ssh: String,
  /// Addresses of the host; the first is the ring backend's.
  #[serde(default)]
  ips: Vec<String>,
}

/// Read an `mlx.launch` JSON hostfile: `(ssh name, ring address)` per rank.
fn read_hostfile(path: &std::path::Path) -> Result<Vec<(String, String)>> {
  let text =
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
  let expected = || {
    format!(
      "{}: expected a JSON list of {{\"ssh\": HOST, \"ips\": [IP, ...]}}",
      path.display()
    )
  };
  // Entries must be objects (serde would also accept a list for a struct).
  let v: serde_json::Value = serde_json::from_str(&text).with_context(expected)?;
  if !v
    .as_array()
    .is_some_and(|l| l.iter().all(serde_json::Value::is_object))
  {
    bail!("{}", expected());
  }
  let entries: Vec<HostEntry> = serde_json::from_value(v).with_context(expected)?;
  if entries.is_empty() {
    bail!("{}: the hostfile lists no host", path.display());
  }
  entries
    .into_iter()
    .map(|e| {
      if e.ssh.trim().is_empty() {
        bail!("{}: a host entry has an empty \"ssh\" name", path.display());
      }
      let ip = e.ips.first().cloned().unwrap_or_else(|| e.ssh.clone());
      Ok((e.ssh, ip))
    })
    .collect()
}

/// `s` quoted for a POSIX shell.
fn sh_quote(s: &str) -> String {
  format!("'{}'", s.replace('\'', "'\\''"))
}

/// The shell command a remote rank runs: write the ring hostfile where
/// `MLX_HOSTFILE` says (through a rename, so ranks sharing a machine never
/// read it half-written), then run the program with the rank's environment
/// from the launcher's working folder.
fn remote_command(
  env: &[(String, String)],
  hosts_json: &str,
  program: &std::path::Path,
  args: &[String],
) -> Result<String> {
  let cwd = std::env::current_dir().context("reading the working folder")?;
  let hostfile = env
    .iter()
    .find(|(k, _)| k == "MLX_HOSTFILE")
    .map(|(_, v)| v.clone())
    .unwrap_or_default();
  let dir = std::path::Path::new(&hostfile)
    .parent()
    .map(|d| d.display().to_string())
    .unwrap_or_else(|| ".".into());
  // The rank runs in the background under a watchdog that reads the ssh
  // session's stdin (kept as fd 3: a background job's own stdin is
  // /dev/null), which the launcher holds open and never writes: when
  // the session ends (the launcher stopped the ranks, or died), the
  // watchdog gets EOF and stops the rank (TERM, then KILL after 3 s), as a
  // remote process is not signalled when its ssh client goes away.
  let mut cmd = format!(
    "cd {} && mkdir -p {} && printf '%s' {} > {}.$$ && mv -f {}.$$ {} && {{ exec 3<&0; env",
    sh_quote(&cwd.display().to_string()),
    sh_quote(&dir),
    sh_quote(hosts_json),
    sh_quote(&hostfile),
    sh_quote(&hostfile),
    sh_quote(&hostfile)
  );
  for (k, v) in env {
    cmd.push_str(&format!(" {}", sh_quote(&format!("{k}={v}"))));
  }
  cmd.push_str(&format!(" {}", sh_quote(&program.display().to_string())));
  for a in args {
    cmd.push_str(&format!(" {}", sh_quote(a)));
  }
  cmd.push_str(
    " </dev/null 3<&- & p=$!; (cat <&3 >/dev/null; kill -TERM $p; sleep 3; kill -KILL $p) >/dev/null 2>&1 & exec 3<&-; wait $p; }",
  );
  Ok(cmd)
}

/// A flag set when this process gets SIGTERM or SIGINT; the handlers are
/// in place when it returns (before any rank starts), so a signal never
/// kills the launcher and leaves its ranks running.
fn watch_signals() -> Result<Arc<AtomicBool>> {
  let flag = Arc::new(AtomicBool::new(false));
  #[cfg(unix)]
  {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
      .enable_all()
      .build()
      .context("starting the signal watcher")?;
    let (mut term, mut int) = {
      let _in_rt = rt.enter();
      (
        signal(SignalKind::terminate()).context("watching SIGTERM")?,
        signal(SignalKind::interrupt()).context("watching SIGINT")?,
      )
    };
    let f = Arc::clone(&flag);
    std::thread::Builder::new()
      .name("launch-signals".into())
      .spawn(move || {
        rt.block_on(async {
          tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
          }
        });
        f.store(true, Ordering::SeqCst);
      })
      .context("starting the signal watcher")?;
  }
  Ok(flag)
}

/// Run `mlxrs launch`.
pub fn run(a: LaunchArgs) -> Result<()> {
  let hosts = match &a.hostfile {
    Some(p) => {
      if a.backend != "ring" && a.backend != "mpi" {
        bail!(
          "--hostfile: only the ring backend is supported, not {:?}",
          a.backend
        );
      }
      Some(read_hostfile(p)?)
    }
    None => None,
  };
  let n = hosts.as_ref().map_or(a.num_ranks, Vec::len);
  if n == 0 {
    bail!("--num-ranks must be at least 1");
  }
  let Some(first) = a.command.first() else {
    bail!("give the command to run after --, e.g. `mlxrs launch -n 2 -- generate ...`");
  };
  let (program, args): (PathBuf, &[String]) = if SUBCOMMANDS.contains(&first.as_str()) {
    (
      std::env::current_exe().context("locating the mlxrs binary")?,
      &a.command[..],
    )
  } else {
    (PathBuf::from(first), &a.command[1..])
  };
  if a.backend == "mpi" {
    return run_mpi(&a, n, &program, args, hosts.as_deref());
  }
  let dir = TempDir(std::env::temp_dir().join(format!("mlxrs-launch-{}", std::process::id())));
  std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
  let mut env: Vec<Vec<(String, String)>> = (0..n)
    .map(|r| {
      vec![
        ("MLX_RANK".to_string(), r.to_string()),
        ("MLX_WORLD_SIZE".to_string(), n.to_string()),
        ("MLXRS_DIST_BACKEND".to_string(), a.backend.clone()),
      ]
    })
    .collect();
  let mut ring_json = String::new();
  match a.backend.as_str() {
    "ring" => {
      let ports: Vec<u16> = match a.starting_port {
        Some(p) => (0..n)
          .map(|i| {
            u16::try_from(usize::from(p) + i)
              .map_err(|_| anyhow::anyhow!("--starting-port {p}: ports past 65535"))
          })
          .collect::<Result<_>>()?,
        None => free_ports(n)?,
      };
      let ring: Vec<Vec<String>> = ports
        .iter()
        .enumerate()
        .map(|(r, p)| {
          let ip = hosts.as_ref().map_or("127.0.0.1", |h| h[r].1.as_str());
          vec![format!("{ip}:{p}")]
        })
        .collect();
      ring_json = serde_json::to_string(&ring)?;
      let hostfile = dir.0.join("hosts.json");
      std::fs::write(&hostfile, &ring_json)
        .with_context(|| format!("writing {}", hostfile.display()))?;
      if a.verbose {
        eprintln!("[launch] ring hostfile {}: {ring:?}", hostfile.display());
      }
      for e in &mut env {
        e.push(("MLX_HOSTFILE".into(), hostfile.display().to_string()));
        if a.verbose {
          e.push(("MLX_RING_VERBOSE".into(), "1".into()));
        }
      }
    }
    "nccl" => {
      let port = match a.starting_port {
        Some(p) => p,
        None => free_ports(1)?[0],
      };
      for (r, e) in env.iter_mut().enumerate() {
        e.push(("NCCL_HOST_IP".into(), "127.0.0.1".into()));
        e.push(("NCCL_PORT".into(), port.to_string()));
        e.push(("CUDA_VISIBLE_DEVICES".into(), r.to_string()));
        if a.verbose {
          e.push(("NCCL_DEBUG".into(), "INFO".into()));
        }
      }
    }
    other => bail!("--backend {other:?}: expected ring, nccl or mpi"),
  }

  let signalled = watch_signals()?;
  let mut kids: Vec<Child> = Vec::with_capacity(n);
  let mut pumps = Vec::new();
  for (r, e) in env.iter().enumerate() {
    // The ranks stay in the launcher's process group, so Ctrl-C in a
    // terminal reaches all of them.
    let mut cmd = match &hosts {
      // Remote (or fake-ssh) ranks: `SSH HOST 'cd ... && env ... PROGRAM ARGS'`.
      Some(h) => {
        let mut c = Command::new(&a.ssh_cmd);
        c.arg(&h[r].0)
          .arg(remote_command(e, &ring_json, &program, args)?);
        c
      }
      None => {
        let mut c = Command::new(&program);
        c.args(args).envs(e.iter().map(|(k, v)| (k, v)));
        c
      }
    };
    // Remote ranks: a stdin the launcher keeps open (see `remote_command`).
    let stdin = if hosts.is_some() {
      Stdio::piped()
    } else {
      Stdio::null()
    };
    let spawned = cmd
      .stdin(stdin)
      .stdout(Stdio::piped())
      .stderr(Stdio::piped())
      .spawn();
    let mut c = match spawned {
      Ok(c) => c,
      Err(err) => {
        stop_all(&mut kids);
        bail!("starting rank {r} ({}): {err}", program.display());
      }
    };
    if let Some(o) = c.stdout.take() {
      pumps.push(forward(r, o, false));
    }
    if let Some(o) = c.stderr.take() {
      pumps.push(forward(r, o, true));
    }
    kids.push(c);
  }

  let start = Instant::now();
  let limit = (a.timeout > 0).then(|| Duration::from_secs(a.timeout));
  let mut status: Vec<Option<ExitStatus>> = vec![None; n];
  let failure = loop {
    for (r, c) in kids.iter_mut().enumerate() {
      if status[r].is_none() {
        status[r] = c
          .try_wait()
          .with_context(|| format!("waiting for rank {r}"))?;
      }
    }
    // Every rank that has failed by now (a killed rank's peers often fail
    // in the same instant, on the lost connection).
    let failed: Vec<String> = status
      .iter()
      .enumerate()
      .filter_map(|(r, s)| {
        s.filter(|s| !s.success())
          .map(|s| format!("rank {r} failed ({})", describe(&s)))
      })
      .collect();
    if !failed.is_empty() {
      break Some(failed.join(", "));
    }
    if status.iter().all(Option::is_some) {
      break None;
    }
    if limit.is_some_and(|l| start.elapsed() >= l) {
      break Some(format!("the job ran past --timeout {}s", a.timeout));
    }
    if signalled.load(Ordering::SeqCst) {
      break Some("the launcher got SIGTERM or SIGINT".to_string());
    }
    std::thread::sleep(Duration::from_millis(50));
  };
  match failure {
    None => {
      for p in pumps {
        let _ = p.join();
      }
      Ok(())
    }
    // The output threads are not joined: a leftover grandchild may still
    // hold a pipe open; they end with this process.
    Some(why) => {
      stop_all(&mut kids);
      bail!("{why}; stopped the other ranks")
    }
  }
}

/// `--backend mpi` (python `mlx.launch --backend mpi`): one `mpirun`
/// starts the `n` ranks (a hostfile's `ssh` names become its `--host`
/// list) and MLX's MPI backend connects them; MLX loads `libmpi.so`
/// (`MLX_MPI_LIBNAME`, passed on when set, names another, e.g.
/// `libmpi.so.40` without the development package). Output comes back with
/// `mpirun --tag-output`'s rank tags turned into the `[r] ` prefixes; a
/// failed rank makes `mpirun` end the job. Open MPI's flags; running as root
/// and more ranks than cores are allowed through its environment.
fn run_mpi(
  a: &LaunchArgs,
  n: usize,
  program: &std::path::Path,
  args: &[String],
  hosts: Option<&[(String, String)]>,
) -> Result<()> {
  let mut c = Command::new(&a.mpirun);
  c.args(["-np", &n.to_string(), "--tag-output"]);
  if let Some(h) = hosts {
    let list: Vec<&str> = h.iter().map(|(ssh, _)| ssh.as_str()).collect();
    c.args(["--host", &list.join(",")]);
  }
  let mut vars = vec![
    ("MLX_WORLD_SIZE".to_string(), n.to_string()),
    ("MLXRS_DIST_BACKEND".to_string(), "mpi".to_string()),
  ];
  if let Some(l) = std::env::var("MLX_MPI_LIBNAME")
    .ok()
    .or_else(versioned_libmpi)
  {
    vars.push(("MLX_MPI_LIBNAME".into(), l));
  }
  for (k, v) in &vars {
    c.args(["-x", &format!("{k}={v}")]);
  }
  c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
    .arg(program)
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
  if a.verbose {
    eprintln!("[launch] {c:?}");
  }
  let signalled = watch_signals()?;
  let mut child = c
    .spawn()
    .with_context(|| format!("starting {} (is MPI installed?)", a.mpirun))?;
  let mut pumps = Vec::new();
  if let Some(o) = child.stdout.take() {
    pumps.push(forward_mpi(o, false));
  }
  if let Some(o) = child.stderr.take() {
    pumps.push(forward_mpi(o, true));
  }
  let start = Instant::now();
  let limit = (a.timeout > 0).then(|| Duration::from_secs(a.timeout));
  let why = loop {
    if let Some(s) = child.try_wait().context("waiting for mpirun")? {
      for p in pumps {
        let _ = p.join();
      }
      if s.success() {
        return Ok(());
      }
      bail!(
        "{} failed ({}): a rank failed or could not start",
        a.mpirun,
        describe(&s)
      );
    }
    if limit.is_some_and(|l| start.elapsed() >= l) {
      break format!("the job ran past --timeout {}s", a.timeout);
    }
    if signalled.load(Ordering::SeqCst) {
      break "the launcher got SIGTERM or SIGINT".to_string();
    }
    std::thread::sleep(Duration::from_millis(50));
  };
  // mpirun passes SIGTERM on to its ranks; SIGKILL after 5 s.
  let _ = Command::new("kill")
    .args(["-TERM", &child.id().to_string()])
    .status();
  let t = Instant::now();
  while t.elapsed() < Duration::from_secs(5) {
    if let Ok(Some(_)) = child.try_wait() {
      break;
    }
    std::thread::sleep(Duration::from_millis(50));
  }
  stop_all(std::slice::from_mut(&mut child));
  bail!("{why}; stopped the ranks")
}

/// The versioned `libmpi.so.N` when the library folders hold no plain
/// `libmpi.so` (which MLX opens; it comes with the development package).
fn versioned_libmpi() -> Option<String> {
  let mut dirs: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
    .unwrap_or_default()
    .split(':')
    .filter(|d| !d.is_empty())
    .map(PathBuf::from)
    .collect();
  for d in [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
  ] {
    dirs.push(PathBuf::from(d));
  }
  if dirs.iter().any(|d| d.join("libmpi.so").exists()) {
    return None;
  }
  dirs.iter().find_map(|d| {
    let mut names: Vec<String> = std::fs::read_dir(d)
      .ok()?
      .filter_map(|e| e.ok()?.file_name().into_string().ok())
      .filter(|n| {
        n.strip_prefix("libmpi.so.")
          .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
      })
      .collect();
    names.sort();
    names.pop()
  })
}

/// An `mpirun --tag-output` line (`[job,rank]<stdout>:text`) as
/// `[rank] text`. mpirun tags every chunk it reads, so a line written in
/// pieces carries the same tag inside too: those are dropped. Other lines
/// (mpirun's own messages) are kept as they are.
fn untag_mpi(text: &str) -> String {
  let tagged = text
    .strip_prefix('[')
    .and_then(|t| t.split_once(']'))
    .and_then(|(tag, rest)| {
      let rank = tag.split_once(',')?.1;
      let (stream, rest) = match rest.strip_prefix("<stdout>:") {
        Some(r) => ("<stdout>:", r),
        None => ("<stderr>:", rest.strip_prefix("<stderr>:")?),
      };
      let inner = format!("[{tag}]{stream}");
      rank
        .parse::<usize>()
        .ok()
        .map(|r| format!("[{r}] {}", rest.replace(&inner, "")))
    });
  tagged.unwrap_or_else(|| text.to_string())
}

/// [`forward`] for `mpirun --tag-output` lines (see [`untag_mpi`]).
fn forward_mpi(src: impl Read + Send + 'static, to_err: bool) -> std::thread::JoinHandle<()> {
  forward_lines(src, to_err, |line| {
    untag_mpi(&String::from_utf8_lossy(line))
  })
}

/// Kill every rank still running and reap it (what a rank itself started
/// is its own business, as with `mlx.launch`).
fn stop_all(kids: &mut [Child]) {
  for c in kids.iter_mut() {
    if let Ok(None) = c.try_wait() {
      let _ = c.kill();
    }
    let _ = c.wait();
  }
}

/// This process's distributed group when it was started by a launcher
/// (`MLX_RANK` or `MLX_WORLD_SIZE` set, as `mlxrs launch` / `mlx.launch`
/// do) and the group has more than one rank; `None` otherwise. The backend
/// is `MLXRS_DIST_BACKEND`, else MLX's `any`.
pub fn group_from_env() -> Result<Option<dist::Group>> {
  // Started by `mpirun` itself (as `mpirun -np 2 python script.py` with
  // mlx): MLX's MPI backend.
  let mpi = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
  if std::env::var_os("MLX_RANK").is_none() && std::env::var_os("MLX_WORLD_SIZE").is_none() && !mpi
  {
    return Ok(None);
  }
  let backend = std::env::var("MLXRS_DIST_BACKEND")
    .unwrap_or_else(|_| if mpi { "mpi".into() } else { "any".into() });
  let g = dist::init(true, &backend).with_context(|| {
    let hint = if backend == "mpi" && std::env::var_os("MLX_MPI_LIBNAME").is_none() {
      " (MLX opens libmpi.so, which comes with the MPI development package; set MLX_MPI_LIBNAME=libmpi.so.40 or the like to use the runtime library)"
    } else {
      ""
    };
    format!("starting the distributed backend {backend:?}{hint}")
  })?;
  Ok((g.size() > 1).then_some(g))
}

/// Load a language model, tensor-parallel over `group` when there is one
/// (python mlx-lm's `sharded_load`: `load` then `model.shard(group)`).
pub fn load_lm(
  model: &str,
  opts: &LoadOptions,
  group: Option<&dist::Group>,
) -> Result<LoadedModel> {
  let shard = group
    .map(|g| TensorShard::new(g.rank(), g.size()))
    .transpose()?;
  Ok(mlxrs_lm::load_sharded(model, opts, shard)?)
}

/// [`load_lm`], or with `pipeline` the layers split over the group's ranks
/// (python mlx-lm's `pipeline_load`, `mlx_lm.generate --pipeline`).
pub fn load_lm_split(
  model: &str,
  opts: &LoadOptions,
  group: Option<&dist::Group>,
  pipeline: bool,
) -> Result<LoadedModel> {
  match group {
    Some(g) if pipeline => Ok(mlxrs_lm::load_pipeline(model, opts, g.rank(), g.size())?),
    _ => load_lm(model, opts, group),
  }
}

/// Where a rank writes its results: stdout on rank 0 (or without a group),
/// nowhere on the others (python mlx-lm prints on rank 0 only).
pub fn rank_stdout(group: Option<&dist::Group>) -> Box<dyn Write> {
  match group {
    Some(g) if g.rank() != 0 => Box::new(std::io::sink()),
    _ => Box::new(std::io::stdout().lock()),
  }
}

#[cfg(test)]
mod tests {
  use super::untag_mpi;

  #[test]
  fn mpirun_tags_become_rank_prefixes() {
    assert_eq!(untag_mpi("[1,0]<stdout>:{\"a\": 1}\n"), "[0] {\"a\": 1}\n");
    assert_eq!(
      untag_mpi("[4419,1]<stderr>:listening on http://[4419,1]<stderr>:127.0.0.1:80\n"),
      "[1] listening on http://127.0.0.1:80\n"
    );
    assert_eq!(untag_mpi("mpirun noticed\n"), "mpirun noticed\n");
    assert_eq!(untag_mpi("[x]<stdout>:y"), "[x]<stdout>:y");
  }
}
