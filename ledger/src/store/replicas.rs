//! Peers' feeds held as replicas: their heads, ranges, and re-verifying each from its first entry.

use super::*;

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
