//! Gossip messages and topics.
//!
//! Every gossip payload is CBOR `[version, kind, body]`:
//!
//! | kind | body |
//! |---|---|
//! | 1 entry | byte string: a signed ledger entry (docs/PROTOCOL.md) |
//! | 2 checkpoint | `[feed public key (32 bytes), note (text)]` |
//!
//! Payloads are at most [`GOSSIP_BYTES_MAX`] bytes; gossipsub's `max_transmit_size` is set to the
//! same value so oversized messages are dropped before they reach the decoder.

use ciborium::Value;
use fab_ledger::cbor::{self, DecodeError, Fields};

/// Version of the gossip envelope.
pub const GOSSIP_VERSION: u64 = 1;
/// Largest gossip payload.
pub const GOSSIP_BYTES_MAX: usize = 32 * 1024;

/// The ledger topic of a network: `fabnode/v1/<network>/ledger`.
pub fn ledger_topic(network: &str) -> String {
    format!("fabnode/v1/{network}/ledger")
}

/// A message on the ledger topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipMsg {
    /// A signed entry's wire bytes.
    Entry(Vec<u8>),
    /// A checkpoint note and the public key of the feed it belongs to.
    Checkpoint { feed: [u8; 32], note: String },
}

const KIND_ENTRY: u64 = 1;
const KIND_CHECKPOINT: u64 = 2;
const WHAT: &str = "gossip message";

impl GossipMsg {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            GossipMsg::Entry(bytes) => (KIND_ENTRY, cbor::bytes(bytes)),
            GossipMsg::Checkpoint { feed, note } => (
                KIND_CHECKPOINT,
                Value::Array(vec![cbor::bytes(feed), cbor::text(note)]),
            ),
        };
        cbor::encode_value(&Value::Array(vec![
            cbor::uint(GOSSIP_VERSION),
            cbor::uint(kind),
            body,
        ]))
    }

    /// Decodes a payload of at most [`GOSSIP_BYTES_MAX`] bytes in canonical form.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let value = cbor::decode_value(bytes, WHAT, GOSSIP_BYTES_MAX)?;
        let mut f = Fields::new(value, WHAT, 3)?;
        let version = f.u64("version")?;
        if version != GOSSIP_VERSION {
            return Err(DecodeError::invalid(
                WHAT,
                format!("unsupported version {version}"),
            ));
        }
        match f.u64("kind")? {
            KIND_ENTRY => Ok(GossipMsg::Entry(f.bytes("entry", GOSSIP_BYTES_MAX)?)),
            KIND_CHECKPOINT => {
                let mut c = Fields::new(f.value("checkpoint")?, WHAT, 2)?;
                Ok(GossipMsg::Checkpoint {
                    feed: c.array("feed")?,
                    note: c.text("note", fab_ledger::checkpoint::NOTE_BYTES_MAX)?,
                })
            }
            other => Err(DecodeError::invalid(WHAT, format!("unknown kind {other}"))),
        }
    }
}
