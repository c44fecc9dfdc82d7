//! The API's views of a placement and of a placed job's record.

use fab_client::types as api;
use libp2p::PeerId;

use crate::jobs::place::{JobRecord, Placement};
use crate::sched::auction::{Explanation, Standing};
use crate::sched::{Estimate, Score};

fn estimate(e: &Estimate) -> api::Estimate {
    api::Estimate {
        queue_us: e.queue_us,
        compute_us: e.compute_us,
        transfer_us: e.transfer_us,
        completion_us: e.completion_us(),
        cost_micros: e.cost_micros,
        energy_uj: e.energy_uj,
        cached: e.cached,
    }
}

fn score(s: &Score) -> api::Score {
    api::Score {
        time: s.time,
        cost: s.cost,
        energy: s.energy,
        cache: s.cache,
        reliability: s.reliability,
        battery: s.battery,
        total: s.total,
    }
}

fn candidate(peer: &PeerId, local: bool, standing: &Standing) -> api::Candidate {
    use api::Standing as S;
    let (standing, reason, bid) = match standing {
        Standing::Filtered(r) => (S::Filtered, Some(r.clone()), None),
        Standing::NotAsked => (S::NotAsked, None, None),
        Standing::Asked => (S::Asked, None, None),
        Standing::Declined(r) => (S::Declined, Some(r.clone()), None),
        Standing::Silent => (
            S::Silent,
            Some("no answer within the bid window".to_owned()),
            None,
        ),
        Standing::Bid(e, s) => (S::Bid, None, Some((e, s))),
        Standing::Running(e, s) => (S::Running, None, Some((e, s))),
        Standing::Succeeded(e, s) => (S::Succeeded, None, Some((e, s))),
        Standing::FailedAttempt(e, s, r) => (S::Failed, Some(r.clone()), Some((e, s))),
    };
    api::Candidate {
        peer_id: peer.to_string(),
        local,
        standing,
        reason,
        estimate: bid.map(|(e, _)| estimate(e)),
        score: bid.map(|(_, s)| score(s)),
    }
}

fn winners(e: &Explanation<PeerId>) -> Vec<String> {
    e.winners.iter().map(PeerId::to_string).collect()
}

/// A placement: in full (`explain`: every candidate, the weights, the outcome), or the short
/// form (who ran it, in how many attempts, whether locally at once, how long the decision
/// took). None when the auction no longer remembers the job.
pub fn placement(p: &Placement, explain: bool) -> Option<api::Placement> {
    let e = p.explanation.as_ref()?;
    let decided_ms = p.decided.map(|d| d.as_secs_f64() * 1e3);
    let mut view = api::Placement {
        winners: winners(e),
        attempts: e.attempts,
        fast_path: e.fast_path,
        decided_ms,
        weights: None,
        outcome: None,
        candidates: None,
    };
    if explain {
        let w = &e.weights;
        view.weights = Some(api::Weights {
            time: w.time,
            cost: w.cost,
            energy: w.energy,
            cache: w.cache,
            reliability: w.reliability,
            battery: w.battery,
        });
        view.outcome = Some(e.outcome.as_ref().map(|o| match o {
            Ok(()) => api::PlacementOutcome::Ok,
            Err(r) => api::PlacementOutcome::Failed(r.clone()),
        }));
        view.candidates = Some(
            e.candidates
                .iter()
                .map(|(peer, local, standing)| candidate(peer, *local, standing))
                .collect(),
        );
    }
    Some(view)
}

/// One line of `GET /v1/jobs`.
pub fn job_record(r: &JobRecord) -> api::JobRecord {
    let (status, error, executors) = match &r.outcome {
        Ok(peers) => ("ok", None, peers.iter().map(PeerId::to_string).collect()),
        Err(e) => ("failed", Some(e.clone()), Vec::new()),
    };
    api::JobRecord {
        job_id: r.job,
        model: r.model.clone(),
        submitted_ms: r.submitted_ms,
        latency_ms: r.latency.as_secs_f64() * 1e3,
        status: status.to_owned(),
        error,
        executors,
        attempts: r.placement.attempts(),
        fast_path: r.placement.fast_path(),
        replicas_agree: r.replicas_agree,
    }
}
