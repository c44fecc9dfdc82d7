//! `POST /v1/jobs` (run here, on a named peer, or placed by the auction) and the jobs this node
//! placed.

use fab_client::types as api;

use super::*;

/// The body of `POST /v1/jobs`: the client's type, with the input parsed straight into
/// compact numbers (no JSON value tree: docs/SECURITY.md).
type SubmitBody = api::SubmitRequest<fab_inference::tensor::JsonTensor>;

/// Most replicas a job may ask for.
pub const REPLICAS_MAX: u64 = 16;

/// Largest scoring weight.
pub(super) const WEIGHT_MAX: u64 = 1_000_000;

/// Whether the body asks for anything only the auction does.
fn places(req: &SubmitBody) -> bool {
    req.max_cost_micros.is_some()
        || !req.tiers.is_empty()
        || !req.regions.is_empty()
        || !req.labels.is_empty()
        || req.replicas.is_some_and(|r| r != 1)
        || req.weights.is_some()
        || req.explain
}

/// The placement fields as the auction's SLA, range-checked.
fn sla(req: &SubmitBody, timeout_ms: u64) -> Result<crate::sched::Sla, ApiError> {
    use fab_mesh::bid::{NAMES_MAX, TEXT_BYTES_MAX};
    let bad = |m: String| ApiError::new(ErrorKind::BadSla, m);
    let tiers = req
        .tiers
        .iter()
        .map(|t| {
            crate::sched::Tier::parse(t)
                .ok_or_else(|| bad(format!("tiers: {t:?} is not device, edge or cloud")))
        })
        .collect::<Result<_, _>>()?;
    for (field, names) in [("regions", &req.regions), ("labels", &req.labels)] {
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
    let replicas = req.replicas.unwrap_or(1);
    if !(1..=REPLICAS_MAX).contains(&replicas) {
        return Err(bad(format!(
            "replicas: 1 to {REPLICAS_MAX}, not {replicas}"
        )));
    }
    Ok(crate::sched::Sla {
        deadline_us: timeout_ms.saturating_mul(1000),
        max_cost_micros: req.max_cost_micros,
        tiers,
        regions: req.regions.iter().cloned().collect(),
        labels: req.labels.iter().cloned().collect(),
        replicas: replicas as u8,
    })
}

/// This job's weights, missing terms taken from the configured ones.
fn weights(
    req: &SubmitBody,
    configured: crate::sched::Weights,
) -> Result<Option<crate::sched::Weights>, ApiError> {
    let Some(w) = &req.weights else {
        return Ok(None);
    };
    let all = [w.time, w.cost, w.energy, w.cache, w.reliability, w.battery];
    if all.iter().flatten().any(|v| *v > WEIGHT_MAX) {
        return Err(ApiError::new(
            ErrorKind::BadSla,
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

pub(super) async fn submit_job(
    State(st): State<Arc<NodeState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let accepted = Instant::now();
    let limit = st.config.limits.request_bytes_max;
    let body_timeout = Duration::from_millis(st.config.api.body_timeout_ms);
    let bytes: Bytes = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                ApiCode::RequestTimeout,
                format!(
                    "the request body did not arrive within api.body_timeout_ms = {} ms",
                    st.config.api.body_timeout_ms
                ),
            )
        })?
        .map_err(|_| {
            ApiError::new(
                ApiCode::RequestTooLarge,
                format!("request body is over limits.request_bytes_max = {limit} bytes"),
            )
        })?;
    let mut req: SubmitBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ApiCode::BadRequest,
            format!(
                "request body: {e}; expected {{\"model\": name, \"input\": tensor, \"on\"?: peer id}}"
            ),
        )
    })?;
    let input = req.input.take().ok_or_else(|| {
        ApiError::new(
            ApiCode::BadRequest,
            "request body: missing field `input`; expected {\"model\": name, \"input\": tensor, \"on\"?: peer id}",
        )
    })?;
    let input = Tensor::from_json(input)
        .map_err(|e| ApiError::new(ErrorKind::BadTensor, format!("input: {e}")))?;
    let timeout_ms = req
        .deadline_ms
        .unwrap_or(st.config.limits.job_timeout_ms)
        .clamp(1, st.config.limits.job_timeout_ms.max(1));
    if req.on.is_some() && places(&req) {
        return Err(ApiError::new(
            ErrorKind::BadSla,
            "`on` pins the job to one peer; placement fields (tiers, regions, labels, max cost, \
             replicas, weights, explain) choose a peer: use one or the other",
        ));
    }
    if req.on.is_none() && st.placer.is_some() {
        return place(&st, req, input, timeout_ms, accepted).await;
    }
    if places(&req) {
        return Err(ApiError::new(
            ErrorKind::MeshDisabled,
            "placement fields need the mesh (mesh.enabled = false here)",
        ));
    }
    if let Some(on) = req.on.take() {
        let peer: libp2p::PeerId = on.parse().map_err(|_| {
            ApiError::new(
                ApiCode::BadPeerId,
                format!("on: {on:?} is not a peer id (fabnode peers lists them)"),
            )
        })?;
        if peer != crate::jobs::peer_of(&st.key.public()) {
            let run = crate::jobs::remote::submit_remote(&st, peer, &req.model, input, timeout_ms)
                .await?;
            let body = job_body(
                run.job,
                &run.input_name,
                run.executed,
                Some(run.executor.to_string()),
            );
            return Ok(axum::Json(body).into_response());
        }
    }
    let run = crate::jobs::run_local(&st, &req.model, input, timeout_ms, accepted).await?;
    Ok(axum::Json(job_body(run.job, &run.input_name, run.executed, None)).into_response())
}

/// The answer for a job that ran and succeeded.
fn job_body(
    job_id: ContentId,
    input_name: &str,
    executed: crate::jobs::Executed,
    executor: Option<String>,
) -> api::JobResult {
    let receipt = crate::views::entry(&executed.entry);
    api::JobResult {
        job_id,
        status: "ok".to_owned(),
        input_names: vec![input_name.to_owned()],
        outputs: executed
            .outcome
            .unwrap_or_default()
            .into_iter()
            .map(|(name, tensor)| api::Output { name, tensor })
            .collect(),
        receipt,
        executor,
        placement: None,
        replicas: None,
        replicas_agree: None,
    }
}

/// Places a job with the auction and answers with its first result, every replica's output
/// digest, and the placement.
async fn place(
    st: &Arc<NodeState>,
    req: SubmitBody,
    input: Tensor,
    timeout_ms: u64,
    accepted: Instant,
) -> Result<Response, ApiError> {
    let sla = sla(&req, timeout_ms)?;
    let weights = weights(&req, st.config.scheduler.weights())?;
    let placed = crate::jobs::place::place(
        st,
        crate::jobs::place::Request {
            model: req.model.clone(),
            input,
            timeout_ms,
            sla,
            weights,
            accepted,
        },
    )
    .await
    .map_err(|e| ApiError::from_job(e, req.explain))?;
    let crate::jobs::place::Placed {
        results,
        placement,
        job,
        input_name,
        replicas_agree,
    } = placed;
    let replicas: Vec<api::Replica> = results
        .iter()
        .map(|(peer, e)| api::Replica {
            executor: peer.to_string(),
            seq: e.entry.body().seq,
            output_digest: e.output_digest(),
        })
        .collect();
    let placement = placement::placement(&placement, req.explain);
    if replicas_agree == Some(false) {
        // No output is returned: the client cannot know which replica, if any, is right.
        let digests: Vec<String> = results
            .iter()
            .map(|(peer, e)| {
                let d = e
                    .output_digest()
                    .map_or_else(|| "none".into(), |d| d.to_string());
                format!("{peer}: {d}")
            })
            .collect();
        let mut e = ApiError::new(
            ApiCode::ReplicasDisagree,
            format!(
                "the {} replicas' outputs differ ({}); every run is in its executor's ledger",
                results.len(),
                digests.join(", ")
            ),
        );
        e.replicas = Some(replicas);
        e.placement = placement.map(Box::new);
        return Err(e);
    }
    let Some((peer, first)) = results.into_iter().next() else {
        return Err(ApiError::new(ErrorKind::Internal, "no result"));
    };
    let mut body = job_body(job, &input_name, first, Some(peer.to_string()));
    body.placement = placement;
    if let Some(agree) = replicas_agree {
        body.replicas = Some(replicas);
        body.replicas_agree = Some(agree);
    }
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
pub(super) struct JobsQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

/// Jobs this node placed recently, newest first.
pub(super) async fn list_jobs(
    State(st): State<Arc<NodeState>>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<api::Jobs> {
    let limit = q.limit.min(crate::jobs::place::RECENT_MAX);
    let jobs: Vec<api::JobRecord> = crate::jobs::place::recent(&st, limit)
        .iter()
        .map(placement::job_record)
        .collect();
    Ok(axum::Json(api::Jobs { jobs }))
}

/// A job: its receipt when this node ran it, and its placement when this node placed it.
pub(super) async fn get_job(
    State(st): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> ApiResult<api::JobDetail> {
    let job: ContentId = id
        .parse()
        .map_err(|_| ApiError::new(ApiCode::BadJobId, "a job id is 64 hex digits"))?;
    let seq = st
        .ledger
        .job_seq(job)
        .await
        .map_err(|e| ApiError::new(ErrorKind::LedgerError, e))?;
    let placed = crate::jobs::place::find(&st, &job);
    if seq.is_none() && placed.is_none() {
        return Err(ApiError::new(
            ApiCode::UnknownJob,
            format!("no job {id} in this node's ledger or among the jobs it placed"),
        ));
    }
    let mut body = match &placed {
        Some(r) => api::JobDetail::placed(
            placement::job_record(r),
            placement::placement(&r.placement, true),
        ),
        None => api::JobDetail::ran(job),
    };
    if let Some(seq) = seq {
        let entry = entry_at(&st, seq).await?.ok_or_else(|| {
            ApiError::new(ErrorKind::LedgerError, "job index points past the ledger")
        })?;
        body.receipt = Some(crate::views::entry(&entry));
    }
    Ok(axum::Json(body))
}
