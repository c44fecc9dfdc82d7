//! Typed views of ledger objects (the API's `Entry`), shared by the API and the CLI.

use fab_client::types::{Entry, Metering, Receipt, Timings};
use fab_ledger::{EntryBody, SignedEntry};
use serde_json::Value;

/// An entry as the API shows it: every field, the signature, and the raw signed bytes (`raw`,
/// hex) so a client can re-verify it without trusting the node.
pub fn entry(e: &SignedEntry) -> Entry {
    let body = e.body();
    let receipt = match &body.body {
        EntryBody::Execution(r) => {
            let job = r.job.body();
            Some(Receipt {
                job_id: r.job.id(),
                requester: job.requester.peer_id(),
                job_signature: hex::encode(r.job.signature()),
                model: job.model.clone(),
                model_digest: r.model_digest,
                input_digest: r.input_digest,
                input_bytes: job.input_bytes,
                output_digest: r.output_digest,
                status: match r.status {
                    fab_ledger::ExecStatus::Ok => "ok",
                    fab_ledger::ExecStatus::Failed => "failed",
                }
                .to_owned(),
                error: r.error.clone(),
                created_ms: job.created_ms,
                deadline_ms: job.deadline_ms,
                timings: Timings {
                    queued_us: r.timings.queued_us,
                    run_us: r.timings.run_us,
                    total_us: r.timings.total_us,
                },
                metering: Metering {
                    cpu_time_us: r.metering.cpu_time_us,
                    wall_time_us: r.metering.wall_time_us,
                    peak_rss_kib: r.metering.peak_rss_kib,
                },
                determinism: r.determinism.class(),
            })
        }
        _ => None,
    };
    Entry {
        seq: body.seq,
        id: e.id(),
        prev: body.prev,
        feed: body.feed.peer_id(),
        kind: body.body.kind_name().to_owned(),
        time_ms: body.time_ms,
        signature: hex::encode(e.signature()),
        raw: hex::encode(e.encode()),
        receipt,
    }
}

/// [`entry`] as a JSON value.
pub fn entry_json(e: &SignedEntry) -> Value {
    serde_json::to_value(entry(e)).unwrap_or(Value::Null)
}
