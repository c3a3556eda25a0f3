//! `POST /v1/responses` and `GET /v1/responses/{id}`: OpenAI's Responses
//! API (python `mlx_lm.server` has none) on top of the chat path: `input`
//! (text or a list of message / `function_call` / `function_call_output`
//! items) and `instructions` become chat messages, `tools` (flat function
//! tools), `tool_choice`, `text.format` (structured output) and the
//! sampling fields map to their chat twins; the reply comes back as
//! `reasoning`, `message` and `function_call` output items, whole or as
//! server-sent events (`response.created`, `response.output_text.delta`,
//! ..., `response.completed`). Stored responses (`store`, default true) are
//! kept in memory in a bounded least-recently-used [`Store`] so that
//! `previous_response_id` continues a conversation.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use mlxrs_lm::FinishReason;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{self, Endpoint, Prepared};
use crate::engine::Event;
use crate::error::ApiError;
use crate::http::{AppState, engine_error, now, read_checked_body};
use crate::reply::{Reply, ReplyStream};

/// One stored response: the conversation through its output, and the
/// response object.
#[derive(Clone)]
struct Stored {
  messages: Vec<Value>,
  response: Value,
}

/// Responses kept for `previous_response_id` (least recently used go
/// first beyond `capacity`).
pub struct Store {
  capacity: usize,
  inner: Mutex<(HashMap<String, Stored>, VecDeque<String>)>,
}

impl Store {
  /// An empty store of at most `capacity` responses (0 keeps none).
  pub fn new(capacity: usize) -> Store {
    Store {
      capacity,
      inner: Mutex::new((HashMap::new(), VecDeque::new())),
    }
  }

  fn get(&self, id: &str) -> Option<Stored> {
    let mut g = self.inner.lock().ok()?;
    let (map, order) = &mut *g;
    let s = map.get(id)?.clone();
    order.retain(|x| x != id);
    order.push_back(id.to_string());
    Some(s)
  }

  fn put(&self, id: String, s: Stored) {
    if self.capacity == 0 {
      return;
    }
    let Ok(mut g) = self.inner.lock() else {
      return;
    };
    let (map, order) = &mut *g;
    order.retain(|x| *x != id);
    order.push_back(id.clone());
    map.insert(id, s);
    while order.len() > self.capacity {
      if let Some(old) = order.pop_front() {
        map.remove(&old);
      }
    }
  }

  /// Stored responses now.
  pub fn len(&self) -> usize {
    self.inner.lock().map(|g| g.0.len()).unwrap_or(0)
  }

  /// Whether none is stored.
  pub fn is_empty(&self) -> bool {
    self.len() == 0
  }
}

/// The request fields read (others are ignored).
#[derive(Debug, Default, Deserialize)]
struct ResponsesRequest {
  model: Option<String>,
  input: Option<Value>,
  instructions: Option<String>,
  previous_response_id: Option<String>,
  tools: Option<Value>,
  tool_choice: Option<Value>,
  parallel_tool_calls: Option<bool>,
  max_output_tokens: Option<i64>,
  temperature: Option<f64>,
  top_p: Option<f64>,
  top_k: Option<i64>,
  seed: Option<i64>,
  stream: Option<bool>,
  store: Option<bool>,
  text: Option<Value>,
  metadata: Option<Value>,
  chat_template_kwargs: Option<Map<String, Value>>,
}

fn bad(param: &str, msg: impl Into<String>) -> ApiError {
  ApiError::invalid(msg, Some(param))
}

fn parse(body: &[u8]) -> Result<ResponsesRequest, ApiError> {
  let v: Value = serde_json::from_slice(body)
    .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
  if !v.is_object() {
    return Err(ApiError::invalid("the body must be a JSON object", None));
  }
  serde_path_to_error::deserialize(v).map_err(|e| {
    let path = e.path().to_string();
    ApiError::invalid(format!("{path}: {}", e.inner()), Some(&path))
  })
}

/// The text of a message's `content` (a string or text parts).
fn content_text(param: &str, c: &Value) -> Result<String, ApiError> {
  match c {
    Value::String(s) => Ok(s.clone()),
    Value::Null => Ok(String::new()),
    Value::Array(parts) => {
      let mut t = String::new();
      for (j, p) in parts.iter().enumerate() {
        let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
        match (kind, p.get("text").and_then(Value::as_str)) {
          ("input_text" | "output_text" | "text" | "refusal", Some(x)) => t.push_str(x),
          _ => {
            return Err(bad(
              param,
              format!(
                "{param}.content[{j}]: unsupported content part (type {kind:?}); this server takes text"
              ),
            ));
          }
        }
      }
      Ok(t)
    }
    _ => Err(bad(
      param,
      format!("{param}.content must be a string or an array of parts"),
    )),
  }
}

/// An image content part (`input_image`, or chat's `image_url`).
fn is_image(part: &Value) -> bool {
  matches!(
    part.get("type").and_then(Value::as_str),
    Some("input_image" | "image_url")
  )
}

/// `input` as chat messages.
fn input_messages(input: &Value) -> Result<Vec<Value>, ApiError> {
  let items = match input {
    Value::String(s) => return Ok(vec![json!({"role": "user", "content": s})]),
    Value::Array(a) => a,
    _ => {
      return Err(bad(
        "input",
        "`input` must be a string or an array of items",
      ));
    }
  };
  let mut out: Vec<Value> = Vec::new();
  for (i, it) in items.iter().enumerate() {
    let p = format!("input[{i}]");
    let kind = it.get("type").and_then(Value::as_str);
    match kind {
      Some("function_call") => {
        let call_id = it.get("call_id").and_then(Value::as_str);
        let name = it.get("name").and_then(Value::as_str);
        let (Some(call_id), Some(name)) = (call_id, name) else {
          return Err(bad(
            &p,
            format!("{p}: a function_call needs string `call_id` and `name`"),
          ));
        };
        let args = match it.get("arguments") {
          Some(Value::String(s)) => s.clone(),
          None | Some(Value::Null) => "{}".into(),
          Some(v) => v.to_string(),
        };
        let call = json!({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": args}});
        // Consecutive calls form one assistant turn.
        let extend = out.last().is_some_and(|m| {
          m["role"] == "assistant" && m.get("tool_calls").is_some() && m["content"] == ""
        });
        if extend {
          if let Some(Value::Array(calls)) = out.last_mut().and_then(|m| m.get_mut("tool_calls")) {
            calls.push(call);
          }
        } else {
          out.push(json!({"role": "assistant", "content": "", "tool_calls": [call]}));
        }
      }
      Some("function_call_output") => {
        let Some(call_id) = it.get("call_id").and_then(Value::as_str) else {
          return Err(bad(
            &p,
            format!("{p}: a function_call_output needs a string `call_id`"),
          ));
        };
        let output = match it.get("output") {
          Some(Value::String(s)) => s.clone(),
          Some(Value::Array(_)) => content_text(&p, &it["output"])?,
          Some(v) => v.to_string(),
          None => String::new(),
        };
        out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
      }
      Some("reasoning") => {}
      None | Some("message") => {
        let role = it
          .get("role")
          .and_then(Value::as_str)
          .ok_or_else(|| bad(&p, format!("{p}: an item needs a `role` or a known `type`")))?;
        let role = match role {
          "user" | "assistant" | "system" => role,
          "developer" => "system",
          other => {
            return Err(bad(
              &p,
              format!("{p}.role {other:?} is not user, assistant, system or developer"),
            ));
          }
        };
        let content = it.get("content").unwrap_or(&Value::Null);
        if let Some(parts) = content.as_array().filter(|a| a.iter().any(is_image)) {
          // Images (`input_image`) go on as chat parts; the chat side
          // decodes them for a vision model and refuses them otherwise.
          let parts: Vec<Value> = parts
            .iter()
            .map(|q| match q.get("text").and_then(Value::as_str) {
              Some(t) if !is_image(q) => json!({"type": "text", "text": t}),
              _ => q.clone(),
            })
            .collect();
          out.push(json!({"role": role, "content": parts}));
        } else {
          let text = content_text(&p, content)?;
          out.push(json!({"role": role, "content": text}));
        }
      }
      Some(other) => {
        return Err(bad(&p, format!("{p}: unsupported item type {other:?}")));
      }
    }
  }
  if out.is_empty() {
    return Err(bad("input", "`input` must not be empty"));
  }
  Ok(out)
}

/// Responses function tools (`{type, name, parameters, ...}`) as chat tools.
fn chat_tools(tools: &Value) -> Result<Value, ApiError> {
  let Value::Array(list) = tools else {
    return Err(bad("tools", "`tools` must be an array"));
  };
  let mut out = Vec::new();
  for (i, t) in list.iter().enumerate() {
    let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "function" {
      return Err(bad(
        &format!("tools[{i}]"),
        format!("tools[{i}].type {kind:?} is not supported (only function tools)"),
      ));
    }
    let mut f = t.clone();
    if let Some(o) = f.as_object_mut() {
      o.remove("type");
    }
    out.push(json!({"type": "function", "function": f}));
  }
  Ok(Value::Array(out))
}

fn chat_tool_choice(c: &Value) -> Value {
  match c {
    Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
      match o.get("name") {
        Some(n) => json!({"type": "function", "function": {"name": n}}),
        None => c.clone(),
      }
    }
    _ => c.clone(),
  }
}

fn response_format(text: &Value) -> Result<Option<Value>, ApiError> {
  let Some(f) = text.get("format") else {
    return Ok(None);
  };
  let kind = f.get("type").and_then(Value::as_str).unwrap_or("");
  Ok(Some(match kind {
    "json_schema" => json!({"type": "json_schema", "json_schema": {
      "name": f.get("name").cloned().unwrap_or(json!("schema")),
      "schema": f.get("schema").cloned().unwrap_or(Value::Null),
      "strict": f.get("strict").cloned().unwrap_or(Value::Null)}}),
    _ => f.clone(),
  }))
}

/// A checked request ready to run.
struct Plan {
  prepared: Prepared,
  /// The conversation without `instructions` (stored for the next turn).
  conversation: Vec<Value>,
  r: ResponsesRequest,
}

fn plan(st: &AppState, body: &[u8]) -> Result<Plan, ApiError> {
  let r = parse(body)?;
  let mut conversation = match &r.previous_response_id {
    Some(id) => {
      st.responses
        .get(id)
        .ok_or_else(|| {
          ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("previous_response_id {id:?} is not stored on this server (unknown, not stored, or evicted)"),
          )
        })?
        .messages
    }
    None => Vec::new(),
  };
  let input = r
    .input
    .as_ref()
    .ok_or_else(|| bad("input", "`input` is required"))?;
  conversation.extend(input_messages(input)?);
  let mut messages = Vec::new();
  if let Some(i) = &r.instructions {
    messages.push(json!({"role": "system", "content": i}));
  }
  messages.extend(conversation.iter().cloned());
  let tools = r.tools.as_ref().map(chat_tools).transpose()?;
  let format = r.text.as_ref().map(response_format).transpose()?.flatten();
  let chat = api::Request {
    model: r.model.clone(),
    messages: Some(messages),
    max_tokens: r.max_output_tokens,
    temperature: r.temperature,
    top_p: r.top_p,
    top_k: r.top_k,
    seed: r.seed,
    stream: r.stream,
    chat_template_kwargs: r.chat_template_kwargs.clone(),
    tools,
    tool_choice: r.tool_choice.as_ref().map(chat_tool_choice),
    parallel_tool_calls: r.parallel_tool_calls,
    response_format: format,
    ..api::Request::default()
  };
  let prepared =
    api::prepare(Endpoint::Chat, &chat, &st.tok, &st.defaults, &st.guidance).map_err(|mut e| {
      // Name the Responses field rather than its chat twin.
      if e.param.as_deref() == Some("response_format") {
        e.param = Some("text.format".into());
        e.message = e.message.replace("response_format", "text.format");
      }
      if e.param.as_deref() == Some("max_tokens") {
        e.param = Some("max_output_tokens".into());
        e.message = e.message.replace("max_tokens", "max_output_tokens");
      }
      e
    })?;
  Ok(Plan {
    prepared,
    conversation,
    r,
  })
}

/// `POST /v1/responses`.
pub async fn create(State(st): State<Arc<AppState>>, req: Request) -> Response {
  let res = async {
    let body = read_checked_body(&st, req).await?;
    let plan = plan(&st, &body)?;
    let rx = st.submit(&plan.prepared)?;
    if plan.prepared.stream {
      Ok(stream(Arc::clone(&st), plan, rx))
    } else {
      collect(&st, plan, rx).await
    }
  }
  .await;
  match res {
    Ok(r) => r,
    Err(e) => {
      st.metrics
        .requests_failed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
      e.into_response()
    }
  }
}

/// `GET /v1/responses/{id}`: a stored response.
pub async fn retrieve(
  State(st): State<Arc<AppState>>,
  headers: HeaderMap,
  Path(id): Path<String>,
) -> Response {
  if let Err(e) = st.check_auth(&headers) {
    return e.into_response();
  }
  match st.responses.get(&id) {
    Some(s) => axum::Json(s.response).into_response(),
    None => ApiError::new(
      StatusCode::NOT_FOUND,
      "invalid_request_error",
      format!("no stored response {id:?}"),
    )
    .into_response(),
  }
}

/// What one finished generation produced.
struct Outcome {
  reply: Reply,
  finish: Option<FinishReason>,
  completion: usize,
  cached: usize,
  /// Prompt tokens as the engine counted them (image placeholders
  /// expanded).
  prompt: usize,
}

/// Ids of one response's items.
struct Ids {
  resp: String,
  reasoning: String,
  message: String,
}

impl Ids {
  fn new(st: &AppState) -> Ids {
    let base = st.id("x");
    let tail = base.trim_start_matches("x-").to_string();
    Ids {
      resp: format!("resp_{tail}"),
      reasoning: format!("rs_{tail}"),
      message: format!("msg_{tail}"),
    }
  }
}

fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
  json!({"type": "reasoning", "id": id, "status": status, "summary": [],
         "content": [{"type": "reasoning_text", "text": text}]})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
  json!({"type": "message", "id": id, "status": status, "role": "assistant",
         "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn call_item(c: &crate::tools::ToolCall) -> Value {
  json!({"type": "function_call", "id": format!("fc_{}", c.id), "call_id": c.id,
         "name": c.name, "arguments": c.arguments, "status": "completed"})
}

/// The response object (`output` given).
fn response_object(
  st: &AppState,
  plan: &Plan,
  ids: &Ids,
  created: u64,
  status: &str,
  output: Vec<Value>,
  o: Option<&Outcome>,
) -> Value {
  let r = &plan.r;
  let usage = o.map(|o| {
    json!({"input_tokens": o.prompt,
           "input_tokens_details": {"cached_tokens": o.cached},
           "output_tokens": o.completion,
           "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": o.prompt + o.completion})
  });
  let incomplete = o
    .filter(|o| o.finish == Some(FinishReason::Length))
    .map(|_| json!({"reason": "max_output_tokens"}));
  json!({
    "id": ids.resp,
    "object": "response",
    "created_at": created,
    "status": status,
    "model": st.model_id,
    "output": output,
    "instructions": r.instructions,
    "previous_response_id": r.previous_response_id,
    "tools": r.tools.clone().unwrap_or(json!([])),
    "tool_choice": r.tool_choice.clone().unwrap_or(json!("auto")),
    "parallel_tool_calls": r.parallel_tool_calls.unwrap_or(true),
    "temperature": r.temperature.unwrap_or(0.0),
    "top_p": r.top_p.unwrap_or(1.0),
    "max_output_tokens": r.max_output_tokens,
    "text": r.text.clone().unwrap_or(json!({"format": {"type": "text"}})),
    "store": r.store.unwrap_or(true),
    "metadata": r.metadata.clone().unwrap_or(json!({})),
    "truncation": "disabled",
    "error": null,
    "incomplete_details": incomplete,
    "usage": usage,
  })
}

fn output_items(ids: &Ids, o: &Outcome) -> Vec<Value> {
  let mut out = Vec::new();
  if let Some(r) = &o.reply.reasoning {
    out.push(reasoning_item(&ids.reasoning, r, "completed"));
  }
  if !o.reply.content.is_empty() || o.reply.calls.is_empty() {
    out.push(message_item(&ids.message, &o.reply.content, "completed"));
  }
  out.extend(o.reply.calls.iter().map(call_item));
  out
}

/// Store the turn for `previous_response_id`.
fn remember(st: &AppState, plan: &Plan, o: &Outcome, response: &Value) {
  if plan.r.store == Some(false) {
    return;
  }
  let mut messages = plan.conversation.clone();
  let mut m = json!({"role": "assistant", "content": o.reply.content});
  if !o.reply.calls.is_empty() {
    m["tool_calls"] = Value::Array(o.reply.calls.iter().map(|c| c.to_json()).collect());
  }
  messages.push(m);
  st.responses.put(
    response["id"].as_str().unwrap_or_default().to_string(),
    Stored {
      messages,
      response: response.clone(),
    },
  );
}

fn status(o: &Outcome) -> &'static str {
  if o.finish == Some(FinishReason::Length) {
    "incomplete"
  } else {
    "completed"
  }
}

async fn collect(
  st: &Arc<AppState>,
  plan: Plan,
  mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
  let mut text = String::new();
  let (finish, completion, cached, prompt) = loop {
    match rx.recv().await {
      Some(Event::Token { text: t, .. }) => text.push_str(&t),
      Some(Event::Done {
        finish,
        completion_tokens,
        cached_tokens,
        prompt_tokens,
        ..
      }) => break (finish, completion_tokens, cached_tokens, prompt_tokens),
      Some(Event::Error { message, .. }) => return Err(engine_error(message)),
      None => return Err(engine_error("the engine stopped".into())),
    }
  };
  let o = Outcome {
    reply: crate::reply::finish(&plan.prepared.reply, &text),
    finish: Some(finish),
    completion,
    cached,
    prompt,
  };
  let ids = Ids::new(st);
  let out = output_items(&ids, &o);
  let resp = response_object(st, &plan, &ids, now(), status(&o), out, Some(&o));
  remember(st, &plan, &o, &resp);
  st.metrics
    .requests_chat
    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
  Ok(axum::Json(resp).into_response())
}

/// Server-sent events of one response, numbered.
struct Events {
  tx: tokio::sync::mpsc::Sender<SseEvent>,
  seq: u64,
}

impl Events {
  async fn send(&mut self, kind: &str, mut v: Value) -> bool {
    v["type"] = json!(kind);
    v["sequence_number"] = json!(self.seq);
    self.seq += 1;
    self
      .tx
      .send(SseEvent::default().event(kind).data(v.to_string()))
      .await
      .is_ok()
  }
}

/// Which output item is open while streaming.
#[derive(PartialEq)]
enum Open {
  None,
  Reasoning,
  Message,
}

fn stream(st: Arc<AppState>, plan: Plan, mut rx: UnboundedReceiver<Event>) -> Response {
  let (tx, out) = tokio::sync::mpsc::channel::<SseEvent>(64);
  tokio::spawn(async move {
    let mut ev = Events { tx, seq: 0 };
    let ids = Ids::new(&st);
    let created = now();
    let start = response_object(&st, &plan, &ids, created, "in_progress", Vec::new(), None);
    if !ev
      .send("response.created", json!({"response": start.clone()}))
      .await
      || !ev
        .send("response.in_progress", json!({"response": start}))
        .await
    {
      return;
    }
    let mut rs = ReplyStream::new(plan.prepared.reply);
    let mut items: Vec<Value> = Vec::new();
    let mut open = Open::None;
    let mut reasoning = String::new();
    let mut content = String::new();
    // Send deltas, opening and closing items as the kind changes.
    macro_rules! send_or_return {
      ($kind:expr, $v:expr) => {
        if !ev.send($kind, $v).await {
          return;
        }
      };
    }
    macro_rules! close {
      () => {
        match open {
          Open::Reasoning => {
            let idx = items.len();
            send_or_return!("response.reasoning_text.done", json!({"item_id": ids.reasoning,
              "output_index": idx, "content_index": 0, "text": reasoning}));
            let item = reasoning_item(&ids.reasoning, &reasoning, "completed");
            send_or_return!("response.output_item.done", json!({"output_index": idx, "item": item}));
            items.push(item);
          }
          Open::Message => {
            let idx = items.len();
            send_or_return!("response.output_text.done", json!({"item_id": ids.message,
              "output_index": idx, "content_index": 0, "text": content, "logprobs": []}));
            send_or_return!("response.content_part.done", json!({"item_id": ids.message,
              "output_index": idx, "content_index": 0,
              "part": {"type": "output_text", "text": content, "annotations": []}}));
            let item = message_item(&ids.message, &content, "completed");
            send_or_return!("response.output_item.done", json!({"output_index": idx, "item": item}));
            items.push(item);
          }
          Open::None => {}
        }
        #[allow(unused_assignments)]
        {
          open = Open::None;
        }
      };
    }
    macro_rules! deltas {
      ($d:expr) => {
        let d = $d;
        if !d.reasoning.is_empty() {
          if open != Open::Reasoning {
            close!();
            let idx = items.len();
            send_or_return!("response.output_item.added", json!({"output_index": idx,
              "item": reasoning_item(&ids.reasoning, "", "in_progress")}));
            open = Open::Reasoning;
          }
          reasoning.push_str(&d.reasoning);
          send_or_return!("response.reasoning_text.delta", json!({"item_id": ids.reasoning,
            "output_index": items.len(), "content_index": 0, "delta": d.reasoning}));
        }
        if !d.content.is_empty() {
          if open != Open::Message {
            close!();
            let idx = items.len();
            send_or_return!("response.output_item.added", json!({"output_index": idx,
              "item": {"type": "message", "id": ids.message, "status": "in_progress",
                       "role": "assistant", "content": []}}));
            send_or_return!("response.content_part.added", json!({"item_id": ids.message,
              "output_index": idx, "content_index": 0,
              "part": {"type": "output_text", "text": "", "annotations": []}}));
            open = Open::Message;
          }
          content.push_str(&d.content);
          send_or_return!("response.output_text.delta", json!({"item_id": ids.message,
            "output_index": items.len(), "content_index": 0, "delta": d.content, "logprobs": []}));
        }
      };
    }
    let done = loop {
      match rx.recv().await {
        Some(Event::Token { text, .. }) => {
          deltas!(rs.push(&text));
        }
        Some(Event::Done {
          finish,
          completion_tokens,
          cached_tokens,
          prompt_tokens,
          ..
        }) => break Ok((finish, completion_tokens, cached_tokens, prompt_tokens)),
        Some(Event::Error { message, .. }) => break Err(message),
        None => break Err("the engine stopped".to_string()),
      }
    };
    let (finish, completion, cached, prompt) = match done {
      Ok(x) => x,
      Err(message) => {
        st.metrics
          .requests_failed
          .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let e = engine_error(message);
        let mut failed = response_object(&st, &plan, &ids, created, "failed", items.clone(), None);
        failed["error"] = json!({"code": "server_error", "message": e.message});
        let _ = ev
          .send("response.failed", json!({"response": failed}))
          .await;
        return;
      }
    };
    let (d, reply) = rs.finish();
    deltas!(d);
    // A reply with neither text nor calls still gets its (empty) message.
    if open == Open::None && items.is_empty() && reply.calls.is_empty() {
      let idx = items.len();
      send_or_return!(
        "response.output_item.added",
        json!({"output_index": idx,
        "item": {"type": "message", "id": ids.message, "status": "in_progress",
                 "role": "assistant", "content": []}})
      );
      open = Open::Message;
    }
    close!();
    for c in &reply.calls {
      let idx = items.len();
      let item = call_item(c);
      let mut added = item.clone();
      added["arguments"] = json!("");
      added["status"] = json!("in_progress");
      send_or_return!(
        "response.output_item.added",
        json!({"output_index": idx, "item": added})
      );
      send_or_return!(
        "response.function_call_arguments.delta",
        json!({"item_id": item["id"],
        "output_index": idx, "delta": c.arguments})
      );
      send_or_return!(
        "response.function_call_arguments.done",
        json!({"item_id": item["id"],
        "output_index": idx, "arguments": c.arguments})
      );
      send_or_return!(
        "response.output_item.done",
        json!({"output_index": idx, "item": item})
      );
      items.push(item);
    }
    let o = Outcome {
      reply,
      finish: Some(finish),
      completion,
      cached,
      prompt,
    };
    let resp = response_object(&st, &plan, &ids, created, status(&o), items, Some(&o));
    remember(&st, &plan, &o, &resp);
    st.metrics
      .requests_chat
      .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let kind = if status(&o) == "completed" {
      "response.completed"
    } else {
      "response.incomplete"
    };
    let _ = ev.send(kind, json!({"response": resp})).await;
  });
  let body = futures_util::stream::unfold(out, |mut r| async move {
    r.recv().await.map(|e| (Ok::<_, Infallible>(e), r))
  });
  Sse::new(body).into_response()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn store_is_bounded_lru() {
    let s = Store::new(2);
    let e = |n: &str| Stored {
      messages: vec![json!(n)],
      response: json!({"id": n}),
    };
    s.put("a".into(), e("a"));
    s.put("b".into(), e("b"));
    assert!(s.get("a").is_some()); // a is now the most recent
    s.put("c".into(), e("c"));
    assert_eq!(s.len(), 2);
    assert!(s.get("b").is_none());
    assert!(s.get("a").is_some() && s.get("c").is_some());
    let none = Store::new(0);
    none.put("a".into(), e("a"));
    assert!(none.is_empty());
  }

  #[test]
  fn input_items_become_messages() {
    let m = input_messages(&json!([
      {"role": "developer", "content": "be brief"},
      {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
      {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
      {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
      {"type": "function_call_output", "call_id": "c1", "output": "42"}
    ]))
    .unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(m[0]["role"], "system");
    assert_eq!(m[1]["content"], "hi");
    assert_eq!(m[2]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(m[3]["tool_call_id"], "c1");
    assert!(input_messages(&json!([{"type": "web_search_call"}])).is_err());
    assert!(input_messages(&json!(5)).is_err());
    assert!(input_messages(&json!([])).is_err());
  }
}
