//! The ledger writer: one thread that owns the redb store and the feed's signing state.
//!
//! Appends arrive on a bounded channel. The thread takes every append already waiting (up to
//! `ledger.batch_max`), signs them in order, commits them in one durable transaction (group
//! commit), and only then answers each caller. A failed commit answers every caller in the
//! batch with an error and rewinds the feed head, so no receipt is ever handed out for an
//! entry that is not on disk, and the numbering stays gap-free.
//!
//! Reads go through the same thread, so they see exactly what has been committed.

use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use fab_ledger::store::{Store, StoreError};
use fab_ledger::{ContentId, EntryBody, FeedWriter, Keypair, SignedEntry};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for the writer.
pub const COMMAND_QUEUE: usize = 1024;
/// Most entries one read returns.
pub const RANGE_MAX: usize = 1000;

/// A stored entry: its seq and signed bytes.
pub type RawEntry = (u64, Vec<u8>);

/// Why an append did not happen.
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum AppendError {
    #[error("the ledger could not commit: {0}")]
    Commit(String),
    #[error("the ledger writer has stopped")]
    Stopped,
}

enum Command {
    Append {
        body: EntryBody,
        reply: oneshot::Sender<Result<SignedEntry, AppendError>>,
    },
    Read(Read),
}

enum Read {
    Range {
        from: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<RawEntry>, String>>,
    },
    JobSeq {
        job: ContentId,
        reply: oneshot::Sender<Result<Option<u64>, String>>,
    },
    Head {
        reply: oneshot::Sender<(u64, Option<ContentId>)>,
    },
}

/// Cloneable handle to the writer thread.
#[derive(Clone, Debug)]
pub struct LedgerClient {
    tx: mpsc::Sender<Command>,
}

/// Owns the writer thread; dropping every client and calling [`LedgerWriter::join`] closes it.
#[derive(Debug)]
pub struct LedgerWriter {
    thread: JoinHandle<()>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LedgerWriter {
    /// Starts the writer on an open store.
    pub fn start(store: Store, key: Keypair, batch_max: usize) -> (LedgerWriter, LedgerClient) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let feed = FeedWriter::resume(key, store.len(), store.head());
        let thread = std::thread::Builder::new()
            .name("fab-ledger".into())
            .spawn(move || run(store, feed, rx, batch_max.max(1)))
            .expect("spawning the ledger thread");
        (LedgerWriter { thread }, LedgerClient { tx })
    }

    /// Waits for the thread to finish the commands already queued and close the store.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn run(mut store: Store, mut feed: FeedWriter, mut rx: mpsc::Receiver<Command>, batch_max: usize) {
    let mut pending: Vec<(
        SignedEntry,
        oneshot::Sender<Result<SignedEntry, AppendError>>,
    )> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        // Gather every append already waiting, up to the batch limit; serve reads in order.
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Append { body, reply } => {
                    let entry = feed.append(body, now_ms());
                    pending.push((entry, reply));
                }
                Command::Read(read) => {
                    // A read must see the appends queued before it: commit those first.
                    commit(&mut store, &mut feed, &mut pending);
                    serve_read(&store, read);
                }
            }
            if pending.len() < batch_max {
                next = rx.try_recv().ok();
            }
        }
        commit(&mut store, &mut feed, &mut pending);
    }
    tracing::info!(entries = store.len(), "ledger closed");
}

fn commit(
    store: &mut Store,
    feed: &mut FeedWriter,
    pending: &mut Vec<(
        SignedEntry,
        oneshot::Sender<Result<SignedEntry, AppendError>>,
    )>,
) {
    if pending.is_empty() {
        return;
    }
    let entries: Vec<SignedEntry> = pending.iter().map(|(e, _)| e.clone()).collect();
    match store.append_batch(&entries) {
        Ok(()) => {
            tracing::debug!(
                count = entries.len(),
                head = store.len(),
                "ledger batch committed"
            );
            for (entry, reply) in pending.drain(..) {
                let _ = reply.send(Ok(entry));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, count = entries.len(), "ledger commit failed");
            feed.rollback(store.len(), store.head());
            let msg = e.to_string();
            for (_, reply) in pending.drain(..) {
                let _ = reply.send(Err(AppendError::Commit(msg.clone())));
            }
        }
    }
}

fn serve_read(store: &Store, read: Read) {
    let reader = store.reader();
    let text = |e: StoreError| e.to_string();
    match read {
        Read::Range { from, limit, reply } => {
            let _ = reply.send(reader.range(from, limit.min(RANGE_MAX)).map_err(text));
        }
        Read::JobSeq { job, reply } => {
            let _ = reply.send(reader.seq_of_job(&job).map_err(text));
        }
        Read::Head { reply } => {
            let _ = reply.send((store.len(), store.head()));
        }
    }
}

impl LedgerClient {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Appends an entry; resolves once it is durably committed.
    pub async fn append(&self, body: EntryBody) -> Result<SignedEntry, AppendError> {
        self.ask(|reply| Command::Append { body, reply })
            .await
            .unwrap_or(Err(AppendError::Stopped))
    }

    pub async fn range(&self, from: u64, limit: usize) -> Result<Vec<RawEntry>, String> {
        self.ask(|reply| Command::Read(Read::Range { from, limit, reply }))
            .await
            .unwrap_or_else(|| Err("the ledger writer has stopped".into()))
    }

    pub async fn job_seq(&self, job: ContentId) -> Result<Option<u64>, String> {
        self.ask(|reply| Command::Read(Read::JobSeq { job, reply }))
            .await
            .unwrap_or_else(|| Err("the ledger writer has stopped".into()))
    }

    pub async fn head(&self) -> (u64, Option<ContentId>) {
        self.ask(|reply| Command::Read(Read::Head { reply }))
            .await
            .unwrap_or((0, None))
    }
}
