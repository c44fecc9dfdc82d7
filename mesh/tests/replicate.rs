//! The replication core, driven by hand through virtual time. Every scenario runs twice and the
//! two output traces must be identical (determinism).

use std::time::Duration;

use fab_ledger::checkpoint::Checkpoint;
use fab_ledger::merkle::MemoryTree;
use fab_ledger::{EntryBody, FeedWriter, Keypair, Signed, SignedEntry};
use fab_mesh::replicate::{Input, Output, ReplicateConfig, Replicator};

type Peer = u32;

fn feed(secret: u8, n: u64) -> (Keypair, Vec<SignedEntry>) {
    let key = Keypair::from_secret([secret; 32]);
    let mut w = FeedWriter::resume(key.clone(), 0, None);
    let es = (0..n)
        .map(|i| {
            w.append(
                EntryBody::Unknown {
                    kind: 7,
                    value: ciborium::Value::Integer(i.into()),
                },
                i,
            )
        })
        .collect();
    (key, es)
}

fn root_of(es: &[SignedEntry]) -> [u8; 32] {
    let mut t = MemoryTree::new();
    for e in es {
        t.push_leaf_data(&e.encode());
    }
    t.root()
}

fn stored_seqs(out: &[Output<Peer>]) -> Vec<u64> {
    out.iter()
        .flat_map(|o| match o {
            Output::Store { entries, .. } => entries.iter().map(|e| e.body().seq).collect(),
            _ => vec![],
        })
        .collect()
}

fn run(inputs: Vec<(Input<Peer>, u64)>, config: ReplicateConfig) -> (Vec<Output<Peer>>, String) {
    let mut r = Replicator::<Peer>::new(config);
    let mut out = Vec::new();
    for (input, ms) in inputs {
        r.handle(input, Duration::from_millis(ms), &mut out);
    }
    let heads = format!("{:?}", r.heads());
    (out, heads)
}

fn twice(inputs: Vec<(Input<Peer>, u64)>, config: ReplicateConfig) -> Vec<Output<Peer>> {
    let (a, ha) = run(inputs.clone(), config.clone());
    let (b, hb) = run(inputs, config);
    assert_eq!(
        format!("{a:?}"),
        format!("{b:?}"),
        "same inputs, same outputs"
    );
    assert_eq!(ha, hb);
    a
}

fn entry(from: Peer, e: &SignedEntry) -> Input<Peer> {
    Input::Entry {
        from,
        entry: e.clone(),
    }
}

#[test]
fn in_order_entries_are_stored_and_duplicates_dropped() {
    let (_, es) = feed(1, 4);
    let inputs = vec![
        (entry(1, &es[0]), 0),
        (entry(2, &es[1]), 1),
        (entry(1, &es[1]), 2),
        (entry(1, &es[2]), 3),
        (entry(3, &es[3]), 4),
    ];
    let out = twice(inputs, ReplicateConfig::default());
    assert_eq!(stored_seqs(&out), vec![0, 1, 2, 3]);
    assert_eq!(out.len(), 4, "the duplicate produced nothing: {out:?}");
}

#[test]
fn a_gap_is_requested_once_buffered_entries_land_when_it_fills() {
    let (key, es) = feed(1, 6);
    let inputs = vec![
        (entry(1, &es[0]), 0),
        (entry(2, &es[4]), 10), // gap 1..4: ask peer 2 for 1..=3... up to 4
        (entry(2, &es[5]), 11), // still waiting: no second request
        (entry(3, &es[3]), 12),
        (
            Input::Range {
                from: 2,
                feed: key.public(),
                start: 1,
                entries: es[1..4].iter().map(|e| e.encode()).collect(),
            },
            20,
        ),
    ];
    let out = twice(inputs, ReplicateConfig::default());
    let requests: Vec<_> = out
        .iter()
        .filter(|o| matches!(o, Output::Request { .. }))
        .collect();
    assert_eq!(
        requests,
        vec![&Output::Request {
            peer: 2,
            feed: key.public(),
            start: 1,
            count: 3
        }]
    );
    assert_eq!(stored_seqs(&out), vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn an_unanswered_request_is_retried_after_the_timeout() {
    let (_, es) = feed(1, 3);
    let config = ReplicateConfig {
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let inputs = vec![
        (entry(4, &es[2]), 0),
        (Input::Tick, 100),
        (Input::Tick, 600),
    ];
    let out = twice(inputs, config);
    let starts: Vec<(u32, u64, u64)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Request {
                peer, start, count, ..
            } => Some((*peer, *start, *count)),
            _ => None,
        })
        .collect();
    assert_eq!(starts, vec![(4, 0, 2), (4, 0, 2)]);
}

#[test]
fn a_peer_that_never_answers_does_not_hold_a_gap_open() {
    // Found by the simulator (fault-mix seed 1181): a late message from a node that had left
    // made the replica ask it for the gap, and every timeout asked it again, forever. Each
    // timeout now asks the next connected peer in turn.
    let (_, es) = feed(1, 3);
    let config = ReplicateConfig {
        request_timeout: Duration::from_millis(500),
        heads_every: Duration::from_secs(3600),
        ..Default::default()
    };
    let inputs = vec![
        (Input::PeerUp(4), 0),
        (Input::PeerUp(5), 0),
        (entry(7, &es[2]), 1),
        (Input::Tick, 600),
        (Input::Tick, 1200),
        (Input::Tick, 1800),
    ];
    let out = twice(inputs, config);
    let asked: Vec<u32> = out
        .iter()
        .filter_map(|o| match o {
            Output::Request { peer, start: 0, .. } => Some(*peer),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![7, 4, 5, 4], "{out:?}");
}

#[test]
fn checkpoints_are_trusted_when_they_sign_the_replica_and_conflicts_are_reported() {
    let (key, es) = feed(1, 5);
    let good = Checkpoint::sign(&key, "t", 5, root_of(&es));
    let bad = Checkpoint::sign(&key, "t", 5, [9; 32]);
    let ahead = Checkpoint::sign(&key, "t", 9, [1; 32]);
    let mut inputs: Vec<(Input<Peer>, u64)> = es.iter().map(|e| (entry(1, e), 0)).collect();
    inputs.push((
        Input::Checkpoint {
            from: 1,
            feed: key.public(),
            checkpoint: good.clone(),
        },
        1,
    ));
    inputs.push((
        Input::Checkpoint {
            from: 1,
            feed: key.public(),
            checkpoint: bad,
        },
        2,
    ));
    inputs.push((
        Input::Checkpoint {
            from: 6,
            feed: key.public(),
            checkpoint: ahead,
        },
        3,
    ));
    let out = twice(inputs, ReplicateConfig::default());
    assert!(out.contains(&Output::Trust {
        feed: key.public(),
        checkpoint: good
    }));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Conflict { seq: 4, .. }))
    );
    assert!(out.contains(&Output::Request {
        peer: 6,
        feed: key.public(),
        start: 5,
        count: 4
    }));
}

#[test]
fn forks_and_bad_range_responses() {
    let (key, es) = feed(1, 3);
    // A second entry 1 signed by the feed (a fork): same seq, different content.
    let mut w = FeedWriter::resume(key.clone(), 1, Some(es[0].id()));
    let fork = w.append(
        EntryBody::Unknown {
            kind: 7,
            value: ciborium::Value::Integer(999.into()),
        },
        1,
    );
    let other = Keypair::from_secret([2; 32]);
    let forged = Signed::sign(es[2].body().clone(), &other).encode();
    let inputs = vec![
        (entry(1, &es[0]), 0),
        (entry(1, &es[1]), 1),
        (entry(2, &fork), 2),
        (
            Input::Range {
                from: 3,
                feed: key.public(),
                start: 2,
                entries: vec![forged],
            },
            3,
        ),
        (
            Input::Range {
                from: 4,
                feed: key.public(),
                start: 2,
                entries: vec![es[1].encode()],
            },
            4,
        ),
        (
            Input::Range {
                from: 5,
                feed: key.public(),
                start: 2,
                entries: vec![es[2].encode()],
            },
            5,
        ),
    ];
    let out = twice(inputs, ReplicateConfig::default());
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Conflict { seq: 1, .. })),
        "{out:?}"
    );
    // With the evidence: the held entry 1 and the fork, which verifies offline.
    let proof = out
        .iter()
        .find_map(|o| match o {
            Output::Evidence { feed, held, other } => {
                assert_eq!(*feed, key.public());
                assert_eq!((held.id(), other.id()), (es[1].id(), fork.id()));
                Some(fab_ledger::evidence::Evidence::entries(held, other))
            }
            _ => None,
        })
        .expect("evidence of the fork");
    let shown = proof.verify().unwrap();
    assert_eq!((shown.feed, shown.at), (key.public(), 1));
    assert!(out.iter().any(
        |o| matches!(o, Output::Penalize { peer: 3, reason } if reason.contains("signature"))
    ));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Penalize { peer: 4, .. }))
    );
    assert_eq!(stored_seqs(&out), vec![0, 1, 2]);
}

#[test]
fn a_range_with_a_forged_entry_inside_keeps_the_good_prefix_and_penalises_the_sender() {
    let (key, es) = feed(1, 6);
    let other = Keypair::from_secret([2; 32]);
    let mut bad: Vec<Vec<u8>> = es[..4].iter().map(|e| e.encode()).collect();
    bad[2] = Signed::sign(es[2].body().clone(), &other).encode();
    let inputs = vec![
        (
            Input::Range {
                from: 3,
                feed: key.public(),
                start: 0,
                entries: bad,
            },
            0,
        ),
        (
            Input::Range {
                from: 4,
                feed: key.public(),
                start: 2,
                entries: es[2..].iter().map(|e| e.encode()).collect(),
            },
            1,
        ),
    ];
    let out = twice(inputs, ReplicateConfig::default());
    assert!(out.iter().any(
        |o| matches!(o, Output::Penalize { peer: 3, reason } if reason.contains("range entry 2") && reason.contains("signature"))
    ), "{out:?}");
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Penalize { peer: 4, .. }))
    );
    assert_eq!(stored_seqs(&out), vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn heads_exchange_requests_what_is_missing_and_buffers_are_bounded() {
    let (a, es) = feed(1, 40);
    let (b, _) = feed(2, 1);
    let config = ReplicateConfig {
        pending_max: 8,
        range_max: 16,
        ..Default::default()
    };
    let mut inputs = vec![(
        Input::Heads {
            from: 9,
            heads: vec![(a.public(), 40), (b.public(), 0)],
        },
        0,
    )];
    // 30 out-of-order entries arrive while the gap is open: only 8 are kept.
    inputs.extend(es[10..40].iter().map(|e| (entry(9, e), 1)));
    let (out, heads) = run(inputs, config);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Request { .. }))
            .count(),
        1
    );
    assert!(out.contains(&Output::Request {
        peer: 9,
        feed: a.public(),
        start: 0,
        count: 16
    }));
    assert!(heads.contains("pending: 8"), "{heads}");
}

#[test]
fn heads_are_asked_of_new_peers_and_of_two_peers_per_round_in_rotation() {
    let config = ReplicateConfig::default(); // every 3 s, two peers
    let inputs = vec![
        (Input::PeerUp(5), 0),
        (Input::PeerUp(5), 10), // a second connection: not asked again
        (Input::PeerUp(1), 20),
        (Input::PeerUp(3), 30),
        (Input::Tick, 100),  // first round: 1, 3
        (Input::Tick, 1000), // not due
        (Input::Tick, 3100), // 5, 1
        (Input::PeerDown(1), 3200),
        (Input::Tick, 6100), // 3, 5 (rotation over what is left)
    ];
    let out = twice(inputs, config);
    let asked: Vec<Peer> = out
        .iter()
        .map(|o| match o {
            Output::AskHeads { peer } => *peer,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(asked, [5, 1, 3, 1, 3, 5, 1, 5, 3]);
}

#[test]
fn a_gap_asked_of_a_peer_that_left_is_asked_of_another_at_once() {
    let (a, _) = feed(1, 10);
    let inputs = vec![
        (Input::PeerUp(1), 0),
        (Input::PeerUp(2), 0),
        (
            Input::Heads {
                from: 1,
                heads: vec![(a.public(), 10)],
            },
            10,
        ),
        // Peer 2 reports the same while the request to 1 is outstanding: nothing new.
        (
            Input::Heads {
                from: 2,
                heads: vec![(a.public(), 10)],
            },
            20,
        ),
        (Input::PeerDown(1), 30),
        // Now the gap is free: 2's next report asks 2, without waiting for the timeout.
        (
            Input::Heads {
                from: 2,
                heads: vec![(a.public(), 10)],
            },
            40,
        ),
    ];
    let out = twice(inputs, ReplicateConfig::default());
    let requests: Vec<(Peer, u64)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Request { peer, start, .. } => Some((*peer, *start)),
            _ => None,
        })
        .collect();
    assert_eq!(requests, [(1, 0), (2, 0)]);
}

#[test]
fn a_sharded_node_follows_only_the_feeds_of_its_shard() {
    use fab_mesh::shard::{Scope, Shards};
    let shards = Shards::new(2).unwrap();
    let own = Keypair::from_secret([9; 32]).public();
    let scope = Scope::of(shards, &own);
    // One feed in this node's shard and one outside it.
    let (inside, ins) = (1..=255u8)
        .map(|s| feed(s, 3))
        .find(|(k, _)| scope.contains(&k.public()))
        .unwrap();
    let (outside, outs) = (1..=255u8)
        .map(|s| feed(s, 3))
        .find(|(k, _)| !scope.contains(&k.public()))
        .unwrap();
    let config = ReplicateConfig {
        scope,
        ..ReplicateConfig::default()
    };
    let inputs = vec![
        (entry(1, &ins[0]), 0),
        (entry(1, &outs[0]), 1),
        (
            Input::Heads {
                from: 2,
                heads: vec![(inside.public(), 3), (outside.public(), 3)],
            },
            2,
        ),
        (
            Input::Checkpoint {
                from: 2,
                feed: outside.public(),
                checkpoint: Checkpoint::sign(&outside, "lab", 3, root_of(&outs)),
            },
            3,
        ),
    ];
    let out = twice(inputs.clone(), config.clone());
    assert_eq!(
        stored_seqs(&out),
        vec![0],
        "only the in-shard entry is stored"
    );
    let asked: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Request { feed, .. } => Some(*feed),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        vec![inside.public()],
        "only the in-shard gap is fetched"
    );
    let (_, heads) = run(inputs, config);
    assert!(heads.contains(&format!("{:?}", inside.public())));
    assert!(!heads.contains(&format!("{:?}", outside.public())));
}

#[test]
fn a_range_claimed_at_the_end_of_the_sequence_space_is_refused_without_overflow() {
    let (a, es) = feed(1, 2);
    // Entries 0 and 1, claimed to start at u64::MAX: positions past the end do not exist.
    let inputs = vec![(
        Input::Range {
            from: 9,
            feed: a.public(),
            start: u64::MAX,
            entries: es.iter().map(SignedEntry::encode).collect(),
        },
        0,
    )];
    let out = twice(inputs, ReplicateConfig::default());
    assert!(
        matches!(&out[..], [Output::Penalize { peer: 9, .. }]),
        "{out:?}"
    );
}

#[test]
fn out_of_order_entries_share_one_memory_budget_across_feeds() {
    // Twenty feeds, each with entries 1..=20 arriving before entry 0.
    let feeds: Vec<_> = (1..=20u8).map(|s| feed(s, 21)).collect();
    let one = feeds[0].1[5].signed_bytes().len() + 64;
    let config = ReplicateConfig {
        pending_bytes_max: one * 50,
        ..Default::default()
    };
    let mut r = Replicator::<Peer>::new(config.clone());
    let mut out = Vec::new();
    for (_, es) in &feeds {
        for e in &es[1..] {
            r.handle(entry(9, e), Duration::ZERO, &mut out);
        }
    }
    assert!(
        r.pending_bytes() <= config.pending_bytes_max,
        "{} > {}",
        r.pending_bytes(),
        config.pending_bytes_max
    );
    let held: usize = r.heads().iter().map(|h| h.pending).sum();
    assert!((45..=50).contains(&held), "{held} entries held");
    // As the gaps fill, the budget is given back, and the entries that were dropped are
    // fetched again in order.
    for (_, es) in &feeds {
        r.handle(entry(9, &es[0]), Duration::ZERO, &mut out);
    }
    assert_eq!(r.pending_bytes(), 0);
    assert_eq!(r.heads().iter().map(|h| h.pending).sum::<usize>(), 0);
}

#[test]
fn claims_about_fresh_feeds_cannot_grow_memory_or_evict_a_feed_with_entries() {
    let (a, es) = feed(1, 3);
    let config = ReplicateConfig {
        empty_feeds_max: 10,
        feeds_max: 100,
        ..Default::default()
    };
    let mut inputs: Vec<(Input<Peer>, u64)> = es.iter().map(|e| (entry(1, e), 0)).collect();
    // A peer names 1,000 fresh keys, 50 per heads answer.
    for round in 0..20u64 {
        let heads = (0..50u64)
            .map(|i| {
                let mut secret = [0u8; 32];
                secret[..8].copy_from_slice(&(round * 50 + i + 1000).to_le_bytes());
                (Keypair::from_secret(secret).public(), 5)
            })
            .collect();
        inputs.push((Input::Heads { from: 9, heads }, round + 1));
    }
    let mut r = Replicator::<Peer>::new(config);
    let mut out = Vec::new();
    for (input, ms) in inputs {
        r.handle(input, Duration::from_millis(ms), &mut out);
    }
    let heads = r.heads();
    assert!(heads.len() <= 11, "{} feeds followed", heads.len());
    let kept = heads
        .iter()
        .find(|h| h.feed == a.public())
        .expect("A is still followed");
    assert_eq!(kept.size, 3);
}

#[test]
fn a_fork_is_reported_once_per_position_and_at_most_so_often_per_feed() {
    let (key, es) = feed(1, 1);
    let fork = |v: u64| {
        FeedWriter::resume(key.clone(), 0, None).append(
            EntryBody::Unknown {
                kind: 8,
                value: ciborium::Value::Integer(v.into()),
            },
            v,
        )
    };
    let mut inputs = vec![(entry(1, &es[0]), 0)];
    // The same second entry 0 from many peers, then many different ones.
    let other = fork(1);
    inputs.extend((0..10).map(|p| (entry(p, &other), 1)));
    inputs.extend((2..40).map(|v| (entry(2, &fork(v)), 2)));
    let out = twice(
        inputs,
        ReplicateConfig {
            evidence_per_feed_max: 4,
            ..Default::default()
        },
    );
    let evidence = out
        .iter()
        .filter(|o| matches!(o, Output::Evidence { .. }))
        .count();
    let conflicts = out
        .iter()
        .filter(|o| matches!(o, Output::Conflict { .. }))
        .count();
    assert_eq!((evidence, conflicts), (1, 1), "{out:?}");
}

#[test]
fn the_core_names_when_it_next_needs_the_clock() {
    let (_, es) = feed(1, 5);
    let config = ReplicateConfig::default();
    let mut r = Replicator::<Peer>::new(config.clone());
    let mut out = Vec::new();
    let ms = Duration::from_millis;
    assert_eq!(r.poll_timeout(), None, "no peers, no requests: never woken");
    r.handle(Input::PeerUp(1), ms(10), &mut out);
    assert_eq!(
        r.poll_timeout(),
        Some(Duration::ZERO),
        "a heads exchange is due at once"
    );
    r.handle(Input::Tick, ms(10), &mut out);
    assert_eq!(r.poll_timeout(), Some(ms(10) + config.heads_every));
    // An entry ahead of the replica: its gap is asked for, and the request's timeout is the
    // earlier deadline.
    r.handle(entry(1, &es[3]), ms(20), &mut out);
    assert_eq!(r.poll_timeout(), Some(ms(20) + config.request_timeout));
    // The gap filled: only the heads exchange is left once a tick has looked.
    for e in &es[..3] {
        r.handle(entry(1, e), ms(30), &mut out);
    }
    r.handle(Input::Tick, ms(40), &mut out);
    assert_eq!(r.poll_timeout(), Some(ms(10) + config.heads_every));
    r.handle(Input::PeerDown(1), ms(50), &mut out);
    assert_eq!(r.poll_timeout(), None);
}
