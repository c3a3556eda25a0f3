//! mlxrs: safe Rust bindings for Apple's MLX array framework, and the model
//! pipelines built on them. This facade re-exports the layered crates behind
//! features (`nn`, `lm`, `vlm`, `audio`, `embed`; all on by default).
//!
//! ```no_run
//! use mlxrs::core::Array;
//! let a = Array::from_slice::<f32>(&[1.0, 2.0, 3.0], &(3,)).unwrap();
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "audio")]
pub use mlxrs_audio as audio;
pub use mlxrs_core as core;
pub use mlxrs_core::*;
#[cfg(feature = "embed")]
pub use mlxrs_embed as embed;
#[cfg(feature = "lm")]
pub use mlxrs_lm as lm;
#[cfg(feature = "nn")]
pub use mlxrs_nn as nn;
#[cfg(feature = "vlm")]
pub use mlxrs_vlm as vlm;
