//! Gossip messages and topics.
//!
//! Every gossip payload is CBOR `[version, kind, body]`:
//!
//! | kind | body |
//! |---|---|
//! | 1 entry | byte string: a signed ledger entry (docs/PROTOCOL.md) |
//! | 2 checkpoint | `[feed public key (32 bytes), note (text)]` |
//! | 3 entries | array of 2 to [`ENTRIES_PER_GOSSIP_MAX`] byte strings: consecutive signed entries of one feed |
//!
//! Payloads are at most [`GOSSIP_BYTES_MAX`] bytes, checked by the decoder; gossipsub's frame
//! limit (`max_transmit_size`) adds room for its framing and for batches of control messages.

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

/// The telemetry topic of a network: `fabnode/v1/<network>/telemetry`.
pub fn telemetry_topic(network: &str) -> String {
    format!("fabnode/v1/{network}/telemetry")
}

/// Largest telemetry payload.
pub const TELEMETRY_BYTES_MAX: usize = 16 * 1024 + 256;

/// A message on the ledger topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipMsg {
    /// A signed entry's wire bytes.
    Entry(Vec<u8>),
    /// A checkpoint note and the public key of the feed it belongs to.
    Checkpoint { feed: [u8; 32], note: String },
    /// Consecutive signed entries of one feed, in order (2 to [`ENTRIES_PER_GOSSIP_MAX`]): what a
    /// node committed in one group under load, sent as one message so peers pay gossip's
    /// per-message costs once and check the signatures in one batch.
    Entries(Vec<Vec<u8>>),
}

/// Most entries in one [`GossipMsg::Entries`]; the whole payload stays within
/// [`GOSSIP_BYTES_MAX`].
pub const ENTRIES_PER_GOSSIP_MAX: usize = 64;

const KIND_ENTRY: u64 = 1;
const KIND_CHECKPOINT: u64 = 2;
const KIND_ENTRIES: u64 = 3;
const WHAT: &str = "gossip message";

impl GossipMsg {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            GossipMsg::Entry(bytes) => (KIND_ENTRY, cbor::bytes(bytes)),
            GossipMsg::Checkpoint { feed, note } => (
                KIND_CHECKPOINT,
                Value::Array(vec![cbor::bytes(feed), cbor::text(note)]),
            ),
            GossipMsg::Entries(entries) => (
                KIND_ENTRIES,
                Value::Array(entries.iter().map(|e| cbor::bytes(e)).collect()),
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
            KIND_ENTRIES => {
                let Value::Array(items) = f.value("entries")? else {
                    return Err(DecodeError::invalid(WHAT, "entries must be an array"));
                };
                if !(2..=ENTRIES_PER_GOSSIP_MAX).contains(&items.len()) {
                    return Err(DecodeError::invalid(
                        WHAT,
                        format!(
                            "{} entries in one message; 2 to {ENTRIES_PER_GOSSIP_MAX} allowed",
                            items.len()
                        ),
                    ));
                }
                let mut entries = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Bytes(b) => entries.push(b),
                        _ => {
                            return Err(DecodeError::invalid(WHAT, "entries must be byte strings"));
                        }
                    }
                }
                Ok(GossipMsg::Entries(entries))
            }
            other => Err(DecodeError::invalid(WHAT, format!("unknown kind {other}"))),
        }
    }

    /// Packs own messages for sending: runs of single entries become [`GossipMsg::Entries`] of
    /// up to [`ENTRIES_PER_GOSSIP_MAX`] entries and [`GOSSIP_BYTES_MAX`] bytes; everything else,
    /// and a run of one, passes as it is. Order is kept.
    pub fn pack(messages: impl IntoIterator<Item = GossipMsg>) -> Vec<GossipMsg> {
        // Per entry: its bytes plus at most 5 bytes of CBOR header; 16 for the envelope.
        let fits = |run: &[Vec<u8>], next: &[u8]| {
            run.len() < ENTRIES_PER_GOSSIP_MAX
                && 16 + run.iter().map(|e| e.len() + 5).sum::<usize>() + next.len() + 5
                    <= GOSSIP_BYTES_MAX
        };
        let close = |run: &mut Vec<Vec<u8>>, out: &mut Vec<GossipMsg>| match run.len() {
            0 => {}
            1 => out.push(GossipMsg::Entry(run.pop().expect("one entry"))),
            _ => out.push(GossipMsg::Entries(std::mem::take(run))),
        };
        let mut out = Vec::new();
        let mut run: Vec<Vec<u8>> = Vec::new();
        for msg in messages {
            match msg {
                GossipMsg::Entry(bytes) => {
                    if !fits(&run, &bytes) {
                        close(&mut run, &mut out);
                    }
                    run.push(bytes);
                }
                other => {
                    close(&mut run, &mut out);
                    out.push(other);
                }
            }
        }
        close(&mut run, &mut out);
        out
    }
}

/// The catch-up protocol (libp2p request-response).
pub const SYNC_PROTOCOL: &str = "/fabnode/ledger-sync/1";
/// Largest sync request accepted.
pub const SYNC_REQUEST_BYTES_MAX: usize = 1024;
/// Largest sync response accepted (a range of up to 512 entries of ≤16 KiB, or a heads list).
pub const SYNC_RESPONSE_BYTES_MAX: usize = 8 << 20;
/// Most feeds in a heads answer.
pub const HEADS_MAX: usize = 10_000;
/// Most entries in a range answer.
pub const RANGE_MAX: u64 = 512;

/// A catch-up request: CBOR `[1, 0]` (heads) or `[1, 1, feed, start, count]` (range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncRequest {
    /// Which feeds do you hold, and how many entries of each?
    Heads,
    /// Entries `start .. start + count` of `feed` (own or replica).
    Range {
        feed: [u8; 32],
        start: u64,
        count: u64,
    },
}

/// A catch-up answer: `[1, 0, [[feed, size], ...]]`, `[1, 1, feed, start, [entry, ...]]` or
/// `[1, 2, reason]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncResponse {
    Heads(Vec<([u8; 32], u64)>),
    Range {
        feed: [u8; 32],
        start: u64,
        entries: Vec<Vec<u8>>,
    },
    Refused(String),
}

const SYNC_WHAT: &str = "sync message";

/// Decodes a sync message's array of at most `max` bytes and checks its version; returns the
/// remaining fields (kind first) and the array's length.
fn open_sync(bytes: &[u8], max: usize) -> Result<(Fields, usize), DecodeError> {
    let value = cbor::decode_value(bytes, SYNC_WHAT, max)?;
    let Value::Array(items) = &value else {
        return Err(DecodeError::invalid(SYNC_WHAT, "expected an array"));
    };
    let len = items.len();
    let mut f = Fields::new(value, SYNC_WHAT, len)?;
    if f.u64("version")? != 1 {
        return Err(DecodeError::invalid(SYNC_WHAT, "unsupported version"));
    }
    Ok((f, len))
}

impl SyncRequest {
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            SyncRequest::Heads => vec![cbor::uint(1), cbor::uint(0)],
            SyncRequest::Range { feed, start, count } => {
                vec![
                    cbor::uint(1),
                    cbor::uint(1),
                    cbor::bytes(feed),
                    cbor::uint(*start),
                    cbor::uint(*count),
                ]
            }
        };
        cbor::encode_value(&Value::Array(v))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (mut f, len) = open_sync(bytes, SYNC_REQUEST_BYTES_MAX)?;
        match (f.u64("kind")?, len) {
            (0, 2) => Ok(SyncRequest::Heads),
            (1, 5) => Ok(SyncRequest::Range {
                feed: f.array("feed")?,
                start: f.u64("start")?,
                count: f.u64("count")?,
            }),
            _ => Err(DecodeError::invalid(SYNC_WHAT, "unknown request")),
        }
    }
}

impl SyncResponse {
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            SyncResponse::Heads(heads) => vec![
                cbor::uint(1),
                cbor::uint(0),
                Value::Array(
                    heads
                        .iter()
                        .map(|(f, n)| Value::Array(vec![cbor::bytes(f), cbor::uint(*n)]))
                        .collect(),
                ),
            ],
            SyncResponse::Range {
                feed,
                start,
                entries,
            } => vec![
                cbor::uint(1),
                cbor::uint(1),
                cbor::bytes(feed),
                cbor::uint(*start),
                Value::Array(entries.iter().map(|e| cbor::bytes(e)).collect()),
            ],
            SyncResponse::Refused(reason) => vec![cbor::uint(1), cbor::uint(2), cbor::text(reason)],
        };
        cbor::encode_value(&Value::Array(v))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (mut f, len) = open_sync(bytes, SYNC_RESPONSE_BYTES_MAX)?;
        let list = |v: Value, max: usize| match v {
            Value::Array(a) if a.len() <= max => Ok(a),
            _ => Err(DecodeError::invalid(
                SYNC_WHAT,
                format!("expected a list of at most {max}"),
            )),
        };
        match (f.u64("kind")?, len) {
            (0, 3) => {
                let mut heads = Vec::new();
                for item in list(f.value("heads")?, HEADS_MAX)? {
                    let mut h = Fields::new(item, SYNC_WHAT, 2)?;
                    heads.push((h.array("feed")?, h.u64("size")?));
                }
                Ok(SyncResponse::Heads(heads))
            }
            (1, 5) => {
                let feed = f.array("feed")?;
                let start = f.u64("start")?;
                let mut entries = Vec::new();
                for item in list(f.value("entries")?, RANGE_MAX as usize)? {
                    match item {
                        Value::Bytes(b) => entries.push(b),
                        _ => {
                            return Err(DecodeError::invalid(
                                SYNC_WHAT,
                                "range entries must be byte strings",
                            ));
                        }
                    }
                }
                Ok(SyncResponse::Range {
                    feed,
                    start,
                    entries,
                })
            }
            (2, 3) => Ok(SyncResponse::Refused(f.text("reason", 1024)?)),
            _ => Err(DecodeError::invalid(SYNC_WHAT, "unknown response")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_messages_round_trip_and_refuse_bad_input() {
        for r in [
            SyncRequest::Heads,
            SyncRequest::Range {
                feed: [3; 32],
                start: 7,
                count: 100,
            },
        ] {
            assert_eq!(SyncRequest::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            SyncResponse::Heads(vec![([1; 32], 5), ([2; 32], 0)]),
            SyncResponse::Range {
                feed: [4; 32],
                start: 9,
                entries: vec![vec![1, 2], vec![]],
            },
            SyncResponse::Refused("no".into()),
        ] {
            assert_eq!(SyncResponse::decode(&r.encode()).unwrap(), r);
        }
        // Wrong arity, unknown kinds, oversized lists and plain garbage are refused.
        let bad_req = cbor::encode_value(&Value::Array(vec![
            cbor::uint(1),
            cbor::uint(1),
            cbor::bytes(&[0; 32]),
        ]));
        assert!(SyncRequest::decode(&bad_req).is_err());
        assert!(
            SyncRequest::decode(&cbor::encode_value(&Value::Array(vec![
                cbor::uint(1),
                cbor::uint(9)
            ])))
            .is_err()
        );
        let too_many = SyncResponse::Range {
            feed: [0; 32],
            start: 0,
            entries: vec![vec![]; RANGE_MAX as usize + 1],
        };
        assert!(SyncResponse::decode(&too_many.encode()).is_err());
        assert!(SyncResponse::decode(b"\xff\xfe").is_err());
        assert!(SyncRequest::decode(&vec![0x80; 2000]).is_err());
    }
}
