//! The libp2p swarm, one task that owns it ([`EventLoop`]), and the handle the node uses
//! ([`MeshClient`]). Shape from rust-libp2p's file-sharing example: bounded commands with oneshot
//! replies in, bounded events out; the event loop never blocks on the application.

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
            heartbeat: Duration::from_millis(500),
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

/// A request-response message: canonical CBOR with a size cap.
pub trait Frame: Sized + Send + 'static {
    /// Largest encoding read from the wire.
    const BYTES_MAX: usize;
    fn encode_frame(&self) -> Vec<u8>;
    fn decode_frame(bytes: &[u8]) -> Result<Self, String>;
}

macro_rules! frame {
    ($t:ty, $max:expr) => {
        impl Frame for $t {
            const BYTES_MAX: usize = $max;
            fn encode_frame(&self) -> Vec<u8> {
                self.encode()
            }
            fn decode_frame(bytes: &[u8]) -> Result<Self, String> {
                Self::decode(bytes).map_err(|e| e.to_string())
            }
        }
    };
}

frame!(SyncRequest, SYNC_REQUEST_BYTES_MAX);
frame!(SyncResponse, SYNC_RESPONSE_BYTES_MAX);
frame!(ExecRequest, EXEC_REQUEST_BYTES_MAX);
frame!(ExecResponse, EXEC_RESPONSE_BYTES_MAX);
frame!(BidRequest, BID_REQUEST_BYTES_MAX);

/// A bid answer is verified as it is read: signature by the key it names.
impl Frame for SignedBid {
    const BYTES_MAX: usize = BID_RESPONSE_BYTES_MAX;
    fn encode_frame(&self) -> Vec<u8> {
        self.encode()
    }
    fn decode_frame(bytes: &[u8]) -> Result<Self, String> {
        SignedBid::decode_verified(bytes).map_err(|e| e.to_string())
    }
}

/// Request-response frames for `/fabnode/ledger-sync/1` and `/fabnode/exec/1`: one canonical
/// CBOR value per stream direction, read to the end with a size cap.
pub struct CborCodec<Req, Resp>(std::marker::PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for CborCodec<Req, Resp> {
    fn default() -> Self {
        CborCodec(std::marker::PhantomData)
    }
}

impl<Req, Resp> std::fmt::Debug for CborCodec<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CborCodec")
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

async fn read_capped<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message over the size limit",
        ));
    }
    Ok(buf)
}

async fn read_frame<F: Frame, T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
) -> std::io::Result<F> {
    let bytes = read_capped(io, F::BYTES_MAX).await?;
    F::decode_frame(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

async fn write_frame<F: Frame, T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    frame: F,
) -> std::io::Result<()> {
    io.write_all(&frame.encode_frame()).await?;
    io.close().await
}

impl<Req: Frame, Resp: Frame> request_response::Codec for CborCodec<Req, Resp> {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Req> {
        read_frame(io).await
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Resp> {
        read_frame(io).await
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> std::io::Result<()> {
        write_frame(io, req).await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> std::io::Result<()> {
        write_frame(io, res).await
    }
}

type SyncCodec = CborCodec<SyncRequest, SyncResponse>;
type ExecCodec = CborCodec<ExecRequest, ExecResponse>;
type BidCodec = CborCodec<BidRequest, SignedBid>;

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

/// Offences a peer committed outside gossip validation: a malformed or implausible frame on a
/// request-response protocol, or what the application reports ([`MeshClient::penalise`]).
/// Each offence lowers the peer's gossipsub application score by one (weighted by
/// gossipsub's `app_specific_weight`, 10): one offence takes it to the gossip threshold (-10),
/// eight below the graylist threshold (-80), where its gossip is ignored. One offence is
/// forgiven every [`PENALTY_DECAY`]. At most [`PENALISED_MAX`] peers are remembered (the
/// least penalised is forgotten first) and at most [`OFFENCES_MAX`] offences per peer.
#[derive(Debug, Default)]
struct Penalties(HashMap<PeerId, (u32, tokio::time::Instant)>);

/// Peers whose offences are remembered, at most.
const PENALISED_MAX: usize = 1024;
/// Offences remembered per peer, at most.
const OFFENCES_MAX: u32 = 100;
/// One offence is forgiven this often.
const PENALTY_DECAY: Duration = Duration::from_secs(30);

impl Penalties {
    /// Charges one offence; returns the peer's new count.
    fn charge(&mut self, peer: PeerId, now: tokio::time::Instant) -> u32 {
        if !self.0.contains_key(&peer)
            && self.0.len() >= PENALISED_MAX
            && let Some(least) = self.0.iter().min_by_key(|(_, (n, _))| *n).map(|(p, _)| *p)
        {
            self.0.remove(&least);
        }
        let e = self.0.entry(peer).or_insert((0, now));
        e.0 = (e.0 + 1).min(OFFENCES_MAX);
        e.1 = now;
        e.0
    }

    /// Forgives one offence of every peer last charged more than [`PENALTY_DECAY`] ago;
    /// returns the peers whose count changed, with the new count.
    fn decay(&mut self, now: tokio::time::Instant) -> Vec<(PeerId, u32)> {
        let mut changed = Vec::new();
        self.0.retain(|peer, (n, at)| {
            if now.duration_since(*at) < PENALTY_DECAY {
                return true;
            }
            *n -= 1;
            *at = now;
            changed.push((*peer, *n));
            *n > 0
        });
        changed
    }

    fn count(&self, peer: &PeerId) -> u32 {
        self.0.get(peer).map_or(0, |(n, _)| *n)
    }
}

/// Whether an outbound request failed because the peer answered with bytes that do not decode
/// (malformed, oversized or implausible), as opposed to a timeout or a closed connection: the
/// codec reports every decode failure as `InvalidData`.
fn bad_answer(error: &request_response::OutboundFailure) -> bool {
    matches!(error, request_response::OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
}

/// The same for a request a peer sent.
fn bad_request(error: &request_response::InboundFailure) -> bool {
    matches!(error, request_response::InboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
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

/// Outbound requests whose askers wait for the answer, by request id.
struct Pending<T>(
    HashMap<request_response::OutboundRequestId, (PeerId, oneshot::Sender<Result<T, MeshError>>)>,
);

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending(HashMap::new())
    }
}

impl<T> Pending<T> {
    fn insert(
        &mut self,
        id: request_response::OutboundRequestId,
        peer: PeerId,
        reply: oneshot::Sender<Result<T, MeshError>>,
    ) {
        self.0.insert(id, (peer, reply));
    }

    /// Hands an answer to its asker once `check` (given the peer asked) accepts it; returns
    /// the peer and the check's verdict when the request was pending.
    fn answer(
        &mut self,
        id: request_response::OutboundRequestId,
        answer: T,
        check: impl FnOnce(&PeerId, &T) -> Result<(), String>,
    ) -> Option<(PeerId, Result<(), String>)> {
        let (peer, reply) = self.0.remove(&id)?;
        let verdict = check(&peer, &answer);
        let r = match &verdict {
            Ok(()) => Ok(answer),
            Err(detail) => Err(MeshError::Request {
                peer,
                detail: detail.clone(),
            }),
        };
        let _ = reply.send(r);
        Some((peer, verdict))
    }

    /// Tells the asker its request failed.
    fn fail(&mut self, id: request_response::OutboundRequestId, detail: String) {
        if let Some((peer, reply)) = self.0.remove(&id) {
            let _ = reply.send(Err(MeshError::Request { peer, detail }));
        }
    }
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

/// The Kademlia protocol id: one DHT per network, so discovery never crosses meshes.
/// Largest batch of gossipsub control messages (IHAVE, IWANT, IDONTWANT, GRAFT, PRUNE) in one
/// frame.
const CONTROL_BYTES_MAX: usize = 64 * 1024;
/// Most message ids gossipsub puts in one IHAVE or IWANT batch (ids are 32-byte content ids).
const CONTROL_IDS_MAX: usize = 512;

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
const MAINTAIN_EVERY: Duration = Duration::from_secs(2);
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

impl EventLoop {
    /// Runs until every [`MeshClient`] is dropped.
    pub async fn run(mut self) {
        let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
        maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Local commands first: they are bounded by the application, remote events are not.
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = maintain.tick() => self.maintain(),
            }
        }
        tracing::debug!("mesh event loop stopped");
    }

    /// A telemetry message: checked by the node's validator before use or forwarding.
    fn telemetry(&mut self, from: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let verdict = match &self.telemetry_validator {
            None => Err("telemetry is not read here".to_owned()),
            Some(_) if message.data.len() > TELEMETRY_BYTES_MAX => {
                Err(format!("telemetry over {TELEMETRY_BYTES_MAX} bytes"))
            }
            Some(v) => v(&from, &message.data),
        };
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        match verdict {
            Ok(report) => {
                gs.report_message_validation_result(&id, &from, MessageAcceptance::Accept);
                self.stats.accepted += 1;
                self.emit(MeshEvent::Telemetry { from, report });
            }
            Err(reason) => {
                gs.report_message_validation_result(&id, &from, MessageAcceptance::Reject);
                self.stats.rejected += 1;
                tracing::warn!(peer = %from, %reason, "telemetry rejected");
                self.emit(MeshEvent::Rejected { from, reason });
            }
        }
    }

    /// Connections below target: dial peers from the routing table, and walk the DHT now and
    /// then to find more.
    fn maintain(&mut self) {
        for (peer, n) in self.penalties.decay(tokio::time::Instant::now()) {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .set_application_score(&peer, -f64::from(n));
        }
        let connected = self.swarm.connected_peers().count();
        self.find_shard();
        if connected >= self.peers_target {
            return;
        }
        let mut candidates = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for e in bucket.iter() {
                candidates.push((*e.node.key.preimage(), e.node.value.clone().into_vec()));
            }
        }
        let mut wanted = self.peers_target - connected;
        for (peer, addrs) in candidates {
            if wanted == 0 {
                break;
            }
            if self.swarm.is_connected(&peer) {
                continue;
            }
            if self
                .swarm
                .dial(DialOpts::peer_id(peer).addresses(addrs).build())
                .is_ok()
            {
                wanted -= 1;
            }
        }
        let due = self
            .last_bootstrap
            .is_none_or(|t| t.elapsed() >= self.bootstrap_gap);
        if due && connected > 0 && self.swarm.behaviour_mut().kad.bootstrap().is_ok() {
            if self.last_bootstrap.is_some() {
                self.bootstrap_gap = (self.bootstrap_gap * 2).min(BOOTSTRAP_EVERY);
            }
            self.last_bootstrap = Some(tokio::time::Instant::now());
        }
    }

    /// With shards: announces this node as a member of its shard (at the first connection,
    /// then every [`PROVIDE_EVERY`]), and while fewer than the connection target of its
    /// shard's members are connected, looks up the shard's provider record (waits doubling
    /// from 1 s to 30 s); members found are dialed.
    fn find_shard(&mut self) {
        let Some(record) = self.shard_record.clone() else {
            return;
        };
        if self.swarm.connected_peers().next().is_none() {
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        if self
            .provided_at
            .is_none_or(|t| t.elapsed() >= PROVIDE_EVERY)
            && kad.start_providing(record.clone()).is_ok()
        {
            self.provided_at = Some(tokio::time::Instant::now());
        }
        let scope = self.scope;
        let members = self.members.iter().filter(|p| in_scope(&scope, p)).count();
        if members >= self.peers_target {
            self.look_gap = BOOTSTRAP_FIRST;
            return;
        }
        if self.looked_at.is_none_or(|t| t.elapsed() >= self.look_gap) {
            self.swarm.behaviour_mut().kad.get_providers(record);
            if self.looked_at.is_some() {
                self.look_gap = (self.look_gap * 2).min(BOOTSTRAP_EVERY);
            }
            self.looked_at = Some(tokio::time::Instant::now());
        }
    }

    /// Charges `peer` one offence and lowers its gossipsub score to match.
    fn penalise(&mut self, peer: PeerId, reason: &str) {
        let n = self.penalties.charge(peer, tokio::time::Instant::now());
        self.stats.penalties += 1;
        tracing::warn!(%peer, offences = n, %reason, "peer penalised");
        self.swarm
            .behaviour_mut()
            .gossipsub
            .set_application_score(&peer, -f64::from(n));
    }

    /// An outbound request failed: an answer that did not decode is the peer's offence; a
    /// timeout or a closed connection is not.
    fn answer_failed(
        &mut self,
        peer: PeerId,
        protocol: &str,
        error: &request_response::OutboundFailure,
    ) {
        if bad_answer(error) {
            self.penalise(peer, &format!("{protocol} answer: {error}"));
        } else {
            tracing::debug!(%peer, %error, protocol, "request failed");
        }
    }

    fn emit(&mut self, e: MeshEvent) {
        if self.events.try_send(e).is_err() {
            self.stats.events_dropped += 1;
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Request(peer, request) => {
                self.swarm.behaviour_mut().sync.send_request(&peer, request);
            }
            Command::Exec(peer, request, reply) => {
                let id = self.swarm.behaviour_mut().exec.send_request(&peer, request);
                self.exec_pending.insert(id, peer, reply);
            }
            Command::Bid(peer, request, reply) => {
                let id = self.swarm.behaviour_mut().bid.send_request(&peer, request);
                self.bid_pending.insert(id, peer, reply);
            }
            Command::Penalise(peer, reason) => self.penalise(peer, &reason),
            Command::RespondBid(BidReply(channel), bid) => {
                let _ = self.swarm.behaviour_mut().bid.send_response(channel, bid);
            }
            Command::RespondExec(ExecReply(channel), response) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .exec
                    .send_response(channel, response);
            }
            Command::Respond(SyncReply(channel), response) => {
                // The asker may have gone; nothing to do then.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response);
            }
            Command::Publish(msg, reply) => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), msg)
                    .map(|_| ())
                    .map_err(|e| MeshError::Publish(e.to_string()));
                let _ = reply.send(r);
            }
            Command::PublishTelemetry(data, reply) => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.telemetry_topic.clone(), data)
                    .map(|_| ())
                    .map_err(|e| MeshError::Publish(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Dial(addr, reply) => {
                let _ = reply.send(
                    self.swarm
                        .dial(addr)
                        .map_err(|e| MeshError::Dial(e.to_string())),
                );
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Peers(reply) => {
                let mut peers = self.peers.clone();
                for (id, p) in &mut peers {
                    p.score = self.swarm.behaviour().gossipsub.peer_score(id);
                }
                let _ = reply.send(peers);
            }
            Command::Rtt(peer, reply) => {
                let _ = reply.send(self.peers.get(&peer).and_then(|p| p.rtt));
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats);
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                if message.topic == self.telemetry_topic.hash() {
                    self.telemetry(propagation_source, message_id, message);
                    return;
                }
                let verdict = validate_in(&self.network, &self.scope, &message.data);
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                match verdict {
                    Verdict::Accept(valid) => {
                        gs.report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Accept,
                        );
                        self.stats.accepted += 1;
                        self.emit(MeshEvent::Valid {
                            from: propagation_source,
                            valid,
                        });
                    }
                    Verdict::Reject(reason) => {
                        gs.report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Reject,
                        );
                        self.stats.rejected += 1;
                        tracing::warn!(peer = %propagation_source, %reason, "gossip message rejected");
                        self.emit(MeshEvent::Rejected {
                            from: propagation_source,
                            reason,
                        });
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.emit(MeshEvent::SyncRequest {
                    from: peer,
                    request,
                    reply: SyncReply(channel),
                }),
                request_response::Message::Response { response, .. } => {
                    self.emit(MeshEvent::SyncResponse {
                        from: peer,
                        response,
                    });
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::OutboundFailure { peer, error, .. },
            )) => self.answer_failed(peer, "ledger-sync", &error),
            SwarmEvent::Behaviour(BehaviourEvent::Exec(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.emit(MeshEvent::ExecRequest {
                    from: peer,
                    request,
                    reply: ExecReply(channel),
                }),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.exec_pending
                        .answer(request_id, response, |_, _| Ok(()));
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Exec(
                request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    peer,
                    ..
                },
            )) => {
                self.answer_failed(peer, "exec", &error);
                self.exec_pending.fail(request_id, error.to_string());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Bid(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.emit(MeshEvent::BidRequest {
                    from: peer,
                    request,
                    reply: BidReply(channel),
                }),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let check = self.bid_pending.answer(request_id, response, |peer, bid| {
                        crate::bid::check_bidder(bid, &peer.to_string())
                    });
                    if let Some((peer, Err(reason))) = check {
                        self.penalise(peer, &format!("bid answer: {reason}"));
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Bid(
                request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    peer,
                    ..
                },
            )) => {
                self.answer_failed(peer, "bid", &error);
                self.bid_pending.fail(request_id, error.to_string());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let member = info.protocol_version == identify_protocol(&self.network);
                if !member && info.protocol_version.starts_with("/fabnode/") {
                    // A fabnode node of another network: do not mix.
                    tracing::debug!(peer = %peer_id, version = %info.protocol_version, "peer of another network; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    self.peers.remove(&peer_id);
                    return;
                }
                // Anything else is another libp2p implementation: it may identify, ping and
                // read the public topics (an observer), but is not asked for ledgers.
                let kad_proto = kad_protocol(&self.network);
                if info.protocols.iter().any(|p| p.as_ref() == kad_proto) {
                    for addr in &info.listen_addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
                let p = self.peers.entry(peer_id).or_default();
                p.agent_version = Some(info.agent_version);
                p.protocols = info.protocols.iter().map(|s| s.to_string()).collect();
                p.addresses = info.listen_addrs;
                p.member = member;
                if member && self.members.insert(peer_id) {
                    self.emit(MeshEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.peers.entry(peer).or_default().rtt = Some(rtt);
            }
            // Members of this node's shard, from its provider record: dialed at once (the
            // query still holds their addresses) unless connected already.
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        providers,
                        ..
                    })),
                ..
            })) => {
                let me = *self.swarm.local_peer_id();
                for peer in providers {
                    if peer != me && !self.swarm.is_connected(&peer) && in_scope(&self.scope, &peer)
                    {
                        let _ = self.swarm.dial(DialOpts::peer_id(peer).build());
                    }
                }
            }
            // A new peer learned through the DHT: connect while below target, so the gossip
            // mesh does not hang on the bootstrap peer alone.
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                addresses,
                ..
            })) if !self.swarm.is_connected(&peer)
                && self.swarm.connected_peers().count() < self.peers_target =>
            {
                let _ = self.swarm.dial(
                    DialOpts::peer_id(peer)
                        .addresses(addresses.into_vec())
                        .build(),
                );
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                // A peer does not shed its offences by reconnecting.
                let n = self.penalties.count(&peer_id);
                if n > 0 {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .set_application_score(&peer_id, -f64::from(n));
                }
                let p = self.peers.entry(peer_id).or_default();
                if p.transport.is_none() {
                    p.transport = Some(transport_of(endpoint.get_remote_address()));
                }
                if !p.addresses.contains(endpoint.get_remote_address()) {
                    p.addresses.push(endpoint.get_remote_address().clone());
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.peers.remove(&peer_id);
                if self.members.remove(&peer_id) {
                    self.emit(MeshEvent::PeerDisconnected(peer_id));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "mesh listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::InboundFailure { peer, error, .. },
            ))
            | SwarmEvent::Behaviour(BehaviourEvent::Exec(
                request_response::Event::InboundFailure { peer, error, .. },
            ))
            | SwarmEvent::Behaviour(BehaviourEvent::Bid(
                request_response::Event::InboundFailure { peer, error, .. },
            )) if bad_request(&error) => {
                self.penalise(peer, &format!("request: {error}"));
            }
            _ => {}
        }
    }
}

impl MeshClient {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Sends a sync request; the answer arrives as [`MeshEvent::SyncResponse`].
    pub async fn request(&self, peer: PeerId, request: SyncRequest) -> Result<(), MeshError> {
        self.tx
            .send(Command::Request(peer, request))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Asks `peer` over `/fabnode/exec/1` and waits for its answer (dialing it when needed,
    /// with addresses learned from identify and Kademlia).
    pub async fn exec(
        &self,
        peer: PeerId,
        request: ExecRequest,
    ) -> Result<ExecResponse, MeshError> {
        self.ask(|r| Command::Exec(peer, request, r)).await?
    }

    /// Calls `peer` for a bid; the answer is signature-checked and signed by that peer.
    pub async fn bid(&self, peer: PeerId, request: BidRequest) -> Result<SignedBid, MeshError> {
        self.ask(|r| Command::Bid(peer, request, r)).await?
    }

    /// Answers a peer's call for bids.
    pub async fn respond_bid(&self, reply: BidReply, bid: SignedBid) -> Result<(), MeshError> {
        self.tx
            .send(Command::RespondBid(reply, bid))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Answers a peer's exec request.
    pub async fn respond_exec(
        &self,
        reply: ExecReply,
        response: ExecResponse,
    ) -> Result<(), MeshError> {
        self.tx
            .send(Command::RespondExec(reply, response))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Answers a peer's sync request.
    pub async fn respond(&self, reply: SyncReply, response: SyncResponse) -> Result<(), MeshError> {
        self.tx
            .send(Command::Respond(reply, response))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Publishes on the ledger topic. Fails with a publish error while no peer is subscribed.
    pub async fn publish(&self, msg: GossipMsg) -> Result<(), MeshError> {
        self.ask(|r| Command::Publish(msg.encode(), r)).await?
    }

    /// Publishes a signed telemetry report on the telemetry topic.
    pub async fn publish_telemetry(&self, data: Vec<u8>) -> Result<(), MeshError> {
        self.ask(|r| Command::PublishTelemetry(data, r)).await?
    }

    /// Publishes a payload on the ledger topic as is, unchecked: for tools and tests that
    /// exercise how peers validate what they receive. Nodes use [`MeshClient::publish`].
    pub async fn publish_raw(&self, payload: Vec<u8>) -> Result<(), MeshError> {
        self.ask(|r| Command::Publish(payload, r)).await?
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), MeshError> {
        self.ask(|r| Command::Dial(addr, r)).await?
    }

    /// The addresses the swarm listens on (after the OS assigned ports).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, MeshError> {
        self.ask(Command::ListenAddrs).await
    }

    pub async fn peers(&self) -> Result<BTreeMap<PeerId, PeerInfo>, MeshError> {
        self.ask(Command::Peers).await
    }

    /// The last ping round trip to `peer`, if connected and pinged.
    pub async fn rtt(&self, peer: PeerId) -> Result<Option<Duration>, MeshError> {
        self.ask(|r| Command::Rtt(peer, r)).await
    }

    /// Charges `peer` one offence (a protocol violation the application found): its gossip
    /// score drops, and repeated offences graylist it. Never blocks: under a full command
    /// queue the penalty is dropped.
    pub fn penalise(&self, peer: PeerId, reason: impl Into<String>) {
        let _ = self.tx.try_send(Command::Penalise(peer, reason.into()));
    }

    pub async fn stats(&self) -> Result<MeshStats, MeshError> {
        self.ask(Command::Stats).await
    }
}
