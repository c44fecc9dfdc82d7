//! A hostile peer or web page against a real node. Each test scripts one misbehaviour over the
//! real protocols (a peer in this process speaking libp2p to a real `fabnode` process) or with
//! a real HTTP client, and checks that the node refuses it, penalises the peer where it can,
//! and keeps serving its local jobs. docs/SECURITY.md lists the bounds these tests hold.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::mesh::*;
use common::peer::*;
use common::*;
use fab_ledger::{Keypair, Signed};
use fab_mesh::bid::{BidBody, Offer};
use fab_mesh::net::MeshEvent;
use fab_node::sched::telemetry::TelemetryReport;
use fab_node::sched::{Telemetry, Tier};
use serde_json::{Value, json};

fn model_digest(n: &RunningNode) -> [u8; 32] {
    let (_, models) = n.get("/v1/models");
    hex::decode(models["models"][0]["digest"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

/// A plausible report that makes `key` look like the best place for `digest`: it holds the
/// model, measured fast, and draws no power.
fn attractive(digest: [u8; 32]) -> Telemetry {
    Telemetry {
        tier: Tier::Edge,
        region: String::new(),
        labels: Default::default(),
        price_per_s_micros: 0,
        queue_depth: 0,
        workers: 1,
        speed_permille: 1000,
        power_mw: 0,
        battery_permille: None,
        model_latency_us: [(digest, 50)].into(),
        host: Default::default(),
        at_ms: now_ms(),
    }
}

fn signed_report(key: &Keypair, seq: u64, telemetry: Telemetry) -> Vec<u8> {
    Signed::sign(
        TelemetryReport {
            node: key.public(),
            seq,
            telemetry,
        },
        key,
    )
    .encode()
}

/// Publishes `key`'s attractive report (number `seq`) from the scripted peer `m` and waits
/// until `a` lists it among its peers' telemetry.
fn announce(
    rt: &tokio::runtime::Runtime,
    m: &fab_mesh::net::MeshClient,
    a: &RunningNode,
    key: &Keypair,
    seq: u64,
    digest: [u8; 32],
) {
    let report = signed_report(key, seq, attractive(digest));
    rt.block_on(publish_when_subscribed(|| {
        m.publish_telemetry(report.clone())
    }));
    let id = key.public().peer_id();
    wait_for(
        "A to hear the peer's report",
        Duration::from_secs(10),
        || {
            a.get("/v1/telemetry").1["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|r| r["peer_id"] == id.as_str()))
        },
    );
}

/// The offers the hostile bidder cycles through, with the field each breaks.
const EXTREME: [(&str, Offer); 4] = [
    (
        "energy_uj",
        Offer {
            queue_us: 0,
            compute_us: 1,
            transfer_us: 0,
            cost_micros: 0,
            energy_uj: u64::MAX - 5,
            cached: true,
        },
    ),
    (
        "cost_micros",
        Offer {
            queue_us: 0,
            compute_us: 1,
            transfer_us: 0,
            cost_micros: u64::MAX,
            energy_uj: 0,
            cached: true,
        },
    ),
    (
        "compute_us",
        Offer {
            queue_us: 0,
            compute_us: 0,
            transfer_us: 0,
            cost_micros: 0,
            energy_uj: 0,
            cached: true,
        },
    ),
    (
        "queue_us",
        Offer {
            queue_us: u64::MAX,
            compute_us: u64::MAX,
            transfer_us: u64::MAX,
            cost_micros: 0,
            energy_uj: 0,
            cached: true,
        },
    ),
];

#[test]
fn extreme_bids_and_telemetry_are_refused_the_peer_penalised_and_placement_goes_on() {
    let network = format!("xb{}", std::process::id());
    let ta = TestDir::new();
    let a = start(&ta, &mesh_env(&network));
    let digest = model_digest(&a);
    let key = Keypair::generate();
    let asked = Arc::new(AtomicUsize::new(0));
    let (bidder, count) = (key.clone(), Arc::clone(&asked));
    let (rt, m, _) = join_answering(
        key.clone(),
        &network,
        &dial_addr(&a),
        any_telemetry,
        move |client, event| {
            let (key, count) = (bidder.clone(), Arc::clone(&count));
            async move {
                if let MeshEvent::BidRequest { request, reply, .. } = event {
                    let (_, offer) = EXTREME[count.fetch_add(1, Ordering::SeqCst) % EXTREME.len()];
                    let body = BidBody {
                        job: request.job,
                        bidder: key.public(),
                        answer: Ok(offer),
                    };
                    let _ = client.respond_bid(reply, Signed::sign(body, &key)).await;
                }
            }
        },
    );
    let bad_id = m.peer_id().to_string();
    // A report claiming a node faster than any (and a zero-latency model) is refused as a whole.
    let mut absurd = attractive(digest);
    absurd.speed_permille = u32::MAX;
    absurd.model_latency_us.insert(digest, 0);
    let absurd = signed_report(&key, 1, absurd);
    rt.block_on(publish_when_subscribed(|| {
        m.publish_telemetry(absurd.clone())
    }));
    wait_for(
        "A to reject the absurd report",
        Duration::from_secs(10),
        || a.get("/v1/node").1["mesh"]["gossip"]["rejected"].as_u64() >= Some(1),
    );
    assert!(
        a.get("/v1/telemetry").1["peers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A plausible report: the peer becomes the best candidate for the model.
    announce(&rt, &m, &a, &key, 2, digest);
    // Jobs that weigh energy only: the peer (no power drawn) outscores A, so A calls for its
    // bid every time, and gets an absurd one every time.
    for (i, (field, _)) in EXTREME.iter().enumerate() {
        let (status, body) = a.post_json(
            "/v1/jobs",
            &json!({"model": "digits", "input": image_json(i), "explain": true,
                    "weights": {"time": 0, "energy": 100, "cost": 0, "cache": 0,
                                "reliability": 0, "battery": 0}}),
        );
        assert_eq!(status, 200, "job {i}: {body}");
        let me = body["placement"]["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["peer_id"] == bad_id.as_str())
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(me["standing"], "declined", "job {i}: {body}");
        assert!(
            me["reason"].as_str().is_some_and(|r| r.contains(field)),
            "job {i} should name {field}: {me}"
        );
        assert_eq!(body["executor"], a.get("/v1/node").1["peer_id"]);
    }
    assert_eq!(asked.load(Ordering::SeqCst), EXTREME.len());
    // Every absurd answer was an offence; the node kept placing and still does.
    let node = a.get("/v1/node").1;
    assert!(
        node["mesh"]["penalties"].as_u64() >= Some(EXTREME.len() as u64),
        "{node}"
    );
    assert!(
        a.get_text("/metrics")
            .contains("fabnode_peer_penalties_total"),
        "metrics"
    );
    let (status, body) = a.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(9)}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(a.log().contains("peer penalised"), "{}", a.log());
    drop(rt);
}

/// Sends `request` as raw bytes on a fresh connection and reads the answer to the end: status
/// and JSON body.
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

fn entries(n: &RunningNode) -> u64 {
    n.get("/v1/ledger/head").1["entries"].as_u64().unwrap()
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
const GOOD_OFFER: Offer = Offer {
    queue_us: 0,
    compute_us: 50,
    transfer_us: 0,
    cost_micros: 0,
    energy_uj: 0,
    cached: true,
};

/// An executor's signed receipt for `job` that records `outputs`, with those outputs.
fn lying_run(key: &Keypair, job: &[u8]) -> fab_mesh::exec::ExecResponse {
    use fab_inference::Tensor;
    use fab_ledger::{
        ContentId, Determinism, EntryBody, ExecStatus, ExecutionReceipt, FeedWriter, Metering,
        SignedJobRequest, Timings,
    };
    let job = SignedJobRequest::decode_verified(job).unwrap();
    let outputs = vec![(
        "label".to_owned(),
        Tensor::from_json_value(
            json!({"dtype": "f32", "shape": [1, 10], "data": vec![0.0f32; 10]}),
        )
        .unwrap(),
    )];
    let receipt = ExecutionReceipt {
        model_digest: job.body().model_digest,
        input_digest: job.body().input_digest,
        output_digest: Some(ContentId(fab_inference::tensor::digest_named(&outputs))),
        job,
        status: ExecStatus::Ok,
        error: String::new(),
        timings: Timings {
            queued_us: 0,
            run_us: 50,
            total_us: 50,
        },
        metering: Metering::default(),
        determinism: Determinism {
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            arch: std::env::consts::ARCH.into(),
            threads: 1,
        },
    };
    let entry = FeedWriter::resume(key.clone(), 0, None)
        .append(EntryBody::Execution(Box::new(receipt)), now_ms());
    fab_mesh::exec::ExecResponse::Ran {
        entry: entry.encode(),
        outputs: outputs.into_iter().map(|(n, t)| (n, t.to_npy())).collect(),
    }
}

#[test]
fn replicas_that_disagree_are_an_error_that_lists_every_output() {
    use fab_mesh::exec::ExecRequest;
    let network = format!("rd{}", std::process::id());
    let ta = TestDir::new();
    let a = start(&ta, &mesh_env(&network));
    let digest = model_digest(&a);
    let key = Keypair::generate();
    let liar = key.clone();
    // This peer bids honestly-looking offers and signs receipts for outputs it made up.
    let (rt, m, _) = join_answering(
        key.clone(),
        &network,
        &dial_addr(&a),
        any_telemetry,
        move |client, event| {
            let key = liar.clone();
            async move {
                match event {
                    MeshEvent::BidRequest { request, reply, .. } => {
                        let body = BidBody {
                            job: request.job,
                            bidder: key.public(),
                            answer: Ok(GOOD_OFFER),
                        };
                        let _ = client.respond_bid(reply, Signed::sign(body, &key)).await;
                    }
                    MeshEvent::ExecRequest {
                        request: ExecRequest::Run { job, .. },
                        reply,
                        ..
                    } => {
                        let _ = client.respond_exec(reply, lying_run(&key, &job)).await;
                    }
                    _ => {}
                }
            }
        },
    );
    let liar_id = m.peer_id().to_string();
    announce(&rt, &m, &a, &key, 1, digest);
    let (status, body) = a.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(4), "replicas": 2}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "replicas_disagree", "{body}");
    assert!(
        body.get("outputs").is_none(),
        "no output is returned: {body}"
    );
    let replicas = body["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{body}");
    let a_id = peer_id(&a);
    for id in [&a_id, &liar_id] {
        let r = replicas
            .iter()
            .find(|r| r["executor"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not among {body}"));
        let d = r["output_digest"].as_str().unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(d),
            "{body}"
        );
    }
    assert_ne!(replicas[0]["output_digest"], replicas[1]["output_digest"]);
    // A's own run is in its ledger all the same.
    assert_eq!(entries(&a), 1);
    drop(rt);
}

#[test]
fn refusals_to_peers_do_not_list_models_or_paths() {
    use fab_mesh::exec::{ExecRequest, ExecResponse};
    let network = format!("rf{}", std::process::id());
    let tb = TestDir::new();
    // A second model, which no peer should learn about by asking for a third.
    let out = tb.run(&[
        "model",
        "add",
        "secret-project",
        fixture("digits.onnx").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let b = start(&tb, &mesh_env(&network));
    let (rt, m, _) = join(&network, &dial_addr(&b));
    let peer: fab_mesh::net::Peer = peer_id(&b).parse().unwrap();
    let answer = rt
        .block_on(m.exec(
            peer,
            ExecRequest::Describe {
                model: "nope".into(),
            },
        ))
        .unwrap();
    let ExecResponse::Refused { code, message } = answer else {
        panic!("expected a refusal, got {answer:?}")
    };
    assert_eq!(code, "unknown_model");
    for secret in [
        "digits",
        "secret-project",
        tb.path().to_str().unwrap(),
        "fixtures",
    ] {
        assert!(
            !message.contains(secret),
            "the refusal names {secret:?}: {message}"
        );
    }
    // The operator still sees everything locally.
    let (s, local) = b.post_json(
        "/v1/jobs",
        &json!({"model": "nope", "input": image_json(0), "on": peer_id(&b)}),
    );
    assert_eq!(s, 404);
    assert!(
        local["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret-project"),
        "{local}"
    );
    drop(rt);
}

#[test]
fn a_peer_flooding_exec_requests_is_refused_and_cannot_take_the_local_slots() {
    use fab_mesh::exec::{ExecRequest, ExecResponse};
    let network = format!("xf{}", std::process::id());
    let tb = TestDir::new();
    let spin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/spin");
    let out = tb.run(&[
        "model",
        "add",
        "spin",
        spin.join("spin.onnx").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let mut env = mesh_env(&network);
    for (k, v) in [
        ("FABNODE_LIMITS_JOBS_IN_FLIGHT_MAX", "2"),
        ("FABNODE_LIMITS_REMOTE_JOBS_MAX", "4"),
        ("FABNODE_LIMITS_REMOTE_JOBS_PER_PEER_MAX", "2"),
        ("FABNODE_INFERENCE_WORKERS", "1"),
    ] {
        env.push((k.into(), v.into()));
    }
    let b = start(&tb, &env);
    let (rt, m, key) = join(&network, &dial_addr(&b));
    let peer: fab_mesh::net::Peer = peer_id(&b).parse().unwrap();
    let ExecResponse::Described { digest, inputs, .. } = rt
        .block_on(m.exec(
            peer,
            ExecRequest::Describe {
                model: "spin".into(),
            },
        ))
        .unwrap()
    else {
        panic!("spin not described")
    };
    let text_input = std::fs::read_to_string(spin.join("sample.json")).unwrap();
    let input =
        fab_inference::Tensor::from_json_value(serde_json::from_str(&text_input).unwrap()).unwrap();
    // Eight jobs at once from one peer.
    let answers: Vec<_> = (0..8u64)
        .map(|i| {
            let request = ExecRequest::Run {
                job: signed_job(&key, &key, i, "spin", digest, &inputs[0], &input),
                inputs: vec![(inputs[0].clone(), input.to_npy())],
            };
            let m = m.clone();
            rt.spawn(async move { m.exec(peer, request).await })
        })
        .collect();
    wait_for("B to run the peer's jobs", Duration::from_secs(20), || {
        b.get_text("/metrics")
            .lines()
            .any(|l| l.starts_with("fabnode_jobs_in_flight ") && !l.ends_with(" 0"))
    });
    // At its cap, the peer is declined a bid rather than offered one it would be refused.
    let call = fab_mesh::bid::BidRequest {
        job: [9; 32],
        requester: key.public().to_bytes(),
        model_digest: digest,
        input_bytes: input.byte_len() as u64,
        reference_latency_us: 1_000,
        deadline_us: 30_000_000,
        max_cost_micros: None,
        tiers: vec![],
        regions: vec![],
        labels: vec![],
        replicas: 1,
    };
    let declined = rt
        .block_on(m.bid(peer, call))
        .unwrap()
        .body()
        .answer
        .clone();
    assert!(
        declined
            .as_ref()
            .is_err_and(|r| r.contains("remote_jobs_per_peer_max")),
        "{declined:?}"
    );
    // The operator's own job is served while the peer's are running (pinned here, so the
    // auction's estimate of a queue of spin runs is not what is tested).
    let (status, body) = b.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(1), "on": peer_id(&b)}),
    );
    assert_eq!(status, 200, "{body}");
    let (mut ran, mut busy) = (0, 0);
    for a in answers {
        match rt.block_on(a).unwrap().unwrap() {
            ExecResponse::Ran { .. } => ran += 1,
            ExecResponse::Refused { code, message } if code == "busy" => {
                assert!(message.contains("remote_jobs_per_peer_max"), "{message}");
                busy += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(ran + busy, 8);
    assert!(busy >= 6 - 2, "{busy} refused, {ran} ran");
    assert!(ran >= 2, "{busy} refused, {ran} ran");
    drop(rt);
}

#[test]
fn reports_about_nodes_nobody_is_connected_to_are_not_kept_or_placed_on() {
    let network = format!("tf{}", std::process::id());
    let ta = TestDir::new();
    let a = start(&ta, &mesh_env(&network));
    let digest = model_digest(&a);
    let (rt, m, key) = join_with(&network, &dial_addr(&a), any_telemetry);
    // Thirty reports, each validly signed by a fresh key that never connects.
    let strangers: Vec<Keypair> = (0..30).map(|_| Keypair::generate()).collect();
    rt.block_on(async {
        for k in &strangers {
            let r = signed_report(k, 1, attractive(digest));
            publish_when_subscribed(|| m.publish_telemetry(r.clone())).await;
        }
    });
    // Then the peer's own report, which A keeps: every stranger's was handled before it.
    announce(&rt, &m, &a, &key, 1, digest);
    let peers = a.get("/v1/telemetry").1["peers"].clone();
    assert_eq!(peers.as_array().unwrap().len(), 1, "{peers}");
    let (status, body) = a.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(2), "explain": true}),
    );
    assert_eq!(status, 200, "{body}");
    let candidates = body["placement"]["candidates"].as_array().unwrap();
    assert!(candidates.len() <= 2, "{body}");
    for k in &strangers {
        let id = k.public().peer_id();
        assert!(
            candidates.iter().all(|c| c["peer_id"] != id.as_str()),
            "{body}"
        );
    }
    drop(rt);
}

/// The node's peak resident memory so far, MiB.
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

#[test]
fn a_flood_of_ledger_sync_requests_is_queued_off_the_mesh_loop_and_refused_beyond_it() {
    use fab_mesh::wire::{SyncRequest, SyncResponse};
    let network = format!("sf{}", std::process::id());
    let ta = TestDir::new();
    let a = start(&ta, &mesh_env(&network));
    for i in 0..40 {
        let (s, _) = a.post_json(
            "/v1/jobs",
            &json!({"model": "digits", "input": image_json(i)}),
        );
        assert_eq!(s, 200);
    }
    let answers = Arc::new(std::sync::Mutex::new((0usize, 0usize)));
    let seen = Arc::clone(&answers);
    let (rt, m, _) = join_answering(
        Keypair::generate(),
        &network,
        &dial_addr(&a),
        |_| {},
        move |_, event| {
            let seen = Arc::clone(&seen);
            async move {
                if let MeshEvent::SyncResponse { response, .. } = event {
                    let mut s = seen.lock().unwrap();
                    match response {
                        SyncResponse::Range { .. } => s.0 += 1,
                        SyncResponse::Refused(r) if r.starts_with("busy") => s.1 += 1,
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
            }
        },
    );
    let peer: fab_mesh::net::Peer = peer_id(&a).parse().unwrap();
    let feed = fab_mesh::net::peer_key(&peer).unwrap().to_bytes();
    let flood = 200;
    rt.block_on(async {
        for _ in 0..flood {
            m.request(
                peer,
                SyncRequest::Range {
                    feed,
                    start: 0,
                    count: 512,
                },
            )
            .await
            .unwrap();
        }
    });
    // Meanwhile the node serves its operator and its peers.
    let (s, _) = a.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(99)}),
    );
    assert_eq!(s, 200);
    let described = rt
        .block_on(m.exec(
            peer,
            fab_mesh::exec::ExecRequest::Describe {
                model: "digits".into(),
            },
        ))
        .unwrap();
    assert!(matches!(
        described,
        fab_mesh::exec::ExecResponse::Described { .. }
    ));
    // Some ranges are served, and those beyond the queue are refused at once (libp2p itself
    // drops streams beyond 64 at a time, which get no answer at all).
    wait_for("ranges served and refused", Duration::from_secs(30), || {
        let s = answers.lock().unwrap();
        s.0 > 0 && s.1 > 0
    });
    let (served, busy) = *answers.lock().unwrap();
    eprintln!("{served} ranges served, {busy} refused as busy");
    drop(rt);
}
