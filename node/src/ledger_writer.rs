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

use fab_ledger::checkpoint::Checkpoint;
use fab_ledger::store::{Store, StoreError};
use fab_ledger::{ContentId, EntryBody, FeedWriter, Keypair, SignedEntry};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for the writer.
pub const COMMAND_QUEUE: usize = 1024;
/// Most entries one read returns.
pub const READ_ENTRIES_MAX: usize = 1000;

pub use fab_ledger::store::ReplicaHead;

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
    Replica(Box<ReplicaWrite>),
    Read(Read),
    /// Write the buffered replica entries if they have waited [`REPLICA_SYNC`].
    Sync,
}

/// Other nodes' entries are buffered and written in one durable transaction at least this
/// often, before any read of replicas, and at close: one disk sync per interval instead of one per gossip
/// message. A crash loses at most this much of other nodes' feeds, which catch-up fetches again
/// from their owners; this node's own entries are always durable before they are acknowledged.
pub const REPLICA_SYNC: std::time::Duration = std::time::Duration::from_secs(1);
/// Buffered replica entries that force a write before the interval ends.
const REPLICA_BUFFER_MAX: usize = 4096;

/// Replica writes waiting for their transaction.
#[derive(Default)]
struct ReplicaBuffer {
    writes: Vec<(fab_ledger::PublicKey, Vec<SignedEntry>, Option<Checkpoint>)>,
    entries: usize,
    since: Option<std::time::Instant>,
}

impl ReplicaBuffer {
    fn flush(&mut self, store: &mut Store) {
        if self.writes.is_empty() {
            return;
        }
        let writes: Vec<_> = self
            .writes
            .iter()
            .map(|(f, e, c)| (f, e.as_slice(), c.as_ref()))
            .collect();
        if let Err(e) = store.store_replicas(&writes) {
            // The replication core believes them stored; the next start re-verifies what is
            // on disk and fetches the rest again.
            tracing::warn!(error = %e, writes = writes.len(), "replica entries not written");
        }
        self.writes.clear();
        self.entries = 0;
        self.since = None;
    }
}

struct ReplicaWrite {
    feed: fab_ledger::PublicKey,
    entries: Vec<SignedEntry>,
    trusted: Option<Checkpoint>,
}

/// A committed batch of this node's own entries and the checkpoint that covers it, handed to
/// the mesh for gossip.
#[derive(Clone, Debug)]
pub struct Committed {
    pub entries: Vec<SignedEntry>,
    pub checkpoint: Checkpoint,
}

/// Batches waiting for the mesh; if it falls behind, batches are dropped (peers catch up).
pub const COMMITTED_QUEUE: usize = 256;

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
    ReplicaHeads {
        reply: oneshot::Sender<Result<Vec<ReplicaHead>, String>>,
    },
    ReplicaRange {
        feed: [u8; 32],
        from: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<RawEntry>, String>>,
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
    /// Resolves when the thread ends, however it ends (for the node's supervisor).
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LedgerWriter {
    /// Starts the writer on an open store.
    /// Starts the writer on an open store. Each committed batch of own entries is offered to
    /// `committed` (the mesh), without waiting.
    pub fn start(
        store: Store,
        key: Keypair,
        batch_max: usize,
        committed: Option<mpsc::Sender<Committed>>,
    ) -> (LedgerWriter, LedgerClient) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let feed = FeedWriter::resume(key, store.len(), store.head());
        let (signal, ended) = crate::supervise::EndSignal::new();
        let thread = std::thread::Builder::new()
            .name("fab-ledger".into())
            .spawn(move || {
                let _signal = signal;
                run(store, feed, rx, batch_max.max(1), committed);
            })
            .expect("spawning the ledger thread");
        (
            LedgerWriter {
                thread,
                ended: Some(ended),
            },
            LedgerClient { tx },
        )
    }

    /// What resolves when the writer thread ends (once).
    pub fn take_ended(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.ended.take()
    }

    /// Waits for the thread to finish the commands already queued and close the store.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn run(
    mut store: Store,
    mut feed: FeedWriter,
    mut rx: mpsc::Receiver<Command>,
    batch_max: usize,
    committed: Option<mpsc::Sender<Committed>>,
) {
    let published = committed.as_ref();
    let mut pending: Vec<(
        SignedEntry,
        oneshot::Sender<Result<SignedEntry, AppendError>>,
    )> = Vec::new();
    let mut replicas = ReplicaBuffer::default();
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
                    // A read must see the writes queued before it: commit those first (replica
                    // writes only for reads of replicas: an own-feed read costs no disk sync).
                    commit(&mut store, &mut feed, &mut pending, published);
                    if matches!(read, Read::ReplicaHeads { .. } | Read::ReplicaRange { .. }) {
                        replicas.flush(&mut store);
                    }
                    serve_read(&store, read);
                }
                Command::Sync => {
                    if replicas.since.is_some_and(|t| t.elapsed() >= REPLICA_SYNC) {
                        replicas.flush(&mut store);
                    }
                }
                Command::Replica(w) => {
                    let ReplicaWrite {
                        feed: peer_feed,
                        entries,
                        trusted,
                    } = *w;
                    replicas.entries += entries.len();
                    replicas.writes.push((peer_feed, entries, trusted));
                    replicas.since.get_or_insert_with(std::time::Instant::now);
                    if replicas.entries >= REPLICA_BUFFER_MAX {
                        replicas.flush(&mut store);
                    }
                }
            }
            if pending.len() < batch_max {
                next = rx.try_recv().ok();
            }
        }
        commit(&mut store, &mut feed, &mut pending, published);
    }
    replicas.flush(&mut store);
    tracing::info!(entries = store.len(), "ledger closed");
}

/// Commits the pending appends durably.
fn commit(
    store: &mut Store,
    feed: &mut FeedWriter,
    pending: &mut Vec<(
        SignedEntry,
        oneshot::Sender<Result<SignedEntry, AppendError>>,
    )>,
    published: Option<&mpsc::Sender<Committed>>,
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
            if let (Some(tx), Some(checkpoint)) = (published, store.checkpoint()) {
                // Never block the ledger on the network: peers catch up on anything dropped.
                let _ = tx.try_send(Committed {
                    entries,
                    checkpoint: checkpoint.clone(),
                });
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
            let _ = reply.send(
                reader
                    .range(from, limit.min(READ_ENTRIES_MAX))
                    .map_err(text),
            );
        }
        Read::JobSeq { job, reply } => {
            let _ = reply.send(reader.seq_of_job(&job).map_err(text));
        }
        Read::Head { reply } => {
            let _ = reply.send((store.len(), store.head()));
        }
        Read::ReplicaHeads { reply } => {
            let _ = reply.send(reader.replica_heads().map_err(text));
        }
        Read::ReplicaRange {
            feed,
            from,
            limit,
            reply,
        } => {
            let _ = reply.send(
                reader
                    .replica_range(&feed, from, limit.min(READ_ENTRIES_MAX))
                    .map_err(text),
            );
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

    /// Hands verified entries (and a newly trusted checkpoint) of another node's feed to the
    /// writer, which buffers them and writes them within [`REPLICA_SYNC`] (a failed write is
    /// logged there; catch-up fetches what was lost). Waits only for room in the queue, not
    /// for the writer: one gossip message costs the mesh task no round trip.
    pub async fn store_replica(
        &self,
        feed: fab_ledger::PublicKey,
        entries: Vec<SignedEntry>,
        trusted: Option<Checkpoint>,
    ) -> Result<(), String> {
        let write = ReplicaWrite {
            feed,
            entries,
            trusted,
        };
        self.tx
            .send(Command::Replica(Box::new(write)))
            .await
            .map_err(|_| "the ledger writer has stopped".to_owned())
    }

    pub async fn replica_heads(&self) -> Result<Vec<ReplicaHead>, String> {
        self.ask(|reply| Command::Read(Read::ReplicaHeads { reply }))
            .await
            .unwrap_or_else(|| Err("the ledger writer has stopped".into()))
    }

    /// Up to `limit` stored entries of a replicated feed from `from`.
    pub async fn replica_range(
        &self,
        feed: [u8; 32],
        from: u64,
        limit: usize,
    ) -> Result<Vec<RawEntry>, String> {
        self.ask(|reply| {
            Command::Read(Read::ReplicaRange {
                feed,
                from,
                limit,
                reply,
            })
        })
        .await
        .unwrap_or_else(|| Err("the ledger writer has stopped".into()))
    }

    /// Writes buffered replica entries if they have waited [`REPLICA_SYNC`]; never waits.
    pub fn sync_replicas(&self) {
        let _ = self.tx.try_send(Command::Sync);
    }

    /// The latest checkpoint of this node's own feed.
    pub async fn head(&self) -> (u64, Option<ContentId>) {
        self.ask(|reply| Command::Read(Read::Head { reply }))
            .await
            .unwrap_or((0, None))
    }
}
