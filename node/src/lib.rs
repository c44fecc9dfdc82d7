//! fab-node: the fabnode node.
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
//! - [`api`]: the control API (routes, job pipeline, errors).
//! - [`views`]: JSON views of entries and receipts.
//! - [`Node`]: startup, serving and graceful shutdown.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod config;
pub mod datadir;
mod exec;
pub mod ledger_writer;
mod mesh_task;
pub mod models;
mod node;
pub mod views;

pub use config::Config;
pub use node::{Node, StartError};
