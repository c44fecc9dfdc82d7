//! `fabnode bench mesh`: gossip convergence across real node processes on loopback.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use fab_client::types::SubmitRequest;

use crate::bench::stats;
use crate::demo::digits_test_set;
use crate::procs::{Proc, spawn, wait_for_peers};

fn size_of(p: &Proc, feed: &str) -> u64 {
    p.client
        .ledger_heads()
        .ok()
        .and_then(|v| {
            v.feeds
                .iter()
                .find(|f| f.feed.as_deref() == Some(feed))
                .map(|f| f.size)
        })
        .unwrap_or(0)
}

pub fn run(n: usize, jobs: usize, listen: &str, idle: Duration) -> Result<Value> {
    if n < 2 {
        bail!("a mesh needs at least 2 nodes");
    }
    let exe = std::env::current_exe()?;
    let tmp = tempfile::Builder::new()
        .prefix("fabnode-bench-mesh-")
        .tempdir()?;
    let network = format!("bench{}", std::process::id());
    let t_start = Instant::now();
    let first = spawn(&exe, &tmp.path().join("n0"), &network, listen, None)?;
    let addr = first.dial_addr()?;
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(spawn(
            &exe,
            &tmp.path().join(format!("n{i}")),
            &network,
            listen,
            Some(&addr),
        )?);
    }
    // Formed: every node holds enough connections for a full gossip mesh (D = 6).
    wait_for_peers(&nodes, (n - 1).min(6), Duration::from_secs(60))?;
    let formed = t_start.elapsed();
    let (images, _) = digits_test_set()?;
    let mut samples = Vec::with_capacity(jobs);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut counts = vec![0u64; n];
    for j in 0..jobs {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let k = (rng % n as u64) as usize;
        // Pinned to the node it is posted to: this measures replication of that node's feed.
        let mut body = SubmitRequest::new("digits", images[j % images.len()].clone());
        body.on = Some(nodes[k].peer_id.clone());
        nodes[k]
            .client
            .submit(&body)
            .map_err(|e| anyhow::anyhow!("job failed: {e}"))?;
        let t0 = Instant::now();
        counts[k] += 1;
        let want = counts[k];
        let feed = nodes[k].peer_id.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Poll every node in turn until all hold the entry; a short sleep between rounds keeps
        // the poller from starving the nodes of CPU on a small machine.
        let mut missing: Vec<usize> = (0..n).filter(|&i| i != k).collect();
        while !missing.is_empty() {
            missing.retain(|&i| size_of(&nodes[i], &feed) < want);
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("entry {want} of node {k} did not reach nodes {missing:?} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        samples.push(t0.elapsed());
    }
    // Idle: no jobs for `idle` seconds; CPU time and RSS of every node over the window.
    let cpu0: Vec<u64> = nodes.iter().map(|p| cpu_ticks(p.child.id())).collect();
    let t_idle = Instant::now();
    std::thread::sleep(idle);
    let window = t_idle.elapsed().as_secs_f64();
    let hz = clock_ticks_per_s();
    let cpu_pct: Vec<f64> = nodes
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| (cpu_ticks(p.child.id()) - c0) as f64 / hz / window * 100.0)
        .collect();
    let rss: Vec<u64> = nodes.iter().map(|p| rss_kib(p.child.id())).collect();
    let anon: Vec<f64> = nodes
        .iter()
        .map(|p| status_kib(p.child.id(), "RssAnon:") as f64)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let rss_f: Vec<f64> = rss.iter().map(|&r| r as f64).collect();
    Ok(json!({
        "bench": "mesh",
        "nodes": n,
        "listen": listen,
        "topology": "every node bootstrapped from node 0, then found the others through Kademlia",
        "mesh_formed_s": formed.as_secs_f64(),
        "convergence": {"what": "receipt returned on node k -> entry held by every other node (polled via each node's API, sequentially)", "latency": stats(samples)},
        "idle": {
            "what": "every node, after the jobs, with no work for the window: CPU time / wall time, and resident memory",
            "window_s": window,
            "cpu_percent_mean": mean(&cpu_pct),
            "cpu_percent_max": cpu_pct.iter().copied().fold(0.0, f64::max),
            "rss_kib_mean": mean(&rss_f),
            "rss_kib_max": rss.iter().max(),
            "rss_anon_kib_mean": mean(&anon),
            "rss_note": "RSS counts the executable's resident read-only pages, shared by every node process on a host; RssAnon is each node's private memory",
        },
    }))
}

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A KiB field of /proc/<pid>/status (VmRSS, RssAnon, RssFile, ...).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Remote-execution overhead between two node processes, with local execution on the same
/// node as the reference.
pub fn exec(runs: usize, warmup: usize, listen: &str) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let tmp = tempfile::Builder::new()
        .prefix("fabnode-bench-exec-")
        .tempdir()?;
    let network = format!("bench{}", std::process::id());
    let a = spawn(&exe, &tmp.path().join("A"), &network, listen, None)?;
    let boot = a.dial_addr()?;
    let b = spawn(&exe, &tmp.path().join("B"), &network, listen, Some(&boot))?;
    let nodes = [a, b];
    wait_for_peers(&nodes, 1, Duration::from_secs(30))?;
    let [a, b] = &nodes;
    let (images, _) = digits_test_set()?;
    // One job: (latency at the client, inference wall time from the receipt).
    let job = |i: usize, on: Option<&str>| -> Result<(Duration, Duration)> {
        let mut body = SubmitRequest::new("digits", images[i % images.len()].clone());
        // Local runs are pinned to A too: identical peers may otherwise win A's auction.
        body.on = Some(on.unwrap_or(&a.peer_id).to_owned());
        let t0 = Instant::now();
        let v = a
            .client
            .submit(&body)
            .map_err(|e| anyhow::anyhow!("job failed: {e}"))?;
        let total = t0.elapsed();
        let run_us = v
            .receipt
            .receipt
            .as_ref()
            .map(|r| r.timings.run_us)
            .ok_or_else(|| anyhow::anyhow!("no run time in the receipt"))?;
        Ok((total, Duration::from_micros(run_us)))
    };
    let (mut remote, mut remote_total, mut local, mut local_total, mut inference) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + runs {
        // Interleaved, so both see the same machine state.
        let (rt, rr) = job(i, Some(&b.peer_id))?;
        let (lt, lr) = job(i, None)?;
        if i >= warmup {
            remote.push(rt.saturating_sub(rr));
            remote_total.push(rt);
            local.push(lt.saturating_sub(lr));
            local_total.push(lt);
            inference.push(rr);
        }
    }
    Ok(json!({
        "bench": "exec",
        "listen": listen,
        "what": "POST /v1/jobs on node A, sequential; remote: \"on\": B over /fabnode/exec/1 (describe + run, B signs and durably commits the entry, A verifies it); local: run on A itself (A signs and commits)",
        "remote_overhead": {"what": "client latency minus the inference time in B's receipt", "latency": stats(remote)},
        "remote_total": stats(remote_total),
        "local_overhead": {"what": "client latency minus the inference time in A's receipt", "latency": stats(local)},
        "local_total": stats(local_total),
        "inference": stats(inference),
    }))
}
