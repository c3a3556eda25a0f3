//! Mistral tool calls (python `mlx_lm` tool parser `mistral`, vLLM
//! `mistral`): `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`
//! (v0.3 / Nemo / Small), or the newer `[TOOL_CALLS]name[ARGS]{...}` per
//! call (Magistral / Devstral 2507+). Text before the marker is content.

use serde_json::Value;

use super::scan::{self, PartialCall};
use super::{Parsed, call_from_json};

const KEYS: &[&str] = &["arguments", "parameters"];

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
      let (items, raws) = match v {
        Value::Array(a) => {
          let raws: Vec<&str> = scan::array_objects(p).into_iter().map(|(r, _)| r).collect();
          (a, raws)
        }
        o @ Value::Object(_) => (vec![o], vec![p]),
        _ => return None,
      };
      if items.is_empty() {
        return None;
      }
      for (k, it) in items.iter().enumerate() {
        calls.push(call_from_json(
          it,
          raws.get(k).copied().unwrap_or(""),
          KEYS,
        )?);
      }
    } else {
      let (name, args) = p.split_once(ARGS)?;
      let v: Value = serde_json::from_str(args.trim()).ok()?;
      let obj = serde_json::json!({"name": name.trim(), "arguments": v});
      let raw = format!("{{\"arguments\": {}}}", args.trim());
      calls.push(call_from_json(&obj, &raw, &["arguments"])?);
    }
  }
  Some(Parsed { content, calls })
}

/// For streaming: where a call starts.
pub fn call_start(text: &str) -> Option<usize> {
  text.find(START)
}

/// For streaming: the calls so far (see [`scan`]).
pub fn partial(text: &str) -> Vec<PartialCall> {
  let mut out = Vec::new();
  let Some(first) = text.find(START) else {
    return out;
  };
  for part in text[first..].split(START).skip(1) {
    let p = part.trim_start();
    if p.starts_with('[') {
      for (item, _) in scan::array_objects(p) {
        if let Some((c, _)) = scan::object(item, KEYS) {
          out.push(c);
        }
      }
    } else if p.starts_with('{') {
      if let Some((c, _)) = scan::object(p, KEYS) {
        out.push(c);
      }
    } else if let Some((name, args)) = p.split_once(ARGS) {
      let args = args.trim_start();
      let (a, end) = if args.starts_with('{') {
        let (a, end) = scan::compact_prefix(args);
        (Some(a), end)
      } else {
        (None, None)
      };
      out.push(PartialCall {
        name: Some(name.trim().to_string()),
        args: a,
        args_done: end.is_some(),
      });
    }
  }
  out
}
