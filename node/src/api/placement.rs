//! The JSON views of a placement and of a placed job's record (schemas `Placement` and
//! `JobRecord` in docs/openapi.yaml).

use libp2p::PeerId;
use serde_json::{Value, json};

use crate::jobs::place::{JobRecord, Placement};
use crate::sched::auction::{Explanation, Standing};
use crate::sched::{Estimate, Score};

fn estimate_json(e: &Estimate) -> Value {
    json!({"queue_us": e.queue_us, "compute_us": e.compute_us, "transfer_us": e.transfer_us,
           "completion_us": e.completion_us(), "cost_micros": e.cost_micros,
           "energy_uj": e.energy_uj, "cached": e.cached})
}

fn score_json(s: &Score) -> Value {
    json!({"time": s.time, "cost": s.cost, "energy": s.energy, "cache": s.cache,
           "reliability": s.reliability, "battery": s.battery, "total": s.total})
}

/// The explanation of a job: every candidate, its standing, estimate and score.
fn explanation_json(e: &Explanation<PeerId>) -> Value {
    let candidates: Vec<Value> = e
        .candidates
        .iter()
        .map(|(peer, local, standing)| {
            let (name, reason, bid) = match standing {
                Standing::Filtered(r) => ("filtered", Some(r.as_str()), None),
                Standing::NotAsked => ("not_asked", None, None),
                Standing::Asked => ("asked", None, None),
                Standing::Declined(r) => ("declined", Some(r.as_str()), None),
                Standing::Silent => ("silent", Some("no answer within the bid window"), None),
                Standing::Bid(e, s) => ("bid", None, Some((e, s))),
                Standing::Running(e, s) => ("running", None, Some((e, s))),
                Standing::Succeeded(e, s) => ("succeeded", None, Some((e, s))),
                Standing::FailedAttempt(e, s, r) => ("failed", Some(r.as_str()), Some((e, s))),
            };
            json!({
                "peer_id": peer.to_string(), "local": local, "standing": name, "reason": reason,
                "estimate": bid.map(|(e, _)| estimate_json(e)),
                "score": bid.map(|(_, s)| score_json(s)),
            })
        })
        .collect();
    let w = &e.weights;
    json!({
        "candidates": candidates,
        "fast_path": e.fast_path,
        "weights": {"time": w.time, "cost": w.cost, "energy": w.energy, "cache": w.cache,
                    "reliability": w.reliability, "battery": w.battery},
        "winners": e.winners.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "attempts": e.attempts,
        "outcome": match &e.outcome {
            None => Value::Null,
            Some(Ok(())) => json!("ok"),
            Some(Err(r)) => json!({"failed": r}),
        },
    })
}

/// A placement: in full (`explain`), or the short form (who ran it, in how many attempts,
/// whether locally at once, how long the decision took).
pub fn placement_json(p: &Placement, explain: bool) -> Value {
    let decided_ms = p.decided.map(|d| d.as_secs_f64() * 1e3);
    let Some(e) = &p.explanation else {
        return Value::Null;
    };
    if explain {
        let mut v = explanation_json(e);
        if let Some(d) = decided_ms {
            v["decided_ms"] = json!(d);
        }
        v
    } else {
        json!({"winners": e.winners.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
               "attempts": e.attempts, "fast_path": e.fast_path, "decided_ms": decided_ms})
    }
}

/// One line of `GET /v1/jobs`.
pub fn job_record_json(r: &JobRecord) -> Value {
    let (status, error, executors) = match &r.outcome {
        Ok(peers) => ("ok", None, peers.iter().map(|p| p.to_string()).collect()),
        Err(e) => ("failed", Some(e.as_str()), Vec::new()),
    };
    json!({
        "job_id": r.job, "model": r.model, "submitted_ms": r.submitted_ms,
        "latency_ms": r.latency.as_secs_f64() * 1e3,
        "status": status, "error": error,
        "executors": executors, "attempts": r.placement.attempts(),
        "fast_path": r.placement.fast_path(),
        "replicas_agree": r.replicas_agree,
    })
}
