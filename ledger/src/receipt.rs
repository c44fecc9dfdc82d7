//! Offline receipts: an entry, its inclusion proof, and the signed checkpoint it proves against.
//!
//! A receipt verifies with nothing but itself: the entry carries the feed key, the feed key
//! signs the checkpoint, and the checkpoint's root anchors the inclusion proof.
//!
//! ```json
//! {"format": "fabnode-receipt/v1", "entry": "<hex of the signed entry>",
//!  "leaf_index": 41, "tree_size": 360, "inclusion_proof": ["<hex>", ...],
//!  "checkpoint": "<the signed checkpoint note>"}
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::merkle::{self, Hash, VerifyProofError};
use crate::signed::SignedError;
use crate::{Cbor, Entry, SignedEntry};

pub const RECEIPT_FORMAT: &str = "fabnode-receipt/v1";
/// Largest receipt file accepted.
pub const RECEIPT_BYTES_MAX: usize = 64 * 1024;

/// An inclusion receipt, as written to a file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub format: String,
    pub entry: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    pub inclusion_proof: Vec<String>,
    pub checkpoint: String,
}

/// What a verified receipt proves.
#[derive(Clone, Debug)]
pub struct VerifiedReceipt {
    pub entry: SignedEntry,
    pub checkpoint: Checkpoint,
}

/// Why a receipt was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptError {
    #[error("receipt is {0} bytes, over the limit of {RECEIPT_BYTES_MAX}")]
    TooLarge(usize),
    #[error("receipt is not valid JSON of the receipt format: {0}")]
    Json(String),
    #[error("receipt format is `{0}`, expected `{RECEIPT_FORMAT}`")]
    Format(String),
    #[error("receipt entry: {0}")]
    Entry(String),
    #[error("receipt checkpoint: {0}")]
    Checkpoint(CheckpointError),
    #[error("receipt proves leaf {index} but the entry is seq {seq}")]
    IndexMismatch { index: u64, seq: u64 },
    #[error("receipt claims tree size {claimed} but the checkpoint signs size {signed}")]
    SizeMismatch { claimed: u64, signed: u64 },
    #[error("inclusion proof element {0} is not 32 bytes of hex")]
    BadProofElement(usize),
    #[error("inclusion proof: {0}")]
    Proof(VerifyProofError),
}

impl Receipt {
    /// Builds a receipt from parts the caller has already checked.
    pub fn new(
        entry: &SignedEntry,
        tree_size: u64,
        proof: &[Hash],
        checkpoint: &Checkpoint,
    ) -> Self {
        Receipt {
            format: RECEIPT_FORMAT.to_owned(),
            entry: hex::encode(entry.encode()),
            leaf_index: entry.body().seq,
            tree_size,
            inclusion_proof: proof.iter().map(hex::encode).collect(),
            checkpoint: checkpoint.note.clone(),
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ReceiptError> {
        if bytes.len() > RECEIPT_BYTES_MAX {
            return Err(ReceiptError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| ReceiptError::Json(e.to_string()))
    }

    /// Checks everything, with no node and no data dir.
    pub fn verify(&self) -> Result<VerifiedReceipt, ReceiptError> {
        if self.format != RECEIPT_FORMAT {
            return Err(ReceiptError::Format(self.format.clone()));
        }
        let bytes = hex::decode(&self.entry).map_err(|_| ReceiptError::Entry("not hex".into()))?;
        if bytes.len() > Entry::BYTES_MAX + 128 {
            return Err(ReceiptError::Entry(format!(
                "{} bytes is over the entry limit",
                bytes.len()
            )));
        }
        let entry = SignedEntry::decode_verified(&bytes)
            .map_err(|e: SignedError| ReceiptError::Entry(e.to_string()))?;
        let seq = entry.body().seq;
        if self.leaf_index != seq {
            return Err(ReceiptError::IndexMismatch {
                index: self.leaf_index,
                seq,
            });
        }
        let checkpoint = Checkpoint::verify(&self.checkpoint, &entry.body().feed, None)
            .map_err(ReceiptError::Checkpoint)?;
        if checkpoint.size != self.tree_size {
            return Err(ReceiptError::SizeMismatch {
                claimed: self.tree_size,
                signed: checkpoint.size,
            });
        }
        let proof = self
            .inclusion_proof
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out)
                    .map(|_| out)
                    .map_err(|_| ReceiptError::BadProofElement(i))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        merkle::verify_inclusion(
            seq,
            checkpoint.size,
            &merkle::leaf_hash(&bytes),
            &proof,
            &checkpoint.root,
        )
        .map_err(ReceiptError::Proof)?;
        Ok(VerifiedReceipt { entry, checkpoint })
    }
}
