//! Host cost of building one decode step's graph (no evaluation): the
//! part of a step `MLXRS_DECODE_TIMING=1` calls "build", timed alone so
//! that no concurrent evaluation skews it (on a CPU stream the queued
//! step computes while the next one is built).
//!
//! `cargo run --release -p mlxrs-lm --example step_build_cost -- SHAPE [BITS]`
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::bench::random_model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
  let args: Vec<String> = std::env::args().collect();
  let shape = args.get(1).map(String::as_str).unwrap_or("llama-3.2-1b");
  let bits = args.get(2).map(|b| b.parse::<i32>()).transpose()?;
  let dtype = if mlxrs_core::Device::default_is_gpu() {
    Dtype::Bfloat16
  } else {
    Dtype::Float32
  };
  let model = random_model(shape, dtype, bits, 64, 0)?;
  let mut caches = model.make_caches(None);
  let prompt: Vec<i32> = (0..100).map(|i| (i * 7) % 1000).collect();
  let h = model.hidden(&Array::from_slice(&prompt, &[1, 100])?, &mut caches)?;
  let held: Vec<Array> = caches
    .iter()
    .flat_map(|c| c.held_arrays())
    .chain([h])
    .collect();
  mlxrs_core::eval(&held)?;
  let tok = Array::from_slice(&[5i32], &[1, 1])?;
  for round in 0..3 {
    let mut t = Vec::new();
    for _ in 0..300 {
      let mut c = caches.clone();
      let t0 = std::time::Instant::now();
      let h = model.hidden(&tok, &mut c)?;
      let s = h.shape();
      let h = ops::reshape(&h, &[s[0], s[2]])?;
      let logits = model.logits(&h)?;
      let lse = ops::logsumexp_axis(&logits, -1, true)?;
      let lp = ops::subtract(&logits, &lse)?;
      let y = ops::argmax_axis(&lp, -1, false)?;
      t.push(t0.elapsed().as_secs_f64() * 1e6);
      drop((y, c));
    }
    t.sort_by(f64::total_cmp);
    println!(
      "round {round}: build per step min {:.0} median {:.0} us",
      t[0],
      t[t.len() / 2]
    );
  }
  Ok(())
}
