//! Why a job was refused or failed: one kind per reason, with the stable code that peers and
//! API clients see. The HTTP status of each kind is the API's business (`api/error.rs`).

use std::fmt;

use fab_ledger::SignedEntry;

use super::place::Placement;

/// What went wrong with a job. The code of each kind (`code()`) is its name on the wire
/// (`/fabnode/exec/1` refusals) and in API errors; it never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No model by that name here (or the name is not a valid one).
    UnknownModel,
    /// The model's file changed since it was registered, or a peer holds another version.
    ModelChanged,
    /// The model is registered but could not be loaded.
    ModelLoadFailed,
    /// The input is not a tensor (bad dtype, shape or data).
    BadTensor,
    /// The input does not fit the model (dtype, rank, dimensions, count, name).
    InvalidInput,
    /// The input is over `limits.input_bytes_max`.
    InputTooLarge,
    /// A peer's input is not the one its job request signs.
    InputMismatch,
    /// A peer's job request does not decode or verify, or was created in the future.
    BadJob,
    /// A peer's job request is signed by someone other than the peer that sent it.
    RequesterMismatch,
    /// A job that already ran here, or is running here.
    Replayed,
    /// The job's deadline passed before it could run (or before a peer answered).
    DeadlinePassed,
    /// Every job slot or worker is taken; retry later.
    Busy,
    /// A subsystem the job needs is stopping or stopped.
    Unavailable,
    /// The job ran but its receipt could not be recorded, so no result is returned.
    LedgerUnavailable,
    /// The ledger could not be read.
    LedgerError,
    /// The job needs the mesh and `mesh.enabled = false`.
    MeshDisabled,
    /// The placement fields are out of range or contradict each other.
    BadSla,
    /// No candidate can meet the job's SLA.
    Infeasible,
    /// Every attempt failed.
    PlacementFailed,
    /// A peer could not be reached.
    PeerUnreachable,
    /// A peer refused with a reason this node does not know.
    PeerRefused,
    /// A peer answered with something that does not verify.
    BadPeerAnswer,
    /// The job ran and failed (or overran its deadline); its receipt records why.
    ExecutionFailed,
    /// A bug: a task failed where it cannot.
    Internal,
}

/// Every kind with its code, in one table: `code()` and `from_code()` read it.
const CODES: [(ErrorKind, &str); 24] = [
    (ErrorKind::UnknownModel, "unknown_model"),
    (ErrorKind::ModelChanged, "model_changed"),
    (ErrorKind::ModelLoadFailed, "model_load_failed"),
    (ErrorKind::BadTensor, "bad_tensor"),
    (ErrorKind::InvalidInput, "invalid_input"),
    (ErrorKind::InputTooLarge, "input_too_large"),
    (ErrorKind::InputMismatch, "input_mismatch"),
    (ErrorKind::BadJob, "bad_job"),
    (ErrorKind::RequesterMismatch, "requester_mismatch"),
    (ErrorKind::Replayed, "replayed"),
    (ErrorKind::DeadlinePassed, "deadline_passed"),
    (ErrorKind::Busy, "busy"),
    (ErrorKind::Unavailable, "unavailable"),
    (ErrorKind::LedgerUnavailable, "ledger_unavailable"),
    (ErrorKind::LedgerError, "ledger_error"),
    (ErrorKind::MeshDisabled, "mesh_disabled"),
    (ErrorKind::BadSla, "bad_sla"),
    (ErrorKind::Infeasible, "infeasible"),
    (ErrorKind::PlacementFailed, "placement_failed"),
    (ErrorKind::PeerUnreachable, "peer_unreachable"),
    (ErrorKind::PeerRefused, "peer_refused"),
    (ErrorKind::BadPeerAnswer, "bad_peer_answer"),
    (ErrorKind::ExecutionFailed, "execution_failed"),
    (ErrorKind::Internal, "internal"),
];

impl ErrorKind {
    /// Every kind.
    pub fn all() -> impl Iterator<Item = ErrorKind> {
        CODES.iter().map(|(k, _)| *k)
    }

    /// The stable code: on the wire and in the API.
    pub fn code(self) -> &'static str {
        CODES
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("internal", |(_, c)| c)
    }

    /// The kind a code names, if any.
    pub fn from_code(code: &str) -> Option<Self> {
        CODES.iter().find(|(_, c)| *c == code).map(|(k, _)| *k)
    }

    /// A failure every node would give for this job: the auction does not award it again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::InvalidInput | Self::BadTensor | Self::InputTooLarge | Self::ExecutionFailed
        )
    }

    /// A refusal whose message is built from the peer's own request only, so it may be passed
    /// to the peer as it is. Other messages can name this node's models, files or ledger.
    pub fn message_is_public(self) -> bool {
        matches!(
            self,
            Self::BadJob
                | Self::RequesterMismatch
                | Self::DeadlinePassed
                | Self::Replayed
                | Self::Busy
                | Self::InvalidInput
                | Self::BadTensor
                | Self::InputTooLarge
                | Self::InputMismatch
        )
    }

    /// What a peer's refusal code means here: the kinds a requester acts on keep their kind,
    /// anything else is [`ErrorKind::PeerRefused`].
    pub fn from_peer(code: &str) -> Self {
        match Self::from_code(code) {
            Some(
                k @ (Self::UnknownModel
                | Self::ModelChanged
                | Self::Busy
                | Self::InvalidInput
                | Self::BadTensor
                | Self::InputTooLarge
                | Self::DeadlinePassed),
            ) => k,
            _ => Self::PeerRefused,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A job refused or failed, with what the caller may need to see: the receipt of a run that
/// failed, and where the job was placed.
#[derive(Debug)]
pub struct JobError {
    pub kind: ErrorKind,
    pub message: String,
    /// The signed entry recording the failed run (`ExecutionFailed`).
    pub receipt: Option<Box<SignedEntry>>,
    /// Where the job was placed and why (jobs placed by the auction).
    pub placement: Option<Box<Placement>>,
}

impl JobError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        JobError {
            kind,
            message: message.into(),
            receipt: None,
            placement: None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.kind.is_terminal()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.code())
    }
}

impl std::error::Error for JobError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_code_that_names_it_back() {
        for (kind, code) in CODES {
            assert_eq!(kind.code(), code);
            assert_eq!(ErrorKind::from_code(code), Some(kind));
        }
        let mut codes: Vec<_> = CODES.iter().map(|(_, c)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CODES.len());
        assert_eq!(ErrorKind::from_code("no_such_code"), None);
    }

    #[test]
    fn a_peer_cannot_make_its_refusal_look_like_any_kind() {
        assert_eq!(ErrorKind::from_peer("busy"), ErrorKind::Busy);
        assert_eq!(
            ErrorKind::from_peer("ledger_unavailable"),
            ErrorKind::PeerRefused
        );
        assert_eq!(
            ErrorKind::from_peer("execution_failed"),
            ErrorKind::PeerRefused
        );
        assert_eq!(ErrorKind::from_peer("¿"), ErrorKind::PeerRefused);
    }
}
