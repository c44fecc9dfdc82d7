//! Real `fabnode` node processes on loopback, for the demo and the mesh benchmarks.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client::Client;
use crate::demo::DIGITS_ONNX;

/// A node process; stopped with SIGTERM when dropped.
pub struct Proc {
    pub child: Child,
    pub client: Client,
    pub peer_id: String,
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

/// A `fabnode` command that ignores the caller's FABNODE_* settings: these nodes are
/// configured here alone.
fn hermetic(exe: &std::path::Path) -> Command {
    let mut cmd = Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FABNODE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Starts `fabnode start` on a fresh data dir `dir` with the digits model, listening for the mesh
/// on `listen` (mDNS off), in mesh `network`, bootstrapping from `bootstrap`.
pub fn spawn(
    exe: &std::path::Path,
    dir: &std::path::Path,
    network: &str,
    listen: &str,
    bootstrap: Option<&str>,
) -> Result<Proc> {
    spawn_with(exe, dir, network, listen, bootstrap, &[])
}

/// [`spawn`] with more settings (`FABNODE_*` variables).
pub fn spawn_with(
    exe: &std::path::Path,
    dir: &std::path::Path,
    network: &str,
    listen: &str,
    bootstrap: Option<&str>,
    settings: &[(&str, &str)],
) -> Result<Proc> {
    let run = |args: &[&str]| -> Result<()> {
        let out = hermetic(exe)
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
    let mut cmd = hermetic(exe);
    cmd.env("FABNODE_MESH_ENABLED", "true")
        .args([
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
    for (k, v) in settings {
        cmd.env(k, v);
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
    let peer_id = client.node()?.peer_id;
    Ok(Proc {
        child,
        client,
        peer_id,
    })
}

impl Proc {
    /// The first mesh listen address with the peer id: what others bootstrap from.
    pub fn dial_addr(&self) -> Result<String> {
        let info = self.client.node()?;
        Ok(format!(
            "{}/p2p/{}",
            info.mesh
                .listen
                .and_then(|l| l.into_iter().next())
                .context("no mesh listen address")?,
            self.peer_id
        ))
    }

    pub fn peer_count(&self) -> usize {
        self.client.peers().map_or(0, |v| v.peers.len())
    }

    /// Stops the node with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("node {} exited with {status}", self.peer_id);
        }
        Ok(())
    }
}

/// Waits until every node has at least `want` peers.
pub fn wait_for_peers(nodes: &[Proc], want: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let counts: Vec<usize> = nodes.iter().map(Proc::peer_count).collect();
        if counts.iter().all(|&c| c >= want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the mesh did not form within {limit:?}: peers per node {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `node` holds fresh telemetry from at least `want` peers (it places jobs with
/// it), polling its API: the node is another process with no push channel.
pub fn wait_for_telemetry(node: &Proc, want: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let held = node.client.telemetry()?.peers.len();
        if held >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node {} holds fresh telemetry from {held} of {want} peers after {limit:?}",
                node.peer_id
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
