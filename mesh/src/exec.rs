//! `/fabnode/exec/1`: run a job on a chosen peer (libp2p request-response, one CBOR value per
//! stream direction).
//!
//! | message | CBOR |
//! |---|---|
//! | describe request | `[1, 0, model]` |
//! | run request | `[1, 1, signed job request, [[input name, .npy bytes], ...]]` |
//! | described | `[1, 0, model, model digest (32 bytes), [input name, ...], [output name, ...]]` |
//! | ran | `[1, 1, signed ledger entry, [[output name, .npy bytes], ...]]` |
//! | refused | `[1, 2, code, message]` |
//!
//! The requester signs the job (model digest and input digest included) before anything goes
//! over; the executor verifies it, runs it and answers with its own signed ledger entry, which
//! the requester verifies against the job before it uses the outputs. Tensors stay opaque bytes
//! here: the node decodes them with its own limits.

use ciborium::Value;
use fab_ledger::cbor::{self, Cbor, DecodeError, Fields};
use fab_ledger::{Entry, JobRequest};

/// The protocol id.
pub const EXEC_PROTOCOL: &str = "/fabnode/exec/1";
/// Largest run request (signed job and inputs) accepted from the wire.
pub const EXEC_REQUEST_BYTES_MAX: usize = 16 << 20;
/// Largest answer accepted from the wire.
pub const EXEC_RESPONSE_BYTES_MAX: usize = 16 << 20;
/// Most tensors on either side of a job.
pub const TENSORS_MAX: usize = 64;
/// Longest tensor or model name.
pub const NAME_BYTES_MAX: usize = 256;
/// Longest refusal message.
pub const MESSAGE_BYTES_MAX: usize = 4096;

/// Longest signed job request (body, signature and envelope).
const SIGNED_JOB_BYTES_MAX: usize = JobRequest::BYTES_MAX + 256;
/// Longest signed entry.
const SIGNED_ENTRY_BYTES_MAX: usize = Entry::BYTES_MAX + 256;

const WHAT: &str = "exec message";

/// A named tensor in `.npy` form.
pub type NamedBytes = (String, Vec<u8>);

/// What the requester asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecRequest {
    /// Which version of `model` do you hold, and what are its inputs and outputs called?
    Describe { model: String },
    /// Run this signed job on these inputs.
    Run {
        job: Vec<u8>,
        inputs: Vec<NamedBytes>,
    },
}

/// What the executor answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecResponse {
    Described {
        model: String,
        digest: [u8; 32],
        inputs: Vec<String>,
        outputs: Vec<String>,
    },
    /// The job ran (or failed while running) and was recorded: the executor's signed entry, and
    /// the outputs when it succeeded.
    Ran {
        entry: Vec<u8>,
        outputs: Vec<NamedBytes>,
    },
    /// The job was not run. `code` is the same stable code the HTTP API uses.
    Refused { code: String, message: String },
}

fn open(bytes: &[u8], max: usize) -> Result<(Fields, usize, u64), DecodeError> {
    let value = cbor::decode_value(bytes, WHAT, max)?;
    let Value::Array(items) = &value else {
        return Err(DecodeError::invalid(WHAT, "expected an array"));
    };
    let len = items.len();
    let mut f = Fields::new(value, WHAT, len)?;
    if f.u64("version")? != 1 {
        return Err(DecodeError::invalid(WHAT, "unsupported version"));
    }
    let kind = f.u64("kind")?;
    Ok((f, len, kind))
}

fn list(v: Value, field: &str) -> Result<Vec<Value>, DecodeError> {
    match v {
        Value::Array(a) if a.len() <= TENSORS_MAX => Ok(a),
        _ => Err(DecodeError::invalid(
            WHAT,
            format!("{field}: expected a list of at most {TENSORS_MAX}"),
        )),
    }
}

fn encode_named(items: &[NamedBytes]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|(n, b)| Value::Array(vec![cbor::text(n), cbor::bytes(b)]))
            .collect(),
    )
}

fn decode_named(v: Value, field: &str, max: usize) -> Result<Vec<NamedBytes>, DecodeError> {
    list(v, field)?
        .into_iter()
        .map(|item| {
            let mut t = Fields::new(item, WHAT, 2)?;
            Ok((t.text("name", NAME_BYTES_MAX)?, t.bytes("tensor", max)?))
        })
        .collect()
}

fn encode_names(items: &[String]) -> Value {
    Value::Array(items.iter().map(|n| cbor::text(n)).collect())
}

fn decode_names(v: Value, field: &str) -> Result<Vec<String>, DecodeError> {
    list(v, field)?
        .into_iter()
        .map(|item| match item {
            Value::Text(t) if t.len() <= NAME_BYTES_MAX => Ok(t),
            _ => Err(DecodeError::invalid(
                WHAT,
                format!("{field}: names are text of at most {NAME_BYTES_MAX} bytes"),
            )),
        })
        .collect()
}

impl ExecRequest {
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            ExecRequest::Describe { model } => {
                vec![cbor::uint(1), cbor::uint(0), cbor::text(model)]
            }
            ExecRequest::Run { job, inputs } => vec![
                cbor::uint(1),
                cbor::uint(1),
                cbor::bytes(job),
                encode_named(inputs),
            ],
        };
        cbor::encode_value(&Value::Array(v))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (mut f, len, kind) = open(bytes, EXEC_REQUEST_BYTES_MAX)?;
        match (kind, len) {
            (0, 3) => Ok(ExecRequest::Describe {
                model: f.text("model", NAME_BYTES_MAX)?,
            }),
            (1, 4) => Ok(ExecRequest::Run {
                job: f.bytes("job", SIGNED_JOB_BYTES_MAX)?,
                inputs: decode_named(f.value("inputs")?, "inputs", EXEC_REQUEST_BYTES_MAX)?,
            }),
            _ => Err(DecodeError::invalid(WHAT, "unknown request")),
        }
    }
}

impl ExecResponse {
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            ExecResponse::Described {
                model,
                digest,
                inputs,
                outputs,
            } => vec![
                cbor::uint(1),
                cbor::uint(0),
                cbor::text(model),
                cbor::bytes(digest),
                encode_names(inputs),
                encode_names(outputs),
            ],
            ExecResponse::Ran { entry, outputs } => vec![
                cbor::uint(1),
                cbor::uint(1),
                cbor::bytes(entry),
                encode_named(outputs),
            ],
            ExecResponse::Refused { code, message } => vec![
                cbor::uint(1),
                cbor::uint(2),
                cbor::text(code),
                cbor::text(message),
            ],
        };
        cbor::encode_value(&Value::Array(v))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (mut f, len, kind) = open(bytes, EXEC_RESPONSE_BYTES_MAX)?;
        match (kind, len) {
            (0, 6) => Ok(ExecResponse::Described {
                model: f.text("model", NAME_BYTES_MAX)?,
                digest: f.array("digest")?,
                inputs: decode_names(f.value("inputs")?, "inputs")?,
                outputs: decode_names(f.value("outputs")?, "outputs")?,
            }),
            (1, 4) => Ok(ExecResponse::Ran {
                entry: f.bytes("entry", SIGNED_ENTRY_BYTES_MAX)?,
                outputs: decode_named(f.value("outputs")?, "outputs", EXEC_RESPONSE_BYTES_MAX)?,
            }),
            (2, 4) => Ok(ExecResponse::Refused {
                code: f.text("code", NAME_BYTES_MAX)?,
                message: f.text("message", MESSAGE_BYTES_MAX)?,
            }),
            _ => Err(DecodeError::invalid(WHAT, "unknown response")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_messages_round_trip() {
        for r in [
            ExecRequest::Describe {
                model: "digits".into(),
            },
            ExecRequest::Run {
                job: vec![1, 2, 3],
                inputs: vec![("input".into(), vec![0x93, 0x4e])],
            },
        ] {
            assert_eq!(ExecRequest::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            ExecResponse::Described {
                model: "digits".into(),
                digest: [7; 32],
                inputs: vec!["input".into()],
                outputs: vec!["probabilities".into()],
            },
            ExecResponse::Ran {
                entry: vec![9; 40],
                outputs: vec![("probabilities".into(), vec![1; 10])],
            },
            ExecResponse::Refused {
                code: "unknown_model".into(),
                message: "no model named x".into(),
            },
        ] {
            assert_eq!(ExecResponse::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn malformed_and_oversized_exec_messages_are_refused() {
        // Wrong arity, unknown kind, wrong version, garbage.
        let arr = |v: Vec<Value>| cbor::encode_value(&Value::Array(v));
        assert!(ExecRequest::decode(&arr(vec![cbor::uint(1), cbor::uint(0)])).is_err());
        assert!(
            ExecRequest::decode(&arr(vec![cbor::uint(1), cbor::uint(5), cbor::text("m")])).is_err()
        );
        assert!(
            ExecRequest::decode(&arr(vec![cbor::uint(2), cbor::uint(0), cbor::text("m")])).is_err()
        );
        assert!(ExecResponse::decode(b"\xff\x00\x01").is_err());
        // Too many tensors.
        let many = ExecRequest::Run {
            job: vec![],
            inputs: vec![("x".into(), vec![]); TENSORS_MAX + 1],
        };
        assert!(ExecRequest::decode(&many.encode()).is_err());
        // A name over the limit.
        let long = ExecResponse::Refused {
            code: "x".repeat(NAME_BYTES_MAX + 1),
            message: String::new(),
        };
        assert!(ExecResponse::decode(&long.encode()).is_err());
        // A job field larger than any signed job request.
        let big_job = ExecRequest::Run {
            job: vec![0; 4096],
            inputs: vec![],
        };
        assert!(ExecRequest::decode(&big_job.encode()).is_err());
        // Over the message size limit.
        assert!(ExecRequest::decode(&vec![0u8; EXEC_REQUEST_BYTES_MAX + 1]).is_err());
    }
}
