//! `fabnode test --target runtime`: curated simulator scenarios (fault mixes × seeds), each run
//! checked by the simulator's invariants, with planted bugs that the invariants must catch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use fab_sims::sim::{Config, Planted, Report, run};
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Target {
    /// The protocol cores in the deterministic simulator
    Runtime,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// What to test
    #[arg(long, value_enum, default_value = "runtime")]
    target: Target,
    /// Seeds per scenario
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// The first seed; scenario k runs seeds first-seed .. first-seed + seeds
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Simulated nodes per run
    #[arg(long, default_value_t = 20)]
    peers: usize,
    /// Start no new run after this many seconds; what ran is reported, and scenarios not
    /// reached are listed as skipped
    #[arg(long, value_name = "SECONDS")]
    budget: Option<u64>,
    /// Also write the results as JSON here
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// What a scenario must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Every seed keeps every invariant.
    Hold,
    /// A planted bug: at least one seed must break an invariant.
    Caught,
}

struct Scenario {
    name: &'static str,
    what: &'static str,
    expect: Expect,
    config: fn(Config) -> Config,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "calm",
            what: "no faults, 40 jobs/s",
            expect: Expect::Hold,
            config: |c| Config {
                loss: 0.0,
                duplicate: 0.0,
                partition: false,
                crashes: 0,
                clogged: 0,
                jobs_per_s: 40.0,
                ..c
            },
        },
        Scenario {
            name: "lossy",
            what: "20 % gossip loss, 40 jobs/s",
            expect: Expect::Hold,
            config: |c| Config {
                loss: 0.2,
                partition: false,
                crashes: 0,
                jobs_per_s: 40.0,
                ..c
            },
        },
        Scenario {
            name: "partition",
            what: "halves cut for the middle third, 2 % loss",
            expect: Expect::Hold,
            config: |c| Config {
                loss: 0.02,
                partition: true,
                crashes: 0,
                jobs_per_s: 40.0,
                ..c
            },
        },
        Scenario {
            name: "crashes",
            what: "4 crashes (unsynced replica writes lost), 40 jobs/s",
            expect: Expect::Hold,
            config: |c| Config {
                loss: 0.0,
                partition: false,
                crashes: 4,
                jobs_per_s: 40.0,
                ..c
            },
        },
        Scenario {
            name: "storm",
            what: "15 % loss, 5 % duplicates, a partition, 4 crashes, 2 clogged, 60 jobs/s",
            expect: Expect::Hold,
            config: |c| Config {
                loss: 0.15,
                duplicate: 0.05,
                partition: true,
                crashes: 4,
                clogged: 2,
                jobs_per_s: 60.0,
                ..c
            },
        },
        Scenario {
            name: "churn",
            what: "3 nodes leave for good, 3 join and catch up, 5 % loss, 40 jobs/s",
            expect: Expect::Hold,
            config: |c| Config {
                leaves: 3,
                joins: 3,
                jobs_per_s: 40.0,
                ..c
            },
        },
        Scenario {
            name: "byzantine",
            what: "a node forks its feed, another forges gossip; honest nodes notice and reject",
            expect: Expect::Hold,
            config: |c| Config {
                equivocators: 1,
                forgers: 1,
                jobs_per_s: 40.0,
                ..c
            },
        },
        Scenario {
            name: "ledger-only",
            what: "no jobs, 100 appends/s, 5 % loss, a partition, 2 crashes",
            expect: Expect::Hold,
            config: |c| Config {
                jobs_per_s: 0.0,
                appends_per_s: 100,
                ..c
            },
        },
        Scenario {
            name: "sharded",
            what: "8x the nodes in 4 shards (each its own mesh): a partition, 4 crashes, churn, 80 jobs/s",
            expect: Expect::Hold,
            config: |c| Config {
                peers: c.peers * 8,
                shards: fab_sims::sim::Shards::new(4).ok(),
                crashes: 4,
                leaves: 2,
                joins: 2,
                jobs_per_s: 80.0,
                ..c
            },
        },
        Scenario {
            name: "planted: stale restart",
            what: "a restarted node keeps its pre-crash replication state",
            expect: Expect::Caught,
            config: |c| Config {
                planted: Planted::StaleRestart,
                appends_per_s: 100,
                jobs_per_s: 0.0,
                crashes: 3,
                ..c
            },
        },
        Scenario {
            name: "planted: exec without policy",
            what: "an executor runs awarded jobs without asking its policy",
            expect: Expect::Caught,
            config: |c| Config {
                planted: Planted::ExecWithoutPolicy,
                jobs_per_s: 40.0,
                ..c
            },
        },
    ]
}

struct Outcome {
    name: &'static str,
    what: &'static str,
    expect: Expect,
    runs: Vec<(Config, Report)>,
    deterministic: bool,
    skipped: bool,
}

impl Outcome {
    fn broken(&self) -> usize {
        self.runs
            .iter()
            .filter(|(_, r)| !r.violations.is_empty())
            .count()
    }

    fn ok(&self) -> bool {
        if self.skipped {
            return true;
        }
        self.deterministic
            && match self.expect {
                Expect::Hold => self.broken() == 0,
                Expect::Caught => self.broken() > 0,
            }
    }
}

pub fn run_cmd(a: TestArgs) -> Result<ExitCode> {
    let Target::Runtime = a.target;
    let started = Instant::now();
    let budget = a.budget.map(Duration::from_secs);
    let base = Config {
        peers: a.peers.max(2),
        appends_per_s: 0,
        fault_phase: Duration::from_secs(6),
        recovery: Duration::from_secs(20),
        ..Config::default()
    };
    println!(
        "runtime: {} scenarios x {} seeds from {}, {} nodes each (6 s of faults, 20 s of recovery); the first seed of each runs twice to check determinism",
        scenarios().len(),
        a.seeds,
        a.first_seed,
        base.peers
    );
    let mut outcomes = Vec::new();
    for s in scenarios() {
        let mut o = Outcome {
            name: s.name,
            what: s.what,
            expect: s.expect,
            runs: Vec::new(),
            deterministic: true,
            skipped: false,
        };
        for seed in a.first_seed..a.first_seed + a.seeds.max(1) {
            if budget.is_some_and(|b| started.elapsed() >= b) {
                o.skipped = o.runs.is_empty();
                break;
            }
            let config = (s.config)(Config {
                seed,
                ..base.clone()
            });
            let report = run(&config);
            if seed == a.first_seed && run(&config) != report {
                o.deterministic = false;
            }
            o.runs.push((config, report));
        }
        outcomes.push(o);
    }
    println!(
        "\n{:<30} {:>5} {:>9} {:>7} {:>8} {:>10}  result",
        "scenario", "seeds", "jobs", "failed", "p99 ms", "converged"
    );
    for o in &outcomes {
        let jobs: u64 = o.runs.iter().map(|(_, r)| r.jobs.submitted).sum();
        let failed: u64 = o.runs.iter().map(|(_, r)| r.jobs.failed).sum();
        let p99 = o
            .runs
            .iter()
            .map(|(_, r)| r.jobs.latency_us[2])
            .max()
            .unwrap_or(0);
        let conv = o
            .runs
            .iter()
            .filter_map(|(_, r)| r.converged_after)
            .max()
            .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        let result = if o.skipped {
            "skipped (budget)".to_owned()
        } else if !o.deterministic {
            "FAIL: two runs of one seed differ".to_owned()
        } else {
            match (o.expect, o.broken()) {
                (Expect::Hold, 0) => "pass".to_owned(),
                (Expect::Hold, n) => format!("FAIL: {n} seed(s) broke an invariant"),
                (Expect::Caught, 0) => "FAIL: the planted bug went unnoticed".to_owned(),
                (Expect::Caught, n) => format!("pass: caught on {n} of {} seeds", o.runs.len()),
            }
        };
        println!(
            "{:<30} {:>5} {:>9} {:>7} {:>8.1} {:>10}  {result}",
            o.name,
            o.runs.len(),
            jobs,
            failed,
            p99 as f64 / 1e3,
            conv
        );
    }
    let failing: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    for o in &failing {
        println!("\n{} ({}):", o.name, o.what);
        for (c, r) in o.runs.iter().filter(|(_, r)| !r.violations.is_empty()) {
            for v in r.violations.iter().take(3) {
                println!("  seed {}: {v}", c.seed);
            }
            println!("  replay: {}", crate::simulate::replay(c, None));
        }
    }
    println!(
        "\n{} of {} scenarios as expected in {:.1} s",
        outcomes.len() - failing.len(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &a.json {
        let v: Vec<_> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "scenario": o.name, "what": o.what, "ok": o.ok(), "skipped": o.skipped,
                    "expect": format!("{:?}", o.expect).to_lowercase(),
                    "deterministic": o.deterministic,
                    "runs": o.runs.iter().map(|(c, r)| json!({
                        "seed": c.seed, "violations": r.violations,
                        "jobs": r.jobs.submitted, "completed": r.jobs.completed,
                        "failed": r.jobs.failed, "trace": hex::encode(r.trace),
                        "replay": crate::simulate::replay(c, None),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
