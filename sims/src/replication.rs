//! Ledger replication across a simulated mesh: every node appends signed entries to its own
//! feed, floods them to its peers and follows every other feed with the node's real
//! replication core ([`fab_mesh::replicate::Replicator`]) and the real gossip decoder and
//! validator ([`fab_mesh::validate`]). A fault phase (loss, a partition, crashes) is followed
//! by a recovery phase in which every node must end up holding every feed.
//!
//! Each node connects to [`Config::degree`] random peers at start (plus those that dial it, and a
//! ring that keeps the graph connected). Gossip is modelled on the node's gossipsub settings:
//! the author floods a new entry to every connected peer (flood publishing), and every node
//! that accepts an entry for the first time forwards it to [`MESH_DEGREE`] random connected
//! peers (its mesh); duplicates are dropped by message id before validation. No IHAVE/IWANT: catch-up (heads every few seconds, ranges on demand) is
//! what repairs the rest of what loss, partitions and crashes drop. A crashed node keeps what
//! it had stored and nothing in flight.

use std::collections::BTreeMap;
use std::time::Duration;

use fab_ledger::merkle::{Frontier, leaf_hash};
use fab_ledger::{EntryBody, FeedWriter, Keypair, PublicKey, SignedEntry};
use fab_mesh::replicate::{Input, Output, ReplicateConfig, Replicator};
use fab_mesh::validate::{Valid, Verdict, validate};
use fab_mesh::wire::GossipMsg;

use crate::engine::Engine;

const NETWORK: &str = "sim";
/// Peers a node forwards a newly accepted entry to (gossipsub's D).
pub const MESH_DEGREE: usize = 6;

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
    /// One-way latency range of every link, microseconds.
    pub latency_us: (u64, u64),
    /// Probability that a message is lost, during the fault phase.
    pub loss: f64,
    /// Cut the mesh in two halves for the middle third of the fault phase.
    pub partition: bool,
    /// Nodes crashed (and restarted 1 s later) during the fault phase.
    pub crashes: usize,
    /// Peers each node dials at start (the node's connection target); with the peers that
    /// dial it and a ring that keeps the graph connected, these are its connections.
    pub degree: usize,
    /// Test-only planted bug: a restarted node keeps its replication core's pre-crash state
    /// instead of rebuilding it from what its store kept. The invariants must catch it.
    pub planted_bug: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            peers: 20,
            seed: 1,
            appends_per_s: 50,
            fault_phase: Duration::from_secs(10),
            recovery: Duration::from_secs(20),
            latency_us: (200, 2_000),
            loss: 0.05,
            partition: true,
            crashes: 2,
            degree: 8,
            planted_bug: false,
        }
    }
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub messages: u64,
    pub bytes: u64,
    pub lost: u64,
    /// Virtual time from the end of the fault phase until every node held every feed.
    pub converged_after: Option<Duration>,
    /// Invariants, by name, with what broke them.
    pub violations: Vec<String>,
    /// BLAKE3 over every event handled: equal for equal seeds.
    pub trace: [u8; 32],
    pub events: u64,
}

enum Msg {
    Gossip(Vec<u8>),
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
            Msg::Gossip(b) => b.len() as u64,
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
    Tick(usize),
    Crash(usize),
    Restart(usize),
}

struct Node {
    key: PublicKey,
    writer: FeedWriter,
    own: Vec<SignedEntry>,
    replicator: Replicator<usize>,
    replicas: BTreeMap<[u8; 32], Vec<SignedEntry>>,
    /// Gossip already seen (gossipsub's duplicate cache), by message id: BLAKE3 of the payload,
    /// as the node's gossipsub config sets it; checked before validation, as there.
    seen: std::collections::BTreeSet<[u8; 32]>,
    up: bool,
    /// Replica entries per feed that were durable at the last sync: the node writes replicas
    /// to disk at least once a second (`REPLICA_SYNC`), so a crash loses the ones after it.
    synced: BTreeMap<[u8; 32], usize>,
    synced_at: Duration,
}

impl Node {
    fn new(secret: [u8; 32]) -> Self {
        let key = Keypair::from_secret(secret);
        Node {
            key: key.public(),
            writer: FeedWriter::resume(key, 0, None),
            own: Vec::new(),
            replicator: Replicator::new(ReplicateConfig::default()),
            replicas: BTreeMap::new(),
            seen: Default::default(),
            synced: BTreeMap::new(),
            synced_at: Duration::ZERO,
            up: true,
        }
    }

    /// A restart: the replication core is rebuilt from what the node had stored.
    fn restart(&mut self) {
        let mut r = Replicator::new(ReplicateConfig::default());
        for entries in self.replicas.values() {
            let Some(last) = entries.last() else { continue };
            let mut tree = Frontier::new();
            for e in entries {
                tree.append(leaf_hash(&e.encode()));
            }
            r.resume(
                last.body().feed,
                entries.len() as u64,
                Some(last.id()),
                Some(last.body().time_ms),
                tree,
                None,
            );
        }
        self.replicator = r;
        self.up = true;
    }

    fn held(&self, feed: &PublicKey) -> Option<&Vec<SignedEntry>> {
        if *feed == self.key {
            Some(&self.own)
        } else {
            self.replicas.get(&feed.to_bytes())
        }
    }
}

struct Sim {
    config: Config,
    engine: Engine<Event>,
    nodes: Vec<Node>,
    /// Each node's connections.
    links: Vec<Vec<usize>>,
    fault_end: Duration,
    partition: Option<(Duration, Duration)>,
    report: Report,
    trace: blake3::Hasher,
    /// The validator's verdict per distinct payload. Validation depends on the bytes alone, so
    /// every node would reach the same one; computing it once per payload instead of once per
    /// node is most of the simulator's speed.
    verdicts: std::collections::HashMap<[u8; 32], Result<Vec<SignedEntry>, String>>,
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
        if !self.nodes[to].up
            || self.cut(from, to)
            || (self.faulty() && self.engine.chance(self.config.loss))
        {
            self.report.lost += 1;
            return;
        }
        let (lo, hi) = self.config.latency_us;
        let delay = Duration::from_micros(self.engine.uniform(lo, hi));
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
                        .extend(entries);
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
                Output::Conflict { feed, seq, detail } => self.report.violations.push(format!(
                    "conflict reported by {node} on {} at {seq}: {detail}",
                    feed.peer_id()
                )),
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
                    let gap = 1_000_000 / self.config.appends_per_s.max(1);
                    let next = Duration::from_micros(self.engine.uniform(gap / 2, gap * 3 / 2));
                    self.engine.after(next, Event::Append);
                    if self.nodes[n].up {
                        self.trace.update(&[0, n as u8]);
                        let seq = self.nodes[n].own.len() as u64;
                        let value = ciborium::Value::Integer(seq.into());
                        let entry = self.nodes[n].writer.append(
                            EntryBody::Unknown { kind: 99, value },
                            now.as_millis() as u64,
                        );
                        self.nodes[n].own.push(entry.clone());
                        self.report.entries += 1;
                        let payload = GossipMsg::Entry(entry.encode()).encode();
                        // Flood publishing: to every connected peer.
                        for to in self.links[n].clone() {
                            self.send(n, to, Msg::Gossip(payload.clone()));
                        }
                    }
                }
            }
            Event::Deliver { from, to, msg } => {
                if !self.nodes[to].up {
                    self.report.lost += 1;
                    return;
                }
                self.trace.update(&[1, from as u8, to as u8]);
                match *msg {
                    Msg::Gossip(payload) => {
                        let id = *blake3::hash(&payload).as_bytes();
                        if !self.nodes[to].seen.insert(id) {
                            return; // a duplicate, dropped before validation
                        }
                        let verdict = self
                            .verdicts
                            .entry(id)
                            .or_insert_with(|| match validate(NETWORK, &payload) {
                                Verdict::Accept(v) => match *v {
                                    Valid::Entry(e) => Ok(vec![e]),
                                    Valid::Entries(es) => Ok(es),
                                    Valid::Checkpoint { .. } => Err("a checkpoint".into()),
                                },
                                Verdict::Reject(reason) => Err(reason),
                            })
                            .clone();
                        match verdict {
                            Ok(entries) => {
                                if entries
                                    .first()
                                    .is_some_and(|e| e.body().feed != self.nodes[to].key)
                                {
                                    for entry in entries {
                                        self.input(to, Input::Entry { from, entry });
                                    }
                                    self.forward(to, from, payload);
                                }
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
                        for entries in me.replicas.values() {
                            if let Some(last) = entries.last() {
                                heads.push((last.body().feed, entries.len() as u64));
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
                        let entries: Vec<Vec<u8>> = self.nodes[to]
                            .held(&feed)
                            .map(|es| {
                                es.iter()
                                    .skip(start as usize)
                                    .take(count.min(512) as usize)
                                    .map(SignedEntry::encode)
                                    .collect()
                            })
                            .unwrap_or_default();
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
                self.engine
                    .after(Duration::from_millis(250), Event::Tick(n));
                let node = &mut self.nodes[n];
                if node.up && now >= node.synced_at + Duration::from_secs(1) {
                    // The once-a-second sync of replica writes.
                    node.synced = node.replicas.iter().map(|(k, v)| (*k, v.len())).collect();
                    node.synced_at = now;
                }
                if self.nodes[n].up {
                    self.input(n, Input::Tick);
                }
            }
            Event::Crash(n) => {
                self.trace.update(&[2, n as u8]);
                // Replica writes since the last sync are lost with the process.
                let node = &mut self.nodes[n];
                for (feed, entries) in node.replicas.iter_mut() {
                    entries.truncate(node.synced.get(feed).copied().unwrap_or(0));
                }
                node.replicas.retain(|_, v| !v.is_empty());
                node.up = false;
                for p in self.links[n].clone() {
                    if self.nodes[p].up {
                        self.input(p, Input::PeerDown(n));
                    }
                }
                self.engine.after(Duration::from_secs(1), Event::Restart(n));
            }
            Event::Restart(n) => {
                self.trace.update(&[3, n as u8]);
                if self.config.planted_bug {
                    self.nodes[n].up = true;
                } else {
                    self.nodes[n].restart();
                }
                for p in self.links[n].clone() {
                    if self.nodes[p].up {
                        self.input(p, Input::PeerUp(n));
                        self.input(n, Input::PeerUp(p));
                    }
                }
            }
        }
    }

    /// Forwards a newly accepted gossip message to up to [`MESH_DEGREE`] random connected
    /// peers (its gossipsub mesh), not back to the sender.
    fn forward(&mut self, node: usize, from: usize, payload: Vec<u8>) {
        let mut candidates: Vec<usize> = self.links[node]
            .iter()
            .copied()
            .filter(|p| *p != from)
            .collect();
        for _ in 0..MESH_DEGREE.min(candidates.len()) {
            let i = self.engine.uniform(0, candidates.len() as u64 - 1) as usize;
            let p = candidates.swap_remove(i);
            self.send(node, p, Msg::Gossip(payload.clone()));
        }
    }

    /// Whether every node holds every other node's whole feed, with the owner's head.
    fn converged(&self) -> bool {
        self.nodes.iter().all(|holder| {
            self.nodes.iter().all(|owner| {
                holder.held(&owner.key).map_or(owner.own.is_empty(), |es| {
                    es.len() == owner.own.len()
                        && es.last().map(SignedEntry::id) == owner.own.last().map(SignedEntry::id)
                })
            })
        })
    }
}

/// Runs a scenario to the end of its recovery phase.
pub fn run(config: &Config) -> Report {
    let mut engine: Engine<Event> = Engine::new(config.seed);
    let nodes: Vec<Node> = (0..config.peers)
        .map(|_| Node::new(engine.bytes32()))
        .collect();
    let fault_end = config.fault_phase;
    let third = config.fault_phase / 3;
    // Connections: a ring (so the graph is connected) plus `degree` random dials per node.
    let n = nodes.len();
    let mut links: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); n];
    for a in 0..n {
        let b = (a + 1) % n;
        if a != b {
            links[a].insert(b);
            links[b].insert(a);
        }
        for _ in 0..config.degree {
            let b = engine.uniform(0, n as u64 - 1) as usize;
            if a != b {
                links[a].insert(b);
                links[b].insert(a);
            }
        }
    }
    let links: Vec<Vec<usize>> = links.into_iter().map(|l| l.into_iter().collect()).collect();
    let mut sim = Sim {
        partition: config.partition.then_some((third, third * 2)),
        config: config.clone(),
        engine,
        nodes,
        links,
        fault_end,
        report: Report {
            entries: 0,
            messages: 0,
            bytes: 0,
            lost: 0,
            converged_after: None,
            violations: Vec::new(),
            trace: [0; 32],
            events: 0,
        },
        trace: blake3::Hasher::new(),
        verdicts: Default::default(),
    };
    for a in 0..sim.nodes.len() {
        for b in sim.links[a].clone() {
            sim.input(a, Input::PeerUp(b));
        }
        let offset = Duration::from_micros(sim.engine.uniform(0, 250_000));
        sim.engine.after(offset, Event::Tick(a));
    }
    sim.engine.after(Duration::ZERO, Event::Append);
    for _ in 0..config.crashes.min(config.peers) {
        let n = sim.engine.uniform(0, config.peers as u64 - 1) as usize;
        let at = sim.engine.uniform(0, fault_end.as_micros() as u64 * 3 / 4);
        sim.engine.after(Duration::from_micros(at), Event::Crash(n));
    }
    let end = fault_end + config.recovery;
    let mut check = fault_end;
    while let Some(event) = sim.engine.next(end) {
        sim.handle(event);
        let now = sim.engine.now();
        // Convergence is checked every 50 ms of virtual time once the faults have healed.
        if now >= check && now >= fault_end && sim.report.converged_after.is_none() {
            check = now + Duration::from_millis(50);
            if sim.converged() && sim.nodes.iter().all(|n| n.up) {
                sim.report.converged_after = Some(now - fault_end);
            }
        }
    }
    if sim.report.converged_after.is_none() {
        let mut missing = Vec::new();
        for (h, holder) in sim.nodes.iter().enumerate() {
            for (o, owner) in sim.nodes.iter().enumerate() {
                let held = holder.held(&owner.key).map_or(0, Vec::len);
                if held != owner.own.len() {
                    missing.push(format!(
                        "node {h} holds {held} of node {o}'s {}",
                        owner.own.len()
                    ));
                }
            }
        }
        sim.report.violations.push(format!(
            "not every node held every feed {} s after the faults healed: {} of {} replicas behind (e.g. {})",
            config.recovery.as_secs(),
            missing.len(),
            sim.nodes.len() * (sim.nodes.len() - 1),
            missing.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    sim.report.events = sim.engine.handled;
    sim.report.trace = *sim.trace.finalize().as_bytes();
    sim.report
}
