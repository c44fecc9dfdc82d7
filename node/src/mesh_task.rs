//! The node's side of the mesh: publishes its own committed entries and checkpoints, and feeds
//! every validated peer message through the replication core, carrying out what it decides.
//!
//! Protocol decisions live in `fab_mesh::replicate` (sans-IO); this task only moves messages
//! between the mesh, the core and the ledger writer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fab_ledger::PublicKey;
use fab_mesh::net::{MeshClient, MeshEvent};
use fab_mesh::replicate::{Input, Output, Replicator};
use fab_mesh::validate::Valid;
use fab_mesh::wire::GossipMsg;
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::ledger_writer::{Committed, LedgerClient};

/// How often the replication core is ticked (request timeouts) and unsent gossip retried.
const TICK: Duration = Duration::from_millis(250);
/// Own messages kept for retry while no peer is subscribed yet; older ones are dropped.
const UNSENT_MAX: usize = 4096;

/// Publishes queued messages in order, stopping at the first that finds no peer.
async fn flush(mesh: &MeshClient, unsent: &mut VecDeque<GossipMsg>) {
    while let Some(msg) = unsent.front() {
        match mesh.publish(msg.clone()).await {
            Ok(()) => {
                unsent.pop_front();
            }
            Err(err) => {
                tracing::debug!(error = %err, queued = unsent.len(), "gossip held for retry");
                return;
            }
        }
    }
}

pub async fn run(
    own: PublicKey,
    mesh: MeshClient,
    mut events: mpsc::Receiver<MeshEvent>,
    mut committed: mpsc::Receiver<Committed>,
    ledger: LedgerClient,
    mut replicator: Replicator<PeerId>,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    let mut outputs: Vec<Output<PeerId>> = Vec::new();
    // Own entries and checkpoints not yet published because no peer was subscribed. Until
    // catch-up (/fabnode/ledger-sync/1) exists this is what keeps early entries from being lost.
    let mut unsent: VecDeque<GossipMsg> = VecDeque::new();
    loop {
        tokio::select! {
            batch = committed.recv() => {
                let Some(batch) = batch else { break };
                unsent.extend(batch.entries.iter().map(|e| GossipMsg::Entry(e.encode())));
                unsent.push_back(GossipMsg::Checkpoint { feed: own.to_bytes(), note: batch.checkpoint.note.clone() });
                while unsent.len() > UNSENT_MAX {
                    unsent.pop_front();
                }
                flush(&mesh, &mut unsent).await;
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    MeshEvent::Valid { from, valid } => match *valid {
                        Valid::Entry(entry) if entry.body().feed != own => {
                            replicator.handle(Input::Entry { from, entry }, started.elapsed(), &mut outputs);
                        }
                        Valid::Checkpoint { feed, checkpoint } if feed != own => {
                            replicator.handle(Input::Checkpoint { from, feed, checkpoint }, started.elapsed(), &mut outputs);
                        }
                        _ => {}
                    },
                    MeshEvent::Rejected { from, reason } => {
                        tracing::warn!(peer = %from, %reason, "peer sent an invalid message");
                    }
                    MeshEvent::PeerConnected(peer) => tracing::debug!(%peer, "peer connected"),
                }
                if !unsent.is_empty() {
                    flush(&mesh, &mut unsent).await;
                }
            }
            _ = tick.tick() => {
                replicator.handle(Input::Tick, started.elapsed(), &mut outputs);
                flush(&mesh, &mut unsent).await;
            }
        }
        apply(&ledger, &mut outputs).await;
    }
}

async fn apply(ledger: &LedgerClient, outputs: &mut Vec<Output<PeerId>>) {
    for out in outputs.drain(..) {
        match out {
            Output::Store { feed, entries } => {
                let n = entries.len();
                if let Err(e) = ledger.store_replica(feed, entries, None).await {
                    tracing::error!(feed = %feed, error = %e, "storing replica entries failed");
                } else {
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
            Output::Request {
                peer,
                feed,
                start,
                count,
            } => {
                // Range requests travel over /fabnode/ledger-sync/1, which is not built yet:
                // until then a gap is filled only by later gossip.
                tracing::debug!(%peer, feed = %feed, start, count, "replica gap (catch-up not yet available)");
            }
            Output::Penalize { peer, reason } => tracing::warn!(%peer, %reason, "peer penalised"),
            Output::Conflict { feed, seq, detail } => {
                tracing::warn!(feed = %feed, seq, %detail, "feed signed conflicting statements");
            }
        }
    }
}
