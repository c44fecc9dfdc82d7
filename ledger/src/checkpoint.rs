//! Signed tree heads in the C2SP tlog-checkpoint format, as signed notes (C2SP signed-note).
//!
//! ```text
//! fabnode/<network>/<feed PeerId>
//! <tree size, decimal>
//! <root hash, base64>
//!
//! — fabnode/<network>/<feed PeerId> <base64(key id ‖ ed25519 signature)>
//! ```
//!
//! The signature is ed25519 over the note text (the three body lines, each ending in `\n`),
//! as the signed-note spec defines, so standard note verifiers check it; the origin line is the
//! domain separation. The key id is the first 4 bytes of
//! `SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key)` (0x01: Ed25519). The parser is strict: exactly
//! three body lines, canonical decimal, a 32-byte root, at most 16 signature lines, a final
//! newline, and nothing over [`NOTE_BYTES_MAX`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::identity::{Keypair, PublicKey};
use crate::merkle::Hash;

/// Largest checkpoint note accepted.
pub const NOTE_BYTES_MAX: usize = 4096;
/// Most signature lines accepted (the node's own plus witness cosignatures).
pub const SIGNATURES_MAX: usize = 16;
const EM_DASH: &str = "\u{2014} ";

/// A tree head: this feed had `size` entries with Merkle root `root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The whole signed note, exactly as signed and stored.
    pub note: String,
}

/// Why a checkpoint note was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("checkpoint is {0} bytes, over the limit of {NOTE_BYTES_MAX}")]
    TooLarge(usize),
    #[error("checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("checkpoint origin is `{found}`, expected `{expected}`")]
    WrongOrigin { expected: String, found: String },
    #[error("checkpoint carries no signature by the feed's key")]
    NotSigned,
    #[error("checkpoint signature by the feed's key does not verify")]
    BadSignature,
}

/// The origin line of a feed's checkpoints.
pub fn origin(network: &str, feed: &PublicKey) -> String {
    format!("fabnode/{network}/{}", feed.peer_id())
}

fn key_id(name: &str, key: &PublicKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([0x01]);
    h.update(key.to_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

impl Checkpoint {
    /// Signs a tree head with the feed's key.
    pub fn sign(key: &Keypair, network: &str, size: u64, root: Hash) -> Checkpoint {
        let origin = origin(network, &key.public());
        let text = body(&origin, size, &root);
        let sig = key.sign_raw(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&key_id(&origin, &key.public()));
        blob.extend_from_slice(&sig);
        let note = format!("{text}\n{EM_DASH}{origin} {}\n", B64.encode(blob));
        Checkpoint {
            origin,
            size,
            root,
            note,
        }
    }

    /// Parses a note and verifies the signature of `feed`, whose origin must be `expected_origin`
    /// (pass `None` to accept any origin that names `feed`).
    pub fn verify(
        note: &str,
        feed: &PublicKey,
        expected_origin: Option<&str>,
    ) -> Result<Checkpoint, CheckpointError> {
        let bad = |m: &str| CheckpointError::Malformed(m.to_owned());
        if note.len() > NOTE_BYTES_MAX {
            return Err(CheckpointError::TooLarge(note.len()));
        }
        let (text, sigs) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line between body and signatures"))?;
        let text = format!("{text}\n");
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != 3 {
            return Err(bad(&format!(
                "body has {} lines; a checkpoint has exactly 3 (origin, size, root)",
                lines.len()
            )));
        }
        let (origin, size_s, root_s) = (lines[0], lines[1], lines[2]);
        if origin.is_empty() || origin.chars().any(|c| c.is_control()) {
            return Err(bad("empty or invalid origin line"));
        }
        let want_origin = expected_origin.map_or_else(
            || {
                let net = origin
                    .strip_prefix("fabnode/")
                    .and_then(|r| r.rsplit_once('/'))
                    .map_or("", |(n, _)| n);
                self::origin(net, feed)
            },
            str::to_owned,
        );
        if origin != want_origin {
            return Err(CheckpointError::WrongOrigin {
                expected: want_origin,
                found: origin.to_owned(),
            });
        }
        let size: u64 = size_s
            .parse()
            .map_err(|_| bad("size is not a decimal integer"))?;
        if size.to_string() != size_s {
            return Err(bad("size is not in canonical decimal form"));
        }
        let root_bytes = B64.decode(root_s).map_err(|_| bad("root is not base64"))?;
        let root: Hash = root_bytes
            .try_into()
            .map_err(|_| bad("root is not 32 bytes"))?;
        if B64.encode(root) != root_s {
            return Err(bad("root is not in canonical base64"));
        }
        if !sigs.ends_with('\n') {
            return Err(bad("note does not end with a newline"));
        }
        let sig_lines: Vec<&str> = sigs
            .strip_suffix('\n')
            .unwrap_or(sigs)
            .split('\n')
            .collect();
        if sig_lines.is_empty() || sig_lines.len() > SIGNATURES_MAX {
            return Err(bad(&format!(
                "{} signature lines; 1 to {SIGNATURES_MAX} allowed",
                sig_lines.len()
            )));
        }
        let id = key_id(origin, feed);
        let mut found = false;
        for line in sig_lines {
            let rest = line
                .strip_prefix(EM_DASH)
                .ok_or_else(|| bad("signature line does not start with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("signature line has no signature"))?;
            let blob = B64
                .decode(b64)
                .map_err(|_| bad("signature is not base64"))?;
            if blob.len() < 5 {
                return Err(bad("signature is too short"));
            }
            if name != origin || blob[..4] != id {
                continue; // another signer (a witness); not ours to check here
            }
            let sig: [u8; 64] = blob[4..]
                .try_into()
                .map_err(|_| bad("ed25519 signature is not 64 bytes"))?;
            if !feed.verify_raw(text.as_bytes(), &sig) {
                return Err(CheckpointError::BadSignature);
            }
            found = true;
        }
        if !found {
            return Err(CheckpointError::NotSigned);
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            note: note.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_every_kind_of_bad_note() {
        let key = Keypair::from_secret([9; 32]);
        let other = Keypair::from_secret([10; 32]);
        let cp = Checkpoint::sign(&key, "local", 42, [7; 32]);
        let origin = origin("local", &key.public());
        assert!(cp.note.starts_with(&format!("{origin}\n42\n")));
        let back = Checkpoint::verify(&cp.note, &key.public(), Some(&origin)).unwrap();
        assert_eq!((back.size, back.root), (42, [7; 32]));
        assert!(Checkpoint::verify(&cp.note, &key.public(), None).is_ok());

        let n = &cp.note;
        let cases: Vec<(String, &str)> = vec![
            (n.replacen("\n42\n", "\n042\n", 1), "canonical decimal"),
            (n.replacen("\n42\n", "\n43\n", 1), "signature"),
            (n.replacen("\n42\n", "\n42\nextra\n", 1), "exactly 3"),
            (n.replacen(&format!("{origin}\n"), "", 1), "exactly 3"),
            (n.replacen("\n\n", "\n", 1), "blank line"),
            (n.trim_end().to_owned(), "newline"),
            (n.replacen("local", "other", 1), "origin"),
            (n.replace('\u{2014}', "-"), "em dash"),
            ("x".repeat(5000), "over the limit"),
        ];
        for (bad, why) in cases {
            let err = Checkpoint::verify(&bad, &key.public(), Some(&origin)).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        // Signed by another key under our origin: not our signature.
        let forged = Checkpoint::sign(&other, "local", 42, [7; 32])
            .note
            .replace(&origin_of(&other), &origin);
        assert!(Checkpoint::verify(&forged, &key.public(), Some(&origin)).is_err());
        // A witness cosignature line is ignored; ours still verifies.
        let witnessed = format!("{}\u{2014} witness.example AAAAAAAAAAAA\n", cp.note);
        assert!(Checkpoint::verify(&witnessed, &key.public(), Some(&origin)).is_ok());
    }

    fn origin_of(k: &Keypair) -> String {
        origin("local", &k.public())
    }
}
