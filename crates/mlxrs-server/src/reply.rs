//! A chat reply split into reasoning, content and tool calls (python
//! `mlx_lm.server`'s reply post-processing), whole ([`finish`]) or as
//! streamed deltas ([`ReplyStream`]): reasoning via [`crate::reasoning`]
//! (or harmony channels), then the family's tool-call parser
//! ([`crate::tools`]). Text that could still become a marker is held back
//! while streaming; calls are sent when the choice ends.

use crate::reasoning::{self, Think};
use crate::tools::{ToolCall, ToolFormat, harmony};

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
}

/// Deltas to send.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Delta {
  /// New reasoning text.
  pub reasoning: String,
  /// New content text.
  pub content: String,
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
    }
  }

  /// Add generated text; the deltas that are now safe to send.
  pub fn push(&mut self, text: &str) -> Delta {
    self.text.push_str(text);
    if self.through {
      self.sent_content.push_str(text);
      return Delta {
        reasoning: String::new(),
        content: text.to_string(),
      };
    }
    let (r, c) = view(&self.cfg, &self.text);
    let mut d = Delta {
      reasoning: extend(&mut self.sent_reasoning, &r),
      content: extend(&mut self.sent_content, &c),
    };
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
    let reply = finish(&self.cfg, &self.text);
    let d = Delta {
      reasoning: extend(
        &mut self.sent_reasoning,
        reply.reasoning.as_deref().unwrap_or(""),
      ),
      content: extend(&mut self.sent_content, &reply.content),
    };
    (d, reply)
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
}
