//! Talking to a running node's control API.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fab_inference::Tensor;
use fab_inference::tensor::digest_named;
use fab_ledger::{ContentId, EntryBody, SignedEntry};
use serde_json::Value;

/// Finds the API: `--api`, else `FABNODE_API`, else the address a running node wrote to the data
/// dir, else the configured listen address.
pub fn api_base(
    flag: Option<&str>,
    data_dir: &Path,
    config_listen: std::net::SocketAddr,
) -> String {
    let raw = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("FABNODE_API").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string(fab_node::datadir::api_addr_path(data_dir))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| config_listen.to_string());
    if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.trim_end_matches('/').to_owned()
    } else {
        format!("http://{raw}")
    }
}

/// The API token a client sends: `FABNODE_API_TOKEN`, else the data dir's `api.token`, else
/// none (a loopback node without a token).
pub fn api_token(data_dir: &Path) -> Result<Option<fab_node::api::token::ApiToken>> {
    use fab_node::api::token::ApiToken;
    if let Ok(raw) = std::env::var("FABNODE_API_TOKEN")
        && !raw.trim().is_empty()
    {
        return ApiToken::parse(&raw)
            .map(Some)
            .ok_or_else(|| anyhow!("FABNODE_API_TOKEN is not an API token (64 hex digits)"));
    }
    Ok(ApiToken::load(data_dir)?)
}

/// A blocking API client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Authorization: Bearer` value, when the node has a token.
    bearer: Option<String>,
}

impl Client {
    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn new(base: String, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Client {
            base,
            agent,
            bearer: None,
        }
    }

    /// Sends `token` with every request.
    pub fn with_token(mut self, token: Option<fab_node::api::token::ApiToken>) -> Self {
        self.bearer = token.map(|t| format!("Bearer {}", t.as_str()));
        self
    }

    fn handle(
        &self,
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Value)> {
        let mut resp = resp.map_err(|e| match e {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => anyhow!(
                "cannot reach a fabnode API at {}: {e}. Is `fabnode start` running? (set --api or FABNODE_API)",
                self.base
            ),
            other => anyhow!("{what}: {other}"),
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_json()
            .with_context(|| {
                format!("{what}: the API answered {status} with a body that is not JSON")
            })?;
        Ok((status, body))
    }

    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(b) = &self.bearer {
            req = req.header("authorization", b);
        }
        self.handle(&format!("GET {path}"), req.call())
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.post(&url);
        if let Some(b) = &self.bearer {
            req = req.header("authorization", b);
        }
        self.handle(&format!("POST {path}"), req.send_json(body))
    }
}

/// The API's error message, for a non-2xx answer.
pub fn error_message(status: u16, body: &Value) -> String {
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let msg = body["error"]["message"].as_str().unwrap_or("no message");
    format!("the node refused the request ({status} {code}): {msg}")
}

/// A job result whose receipt has been checked on this side.
#[derive(Debug)]
pub struct VerifiedResult {
    pub job_id: ContentId,
    pub outputs: Vec<(String, Tensor)>,
    pub entry: SignedEntry,
}

/// Checks a `POST /v1/jobs` answer without trusting the node: the entry's signature and
/// encoding, that it records this job and this input, and that the output digest it signs is
/// the digest of the outputs received.
/// Checks a job answer: the receipt's signature, that it records this job, input and outputs,
/// and who ran it: `executor` (a peer id) when the job was sent to a peer, otherwise the node
/// that signed the job itself.
pub fn verify_job_response(
    body: &Value,
    input_name: Option<&str>,
    input: &Tensor,
    executor: Option<&str>,
) -> Result<VerifiedResult> {
    let raw = body["receipt"]["raw"]
        .as_str()
        .context("answer has no receipt")?;
    let bytes = hex::decode(raw).context("receipt is not hex")?;
    let entry = SignedEntry::decode_verified(&bytes).context("receipt entry does not verify")?;
    let EntryBody::Execution(r) = &entry.body().body else {
        bail!("receipt is not an execution entry");
    };
    let job_id: ContentId =
        serde_json::from_value(body["job_id"].clone()).context("answer has no job id")?;
    if r.job.id() != job_id {
        bail!("receipt records job {}, not {}", r.job.id(), job_id);
    }
    match executor {
        Some(peer) => {
            let signer = entry.body().feed.peer_id();
            if signer != peer {
                bail!(
                    "the receipt is signed by {signer}, not by {peer} that was asked to run the job"
                );
            }
        }
        None => {
            if r.job.body().requester != entry.body().feed {
                bail!("this node's receipt names another requester");
            }
        }
    }
    if let Some(name) = input_name {
        let digest = ContentId(digest_named(&[(name.to_owned(), input.clone())]));
        if digest != r.input_digest {
            bail!("receipt's input digest does not match the input sent");
        }
    }
    let mut outputs = Vec::new();
    for o in body["outputs"]
        .as_array()
        .context("answer has no outputs")?
    {
        let name = o["name"]
            .as_str()
            .context("output without a name")?
            .to_owned();
        let t = Tensor::from_json_value(o["tensor"].clone()).context("output tensor")?;
        outputs.push((name, t));
    }
    let digest = ContentId(digest_named(&outputs));
    if Some(digest) != r.output_digest {
        bail!("receipt's output digest does not match the outputs received");
    }
    Ok(VerifiedResult {
        job_id,
        outputs,
        entry,
    })
}
