//! What a simulated run found.

use super::*;

/// The outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub messages: u64,
    pub bytes: u64,
    pub lost: u64,
    /// Virtual time from the end of the fault phase until every node held every feed.
    pub converged_after: Option<Duration>,
    /// Each live node's catch-up time: how long after the faults healed it last came to hold
    /// every feed of its shard, microseconds, sorted (nodes that never did are not in it).
    pub caught_up_us: Vec<u64>,
    /// Invariants, by name, with what broke them.
    pub violations: Vec<String>,
    /// BLAKE3 over every event handled: equal for equal seeds.
    pub trace: [u8; 32],
    pub events: u64,
    pub jobs: JobReport,
    /// Replication over time: (virtual ms, permille of the entries live nodes should hold
    /// that they hold), every [`progress_every`].
    pub progress: Vec<(u64, u32)>,
    /// Forks signed by equivocating nodes, conflict reports honest nodes made about them, and
    /// pieces of evidence (two signed entries for one position) they kept that verify.
    pub forks: u64,
    pub forks_noticed: u64,
    pub forks_proven: u64,
    /// Forged or malformed gossip messages sent, and deliveries of them that were rejected.
    pub forgeries: u64,
    pub forgeries_rejected: u64,
}
/// How often replication progress is sampled in a run of `length`: every 250 ms, or often
/// enough for about 480 samples in a longer run.
pub fn progress_every(length: Duration) -> Duration {
    (length / 480).max(Duration::from_millis(250))
}
/// What happened to the jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobReport {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    /// Failure reasons and how many jobs failed with each.
    pub failures: BTreeMap<String, u64>,
    /// Submission to result of completed jobs, microseconds: p50, p95, p99.
    pub latency_us: [u64; 3],
    /// Jobs that needed more awards than replicas (a re-award after a failed attempt).
    pub failovers: u64,
    /// Runs that finished on an executor (each one ledgered there).
    pub executions: u64,
    /// Finished runs per device class.
    pub by_profile: BTreeMap<String, u64>,
    /// Gini coefficient of finished runs per node, permille (0: evenly spread).
    pub gini_permille: u64,
    /// Energy spent computing, millijoules.
    pub energy_mj: u64,
    /// Every completed job's latency, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Runs finished per node, with its device class.
    pub runs_per_node: Vec<(String, u64)>,
}
