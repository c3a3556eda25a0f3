//! Criterion benches for the hot ops of LM inference: matmul (f32, bf16),
//! quantized matmul (4-bit g64), sdpa (prefill and decode shapes), rms_norm,
//! rope. Each iteration builds the op and evaluates it (what a model step
//! pays). Run: `cargo bench -p mlxrs-benches --bench ops`; the BLAS ratio:
//! `scripts/bench_blas.sh`.

use criterion::{Criterion, criterion_group, criterion_main};
use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Dtype, fast, ops, random};

fn rand(shape: &[i32], dtype: Dtype) -> Array {
  let k = random::key(0).unwrap();
  let mut a = ops::astype(
    &random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&k)).unwrap(),
    dtype,
  )
  .unwrap();
  a.eval().unwrap();
  a
}

fn matmul(c: &mut Criterion) {
  for (n, dtype) in [(1024, Dtype::Float32), (512, Dtype::Bfloat16)] {
    let a = rand(&[n, n], dtype);
    let b = rand(&[n, n], dtype);
    c.bench_function(&format!("matmul_{n}x{n}_{dtype}"), |bench| {
      bench.iter(|| ops::matmul(&a, &b).unwrap().eval().unwrap())
    });
  }
}

fn quantized_matmul(c: &mut Criterion) {
  let w = rand(&[2048, 2048], Dtype::Float32);
  let q = ops::quantize(&w, Some(64), Some(4), "affine", None).unwrap();
  let x = rand(&[1, 2048], Dtype::Float32);
  c.bench_function("quantized_matmul_1x2048x2048_4bit", |bench| {
    bench.iter(|| {
      ops::quantized_matmul(
        &x,
        &q[0],
        &q[1],
        Some(&q[2]),
        true,
        Some(64),
        Some(4),
        "affine",
      )
      .unwrap()
      .eval()
      .unwrap()
    })
  });
}

fn sdpa(c: &mut Criterion) {
  // Llama-3.2-1B attention: 32 query heads, 8 KV heads, head_dim 64.
  for (t_q, t_kv, mask, name) in [
    (128, 128, Mask::Causal, "prefill_128"),
    (1, 512, Mask::None, "decode_1x512"),
  ] {
    let q = rand(&[1, 32, t_q, 64], Dtype::Float32);
    let k = rand(&[1, 8, t_kv, 64], Dtype::Float32);
    let v = rand(&[1, 8, t_kv, 64], Dtype::Float32);
    c.bench_function(&format!("sdpa_{name}"), |bench| {
      bench.iter(|| {
        scaled_dot_product_attention(&q, &k, &v, 0.125, mask)
          .unwrap()
          .eval()
          .unwrap()
      })
    });
  }
}

fn norm_rope(c: &mut Criterion) {
  let x = rand(&[1, 128, 2048], Dtype::Float32);
  let w = rand(&[2048], Dtype::Float32);
  c.bench_function("rms_norm_128x2048", |bench| {
    bench.iter(|| fast::rms_norm(&x, Some(&w), 1e-5).unwrap().eval().unwrap())
  });
  let h = rand(&[1, 32, 128, 64], Dtype::Float32);
  c.bench_function("rope_32x128x64", |bench| {
    bench.iter(|| {
      fast::rope(&h, 64, false, Some(500000.0), 1.0, 0, None)
        .unwrap()
        .eval()
        .unwrap()
    })
  });
}

criterion_group! {
  name = benches;
  config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
  targets = matmul, quantized_matmul, sdpa, norm_rope
}
criterion_main!(benches);
