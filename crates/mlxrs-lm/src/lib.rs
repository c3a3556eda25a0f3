//! Language-model pipelines (load HF / mlx-community checkpoints, generate, chat).
//!
//! The MLX-independent half lives here: checkpoint configuration
//! ([`config`]), tokenization ([`tokenizer`]), streaming detokenization
//! ([`detokenizer`]), chat templates ([`chat`]) and model resolution on the
//! Hugging Face Hub ([`hub`]), mirroring Python mlx-lm's `utils.py` /
//! `tokenizer_utils.py` and transformers' tokenizer loading and
//! `apply_chat_template`.
#![forbid(unsafe_code)]

pub mod chat;
pub mod config;
pub mod detokenizer;
pub mod error;
pub mod hub;
pub mod limits;
pub mod tokenizer;

pub use chat::{ChatOptions, ChatTemplate, ChatTemplates, Content, Message};
pub use config::{
  GenerationConfig, LayerQuantization, ModelConfig, QuantMode, QuantParams, QuantSource,
  Quantization,
};
pub use detokenizer::{DetokenizerKind, StreamingDetokenizer};
pub use error::{Error, Result};
pub use hub::{HubConfig, ModelFiles, resolve_model, resolve_model_with};
pub use tokenizer::{SpecialTokens, Tokenizer};

// The MLX half: models, sampling, generation.
pub mod batch;
pub mod bench;
pub mod continuous;
pub mod convert;
pub mod generate;
pub mod gguf;
pub mod load;
pub mod model;
pub mod models;
pub mod pipeline;
pub mod sample;
pub mod shard;
pub mod speculative;
pub mod support;
pub mod text;
pub mod tuner;
pub mod validate;

pub use batch::batch_generate;
pub use continuous::{
  BatchGenerator, Constraint, ConstraintFactory, NewRow, RowConfig, RowToken, TokenConstraint,
};
pub use convert::{ConvertOptions, ConvertReport, convert};
pub use generate::{PromptEmbeddings, Step, StepConfig, TokenGenerator};
pub use load::{
  LoadOptions, LoadedModel, load, load_model_dir, load_model_dir_pipeline, load_model_dir_sharded,
  load_pipeline, load_sharded,
};
pub use model::{
  EMBEDDINGS_MODEL_TYPES, LanguageModel, build_model, fuse_for_inference, supported_model_types,
};
pub use sample::{LogitsConfig, Sampler, SamplerConfig};
pub use speculative::SpeculativeGenerator;
pub use text::{
  FinishReason, GenerateOptions, Output, Response, TextStream, collect, generate,
  generate_speculative, prompt_ids,
};
