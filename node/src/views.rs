//! JSON views of ledger objects, shared by the API and the CLI.

use fab_ledger::{EntryBody, SignedEntry};
use serde_json::{Value, json};

/// An entry as JSON: every field, the signature, and the raw signed bytes (`raw`, hex) so a
/// client can re-verify it without trusting the node.
pub fn entry_json(e: &SignedEntry) -> Value {
    let body = e.body();
    let mut v = json!({
        "seq": body.seq,
        "id": e.id(),
        "prev": body.prev,
        "feed": body.feed.peer_id(),
        "kind": body.body.kind_name(),
        "time_ms": body.time_ms,
        "signature": hex::encode(e.signature()),
        "raw": hex::encode(e.encode()),
    });
    if let EntryBody::Execution(r) = &body.body {
        let job = r.job.body();
        v["receipt"] = json!({
            "job_id": r.job.id(),
            "requester": job.requester.peer_id(),
            "job_signature": hex::encode(r.job.signature()),
            "model": job.model,
            "model_digest": r.model_digest,
            "input_digest": r.input_digest,
            "input_bytes": job.input_bytes,
            "output_digest": r.output_digest,
            "status": r.status,
            "error": r.error,
            "created_ms": job.created_ms,
            "deadline_ms": job.deadline_ms,
            "timings": r.timings,
            "metering": r.metering,
            "determinism": r.determinism.class(),
        });
    }
    v
}
