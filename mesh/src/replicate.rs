//! Ledger replication, sans-IO: what to store, what to fetch and whom to penalise, for every
//! peer feed a node follows.
//!
//! # Calling contract
//!
//! The driver (the node, or the simulator) calls [`Replicator::handle`] with one [`Input`] and
//! the current time, and carries out every [`Output`] it returns, in order: `Store` durably, then
//! the rest. It gives [`Input::Tick`] when [`Replicator::poll_timeout`] says (ask again after
//! every `handle`); a core with no peers and no outstanding request never needs waking. Entries and checkpoints from gossip must already have passed
//! [`crate::validate::validate`] (signatures checked); entries in a range response are checked
//! here. Nothing here reads the clock, touches storage or the network, or iterates a `HashMap`:
//! the same inputs give the same outputs on every machine.
//!
//! # Rules
//!
//! - An entry is stored only when it extends the feed's verified chain (`seq` = next, link to
//!   the head); a later one waits in a bounded buffer and the gap is requested from the peer that
//!   showed it; an earlier one is a duplicate and dropped.
//! - A checkpoint at exactly the replica's size must sign the root the replica computes: then it
//!   becomes the feed's trusted head; a different root is a conflict (the feed signed two
//!   histories). A checkpoint ahead of the replica triggers a range request.
//! - A range response must continue the chain; a response entry that fails verification
//!   penalises the peer that sent it.
//! - A range request to a peer is not repeated for the same gap until it times out, or until
//!   that peer goes away.
//! - Anti-entropy: a peer is asked for its heads when it comes up, and every `heads_every` the
//!   next `heads_peers` peers in (key-ordered) rotation are asked, so the cost stays flat as the
//!   mesh grows while any peer that holds what this node lacks eventually repairs it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::Duration;

use fab_ledger::checkpoint::Checkpoint;
use fab_ledger::entry::FeedVerifier;
use fab_ledger::merkle::{Frontier, leaf_hash};
use fab_ledger::{PublicKey, SignedEntry};

/// Tunables; every one bounds memory or traffic.
#[derive(Clone, Debug)]
pub struct ReplicateConfig {
    /// Out-of-order entries kept per feed while a gap is fetched.
    pub pending_max: usize,
    /// Bytes of out-of-order entries kept across all feeds (signed bytes): beyond it, entries
    /// that arrive ahead of their feed's chain are dropped and fetched again in order.
    pub pending_bytes_max: usize,
    /// Most entries asked for in one range request.
    pub range_max: u64,
    /// How long a range request may stay unanswered before it is asked again.
    pub request_timeout: Duration,
    /// Feeds followed at most.
    pub feeds_max: usize,
    /// Of those, feeds with no entry stored yet (known only from a peer's claim) at most: a
    /// new one evicts the oldest of them, so a flood of claims about fresh keys can
    /// neither grow memory nor push out a feed that has entries.
    pub empty_feeds_max: usize,
    /// Pieces of evidence (conflicting positions) emitted per feed at most; each position
    /// once.
    pub evidence_per_feed_max: usize,
    /// How often connected peers are asked for their heads.
    pub heads_every: Duration,
    /// How many peers are asked each round.
    pub heads_peers: usize,
    /// The feeds followed: those of this node's shard (every feed with one shard). Entries,
    /// checkpoints and heads of other feeds are ignored.
    pub scope: crate::shard::Scope,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        ReplicateConfig {
            pending_max: 1024,
            pending_bytes_max: 16 << 20,
            range_max: 512,
            request_timeout: Duration::from_secs(2),
            feeds_max: 10_000,
            empty_feeds_max: 1024,
            evidence_per_feed_max: 16,
            heads_every: Duration::from_secs(3),
            heads_peers: 2,
            scope: crate::shard::Scope::ALL,
        }
    }
}

/// Something that happened.
#[derive(Clone, Debug)]
pub enum Input<P> {
    /// A validated entry from gossip.
    Entry { from: P, entry: SignedEntry },
    /// A validated checkpoint from gossip.
    Checkpoint {
        from: P,
        feed: PublicKey,
        checkpoint: Checkpoint,
    },
    /// A peer's feed sizes (anti-entropy exchange).
    Heads {
        from: P,
        heads: Vec<(PublicKey, u64)>,
    },
    /// A peer's answer to a range request: encoded entries from `start`.
    Range {
        from: P,
        feed: PublicKey,
        start: u64,
        entries: Vec<Vec<u8>>,
    },
    /// Time passed: retry requests that timed out, and run the heads exchange when it is due.
    Tick,
    /// A connection to a peer of this mesh is up.
    PeerUp(P),
    /// The last connection to a peer closed.
    PeerDown(P),
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output<P> {
    /// Persist these entries of `feed` (contiguous, verified, in order).
    Store {
        feed: PublicKey,
        entries: Vec<SignedEntry>,
    },
    /// `checkpoint` now signs exactly the stored replica: keep it as the feed's trusted head.
    Trust {
        feed: PublicKey,
        checkpoint: Checkpoint,
    },
    /// Ask `peer` which feeds it holds and how far (a heads request).
    AskHeads { peer: P },
    /// Ask `peer` for `count` entries of `feed` from `start`.
    Request {
        peer: P,
        feed: PublicKey,
        start: u64,
        count: u64,
    },
    /// `peer` sent something that fails verification.
    Penalize { peer: P, reason: String },
    /// The feed signed something that contradicts what the replica holds.
    Conflict {
        feed: PublicKey,
        seq: u64,
        detail: String,
    },
    /// Proof of a conflict anyone can check offline: two different entries the feed signed
    /// for one position (the replica's head and another). Follows its `Conflict`; keep it
    /// (`fab_ledger::evidence::Evidence::entries`).
    Evidence {
        feed: PublicKey,
        held: Box<SignedEntry>,
        other: Box<SignedEntry>,
    },
}

#[derive(Clone, Debug)]
struct Feed<P> {
    key: PublicKey,
    verifier: FeedVerifier,
    tree: Frontier,
    trusted: Option<Checkpoint>,
    pending: BTreeMap<u64, SignedEntry>,
    /// Largest size shown by any peer.
    known: u64,
    /// Signed time of the last stored entry.
    last_time_ms: Option<u64>,
    /// The last entry stored since this core started (the evidence against a second one).
    head: Option<SignedEntry>,
    /// Outstanding request: (peer, start, count, asked at).
    asked: Option<(P, u64, u64, Duration)>,
    /// Positions whose conflict was already reported (at most `evidence_per_feed_max`).
    conflicts: BTreeSet<u64>,
}

impl<P> Feed<P> {
    fn new(key: PublicKey, verifier: FeedVerifier, tree: Frontier) -> Self {
        Feed {
            key,
            verifier,
            tree,
            trusted: None,
            pending: BTreeMap::new(),
            known: 0,
            last_time_ms: None,
            head: None,
            asked: None,
            conflicts: BTreeSet::new(),
        }
    }
}

/// Bytes an out-of-order entry costs the pending budget.
fn pending_cost(e: &SignedEntry) -> usize {
    e.signed_bytes().len() + 64
}

/// The replication state of every followed feed.
#[derive(Clone, Debug)]
pub struct Replicator<P> {
    config: ReplicateConfig,
    /// Keyed by the feed's public key bytes: deterministic order.
    feeds: BTreeMap<[u8; 32], Feed<P>>,
    /// Connected peers, in order: the heads-exchange rotation.
    peers: BTreeSet<P>,
    heads_turn: usize,
    last_heads: Option<Duration>,
    /// Bytes of out-of-order entries held across every feed.
    pending_bytes: usize,
    /// Feeds followed without an entry stored yet, and the order they were first named in
    /// (keys of feeds that have since stored entries are skipped when met).
    empty_count: usize,
    empty_order: std::collections::VecDeque<[u8; 32]>,
    /// No outstanding range request times out before this (it may be earlier than the real
    /// earliest timeout, never later: a tick recomputes it exactly).
    request_due: Option<Duration>,
}

/// Where a feed's replica stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedHead {
    pub feed: PublicKey,
    pub size: u64,
    pub trusted_size: Option<u64>,
    pub pending: usize,
    /// The largest size any peer has shown for this feed (heads, checkpoints, entries):
    /// `known_size - size` is how far the replica lags.
    pub known_size: u64,
    /// Signed time of the last stored entry.
    pub last_time_ms: Option<u64>,
}

impl<P: Clone + Ord + std::fmt::Debug> Replicator<P> {
    pub fn new(config: ReplicateConfig) -> Self {
        Replicator {
            config,
            feeds: BTreeMap::new(),
            peers: BTreeSet::new(),
            heads_turn: 0,
            last_heads: None,
            pending_bytes: 0,
            empty_count: 0,
            empty_order: Default::default(),
            request_due: None,
        }
    }

    /// When the core next needs [`Input::Tick`]: the next heads exchange while peers are
    /// connected, or the timeout of an outstanding range request; `None` when neither (an idle
    /// node with no peers is never woken). Ask again after every `handle`.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let heads = (!self.peers.is_empty()).then(|| {
            self.last_heads
                .map_or(Duration::ZERO, |t| t + self.config.heads_every)
        });
        heads.into_iter().chain(self.request_due).min()
    }

    /// Bytes of out-of-order entries held now, across every feed.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Follows `feed` from where the local store stands: `size` entries with head id `head`,
    /// signed at `last_time_ms`, the tree border `tree` (from the store), and its last trusted
    /// checkpoint.
    pub fn resume(
        &mut self,
        feed: PublicKey,
        size: u64,
        head: Option<fab_ledger::ContentId>,
        last_time_ms: Option<u64>,
        tree: Frontier,
        trusted: Option<Checkpoint>,
    ) {
        let mut f = Feed::new(feed, FeedVerifier::resume(feed, size, head), tree);
        f.trusted = trusted;
        f.known = size;
        f.last_time_ms = last_time_ms;
        if let Some(old) = self.feeds.insert(feed.to_bytes(), f) {
            self.pending_bytes -= old.pending.values().map(pending_cost).sum::<usize>();
            if old.verifier.next_seq() == 0 {
                self.empty_count -= 1;
            }
        }
        if size == 0 {
            self.empty_order.push_back(feed.to_bytes());
            self.empty_count += 1;
        }
    }

    /// Every followed feed's position, in key order.
    pub fn heads(&self) -> Vec<FeedHead> {
        self.feeds
            .values()
            .map(|f| FeedHead {
                feed: f.key,
                size: f.verifier.next_seq(),
                trusted_size: f.trusted.as_ref().map(|c| c.size),
                pending: f.pending.len(),
                known_size: f.known.max(f.verifier.next_seq()),
                last_time_ms: f.last_time_ms,
            })
            .collect()
    }

    /// The feed `key`, followed from now on if it is not yet and a bound allows. Constant work
    /// per new feed (a heads answer may name 10,000 fresh keys).
    fn feed(&mut self, key: PublicKey) -> Option<&mut Feed<P>> {
        let k = key.to_bytes();
        if !self.feeds.contains_key(&k) {
            if !self.config.scope.contains(&key) {
                return None;
            }
            if self.empty_count >= self.config.empty_feeds_max
                || self.feeds.len() >= self.config.feeds_max
            {
                // Make room by forgetting the oldest feed still without entries; a feed with
                // entries is never evicted (queue entries of those are skipped).
                loop {
                    let victim = self.empty_order.pop_front()?;
                    if self
                        .feeds
                        .get(&victim)
                        .is_some_and(|f| f.verifier.next_seq() == 0)
                    {
                        if let Some(old) = self.feeds.remove(&victim) {
                            self.pending_bytes -=
                                old.pending.values().map(pending_cost).sum::<usize>();
                        }
                        self.empty_count -= 1;
                        break;
                    }
                }
            }
            self.feeds
                .insert(k, Feed::new(key, FeedVerifier::new(key), Frontier::new()));
            self.empty_order.push_back(k);
            self.empty_count += 1;
        }
        self.feeds.get_mut(&k)
    }

    /// Keeps the count of feeds without entries when `key`'s replica may have stored its first.
    fn settle(&mut self, key: &PublicKey, was_empty: bool) {
        if was_empty
            && self
                .feeds
                .get(&key.to_bytes())
                .is_some_and(|f| f.verifier.next_seq() > 0)
        {
            self.empty_count -= 1;
        }
    }

    pub fn handle(&mut self, input: Input<P>, now: Duration, out: &mut impl Extend<Output<P>>) {
        let config = self.config.clone();
        match input {
            Input::Entry { from, entry } => {
                let key = entry.body().feed;
                let (mut budget, mut due) = (self.pending_bytes, self.request_due);
                let mut was_empty = false;
                if let Some(f) = self.feed(key) {
                    was_empty = f.verifier.next_seq() == 0;
                    f.known = f.known.max(entry.body().seq.saturating_add(1));
                    offer(f, &config, (&mut budget, &mut due), from, entry, now, out);
                }
                (self.pending_bytes, self.request_due) = (budget, due);
                self.settle(&key, was_empty);
            }
            Input::Checkpoint {
                from,
                feed,
                checkpoint,
            } => {
                if let Some(f) = self.feed(feed) {
                    f.known = f.known.max(checkpoint.size);
                    let size = f.verifier.next_seq();
                    if checkpoint.size == size && size > 0 {
                        if checkpoint.root == f.tree.root() {
                            f.trusted = Some(checkpoint.clone());
                            out.extend([Output::Trust { feed, checkpoint }]);
                        } else {
                            out.extend([Output::Conflict {
                                feed,
                                seq: size - 1,
                                detail: format!(
                                    "checkpoint {size} signs a root other than the replica's"
                                ),
                            }]);
                        }
                    } else if checkpoint.size > size
                        && ask(f, &config, from, checkpoint.size, now, out)
                    {
                        self.request_due.get_or_insert(now + config.request_timeout);
                    }
                }
            }
            Input::Heads { from, heads } => {
                for (feed, their_size) in heads {
                    if let Some(f) = self.feed(feed) {
                        f.known = f.known.max(their_size);
                        if their_size > f.verifier.next_seq()
                            && ask(f, &config, from.clone(), their_size, now, out)
                        {
                            self.request_due.get_or_insert(now + config.request_timeout);
                        }
                    }
                }
            }
            Input::Range {
                from,
                feed,
                start,
                entries,
            } => {
                let (mut budget, mut due) = (self.pending_bytes, self.request_due);
                let Some(f) = self.feed(feed) else {
                    return;
                };
                let was_empty = f.verifier.next_seq() == 0;
                if f.asked
                    .as_ref()
                    .is_some_and(|(p, s, _, _)| *p == from && *s == start)
                {
                    f.asked = None;
                }
                // Every signature of the range in one batch; if one is bad, the entries before
                // it are still taken (checked one by one) and the sender is penalised.
                let (good, bad) = match fab_ledger::entry::decode_verified_many(&entries) {
                    Ok(all) => (all, None),
                    Err((i, e)) => {
                        let before = entries[..i]
                            .iter()
                            .map_while(|b| SignedEntry::decode_verified(b).ok())
                            .collect();
                        (
                            before,
                            Some(format!(
                                "range entry {}: {e}",
                                start.saturating_add(i as u64)
                            )),
                        )
                    }
                };
                for (i, e) in good.into_iter().enumerate() {
                    // Checked: a range claimed to start near u64::MAX has no position past it.
                    let seq = start.checked_add(i as u64);
                    if e.body().feed != feed || Some(e.body().seq) != seq {
                        out.extend([Output::Penalize {
                            peer: from,
                            reason: format!(
                                "range entry #{i} from {start} is not that entry of the feed asked for"
                            ),
                        }]);
                        (self.pending_bytes, self.request_due) = (budget, due);
                        self.settle(&feed, was_empty);
                        return;
                    }
                    offer(
                        f,
                        &config,
                        (&mut budget, &mut due),
                        from.clone(),
                        e,
                        now,
                        out,
                    );
                }
                (self.pending_bytes, self.request_due) = (budget, due);
                self.settle(&feed, was_empty);
                if let Some(reason) = bad {
                    out.extend([Output::Penalize { peer: from, reason }]);
                }
            }
            Input::PeerUp(peer) => {
                if self.peers.insert(peer.clone()) {
                    out.extend([Output::AskHeads { peer }]);
                }
            }
            Input::PeerDown(peer) => {
                self.peers.remove(&peer);
                // A gap asked of this peer will not be answered: ask someone else next time.
                for f in self.feeds.values_mut() {
                    if f.asked.as_ref().is_some_and(|(p, ..)| *p == peer) {
                        f.asked = None;
                    }
                }
            }
            Input::Tick => {
                let due = self
                    .last_heads
                    .is_none_or(|t| now.saturating_sub(t) >= config.heads_every);
                if due && !self.peers.is_empty() {
                    self.last_heads = Some(now);
                    let n = self.peers.len();
                    let ask: Vec<P> = self
                        .peers
                        .iter()
                        .cycle()
                        .skip(self.heads_turn % n)
                        .take(config.heads_peers.min(n))
                        .cloned()
                        .collect();
                    self.heads_turn = (self.heads_turn + ask.len()) % n;
                    out.extend(ask.into_iter().map(|peer| Output::AskHeads { peer }));
                }
                for f in self.feeds.values_mut() {
                    if let Some((silent, _, _, at)) = f.asked.clone()
                        && now.saturating_sub(at) >= config.request_timeout
                    {
                        f.asked = None;
                        let target = f
                            .pending
                            .keys()
                            .next()
                            .copied()
                            .unwrap_or(f.verifier.next_seq());
                        // The next connected peer after the silent one, in turn: a peer that
                        // never answers (gone without a disconnect seen, or faulty) must not
                        // hold the gap open forever.
                        let next = self
                            .peers
                            .range((Bound::Excluded(&silent), Bound::Unbounded))
                            .next()
                            .or_else(|| self.peers.iter().next())
                            .cloned()
                            .unwrap_or(silent);
                        if target > f.verifier.next_seq() {
                            ask(f, &config, next, target, now, out);
                        }
                    }
                }
                // Exact again: the earliest timeout of what is still outstanding.
                self.request_due = self
                    .feeds
                    .values()
                    .filter_map(|f| f.asked.as_ref().map(|a| a.3 + config.request_timeout))
                    .min();
            }
        }
    }
}

/// Offers one signature-checked entry to a feed's replica; `pending_bytes` is the budget of
/// out-of-order entries held across every feed, `request_due` the core's earliest request
/// timeout (set when this asks for a gap).
fn offer<P: Clone + Ord>(
    f: &mut Feed<P>,
    config: &ReplicateConfig,
    (pending_bytes, request_due): (&mut usize, &mut Option<Duration>),
    from: P,
    entry: SignedEntry,
    now: Duration,
    out: &mut impl Extend<Output<P>>,
) {
    let seq = entry.body().seq;
    let next = f.verifier.next_seq();
    if seq < next {
        // A second entry for the head's position: reported once per position, and at most
        // `evidence_per_feed_max` positions per feed, however many copies arrive.
        if seq.checked_add(1) == Some(next)
            && f.verifier.head() != Some(entry.id())
            && !f.conflicts.contains(&seq)
            && f.conflicts.len() < config.evidence_per_feed_max
        {
            f.conflicts.insert(seq);
            out.extend([Output::Conflict {
                feed: f.key,
                seq,
                detail: format!("a second, different entry {seq}"),
            }]);
            if let Some(held) = f.head.clone() {
                out.extend([Output::Evidence {
                    feed: f.key,
                    held: Box::new(held),
                    other: Box::new(entry),
                }]);
            }
        }
        return;
    }
    if seq > next {
        let cost = pending_cost(&entry);
        if f.pending.len() < config.pending_max
            && !f.pending.contains_key(&seq)
            && pending_bytes.saturating_add(cost) <= config.pending_bytes_max
        {
            *pending_bytes += cost;
            f.pending.insert(seq, entry);
        }
        if ask(f, config, from, seq, now, out) {
            request_due.get_or_insert(now + config.request_timeout);
        }
        return;
    }
    let mut stored = Vec::new();
    let mut candidate = Some(entry);
    while let Some(e) = candidate.take() {
        match f.verifier.push_checked(&e) {
            Ok(()) => {
                f.tree.append(leaf_hash(&e.encode()));
                f.last_time_ms = Some(e.body().time_ms);
                f.head = Some(e.clone());
                stored.push(e);
                candidate = f.pending.remove(&f.verifier.next_seq());
                if let Some(c) = &candidate {
                    *pending_bytes -= pending_cost(c);
                }
            }
            Err(err) => {
                out.extend([Output::Conflict {
                    feed: f.key,
                    seq: err.seq,
                    detail: err.kind.to_string(),
                }]);
                break;
            }
        }
    }
    // Drop anything the chain has moved past.
    let next = f.verifier.next_seq();
    f.pending.retain(|s, e| {
        let keep = *s >= next;
        if !keep {
            *pending_bytes -= pending_cost(e);
        }
        keep
    });
    if f.asked
        .as_ref()
        .is_some_and(|(_, start, count, _)| start.saturating_add(*count) <= next)
    {
        f.asked = None;
    }
    if !stored.is_empty() {
        out.extend([Output::Store {
            feed: f.key,
            entries: stored,
        }]);
    }
}

/// Requests the gap up to `until` (exclusive) unless a request is already outstanding;
/// returns whether it asked.
fn ask<P: Clone>(
    f: &mut Feed<P>,
    config: &ReplicateConfig,
    peer: P,
    until: u64,
    now: Duration,
    out: &mut impl Extend<Output<P>>,
) -> bool {
    if f.asked.is_some() {
        return false;
    }
    let start = f.verifier.next_seq();
    if until <= start {
        return false;
    }
    let count = (until - start).min(config.range_max);
    f.asked = Some((peer.clone(), start, count, now));
    out.extend([Output::Request {
        peer,
        feed: f.key,
        start,
        count,
    }]);
    true
}
