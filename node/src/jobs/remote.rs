//! Asking a named peer to run a job over `/fabnode/exec/1`, and checking its answer: the
//! peer's signed ledger entry must record exactly this job, model and input, and the outputs
//! must be the ones it records, before a result is returned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fab_inference::Tensor;
use fab_inference::tensor::digest_named;
use fab_ledger::{ContentId, EntryBody, SignedEntry, SignedJobRequest};
use fab_mesh::exec::{EXEC_RESPONSE_BYTES_MAX, ExecRequest, ExecResponse};
use fab_mesh::net::MeshError;
use libp2p::PeerId;
use tracing::Instrument;

use super::{ErrorKind, Executed, JobError, JobSpec, NodeState, check_input_size, sign_job};

/// Peers' model descriptions remembered at most (then forgotten all at once).
const DESCRIBED_MAX: usize = 4096;

/// A job a peer ran and this node verified.
#[derive(Debug)]
pub struct RemoteRun {
    pub job: ContentId,
    pub input_name: String,
    pub executor: PeerId,
    pub executed: Executed,
}

fn unreachable_peer(e: &MeshError) -> JobError {
    JobError::new(
        ErrorKind::PeerUnreachable,
        format!("could not run the job: {e}"),
    )
}

/// A peer's refusal, with the kind the same refusal has locally (other codes are
/// `PeerRefused`: a peer cannot make its refusal look like any failure of this node).
pub(crate) fn remote_refusal(peer: PeerId, code: String, message: String) -> JobError {
    let kind = ErrorKind::from_peer(&code);
    JobError::new(
        kind,
        format!("peer {peer} refused the job ({}): {message}", kind.code()),
    )
}

pub(crate) fn bad_answer(peer: PeerId, detail: impl std::fmt::Display) -> JobError {
    JobError::new(
        ErrorKind::BadPeerAnswer,
        format!("peer {peer} answered with something that does not verify: {detail}"),
    )
}

fn too_late(message: String) -> JobError {
    JobError::new(ErrorKind::DeadlinePassed, message)
}

/// Asks `peer` to run `model` on `input`; returns once the peer's signed entry and outputs
/// verify against the job. A run that failed there is an `ExecutionFailed` error with the
/// peer's receipt.
pub async fn submit_remote(
    st: &Arc<NodeState>,
    peer: PeerId,
    model: &str,
    input: Tensor,
    timeout_ms: u64,
) -> Result<RemoteRun, JobError> {
    check_input_size(st, &input)?;
    let mesh = st.mesh.as_ref().ok_or_else(|| {
        JobError::new(
            ErrorKind::MeshDisabled,
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
            Err(_) => Err(too_late(format!(
                "peer {peer} did not answer within {timeout_ms} ms"
            ))),
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
        let job = sign_job(
            st,
            JobSpec {
                model,
                model_digest,
                input_name: &input_name,
                input: &input,
                timeout_ms: timeout_ms.saturating_sub(started.elapsed().as_millis() as u64),
            },
        );
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
            Err(e) if e.kind == ErrorKind::ModelChanged && !retried => {
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
    Ok(RemoteRun {
        job: job_id,
        input_name,
        executor: peer,
        executed: executed.into_result()?,
    })
}

/// The digest and first input name of `model` on `peer`, from the cache or by asking it.
pub(crate) async fn describe_on(
    st: &Arc<NodeState>,
    peer: PeerId,
    model: &str,
    within: Duration,
) -> Result<(ContentId, String), JobError> {
    let key = (peer, model.to_owned());
    if let Some(d) = st.described.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(d);
    }
    let mesh = st
        .mesh
        .as_ref()
        .ok_or_else(|| JobError::new(ErrorKind::MeshDisabled, "the mesh is disabled"))?;
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
            return Err(too_late(format!(
                "peer {peer} did not describe {model} in time"
            )));
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
) -> Result<Executed, JobError> {
    let entry = SignedEntry::decode_verified(entry).map_err(|e| bad_answer(peer, e))?;
    if super::peer_of(&entry.body().feed) != peer {
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
