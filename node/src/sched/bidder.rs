//! The bidder side: whether this node offers to run a job, and at what estimate.

use super::estimate::{Estimate, JobShape, Link, Telemetry, estimate};
use super::score::Sla;

/// The policy kernel's hook. Until the policy kernel exists, [`AllowAll`] admits everything;
/// a refusal carries its reason into the requester's explanation.
pub trait Policy {
    fn admit(&self, job: &JobShape, requester: &[u8; 32]) -> Result<(), String>;
}

/// Admits every job.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn admit(&self, _: &JobShape, _: &[u8; 32]) -> Result<(), String> {
        Ok(())
    }
}

/// A bidder's answer to a call for bids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Bid(Estimate),
    Decline(String),
}

/// What limits this node's bids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BidderLimits {
    /// At this queue depth the node stops bidding until it drains.
    pub queue_max: u32,
    /// Below this battery level (permille) a node on battery stops bidding.
    pub battery_min_permille: u32,
}

impl Default for BidderLimits {
    fn default() -> Self {
        BidderLimits {
            queue_max: 64,
            battery_min_permille: 200,
        }
    }
}

/// A call for bids as the bidder sees it.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub job: &'a JobShape,
    pub sla: &'a Sla,
    /// The link back to the requester.
    pub link: Link,
    /// The requester's public key.
    pub requester: &'a [u8; 32],
}

/// Answers a call for bids from this node's own state.
pub fn answer(
    own: &Telemetry,
    holds_model: bool,
    call: Call<'_>,
    policy: &impl Policy,
    limits: BidderLimits,
) -> Answer {
    let Call {
        job,
        sla,
        link,
        requester,
    } = call;
    if !holds_model {
        return Answer::Decline("does not hold the model".into());
    }
    if let Err(reason) = policy.admit(job, requester) {
        return Answer::Decline(format!("policy: {reason}"));
    }
    if own.queue_depth >= limits.queue_max {
        return Answer::Decline(format!(
            "queue full ({} of {})",
            own.queue_depth, limits.queue_max
        ));
    }
    if let Some(b) = own.battery_permille
        && b < limits.battery_min_permille
    {
        return Answer::Decline(format!("battery low ({b}‰)"));
    }
    let e = estimate(own, job, link);
    match sla.refuses(own, &e) {
        Some(reason) => Answer::Decline(reason),
        None => Answer::Bid(e),
    }
}
