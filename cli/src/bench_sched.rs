//! `fabnode bench sched`: scheduling overhead and sustained placed jobs on a 5-node loopback
//! mesh of real node processes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fab_client::types::{Feeds, SubmitRequest};
use serde_json::{Value, json};

use crate::bench::stats;
use crate::demo::digits_test_set;
use crate::procs::{Proc, spawn_with, wait_for_peers, wait_for_telemetry};

const NODES: usize = 5;

/// Entries in a node's own feed.
fn own_entries(p: &Proc) -> Result<u64> {
    Ok(p.client.ledger_head()?.entries)
}

/// Waits until every node holds every other node's whole feed, so one phase's replication
/// does not run into the next phase's measurements.
fn settle(nodes: &[Proc]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sizes: Vec<(String, u64)> = nodes
            .iter()
            .map(|p| Ok((p.peer_id.clone(), own_entries(p)?)))
            .collect::<Result<_>>()?;
        let converged = nodes.iter().all(|p| {
            p.client.ledger_heads().is_ok_and(|v| {
                sizes.iter().all(|(feed, size)| {
                    *size == 0
                        || v.feeds
                            .iter()
                            .any(|x| x.feed.as_deref() == Some(feed) && x.size == *size)
                })
            })
        });
        if converged {
            return Ok(());
        }
        if Instant::now() > deadline {
            let heads: Vec<Feeds> = nodes
                .iter()
                .filter_map(|p| p.client.ledger_heads().ok())
                .collect();
            bail!("the ledgers did not converge within 120 s: sizes {sizes:?}, heads {heads:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One job: (latency at the client, inference time in the receipt, executor, time the auction
/// took to award it).
fn job(p: &Proc, body: &SubmitRequest) -> Result<(Duration, Duration, String, Duration)> {
    let t0 = Instant::now();
    let v = p
        .client
        .submit(body)
        .map_err(|e| anyhow::anyhow!("job failed: {e}"))?;
    let total = t0.elapsed();
    let Some(receipt) = &v.receipt.receipt else {
        bail!("no run time in the receipt");
    };
    let run_us = receipt.timings.run_us;
    let executor = v.receipt.feed.clone();
    let decided = v.placement.and_then(|p| p.decided_ms).unwrap_or(0.0);
    Ok((
        total,
        Duration::from_micros(run_us),
        executor,
        Duration::from_secs_f64(decided / 1e3),
    ))
}

/// Jobs submitted by `clients` threads for `seconds`, each thread to its own node in turn.
fn sustained(
    nodes: &[&Proc],
    ledgers: &[&Proc],
    clients: usize,
    seconds: u64,
    tiers: &[&str],
    images: &[fab_inference::Tensor],
) -> Result<Value> {
    let before: u64 = ledgers
        .iter()
        .map(|p| own_entries(p))
        .sum::<Result<u64>>()?;
    let cpu = |ps: &[&Proc]| -> Vec<u64> {
        ps.iter()
            .map(|p| crate::bench_mesh::cpu_ticks(p.child.id()))
            .collect()
    };
    let cpu_before = cpu(ledgers);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_failure = std::sync::Mutex::new(None::<String>);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (done, failed, stop, first_failure) = (&done, &failed, &stop, &first_failure);
            let node = nodes[c % nodes.len()];
            s.spawn(move || {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let mut body = SubmitRequest::new("digits", images[i % images.len()].clone());
                    body.tiers = tiers.iter().map(|t| (*t).to_owned()).collect();
                    i += clients;
                    match node.client.submit(&body) {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) == 0
                                && let Ok(mut f) = first_failure.lock()
                            {
                                *f = Some(e.to_string());
                            }
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = t0.elapsed();
    let (done, failed) = (done.into_inner(), failed.into_inner());
    // Every answered job is an entry in some node's feed (the executor's).
    let all_nodes_after: u64 = ledgers
        .iter()
        .map(|p| own_entries(p))
        .sum::<Result<u64>>()?;
    // How the last jobs each submission node placed were placed: its own fast path, a call
    // for bids won by itself, or a run on a peer.
    let (mut fast, mut bid_here, mut on_peer) = (0u64, 0u64, 0u64);
    for p in nodes {
        for j in p.client.jobs(1024)?.jobs {
            if j.fast_path {
                fast += 1;
            } else if j.executors.iter().all(|e| *e == p.peer_id) {
                bid_here += 1;
            } else {
                on_peer += 1;
            }
        }
    }
    let ticks = crate::bench_mesh::clock_ticks_per_s();
    let each: Vec<f64> = cpu(ledgers)
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after.saturating_sub(*before) as f64 / ticks)
        .collect();
    let cpu_s: f64 = each.iter().sum();
    let per_job = |s: f64| s * 1e6 / done.max(1) as f64;
    Ok(json!({
        "node_cpu_s": cpu_s,
        "node_cpu_us_per_job": per_job(cpu_s),
        "node_cpu_us_per_job_each": each.iter().map(|s| per_job(*s).round()).collect::<Vec<_>>(),
        "last_jobs_placed": {"fast_path": fast, "bids_won_here": bid_here, "on_a_peer": on_peer},
        "clients": clients, "seconds": elapsed.as_secs_f64(), "jobs_ok": done, "jobs_failed": failed,
        "jobs_per_s": done as f64 / elapsed.as_secs_f64(),
        "entries_written": all_nodes_after - before,
        "first_failure": first_failure.into_inner().ok().flatten(),
    }))
}

pub fn run(
    runs: usize,
    warmup: usize,
    seconds: u64,
    clients: usize,
    bids_max: Option<u64>,
    listen: &str,
) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let tmp = tempfile::Builder::new()
        .prefix("fabnode-bench-sched-")
        .tempdir()?;
    let network = format!("bench{}", std::process::id());
    // R places the jobs; it is a `device` node, so a job that allows only `edge` goes through a
    // call for bids to the four others. Their prices differ, so the auction has a clear winner.
    let fast_telemetry = ("FABNODE_TELEMETRY_EVERY_MS", "500");
    let bids = bids_max.map(|b| b.to_string());
    let mut r_settings = vec![fast_telemetry, ("FABNODE_SCHEDULER_TIER", "device")];
    if let Some(b) = &bids {
        r_settings.push(("FABNODE_SCHEDULER_BIDS_MAX", b));
    }
    let r = spawn_with(
        &exe,
        &tmp.path().join("R"),
        &network,
        listen,
        None,
        &r_settings,
    )?;
    let boot = r.dial_addr()?;
    let prices = ["0", "1000000", "2000000", "3000000"];
    let mut nodes = vec![r];
    for (i, price) in prices.iter().enumerate() {
        nodes.push(spawn_with(
            &exe,
            &tmp.path().join(format!("E{i}")),
            &network,
            listen,
            Some(&boot),
            &[
                fast_telemetry,
                ("FABNODE_SCHEDULER_PRICE_PER_S_MICROS", price),
            ],
        )?);
    }
    wait_for_peers(&nodes, NODES - 1, Duration::from_secs(60))?;
    let r = &nodes[0];
    wait_for_telemetry(r, NODES - 1, Duration::from_secs(30))?;
    let (images, _) = digits_test_set()?;
    let cheapest = nodes[1].peer_id.clone();
    let (mut auction, mut fast, mut pinned, mut inference) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut decided_remote, mut decided_fast) = (Vec::new(), Vec::new());
    let mut winners = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..warmup + runs {
        let plain = SubmitRequest::new("digits", images[i % images.len()].clone());
        let mut edge = plain.clone();
        edge.tiers = vec!["edge".to_owned()];
        let mut pinned_body = plain.clone();
        pinned_body.on = Some(cheapest.clone());
        // Interleaved, so all three see the same machine state.
        let (at, ar, winner, ad) = job(r, &edge)?;
        let (ft, fr, _, fd) = job(r, &plain)?;
        let (pt, pr, _, _) = job(r, &pinned_body)?;
        if i >= warmup {
            auction.push(at.saturating_sub(ar));
            decided_remote.push(ad);
            decided_fast.push(fd);
            fast.push(ft.saturating_sub(fr));
            pinned.push(pt.saturating_sub(pr));
            inference.push(ar);
            *winners.entry(winner).or_default() += 1;
        }
    }
    let all: Vec<&Proc> = nodes.iter().collect();
    settle(&nodes)?;
    let every_node = sustained(&all, &all, clients, seconds, &[], &images)?;
    settle(&nodes)?;
    // The same load on R alone with default placement: R runs nearly every job itself, so the
    // four others' CPU per job is what keeping a replica of one busy feed costs.
    let on_r = sustained(&[r], &all, clients, seconds, &[], &images)?;
    settle(&nodes)?;
    wait_for_telemetry(r, NODES - 1, Duration::from_secs(30))?;
    let through_auction = sustained(&[r], &all, clients, seconds, &["edge"], &images)?;
    // How the last placed jobs went: attempts per job, and what ended the failed attempts.
    let recent = r.client.jobs(1024)?;
    let mut attempts = std::collections::BTreeMap::<u32, u64>::new();
    for j in &recent.jobs {
        *attempts.entry(j.attempts).or_default() += 1;
    }
    let sample_failure = recent
        .jobs
        .iter()
        .find(|j| j.attempts > 1)
        .and_then(|j| r.client.job(&j.job_id).ok())
        .and_then(|v| v.placement);
    for p in nodes {
        p.stop()?;
    }
    // The same load on one node alone (mesh on, no peers): what a node sustains when it does
    // not also verify and store four peers' feeds on the same two cores.
    let alone = spawn_with(
        &exe,
        &tmp.path().join("alone"),
        &format!("{network}-alone"),
        listen,
        None,
        &[],
    )?;
    let one_node = sustained(&[&alone], &[&alone], clients, seconds, &[], &images)?;
    alone.stop()?;
    Ok(json!({
        "bench": "sched",
        "nodes": NODES,
        "bids_max": bids_max,
        "listen": listen,
        "what": "POST /v1/jobs (digits) on R, sequential, interleaved; overhead = client latency minus the inference time in the executor's receipt",
        "auction_remote": {"what": "auction: call for bids to 4 edge peers, award to the best, run there over /fabnode/exec/1, verify", "overhead": stats(auction),
                           "winners": winners, "decided": stats(decided_remote)},
        "auction_fast_path": {"what": "auction: R itself scores best, runs it with no round trip", "overhead": stats(fast),
                              "decided": stats(decided_fast)},
        "pinned_remote": {"what": "reference: \"on\": the same winner, no auction", "overhead": stats(pinned)},
        "inference": stats(inference),
        "sustained_every_node": {"what": "clients spread over all 5 nodes, default placement (each node's own auction), every execution ledgered", "result": every_node},
        "sustained_on_r": {"what": "clients all on R, default placement (R runs nearly every job itself): node_cpu_us_per_job_each shows what a replica of a busy feed costs per entry", "result": on_r},
        "last_1024_jobs_attempts": attempts,
        "a_job_with_retries": sample_failure,
        "sustained_one_node": {"what": "the same clients on one node with no peers, placement by its own auction (fast path), every execution ledgered", "result": one_node},
        "sustained_auction_remote": {"what": "clients all on R, jobs allowed on edge only: every job bid for and run on a peer, every execution ledgered", "result": through_auction},
    }))
}
