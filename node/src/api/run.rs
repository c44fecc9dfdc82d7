//! The job pipeline the routes and the mesh share: resolving a model, taking a job slot, running
//! a signed job on the inference pool and recording its receipt, and the answer for a recorded
//! job. (It moves to a jobs service without HTTP types: docs/ARCHITECTURE.md.)

use super::*;

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

pub(super) fn truncate(mut s: String) -> String {
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
