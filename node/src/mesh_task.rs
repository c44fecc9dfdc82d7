//! The node's side of the mesh: publishes its own committed entries and checkpoints, and feeds
//! every validated peer message through the mesh core, carrying out what it decides.
//!
//! Protocol decisions live in `fab_mesh::node` and `fab_mesh::replicate` (sans-IO; the
//! simulator drives the same core); this task only moves messages between the mesh, the core
//! and the ledger writer.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use fab_ledger::PublicKey;
use fab_mesh::net::{MeshClient, MeshEvent};
use fab_mesh::node::{Gossip, MeshNode, NodeConfig, serve_heads};
use fab_mesh::replicate::{FeedHead, Output, Replicator};
use fab_mesh::wire::{GossipMsg, RANGE_MAX, SyncRequest, SyncResponse};
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::ledger_writer::{Committed, LedgerClient};

/// How often the replication view the API reads is refreshed at most. Nothing ticks: the task
/// sleeps until the mesh core's next deadline ([`MeshNode::poll_timeout`]: replication,
/// gossip slots, retries), the replica-sync due time or the view's refresh, whichever comes
/// first.
const TICK: Duration = Duration::from_millis(250);

/// Publishes what the mesh core releases now, in order, stopping at the first message that
/// finds no subscribed peer (the core retries it later).
async fn flush(
    mesh: &MeshClient,
    core: &mut MeshNode<PeerId, String>,
    own: PublicKey,
    now: Duration,
    gossiped: &Gossiped,
) {
    while let Some(gossip) = core.poll_gossip(now) {
        let msg = match &gossip {
            Gossip::Entries(msg) => msg.clone(),
            Gossip::Checkpoint(note) => GossipMsg::Checkpoint {
                feed: own.to_bytes(),
                note: note.clone(),
            },
        };
        match mesh.publish(msg).await {
            Ok(()) => {
                if let Gossip::Entries(_) = gossip {
                    gossiped.messages.fetch_add(1, Relaxed);
                    gossiped.entries.fetch_add(gossip.weight() as u64, Relaxed);
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, queued = core.unsent_entries(), "gossip held for retry");
                core.unsent(gossip, now);
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
        replicator,
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
    // The protocol: replication, own-gossip pacing, own-feed filtering (fab_mesh::node).
    let mut core: MeshNode<PeerId, String> = MeshNode::new(own, replicator, NodeConfig::default());
    // Replica entries stored since the last sync: when the writer must next be told to write
    // them (it writes those that waited REPLICA_SYNC), and whether more came in meanwhile.
    let mut sync_due: Option<tokio::time::Instant> = None;
    let mut stored_since_sync = false;
    // Whether the replication view changed since the API's copy was refreshed, and when that was.
    let mut heads_changed = false;
    let mut heads_sent = tokio::time::Instant::now();
    let mut outputs: Vec<Output<PeerId>> = Vec::new();
    // Keys of the connected, identified members of this network (bounded by the mesh's
    // connection limit): whose telemetry is kept.
    let mut members: std::collections::BTreeSet<[u8; 32]> = Default::default();
    loop {
        let wake = [
            core.poll_timeout().map(|t| started_at + t),
            sync_due,
            heads_changed.then_some(heads_sent + TICK),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            batch = committed.recv() => {
                let Some(batch) = batch else { break };
                core.committed(batch.entries.iter().map(|e| e.encode()), batch.checkpoint.note.clone());
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                let now = started.elapsed();
                // Most events reach the replication core: the API's copy of its view is
                // refreshed within TICK.
                heads_changed = true;
                match event {
                    MeshEvent::Valid { from, valid } => {
                        core.gossip(from, *valid, now, &mut outputs);
                    }
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
                            core.peer_up(peer, now, &mut outputs);
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
                            core.peer_down(peer, now, &mut outputs);
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
                                .collect();
                            core.heads(from, heads, now, &mut outputs);
                        }
                        SyncResponse::Range { feed, start, entries } => {
                            if let Some(feed) = PublicKey::from_bytes(&feed) {
                                core.range(from, feed, start, entries, now, &mut outputs);
                            }
                        }
                        SyncResponse::Refused(reason) => tracing::debug!(peer = %from, %reason, "sync refused"),
                    },
                }
            }
            () = crate::wake::sleep_until(wake), if wake.is_some() => {
                let now = tokio::time::Instant::now();
                if sync_due.is_some_and(|t| now >= t) {
                    ledger.sync_replicas();
                    sync_due = stored_since_sync.then(|| now + crate::ledger_writer::REPLICA_SYNC);
                    stored_since_sync = false;
                }
                if core.handle_timeout(started.elapsed(), &mut outputs) {
                    heads_changed = true;
                }
                if heads_changed && now >= heads_sent + TICK {
                    heads.send_replace(core.replicator().heads());
                    heads_sent = now;
                    heads_changed = false;
                }
            }
        }
        flush(&mesh, &mut core, own, started.elapsed(), &gossiped).await;
        if apply(&mesh, &ledger, &evidence, &mut outputs).await {
            if sync_due.is_none() {
                sync_due = Some(tokio::time::Instant::now() + crate::ledger_writer::REPLICA_SYNC);
            } else {
                stored_since_sync = true;
            }
        }
    }
}

/// Answers a peer's sync request from the own feed or a replica.
async fn serve(own: PublicKey, ledger: &LedgerClient, request: SyncRequest) -> SyncResponse {
    match request {
        SyncRequest::Heads => {
            let (size, _) = ledger.head().await;
            match ledger.replica_heads().await {
                Ok(r) => SyncResponse::Heads(serve_heads(
                    own.to_bytes(),
                    size,
                    r.into_iter().map(|(k, n, _)| (k, n)),
                )),
                Err(e) => storage_refusal(&e),
            }
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
