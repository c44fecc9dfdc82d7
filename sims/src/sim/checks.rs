//! The checkers outside the nodes: convergence, replication progress and the job invariants.

use super::*;

impl Sim {
    /// No job being placed and no run queued or running anywhere: nothing more will be
    /// appended, so convergence now is final.
    pub(super) fn idle(&self) -> bool {
        self.jobs.values().all(|j| j.outcome.is_some())
            && self
                .nodes
                .iter()
                .all(|n| n.queue.is_empty() && n.running.is_empty() && n.committing == 0)
    }

    /// The job invariants, checked from outside the nodes at the end, and the job report.
    pub(super) fn check_jobs(&mut self) {
        let mut violations = Vec::new();
        let mut r = JobReport {
            submitted: self.jobs.len() as u64,
            ..std::mem::take(&mut self.report.jobs)
        };
        for (job, rec) in &self.jobs {
            match &rec.outcome {
                None => {
                    let sub = &self.nodes[rec.submitter];
                    let state = match sub.auction.explain(job) {
                        None => "unknown to its auction".to_owned(),
                        Some(x) => {
                            let standings: Vec<String> = x
                                .candidates
                                .iter()
                                .filter(|(_, _, st)| !matches!(st, auction::Standing::Filtered(_)))
                                .map(|(p, _, st)| format!("{p}: {st:?}"))
                                .collect();
                            format!(
                                "{} attempt(s), outcome {:?}; {}",
                                x.attempts,
                                x.outcome,
                                standings.join(", ")
                            )
                        }
                    };
                    violations.push(format!(
                        "job {} neither finished nor failed by the end (submitted at {:?} on node {}, {}, {} awards; {state})",
                        hex8(job),
                        rec.at,
                        rec.submitter,
                        if sub.up { "up" } else { "down" },
                        rec.awards,
                    ))
                }
                Some(Ok(_)) => {
                    r.completed += 1;
                    if rec.results != 1 {
                        violations.push(format!(
                            "job {} gave its client {} results",
                            hex8(job),
                            rec.results
                        ));
                    }
                }
                Some(Err(reason)) => {
                    r.failed += 1;
                    // Group by the reason's first clause (the rest names candidates),
                    // without the job-specific numbers.
                    let key: String = reason
                        .split([':', ';'])
                        .next()
                        .unwrap_or_default()
                        .chars()
                        .map(|c| if c.is_ascii_digit() { '#' } else { c })
                        .collect();
                    *r.failures.entry(key).or_default() += 1;
                }
            }
            if rec.awards > u32::from(rec.sla.replicas) {
                r.failovers += 1;
            }
        }
        // Every run that finished is in its executor's own feed, and the feed records no run
        // that did not happen.
        for (n, node) in self.nodes.iter().enumerate() {
            let mut ledgered: Vec<(JobId, u32)> = node
                .own
                .iter()
                .filter_map(|e| match &e.body().body {
                    EntryBody::Unknown { kind, value } if *kind == KIND_RUN => run_of(value),
                    _ => None,
                })
                .collect();
            let mut ran = node.finished.clone();
            ledgered.sort_unstable();
            ran.sort_unstable();
            if ledgered != ran {
                violations.push(format!(
                    "node {n}'s feed records {} runs but it finished {}",
                    ledgered.len(),
                    ran.len()
                ));
            }
        }
        // No node holds an entry its author did not write.
        for (h, holder) in self.nodes.iter().enumerate() {
            for (feed, entries) in &holder.replicas {
                let Some(&o) = self.index.get(feed) else {
                    violations.push(format!("node {h} holds a feed of no node"));
                    continue;
                };
                // Its own entries, or second versions it signed (an equivocator's forks).
                let author = &self.nodes[o];
                let wrote = |i: usize, id: &ContentId| {
                    author.own_ids.get(i) == Some(id) || author.forks.contains_key(id)
                };
                if let Some(bad) = entries.iter().enumerate().position(|(i, id)| !wrote(i, id)) {
                    violations.push(format!(
                        "node {h} holds entry {bad} of node {o}'s feed that node {o} never wrote"
                    ));
                }
            }
        }
        // A fork that split the honest nodes (some hold one version, some the other) was
        // noticed. A second version that reached nobody, or only nodes that lost it in a
        // crash, split nothing.
        for (n, node) in self.nodes.iter().enumerate() {
            let holds = |id: &ContentId, i: usize| {
                self.nodes.iter().any(|h| {
                    !h.left
                        && !h.byzantine
                        && h.replicas
                            .get(&node.key.to_bytes())
                            .is_some_and(|ids| ids.get(i) == Some(id))
                })
            };
            let splits = node
                .forks
                .iter()
                .filter(|(twin, e)| {
                    let i = e.body().seq as usize;
                    holds(twin, i) && node.own_ids.get(i).is_some_and(|a| holds(a, i))
                })
                .count();
            if splits > 0 && self.noticed.get(&n).copied().unwrap_or(0) == 0 {
                violations.push(format!(
                    "node {n}'s feed is split between honest nodes at {splits} fork(s) and no honest node reported it"
                ));
            }
        }
        let mut lat = std::mem::take(&mut self.latencies);
        lat.sort_unstable();
        let q = |p: usize| {
            lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        r.latency_us = [q(50), q(95), q(99)];
        r.latencies_us = lat;
        r.runs_per_node = self
            .nodes
            .iter()
            .map(|n| {
                (
                    self.config.profiles[n.profile].name.clone(),
                    n.finished.len() as u64,
                )
            })
            .collect();
        let loads: Vec<u64> = self.nodes.iter().map(|n| n.finished.len() as u64).collect();
        r.gini_permille = (gini(&loads) * 1000.0).round() as u64;
        self.report.jobs = r;
        self.report.violations.extend(violations);
    }

    /// Whether every node holds every other whole feed of its shard, with the owner's head.
    pub(super) fn converged(&self) -> bool {
        self.nodes
            .iter()
            .filter(|h| !h.left)
            .all(|holder| self.holds_shard(holder))
    }

    /// Whether `holder` holds every whole feed of its shard (but forked ones), with the
    /// owner's head.
    pub(super) fn holds_shard(&self, holder: &Node) -> bool {
        self.shard_of(holder)
            .filter(|o| o.forks.is_empty())
            .all(|owner| {
                let want = self.target(owner);
                holder.held(&owner.key).map_or(want == 0, |es| {
                    es.len() == want
                        && es.last().copied() == want.checked_sub(1).map(|i| owner.own_ids[i])
                })
            })
    }

    /// After the faults healed: notes, for each live node, when it last came to hold every
    /// feed of its shard (a node that falls behind again, as runs still in flight append,
    /// starts over).
    pub(super) fn note_caught_up(&mut self, now: Duration) {
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            let holds = !node.left && node.up && self.holds_shard(node);
            let at = &mut self.caught_up[n];
            match (holds, *at) {
                (true, None) => *at = Some(now),
                (false, Some(_)) => *at = None,
                _ => {}
            }
        }
    }

    /// Of the entries live nodes should hold (every other feed of their shard, as far as it
    /// exists), how many they hold, and how many that is.
    pub(super) fn replicated(&self) -> (u64, u64) {
        let (mut held, mut want) = (0u64, 0u64);
        for holder in self.nodes.iter().filter(|n| !n.left) {
            for owner in self.shard_of(holder).filter(|o| o.forks.is_empty()) {
                if owner.key == holder.key {
                    continue;
                }
                let w = self.target(owner) as u64;
                want += w;
                held += (holder.held(&owner.key).map_or(0, <[ContentId]>::len) as u64).min(w);
            }
        }
        (held, want)
    }

    /// How much of a feed every live node must hold: all of it while its author is in the
    /// mesh; of a node that left, what survives on live nodes (entries it never got out left
    /// with it).
    pub(super) fn target(&self, owner: &Node) -> usize {
        if !owner.left {
            return owner.own.len();
        }
        self.shard_of(owner)
            .filter(|h| !h.left && h.key != owner.key)
            .filter_map(|h| h.held(&owner.key).map(<[ContentId]>::len))
            .max()
            .unwrap_or(0)
    }

    /// The members of `node`'s shard (itself included): the nodes that hold its feed and
    /// whose feeds it holds.
    pub(super) fn shard_of<'a>(&'a self, node: &Node) -> impl Iterator<Item = &'a Node> + 'a {
        self.members[usize::from(node.shard)]
            .iter()
            .map(|&i| &self.nodes[i])
    }
}
