//! Models registered by path (`fabnode model add`), and the warm cache of loaded engines.
//!
//! The registry is `<data dir>/models.json`: name -> absolute path, BLAKE3 digest and size at
//! the time it was added. A node loads a model on first use, checks that the file still has the
//! registered digest (a file changed behind the registry's back is refused, not run), and keeps
//! the loaded engine for every later job. The signed module registry replaces this in a later
//! release; the digest recorded here is what receipts name either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fab_inference::{Engine, LoadModelError, ModelInfo, TractEngine};
use fab_ledger::ContentId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const REGISTRY_FILE: &str = "models.json";
/// Longest accepted model name.
pub const NAME_BYTES_MAX: usize = 64;

/// One registered model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelRecord {
    pub path: PathBuf,
    pub digest: ContentId,
    pub bytes: u64,
    pub engine: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    models: BTreeMap<String, ModelRecord>,
}

/// Why a model is not available.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(
        "unknown model `{name}`; registered models: {known}. Add one with `fabnode model add <name> <file.onnx>`"
    )]
    Unknown { name: String, known: String },
    #[error("model name `{0}` is not valid: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("model `{name}`: file {path} changed since it was added (digest {found}, registered {expected}); run `fabnode model add` again if the change is intended", path = path.display())]
    Changed {
        name: String,
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("model `{name}`: {error}")]
    Load { name: String, error: LoadModelError },
    #[error("model registry {path}: {detail}", path = path.display())]
    Registry { path: PathBuf, detail: String },
}

/// A loaded model ready to run.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub name: String,
    pub digest: ContentId,
    pub engine: Arc<dyn Engine>,
}

impl LoadedModel {
    pub fn info(&self) -> &ModelInfo {
        self.engine.info()
    }
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn read_registry(path: &Path) -> Result<RegistryFile, ModelError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModelError::Registry {
            path: path.to_owned(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryFile::default()),
        Err(e) => Err(ModelError::Registry {
            path: path.to_owned(),
            detail: e.to_string(),
        }),
    }
}

fn digest_file(path: &Path, max: u64) -> Result<(ContentId, u64, Vec<u8>), LoadModelError> {
    let io = |error| LoadModelError::Io {
        path: path.display().to_string(),
        error,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > max {
        return Err(LoadModelError::TooLarge { len, max });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    Ok((ContentId::of(&bytes), len, bytes))
}

/// Registers `file` as `name` after loading it once to prove it runs. Replaces an existing
/// registration of the same name. Returns the record and the model's facts.
pub fn add(
    data_dir: &Path,
    name: &str,
    file: &Path,
    max_bytes: u64,
) -> Result<(ModelRecord, ModelInfo), ModelError> {
    if !valid_name(name) {
        return Err(ModelError::BadName(name.to_owned()));
    }
    let load = |error| ModelError::Load {
        name: name.to_owned(),
        error,
    };
    let path = std::fs::canonicalize(file).map_err(|error| {
        load(LoadModelError::Io {
            path: file.display().to_string(),
            error,
        })
    })?;
    let (digest, bytes, content) = digest_file(&path, max_bytes).map_err(load)?;
    let engine = TractEngine::load_bytes(&content).map_err(load)?;
    let record = ModelRecord {
        path,
        digest,
        bytes,
        engine: "tract".into(),
    };

    let reg_path = data_dir.join(REGISTRY_FILE);
    let mut reg = read_registry(&reg_path)?;
    reg.models.insert(name.to_owned(), record.clone());
    let text = serde_json::to_vec_pretty(&reg).expect("the registry serialises");
    let reg_err = |e: std::io::Error| ModelError::Registry {
        path: reg_path.clone(),
        detail: e.to_string(),
    };
    std::fs::create_dir_all(data_dir).map_err(reg_err)?;
    // A crash or power cut leaves the old registry or the new one, never a torn file.
    crate::datadir::write_atomic(&reg_path, &text, 0o600).map_err(reg_err)?;
    Ok((record, engine.info().clone()))
}

/// All registered models.
pub fn list(data_dir: &Path) -> Result<BTreeMap<String, ModelRecord>, ModelError> {
    Ok(read_registry(&data_dir.join(REGISTRY_FILE))?.models)
}

/// The registry as last read, keyed by the file's modification time and length.
type RegistrySnapshot = (
    Option<(std::time::SystemTime, u64)>,
    BTreeMap<String, ModelRecord>,
);

/// Loaded engines by name. Loads on first use; re-reads the registry file only when it changed
/// (`fabnode model add` while the node runs), so a job costs one `stat`, not a parse.
#[derive(Debug)]
pub struct ModelCache {
    data_dir: PathBuf,
    max_bytes: u64,
    loaded: Mutex<BTreeMap<String, LoadedModel>>,
    registry: Mutex<Option<RegistrySnapshot>>,
}

impl ModelCache {
    pub fn new(data_dir: PathBuf, max_bytes: u64) -> Self {
        ModelCache {
            data_dir,
            max_bytes,
            loaded: Mutex::new(BTreeMap::new()),
            registry: Mutex::new(None),
        }
    }

    /// When and how large the registry file was last written: a change means read it again.
    fn registry_stamp(&self) -> Option<(std::time::SystemTime, u64)> {
        std::fs::metadata(self.data_dir.join(REGISTRY_FILE))
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    }

    fn registry(&self) -> Result<BTreeMap<String, ModelRecord>, ModelError> {
        let path = self.data_dir.join(REGISTRY_FILE);
        let stamp = self.registry_stamp();
        let mut guard = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, models)) = guard.as_ref()
            && *seen == stamp
            && stamp.is_some()
        {
            return Ok(models.clone());
        }
        let models = read_registry(&path)?.models;
        *guard = Some((stamp, models.clone()));
        Ok(models)
    }

    fn cached(&self, name: &str) -> Option<LoadedModel> {
        let guard = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        guard.get(name).cloned()
    }

    /// The model called `name` when it is loaded and the registry has not changed since it was
    /// read: [`ModelCache::get`]'s fast path, one `stat` of the registry and two map lookups
    /// with no file read, cheap enough for an async thread. `None`: call `get` off them.
    pub fn ready(&self, name: &str) -> Option<LoadedModel> {
        let stamp = self.registry_stamp()?;
        let digest = {
            let guard = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            let (seen, models) = guard.as_ref()?;
            if *seen != Some(stamp) {
                return None;
            }
            models.get(name)?.digest
        };
        self.cached(name).filter(|m| m.digest == digest)
    }

    /// The model called `name`, loading it if needed. Blocking: call off the async threads.
    pub fn get(&self, name: &str) -> Result<LoadedModel, ModelError> {
        let registry = self.registry()?;
        let Some(record) = registry.get(name) else {
            return Err(ModelError::Unknown {
                name: name.to_owned(),
                known: if registry.is_empty() {
                    "none".to_owned()
                } else {
                    registry.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            });
        };
        if let Some(m) = self.cached(name).filter(|m| m.digest == record.digest) {
            return Ok(m);
        }
        let load = |error| ModelError::Load {
            name: name.to_owned(),
            error,
        };
        let (digest, _, bytes) = digest_file(&record.path, self.max_bytes).map_err(load)?;
        if digest != record.digest {
            return Err(ModelError::Changed {
                name: name.to_owned(),
                path: record.path.clone(),
                expected: record.digest.short(),
                found: digest.short(),
            });
        }
        let engine: Arc<dyn Engine> = Arc::new(TractEngine::load_bytes(&bytes).map_err(load)?);
        let model = LoadedModel {
            name: name.to_owned(),
            digest,
            engine,
        };
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), model.clone());
        tracing::info!(model = name, digest = %digest.short(), "model loaded");
        Ok(model)
    }

    /// Models loaded so far.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/digits/digits.onnx")
    }

    #[test]
    fn ready_answers_only_for_a_loaded_model_whose_registration_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        add(dir.path(), "digits", &digits(), 1 << 30).unwrap();
        let cache = ModelCache::new(dir.path().to_owned(), 1 << 30);
        assert!(cache.ready("digits").is_none(), "not loaded yet");
        let loaded = cache.get("digits").unwrap();
        assert_eq!(cache.ready("digits").unwrap().digest, loaded.digest);
        assert!(cache.ready("other").is_none());
        // Any rewrite of the registry (here another model registered) sends callers back to
        // `get`, which reads it again and finds whether this model's registration changed.
        let copy = dir.path().join("copy.onnx");
        std::fs::copy(digits(), &copy).unwrap();
        add(dir.path(), "digits2", &copy, 1 << 30).unwrap();
        assert!(cache.ready("digits").is_none(), "the registry changed");
        cache.get("digits").unwrap();
        assert!(cache.ready("digits").is_some());
    }
}
