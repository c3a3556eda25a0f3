//! Array operations: python `mlx.core` (`mx.add`, `mx.sum`, `mx.reshape`,
//! ...), swift `MLX` free functions.
//!
//! One generated wrapper per bound C++ overload of MLX's `ops.h`
//! (`cargo run -p xtask -- gen`), named after its C function without the
//! `mlx_` prefix:
//! overloads are told apart by suffix, as in mlx-c (`sum`, `sum_axis`,
//! `sum_axes`). Every op runs on the thread's [`default_stream`](crate::default_stream)
//! and returns a lazy [`Array`](crate::Array); each wrapper's docs give the
//! python spelling and the C++ defaults (Rust has none: pass them). Arguments
//! map as: `&[i32]` for shapes / axes, `Option<..>` for C++ `std::optional`,
//! `&[Array]` / `Vec<Array>` for lists, tuples for pairs. `docs/coverage.md`
//! lists what is (not) bound.
//!
//! [`einsum`] and [`einsum_path`] are hand-written (`mlx/einsum.h`).
//!
//! [`ergonomic`] adds operators (`&a + &b`) and [`Array`](crate::Array)
//! methods for the most common ops.

mod einsum;
pub mod ergonomic;
mod matmul_t;
#[rustfmt::skip]
mod generated;

pub use einsum::{einsum, einsum_path};
pub use ergonomic::pad_pairs;
pub use generated::*;
pub use matmul_t::{matmul_t, quantized_matmul_t};
