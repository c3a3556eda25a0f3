//! A custom elementwise CUDA kernel through `mlxrs_core::fast::kernel`
//! (python `mx.fast.cuda_kernel`), checked against MLX's own ops on the CPU.
//!
//! ```sh
//! cargo build -p mlxrs-core --example cuda_kernel
//! LD_LIBRARY_PATH=/path/to/mlx-cuda/mlx/lib target/debug/examples/cuda_kernel
//! ```
//! (docs/gpu.md: a binary built against the CPU wheel runs against the CUDA
//! wheel's libmlx.) Prints the max error and exits 0 when the kernel's
//! output matches `exp(x) * alpha + y` within 1e-5 relative + 1e-6 absolute
//! (CUDA's `expf` vs MLX's CPU `exp`: a few ulp); exits 1 with MLX's message
//! ("No CUDA back-end") on a machine without CUDA.

use mlxrs_core::fast::kernel::{KernelBuilder, KernelCall, TemplateArg};
use mlxrs_core::{Array, Device, DeviceType, Dtype, Result, ops, with_device};

/// The kernel body: MLX writes the signature
/// `(const float* x, const float* y, float* out)` plus the template constants.
const SOURCE: &str = r#"
  auto i = cg::this_grid().thread_rank();
  if (i < N) {
    out[i] = static_cast<T>(exp(static_cast<float>(x[i])) * ALPHA_X1000 / 1000.0f + static_cast<float>(y[i]));
  }
"#;

fn run() -> Result<f64> {
  let n: i32 = 100_003; // not a multiple of the block size: the guard matters
  let alpha_x1000 = 1500; // alpha = 1.5, passed as an int template constant
  let x = ops::multiply(
    &Array::arange(0.0, n as f64, 1.0, Dtype::Float32)?,
    &Array::scalar::<f32>(1e-4),
  )?;
  let y = ops::sin(&Array::arange(0.0, n as f64, 1.0, Dtype::Float32)?)?;

  let kernel = KernelBuilder::cuda("exp_axpy", &["x", "y"], &["out"], SOURCE).build()?;
  let call = KernelCall::new((n, 1, 1), (256, 1, 1))
    .output(&[n], Dtype::Float32)
    .template_int("N", n)
    .template_int("ALPHA_X1000", alpha_x1000)
    .template("T", TemplateArg::Dtype(Dtype::Float32));
  let mut outs = kernel.apply(&[x.clone(), y.clone()], &call)?;
  let got = outs.remove(0).to_vec::<f32>()?;

  // Reference with MLX ops on the CPU.
  let want = with_device(Device::CPU, || -> Result<Vec<f32>> {
    let e = ops::exp(&x)?;
    let r = ops::add(
      &ops::multiply(&e, &Array::scalar::<f32>(alpha_x1000 as f32 / 1000.0))?,
      &y,
    )?;
    ops::astype(&r, Dtype::Float32)?.to_vec::<f32>()
  })??;

  let mut max_err = 0f64;
  for (k, (g, w)) in got.iter().zip(&want).enumerate() {
    let (g, w) = (f64::from(*g), f64::from(*w));
    let err = (g - w).abs();
    max_err = max_err.max(err / (1e-6 + w.abs()));
    if err > 1e-6 + 1e-5 * w.abs() {
      return Err(mlxrs_core::Error::InvalidArgument(format!(
        "element {k}: kernel gave {g}, MLX ops give {w}"
      )));
    }
  }
  Ok(max_err)
}

fn main() {
  println!(
    "mlx {} default device {:?} (gpu available: {})",
    mlxrs_core::version(),
    Device::default_device(),
    Device::is_available(DeviceType::Gpu)
  );
  match run() {
    Ok(e) => {
      println!("cuda_kernel OK: 100003 elements match exp(x) * 1.5 + y, max relative error {e:.3e}")
    }
    Err(e) => {
      eprintln!("cuda_kernel FAILED: {e}");
      std::process::exit(1);
    }
  }
}
