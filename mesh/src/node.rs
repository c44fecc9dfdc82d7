//! One node's side of the mesh, sans-IO: the replication core plus what a node does around it
//! — pacing its own gossip (entries and checkpoints), keeping its own feed out of replication,
//! and answering heads requests. The node's mesh task and the simulator's node both drive it,
//! so the simulator measures the protocol the node runs, with the node's constants.
//!
//! # Calling contract
//!
//! The driver owns a [`MeshNode`] and the clock:
//!
//! - After each commit of its own feed it calls [`MeshNode::committed`] with the encoded
//!   entries and the checkpoint that covers them (`C` is whatever the driver needs to publish
//!   a checkpoint: the node passes the signed note, the simulator signs lazily and passes `()`).
//! - Validated gossip goes to [`MeshNode::gossip`], sync answers to [`MeshNode::heads`] and
//!   [`MeshNode::range`], connections to [`MeshNode::peer_up`] / [`MeshNode::peer_down`]. Each
//!   appends the replication core's [`Output`]s, which the driver carries out in order (`Store`
//!   durably first), as [`crate::replicate`] says.
//! - After every call it drains [`MeshNode::poll_gossip`] and publishes each message in order;
//!   a message that finds no subscribed peer goes back with [`MeshNode::unsent`] and is retried
//!   after [`NodeConfig::retry_every`].
//! - It wakes at [`MeshNode::poll_timeout`] (ask again after every call), then calls
//!   [`MeshNode::handle_timeout`] and drains [`MeshNode::poll_gossip`] again. A node with
//!   nothing lingering, nothing unsent and an idle replication core is never woken.
//!
//! Nothing here reads the clock or does I/O: the same calls give the same outputs everywhere.
//!
//! # Pacing
//!
//! Own entries go out at most every [`NodeConfig::entry_every`]: an entry committed after a
//! quiet spell goes at once; under load, what commits in the meantime waits for the next slot
//! and goes as batches ([`GossipMsg::pack`]), so each peer pays gossip's per-message costs and
//! signature checks once per slot rather than once per entry. The newest checkpoint goes out at
//! most every [`NodeConfig::checkpoint_every`] (it covers every earlier entry), and never ahead
//! of the entries it covers.

use std::collections::VecDeque;
use std::time::Duration;

use fab_ledger::PublicKey;

use crate::replicate::{Input, Output, Replicator};
use crate::validate::Valid;
use crate::wire::{GossipMsg, HEADS_MAX};

/// Own entries go out at most this often. Measured with `bench sched` (five nodes, every
/// execution ledgered): 10 ms 1,071 / 1,174 jobs/s, 50 ms 1,221 / 1,266.
pub const ENTRY_GOSSIP_EVERY: Duration = Duration::from_millis(50);
/// Own checkpoints go out at most this often: one per commit would cost every peer two
/// signature checks per job under load.
pub const CHECKPOINT_GOSSIP_EVERY: Duration = Duration::from_millis(200);
/// Gossip that found no subscribed peer is retried this often.
pub const RETRY_EVERY: Duration = Duration::from_millis(250);
/// Own entries kept for retry while no peer is subscribed; older messages are dropped (peers
/// catch up on them through ledger sync).
pub const UNSENT_MAX: usize = 4096;

/// The gossip layer's parameters: what the node sets on libp2p gossipsub and its discovery loop
/// (`net`), and what the simulator models, from this one place.
pub mod gossip {
    use std::time::Duration;

    /// gossipsub's heartbeat: mesh upkeep, IHAVE gossip, message-cache shift.
    pub const HEARTBEAT: Duration = Duration::from_millis(500);
    /// gossipsub's mesh degree D, and the bounds the heartbeat keeps it in (D_lo, D_hi).
    pub const MESH_DEGREE: usize = 6;
    pub const MESH_LOW: usize = 5;
    pub const MESH_HIGH: usize = 12;
    /// Peers outside the mesh that get IHAVE gossip each heartbeat (D_lazy).
    pub const GOSSIP_LAZY: usize = 6;
    /// Heartbeats a message stays in the message cache (answers IWANT), and of those, the
    /// heartbeats whose ids are announced in IHAVE.
    pub const HISTORY_LENGTH: usize = 5;
    pub const HISTORY_GOSSIP: usize = 3;
    /// Most ids in one IHAVE or IWANT batch: gossipsub's default (5,000 ids, ~170 KB) exceeds
    /// the 16 KB control limit peers enforce, and a refused frame closes the stream.
    pub const CONTROL_IDS_MAX: usize = 512;
    /// How long a message id is remembered as seen.
    pub const DUPLICATE_CACHE: Duration = Duration::from_secs(60);
    /// How often a node below its connection target looks for more peers.
    pub const MAINTAIN_EVERY: Duration = Duration::from_secs(2);
}

/// Tunables of the per-node core; the defaults are the node's.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub entry_every: Duration,
    pub checkpoint_every: Duration,
    pub retry_every: Duration,
    /// Own entries waiting to be published at most (lingering and unsent together count once
    /// they are released; a checkpoint counts as one).
    pub unsent_max: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            entry_every: ENTRY_GOSSIP_EVERY,
            checkpoint_every: CHECKPOINT_GOSSIP_EVERY,
            retry_every: RETRY_EVERY,
            unsent_max: UNSENT_MAX,
        }
    }
}

/// Something to publish on the ledger topic.
#[derive(Clone, Debug, PartialEq)]
pub enum Gossip<C> {
    /// Own entries ([`GossipMsg::Entry`] or [`GossipMsg::Entries`]).
    Entries(GossipMsg),
    /// The checkpoint handed in with the newest commit released so far.
    Checkpoint(C),
}

impl<C> Gossip<C> {
    /// How many entries it carries (a checkpoint counts as one).
    pub fn weight(&self) -> usize {
        match self {
            Gossip::Entries(GossipMsg::Entries(list)) => list.len(),
            _ => 1,
        }
    }
}

/// One node's mesh core: see the module documentation for the calling contract.
#[derive(Clone, Debug)]
pub struct MeshNode<P, C> {
    own: PublicKey,
    replicator: Replicator<P>,
    config: NodeConfig,
    /// Own encoded entries committed since entries last went out.
    lingering: Vec<Vec<u8>>,
    /// The newest checkpoint not published yet.
    held: Option<C>,
    checkpoint_sent: Option<Duration>,
    entries_sent: Option<Duration>,
    /// Released, in order, waiting to be published.
    unsent: VecDeque<Gossip<C>>,
    /// Sum of the weights in `unsent`.
    unsent_weight: usize,
    /// Publishing stopped until then (no subscribed peer).
    retry_at: Option<Duration>,
}

impl<P: Clone + Ord + std::fmt::Debug, C> MeshNode<P, C> {
    pub fn new(own: PublicKey, replicator: Replicator<P>, config: NodeConfig) -> Self {
        MeshNode {
            own,
            replicator,
            config,
            lingering: Vec::new(),
            held: None,
            checkpoint_sent: None,
            entries_sent: None,
            unsent: VecDeque::new(),
            unsent_weight: 0,
            retry_at: None,
        }
    }

    /// The replication core (its view of every replica, its pending bytes).
    pub fn replicator(&self) -> &Replicator<P> {
        &self.replicator
    }

    /// Own entries just committed (encoded, in feed order) and the checkpoint that covers them.
    pub fn committed(&mut self, entries: impl IntoIterator<Item = Vec<u8>>, checkpoint: C) {
        self.lingering.extend(entries);
        self.held = Some(checkpoint);
    }

    /// A validated gossip message. Returns whether it was a peer's (the own feed, echoed back
    /// by a peer, is dropped here; a simulated gossip layer forwards only what was used).
    pub fn gossip(
        &mut self,
        from: P,
        valid: Valid,
        now: Duration,
        out: &mut impl Extend<Output<P>>,
    ) -> bool {
        if valid.feed() == Some(self.own) {
            return false;
        }
        match valid {
            Valid::Entry(entry) => self
                .replicator
                .handle(Input::Entry { from, entry }, now, out),
            Valid::Entries(entries) => {
                // One Store for a run of a batch, not one per entry: the driver makes one
                // storage round trip per gossip message.
                let mut each = Vec::new();
                for entry in entries {
                    let from = from.clone();
                    self.replicator
                        .handle(Input::Entry { from, entry }, now, &mut each);
                }
                out.extend(coalesce(each));
            }
            Valid::Checkpoint { feed, checkpoint } => self.replicator.handle(
                Input::Checkpoint {
                    from,
                    feed,
                    checkpoint,
                },
                now,
                out,
            ),
        }
        true
    }

    /// A peer's heads answer (keys decoded by the driver): the own feed is left out.
    pub fn heads(
        &mut self,
        from: P,
        mut heads: Vec<(PublicKey, u64)>,
        now: Duration,
        out: &mut impl Extend<Output<P>>,
    ) {
        heads.retain(|(f, _)| *f != self.own);
        self.replicator
            .handle(Input::Heads { from, heads }, now, out);
    }

    /// A peer's range answer (the own feed is never replicated: an answer for it is dropped).
    pub fn range(
        &mut self,
        from: P,
        feed: PublicKey,
        start: u64,
        entries: Vec<Vec<u8>>,
        now: Duration,
        out: &mut impl Extend<Output<P>>,
    ) {
        if feed != self.own {
            let input = Input::Range {
                from,
                feed,
                start,
                entries,
            };
            self.replicator.handle(input, now, out);
        }
    }

    /// A connection to a replication partner (a peer of this node's shard) is up.
    pub fn peer_up(&mut self, peer: P, now: Duration, out: &mut impl Extend<Output<P>>) {
        self.replicator.handle(Input::PeerUp(peer), now, out);
    }

    /// The last connection to a replication partner closed.
    pub fn peer_down(&mut self, peer: P, now: Duration, out: &mut impl Extend<Output<P>>) {
        self.replicator.handle(Input::PeerDown(peer), now, out);
    }

    /// When the driver must next call [`MeshNode::handle_timeout`]: the replication core's
    /// deadline, the next entry slot while entries linger, the checkpoint slot while one is
    /// held, the retry of unsent gossip. `None` when there is nothing to wait for.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let slot =
            |last: Option<Duration>, every: Duration| last.map_or(Duration::ZERO, |t| t + every);
        let entries =
            (!self.lingering.is_empty()).then(|| slot(self.entries_sent, self.config.entry_every));
        let checkpoint = (self.held.is_some() && self.lingering.is_empty())
            .then(|| slot(self.checkpoint_sent, self.config.checkpoint_every));
        let retry = self.retry_at.filter(|_| !self.unsent.is_empty());
        [self.replicator.poll_timeout(), entries, checkpoint, retry]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: the replication core's tick when it is due. Returns whether the core ran
    /// (its view may have changed).
    pub fn handle_timeout(&mut self, now: Duration, out: &mut impl Extend<Output<P>>) -> bool {
        let due = self.replicator.poll_timeout().is_some_and(|t| t <= now);
        if due {
            self.replicator.handle(Input::Tick, now, out);
        }
        due
    }

    /// The next message to publish now, if any: lingering entries once their slot is open,
    /// then the held checkpoint once its slot is open and no entry it covers still lingers.
    /// `None` while publishing waits for a retry.
    pub fn poll_gossip(&mut self, now: Duration) -> Option<Gossip<C>> {
        self.release(now);
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        self.retry_at = None;
        let next = self.unsent.pop_front()?;
        self.unsent_weight -= next.weight();
        Some(next)
    }

    /// A message from [`MeshNode::poll_gossip`] that found no subscribed peer: it goes back to
    /// the front, and publishing pauses for [`NodeConfig::retry_every`].
    pub fn unsent(&mut self, gossip: Gossip<C>, now: Duration) {
        self.unsent_weight += gossip.weight();
        self.unsent.push_front(gossip);
        self.retry_at = Some(now + self.config.retry_every);
        self.bound();
    }

    /// Entries released and not yet handed out (waiting for a peer), in entries.
    pub fn unsent_entries(&self) -> usize {
        self.unsent_weight
    }

    fn release(&mut self, now: Duration) {
        let open = |last: Option<Duration>, every: Duration| last.is_none_or(|t| now >= t + every);
        if !self.lingering.is_empty() && open(self.entries_sent, self.config.entry_every) {
            let packed = GossipMsg::pack(self.lingering.drain(..).map(GossipMsg::Entry));
            for msg in packed {
                let gossip = Gossip::Entries(msg);
                self.unsent_weight += gossip.weight();
                self.unsent.push_back(gossip);
            }
            self.entries_sent = Some(now);
        }
        if self.lingering.is_empty()
            && open(self.checkpoint_sent, self.config.checkpoint_every)
            && let Some(checkpoint) = self.held.take()
        {
            self.unsent.push_back(Gossip::Checkpoint(checkpoint));
            self.unsent_weight += 1;
            self.checkpoint_sent = Some(now);
        }
        self.bound();
    }

    /// Drops the oldest released messages beyond [`NodeConfig::unsent_max`] entries.
    fn bound(&mut self) {
        while self.unsent_weight > self.config.unsent_max {
            match self.unsent.pop_front() {
                Some(dropped) => self.unsent_weight -= dropped.weight(),
                None => break,
            }
        }
    }
}

/// Merges adjacent [`Output::Store`]s of one feed (the order of everything is kept).
fn coalesce<P>(outputs: Vec<Output<P>>) -> Vec<Output<P>> {
    let mut merged: Vec<Output<P>> = Vec::with_capacity(outputs.len());
    for o in outputs {
        match (merged.last_mut(), o) {
            (
                Some(Output::Store { feed, entries }),
                Output::Store {
                    feed: next,
                    entries: more,
                },
            ) if *feed == next => entries.extend(more),
            (_, o) => merged.push(o),
        }
    }
    merged
}

/// The heads a node announces in answer to a heads request: its own feed first, then every
/// replica it holds something of, at most [`HEADS_MAX`] in all. Served off the node's mesh
/// loop, so it needs only the node's key.
pub fn serve_heads<K: PartialEq>(
    own: K,
    own_size: u64,
    replicas: impl IntoIterator<Item = (K, u64)>,
) -> Vec<(K, u64)> {
    let replicas = replicas
        .into_iter()
        .filter(|(k, n)| *n > 0 && *k != own)
        .collect::<Vec<_>>();
    std::iter::once((own, own_size))
        .chain(replicas)
        .take(HEADS_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::ReplicateConfig;
    use fab_ledger::{EntryBody, FeedWriter, Keypair};

    const MS: Duration = Duration::from_millis(1);

    fn node() -> (MeshNode<u32, u64>, FeedWriter) {
        let kp = Keypair::from_secret([7; 32]);
        let own = kp.public();
        let writer = FeedWriter::resume(kp, 0, None);
        let core = MeshNode::new(
            own,
            Replicator::new(ReplicateConfig::default()),
            NodeConfig::default(),
        );
        (core, writer)
    }

    fn entry(w: &mut FeedWriter, t: u64) -> Vec<u8> {
        let value = ciborium::Value::Integer(t.into());
        w.append(EntryBody::Unknown { kind: 99, value }, t).encode()
    }

    fn drain(core: &mut MeshNode<u32, u64>, now: Duration) -> Vec<Gossip<u64>> {
        std::iter::from_fn(|| core.poll_gossip(now)).collect()
    }

    #[test]
    fn an_entry_after_a_quiet_spell_goes_at_once_with_its_checkpoint() {
        let (mut core, mut w) = node();
        let e = entry(&mut w, 1);
        core.committed([e.clone()], 1);
        assert_eq!(core.poll_timeout(), Some(Duration::ZERO));
        let sent = drain(&mut core, 10 * MS);
        assert_eq!(
            sent,
            vec![Gossip::Entries(GossipMsg::Entry(e)), Gossip::Checkpoint(1)]
        );
        assert_eq!(core.poll_timeout(), None, "nothing left to wake for");
    }

    #[test]
    fn entries_under_load_wait_for_their_slot_and_go_as_one_batch_before_the_checkpoint() {
        let (mut core, mut w) = node();
        core.committed([entry(&mut w, 1)], 1);
        assert_eq!(drain(&mut core, Duration::ZERO).len(), 2);
        for t in 2..=5 {
            core.committed([entry(&mut w, t)], t);
            assert!(
                drain(&mut core, Duration::from_millis(t)).is_empty(),
                "slot closed at {t} ms"
            );
        }
        assert_eq!(core.poll_timeout(), Some(ENTRY_GOSSIP_EVERY));
        let sent = drain(&mut core, ENTRY_GOSSIP_EVERY);
        match &sent[..] {
            [Gossip::Entries(GossipMsg::Entries(list))] => assert_eq!(list.len(), 4),
            other => panic!("expected one batch, got {other:?}"),
        }
        // The checkpoint of the newest commit follows once its own slot opens.
        assert_eq!(core.poll_timeout(), Some(CHECKPOINT_GOSSIP_EVERY));
        assert_eq!(
            drain(&mut core, CHECKPOINT_GOSSIP_EVERY),
            vec![Gossip::Checkpoint(5)]
        );
    }

    #[test]
    fn a_checkpoint_never_goes_ahead_of_entries_it_covers() {
        let (mut core, mut w) = node();
        core.committed([entry(&mut w, 1)], 1);
        drain(&mut core, Duration::ZERO);
        // Checkpoint slot open at 200 ms, entry slot at 50 ms: a commit at 220 ms goes out
        // with its checkpoint behind it; one at 230 ms waits for the entry slot at 270 ms.
        core.committed([entry(&mut w, 2)], 2);
        let sent = drain(&mut core, 220 * MS);
        assert!(
            matches!(sent[..], [Gossip::Entries(_), Gossip::Checkpoint(2)]),
            "{sent:?}"
        );
        core.committed([entry(&mut w, 3)], 3);
        assert!(drain(&mut core, 230 * MS).is_empty());
        assert_eq!(core.poll_timeout(), Some(270 * MS));
        let sent = drain(&mut core, 270 * MS);
        assert!(matches!(sent[..], [Gossip::Entries(_)]), "{sent:?}");
        assert_eq!(core.poll_timeout(), Some(420 * MS));
    }

    #[test]
    fn unsent_gossip_is_retried_in_order_and_bounded() {
        let (mut core, mut w) = node();
        core.config.unsent_max = 3;
        core.committed([entry(&mut w, 1)], 1);
        let first = core.poll_gossip(Duration::ZERO).expect("the entry");
        core.unsent(first.clone(), Duration::ZERO);
        assert_eq!(core.poll_gossip(MS), None, "waits for the retry");
        assert_eq!(core.poll_timeout(), Some(RETRY_EVERY));
        assert_eq!(core.poll_gossip(RETRY_EVERY), Some(first));
        assert_eq!(core.poll_gossip(RETRY_EVERY), Some(Gossip::Checkpoint(1)));
        // Five entries released while nothing can be sent: only the newest three are kept.
        for t in 2..=6 {
            core.committed([entry(&mut w, t)], t);
            if let Some(g) = core.poll_gossip(Duration::from_secs(t)) {
                core.unsent(g, Duration::from_secs(t));
            }
        }
        assert!(core.unsent_entries() <= 3, "{}", core.unsent_entries());
    }

    #[test]
    fn a_batch_from_a_peer_is_stored_with_one_output() {
        let (mut core, _) = node();
        let other = Keypair::from_secret([3; 32]);
        let mut w = FeedWriter::resume(other.clone(), 0, None);
        let batch: Vec<_> = (0..5)
            .map(|t| fab_ledger::SignedEntry::decode_verified(&entry(&mut w, t)).expect("decodes"))
            .collect();
        let mut out = Vec::new();
        assert!(core.gossip(1, Valid::Entries(batch), MS, &mut out));
        match &out[..] {
            [Output::Store { feed, entries }] => {
                assert_eq!(*feed, other.public());
                assert_eq!(entries.len(), 5);
            }
            other => panic!("expected one Store, got {other:?}"),
        }
    }

    #[test]
    fn the_own_feed_echoed_back_is_not_replicated_and_heads_leave_it_out() {
        let (mut core, mut w) = node();
        let own = Keypair::from_secret([7; 32]).public();
        let bytes = entry(&mut w, 1);
        let echoed = fab_ledger::SignedEntry::decode_verified(&bytes).expect("decodes");
        let mut out = Vec::new();
        assert!(!core.gossip(1, Valid::Entry(echoed), MS, &mut out));
        assert!(out.is_empty());
        let other = Keypair::from_secret([9; 32]).public();
        core.heads(1, vec![(own, 1), (other, 3)], MS, &mut out);
        let followed: Vec<_> = core.replicator().heads().iter().map(|h| h.feed).collect();
        assert_eq!(followed, vec![other]);
        let third = Keypair::from_secret([1; 32]).public();
        let served = serve_heads(own, 4, [(other, 2), (third, 0), (own, 9)]);
        assert_eq!(served, vec![(own, 4), (other, 2)]);
    }
}
