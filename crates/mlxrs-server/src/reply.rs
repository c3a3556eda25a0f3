//! A chat reply split into reasoning, content and tool calls (python
//! `mlx_lm.server`'s reply post-processing), whole ([`finish`]) or as
//! streamed deltas ([`ReplyStream`]): reasoning via [`crate::reasoning`]
//! (or harmony channels), then the family's tool-call parser
//! ([`crate::tools`]). Text that could still become a marker is held back
//! while streaming; a tool call is sent as OpenAI's deltas while it is
//! generated: `id`, `type` and `function.name` once the name is complete,
//! then `function.arguments` piece by piece ([`crate::tools::scan`]), the
//! rest when the choice ends. The pieces concatenate to the finished
//! call's `arguments`. A call whose JSON turns out broken at the end
//! cannot be taken back: its text then also comes as content.

use crate::reasoning::{self, Think};
use crate::tools::scan::PartialCall;
use crate::tools::{ToolCall, ToolFormat, harmony};
use serde_json::{Value, json};

/// How to split one request's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyConfig {
  /// `<think>` handling.
  pub think: Think,
  /// gpt-oss channels (analysis -> reasoning, final -> content).
  pub harmony: bool,
  /// Parse tool calls in this format.
  pub tools: Option<ToolFormat>,
  /// Keep more than one call.
  pub parallel: bool,
}

impl ReplyConfig {
  /// Plain text, nothing split.
  pub fn plain() -> ReplyConfig {
    ReplyConfig {
      think: Think::Off,
      harmony: false,
      tools: None,
      parallel: true,
    }
  }
}

/// A finished reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
  /// Reasoning text, if the reply had any.
  pub reasoning: Option<String>,
  /// The answer text.
  pub content: String,
  /// Parsed tool calls.
  pub calls: Vec<ToolCall>,
}

/// Split a finished reply.
pub fn finish(cfg: &ReplyConfig, text: &str) -> Reply {
  let mut out = if cfg.harmony {
    match harmony::parse(text) {
      Some(h) => Reply {
        reasoning: (!h.reasoning.is_empty()).then_some(h.reasoning),
        content: h.content,
        calls: if cfg.tools.is_some() {
          h.calls
        } else {
          Vec::new()
        },
      },
      None => Reply {
        content: text.to_string(),
        ..Reply::default()
      },
    }
  } else {
    let (reasoning, rest) = reasoning::split(cfg.think, text);
    let rest = if reasoning.is_some() {
      rest.trim_start().to_string()
    } else {
      rest
    };
    match cfg.tools.and_then(|f| f.parse(&rest)) {
      Some(p) if !p.calls.is_empty() => Reply {
        reasoning,
        content: p.content,
        calls: p.calls,
      },
      _ => Reply {
        reasoning,
        content: rest,
        calls: Vec::new(),
      },
    }
  };
  if !cfg.parallel {
    out.calls.truncate(1);
  }
  out
}

/// The reasoning and content that can be sent so far.
fn view(cfg: &ReplyConfig, text: &str) -> (String, String) {
  if cfg.harmony {
    return harmony::view(text);
  }
  let (r, rest) = reasoning::view(cfg.think, text);
  let Some(rest) = rest else {
    return (r, String::new());
  };
  let rest = if r.is_empty()
    && !text.trim_start().starts_with("<think>")
    && cfg.think != (Think::Tags { open: true })
  {
    rest.as_str()
  } else {
    rest.trim_start()
  };
  let Some(f) = cfg.tools else {
    return (r, rest.trim_end().to_string());
  };
  let cut = f.call_start(rest).unwrap_or(rest.len());
  let mut c = &rest[..cut];
  if let Some(m) = f.marker() {
    c = &c[..c.len() - reasoning::partial_suffix(c, m)];
  }
  // Trailing whitespace waits (a finished reply's content is trimmed
  // around calls); `finish` sends it when it stays.
  (r, c.trim_end().to_string())
}

/// The new part of `now` after `sent` (nothing if `now` no longer
/// extends it).
/// The tool calls of `text` as far as they are generated.
fn partial_calls(cfg: &ReplyConfig, text: &str) -> Vec<PartialCall> {
  if cfg.tools.is_none() {
    return Vec::new();
  }
  if cfg.harmony {
    return harmony::partial(text);
  }
  let Some(f) = cfg.tools else {
    return Vec::new();
  };
  let (_, rest) = reasoning::view(cfg.think, text);
  let Some(rest) = rest else {
    return Vec::new();
  };
  match f.call_start(&rest) {
    Some(cut) => f.partial(&rest[cut..]),
    None => Vec::new(),
  }
}

fn extend(sent: &mut String, now: &str) -> String {
  if now.len() > sent.len() && now.starts_with(sent.as_str()) {
    let d = now[sent.len()..].to_string();
    sent.push_str(&d);
    d
  } else {
    String::new()
  }
}

/// Streams one choice's reply as deltas.
#[derive(Debug)]
pub struct ReplyStream {
  cfg: ReplyConfig,
  /// Decided: the reply has no reasoning and no calls to look for, so
  /// text passes through as it comes.
  through: bool,
  text: String,
  sent_reasoning: String,
  sent_content: String,
  /// Calls sent so far: id, name, arguments.
  sent_calls: Vec<(String, String, String)>,
}

/// Deltas to send.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Delta {
  /// New reasoning text.
  pub reasoning: String,
  /// New content text.
  pub content: String,
  /// OpenAI `tool_calls` delta items (`index`, and `id` / `type` /
  /// `function.name` on a call's first item, `function.arguments`).
  pub calls: Vec<Value>,
}

impl ReplyStream {
  /// A fresh stream.
  pub fn new(cfg: ReplyConfig) -> ReplyStream {
    ReplyStream {
      through: cfg == ReplyConfig::plain(),
      cfg,
      text: String::new(),
      sent_reasoning: String::new(),
      sent_content: String::new(),
      sent_calls: Vec::new(),
    }
  }

  /// Add generated text; the deltas that are now safe to send.
  pub fn push(&mut self, text: &str) -> Delta {
    self.text.push_str(text);
    if self.through {
      self.sent_content.push_str(text);
      return Delta {
        content: text.to_string(),
        ..Delta::default()
      };
    }
    let (r, c) = view(&self.cfg, &self.text);
    let mut d = Delta {
      reasoning: extend(&mut self.sent_reasoning, &r),
      content: extend(&mut self.sent_content, &c),
      calls: Vec::new(),
    };
    let max_calls = if self.cfg.parallel { usize::MAX } else { 1 };
    for (k, pc) in partial_calls(&self.cfg, &self.text)
      .into_iter()
      .enumerate()
      .take(max_calls)
    {
      if k == self.sent_calls.len() {
        let Some(name) = pc.name else { break };
        let id = crate::tools::new_call(&name, String::new())
          .map(|c| c.id)
          .unwrap_or_default();
        if id.is_empty() {
          break;
        }
        d.calls
          .push(json!({"index": k, "id": id, "type": "function",
                            "function": {"name": name, "arguments": ""}}));
        self.sent_calls.push((id, name, String::new()));
      }
      if let (Some(a), Some(sent)) = (pc.args, self.sent_calls.get_mut(k)) {
        let piece = extend(&mut sent.2, &a);
        if !piece.is_empty() {
          d.calls
            .push(json!({"index": k, "function": {"arguments": piece}}));
        }
      }
    }
    // No tools, and the reply did not open with `<think>`: the rest of it
    // is plain content (saves re-scanning the text at every token).
    let t = self.text.trim_start();
    if self.cfg.tools.is_none()
      && !self.cfg.harmony
      && self.cfg.think != (Think::Tags { open: true })
      && t.len() >= "<think>".len()
      && !t.starts_with("<think>")
      && self.text.starts_with(self.sent_content.as_str())
    {
      d.content += &self.text[self.sent_content.len()..];
      self.sent_content = self.text.clone();
      self.through = true;
    }
    d
  }

  /// The choice ended: the last deltas and the whole reply.
  pub fn finish(&mut self) -> (Delta, Reply) {
    let mut reply = finish(&self.cfg, &self.text);
    let mut d = Delta {
      reasoning: extend(
        &mut self.sent_reasoning,
        reply.reasoning.as_deref().unwrap_or(""),
      ),
      content: extend(&mut self.sent_content, &reply.content),
      calls: Vec::new(),
    };
    for (k, call) in reply.calls.iter_mut().enumerate() {
      match self.sent_calls.get_mut(k) {
        Some((id, name, args))
          if *name == call.name && call.arguments.starts_with(args.as_str()) =>
        {
          // The call streamed: the rest of its arguments, under its id.
          call.id = id.clone();
          let piece = extend(args, &call.arguments);
          if !piece.is_empty() {
            d.calls
              .push(json!({"index": k, "function": {"arguments": piece}}));
          }
        }
        Some(_) => {}
        None => {
          let mut tc = call.to_json();
          tc["index"] = json!(k);
          d.calls.push(tc);
        }
      }
    }
    (d, reply)
  }

  /// Calls already sent while streaming (a finished reply whose calls do
  /// not parse still had them).
  pub fn streamed_calls(&self) -> usize {
    self.sent_calls.len()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn cfg(tools: Option<ToolFormat>) -> ReplyConfig {
    ReplyConfig {
      think: Think::Tags { open: false },
      harmony: false,
      tools,
      parallel: true,
    }
  }

  /// Stream `text` in pieces of `n` bytes (char-aligned) and collect.
  fn stream(c: ReplyConfig, text: &str, n: usize) -> (String, String, Reply) {
    let mut s = ReplyStream::new(c);
    let (mut r, mut k) = (String::new(), String::new());
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(n) {
      let d = s.push(&piece.iter().collect::<String>());
      r += &d.reasoning;
      k += &d.content;
    }
    let (d, reply) = s.finish();
    r += &d.reasoning;
    k += &d.content;
    (r, k, reply)
  }

  #[test]
  fn qwen3_thinking_then_tool_call_streams() {
    // Qwen3-style output: reasoning, then a call.
    let t = "<think>\nNeed the weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    for n in [1, 3, 7, 1000] {
      let (r, c, reply) = stream(cfg(Some(ToolFormat::Hermes)), t, n);
      assert_eq!(r, "Need the weather.", "piece {n}");
      assert!(c.starts_with("Let me check."), "piece {n}: {c:?}");
      assert!(!c.contains("tool_call"), "piece {n}: {c:?}");
      assert_eq!(reply.calls.len(), 1);
      assert_eq!(reply.calls[0].name, "get_weather");
      assert_eq!(reply.calls[0].arguments, "{\"city\":\"Paris\"}");
      assert_eq!(reply.content, "Let me check.");
    }
  }

  #[test]
  fn broken_call_is_text() {
    let t = "<tool_call>\n{\"name\": \"f\", \"arguments\": {oops}\n</tool_call>";
    let (_, c, reply) = stream(cfg(Some(ToolFormat::Hermes)), t, 2);
    assert!(reply.calls.is_empty());
    assert_eq!(reply.content, t);
    assert_eq!(c, t);
  }

  #[test]
  fn plain_passes_through() {
    let (r, c, reply) = stream(ReplyConfig::plain(), "  a <think> b", 2);
    assert_eq!((r.as_str(), c.as_str()), ("", "  a <think> b"));
    assert_eq!(reply.reasoning, None);
  }

  #[test]
  fn long_plain_reply_passes_through() {
    let c = cfg(None);
    let mut s = ReplyStream::new(c);
    assert_eq!(s.push("He").content, "He");
    assert_eq!(s.push("llo w").content, "llo w");
    assert!(s.through);
    assert_eq!(s.push("orld ").content, "orld ");
    let (d, r) = s.finish();
    assert_eq!(d, Delta::default());
    assert_eq!(r.content, "Hello world ");
  }

  #[test]
  fn text_without_think_is_unchanged() {
    let (r, c, _) = stream(cfg(None), "  hello", 1);
    assert_eq!((r.as_str(), c.as_str()), ("", "  hello"));
  }

  /// A call rebuilt from stream deltas: id, name, arguments, argument pieces.
  type Rebuilt = (String, String, String, usize);

  /// Stream `text` in pieces of `n` chars; the calls rebuilt from the
  /// deltas, the content and the reply.
  fn stream_calls(c: ReplyConfig, text: &str, n: usize) -> (Vec<Rebuilt>, String, Reply) {
    let mut s = ReplyStream::new(c);
    let mut calls: Vec<Rebuilt> = Vec::new();
    let mut content = String::new();
    let mut take = |d: Delta, calls: &mut Vec<Rebuilt>| {
      content += &d.content;
      for v in d.calls {
        let k = v["index"].as_u64().unwrap() as usize;
        if let Some(id) = v["id"].as_str() {
          assert_eq!(k, calls.len(), "a new call's index");
          assert_eq!(v["type"], "function");
          calls.push((
            id.into(),
            v["function"]["name"].as_str().unwrap().into(),
            String::new(),
            0,
          ));
        }
        let a = v["function"]["arguments"].as_str().unwrap();
        if !a.is_empty() {
          calls[k].2 += a;
          calls[k].3 += 1;
        }
      }
    };
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(n) {
      let d = s.push(&piece.iter().collect::<String>());
      take(d, &mut calls);
    }
    let (d, reply) = s.finish();
    take(d, &mut calls);
    (calls, content, reply)
  }

  fn check_calls(c: ReplyConfig, text: &str, names: &[&str]) {
    for n in [1, 2, 5, 13, 10_000] {
      let (calls, content, reply) = stream_calls(c, text, n);
      let got: Vec<(String, String, String)> = calls
        .iter()
        .map(|(i, n, a, _)| (i.clone(), n.clone(), a.clone()))
        .collect();
      let want: Vec<(String, String, String)> = reply
        .calls
        .iter()
        .map(|c| (c.id.clone(), c.name.clone(), c.arguments.clone()))
        .collect();
      assert_eq!(got, want, "pieces of {n}: {text}");
      let ns: Vec<&str> = reply.calls.iter().map(|c| c.name.as_str()).collect();
      assert_eq!(ns, names, "pieces of {n}");
      for (_, _, a, _) in &calls {
        serde_json::from_str::<Value>(a).unwrap();
      }
      assert_eq!(content, reply.content, "pieces of {n}");
      if n == 1 {
        // Arguments arrive piece by piece, not at the end.
        assert!(calls.iter().all(|c| c.3 > 3), "{calls:?}");
      }
    }
  }

  #[test]
  fn hermes_calls_stream_their_arguments() {
    let t = "<think>\nTwo cities.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris, \\\"FR\\\"\", \"days\": [1, 2, 3]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"Europe/Oslo\", \"format\": \"24h\"}}\n</tool_call>";
    check_calls(
      cfg(Some(ToolFormat::Hermes)),
      t,
      &["get_weather", "get_time"],
    );
    let (calls, ..) = stream_calls(cfg(Some(ToolFormat::Hermes)), t, 3);
    assert_eq!(
      calls[0].2,
      "{\"city\":\"Paris, \\\"FR\\\"\",\"days\":[1,2,3]}"
    );
  }

  #[test]
  fn llama3_mistral_harmony_calls_stream() {
    let plain = ReplyConfig {
      think: Think::Off,
      ..cfg(Some(ToolFormat::Llama3))
    };
    check_calls(
      plain,
      "<|python_tag|>{\"name\": \"search\", \"parameters\": {\"query\": \"rust mlx\", \"limit\": 10}}; {\"name\": \"open\", \"parameters\": {\"url\": \"https://example.com/a b\"}}",
      &["search", "open"],
    );
    let m = ReplyConfig {
      tools: Some(ToolFormat::Mistral),
      ..plain
    };
    check_calls(
      m,
      "[TOOL_CALLS] [{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Paris, France\", \"format\": \"celsius\"}, \"id\": \"aBcDe1234\"}, {\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}]",
      &["get_current_weather", "get_time"],
    );
    check_calls(
      m,
      "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Lyon\", \"unit\": \"C\"}",
      &["get_weather"],
    );
    let h = ReplyConfig {
      think: Think::Off,
      harmony: true,
      tools: Some(ToolFormat::Harmony),
      parallel: true,
    };
    check_calls(
      h,
      "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\": \"San Francisco\", \"unit\": \"F\"}<|call|>",
      &["get_weather"],
    );
  }

  #[test]
  fn one_call_without_parallel_and_string_arguments() {
    let t = "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": 1}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
    let one = ReplyConfig {
      parallel: false,
      ..cfg(Some(ToolFormat::Hermes))
    };
    let (calls, _, reply) = stream_calls(one, t, 2);
    assert_eq!(calls.len(), 1);
    assert_eq!(reply.calls.len(), 1);
    assert_eq!(
      (calls[0].1.as_str(), calls[0].2.as_str()),
      ("a", "{\"x\":1}")
    );
    // Arguments given as a JSON string come whole at the end.
    let t = "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>";
    let (calls, _, reply) = stream_calls(cfg(Some(ToolFormat::Hermes)), t, 1);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].2, reply.calls[0].arguments);
    assert_eq!(calls[0].2, "{\"x\": 1}");
  }

  #[test]
  fn a_call_that_breaks_late_falls_back_to_text() {
    let t = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1, oops}\n</tool_call>";
    let (calls, content, reply) = stream_calls(cfg(Some(ToolFormat::Hermes)), t, 1);
    assert!(reply.calls.is_empty());
    assert_eq!(reply.content, t);
    assert_eq!(content, t);
    // The name and the arguments as generated had been sent (the scanner
    // follows the structure, it does not validate tokens).
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].2, "{\"a\":1,oops}");
  }
}
