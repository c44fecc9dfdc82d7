//! The HTTP/JSON control API (described in `docs/openapi.yaml`).
//!
//! - [`guard`]: who may call it (Origin, Host, token, content type).
//! - [`serve`]: the HTTP server (connection cap, header deadline, bounded shutdown).
//! - [`token`]: the bearer token in the data dir.
//! - `status`, `jobs`, `ledger`: the routes, by area; `run`: the job pipeline they and the
//!   mesh share.
//!
//! Errors are JSON: `{"error": {"code": "...", "message": "..."}}` with a 4xx status for the
//! caller's mistakes and 5xx for the node's. A bad request never reaches the ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fab_inference::tensor::digest_named;
use fab_inference::{InferencePool, PoolError, RunError, Tensor};
use fab_ledger::{
    ContentId, Determinism, EntryBody, ExecStatus, ExecutionReceipt, JobRequest, Keypair, Metering,
    Signed, SignedEntry, Timings,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::Config;
use crate::ledger_writer::{LedgerClient, READ_ENTRIES_MAX, now_ms};
use crate::models::{ModelCache, ModelError};
use crate::views::entry_json;

pub mod guard;
mod jobs;
mod ledger;
mod run;
pub mod serve;
mod status;
pub mod token;

pub use jobs::REPLICAS_MAX;
use jobs::*;
use ledger::*;
pub use run::*;
use status::*;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    pub key: Keypair,
    pub config: Config,
    pub data_dir: std::path::PathBuf,
    pub models: ModelCache,
    pub pool: InferencePool,
    pub ledger: LedgerClient,
    /// The mesh, when `mesh.enabled`.
    pub mesh: Option<fab_mesh::net::MeshClient>,
    pub job_slots: Arc<Semaphore>,
    /// Jobs from peers being run now, so a replayed request cannot run twice concurrently.
    pub remote_running: std::sync::Mutex<std::collections::HashSet<ContentId>>,
    /// Peers' requests being handled, per peer (kept by the exec server, read by the bid
    /// server so that a peer at its cap is declined rather than offered a bid it would then be
    /// refused).
    pub remote_per_peer: std::sync::Mutex<std::collections::HashMap<libp2p::PeerId, usize>>,
    /// Where each replica stands in the replication core (updated every 250 ms).
    pub replication: tokio::sync::watch::Receiver<Vec<fab_mesh::replicate::FeedHead>>,
    /// Peers' telemetry, signature-checked.
    pub telemetry: Arc<std::sync::Mutex<crate::sched::telemetry::TelemetryView>>,
    /// This node's last published report.
    pub own_telemetry: std::sync::Mutex<Option<crate::sched::telemetry::SignedTelemetry>>,
    /// Measured latency per model digest: EWMA (1/8) of run times, microseconds.
    pub model_latency: std::sync::Mutex<std::collections::BTreeMap<[u8; 32], u64>>,
    /// Peers' models as they described them: (peer, name) -> (digest, input name).
    pub described:
        std::sync::Mutex<std::collections::HashMap<(libp2p::PeerId, String), (ContentId, String)>>,
    /// The task that places jobs (with the mesh).
    pub placer: Option<tokio::sync::mpsc::Sender<crate::placer::PlaceJob>>,
    /// Jobs placed here recently.
    pub recent: crate::placer::Recent,
    pub rtts: std::sync::Mutex<crate::placer::Rtts>,
    /// Jobs placed, by outcome.
    pub placed: Outcomes,
    /// Own entries gossiped, and the messages that carried them.
    pub entries_gossiped: Arc<crate::mesh_task::Gossiped>,
    pub nonce: AtomicU64,
    pub started: Instant,
}

/// Jobs this node placed, by outcome.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// An API error with its status and stable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub receipt: Option<Value>,
    /// Where the job was placed and why (jobs placed by the auction).
    pub placement: Option<Value>,
    /// Answer with `WWW-Authenticate: Bearer` (a 401).
    pub www_authenticate: bool,
    /// Every replica's executor, entry and output digest (replicas that disagree).
    pub replicas: Option<Box<Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            receipt: None,
            placement: None,
            www_authenticate: false,
            replicas: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(r) = self.receipt {
            body["receipt"] = r;
        }
        if let Some(p) = self.placement {
            body["placement"] = p;
        }
        if let Some(r) = self.replicas {
            body["replicas"] = *r;
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.www_authenticate {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

/// The router with every route, behind `guard`.
pub fn router(state: Arc<AppState>, guard: Arc<guard::Guard>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/health/live", get(live))
        .route("/v1/node", get(node_info))
        .route("/v1/models", get(list_models))
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/ledger/head", get(ledger_head))
        .route("/v1/ledger/heads", get(ledger_heads))
        .route("/v1/peers", get(peers))
        .route("/metrics", get(metrics))
        .route("/v1/telemetry", get(telemetry))
        .route("/v1/ledger/entries", get(ledger_entries))
        .route("/v1/ledger/entries/{seq}", get(ledger_entry))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see docs/openapi.yaml",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(guard, guard::layer))
        .with_state(state)
}
