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

impl Reader<'_> {
    fn txn(&self) -> Result<redb::ReadTransaction, StoreError> {
        let file: &Path = self.path;
        match self.db {
            Db::Writer(db) => db.begin_read(),
            Db::Reader(db) => db.begin_read(),
        }
        .at(file)
    }

    /// Number of entries.
    pub fn entry_count(&self) -> Result<u64, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(ENTRIES).at(file)?;
        t.len().at(file)
    }

    /// Raw signed-entry bytes of `seq`.
    pub fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(ENTRIES).at(file)?;
        Ok(t.get(seq).at(file)?.map(|v| v.value().to_vec()))
    }

    /// Up to `limit` raw entries starting at `from`.
    pub fn range(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(ENTRIES).at(file)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in t.range(from..).at(file)?.take(limit) {
            let (k, v) = item.at(file)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The seq of the execution entry for `job`.
    pub fn seq_of_job(&self, job: &ContentId) -> Result<Option<u64>, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(JOBS).at(file)?;
        Ok(t.get(job.as_bytes().as_slice())
            .at(file)?
            .map(|v| v.value()))
    }

    /// The feed key recorded in the file.
    pub fn feed(&self) -> Result<PublicKey, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(META).at(file)?;
        let v = t
            .get(META_FEED)
            .at(file)?
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

    /// The checkpoint with the largest size, as stored (not verified).
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(CHECKPOINTS).at(file)?;
        Ok(t.last()
            .at(file)?
            .map(|(k, v)| (k.value(), v.value().to_owned())))
    }

    /// All stored checkpoints, in size order.
    pub fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(CHECKPOINTS).at(file)?;
        let mut out = Vec::new();
        for item in t.iter().at(file)? {
            let (k, v) = item.at(file)?;
            out.push((k.value(), v.value().to_owned()));
        }
        Ok(out)
    }

    fn with_nodes<T>(
        &self,
        f: impl FnOnce(
            &TableNodes<'_, redb::ReadOnlyTable<(u8, u64), &'static [u8]>>,
        ) -> Result<T, String>,
    ) -> Result<T, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(NODES).at(file)?;
        f(&TableNodes(&t)).map_err(|detail| StoreError::Checkpoint {
            path: self.path.to_owned(),
            detail,
        })
    }

    /// The Merkle root of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, StoreError> {
        self.with_nodes(|n| merkle::root(n, size))
    }

    /// The leaf hash of entry `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash, StoreError> {
        self.with_nodes(|n| n.node(0, index))
    }

    /// RFC 9162 inclusion path of entry `index` in the tree of `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_nodes(|n| merkle::inclusion_proof(n, index, size).map_err(|e| e.to_string()))
    }

    /// RFC 9162 consistency proof from the tree of `first` to the tree of `second`.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_nodes(|n| merkle::consistency_proof(n, first, second).map_err(|e| e.to_string()))
    }

    /// Every replicated feed: its key, stored entry count, and last trusted checkpoint note.
    pub fn replica_heads(&self) -> Result<Vec<ReplicaHead>, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(REPLICA_ENTRIES).at(file)?;
        let c = txn.open_table(REPLICA_CHECKPOINTS).at(file)?;
        let mut out: Vec<ReplicaHead> = Vec::new();
        let mut cursor: Option<[u8; 32]> = None;
        loop {
            // Jump from feed to feed: the last key of each feed gives its size.
            let start = match cursor {
                None => ([0u8; 32], 0),
                Some(k) => match next_key(k) {
                    Some(n) => (n, 0),
                    None => break,
                },
            };
            let Some(item) = t.range(start..).at(file)?.next() else {
                break;
            };
            let (k, _) = item.at(file)?;
            let feed = k.value().0;
            let last = t
                .range((feed, 0)..=(feed, u64::MAX))
                .at(file)?
                .next_back()
                .transpose()
                .at(file)?
                .map(|(k, _)| k.value().1);
            let note = c.get(feed).at(file)?.map(|v| v.value().to_owned());
            out.push((feed, last.map_or(0, |s| s + 1), note));
            cursor = Some(feed);
        }
        Ok(out)
    }

    /// Up to `limit` stored entries of a replicated feed from `from`.
    pub fn replica_range(
        &self,
        feed: &[u8; 32],
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let t = txn.open_table(REPLICA_ENTRIES).at(file)?;
        let mut out = Vec::new();
        for item in t
            .range((*feed, from)..=(*feed, u64::MAX))
            .at(file)?
            .take(limit)
        {
            let (k, v) = item.at(file)?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    /// Re-checks every entry from the first: decoding, signatures, sequence and links.
    /// Returns the entry count and head id, or the first bad entry.
    pub fn verify_all(&self) -> Result<Result<(u64, Option<ContentId>), VerifyError>, StoreError> {
        const PAGE: usize = 1024;
        let feed = self.feed()?;
        let mut v = FeedVerifier::new(feed);
        let checkpoints = self.checkpoints()?;
        let mut cps = checkpoints.iter().peekable();
        let mut tree = Frontier::new();
        loop {
            let page = self.range(v.next_seq(), PAGE)?;
            for (i, (seq, _)) in page.iter().enumerate() {
                let position = v.next_seq() + i as u64;
                if *seq != position {
                    return Ok(Err(VerifyError {
                        seq: position,
                        kind: crate::VerifyErrorKind::SeqMismatch {
                            position,
                            found: *seq,
                        },
                    }));
                }
            }
            // Signatures of the whole page in one batch; chain rules entry by entry.
            let bytes: Vec<&[u8]> = page.iter().map(|(_, b)| b.as_slice()).collect();
            if let Err(e) = crate::entry::verify_batch(&mut v, &bytes) {
                return Ok(Err(e));
            }
            for bytes in bytes {
                tree.append(merkle::leaf_hash(bytes));
                // Every checkpoint must sign the root of exactly the entries before it.
                while let Some((size, note)) = cps.next_if(|(size, _)| *size <= tree.size()) {
                    let bad = |detail: String| VerifyError {
                        seq: size.saturating_sub(1),
                        kind: crate::VerifyErrorKind::Checkpoint(detail),
                    };
                    let cp = match Checkpoint::verify(note, &feed, None) {
                        Ok(cp) => cp,
                        Err(e) => return Ok(Err(bad(format!("checkpoint {size}: {e}")))),
                    };
                    if cp.size != *size || *size != tree.size() || cp.root != tree.root() {
                        return Ok(Err(bad(format!(
                            "checkpoint {size} does not sign the root of the first {size} entries"
                        ))));
                    }
                }
            }
            if page.len() < PAGE {
                if let Some((size, _)) = cps.next() {
                    return Ok(Err(VerifyError {
                        seq: v.next_seq(),
                        kind: crate::VerifyErrorKind::Checkpoint(format!(
                            "checkpoint {size} is beyond the last entry"
                        )),
                    }));
                }
                return Ok(Ok((v.next_seq(), v.head())));
            }
        }
    }
}

/// Where a verified replica stands: its size, head entry id, Merkle root, and whether its last
/// trusted checkpoint signs exactly that root.
#[derive(Clone, Debug)]
pub struct ReplicaVerified {
    pub feed: PublicKey,
    pub size: u64,
    pub head: Option<ContentId>,
    pub root: Hash,
    /// Size of the last trusted checkpoint, which was checked against the replica's tree.
    pub trusted_size: Option<u64>,
    /// The trusted checkpoint itself.
    pub trusted: Option<Checkpoint>,
    /// The tree's right border, to go on appending.
    pub tree: Frontier,
    /// Signed time of the last entry.
    pub last_time_ms: Option<u64>,
}

impl Reader<'_> {
    /// Re-checks a replicated feed from its first entry (decoding, signatures by the feed's key,
    /// sequence and links), computes its Merkle root, and checks its trusted checkpoint against
    /// the tree at the checkpoint's size.
    pub fn verify_replica(
        &self,
        feed: &[u8; 32],
    ) -> Result<Result<ReplicaVerified, VerifyError>, StoreError> {
        let file: &Path = self.path;
        let txn = self.txn()?;
        let c = txn.open_table(REPLICA_CHECKPOINTS).at(file)?;
        let note = c.get(feed).at(file)?.map(|v| v.value().to_owned());
        self.verify_replica_noted(feed, note)
    }

    /// Every replica, verified as [`Reader::verify_replica`] does, in key order.
    #[allow(clippy::type_complexity)]
    pub fn verify_replicas(
        &self,
    ) -> Result<Vec<([u8; 32], Result<ReplicaVerified, VerifyError>)>, StoreError> {
        self.replica_heads()?
            .into_iter()
            .map(|(feed, _, note)| Ok((feed, self.verify_replica_noted(&feed, note)?)))
            .collect()
    }

    fn verify_replica_noted(
        &self,
        feed: &[u8; 32],
        note: Option<String>,
    ) -> Result<Result<ReplicaVerified, VerifyError>, StoreError> {
        const PAGE: usize = 1024;
        let key = PublicKey::from_bytes(feed).ok_or_else(|| StoreError::Corrupt {
            path: self.path.to_owned(),
            detail: "a replica is keyed by bytes that are not a public key".into(),
        })?;
        let trusted = match note.map(|n| Checkpoint::verify(&n, &key, None)) {
            None => None,
            Some(Ok(cp)) => Some(cp),
            Some(Err(e)) => {
                return Ok(Err(VerifyError {
                    seq: 0,
                    kind: crate::VerifyErrorKind::Checkpoint(format!("trusted checkpoint: {e}")),
                }));
            }
        };
        let mut v = FeedVerifier::new(key);
        let mut tree = Frontier::new();
        let mut trusted_ok = false;
        loop {
            let page = self.replica_range(feed, v.next_seq(), PAGE)?;
            let contiguous = page
                .iter()
                .enumerate()
                .take_while(|(i, (seq, _))| *seq == v.next_seq() + *i as u64)
                .count();
            let bytes: Vec<&[u8]> = page[..contiguous]
                .iter()
                .map(|(_, b)| b.as_slice())
                .collect();
            if let Err(e) = crate::entry::verify_batch(&mut v, &bytes) {
                return Ok(Err(e));
            }
            for b in &bytes {
                tree.append(merkle::leaf_hash(b));
                if let Some(cp) = &trusted
                    && cp.size == tree.size()
                {
                    if cp.root != tree.root() {
                        return Ok(Err(VerifyError {
                            seq: cp.size - 1,
                            kind: crate::VerifyErrorKind::Checkpoint(format!(
                                "trusted checkpoint {} does not sign the replica's root",
                                cp.size
                            )),
                        }));
                    }
                    trusted_ok = true;
                }
            }
            if contiguous < page.len() {
                return Ok(Err(VerifyError {
                    seq: v.next_seq(),
                    kind: crate::VerifyErrorKind::SeqMismatch {
                        position: v.next_seq(),
                        found: page[contiguous].0,
                    },
                }));
            }
            if page.len() < PAGE {
                break;
            }
        }
        if let Some(cp) = &trusted
            && !trusted_ok
        {
            return Ok(Err(VerifyError {
                seq: v.next_seq(),
                kind: crate::VerifyErrorKind::Checkpoint(format!(
                    "trusted checkpoint {} is beyond the replica's {} entries",
                    cp.size,
                    v.next_seq()
                )),
            }));
        }
        let last_time_ms = match v.next_seq() {
            0 => None,
            n => self
                .replica_range(feed, n - 1, 1)?
                .first()
                .and_then(|(_, b)| SignedEntry::decode_verified(b).ok())
                .map(|e| e.body().time_ms),
        };
        Ok(Ok(ReplicaVerified {
            last_time_ms,
            feed: key,
            size: v.next_seq(),
            head: v.head(),
            root: tree.root(),
            trusted_size: trusted.as_ref().map(|c| c.size),
            trusted,
            tree,
        }))
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
