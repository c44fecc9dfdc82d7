//! Node startup, serving and shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use fab_inference::InferencePool;
use fab_ledger::Keypair;
use fab_ledger::identity::KeyFileError;
use fab_ledger::store::{Store, StoreError};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::{AppState, router};
use crate::config::Config;
use crate::datadir;
use crate::ledger_writer::{LedgerWriter, now_ms};
use crate::models::ModelCache;

/// Why the node did not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Ledger(#[from] StoreError),
    #[error(
        "cannot listen on {addr}: address already in use (another fabnode or another program); \
         choose another with `--api-listen`, FABNODE_API_LISTEN or api.listen in the config file"
    )]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("data dir {path}: {error}", path = path.display())]
    DataDir {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A started node: key loaded, ledger open and verified at its tail, API socket bound.
#[derive(Debug)]
pub struct Node {
    state: Arc<AppState>,
    writer: LedgerWriter,
    listener: TcpListener,
    addr: SocketAddr,
}

impl Node {
    /// Loads the key, opens the ledger and binds the API. Fails without side effects on the
    /// ledger when any part is unusable.
    pub async fn start(data_dir: &Path, config: Config) -> Result<Node, StartError> {
        let key = Keypair::load(&datadir::key_path(data_dir))?;
        let ledger_path = datadir::ledger_path(data_dir);
        let network = config.ledger.network.clone();
        let store = tokio::task::block_in_place(|| Store::open(&ledger_path, &key, &network))?;
        let addr = config.api.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                StartError::PortInUse { addr }
            } else {
                StartError::Listen {
                    addr,
                    error: source,
                }
            }
        })?;
        let addr = listener
            .local_addr()
            .map_err(|error| StartError::Listen { addr, error })?;
        let entries = store.len();
        let (writer, ledger) = LedgerWriter::start(store, key.clone(), config.ledger.batch_max);
        let state = Arc::new(AppState {
            models: ModelCache::new(data_dir.to_owned(), config.inference.model_bytes_max),
            pool: InferencePool::new(config.inference.workers, config.inference.queue_depth),
            job_slots: Arc::new(Semaphore::new(config.limits.jobs_in_flight_max)),
            // Nonces only need to differ between this node's requests; start from the clock so
            // they also differ across restarts.
            nonce: AtomicU64::new(now_ms().saturating_mul(1000)),
            started: Instant::now(),
            data_dir: data_dir.to_owned(),
            ledger,
            config,
            key,
        });
        // Load every registered model now, so the first job does not pay for parsing and
        // optimising it. A model that fails to load is reported and stays unavailable; the
        // node still serves the others.
        if let Ok(registered) = crate::models::list(data_dir) {
            for name in registered.keys() {
                if let Err(e) = tokio::task::block_in_place(|| state.models.get(name)) {
                    tracing::warn!(model = %name, error = %e, "model not loaded");
                }
            }
        }
        let addr_file = datadir::api_addr_path(data_dir);
        std::fs::write(&addr_file, format!("{addr}\n")).map_err(|error| StartError::DataDir {
            path: addr_file,
            error,
        })?;
        tracing::info!(
            peer_id = %state.key.public().peer_id(),
            api = %addr,
            ledger_entries = entries,
            "node started"
        );
        Ok(Node {
            state,
            writer,
            listener,
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn peer_id(&self) -> String {
        self.state.key.public().peer_id()
    }

    /// Serves until `shutdown` resolves, then stops in order: stop accepting, let in-flight
    /// requests finish (their entries are committed before they answer), stop the workers,
    /// close the ledger.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Node {
            state,
            writer,
            listener,
            ..
        } = self;
        let data_dir = state.data_dir.clone();
        let app = router(Arc::clone(&state));
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        tracing::info!("API closed; finishing in-flight work");
        drop(state);
        // The router and every handler are gone, so this was the last reference: dropping it
        // joins the inference workers and closes the ledger channel.
        tokio::task::block_in_place(|| writer.join());
        let _ = std::fs::remove_file(datadir::api_addr_path(&data_dir));
        tracing::info!("node stopped");
        served
    }
}
