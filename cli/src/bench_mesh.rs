//! `fabnode bench mesh`: gossip convergence across real node processes on loopback.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::bench::stats;
use crate::demo::digits_test_set;
use crate::procs::{Proc, spawn, wait_for_peers};

fn size_of(p: &Proc, feed: &str) -> u64 {
    p.client
        .get("/v1/ledger/heads")
        .ok()
        .and_then(|(_, v)| {
            v["feeds"]
                .as_array()?
                .iter()
                .find(|f| f["feed"] == feed)
                .and_then(|f| f["size"].as_u64())
        })
        .unwrap_or(0)
}

pub fn run(n: usize, jobs: usize, listen: &str) -> Result<Value> {
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
        let body = json!({"model": "digits", "input": images[j % images.len()].to_json_value()});
        let (status, v) = nodes[k].client.post("/v1/jobs", &body)?;
        if status != 200 {
            bail!("job failed: {v}");
        }
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
    let rss: Vec<u64> = nodes
        .iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).ok()?;
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .collect();
    let rss_mean_kib = rss.iter().sum::<u64>() / rss.len().max(1) as u64;
    Ok(json!({
        "bench": "mesh",
        "nodes": n,
        "listen": listen,
        "topology": "every node bootstrapped from node 0, then found the others through Kademlia",
        "mesh_formed_s": formed.as_secs_f64(),
        "convergence": {"what": "receipt returned on node k -> entry held by every other node (polled via each node's API, sequentially)", "latency": stats(samples)},
        "rss_kib_mean_after": rss_mean_kib,
    }))
}
