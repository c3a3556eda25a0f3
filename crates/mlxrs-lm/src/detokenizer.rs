//! Streaming detokenizers: turn generated token ids into text one token at a
//! time (mlx-lm's `StreamingDetokenizer` family in
//! `mlx_lm.tokenizer_utils`).
//!
//! [`StreamingDetokenizer::add_token`] consumes one id; [`last_segment`]
//! returns the text completed since the previous call. Text is only ever
//! released in whole characters: byte-level BPE tokens or SentencePiece
//! `<0xXX>` byte tokens that end in the middle of a UTF-8 sequence are held
//! until the sequence completes (or [`finalize`] flushes them). The
//! concatenation of all segments equals the tokenizer's full
//! `decode(tokens, skip_special_tokens=False)` for valid UTF-8 output.
//!
//! The variant is chosen from `tokenizer.json`'s `decoder` as mlx-lm's
//! `tokenizer_utils.load` does:
//!
//! - [`DetokenizerKind::Spm`]: the SentencePiece decoder `Replace("▁", " ")
//!   -> ByteFallback -> Fuse [-> Strip(1 leading space)]` (Llama 2, Mistral,
//!   Gemma): linear time, no re-decoding;
//! - [`DetokenizerKind::Bpe`]: the `ByteLevel` decoder (GPT-2, Llama 3,
//!   Qwen): linear time;
//! - [`DetokenizerKind::Naive`]: anything else; re-decodes a short window of
//!   recent tokens with the tokenizer itself (the incremental scheme of
//!   transformers' `TextStreamer` / `tokenizers::DecodeStream`).
//!
//! Differences from mlx-lm: the BPE variant does not drop the first
//! segment's leading space unless asked to
//! ([`StreamingDetokenizer::set_trim_leading_space`]), so that streaming
//! matches `decode`; ids outside the vocabulary decode to nothing (as
//! `decode` skips them) instead of mlx-lm's `"!"`.
//!
//! [`last_segment`]: StreamingDetokenizer::last_segment
//! [`finalize`]: StreamingDetokenizer::finalize

use std::sync::Arc;

use serde_json::{Value, json};

/// Which streaming algorithm a tokenizer gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetokenizerKind {
  /// Re-decode a window of recent tokens (mlx-lm's
  /// `NaiveStreamingDetokenizer`).
  Naive,
  /// SentencePiece pieces (mlx-lm's `SPMStreamingDetokenizer`);
  /// `trim_space`: the decoder strips the text's first leading space.
  Spm {
    /// Drop the first leading space (the decoder's `Strip` step).
    trim_space: bool,
  },
  /// Byte-level BPE (mlx-lm's `BPEStreamingDetokenizer`).
  Bpe,
}

impl DetokenizerKind {
  /// Pick the variant for a `tokenizer.json` `decoder` value (mlx-lm's
  /// `_is_spm_decoder`, `_is_spm_decoder_no_space`, `_is_bpe_decoder`).
  pub fn from_decoder(decoder: Option<&Value>) -> Self {
    let Some(decoder) = decoder else {
      return DetokenizerKind::Naive;
    };
    let spm_steps = vec![
      json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
      json!({"type": "ByteFallback"}),
      json!({"type": "Fuse"}),
    ];
    let mut with_strip = spm_steps.clone();
    with_strip.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    let spm = json!({"type": "Sequence", "decoders": with_strip});
    let spm_no_space = json!({"type": "Sequence", "decoders": spm_steps});
    if json_match(&spm, decoder) {
      DetokenizerKind::Spm { trim_space: true }
    } else if json_match(&spm_no_space, decoder) {
      DetokenizerKind::Spm { trim_space: false }
    } else if decoder.get("type").and_then(Value::as_str) == Some("ByteLevel") {
      DetokenizerKind::Bpe
    } else {
      DetokenizerKind::Naive
    }
  }
}

/// mlx-lm's `_match`: same structure, same keys, equal leaves (ints and
/// floats are distinct types in Python; JSON numbers compare by value).
fn json_match(a: &Value, b: &Value) -> bool {
  match (a, b) {
    (Value::Object(x), Value::Object(y)) => {
      x.len() == y.len()
        && x
          .iter()
          .all(|(k, v)| y.get(k).is_some_and(|w| json_match(v, w)))
    }
    (Value::Array(x), Value::Array(y)) => {
      x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_match(v, w))
    }
    _ => a == b,
  }
}

/// GPT-2's byte <-> printable-char table (`bytes_to_unicode`), as a
/// char-code -> byte lookup.
fn byte_decoder() -> [Option<u8>; 324] {
  let mut table = [None; 324];
  let mut n = 0u32;
  for b in 0u32..256 {
    let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let c = if printable {
      b
    } else {
      n += 1;
      255 + n
    };
    table[c as usize] = Some(b as u8);
  }
  table
}

/// The bytes `tokenizers`' `ByteLevel` decoder gives one token: each char
/// through the table, or the token's own UTF-8 when any char is outside it.
fn byte_level_bytes(token: &str, table: &[Option<u8>; 324]) -> Vec<u8> {
  let mapped: Option<Vec<u8>> = token
    .chars()
    .map(|c| table.get(c as usize).copied().flatten())
    .collect();
  mapped.unwrap_or_else(|| token.as_bytes().to_vec())
}

/// A SentencePiece piece after `Replace("▁", " ")`, or a `<0xXX>` byte.
#[derive(Debug)]
enum Piece {
  Byte(u8),
  Text(Box<str>),
}

/// `ByteFallback`'s test for a byte token.
fn byte_token(token: &str) -> Option<u8> {
  if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
    u8::from_str_radix(&token[3..5], 16).ok()
  } else {
    None
  }
}

/// The per-tokenizer tables a detokenizer reads (built once, shared).
pub(crate) struct DetokData {
  kind: DetokenizerKind,
  bpe: Vec<Option<Box<[u8]>>>,
  spm: Vec<Option<Piece>>,
  tokenizer: Arc<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for DetokData {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("DetokData")
      .field("kind", &self.kind)
      .finish_non_exhaustive()
  }
}

impl DetokData {
  pub(crate) fn new(kind: DetokenizerKind, tokenizer: Arc<tokenizers::Tokenizer>) -> Self {
    let n = tokenizer
      .get_vocab(true)
      .values()
      .copied()
      .max()
      .map_or(0, |m| m as usize + 1);
    let mut bpe = Vec::new();
    let mut spm = Vec::new();
    match kind {
      DetokenizerKind::Bpe => {
        let table = byte_decoder();
        bpe = (0..n)
          .map(|id| {
            tokenizer
              .id_to_token(id as u32)
              .map(|t| byte_level_bytes(&t, &table).into_boxed_slice())
          })
          .collect();
      }
      DetokenizerKind::Spm { .. } => {
        spm = (0..n)
          .map(|id| {
            tokenizer
              .id_to_token(id as u32)
              .map(|t| match byte_token(&t) {
                Some(b) => Piece::Byte(b),
                None => Piece::Text(t.replace('\u{2581}', " ").into_boxed_str()),
              })
          })
          .collect();
      }
      DetokenizerKind::Naive => {}
    }
    DetokData {
      kind,
      bpe,
      spm,
      tokenizer,
    }
  }
}

/// A streaming detokenizer (mlx-lm's `StreamingDetokenizer`). Get one from
/// `Tokenizer::detokenizer`; each is independent (mlx-lm copies its
/// template per request).
#[derive(Debug, Clone)]
pub struct StreamingDetokenizer {
  data: Arc<DetokData>,
  trim_leading_space: bool,
  tokens: Vec<u32>,
  text: String,
  offset: usize,
  /// Bytes of an unfinished UTF-8 sequence (BPE / SPM).
  pending: Vec<u8>,
  /// Whether any text (before trimming) has been produced.
  started: bool,
  /// Naive: start of the context window and of the unreleased tokens.
  prefix_offset: usize,
  read_offset: usize,
}

impl StreamingDetokenizer {
  pub(crate) fn new(data: Arc<DetokData>) -> Self {
    let trim_leading_space = matches!(data.kind, DetokenizerKind::Spm { trim_space: true });
    StreamingDetokenizer {
      data,
      trim_leading_space,
      tokens: Vec::new(),
      text: String::new(),
      offset: 0,
      pending: Vec::new(),
      started: false,
      prefix_offset: 0,
      read_offset: 0,
    }
  }

  /// The algorithm in use.
  pub fn kind(&self) -> DetokenizerKind {
    self.data.kind
  }

  /// Drop the first segment's leading space, as mlx-lm's BPE detokenizer
  /// does (`_maybe_trim_space`). Off by default for BPE (streaming then
  /// equals `decode`); the SPM variant follows its decoder's `Strip` step
  /// and ignores this.
  pub fn set_trim_leading_space(&mut self, yes: bool) {
    if self.data.kind == DetokenizerKind::Bpe {
      self.trim_leading_space = yes;
    }
  }

  /// Forget all tokens and text (mlx-lm's `reset`).
  pub fn reset(&mut self) {
    self.tokens.clear();
    self.text.clear();
    self.offset = 0;
    self.pending.clear();
    self.started = false;
    self.prefix_offset = 0;
    self.read_offset = 0;
  }

  /// The ids added so far.
  pub fn tokens(&self) -> &[u32] {
    &self.tokens
  }

  /// All completed text so far.
  pub fn text(&self) -> &str {
    &self.text
  }

  /// The text completed since the last call (mlx-lm's `last_segment`).
  pub fn last_segment(&mut self) -> String {
    let seg = self.text[self.offset..].to_string();
    self.offset = self.text.len();
    seg
  }

  fn emit(&mut self, s: &str) {
    if s.is_empty() {
      return;
    }
    let s = if !self.started && self.trim_leading_space {
      s.strip_prefix(' ').unwrap_or(s)
    } else {
      s
    };
    self.started = true;
    self.text.push_str(s);
  }

  /// Release the complete UTF-8 prefix of `pending`. Invalid bytes become
  /// U+FFFD (one per maximal invalid sequence for BPE, as
  /// `String::from_utf8_lossy` does; one per byte for SPM, as `ByteFallback`
  /// does); an unfinished tail is kept unless `force`.
  fn flush_pending(&mut self, force: bool) {
    let per_byte = matches!(self.data.kind, DetokenizerKind::Spm { .. });
    let buf = std::mem::take(&mut self.pending);
    let mut rest: &[u8] = &buf;
    let mut out = String::new();
    loop {
      match std::str::from_utf8(rest) {
        Ok(s) => {
          out.push_str(s);
          rest = &[];
          break;
        }
        Err(e) => {
          let valid = e.valid_up_to();
          // `from_utf8` validated this prefix.
          out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
          match e.error_len() {
            Some(n) => {
              let count = if per_byte { n } else { 1 };
              out.extend(std::iter::repeat_n('\u{FFFD}', count));
              rest = &rest[valid + n..];
            }
            None => {
              rest = &rest[valid..];
              if force {
                let count = if per_byte { rest.len() } else { 1 };
                out.extend(std::iter::repeat_n('\u{FFFD}', count));
                rest = &[];
              }
              break;
            }
          }
        }
      }
    }
    self.pending = rest.to_vec();
    self.emit(&out);
  }

  /// Consume one token id. Ids outside the vocabulary add no text (as
  /// `decode` skips them).
  pub fn add_token(&mut self, id: u32) {
    self.tokens.push(id);
    let data = Arc::clone(&self.data);
    match data.kind {
      DetokenizerKind::Bpe => {
        if let Some(Some(bytes)) = data.bpe.get(id as usize) {
          self.pending.extend_from_slice(bytes);
          self.flush_pending(false);
        }
      }
      DetokenizerKind::Spm { .. } => match data.spm.get(id as usize) {
        Some(Some(Piece::Byte(b))) => {
          self.pending.push(*b);
          self.flush_pending(false);
        }
        Some(Some(Piece::Text(t))) => {
          if !self.pending.is_empty() {
            self.flush_pending(true);
          }
          self.emit(t);
        }
        _ => {}
      },
      DetokenizerKind::Naive => self.naive_step(false),
    }
  }

  /// Flush text held back waiting for more tokens (mlx-lm's `finalize`).
  pub fn finalize(&mut self) {
    match self.data.kind {
      DetokenizerKind::Bpe | DetokenizerKind::Spm { .. } => self.flush_pending(true),
      DetokenizerKind::Naive => self.naive_step(true),
    }
  }

  fn decode(&self, ids: &[u32]) -> Option<String> {
    if ids.is_empty() {
      return Some(String::new());
    }
    self.data.tokenizer.decode(ids, false).ok()
  }

  /// Decode `tokens[prefix_offset..]` and release what it adds beyond
  /// `tokens[prefix_offset..read_offset]`, unless it ends in an unfinished
  /// character (U+FFFD) and `force` is off.
  fn naive_step(&mut self, force: bool) {
    let Some(prefix_text) = self.decode(&self.tokens[self.prefix_offset..self.read_offset]) else {
      return;
    };
    let Some(new_text) = self.decode(&self.tokens[self.prefix_offset..]) else {
      return;
    };
    if new_text.len() <= prefix_text.len() && !force {
      return;
    }
    if !force && new_text.ends_with('\u{FFFD}') {
      return;
    }
    let cut = if new_text.starts_with(&prefix_text) {
      prefix_text.len()
    } else {
      // The decoder rewrote earlier text (rare); release from the first
      // char boundary at or after the old length.
      let mut c = prefix_text.len().min(new_text.len());
      while !new_text.is_char_boundary(c) {
        c += 1;
      }
      c
    };
    let added = new_text[cut..].to_string();
    self.text.push_str(&added);
    self.prefix_offset = self.read_offset;
    self.read_offset = self.tokens.len();
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn byte_table_roundtrip() {
    let t = byte_decoder();
    // 'Ġ' (U+0120) is the space byte, 'Ċ' (U+010A) the newline.
    assert_eq!(t[0x120], Some(b' '));
    assert_eq!(t[0x10a], Some(b'\n'));
    assert_eq!(t['a' as usize], Some(b'a'));
    assert_eq!(t.iter().filter(|x| x.is_some()).count(), 256);
  }

  #[test]
  fn decoder_detection() {
    let spm = json!({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
      {"type": "ByteFallback"}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
    assert_eq!(
      DetokenizerKind::from_decoder(Some(&spm)),
      DetokenizerKind::Spm { trim_space: true }
    );
    let nospace = json!({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
      {"type": "ByteFallback"}, {"type": "Fuse"}]});
    assert_eq!(
      DetokenizerKind::from_decoder(Some(&nospace)),
      DetokenizerKind::Spm { trim_space: false }
    );
    let bl = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    assert_eq!(
      DetokenizerKind::from_decoder(Some(&bl)),
      DetokenizerKind::Bpe
    );
    let ms =
      json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    assert_eq!(
      DetokenizerKind::from_decoder(Some(&ms)),
      DetokenizerKind::Naive
    );
    assert_eq!(DetokenizerKind::from_decoder(None), DetokenizerKind::Naive);
  }
}
