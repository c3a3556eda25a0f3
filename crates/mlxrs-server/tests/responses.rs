//! `POST /v1/responses` over HTTP on the tiny Qwen3 fixture: text and
//! message-list input, `instructions`, streaming events (their deltas add
//! up to the final text), forced function calls with a tool result back,
//! `previous_response_id` and bad input.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::{config, long_context_copy, post, start, template};
use mlxrs_server::Server;
use serde_json::{Value, json};

/// POST a streaming request; `(event name, data)` pairs.
fn events(s: &Server, body: &Value) -> Vec<(String, Value)> {
  let url = format!("http://{}/v1/responses", s.addr());
  let r = ureq::AgentBuilder::new()
    .timeout(Duration::from_secs(120))
    .build()
    .post(&url)
    .send_json(body.clone())
    .unwrap();
  assert!(r.content_type().starts_with("text/event-stream"));
  let mut out = Vec::new();
  let mut name = String::new();
  for line in BufReader::new(r.into_reader()).lines() {
    let line = line.unwrap();
    if let Some(n) = line.strip_prefix("event: ") {
      name = n.to_string();
    } else if let Some(d) = line.strip_prefix("data: ") {
      let v: Value = serde_json::from_str(d).unwrap();
      assert_eq!(v["type"], name.as_str());
      out.push((name.clone(), v));
    }
  }
  out
}

fn output_text(r: &Value) -> String {
  r["output"]
    .as_array()
    .unwrap()
    .iter()
    .filter(|i| i["type"] == "message")
    .flat_map(|i| i["content"].as_array().unwrap().iter())
    .filter_map(|c| c["text"].as_str())
    .collect()
}

#[test]
fn text_streaming_and_previous_response() {
  let s = start(config("qwen3"));
  let (st, r1) = post(
    &s,
    "/v1/responses",
    &json!({"input": "Hello there", "max_output_tokens": 8}),
  );
  assert_eq!(st, 200, "{r1}");
  assert_eq!(r1["object"], "response");
  assert!(r1["id"].as_str().unwrap().starts_with("resp_"));
  assert!(["completed", "incomplete"].contains(&r1["status"].as_str().unwrap()));
  assert_eq!(r1["output"][0]["type"], "message");
  let u = &r1["usage"];
  assert_eq!(
    u["total_tokens"].as_u64().unwrap(),
    u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap()
  );
  // The same request as chat messages gives the same text (greedy).
  let (_, c) = post(
    &s,
    "/v1/chat/completions",
    &json!({"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8}),
  );
  assert_eq!(output_text(&r1), c["choices"][0]["message"]["content"]);
  // Stored: GET returns it.
  let (st, g) = common::get(&s, &format!("/v1/responses/{}", r1["id"].as_str().unwrap()));
  assert_eq!(st, 200);
  assert_eq!(serde_json::from_str::<Value>(&g).unwrap()["id"], r1["id"]);

  // previous_response_id continues the conversation: the prompt holds
  // the first turn, its reply and the new input (the chat twin agrees).
  let (st, r2) = post(
    &s,
    "/v1/responses",
    &json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "More"}]}],
            "previous_response_id": r1["id"], "instructions": "Be brief.", "max_output_tokens": 6}),
  );
  assert_eq!(st, 200, "{r2}");
  let (_, c2) = post(
    &s,
    "/v1/chat/completions",
    &json!({"messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hello there"},
      {"role": "assistant", "content": output_text(&r1)},
      {"role": "user", "content": "More"}], "max_tokens": 6}),
  );
  assert_eq!(
    r2["usage"]["input_tokens"], c2["usage"]["prompt_tokens"],
    "{r2}"
  );
  assert_eq!(output_text(&r2), c2["choices"][0]["message"]["content"]);

  // Streaming: created first, completed last, deltas add up.
  let ev = events(
    &s,
    &json!({"input": "Hello there", "max_output_tokens": 8, "stream": true}),
  );
  assert_eq!(ev[0].0, "response.created");
  let (last, done) = ev.last().unwrap();
  assert!(
    last == "response.completed" || last == "response.incomplete",
    "{last}"
  );
  let deltas: String = ev
    .iter()
    .filter(|(n, _)| n == "response.output_text.delta")
    .map(|(_, v)| v["delta"].as_str().unwrap().to_string())
    .collect();
  assert_eq!(deltas, output_text(&done["response"]));
  assert_eq!(deltas, output_text(&r1));
  let seq: Vec<u64> = ev
    .iter()
    .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
    .collect();
  assert!(seq.windows(2).all(|w| w[1] == w[0] + 1));
  assert!(ev.iter().any(|(n, _)| n == "response.output_item.done"));

  // Unknown previous id: 404; store=false is not kept.
  let (st, e) = post(
    &s,
    "/v1/responses",
    &json!({"input": "x", "previous_response_id": "resp_nope"}),
  );
  assert_eq!(st, 404, "{e}");
  let (_, r3) = post(
    &s,
    "/v1/responses",
    &json!({"input": "x", "max_output_tokens": 2, "store": false}),
  );
  let (st, _) = common::get(&s, &format!("/v1/responses/{}", r3["id"].as_str().unwrap()));
  assert_eq!(st, 404);
  s.shutdown().unwrap();
}

/// A reply with reasoning (forced through a `grammar` text format, an
/// extension) comes back as a `reasoning` item then a `message` item, whole
/// and streamed, with matching output indexes.
#[test]
fn reasoning_item_then_message() {
  let s = start(config("qwen3"));
  let g = "start: \"<think>\\nLet me think.\\n</think>\\n\\nHello!\"";
  let body = json!({"input": "Hi", "max_output_tokens": 200,
                    "text": {"format": {"type": "grammar", "grammar": g}}});
  let (st, r) = post(&s, "/v1/responses", &body);
  assert_eq!(st, 200, "{r}");
  assert_eq!(r["status"], "completed", "{r}");
  assert_eq!(r["output"][0]["type"], "reasoning");
  assert_eq!(r["output"][0]["content"][0]["text"], "Let me think.");
  assert_eq!(r["output"][1]["type"], "message");
  assert_eq!(output_text(&r), "Hello!");
  let mut sb = body.clone();
  sb["stream"] = json!(true);
  let ev = events(&s, &sb);
  let of = |kind: &str| -> Vec<&Value> {
    ev.iter()
      .filter(|(n, _)| n == kind)
      .map(|(_, v)| v)
      .collect()
  };
  let reasoning: String = of("response.reasoning_text.delta")
    .iter()
    .map(|v| v["delta"].as_str().unwrap())
    .collect();
  assert_eq!(reasoning, "Let me think.");
  assert!(
    of("response.reasoning_text.delta")
      .iter()
      .all(|v| v["output_index"] == 0)
  );
  assert!(
    of("response.output_text.delta")
      .iter()
      .all(|v| v["output_index"] == 1)
  );
  let added: Vec<&str> = of("response.output_item.added")
    .iter()
    .map(|v| v["item"]["type"].as_str().unwrap())
    .collect();
  assert_eq!(added, ["reasoning", "message"]);
  let done = &ev.last().unwrap().1["response"];
  assert_eq!(
    done["output"],
    r["output"]
      .clone()
      .as_array()
      .map(|a| {
        let mut a = a.clone();
        // Item ids differ between the two responses.
        for (x, y) in a.iter_mut().zip(done["output"].as_array().unwrap()) {
          x["id"] = y["id"].clone();
        }
        Value::Array(a)
      })
      .unwrap()
  );
  s.shutdown().unwrap();
}

#[test]
fn function_tools_round_trip() {
  // Qwen3's real template (the fixture's has no `tool` role).
  let dir = long_context_copy("qwen3");
  let mut c = config("qwen3");
  c.model = dir.to_string_lossy().into_owned();
  c.chat_template = Some(template("Qwen-Qwen3-0.6B.jinja"));
  c.max_tokens = 200;
  let s = start(c);
  let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                   "required": ["city"], "additionalProperties": false}}]);
  let (st, r) = post(
    &s,
    "/v1/responses",
    &json!({"input": "Weather in Paris?", "tools": tools, "tool_choice": "required"}),
  );
  assert_eq!(st, 200, "{r}");
  let call = r["output"]
    .as_array()
    .unwrap()
    .iter()
    .find(|i| i["type"] == "function_call")
    .unwrap_or_else(|| panic!("{r}"))
    .clone();
  assert_eq!(call["name"], "get_weather");
  let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
  assert!(args["city"].is_string());
  // Streamed: the call arrives as function_call_arguments events.
  let ev = events(
    &s,
    &json!({"input": "Weather in Paris?", "tools": tools,
            "tool_choice": {"type": "function", "name": "get_weather"}, "stream": true}),
  );
  let args_done = ev
    .iter()
    .find(|(n, _)| n == "response.function_call_arguments.done")
    .unwrap();
  assert!(serde_json::from_str::<Value>(args_done.1["arguments"].as_str().unwrap()).is_ok());
  // The tool's output goes back through previous_response_id.
  let (st, r2) = post(
    &s,
    "/v1/responses",
    &json!({"previous_response_id": r["id"], "tools": tools, "max_output_tokens": 4,
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "{\"c\": 21}"}]}),
  );
  assert_eq!(st, 200, "{r2}");
  assert!(
    r2["usage"]["input_tokens"].as_u64().unwrap() > r["usage"]["input_tokens"].as_u64().unwrap()
  );
  // Bad input: clear 400s.
  for (body, param) in [
    (
      json!({"input": "x", "tools": [{"type": "web_search"}]}),
      "tools[0]",
    ),
    (json!({"max_output_tokens": 2}), "input"),
    (json!({"input": [{"type": "nope"}]}), "input[0]"),
    (
      json!({"input": "x", "tools": tools, "tool_choice": "maybe"}),
      "tool_choice",
    ),
    (
      json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": 3}}}}),
      "text.format",
    ),
    (
      json!({"input": "x", "max_output_tokens": 0}),
      "max_output_tokens",
    ),
  ] {
    let (st, e) = post(&s, "/v1/responses", &body);
    assert_eq!(st, 400, "{body} -> {e}");
    assert_eq!(e["error"]["param"], param, "{e}");
  }
  s.shutdown().unwrap();
  let _ = std::fs::remove_dir_all(dir);
}
