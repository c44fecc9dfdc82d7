//! The node's side of the mesh: publishes its own committed entries and checkpoints, and feeds
//! every validated peer message through the replication core, carrying out what it decides.
//!
//! Protocol decisions live in `fab_mesh::replicate` (sans-IO); this task only moves messages
//! between the mesh, the core and the ledger writer.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use fab_ledger::PublicKey;
use fab_mesh::net::{MeshClient, MeshEvent};
use fab_mesh::replicate::{FeedHead, Input, Output, Replicator};
use fab_mesh::validate::Valid;
use fab_mesh::wire::{GossipMsg, RANGE_MAX, SyncRequest, SyncResponse};
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::ledger_writer::{Committed, LedgerClient};

/// How often unsent gossip is retried (while some waits for a subscribed peer), and how often
/// the replication view the API reads is refreshed at most. Nothing else ticks: the task
/// sleeps until the replication core's next deadline ([`Replicator::poll_timeout`]), a held
/// checkpoint's slot, or the replica-sync due time, whichever comes first.
const TICK: Duration = Duration::from_millis(250);
/// Own checkpoints are gossiped at most this often; the latest one covers every earlier entry,
/// and one per commit would cost every peer two signature checks per job under load. A held
/// checkpoint goes out at the next tick.
const CHECKPOINT_GOSSIP_EVERY: Duration = Duration::from_millis(200);
/// Own entries go out at most this often: an entry committed after a quiet spell goes at once;
/// under load, what commits in the meantime waits for the next slot and goes as batches
/// ([`GossipMsg::pack`]), so each peer pays gossip's per-message costs once per slot instead of
/// once per entry, and checks the batch's signatures together. Replication is up to this much
/// later under load; the client's answer never waits for gossip. Measured with `bench sched`
/// (five nodes, every execution ledgered): 10 ms 1,071 / 1,174 jobs/s, 50 ms 1,221 / 1,266.
const ENTRY_GOSSIP_EVERY: Duration = Duration::from_millis(50);
/// Own entries kept for retry while no peer is subscribed yet; older messages are dropped.
const UNSENT_MAX: usize = 4096;

/// How many entries a queued message carries (a checkpoint counts as one).
fn entries_in(msg: &GossipMsg) -> usize {
    match msg {
        GossipMsg::Entries(list) => list.len(),
        _ => 1,
    }
}

/// Moves lingering own entries to the send queue, followed by the newest checkpoint when one is
/// due (a checkpoint never goes ahead of the entries it covers), and bounds the queue.
fn release(
    own: PublicKey,
    lingering: &mut Vec<GossipMsg>,
    held: &mut Option<String>,
    checkpoint_sent: &mut Option<Instant>,
    unsent: &mut VecDeque<GossipMsg>,
) {
    unsent.extend(lingering.drain(..));
    if checkpoint_sent.is_none_or(|t| t.elapsed() >= CHECKPOINT_GOSSIP_EVERY)
        && let Some(note) = held.take()
    {
        unsent.push_back(GossipMsg::Checkpoint {
            feed: own.to_bytes(),
            note,
        });
        *checkpoint_sent = Some(Instant::now());
    }
    let mut queued: usize = unsent.iter().map(entries_in).sum();
    while queued > UNSENT_MAX {
        queued -= unsent.pop_front().as_ref().map_or(0, entries_in);
    }
}

/// Publishes queued messages in order, stopping at the first that finds no peer. Runs of own
/// entries go out as batches ([`GossipMsg::pack`]): under load a commit group of dozens of
/// entries costs each peer one gossip message and one batch signature check instead of dozens;
/// an entry committed alone still goes out alone, at once.
async fn flush(mesh: &MeshClient, unsent: &mut VecDeque<GossipMsg>, gossiped: &Gossiped) {
    if unsent.len() > 1 {
        let packed = GossipMsg::pack(unsent.drain(..));
        unsent.extend(packed);
    }
    while let Some(msg) = unsent.front() {
        match mesh.publish(msg.clone()).await {
            Ok(()) => {
                if let Some(sent) = unsent.pop_front()
                    && !matches!(sent, GossipMsg::Checkpoint { .. })
                {
                    gossiped.messages.fetch_add(1, Relaxed);
                    gossiped
                        .entries
                        .fetch_add(entries_in(&sent) as u64, Relaxed);
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, queued = unsent.len(), "gossip held for retry");
                return;
            }
        }
    }
}

/// Own ledger entries published on the ledger topic, and the gossip messages that carried them.
#[derive(Debug, Default)]
pub struct Gossiped {
    pub messages: std::sync::atomic::AtomicU64,
    pub entries: std::sync::atomic::AtomicU64,
}

/// What the mesh task is wired to.
pub struct MeshTask {
    /// This node's feed key.
    pub own: PublicKey,
    /// This node's shard: the peers it replicates with.
    pub scope: fab_mesh::shard::Scope,
    /// Where evidence of conflicting entries is written (`datadir::evidence_dir`).
    pub evidence: std::path::PathBuf,
    pub mesh: MeshClient,
    pub events: mpsc::Receiver<MeshEvent>,
    /// This node's committed batches, to gossip.
    pub committed: mpsc::Receiver<Committed>,
    pub ledger: LedgerClient,
    pub replicator: Replicator<PeerId>,
    /// Where peers' exec requests go.
    pub exec: mpsc::Sender<crate::jobs::serve::Incoming>,
    /// The replication core's view of every replica, for the API.
    pub heads: tokio::sync::watch::Sender<Vec<FeedHead>>,
    /// Where peers' calls for bids go.
    pub bids: mpsc::Sender<crate::bid_task::Incoming>,
    /// Peers' telemetry, fed from the telemetry topic.
    pub telemetry: std::sync::Arc<std::sync::Mutex<crate::sched::telemetry::TelemetryView>>,
    /// Own entries published, and the messages that carried them.
    pub gossiped: std::sync::Arc<Gossiped>,
}

/// Ledger-sync requests waiting to be served; beyond this a peer is told to retry.
pub const SYNC_QUEUE: usize = 16;

type SyncIncoming = (PeerId, SyncRequest, fab_mesh::net::SyncReply);

/// Serves peers' ledger-sync requests one at a time, off the mesh task's loop: however many
/// ranges peers ask for, gossip, calls for bids and exec requests keep flowing.
async fn serve_sync(
    own: PublicKey,
    ledger: LedgerClient,
    mesh: MeshClient,
    mut rx: mpsc::Receiver<SyncIncoming>,
) {
    while let Some((from, request, reply)) = rx.recv().await {
        let response = serve(own, &ledger, request).await;
        tracing::debug!(peer = %from, "sync request served");
        let _ = mesh.respond(reply, response).await;
    }
}

pub async fn run(task: MeshTask) {
    let MeshTask {
        own,
        scope,
        evidence,
        mesh,
        mut events,
        mut committed,
        ledger,
        mut replicator,
        exec,
        heads,
        telemetry,
        bids,
        gossiped,
    } = task;
    let started = Instant::now();
    let (sync_tx, sync_rx) = mpsc::channel::<SyncIncoming>(SYNC_QUEUE);
    // Owned here: it ends when this task ends (the set is dropped).
    let mut children = tokio::task::JoinSet::new();
    children.spawn(serve_sync(own, ledger.clone(), mesh.clone(), sync_rx));
    let started_at = tokio::time::Instant::from_std(started);
    // Replica entries stored since the last sync: when the writer must next be told to write
    // them (it writes those that waited REPLICA_SYNC), and whether more came in meanwhile.
    let mut sync_due: Option<tokio::time::Instant> = None;
    let mut stored_since_sync = false;
    // Whether the replication view changed since the API's copy was refreshed, and when that was.
    let mut heads_changed = false;
    let mut heads_sent = tokio::time::Instant::now();
    let mut outputs: Vec<Output<PeerId>> = Vec::new();
    // Own entries and checkpoints not yet published because no peer was subscribed: retried, so
    // live peers see them promptly (catch-up would also find them, later).
    let mut unsent: VecDeque<GossipMsg> = VecDeque::new();
    // The newest own checkpoint not gossiped yet, and when one last was.
    let mut held: Option<String> = None;
    let mut checkpoint_sent: Option<Instant> = None;
    // Keys of the connected, identified members of this network (bounded by the mesh's
    // connection limit): whose telemetry is kept.
    let mut members: std::collections::BTreeSet<[u8; 32]> = Default::default();
    // Own committed entries waiting for the next gossip slot, and when entries last went out
    // (the slot opens ENTRY_GOSSIP_EVERY after that).
    let mut lingering: Vec<GossipMsg> = Vec::new();
    let mut entries_sent: Option<tokio::time::Instant> = None;
    loop {
        let next_slot =
            entries_sent.map_or_else(tokio::time::Instant::now, |t| t + ENTRY_GOSSIP_EVERY);
        let wake = next_wake(Wake {
            replicator: replicator.poll_timeout().map(|t| started_at + t),
            checkpoint: (held.is_some() && lingering.is_empty()).then(|| {
                checkpoint_sent.map_or_else(tokio::time::Instant::now, |t| {
                    tokio::time::Instant::from_std(t) + CHECKPOINT_GOSSIP_EVERY
                })
            }),
            retry: !unsent.is_empty(),
            sync: sync_due,
            heads: heads_changed.then_some(heads_sent + TICK),
        });
        tokio::select! {
            batch = committed.recv() => {
                let Some(batch) = batch else { break };
                lingering.extend(batch.entries.iter().map(|e| GossipMsg::Entry(e.encode())));
                held = Some(batch.checkpoint.note.clone());
                if next_slot <= tokio::time::Instant::now() {
                    release(own, &mut lingering, &mut held, &mut checkpoint_sent, &mut unsent);
                    entries_sent = Some(tokio::time::Instant::now());
                    flush(&mesh, &mut unsent, &gossiped).await;
                }
            }
            _ = tokio::time::sleep_until(next_slot), if !lingering.is_empty() => {
                release(own, &mut lingering, &mut held, &mut checkpoint_sent, &mut unsent);
                entries_sent = Some(tokio::time::Instant::now());
                flush(&mesh, &mut unsent, &gossiped).await;
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                // Most events reach the replication core: the API's copy of its view is
                // refreshed within TICK.
                heads_changed = true;
                match event {
                    MeshEvent::Valid { from, valid } => match *valid {
                        Valid::Entry(entry) if entry.body().feed != own => {
                            replicator.handle(Input::Entry { from, entry }, started.elapsed(), &mut outputs);
                        }
                        Valid::Entries(entries) if entries.first().is_some_and(|e| e.body().feed != own) => {
                            for entry in entries {
                                replicator.handle(Input::Entry { from, entry }, started.elapsed(), &mut outputs);
                            }
                        }
                        Valid::Checkpoint { feed, checkpoint } if feed != own => {
                            replicator.handle(Input::Checkpoint { from, feed, checkpoint }, started.elapsed(), &mut outputs);
                        }
                        _ => {}
                    },
                    MeshEvent::BidRequest { from, request, reply } => {
                        // A full queue drops the call: the caller's window closes without it.
                        let _ = bids.try_send((from, request, reply));
                    }
                    MeshEvent::Telemetry { from, report } => {
                        // Decoded and verified by the validator the node gave the mesh. Only a
                        // connected member's report is kept: a peer relaying reports of keys
                        // no one is connected to cannot grow the view or fill the auction's
                        // candidates with nodes that cannot be reached.
                        if let Ok(report) = report.downcast::<crate::sched::telemetry::SignedTelemetry>() {
                            let node = report.body().node;
                            if !members.contains(&node.to_bytes()) {
                                tracing::debug!(peer = %from, node = %node, "telemetry of a node not connected here; not kept");
                            } else if let Ok(mut view) = telemetry.lock()
                                && let Err(why) = view.offer(&report, crate::ledger_writer::now_ms())
                            {
                                tracing::debug!(peer = %from, ?why, "telemetry not taken");
                            }
                        }
                    }
                    MeshEvent::Rejected { from, reason } => {
                        tracing::warn!(peer = %from, %reason, "peer sent an invalid message");
                    }
                    // Replication runs between members of one shard; a connection to a peer of
                    // another shard serves calls for bids, jobs and discovery.
                    MeshEvent::PeerConnected(peer) => {
                        if let Some(key) = fab_mesh::net::peer_key(&peer) {
                            members.insert(key.to_bytes());
                        }
                        if fab_mesh::net::in_scope(&scope, &peer) {
                            replicator.handle(Input::PeerUp(peer), started.elapsed(), &mut outputs);
                        }
                    }
                    MeshEvent::PeerDisconnected(peer) => {
                        if let Some(key) = fab_mesh::net::peer_key(&peer) {
                            members.remove(&key.to_bytes());
                            if let Ok(mut view) = telemetry.lock() {
                                view.forget(&key);
                            }
                        }
                        if fab_mesh::net::in_scope(&scope, &peer) {
                            replicator.handle(Input::PeerDown(peer), started.elapsed(), &mut outputs);
                        }
                    }
                    MeshEvent::ExecRequest { from, request, reply } => {
                        if let Err(mpsc::error::TrySendError::Full((_, _, reply)) | mpsc::error::TrySendError::Closed((_, _, reply))) = exec.try_send((from, request, reply)) {
                            let busy = fab_mesh::exec::ExecResponse::Refused {
                                code: "busy".into(),
                                message: "too many exec requests waiting; retry later".into(),
                            };
                            let _ = mesh.respond_exec(reply, busy).await;
                        }
                    }
                    MeshEvent::SyncRequest { from, request, reply } => {
                        if let Err(mpsc::error::TrySendError::Full((_, _, reply)) | mpsc::error::TrySendError::Closed((_, _, reply))) = sync_tx.try_send((from, request, reply)) {
                            tracing::debug!(peer = %from, "sync request refused: queue full");
                            let busy = SyncResponse::Refused(
                                "busy: too many ledger-sync requests waiting; retry later".into(),
                            );
                            let _ = mesh.respond(reply, busy).await;
                        }
                    }
                    MeshEvent::SyncResponse { from, response } => match response {
                        SyncResponse::Heads(heads) => {
                            let heads = heads
                                .into_iter()
                                .filter_map(|(k, n)| PublicKey::from_bytes(&k).map(|f| (f, n)))
                                .filter(|(f, _)| *f != own)
                                .collect();
                            replicator.handle(Input::Heads { from, heads }, started.elapsed(), &mut outputs);
                        }
                        SyncResponse::Range { feed, start, entries } => {
                            if let Some(feed) = PublicKey::from_bytes(&feed).filter(|f| *f != own) {
                                replicator.handle(Input::Range { from, feed, start, entries }, started.elapsed(), &mut outputs);
                            }
                        }
                        SyncResponse::Refused(reason) => tracing::debug!(peer = %from, %reason, "sync refused"),
                    },
                }
                if !unsent.is_empty() {
                    flush(&mesh, &mut unsent, &gossiped).await;
                }
            }
            () = crate::wake::sleep_until(wake), if wake.is_some() => {
                let now = tokio::time::Instant::now();
                // A held checkpoint goes out once its slot is open, unless entries it covers
                // are still lingering (they go first, with it, in a few milliseconds).
                if lingering.is_empty()
                    && checkpoint_sent.is_none_or(|t| t.elapsed() >= CHECKPOINT_GOSSIP_EVERY)
                    && let Some(note) = held.take()
                {
                    unsent.push_back(GossipMsg::Checkpoint { feed: own.to_bytes(), note });
                    checkpoint_sent = Some(Instant::now());
                }
                if sync_due.is_some_and(|t| now >= t) {
                    ledger.sync_replicas();
                    sync_due = stored_since_sync.then(|| now + crate::ledger_writer::REPLICA_SYNC);
                    stored_since_sync = false;
                }
                if replicator.poll_timeout().is_some_and(|t| started_at + t <= now) {
                    replicator.handle(Input::Tick, started.elapsed(), &mut outputs);
                    heads_changed = true;
                }
                if heads_changed && now >= heads_sent + TICK {
                    heads.send_replace(replicator.heads());
                    heads_sent = now;
                    heads_changed = false;
                }
                flush(&mesh, &mut unsent, &gossiped).await;
            }
        }
        if apply(&mesh, &ledger, &evidence, &mut outputs).await {
            if sync_due.is_none() {
                sync_due = Some(tokio::time::Instant::now() + crate::ledger_writer::REPLICA_SYNC);
            } else {
                stored_since_sync = true;
            }
        }
    }
}

/// What the mesh task may have to do later, each at its own time.
struct Wake {
    replicator: Option<tokio::time::Instant>,
    checkpoint: Option<tokio::time::Instant>,
    /// Unsent gossip waits for a subscribed peer: retry every [`TICK`].
    retry: bool,
    sync: Option<tokio::time::Instant>,
    heads: Option<tokio::time::Instant>,
}

/// The earliest of them; `None` when there is nothing to wake for.
fn next_wake(w: Wake) -> Option<tokio::time::Instant> {
    let retry = w.retry.then(|| tokio::time::Instant::now() + TICK);
    [w.replicator, w.checkpoint, retry, w.sync, w.heads]
        .into_iter()
        .flatten()
        .min()
}

/// Answers a peer's sync request from the own feed or a replica.
async fn serve(own: PublicKey, ledger: &LedgerClient, request: SyncRequest) -> SyncResponse {
    match request {
        SyncRequest::Heads => {
            let (size, _) = ledger.head().await;
            let mut heads = vec![(own.to_bytes(), size)];
            match ledger.replica_heads().await {
                Ok(r) => heads.extend(r.into_iter().map(|(k, n, _)| (k, n))),
                Err(e) => return storage_refusal(&e),
            }
            SyncResponse::Heads(heads)
        }
        SyncRequest::Range { feed, start, count } => {
            let limit = count.min(RANGE_MAX) as usize;
            let rows = if feed == own.to_bytes() {
                ledger.range(start, limit).await
            } else {
                ledger.replica_range(feed, start, limit).await
            };
            match rows {
                Ok(rows) => {
                    // Only the contiguous run from `start`.
                    let entries = rows
                        .into_iter()
                        .enumerate()
                        .take_while(|(i, (seq, _))| start.checked_add(*i as u64) == Some(*seq))
                        .map(|(_, (_, bytes))| bytes)
                        .collect();
                    SyncResponse::Range {
                        feed,
                        start,
                        entries,
                    }
                }
                Err(e) => storage_refusal(&e),
            }
        }
    }
}

/// A storage failure as a peer sees it: the operator's log keeps the detail (paths, errors).
fn storage_refusal(detail: &str) -> SyncResponse {
    tracing::warn!(%detail, "a ledger read for a peer failed");
    SyncResponse::Refused("this node could not read its ledger".into())
}

/// Writes a proof once (a second copy of the same conflict is not rewritten).
async fn write_evidence(
    path: &std::path::Path,
    proof: &fab_ledger::evidence::Evidence,
) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(proof).map_err(std::io::Error::other)?;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if path.exists() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Durable and whole: the proof outlives a crash right after it was found.
        crate::datadir::write_atomic(&path, &json, 0o644)
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn apply(
    mesh: &MeshClient,
    ledger: &LedgerClient,
    evidence: &std::path::Path,
    outputs: &mut Vec<Output<PeerId>>,
) -> bool {
    let mut stored = false;
    for out in outputs.drain(..) {
        match out {
            Output::Store { feed, entries } => {
                let n = entries.len();
                if let Err(e) = ledger.store_replica(feed, entries, None).await {
                    tracing::error!(feed = %feed, error = %e, "storing replica entries failed");
                } else {
                    stored = true;
                    tracing::debug!(feed = %feed, entries = n, "replica entries stored");
                }
            }
            Output::Trust { feed, checkpoint } => {
                if let Err(e) = ledger
                    .store_replica(feed, Vec::new(), Some(checkpoint))
                    .await
                {
                    tracing::error!(feed = %feed, error = %e, "storing a replica checkpoint failed");
                }
            }
            Output::AskHeads { peer } => {
                tracing::debug!(%peer, "asking for heads");
                let _ = mesh.request(peer, SyncRequest::Heads).await;
            }
            Output::Request {
                peer,
                feed,
                start,
                count,
            } => {
                tracing::debug!(%peer, feed = %feed, start, count, "catching up");
                let request = SyncRequest::Range {
                    feed: feed.to_bytes(),
                    start,
                    count,
                };
                let _ = mesh.request(peer, request).await;
            }
            Output::Penalize { peer, reason } => mesh.penalise(peer, reason),
            Output::Conflict { feed, seq, detail } => {
                tracing::warn!(feed = %feed, seq, %detail, "feed signed conflicting statements");
            }
            Output::Evidence { feed, held, other } => {
                let seq = held.body().seq;
                let path = evidence.join(format!("{}-{seq}.json", feed.peer_id()));
                let proof = fab_ledger::evidence::Evidence::entries(&held, &other);
                match write_evidence(&path, &proof).await {
                    Ok(()) => {
                        tracing::warn!(feed = %feed, seq, path = %path.display(), "evidence of a fork kept; check it with `fabnode ledger verify-evidence`")
                    }
                    Err(e) => {
                        tracing::error!(feed = %feed, seq, error = %e, "could not keep evidence of a fork")
                    }
                }
            }
        }
    }
    stored
}
