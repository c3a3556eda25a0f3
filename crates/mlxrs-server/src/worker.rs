//! A model that lives on its own thread (MLX arrays and default streams are
//! per thread): handlers send it closures and await their results, so model
//! work never runs on the async runtime. Used by the embedding, rerank and
//! Whisper endpoints (the language model has its own batching engine,
//! [`crate::engine`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;

use crate::error::ApiError;

type Job<T> = Box<dyn FnOnce(&T) + Send>;

/// A model loaded and run on a dedicated thread, with a bounded queue.
pub struct ModelWorker<T> {
  tx: std::sync::mpsc::Sender<Job<T>>,
  pending: Arc<AtomicUsize>,
  max_pending: usize,
  what: &'static str,
}

impl<T: 'static> ModelWorker<T> {
  /// Start a thread named `mlxrs-<what>` that runs `load`, then the jobs
  /// sent by [`ModelWorker::run`] one at a time until the worker is
  /// dropped. Returns `load`'s error if it fails. At most `max_pending`
  /// jobs wait or run at once; more are refused with 429.
  pub fn start<L>(what: &'static str, max_pending: usize, load: L) -> Result<Self, String>
  where
    L: FnOnce() -> Result<T, String> + Send + 'static,
  {
    let (tx, rx) = std::sync::mpsc::channel::<Job<T>>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
      .name(format!("mlxrs-{what}"))
      .spawn(move || {
        let model = match catch_unwind(AssertUnwindSafe(load)) {
          Ok(Ok(m)) => m,
          Ok(Err(e)) => {
            let _ = ready_tx.send(Err(e));
            return;
          }
          Err(_) => {
            let _ = ready_tx.send(Err("loading panicked".into()));
            return;
          }
        };
        let _ = ready_tx.send(Ok(()));
        while let Ok(job) = rx.recv() {
          job(&model);
        }
      })
      .map_err(|e| format!("starting the {what} thread: {e}"))?;
    match ready_rx.recv() {
      Ok(Ok(())) => Ok(ModelWorker {
        tx,
        pending: Arc::new(AtomicUsize::new(0)),
        max_pending: max_pending.max(1),
        what,
      }),
      Ok(Err(e)) => Err(e),
      Err(_) => Err(format!("the {what} thread stopped while loading")),
    }
  }

  /// Run `f` on the model's thread and wait for its result. A panic in
  /// `f` becomes a 500; a full queue a 429.
  pub async fn run<R, F>(&self, f: F) -> Result<R, ApiError>
  where
    R: Send + 'static,
    F: FnOnce(&T) -> R + Send + 'static,
  {
    let q = self.pending.fetch_add(1, Ordering::Relaxed);
    let pending = Arc::clone(&self.pending);
    let guard = Pending(pending);
    if q >= self.max_pending {
      return Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        format!(
          "the {} model is busy ({q} requests waiting, at most {}); retry later",
          self.what, self.max_pending
        ),
      ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job<T> = Box::new(move |m: &T| {
      let r = catch_unwind(AssertUnwindSafe(|| f(m)));
      // The slot frees when the job ends, even if the client went away.
      drop(guard);
      let _ = tx.send(r);
    });
    if self.tx.send(job).is_err() {
      return Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("the {} model has stopped", self.what),
      ));
    }
    match rx.await {
      Ok(Ok(r)) => Ok(r),
      Ok(Err(_)) => Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        format!("the {} model panicked on this request", self.what),
      )),
      Err(_) => Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("the {} model has stopped", self.what),
      )),
    }
  }
}

/// Frees one queue slot when dropped.
struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
  fn drop(&mut self) {
    self.0.fetch_sub(1, Ordering::Relaxed);
  }
}
