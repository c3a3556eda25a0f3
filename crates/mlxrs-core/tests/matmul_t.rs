//! `ops::matmul_t` (`x @ w.T`; sgemv for one or two float32 rows on the
//! CPU) equals `matmul(x, transpose(w))` on every path, and so do its
//! gradients.

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
