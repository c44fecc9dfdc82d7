//! Inference workers behind a bounded queue.
//!
//! Inference is CPU-bound and would stall the async runtime, so each run goes to one of a fixed
//! set of OS threads. The queue is bounded: when it is full, [`InferencePool::submit`] refuses at
//! once and the caller answers "busy" rather than letting work pile up without limit.
//! Dropping the pool lets queued work finish, then the workers exit.

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

/// A fixed pool of inference threads.
#[derive(Debug)]
pub struct InferencePool {
    tx: Option<SyncSender<Work>>,
    workers: Vec<JoinHandle<()>>,
    depth: usize,
}

impl InferencePool {
    /// Starts `workers` threads sharing a queue of `depth` waiting runs.
    pub fn new(workers: usize, depth: usize) -> Self {
        let workers = workers.max(1);
        let (tx, rx) = sync_channel::<Work>(depth);
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..workers)
            .map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("fab-infer-{i}"))
                    .spawn(move || worker(&rx))
                    .expect("spawning an inference thread")
            })
            .collect();
        InferencePool {
            tx: Some(tx),
            workers: handles,
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
                workers: self.workers.len(),
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
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        self.close();
    }
}

fn worker(rx: &Mutex<Receiver<Work>>) {
    loop {
        let work = {
            let guard = match rx.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            match guard.recv() {
                Ok(w) => w,
                Err(_) => return,
            }
        };
        let queued = work.enqueued.elapsed();
        let cpu0 = thread_cpu_time();
        let start = Instant::now();
        let outputs = work.engine.run(work.inputs);
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
