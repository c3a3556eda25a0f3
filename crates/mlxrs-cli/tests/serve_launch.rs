//! `mlxrs launch -n 2 -- serve` (python `mlx.launch` running
//! `mlx_lm.server`, its distributed mode) end to end on loopback: rank 0
//! serves HTTP, both ranks compute on their tensor shard. Every answer
//! (greedy and seeded sampling, chat and completions, streaming, several
//! requests at once) must equal a single-process `mlxrs serve`'s for the
//! same request; constrained decoding is refused alone; then killing one
//! rank, or SIGTERM to the launcher, ends every process within a bound.
//!
//! Every child is bounded: the launcher runs with `--timeout`, and the
//! processes left at the end are killed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a process may take to come up or go away.
const BOUND: Duration = Duration::from_secs(60);

fn tiny(name: &str) -> String {
  format!("{}/../../models/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A child whose stderr lines are collected on a thread; killed on drop.
struct Proc {
  child: Child,
  err: Arc<Mutex<Vec<String>>>,
}

impl Proc {
  fn spawn(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlxrs"))
      .args(args)
      .stdin(Stdio::null())
      .stdout(Stdio::null())
      .stderr(Stdio::piped())
      .spawn()
      .expect("start mlxrs");
    let err = Arc::new(Mutex::new(Vec::new()));
    let (e, se) = (Arc::clone(&err), child.stderr.take().unwrap());
    std::thread::spawn(move || {
      let mut buf = String::new();
      let mut r = BufReader::new(se);
      while r.read_line(&mut buf).unwrap_or(0) > 0 {
        e.lock().unwrap().push(std::mem::take(&mut buf));
      }
    });
    Proc { child, err }
  }

  fn log(&self) -> String {
    self.err.lock().unwrap().concat()
  }

  /// The first stderr line containing `tag`, waiting up to [`BOUND`].
  fn wait_line(&mut self, tag: &str) -> String {
    let start = Instant::now();
    loop {
      if let Some(l) = self.err.lock().unwrap().iter().find(|l| l.contains(tag)) {
        return l.clone();
      }
      if let Ok(Some(s)) = self.child.try_wait() {
        std::thread::sleep(Duration::from_millis(200));
        panic!("exited ({s}) before {tag:?}:\n{}", self.log());
      }
      assert!(
        start.elapsed() < BOUND,
        "no {tag:?} after {BOUND:?}:\n{}",
        self.log()
      );
      std::thread::sleep(Duration::from_millis(20));
    }
  }

  /// The server's address from its "listening on http://ADDR" line.
  fn addr(&mut self) -> String {
    let l = self.wait_line("listening on http://");
    let rest = &l[l.find("http://").unwrap() + 7..];
    rest.split_whitespace().next().unwrap().to_string()
  }

  /// The pid a rank logs ("rank R of N (pid P)").
  fn rank_pid(&mut self, rank: usize) -> u32 {
    let l = self.wait_line(&format!("[{rank}] mlxrs serve: rank {rank} of"));
    let p = &l[l.find("(pid ").unwrap() + 5..];
    p[..p.find(')').unwrap()].parse().unwrap()
  }

  /// Wait up to `limit` for the exit; its time, or `None`.
  fn wait_exit(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
      if let Ok(Some(s)) = self.child.try_wait() {
        return Some((s, start.elapsed()));
      }
      std::thread::sleep(Duration::from_millis(50));
    }
    None
  }
}

impl Drop for Proc {
  fn drop(&mut self) {
    let _ = self.child.kill();
    let _ = self.child.wait();
  }
}

fn alive(pid: u32) -> bool {
  Command::new("kill")
    .args(["-0", &pid.to_string()])
    .stderr(Stdio::null())
    .status()
    .is_ok_and(|s| s.success())
}

fn signal(pid: u32, sig: &str) {
  let s = Command::new("kill")
    .args([sig, &pid.to_string()])
    .status()
    .unwrap();
  assert!(s.success(), "kill {sig} {pid}");
}

fn agent() -> ureq::Agent {
  ureq::AgentBuilder::new()
    .timeout(Duration::from_secs(60))
    .build()
}

fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
  match agent()
    .post(&format!("http://{addr}{path}"))
    .send_json(body.clone())
  {
    Ok(r) => (r.status(), r.into_json().unwrap()),
    Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
    Err(e) => panic!("POST {path}: {e}"),
  }
}

/// What must match between two servers: the reply texts, finish reasons
/// and token counts (ids, timestamps and the model name differ).
fn answer(path: &str, body: &Value, r: &Value) -> Value {
  if body["stream"] == true {
    return r.clone();
  }
  let choices: Vec<Value> = r["choices"]
    .as_array()
    .unwrap_or_else(|| panic!("{path}: no choices: {r}"))
    .iter()
    .map(|c| {
      let text = if path.ends_with("chat/completions") {
        c["message"]["content"].clone()
      } else {
        c["text"].clone()
      };
      // The token bytes of chat logprobs (text may hide invalid UTF-8).
      let bytes: Vec<Value> = c["logprobs"]["content"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["bytes"].clone())
        .collect();
      json!({"text": text, "finish": c["finish_reason"], "bytes": bytes})
    })
    .collect();
  json!({"choices": choices, "completion_tokens": r["usage"]["completion_tokens"]})
}

/// A streaming request's text per choice and the finish reasons.
fn stream(addr: &str, path: &str, body: &Value) -> Value {
  let r = agent()
    .post(&format!("http://{addr}{path}"))
    .send_json(body.clone())
    .unwrap();
  let mut text = String::new();
  let mut finish = Vec::new();
  let mut done = false;
  for line in BufReader::new(r.into_reader()).lines() {
    let line = line.unwrap();
    let Some(d) = line.strip_prefix("data: ") else {
      continue;
    };
    if d == "[DONE]" {
      done = true;
      continue;
    }
    let v: Value = serde_json::from_str(d).unwrap();
    for c in v["choices"].as_array().into_iter().flatten() {
      if let Some(t) = c["delta"]["content"].as_str().or(c["text"].as_str()) {
        text.push_str(t);
      }
      if !c["finish_reason"].is_null() {
        finish.push(c["finish_reason"].clone());
      }
    }
  }
  assert!(done, "the stream ended without [DONE]");
  json!({"text": text, "finish": finish})
}

/// The requests both servers answer: `(path, body)`.
fn requests() -> Vec<(&'static str, Value)> {
  let chat = |content: &str| json!([{"role": "user", "content": content}]);
  vec![
    (
      "/v1/chat/completions",
      json!({"messages": chat("Hello there"), "max_tokens": 12, "logprobs": true}),
    ),
    (
      "/v1/completions",
      json!({"prompt": "The quick brown fox", "max_tokens": 12}),
    ),
    (
      "/v1/chat/completions",
      json!({"messages": chat("Tell me a story"), "max_tokens": 12, "logprobs": true,
             "temperature": 0.8, "top_p": 0.9, "seed": 42}),
    ),
    (
      "/v1/completions",
      json!({"prompt": "Once upon a time", "max_tokens": 10, "temperature": 1.0,
             "seed": 7, "n": 2}),
    ),
    (
      "/v1/chat/completions",
      json!({"messages": chat("Stream this"), "max_tokens": 10, "stream": true}),
    ),
    (
      "/v1/completions",
      json!({"prompt": "A long time ago", "max_tokens": 10, "stream": true,
             "temperature": 0.7, "seed": 3}),
    ),
  ]
}

fn ask(addr: &str, path: &str, body: &Value) -> Value {
  if body["stream"] == true {
    return stream(addr, path, body);
  }
  let (code, r) = post(addr, path, body);
  assert_eq!(code, 200, "{path} {body}: {r}");
  answer(path, body, &r)
}

/// Every request one after another, then all at once (4+ concurrent).
fn answers(addr: &str) -> (Vec<Value>, Vec<Value>) {
  let reqs = requests();
  let one: Vec<Value> = reqs.iter().map(|(p, b)| ask(addr, p, b)).collect();
  let all: Vec<Value> = std::thread::scope(|s| {
    let hs: Vec<_> = reqs
      .iter()
      .map(|(p, b)| s.spawn(move || ask(addr, p, b)))
      .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
  });
  (one, all)
}

/// Two ranks serving `model` answer as one process; constrained decoding
/// fails alone. Returns the launcher (still serving).
fn check_served(model: &str) -> Proc {
  let path = tiny(model);
  let mut single = Proc::spawn(&["serve", "--model", &path, "--port", "0"]);
  let mut launched = Proc::spawn(&[
    "launch",
    "-n",
    "2",
    "--timeout",
    "300",
    "--",
    "serve",
    "--model",
    &path,
    "--port",
    "0",
  ]);
  let (a1, a2) = (single.addr(), launched.addr());
  let t = Instant::now();
  let (want_seq, want_par) = answers(&a1);
  drop(single);
  let (got_seq, got_par) = answers(&a2);
  let reqs = requests();
  for (i, (p, b)) in reqs.iter().enumerate() {
    assert_eq!(got_seq[i], want_seq[i], "{model}: {p} {b}");
    assert_eq!(got_par[i], want_par[i], "{model}: concurrent {p} {b}");
  }
  // A request this mode refuses fails alone, with the reason ...
  let (code, r) = post(
    &a2,
    "/v1/chat/completions",
    &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "response_format": {"type": "json_schema",
              "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
  );
  assert_eq!(code, 400, "{r}");
  assert!(
    r["error"]["message"]
      .as_str()
      .unwrap()
      .contains("not available when serving under `mlxrs launch`"),
    "{r}"
  );
  // ... an unseeded sampled request runs (rank 0 picks its seed), and
  // after an idle second the ranks still agree.
  let (code, r) = post(
    &a2,
    "/v1/completions",
    &json!({"prompt": "Dice", "max_tokens": 8, "temperature": 1.0}),
  );
  assert_eq!(code, 200, "{r}");
  std::thread::sleep(Duration::from_secs(1));
  let (p, b) = &reqs[0];
  assert_eq!(ask(&a2, p, b), want_seq[0], "{model}: after the rest");
  assert_eq!(
    want_seq[0]["choices"][0]["bytes"].as_array().map(Vec::len),
    Some(12)
  );
  let log = launched.log();
  assert!(log.contains("prompt cache is off"), "{log}");
  eprintln!(
    "{model}: {} requests x 2 (sequential, concurrent) under 2 ranks equal one process ({:?})",
    reqs.len(),
    t.elapsed()
  );
  launched
}

/// f32 llama; then SIGTERM to rank 0: it shuts down gracefully, tells the
/// follower to stop, and the whole job exits 0.
#[test]
fn launch_serve_llama_then_rank0_sigterm() {
  let mut l = check_served("llama");
  let (p0, p1) = (l.rank_pid(0), l.rank_pid(1));
  signal(p0, "-TERM");
  let (status, took) = l
    .wait_exit(BOUND)
    .unwrap_or_else(|| panic!("the job outlived rank 0's SIGTERM:\n{}", l.log()));
  assert!(status.success(), "{}", l.log());
  assert!(l.log().contains("rank 0 stopped; exiting"), "{}", l.log());
  assert!(!alive(p0) && !alive(p1), "a rank outlived the launcher");
  eprintln!("SIGTERM to rank 0 ended the job cleanly in {took:?}");
}

/// 4-bit qwen3; then rank 1 is killed: rank 0 and the launcher end.
#[test]
fn launch_serve_qwen3_4bit_then_a_rank_dies() {
  let mut l = check_served("qwen3-4bit");
  let (p0, p1) = (l.rank_pid(0), l.rank_pid(1));
  signal(p1, "-KILL");
  let (status, took) = l
    .wait_exit(BOUND)
    .unwrap_or_else(|| panic!("the launcher outlived a dead rank:\n{}", l.log()));
  assert!(!status.success());
  assert!(l.log().contains("rank 1 failed"), "{}", l.log());
  assert!(!alive(p0), "rank 0 still running");
  eprintln!("a killed rank ended the job in {took:?}");
}

/// SIGTERM to the launcher of a serving job stops every rank; serving
/// refuses what it cannot replicate, clearly, before serving.
#[test]
fn launch_serve_sigterm_to_the_launcher_and_refusals() {
  let path = tiny("llama");
  let mut l = Proc::spawn(&[
    "launch",
    "-n",
    "2",
    "--timeout",
    "120",
    "--",
    "serve",
    "--model",
    &path,
    "--port",
    "0",
  ]);
  l.addr();
  let (p0, p1) = (l.rank_pid(0), l.rank_pid(1));
  signal(l.child.id(), "-TERM");
  let (status, took) = l
    .wait_exit(BOUND)
    .unwrap_or_else(|| panic!("the launcher ignored SIGTERM:\n{}", l.log()));
  assert!(!status.success());
  assert!(l.log().contains("SIGTERM"), "{}", l.log());
  assert!(!alive(p0) && !alive(p1), "a rank outlived the launcher");
  eprintln!("SIGTERM to the launcher ended the job in {took:?}");

  for (extra, want) in [
    (
      &["--draft-model", path.as_str()][..],
      "speculative decoding is not available",
    ),
    (
      &["--pipeline"][..],
      "pipeline-parallel serving is not supported",
    ),
  ] {
    let mut args = vec![
      "launch",
      "-n",
      "2",
      "--timeout",
      "120",
      "--",
      "serve",
      "--model",
      &path,
      "--port",
      "0",
    ];
    args.extend_from_slice(extra);
    let mut l = Proc::spawn(&args);
    let (status, _) = l
      .wait_exit(BOUND)
      .unwrap_or_else(|| panic!("{extra:?} still running:\n{}", l.log()));
    assert!(!status.success());
    assert!(l.log().contains(want), "{extra:?}:\n{}", l.log());
  }
}
