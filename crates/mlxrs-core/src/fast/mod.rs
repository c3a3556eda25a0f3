//! Fused kernels: python `mx.fast`, swift `MLXFast`.
//!
//! [`sdpa`] is hand-written; the rest (`rms_norm`, `layer_norm`, `rope`, ...)
//! is generated from MLX's `fast.h` (see [`crate::ops`] for the naming
//! scheme).

#[rustfmt::skip]
mod generated;
pub mod sdpa;

pub use generated::*;
pub use sdpa::{Mask, scaled_dot_product_attention};
pub mod sdpa_full;
pub use sdpa_full::scaled_dot_product_attention_full;
pub mod kernel;
pub mod norm_matvec;
pub use kernel::{CustomKernel, KernelBuilder, KernelCall, ScalarArg, precompiled_cuda_kernel};
pub use norm_matvec::{Projection, norm_matvec};
