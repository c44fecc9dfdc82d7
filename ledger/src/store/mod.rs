//! The durable store of a node's feed: one redb file.
//!
//! Tables: `entries` (seq -> signed entry bytes, exactly as signed and verified), `jobs`
//! (job id -> seq, for lookups), `nodes` ((level, index) -> complete-subtree hash of the RFC 9162
//! tree whose leaves are the signed entries), `checkpoints` (tree size -> signed note) and
//! `meta` (the feed key). An append batch is one write transaction (two-phase commit, immediate
//! durability): entries, tree nodes and the batch's signed checkpoint land together or not at
//! all, and [`Store::append_batch`] returns only once they are on disk (group commit).
//!
//! The writer opens the file in redb's `SingleWriter` mode: auditors (`fabnode ledger verify`)
//! can open it read-only at the same time and read what has been committed.
//!
//! On open, the writer checks redb's page checksums (a file altered outside redb is refused,
//! not trusted) and re-verifies the tail: the last entry's signature, feed, position and link,
//! that the last leaf is that entry's hash, and that the root recomputed from the stored tree
//! equals the root in the last checkpoint, whose signature must verify.
//!
//! # Layout
//!
//! - this file: tables, errors, opening and writing ([`Store`]);
//! - `reader`: reading and re-verifying the own feed ([`Reader`]);
//! - `replicas`: peers' feeds held as replicas ([`ReplicaVerified`]);
//! - `read_only`: the auditor's read-only open ([`ReadOnlyStore`]).

use std::path::{Path, PathBuf};

use redb::{
    ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use thiserror::Error;

use crate::checkpoint::Checkpoint;
use crate::entry::{FeedVerifier, VerifyError};
use crate::merkle::{self, Frontier, Hash, NodeSource};
use crate::{ContentId, EntryBody, Keypair, PublicKey, SignedEntry};

mod read_only;
mod reader;
mod replicas;

pub use read_only::*;
pub use replicas::*;

/// `seq -> signed entry bytes`. Public so tests and tools can reach the raw bytes.
pub const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// `job id -> seq` of the execution entry for that job.
pub const JOBS: TableDefinition<&[u8], u64> = TableDefinition::new("jobs");
/// `(level, index) -> hash` of complete subtrees of the entries' Merkle tree.
pub const NODES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("nodes");
/// `tree size -> signed checkpoint note`.
pub const CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("checkpoints");
/// `(feed key, seq) -> signed entry bytes` of other nodes' feeds (replicas).
pub const REPLICA_ENTRIES: TableDefinition<([u8; 32], u64), &[u8]> =
    TableDefinition::new("replica_entries");
/// A replicated feed: its key bytes, stored entry count, and last trusted checkpoint note.
pub type ReplicaHead = ([u8; 32], u64, Option<String>);

/// `feed key -> last trusted checkpoint note` of replicas.
pub const REPLICA_CHECKPOINTS: TableDefinition<[u8; 32], &str> =
    TableDefinition::new("replica_checkpoints");
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
    #[error("ledger {path}: {detail}; the stored tree or checkpoint does not match the entries", path = path.display())]
    Checkpoint { path: PathBuf, detail: String },
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
    key: Keypair,
    network: String,
    next_seq: u64,
    head: Option<ContentId>,
    frontier: Frontier,
    checkpoint: Option<Checkpoint>,
}

/// The next 32-byte key in lexicographic order, if any.
fn next_key(mut k: [u8; 32]) -> Option<[u8; 32]> {
    for i in (0..32).rev() {
        if k[i] == 0xff {
            k[i] = 0;
        } else {
            k[i] += 1;
            return Some(k);
        }
    }
    None
}

/// Appends one leaf to the tree and stores the complete subtrees it creates.
fn add_leaf(
    nodes: &mut redb::Table<(u8, u64), &[u8]>,
    frontier: &mut Frontier,
    entry_bytes: &[u8],
) -> Result<(), redb::StorageError> {
    for n in frontier.append(merkle::leaf_hash(entry_bytes)) {
        nodes.insert((n.level as u8, n.index), &n.hash[..])?;
    }
    Ok(())
}

/// Complete-subtree hashes served from a redb table.
struct TableNodes<'a, T>(&'a T);

impl<T: ReadableTable<(u8, u64), &'static [u8]>> NodeSource for TableNodes<'_, T> {
    type Error = String;
    fn node(&self, level: u32, index: u64) -> Result<Hash, String> {
        let v = self
            .0
            .get((level as u8, index))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("tree node ({level}, {index}) is missing"))?;
        <[u8; 32]>::try_from(v.value())
            .map_err(|_| format!("tree node ({level}, {index}) is not 32 bytes"))
    }
}

/// What a redb failure means for the ledger file at `path`.
fn storage_error(path: &Path, e: redb::Error) -> StoreError {
    match e {
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

/// One context helper for every redb call: `txn.open_table(T).at(file)?` names the file in
/// the error (instead of a closure at each of the ~80 calls).
trait At<T> {
    fn at(self, file: &Path) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, file: &Path) -> Result<T, StoreError> {
        self.map_err(|e| storage_error(file, e.into()))
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
        other => storage_error(path, other.into()),
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
    /// Opens (or creates) the feed file of `key`, checking page checksums, the tail entry and
    /// the tree against the last checkpoint. `network` names the mesh in checkpoint origins.
    pub fn open(path: &Path, key: &Keypair, network: &str) -> Result<Store, StoreError> {
        let feed = key.public();
        let file: &Path = path;
        let db = redb::Builder::new()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| open_error(path, e))?;

        let txn = db.begin_write().at(file)?;
        {
            let mut meta = txn.open_table(META).at(file)?;
            let stored = meta.get(META_FEED).at(file)?.map(|v| v.value().to_vec());
            match stored {
                None => {
                    meta.insert(META_FEED, &feed.to_bytes()[..]).at(file)?;
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
            txn.open_table(ENTRIES).at(file)?;
            txn.open_table(JOBS).at(file)?;
            txn.open_table(NODES).at(file)?;
            txn.open_table(CHECKPOINTS).at(file)?;
            txn.open_table(REPLICA_ENTRIES).at(file)?;
            txn.open_table(REPLICA_CHECKPOINTS).at(file)?;
        }
        txn.commit().at(file)?;

        let (next_seq, head) = verify_tail(path, &db, feed)?;
        let mut store = Store {
            path: path.to_owned(),
            db,
            key: key.clone(),
            network: network.to_owned(),
            next_seq,
            head,
            frontier: Frontier::new(),
            checkpoint: None,
        };
        store.open_tree()?;
        Ok(store)
    }

    /// Loads the tree border and checks it against the last checkpoint; builds the tree once
    /// for a ledger written before the tree existed.
    fn open_tree(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let file: &Path = &path;
        let cp_err = |detail: String| StoreError::Checkpoint {
            path: path.clone(),
            detail,
        };
        let txn = self.db.begin_read().at(file)?;
        let nodes = txn.open_table(NODES).at(file)?;
        let cps = txn.open_table(CHECKPOINTS).at(file)?;
        let last_cp = cps
            .last()
            .at(file)?
            .map(|(k, v)| (k.value(), v.value().to_owned()));
        if self.next_seq > 0 && nodes.len().at(file)? == 0 && last_cp.is_none() {
            drop((nodes, cps, txn));
            return self.rebuild_tree();
        }
        let frontier = Frontier::from_source(&TableNodes(&nodes), self.next_seq).map_err(cp_err)?;
        if self.next_seq == 0 {
            self.frontier = frontier;
            return Ok(());
        }
        let (size, note) = last_cp.ok_or_else(|| cp_err("no checkpoint".into()))?;
        let cp = Checkpoint::verify(&note, &self.key.public(), Some(&self.origin()))
            .map_err(|e| cp_err(format!("last checkpoint: {e}")))?;
        if size != self.next_seq || cp.size != self.next_seq {
            return Err(cp_err(format!(
                "last checkpoint covers {} entries but the ledger holds {}",
                cp.size, self.next_seq
            )));
        }
        if cp.root != frontier.root() {
            return Err(cp_err(format!(
                "recomputed root differs from checkpoint {}",
                cp.size
            )));
        }
        let entries = txn.open_table(ENTRIES).at(file)?;
        let tail = entries
            .get(self.next_seq - 1)
            .at(file)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        let leaf = TableNodes(&nodes)
            .node(0, self.next_seq - 1)
            .map_err(cp_err)?;
        if leaf != merkle::leaf_hash(&tail) {
            return Err(cp_err(format!(
                "leaf {} is not the hash of the stored entry",
                self.next_seq - 1
            )));
        }
        self.frontier = frontier;
        self.checkpoint = Some(cp);
        Ok(())
    }

    fn rebuild_tree(&mut self) -> Result<(), StoreError> {
        let file: &Path = &self.path;
        let mut frontier = Frontier::new();
        let mut txn = self.db.begin_write().at(file)?;
        txn.set_two_phase_commit(true);
        let cp;
        {
            let entries = txn.open_table(ENTRIES).at(file)?;
            let mut nodes = txn.open_table(NODES).at(file)?;
            for item in entries.iter().at(file)? {
                let (_, v) = item.at(file)?;
                add_leaf(&mut nodes, &mut frontier, v.value()).at(file)?;
            }
            cp = self.put_checkpoint(&txn, &frontier)?;
        }
        txn.commit().at(file)?;
        self.frontier = frontier;
        self.checkpoint = Some(cp);
        Ok(())
    }

    /// Signs a checkpoint of `frontier`'s tree and writes it in `txn`.
    fn put_checkpoint(
        &self,
        txn: &redb::WriteTransaction,
        frontier: &Frontier,
    ) -> Result<Checkpoint, StoreError> {
        let file: &Path = &self.path;
        let cp = Checkpoint::sign(&self.key, &self.network, frontier.size(), frontier.root());
        let mut cps = txn.open_table(CHECKPOINTS).at(file)?;
        cps.insert(cp.size, cp.note.as_str()).at(file)?;
        Ok(cp)
    }

    /// Stores verified entries of another node's feed, and optionally its newly trusted
    /// checkpoint, in one durable transaction. The caller (the replication core) guarantees the
    /// entries extend what is stored.
    pub fn store_replica(
        &mut self,
        feed: &PublicKey,
        entries: &[SignedEntry],
        trusted: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        self.store_replicas(&[(feed, entries, trusted)])
    }

    /// Several [`Store::store_replica`] writes, in order, in one durable transaction.
    pub fn store_replicas(
        &mut self,
        writes: &[(&PublicKey, &[SignedEntry], Option<&Checkpoint>)],
    ) -> Result<(), StoreError> {
        let file: &Path = &self.path;
        let txn = self.db.begin_write().at(file)?;
        {
            let mut t = txn.open_table(REPLICA_ENTRIES).at(file)?;
            let mut c = txn.open_table(REPLICA_CHECKPOINTS).at(file)?;
            for (feed, entries, trusted) in writes {
                let key = feed.to_bytes();
                for e in *entries {
                    t.insert((key, e.body().seq), e.encode().as_slice())
                        .at(file)?;
                }
                if let Some(cp) = trusted {
                    c.insert(key, cp.note.as_str()).at(file)?;
                }
            }
        }
        txn.commit().at(file)?;
        Ok(())
    }

    /// This feed's checkpoint origin line.
    pub fn origin(&self) -> String {
        crate::checkpoint::origin(&self.network, &self.key.public())
    }

    /// The checkpoint of the last committed batch.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// Appends a batch of entries in one durable transaction, with their tree nodes and a
    /// signed checkpoint of the new tree. The entries must continue the feed exactly; nothing
    /// is written if any does not.
    pub fn append_batch(&mut self, batch: &[SignedEntry]) -> Result<(), StoreError> {
        for (expected, e) in (self.next_seq..).zip(batch) {
            if e.body().seq != expected {
                return Err(StoreError::OutOfOrder {
                    expected,
                    found: e.body().seq,
                });
            }
        }
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let file: &Path = &self.path;
        let mut frontier = self.frontier.clone();
        let mut txn = self.db.begin_write().at(file)?;
        // Entries will come from peers too: two-phase commit keeps a torn write from ever
        // being taken for a committed one.
        txn.set_two_phase_commit(true);
        let cp;
        {
            let mut entries = txn.open_table(ENTRIES).at(file)?;
            let mut jobs = txn.open_table(JOBS).at(file)?;
            let mut nodes = txn.open_table(NODES).at(file)?;
            for e in batch {
                let bytes = e.encode();
                entries.insert(e.body().seq, bytes.as_slice()).at(file)?;
                if let EntryBody::Execution(r) = &e.body().body {
                    jobs.insert(r.job.id().as_bytes().as_slice(), e.body().seq)
                        .at(file)?;
                }
                add_leaf(&mut nodes, &mut frontier, &bytes).at(file)?;
            }
            cp = self.put_checkpoint(&txn, &frontier)?;
        }
        txn.commit().at(file)?;
        self.next_seq = last.body().seq + 1;
        self.head = Some(last.id());
        self.frontier = frontier;
        self.checkpoint = Some(cp);
        Ok(())
    }

    pub fn feed(&self) -> PublicKey {
        self.key.public()
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
    let file: &Path = path;
    let txn = db.begin_read().at(file)?;
    let entries = txn.open_table(ENTRIES).at(file)?;
    let len = entries.len().at(file)?;
    if len == 0 {
        return Ok((0, None));
    }
    // The entry before the tail gives the link the tail must carry.
    let mut verifier = FeedVerifier::new(feed);
    if len >= 2 {
        let prev = entries
            .get(len - 2)
            .at(file)?
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
        .at(file)?
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
