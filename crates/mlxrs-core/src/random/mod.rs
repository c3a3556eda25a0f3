//! Random sampling: python `mx.random`, swift `MLXRandom`.
//!
//! Generated from MLX's `random.h` (see [`crate::ops`] for the naming
//! scheme). Every sampler takes an optional `key` (from [`key`] / [`split`]);
//! `None` draws from MLX's global PRNG state (seeded with [`seed`]).

#[rustfmt::skip]
mod generated;

pub use generated::*;
