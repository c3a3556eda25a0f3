//! Array operations: python `mlx.core` (`mx.add`, `mx.sum`, `mx.reshape`,
//! ...), swift `MLX` free functions.
//!
//! [`generated`](self) holds one wrapper per bound C++ overload of MLX's
//! `ops.h`, named after its C function without the `mlx_` prefix:
//! overloads are told apart by suffix, as in mlx-c (`sum`, `sum_axis`,
//! `sum_axes`). Every op runs on the thread's [`default_stream`](crate::default_stream)
//! and returns a lazy [`Array`](crate::Array). `docs/coverage.md` lists what
//! is (not) bound.
//!
//! [`ergonomic`] adds operators (`&a + &b`) and [`Array`](crate::Array)
//! methods for the most common ops.

pub mod ergonomic;
#[rustfmt::skip]
mod generated;

pub use generated::*;
