//! The HTTP side (axum): routes, authentication, the bounded queue,
//! non-streaming answers and server-sent-event streams in OpenAI's shapes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mlxrs_lm::{FinishReason, Tokenizer};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{self, Defaults, Endpoint, Prepared};
use crate::engine::{Event, Job};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// State shared by the handlers.
pub struct AppState {
  /// To the engine thread.
  pub tx: std::sync::mpsc::Sender<Job>,
  /// The tokenizer (prompt building, logprob token strings).
  pub tok: Tokenizer,
  /// Defaults and limits of request values.
  pub defaults: Defaults,
  /// The id reported by `/v1/models` and in responses.
  pub model_id: String,
  /// Required bearer token, if any.
  pub api_key: Option<String>,
  /// Rows allowed to wait at once.
  pub max_queue: usize,
  /// Metrics.
  pub metrics: Arc<Metrics>,
  /// Largest request body in bytes.
  pub max_body: usize,
  /// Admission under `--memory-limit-gb`, if set.
  pub memory: Option<Arc<crate::memory_budget::MemoryBudget>>,
  /// Start time (unix seconds).
  pub created: u64,
  /// Response id counter.
  pub counter: AtomicU64,
  /// The constrained-decoding engine (built on first use).
  pub guidance: crate::structured::GuidanceCell,
  /// Stored `/v1/responses` results (`previous_response_id`).
  pub responses: crate::responses::Store,
  /// The embedding / rerank / Whisper models served alongside.
  pub extras: Arc<crate::extras::Extras>,
}

/// The router with every route.
pub fn router(state: Arc<AppState>) -> Router {
  Router::new()
    .route("/health", get(health))
    .route("/metrics", get(metrics))
    .route("/v1/models", get(models))
    .route("/v1/chat/completions", post(chat))
    .route("/chat/completions", post(chat))
    .route("/v1/completions", post(completions))
    .route("/v1/responses", post(crate::responses::create))
    .route("/v1/responses/{id}", get(crate::responses::retrieve))
    .fallback(not_found)
    .with_state(state)
}

pub(crate) fn now() -> u64 {
  SystemTime::now()
    .duration_since(UNIX_EPOCH)
    .map(|d| d.as_secs())
    .unwrap_or(0)
}

async fn not_found() -> Response {
  ApiError::new(
    StatusCode::NOT_FOUND,
    "invalid_request_error",
    "no such endpoint; see /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/rerank, /v1/audio/transcriptions, /health, /metrics",
  )
  .into_response()
}

async fn health() -> Response {
  axum::Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
  (
    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
    st.metrics.render() + &st.extras.aux_metrics.render(),
  )
    .into_response()
}

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
  if let Err(e) = st.check_auth(&headers) {
    return e.into_response();
  }
  let mut data =
    vec![json!({"id": st.model_id, "object": "model", "created": st.created, "owned_by": "mlxrs"})];
  data.extend(st.extras.model_entries());
  axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn chat(State(st): State<Arc<AppState>>, req: Request) -> Response {
  handle(st, Endpoint::Chat, req).await
}

async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
  handle(st, Endpoint::Completions, req).await
}

impl AppState {
  pub(crate) fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
    check_bearer(self.api_key.as_deref(), headers)
  }

  pub(crate) fn submit(&self, p: &Prepared) -> Result<UnboundedReceiver<Event>, ApiError> {
    if let Some(b) = &self.memory {
      if let Err(message) = b.check_row(p.prompt.len(), p.params.max_tokens) {
        self.metrics.memory_refused.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::invalid(message, Some("max_tokens")));
      }
    }
    let n = p.params.n;
    let q = self.metrics.queue_depth.fetch_add(n, Ordering::Relaxed);
    if q + n > self.max_queue {
      self.metrics.queue_depth.fetch_sub(n, Ordering::Relaxed);
      return Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        format!(
          "the server is busy ({q} requests waiting, at most {}); retry later",
          self.max_queue
        ),
      ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
      prompt: p.prompt.clone(),
      images: p.images.clone(),
      params: p.params.clone(),
      events: tx,
      arrived: Instant::now(),
    };
    if self.tx.send(job).is_err() {
      self.metrics.queue_depth.fetch_sub(n, Ordering::Relaxed);
      return Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the engine has stopped",
      ));
    }
    Ok(rx)
  }

  pub(crate) fn id(&self, prefix: &str) -> String {
    format!(
      "{prefix}-{}-{}",
      self.created,
      self.counter.fetch_add(1, Ordering::Relaxed)
    )
  }

  fn token_str(&self, t: i32) -> String {
    self.tok.decode(&[t as u32], false).unwrap_or_default()
  }
}

async fn handle(st: Arc<AppState>, ep: Endpoint, req: Request) -> Response {
  match handle_inner(&st, ep, req).await {
    Ok(r) => r,
    Err(e) => {
      st.metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
      e.into_response()
    }
  }
}

async fn handle_inner(
  st: &Arc<AppState>,
  ep: Endpoint,
  req: Request,
) -> Result<Response, ApiError> {
  let body = read_checked_body(st, req).await?;
  let req = api::parse(&body)?;
  let p = api::prepare(ep, &req, &st.tok, &st.defaults, &st.guidance)?;
  let rx = st.submit(&p)?;
  if p.stream {
    Ok(stream(Arc::clone(st), ep, p, rx))
  } else {
    collect(st, ep, &p, rx).await
  }
}

/// Check the API key and read the body within the size limit.
pub(crate) async fn read_checked_body(
  st: &AppState,
  req: Request,
) -> Result<axum::body::Bytes, ApiError> {
  st.check_auth(req.headers())?;
  read_body(req, st.max_body, "--max-body-bytes").await
}

/// Check `Authorization: Bearer KEY` when the server has an API key.
pub(crate) fn check_bearer(key: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
  let Some(key) = key else {
    return Ok(());
  };
  let got = headers
    .get(header::AUTHORIZATION)
    .and_then(|v| v.to_str().ok())
    .and_then(|v| v.strip_prefix("Bearer "));
  if got == Some(key) {
    Ok(())
  } else {
    Err(ApiError::new(
      StatusCode::UNAUTHORIZED,
      "invalid_request_error",
      "missing or wrong API key (send `Authorization: Bearer <key>`)",
    ))
  }
}

/// Read a request body of at most `max` bytes: a larger one is a 413,
/// refused from its `Content-Length` before reading when declared (a
/// client waiting on `Expect: 100-continue` then never sends it).
pub(crate) async fn read_body(
  req: Request,
  max: usize,
  flag: &str,
) -> Result<axum::body::Bytes, ApiError> {
  let (parts, body) = req.into_parts();
  read_body_of(&parts.headers, body, max, flag).await
}

/// [`read_body`] on a request already split into its headers and body.
pub(crate) async fn read_body_of(
  headers: &HeaderMap,
  body: axum::body::Body,
  max: usize,
  flag: &str,
) -> Result<axum::body::Bytes, ApiError> {
  check_declared_length(headers, max, flag)?;
  axum::body::to_bytes(body, max).await.map_err(|e| {
    let limit = std::error::Error::source(&e)
      .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
      || e.to_string().contains("length limit");
    if limit {
      too_large(max, flag)
    } else {
      ApiError::invalid(format!("could not read the request body: {e}"), None)
    }
  })
}

/// The 413 of a body over `max` bytes (the limit set by `flag`).
pub(crate) fn too_large(max: usize, flag: &str) -> ApiError {
  ApiError::new(
    StatusCode::PAYLOAD_TOO_LARGE,
    "invalid_request_error",
    format!("the request body is larger than the server's limit of {max} bytes ({flag})"),
  )
}

/// A 413 when `Content-Length` declares more than `max` bytes.
pub(crate) fn check_declared_length(
  headers: &HeaderMap,
  max: usize,
  flag: &str,
) -> Result<(), ApiError> {
  let declared = headers
    .get(header::CONTENT_LENGTH)
    .and_then(|v| v.to_str().ok())
    .and_then(|v| v.parse::<u64>().ok());
  if declared.is_some_and(|n| n > max as u64) {
    return Err(too_large(max, flag));
  }
  Ok(())
}

#[derive(Default, Clone)]
struct Choice {
  text: String,
  tokens: Vec<i32>,
  logprobs: Vec<f32>,
  tops: Vec<Vec<(i32, f32)>>,
  finish: Option<FinishReason>,
  completion_tokens: usize,
  cached: usize,
}

pub(crate) fn finish_str(f: Option<FinishReason>) -> &'static str {
  match f {
    Some(FinishReason::Length) => "length",
    _ => "stop",
  }
}

pub(crate) fn engine_error(message: String) -> ApiError {
  ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
}

/// OpenAI chat logprob entries for tokens with their alternatives.
fn chat_logprobs(st: &AppState, tokens: &[i32], lps: &[f32], tops: &[Vec<(i32, f32)>]) -> Value {
  let entry = |t: i32, lp: f32| {
    let s = st.token_str(t);
    json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})
  };
  let content: Vec<Value> = tokens
    .iter()
    .zip(lps)
    .zip(tops)
    .map(|((&t, &lp), top)| {
      let mut e = entry(t, lp);
      e["top_logprobs"] = Value::Array(top.iter().map(|&(a, b)| entry(a, b)).collect());
      e
    })
    .collect();
  json!({"content": content, "refusal": null})
}

/// Legacy completions logprobs (`tokens`, `token_logprobs`, `top_logprobs`,
/// `text_offset`), starting at text offset `offset`.
fn completion_logprobs(
  st: &AppState,
  tokens: &[i32],
  lps: &[f32],
  tops: &[Vec<(i32, f32)>],
  mut offset: usize,
) -> Value {
  let mut strs = Vec::new();
  let mut offs = Vec::new();
  for &t in tokens {
    let s = st.token_str(t);
    offs.push(offset);
    offset += s.len();
    strs.push(s);
  }
  let tops: Vec<Value> = tops
    .iter()
    .map(|top| {
      let mut m = serde_json::Map::new();
      for &(a, b) in top {
        m.entry(st.token_str(a)).or_insert(json!(b));
      }
      Value::Object(m)
    })
    .collect();
  json!({"tokens": strs, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
  json!({
    "prompt_tokens": prompt,
    "completion_tokens": completion,
    "total_tokens": prompt + completion,
    "prompt_tokens_details": {"cached_tokens": cached},
  })
}

async fn collect(
  st: &Arc<AppState>,
  ep: Endpoint,
  p: &Prepared,
  mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
  let n = p.params.n;
  let mut choices = vec![Choice::default(); n];
  let mut done = 0;
  // The engine's count (a vision prompt's image placeholders expand).
  let mut prompt = p.prompt.len();
  while done < n {
    match rx.recv().await {
      Some(Event::Token {
        index,
        text,
        token,
        logprob,
        top,
      }) => {
        if let Some(c) = choices.get_mut(index) {
          c.text.push_str(&text);
          c.tokens.push(token);
          c.logprobs.push(logprob);
          c.tops.push(top);
        }
      }
      Some(Event::Done {
        index,
        finish,
        completion_tokens,
        cached_tokens,
        prompt_tokens,
      }) => {
        if let Some(c) = choices.get_mut(index) {
          c.finish = Some(finish);
          c.completion_tokens = completion_tokens;
          c.cached = cached_tokens;
        }
        prompt = prompt_tokens;
        done += 1;
      }
      Some(Event::Error { message, .. }) => return Err(engine_error(message)),
      None => return Err(engine_error("the engine stopped".into())),
    }
  }
  let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
  let cached = choices.first().map(|c| c.cached).unwrap_or(0);
  let created = now();
  let body = match ep {
    Endpoint::Chat => {
      st.metrics.requests_chat.fetch_add(1, Ordering::Relaxed);
      let cs: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
          let reply = crate::reply::finish(&p.reply, &c.text);
          json!({
            "index": i,
            "message": reply_message(&reply),
            "logprobs": if p.logprobs { chat_logprobs(st, &c.tokens, &c.logprobs, &c.tops) } else { Value::Null },
            "finish_reason": if reply.calls.is_empty() { finish_str(c.finish) } else { "tool_calls" },
          })
        })
        .collect();
      json!({
        "id": st.id("chatcmpl"),
        "object": "chat.completion",
        "created": created,
        "model": st.model_id,
        "system_fingerprint": "mlxrs",
        "choices": cs,
        "usage": usage(prompt, completion, cached),
      })
    }
    Endpoint::Completions => {
      st.metrics
        .requests_completions
        .fetch_add(1, Ordering::Relaxed);
      let cs: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
          json!({
            "index": i,
            "text": c.text,
            "logprobs": if p.logprobs { completion_logprobs(st, &c.tokens, &c.logprobs, &c.tops, 0) } else { Value::Null },
            "finish_reason": finish_str(c.finish),
          })
        })
        .collect();
      json!({
        "id": st.id("cmpl"),
        "object": "text_completion",
        "created": created,
        "model": st.model_id,
        "system_fingerprint": "mlxrs",
        "choices": cs,
        "usage": usage(prompt, completion, cached),
      })
    }
  };
  Ok(axum::Json(body).into_response())
}

/// The chat `message` of a finished reply (`content`, `reasoning_content`,
/// `tool_calls`).
pub fn reply_message(r: &crate::reply::Reply) -> Value {
  let mut m = json!({"role": "assistant", "content": r.content});
  if r.content.is_empty() && !r.calls.is_empty() {
    m["content"] = Value::Null;
  }
  if let Some(t) = &r.reasoning {
    m["reasoning_content"] = json!(t);
  }
  if !r.calls.is_empty() {
    m["tool_calls"] = Value::Array(r.calls.iter().map(|c| c.to_json()).collect());
  }
  m
}

fn data(v: &Value) -> SseEvent {
  SseEvent::default().data(v.to_string())
}

fn stream(
  st: Arc<AppState>,
  ep: Endpoint,
  p: Prepared,
  mut rx: UnboundedReceiver<Event>,
) -> Response {
  let (tx, out) = tokio::sync::mpsc::channel::<SseEvent>(64);
  let id = st.id(if ep == Endpoint::Chat {
    "chatcmpl"
  } else {
    "cmpl"
  });
  let created = now();
  tokio::spawn(async move {
    let n = p.params.n;
    let object = match ep {
      Endpoint::Chat => "chat.completion.chunk",
      Endpoint::Completions => "text_completion",
    };
    let chunk = |choices: Value| {
      json!({"id": id, "object": object, "created": created, "model": st.model_id,
             "system_fingerprint": "mlxrs", "choices": choices})
    };
    if ep == Endpoint::Chat {
      for i in 0..n {
        let c = chunk(
          json!([{"index": i, "delta": {"role": "assistant", "content": ""},
                               "logprobs": null, "finish_reason": null}]),
        );
        if tx.send(data(&c)).await.is_err() {
          return;
        }
      }
    }
    let mut done = 0;
    let mut completion = 0;
    let mut cached = 0;
    let mut prompt = p.prompt.len();
    let mut offsets = vec![0usize; n];
    let mut replies: Vec<crate::reply::ReplyStream> = (0..n)
      .map(|_| crate::reply::ReplyStream::new(p.reply))
      .collect();
    while done < n {
      let ev = match rx.recv().await {
        Some(e) => e,
        None => Event::Error {
          index: 0,
          message: "the engine stopped".into(),
        },
      };
      let c = match ev {
        Event::Token {
          index,
          text,
          token,
          logprob,
          top,
        } => {
          if text.is_empty() && !p.logprobs {
            continue;
          }
          match ep {
            Endpoint::Chat => {
              let lp = if p.logprobs {
                chat_logprobs(&st, &[token], &[logprob], &[top])
              } else {
                Value::Null
              };
              let d = match replies.get_mut(index) {
                Some(r) => r.push(&text),
                None => continue,
              };
              if !d.reasoning.is_empty() {
                let c = chunk(
                  json!([{"index": index, "delta": {"reasoning_content": d.reasoning},
                                      "logprobs": null, "finish_reason": null}]),
                );
                if tx.send(data(&c)).await.is_err() {
                  return;
                }
              }
              for call in d.calls {
                let c = chunk(json!([{"index": index, "delta": {"tool_calls": [call]},
                                      "logprobs": null, "finish_reason": null}]));
                if tx.send(data(&c)).await.is_err() {
                  return;
                }
              }
              if d.content.is_empty() && !p.logprobs {
                continue;
              }
              chunk(json!([{"index": index, "delta": {"content": d.content},
                            "logprobs": lp, "finish_reason": null}]))
            }
            Endpoint::Completions => {
              let off = offsets.get(index).copied().unwrap_or(0);
              let lp = if p.logprobs {
                completion_logprobs(&st, &[token], &[logprob], &[top], off)
              } else {
                Value::Null
              };
              if let Some(o) = offsets.get_mut(index) {
                *o += text.len();
              }
              chunk(json!([{"index": index, "text": text, "logprobs": lp,
                            "finish_reason": null}]))
            }
          }
        }
        Event::Done {
          index,
          finish,
          completion_tokens,
          cached_tokens,
          prompt_tokens,
        } => {
          done += 1;
          completion += completion_tokens;
          prompt = prompt_tokens;
          if index == 0 {
            cached = cached_tokens;
          }
          match ep {
            Endpoint::Chat => {
              let Some(rs) = replies.get_mut(index) else {
                continue;
              };
              let (d, reply) = rs.finish();
              let mut deltas = Vec::new();
              if !d.reasoning.is_empty() {
                deltas.push(json!({"reasoning_content": d.reasoning}));
              }
              if !d.content.is_empty() {
                deltas.push(json!({"content": d.content}));
              }
              for call in d.calls {
                deltas.push(json!({"tool_calls": [call]}));
              }
              for delta in deltas {
                let c = chunk(json!([{"index": index, "delta": delta, "logprobs": null,
                                      "finish_reason": null}]));
                if tx.send(data(&c)).await.is_err() {
                  return;
                }
              }
              let reason = if reply.calls.is_empty() {
                finish_str(Some(finish))
              } else {
                "tool_calls"
              };
              chunk(json!([{"index": index, "delta": {}, "logprobs": null,
                            "finish_reason": reason}]))
            }
            Endpoint::Completions => chunk(json!([{"index": index, "text": "", "logprobs": null,
                                                    "finish_reason": finish_str(Some(finish))}])),
          }
        }
        Event::Error { message, .. } => {
          st.metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
          let _ = tx.send(data(&engine_error(message).body())).await;
          let _ = tx.send(SseEvent::default().data("[DONE]")).await;
          return;
        }
      };
      if tx.send(data(&c)).await.is_err() {
        return;
      }
    }
    if p.include_usage {
      let mut c = chunk(json!([]));
      c["usage"] = usage(prompt, completion, cached);
      if tx.send(data(&c)).await.is_err() {
        return;
      }
    }
    let counter = match ep {
      Endpoint::Chat => &st.metrics.requests_chat,
      Endpoint::Completions => &st.metrics.requests_completions,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let _ = tx.send(SseEvent::default().data("[DONE]")).await;
  });
  let body = futures_util::stream::unfold(out, |mut r| async move {
    r.recv().await.map(|e| (Ok::<_, Infallible>(e), r))
  });
  Sse::new(body).into_response()
}
