//! The API's errors: one table from every code to its HTTP status. A job's errors keep the
//! code the jobs service gave them ([`ErrorKind::code`]); the API adds the codes of its own
//! (bad requests, unknown routes, the guard's refusals).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fab_client::types::{Entry, ErrorBody, ErrorInfo, Placement, Replica};

use crate::jobs::{ErrorKind, JobError};

/// What an API error is about: a job's error, or one of the API's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiCode {
    Job(ErrorKind),
    /// The body is not the JSON the route expects.
    BadRequest,
    RequestTooLarge,
    /// The body did not arrive within `api.body_timeout_ms`.
    RequestTimeout,
    BadPeerId,
    BadJobId,
    UnknownJob,
    BadSeq,
    BadLimit,
    UnknownEntry,
    /// A stored entry does not decode.
    LedgerCorrupt,
    /// The model registry (`models.json`) could not be read.
    Registry,
    MeshUnavailable,
    /// Replicas' output digests differ: no output is returned.
    ReplicasDisagree,
    NotFound,
    ForbiddenOrigin,
    ForbiddenHost,
    Unauthorized,
    UnsupportedMediaType,
}

/// The API's own codes (the jobs service's are [`ErrorKind::all`]); the tests check every
/// code against docs/openapi.yaml.
#[cfg(test)]
const OWN: [ApiCode; 18] = [
    ApiCode::BadRequest,
    ApiCode::RequestTooLarge,
    ApiCode::RequestTimeout,
    ApiCode::BadPeerId,
    ApiCode::BadJobId,
    ApiCode::UnknownJob,
    ApiCode::BadSeq,
    ApiCode::BadLimit,
    ApiCode::UnknownEntry,
    ApiCode::LedgerCorrupt,
    ApiCode::Registry,
    ApiCode::MeshUnavailable,
    ApiCode::ReplicasDisagree,
    ApiCode::NotFound,
    ApiCode::ForbiddenOrigin,
    ApiCode::ForbiddenHost,
    ApiCode::Unauthorized,
    ApiCode::UnsupportedMediaType,
];

impl From<ErrorKind> for ApiCode {
    fn from(k: ErrorKind) -> Self {
        ApiCode::Job(k)
    }
}

impl ApiCode {
    /// The code and the HTTP status of each: the one table.
    pub fn describe(self) -> (&'static str, StatusCode) {
        use ErrorKind as K;
        match self {
            ApiCode::Job(k) => (
                k.code(),
                match k {
                    K::UnknownModel => StatusCode::NOT_FOUND,
                    K::ModelChanged | K::Replayed | K::MeshDisabled => StatusCode::CONFLICT,
                    K::BadTensor
                    | K::InvalidInput
                    | K::InputMismatch
                    | K::BadJob
                    | K::RequesterMismatch
                    | K::BadSla => StatusCode::BAD_REQUEST,
                    K::InputTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    K::DeadlinePassed => StatusCode::GATEWAY_TIMEOUT,
                    K::Busy | K::Unavailable | K::LedgerUnavailable | K::PlacementFailed => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    K::Infeasible => StatusCode::UNPROCESSABLE_ENTITY,
                    K::PeerUnreachable | K::PeerRefused | K::BadPeerAnswer => {
                        StatusCode::BAD_GATEWAY
                    }
                    K::ModelLoadFailed | K::LedgerError | K::ExecutionFailed | K::Internal => {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                },
            ),
            ApiCode::BadRequest => ("bad_request", StatusCode::BAD_REQUEST),
            ApiCode::RequestTooLarge => ("request_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            ApiCode::RequestTimeout => ("request_timeout", StatusCode::REQUEST_TIMEOUT),
            ApiCode::BadPeerId => ("bad_peer_id", StatusCode::BAD_REQUEST),
            ApiCode::BadJobId => ("bad_job_id", StatusCode::BAD_REQUEST),
            ApiCode::UnknownJob => ("unknown_job", StatusCode::NOT_FOUND),
            ApiCode::BadSeq => ("bad_seq", StatusCode::BAD_REQUEST),
            ApiCode::BadLimit => ("bad_limit", StatusCode::BAD_REQUEST),
            ApiCode::UnknownEntry => ("unknown_entry", StatusCode::NOT_FOUND),
            ApiCode::LedgerCorrupt => ("ledger_corrupt", StatusCode::INTERNAL_SERVER_ERROR),
            ApiCode::Registry => ("registry", StatusCode::INTERNAL_SERVER_ERROR),
            ApiCode::MeshUnavailable => ("mesh_unavailable", StatusCode::SERVICE_UNAVAILABLE),
            ApiCode::ReplicasDisagree => ("replicas_disagree", StatusCode::CONFLICT),
            ApiCode::NotFound => ("not_found", StatusCode::NOT_FOUND),
            ApiCode::ForbiddenOrigin => ("forbidden_origin", StatusCode::FORBIDDEN),
            ApiCode::ForbiddenHost => ("forbidden_host", StatusCode::FORBIDDEN),
            ApiCode::Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            ApiCode::UnsupportedMediaType => {
                ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
        }
    }

    pub fn code(self) -> &'static str {
        self.describe().0
    }

    pub fn status(self) -> StatusCode {
        self.describe().1
    }
}

/// An API error: `{"error": {"code", "message"}}` and what the code carries.
#[derive(Debug)]
pub struct ApiError {
    pub code: ApiCode,
    pub message: String,
    pub receipt: Option<Box<Entry>>,
    /// Where the job was placed and why (jobs placed by the auction).
    pub placement: Option<Box<Placement>>,
    /// Answer with `WWW-Authenticate: Bearer` (a 401).
    pub www_authenticate: bool,
    /// Every replica's executor, entry and output digest (replicas that disagree).
    pub replicas: Option<Vec<Replica>>,
}

impl ApiError {
    pub fn new(code: impl Into<ApiCode>, message: impl Into<String>) -> Self {
        ApiError {
            code: code.into(),
            message: message.into(),
            receipt: None,
            placement: None,
            www_authenticate: false,
            replicas: None,
        }
    }

    /// A job's error, with its receipt and its placement (in full with `explain`, else the
    /// short form).
    pub fn from_job(e: JobError, explain: bool) -> Self {
        ApiError {
            receipt: e
                .receipt
                .as_deref()
                .map(|r| Box::new(crate::views::entry(r))),
            placement: e
                .placement
                .as_deref()
                .and_then(|p| super::placement::placement(p, explain))
                .map(Box::new),
            ..ApiError::new(e.kind, e.message)
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        ApiError::from_job(e, false)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorInfo {
                code: self.code.code().to_owned(),
                message: self.message,
            },
            receipt: self.receipt.map(|r| *r),
            placement: self.placement.map(|p| *p),
            replicas: self.replicas,
        };
        let mut response = (self.code.status(), axum::Json(body)).into_response();
        if self.www_authenticate {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_code() -> impl Iterator<Item = ApiCode> {
        ErrorKind::all().map(ApiCode::Job).chain(OWN)
    }

    #[test]
    fn codes_are_distinct_and_every_status_is_an_error() {
        let mut codes: Vec<&str> = every_code().map(ApiCode::code).collect();
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "two kinds share a code");
        for c in every_code() {
            let s = c.status().as_u16();
            assert!((400..600).contains(&s), "{} answers {s}", c.code());
        }
    }

    #[test]
    fn every_code_is_documented_in_openapi_yaml() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
                .expect("docs/openapi.yaml");
        // The code as a word of its own (not a prefix of a longer code).
        let word = |c: &str| {
            doc.match_indices(c).any(|(i, _)| {
                let ident =
                    |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || *b == b'_');
                !ident(doc.as_bytes().get(i.wrapping_sub(1)))
                    && !ident(doc.as_bytes().get(i + c.len()))
            })
        };
        let missing: Vec<&str> = every_code()
            .map(ApiCode::code)
            .filter(|c| !word(c))
            .collect();
        assert!(
            missing.is_empty(),
            "codes missing from the Error response: {missing:?}"
        );
    }
}
