//! `fabnode simulate`: the real scheduler and replication cores across a simulated mesh of
//! heterogeneous devices, in virtual time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use fab_sims::sim::{Config, Progress, Report, run, run_watched};
use serde_json::json;

use crate::scenario::{Faults, Scenario};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A scenario file (TOML): any of the settings below, plus the fleet's device classes,
    /// access links and models (docs/SIMULATOR.md). Flags given on the command line win
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Simulated nodes [default: 50]
    #[arg(long)]
    peers: Option<usize>,
    /// Seed of every random choice; the same seed replays the same run [default: 1]
    #[arg(long)]
    seed: Option<u64>,
    /// Virtual time with faults (loss, a partition, crashes) and submissions: seconds, or
    /// with a unit (90s, 10m, 1h) [default: 10]
    #[arg(long, value_parser = parse_secs)]
    duration: Option<u64>,
    /// Virtual time after the faults heal, for the mesh to converge: seconds, or with a unit
    /// [default: 20]
    #[arg(long, value_parser = parse_secs)]
    recovery: Option<u64>,
    /// Jobs submitted per second across the mesh during the fault phase, at random nodes (80 %
    /// digits, 20 % the 220-ms spin model; 10 % cloud-only, 10 % on 2 replicas); every run is
    /// ledgered on its executor's feed [default: 20]
    #[arg(long)]
    jobs_per_sec: Option<f64>,
    /// How the job rate varies: poisson (steady), bursts (x5 for 1 s in every 10 s), diurnal
    /// (a day compressed into the fault phase) [default: poisson]
    #[arg(long, value_parser = ["poisson", "bursts", "diurnal"])]
    arrivals: Option<String>,
    /// Extra ledger entries appended per second across the mesh (replication load without
    /// jobs) [default: 0]
    #[arg(long)]
    appends_per_sec: Option<u64>,
    /// Probability that a gossip message is lost during the fault phase [default: 0.05]
    #[arg(long)]
    loss: Option<f64>,
    /// No partition (by default the mesh is cut in two halves for the middle third)
    #[arg(long)]
    no_partition: bool,
    /// Nodes crashed (and restarted a second later) during the fault phase [default: 2]
    #[arg(long)]
    crashes: Option<usize>,
    /// Probability that a gossip message arrives twice during the fault phase [default: 0.01]
    #[arg(long)]
    duplicate: Option<f64>,
    /// Nodes whose links clog (1-3 s extra delay) for the middle third of the fault phase
    /// [default: 1]
    #[arg(long)]
    clogged: Option<usize>,
    /// Nodes that leave the mesh for good during the fault phase [default: 0]
    #[arg(long)]
    leaves: Option<usize>,
    /// Nodes that join during the fault phase (and must catch up on every feed) [default: 0]
    #[arg(long)]
    joins: Option<usize>,
    /// Byzantine nodes that now and then sign two versions of an entry and send one to half
    /// their peers, the other to the rest; honest nodes must notice [default: 0]
    #[arg(long)]
    equivocators: Option<usize>,
    /// Byzantine nodes that send forged entries (re-signed with the wrong key) and garbage;
    /// honest nodes must reject all of it [default: 0]
    #[arg(long)]
    forgers: Option<usize>,
    /// Shards of the mesh (the nodes' mesh.shards): each node hears telemetry from, places jobs
    /// among and replicates the ledgers of its own shard [default: recommended for --peers: 1
    /// up to 64 nodes, then one per 32 nodes]
    #[arg(long)]
    shards: Option<u64>,
    /// The nodes' telemetry.every_ms: how often telemetry is considered for publication
    /// [default: 2000]
    #[arg(long, value_name = "MS")]
    telemetry_every_ms: Option<u64>,
    /// The nodes' telemetry.stale_ms: reports older than this are dropped; an unchanged
    /// report is refreshed every third of it [default: 15000]
    #[arg(long, value_name = "MS")]
    telemetry_stale_ms: Option<u64>,
    /// Run twice and require byte-identical reports
    #[arg(long)]
    check_determinism: bool,
    /// Also write the report as JSON here
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also draw the latency CDF, runs per node and replication progress as SVG here
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// A progress line on standard error when it is a terminal, redrawn at most 4 times a
/// second and cleared at the end (pipes and logs get none).
fn progress_line(t0: Instant) -> impl FnMut(Progress) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut shown = Instant::now();
    move |p: Progress| {
        if !tty || shown.elapsed() < Duration::from_millis(250) {
            return;
        }
        shown = Instant::now();
        let done = p.now.as_secs_f64() / p.end.as_secs_f64().max(1e-9);
        let bar = (done * 30.0) as usize;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:.1} of {:.0} s virtual, {:.1} M events, {:.0} s wall\x1b[K",
            "#".repeat(bar.min(30)),
            " ".repeat(30 - bar.min(30)),
            p.now.as_secs_f64(),
            p.end.as_secs_f64(),
            p.events as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        );
        let _ = err.flush();
    }
}

/// Seconds from `600`, `600s`, `10m` or `1h`.
fn parse_secs(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{v:?}: expected seconds, or a number with s, m or h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => return Err(format!("{v:?}: unknown unit {other:?} (s, m or h)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{v:?} is too long"))
}

/// The p50 and p99 of the nodes' catch-up times after the faults healed, seconds.
fn caught_up(r: &Report) -> [f64; 2] {
    let t = &r.caught_up_us;
    let q = |p: usize| {
        t.get((t.len() * p / 100).min(t.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1e6)
    };
    [q(50), q(99)]
}

/// Simulated node-minutes per second of wall time.
fn peer_minutes_per_s(c: &Config, wall: Duration) -> f64 {
    c.peers as f64 * (c.fault_phase + c.recovery).as_secs_f64()
        / 60.0
        / wall.as_secs_f64().max(1e-9)
}

/// This process's peak resident memory (the simulator's), KiB.
fn peak_rss_kib() -> u64 {
    crate::bench_mesh::status_kib(std::process::id(), "VmHWM:")
}

/// The settings of a run: defaults, then the scenario file, then the flags.
pub fn resolve(a: &SimulateArgs) -> Result<Config> {
    let mut c = Config {
        peers: 50,
        jobs_per_s: 20.0,
        appends_per_s: 0,
        ..Config::default()
    };
    if let Some(path) = &a.scenario {
        crate::scenario::apply(path, &mut c)?;
    }
    // The flags given on the command line, applied as one more layer of settings.
    let flags = Scenario {
        peers: a.peers,
        seed: a.seed,
        duration_s: a.duration,
        recovery_s: a.recovery,
        jobs_per_sec: a.jobs_per_sec,
        appends_per_sec: a.appends_per_sec,
        shards: a.shards,
        telemetry_every_ms: a.telemetry_every_ms,
        telemetry_stale_ms: a.telemetry_stale_ms,
        faults: Some(Faults {
            loss: a.loss,
            duplicate: a.duplicate,
            partition: a.no_partition.then_some(false),
            crashes: a.crashes,
            clogged: a.clogged,
            leaves: a.leaves,
            joins: a.joins,
            equivocators: a.equivocators,
            forgers: a.forgers,
        }),
        ..Scenario::default()
    };
    crate::scenario::overlay(flags, &mut c)?;
    // A named shape; the diurnal one spans the fault phase as finally set.
    if let Some(v) = &a.arrivals {
        c.arrivals = crate::scenario::arrivals(v, c.fault_phase)?;
    }
    c.check()
        .map_err(|e| anyhow::anyhow!("invalid simulation settings: {e}"))?;
    Ok(c)
}

fn report_json(c: &Config, r: &Report, wall: Duration) -> serde_json::Value {
    let caught = caught_up(r);
    json!({
        "seed": c.seed, "peers": c.peers, "shards": c.shards().count(),
        "telemetry_every_ms": c.telemetry_every.as_millis() as u64,
        "telemetry_stale_ms": c.telemetry_stale.as_millis() as u64, "fault_phase_s": c.fault_phase.as_secs_f64(),
        "recovery_s": c.recovery.as_secs_f64(), "appends_per_s": c.appends_per_s, "loss": c.loss,
        "partition": c.partition, "crashes": c.crashes, "jobs_per_s": c.jobs_per_s,
        "duplicate": c.duplicate, "clogged": c.clogged, "leaves": c.leaves, "joins": c.joins,
        "equivocators": c.equivocators, "forks": r.forks, "forks_noticed": r.forks_noticed, "forks_proven": r.forks_proven,
        "forgers": c.forgers, "forgeries": r.forgeries, "forgeries_rejected": r.forgeries_rejected,
        "jobs": {
            "submitted": r.jobs.submitted, "completed": r.jobs.completed, "failed": r.jobs.failed,
            "failures": r.jobs.failures,
            "latency_ms": {"p50": r.jobs.latency_us[0] as f64 / 1e3, "p95": r.jobs.latency_us[1] as f64 / 1e3, "p99": r.jobs.latency_us[2] as f64 / 1e3},
            "failovers": r.jobs.failovers, "runs": r.jobs.executions, "runs_by_device": r.jobs.by_profile,
            "gini": r.jobs.gini_permille as f64 / 1e3, "energy_j": r.jobs.energy_mj as f64 / 1e3,
        },
        "messages_per_node": r.messages as f64 / c.peers as f64,
        "bytes_per_node": r.bytes as f64 / c.peers as f64,
        "entries": r.entries, "messages": r.messages, "bytes": r.bytes, "lost": r.lost,
        "events": r.events, "converged_after_s": r.converged_after.map(|d| d.as_secs_f64()),
        "caught_up_s": {"nodes": r.caught_up_us.len(), "p50": caught[0], "p99": caught[1]},
        "violations": r.violations, "trace": hex::encode(r.trace),
        "wall_s": wall.as_secs_f64(),
        "events_per_s": r.events as f64 / wall.as_secs_f64().max(1e-9),
        "peer_minutes_per_s": peer_minutes_per_s(c, wall),
        "peak_rss_kib": peak_rss_kib(),
        "progress": r.progress, "latencies_us": r.jobs.latencies_us,
    })
}

pub fn run_cmd(a: SimulateArgs) -> Result<ExitCode> {
    let config = resolve(&a)?;
    println!(
        "simulate: {} nodes, seed {}, {} s of faults (loss {}, duplicates {}, partition {}, {} crashes, {} clogged, {} leave, {} join) then {} s of recovery, {} jobs/s ({}), {} appends/s",
        config.peers,
        config.seed,
        config.fault_phase.as_secs(),
        config.loss,
        config.duplicate,
        if config.partition {
            "middle third"
        } else {
            "none"
        },
        config.crashes,
        config.clogged,
        config.leaves,
        config.joins,
        config.recovery.as_secs(),
        config.jobs_per_s,
        crate::scenario::arrivals_name(&config.arrivals),
        config.appends_per_s
    );
    let shards = config.shards();
    println!(
        "mesh:       {} shard(s) of about {} nodes{}; telemetry considered every {} ms, stale after {} ms",
        shards.count(),
        config.peers.div_ceil(usize::from(shards.count())),
        if config.shards.is_none() {
            " (recommended for this many nodes)"
        } else {
            ""
        },
        config.telemetry_every.as_millis(),
        config.telemetry_stale.as_millis()
    );
    let fleet: Vec<String> = config
        .profiles
        .iter()
        .map(|p| {
            format!(
                "{} {}‰ ({}, speed {}‰, {} workers, {} W, price {}/s{})",
                p.name,
                p.share_permille,
                p.tier.name(),
                p.speed_permille,
                p.workers,
                p.power_mw / 1000,
                p.price_per_s_micros,
                if p.battery_mj.is_some() {
                    ", half on battery"
                } else {
                    ""
                }
            )
        })
        .collect();
    println!("fleet:      {}", fleet.join("; "));
    let links: Vec<String> = config
        .links
        .iter()
        .map(|l| {
            format!(
                "{} {}-{} µs one way, {} Mbit/s",
                l.name,
                l.one_way_us.0,
                l.one_way_us.1,
                l.bytes_per_ms * 8 / 1000
            )
        })
        .collect();
    println!(
        "links:      {}; between regions +{}-{} µs",
        links.join("; "),
        fab_sims::fleet::WAN_ONE_WAY_US.0,
        fab_sims::fleet::WAN_ONE_WAY_US.1
    );
    let models: Vec<String> = config
        .models
        .iter()
        .map(|m| {
            format!(
                "{} {}‰ ({} µs at speed 1000, deadline {} s, {} MiB)",
                m.name,
                m.share_permille,
                m.reference_latency_us,
                m.deadline_us / 1_000_000,
                m.mem_mib
            )
        })
        .collect();
    println!("models:     {}", models.join("; "));
    let t0 = Instant::now();
    let report = run_watched(&config, &mut progress_line(t0));
    let wall = t0.elapsed();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r\x1b[K");
    }
    if a.check_determinism {
        let again = run(&config);
        if again != report {
            println!(
                "determinism: FAILED (two runs of seed {} differ)",
                config.seed
            );
            return Ok(ExitCode::FAILURE);
        }
        println!("determinism: two runs gave identical reports");
    }
    let j = &report.jobs;
    if config.jobs_per_s > 0.0 {
        println!(
            "jobs:       {} submitted, {} completed, {} failed; {} needed a failover",
            j.submitted, j.completed, j.failed, j.failovers
        );
        for (reason, n) in &j.failures {
            println!("            {n} failed: {reason}");
        }
        println!(
            "latency:    p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms (submission to result)",
            j.latency_us[0] as f64 / 1e3,
            j.latency_us[1] as f64 / 1e3,
            j.latency_us[2] as f64 / 1e3
        );
        let spread: Vec<String> = j
            .by_profile
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        println!(
            "placement:  {} runs: {}; Gini of runs per node {:.2}; energy {:.1} J",
            j.executions,
            spread.join(", "),
            j.gini_permille as f64 / 1e3,
            j.energy_mj as f64 / 1e3
        );
    }
    println!(
        "ledger:     {} entries appended; {} messages, {:.1} MB, {} lost ({:.0} messages, {:.1} kB per node)",
        report.entries,
        report.messages,
        report.bytes as f64 / 1e6,
        report.lost,
        report.messages as f64 / config.peers as f64,
        report.bytes as f64 / config.peers as f64 / 1e3
    );
    if config.forgers > 0 {
        println!(
            "forgers:    {} node(s) sent {} forged or malformed messages; {} deliveries rejected, none stored",
            config.forgers, report.forgeries, report.forgeries_rejected
        );
    }
    if config.equivocators > 0 {
        println!(
            "byzantine:  {} equivocating node(s) signed {} forks; honest nodes reported {} conflicts about them and kept {} pieces of evidence that verify",
            config.equivocators, report.forks, report.forks_noticed, report.forks_proven
        );
    }
    let [p50, p99] = caught_up(&report);
    match report.converged_after {
        Some(d) => println!(
            "converged:  every node holds every feed{} {:.2} s (virtual) after the faults healed; each node caught up after p50 {p50:.2} s, p99 {p99:.2} s",
            if shards.count() > 1 {
                " of its shard"
            } else {
                ""
            },
            d.as_secs_f64(),
        ),
        None => println!(
            "converged:  no ({} nodes caught up: p50 {p50:.2} s, p99 {p99:.2} s after the faults healed)",
            report.caught_up_us.len()
        ),
    }
    println!(
        "engine:     {} events in {:.2} s wall ({:.0} events/s; {:.0}x real time; {:.0} peers x minutes per s); peak memory {:.0} MiB; trace {}",
        report.events,
        wall.as_secs_f64(),
        report.events as f64 / wall.as_secs_f64().max(1e-9),
        (config.fault_phase + config.recovery).as_secs_f64() / wall.as_secs_f64().max(1e-9),
        peer_minutes_per_s(&config, wall),
        peak_rss_kib() as f64 / 1024.0,
        &hex::encode(report.trace)[..16]
    );
    if let Some(path) = &a.svg {
        std::fs::write(path, crate::sim_svg::render(&config, &report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report_json(&config, &report, wall))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if report.violations.is_empty() {
        println!("invariants: all hold");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("invariants: {} violated", report.violations.len());
        for v in &report.violations {
            println!("  - {v}");
        }
        println!("replay:     {}", replay(&config, a.scenario.as_deref()));
        Ok(ExitCode::FAILURE)
    }
}

/// The command that replays a run: every setting as a flag, after the scenario file when one
/// set the fleet.
pub fn replay(c: &Config, scenario: Option<&std::path::Path>) -> String {
    format!(
        "fabnode simulate{} --peers {} --seed {} --duration {} --recovery {} --jobs-per-sec {}{} --appends-per-sec {} --loss {} --duplicate {} --crashes {} --clogged {} --leaves {} --joins {} --equivocators {} --forgers {} --shards {} --telemetry-every-ms {} --telemetry-stale-ms {}{}",
        scenario.map_or(String::new(), |p| format!(" --scenario {}", p.display())),
        c.peers,
        c.seed,
        c.fault_phase.as_secs(),
        c.recovery.as_secs(),
        c.jobs_per_s,
        // A scenario file's arrival shape may not be one --arrivals can name.
        if scenario.is_some() {
            String::new()
        } else {
            format!(
                " --arrivals {}",
                crate::scenario::arrivals_name(&c.arrivals)
            )
        },
        c.appends_per_s,
        c.loss,
        c.duplicate,
        c.crashes,
        c.clogged,
        c.leaves,
        c.joins,
        c.equivocators,
        c.forgers,
        c.shards().count(),
        c.telemetry_every.as_millis(),
        c.telemetry_stale.as_millis(),
        if c.partition { "" } else { " --no-partition" }
    )
}
