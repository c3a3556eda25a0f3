//! mlxrs-nn: the layer every model crate builds on, with the semantics of
//! python `mlx.nn` and the caches of mlx-lm (`models/cache.py`) /
//! mlx-swift-lm (`KVCache`).
//!
//! Models are plain structs of layers. They are built from a config with
//! empty parameters, then filled by [`Module::load`] from a [`Weights`] map,
//! which checks names and shapes strictly and reports every problem at once
//! (python: `model.load_weights(list(weights.items()), strict=True)`).

pub mod activations;
pub mod attention;
pub mod cache;
pub mod embedding;
pub mod linear;
pub mod module;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod switch;

pub use activations::*;
pub use attention::{AttnMask, sdpa_with_cache};
pub use cache::{KvCache, KvCacheKind};
pub use embedding::Embedding;
pub use linear::Linear;
pub use module::{Module, Param, Weights, join};
pub use norm::{LayerNorm, RmsNorm};
pub use quant::{QuantConfig, QuantParams};
pub use rope::Rope;
pub use switch::{GluActivation, MultiLinear, SwitchGlu, SwitchLinear};

pub use mlxrs_core::{Array, Dtype, Error, Result};
