//! fab-mesh: how fabnode nodes find each other and spread their ledgers.
//!
//! # Layout
//!
//! - [`wire`]: the gossip messages (versioned CBOR with size limits) and topic names, which carry
//!   the network id so two fleets on one LAN never mix.
//! - [`bid`]: the `/fabnode/bid/1` call for bids and the signed answer.
//! - [`exec`]: the `/fabnode/exec/1` messages that run a job on a chosen peer.
//! - [`validate`]: the sans-IO check every gossip message passes before it is used or forwarded:
//!   accept, reject (the sender is penalised) or ignore. The simulator reuses it unchanged.
//! - [`replicate`]: the sans-IO replication core: which peer entries to store, which gaps to
//!   fetch, which checkpoints to trust, whom to penalise.
//! - [`node`]: one node's side of the mesh, sans-IO: the replication core plus own-gossip pacing
//!   (entries and checkpoints), own-feed filtering and heads serving; the node's mesh task and
//!   the simulator's node both drive it.
//! - [`shard`]: how a large fleet splits its gossip (topics, telemetry and replication per
//!   shard) so that no node's work grows with the fleet.
//! - [`net`] (feature `net`): the libp2p swarm (TCP + Noise + Yamux, QUIC, identify, ping,
//!   mDNS, gossipsub in strict mode with application validation and peer scoring), driven by one
//!   [`net::EventLoop`] task and used through a cloneable [`net::MeshClient`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bid;
pub mod exec;
#[cfg(feature = "net")]
pub mod net;
pub mod node;
pub mod replicate;
pub mod shard;
pub mod validate;
pub mod wire;
