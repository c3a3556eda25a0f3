//! A residual add and the RMSNorm after it in one kernel (no Python twin:
//! mlx-lm writes `h = x + r; y = mx.fast.rms_norm(h, w, eps)`).
//!
//! A decoder block adds each branch's output to the residual stream and
//! normalizes the sum for the next branch: two kernels, whose cost in a
//! one-token decode step is almost all launch and encode overhead. On a
//! CUDA GPU, [`add_rms_norm`] runs both as one custom kernel (MLX's
//! `fast::cuda_kernel`) that computes exactly what MLX's own kernels do:
//! the add with the dtype's `+`, then MLX's `rms_norm_small` / `rms_norm`
//! arithmetic (the same block size per row width, the same per-thread
//! order of the sum of squares, the same warp and block reductions), so
//! both outputs are bit-identical to the two-op path.
//!
//! The fused kernel is used only for a (dtype, width, eps) that
//! [`prepare_add_rms_norm`] compiled and checked bit for bit against the
//! two ops on the device; everywhere else (CPU, Metal, other shapes,
//! traced arrays under `grad` / `compile`, `MLXRS_FUSED_NORM=0`)
//! [`add_rms_norm`] is the two ops.

use std::sync::{Mutex, OnceLock};

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::fast::kernel::{CustomKernel, KernelBuilder, KernelCall};
use crate::ops;

/// `#include`s the kernel body needs beyond MLX's default header.
const HEADER: &str = "#include <cooperative_groups/reduce.h>\n";

/// The kernel body. MLX writes the signature `(const T* x, const T* r,
/// const T* w, T* h, T* y)` and the template constants: `T`, the row width
/// `D`, threads per row `BLOCK`, vector chunks per thread `CHUNKS`,
/// elements per vector `NR` and the bits of `eps` (`EPS`). One block per
/// row; thread `t` owns elements `(BLOCK * i + t) * NR + j` as MLX's
/// `rms_norm_small` does, so the sum of squares adds in MLX's order.
const SOURCE: &str = r#"
  auto block = cg::this_thread_block();
  auto warp = cg::tiled_partition<32>(block);
  __shared__ float partial[BLOCK / 32];
  size_t row = blockIdx.x;
  x += row * D; r += row * D; h += row * D; y += row * D;
  T v[CHUNKS * NR];
  float sum = 0;
#pragma unroll
  for (int i = 0; i < CHUNKS; i++) {
#pragma unroll
    for (int j = 0; j < NR; j++) {
      int k = (BLOCK * i + (int)threadIdx.x) * NR + j;
      T a = T(0);
      if (k < D) { a = x[k] + r[k]; h[k] = a; }
      v[i * NR + j] = a;
      float t = static_cast<float>(a);
      sum += t * t;
    }
  }
  sum = cg::reduce(warp, sum, cg::plus<float>());
  if (BLOCK > 32) {
    if (warp.thread_rank() == 0) { partial[warp.meta_group_rank()] = sum; }
    block.sync();
    sum = warp.thread_rank() < warp.meta_group_size() ? partial[warp.thread_rank()] : 0.0f;
    sum = cg::reduce(warp, sum, cg::plus<float>());
  }
  float n = rsqrt(sum / D + __int_as_float(EPS));
#pragma unroll
  for (int i = 0; i < CHUNKS; i++) {
#pragma unroll
    for (int j = 0; j < NR; j++) {
      int k = (BLOCK * i + (int)threadIdx.x) * NR + j;
      if (k < D) {
        float z = static_cast<float>(v[i * NR + j]) * n;
        y[k] = w[k] * static_cast<T>(z);
      }
    }
  }
"#;

/// The (dtype, width, eps bits) that [`prepare_add_rms_norm`] checked.
type Key = (Dtype, i32, u32);

struct Fused {
  /// `None` when the kernel cannot be made (no CUDA back-end).
  kernel: Option<Mutex<CustomKernel>>,
  /// Checked keys and the outcome: `Ok` where the fused kernel matched
  /// the two ops, else why it is not used.
  checked: Mutex<Vec<(Key, std::result::Result<(), String>)>>,
}

fn fused() -> &'static Fused {
  static FUSED: OnceLock<Fused> = OnceLock::new();
  FUSED.get_or_init(|| {
    let off = std::env::var_os("MLXRS_FUSED_NORM").is_some_and(|v| v == "0");
    let kernel = if off {
      None
    } else {
      KernelBuilder::cuda("mlxrs_add_rms_norm", &["x", "r", "w"], &["h", "y"], SOURCE)
        .header(HEADER)
        .build()
        .ok()
        .map(Mutex::new)
    };
    Fused {
      kernel,
      checked: Mutex::new(Vec::new()),
    }
  })
}

/// MLX's launch shape for an RMSNorm row of `d` elements of `dtype`
/// (`dispatch_num_chunks` / the 1024-thread kernel in
/// mlx/backend/cuda/rms_norm.cu): (threads per row, chunks per thread,
/// elements per vector); `None` past what one block keeps in registers.
fn launch_shape(dtype: Dtype, d: i32) -> Option<(i32, i32, i32)> {
  let nr = 16 / dtype.size() as i32;
  let nvec = (d + nr - 1) / nr;
  let (block, chunks) = if d <= nr * 64 {
    (64, 1)
  } else if d <= nr * 128 * 8 {
    if nvec % 128 == 0 && nvec / 128 <= 8 {
      (128, nvec / 128)
    } else if nvec % 64 == 0 && nvec / 64 <= 8 {
      (64, nvec / 64)
    } else {
      (128, (nvec + 127) / 128)
    }
  } else {
    (1024, (nvec + 1023) / 1024)
  };
  (chunks <= 8).then_some((block, chunks, nr))
}

fn key(dtype: Dtype, d: i32, eps: f32) -> Key {
  (dtype, d, eps.to_bits())
}

fn is_checked(k: Key) -> bool {
  fused()
    .checked
    .lock()
    .map(|c| c.iter().any(|(ck, ok)| *ck == k && ok.is_ok()))
    .unwrap_or(false)
}

/// The fused kernel on `x`, `r`, `weight` (same dtype, rows of `d`).
fn run_fused(x: &Array, r: &Array, weight: &Array, eps: f32) -> Result<(Array, Array)> {
  let f = fused();
  let kernel = f
    .kernel
    .as_ref()
    .ok_or_else(|| Error::InvalidArgument("add_rms_norm: no CUDA back-end".into()))?;
  let dtype = x.dtype();
  let shape = x.shape();
  let d = *shape.last().unwrap_or(&0);
  let (block, chunks, nr) = launch_shape(dtype, d).ok_or_else(|| {
    Error::InvalidArgument(format!("add_rms_norm: rows of {d} are too wide to fuse"))
  })?;
  let rows = (x.size() / d.max(1) as usize) as i32;
  let call = KernelCall::new((rows * block, 1, 1), (block, 1, 1))
    .output(&shape, dtype)
    .output(&shape, dtype)
    .template_dtype("T", dtype)
    .template_int("D", d)
    .template_int("BLOCK", block)
    .template_int("CHUNKS", chunks)
    .template_int("NR", nr)
    .template_int("EPS", eps.to_bits() as i32);
  let k = kernel
    .lock()
    .map_err(|_| Error::InvalidArgument("add_rms_norm: kernel lock poisoned".into()))?;
  let mut out = k.apply(&[x.clone(), r.clone(), weight.clone()], &call)?;
  let y = out.pop();
  let h = out.pop();
  match (h, y) {
    (Some(h), Some(y)) => Ok((h, y)),
    _ => Err(Error::InvalidArgument(
      "add_rms_norm: the kernel returned fewer than two outputs".into(),
    )),
  }
}

/// The two-op path: `h = x + r`, `y = rms_norm(h, weight, eps)`.
fn unfused(x: &Array, r: &Array, weight: &Array, eps: f32) -> Result<(Array, Array)> {
  let h = ops::add(x, r)?;
  let y = crate::fast::rms_norm(&h, Some(weight), eps)?;
  Ok((h, y))
}

/// `h = x + r` and `y = rms_norm(h, weight, eps)` (python: `h = x + r;
/// y = mx.fast.rms_norm(h, weight, eps)`), returned as `(h, y)`.
///
/// One kernel on a CUDA GPU for a (dtype, width, eps) checked by
/// [`prepare_add_rms_norm`], when `x`, `r` and `weight` share that dtype,
/// `x` and `r` their shape `[.., width]`, `weight` is `[width]` and no
/// transform traces them; otherwise the two ops. Either way the values
/// are the same, bit for bit.
pub fn add_rms_norm(x: &Array, r: &Array, weight: &Array, eps: f32) -> Result<(Array, Array)> {
  let dtype = x.dtype();
  let shape = x.shape();
  let d = shape.last().copied().unwrap_or(0);
  let fusable = d > 0
    && r.shape() == shape
    && r.dtype() == dtype
    && weight.dtype() == dtype
    && weight.shape() == [d]
    && !x.is_tracer()
    && !r.is_tracer()
    && !weight.is_tracer()
    && is_checked(key(dtype, d, eps))
    && crate::stream::ops_run_on_gpu();
  if fusable {
    run_fused(x, r, weight, eps)
  } else {
    unfused(x, r, weight, eps)
  }
}

/// Make [`add_rms_norm`] use one kernel for rows of `width` elements of
/// `dtype` and this `eps` on this thread's GPU: compiles the kernel and
/// checks it bit for bit against the two ops on random rows. Returns
/// whether the fused kernel is now in use for them; `false` (and the two
/// ops stay in use) without a CUDA GPU as the current device, for a dtype
/// other than float32 / float16 / bfloat16, a width too large to fuse, a
/// kernel that fails to compile or differs from the two ops, or with
/// `MLXRS_FUSED_NORM=0`. Evaluates arrays: call it outside any transform,
/// e.g. when a model is loaded. The outcome is remembered per process.
pub fn prepare_add_rms_norm(dtype: Dtype, width: i32, eps: f32) -> bool {
  let k = key(dtype, width, eps);
  let f = fused();
  if f.kernel.is_none()
    || !matches!(dtype, Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16)
    || width <= 0
    || launch_shape(dtype, width).is_none()
    || !crate::stream::ops_run_on_gpu()
  {
    return false;
  }
  if let Ok(c) = f.checked.lock()
    && let Some((_, ok)) = c.iter().find(|(ck, _)| *ck == k)
  {
    return ok.is_ok();
  }
  let outcome = match self_check(dtype, width, eps) {
    Ok(true) => Ok(()),
    Ok(false) => Err("differs from add + rms_norm".to_string()),
    Err(e) => Err(e.to_string()),
  };
  let ok = outcome.is_ok();
  if let Ok(mut c) = f.checked.lock() {
    c.push((k, outcome));
  }
  ok
}

/// What [`prepare_add_rms_norm`] found so far in this process, one line
/// per (dtype, width, eps): "fused" or why not (a compile error, a
/// mismatch), for diagnostics (`MLXRS_DECODE_TIMING=1` prints it).
pub fn add_rms_norm_report() -> Vec<String> {
  fused()
    .checked
    .lock()
    .map(|c| {
      c.iter()
        .map(|((dt, d, eps), ok)| {
          let what = match ok {
            Ok(()) => "one kernel".to_string(),
            Err(e) => format!("two ops ({e})"),
          };
          format!(
            "add + rms_norm {dt:?} x {d}, eps {}: {what}",
            f32::from_bits(*eps)
          )
        })
        .collect()
    })
    .unwrap_or_default()
}

/// The fused kernel against the two ops on random rows of `width`.
fn self_check(dtype: Dtype, width: i32, eps: f32) -> Result<bool> {
  let key = crate::random::key;
  let rows = 5;
  let x = crate::random::normal(&[rows, width], dtype, 0.0, 4.0, Some(&key(1)?))?;
  let r = crate::random::normal(&[rows, width], dtype, 0.0, 1.0, Some(&key(2)?))?;
  let w = crate::random::normal(&[width], dtype, 1.0, 0.2, Some(&key(3)?))?;
  let (h1, y1) = run_fused(&x, &r, &w, eps)?;
  let (h2, y2) = unfused(&x, &r, &w, eps)?;
  let mut same = ops::logical_and(
    &ops::array_equal(&h1, &h2, false)?,
    &ops::array_equal(&y1, &y2, false)?,
  )?;
  same.item::<bool>()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn launch_shapes_follow_mlx_rms_norm() {
    // bfloat16 rows of 2048: 256 vectors of 8, 128 threads x 2 chunks.
    assert_eq!(launch_shape(Dtype::Bfloat16, 2048), Some((128, 2, 8)));
    // 1024 (qwen3-0.6b): 128 vectors, one chunk.
    assert_eq!(launch_shape(Dtype::Bfloat16, 1024), Some((128, 1, 8)));
    // small rows: 64 threads, one chunk.
    assert_eq!(launch_shape(Dtype::Bfloat16, 512), Some((64, 1, 8)));
    assert_eq!(launch_shape(Dtype::Float32, 100), Some((64, 1, 4)));
    // 576 (smollm2-135m) in float32: 144 vectors, a multiple of neither
    // 128 nor 64: 128 threads x 2 chunks, the tail guarded.
    assert_eq!(launch_shape(Dtype::Float32, 576), Some((128, 2, 4)));
    // 1536 float32: 384 vectors = 128 x 3.
    assert_eq!(launch_shape(Dtype::Float32, 1536), Some((128, 3, 4)));
    // past 8192 bfloat16 / 4096 float32: MLX's 1024-thread kernel.
    assert_eq!(launch_shape(Dtype::Bfloat16, 16384), Some((1024, 2, 8)));
    assert_eq!(launch_shape(Dtype::Float32, 8192), Some((1024, 2, 4)));
    assert_eq!(launch_shape(Dtype::Float32, 65536), None);
  }

  #[test]
  fn without_a_cuda_gpu_it_is_the_two_ops() -> Result<()> {
    let x = Array::from_slice::<f32>(&[1.0, -2.0, 3.0, 0.5, 4.0, -1.0], &[2, 3])?;
    let r = Array::from_slice::<f32>(&[0.5, 0.5, -1.0, 2.0, 0.0, 1.0], &[2, 3])?;
    let w = Array::from_slice::<f32>(&[1.0, 0.5, 2.0], &[3])?;
    // On a machine without CUDA nothing is fused; with one the check
    // decides, and the values are the same either way.
    let fused_here = prepare_add_rms_norm(Dtype::Float32, 3, 1e-5);
    if !Device::is_available(DeviceType::Gpu) {
      assert!(!fused_here);
    }
    let (mut h, mut y) = add_rms_norm(&x, &r, &w, 1e-5)?;
    let hv = h.to_vec::<f32>()?;
    assert_eq!(hv, vec![1.5, -1.5, 2.0, 2.5, 4.0, 0.0]);
    let yv = y.to_vec::<f32>()?;
    for (row, hr) in hv.chunks(3).enumerate() {
      let ms = hr.iter().map(|v| v * v).sum::<f32>() / 3.0;
      let inv = 1.0 / (ms + 1e-5).sqrt();
      for (j, (&hj, wj)) in hr.iter().zip([1.0f32, 0.5, 2.0]).enumerate() {
        let want = hj * inv * wj;
        assert!((yv[row * 3 + j] - want).abs() < 1e-5, "row {row} col {j}");
      }
    }
    Ok(())
  }

  #[test]
  fn mismatched_inputs_take_the_two_ops_and_their_errors() {
    let x = Array::from_slice::<f32>(&[1.0, 2.0], &[1, 2]).unwrap();
    let r = Array::from_slice::<f32>(&[1.0, 2.0, 3.0], &[1, 3]).unwrap();
    let w = Array::from_slice::<f32>(&[1.0, 1.0], &[2]).unwrap();
    let err = add_rms_norm(&x, &r, &w, 1e-5).and_then(|(mut h, _)| h.eval());
    assert!(err.is_err(), "a [1, 2] + [1, 3] add must fail, not fuse");
  }

  use crate::device::{Device, DeviceType};
}
