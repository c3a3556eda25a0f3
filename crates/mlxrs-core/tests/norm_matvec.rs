//! `fast::norm_matvec` gives exactly MLX's ops (`h = x + delta; n =
//! rms_norm(h, w, eps); y = n @ W.T` or `quantized_matmul`, then with
//! `swiglu` `silu(gate) * up`) where it runs, the fused kernel of a CUDA
//! device, bit for bit: dense and affine 4- / 8-bit weights, groups of 32,
//! 64 and 128, bf16 / f16 / f32, widths of every norm launch MLX picks in
//! the decoder shapes that matter (Qwen3-0.6B 1024, Llama-3.2-1B 2048, 3072,
//! 4096). Everywhere else it declines (`None`), and that is checked too.

use mlxrs_core::{Array, Device, DeviceType, Dtype, fast, ops, random};

fn normal(shape: &[i32], scale: f32, seed: u64, dtype: Dtype) -> Array {
  let a = random::normal(
    shape,
    Dtype::Float32,
    0.0,
    scale,
    Some(&random::key(seed).unwrap()),
  )
  .unwrap();
  let a = a.astype(dtype).unwrap();
  mlxrs_core::eval(std::slice::from_ref(&a)).unwrap();
  a
}

/// Whether the default device runs the fused kernel (a CUDA GPU: MLX's GPU
/// on Linux is CUDA).
fn cuda_default() -> bool {
  !cfg!(target_os = "macos") && Device::default_device().is_ok_and(|d| d.kind == DeviceType::Gpu)
}

/// Whether the kernels run here: on a CUDA device unless
/// `MLXRS_FUSE_NORM_MATVEC=0`.
fn kernels_on() -> bool {
  cuda_default() && std::env::var("MLXRS_FUSE_NORM_MATVEC").as_deref() != Ok("0")
}

fn identical(a: &Array, b: &Array) -> bool {
  assert_eq!(a.shape(), b.shape());
  assert_eq!(a.dtype(), b.dtype());
  let mut eq = ops::array_equal(a, b, false).unwrap();
  eq.item::<bool>().unwrap()
}

/// How many elements differ, and the largest difference (for the message).
fn diff(a: &Array, b: &Array) -> String {
  let a32 = a.astype(Dtype::Float32).unwrap();
  let b32 = b.astype(Dtype::Float32).unwrap();
  let ne = ops::not_equal(&a32, &b32).unwrap();
  let mut n = ops::sum(&ne.astype(Dtype::Int32).unwrap(), false).unwrap();
  let mut m = ops::max(
    &ops::abs(&ops::subtract(&a32, &b32).unwrap()).unwrap(),
    false,
  )
  .unwrap();
  format!(
    "{} of {} differ, max |diff| {}",
    n.item::<i32>().unwrap(),
    a.size(),
    m.item::<f32>().unwrap()
  )
}

/// MLX's ops for the same computation (what a model runs unfused).
fn reference(
  x: &Array,
  delta: Option<&Array>,
  nw: &Array,
  eps: f32,
  proj: fast::Projection<'_>,
  swiglu: bool,
) -> (Array, Array) {
  let h = match delta {
    Some(d) => ops::add(x, d).unwrap(),
    None => x.clone(),
  };
  let n = fast::rms_norm(&h, Some(nw), eps).unwrap();
  let y = match proj {
    fast::Projection::Dense(w) => ops::matmul(&n, &ops::transpose(w).unwrap()).unwrap(),
    fast::Projection::Affine {
      weight,
      scales,
      biases,
      bits,
      group_size,
    } => ops::quantized_matmul(
      &n,
      weight,
      scales,
      Some(biases),
      true,
      Some(group_size),
      Some(bits),
      "affine",
    )
    .unwrap(),
  };
  let y = if swiglu {
    let half = y.shape().last().copied().unwrap() / 2;
    let parts = ops::split_sections(&y, &[half], -1).unwrap();
    let (g, u) = (&parts[0], &parts[1]);
    ops::multiply(&ops::multiply(g, &ops::sigmoid(g).unwrap()).unwrap(), u).unwrap()
  } else {
    y
  };
  (h, y)
}

struct Case {
  dtype: Dtype,
  k: i32,
  n: i32,
  bits: i32,
  group: i32,
}

impl Case {
  fn new(dtype: Dtype, k: i32, n: i32, bits: i32, group: i32) -> Case {
    Case {
      dtype,
      k,
      n,
      bits,
      group,
    }
  }
}

fn check(c: &Case, seed: u64) -> usize {
  let mut fused = 0;
  let w = normal(&[c.n, c.k], 0.05, seed, c.dtype);
  let quant = (c.bits > 0).then(|| {
    let q = ops::quantize(&w, Some(c.group), Some(c.bits), "affine", None).unwrap();
    mlxrs_core::eval(&q).unwrap();
    q
  });
  let proj = match &quant {
    None => fast::Projection::Dense(&w),
    Some(q) => fast::Projection::Affine {
      weight: &q[0],
      scales: &q[1],
      biases: &q[2],
      bits: c.bits,
      group_size: c.group,
    },
  };
  let nw = normal(&[c.k], 1.0, seed + 1, c.dtype);
  for rows in [1, 2] {
    let x = normal(&[rows, c.k], 2.0, seed + 2, c.dtype);
    let d = normal(&[rows, c.k], 1.0, seed + 3, c.dtype);
    for (delta, swiglu) in [(None, false), (Some(&d), false), (Some(&d), true)] {
      let tag = format!(
        "{:?} k {} n {} bits {} group {} rows {rows} resid {} swiglu {swiglu}",
        c.dtype,
        c.k,
        c.n,
        c.bits,
        c.group,
        delta.is_some()
      );
      let out = fast::norm_matvec(&x, delta, &nw, 1e-5, proj, swiglu).unwrap();
      // The kernel takes one row on a CUDA device, and declines otherwise.
      assert_eq!(out.is_some(), kernels_on() && rows == 1, "fused? {tag}");
      if let Some((h, y)) = out {
        let (rh, ry) = reference(&x, delta, &nw, 1e-5, proj, swiglu);
        mlxrs_core::eval(&[h.clone(), y.clone(), rh.clone(), ry.clone()]).unwrap();
        assert!(identical(&h, &rh), "h differs: {tag}");
        assert!(identical(&y, &ry), "y differs: {tag}: {}", diff(&y, &ry));
        fused += 1;
      }
    }
  }
  fused
}

/// The cases: where the kernel runs, a few per kind (each shape is a
/// kernel of its own, compiled at run time: ~2 s each); elsewhere, where
/// the call only declines, the first, to keep the CPU suite short.
fn cases(all: Vec<Case>) -> Vec<Case> {
  if cuda_default() {
    all
  } else {
    all.into_iter().take(1).collect()
  }
}

#[test]
fn dense_equals_mlx_ops_bit_for_bit() {
  let mut fused = 0;
  for c in cases(vec![
    Case::new(Dtype::Bfloat16, 2048, 3072, 0, 0),
    Case::new(Dtype::Bfloat16, 1024, 4096, 0, 0),
    Case::new(Dtype::Bfloat16, 4096, 96, 0, 0),
    Case::new(Dtype::Float16, 2048, 3072, 0, 0),
    Case::new(Dtype::Float32, 2048, 3072, 0, 0),
    Case::new(Dtype::Float32, 1536, 512, 0, 0),
  ]) {
    fused += check(&c, (c.k + c.n) as u64);
  }
  assert_eq!(fused > 0, kernels_on());
}

#[test]
fn affine_equals_quantized_matmul_bit_for_bit() {
  let mut fused = 0;
  for c in cases(vec![
    Case::new(Dtype::Bfloat16, 1024, 4096, 4, 64),
    Case::new(Dtype::Bfloat16, 2048, 3072, 4, 32),
    Case::new(Dtype::Bfloat16, 64, 96, 4, 64),
    Case::new(Dtype::Bfloat16, 1024, 4096, 8, 64),
    Case::new(Dtype::Float16, 2048, 3072, 4, 64),
    Case::new(Dtype::Float32, 1024, 4096, 4, 128),
    Case::new(Dtype::Float32, 96, 64, 8, 32),
  ]) {
    fused += check(&c, (c.k * c.bits + c.n + c.group) as u64);
  }
  assert_eq!(fused > 0, kernels_on());
}

/// Layouts and shapes the kernel does not take are declined (the caller
/// runs MLX's ops), not errors or crashes: a transposed weight (evaluated,
/// or not yet: its layout is unknown then), a bias-like mismatch of dtypes,
/// a width the norm weight does not have, 3-bit weights, more rows than
/// MLX's one-row kernels.
#[test]
fn other_inputs_decline() {
  let x = normal(&[1, 256], 1.0, 1, Dtype::Bfloat16);
  let nw = normal(&[256], 1.0, 2, Dtype::Bfloat16);
  let w = normal(&[128, 256], 1.0, 3, Dtype::Bfloat16);
  let wt_lazy = ops::transpose(&normal(&[256, 128], 1.0, 4, Dtype::Bfloat16)).unwrap();
  let wt = ops::transpose(&normal(&[256, 128], 1.0, 4, Dtype::Bfloat16)).unwrap();
  mlxrs_core::eval(std::slice::from_ref(&wt)).unwrap();
  let w32 = normal(&[128, 256], 1.0, 5, Dtype::Float32);
  let nw_short = normal(&[128], 1.0, 6, Dtype::Bfloat16);
  for (nw, w) in [(&nw, &wt_lazy), (&nw, &wt), (&nw, &w32), (&nw_short, &w)] {
    let out = fast::norm_matvec(&x, None, nw, 1e-5, fast::Projection::Dense(w), false).unwrap();
    assert!(out.is_none(), "{:?} / {:?}", nw.shape(), w.shape());
  }
  let q = ops::quantize(&w, Some(64), Some(3), "affine", None).unwrap();
  let proj = fast::Projection::Affine {
    weight: &q[0],
    scales: &q[1],
    biases: &q[2],
    bits: 3,
    group_size: 64,
  };
  assert!(
    fast::norm_matvec(&x, None, &nw, 1e-5, proj, false)
      .unwrap()
      .is_none()
  );
  let rows = normal(&[4, 256], 1.0, 7, Dtype::Bfloat16);
  let out = fast::norm_matvec(&rows, None, &nw, 1e-5, fast::Projection::Dense(&w), false).unwrap();
  assert!(out.is_none());
}

/// An activation row that is a strided view when the kernel runs (here a
/// column of a matrix, as a lazy slice): MLX copies it to a row first, and
/// the kernel gives MLX's values.
#[test]
fn strided_activation_equals_mlx_ops() {
  let cols = normal(&[2048, 2], 2.0, 11, Dtype::Bfloat16);
  let x = ops::reshape(
    &ops::slice(&cols, &[0, 1], &[2048, 2], &[1, 1]).unwrap(),
    &[1, 2048],
  )
  .unwrap();
  let nw = normal(&[2048], 1.0, 12, Dtype::Bfloat16);
  let w = normal(&[512, 2048], 0.05, 13, Dtype::Bfloat16);
  let proj = fast::Projection::Dense(&w);
  let out = fast::norm_matvec(&x, None, &nw, 1e-5, proj, false).unwrap();
  assert_eq!(out.is_some(), kernels_on());
  if let Some((_, y)) = out {
    let (_, ry) = reference(&x, None, &nw, 1e-5, proj, false);
    assert!(identical(&y, &ry), "y differs: {}", diff(&y, &ry));
  }
}

/// A dense weight whose data starts two elements into its buffer (a view):
/// MLX's `gemv` then reads two columns per lane instead of four, and so
/// does the kernel, to the same values.
#[test]
fn offset_weight_equals_mlx_ops() {
  let (k, n) = (2048, 512);
  let flat = normal(&[n * k + 2], 0.05, 41, Dtype::Bfloat16);
  let tail = ops::slice(&flat, &[2], &[n * k + 2], &[1]).unwrap();
  let w = ops::reshape(&tail, &[n, k]).unwrap();
  mlxrs_core::eval(std::slice::from_ref(&w)).unwrap();
  let nw = normal(&[k], 1.0, 42, Dtype::Bfloat16);
  let x = normal(&[1, k], 2.0, 43, Dtype::Bfloat16);
  let d = normal(&[1, k], 1.0, 44, Dtype::Bfloat16);
  let proj = fast::Projection::Dense(&w);
  let out = fast::norm_matvec(&x, Some(&d), &nw, 1e-5, proj, false).unwrap();
  assert_eq!(out.is_some(), kernels_on());
  if let Some((h, y)) = out {
    let (rh, ry) = reference(&x, Some(&d), &nw, 1e-5, proj, false);
    mlxrs_core::eval(&[h.clone(), y.clone(), rh.clone(), ry.clone()]).unwrap();
    assert!(identical(&h, &rh), "h differs");
    assert!(identical(&y, &ry), "y differs: {}", diff(&y, &ry));
  }
}
