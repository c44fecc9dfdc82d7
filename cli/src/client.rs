//! Finding a running node's control API and its token; the client itself is
//! [`fab_client::Client`].

use std::path::Path;

use anyhow::{Result, anyhow};

pub use fab_client::Client;

/// Finds the API: `--api`, else `FABNODE_API`, else the address a running node wrote to the data
/// dir, else the configured listen address.
pub fn api_base(
    flag: Option<&str>,
    data_dir: &Path,
    config_listen: std::net::SocketAddr,
) -> String {
    let raw = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("FABNODE_API").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string(fab_node::datadir::api_addr_path(data_dir))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| config_listen.to_string());
    if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.trim_end_matches('/').to_owned()
    } else {
        format!("http://{raw}")
    }
}

/// The API token a client sends: `FABNODE_API_TOKEN`, else the data dir's `api.token`, else
/// none (a loopback node without a token).
pub fn api_token(data_dir: &Path) -> Result<Option<String>> {
    use fab_node::api::token::ApiToken;
    if let Ok(raw) = std::env::var("FABNODE_API_TOKEN")
        && !raw.trim().is_empty()
    {
        return ApiToken::parse(&raw)
            .map(|t| Some(t.as_str().to_owned()))
            .ok_or_else(|| anyhow!("FABNODE_API_TOKEN is not an API token (64 hex digits)"));
    }
    Ok(ApiToken::load(data_dir)?.map(|t| t.as_str().to_owned()))
}
