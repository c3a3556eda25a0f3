//! Rough timing of load / tokenize / embed for a model folder:
//! `cargo run --release -p mlxrs-embed --example embed_timing -- <model> [n] [batch]`.
use std::time::Instant;

use mlxrs_embed::{EmbedOptions, Embedder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
  let args: Vec<String> = std::env::args().collect();
  let path = args
    .get(1)
    .ok_or("usage: embed_timing <model> [n] [batch]")?;
  let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(256);
  let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(32);
  let t = Instant::now();
  let model = Embedder::load(path)?;
  eprintln!("load: {:?}", t.elapsed());
  let texts: Vec<String> = (0..n)
    .map(|i| {
      format!(
        "Sentence number {i} talks about topic {} with some extra words to vary length {}",
        i % 17,
        "x ".repeat(i % 23)
      )
    })
    .collect();
  let opts = EmbedOptions {
    batch_size: batch,
    ..Default::default()
  };
  let t = Instant::now();
  let enc = model.tokenize(&texts, &opts)?;
  eprintln!(
    "tokenize: {:?} ({} tokens)",
    t.elapsed(),
    enc.iter().map(|e| e.ids.len()).sum::<usize>()
  );
  let t = Instant::now();
  let v = model.embed_with(&texts, &opts)?;
  let s = t.elapsed().as_secs_f64();
  eprintln!(
    "embed: {s:.3}s, {:.1} sentences/s, dim {}",
    n as f64 / s,
    v[0].len()
  );
  Ok(())
}
