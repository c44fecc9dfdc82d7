//! The libp2p swarm, one task that owns it ([`EventLoop`]), and the handle the node uses
//! ([`MeshClient`]). Shape from rust-libp2p's file-sharing example: bounded commands with oneshot
//! replies in, bounded events out; the event loop never blocks on the application.

use std::collections::BTreeMap;
use std::time::Duration;

use fab_ledger::{ContentId, Keypair};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, identify, mdns, noise, ping, tcp, yamux};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::validate::{Valid, Verdict, validate};
use crate::wire::{
    GOSSIP_BYTES_MAX, GossipMsg, SYNC_PROTOCOL, SYNC_REQUEST_BYTES_MAX, SYNC_RESPONSE_BYTES_MAX,
    SyncRequest, SyncResponse, ledger_topic,
};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};

/// Commands waiting for the event loop.
pub const COMMAND_QUEUE: usize = 256;
/// Events waiting for the application; beyond this, events are dropped and counted (ledger
/// catch-up recovers anything gossip did not deliver).
pub const EVENT_QUEUE: usize = 4096;

/// How a node joins the mesh.
#[derive(Clone, Debug)]
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
}

impl MeshConfig {
    pub fn new(network: &str) -> Self {
        MeshConfig {
            network: network.to_owned(),
            listen: Vec::new(),
            mdns: true,
            bootstrap: Vec::new(),
            heartbeat: Duration::from_millis(500),
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
    /// A peer answered one of our sync requests.
    SyncResponse {
        from: PeerId,
        response: SyncResponse,
    },
    /// A gossip message passed validation (and is being forwarded).
    Valid { from: PeerId, valid: Box<Valid> },
    /// A gossip message failed validation; the sender has been penalised.
    Rejected { from: PeerId, reason: String },
    /// A connection to a peer of this network is up.
    PeerConnected(PeerId),
}

/// What is known about a connected peer.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub addresses: Vec<Multiaddr>,
    pub agent_version: Option<String>,
    pub protocols: Vec<String>,
    pub rtt: Option<Duration>,
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeshStats {
    pub accepted: u64,
    pub rejected: u64,
    pub events_dropped: u64,
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
}

/// Where to send the answer to a sync request.
#[derive(Debug)]
pub struct SyncReply(ResponseChannel<SyncResponse>);

/// `/fabnode/ledger-sync/1` frames: one canonical CBOR value per stream direction, read to the
/// end with a size cap.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncCodec;

async fn read_capped<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "sync message over the size limit",
        ));
    }
    Ok(buf)
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<SyncRequest> {
        SyncRequest::decode(&read_capped(io, SYNC_REQUEST_BYTES_MAX).await?).map_err(invalid)
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<SyncResponse> {
        SyncResponse::decode(&read_capped(io, SYNC_RESPONSE_BYTES_MAX).await?).map_err(invalid)
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncRequest,
    ) -> std::io::Result<()> {
        io.write_all(&req.encode()).await?;
        io.close().await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncResponse,
    ) -> std::io::Result<()> {
        io.write_all(&res.encode()).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    sync: request_response::Behaviour<SyncCodec>,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

enum Command {
    Request(PeerId, SyncRequest),
    Respond(SyncReply, SyncResponse),
    Publish(GossipMsg, oneshot::Sender<Result<(), MeshError>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), MeshError>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<BTreeMap<PeerId, PeerInfo>>),
    Stats(oneshot::Sender<MeshStats>),
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
    peers: BTreeMap<PeerId, PeerInfo>,
    stats: MeshStats,
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

/// Builds the swarm and starts listening. Returns the handle, the event stream and the loop to
/// spawn.
pub fn start(
    key: &Keypair,
    config: MeshConfig,
) -> Result<(MeshClient, mpsc::Receiver<MeshEvent>, EventLoop), MeshError> {
    let build = |e: &dyn std::fmt::Display| MeshError::Build(e.to_string());
    let topic = IdentTopic::new(ledger_topic(&config.network));
    let network = config.network.clone();
    let heartbeat = config.heartbeat;
    let use_mdns = config.mdns;
    let mut swarm = SwarmBuilder::with_existing_identity(key.to_libp2p())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| build(&e))?
        .with_quic()
        .with_behaviour(|kp| {
            let gs_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                // Nothing is forwarded before the application has validated it.
                .validate_messages()
                .heartbeat_interval(heartbeat)
                // Leave room for gossipsub's own framing around the payload.
                .max_transmit_size(GOSSIP_BYTES_MAX + 4096)
                // Content-addressed ids: the same payload from two peers is one message.
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(ContentId::of(&m.data).0.to_vec())
                })
                .build()?;
            let mut gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(kp.clone()), gs_config)?;
            let mut score = gossipsub::PeerScoreParams::default();
            score.topics.insert(
                topic.hash(),
                gossipsub::TopicScoreParams {
                    invalid_message_deliveries_weight: -100.0,
                    ..Default::default()
                },
            );
            gossipsub.with_peer_score(score, gossipsub::PeerScoreThresholds::default())?;
            gossipsub.subscribe(&topic)?;
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
            let sync = request_response::Behaviour::with_codec(
                SyncCodec,
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(10))
                    .with_max_concurrent_streams(64),
            );
            Ok(Behaviour {
                sync,
                gossipsub,
                identify,
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| build(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| MeshError::Listen {
                addr: addr.clone(),
                detail: e.to_string(),
            })?;
    }
    for addr in &config.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "bootstrap dial failed");
        }
    }
    let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (events, rx) = mpsc::channel(EVENT_QUEUE);
    let peer_id = *swarm.local_peer_id();
    let ev = EventLoop {
        swarm,
        commands,
        events,
        network: config.network,
        topic,
        peers: BTreeMap::new(),
        stats: MeshStats::default(),
    };
    Ok((MeshClient { tx, peer_id }, rx, ev))
}

impl EventLoop {
    /// Runs until every [`MeshClient`] is dropped.
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                // Local commands first: they are bounded by the application, remote events are not.
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.event(event),
            }
        }
        tracing::debug!("mesh event loop stopped");
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
                    .publish(self.topic.clone(), msg.encode())
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
                let _ = reply.send(self.peers.clone());
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
                let verdict = validate(&self.network, &message.data);
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
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != identify_protocol(&self.network) {
                    // Another network (or not fabnode): do not mix.
                    tracing::debug!(peer = %peer_id, version = %info.protocol_version, "peer of another network; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    self.peers.remove(&peer_id);
                    return;
                }
                let p = self.peers.entry(peer_id).or_default();
                p.agent_version = Some(info.agent_version);
                p.protocols = info.protocols.iter().map(|s| s.to_string()).collect();
                p.addresses = info.listen_addrs;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.peers.entry(peer).or_default().rtt = Some(rtt);
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
                let p = self.peers.entry(peer_id).or_default();
                if !p.addresses.contains(endpoint.get_remote_address()) {
                    p.addresses.push(endpoint.get_remote_address().clone());
                }
                self.emit(MeshEvent::PeerConnected(peer_id));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.peers.remove(&peer_id);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "mesh listening");
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

    /// Answers a peer's sync request.
    pub async fn respond(&self, reply: SyncReply, response: SyncResponse) -> Result<(), MeshError> {
        self.tx
            .send(Command::Respond(reply, response))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Publishes on the ledger topic. Fails with a publish error while no peer is subscribed.
    pub async fn publish(&self, msg: GossipMsg) -> Result<(), MeshError> {
        self.ask(|r| Command::Publish(msg, r)).await?
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

    pub async fn stats(&self) -> Result<MeshStats, MeshError> {
        self.ask(Command::Stats).await
    }
}
