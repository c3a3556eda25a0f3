//! Grouped prefill in the continuous-batching engine
//! ([`BatchGenerator::insert_batch`], python `BatchGenerator`'s
//! `prefill_batch_size` prompt batches): several prompts of different
//! lengths prefilled as one left-padded batch give every row the greedy
//! tokens of mlx-lm's `batch_generate` and of a lone run, whether the group
//! starts the batch or joins running rows; bad rows are refused before
//! anything runs and leave the batch as it was.

mod common;

use mlxrs_lm::{
  BatchGenerator, GenerateOptions, LoadedModel, LogitsConfig, NewRow, RowConfig, StepConfig,
  generate,
};
use serde_json::Value;

fn model(name: &str) -> LoadedModel {
  common::loaded(name)
}

fn batch_ref(name: &str) -> Value {
  common::reference_file(name, "reference_batch.json")
}

fn prompts(r: &Value) -> Vec<Vec<i32>> {
  r["prompt_ids"]
    .as_array()
    .unwrap()
    .iter()
    .map(common::ints)
    .collect()
}

fn rows<'a>(prompts: &'a [Vec<i32>], cfg: &'a RowConfig, first_id: u64) -> Vec<NewRow<'a>> {
  prompts
    .iter()
    .enumerate()
    .map(|(i, p)| NewRow {
      id: first_id + i as u64,
      prompt: p,
      cfg,
    })
    .collect()
}

/// Every row's tokens (first token included) after `steps` decode steps,
/// by row id.
fn decode(
  g: &mut BatchGenerator<'_>,
  first: Vec<mlxrs_lm::RowToken>,
  steps: usize,
) -> std::collections::BTreeMap<u64, Vec<(i32, f32)>> {
  let mut out: std::collections::BTreeMap<u64, Vec<(i32, f32)>> = Default::default();
  for t in first {
    out.entry(t.id).or_default().push((t.token, t.logprob));
  }
  for _ in 0..steps {
    for t in g.step().unwrap() {
      out.entry(t.id).or_default().push((t.token, t.logprob));
    }
  }
  out
}

/// `tokens` up to (not including) the first EOS: mlx-lm's batch output.
fn before_eos(tokens: &[i32], eos: &[i32]) -> Vec<i32> {
  tokens
    .iter()
    .copied()
    .take_while(|t| !eos.contains(t))
    .collect()
}

fn greedy(n: usize, logits: LogitsConfig) -> GenerateOptions {
  GenerateOptions {
    step: StepConfig {
      max_tokens: n,
      logits,
      ..StepConfig::default()
    },
    stop: vec![],
  }
}

/// The lone run's greedy tokens and log-probabilities of `prompt`.
fn single(m: &LoadedModel, prompt: &[i32], n: usize, logits: LogitsConfig) -> (Vec<i32>, Vec<f32>) {
  let ids: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
  let o = generate(m, &ids, &greedy(n, logits)).unwrap();
  (o.tokens, o.logprobs)
}

fn check_row(name: &str, row: usize, got: &[(i32, f32)], want: &(Vec<i32>, Vec<f32>)) {
  let toks: Vec<i32> = got.iter().map(|x| x.0).collect();
  assert_eq!(
    &toks[..want.0.len()],
    &want.0[..],
    "{name} row {row}: grouped prefill vs a lone run"
  );
  for (a, b) in got.iter().zip(&want.1) {
    assert!(
      (a.1 - b).abs() <= 1e-3,
      "{name} row {row}: logprob {} vs lone {b}",
      a.1
    );
  }
}

#[test]
fn grouped_prefill_matches_mlx_lm_and_lone_runs() {
  for name in ["qwen3", "llama", "phi3", "mixtral", "llama-4bit"] {
    let m = model(name);
    let r = batch_ref(name);
    let ps = prompts(&r);
    let lens: Vec<usize> = ps.iter().map(Vec::len).collect();
    assert!(
      lens.iter().min() < lens.iter().max(),
      "{name}: lengths {lens:?}"
    );
    let n = r["max_tokens"].as_u64().unwrap() as usize;
    let eos = common::ints(&r["eos_token_ids"]);
    let cfg = RowConfig::default();
    // One pass, and chunks of 3 prompt columns: the same tokens.
    let mut runs = Vec::new();
    for step in [2048, 3] {
      let mut g = BatchGenerator::new(m.model.as_ref(), step, 0).unwrap();
      let first = g.insert_batch(&rows(&ps, &cfg, 10)).unwrap();
      assert_eq!(
        first.iter().map(|t| t.id).collect::<Vec<_>>(),
        (10..10 + ps.len() as u64).collect::<Vec<_>>(),
        "{name}: first tokens in the order given"
      );
      assert_eq!(g.width(), *lens.iter().max().unwrap());
      runs.push(decode(&mut g, first, n - 1));
    }
    assert_eq!(
      runs[0]
        .values()
        .map(|v| v.iter().map(|x| x.0).collect::<Vec<_>>())
        .collect::<Vec<_>>(),
      runs[1]
        .values()
        .map(|v| v.iter().map(|x| x.0).collect::<Vec<_>>())
        .collect::<Vec<_>>(),
      "{name}: prefill chunk size changed the tokens"
    );
    for (i, p) in ps.iter().enumerate() {
      let got = &runs[0][&(10 + i as u64)];
      let toks: Vec<i32> = got.iter().map(|x| x.0).collect();
      assert_eq!(
        before_eos(&toks, &eos),
        common::ints(&r["batch_tokens"][i]),
        "{name} row {i}: vs mlx-lm batch_generate"
      );
      check_row(name, i, got, &single(&m, p, n, LogitsConfig::default()));
    }
  }
}

/// A group joins running rows: laid out for the batch's width behind
/// masked positions; a row with a repetition penalty and one with
/// top-logprobs keep their own settings.
#[test]
fn grouped_rows_join_a_running_batch() {
  let name = "qwen3";
  let m = model(name);
  let ps = prompts(&batch_ref(name));
  let n = 12;
  let longest = (0..ps.len()).max_by_key(|&i| ps[i].len()).unwrap();
  let mut g = BatchGenerator::new(m.model.as_ref(), 2048, 0).unwrap();
  let plain = RowConfig::default();
  let first = g.insert(0, &ps[longest], None, &plain).unwrap();
  let mut lead = vec![(first.token, first.logprob)];
  for _ in 0..3 {
    let t = g.step().unwrap();
    lead.push((t[0].token, t[0].logprob));
  }
  let penalty = LogitsConfig {
    repetition_penalty: Some(1.5),
    ..LogitsConfig::default()
  };
  let penalised = RowConfig {
    logits: penalty.clone(),
    ..RowConfig::default()
  };
  let top = RowConfig {
    top_logprobs: 3,
    ..RowConfig::default()
  };
  let others: Vec<usize> = (0..ps.len()).filter(|&i| i != longest).collect();
  let cfgs = [&penalised, &top, &plain];
  let group: Vec<NewRow> = others
    .iter()
    .zip(cfgs.iter().cycle())
    .map(|(&i, c)| NewRow {
      id: 1 + i as u64,
      prompt: &ps[i],
      cfg: c,
    })
    .collect();
  let width = g.width();
  let joined = g.insert_batch(&group).unwrap();
  assert_eq!(g.len(), ps.len());
  assert_eq!(g.width(), width, "joining does not widen the batch");
  assert_eq!(joined[1].top_logprobs.len(), 3);
  assert!(joined[0].top_logprobs.is_empty());
  let mut got = decode(&mut g, joined, n - 1);
  let mut all_lead = lead;
  all_lead.extend(got.remove(&0).unwrap());
  check_row(
    name,
    longest,
    &all_lead,
    &single(&m, &ps[longest], n + 3, LogitsConfig::default()),
  );
  for (k, &i) in others.iter().enumerate() {
    let logits = if k % 3 == 0 {
      penalty.clone()
    } else {
      LogitsConfig::default()
    };
    check_row(
      name,
      i,
      &got[&(1 + i as u64)],
      &single(&m, &ps[i], n, logits),
    );
  }
}

#[test]
fn grouped_prefill_refuses_bad_rows_and_keeps_the_batch() {
  let m = model("qwen3");
  let ps = prompts(&batch_ref("qwen3"));
  let cfg = RowConfig::default();
  let mut g = BatchGenerator::new(m.model.as_ref(), 2048, 0).unwrap();
  assert!(g.insert_batch(&[]).unwrap().is_empty());
  let short = vec![1, 2, 3];
  g.insert_batch(&rows(std::slice::from_ref(&short), &cfg, 0))
    .unwrap();
  let before = (g.len(), g.width(), g.ids());
  let vocab = m.model.vocab_size();
  let bad_token = vec![1, vocab];
  let long = ps.iter().max_by_key(|p| p.len()).unwrap().clone();
  let cases: Vec<(Vec<NewRow>, &str)> = vec![
    (
      vec![
        NewRow {
          id: 5,
          prompt: &short,
          cfg: &cfg,
        },
        NewRow {
          id: 6,
          prompt: &bad_token,
          cfg: &cfg,
        },
      ],
      "row 6: prompt token",
    ),
    (
      vec![NewRow {
        id: 7,
        prompt: &[],
        cfg: &cfg,
      }],
      "row 7: the prompt is empty",
    ),
    (
      vec![
        NewRow {
          id: 8,
          prompt: &short,
          cfg: &cfg,
        },
        NewRow {
          id: 8,
          prompt: &short,
          cfg: &cfg,
        },
      ],
      "row 8 appears twice",
    ),
    (
      vec![NewRow {
        id: 0,
        prompt: &short,
        cfg: &cfg,
      }],
      "row 0: row 0 is already in the batch",
    ),
    (
      vec![NewRow {
        id: 9,
        prompt: &long,
        cfg: &cfg,
      }],
      "does not fit a running batch of width 3",
    ),
  ];
  for (group, want) in cases {
    let e = g.insert_batch(&group).unwrap_err().to_string();
    assert!(e.contains(want), "{e:?} should say {want:?}");
    assert_eq!((g.len(), g.width(), g.ids()), before, "after {want:?}");
  }
  // The batch still decodes.
  assert_eq!(g.step().unwrap().len(), 1);
}

/// A model that does not batch (recurrent state; attention that depends on
/// absolute positions, which the padded rows' shared offset would shift)
/// takes one row at a time.
#[test]
fn grouped_prefill_needs_a_batching_model() {
  for name in ["hunyuan", "phi3small"] {
    let m = model(name);
    let g = BatchGenerator::new(m.model.as_ref(), 2048, 0).unwrap();
    assert!(!g.batchable(), "{name}");
    let why = g.batch_refusal().unwrap();
    assert!(why.contains("absolute position"), "{name}: {why}");
  }
  let m = model("mamba");
  let cfg = RowConfig::default();
  let ps = vec![vec![1, 2, 3], vec![4, 5]];
  let mut g = BatchGenerator::new(m.model.as_ref(), 2048, 0).unwrap();
  assert!(!g.batchable());
  let e = g.insert_batch(&rows(&ps, &cfg, 0)).unwrap_err().to_string();
  assert!(
    e.contains("does not batch") && e.contains("recurrent"),
    "{e}"
  );
  assert!(g.is_empty());
  let t = g.insert_batch(&rows(&ps[..1], &cfg, 0)).unwrap();
  let (want, _) = single(&m, &ps[0], 1, LogitsConfig::default());
  assert_eq!(t[0].token, want[0]);
  // Nor does a row join it.
  let e = g
    .insert_batch(&rows(&ps[1..], &cfg, 1))
    .unwrap_err()
    .to_string();
  assert!(e.contains("does not batch"), "{e}");
  assert_eq!(g.len(), 1);
}

/// Sliding-window models batch through whole-width caches with the windows
/// in their masks (`LanguageModel::make_batch_caches`): grouped prompts
/// longer than the window (16 in these fixtures) still give each row its
/// lone greedy tokens; so do the other batching architectures without an
/// mlx-lm batch reference here.
#[test]
fn grouped_prefill_sliding_window_models() {
  for name in ["gemma3_text", "gpt_oss", "gemma", "gemma2"] {
    let m = model(name);
    let vocab = m.model.vocab_size();
    let ps: Vec<Vec<i32>> = [23usize, 5, 31]
      .iter()
      .enumerate()
      .map(|(k, &n)| {
        (0..n)
          .map(|j| ((7 * j + 13 * k + 3) as i32) % vocab)
          .collect()
      })
      .collect();
    let n = 10;
    let cfg = RowConfig::default();
    let mut g = BatchGenerator::new(m.model.as_ref(), 2048, 0).unwrap();
    assert!(g.batchable(), "{name}");
    let first = g.insert_batch(&rows(&ps, &cfg, 0)).unwrap();
    let got = decode(&mut g, first, n - 1);
    for (i, p) in ps.iter().enumerate() {
      check_row(
        name,
        i,
        &got[&(i as u64)],
        &single(&m, p, n, LogitsConfig::default()),
      );
    }
  }
}

/// `BATCH_MODEL_TYPES` (the `batch` column of docs/models.md) is exactly
/// the set of fixture architectures whose `BatchGenerator` batches.
#[test]
fn batch_model_types_are_the_batching_fixtures() {
  let dir = common::fixture("");
  let mut names: Vec<String> = std::fs::read_dir(&dir)
    .unwrap()
    .filter_map(|e| e.ok())
    .filter(|e| e.path().join("config.json").exists())
    .map(|e| e.file_name().to_string_lossy().into_owned())
    .filter(|n| !n.contains('-'))
    .collect();
  names.sort();
  let mut wrong = Vec::new();
  for name in &names {
    let cfg: Value =
      serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("config.json")).unwrap())
        .unwrap();
    let mt = cfg["model_type"].as_str().unwrap().to_string();
    let (m, _) =
      mlxrs_lm::load_model_dir(&dir.join(name), Some(mlxrs_core::Dtype::Float32)).unwrap();
    let batches = BatchGenerator::new(m.as_ref(), 2048, 0)
      .unwrap()
      .batchable();
    if batches != mlxrs_lm::batch::BATCH_MODEL_TYPES.contains(&mt.as_str()) {
      wrong.push(format!("{mt}: batches {batches}"));
    }
  }
  assert!(wrong.is_empty(), "BATCH_MODEL_TYPES disagrees: {wrong:?}");
}

/// Tokens by row id from `step()` results.
fn collect(out: &mut std::collections::BTreeMap<u64, Vec<i32>>, ts: Vec<mlxrs_lm::RowToken>) {
  for t in ts {
    out.entry(t.id).or_default().push(t.token);
  }
}

/// `step()` queues the next step before reading this one (python
/// `BatchGenerator` keeps `batch.y` one step ahead); inserting a row first
/// takes that step back, removing one keeps it for the others. The width
/// and a row's prompt cache do not count it, greedy rows keep a lone run's
/// tokens through joins and removals, and a seeded sampled row's tokens do
/// not depend on how often the batch changed around it (its key is
/// restored with a step taken back).
#[test]
fn a_step_queued_ahead_is_taken_back_when_the_batch_changes() {
  let m = model("llama");
  let ps = prompts(&batch_ref("llama"));
  let (long, short) = if ps[0].len() >= ps[1].len() {
    (&ps[0], &ps[1])
  } else {
    (&ps[1], &ps[0])
  };
  let greedy_row = RowConfig::default();
  let mut g = BatchGenerator::new(m.model.as_ref(), 2048, 0).unwrap();
  let mut got = Default::default();
  collect(
    &mut got,
    vec![g.insert(0, long, None, &greedy_row).unwrap()],
  );
  for i in 1..=3 {
    collect(&mut got, g.step().unwrap());
    assert_eq!(g.width(), long.len() + i);
  }
  let c = g.row_cache(0).unwrap().unwrap();
  assert_eq!(c[0].offset as usize, long.len() + 3);
  collect(
    &mut got,
    vec![g.insert(1, short, None, &greedy_row).unwrap()],
  );
  for _ in 0..4 {
    collect(&mut got, g.step().unwrap());
  }
  assert_eq!(g.width(), long.len() + 7);
  assert!(g.remove(0).unwrap());
  assert_eq!(g.width(), long.len() + 7);
  for _ in 0..3 {
    collect(&mut got, g.step().unwrap());
  }
  let lone = |p: &[i32]| single(&m, p, 8, LogitsConfig::default());
  assert_eq!(got[&0][..8], lone(long).0[..], "row 0 vs a lone run");
  assert_eq!(got[&1][..8], lone(short).0[..], "row 1 vs a lone run");

  // A seeded sampled row, alone and with rows joining and leaving.
  let sampled = RowConfig {
    sampler: mlxrs_lm::SamplerConfig {
      temp: 1.0,
      seed: Some(3),
      ..Default::default()
    },
    ..RowConfig::default()
  };
  // Churn adds a step at i = 1, 4, 7: 13 steps either way.
  let run = |churn: bool| -> Vec<i32> {
    let mut g = BatchGenerator::new(m.model.as_ref(), 2048, 0).unwrap();
    let mut got = Default::default();
    collect(&mut got, vec![g.insert(0, long, None, &sampled).unwrap()]);
    for i in 0..if churn { 10 } else { 13 } {
      collect(&mut got, g.step().unwrap());
      if churn && i % 3 == 1 {
        collect(
          &mut got,
          vec![g.insert(9, short, None, &greedy_row).unwrap()],
        );
        collect(&mut got, g.step().unwrap());
        assert!(g.remove(9).unwrap());
      }
    }
    got.remove(&0).unwrap()
  };
  let (alone, churned) = (run(false), run(true));
  assert_eq!(alone.len(), 14);
  assert_eq!(alone, churned);
}
