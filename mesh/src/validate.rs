//! What a node does with a gossip message before using or forwarding it. Pure: bytes in, verdict
//! out, so the simulator and the fuzzer drive exactly what the node runs.

use fab_ledger::checkpoint::Checkpoint;
use fab_ledger::{PublicKey, SignedEntry};

use crate::shard::Scope;
use crate::wire::GossipMsg;

/// A message that passed every check.
#[derive(Clone, Debug)]
pub enum Valid {
    Entry(SignedEntry),
    /// Consecutive entries of one feed, in order.
    Entries(Vec<SignedEntry>),
    Checkpoint {
        feed: PublicKey,
        checkpoint: Checkpoint,
    },
}

impl Valid {
    /// The feed the message belongs to.
    pub fn feed(&self) -> Option<PublicKey> {
        match self {
            Valid::Entry(e) => Some(e.body().feed),
            Valid::Entries(es) => es.first().map(|e| e.body().feed),
            Valid::Checkpoint { feed, .. } => Some(*feed),
        }
    }
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
/// signatures (an entry's and its embedded job request's; a checkpoint's by the named feed), that
/// a checkpoint's origin belongs to this network, and that a batch of entries is one feed's
/// consecutive run. A batch's signatures are checked together
/// ([`fab_ledger::entry::decode_verified_many`]); one bad entry rejects the whole message.
pub fn validate(network: &str, payload: &[u8]) -> Verdict {
    validate_in(network, &Scope::ALL, payload)
}

/// [`validate`] on the ledger topic of `scope`'s shard: a message about a feed of another
/// shard does not belong there and is rejected too.
pub fn validate_in(network: &str, scope: &Scope, payload: &[u8]) -> Verdict {
    match check(network, payload) {
        Verdict::Accept(valid)
            if let Some(feed) = valid.feed()
                && !scope.contains(&feed) =>
        {
            Verdict::Reject(format!(
                "a feed of shard {} on shard {}'s topic",
                scope.shards.of(&feed),
                scope.shard
            ))
        }
        v => v,
    }
}

fn check(network: &str, payload: &[u8]) -> Verdict {
    let msg = match GossipMsg::decode(payload) {
        Ok(m) => m,
        Err(e) => return Verdict::Reject(e.to_string()),
    };
    match msg {
        GossipMsg::Entry(bytes) => match SignedEntry::decode_verified(&bytes) {
            Ok(e) => Verdict::Accept(Box::new(Valid::Entry(e))),
            Err(e) => Verdict::Reject(format!("entry: {e}")),
        },
        GossipMsg::Entries(list) => match fab_ledger::entry::decode_verified_many(&list) {
            Ok(entries) => {
                let run = entries.first().is_some_and(|first| {
                    let first = first.body();
                    entries.iter().enumerate().all(|(i, e)| {
                        // Checked: [u64::MAX, 0] is not a run.
                        e.body().feed == first.feed
                            && first.seq.checked_add(i as u64) == Some(e.body().seq)
                    })
                });
                if run {
                    Verdict::Accept(Box::new(Valid::Entries(entries)))
                } else {
                    Verdict::Reject("entries: not consecutive entries of one feed".into())
                }
            }
            Err((i, e)) => Verdict::Reject(format!("entries: #{i}: {e}")),
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
    use crate::wire::{ENTRIES_PER_GOSSIP_MAX, GOSSIP_BYTES_MAX};
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
    fn a_batch_that_wraps_around_the_sequence_space_is_not_a_run() {
        let key = Keypair::from_secret([3; 32]);
        let body = || EntryBody::Unknown {
            kind: 99,
            value: ciborium::Value::Array(vec![]),
        };
        let last = Signed::sign(
            fab_ledger::entry::Entry {
                feed: key.public(),
                seq: u64::MAX,
                prev: Some(fab_ledger::ContentId([7; 32])),
                body: body(),
                time_ms: 1,
            },
            &key,
        );
        let first = FeedWriter::resume(key.clone(), 0, None).append(body(), 1);
        let msg = GossipMsg::Entries(vec![last.encode(), first.encode()]).encode();
        assert!(
            matches!(validate("lab", &msg), Verdict::Reject(r) if r.contains("not consecutive"))
        );
    }

    fn feed(key: &Keypair, n: usize) -> Vec<Vec<u8>> {
        let mut w = FeedWriter::resume(key.clone(), 0, None);
        (0..n)
            .map(|i| {
                let body = EntryBody::Unknown {
                    kind: 99,
                    value: ciborium::Value::Integer(i.into()),
                };
                w.append(body, 1).encode()
            })
            .collect()
    }

    #[test]
    fn batches_of_entries_are_one_feeds_run_with_every_signature_good() {
        let key = Keypair::from_secret([1; 32]);
        let other = Keypair::from_secret([2; 32]);
        let run = feed(&key, 5);
        let ok = validate("lab", &GossipMsg::Entries(run.clone()).encode());
        let Verdict::Accept(v) = ok else {
            panic!("a good batch was refused: {ok:?}")
        };
        let Valid::Entries(got) = *v else {
            panic!("not a batch")
        };
        assert_eq!(
            got.iter().map(|e| e.body().seq).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );

        // One forged entry (re-signed by another key) rejects the message and is named.
        let mut forged = run.clone();
        let e = SignedEntry::decode_verified(&run[3]).unwrap();
        forged[3] = Signed::sign(e.body().clone(), &other).encode();
        let why = match validate("lab", &GossipMsg::Entries(forged).encode()) {
            Verdict::Reject(r) => r,
            v => panic!("forged batch accepted: {v:?}"),
        };
        assert!(why.contains("#3") && why.contains("signature"), "{why}");

        // A gap, a reordering, a repeat or a second feed is not a run.
        for bad in [
            vec![run[0].clone(), run[2].clone()],
            vec![run[1].clone(), run[0].clone()],
            vec![run[1].clone(), run[1].clone()],
            vec![run[0].clone(), feed(&other, 2)[1].clone()],
        ] {
            assert!(
                matches!(validate("lab", &GossipMsg::Entries(bad).encode()), Verdict::Reject(r) if r.contains("consecutive"))
            );
        }

        // Fewer than two, more than the limit, a non-bytes item or garbage inside: refused.
        let too_many = feed(&key, ENTRIES_PER_GOSSIP_MAX + 1);
        for bad in [vec![run[0].clone()], Vec::new(), too_many] {
            assert!(GossipMsg::decode(&GossipMsg::Entries(bad).encode()).is_err());
        }
        let not_bytes = fab_ledger::cbor::encode_value(&ciborium::Value::Array(vec![
            fab_ledger::cbor::uint(1),
            fab_ledger::cbor::uint(3),
            ciborium::Value::Array(vec![fab_ledger::cbor::uint(1), fab_ledger::cbor::uint(2)]),
        ]));
        assert!(GossipMsg::decode(&not_bytes).is_err());
        let garbage = GossipMsg::Entries(vec![run[0].clone(), vec![0xff, 0x00]]).encode();
        assert!(matches!(validate("lab", &garbage), Verdict::Reject(r) if r.contains("#1")));
    }

    #[test]
    fn packing_keeps_order_and_limits() {
        let key = Keypair::from_secret([1; 32]);
        let run = feed(&key, 2 * ENTRIES_PER_GOSSIP_MAX + 3);
        let note = GossipMsg::Checkpoint {
            feed: [9; 32],
            note: "x".into(),
        };
        let mut input: Vec<GossipMsg> = run.iter().cloned().map(GossipMsg::Entry).collect();
        input.insert(1, note.clone());
        let packed = GossipMsg::pack(input);
        // entry 0 alone (the checkpoint splits the run), the checkpoint, then full batches.
        assert_eq!(packed[0], GossipMsg::Entry(run[0].clone()));
        assert_eq!(packed[1], note);
        let mut seen = vec![run[0].clone()];
        for m in &packed[2..] {
            let bytes = m.encode();
            assert!(bytes.len() <= GOSSIP_BYTES_MAX);
            assert!(GossipMsg::decode(&bytes).is_ok());
            match m {
                GossipMsg::Entries(es) => seen.extend(es.iter().cloned()),
                GossipMsg::Entry(e) => seen.push(e.clone()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, run);
        assert_eq!(packed.len(), 2 + 3);

        // Big entries: the byte limit closes a batch before the count limit does.
        let big = vec![vec![7u8; 12 * 1024]; 5];
        let packed = GossipMsg::pack(big.iter().cloned().map(GossipMsg::Entry));
        assert!(packed.iter().all(|m| m.encode().len() <= GOSSIP_BYTES_MAX));
        assert_eq!(packed.len(), 3);
    }

    #[test]
    fn a_feed_of_another_shard_is_refused_on_a_shards_topic() {
        use crate::shard::Shards;
        let shards = Shards::new(2).unwrap();
        let keys: Vec<Keypair> = (1..=64u8).map(|i| Keypair::from_secret([i; 32])).collect();
        let scope = Scope::of(shards, &keys[0].public());
        let other = keys.iter().find(|k| !scope.contains(&k.public())).unwrap();
        let mine = GossipMsg::Entry(entry(&keys[0]).encode()).encode();
        let theirs = GossipMsg::Entry(entry(other).encode()).encode();
        assert!(matches!(
            validate_in("lab", &scope, &mine),
            Verdict::Accept(_)
        ));
        assert!(matches!(
            validate_in("lab", &scope, &theirs),
            Verdict::Reject(r) if r.contains("on shard")
        ));
        // Unsharded, both are fine.
        assert!(matches!(validate("lab", &theirs), Verdict::Accept(_)));
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
