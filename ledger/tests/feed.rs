//! Feed rules and the redb store, end to end through real files.

use fab_ledger::store::{ENTRIES, ReadOnlyStore, Store, StoreError};
use fab_ledger::{
    ContentId, Determinism, EntryBody, ExecStatus, ExecutionReceipt, FeedWriter, JobRequest,
    Keypair, Metering, Signed, SignedEntry, Timings, VerifyErrorKind, verify_feed,
};
use redb::ReadableTable;

fn receipt(requester: &Keypair, nonce: u64) -> ExecutionReceipt {
    let job = JobRequest {
        requester: requester.public(),
        nonce,
        model: "digits".into(),
        model_digest: ContentId::of(b"model"),
        input_digest: ContentId::of(&nonce.to_le_bytes()),
        input_bytes: 256,
        created_ms: 1_000 + nonce,
        deadline_ms: 60_000,
    };
    ExecutionReceipt {
        model_digest: job.model_digest,
        input_digest: job.input_digest,
        job: Signed::sign(job, requester),
        output_digest: Some(ContentId::of(b"out")),
        status: ExecStatus::Ok,
        error: String::new(),
        timings: Timings {
            queued_us: 1,
            run_us: 20,
            total_us: 30,
        },
        metering: Metering {
            cpu_time_us: 19,
            wall_time_us: 20,
            peak_rss_kib: 4096,
        },
        determinism: Determinism {
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            arch: "x86_64".into(),
            threads: 1,
        },
    }
}

fn entries(key: &Keypair, n: u64) -> Vec<SignedEntry> {
    let mut w = FeedWriter::resume(key.clone(), 0, None);
    (0..n)
        .map(|i| w.append(EntryBody::Execution(Box::new(receipt(key, i))), 10 + i))
        .collect()
}

#[test]
fn writer_chain_verifies_and_decodes_back() {
    let key = Keypair::from_secret([3; 32]);
    let es = entries(&key, 5);
    let wire: Vec<Vec<u8>> = es.iter().map(|e| e.encode()).collect();
    let (n, head) = verify_feed(key.public(), wire.iter().map(|w| w.as_slice())).unwrap();
    assert_eq!(n, 5);
    assert_eq!(head, Some(es[4].id()));
    for (e, w) in es.iter().zip(&wire) {
        assert_eq!(&SignedEntry::decode_verified(w).unwrap(), e);
    }
}

#[test]
fn chain_rules_name_the_first_bad_entry() {
    let key = Keypair::from_secret([3; 32]);
    let other = Keypair::from_secret([4; 32]);
    let es = entries(&key, 4);
    let wire = |es: &[SignedEntry]| es.iter().map(|e| e.encode()).collect::<Vec<_>>();
    let check = |w: Vec<Vec<u8>>| verify_feed(key.public(), w.iter().map(|b| b.as_slice()));

    // Replayed entry: seq 1 twice.
    let mut replay = wire(&es);
    replay.insert(2, replay[1].clone());
    let err = check(replay).unwrap_err();
    assert_eq!(err.seq, 2);
    assert!(matches!(
        err.kind,
        VerifyErrorKind::SeqMismatch {
            position: 2,
            found: 1
        }
    ));

    // Dropped entry: 0, 2, 3.
    let mut gap = wire(&es);
    gap.remove(1);
    assert_eq!(check(gap).unwrap_err().seq, 1);

    // Another feed's entry spliced in.
    let mut foreign = wire(&es);
    foreign[2] = entries(&other, 3)[2].encode();
    assert!(matches!(
        check(foreign).unwrap_err().kind,
        VerifyErrorKind::WrongFeed { .. }
    ));

    // Forged: the feed's entry re-signed by another key.
    let mut w = FeedWriter::resume(other.clone(), 0, None);
    let forged_body = es[0].body().clone();
    let forged = Signed::sign(forged_body, &other);
    let mut forged_wire = wire(&es);
    forged_wire[0] = forged.encode();
    assert!(matches!(
        check(forged_wire).unwrap_err().kind,
        VerifyErrorKind::BadSignature
    ));
    let _ = w.append(EntryBody::Execution(Box::new(receipt(&other, 0))), 0);

    // A fork: entry 2 rewritten with a different body but correctly signed breaks entry 3's link.
    let mut fork_writer = FeedWriter::resume(key.clone(), 2, Some(es[1].id()));
    let mut fork = wire(&es);
    fork[2] = fork_writer
        .append(EntryBody::Execution(Box::new(receipt(&key, 99))), 12)
        .encode();
    let err = check(fork).unwrap_err();
    assert_eq!(err.seq, 3);
    assert!(matches!(err.kind, VerifyErrorKind::BrokenLink { .. }));
}

#[test]
fn every_byte_flip_of_an_entry_is_caught() {
    let key = Keypair::from_secret([5; 32]);
    let es = entries(&key, 2);
    let good = es[1].encode();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let w = [es[0].encode(), bad];
        let err = verify_feed(key.public(), w.iter().map(|b| b.as_slice())).unwrap_err();
        assert_eq!(err.seq, 1, "flip at byte {i}");
    }
}

#[test]
fn store_is_durable_across_reopen_and_tamper_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let key = Keypair::from_secret([6; 32]);
    let es = entries(&key, 6);
    {
        let mut store = Store::open(&path, &key, "test").unwrap();
        store.append_batch(&es[..3]).unwrap();
        store.append_batch(&es[3..]).unwrap();
        // Out-of-order appends are refused whole.
        assert!(matches!(
            store.append_batch(&es[..1]),
            Err(StoreError::OutOfOrder { .. })
        ));
        let r = store.reader();
        assert_eq!(r.seq_of_job(&receipt(&key, 4).job.id()).unwrap(), Some(4));
    }
    let store = Store::open(&path, &key, "test").unwrap();
    assert_eq!(store.len(), 6);
    assert_eq!(store.head(), Some(es[5].id()));
    assert_eq!(
        store.reader().verify_all().unwrap().unwrap(),
        (6, Some(es[5].id()))
    );
    drop(store);

    // Flip one byte of entry 2's stored bytes, writing through redb so the file stays valid.
    {
        let db = redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open(&path)
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(ENTRIES).unwrap();
            let mut bytes = t.get(2).unwrap().unwrap().value().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x40;
            t.insert(2, bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let ro = ReadOnlyStore::open(&path).unwrap();
    let err = ro.reader().verify_all().unwrap().unwrap_err();
    assert_eq!(err.seq, 2);
    assert!(err.to_string().starts_with("entry 2 is bad"), "{err}");
}

#[test]
fn tampered_tail_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let key = Keypair::from_secret([6; 32]);
    Store::open(&path, &key, "test")
        .unwrap()
        .append_batch(&entries(&key, 3))
        .unwrap();
    {
        let db = redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open(&path)
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(ENTRIES).unwrap();
            let mut bytes = t.get(2).unwrap().unwrap().value().to_vec();
            bytes[10] ^= 0x01;
            t.insert(2, bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(&path, &key, "test").unwrap_err();
    assert!(matches!(err, StoreError::Tail { .. }), "{err}");
    assert!(err.to_string().contains("entry 2"), "{err}");
}

#[test]
fn corrupt_file_and_wrong_key_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::from_secret([6; 32]);

    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0xA5u8; 8192]).unwrap();
    let err = Store::open(&garbage, &key, "test").unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. } | StoreError::Storage { .. }),
        "{err}"
    );

    // A byte flipped on disk inside redb's pages: the checksum check refuses the file.
    let path = dir.path().join("ledger.redb");
    Store::open(&path, &key, "test")
        .unwrap()
        .append_batch(&entries(&key, 40))
        .unwrap();
    let mut raw = std::fs::read(&path).unwrap();
    let needle = b"digits";
    let pos = raw
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("entry bytes on disk");
    raw[pos] ^= 0x20;
    std::fs::write(&path, &raw).unwrap();
    let err = Store::open(&path, &key, "test").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    let path2 = dir.path().join("other.redb");
    Store::open(&path2, &key, "test").unwrap();
    let err = Store::open(&path2, &Keypair::from_secret([7; 32]), "test").unwrap_err();
    assert!(matches!(err, StoreError::WrongFeed { .. }), "{err}");
}

#[test]
fn reader_sees_commits_while_writer_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let key = Keypair::from_secret([8; 32]);
    let es = entries(&key, 4);
    let mut store = Store::open(&path, &key, "test").unwrap();
    store.append_batch(&es[..2]).unwrap();
    let ro = ReadOnlyStore::open(&path).unwrap();
    assert_eq!(ro.reader().entry_count().unwrap(), 2);
    store.append_batch(&es[2..]).unwrap();
    assert_eq!(ro.reader().verify_all().unwrap().unwrap().0, 4);
    // A second writer is refused with a clear error.
    assert!(matches!(
        Store::open(&path, &key, "test"),
        Err(StoreError::Locked { .. })
    ));
    let _ = ro.reader().feed().unwrap();
    let _ = ContentId::of(b"");
    let _ = redb::ReadOnlyDatabase::open(dir.path().join("missing.redb")).is_err();
}

#[test]
fn each_batch_commits_tree_nodes_and_a_signed_checkpoint() {
    use fab_ledger::checkpoint::Checkpoint;
    use fab_ledger::merkle::{MemoryTree, verify_consistency, verify_inclusion};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let key = Keypair::from_secret([11; 32]);
    let es = entries(&key, 37);
    let mut store = Store::open(&path, &key, "test").unwrap();
    let mut mem = MemoryTree::new();
    let mut sizes = Vec::new();
    for chunk in es.chunks(5) {
        store.append_batch(chunk).unwrap();
        for e in chunk {
            mem.push_leaf_data(&e.encode());
        }
        let cp = store.checkpoint().unwrap();
        assert_eq!((cp.size, cp.root), (mem.size(), mem.root()));
        Checkpoint::verify(&cp.note, &key.public(), Some(&store.origin())).unwrap();
        sizes.push(cp.size);
    }
    let r = store.reader();
    let stored = r.checkpoints().unwrap();
    assert_eq!(stored.iter().map(|(s, _)| *s).collect::<Vec<_>>(), sizes);
    // Proofs served from the stored nodes verify against the checkpoints.
    let last = Checkpoint::verify(&stored.last().unwrap().1, &key.public(), None).unwrap();
    for i in [0u64, 1, 17, 36] {
        let leaf = r.leaf(i).unwrap();
        assert_eq!(
            leaf,
            fab_ledger::merkle::leaf_hash(&es[i as usize].encode())
        );
        let p = r.inclusion_proof(i, 37).unwrap();
        verify_inclusion(i, 37, &leaf, &p, &last.root).unwrap();
    }
    for (size, note) in &stored[..stored.len() - 1] {
        let old = Checkpoint::verify(note, &key.public(), None).unwrap();
        let p = r.consistency_proof(*size, 37).unwrap();
        verify_consistency(*size, 37, &old.root, &last.root, &p).unwrap();
    }
    assert_eq!(r.verify_all().unwrap().unwrap().0, 37);
    drop(store);
    // Reopening checks the recomputed root against the last checkpoint.
    let store = Store::open(&path, &key, "test").unwrap();
    assert_eq!(store.checkpoint().unwrap().root, mem.root());
}

#[test]
fn a_damaged_tree_node_or_checkpoint_is_refused_on_open_and_named_by_verify() {
    use fab_ledger::store::{CHECKPOINTS, NODES};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let key = Keypair::from_secret([12; 32]);
    {
        let mut store = Store::open(&path, &key, "test").unwrap();
        let es = entries(&key, 8);
        store.append_batch(&es[..4]).unwrap();
        store.append_batch(&es[4..]).unwrap();
    }
    let rewrite = |f: &dyn Fn(&redb::WriteTransaction)| {
        let db = redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open(&path)
            .unwrap();
        let txn = db.begin_write().unwrap();
        f(&txn);
        txn.commit().unwrap();
    };
    // A node on the right border (the level-3 root of all 8 leaves).
    rewrite(&|txn| {
        let mut t = txn.open_table(NODES).unwrap();
        t.insert((3u8, 0u64), &[0u8; 32][..]).unwrap();
    });
    let err = Store::open(&path, &key, "test").unwrap_err();
    assert!(matches!(err, StoreError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("recomputed root differs"), "{err}");

    // Restore the node, then forge checkpoint 4's root: verify names it.
    let mut mem = fab_ledger::merkle::MemoryTree::new();
    for e in entries(&key, 8) {
        mem.push_leaf_data(&e.encode());
    }
    let full = fab_ledger::merkle::root(&mem, 8).unwrap();
    rewrite(&|txn| {
        let mut t = txn.open_table(NODES).unwrap();
        t.insert((3u8, 0u64), &full[..]).unwrap();
        let mut c = txn.open_table(CHECKPOINTS).unwrap();
        let forged = fab_ledger::checkpoint::Checkpoint::sign(&key, "test", 4, [9; 32]);
        c.insert(4u64, forged.note.as_str()).unwrap();
    });
    let store = Store::open(&path, &key, "test").unwrap();
    let err = store.reader().verify_all().unwrap().unwrap_err();
    assert_eq!(err.seq, 3);
    assert!(err.to_string().contains("checkpoint 4"), "{err}");
}

#[test]
fn batch_verification_agrees_with_one_by_one_and_names_the_same_bad_entry() {
    use fab_ledger::entry::{FeedVerifier, verify_batch};
    let key = Keypair::from_secret([13; 32]);
    let es = entries(&key, 40);
    let wire: Vec<Vec<u8>> = es.iter().map(|e| e.encode()).collect();
    let refs: Vec<&[u8]> = wire.iter().map(|w| w.as_slice()).collect();
    let mut v = FeedVerifier::new(key.public());
    let got = verify_batch(&mut v, &refs).unwrap();
    assert_eq!(got.len(), 40);
    assert_eq!(v.head(), Some(es[39].id()));

    // Resign entry 17 with its job request signed by another key: the entry signature is good,
    // the embedded one is not.
    let other = Keypair::from_secret([14; 32]);
    let mut forged_job = wire.clone();
    {
        let mut w = FeedWriter::resume(key.clone(), 17, Some(es[16].id()));
        let EntryBody::Execution(mut r) = es[17].body().body.clone() else {
            panic!()
        };
        r.job = Signed::sign(r.job.body().clone(), &other);
        forged_job[17] = w.append(EntryBody::Execution(r), 27).encode();
    }
    // Entry 25 re-signed by another key; entry 31 with a flipped signature byte.
    let mut forged_sig = wire.clone();
    forged_sig[25] = Signed::sign(es[25].body().clone(), &other).encode();
    let mut flipped = wire.clone();
    let n = flipped[31].len();
    flipped[31][n - 2] ^= 0x10;
    for (bad, seq) in [(forged_job, 17u64), (forged_sig, 25), (flipped, 31)] {
        let refs: Vec<&[u8]> = bad.iter().map(|w| w.as_slice()).collect();
        let batch_err = verify_batch(&mut FeedVerifier::new(key.public()), &refs).unwrap_err();
        let one_err = verify_feed(key.public(), refs.iter().copied()).unwrap_err();
        assert_eq!(batch_err, one_err);
        assert_eq!(batch_err.seq, seq, "{batch_err}");
    }
}

#[test]
fn a_replica_verifies_to_the_owner_root_and_tampering_is_named() {
    use fab_ledger::store::REPLICA_ENTRIES;
    let dir = tempfile::tempdir().unwrap();
    let owner_key = Keypair::from_secret([21; 32]);
    let es = entries(&owner_key, 10);
    let mut owner = Store::open(&dir.path().join("owner.redb"), &owner_key, "test").unwrap();
    owner.append_batch(&es[..6]).unwrap();
    let cp6 = owner.checkpoint().unwrap().clone();
    owner.append_batch(&es[6..]).unwrap();
    let cp10 = owner.checkpoint().unwrap().clone();

    let path = dir.path().join("replica.redb");
    let mut replica = Store::open(&path, &Keypair::from_secret([22; 32]), "test").unwrap();
    let feed = owner_key.public();
    replica.store_replica(&feed, &es[..6], Some(&cp6)).unwrap();
    replica.store_replica(&feed, &es[6..], Some(&cp10)).unwrap();
    let v = replica
        .reader()
        .verify_replica(&feed.to_bytes())
        .unwrap()
        .unwrap();
    assert_eq!((v.size, v.root, v.trusted_size), (10, cp10.root, Some(10)));
    assert_eq!(v.head, Some(es[9].id()));
    let all = replica.reader().verify_replicas().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, feed.to_bytes());
    assert_eq!(all[0].1.as_ref().map(|v| v.root).ok(), Some(cp10.root));
    drop(replica);

    // A flipped byte in a stored replica entry is named by its seq.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(REPLICA_ENTRIES).unwrap();
            let mut bytes = t
                .get((feed.to_bytes(), 4))
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            let n = bytes.len();
            bytes[n - 3] ^= 0x10;
            t.insert((feed.to_bytes(), 4), bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let ro = ReadOnlyStore::open(&path).unwrap();
    let err = ro
        .reader()
        .verify_replica(&feed.to_bytes())
        .unwrap()
        .unwrap_err();
    assert_eq!(err.seq, 4, "{err}");
}
