//! A thread that queues graphs built on other threads (no Python twin:
//! mlx-lm builds and queues each decode step on its one thread).
//!
//! On a GPU, queueing a step (`async_eval`: MLX walks the graph and encodes
//! every kernel) costs the host more than building it, and both run on the
//! decoding thread one after the other while the device waits. With an
//! [`EvalThread`] the decoding thread builds step `n + 2` while this thread
//! queues step `n + 1`. Measured on an H100 (docs/performance.md, session
//! 12) that was 0.98x of one thread: there building is a fifth of a step's
//! host time and the two threads slow each other, so `mlxrs-lm` uses it only
//! on request (`TokenGenerator::set_eval_thread`, `MLXRS_EVAL_THREAD=1`).
//!
//! How the two threads share MLX soundly (`docs/threading.md`):
//! - The graph is built on this thread's stream ([`EvalThread::stream`],
//!   with [`crate::stream::with_default_stream`]), because MLX >= 0.31
//!   evaluates a stream's nodes only on the thread that owns the stream.
//! - Queueing takes the process-wide evaluation lock, as every evaluation
//!   does; building a graph only reads the shape and dtype of the nodes it
//!   starts from, which evaluation never changes.
//! - The builder reads its results through [`Ready::read`] without the
//!   lock, so it does not wait behind the next step's queueing. That read
//!   touches only the node it reads, which must be no direct input of an
//!   evaluation running meanwhile: [`EvalThread::queue`] makes its own
//!   view of each array to read, queued with the rest and never handed
//!   out, so no later graph can take it as an input.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::array::Array;
use crate::device::{Device, DeviceType};
use crate::dtype::ArrayElement;
use crate::error::{Error, Result};
use crate::stream::Stream;

/// A queueing job: the arrays to `async_eval`, and where to say it is done.
struct Job {
  arrays: Vec<Array>,
  done: SyncSender<Result<Duration>>,
}

/// A process-wide thread per device that queues ([`crate::async_eval`])
/// the graphs sent to it, in order.
pub struct EvalThread {
  jobs: Mutex<SyncSender<Job>>,
  stream: Mutex<Stream>,
}

/// A job sent to an [`EvalThread`]: [`Queued::wait`] returns once its
/// arrays are queued (not computed).
pub struct Queued {
  done: Receiver<Result<Duration>>,
  reads: Vec<Array>,
}

impl Queued {
  /// Wait until the job's arrays are queued on the device.
  pub fn wait(self) -> Result<Ready> {
    let took = self
      .done
      .recv()
      .map_err(|_| Error::Mlx("the evaluation thread stopped".into()))??;
    Ok(Ready {
      reads: self.reads,
      took,
    })
  }
}

/// A queued job: its arrays to read, and how long queueing took.
pub struct Ready {
  reads: Vec<Array>,
  /// The time `async_eval` took on the evaluation thread.
  pub took: Duration,
}

impl Ready {
  /// The values of the job's `i`-th array to read (see
  /// [`EvalThread::queue`]), once computed: [`Array::to_vec`] without the
  /// evaluation lock, so it does not wait behind another thread's
  /// evaluation.
  pub fn read<T: ArrayElement>(&self, i: usize) -> Result<Vec<T>> {
    let mut a = self
      .reads
      .get(i)
      .ok_or_else(|| Error::InvalidArgument(format!("no array {i} to read in this job")))?
      .clone();
    // SAFETY: `a` is this job's own view, made in `queue` and never handed
    // out, so no graph takes it as an input; the job is queued (`wait`).
    unsafe { a.copy_queued() }
  }
}

static GPU: OnceLock<std::result::Result<EvalThread, String>> = OnceLock::new();
static CPU: OnceLock<std::result::Result<EvalThread, String>> = OnceLock::new();

impl EvalThread {
  /// The evaluation thread of `device`'s kind, started on first use and
  /// kept for the life of the process (its stream, and MLX's per-thread
  /// state for it, must outlive every array queued there).
  pub fn shared(device: Device) -> Result<&'static EvalThread> {
    let cell = match device.kind {
      DeviceType::Gpu => &GPU,
      DeviceType::Cpu => &CPU,
    };
    cell
      .get_or_init(|| EvalThread::start(device).map_err(|e| e.to_string()))
      .as_ref()
      .map_err(|e| Error::Mlx(format!("cannot start the evaluation thread: {e}")))
  }

  fn start(device: Device) -> Result<EvalThread> {
    let (jobs, rx) = sync_channel::<Job>(4);
    let (ready_tx, ready_rx) = sync_channel::<Result<Stream>>(1);
    std::thread::Builder::new()
      .name("mlxrs-eval".into())
      .spawn(move || {
        // This thread's own default stream of the device: graphs queued
        // here are built on it.
        let stream = Stream::default_for(device);
        let ok = stream.is_ok();
        let _ = ready_tx.send(stream);
        if !ok {
          return;
        }
        for job in rx {
          let t = Instant::now();
          let r = crate::async_eval(&job.arrays).map(|()| t.elapsed());
          drop(job.arrays);
          let _ = job.done.send(r);
        }
      })
      .map_err(|e| Error::Mlx(format!("cannot spawn the evaluation thread: {e}")))?;
    let stream = ready_rx
      .recv()
      .map_err(|_| Error::Mlx("the evaluation thread stopped".into()))??;
    Ok(EvalThread {
      jobs: Mutex::new(jobs),
      stream: Mutex::new(stream),
    })
  }

  /// The stream to build the graphs on (this thread's default stream).
  pub fn stream(&self) -> Stream {
    self
      .stream
      .lock()
      .unwrap_or_else(|p| p.into_inner())
      .clone()
  }

  /// Send `arrays` to be queued (`async_eval`) on this thread, after the
  /// jobs sent before, together with the arrays whose values the caller will
  /// read ([`Ready::read`], by their index in `reads`). All of them must be
  /// built on [`EvalThread::stream`].
  pub fn queue(&self, mut arrays: Vec<Array>, reads: &[Array]) -> Result<Queued> {
    // Private views of the arrays to read (a reshape to `[1, ...shape]`,
    // no copy), so no later graph takes a node read here as an input.
    let reads = crate::stream::with_stream(&self.stream(), || {
      reads
        .iter()
        .map(|a| {
          let shape: Vec<i32> = std::iter::once(1).chain(a.shape()).collect();
          crate::ops::reshape(a, &shape)
        })
        .collect::<Result<Vec<Array>>>()
    })?;
    arrays.extend(reads.iter().cloned());

    let (done, rx) = sync_channel(1);
    let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
    jobs
      .send(Job { arrays, done })
      .map_err(|_| Error::Mlx("the evaluation thread stopped".into()))?;
    Ok(Queued { done: rx, reads })
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::{ops, stream::with_default_stream};

  #[test]
  fn queues_graphs_built_on_another_thread() -> Result<()> {
    let t = EvalThread::shared(Device::CPU)?;
    let s = t.stream();
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])?;
    let (y, next) = with_default_stream(&s, || -> Result<(Array, Array)> {
      let y = ops::multiply(&x, &x)?;
      Ok((y.clone(), ops::add(&y, &y)?))
    })??;
    let ready = t
      .queue(vec![next.clone()], std::slice::from_ref(&y))?
      .wait()?;
    // The next graph starts from the queued `next` (and even from `y`)
    // while the first job's values are read.
    let z = with_default_stream(&s, || ops::add(&next, &y))??;
    let q = t.queue(vec![], &[z])?;
    assert_eq!(ready.read::<f32>(0)?, vec![1.0, 4.0, 9.0]);
    assert_eq!(q.wait()?.read::<f32>(0)?, vec![3.0, 12.0, 27.0]);
    assert!(ready.read::<f32>(1).is_err());
    assert!(ready.read::<i32>(0).is_err());
    Ok(())
  }

  #[test]
  fn a_queued_read_of_an_unqueued_array_is_an_error() -> Result<()> {
    let x = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    let mut y = ops::add(&x, &x)?;
    // SAFETY: no other thread evaluates anything here.
    let e = unsafe { y.copy_queued::<f32>() }.unwrap_err();
    assert!(e.to_string().contains("not been queued"), "{e}");
    // The normal read still works afterwards.
    assert_eq!(y.to_vec::<f32>()?, vec![2.0, 4.0]);
    Ok(())
  }
}
