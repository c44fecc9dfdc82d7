//! The requester side of the auction.
//!
//! # Calling contract
//!
//! The driver calls [`Auction::handle`] with one [`Input`] and the current time and carries out
//! every [`Output`]: send calls for bids, run awarded jobs (locally when `local` is set), report
//! each attempt's end with [`Input::Done`] or [`Input::Failed`], and give it [`Input::Tick`]
//! when [`Auction::poll_timeout`] says (after every `handle`, ask again: the answer moves).
//! Nothing ticks while no job waits on time. Bids must already be signature-checked.
//!
//! # Rules
//!
//! - Candidates come from the telemetry view; the SLA filters them (tier, region, labels,
//!   estimated deadline, cost) before anyone is asked. No feasible node: the job fails at once,
//!   naming every candidate's reason.
//! - Fast path: when the local node is feasible and its estimate scores at least as well as
//!   every other candidate's, it is awarded at once, with no network round trip.
//! - Otherwise at most `bids_max` candidates (best estimates first) are asked; the window
//!   closes when every one has answered or `window` plus the slowest asked peer's round trip
//!   has passed. If it passes with no bid at
//!   all, the first bid to arrive closes it (loaded peers answer late), or the deadline does.
//! - Bids are scored as integers ([`super::score`]); ties go to the shorter completion, then to
//!   the lower peer id, so every run with the same inputs awards the same peers.
//! - `replicas = k` awards the k best distinct peers. An attempt that fails, or outlives its
//!   estimate by `slack`, is re-awarded to the next best unused bid, up to `attempts_max`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::estimate::{Estimate, JobShape, Link, Telemetry, estimate};
use super::score::{Score, Sla, Weights, reliability_permille, score};

/// A job's id (the content id of its signed request).
pub type JobId = [u8; 32];

/// Tunables; each bounds time, traffic or memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuctionConfig {
    pub weights: Weights,
    /// Wait for bids beyond the slowest asked peer's round trip.
    pub window: Duration,
    /// Peers asked per job at most.
    pub bids_max: usize,
    /// Awards per job at most (first attempts and re-awards together, per replica).
    pub attempts_max: u32,
    /// Jobs being placed or run at once.
    pub jobs_max: usize,
    /// An attempt may take this many times its estimate (permille) plus `grace` before it is
    /// given up and re-awarded.
    pub slack_permille: u64,
    pub grace: Duration,
    /// Explanations kept after jobs end.
    pub history_max: usize,
}

impl Default for AuctionConfig {
    fn default() -> Self {
        AuctionConfig {
            weights: Weights::default(),
            window: Duration::from_millis(50),
            bids_max: 8,
            attempts_max: 3,
            jobs_max: 1024,
            slack_permille: 3000,
            grace: Duration::from_millis(500),
            history_max: 1024,
        }
    }
}

/// A node that could run the job, from the telemetry view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<P> {
    pub peer: P,
    pub telemetry: Telemetry,
    pub link: Link,
}

/// A job to place. `local` is this node, when it can run the job itself.
#[derive(Clone, Debug)]
pub struct Submission<P> {
    pub job: JobId,
    pub shape: JobShape,
    pub sla: Sla,
    pub local: Option<Candidate<P>>,
    pub peers: Vec<Candidate<P>>,
    /// The job's own weights; `None` uses the configured ones.
    pub weights: Option<Weights>,
}

#[derive(Clone, Debug)]
pub enum Input<P> {
    /// Place a job.
    Submit(Box<Submission<P>>),
    /// A peer's bid (signature checked by the driver).
    Bid {
        job: JobId,
        from: P,
        estimate: Estimate,
    },
    /// A peer will not bid, and why.
    Decline {
        job: JobId,
        from: P,
        reason: String,
    },
    /// An awarded attempt returned a verified result.
    Done {
        job: JobId,
        from: P,
    },
    /// An awarded attempt ended without a result: refused, disconnected, crashed.
    Failed {
        job: JobId,
        from: P,
        reason: String,
    },
    /// The job cannot succeed anywhere (its input is invalid, or the model failed on it):
    /// fail it now instead of re-awarding.
    Abort {
        job: JobId,
        reason: String,
    },
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<P> {
    CallForBids {
        job: JobId,
        peers: Vec<P>,
    },
    /// Run the job on `peer` (on this node when `local`).
    Award {
        job: JobId,
        peer: P,
        attempt: u32,
        local: bool,
    },
    /// Every replica returned a result.
    Complete {
        job: JobId,
        peers: Vec<P>,
    },
    /// The job cannot be placed or ran out of attempts.
    Fail {
        job: JobId,
        reason: String,
    },
}

/// Where one candidate stands in a job's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Excluded before the call for bids (SLA), with the reason.
    Filtered(String),
    /// Feasible but not among the `bids_max` asked.
    NotAsked,
    Asked,
    Declined(String),
    /// Did not answer within the window.
    Silent,
    Bid(Estimate, Score),
    /// Awarded; the attempt is running.
    Running(Estimate, Score),
    Succeeded(Estimate, Score),
    FailedAttempt(Estimate, Score, String),
}

/// Why a job went where it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation<P> {
    pub candidates: Vec<(P, bool, Standing)>,
    /// Whether the local fast path placed it.
    pub fast_path: bool,
    /// The weights the bids were scored with.
    pub weights: Weights,
    pub winners: Vec<P>,
    pub attempts: u32,
    pub outcome: Option<Result<(), String>>,
}

#[derive(Clone, Debug)]
struct Cand<P> {
    peer: P,
    local: bool,
    telemetry: Telemetry,
    /// Round trip to it (0 for the local node).
    rtt_us: u64,
    pre: Option<(Estimate, Score)>,
    standing: Standing,
}

#[derive(Clone, Debug)]
struct Job<P> {
    sla: Sla,
    weights: Weights,
    /// The completion time that scores 500: the model's reference latency.
    time_half_us: u64,
    started: Duration,
    window_ends: Option<Duration>,
    cands: Vec<Cand<P>>,
    running: BTreeMap<P, Duration>,
    done: Vec<P>,
    attempts: u32,
    fast_path: bool,
    /// The window closed with no bid: the first answer closes it, or the deadline.
    extended: bool,
    outcome: Option<Result<(), String>>,
}

/// Every job this node is placing.
#[derive(Clone, Debug)]
pub struct Auction<P> {
    config: AuctionConfig,
    jobs: BTreeMap<JobId, Job<P>>,
    /// Ended jobs' explanations (not the jobs: their candidates' telemetry is not kept).
    finished: VecDeque<(JobId, Explanation<P>)>,
    /// (successes, attempts) per peer.
    record: BTreeMap<P, (u64, u64)>,
    /// Attempts awarded to each remote peer and not yet ended: added to the queue its
    /// telemetry reports, so a burst of jobs spreads before the telemetry catches up.
    awarded: BTreeMap<P, u32>,
}

/// Ranking: higher total, then shorter completion, then lower peer.
fn better<P: Ord>(a: (&Estimate, &Score, &P), b: (&Estimate, &Score, &P)) -> std::cmp::Ordering {
    b.1.total
        .cmp(&a.1.total)
        .then(a.0.completion_us().cmp(&b.0.completion_us()))
        .then(a.2.cmp(b.2))
}

impl<P: Clone + Ord + std::fmt::Debug + std::fmt::Display> Auction<P> {
    pub fn new(config: AuctionConfig) -> Self {
        Auction {
            config,
            jobs: BTreeMap::new(),
            finished: VecDeque::new(),
            record: BTreeMap::new(),
            awarded: BTreeMap::new(),
        }
    }

    fn reliability(&self, p: &P) -> u64 {
        let (s, a) = self.record.get(p).copied().unwrap_or((0, 0));
        reliability_permille(s, a)
    }

    /// The explanation of a job being placed or recently ended.
    pub fn explain(&self, job: &JobId) -> Option<Explanation<P>> {
        match self.jobs.get(job) {
            Some(j) => Some(explanation(j)),
            None => self
                .finished
                .iter()
                .find(|(id, _)| id == job)
                .map(|(_, x)| x.clone()),
        }
    }

    /// Whether `peer`'s attempt at `job` is one the auction waits for.
    pub fn is_running(&self, job: &JobId, peer: &P) -> bool {
        self.jobs
            .get(job)
            .is_some_and(|j| j.running.contains_key(peer))
    }

    /// Jobs being placed or run.
    pub fn in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// When the auction next needs [`Input::Tick`]: the earliest end of a bid window or of a
    /// running attempt's allowance, over every job; `None` while no job waits on time.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.jobs
            .values()
            .flat_map(|j| j.window_ends.into_iter().chain(j.running.values().copied()))
            .min()
    }

    pub fn handle(&mut self, input: Input<P>, now: Duration, out: &mut impl Extend<Output<P>>) {
        match input {
            Input::Submit(s) => self.submit(*s, now, out),
            Input::Bid {
                job,
                from,
                estimate,
            } => {
                let reliability = self.reliability(&from);
                let Some(j) = self.jobs.get_mut(&job) else {
                    return;
                };
                let w = j.weights;
                let Some(c) = j.cands.iter_mut().find(|c| c.peer == from && !c.local) else {
                    return;
                };
                if c.standing != Standing::Asked {
                    return; // unasked, or a second bid: ignored
                }
                c.standing = match j.sla.refuses(&c.telemetry, &estimate) {
                    Some(reason) => Standing::Declined(format!("bid refused: {reason}")),
                    None => Standing::Bid(
                        estimate,
                        score(
                            &estimate,
                            &c.telemetry,
                            &j.sla,
                            &w,
                            j.time_half_us,
                            reliability,
                        ),
                    ),
                };
                self.close_if_answered(job, now, out);
            }
            Input::Decline { job, from, reason } => {
                let Some(j) = self.jobs.get_mut(&job) else {
                    return;
                };
                if let Some(c) = j
                    .cands
                    .iter_mut()
                    .find(|c| c.peer == from && c.standing == Standing::Asked)
                {
                    c.standing = Standing::Declined(reason);
                }
                self.close_if_answered(job, now, out);
            }
            Input::Done { job, from } => self.attempt_ended(job, from, None, now, out),
            Input::Failed { job, from, reason } => {
                self.attempt_ended(job, from, Some(reason), now, out)
            }
            Input::Abort { job, reason } => {
                let Some(mut j) = self.jobs.remove(&job) else {
                    return;
                };
                for p in std::mem::take(&mut j.running).into_keys() {
                    unaward(&mut self.awarded, &p);
                }
                j.outcome = Some(Err(reason.clone()));
                self.retire(job, j);
                out.extend([Output::Fail { job, reason }]);
            }
            Input::Tick => {
                let ids: Vec<JobId> = self.jobs.keys().copied().collect();
                for id in ids {
                    let Some(j) = self.jobs.get(&id) else {
                        continue;
                    };
                    if j.window_ends.is_some_and(|t| now >= t) {
                        self.close(id, now, out);
                        continue;
                    }
                    let overdue: Vec<P> = j
                        .running
                        .iter()
                        .filter(|(_, until)| now >= **until)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in overdue {
                        self.attempt_ended(id, p, Some("missed its deadline".into()), now, out);
                    }
                }
            }
        }
    }

    fn submit(&mut self, s: Submission<P>, now: Duration, out: &mut impl Extend<Output<P>>) {
        let Submission {
            job,
            shape,
            sla,
            local,
            peers,
            weights,
        } = s;
        if self.jobs.contains_key(&job) {
            return;
        }
        if self.jobs.len() >= self.config.jobs_max {
            out.extend([Output::Fail {
                job,
                reason: format!(
                    "{} jobs are already being placed; retry later",
                    self.config.jobs_max
                ),
            }]);
            return;
        }
        let w = weights.unwrap_or(self.config.weights);
        let mut seen = BTreeSet::new();
        let mut cands: Vec<Cand<P>> = Vec::new();
        for (c, is_local) in local
            .into_iter()
            .map(|c| (c, true))
            .chain(peers.into_iter().map(|c| (c, false)))
        {
            if !seen.insert(c.peer.clone()) {
                continue;
            }
            let mut t = c.telemetry.clone();
            if !is_local {
                let pending = self.awarded.get(&c.peer).copied().unwrap_or(0);
                t.queue_depth = t.queue_depth.saturating_add(pending);
            }
            let e = estimate(&t, &shape, if is_local { Link::LOCAL } else { c.link });
            let (pre, standing) = match sla.refuses(&c.telemetry, &e) {
                Some(reason) => (None, Standing::Filtered(reason)),
                None => {
                    let s = score(
                        &e,
                        &c.telemetry,
                        &sla,
                        &w,
                        shape.reference_latency_us,
                        self.reliability(&c.peer),
                    );
                    (Some((e, s)), Standing::NotAsked)
                }
            };
            cands.push(Cand {
                peer: c.peer,
                local: is_local,
                rtt_us: if is_local { 0 } else { c.link.rtt_us },
                telemetry: c.telemetry,
                pre,
                standing,
            });
        }
        // Deterministic order: best estimate first.
        cands.sort_by(|a, b| match (&a.pre, &b.pre) {
            (Some((ea, sa)), Some((eb, sb))) => better((ea, sa, &a.peer), (eb, sb, &b.peer)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.peer.cmp(&b.peer),
        });
        let feasible = cands.iter().filter(|c| c.pre.is_some()).count();
        let replicas = usize::from(sla.replicas.max(1));
        let mut j = Job {
            time_half_us: shape.reference_latency_us,
            sla,
            weights: w,
            started: now,
            window_ends: None,
            cands,
            running: BTreeMap::new(),
            done: Vec::new(),
            attempts: 0,
            fast_path: false,
            extended: false,
            outcome: None,
        };
        if feasible < replicas {
            let reasons: Vec<String> = j
                .cands
                .iter()
                .filter_map(|c| match &c.standing {
                    Standing::Filtered(r) => Some(format!("{}: {r}", c.peer)),
                    _ => None,
                })
                .collect();
            let reason = if feasible == 0 {
                format!("no node can take the job: {}", or_none(&reasons))
            } else {
                format!(
                    "{replicas} replicas need {replicas} feasible nodes, {feasible} found{}",
                    if reasons.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", reasons.join("; "))
                    }
                )
            };
            j.outcome = Some(Err(reason.clone()));
            self.retire(job, j);
            out.extend([Output::Fail { job, reason }]);
            return;
        }
        // Fast path: the local node's estimate is the best one.
        if replicas == 1 && j.cands.first().is_some_and(|c| c.local && c.pre.is_some()) {
            j.fast_path = true;
            if let Some((e, s)) = j.cands[0].pre {
                j.cands[0].standing = Standing::Bid(e, s);
            }
            self.jobs.insert(job, j);
            self.award_next(job, now, out);
            return;
        }
        // Ask the best remote candidates; the local node bids with its own estimate at once.
        // The window is the configured wait beyond the slowest asked peer's round trip, so a
        // peer across a WAN can bid at all.
        let mut asked = Vec::new();
        let mut slowest_rtt_us = 0;
        for c in j.cands.iter_mut().filter(|c| c.pre.is_some()) {
            if c.local {
                if let Some((e, s)) = c.pre {
                    c.standing = Standing::Bid(e, s);
                }
            } else if asked.len() < self.config.bids_max {
                c.standing = Standing::Asked;
                asked.push(c.peer.clone());
                slowest_rtt_us = slowest_rtt_us.max(c.rtt_us);
            }
        }
        let window = self.config.window + Duration::from_micros(slowest_rtt_us);
        j.window_ends = Some(now + window);
        self.jobs.insert(job, j);
        if asked.is_empty() {
            self.close(job, now, out);
        } else {
            out.extend([Output::CallForBids { job, peers: asked }]);
        }
    }

    fn close_if_answered(&mut self, job: JobId, now: Duration, out: &mut impl Extend<Output<P>>) {
        let waiting = self.jobs.get(&job).is_some_and(|j| {
            j.window_ends.is_some()
                && j.cands.iter().any(|c| c.standing == Standing::Asked)
                && !(j.extended
                    && j.cands
                        .iter()
                        .any(|c| matches!(c.standing, Standing::Bid(..))))
        });
        if !waiting {
            self.close(job, now, out);
        }
    }

    /// Ends the bidding window and awards the best bids.
    fn close(&mut self, job: JobId, now: Duration, out: &mut impl Extend<Output<P>>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.window_ends.is_none() {
            return;
        }
        let deadline = j.started + Duration::from_micros(j.sla.deadline_us);
        let any_bid = j
            .cands
            .iter()
            .any(|c| matches!(c.standing, Standing::Bid(..)));
        let any_asked = j.cands.iter().any(|c| c.standing == Standing::Asked);
        if !any_bid && any_asked && !j.extended && now < deadline {
            // Nobody has bid yet (loaded peers answer late): the first bid wins instead of the
            // job failing, unless the deadline comes first.
            j.extended = true;
            j.window_ends = Some(deadline);
            return;
        }
        j.window_ends = None;
        for c in &mut j.cands {
            if c.standing == Standing::Asked {
                c.standing = Standing::Silent;
            }
        }
        let replicas = usize::from(j.sla.replicas.max(1));
        for _ in 0..replicas {
            self.award_next(job, now, out);
        }
    }

    /// Awards the best bid not yet used, or fails the job when none is left.
    fn award_next(&mut self, job: JobId, now: Duration, out: &mut impl Extend<Output<P>>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let attempts_max = self.config.attempts_max * u32::from(j.sla.replicas.max(1));
        let best = j
            .cands
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match &c.standing {
                Standing::Bid(e, s) => Some((i, *e, *s)),
                _ => None,
            })
            .min_by(|a, b| {
                better(
                    (&a.1, &a.2, &j.cands[a.0].peer),
                    (&b.1, &b.2, &j.cands[b.0].peer),
                )
            });
        match best {
            Some((i, e, s)) if j.attempts < attempts_max => {
                j.attempts += 1;
                let c = &mut j.cands[i];
                c.standing = Standing::Running(e, s);
                let allowed = e.completion_us().saturating_mul(self.config.slack_permille) / 1000;
                let until = (now + Duration::from_micros(allowed) + self.config.grace)
                    .min(j.started + Duration::from_micros(j.sla.deadline_us));
                j.running.insert(c.peer.clone(), until);
                if !c.local {
                    *self.awarded.entry(c.peer.clone()).or_default() += 1;
                }
                out.extend([Output::Award {
                    job,
                    peer: c.peer.clone(),
                    attempt: j.attempts,
                    local: c.local,
                }]);
            }
            _ => {
                if !j.running.is_empty() {
                    return; // others are still running; they may yet complete the job
                }
                let failures: Vec<String> = j
                    .cands
                    .iter()
                    .filter_map(|c| match &c.standing {
                        Standing::FailedAttempt(_, _, r) => Some(format!("{}: {r}", c.peer)),
                        Standing::Declined(r) => Some(format!("{} declined: {r}", c.peer)),
                        Standing::Filtered(r) => Some(format!("{}: {r}", c.peer)),
                        Standing::Silent => Some(format!("{}: no answer", c.peer)),
                        _ => None,
                    })
                    .collect();
                let replicas = j.sla.replicas.max(1);
                let reason = if j.done.is_empty() {
                    format!(
                        "no node left to run the job after {} attempt(s): {}",
                        j.attempts,
                        or_none(&failures)
                    )
                } else {
                    format!(
                        "only {} of {replicas} replicas ran: no node left after {} attempt(s): {}",
                        j.done.len(),
                        j.attempts,
                        or_none(&failures)
                    )
                };
                let mut j = self.jobs.remove(&job).expect("present");
                j.outcome = Some(Err(reason.clone()));
                self.retire(job, j);
                out.extend([Output::Fail { job, reason }]);
            }
        }
    }

    fn attempt_ended(
        &mut self,
        job: JobId,
        from: P,
        failure: Option<String>,
        now: Duration,
        out: &mut impl Extend<Output<P>>,
    ) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.running.remove(&from).is_none() {
            return; // not a running attempt (late, duplicate or unknown): ignored
        }
        unaward(&mut self.awarded, &from);
        let rec = self.record.entry(from.clone()).or_default();
        rec.1 += 1;
        let Some(c) = j.cands.iter_mut().find(|c| c.peer == from) else {
            return;
        };
        let Standing::Running(e, s) = c.standing else {
            return;
        };
        match failure {
            None => {
                rec.0 += 1;
                c.standing = Standing::Succeeded(e, s);
                j.done.push(from);
                if j.done.len() >= usize::from(j.sla.replicas.max(1)) {
                    let mut j = self.jobs.remove(&job).expect("present");
                    for p in std::mem::take(&mut j.running).into_keys() {
                        unaward(&mut self.awarded, &p);
                    }
                    j.outcome = Some(Ok(()));
                    let peers = j.done.clone();
                    self.retire(job, j);
                    out.extend([Output::Complete { job, peers }]);
                } else if j.running.is_empty() {
                    // A replica still to place that found no bid when the window closed:
                    // award the next bid, or fail the job saying how many replicas ran.
                    self.award_next(job, now, out);
                }
            }
            Some(reason) => {
                c.standing = Standing::FailedAttempt(e, s, reason);
                self.award_next(job, now, out);
            }
        }
    }

    fn retire(&mut self, job: JobId, j: Job<P>) {
        self.finished.push_back((job, explanation(&j)));
        while self.finished.len() > self.config.history_max {
            self.finished.pop_front();
        }
    }
}

fn explanation<P: Clone>(j: &Job<P>) -> Explanation<P> {
    Explanation {
        candidates: j
            .cands
            .iter()
            .map(|c| (c.peer.clone(), c.local, c.standing.clone()))
            .collect(),
        fast_path: j.fast_path,
        weights: j.weights,
        winners: j
            .cands
            .iter()
            .filter(|c| matches!(c.standing, Standing::Running(..) | Standing::Succeeded(..)))
            .map(|c| c.peer.clone())
            .collect(),
        attempts: j.attempts,
        outcome: j.outcome.clone(),
    }
}

fn unaward<P: Ord>(awarded: &mut BTreeMap<P, u32>, peer: &P) {
    if let Some(n) = awarded.get_mut(peer) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            awarded.remove(peer);
        }
    }
}

fn or_none(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "none given".into()
    } else {
        reasons.join("; ")
    }
}
