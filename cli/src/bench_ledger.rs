//! `fabnode bench ledger`: the numbers docs/BENCHMARKS.md reports for the ledger.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fab_ledger::entry::{FeedVerifier, verify_batch};
use fab_ledger::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use fab_ledger::store::Store;
use fab_ledger::{
    ContentId, Determinism, EntryBody, ExecStatus, ExecutionReceipt, FeedWriter, JobRequest,
    Keypair, Metering, Signed, SignedEntry, Timings, verify_feed,
};
use serde_json::{Value, json};

use crate::bench::stats;

fn receipt_body(key: &Keypair, i: u64) -> EntryBody {
    let job = JobRequest {
        requester: key.public(),
        nonce: i,
        model: "digits".into(),
        model_digest: ContentId::of(b"digits.onnx"),
        input_digest: ContentId::of(&i.to_le_bytes()),
        input_bytes: 256,
        created_ms: 1_790_000_000_000 + i,
        deadline_ms: 1_790_000_030_000 + i,
    };
    EntryBody::Execution(Box::new(ExecutionReceipt {
        model_digest: job.model_digest,
        input_digest: job.input_digest,
        job: Signed::sign(job, key),
        output_digest: Some(ContentId::of(&(i ^ 0xff).to_le_bytes())),
        status: ExecStatus::Ok,
        error: String::new(),
        timings: Timings {
            queued_us: 30,
            run_us: 5,
            total_us: 800,
        },
        metering: Metering {
            cpu_time_us: 5,
            wall_time_us: 5,
            peak_rss_kib: 40_000,
        },
        determinism: Determinism {
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            arch: std::env::consts::ARCH.into(),
            threads: 1,
        },
    }))
}

fn sign_entries(w: &mut FeedWriter, key: &Keypair, from: u64, n: u64) -> Vec<SignedEntry> {
    (from..from + n)
        .map(|i| w.append(receipt_body(key, i), 1_790_000_000_000 + i))
        .collect()
}

fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// xorshift64*: reproducible proof positions.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

pub fn run(
    appends: u64,
    batch: usize,
    single: u64,
    log_size: u64,
    proofs: usize,
    verify_batch_len: usize,
    dir: Option<PathBuf>,
) -> Result<Value> {
    let tmp = tempfile::Builder::new()
        .prefix("fabnode-bench-ledger-")
        .tempdir_in(dir.unwrap_or_else(std::env::temp_dir))?;
    let key = Keypair::from_secret([0x42; 32]);

    // 1. Signing (not part of the append rate below; reported for context).
    let mut w = FeedWriter::resume(key.clone(), 0, None);
    let t = Instant::now();
    let entries = sign_entries(&mut w, &key, 0, appends);
    let sign_time = t.elapsed();

    // 2. Durable appends, group commit: `batch` entries per fsynced transaction, each with its
    // tree nodes and a signed checkpoint.
    let path = tmp.path().join("group.redb");
    let mut store = Store::open(&path, &key, "bench")?;
    let t = Instant::now();
    for chunk in entries.chunks(batch.max(1)) {
        store.append_batch(chunk)?;
    }
    let group_time = t.elapsed();

    // 3. Durable appends, one commit per entry.
    let mut single_store = Store::open(&tmp.path().join("single.redb"), &key, "bench")?;
    let t = Instant::now();
    for e in entries.iter().take(single as usize) {
        single_store.append_batch(std::slice::from_ref(e))?;
    }
    let single_time = t.elapsed();
    drop(single_store);

    // 4. Signature verification on one core: every entry carries two signatures (the entry's and
    // its job request's). One by one with verify_strict, then in batches.
    let wire: Vec<Vec<u8>> = entries.iter().map(|e| e.encode()).collect();
    let refs: Vec<&[u8]> = wire.iter().map(|w| w.as_slice()).collect();
    let t = Instant::now();
    verify_feed(key.public(), refs.iter().copied()).context("one-by-one verification")?;
    let strict_time = t.elapsed();
    let t = Instant::now();
    let mut v = FeedVerifier::new(key.public());
    for page in refs.chunks(verify_batch_len.max(1)) {
        verify_batch(&mut v, page).context("batch verification")?;
    }
    let batch_time = t.elapsed();
    // The same batches with decoding done beforehand: the signature arithmetic alone.
    let t = Instant::now();
    for page in entries.chunks(verify_batch_len.max(1)) {
        anyhow::ensure!(
            fab_ledger::entry::verify_signatures_batch(page),
            "batch signatures"
        );
    }
    let sig_only_time = t.elapsed();
    drop(refs);
    drop((wire, entries));

    // 5. Grow the log to `log_size` with group commits of 10,000, then time proofs.
    let t = Instant::now();
    let mut next = appends;
    while next < log_size {
        let n = (log_size - next).min(10_000);
        let chunk = sign_entries(&mut w, &key, next, n);
        store.append_batch(&chunk)?;
        next += n;
    }
    let grow_time = t.elapsed();
    let size = store.len();
    let reader = store.reader();
    let root = reader.root(size)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut gen_incl, mut ver_incl, mut gen_cons, mut ver_cons) = (vec![], vec![], vec![], vec![]);
    let mut proof_len_max = 0;
    for _ in 0..proofs {
        let i = rng.below(size);
        let t = Instant::now();
        let p = reader.inclusion_proof(i, size)?;
        gen_incl.push(t.elapsed());
        let leaf = reader.leaf(i)?;
        let t = Instant::now();
        verify_inclusion(i, size, &leaf, &p, &root).context("inclusion proof")?;
        ver_incl.push(t.elapsed());
        proof_len_max = proof_len_max.max(p.len());

        let m = 1 + rng.below(size - 1);
        let old_root = reader.root(m)?;
        let t = Instant::now();
        let c = reader.consistency_proof(m, size)?;
        gen_cons.push(t.elapsed());
        let t = Instant::now();
        verify_consistency(m, size, &old_root, &root, &c).context("consistency proof")?;
        ver_cons.push(t.elapsed());
    }
    let _ = leaf_hash(b"");
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let sigs = 2 * appends;
    Ok(json!({
        "bench": "ledger",
        "entry": "execution receipt with an embedded signed job request (2 ed25519 signatures)",
        "signing": {"entries": appends, "entries_per_s": per_s(appends, sign_time)},
        "append_group_commit": {"entries": appends, "batch": batch, "commits": appends.div_ceil(batch.max(1) as u64),
                                "seconds": group_time.as_secs_f64(), "entries_per_s": per_s(appends, group_time)},
        "append_one_commit_each": {"entries": single, "seconds": single_time.as_secs_f64(), "entries_per_s": per_s(single, single_time)},
        "verify_one_core": {
            "entries": appends, "signatures": sigs,
            "strict_one_by_one": {"entries_per_s": per_s(appends, strict_time), "signatures_per_s": per_s(sigs, strict_time)},
            "batch_signatures_only": {"entries_per_s": per_s(appends, sig_only_time), "signatures_per_s": per_s(sigs, sig_only_time)},
            "batch": {"entries_per_batch": verify_batch_len, "entries_per_s": per_s(appends, batch_time), "signatures_per_s": per_s(sigs, batch_time)},
        },
        "log": {"size": size, "grow_seconds": grow_time.as_secs_f64(), "file_bytes": file_bytes, "proof_hashes_max": proof_len_max},
        "inclusion_proof": {"generate": stats(gen_incl), "verify": stats(ver_incl)},
        "consistency_proof": {"generate": stats(gen_cons), "verify": stats(ver_cons)},
    }))
}
