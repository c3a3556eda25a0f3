//! Qwen / Hermes tool calls (python `mlx_lm` tool parser `json_tools`,
//! vLLM `hermes`): `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
//! one block per call; text outside the blocks is the reply's content.

use super::scan::{self, PartialCall};
use super::{Parsed, call_from_json};

const KEYS: &[&str] = &["arguments", "parameters"];

/// The start marker.
pub const START: &str = "<tool_call>";
/// The end marker.
pub const END: &str = "</tool_call>";

/// Parse a finished reply; `None` when a block does not parse.
pub fn parse(text: &str) -> Option<Parsed> {
  let first = text.find(START)?;
  let mut content = text[..first].to_string();
  let mut calls = Vec::new();
  let mut rest = &text[first..];
  while let Some(i) = rest.find(START) {
    content.push_str(&rest[..i]);
    let body_start = i + START.len();
    let (body, after) = match rest[body_start..].find(END) {
      Some(j) => (
        &rest[body_start..body_start + j],
        &rest[body_start + j + END.len()..],
      ),
      // An unclosed last block (the model stopped at EOS).
      None => (&rest[body_start..], ""),
    };
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    calls.push(call_from_json(&v, body.trim(), KEYS)?);
    rest = after;
  }
  content.push_str(rest);
  Some(Parsed {
    content: content.trim().to_string(),
    calls,
  })
}

/// The byte offset where a (possible) tool call starts, for streaming:
/// content before it can be sent.
pub fn call_start(text: &str) -> Option<usize> {
  text.find(START)
}

/// For streaming: the calls so far (see [`scan`]).
pub fn partial(text: &str) -> Vec<PartialCall> {
  let mut out = Vec::new();
  let mut rest = text;
  while let Some(i) = rest.find(START) {
    let body = &rest[i + START.len()..];
    let (body, after) = match body.find(END) {
      Some(j) => (&body[..j], Some(&body[j + END.len()..])),
      None => (body, None),
    };
    match scan::object(body, KEYS) {
      Some((c, _)) => out.push(c),
      None => break,
    }
    match after {
      Some(a) => rest = a,
      None => break,
    }
  }
  out
}
