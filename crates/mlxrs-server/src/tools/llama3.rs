//! Llama 3.1 / 3.2 / 3.3 JSON tool calls (python `mlx_lm` tool parser
//! `llama3`, vLLM `llama3_json`): the whole reply is
//! `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`;
//! several calls separated by `;`). Any other reply is plain text.

use serde_json::Value;

use super::scan::{self, PartialCall};
use super::{Parsed, call_from_json};

const KEYS: &[&str] = &["parameters", "arguments"];

/// Llama 3's built-in tool prefix token.
pub const PYTHON_TAG: &str = "<|python_tag|>";

/// Parse a finished reply; `None` when it is not (only) tool calls.
pub fn parse(text: &str) -> Option<Parsed> {
  let t = text.trim();
  let t = t.strip_prefix(PYTHON_TAG).unwrap_or(t).trim_start();
  if !t.starts_with('{') {
    return None;
  }
  let mut calls = Vec::new();
  let mut rest = t;
  loop {
    let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    let v = it.next()?.ok()?;
    let used = it.byte_offset();
    calls.push(call_from_json(&v, &rest[..used], KEYS)?);
    rest = rest[used..].trim_start();
    rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    if rest.is_empty() {
      break;
    }
    if !rest.starts_with('{') {
      return None;
    }
  }
  Some(Parsed {
    content: String::new(),
    calls,
  })
}

/// For streaming: a reply that starts like a call is held back whole (0);
/// otherwise no call can follow (`None`).
pub fn call_start(text: &str) -> Option<usize> {
  let t = text.trim_start();
  if t.is_empty() || t.starts_with('{') || t.starts_with(PYTHON_TAG) || PYTHON_TAG.starts_with(t) {
    Some(0)
  } else {
    None
  }
}

/// For streaming: the calls so far (see [`scan`]).
pub fn partial(text: &str) -> Vec<PartialCall> {
  let t = text.trim_start();
  let mut rest = t.strip_prefix(PYTHON_TAG).unwrap_or(t).trim_start();
  let mut out = Vec::new();
  while let Some((c, end)) = scan::object(rest, KEYS) {
    out.push(c);
    let Some(e) = end else { break };
    rest = rest[e..].trim_start();
    rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    if rest.is_empty() {
      break;
    }
  }
  out
}
