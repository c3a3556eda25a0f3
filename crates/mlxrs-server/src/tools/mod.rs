//! Tool calling (python `mlx_lm.server`'s `tools` support and its tool
//! parsers): checking `tools` / `tool_choice` / `parallel_tool_calls`,
//! picking the model family's call format from its chat template (or
//! `model_type`), parsing replies into OpenAI `tool_calls`, and the
//! grammar that forces a call for `tool_choice` `required` or a named
//! function (constrained decoding, [`crate::structured`]).
//!
//! One parser per family: [`hermes`] (Qwen 2.5 / 3, Hermes),
//! [`llama3`] (Llama 3.1+ JSON), [`mistral`] (`[TOOL_CALLS]`),
//! [`harmony`] (gpt-oss). A reply whose calls do not parse is returned as
//! plain text.

pub mod harmony;
pub mod hermes;
pub mod llama3;
pub mod mistral;
pub mod scan;

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::error::ApiError;

/// One parsed tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
  /// Call id (`call_...`; 9 alphanumerics for Mistral, whose template
  /// checks them).
  pub id: String,
  /// Function name.
  pub name: String,
  /// Arguments as JSON text.
  pub arguments: String,
}

impl ToolCall {
  /// The OpenAI `tool_calls[i]` object.
  pub fn to_json(&self) -> Value {
    json!({"id": self.id, "type": "function",
           "function": {"name": self.name, "arguments": self.arguments}})
  }
}

/// Content and calls of a finished reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
  /// Text outside the calls.
  pub content: String,
  /// The calls.
  pub calls: Vec<ToolCall>,
}

static CALLS: AtomicU64 = AtomicU64::new(1);

/// A fresh call id: 9 alphanumerics (valid for every family's template).
fn call_id() -> String {
  const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  let nanos = std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map(|d| d.as_nanos() as u64)
    .unwrap_or(0);
  // splitmix64 of a counter and the clock: unique within a process.
  let mut x = nanos
    ^ CALLS
      .fetch_add(1, Ordering::Relaxed)
      .wrapping_mul(0x9E37_79B9_7F4A_7C15);
  x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
  x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
  x ^= x >> 31;
  (0..9)
    .map(|i| A[((x >> (i * 6)) % A.len() as u64) as usize] as char)
    .collect()
}

/// A call named `name` with JSON `arguments`; `None` for an empty name.
pub fn new_call(name: &str, arguments: String) -> Option<ToolCall> {
  let name = name.trim();
  if name.is_empty() {
    return None;
  }
  Some(ToolCall {
    id: call_id(),
    name: name.to_string(),
    arguments,
  })
}

/// A call from `{"name": ..., <args key>: {...}}` (the first of
/// `arg_keys` present; a string value must itself be JSON). `raw`: the
/// object's text; an arguments object is kept as the model wrote it,
/// compacted ([`scan::compact`]), which is what streaming sends.
pub fn call_from_json(v: &Value, raw: &str, arg_keys: &[&str]) -> Option<ToolCall> {
  let name = v.get("name")?.as_str()?;
  let args = arg_keys.iter().find_map(|k| v.get(*k));
  let arguments = match args {
    None | Some(Value::Null) => "{}".to_string(),
    Some(Value::String(s)) => {
      serde_json::from_str::<Value>(s).ok()?;
      s.clone()
    }
    Some(a @ Value::Object(_)) => scan::final_args(raw, arg_keys)
      .filter(|t| serde_json::from_str::<Value>(t).ok().as_ref() == Some(a))
      .unwrap_or_else(|| a.to_string()),
    Some(_) => return None,
  };
  new_call(name, arguments)
}

/// A model family's tool-call syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
  /// `<tool_call>{json}</tool_call>` (Qwen, Hermes).
  Hermes,
  /// A bare `{"name", "parameters"}` reply (Llama 3.1+).
  Llama3,
  /// `[TOOL_CALLS][...]` (Mistral).
  Mistral,
  /// gpt-oss channels.
  Harmony,
}

impl ToolFormat {
  /// The format a chat template (or, failing that, `model_type`) uses.
  pub fn detect(template: &str, model_type: Option<&str>) -> Option<ToolFormat> {
    if template.contains("<|channel|>") || template.contains("to=functions") {
      return Some(ToolFormat::Harmony);
    }
    if template.contains("<tool_call>") {
      return Some(ToolFormat::Hermes);
    }
    if template.contains("[TOOL_CALLS]") {
      return Some(ToolFormat::Mistral);
    }
    if template.contains("<|python_tag|>")
      || template.contains("<|start_header_id|>") && template.contains("\"parameters\"")
    {
      return Some(ToolFormat::Llama3);
    }
    let mt = model_type?;
    if mt.starts_with("qwen") || mt.starts_with("hermes") {
      Some(ToolFormat::Hermes)
    } else if mt == "gpt_oss" {
      Some(ToolFormat::Harmony)
    } else if mt.starts_with("mistral") || mt.starts_with("mixtral") || mt == "ministral" {
      Some(ToolFormat::Mistral)
    } else if mt.starts_with("llama") {
      Some(ToolFormat::Llama3)
    } else {
      None
    }
  }

  /// Parse a finished reply (after any reasoning) into content and calls;
  /// `None` when it holds no call that parses.
  pub fn parse(self, text: &str) -> Option<Parsed> {
    match self {
      ToolFormat::Hermes => hermes::parse(text),
      ToolFormat::Llama3 => llama3::parse(text),
      ToolFormat::Mistral => mistral::parse(text),
      ToolFormat::Harmony => harmony::parse(text).map(|h| Parsed {
        content: h.content,
        calls: h.calls,
      }),
    }
  }

  /// For streaming: the offset where a call starts (or may start), so the
  /// text before it can be sent as content. Partial start markers at the
  /// end are held back by the caller.
  pub fn call_start(self, text: &str) -> Option<usize> {
    match self {
      ToolFormat::Hermes => hermes::call_start(text),
      ToolFormat::Llama3 => llama3::call_start(text),
      ToolFormat::Mistral => mistral::call_start(text),
      ToolFormat::Harmony => None,
    }
  }

  /// For streaming: the calls of `text` (from [`ToolFormat::call_start`]
  /// on) as far as they are generated. Harmony replies are read whole
  /// ([`harmony::partial`]).
  pub fn partial(self, text: &str) -> Vec<scan::PartialCall> {
    match self {
      ToolFormat::Hermes => hermes::partial(text),
      ToolFormat::Llama3 => llama3::partial(text),
      ToolFormat::Mistral => mistral::partial(text),
      ToolFormat::Harmony => Vec::new(),
    }
  }

  /// The start marker whose prefixes are held back while streaming.
  pub fn marker(self) -> Option<&'static str> {
    match self {
      ToolFormat::Hermes => Some(hermes::START),
      ToolFormat::Mistral => Some(mistral::START),
      _ => None,
    }
  }
}

/// What `tool_choice` asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
  /// No tool calls (tools are not rendered).
  None,
  /// The model decides.
  Auto,
  /// At least one call (forced by a grammar).
  Required,
  /// A call to this function (forced by a grammar).
  Named(String),
}

/// The checked tool settings of a request.
#[derive(Debug, Clone)]
pub struct ToolSetup {
  /// `tools` as the template gets them (`{"type": "function", "function": {...}}`).
  pub tools: Vec<Value>,
  /// `tool_choice`.
  pub choice: Choice,
  /// `parallel_tool_calls` (true unless false).
  pub parallel: bool,
}

fn bad(param: &str, msg: impl Into<String>) -> ApiError {
  ApiError::invalid(msg, Some(param))
}

/// Check `tools`, `tool_choice` and `parallel_tool_calls`.
pub fn setup(
  tools: Option<&Value>,
  choice: Option<&Value>,
  parallel: Option<bool>,
) -> Result<Option<ToolSetup>, ApiError> {
  let list = match tools {
    None | Some(Value::Null) => Vec::new(),
    Some(Value::Array(a)) => a.clone(),
    Some(_) => return Err(bad("tools", "`tools` must be an array of function tools")),
  };
  let mut names = Vec::new();
  for (i, t) in list.iter().enumerate() {
    let p = format!("tools[{i}]");
    let kind = t.get("type").and_then(Value::as_str);
    if kind != Some("function") {
      return Err(bad(
        &p,
        format!("{p}.type must be \"function\" (got {:?})", t.get("type")),
      ));
    }
    let f = t
      .get("function")
      .and_then(Value::as_object)
      .ok_or_else(|| bad(&p, format!("{p}.function must be an object")))?;
    let name = f
      .get("name")
      .and_then(Value::as_str)
      .ok_or_else(|| bad(&p, format!("{p}.function.name must be a string")))?;
    if name.is_empty()
      || name.len() > 64
      || !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
      return Err(bad(
        &p,
        format!("{p}.function.name {name:?} must be 1-64 of a-z, A-Z, 0-9, _, -, ."),
      ));
    }
    if names.iter().any(|n| n == name) {
      return Err(bad(&p, format!("{p}: duplicate function name {name:?}")));
    }
    if let Some(d) = f.get("description") {
      if !d.is_string() && !d.is_null() {
        return Err(bad(
          &p,
          format!("{p}.function.description must be a string"),
        ));
      }
    }
    if let Some(s) = f.get("parameters") {
      if !s.is_object() && !s.is_null() {
        return Err(bad(
          &p,
          format!("{p}.function.parameters must be a JSON schema object"),
        ));
      }
    }
    if let Some(s) = f.get("strict") {
      if !s.is_boolean() && !s.is_null() {
        return Err(bad(&p, format!("{p}.function.strict must be a boolean")));
      }
    }
    names.push(name.to_string());
  }
  let choice = match choice {
    None | Some(Value::Null) => {
      if list.is_empty() {
        Choice::None
      } else {
        Choice::Auto
      }
    }
    Some(Value::String(s)) => match s.as_str() {
      "none" => Choice::None,
      "auto" => Choice::Auto,
      "required" => Choice::Required,
      other => {
        return Err(bad(
          "tool_choice",
          format!(
            "unknown tool_choice {other:?} (expected none, auto, required or a named function)"
          ),
        ));
      }
    },
    Some(Value::Object(o)) => {
      let name = o
        .get("function")
        .and_then(|f| f.get("name"))
        .or_else(|| o.get("name"))
        .and_then(Value::as_str);
      match (o.get("type").and_then(Value::as_str), name) {
        (Some("function"), Some(n)) => {
          if !names.iter().any(|x| x == n) {
            return Err(bad(
              "tool_choice",
              format!("tool_choice names function {n:?}, which is not in `tools`"),
            ));
          }
          Choice::Named(n.to_string())
        }
        _ => {
          return Err(bad(
            "tool_choice",
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
          ));
        }
      }
    }
    Some(_) => {
      return Err(bad(
        "tool_choice",
        "tool_choice must be a string or an object",
      ));
    }
  };
  if list.is_empty() {
    if matches!(choice, Choice::Required | Choice::Named(_)) {
      return Err(bad("tool_choice", "tool_choice needs `tools`"));
    }
    return Ok(None);
  }
  Ok(Some(ToolSetup {
    tools: list,
    choice,
    parallel: parallel.unwrap_or(true),
  }))
}

/// The JSON schema of one tool's arguments (`{}`-accepting object when it
/// has none).
fn params(tool: &Value) -> Value {
  match tool.get("function").and_then(|f| f.get("parameters")) {
    Some(p @ Value::Object(_)) => p.clone(),
    _ => json!({"type": "object"}),
  }
}

fn tool_name(tool: &Value) -> &str {
  tool
    .get("function")
    .and_then(|f| f.get("name"))
    .and_then(Value::as_str)
    .unwrap_or("")
}

/// A lark literal for `s`: the token itself (`<[id]>`) when `s` is one
/// special token of the tokenizer, else the quoted text.
fn lit(tok: &mlxrs_lm::Tokenizer, s: &str) -> String {
  if let Some(id) = tok.token_to_id(s) {
    let special = tok
      .inner()
      .get_added_tokens_decoder()
      .get(&id)
      .is_some_and(|t| t.special);
    if special {
      return format!("<[{id}]>");
    }
  }
  serde_json::to_string(s).unwrap_or_default()
}

/// A Lark expression matching exactly `text`: its special tokens (as the
/// tokenizer marks them) as `<[id]>` token references, the rest as quoted
/// literals. Used for forced markers and by tests that force a model's
/// real output through `response_format` `grammar`.
pub fn lark_literal(tok: &mlxrs_lm::Tokenizer, text: &str) -> String {
  let specials: Vec<(String, u32)> = tok
    .inner()
    .get_added_tokens_decoder()
    .iter()
    .filter(|(_, t)| t.special && !t.content.is_empty())
    .map(|(id, t)| (t.content.clone(), *id))
    .collect();
  let mut parts = Vec::new();
  let mut rest = text;
  while !rest.is_empty() {
    let hit = specials
      .iter()
      .filter_map(|(s, id)| {
        rest
          .find(s.as_str())
          .map(|p| (p, std::cmp::Reverse(s.len()), s, *id))
      })
      .min();
    match hit {
      Some((p, _, s, id)) => {
        if p > 0 {
          parts.push(serde_json::to_string(&rest[..p]).unwrap_or_default());
        }
        parts.push(format!("<[{id}]>"));
        rest = &rest[p + s.len()..];
      }
      None => {
        parts.push(serde_json::to_string(rest).unwrap_or_default());
        break;
      }
    }
  }
  if parts.is_empty() {
    "\"\"".to_string()
  } else {
    parts.join(" ")
  }
}

/// The lark grammar forcing one or more calls (`tool_choice` `required`
/// or a named function) in `format`; arguments follow each tool's schema.
pub fn forced_grammar(
  format: ToolFormat,
  setup: &ToolSetup,
  tok: &mlxrs_lm::Tokenizer,
) -> Result<String, ApiError> {
  let tools: Vec<&Value> = setup
    .tools
    .iter()
    .filter(|t| match &setup.choice {
      Choice::Named(n) => tool_name(t) == n,
      _ => true,
    })
    .collect();
  let max = if setup.parallel { 4 } else { 1 };
  let mut g = String::new();
  let rules: Vec<String> = tools
    .iter()
    .enumerate()
    .map(|(i, t)| {
      let name = tool_name(t);
      let args = params(t);
      match format {
        ToolFormat::Hermes | ToolFormat::Llama3 => {
          let key = if format == ToolFormat::Llama3 {
            "parameters"
          } else {
            "arguments"
          };
          let schema = json!({"type": "object",
            "properties": {"name": {"const": name}, key: args},
            "required": ["name", key], "additionalProperties": false});
          let body = format!("%json {}", crate::structured::compact(schema));
          // Markers by token when the tokenizer has them as special tokens.
          let r = if format == ToolFormat::Hermes {
            format!(
              "{} \"\\n\" {body} \"\\n\" {}",
              lit(tok, hermes::START),
              lit(tok, hermes::END)
            )
          } else {
            body
          };
          format!("call{i}: {r}\n")
        }
        ToolFormat::Mistral => {
          let schema = json!({"type": "object",
            "properties": {"name": {"const": name}, "arguments": args},
            "required": ["name", "arguments"], "additionalProperties": false});
          format!("call{i}: %json {}\n", crate::structured::compact(schema))
        }
        ToolFormat::Harmony => {
          let constrain = match tok.token_to_id("<|constrain|>") {
            Some(_) => format!("\" \" {} \"json\"", lit(tok, "<|constrain|>")),
            None => "\" json\"".to_string(),
          };
          format!(
            "call{i}: {} \"commentary to=functions.{name}\" {constrain} {} %json {}\n",
            lit(tok, "<|channel|>"),
            lit(tok, "<|message|>"),
            crate::structured::compact(args),
          )
        }
      }
    })
    .collect();
  let alts: Vec<String> = (0..rules.len()).map(|i| format!("call{i}")).collect();
  let one = format!("call: {}\n", alts.join(" | "));
  let more = |sep: &str| {
    if max > 1 {
      format!(" ({sep} call){{0,{}}}", max - 1)
    } else {
      String::new()
    }
  };
  let start = match format {
    ToolFormat::Hermes => format!("start: call{}\n", more("\"\\n\"")),
    ToolFormat::Llama3 => format!("start: call{}\n", more("\"; \"")),
    ToolFormat::Mistral => format!(
      "start: {} \"[\" call{} \"]\"\n",
      lit(tok, mistral::START),
      more("\", \"")
    ),
    ToolFormat::Harmony => {
      // Several calls: each after `<|call|>` would end the turn; one call.
      "start: call\n".to_string()
    }
  };
  g.push_str(&start);
  g.push_str(&one);
  for r in rules {
    g.push_str(&r);
  }
  Ok(g)
}

fn is_strict(tool: &Value) -> bool {
  tool
    .get("function")
    .and_then(|f| f.get("strict"))
    .and_then(Value::as_bool)
    .unwrap_or(false)
}

/// For `tool_choice: "auto"` with `strict` tools: where a call starts in
/// `format` and the Lark grammar of what follows (the call(s), the
/// arguments of strict tools held to their schemas, of the others to any
/// object). `None` when no tool is strict.
pub fn strict_auto_grammar(
  format: ToolFormat,
  setup: &ToolSetup,
  tok: &mlxrs_lm::Tokenizer,
) -> Option<(crate::structured::Trigger, String)> {
  use crate::structured::{Trigger, compact};
  if !setup.tools.iter().any(is_strict) {
    return None;
  }
  let args_of = |t: &Value| {
    if is_strict(t) {
      params(t)
    } else {
      json!({"type": "object"})
    }
  };
  let json_call = |t: &Value, key: &str| {
    let schema = json!({"type": "object",
      "properties": {"name": {"const": tool_name(t)}, key: args_of(t)},
      "required": ["name", key], "additionalProperties": false});
    format!("%json {}", compact(schema))
  };
  let mut rules = String::new();
  let alts: Vec<String> = (0..setup.tools.len()).map(|i| format!("call{i}")).collect();
  rules.push_str(&format!("call: {}\n", alts.join(" | ")));
  for (i, t) in setup.tools.iter().enumerate() {
    let r = match format {
      ToolFormat::Hermes | ToolFormat::Mistral => json_call(t, "arguments"),
      ToolFormat::Llama3 => json_call(t, "parameters"),
      ToolFormat::Harmony => {
        let opt = |s: &str| format!("({} (/[^<]+/)?)?", lit(tok, s));
        format!(
          "{} (/[^<]+/)? {} {} {} %json {}",
          serde_json::to_string(tool_name(t)).unwrap_or_default(),
          opt("<|channel|>"),
          opt("<|constrain|>"),
          lit(tok, "<|message|>"),
          compact(args_of(t))
        )
      }
    };
    rules.push_str(&format!("call{i}: {r}\n"));
  }
  let (trigger, start) = match format {
    ToolFormat::Hermes => (
      Trigger::After(hermes::START.into()),
      format!(
        "start: (\"\\n\")? call (\"\\n\")? {}\n",
        lit(tok, hermes::END)
      ),
    ),
    ToolFormat::Llama3 => (
      Trigger::Leading(b'{'),
      "start: call (\"; \" call)*\n".to_string(),
    ),
    ToolFormat::Mistral => (
      Trigger::After(mistral::START.into()),
      "start: (\" \")? \"[\" call (\", \" call)* \"]\"\n".to_string(),
    ),
    ToolFormat::Harmony => (
      Trigger::After("to=functions.".into()),
      "start: call\n".to_string(),
    ),
  };
  Some((trigger, start + &rules))
}

/// Assistant `tool_calls` arguments given as JSON strings (OpenAI's form)
/// become objects, which the family templates render with `tojson`.
/// An assistant message without content gets `""` (templates such as
/// Qwen3's concatenate it).
pub fn normalize_message(m: &mut Value) {
  if m.get("role").and_then(Value::as_str) == Some("assistant")
    && m.get("content").is_none_or(Value::is_null)
  {
    m["content"] = json!("");
  }
  let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) else {
    return;
  };
  for c in calls {
    let Some(f) = c.get_mut("function") else {
      continue;
    };
    if let Some(Value::String(s)) = f.get("arguments") {
      if let Ok(v) = serde_json::from_str::<Value>(s) {
        f["arguments"] = v;
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn detect_by_template_then_model_type() {
    assert_eq!(
      ToolFormat::detect("x <tool_call> y", None),
      Some(ToolFormat::Hermes)
    );
    assert_eq!(
      ToolFormat::detect("[TOOL_CALLS]", None),
      Some(ToolFormat::Mistral)
    );
    assert_eq!(
      ToolFormat::detect("<|channel|>", None),
      Some(ToolFormat::Harmony)
    );
    assert_eq!(
      ToolFormat::detect("plain", Some("llama")),
      Some(ToolFormat::Llama3)
    );
    assert_eq!(ToolFormat::detect("plain", Some("gpt2")), None);
  }

  fn one(f: ToolFormat, text: &str) -> (String, Vec<(String, Value)>) {
    let p = f
      .parse(text)
      .unwrap_or_else(|| panic!("{f:?} did not parse {text:?}"));
    let calls = p
      .calls
      .iter()
      .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap()))
      .collect();
    (p.content, calls)
  }

  // Replies in each family's documented / observed output form.
  #[test]
  fn hermes_qwen_replies() {
    let t = "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_temperature_date\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}}\n</tool_call>";
    let (c, calls) = one(ToolFormat::Hermes, t);
    assert_eq!(c, "");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].0, "get_temperature_date");
    assert_eq!(calls[1].1["date"], "2024-10-01");
    // Arguments given as a JSON string.
    let t = "Sure.<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>";
    let (c, calls) = one(ToolFormat::Hermes, t);
    assert_eq!(c, "Sure.");
    assert_eq!(calls[0].1, json!({"x": 1}));
    assert!(
      ToolFormat::Hermes
        .parse("<tool_call>{'name': 'f'}</tool_call>")
        .is_none()
    );
    assert!(ToolFormat::Hermes.parse("no calls").is_none());
  }

  #[test]
  fn llama3_replies() {
    let t = "<|python_tag|>{\"name\": \"get_current_conditions\", \"parameters\": {\"location\": \"San Francisco, CA\", \"unit\": \"Fahrenheit\"}}";
    let (_, calls) = one(ToolFormat::Llama3, t);
    assert_eq!(calls[0].0, "get_current_conditions");
    assert_eq!(calls[0].1["unit"], "Fahrenheit");
    let t =
      "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"k\": [1, 2]}}";
    let (_, calls) = one(ToolFormat::Llama3, t);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].1["k"], json!([1, 2]));
    assert!(
      ToolFormat::Llama3
        .parse("The answer is {\"name\": 1}")
        .is_none()
    );
    assert!(
      ToolFormat::Llama3
        .parse("{\"name\": \"a\", \"parameters\": {} trailing")
        .is_none()
    );
    assert!(ToolFormat::Llama3.parse("{\"city\": \"Paris\"}").is_none());
  }

  #[test]
  fn mistral_replies() {
    // v0.3 / Nemo (the control token decodes with a following space).
    let t = "[TOOL_CALLS] [{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Paris, France\", \"format\": \"celsius\"}, \"id\": \"aBcDe1234\"}]";
    let (c, calls) = one(ToolFormat::Mistral, t);
    assert_eq!(c, "");
    assert_eq!(calls[0].1["format"], "celsius");
    // Magistral / Devstral 2507+.
    let t = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}";
    let (_, calls) = one(ToolFormat::Mistral, t);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], ("get_weather".into(), json!({"city": "Paris"})));
    assert!(
      ToolFormat::Mistral
        .parse("[TOOL_CALLS] [{\"name\": ")
        .is_none()
    );
  }

  #[test]
  fn harmony_replies() {
    let t = "<|channel|>analysis<|message|>User asks weather; call tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"San Francisco\"}<|call|>";
    let h = harmony::parse(t).unwrap();
    assert_eq!(h.reasoning, "User asks weather; call tool.");
    assert_eq!(h.calls[0].name, "get_weather");
    assert_eq!(h.calls[0].arguments, "{\"location\":\"San Francisco\"}");
    // The recipient before the channel.
    let t = "<|start|>assistant to=functions.lookup<|channel|>commentary json<|message|>{\"q\": \"x\"}<|call|>";
    assert_eq!(harmony::parse(t).unwrap().calls[0].name, "lookup");
    let t = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>";
    let h = harmony::parse(t).unwrap();
    assert_eq!(
      (h.reasoning.as_str(), h.content.as_str()),
      ("Think.", "Hi!")
    );
    assert!(h.calls.is_empty());
    assert!(harmony::parse("plain").is_none());
    assert!(harmony::parse("<|channel|>commentary to=functions.f<|message|>{oops").is_none());
  }

  #[test]
  fn call_ids_are_unique_alphanumerics() {
    let a = call_id();
    let b = call_id();
    assert_ne!(a, b);
    assert_eq!(a.len(), 9);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
  }
}
