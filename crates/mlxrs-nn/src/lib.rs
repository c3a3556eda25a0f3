//! mlxrs-nn: the layer every model crate builds on, with the semantics of
//! python `mlx.nn` and the caches of mlx-lm (`models/cache.py`) /
//! mlx-swift-lm (`KVCache`).
//!
//! Models are plain structs of layers. They are built from a config with
//! empty parameters, then filled by [`Module::load`] from a [`Weights`] map,
//! which checks names and shapes strictly and reports every problem at once
//! (python: `model.load_weights(list(weights.items()), strict=True)`).
//!
//! - Module system ([`Module`], [`module!`]): parameters, trainable
//!   parameters, `freeze` / `unfreeze` by path or key, `update`,
//!   `set_dtype`, `train` / `eval`, and [`quantize`] over a whole model.
//! - Layers: [`Linear`], [`Embedding`] (dense or quantized), norms
//!   ([`RmsNorm`], [`LayerNorm`], [`GroupNorm`], [`BatchNorm`]),
//!   convolutions ([`Conv1d`], [`Conv2d`], [`ConvTranspose1d`],
//!   [`ConvTranspose2d`]), [`Dropout`], [`MultiHeadAttention`],
//!   [`SinusoidalPositionalEncoding`], [`Pool`], [`Upsample`], [`Rope`],
//!   mixture-of-experts layers, [`LoRALinear`] / [`DoRALinear`].
//! - Speech synthesis layers (StyleTTS2 / Kokoro): [`Lstm`] (one or both
//!   directions), [`instance_norm1d`], [`AdaIn1d`], [`AdaLayerNorm`],
//!   [`weight_norm`], magnitude/phase [`Stft`] and its inverse.
//! - Caches ([`KvCache`] standard / rotating / quantized / chunked,
//!   [`ArraysCache`], [`CacheList`]) with [`attention_with_cache_update`],
//!   and mlx-lm prompt-cache files ([`save_prompt_cache`],
//!   [`load_prompt_cache`]).
//! - Training: [`losses`], [`optim`] (optimizers, schedules,
//!   `clip_grad_norm`), [`value_and_grad`] over a module.
//!
//! `docs/nn.md` maps each item to its python equivalent.
#![forbid(unsafe_code)]

pub mod activations;
pub mod attention;
pub mod cache;
pub mod conv;
pub mod dropout;
pub mod embedding;
pub mod linear;
pub mod lora;
pub mod losses;
pub mod lstm;
pub mod module;
pub mod norm;
pub mod optim;
pub mod pooling;
pub mod positional;
pub mod prompt_cache;
pub mod quant;
pub mod rope;
pub mod stft;
pub mod style;
pub mod switch;
pub mod train;
mod transposed;
pub mod upsample;

pub use activations::*;
pub use attention::{
  AttnMask, MhaDims, MultiHeadAttention, attention_with_cache_update, quantized_sdpa,
  sdpa_with_cache,
};
pub use cache::{
  ArraysCache, CacheList, CachedKv, KvCache, KvCacheKind, LayerCache, StateNode, trim_prompt_cache,
};
pub use conv::{Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::{Linear, StackedLinear};
pub use lora::{
  AdaptableLayer, AdapterKind, AdapterSettings, DoRALinear, EmbeddingAdapter, LinearAdapter,
  LoRALinear, LowRank, SwitchAdapter, fused_weight,
};
pub use losses::{CrossEntropy, Reduction};
pub use lstm::{Lstm, LstmDirection};
pub use module::{Frozen, Module, Param, Weights, join, path_has_prefix};
pub use norm::{BatchNorm, GroupNorm, LayerNorm, RmsNorm};
pub use pooling::{Pool, PoolKind};
pub use positional::SinusoidalPositionalEncoding;
pub use prompt_cache::{load_kv_caches, load_prompt_cache, save_kv_caches, save_prompt_cache};
pub use quant::{
  QuantConfig, QuantMode, QuantParams, QuantPredicate, Quantizable, quantize, quantize_with,
};
pub use rope::Rope;
pub use stft::Stft;
pub use style::{
  AdaIn1d, AdaLayerNorm, instance_norm1d, instance_norm1d_nlc, weight_norm, weight_norm_split,
};
pub use switch::{GluActivation, MultiLinear, SwitchGlu, SwitchLinear};
pub use train::{ModuleValueAndGrad, value_and_grad};
pub use upsample::{Upsample, UpsampleMode, upsample_linear, upsample_nearest};

pub use mlxrs_core::{Array, Dtype, Error, Result};
