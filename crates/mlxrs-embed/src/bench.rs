//! Throughput measurement: sentences per second of [`Embedder::embed_with`]
//! over a fixed list (what `mlxrs embed --bench` and
//! `scripts/bench_embed.sh` report; the python side times
//! `SentenceTransformer.encode` the same way).

use std::time::Instant;

use crate::embedder::{EmbedOptions, Embedder};
use crate::error::Result;

/// One benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
  /// Sentences embedded in the timed run.
  pub sentences: usize,
  /// Their tokens (special tokens included, after truncation).
  pub tokens: usize,
  /// Wall-clock seconds of the timed run (tokenization included).
  pub seconds: f64,
}

impl BenchResult {
  /// Sentences per second.
  pub fn sentences_per_sec(&self) -> f64 {
    self.sentences as f64 / self.seconds.max(1e-12)
  }

  /// Tokens per second.
  pub fn tokens_per_sec(&self) -> f64 {
    self.tokens as f64 / self.seconds.max(1e-12)
  }
}

/// `n` varied English sentences (deterministic), for benchmarks without an
/// input file. `scripts/bench_embed.sh` writes the same list for both sides.
pub fn synthetic_sentences(n: usize) -> Vec<String> {
  const SUBJECTS: [&str; 8] = [
    "A man",
    "The girl",
    "Our team",
    "A small dog",
    "The committee",
    "My neighbour",
    "The robot",
    "A student",
  ];
  const VERBS: [&str; 8] = [
    "is reading",
    "wrote",
    "discussed",
    "is eating",
    "painted",
    "found",
    "explained",
    "sold",
  ];
  const OBJECTS: [&str; 8] = [
    "a long report about climate change and its effects on agriculture",
    "bread",
    "the new budget for the coming year",
    "an old map of the city",
    "a surprisingly difficult puzzle",
    "the results of the latest experiment in the laboratory",
    "three red apples",
    "a story about a dragon who learned to play the violin",
  ];
  (0..n)
    .map(|i| {
      let tail = if i % 5 == 0 {
        " while it was raining outside and nobody noticed"
      } else {
        ""
      };
      format!(
        "{} {} {}{tail} (#{i}).",
        SUBJECTS[i % 8],
        VERBS[(i / 8) % 8],
        OBJECTS[(i / 64 + i) % 8]
      )
    })
    .collect()
}

/// Embed `texts` `warmup` times untimed, then once timed.
pub fn run(
  model: &Embedder,
  texts: &[String],
  opts: &EmbedOptions,
  warmup: usize,
) -> Result<BenchResult> {
  let warm_n = texts.len().min(opts.batch_size.max(1) * 2);
  for _ in 0..warmup {
    model.embed_with(&texts[..warm_n], opts)?;
  }
  let tokens = model
    .tokenize(texts, opts)?
    .iter()
    .map(|e| e.ids.len())
    .sum();
  let t = Instant::now();
  let out = model.embed_with(texts, opts)?;
  let seconds = t.elapsed().as_secs_f64();
  debug_assert_eq!(out.len(), texts.len());
  Ok(BenchResult {
    sentences: texts.len(),
    tokens,
    seconds,
  })
}
