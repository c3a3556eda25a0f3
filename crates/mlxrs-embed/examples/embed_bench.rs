//! The embedding benchmark without the CLI (same code as `mlxrs embed
//! --bench`): `cargo run --release -p mlxrs-embed --example embed_bench --
//! MODEL [--file LINES] [--n 1000] [--batch-size 32] [--json]`.

use mlxrs_embed::input::read_lines;
use mlxrs_embed::{EmbedOptions, Embedder, bench};

fn main() {
  if let Err(e) = run() {
    eprintln!("error: {e}");
    std::process::exit(1);
  }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
  let mut args = std::env::args().skip(1);
  let (mut model, mut file, mut n, mut batch, mut json) = (None, None, 1000usize, 32usize, false);
  while let Some(a) = args.next() {
    match a.as_str() {
      "--file" => file = args.next(),
      "--n" => n = args.next().ok_or("--n needs a value")?.parse()?,
      "--batch-size" => batch = args.next().ok_or("--batch-size needs a value")?.parse()?,
      "--json" => json = true,
      _ if model.is_none() => model = Some(a),
      other => return Err(format!("unexpected argument {other:?}").into()),
    }
  }
  let model =
    model.ok_or("usage: embed_bench MODEL [--file LINES] [--n N] [--batch-size B] [--json]")?;
  let texts = match file {
    Some(f) => read_lines(f)?,
    None => bench::synthetic_sentences(n),
  };
  let m = Embedder::load(&model)?;
  let r = bench::run(
    &m,
    &texts,
    &EmbedOptions {
      batch_size: batch,
      ..Default::default()
    },
    1,
  )?;
  if json {
    println!(
      "{{\"sentences\": {}, \"tokens\": {}, \"seconds\": {:.4}, \"sentences_per_sec\": {:.2}}}",
      r.sentences,
      r.tokens,
      r.seconds,
      r.sentences_per_sec()
    );
  } else {
    println!(
      "mlxrs: {} sentences ({} tokens) in {:.3} s: {:.1} sentences/s",
      r.sentences,
      r.tokens,
      r.seconds,
      r.sentences_per_sec()
    );
  }
  Ok(())
}
