//! The models served next to (or instead of) the language model: a
//! sentence-embedding model (`--embedding-model`, `POST /v1/embeddings`),
//! a cross-encoder reranker (`--rerank-model`, `POST /v1/rerank`) and
//! Whisper (`--whisper-model`, `POST /v1/audio/transcriptions`), each on
//! its own thread ([`ModelWorker`]), plus the chat page at `/`.
//!
//! A `--model` folder that is one of these kinds (see [`model_kind`]) is
//! served as that kind; a server may run without a language model.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mlxrs_audio::Whisper;
use mlxrs_embed::{CrossEncoder, Embedder};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::worker::ModelWorker;
use crate::{ServeError, ServerConfig};

/// What a model folder holds, judged from its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
  /// A causal language model (the default; also any non-folder id).
  Language,
  /// A sentence-transformers / encoder folder (`modules.json`, or an
  /// encoder-only `model_type`).
  Embedding,
  /// A `*ForSequenceClassification` cross-encoder.
  Rerank,
  /// Whisper (Hugging Face or CTranslate2 folder).
  Whisper,
}

/// The kind of the model at `path` (python: none; mlx_lm.server serves
/// language models only). A path that is not a local folder is a
/// [`ModelKind::Language`] repo id.
pub fn model_kind(path: &str) -> ModelKind {
  let dir = Path::new(path);
  if !dir.is_dir() {
    return ModelKind::Language;
  }
  let cfg: Value = std::fs::read(dir.join("config.json"))
    .ok()
    .and_then(|b| serde_json::from_slice(&b).ok())
    .unwrap_or(Value::Null);
  let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
  let archs: Vec<&str> = cfg
    .get("architectures")
    .and_then(Value::as_array)
    .map(|a| a.iter().filter_map(Value::as_str).collect())
    .unwrap_or_default();
  if model_type == "whisper"
    || (dir.join("model.bin").is_file() && cfg.get("alignment_heads").is_some())
  {
    return ModelKind::Whisper;
  }
  if archs
    .iter()
    .any(|a| a.ends_with("ForSequenceClassification"))
  {
    return ModelKind::Rerank;
  }
  if dir.join("modules.json").is_file()
    || [
      "bert",
      "roberta",
      "xlm-roberta",
      "camembert",
      "modernbert",
      "nomic_bert",
    ]
    .contains(&model_type)
  {
    return ModelKind::Embedding;
  }
  ModelKind::Language
}

/// Move a `--model` that is not a language model to the flag of its kind.
pub fn route_model_flag(cfg: &mut ServerConfig) -> Result<(), ServeError> {
  if cfg.model.is_empty() {
    return Ok(());
  }
  let (slot, flag) = match model_kind(&cfg.model) {
    ModelKind::Language => return Ok(()),
    ModelKind::Embedding => (&mut cfg.embedding_model, "--embedding-model"),
    ModelKind::Rerank => (&mut cfg.rerank_model, "--rerank-model"),
    ModelKind::Whisper => (&mut cfg.whisper_model, "--whisper-model"),
  };
  if slot.is_some() {
    return Err(ServeError::Config(format!(
      "--model {} is not a language model but the server already has {flag}; give it only once",
      cfg.model
    )));
  }
  *slot = Some(std::mem::take(&mut cfg.model));
  Ok(())
}

/// What handlers need to know of the embedding model.
#[derive(Debug, Clone)]
pub struct EmbedInfo {
  /// Output width.
  pub dim: usize,
  /// Whether its vectors are unit length.
  pub normalizes: bool,
}

/// A loaded auxiliary model: its id (the flag's value) and its worker.
pub struct Served<T, I = ()> {
  /// The id `/v1/models` lists (the folder given).
  pub id: String,
  /// The model's thread.
  pub worker: ModelWorker<T>,
  /// Facts read at load.
  pub info: I,
}

/// The auxiliary models and the settings their endpoints use.
pub struct Extras {
  /// `--embedding-model`.
  pub embed: Option<Served<Embedder, EmbedInfo>>,
  /// `--rerank-model`.
  pub rerank: Option<Served<CrossEncoder>>,
  /// `--whisper-model`.
  pub whisper: Option<Served<Whisper>>,
  /// `--api-key`.
  pub api_key: Option<String>,
  /// `--max-body-bytes` (JSON bodies).
  pub max_body: usize,
  /// `--max-audio-bytes` (uploads).
  pub max_audio: usize,
  /// Start time (unix seconds).
  pub created: u64,
  /// Response id counter.
  pub counter: AtomicU64,
  /// Metrics (shared with the language model's endpoints).
  pub metrics: Arc<Metrics>,
  /// Counters of the auxiliary endpoints.
  pub aux_metrics: AuxMetrics,
}

/// Counters of the auxiliary endpoints, rendered after [`Metrics`] in
/// `/metrics`.
#[derive(Default)]
pub struct AuxMetrics {
  /// `[embeddings, rerank, transcriptions]` answered with 200.
  pub ok: [AtomicU64; 3],
  /// The same, answered with an error.
  pub failed: [AtomicU64; 3],
  /// Texts or token rows embedded.
  pub embedded_inputs: AtomicU64,
  /// Milliseconds of audio transcribed.
  pub audio_ms: AtomicU64,
}

/// The auxiliary endpoints, as indices of [`AuxMetrics`] counters.
#[derive(Debug, Clone, Copy)]
pub enum AuxEndpoint {
  /// `/v1/embeddings`.
  Embeddings = 0,
  /// `/v1/rerank`.
  Rerank = 1,
  /// `/v1/audio/*`.
  Transcriptions = 2,
}

impl AuxMetrics {
  /// Count one answer of `ep`.
  pub fn count(&self, ep: AuxEndpoint, ok: bool) {
    let c = if ok { &self.ok } else { &self.failed };
    c[ep as usize].fetch_add(1, Ordering::Relaxed);
  }

  /// Prometheus text: `mlxrs_aux_requests_total{endpoint,outcome}`,
  /// `mlxrs_embedding_inputs_total`, `mlxrs_audio_seconds_total`.
  pub fn render(&self) -> String {
    let mut s = String::from(
      "# HELP mlxrs_aux_requests_total Embedding, rerank and audio requests, by endpoint and outcome.\n# TYPE mlxrs_aux_requests_total counter\n",
    );
    for (i, ep) in ["embeddings", "rerank", "transcriptions"]
      .iter()
      .enumerate()
    {
      for (outcome, c) in [("ok", &self.ok[i]), ("failed", &self.failed[i])] {
        s.push_str(&format!(
          "mlxrs_aux_requests_total{{endpoint=\"{ep}\",outcome=\"{outcome}\"}} {}\n",
          c.load(Ordering::Relaxed)
        ));
      }
    }
    s.push_str(&format!(
      "# HELP mlxrs_embedding_inputs_total Texts or token rows embedded.\n# TYPE mlxrs_embedding_inputs_total counter\nmlxrs_embedding_inputs_total {}\n",
      self.embedded_inputs.load(Ordering::Relaxed)
    ));
    s.push_str(&format!(
      "# HELP mlxrs_audio_seconds_total Seconds of audio transcribed.\n# TYPE mlxrs_audio_seconds_total counter\nmlxrs_audio_seconds_total {}\n",
      self.audio_ms.load(Ordering::Relaxed) as f64 / 1000.0
    ));
    s
  }
}

fn load_err(model: &str, message: String) -> ServeError {
  ServeError::Load {
    model: model.to_string(),
    message,
  }
}

impl Extras {
  /// Load the models `cfg` names, each on its own thread.
  pub fn load(cfg: &ServerConfig, metrics: Arc<Metrics>) -> Result<Extras, ServeError> {
    let embed = match &cfg.embedding_model {
      None => None,
      Some(p) => {
        let (itx, irx) = std::sync::mpsc::channel();
        let path = p.clone();
        let worker = ModelWorker::start("embedding", cfg.max_queue, move || {
          let e = Embedder::load(&path).map_err(|e| e.to_string())?;
          let _ = itx.send(EmbedInfo {
            dim: e.dim(),
            normalizes: e.normalizes(),
          });
          Ok(e)
        })
        .map_err(|m| load_err(p, m))?;
        let info = irx
          .recv()
          .map_err(|_| load_err(p, "the embedding thread stopped".into()))?;
        Some(Served {
          id: p.clone(),
          worker,
          info,
        })
      }
    };
    let rerank = match &cfg.rerank_model {
      None => None,
      Some(p) => {
        let path = p.clone();
        let worker = ModelWorker::start("rerank", cfg.max_queue, move || {
          let ce = CrossEncoder::load(&path).map_err(|e| e.to_string())?;
          if ce.num_labels() != 1 {
            return Err(format!(
              "a reranker needs one output label; this model has {}",
              ce.num_labels()
            ));
          }
          Ok(ce)
        })
        .map_err(|m| load_err(p, m))?;
        Some(Served {
          id: p.clone(),
          worker,
          info: (),
        })
      }
    };
    let whisper = match &cfg.whisper_model {
      None => None,
      Some(p) => {
        let path = p.clone();
        let worker = ModelWorker::start("whisper", cfg.max_queue, move || {
          Whisper::load(&path).map_err(|e| e.to_string())
        })
        .map_err(|m| load_err(p, m))?;
        Some(Served {
          id: p.clone(),
          worker,
          info: (),
        })
      }
    };
    Ok(Extras {
      embed,
      rerank,
      whisper,
      api_key: cfg.api_key.clone(),
      max_body: cfg.max_body_bytes,
      max_audio: cfg.max_audio_bytes,
      created: now(),
      counter: AtomicU64::new(0),
      metrics,
      aux_metrics: AuxMetrics::default(),
    })
  }

  /// Whether no auxiliary model is loaded.
  pub fn is_empty(&self) -> bool {
    self.embed.is_none() && self.rerank.is_none() && self.whisper.is_none()
  }

  /// `/v1/models` entries of the auxiliary models; `kind` (not in
  /// OpenAI's schema) says which endpoint serves each.
  pub fn model_entries(&self) -> Vec<Value> {
    let entry = |id: &str, kind: &str| json!({"id": id, "object": "model", "created": self.created, "owned_by": "mlxrs", "kind": kind});
    let mut v = Vec::new();
    if let Some(e) = &self.embed {
      v.push(entry(&e.id, "embedding"));
    }
    if let Some(r) = &self.rerank {
      v.push(entry(&r.id, "rerank"));
    }
    if let Some(w) = &self.whisper {
      v.push(entry(&w.id, "transcription"));
    }
    v
  }

  pub(crate) fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
    crate::http::check_bearer(self.api_key.as_deref(), headers)
  }

  pub(crate) fn id(&self, prefix: &str) -> String {
    format!(
      "{prefix}-{}-{}",
      self.created,
      self.counter.fetch_add(1, Ordering::Relaxed)
    )
  }
}

pub(crate) fn now() -> u64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map(|d| d.as_secs())
    .unwrap_or(0)
}

/// The routes of the auxiliary models and the page (merged into the
/// language model's router, or served alone by [`standalone_router`]).
pub fn router(x: Arc<Extras>) -> Router {
  let audio_limit = DefaultBodyLimit::disable();
  Router::new()
    .route("/", get(crate::page::index))
    .route("/chat.js", get(crate::page::script))
    .route("/chat.css", get(crate::page::style))
    .route("/v1/embeddings", post(crate::embeddings::embeddings))
    .route("/embeddings", post(crate::embeddings::embeddings))
    .route("/v1/rerank", post(crate::embeddings::rerank))
    .route("/rerank", post(crate::embeddings::rerank))
    .route("/v2/rerank", post(crate::embeddings::rerank))
    .route(
      "/v1/audio/transcriptions",
      post(crate::audio::transcriptions).layer(audio_limit),
    )
    .route(
      "/v1/audio/translations",
      post(crate::audio::translations).layer(audio_limit),
    )
    .with_state(x)
}

/// The whole router of a server without a language model: the auxiliary
/// routes, `/health`, `/metrics`, `/v1/models`, and a 404 naming the
/// missing model for the text-generation routes.
pub fn standalone_router(x: Arc<Extras>) -> Router {
  let own = Router::new()
    .route(
      "/health",
      get(|| async { axum::Json(json!({"status": "ok"})) }),
    )
    .route("/metrics", get(standalone_metrics))
    .route("/v1/models", get(standalone_models))
    .route("/v1/chat/completions", post(no_lm))
    .route("/chat/completions", post(no_lm))
    .route("/v1/completions", post(no_lm))
    .fallback(not_found)
    .with_state(Arc::clone(&x));
  own.merge(router(x))
}

async fn standalone_metrics(State(x): State<Arc<Extras>>) -> Response {
  (
    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
    x.metrics.render() + &x.aux_metrics.render(),
  )
    .into_response()
}

async fn standalone_models(State(x): State<Arc<Extras>>, headers: HeaderMap) -> Response {
  if let Err(e) = x.check_auth(&headers) {
    return e.into_response();
  }
  axum::Json(json!({"object": "list", "data": x.model_entries()})).into_response()
}

async fn no_lm() -> Response {
  ApiError::new(
    StatusCode::NOT_FOUND,
    "invalid_request_error",
    "no language model is loaded: start the server with --model DIR (a causal LM) to use this endpoint",
  )
  .into_response()
}

async fn not_found() -> Response {
  ApiError::new(
    StatusCode::NOT_FOUND,
    "invalid_request_error",
    "no such endpoint; see /v1/models, /v1/embeddings, /v1/rerank, /v1/audio/transcriptions, /health, /metrics",
  )
  .into_response()
}

/// The 404 of an endpoint whose model is not loaded.
pub(crate) fn not_loaded(what: &str, flag: &str) -> ApiError {
  ApiError::new(
    StatusCode::NOT_FOUND,
    "invalid_request_error",
    format!("no {what} model is loaded: start the server with {flag} DIR"),
  )
}
