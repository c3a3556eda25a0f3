//! `fast::add_rms_norm` gives exactly `h = x + delta; y = fast::rms_norm(h)`
//! on the default device: MLX's two ops on a CPU (and Metal), one custom
//! kernel on a CUDA device that must match MLX's kernels bit for bit
//! (widths of every launch shape MLX's `rms_norm` picks, ragged ones, one
//! and several rows, bf16 / f16 / f32); above MLX's small-row width and
//! under a transformation the ops are MLX's own.

use mlxrs_core::transforms::{Closure, value_and_grad};
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

fn identical(a: &Array, b: &Array) -> bool {
  assert_eq!(a.shape(), b.shape());
  assert_eq!(a.dtype(), b.dtype());
  let mut eq = ops::array_equal(a, b, false).unwrap();
  eq.item::<bool>().unwrap()
}

#[test]
fn equals_add_then_rms_norm_bit_for_bit() {
  let cuda = cuda_default();
  let mut fused_seen = 0;
  for (dtype, max_fused) in [
    (Dtype::Bfloat16, 8192),
    (Dtype::Float16, 8192),
    (Dtype::Float32, 4096),
  ] {
    for width in [
      64, 100, 512, 576, 896, 1000, 1024, 1536, 2048, 3072, 4096, 5120, 8192, 9000,
    ] {
      for rows in [1, 3, 8] {
        let seed = (width * 7 + rows) as u64;
        let x = normal(&[rows, width], 2.0, seed, dtype);
        let d = normal(&[rows, width], 0.5, seed + 1, dtype);
        let w = normal(&[width], 1.0, seed + 2, dtype);
        let eps = 1e-5;
        let (h, y) = fast::add_rms_norm(&x, &d, &w, eps).unwrap();
        let rh = ops::add(&x, &d).unwrap();
        let ry = fast::rms_norm(&rh, Some(&w), eps).unwrap();
        mlxrs_core::eval(&[h.clone(), y.clone(), rh.clone(), ry.clone()]).unwrap();
        let tag = format!("{dtype:?} width {width} rows {rows}");
        assert!(identical(&h, &rh), "h differs: {tag}");
        assert!(identical(&y, &ry), "y differs: {tag}");
        let fused = fast::add_rms_norm_is_fused(&x, &d, &w, eps).unwrap();
        assert_eq!(fused, cuda && width <= max_fused, "fused? {tag}");
        fused_seen += fused as usize;
      }
    }
  }
  // On a CUDA device the comparisons above covered the kernel.
  assert_eq!(fused_seen > 0, cuda);
}

/// Leading axes, a strided (transposed) input, mismatched dtypes and
/// broadcasting shapes: the same values as the two ops (the kernel takes
/// the first two, the ops the rest).
#[test]
fn other_layouts_match_the_two_ops() {
  let x = normal(&[2, 3, 256], 1.0, 1, Dtype::Bfloat16);
  let d = normal(&[2, 3, 256], 1.0, 2, Dtype::Bfloat16);
  let w = normal(&[256], 1.0, 3, Dtype::Bfloat16);
  let xt = ops::transpose_axes(&normal(&[256, 4], 1.0, 4, Dtype::Bfloat16), &[1, 0]).unwrap();
  let dt = normal(&[4, 256], 1.0, 5, Dtype::Bfloat16);
  let w32 = normal(&[256], 1.0, 6, Dtype::Float32);
  let row = normal(&[256], 1.0, 7, Dtype::Bfloat16);
  for (x, d, w) in [
    (&x, &d, &w),
    (&xt, &dt, &w),
    (&dt, &dt, &w32),
    (&x, &row, &w),
  ] {
    let (h, y) = fast::add_rms_norm(x, d, w, 1e-6).unwrap();
    let rh = ops::add(x, d).unwrap();
    let ry = fast::rms_norm(&rh, Some(w), 1e-6).unwrap();
    assert!(identical(&h, &rh), "h {:?} + {:?}", x.shape(), d.shape());
    assert!(identical(&y, &ry), "y {:?} + {:?}", x.shape(), d.shape());
  }
}

/// Under a gradient the two ops run (the kernel has no derivative), so the
/// gradients are the two ops' gradients.
#[test]
fn gradients_are_those_of_the_two_ops() {
  let x = normal(&[3, 128], 1.0, 11, Dtype::Float32);
  let d = normal(&[3, 128], 1.0, 12, Dtype::Float32);
  let w = normal(&[128], 1.0, 13, Dtype::Float32);
  let grads = |fused: bool| {
    let w = w.clone();
    let f = Closure::new(move |a: &[Array]| {
      let (h, y) = if fused {
        fast::add_rms_norm(&a[0], &a[1], &w, 1e-5)?
      } else {
        let h = ops::add(&a[0], &a[1])?;
        let y = fast::rms_norm(&h, Some(&w), 1e-5)?;
        (h, y)
      };
      let s = ops::add(&ops::sum(&ops::square(&y)?, false)?, &ops::sum(&h, false)?)?;
      Ok(vec![s])
    })
    .unwrap();
    let vg = value_and_grad(&f, &[0, 1]).unwrap();
    let (_, g) = vg.call(&[x.clone(), d.clone()]).unwrap();
    g
  };
  let (a, b) = (grads(true), grads(false));
  for (ga, gb) in a.iter().zip(&b) {
    assert!(identical(ga, gb));
  }
}

/// Shapes that do not fit are errors, not crashes.
#[test]
fn bad_shapes_are_errors() {
  let x = normal(&[2, 64], 1.0, 21, Dtype::Float32);
  let d = normal(&[2, 32], 1.0, 22, Dtype::Float32);
  let w = normal(&[64], 1.0, 23, Dtype::Float32);
  assert!(fast::add_rms_norm(&x, &d, &w, 1e-5).is_err());
  let w2 = normal(&[32], 1.0, 24, Dtype::Float32);
  let d2 = normal(&[2, 64], 1.0, 25, Dtype::Float32);
  let r = fast::add_rms_norm(&x, &d2, &w2, 1e-5).and_then(|(h, y)| mlxrs_core::eval(&[h, y]));
  assert!(r.is_err());
}
