//! Time to first token and decode speed of one image + prompt, the mlxrs
//! side of `scripts/bench_vlm.sh` (the python side times mlx-vlm's
//! `stream_generate` the same way):
//!
//! `cargo run --release -p mlxrs-vlm --example vlm_bench -- MODEL IMAGE
//! [--prompt P] [--max-tokens N] [--warmup] [--json] [--chat]`
//!
//! TTFT runs from the decoded image on the host (after model load) to the
//! first generated token: image preprocessing, prompt expansion, vision
//! tower, projector and prefill. Decode speed counts the tokens after the
//! first over the time after the first. Greedy sampling.
//!
//! The image-feature cache is cleared after the warm-up, so the timed run
//! runs the vision tower as mlx-vlm's `stream_generate` does; then the
//! same generation runs again with the features cached (python
//! `vision_cache=VisionFeatureCache()`), reported as `ttft_cached_s`.
//!
//! `--chat`: a two-turn [`mlxrs_vlm::VlmChat`] instead (turn 1: the image
//! and the prompt; turn 2: a text-only question), timing turn 2's TTFT with
//! the KV cache reused and with the whole conversation re-prefilled
//! (`reuse_cache = false`, image features cached in both).

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
  let mut chat = false;
  while let Some(a) = args.next() {
    match a.as_str() {
      "--prompt" => prompt = args.next().ok_or("--prompt needs a value")?,
      "--max-tokens" => max_tokens = args.next().ok_or("--max-tokens needs a value")?.parse()?,
      "--json" => json = true,
      "--warmup" => warmup = true,
      "--chat" => chat = true,
      _ if model.is_none() => model = Some(a),
      _ if image_path.is_none() => image_path = Some(a),
      other => return Err(format!("unexpected argument {other:?}").into()),
    }
  }
  let usage =
    "usage: vlm_bench MODEL IMAGE [--prompt P] [--max-tokens N] [--warmup] [--json] [--chat]";
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
  if chat {
    return chat_bench(&m, &images[0], &prompt, &opts);
  }
  m.clear_vision_cache();
  let r = once(&m, &images, &prompt, &opts)?;
  // The same image again: the features come from the cache.
  let mut c = opts.clone();
  c.step.max_tokens = 2;
  let hits = m.vision_cache_stats().hits;
  let cached = once(&m, &images, &prompt, &c)?;
  if m.vision_cache_stats().hits != hits + 1 {
    return Err("the repeated image missed the feature cache".into());
  }
  let device = mlxrs_core::Device::default_device()
    .map(|d| d.to_string())
    .unwrap_or_default();
  if json {
    println!(
      "{{\"load_s\": {load_s:.3}, \"ttft_s\": {:.4}, \"ttft_cached_s\": {:.4}, \"decode_tps\": {:.2}, \"tokens\": {}, \"prompt_tokens\": {}, \"device\": \"{device}\"}}",
      r.ttft, cached.ttft, r.decode_tps, r.tokens, r.prompt_tokens
    );
  } else {
    println!(
      "mlxrs: load {load_s:.2} s, prompt {} tokens, TTFT {:.3} s (image features cached: {:.3} s), decode {:.1} tok/s ({} tokens) on {device}",
      r.prompt_tokens, r.ttft, cached.ttft, r.decode_tps, r.tokens
    );
  }
  Ok(())
}

fn chat_bench(
  m: &VlmModel,
  image: &RgbImage,
  prompt: &str,
  opts: &GenerateOptions,
) -> Result<(), Box<dyn std::error::Error>> {
  let second = "What else can you see?";
  let mut turns = Vec::new();
  for reuse in [true, false] {
    let mut c = mlxrs_vlm::VlmChat::new(m, None, opts.clone())?;
    c.reuse_cache = reuse;
    c.add_image(image.clone());
    let t1 = c.send(prompt, &mut |_| {})?;
    let t2 = c.send(second, &mut |_| {})?;
    turns.push((t1, t2));
  }
  let (r1, r2) = &turns[0];
  let (_, f2) = &turns[1];
  println!(
    "{{\"turn1_ttft_s\": {:.4}, \"turn1_prompt_tokens\": {}, \"turn2_prompt_tokens\": {}, \"turn2_prefilled_reuse\": {}, \"turn2_ttft_reuse_s\": {:.4}, \"turn2_ttft_full_s\": {:.4}}}",
    r1.ttft_s, r1.prompt_tokens, r2.prompt_tokens, r2.prefilled, r2.ttft_s, f2.ttft_s
  );
  Ok(())
}
