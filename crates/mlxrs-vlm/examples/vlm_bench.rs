//! Time to first token and decode speed of one image + prompt, the mlxrs
//! side of `scripts/bench_vlm.sh` (the python side times mlx-vlm's
//! `stream_generate` the same way):
//!
//! `cargo run --release -p mlxrs-vlm --example vlm_bench -- MODEL IMAGE
//! [--prompt P] [--max-tokens N] [--warmup] [--json]`
//!
//! TTFT runs from the decoded image on the host (after model load) to the
//! first generated token: image preprocessing, prompt expansion, vision
//! tower, projector and prefill. Decode speed counts the tokens after the
//! first over the time after the first. Greedy sampling.

use std::time::Instant;

use mlxrs_lm::GenerateOptions;
use mlxrs_vlm::{RgbImage, VlmModel};

fn main() {
  if let Err(e) = run() {
    eprintln!("error: {e}");
    std::process::exit(1);
  }
}

struct Timing {
  ttft: f64,
  decode_tps: f64,
  tokens: usize,
  prompt_tokens: usize,
}

fn once(
  m: &VlmModel,
  images: &[RgbImage],
  prompt: &str,
  opts: &GenerateOptions,
) -> Result<Timing, Box<dyn std::error::Error>> {
  let t0 = Instant::now();
  let input = m.prepare(prompt, images, None, false)?;
  let mut first = None;
  let mut n = 0usize;
  let mut prompt_tokens = 0;
  for r in m.stream(&input, opts)? {
    let r = r?;
    if r.token >= 0 {
      n += 1;
      if first.is_none() {
        first = Some(t0.elapsed().as_secs_f64());
      }
    }
    prompt_tokens = r.prompt_tokens;
  }
  let total = t0.elapsed().as_secs_f64();
  let ttft = first.ok_or("no token generated")?;
  let decode_tps = if n > 1 {
    (n - 1) as f64 / (total - ttft).max(1e-9)
  } else {
    0.0
  };
  Ok(Timing {
    ttft,
    decode_tps,
    tokens: n,
    prompt_tokens,
  })
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
  let mut args = std::env::args().skip(1);
  let (mut model, mut image_path) = (None, None);
  let (mut prompt, mut max_tokens, mut json, mut warmup) =
    ("Describe this image.".to_string(), 128usize, false, false);
  while let Some(a) = args.next() {
    match a.as_str() {
      "--prompt" => prompt = args.next().ok_or("--prompt needs a value")?,
      "--max-tokens" => max_tokens = args.next().ok_or("--max-tokens needs a value")?.parse()?,
      "--json" => json = true,
      "--warmup" => warmup = true,
      _ if model.is_none() => model = Some(a),
      _ if image_path.is_none() => image_path = Some(a),
      other => return Err(format!("unexpected argument {other:?}").into()),
    }
  }
  let usage = "usage: vlm_bench MODEL IMAGE [--prompt P] [--max-tokens N] [--warmup] [--json]";
  let model = model.ok_or(usage)?;
  let image_path = image_path.ok_or(usage)?;
  let t = Instant::now();
  let m = mlxrs_vlm::load(&model, &mlxrs_vlm::LoadOptions::default())?;
  let load_s = t.elapsed().as_secs_f64();
  let images = m.load_images(&[image_path])?;
  let mut opts = GenerateOptions::default();
  opts.step.max_tokens = max_tokens;
  opts.step.sampler.temp = 0.0;
  if warmup {
    let mut w = opts.clone();
    w.step.max_tokens = 2;
    once(&m, &images, &prompt, &w)?;
  }
  let r = once(&m, &images, &prompt, &opts)?;
  let device = mlxrs_core::Device::default_device()
    .map(|d| d.to_string())
    .unwrap_or_default();
  if json {
    println!(
      "{{\"load_s\": {load_s:.3}, \"ttft_s\": {:.4}, \"decode_tps\": {:.2}, \"tokens\": {}, \"prompt_tokens\": {}, \"device\": \"{device}\"}}",
      r.ttft, r.decode_tps, r.tokens, r.prompt_tokens
    );
  } else {
    println!(
      "mlxrs: load {load_s:.2} s, prompt {} tokens, TTFT {:.3} s, decode {:.1} tok/s ({} tokens) on {device}",
      r.prompt_tokens, r.ttft, r.decode_tps, r.tokens
    );
  }
  Ok(())
}
