//! `fabnode demo`: a real node, a real model, real held-out images, a verified ledger.

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use fab_inference::{Tensor, TensorData};
use fab_ledger::Keypair;
use fab_ledger::store::ReadOnlyStore;
use fab_node::config::LogFormat;
use fab_node::{Config, Node, datadir};
use serde_json::json;

use crate::cmd::init_logging;
use crate::procs::{Proc, spawn, spawn_with, wait_for_peers, wait_for_telemetry};
use fab_client::types::{JobResult, SubmitRequest};

/// The digits classifier and its held-out set, from `fixtures/digits/` (see make_digits.py).
pub const DIGITS_ONNX: &[u8] = include_bytes!("../../fixtures/digits/digits.onnx");
pub const DIGITS_TEST_IMAGES: &[u8] = include_bytes!("../../fixtures/digits/test_images.npy");
pub const DIGITS_TEST_LABELS: &[u8] = include_bytes!("../../fixtures/digits/test_labels.npy");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many jobs to run; past the 360 held-out images, they repeat
    #[arg(long, default_value_t = 360)]
    images: usize,
    /// Concurrent client connections
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Keep the demo's data dir instead of deleting it, and print its path
    #[arg(long)]
    keep: bool,
    /// Print a JSON summary instead of the table
    #[arg(long)]
    json: bool,
}

/// A node with the digits model, running in this process on a temporary data dir.
#[derive(Debug)]
pub struct LocalNode {
    /// Removed when the node is dropped.
    _dir: tempfile::TempDir,
    pub base: String,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl LocalNode {
    pub fn start(config_edit: impl FnOnce(&mut Config)) -> Result<LocalNode> {
        let dir = tempfile::Builder::new()
            .prefix("fabnode-demo-")
            .tempdir()
            .context("temporary data dir")?;
        let path = dir.path();
        Keypair::generate().save_new(&datadir::key_path(path))?;
        let model_file = path.join("digits.onnx");
        std::fs::write(&model_file, DIGITS_ONNX).context("writing the bundled model")?;
        let mut config = Config::default();
        config.api.listen = ([127, 0, 0, 1], 0).into();
        // One in-process node: nothing to replicate with, and no mDNS traffic on the LAN.
        config.mesh.enabled = false;
        config_edit(&mut config);
        fab_node::models::add(
            path,
            "digits",
            &model_file,
            config.inference.model_bytes_max,
        )?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let node = rt.block_on(Node::start(path, config))?;
        let base = format!("http://{}", node.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(node.run(async move {
            let _ = stopped.await;
        }));
        Ok(LocalNode {
            _dir: dir,
            base,
            rt,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Graceful shutdown: in-flight jobs finish and the ledger is closed.
    pub fn stop(&mut self) -> Result<()> {
        if let (Some(stop), Some(task)) = (self.stop.take(), self.task.take()) {
            let _ = stop.send(());
            self.rt
                .block_on(task)
                .context("node task")?
                .context("node")?;
        }
        Ok(())
    }
}

/// The held-out images as single-image tensors, and their labels.
pub fn digits_test_set() -> Result<(Vec<Tensor>, Vec<i64>)> {
    let images = Tensor::from_npy(DIGITS_TEST_IMAGES, 1 << 20)?;
    let labels = Tensor::from_npy(DIGITS_TEST_LABELS, 1 << 20)?;
    let (TensorData::F32(px), TensorData::I64(lb)) = (images.data(), labels.data()) else {
        bail!("bundled test set has unexpected dtypes");
    };
    let singles = px
        .chunks_exact(64)
        .map(|c| Tensor::new(vec![1, 1, 8, 8], TensorData::F32(c.to_vec())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((singles, lb.clone()))
}

fn ascii_digit(t: &Tensor) -> Vec<String> {
    let TensorData::F32(px) = t.data() else {
        return Vec::new();
    };
    px.chunks(8)
        .map(|row| {
            row.iter()
                .map(|&v| match v as u32 {
                    0..=2 => "  ",
                    3..=7 => "░░",
                    8..=12 => "▒▒",
                    _ => "██",
                })
                .collect()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

/// The answer of one demo job.
struct Done {
    prediction: usize,
    latency: Duration,
}

/// The entry count and Merkle root of every feed, as each node's ledger file holds it.
type FeedView = std::collections::BTreeMap<String, (u64, String)>;

/// Verifies one stopped node's ledger file offline: its own feed and every replica.
fn verify_ledger(dir: &std::path::Path) -> Result<FeedView> {
    let store = ReadOnlyStore::open(&datadir::ledger_path(dir))?;
    let r = store.reader();
    let feed = r.feed()?.peer_id();
    let (size, _) = match r.verify_all()? {
        Ok(v) => v,
        Err(e) => bail!("ledger of {feed} FAILED verification: {e}"),
    };
    let mut view = FeedView::new();
    view.insert(feed.clone(), (size, hex::encode(r.root(size)?)));
    for (_, verified) in r.verify_replicas()? {
        match verified {
            Ok(v) => {
                view.insert(v.feed.peer_id(), (v.size, hex::encode(v.root)));
            }
            Err(e) => bail!("{feed}'s replica FAILED verification: {e}"),
        }
    }
    Ok(view)
}

/// What the placement step showed.
struct Placement {
    /// The node (index) that ran the cloud-only job, in how many attempts, and why the others
    /// did not.
    cloud: usize,
    cloud_attempts: u64,
    cloud_others: Vec<String>,
    /// The nodes that ran the replicated job, and whether their outputs agree.
    replicas: Vec<usize>,
    agree: bool,
}

impl Placement {
    fn ran_on(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.cloud).chain(self.replicas.iter().copied())
    }
}

/// Places two jobs with A's auction: one allowed only on cloud nodes (C), one on three replicas.
fn place(nodes: &[Proc], image: &Tensor) -> Result<Placement> {
    let a = &nodes[0];
    let index = |peer: &str| {
        nodes
            .iter()
            .position(|p| p.peer_id == peer)
            .with_context(|| format!("{peer} is not a demo node"))
    };
    // A places with its peers' telemetry: wait until it holds both.
    wait_for_telemetry(a, 2, Duration::from_secs(30))?;
    let post = |set: &dyn Fn(&mut SubmitRequest)| -> Result<JobResult> {
        let mut body = SubmitRequest::new("digits", image.clone());
        body.explain = true;
        set(&mut body);
        let answer = a.client.submit(&body)?;
        fab_client::verify::job_result(
            &answer,
            answer.input_names.first().map(String::as_str),
            image,
            answer.executor.as_deref(),
        )?;
        Ok(answer)
    };
    let cloud = post(&|b| b.tiers = vec!["cloud".to_owned()])?;
    let cloud_executor = cloud.executor.clone().unwrap_or_default();
    let cloud_others = cloud
        .placement
        .as_ref()
        .and_then(|p| p.candidates.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.peer_id != cloud_executor)
        .map(|c| {
            let name = ["A", "B", "C"][index(&c.peer_id).unwrap_or(0)];
            format!("{name}: {}", c.reason.as_deref().unwrap_or("not chosen"))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let replicated = post(&|b| b.replicas = Some(3))?;
    let replicas = replicated
        .replicas
        .as_ref()
        .context("no replicas in the answer")?
        .iter()
        .map(|r| index(&r.executor))
        .collect::<Result<Vec<_>>>()?;
    Ok(Placement {
        cloud: index(&cloud_executor)?,
        cloud_attempts: cloud
            .placement
            .as_ref()
            .map_or(0, |p| u64::from(p.attempts)),
        cloud_others,
        replicas,
        agree: replicated.replicas_agree == Some(true),
    })
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    init_logging("warn", LogFormat::Text);
    let (images, labels) = digits_test_set()?;
    let n = a.images.clamp(1, 100_000);
    let exe = std::env::current_exe()?;
    let tmp = tempfile::Builder::new()
        .prefix("fabnode-demo-")
        .tempdir()
        .context("temporary directory")?;
    let network = format!("demo{}", std::process::id());
    let listen = "/ip4/127.0.0.1/tcp/0";
    let names = ["A", "B", "C"];
    let first = spawn(&exe, &tmp.path().join("A"), &network, listen, None)?;
    let boot = first.dial_addr()?;
    let mut nodes = vec![first];
    for name in &names[1..] {
        // C is a cloud node, the others edge nodes: the placement step asks for cloud.
        let tier = if *name == "C" { "cloud" } else { "edge" };
        nodes.push(spawn_with(
            &exe,
            &tmp.path().join(name),
            &network,
            listen,
            Some(&boot),
            &[("FABNODE_SCHEDULER_TIER", tier)],
        )?);
    }
    wait_for_peers(&nodes, 2, Duration::from_secs(30))?;
    if !a.json {
        println!("fabnode demo: a three-node mesh on loopback");
        for (name, p) in names.iter().zip(&nodes) {
            println!("  node {name}   {}  {}", p.peer_id, p.client.base());
        }
        println!("  data     {}", tmp.path().display());
        println!(
            "  model    digits: MLP 64-64-10 trained on scikit-learn digits, ONNX run by tract"
        );
        println!(
            "  work     {n} held-out 8x8 images; job i is submitted on node i mod 3 and runs on\n           the next node over /fabnode/exec/1, {} at a time\n",
            a.concurrency
        );
        for (i, line) in ascii_digit(&images[0]).iter().enumerate() {
            println!(
                "    {line}{}",
                if i == 3 {
                    format!("   image 0, label {}", labels[0])
                } else {
                    String::new()
                }
            );
        }
        println!();
    }

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Done>>> = Mutex::new((0..n).map(|_| None).collect());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..a.concurrency.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t0 = Instant::now();
                    let img = &images[i % images.len()];
                    let (submitter, executor) = (&nodes[i % 3], &nodes[(i + 1) % 3]);
                    let mut body = SubmitRequest::new("digits", img.clone());
                    body.on = Some(executor.peer_id.clone());
                    let outcome = (|| -> Result<usize> {
                        let answer = submitter.client.submit(&body)?;
                        fab_client::verify::job_result(
                            &answer,
                            answer.input_names.first().map(String::as_str),
                            img,
                            Some(&executor.peer_id),
                        )?;
                        let probs = answer
                            .outputs
                            .iter()
                            .find(|o| o.name == "probabilities")
                            .context("no probabilities output")?;
                        probs.tensor.argmax_row(0).context("empty output")
                    })();
                    match outcome {
                        Ok(prediction) => {
                            results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(Done {
                                prediction,
                                latency: t0.elapsed(),
                            })
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("image {i}: {e:#}")),
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(first) = failures.first() {
        bail!("{} of {n} jobs failed; first: {first}", failures.len());
    }
    let done: Vec<Done> = results.into_iter().flatten().collect();
    let correct = done
        .iter()
        .enumerate()
        .filter(|(i, d)| d.prediction as i64 == labels[*i % labels.len()])
        .count();
    let accuracy = correct as f64 / n as f64;
    let mut lat: Vec<Duration> = done.iter().map(|d| d.latency).collect();
    lat.sort();
    let throughput = n as f64 / elapsed.as_secs_f64();

    // Placement: two jobs on A with no `on`, placed by A's auction.
    let placement = place(&nodes, &images[0])?;
    let mut expected: Vec<u64> = (0..3)
        .map(|k| (0..n).filter(|i| (i + 1) % 3 == k).count() as u64)
        .collect();
    for ran_on in placement.ran_on() {
        expected[ran_on] += 1;
    }

    // Replication: every node ends up holding every feed, each with a trusted checkpoint that
    // signs all of it.
    let t_rep = Instant::now();
    loop {
        let converged = nodes.iter().all(|p| {
            p.client.ledger_heads().is_ok_and(|v| {
                nodes.iter().zip(&expected).all(|(owner, want)| {
                    v.feeds.iter().any(|f| {
                        f.feed.as_deref() == Some(owner.peer_id.as_str())
                            && f.size == *want
                            && (f.own || f.trusted_size.flatten() == Some(*want))
                    })
                })
            })
        });
        if converged {
            break;
        }
        if t_rep.elapsed() > Duration::from_secs(60) {
            bail!("the three ledgers did not converge within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let replicated = t_rep.elapsed();
    // Stop the nodes cleanly and verify every ledger file offline, as an auditor would.
    let ids: Vec<String> = nodes.iter().map(|p| p.peer_id.clone()).collect();
    for p in nodes {
        p.stop()?;
    }
    let views: Vec<FeedView> = names
        .iter()
        .map(|name| verify_ledger(&tmp.path().join(name)))
        .collect::<Result<_>>()?;
    for (id, view) in ids.iter().zip(&views) {
        if views.iter().any(|v| v != view) {
            bail!("the ledgers disagree: {id} holds {view:?}; all: {views:?}");
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "nodes": ids, "images": n, "correct": correct, "accuracy": accuracy,
                "throughput_jobs_per_s": throughput, "latency_ms_p50": percentile(&lat, 0.5).as_secs_f64() * 1e3,
                "latency_ms_p99": percentile(&lat, 0.99).as_secs_f64() * 1e3,
                "replicated_after_ms": replicated.as_secs_f64() * 1e3,
                "placement": {"cloud_only": {"executor": ids[placement.cloud], "attempts": placement.cloud_attempts,
                                             "others": placement.cloud_others},
                              "replicas": {"executors": placement.replicas.iter().map(|k| &ids[*k]).collect::<Vec<_>>(),
                                           "agree": placement.agree}},
                "feeds": views[0].iter().map(|(f, (size, root))| json!({"feed": f, "entries": size, "root": root, "identical_on": names})).collect::<Vec<_>>(),
            }))?
        );
    } else {
        println!("predicted/true label (✗ marks a miss):");
        for (row, chunk) in done.chunks(12).enumerate() {
            let cells: Vec<String> = chunk
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    let l = labels[(row * 12 + j) % labels.len()];
                    let p = d.prediction;
                    format!("{p}/{l}{}", if p as i64 == l { " " } else { "✗" })
                })
                .collect();
            println!("  {:>3}: {}", row * 12, cells.join(" "));
        }
        println!();
        println!("accuracy:   {correct}/{n} = {accuracy:.4}");
        println!(
            "throughput: {throughput:.0} jobs/s ({n} jobs in {:.2} s); latency p50 {:.2} ms, p99 {:.2} ms",
            elapsed.as_secs_f64(),
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
        println!(
            "receipts:   {n} verified by the submitting client (executor's signature, job, input and\n            output digests)"
        );
        println!(
            "placement:  a job on A allowed only on cloud nodes ran on {} after a call for bids\n            ({});\n            a job on A with 3 replicas ran on {}: outputs {}",
            names[placement.cloud],
            placement.cloud_others.join("; "),
            placement
                .replicas
                .iter()
                .map(|k| names[*k])
                .collect::<Vec<_>>()
                .join(", "),
            if placement.agree { "agree" } else { "DIFFER" }
        );
        println!(
            "replicated: every feed complete and checkpoint-trusted on all three nodes {:.0} ms after\n            the last answer",
            replicated.as_secs_f64() * 1e3
        );
        println!("ledgers verified offline after a clean stop; identical on A, B and C:");
        for (name, feed) in names.iter().zip(&ids) {
            if let Some((size, root)) = views[0].get(feed) {
                println!(
                    "  feed {name} {feed}  {size:>4} entries  root {}",
                    &root[..16]
                );
            }
        }
    }
    if a.keep {
        let kept = tmp.keep();
        eprintln!("data dirs kept at {}", kept.display());
    }
    Ok(ExitCode::SUCCESS)
}
