//! Opening a ledger file read-only, for auditors, while its node may be writing it.

use super::*;

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
