//! Offline receipts and equivocation evidence.

use fab_ledger::checkpoint::Checkpoint;
use fab_ledger::evidence::{Evidence, EvidenceError};
use fab_ledger::receipt::{Receipt, ReceiptError};
use fab_ledger::store::Store;
use fab_ledger::{
    ContentId, Determinism, EntryBody, ExecStatus, ExecutionReceipt, FeedWriter, JobRequest,
    Keypair, Metering, Signed, SignedEntry, Timings,
};

fn body(requester: &Keypair, nonce: u64) -> EntryBody {
    let job = JobRequest {
        requester: requester.public(),
        nonce,
        model: "digits".into(),
        model_digest: ContentId::of(b"m"),
        input_digest: ContentId::of(&nonce.to_le_bytes()),
        input_bytes: 4,
        created_ms: 1,
        deadline_ms: 2,
    };
    EntryBody::Execution(Box::new(ExecutionReceipt {
        model_digest: job.model_digest,
        input_digest: job.input_digest,
        job: Signed::sign(job, requester),
        output_digest: Some(ContentId::of(b"o")),
        status: ExecStatus::Ok,
        error: String::new(),
        timings: Timings::default(),
        metering: Metering::default(),
        determinism: Determinism {
            engine: "tract".into(),
            engine_version: "0".into(),
            arch: "x".into(),
            threads: 1,
        },
    }))
}

fn ledger(key: &Keypair, n: u64) -> (tempfile::TempDir, Store, Vec<SignedEntry>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("l.redb"), key, "test").unwrap();
    let mut w = FeedWriter::resume(key.clone(), 0, None);
    let es: Vec<SignedEntry> = (0..n).map(|i| w.append(body(key, i), i)).collect();
    for chunk in es.chunks(7) {
        store.append_batch(chunk).unwrap();
    }
    (dir, store, es)
}

fn receipt(store: &Store, es: &[SignedEntry], i: usize) -> Receipt {
    let cp = store.checkpoint().unwrap().clone();
    let proof = store.reader().inclusion_proof(i as u64, cp.size).unwrap();
    Receipt::new(&es[i], cp.size, &proof, &cp)
}

#[test]
fn receipts_verify_offline_and_every_forgery_is_named() {
    let key = Keypair::from_secret([21; 32]);
    let (_dir, store, es) = ledger(&key, 30);
    for i in [0, 1, 13, 29] {
        let r = receipt(&store, &es, i);
        let json = serde_json::to_vec(&r).unwrap();
        let v = Receipt::from_json(&json).unwrap().verify().unwrap();
        assert_eq!(v.entry.body().seq, i as u64);
        assert_eq!(v.checkpoint.size, 30);
    }
    let good = receipt(&store, &es, 13);
    let check = |r: Receipt| r.verify().unwrap_err();

    // The entry does not hash to the proven leaf: entry 12 with entry 13's index and proof.
    let mut swapped = good.clone();
    swapped.entry = hex::encode(es[12].encode());
    assert!(matches!(
        check(swapped.clone()),
        ReceiptError::IndexMismatch { .. }
    ));
    swapped.leaf_index = 12;
    assert!(matches!(check(swapped), ReceiptError::Proof(_)));

    let mut r = good.clone();
    r.tree_size = 31;
    assert!(matches!(check(r), ReceiptError::SizeMismatch { .. }));
    let mut r = good.clone();
    r.inclusion_proof.pop();
    assert!(matches!(check(r), ReceiptError::Proof(_)));
    let mut r = good.clone();
    r.inclusion_proof.push(r.inclusion_proof[0].clone());
    assert!(matches!(check(r), ReceiptError::Proof(_)));
    let mut r = good.clone();
    r.inclusion_proof.swap(0, 1);
    assert!(matches!(check(r), ReceiptError::Proof(_)));
    let mut r = good.clone();
    r.inclusion_proof[1] = "00".into();
    assert!(matches!(check(r), ReceiptError::BadProofElement(1)));
    let mut r = good.clone();
    let mut b = hex::decode(&r.inclusion_proof[2]).unwrap();
    b[5] ^= 4;
    r.inclusion_proof[2] = hex::encode(b);
    assert!(matches!(check(r), ReceiptError::Proof(_)));
    // A checkpoint signed by another key (same size and root).
    let other = Keypair::from_secret([22; 32]);
    let mut r = good.clone();
    let cp = store.checkpoint().unwrap();
    r.checkpoint = Checkpoint::sign(&other, "test", cp.size, cp.root).note;
    assert!(matches!(check(r), ReceiptError::Checkpoint(_)));
    let mut r = good.clone();
    r.entry.replace_range(40..42, "ff");
    assert!(matches!(check(r), ReceiptError::Entry(_)));
    let mut r = good.clone();
    r.format = "x".into();
    assert!(matches!(check(r), ReceiptError::Format(_)));
    assert!(matches!(
        Receipt::from_json(b"{\"format\":1}"),
        Err(ReceiptError::Json(_))
    ));
    assert!(matches!(
        Receipt::from_json(&vec![b' '; 70_000]),
        Err(ReceiptError::TooLarge(_))
    ));
}

#[test]
fn forked_entries_and_conflicting_checkpoints_are_evidence() {
    let key = Keypair::from_secret([23; 32]);
    let mut w1 = FeedWriter::resume(key.clone(), 0, None);
    let mut w2 = FeedWriter::resume(key.clone(), 0, None);
    let a = w1.append(body(&key, 1), 5);
    let b = w2.append(body(&key, 2), 5);
    let ev = Evidence::entries(&a, &b);
    let json = serde_json::to_vec(&ev).unwrap();
    let eq = Evidence::from_json(&json).unwrap().verify().unwrap();
    assert_eq!((eq.kind, eq.at, eq.feed), ("entries", 0, key.public()));

    // Not conflicts: the same entry twice, different seqs, another feed's entry.
    assert!(matches!(
        Evidence::entries(&a, &a).verify(),
        Err(EvidenceError::NoConflict(_))
    ));
    let a1 = w1.append(body(&key, 3), 6);
    assert!(matches!(
        Evidence::entries(&a, &a1).verify(),
        Err(EvidenceError::NoConflict(_))
    ));
    let other = Keypair::from_secret([24; 32]);
    let o = FeedWriter::resume(other.clone(), 0, None).append(body(&other, 1), 5);
    assert!(matches!(
        Evidence::entries(&a, &o).verify(),
        Err(EvidenceError::NoConflict(_))
    ));
    // A forged statement is not evidence.
    let mut forged = Evidence::entries(&a, &b);
    forged.b.replace_range(60..62, "00");
    assert!(matches!(
        forged.verify(),
        Err(EvidenceError::Invalid { which: "b", .. })
    ));

    let c1 = Checkpoint::sign(&key, "test", 10, [1; 32]);
    let c2 = Checkpoint::sign(&key, "test", 10, [2; 32]);
    let eq = Evidence::checkpoints(&key.public(), &c1, &c2)
        .verify()
        .unwrap();
    assert_eq!((eq.kind, eq.at), ("checkpoints", 10));
    let c3 = Checkpoint::sign(&key, "test", 11, [2; 32]);
    assert!(matches!(
        Evidence::checkpoints(&key.public(), &c1, &c3).verify(),
        Err(EvidenceError::NoConflict(_))
    ));
    assert!(matches!(
        Evidence::checkpoints(&key.public(), &c1, &c1).verify(),
        Err(EvidenceError::NoConflict(_))
    ));
    let by_other = Checkpoint::sign(&other, "test", 10, [2; 32]);
    assert!(matches!(
        Evidence::checkpoints(&key.public(), &c1, &by_other).verify(),
        Err(EvidenceError::Invalid { which: "b", .. })
    ));
}
