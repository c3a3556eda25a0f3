//! Tokenization the way sentence-transformers does it: the folder's
//! `tokenizer.json` (HF fast tokenizer) with its post-processor adding the
//! special tokens, `truncation="longest_first"` at `max_seq_length`
//! (special tokens included), optional lower-casing (`do_lower_case`), and
//! batches padded to their longest member with an attention mask.
//!
//! Python: `Transformer.preprocess` -> `tokenizer(texts, padding=True,
//! truncation="longest_first", max_length=max_seq_length)`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Sequence};
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};

use crate::config::JsonConfig;
use crate::error::{Error, Result};

/// One tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
  /// Token ids, special tokens included.
  pub ids: Vec<u32>,
  /// Segment ids (`token_type_ids`; all 0 for single texts).
  pub type_ids: Vec<u32>,
}

/// A right-padded batch, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
  /// Token ids; padding holds `pad_id`.
  pub ids: Vec<i32>,
  /// Segment ids; padding holds 0.
  pub type_ids: Vec<i32>,
  /// 1 for real tokens, 0 for padding.
  pub mask: Vec<i32>,
  /// Real length of each row.
  pub lens: Vec<usize>,
  /// Rows.
  pub batch: usize,
  /// Padded length.
  pub seq: usize,
}

impl PaddedBatch {
  /// Pad `rows` on the right to their longest member (python
  /// `padding=True`). Rows must be non-empty token lists.
  pub fn new(rows: &[&Encoded], pad_id: u32) -> PaddedBatch {
    let batch = rows.len();
    let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id as i32; batch * seq];
    let mut type_ids = vec![0i32; batch * seq];
    let mut mask = vec![0i32; batch * seq];
    let mut lens = Vec::with_capacity(batch);
    for (b, r) in rows.iter().enumerate() {
      for (t, (&id, &ty)) in r.ids.iter().zip(r.type_ids.iter()).enumerate() {
        ids[b * seq + t] = id as i32;
        type_ids[b * seq + t] = ty as i32;
        mask[b * seq + t] = 1;
      }
      lens.push(r.ids.len());
    }
    PaddedBatch {
      ids,
      type_ids,
      mask,
      lens,
      batch,
      seq,
    }
  }
}

/// Group `lens.len()` inputs into batches of at most `batch_size`, longest
/// first (python `encode`'s `length_sorted_idx`), so that each batch pads
/// as little as possible. Returns original indices per batch.
pub fn length_sorted_batches(lens: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
  let mut order: Vec<usize> = (0..lens.len()).collect();
  // Stable: equal lengths keep input order.
  order.sort_by(|&a, &b| lens[b].cmp(&lens[a]));
  order
    .chunks(batch_size.max(1))
    .map(<[usize]>::to_vec)
    .collect()
}

/// The folder's HF fast tokenizer, configured like sentence-transformers.
#[derive(Clone)]
pub struct TextTokenizer {
  tok: Tokenizer,
  path: PathBuf,
  special_ids: HashSet<u32>,
  pad_id: u32,
  direction: TruncationDirection,
  max_length: usize,
  type_ids: bool,
}

impl std::fmt::Debug for TextTokenizer {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("TextTokenizer")
      .field("path", &self.path)
      .field("pad_id", &self.pad_id)
      .field("max_length", &self.max_length)
      .finish()
  }
}

fn tok_err(path: &Path, message: impl std::fmt::Display) -> Error {
  Error::Tokenizer {
    path: Some(path.to_path_buf()),
    message: message.to_string(),
  }
}

/// Tokenizer classes whose `model_input_names` include `token_type_ids`
/// (transformers' class attribute); others feed the model no segment ids,
/// i.e. zeros.
const TYPE_ID_TOKENIZERS: &[&str] = &[
  "BertTokenizer",
  "ElectraTokenizer",
  "ConvBertTokenizer",
  "FunnelTokenizer",
  "LayoutLMTokenizer",
  "MobileBertTokenizer",
  "SqueezeBertTokenizer",
  "RoFormerTokenizer",
];

/// Whether a normalizer already lower-cases (python `_has_lowercase`).
fn has_lowercase(n: &NormalizerWrapper) -> bool {
  match serde_json::to_value(n) {
    Ok(v) => {
      let s = v.to_string();
      s.contains("\"Lowercase\"") || s.contains("\"lowercase\":true")
    }
    Err(_) => false,
  }
}

impl TextTokenizer {
  /// Load `dir/tokenizer.json` (and `tokenizer_config.json` for
  /// `truncation_side`), lower-casing inputs first when `lowercase`
  /// (`do_lower_case`), truncating at `max_length` tokens.
  pub fn load(
    dir: &Path,
    lowercase: bool,
    max_length: usize,
    fallback_pad: Option<u32>,
  ) -> Result<Self> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
      let hint = if dir.join("vocab.txt").is_file() || dir.join("tokenizer.model").is_file() {
        " (only slow-tokenizer files found; save the tokenizer with a recent transformers to get tokenizer.json)"
      } else {
        ""
      };
      return Err(tok_err(&path, format!("missing tokenizer.json{hint}")));
    }
    let mut tok =
      Tokenizer::from_file(&path).map_err(|e| tok_err(&path, format!("cannot load: {e}")))?;
    let mut direction = TruncationDirection::Right;
    let mut type_ids = false;
    let cfg_path = dir.join("tokenizer_config.json");
    if cfg_path.is_file() {
      let c = JsonConfig::load(&cfg_path)?;
      type_ids = match c.opt_str_list("model_input_names")? {
        Some(names) => names.iter().any(|n| n == "token_type_ids"),
        None => {
          let class = c.str_or(&["tokenizer_class"], "")?;
          TYPE_ID_TOKENIZERS.contains(&class.trim_end_matches("Fast"))
        }
      };
      if let Some(side) = c.opt_str(&["truncation_side"])? {
        direction = match side {
          "right" => TruncationDirection::Right,
          "left" => TruncationDirection::Left,
          other => {
            return Err(c.invalid(
              "truncation_side",
              format!("expected left or right, got {other:?}"),
            ));
          }
        };
      }
    }
    if lowercase {
      let needs = tok.get_normalizer().is_none_or(|n| !has_lowercase(n));
      if needs {
        let mut seq: Vec<NormalizerWrapper> = vec![Lowercase.into()];
        if let Some(n) = tok.get_normalizer() {
          seq.push(n.clone());
        }
        tok.with_normalizer(Some(Sequence::new(seq)));
      }
    }
    let pad_id = tok
      .get_padding()
      .map(|p| p.pad_id)
      .or(fallback_pad)
      .unwrap_or(0);
    tok.with_padding(None);
    let special_ids = tok
      .get_added_tokens_decoder()
      .into_iter()
      .filter(|(_, t)| t.special)
      .map(|(id, _)| id)
      .collect();
    let mut t = TextTokenizer {
      tok,
      path,
      special_ids,
      pad_id,
      direction,
      max_length: 0,
      type_ids,
    };
    t.set_max_length(max_length)?;
    Ok(t)
  }

  /// Change the truncation length (special tokens included).
  pub fn set_max_length(&mut self, max_length: usize) -> Result<()> {
    if max_length == 0 {
      return Err(Error::InvalidArgument("max length must be positive".into()));
    }
    self
      .tok
      .with_truncation(Some(TruncationParams {
        direction: self.direction,
        max_length,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
      }))
      .map_err(|e| tok_err(&self.path, e))?;
    self.max_length = max_length;
    Ok(())
  }

  /// Segment ids the model gets: the encoding's when the tokenizer emits
  /// `token_type_ids` (python `model_input_names`), else zeros.
  fn segment_ids(&self, e: &tokenizers::Encoding, n: usize) -> Vec<u32> {
    if self.type_ids {
      e.get_type_ids().to_vec()
    } else {
      vec![0; n]
    }
  }

  /// Whether the model is fed the tokenizer's `token_type_ids`.
  pub fn uses_type_ids(&self) -> bool {
    self.type_ids
  }

  /// The truncation length.
  pub fn max_length(&self) -> usize {
    self.max_length
  }

  /// The id used for padding.
  pub fn pad_id(&self) -> u32 {
    self.pad_id
  }

  /// The `tokenizer.json` path.
  pub fn path(&self) -> &Path {
    &self.path
  }

  /// The underlying `tokenizers::Tokenizer`.
  pub fn inner(&self) -> &Tokenizer {
    &self.tok
  }

  /// Tokenize `texts` (special tokens added). With `truncate`, longer texts
  /// are cut to the max length; without, they are an
  /// [`Error::InputTooLong`] naming the first such input.
  pub fn encode_all(&self, texts: &[String], truncate: bool) -> Result<Vec<Encoded>> {
    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encs = self
      .tok
      .encode_batch(inputs, true)
      .map_err(|e| tok_err(&self.path, e))?;
    let mut out = Vec::with_capacity(encs.len());
    for (i, e) in encs.into_iter().enumerate() {
      if !truncate && !e.get_overflowing().is_empty() {
        let mut full = self.tok.clone();
        full
          .with_truncation(None)
          .map_err(|e| tok_err(&self.path, e))?;
        let n = full
          .encode(texts[i].as_str(), true)
          .map_err(|e| tok_err(&self.path, e))?
          .len();
        return Err(Error::InputTooLong {
          index: i,
          tokens: n,
          limit: self.max_length,
        });
      }
      let ids = e.get_ids().to_vec();
      if ids.is_empty() {
        return Err(tok_err(
          &self.path,
          format!(
            "input {i} tokenized to no tokens (the tokenizer adds no special tokens); cannot embed it"
          ),
        ));
      }
      out.push(Encoded {
        type_ids: self.segment_ids(&e, ids.len()),
        ids,
      });
    }
    Ok(out)
  }

  /// Tokenize `(first, second)` pairs (cross-encoder inputs: `[CLS] a [SEP]
  /// b [SEP]` with segment ids), truncating `longest_first` or rejecting
  /// over-long pairs like [`TextTokenizer::encode_all`].
  pub fn encode_pairs(&self, pairs: &[(String, String)], truncate: bool) -> Result<Vec<Encoded>> {
    let inputs: Vec<(&str, &str)> = pairs
      .iter()
      .map(|(a, b)| (a.as_str(), b.as_str()))
      .collect();
    let encs = self
      .tok
      .encode_batch(inputs, true)
      .map_err(|e| tok_err(&self.path, e))?;
    let mut out = Vec::with_capacity(encs.len());
    for (i, e) in encs.into_iter().enumerate() {
      if !truncate && !e.get_overflowing().is_empty() {
        let mut full = self.tok.clone();
        full
          .with_truncation(None)
          .map_err(|e| tok_err(&self.path, e))?;
        let (a, b) = (pairs[i].0.as_str(), pairs[i].1.as_str());
        let n = full
          .encode((a, b), true)
          .map_err(|e| tok_err(&self.path, e))?
          .len();
        return Err(Error::InputTooLong {
          index: i,
          tokens: n,
          limit: self.max_length,
        });
      }
      if e.get_ids().is_empty() {
        return Err(tok_err(
          &self.path,
          format!("pair {i} tokenized to no tokens"),
        ));
      }
      out.push(Encoded {
        ids: e.get_ids().to_vec(),
        type_ids: self.segment_ids(&e, e.len()),
      });
    }
    Ok(out)
  }

  /// Tokens of `prompt` that prefix a prompted text (python
  /// `Transformer._get_prompt_length`: the prompt's tokenization minus a
  /// trailing special token such as `[SEP]` / `</s>`).
  pub fn prompt_length(&self, prompt: &str) -> Result<usize> {
    let e = self
      .tok
      .encode(prompt, true)
      .map_err(|e| tok_err(&self.path, e))?;
    let ids = e.get_ids();
    let mut n = ids.len();
    if let Some(last) = ids.last() {
      let special_mask = e.get_special_tokens_mask();
      if self.special_ids.contains(last) || special_mask.last() == Some(&1) {
        n -= 1;
      }
    }
    Ok(n)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn padding_and_masks() {
    let a = Encoded {
      ids: vec![1, 2, 3],
      type_ids: vec![0, 0, 0],
    };
    let b = Encoded {
      ids: vec![4],
      type_ids: vec![0],
    };
    let p = PaddedBatch::new(&[&a, &b], 9);
    assert_eq!((p.batch, p.seq), (2, 3));
    assert_eq!(p.ids, vec![1, 2, 3, 4, 9, 9]);
    assert_eq!(p.mask, vec![1, 1, 1, 1, 0, 0]);
    assert_eq!(p.lens, vec![3, 1]);
  }

  #[test]
  fn batches_are_length_sorted_and_cover_all() {
    let lens = [3, 10, 1, 7, 7, 2];
    let b = length_sorted_batches(&lens, 4);
    assert_eq!(b, vec![vec![1, 3, 4, 0], vec![5, 2]]);
    assert!(length_sorted_batches(&[], 4).is_empty());
  }

  #[test]
  fn bad_tokenizer_files_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let e = TextTokenizer::load(d.path(), false, 16, None)
      .unwrap_err()
      .to_string();
    assert!(e.contains("missing tokenizer.json"), "{e}");
    std::fs::write(d.path().join("vocab.txt"), "[PAD]\n").unwrap();
    let e = TextTokenizer::load(d.path(), false, 16, None)
      .unwrap_err()
      .to_string();
    assert!(e.contains("slow-tokenizer"), "{e}");
    std::fs::write(
      d.path().join("tokenizer.json"),
      "{\"not\": \"a tokenizer\"}",
    )
    .unwrap();
    let e = TextTokenizer::load(d.path(), false, 16, None)
      .unwrap_err()
      .to_string();
    assert!(
      e.contains("tokenizer.json") && e.contains("cannot load"),
      "{e}"
    );
  }
}
