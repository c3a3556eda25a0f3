//! Chat-template rendering, matching transformers'
//! `PreTrainedTokenizerBase.apply_chat_template` (`tokenize=False`) and its
//! `render_jinja_template`.
//!
//! Templates are Jinja2 run by `minijinja`, set up like transformers'
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`:
//!
//! - context: `messages`, `tools`, `documents`, `add_generation_prompt`, the
//!   tokenizer's named special tokens (`bos_token`, `eos_token`, ...) and any
//!   extra variables ([`ChatOptions::extra`], e.g. `enable_thinking`);
//! - globals `raise_exception(msg)`, `strftime_now(fmt)` (local time, Python
//!   `strftime` codes), `namespace`, `dict`;
//! - the `tojson` filter with transformers' signature and output
//!   (`json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//!   sort_keys=False)`: `", "` / `": "` separators, no HTML escaping, keys
//!   in insertion order);
//! - Python `str` / `list` / `dict` methods (`strip`, `split`, `startswith`,
//!   `items`, `get`, ...) through `minijinja-contrib`'s pycompat layer, plus
//!   `removeprefix` / `removesuffix` / `rsplit`;
//! - values print as Python's `str()` does (`None`, `True`, `['a', 1]`,
//!   `{'k': 'v'}`, `1e-05`);
//! - `{% generation %}` blocks (transformers' `AssistantTracker`) render
//!   their body;
//! - `break` / `continue` (`jinja2.ext.loopcontrols`).
//!
//! Messages are normalized as transformers does: keys whose value is null
//! are dropped, and a message's reasoning (`reasoning_content`, `thinking`
//! or `reasoning`) is offered under both `thinking` and
//! `reasoning_content`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::error::{Error, Result};

/// A message's content: plain text, or a list of parts (`{"type": "text",
/// "text": ...}`, `{"type": "image"}`, ...) as VLM templates read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
  /// Plain text.
  Text(String),
  /// Typed parts.
  Parts(Vec<serde_json::Value>),
}

impl From<&str> for Content {
  fn from(s: &str) -> Self {
    Content::Text(s.to_string())
  }
}

impl From<String> for Content {
  fn from(s: String) -> Self {
    Content::Text(s)
  }
}

/// One chat message (`{"role": ..., "content": ...}` in transformers).
/// Other keys (`tool_calls`, `name`, `tool_call_id`, `reasoning_content`,
/// ...) go in `extra` and reach the template unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
  /// `system`, `user`, `assistant`, `tool`, ...
  pub role: String,
  /// The content; `None` for e.g. an assistant message with only tool calls.
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub content: Option<Content>,
  /// Any other keys, in order.
  #[serde(flatten)]
  pub extra: Map<String, serde_json::Value>,
}

impl Message {
  /// A message with `role` and text or parts `content`.
  pub fn new(role: impl Into<String>, content: impl Into<Content>) -> Self {
    Message {
      role: role.into(),
      content: Some(content.into()),
      extra: Map::new(),
    }
  }

  /// `{"role": "system", "content": text}`.
  pub fn system(text: impl Into<String>) -> Self {
    Self::new("system", Content::Text(text.into()))
  }

  /// `{"role": "user", "content": text}`.
  pub fn user(text: impl Into<String>) -> Self {
    Self::new("user", Content::Text(text.into()))
  }

  /// `{"role": "assistant", "content": text}`.
  pub fn assistant(text: impl Into<String>) -> Self {
    Self::new("assistant", Content::Text(text.into()))
  }

  /// Add another key (`tool_calls`, `reasoning_content`, ...).
  pub fn with(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
    self.extra.insert(key.into(), value);
    self
  }
}

/// Options of [`ChatTemplate::render`] (the keyword arguments of
/// transformers' `apply_chat_template`).
#[derive(Clone, Debug, Default)]
pub struct ChatOptions {
  /// Append the header that starts an assistant turn.
  pub add_generation_prompt: bool,
  /// Leave the final message open (no end-of-turn tokens) so the model
  /// continues it (transformers' `continue_final_message=True`, on the
  /// `content` field). Not compatible with `add_generation_prompt`.
  pub continue_final_message: bool,
  /// Tool JSON schemas (`tools`); `None` renders `tools` as none.
  pub tools: Option<Vec<serde_json::Value>>,
  /// RAG documents (`documents`).
  pub documents: Option<Vec<serde_json::Value>>,
  /// A template name (from a checkpoint with several) or a whole template
  /// source, as transformers' `chat_template=` argument; `None` picks the
  /// checkpoint's default (`tool_use` when tools are given and it exists).
  pub chat_template: Option<String>,
  /// Extra template variables (`enable_thinking`, `date_string`, ...).
  /// They override the special tokens of the same name.
  pub extra: Map<String, serde_json::Value>,
}

/// The chat templates a tokenizer ships: one, or several by name
/// (transformers' `tokenizer.chat_template` str or dict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplates {
  /// A single template.
  Single(String),
  /// Named templates (`default`, `tool_use`, `rag`, ...).
  Named(BTreeMap<String, String>),
}

impl ChatTemplates {
  /// Pick the template to use (`get_chat_template`): `choice` is a template
  /// name or a template source; `None` takes `tool_use` when `has_tools` and
  /// it exists, else `default`. Returns `(name, source)`.
  pub fn select<'a>(
    &'a self,
    choice: Option<&'a str>,
    has_tools: bool,
  ) -> Result<(String, &'a str)> {
    match (self, choice) {
      (ChatTemplates::Named(map), Some(c)) => match map.get(c) {
        Some(src) => Ok((c.to_string(), src.as_str())),
        None => Ok(("<inline>".to_string(), c)),
      },
      (ChatTemplates::Named(map), None) => {
        if has_tools {
          if let Some(src) = map.get("tool_use") {
            return Ok(("tool_use".to_string(), src.as_str()));
          }
        }
        match map.get("default") {
          Some(src) => Ok(("default".to_string(), src.as_str())),
          None => Err(Error::Template {
            name: "<none>".into(),
            message: format!(
              "this model has several chat templates and no `default`; pick one by name: {}",
              map.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
          }),
        }
      }
      (ChatTemplates::Single(_), Some(c)) => Ok(("<inline>".to_string(), c)),
      (ChatTemplates::Single(src), None) => Ok(("default".to_string(), src.as_str())),
    }
  }

  /// The template names (`["default"]` for a single template).
  pub fn names(&self) -> Vec<String> {
    match self {
      ChatTemplates::Single(_) => vec!["default".to_string()],
      ChatTemplates::Named(m) => m.keys().cloned().collect(),
    }
  }
}

/// A compiled chat template.
pub struct ChatTemplate {
  name: String,
  env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("ChatTemplate")
      .field("name", &self.name)
      .finish_non_exhaustive()
  }
}

const TEMPLATE_KEY: &str = "chat";
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

fn template_error(name: &str, e: &minijinja::Error) -> Error {
  let mut message = match e.kind() {
    // raise_exception: report the template's own message.
    ErrorKind::InvalidOperation if e.detail().is_some() => {
      e.detail().unwrap_or_default().to_string()
    }
    _ => match e.detail() {
      Some(d) => format!("{}: {d}", e.kind()),
      None => e.kind().to_string(),
    },
  };
  if let Some(line) = e.line() {
    let _ = write!(message, " (line {line})");
  }
  let mut src = std::error::Error::source(e);
  while let Some(s) = src {
    let _ = write!(message, ": {s}");
    src = s.source();
  }
  Error::Template {
    name: name.to_string(),
    message,
  }
}

impl ChatTemplate {
  /// Compile `source` (transformers' `_compile_jinja_template`). `name`
  /// labels errors. A syntax error is an [`Error::Template`] with its line.
  pub fn new(name: &str, source: &str) -> Result<Self> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_recursion_limit(256);
    env.set_unknown_method_callback(unknown_method);
    env.set_formatter(py_formatter);
    env.add_filter("tojson", tojson_filter);
    env.add_filter(
      "string",
      |v: Value| -> std::result::Result<Value, minijinja::Error> {
        if v.kind() == ValueKind::String {
          return Ok(v);
        }
        let mut s = String::new();
        py_str(&v, &mut s)?;
        Ok(Value::from(s))
      },
    );
    env.add_function(
      "raise_exception",
      |msg: Option<Value>| -> std::result::Result<Value, minijinja::Error> {
        let msg = msg.map(|m| m.to_string()).unwrap_or_default();
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
      },
    );
    env.add_function(
      "strftime_now",
      |fmt: String| -> std::result::Result<Value, minijinja::Error> {
        strftime_now(&fmt).map(Value::from)
      },
    );
    let src = rewrite_generation_tags(source);
    env
      .add_template_owned(TEMPLATE_KEY, src)
      .map_err(|e| template_error(name, &e))?;
    Ok(ChatTemplate {
      name: name.to_string(),
      env,
    })
  }

  /// The name given at compile time.
  pub fn name(&self) -> &str {
    &self.name
  }

  /// Render `messages` (transformers' `render_jinja_template` for one
  /// conversation). `special_tokens` are the tokenizer's named special
  /// tokens (`bos_token` -> `"<s>"`, ...); [`ChatOptions::extra`] overrides
  /// them.
  pub fn render(
    &self,
    messages: &[Message],
    opts: &ChatOptions,
    special_tokens: &Map<String, serde_json::Value>,
  ) -> Result<String> {
    let values = messages
      .iter()
      .map(|m| serde_json::to_value(m).map_err(|e| Error::InvalidArgument(format!("message: {e}"))))
      .collect::<Result<Vec<_>>>()?;
    self.render_values(&values, opts, special_tokens)
  }

  /// [`ChatTemplate::render`] over messages given as JSON objects (any
  /// keys; `role` and `content` by convention).
  pub fn render_values(
    &self,
    messages: &[serde_json::Value],
    opts: &ChatOptions,
    special_tokens: &Map<String, serde_json::Value>,
  ) -> Result<String> {
    if messages.is_empty() {
      return Err(Error::InvalidArgument(
        "cannot apply a chat template to an empty conversation; give at least one message".into(),
      ));
    }
    if opts.continue_final_message && opts.add_generation_prompt {
      return Err(Error::InvalidArgument(
        "continue_final_message and add_generation_prompt are not compatible".into(),
      ));
    }
    let mut chat = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
      let serde_json::Value::Object(obj) = m else {
        return Err(Error::InvalidArgument(format!(
          "message {i} is not an object: {m}"
        )));
      };
      chat.push(normalize_message(obj));
    }

    let mut final_message = None;
    if opts.continue_final_message {
      let last = chat.last_mut().expect("non-empty");
      let Some(content) = last.get_mut("content") else {
        return Err(Error::InvalidArgument(
          "continue_final_message is set but the final message has no \"content\" to continue"
            .into(),
        ));
      };
      match content {
        serde_json::Value::String(s) => {
          final_message = Some(s.clone());
          s.push_str(CONTINUE_TAG);
        }
        serde_json::Value::Array(parts) => {
          let part = parts
            .iter_mut()
            .rev()
            .find_map(|p| match p.get_mut("text") {
              Some(serde_json::Value::String(t)) => Some(t),
              _ => None,
            });
          match part {
            Some(t) => {
              final_message = Some(t.clone());
              t.push_str(CONTINUE_TAG);
            }
            None => {
              return Err(Error::InvalidArgument(
                "continue_final_message is set but we could not find any text to continue in the final message".into(),
              ));
            }
          }
        }
        other => {
          return Err(Error::InvalidArgument(format!(
            "continue_final_message is set but the final message's content is not text: {other}"
          )));
        }
      }
    }

    let mut ctx: Map<String, serde_json::Value> = special_tokens.clone();
    for (k, v) in &opts.extra {
      if matches!(
        k.as_str(),
        "messages" | "tools" | "documents" | "add_generation_prompt"
      ) {
        return Err(Error::InvalidArgument(format!(
          "extra template variable `{k}` clashes with the one apply_chat_template sets"
        )));
      }
      ctx.insert(k.clone(), v.clone());
    }
    ctx.insert(
      "messages".into(),
      serde_json::Value::Array(chat.into_iter().map(serde_json::Value::Object).collect()),
    );
    ctx.insert(
      "tools".into(),
      opts
        .tools
        .clone()
        .map(serde_json::Value::Array)
        .unwrap_or(serde_json::Value::Null),
    );
    ctx.insert(
      "documents".into(),
      opts
        .documents
        .clone()
        .map(serde_json::Value::Array)
        .unwrap_or(serde_json::Value::Null),
    );
    ctx.insert(
      "add_generation_prompt".into(),
      serde_json::Value::Bool(opts.add_generation_prompt),
    );

    let tmpl = self
      .env
      .get_template(TEMPLATE_KEY)
      .map_err(|e| template_error(&self.name, &e))?;
    let mut rendered = tmpl
      .render(Value::from_serialize(&ctx))
      .map_err(|e| template_error(&self.name, &e))?;

    if let Some(final_message) = final_message {
      let tag = CONTINUE_TAG.trim();
      if !rendered.contains(final_message.trim()) || !rendered.contains(tag) {
        return Err(Error::Template {
          name: self.name.clone(),
          message: format!(
            "continue_final_message is set but the final message does not appear in the rendered chat \
             (the template deletes part of it): {}",
            final_message.trim()
          ),
        });
      }
      let loc = rendered.rfind(tag).expect("checked");
      if rendered[loc..].starts_with(CONTINUE_TAG) {
        rendered.truncate(loc);
      } else {
        rendered.truncate(loc);
        let keep = rendered.trim_end().len();
        rendered.truncate(keep);
      }
    }
    Ok(rendered)
  }
}

/// transformers' `_normalize_chat_messages` (drop null values) and
/// `_alias_reasoning_fields`.
fn normalize_message(obj: &Map<String, serde_json::Value>) -> Map<String, serde_json::Value> {
  let msg: Map<String, serde_json::Value> = obj
    .iter()
    .filter(|(_, v)| !v.is_null())
    .map(|(k, v)| (k.clone(), v.clone()))
    .collect();
  let reasoning = ["reasoning_content", "thinking", "reasoning"]
    .iter()
    .find_map(|k| msg.get(*k))
    .cloned();
  match reasoning {
    None => msg,
    Some(r) => {
      // {"thinking": r, **message, "reasoning_content": r}
      let mut out = Map::new();
      out.insert("thinking".into(), r.clone());
      for (k, v) in msg {
        out.insert(k, v);
      }
      out.insert("reasoning_content".into(), r);
      out
    }
  }
}

/// Turn `{% generation %}` / `{% endgeneration %}` (transformers'
/// AssistantTracker tag) into `{% if true %}` / `{% endif %}`, keeping the
/// whitespace-control markers so trimming is unchanged.
fn rewrite_generation_tags(src: &str) -> String {
  let mut out = String::with_capacity(src.len());
  let mut rest = src;
  while let Some(pos) = rest.find("{%") {
    out.push_str(&rest[..pos]);
    let tag = &rest[pos..];
    let after_open = &tag[2..];
    let (lmark, body) = match after_open.chars().next() {
      Some(c @ ('-' | '+')) => (Some(c), &after_open[1..]),
      _ => (None, after_open),
    };
    let trimmed = body.trim_start();
    let (kw, replacement) = if let Some(r) = trimmed.strip_prefix("endgeneration") {
      (r, "endif")
    } else if let Some(r) = trimmed.strip_prefix("generation") {
      (r, "if true")
    } else {
      ("", "")
    };
    if !replacement.is_empty() {
      let r = kw.trim_start();
      let (rmark, close) = match r.chars().next() {
        Some(c @ ('-' | '+')) => (Some(c), &r[1..]),
        _ => (None, r),
      };
      if let Some(tail) = close.strip_prefix("%}") {
        out.push_str("{%");
        if let Some(c) = lmark {
          out.push(c);
        }
        out.push(' ');
        out.push_str(replacement);
        out.push(' ');
        if let Some(c) = rmark {
          out.push(c);
        }
        out.push_str("%}");
        rest = tail;
        continue;
      }
    }
    out.push_str("{%");
    rest = &tag[2..];
  }
  out.push_str(rest);
  out
}

/// Python's `datetime.now().strftime(fmt)` (local time).
fn strftime_now(fmt: &str) -> std::result::Result<String, minijinja::Error> {
  use chrono::format::{Item, StrftimeItems};
  let items: Vec<Item<'_>> = StrftimeItems::new(fmt).collect();
  if items.iter().any(|i| matches!(i, Item::Error)) {
    return Err(minijinja::Error::new(
      ErrorKind::InvalidOperation,
      format!("strftime_now: invalid format {fmt:?}"),
    ));
  }
  let now = chrono::Local::now();
  let mut s = String::new();
  write!(s, "{}", now.format_with_items(items.into_iter())).map_err(|_| {
    minijinja::Error::new(
      ErrorKind::InvalidOperation,
      format!("strftime_now: cannot format {fmt:?}"),
    )
  })?;
  Ok(s)
}

// ---------------------------------------------------------------------------
// Python-compatible methods.

fn unknown_method(
  state: &State,
  value: &Value,
  method: &str,
  args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
  match minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args) {
    Err(e) if e.kind() == ErrorKind::UnknownMethod => {
      extra_method(value, method, args).unwrap_or(Err(e))
    }
    other => other,
  }
}

fn arg_str<'a>(
  args: &'a [Value],
  i: usize,
  method: &str,
) -> std::result::Result<&'a str, minijinja::Error> {
  args.get(i).and_then(Value::as_str).ok_or_else(|| {
    minijinja::Error::new(
      ErrorKind::InvalidOperation,
      format!("{method}() expects a string argument"),
    )
  })
}

/// Methods pycompat lacks. `None` when not handled either.
fn extra_method(
  value: &Value,
  method: &str,
  args: &[Value],
) -> Option<std::result::Result<Value, minijinja::Error>> {
  let s = value.as_str()?;
  Some(match method {
    "removeprefix" => arg_str(args, 0, method).map(|p| Value::from(s.strip_prefix(p).unwrap_or(s))),
    "removesuffix" => arg_str(args, 0, method).map(|p| Value::from(s.strip_suffix(p).unwrap_or(s))),
    "rsplit" => {
      let sep = args
        .first()
        .filter(|v| !v.is_none())
        .and_then(Value::as_str);
      let maxsplit = args.get(1).and_then(Value::as_i64).unwrap_or(-1);
      let mut parts: Vec<String> = match sep {
        Some("") => {
          return Some(Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "rsplit(): empty separator",
          )));
        }
        Some(sep) => {
          if maxsplit < 0 {
            s.rsplit(sep).map(str::to_string).collect()
          } else {
            s.rsplitn(maxsplit as usize + 1, sep)
              .map(str::to_string)
              .collect()
          }
        }
        None => {
          let words: Vec<&str> = s.split_whitespace().collect();
          if maxsplit < 0 || (maxsplit as usize) + 1 >= words.len() {
            words.iter().rev().map(|w| w.to_string()).collect()
          } else {
            // Keep the head unsplit (rstrip'd whitespace handling as Python).
            let mut out = Vec::new();
            let mut rest = s.trim_end();
            for _ in 0..maxsplit {
              let idx = rest.rfind(char::is_whitespace).unwrap_or(0);
              out.push(rest[idx..].trim_start().to_string());
              rest = rest[..idx].trim_end();
            }
            out.push(rest.to_string());
            out
          }
        }
      };
      parts.reverse();
      Ok(Value::from(parts))
    }
    _ => return None,
  })
}

// ---------------------------------------------------------------------------
// Python str() / repr() of template values.

fn py_formatter(
  out: &mut minijinja::Output,
  state: &State,
  value: &Value,
) -> std::result::Result<(), minijinja::Error> {
  match value.kind() {
    ValueKind::String | ValueKind::Undefined => minijinja::escape_formatter(out, state, value),
    ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
      let mut s = String::new();
      py_str(value, &mut s)?;
      out
        .write_str(&s)
        .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "write failed"))
    }
    _ => minijinja::escape_formatter(out, state, value),
  }
}

/// Python `str(value)`.
fn py_str(v: &Value, out: &mut String) -> std::result::Result<(), minijinja::Error> {
  match v.kind() {
    ValueKind::String => {
      out.push_str(v.as_str().unwrap_or_default());
      Ok(())
    }
    ValueKind::Undefined => Ok(()),
    _ => py_repr(v, out),
  }
}

/// Python `repr(value)`.
fn py_repr(v: &Value, out: &mut String) -> std::result::Result<(), minijinja::Error> {
  match v.kind() {
    ValueKind::None => out.push_str("None"),
    ValueKind::Undefined => out.push_str(""),
    ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
    ValueKind::Number => {
      if v.is_integer() {
        let _ = write!(out, "{v}");
      } else {
        let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
        out.push_str(&py_float_repr(f, false));
      }
    }
    ValueKind::String => py_str_repr(v.as_str().unwrap_or_default(), out),
    ValueKind::Seq | ValueKind::Iterable => {
      out.push('[');
      for (i, item) in v.try_iter()?.enumerate() {
        if i > 0 {
          out.push_str(", ");
        }
        py_repr(&item, out)?;
      }
      out.push(']');
    }
    ValueKind::Map => {
      out.push('{');
      for (i, key) in v.try_iter()?.enumerate() {
        if i > 0 {
          out.push_str(", ");
        }
        py_repr(&key, out)?;
        out.push_str(": ");
        py_repr(&v.get_item(&key)?, out)?;
      }
      out.push('}');
    }
    _ => {
      let _ = write!(out, "{v}");
    }
  }
  Ok(())
}

fn py_str_repr(s: &str, out: &mut String) {
  let quote = if s.contains('\'') && !s.contains('"') {
    '"'
  } else {
    '\''
  };
  out.push(quote);
  for c in s.chars() {
    match c {
      '\\' => out.push_str("\\\\"),
      '\n' => out.push_str("\\n"),
      '\r' => out.push_str("\\r"),
      '\t' => out.push_str("\\t"),
      c if c == quote => {
        out.push('\\');
        out.push(c);
      }
      c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
        let _ = write!(out, "\\x{:02x}", c as u32);
      }
      '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{feff}' => {
        let _ = write!(out, "\\u{:04x}", c as u32);
      }
      c => out.push(c),
    }
  }
  out.push(quote);
}

/// Python `repr(float)` (`json` = true gives `json.dumps`' spelling of
/// non-finite values).
pub(crate) fn py_float_repr(x: f64, json: bool) -> String {
  if x.is_nan() {
    return if json { "NaN" } else { "nan" }.into();
  }
  if x.is_infinite() {
    return match (x > 0.0, json) {
      (true, true) => "Infinity".into(),
      (false, true) => "-Infinity".into(),
      (true, false) => "inf".into(),
      (false, false) => "-inf".into(),
    };
  }
  if x == 0.0 {
    return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
  }
  // Shortest round-trip digits and decimal exponent.
  let sci = format!("{:e}", x.abs());
  let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
  let exp: i32 = exp.parse().unwrap_or(0);
  let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
  let sign = if x < 0.0 { "-" } else { "" };
  if !(-4..16).contains(&exp) {
    let (first, rest) = digits.split_at(1);
    let frac = if rest.is_empty() {
      String::new()
    } else {
      format!(".{rest}")
    };
    let esign = if exp < 0 { '-' } else { '+' };
    return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
  }
  let n = digits.len() as i32;
  if exp >= 0 {
    let int_len = exp + 1;
    if n <= int_len {
      format!("{sign}{digits}{}.0", "0".repeat((int_len - n) as usize))
    } else {
      let (a, b) = digits.split_at(int_len as usize);
      format!("{sign}{a}.{b}")
    }
  } else {
    format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
  }
}

// ---------------------------------------------------------------------------
// tojson: transformers' json.dumps-based filter.

/// Largest `tojson(indent=...)` accepted (templates are untrusted input).
const MAX_INDENT: i64 = 256;

struct DumpOpts {
  ensure_ascii: bool,
  indent: Option<String>,
  item_sep: String,
  key_sep: String,
  sort_keys: bool,
}

fn opt_arg(
  pos: Option<Value>,
  kwargs: &Kwargs,
  name: &str,
) -> std::result::Result<Option<Value>, minijinja::Error> {
  let kw: Option<Value> = kwargs.get(name)?;
  match (pos, kw) {
    (Some(_), Some(_)) => Err(minijinja::Error::new(
      ErrorKind::TooManyArguments,
      format!("tojson(): `{name}` given twice"),
    )),
    (p, k) => Ok(p.or(k).filter(|v| !v.is_none() && !v.is_undefined())),
  }
}

fn tojson_filter(
  value: Value,
  args: Rest<Value>,
  kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
  if args.len() > 4 {
    return Err(minijinja::Error::new(
      ErrorKind::TooManyArguments,
      "tojson() takes at most 4 arguments",
    ));
  }
  let mut pos = args.0.into_iter();
  let ensure_ascii = opt_arg(pos.next(), &kwargs, "ensure_ascii")?.is_some_and(|v| v.is_true());
  let indent = match opt_arg(pos.next(), &kwargs, "indent")? {
    None => None,
    Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
    Some(v) => match v.as_i64() {
      Some(n) if n <= MAX_INDENT => Some(" ".repeat(n.max(0) as usize)),
      Some(n) => {
        return Err(minijinja::Error::new(
          ErrorKind::InvalidOperation,
          format!("tojson(): indent {n} is too large"),
        ));
      }
      None => {
        return Err(minijinja::Error::new(
          ErrorKind::InvalidOperation,
          "tojson(): indent must be an int or a string",
        ));
      }
    },
  };
  let (item_sep, key_sep) = match opt_arg(pos.next(), &kwargs, "separators")? {
    None => (
      if indent.is_some() { "," } else { ", " }.to_string(),
      ": ".to_string(),
    ),
    Some(v) => {
      let parts: Vec<Value> = v.try_iter()?.collect();
      match parts.as_slice() {
        [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
          a.as_str().unwrap_or_default().to_string(),
          b.as_str().unwrap_or_default().to_string(),
        ),
        _ => {
          return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson(): separators must be two strings",
          ));
        }
      }
    }
  };
  let sort_keys = opt_arg(pos.next(), &kwargs, "sort_keys")?.is_some_and(|v| v.is_true());
  kwargs.assert_all_used()?;
  let opts = DumpOpts {
    ensure_ascii,
    indent,
    item_sep,
    key_sep,
    sort_keys,
  };
  let mut out = String::new();
  dump(&value, &opts, 0, &mut out)?;
  Ok(Value::from_safe_string(out))
}

fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
  out.push('"');
  for c in s.chars() {
    match c {
      '"' => out.push_str("\\\""),
      '\\' => out.push_str("\\\\"),
      '\n' => out.push_str("\\n"),
      '\r' => out.push_str("\\r"),
      '\t' => out.push_str("\\t"),
      '\u{08}' => out.push_str("\\b"),
      '\u{0c}' => out.push_str("\\f"),
      c if (c as u32) < 0x20 => {
        let _ = write!(out, "\\u{:04x}", c as u32);
      }
      c if ensure_ascii && (c as u32) > 0x7e => {
        let mut buf = [0u16; 2];
        for unit in c.encode_utf16(&mut buf) {
          let _ = write!(out, "\\u{unit:04x}");
        }
      }
      c => out.push(c),
    }
  }
  out.push('"');
}

fn json_key(k: &Value) -> std::result::Result<String, minijinja::Error> {
  Ok(match k.kind() {
    ValueKind::String => k.as_str().unwrap_or_default().to_string(),
    ValueKind::None => "null".into(),
    ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
    ValueKind::Number if k.is_integer() => k.to_string(),
    ValueKind::Number => py_float_repr(f64::try_from(k.clone()).unwrap_or(f64::NAN), true),
    _ => {
      return Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!(
          "tojson(): keys must be str, int, float, bool or None, not {}",
          k.kind()
        ),
      ));
    }
  })
}

fn newline_indent(opts: &DumpOpts, level: usize, out: &mut String) {
  if let Some(ind) = &opts.indent {
    out.push('\n');
    for _ in 0..level {
      out.push_str(ind);
    }
  }
}

fn dump(
  v: &Value,
  opts: &DumpOpts,
  level: usize,
  out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
  match v.kind() {
    ValueKind::None => out.push_str("null"),
    ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
    ValueKind::Number => {
      if v.is_integer() {
        let _ = write!(out, "{v}");
      } else {
        out.push_str(&py_float_repr(
          f64::try_from(v.clone()).unwrap_or(f64::NAN),
          true,
        ));
      }
    }
    ValueKind::String => json_str(v.as_str().unwrap_or_default(), opts.ensure_ascii, out),
    ValueKind::Seq | ValueKind::Iterable => {
      let items: Vec<Value> = v.try_iter()?.collect();
      if items.is_empty() {
        out.push_str("[]");
        return Ok(());
      }
      out.push('[');
      for (i, item) in items.iter().enumerate() {
        if i > 0 {
          out.push_str(&opts.item_sep);
        }
        newline_indent(opts, level + 1, out);
        dump(item, opts, level + 1, out)?;
      }
      newline_indent(opts, level, out);
      out.push(']');
    }
    ValueKind::Map => {
      let mut entries = Vec::new();
      for key in v.try_iter()? {
        let val = v.get_item(&key)?;
        entries.push((json_key(&key)?, val));
      }
      if opts.sort_keys {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
      }
      if entries.is_empty() {
        out.push_str("{}");
        return Ok(());
      }
      out.push('{');
      for (i, (k, val)) in entries.iter().enumerate() {
        if i > 0 {
          out.push_str(&opts.item_sep);
        }
        newline_indent(opts, level + 1, out);
        json_str(k, opts.ensure_ascii, out);
        out.push_str(&opts.key_sep);
        dump(val, opts, level + 1, out)?;
      }
      newline_indent(opts, level, out);
      out.push('}');
    }
    ValueKind::Undefined => {
      return Err(minijinja::Error::new(
        ErrorKind::UndefinedError,
        "tojson(): value is undefined",
      ));
    }
    other => {
      return Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson(): object of type {other} is not JSON serializable"),
      ));
    }
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;
  use serde_json::json;

  fn render(src: &str, messages: &[Message], opts: &ChatOptions) -> Result<String> {
    let mut special = Map::new();
    special.insert("bos_token".into(), json!("<s>"));
    special.insert("eos_token".into(), json!("</s>"));
    ChatTemplate::new("t", src)?.render(messages, opts, &special)
  }

  #[test]
  fn float_repr_matches_python() {
    for (x, want) in [
      (1.0, "1.0"),
      (0.1, "0.1"),
      (1e-5, "1e-05"),
      (1e-4, "0.0001"),
      (1e16, "1e+16"),
      (1e15, "1000000000000000.0"),
      (123.456, "123.456"),
      (-2.5e-7, "-2.5e-07"),
      (1.5e300, "1.5e+300"),
      (0.5, "0.5"),
    ] {
      assert_eq!(py_float_repr(x, false), want, "{x}");
    }
  }

  #[test]
  fn values_print_like_python() {
    let src = "{{ none_v }}|{{ t }}|{{ l }}|{{ d }}|{{ f }}|{{ messages[0].content }}";
    let mut opts = ChatOptions::default();
    opts.extra.insert("none_v".into(), json!(null));
    opts.extra.insert("t".into(), json!(true));
    opts.extra.insert("l".into(), json!(["a", 1, "it's"]));
    opts.extra.insert("d".into(), json!({"k": "v", "n": null}));
    opts.extra.insert("f".into(), json!(0.00001));
    let out = render(src, &[Message::user("hi")], &opts).unwrap();
    assert_eq!(
      out,
      "None|True|['a', 1, \"it's\"]|{'k': 'v', 'n': None}|1e-05|hi"
    );
  }

  #[test]
  fn tojson_like_transformers() {
    let mut opts = ChatOptions::default();
    opts.extra.insert(
      "x".into(),
      json!({"b": 1, "a": [1.5, "é<>&", null, true], "c": {}}),
    );
    let out = render("{{ x|tojson }}", &[Message::user("hi")], &opts).unwrap();
    assert_eq!(out, r#"{"b": 1, "a": [1.5, "é<>&", null, true], "c": {}}"#);
    let out = render(
      "{{ x|tojson(indent=2, sort_keys=true) }}",
      &[Message::user("hi")],
      &opts,
    )
    .unwrap();
    assert_eq!(
      out,
      "{\n  \"a\": [\n    1.5,\n    \"é<>&\",\n    null,\n    true\n  ],\n  \"b\": 1,\n  \"c\": {}\n}"
    );
    let out = render(
      "{{ x.a|tojson(ensure_ascii=true) }}",
      &[Message::user("hi")],
      &opts,
    )
    .unwrap();
    assert_eq!(out, r#"[1.5, "\u00e9<>&", null, true]"#);
    let out = render(
      "{{ x.a|tojson(separators=(',', ':')) }}",
      &[Message::user("hi")],
      &opts,
    )
    .unwrap();
    assert_eq!(out, r#"[1.5,"é<>&",null,true]"#);
  }

  #[test]
  fn raise_exception_message_reaches_error() {
    let e = render(
      "{{ raise_exception('Roles must alternate') }}",
      &[Message::user("x")],
      &ChatOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Roles must alternate"), "{e}");
  }

  #[test]
  fn syntax_error_names_line() {
    let e = ChatTemplate::new("bad", "line1\n{% for m in messages %}\n{{ m.content }")
      .unwrap_err()
      .to_string();
    assert!(e.contains("`bad`") && e.contains("line"), "{e}");
  }

  #[test]
  fn python_methods() {
    let src = "{{ messages[0].content.strip().split(' ')|tojson }}|{{ 'abc'.startswith('a') }}|\
               {{ messages[0].get('role') }}|{{ 'x.y.z'.rsplit('.', 1)|tojson }}|{{ 'pre_x'.removeprefix('pre_') }}|\
               {% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}";
    let out = render(src, &[Message::user("  a b ")], &ChatOptions::default()).unwrap();
    assert_eq!(out, r#"["a", "b"]|True|user|["x.y", "z"]|x|a=1"#);
  }

  #[test]
  fn generation_tag_and_loop_controls() {
    let src = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}\
               {%- generation -%} [{{ m.content }}] {%- endgeneration -%}{% endfor %}";
    let out = render(
      src,
      &[Message::user("a"), Message::user("b")],
      &ChatOptions::default(),
    )
    .unwrap();
    assert_eq!(out, "[a]");
  }

  #[test]
  fn normalization_drops_nulls_and_aliases_reasoning() {
    let m = Message::assistant("x")
      .with("tool_calls", json!(null))
      .with("reasoning", json!("why"));
    let src = "{{ messages[0].tool_calls is defined }}|{{ messages[0].thinking }}|{{ messages[0].reasoning_content }}|\
               {{ messages[0].keys()|list|tojson }}";
    let out = render(src, &[m], &ChatOptions::default()).unwrap();
    assert_eq!(
      out,
      r#"False|why|why|["thinking", "role", "content", "reasoning", "reasoning_content"]"#
    );
  }

  #[test]
  fn continue_final_message() {
    let src = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>\n{% endfor %}";
    let opts = ChatOptions {
      continue_final_message: true,
      ..Default::default()
    };
    let out = render(
      src,
      &[Message::user("hi"), Message::assistant("Sure,")],
      &opts,
    )
    .unwrap();
    assert_eq!(out, "<user>hi</s>\n<assistant>Sure,");
  }

  #[test]
  fn named_template_selection() {
    let mut m = BTreeMap::new();
    m.insert("default".to_string(), "D".to_string());
    m.insert("tool_use".to_string(), "T".to_string());
    let t = ChatTemplates::Named(m);
    assert_eq!(t.select(None, false).unwrap().1, "D");
    assert_eq!(t.select(None, true).unwrap().1, "T");
    assert_eq!(t.select(Some("tool_use"), false).unwrap().1, "T");
    assert_eq!(
      t.select(Some("{{ 1 }}"), false).unwrap(),
      ("<inline>".to_string(), "{{ 1 }}")
    );
    let mut m = BTreeMap::new();
    m.insert("rag".to_string(), "R".to_string());
    let e = ChatTemplates::Named(m)
      .select(None, false)
      .unwrap_err()
      .to_string();
    assert!(e.contains("rag"), "{e}");
  }

  #[test]
  fn strftime_now_formats() {
    let out = render(
      "{{ strftime_now('%Y') }}",
      &[Message::user("x")],
      &ChatOptions::default(),
    )
    .unwrap();
    assert_eq!(out.len(), 4);
    assert!(out.chars().all(|c| c.is_ascii_digit()));
    let e = render(
      "{{ strftime_now('%Q%') }}",
      &[Message::user("x")],
      &ChatOptions::default(),
    );
    assert!(e.is_err());
  }

  #[test]
  fn empty_conversation_is_an_error() {
    assert!(render("x", &[], &ChatOptions::default()).is_err());
  }
}
