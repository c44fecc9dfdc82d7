//! The data dir: `--data-dir`, else `FABNODE_DATA_DIR`, else `$XDG_DATA_HOME/fabnode`, else
//! `~/.local/share/fabnode`.
//!
//! ```text
//! node.key      ed25519 secret key, mode 0600
//! ledger.redb   this node's feed
//! models.json   registered models
//! config.toml   optional configuration
//! api.addr      the control API's address while the node runs
//! api.token     the control API's bearer token, mode 0600 (`fabnode api-token init`)
//! evidence/     proofs of peers' forks
//! ```

use std::path::{Path, PathBuf};

pub const KEY_FILE: &str = "node.key";
pub const LEDGER_FILE: &str = "ledger.redb";
pub const CONFIG_FILE: &str = "config.toml";
pub const API_ADDR_FILE: &str = "api.addr";
pub const API_TOKEN_FILE: &str = "api.token";

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

/// Where the control API's bearer token is kept (mode 0600); see [`crate::api::token`].
pub fn api_token_path(dir: &Path) -> PathBuf {
    dir.join(API_TOKEN_FILE)
}

/// Writes `bytes` to `path` so that a crash or power cut leaves either the old file or the new
/// one, whole: a temporary file beside it, written and fsynced, renamed over `path`, then the
/// directory fsynced so the rename itself is durable. The file gets `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_writes_replace_whole_files_with_the_mode_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("models.json");
        write_atomic(&p, b"first", 0o600).unwrap();
        write_atomic(&p, b"second, longer", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["models.json"]);
        // A path whose directory does not exist fails and leaves nothing.
        assert!(write_atomic(&dir.path().join("no/such/file"), b"x", 0o600).is_err());
    }
}
