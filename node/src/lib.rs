//! fab-node: the fabnode node.
//!
//! Without default features only [`sched`], the sans-IO scheduler core, is built (no tokio,
//! libp2p, tract or redb): the simulator drives it with virtual time. The `jobs` feature adds
//! the node's runtime without its HTTP layer (no axum or hyper); `runtime` (the default) adds
//! the control API and [`Node`].
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
//! - [`jobs`]: the jobs service: the node's state, signing, running, serving peers' exec
//!   requests, placement and job history, with a typed [`jobs::JobError`]. No HTTP in it.
//! - [`api`]: the control API, a thin driver of [`jobs`]: routes by area, one error table
//!   (`api/error.rs`), who may call it (`api/guard.rs`), the HTTP server and its bounds
//!   (`api/serve.rs`), the bearer token (`api/token.rs`).
//! - [`views`]: JSON views of entries and receipts.
//! - [`Node`]: startup, serving and graceful shutdown.
//! - [`supervise`]: the node's subsystems, owned in one place; one that stops stops the node.
//! - [`sched`]: the auction, requester side and bidder side, and the telemetry view (sans-IO).
//! - [`sampler`]: reads the machine's figures for telemetry.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
// With `jobs` alone the tasks are built but nothing starts them: [`Node`], which wires them to
// the HTTP server, comes with `runtime`. That build exists to prove the jobs service needs no
// HTTP stack.
#![cfg_attr(all(feature = "jobs", not(feature = "runtime")), allow(dead_code))]

#[cfg(feature = "runtime")]
pub mod api;
#[cfg(feature = "jobs")]
mod bid_task;
#[cfg(feature = "jobs")]
pub mod config;
#[cfg(feature = "jobs")]
pub mod datadir;
#[cfg(feature = "jobs")]
pub mod jobs;
#[cfg(feature = "jobs")]
pub mod ledger_writer;
#[cfg(feature = "jobs")]
mod mesh_task;
#[cfg(feature = "jobs")]
pub mod models;
#[cfg(feature = "runtime")]
mod node;
#[cfg(feature = "jobs")]
pub mod sampler;
pub mod sched;
#[cfg(feature = "jobs")]
pub mod supervise;
#[cfg(feature = "jobs")]
mod telemetry_task;
#[cfg(feature = "jobs")]
pub mod views;
#[cfg(feature = "jobs")]
mod wake;

#[cfg(feature = "jobs")]
pub use config::Config;
#[cfg(feature = "runtime")]
pub use node::{Node, StartError};
