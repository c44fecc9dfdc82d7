//! What a run is made of, drawn from its seed before it starts (the nodes and the faults that
//! fall on them), and how a sharded run is split into independent parts and put back together.
//!
//! Shards do not talk to each other: a node gossips telemetry, entries and checkpoints on its
//! shard's topics only, replicates its shard's feeds from its shard's members, and places jobs
//! among the nodes whose telemetry it hears, its shard's. So a sharded fleet is as many
//! independent meshes, and the simulator runs each shard as its own deterministic simulation
//! (seeded from the run's seed and the shard), several at a time on the machine's cores, and
//! merges their reports in shard order: the same seed gives the same report however many
//! threads ran it.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A node drawn for a run: its secret key, device class and battery charge.
#[derive(Clone, Debug)]
pub(super) struct NodePlan {
    pub secret: [u8; 32],
    pub profile: usize,
    pub battery_mj: Option<u64>,
}

/// The nodes and faults of a run or of one shard's part of it (node numbers are the part's).
#[derive(Clone, Debug, Default)]
pub(super) struct Plan {
    /// The shard this part simulates (0 for a run with one shard).
    pub shard: u16,
    /// Seeds the part's engine.
    pub seed: u64,
    pub nodes: Vec<NodePlan>,
    pub clogged: Vec<usize>,
    pub forgers: Vec<usize>,
    pub equivocators: Vec<usize>,
    /// Node and when.
    pub leaves: Vec<(usize, Duration)>,
    pub crashes: Vec<(usize, Duration)>,
    /// When, and the node that joins.
    pub joins: Vec<(Duration, NodePlan)>,
    /// The part's share of the fleet: its share of the job and append rates.
    pub share: f64,
}

/// Draws the run's nodes and faults from its seed.
pub(super) fn draw(config: &Config) -> Plan {
    let mut e: Engine<()> = Engine::new(config.seed);
    let node = |e: &mut Engine<()>, battery: bool| {
        let secret = e.bytes32();
        let profile = pick(
            config.profiles.iter().map(|p| p.share_permille),
            e.uniform(0, 999),
        );
        let cap = config.profiles.get(profile).and_then(|p| p.battery_mj);
        // Half the battery-capable devices run on battery, from 30-100 % charge.
        let battery_mj = cap
            .filter(|_| battery && e.chance(0.5))
            .map(|cap| cap / 1000 * e.uniform(300, 1000));
        NodePlan {
            secret,
            profile,
            battery_mj,
        }
    };
    let peers = config.peers;
    let nodes: Vec<NodePlan> = (0..peers).map(|_| node(&mut e, true)).collect();
    let last = peers as u64 - 1;
    let early = config.fault_phase.as_micros() as u64 * 3 / 4;
    let pick_nodes = |e: &mut Engine<()>, n: usize| -> Vec<usize> {
        (0..n.min(peers))
            .map(|_| e.uniform(0, last) as usize)
            .collect()
    };
    let clogged = pick_nodes(&mut e, config.clogged);
    let forgers = pick_nodes(&mut e, config.forgers);
    let equivocators = pick_nodes(&mut e, config.equivocators);
    let timed = |e: &mut Engine<()>, n: usize| -> Vec<(usize, Duration)> {
        (0..n)
            .map(|_| {
                let node = e.uniform(0, last) as usize;
                (node, Duration::from_micros(e.uniform(0, early)))
            })
            .collect()
    };
    let leaves = timed(&mut e, config.leaves.min(peers.saturating_sub(2)));
    let crashes = timed(&mut e, config.crashes.min(peers));
    let joins = (0..config.joins)
        .map(|_| {
            let at = Duration::from_micros(e.uniform(0, early));
            (at, node(&mut e, false))
        })
        .collect();
    Plan {
        shard: 0,
        seed: part_seed(config.seed, 0),
        nodes,
        clogged,
        forgers,
        equivocators,
        leaves,
        crashes,
        joins,
        share: 1.0,
    }
}

/// The engine seed of a run's part for `shard`.
fn part_seed(seed: u64, shard: u16) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"fabnode simulate part");
    h.update(&seed.to_le_bytes());
    h.update(&shard.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or_default())
}

/// Splits a plan by shard: each part holds its shard's nodes (renumbered in order), the faults
/// that fall on them, and the joiners whose keys belong to it. A shard no node of the fleet
/// belongs to at the start has no part (and its joiners, if any, are not simulated).
pub(super) fn split(plan: &Plan, shards: Shards) -> Vec<Plan> {
    let shard_of = |n: &NodePlan| usize::from(shards.of(&Keypair::from_secret(n.secret).public()));
    let mut parts: Vec<Plan> = (0..shards.count())
        .map(|s| Plan {
            shard: s,
            seed: part_seed(plan.seed, s),
            ..Plan::default()
        })
        .collect();
    let mut local = Vec::with_capacity(plan.nodes.len());
    for n in &plan.nodes {
        let s = shard_of(n);
        local.push((s, parts[s].nodes.len()));
        parts[s].nodes.push(n.clone());
    }
    for &n in &plan.clogged {
        let (s, i) = local[n];
        parts[s].clogged.push(i);
    }
    for &n in &plan.forgers {
        let (s, i) = local[n];
        parts[s].forgers.push(i);
    }
    for &n in &plan.equivocators {
        let (s, i) = local[n];
        parts[s].equivocators.push(i);
    }
    for &(n, at) in &plan.leaves {
        let (s, i) = local[n];
        parts[s].leaves.push((i, at));
    }
    for &(n, at) in &plan.crashes {
        let (s, i) = local[n];
        parts[s].crashes.push((i, at));
    }
    for (at, n) in &plan.joins {
        parts[shard_of(n)].joins.push((*at, n.clone()));
    }
    let total = plan.nodes.len().max(1) as f64;
    parts.retain(|p| !p.nodes.is_empty());
    for p in &mut parts {
        p.share = p.nodes.len() as f64 / total;
    }
    parts
}

/// One part's outcome: its report, and its replication progress as (virtual ms, entries
/// held, entries wanted) on the run's sampling grid.
pub(super) type Part = (Report, Vec<(u64, u64, u64)>);

/// Runs the parts, up to the machine's cores at a time, calling `watch` as each ends.
pub(super) fn run_parts(
    config: &Config,
    parts: Vec<Plan>,
    watch: &mut dyn FnMut(Progress),
) -> Vec<(u16, Part)> {
    let total = parts.len();
    let end = config.fault_phase + config.recovery;
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(total)
        .max(1);
    let next = AtomicUsize::new(0);
    let mut done: Vec<Option<Part>> = (0..total).map(|_| None).collect();
    std::thread::scope(|s| {
        // A slot for every part: a worker never waits to hand one over.
        let (tx, rx) = std::sync::mpsc::sync_channel(total);
        for _ in 0..threads {
            let tx = tx.clone();
            let (parts, next) = (&parts, &next);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(plan) = parts.get(i) else { break };
                    let part = run_part(config, plan.clone(), &mut |_| {});
                    if tx.send((i, part)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let (mut finished, mut events) = (0u32, 0u64);
        for (i, part) in rx {
            finished += 1;
            events += part.0.events;
            done[i] = Some(part);
            watch(Progress {
                now: end * finished / total as u32,
                end,
                events,
            });
        }
    });
    parts
        .iter()
        .zip(done)
        .filter_map(|(p, d)| Some((p.shard, d?)))
        .collect()
}

/// One report from the parts', in shard order.
pub(super) fn merge(parts: Vec<(u16, Part)>, sharded: bool) -> Report {
    let mut r = Report {
        converged_after: Some(Duration::ZERO),
        ..Report::default()
    };
    let mut trace = blake3::Hasher::new();
    let mut progress: Vec<(u64, u64, u64)> = Vec::new();
    let mut latencies = Vec::new();
    let single = parts.len() == 1 && !sharded;
    for (shard, (p, prog)) in parts {
        r.entries += p.entries;
        r.messages += p.messages;
        r.bytes += p.bytes;
        r.lost += p.lost;
        r.events += p.events;
        r.forks += p.forks;
        r.forks_noticed += p.forks_noticed;
        r.forks_proven += p.forks_proven;
        r.forgeries += p.forgeries;
        r.forgeries_rejected += p.forgeries_rejected;
        r.caught_up_us.extend(p.caught_up_us);
        r.converged_after = r
            .converged_after
            .zip(p.converged_after)
            .map(|(a, b)| a.max(b));
        if single {
            r.violations = p.violations;
            r.trace = p.trace;
        } else {
            r.violations.extend(
                p.violations
                    .into_iter()
                    .map(|v| format!("shard {shard}: {v}")),
            );
            trace.update(&p.trace);
        }
        for (i, (ms, held, want)) in prog.into_iter().enumerate() {
            match progress.get_mut(i) {
                Some(x) => {
                    x.1 += held;
                    x.2 += want;
                }
                None => progress.push((ms, held, want)),
            }
        }
        let j = p.jobs;
        r.jobs.submitted += j.submitted;
        r.jobs.completed += j.completed;
        r.jobs.failed += j.failed;
        for (reason, n) in j.failures {
            *r.jobs.failures.entry(reason).or_default() += n;
        }
        r.jobs.failovers += j.failovers;
        r.jobs.executions += j.executions;
        for (class, n) in j.by_profile {
            *r.jobs.by_profile.entry(class).or_default() += n;
        }
        r.jobs.energy_mj += j.energy_mj;
        latencies.extend(j.latencies_us);
        r.jobs.runs_per_node.extend(j.runs_per_node);
    }
    if !single {
        r.trace = *trace.finalize().as_bytes();
    }
    latencies.sort_unstable();
    r.caught_up_us.sort_unstable();
    r.jobs.latency_us = percentiles(&latencies);
    r.jobs.latencies_us = latencies;
    let loads: Vec<u64> = r.jobs.runs_per_node.iter().map(|(_, n)| *n).collect();
    r.jobs.gini_permille = (gini(&loads) * 1000.0).round() as u64;
    r.progress = progress
        .into_iter()
        .map(|(ms, held, want)| {
            let permille = (held * 1000).checked_div(want).map_or(1000, |p| p as u32);
            (ms, permille)
        })
        .collect();
    r
}

/// p50, p95 and p99 of sorted values.
pub(super) fn percentiles(sorted: &[u64]) -> [u64; 3] {
    let q = |p: usize| {
        sorted
            .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    [q(50), q(95), q(99)]
}
