//! One process-wide lock around every MLX call that evaluates a graph
//! (`eval`, `async_eval`, reads that evaluate, saves and exports).
//!
//! [`Array`](crate::Array) is `Send` and a clone shares the MLX graph node,
//! so clones of one lazy graph can reach several threads. MLX's
//! `eval_impl` walks and rewrites the shared nodes (status, events,
//! `detach`) without synchronization, and MLX >= 0.31 additionally ties a
//! lazy node to the thread whose stream it was built on (another thread's
//! evaluation fails with "There is no Stream(...) in current thread").
//! Holding this lock for the whole MLX call makes two such evaluations run
//! one after the other: the owner's succeeds, the other's is a clean
//! error, and neither sees the graph half-rewritten. mlx-swift does the same
//! (its `evalLock`). Graph building stays lock-free (it only reads a node's
//! shape, dtype and flags). `docs/threading.md` has the whole picture.
//!
//! The lock is re-entrant per thread (a Rust closure that MLX calls while
//! exporting may evaluate), and a panic while it is held does not poison it
//! (it guards no data).

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

static EVAL: Mutex<()> = Mutex::new(());

thread_local! {
  static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Held for the duration of one evaluating MLX call (not `Send`).
pub(crate) struct EvalGuard {
  _outer: Option<MutexGuard<'static, ()>>,
}

/// Take the evaluation lock (a no-op when this thread already holds it).
pub(crate) fn eval_guard() -> EvalGuard {
  let depth = DEPTH.get();
  let outer = (depth == 0).then(|| EVAL.lock().unwrap_or_else(|p| p.into_inner()));
  DEPTH.set(depth + 1);
  EvalGuard { _outer: outer }
}

impl Drop for EvalGuard {
  fn drop(&mut self) {
    DEPTH.set(DEPTH.get().saturating_sub(1));
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn reentrant_and_released() {
    {
      let _a = eval_guard();
      let _b = eval_guard();
      assert_eq!(DEPTH.get(), 2);
    }
    assert_eq!(DEPTH.get(), 0);
    // Another thread can take it once this one let go.
    std::thread::spawn(|| drop(eval_guard())).join().unwrap();
  }
}
