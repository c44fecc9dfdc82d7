//! The data dir: `--data-dir`, else `FABNODE_DATA_DIR`, else `$XDG_DATA_HOME/fabnode`, else
//! `~/.local/share/fabnode`.
//!
//! ```text
//! node.key      ed25519 secret key, mode 0600
//! ledger.redb   this node's feed
//! models.json   registered models
//! config.toml   optional configuration
//! api.addr      the control API's address while the node runs
//! ```

use std::path::{Path, PathBuf};

pub const KEY_FILE: &str = "node.key";
pub const LEDGER_FILE: &str = "ledger.redb";
pub const CONFIG_FILE: &str = "config.toml";
pub const API_ADDR_FILE: &str = "api.addr";

/// Resolves the data dir from a flag value and the environment.
pub fn resolve(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("FABNODE_DATA_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("fabnode");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/fabnode")
}

pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

pub fn ledger_path(dir: &Path) -> PathBuf {
    dir.join(LEDGER_FILE)
}

pub fn config_path(dir: &Path) -> PathBuf {
    dir.join(CONFIG_FILE)
}

pub fn api_addr_path(dir: &Path) -> PathBuf {
    dir.join(API_ADDR_FILE)
}

/// Where the node keeps evidence of peers' feeds signing conflicting entries: one
/// `fabnode-evidence/v1` JSON file per conflict, `<peer id>-<seq>.json`.
pub fn evidence_dir(dir: &Path) -> PathBuf {
    dir.join("evidence")
}

/// Creates the data dir readable by its owner alone.
pub fn create(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
