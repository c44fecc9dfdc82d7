//! [`MeshClient`]: the cloneable handle the node uses; every call is a bounded command to the
//! event loop with a oneshot reply.

use super::*;

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
