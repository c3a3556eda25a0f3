//! The generation guards of `generate` hold on the server's continuous
//! batching path too (issue #20): `max_tokens` is clamped to the model's
//! context (`mlxrs_lm::limits::bound_generation`), and NaN/Inf logits end
//! the request with an error instead of emitting token 0 forever
//! (`check_finite_logprob` in `BatchGenerator`).

mod common;

use common::*;
use serde_json::{Value, json};

const MODEL: &str = "qwen3";

/// A huge `max_tokens` generates up to the 512-position context and stops
/// with "length" (EOS banned so the run does reach the bound).
#[test]
fn max_tokens_is_clamped_to_the_context() {
  let ctx = {
    let c: Value =
      serde_json::from_str(&std::fs::read_to_string(fixture(MODEL).join("config.json")).unwrap())
        .unwrap();
    c["max_position_embeddings"].as_u64().unwrap()
  };
  let s = start(config(MODEL));
  let (st, r) = post(
    &s,
    "/v1/completions",
    &json!({
      "prompt": "Hello world",
      "max_tokens": 1_000_000_000_000u64,
      "logit_bias": {"477": -100, "479": -100},
    }),
  );
  assert_eq!(st, 200, "{r}");
  let p = r["usage"]["prompt_tokens"].as_u64().unwrap();
  let n = r["usage"]["completion_tokens"].as_u64().unwrap();
  assert_eq!(p + n, ctx, "{r}");
  assert_eq!(r["choices"][0]["finish_reason"], "length");
}

/// NaN weights: the request fails with the NaN guard's message.
#[test]
fn nan_logits_are_an_error() {
  let d = std::env::temp_dir().join(format!("mlxrs-server-nan-{}", std::process::id()));
  std::fs::create_dir_all(&d).unwrap();
  for e in std::fs::read_dir(fixture(MODEL)).unwrap() {
    let e = e.unwrap();
    std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
  }
  let f = d.join("model.safetensors");
  let mut bytes = std::fs::read(&f).unwrap();
  let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
  let h: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
  let offs = &h["model.norm.weight"]["data_offsets"];
  let (b, e) = (
    offs[0].as_u64().unwrap() as usize,
    offs[1].as_u64().unwrap() as usize,
  );
  for c in bytes[8 + n + b..8 + n + e].chunks_mut(4) {
    c.copy_from_slice(&f32::NAN.to_le_bytes());
  }
  std::fs::write(&f, bytes).unwrap();
  let mut cfg = config(MODEL);
  cfg.model = d.to_string_lossy().into_owned();
  let s = start(cfg);
  let (st, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "Hello world", "max_tokens": 8}),
  );
  assert_ne!(st, 200, "{r}");
  let msg = r["error"]["message"].as_str().unwrap_or("");
  assert!(msg.contains("non-finite logits"), "{r}");
  // Three choices are prefilled as one group; the group fails on the NaN
  // guard, its rows go back to the queue and start one by one, each
  // failing alone with the same message; the server keeps answering.
  let (st, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "Hello world", "max_tokens": 8, "n": 3}),
  );
  assert_ne!(st, 200, "{r}");
  let msg = r["error"]["message"].as_str().unwrap_or("");
  assert!(msg.contains("non-finite logits"), "{r}");
  assert_eq!(metric(&s, "mlxrs_prefill_groups_total"), 0.0);
  // The answer leaves with the first choice's error; the other rows drain.
  let t = std::time::Instant::now();
  while metric(&s, "mlxrs_queue_depth") != 0.0 && t.elapsed().as_secs() < 10 {
    std::thread::sleep(std::time::Duration::from_millis(5));
  }
  assert_eq!(metric(&s, "mlxrs_queue_depth"), 0.0);
  let (st, _) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "Hello", "max_tokens": 2}),
  );
  assert_ne!(st, 200);
  drop(s);
  let _ = std::fs::remove_dir_all(&d);
}
