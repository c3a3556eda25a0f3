//! `Array` is `Send` and a clone shares the MLX graph node, so clones of one
//! lazy graph can be evaluated from several threads at once. MLX's
//! `eval_impl` rewrites the shared nodes without a lock, and MLX >= 0.31
//! ties a lazy node to the thread whose stream recorded it; mlxrs-core
//! serializes every evaluating call behind one process-wide lock
//! (docs/threading.md). These tests evaluate clones of shared lazy graphs
//! from many threads, many times: the owning thread always gets the
//! single-threaded result, the others get it or MLX's clean "no stream"
//! error (never a crash, a hang or a wrong value), and once evaluated the
//! values read the same from every thread.

use std::sync::{Arc, Barrier};
use std::thread;

use mlxrs_core::{Array, Dtype, ops, transforms};

/// A lazy graph of a few dozen ops over one input, whose two outputs share
/// intermediate nodes (so two evaluations meet inside the graph).
fn graph(seed: f32) -> (Array, Array) {
  let n = 64;
  let x = ops::arange(0.0, f64::from(n * n), 1.0, Dtype::Float32).unwrap();
  let x = ops::reshape(&x, &[n, n]).unwrap();
  let x = ops::multiply(&x, &Array::scalar(1e-4f32 * seed)).unwrap();
  let mut h = x.clone();
  for _ in 0..12 {
    h = ops::tanh(&ops::matmul(&h, &x).unwrap()).unwrap();
  }
  let a = ops::sum_axis(&ops::exp(&h).unwrap(), -1, false).unwrap();
  let b = ops::mean_axis(&ops::sin(&h).unwrap(), 0, false).unwrap();
  (a, b)
}

fn values(a: &Array) -> Vec<f32> {
  a.clone().to_vec::<f32>().unwrap()
}

/// One worker's attempt to evaluate its clones while the owner does.
fn attempt(kind: usize, a: &mut Array, b: &mut Array) -> Result<(), String> {
  let r = match kind % 4 {
    0 => a.eval(),
    1 => transforms::eval(&[a.clone(), b.clone()]),
    2 => transforms::async_eval(std::slice::from_ref(b)).and_then(|_| b.eval()),
    _ => a.to_vec::<f32>().map(drop),
  };
  r.map_err(|e| e.to_string())
}

#[test]
fn clones_of_one_lazy_graph_evaluated_from_many_threads() {
  let (a0, b0) = graph(1.0);
  let (want_a, want_b) = (values(&a0), values(&b0));
  const WORKERS: usize = 4;
  let (mut ok, mut refused) = (0, 0);
  for round in 0..40 {
    let (mut a, mut b) = graph(1.0);
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let done = Arc::new(Barrier::new(WORKERS + 1));
    let workers: Vec<_> = (0..WORKERS)
      .map(|t| {
        let (mut a, mut b) = (a.clone(), b.clone());
        let (start, done) = (start.clone(), done.clone());
        thread::spawn(move || {
          start.wait();
          let first = attempt(t + round, &mut a, &mut b);
          done.wait();
          // The owner has evaluated the shared nodes: every clone reads them.
          (first, values(&a), values(&b))
        })
      })
      .collect();
    start.wait();
    if round % 2 == 0 {
      transforms::eval(&[a.clone(), b.clone()]).unwrap();
    } else {
      a.eval().unwrap();
      b.eval().unwrap();
    }
    done.wait();
    assert_eq!(values(&a), want_a, "round {round}: owner's a");
    assert_eq!(values(&b), want_b, "round {round}: owner's b");
    for w in workers {
      let (first, ga, gb) = w.join().expect("a worker thread panicked");
      match first {
        Ok(()) => ok += 1,
        Err(e) if e.contains("no Stream") => refused += 1,
        Err(e) => panic!("round {round}: unexpected error {e}"),
      }
      assert_eq!(ga, want_a, "round {round}: a read on a worker");
      assert_eq!(gb, want_b, "round {round}: b read on a worker");
    }
  }
  assert_eq!(ok + refused, 40 * WORKERS);
}

#[test]
fn independent_graphs_evaluate_on_many_threads() {
  let (want, _) = graph(2.0);
  let want = values(&want);
  let handles: Vec<_> = (0..6)
    .map(|_| {
      thread::spawn(|| {
        (0..10)
          .map(|_| {
            let (a, _) = graph(2.0);
            values(&a)
          })
          .collect::<Vec<_>>()
      })
    })
    .collect();
  for h in handles {
    for got in h.join().unwrap() {
      assert_eq!(got, want);
    }
  }
}
