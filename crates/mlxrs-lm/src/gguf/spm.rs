//! SentencePiece vocabularies in GGUF files (`tokenizer.ggml.model =
//! llama`): the `tokenizer.json` pieces of a BPE tokenizer that encodes as
//! llama.cpp's SPM tokenizer and SentencePiece itself do.
//!
//! Python twins: transformers' `integrations/gguf/gguf_tokenizer_mapping.py`
//! (`sentencepiece_tokenizer`, `gemma_tokenizer`, `generate_merges`) and the
//! "legacy" Llama-2 `tokenizer.json` (`LlamaConverter`). The model is a BPE
//! over the pieces with byte fallback (`<0xNN>` tokens); merges come from the
//! file's `tokenizer.ggml.merges` or, as SentencePiece's BPE merges the
//! adjacent pair whose joined piece scores highest, from the scores: every
//! split of a piece into two pieces is a merge ranked by the piece's score.
//! Text: spaces become "▁" and, when `tokenizer.ggml.add_space_prefix` is
//! set (llama.cpp's default), each raw-text run (the start, and text after
//! a control / user-defined token) gets one "▁" prepended, as llama.cpp
//! does. transformers' GGUF loader prepends with `Metaspace("first")`
//! instead, which differs from SentencePiece and llama.cpp on text that
//! starts with a space; mlxrs follows SentencePiece.

use std::collections::HashMap;

use serde_json::{Value, json};

/// GGUF token types (llama.cpp's `llama_token_type`).
pub(crate) const TOKEN_UNKNOWN: i32 = 2;
pub(crate) const TOKEN_CONTROL: i32 = 3;
pub(crate) const TOKEN_USER_DEFINED: i32 = 4;

/// Gemma files spell tokens of two or more spaces with real spaces, but
/// look them up (after the space -> "▁" normalizer) as "▁▁": respell them
/// (transformers' `gemma_tokenizer`).
pub(crate) fn respell_space_tokens(tokens: &[String]) -> Vec<String> {
  tokens
    .iter()
    .map(|t| {
      if t.contains(' ') && t.trim().is_empty() {
        "\u{2581}".repeat(t.chars().count())
      } else {
        t.clone()
      }
    })
    .collect()
}

/// BPE merges implied by a SentencePiece vocabulary (python: transformers'
/// `generate_merges(vocab, vocab_scores)`): for every piece, each split into
/// two pieces of the vocabulary (ordered by their ids), all ranked by the
/// piece's score (highest first; ties: longer left piece, then longer right
/// piece, then vocabulary order). `scores[i]` is piece `i`'s score.
pub(crate) fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
  // `{token: id}` keeps the last id of a repeated token, as python's dict.
  let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
  for (i, t) in tokens.iter().enumerate() {
    id.insert(t.as_str(), i);
  }
  struct M<'a> {
    l: &'a str,
    r: &'a str,
    score: f32,
  }
  let mut seen = std::collections::HashSet::with_capacity(tokens.len());
  let mut merges: Vec<M<'_>> = Vec::new();
  for (t, &score) in tokens.iter().zip(scores) {
    if !seen.insert(t.as_str()) {
      continue;
    }
    let mut local: Vec<M<'_>> = t
      .char_indices()
      .skip(1)
      .filter_map(|(b, _)| {
        let (l, r) = t.split_at(b);
        (id.contains_key(l) && id.contains_key(r)).then_some(M { l, r, score })
      })
      .collect();
    local.sort_by_key(|m| (id[m.l], id[m.r]));
    merges.extend(local);
  }
  // Stable sort, descending on (score, len(left), len(right)) in chars.
  let key = |m: &M<'_>| (m.l.chars().count(), m.r.chars().count());
  merges.sort_by(|a, b| {
    b.score
      .total_cmp(&a.score)
      .then_with(|| key(b).cmp(&key(a)))
  });
  merges
    .into_iter()
    .map(|m| (m.l.to_string(), m.r.to_string()))
    .collect()
}

/// The `normalizer` of a SentencePiece vocabulary: spaces to "▁", and one
/// "▁" prepended to every raw-text run when `add_space_prefix`.
pub(crate) fn normalizer(add_space_prefix: bool) -> Value {
  let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
  if add_space_prefix {
    json!({"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "\u{2581}"},
      replace,
    ]})
  } else {
    replace
  }
}

/// The `decoder`: "▁" back to spaces, `<0xNN>` pieces back to bytes, and
/// the prefix space removed again when one was added.
pub(crate) fn decoder(add_space_prefix: bool) -> Value {
  let mut seq = vec![
    json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
    json!({"type": "ByteFallback"}),
    json!({"type": "Fuse"}),
  ];
  if add_space_prefix {
    seq.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
  }
  json!({"type": "Sequence", "decoders": seq})
}

/// The BPE `model`: byte fallback, unknown pieces fused into one `unk`.
pub(crate) fn model(vocab: Value, merges: &[(String, String)], unk: Option<&str>) -> Value {
  let merges: Vec<Value> = merges.iter().map(|(l, r)| json!([l, r])).collect();
  json!({
    "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
    "vocab": vocab, "merges": merges,
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn merges_rank_by_piece_score() {
    let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let tokens = t(&["a", "b", "c", "ab", "bc", "abc"]);
    // "bc" scores above "ab"; "abc" = "a"+"bc" or "ab"+"c".
    let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
    let m = merges_from_scores(&tokens, &scores);
    let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
    assert_eq!(
      m,
      vec![("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")],
      "score order, then the longer left piece first"
    );
    assert_eq!(
      respell_space_tokens(&t(&["  ", " a", "\u{2581}"])),
      t(&["\u{2581}\u{2581}", " a", "\u{2581}"])
    );
  }
}
