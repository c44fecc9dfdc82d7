//! What a simulated run is asked to do: the fleet, its faults and its workload.

use super::*;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Config {
    pub peers: usize,
    pub seed: u64,
    /// Entries appended per second across the mesh, during the fault phase.
    pub appends_per_s: u64,
    pub fault_phase: Duration,
    /// After the faults heal: the time the mesh has to converge.
    pub recovery: Duration,
    /// Access links by name (each device class names one); messages cross the sender's and
    /// the receiver's, plus the wide area between regions, plus size over the slower one's
    /// bandwidth.
    pub links: Vec<LinkProfile>,
    /// Probability that a gossip message is delivered twice, during the fault phase.
    pub duplicate: f64,
    /// Nodes whose links clog (every message to or from them delayed by 1-3 s) for the middle
    /// third of the fault phase.
    pub clogged: usize,
    /// Churn during the fault phase: nodes that leave for good, and nodes that join (and must
    /// catch up on every feed).
    pub leaves: usize,
    pub joins: usize,
    /// Byzantine nodes that equivocate: now and then they sign two different entries at the
    /// same position of their feed and send one to half their peers, the other to the rest.
    /// Honest nodes must notice every fork (and cannot converge on a forked feed).
    pub equivocators: usize,
    /// Byzantine nodes that, besides their honest work, send forged gossip: other nodes'
    /// entries re-signed with their own key, and garbage. Honest nodes must reject all of it
    /// (and never store it); gossipsub then scores the sender down.
    pub forgers: usize,
    /// Probability that a message is lost, during the fault phase.
    pub loss: f64,
    /// Cut the mesh in two halves for the middle third of the fault phase.
    pub partition: bool,
    /// Nodes crashed (and restarted 1 s later) during the fault phase.
    pub crashes: usize,
    /// Peers each node dials at start (the node's connection target); with the peers that
    /// dial it and a ring that keeps the graph connected, these are its connections.
    pub degree: usize,
    /// Jobs submitted per second across the mesh (at random live nodes) during the fault
    /// phase, from 0.5 s on (once telemetry has spread); 0 runs the ledger workload alone.
    pub jobs_per_s: f64,
    /// How the job rate varies over time.
    pub arrivals: Arrivals,
    /// The fleet's device classes and the models it runs.
    pub profiles: Vec<Profile>,
    pub models: Vec<Model>,
    /// Share of jobs allowed only on the cloud tier, and of jobs asking for 2 replicas, permille.
    pub cloud_only_permille: u32,
    pub two_replicas_permille: u32,
    /// Test-only planted bug; the invariants must catch it.
    pub planted: Planted,
    /// The mesh's shard count (the node's `mesh.shards`): each node hears the telemetry of,
    /// places jobs among, and replicates the feeds of its own shard's members. None: the
    /// count recommended for the fleet's size ([`Shards::for_fleet`]).
    pub shards: Option<Shards>,
    /// The node's `telemetry.every_ms` and `telemetry.stale_ms`: telemetry is considered for
    /// publication this often, published when it changed in what placement uses or a third
    /// of the staleness limit has passed, and dropped by views when older than the limit.
    pub telemetry_every: Duration,
    pub telemetry_stale: Duration,
}
impl Config {
    /// The shard count the run uses.
    pub fn shards(&self) -> Shards {
        self.shards.unwrap_or_else(|| Shards::for_fleet(self.peers))
    }

    /// Refuses settings the simulator cannot run, saying which.
    pub fn check(&self) -> Result<(), String> {
        if self.peers < 2 {
            return Err("peers: at least 2".into());
        }
        if self.profiles.is_empty() || self.profiles.iter().all(|p| p.share_permille == 0) {
            return Err("profiles: at least one device class with a share".into());
        }
        if self.links.is_empty() {
            return Err("links: at least one".into());
        }
        for p in &self.profiles {
            if !self.links.iter().any(|l| l.name == p.link) {
                return Err(format!("profile {:?}: no link named {:?}", p.name, p.link));
            }
            if p.speed_permille == 0 || p.workers == 0 {
                return Err(format!(
                    "profile {:?}: speed and workers must be positive",
                    p.name
                ));
            }
        }
        for l in &self.links {
            if l.bytes_per_ms == 0 || l.one_way_us.0 > l.one_way_us.1 {
                return Err(format!(
                    "link {:?}: needs bandwidth and a range lo <= hi",
                    l.name
                ));
            }
        }
        if self.jobs_per_s > 0.0
            && (self.models.is_empty() || self.models.iter().all(|m| m.share_permille == 0))
        {
            return Err("models: at least one with a share when jobs are submitted".into());
        }
        for (name, p) in [("loss", self.loss), ("duplicate", self.duplicate)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name}: a probability from 0 to 1"));
            }
        }
        if !self.jobs_per_s.is_finite() || self.jobs_per_s < 0.0 {
            return Err("jobs_per_s: a rate of 0 or more".into());
        }
        if self.telemetry_every.is_zero() || self.telemetry_stale < self.telemetry_every {
            return Err("telemetry: every must be positive and stale at least every".into());
        }
        Ok(())
    }
}
/// The shape of job arrivals around the mean rate `jobs_per_s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrivals {
    /// A steady Poisson process.
    Poisson,
    /// Quiet most of the time, then `factor` times the rate for `length` out of every `every`
    /// (the rate outside bursts is set so the mean stays `jobs_per_s`).
    Bursts {
        every: Duration,
        length: Duration,
        factor: f64,
    },
    /// A day compressed into `period`: the rate swings between 0 and twice the mean.
    Diurnal { period: Duration },
}
impl Arrivals {
    /// The rate at `t` as a multiple of the mean.
    pub fn factor(&self, t: Duration) -> f64 {
        match *self {
            Arrivals::Poisson => 1.0,
            Arrivals::Bursts {
                every,
                length,
                factor,
            } => {
                let every = every.as_secs_f64().max(1e-3);
                let on = (length.as_secs_f64() / every).clamp(0.0, 1.0);
                let quiet = if on >= 1.0 {
                    1.0
                } else {
                    ((1.0 - factor * on) / (1.0 - on)).max(0.0)
                };
                if t.as_secs_f64() % every < on * every {
                    factor
                } else {
                    quiet
                }
            }
            Arrivals::Diurnal { period } => {
                let phase = t.as_secs_f64() / period.as_secs_f64().max(1e-3);
                1.0 - (std::f64::consts::TAU * phase).cos()
            }
        }
    }

    /// The largest [`Arrivals::factor`].
    pub fn peak(&self) -> f64 {
        match *self {
            Arrivals::Poisson => 1.0,
            Arrivals::Bursts { factor, .. } => factor.max(1.0),
            Arrivals::Diurnal { .. } => 2.0,
        }
    }
}
/// A bug planted on purpose, to show that the invariants can fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Planted {
    #[default]
    None,
    /// A restarted node keeps its replication core's pre-crash state instead of rebuilding it
    /// from what its store kept.
    StaleRestart,
    /// An executor runs awarded jobs without asking its policy.
    ExecWithoutPolicy,
}
impl Default for Config {
    fn default() -> Self {
        Config {
            peers: 20,
            seed: 1,
            appends_per_s: 50,
            fault_phase: Duration::from_secs(10),
            recovery: Duration::from_secs(20),
            links: crate::fleet::links(),
            duplicate: 0.01,
            clogged: 1,
            leaves: 0,
            joins: 0,
            equivocators: 0,
            forgers: 0,
            loss: 0.05,
            partition: true,
            crashes: 2,
            degree: 8,
            jobs_per_s: 0.0,
            arrivals: Arrivals::Poisson,
            profiles: crate::fleet::profiles(),
            models: crate::fleet::models(),
            cloud_only_permille: 100,
            two_replicas_permille: 100,
            planted: Planted::None,
            shards: None,
            telemetry_every: Duration::from_secs(2),
            telemetry_stale: Duration::from_secs(15),
        }
    }
}
