//! The control API's requests and responses, as the node writes and reads them. Each type's
//! schema is checked against `docs/openapi.yaml` by `tests/openapi.rs`.
//!
//! Digests are [`ContentId`] (64 hex digits), tensors [`Tensor`] (`{"dtype", "shape",
//! "data"}`), peer ids base58 strings.

use std::collections::BTreeMap;

use fab_inference::Tensor;
use fab_ledger::ContentId;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a digest looks in a schema: 64 hex digits.
#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct Digest(String);

/// How a tensor looks in a schema.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct TensorSchema {
    dtype: String,
    shape: Vec<u64>,
    data: Vec<f64>,
}

// ---- Errors ---------------------------------------------------------------------------------

/// Every non-2xx answer: `{"error": {"code", "message"}}` and what the code carries.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorInfo,
    /// `execution_failed`: the signed entry recording the failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Entry>,
    /// Jobs placed by the auction: where and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// `replicas_disagree`: each replica's executor, ledger seq and output digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<Replica>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfo {
    /// Stable code (docs/openapi.yaml lists them).
    pub code: String,
    pub message: String,
}

// ---- Health and node ------------------------------------------------------------------------

/// `GET /v1/health`: ready (200) or not (503).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ready` or `not_ready`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<bool>,
    /// Why the node is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/health/live`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Live {
    /// `live`.
    pub status: String,
}

/// `GET /v1/node`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct NodeInfo {
    pub peer_id: String,
    pub version: String,
    pub data_dir: String,
    pub uptime_s: u64,
    pub ledger: Head,
    pub inference: InferenceInfo,
    pub models_loaded: Vec<String>,
    pub mesh: MeshInfo,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct InferenceInfo {
    pub workers: u64,
    pub queue_depth: u64,
}

/// A node's mesh: only `enabled` when it is off.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct MeshInfo {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Multiaddrs it listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<String>>,
    /// `mesh.shards`: the network's shard count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u64>,
    /// This node's shard (from a hash of its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<GossipCounts>,
    /// Offences charged to peers outside gossip validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub penalties: Option<u64>,
}

/// Gossip messages received since start.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct GossipCounts {
    pub accepted: u64,
    /// Failed validation; the sender was penalised.
    pub rejected: u64,
    /// Dropped because the node fell behind; catch-up recovers them.
    pub events_dropped: u64,
}

/// A feed's size and last entry id.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Head {
    pub entries: u64,
    #[schemars(with = "Option<Digest>")]
    pub head: Option<ContentId>,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Models {
    pub models: Vec<ModelInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ModelInfo {
    pub name: String,
    pub path: String,
    #[schemars(with = "Digest")]
    pub digest: ContentId,
    pub bytes: u64,
    pub engine: String,
    pub loaded: bool,
    /// Input and output facts, once loaded.
    pub facts: Option<serde_json::Value>,
}

/// `GET /v1/peers`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Peers {
    /// False when `mesh.enabled` is false.
    pub mesh: bool,
    pub peers: Vec<Peer>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Peer {
    pub peer_id: String,
    pub addresses: Vec<String>,
    pub agent_version: Option<String>,
    pub protocols: Vec<String>,
    pub rtt_ms: Option<f64>,
    /// `tcp`, `quic`, `memory` or `other`.
    pub transport: Option<String>,
    /// This node's gossipsub score of the peer.
    pub score: Option<f64>,
    /// `node` (a fabnode node of this network), `observer` (another libp2p peer) or
    /// `connecting` (not identified yet).
    pub role: String,
}

/// `GET /v1/telemetry`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TelemetryReports {
    /// This node's last report (null until the first is published).
    #[serde(rename = "self")]
    pub own: Option<Telemetry>,
    /// Fresh, signature-checked peer reports.
    pub peers: Vec<Telemetry>,
}

/// One node's telemetry report.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Telemetry {
    /// Peers' reports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `device`, `edge` or `cloud`.
    pub tier: String,
    pub region: String,
    pub labels: Vec<String>,
    pub price_per_s_micros: u64,
    pub queue_depth: u64,
    pub workers: u64,
    pub speed_permille: u64,
    pub power_mw: u64,
    pub battery_permille: Option<u64>,
    pub host: HostInfo,
    /// Measured latency per model digest (hex), microseconds.
    pub models: BTreeMap<String, u64>,
    pub at_ms: u64,
    pub age_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct HostInfo {
    pub cores: u64,
    pub load_permille: u64,
    pub mem_free_mib: u64,
    pub temp_max_mc: Option<u64>,
}

// ---- Jobs -----------------------------------------------------------------------------------

/// `POST /v1/jobs`. The node reads `input` as `fab_inference::tensor::JsonTensor` (the type
/// parameter), clients write a [`Tensor`].
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest<T = Tensor> {
    /// A registered model's name.
    pub model: String,
    #[schemars(with = "TensorSchema")]
    pub input: Option<T>,
    /// From submission to result; capped at `limits.job_timeout_ms`.
    #[serde(default, alias = "timeout_ms", skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Run on this peer over `/fabnode/exec/1`, with no auction; not with the placement
    /// fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// Most the job may cost: a node's price per second times its estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_micros: Option<u64>,
    /// Allowed tiers (`device`, `edge`, `cloud`); empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// Allowed regions; empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Labels the node must carry, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Distinct nodes that each run the job (1 to 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// This job's scoring weights; missing terms take the configured ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<WeightsRequest>,
    /// Answer with the full placement: every candidate, its bid or reason, its score terms.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub explain: bool,
}

impl<T> SubmitRequest<T> {
    /// A job for `model` on `input`, with every other field at its default.
    pub fn new(model: impl Into<String>, input: T) -> Self {
        SubmitRequest {
            model: model.into(),
            input: Some(input),
            deadline_ms: None,
            on: None,
            max_cost_micros: None,
            tiers: Vec::new(),
            regions: Vec::new(),
            labels: Vec::new(),
            replicas: None,
            weights: None,
            explain: false,
        }
    }
}

/// Scoring weights, 0 to 1,000,000 each; a missing term takes `scheduler.weight_*`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliability: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u64>,
}

/// `POST /v1/jobs`, 200: the output and the signed, durably recorded receipt.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JobResult {
    #[schemars(with = "Digest")]
    pub job_id: ContentId,
    /// `ok`.
    pub status: String,
    pub input_names: Vec<String>,
    pub outputs: Vec<Output>,
    pub receipt: Entry,
    /// The peer that ran the job (placed jobs and `on`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// With replicas > 1: each replica's executor, ledger seq and output digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<Replica>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_agree: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Output {
    pub name: String,
    #[schemars(with = "TensorSchema")]
    pub tensor: Tensor,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Replica {
    pub executor: String,
    pub seq: u64,
    #[schemars(with = "Option<Digest>")]
    pub output_digest: Option<ContentId>,
}

/// Why a job ran where it ran. The short form has `winners`, `attempts`, `fast_path` and
/// `decided_ms`; with `explain` (and in `GET /v1/jobs/{id}`) it has every field.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Placement {
    pub winners: Vec<String>,
    pub attempts: u32,
    /// This node scored best and ran it with no call for bids.
    pub fast_path: bool,
    /// From the placing task taking the job to its first award (calls for bids included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Null while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Option<PlacementOutcome>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<Candidate>>,
}

/// How a placement ended: `"ok"` or `{"failed": reason}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlacementOutcome {
    Ok,
    Failed(String),
}

/// The weights a job's bids were scored with.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Weights {
    pub time: u64,
    pub cost: u64,
    pub energy: u64,
    pub cache: u64,
    pub reliability: u64,
    pub battery: u64,
}

/// One candidate of an auction.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Candidate {
    pub peer_id: String,
    pub local: bool,
    pub standing: Standing,
    pub reason: Option<String>,
    pub estimate: Option<Estimate>,
    pub score: Option<Score>,
}

/// Where a candidate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Filtered,
    NotAsked,
    Asked,
    Declined,
    Silent,
    Bid,
    Running,
    Succeeded,
    Failed,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Estimate {
    pub queue_us: u64,
    pub compute_us: u64,
    pub transfer_us: u64,
    pub completion_us: u64,
    pub cost_micros: u64,
    pub energy_uj: u64,
    pub cached: bool,
}

/// Score terms, 0 to 1000 each, and their weighted total.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Score {
    pub time: u64,
    pub cost: u64,
    pub energy: u64,
    pub cache: u64,
    pub reliability: u64,
    pub battery: u64,
    pub total: u64,
}

/// `GET /v1/jobs`: jobs this node placed, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Jobs {
    pub jobs: Vec<JobRecord>,
}

/// A job this node placed.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JobRecord {
    #[schemars(with = "Digest")]
    pub job_id: ContentId,
    pub model: String,
    pub submitted_ms: u64,
    pub latency_ms: f64,
    /// `ok` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub executors: Vec<String>,
    pub attempts: u32,
    pub fast_path: bool,
    pub replicas_agree: Option<bool>,
}

/// `GET /v1/jobs/{id}`: the receipt when this node ran the job, the record and placement
/// when it placed it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JobDetail {
    #[schemars(with = "Digest")]
    pub job_id: ContentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executors: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_agree: Option<Option<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

impl JobDetail {
    /// The detail of a job this node ran but did not place (the receipt is added).
    pub fn ran(job_id: ContentId) -> Self {
        JobDetail {
            job_id,
            model: None,
            submitted_ms: None,
            latency_ms: None,
            status: None,
            error: None,
            executors: None,
            attempts: None,
            fast_path: None,
            replicas_agree: None,
            receipt: None,
            placement: None,
        }
    }

    /// The detail of a job this node placed.
    pub fn placed(r: JobRecord, placement: Option<Placement>) -> Self {
        JobDetail {
            job_id: r.job_id,
            model: Some(r.model),
            submitted_ms: Some(r.submitted_ms),
            latency_ms: Some(r.latency_ms),
            status: Some(r.status),
            error: Some(r.error),
            executors: Some(r.executors),
            attempts: Some(r.attempts),
            fast_path: Some(r.fast_path),
            replicas_agree: Some(r.replicas_agree),
            receipt: None,
            placement,
        }
    }
}

// ---- Ledger ---------------------------------------------------------------------------------

/// `GET /v1/ledger/head`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LedgerHead {
    pub feed: String,
    pub entries: u64,
    #[schemars(with = "Option<Digest>")]
    pub head: Option<ContentId>,
}

/// `GET /v1/ledger/heads`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Feeds {
    pub feeds: Vec<Feed>,
}

/// A feed this node holds: its own, or a peer's replica.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Feed {
    /// PeerId (null for a stored key that does not decode).
    pub feed: Option<String>,
    pub own: bool,
    pub size: u64,
    /// Own feed: the id of its last entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Digest>")]
    pub head: Option<ContentId>,
    /// Replicas: size of the last checkpoint that signs the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_size: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<Option<String>>,
    /// Replicas: the largest size any peer has shown for the feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_size: Option<u64>,
    /// Replicas: `known_size - size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_entries: Option<u64>,
    /// Signed time of the last entry held.
    pub last_entry_ms: Option<u64>,
    /// Replicas: now - `last_entry_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_entry_age_ms: Option<Option<u64>>,
}

/// `GET /v1/ledger/entries`: a page of entries in seq order.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct EntryPage {
    pub feed: String,
    pub total: u64,
    /// Seq of the next page, or null at the end.
    pub next: Option<u64>,
    pub entries: Vec<Entry>,
}

/// A ledger entry. `raw` is the hex of the exact signed CBOR: verify it rather than trusting
/// the other fields.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Entry {
    pub seq: u64,
    #[schemars(with = "Digest")]
    pub id: ContentId,
    #[schemars(with = "Option<Digest>")]
    pub prev: Option<ContentId>,
    /// PeerId of the node that signed it.
    pub feed: String,
    /// `execution` or `unknown`.
    pub kind: String,
    pub time_ms: u64,
    /// ed25519, hex.
    pub signature: String,
    /// Signed entry, CBOR [entry bytes, signature], hex.
    pub raw: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// An execution receipt's fields.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Receipt {
    #[schemars(with = "Digest")]
    pub job_id: ContentId,
    pub requester: String,
    pub job_signature: String,
    pub model: String,
    #[schemars(with = "Digest")]
    pub model_digest: ContentId,
    #[schemars(with = "Digest")]
    pub input_digest: ContentId,
    pub input_bytes: u64,
    #[schemars(with = "Option<Digest>")]
    pub output_digest: Option<ContentId>,
    /// `ok` or `failed`.
    pub status: String,
    pub error: String,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub timings: Timings,
    pub metering: Metering,
    /// Engine, version, architecture and threads, e.g. `tract-0.23.9/x86_64/t1`.
    pub determinism: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Timings {
    pub queued_us: u64,
    pub run_us: u64,
    pub total_us: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Metering {
    pub cpu_time_us: u64,
    pub wall_time_us: u64,
    pub peak_rss_kib: u64,
}
