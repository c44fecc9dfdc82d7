//! Auditing commands: checkpoints, receipts, consistency proofs, export, evidence.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use fab_ledger::checkpoint::Checkpoint;
use fab_ledger::evidence::{EVIDENCE_BYTES_MAX, Evidence};
use fab_ledger::receipt::{RECEIPT_BYTES_MAX, Receipt};
use fab_ledger::{ContentId, EntryBody, SignedEntry};
use serde_json::json;

use crate::cmd::{print_json, with_ledger};

fn read_input(file: &str, max: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if file == "-" {
        std::io::stdin()
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("opening {file}"))?
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {file}"))?;
    }
    Ok(buf)
}

/// The latest checkpoint, verified against the feed key recorded in the file.
fn latest_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let (feed, latest) = with_ledger(dir, |s| {
        let r = s.reader();
        Ok((r.feed()?, r.latest_checkpoint()?))
    })?;
    let (_, note) = latest.context("the ledger is empty: no checkpoint yet")?;
    Checkpoint::verify(&note, &feed, None)
        .context("the stored checkpoint does not verify; run `fabnode ledger verify`")
}

pub fn checkpoint(dir: &Path, json_out: bool) -> Result<ExitCode> {
    let cp = latest_checkpoint(dir)?;
    if json_out {
        print_json(
            &json!({"origin": cp.origin, "size": cp.size, "root": hex::encode(cp.root), "note": cp.note}),
        );
    } else {
        print!("{}", cp.note);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn prove(dir: &Path, id: &str, out: Option<PathBuf>) -> Result<ExitCode> {
    let cp = latest_checkpoint(dir)?;
    let id = id.trim().to_owned();
    let receipt = with_ledger(dir, move |s| {
        let r = s.reader();
        let seq = if let Ok(seq) = id.parse::<u64>() {
            seq
        } else {
            let wanted: ContentId = id
                .parse()
                .context("expected a job id, an entry id (64 hex digits) or a seq")?;
            match r.seq_of_job(&wanted)? {
                Some(seq) => seq,
                None => {
                    // Not a job id: look for an entry with that id.
                    let mut found = None;
                    let mut from = 0;
                    loop {
                        let page = r.range(from, 1024)?;
                        for (seq, bytes) in &page {
                            if SignedEntry::decode_verified(bytes).is_ok_and(|e| e.id() == wanted) {
                                found = Some(*seq);
                            }
                        }
                        if found.is_some() || page.len() < 1024 {
                            break;
                        }
                        from += 1024;
                    }
                    found.with_context(|| format!("no job or entry {wanted} in this ledger"))?
                }
            }
        };
        if seq >= cp.size {
            bail!(
                "entry {seq} is not covered by the latest checkpoint (size {})",
                cp.size
            );
        }
        let bytes = r.get(seq)?.with_context(|| format!("no entry {seq}"))?;
        let entry = SignedEntry::decode_verified(&bytes)
            .with_context(|| format!("entry {seq} does not verify"))?;
        let proof = r.inclusion_proof(seq, cp.size)?;
        let receipt = Receipt::new(&entry, cp.size, &proof, &cp);
        receipt.verify().context(
            "the receipt built from this ledger does not verify; run `fabnode ledger verify`",
        )?;
        Ok(receipt)
    })?;
    let text = serde_json::to_string_pretty(&receipt)? + "\n";
    match out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "receipt for entry {} against checkpoint size {} written to {}",
                receipt.leaf_index,
                receipt.tree_size,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify_receipt(file: &str, json_out: bool) -> Result<ExitCode> {
    let bytes = read_input(file, RECEIPT_BYTES_MAX)?;
    let result = Receipt::from_json(&bytes).and_then(|r| r.verify());
    match result {
        Ok(v) => {
            let e = v.entry.body();
            let (job, model, output) = match &e.body {
                EntryBody::Execution(r) => (
                    Some(r.job.id().to_hex()),
                    Some(r.job.body().model.clone()),
                    r.output_digest.map(|d| d.to_hex()),
                ),
                _ => (None, None, None),
            };
            if json_out {
                print_json(
                    &json!({"ok": true, "feed": e.feed.peer_id(), "seq": e.seq, "entry_id": v.entry.id(),
                    "job_id": job, "model": model, "output_digest": output,
                    "checkpoint": {"origin": v.checkpoint.origin, "size": v.checkpoint.size, "root": hex::encode(v.checkpoint.root)}}),
                );
            } else {
                println!(
                    "receipt verified: entry #{} ({}) is leaf {} of the log of {} entries",
                    e.seq,
                    v.entry.id().short(),
                    e.seq,
                    v.checkpoint.size
                );
                println!("  feed        {}", e.feed.peer_id());
                println!(
                    "  checkpoint  {} size {} root {}",
                    v.checkpoint.origin,
                    v.checkpoint.size,
                    hex::encode(v.checkpoint.root)
                );
                if let (Some(job), Some(model)) = (job, model) {
                    println!("  job         {job} (model {model})");
                    println!(
                        "  output      {}",
                        output.unwrap_or_else(|| "none (failed)".into())
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json_out {
                print_json(&json!({"ok": false, "error": e.to_string()}));
            } else {
                eprintln!("receipt verification FAILED: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn consistency(dir: &Path, old_size: u64, new_size: Option<u64>) -> Result<ExitCode> {
    let v = with_ledger(dir, move |s| {
        let r = s.reader();
        let size = r.entry_count()?;
        let new_size = new_size.unwrap_or(size);
        if new_size > size {
            bail!("the ledger holds {size} entries; cannot prove size {new_size}");
        }
        if old_size == 0 || old_size > new_size {
            bail!("old size must be from 1 to the new size ({new_size})");
        }
        let proof = r.consistency_proof(old_size, new_size)?;
        let cps = r.checkpoints()?;
        let note = |n: u64| {
            cps.iter()
                .find(|(s, _)| *s == n)
                .map(|(_, note)| note.clone())
        };
        Ok(json!({
            "old_size": old_size, "new_size": new_size,
            "old_root": hex::encode(r.root(old_size)?), "new_root": hex::encode(r.root(new_size)?),
            "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
            "old_checkpoint": note(old_size), "new_checkpoint": note(new_size),
        }))
    })?;
    print_json(&v);
    Ok(ExitCode::SUCCESS)
}

/// Most entries `ledger export` writes: the export holds every root and a proof per entry.
const EXPORT_ENTRIES_MAX: u64 = 1 << 20;

pub fn export(dir: &Path, json_flag: bool, out: Option<PathBuf>) -> Result<ExitCode> {
    if !json_flag {
        bail!("the export format is JSON: pass --json");
    }
    let v = with_ledger(dir, |s| {
        let r = s.reader();
        let feed = r.feed()?;
        let size = r.entry_count()?;
        if size > EXPORT_ENTRIES_MAX {
            bail!("the ledger holds {size} entries; export handles at most {EXPORT_ENTRIES_MAX}");
        }
        let mut entries = Vec::with_capacity(size as usize);
        let mut from = 0;
        while from < size {
            let page = r.range(from, 1024)?;
            for (seq, bytes) in &page {
                entries.push(json!({"seq": seq, "entry": hex::encode(bytes), "leaf_hash": hex::encode(r.leaf(*seq)?)}));
            }
            from += page.len().max(1) as u64;
        }
        let roots = (0..=size)
            .map(|n| Ok(json!({"size": n, "root": hex::encode(r.root(n)?)})))
            .collect::<Result<Vec<_>>>()?;
        let inclusion = (0..size)
            .map(|i| Ok(json!({"index": i, "size": size, "path": r.inclusion_proof(i, size)?.iter().map(hex::encode).collect::<Vec<_>>()})))
            .collect::<Result<Vec<_>>>()?;
        let cps = r.checkpoints()?;
        let consistency = cps
            .iter()
            .filter(|(n, _)| *n > 0 && *n <= size)
            .map(|(n, _)| Ok(json!({"old_size": n, "new_size": size, "path": r.consistency_proof(*n, size)?.iter().map(hex::encode).collect::<Vec<_>>()})))
            .collect::<Result<Vec<_>>>()?;
        Ok(json!({
            "format": "fabnode-ledger-export/v1",
            "hash": "RFC 9162 SHA-256: leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right)",
            "feed": feed.peer_id(),
            "feed_public_key": hex::encode(feed.to_bytes()),
            "size": size,
            "entries": entries,
            "roots": roots,
            "checkpoints": cps.iter().map(|(n, note)| json!({"size": n, "note": note})).collect::<Vec<_>>(),
            "inclusion_proofs": inclusion,
            "consistency_proofs": consistency,
        }))
    })?;
    let text = serde_json::to_string(&v)? + "\n";
    match out {
        Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify_evidence(file: &str, json_out: bool) -> Result<ExitCode> {
    let bytes = read_input(file, EVIDENCE_BYTES_MAX)?;
    match Evidence::from_json(&bytes).and_then(|e| e.verify()) {
        Ok(eq) => {
            if json_out {
                print_json(
                    &json!({"ok": true, "feed": eq.feed.peer_id(), "kind": eq.kind, "at": eq.at}),
                );
            } else {
                let what = if eq.kind == "entries" {
                    "two different entries at seq"
                } else {
                    "two different roots for size"
                };
                println!(
                    "evidence verified: feed {} signed {what} {}; stop trusting this feed",
                    eq.feed.peer_id(),
                    eq.at
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json_out {
                print_json(&json!({"ok": false, "error": e.to_string()}));
            } else {
                eprintln!("evidence verification FAILED: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
