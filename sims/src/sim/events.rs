//! The simulation's event loop: delivering messages over the simulated network, gossip and
//! replication at each node, faults, timers and the checks run along the way.

use super::*;

impl Sim {
    fn faulty(&self) -> bool {
        self.engine.now() < self.fault_end
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        let half = self.nodes.len() / 2;
        self.partition
            .is_some_and(|(s, e)| (s..e).contains(&self.engine.now()) && (a < half) != (b < half))
    }

    pub(super) fn send(&mut self, from: usize, to: usize, msg: Msg) {
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

    /// Calls `n`'s mesh core, carries out what it decided, publishes what it releases and
    /// keeps its wake-up scheduled: what the node's mesh task does after each event.
    pub(super) fn core(
        &mut self,
        n: usize,
        call: impl FnOnce(&mut MeshNode<usize, ()>, Duration, &mut Vec<Output<usize>>),
    ) {
        let now = self.engine.now();
        let mut out = Vec::new();
        call(&mut self.nodes[n].core, now, &mut out);
        self.apply(n, out);
        self.drive(n);
    }

    /// Publishes what `n`'s core releases now (a checkpoint is signed as it goes out, over the
    /// entries released before it) and schedules the core's next wake-up.
    fn drive(&mut self, n: usize) {
        let now = self.engine.now();
        while let Some(gossip) = self.nodes[n].core.poll_gossip(now) {
            let payload = match gossip {
                Gossip::Entries(msg) => msg.encode(),
                Gossip::Checkpoint(()) => {
                    let node = &self.nodes[n];
                    let cp = fab_ledger::checkpoint::Checkpoint::sign(
                        &node.keypair,
                        NETWORK,
                        node.own.len() as u64,
                        node.tree.root(),
                    );
                    let feed = node.key.to_bytes();
                    GossipMsg::Checkpoint {
                        feed,
                        note: cp.note,
                    }
                    .encode()
                }
            };
            self.publish(n, Payload::new(payload, false));
        }
        if let Some(t) = self.nodes[n].core.poll_timeout() {
            let t = t.max(now);
            if self.nodes[n].core_wake.is_none_or(|w| t < w) {
                self.nodes[n].core_wake = Some(t);
                self.engine.after(t - now, Event::Core(n));
            }
        }
    }

    pub(super) fn handle(&mut self, event: Event) {
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
            Event::Core(n) => {
                if !self.nodes[n].up {
                    return; // a restart schedules its own
                }
                if self.nodes[n].core_wake.is_some_and(|w| w <= now) {
                    self.nodes[n].core_wake = None;
                }
                self.core(n, |core, now, out| {
                    core.handle_timeout(now, out);
                });
            }
            Event::AuctionTick(n) => {
                if self.nodes[n].auction_wake.is_some_and(|w| w <= now) {
                    self.nodes[n].auction_wake = None;
                }
                if !self.nodes[n].up {
                    return; // a restart starts a new auction
                }
                if self.nodes[n]
                    .auction
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                {
                    self.auction(n, auction::Input::Tick);
                } else {
                    self.schedule_auction(n);
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
                        match verdict {
                            Ok(valid) => {
                                let mut used = false;
                                self.core(to, |core, now, out| {
                                    used = core.gossip(from, valid, now, out);
                                });
                                if used {
                                    self.forward(to, from, payload);
                                }
                            }
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
                        let replicas = me.replicas.iter().filter_map(|(feed, ids)| {
                            let &o = self.index.get(feed)?;
                            Some((self.nodes[o].key, ids.len() as u64))
                        });
                        let heads = serve_heads(me.key, me.own.len() as u64, replicas);
                        self.send(to, from, Msg::Heads(heads));
                    }
                    Msg::Heads(heads) => {
                        self.core(to, |core, now, out| core.heads(from, heads, now, out));
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
                        self.core(to, |core, now, out| {
                            core.range(from, feed, start, entries, now, out);
                        });
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
                self.core(p, |core, now, out| core.peer_down(n, now, out));
            }
        }
    }

    pub(super) fn same_shard(&self, a: usize, b: usize) -> bool {
        self.nodes[a].shard == self.nodes[b].shard
    }

    /// `a` and `b` are connected: peers of one shard replicate with each other.
    fn peer_up(&mut self, a: usize, b: usize) {
        if self.same_shard(a, b) {
            self.core(a, |core, now, out| core.peer_up(b, now, out));
            self.core(b, |core, now, out| core.peer_up(a, now, out));
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
    pub(super) fn gossip_peers(&self, n: usize) -> Vec<usize> {
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
    pub(super) fn link_to(&self, a: usize, b: usize) -> Link {
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
    pub(super) fn append(&mut self, n: usize, body: EntryBody) {
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
        self.report.entries += 1;
        let Some(twin) = twin else {
            // Paced like the node's: out at once after a quiet spell, batched under load.
            self.core(n, |core, _, _| core.committed([entry.encode()], ()));
            return;
        };
        // One version to half its peers, the other to the rest, at once (an equivocator does
        // not follow the pacing); both answer IWANT.
        self.report.forks += 1;
        trace_event(&mut self.trace, 8, &[n]);
        self.nodes[n].forks.insert(twin.id(), twin.clone());
        let payload = GossipMsg::Entry(entry.encode()).encode();
        let other = GossipMsg::Entry(twin.encode()).encode();
        let links = self.gossip_peers(n);
        let (first, rest) = links.split_at(links.len() / 2);
        self.publish_to(n, Payload::new(payload, false), first);
        self.publish_to(n, Payload::new(other, false), rest);
        self.core(n, |core, _, _| core.committed([], ()));
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
    pub(super) fn rpc(&mut self, from: usize, to: usize, msg: Msg) {
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
