//! The task that owns the swarm: commands in, swarm events handled, mesh events out.

use super::*;

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
