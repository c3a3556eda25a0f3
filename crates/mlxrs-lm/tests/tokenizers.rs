//! The tokenizer, streaming detokenizer and chat templates against the
//! reference outputs of Python `tokenizers` / transformers, recorded by
//! `tests/data/make_reference.py` for the tiny fixtures in
//! `tests/data/tokenizers/`.

use std::path::{Path, PathBuf};

use mlxrs_lm::{ChatOptions, DetokenizerKind, Message, Tokenizer};
use serde_json::{Map, Value};

const FIXTURES: [&str; 4] = [
  "bpe_bytelevel",
  "spm_bytefallback",
  "spm_nospace",
  "metaspace",
];

fn data() -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn fixture(name: &str) -> (Tokenizer, Value) {
  let dir = data().join("tokenizers").join(name);
  let tok = Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
  let reference: Value =
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
  (tok, reference)
}

fn templates() -> Value {
  serde_json::from_str(&std::fs::read_to_string(data().join("templates.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
  v.as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_u64().unwrap() as u32)
    .collect()
}

/// Stream `ids` one at a time; check every intermediate text is a prefix of
/// the final one (nothing retracted, no split character) and return the
/// concatenated segments.
fn stream(tok: &Tokenizer, ids: &[u32]) -> String {
  let full = tok.decode(ids, false).unwrap();
  let mut d = tok.detokenizer();
  let mut out = String::new();
  for &id in ids {
    d.add_token(id);
    out.push_str(&d.last_segment());
    assert!(
      full.starts_with(&out),
      "streamed {out:?} is not a prefix of decode {full:?}"
    );
  }
  d.finalize();
  out.push_str(&d.last_segment());
  assert_eq!(d.tokens(), ids);
  out
}

#[test]
fn detokenizer_kind_follows_decoder() {
  let want = [
    DetokenizerKind::Bpe,
    DetokenizerKind::Spm { trim_space: true },
    DetokenizerKind::Spm { trim_space: false },
    DetokenizerKind::Naive,
  ];
  for (name, kind) in FIXTURES.iter().zip(want) {
    let (tok, _) = fixture(name);
    assert_eq!(tok.detokenizer_kind(), kind, "{name}");
    assert_eq!(tok.detokenizer().kind(), kind, "{name}");
  }
}

#[test]
fn encode_and_decode_match_python() {
  for name in FIXTURES {
    let (tok, r) = fixture(name);
    for case in r["cases"].as_array().unwrap() {
      let text = case["text"].as_str().unwrap();
      assert_eq!(
        tok.encode(text, false).unwrap(),
        ids(&case["ids"]),
        "{name}: encode {text:?}"
      );
      assert_eq!(
        tok.encode(text, true).unwrap(),
        ids(&case["ids_special"]),
        "{name}: encode+special {text:?}"
      );
      let decoded = tok.decode(&ids(&case["ids"]), false).unwrap();
      assert_eq!(
        decoded,
        case["decoded"].as_str().unwrap(),
        "{name}: decode {text:?}"
      );
      assert_eq!(
        decoded,
        case["hf_decoded"].as_str().unwrap(),
        "{name}: transformers decode {text:?}"
      );
    }
  }
}

#[test]
fn streaming_equals_decode() {
  for name in FIXTURES {
    let (tok, r) = fixture(name);
    let mut all = Vec::new();
    for case in r["cases"].as_array().unwrap() {
      for key in ["ids", "ids_special"] {
        let ids = ids(&case[key]);
        assert_eq!(
          stream(&tok, &ids),
          tok.decode(&ids, false).unwrap(),
          "{name}: {key} of {:?}",
          case["text"]
        );
      }
      all.extend(ids(&case["ids"]));
    }
    // One long stream across every case (special tokens included).
    assert_eq!(
      stream(&tok, &all),
      tok.decode(&all, false).unwrap(),
      "{name}: long stream"
    );
    // Chat-rendered token streams.
    for chat in r["chats"].as_array().unwrap() {
      if let Some(chat_ids) = chat.get("ids") {
        let ids = ids(chat_ids);
        assert_eq!(
          stream(&tok, &ids),
          tok.decode(&ids, false).unwrap(),
          "{name}: chat {}",
          chat["template"]
        );
      }
    }
  }
}

#[test]
fn streaming_holds_partial_utf8() {
  // Byte-level BPE and byte-fallback pieces: an emoji spans several tokens
  // and nothing may come out until it is complete.
  for name in ["bpe_bytelevel", "spm_bytefallback"] {
    let (tok, _) = fixture(name);
    let ids = tok.encode("😀", false).unwrap();
    assert!(
      ids.len() > 1,
      "{name}: fixture should split the emoji into bytes: {ids:?}"
    );
    let mut d = tok.detokenizer();
    for &id in &ids[..ids.len() - 1] {
      d.add_token(id);
      assert!(!d.last_segment().contains('\u{FFFD}'), "{name}");
    }
    assert_eq!(d.text().trim(), "");
    d.add_token(ids[ids.len() - 1]);
    assert_eq!(d.last_segment().trim(), "😀", "{name}");
  }
}

#[test]
fn streaming_is_incremental() {
  // Whole words come out as soon as they are complete, not only at the end.
  for name in FIXTURES {
    let (tok, _) = fixture(name);
    let ids = tok
      .encode("Hello world! This is a tiny corpus", false)
      .unwrap();
    let mut d = tok.detokenizer();
    let mut released_before_end = 0;
    for (i, &id) in ids.iter().enumerate() {
      d.add_token(id);
      let seg = d.last_segment();
      if i + 1 < ids.len() {
        released_before_end += seg.len();
      }
    }
    assert!(
      released_before_end > 10,
      "{name}: only {released_before_end} bytes released before finalize"
    );
  }
}

#[test]
fn bpe_trim_leading_space_option() {
  let (tok, _) = fixture("bpe_bytelevel");
  let ids = tok.encode(" Hello world", false).unwrap();
  let mut d = tok.detokenizer();
  d.set_trim_leading_space(true);
  for &id in &ids {
    d.add_token(id);
  }
  d.finalize();
  assert_eq!(d.text(), "Hello world");
  d.reset();
  assert_eq!(d.text(), "");
  assert!(d.tokens().is_empty());
}

#[test]
fn unknown_ids_do_not_panic() {
  for name in FIXTURES {
    let (tok, _) = fixture(name);
    let mut d = tok.detokenizer();
    for id in [u32::MAX, 1_000_000, 0, 5] {
      d.add_token(id);
    }
    d.finalize();
    let _ = d.last_segment();
    assert!(tok.decode(&[u32::MAX, 3], false).is_ok(), "{name}");
  }
}

#[test]
fn special_tokens_and_eos_ids() {
  let want_eos: [&[u32]; 4] = [&[0, 2], &[2], &[1], &[2]];
  for (name, eos) in FIXTURES.iter().zip(want_eos) {
    let (tok, r) = fixture(name);
    let info = &r["tokenizer"];
    assert_eq!(tok.bos_token(), info["bos_token"].as_str(), "{name}");
    assert_eq!(tok.eos_token(), info["eos_token"].as_str(), "{name}");
    assert_eq!(tok.pad_token(), info["pad_token"].as_str(), "{name}");
    assert_eq!(tok.unk_token(), info["unk_token"].as_str(), "{name}");
    assert_eq!(
      tok.eos_token_id().map(u64::from),
      info["eos_token_id"].as_u64(),
      "{name}"
    );
    assert_eq!(
      Value::Object(tok.special_tokens().to_map()),
      info["special_tokens_map"],
      "{name}"
    );
    assert_eq!(tok.eos_token_ids(), eos, "{name}");
  }
  let (mut tok, _) = fixture("bpe_bytelevel");
  tok.add_eos_token("<|endoftext|>").unwrap();
  tok.add_eos_token("7").unwrap();
  assert_eq!(tok.eos_token_ids(), &[0, 2, 7]);
  assert!(tok.is_eos(7) && !tok.is_eos(8));
  let (tok, _) = fixture("spm_bytefallback");
  assert_eq!(tok.add_bos_token(), Some(true));
  assert_eq!(tok.bos_token_id(), Some(1));
}

fn chat_options(kwargs: &Value, template_source: Option<&str>) -> ChatOptions {
  let mut opts = ChatOptions {
    chat_template: template_source.map(str::to_string),
    ..Default::default()
  };
  let mut extra = Map::new();
  for (k, v) in kwargs.as_object().unwrap() {
    match k.as_str() {
      "add_generation_prompt" => opts.add_generation_prompt = v.as_bool().unwrap(),
      "continue_final_message" => opts.continue_final_message = v.as_bool().unwrap(),
      "tools" => opts.tools = Some(v.as_array().unwrap().clone()),
      _ => {
        extra.insert(k.clone(), v.clone());
      }
    }
  }
  opts.extra = extra;
  opts
}

#[test]
fn chat_templates_match_transformers() {
  let t = templates();
  let mut checked = 0;
  for name in FIXTURES {
    let (tok, r) = fixture(name);
    for case in r["chats"].as_array().unwrap() {
      let tname = case["template"].as_str().unwrap();
      let conv = case["conversation"].as_str().unwrap();
      let source = t["templates"][tname].as_str().unwrap();
      let messages = t["conversations"][conv].as_array().unwrap();
      let opts = chat_options(&case["kwargs"], Some(source));
      let got = tok.apply_chat_template_values(messages, &opts);
      match (case.get("rendered"), case.get("error")) {
        (Some(want), _) => {
          let got = got.unwrap_or_else(|e| panic!("{name}/{tname}/{conv}: {e}"));
          assert_eq!(got, want.as_str().unwrap(), "{name}/{tname}/{conv}");
          assert_eq!(
            tok.encode(&got, false).unwrap(),
            ids(&case["ids"]),
            "{name}/{tname}/{conv}: ids"
          );
        }
        (None, Some(err)) => {
          let e = got
            .expect_err(&format!("{name}/{tname}/{conv} should fail"))
            .to_string();
          let err = err.as_str().unwrap();
          if err.contains("alternate") {
            assert!(e.contains(err), "{name}/{tname}/{conv}: {e}");
          }
        }
        _ => panic!("bad reference entry"),
      }
      checked += 1;
    }
  }
  assert!(checked >= 40, "{checked}");
}

#[test]
fn checkpoint_chat_templates() {
  let t = templates();
  for name in FIXTURES {
    let (tok, r) = fixture(name);
    let dc = &r["default_chat"];
    let Some(want) = dc.get("rendered") else {
      continue;
    };
    let messages = t["conversations"][dc["conversation"].as_str().unwrap()]
      .as_array()
      .unwrap();
    let opts = ChatOptions {
      add_generation_prompt: true,
      ..Default::default()
    };
    let got = tok.apply_chat_template_values(messages, &opts).unwrap();
    assert_eq!(got, want.as_str().unwrap(), "{name}");
    assert_eq!(tok.encode(&got, false).unwrap(), ids(&dc["ids"]), "{name}");
  }

  // Named templates (tokenizer_config list form): tools pick `tool_use`.
  let (tok, _) = fixture("spm_bytefallback");
  assert_eq!(
    tok.chat_templates().unwrap().names(),
    vec!["default", "tool_use"]
  );
  let messages = vec![Message::user("Weather in Paris?")];
  let tool: Value = t["templates"]["tools"].clone();
  let with_tools = ChatOptions {
    tools: Some(vec![serde_json::json!({"name": "f"})]),
    ..Default::default()
  };
  let inline = ChatOptions {
    chat_template: Some(tool.as_str().unwrap().to_string()),
    ..with_tools.clone()
  };
  assert_eq!(
    tok.apply_chat_template(&messages, &with_tools).unwrap(),
    tok.apply_chat_template(&messages, &inline).unwrap()
  );
  let by_name = ChatOptions {
    chat_template: Some("tool_use".into()),
    ..Default::default()
  };
  assert!(
    tok
      .apply_chat_template(&messages, &by_name)
      .unwrap()
      .contains("<!-- 1 turns, last=USER -->")
  );

  // chat_template.json (processor file) is the fallback.
  let (tok, _) = fixture("metaspace");
  let opts = ChatOptions {
    add_generation_prompt: true,
    ..Default::default()
  };
  assert_eq!(
    tok
      .apply_chat_template(&[Message::user("hi")], &opts)
      .unwrap(),
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
  );
  let ids = tok
    .apply_chat_template_ids(&[Message::user("hi")], &opts)
    .unwrap();
  assert_eq!(
    ids,
    tok
      .encode(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        false
      )
      .unwrap()
  );
}

#[test]
fn typed_messages_render_like_json() {
  let (tok, _) = fixture("bpe_bytelevel");
  let t = templates();
  let json_msgs = t["conversations"]["tool_calls"].as_array().unwrap().clone();
  let typed: Vec<Message> = json_msgs
    .iter()
    .map(|m| serde_json::from_value(m.clone()).unwrap())
    .collect();
  let opts = ChatOptions {
    add_generation_prompt: true,
    tools: Some(vec![serde_json::json!({"type": "function"})]),
    ..Default::default()
  };
  assert_eq!(
    tok.apply_chat_template(&typed, &opts).unwrap(),
    tok.apply_chat_template_values(&json_msgs, &opts).unwrap()
  );
}
