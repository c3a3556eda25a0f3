//! Fine-tuning data (python `mlx_lm.tuner.datasets`): `train.jsonl` /
//! `valid.jsonl` / `test.jsonl` with one example per line, in one of three
//! formats (chosen by the first line's keys, as mlx-lm does):
//! `{"prompt", "completion"}` (rendered as a user/assistant chat),
//! `{"messages"}` (a chat, optionally with `tools`), `{"text"}`.
//! Each example becomes `(tokens, offset)`: with `mask_prompt`, the first
//! `offset` tokens (the prompt) carry no loss.

use std::path::Path;

use serde_json::Value;

use crate::chat::ChatOptions;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One tokenized example: its tokens and the number of leading prompt
/// tokens excluded from the loss (0 unless `mask_prompt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
  /// Token ids.
  pub tokens: Vec<u32>,
  /// Prompt tokens that carry no loss.
  pub offset: usize,
}

/// The format of a dataset (python's `CompletionsDataset`,
/// `ChatDataset`, `TextDataset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
  /// `{"prompt": ..., "completion": ...}`.
  Completions,
  /// `{"messages": [...], "tools": [...]?}`.
  Chat,
  /// `{"text": ...}`.
  Text,
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(msg)
}

/// Read a JSONL file into objects; a malformed line is an error naming the
/// file and its 1-based line number. Blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
  let text = std::fs::read_to_string(path)
    .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
  let mut out = Vec::new();
  for (i, line) in text.lines().enumerate() {
    if line.trim().is_empty() {
      continue;
    }
    let v: Value = serde_json::from_str(line)
      .map_err(|e| bad(format!("{}:{}: invalid JSON: {e}", path.display(), i + 1)))?;
    if !v.is_object() {
      return Err(bad(format!(
        "{}:{}: each line must be a JSON object",
        path.display(),
        i + 1
      )));
    }
    out.push(v);
  }
  Ok(out)
}

/// The format of `data` from its first example (python `create_dataset`).
pub fn detect_format(data: &[Value], mask_prompt: bool) -> Result<Format> {
  let first = data
    .first()
    .ok_or_else(|| bad("the dataset is empty".into()))?;
  if first.get("prompt").is_some() && first.get("completion").is_some() {
    Ok(Format::Completions)
  } else if first.get("messages").is_some() {
    Ok(Format::Chat)
  } else if first.get("text").is_some() {
    if mask_prompt {
      return Err(bad(
        "prompt masking (--mask-prompt) is not supported for a {\"text\"} dataset".into(),
      ));
    }
    Ok(Format::Text)
  } else {
    Err(bad(
      "unsupported data format: each line needs {\"messages\": [...]}, {\"prompt\", \"completion\"} or {\"text\"} (mlx-lm's LORA.md#Data)".into(),
    ))
  }
}

fn chat_ids(
  tok: &Tokenizer,
  messages: &[Value],
  tools: Option<&Value>,
  add_generation_prompt: bool,
) -> Result<Vec<u32>> {
  let opts = ChatOptions {
    add_generation_prompt,
    tools: tools.and_then(Value::as_array).cloned(),
    ..Default::default()
  };
  let text = tok.apply_chat_template_values(messages, &opts)?;
  tok.encode(&text, false)
}

/// Tokenize one example (python `<Dataset>.process`); `line` (1-based)
/// names it in errors.
pub fn process(
  tok: &Tokenizer,
  format: Format,
  d: &Value,
  mask_prompt: bool,
  line: usize,
) -> Result<Example> {
  let field = |k: &str| {
    d.get(k)
      .ok_or_else(|| bad(format!("line {line}: missing \"{k}\"")))
  };
  let tools = d.get("tools");
  match format {
    Format::Text => {
      let text = field("text")?
        .as_str()
        .ok_or_else(|| bad(format!("line {line}: \"text\" must be a string")))?;
      let mut tokens = tok.encode(text, true)?;
      if let Some(eos) = tok.eos_token_id() {
        if tokens.last() != Some(&eos) {
          tokens.push(eos);
        }
      }
      Ok(Example { tokens, offset: 0 })
    }
    Format::Completions => {
      let text = |k: &str| -> Result<String> {
        field(k)?
          .as_str()
          .map(str::to_string)
          .ok_or_else(|| bad(format!("line {line}: \"{k}\" must be a string")))
      };
      let messages = vec![
        serde_json::json!({"role": "user", "content": text("prompt")?}),
        serde_json::json!({"role": "assistant", "content": text("completion")?}),
      ];
      let tokens = chat_ids(tok, &messages, tools, false)?;
      let offset = if mask_prompt {
        chat_ids(tok, &messages[..1], tools, true)?.len()
      } else {
        0
      };
      Ok(Example { tokens, offset })
    }
    Format::Chat => {
      let messages = field("messages")?
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
          bad(format!(
            "line {line}: \"messages\" must be a non-empty list"
          ))
        })?;
      let tokens = chat_ids(tok, messages, tools, false)?;
      let offset = if mask_prompt {
        let last_is_assistant = messages
          .last()
          .and_then(|m| m.get("role"))
          .and_then(Value::as_str)
          == Some("assistant");
        chat_ids(
          tok,
          &messages[..messages.len() - 1],
          tools,
          last_is_assistant,
        )?
        .len()
      } else {
        0
      };
      Ok(Example { tokens, offset })
    }
  }
}

/// Load and tokenize a JSONL file (python `load_local_dataset` for one
/// split + `CacheDataset`). A missing file gives an empty list; a present
/// but empty one is an error.
pub fn load_split(path: &Path, tok: &Tokenizer, mask_prompt: bool) -> Result<Vec<Example>> {
  if !path.exists() {
    return Ok(Vec::new());
  }
  let data = read_jsonl(path)?;
  if data.is_empty() {
    return Err(bad(format!("{}: the dataset is empty", path.display())));
  }
  let format = detect_format(&data, mask_prompt)?;
  data
    .iter()
    .enumerate()
    .map(|(i, d)| {
      process(tok, format, d, mask_prompt, i + 1)
        .map_err(|e| bad(format!("{}: {e}", path.display())))
    })
    .collect()
}

/// `train`, `valid`, `test` from a folder (python `load_local_dataset`).
pub fn load_local(
  dir: &Path,
  tok: &Tokenizer,
  mask_prompt: bool,
) -> Result<(Vec<Example>, Vec<Example>, Vec<Example>)> {
  if !dir.is_dir() {
    return Err(bad(format!("--data {}: not a folder", dir.display())));
  }
  Ok((
    load_split(&dir.join("train.jsonl"), tok, mask_prompt)?,
    load_split(&dir.join("valid.jsonl"), tok, mask_prompt)?,
    load_split(&dir.join("test.jsonl"), tok, mask_prompt)?,
  ))
}
