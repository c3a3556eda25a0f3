//! Sentence embeddings from sentence-transformers checkpoints, on MLX.
//!
//! The Rust counterpart of python `sentence-transformers`
//! (`SentenceTransformer(path).encode(texts)`) and `mlx-embeddings`:
//!
//! ```no_run
//! use mlxrs_embed::{EmbedOptions, Embedder, similarity};
//! let model = Embedder::load("path/to/all-MiniLM-L6-v2")?;
//! let v = model.embed(&["A man is eating food.", "A man is eating bread."])?;
//! let sims = similarity::cosine_matrix(&v, &v)?;
//! // Prompts, batching, truncation and normalization are options:
//! let q = model.embed_with(
//!   &["what is MLX?"],
//!   &EmbedOptions { prompt_name: Some("query".into()), batch_size: 16, ..Default::default() },
//! );
//! # let _ = (sims, q);
//! # Ok::<(), mlxrs_embed::Error>(())
//! ```
//!
//! - Folder format ([`folder`]): `modules.json` (Transformer, Pooling,
//!   Dense, Normalize), `1_Pooling/config.json` (cls, mean, max,
//!   mean_sqrt_len_tokens, weightedmean, lasttoken; several concatenate),
//!   `sentence_bert_config.json` (`max_seq_length`, `do_lower_case`),
//!   `config_sentence_transformers.json` (prompts, default prompt,
//!   similarity function). A folder without `modules.json` gets **mean
//!   pooling** and no normalization, as sentence-transformers gives a plain
//!   transformers checkpoint.
//! - Architectures ([`models`]): `bert`, `roberta`, `xlm-roberta`,
//!   `camembert`, `modernbert`, `nomic_bert`, `qwen3` (Qwen3-Embedding),
//!   `gemma3_text` (EmbeddingGemma), built on `mlxrs-nn` layers. Weights
//!   are computed in float32; MLX-quantized checkpoints (a `quantization`
//!   block in `config.json`) run their quantized layers packed.
//! - Batching ([`tokenize`]): texts are tokenized with the folder's
//!   `tokenizer.json`, sorted by length, padded per batch with an attention
//!   mask, and truncated at the max length (or rejected, with
//!   [`EmbedOptions::truncate`] off).
//! - [`similarity`]: cosine / dot / Euclidean / Manhattan matrices and top-k.
//! - [`rerank`]: a BERT-family cross-encoder (sequence classification).
//! - [`host`]: on the CPU, activations and the attention softmax run as
//!   vectorized multi-threaded host kernels (MLX's CPU element-wise ops are
//!   scalar and single-threaded).
//!
//! Every failure is an [`Error`] naming the file, field or input at fault.
#![forbid(unsafe_code)]

pub mod activation;
pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod embedder;
pub mod error;
pub mod folder;
pub mod host;
pub mod input;
pub mod models;
pub mod pooling;
pub mod rerank;
pub mod similarity;
pub mod tokenize;

pub use embedder::{EmbedOptions, Embedder};
pub use error::{Error, Result};
pub use folder::{PoolingMode, SimilarityFn};
pub use rerank::{CrossEncoder, RerankOptions};
