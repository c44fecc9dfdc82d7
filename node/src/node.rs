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

use crate::api::router;
use crate::config::Config;
use crate::datadir;
use crate::jobs::NodeState;
use crate::ledger_writer::{COMMITTED_QUEUE, LedgerWriter, now_ms};
use crate::models::ModelCache;
use fab_mesh::net::MeshConfig;
use fab_mesh::replicate::{ReplicateConfig, Replicator};

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
    #[error("mesh: {0}")]
    Mesh(String),
    #[error(transparent)]
    Token(#[from] crate::api::token::TokenError),
    #[error(
        "api.listen {addr} is not a loopback address, so anyone who can reach it could make this \
         node sign and run jobs: create an API token first with `fabnode api-token init` (written \
         to {path} with mode 0600; clients send `Authorization: Bearer <token>`, and the CLI \
         reads it from the data dir or FABNODE_API_TOKEN), or listen on 127.0.0.1",
        path = path.display()
    )]
    TokenRequired { addr: SocketAddr, path: PathBuf },
}

/// A started node: key loaded, ledger open and verified at its tail, API socket bound.
#[derive(Debug)]
pub struct Node {
    state: Arc<NodeState>,
    writer: LedgerWriter,
    listener: TcpListener,
    addr: SocketAddr,
    guard: Arc<crate::api::guard::Guard>,
    /// Every long-lived task and the ledger thread: one that ends stops the node.
    subsystems: crate::supervise::Subsystems,
}

fn parse_addrs(key: &str, values: &[String]) -> Result<Vec<libp2p::Multiaddr>, StartError> {
    values
        .iter()
        .map(|v| {
            v.parse().map_err(|e| {
                StartError::Mesh(format!("`{key}` entry {v:?} is not a multiaddr: {e}"))
            })
        })
        .collect()
}

/// Rebuilds the replication state of every stored replica of this node's shard, re-verifying
/// each feed's chain. Replicas of other shards (kept from before a change of `mesh.shards`)
/// stay stored and served, but are not followed.
fn resume_replicas(
    store: &Store,
    scope: fab_mesh::shard::Scope,
) -> Result<Replicator<libp2p::PeerId>, StartError> {
    let mut r = Replicator::new(ReplicateConfig {
        scope,
        ..ReplicateConfig::default()
    });
    let reader = store.reader();
    // Re-verified from the first entry (signatures in batches); O(replica size) at start.
    for (feed_bytes, verified) in reader.verify_replicas()? {
        match verified {
            Ok(v) if !scope.contains(&v.feed) => {
                tracing::info!(feed = %v.feed, "stored replica of another shard; kept, not followed");
            }
            Ok(v) => r.resume(v.feed, v.size, v.head, v.last_time_ms, v.tree, v.trusted),
            Err(e) => {
                // Not followed from what is stored: catch-up fetches the feed again from its
                // first entry and overwrites the stored copy.
                tracing::warn!(feed = %hex::encode(feed_bytes), error = %e, "stored replica does not verify; fetching it again");
            }
        }
    }
    Ok(r)
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
        let token = crate::api::token::ApiToken::load(data_dir)?;
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(StartError::TokenRequired {
                addr,
                path: datadir::api_token_path(data_dir),
            });
        }
        let guard = Arc::new(crate::api::guard::Guard {
            token,
            allowed_origins: config
                .api
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
            allowed_hosts: config
                .api
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        });
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
        let shards = fab_mesh::shard::Shards::new(config.mesh.shards)
            .map_err(|e| StartError::Mesh(format!("mesh.shards: {e}")))?;
        let scope = fab_mesh::shard::Scope::of(shards, &key.public());
        let replicator = if config.mesh.enabled {
            Some(resume_replicas(&store, scope)?)
        } else {
            None
        };
        let (committed_tx, committed_rx) = tokio::sync::mpsc::channel(COMMITTED_QUEUE);
        let (mut writer, ledger) = LedgerWriter::start(
            store,
            key.clone(),
            config.ledger.batch_max,
            config.mesh.enabled.then_some(committed_tx),
        );
        let mut subsystems = crate::supervise::Subsystems::default();
        if let Some(ended) = writer.take_ended() {
            subsystems.watch_thread("the ledger writer", ended);
        }
        let mut mesh = None;
        let entries_gossiped: Arc<crate::mesh_task::Gossiped> = Default::default();
        let (exec_tx, exec_rx) = tokio::sync::mpsc::channel(crate::jobs::serve::EXEC_QUEUE);
        let (heads_tx, heads_rx) = tokio::sync::watch::channel(Vec::new());
        let (bid_tx, bid_rx) = tokio::sync::mpsc::channel(crate::bid_task::BID_QUEUE);
        let (place_tx, place_rx) = tokio::sync::mpsc::channel(crate::jobs::place::PLACE_QUEUE);
        let telemetry_view = Arc::new(std::sync::Mutex::new(
            crate::sched::telemetry::TelemetryView::new(config.telemetry.stale_ms),
        ));
        if let Some(replicator) = replicator {
            let mut mc = MeshConfig::new(&config.ledger.network);
            mc.listen = parse_addrs("mesh.listen", &config.mesh.listen)?;
            mc.bootstrap = parse_addrs("mesh.bootstrap", &config.mesh.bootstrap)?;
            mc.mdns = config.mesh.mdns;
            mc.shards = shards;
            // Telemetry is read only when it verifies: signed by the node it describes, whoever
            // forwarded it (a replayed older report is refused by the view), and that node is
            // of this node's shard.
            mc.telemetry_validator = Some(Arc::new(move |_from: &libp2p::PeerId, bytes: &[u8]| {
                let r = crate::sched::telemetry::SignedTelemetry::decode_verified(bytes)
                    .map_err(|e| format!("telemetry: {e}"))?;
                let node = r.body().node;
                if !scope.contains(&node) {
                    return Err(format!(
                        "telemetry of a node of shard {} on shard {}'s topic",
                        scope.shards.of(&node),
                        scope.shard
                    ));
                }
                Ok(Box::new(r) as Box<dyn std::any::Any + Send>)
            }));
            let (client, events, event_loop) =
                fab_mesh::net::start(&key, mc).map_err(|e| StartError::Mesh(e.to_string()))?;
            subsystems.spawn("the mesh event loop", event_loop.run());
            subsystems.spawn(
                "the mesh task",
                crate::mesh_task::run(crate::mesh_task::MeshTask {
                    own: key.public(),
                    scope,
                    evidence: datadir::evidence_dir(data_dir),
                    mesh: client.clone(),
                    events,
                    committed: committed_rx,
                    ledger: ledger.clone(),
                    replicator,
                    exec: exec_tx,
                    heads: heads_tx,
                    telemetry: Arc::clone(&telemetry_view),
                    bids: bid_tx,
                    gossiped: Arc::clone(&entries_gossiped),
                }),
            );
            mesh = Some(client);
        }
        let state = Arc::new(NodeState {
            models: ModelCache::new(data_dir.to_owned(), config.inference.model_bytes_max),
            pool: InferencePool::new(config.inference.workers, config.inference.queue_depth),
            job_slots: Arc::new(Semaphore::new(config.limits.jobs_in_flight_max)),
            remote_running: Default::default(),
            remote_per_peer: Default::default(),
            telemetry: telemetry_view,
            own_telemetry: Default::default(),
            model_latency: Default::default(),
            described: Default::default(),
            placer: mesh.is_some().then_some(place_tx),
            recent: Default::default(),
            rtts: Default::default(),
            placed: Default::default(),
            entries_gossiped,
            replication: heads_rx,
            // Nonces only need to differ between this node's requests; start from the clock so
            // they also differ across restarts.
            nonce: AtomicU64::new(now_ms().saturating_mul(1000)),
            started: Instant::now(),
            data_dir: data_dir.to_owned(),
            mesh,
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
        if state.mesh.is_some() {
            subsystems.spawn(
                "the exec server",
                crate::jobs::serve::serve(Arc::clone(&state), exec_rx),
            );
            subsystems.spawn(
                "the telemetry publisher",
                crate::telemetry_task::run(Arc::clone(&state)),
            );
            subsystems.spawn(
                "the bid server",
                crate::bid_task::serve(Arc::clone(&state), bid_rx),
            );
            subsystems.spawn(
                "the placer",
                crate::jobs::place::run(Arc::clone(&state), place_rx),
            );
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
            guard,
            subsystems,
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
            guard,
            mut subsystems,
            ..
        } = self;
        let data_dir = state.data_dir.clone();
        let app = router(Arc::clone(&state), guard);
        let api = &state.config.api;
        let limits = crate::api::serve::Limits {
            connections_max: usize::try_from(api.connections_max).unwrap_or(usize::MAX),
            header_timeout: std::time::Duration::from_millis(api.header_timeout_ms),
            shutdown_grace: std::time::Duration::from_millis(api.shutdown_grace_ms),
        };
        // Serve until asked to stop, or until a subsystem ends on its own (crash-only: the node
        // stops rather than limp on without it).
        let mut failed: Option<String> = None;
        let stop = async {
            tokio::select! {
                () = shutdown => {}
                why = subsystems.first_failure() => failed = Some(why),
            }
        };
        let cut = crate::api::serve::serve(listener, app, limits, stop).await;
        if let Some(why) = &failed {
            tracing::error!(reason = %why, "a subsystem stopped; the node is stopping");
        }
        tracing::info!(
            connections_cut = cut,
            "API closed; finishing in-flight work"
        );
        // The replication task holds a ledger handle: stop the mesh before closing the ledger.
        subsystems.shutdown().await;
        drop(state);
        // The router and every handler are gone, so this was the last reference: dropping it
        // joins the inference workers and closes the ledger channel.
        tokio::task::block_in_place(|| writer.join());
        let _ = std::fs::remove_file(datadir::api_addr_path(&data_dir));
        tracing::info!("node stopped");
        match failed {
            None => Ok(()),
            Some(why) => Err(std::io::Error::other(why)),
        }
    }
}
