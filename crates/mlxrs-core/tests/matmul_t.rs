//! `ops::matmul_t` (`x @ w.T`; sgemv for one or two float32 rows on the
//! CPU) equals `matmul(x, transpose(w))` on every path, and so do its
//! gradients; `ops::quantized_matmul_t` likewise against `quantized_matmul`.

use mlxrs_core::transforms::{Closure, value_and_grad};
use mlxrs_core::{Array, Dtype, ops, random};

fn normal(shape: &[i32], seed: u64) -> Array {
  let a = random::normal(
    shape,
    Dtype::Float32,
    0.0,
    1.0,
    Some(&random::key(seed).unwrap()),
  )
  .unwrap();
  mlxrs_core::eval(std::slice::from_ref(&a)).unwrap();
  a
}

fn max_diff(a: &Array, b: &Array) -> f32 {
  assert_eq!(a.shape(), b.shape());
  let mut d = ops::max(&ops::abs(&ops::subtract(a, b).unwrap()).unwrap(), false).unwrap();
  d.to_vec::<f32>().unwrap()[0]
}

fn reference(x: &Array, w: &Array) -> Array {
  ops::matmul(x, &ops::transpose(w).unwrap()).unwrap()
}

/// One row, two rows (the sgemv path), three rows (MLX's matmul), leading
/// batch axes, a strided (transposed) `x`, a lazy `w`, float16: all equal
/// the plain product.
#[test]
fn equals_matmul_on_every_path() {
  let w = normal(&[300, 64], 1);
  for shape in [
    vec![64],
    vec![1, 64],
    vec![2, 64],
    vec![3, 64],
    vec![1, 1, 64],
    vec![2, 1, 64],
  ] {
    let x = normal(&shape, 2);
    let got = ops::matmul_t(&x, &w).unwrap();
    let want = reference(&x, &w);
    let d = max_diff(&got, &want);
    assert!(d < 1e-4, "{shape:?}: {d}");
  }
  // x as a transposed view: [64, 1] -> [1, 64] with strides (1, 1).
  let xt = ops::transpose(&normal(&[64, 1], 3)).unwrap();
  assert!(max_diff(&ops::matmul_t(&xt, &w).unwrap(), &reference(&xt, &w)) < 1e-4);
  // x a strided slice: every other column of [1, 128].
  let wide = normal(&[1, 128], 4);
  let xs = ops::slice(&wide, &[0, 0], &[1, 128], &[1, 2]).unwrap();
  assert!(max_diff(&ops::matmul_t(&xs, &w).unwrap(), &reference(&xs, &w)) < 1e-4);
  // w not evaluated yet (falls back to matmul), and w transposed.
  let lazy = ops::multiply(&w, &Array::scalar(2.0f32)).unwrap();
  let x = normal(&[1, 64], 5);
  assert!(max_diff(&ops::matmul_t(&x, &lazy).unwrap(), &reference(&x, &lazy)) < 1e-4);
  let wt = ops::transpose(&normal(&[64, 300], 6)).unwrap();
  mlxrs_core::eval(std::slice::from_ref(&wt)).unwrap();
  assert!(max_diff(&ops::matmul_t(&x, &wt).unwrap(), &reference(&x, &wt)) < 1e-4);
  // float16 takes MLX's matmul.
  let x16 = ops::astype(&x, Dtype::Float16).unwrap();
  let w16 = ops::astype(&w, Dtype::Float16).unwrap();
  let got = ops::astype(&ops::matmul_t(&x16, &w16).unwrap(), Dtype::Float32).unwrap();
  let want = ops::astype(&reference(&x16, &w16), Dtype::Float32).unwrap();
  assert_eq!(max_diff(&got, &want), 0.0);
  // Shapes that do not multiply are errors.
  assert!(ops::matmul_t(&normal(&[1, 63], 7), &w).is_err());
}

/// Gradients through the sgemv primitive equal those through matmul.
#[test]
fn gradients_equal_matmul() {
  let w = normal(&[40, 16], 8);
  let x = normal(&[1, 16], 9);
  let loss = |fast: bool| {
    Closure::new(move |a: &[Array]| {
      let y = if fast {
        ops::matmul_t(&a[0], &a[1])?
      } else {
        ops::matmul(&a[0], &ops::transpose(&a[1])?)?
      };
      Ok(vec![ops::sum(&ops::multiply(&y, &y)?, false)?])
    })
    .unwrap()
  };
  let args = [x, w];
  let (v1, g1) = value_and_grad(&loss(true), &[0, 1])
    .unwrap()
    .call(&args)
    .unwrap();
  let (v2, g2) = value_and_grad(&loss(false), &[0, 1])
    .unwrap()
    .call(&args)
    .unwrap();
  assert!(max_diff(&v1[0], &v2[0]) < 1e-3);
  for (a, b) in g1.iter().zip(&g2) {
    assert!(max_diff(a, b) < 1e-3);
  }
}

fn quantized(w: &Array, group: i32, bits: i32) -> (Array, Array, Array) {
  let mut q = ops::quantize(w, Some(group), Some(bits), "affine", None).unwrap();
  let b = q.pop().unwrap();
  let s = q.pop().unwrap();
  let wq = q.pop().unwrap();
  mlxrs_core::eval(&[wq.clone(), s.clone(), b.clone()]).unwrap();
  (wq, s, b)
}

fn q_reference(x: &Array, q: &(Array, Array, Array), group: i32, bits: i32) -> Array {
  let (w, s, b) = q;
  if x.ndim() == 1 {
    // MLX 0.32's own op fails on a vector `x` on a CUDA device ("SmallVector
    // out of range"): the reference is its one-row product.
    let row = ops::expand_dims(x, 0).unwrap();
    return ops::squeeze_axis(&q_reference(&row, q, group, bits), 0).unwrap();
  }
  let k = x.shape().last().copied().unwrap_or(1);
  let rows = x.size() as i32 / k;
  if gpu() && x.dtype() == Dtype::Float32 && group == 128 && rows > 32 {
    // So does it for float32 x, groups of 128 and more than 32 rows
    // ("cuGraphAddKernelNode ... invalid argument"): the reference is the
    // product with the dequantized matrix.
    let dense =
      ops::dequantize(w, s, Some(b), Some(group), Some(bits), "affine", None, None).unwrap();
    return reference(x, &dense);
  }
  ops::quantized_matmul(x, w, s, Some(b), true, Some(group), Some(bits), "affine").unwrap()
}

/// Whether the default device is a GPU.
fn gpu() -> bool {
  mlxrs_core::Device::default_device().is_ok_and(|d| d.kind == mlxrs_core::DeviceType::Gpu)
}

/// `quantized_matmul_t` equals MLX's `quantized_matmul` for 4- and 8-bit
/// affine groups of 32/64/128, on the vectorised path (1..32 rows, leading
/// axes, strided x) and the dequantize-then-sgemm path (more rows), and
/// falls back to MLX's op elsewhere (float16 x, lazy weights, no biases).
#[test]
fn quantized_equals_mlx_on_every_path() {
  let w = normal(&[96, 256], 10);
  for bits in [4, 8] {
    for group in [32, 64, 128] {
      let q = quantized(&w, group, bits);
      for shape in [
        vec![256],
        vec![1, 256],
        vec![2, 256],
        vec![4, 256],
        vec![5, 256],
        vec![2, 3, 256],
        vec![32, 256],
        vec![33, 256],
        vec![2, 40, 256],
      ] {
        let x = normal(&shape, 11);
        let got =
          ops::quantized_matmul_t(&x, &q.0, &q.1, Some(&q.2), group, bits, "affine").unwrap();
        let want = q_reference(&x, &q, group, bits);
        let d = max_diff(&got, &want);
        assert!(d < 1e-3, "bits {bits} group {group} {shape:?}: {d}");
      }
      // A strided x: every other column of [1, 512].
      let wide = normal(&[1, 512], 12);
      let xs = ops::slice(&wide, &[0, 0], &[1, 512], &[1, 2]).unwrap();
      let got =
        ops::quantized_matmul_t(&xs, &q.0, &q.1, Some(&q.2), group, bits, "affine").unwrap();
      assert!(max_diff(&got, &q_reference(&xs, &q, group, bits)) < 1e-3);
    }
  }
  // A matrix large enough to be split over threads (> 1M multiply-adds).
  let big = normal(&[4100, 512], 17);
  for bits in [4, 8] {
    let q = quantized(&big, 64, bits);
    for rows in [1, 3] {
      let x = normal(&[rows, 512], 18);
      let got = ops::quantized_matmul_t(&x, &q.0, &q.1, Some(&q.2), 64, bits, "affine").unwrap();
      let d = max_diff(&got, &q_reference(&x, &q, 64, bits));
      assert!(d < 2e-3, "threaded, bits {bits}, {rows} rows: {d}");
    }
  }
  let q = quantized(&w, 64, 4);
  let x = normal(&[1, 256], 13);
  // float16 x and lazy scales take MLX's op (bit-identical to it).
  let x16 = ops::astype(&x, Dtype::Float16).unwrap();
  let got = ops::quantized_matmul_t(&x16, &q.0, &q.1, Some(&q.2), 64, 4, "affine").unwrap();
  let want = ops::quantized_matmul(
    &x16,
    &q.0,
    &q.1,
    Some(&q.2),
    true,
    Some(64),
    Some(4),
    "affine",
  )
  .unwrap();
  assert_eq!(
    max_diff(
      &ops::astype(&got, Dtype::Float32).unwrap(),
      &ops::astype(&want, Dtype::Float32).unwrap()
    ),
    0.0
  );
  let lazy_s = ops::multiply(&q.1, &Array::scalar(1.0f32)).unwrap();
  let got = ops::quantized_matmul_t(&x, &q.0, &lazy_s, Some(&q.2), 64, 4, "affine").unwrap();
  assert!(max_diff(&got, &q_reference(&x, &q, 64, 4)) < 1e-3);
  // Bad shapes are errors, not crashes.
  assert!(
    ops::quantized_matmul_t(
      &normal(&[1, 255], 14),
      &q.0,
      &q.1,
      Some(&q.2),
      64,
      4,
      "affine"
    )
    .is_err()
  );
  assert!(ops::quantized_matmul_t(&x, &q.0, &q.1, Some(&q.2), 64, 3, "affine").is_err());
}

/// `mean(y * y)` (in float32) for `y = x @ dequantize(q).T` and its
/// gradient with respect to `x`: through `quantized_matmul_t` (first) and
/// MLX's op (second).
fn loss_and_grad(q: &(Array, Array, Array), group: i32, x: &Array) -> [(Array, Array); 2] {
  [true, false].map(|fast| {
    let (w, s, b) = q.clone();
    let f = Closure::new(move |a: &[Array]| {
      let y = if fast {
        ops::quantized_matmul_t(&a[0], &w, &s, Some(&b), group, 4, "affine")?
      } else {
        ops::quantized_matmul(
          &a[0],
          &w,
          &s,
          Some(&b),
          true,
          Some(group),
          Some(4),
          "affine",
        )?
      };
      let y = ops::astype(&y, Dtype::Float32)?;
      Ok(vec![ops::mean(&ops::multiply(&y, &y)?, false)?])
    })
    .unwrap();
    let (mut v, mut g) = value_and_grad(&f, &[0])
      .unwrap()
      .call(std::slice::from_ref(x))
      .unwrap();
    (v.remove(0), g.remove(0))
  })
}

/// The gradient with respect to x through the quantized kernel equals the
/// one through MLX's op.
#[test]
fn quantized_gradient_equals_mlx() {
  let q = quantized(&normal(&[40, 64], 15), 32, 4);
  let [(v1, g1), (v2, g2)] = loss_and_grad(&q, 32, &normal(&[1, 64], 16));
  assert!(max_diff(&v1, &v2) < 1e-3);
  assert!(max_diff(&g1, &g2) < 1e-3);
}

/// bfloat16 rows with bfloat16 scales, few and many (prefill): on a CPU
/// stream MLX's op (bit-identical), on a GPU stream from 256 rows on
/// `x @ dequantize(w).T` (close to MLX's quantized GEMM: the same
/// dequantized values, another summation order); under a gradient MLX's
/// op everywhere (no dense copy kept for the backward pass), equal to it.
#[test]
fn quantized_bf16_many_rows_match_mlx() {
  let w = ops::astype(&normal(&[192, 512], 19), Dtype::Bfloat16).unwrap();
  let (wq, s, b) = quantized(&w, 64, 4);
  assert_eq!(s.dtype(), Dtype::Bfloat16);
  let f32 = |a: &Array| ops::astype(a, Dtype::Float32).unwrap();
  for rows in [1, 8, 255, 256, 300] {
    let x = ops::astype(&normal(&[rows, 512], 20), Dtype::Bfloat16).unwrap();
    let got = ops::quantized_matmul_t(&x, &wq, &s, Some(&b), 64, 4, "affine").unwrap();
    let want = q_reference(&x, &(wq.clone(), s.clone(), b.clone()), 64, 4);
    assert_eq!(got.dtype(), Dtype::Bfloat16);
    let scale = ops::max(&ops::abs(&f32(&want)).unwrap(), false)
      .unwrap()
      .to_vec::<f32>()
      .unwrap()[0];
    let d = max_diff(&f32(&got), &f32(&want));
    assert!(d <= 1e-2 * scale, "{rows} rows: {d} (|y| up to {scale})");
  }
  let x = ops::astype(&normal(&[300, 512], 21), Dtype::Bfloat16).unwrap();
  let [(v1, g1), (v2, g2)] = loss_and_grad(&(wq, s, b), 64, &x);
  assert_eq!(max_diff(&v1, &v2), 0.0);
  assert_eq!(max_diff(&f32(&g1), &f32(&g2)), 0.0);
}
