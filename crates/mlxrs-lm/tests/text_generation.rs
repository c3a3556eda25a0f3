//! Text-level generation on the tiny Qwen3 fixture: greedy tokens equal
//! mlx-lm's, stop strings, seeded sampling, streaming == decode, and bad
//! input (empty prompt, prompt past the context, out-of-range sampling).

mod common;

use mlxrs_lm::{
  GenerateOptions, LoadOptions, SamplerConfig, StepConfig, TextStream, generate, load,
};

fn model() -> mlxrs_lm::LoadedModel {
  load(
    common::fixture("qwen3").to_str().unwrap(),
    &LoadOptions {
      dtype: Some(mlxrs_core::Dtype::Float32),
      no_tokenizer: false,
    },
  )
  .unwrap()
}

fn ids(name: &str) -> Vec<u32> {
  common::reference(name)["prompt_ids"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_u64().unwrap() as u32)
    .collect()
}

fn greedy(n: usize) -> GenerateOptions {
  GenerateOptions {
    step: StepConfig {
      max_tokens: n,
      ..StepConfig::default()
    },
    stop: vec![],
  }
}

#[test]
fn greedy_tokens_match_mlx_lm_until_eos() {
  let m = model();
  let want: Vec<i32> = common::reference("qwen3")["greedy_tokens"]
    .as_array()
    .unwrap()
    .iter()
    .map(|x| x.as_i64().unwrap() as i32)
    .collect();
  let out = generate(&m, &ids("qwen3"), &greedy(20)).unwrap();
  // The reference ignores EOS; generation stops at the first EOS (included).
  let tok = m.tokenizer.as_ref().unwrap();
  let stop_at = want
    .iter()
    .position(|&t| tok.is_eos(t as u32))
    .map(|p| p + 1)
    .unwrap_or(want.len());
  assert_eq!(out.tokens, want[..stop_at].to_vec());
  // Streaming text == one-shot decode of the non-EOS tokens.
  let text_ids: Vec<u32> = out
    .tokens
    .iter()
    .map(|&t| t as u32)
    .filter(|&t| !tok.is_eos(t))
    .collect();
  assert_eq!(out.text, tok.decode(&text_ids, false).unwrap());
}

#[test]
fn stop_strings_cut_the_output() {
  let m = model();
  let full = generate(&m, &ids("qwen3"), &greedy(20)).unwrap();
  let chars: Vec<char> = full.text.chars().collect();
  if chars.len() < 6 {
    panic!(
      "fixture output too short for the stop-string test: {:?}",
      full.text
    );
  }
  let stop: String = chars[3..5].iter().collect();
  let pos = full.text.find(&stop).unwrap();
  let mut opts = greedy(20);
  opts.stop = vec![stop.clone()];
  let cut = generate(&m, &ids("qwen3"), &opts).unwrap();
  assert_eq!(cut.text, full.text[..pos], "stop {stop:?}");
  assert_eq!(cut.finish_reason, mlxrs_lm::FinishReason::Stop);
}

#[test]
fn seeded_sampling_is_reproducible() {
  let m = model();
  let opts = |seed| GenerateOptions {
    step: StepConfig {
      max_tokens: 12,
      sampler: SamplerConfig {
        temp: 1.0,
        top_p: 0.9,
        top_k: 50,
        min_p: 0.01,
        seed: Some(seed),
        ..SamplerConfig::default()
      },
      ..StepConfig::default()
    },
    stop: vec![],
  };
  let a = generate(&m, &ids("qwen3"), &opts(7)).unwrap();
  let b = generate(&m, &ids("qwen3"), &opts(7)).unwrap();
  assert_eq!(a.tokens, b.tokens);
  let others: Vec<Vec<i32>> = (8..12)
    .map(|s| generate(&m, &ids("qwen3"), &opts(s)).unwrap().tokens)
    .collect();
  assert!(
    others.iter().any(|o| *o != a.tokens),
    "different seeds never changed the sample"
  );
}

#[test]
fn bad_requests_are_errors() {
  let m = model();
  assert!(
    TextStream::new(&m, &[], &greedy(4), None).is_err(),
    "empty prompt"
  );
  let long = vec![5u32; 600]; // the fixture's max_position_embeddings is 512
  let err = TextStream::new(&m, &long, &greedy(4), None)
    .err()
    .expect("prompt past the context");
  assert!(err.to_string().contains("context"), "{err}");
  assert!(
    TextStream::new(&m, &[99_999], &greedy(4), None).is_err(),
    "token outside the vocabulary"
  );
  for bad in [
    SamplerConfig {
      temp: -1.0,
      ..SamplerConfig::default()
    },
    SamplerConfig {
      temp: 1.0,
      top_p: 2.0,
      ..SamplerConfig::default()
    },
    SamplerConfig {
      temp: 1.0,
      top_k: 100_000,
      ..SamplerConfig::default()
    },
    SamplerConfig {
      temp: 1.0,
      min_p: -0.5,
      ..SamplerConfig::default()
    },
    SamplerConfig {
      temp: f32::NAN,
      ..SamplerConfig::default()
    },
  ] {
    let opts = GenerateOptions {
      step: StepConfig {
        max_tokens: 2,
        sampler: bad.clone(),
        ..StepConfig::default()
      },
      stop: vec![],
    };
    assert!(
      TextStream::new(&m, &ids("qwen3"), &opts, None).is_err(),
      "{bad:?}"
    );
  }
  let mut opts = greedy(2);
  opts.stop = vec![String::new()];
  assert!(
    TextStream::new(&m, &ids("qwen3"), &opts, None).is_err(),
    "empty stop string"
  );
}
