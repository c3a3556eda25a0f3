//! `mlxrs serve`: the OpenAI-compatible server (python `mlx_lm.server`),
//! flags named as mlx_lm.server's (see `crates/mlxrs-server`).
//!
//! Under `mlxrs launch -n N -- serve --model M ...` (python `mlx.launch`
//! running `mlx_lm.server`) every rank loads its tensor shard of M; rank 0
//! serves HTTP and runs the engine, the other ranks follow its batch
//! operations ([`mlxrs_server::follow`], `mlxrs_server::replica`).

use anyhow::{Result, bail};
use clap::Args;
use mlxrs_lm::shard::TensorShard;
use mlxrs_server::ServerConfig;

/// `mlxrs serve` flags.
#[derive(Args)]
pub struct ServeArgs {
  /// Model folder or Hugging Face repo id (cached repos load offline). An
  /// embedding, reranker or Whisper folder is served as that kind.
  #[arg(long, required_unless_present_any = ["embedding_model", "rerank_model", "whisper_model"])]
  model: Option<String>,
  /// Sentence-embedding model folder served at /v1/embeddings.
  #[arg(long = "embedding-model")]
  embedding_model: Option<String>,
  /// Cross-encoder (reranker) folder served at /v1/rerank.
  #[arg(long = "rerank-model")]
  rerank_model: Option<String>,
  /// Whisper model folder served at /v1/audio/transcriptions.
  #[arg(long = "whisper-model")]
  whisper_model: Option<String>,
  /// Largest audio upload in bytes; larger get HTTP 413.
  #[arg(long = "max-audio-bytes", default_value_t = 25 << 20)]
  max_audio_bytes: usize,
  /// Compute dtype for float weights: float32, bfloat16, float16.
  #[arg(long)]
  dtype: Option<String>,
  /// Interface to bind (use 0.0.0.0 to accept other machines).
  #[arg(long, default_value = "127.0.0.1")]
  host: String,
  /// Port (0 picks a free one).
  #[arg(long, default_value_t = 8080)]
  port: u16,
  /// Default token budget of a request without max_tokens.
  #[arg(long = "max-tokens", default_value_t = 512)]
  max_tokens: usize,
  /// Distinct KV caches kept in the prompt cache (0 = off).
  #[arg(long = "prompt-cache-size", default_value_t = 10)]
  prompt_cache_size: usize,
  /// Bytes the prompt cache may hold.
  #[arg(long = "prompt-cache-bytes")]
  prompt_cache_bytes: Option<usize>,
  /// Requests decoded together in one batch at most.
  #[arg(long = "decode-concurrency", default_value_t = 32)]
  decode_concurrency: usize,
  /// Prompts prefilled between two decode steps at most.
  #[arg(long = "prompt-concurrency", default_value_t = 8)]
  prompt_concurrency: usize,
  /// Prompt tokens per prefill chunk.
  #[arg(long = "prefill-step-size", default_value_t = 2048)]
  prefill_step_size: usize,
  /// Speculative decoding draft model, used while one greedy request runs
  /// alone (same tokenizer as --model).
  #[arg(long = "draft-model")]
  draft_model: Option<String>,
  /// Draft tokens proposed per speculative step.
  #[arg(long = "num-draft-tokens", default_value_t = 3)]
  num_draft_tokens: usize,
  /// JSON object of chat-template variables, e.g. '{"enable_thinking":false}'.
  #[arg(long = "chat-template-args")]
  chat_template_args: Option<String>,
  /// A chat template replacing the checkpoint's: a file path or Jinja
  /// source (python `mlx_lm.server --chat-template`). Its text also picks
  /// the tool-call format (Hermes/Qwen, Llama 3, Mistral, gpt-oss).
  #[arg(long = "chat-template")]
  chat_template: Option<String>,
  /// `/v1/responses` results kept in memory for `previous_response_id`
  /// (least recently used dropped first; 0 keeps none).
  #[arg(long = "responses-store", default_value_t = 256)]
  responses_store: usize,
  /// Require `Authorization: Bearer KEY` on /v1 routes.
  #[arg(long = "api-key")]
  api_key: Option<String>,
  /// Requests allowed to wait for the batch; more get HTTP 429.
  #[arg(long = "max-queue", default_value_t = 256)]
  max_queue: usize,
  /// Largest request body in bytes; larger get HTTP 413.
  #[arg(long = "max-body-bytes", default_value_t = 4 << 20)]
  max_body_bytes: usize,
  /// MLX memory limit in GB (python `mx.set_memory_limit`).
  #[arg(long = "memory-limit-gb")]
  memory_limit_gb: Option<f64>,
  /// Pipeline-parallel serving: not supported (an error); under `mlxrs
  /// launch`, serve runs tensor-parallel.
  #[arg(long)]
  pipeline: bool,
}

/// Run the server until ctrl-c / SIGTERM. Under a launcher, rank 0 serves
/// and the other ranks follow it until it stops.
pub fn run(a: ServeArgs) -> Result<()> {
  if a.pipeline {
    bail!(
      "serve --pipeline: pipeline-parallel serving is not supported; under `mlxrs launch`, \
       serve runs tensor-parallel (drop --pipeline)"
    );
  }
  let chat_template_args = match &a.chat_template_args {
    None => serde_json::Map::new(),
    Some(s) => match serde_json::from_str(s) {
      Ok(serde_json::Value::Object(m)) => m,
      _ => {
        bail!("--chat-template-args must be a JSON object, e.g. '{{\"enable_thinking\":false}}'")
      }
    },
  };
  let memory_limit = match a.memory_limit_gb {
    None => None,
    Some(g) if g.is_finite() && g > 0.0 => Some((g * 1e9) as usize),
    Some(g) => bail!("--memory-limit-gb must be > 0, got {g}"),
  };
  let chat_template = match a.chat_template {
    None => None,
    Some(t) if std::path::Path::new(&t).is_file() => Some(
      std::fs::read_to_string(&t)
        .map_err(|e| anyhow::anyhow!("--chat-template: reading {t}: {e}"))?,
    ),
    Some(t) if t.contains("{{") || t.contains("{%") => Some(t),
    Some(t) => bail!("--chat-template: {t:?} is neither a file nor a Jinja template"),
  };
  let mut cfg = ServerConfig {
    dtype: super::parse_dtype(&a.dtype)?,
    model: a.model.unwrap_or_default(),
    host: a.host,
    port: a.port,
    max_tokens: a.max_tokens,
    prompt_cache_size: a.prompt_cache_size,
    prompt_cache_bytes: a.prompt_cache_bytes,
    decode_concurrency: a.decode_concurrency,
    prompt_concurrency: a.prompt_concurrency,
    prefill_step_size: a.prefill_step_size,
    draft_model: a.draft_model,
    num_draft_tokens: a.num_draft_tokens,
    chat_template_args,
    api_key: a.api_key,
    max_queue: a.max_queue,
    max_body_bytes: a.max_body_bytes,
    memory_limit,
    model_id: None,
    chat_template,
    responses_store: a.responses_store,
    embedding_model: a.embedding_model,
    rerank_model: a.rerank_model,
    whisper_model: a.whisper_model,
    max_audio_bytes: a.max_audio_bytes,
    tensor_shard: None,
  };
  // Kept alive for the whole run.
  let group = super::launch::group_from_env()?;
  if let Some(g) = &group {
    let (rank, size) = (g.rank(), g.size());
    cfg.tensor_shard = Some(TensorShard::new(rank, size)?);
    if rank != 0 {
      eprintln!(
        "mlxrs serve: rank {rank} of {size} (pid {}): follows rank 0's batches, no HTTP",
        std::process::id()
      );
      mlxrs_server::follow(cfg)?;
      eprintln!("mlxrs serve: rank {rank}: rank 0 stopped; exiting");
      return Ok(());
    }
    eprintln!(
      "mlxrs serve: rank 0 of {size} (pid {}): serves HTTP, tensor-parallel over {size} ranks",
      std::process::id()
    );
    if cfg.prompt_cache_size > 0 {
      eprintln!("mlxrs serve: the prompt cache is off under `mlxrs launch`");
    }
  }
  mlxrs_server::run(cfg)?;
  drop(group);
  Ok(())
}
