//! kill -9 at random moments during a stream of submits: no receipt a client received is ever
//! missing from the ledger, and the ledger always verifies.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use fab_ledger::store::ReadOnlyStore;
use fab_ledger::{ContentId, SignedEntry};

/// xorshift64*: a tiny seeded generator, so a failing run can be replayed with its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const ROUNDS: usize = 50;
const CLIENTS: usize = 3;

type Receipts = Arc<Mutex<Vec<(u64, ContentId, String)>>>;

/// Clients that submit until the node stops answering, recording each verified receipt.
fn spawn_clients(base: &str, receipts: &Receipts) -> Vec<std::thread::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|c| {
            let receipts = Arc::clone(receipts);
            let base = base.to_owned();
            std::thread::spawn(move || {
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .new_agent();
                let mut i = c;
                loop {
                    let body = serde_json::json!({"model": "digits", "input": image_json(i)});
                    i += CLIENTS;
                    let Ok(mut r) = agent.post(format!("{base}/v1/jobs")).send_json(&body) else {
                        return;
                    };
                    if r.status() != 200 {
                        return;
                    }
                    let Ok(v) = r.body_mut().read_json::<serde_json::Value>() else {
                        return;
                    };
                    let raw = hex::decode(v["receipt"]["raw"].as_str().unwrap()).unwrap();
                    let entry = SignedEntry::decode_verified(&raw)
                        .expect("a receipt the node sent verifies");
                    receipts.lock().unwrap().push((
                        entry.body().seq,
                        entry.id(),
                        v["job_id"].as_str().unwrap().to_owned(),
                    ));
                }
            })
        })
        .collect()
}

/// The root recomputed from the stored tree equals the last signed checkpoint, which covers
/// exactly the stored entries.
fn assert_root_matches_last_checkpoint(dir: &std::path::Path, round: usize) {
    let store = ReadOnlyStore::open(&dir.join("ledger.redb")).unwrap();
    let r = store.reader();
    let count = r.entry_count().unwrap();
    let Some((size, note)) = r.latest_checkpoint().unwrap() else {
        assert_eq!(count, 0, "round {round}: entries without a checkpoint");
        return;
    };
    let cp = fab_ledger::checkpoint::Checkpoint::verify(&note, &r.feed().unwrap(), None).unwrap();
    assert_eq!(
        (size, cp.size),
        (count, count),
        "round {round}: checkpoint size"
    );
    assert_eq!(
        r.root(count).unwrap(),
        cp.root,
        "round {round}: recomputed root"
    );
}

/// Every receipt is in the ledger at its seq, with its id, indexed by its job id.
fn assert_receipts_in_ledger(dir: &std::path::Path, receipts: &Receipts, round: usize) {
    let store = ReadOnlyStore::open(&dir.join("ledger.redb")).unwrap();
    let reader = store.reader();
    for (seq, id, job) in receipts.lock().unwrap().iter() {
        let bytes = reader
            .get(*seq)
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: receipt seq {seq} missing"));
        assert_eq!(
            SignedEntry::decode_verified(&bytes).unwrap().id(),
            *id,
            "round {round}: seq {seq} differs"
        );
        let job: ContentId = job.parse().unwrap();
        assert_eq!(reader.seq_of_job(&job).unwrap(), Some(*seq));
    }
}

#[test]
fn kill_9_during_submits_loses_no_receipt() {
    let seed = std::env::var("FABNODE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (replay with FABNODE_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let t = TestDir::new();
    // (seq, entry id, job id) of every receipt a client received and verified.
    let receipts: Receipts = Arc::default();
    let mut killed_mid_stream = 0;

    for round in 0..ROUNDS {
        let mut node = t
            .start(&[])
            .unwrap_or_else(|e| panic!("round {round}: restart failed: {e}"));
        let clients = spawn_clients(&node.base, &receipts);
        // The random moment: somewhere from just after start to well into the stream.
        let before = receipts.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(5 + rng.next() % 250));
        node.child.kill().unwrap(); // SIGKILL
        node.wait();
        for c in clients {
            c.join().unwrap();
        }
        if receipts.lock().unwrap().len() > before {
            killed_mid_stream += 1;
        }

        // After each kill: the ledger verifies and holds every receipt handed out so far.
        let out = t.run(&["ledger", "verify"]);
        assert!(out.status.success(), "round {round}: {}", text(&out).1);
        // `ledger verify` ran crash recovery, so a plain read-only open works now.
        assert_receipts_in_ledger(t.path(), &receipts, round);
        assert_root_matches_last_checkpoint(t.path(), round);
    }
    let total = receipts.lock().unwrap().len();
    eprintln!("{ROUNDS} kills, {killed_mid_stream} mid-stream, {total} receipts checked");
    assert!(total > 0, "no job completed in {ROUNDS} rounds");
    assert!(
        killed_mid_stream >= ROUNDS / 2,
        "too few kills landed mid-stream: {killed_mid_stream}"
    );
}

#[test]
fn sigterm_and_sigint_during_submits_stop_cleanly() {
    let t = TestDir::new();
    let receipts: Receipts = Arc::default();
    for (round, sig) in [libc::SIGTERM, libc::SIGINT, libc::SIGTERM]
        .into_iter()
        .enumerate()
    {
        let mut node = t.start(&[]).unwrap();
        let clients = spawn_clients(&node.base, &receipts);
        // Stop once jobs are flowing, so some are in flight when the signal lands.
        let before = receipts.lock().unwrap().len();
        while receipts.lock().unwrap().len() < before + 20 {
            std::thread::yield_now();
        }
        node.signal(sig);
        let status = node.wait();
        for c in clients {
            c.join().unwrap();
        }
        assert!(
            status.success(),
            "round {round}: exit {status}: {}",
            node.log()
        );
        let log = node.log();
        assert!(
            log.contains("ledger closed") && log.contains("node stopped"),
            "{log}"
        );
        // A clean stop leaves nothing to recover: a plain read-only open works at once.
        assert_receipts_in_ledger(t.path(), &receipts, round);
        let out = t.run(&["ledger", "verify"]);
        assert!(out.status.success(), "{}", text(&out).1);
    }
}
