//! `ledger ...`: reading, proving and verifying the ledger on disk (works while the node runs).

use super::*;

#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// List entries
    Show {
        #[arg(long)]
        json: bool,
        /// First seq to show
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most entries to show
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Re-check every entry's signature, sequence and hash link, and every checkpoint against
    /// the Merkle tree of the entries before it; names the first bad entry. Peers' feeds held
    /// as replicas are checked the same way, with their trusted checkpoints
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Every feed the running node holds, its own and its peers': size, trusted checkpoint and
    /// root, lag behind the largest size any peer has shown, age of the last entry
    Heads {
        #[arg(long)]
        json: bool,
    },
    /// Print the latest signed checkpoint (C2SP tlog-checkpoint note)
    Checkpoint {
        #[arg(long)]
        json: bool,
    },
    /// Write an offline receipt for an entry: the entry, its inclusion proof and the latest
    /// checkpoint. Verify it anywhere with `fabnode ledger verify-receipt`
    Prove {
        /// A job id or an entry id (64 hex digits), or an entry's seq number
        id: String,
        /// Write the receipt here instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Verify a receipt file with no node and no data dir
    VerifyReceipt {
        /// Receipt JSON file, or - for standard input
        file: String,
        #[arg(long)]
        json: bool,
    },
    /// RFC 9162 consistency proof that the log at NEW_SIZE extends the log at OLD_SIZE
    Consistency {
        old_size: u64,
        /// [default: the current size]
        new_size: Option<u64>,
    },
    /// Export entries, leaf hashes, roots at every size, checkpoints and proofs as JSON, for
    /// any RFC 9162 implementation to check (see docs/LEDGER.md)
    Export {
        /// Required: the export format is JSON
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Verify an equivocation evidence file (two conflicting statements signed by one feed)
    VerifyEvidence {
        file: String,
        #[arg(long)]
        json: bool,
    },
}

fn heads(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api(g)?.ledger_heads()?;
    if json_out {
        print_json(&v);
    } else {
        for f in &v.feeds {
            let who = if f.own { "own " } else { "peer" };
            let trusted = f
                .trusted_size
                .flatten()
                .map_or_else(|| "-".to_owned(), |s| s.to_string());
            let root = f
                .trusted_root
                .clone()
                .flatten()
                .map_or_else(String::new, |r| format!(" root {}", &r[..r.len().min(16)]));
            let lag = f
                .lag_entries
                .map_or_else(String::new, |l| format!("  lag {l}"));
            let age = f.last_entry_age_ms.flatten().map_or_else(String::new, |a| {
                format!("  last entry {:.1} s ago", a as f64 / 1e3)
            });
            println!(
                "{who}  {}  size {}  trusted checkpoint {trusted}{root}{lag}{age}",
                f.feed.as_deref().unwrap_or("?"),
                f.size
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the ledger file read-only. redb may panic on a file altered outside it; that is a
/// corrupt ledger to the operator, not a crash.
pub fn with_ledger<T>(
    dir: &Path,
    f: impl FnOnce(&ReadOnlyStore) -> Result<T> + std::panic::UnwindSafe,
) -> Result<T> {
    let path = datadir::ledger_path(dir);
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(move || {
        let store = ReadOnlyStore::open_recovering(&path)?;
        f(&store)
    });
    std::panic::set_hook(prev);
    match r {
        Ok(r) => r,
        Err(_) => bail!(
            "ledger {} is corrupt: the storage engine could not read it",
            datadir::ledger_path(dir).display()
        ),
    }
}

pub fn ledger(g: &Global, cmd: LedgerCmd) -> Result<ExitCode> {
    let dir = data_dir(g);
    match cmd {
        LedgerCmd::Show { json, from, limit } => {
            let rows = with_ledger(&dir, move |s| Ok(s.reader().range(from, limit)?))?;
            let mut out = Vec::new();
            for (seq, bytes) in rows {
                let e = SignedEntry::decode_verified(&bytes).with_context(|| {
                    format!("entry {seq} does not verify; run `fabnode ledger verify`")
                })?;
                out.push(e);
            }
            if json {
                let v: Vec<_> = out.iter().map(fab_node::views::entry_json).collect();
                print_json(&json!({"entries": v}));
            } else if out.is_empty() {
                println!("no entries from seq {from}");
            } else {
                println!(
                    "{:>6}  {:<13}  {:<12}  {:<12}  {:<12}  {:<6}  {:>8}  {:<12}",
                    "seq", "time_ms", "entry", "job", "model", "status", "run_us", "output"
                );
                for e in &out {
                    let b = e.body();
                    if let EntryBody::Execution(r) = &b.body {
                        println!(
                            "{:>6}  {:<13}  {:<12}  {:<12}  {:<12}  {:<6}  {:>8}  {:<12}",
                            b.seq,
                            b.time_ms,
                            e.id().short(),
                            r.job.id().short(),
                            r.job.body().model,
                            format!("{:?}", r.status).to_lowercase(),
                            r.timings.run_us,
                            r.output_digest
                                .map(|d| d.short())
                                .unwrap_or_else(|| "-".into())
                        );
                    } else {
                        println!(
                            "{:>6}  {:<13}  {:<12}  {}",
                            b.seq,
                            b.time_ms,
                            e.id().short(),
                            b.body.kind_name()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCmd::Heads { json } => heads(g, json),
        LedgerCmd::Checkpoint { json } => crate::audit::checkpoint(&dir, json),
        LedgerCmd::Prove { id, out } => crate::audit::prove(&dir, &id, out),
        LedgerCmd::VerifyReceipt { file, json } => crate::audit::verify_receipt(&file, json),
        LedgerCmd::Consistency { old_size, new_size } => {
            crate::audit::consistency(&dir, old_size, new_size)
        }
        LedgerCmd::Export { json, out } => crate::audit::export(&dir, json, out),
        LedgerCmd::VerifyEvidence { file, json } => crate::audit::verify_evidence(&file, json),
        LedgerCmd::Verify { json } => {
            let key_file = datadir::key_path(&dir);
            let (feed, result, replicas) = with_ledger(&dir, |s| {
                let r = s.reader();
                Ok((r.feed()?, r.verify_all()?, r.verify_replicas()?))
            })?;
            // If this data dir has a node key, the ledger must be that node's feed.
            if let Ok(key) = Keypair::load(&key_file)
                && key.public() != feed
            {
                bail!(
                    "ledger feed {} is not this node's key {}",
                    feed.peer_id(),
                    key.public().peer_id()
                );
            }
            let replica_peer = |k: &[u8; 32]| {
                fab_ledger::PublicKey::from_bytes(k).map_or_else(|| hex::encode(k), |p| p.peer_id())
            };
            let replicas_json: Vec<serde_json::Value> = replicas
                .iter()
                .map(|(k, r)| match r {
                    Ok(v) => json!({"feed": replica_peer(k), "ok": true, "entries": v.size,
                                    "head": v.head, "root": hex::encode(v.root), "trusted_size": v.trusted_size}),
                    Err(e) => json!({"feed": replica_peer(k), "ok": false, "bad_seq": e.seq, "error": e.to_string()}),
                })
                .collect();
            let replicas_ok = replicas.iter().all(|(_, r)| r.is_ok());
            match result {
                Ok((n, head)) => {
                    if json {
                        print_json(
                            &json!({"ok": replicas_ok, "entries": n, "head": head, "feed": feed.peer_id(), "replicas": replicas_json}),
                        );
                    } else {
                        println!(
                            "ledger verified: {n} {}, feed {}, head {}",
                            if n == 1 { "entry" } else { "entries" },
                            feed.peer_id(),
                            head.map(|h| h.to_hex()).unwrap_or_else(|| "-".into())
                        );
                        for (k, r) in &replicas {
                            match r {
                                Ok(v) => println!(
                                    "replica verified: {} entries of {}, root {}, trusted checkpoint {}",
                                    v.size,
                                    replica_peer(k),
                                    hex::encode(v.root),
                                    v.trusted_size.map_or_else(|| "-".into(), |s| s.to_string())
                                ),
                                Err(e) => eprintln!(
                                    "replica of {} FAILED verification: {e}",
                                    replica_peer(k)
                                ),
                            }
                        }
                    }
                    Ok(if replicas_ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Err(e) => {
                    if json {
                        print_json(
                            &json!({"ok": false, "bad_seq": e.seq, "error": e.to_string(), "feed": feed.peer_id(), "replicas": replicas_json}),
                        );
                    } else {
                        eprintln!("ledger verification FAILED: {e}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
