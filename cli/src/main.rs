//! `fabnode`: one binary for every device of the mesh.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod audit;
mod bench;
mod bench_ledger;
mod bench_mesh;
mod bench_sched;
mod client;
mod cmd;
mod demo;
mod procs;
mod runtime_test;
mod scenario;
mod sim_svg;
mod simulate;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// fabnode: run inference jobs and keep a signed, verifiable record of every execution.
///
/// A node keeps its data in one directory: its key, its ledger, its registered models.
/// Start one with `fabnode keys init && fabnode start`, register a model with
/// `fabnode model add`, and send it work with `fabnode submit`. `fabnode demo` does all of
/// this on a temporary directory with a bundled model.
#[derive(Debug, Parser)]
#[command(
    name = "fabnode",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The node's data dir [default: $FABNODE_DATA_DIR, else $XDG_DATA_HOME/fabnode, else
    /// ~/.local/share/fabnode]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Config file [default: $FABNODE_CONFIG, else <data dir>/config.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control API of the node to talk to, e.g. 127.0.0.1:7650 [default: $FABNODE_API, else
    /// the address the node in the data dir is listening on]
    #[arg(long, global = true, value_name = "ADDR")]
    api: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or show this node's identity key
    #[command(subcommand)]
    Keys(cmd::KeysCmd),
    /// Create or show the control API's bearer token (needed to listen beyond loopback)
    #[command(subcommand)]
    ApiToken(cmd::ApiTokenCmd),
    /// Show the effective configuration
    #[command(subcommand)]
    Config(cmd::ConfigCmd),
    /// Run the node in the foreground until SIGINT or SIGTERM
    Start(cmd::StartArgs),
    /// Register and list models
    #[command(subcommand)]
    Model(cmd::ModelCmd),
    /// Run a job where it runs best right now (the mesh bids for it; this node when it is best)
    /// and print its output, signed receipt and placement
    Submit(cmd::SubmitArgs),
    /// Jobs this node placed: where they ran, attempts, latency; with an id, why they ran there
    Jobs(cmd::JobsArgs),
    /// Ask the running node for its identity, ledger head and loaded models
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The running node's mesh peers: id, transport, RTT, gossip score, agent, addresses
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// What this node and its peers publish about themselves (signed telemetry): tier, region,
    /// labels, queue, speed, load, memory, temperature, battery, measured model latencies
    Telemetry {
        #[arg(long)]
        json: bool,
    },
    /// Read and verify the node's ledger (works while the node runs)
    #[command(subcommand)]
    Ledger(cmd::LedgerCmd),
    /// Start a node on a temporary data dir, classify real held-out digits through its API, and
    /// verify the ledger it wrote
    Demo(demo::DemoArgs),
    /// Simulate a fleet in virtual time: jobs placed by the real scheduler on Pi-, Jetson-,
    /// laptop- and cloud-class nodes, ledgered and replicated by the real cores, through loss,
    /// a partition and crashes, with invariants checked (the same seed replays the same run)
    Simulate(simulate::SimulateArgs),
    /// Run curated simulator scenarios (fault mixes x seeds, and planted bugs the invariants
    /// must catch) and print a pass/fail table; exits non-zero on any unexpected result
    Test(runtime_test::TestArgs),
    /// Measure engine and end-to-end latency, writing JSON
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

fn main() -> std::process::ExitCode {
    // Like other Unix tools, end quietly when a reader such as `head` closes the pipe, instead
    // of panicking on the failed write.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys(c) => cmd::keys(&cli.global, c),
        Command::ApiToken(c) => cmd::api_token(&cli.global, c),
        Command::Config(c) => cmd::config(&cli.global, c),
        Command::Start(a) => cmd::start(&cli.global, a),
        Command::Model(c) => cmd::model(&cli.global, c),
        Command::Submit(a) => cmd::submit(&cli.global, a),
        Command::Jobs(a) => cmd::jobs(&cli.global, a),
        Command::Status { json } => cmd::status(&cli.global, json),
        Command::Peers { json } => cmd::peers(&cli.global, json),
        Command::Telemetry { json } => cmd::telemetry(&cli.global, json),
        Command::Ledger(c) => cmd::ledger(&cli.global, c),
        Command::Demo(a) => demo::run(a),
        Command::Bench(c) => bench::run(&cli.global, c),
        Command::Simulate(a) => simulate::run_cmd(a),
        Command::Test(a) => runtime_test::run_cmd(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
