//! Per-request text assembly: tokens in, text deltas out, with the same
//! rules as [`mlxrs_lm::TextStream`] (python `stream_generate` plus the
//! server's stop handling): a streaming detokenizer that never splits a
//! character, EOS ends the row (its text is not emitted), a stop string ends
//! it and is cut from the text, and text that could be the start of a stop
//! string is held back until decided.

use mlxrs_lm::{FinishReason, StreamingDetokenizer, Tokenizer};

/// The text state of one generating row.
pub struct RowText {
  detok: StreamingDetokenizer,
  stop: Vec<String>,
  text: String,
  emitted: usize,
}

impl RowText {
  /// A fresh state for `tok` with `stop` strings (none empty).
  pub fn new(tok: &Tokenizer, stop: Vec<String>) -> RowText {
    RowText {
      detok: tok.detokenizer(),
      stop,
      text: String::new(),
      emitted: 0,
    }
  }

  fn held_back(&self) -> usize {
    let mut hold = 0;
    for s in &self.stop {
      for (i, _) in s.char_indices().skip(1) {
        if self.text.ends_with(&s[..i]) {
          hold = hold.max(i);
        }
      }
    }
    hold
  }

  fn flush(&mut self) -> String {
    self.detok.finalize();
    self.text.push_str(&self.detok.last_segment());
    let rest = self.text[self.emitted..].to_string();
    self.emitted = self.text.len();
    rest
  }

  /// Feed the `produced`-th token (1-based) of a row allowed `max_tokens`:
  /// the new text to emit, and the finish reason if the row ends here.
  pub fn push(
    &mut self,
    tok: &Tokenizer,
    token: u32,
    produced: usize,
    max_tokens: usize,
  ) -> (String, Option<FinishReason>) {
    if tok.is_eos(token) {
      return (self.flush(), Some(FinishReason::Stop));
    }
    self.detok.add_token(token);
    self.text.push_str(&self.detok.last_segment());
    let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
    let from = self.emitted.saturating_sub(longest);
    let from = (0..=from)
      .rev()
      .find(|&i| self.text.is_char_boundary(i))
      .unwrap_or(0);
    if let Some(pos) = self
      .stop
      .iter()
      .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| p + from))
      .min()
    {
      let end = pos.max(self.emitted);
      let out = self.text[self.emitted..end].to_string();
      self.emitted = end;
      return (out, Some(FinishReason::Stop));
    }
    let mut end = self.text.len() - self.held_back();
    while !self.text.is_char_boundary(end) {
      end -= 1;
    }
    let end = end.max(self.emitted);
    let out = self.text[self.emitted..end].to_string();
    self.emitted = end;
    if produced >= max_tokens {
      let rest = self.flush();
      return (out + &rest, Some(FinishReason::Length));
    }
    (out, None)
  }
}
