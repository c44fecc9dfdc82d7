//! Equivocation evidence: two validly signed statements by one feed that cannot both be true.
//!
//! - two entries with the same feed and seq but different contents (a fork), or
//! - two checkpoints with the same size but different roots.
//!
//! Evidence verifies with nothing but itself; a verifier that accepts it should stop trusting
//! the feed (quarantine). JSON form:
//!
//! ```json
//! {"format": "fabnode-evidence/v1", "kind": "entries", "a": "<hex entry>", "b": "<hex entry>"}
//! {"format": "fabnode-evidence/v1", "kind": "checkpoints", "feed": "<hex public key>",
//!  "a": "<note>", "b": "<note>"}
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::checkpoint::Checkpoint;
use crate::{PublicKey, SignedEntry};

pub const EVIDENCE_FORMAT: &str = "fabnode-evidence/v1";
pub const EVIDENCE_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub format: String,
    /// `entries` or `checkpoints`.
    pub kind: String,
    /// For checkpoints: the feed's public key, hex (a note names its signer only by key id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    pub a: String,
    pub b: String,
}

/// What verified evidence shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    pub feed: PublicKey,
    pub kind: &'static str,
    /// The seq of the forked entry, or the size of the conflicting checkpoints.
    pub at: u64,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvidenceError {
    #[error("evidence is {0} bytes, over the limit of {EVIDENCE_BYTES_MAX}")]
    TooLarge(usize),
    #[error("evidence is not valid JSON of the evidence format: {0}")]
    Json(String),
    #[error("evidence format is `{0}`, expected `{EVIDENCE_FORMAT}`")]
    Format(String),
    #[error("evidence kind `{0}` is not `entries` or `checkpoints`")]
    Kind(String),
    #[error("statement {which}: {detail}")]
    Invalid { which: &'static str, detail: String },
    #[error("not a conflict: {0}")]
    NoConflict(String),
}

impl Evidence {
    pub fn entries(a: &SignedEntry, b: &SignedEntry) -> Self {
        Evidence {
            format: EVIDENCE_FORMAT.into(),
            kind: "entries".into(),
            feed: None,
            a: hex::encode(a.encode()),
            b: hex::encode(b.encode()),
        }
    }

    pub fn checkpoints(feed: &PublicKey, a: &Checkpoint, b: &Checkpoint) -> Self {
        Evidence {
            format: EVIDENCE_FORMAT.into(),
            kind: "checkpoints".into(),
            feed: Some(hex::encode(feed.to_bytes())),
            a: a.note.clone(),
            b: b.note.clone(),
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > EVIDENCE_BYTES_MAX {
            return Err(EvidenceError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| EvidenceError::Json(e.to_string()))
    }

    /// Checks both statements' signatures and that they conflict.
    pub fn verify(&self) -> Result<Equivocation, EvidenceError> {
        if self.format != EVIDENCE_FORMAT {
            return Err(EvidenceError::Format(self.format.clone()));
        }
        match self.kind.as_str() {
            "entries" => {
                let decode = |which: &'static str, h: &str| {
                    let bytes = hex::decode(h).map_err(|_| EvidenceError::Invalid {
                        which,
                        detail: "not hex".into(),
                    })?;
                    SignedEntry::decode_verified(&bytes).map_err(|e| EvidenceError::Invalid {
                        which,
                        detail: e.to_string(),
                    })
                };
                let (a, b) = (decode("a", &self.a)?, decode("b", &self.b)?);
                let (ea, eb) = (a.body(), b.body());
                if ea.feed != eb.feed {
                    return Err(EvidenceError::NoConflict(
                        "the entries belong to different feeds".into(),
                    ));
                }
                if ea.seq != eb.seq {
                    return Err(EvidenceError::NoConflict(format!(
                        "different seqs {} and {}",
                        ea.seq, eb.seq
                    )));
                }
                if a.id() == b.id() {
                    return Err(EvidenceError::NoConflict(
                        "the two entries are the same".into(),
                    ));
                }
                Ok(Equivocation {
                    feed: ea.feed,
                    kind: "entries",
                    at: ea.seq,
                })
            }
            "checkpoints" => {
                let key = self
                    .feed
                    .as_deref()
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .and_then(|b| PublicKey::from_bytes(&b))
                    .ok_or(EvidenceError::Invalid {
                        which: "feed",
                        detail: "not a 32-byte hex public key".into(),
                    })?;
                let a = Checkpoint::verify(&self.a, &key, None).map_err(|e| {
                    EvidenceError::Invalid {
                        which: "a",
                        detail: e.to_string(),
                    }
                })?;
                let b = Checkpoint::verify(&self.b, &key, None).map_err(|e| {
                    EvidenceError::Invalid {
                        which: "b",
                        detail: e.to_string(),
                    }
                })?;
                if a.origin != b.origin {
                    return Err(EvidenceError::NoConflict(
                        "the checkpoints have different origins".into(),
                    ));
                }
                if a.size != b.size {
                    return Err(EvidenceError::NoConflict(format!(
                        "different sizes {} and {}",
                        a.size, b.size
                    )));
                }
                if a.root == b.root {
                    return Err(EvidenceError::NoConflict(
                        "the two checkpoints sign the same root".into(),
                    ));
                }
                Ok(Equivocation {
                    feed: key,
                    kind: "checkpoints",
                    at: a.size,
                })
            }
            other => Err(EvidenceError::Kind(other.to_owned())),
        }
    }
}
