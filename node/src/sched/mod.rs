//! The scheduler, sans-IO: which node runs a job, and why.
//!
//! - [`estimate`]: a node's telemetry, the job and the link give an estimated completion time,
//!   cost and energy ([`Estimate`]); the bidder side and the requester's pre-selection use the
//!   same function.
//! - [`score`]: integer scoring of an estimate against the job's SLA and the requester's
//!   [`Weights`], with a breakdown for `--explain`; deterministic tie-breaking.
//! - [`bidder`]: the bidder side: policy hook, estimate, bid or decline with a reason.
//! - [`telemetry`]: the signed telemetry report and the view of peers' reports.
//! - [`auction`]: the requester side: candidates filtered by the SLA, call for bids, an adaptive
//!   window, award, re-award on failure, replicas, and the local fast path.
//!
//! Nothing here reads the clock, draws random numbers, touches the network or iterates a
//! `HashMap`; every number that decides a placement is an integer, so every node and every CPU
//! architecture agrees on a winner.

pub mod auction;
pub mod bidder;
pub mod estimate;
pub mod score;
pub mod telemetry;

pub use auction::{Auction, AuctionConfig, Explanation, Input, Output, Submission};
pub use estimate::{Estimate, Host, JobShape, Link, Telemetry, Tier};
pub use score::{Score, Sla, Weights};
