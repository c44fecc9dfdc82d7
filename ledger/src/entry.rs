//! Feed entries and their verification.
//!
//! An entry is `[version, feed, seq, prev_entry_id, kind, body, time_ms]`, signed by the feed's
//! key. `prev_entry_id` is the id of entry `seq - 1` (null for `seq = 0`), so the entries of a
//! feed form a hash chain; the entry id is the BLAKE3 of the signed bytes.

use ciborium::Value;
use thiserror::Error;

use crate::cbor::{self, Cbor, DecodeError, Fields};
use crate::signed::{Signed, SignedBody, SignedError};
use crate::{ContentId, PublicKey, SignedJobRequest, WIRE_VERSION};

/// Longest error text kept in a receipt.
pub const ERROR_TEXT_BYTES_MAX: usize = 1024;
/// Longest engine name, version or architecture string.
const LABEL_BYTES_MAX: usize = 64;

/// Entry kind numbers on the wire.
pub mod kind {
    pub const EXECUTION: u64 = 1;
}

/// One feed entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub feed: PublicKey,
    pub seq: u64,
    pub prev: Option<ContentId>,
    pub body: EntryBody,
    pub time_ms: u64,
}

pub type SignedEntry = Signed<Entry>;

/// What an entry records.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum EntryBody {
    Execution(Box<ExecutionReceipt>),
    /// A kind this version does not know; kept so the chain still verifies.
    Unknown {
        kind: u64,
        value: Value,
    },
}

impl EntryBody {
    pub fn kind(&self) -> u64 {
        match self {
            EntryBody::Execution(_) => kind::EXECUTION,
            EntryBody::Unknown { kind, .. } => *kind,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            EntryBody::Execution(_) => "execution",
            EntryBody::Unknown { .. } => "unknown",
        }
    }
}

/// How an execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecStatus {
    Ok,
    Failed,
}

impl ExecStatus {
    fn code(self) -> u64 {
        match self {
            ExecStatus::Ok => 0,
            ExecStatus::Failed => 1,
        }
    }
}

/// Where the time went, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timings {
    /// Waiting for an inference worker.
    pub queued_us: u64,
    /// Running the model.
    pub run_us: u64,
    /// From accepting the job to building this receipt.
    pub total_us: u64,
}

/// What the execution consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Metering {
    pub cpu_time_us: u64,
    pub wall_time_us: u64,
    /// Peak resident memory of the executing process.
    pub peak_rss_kib: u64,
}

/// What must match for two runs to give bit-identical outputs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Determinism {
    pub engine: String,
    pub engine_version: String,
    pub arch: String,
    pub threads: u64,
}

impl Determinism {
    /// `tract-0.23.9/x86_64/t1`: equal strings promise equal outputs for equal inputs.
    pub fn class(&self) -> String {
        format!(
            "{}-{}/{}/t{}",
            self.engine, self.engine_version, self.arch, self.threads
        )
    }
}

/// The record of one execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionReceipt {
    pub job: SignedJobRequest,
    pub model_digest: ContentId,
    pub input_digest: ContentId,
    /// `None` when the execution failed.
    pub output_digest: Option<ContentId>,
    pub status: ExecStatus,
    /// Empty when `status` is ok.
    pub error: String,
    pub timings: Timings,
    pub metering: Metering,
    pub determinism: Determinism,
}

impl ExecutionReceipt {
    fn to_value(&self) -> Value {
        let t = &self.timings;
        let m = &self.metering;
        let d = &self.determinism;
        Value::Array(vec![
            self.job.to_value(),
            cbor::bytes(self.model_digest.as_bytes()),
            cbor::bytes(self.input_digest.as_bytes()),
            cbor::opt_bytes(self.output_digest.as_ref().map(|d| &d.0[..])),
            cbor::uint(self.status.code()),
            cbor::text(&self.error),
            Value::Array(vec![
                cbor::uint(t.queued_us),
                cbor::uint(t.run_us),
                cbor::uint(t.total_us),
            ]),
            Value::Array(vec![
                cbor::uint(m.cpu_time_us),
                cbor::uint(m.wall_time_us),
                cbor::uint(m.peak_rss_kib),
            ]),
            Value::Array(vec![
                cbor::text(&d.engine),
                cbor::text(&d.engine_version),
                cbor::text(&d.arch),
                cbor::uint(d.threads),
            ]),
        ])
    }

    fn from_value(value: Value) -> Result<Self, DecodeError> {
        const WHAT: &str = "execution receipt";
        let mut f = Fields::new(value, WHAT, 9)?;
        // The job request's signature is checked with the entry's (SignedBody::inner_signatures),
        // so a batch verifier can check both in one batch.
        let job =
            SignedJobRequest::from_value_unverified(f.value("job")?).map_err(|e| match e {
                SignedError::Decode(d) => d,
                other => DecodeError::invalid(WHAT, other.to_string()),
            })?;
        let model_digest = ContentId(f.array("model_digest")?);
        let input_digest = ContentId(f.array("input_digest")?);
        let output_digest = f.opt_array("output_digest")?.map(ContentId);
        let status = match f.u64("status")? {
            0 => ExecStatus::Ok,
            1 => ExecStatus::Failed,
            other => {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!("unknown status {other}"),
                ));
            }
        };
        let error = f.text("error", ERROR_TEXT_BYTES_MAX)?;
        let mut t = Fields::new(f.value("timings")?, WHAT, 3)?;
        let timings = Timings {
            queued_us: t.u64("queued_us")?,
            run_us: t.u64("run_us")?,
            total_us: t.u64("total_us")?,
        };
        let mut m = Fields::new(f.value("metering")?, WHAT, 3)?;
        let metering = Metering {
            cpu_time_us: m.u64("cpu_time_us")?,
            wall_time_us: m.u64("wall_time_us")?,
            peak_rss_kib: m.u64("peak_rss_kib")?,
        };
        let mut d = Fields::new(f.value("determinism")?, WHAT, 4)?;
        let determinism = Determinism {
            engine: d.text("engine", LABEL_BYTES_MAX)?,
            engine_version: d.text("engine_version", LABEL_BYTES_MAX)?,
            arch: d.text("arch", LABEL_BYTES_MAX)?,
            threads: d.u64("threads")?,
        };
        let receipt = ExecutionReceipt {
            job,
            model_digest,
            input_digest,
            output_digest,
            status,
            error,
            timings,
            metering,
            determinism,
        };
        receipt
            .check()
            .map_err(|detail| DecodeError::invalid(WHAT, detail))?;
        Ok(receipt)
    }

    /// Internal consistency: digests match the job, status matches the output.
    fn check(&self) -> Result<(), String> {
        let job = self.job.body();
        if self.model_digest != job.model_digest {
            return Err("model digest differs from the job request's".into());
        }
        if self.input_digest != job.input_digest {
            return Err("input digest differs from the job request's".into());
        }
        match (
            self.status,
            self.output_digest.is_some(),
            self.error.is_empty(),
        ) {
            (ExecStatus::Ok, true, true) | (ExecStatus::Failed, false, false) => Ok(()),
            (ExecStatus::Ok, _, _) => Err("status ok needs an output digest and no error".into()),
            (ExecStatus::Failed, _, _) => Err("status failed needs an error and no output".into()),
        }
    }
}

impl Cbor for Entry {
    const WHAT: &'static str = "entry";
    const BYTES_MAX: usize = 16 * 1024;

    fn to_value(&self) -> Value {
        let body = match &self.body {
            EntryBody::Execution(r) => r.to_value(),
            EntryBody::Unknown { value, .. } => value.clone(),
        };
        Value::Array(vec![
            cbor::uint(WIRE_VERSION),
            cbor::bytes(&self.feed.to_bytes()),
            cbor::uint(self.seq),
            cbor::opt_bytes(self.prev.as_ref().map(|p| &p.0[..])),
            cbor::uint(self.body.kind()),
            body,
            cbor::uint(self.time_ms),
        ])
    }

    fn from_value(value: Value) -> Result<Self, DecodeError> {
        let mut f = Fields::new(value, Self::WHAT, 7)?;
        let version = f.u64("version")?;
        if version != WIRE_VERSION {
            return Err(DecodeError::invalid(
                Self::WHAT,
                format!("unsupported version {version}"),
            ));
        }
        let feed = PublicKey::from_bytes(&f.array("feed")?)
            .ok_or_else(|| DecodeError::invalid(Self::WHAT, "feed is not a valid key"))?;
        let seq = f.u64("seq")?;
        let prev = f.opt_array("prev_entry_id")?.map(ContentId);
        if (seq == 0) != prev.is_none() {
            return Err(DecodeError::invalid(
                Self::WHAT,
                "prev_entry_id must be null exactly for seq 0",
            ));
        }
        let kind = f.u64("kind")?;
        let raw = f.value("body")?;
        let body = match kind {
            kind::EXECUTION => EntryBody::Execution(Box::new(ExecutionReceipt::from_value(raw)?)),
            kind => EntryBody::Unknown { kind, value: raw },
        };
        Ok(Entry {
            feed,
            seq,
            prev,
            body,
            time_ms: f.u64("time_ms")?,
        })
    }
}

impl SignedBody for Entry {
    const KIND: &'static str = "entry";
    fn signer(&self) -> Result<PublicKey, DecodeError> {
        Ok(self.feed)
    }
    fn inner_signatures(&self) -> Vec<(Vec<u8>, [u8; 64], PublicKey)> {
        match &self.body {
            EntryBody::Execution(r) => {
                vec![(r.job.message(), *r.job.signature(), r.job.body().requester)]
            }
            EntryBody::Unknown { .. } => Vec::new(),
        }
    }
}

/// Checks every signature of already-decoded entries (each entry's and its embedded job
/// request's) in one ed25519 batch. `false` if any is bad or any key is weak; it does not say
/// which (re-check one by one for that).
pub fn verify_signatures_batch(entries: &[SignedEntry]) -> bool {
    let mut messages = Vec::with_capacity(entries.len() * 2);
    let mut signatures = Vec::with_capacity(entries.len() * 2);
    let mut keys = Vec::with_capacity(entries.len() * 2);
    for e in entries {
        messages.push(e.message());
        signatures.push(ed25519_dalek::Signature::from_bytes(e.signature()));
        keys.push(*e.body().feed.dalek());
        for (m, s, k) in e.body().inner_signatures() {
            messages.push(m);
            signatures.push(ed25519_dalek::Signature::from_bytes(&s));
            keys.push(*k.dalek());
        }
    }
    if keys.iter().any(|k| k.is_weak()) {
        return false;
    }
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    ed25519_dalek::verify_batch(&refs, &signatures, &keys).is_ok()
}

/// Decodes and verifies many encoded entries at once, like [`SignedEntry::decode_verified`] on
/// each, with all their signatures (entries' and embedded job requests') checked in one ed25519
/// batch: about half the cost per signature for a few dozen entries. On failure the error names
/// the first bad entry by index, found with the strict one-by-one rules. Nothing is said about
/// how the entries relate to each other (feed, order): the caller checks what it needs.
///
/// As with [`verify_batch`], the batch's cofactored equation accepts a few non-canonical
/// signatures that `verify_strict` refuses; only the key's holder can make one, and it can never
/// accept a forgery.
pub fn decode_verified_many(encoded: &[Vec<u8>]) -> Result<Vec<SignedEntry>, (usize, SignedError)> {
    let mut decoded = Vec::with_capacity(encoded.len());
    for (i, bytes) in encoded.iter().enumerate() {
        let value = crate::cbor::decode_value(bytes, Entry::WHAT, Entry::BYTES_MAX + 128)
            .map_err(|d| (i, SignedError::Decode(d)))?;
        decoded.push(SignedEntry::from_value_unverified(value).map_err(|e| (i, e))?);
    }
    if decoded.len() > 1 && verify_signatures_batch(&decoded) {
        return Ok(decoded);
    }
    for (i, bytes) in encoded.iter().enumerate() {
        SignedEntry::decode_verified(bytes).map_err(|e| (i, e))?;
    }
    Ok(decoded)
}

/// Verifies many encoded entries of one feed in order, like [`FeedVerifier::push`] on each,
/// but checks all their signatures (entries' and embedded job requests') in one ed25519 batch.
///
/// Batch verification uses the cofactored equation, which accepts a few non-canonical
/// signatures that `verify_strict` refuses; it can never accept a forgery. If the batch fails,
/// every signature is re-checked strictly so the error names the first bad entry exactly as the
/// one-by-one path does. Weak (small-order) keys are refused before batching.
pub fn verify_batch(
    verifier: &mut FeedVerifier,
    encoded: &[&[u8]],
) -> Result<Vec<SignedEntry>, VerifyError> {
    let start = verifier.next_seq;
    let mut decoded = Vec::with_capacity(encoded.len());
    for (i, bytes) in encoded.iter().enumerate() {
        let seq = start + i as u64;
        let value =
            crate::cbor::decode_value(bytes, Entry::WHAT, Entry::BYTES_MAX + 128).map_err(|d| {
                VerifyError {
                    seq,
                    kind: VerifyErrorKind::Decode(d),
                }
            })?;
        let e = SignedEntry::from_value_unverified(value).map_err(|e| VerifyError {
            seq,
            kind: e.into(),
        })?;
        decoded.push(e);
    }
    let batch_ok = verify_signatures_batch(&decoded);
    let mut out = Vec::with_capacity(decoded.len());
    for (e, bytes) in decoded.into_iter().zip(encoded) {
        if batch_ok {
            verifier.check_chain(&e)?;
            out.push(e);
        } else {
            // Name the first bad entry with the strict, one-by-one rules.
            out.push(verifier.push(bytes)?);
        }
    }
    Ok(out)
}

/// Which check an entry failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyErrorKind {
    #[error("cannot decode: {0}")]
    Decode(DecodeError),
    #[error("signature does not verify against the feed key")]
    BadSignature,
    #[error("the embedded job request's signature does not verify")]
    BadJobSignature,
    #[error("belongs to feed {found}, not {expected}")]
    WrongFeed { expected: String, found: String },
    #[error("stored at position {position} but says seq {found}")]
    SeqMismatch { position: u64, found: u64 },
    #[error("prev_entry_id {found} does not match the previous entry's id {expected}")]
    BrokenLink { expected: String, found: String },
    #[error("{0}")]
    Checkpoint(String),
}

impl From<SignedError> for VerifyErrorKind {
    fn from(e: SignedError) -> Self {
        match e {
            SignedError::Decode(d) => VerifyErrorKind::Decode(d),
            SignedError::BadSignature { .. } => VerifyErrorKind::BadSignature,
            SignedError::BadInnerSignature { .. } => VerifyErrorKind::BadJobSignature,
        }
    }
}

/// The first entry of a feed that failed verification, and why.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("entry {seq} is bad: {kind}")]
pub struct VerifyError {
    pub seq: u64,
    pub kind: VerifyErrorKind,
}

/// Checks entries of one feed in order, starting at any position whose predecessor is known.
#[derive(Debug, Clone)]
pub struct FeedVerifier {
    feed: PublicKey,
    next_seq: u64,
    head: Option<ContentId>,
}

impl FeedVerifier {
    /// A verifier for the feed from its first entry.
    pub fn new(feed: PublicKey) -> Self {
        FeedVerifier {
            feed,
            next_seq: 0,
            head: None,
        }
    }

    /// A verifier that trusts `head` as the id of entry `next_seq - 1`.
    pub fn resume(feed: PublicKey, next_seq: u64, head: Option<ContentId>) -> Self {
        FeedVerifier {
            feed,
            next_seq,
            head,
        }
    }

    /// Verifies the next entry: decoding, signature, feed, sequence and hash link.
    pub fn push(&mut self, encoded: &[u8]) -> Result<SignedEntry, VerifyError> {
        let seq = self.next_seq;
        let entry = SignedEntry::decode_verified(encoded).map_err(|e| VerifyError {
            seq,
            kind: e.into(),
        })?;
        self.check_chain(&entry)?;
        Ok(entry)
    }

    /// Takes the next entry whose signatures are already checked: feed, sequence and hash link
    /// only. Every way to obtain a [`SignedEntry`] outside this crate (decoding with
    /// verification, [`decode_verified_many`], signing) checks its signatures, so a replica that
    /// receives entries from a validator need not check them twice.
    pub fn push_checked(&mut self, entry: &SignedEntry) -> Result<(), VerifyError> {
        self.check_chain(entry)
    }

    /// The chain rules for an entry whose signatures are already checked.
    fn check_chain(&mut self, entry: &SignedEntry) -> Result<(), VerifyError> {
        let seq = self.next_seq;
        let err = |kind| VerifyError { seq, kind };
        let body = entry.body();
        if body.feed != self.feed {
            return Err(err(VerifyErrorKind::WrongFeed {
                expected: self.feed.peer_id(),
                found: body.feed.peer_id(),
            }));
        }
        if body.seq != seq {
            return Err(err(VerifyErrorKind::SeqMismatch {
                position: seq,
                found: body.seq,
            }));
        }
        if body.prev != self.head {
            let show = |id: Option<ContentId>| id.map_or_else(|| "null".to_owned(), |i| i.short());
            return Err(err(VerifyErrorKind::BrokenLink {
                expected: show(self.head),
                found: show(body.prev),
            }));
        }
        self.next_seq += 1;
        self.head = Some(entry.id());
        Ok(())
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn head(&self) -> Option<ContentId> {
        self.head
    }
}

/// Verifies a whole feed from its first entry; returns the number of entries and the head id.
pub fn verify_feed<'a>(
    feed: PublicKey,
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(u64, Option<ContentId>), VerifyError> {
    let mut v = FeedVerifier::new(feed);
    for bytes in entries {
        v.push(bytes)?;
    }
    Ok((v.next_seq(), v.head()))
}
