//! Tool calls, reasoning and structured output over HTTP on tiny fixtures
//! whose chat template is replaced (`--chat-template`) by each family's
//! real template (tests/data/templates, from llama.cpp's
//! `models/templates`, which copies them from the models' Hugging Face
//! `tokenizer_config.json`). The models are random, so calls are forced:
//! `tool_choice: required` (the server's own call grammar) and, for
//! parsing real model output strings, `response_format` `grammar`.

mod common;

use common::{config, fixture, long_context_copy, post, start, stream, template};
use mlxrs_lm::{ChatOptions, Tokenizer};
use mlxrs_server::Server;
use serde_json::{Value, json};

fn finish((s, dir): (Server, std::path::PathBuf)) {
  s.shutdown().unwrap();
  let _ = std::fs::remove_dir_all(dir);
}

fn server(fixture_name: &str, tmpl: &str) -> (Server, std::path::PathBuf) {
  let dir = long_context_copy(fixture_name);
  let mut c = config(fixture_name);
  c.model = dir.to_string_lossy().into_owned();
  c.chat_template = Some(template(tmpl));
  c.max_tokens = 160;
  (start(c), dir)
}

fn tools() -> Value {
  json!([{
    "type": "function",
    "function": {
      "name": "get_weather",
      "description": "Weather",
      "parameters": {
        "type": "object",
        "properties": {
          "city": {"type": "string", "maxLength": 10},
          "unit": {"type": "string", "enum": ["c", "f"]}
        },
        "required": ["city", "unit"],
        "additionalProperties": false
      }
    }
  }])
}

fn user() -> Value {
  json!([{"role": "user", "content": "What is the weather in Paris?"}])
}

/// The arguments obey the `get_weather` schema.
fn check_args(args: &str) {
  let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{args}: {e}"));
  let o = v.as_object().unwrap();
  assert!(o["city"].as_str().unwrap().chars().count() <= 10, "{args}");
  assert!(["c", "f"].contains(&o["unit"].as_str().unwrap()), "{args}");
  assert_eq!(o.len(), 2, "{args}");
}

/// `tool_choice: required`: the reply is a parsed call (plain and
/// streamed), and a tool result continues the conversation.
fn forced_call_round_trip(s: &Server) {
  let body = json!({"messages": user(), "tools": tools(), "tool_choice": "required",
                    "parallel_tool_calls": false});
  let (st, r) = post(s, "/v1/chat/completions", &body);
  assert_eq!(st, 200, "{r}");
  let ch = &r["choices"][0];
  assert_eq!(ch["finish_reason"], "tool_calls", "{r}");
  let calls = ch["message"]["tool_calls"].as_array().unwrap();
  assert_eq!(calls.len(), 1, "{r}");
  assert_eq!(calls[0]["type"], "function");
  assert_eq!(calls[0]["function"]["name"], "get_weather");
  let args = calls[0]["function"]["arguments"].as_str().unwrap();
  check_args(args);

  // Streamed: the same call arrives as OpenAI tool_calls deltas, the id,
  // type and name first, then the arguments piece by piece, which
  // concatenate to the non-streamed call's arguments.
  let mut sb = body.clone();
  sb["stream"] = json!(true);
  let chunks = stream(s, "/v1/chat/completions", &sb);
  let deltas: Vec<&Value> = chunks
    .iter()
    .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
    .collect();
  assert!(deltas.len() > 2, "{chunks:?}");
  assert!(deltas.iter().all(|d| d[0]["index"] == 0), "{chunks:?}");
  assert_eq!(deltas[0][0]["function"]["name"], "get_weather");
  assert_eq!(deltas[0][0]["type"], "function");
  assert!(deltas[0][0]["id"].as_str().is_some_and(|i| !i.is_empty()));
  assert!(deltas[1..].iter().all(|d| d[0].get("id").is_none()));
  let streamed: String = deltas
    .iter()
    .map(|d| d[0]["function"]["arguments"].as_str().unwrap())
    .collect();
  assert_eq!(streamed, args);
  assert_eq!(
    chunks.last().unwrap()["choices"][0]["finish_reason"],
    "tool_calls"
  );

  // The call and its result go back in; the template renders them.
  let mut msgs = user().as_array().unwrap().clone();
  msgs.push(json!({"role": "assistant", "content": null, "tool_calls": [calls[0].clone()]}));
  msgs.push(
    json!({"role": "tool", "tool_call_id": calls[0]["id"], "name": "get_weather",
                   "content": "{\"temperature\": 21}"}),
  );
  let (st, r) = post(
    s,
    "/v1/chat/completions",
    &json!({"messages": msgs, "tools": tools(), "max_tokens": 4}),
  );
  assert_eq!(st, 200, "{r}");
  assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

/// A real model's reply text, forced through a grammar, comes back split.
fn forced_text(s: &Server, tok: &Tokenizer, text: &str, extra: Value) -> (Value, Vec<Value>) {
  let g = format!("start: {}\n", mlxrs_server::tools::lark_literal(tok, text));
  let mut body = json!({"messages": user(), "tools": tools(), "max_tokens": 600,
                        "response_format": {"type": "grammar", "grammar": g}});
  for (k, v) in extra.as_object().unwrap() {
    body[k] = v.clone();
  }
  let (st, r) = post(s, "/v1/chat/completions", &body);
  assert_eq!(st, 200, "{r}");
  body["stream"] = json!(true);
  (r, stream(s, "/v1/chat/completions", &body))
}

/// Concatenated `delta.<field>` of a stream.
fn joined(chunks: &[Value], field: &str) -> String {
  chunks
    .iter()
    .filter_map(|c| c["choices"][0]["delta"][field].as_str())
    .collect()
}

fn tokenizer(name: &str) -> Tokenizer {
  Tokenizer::from_dir(fixture(name)).unwrap()
}

/// The real template renders the tools and a tool round trip.
fn renders(name: &str, tmpl: &str, markers: &[&str]) {
  let tok = tokenizer(name);
  let msgs = json!([
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": null, "tool_calls": [{"id": "abcDEF123", "type": "function",
      "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
    {"role": "tool", "tool_call_id": "abcDEF123", "content": "{\"temperature\": 21}"}
  ]);
  let opts = ChatOptions {
    add_generation_prompt: true,
    tools: Some(tools().as_array().unwrap().clone()),
    chat_template: Some(template(tmpl)),
    ..ChatOptions::default()
  };
  let mut msgs = msgs.as_array().unwrap().clone();
  msgs
    .iter_mut()
    .for_each(mlxrs_server::tools::normalize_message);
  let text = tok.apply_chat_template_values(&msgs, &opts).unwrap();
  for m in markers
    .iter()
    .chain(&["get_weather", "Paris", "temperature"])
  {
    assert!(text.contains(m), "{tmpl}: {m:?} not in\n{text}");
  }
}

#[test]
fn qwen3_hermes_tools_and_thinking() {
  renders(
    "qwen3",
    "Qwen-Qwen3-0.6B.jinja",
    &["<tools>", "<tool_call>", "<tool_response>"],
  );
  let s = server("qwen3", "Qwen-Qwen3-0.6B.jinja");
  forced_call_round_trip(&s.0);
  let tok = tokenizer("qwen3");
  // Qwen3 output with thinking, text, and two parallel calls.
  let out = "<think>\nThe user asks for the weather in Paris.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\", \"unit\": \"c\"}}\n</tool_call>";
  let (r, chunks) = forced_text(&s.0, &tok, out, json!({}));
  let m = &r["choices"][0]["message"];
  assert_eq!(
    m["reasoning_content"],
    "The user asks for the weather in Paris."
  );
  assert_eq!(m["content"], "Let me check.");
  let calls = m["tool_calls"].as_array().unwrap();
  assert_eq!(calls.len(), 2);
  assert_eq!(
    calls[1]["function"]["arguments"],
    "{\"city\":\"Lyon\",\"unit\":\"c\"}"
  );
  assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
  assert_eq!(
    joined(&chunks, "reasoning_content"),
    "The user asks for the weather in Paris."
  );
  assert!(joined(&chunks, "content").starts_with("Let me check."));
  // Streamed: two calls (indices 0 and 1), each announced once, their
  // argument pieces concatenating to the non-streamed arguments.
  let items: Vec<&Value> = chunks
    .iter()
    .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
    .map(|t| &t[0])
    .collect();
  for (k, call) in calls.iter().enumerate() {
    let mine: Vec<&&Value> = items.iter().filter(|i| i["index"] == k).collect();
    assert_eq!(mine.iter().filter(|i| i.get("id").is_some()).count(), 1);
    assert_eq!(mine[0]["function"]["name"], "get_weather");
    let args: String = mine
      .iter()
      .map(|i| i["function"]["arguments"].as_str().unwrap())
      .collect();
    assert_eq!(args, call["function"]["arguments"].as_str().unwrap());
    assert!(mine.len() > 2, "{mine:?}");
  }
  assert!(items.iter().all(|i| i["index"] == 0 || i["index"] == 1));
  // parallel_tool_calls false keeps the first call only.
  let (r, _) = forced_text(&s.0, &tok, out, json!({"parallel_tool_calls": false}));
  assert_eq!(
    r["choices"][0]["message"]["tool_calls"]
      .as_array()
      .unwrap()
      .len(),
    1
  );
  // enable_thinking false: no split.
  let (r, _) = forced_text(
    &s.0,
    &tok,
    "<think>x</think>y",
    json!({"chat_template_kwargs": {"enable_thinking": false}}),
  );
  let m = &r["choices"][0]["message"];
  assert_eq!(m["content"], "<think>x</think>y");
  assert!(m.get("reasoning_content").is_none());
  // A call that does not parse is text, not an error.
  let bad = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {city}}\n</tool_call>";
  let (r, chunks) = forced_text(&s.0, &tok, bad, json!({}));
  assert_eq!(r["choices"][0]["message"]["content"], bad);
  assert_eq!(r["choices"][0]["finish_reason"], "stop");
  assert_eq!(joined(&chunks, "content"), bad);
  // strict tools under auto: the reply is free until a call starts (the
  // row's constraint then holds the call to the schema; unit-tested in
  // src/structured.rs), so a plain reply comes back as usual.
  let mut strict = tools();
  strict[0]["function"]["strict"] = json!(true);
  let (st, r) = post(
    &s.0,
    "/v1/chat/completions",
    &json!({"messages": user(), "tools": strict, "max_tokens": 12, "temperature": 1.0, "seed": 1}),
  );
  assert_eq!(st, 200, "{r}");
  assert!(r["choices"][0]["message"].is_object());
  // tool_choice none: tools are neither rendered nor parsed.
  let ok = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
  let (r, _) = forced_text(&s.0, &tok, ok, json!({"tool_choice": "none"}));
  assert_eq!(r["choices"][0]["message"]["content"], ok);
  finish(s);
}

#[test]
fn llama3_json_tools() {
  renders(
    "llama",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    &["\"parameters\"", "<|start_header_id|>ipython"],
  );
  let s = server("llama", "meta-llama-Llama-3.2-3B-Instruct.jinja");
  forced_call_round_trip(&s.0);

  let tok = tokenizer("llama");
  let out = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"c\"}}";
  let (r, chunks) = forced_text(&s.0, &tok, out, json!({}));
  let m = &r["choices"][0]["message"];
  assert_eq!(m["content"], Value::Null);
  assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
  assert_eq!(joined(&chunks, "content"), "");
  // Plain text stays text.
  let (r, chunks) = forced_text(&s.0, &tok, "It is sunny.", json!({}));
  assert_eq!(r["choices"][0]["message"]["content"], "It is sunny.");
  assert_eq!(joined(&chunks, "content"), "It is sunny.");
  finish(s);
}

/// Hermes 3 on a Llama base: the template's `<tool_call>` wins over
/// `model_type` llama.
#[test]
fn hermes3_template_on_llama_base() {
  renders(
    "llama",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
    &["<tools>", "<tool_call>", "<tool_response>"],
  );
  let s = server("llama", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja");
  forced_call_round_trip(&s.0);
  let tok = tokenizer("llama");
  let out = "<tool_call>\n{\"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}, \"name\": \"get_weather\"}\n</tool_call>";
  let (r, _) = forced_text(&s.0, &tok, out, json!({}));
  assert_eq!(
    r["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
    "get_weather"
  );
  finish(s);
}

#[test]
fn mistral_tool_calls_marker() {
  renders(
    "mistral",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    &["[AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]"],
  );
  let s = server("mistral", "mistralai-Mistral-Nemo-Instruct-2407.jinja");
  forced_call_round_trip(&s.0);
  let tok = tokenizer("mistral");
  let out = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"f\"}}]";
  let (r, _) = forced_text(&s.0, &tok, out, json!({}));
  let m = &r["choices"][0]["message"];
  assert_eq!(
    m["tool_calls"][0]["function"]["arguments"],
    "{\"city\":\"Paris\",\"unit\":\"f\"}"
  );
  // Mistral's template insists on 9-character ids.
  assert_eq!(m["tool_calls"][0]["id"].as_str().unwrap().len(), 9);
  finish(s);
}

#[test]
fn gpt_oss_harmony_channels() {
  renders(
    "gpt_oss",
    "openai-gpt-oss-120b.jinja",
    &[
      "namespace functions",
      "to=functions.get_weather",
      "<|channel|>commentary",
    ],
  );
  let s = server("gpt_oss", "openai-gpt-oss-120b.jinja");
  forced_call_round_trip(&s.0);
  let tok = tokenizer("gpt_oss");
  let out = "<|channel|>analysis<|message|>Need to use get_weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\",\"unit\":\"c\"}";
  let (r, chunks) = forced_text(&s.0, &tok, out, json!({}));
  let m = &r["choices"][0]["message"];
  assert_eq!(m["reasoning_content"], "Need to use get_weather.");
  assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
  assert_eq!(
    joined(&chunks, "reasoning_content"),
    "Need to use get_weather."
  );
  let out = "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!";
  let (r, chunks) = forced_text(&s.0, &tok, out, json!({}));
  let m = &r["choices"][0]["message"];
  assert_eq!(m["reasoning_content"], "Simple.");
  assert_eq!(m["content"], "Hello there!");
  assert_eq!(joined(&chunks, "content"), "Hello there!");
  finish(s);
}

/// A nested schema (objects, enums, arrays) holds for sampled replies.
#[test]
fn json_schema_sampled_replies_validate() {
  let mut c = config("qwen3");
  c.max_tokens = 400;
  let s = start(c);
  let schema = json!({
    "type": "object",
    "properties": {
      "name": {"type": "string", "maxLength": 8},
      "kind": {"enum": ["cat", "dog", "bird"]},
      "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
      "owner": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["age"], "additionalProperties": false}
    },
    "required": ["name", "kind", "tags", "owner"],
    "additionalProperties": false
  });
  let body = json!({"messages": user(), "temperature": 1.0, "n": 4, "seed": 7,
    "response_format": {"type": "json_schema", "json_schema": {"name": "pet", "schema": schema, "strict": true}}});
  let (st, r) = post(&s, "/v1/chat/completions", &body);
  assert_eq!(st, 200, "{r}");
  for ch in r["choices"].as_array().unwrap() {
    let text = ch["message"]["content"].as_str().unwrap();
    assert_eq!(ch["finish_reason"], "stop", "{text}");
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(["cat", "dog", "bird"].contains(&v["kind"].as_str().unwrap()));
    assert!(v["name"].as_str().unwrap().chars().count() <= 8);
    assert!(v["tags"].as_array().unwrap().len() <= 3);
    let age = v["owner"]["age"].as_i64().unwrap();
    assert!((0..=120).contains(&age), "{text}");
  }
  // json_object: some JSON object.
  let (st, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "x", "max_tokens": 60,
            "response_format": {"type": "json_object"}}),
  );
  assert_eq!(st, 200, "{r}");
  let text = r["choices"][0]["text"].as_str().unwrap();
  if r["choices"][0]["finish_reason"] == "stop" {
    assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
  } else {
    assert!(text.starts_with('{'), "{text}");
  }
  s.shutdown().unwrap();
}

#[test]
fn bad_tools_and_schemas_are_400() {
  let s = start(config("qwen3"));
  let cases = [
    (
      json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}),
      "response_format",
    ),
    (
      json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
      "response_format",
    ),
    (
      json!({"response_format": {"type": "yaml"}}),
      "response_format",
    ),
    (
      json!({"response_format": {"type": "grammar", "grammar": "start: (("}}),
      "response_format",
    ),
    (
      json!({"tools": tools(), "tool_choice": "sometimes"}),
      "tool_choice",
    ),
    (
      json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
      "tool_choice",
    ),
    (json!({"tools": [{"type": "function"}]}), "tools[0]"),
    (json!({"tools": [{"type": "retrieval"}]}), "tools[0]"),
    (json!({"tools": "get_weather"}), "tools"),
    (
      json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
      "tools[0]",
    ),
    (json!({"tool_choice": "required"}), "tool_choice"),
  ];
  // A model whose tool format is unknown (gpt2: no template markers, no
  // known model_type) takes tools under auto (text back) but cannot be
  // forced.
  let mut c = config("gpt2");
  c.chat_template = Some("{% for m in messages %}{{ m.content }}{% endfor %}".into());
  let g = start(c);
  // A prompt past GPT-2's `n_positions` (128) is a 400, not an engine error.
  let long =
    json!({"messages": [{"role": "user", "content": "word ".repeat(200)}], "max_tokens": 2});
  let (st, r) = post(&g, "/v1/chat/completions", &long);
  assert_eq!(
    (st, r["error"]["param"].as_str()),
    (400, Some("prompt")),
    "{r}"
  );
  let body = json!({"messages": user(), "tools": tools(), "max_tokens": 3});
  let (st, r) = post(&g, "/v1/chat/completions", &body);
  assert_eq!(st, 200, "{r}");
  let mut forced = body.clone();
  forced["tool_choice"] = json!("required");
  let (st, r) = post(&g, "/v1/chat/completions", &forced);
  assert_eq!(
    (st, r["error"]["param"].as_str()),
    (400, Some("tool_choice")),
    "{r}"
  );
  g.shutdown().unwrap();
  for (extra, param) in cases {
    let mut body = json!({"messages": user(), "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
      body[k] = v.clone();
    }
    let (st, r) = post(&s, "/v1/chat/completions", &body);
    assert_eq!(st, 400, "{body} -> {r}");
    assert_eq!(r["error"]["param"], param, "{r}");
    assert!(!r["error"]["message"].as_str().unwrap().is_empty());
  }
  s.shutdown().unwrap();
}
