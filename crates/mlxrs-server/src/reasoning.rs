//! Reasoning text (python `mlx_lm.server`'s `reasoning` field / vLLM's
//! `reasoning_content`): `<think>...</think>` at the start of a reply (or,
//! when the prompt already opened `<think>`, everything up to
//! `</think>`) is split off. gpt-oss's analysis channel is handled by
//! [`crate::tools::harmony`]. `chat_template_kwargs.enable_thinking: false`
//! turns the split off.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// How a reply's reasoning is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Think {
  /// No reasoning split.
  Off,
  /// `<think>` tags; `open` when the prompt ends inside `<think>`.
  Tags {
    /// The reply starts inside the reasoning.
    open: bool,
  },
}

impl Think {
  /// The mode for a rendered `prompt` and the request's `enable_thinking`.
  pub fn for_prompt(prompt: &str, enable_thinking: Option<bool>) -> Think {
    if enable_thinking == Some(false) {
      return Think::Off;
    }
    Think::Tags {
      open: prompt.trim_end().ends_with(OPEN),
    }
  }
}

/// The longest suffix of `text` that is a proper prefix of `marker`.
pub fn partial_suffix(text: &str, marker: &str) -> usize {
  (1..marker.len())
    .rev()
    .find(|&n| {
      text.len() >= n
        && text.is_char_boundary(text.len() - n)
        && marker.starts_with(&text[text.len() - n..])
    })
    .unwrap_or(0)
}

/// Split a finished reply into `(reasoning, rest)`.
pub fn split(mode: Think, text: &str) -> (Option<String>, String) {
  let inner = match mode {
    Think::Off => None,
    Think::Tags { open: true } => Some(text),
    Think::Tags { open: false } => text.trim_start().strip_prefix(OPEN),
  };
  match inner {
    None => (None, text.to_string()),
    Some(inner) => match inner.find(CLOSE) {
      Some(i) => (
        Some(inner[..i].trim().to_string()),
        inner[i + CLOSE.len()..].to_string(),
      ),
      None => (Some(inner.trim().to_string()), String::new()),
    },
  }
}

/// For streaming: `(reasoning so far, rest so far)`, holding back what
/// could still be a marker. `rest` is `None` while the reasoning is open.
pub fn view(mode: Think, text: &str) -> (String, Option<String>) {
  let inner = match mode {
    Think::Off => return (String::new(), Some(text.to_string())),
    Think::Tags { open: true } => text,
    Think::Tags { open: false } => {
      let t = text.trim_start();
      if t.len() < OPEN.len() && OPEN.starts_with(t) {
        // Undecided: could still become `<think>`.
        return (String::new(), None);
      }
      match t.strip_prefix(OPEN) {
        Some(i) => i,
        None => return (String::new(), Some(text.to_string())),
      }
    }
  };
  match inner.find(CLOSE) {
    Some(i) => (
      inner[..i].trim().to_string(),
      Some(inner[i + CLOSE.len()..].to_string()),
    ),
    None => {
      let keep = inner.len() - partial_suffix(inner, CLOSE);
      // Trailing whitespace waits: the final reasoning is trimmed.
      (inner[..keep].trim().to_string(), None)
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn qwen3_reply_splits() {
    // A Qwen3 reply (enable_thinking on).
    let t = "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?";
    let (r, rest) = split(Think::Tags { open: false }, t);
    assert_eq!(r.as_deref(), Some("The user greets me."));
    assert_eq!(rest.trim(), "Hello! How can I help?");
    assert_eq!(split(Think::Off, t).0, None);
  }

  #[test]
  fn prompt_opened_think() {
    let m = Think::for_prompt("<|im_start|>assistant\n<think>\n", None);
    assert_eq!(m, Think::Tags { open: true });
    let (r, rest) = split(m, "plan\n</think>\n\nanswer");
    assert_eq!(r.as_deref(), Some("plan"));
    assert_eq!(rest.trim(), "answer");
    assert_eq!(Think::for_prompt("x<think>", Some(false)), Think::Off);
  }

  #[test]
  fn streaming_view_holds_partial_markers() {
    let m = Think::Tags { open: false };
    assert_eq!(view(m, "<thi"), (String::new(), None));
    assert_eq!(view(m, "<think>abc</thi"), ("abc".into(), None));
    assert_eq!(view(m, "<think>abc\n"), ("abc".into(), None));
    assert_eq!(
      view(m, "<think>abc</think>\nhi"),
      ("abc".into(), Some("\nhi".into()))
    );
    assert_eq!(view(m, "hello"), (String::new(), Some("hello".into())));
  }
}
