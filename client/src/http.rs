//! A blocking client of the control API (ureq).

use std::time::Duration;

use fab_ledger::ContentId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::types::*;

/// Largest answer read (a page of entries with their raw bytes, or a large output tensor).
const ANSWER_BYTES_MAX: u64 = 256 << 20;

/// Why a call failed.
#[derive(Debug, Error)]
pub enum Error {
    /// Nothing answered at the address.
    #[error(
        "cannot reach a fabnode API at {base}: {detail}. Is `fabnode start` running? (set --api or FABNODE_API)"
    )]
    Unreachable { base: String, detail: String },
    /// The node refused the request or could not serve it: its code and message.
    #[error("the node refused the request ({status} {}): {}", body.error.code, body.error.message)]
    Api { status: u16, body: Box<ErrorBody> },
    /// The answer is not the JSON the route documents.
    #[error("{what}: the API answered {status} with a body that does not decode: {detail}")]
    Decode {
        what: String,
        status: u16,
        detail: String,
    },
    #[error("{what}: {detail}")]
    Http { what: String, detail: String },
}

impl Error {
    /// The API's error code, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { body, .. } => Some(&body.error.code),
            _ => None,
        }
    }

    /// The API's error body, for a refusal.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            Error::Api { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// Idle keep-alive connections a client (and its clones) keeps open, per node. The node serves
/// 256 connections by default (`api.connections_max`).
pub const IDLE_CONNECTIONS_MAX: usize = 64;

/// A blocking API client. Cheap to clone (the connection pool is shared: up to
/// [`IDLE_CONNECTIONS_MAX`] threads each keep their connection between calls).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Authorization: Bearer` value, when the node has a token.
    bearer: Option<String>,
}

impl Client {
    /// A client of the node at `base` (`http://host:port`), each call bounded by `timeout`.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            // Clones share the pool: keep a connection per thread that uses it (ureq keeps 3
            // per host by default, so a fourth concurrent caller reconnected on every call).
            .max_idle_connections(IDLE_CONNECTIONS_MAX)
            .max_idle_connections_per_host(IDLE_CONNECTIONS_MAX)
            .build()
            .new_agent();
        Client {
            base: base.into().trim_end_matches('/').to_owned(),
            agent,
            bearer: None,
        }
    }

    /// Sends `token` (the node's API token, 64 hex digits) with every request.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.bearer = token.map(|t| format!("Bearer {t}"));
        self
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`: the status and the raw body, whatever the status (for callers that handle
    /// HTTP themselves).
    pub fn get_raw(&self, path: &str) -> Result<(u16, Vec<u8>), Error> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(b) = &self.bearer {
            req = req.header("authorization", b);
        }
        self.read(&format!("GET {path}"), req.call())
    }

    /// `POST path` with a JSON body: the status and the raw body, whatever the status.
    pub fn post_raw(&self, path: &str, body: &impl Serialize) -> Result<(u16, Vec<u8>), Error> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(b) = &self.bearer {
            req = req.header("authorization", b);
        }
        self.read(&format!("POST {path}"), req.send_json(body))
    }

    fn read(
        &self,
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Vec<u8>), Error> {
        let mut resp = resp.map_err(|e| match e {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                Error::Unreachable {
                    base: self.base.clone(),
                    detail: e.to_string(),
                }
            }
            other => Error::Http {
                what: what.to_owned(),
                detail: other.to_string(),
            },
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| Error::Http {
                what: what.to_owned(),
                detail: e.to_string(),
            })?;
        Ok((status, body))
    }

    fn decode<T: DeserializeOwned>(what: &str, status: u16, body: &[u8]) -> Result<T, Error> {
        if !(200..300).contains(&status) {
            let body: ErrorBody = serde_json::from_slice(body).map_err(|e| Error::Decode {
                what: what.to_owned(),
                status,
                detail: e.to_string(),
            })?;
            return Err(Error::Api {
                status,
                body: Box::new(body),
            });
        }
        serde_json::from_slice(body).map_err(|e| Error::Decode {
            what: what.to_owned(),
            status,
            detail: e.to_string(),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let (status, body) = self.get_raw(path)?;
        Self::decode(&format!("GET {path}"), status, &body)
    }

    /// `GET /v1/health`: ready, or `Api` with status 503 when not.
    pub fn health(&self) -> Result<Health, Error> {
        let (status, body) = self.get_raw("/v1/health")?;
        let health: Health = serde_json::from_slice(&body).map_err(|e| Error::Decode {
            what: "GET /v1/health".into(),
            status,
            detail: e.to_string(),
        })?;
        Ok(health)
    }

    /// `GET /v1/health/live`.
    pub fn live(&self) -> Result<Live, Error> {
        self.get("/v1/health/live")
    }

    /// `GET /v1/node`.
    pub fn node(&self) -> Result<NodeInfo, Error> {
        self.get("/v1/node")
    }

    /// `GET /v1/models`.
    pub fn models(&self) -> Result<Models, Error> {
        self.get("/v1/models")
    }

    /// `POST /v1/jobs`: runs a job and returns its output and receipt (check it with
    /// [`crate::verify::job_result`]).
    pub fn submit(&self, request: &SubmitRequest) -> Result<JobResult, Error> {
        let (status, body) = self.post_raw("/v1/jobs", request)?;
        Self::decode("POST /v1/jobs", status, &body)
    }

    /// `GET /v1/jobs?limit=`: jobs this node placed, newest first.
    pub fn jobs(&self, limit: usize) -> Result<Jobs, Error> {
        self.get(&format!("/v1/jobs?limit={limit}"))
    }

    /// `GET /v1/jobs/{id}`.
    pub fn job(&self, id: &ContentId) -> Result<JobDetail, Error> {
        self.get(&format!("/v1/jobs/{id}"))
    }

    /// `GET /v1/ledger/head`.
    pub fn ledger_head(&self) -> Result<LedgerHead, Error> {
        self.get("/v1/ledger/head")
    }

    /// `GET /v1/ledger/heads`: every feed this node holds.
    pub fn ledger_heads(&self) -> Result<Feeds, Error> {
        self.get("/v1/ledger/heads")
    }

    /// `GET /v1/ledger/entries?from=&limit=`.
    pub fn entries(&self, from: u64, limit: usize) -> Result<EntryPage, Error> {
        self.get(&format!("/v1/ledger/entries?from={from}&limit={limit}"))
    }

    /// `GET /v1/ledger/entries/{seq}`.
    pub fn entry(&self, seq: u64) -> Result<Entry, Error> {
        self.get(&format!("/v1/ledger/entries/{seq}"))
    }

    /// `GET /v1/peers`.
    pub fn peers(&self) -> Result<Peers, Error> {
        self.get("/v1/peers")
    }

    /// `GET /v1/telemetry`.
    pub fn telemetry(&self) -> Result<TelemetryReports, Error> {
        self.get("/v1/telemetry")
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub fn metrics(&self) -> Result<String, Error> {
        let (status, body) = self.get_raw("/metrics")?;
        if status != 200 {
            return Self::decode("GET /metrics", status, &body);
        }
        String::from_utf8(body).map_err(|e| Error::Decode {
            what: "GET /metrics".into(),
            status,
            detail: e.to_string(),
        })
    }
}
