//! `fabnode bench`: latency measurements written as JSON (see docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use fab_inference::{Engine, Tensor, TensorData, TractEngine};
use fab_node::config::LogFormat;
use serde_json::{Value, json};

use crate::Global;
use crate::client::Client;
use crate::cmd::init_logging;
use crate::demo::{LocalNode, digits_test_set};
use fab_client::types::SubmitRequest;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Per-inference latency through the engine (no API, no ledger), one input row per run
    Engine {
        /// ONNX model [default: the bundled digits model]
        #[arg(long)]
        model: Option<PathBuf>,
        /// .npy batch whose rows are fed one at a time [default: the bundled held-out digits]
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// Write the JSON result here as well as to stdout
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Ledger throughput and proof costs: durable appends with group commit and with one commit
    /// per append, signature verification per core, proof generation and verification in a
    /// large log. Entries are real execution receipts (two signatures each).
    Ledger {
        /// Entries appended for the group-commit and verification measurements
        #[arg(long, default_value_t = 20_000)]
        appends: u64,
        /// Entries per durable commit in the group-commit run
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Entries appended one commit each
        #[arg(long, default_value_t = 1_000)]
        single_appends: u64,
        /// Size of the log in which proofs are generated and verified
        #[arg(long, default_value_t = 1_000_000)]
        log_size: u64,
        /// Proofs of each kind to time
        #[arg(long, default_value_t = 2_000)]
        proofs: usize,
        /// Entries per signature-verification batch
        #[arg(long, default_value_t = 1024)]
        verify_batch: usize,
        /// Directory for the ledger files [default: a temporary directory]
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Gossip convergence: N real `fabnode` processes on loopback, all bootstrapped from the
    /// first; jobs run on random nodes; time from the receipt to the entry being held by every
    /// other node (polled through each node's API)
    Mesh {
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Jobs to time
        #[arg(long, default_value_t = 50)]
        jobs: usize,
        /// Mesh listen address for every node
        #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
        listen: String,
        /// Seconds of no work after the jobs, over which idle CPU and memory are measured
        #[arg(long, default_value_t = 10)]
        idle_s: u64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remote-execution overhead: two real `fabnode` processes; the same jobs submitted on A to
    /// run on B (`on`) and to run on A itself; latency at the client minus the inference time
    /// the receipt records
    Exec {
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        /// Mesh listen address for both nodes
        #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
        listen: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Scheduling on a 5-node loopback mesh of real processes: overhead (client latency minus
    /// inference) of jobs placed by the auction on a peer, placed locally by the fast path, and
    /// pinned to the same peer with no auction; then sustained placed jobs per second, every
    /// execution ledgered
    Sched {
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        /// Length of each sustained-throughput run
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent clients in the sustained runs
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Peers the requester asks per job (its scheduler.bids_max) [default: the node's default]
        #[arg(long)]
        bids_max: Option<u64>,
        /// Mesh listen address for every node
        #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
        listen: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// End-to-end `POST /v1/jobs` latency against a local node with the ledger on (each job
    /// is signed, run, durably committed and verified by the client)
    Submit {
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn stats(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let us = |d: Duration| d.as_nanos() as f64 / 1e3;
    let pick = |p: f64| us(samples[((samples.len() - 1) as f64 * p).round() as usize]);
    let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64;
    json!({"runs": samples.len(), "median_us": pick(0.5), "mean_us": mean, "p90_us": pick(0.9),
           "p99_us": pick(0.99), "min_us": us(samples[0]), "max_us": us(samples[samples.len() - 1])})
}

fn rows(batch: &Tensor) -> Result<Vec<Tensor>> {
    let TensorData::F32(px) = batch.data() else {
        bail!("bench input must be f32")
    };
    let row_shape: Vec<usize> = std::iter::once(1)
        .chain(batch.shape()[1..].iter().copied())
        .collect();
    let width: usize = batch.shape()[1..].iter().product();
    px.chunks_exact(width)
        .map(|c| Tensor::new(row_shape.clone(), TensorData::F32(c.to_vec())).map_err(Into::into))
        .collect()
}

fn emit(v: Value, out: Option<PathBuf>) -> Result<ExitCode> {
    let text = serde_json::to_string_pretty(&v)?;
    println!("{text}");
    if let Some(p) = out {
        std::fs::write(&p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(_g: &Global, cmd: BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Mesh {
            nodes,
            jobs,
            listen,
            idle_s,
            out,
        } => emit(
            crate::bench_mesh::run(nodes, jobs, &listen, Duration::from_secs(idle_s))?,
            out,
        ),
        BenchCmd::Exec {
            runs,
            warmup,
            listen,
            out,
        } => emit(crate::bench_mesh::exec(runs, warmup, &listen)?, out),
        BenchCmd::Sched {
            runs,
            warmup,
            seconds,
            clients,
            bids_max,
            listen,
            out,
        } => emit(
            crate::bench_sched::run(runs, warmup, seconds, clients, bids_max, &listen)?,
            out,
        ),
        BenchCmd::Ledger {
            appends,
            batch,
            single_appends,
            log_size,
            proofs,
            verify_batch,
            dir,
            out,
        } => emit(
            crate::bench_ledger::run(
                appends,
                batch,
                single_appends,
                log_size,
                proofs,
                verify_batch,
                dir,
            )?,
            out,
        ),
        BenchCmd::Engine {
            model,
            input,
            runs,
            warmup,
            out,
        } => {
            let engine = match &model {
                Some(p) => TractEngine::load(p, 1 << 30)?,
                None => TractEngine::load_bytes(crate::demo::DIGITS_ONNX)?,
            };
            let inputs = match &input {
                Some(p) => rows(&Tensor::from_npy(&std::fs::read(p)?, 1 << 30)?)?,
                None => digits_test_set()?.0,
            };
            for i in 0..warmup {
                engine.run(vec![inputs[i % inputs.len()].clone()])?;
            }
            let mut samples = Vec::with_capacity(runs);
            for i in 0..runs {
                let x = inputs[i % inputs.len()].clone();
                let t0 = Instant::now();
                let out = engine.run(vec![x])?;
                samples.push(t0.elapsed());
                std::hint::black_box(out);
            }
            let info = engine.info();
            emit(
                json!({"bench": "engine", "engine": format!("{}-{}", info.engine, info.engine_version),
                       "threads": 1, "model": model.map_or("bundled digits.onnx".into(), |p| p.display().to_string()),
                       "inputs": inputs.len(), "latency": stats(samples)}),
                out,
            )
        }
        BenchCmd::Submit { runs, warmup, out } => {
            init_logging("warn", LogFormat::Text);
            let (images, _) = digits_test_set()?;
            let mut node = LocalNode::start(|c| c.inference.workers = 1)?;
            let client = Client::new(node.base.clone(), Duration::from_secs(60));
            let mut samples = Vec::with_capacity(runs);
            for i in 0..warmup + runs {
                let body = SubmitRequest::new("digits", images[i % images.len()].clone());
                let t0 = Instant::now();
                client.submit(&body)?;
                let dt = t0.elapsed();
                if i >= warmup {
                    samples.push(dt);
                }
            }
            node.stop()?;
            emit(
                json!({"bench": "submit", "path": "HTTP POST /v1/jobs on loopback, 1 client, ledger on (fsync per commit)",
                        "latency": stats(samples)}),
                out,
            )
        }
    }
}
