//! The node-facing commands, one module per group: identity (keys, api-token, config), start,
//! model, submit (and jobs), inspect (status, peers, telemetry), ledger. Shared here: finding
//! the data dir, the config and the API.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use fab_inference::Tensor;
use fab_ledger::store::ReadOnlyStore;
use fab_ledger::{EntryBody, Keypair, SignedEntry};
use fab_node::config::LogFormat;
use fab_node::{Config, Node, datadir};
use serde_json::json;

use crate::Global;
use crate::client::{Client, api_base};

mod identity;
mod inspect;
mod ledger;
mod model;
mod start;
mod submit;

pub use identity::*;
pub use inspect::*;
pub use ledger::*;
pub use model::*;
pub use start::*;
pub use submit::*;

/// A client for the node's API: its address and token from flags, environment or data dir.
fn api_client(g: &Global, config: &Config, timeout: Duration) -> Result<Client> {
    let dir = data_dir(g);
    Ok(
        Client::new(api_base(g.api.as_deref(), &dir, config.api.listen), timeout)
            .with_token(crate::client::api_token(&dir)?.as_deref()),
    )
}

fn data_dir(g: &Global) -> PathBuf {
    datadir::resolve(g.data_dir.as_deref())
}

/// Loads the config: `--config`, else `FABNODE_CONFIG`, else `<data dir>/config.toml` if present.
pub fn load_config(g: &Global, flags: &[(String, String)]) -> Result<Config> {
    let dir = data_dir(g);
    let file = g
        .config
        .clone()
        .or_else(|| {
            std::env::var_os("FABNODE_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| Some(datadir::config_path(&dir)).filter(|p| p.exists()));
    Ok(Config::load(file.as_deref(), std::env::vars(), flags)?)
}

pub fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Installs the log subscriber on stderr.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A client for a quick query (10 s).
fn api(g: &Global) -> Result<Client> {
    let config = load_config(g, &[])?;
    api_client(g, &config, Duration::from_secs(10))
}
