//! fab-ledger: fabnode's trust base.
//!
//! Everything that crosses a trust boundary in fabnode is built from the pieces in this crate:
//! a node identity (one ed25519 key, shown as a libp2p `PeerId`), deterministic CBOR that
//! rejects any byte string that does not re-encode to itself, domain-separated signatures
//! checked with `verify_strict`, BLAKE3 content ids, and the node's own append-only feed of
//! signed, hash-chained entries.
//!
//! # Layout
//!
//! - [`cbor`]: canonical encoding and bounded, round-trip-checked decoding.
//! - [`id`]: [`ContentId`] (BLAKE3-256).
//! - [`identity`]: [`Keypair`], [`PublicKey`], the key file in the data dir.
//! - [`signed`]: [`Signed<T>`], an object together with the exact bytes that were signed.
//! - [`job`]: the requester-signed [`JobRequest`].
//! - [`entry`]: feed [`Entry`]s, the execution receipt body, and [`verify_feed`] which re-checks
//!   every signature and link of a feed.
//! - [`feed`]: [`FeedWriter`], the sans-IO state that numbers, links and signs new entries.
//! - [`checkpoint`]: signed tree heads in the C2SP tlog-checkpoint note format.
//! - [`receipt`]: offline receipts (entry + inclusion proof + checkpoint).
//! - [`evidence`]: self-verifying proof that a feed signed two conflicting statements.
//! - [`merkle`]: RFC 9162 Merkle trees: append, roots, inclusion and consistency proofs.
//! - [`store`] (feature `store`): the redb file that holds a feed durably.
//!
//! Nothing here reads the clock, spawns, or touches the network; callers pass time in.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cbor;
pub mod checkpoint;
pub mod entry;
pub mod evidence;
pub mod feed;
pub mod id;
pub mod identity;
pub mod job;
pub mod merkle;
pub mod receipt;
pub mod signed;
#[cfg(feature = "store")]
pub mod store;

pub use cbor::Cbor;
pub use entry::{
    Determinism, Entry, EntryBody, ExecStatus, ExecutionReceipt, Metering, SignedEntry, Timings,
    VerifyError, VerifyErrorKind, verify_feed,
};
pub use feed::FeedWriter;
pub use id::ContentId;
pub use identity::{KeyFileError, Keypair, PublicKey};
pub use job::{JobRequest, SignedJobRequest};
pub use signed::{Signed, SignedBody};

/// Version of every signed structure this crate writes; decoders refuse any other.
pub const WIRE_VERSION: u64 = 1;
