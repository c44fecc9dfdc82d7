//! `fabnode bench mesh`: gossip convergence across real node processes on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::stats;
use crate::client::Client;
use crate::demo::{DIGITS_ONNX, digits_test_set};

struct Proc {
    child: Child,
    client: Client,
    peer_id: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn spawn(
    exe: &std::path::Path,
    dir: &std::path::Path,
    network: &str,
    listen: &str,
    bootstrap: Option<&str>,
) -> Result<Proc> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(exe)
            .args(args)
            .env("FABNODE_DATA_DIR", dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "fabnode {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&["keys", "init"])?;
    let model = dir.join("digits.onnx");
    std::fs::write(&model, DIGITS_ONNX)?;
    run(&[
        "model",
        "add",
        "digits",
        model.to_str().context("utf-8 path")?,
    ])?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "start",
        "--api-listen",
        "127.0.0.1:0",
        "--mesh-listen",
        listen,
        "--no-mdns",
        "--log-level",
        "warn",
    ])
    .env("FABNODE_DATA_DIR", dir)
    .env("FABNODE_LEDGER_NETWORK", network)
    .env("FABNODE_INFERENCE_WORKERS", "1")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd.spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut api = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.split(" listening on http://").nth(1) {
            api = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    // Keep draining stderr so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let api = api.context("node did not start")?;
    let client = Client::new(format!("http://{api}"), Duration::from_secs(30));
    let (_, info) = client.get("/v1/node")?;
    let peer_id = info["peer_id"].as_str().context("peer id")?.to_owned();
    Ok(Proc {
        child,
        client,
        peer_id,
    })
}

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
    let (_, info) = first.client.get("/v1/node")?;
    let addr = format!(
        "{}/p2p/{}",
        info["mesh"]["listen"][0].as_str().context("listen addr")?,
        first.peer_id
    );
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
    let want_peers = (n - 1).min(6);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts: Vec<usize> = nodes
            .iter()
            .map(|p| {
                p.client
                    .get("/v1/peers")
                    .map_or(0, |(_, v)| v["peers"].as_array().map_or(0, |p| p.len()))
            })
            .collect();
        if counts.iter().all(|&c| c >= want_peers) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the mesh did not form within 60 s: peers per node {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
