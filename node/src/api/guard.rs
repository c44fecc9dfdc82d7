//! Who may call the control API: checks every request passes before any handler runs.
//!
//! The API signs and runs jobs, so a request must come from the node's operator, never from a
//! web page the operator happens to have open, nor from another host unless the operator chose
//! that. In order:
//!
//! 1. `Origin`: browsers send it on cross-origin requests and on every POST; a request whose
//!    Origin is not in `api.allowed_origins` is refused (403 `forbidden_origin`). Command-line
//!    clients send none.
//! 2. `Host`: without a token, the Host must name a loopback address (`localhost`, `127.x`,
//!    `[::1]`) or one of `api.allowed_hosts`, which defeats DNS rebinding (a page on a name
//!    that resolves to 127.0.0.1 still sends its own name; 403 `forbidden_host`).
//! 3. The token: when the data dir has one, `Authorization: Bearer <token>` (401
//!    `unauthorized`), except on the health probes (`/v1/health`, `/v1/health/live`), which
//!    systemd and Kubernetes call without one and which say nothing but whether the node runs.
//! 4. A request with a body must say `Content-Type: application/json` (415
//!    `unsupported_media_type`): a page's "simple" cross-origin POST (`text/plain`, forms)
//!    needs no CORS preflight, so it would otherwise reach the handler.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::token::ApiToken;
use super::{ApiCode, ApiError};

/// What the guard admits.
#[derive(Debug, Default)]
pub struct Guard {
    /// Required on every request when set.
    pub token: Option<ApiToken>,
    /// Origins (`scheme://host[:port]`) that may call the API from a browser.
    pub allowed_origins: BTreeSet<String>,
    /// Host names, besides loopback ones, that requests may name.
    pub allowed_hosts: BTreeSet<String>,
}

impl Guard {
    /// Why a request is refused, if it is.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.allowed_origins.contains(origin.trim_end_matches('/')) {
                return Err(ApiError::new(
                    ApiCode::ForbiddenOrigin,
                    format!(
                        "requests from the web origin {origin:?} are refused; an operator can \
                         allow it with api.allowed_origins"
                    ),
                ));
            }
        }
        match &self.token {
            None => {
                if let Some(host) = headers.get(header::HOST) {
                    let host = host.to_str().unwrap_or("");
                    let name = host_name(host);
                    if !is_loopback_name(&name) && !self.allowed_hosts.contains(&name) {
                        return Err(ApiError::new(
                            ApiCode::ForbiddenHost,
                            format!(
                                "the Host {host:?} is not a loopback name; an operator can allow \
                                 it with api.allowed_hosts"
                            ),
                        ));
                    }
                }
            }
            Some(_) if is_probe(path) => {}
            Some(token) => {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if !presented.is_some_and(|p| token.matches(p)) {
                    let mut e = ApiError::new(
                        ApiCode::Unauthorized,
                        "this API needs `Authorization: Bearer <token>`; the token is in the \
                         node's data dir (api.token); the CLI reads it from there or from \
                         FABNODE_API_TOKEN",
                    );
                    e.www_authenticate = true;
                    return Err(e);
                }
            }
        }
        if carries_body(method, headers) && !is_json(headers) {
            return Err(ApiError::new(
                ApiCode::UnsupportedMediaType,
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        Ok(())
    }
}

/// The middleware: refuses what [`Guard::check`] refuses.
pub async fn layer(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match guard.check(req.method(), req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The health probes: answered without a token.
fn is_probe(path: &str) -> bool {
    matches!(path, "/v1/health" | "/v1/health/live")
}

fn carries_body(method: &Method, headers: &HeaderMap) -> bool {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0");
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        || declared
        || headers.contains_key(header::TRANSFER_ENCODING)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The host part of a Host header (`name`, `name:port`, `[v6]:port`), lower-case.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn code(g: &Guard, m: Method, pairs: &[(header::HeaderName, &str)]) -> Option<&'static str> {
        g.check(&m, "/v1/node", &headers(pairs))
            .err()
            .map(|e| e.code.code())
    }

    #[test]
    fn hosts_origins_tokens_and_media_types() {
        use header::{AUTHORIZATION as AUTH, CONTENT_TYPE as CT, HOST, ORIGIN};
        let g = Guard::default();
        for host in [
            "127.0.0.1:7650",
            "localhost:1",
            "[::1]:7650",
            "127.9.9.9",
            "LOCALHOST.",
        ] {
            assert_eq!(code(&g, Method::GET, &[(HOST, host)]), None, "{host}");
        }
        for host in [
            "evil.example:7650",
            "10.0.0.5:7650",
            "[fe80::1]:7650",
            "localhost.evil",
        ] {
            assert_eq!(
                code(&g, Method::GET, &[(HOST, host)]),
                Some("forbidden_host"),
                "{host}"
            );
        }
        assert_eq!(code(&g, Method::GET, &[]), None);
        let json = [
            (HOST, "127.0.0.1:7650"),
            (CT, "application/json; charset=utf-8"),
        ];
        assert_eq!(code(&g, Method::POST, &json), None);
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert_eq!(
                code(&g, Method::POST, &[(HOST, "127.0.0.1"), (CT, ct)]),
                Some("unsupported_media_type")
            );
        }
        assert_eq!(
            code(&g, Method::POST, &[(HOST, "127.0.0.1")]),
            Some("unsupported_media_type")
        );
        let page = [(HOST, "127.0.0.1:7650"), (ORIGIN, "https://evil.example")];
        assert_eq!(code(&g, Method::GET, &page), Some("forbidden_origin"));
        let g = Guard {
            allowed_origins: ["https://dash.example".to_owned()].into(),
            allowed_hosts: ["node1.lan".to_owned()].into(),
            ..Default::default()
        };
        assert_eq!(
            code(&g, Method::GET, &[(ORIGIN, "https://dash.example")]),
            None
        );
        assert_eq!(code(&g, Method::GET, &[(HOST, "node1.lan:7650")]), None);
        let token = ApiToken::parse(&"ab".repeat(32)).unwrap();
        let g = Guard {
            token: Some(token),
            ..Default::default()
        };
        let bearer = format!("Bearer {}", "ab".repeat(32));
        assert_eq!(code(&g, Method::GET, &[]), Some("unauthorized"));
        assert_eq!(
            code(
                &g,
                Method::GET,
                &[(AUTH, &format!("Bearer {}", "ac".repeat(32)))]
            ),
            Some("unauthorized")
        );
        // Probes need no token.
        assert!(
            g.check(&Method::GET, "/v1/health", &HeaderMap::new())
                .is_ok()
        );
        assert!(
            g.check(&Method::GET, "/v1/health/live", &HeaderMap::new())
                .is_ok()
        );
        // With a token in force any Host may be named: the token is the proof.
        assert_eq!(
            code(
                &g,
                Method::GET,
                &[(AUTH, &bearer), (HOST, "node.example:7650")]
            ),
            None
        );
    }
}
