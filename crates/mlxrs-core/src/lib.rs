//! mlxrs-core: safe MLX arrays and the MLX API surface.
//!
//! The Rust counterpart of python `mlx.core` and swift `MLX`: [`Array`],
//! [`Dtype`], devices and streams, [`ops`], [`fft`], [`linalg`], [`random`],
//! [`fast`] kernels, and evaluation.
//! Every fallible call returns [`Result`]; MLX's C++ exceptions become
//! [`Error::Mlx`] values and never abort the process.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod array;
pub mod atomic;
pub mod closure;
pub mod device;
pub mod distributed;
pub mod dtype;
pub mod error;
mod eval_lock;
pub mod eval_thread;
pub mod export;
pub mod fast;
pub mod fft;
mod gen_support;
pub mod index;
pub mod io;
pub mod linalg;
pub mod memory;
pub mod ops;
pub mod random;
pub mod stream;
mod string;
pub mod transforms;
pub mod vector;

pub use array::{Array, ShapeLike};
pub use device::{Device, DeviceType};
pub use dtype::{ArrayElement, Dtype};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use num_complex::Complex32;
pub use stream::{
  Stream, default_stream, synchronize, with_default_stream, with_device, with_stream,
};
pub use transforms::{async_eval, eval};

/// The MLX version mlxrs is built against (python `mx.__version__`).
pub fn version() -> String {
  let mut s = string::MlxString::new();
  // SAFETY: out-handle owned by `s`.
  if unsafe { mlxrs_sys::mlx_version(&mut s.0) } != 0 {
    return mlxrs_sys::MLX_VERSION.to_string();
  }
  s.as_str().into_owned()
}
