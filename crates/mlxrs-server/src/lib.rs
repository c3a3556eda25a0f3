//! `mlxrs serve`: an OpenAI-compatible HTTP server (python
//! `mlx_lm.server`) with continuous batching.
//!
//! - Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`
//!   (non-streaming and server-sent events), `POST /v1/responses` and
//!   `GET /v1/responses/{id}` ([`responses`]), `GET /v1/models`,
//!   `GET /health`, `GET /metrics` (Prometheus text); with the auxiliary
//!   models of [`extras`]: `POST /v1/embeddings`, `POST /v1/rerank`,
//!   `POST /v1/audio/transcriptions` (and `/translations`); the chat page
//!   at `/` ([`page`]).
//! - Tool calls per model family ([`tools`]), reasoning text
//!   ([`reasoning`]), structured output by constrained decoding
//!   ([`structured`]); replies split in [`reply`].
//! - One engine thread owns the model, the running batch
//!   ([`mlxrs_lm::BatchGenerator`]) and the prompt cache
//!   ([`prompt_cache::PromptCache`]); handlers talk to it over channels
//!   ([`engine`]).
//! - Faults stay with their request: bad bodies get OpenAI-shaped 400s, a
//!   full queue 429, an oversized body 413, a failed request a 500 while the
//!   others keep running; a client that goes away cancels its rows.
//!
//! [`Server::start`] runs it in the background (tests, embedding);
//! [`run`] runs it until ctrl-c / SIGTERM (the CLI).
//!
//! Under `mlxrs launch` (python `mlx_lm.server` distributed mode) rank 0
//! runs [`Server::start`] with [`ServerConfig::tensor_shard`] set and the
//! other ranks run [`follow`]: every rank holds its tensor shard of the
//! model and computes every batch, rank 0 alone serves HTTP ([`replica`]).
#![forbid(unsafe_code)]

pub mod api;
pub mod audio;
pub mod embeddings;
pub mod engine;
pub mod error;
pub mod extras;
pub mod http;
pub mod memory_budget;
pub mod metrics;
pub mod page;
pub mod prompt_cache;
pub mod reasoning;
pub mod replica;
pub mod reply;
pub mod responses;
pub mod row_text;
pub mod structured;
pub mod tools;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;

use mlxrs_core::Dtype;
use mlxrs_lm::shard::TensorShard;
use mlxrs_lm::{LoadOptions, LoadedModel, Tokenizer};
use serde_json::{Map, Value};

use crate::engine::EngineConfig;
use crate::http::AppState;
use crate::metrics::Metrics;

/// Server settings (flags named as `mlx_lm.server`'s).
#[derive(Debug, Clone)]
pub struct ServerConfig {
  /// Model folder or Hugging Face repo id (`--model`).
  pub model: String,
  /// Compute dtype (`None`: float32 on CPU, the checkpoint's on GPU).
  pub dtype: Option<Dtype>,
  /// Interface to bind (`--host`, 127.0.0.1).
  pub host: String,
  /// Port (`--port`, 8080; 0 picks a free one).
  pub port: u16,
  /// Default token budget (`--max-tokens`, 512).
  pub max_tokens: usize,
  /// Prompt-cache entries (`--prompt-cache-size`, 10; 0 = off).
  pub prompt_cache_size: usize,
  /// Prompt-cache bytes (`--prompt-cache-bytes`).
  pub prompt_cache_bytes: Option<usize>,
  /// Rows decoded together (`--decode-concurrency`, 32).
  pub decode_concurrency: usize,
  /// Prompts prefilled per step (`--prompt-concurrency`, 8).
  pub prompt_concurrency: usize,
  /// Prompt tokens per prefill chunk (`--prefill-step-size`, 2048).
  pub prefill_step_size: usize,
  /// Speculative decoding draft model (`--draft-model`), used while one
  /// greedy row runs alone ([`mlxrs_lm::BatchGenerator::set_draft`]).
  pub draft_model: Option<String>,
  /// Draft tokens per speculative step (`--num-draft-tokens`, 3).
  pub num_draft_tokens: usize,
  /// Extra chat-template variables (`--chat-template-args`).
  pub chat_template_args: Map<String, Value>,
  /// Required bearer token (`--api-key`).
  pub api_key: Option<String>,
  /// Rows allowed to wait (`--max-queue`, 256): more get 429.
  pub max_queue: usize,
  /// Largest request body in bytes (`--max-body-bytes`, 4 MiB): more get 413.
  pub max_body_bytes: usize,
  /// MLX memory limit in bytes (`--memory-limit-gb`; python
  /// `mx.set_memory_limit`).
  pub memory_limit: Option<usize>,
  /// Id reported by `/v1/models` (default: the `--model` value).
  pub model_id: Option<String>,
  /// A chat template (Jinja source) replacing the checkpoint's
  /// (`--chat-template`).
  pub chat_template: Option<String>,
  /// `/v1/responses` results kept for `previous_response_id`
  /// (`--responses-store`, 256; least recently used dropped first).
  pub responses_store: usize,
  /// Sentence-embedding model folder (`--embedding-model`) for
  /// `/v1/embeddings`.
  pub embedding_model: Option<String>,
  /// Cross-encoder folder (`--rerank-model`) for `/v1/rerank`.
  pub rerank_model: Option<String>,
  /// Whisper folder (`--whisper-model`) for `/v1/audio/transcriptions`.
  pub whisper_model: Option<String>,
  /// Largest audio upload in bytes (`--max-audio-bytes`, 25 MiB).
  pub max_audio_bytes: usize,
  /// This process is rank 0 of a tensor-parallel group (`mlxrs launch`;
  /// the distributed backend already initialised): the model is loaded
  /// sharded and every batch change is replayed on the ranks running
  /// [`follow`] ([`replica`]). The prompt cache is then off, and
  /// `--draft-model` and constrained decoding are refused.
  pub tensor_shard: Option<TensorShard>,
}

impl Default for ServerConfig {
  fn default() -> Self {
    ServerConfig {
      model: String::new(),
      dtype: None,
      host: "127.0.0.1".into(),
      port: 8080,
      max_tokens: 512,
      prompt_cache_size: 10,
      prompt_cache_bytes: None,
      decode_concurrency: 32,
      prompt_concurrency: 8,
      prefill_step_size: 2048,
      draft_model: None,
      num_draft_tokens: 3,
      chat_template_args: Map::new(),
      api_key: None,
      max_queue: 256,
      max_body_bytes: 4 << 20,
      memory_limit: None,
      model_id: None,
      chat_template: None,
      responses_store: 256,
      embedding_model: None,
      rerank_model: None,
      whisper_model: None,
      max_audio_bytes: 25 << 20,
      tensor_shard: None,
    }
  }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
  /// The model did not load.
  #[error("loading {model}: {message}")]
  Load {
    /// `--model`.
    model: String,
    /// Why.
    message: String,
  },
  /// A bad setting.
  #[error("{0}")]
  Config(String),
  /// Binding or serving failed.
  #[error("{0}")]
  Io(#[from] std::io::Error),
}

/// A running server (background threads); [`Server::shutdown`] stops it.
pub struct Server {
  addr: SocketAddr,
  stop: Option<tokio::sync::oneshot::Sender<()>>,
  http: Option<JoinHandle<Result<(), String>>>,
}

struct Loaded {
  tok: Tokenizer,
  vocab: i32,
  max_context: Option<usize>,
  memory: Option<Arc<memory_budget::MemoryBudget>>,
  vision: bool,
}

impl Server {
  /// Load the model on a new engine thread (and the auxiliary models of
  /// [`extras`] on theirs), bind `host:port` and serve in the background.
  /// An empty `model` serves the auxiliary models alone; a `model` folder
  /// that is an embedding / rerank / Whisper model is served as one. With
  /// `signals`, ctrl-c / SIGTERM also stop it.
  pub fn start(mut cfg: ServerConfig, signals: bool) -> Result<Server, ServeError> {
    extras::route_model_flag(&mut cfg)?;
    if cfg.decode_concurrency == 0 || cfg.prompt_concurrency == 0 || cfg.prefill_step_size == 0 {
      return Err(ServeError::Config(
        "--decode-concurrency, --prompt-concurrency and --prefill-step-size must be > 0".into(),
      ));
    }
    if cfg.max_tokens == 0 {
      return Err(ServeError::Config("--max-tokens must be > 0".into()));
    }
    if cfg.tensor_shard.is_some() {
      check_distributed(&cfg)?;
      cfg.prompt_cache_size = 0;
    }
    let listener = std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))?;
    listener.set_nonblocking(true)?;
    let metrics = Arc::new(Metrics::default());
    let extras = Arc::new(extras::Extras::load(&cfg, Arc::clone(&metrics))?);
    if cfg.model.is_empty() {
      if extras.is_empty() {
        return Err(ServeError::Config(
          "no model to serve: give --model, --embedding-model, --rerank-model or --whisper-model"
            .into(),
        ));
      }
      return spawn_http(listener, extras::standalone_router(extras), signals, None);
    }
    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Loaded, String>>();
    let engine_metrics = Arc::clone(&metrics);
    let ecfg_base = cfg.clone();
    let engine = std::thread::Builder::new()
      .name("mlxrs-engine".into())
      .spawn(move || {
        let cfg = ecfg_base;
        let (served, tok) = match load_model(&cfg) {
          Ok(l) => l,
          Err(e) => {
            let _ = ready_tx.send(Err(e));
            return;
          }
        };
        let vision = matches!(served, engine::Served::Vision(_));
        let m = served.lm();
        let draft = match &cfg.draft_model {
          None => None,
          Some(d) => {
            let dm = match mlxrs_lm::load(
              d,
              &LoadOptions {
                dtype: cfg.dtype,
                no_tokenizer: true,
              },
            ) {
              Ok(dm) => dm,
              Err(e) => {
                let _ = ready_tx.send(Err(format!("--draft-model {d}: {e}")));
                return;
              }
            };
            // Check the pair now (vocabulary, trimmable caches).
            let ok = mlxrs_lm::BatchGenerator::new(m.model.as_ref(), cfg.prefill_step_size, 0)
              .and_then(|mut b| b.set_draft(dm.model.as_ref(), cfg.num_draft_tokens));
            if let Err(e) = ok {
              let _ = ready_tx.send(Err(format!("--draft-model {d}: {e}")));
              return;
            }
            Some(dm)
          }
        };
        let max_width = m.max_context.unwrap_or(8192).max(1024);
        let memory = match probe_memory(&cfg, m, &tok) {
          Ok(b) => b,
          Err(e) => {
            let _ = ready_tx.send(Err(e));
            return;
          }
        };
        if vision && draft.is_some() {
          let _ = ready_tx.send(Err(
            "--draft-model is not supported with a vision-language model".into(),
          ));
          return;
        }
        let _ = ready_tx.send(Ok(Loaded {
          tok,
          vocab: m.model.vocab_size(),
          max_context: m.max_context,
          memory: memory.clone(),
          vision,
        }));
        let ecfg = EngineConfig {
          decode_concurrency: cfg.decode_concurrency,
          prompt_concurrency: cfg.prompt_concurrency,
          prompt_cache_size: cfg.prompt_cache_size,
          prompt_cache_bytes: cfg.prompt_cache_bytes,
          prefill_step_size: cfg.prefill_step_size,
          max_width,
          memory,
          num_draft_tokens: cfg.num_draft_tokens,
          max_context: m.max_context,
          replicate: cfg.tensor_shard.is_some(),
        };
        engine::run(served, draft, job_rx, ecfg, engine_metrics);
      })?;
    let loaded = match ready_rx.recv() {
      Ok(Ok(l)) => l,
      Ok(Err(message)) => {
        let _ = engine.join();
        return Err(ServeError::Load {
          model: cfg.model.clone(),
          message,
        });
      }
      Err(_) => {
        let _ = engine.join();
        return Err(ServeError::Load {
          model: cfg.model.clone(),
          message: "the engine thread stopped while loading".into(),
        });
      }
    };
    let tool_format = detect_tool_format(&loaded.tok, cfg.chat_template.as_deref());
    let state = Arc::new(AppState {
      tx: job_tx,
      guidance: structured::GuidanceCell::new(loaded.tok.clone(), loaded.vocab.max(0) as usize),
      tok: loaded.tok,
      defaults: api::Defaults {
        max_tokens: cfg.max_tokens,
        chat_template_args: cfg.chat_template_args.clone(),
        vocab: loaded.vocab,
        max_context: loaded.max_context,
        chat_template: cfg.chat_template.clone(),
        tool_format,
        vision: loaded.vision,
        distributed: cfg.tensor_shard.is_some(),
      },
      model_id: cfg.model_id.clone().unwrap_or_else(|| cfg.model.clone()),
      api_key: cfg.api_key.clone(),
      max_queue: cfg.max_queue,
      metrics,
      max_body: cfg.max_body_bytes,
      memory: loaded.memory,
      created: std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0),
      counter: AtomicU64::new(0),
      responses: responses::Store::new(cfg.responses_store),
      extras: Arc::clone(&extras),
    });
    let app = http::router(state).merge(extras::router(extras));
    spawn_http(listener, app, signals, Some(engine))
  }

  /// The bound address.
  pub fn addr(&self) -> SocketAddr {
    self.addr
  }

  /// Stop accepting, let open requests end, stop the engine, and wait.
  pub fn shutdown(mut self) -> Result<(), ServeError> {
    if let Some(s) = self.stop.take() {
      let _ = s.send(());
    }
    self.wait()
  }

  /// Wait until the server stops (a signal, with `signals`).
  pub fn wait(&mut self) -> Result<(), ServeError> {
    match self.http.take().map(JoinHandle::join) {
      Some(Ok(Err(e))) => Err(ServeError::Config(e)),
      Some(Err(_)) => Err(ServeError::Config("the HTTP thread panicked".into())),
      _ => Ok(()),
    }
  }
}

impl Drop for Server {
  fn drop(&mut self) {
    if let Some(s) = self.stop.take() {
      let _ = s.send(());
    }
    let _ = self.wait();
  }
}

/// What serving under the launcher refuses (the same checks on every
/// rank, so all of them stop with the reason).
fn check_distributed(cfg: &ServerConfig) -> Result<(), ServeError> {
  if cfg.draft_model.is_some() {
    return Err(ServeError::Config(
      "--draft-model: speculative decoding is not available when serving under `mlxrs launch`"
        .into(),
    ));
  }
  if cfg.model.is_empty() {
    return Err(ServeError::Config(
      "serving under `mlxrs launch` needs a language model (--model); embedding, rerank and \
       Whisper models are served by one process"
        .into(),
    ));
  }
  Ok(())
}

/// Set the memory limit and load `--model` (sharded under the launcher):
/// the start-up every rank runs. A vision-language model folder loads with
/// `mlxrs_vlm::load_dir` (one process only), anything else as a language
/// model (folder, Hub id or GGUF file).
fn load_model(cfg: &ServerConfig) -> Result<(engine::Served, Tokenizer), String> {
  if let Some(l) = cfg.memory_limit {
    mlxrs_core::memory::set_memory_limit(l)
      .map_err(|e| format!("setting the memory limit: {e}"))?;
  }
  let dir = mlxrs_lm::resolve_model(&cfg.model)
    .ok()
    .filter(|p| p.is_dir());
  let served = match dir.filter(|d| mlxrs_vlm::is_vlm_dir(d).unwrap_or(false)) {
    Some(_) if cfg.tensor_shard.is_some() => {
      return Err(
        "a vision-language model cannot be served under mlxrs launch (one process only)".into(),
      );
    }
    Some(dir) => engine::Served::Vision(Box::new(
      mlxrs_vlm::load_dir(&dir, &mlxrs_vlm::LoadOptions { dtype: cfg.dtype })
        .map_err(|e| e.to_string())?,
    )),
    None => engine::Served::Text(Box::new(
      mlxrs_lm::load_sharded(
        &cfg.model,
        &LoadOptions {
          dtype: cfg.dtype,
          no_tokenizer: false,
        },
        cfg.tensor_shard,
      )
      .map_err(|e| e.to_string())?,
    )),
  };
  let Some(tok) = served.lm().tokenizer.clone() else {
    return Err("the model has no tokenizer".into());
  };
  Ok((served, tok))
}

/// `--memory-limit-gb`'s KV-cache measurement (a forward pass: every rank
/// runs it).
fn probe_memory(
  cfg: &ServerConfig,
  m: &LoadedModel,
  tok: &Tokenizer,
) -> Result<Option<Arc<memory_budget::MemoryBudget>>, String> {
  let Some(limit) = cfg.memory_limit else {
    return Ok(None);
  };
  let probe_id = tok.pad_token_id().or(tok.eos_token_id()).unwrap_or(0) as i32;
  match memory_budget::MemoryBudget::probe(m.model.as_ref(), limit, probe_id) {
    Ok(b) if b.weights > limit => Err(format!(
      "the weights alone ({:.3} GB) pass --memory-limit-gb ({:.3} GB)",
      b.weights as f64 / 1e9,
      limit as f64 / 1e9
    )),
    Ok(b) => Ok(Some(Arc::new(b))),
    Err(e) => Err(format!("measuring the KV cache size: {e}")),
  }
}

/// A follower rank of `mlxrs serve` under `mlxrs launch` (python
/// `mlx_lm.server` distributed mode, ranks > 0): load this rank's shard of
/// the model as rank 0 does, then apply rank 0's batch operations until it
/// stops ([`replica`]). `cfg.tensor_shard` must be set and the distributed
/// backend initialised. Runs no HTTP server. Returns when rank 0's engine
/// stops; an error when the model does not load or the other ranks went
/// away.
pub fn follow(mut cfg: ServerConfig) -> Result<(), ServeError> {
  extras::route_model_flag(&mut cfg)?;
  if cfg.tensor_shard.is_none() {
    return Err(ServeError::Config(
      "follow: this process is not part of a tensor-parallel group".into(),
    ));
  }
  check_distributed(&cfg)?;
  let load_err = |message: String| ServeError::Load {
    model: cfg.model.clone(),
    message,
  };
  let (served, tok) = load_model(&cfg).map_err(load_err)?;
  let m = served.lm();
  probe_memory(&cfg, m, &tok).map_err(load_err)?;
  let pad = tok.pad_token_id().or(tok.eos_token_id()).unwrap_or(0) as i32;
  let mut batch = replica::new_generator(m.model.as_ref(), cfg.prefill_step_size, pad)
    .map_err(|e| ServeError::Config(format!("the engine could not start: {e}")))?;
  replica::follow_ops(&mut batch).map_err(|e| ServeError::Config(format!("following rank 0: {e}")))
}

/// The tool-call format of the template in use (`--chat-template` or the
/// checkpoint's), else of the checkpoint's `model_type`.
fn detect_tool_format(tok: &Tokenizer, chat_template: Option<&str>) -> Option<tools::ToolFormat> {
  let source = match (chat_template, tok.chat_templates()) {
    (Some(t), _) => t.to_string(),
    (None, Some(mlxrs_lm::ChatTemplates::Single(s))) => s.clone(),
    (None, Some(mlxrs_lm::ChatTemplates::Named(m))) => {
      m.values().cloned().collect::<Vec<_>>().join("\n")
    }
    (None, None) => String::new(),
  };
  let model_type = std::fs::read_to_string(tok.dir().join("config.json"))
    .ok()
    .and_then(|s| serde_json::from_str::<Value>(&s).ok())
    .and_then(|v| {
      v.get("model_type")
        .and_then(Value::as_str)
        .map(String::from)
    });
  tools::ToolFormat::detect(&source, model_type.as_deref())
}

/// Serve `app` on `listener` from a new thread with its own tokio runtime
/// until stopped (a signal with `signals`); then join `engine`.
fn spawn_http(
  listener: std::net::TcpListener,
  app: axum::Router,
  signals: bool,
  engine: Option<JoinHandle<()>>,
) -> Result<Server, ServeError> {
  let addr = listener.local_addr()?;
  let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
  let http = std::thread::Builder::new()
    .name("mlxrs-http".into())
    .spawn(move || -> Result<(), String> {
      let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
      let res = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        axum::serve(listener, app)
          .with_graceful_shutdown(async move {
            if signals {
              tokio::select! {
                _ = stop_rx => {},
                _ = shutdown_signal() => {},
              }
            } else {
              let _ = stop_rx.await;
            }
          })
          .await
          .map_err(|e| e.to_string())
      });
      // Dropping the runtime drops the state and with it the engine's
      // channel: the engine finishes and exits.
      drop(rt);
      if let Some(engine) = engine {
        let _ = engine.join();
      }
      res
    })?;
  Ok(Server {
    addr,
    stop: Some(stop_tx),
    http: Some(http),
  })
}

async fn shutdown_signal() {
  #[cfg(unix)]
  {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
      Ok(mut term) => {
        tokio::select! {
          _ = tokio::signal::ctrl_c() => {},
          _ = term.recv() => {},
        }
      }
      Err(_) => {
        let _ = tokio::signal::ctrl_c().await;
      }
    }
  }
  #[cfg(not(unix))]
  {
    let _ = tokio::signal::ctrl_c().await;
  }
}

/// Serve until ctrl-c or SIGTERM (the `mlxrs serve` command).
pub fn run(cfg: ServerConfig) -> Result<(), ServeError> {
  let mut s = Server::start(cfg, true)?;
  eprintln!(
    "mlxrs serve: listening on http://{} (OpenAI API under /v1)",
    s.addr()
  );
  s.wait()
}
