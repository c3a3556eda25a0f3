//! Bad input gives clear errors, never panics: folders without a pooling
//! config (mean pooling default), unknown architectures, broken tokenizer
//! files, invalid UTF-8 input files, mismatched weights, bad options.

mod common;

use std::path::Path;

use common::*;
use mlxrs_embed::input::read_lines;
use mlxrs_embed::{EmbedOptions, Embedder, Error, PoolingMode};

/// A copy of `models/tiny-embed/<arch>` keeping only `files` (relative
/// paths; directories are created).
fn copy_tiny(arch: &str, files: &[&str]) -> tempfile::TempDir {
  let d = tempfile::tempdir().unwrap();
  for f in files {
    let to = d.path().join(f);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(tiny(arch).join(f), &to).unwrap_or_else(|e| panic!("{f}: {e}"));
  }
  d
}

const PLAIN: &[&str] = &[
  "config.json",
  "model.safetensors",
  "tokenizer.json",
  "tokenizer_config.json",
];

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
  let mut v = json(path);
  f(&mut v);
  std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> Error {
  match Embedder::load(dir) {
    Ok(_) => panic!("{} loaded but should not", dir.display()),
    Err(e) => e,
  }
}

#[test]
fn folder_without_pooling_config_uses_mean_pooling() {
  let d = copy_tiny("bert", PLAIN);
  let model = Embedder::load(d.path()).unwrap();
  assert_eq!(model.folder().pooling.modes, vec![PoolingMode::Mean]);
  assert!(!model.normalizes());
  assert_eq!(model.dim(), 32);
  let texts = ["the quick brown fox", "hello", ""];
  let got = model.embed(&texts).unwrap();
  // Mean of the hidden states over each text's tokens.
  let enc = model.tokenize(&texts, &EmbedOptions::default()).unwrap();
  let ids: Vec<Vec<u32>> = enc.iter().map(|e| e.ids.clone()).collect();
  let mut h = model.forward_ids(&ids).unwrap();
  let seq = h.dim(1).unwrap() as usize;
  let hv = h.to_vec::<f32>().unwrap();
  for (r, row) in ids.iter().enumerate() {
    let mut mean = vec![0f32; 32];
    for t in 0..row.len() {
      for (k, m) in mean.iter_mut().enumerate() {
        *m += hv[(r * seq + t) * 32 + k] / row.len() as f32;
      }
    }
    assert!(max_abs(&mean, &got[r]) < 1e-5, "text {r}");
  }
}

#[test]
fn pooling_listed_but_missing_is_an_error() {
  let d = copy_tiny("bert", &[PLAIN, &["modules.json"]].concat());
  let e = load_err(d.path()).to_string();
  assert!(
    e.contains("1_Pooling") && e.contains("config.json is missing"),
    "{e}"
  );
}

#[test]
fn unknown_architecture() {
  let d = copy_tiny("bert", PLAIN);
  edit_json(&d.path().join("config.json"), |v| {
    v["model_type"] = "gpt2".into()
  });
  match load_err(d.path()) {
    e @ Error::UnsupportedArchitecture { .. } => {
      let m = e.to_string();
      assert!(
        m.contains("\"gpt2\"") && m.contains("supported: bert") && m.contains("config.json"),
        "{m}"
      );
    }
    other => panic!("expected UnsupportedArchitecture, got {other:?}"),
  }
  edit_json(&d.path().join("config.json"), |v| {
    v.as_object_mut().unwrap().remove("model_type");
  });
  let m = load_err(d.path()).to_string();
  assert!(m.contains("model_type") && m.contains("missing"), "{m}");
}

#[test]
fn bad_tokenizer_file() {
  let d = copy_tiny("bert", PLAIN);
  std::fs::write(
    d.path().join("tokenizer.json"),
    b"{\"version\": \"1.0\", \"model\": 42",
  )
  .unwrap();
  match load_err(d.path()) {
    e @ Error::Tokenizer { .. } => {
      let m = e.to_string();
      assert!(
        m.contains("tokenizer.json") && m.contains("cannot load"),
        "{m}"
      );
    }
    other => panic!("expected a tokenizer error, got {other:?}"),
  }
  std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
  let m = load_err(d.path()).to_string();
  assert!(m.contains("missing tokenizer.json"), "{m}");
}

#[test]
fn invalid_utf8_input_file() {
  let d = tempfile::tempdir().unwrap();
  let p = d.path().join("lines.txt");
  std::fs::write(&p, b"first line\nsecond \xc3\x28 line\nthird\n").unwrap();
  match read_lines(&p) {
    Err(e @ Error::InputFile { line: 2, .. }) => {
      let m = e.to_string();
      assert!(
        m.contains("lines.txt:2") && m.contains("invalid UTF-8"),
        "{m}"
      );
    }
    other => panic!("expected an InputFile error, got {other:?}"),
  }
  std::fs::write(&p, "é\r\nñ\n").unwrap();
  assert_eq!(read_lines(&p).unwrap(), vec!["é", "ñ"]);
  assert!(matches!(
    read_lines(d.path().join("none.txt")),
    Err(Error::Io { .. })
  ));
}

#[test]
fn weights_that_do_not_fit_the_config() {
  let d = copy_tiny("bert", PLAIN);
  edit_json(&d.path().join("config.json"), |v| {
    v["intermediate_size"] = 128.into()
  });
  let m = load_err(d.path()).to_string();
  assert!(
    m.contains("encoder.layer.0.intermediate.dense.weight")
      && m.contains("[64, 32]")
      && m.contains("[128, 32]"),
    "{m}"
  );
  edit_json(&d.path().join("config.json"), |v| {
    v["hidden_size"] = "wide".into()
  });
  let m = load_err(d.path()).to_string();
  assert!(m.contains("hidden_size") && m.contains("integer"), "{m}");
  // Loading is strict: a tensor the model has no place for is an error
  // naming it (python `load_weights(strict=True)`).
  edit_json(&d.path().join("config.json"), |v| {
    v["hidden_size"] = 32.into();
    v["intermediate_size"] = 64.into();
  });
  let st = d.path().join("model.safetensors");
  let (mut m, _) = mlxrs_core::io::load_safetensors(&st).unwrap();
  m.insert(
    "encoder.layer.0.attention.self.extra.weight".into(),
    mlxrs_core::Array::from_slice(&[1.0f32, 2.0], &[2]).unwrap(),
  );
  mlxrs_core::io::save_safetensors(&st, &m, &Default::default()).unwrap();
  let m = load_err(d.path()).to_string();
  assert!(
    m.contains("unexpected parameter encoder.layer.0.attention.self.extra.weight"),
    "{m}"
  );
  std::fs::write(
    d.path().join("model.safetensors"),
    b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
  )
  .unwrap();
  edit_json(&d.path().join("config.json"), |v| {
    v["hidden_size"] = 32.into()
  });
  let m = load_err(d.path()).to_string();
  assert!(m.contains("model.safetensors"), "{m}");
  std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
  let m = load_err(d.path()).to_string();
  assert!(m.contains("no model.safetensors"), "{m}");
  std::fs::remove_file(d.path().join("config.json")).unwrap();
  let m = load_err(d.path()).to_string();
  assert!(m.contains("no config.json"), "{m}");
  let m = load_err(&d.path().join("missing-dir")).to_string();
  assert!(m.contains("not a directory"), "{m}");
}

#[test]
fn bad_options() {
  let model = Embedder::load(tiny("xlm-roberta")).unwrap();
  let texts = ["a", "b"];
  let bad = |o: EmbedOptions| model.embed_with(&texts, &o).unwrap_err().to_string();
  let m = bad(EmbedOptions {
    prompt_name: Some("nope".into()),
    ..Default::default()
  });
  assert!(
    m.contains("unknown prompt name \"nope\"") && m.contains("query"),
    "{m}"
  );
  assert!(
    bad(EmbedOptions {
      batch_size: 0,
      ..Default::default()
    })
    .contains("batch size")
  );
  assert!(
    bad(EmbedOptions {
      truncate_dim: Some(0),
      ..Default::default()
    })
    .contains("truncate_dim")
  );
  assert!(
    bad(EmbedOptions {
      truncate_dim: Some(33),
      ..Default::default()
    })
    .contains("1..=32")
  );
  assert!(
    bad(EmbedOptions {
      max_length: Some(0),
      ..Default::default()
    })
    .contains("positive")
  );
  // 64 learned positions, offset by padding_idx + 1 = 2.
  assert!(
    bad(EmbedOptions {
      max_length: Some(65),
      ..Default::default()
    })
    .contains("64 position")
  );
  // A literal prompt wins over the name.
  let a = model
    .embed_with(
      &texts,
      &EmbedOptions {
        prompt: Some("query: ".into()),
        prompt_name: Some("passage".into()),
        ..Default::default()
      },
    )
    .unwrap();
  let b = model
    .embed_with(
      &texts,
      &EmbedOptions {
        prompt_name: Some("query".into()),
        ..Default::default()
      },
    )
    .unwrap();
  assert_eq!(a, b);
}
