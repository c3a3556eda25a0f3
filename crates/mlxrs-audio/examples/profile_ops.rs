//! Micro-timings of the MLX ops a Whisper tiny encoder layer is made of
//! (shapes of a 30 s window: 1500 positions, width 384, 6 heads), to see
//! which dominate on the current device.
//!
//! ```text
//! cargo run --release -p mlxrs-audio --example profile_ops
//! ```

use std::time::Instant;

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, ops, random};

fn time(
  label: &str,
  reps: usize,
  mut f: impl FnMut() -> mlxrs_core::Result<Array>,
) -> mlxrs_core::Result<()> {
  let mut a = f()?;
  a.eval()?;
  let t = Instant::now();
  for _ in 0..reps {
    let mut a = f()?;
    a.eval()?;
  }
  println!(
    "{label}: {:.2} ms",
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
  );
  Ok(())
}

fn main() -> mlxrs_core::Result<()> {
  let x = random::normal(&[1, 1500, 384], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let w1 = random::normal(&[384, 1536], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let w2 = random::normal(&[1536, 384], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let wq = random::normal(&[384, 384], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let h = random::normal(&[1, 1500, 1536], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let q = random::normal(
    &[1, 6, 1500, 64],
    mlxrs_core::Dtype::Float32,
    0.0,
    1.0,
    None,
  )?;
  let all = vec![
    x.clone(),
    w1.clone(),
    w2.clone(),
    wq.clone(),
    h.clone(),
    q.clone(),
  ];
  mlxrs_core::eval(&all)?;
  let mel = random::normal(&[1, 3000, 80], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let c1 = random::normal(&[384, 3, 80], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let c2 = random::normal(&[384, 3, 384], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let x3000 = random::normal(&[1, 3000, 384], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let e = vec![mel.clone(), c1.clone(), c2.clone(), x3000.clone()];
  mlxrs_core::eval(&e)?;
  time("conv1 3000x80 -> 384, k3", 3, || {
    ops::conv1d(&mel, &c1, 1, 1, 1, 1)
  })?;
  time("conv2 3000x384 -> 1500x384, k3 s2", 3, || {
    ops::conv1d(&x3000, &c2, 2, 1, 1, 1)
  })?;
  time("matmul 1500x384 @ 384x1536 (fc1)", 5, || {
    ops::matmul(&x, &w1)
  })?;
  time("matmul 1500x1536 @ 1536x384 (fc2)", 5, || {
    ops::matmul(&h, &w2)
  })?;
  time("matmul 1500x384 @ 384x384 (q/k/v/out)", 5, || {
    ops::matmul(&x, &wq)
  })?;
  time("sdpa 6 heads 1500x1500x64", 3, || {
    scaled_dot_product_attention(&q, &q, &q, 0.125, Mask::None)
  })?;
  time("explicit attention 6 heads 1500x1500x64", 3, || {
    let qs = ops::multiply(&q, &Array::scalar(0.125f32))?;
    let s = ops::matmul(&qs, &ops::swapaxes(&q, 2, 3)?)?;
    let p = ops::softmax_axis(&s, -1, true)?;
    ops::matmul(&p, &q)
  })?;
  let kt = ops::contiguous(&ops::swapaxes(&q, 2, 3)?, false)?;
  let mut sc = ops::matmul(&q, &kt)?;
  sc.eval()?;
  let mut ktc = kt.clone();
  ktc.eval()?;
  time("  QK^T batched matmul (k^T contiguous)", 3, || {
    ops::matmul(&q, &ktc)
  })?;
  time("  QK^T batched matmul (k^T view)", 3, || {
    ops::matmul(&q, &ops::swapaxes(&q, 2, 3)?)
  })?;
  time("  softmax 6x1500x1500 precise", 3, || {
    ops::softmax_axis(&sc, -1, true)
  })?;
  time("  softmax 6x1500x1500", 3, || {
    ops::softmax_axis(&sc, -1, false)
  })?;
  time("  exp 6x1500x1500", 3, || ops::exp(&sc))?;
  time("  PV batched matmul", 3, || ops::matmul(&sc, &q))?;
  let s2 = mlxrs_core::Stream::new(mlxrs_core::Device::default_device()?)?;
  time("  softmax 6x1500x1500 split over 2 CPU streams", 3, || {
    let a = ops::slice(&sc, &[0, 0, 0, 0], &[1, 3, 1500, 1500], &[1, 1, 1, 1])?;
    let pa = ops::softmax_axis(&a, -1, true)?;
    let pb = mlxrs_core::stream::with_stream(&s2, || -> mlxrs_core::Result<Array> {
      let b = ops::slice(&sc, &[0, 3, 0, 0], &[1, 6, 1500, 1500], &[1, 1, 1, 1])?;
      ops::softmax_axis(&b, -1, true)
    })?;
    ops::concatenate_axis(&[pa, pb], 1)
  })?;
  let q1 = ops::slice(&q, &[0, 0, 0, 0], &[1, 6, 1, 64], &[1, 1, 1, 1])?;
  time("sdpa 1 query x 1500 keys", 20, || {
    scaled_dot_product_attention(&q1, &q, &q, 0.125, Mask::None)
  })?;
  time("explicit attention 1 query x 1500 keys", 20, || {
    let qs = ops::multiply(&q1, &Array::scalar(0.125f32))?;
    let s = ops::matmul(&qs, &ops::swapaxes(&q, 2, 3)?)?;
    let p = ops::softmax_axis(&s, -1, true)?;
    ops::matmul(&p, &q)
  })?;
  time("erf gelu 1500x1536", 5, || mlxrs_nn::gelu(&h))?;
  let cg =
    mlxrs_core::transforms::compile_fn(|a: &[Array]| Ok(vec![mlxrs_nn::gelu(&a[0])?]), true)?;
  time("compiled erf gelu 1500x1536", 5, || {
    Ok(cg.call(std::slice::from_ref(&h))?.remove(0))
  })?;
  time("erf gelu 1500x1536 (again)", 5, || mlxrs_nn::gelu(&h))?;
  let mut a1 = mlxrs_nn::gelu(&h)?;
  let mut a2 = cg.call(std::slice::from_ref(&h))?.remove(0);
  a1.eval()?;
  a2.eval()?;
  let d = ops::max(&ops::abs(&ops::subtract(&a1, &a2)?)?, false)?.item::<f32>()?;
  println!("compiled vs eager gelu max diff {d:e}");
  time("tanh gelu 1500x1536", 5, || mlxrs_nn::gelu_approx(&h))?;
  let small = random::normal(&[1, 1, 384], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  time(
    "150 chained adds on [1,1,384] (per-op overhead)",
    20,
    || {
      let mut y = small.clone();
      for _ in 0..150 {
        y = ops::add(&y, &small)?;
      }
      Ok(y)
    },
  )?;
  let w384 = random::normal(&[384, 1536], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let mut w384e = w384.clone();
  w384e.eval()?;
  time("GEMV 384 x 1536", 50, || ops::matmul(&small, &w384))?;
  let wo = random::normal(&[1536, 384], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let bias = random::normal(&[1536], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let e = vec![wo.clone(), bias.clone()];
  mlxrs_core::eval(&e)?;
  time(
    "addmm(b, x, W^T view) [1,384] x [1536,384]^T (nn::Linear)",
    50,
    || ops::addmm(&bias, &small, &ops::transpose(&wo)?, 1.0, 1.0),
  )?;
  time("matmul(x, W^T view) + b", 50, || {
    ops::add(&ops::matmul(&small, &ops::transpose(&wo)?)?, &bias)
  })?;
  time("addmm(b, x, W contiguous [in,out])", 50, || {
    ops::addmm(&bias, &small, &w384, 1.0, 1.0)
  })?;
  let wv = random::normal(&[384, 51864], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let v = random::normal(&[1, 1, 384], mlxrs_core::Dtype::Float32, 0.0, 1.0, None)?;
  let all = vec![wv.clone(), v.clone()];
  mlxrs_core::eval(&all)?;
  time("logits GEMV 384 x 51864", 20, || ops::matmul(&v, &wv))?;
  let wa = ops::contiguous(&ops::slice(&wv, &[0, 0], &[384, 25932], &[1, 1])?, false)?;
  let wb = ops::contiguous(
    &ops::slice(&wv, &[0, 25932], &[384, 51864], &[1, 1])?,
    false,
  )?;
  let e = vec![wa.clone(), wb.clone()];
  mlxrs_core::eval(&e)?;
  let s3 = mlxrs_core::Stream::new(mlxrs_core::Device::default_device()?)?;
  time("logits GEMV split over 2 streams", 20, || {
    let a = ops::matmul(&v, &wa)?;
    let b = mlxrs_core::stream::with_stream(&s3, || ops::matmul(&v, &wb))?;
    ops::concatenate_axis(&[a, b], -1)
  })?;
  time("logits GEMV 384 x 51864 (again)", 20, || {
    ops::matmul(&v, &wv)
  })?;
  Ok(())
}
