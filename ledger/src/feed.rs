//! The sans-IO writer of a node's own feed.

use crate::{ContentId, Entry, EntryBody, Keypair, Signed, SignedEntry};

/// Numbers, links and signs new entries of one feed. It holds no I/O: the caller persists each
/// entry (durably) before handing out anything derived from it, and calls [`FeedWriter::rollback`]
/// if persisting failed so the numbering stays gap-free.
#[derive(Debug, Clone)]
pub struct FeedWriter {
    key: Keypair,
    next_seq: u64,
    head: Option<ContentId>,
}

impl FeedWriter {
    /// A writer that continues a feed whose last entry is `head` at `next_seq - 1`.
    pub fn resume(key: Keypair, next_seq: u64, head: Option<ContentId>) -> Self {
        debug_assert_eq!(next_seq == 0, head.is_none());
        FeedWriter {
            key,
            next_seq,
            head,
        }
    }

    /// Builds and signs the next entry and advances the head.
    pub fn append(&mut self, body: EntryBody, time_ms: u64) -> SignedEntry {
        let entry = Entry {
            feed: self.key.public(),
            seq: self.next_seq,
            prev: self.head,
            body,
            time_ms,
        };
        let signed = Signed::sign(entry, &self.key);
        self.next_seq += 1;
        self.head = Some(signed.id());
        signed
    }

    /// Resets the head after a batch could not be persisted.
    pub fn rollback(&mut self, next_seq: u64, head: Option<ContentId>) {
        self.next_seq = next_seq;
        self.head = head;
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn head(&self) -> Option<ContentId> {
        self.head
    }

    pub fn key(&self) -> &Keypair {
        &self.key
    }
}
