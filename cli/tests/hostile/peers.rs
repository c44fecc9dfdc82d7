//! Misbehaving peers over the real protocols.

use super::*;

fn model_digest(n: &RunningNode) -> [u8; 32] {
    n.api().models().unwrap().models[0].digest.0
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
            a.api()
                .telemetry()
                .unwrap()
                .peers
                .iter()
                .any(|r| r.peer_id.as_deref() == Some(id.as_str()))
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
                    let bid = signed_bid(&key, request.job, Ok(offer));
                    let _ = client.respond_bid(reply, bid).await;
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
        || {
            a.api()
                .node()
                .unwrap()
                .mesh
                .gossip
                .is_some_and(|g| g.rejected >= 1)
        },
    );
    assert!(a.api().telemetry().unwrap().peers.is_empty());
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
        assert_eq!(body["executor"], a.api().node().unwrap().peer_id.as_str());
    }
    assert_eq!(asked.load(Ordering::SeqCst), EXTREME.len());
    // Every absurd answer was an offence; the node kept placing and still does.
    let node = a.api().node().unwrap();
    assert!(
        node.mesh.penalties >= Some(EXTREME.len() as u64),
        "{node:?}"
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
                        let bid = signed_bid(&key, request.job, Ok(GOOD_OFFER));
                        let _ = client.respond_bid(reply, bid).await;
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
    let call = bid_call(key.public().to_bytes(), digest);
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
    let peers = a.api().telemetry().unwrap().peers;
    assert_eq!(peers.len(), 1, "{peers:?}");
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

/// A peer that floods ledger-sync range requests: served off the mesh loop from a bounded
/// queue, the rest refused as busy, while the node keeps serving jobs and exec requests.
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
    // Floods of 200 back-to-back requests until some are refused: how many a node serves
    // before its queue fills depends on how fast it answers, so one flood is not always enough
    // on a quiet machine.
    let flood = 200;
    for round in 0..10 {
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
        if round == 0 {
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
        }
        // This flood's answers arrive within milliseconds; a refusal among them ends the
        // floods, none within 2 s means the node kept up and another flood follows.
        if holds_within(Duration::from_secs(2), || answers.lock().unwrap().1 > 0) {
            break;
        }
    }
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
