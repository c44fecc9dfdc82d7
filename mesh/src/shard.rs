//! Shards: how a large fleet splits its gossip so that no node's work grows with the fleet.
//!
//! With one shard (the default) every node hears every node's telemetry and replicates every
//! ledger. A fleet of thousands cannot afford that: every report and every entry would reach
//! every node, so each node's traffic, storage and signature checks would grow with the fleet.
//! With `mesh.shards = S`, a node belongs to shard `shard_of(key)` (a hash of its public key,
//! so nobody picks their shard), publishes its telemetry, entries and checkpoints on its
//! shard's topics only, subscribes to those, and replicates the feeds of its shard's members.
//! Every execution is still in a signed, Merkle-logged feed replicated to every member of its
//! executor's shard (tens of nodes), which anyone can fetch and audit; and jobs are placed
//! among the submitting node's shard (telemetry comes from there).
//!
//! Every node of a network must use the same shard count: it names the topics, so nodes with
//! different counts do not hear each other. [`Shards::for_fleet`] is the recommended count.

use fab_ledger::{ContentId, PublicKey};

use crate::wire::{ledger_topic, telemetry_topic};

/// Most shards a network may have.
pub const SHARDS_MAX: u16 = 4096;
/// Members per shard that [`Shards::for_fleet`] aims at: enough for a gossipsub mesh
/// (D = 6 from 4 to 12) with spares, and enough candidates to place jobs among, while a
/// node's telemetry and ledger traffic stays that of a few dozen peers.
pub const SHARD_MEMBERS: usize = 32;

/// A network's shard count (1 to [`SHARDS_MAX`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shards(u16);

impl Default for Shards {
    fn default() -> Self {
        Shards::ONE
    }
}

impl Shards {
    /// No sharding: every node hears and replicates every node.
    pub const ONE: Shards = Shards(1);

    /// A count from 1 to [`SHARDS_MAX`].
    pub fn new(count: u64) -> Result<Shards, String> {
        match u16::try_from(count) {
            Ok(c) if (1..=SHARDS_MAX).contains(&c) => Ok(Shards(c)),
            _ => Err(format!(
                "shards: {count} is not from 1 to {SHARDS_MAX} (1: every node hears every node)"
            )),
        }
    }

    /// The recommended count for a fleet of `nodes`: one shard up to twice
    /// [`SHARD_MEMBERS`] nodes, then about [`SHARD_MEMBERS`] nodes per shard.
    pub fn for_fleet(nodes: usize) -> Shards {
        if nodes <= 2 * SHARD_MEMBERS {
            return Shards::ONE;
        }
        let count = nodes.div_ceil(SHARD_MEMBERS).min(usize::from(SHARDS_MAX));
        Shards(u16::try_from(count).unwrap_or(SHARDS_MAX))
    }

    pub fn count(self) -> u16 {
        self.0
    }

    /// The shard a node (by its public key) belongs to: from a hash of the key, so a node
    /// cannot choose its shard without choosing a new identity.
    pub fn of(self, key: &PublicKey) -> u16 {
        if self.0 == 1 {
            return 0;
        }
        let mut bytes = b"fabnode/shard/1/".to_vec();
        bytes.extend_from_slice(&key.to_bytes());
        let h = ContentId::of(&bytes).0;
        u16::from_le_bytes([h[0], h[1]]) % self.0
    }

    /// Whether two nodes share a shard.
    pub fn same(self, a: &PublicKey, b: &PublicKey) -> bool {
        self.0 == 1 || self.of(a) == self.of(b)
    }

    /// The ledger topic of a shard: the network's ledger topic with one shard (unchanged from
    /// unsharded networks), `fabnode/v1/<network>/ledger/<shard>` with more.
    pub fn ledger_topic(self, network: &str, shard: u16) -> String {
        self.topic(ledger_topic(network), shard)
    }

    /// The telemetry topic of a shard, named like [`Shards::ledger_topic`].
    pub fn telemetry_topic(self, network: &str, shard: u16) -> String {
        self.topic(telemetry_topic(network), shard)
    }

    fn topic(self, base: String, shard: u16) -> String {
        if self.0 == 1 {
            base
        } else {
            format!("{base}/{shard}")
        }
    }
}

/// The feeds a node replicates: those of its shard's members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub shards: Shards,
    pub shard: u16,
}

impl Scope {
    /// Every feed.
    pub const ALL: Scope = Scope {
        shards: Shards::ONE,
        shard: 0,
    };

    /// The scope of the node with key `own`.
    pub fn of(shards: Shards, own: &PublicKey) -> Scope {
        Scope {
            shards,
            shard: shards.of(own),
        }
    }

    /// Whether the feed of `key` is in scope.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.shards.count() == 1 || self.shards.of(key) == self.shard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fab_ledger::Keypair;

    fn key(i: u8) -> PublicKey {
        Keypair::from_secret([i; 32]).public()
    }

    #[test]
    fn one_shard_keeps_the_unsharded_topics_and_holds_everyone() {
        let s = Shards::ONE;
        assert_eq!(s.ledger_topic("lab", 0), "fabnode/v1/lab/ledger");
        assert_eq!(s.telemetry_topic("lab", 0), "fabnode/v1/lab/telemetry");
        assert!((0..50).all(|i| s.of(&key(i)) == 0));
        assert!(Scope::ALL.contains(&key(3)));
    }

    #[test]
    fn keys_spread_over_shards_and_topics_name_them() {
        let s = Shards::new(8).unwrap();
        let mut counts = [0u32; 8];
        for i in 0..=255 {
            counts[usize::from(s.of(&key(i)))] += 1;
        }
        // 256 keys over 8 shards: 32 each on average; none empty, none with half.
        assert!(counts.iter().all(|&c| (10..=64).contains(&c)), "{counts:?}");
        assert_eq!(s.ledger_topic("lab", 5), "fabnode/v1/lab/ledger/5");
        assert_eq!(s.telemetry_topic("lab", 5), "fabnode/v1/lab/telemetry/5");
        let a = key(1);
        let scope = Scope::of(s, &a);
        assert!(scope.contains(&a));
        let other = (0..=255).map(key).find(|k| !s.same(&a, k)).unwrap();
        assert!(!scope.contains(&other));
        // The same key lands in the same shard every time (no state, no randomness).
        assert_eq!(s.of(&a), Shards::new(8).unwrap().of(&a));
    }

    #[test]
    fn counts_are_checked_and_recommended_by_fleet_size() {
        assert!(Shards::new(0).is_err());
        assert!(Shards::new(u64::from(SHARDS_MAX) + 1).is_err());
        assert_eq!(Shards::new(1).unwrap(), Shards::ONE);
        assert_eq!(Shards::for_fleet(5), Shards::ONE);
        assert_eq!(Shards::for_fleet(64), Shards::ONE);
        assert_eq!(Shards::for_fleet(65).count(), 3);
        assert_eq!(Shards::for_fleet(10_000).count(), 313);
        assert_eq!(Shards::for_fleet(10_000_000).count(), SHARDS_MAX);
    }
}
