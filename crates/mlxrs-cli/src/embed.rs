//! `mlxrs embed`: sentence embeddings of a sentence-transformers model
//! folder (python `SentenceTransformer(model).encode(texts)`).
//!
//! ```text
//! mlxrs embed --model M [--json] [--file lines.txt] [--normalize|--no-normalize]
//!             [--batch-size N] [--max-length N] [--truncate|--no-truncate]
//!             [--prompt-name NAME | --prompt TEXT] [--truncate-dim N]
//!             [--similarity] [--bench [N]] TEXT...
//! ```
//!
//! Texts come from the arguments and/or `--file` (one per line, UTF-8; `-`
//! reads stdin). Without `--json`, each embedding is printed on its own line
//! as space-separated floats.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use mlxrs_embed::input::{lines_of, read_lines};
use mlxrs_embed::{EmbedOptions, Embedder, bench};

/// `mlxrs embed` arguments.
#[derive(Args, Debug)]
pub struct EmbedArgs {
  /// Model folder (sentence-transformers layout, or a plain transformers
  /// folder: mean pooling).
  #[arg(long)]
  pub model: PathBuf,
  /// Texts to embed.
  pub texts: Vec<String>,
  /// Also embed the lines of this UTF-8 file ("-" reads stdin).
  #[arg(long)]
  pub file: Option<PathBuf>,
  /// Print one JSON object: model info and the embeddings.
  #[arg(long)]
  pub json: bool,
  /// L2-normalize the embeddings (python `normalize_embeddings=True`).
  #[arg(long, conflicts_with = "no_normalize")]
  pub normalize: bool,
  /// Skip normalization, even the folder's Normalize module.
  #[arg(long = "no-normalize")]
  pub no_normalize: bool,
  /// Texts per forward pass.
  #[arg(long = "batch-size", default_value_t = 32)]
  pub batch_size: usize,
  /// Max tokens per text, special tokens included (default: the model's
  /// max_seq_length).
  #[arg(long = "max-length")]
  pub max_length: Option<usize>,
  /// Cut texts longer than the max length (the default).
  #[arg(long, conflicts_with = "no_truncate")]
  pub truncate: bool,
  /// Fail on texts longer than the max length instead of cutting them.
  #[arg(long = "no-truncate")]
  pub no_truncate: bool,
  /// Prepend this prompt of the model's config (e.g. "query").
  #[arg(long = "prompt-name", conflicts_with = "prompt")]
  pub prompt_name: Option<String>,
  /// Prepend this literal prompt (e.g. "query: ").
  #[arg(long)]
  pub prompt: Option<String>,
  /// Keep the first N dimensions (Matryoshka models).
  #[arg(long = "truncate-dim")]
  pub truncate_dim: Option<usize>,
  /// Also print the similarity matrix of the texts (the model's similarity
  /// function, cosine by default).
  #[arg(long)]
  pub similarity: bool,
  /// Benchmark instead: embed N sentences (the given texts / file lines
  /// repeated to N, or a built-in list) after a warm-up, print sentences/s.
  #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1000")]
  pub bench: Option<usize>,
}

fn gather_texts(a: &EmbedArgs) -> Result<Vec<String>> {
  let mut texts = a.texts.clone();
  if let Some(f) = &a.file {
    if f.as_os_str() == "-" {
      let mut bytes = Vec::new();
      std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
        .context("reading texts from stdin")?;
      texts.extend(lines_of(&bytes, std::path::Path::new("<stdin>"))?);
    } else {
      texts.extend(read_lines(f)?);
    }
  }
  Ok(texts)
}

fn options(a: &EmbedArgs) -> EmbedOptions {
  EmbedOptions {
    batch_size: a.batch_size,
    normalize: if a.normalize {
      Some(true)
    } else if a.no_normalize {
      Some(false)
    } else {
      None
    },
    truncate: !a.no_truncate,
    max_length: a.max_length,
    prompt_name: a.prompt_name.clone(),
    prompt: a.prompt.clone(),
    truncate_dim: a.truncate_dim,
  }
}

/// Run `mlxrs embed`.
pub fn run(a: EmbedArgs) -> Result<()> {
  if a.batch_size == 0 {
    bail!("--batch-size must be positive");
  }
  let texts = gather_texts(&a)?;
  let model = Embedder::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
  let opts = options(&a);
  let mut out = std::io::stdout().lock();
  let device = mlxrs_core::Device::default_device()
    .map(|d| d.to_string())
    .unwrap_or_default();

  if let Some(n) = a.bench {
    if n == 0 {
      bail!("--bench needs a positive number of sentences");
    }
    let texts: Vec<String> = if texts.is_empty() {
      bench::synthetic_sentences(n)
    } else {
      texts.iter().cycle().take(n).cloned().collect()
    };
    let r = bench::run(&model, &texts, &opts, 1)?;
    if a.json {
      let v = serde_json::json!({
        "model": a.model.display().to_string(),
        "model_type": model.model_type(),
        "sentences": r.sentences,
        "tokens": r.tokens,
        "seconds": r.seconds,
        "sentences_per_sec": r.sentences_per_sec(),
        "tokens_per_sec": r.tokens_per_sec(),
        "batch_size": a.batch_size,
        "device": device,
      });
      writeln!(out, "{}", serde_json::to_string(&v)?)?;
    } else {
      writeln!(
        out,
        "{} sentences ({} tokens) in {:.3} s: {:.1} sentences/s, {:.0} tokens/s (batch {}, {}, {device})",
        r.sentences,
        r.tokens,
        r.seconds,
        r.sentences_per_sec(),
        r.tokens_per_sec(),
        a.batch_size,
        model.model_type()
      )?;
    }
    return Ok(());
  }

  if texts.is_empty() {
    bail!("nothing to embed: give TEXT arguments or --file PATH");
  }
  let emb = model.embed_with(&texts, &opts)?;
  let sims = if a.similarity {
    Some(model.similarity(&emb, &emb)?)
  } else {
    None
  };
  if a.json {
    let mut v = serde_json::json!({
      "model": a.model.display().to_string(),
      "model_type": model.model_type(),
      "dim": emb.first().map(Vec::len).unwrap_or(0),
      "normalized": match opts.normalize { Some(n) => n, None => model.normalizes() },
      "embeddings": emb,
    });
    if let Some(s) = sims {
      v["similarity"] = serde_json::json!(s);
    }
    writeln!(out, "{}", serde_json::to_string(&v)?)?;
  } else {
    for e in &emb {
      let line: Vec<String> = e.iter().map(|x| x.to_string()).collect();
      writeln!(out, "{}", line.join(" "))?;
    }
    if let Some(s) = sims {
      writeln!(out, "similarity ({:?}):", model.similarity_fn())?;
      for row in s {
        let line: Vec<String> = row.iter().map(|x| format!("{x:.4}")).collect();
        writeln!(out, "{}", line.join(" "))?;
      }
    }
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use clap::Parser;

  use super::*;

  #[derive(Parser)]
  struct T {
    #[command(flatten)]
    a: EmbedArgs,
  }

  #[test]
  fn flags_parse() {
    let t = T::try_parse_from([
      "x",
      "--model",
      "m",
      "--json",
      "--no-normalize",
      "--batch-size",
      "8",
      "--max-length",
      "128",
      "--no-truncate",
      "--prompt-name",
      "query",
      "hello",
      "world",
    ])
    .unwrap();
    let o = options(&t.a);
    assert_eq!(t.a.texts, vec!["hello", "world"]);
    assert_eq!(
      (o.batch_size, o.normalize, o.truncate, o.max_length),
      (8, Some(false), false, Some(128))
    );
    assert_eq!(o.prompt_name.as_deref(), Some("query"));
    assert!(T::try_parse_from(["x", "--model", "m", "--truncate", "--no-truncate"]).is_err());
    assert!(T::try_parse_from(["x", "--model", "m", "--normalize", "--no-normalize"]).is_err());
    let b = T::try_parse_from(["x", "--model", "m", "--bench"]).unwrap();
    assert_eq!(b.a.bench, Some(1000));
    let b = T::try_parse_from(["x", "--model", "m", "--bench", "50"]).unwrap();
    assert_eq!(b.a.bench, Some(50));
  }
}
