//! The durable store of a node's feed: one redb file.
//!
//! Tables: `entries` (seq -> signed entry bytes, exactly as signed and verified), `jobs`
//! (job id -> seq, for lookups) and `meta` (the feed key). An append batch is one write
//! transaction committed with redb's immediate durability (fsync), so an entry is on disk
//! before [`Store::append_batch`] returns, and a crash leaves either the whole batch or none.
//!
//! The writer opens the file in redb's `SingleWriter` mode: auditors (`fabnode ledger verify`)
//! can open it read-only at the same time and read what has been committed.
//!
//! On open, the writer checks redb's page checksums (a file altered outside redb is refused,
//! not trusted) and re-verifies the tail entry: its signature, feed, position and link.

use std::path::{Path, PathBuf};

use redb::{
    ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use thiserror::Error;

use crate::entry::{FeedVerifier, VerifyError};
use crate::{ContentId, EntryBody, PublicKey, SignedEntry};

/// `seq -> signed entry bytes`. Public so tests and tools can reach the raw bytes.
pub const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// `job id -> seq` of the execution entry for that job.
pub const JOBS: TableDefinition<&[u8], u64> = TableDefinition::new("jobs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_FEED: &str = "feed";

/// Why the store could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "ledger {path} is open in another process (is a node already running with this data dir?)",
        path = path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "ledger {path} is corrupt ({detail}); move it aside and restore it from a backup or a peer",
        path = path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("ledger {path} does not exist", path = path.display())]
    Missing { path: PathBuf },
    #[error(
        "ledger {path} was not closed cleanly (the node stopped without shutting down) and needs \
         recovery before it can be read",
        path = path.display()
    )]
    NeedsRecovery { path: PathBuf },
    #[error(
        "ledger {path} belongs to feed {found}, not this node's key {expected}",
        path = path.display()
    )]
    WrongFeed {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("ledger {path}: tail check failed: {bad}", path = path.display())]
    Tail { path: PathBuf, bad: VerifyError },
    #[error("ledger append refused: entry seq {found} does not follow head seq {expected}")]
    OutOfOrder { expected: u64, found: u64 },
    #[error("ledger {path}: {detail}", path = path.display())]
    Storage { path: PathBuf, detail: String },
}

/// The writer's handle on the feed file.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: Database,
    feed: PublicKey,
    next_seq: u64,
    head: Option<ContentId>,
}

fn storage(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |e| match e {
        redb::Error::Corrupted(detail) => StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_owned(),
        },
        other => StoreError::Storage {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::NotFound =>
        {
            StoreError::Missing {
                path: path.to_owned(),
            }
        }
        // redb reports a file that is not a redb file (bad magic) as an I/O error of kind
        // InvalidData; to the operator that is a corrupt ledger.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::Corrupt {
                path: path.to_owned(),
                detail: io.to_string(),
            }
        }
        redb::DatabaseError::RepairAborted => StoreError::NeedsRecovery {
            path: path.to_owned(),
        },
        other => storage(path)(other.into()),
    }
}

/// Runs redb's crash recovery on a file that a killed writer left behind, without opening it
/// as a feed. Recovery restores the last committed transaction; nothing committed is lost.
/// Refused with [`StoreError::Locked`] while a node has the file open.
pub fn recover(path: &Path) -> Result<(), StoreError> {
    let db = redb::Builder::new()
        .set_concurrency_mode(ConcurrencyMode::SingleWriter)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    drop(db);
    Ok(())
}

impl Store {
    /// Opens (or creates) the feed file for `key`, checking page checksums and the tail entry.
    pub fn open(path: &Path, feed: PublicKey) -> Result<Store, StoreError> {
        let st = storage(path);
        let db = redb::Builder::new()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| open_error(path, e))?;

        let txn = db.begin_write().map_err(|e| st(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| st(e.into()))?;
            let stored = meta
                .get(META_FEED)
                .map_err(|e| st(e.into()))?
                .map(|v| v.value().to_vec());
            match stored {
                None => {
                    meta.insert(META_FEED, &feed.to_bytes()[..])
                        .map_err(|e| st(e.into()))?;
                }
                Some(bytes) if bytes == feed.to_bytes() => {}
                Some(bytes) => {
                    let found = <[u8; 32]>::try_from(bytes.as_slice())
                        .ok()
                        .and_then(|b| PublicKey::from_bytes(&b))
                        .map_or_else(|| hex::encode(&bytes), |k| k.peer_id());
                    return Err(StoreError::WrongFeed {
                        path: path.to_owned(),
                        expected: feed.peer_id(),
                        found,
                    });
                }
            }
            txn.open_table(ENTRIES).map_err(|e| st(e.into()))?;
            txn.open_table(JOBS).map_err(|e| st(e.into()))?;
        }
        txn.commit().map_err(|e| st(e.into()))?;

        let (next_seq, head) = verify_tail(path, &db, feed)?;
        Ok(Store {
            path: path.to_owned(),
            db,
            feed,
            next_seq,
            head,
        })
    }

    /// Appends a batch of entries in one durable transaction. The entries must continue the
    /// feed exactly; nothing is written if any does not.
    pub fn append_batch(&mut self, batch: &[SignedEntry]) -> Result<(), StoreError> {
        for (expected, e) in (self.next_seq..).zip(batch) {
            if e.body().seq != expected {
                return Err(StoreError::OutOfOrder {
                    expected,
                    found: e.body().seq,
                });
            }
        }
        let st = storage(&self.path);
        let txn = self.db.begin_write().map_err(|e| st(e.into()))?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(|e| st(e.into()))?;
            let mut jobs = txn.open_table(JOBS).map_err(|e| st(e.into()))?;
            for e in batch {
                entries
                    .insert(e.body().seq, e.encode().as_slice())
                    .map_err(|e| st(e.into()))?;
                if let EntryBody::Execution(r) = &e.body().body {
                    jobs.insert(r.job.id().as_bytes().as_slice(), e.body().seq)
                        .map_err(|e| st(e.into()))?;
                }
            }
        }
        txn.commit().map_err(|e| st(e.into()))?;
        if let Some(last) = batch.last() {
            self.next_seq = last.body().seq + 1;
            self.head = Some(last.id());
        }
        Ok(())
    }

    pub fn feed(&self) -> PublicKey {
        self.feed
    }

    /// Number of entries, which is also the next seq.
    pub fn len(&self) -> u64 {
        self.next_seq
    }

    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }

    pub fn head(&self) -> Option<ContentId> {
        self.head
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn reader(&self) -> Reader<'_> {
        Reader {
            path: &self.path,
            db: Db::Writer(&self.db),
        }
    }
}

fn verify_tail(
    path: &Path,
    db: &impl ReadableDatabase,
    feed: PublicKey,
) -> Result<(u64, Option<ContentId>), StoreError> {
    let st = storage(path);
    let txn = db.begin_read().map_err(|e| st(e.into()))?;
    let entries = txn.open_table(ENTRIES).map_err(|e| st(e.into()))?;
    let len = entries.len().map_err(|e| st(e.into()))?;
    if len == 0 {
        return Ok((0, None));
    }
    // The entry before the tail gives the link the tail must carry.
    let mut verifier = FeedVerifier::new(feed);
    if len >= 2 {
        let prev = entries
            .get(len - 2)
            .map_err(|e| st(e.into()))?
            .ok_or_else(|| StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("entry {} is missing", len - 2),
            })?;
        let prev_entry =
            SignedEntry::decode_verified(prev.value()).map_err(|e| StoreError::Tail {
                path: path.to_owned(),
                bad: VerifyError {
                    seq: len - 2,
                    kind: e.into(),
                },
            })?;
        verifier = FeedVerifier::resume(feed, len - 1, Some(prev_entry.id()));
    }
    let tail = entries
        .get(len - 1)
        .map_err(|e| st(e.into()))?
        .ok_or_else(|| StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("entry {} is missing", len - 1),
        })?;
    verifier
        .push(tail.value())
        .map_err(|bad| StoreError::Tail {
            path: path.to_owned(),
            bad,
        })?;
    Ok((len, verifier.head()))
}

enum Db<'a> {
    Writer(&'a Database),
    Reader(&'a ReadOnlyDatabase),
}

impl std::fmt::Debug for Db<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Writer(_) => "Db::Writer",
            Db::Reader(_) => "Db::Reader",
        })
    }
}

/// Read access to a feed file, from the writer or from a read-only handle.
#[derive(Debug)]
pub struct Reader<'a> {
    path: &'a Path,
    db: Db<'a>,
}

impl Reader<'_> {
    fn txn(&self) -> Result<redb::ReadTransaction, StoreError> {
        let st = storage(self.path);
        match self.db {
            Db::Writer(db) => db.begin_read(),
            Db::Reader(db) => db.begin_read(),
        }
        .map_err(|e| st(e.into()))
    }

    /// Number of entries.
    pub fn entry_count(&self) -> Result<u64, StoreError> {
        let st = storage(self.path);
        let txn = self.txn()?;
        let t = txn.open_table(ENTRIES).map_err(|e| st(e.into()))?;
        t.len().map_err(|e| st(e.into()))
    }

    /// Raw signed-entry bytes of `seq`.
    pub fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let st = storage(self.path);
        let txn = self.txn()?;
        let t = txn.open_table(ENTRIES).map_err(|e| st(e.into()))?;
        Ok(t.get(seq)
            .map_err(|e| st(e.into()))?
            .map(|v| v.value().to_vec()))
    }

    /// Up to `limit` raw entries starting at `from`.
    pub fn range(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let st = storage(self.path);
        let txn = self.txn()?;
        let t = txn.open_table(ENTRIES).map_err(|e| st(e.into()))?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in t.range(from..).map_err(|e| st(e.into()))?.take(limit) {
            let (k, v) = item.map_err(|e| st(e.into()))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The seq of the execution entry for `job`.
    pub fn seq_of_job(&self, job: &ContentId) -> Result<Option<u64>, StoreError> {
        let st = storage(self.path);
        let txn = self.txn()?;
        let t = txn.open_table(JOBS).map_err(|e| st(e.into()))?;
        Ok(t.get(job.as_bytes().as_slice())
            .map_err(|e| st(e.into()))?
            .map(|v| v.value()))
    }

    /// The feed key recorded in the file.
    pub fn feed(&self) -> Result<PublicKey, StoreError> {
        let st = storage(self.path);
        let txn = self.txn()?;
        let t = txn.open_table(META).map_err(|e| st(e.into()))?;
        let v = t
            .get(META_FEED)
            .map_err(|e| st(e.into()))?
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.to_owned(),
                detail: "no feed key recorded".into(),
            })?;
        <[u8; 32]>::try_from(v.value())
            .ok()
            .and_then(|b| PublicKey::from_bytes(&b))
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.to_owned(),
                detail: "recorded feed key is not a valid key".into(),
            })
    }

    /// Re-checks every entry from the first: decoding, signatures, sequence and links.
    /// Returns the entry count and head id, or the first bad entry.
    pub fn verify_all(&self) -> Result<Result<(u64, Option<ContentId>), VerifyError>, StoreError> {
        const PAGE: usize = 1024;
        let mut v = FeedVerifier::new(self.feed()?);
        loop {
            let page = self.range(v.next_seq(), PAGE)?;
            for (seq, bytes) in &page {
                if *seq != v.next_seq() {
                    return Ok(Err(VerifyError {
                        seq: v.next_seq(),
                        kind: crate::VerifyErrorKind::SeqMismatch {
                            position: v.next_seq(),
                            found: *seq,
                        },
                    }));
                }
                if let Err(e) = v.push(bytes) {
                    return Ok(Err(e));
                }
            }
            if page.len() < PAGE {
                return Ok(Ok((v.next_seq(), v.head())));
            }
        }
    }
}

/// A read-only handle for auditors; works while a node is writing the same file.
pub struct ReadOnlyStore {
    path: PathBuf,
    db: ReadOnlyDatabase,
}

impl std::fmt::Debug for ReadOnlyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ReadOnlyStore {
    /// Opens the file read-only. A file left by a killed writer gives
    /// [`StoreError::NeedsRecovery`]; see [`ReadOnlyStore::open_recovering`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        let db = redb::Builder::new()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(path)
            .map_err(|e| open_error(path, e))?;
        Ok(ReadOnlyStore {
            path: path.to_owned(),
            db,
        })
    }

    /// Like [`ReadOnlyStore::open`], but first runs crash recovery if the file needs it.
    pub fn open_recovering(path: &Path) -> Result<Self, StoreError> {
        match Self::open(path) {
            Err(StoreError::NeedsRecovery { .. }) => {
                recover(path)?;
                Self::open(path)
            }
            other => other,
        }
    }

    pub fn reader(&self) -> Reader<'_> {
        Reader {
            path: &self.path,
            db: Db::Reader(&self.db),
        }
    }
}
