//! What the event loop remembers about peers: offences outside gossip, and the requests this
//! node is waiting on.

use super::*;

/// Offences a peer committed outside gossip validation: a malformed or implausible frame on a
/// request-response protocol, or what the application reports ([`MeshClient::penalise`]).
/// Each offence lowers the peer's gossipsub application score by one (weighted by
/// gossipsub's `app_specific_weight`, 10): one offence takes it to the gossip threshold (-10),
/// eight below the graylist threshold (-80), where its gossip is ignored. One offence is
/// forgiven every [`PENALTY_DECAY`]. At most [`PENALISED_MAX`] peers are remembered (the
/// least penalised is forgotten first) and at most [`OFFENCES_MAX`] offences per peer.
#[derive(Debug, Default)]
pub(super) struct Penalties(HashMap<PeerId, (u32, tokio::time::Instant)>);

/// Peers whose offences are remembered, at most.
pub(super) const PENALISED_MAX: usize = 1024;
/// Offences remembered per peer, at most.
pub(super) const OFFENCES_MAX: u32 = 100;
/// One offence is forgiven this often.
pub(super) const PENALTY_DECAY: Duration = Duration::from_secs(30);

impl Penalties {
    /// Charges one offence; returns the peer's new count.
    pub(super) fn charge(&mut self, peer: PeerId, now: tokio::time::Instant) -> u32 {
        if !self.0.contains_key(&peer)
            && self.0.len() >= PENALISED_MAX
            && let Some(least) = self.0.iter().min_by_key(|(_, (n, _))| *n).map(|(p, _)| *p)
        {
            self.0.remove(&least);
        }
        let e = self.0.entry(peer).or_insert((0, now));
        e.0 = (e.0 + 1).min(OFFENCES_MAX);
        e.1 = now;
        e.0
    }

    /// Forgives one offence of every peer last charged more than [`PENALTY_DECAY`] ago;
    /// returns the peers whose count changed, with the new count.
    pub(super) fn decay(&mut self, now: tokio::time::Instant) -> Vec<(PeerId, u32)> {
        let mut changed = Vec::new();
        self.0.retain(|peer, (n, at)| {
            if now.duration_since(*at) < PENALTY_DECAY {
                return true;
            }
            *n -= 1;
            *at = now;
            changed.push((*peer, *n));
            *n > 0
        });
        changed
    }

    pub(super) fn count(&self, peer: &PeerId) -> u32 {
        self.0.get(peer).map_or(0, |(n, _)| *n)
    }
}

/// Whether an outbound request failed because the peer answered with bytes that do not decode
/// (malformed, oversized or implausible), as opposed to a timeout or a closed connection: the
/// codec reports every decode failure as `InvalidData`.
pub(super) fn bad_answer(error: &request_response::OutboundFailure) -> bool {
    matches!(error, request_response::OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
}

/// The same for a request a peer sent.
pub(super) fn bad_request(error: &request_response::InboundFailure) -> bool {
    matches!(error, request_response::InboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
}

/// Outbound requests whose askers wait for the answer, by request id.
pub(super) struct Pending<T>(
    HashMap<request_response::OutboundRequestId, (PeerId, oneshot::Sender<Result<T, MeshError>>)>,
);

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending(HashMap::new())
    }
}

impl<T> Pending<T> {
    pub(super) fn insert(
        &mut self,
        id: request_response::OutboundRequestId,
        peer: PeerId,
        reply: oneshot::Sender<Result<T, MeshError>>,
    ) {
        self.0.insert(id, (peer, reply));
    }

    /// Hands an answer to its asker once `check` (given the peer asked) accepts it; returns
    /// the peer and the check's verdict when the request was pending.
    pub(super) fn answer(
        &mut self,
        id: request_response::OutboundRequestId,
        answer: T,
        check: impl FnOnce(&PeerId, &T) -> Result<(), String>,
    ) -> Option<(PeerId, Result<(), String>)> {
        let (peer, reply) = self.0.remove(&id)?;
        let verdict = check(&peer, &answer);
        let r = match &verdict {
            Ok(()) => Ok(answer),
            Err(detail) => Err(MeshError::Request {
                peer,
                detail: detail.clone(),
            }),
        };
        let _ = reply.send(r);
        Some((peer, verdict))
    }

    /// Tells the asker its request failed.
    pub(super) fn fail(&mut self, id: request_response::OutboundRequestId, detail: String) {
        if let Some((peer, reply)) = self.0.remove(&id) {
            let _ = reply.send(Err(MeshError::Request { peer, detail }));
        }
    }
}
