//! The control API's bearer token: `<data dir>/api.token`, 64 hex digits, mode 0600.
//!
//! When the file exists, every API request must carry `Authorization: Bearer <token>`; a node
//! refuses to listen on a non-loopback address without one. `fabnode api-token init` creates
//! it; the CLI reads it from the data dir (or `FABNODE_API_TOKEN`). The token is compared in
//! constant time and wiped from memory when dropped.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

/// Random bytes in a token (64 hex digits).
const TOKEN_BYTES: usize = 32;

/// A bearer token. Its `Debug` form does not show it.
#[derive(Clone)]
pub struct ApiToken(Zeroizing<String>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// Why the token could not be read or made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("API token {path}: {error}", path = path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "API token {path} is not 64 hex digits; remove it and run `fabnode api-token init`",
        path = path.display()
    )]
    Malformed { path: PathBuf },
    #[error(
        "API token {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`",
        path = path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("API token {path} exists; pass --force to replace it", path = path.display())]
    Exists { path: PathBuf },
    #[error("no randomness for an API token: {0}")]
    Random(String),
}

impl ApiToken {
    /// Parses a token as a client presents it or the file holds it.
    pub fn parse(text: &str) -> Option<ApiToken> {
        let t = text.trim();
        (t.len() == 2 * TOKEN_BYTES && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| ApiToken(Zeroizing::new(t.to_ascii_lowercase())))
    }

    /// The token of the data dir, if it has one.
    pub fn load(data_dir: &Path) -> Result<Option<ApiToken>, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let path = crate::datadir::api_token_path(data_dir);
        let io = |error| TokenError::Io {
            path: path.clone(),
            error,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed { path, mode });
        }
        let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(io)?);
        ApiToken::parse(&text)
            .map(Some)
            .ok_or(TokenError::Malformed { path })
    }

    /// Makes a new token and writes it to the data dir (mode 0600, atomically); refuses to
    /// replace an existing one unless `force`.
    pub fn create(data_dir: &Path, force: bool) -> Result<ApiToken, TokenError> {
        let path = crate::datadir::api_token_path(data_dir);
        if !force && path.exists() {
            return Err(TokenError::Exists { path });
        }
        let mut raw = Zeroizing::new([0u8; TOKEN_BYTES]);
        getrandom::fill(raw.as_mut()).map_err(|e| TokenError::Random(e.to_string()))?;
        let token = ApiToken(Zeroizing::new(hex::encode(raw.as_ref())));
        let text = Zeroizing::new(format!("{}\n", token.as_str()));
        crate::datadir::create(data_dir).map_err(|error| TokenError::Io {
            path: data_dir.to_owned(),
            error,
        })?;
        crate::datadir::write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|error| TokenError::Io { path, error })?;
        Ok(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = presented.trim().as_bytes();
        let mine = self.0.as_bytes();
        presented.len() == mine.len() && bool::from(mine.ct_eq(presented))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_created_private_loaded_and_compared() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ApiToken::load(dir.path()).unwrap().is_none());
        let t = ApiToken::create(dir.path(), false).unwrap();
        assert_eq!(t.as_str().len(), 64);
        let path = crate::datadir::api_token_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = ApiToken::load(dir.path()).unwrap().unwrap();
        assert!(loaded.matches(t.as_str()));
        assert!(!loaded.matches(&t.as_str()[1..]));
        assert!(!loaded.matches(&"0".repeat(64)));
        assert!(!loaded.matches(""));
        assert_eq!(format!("{loaded:?}"), "ApiToken(..)");
        assert!(matches!(
            ApiToken::create(dir.path(), false),
            Err(TokenError::Exists { .. })
        ));
        let t2 = ApiToken::create(dir.path(), true).unwrap();
        assert!(!t2.matches(t.as_str()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ApiToken::load(dir.path()),
            Err(TokenError::Exposed { .. })
        ));
        std::fs::write(&path, "not a token").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ApiToken::load(dir.path()),
            Err(TokenError::Malformed { .. })
        ));
    }
}
