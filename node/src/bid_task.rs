//! Answers peers' calls for bids (`/fabnode/bid/1`) with a signed bid or decline.

use std::sync::Arc;

use fab_ledger::{PublicKey, Signed};
use fab_mesh::bid::{BidBody, BidRequest, Offer};
use fab_mesh::net::BidReply;
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::jobs::NodeState;
use crate::sched::bidder::{AllowAll, Answer, BidderLimits, Call, answer};
use crate::sched::{Estimate, JobShape, Link, Sla, Tier};

/// Calls for bids waiting for an answer; beyond this a peer gets no answer (its window closes).
pub const BID_QUEUE: usize = 256;

pub type Incoming = (PeerId, BidRequest, BidReply);

pub async fn serve(st: Arc<NodeState>, mut rx: mpsc::Receiver<Incoming>) {
    while let Some((from, request, reply)) = rx.recv().await {
        // Round trips as measured within the last second: a bid costs no mesh round trip.
        let rtt_us = crate::jobs::place::rtts(&st)
            .await
            .get(&from)
            .copied()
            .unwrap_or(0);
        let body = BidBody {
            job: request.job,
            bidder: st.key.public(),
            answer: offer(&st, from, &request, rtt_us),
        };
        let signed = Signed::sign(body, &st.key);
        if let Some(m) = &st.mesh {
            let _ = m.respond_bid(reply, signed).await;
        }
    }
}

/// This node's offer for a call, or why it declines.
fn offer(st: &NodeState, from: PeerId, r: &BidRequest, rtt_us: u64) -> Result<Offer, String> {
    let requester = PublicKey::from_bytes(&r.requester)
        .ok_or_else(|| "the requester key is not valid".to_owned())?;
    if crate::jobs::peer_of(&requester) != from {
        return Err("the call names another requester than the peer that sent it".into());
    }
    // A peer at its cap of requests here would be refused the job: decline now, so the auction
    // places it elsewhere instead of paying for a refusal and a re-award.
    let limits = &st.config.limits;
    let (theirs, all) = st
        .remote_per_peer
        .lock()
        .map(|m| {
            (
                m.get(&from).copied().unwrap_or(0),
                m.values().sum::<usize>(),
            )
        })
        .unwrap_or((0, 0));
    if theirs >= limits.remote_jobs_per_peer_max {
        return Err(format!(
            "already handles {theirs} requests of yours (limits.remote_jobs_per_peer_max)"
        ));
    }
    if all >= limits.remote_jobs_max {
        return Err(format!(
            "already handles {all} requests from peers (limits.remote_jobs_max)"
        ));
    }
    // Live state, not the last (possibly noised) report: a bid is an answer to one requester,
    // and a stale queue would win jobs the node cannot start soon.
    let own = crate::telemetry_task::now(st);
    let holds_model = st
        .models
        .loaded()
        .iter()
        .any(|m| m.digest.0 == r.model_digest);
    let shape = JobShape {
        model_digest: r.model_digest,
        input_bytes: r.input_bytes,
        reference_latency_us: r.reference_latency_us,
    };
    let sla = Sla {
        deadline_us: r.deadline_us,
        max_cost_micros: r.max_cost_micros,
        tiers: r.tiers.iter().filter_map(|c| Tier::from_code(*c)).collect(),
        regions: r.regions.iter().cloned().collect(),
        labels: r.labels.iter().cloned().collect(),
        replicas: u8::try_from(r.replicas).unwrap_or(u8::MAX),
    };
    let sc = &st.config.scheduler;
    let limits = BidderLimits {
        queue_max: sc.queue_max.min(u64::from(u32::MAX)) as u32,
        battery_min_permille: sc.battery_min_permille as u32,
    };
    let call = Call {
        job: &shape,
        sla: &sla,
        link: Link::assumed(rtt_us),
        requester: &r.requester,
    };
    match answer(&own, holds_model, call, &AllowAll, limits) {
        // An estimate a requester would refuse as implausible (a queue days long, a price
        // that overflows) is a decline, not a bid that fails to decode there.
        Answer::Bid(e) => {
            let o = offer_of(e);
            o.check()
                .map_err(|e| format!("estimate out of range: {e}"))?;
            Ok(o)
        }
        Answer::Decline(reason) => Err(reason),
    }
}

/// The wire form of an estimate and back (fab-mesh cannot depend on the scheduler core, nor
/// the core on the mesh).
pub(crate) fn offer_of(e: Estimate) -> Offer {
    let Estimate {
        queue_us,
        compute_us,
        transfer_us,
        cost_micros,
        energy_uj,
        cached,
    } = e;
    Offer {
        queue_us,
        compute_us,
        transfer_us,
        cost_micros,
        energy_uj,
        cached,
    }
}

pub(crate) fn estimate_of(o: Offer) -> Estimate {
    let Offer {
        queue_us,
        compute_us,
        transfer_us,
        cost_micros,
        energy_uj,
        cached,
    } = o;
    Estimate {
        queue_us,
        compute_us,
        transfer_us,
        cost_micros,
        energy_uj,
        cached,
    }
}
