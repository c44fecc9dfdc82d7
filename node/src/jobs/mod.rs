//! The jobs service: everything a node does with a job, whoever asked for it. The HTTP API
//! (`crate::api`) and the mesh (peers' exec requests, calls for bids) drive it; it knows
//! nothing of HTTP.
//!
//! - [`NodeState`]: the node's state that jobs need (key, models, inference pool, ledger,
//!   mesh, telemetry, limits), shared by every driver.
//! - [`sign_job`]: the one place a job request is built and signed.
//! - [`local`]: resolving a model, taking a job slot, running a signed job on the inference
//!   pool and recording its receipt.
//! - [`serve`]: peers' exec requests (`/fabnode/exec/1`), admitted against per-peer and
//!   global caps.
//! - [`remote`]: asking a named peer to run a job, and verifying its answer.
//! - [`place`]: the auction driven over the mesh, with a typed [`place::Placement`], and
//!   the history of jobs placed here.
//! - [`error`]: [`JobError`], one kind per reason with its stable code.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fab_inference::tensor::digest_pairs;
use fab_inference::{InferencePool, Tensor};
use fab_ledger::{ContentId, JobRequest, Keypair, Signed, SignedJobRequest};
use libp2p::PeerId;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::ledger_writer::{LedgerClient, now_ms};
use crate::models::ModelCache;
use crate::sched::telemetry::{SignedTelemetry, TelemetryView};

pub mod error;
pub mod local;
pub mod place;
pub mod remote;
pub mod serve;

pub use error::{ErrorKind, JobError};
pub use local::{Executed, check_input_size, execute, job_slot, resolve_model, run_local};

/// The node's state that jobs need, shared by the API, the placing task, the exec and bid
/// servers and the telemetry task.
#[derive(Debug)]
pub struct NodeState {
    pub key: Keypair,
    pub config: Config,
    pub data_dir: std::path::PathBuf,
    pub models: ModelCache,
    pub pool: InferencePool,
    pub ledger: LedgerClient,
    /// The mesh, when `mesh.enabled`.
    pub mesh: Option<fab_mesh::net::MeshClient>,
    /// Local callers' jobs in flight (`limits.jobs_in_flight_max`); peers' jobs never take
    /// one.
    pub job_slots: Arc<Semaphore>,
    /// Jobs from peers being run now, so a replayed request cannot run twice concurrently.
    pub remote_running: Mutex<HashSet<ContentId>>,
    /// Peers' requests being handled, per peer (kept by the exec server, read by the bid
    /// server so that a peer at its cap is declined rather than offered a bid it would then be
    /// refused).
    pub remote_per_peer: Mutex<HashMap<PeerId, usize>>,
    /// Where each replica stands in the replication core (updated every 250 ms).
    pub replication: tokio::sync::watch::Receiver<Vec<fab_mesh::replicate::FeedHead>>,
    /// Peers' telemetry, signature-checked.
    pub telemetry: Arc<Mutex<TelemetryView>>,
    /// This node's last published report.
    pub own_telemetry: Mutex<Option<SignedTelemetry>>,
    /// Measured latency per model digest: EWMA (1/8) of run times, microseconds.
    pub model_latency: Mutex<BTreeMap<[u8; 32], u64>>,
    /// Peers' models as they described them: (peer, name) -> (digest, input name).
    pub described: Mutex<HashMap<(PeerId, String), (ContentId, String)>>,
    /// The task that places jobs (with the mesh).
    pub placer: Option<tokio::sync::mpsc::Sender<place::PlaceJob>>,
    /// Jobs placed here recently.
    pub recent: place::Recent,
    pub rtts: Mutex<place::Rtts>,
    /// Jobs placed, by outcome.
    pub placed: Outcomes,
    /// Own entries gossiped, and the messages that carried them.
    pub entries_gossiped: Arc<crate::mesh_task::Gossiped>,
    pub nonce: AtomicU64,
    pub started: Instant,
}

/// The libp2p peer id of a ledger key, without going through its text form.
pub fn peer_of(key: &fab_ledger::PublicKey) -> PeerId {
    PeerId::from_bytes(&key.peer_id_bytes())
        .expect("an ed25519 key's identity multihash is a valid peer id")
}

/// Jobs this node placed, by outcome.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// What a job request names, before it is signed.
#[derive(Debug)]
pub struct JobSpec<'a> {
    pub model: &'a str,
    pub model_digest: ContentId,
    /// The model's (first) input name: the input digest covers it.
    pub input_name: &'a str,
    pub input: &'a Tensor,
    /// From now to the job's deadline.
    pub timeout_ms: u64,
}

/// Builds and signs a job request with this node's key: a fresh nonce, the input's digest and
/// size, created now, due `timeout_ms` from now.
pub fn sign_job(st: &NodeState, spec: JobSpec<'_>) -> SignedJobRequest {
    let input_digest = ContentId(digest_pairs([(spec.input_name, spec.input)].into_iter()));
    let created_ms = now_ms();
    let request = JobRequest {
        requester: st.key.public(),
        nonce: st.nonce.fetch_add(1, Ordering::Relaxed),
        model: spec.model.to_owned(),
        model_digest: spec.model_digest,
        input_digest,
        input_bytes: spec.input.byte_len() as u64,
        created_ms,
        deadline_ms: created_ms.saturating_add(spec.timeout_ms),
    };
    Signed::sign(request, &st.key)
}
