//! A fleet in virtual time: every node runs the real protocol cores (ledger append, gossip
//! validation, replication and catch-up, signed telemetry and its view, the auction's
//! requester and bidder sides) over a simulated network of device classes and access links,
//! through a fault phase (loss, duplicates, a partition, clogged links, crashes, churn) and a
//! recovery phase in which the mesh must converge; checkers outside the nodes say whether what
//! happened was allowed. docs/SIMULATOR.md states the models.
//!
//! Gossip follows the node's gossipsub settings: flood publishing by the author; a mesh of
//! [`MESH_DEGREE`] live connections per node kept by a heartbeat; forwarding to the mesh on
//! first acceptance; IHAVE/IWANT from a message cache; duplicates dropped by message id before
//! validation. Catch-up (heads every few seconds, ranges on demand) repairs the rest. A
//! crashed node keeps what it had stored and nothing in flight.
//!
//! A fleet with more than one shard (`mesh.shards`) is as many independent meshes: the run is
//! drawn as one plan, split by shard and simulated part by part on the machine's cores
//! (`plan`), then merged into one report.
//!
//! # Layout
//!
//! - `config`: what a run is asked to do; `report`: what it found;
//! - this file: messages, nodes, the simulation's state and running a run part by part;
//! - `events`: the event loop (network delivery, gossip, replication, faults);
//! - `gossip`, `jobs`: the gossip mesh and the job path; `checks`: the invariants; `plan`:
//!   drawing a run from its seed and splitting it by shard.

mod checks;
mod config;
mod events;
mod gossip;
mod jobs;
mod plan;
mod report;

pub use config::{Arrivals, Config, Planted};
pub use report::{JobReport, Report, progress_every};

use std::collections::BTreeMap;
use std::time::Duration;

use fab_ledger::merkle::{Frontier, leaf_hash};
use fab_ledger::{ContentId, EntryBody, FeedWriter, Keypair, PublicKey, SignedEntry};
use fab_mesh::node::{Gossip, MeshNode, NodeConfig, serve_heads};
use fab_mesh::replicate::{Output, ReplicateConfig, Replicator};
use fab_mesh::shard::Scope;
pub use fab_mesh::shard::Shards;
use fab_mesh::validate::{Valid, Verdict, validate_in};
use fab_mesh::wire::GossipMsg;

use fab_node::sched::auction::{self, Auction, AuctionConfig, Candidate, Submission};
use fab_node::sched::bidder::{self, AllowAll, Answer, BidderLimits, Policy};
use fab_node::sched::telemetry::{SignedTelemetry, TelemetryReport, TelemetryView, publish_due};
use fab_node::sched::{Estimate, Host, JobShape, Link, Sla, Telemetry};

use crate::engine::Engine;
use crate::fleet::{LinkProfile, Model, Profile, WAN_ONE_WAY_US, gini, pick};

type JobId = auction::JobId;

const NETWORK: &str = "sim";
/// The validators' shared verdicts are forgotten this often, so long runs do not keep every
/// payload (a verdict depends on the bytes alone: recomputing it changes nothing).
const VERDICT_CACHE: Duration = Duration::from_secs(60);
/// Ledger entry kind of a simulated execution: `[job id, attempt, requester]`.
const KIND_RUN: u64 = 98;
/// Regions the fleet is spread over, round robin.
const REGIONS: [&str; 2] = ["eu", "us"];
/// The gossip layer's parameters, the node's own.
pub use fab_mesh::node::gossip::MESH_DEGREE;
use fab_mesh::node::gossip::{
    CONTROL_IDS_MAX, DUPLICATE_CACHE, GOSSIP_LAZY, HEARTBEAT, HISTORY_GOSSIP as MCACHE_GOSSIP,
    HISTORY_LENGTH as MCACHE_LEN, MAINTAIN_EVERY as REDIAL_EVERY, MESH_HIGH, MESH_LOW,
};

/// Adds an event to the trace hash: its kind and every node index in full (four bytes each;
/// indices above 255 used to be truncated to one byte, so two runs that differed only in which
/// of two such nodes acted hashed the same).
fn trace_event(trace: &mut blake3::Hasher, kind: u8, nodes: &[usize]) {
    trace.update(&[kind]);
    for n in nodes {
        trace.update(&(*n as u32).to_le_bytes());
    }
}

/// Hashes a message id (BLAKE3 output: already uniform) by its first 8 bytes. Sets and maps
/// keyed by ids are only looked up, never iterated, so their order cannot reach a report.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

type IdSet = std::collections::HashSet<[u8; 32], std::hash::BuildHasherDefault<IdHasher>>;
type IdMap<V> = std::collections::HashMap<[u8; 32], V, std::hash::BuildHasherDefault<IdHasher>>;

/// A gossip message: its id (BLAKE3 of the payload, as the node's gossipsub config sets it),
/// the payload (shared by every copy in flight and in message caches), and whether it is on
/// the telemetry topic (otherwise the ledger topic).
#[derive(Clone)]
struct Payload {
    id: [u8; 32],
    bytes: std::rc::Rc<Vec<u8>>,
    telemetry: bool,
}

impl Payload {
    fn new(bytes: Vec<u8>, telemetry: bool) -> Payload {
        Payload {
            id: *blake3::hash(&bytes).as_bytes(),
            bytes: std::rc::Rc::new(bytes),
            telemetry,
        }
    }
}

enum Msg {
    Gossip(Payload),
    /// gossipsub control: ids a peer has (IHAVE) and ids it asks for (IWANT).
    IHave(Vec<[u8; 32]>),
    IWant(Vec<[u8; 32]>),
    /// `/fabnode/bid/1`: a call for bids and its answer.
    Call {
        job: JobId,
        shape: JobShape,
        sla: Sla,
    },
    Bid {
        job: JobId,
        estimate: Estimate,
    },
    Decline {
        job: JobId,
        reason: String,
    },
    /// `/fabnode/exec/1`: an awarded job, its result, or a refusal.
    Exec {
        job: JobId,
        attempt: u32,
    },
    Result {
        job: JobId,
    },
    Refused {
        job: JobId,
        reason: String,
    },
    HeadsRequest,
    Heads(Vec<(PublicKey, u64)>),
    RangeRequest {
        feed: PublicKey,
        start: u64,
        count: u64,
    },
    Range {
        feed: PublicKey,
        start: u64,
        entries: Vec<Vec<u8>>,
    },
}

impl Msg {
    fn bytes(&self) -> u64 {
        match self {
            Msg::Gossip(p) => p.bytes.len() as u64,
            Msg::IHave(ids) | Msg::IWant(ids) => 8 + 34 * ids.len() as u64,
            Msg::Call { .. } => 160,
            Msg::Bid { .. } => 180,
            Msg::Decline { reason, .. } => 100 + reason.len() as u64,
            // The signed job request with its input, and the answer with the signed entry.
            Msg::Exec { .. } => 400,
            Msg::Result { .. } => 900,
            Msg::Refused { reason, .. } => 100 + reason.len() as u64,
            Msg::HeadsRequest | Msg::RangeRequest { .. } => 48,
            Msg::Heads(h) => 40 * h.len() as u64,
            Msg::Range { entries, .. } => entries.iter().map(|e| e.len() as u64).sum(),
        }
    }
}

enum Event {
    Append,
    Deliver {
        from: usize,
        to: usize,
        msg: Box<Msg>,
    },
    /// A node's timer, every [`HEARTBEAT`]: its gossipsub heartbeat (mesh upkeep, IHAVE gossip,
    /// message cache shift), its telemetry when due, the sync of replica writes, redials.
    Tick(usize),
    /// A node's mesh core asked to be woken now ([`MeshNode::poll_timeout`]: replication
    /// deadlines, own-gossip slots).
    Core(usize),
    Crash(usize),
    Restart(usize),
    /// A node leaves the mesh for good; the k-th joiner joins.
    Leave(usize),
    Join(usize),
    /// A client submits a job at a random node.
    Submit,
    /// A node's auction asked to be woken now ([`Auction::poll_timeout`]).
    AuctionTick(usize),
    /// A run ends on `node`, unless the node crashed since (`life` changed).
    Finish {
        node: usize,
        life: u32,
    },
    /// A finished run's ledger entry is durable on `node` (same rule).
    Commit {
        node: usize,
        life: u32,
        run: Box<Run>,
    },
}

/// A run of a job on an executor.
#[derive(Clone, Copy, Debug)]
struct Run {
    job: JobId,
    requester: usize,
    attempt: u32,
    compute_us: u64,
    /// When it ends, once started.
    ends: Duration,
}

/// A submitted job, as the simulator (outside the nodes) tracks it for the checkers.
struct JobRec {
    submitter: usize,
    at: Duration,
    shape: JobShape,
    sla: Sla,
    /// What the client was told: a result (with its latency) or a failure reason.
    outcome: Option<Result<Duration, String>>,
    /// Results handed to the client; exactly one for a completed job.
    results: u32,
    awards: u32,
    /// Attempt numbers awarded: each at most once.
    attempts: std::collections::BTreeSet<u32>,
}

struct Node {
    key: PublicKey,
    keypair: Keypair,
    /// Its shard ([`Config::shards`]).
    shard: u16,
    /// When its telemetry is next considered for publication.
    next_publish: Duration,
    /// The earliest [`Event::Core`] scheduled and not yet handled.
    core_wake: Option<Duration>,
    profile: usize,
    /// Its access link, an index into [`Config::links`].
    link: usize,
    /// The requester side of the scheduler; its state dies with the process.
    auction: Auction<usize>,
    /// The earliest [`Event::AuctionTick`] scheduled and not yet handled.
    auction_wake: Option<Duration>,
    view: TelemetryView,
    telemetry_seq: u64,
    /// The last report it published, and when.
    published: Option<(Telemetry, Duration)>,
    /// Runs waiting for a worker, and runs in progress.
    queue: std::collections::VecDeque<Run>,
    running: Vec<Run>,
    /// Finished runs whose ledger commit is in progress.
    committing: u32,
    /// Incremented by every crash: a run that was to finish in an earlier life never does.
    life: u32,
    /// Measured run time per model (EWMA, 1/8), as the node publishes it.
    model_latency: BTreeMap<[u8; 32], u64>,
    battery_mj: Option<u64>,
    /// Jobs this node's policy admitted for execution (allow decisions).
    allowed: std::collections::BTreeSet<JobId>,
    /// Runs finished here: (job, attempt).
    finished: Vec<(JobId, u32)>,
    /// Left the mesh for good (churn).
    left: bool,
    /// Equivocates (see [`Config::equivocators`]).
    byzantine: bool,
    /// Sends forged and malformed gossip (see [`Config::forgers`]).
    forger: bool,
    /// The second versions it signed: id -> entry.
    forks: BTreeMap<ContentId, SignedEntry>,
    writer: FeedWriter,
    own: Vec<SignedEntry>,
    /// The node's mesh core (replication, own-gossip pacing), the one the node runs; its
    /// checkpoints are signed when they go out (`()` until then).
    core: MeshNode<usize, ()>,
    /// Ids of the entries held of each other feed, in order. The entries themselves are the
    /// owner's (a replica holding an entry with another id is reported at the end), so a
    /// run keeps one copy of each entry however many nodes hold it.
    replicas: BTreeMap<[u8; 32], Vec<ContentId>>,
    /// Ids of its own entries.
    own_ids: Vec<ContentId>,
    /// The Merkle frontier of its own feed, for its checkpoints.
    tree: Frontier,
    /// Gossip already seen (gossipsub's duplicate cache), by message id: BLAKE3 of the payload,
    /// as the node's gossipsub config sets it; checked before validation, as there.
    seen: IdSet,
    /// The ids seen in the previous [`DUPLICATE_CACHE`] window (gossipsub's duplicate cache
    /// forgets after that long; so does this, in two generations).
    seen_before: IdSet,
    seen_since: Duration,
    /// Gossip copies on their way to it: the earliest arrival of each message id. A copy that
    /// would arrive after one already on its way is a duplicate on arrival.
    inbound: IdMap<Duration>,
    /// When it last dialed peers to get back to its connection target.
    dialed_at: Duration,
    /// Its gossipsub mesh: the connected peers it forwards to.
    mesh: std::collections::BTreeSet<usize>,
    /// Message cache by heartbeat, newest first.
    mcache: std::collections::VecDeque<Vec<Payload>>,
    up: bool,
    /// Replica entries per feed that were durable at the last sync: the node writes replicas
    /// to disk at least once a second (`REPLICA_SYNC`), so a crash loses the ones after it.
    synced: BTreeMap<[u8; 32], usize>,
    synced_at: Duration,
}

impl Node {
    fn new(
        secret: [u8; 32],
        profile: usize,
        link: usize,
        battery_mj: Option<u64>,
        config: &Config,
    ) -> Self {
        let key = Keypair::from_secret(secret);
        let scope_key = key.public();
        let scope = Scope::of(config.shards(), &scope_key);
        Node {
            key: key.public(),
            keypair: key.clone(),
            shard: scope.shard,
            next_publish: Duration::ZERO,
            core_wake: None,
            profile,
            link,
            auction: Auction::new(auction_config()),
            auction_wake: None,
            view: TelemetryView::new(config.telemetry_stale.as_millis() as u64),
            telemetry_seq: 0,
            published: None,
            queue: Default::default(),
            running: Vec::new(),
            committing: 0,
            life: 0,
            model_latency: BTreeMap::new(),
            battery_mj,
            allowed: Default::default(),
            finished: Vec::new(),
            left: false,
            byzantine: false,
            forger: false,
            forks: BTreeMap::new(),
            writer: FeedWriter::resume(key, 0, None),
            own: Vec::new(),
            core: MeshNode::new(
                scope_key,
                Replicator::new(replicate_config(scope)),
                NodeConfig::default(),
            ),
            replicas: BTreeMap::new(),
            own_ids: Vec::new(),
            tree: Frontier::new(),
            seen: Default::default(),
            seen_before: Default::default(),
            seen_since: Duration::ZERO,
            inbound: Default::default(),
            dialed_at: Duration::ZERO,
            mesh: Default::default(),
            mcache: std::collections::VecDeque::from(vec![Vec::new()]),
            synced: BTreeMap::new(),
            synced_at: Duration::ZERO,
            up: true,
        }
    }

    /// A restart with a replication core rebuilt from what the node had stored; what lived
    /// in memory (the auction, the telemetry view and counter) starts over.
    fn restart(&mut self, replicator: Replicator<usize>, config: &Config) {
        self.core = MeshNode::new(self.key, replicator, NodeConfig::default());
        self.core_wake = None;
        self.auction = Auction::new(auction_config());
        self.auction_wake = None;
        self.view = TelemetryView::new(config.telemetry_stale.as_millis() as u64);
        self.telemetry_seq = 0;
        self.published = None;
        self.up = true;
    }

    /// Whether a gossip message id is in the duplicate cache.
    fn has_seen(&self, id: &[u8; 32]) -> bool {
        self.seen.contains(id) || self.seen_before.contains(id)
    }

    /// Whether it has seen a gossip message or a copy is on its way.
    fn expects(&self, id: &[u8; 32]) -> bool {
        self.has_seen(id) || self.inbound.contains_key(id)
    }

    /// Records a gossip message id; false when it was seen within the duplicate cache's
    /// memory.
    fn first_sight(&mut self, id: [u8; 32], now: Duration) -> bool {
        if now >= self.seen_since + DUPLICATE_CACHE {
            self.seen_before = std::mem::take(&mut self.seen);
            self.seen_since = now;
        }
        !self.seen_before.contains(&id) && self.seen.insert(id)
    }

    /// Ids of what it holds of a feed, its own included.
    fn held(&self, feed: &PublicKey) -> Option<&[ContentId]> {
        if *feed == self.key {
            Some(&self.own_ids)
        } else {
            self.replicas.get(&feed.to_bytes()).map(Vec::as_slice)
        }
    }
}

struct Sim {
    config: Config,
    engine: Engine<Event>,
    nodes: Vec<Node>,
    /// Each node's connections.
    links: Vec<Vec<usize>>,
    /// The part of each node's connections within its shard (where its gossip goes).
    shard_links: Vec<Vec<usize>>,
    fault_end: Duration,
    partition: Option<(Duration, Duration)>,
    report: Report,
    trace: blake3::Hasher,
    /// The validator's verdict per distinct payload. Validation depends on the bytes alone, so
    /// every node would reach the same one; computing it once per payload instead of once per
    /// node is most of the simulator's speed.
    verdicts: IdMap<Result<Valid, String>>,
    /// The same for telemetry reports.
    reports: IdMap<Option<SignedTelemetry>>,
    /// Node index by feed key.
    index: BTreeMap<[u8; 32], usize>,
    /// Nodes by shard.
    members: Vec<Vec<usize>>,
    /// Nodes whose links clog in the middle of the fault phase.
    clog: std::collections::BTreeSet<usize>,
    /// Conflict reports about each equivocator's feed.
    noticed: BTreeMap<usize, u64>,
    jobs: BTreeMap<JobId, JobRec>,
    submitted: u64,
    latencies: Vec<u64>,
    /// Mean gap between extra appends, microseconds.
    append_gap_us: u64,
    /// The nodes that join, in order.
    joiners: Vec<plan::NodePlan>,
    /// Per node, since when (after the faults healed) it holds every feed of its shard.
    caught_up: Vec<Option<Duration>>,
}

/// Runs a scenario to the end of its recovery phase.
pub fn run(config: &Config) -> Report {
    run_watched(config, &mut |_| {})
}

/// How far a run has got, for a progress display.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub now: Duration,
    pub end: Duration,
    pub events: u64,
}

/// [`run`], calling `watch` every 65,536 events, or as each shard's part ends (it cannot
/// change the run).
pub fn run_watched(config: &Config, watch: &mut dyn FnMut(Progress)) -> Report {
    let whole = plan::draw(config);
    let shards = config.shards();
    if shards.count() == 1 {
        let part = run_part(config, whole, watch);
        return plan::merge(vec![(0, part)], false);
    }
    let parts = plan::split(&whole, shards);
    plan::merge(plan::run_parts(config, parts, watch), true)
}

/// Runs one part of a run (the whole run when it has one shard).
fn run_part(config: &Config, plan: plan::Plan, watch: &mut dyn FnMut(Progress)) -> plan::Part {
    // The part's own settings: its nodes, its seed, its share of the rates; the run's shards.
    let config = &Config {
        peers: plan.nodes.len(),
        seed: plan.seed,
        jobs_per_s: config.jobs_per_s * plan.share,
        shards: Some(config.shards()),
        ..config.clone()
    };
    let mut engine: Engine<Event> = Engine::new(plan.seed);
    let nodes: Vec<Node> = plan
        .nodes
        .iter()
        .map(|p| {
            let link = link_index(config, p.profile);
            Node::new(p.secret, p.profile, link, p.battery_mj, config)
        })
        .collect();
    let index: BTreeMap<[u8; 32], usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.key.to_bytes(), i))
        .collect();
    let fault_end = config.fault_phase;
    let third = config.fault_phase / 3;
    // Connections: a ring (so the graph is connected) plus `degree` random dials per node
    // among its shard's members (with one shard, among all).
    let n = nodes.len();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); usize::from(config.shards().count())];
    for (i, node) in nodes.iter().enumerate() {
        members[usize::from(node.shard)].push(i);
    }
    let mut links: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); n];
    for a in 0..n {
        let b = (a + 1) % n;
        if a != b {
            links[a].insert(b);
            links[b].insert(a);
        }
        let pool = &members[usize::from(nodes[a].shard)];
        for _ in 0..config.degree {
            let b = pool[engine.uniform(0, pool.len() as u64 - 1) as usize];
            if a != b {
                links[a].insert(b);
                links[b].insert(a);
            }
        }
    }
    let links: Vec<Vec<usize>> = links.into_iter().map(|l| l.into_iter().collect()).collect();
    let shard_links = links
        .iter()
        .enumerate()
        .map(|(a, l)| {
            l.iter()
                .copied()
                .filter(|b| nodes[a].shard == nodes[*b].shard)
                .collect()
        })
        .collect();
    let mut sim = Sim {
        partition: config.partition.then_some((third, third * 2)),
        config: config.clone(),
        engine,
        nodes,
        links,
        shard_links,
        fault_end,
        report: Report::default(),
        trace: blake3::Hasher::new(),
        verdicts: Default::default(),
        reports: Default::default(),
        index,
        members,
        clog: Default::default(),
        noticed: BTreeMap::new(),
        jobs: BTreeMap::new(),
        submitted: 0,
        latencies: Vec::new(),
        append_gap_us: (1e6 / (config.appends_per_s as f64 * plan.share).max(1e-3)) as u64,
        joiners: plan.joins.iter().map(|(_, n)| n.clone()).collect(),
        caught_up: vec![None; plan.nodes.len() + plan.joins.len()],
    };
    for a in 0..sim.nodes.len() {
        for b in sim.links[a].clone() {
            if sim.same_shard(a, b) {
                sim.core(a, |core, now, out| core.peer_up(b, now, out));
            }
        }
        let offset = Duration::from_micros(sim.engine.uniform(0, 500_000));
        sim.engine.after(offset, Event::Tick(a));
        // The mesh forms as soon as the node is connected.
        sim.heartbeat(a);
    }
    if config.jobs_per_s > 0.0 {
        // A node publishes its telemetry as it starts.
        for a in 0..sim.nodes.len() {
            sim.maybe_publish(a);
            let jitter = sim
                .engine
                .uniform(0, config.telemetry_every.as_micros() as u64 / 10);
            sim.nodes[a].next_publish = config.telemetry_every + Duration::from_micros(jitter);
        }
    }
    if config.appends_per_s > 0 {
        let first = sim.engine.uniform(0, sim.append_gap_us);
        sim.engine
            .after(Duration::from_micros(first), Event::Append);
    }
    if config.jobs_per_s > 0.0 {
        // Jobs start once the first telemetry has spread.
        let peak = config.jobs_per_s * config.arrivals.peak();
        let first = Duration::from_millis(500) + sim.engine.exponential(peak);
        sim.engine.after(first, Event::Submit);
    }
    sim.clog.extend(plan.clogged.iter().copied());
    for &n in &plan.forgers {
        sim.nodes[n].forger = true;
    }
    for &n in &plan.equivocators {
        sim.nodes[n].byzantine = true;
    }
    for &(n, at) in &plan.leaves {
        sim.engine.after(at, Event::Leave(n));
    }
    for (k, (at, _)) in plan.joins.iter().enumerate() {
        sim.engine.after(*at, Event::Join(k));
    }
    for &(n, at) in &plan.crashes {
        sim.engine.after(at, Event::Crash(n));
    }
    let end = fault_end + config.recovery;
    let mut check = fault_end;
    let mut sample = Duration::ZERO;
    let every = progress_every(end);
    let mut progress = Vec::new();
    let mut forget = VERDICT_CACHE;
    while let Some(event) = sim.engine.next(end) {
        sim.handle(event);
        let now = sim.engine.now();
        if sim.engine.handled.is_multiple_of(65_536) {
            watch(Progress {
                now,
                end,
                events: sim.engine.handled,
            });
        }
        if now >= forget {
            forget = now + VERDICT_CACHE;
            sim.verdicts.clear();
            sim.reports.clear();
        }
        // Replication progress on a fixed grid, the same in every part of a sharded run.
        while now >= sample && sample <= end {
            let (held, want) = sim.replicated();
            progress.push((sample.as_millis() as u64, held, want));
            sample += every;
        }
        // Convergence is checked every 50 ms of virtual time once the faults have healed.
        if now >= check && now >= fault_end && sim.report.converged_after.is_none() {
            check = now + Duration::from_millis(50);
            sim.note_caught_up(now);
            if sim.idle() && sim.converged() && sim.nodes.iter().all(|n| n.up || n.left) {
                sim.report.converged_after = Some(now - fault_end);
            }
        }
    }
    let mut caught_up: Vec<u64> = sim
        .caught_up
        .iter()
        .flatten()
        .map(|t| t.saturating_sub(fault_end).as_micros() as u64)
        .collect();
    caught_up.sort_unstable();
    sim.report.caught_up_us = caught_up;
    if sim.report.converged_after.is_none() {
        let mut missing = Vec::new();
        let mut replicas = 0;
        for (h, holder) in sim.nodes.iter().enumerate().filter(|(_, n)| !n.left) {
            let shard = &sim.members[usize::from(holder.shard)];
            replicas += shard.len() - 1;
            for (o, owner) in shard
                .iter()
                .map(|&o| (o, &sim.nodes[o]))
                .filter(|(_, o)| o.forks.is_empty())
            {
                let held = holder.held(&owner.key).map_or(0, <[ContentId]>::len);
                let want = sim.target(owner);
                if held != want {
                    missing.push(format!("node {h} holds {held} of node {o}'s {want}"));
                }
            }
        }
        if missing.is_empty() {
            sim.report.violations.push(format!(
                "the mesh was not quiet {} s after the faults healed: jobs or runs still in flight",
                config.recovery.as_secs()
            ));
        } else {
            sim.report.violations.push(format!(
                "not every node held every feed of its shard {} s after the faults healed: {} of {} replicas behind (e.g. {})",
                config.recovery.as_secs(),
                missing.len(),
                replicas,
                missing.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
    }
    // Grid points after the last event: nothing changed since.
    while sample <= end {
        let (held, want) = sim.replicated();
        progress.push((sample.as_millis() as u64, held, want));
        sample += every;
    }
    sim.check_jobs();
    sim.report.events = sim.engine.handled;
    sim.report.trace = *sim.trace.finalize().as_bytes();
    (sim.report, progress)
}

/// The access link a device class names (the first link when it names none that exists).
fn link_index(config: &Config, profile: usize) -> usize {
    config
        .profiles
        .get(profile)
        .and_then(|p| config.links.iter().position(|l| l.name == p.link))
        .unwrap_or(0)
}

/// The replication settings of a node whose shard is `scope`.
fn replicate_config(scope: Scope) -> ReplicateConfig {
    ReplicateConfig {
        scope,
        ..ReplicateConfig::default()
    }
}

/// The node's auction settings, keeping fewer ended jobs' explanations than a node does
/// (the simulator reads only those of jobs in flight; a node serves them to `fabnode jobs`).
fn auction_config() -> AuctionConfig {
    AuctionConfig {
        history_max: 16,
        ..AuctionConfig::default()
    }
}

/// Whether a job's SLA allows a tier.
fn rec_tiers_allow(
    jobs: &BTreeMap<JobId, JobRec>,
    job: &JobId,
    tier: fab_node::sched::Tier,
) -> bool {
    jobs.get(job)
        .is_none_or(|r| r.sla.tiers.is_empty() || r.sla.tiers.contains(&tier))
}

/// The (job, attempt) of a run entry's value.
fn run_of(value: &ciborium::Value) -> Option<(JobId, u32)> {
    let ciborium::Value::Array(items) = value else {
        return None;
    };
    let ciborium::Value::Bytes(job) = items.first()? else {
        return None;
    };
    let attempt = items.get(1)?.as_integer()?;
    Some((
        job.as_slice().try_into().ok()?,
        u32::try_from(attempt).ok()?,
    ))
}

/// The first 8 bytes of a job id, in hex, for messages.
fn hex8(id: &JobId) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::trace_event;

    #[test]
    fn trace_events_keep_node_indices_above_255_apart() {
        let hash = |n: usize| {
            let mut h = blake3::Hasher::new();
            trace_event(&mut h, 1, &[n, 3]);
            *h.finalize().as_bytes()
        };
        // 256 and 512 were both hashed as 0 when indices were cut to one byte.
        assert_ne!(hash(256), hash(512));
        assert_ne!(hash(0), hash(256));
        assert_eq!(hash(9_999), hash(9_999));
    }
}
