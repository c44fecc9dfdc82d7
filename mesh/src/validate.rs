//! What a node does with a gossip message before using or forwarding it. Pure: bytes in, verdict
//! out, so the simulator and the fuzzer drive exactly what the node runs.

use fab_ledger::checkpoint::Checkpoint;
use fab_ledger::{PublicKey, SignedEntry};

use crate::wire::GossipMsg;

/// A message that passed every check.
#[derive(Clone, Debug)]
pub enum Valid {
    Entry(SignedEntry),
    Checkpoint {
        feed: PublicKey,
        checkpoint: Checkpoint,
    },
}

/// The verdict on one gossip message.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Use it and forward it.
    Accept(Box<Valid>),
    /// Malformed, forged or for another network: drop it and penalise the sender.
    Reject(String),
}

/// Checks a gossip payload received on `network`'s ledger topic: canonical encoding, size,
/// signatures (an entry's and its embedded job request's; a checkpoint's by the named feed) and
/// that a checkpoint's origin belongs to this network.
pub fn validate(network: &str, payload: &[u8]) -> Verdict {
    let msg = match GossipMsg::decode(payload) {
        Ok(m) => m,
        Err(e) => return Verdict::Reject(e.to_string()),
    };
    match msg {
        GossipMsg::Entry(bytes) => match SignedEntry::decode_verified(&bytes) {
            Ok(e) => Verdict::Accept(Box::new(Valid::Entry(e))),
            Err(e) => Verdict::Reject(format!("entry: {e}")),
        },
        GossipMsg::Checkpoint { feed, note } => {
            let Some(feed) = PublicKey::from_bytes(&feed) else {
                return Verdict::Reject("checkpoint: feed is not a valid key".into());
            };
            let origin = fab_ledger::checkpoint::origin(network, &feed);
            match Checkpoint::verify(&note, &feed, Some(&origin)) {
                Ok(checkpoint) => Verdict::Accept(Box::new(Valid::Checkpoint { feed, checkpoint })),
                Err(e) => Verdict::Reject(format!("checkpoint: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fab_ledger::{EntryBody, FeedWriter, Keypair, Signed};

    fn entry(key: &Keypair) -> SignedEntry {
        let body = EntryBody::Unknown {
            kind: 99,
            value: ciborium::Value::Array(vec![]),
        };
        FeedWriter::resume(key.clone(), 0, None).append(body, 1)
    }

    #[test]
    fn valid_forged_malformed_oversized_and_foreign_messages() {
        let key = Keypair::from_secret([1; 32]);
        let good = GossipMsg::Entry(entry(&key).encode()).encode();
        assert!(matches!(
            validate("lab", &good),
            Verdict::Accept(v) if matches!(*v, Valid::Entry(_))
        ));

        let other = Keypair::from_secret([2; 32]);
        let forged = Signed::sign(entry(&key).body().clone(), &other);
        let forged = GossipMsg::Entry(forged.encode()).encode();
        assert!(matches!(validate("lab", &forged), Verdict::Reject(r) if r.contains("signature")));

        assert!(matches!(
            validate("lab", b"\xff\x00garbage"),
            Verdict::Reject(_)
        ));
        let oversized = GossipMsg::Entry(vec![0; 40 * 1024]).encode();
        assert!(
            matches!(validate("lab", &oversized), Verdict::Reject(r) if r.contains("over the limit"))
        );

        let cp = Checkpoint::sign(&key, "lab", 3, [5; 32]);
        let msg = GossipMsg::Checkpoint {
            feed: key.public().to_bytes(),
            note: cp.note.clone(),
        }
        .encode();
        assert!(matches!(
            validate("lab", &msg),
            Verdict::Accept(v) if matches!(*v, Valid::Checkpoint { .. })
        ));
        // The same checkpoint on another network, or claimed for another feed, is refused.
        assert!(matches!(validate("prod", &msg), Verdict::Reject(r) if r.contains("origin")));
        let wrong_feed = GossipMsg::Checkpoint {
            feed: other.public().to_bytes(),
            note: cp.note,
        }
        .encode();
        assert!(matches!(validate("lab", &wrong_feed), Verdict::Reject(_)));
    }

    #[test]
    fn round_trip_and_non_canonical_refusal() {
        let m = GossipMsg::Checkpoint {
            feed: [9; 32],
            note: "x".into(),
        };
        assert_eq!(GossipMsg::decode(&m.encode()).unwrap(), m);
        let mut bytes = GossipMsg::Entry(vec![1, 2, 3]).encode();
        // Re-encode the version as a two-byte integer: same value, non-canonical.
        bytes.splice(1..2, [0x18, 0x01]);
        assert!(GossipMsg::decode(&bytes).is_err());
    }
}
