//! The node-facing commands: keys, config, start, model, submit, ledger.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use fab_inference::Tensor;
use fab_ledger::store::ReadOnlyStore;
use fab_ledger::{EntryBody, Keypair, SignedEntry};
use fab_node::config::LogFormat;
use fab_node::{Config, Node, datadir};
use serde_json::json;

use crate::Global;
use crate::client::{Client, api_base, error_message, verify_job_response};

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create the node key (ed25519, mode 0600) if there is none
    Init {
        #[arg(long)]
        json: bool,
    },
    /// Show the node's PeerId and key file
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// The control API's bearer token, `<data dir>/api.token` (mode 0600). While it exists, every
/// API request must carry `Authorization: Bearer <token>`; the CLI sends it by itself (from
/// the data dir, or FABNODE_API_TOKEN when the node runs elsewhere). A node listens beyond
/// loopback (api.listen) only with a token.
#[derive(Debug, Subcommand)]
pub enum ApiTokenCmd {
    /// Create the token if there is none (restart the node to use it)
    Init {
        /// Replace an existing token (clients holding the old one are refused)
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the token, for clients on other machines (FABNODE_API_TOKEN)
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the effective configuration (file, then FABNODE_* environment, then defaults)
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Address for the control API (overrides api.listen), e.g. 127.0.0.1:0 for any free port
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Log filter (overrides log.level), e.g. debug or info,fab_node=debug
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format (overrides log.format): text or json
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Mesh listen multiaddrs, comma-separated (overrides mesh.listen), e.g.
    /// /ip4/127.0.0.1/tcp/0
    #[arg(long, value_name = "ADDRS")]
    mesh_listen: Option<String>,
    /// A peer to dial at start (repeatable; overrides mesh.bootstrap), e.g.
    /// /ip4/10.0.0.5/tcp/4001/p2p/12D3KooW...
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Do not look for peers with mDNS (overrides mesh.mdns)
    #[arg(long)]
    no_mdns: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Register an ONNX file under a name (loads it once to check that it runs)
    Add {
        /// 1-64 letters, digits, '.', '_' or '-'
        name: String,
        /// Path to the .onnx file; the node reads it from here, so keep it in place
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List registered models
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Registered model name
    #[arg(long)]
    model: String,
    /// Input tensor: a .npy file, a JSON file ({"dtype":"f32","shape":[..],"data":[..]}), or
    /// `-` for either on standard input
    #[arg(long, value_name = "FILE|-")]
    input: String,
    /// Deadline for the job in milliseconds, submission to result; nodes that cannot meet it
    /// are not asked [default: limits.job_timeout_ms]
    #[arg(long, visible_alias = "timeout-ms", value_name = "MS")]
    deadline_ms: Option<u64>,
    /// Most the job may cost, in micro-units (a node's price per second times its estimate)
    #[arg(long, value_name = "MICROS")]
    max_cost: Option<u64>,
    /// Allowed tiers: device, edge, cloud (repeat or comma-separate) [default: all]
    #[arg(long, value_delimiter = ',', value_name = "TIER")]
    tier: Vec<String>,
    /// Allowed regions (repeat or comma-separate) [default: all]
    #[arg(long, value_delimiter = ',', value_name = "REGION")]
    region: Vec<String>,
    /// Labels the node must carry, all of them (repeat or comma-separate)
    #[arg(long, value_delimiter = ',', value_name = "LABEL")]
    label: Vec<String>,
    /// Run the job on this many distinct nodes and report whether their outputs agree
    #[arg(long, value_name = "K")]
    replicas: Option<u64>,
    /// Scoring weight for this job, e.g. `--weight cost=100 --weight time=0` (terms: time, cost,
    /// energy, cache, reliability, battery; the others keep the node's scheduler.weight_*)
    #[arg(long, value_name = "TERM=N")]
    weight: Vec<String>,
    /// Print every candidate: its bid or why it did not bid, the score breakdown, the winner
    #[arg(long)]
    explain: bool,
    /// Print the whole answer (outputs and receipt) as JSON
    #[arg(long)]
    json: bool,
    /// Also write each output tensor to DIR/<output name>.npy
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run the job on this peer (a peer id from `fabnode peers`), with no auction. The peer's
    /// signed receipt and outputs are checked against the job before they are shown.
    #[arg(long, value_name = "PEER_ID")]
    on: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Show this job's placement: every candidate, its bid or reason, the scores, the winner
    job: Option<String>,
    /// Print the API's answer as JSON
    #[arg(long)]
    json: bool,
    /// Most jobs to list
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

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

/// Largest input file the CLI reads.
const INPUT_FILE_BYTES_MAX: usize = 256 << 20;

/// A client for the node's API: its address and token from flags, environment or data dir.
fn api_client(g: &Global, config: &Config, timeout: Duration) -> Result<Client> {
    let dir = data_dir(g);
    Ok(
        Client::new(api_base(g.api.as_deref(), &dir, config.api.listen), timeout)
            .with_token(crate::client::api_token(&dir)?),
    )
}

fn data_dir(g: &Global) -> PathBuf {
    datadir::resolve(g.data_dir.as_deref())
}

/// Loads the config: `--config`, else `FABNODE_CONFIG`, else `<data dir>/config.toml` if present.
pub fn load_config(g: &Global, flags: &[(String, String)]) -> Result<Config> {
    let dir = data_dir(g);
    let file = g
        .config
        .clone()
        .or_else(|| {
            std::env::var_os("FABNODE_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| Some(datadir::config_path(&dir)).filter(|p| p.exists()));
    Ok(Config::load(file.as_deref(), std::env::vars(), flags)?)
}

pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn keys(g: &Global, cmd: KeysCmd) -> Result<ExitCode> {
    let dir = data_dir(g);
    let path = datadir::key_path(&dir);
    let (key, created, json) = match cmd {
        KeysCmd::Init { json } => {
            if path.exists() {
                (Keypair::load(&path)?, false, json)
            } else {
                datadir::create(&dir)
                    .with_context(|| format!("creating data dir {}", dir.display()))?;
                let key = Keypair::generate();
                key.save_new(&path)?;
                (key, true, json)
            }
        }
        KeysCmd::Show { json } => (Keypair::load(&path)?, false, json),
    };
    let peer_id = key.public().peer_id();
    if json {
        print_json(
            &json!({"peer_id": peer_id, "public_key": hex::encode(key.public().to_bytes()), "key_file": path, "created": created}),
        );
    } else {
        if created {
            println!("created a new node key");
        }
        println!("peer id   {peer_id}");
        println!("key file  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn api_token(g: &Global, cmd: ApiTokenCmd) -> Result<ExitCode> {
    use fab_node::api::token::{ApiToken, TokenError};
    let dir = data_dir(g);
    let path = datadir::api_token_path(&dir);
    let (token, created, json) = match cmd {
        ApiTokenCmd::Init { force, json } => match ApiToken::create(&dir, force) {
            Ok(t) => (t, true, json),
            Err(TokenError::Exists { .. }) => (
                ApiToken::load(&dir)?.context("the API token vanished while it was read")?,
                false,
                json,
            ),
            Err(e) => return Err(e.into()),
        },
        ApiTokenCmd::Show { json } => (
            ApiToken::load(&dir)?.with_context(|| {
                format!(
                    "no API token at {}; create one with `fabnode api-token init`",
                    path.display()
                )
            })?,
            false,
            json,
        ),
    };
    if json {
        print_json(&json!({"token": token.as_str(), "token_file": path, "created": created}));
    } else {
        if created {
            eprintln!(
                "created an API token; every API request now needs it (restart a running node)"
            );
        }
        println!("{}", token.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn config(g: &Global, cmd: ConfigCmd) -> Result<ExitCode> {
    let ConfigCmd::Show { json } = cmd;
    let c = load_config(g, &[])?;
    if json {
        print_json(&serde_json::to_value(&c)?);
    } else {
        print!("{}", c.to_toml());
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs the log subscriber on stderr.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Registers SIGTERM and SIGINT handlers now, so a signal that arrives at any point after
/// this (even before the node serves) stops it cleanly; the future completes on the first.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        }
    })
}

pub fn start(g: &Global, a: StartArgs) -> Result<ExitCode> {
    let mut flags = Vec::new();
    if let Some(v) = a.api_listen {
        flags.push(("api.listen".to_owned(), v));
    }
    if let Some(v) = a.log_level {
        flags.push(("log.level".to_owned(), v));
    }
    if let Some(v) = a.log_format {
        flags.push(("log.format".to_owned(), v));
    }
    if let Some(v) = a.mesh_listen {
        flags.push(("mesh.listen".to_owned(), v));
    }
    if !a.bootstrap.is_empty() {
        flags.push(("mesh.bootstrap".to_owned(), a.bootstrap.join(",")));
    }
    if a.no_mdns {
        flags.push(("mesh.mdns".to_owned(), "false".to_owned()));
    }
    let config = load_config(g, &flags)?;
    init_logging(&config.log.level, config.log.format);
    let dir = data_dir(g);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fab-rt")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = shutdown_signal()?;
        let node = Node::start(&dir, config).await?;
        eprintln!(
            "fabnode {} listening on http://{} (data dir {})",
            node.peer_id(),
            node.local_addr(),
            dir.display()
        );
        node.run(shutdown).await.context("serving the API")?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn model(g: &Global, cmd: ModelCmd) -> Result<ExitCode> {
    let dir = data_dir(g);
    match cmd {
        ModelCmd::Add { name, file, json } => {
            let config = load_config(g, &[])?;
            let (rec, info) =
                fab_node::models::add(&dir, &name, &file, config.inference.model_bytes_max)?;
            if json {
                print_json(&json!({"name": name, "record": rec, "facts": info}));
            } else {
                println!("model {name} registered");
                println!("  file    {}", rec.path.display());
                println!("  digest  {}", rec.digest);
                for f in &info.inputs {
                    println!("  input   {f}");
                }
                for f in &info.outputs {
                    println!("  output  {f}");
                }
            }
        }
        ModelCmd::List { json } => {
            let models = fab_node::models::list(&dir)?;
            if json {
                print_json(&serde_json::to_value(&models)?);
            } else if models.is_empty() {
                println!(
                    "no models registered; add one with `fabnode model add <name> <file.onnx>`"
                );
            } else {
                for (name, rec) in models {
                    println!(
                        "{name:<20} {}  {:>10} B  {}",
                        rec.digest.short(),
                        rec.bytes,
                        rec.path.display()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a tensor from a `.npy` or JSON file, or standard input.
pub fn read_tensor(source: &str) -> Result<Tensor> {
    let bytes = if source == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(INPUT_FILE_BYTES_MAX as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        buf
    } else {
        let meta = std::fs::metadata(source).with_context(|| format!("input file {source}"))?;
        if meta.len() > INPUT_FILE_BYTES_MAX as u64 {
            bail!(
                "input file {source} is {} bytes; the limit is {INPUT_FILE_BYTES_MAX}",
                meta.len()
            );
        }
        std::fs::read(source).with_context(|| format!("reading {source}"))?
    };
    let t = if bytes.starts_with(b"\x93NUMPY") {
        Tensor::from_npy(&bytes, INPUT_FILE_BYTES_MAX)
    } else {
        Tensor::from_json_bytes(&bytes, INPUT_FILE_BYTES_MAX)
    };
    t.with_context(|| format!("input {source} is not a valid .npy or tensor JSON file"))
}

fn describe_output(name: &str, t: &Tensor) -> String {
    let shape = format!("{:?}", t.shape());
    let mut line = format!("{name} {} {shape}", t.dtype());
    if t.shape().len() == 2 && t.shape()[0] >= 1 && t.shape()[1] > 1 {
        let tops: Vec<String> = (0..t.shape()[0].min(8))
            .filter_map(|r| t.argmax_row(r))
            .map(|i| i.to_string())
            .collect();
        line.push_str(&format!("  argmax per row: [{}]", tops.join(", ")));
    }
    let v = t.to_json_value();
    if let Some(data) = v["data"].as_array().filter(|d| d.len() <= 16) {
        let vals: Vec<String> = data
            .iter()
            .map(|x| {
                x.as_f64()
                    .map_or_else(|| x.to_string(), |f| format!("{f:.4}"))
            })
            .collect();
        line.push_str(&format!("\n    [{}]", vals.join(", ")));
    }
    line
}

pub fn submit(g: &Global, a: SubmitArgs) -> Result<ExitCode> {
    let config = load_config(g, &[])?;
    let input = read_tensor(&a.input)?;
    let client = api_client(g, &config, Duration::from_secs(300))?;
    let mut body = json!({"model": a.model, "input": input.to_json_value()});
    if let Some(t) = a.deadline_ms {
        body["deadline_ms"] = json!(t);
    }
    if let Some(peer) = &a.on {
        body["on"] = json!(peer);
    }
    if let Some(c) = a.max_cost {
        body["max_cost_micros"] = json!(c);
    }
    for (key, v) in [
        ("tiers", &a.tier),
        ("regions", &a.region),
        ("labels", &a.label),
    ] {
        if !v.is_empty() {
            body[key] = json!(v);
        }
    }
    if let Some(k) = a.replicas {
        body["replicas"] = json!(k);
    }
    if !a.weight.is_empty() {
        let mut w = serde_json::Map::new();
        for kv in &a.weight {
            let (k, v) = kv
                .split_once('=')
                .and_then(|(k, v)| Some((k.trim(), v.trim().parse::<u64>().ok()?)))
                .with_context(|| format!("--weight {kv:?}: expected TERM=N, e.g. cost=100"))?;
            w.insert(k.to_owned(), json!(v));
        }
        body["weights"] = serde_json::Value::Object(w);
    }
    if a.explain {
        body["explain"] = json!(true);
    }
    let (status, answer) = client.post("/v1/jobs", &body)?;
    if status != 200 {
        if a.json {
            print_json(&answer);
        } else if a.explain && answer["placement"].is_object() {
            print_placement(&answer["placement"]);
        }
        bail!("{}", error_message(status, &answer));
    }
    let input_name = answer["input_names"][0].as_str();
    let executor = answer["executor"].as_str().or(a.on.as_deref());
    let verified = verify_job_response(&answer, input_name, &input, executor)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, t) in &verified.outputs {
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let path = dir.join(format!("{safe}.npy"));
            std::fs::write(&path, t.to_npy())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if a.json {
        let mut out = answer.clone();
        out["receipt_verified"] = json!(true);
        print_json(&out);
        return Ok(ExitCode::SUCCESS);
    }
    let e = verified.entry.body();
    let EntryBody::Execution(r) = &e.body else {
        bail!("receipt is not an execution entry")
    };
    for (name, t) in &verified.outputs {
        println!("{}", describe_output(name, t));
    }
    if let Some((_, probs)) = verified
        .outputs
        .iter()
        .find(|(n, _)| n == "probabilities")
        .or(verified.outputs.last())
        && let Some(top) = probs.argmax_row(0)
    {
        println!("prediction: {top}");
    }
    println!("receipt (verified: signature, executor, input and output digests)");
    println!("  job        {}", verified.job_id);
    println!("  entry      #{} {}", e.seq, verified.entry.id());
    println!("  executor   {}", e.feed.peer_id());
    println!(
        "  model      {} {}",
        r.job.body().model,
        r.model_digest.short()
    );
    println!("  input      {}", r.input_digest.short());
    println!(
        "  output     {}",
        r.output_digest.map(|d| d.short()).unwrap_or_default()
    );
    println!(
        "  run        {} µs (queued {} µs, total {} µs, cpu {} µs)",
        r.timings.run_us, r.timings.queued_us, r.timings.total_us, r.metering.cpu_time_us
    );
    println!("  class      {}", r.determinism.class());
    println!("  signature  {}", hex::encode(verified.entry.signature()));
    let p = &answer["placement"];
    if p.is_object() {
        println!(
            "placed on {} in {} attempt(s){}{}",
            p["winners"]
                .as_array()
                .map(|w| w
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            p["attempts"],
            if p["fast_path"] == true {
                " (this node, no round trip)"
            } else {
                ""
            },
            p["decided_ms"]
                .as_f64()
                .map_or_else(String::new, |ms| format!(", decided in {ms:.2} ms"))
        );
    }
    if let Some(reps) = answer["replicas"].as_array() {
        println!(
            "replicas: {} ran it; outputs {}",
            reps.len(),
            if answer["replicas_agree"] == true {
                "agree"
            } else {
                "DIFFER"
            }
        );
        for rep in reps {
            println!(
                "  {}  entry #{}  output {}",
                rep["executor"].as_str().unwrap_or("?"),
                rep["seq"],
                rep["output_digest"]
                    .as_str()
                    .map_or("-", |d| &d[..d.len().min(16)])
            );
        }
    }
    if a.explain {
        print_placement(p);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every candidate of a placement, one line each, best first as the auction ranked them.
fn print_placement(p: &serde_json::Value) {
    let w = &p["weights"];
    println!(
        "placement: weights time {} cost {} energy {} cache {} reliability {} battery {}{}",
        w["time"],
        w["cost"],
        w["energy"],
        w["cache"],
        w["reliability"],
        w["battery"],
        if p["fast_path"] == true {
            "; fast path: this node scored best, no call for bids"
        } else {
            ""
        }
    );
    println!(
        "  {:<59} {:<10} {:>10} {:>8} {:>9}  {:>6}  score terms (time cost energy cache reliability battery)",
        "candidate", "standing", "completion", "cost", "energy", "total"
    );
    let winner = |c: &serde_json::Value| {
        p["winners"]
            .as_array()
            .is_some_and(|w| w.contains(&c["peer_id"]))
    };
    // Winners first, then by score, then those that did not bid.
    let mut cands: Vec<&serde_json::Value> =
        p["candidates"].as_array().into_iter().flatten().collect();
    cands.sort_by_key(|c| (!winner(c), std::cmp::Reverse(c["score"]["total"].as_u64())));
    for c in cands {
        let winner = winner(c);
        let who = format!(
            "{}{}",
            c["peer_id"].as_str().unwrap_or("?"),
            if c["local"] == true { " (self)" } else { "" }
        );
        let e = &c["estimate"];
        let s = &c["score"];
        let num =
            |v: &serde_json::Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
        let terms = if s.is_object() {
            format!(
                "{} {} {} {} {} {}",
                s["time"], s["cost"], s["energy"], s["cache"], s["reliability"], s["battery"]
            )
        } else {
            String::new()
        };
        println!(
            "{} {:<59} {:<10} {:>8}µs {:>8} {:>7}µJ  {:>6}  {terms}{}",
            if winner { "*" } else { " " },
            who,
            c["standing"].as_str().unwrap_or("?"),
            num(&e["completion_us"]),
            num(&e["cost_micros"]),
            num(&e["energy_uj"]),
            num(&s["total"]),
            c["reason"]
                .as_str()
                .map_or_else(String::new, |r| format!("  {r}"))
        );
    }
    match &p["outcome"] {
        v if v == "ok" => println!("outcome: ok after {} attempt(s)", p["attempts"]),
        v if v.is_object() => println!("outcome: failed: {}", v["failed"].as_str().unwrap_or("?")),
        _ => println!("outcome: running"),
    }
}

pub fn jobs(g: &Global, a: JobsArgs) -> Result<ExitCode> {
    if let Some(id) = &a.job {
        let v = api_get(g, &format!("/v1/jobs/{id}"))?;
        if a.json {
            print_json(&v);
        } else {
            job_line(&v);
            if v["placement"].is_object() {
                print_placement(&v["placement"]);
            } else {
                println!("(this node ran the job for a peer; the peer that placed it explains it)");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let v = api_get(g, &format!("/v1/jobs?limit={}", a.limit))?;
    if a.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no jobs placed by this node yet (fabnode submit places one)");
    }
    for j in &jobs {
        job_line(j);
    }
    Ok(ExitCode::SUCCESS)
}

fn job_line(j: &serde_json::Value) {
    let id = j["job_id"].as_str().unwrap_or("?");
    println!(
        "{}  {:<12} {:<6} {:>8.2} ms  {} attempt(s){}  on {}{}{}",
        &id[..id.len().min(16)],
        j["model"].as_str().unwrap_or("?"),
        j["status"].as_str().unwrap_or("?"),
        j["latency_ms"].as_f64().unwrap_or(0.0),
        j["attempts"],
        if j["fast_path"] == true {
            " (local)"
        } else {
            ""
        },
        j["executors"]
            .as_array()
            .map(|e| e
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(","))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into()),
        match j["replicas_agree"].as_bool() {
            Some(true) => "  replicas agree",
            Some(false) => "  replicas DIFFER",
            None => "",
        },
        j["error"]
            .as_str()
            .map_or_else(String::new, |e| format!("  error: {e}"))
    );
}

fn api_get(g: &Global, path: &str) -> Result<serde_json::Value> {
    let config = load_config(g, &[])?;
    let client = api_client(g, &config, Duration::from_secs(10))?;
    let (status, v) = client.get(path)?;
    if status != 200 {
        bail!("{}", error_message(status, &v));
    }
    Ok(v)
}

pub fn peers(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api_get(g, "/v1/peers")?;
    if json_out {
        print_json(&v);
    } else if v["mesh"] == false {
        println!("the mesh is disabled on this node (mesh.enabled = false)");
    } else if v["peers"].as_array().is_none_or(|p| p.is_empty()) {
        println!("no peers connected");
    } else {
        for p in v["peers"].as_array().into_iter().flatten() {
            let rtt = p["rtt_ms"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2} ms"));
            let score = p["score"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
            println!(
                "{}  {}  rtt {rtt}  score {score}  {}  {} protocols",
                p["peer_id"].as_str().unwrap_or("?"),
                p["transport"].as_str().unwrap_or("?"),
                p["agent_version"].as_str().unwrap_or("?"),
                p["protocols"].as_array().map_or(0, |a| a.len())
            );
            for a in p["addresses"].as_array().into_iter().flatten() {
                println!("    {}", a.as_str().unwrap_or("?"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn telemetry(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api_get(g, "/v1/telemetry")?;
    if json_out {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |who: &str, t: &serde_json::Value| {
        let labels: Vec<&str> = t["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str())
            .collect();
        let temp = t["host"]["temp_max_mc"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |c| format!("{:.1} °C", c / 1000.0));
        let battery = t["battery_permille"]
            .as_u64()
            .map_or_else(|| "mains".to_owned(), |b| format!("battery {}%", b / 10));
        println!(
            "{who}  {} {}  [{}]  queue {}/{} workers  speed {}‰  load {}‰ of {} cores  {} MiB free  {temp}  {battery}  {} model(s) measured  {:.1} s old",
            t["tier"].as_str().unwrap_or("?"),
            t["region"]
                .as_str()
                .filter(|r| !r.is_empty())
                .unwrap_or("-"),
            labels.join(","),
            t["queue_depth"],
            t["workers"],
            t["speed_permille"],
            t["host"]["load_permille"],
            t["host"]["cores"],
            t["host"]["mem_free_mib"],
            t["models"].as_object().map_or(0, |m| m.len()),
            t["age_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
    };
    match v["self"].is_null() {
        true => println!("self  (no report yet: the mesh is off, or the node just started)"),
        false => line("self", &v["self"]),
    }
    for p in v["peers"].as_array().into_iter().flatten() {
        line(p["peer_id"].as_str().unwrap_or("?"), p);
    }
    Ok(ExitCode::SUCCESS)
}

fn heads(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api_get(g, "/v1/ledger/heads")?;
    if json_out {
        print_json(&v);
    } else {
        for f in v["feeds"].as_array().into_iter().flatten() {
            let who = if f["own"] == true { "own " } else { "peer" };
            let trusted = f["trusted_size"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |s| s.to_string());
            let root = f["trusted_root"]
                .as_str()
                .map_or_else(String::new, |r| format!(" root {}", &r[..r.len().min(16)]));
            let lag = f["lag_entries"]
                .as_u64()
                .map_or_else(String::new, |l| format!("  lag {l}"));
            let age = f["last_entry_age_ms"]
                .as_u64()
                .map_or_else(String::new, |a| {
                    format!("  last entry {:.1} s ago", a as f64 / 1e3)
                });
            println!(
                "{who}  {}  size {}  trusted checkpoint {trusted}{root}{lag}{age}",
                f["feed"].as_str().unwrap_or("?"),
                f["size"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(g: &Global, json_out: bool) -> Result<ExitCode> {
    let config = load_config(g, &[])?;
    let client = api_client(g, &config, Duration::from_secs(10))?;
    let (status, v) = client.get("/v1/node")?;
    if status != 200 {
        bail!("{}", error_message(status, &v));
    }
    if json_out {
        print_json(&v);
    } else {
        println!("peer id        {}", v["peer_id"].as_str().unwrap_or("?"));
        println!("version        {}", v["version"].as_str().unwrap_or("?"));
        println!("uptime         {} s", v["uptime_s"]);
        println!(
            "ledger         {} entries, head {}",
            v["ledger"]["entries"],
            v["ledger"]["head"].as_str().unwrap_or("-")
        );
        println!(
            "workers        {} (queue {})",
            v["inference"]["workers"], v["inference"]["queue_depth"]
        );
        println!("models loaded  {}", v["models_loaded"]);
        let mesh = &v["mesh"];
        if mesh["enabled"] == true {
            println!(
                "mesh           shard {} of {}, {} listen address(es)",
                mesh["shard"],
                mesh["shards"],
                mesh["listen"].as_array().map_or(0, Vec::len)
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
