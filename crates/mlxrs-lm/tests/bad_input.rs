//! Bad checkpoint files and arguments give an `Err` that names the problem;
//! nothing panics.

use std::fs;
use std::path::{Path, PathBuf};

use mlxrs_lm::{
  ChatOptions, ChatTemplate, Error, GenerationConfig, Message, ModelConfig, Tokenizer,
};

fn fixture(name: &str) -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR"))
    .join("tests/data/tokenizers")
    .join(name)
}

/// A temp copy of a fixture folder.
fn copy_fixture(name: &str) -> tempfile::TempDir {
  let tmp = tempfile::tempdir().unwrap();
  for entry in fs::read_dir(fixture(name)).unwrap() {
    let p = entry.unwrap().path();
    if p.is_file() {
      fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
  }
  tmp
}

fn err_text<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
  r.expect_err("expected an error").to_string()
}

#[test]
fn missing_tokenizer_json() {
  let tmp = tempfile::tempdir().unwrap();
  let e = Tokenizer::from_dir(tmp.path()).unwrap_err();
  assert!(matches!(e, Error::Tokenizer { .. }), "{e:?}");
  let msg = e.to_string();
  assert!(msg.contains("tokenizer.json not found"), "{msg}");
}

#[test]
fn corrupt_tokenizer_json() {
  let tmp = copy_fixture("bpe_bytelevel");
  let path = tmp.path().join("tokenizer.json");
  fs::write(&path, "{\"model\": {\"type\": \"BPE\", ").unwrap();
  let e = Tokenizer::from_dir(tmp.path()).unwrap_err();
  assert!(matches!(e, Error::Json { .. }), "{e:?}");
  assert!(e.to_string().contains("tokenizer.json"), "{e}");

  // Valid JSON that is not a tokenizer.
  fs::write(&path, "{\"hello\": 1}").unwrap();
  let e = Tokenizer::from_dir(tmp.path()).unwrap_err();
  assert!(matches!(e, Error::Tokenizer { .. }), "{e:?}");
  assert!(
    e.to_string().contains("tokenizer.json") && e.to_string().contains("cannot load"),
    "{e}"
  );

  // Empty file.
  fs::write(&path, "").unwrap();
  assert!(Tokenizer::from_dir(tmp.path()).is_err());
}

#[test]
fn non_utf8_files() {
  for file in [
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
  ] {
    let tmp = copy_fixture("bpe_bytelevel");
    fs::write(tmp.path().join(file), b"{\"a\": \"\xff\xfe\"}").unwrap();
    let e = Tokenizer::from_dir(tmp.path()).unwrap_err();
    assert!(matches!(e, Error::Utf8 { .. }), "{file}: {e:?}");
    let msg = e.to_string();
    assert!(msg.contains(file) && msg.contains("UTF-8"), "{msg}");
  }
  let tmp = copy_fixture("spm_nospace");
  fs::write(
    tmp.path().join("chat_template.jinja"),
    b"{{ bos_token }}\xc3\x28",
  )
  .unwrap();
  let msg = err_text(Tokenizer::from_dir(tmp.path()));
  assert!(
    msg.contains("chat_template.jinja") && msg.contains("UTF-8"),
    "{msg}"
  );
}

#[test]
fn config_json_errors() {
  let tmp = tempfile::tempdir().unwrap();
  let path = tmp.path().join("config.json");

  let msg = err_text(ModelConfig::from_dir(tmp.path()));
  assert!(msg.contains("config.json"), "{msg}");

  fs::write(&path, "model_type = llama").unwrap();
  let e = ModelConfig::from_dir(tmp.path()).unwrap_err();
  assert!(matches!(e, Error::Json { .. }), "{e:?}");
  assert!(
    e.to_string().contains("config.json") && e.to_string().contains("invalid JSON"),
    "{e}"
  );

  fs::write(&path, "[1, 2]").unwrap();
  let msg = err_text(ModelConfig::from_dir(tmp.path()));
  assert!(msg.contains("expected an object"), "{msg}");

  fs::write(&path, r#"{"hidden_size": 8}"#).unwrap();
  let cfg = ModelConfig::from_dir(tmp.path()).unwrap();
  let e = cfg.model_type().unwrap_err();
  assert!(
    matches!(&e, Error::Config { field, .. } if field == "model_type"),
    "{e:?}"
  );
  assert!(e.to_string().contains("config.json"), "{e}");

  fs::write(&path, r#"{"model_type": 3}"#).unwrap();
  let msg = err_text(ModelConfig::from_dir(tmp.path()).unwrap().model_type());
  assert!(
    msg.contains("model_type") && msg.contains("expected a string"),
    "{msg}"
  );

  fs::write(&path, r#"{"model_type": "llama", "text_config": 5}"#).unwrap();
  let msg = err_text(ModelConfig::from_dir(tmp.path()));
  assert!(msg.contains("text_config"), "{msg}");

  // A corrupt config.json also stops the tokenizer (its EOS ids live there).
  let tok_dir = copy_fixture("bpe_bytelevel");
  fs::write(tok_dir.path().join("config.json"), "{").unwrap();
  let msg = err_text(Tokenizer::from_dir(tok_dir.path()));
  assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn generation_config_errors() {
  let tmp = tempfile::tempdir().unwrap();
  fs::write(
    tmp.path().join("generation_config.json"),
    r#"{"temperature": "hot", "eos_token_id": [1, -2]}"#,
  )
  .unwrap();
  let g = GenerationConfig::from_dir(tmp.path()).unwrap().unwrap();
  let msg = err_text(g.temperature());
  assert!(
    msg.contains("generation_config.json") && msg.contains("temperature"),
    "{msg}"
  );
  let msg = err_text(g.eos_token_ids());
  assert!(msg.contains("eos_token_id[1]"), "{msg}");
  fs::write(tmp.path().join("generation_config.json"), "nope").unwrap();
  let msg = err_text(GenerationConfig::from_dir(tmp.path()));
  assert!(msg.contains("generation_config.json"), "{msg}");
  assert!(
    GenerationConfig::from_dir(tmp.path().join("absent"))
      .unwrap()
      .is_none()
  );
}

#[test]
fn tokenizer_config_errors() {
  let tmp = copy_fixture("bpe_bytelevel");
  let path = tmp.path().join("tokenizer_config.json");
  fs::write(&path, r#"{"eos_token": 5}"#).unwrap();
  let msg = err_text(Tokenizer::from_dir(tmp.path()));
  assert!(
    msg.contains("tokenizer_config.json") && msg.contains("eos_token"),
    "{msg}"
  );

  fs::write(&path, r#"{"chat_template": 7}"#).unwrap();
  let msg = err_text(Tokenizer::from_dir(tmp.path()));
  assert!(msg.contains("chat_template"), "{msg}");

  fs::write(&path, r#"{"chat_template": [{"name": "default"}]}"#).unwrap();
  let msg = err_text(Tokenizer::from_dir(tmp.path()));
  assert!(msg.contains("chat_template[0]"), "{msg}");

  fs::write(&path, r#"{"add_bos_token": "yes"}"#).unwrap();
  let msg = err_text(Tokenizer::from_dir(tmp.path()));
  assert!(msg.contains("add_bos_token"), "{msg}");

  fs::write(&path, "[]").unwrap();
  let msg = err_text(Tokenizer::from_dir(tmp.path()));
  assert!(msg.contains("tokenizer_config.json"), "{msg}");
}

#[test]
fn template_syntax_error() {
  let e = ChatTemplate::new("broken", "{% for m in messages %}{{ m.content }").unwrap_err();
  assert!(matches!(e, Error::Template { .. }), "{e:?}");
  let msg = e.to_string();
  assert!(
    msg.contains("`broken`") && msg.contains("syntax error"),
    "{msg}"
  );

  // A checkpoint with a broken template still loads; rendering reports it.
  let tmp = copy_fixture("bpe_bytelevel");
  fs::write(
    tmp.path().join("tokenizer_config.json"),
    r#"{"eos_token": "<|im_end|>", "chat_template": "{% if %}"}"#,
  )
  .unwrap();
  let tok = Tokenizer::from_dir(tmp.path()).unwrap();
  assert_eq!(
    tok.encode("Hello", false).unwrap(),
    Tokenizer::from_dir(fixture("bpe_bytelevel"))
      .unwrap()
      .encode("Hello", false)
      .unwrap()
  );
  let msg = err_text(tok.apply_chat_template(&[Message::user("hi")], &ChatOptions::default()));
  assert!(
    msg.contains("chat template `default`") && msg.contains("syntax error"),
    "{msg}"
  );

  // Unclosed block, unknown filter, runtime error.
  assert!(ChatTemplate::new("t", "{% if true %}x").is_err());
  let t = ChatTemplate::new("t", "{{ messages | no_such_filter }}");
  assert!(
    t.is_err()
      || t
        .unwrap()
        .render(
          &[Message::user("x")],
          &ChatOptions::default(),
          &Default::default()
        )
        .is_err()
  );
  let t = ChatTemplate::new("t", "{{ messages[0].content + 1 }}").unwrap();
  assert!(
    t.render(
      &[Message::user("x")],
      &ChatOptions::default(),
      &Default::default()
    )
    .is_err()
  );
}

#[test]
fn chat_argument_errors() {
  let tok = Tokenizer::from_dir(fixture("bpe_bytelevel")).unwrap();
  let msg = err_text(tok.apply_chat_template(&[], &ChatOptions::default()));
  assert!(msg.contains("empty conversation"), "{msg}");
  let both = ChatOptions {
    add_generation_prompt: true,
    continue_final_message: true,
    ..Default::default()
  };
  assert!(
    tok
      .apply_chat_template(&[Message::user("x")], &both)
      .is_err()
  );
  let msg = err_text(tok.apply_chat_template_values(
    &[serde_json::json!("not a message")],
    &ChatOptions::default(),
  ));
  assert!(msg.contains("message 0"), "{msg}");
  let mut clash = ChatOptions::default();
  clash.extra.insert("messages".into(), serde_json::json!([]));
  assert!(
    tok
      .apply_chat_template(&[Message::user("x")], &clash)
      .is_err()
  );

  // No template at all.
  let tmp = copy_fixture("bpe_bytelevel");
  fs::write(tmp.path().join("tokenizer_config.json"), "{}").unwrap();
  let tok = Tokenizer::from_dir(tmp.path()).unwrap();
  let msg = err_text(tok.apply_chat_template(&[Message::user("x")], &ChatOptions::default()));
  assert!(msg.contains("has no chat template"), "{msg}");

  let mut tok = tok;
  let msg = err_text(tok.add_eos_token("<definitely-not-a-token>"));
  assert!(msg.contains("is not a token"), "{msg}");
}

#[test]
fn quantization_errors_name_file_and_field() {
  let tmp = tempfile::tempdir().unwrap();
  fs::write(
    tmp.path().join("config.json"),
    r#"{"model_type": "llama", "quantization": {"group_size": 0, "bits": 4}}"#,
  )
  .unwrap();
  let msg = err_text(ModelConfig::from_dir(tmp.path()).unwrap().quantization());
  assert!(
    msg.contains("config.json") && msg.contains("quantization.group_size"),
    "{msg}"
  );
  fs::write(tmp.path().join("config.json"), r#"{"model_type": "llama", "quantization": {"group_size": 64, "bits": 4, "lm_head": {"bits": "x"}}}"#).unwrap();
  let msg = err_text(ModelConfig::from_dir(tmp.path()).unwrap().quantization());
  assert!(msg.contains("quantization.lm_head.bits"), "{msg}");
  fs::write(tmp.path().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
  fs::write(
    tmp.path().join("hf_quant_config.json"),
    r#"{"quantization": {"quant_algo": "FP8"}, "quant_method": "modelopt"}"#,
  )
  .unwrap();
  let msg = err_text(ModelConfig::from_dir(tmp.path()).unwrap().quantization());
  assert!(
    msg.contains("hf_quant_config.json") && msg.contains("quant_algo"),
    "{msg}"
  );
}

#[test]
fn unsupported_model_type_lists_supported() {
  let e = Error::unsupported_model_type("mamba9", &["llama", "qwen3"]);
  assert_eq!(
    e.to_string(),
    "unsupported model type `mamba9` (supported: llama, qwen3)"
  );
}

/// The library side of issue #20: `build_model` checks the config before
/// building layers (a negative layer count used to overflow an allocation),
/// and `TextStream` bounds `max_tokens` by the context with a note.
#[test]
fn config_values_are_checked_and_generation_is_bounded() {
  let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny/llama");
  let cfg: serde_json::Value =
    serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
  for (field, v, needle) in [
    (
      "num_hidden_layers",
      serde_json::json!(-1),
      "num_hidden_layers must be a positive integer, got -1",
    ),
    (
      "hidden_size",
      serde_json::json!(0),
      "hidden_size must be a positive integer, got 0",
    ),
    (
      "rope_theta",
      serde_json::json!(0.0),
      "rope_theta must be a finite number > 0",
    ),
  ] {
    let mut c = cfg.clone();
    c[field] = v;
    let e = mlxrs_lm::build_model(&c)
      .err()
      .expect("an error")
      .to_string();
    assert!(e.contains(needle), "{field}: {e}");
  }
  let m = mlxrs_lm::load(
    dir.to_str().unwrap(),
    &mlxrs_lm::LoadOptions {
      dtype: Some(mlxrs_core::Dtype::Float32),
      no_tokenizer: false,
    },
  )
  .unwrap();
  let mut opts = mlxrs_lm::GenerateOptions::default();
  opts.step.max_tokens = usize::MAX;
  let prompt: Vec<u32> = (1..500).collect();
  let s = mlxrs_lm::TextStream::new(&m, &prompt, &opts, None).unwrap();
  assert!(
    s.clamp_note().unwrap().contains("clamped to 13"),
    "{:?}",
    s.clamp_note()
  );
  let out = mlxrs_lm::collect(s).unwrap();
  assert!(out.tokens.len() <= 13, "{}", out.tokens.len());
  let long: Vec<u32> = (0..513).map(|i| 1 + i % 400).collect();
  let e = mlxrs_lm::TextStream::new(&m, &long, &opts, None)
    .err()
    .expect("an error")
    .to_string();
  assert!(e.contains("more than the model's context of 512"), "{e}");
}
