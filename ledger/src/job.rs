//! The job request, signed by the node that asks for the job.

use ciborium::Value;

use crate::cbor::{self, Cbor, DecodeError, Fields};
use crate::signed::{Signed, SignedBody};
use crate::{ContentId, PublicKey, WIRE_VERSION};

/// Longest model name accepted, in bytes.
pub const MODEL_NAME_BYTES_MAX: usize = 128;

/// What a requester asks to have run. The job id is the content id of its signed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRequest {
    pub requester: PublicKey,
    /// Distinguishes otherwise identical requests from one requester.
    pub nonce: u64,
    pub model: String,
    pub model_digest: ContentId,
    pub input_digest: ContentId,
    pub input_bytes: u64,
    pub created_ms: u64,
    /// Absolute deadline, milliseconds since the Unix epoch.
    pub deadline_ms: u64,
}

pub type SignedJobRequest = Signed<JobRequest>;

impl Cbor for JobRequest {
    const WHAT: &'static str = "job request";
    const BYTES_MAX: usize = 1024;

    fn to_value(&self) -> Value {
        Value::Array(vec![
            cbor::uint(WIRE_VERSION),
            cbor::bytes(&self.requester.to_bytes()),
            cbor::uint(self.nonce),
            cbor::text(&self.model),
            cbor::bytes(self.model_digest.as_bytes()),
            cbor::bytes(self.input_digest.as_bytes()),
            cbor::uint(self.input_bytes),
            cbor::uint(self.created_ms),
            cbor::uint(self.deadline_ms),
        ])
    }

    fn from_value(value: Value) -> Result<Self, DecodeError> {
        let mut f = Fields::new(value, Self::WHAT, 9)?;
        let version = f.u64("version")?;
        if version != WIRE_VERSION {
            return Err(DecodeError::invalid(
                Self::WHAT,
                format!("unsupported version {version}"),
            ));
        }
        let requester = PublicKey::from_bytes(&f.array("requester")?)
            .ok_or_else(|| DecodeError::invalid(Self::WHAT, "requester is not a valid key"))?;
        Ok(JobRequest {
            requester,
            nonce: f.u64("nonce")?,
            model: f.text("model", MODEL_NAME_BYTES_MAX)?,
            model_digest: ContentId(f.array("model_digest")?),
            input_digest: ContentId(f.array("input_digest")?),
            input_bytes: f.u64("input_bytes")?,
            created_ms: f.u64("created_ms")?,
            deadline_ms: f.u64("deadline_ms")?,
        })
    }
}

impl SignedBody for JobRequest {
    const KIND: &'static str = "job";
    fn signer(&self) -> Result<PublicKey, DecodeError> {
        Ok(self.requester)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;
    use crate::signed::SignedError;

    fn request(kp: &Keypair) -> JobRequest {
        JobRequest {
            requester: kp.public(),
            nonce: 7,
            model: "digits".into(),
            model_digest: ContentId::of(b"model"),
            input_digest: ContentId::of(b"input"),
            input_bytes: 256,
            created_ms: 1_000,
            deadline_ms: 31_000,
        }
    }

    #[test]
    fn sign_encode_decode_verify() {
        let kp = Keypair::from_secret([1; 32]);
        let signed = Signed::sign(request(&kp), &kp);
        let back = SignedJobRequest::decode_verified(&signed.encode()).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.id(), signed.id());
    }

    #[test]
    fn forged_and_tampered_requests_are_refused() {
        let kp = Keypair::from_secret([1; 32]);
        let other = Keypair::from_secret([2; 32]);
        // Signed by a key that is not the named requester.
        let forged = Signed::sign(request(&kp), &other);
        assert!(matches!(
            SignedJobRequest::decode_verified(&forged.encode()),
            Err(SignedError::BadSignature { .. })
        ));
        // Every single-bit flip of the wire form is refused.
        let wire = Signed::sign(request(&kp), &kp).encode();
        for i in 0..wire.len() {
            for bit in 0..8 {
                let mut bad = wire.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    SignedJobRequest::decode_verified(&bad).is_err(),
                    "flip {i}:{bit}"
                );
            }
        }
    }
}
