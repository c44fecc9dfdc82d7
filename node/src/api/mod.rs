//! The HTTP/JSON control API (described in `docs/openapi.yaml`).
//!
//! - [`guard`]: who may call it (Origin, Host, token, content type).
//! - [`serve`]: the HTTP server (connection cap, header deadline, bounded shutdown).
//! - [`token`]: the bearer token in the data dir.
//! - `status`, `jobs`, `ledger`: the routes, by area; each parses a request, calls the jobs
//!   service ([`crate::jobs`]) and writes its answer.
//! - [`error`]: the one table from error codes to HTTP statuses.
//! - `placement`: the JSON views of placements and placed jobs.
//!
//! Errors are JSON: `{"error": {"code": "...", "message": "..."}}` with a 4xx status for the
//! caller's mistakes and 5xx for the node's. A bad request never reaches the ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fab_inference::Tensor;
use fab_ledger::{ContentId, SignedEntry};
use serde::Deserialize;

use crate::jobs::{ErrorKind, NodeState};
use crate::ledger_writer::{READ_ENTRIES_MAX, now_ms};

pub mod error;
pub mod guard;
mod jobs;
mod ledger;
mod placement;
pub mod serve;
mod status;
pub mod token;

pub use error::{ApiCode, ApiError};
pub use jobs::REPLICAS_MAX;
use jobs::*;
use ledger::*;
use status::*;

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

/// The router with every route, behind `guard`.
pub fn router(state: Arc<NodeState>, guard: Arc<guard::Guard>) -> Router {
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
            ApiError::new(ApiCode::NotFound, "no such endpoint; see docs/openapi.yaml")
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(guard, guard::layer))
        .with_state(state)
}
