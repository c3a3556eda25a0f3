//! Checks against the tiny reference checkpoints in `models/tiny/<arch>/`
//! (made by the repo's fixture script with transformers): for every folder
//! with a `reference.json`, `encode(prompt) == prompt_ids`, the chat
//! template renders exactly `chat.rendered`, and encoding that gives
//! `chat_ids`. Folders are skipped (with a note) while none exist.

use std::path::{Path, PathBuf};

use mlxrs_lm::{ChatOptions, ModelConfig, ModelFiles, Tokenizer};
use serde_json::Value;

fn tiny_dirs() -> Vec<PathBuf> {
  let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny");
  let Ok(entries) = std::fs::read_dir(&root) else {
    return Vec::new();
  };
  let mut dirs: Vec<PathBuf> = entries
    .filter_map(|e| e.ok())
    .map(|e| e.path())
    .filter(|p| p.join("reference.json").is_file())
    .collect();
  dirs.sort();
  dirs
}

fn ids(v: &Value) -> Vec<u32> {
  v.as_array()
    .expect("id list")
    .iter()
    .map(|x| x.as_u64().expect("id") as u32)
    .collect()
}

#[test]
fn tiny_checkpoints_match_reference() {
  let dirs = tiny_dirs();
  if dirs.is_empty() {
    eprintln!("no models/tiny/*/reference.json yet; nothing to check");
    return;
  }
  let mut checked = 0;
  for dir in dirs {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let r: Value =
      serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));

    let prompt = r["prompt"]
      .as_str()
      .unwrap_or_else(|| panic!("{name}: prompt"));
    let add_special = r
      .get("add_special_tokens")
      .and_then(Value::as_bool)
      .unwrap_or(true);
    assert_eq!(
      tok.encode(prompt, add_special).unwrap(),
      ids(&r["prompt_ids"]),
      "{name}: prompt_ids"
    );

    let chat = &r["chat"];
    let messages = chat["messages"]
      .as_array()
      .unwrap_or_else(|| panic!("{name}: chat.messages"));
    let opts = ChatOptions {
      add_generation_prompt: chat
        .get("add_generation_prompt")
        .and_then(Value::as_bool)
        .unwrap_or(false),
      ..Default::default()
    };
    let rendered = tok
      .apply_chat_template_values(messages, &opts)
      .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
      rendered,
      chat["rendered"].as_str().unwrap(),
      "{name}: chat.rendered"
    );
    let chat_special = r
      .get("chat_ids_add_special_tokens")
      .and_then(Value::as_bool)
      .unwrap_or(false);
    let chat_ids = tok.encode(&rendered, chat_special).unwrap();
    assert_eq!(chat_ids, ids(&r["chat_ids"]), "{name}: chat_ids");

    assert_eq!(
      tok.bos_token(),
      r["bos_token"].as_str(),
      "{name}: bos_token"
    );
    assert_eq!(
      tok.eos_token(),
      r["eos_token"].as_str(),
      "{name}: eos_token"
    );
    let mut want_eos = ids(&r["eos_token_ids"]);
    want_eos.sort_unstable();
    assert_eq!(
      tok.eos_token_ids(),
      want_eos.as_slice(),
      "{name}: eos_token_ids"
    );

    // config.json: architecture and quantization as mlx-lm reads them.
    let cfg = ModelConfig::from_dir(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
      cfg.model_type().unwrap(),
      r["model_type"].as_str().unwrap(),
      "{name}: model_type"
    );
    match (&r["quantization"], cfg.quantization().unwrap()) {
      (Value::Null, None) => {}
      (q, Some(got)) => {
        assert_eq!(
          i64::from(got.default.group_size),
          q["group_size"].as_i64().unwrap(),
          "{name}"
        );
        assert_eq!(
          i64::from(got.default.bits),
          q["bits"].as_i64().unwrap(),
          "{name}"
        );
        assert_eq!(
          got.default.mode.as_str(),
          q.get("mode").and_then(Value::as_str).unwrap_or("affine"),
          "{name}"
        );
      }
      (q, got) => panic!("{name}: quantization {q} vs {got:?}"),
    }
    ModelFiles::scan(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));

    // The streaming detokenizer reproduces decode on the rendered chat and
    // on the reference's greedy tokens.
    for stream_ids in [chat_ids.clone(), ids(&r["greedy_tokens"])] {
      let mut d = tok.detokenizer();
      let mut text = String::new();
      for &id in &stream_ids {
        d.add_token(id);
        text.push_str(&d.last_segment());
      }
      d.finalize();
      text.push_str(&d.last_segment());
      assert_eq!(
        text,
        tok.decode(&stream_ids, false).unwrap(),
        "{name}: streaming"
      );
    }
    checked += 1;
  }
  eprintln!("checked {checked} tiny checkpoints");
}
