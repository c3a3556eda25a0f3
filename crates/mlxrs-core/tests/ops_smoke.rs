//! Smoke tests of the generated op bindings: one or more ops per type mapping
//! of the generator (arrays, int lists, optional ints / floats / dtypes /
//! arrays, dtypes, strings, int pairs, list arguments and results, pair
//! results, fft, linalg, random, fast), the operators and methods of
//! `ops::ergonomic`, and errors surfacing as `Err` values.
//!
//! Golden values are derived by hand in the comments.

use mlxrs_core::{
  Array, Complex32, Device, Dtype, Error, fast, fft, linalg, ops, random, with_device,
};

const TOL: f32 = 1e-5;

fn f32s(data: &[f32], shape: &[i32]) -> Array {
  Array::from_slice(data, shape).unwrap()
}

fn i32s(data: &[i32], shape: &[i32]) -> Array {
  Array::from_slice(data, shape).unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
  assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
  for (i, (g, w)) in got.iter().zip(want).enumerate() {
    assert!(
      (g - w).abs() <= TOL * w.abs().max(1.0),
      "index {i}: got {g}, want {w} (all: {got:?})"
    );
  }
}

fn vals(mut a: Array) -> Vec<f32> {
  a.to_vec::<f32>().unwrap()
}

// ------------------------------------------------------------------ arrays

/// `[1, 2, 3] + [10, 20, 30] = [11, 22, 33]`; broadcasting a `[1]` adds it
/// to each element.
#[test]
fn add_and_broadcast() {
  let a = f32s(&[1.0, 2.0, 3.0], &[3]);
  let b = f32s(&[10.0, 20.0, 30.0], &[3]);
  assert_eq!(vals(ops::add(&a, &b).unwrap()), [11.0, 22.0, 33.0]);
  let c = f32s(&[0.5], &[1]);
  assert_eq!(vals(ops::add(&a, &c).unwrap()), [1.5, 2.5, 3.5]);
}

/// `[[1, 2, 3], [4, 5, 6]]`: column sums (axes `[0]`) `[5, 7, 9]`; all axes
/// `21`; row sums with keepdims (axis 1) `[[6], [15]]`, shape `[2, 1]`; the
/// plain `sum` flattens.
#[test]
fn sum_variants_int_lists() {
  let a = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
  assert_eq!(
    vals(ops::sum_axes(&a, &[0], false).unwrap()),
    [5.0, 7.0, 9.0]
  );
  assert_eq!(vals(ops::sum_axes(&a, &[0, 1], false).unwrap()), [21.0]);
  let rows = ops::sum_axis(&a, 1, true).unwrap();
  assert_eq!(rows.shape(), [2, 1]);
  assert_eq!(vals(rows), [6.0, 15.0]);
  assert_eq!(vals(ops::sum(&a, false).unwrap()), [21.0]);
}

/// `reshape([0..6], [3, 2])` then transpose: `[[0, 2, 4], [1, 3, 5]]`.
#[test]
fn reshape_transpose_shape_args() {
  let a = ops::arange(0.0, 6.0, 1.0, Dtype::Float32).unwrap();
  let r = ops::reshape(&a, &[3, 2]).unwrap();
  assert_eq!(r.shape(), [3, 2]);
  let t = ops::transpose(&r).unwrap();
  assert_eq!(t.shape(), [2, 3]);
  assert_eq!(vals(t), [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
  let e = ops::expand_dims_axes(&a, &[0, 2]).unwrap();
  assert_eq!(e.shape(), [1, 6, 1]);
}

/// `astype([1, 2] int32, float32)` is `[1.0, 2.0]` of dtype float32.
#[test]
fn astype_dtype_arg() {
  let a = i32s(&[1, 2], &[2]);
  let f = ops::astype(&a, Dtype::Float32).unwrap();
  assert_eq!(f.dtype(), Dtype::Float32);
  assert_eq!(vals(f), [1.0, 2.0]);
  let z = ops::zeros(&[2, 2], Dtype::Bfloat16).unwrap();
  assert_eq!((z.shape(), z.dtype()), (vec![2, 2], Dtype::Bfloat16));
}

/// Cumulative sum of `[1, 2, 3]`: inclusive `[1, 3, 6]`; exclusive
/// `[0, 1, 3]`; reversed inclusive `[6, 5, 3]`. The optional dtype: `None`
/// keeps int32, `Some(Float32)` converts.
#[test]
fn cumsum_optional_dtype() {
  let a = i32s(&[1, 2, 3], &[3]);
  let mut c = ops::cumsum(&a, false, true, None).unwrap();
  assert_eq!(c.dtype(), Dtype::Int32);
  assert_eq!(c.to_vec::<i32>().unwrap(), [1, 3, 6]);
  let mut ex = ops::cumsum(&a, false, false, None).unwrap();
  assert_eq!(ex.to_vec::<i32>().unwrap(), [0, 1, 3]);
  let rev = ops::cumsum(&a, true, true, Some(Dtype::Float32)).unwrap();
  assert_eq!(rev.dtype(), Dtype::Float32);
  assert_eq!(vals(rev), [6.0, 5.0, 3.0]);
  let ax = ops::cumsum_axis(&f32s(&[1.0, 2.0, 3.0, 4.0], &[2, 2]), 0, false, true, None).unwrap();
  assert_eq!(vals(ax), [1.0, 2.0, 4.0, 6.0]);
}

/// `nan_to_num([nan, inf, -inf, 1], nan = 0, posinf = Some(9), neginf =
/// None)`: nan -> 0, inf -> 9, -inf -> the lowest float32 (the default),
/// 1 unchanged.
#[test]
fn nan_to_num_optional_floats() {
  let a = f32s(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0], &[4]);
  let r = ops::nan_to_num(&a, 0.0, Some(9.0), None).unwrap();
  assert_eq!(vals(r), [0.0, 9.0, f32::MIN, 1.0]);
}

/// `clip([-1, 0.5, 2], min = 0, max = absent)` is `[0, 0.5, 2]`; with
/// `max = 1` too, `[0, 0.5, 1]`.
#[test]
fn clip_optional_arrays() {
  let a = f32s(&[-1.0, 0.5, 2.0], &[3]);
  let lo = Array::scalar(0.0f32);
  let hi = Array::scalar(1.0f32);
  assert_eq!(
    vals(ops::clip(&a, Some(&lo), None).unwrap()),
    [0.0, 0.5, 2.0]
  );
  assert_eq!(
    vals(ops::clip(&a, Some(&lo), Some(&hi)).unwrap()),
    [0.0, 0.5, 1.0]
  );
}

/// `concatenate([[1, 2], [3]])` is `[1, 2, 3]`; stacking two `[2]` arrays on
/// axis 1 gives `[[1, 3], [2, 4]]`.
#[test]
fn list_arguments() {
  let a = f32s(&[1.0, 2.0], &[2]);
  let b = f32s(&[3.0], &[1]);
  assert_eq!(
    vals(ops::concatenate(&[a.clone(), b]).unwrap()),
    [1.0, 2.0, 3.0]
  );
  let c = f32s(&[3.0, 4.0], &[2]);
  let s = ops::stack_axis(&[a, c], 1).unwrap();
  assert_eq!(s.shape(), [2, 2]);
  assert_eq!(vals(s), [1.0, 3.0, 2.0, 4.0]);
}

/// `split(arange(6), 3, axis 0)` is `[0, 1]`, `[2, 3]`, `[4, 5]`;
/// `split_sections(.., [1, 4])` cuts before indices 1 and 4: `[0]`,
/// `[1, 2, 3]`, `[4, 5]`.
#[test]
fn list_results() {
  let a = ops::arange(0.0, 6.0, 1.0, Dtype::Float32).unwrap();
  let parts = ops::split(&a, 3, 0).unwrap();
  let got: Vec<Vec<f32>> = parts.into_iter().map(vals).collect();
  assert_eq!(got, [vec![0.0, 1.0], vec![2.0, 3.0], vec![4.0, 5.0]]);
  let parts = ops::split_sections(&a, &[1, 4], 0).unwrap();
  let got: Vec<Vec<f32>> = parts.into_iter().map(vals).collect();
  assert_eq!(got, [vec![0.0], vec![1.0, 2.0, 3.0], vec![4.0, 5.0]]);
}

/// `minmax([3, 1, 2])` is the pair `(1, 3)`.
#[test]
fn pair_result() {
  let a = f32s(&[3.0, 1.0, 2.0], &[3]);
  let (lo, hi) = ops::minmax(&a, false).unwrap();
  assert_eq!((vals(lo), vals(hi)), (vec![1.0], vec![3.0]));
}

/// `searchsorted([1, 3, 5, 7], [3, 6])`: side "left" puts 3 before the
/// existing 3 (index 1) and 6 at 3; side "right" puts 3 after it (2).
#[test]
fn string_argument() {
  let s = f32s(&[1.0, 3.0, 5.0, 7.0], &[4]);
  let v = f32s(&[3.0, 6.0], &[2]);
  let idx = |side: &str| -> Vec<i32> {
    let i = ops::searchsorted(&s, &v, side).unwrap();
    let mut i = ops::astype(&i, Dtype::Int32).unwrap();
    i.to_vec::<i32>().unwrap()
  };
  assert_eq!(idx("left"), [1, 3]);
  assert_eq!(idx("right"), [2, 3]);
}

/// `argmax` along axis 1 of `[[1, 5, 2], [7, 0, 3]]` is `[1, 0]` (uint32);
/// `softmax([0, ln 3])` is `[1/4, 3/4]`.
#[test]
fn argmax_and_softmax() {
  let a = f32s(&[1.0, 5.0, 2.0, 7.0, 0.0, 3.0], &[2, 3]);
  let mut i = ops::argmax_axis(&a, 1, false).unwrap();
  assert_eq!(i.dtype(), Dtype::Uint32);
  assert_eq!(i.to_vec::<u32>().unwrap(), [1, 0]);
  let s = ops::softmax_axis(&f32s(&[0.0, 3f32.ln()], &[2]), -1, false).unwrap();
  assert_close(&vals(s), &[0.25, 0.75]);
}

/// A 1x1 conv2d (NHWC input `[1, 2, 2, 1]`, weight `[1, 1, 1, 1]` = 2,
/// stride / padding / dilation as int pairs) doubles each pixel.
#[test]
fn conv2d_int_pairs() {
  let x = f32s(&[1.0, 2.0, 3.0, 4.0], &[1, 2, 2, 1]);
  let w = f32s(&[2.0], &[1, 1, 1, 1]);
  let y = ops::conv2d(&x, &w, (1, 1), (0, 0), (1, 1), 1).unwrap();
  assert_eq!(y.shape(), [1, 2, 2, 1]);
  assert_eq!(vals(y), [2.0, 4.0, 6.0, 8.0]);
}

/// Affine 8-bit quantization of one group of 64 values `0, 1, .., 63`:
/// scale `63 / 255`, bias `0`, so dequantizing reproduces each value to
/// within half a step (`0.124`). Covers optional ints (`group_size`, `bits`),
/// a string (`mode`), an absent optional array and a list result.
#[test]
fn quantize_round_trip_optional_ints() {
  let w = ops::reshape(
    &ops::arange(0.0, 64.0, 1.0, Dtype::Float32).unwrap(),
    &[1, 64],
  )
  .unwrap();
  let q = ops::quantize(&w, Some(64), Some(8), "affine", None).unwrap();
  assert_eq!(q.len(), 3, "affine quantize returns (w_q, scales, biases)");
  let back = ops::dequantize(
    &q[0],
    &q[1],
    Some(&q[2]),
    Some(64),
    Some(8),
    "affine",
    None,
    None,
  )
  .unwrap();
  let got = vals(back);
  for (i, g) in got.iter().enumerate() {
    assert!((g - i as f32).abs() <= 0.13, "index {i}: {g}");
  }
}

// ------------------------------------------------------------------ fft

/// `rfft([1, 2, 3, 4])`: X0 = 10, X1 = (1 - 3) + i(4 - 2) = -2 + 2i,
/// X2 = 1 - 2 + 3 - 4 = -2. `fftfreq(4, 1)` is `[0, 0.25, -0.5, -0.25]`.
#[test]
fn fft_rfft_and_fftfreq() {
  let x = f32s(&[1.0, 2.0, 3.0, 4.0], &[4]);
  let mut y = fft::rfft(&x, 4, -1, fft::FftNorm::Backward).unwrap();
  assert_eq!(y.dtype(), Dtype::Complex64);
  let got = y.to_vec::<Complex32>().unwrap();
  let want = [
    Complex32::new(10.0, 0.0),
    Complex32::new(-2.0, 2.0),
    Complex32::new(-2.0, 0.0),
  ];
  for (g, w) in got.iter().zip(&want) {
    assert!((g - w).norm() < 1e-4, "got {got:?}");
  }
  // Ortho scales by 1/sqrt(4) = 1/2: X0 = 5.
  let mut o = fft::rfft(&x, 4, -1, fft::FftNorm::Ortho).unwrap();
  assert!((o.to_vec::<Complex32>().unwrap()[0].re - 5.0).abs() < 1e-5);
  assert_close(
    &vals(fft::fftfreq(4, 1.0).unwrap()),
    &[0.0, 0.25, -0.5, -0.25],
  );
}

// ------------------------------------------------------------------ linalg

/// On the CPU (MLX's linalg is CPU-only): `inv(diag(2, 4)) = diag(0.5,
/// 0.25)`; the 2-norm of `[3, 4]` is 5; `eigh([[2, 1], [1, 2]])` has
/// eigenvalues 1 and 3 (ascending); `qr` of the identity is `(I, I)` up to
/// signs.
#[test]
fn linalg_on_cpu() {
  with_device(Device::CPU, || {
    let a = f32s(&[2.0, 0.0, 0.0, 4.0], &[2, 2]);
    assert_close(&vals(linalg::inv(&a).unwrap()), &[0.5, 0.0, 0.0, 0.25]);
    let v = f32s(&[3.0, 4.0], &[2]);
    assert_close(&vals(linalg::norm_l2(&v, None, false).unwrap()), &[5.0]);
    assert_close(
      &vals(linalg::norm(&v, 1.0, Some(&[0]), false).unwrap()),
      &[7.0],
    );
    let s = f32s(&[2.0, 1.0, 1.0, 2.0], &[2, 2]);
    let (w, _v) = linalg::eigh(&s, "L").unwrap();
    assert_close(&vals(w), &[1.0, 3.0]);
    let (q, r) = linalg::qr(&Array::eye(2, Dtype::Float32).unwrap()).unwrap();
    let abs = |a: Array| vals(ops::abs(&a).unwrap());
    assert_close(&abs(q), &[1.0, 0.0, 0.0, 1.0]);
    assert_close(&abs(r), &[1.0, 0.0, 0.0, 1.0]);
  })
  .unwrap();
}

// ------------------------------------------------------------------ random

/// A key is two uint32 words; sampling with the same key is deterministic,
/// split keys differ, and uniform samples lie in `[low, high)`.
#[test]
fn random_with_key() {
  let mut k = random::key(42).unwrap();
  assert_eq!((k.shape(), k.dtype()), (vec![2], Dtype::Uint32));
  k.eval().unwrap();
  let lo = Array::scalar(2.0f32);
  let hi = Array::scalar(3.0f32);
  let a = vals(random::uniform(&lo, &hi, &[100], Dtype::Float32, Some(&k)).unwrap());
  let b = vals(random::uniform(&lo, &hi, &[100], Dtype::Float32, Some(&k)).unwrap());
  assert_eq!(a, b, "same key, same samples");
  assert!(a.iter().all(|x| (2.0..3.0).contains(x)), "{a:?}");
  let (mut k1, mut k2) = random::split(&k).unwrap();
  assert_ne!(k1.to_vec::<u32>().unwrap(), k2.to_vec::<u32>().unwrap());
  let n = random::normal(&[2, 3], Dtype::Float32, 0.0, 1.0, Some(&k1)).unwrap();
  assert_eq!(n.shape(), [2, 3]);
  let mut i = random::randint(
    &Array::scalar(0i32),
    &Array::scalar(5i32),
    &[50],
    Dtype::Int32,
    Some(&k2),
  )
  .unwrap();
  assert!(
    i.to_vec::<i32>()
      .unwrap()
      .iter()
      .all(|x| (0..5).contains(x))
  );
}

// ------------------------------------------------------------------ fast

/// `rms_norm([3, 4], weight absent, eps 0)`: mean square `(9 + 16) / 2 =
/// 12.5`, so `[3, 4] / sqrt(12.5) = [0.8485281, 1.1313708]`.
#[test]
fn fast_rms_norm() {
  let x = f32s(&[3.0, 4.0], &[1, 2]);
  let y = fast::rms_norm(&x, None, 0.0).unwrap();
  assert_close(&vals(y), &[0.848_528_1, 1.131_370_8]);
}

// ------------------------------------------------------------------ ergonomics

/// `(a + b) * 2 - a / 2` with `a = [2, 4]`, `b = [1, 1]`:
/// `[6, 10] - [1, 2] = [5, 8]`; `-a = [-2, -4]`; `1 - a = [-1, -3]`.
#[test]
fn operators() {
  let a = f32s(&[2.0, 4.0], &[2]);
  let b = Array::ones(&[2], Dtype::Float32).unwrap();
  let lhs = ((&a + &b).unwrap() * 2.0).unwrap();
  let rhs = (&a / 2.0).unwrap();
  assert_eq!(vals((&lhs - &rhs).unwrap()), [5.0, 8.0]);
  assert_eq!(vals((-&a).unwrap()), [-2.0, -4.0]);
  assert_eq!(vals((1.0 - &a).unwrap()), [-1.0, -3.0]);
  // A float scalar keeps a bf16 array's dtype (python's weak scalars).
  let h = Array::full(&[2], 1.5, Dtype::Bfloat16).unwrap();
  assert_eq!((&h * 2.0).unwrap().dtype(), Dtype::Bfloat16);
  // ...and promotes an int array to float32.
  assert_eq!((&i32s(&[1], &[1]) + 0.5).unwrap().dtype(), Dtype::Float32);
}

/// `[[1, 2], [3, 4]] @ eye(2)` is itself; `mean` over axis 0 is `[2, 3]`;
/// `sqrt(exp(0)) = 1`; `arange(0, 1, 0.25)` has 4 elements.
#[test]
fn methods_and_constructors() {
  let a = f32s(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
  let i = Array::eye(2, Dtype::Float32).unwrap();
  assert_eq!(vals(a.matmul(&i).unwrap()), [1.0, 2.0, 3.0, 4.0]);
  assert_eq!(vals(a.mean_axes(&[0], false).unwrap()), [2.0, 3.0]);
  assert_eq!(vals(a.sum_axes(&[0, 1], false).unwrap()), [10.0]);
  assert_eq!(a.reshape(&[4]).unwrap().shape(), [4]);
  assert_eq!(a.expand_dims(0).unwrap().squeeze().unwrap().shape(), [2, 2]);
  assert_eq!(vals(a.swapaxes(0, 1).unwrap()), [1.0, 3.0, 2.0, 4.0]);
  assert_eq!(
    vals(a.transpose_axes(&[1, 0]).unwrap()),
    [1.0, 3.0, 2.0, 4.0]
  );
  let z = Array::zeros(&[2], Dtype::Float32).unwrap();
  assert_eq!(vals(z.exp().unwrap().sqrt().unwrap()), [1.0, 1.0]);
  assert_eq!(
    Array::arange(0.0, 1.0, 0.25, Dtype::Float32)
      .unwrap()
      .size(),
    4
  );
  let mut m = a.argmax(1, false).unwrap();
  assert_eq!(m.to_vec::<u32>().unwrap(), [1, 1]);
  assert_close(
    &vals(a.softmax(0).unwrap().sum_axes(&[0], false).unwrap()),
    &[1.0, 1.0],
  );
  assert_eq!(a.astype(Dtype::Int32).unwrap().dtype(), Dtype::Int32);
}

// ------------------------------------------------------------------ errors

fn is_mlx_err<T: std::fmt::Debug>(r: mlxrs_core::Result<T>) -> String {
  match r {
    Err(Error::Mlx(msg)) => msg,
    other => panic!("expected an MLX error, got {other:?}"),
  }
}

/// Shapes `[3]` and `[2]` do not broadcast.
#[test]
fn shape_mismatch_is_err() {
  let a = f32s(&[1.0, 2.0, 3.0], &[3]);
  let b = f32s(&[1.0, 2.0], &[2]);
  let msg = is_mlx_err(ops::add(&a, &b));
  assert!(msg.contains("broadcast"), "{msg}");
  assert!((&a + &b).is_err());
  is_mlx_err(ops::matmul(&a, &b));
  is_mlx_err(ops::reshape(&a, &[2, 2]));
}

/// Axis 5 of a 2-d array.
#[test]
fn bad_axis_is_err() {
  let a = f32s(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
  is_mlx_err(ops::sum_axis(&a, 5, false));
  is_mlx_err(ops::transpose_axes(&a, &[0, 0]));
  is_mlx_err(ops::split(&a, 3, 0));
}

/// Bitwise ops need integers; `linalg::inv` needs floats.
#[test]
fn wrong_dtype_is_err() {
  let a = f32s(&[1.0, 2.0], &[2]);
  is_mlx_err(ops::bitwise_and(&a, &a));
  with_device(Device::CPU, || {
    let i = i32s(&[1, 0, 0, 1], &[2, 2]);
    is_mlx_err(linalg::inv(&i));
  })
  .unwrap();
}

/// Unknown string options are MLX errors; an interior NUL is caught before
/// MLX.
#[test]
fn bad_strings_are_err() {
  let s = f32s(&[1.0, 2.0], &[2]);
  is_mlx_err(ops::searchsorted(&s, &s, "middle"));
  let q = ops::quantize(
    &f32s(&[0.0; 64], &[1, 64]),
    Some(64),
    Some(4),
    "bogus",
    None,
  );
  is_mlx_err(q);
  match ops::searchsorted(&s, &s, "le\0ft") {
    Err(Error::InvalidArgument(_)) => {}
    other => panic!("expected InvalidArgument, got {other:?}"),
  }
}
