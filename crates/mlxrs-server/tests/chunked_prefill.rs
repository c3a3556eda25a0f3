//! Chunked prefill interleaved with decode: long prompts joining a running
//! batch are prefilled `--prefill-step-size` tokens per engine turn, with a
//! decode step of the running rows between two chunks; every answer still
//! equals the library's lone greedy output (`mlxrs_lm::generate`).

mod common;

use common::*;
use mlxrs_lm::{GenerateOptions, SamplerConfig, StepConfig};
use serde_json::{Value, json};

fn interleaved_equal_single(name: &str) {
  let mut cfg = config(name);
  cfg.prefill_step_size = 4;
  cfg.prompt_cache_size = 0;
  let s = start(cfg);
  let m = model(name);
  let tok = m.tokenizer.as_ref().unwrap();
  let words = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
  ];
  // One short prompt with a long budget (it starts the batch and keeps
  // decoding), then long prompts that join it in several chunks.
  let mut prompts: Vec<(String, usize)> = vec![("alpha beta".into(), 96)];
  for (i, n) in [10usize, 14, 18, 6].iter().enumerate() {
    let p: Vec<&str> = (0..*n).map(|j| words[(i + 3 * j) % 8]).collect();
    prompts.push((p.join(" "), 10 + 3 * i));
  }
  let wants: Vec<_> = prompts
    .iter()
    .map(|(p, n)| reference(&m, &tok.encode(p, true).unwrap(), &greedy(*n)))
    .collect();
  assert!(
    wants[0].tokens.len() > 40,
    "{name}: the long-running row stopped early"
  );
  let answers: Vec<Value> = std::thread::scope(|sc| {
    let first = {
      let (s, (p, n)) = (&s, &prompts[0]);
      sc.spawn(move || post(s, "/v1/completions", &json!({"prompt": p, "max_tokens": n})).1)
    };
    // Let the first row start the batch before the long prompts arrive.
    while metric(&s, "mlxrs_generation_tokens_total") < 1.0 {
      std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let rest: Vec<_> = prompts[1..]
      .iter()
      .map(|(p, n)| {
        let s = &s;
        sc.spawn(move || post(s, "/v1/completions", &json!({"prompt": p, "max_tokens": n})).1)
      })
      .collect();
    std::iter::once(first)
      .chain(rest)
      .map(|h| h.join().unwrap())
      .collect()
  });
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
  let steps = metric(&s, "mlxrs_prefill_interleaved_steps_total");
  assert!(
    steps >= 2.0,
    "{name}: {steps} decode steps ran during chunked prefills"
  );
  assert!(metric(&s, "mlxrs_running_batch_size_peak") > 1.0);
  assert_eq!(metric(&s, "mlxrs_running_batch_size"), 0.0);
  s.shutdown().unwrap();
}

#[test]
fn chunked_prefill_interleaves_and_equals_single() {
  interleaved_equal_single("qwen3");
  interleaved_equal_single("llama");
  // Sliding window 16: the long prompts pass the window.
  interleaved_equal_single("gemma3_text");
  interleaved_equal_single("gpt_oss");
}

/// `--draft-model`: a lone greedy request decodes speculatively and its
/// answer equals plain greedy decoding; with several rows at once the batch
/// steps normally and every answer is still exact. Drafts: llama's random
/// weights (every proposal rejected) and qwen3-4bit (some accepted).
#[test]
fn draft_model_equals_greedy() {
  draft_equals_greedy("llama", false);
  draft_equals_greedy("qwen3-4bit", true);
}

fn draft_equals_greedy(draft: &str, accepts: bool) {
  let mut cfg = config("qwen3");
  cfg.draft_model = Some(fixture(draft).to_string_lossy().into_owned());
  cfg.num_draft_tokens = 3;
  let s = start(cfg);
  let m = model("qwen3");
  let tok = m.tokenizer.as_ref().unwrap();
  let prompts = [
    ("alpha beta gamma", 40usize),
    ("delta", 17),
    ("epsilon zeta eta theta", 23),
  ];
  let wants: Vec<_> = prompts
    .iter()
    .map(|(p, n)| reference(&m, &tok.encode(p, true).unwrap(), &greedy(*n)))
    .collect();
  // One at a time (speculative), then all at once (batched).
  for ((p, n), w) in prompts.iter().zip(&wants) {
    let (st, r) = post(
      &s,
      "/v1/completions",
      &json!({"prompt": p, "max_tokens": n}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], w.text.as_str(), "{p}");
    assert_eq!(r["usage"]["completion_tokens"], w.tokens.len(), "{p}");
  }
  let drafted = metric(&s, "mlxrs_draft_tokens_total");
  let accepted = metric(&s, "mlxrs_draft_accepted_total");
  assert!(drafted >= 30.0, "{draft}: {drafted} draft tokens");
  assert!(accepted <= drafted);
  if accepts {
    assert!(accepted > 0.0, "{draft}: {accepted} of {drafted} accepted");
  }
  eprintln!("{draft}: {accepted} of {drafted} draft tokens accepted");
  let answers = complete_concurrently(&s, &prompts);
  for ((p, _), (a, w)) in prompts.iter().zip(answers.iter().zip(&wants)) {
    assert_eq!(a["choices"][0]["text"], w.text.as_str(), "{p} (concurrent)");
  }
  s.shutdown().unwrap();
}

/// Rows that wait together for an empty batch are prefilled as one
/// left-padded batch (`BatchGenerator::insert_batch`): a request's `n`
/// sampled choices each equal the library's lone run with the choice's
/// seed (seed + index), and prompts of different lengths arriving at once
/// each equal their lone greedy answer.
#[test]
fn grouped_prefill_equals_lone_runs() {
  let name = "qwen3";
  let mut cfg = config(name);
  cfg.prompt_cache_size = 0;
  let s = start(cfg);
  let m = model(name);
  let tok = m.tokenizer.as_ref().unwrap();
  let ids = tok.encode("alpha beta gamma delta", true).unwrap();
  let sampled = |seed: u64| GenerateOptions {
    step: StepConfig {
      max_tokens: 12,
      sampler: SamplerConfig {
        temp: 1.0,
        seed: Some(seed),
        ..SamplerConfig::default()
      },
      ..StepConfig::default()
    },
    stop: Vec::new(),
  };
  // A group joining running rows: `n` choices arrive while a long request
  // decodes; they join as one group at the batch's width.
  assert_eq!(metric(&s, "mlxrs_prefill_groups_total"), 0.0);
  let long = "alpha beta";
  let long_want = reference(&m, &tok.encode(long, true).unwrap(), &greedy(300));
  assert!(long_want.tokens.len() > 200, "the running row stops early");
  let (joined, first) = std::thread::scope(|sc| {
    let first = sc.spawn(|| {
      post(
        &s,
        "/v1/completions",
        &json!({"prompt": long, "max_tokens": 300}),
      )
      .1
    });
    while metric(&s, "mlxrs_generation_tokens_total") < 1.0 {
      std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let (st, r) = post(
      &s,
      "/v1/completions",
      &json!({"prompt": "one", "max_tokens": 12, "temperature": 1.0, "seed": 9, "n": 3}),
    );
    assert_eq!(st, 200, "{r}");
    (r, first.join().unwrap())
  });
  assert_eq!(first["choices"][0]["text"], long_want.text.as_str());
  let one = tok.encode("one", true).unwrap();
  for c in joined["choices"].as_array().unwrap() {
    let i = c["index"].as_u64().unwrap();
    assert_eq!(
      c["text"],
      reference(&m, &one, &sampled(9 + i)).text.as_str(),
      "joined choice {i}"
    );
  }
  // All four ran at once (the long row still decoding), and the three
  // choices started as one group.
  assert_eq!(metric(&s, "mlxrs_running_batch_size_peak"), 4.0);
  assert_eq!(metric(&s, "mlxrs_prefill_groups_total"), 1.0);
  assert_eq!(metric(&s, "mlxrs_prefill_group_rows_total"), 3.0);
  let (st, r) = post(
    &s,
    "/v1/completions",
    &json!({"prompt": "alpha beta gamma delta", "max_tokens": 12, "temperature": 1.0,
            "seed": 5, "n": 4}),
  );
  assert_eq!(st, 200, "{r}");
  let choices = r["choices"].as_array().unwrap();
  assert_eq!(choices.len(), 4);
  for c in choices {
    let i = c["index"].as_u64().unwrap();
    let want = reference(&m, &ids, &sampled(5 + i));
    assert_eq!(c["text"], want.text.as_str(), "choice {i}");
  }
  assert_eq!(metric(&s, "mlxrs_prefill_groups_total"), 2.0);
  assert_eq!(metric(&s, "mlxrs_prefill_group_rows_total"), 7.0);
  // Different lengths at once: grouped or not (that depends on arrival),
  // every answer is the lone one.
  let prompts = [
    ("one", 9usize),
    ("two three four five six seven", 14),
    ("eight nine", 11),
    ("ten eleven twelve thirteen", 7),
  ];
  let wants: Vec<_> = prompts
    .iter()
    .map(|(p, n)| reference(&m, &tok.encode(p, true).unwrap(), &greedy(*n)))
    .collect();
  let answers = complete_concurrently(&s, &prompts);
  for ((p, _), (a, w)) in prompts.iter().zip(answers.iter().zip(&wants)) {
    assert_eq!(a["choices"][0]["text"], w.text.as_str(), "{p}");
  }
  eprintln!(
    "{} groups, {} rows prefilled in groups",
    metric(&s, "mlxrs_prefill_groups_total"),
    metric(&s, "mlxrs_prefill_group_rows_total")
  );
  s.shutdown().unwrap();
}
