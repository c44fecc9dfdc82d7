//! fab-sims: the real sans-IO protocol cores over a simulated network, in virtual time.
//!
//! No tokio, no libp2p, no clock: everything random comes from one seeded generator
//! ([`engine::Engine`]), so a seed replays a run exactly (CI checks the dependency tree).
//! Today it simulates ledger replication ([`replication`]); the auction, telemetry and the
//! `fabnode simulate` command come next.

pub mod engine;
pub mod fleet;
pub mod replication;
