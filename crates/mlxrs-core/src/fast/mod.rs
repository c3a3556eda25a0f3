//! Fused kernels: python `mx.fast`, swift `MLXFast`.

pub mod sdpa;

pub use sdpa::{Mask, scaled_dot_product_attention};
