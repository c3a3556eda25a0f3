//! Raw FFI to the mlxrs C layer: MLX's C++ API exposed as C functions with
//! mlx-c's names and conventions (see `csrc/mlxrs_c.h`).
//!
//! Everything here is `unsafe` and unchecked; use `mlxrs-core` for the safe
//! API. The declarations in `bindings.rs` are produced by bindgen from
//! `csrc/mlxrs_c.h` (`cargo xtask bindgen`) and committed; a test checks
//! they are fresh.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
#![allow(clippy::all)]

#[rustfmt::skip]
mod bindings;
pub use bindings::*;

/// The MLX version this crate is pinned to and was built against.
pub const MLX_VERSION: &str = "0.32.4";

/// Where the linked libmlx was found at build time (the `lib/` folder).
pub const MLX_LIB_DIR: &str = env!("MLXRS_MLX_LIB_DIR");
