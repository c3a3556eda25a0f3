//! Linear algebra: python `mx.linalg`, swift `MLXLinalg`.
//!
//! Generated from MLX's `linalg.h` (see [`crate::ops`] for the naming
//! scheme). Most of these run on the CPU only in MLX: call them under
//! `with_device(Device::CPU, ..)` or on a CPU stream.

#[rustfmt::skip]
mod generated;

pub use generated::*;
