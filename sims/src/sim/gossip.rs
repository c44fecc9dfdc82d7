//! Gossip on a simulated node: telemetry (the node's publication rule, its view), publishing
//! and forwarding, and the gossipsub heartbeat with IHAVE/IWANT.

use super::*;

impl Sim {
    /// A node's telemetry now, from its device class and state.
    pub(super) fn telemetry_of(&self, n: usize) -> Telemetry {
        let node = &self.nodes[n];
        let p = &self.config.profiles[node.profile];
        let busy = node.running.len() as u32;
        Telemetry {
            tier: p.tier,
            region: REGIONS[n % REGIONS.len()].to_owned(),
            labels: Default::default(),
            price_per_s_micros: p.price_per_s_micros,
            queue_depth: (node.queue.len() as u32).saturating_add(busy),
            workers: p.workers,
            speed_permille: p.speed_permille,
            power_mw: p.power_mw,
            battery_permille: node.battery_mj.zip(p.battery_mj).map(|(left, cap)| {
                u32::try_from(left.saturating_mul(1000) / cap.max(1)).unwrap_or(1000)
            }),
            model_latency_us: node.model_latency.clone(),
            host: Host {
                cores: p.cores,
                load_permille: busy.saturating_mul(1000) / p.workers.max(1),
                mem_free_mib: p.mem_mib,
                temp_max_mc: None,
            },
            at_ms: self.engine.now().as_millis() as u64,
        }
    }

    /// Publishes `n`'s telemetry when the node's rule says it is due
    /// ([`fab_node::sched::telemetry::publish_due`]).
    pub(super) fn maybe_publish(&mut self, n: usize) {
        if !self.nodes[n].up {
            return;
        }
        let telemetry = self.telemetry_of(n);
        let now = self.engine.now();
        let last = self.nodes[n]
            .published
            .as_ref()
            .map(|(t, at)| (t, now.saturating_sub(*at)));
        let every = self.config.telemetry_every;
        // As the node: a third of the staleness limit, so one lost report does not drop it.
        let refresh = every.max(self.config.telemetry_stale / 3);
        if publish_due(last, &telemetry, every, refresh) {
            self.publish_telemetry(n, telemetry);
        }
    }

    pub(super) fn publish_telemetry(&mut self, n: usize, telemetry: Telemetry) {
        let now = self.engine.now();
        let node = &mut self.nodes[n];
        node.published = Some((telemetry.clone(), now));
        // As the node numbers them: after the clock, so a restarted node's reports (its
        // counter back at 0) still supersede the ones peers hold.
        node.telemetry_seq = node.telemetry_seq.max(telemetry.at_ms) + 1;
        let report = TelemetryReport {
            node: node.key,
            seq: node.telemetry_seq,
            telemetry,
        };
        let payload = SignedTelemetry::sign(report, &node.keypair).encode();
        self.publish(n, Payload::new(payload, true));
    }

    /// A telemetry report arrives by gossip: checked (once per distinct payload), offered to
    /// the node's view, forwarded.
    pub(super) fn telemetry_in(&mut self, to: usize, from: usize, payload: Payload) {
        if !self.nodes[to].first_sight(payload.id, self.engine.now()) {
            return;
        }
        let report = self
            .reports
            .entry(payload.id)
            .or_insert_with(|| SignedTelemetry::decode_verified(&payload.bytes).ok())
            .clone();
        let Some(report) = report else {
            self.report
                .violations
                .push(format!("{to} rejected honest telemetry from {from}"));
            return;
        };
        let now_ms = self.engine.now().as_millis() as u64;
        // A stale or replayed report is refused by the view and not forwarded.
        if self.nodes[to].view.offer(&report, now_ms).is_ok() {
            self.forward(to, from, payload);
        }
    }

    /// Keeps a newly accepted gossip message in the message cache (for IWANT) and forwards it
    /// to the node's mesh peers, not back to the sender.
    pub(super) fn forward(&mut self, node: usize, from: usize, payload: Payload) {
        self.cache(node, &payload);
        let mesh: Vec<usize> = self.nodes[node]
            .mesh
            .iter()
            .copied()
            .filter(|p| *p != from)
            .collect();
        for p in mesh {
            self.send(node, p, Msg::Gossip(payload.clone()));
        }
    }

    /// Keeps a message in `n`'s message cache (it answers IWANT from there).
    fn cache(&mut self, n: usize, payload: &Payload) {
        if let Some(window) = self.nodes[n].mcache.front_mut() {
            window.push(payload.clone());
        }
    }

    /// Publishes an own message: to every connected peer of its shard (flood publishing on
    /// the shard's topic), and into the message cache.
    pub(super) fn publish(&mut self, n: usize, payload: Payload) {
        let peers = self.gossip_peers(n);
        self.publish_to(n, payload, &peers);
    }

    /// Publishes an own message to some of `n`'s connections (an equivocator splits them).
    pub(super) fn publish_to(&mut self, n: usize, payload: Payload, to: &[usize]) {
        self.cache(n, &payload);
        let now = self.engine.now();
        self.nodes[n].first_sight(payload.id, now);
        for &p in to {
            self.send(n, p, Msg::Gossip(payload.clone()));
        }
    }

    /// A gossipsub heartbeat on `n`: the mesh is topped up to D from live connections when
    /// below D_lo and trimmed to D when above D_hi; ids from the last few heartbeats go as
    /// IHAVE to D_lazy connected peers outside the mesh; the message cache shifts.
    pub(super) fn heartbeat(&mut self, n: usize) {
        let live: Vec<usize> = self.shard_links[n]
            .iter()
            .copied()
            .filter(|p| self.nodes[*p].up)
            .collect();
        let node = &mut self.nodes[n];
        node.mesh.retain(|p| live.contains(p));
        if node.mesh.len() < MESH_LOW {
            let mut spare: Vec<usize> = live
                .iter()
                .copied()
                .filter(|p| !self.nodes[n].mesh.contains(p))
                .collect();
            while self.nodes[n].mesh.len() < MESH_DEGREE && !spare.is_empty() {
                let i = self.engine.uniform(0, spare.len() as u64 - 1) as usize;
                let p = spare.swap_remove(i);
                self.nodes[n].mesh.insert(p);
            }
        } else if node.mesh.len() > MESH_HIGH {
            let mut members: Vec<usize> = node.mesh.iter().copied().collect();
            while members.len() > MESH_DEGREE {
                let i = self.engine.uniform(0, members.len() as u64 - 1) as usize;
                members.swap_remove(i);
            }
            self.nodes[n].mesh = members.into_iter().collect();
        }
        let mut ids: Vec<[u8; 32]> = self.nodes[n]
            .mcache
            .iter()
            .take(MCACHE_GOSSIP)
            .flat_map(|w| w.iter().map(|p| p.id))
            .collect();
        ids.truncate(CONTROL_IDS_MAX);
        if !ids.is_empty() {
            let mut lazy: Vec<usize> = live
                .iter()
                .copied()
                .filter(|p| !self.nodes[n].mesh.contains(p))
                .collect();
            for _ in 0..GOSSIP_LAZY.min(lazy.len()) {
                let i = self.engine.uniform(0, lazy.len() as u64 - 1) as usize;
                let p = lazy.swap_remove(i);
                self.send(n, p, Msg::IHave(ids.clone()));
            }
        }
        let cache = &mut self.nodes[n].mcache;
        cache.push_front(Vec::new());
        cache.truncate(MCACHE_LEN);
    }
}
