//! Peers' requests over `/fabnode/exec/1`: running a peer's job here, and describing a model.
//!
//! The requester signs the job (model digest and input digest included) and sends it with the
//! input; this node checks the signature, that the requester is the peer it talks to, that the
//! job is not a replay and not past its deadline, and that model and input match what was
//! signed, before it runs anything. It answers with its signed ledger entry and the outputs
//! (the requester's side is [`super::remote`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use fab_inference::Tensor;
use fab_inference::tensor::digest_pairs;
use fab_ledger::{ContentId, SignedJobRequest};
use fab_mesh::exec::{ExecRequest, ExecResponse};
use fab_mesh::net::ExecReply;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{ErrorKind, JobError, NodeState, check_input_size, execute, resolve_model};
use crate::ledger_writer::now_ms;

/// Exec requests waiting for the executor; beyond this a peer is told the node is busy.
pub const EXEC_QUEUE: usize = 64;
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
pub async fn serve(st: Arc<NodeState>, mut rx: mpsc::Receiver<Incoming>) {
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
                    code: ErrorKind::Busy.code().into(),
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
fn refused(e: &JobError) -> ExecResponse {
    let code = e.kind.code();
    let message = match e.kind {
        k if k.message_is_public() => e.message.clone(),
        ErrorKind::UnknownModel => "this node does not hold that model".to_owned(),
        ErrorKind::ModelChanged => "this node holds another version of that model".to_owned(),
        _ => {
            tracing::warn!(%code, message = %e.message, "refused a peer's request");
            format!("this node could not take the request ({code})")
        }
    };
    ExecResponse::Refused {
        code: code.to_owned(),
        message,
    }
}

fn bad(kind: ErrorKind, message: impl Into<String>) -> JobError {
    JobError::new(kind, message)
}

async fn describe(st: &Arc<NodeState>, name: &str) -> ExecResponse {
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
struct Running<'a>(&'a NodeState, ContentId);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.remote_running.lock() {
            set.remove(&self.1);
        }
    }
}

async fn run(
    st: &Arc<NodeState>,
    from: PeerId,
    job_bytes: &[u8],
    inputs: Vec<(String, Vec<u8>)>,
) -> Result<ExecResponse, JobError> {
    let accepted = Instant::now();
    let job = SignedJobRequest::decode_verified(job_bytes)
        .map_err(|e| bad(ErrorKind::BadJob, format!("job request: {e}")))?;
    let body = job.body().clone();
    if super::peer_of(&body.requester) != from {
        return Err(bad(
            ErrorKind::RequesterMismatch,
            format!(
                "the job is signed by {} but was sent by {from}",
                body.requester.peer_id()
            ),
        ));
    }
    let now = now_ms();
    if body.deadline_ms <= now {
        return Err(bad(
            ErrorKind::DeadlinePassed,
            format!(
                "the job's deadline passed {} ms ago",
                now - body.deadline_ms
            ),
        ));
    }
    if body.created_ms > now + CLOCK_SKEW_MS {
        return Err(bad(
            ErrorKind::BadJob,
            "the job was created in the future (check the requester's clock)",
        ));
    }
    let job_id = job.id();
    // A job runs at most once here: refuse one already recorded or running.
    let already = st
        .ledger
        .job_seq(job_id)
        .await
        .map_err(|e| JobError::new(ErrorKind::LedgerError, e))?;
    if let Some(seq) = already {
        return Err(JobError::new(
            ErrorKind::Replayed,
            format!("job {job_id} already ran here (ledger entry {seq})"),
        ));
    }
    let inserted = st
        .remote_running
        .lock()
        .map(|mut s| s.insert(job_id))
        .unwrap_or(false);
    if !inserted {
        return Err(JobError::new(
            ErrorKind::Replayed,
            format!("job {job_id} is already running here"),
        ));
    }
    let _running = Running(st, job_id);
    let model = resolve_model(st, &body.model).await?;
    if model.digest != body.model_digest {
        return Err(JobError::new(
            ErrorKind::ModelChanged,
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
            ErrorKind::InvalidInput,
            format!("expected one input, got {}", v.len()),
        )
    })?;
    let input = Tensor::from_npy(&npy, st.config.limits.input_bytes_max)
        .map_err(|e| bad(ErrorKind::BadTensor, format!("input {name}: {e}")))?;
    check_input_size(st, &input)?;
    let expected_name = model.info().inputs.first().map(|f| f.name.clone());
    if expected_name.as_deref().is_some_and(|n| n != name) {
        return Err(bad(
            ErrorKind::InvalidInput,
            format!("the model's input is {expected_name:?}, not {name:?}"),
        ));
    }
    let digest = ContentId(digest_pairs([(name.as_str(), &input)].into_iter()));
    if digest != body.input_digest || input.byte_len() as u64 != body.input_bytes {
        return Err(bad(
            ErrorKind::InputMismatch,
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
