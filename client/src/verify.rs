//! Checking a job's answer without trusting the node that gave it.

use fab_inference::Tensor;
use fab_inference::tensor::digest_pairs;
use fab_ledger::{ContentId, EntryBody, SignedEntry};
use thiserror::Error;

use crate::types::JobResult;

/// Why an answer does not verify.
#[derive(Debug, Error)]
#[error("the job's answer does not verify: {0}")]
pub struct VerifyError(String);

fn fail<T>(why: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError(why.into()))
}

/// A job result whose receipt has been checked on this side.
#[derive(Debug)]
pub struct Verified {
    pub job_id: ContentId,
    pub entry: SignedEntry,
}

/// Checks a job answer: the receipt's signature and encoding, that it records this job and
/// this input (`input_name`, when the caller knows it), that the output digest it signs is the
/// digest of the outputs received, and who ran it: `executor` (a peer id) when the job was
/// sent to a peer, otherwise the node that signed the job itself.
pub fn job_result(
    result: &JobResult,
    input_name: Option<&str>,
    input: &Tensor,
    executor: Option<&str>,
) -> Result<Verified, VerifyError> {
    let Ok(bytes) = hex::decode(&result.receipt.raw) else {
        return fail("the receipt is not hex");
    };
    let entry = SignedEntry::decode_verified(&bytes)
        .map_err(|e| VerifyError(format!("the receipt entry does not verify: {e}")))?;
    let EntryBody::Execution(r) = &entry.body().body else {
        return fail("the receipt is not an execution entry");
    };
    if r.job.id() != result.job_id {
        return fail(format!(
            "the receipt records job {}, not {}",
            r.job.id(),
            result.job_id
        ));
    }
    match executor {
        Some(peer) => {
            let signer = entry.body().feed.peer_id();
            if signer != peer {
                return fail(format!(
                    "the receipt is signed by {signer}, not by {peer} that was asked to run the job"
                ));
            }
        }
        None => {
            if r.job.body().requester != entry.body().feed {
                return fail("this node's receipt names another requester");
            }
        }
    }
    if let Some(name) = input_name {
        let digest = ContentId(digest_pairs([(name, input)].into_iter()));
        if digest != r.input_digest {
            return fail("the receipt's input digest does not match the input sent");
        }
    }
    let outputs = result.outputs.iter().map(|o| (o.name.as_str(), &o.tensor));
    if Some(ContentId(digest_pairs(outputs))) != r.output_digest {
        return fail("the receipt's output digest does not match the outputs received");
    }
    Ok(Verified {
        job_id: result.job_id,
        entry,
    })
}
