//! Web pages, remote hosts and slow clients against the control API.

use super::*;

fn raw(node: &RunningNode, request: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = node.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A POST of `body` with extra header lines (each ending in \r\n).
fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn a_web_page_cannot_make_the_node_sign_or_run_jobs() {
    let t = TestDir::new();
    let n = t
        .start(&[("FABNODE_API_ALLOWED_ORIGINS", "https://dash.example")])
        .unwrap();
    let host = format!("Host: {}\r\n", n.base.trim_start_matches("http://"));
    let job = json!({"model": "digits", "input": image_json(3)}).to_string();
    // What a page's fetch() or form can send cross-origin without a CORS preflight.
    let page = "Origin: https://evil.example\r\n";
    for (headers, status, code) in [
        (
            format!("{host}{page}Content-Type: text/plain\r\n"),
            403,
            "forbidden_origin",
        ),
        (
            format!("{host}{page}Content-Type: application/json\r\n"),
            403,
            "forbidden_origin",
        ),
        (
            format!("{host}Content-Type: text/plain\r\n"),
            415,
            "unsupported_media_type",
        ),
        (
            format!("{host}Content-Type: application/x-www-form-urlencoded\r\n"),
            415,
            "unsupported_media_type",
        ),
        // DNS rebinding: the page's own name, resolved to 127.0.0.1.
        (
            "Host: evil.example:7650\r\nContent-Type: application/json\r\n".to_owned(),
            403,
            "forbidden_host",
        ),
    ] {
        let (s, body) = raw(&n, &post("/v1/jobs", &headers, &job));
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{headers}: {body}"
        );
    }
    let (s, _) = raw(
        &n,
        &format!("GET /v1/node HTTP/1.1\r\n{host}{page}Connection: close\r\n\r\n"),
    );
    assert_eq!(s, 403, "reads are refused to pages too");
    assert_eq!(entries(&n), 0, "nothing was signed or run");
    // The operator's tools, and an origin the operator allowed, are served.
    let (s, body) = raw(
        &n,
        &post(
            "/v1/jobs",
            &format!("{host}Content-Type: application/json\r\n"),
            &job,
        ),
    );
    assert_eq!(s, 200, "{body}");
    let allowed =
        format!("{host}Origin: https://dash.example\r\nContent-Type: application/json\r\n");
    let (s, body) = raw(&n, &post("/v1/jobs", &allowed, &job));
    assert_eq!(s, 200, "{body}");
    assert_eq!(entries(&n), 2);
}

/// Waits up to `limit` for the process to exit.
fn exits_within(n: &mut RunningNode, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if let Some(s) = n.child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_cannot_hold_the_node() {
    use std::io::{Read, Write};
    let t = TestDir::new();
    let n = t
        .start(&[
            ("FABNODE_API_HEADER_TIMEOUT_MS", "1500"),
            ("FABNODE_API_CONNECTIONS_MAX", "4"),
        ])
        .unwrap();
    let addr = n.base.trim_start_matches("http://").to_owned();
    let connect = || {
        let s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    // Headers trickled and never finished, and a connection that says nothing: both closed.
    let mut trickle = connect();
    trickle
        .write_all(b"GET /v1/node HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    let mut silent = connect();
    let mut buf = Vec::new();
    trickle
        .read_to_end(&mut buf)
        .expect("the node closes a connection whose headers never end");
    silent
        .read_to_end(&mut buf)
        .expect("the node closes a connection that sends nothing");
    // Four silent connections take every slot: a fifth client waits in the backlog until they
    // are closed, then is served.
    // The kernel queues them ahead of the fifth, and the node accepts in that order.
    let hogs: Vec<_> = (0..4).map(|_| connect()).collect();
    let quick = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(400)))
        .build()
        .new_agent();
    assert!(
        quick.get(format!("{}/v1/node", n.base)).call().is_err(),
        "served beyond api.connections_max"
    );
    let (s, _) = n.get("/v1/node");
    assert_eq!(s, 200, "served once the idle connections were closed");
    drop(hogs);
}

#[test]
fn shutdown_ends_in_bounded_time_with_a_slow_client_attached() {
    use std::io::Write;
    let t = TestDir::new();
    let mut n = t
        .start(&[
            ("FABNODE_API_BODY_TIMEOUT_MS", "600000"),
            ("FABNODE_API_HEADER_TIMEOUT_MS", "600000"),
            ("FABNODE_API_SHUTDOWN_GRACE_MS", "1000"),
        ])
        .unwrap();
    let addr = n.base.trim_start_matches("http://").to_owned();
    // A request whose body stalls after its first byte.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
    )
    .unwrap();
    // Connections are accepted in order and served side by side: once a request on a second
    // connection is answered, the slow one is attached (the log check below proves it was
    // still open when the grace period ended).
    assert_eq!(n.get("/v1/node").0, 200);
    n.signal(libc::SIGTERM);
    let status = exits_within(&mut n, Duration::from_secs(15))
        .expect("the node is still waiting for the slow client 15 s after SIGTERM");
    assert!(status.success(), "{status:?}: {}", n.log());
    n.wait();
    assert!(n.log().contains("closing them"), "{}", n.log());
    drop(slow);
}

#[test]
fn a_node_beyond_loopback_needs_a_token_and_checks_it() {
    let t = TestDir::new();
    let err = t
        .start_on("0.0.0.0:0", &[])
        .err()
        .expect("started on 0.0.0.0 without a token");
    assert!(err.contains("fabnode api-token init"), "{err}");
    let out = t.run(&["api-token", "init", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path().join("api.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let n = t.start_on("0.0.0.0:0", &[]).unwrap();
    let port = n.base.rsplit(':').next().unwrap().to_owned();
    let url = format!("http://127.0.0.1:{port}/v1/node");
    let get = |auth: Option<&str>| {
        let mut r = n.agent().get(&url);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.call().unwrap()
    };
    let r = get(None);
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        get(Some(&format!("Bearer {}", "0".repeat(64)))).status(),
        401
    );
    assert_eq!(get(Some(&format!("Basic {token}"))).status(), 401);
    assert_eq!(get(Some(&format!("Bearer {token}"))).status(), 200);
    // The health probes answer without the token, and say nothing else.
    for probe in ["/v1/health", "/v1/health/live"] {
        let mut r = n
            .agent()
            .get(format!("http://127.0.0.1:{port}{probe}"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "{probe}");
        let v: Value = r.body_mut().read_json().unwrap();
        assert!(v["status"] == "ready" || v["status"] == "live", "{v}");
    }
    // The CLI finds the token in the data dir; another one in the environment is refused.
    let api = format!("127.0.0.1:{port}");
    let out = t.run(&["--api", &api, "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = t
        .cmd()
        .args(["--api", &api, "status"])
        .env("FABNODE_API_TOKEN", "1".repeat(64))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("unauthorized"), "{}", text(&out).1);
}

/// A plausible offer for any call.
fn peak_rss_mib(n: &RunningNode) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", n.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[test]
fn a_large_json_body_costs_memory_in_proportion_to_its_size() {
    let t = TestDir::new();
    let n = t.start(&[]).unwrap();
    let before = peak_rss_mib(&n);
    // 14 MiB of one-digit numbers: 7 million elements, far over limits.input_bytes_max.
    let count = 7 << 20;
    let mut body = String::with_capacity(17 << 20);
    body.push_str(&format!(
        r#"{{"model": "digits", "input": {{"dtype": "u8", "shape": [{count}], "data": ["#
    ));
    for i in 0..count {
        body.push_str(if i == 0 { "0" } else { ",0" });
    }
    body.push_str("]}}");
    assert!(body.len() < 16 << 20);
    let (s, v) = n.post_raw("/v1/jobs", body.as_bytes());
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("input_too_large")),
        "{v}"
    );
    let grew = peak_rss_mib(&n).saturating_sub(before);
    eprintln!(
        "peak RSS {before} MiB before, grew by {grew} MiB for a {} MiB body",
        body.len() >> 20
    );
    // The body, its numbers packed at two bytes each and the tensor: about 2.6 times the body
    // (37 MiB measured); a JSON value tree of the same numbers took 352 MiB.
    assert!(grew < 64, "the node grew by {grew} MiB");
}
