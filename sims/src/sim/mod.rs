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
//! - this file: messages, nodes and the event loop (network, gossip delivery, replication);
//! - `gossip`, `jobs`: the gossip mesh and the job path; `checks`: the invariants; `plan`:
//!   drawing a run from its seed and splitting it by shard.

mod checks;
mod config;
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
use fab_mesh::replicate::{Input, Output, ReplicateConfig, Replicator};
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
/// Own checkpoints are gossiped at most this often (the node's `CHECKPOINT_GOSSIP_EVERY`).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// A node below its connection target dials more peers this often (the node's discovery
/// loop, `mesh.peers_target`).
const REDIAL_EVERY: Duration = Duration::from_secs(2);
/// How long a node remembers a gossip message id (gossipsub's `duplicate_cache_time`).
const DUPLICATE_CACHE: Duration = Duration::from_secs(60);
/// The validators' shared verdicts are forgotten this often, so long runs do not keep every
/// payload (a verdict depends on the bytes alone: recomputing it changes nothing).
const VERDICT_CACHE: Duration = Duration::from_secs(60);
/// The auction's clock step while it places jobs (the node's placer ticks as often).
const AUCTION_TICK: Duration = Duration::from_millis(5);
/// Ledger entry kind of a simulated execution: `[job id, attempt, requester]`.
const KIND_RUN: u64 = 98;
/// Regions the fleet is spread over, round robin.
const REGIONS: [&str; 2] = ["eu", "us"];
/// gossipsub's mesh degree D, and the bounds the heartbeat keeps it in (D_lo, D_hi).
pub const MESH_DEGREE: usize = 6;
const MESH_LOW: usize = 4;
const MESH_HIGH: usize = 12;
/// Peers outside the mesh that get IHAVE gossip each heartbeat (D_lazy).
const GOSSIP_LAZY: usize = 6;
/// The node's gossipsub heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Heartbeats a message stays in the message cache (answers IWANT), and of those, the
/// heartbeats whose ids are announced in IHAVE (gossipsub's history_length and
/// history_gossip).
const MCACHE_LEN: usize = 5;
const MCACHE_GOSSIP: usize = 3;
/// Most ids in one IHAVE or IWANT (the node's `max_control_messages_sent` batch).
const CONTROL_IDS_MAX: usize = 512;

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
    /// message cache shift), its replication core's tick, its telemetry when due, the sync of
    /// replica writes, redials.
    Tick(usize),
    /// A node's held checkpoint may go out now.
    Checkpoint(usize),
    Crash(usize),
    Restart(usize),
    /// A node leaves the mesh for good; the k-th joiner joins.
    Leave(usize),
    Join(usize),
    /// A client submits a job at a random node.
    Submit,
    /// A node's auction clock advances (while it places jobs).
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
    /// A [`Event::Checkpoint`] is scheduled.
    checkpoint_timer: bool,
    profile: usize,
    /// Its access link, an index into [`Config::links`].
    link: usize,
    /// The requester side of the scheduler; its state dies with the process.
    auction: Auction<usize>,
    auction_ticking: bool,
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
    replicator: Replicator<usize>,
    /// Ids of the entries held of each other feed, in order. The entries themselves are the
    /// owner's (a replica holding an entry with another id is reported at the end), so a
    /// run keeps one copy of each entry however many nodes hold it.
    replicas: BTreeMap<[u8; 32], Vec<ContentId>>,
    /// Ids of its own entries.
    own_ids: Vec<ContentId>,
    /// The Merkle frontier of its own feed, for its checkpoints.
    tree: Frontier,
    /// When it last gossiped a checkpoint, and whether a newer one is waiting for its turn.
    checkpoint_at: Option<Duration>,
    checkpoint_held: bool,
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
        let scope = Scope::of(config.shards(), &key.public());
        Node {
            key: key.public(),
            keypair: key.clone(),
            shard: scope.shard,
            next_publish: Duration::ZERO,
            checkpoint_timer: false,
            profile,
            link,
            auction: Auction::new(auction_config()),
            auction_ticking: false,
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
            replicator: Replicator::new(replicate_config(scope)),
            replicas: BTreeMap::new(),
            own_ids: Vec::new(),
            tree: Frontier::new(),
            checkpoint_at: None,
            checkpoint_held: false,
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
        self.replicator = replicator;
        self.auction = Auction::new(auction_config());
        self.auction_ticking = false;
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

impl Sim {
    fn faulty(&self) -> bool {
        self.engine.now() < self.fault_end
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        let half = self.nodes.len() / 2;
        self.partition
            .is_some_and(|(s, e)| (s..e).contains(&self.engine.now()) && (a < half) != (b < half))
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.report.messages += 1;
        self.report.bytes += msg.bytes();
        // A gossip message the receiver has already seen, or an IHAVE of nothing but ids it
        // has seen or has on their way, is dropped on arrival (before validation, without an
        // answer; the duplicate cache keeps ids for a minute, far longer than a delivery
        // takes): it is counted and not delivered. So is a copy that would arrive after
        // another one already on its way (below).
        let stale = match &msg {
            Msg::Gossip(p) => self.nodes[to].has_seen(&p.id),
            Msg::IHave(ids) => ids.iter().all(|id| self.nodes[to].expects(id)),
            _ => false,
        };
        if stale {
            return;
        }
        if !self.nodes[to].up
            || self.cut(from, to)
            || (self.faulty() && self.engine.chance(self.config.loss))
        {
            self.report.lost += 1;
            return;
        }
        let bytes = msg.bytes();
        let delay = self.latency(from, to, bytes);
        if let Msg::Gossip(p) = &msg {
            let at = self.engine.now() + delay;
            match self.nodes[to].inbound.get(&p.id) {
                Some(first) if *first <= at => return,
                _ => {
                    self.nodes[to].inbound.insert(p.id, at);
                }
            }
        }
        let twice = matches!(msg, Msg::Gossip(_))
            && self.faulty()
            && self.engine.chance(self.config.duplicate);
        if twice && let Msg::Gossip(p) = &msg {
            let copy = Msg::Gossip(p.clone());
            let again = self.latency(from, to, bytes);
            self.engine.after(
                again,
                Event::Deliver {
                    from,
                    to,
                    msg: Box::new(copy),
                },
            );
        }
        self.engine.after(
            delay,
            Event::Deliver {
                from,
                to,
                msg: Box::new(msg),
            },
        );
    }

    fn apply(&mut self, node: usize, outputs: Vec<Output<usize>>) {
        for o in outputs {
            match o {
                Output::Store { feed, entries } => {
                    self.nodes[node]
                        .replicas
                        .entry(feed.to_bytes())
                        .or_default()
                        .extend(entries.iter().map(SignedEntry::id));
                }
                Output::Trust { .. } => {}
                Output::AskHeads { peer } => self.send(node, peer, Msg::HeadsRequest),
                Output::Request {
                    peer,
                    feed,
                    start,
                    count,
                } => self.send(node, peer, Msg::RangeRequest { feed, start, count }),
                Output::Penalize { peer, reason } => self
                    .report
                    .violations
                    .push(format!("honest node {peer} penalised by {node}: {reason}")),
                Output::Conflict { feed, .. }
                    if self
                        .index
                        .get(&feed.to_bytes())
                        .is_some_and(|&o| self.nodes[o].byzantine) =>
                {
                    self.report.forks_noticed += 1;
                    if let Some(&o) = self.index.get(&feed.to_bytes()) {
                        *self.noticed.entry(o).or_default() += 1;
                    }
                }
                Output::Conflict { feed, seq, detail } => self.report.violations.push(format!(
                    "conflict reported by {node} on {} at {seq}: {detail}",
                    feed.peer_id()
                )),
                // The proof a node keeps must verify offline and name an equivocator.
                Output::Evidence { feed, held, other } => {
                    let proof = fab_ledger::evidence::Evidence::entries(&held, &other);
                    let byzantine = self
                        .index
                        .get(&feed.to_bytes())
                        .is_some_and(|&o| self.nodes[o].byzantine);
                    match proof.verify() {
                        Ok(e) if e.feed == feed && byzantine => self.report.forks_proven += 1,
                        Ok(_) => self.report.violations.push(format!(
                            "node {node} holds evidence against honest node {}",
                            feed.peer_id()
                        )),
                        Err(e) => self.report.violations.push(format!(
                            "node {node} holds evidence that does not verify: {e}"
                        )),
                    }
                }
            }
        }
    }

    fn input(&mut self, node: usize, input: Input<usize>) {
        let mut out = Vec::new();
        let now = self.engine.now();
        self.nodes[node].replicator.handle(input, now, &mut out);
        self.apply(node, out);
    }

    fn handle(&mut self, event: Event) {
        let now = self.engine.now();

        match event {
            Event::Append => {
                if now < self.fault_end {
                    let n = self.engine.uniform(0, self.nodes.len() as u64 - 1) as usize;
                    let gap = self.append_gap_us;
                    let next = Duration::from_micros(self.engine.uniform(gap / 2, gap * 3 / 2));
                    self.engine.after(next, Event::Append);
                    if self.nodes[n].up {
                        trace_event(&mut self.trace, 0, &[n]);
                        let seq = self.nodes[n].own.len() as u64;
                        let value = ciborium::Value::Integer(seq.into());
                        self.append(n, EntryBody::Unknown { kind: 99, value });
                    }
                }
            }
            Event::Submit => {
                if now < self.fault_end {
                    // Thinning: candidates arrive at the peak rate and each is kept with the
                    // current rate's share of it.
                    let peak = self.config.jobs_per_s * self.config.arrivals.peak();
                    let gap = self.engine.exponential(peak);
                    self.engine.after(gap, Event::Submit);
                    let keep = self.config.arrivals.factor(now) / self.config.arrivals.peak();
                    if self.engine.chance(keep) {
                        self.submit();
                    }
                }
            }
            Event::Checkpoint(n) => {
                self.nodes[n].checkpoint_timer = false;
                self.checkpoint_if_due(n);
            }
            Event::AuctionTick(n) => {
                self.nodes[n].auction_ticking = false;
                if self.nodes[n].up {
                    self.auction(n, auction::Input::Tick);
                }
            }
            Event::Finish { node, life } => {
                if self.nodes[node].up && self.nodes[node].life == life {
                    self.finish(node);
                }
            }
            Event::Commit { node, life, run } => {
                if self.nodes[node].up && self.nodes[node].life == life {
                    self.commit(node, *run);
                }
            }
            Event::Deliver { from, to, msg } => {
                if let Msg::Gossip(p) = &*msg
                    && self.nodes[to].inbound.get(&p.id).is_some_and(|t| *t <= now)
                {
                    self.nodes[to].inbound.remove(&p.id);
                }
                if !self.nodes[to].up {
                    self.report.lost += 1;
                    return;
                }
                trace_event(&mut self.trace, 1, &[from, to]);
                match *msg {
                    Msg::Gossip(p) if p.telemetry => self.telemetry_in(to, from, p),
                    Msg::IHave(ids) => {
                        let mut want: Vec<[u8; 32]> = ids
                            .into_iter()
                            .filter(|id| !self.nodes[to].has_seen(id))
                            .collect();
                        want.truncate(CONTROL_IDS_MAX);
                        if !want.is_empty() {
                            self.send(to, from, Msg::IWant(want));
                        }
                    }
                    Msg::IWant(ids) => {
                        let found: Vec<Payload> = ids
                            .iter()
                            .filter_map(|id| {
                                self.nodes[to]
                                    .mcache
                                    .iter()
                                    .flatten()
                                    .find(|p| p.id == *id)
                                    .cloned()
                            })
                            .collect();
                        for p in found {
                            self.send(to, from, Msg::Gossip(p));
                        }
                    }
                    Msg::Call { job, shape, sla } => {
                        let own = self.telemetry_of(to);
                        let requester = self.nodes[from].key.to_bytes();
                        let call = bidder::Call {
                            job: &shape,
                            sla: &sla,
                            link: self.link_to(to, from),
                            requester: &requester,
                        };
                        let holds = self.holds(to, &shape.model_digest);
                        let reply = match bidder::answer(
                            &own,
                            holds,
                            call,
                            &AllowAll,
                            BidderLimits::default(),
                        ) {
                            Answer::Bid(estimate) => Msg::Bid { job, estimate },
                            Answer::Decline(reason) => Msg::Decline { job, reason },
                        };
                        self.rpc(to, from, reply);
                    }
                    Msg::Bid { job, estimate } => self.auction(
                        to,
                        auction::Input::Bid {
                            job,
                            from,
                            estimate,
                        },
                    ),
                    Msg::Decline { job, reason } => {
                        self.auction(to, auction::Input::Decline { job, from, reason })
                    }
                    Msg::Exec { job, attempt } => self.exec_in(to, from, job, attempt),
                    Msg::Result { job } => {
                        if self.nodes[to].auction.is_running(&job, &from) {
                            self.auction(to, auction::Input::Done { job, from });
                        }
                    }
                    Msg::Refused { job, reason } => {
                        if self.nodes[to].auction.is_running(&job, &from) {
                            self.auction(to, auction::Input::Failed { job, from, reason });
                        }
                    }
                    Msg::Gossip(payload) => {
                        let id = payload.id;
                        if !self.nodes[to].first_sight(id, now) {
                            return; // a duplicate, dropped before validation
                        }
                        // Every node of a run (or of a sharded run's part) is of one shard, so
                        // the verdict is the same for each.
                        let scope = Scope {
                            shards: self.config.shards(),
                            shard: self.nodes[to].shard,
                        };
                        let verdict = self
                            .verdicts
                            .entry(id)
                            .or_insert_with(|| match validate_in(NETWORK, &scope, &payload.bytes) {
                                Verdict::Accept(v) => Ok(*v),
                                Verdict::Reject(reason) => Err(reason),
                            })
                            .clone();
                        let own = self.nodes[to].key;
                        match verdict {
                            Ok(Valid::Entry(entry)) if entry.body().feed != own => {
                                self.input(to, Input::Entry { from, entry });
                                self.forward(to, from, payload);
                            }
                            Ok(Valid::Entries(entries))
                                if entries.first().is_some_and(|e| e.body().feed != own) =>
                            {
                                for entry in entries {
                                    self.input(to, Input::Entry { from, entry });
                                }
                                self.forward(to, from, payload);
                            }
                            Ok(Valid::Checkpoint { feed, checkpoint }) if feed != own => {
                                let input = Input::Checkpoint {
                                    from,
                                    feed,
                                    checkpoint,
                                };
                                self.input(to, input);
                                self.forward(to, from, payload);
                            }
                            Ok(_) => {} // its own, back from a peer
                            Err(_) if self.nodes[from].forger => {
                                // Dropped, not forwarded; gossipsub penalises the sender.
                                self.report.forgeries_rejected += 1;
                            }
                            Err(reason) => self
                                .report
                                .violations
                                .push(format!("{to} rejected honest gossip from {from}: {reason}")),
                        }
                    }
                    Msg::HeadsRequest => {
                        let me = &self.nodes[to];
                        let mut heads = vec![(me.key, me.own.len() as u64)];
                        for (feed, ids) in &me.replicas {
                            if let (false, Some(&o)) = (ids.is_empty(), self.index.get(feed)) {
                                heads.push((self.nodes[o].key, ids.len() as u64));
                            }
                        }
                        self.send(to, from, Msg::Heads(heads));
                    }
                    Msg::Heads(heads) => {
                        let own = self.nodes[to].key;
                        let heads = heads.into_iter().filter(|(f, _)| *f != own).collect();
                        self.input(to, Input::Heads { from, heads });
                    }
                    Msg::RangeRequest { feed, start, count } => {
                        // What it holds, entry by entry as its author signed it.
                        let ids = self.nodes[to].held(&feed).unwrap_or(&[]);
                        let entries: Vec<Vec<u8>> = match self.index.get(&feed.to_bytes()) {
                            Some(&o) => ids
                                .iter()
                                .enumerate()
                                .skip(start as usize)
                                .take(count.min(512) as usize)
                                .map_while(|(i, id)| {
                                    self.entry_of(o, i, id).map(SignedEntry::encode)
                                })
                                .collect(),
                            None => Vec::new(),
                        };
                        self.send(
                            to,
                            from,
                            Msg::Range {
                                feed,
                                start,
                                entries,
                            },
                        );
                    }
                    Msg::Range {
                        feed,
                        start,
                        entries,
                    } => {
                        if feed != self.nodes[to].key {
                            self.input(
                                to,
                                Input::Range {
                                    from,
                                    feed,
                                    start,
                                    entries,
                                },
                            );
                        }
                    }
                }
            }
            Event::Tick(n) => {
                self.engine.after(HEARTBEAT, Event::Tick(n));
                let node = &mut self.nodes[n];
                if node.up && now >= node.synced_at + Duration::from_secs(1) {
                    // The once-a-second sync of replica writes.
                    node.synced = node.replicas.iter().map(|(k, v)| (*k, v.len())).collect();
                    node.synced_at = now;
                }
                if self.nodes[n].up {
                    self.heartbeat(n);
                    if self.nodes[n].forger && now < self.fault_end && self.engine.chance(0.4) {
                        self.forge(n);
                    }
                    self.input(n, Input::Tick);
                    if now >= self.nodes[n].dialed_at + REDIAL_EVERY {
                        self.nodes[n].dialed_at = now;
                        self.redial(n);
                    }
                    if self.config.jobs_per_s > 0.0 && now >= self.nodes[n].next_publish {
                        let every = self.config.telemetry_every;
                        let jitter = self.engine.uniform(0, every.as_micros() as u64 / 10);
                        self.nodes[n].next_publish = now + every + Duration::from_micros(jitter);
                        self.maybe_publish(n);
                    }
                }
            }
            Event::Crash(n) => {
                if !self.nodes[n].up {
                    return; // already down: a process crashes once
                }
                trace_event(&mut self.trace, 2, &[n]);
                self.stop(n, "the submitting node crashed");
                self.engine.after(Duration::from_secs(1), Event::Restart(n));
            }
            Event::Leave(n) => {
                if self.nodes[n].left {
                    return;
                }
                trace_event(&mut self.trace, 6, &[n]);
                if self.nodes[n].up {
                    self.stop(n, "the submitting node left the mesh");
                }
                self.nodes[n].left = true;
            }
            Event::Join(k) => self.join(k),
            Event::Restart(n) => {
                if self.nodes[n].left {
                    return;
                }
                trace_event(&mut self.trace, 3, &[n]);
                if self.config.planted == Planted::StaleRestart {
                    self.nodes[n].up = true;
                } else {
                    let replicator = self.rebuilt_replicator(n);
                    let config = self.config.clone();
                    self.nodes[n].restart(replicator, &config);
                }
                for p in self.links[n].clone() {
                    if self.nodes[p].up {
                        self.peer_up(n, p);
                    }
                }
            }
        }
    }

    /// The replication core a restarting node builds from what its store kept: each
    /// replica's length, head, last time and Merkle frontier.
    fn rebuilt_replicator(&self, n: usize) -> Replicator<usize> {
        let scope = Scope::of(self.config.shards(), &self.nodes[n].key);
        let mut r = Replicator::new(replicate_config(scope));
        for (feed, ids) in &self.nodes[n].replicas {
            let Some(&o) = self.index.get(feed) else {
                continue;
            };
            let entries: Vec<&SignedEntry> = ids
                .iter()
                .enumerate()
                .map_while(|(i, id)| self.entry_of(o, i, id))
                .collect();
            let Some(last) = entries.last() else { continue };
            let mut tree = Frontier::new();
            for e in &entries {
                tree.append(leaf_hash(&e.encode()));
            }
            r.resume(
                self.nodes[o].key,
                entries.len() as u64,
                Some(last.id()),
                Some(last.body().time_ms),
                tree,
                None,
            );
        }
        r
    }

    /// A node's process ends (crash or leave): replica writes since its last sync are lost,
    /// runs in progress die, the jobs it was placing fail (their clients were connected to
    /// it), and requesters whose runs it held see the connection close.
    fn stop(&mut self, n: usize, why: &str) {
        let node = &mut self.nodes[n];
        for (feed, entries) in node.replicas.iter_mut() {
            entries.truncate(node.synced.get(feed).copied().unwrap_or(0));
        }
        node.replicas.retain(|_, v| !v.is_empty());
        node.up = false;
        node.life += 1;
        node.queue.clear();
        node.running.clear();
        node.committing = 0;
        for rec in self.jobs.values_mut() {
            if rec.submitter == n && rec.outcome.is_none() {
                rec.outcome = Some(Err(why.to_owned()));
            }
        }
        let waiting: Vec<(JobId, usize)> = self
            .jobs
            .iter()
            .filter(|(job, r)| {
                r.outcome.is_none()
                    && self.nodes[r.submitter].up
                    && self.nodes[r.submitter].auction.is_running(job, &n)
            })
            .map(|(job, r)| (*job, r.submitter))
            .collect();
        for (job, requester) in waiting {
            let reason = "connection closed".to_owned();
            let delay = self.latency(n, requester, 0);
            self.engine.after(
                delay,
                Event::Deliver {
                    from: n,
                    to: requester,
                    msg: Box::new(Msg::Refused { job, reason }),
                },
            );
        }
        for p in self.links[n].clone() {
            if self.nodes[p].up && self.same_shard(n, p) {
                self.input(p, Input::PeerDown(n));
            }
        }
    }

    fn same_shard(&self, a: usize, b: usize) -> bool {
        self.nodes[a].shard == self.nodes[b].shard
    }

    /// `a` and `b` are connected: peers of one shard replicate with each other.
    fn peer_up(&mut self, a: usize, b: usize) {
        if self.same_shard(a, b) {
            self.input(a, Input::PeerUp(b));
            self.input(b, Input::PeerUp(a));
        }
    }

    /// A new connection between `a` and `b`.
    fn connect(&mut self, a: usize, b: usize) {
        self.links[a].push(b);
        self.links[b].push(a);
        if self.same_shard(a, b) {
            self.shard_links[a].push(b);
            self.shard_links[b].push(a);
        }
        self.peer_up(a, b);
    }

    /// `n`'s connections to peers of its shard: where its gossip goes.
    fn gossip_peers(&self, n: usize) -> Vec<usize> {
        self.shard_links[n].clone()
    }

    /// Dials live peers of its shard until `n` has `degree` live connections there (or to
    /// every live member), as the node's discovery looks for its shard's members.
    fn redial(&mut self, n: usize) {
        let live = |s: &Self, p: usize| s.nodes[p].up && !s.nodes[p].left;
        let mut have = self.shard_links[n]
            .iter()
            .filter(|p| live(self, **p))
            .count();
        if have >= self.config.degree {
            return;
        }
        let mut others: Vec<usize> = self.members[usize::from(self.nodes[n].shard)]
            .iter()
            .copied()
            .filter(|p| *p != n && live(self, *p) && !self.links[n].contains(p))
            .collect();
        while have < self.config.degree && !others.is_empty() {
            let i = self.engine.uniform(0, others.len() as u64 - 1) as usize;
            let p = others.swap_remove(i);
            self.connect(n, p);
            have += 1;
        }
    }

    /// A new node joins: its device class drawn like the others', it dials `degree` live
    /// peers and catches up on every feed through them.
    fn join(&mut self, k: usize) {
        let Some(joiner) = self.joiners.get(k).cloned() else {
            return;
        };
        let n = self.nodes.len();
        trace_event(&mut self.trace, 7, &[n]);
        let link = link_index(&self.config, joiner.profile);
        let node = Node::new(
            joiner.secret,
            joiner.profile,
            link,
            joiner.battery_mj,
            &self.config,
        );
        let shard = usize::from(node.shard);
        self.nodes.push(node);
        self.index.insert(self.nodes[n].key.to_bytes(), n);
        self.links.push(Vec::new());
        self.shard_links.push(Vec::new());
        // It dials peers of its shard (found through the DHT); with none yet, any peer.
        let mut pool = self.members[shard].clone();
        if pool.is_empty() {
            pool = (0..n).collect();
        }
        self.members[shard].push(n);
        for _ in 0..self.config.degree.max(1) {
            let p = pool[self.engine.uniform(0, pool.len() as u64 - 1) as usize];
            if self.nodes[p].up && !self.links[n].contains(&p) {
                self.connect(n, p);
            }
        }
        let offset = Duration::from_micros(self.engine.uniform(0, 500_000));
        self.engine.after(offset, Event::Tick(n));
        self.heartbeat(n);
    }

    /// The access link of a node.
    fn link_of(&self, n: usize) -> &LinkProfile {
        &self.config.links[self.nodes[n].link]
    }

    /// One message's delay from `a` to `b`: both access links, the wide area between regions,
    /// the size over the slower link, and a clog on either end.
    fn latency(&mut self, a: usize, b: usize, bytes: u64) -> Duration {
        let (la, lb) = (self.link_of(a), self.link_of(b));
        let (ra, rb) = (la.one_way_us, lb.one_way_us);
        let bandwidth = la.bytes_per_ms.min(lb.bytes_per_ms).max(1);
        let mut us = self.engine.uniform(ra.0, ra.1) + self.engine.uniform(rb.0, rb.1);
        if a % REGIONS.len() != b % REGIONS.len() {
            us += self.engine.uniform(WAN_ONE_WAY_US.0, WAN_ONE_WAY_US.1);
        }
        us += bytes * 1000 / bandwidth;
        if self.clogged(a) || self.clogged(b) {
            us += self.engine.uniform(1_000_000, 3_000_000);
        }
        Duration::from_micros(us)
    }

    /// Whether a node's links are clogged now.
    fn clogged(&self, n: usize) -> bool {
        self.partition_window()
            .is_some_and(|(s, e)| (s..e).contains(&self.engine.now()) && self.clog.contains(&n))
    }

    /// The middle third of the fault phase.
    fn partition_window(&self) -> Option<(Duration, Duration)> {
        let third = self.fault_end / 3;
        Some((third, third * 2))
    }

    /// What a node knows of the link to a peer (a node measures it with ping): the mean round
    /// trip and the slower end's bandwidth.
    fn link_to(&self, a: usize, b: usize) -> Link {
        let (la, lb) = (self.link_of(a), self.link_of(b));
        let mut rtt = la.one_way_us.0 + la.one_way_us.1 + lb.one_way_us.0 + lb.one_way_us.1;
        if a % REGIONS.len() != b % REGIONS.len() {
            rtt += WAN_ONE_WAY_US.0 + WAN_ONE_WAY_US.1;
        }
        Link {
            rtt_us: rtt,
            bytes_per_ms: la.bytes_per_ms.min(lb.bytes_per_ms),
        }
    }

    /// Appends to `n`'s own feed and floods the entry to its connections.
    fn append(&mut self, n: usize, body: EntryBody) {
        let now_ms = self.engine.now().as_millis() as u64;
        // An equivocator signs, one time in five, a second entry for the same position.
        let twin = (self.nodes[n].byzantine && self.engine.chance(0.2)).then(|| {
            let mut w = self.nodes[n].writer.clone();
            let value = ciborium::Value::Integer(self.report.forks.into());
            w.append(EntryBody::Unknown { kind: 97, value }, now_ms)
        });
        let entry = self.nodes[n].writer.append(body, now_ms);
        self.nodes[n].own_ids.push(entry.id());
        self.nodes[n].tree.append(leaf_hash(&entry.encode()));
        self.nodes[n].own.push(entry.clone());
        self.nodes[n].checkpoint_held = true;
        self.report.entries += 1;
        let payload = GossipMsg::Entry(entry.encode()).encode();
        let Some(twin) = twin else {
            self.publish(n, Payload::new(payload, false));
            self.checkpoint_if_due(n);
            return;
        };
        // One version to half its peers, the other to the rest; both answer IWANT.
        self.report.forks += 1;
        trace_event(&mut self.trace, 8, &[n]);
        self.nodes[n].forks.insert(twin.id(), twin.clone());
        let other = GossipMsg::Entry(twin.encode()).encode();
        let links = self.gossip_peers(n);
        let (first, rest) = links.split_at(links.len() / 2);
        self.publish_to(n, Payload::new(payload, false), first);
        self.publish_to(n, Payload::new(other, false), rest);
        self.checkpoint_if_due(n);
    }

    /// A forger sends one forged message to every connection: another node's newest entry
    /// re-signed with its own key (a valid signature by the wrong key), or garbage.
    fn forge(&mut self, n: usize) {
        let victim = self.engine.uniform(0, self.nodes.len() as u64 - 1) as usize;
        let payload = match self.nodes[victim].own.last() {
            Some(e) if victim != n && self.engine.chance(0.7) => {
                let forged = fab_ledger::Signed::sign(e.body().clone(), &self.nodes[n].keypair);
                GossipMsg::Entry(forged.encode()).encode()
            }
            _ => {
                let mut junk = GossipMsg::Entry(self.engine.bytes32().to_vec()).encode();
                junk.extend_from_slice(&self.engine.bytes32());
                junk
            }
        };
        self.report.forgeries += 1;
        trace_event(&mut self.trace, 9, &[n]);
        let payload = Payload::new(payload, false);
        for to in self.gossip_peers(n) {
            self.send(n, to, Msg::Gossip(payload.clone()));
        }
    }

    /// Gossips `n`'s newest checkpoint (its signed tree head) when one is held and the last
    /// went out at least [`CHECKPOINT_EVERY`] ago, as a node does after its commits.
    fn checkpoint_if_due(&mut self, n: usize) {
        let now = self.engine.now();
        let node = &self.nodes[n];
        if !node.up || !node.checkpoint_held {
            return;
        }
        if let Some(t) = node.checkpoint_at
            && now < t + CHECKPOINT_EVERY
        {
            // Held until its turn, as the node's mesh task holds it.
            if !node.checkpoint_timer {
                self.nodes[n].checkpoint_timer = true;
                self.engine
                    .after(t + CHECKPOINT_EVERY - now, Event::Checkpoint(n));
            }
            return;
        }
        let size = node.own.len() as u64;
        let cp = fab_ledger::checkpoint::Checkpoint::sign(
            &node.keypair,
            NETWORK,
            size,
            node.tree.root(),
        );
        let payload = GossipMsg::Checkpoint {
            feed: node.key.to_bytes(),
            note: cp.note,
        }
        .encode();
        let node = &mut self.nodes[n];
        node.checkpoint_held = false;
        node.checkpoint_at = Some(now);
        self.publish(n, Payload::new(payload, false));
    }

    /// The entry a holder has at position `i` of `owner`'s feed, by its id: the owner's own,
    /// or a second version the owner signed.
    fn entry_of(&self, owner: usize, i: usize, id: &ContentId) -> Option<&SignedEntry> {
        let o = &self.nodes[owner];
        match o.own.get(i) {
            Some(e) if o.own_ids[i] == *id => Some(e),
            _ => o.forks.get(id),
        }
    }

    /// A request-response message over a direct connection: TCP does not lose it, but a
    /// partition or a crashed peer does, and an exec request to an unreachable peer comes back
    /// as a refusal (the dial fails).
    fn rpc(&mut self, from: usize, to: usize, msg: Msg) {
        self.report.messages += 1;
        self.report.bytes += msg.bytes();
        let delay = self.latency(from, to, msg.bytes());
        if !self.nodes[to].up || self.cut(from, to) {
            self.report.lost += 1;
            if let Msg::Exec { job, .. } = msg {
                let reason = "peer unreachable".to_owned();
                self.engine.after(
                    delay * 2,
                    Event::Deliver {
                        from: to,
                        to: from,
                        msg: Box::new(Msg::Refused { job, reason }),
                    },
                );
            }
            return;
        }
        self.engine.after(
            delay,
            Event::Deliver {
                from,
                to,
                msg: Box::new(msg),
            },
        );
    }
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
                sim.input(a, Input::PeerUp(b));
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
