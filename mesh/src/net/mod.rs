//! The libp2p swarm, one task that owns it ([`EventLoop`]), and the handle the node uses
//! ([`MeshClient`]). Shape from rust-libp2p's file-sharing example: bounded commands with oneshot
//! replies in, bounded events out; the event loop never blocks on the application.
//!
//! # Layout
//!
//! - this file: configuration, events, errors, the behaviour and [`start`];
//! - `codec`: request-response framing;
//! - `event_loop`: [`EventLoop::run`], commands and swarm events;
//! - `penalties`: offences outside gossip, pending outbound requests;
//! - `client`: [`MeshClient`].

use std::collections::BTreeMap;
use std::time::Duration;

use fab_ledger::{ContentId, Keypair};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, connection_limits, identify, kad, mdns, noise, ping,
    tcp, yamux,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::bid::{
    BID_PROTOCOL, BID_REQUEST_BYTES_MAX, BID_RESPONSE_BYTES_MAX, BidRequest, SignedBid,
};
use crate::exec::{
    EXEC_PROTOCOL, EXEC_REQUEST_BYTES_MAX, EXEC_RESPONSE_BYTES_MAX, ExecRequest, ExecResponse,
};
use crate::shard::{Scope, Shards};
use crate::validate::{Valid, Verdict, validate_in};
use crate::wire::{
    GOSSIP_BYTES_MAX, GossipMsg, SYNC_PROTOCOL, SYNC_REQUEST_BYTES_MAX, SYNC_RESPONSE_BYTES_MAX,
    SyncRequest, SyncResponse, TELEMETRY_BYTES_MAX,
};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use std::collections::HashMap;

pub use libp2p::{Multiaddr as Addr, PeerId as Peer};

mod client;
mod codec;
mod event_loop;
mod penalties;

use codec::*;
pub use codec::{CborCodec, Frame};
use penalties::*;

/// Commands waiting for the event loop.
pub const COMMAND_QUEUE: usize = 256;
/// Events waiting for the application; beyond this, events are dropped and counted (ledger
/// catch-up recovers anything gossip did not deliver).
pub const EVENT_QUEUE: usize = 4096;

/// Validates telemetry payloads (the node knows their format; the mesh does not) and returns
/// what it decoded, which reaches the node in [`MeshEvent::Telemetry`] without a second decode.
pub type TelemetryValidator = std::sync::Arc<
    dyn Fn(&PeerId, &[u8]) -> Result<Box<dyn std::any::Any + Send>, String> + Send + Sync,
>;

/// How a node joins the mesh.
#[derive(Clone)]
pub struct MeshConfig {
    /// Separates meshes: part of every topic name and of identify's protocol version.
    pub network: String,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0` or `/ip4/0.0.0.0/udp/0/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Peers to dial at start.
    pub bootstrap: Vec<Multiaddr>,
    /// Gossipsub heartbeat.
    pub heartbeat: Duration,
    /// Connections the node keeps open at least, dialing peers found through Kademlia when it
    /// has fewer. Enough for gossipsub to build a full mesh (D = 6) without relying on one
    /// bootstrap peer.
    pub peers_target: usize,
    /// Established connections at most, inbound and outbound together.
    pub connections_max: u32,
    /// Checks a telemetry payload before it is used or forwarded: given the peer that sent it
    /// and its bytes, accept or say why not (that peer is then penalised). The payload carries
    /// its own signature; gossip messages are not signed by libp2p. Without one, telemetry is
    /// not subscribed to.
    pub telemetry_validator: Option<TelemetryValidator>,
    /// Use libp2p's in-process memory transport (`/memory/<n>` addresses) instead of TCP and
    /// QUIC: for behaviour tests and the simulator, with no sockets.
    pub memory_transport: bool,
    /// The network's shard count ([`crate::shard`]): the node subscribes to its own shard's
    /// ledger and telemetry topics only, refuses entries and checkpoints of other shards' feeds
    /// there, and finds its shard's members through Kademlia provider records.
    pub shards: Shards,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("network", &self.network)
            .field("listen", &self.listen)
            .field("mdns", &self.mdns)
            .field("bootstrap", &self.bootstrap)
            .field("telemetry", &self.telemetry_validator.is_some())
            .finish_non_exhaustive()
    }
}

impl MeshConfig {
    pub fn new(network: &str) -> Self {
        MeshConfig {
            network: network.to_owned(),
            listen: Vec::new(),
            mdns: true,
            bootstrap: Vec::new(),
            heartbeat: crate::node::gossip::HEARTBEAT,
            peers_target: 8,
            connections_max: 128,
            memory_transport: false,
            telemetry_validator: None,
            shards: Shards::ONE,
        }
    }
}

/// What the mesh tells the application.
#[derive(Debug)]
pub enum MeshEvent {
    /// A peer asks for heads or a range; answer with [`MeshClient::respond`].
    SyncRequest {
        from: PeerId,
        request: SyncRequest,
        reply: SyncReply,
    },
    /// A peer calls for bids; answer with [`MeshClient::respond_bid`].
    BidRequest {
        from: PeerId,
        request: BidRequest,
        reply: BidReply,
    },
    /// A peer asks this node to run a job; answer with [`MeshClient::respond_exec`].
    ExecRequest {
        from: PeerId,
        request: ExecRequest,
        reply: ExecReply,
    },
    /// A peer answered one of our sync requests.
    SyncResponse {
        from: PeerId,
        response: SyncResponse,
    },
    /// A gossip message passed validation (and is being forwarded).
    Valid { from: PeerId, valid: Box<Valid> },
    /// A telemetry report passed the validator (and is being forwarded); `from` sent it (its
    /// author or a peer forwarding it); `report` is what the validator decoded.
    Telemetry {
        from: PeerId,
        report: Box<dyn std::any::Any + Send>,
    },
    /// A gossip message failed validation; the sender has been penalised.
    Rejected { from: PeerId, reason: String },
    /// A fabnode node of this network is connected and identified.
    PeerConnected(PeerId),
    /// The last connection to a peer closed (or it turned out to be of another network).
    PeerDisconnected(PeerId),
}

/// What is known about a connected peer.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub addresses: Vec<Multiaddr>,
    pub agent_version: Option<String>,
    pub protocols: Vec<String>,
    pub rtt: Option<Duration>,
    /// This node's gossipsub score of the peer: below zero for a peer that sent invalid
    /// messages; at -80 and below its traffic is ignored.
    pub score: Option<f64>,
    /// `tcp`, `quic` or `memory`: the transport of the first connection.
    pub transport: Option<&'static str>,
    /// A fabnode node of this network (identified); otherwise another libp2p implementation
    /// that may read the public topics, or a peer not identified yet.
    pub member: bool,
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeshStats {
    pub accepted: u64,
    pub rejected: u64,
    pub events_dropped: u64,
    /// Offences charged to peers outside gossip validation (malformed or implausible
    /// request-response frames, protocol violations the application reports).
    pub penalties: u64,
}

/// Why the mesh could not start or do what was asked.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("building the libp2p swarm: {0}")]
    Build(String),
    #[error("cannot listen on {addr}: {detail}")]
    Listen { addr: Multiaddr, detail: String },
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("the mesh event loop has stopped")]
    Stopped,
    /// A request to a peer (a call for bids, an exec request) failed or was answered with
    /// something that does not check.
    #[error("peer {peer}: {detail}")]
    Request { peer: PeerId, detail: String },
}

/// Where to send the answer to a sync request.
#[derive(Debug)]
pub struct SyncReply(ResponseChannel<SyncResponse>);

/// Where to send the answer to a call for bids.
#[derive(Debug)]
pub struct BidReply(ResponseChannel<SignedBid>);

/// Where to send the answer to an exec request.
#[derive(Debug)]
pub struct ExecReply(ResponseChannel<ExecResponse>);

/// Longest a remote job may take, transfer included; the API applies the job's own deadline
/// within it.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    sync: request_response::Behaviour<SyncCodec>,
    exec: request_response::Behaviour<ExecCodec>,
    bid: request_response::Behaviour<BidCodec>,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

enum Command {
    Request(PeerId, SyncRequest),
    Exec(
        PeerId,
        ExecRequest,
        oneshot::Sender<Result<ExecResponse, MeshError>>,
    ),
    RespondExec(ExecReply, ExecResponse),
    Bid(
        PeerId,
        BidRequest,
        oneshot::Sender<Result<SignedBid, MeshError>>,
    ),
    RespondBid(BidReply, SignedBid),
    Respond(SyncReply, SyncResponse),
    Publish(Vec<u8>, oneshot::Sender<Result<(), MeshError>>),
    PublishTelemetry(Vec<u8>, oneshot::Sender<Result<(), MeshError>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), MeshError>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<BTreeMap<PeerId, PeerInfo>>),
    Rtt(PeerId, oneshot::Sender<Option<Duration>>),
    Stats(oneshot::Sender<MeshStats>),
    Penalise(PeerId, String),
}

/// Cloneable handle to the mesh.
#[derive(Clone, Debug)]
pub struct MeshClient {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
}

/// Owns the swarm; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<MeshEvent>,
    network: String,
    topic: IdentTopic,
    telemetry_topic: IdentTopic,
    telemetry_validator: Option<TelemetryValidator>,
    peers: BTreeMap<PeerId, PeerInfo>,
    stats: MeshStats,
    peers_target: usize,
    last_bootstrap: Option<tokio::time::Instant>,
    /// The wait before the next walk (doubling from [`BOOTSTRAP_FIRST`]).
    bootstrap_gap: Duration,
    bid_pending: Pending<SignedBid>,
    /// Connected peers identified as fabnode nodes of this network.
    members: std::collections::BTreeSet<PeerId>,
    exec_pending: Pending<ExecResponse>,
    /// This node's shard.
    scope: Scope,
    /// With more than one shard: the provider record that names the shard's members, when
    /// this node last announced itself there, and when it last looked for members (with the
    /// wait before the next look, doubling like the DHT walks).
    shard_record: Option<kad::RecordKey>,
    provided_at: Option<tokio::time::Instant>,
    looked_at: Option<tokio::time::Instant>,
    look_gap: Duration,
    penalties: Penalties,
}

/// The public key a peer id names (fabnode peer ids are ed25519 identity hashes).
pub fn peer_key(peer: &PeerId) -> Option<fab_ledger::PublicKey> {
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    fab_ledger::PublicKey::from_bytes(&key.try_into_ed25519().ok()?.to_bytes())
}

/// Whether a peer belongs to `scope`'s shard (a peer whose id names no ed25519 key does not).
pub fn in_scope(scope: &Scope, peer: &PeerId) -> bool {
    scope.shards == Shards::ONE || peer_key(peer).is_some_and(|k| scope.contains(&k))
}

/// The Kademlia key under which the members of a shard announce themselves.
fn shard_record(network: &str, shard: u16) -> kad::RecordKey {
    kad::RecordKey::new(&format!("fabnode/{network}/shard/{shard}"))
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

fn identify_protocol(network: &str) -> String {
    format!("/fabnode/1.0.0/{network}")
}

/// Largest batch of gossipsub control messages (IHAVE, IWANT, IDONTWANT, GRAFT, PRUNE) in one
/// frame.
const CONTROL_BYTES_MAX: usize = 64 * 1024;
/// Most message ids gossipsub puts in one IHAVE or IWANT batch (ids are 32-byte content ids).
use crate::node::gossip::CONTROL_IDS_MAX;

/// The Kademlia protocol id: one DHT per network, so discovery never crosses meshes.
pub fn kad_protocol(network: &str) -> String {
    format!("/fabnode/{network}/kad/1.0.0")
}

/// Peer scoring on the ledger and telemetry topics. Both carry little and bursty traffic (one
/// entry per job, one report per node every few seconds), so the mesh-delivery-rate penalties (P3, P3b), which assume a steady stream, are off:
/// with them every quiet mesh peer soon scores below the graylist threshold and gossip stops.
/// What remains rewards first deliveries and punishes invalid messages, quadratically: one
/// takes a peer to the gossip threshold (-10), three below the graylist threshold (-80), after
/// which its traffic is ignored until the penalty decays.
fn topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 50.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}

fn transport_of(addr: &Multiaddr) -> &'static str {
    use libp2p::multiaddr::Protocol;
    let mut t = "other";
    for p in addr.iter() {
        match p {
            Protocol::QuicV1 => return "quic",
            Protocol::Tcp(_) => t = "tcp",
            Protocol::Memory(_) => return "memory",
            _ => {}
        }
    }
    t
}

/// How often the event loop checks its connection count against the target.
use crate::node::gossip::MAINTAIN_EVERY;
/// How often a node re-walks the DHT while it has fewer connections than its target: first
/// after [`BOOTSTRAP_FIRST`], then twice as long each time up to this. Nodes that start
/// together learn of each other only from walks made after their bootstrap peer heard of
/// both; a first walk at 30 s left them apart that long.
const BOOTSTRAP_EVERY: Duration = Duration::from_secs(30);
const BOOTSTRAP_FIRST: Duration = Duration::from_secs(1);
/// A sharded node announces itself in its shard's provider record this often (records live
/// for Kademlia's provider TTL, 48 h, on the peers closest to the record).
const PROVIDE_EVERY: Duration = Duration::from_secs(600);

/// Builds the swarm and starts listening. Returns the handle, the event stream and the loop to
/// spawn.
pub fn start(
    key: &Keypair,
    config: MeshConfig,
) -> Result<(MeshClient, mpsc::Receiver<MeshEvent>, EventLoop), MeshError> {
    let build = |e: &dyn std::fmt::Display| MeshError::Build(e.to_string());
    let scope = Scope::of(config.shards, &key.public());
    let topic = IdentTopic::new(config.shards.ledger_topic(&config.network, scope.shard));
    let telemetry_topic =
        IdentTopic::new(config.shards.telemetry_topic(&config.network, scope.shard));
    let with_telemetry = config.telemetry_validator.is_some();
    let network = config.network.clone();
    let heartbeat = config.heartbeat;
    let use_mdns = config.mdns && !config.memory_transport;
    let kad_proto = StreamProtocol::try_from_owned(kad_protocol(&network))
        .map_err(|e| MeshError::Build(format!("network name {network:?}: {e}")))?;
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.connections_max))
        .with_max_established_per_peer(Some(2))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    use crate::node::gossip as gossip_params;
    let make_behaviour = |kp: &libp2p::identity::Keypair| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            // Messages carry no libp2p signature (anonymous mode): every payload is signed by the
            // node it is about (entries, checkpoints, telemetry) and checked by the validators,
            // and the peer that hands over an invalid one is the one penalised. A gossipsub
            // signature on top cost each node one more check per copy received, before
            // duplicates are dropped: most of the mesh's signature checks under load.
            let gs_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                // Nothing is forwarded before the application has validated it.
                .validate_messages()
                .heartbeat_interval(heartbeat)
                // The simulator models these same values (crate::node::gossip).
                .mesh_n(gossip_params::MESH_DEGREE)
                .mesh_n_low(gossip_params::MESH_LOW)
                .mesh_n_high(gossip_params::MESH_HIGH)
                .gossip_lazy(gossip_params::GOSSIP_LAZY)
                .duplicate_cache_time(gossip_params::DUPLICATE_CACHE)
                .history_length(gossip_params::HISTORY_LENGTH)
                .history_gossip(gossip_params::HISTORY_GOSSIP)
                // A frame holds one message (with room for gossipsub's framing) or a batch of
                // control messages. gossipsub's defaults let a node send IHAVE/IWANT batches of
                // 5,000 ids (~170 KB) that its peers' 16 KB control limit then refuses, and a
                // refused frame closes the stream: under load, peers silently stopped hearing
                // each other. Batches of at most 512 ids (~18 KB) fit the limits below.
                .max_transmit_size(GOSSIP_BYTES_MAX + CONTROL_BYTES_MAX)
                .max_control_message_size(CONTROL_BYTES_MAX)
                .max_control_messages_sent(CONTROL_IDS_MAX)
                // Content-addressed ids: the same payload from two peers is one message.
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(ContentId::of(&m.data).0.to_vec())
                })
                .build()?;
            let mut gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gs_config)?;
            let mut score = gossipsub::PeerScoreParams {
                // No IP-colocation penalty (P6): fleets behind one NAT, pods on one host and
                // every node of a loopback test share an address, and P6 would graylist them.
                ip_colocation_factor_weight: 0.0,
                ..Default::default()
            };
            score.topics.insert(topic.hash(), topic_score());
            score
                .topics
                .insert(telemetry_topic.hash(), topic_score());
            gossipsub.with_peer_score(score, gossipsub::PeerScoreThresholds::default())?;
            gossipsub.subscribe(&topic)?;
            if with_telemetry {
                gossipsub.subscribe(&telemetry_topic)?;
            }
            let identify = identify::Behaviour::new(
                identify::Config::new(identify_protocol(&network), kp.public())
                    .with_agent_version(format!("fabnode/{}", env!("CARGO_PKG_VERSION"))),
            );
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    kp.public().to_peer_id(),
                )?)
            } else {
                None
            };
            let exec = request_response::Behaviour::with_codec(
                ExecCodec::default(),
                [(StreamProtocol::new(EXEC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(EXEC_TIMEOUT)
                    .with_max_concurrent_streams(64),
            );
            let bid = request_response::Behaviour::with_codec(
                BidCodec::default(),
                [(StreamProtocol::new(BID_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(5))
                    .with_max_concurrent_streams(256),
            );
            let sync = request_response::Behaviour::with_codec(
                SyncCodec::default(),
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(10))
                    .with_max_concurrent_streams(64),
            );
            let peer_id = kp.public().to_peer_id();
            let mut kad_config = kad::Config::new(kad_proto);
            kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_config,
            );
            // Every node serves the DHT: on a LAN or loopback there is no external address to
            // confirm, and client mode would leave every routing table empty.
            kad.set_mode(Some(kad::Mode::Server));
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                kad,
                sync,
                exec,
                bid,
                gossipsub,
                identify,
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: Toggle::from(mdns),
            })
        };
    // Streams are negotiated with multistream-select's lazy dialer: the protocol proposal and
    // the request go out in one flush instead of waiting a round trip for the listener's
    // confirmation (identical on the wire; each request-response call opens a stream, so this
    // saves a round trip per call for bids, exec request and catch-up request).
    let idle = |c: libp2p::swarm::Config| {
        c.with_idle_connection_timeout(Duration::from_secs(120))
            .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
    };
    let mut swarm = if config.memory_transport {
        SwarmBuilder::with_existing_identity(key.to_libp2p())
            .with_tokio()
            .with_other_transport(|kp| {
                use libp2p::Transport as _;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    libp2p::core::transport::MemoryTransport::default()
                        .upgrade(libp2p::core::upgrade::Version::V1)
                        .authenticate(noise::Config::new(kp)?)
                        .multiplex(yamux::Config::default()),
                )
            })
            .map_err(|e| build(&e))?
            .with_behaviour(make_behaviour)
            .map_err(|e| build(&e))?
            .with_swarm_config(idle)
            .build()
    } else {
        SwarmBuilder::with_existing_identity(key.to_libp2p())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(&e))?
            .with_quic()
            .with_behaviour(make_behaviour)
            .map_err(|e| build(&e))?
            .with_swarm_config(idle)
            .build()
    };
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| MeshError::Listen {
                addr: addr.clone(),
                detail: e.to_string(),
            })?;
    }
    for addr in &config.bootstrap {
        // A bootstrap address that names its peer goes into the routing table, so the first
        // DHT walk can start from it.
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "bootstrap dial failed");
        }
    }
    let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (events, rx) = mpsc::channel(EVENT_QUEUE);
    let peer_id = *swarm.local_peer_id();
    let network_name = config.network.clone();
    let ev = EventLoop {
        swarm,
        commands,
        events,
        network: config.network,
        topic,
        telemetry_topic,
        telemetry_validator: config.telemetry_validator,
        peers: BTreeMap::new(),
        stats: MeshStats::default(),
        peers_target: config.peers_target,
        last_bootstrap: None,
        bootstrap_gap: BOOTSTRAP_FIRST,
        exec_pending: Pending::default(),
        bid_pending: Pending::default(),
        members: Default::default(),
        shard_record: (config.shards != Shards::ONE)
            .then(|| shard_record(&network_name, scope.shard)),
        scope,
        provided_at: None,
        looked_at: None,
        look_gap: BOOTSTRAP_FIRST,
        penalties: Penalties::default(),
    };
    Ok((MeshClient { tx, peer_id }, rx, ev))
}
