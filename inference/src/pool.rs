//! Inference workers behind a bounded queue.
//!
//! Inference is CPU-bound and would stall the async runtime, so each run goes to one of a fixed
//! set of OS threads. The queue is bounded: when it is full, [`InferencePool::submit`] refuses at
//! once and the caller answers "busy" rather than letting work pile up without limit.
//! Dropping the pool lets queued work finish, then the workers exit.
//!
//! A run that panics (a bug in an engine, or a model file that trips one) fails with
//! [`RunError::Panicked`]; the worker thread that ran it ends and a fresh one takes its place,
//! so the pool keeps its size and no state of the failed run is reused.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::oneshot;

use crate::engine::{Engine, RunError, validate_inputs};
use crate::tensor::Tensor;

/// What one run produced and cost.
#[derive(Debug)]
pub struct RunReport {
    pub outputs: Result<Vec<Tensor>, RunError>,
    pub queued: Duration,
    pub wall: Duration,
    pub cpu_time: Duration,
    /// Peak resident memory of this process so far, KiB.
    pub peak_rss_kib: u64,
}

/// Why work was not accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    #[error(
        "all {workers} inference workers are busy and the queue of {depth} is full; retry later"
    )]
    Busy { workers: usize, depth: usize },
    #[error("the inference pool is shutting down")]
    Closed,
    #[error(transparent)]
    Invalid(RunError),
}

struct Work {
    engine: Arc<dyn Engine>,
    inputs: Vec<Tensor>,
    enqueued: Instant,
    reply: oneshot::Sender<RunReport>,
}

/// The worker threads, including replacements started after a panic.
type Workers = Arc<Mutex<Vec<JoinHandle<()>>>>;

/// A fixed pool of inference threads.
#[derive(Debug)]
pub struct InferencePool {
    tx: Option<SyncSender<Work>>,
    workers: Workers,
    size: usize,
    depth: usize,
}

impl InferencePool {
    /// Starts `workers` threads sharing a queue of `depth` waiting runs.
    pub fn new(workers: usize, depth: usize) -> Self {
        let size = workers.max(1);
        let (tx, rx) = sync_channel::<Work>(depth);
        let rx = Arc::new(Mutex::new(rx));
        let handles: Workers = Arc::new(Mutex::new(Vec::with_capacity(size)));
        for i in 0..size {
            spawn_worker(i, &rx, &handles);
        }
        InferencePool {
            tx: Some(tx),
            workers: handles,
            size,
            depth,
        }
    }

    /// Validates `inputs` against the model, then queues the run. Invalid input is refused here,
    /// before it takes a queue slot.
    pub fn submit(
        &self,
        engine: Arc<dyn Engine>,
        inputs: Vec<Tensor>,
    ) -> Result<oneshot::Receiver<RunReport>, PoolError> {
        validate_inputs(engine.info(), &inputs).map_err(PoolError::Invalid)?;
        let (reply, rx) = oneshot::channel();
        let work = Work {
            engine,
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        match self.tx.as_ref().ok_or(PoolError::Closed)?.try_send(work) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(PoolError::Busy {
                workers: self.size,
                depth: self.depth,
            }),
            Err(TrySendError::Disconnected(_)) => Err(PoolError::Closed),
        }
    }

    /// Finishes queued work and joins the workers.
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.tx = None;
        // A worker replaced while this runs pushes its successor's handle: join until none is
        // left (successors find the queue closed and end at once).
        loop {
            let next = match self.workers.lock() {
                Ok(mut w) => w.pop(),
                Err(poisoned) => poisoned.into_inner().pop(),
            };
            match next {
                Some(h) => {
                    let _ = h.join();
                }
                None => break,
            }
        }
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        self.close();
    }
}

fn spawn_worker(i: usize, rx: &Arc<Mutex<Receiver<Work>>>, workers: &Workers) {
    let (rx, all) = (Arc::clone(rx), Arc::clone(workers));
    let handle = std::thread::Builder::new()
        .name(format!("fab-infer-{i}"))
        .spawn(move || {
            if worker(&rx) == Ended::Panicked {
                tracing::error!(
                    worker = i,
                    "an inference run panicked; replacing its worker"
                );
                spawn_worker(i, &rx, &all);
            }
        })
        .expect("spawning an inference thread");
    match workers.lock() {
        Ok(mut w) => w.push(handle),
        Err(poisoned) => poisoned.into_inner().push(handle),
    }
}

/// Why a worker loop returned.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The queue closed: the pool is shutting down.
    Closed,
    /// A run panicked: this thread ends and a fresh one replaces it.
    Panicked,
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

fn worker(rx: &Mutex<Receiver<Work>>) -> Ended {
    loop {
        let work = {
            let guard = match rx.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            match guard.recv() {
                Ok(w) => w,
                Err(_) => return Ended::Closed,
            }
        };
        let queued = work.enqueued.elapsed();
        let cpu0 = thread_cpu_time();
        let start = Instant::now();
        let (engine, inputs) = (work.engine, work.inputs);
        // The engine is shared and read-only during a run, so unwinding out of it leaves
        // nothing half-changed that another run would see; this thread is retired anyway.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run(inputs)));
        let panicked = run.is_err();
        let outputs = run.unwrap_or_else(|p| Err(RunError::Panicked(panic_text(p.as_ref()))));
        let wall = start.elapsed();
        let cpu_time = thread_cpu_time().saturating_sub(cpu0);
        // The requester may have gone away (client disconnected); nothing to do then.
        let _ = work.reply.send(RunReport {
            outputs,
            queued,
            wall,
            cpu_time,
            peak_rss_kib: peak_rss_kib(),
        });
        if panicked {
            return Ended::Panicked;
        }
    }
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_THREAD_CPUTIME_ID is supported on
    // every Linux and macOS this runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Peak resident set size of this process, KiB.
pub fn peak_rss_kib() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    // Linux reports KiB.
    ru.ru_maxrss.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Dim, IoFact, ModelInfo};
    use crate::tensor::{DType, TensorData};

    /// An engine with a bug: it panics on a negative input, and echoes anything else.
    #[derive(Debug)]
    struct Buggy(ModelInfo);

    impl Engine for Buggy {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RunError> {
            let TensorData::F32(v) = inputs[0].data() else {
                return Err(RunError::Engine("f32 only".into()));
            };
            assert!(v[0] >= 0.0, "negative input {}", v[0]);
            Ok(inputs)
        }
    }

    fn buggy() -> Arc<dyn Engine> {
        let fact = || IoFact {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![Dim::Fixed(1)],
        };
        Arc::new(Buggy(ModelInfo {
            engine: "test",
            engine_version: "0",
            inputs: vec![fact()],
            outputs: vec![fact()],
            threads: 1,
        }))
    }

    fn x(v: f32) -> Vec<Tensor> {
        vec![Tensor::new(vec![1], TensorData::F32(vec![v])).unwrap()]
    }

    #[test]
    fn a_panicking_run_fails_alone_and_its_worker_is_replaced() {
        let pool = InferencePool::new(1, 8);
        let run = |v: f32| {
            let rx = pool.submit(buggy(), x(v)).unwrap();
            rx.blocking_recv().expect("every run is answered").outputs
        };
        assert!(run(1.0).is_ok());
        for _ in 0..3 {
            let e = run(-1.0).unwrap_err();
            assert!(
                matches!(&e, RunError::Panicked(m) if m.contains("negative input")),
                "{e}"
            );
            // The one worker was replaced: the next run is served.
            assert!(run(2.0).is_ok());
        }
        drop(pool);
    }
}
