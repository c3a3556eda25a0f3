//! The server survives its clients (bounded, loopback only): malformed
//! JSON, missing fields, bad values, an oversized body, a full queue, a
//! wrong API key, a client that disconnects mid-stream and 50 idle
//! connect/close cycles each get a clear OpenAI-shaped error (or nothing)
//! and a following normal request is still exact.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use mlxrs_server::ServerConfig;
use serde_json::{Value, json};

const MODEL: &str = "qwen3";

fn check_error(st: u16, body: &Value, want: u16, needle: &str) {
  assert_eq!(st, want, "{body}");
  let msg = body["error"]["message"].as_str().unwrap_or("");
  assert!(
    msg.contains(needle),
    "error message {msg:?} lacks {needle:?}"
  );
  assert!(body["error"]["type"].is_string(), "{body}");
}

/// The exact-output check after each fault.
fn still_exact(s: &mlxrs_server::Server, want: &str) {
  let (st, r) = post(
    s,
    "/v1/completions",
    &json!({"prompt": "Hello world", "max_tokens": 10}),
  );
  assert_eq!(st, 200, "{r}");
  assert_eq!(r["choices"][0]["text"], want);
}

#[test]
fn bad_requests_get_clear_errors() {
  let s = start(config(MODEL));
  let m = model(MODEL);
  let ids = m
    .tokenizer
    .as_ref()
    .unwrap()
    .encode("Hello world", true)
    .unwrap();
  let want = reference(&m, &ids, &greedy(10)).text;
  let chat = "/v1/chat/completions";
  let cases: Vec<(&[u8], u16, &str)> = vec![
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"{}", 400, "`messages` is required"),
    (br#"{"messages": []}"#, 400, "must not be empty"),
    (br#"{"messages": [{"content": "x"}]}"#, 400, "role"),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
      400,
      "temperature",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "temperature": -1}"#,
      400,
      "temperature",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
      400,
      "max_tokens",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "n": 0}"#,
      400,
      "n must be",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}"#,
      400,
      "top_p",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "top_k": 100000000}"#,
      400,
      "top_k",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}"#,
      400,
      "logit_bias",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 1}}"#,
      400,
      "logit_bias",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "stop": [""]}"#,
      400,
      "stop",
    ),
    (
      br#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}"#,
      400,
      "logprobs",
    ),
    (
      br#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}"#,
      400,
      "vision model",
    ),
  ];
  for (body, code, needle) in cases {
    let (st, r) = post_raw(&s, chat, body);
    check_error(st, &r, code, needle);
  }
  let (st, r) = post_raw(&s, "/v1/completions", br#"{"prompt": [999999999]}"#);
  check_error(st, &r, 400, "vocabulary");
  let (st, r) = post_raw(&s, "/v1/completions", br#"{"prompt": {"a": 1}}"#);
  check_error(st, &r, 400, "prompt");
  // A prompt longer than the context (512 for the fixture).
  let long = "word ".repeat(2000);
  let (st, r) = post(&s, "/v1/completions", &json!({ "prompt": long }));
  check_error(st, &r, 400, "context");
  let (st, r) = post_raw(&s, "/v1/nothing", b"{}");
  check_error(st, &r, 404, "no such endpoint");
  still_exact(&s, &want);

  // 5 MB body: 413, and the server keeps serving.
  let big = format!(
    r#"{{"prompt": "{}", "max_tokens": 1}}"#,
    "a".repeat(5_000_000)
  );
  // With `Expect: 100-continue` (curl's way for large bodies) the server
  // answers 413 before the body is sent.
  let mut c = TcpStream::connect(s.addr()).unwrap();
  c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
  write!(
    c,
    "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
    big.len()
  )
  .unwrap();
  let (st, r) = read_response(&mut c);
  check_error(st, &r, 413, "larger than");
  // Without it, the client is still writing when the 413 arrives and the
  // server closes: it reads the 413 or sees the connection reset, and the
  // server keeps serving.
  let mut c = TcpStream::connect(s.addr()).unwrap();
  c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
  let mut w = c.try_clone().unwrap();
  let head = format!(
    "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
    big.len()
  );
  let writer = std::thread::spawn(move || {
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(big.as_bytes());
  });
  let mut buf = Vec::new();
  let _ = c.read_to_end(&mut buf);
  let _ = writer.join();
  let got = String::from_utf8_lossy(&buf);
  assert!(got.is_empty() || got.starts_with("HTTP/1.1 413"), "{got}");
  still_exact(&s, &want);
  assert!(
    metric(
      &s,
      "mlxrs_requests_total{endpoint=\"any\",outcome=\"error\"}"
    ) >= 20.0
  );
  s.shutdown().unwrap();
}

#[test]
fn queue_limit_and_api_key() {
  let s = start(ServerConfig {
    max_queue: 0,
    ..config(MODEL)
  });
  let (st, r) = post(&s, "/v1/completions", &json!({"prompt": "hi"}));
  check_error(st, &r, 429, "busy");
  s.shutdown().unwrap();

  let s = start(ServerConfig {
    api_key: Some("sekret".into()),
    ..config(MODEL)
  });
  let (st, r) = post(&s, "/v1/completions", &json!({"prompt": "hi"}));
  check_error(st, &r, 401, "API key");
  let url = format!("http://{}/v1/completions", s.addr());
  let r = ureq::post(&url)
    .set("Authorization", "Bearer sekret")
    .send_json(json!({"prompt": "hi", "max_tokens": 2}))
    .unwrap();
  assert_eq!(r.status(), 200);
  s.shutdown().unwrap();
}

/// Read one HTTP/1.1 response with a Content-Length body: (status, JSON).
fn read_response(c: &mut TcpStream) -> (u16, Value) {
  let mut buf = Vec::new();
  let mut tmp = [0u8; 4096];
  loop {
    let n = c.read(&mut tmp).unwrap();
    assert!(
      n > 0,
      "connection closed early: {}",
      String::from_utf8_lossy(&buf)
    );
    buf.extend_from_slice(&tmp[..n]);
    let text = String::from_utf8_lossy(&buf).to_string();
    if let Some(end) = text.find("\r\n\r\n") {
      let len = text[..end]
        .lines()
        .find_map(|l| {
          l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
      if buf.len() >= end + 4 + len {
        let status = text[9..12].parse().unwrap();
        let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
        return (status, body);
      }
    }
  }
}

fn raw_request(addr: std::net::SocketAddr, body: &str) -> TcpStream {
  let mut c = TcpStream::connect(addr).unwrap();
  c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
  write!(
    c,
    "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
    body.len()
  )
  .unwrap();
  c
}

#[test]
fn disconnects_and_idle_connections() {
  let s = start(config(MODEL));
  let m = model(MODEL);
  let ids = m
    .tokenizer
    .as_ref()
    .unwrap()
    .encode("Hello world", true)
    .unwrap();
  let want = reference(&m, &ids, &greedy(10)).text;
  // Disconnect mid-stream: read the first bytes, then drop the socket.
  for _ in 0..3 {
    let mut c = raw_request(
      s.addr(),
      r#"{"prompt": "Tell me everything", "max_tokens": 400, "stream": true}"#,
    );
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
  }
  // A non-streaming client that leaves before the answer.
  drop(raw_request(
    s.addr(),
    r#"{"prompt": "Tell me more", "max_tokens": 400}"#,
  ));
  // 50 idle connect/close, and 10 that send half a request.
  for i in 0..60 {
    let mut c = TcpStream::connect(s.addr()).unwrap();
    if i >= 50 {
      let _ = c.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pro");
    }
  }
  still_exact(&s, &want);
  // The cancelled rows left the batch: nothing runs once idle.
  let t0 = Instant::now();
  while metric(&s, "mlxrs_running_batch_size") != 0.0 {
    assert!(
      t0.elapsed() < Duration::from_secs(60),
      "cancelled rows still running"
    );
    std::thread::sleep(Duration::from_millis(50));
  }
  assert!(metric(&s, "mlxrs_generation_tokens_total") < 4.0 * 400.0);
  s.shutdown().unwrap();
}

/// Load: 64 streaming requests from 32 concurrent clients all complete
/// (nothing lost: each ends with its finish chunk and `[DONE]`, with the
/// library's text and token count, so batches of up to 32 rows are exact),
/// and MLX's active memory returns to its baseline
/// (no leaked cache rows; the prompt cache is off here).
#[test]
fn load_nothing_lost_memory_back_to_baseline() {
  let s = start(ServerConfig {
    prompt_cache_size: 0,
    ..config(MODEL)
  });
  let m = model(MODEL);
  let tok = m.tokenizer.as_ref().unwrap();
  let prompt = |i: usize| format!("request number {i} says hello");
  let wants: Vec<(String, usize)> = (0..64)
    .map(|i| {
      let o = reference(&m, &tok.encode(&prompt(i), true).unwrap(), &greedy(16));
      (o.text, o.tokens.len())
    })
    .collect();
  drop(m);
  still_exact_warm(&s);
  let base = metric(&s, "mlxrs_mlx_active_memory_bytes");
  std::thread::scope(|sc| {
    for t in 0..32 {
      let (s, wants) = (&s, &wants);
      sc.spawn(move || {
        for i in [t, t + 32] {
          let chunks = stream(
            s,
            "/v1/completions",
            &json!({"prompt": prompt(i), "max_tokens": 16, "stream": true,
                    "stream_options": {"include_usage": true}}),
          );
          let last = chunks.last().unwrap();
          assert_eq!(
            last["usage"]["completion_tokens"], wants[i].1,
            "request {i}"
          );
          let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
          assert_eq!(text, wants[i].0, "request {i}");
          assert!(
            chunks
              .iter()
              .any(|c| !c["choices"][0]["finish_reason"].is_null()),
            "request {i}: no finish chunk"
          );
        }
      });
    }
  });
  assert_eq!(metric(&s, "mlxrs_running_batch_size"), 0.0);
  let peak = metric(&s, "mlxrs_running_batch_size_peak");
  assert!(peak >= 8.0, "peak batch {peak}");
  let after = metric(&s, "mlxrs_mlx_active_memory_bytes");
  assert!(
    after <= base + 64.0 * 1024.0,
    "active memory {after} vs baseline {base}"
  );
  s.shutdown().unwrap();
}

fn still_exact_warm(s: &mlxrs_server::Server) {
  let (st, _) = post(
    s,
    "/v1/completions",
    &json!({"prompt": "warm up", "max_tokens": 4}),
  );
  assert_eq!(st, 200);
}
