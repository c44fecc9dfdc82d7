//! Remote execution over `/fabnode/exec/1`: running a peer's job here, and asking a peer to run
//! one of ours.
//!
//! The requester signs the job (model digest and input digest included) and sends it with the
//! input; the executor checks the signature, that the requester is the peer it talks to, that the
//! job is not a replay and not past its deadline, and that model and input match what was
//! signed, before it runs anything. It answers with its signed ledger entry and the outputs; the
//! requester checks both against its job before it returns a result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use fab_inference::Tensor;
use fab_inference::tensor::digest_named;
use fab_ledger::{ContentId, EntryBody, JobRequest, Signed, SignedEntry, SignedJobRequest};
use fab_mesh::exec::{EXEC_RESPONSE_BYTES_MAX, ExecRequest, ExecResponse};
use fab_mesh::net::{ExecReply, MeshError};
use libp2p::PeerId;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::{
    ApiError, AppState, Executed, check_input_size, execute, job_response, resolve_model,
};
use crate::ledger_writer::now_ms;

/// Exec requests waiting for the executor; beyond this a peer is told the node is busy.
pub const EXEC_QUEUE: usize = 64;
/// Peers' model descriptions remembered at most (then forgotten all at once).
const DESCRIBED_MAX: usize = 4096;
/// A job created further than this in the future is refused (clock skew allowance).
const CLOCK_SKEW_MS: u64 = 60_000;

/// One exec request from a peer, with where to answer.
pub type Incoming = (PeerId, ExecRequest, ExecReply);

/// Serves peers' exec requests until the mesh stops sending them.
///
/// Admission comes before anything is started: a request beyond `limits.remote_jobs_max` in
/// flight from all peers, or `limits.remote_jobs_per_peer_max` from its peer, is answered
/// `busy` at once. Peers' jobs never take the API's job slots, so local callers keep theirs
/// however many peers ask. Every request's task is owned here and reaped as it ends.
pub async fn serve(st: Arc<AppState>, mut rx: mpsc::Receiver<Incoming>) {
    let limits = &st.config.limits;
    let (global_max, per_peer_max) = (limits.remote_jobs_max, limits.remote_jobs_per_peer_max);
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Whose request each task serves, and how many each peer has in flight (both at most
    // `global_max` entries).
    let mut owner: HashMap<tokio::task::Id, PeerId> = HashMap::new();
    // Shared with the bid server (only this loop writes it).
    let count = |f: &mut dyn FnMut(&mut HashMap<PeerId, usize>)| {
        if let Ok(mut m) = st.remote_per_peer.lock() {
            f(&mut m);
        }
    };
    loop {
        let (from, request, reply) = tokio::select! {
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!(error = %e, "a peer's request task failed");
                        e.id()
                    }
                };
                if let Some(peer) = owner.remove(&id) {
                    count(&mut |per_peer| {
                        if let Some(n) = per_peer.get_mut(&peer) {
                            *n -= 1;
                            if *n == 0 {
                                per_peer.remove(&peer);
                            }
                        }
                    });
                }
                continue;
            }
            next = rx.recv() => match next {
                Some(r) => r,
                None => break,
            },
        };
        let mut theirs = 0;
        count(&mut |per_peer| theirs = per_peer.get(&from).copied().unwrap_or(0));
        let refusal = if theirs >= per_peer_max {
            Some(format!(
                "this node already handles {theirs} requests of yours \
                 (limits.remote_jobs_per_peer_max); retry later"
            ))
        } else if tasks.len() >= global_max {
            Some(format!(
                "this node already handles {global_max} requests from peers \
                 (limits.remote_jobs_max); retry later"
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            tracing::debug!(peer = %from, %message, "peer's request refused");
            if let Some(mesh) = &st.mesh {
                let refused = ExecResponse::Refused {
                    code: "busy".into(),
                    message,
                };
                let _ = mesh.respond_exec(reply, refused).await;
            }
            continue;
        }
        count(&mut |per_peer| *per_peer.entry(from).or_default() += 1);
        let st = Arc::clone(&st);
        let handle = tasks.spawn(async move {
            let response = match request {
                ExecRequest::Describe { model } => describe(&st, &model).await,
                ExecRequest::Run { job, inputs } => run(&st, from, &job, inputs)
                    .await
                    .unwrap_or_else(|e| refused(&e)),
            };
            if let Some(mesh) = &st.mesh {
                let _ = mesh.respond_exec(reply, response).await;
            }
        });
        owner.insert(handle.id(), from);
    }
    tasks.shutdown().await;
}

/// A refusal as a peer sees it. Only messages built from the peer's own request pass
/// through; anything else says why in general terms, so that no peer learns which other
/// models this node holds, where its files are, or how its ledger failed. The operator's log
/// keeps the full message.
fn refused(e: &ApiError) -> ExecResponse {
    let message = match e.code {
        "bad_job" | "requester_mismatch" | "deadline_passed" | "replayed" | "busy"
        | "invalid_input" | "bad_tensor" | "input_too_large" | "input_mismatch" => {
            e.message.clone()
        }
        "unknown_model" => "this node does not hold that model".to_owned(),
        "model_changed" => "this node holds another version of that model".to_owned(),
        code => {
            tracing::warn!(%code, message = %e.message, "refused a peer's request");
            format!("this node could not take the request ({code})")
        }
    };
    ExecResponse::Refused {
        code: e.code.to_owned(),
        message,
    }
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

async fn describe(st: &Arc<AppState>, name: &str) -> ExecResponse {
    match resolve_model(st, name).await {
        Ok(model) => {
            let info = model.info();
            ExecResponse::Described {
                model: model.name.clone(),
                digest: model.digest.0,
                inputs: info.inputs.iter().map(|f| f.name.clone()).collect(),
                outputs: info.outputs.iter().map(|f| f.name.clone()).collect(),
            }
        }
        Err(e) => refused(&e),
    }
}

/// Removes a job id from the running set when the job is done, however it ends.
struct Running<'a>(&'a AppState, ContentId);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.remote_running.lock() {
            set.remove(&self.1);
        }
    }
}

async fn run(
    st: &Arc<AppState>,
    from: PeerId,
    job_bytes: &[u8],
    inputs: Vec<(String, Vec<u8>)>,
) -> Result<ExecResponse, ApiError> {
    let accepted = Instant::now();
    let job = SignedJobRequest::decode_verified(job_bytes)
        .map_err(|e| bad("bad_job", format!("job request: {e}")))?;
    let body = job.body().clone();
    if body.requester.peer_id() != from.to_string() {
        return Err(bad(
            "requester_mismatch",
            format!(
                "the job is signed by {} but was sent by {from}",
                body.requester.peer_id()
            ),
        ));
    }
    let now = now_ms();
    if body.deadline_ms <= now {
        return Err(bad(
            "deadline_passed",
            format!(
                "the job's deadline passed {} ms ago",
                now - body.deadline_ms
            ),
        ));
    }
    if body.created_ms > now + CLOCK_SKEW_MS {
        return Err(bad(
            "bad_job",
            "the job was created in the future (check the requester's clock)",
        ));
    }
    let job_id = job.id();
    // A job runs at most once here: refuse one already recorded or running.
    let already = st
        .ledger
        .job_seq(job_id)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ledger_error", e))?;
    if let Some(seq) = already {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "replayed",
            format!("job {job_id} already ran here (ledger entry {seq})"),
        ));
    }
    let inserted = st
        .remote_running
        .lock()
        .map(|mut s| s.insert(job_id))
        .unwrap_or(false);
    if !inserted {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "replayed",
            format!("job {job_id} is already running here"),
        ));
    }
    let _running = Running(st, job_id);
    let model = resolve_model(st, &body.model).await?;
    if model.digest != body.model_digest {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "model_changed",
            format!(
                "this node holds {} version {}, the job asks for {}",
                model.name,
                model.digest.short(),
                body.model_digest.short()
            ),
        ));
    }
    let [(name, npy)] = <[_; 1]>::try_from(inputs).map_err(|v| {
        bad(
            "invalid_input",
            format!("expected one input, got {}", v.len()),
        )
    })?;
    let input = Tensor::from_npy(&npy, st.config.limits.input_bytes_max)
        .map_err(|e| bad("bad_tensor", format!("input {name}: {e}")))?;
    check_input_size(st, &input)?;
    let expected_name = model.info().inputs.first().map(|f| f.name.clone());
    if expected_name.as_deref().is_some_and(|n| n != name) {
        return Err(bad(
            "invalid_input",
            format!("the model's input is {expected_name:?}, not {name:?}"),
        ));
    }
    let digest = ContentId(digest_named(&[(name.clone(), input.clone())]));
    if digest != body.input_digest || input.byte_len() as u64 != body.input_bytes {
        return Err(bad(
            "input_mismatch",
            "the input is not the one the job request signs",
        ));
    }
    let timeout_ms = (body.deadline_ms - now).min(st.config.limits.job_timeout_ms.max(1));
    let span =
        tracing::info_span!("job", job = %job_id.short(), model = %model.name, requester = %from);
    let executed = execute(st, job, &model, input, timeout_ms, accepted)
        .instrument(span)
        .await?;
    Ok(ExecResponse::Ran {
        entry: executed.entry.encode(),
        outputs: executed
            .outcome
            .unwrap_or_default()
            .into_iter()
            .map(|(n, t)| (n, t.to_npy()))
            .collect(),
    })
}

fn unreachable_peer(e: &MeshError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "peer_unreachable",
        format!("could not run the job: {e}"),
    )
}

/// A peer's refusal, passed on with the status the same refusal gets locally.
pub(crate) fn remote_refusal(peer: PeerId, code: String, message: String) -> ApiError {
    let (status, code) = match code.as_str() {
        "unknown_model" => (StatusCode::NOT_FOUND, "unknown_model"),
        "model_changed" => (StatusCode::CONFLICT, "model_changed"),
        "busy" => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        "invalid_input" => (StatusCode::BAD_REQUEST, "invalid_input"),
        "bad_tensor" => (StatusCode::BAD_REQUEST, "bad_tensor"),
        "input_too_large" => (StatusCode::PAYLOAD_TOO_LARGE, "input_too_large"),
        "deadline_passed" => (StatusCode::GATEWAY_TIMEOUT, "deadline_passed"),
        _ => (StatusCode::BAD_GATEWAY, "peer_refused"),
    };
    ApiError::new(
        status,
        code,
        format!("peer {peer} refused the job ({code}): {message}"),
    )
}

pub(crate) fn bad_answer(peer: PeerId, detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_peer_answer",
        format!("peer {peer} answered with something that does not verify: {detail}"),
    )
}

/// Asks `peer` to run `model` on `input`; returns the HTTP answer once the peer's signed entry
/// and outputs verify against the job.
pub async fn submit_remote(
    st: &Arc<AppState>,
    peer: PeerId,
    model: &str,
    input: Tensor,
    timeout_ms: u64,
) -> Result<Response, ApiError> {
    let mesh = st.mesh.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "mesh_disabled",
            "this node has mesh.enabled = false, so it cannot run jobs on peers",
        )
    })?;
    let deadline = Duration::from_millis(timeout_ms);
    let started = Instant::now();
    let ask = |request| async {
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, mesh.exec(peer, request)).await {
            Ok(Ok(ExecResponse::Refused { code, message })) => {
                Err(remote_refusal(peer, code, message))
            }
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(unreachable_peer(&e)),
            Err(_) => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_passed",
                format!("peer {peer} did not answer within {timeout_ms} ms"),
            )),
        }
    };
    // What the peer holds under this name: cached, so a job costs one round trip; described
    // again when the peer says its model changed.
    let key = (peer, model.to_owned());
    let mut cached = st.described.lock().ok().and_then(|c| c.get(&key).cloned());
    let mut retried = false;
    let (job, input_name, entry, outputs) = loop {
        let (model_digest, input_name) = match cached.take() {
            Some(d) => d,
            None => {
                retried = true;
                let left = deadline.saturating_sub(started.elapsed());
                describe_on(st, peer, model, left).await?
            }
        };
        let input_digest = ContentId(digest_named(&[(input_name.clone(), input.clone())]));
        let created_ms = now_ms();
        let request = JobRequest {
            requester: st.key.public(),
            nonce: st.nonce.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            model: model.to_owned(),
            model_digest,
            input_digest,
            input_bytes: input.byte_len() as u64,
            created_ms,
            deadline_ms: created_ms
                + timeout_ms.saturating_sub(started.elapsed().as_millis() as u64),
        };
        let job = Signed::sign(request, &st.key);
        let span = tracing::info_span!("remote_job", job = %job.id().short(), %peer);
        match ask(ExecRequest::Run {
            job: job.encode(),
            inputs: vec![(input_name.clone(), input.to_npy())],
        })
        .instrument(span)
        .await
        {
            Ok(ExecResponse::Ran { entry, outputs }) => break (job, input_name, entry, outputs),
            Ok(_) => return Err(bad_answer(peer, "expected a result")),
            // The cached description is stale: forget it and ask once more.
            Err(e) if e.code == "model_changed" && !retried => {
                if let Ok(mut c) = st.described.lock() {
                    c.remove(&key);
                }
                retried = true;
            }
            Err(e) => return Err(e),
        }
    };
    let job_id = job.id();
    let executed = verify_answer(peer, &job, &entry, outputs)?;
    tracing::info!(job = %job_id.short(), %peer, seq = executed.entry.body().seq, "remote job verified");
    job_response(job_id, &input_name, executed, Some(peer.to_string()))
}

/// The digest and first input name of `model` on `peer`, from the cache or by asking it.
pub(crate) async fn describe_on(
    st: &Arc<AppState>,
    peer: PeerId,
    model: &str,
    within: Duration,
) -> Result<(ContentId, String), ApiError> {
    let key = (peer, model.to_owned());
    if let Some(d) = st.described.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(d);
    }
    let mesh = st.mesh.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "mesh_disabled",
            "the mesh is disabled",
        )
    })?;
    let request = ExecRequest::Describe {
        model: model.to_owned(),
    };
    let (digest, inputs) = match tokio::time::timeout(within, mesh.exec(peer, request)).await {
        Ok(Ok(ExecResponse::Described { digest, inputs, .. })) => (digest, inputs),
        Ok(Ok(ExecResponse::Refused { code, message })) => {
            return Err(remote_refusal(peer, code, message));
        }
        Ok(Ok(_)) => return Err(bad_answer(peer, "expected a model description")),
        Ok(Err(e)) => return Err(unreachable_peer(&e)),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_passed",
                format!("peer {peer} did not describe {model} in time"),
            ));
        }
    };
    let d = (
        ContentId(digest),
        inputs
            .first()
            .cloned()
            .unwrap_or_else(|| "input".to_owned()),
    );
    if let Ok(mut c) = st.described.lock() {
        if c.len() >= DESCRIBED_MAX {
            c.clear();
        }
        c.insert(key, d.clone());
    }
    Ok(d)
}

/// Checks a peer's answer against the job it was asked to run: its entry is signed by that
/// peer and records exactly this job, model and input; the outputs are the ones it records.
pub(crate) fn verify_answer(
    peer: PeerId,
    job: &SignedJobRequest,
    entry: &[u8],
    outputs: Vec<(String, Vec<u8>)>,
) -> Result<Executed, ApiError> {
    let entry = SignedEntry::decode_verified(entry).map_err(|e| bad_answer(peer, e))?;
    if entry.body().feed.peer_id() != peer.to_string() {
        return Err(bad_answer(peer, "the entry is signed by another node"));
    }
    let EntryBody::Execution(r) = &entry.body().body else {
        return Err(bad_answer(peer, "the entry is not an execution receipt"));
    };
    if r.job.id() != job.id() {
        return Err(bad_answer(peer, "the receipt records another job"));
    }
    if r.model_digest != job.body().model_digest || r.input_digest != job.body().input_digest {
        return Err(bad_answer(
            peer,
            "the receipt's model or input is not the job's",
        ));
    }
    let outcome = match r.output_digest {
        Some(want) => {
            let mut named = Vec::with_capacity(outputs.len());
            for (name, npy) in outputs {
                let t = Tensor::from_npy(&npy, EXEC_RESPONSE_BYTES_MAX)
                    .map_err(|e| bad_answer(peer, format!("output {name}: {e}")))?;
                named.push((name, t));
            }
            if ContentId(digest_named(&named)) != want {
                return Err(bad_answer(
                    peer,
                    "the outputs are not the ones the receipt records",
                ));
            }
            Ok(named)
        }
        None => Err(r.error.clone()),
    };
    Ok(Executed { entry, outcome })
}
