//! gpt-oss "harmony" replies (python `openai_harmony`; vLLM `openai` tool
//! parser): messages `<|channel|>analysis<|message|>...<|end|>`,
//! `<|start|>assistant<|channel|>final<|message|>...`, and tool calls
//! `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>`
//! (the recipient may also come before `<|channel|>`). The analysis
//! channel is reasoning, the final channel the content.

use super::scan::{self, PartialCall};
use super::{ToolCall, new_call};

const MESSAGE: &str = "<|message|>";
const CHANNEL: &str = "<|channel|>";
const ENDS: [&str; 4] = ["<|end|>", "<|call|>", "<|return|>", "<|start|>"];

/// A reply split by channel.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Harmony {
  /// Analysis-channel text.
  pub reasoning: String,
  /// Final-channel (and plain commentary) text.
  pub content: String,
  /// `to=functions.*` messages.
  pub calls: Vec<ToolCall>,
}

struct Msg<'a> {
  channel: &'a str,
  recipient: Option<&'a str>,
  body: &'a str,
  /// The body's end marker was seen.
  complete: bool,
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
  let i = header.find(key)?;
  let v = &header[i + key.len()..];
  let end = v
    .find(|c: char| c.is_whitespace() || c == '<')
    .unwrap_or(v.len());
  Some(&v[..end])
}

fn messages(text: &str) -> Option<Vec<Msg<'_>>> {
  if !text.contains(MESSAGE) {
    return None;
  }
  let mut out = Vec::new();
  let mut rest = text;
  while let Some(i) = rest.find(MESSAGE) {
    let header = &rest[..i];
    let body_all = &rest[i + MESSAGE.len()..];
    let end = ENDS
      .iter()
      .filter_map(|e| body_all.find(e).map(|p| (p, e.len())))
      .min();
    let (body, next) = match end {
      Some((p, l)) => (&body_all[..p], &body_all[p + l..]),
      None => (body_all, ""),
    };
    out.push(Msg {
      channel: header_value(header, CHANNEL).unwrap_or(""),
      recipient: header_value(header, "to="),
      body,
      complete: end.is_some(),
    });
    rest = next;
  }
  Some(out)
}

/// Parse a finished reply; `None` when it has no harmony message.
pub fn parse(text: &str) -> Option<Harmony> {
  let mut h = Harmony::default();
  for m in messages(text)? {
    match m.recipient {
      Some(r) if r.starts_with("functions.") => {
        let name = &r["functions.".len()..];
        let args = m.body.trim();
        // Arguments must be JSON; otherwise the whole reply is text.
        serde_json::from_str::<serde_json::Value>(args).ok()?;
        h.calls.push(new_call(name, scan::compact(args))?);
      }
      _ if m.channel == "analysis" => h.reasoning.push_str(m.body),
      _ => h.content.push_str(m.body),
    }
  }
  Some(h)
}

/// For streaming: the reasoning and content so far (tool-call bodies and
/// an unfinished header are held back).
pub fn view(text: &str) -> (String, String) {
  let mut r = String::new();
  let mut c = String::new();
  if let Some(ms) = messages(text) {
    for m in ms {
      match m.recipient {
        Some(_) => {}
        None if m.channel == "analysis" => r.push_str(m.body),
        None => c.push_str(m.body),
      }
    }
  }
  (r, c)
}

/// For streaming: the `to=functions.*` messages so far (an arguments
/// object streams as it grows; see [`scan`]).
pub fn partial(text: &str) -> Vec<PartialCall> {
  let Some(ms) = messages(text) else {
    return Vec::new();
  };
  ms.iter()
    .filter_map(|m| {
      let name = m.recipient?.strip_prefix("functions.")?;
      let body = m.body.trim_start();
      let (args, done) = if body.starts_with('{') {
        let (a, end) = scan::compact_prefix(body);
        (Some(a), end.is_some())
      } else {
        (None, false)
      };
      Some(PartialCall {
        name: Some(name.to_string()),
        args,
        args_done: done && m.complete,
      })
    })
    .collect()
}
