//! The cross-encoder against sentence-transformers' `CrossEncoder.predict`
//! on a tiny random BertForSequenceClassification
//! (models/tiny-embed/bert-reranker, made by scripts/make_embed_refs.py).

mod common;

use common::*;
use mlxrs_embed::{CrossEncoder, Error, RerankOptions};

#[test]
fn reranker_matches_sentence_transformers() {
  let dir = tiny("bert-reranker");
  let refs = json(&dir.join("reference.json"));
  let pairs: Vec<(String, String)> = refs["pairs"]
    .as_array()
    .unwrap()
    .iter()
    .map(|p| {
      (
        p[0].as_str().unwrap().to_string(),
        p[1].as_str().unwrap().to_string(),
      )
    })
    .collect();
  let ce = CrossEncoder::load(&dir).unwrap();
  assert_eq!(ce.num_labels(), 1);
  assert_eq!(
    ce.max_length(),
    refs["max_length"].as_u64().unwrap() as usize
  );
  let enc = ce.tokenize(&pairs, true).unwrap();
  for (i, (e, w)) in enc.iter().zip(id_lists(&refs["input_ids"])).enumerate() {
    assert_eq!(e.ids, w, "pair {i}");
  }
  let opts = RerankOptions {
    batch_size: 4,
    ..Default::default()
  };
  let (want, _) = tensor(&dir.join("reference.safetensors"), "scores");
  let got = ce.score(&pairs, &opts).unwrap();
  let d = max_abs(&got, &want);
  let (want_l, _) = tensor(&dir.join("reference.safetensors"), "logits");
  let raw = ce
    .score(
      &pairs,
      &RerankOptions {
        apply_activation: false,
        ..opts.clone()
      },
    )
    .unwrap();
  let dl = max_abs(&raw, &want_l);
  eprintln!("bert-reranker: max |diff| scores {d:.2e}, logits {dl:.2e}");
  assert!(d < 1e-5 && dl < 1e-5, "scores {d}, logits {dl}");

  // rank() orders by score.
  let docs: Vec<&str> = pairs[..3].iter().map(|p| p.1.as_str()).collect();
  let ranked = ce.rank(&pairs[0].0, &docs, &opts).unwrap();
  assert_eq!(ranked.len(), 3);
  assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1));

  // Over-long pairs without truncation.
  let strict = RerankOptions {
    truncate: false,
    ..opts
  };
  let long = &pairs[4..5];
  assert!(matches!(
    ce.score(long, &strict),
    Err(Error::InputTooLong { index: 0, .. })
  ));
  // A sentence-embedding folder is not a cross-encoder.
  let e = CrossEncoder::load(tiny("qwen3")).unwrap_err().to_string();
  assert!(e.contains("qwen3"), "{e}");
}
