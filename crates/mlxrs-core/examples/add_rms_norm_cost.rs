//! Host cost per call of `fast::add_rms_norm` against MLX's `add` +
//! `fast::rms_norm` (the two ops it fuses), through this crate's own calls:
//! chains of 64 dependent calls on a `[1, WIDTH]` row, REPS interleaved
//! repetitions, the graph's build time and its evaluation (MLX's encoding
//! plus the device's run: the chain is dependent) per call, min and median.
//! On a CUDA device the first is one custom kernel, elsewhere the two ops.
//!
//! `cargo run --release -p mlxrs-core --example add_rms_norm_cost [WIDTH] [REPS] [dtype]`

use std::time::Instant;

use mlxrs_core::{Array, Dtype, Result, fast, ops, random};

fn chain(x: &Array, d: &Array, w: &Array, fused: bool) -> Result<(f64, f64)> {
  let t0 = Instant::now();
  let (mut x, mut d) = (x.clone(), d.clone());
  for _ in 0..64 {
    let (h, y) = if fused {
      fast::add_rms_norm(&x, &d, w, 1e-5)?
    } else {
      let h = ops::add(&x, &d)?;
      let y = fast::rms_norm(&h, Some(w), 1e-5)?;
      (h, y)
    };
    (x, d) = (h, y);
  }
  let t1 = Instant::now();
  mlxrs_core::eval(&[x, d])?;
  let t2 = Instant::now();
  Ok((
    (t1 - t0).as_secs_f64() * 1e6 / 64.0,
    (t2 - t1).as_secs_f64() * 1e6 / 64.0,
  ))
}

fn stats(v: &mut [f64]) -> (f64, f64) {
  v.sort_by(|a, b| a.total_cmp(b));
  (v[0], v[v.len() / 2])
}

fn main() -> Result<()> {
  let args: Vec<String> = std::env::args().collect();
  let width: i32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2048);
  let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
  let dtype = match args.get(3).map(String::as_str) {
    Some("float32") => Dtype::Float32,
    Some("float16") => Dtype::Float16,
    _ => Dtype::Bfloat16,
  };
  let r = |seed: u64, shape: &[i32]| -> Result<Array> {
    let a = random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&random::key(seed)?))?;
    let a = a.astype(dtype)?;
    mlxrs_core::eval(std::slice::from_ref(&a))?;
    Ok(a)
  };
  let (x, d, w) = (r(1, &[1, width])?, r(2, &[1, width])?, r(3, &[width])?);
  let kernel = fast::add_rms_norm_is_fused(&x, &d, &w, 1e-5)?;
  println!(
    "device {:?}, {dtype:?} [1, {width}], {reps} interleaved repetitions of 64-call chains; \
     add_rms_norm is {}",
    mlxrs_core::Device::default_device()?,
    if kernel {
      "one custom kernel"
    } else {
      "MLX's add + rms_norm"
    }
  );
  // Warm-up (kernel compilation, allocator).
  chain(&x, &d, &w, true)?;
  chain(&x, &d, &w, false)?;
  let (mut fb, mut fe, mut ub, mut ue) = (vec![], vec![], vec![], vec![]);
  for _ in 0..reps {
    let (b, e) = chain(&x, &d, &w, true)?;
    fb.push(b);
    fe.push(e);
    let (b, e) = chain(&x, &d, &w, false)?;
    ub.push(b);
    ue.push(e);
  }
  println!("| per call | build min / median us | evaluation min / median us |");
  println!("|---|---|---|");
  for (name, b, e) in [
    ("add_rms_norm", &mut fb, &mut fe),
    ("add + rms_norm", &mut ub, &mut ue),
  ] {
    let ((bm, bmed), (em, emed)) = (stats(b), stats(e));
    println!("| {name} | {bm:.2} / {bmed:.2} | {em:.2} / {emed:.2} |");
  }
  Ok(())
}
