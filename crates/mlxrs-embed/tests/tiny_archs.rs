//! Tiny random checkpoints of every architecture (models/tiny-embed/<arch>,
//! made by scripts/make_embed_refs.py with transformers' model classes and
//! saved as sentence-transformers folders) against transformers' last
//! hidden states and sentence-transformers' embeddings.

mod common;

use common::*;
use mlxrs_embed::{EmbedOptions, Embedder, Error};

/// Max |diff| allowed on last hidden states (float32 through 2-4 layers).
const HIDDEN_TOL: f32 = 2e-5;
/// Max |diff| allowed on pooled (and projected / normalized) embeddings.
const EMBED_TOL: f32 = 2e-5;

fn check(arch: &str) {
  let dir = tiny(arch);
  let refs = json(&dir.join("reference.json"));
  let ref_st = dir.join("reference.safetensors");
  let texts = strings(&refs["texts"]);
  let model = Embedder::load(&dir).unwrap_or_else(|e| panic!("{arch}: {e}"));
  assert_eq!(
    model.max_seq_length(),
    refs["max_seq_length"].as_u64().unwrap() as usize,
    "{arch}"
  );
  assert_eq!(
    model.dim(),
    refs["embedding_dim"].as_u64().unwrap() as usize,
    "{arch}"
  );

  // Tokens (default prompt, if the folder has one, included).
  let ids = id_lists(&refs["input_ids"]);
  let enc = model.tokenize(&texts, &EmbedOptions::default()).unwrap();
  for (i, (e, w)) in enc.iter().zip(&ids).enumerate() {
    assert_eq!(&e.ids, w, "{arch}: token ids of text {i} ({:?})", texts[i]);
  }

  // Last hidden states on the same right-padded batch.
  let (want_h, hshape) = tensor(&ref_st, "hidden_states");
  let hidden = hshape[1];
  let mut h = model.forward_ids(&ids).unwrap();
  let seq = h.dim(1).unwrap() as usize;
  let all = h.to_vec::<f32>().unwrap();
  let mut got_h = Vec::new();
  for (r, row) in ids.iter().enumerate() {
    got_h.extend_from_slice(&all[r * seq * hidden..(r * seq + row.len()) * hidden]);
  }
  let dh = max_abs(&got_h, &want_h);

  // Sentence embeddings through pooling / Dense / Normalize.
  let (want_e, eshape) = tensor(&ref_st, "embeddings");
  let opts = EmbedOptions {
    batch_size: refs["batch_size"].as_u64().unwrap() as usize,
    ..Default::default()
  };
  let got = model.embed_with(&texts, &opts).unwrap();
  let de = max_abs(&got.concat(), &want_e);
  assert_eq!(got[0].len(), eshape[1]);

  // With a named prompt.
  let mut dp = 0.0;
  if let Some(name) = refs["prompt_name"].as_str() {
    let popts = EmbedOptions {
      prompt_name: Some(name.to_string()),
      ..opts.clone()
    };
    let pids = id_lists(&refs["input_ids_prompt"]);
    let penc = model.tokenize(&texts, &popts).unwrap();
    for (i, (e, w)) in penc.iter().zip(&pids).enumerate() {
      assert_eq!(&e.ids, w, "{arch}: prompted token ids of text {i}");
    }
    let (want_p, _) = tensor(&ref_st, "embeddings_prompt");
    dp = max_abs(&model.embed_with(&texts, &popts).unwrap().concat(), &want_p);
  }
  eprintln!("{arch}: max |diff| hidden {dh:.2e}, embeddings {de:.2e}, prompted {dp:.2e}");
  assert!(dh <= HIDDEN_TOL, "{arch}: hidden states differ by {dh}");
  assert!(de <= EMBED_TOL, "{arch}: embeddings differ by {de}");
  assert!(
    dp <= EMBED_TOL,
    "{arch}: prompted embeddings differ by {dp}"
  );

  // The long text hits the 40-token limit: cut by default, an error without truncation.
  let long = ids
    .iter()
    .position(|r| r.len() == model.max_seq_length())
    .expect("a truncated text");
  let strict = EmbedOptions {
    truncate: false,
    ..Default::default()
  };
  match model.embed_with(&texts[long..=long], &strict) {
    Err(Error::InputTooLong {
      index: 0,
      tokens,
      limit,
    }) => assert!(tokens > limit, "{arch}"),
    other => panic!("{arch}: expected InputTooLong, got {other:?}"),
  }
}

#[test]
fn bert() {
  check("bert");
}

#[test]
fn xlm_roberta() {
  check("xlm-roberta");
}

#[test]
fn modernbert() {
  check("modernbert");
}

#[test]
fn nomic_bert() {
  check("nomic_bert");
}

#[test]
fn qwen3() {
  check("qwen3");
}

#[test]
fn gemma3_text() {
  check("gemma3_text");
}

/// A 4-bit copy of a tiny checkpoint (every Linear / Embedding quantized as
/// Python MLX `nn.quantize(group_size=32, bits=4)` does) against
/// sentence-transformers run on its dequantized weights; its outputs must
/// also be far from the float model's, so the packed weights are what ran.
fn check_4bit(arch: &str, layers: usize) {
  let q = format!("{arch}-4bit");
  let model = Embedder::load(tiny(&q)).unwrap_or_else(|e| panic!("{q}: {e}"));
  let quantized = model.quantized_layers();
  assert_eq!(quantized.len(), layers, "{q}: {quantized:?}");
  check(&q);
  let texts = strings(&json(&tiny(&q).join("reference.json"))["texts"]);
  let (float_e, _) = tensor(&tiny(arch).join("reference.safetensors"), "embeddings");
  let got = model.embed(&texts).unwrap().concat();
  let d = max_abs(&got, &float_e);
  eprintln!(
    "{q}: {} quantized layers, max |diff| to the float model {d:.2e}",
    layers
  );
  assert!(
    d > 100.0 * EMBED_TOL,
    "{q}: no closer to its reference than to the float model ({d})"
  );
}

#[test]
fn bert_4bit() {
  check_4bit("bert", 16);
}

#[test]
fn qwen3_4bit() {
  check_4bit("qwen3", 15);
}

/// nomic_bert checkpoints in transformers' in-memory naming (`layers.N.
/// self_attn.{q,k,v}_proj`, `mlp.up_proj`, ...) load to the same model as
/// nomic's original naming (the fixture), whose fused `Wqkv` they split.
#[test]
fn nomic_bert_transformers_naming() {
  use std::collections::HashMap;
  let src = tiny("nomic_bert");
  let d = tempfile::tempdir().unwrap();
  for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
    std::fs::copy(src.join(f), d.path().join(f)).unwrap();
  }
  let (orig, _) = mlxrs_core::io::load_safetensors(src.join("model.safetensors")).unwrap();
  let mut renamed = HashMap::new();
  for (k, a) in orig {
    let k = k
      .replace("emb_ln.", "embeddings.LayerNorm.")
      .replace("encoder.layers.", "layers.")
      .replace("attn.out_proj", "self_attn.o_proj")
      .replace("norm1.", "post_attention_layernorm.")
      .replace("norm2.", "post_mlp_layernorm.")
      .replace("mlp.fc11", "mlp.up_proj")
      .replace("mlp.fc12", "mlp.gate_proj")
      .replace("mlp.fc2", "mlp.down_proj");
    if let Some(layer) = k.strip_suffix(".attn.Wqkv.weight") {
      let h = a.dim(1).unwrap();
      for (i, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let i = i as i32;
        let part = mlxrs_core::ops::slice(&a, &[i * h, 0], &[(i + 1) * h, h], &[1, 1]).unwrap();
        renamed.insert(format!("{layer}.self_attn.{p}.weight"), part);
      }
    } else {
      renamed.insert(k, a);
    }
  }
  assert!(renamed.contains_key("layers.1.self_attn.k_proj.weight"));
  mlxrs_core::io::save_safetensors(
    d.path().join("model.safetensors"),
    &renamed,
    &HashMap::new(),
  )
  .unwrap();
  let ids = id_lists(&json(&src.join("reference.json"))["input_ids"]);
  let mut want = Embedder::load(&src).unwrap().forward_ids(&ids).unwrap();
  let mut got = Embedder::load(d.path()).unwrap().forward_ids(&ids).unwrap();
  let diff = max_abs(
    &got.to_vec::<f32>().unwrap(),
    &want.to_vec::<f32>().unwrap(),
  );
  assert!(diff <= 1e-6, "transformers naming differs by {diff}");
}

/// `do_lower_case` in `sentence_bert_config.json` lower-cases before a
/// case-sensitive tokenizer (sentence-transformers prepends a Lowercase
/// normalizer).
#[test]
fn do_lower_case() {
  let d = tempfile::tempdir().unwrap();
  for f in [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
  ] {
    std::fs::copy(tiny("qwen3").join(f), d.path().join(f)).unwrap();
  }
  let plain = Embedder::load(d.path()).unwrap();
  let o = EmbedOptions::default();
  let upper = plain.tokenize(&["HELLO World"], &o).unwrap();
  let lower = plain.tokenize(&["hello world"], &o).unwrap();
  assert_ne!(upper, lower);
  std::fs::write(
    d.path().join("sentence_bert_config.json"),
    r#"{"max_seq_length": 16, "do_lower_case": true}"#,
  )
  .unwrap();
  let lc = Embedder::load(d.path()).unwrap();
  assert_eq!(lc.max_seq_length(), 16);
  assert_eq!(lc.tokenize(&["HELLO World"], &o).unwrap(), lower);
  assert_eq!(
    lc.embed(&["HELLO World"]).unwrap(),
    plain.embed(&["hello world"]).unwrap()
  );
}
