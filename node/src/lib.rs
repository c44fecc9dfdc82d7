//! fab-node: the fabnode node.
//!
//! Without default features only [`sched`], the sans-IO scheduler core, is built (no tokio,
//! libp2p, tract or redb): the simulator drives it with virtual time.
//!
//! A node loads its key, opens its ledger, starts its inference workers and serves the
//! HTTP/JSON control API. A job submitted through the API is signed as a job request, run on
//! an inference worker, recorded as a signed execution entry that is durably committed, and
//! only then answered with the output and the receipt.
//!
//! # Layout
//!
//! - [`config`]: the TOML/env/flag configuration and its validation.
//! - [`datadir`]: where a node keeps its key, ledger, registry and API address.
//! - [`models`]: models registered by path and the cache of loaded engines.
//! - [`ledger_writer`]: the thread that owns the store and commits entries in batches.
//! - `mesh_task`: publishes own entries, replicates peers' feeds through `fab_mesh`.
//! - [`api`]: the control API: routes, the job pipeline and errors (`api/mod.rs`), who may
//!   call it (`api/guard.rs`), the HTTP server and its bounds (`api/serve.rs`), the bearer
//!   token (`api/token.rs`).
//! - [`views`]: JSON views of entries and receipts.
//! - [`Node`]: startup, serving and graceful shutdown.
//! - [`supervise`]: the node's subsystems, owned in one place; one that stops stops the node.
//! - [`sched`]: the auction, requester side and bidder side, and the telemetry view (sans-IO).
//! - [`sampler`]: reads the machine's figures for telemetry.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

#[cfg(feature = "runtime")]
pub mod api;
#[cfg(feature = "runtime")]
mod bid_task;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod datadir;
#[cfg(feature = "runtime")]
mod exec;
#[cfg(feature = "runtime")]
pub mod ledger_writer;
#[cfg(feature = "runtime")]
mod mesh_task;
#[cfg(feature = "runtime")]
pub mod models;
#[cfg(feature = "runtime")]
mod node;
#[cfg(feature = "runtime")]
pub mod placer;
#[cfg(feature = "runtime")]
pub mod sampler;
pub mod sched;
#[cfg(feature = "runtime")]
pub mod supervise;
#[cfg(feature = "runtime")]
mod telemetry_task;
#[cfg(feature = "runtime")]
pub mod views;
#[cfg(feature = "runtime")]
mod wake;

#[cfg(feature = "runtime")]
pub use config::Config;
#[cfg(feature = "runtime")]
pub use node::{Node, StartError};
