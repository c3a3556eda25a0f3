//! Vision-language model pipelines: python mlx-vlm in Rust.
//!
//! - [`image`]: decoding (png, jpeg with EXIF orientation, webp, gif) and
//!   Pillow-exact resampling, as transformers' PIL-backed processors see
//!   images.
//! - [`processors`]: image processors (`preprocessor_config.json`), e.g.
//!   Qwen2-VL's `smart_resize` + patchify, CLIP / SigLIP resize (+ crop),
//!   LLaVA-NeXT any-resolution tiles, Idefics3 / SmolVLM image splitting.
//! - [`vision`]: the shared vision towers (CLIP, SigLIP).
//! - [`models`]: the multimodal families (LLaVA, LLaVA-NeXT, PaliGemma,
//!   Gemma 3, Idefics3 / SmolVLM, Qwen2-VL, Qwen2.5-VL); each family module
//!   holds its vision tower, projector and merge rule behind [`VlmModel`]
//!   (one module and one registry line per family, see `docs/vlm.md`); the
//!   language model is mlxrs-lm's, built from `text_config` (Qwen2-VL's
//!   M-RoPE decoder is the exception).
//! - [`VlmModel`]: `mlx_vlm.load` + prompt building + generation through
//!   mlxrs-lm's streaming API (same sampling, caches and stop rules), with
//!   an image-feature cache ([`vision_cache`], python `VisionFeatureCache`).
//! - [`VlmChat`]: multi-turn chat with images and KV-cache reuse (python
//!   `mlx_vlm.chat`).
//!
//! ```no_run
//! use mlxrs_vlm::{GenerateOptions, LoadOptions, load};
//! let m = load("mlx-community/Qwen2-VL-2B-Instruct-4bit", &LoadOptions::default())?;
//! let images = m.load_images(&["cat.jpg"])?;
//! let input = m.prepare("Describe this image.", &images, None, false)?;
//! for r in m.stream(&input, &GenerateOptions::default())? {
//!   print!("{}", r?.text);
//! }
//! # Ok::<(), mlxrs_vlm::Error>(())
//! ```
#![forbid(unsafe_code)]

pub mod chat;
pub mod error;
mod family;
pub mod image;
pub mod model;
pub mod models;
pub mod processors;
pub mod vision;
pub mod vision_cache;

pub use chat::{ChatTurn, VlmChat, assistant_message};
pub use error::{Error, Result};
pub use image::{AlphaMode, Resample, RgbImage, decode_image, load_image};
pub use mlxrs_lm::{
  FinishReason, GenerateOptions, Output, Response, SamplerConfig, StepConfig, TextStream,
  TokenGenerator,
};
pub use model::{LoadOptions, MODEL_TYPES, VlmInput, VlmModel, is_vlm_dir, load, load_dir};
pub use processors::{
  ClipImageProcessor, ClipPixels, Idefics3ImageProcessor, LlavaNextImageProcessor, PixelValues,
  Qwen2VlImageProcessor,
};
pub use vision_cache::{DEFAULT_VISION_CACHE_SIZE, VisionCacheStats};
