//! Three real `fabnode` processes on loopback form a mesh through one bootstrap peer and
//! replicate each other's ledgers by gossip.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const TCP: &str = "/ip4/127.0.0.1/tcp/0";
const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

fn mesh_env(network: &str) -> Vec<(String, String)> {
    mesh_env_on(network, TCP)
}

fn mesh_env_on(network: &str, listen: &str) -> Vec<(String, String)> {
    vec![
        ("FABNODE_MESH_ENABLED".into(), "true".into()),
        ("FABNODE_MESH_MDNS".into(), "false".into()),
        ("FABNODE_MESH_LISTEN".into(), listen.into()),
        ("FABNODE_LEDGER_NETWORK".into(), network.into()),
    ]
}

/// The peer id of `a`, and the environment for a node that listens on `listen` and bootstraps
/// from `a` (whose first listen address must use the same transport).
fn joining_env(a: &RunningNode, network: &str, listen: &str) -> (String, Vec<(String, String)>) {
    let (_, info) = a.get("/v1/node");
    let a_id = info["peer_id"].as_str().unwrap().to_owned();
    let addr = info["mesh"]["listen"][0].as_str().expect("A listens");
    let transport = if listen == QUIC { "/quic-v1" } else { "/tcp/" };
    assert!(addr.contains(transport), "{addr} is not on {listen}");
    let mut env = mesh_env_on(network, listen);
    env.push((
        "FABNODE_MESH_BOOTSTRAP".into(),
        format!("{addr}/p2p/{a_id}"),
    ));
    (a_id, env)
}

fn start(t: &TestDir, env: &[(String, String)]) -> RunningNode {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    t.start(&refs).unwrap()
}

/// Polls `check` until it holds or the deadline passes; returns how long it took.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !check() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

fn feed_size(node: &RunningNode, feed: &str) -> Option<(u64, Option<u64>)> {
    let (_, v) = node.get("/v1/ledger/heads");
    v["feeds"]
        .as_array()?
        .iter()
        .find(|f| f["feed"] == feed)
        .map(|f| (f["size"].as_u64().unwrap(), f["trusted_size"].as_u64()))
}

#[test]
fn three_nodes_replicate_every_ledger_through_one_bootstrap_peer() {
    let network = format!("t{}", std::process::id());
    let (ta, tb, tc) = (TestDir::new(), TestDir::new(), TestDir::new());
    let a = start(&ta, &mesh_env(&network));
    let (a_id, env) = joining_env(&a, &network, TCP);
    let b = start(&tb, &env);
    let mut c = start(&tc, &env);
    let b_id = b.get("/v1/node").1["peer_id"].as_str().unwrap().to_owned();

    wait_for("A to see two peers", Duration::from_secs(20), || {
        a.get("/v1/peers").1["peers"]
            .as_array()
            .is_some_and(|p| p.len() == 2)
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
        let (s, v) = a.post_json(
            "/v1/jobs",
            &json!({"model": "digits", "input": image_json(i)}),
        );
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
        let (s, _) = b.post_json(
            "/v1/jobs",
            &json!({"model": "digits", "input": image_json(10 + i)}),
        );
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
    let out = tc.run(&["ledger", "heads", "--json"]);
    let heads: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(heads["feeds"].as_array().unwrap().len(), 3, "{heads}");

    // Replicas are durable: C restarts and still holds them.
    c.signal(libc::SIGTERM);
    assert!(c.wait().success());
    let c2 = start(&tc, &env);
    assert_eq!(feed_size(&c2, &a_id), Some((5, Some(5))));
    assert_eq!(feed_size(&c2, &b_id), Some((3, Some(3))));
}

#[test]
fn a_node_that_was_offline_catches_up_200_entries_over_tcp() {
    catch_up(TCP, "c");
}

#[test]
fn a_node_that_was_offline_catches_up_200_entries_over_quic() {
    catch_up(QUIC, "q");
}

fn catch_up(listen: &str, tag: &str) {
    let network = format!("{tag}{}", std::process::id());
    let (ta, tb) = (TestDir::new(), TestDir::new());
    let a = start(&ta, &mesh_env_on(&network, listen));
    let (a_id, env) = joining_env(&a, &network, listen);

    // B is offline while A records 200 entries.
    for i in 0..200 {
        let (s, _) = a.post_json(
            "/v1/jobs",
            &json!({"model": "digits", "input": image_json(i)}),
        );
        assert_eq!(s, 200);
    }
    let b = start(&tb, &env);
    let took = wait_for(
        "B to catch up A's 200 entries",
        Duration::from_secs(30),
        || feed_size(&b, &a_id).is_some_and(|(n, _)| n == 200),
    );
    eprintln!("B caught up 200 entries over {listen} in {took:?}");
    // The next checkpoint A gossips signs exactly B's replica: B trusts it.
    let (s, _) = a.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(7)}),
    );
    assert_eq!(s, 200);
    wait_for(
        "B to trust A's checkpoint 201",
        Duration::from_secs(20),
        || feed_size(&b, &a_id) == Some((201, Some(201))),
    );
    // B's replica verifies entry by entry against A's own ledger.
    let (_, ea) = a.get("/v1/ledger/entries?from=0&limit=1000");
    assert_eq!(ea["entries"].as_array().unwrap().len(), 201);
}
