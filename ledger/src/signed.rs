//! Signed objects that carry the exact bytes that were signed.
//!
//! A signature covers `"fabnode/v1/<kind>\0" || cbor(body)`. The domain prefix keeps a
//! signature made for one kind of object from being replayed as another. [`Signed<T>`] keeps
//! `cbor(body)` as received, so ids and re-verification never depend on re-encoding.

use ciborium::Value;

use crate::ContentId;
use crate::cbor::{self, Cbor, DecodeError, Fields};
use crate::identity::{Keypair, PublicKey};

/// A body that one key signs.
pub trait SignedBody: Cbor {
    /// The domain-separation kind, e.g. `"entry"`.
    const KIND: &'static str;
    /// The key that must have signed this body.
    fn signer(&self) -> Result<PublicKey, DecodeError>;
    /// Signatures nested inside this body (an entry's embedded job request): `(message,
    /// signature, key)`. Verified together with the body's own signature.
    fn inner_signatures(&self) -> Vec<(Vec<u8>, [u8; 64], PublicKey)> {
        Vec::new()
    }
}

/// `body` plus the exact `bytes` that were signed and the `signature`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    body: T,
    bytes: Vec<u8>,
    signature: [u8; 64],
}

pub(crate) fn signing_message(kind: &str, bytes: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(12 + kind.len() + bytes.len());
    msg.extend_from_slice(b"fabnode/v1/");
    msg.extend_from_slice(kind.as_bytes());
    msg.push(0);
    msg.extend_from_slice(bytes);
    msg
}

impl<T: SignedBody> Signed<T> {
    /// Signs `body` with `key`. The caller guarantees `key` is `body.signer()`.
    pub fn sign(body: T, key: &Keypair) -> Self {
        let bytes = body.to_cbor();
        let signature = key.sign_raw(&signing_message(T::KIND, &bytes));
        Signed {
            body,
            bytes,
            signature,
        }
    }

    /// Decodes `[bytes, signature]`, decodes the body canonically and checks the signature
    /// against the body's own signer.
    pub fn decode_verified(encoded: &[u8]) -> Result<Self, SignedError> {
        let value = cbor::decode_value(encoded, T::WHAT, T::BYTES_MAX + 128)?;
        Self::from_value_verified(value)
    }

    pub fn from_value_verified(value: Value) -> Result<Self, SignedError> {
        let s = Self::from_value_unverified(value)?;
        if !s
            .body
            .signer()?
            .verify_raw(&signing_message(T::KIND, &s.bytes), &s.signature)
        {
            return Err(SignedError::BadSignature { what: T::WHAT });
        }
        for (message, signature, key) in s.body.inner_signatures() {
            if !key.verify_raw(&message, &signature) {
                return Err(SignedError::BadInnerSignature { what: T::WHAT });
            }
        }
        Ok(s)
    }

    /// Decodes without checking the signature: only for batch verification, which checks every
    /// signature of a batch at once right after.
    pub(crate) fn from_value_unverified(value: Value) -> Result<Self, SignedError> {
        let mut f = Fields::new(value, T::WHAT, 2)?;
        let bytes = f.bytes("body", T::BYTES_MAX)?;
        let signature = f.array::<64>("signature")?;
        let body = T::from_cbor(&bytes)?;
        Ok(Signed {
            body,
            bytes,
            signature,
        })
    }

    /// The exact message the signature covers.
    pub(crate) fn message(&self) -> Vec<u8> {
        signing_message(T::KIND, &self.bytes)
    }

    pub fn to_value(&self) -> Value {
        Value::Array(vec![cbor::bytes(&self.bytes), cbor::bytes(&self.signature)])
    }

    /// The wire form: CBOR `[bytes, signature]`.
    pub fn encode(&self) -> Vec<u8> {
        cbor::encode_value(&self.to_value())
    }

    pub fn body(&self) -> &T {
        &self.body
    }

    /// The exact bytes that were signed (`cbor(body)`).
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The content id of the signed bytes. Ed25519 signatures are deterministic and strict
    /// verification admits one signature per message, so this names the signed object too.
    pub fn id(&self) -> ContentId {
        ContentId::of(&self.bytes)
    }
}

/// Why a signed object was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignedError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{what}: signature does not verify against the signer's key")]
    BadSignature { what: &'static str },
    #[error("{what}: an embedded signed object's signature does not verify")]
    BadInnerSignature { what: &'static str },
}
