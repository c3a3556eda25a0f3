//! `--memory-limit-gb` admission (its own test binary: MLX's memory limit is
//! process-wide): a request whose KV cache cannot fit the limit gets a 400
//! naming the limit, the next normal request is exact, and rows that fit
//! alone but not together run one after the other, each exact.

mod common;

use common::*;
use mlxrs_server::memory_budget::MemoryBudget;
use serde_json::{Value, json};

#[test]
fn memory_limit_refuses_and_serializes() {
  let name = "qwen3";
  let m = model(name);
  let tok = m.tokenizer.as_ref().unwrap();
  let b = MemoryBudget::probe(m.model.as_ref(), 0, 0).unwrap();
  assert!(b.weights > 0 && b.kv_bytes(1, 1) > 0);
  // Room for one row of 80 positions.
  let mut cfg = config(name);
  cfg.memory_limit = Some(b.need(1, 80));
  let s = start(cfg);

  let (st, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "alpha beta", "max_tokens": 500}),
  );
  assert_eq!(st, 400, "{r}");
  assert_eq!(r["error"]["type"], "invalid_request_error");
  assert_eq!(r["error"]["param"], "max_tokens");
  let msg = r["error"]["message"].as_str().unwrap();
  assert!(msg.contains("--memory-limit-gb"), "{msg}");
  assert_eq!(metric(&s, "mlxrs_memory_refused_total"), 1.0);

  let ids = tok.encode("alpha beta", true).unwrap();
  let want = reference(&m, &ids, &greedy(20));
  let (st, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "alpha beta", "max_tokens": 20}),
  );
  assert_eq!(st, 200, "{r}");
  assert_eq!(r["choices"][0]["text"], want.text.as_str());

  // Each fits alone (about 45 positions), two together do not.
  let prompts = ["gamma delta", "epsilon zeta eta", "theta alpha"];
  let wants: Vec<_> = prompts
    .iter()
    .map(|p| reference(&m, &tok.encode(p, true).unwrap(), &greedy(40)))
    .collect();
  let answers: Vec<Value> = std::thread::scope(|sc| {
    let hs: Vec<_> = prompts
      .iter()
      .map(|p| {
        let s = &s;
        sc.spawn(move || {
          post(
            s,
            "/v1/completions",
            &json!({"prompt": p, "max_tokens": 40}),
          )
        })
      })
      .collect();
    hs.into_iter()
      .map(|h| {
        let (st, r) = h.join().unwrap();
        assert_eq!(st, 200, "{r}");
        r
      })
      .collect()
  });
  for (i, (a, w)) in answers.iter().zip(&wants).enumerate() {
    assert_eq!(a["choices"][0]["text"], w.text.as_str(), "request {i}");
  }
  assert_eq!(metric(&s, "mlxrs_running_batch_size_peak"), 1.0);
  s.shutdown().unwrap();
}
