//! Decode steps queued on the evaluation thread
//! (`TokenGenerator::set_eval_thread`, on by default on a GPU) give the
//! same tokens and log-probabilities, to the bit, as steps queued on the
//! generating thread, for every architecture fixture.

mod common;

use common::{fixture, ints, reference};
use mlxrs_core::Dtype;
use mlxrs_lm::{SamplerConfig, StepConfig, TokenGenerator, load_model_dir};

/// `(token, logprob bits, top (token, logprob bits))` per step.
type Run = Vec<(i32, u32, Vec<(i32, u32)>)>;

fn run(
  model: &dyn mlxrs_lm::LanguageModel,
  prompt: &[i32],
  cfg: &StepConfig,
  threaded: bool,
) -> Run {
  let mut g = TokenGenerator::new(model, prompt, cfg, None).unwrap();
  g.set_eval_thread(threaded).unwrap();
  g.map(|s| {
    let s = s.unwrap();
    let top = s
      .top_logprobs
      .iter()
      .map(|&(t, l)| (t, l.to_bits()))
      .collect();
    (s.token, s.logprob.to_bits(), top)
  })
  .collect()
}

/// Every fixture with an mlx-lm reference.
fn fixtures() -> Vec<String> {
  let mut names: Vec<String> = std::fs::read_dir(fixture(""))
    .unwrap()
    .filter_map(|e| {
      let e = e.unwrap();
      e.path()
        .join("reference.json")
        .exists()
        .then(|| e.file_name().to_string_lossy().into_owned())
    })
    .collect();
  names.sort();
  names
}

#[test]
fn threaded_decode_equals_decode_on_one_thread() {
  let cfg = StepConfig {
    max_tokens: 12,
    top_logprobs: 3,
    ..StepConfig::default()
  };
  let names = fixtures();
  assert!(names.len() > 20, "fixtures: {names:?}");
  let mut threaded = 0;
  for name in &names {
    let (model, _) = load_model_dir(&fixture(name), Some(Dtype::Float32)).unwrap();
    let prompt = ints(&reference(name)["prompt_ids"]);
    let mut g = TokenGenerator::new(model.as_ref(), &prompt, &cfg, None).unwrap();
    if !g.set_eval_thread(true).unwrap() {
      assert!(model.evaluates_in_forward(), "{name}: no evaluation thread");
      continue;
    }
    drop(g);
    threaded += 1;
    let one = run(model.as_ref(), &prompt, &cfg, false);
    let two = run(model.as_ref(), &prompt, &cfg, true);
    assert_eq!(one.len(), 12, "{name}");
    assert_eq!(one, two, "{name}: threaded decode differs");
  }
  // dbrx picks its experts on the host: the only ones left out.
  assert_eq!(
    threaded,
    names.iter().filter(|n| !n.starts_with("dbrx")).count()
  );
}

#[test]
fn threaded_sampling_with_a_seed_equals_one_thread() {
  let (model, _) = load_model_dir(&fixture("llama"), Some(Dtype::Float32)).unwrap();
  let prompt = ints(&reference("llama")["prompt_ids"]);
  let cfg = StepConfig {
    max_tokens: 16,
    sampler: SamplerConfig {
      temp: 1.0,
      top_p: 0.9,
      seed: Some(7),
      ..SamplerConfig::default()
    },
    ..StepConfig::default()
  };
  let runs: Vec<Run> = [false, true]
    .into_iter()
    .map(|threaded| run(model.as_ref(), &prompt, &cfg, threaded))
    .collect();
  assert_eq!(runs[0], runs[1]);
}

#[test]
fn generation_that_needs_the_host_stays_on_one_thread() {
  let (model, _) = load_model_dir(&fixture("llama"), Some(Dtype::Float32)).unwrap();
  let prompt = ints(&reference("llama")["prompt_ids"]);
  let mut cfg = StepConfig {
    max_tokens: 4,
    ..StepConfig::default()
  };
  cfg.logits.repetition_penalty = Some(1.3);
  let mut g = TokenGenerator::new(model.as_ref(), &prompt, &cfg, None).unwrap();
  assert!(!g.set_eval_thread(true).unwrap());
  assert_eq!(g.by_ref().count(), 4);
  // The caches come back for the next turn either way.
  let cfg = StepConfig {
    max_tokens: 6,
    ..StepConfig::default()
  };
  let mut g = TokenGenerator::new(model.as_ref(), &prompt, &cfg, None).unwrap();
  assert!(g.set_eval_thread(true).unwrap());
  let first = g.next().unwrap().unwrap().token;
  let caches = g.into_caches();
  assert!(first >= 0);
  let next = TokenGenerator::new(model.as_ref(), &[first], &cfg, Some(caches))
    .unwrap()
    .count();
  assert_eq!(next, 6);
}
