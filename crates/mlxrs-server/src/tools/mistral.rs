//! Mistral tool calls (python `mlx_lm` tool parser `mistral`, vLLM
//! `mistral`): `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`
//! (v0.3 / Nemo / Small), or the newer `[TOOL_CALLS]name[ARGS]{...}` per
//! call (Magistral / Devstral 2507+). Text before the marker is content.

use serde_json::Value;

use super::{Parsed, call_from_json};

/// The marker (a control token in Mistral tokenizers).
pub const START: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";

/// Parse a finished reply; `None` when the calls do not parse.
pub fn parse(text: &str) -> Option<Parsed> {
  let first = text.find(START)?;
  let content = text[..first].trim().to_string();
  let mut calls = Vec::new();
  for part in text[first..].split(START).skip(1) {
    let p = part.trim();
    if p.starts_with('[') || p.starts_with('{') {
      let v: Value = {
        let mut it = serde_json::Deserializer::from_str(p).into_iter::<Value>();
        it.next()?.ok()?
      };
      let items = match v {
        Value::Array(a) => a,
        o @ Value::Object(_) => vec![o],
        _ => return None,
      };
      if items.is_empty() {
        return None;
      }
      for it in &items {
        calls.push(call_from_json(it, &["arguments", "parameters"])?);
      }
    } else {
      let (name, args) = p.split_once(ARGS)?;
      let v: Value = serde_json::from_str(args.trim()).ok()?;
      let obj = serde_json::json!({"name": name.trim(), "arguments": v});
      calls.push(call_from_json(&obj, &["arguments"])?);
    }
  }
  Some(Parsed { content, calls })
}

/// For streaming: where a call starts.
pub fn call_start(text: &str) -> Option<usize> {
  text.find(START)
}
