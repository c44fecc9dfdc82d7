//! Three real `fabnode` processes on loopback form a mesh through one bootstrap peer and
//! replicate each other's ledgers by gossip.

mod common;

use std::time::Duration;

use common::mesh::*;
use common::*;
use serde_json::{Value, json};

fn feed_size(node: &RunningNode, feed: &str) -> Option<(u64, Option<u64>)> {
    node.api()
        .ledger_heads()
        .unwrap()
        .feeds
        .into_iter()
        .find(|f| f.feed.as_deref() == Some(feed))
        .map(|f| (f.size, f.trusted_size.flatten()))
}

#[test]
fn three_nodes_replicate_every_ledger_through_one_bootstrap_peer() {
    let network = format!("t{}", std::process::id());
    let (ta, tb, tc) = (TestDir::new(), TestDir::new(), TestDir::new());
    let a = start(&ta, &mesh_env(&network));
    let (a_id, env) = joining_env(&a, &network, TCP);
    let b = start(&tb, &env);
    let mut c = start(&tc, &env);
    let b_id = b.api().node().unwrap().peer_id;

    wait_for("A to see two peers", Duration::from_secs(20), || {
        peer_count(&a) == 2
    });
    let out = ta.run(&["peers", "--json"]);
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        peers["peers"][0]["agent_version"]
            .as_str()
            .unwrap()
            .starts_with("fabnode/")
    );

    // Jobs on A land in B's and C's replicas of A's feed, with A's checkpoint trusted.
    for i in 0..5 {
        let (s, v) = job_here(&a, i);
        assert_eq!(s, 200, "{v}");
    }
    let took = wait_for(
        "B and C to hold A's 5 entries",
        Duration::from_secs(20),
        || {
            [&b, &c]
                .iter()
                .all(|n| feed_size(n, &a_id) == Some((5, Some(5))))
        },
    );
    eprintln!("A's 5 entries replicated to B and C in {took:?}");

    // And the other way: jobs on B reach A and C (C through A's forwarding or directly).
    for i in 0..3 {
        let (s, _) = job_here(&b, 10 + i);
        assert_eq!(s, 200);
    }
    wait_for(
        "A and C to hold B's 3 entries",
        Duration::from_secs(20),
        || {
            [&a, &c]
                .iter()
                .all(|n| feed_size(n, &b_id) == Some((3, Some(3))))
        },
    );
    // A burst of concurrent jobs on A: what A commits close together goes out as batches of
    // entries (fewer gossip messages than entries), and B and C take every one of them.
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let url = format!("{}/v1/jobs", a.base);
            let agent = a.agent();
            let body = json!({"model": "digits", "input": image_json(i % 10), "on": a_id});
            std::thread::spawn(move || agent.post(&url).send_json(&body).map(|r| r.status()))
        })
        .collect();
    for t in burst {
        assert_eq!(t.join().unwrap().unwrap(), 200);
    }
    wait_for(
        "B and C to hold A's 25 entries",
        Duration::from_secs(20),
        || {
            [&b, &c]
                .iter()
                .all(|n| feed_size(n, &a_id) == Some((25, Some(25))))
        },
    );
    let sent = |unit: &str| -> u64 {
        let metrics = a.get_text("/metrics");
        let line = format!("fabnode_gossip_entries_sent_total{{unit=\"{unit}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
    };
    let (entries, messages) = (sent("entries"), sent("messages"));
    eprintln!("A gossiped {entries} entries in {messages} messages");
    assert_eq!(entries, 25);
    assert!(
        messages < entries,
        "{messages} messages for {entries} entries"
    );
    for n in [&b, &c] {
        assert!(
            n.get_text("/metrics")
                .contains("fabnode_gossip_messages_total{result=\"rejected\"} 0")
        );
    }

    // The replication core's view (lag, last entry time) reaches the API within a tick.
    let heads_json = || -> serde_json::Value {
        let out = tc.run(&["ledger", "heads", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    wait_for(
        "C's heads to show lag and times",
        Duration::from_secs(5),
        || {
            heads_json()["feeds"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["own"] == false)
                .all(|f| f["last_entry_ms"].as_u64().is_some() && f["lag_entries"] == 0)
        },
    );
    let heads = heads_json();
    assert_eq!(heads["feeds"].as_array().unwrap().len(), 3, "{heads}");
    for f in heads["feeds"].as_array().unwrap() {
        if f["own"] == false {
            assert_eq!(
                f["trusted_root"].as_str().map(str::len),
                Some(64),
                "{heads}"
            );
        }
    }
    let out = tc.run(&["ledger", "heads"]);
    assert!(text(&out).0.contains("lag 0"), "{}", text(&out).0);

    // Replicas are durable: C restarts and still holds them.
    c.signal(libc::SIGTERM);
    assert!(c.wait().success());
    let c2 = start(&tc, &env);
    assert_eq!(feed_size(&c2, &a_id), Some((25, Some(25))));
    assert_eq!(feed_size(&c2, &b_id), Some((3, Some(3))));
    wait_for(
        "C's resumed replicas to show their last entry times",
        Duration::from_secs(5),
        || {
            c2.api()
                .ledger_heads()
                .unwrap()
                .feeds
                .iter()
                .filter(|f| !f.own)
                .all(|f| f.last_entry_ms.is_some())
        },
    );
}

#[test]
fn a_damaged_replica_is_fetched_again_and_the_node_keeps_running() {
    let network = format!("r{}", std::process::id());
    let (ta, tb) = (TestDir::new(), TestDir::new());
    let a = start(&ta, &mesh_env(&network));
    let (a_id, env) = joining_env(&a, &network, TCP);
    let mut b = start(&tb, &env);
    for i in 0..5 {
        let (s, _) = job_here(&a, i);
        assert_eq!(s, 200);
    }
    wait_for("B to hold A's 5 entries", Duration::from_secs(20), || {
        feed_size(&b, &a_id) == Some((5, Some(5)))
    });
    b.signal(libc::SIGTERM);
    assert!(b.wait().success());
    drop(b);
    // Flip a bit of B's stored copy of A's entry 2.
    {
        use redb::ReadableTable;
        let db = redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open(tb.path().join("ledger.redb"))
            .unwrap();
        let feed = a.get("/v1/ledger/entries/0").1["raw"].as_str().map(|raw| {
            let e = fab_ledger::SignedEntry::decode_verified(&hex::decode(raw).unwrap()).unwrap();
            e.body().feed.to_bytes()
        });
        let feed = feed.unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(fab_ledger::store::REPLICA_ENTRIES).unwrap();
            let mut bytes = t.get((feed, 2)).unwrap().unwrap().value().to_vec();
            let n = bytes.len();
            bytes[n - 2] ^= 0x01;
            t.insert((feed, 2), bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let out = tb.run(&["ledger", "verify"]);
    assert!(
        !out.status.success(),
        "a damaged replica must fail verification"
    );
    assert!(text(&out).1.contains("FAILED"), "{}", text(&out).1);
    // B starts anyway, says what it found, and repairs the replica from A.
    let b = start(&tb, &env);
    wait_for("B to repair A's feed", Duration::from_secs(20), || {
        tb.run(&["ledger", "verify"]).status.success()
    });
    assert!(
        b.log().contains("stored replica does not verify"),
        "{}",
        b.log()
    );
    assert_eq!(feed_size(&b, &a_id).map(|s| s.0), Some(5));
}

#[test]
fn a_node_that_was_offline_catches_up_200_entries_over_tcp() {
    catch_up(TCP, "c");
}

#[test]
fn a_node_that_was_offline_catches_up_200_entries_over_quic() {
    catch_up(QUIC, "q");
}

/// B goes offline while A writes 200 entries that gossip delivers to C; B, restarted, can only
/// get them by catch-up (ledger-sync), since nobody gossips them again.
fn catch_up(listen: &str, tag: &str) {
    let network = format!("{tag}{}", std::process::id());
    let (ta, tb, tc) = (TestDir::new(), TestDir::new(), TestDir::new());
    let a = start(&ta, &mesh_env_on(&network, listen));
    let (a_id, env) = joining_env(&a, &network, listen);
    let c = start(&tc, &env);
    let mut b = start(&tb, &env);
    wait_for("A to see B and C", Duration::from_secs(20), || {
        peer_count(&a) == 2
    });
    b.signal(libc::SIGTERM);
    assert!(b.wait().success());
    drop(b);
    for i in 0..200 {
        let (s, _) = job_here(&a, i);
        assert_eq!(s, 200);
    }
    wait_for("C to hold A's 200 entries", Duration::from_secs(30), || {
        feed_size(&c, &a_id).is_some_and(|(n, _)| n == 200)
    });
    let b = start(&tb, &env);
    let took = wait_for(
        "B to catch up A's 200 entries",
        Duration::from_secs(30),
        || feed_size(&b, &a_id).is_some_and(|(n, _)| n == 200),
    );
    eprintln!("B caught up 200 entries over {listen} in {took:?}");
    // The next checkpoint A gossips signs exactly B's replica: B trusts it.
    let (s, _) = job_here(&a, 7);
    assert_eq!(s, 200);
    wait_for(
        "B to trust A's checkpoint 201",
        Duration::from_secs(20),
        || feed_size(&b, &a_id) == Some((201, Some(201))),
    );
    // Remote execution over the same transport: B runs a job on A.
    let (s, v) = b.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(8), "on": a_id}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["executor"], a_id.as_str());
    let peers = b.api().peers().unwrap().peers;
    let transport = if listen == QUIC { "quic" } else { "tcp" };
    assert!(
        peers
            .iter()
            .all(|p| p.transport.as_deref() == Some(transport)),
        "{peers:?}"
    );
}

/// Gossip messages `n` rejected.
fn rejected(n: &RunningNode) -> u64 {
    n.api()
        .node()
        .unwrap()
        .mesh
        .gossip
        .map_or(0, |g| g.rejected)
}

/// `n`'s gossip score of `peer`.
fn score_of(n: &RunningNode, peer: &str) -> Option<f64> {
    n.api()
        .peers()
        .unwrap()
        .peers
        .into_iter()
        .find(|p| p.peer_id == peer)
        .and_then(|p| p.score)
}

fn peer_count(n: &RunningNode) -> usize {
    n.api().peers().map_or(0, |p| p.peers.len())
}

/// Runs a digits job on `node` itself (pinned: the scheduler would otherwise place it on
/// whichever identical node scores best), so it lands in that node's feed.
fn job_here(node: &RunningNode, image: usize) -> (u16, Value) {
    node.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(image), "on": peer_id(node)}),
    )
}

#[test]
fn five_nodes_find_each_other_and_run_a_job_on_a_chosen_peer() {
    let network = format!("x{}", std::process::id());
    let dirs: Vec<TestDir> = (0..5).map(|_| TestDir::new()).collect();
    let a = start(&dirs[0], &mesh_env(&network));
    let (_, env) = joining_env(&a, &network, TCP);
    let mut nodes = vec![a];
    for d in &dirs[1..] {
        nodes.push(start(d, &env));
    }
    // Every node knows only A's address; Kademlia finds the rest.
    wait_for(
        "every node to see the 4 others",
        Duration::from_secs(30),
        || nodes.iter().all(|n| peer_count(n) == 4),
    );
    let b_id = peer_id(&nodes[1]);
    let input = dirs[0].path().join("three.json");
    std::fs::write(&input, image_json(3).to_string()).unwrap();
    let input = input.to_str().unwrap();

    let out = dirs[0].run(&[
        "submit", "--model", "digits", "--input", input, "--on", &b_id, "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["executor"], b_id.as_str());
    assert_eq!(answer["receipt_verified"], true);
    // B ran it: the entry is B's first, in B's own ledger.
    assert_eq!(feed_size(&nodes[1], &b_id).map(|s| s.0), Some(1));
    assert_eq!(
        feed_size(&nodes[0], &peer_id(&nodes[0])).map(|s| s.0),
        Some(0)
    );
    let took = wait_for(
        "all five ledgers to hold B's entry",
        Duration::from_secs(2),
        || {
            nodes
                .iter()
                .all(|n| feed_size(n, &b_id).is_some_and(|s| s.0 == 1))
        },
    );
    eprintln!("B's entry reached all five ledgers {took:?} after the answer");
    // Human-readable output names the executor; bad peer ids and unknown models are explained.
    let out = dirs[2].run(&[
        "submit", "--model", "digits", "--input", input, "--on", &b_id,
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("executor   {b_id}")), "{stdout}");
    let out = dirs[0].run(&["submit", "--model", "digits", "--input", input, "--on", "B"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("bad_peer_id"), "{}", text(&out).1);
    let out = dirs[0].run(&["submit", "--model", "nope", "--input", input, "--on", &b_id]);
    assert!(
        text(&out).1.contains("404 unknown_model"),
        "{}",
        text(&out).1
    );
    let out = dirs[0].run(&["peers"]);
    assert!(text(&out).0.contains(" tcp "), "{}", text(&out).0);
}

/// The shard of a data dir's node key among `shards`.
fn shard_of(t: &TestDir, shards: u64) -> u16 {
    let out = t.run(&["keys", "show"]);
    let peer: fab_mesh::net::Peer = text(&out)
        .0
        .lines()
        .find_map(|l| l.strip_prefix("peer id"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let key = fab_mesh::net::peer_key(&peer).unwrap();
    fab_mesh::shard::Shards::new(shards).unwrap().of(&key)
}

#[test]
fn a_sharded_network_replicates_hears_and_places_within_each_shard() {
    let network = format!("s{}", std::process::id());
    // Two nodes of each of two shards (shards come from the keys: draw keys until there are).
    let (mut zero, mut one) = (Vec::new(), Vec::new());
    for _ in 0..64 {
        if zero.len() >= 2 && one.len() >= 2 {
            break;
        }
        let t = TestDir::new();
        match shard_of(&t, 2) {
            0 if zero.len() < 2 => zero.push(t),
            1 if one.len() < 2 => one.push(t),
            _ => {}
        }
    }
    assert!(zero.len() == 2 && one.len() == 2, "64 keys and no 2 + 2");
    let sharded = |mut env: Vec<(String, String)>| {
        env.push(("FABNODE_MESH_SHARDS".into(), "2".into()));
        env
    };
    // A (shard 0) is everyone's bootstrap peer, C and D (shard 1) included.
    let a = start(&zero[0], &sharded(mesh_env(&network)));
    let (a_id, env) = joining_env(&a, &network, TCP);
    let env = sharded(env);
    let b = start(&zero[1], &env);
    let c = start(&one[0], &env);
    let d = start(&one[1], &env);
    let (b_id, c_id, d_id) = (peer_id(&b), peer_id(&c), peer_id(&d));
    for (n, shard) in [(&a, 0), (&b, 0), (&c, 1), (&d, 1)] {
        let info = n.api().node().unwrap();
        assert_eq!(info.mesh.shards, Some(2), "{info:?}");
        assert_eq!(info.mesh.shard, Some(shard), "{info:?}");
    }
    let out = one[0].run(&["status"]);
    assert!(
        text(&out).0.contains("mesh           shard 1 of 2"),
        "{}",
        text(&out).0
    );
    // Each node hears the telemetry of its shard's other member, and of no one else.
    let heard = |n: &RunningNode| -> Vec<String> {
        let mut ids: Vec<String> = n
            .api()
            .telemetry()
            .unwrap()
            .peers
            .into_iter()
            .map(|p| p.peer_id.unwrap())
            .collect();
        ids.sort();
        ids
    };
    for (n, mate) in [(&a, &b_id), (&b, &a_id), (&c, &d_id), (&d, &c_id)] {
        wait_for(
            "telemetry of the shard's other member",
            Duration::from_secs(30),
            || heard(n) == vec![mate.clone()],
        );
    }

    // C's runs are replicated by D, its shard's other member; A and B do not follow C's feed.
    for i in 0..3 {
        let (s, v) = job_here(&c, i);
        assert_eq!(s, 200, "{v}");
    }
    wait_for("D to hold C's 3 entries", Duration::from_secs(30), || {
        feed_size(&d, &c_id) == Some((3, Some(3)))
    });
    for i in 0..2 {
        let (s, v) = job_here(&a, i);
        assert_eq!(s, 200, "{v}");
    }
    wait_for("B to hold A's 2 entries", Duration::from_secs(30), || {
        feed_size(&b, &a_id) == Some((2, Some(2)))
    });
    // C's entries went out before A's, and A (C's bootstrap peer, connected to it) is as near
    // to C as D is: had they crossed shards, A and B would hold them by now, as B holds A's.
    assert_eq!(feed_size(&a, &c_id), None);
    assert_eq!(feed_size(&b, &c_id), None);
    assert_eq!(feed_size(&c, &a_id), None);
    assert_eq!(feed_size(&d, &a_id), None);

    // Jobs submitted on A without a pin are placed within A's shard (A or B).
    for i in 0..4 {
        let (s, v) = a.post_json(
            "/v1/jobs",
            &json!({"model": "digits", "input": image_json(i)}),
        );
        assert_eq!(s, 200, "{v}");
        let executor = v["executor"].as_str().unwrap_or(&a_id);
        assert!(
            executor == a_id || executor == b_id,
            "placed on {executor}: {v}"
        );
    }
}

#[test]
fn demo_runs_a_three_process_mesh_and_verifies_every_ledger() {
    let t = TestDir::new();
    let out = t.run(&["demo", "--images", "45", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    assert!(v["accuracy"].as_f64().unwrap() > 0.9, "{v}");
    let feeds = v["feeds"].as_array().unwrap();
    assert_eq!(feeds.len(), 3, "{v}");
    // Job i ran on node (i + 1) mod 3: 15 entries each, identical on every node; then A placed
    // one job allowed only on cloud nodes (C is the only one) and one on 3 replicas (all three).
    let ids = v["nodes"].as_array().unwrap();
    assert_eq!(v["placement"]["cloud_only"]["executor"], ids[2], "{v}");
    assert_eq!(v["placement"]["replicas"]["agree"], true, "{v}");
    let mut ran: Vec<&str> = v["placement"]["replicas"]["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    ran.sort();
    let mut all: Vec<&str> = ids.iter().map(|e| e.as_str().unwrap()).collect();
    all.sort();
    assert_eq!(ran, all, "{v}");
    for f in feeds {
        let want = if f["feed"] == ids[2] { 17 } else { 16 };
        assert_eq!(f["entries"], want, "{v}");
    }
}

#[test]
fn nodes_publish_signed_telemetry_and_keep_a_view_of_their_peers() {
    let network = format!("tm{}", std::process::id());
    let (ta, tb, tc) = (TestDir::new(), TestDir::new(), TestDir::new());
    let fast = |mut env: Vec<(String, String)>, tier: &str, labels: &str| {
        env.push(("FABNODE_TELEMETRY_EVERY_MS".into(), "200".into()));
        env.push(("FABNODE_SCHEDULER_TIER".into(), tier.into()));
        env.push(("FABNODE_SCHEDULER_LABELS".into(), labels.into()));
        env
    };
    let a = start(&ta, &fast(mesh_env(&network), "edge", ""));
    let (_, env) = joining_env(&a, &network, TCP);
    let b = start(&tb, &fast(env.clone(), "cloud", "gpu"));
    let c = start(&tc, &fast(env, "device", "camera,arm64"));
    let (b_id, c_id) = (peer_id(&b), peer_id(&c));
    let peer_report = |id: &str| {
        a.api()
            .telemetry()
            .unwrap()
            .peers
            .into_iter()
            .find(|p| p.peer_id.as_deref() == Some(id))
    };
    wait_for(
        "A to hold B's and C's telemetry",
        Duration::from_secs(20),
        || peer_report(&b_id).is_some() && peer_report(&c_id).is_some(),
    );
    let rb = peer_report(&b_id).unwrap();
    assert_eq!(rb.tier, "cloud", "{rb:?}");
    assert_eq!(rb.labels, ["gpu"]);
    assert!(rb.host.cores >= 1, "{rb:?}");
    assert!(rb.speed_permille > 0, "{rb:?}");
    assert_eq!(peer_report(&c_id).unwrap().labels, ["arm64", "camera"]);
    // B runs a job: its next report carries the model's measured latency.
    let (s, _) = job_here(&b, 1);
    assert_eq!(s, 200);
    wait_for(
        "B's report to carry the model latency",
        Duration::from_secs(10),
        || peer_report(&b_id).is_some_and(|r| r.models.len() == 1),
    );
    assert_eq!(b.api().telemetry().unwrap().own.unwrap().tier, "cloud");
    let out = ta.run(&["telemetry"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("self  edge"), "{stdout}");
    assert!(
        stdout.contains(&format!("{b_id}  cloud -  [gpu]")),
        "{stdout}"
    );
}

mod bad_peer {
    //! A misbehaving peer in this process, speaking the real protocols to real nodes.

    use super::*;
    use common::peer::*;
    use fab_inference::Tensor;
    use fab_ledger::{ContentId, Keypair, Signed};
    use fab_mesh::exec::{ExecRequest, ExecResponse};
    use fab_mesh::net::Peer;

    fn job(
        signer: &Keypair,
        requester: &Keypair,
        model_digest: ContentId,
        input: &Tensor,
    ) -> Vec<u8> {
        signed_job(
            signer,
            requester,
            now_ms(),
            "digits",
            model_digest.0,
            "image",
            input,
        )
    }

    #[test]
    fn a_fork_from_an_equivocating_peer_is_kept_as_evidence_that_verifies_offline() {
        let network = format!("ev{}", std::process::id());
        let ta = TestDir::new();
        let a = start(&ta, &mesh_env(&network));
        let (rt, bad, key) = join(&network, &dial_addr(&a));
        // Entry 0 of the bad peer's feed, then a second, different entry 0.
        let body = |v: u64| fab_ledger::EntryBody::Unknown {
            kind: 99,
            value: ciborium::Value::Integer(v.into()),
        };
        let first = fab_ledger::FeedWriter::resume(key.clone(), 0, None).append(body(1), 1);
        let second = fab_ledger::FeedWriter::resume(key.clone(), 0, None).append(body(2), 2);
        let gossip =
            |e: &fab_ledger::SignedEntry| fab_mesh::wire::GossipMsg::Entry(e.encode()).encode();
        rt.block_on(publish_when_subscribed(|| bad.publish_raw(gossip(&first))));
        let feed = key.public().peer_id();
        wait_for(
            "A to hold the bad peer's entry 0",
            Duration::from_secs(20),
            || feed_size(&a, &feed).is_some_and(|s| s.0 == 1),
        );
        rt.block_on(publish_when_subscribed(|| bad.publish_raw(gossip(&second))));
        let proof = ta.path().join("evidence").join(format!("{feed}-0.json"));
        wait_for("A to keep the evidence", Duration::from_secs(20), || {
            proof.exists()
        });
        // Anyone can check it offline, with no node and no data dir.
        let out = ta.run(&[
            "ledger",
            "verify-evidence",
            proof.to_str().unwrap(),
            "--json",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["feed"], feed.as_str());
        assert_eq!(v["at"], 0);
        assert!(a.log().contains("evidence of a fork kept"), "{}", a.log());
    }

    #[test]
    fn forged_malformed_and_oversized_gossip_is_rejected_and_scored_down() {
        let network = format!("m{}", std::process::id());
        let (ta, tb) = (TestDir::new(), TestDir::new());
        let a = start(&ta, &mesh_env(&network));
        let (a_id, env) = joining_env(&a, &network, TCP);
        let b = start(&tb, &env);
        let addr = dial_addr(&a);
        let (rt, m, _) = join(&network, &addr);
        wait_for(
            "A to see B and the bad peer",
            Duration::from_secs(20),
            || peer_count(&a) == 2,
        );
        // A real, valid entry with its signature broken.
        let (s, _) = job_here(&a, 1);
        assert_eq!(s, 200);
        let (_, e) = a.get("/v1/ledger/entries/0");
        let mut forged = hex::decode(e["raw"].as_str().unwrap()).unwrap();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let payloads = [
            fab_mesh::wire::GossipMsg::Entry(forged).encode(),
            b"\xa1\x01\x02 not the envelope".to_vec(),
            vec![0x42; fab_mesh::wire::GOSSIP_BYTES_MAX + 100],
        ];
        rt.block_on(async {
            for p in &payloads {
                publish_when_subscribed(|| m.publish_raw(p.clone())).await;
            }
        });
        wait_for(
            "A to reject the 3 bad messages",
            Duration::from_secs(10),
            || rejected(&a) >= 3,
        );
        let m_id = m.peer_id().to_string();
        let score = score_of(&a, &m_id);
        assert!(score.is_some_and(|s| s < 0.0), "bad peer's score {score:?}");
        let metrics = a
            .agent()
            .get(format!("{}/metrics", a.base))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert!(
            metrics.contains("fabnode_gossip_messages_total{result=\"rejected\"} 3"),
            "{metrics}"
        );
        // Honest traffic keeps flowing, and the nodes kept running.
        for i in 0..3 {
            let (s, _) = job_here(&a, 10 + i);
            assert_eq!(s, 200);
        }
        wait_for("B to hold A's 4 entries", Duration::from_secs(10), || {
            feed_size(&b, &a_id).is_some_and(|(n, _)| n == 4)
        });
        assert!(a.log().contains("gossip message rejected"));
        drop(rt);
    }

    #[test]
    fn calls_for_bids_get_signed_answers_that_explain_a_decline() {
        use fab_mesh::bid::BidRequest;
        let network = format!("bd{}", std::process::id());
        let tb = TestDir::new();
        let mut env = mesh_env(&network);
        env.push(("FABNODE_TELEMETRY_EVERY_MS".into(), "200".into()));
        let b = start(&tb, &env);
        let b_id = peer_id(&b);
        let addr = dial_addr(&b);
        let (rt, m, key) = join(&network, &addr);
        let peer: Peer = b_id.parse().unwrap();
        wait_for("B's first telemetry", Duration::from_secs(20), || {
            b.api().telemetry().unwrap().own.is_some()
        });
        let digest: [u8; 32] = b.api().models().unwrap().models[0].digest.0;
        let call = bid_call;
        let ask = |r: BidRequest| rt.block_on(m.bid(peer, r)).unwrap();
        let bid = ask(call(key.public().to_bytes(), digest));
        assert_eq!(bid.body().bidder.peer_id(), b_id);
        let offer = bid
            .body()
            .answer
            .clone()
            .expect("B bids for a model it holds");
        assert!(offer.compute_us > 0);
        let no_model = ask(call(key.public().to_bytes(), [0; 32]));
        assert_eq!(
            no_model.body().answer,
            Err("does not hold the model".into())
        );
        let other = Keypair::generate().public().to_bytes();
        let err = ask(call(other, digest)).body().answer.clone().unwrap_err();
        assert!(err.contains("another requester"), "{err}");
        drop(rt);
    }

    #[test]
    fn forged_telemetry_is_rejected_and_scores_the_sender_down() {
        use fab_node::sched::telemetry::TelemetryReport;
        let network = format!("mt{}", std::process::id());
        let ta = TestDir::new();
        let a = start(&ta, &mesh_env(&network));
        let addr = dial_addr(&a);
        // This peer subscribes to telemetry (accepting anything), so it can publish there.
        let (rt, m, _) = join_with(&network, &addr, |c| {
            c.telemetry_validator = Some(std::sync::Arc::new(|_: &Peer, _: &[u8]| {
                Ok(Box::new(()) as Box<dyn std::any::Any + Send>)
            }));
        });
        wait_for("A to see the bad peer", Duration::from_secs(20), || {
            peer_count(&a) == 1
        });
        // A report whose signature does not verify, and bytes that are not a report at all.
        let other = Keypair::generate();
        let report = TelemetryReport {
            node: other.public(),
            seq: 1,
            telemetry: fab_node::sched::Telemetry {
                tier: fab_node::sched::Tier::Cloud,
                region: String::new(),
                labels: Default::default(),
                price_per_s_micros: 0,
                queue_depth: 0,
                workers: 1,
                speed_permille: 1_000_000,
                power_mw: 0,
                battery_permille: None,
                model_latency_us: Default::default(),
                host: Default::default(),
                at_ms: 1,
            },
        };
        let mut forged = Signed::sign(report, &other).encode();
        // The signature is the last 64 bytes.
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        let payloads = [forged, b"\x83\x01 junk".to_vec()];
        rt.block_on(async {
            for p in &payloads {
                publish_when_subscribed(|| m.publish_telemetry(p.clone())).await;
            }
        });
        wait_for("A to reject both", Duration::from_secs(10), || {
            rejected(&a) >= 2
        });
        assert!(a.api().telemetry().unwrap().peers.is_empty());
        let m_id = m.peer_id().to_string();
        let score = score_of(&a, &m_id);
        assert!(score.is_some_and(|s| s < 0.0), "{score:?}");
        assert!(
            a.log().contains("telemetry: ") && a.log().contains("signature"),
            "{}",
            a.log()
        );
        drop(rt);
    }

    #[test]
    fn exec_requests_are_checked_before_anything_runs() {
        let network = format!("e{}", std::process::id());
        let tb = TestDir::new();
        let b = start(&tb, &mesh_env(&network));
        let b_id = peer_id(&b);
        let addr = dial_addr(&b);
        let (rt, m, key) = join(&network, &addr);
        let peer: Peer = b_id.parse().unwrap();
        let input = Tensor::from_json_value(image_json(5)).unwrap();
        let npy = input.to_npy();
        let ask = |r: ExecRequest| rt.block_on(m.exec(peer, r)).unwrap();
        let refused = |r: ExecResponse| match r {
            ExecResponse::Refused { code, .. } => code,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            refused(ask(ExecRequest::Describe {
                model: "nope".into()
            })),
            "unknown_model"
        );
        let ExecResponse::Described {
            digest,
            inputs,
            outputs,
            ..
        } = ask(ExecRequest::Describe {
            model: "digits".into(),
        })
        else {
            panic!("no description")
        };
        assert_eq!(inputs, ["image"]);
        assert_eq!(outputs.len(), 2);
        let digest = ContentId(digest);
        let run = |job: Vec<u8>, npy: Vec<u8>| ExecRequest::Run {
            job,
            inputs: vec![("image".into(), npy)],
        };
        // Signed by someone other than the peer that sends it.
        let other = Keypair::generate();
        assert_eq!(
            refused(ask(run(job(&other, &other, digest, &input), npy.clone()))),
            "requester_mismatch"
        );
        // Signed by a key that is not the named requester: the signature does not verify.
        assert_eq!(
            refused(ask(run(job(&other, &key, digest, &input), npy.clone()))),
            "bad_job"
        );
        // Another model version than the one B holds.
        assert_eq!(
            refused(ask(run(
                job(&key, &key, ContentId([9; 32]), &input),
                npy.clone()
            ))),
            "model_changed"
        );
        // An input other than the one the job signs.
        let other_input = Tensor::from_json_value(image_json(6)).unwrap();
        assert_eq!(
            refused(ask(run(
                job(&key, &key, digest, &input),
                other_input.to_npy()
            ))),
            "input_mismatch"
        );
        // Garbage tensor bytes.
        assert_eq!(
            refused(ask(run(
                job(&key, &key, digest, &input),
                b"not npy".to_vec()
            ))),
            "bad_tensor"
        );
        assert_eq!(
            b.api().ledger_head().unwrap().entries,
            0,
            "nothing refused reached the ledger"
        );
        // A good job runs once; the same signed job sent again is a replay.
        let good = job(&key, &key, digest, &input);
        let ExecResponse::Ran { entry, outputs } = ask(run(good.clone(), npy.clone())) else {
            panic!("the job did not run")
        };
        let entry = fab_ledger::SignedEntry::decode_verified(&entry).unwrap();
        assert_eq!(entry.body().feed.peer_id(), b_id);
        assert_eq!(outputs.len(), 2);
        assert_eq!(refused(ask(run(good, npy))), "replayed");
        assert_eq!(b.api().ledger_head().unwrap().entries, 1);
    }
}

/// Set in the copy of this test binary that runs inside a private network namespace.
const IN_NETNS: &str = "FABNODE_TEST_IN_NETNS";

#[test]
fn five_nodes_discover_each_other_by_mdns_in_a_private_network() {
    if std::env::var_os(IN_NETNS).is_some() {
        return mdns_inside_namespace();
    }
    // mDNS multicasts on every non-loopback interface. Run the nodes in a fresh network
    // namespace whose only link is a veth pair, so nothing leaves this machine and nothing outside
    // answers: this test binary re-runs itself there.
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--net", "--"])
        .arg(exe)
        .args([
            "--exact",
            "five_nodes_discover_each_other_by_mdns_in_a_private_network",
            "--nocapture",
        ])
        .env(IN_NETNS, "1")
        .output()
        .expect("unshare (util-linux) runs");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inside the namespace: {stdout}\n{stderr}"
    );
    eprintln!(
        "{}",
        stderr
            .lines()
            .filter(|l| l.contains("mDNS in"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn mdns_inside_namespace() {
    for cmd in [
        "ip link set lo up",
        "ip link add fab0 type veth peer name fab1",
        "ip addr add 10.77.0.1/24 dev fab0",
        "ip link set fab0 multicast on",
        "ip link set fab1 up",
        "ip link set fab0 up",
    ] {
        let st = std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    }
    let network = format!("md{}", std::process::id());
    let env = vec![
        ("FABNODE_MESH_ENABLED".to_owned(), "true".to_owned()),
        ("FABNODE_MESH_MDNS".into(), "true".into()),
        ("FABNODE_MESH_LISTEN".into(), "/ip4/0.0.0.0/tcp/0".into()),
        ("FABNODE_LEDGER_NETWORK".into(), network),
    ];
    let dirs: Vec<TestDir> = (0..5).map(|_| TestDir::new()).collect();
    let nodes: Vec<RunningNode> = dirs.iter().map(|d| start(d, &env)).collect();
    // No bootstrap peer anywhere: only mDNS can introduce them.
    let took = wait_for(
        "every node to find the 4 others by mDNS",
        Duration::from_secs(30),
        || nodes.iter().all(|n| peer_count(n) == 4),
    );
    eprintln!("5 nodes found each other by mDNS in {took:?}");
    // And a job on one reaches all by gossip.
    let (s, _) = job_here(&nodes[2], 2);
    assert_eq!(s, 200);
    let id = peer_id(&nodes[2]);
    wait_for(
        "all five to hold the entry",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| feed_size(n, &id).is_some_and(|s| s.0 == 1))
        },
    );
}

/// Needs Node.js and `npm ci` in tools/interop-js (`.ci/run` does both), hence ignored in a
/// plain `cargo test`; run with `cargo test -p fabnode --test mesh -- --ignored`.
#[test]
#[ignore = "needs Node.js and tools/interop-js/node_modules (.ci/run installs them)"]
fn a_js_libp2p_peer_identifies_pings_and_reads_the_ledger_topic() {
    use std::io::{BufRead, BufReader};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/interop-js");
    assert!(
        dir.join("node_modules").is_dir(),
        "run `npm ci` in {}",
        dir.display()
    );
    let network = format!("js{}", std::process::id());
    let t = TestDir::new();
    let a = start(&t, &mesh_env(&network));
    let addr = dial_addr(&a);
    let mut js = std::process::Command::new("node")
        .arg("interop.mjs")
        .args([&addr, &network])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (Node.js) runs");
    let stderr = js.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l == "subscribed"),
        "the js peer did not get as far as subscribing"
    );
    // The js peer is an observer: connected and identified, not a fabnode node.
    wait_for("A to identify the js peer", Duration::from_secs(10), || {
        a.api()
            .peers()
            .unwrap()
            .peers
            .iter()
            .any(|p| p.role == "observer")
    });
    let (s, _) = job_here(&a, 4);
    assert_eq!(s, 200);
    let out = js.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
    assert!(out.status.success() && v["ok"] == true, "{stdout}");
    assert!(
        v["agent"]
            .as_str()
            .is_some_and(|a| a.starts_with("fabnode/")),
        "{v}"
    );
    assert!(v["rtt_ms"].as_f64().is_some(), "{v}");
    let protocols = v["protocols"].as_array().unwrap();
    for p in ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/meshsub/1.1.0"] {
        assert!(protocols.iter().any(|x| x == p), "{p} not offered: {v}");
    }
}
