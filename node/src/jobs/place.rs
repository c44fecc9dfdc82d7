//! Places the jobs submitted to this node: the auction core ([`crate::sched::auction`]) driven
//! over the mesh.
//!
//! A submission is prepared by [`place`] (model resolved, job signed, candidates read from the
//! telemetry view) and handed to one task that owns the auction. That task carries out the
//! core's outputs: calls for bids over `/fabnode/bid/1`, attempts over `/fabnode/exec/1` or on
//! this node, and the answer to the client, which gets exactly one result however many attempts
//! ran. Every attempt that really ran is recorded by the node that ran it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fab_inference::Tensor;
use fab_ledger::{ContentId, SignedJobRequest};
use fab_mesh::bid::BidRequest;
use fab_mesh::exec::{ExecRequest, ExecResponse};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::local::input_name;
use super::{
    ErrorKind, Executed, JobError, JobSpec, NodeState, check_input_size, execute, job_slot,
    resolve_model, sign_job,
};
use crate::ledger_writer::now_ms;
use crate::sched::auction::{Candidate, Explanation, JobId};
use crate::sched::{Auction, Estimate, Input, JobShape, Link, Output, Sla, Submission, Weights};

/// Submissions waiting for the placing task.
pub const PLACE_QUEUE: usize = 1024;
/// Jobs remembered for `GET /v1/jobs` and `fabnode jobs`.
pub const RECENT_MAX: usize = 1024;
/// Peers' round-trip times are read again after this long.
const RTT_REFRESH: Duration = Duration::from_secs(1);
/// Assumed round trip to a peer whose RTT is not measured yet.
const RTT_UNKNOWN_US: u64 = 2_000;
/// Scale of a job that no node has measured yet.
const REFERENCE_LATENCY_DEFAULT_US: u64 = 10_000;
/// Peers asked to describe a model this node does not hold, at most.
const DESCRIBE_TRIES: usize = 3;

/// A job ready to place.
#[derive(Debug)]
pub struct PlaceJob {
    submission: Submission<PeerId>,
    ctx: Ctx,
    reply: oneshot::Sender<Result<Placed, JobError>>,
}

/// What the placing task keeps about a job until it ends.
#[derive(Debug)]
struct Ctx {
    job: SignedJobRequest,
    bid_request: BidRequest,
    input: Tensor,
    input_name: String,
    /// This node's copy of the model, when it holds it.
    model: Option<crate::models::LoadedModel>,
    accepted: Instant,
    submitted_ms: u64,
    /// When the placing task took the job, and how long until its first award.
    received: Instant,
    decided: Option<Duration>,
    /// Results in the order they arrived.
    results: Vec<(PeerId, Executed)>,
    /// A failure that no other node would avoid (bad input, the model failed on it).
    terminal: Option<JobError>,
}

/// A placed job's results and why it went where it went.
#[derive(Debug)]
pub struct Placed {
    /// (executor, result) for each replica, in the order they completed.
    pub results: Vec<(PeerId, Executed)>,
    pub placement: Placement,
    pub job: ContentId,
    pub input_name: String,
    /// With more than one replica: whether their output digests agree.
    pub replicas_agree: Option<bool>,
}

/// Why a job went where it went: the auction's explanation, and how long the first award took.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// Every candidate, its standing, estimate and score (none when the auction no longer
    /// remembers the job).
    pub explanation: Option<Explanation<PeerId>>,
    /// From the placing task taking the job to its first award: the auction's own time (calls
    /// for bids included), not the run.
    pub decided: Option<Duration>,
}

impl Placement {
    /// Attempts awarded (re-awards after a failure included).
    pub fn attempts(&self) -> u32 {
        self.explanation.as_ref().map_or(0, |e| e.attempts)
    }

    /// Whether this node scored best and ran the job with no call for bids.
    pub fn fast_path(&self) -> bool {
        self.explanation.as_ref().is_some_and(|e| e.fast_path)
    }

    /// The nodes whose runs answered the job.
    pub fn winners(&self) -> &[PeerId] {
        self.explanation.as_ref().map_or(&[], |e| &e.winners)
    }
}

/// One line of `fabnode jobs`.
#[derive(Clone, Debug)]
pub struct JobRecord {
    pub job: ContentId,
    pub model: String,
    pub submitted_ms: u64,
    pub latency: Duration,
    /// Why it failed, or `Ok` with the peers that ran it.
    pub outcome: Result<Vec<PeerId>, String>,
    pub replicas_agree: Option<bool>,
    pub placement: Placement,
}

/// Round-trip times to peers, refreshed at most every [`RTT_REFRESH`].
#[derive(Debug, Default)]
pub struct Rtts {
    at: Option<Instant>,
    us: HashMap<PeerId, u64>,
}

/// What the API needs to place a job.
#[derive(Debug)]
pub struct Request {
    pub model: String,
    pub input: Tensor,
    pub timeout_ms: u64,
    pub sla: Sla,
    pub weights: Option<Weights>,
    pub accepted: Instant,
}

fn unavailable(message: impl Into<String>) -> JobError {
    JobError::new(ErrorKind::Unavailable, message)
}

/// Prepares a job and waits until the placing task answers.
pub async fn place(st: &Arc<NodeState>, r: Request) -> Result<Placed, JobError> {
    check_input_size(st, &r.input)?;
    let placer = st
        .placer
        .as_ref()
        .ok_or_else(|| unavailable("this node does not place jobs (mesh.enabled = false)"))?;
    // The model: this node's copy, else what a peer holding it describes.
    let (model, digest, input_name) = match resolve_model(st, &r.model).await {
        Ok(m) => {
            let name = input_name(&m);
            let digest = m.digest;
            (Some(m), digest, name)
        }
        Err(e) if e.kind == ErrorKind::UnknownModel => {
            let (d, n) = describe_anywhere(st, &r.model).await.map_err(|why| {
                JobError::new(ErrorKind::UnknownModel, format!("{}; {why}", e.message))
            })?;
            (None, d, n)
        }
        Err(e) => return Err(e),
    };
    let job = sign_job(
        st,
        JobSpec {
            model: &r.model,
            model_digest: digest,
            input_name: &input_name,
            input: &r.input,
            timeout_ms: r.timeout_ms,
        },
    );
    let created_ms = job.body().created_ms;
    let job_id = job.id();
    let shape = JobShape {
        model_digest: digest.0,
        input_bytes: r.input.byte_len() as u64,
        reference_latency_us: reference_latency(st, &digest.0),
    };
    let own = st.mesh.as_ref().map(|m| m.peer_id());
    let local = match (&model, own) {
        (Some(_), Some(own)) => Some(Candidate {
            peer: own,
            telemetry: crate::telemetry_task::now(st),
            link: Link::LOCAL,
        }),
        _ => None,
    };
    let peers = candidates(st, own).await;
    let sla = r.sla;
    let bid_request = BidRequest {
        job: job_id.0,
        requester: st.key.public().to_bytes(),
        model_digest: digest.0,
        input_bytes: shape.input_bytes,
        reference_latency_us: shape.reference_latency_us,
        deadline_us: sla.deadline_us,
        max_cost_micros: sla.max_cost_micros,
        tiers: sla.tiers.iter().map(|t| t.code()).collect(),
        regions: sla.regions.iter().cloned().collect(),
        labels: sla.labels.iter().cloned().collect(),
        replicas: u64::from(sla.replicas),
    };
    let (reply, answer) = oneshot::channel();
    let job_msg = PlaceJob {
        submission: Submission {
            job: job_id.0,
            shape,
            sla,
            local,
            peers,
            weights: r.weights,
        },
        ctx: Ctx {
            job,
            bid_request,
            input: r.input,
            input_name,
            model,
            accepted: r.accepted,
            submitted_ms: created_ms,
            results: Vec::new(),
            terminal: None,
            received: Instant::now(),
            decided: None,
        },
        reply,
    };
    placer.try_send(job_msg).map_err(|_| {
        JobError::new(
            ErrorKind::Busy,
            format!("{PLACE_QUEUE} jobs are waiting to be placed; retry later"),
        )
    })?;
    answer
        .await
        .map_err(|_| unavailable("the node is stopping"))?
}

/// The completion time that scores 500: this node's measurement of the model, else the best
/// a peer reports, else a default.
fn reference_latency(st: &NodeState, digest: &[u8; 32]) -> u64 {
    if let Some(us) = st
        .model_latency
        .lock()
        .ok()
        .and_then(|m| m.get(digest).copied())
    {
        return us.max(1);
    }
    st.telemetry
        .lock()
        .ok()
        .and_then(|v| {
            v.fresh(now_ms())
                .iter()
                .filter_map(|r| r.telemetry.model_latency_us.get(digest).copied())
                .min()
        })
        .unwrap_or(REFERENCE_LATENCY_DEFAULT_US)
        .max(1)
}

/// Every peer with fresh telemetry, with the link to it.
async fn candidates(st: &Arc<NodeState>, own: Option<PeerId>) -> Vec<Candidate<PeerId>> {
    let reports: Vec<(PeerId, crate::sched::Telemetry)> = st
        .telemetry
        .lock()
        .map(|v| {
            v.fresh(now_ms())
                .into_iter()
                .filter_map(|r| {
                    let peer = super::peer_of(&r.node);
                    (Some(peer) != own).then(|| (peer, r.telemetry.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    if reports.is_empty() {
        return Vec::new();
    }
    let rtts = rtts(st).await;
    reports
        .into_iter()
        .map(|(peer, telemetry)| Candidate {
            peer,
            telemetry,
            link: Link::assumed(rtts.get(&peer).copied().unwrap_or(RTT_UNKNOWN_US)),
        })
        .collect()
}

/// Round-trip times to connected peers, at most [`RTT_REFRESH`] old.
pub async fn rtts(st: &Arc<NodeState>) -> HashMap<PeerId, u64> {
    let fresh = st
        .rtts
        .lock()
        .ok()
        .filter(|r| r.at.is_some_and(|t| t.elapsed() < RTT_REFRESH))
        .map(|r| r.us.clone());
    if let Some(us) = fresh {
        return us;
    }
    let Some(mesh) = &st.mesh else {
        return HashMap::new();
    };
    let us: HashMap<PeerId, u64> = mesh
        .peers()
        .await
        .map(|p| {
            p.into_iter()
                .filter_map(|(id, info)| Some((id, info.rtt?.as_micros() as u64)))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(mut r) = st.rtts.lock() {
        r.at = Some(Instant::now());
        r.us = us.clone();
    }
    us
}

/// The digest and input name of a model this node does not hold, from peers that may.
async fn describe_anywhere(
    st: &Arc<NodeState>,
    model: &str,
) -> Result<(ContentId, String), String> {
    if st.mesh.is_none() {
        return Err("the mesh is disabled, so no peer was asked".into());
    }
    let mut peers: Vec<PeerId> = st
        .telemetry
        .lock()
        .map(|v| {
            v.fresh(now_ms())
                .into_iter()
                .map(|r| super::peer_of(&r.node))
                .collect()
        })
        .unwrap_or_default();
    peers.sort();
    let mut reasons = Vec::new();
    for peer in peers.into_iter().take(DESCRIBE_TRIES) {
        match super::remote::describe_on(st, peer, model, Duration::from_secs(2)).await {
            Ok(d) => return Ok(d),
            Err(e) => reasons.push(format!("{peer}: {}", e.message)),
        }
    }
    if reasons.is_empty() {
        Err("no peer is known to ask".into())
    } else {
        Err(format!("peers asked: {}", reasons.join("; ")))
    }
}

enum Event {
    Bid {
        job: JobId,
        from: PeerId,
        answer: Result<Estimate, String>,
    },
    Ended {
        job: JobId,
        from: PeerId,
        result: Box<Result<Executed, JobError>>,
    },
}

/// Jobs being placed, with where to answer.
type Waiting = HashMap<JobId, (Ctx, oneshot::Sender<Result<Placed, JobError>>)>;

/// Answers from bidders and executors waiting for the placing task (the tasks that send them
/// wait when it is full).
const EVENT_QUEUE: usize = 1024;

/// Owns the auction until the node stops.
pub async fn run(st: Arc<NodeState>, mut rx: mpsc::Receiver<PlaceJob>) {
    let mut auction: Auction<PeerId> = Auction::new(st.config.scheduler.auction());
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let mut jobs: Waiting = HashMap::new();
    // Calls for bids and attempts in flight, owned here (each ends by sending its event).
    let mut tasks: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let epoch = tokio::time::Instant::now();
    loop {
        // The auction says when it next needs the clock (a bid window or an attempt's
        // allowance ends); nothing wakes this task otherwise.
        let wake = auction.poll_timeout().map(|t| epoch + t);
        let input = tokio::select! {
            p = rx.recv() => {
                let Some(mut p) = p else { break };
                let id = p.submission.job;
                p.ctx.received = Instant::now();
                jobs.insert(id, (p.ctx, p.reply));
                Input::Submit(Box::new(p.submission))
            }
            Some(ev) = ev_rx.recv() => match ev {
                Event::Bid { job, from, answer: Ok(estimate) } => Input::Bid { job, from, estimate },
                Event::Bid { job, from, answer: Err(reason) } => Input::Decline { job, from, reason },
                Event::Ended { job, from, result } => {
                    let result = *result;
                    let running = auction.is_running(&job, &from);
                    let Some((ctx, _)) = jobs.get_mut(&job) else { continue };
                    match result {
                        Ok(executed) if executed.outcome.is_ok() => {
                            ctx.results.push((from, executed));
                            Input::Done { job, from }
                        }
                        Ok(executed) => {
                            let e = executed.into_result().err().unwrap_or_else(|| {
                                JobError::new(ErrorKind::Internal, "a run both failed and not")
                            });
                            let reason = format!("{from}: {}", e.message);
                            if running {
                                ctx.terminal = Some(e);
                                Input::Abort { job, reason }
                            } else {
                                Input::Failed { job, from, reason }
                            }
                        }
                        Err(e) if running && e.is_terminal() => {
                            let reason = e.message.clone();
                            ctx.terminal = Some(e);
                            Input::Abort { job, reason }
                        }
                        Err(e) => Input::Failed { job, from, reason: e.to_string() },
                    }
                }
            },
            () = crate::wake::sleep_until(wake), if wake.is_some() => Input::Tick,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a placement task failed");
                }
                continue;
            }
        };
        let mut out = Vec::new();
        auction.handle(input, epoch.elapsed(), &mut out);
        for o in out {
            carry(&st, &auction, &mut jobs, &mut tasks, &ev_tx, o);
        }
    }
}

fn carry(
    st: &Arc<NodeState>,
    auction: &Auction<PeerId>,
    jobs: &mut Waiting,
    tasks: &mut tokio::task::JoinSet<()>,
    ev_tx: &mpsc::Sender<Event>,
    o: Output<PeerId>,
) {
    match o {
        Output::CallForBids { job, peers } => {
            let (Some((ctx, _)), Some(mesh)) = (jobs.get(&job), &st.mesh) else {
                return;
            };
            // Until the job's deadline, not the window: when the window passes with no bid
            // the auction waits for the first late one.
            let window = Duration::from_millis(ctx.job.body().deadline_ms.saturating_sub(now_ms()));
            for peer in peers {
                let (mesh, request, ev_tx) = (mesh.clone(), ctx.bid_request.clone(), ev_tx.clone());
                tasks.spawn(async move {
                    let answer = match tokio::time::timeout(window, mesh.bid(peer, request)).await {
                        Err(_) => return, // silent: the deadline passed without it
                        // Unreachable, or an answer that did not decode (malformed, forged,
                        // implausible: the mesh has charged the peer an offence).
                        Ok(Err(e)) => Err(format!("no valid bid: {e}")),
                        Ok(Ok(bid)) if bid.body().job != job => {
                            Err("answered for another job".into())
                        }
                        Ok(Ok(bid)) => bid.body().answer.clone().map(crate::bid_task::estimate_of),
                    };
                    let _ = ev_tx
                        .send(Event::Bid {
                            job,
                            from: peer,
                            answer,
                        })
                        .await;
                });
            }
        }
        Output::Award {
            job,
            peer,
            attempt,
            local,
        } => {
            let Some((ctx, _)) = jobs.get_mut(&job) else {
                return;
            };
            if ctx.decided.is_none() {
                ctx.decided = Some(ctx.received.elapsed());
            }
            tracing::debug!(job = %hex::encode(&job[..4]), %peer, attempt, local, "awarded");
            let st = Arc::clone(st);
            let ev_tx = ev_tx.clone();
            let (signed, input, input_name, model, accepted) = (
                ctx.job.clone(),
                ctx.input.clone(),
                ctx.input_name.clone(),
                ctx.model.clone(),
                ctx.accepted,
            );
            tasks.spawn(async move {
                let result = match (local, model) {
                    (true, Some(model)) => run_here(&st, signed, &model, input, accepted).await,
                    _ => run_on(&st, peer, signed, input_name, input).await,
                };
                let _ = ev_tx
                    .send(Event::Ended {
                        job,
                        from: peer,
                        result: Box::new(result),
                    })
                    .await;
            });
        }
        Output::Complete { job, peers } => {
            let Some((mut ctx, reply)) = jobs.remove(&job) else {
                return;
            };
            let placement = explain(auction, &job, ctx.decided);
            let results: Vec<(PeerId, Executed)> = std::mem::take(&mut ctx.results)
                .into_iter()
                .filter(|(p, _)| peers.contains(p))
                .collect();
            let agree = (results.len() > 1).then(|| {
                let first = results[0].1.output_digest();
                results.iter().all(|(_, e)| e.output_digest() == first)
            });
            record(st, &ctx, &placement, Ok(&results), agree);
            let _ = reply.send(Ok(Placed {
                results,
                placement,
                job: ctx.job.id(),
                input_name: ctx.input_name,
                replicas_agree: agree,
            }));
        }
        Output::Fail { job, reason } => {
            let Some((mut ctx, reply)) = jobs.remove(&job) else {
                return;
            };
            let placement = explain(auction, &job, ctx.decided);
            let mut e = ctx.terminal.take().unwrap_or_else(|| {
                let kind = if placement.attempts() > 0 {
                    ErrorKind::PlacementFailed
                } else {
                    ErrorKind::Infeasible
                };
                JobError::new(kind, reason)
            });
            record(st, &ctx, &placement, Err(&e.message), None);
            e.placement = Some(Box::new(placement));
            let _ = reply.send(Err(e));
        }
    }
}

fn record(
    st: &NodeState,
    ctx: &Ctx,
    placement: &Placement,
    results: Result<&[(PeerId, Executed)], &str>,
    replicas_agree: Option<bool>,
) {
    let rec = JobRecord {
        job: ctx.job.id(),
        model: ctx.job.body().model.clone(),
        submitted_ms: ctx.submitted_ms,
        latency: ctx.accepted.elapsed(),
        outcome: results
            .map(|r| r.iter().map(|(p, _)| *p).collect())
            .map_err(str::to_owned),
        replicas_agree,
        placement: placement.clone(),
    };
    let counter = if rec.outcome.is_ok() {
        &st.placed.ok
    } else {
        &st.placed.failed
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut r) = st.recent.lock() {
        if r.len() >= RECENT_MAX {
            r.pop_front();
        }
        r.push_back(rec);
    }
}

/// Runs an awarded attempt on this node.
async fn run_here(
    st: &Arc<NodeState>,
    job: SignedJobRequest,
    model: &crate::models::LoadedModel,
    input: Tensor,
    accepted: Instant,
) -> Result<Executed, JobError> {
    let left = job.body().deadline_ms.saturating_sub(now_ms());
    if left == 0 {
        return Err(JobError::new(
            ErrorKind::DeadlinePassed,
            "the job's deadline passed before it could run here",
        ));
    }
    let permit = job_slot(st)?;
    let span = tracing::info_span!("job", job = %job.id().short(), model = %model.name);
    let executed = execute(st, job, model, input, left, accepted)
        .instrument(span)
        .await;
    drop(permit);
    executed
}

/// Runs an awarded attempt on a peer and verifies its answer.
async fn run_on(
    st: &Arc<NodeState>,
    peer: PeerId,
    job: SignedJobRequest,
    input_name: String,
    input: Tensor,
) -> Result<Executed, JobError> {
    let mesh = st
        .mesh
        .as_ref()
        .ok_or_else(|| unavailable("the mesh is disabled"))?;
    let left = Duration::from_millis(job.body().deadline_ms.saturating_sub(now_ms()));
    let request = ExecRequest::Run {
        job: job.encode(),
        inputs: vec![(input_name, input.to_npy())],
    };
    let span = tracing::info_span!("remote_job", job = %job.id().short(), %peer);
    let answer = tokio::time::timeout(left, mesh.exec(peer, request))
        .instrument(span)
        .await;
    match answer {
        Err(_) => Err(JobError::new(
            ErrorKind::DeadlinePassed,
            format!("peer {peer} did not answer before the job's deadline"),
        )),
        Ok(Err(e)) => Err(JobError::new(
            ErrorKind::PeerUnreachable,
            format!("peer {peer}: {e}"),
        )),
        Ok(Ok(ExecResponse::Refused { code, message })) => {
            Err(super::remote::remote_refusal(peer, code, message))
        }
        Ok(Ok(ExecResponse::Ran { entry, outputs })) => {
            super::remote::verify_answer(peer, &job, &entry, outputs)
        }
        Ok(Ok(_)) => Err(super::remote::bad_answer(peer, "expected a result")),
    }
}

fn explain(auction: &Auction<PeerId>, job: &JobId, decided: Option<Duration>) -> Placement {
    Placement {
        explanation: auction.explain(job),
        decided,
    }
}

/// Recent jobs placed by this node, newest first.
pub fn recent(st: &NodeState, limit: usize) -> Vec<JobRecord> {
    st.recent
        .lock()
        .map(|r| r.iter().rev().take(limit).cloned().collect())
        .unwrap_or_default()
}

/// One recent job.
pub fn find(st: &NodeState, job: &ContentId) -> Option<JobRecord> {
    st.recent
        .lock()
        .ok()?
        .iter()
        .rev()
        .find(|r| r.job == *job)
        .cloned()
}

/// The ring of recent jobs.
pub type Recent = std::sync::Mutex<VecDeque<JobRecord>>;
