//! fab-sims: the real sans-IO protocol cores over a simulated network, in virtual time.
//!
//! No tokio, no libp2p, no clock: everything random comes from seeded generators
//! ([`engine::Engine`], one per shard of a sharded fleet, each shard simulated on its own and
//! merged in order), so a seed replays a run exactly (CI checks the dependency tree).
//! [`sim`] runs a fleet (telemetry, placement, execution, ledger, replication) through faults
//! with invariants; [`fleet`] describes its devices, links and models. `fabnode simulate` and
//! `fabnode test --target runtime` drive it; docs/SIMULATOR.md states the models.

pub mod engine;
pub mod fleet;
pub mod sim;
