//! A node's identity: one ed25519 key.
//!
//! The same key is the node's ledger feed key and its libp2p identity, so the [`PublicKey`]
//! and the libp2p `PeerId` name the same node. Users see the `PeerId` form.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A secret key. Its `Debug` shows only the public half. The secret bytes are wiped from
/// memory when the last copy is dropped, and every temporary copy made to read, write or
/// convert the key is wiped too.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

/// `SigningKey` wipes its secret on drop, so a `Keypair` does.
impl ZeroizeOnDrop for Keypair {}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut()).expect("the OS random source is available");
        Keypair {
            signing: SigningKey::from_bytes(&secret),
        }
    }

    /// A key from its 32 secret bytes (tests and the simulator derive these from a seed). The
    /// copy passed in is wiped; the caller's own copy is the caller's to wipe.
    pub fn from_secret(mut secret: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        secret.zeroize();
        Keypair { signing }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// The same key as a libp2p identity, so the node's `PeerId` is its feed key.
    pub fn to_libp2p(&self) -> libp2p_identity::Keypair {
        // libp2p wipes the bytes it is handed.
        libp2p_identity::Keypair::ed25519_from_bytes(self.signing.to_bytes())
            .expect("32 bytes are a valid ed25519 secret key")
    }

    /// Signs raw bytes. Callers sign through [`crate::Signed`], which adds the domain prefix.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Reads the key file, refusing one that anyone but its owner can read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let meta = fs::metadata(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KeyFileError::Missing {
                    path: path.to_owned(),
                }
            } else {
                KeyFileError::Io {
                    path: path.to_owned(),
                    error: source,
                }
            }
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::LoosePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = Zeroizing::new(fs::read(path).map_err(|source| KeyFileError::Io {
            path: path.to_owned(),
            error: source,
        })?);
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(bytes.as_slice().try_into().map_err(
            |_| KeyFileError::Malformed {
                path: path.to_owned(),
                len: bytes.len(),
            },
        )?);
        Ok(Keypair {
            signing: SigningKey::from_bytes(&secret),
        })
    }

    /// Writes a new key file with mode 0600. Never overwrites an existing key.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            error: source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyFileError::Exists {
                        path: path.to_owned(),
                    }
                } else {
                    KeyFileError::Io {
                        path: path.to_owned(),
                        error: source,
                    }
                }
            })?;
        let secret = Zeroizing::new(self.signing.to_bytes());
        file.write_all(secret.as_ref()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }
}

/// Why a key file could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("no node key at {path}; create one with `fabnode keys init`")]
    Missing { path: PathBuf },
    #[error("a node key already exists at {path}; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error(
        "key file {path} has mode {mode:03o}: others can read this node's secret key; \
         fix it with `chmod 600 {path}`",
        path = path.display()
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} holds {len} bytes; an ed25519 secret key is 32 bytes", path = path.display())]
    Malformed { path: PathBuf, len: usize },
    #[error("key file {path}: {error}", path = path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Most parsed keys kept by [`PublicKey::from_bytes`].
pub const KEY_CACHE_MAX: usize = 4096;

/// A node's public key: its feed key and, in `PeerId` form, its libp2p identity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes; refuses points that are not valid keys.
    ///
    /// Parsing decompresses a curve point (a field exponentiation, several microseconds), and
    /// a node parses the same few keys over and over: its peers' feed keys and its requesters'
    /// keys in every entry it replicates, every bid, every telemetry report. Valid keys are
    /// kept in a small process-wide cache ([`KEY_CACHE_MAX`] keys, cleared when full).
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static CACHE: OnceLock<Mutex<HashMap<[u8; 32], VerifyingKey>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(key) = cache.lock().ok().and_then(|c| c.get(bytes).copied()) {
            return Some(PublicKey(key));
        }
        let key = VerifyingKey::from_bytes(bytes).ok()?;
        if let Ok(mut c) = cache.lock() {
            if c.len() >= KEY_CACHE_MAX {
                c.clear();
            }
            c.insert(*bytes, key);
        }
        Some(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The libp2p `PeerId` of this key, e.g. `12D3KooW...`.
    ///
    /// Written directly from the key bytes: an identity multihash (code 0, length 36) of the
    /// protobuf `PublicKey { Type: Ed25519, Data: key }` (`08 01 12 20` + 32 bytes), in base58,
    /// which is what libp2p derives; going through libp2p's key type would decompress the
    /// curve point first, the costliest step, on every call (tests check both agree).
    pub fn peer_id(&self) -> String {
        bs58::encode(self.peer_id_bytes()).into_string()
    }

    /// The binary form of [`PublicKey::peer_id`] (what `libp2p::PeerId::from_bytes` takes):
    /// for comparing with a connection's peer without formatting either as text.
    pub fn peer_id_bytes(&self) -> [u8; 38] {
        let mut bytes = [0u8; 38];
        bytes[..6].copy_from_slice(&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        bytes[6..].copy_from_slice(self.0.as_bytes());
        bytes
    }

    pub(crate) fn dalek(&self) -> &VerifyingKey {
        &self.0
    }

    /// Strict ed25519 verification: refuses small-order keys and non-canonical signatures,
    /// so one message has exactly one valid signature per key.
    pub(crate) fn verify_raw(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.peer_id())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.peer_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_wiped_when_dropped_and_round_trip_through_their_file() {
        // A compile-time check: only types that wipe their secret on drop pass.
        fn wipes_on_drop<T: ZeroizeOnDrop>() {}
        wipes_on_drop::<Keypair>();
        wipes_on_drop::<SigningKey>();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = Keypair::generate();
        key.save_new(&path).unwrap();
        assert_eq!(Keypair::load(&path).unwrap().public(), key.public());
        assert!(matches!(
            key.save_new(&path),
            Err(KeyFileError::Exists { .. })
        ));
    }

    #[test]
    fn parsed_keys_are_cached_and_invalid_ones_never_are() {
        let key = Keypair::from_secret([9u8; 32]).public().to_bytes();
        let a = PublicKey::from_bytes(&key).unwrap();
        let b = PublicKey::from_bytes(&key).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_bytes(), key);
        // Bytes that are not a curve point: refused the first time and every time after.
        let bad = (2u8..=255)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .expect("some small y is not on the curve");
        assert!(PublicKey::from_bytes(&bad).is_none());
        assert!(PublicKey::from_bytes(&bad).is_none());
        // Many distinct keys: the cache stays bounded and keeps answering correctly.
        for i in 0..(KEY_CACHE_MAX + 10) as u32 {
            let mut secret = [0u8; 32];
            secret[..4].copy_from_slice(&i.to_le_bytes());
            let k = Keypair::from_secret(secret).public().to_bytes();
            assert_eq!(PublicKey::from_bytes(&k).unwrap().to_bytes(), k);
        }
        assert_eq!(PublicKey::from_bytes(&key).unwrap(), a);
    }

    #[test]
    fn peer_id_matches_libp2p_keypair() {
        let kp = Keypair::from_secret([7u8; 32]);
        let mut secret = [7u8; 32];
        let lp = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut secret).unwrap();
        let lp = libp2p_identity::Keypair::from(libp2p_identity::ed25519::Keypair::from(lp));
        assert_eq!(kp.public().peer_id(), lp.public().to_peer_id().to_base58());
        assert!(kp.public().peer_id().starts_with("12D3KooW"));
        // Many keys: the bytes written directly are the ones libp2p derives.
        for i in 0..200u8 {
            let kp = Keypair::from_secret([i; 32]);
            let lp = libp2p_identity::ed25519::PublicKey::try_from_bytes(&kp.public().to_bytes())
                .unwrap();
            let want = libp2p_identity::PublicKey::from(lp).to_peer_id();
            assert_eq!(kp.public().peer_id(), want.to_base58());
            assert_eq!(kp.public().peer_id_bytes().as_slice(), want.to_bytes());
        }
    }

    #[test]
    fn key_file_is_0600_and_loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let kp = Keypair::generate();
        kp.save_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Keypair::load(&path).unwrap().public(), kp.public());
        assert!(matches!(
            kp.save_new(&path),
            Err(KeyFileError::Exists { .. })
        ));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keypair::load(&path).unwrap_err();
        assert!(matches!(
            err,
            KeyFileError::LoosePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn malformed_and_missing_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        assert!(matches!(
            Keypair::load(&path),
            Err(KeyFileError::Missing { .. })
        ));
        fs::write(&path, b"short").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Keypair::load(&path),
            Err(KeyFileError::Malformed { len: 5, .. })
        ));
    }
}
