//! Reading the own feed: entries, jobs, checkpoints, proofs, and re-verifying it.

use super::*;

impl Reader<'_> {
    pub(super) fn txn(&self) -> Result<redb::ReadTransaction, StoreError> {
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
