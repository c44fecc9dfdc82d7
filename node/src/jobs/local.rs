//! Running a job on this node: resolving a model, taking a job slot, running a signed job on
//! the inference pool and recording its receipt. Only a recorded job returns `Ok`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fab_inference::tensor::digest_named;
use fab_inference::{PoolError, RunError, Tensor};
use fab_ledger::{
    ContentId, Determinism, EntryBody, ExecStatus, ExecutionReceipt, JobRequest, Metering, Signed,
    SignedEntry, Timings,
};
use tracing::Instrument;

use super::{ErrorKind, JobError, JobSpec, NodeState, sign_job};
use crate::models::{LoadedModel, ModelError};

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

    /// The output digest the receipt records.
    pub fn output_digest(&self) -> Option<ContentId> {
        match &self.entry.body().body {
            EntryBody::Execution(r) => r.output_digest,
            _ => None,
        }
    }

    /// A recorded run that failed, as an error carrying its receipt; `Ok` when it succeeded.
    pub fn into_result(self) -> Result<Self, JobError> {
        if self.outcome.is_ok() {
            return Ok(self);
        }
        let mut e = JobError::new(
            ErrorKind::ExecutionFailed,
            self.outcome.err().unwrap_or_default(),
        );
        e.receipt = Some(Box::new(self.entry));
        Err(e)
    }
}

/// A job run here for a local caller.
#[derive(Debug)]
pub struct LocalRun {
    pub job: ContentId,
    pub input_name: String,
    pub executed: Executed,
}

/// The model's first input name (the name the input digest covers).
pub fn input_name(model: &LoadedModel) -> String {
    model
        .info()
        .inputs
        .first()
        .map_or_else(|| "input".to_owned(), |f| f.name.clone())
}

/// Finds a registered model, loading it on first use (or after its registration changed).
pub async fn resolve_model(st: &Arc<NodeState>, name: &str) -> Result<LoadedModel, JobError> {
    // A loaded model whose registration has not changed needs no blocking thread.
    if let Some(m) = st.models.ready(name) {
        return Ok(m);
    }
    let st2 = Arc::clone(st);
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || st2.models.get(&name))
        .await
        .map_err(|e| JobError::new(ErrorKind::Internal, e.to_string()))?
        .map_err(|e| {
            let kind = match e {
                ModelError::Unknown { .. } | ModelError::BadName(_) => ErrorKind::UnknownModel,
                ModelError::Changed { .. } => ErrorKind::ModelChanged,
                _ => ErrorKind::ModelLoadFailed,
            };
            JobError::new(kind, e.to_string())
        })
}

/// Takes one of the node's job slots, or says it is busy.
pub fn job_slot(st: &Arc<NodeState>) -> Result<tokio::sync::OwnedSemaphorePermit, JobError> {
    Arc::clone(&st.job_slots).try_acquire_owned().map_err(|_| {
        JobError::new(
            ErrorKind::Busy,
            format!(
                "{} jobs are already in flight (limits.jobs_in_flight_max); retry later",
                st.config.limits.jobs_in_flight_max
            ),
        )
    })
}

/// Refuses an input over `limits.input_bytes_max`.
pub fn check_input_size(st: &NodeState, input: &Tensor) -> Result<(), JobError> {
    let input_max = st.config.limits.input_bytes_max;
    if input.byte_len() > input_max {
        return Err(JobError::new(
            ErrorKind::InputTooLarge,
            format!(
                "input is {} bytes, over limits.input_bytes_max = {input_max}",
                input.byte_len()
            ),
        ));
    }
    Ok(())
}

/// Runs a local caller's job on this node: a job slot, the model, a signed job request, the
/// run and its receipt. A run that failed is an `ExecutionFailed` error with its receipt.
pub async fn run_local(
    st: &Arc<NodeState>,
    model: &str,
    input: Tensor,
    timeout_ms: u64,
    accepted: Instant,
) -> Result<LocalRun, JobError> {
    check_input_size(st, &input)?;
    let permit = job_slot(st)?;
    let model = resolve_model(st, model).await?;
    let input_name = input_name(&model);
    let job = sign_job(
        st,
        JobSpec {
            model: &model.name,
            model_digest: model.digest,
            input_name: &input_name,
            input: &input,
            timeout_ms,
        },
    );
    let job_id = job.id();
    let span = tracing::info_span!("job", job = %job_id.short(), model = %model.name);
    let executed = execute(st, job, &model, input, timeout_ms, accepted)
        .instrument(span)
        .await?;
    drop(permit);
    Ok(LocalRun {
        job: job_id,
        input_name,
        executed: executed.into_result()?,
    })
}

/// Runs a signed job on a loaded model and records its receipt in the ledger; the caller has
/// checked that the job names this model and input. Only a recorded job returns `Ok` (a run
/// that failed is recorded too, and returned as such in [`Executed::outcome`]).
pub async fn execute(
    st: &Arc<NodeState>,
    job: Signed<JobRequest>,
    model: &LoadedModel,
    input: Tensor,
    timeout_ms: u64,
    accepted: Instant,
) -> Result<Executed, JobError> {
    let info = model.info().clone();
    let input_digest = job.body().input_digest;
    let rx = st
        .pool
        .submit(Arc::clone(&model.engine), vec![input])
        .map_err(|e| match e {
            PoolError::Invalid(RunError::InvalidInput(m)) => {
                JobError::new(ErrorKind::InvalidInput, m)
            }
            PoolError::Busy { .. } => JobError::new(ErrorKind::Busy, e.to_string()),
            other => JobError::new(ErrorKind::Unavailable, other.to_string()),
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
            return Err(JobError::new(
                ErrorKind::Unavailable,
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
            JobError::new(
                ErrorKind::LedgerUnavailable,
                format!("the job ran but could not be recorded, so no result is returned: {e}"),
            )
        })?;
    tracing::info!(seq = entry.body().seq, status = ?status, "job recorded");
    Ok(Executed {
        entry,
        outcome: named.ok_or(error),
    })
}

/// Cuts an error text to what a receipt may carry, on a character boundary.
pub(crate) fn truncate(mut s: String) -> String {
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
