//! Shared helpers: start `mlxrs serve` in-process on 127.0.0.1 (ephemeral
//! port) on a tiny fixture, a plain HTTP client (ureq, raw TCP), and the
//! library reference (`mlxrs_lm::generate` on the same prompt ids).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use mlxrs_core::Dtype;
use mlxrs_lm::{
  ChatOptions, GenerateOptions, LoadOptions, LoadedModel, Message, Output, StepConfig, load,
};
use mlxrs_server::{Server, ServerConfig};
use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("../../models/tiny")
    .join(name)
}

pub fn config(name: &str) -> ServerConfig {
  ServerConfig {
    model: fixture(name).to_string_lossy().into_owned(),
    dtype: Some(Dtype::Float32),
    port: 0,
    max_tokens: 24,
    ..ServerConfig::default()
  }
}

pub fn start(cfg: ServerConfig) -> Server {
  Server::start(cfg, false).expect("server starts")
}

pub fn model(name: &str) -> LoadedModel {
  load(
    fixture(name).to_str().unwrap(),
    &LoadOptions {
      dtype: Some(Dtype::Float32),
      no_tokenizer: false,
    },
  )
  .unwrap()
}

fn agent() -> ureq::Agent {
  ureq::AgentBuilder::new()
    .timeout(Duration::from_secs(120))
    .build()
}

/// `/v1/completions` for every `(prompt, max_tokens)` at once, one client
/// thread each; the response bodies in order.
pub fn complete_concurrently<P: AsRef<str> + Sync>(
  s: &Server,
  prompts: &[(P, usize)],
) -> Vec<Value> {
  std::thread::scope(|sc| {
    let hs: Vec<_> = prompts
      .iter()
      .map(|(p, n)| {
        let body = serde_json::json!({"prompt": p.as_ref(), "max_tokens": n});
        sc.spawn(move || post(s, "/v1/completions", &body).1)
      })
      .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
  })
}

/// POST JSON; `(status, body)` for any status.
pub fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
  let url = format!("http://{}{path}", s.addr());
  match agent().post(&url).send_json(body.clone()) {
    Ok(r) => (r.status(), r.into_json().unwrap()),
    Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
    Err(e) => panic!("POST {path}: {e}"),
  }
}

/// POST raw bytes with a JSON content type.
pub fn post_raw(s: &Server, path: &str, body: &[u8]) -> (u16, Value) {
  let url = format!("http://{}{path}", s.addr());
  match agent()
    .post(&url)
    .set("Content-Type", "application/json")
    .send_bytes(body)
  {
    Ok(r) => (r.status(), r.into_json().unwrap()),
    Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
    Err(e) => panic!("POST {path}: {e}"),
  }
}

pub fn get(s: &Server, path: &str) -> (u16, String) {
  let url = format!("http://{}{path}", s.addr());
  match agent().get(&url).call() {
    Ok(r) => (r.status(), r.into_string().unwrap()),
    Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
    Err(e) => panic!("GET {path}: {e}"),
  }
}

/// POST a streaming request; the `data:` payloads (JSON), `[DONE]` last
/// (checked and dropped).
pub fn stream(s: &Server, path: &str, body: &Value) -> Vec<Value> {
  let url = format!("http://{}{path}", s.addr());
  let r = agent().post(&url).send_json(body.clone()).unwrap();
  assert_eq!(r.status(), 200);
  assert!(
    r.content_type().starts_with("text/event-stream"),
    "{}",
    r.content_type()
  );
  let mut out = Vec::new();
  let mut done = false;
  for line in BufReader::new(r.into_reader()).lines() {
    let line = line.unwrap();
    if let Some(d) = line.strip_prefix("data: ") {
      assert!(!done, "data after [DONE]");
      if d == "[DONE]" {
        done = true;
      } else {
        out.push(serde_json::from_str(d).unwrap());
      }
    }
  }
  assert!(done, "the stream ended without [DONE]");
  out
}

/// The chat prompt ids the server builds for `messages`.
pub fn chat_ids(m: &LoadedModel, messages: &Value) -> Vec<u32> {
  let msgs: Vec<Message> = serde_json::from_value(messages.clone()).unwrap();
  let opts = ChatOptions {
    add_generation_prompt: true,
    ..ChatOptions::default()
  };
  m.tokenizer
    .as_ref()
    .unwrap()
    .apply_chat_template_ids(&msgs, &opts)
    .unwrap()
}

pub fn greedy(max_tokens: usize) -> GenerateOptions {
  GenerateOptions {
    step: StepConfig {
      max_tokens,
      ..StepConfig::default()
    },
    stop: Vec::new(),
  }
}

/// The library's output for `ids`.
pub fn reference(m: &LoadedModel, ids: &[u32], opts: &GenerateOptions) -> Output {
  mlxrs_lm::generate(m, ids, opts).unwrap()
}

pub fn finish(o: &Output) -> &'static str {
  match o.finish_reason {
    mlxrs_lm::FinishReason::Stop => "stop",
    mlxrs_lm::FinishReason::Length => "length",
  }
}

/// A gauge or counter from `/metrics`.
pub fn metric(s: &Server, name: &str) -> f64 {
  let (_, text) = get(s, "/metrics");
  text
    .lines()
    .find_map(|l| l.strip_prefix(&format!("{name} ")))
    .and_then(|v| v.trim().parse().ok())
    .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// A real family chat template from tests/data/templates.
pub fn template(name: &str) -> String {
  let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("tests/data/templates")
    .join(name);
  std::fs::read_to_string(p).unwrap()
}

/// A fresh copy (the caller removes it) of fixture `name` with a
/// 2048-position context: the real
/// templates with tools are longer than the tiny fixtures' 512 positions
/// in their tiny vocabulary.
pub fn long_context_copy(name: &str) -> std::path::PathBuf {
  static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
  let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
  let dir = std::env::temp_dir().join(format!("mlxrs-tools-{name}-{}-{n}", std::process::id()));
  std::fs::create_dir_all(&dir).unwrap();
  for e in std::fs::read_dir(fixture(name)).unwrap() {
    let e = e.unwrap();
    std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
  }
  let p = dir.join("config.json");
  let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
  c["max_position_embeddings"] = Value::from(2048);
  std::fs::write(&p, c.to_string()).unwrap();
  dir
}
