//! `mlxrs serve` against the library: over plain HTTP on 127.0.0.1, chat
//! and completions answers equal `mlxrs_lm::generate` on the same prompt
//! ids (greedy text, tokens via usage, finish reasons, logprobs, seeded
//! sampling, penalties, stop strings), streaming equals non-streaming, 16
//! concurrent requests (continuously batched) each equal their lone output,
//! and a multi-turn chat reuses the prompt cache.

mod common;

use std::collections::HashMap;

use common::*;
use mlxrs_lm::{GenerateOptions, LogitsConfig, SamplerConfig, StepConfig};
use serde_json::{Value, json};

const MODEL: &str = "qwen3";

#[test]
fn chat_and_completions_equal_library_greedy() {
  let s = start(config(MODEL));
  let m = model(MODEL);
  let tok = m.tokenizer.as_ref().unwrap();
  for (i, q) in ["Hello there", "What is the capital of France?"]
    .iter()
    .enumerate()
  {
    let max = 12 + 5 * i;
    let msgs = json!([{"role": "user", "content": q}]);
    let want = reference(&m, &chat_ids(&m, &msgs), &greedy(max));
    let (st, r) = post(
      &s,
      "/v1/chat/completions",
      &json!({"model": "x", "messages": msgs, "max_tokens": max}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["message"]["content"], want.text.as_str());
    assert_eq!(r["choices"][0]["finish_reason"], finish(&want));
    assert_eq!(r["usage"]["prompt_tokens"], want.prompt_tokens);
    assert_eq!(r["usage"]["completion_tokens"], want.tokens.len());
    assert_eq!(
      r["usage"]["total_tokens"],
      want.prompt_tokens + want.tokens.len()
    );

    let ids = tok.encode(q, true).unwrap();
    let want = reference(&m, &ids, &greedy(max));
    // `max_completion_tokens` wins over `max_tokens`.
    let (st, r) = post(
      &s,
      "/v1/completions",
      &json!({"prompt": q, "max_tokens": 1, "max_completion_tokens": max}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["choices"][0]["text"], want.text.as_str());
    assert_eq!(r["choices"][0]["finish_reason"], finish(&want));
    assert_eq!(r["usage"]["prompt_tokens"], ids.len());
    assert_eq!(r["usage"]["completion_tokens"], want.tokens.len());
    // Token-id prompts give the same answer.
    let (_, r2) = post(
      &s,
      "/v1/completions",
      &json!({"prompt": ids, "max_tokens": max}),
    );
    assert_eq!(r2["choices"][0]["text"], r["choices"][0]["text"]);
  }
  let (st, models) = get(&s, "/v1/models");
  assert_eq!(st, 200);
  let models: Value = serde_json::from_str(&models).unwrap();
  assert_eq!(models["object"], "list");
  assert!(models["data"][0]["id"].as_str().unwrap().ends_with("qwen3"));
  let (st, h) = get(&s, "/health");
  assert_eq!((st, h.contains("ok")), (200, true));
  s.shutdown().unwrap();
}

#[test]
fn streaming_equals_non_streaming() {
  let s = start(config(MODEL));
  let msgs = json!([{"role": "user", "content": "Tell me a story"}]);
  let body = json!({"messages": msgs, "max_tokens": 20});
  let (_, full) = post(&s, "/v1/chat/completions", &body);
  let mut sb = body.clone();
  sb["stream"] = json!(true);
  sb["stream_options"] = json!({"include_usage": true});
  let chunks = stream(&s, "/v1/chat/completions", &sb);
  assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
  let text: String = chunks
    .iter()
    .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
    .collect();
  assert_eq!(text, full["choices"][0]["message"]["content"]);
  let fin: Vec<&Value> = chunks
    .iter()
    .filter(|c| !c["choices"][0]["finish_reason"].is_null())
    .collect();
  assert_eq!(fin.len(), 1);
  assert_eq!(
    fin[0]["choices"][0]["finish_reason"],
    full["choices"][0]["finish_reason"]
  );
  let last = chunks.last().unwrap();
  assert_eq!(last["choices"], json!([]));
  assert_eq!(
    last["usage"]["prompt_tokens"],
    full["usage"]["prompt_tokens"]
  );
  assert_eq!(
    last["usage"]["completion_tokens"],
    full["usage"]["completion_tokens"]
  );
  assert!(
    chunks
      .iter()
      .all(|c| c["object"] == "chat.completion.chunk")
  );

  // Completions stream, no usage chunk unless asked.
  let body = json!({"prompt": "Once upon a time", "max_tokens": 16});
  let (_, full) = post(&s, "/v1/completions", &body);
  let mut sb = body.clone();
  sb["stream"] = json!(true);
  let chunks = stream(&s, "/v1/completions", &sb);
  let text: String = chunks
    .iter()
    .filter_map(|c| c["choices"][0]["text"].as_str())
    .collect();
  assert_eq!(text, full["choices"][0]["text"]);
  assert!(chunks.iter().all(|c| c.get("usage").is_none()));
  s.shutdown().unwrap();
}

/// 16 requests at once, of different prompt lengths and budgets: each
/// answer equals the library's lone greedy output, and the engine ran more
/// than one row at a time.
#[test]
fn concurrent_requests_equal_single() {
  concurrent_equal_single(MODEL, true);
  concurrent_equal_single("llama", true);
  // gemma3_text (sliding window 16, rotating caches when alone) batches
  // with whole-width caches masked to the window; most rows here outgrow
  // the window.
  concurrent_equal_single("gemma3_text", true);
  // gpt_oss (sliding window 8, attention sinks) likewise.
  concurrent_equal_single("gpt_oss", true);
}

fn concurrent_equal_single(name: &str, batched: bool) {
  let s = start(config(name));
  let m = model(name);
  let tok = m.tokenizer.as_ref().unwrap();
  let words = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
  ];
  let prompts: Vec<(String, usize)> = (0..16)
    .map(|i| {
      let p: Vec<&str> = (0..(1 + i % 7)).map(|j| words[(i + j) % 8]).collect();
      (p.join(" "), 8 + (i * 3) % 17)
    })
    .collect();
  let wants: Vec<_> = prompts
    .iter()
    .map(|(p, n)| reference(&m, &tok.encode(p, true).unwrap(), &greedy(*n)))
    .collect();
  let answers = complete_concurrently(&s, &prompts);
  for (i, (a, w)) in answers.iter().zip(&wants).enumerate() {
    assert_eq!(
      a["choices"][0]["text"],
      w.text.as_str(),
      "{name} request {i}"
    );
    assert_eq!(
      a["usage"]["completion_tokens"],
      w.tokens.len(),
      "{name} request {i}"
    );
  }
  let peak = metric(&s, "mlxrs_running_batch_size_peak");
  assert_eq!(peak > 1.0, batched, "{name}: peak batch {peak}");
  assert_eq!(metric(&s, "mlxrs_running_batch_size"), 0.0);
  s.shutdown().unwrap();
}

#[test]
fn logprobs_equal_library() {
  let s = start(config(MODEL));
  let m = model(MODEL);
  let msgs = json!([{"role": "user", "content": "Count to five"}]);
  let mut opts = greedy(10);
  opts.step.top_logprobs = 3;
  let want = reference(&m, &chat_ids(&m, &msgs), &opts);
  let (st, r) = post(
    &s,
    "/v1/chat/completions",
    &json!({"messages": msgs, "max_tokens": 10, "logprobs": true, "top_logprobs": 3}),
  );
  assert_eq!(st, 200, "{r}");
  let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
  assert_eq!(content.len(), want.tokens.len());
  let tok = m.tokenizer.as_ref().unwrap();
  for (i, e) in content.iter().enumerate() {
    let lp = e["logprob"].as_f64().unwrap() as f32;
    assert!((lp - want.logprobs[i]).abs() < 1e-4, "token {i}: {lp}");
    assert_eq!(
      e["token"],
      tok.decode(&[want.tokens[i] as u32], false).unwrap()
    );
    let top = e["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    for (j, t) in top.iter().enumerate() {
      let (id, l) = want.top_logprobs[i][j];
      assert_eq!(t["token"], tok.decode(&[id as u32], false).unwrap());
      assert!((t["logprob"].as_f64().unwrap() as f32 - l).abs() < 1e-4);
    }
  }
  // Completions: the legacy shape.
  let ids = tok.encode("Count to five", true).unwrap();
  let want = reference(&m, &ids, &opts);
  let (_, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "Count to five", "max_tokens": 10, "logprobs": 3}),
  );
  let lps = r["choices"][0]["logprobs"]["token_logprobs"]
    .as_array()
    .unwrap();
  assert_eq!(lps.len(), want.logprobs.len());
  for (a, b) in lps.iter().zip(&want.logprobs) {
    assert!((a.as_f64().unwrap() as f32 - b).abs() < 1e-4);
  }
  s.shutdown().unwrap();
}

/// Seeded sampling, penalties, logit bias and stop strings match the
/// library with the same settings.
#[test]
fn sampling_penalties_and_stop_equal_library() {
  let s = start(config(MODEL));
  let m = model(MODEL);
  let tok = m.tokenizer.as_ref().unwrap();
  let p = "The weather today is";
  let ids = tok.encode(p, true).unwrap();
  let sampled = GenerateOptions {
    step: StepConfig {
      max_tokens: 16,
      sampler: SamplerConfig {
        temp: 0.8,
        top_p: 0.9,
        top_k: 40,
        seed: Some(7),
        ..SamplerConfig::default()
      },
      ..StepConfig::default()
    },
    stop: Vec::new(),
  };
  let want = reference(&m, &ids, &sampled);
  let body = json!({"prompt": p, "max_tokens": 16, "temperature": 0.8, "top_p": 0.9,
                    "top_k": 40, "seed": 7});
  let (_, r) = post(&s, "/v1/completions", &body);
  assert_eq!(r["choices"][0]["text"], want.text.as_str());

  let mut logits = LogitsConfig::new();
  logits.repetition_penalty = Some(1.5);
  logits.presence_penalty = Some(0.5);
  logits.logit_bias = HashMap::from([(11, 5.0)]);
  let pen = GenerateOptions {
    step: StepConfig {
      max_tokens: 16,
      logits,
      ..StepConfig::default()
    },
    stop: Vec::new(),
  };
  let want = reference(&m, &ids, &pen);
  let (_, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": p, "max_tokens": 16, "repetition_penalty": 1.5,
            "presence_penalty": 0.5, "logit_bias": {"11": 5.0}}),
  );
  assert_eq!(r["choices"][0]["text"], want.text.as_str());

  // A stop string taken from the greedy output ends the text before it.
  let full = reference(&m, &ids, &greedy(24));
  let chars: Vec<char> = full.text.chars().collect();
  if chars.len() > 6 {
    let stop: String = chars[4..6].iter().collect();
    let mut o = greedy(24);
    o.stop = vec![stop.clone()];
    let want = reference(&m, &ids, &o);
    let (_, r) = post(
      &s,
      "/v1/completions",
      &json!({"prompt": p, "max_tokens": 24, "stop": [stop]}),
    );
    assert_eq!(r["choices"][0]["text"], want.text.as_str());
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
  }
  // n choices: greedy choices agree.
  let (_, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": p, "max_tokens": 8, "n": 3}),
  );
  let cs = r["choices"].as_array().unwrap();
  assert_eq!(cs.len(), 3);
  assert!(cs.iter().all(|c| c["text"] == cs[0]["text"]));
  assert_eq!(
    r["usage"]["completion_tokens"].as_u64().unwrap(),
    3 * reference(&m, &ids, &greedy(8)).tokens.len() as u64
  );
  s.shutdown().unwrap();
}

/// A second chat turn reuses the first turn's cache (`cached_tokens` > 0)
/// and still equals the library's answer on the whole prompt.
#[test]
fn multi_turn_chat_reuses_prompt_cache() {
  let s = start(config(MODEL));
  let m = model(MODEL);
  let turn1 = json!([{"role": "user", "content": "Hi, who are you?"}]);
  let (_, r1) = post(
    &s,
    "/v1/chat/completions",
    &json!({"messages": turn1, "max_tokens": 12}),
  );
  assert_eq!(r1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  let reply = r1["choices"][0]["message"]["content"].as_str().unwrap();
  let turn2 = json!([
    {"role": "user", "content": "Hi, who are you?"},
    {"role": "assistant", "content": reply},
    {"role": "user", "content": "And what can you do?"}
  ]);
  let want = reference(&m, &chat_ids(&m, &turn2), &greedy(12));
  let (_, r2) = post(
    &s,
    "/v1/chat/completions",
    &json!({"messages": turn2, "max_tokens": 12}),
  );
  let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    .as_u64()
    .unwrap();
  assert!(cached > 0, "{r2}");
  assert_eq!(r2["choices"][0]["message"]["content"], want.text.as_str());
  assert_eq!(metric(&s, "mlxrs_prompt_cache_hits_total"), 1.0);
  s.shutdown().unwrap();
}
