//! The HTTP/JSON control API (described in `docs/openapi.yaml`).
//!
//! - [`guard`]: who may call it (Origin, Host, token, content type).
//! - [`serve`]: the HTTP server (connection cap, header deadline, bounded shutdown).
//! - [`token`]: the bearer token in the data dir.
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
pub mod serve;
pub mod token;

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

/// Liveness: the process answers. For systemd watchdogs and Kubernetes liveness probes.
async fn live() -> axum::Json<Value> {
    axum::Json(json!({"status": "live"}))
}

/// Readiness: the node serves jobs (its ledger answers; a stopped subsystem stops the node, so
/// a node that answers has all of them). 503 while it cannot.
async fn health(State(st): State<Arc<AppState>>) -> Response {
    let ledger = tokio::time::timeout(Duration::from_secs(1), st.ledger.head()).await;
    let (status, body) = match ledger {
        Ok((entries, _)) => (
            StatusCode::OK,
            json!({"status": "ready", "ledger_entries": entries,
                   "uptime_s": st.started.elapsed().as_secs(),
                   "mesh": st.mesh.is_some()}),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": "the ledger did not answer within 1 s"}),
        ),
    };
    (status, axum::Json(body)).into_response()
}

async fn peers(State(st): State<Arc<AppState>>) -> ApiResult {
    let Some(mesh) = &st.mesh else {
        return Ok(axum::Json(json!({"mesh": false, "peers": []})));
    };
    let peers = mesh.peers().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh_unavailable",
            e.to_string(),
        )
    })?;
    let list: Vec<Value> = peers
        .into_iter()
        .map(|(id, p)| {
            json!({"peer_id": id.to_base58(), "addresses": p.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                   "agent_version": p.agent_version, "protocols": p.protocols,
                   "rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1e3), "score": p.score, "transport": p.transport,
                   "role": if p.member { "node" } else if p.agent_version.is_some() { "observer" } else { "connecting" }})
        })
        .collect();
    Ok(axum::Json(json!({"mesh": true, "peers": list})))
}

fn telemetry_json(t: &crate::sched::Telemetry, now: u64) -> Value {
    json!({
        "tier": t.tier.name(), "region": t.region, "labels": t.labels,
        "price_per_s_micros": t.price_per_s_micros, "queue_depth": t.queue_depth,
        "workers": t.workers, "speed_permille": t.speed_permille, "power_mw": t.power_mw,
        "battery_permille": t.battery_permille,
        "host": {"cores": t.host.cores, "load_permille": t.host.load_permille,
                 "mem_free_mib": t.host.mem_free_mib, "temp_max_mc": t.host.temp_max_mc},
        "models": t.model_latency_us.iter().map(|(d, l)| (hex::encode(d), json!(l))).collect::<serde_json::Map<_, _>>(),
        "at_ms": t.at_ms, "age_ms": now.saturating_sub(t.at_ms),
    })
}

/// This node's last report and every fresh peer report.
async fn telemetry(State(st): State<Arc<AppState>>) -> ApiResult {
    let now = now_ms();
    let own = st
        .own_telemetry
        .lock()
        .ok()
        .and_then(|o| o.as_ref().map(|r| telemetry_json(&r.body().telemetry, now)));
    let peers: Vec<Value> = st
        .telemetry
        .lock()
        .map(|v| {
            v.fresh(now)
                .into_iter()
                .map(|r| {
                    let mut j = telemetry_json(&r.telemetry, now);
                    j["peer_id"] = json!(r.node.peer_id());
                    j["seq"] = json!(r.seq);
                    j
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(axum::Json(json!({"self": own, "peers": peers})))
}

/// Prometheus text exposition of the node's counters.
async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    use std::fmt::Write;
    let (entries, _) = st.ledger.head().await;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "fabnode_ledger_entries",
        "gauge",
        "Entries in this node's own ledger feed.",
        &[("", entries as f64)],
    );
    metric(
        "fabnode_jobs_in_flight",
        "gauge",
        "Jobs this node is running or has queued for its inference workers.",
        &[("", crate::telemetry_task::in_flight(&st) as f64)],
    );
    if st.placer.is_some() {
        metric(
            "fabnode_jobs_placed_total",
            "counter",
            "Jobs this node placed (the auction), by outcome.",
            &[
                (
                    "{outcome=\"ok\"}",
                    st.placed.ok.load(Ordering::Relaxed) as f64,
                ),
                (
                    "{outcome=\"failed\"}",
                    st.placed.failed.load(Ordering::Relaxed) as f64,
                ),
            ],
        );
    }
    if let Some(mesh) = &st.mesh {
        let stats = mesh.stats().await.unwrap_or_default();
        let peers = mesh.peers().await.map(|p| p.len()).unwrap_or(0);
        metric(
            "fabnode_gossip_messages_total",
            "counter",
            "Gossip messages received, by validation result; rejected senders are penalised.",
            &[
                ("{result=\"accepted\"}", stats.accepted as f64),
                ("{result=\"rejected\"}", stats.rejected as f64),
            ],
        );
        metric(
            "fabnode_gossip_entries_sent_total",
            "counter",
            "Own ledger entries published on the ledger topic, and the gossip messages that carried them (under load, entries committed close together go out as one batch).",
            &[
                (
                    "{unit=\"entries\"}",
                    st.entries_gossiped.entries.load(Ordering::Relaxed) as f64,
                ),
                (
                    "{unit=\"messages\"}",
                    st.entries_gossiped.messages.load(Ordering::Relaxed) as f64,
                ),
            ],
        );
        metric(
            "fabnode_peer_penalties_total",
            "counter",
            "Offences charged to peers outside gossip validation (malformed or implausible bids, exec or ledger-sync frames, replication violations); each lowers the peer's gossip score.",
            &[("", stats.penalties as f64)],
        );
        metric(
            "fabnode_mesh_events_dropped_total",
            "counter",
            "Mesh events dropped because the node fell behind (catch-up recovers them).",
            &[("", stats.events_dropped as f64)],
        );
        metric(
            "fabnode_mesh_peers",
            "gauge",
            "Connected peers of this network.",
            &[("", peers as f64)],
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

async fn ledger_heads(State(st): State<Arc<AppState>>) -> ApiResult {
    let (entries, head) = st.ledger.head().await;
    let replicas = st
        .ledger
        .replica_heads()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger_error", e))?;
    let mut feeds = vec![
        json!({"feed": st.key.public().peer_id(), "own": true, "size": entries, "head": head}),
    ];
    // The replication core's view (known sizes, last entry times): no ledger reads per feed.
    let view: std::collections::HashMap<[u8; 32], (u64, Option<u64>)> = st
        .replication
        .borrow()
        .iter()
        .map(|h| (h.feed.to_bytes(), (h.known_size, h.last_time_ms)))
        .collect();
    let now = now_ms();
    let own_last = match entries {
        0 => None,
        n => st
            .ledger
            .range(n - 1, 1)
            .await
            .ok()
            .and_then(|r| r.into_iter().next()),
    };
    feeds[0]["last_entry_ms"] = json!(own_last.and_then(|(_, b)| entry_time(&b)));
    for (key, size, note) in replicas {
        let feed = fab_ledger::PublicKey::from_bytes(&key);
        let cp = feed
            .zip(note)
            .and_then(|(f, n)| fab_ledger::checkpoint::Checkpoint::verify(&n, &f, None).ok());
        let (known, last) = view.get(&key).copied().unwrap_or((size, None));
        let known_size = known.max(size);
        feeds.push(json!({
            "feed": feed.map(|f| f.peer_id()), "own": false, "size": size,
            "trusted_size": cp.as_ref().map(|c| c.size),
            "trusted_root": cp.as_ref().map(|c| hex::encode(c.root)),
            "known_size": known_size,
            "lag_entries": known_size - size,
            "last_entry_ms": last,
            "last_entry_age_ms": last.map(|t| now.saturating_sub(t)),
        }));
    }
    Ok(axum::Json(json!({"feeds": feeds})))
}

/// The signed time of a stored entry.
fn entry_time(bytes: &[u8]) -> Option<u64> {
    SignedEntry::decode_verified(bytes)
        .ok()
        .map(|e| e.body().time_ms)
}

async fn node_info(State(st): State<Arc<AppState>>) -> ApiResult {
    let (entries, head) = st.ledger.head().await;
    let mesh = match &st.mesh {
        Some(m) => {
            let listen = m.listen_addrs().await.unwrap_or_default();
            let stats = m.stats().await.unwrap_or_default();
            // The config was validated at start: the count is in range.
            let shards = fab_mesh::shard::Shards::new(st.config.mesh.shards).unwrap_or_default();
            json!({"enabled": true, "peer_id": m.peer_id().to_base58(),
                   "shards": shards.count(), "shard": shards.of(&st.key.public()),
                   "listen": listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                   "gossip": {"accepted": stats.accepted, "rejected": stats.rejected,
                              "events_dropped": stats.events_dropped},
                   "penalties": stats.penalties})
        }
        None => json!({"enabled": false}),
    };
    Ok(axum::Json(json!({
        "peer_id": st.key.public().peer_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "data_dir": st.data_dir,
        "uptime_s": st.started.elapsed().as_secs(),
        "ledger": {"entries": entries, "head": head},
        "inference": {"workers": st.config.inference.workers, "queue_depth": st.config.inference.queue_depth},
        "models_loaded": st.models.loaded().iter().map(|m| &m.name).collect::<Vec<_>>(),
        "mesh": mesh,
    })))
}

async fn list_models(State(st): State<Arc<AppState>>) -> ApiResult {
    let dir = st.data_dir.clone();
    let registered = tokio::task::spawn_blocking(move || crate::models::list(&dir))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "registry", e.to_string()))?;
    let loaded = st.models.loaded();
    let models: Vec<Value> = registered
        .into_iter()
        .map(|(name, rec)| {
            let info = loaded
                .iter()
                .find(|m| m.name == name && m.digest == rec.digest)
                .map(|m| m.info().clone());
            json!({"name": name, "path": rec.path, "digest": rec.digest, "bytes": rec.bytes,
                   "engine": rec.engine, "loaded": info.is_some(), "facts": info})
        })
        .collect();
    Ok(axum::Json(json!({ "models": models })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    model: String,
    /// Parsed straight into compact numbers: no JSON value tree (docs/SECURITY.md).
    #[serde(default)]
    input: Option<fab_inference::tensor::JsonTensor>,
    /// The job's deadline, from submission to result.
    #[serde(default, alias = "deadline_ms")]
    timeout_ms: Option<u64>,
    /// Run on this peer (a peer id) over `/fabnode/exec/1`, with no auction.
    #[serde(default)]
    on: Option<String>,
    #[serde(default)]
    max_cost_micros: Option<u64>,
    /// Allowed tiers (`device`, `edge`, `cloud`); empty allows all.
    #[serde(default)]
    tiers: Vec<String>,
    #[serde(default)]
    regions: Vec<String>,
    /// Labels the node must carry, all of them.
    #[serde(default)]
    labels: Vec<String>,
    /// Distinct nodes that each run the job.
    #[serde(default)]
    replicas: Option<u64>,
    /// This job's scoring weights; missing terms take the configured ones.
    #[serde(default)]
    weights: Option<WeightsBody>,
    /// Answer with every candidate's bid or reason and the score breakdown.
    #[serde(default)]
    explain: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    time: Option<u64>,
    cost: Option<u64>,
    energy: Option<u64>,
    cache: Option<u64>,
    reliability: Option<u64>,
    battery: Option<u64>,
}

/// Most replicas a job may ask for.
pub const REPLICAS_MAX: u64 = 16;
/// Largest scoring weight.
const WEIGHT_MAX: u64 = 1_000_000;

impl SubmitBody {
    /// Whether the body asks for anything only the auction does.
    fn places(&self) -> bool {
        self.max_cost_micros.is_some()
            || !self.tiers.is_empty()
            || !self.regions.is_empty()
            || !self.labels.is_empty()
            || self.replicas.is_some_and(|r| r != 1)
            || self.weights.is_some()
            || self.explain
    }

    fn sla(&self, timeout_ms: u64) -> Result<crate::sched::Sla, ApiError> {
        use fab_mesh::bid::{NAMES_MAX, TEXT_BYTES_MAX};
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_sla", m);
        let tiers = self
            .tiers
            .iter()
            .map(|t| {
                crate::sched::Tier::parse(t)
                    .ok_or_else(|| bad(format!("tiers: {t:?} is not device, edge or cloud")))
            })
            .collect::<Result<_, _>>()?;
        for (field, names) in [("regions", &self.regions), ("labels", &self.labels)] {
            if names.len() > NAMES_MAX
                || names
                    .iter()
                    .any(|n| n.is_empty() || n.len() > TEXT_BYTES_MAX)
            {
                return Err(bad(format!(
                    "{field}: at most {NAMES_MAX} names of 1 to {TEXT_BYTES_MAX} bytes"
                )));
            }
        }
        let replicas = self.replicas.unwrap_or(1);
        if !(1..=REPLICAS_MAX).contains(&replicas) {
            return Err(bad(format!(
                "replicas: 1 to {REPLICAS_MAX}, not {replicas}"
            )));
        }
        Ok(crate::sched::Sla {
            deadline_us: timeout_ms.saturating_mul(1000),
            max_cost_micros: self.max_cost_micros,
            tiers,
            regions: self.regions.iter().cloned().collect(),
            labels: self.labels.iter().cloned().collect(),
            replicas: replicas as u8,
        })
    }

    fn weights(
        &self,
        configured: crate::sched::Weights,
    ) -> Result<Option<crate::sched::Weights>, ApiError> {
        let Some(w) = &self.weights else {
            return Ok(None);
        };
        let all = [w.time, w.cost, w.energy, w.cache, w.reliability, w.battery];
        if all.iter().flatten().any(|v| *v > WEIGHT_MAX) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_sla",
                format!("weights: integers from 0 to {WEIGHT_MAX}"),
            ));
        }
        Ok(Some(crate::sched::Weights {
            time: w.time.unwrap_or(configured.time),
            cost: w.cost.unwrap_or(configured.cost),
            energy: w.energy.unwrap_or(configured.energy),
            cache: w.cache.unwrap_or(configured.cache),
            reliability: w.reliability.unwrap_or(configured.reliability),
            battery: w.battery.unwrap_or(configured.battery),
        }))
    }
}

/// A job that ran (or failed while running) and was recorded.
#[derive(Debug)]
pub struct Executed {
    pub entry: SignedEntry,
    /// The outputs with their names, or why the run failed (the receipt records it too).
    pub outcome: Result<Vec<(String, Tensor)>, String>,
}

impl Executed {
    /// The outputs, when the run succeeded.
    pub fn outputs(&self) -> Option<&[(String, Tensor)]> {
        self.outcome.as_deref().ok()
    }
}

/// Finds a registered model, loading it on first use.
pub async fn resolve_model(
    st: &Arc<AppState>,
    name: &str,
) -> Result<crate::models::LoadedModel, ApiError> {
    let st2 = Arc::clone(st);
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || st2.models.get(&name))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| match e {
            ModelError::Unknown { .. } | ModelError::BadName(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_model", e.to_string())
            }
            ModelError::Changed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "model_changed", e.to_string())
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_load_failed",
                e.to_string(),
            ),
        })
}

/// Takes one of the node's job slots, or says it is busy.
pub fn job_slot(st: &Arc<AppState>) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    Arc::clone(&st.job_slots).try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{} jobs are already in flight (limits.jobs_in_flight_max); retry later",
                st.config.limits.jobs_in_flight_max
            ),
        )
    })
}

/// Refuses an input over `limits.input_bytes_max`.
pub fn check_input_size(st: &AppState, input: &Tensor) -> Result<(), ApiError> {
    let input_max = st.config.limits.input_bytes_max;
    if input.byte_len() > input_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            format!(
                "input is {} bytes, over limits.input_bytes_max = {input_max}",
                input.byte_len()
            ),
        ));
    }
    Ok(())
}

/// Runs a signed job on a loaded model and records its receipt in the ledger; the caller has
/// checked that the job names this model and input. Only a recorded job returns `Ok`.
pub async fn execute(
    st: &Arc<AppState>,
    job: Signed<JobRequest>,
    model: &crate::models::LoadedModel,
    input: Tensor,
    timeout_ms: u64,
    accepted: Instant,
) -> Result<Executed, ApiError> {
    let info = model.info().clone();
    let input_digest = job.body().input_digest;
    let rx = st
        .pool
        .submit(Arc::clone(&model.engine), vec![input])
        .map_err(|e| match e {
            PoolError::Invalid(RunError::InvalidInput(m)) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", m)
            }
            PoolError::Busy { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
            }
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                other.to_string(),
            ),
        })?;
    let report = tokio::time::timeout(Duration::from_millis(timeout_ms), rx).await;
    let (status, error, outputs, timings, metering) = match report {
        Ok(Ok(r)) => {
            let timings = Timings {
                queued_us: r.queued.as_micros() as u64,
                run_us: r.wall.as_micros() as u64,
                total_us: accepted.elapsed().as_micros() as u64,
            };
            let metering = Metering {
                cpu_time_us: r.cpu_time.as_micros() as u64,
                wall_time_us: r.wall.as_micros() as u64,
                peak_rss_kib: r.peak_rss_kib,
            };
            if let Ok(mut m) = st.model_latency.lock() {
                let sample = u64::try_from(r.wall.as_micros()).unwrap_or(u64::MAX).max(1);
                let e = m.entry(model.digest.0).or_insert(sample);
                *e = (e.saturating_mul(7).saturating_add(sample) / 8).max(1);
            }
            match r.outputs {
                Ok(outs) => (ExecStatus::Ok, String::new(), Some(outs), timings, metering),
                Err(e) => (
                    ExecStatus::Failed,
                    truncate(e.to_string()),
                    None,
                    timings,
                    metering,
                ),
            }
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the inference worker stopped",
            ));
        }
        Err(_) => {
            let total = accepted.elapsed().as_micros() as u64;
            (
                ExecStatus::Failed,
                format!("deadline of {timeout_ms} ms exceeded; the result was discarded"),
                None,
                Timings {
                    queued_us: 0,
                    run_us: 0,
                    total_us: total,
                },
                Metering::default(),
            )
        }
    };
    let named: Option<Vec<(String, Tensor)>> = outputs.map(|outs| {
        info.outputs
            .iter()
            .map(|f| f.name.clone())
            .zip(outs)
            .collect()
    });
    let output_digest = named.as_ref().map(|n| ContentId(digest_named(n)));
    let receipt = ExecutionReceipt {
        model_digest: model.digest,
        input_digest,
        job,
        output_digest,
        status,
        error: error.clone(),
        timings,
        metering,
        determinism: Determinism {
            engine: info.engine.to_owned(),
            engine_version: info.engine_version.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            threads: info.threads,
        },
    };
    let entry = st
        .ledger
        .append(EntryBody::Execution(Box::new(receipt)))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                format!("the job ran but could not be recorded, so no result is returned: {e}"),
            )
        })?;
    tracing::info!(seq = entry.body().seq, status = ?status, "job recorded");
    Ok(Executed {
        entry,
        outcome: named.ok_or(error),
    })
}

/// The HTTP answer for a recorded job: 200 with outputs, or 500 `execution_failed` with the
/// receipt.
pub fn job_response(
    job_id: ContentId,
    input_name: &str,
    executed: Executed,
    executor: Option<String>,
) -> Result<Response, ApiError> {
    job_body(job_id, input_name, executed, executor).map(|b| axum::Json(b).into_response())
}

/// The JSON body of [`job_response`].
pub fn job_body(
    job_id: ContentId,
    input_name: &str,
    executed: Executed,
    executor: Option<String>,
) -> Result<Value, ApiError> {
    let Some(outs) = executed.outputs() else {
        return Err(failed_response(executed));
    };
    let mut body = json!({
        "job_id": job_id,
        "status": "ok",
        "input_names": [input_name],
        "outputs": outs.iter().map(|(n, t)| json!({"name": n, "tensor": t.to_json_value()})).collect::<Vec<_>>(),
        "receipt": entry_json(&executed.entry),
    });
    if let Some(peer) = executor {
        body["executor"] = json!(peer);
    }
    Ok(body)
}

/// A recorded job that failed: 500 `execution_failed` with its receipt.
pub fn failed_response(executed: Executed) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "execution_failed",
        message: executed.outcome.err().unwrap_or_default(),
        receipt: Some(entry_json(&executed.entry)),
        placement: None,
        www_authenticate: false,
        replicas: None,
    }
}

async fn submit_job(State(st): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let accepted = Instant::now();
    let limit = st.config.limits.request_bytes_max;
    let body_timeout = Duration::from_millis(st.config.api.body_timeout_ms);
    let bytes: Bytes = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within api.body_timeout_ms = {} ms",
                    st.config.api.body_timeout_ms
                ),
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("request body is over limits.request_bytes_max = {limit} bytes"),
            )
        })?;
    let mut req: SubmitBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "request body: {e}; expected {{\"model\": name, \"input\": tensor, \"on\"?: peer id}}"
            ),
        )
    })?;
    let input = req.input.take().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body: missing field `input`; expected {\"model\": name, \"input\": tensor, \"on\"?: peer id}",
        )
    })?;
    let input = Tensor::from_json(input)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_tensor", format!("input: {e}")))?;
    check_input_size(&st, &input)?;
    let timeout_ms = req
        .timeout_ms
        .unwrap_or(st.config.limits.job_timeout_ms)
        .clamp(1, st.config.limits.job_timeout_ms.max(1));
    if req.on.is_some() && req.places() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_sla",
            "`on` pins the job to one peer; placement fields (tiers, regions, labels, max cost, \
             replicas, weights, explain) choose a peer: use one or the other",
        ));
    }
    if req.on.is_none() && st.placer.is_some() {
        return place(&st, req, input, timeout_ms, accepted).await;
    }
    if req.places() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "mesh_disabled",
            "placement fields need the mesh (mesh.enabled = false here)",
        ));
    }
    if let Some(on) = req.on {
        let peer: libp2p::PeerId = on.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_peer_id",
                format!("on: {on:?} is not a peer id (fabnode peers lists them)"),
            )
        })?;
        if peer.to_string() != st.key.public().peer_id() {
            return crate::exec::submit_remote(&st, peer, &req.model, input, timeout_ms).await;
        }
    }
    let permit = job_slot(&st)?;
    let model = resolve_model(&st, &req.model).await?;
    let input_name = model
        .info()
        .inputs
        .first()
        .map_or_else(|| "input".to_owned(), |f| f.name.clone());
    let input_digest = ContentId(digest_named(&[(input_name.clone(), input.clone())]));
    let created_ms = now_ms();
    let request = JobRequest {
        requester: st.key.public(),
        nonce: st.nonce.fetch_add(1, Ordering::Relaxed),
        model: model.name.clone(),
        model_digest: model.digest,
        input_digest,
        input_bytes: input.byte_len() as u64,
        created_ms,
        deadline_ms: created_ms + timeout_ms,
    };
    let job = Signed::sign(request, &st.key);
    let job_id = job.id();
    let span = tracing::info_span!("job", job = %job_id.short(), model = %model.name);
    let executed = execute(&st, job, &model, input, timeout_ms, accepted)
        .instrument(span)
        .await?;
    drop(permit);
    job_response(job_id, &input_name, executed, None)
}

/// Places a job with the auction and answers with its first result, every replica's output
/// digest, and the placement.
async fn place(
    st: &Arc<AppState>,
    req: SubmitBody,
    input: Tensor,
    timeout_ms: u64,
    accepted: Instant,
) -> Result<Response, ApiError> {
    let sla = req.sla(timeout_ms)?;
    let weights = req.weights(st.config.scheduler.weights())?;
    let placed = crate::placer::place(
        st,
        crate::placer::Request {
            model: req.model.clone(),
            input,
            timeout_ms,
            sla,
            weights,
            accepted,
        },
    )
    .await
    .map_err(|mut e| {
        if !req.explain
            && let Some(p) = &mut e.placement
        {
            *p = crate::placer::summary(p);
        }
        e
    })?;
    let crate::placer::Placed {
        results,
        placement,
        job,
        input_name,
        replicas_agree,
    } = placed;
    let replicas: Vec<Value> = results
        .iter()
        .map(|(peer, e)| {
            json!({"executor": peer.to_string(), "seq": e.entry.body().seq,
                   "output_digest": crate::placer::output_digest(e)})
        })
        .collect();
    let placement = if req.explain {
        placement
    } else {
        crate::placer::summary(&placement)
    };
    if replicas_agree == Some(false) {
        // No output is returned: the client cannot know which replica, if any, is right.
        let digests: Vec<String> = results
            .iter()
            .map(|(peer, e)| {
                let d = crate::placer::output_digest(e)
                    .map_or_else(|| "none".into(), |d| d.to_string());
                format!("{peer}: {d}")
            })
            .collect();
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "replicas_disagree",
            format!(
                "the {} replicas' outputs differ ({}); every run is in its executor's ledger",
                results.len(),
                digests.join(", ")
            ),
        );
        e.replicas = Some(Box::new(json!(replicas)));
        e.placement = Some(placement);
        return Err(e);
    }
    let mut results = results.into_iter();
    let (peer, first) = results
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no result"))?;
    let mut body = job_body(job, &input_name, first, Some(peer.to_string()))?;
    body["placement"] = placement;
    if let Some(agree) = replicas_agree {
        body["replicas"] = json!(replicas);
        body["replicas_agree"] = json!(agree);
    }
    Ok(axum::Json(body).into_response())
}

fn truncate(mut s: String) -> String {
    let max = fab_ledger::entry::ERROR_TEXT_BYTES_MAX;
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

async fn entry_at(st: &AppState, seq: u64) -> Result<Option<SignedEntry>, ApiError> {
    let rows = st
        .ledger
        .range(seq, 1)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger_error", e))?;
    match rows.into_iter().next() {
        Some((s, bytes)) if s == seq => decode_stored(s, &bytes).map(Some),
        _ => Ok(None),
    }
}

fn decode_stored(seq: u64, bytes: &[u8]) -> Result<SignedEntry, ApiError> {
    SignedEntry::decode_verified(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ledger_corrupt",
            format!("stored entry {seq} does not verify: {e}; run `fabnode ledger verify`"),
        )
    })
}

#[derive(Deserialize)]
struct JobsQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

/// Jobs this node placed recently, newest first.
async fn list_jobs(State(st): State<Arc<AppState>>, Query(q): Query<JobsQuery>) -> ApiResult {
    let jobs: Vec<Value> = crate::placer::recent(&st, q.limit.min(crate::placer::RECENT_MAX))
        .iter()
        .map(crate::placer::JobRecord::to_json)
        .collect();
    Ok(axum::Json(json!({ "jobs": jobs })))
}

/// A job: its receipt when this node ran it, and its placement when this node placed it.
async fn get_job(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let job: ContentId = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_job_id",
            "a job id is 64 hex digits",
        )
    })?;
    let seq = st
        .ledger
        .job_seq(job)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger_error", e))?;
    let placed = crate::placer::find(&st, &job);
    if seq.is_none() && placed.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_job",
            format!("no job {id} in this node's ledger or among the jobs it placed"),
        ));
    }
    let mut body = match &placed {
        Some(r) => {
            let mut b = r.to_json();
            b["placement"] = r.placement.clone();
            b
        }
        None => json!({"job_id": job}),
    };
    if let Some(seq) = seq {
        let entry = entry_at(&st, seq).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger_error",
                "job index points past the ledger",
            )
        })?;
        body["receipt"] = entry_json(&entry);
    }
    Ok(axum::Json(body))
}

async fn ledger_head(State(st): State<Arc<AppState>>) -> ApiResult {
    let (entries, head) = st.ledger.head().await;
    Ok(axum::Json(
        json!({"feed": st.key.public().peer_id(), "entries": entries, "head": head}),
    ))
}

#[derive(Deserialize)]
struct RangeQuery {
    #[serde(default)]
    from: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn ledger_entries(State(st): State<Arc<AppState>>, Query(q): Query<RangeQuery>) -> ApiResult {
    if q.limit == 0 || q.limit > READ_ENTRIES_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_limit",
            format!("limit must be 1 to {READ_ENTRIES_MAX}"),
        ));
    }
    let rows = st
        .ledger
        .range(q.from, q.limit)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger_error", e))?;
    let entries = rows
        .iter()
        .map(|(seq, bytes)| decode_stored(*seq, bytes).map(|e| entry_json(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let (total, _) = st.ledger.head().await;
    let next = rows.last().map(|(s, _)| s + 1).filter(|n| *n < total);
    Ok(axum::Json(
        json!({"feed": st.key.public().peer_id(), "total": total, "entries": entries, "next": next}),
    ))
}

async fn ledger_entry(State(st): State<Arc<AppState>>, Path(seq): Path<String>) -> ApiResult {
    let seq: u64 = seq.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_seq",
            "seq is a non-negative integer",
        )
    })?;
    let entry = entry_at(&st, seq).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_entry",
            format!("no entry {seq}"),
        )
    })?;
    Ok(axum::Json(entry_json(&entry)))
}
