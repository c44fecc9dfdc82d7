//! The swarm's behaviour in one process over libp2p's memory transport: discovery past the
//! bootstrap peer, gossip validation and scoring, and the exec and ledger-sync protocols. No
//! sockets, so these run anywhere.
#![cfg(feature = "net")]

use std::time::Duration;

use fab_ledger::{EntryBody, FeedWriter, Keypair};
use fab_mesh::exec::{ExecRequest, ExecResponse};
use fab_mesh::net::{self, Addr, MeshClient, MeshConfig, MeshError, MeshEvent, Peer};
use fab_mesh::validate::Valid;
use fab_mesh::wire::{GossipMsg, SyncRequest, SyncResponse};
use tokio::sync::mpsc;

struct TestNode {
    client: MeshClient,
    events: mpsc::Receiver<MeshEvent>,
    addr: Addr,
}

async fn node(network: &str, port: u64, bootstrap: Option<&TestNode>) -> TestNode {
    node_with(Keypair::generate(), network, port, bootstrap, |_| {}).await
}

/// A node with a given key and settings beyond the tests' defaults.
async fn node_with(
    key: Keypair,
    network: &str,
    port: u64,
    bootstrap: Option<&TestNode>,
    set: impl FnOnce(&mut MeshConfig),
) -> TestNode {
    let mut config = MeshConfig::new(network);
    set(&mut config);
    config.memory_transport = true;
    config.heartbeat = Duration::from_millis(100);
    let addr: Addr = format!("/memory/{port}").parse().unwrap();
    config.listen = vec![addr.clone()];
    if let Some(b) = bootstrap {
        config.bootstrap = vec![
            format!("{}/p2p/{}", b.addr, b.client.peer_id())
                .parse()
                .unwrap(),
        ];
    }
    let (client, events, event_loop) = net::start(&key, config).unwrap();
    tokio::spawn(event_loop.run());
    TestNode {
        client,
        events,
        addr,
    }
}

/// A port no other test in this process uses.
fn port() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = u64::from(std::process::id()) * 1000 + 1_000_000;
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the next event that `pick` accepts, skipping others.
async fn next_event<T>(n: &mut TestNode, mut pick: impl FnMut(MeshEvent) -> Option<T>) -> T {
    let deadline = Duration::from_secs(20);
    tokio::time::timeout(deadline, async {
        loop {
            let e = n.events.recv().await.expect("mesh stopped");
            if let Some(t) = pick(e) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

/// Waits until `a` is connected to `b`.
async fn connected(a: &TestNode, b: &TestNode) {
    eventually("the two nodes to connect", async || {
        a.client
            .peers()
            .await
            .unwrap()
            .contains_key(&b.client.peer_id())
    })
    .await;
}

async fn publish_when_ready(n: &TestNode, payload: Vec<u8>) {
    for _ in 0..500 {
        if n.client.publish_raw(payload.clone()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no peer subscribed to the ledger topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_found_past_the_bootstrap_peer_gossip_valid_entries_and_reject_bad_ones() {
    let a = node("mem", port(), None).await;
    let mut b = node("mem", port(), Some(&a)).await;
    let mut c = node("mem", port(), Some(&a)).await;
    // B and C only know A; Kademlia introduces them to each other.
    connected(&b, &c).await;
    let peers = a.client.peers().await.unwrap();
    let info = &peers[&b.client.peer_id()];
    assert_eq!(info.transport, Some("memory"));
    assert!(
        info.agent_version
            .as_deref()
            .unwrap()
            .starts_with("fabnode/")
    );

    // A valid entry from A reaches B and C through validation.
    let key = Keypair::from_secret([3; 32]);
    let body = EntryBody::Unknown {
        kind: 99,
        value: ciborium::Value::Array(vec![]),
    };
    let entry = FeedWriter::resume(key, 0, None).append(body, 1);
    publish_when_ready(&a, GossipMsg::Entry(entry.encode()).encode()).await;
    for n in [&mut b, &mut c] {
        let got = next_event(n, |e| match e {
            MeshEvent::Valid { valid, .. } => match *valid {
                Valid::Entry(e) => Some(e),
                _ => None,
            },
            _ => None,
        })
        .await;
        assert_eq!(got.id(), entry.id());
    }
    // Garbage is rejected, counted, and scores the sender down; it is not forwarded.
    publish_when_ready(&a, b"\xff not a gossip message".to_vec()).await;
    let (from, reason) = next_event(&mut b, |e| match e {
        MeshEvent::Rejected { from, reason } => Some((from, reason)),
        _ => None,
    })
    .await;
    assert_eq!(from, a.client.peer_id());
    assert!(reason.contains("CBOR"), "{reason}");
    assert_eq!(b.client.stats().await.unwrap().rejected, 1);
    eventually("A's score on B to drop below zero", async || {
        b.client.peers().await.unwrap()[&a.client.peer_id()]
            .score
            .is_some_and(|s| s < 0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_sync_requests_round_trip_and_failures_are_reported() {
    let a = node("mem2", port(), None).await;
    let mut b = node("mem2", port(), Some(&a)).await;
    let b_id = b.client.peer_id();
    eventually("A to see B", async || {
        a.client.peers().await.unwrap().contains_key(&b_id)
    })
    .await;

    // Exec: B answers whatever A asks; A gets exactly that answer.
    let asking = {
        let a = a.client.clone();
        tokio::spawn(async move {
            a.exec(
                b_id,
                ExecRequest::Describe {
                    model: "digits".into(),
                },
            )
            .await
        })
    };
    let (request, reply) = next_event(&mut b, |e| match e {
        MeshEvent::ExecRequest { request, reply, .. } => Some((request, reply)),
        _ => None,
    })
    .await;
    assert_eq!(
        request,
        ExecRequest::Describe {
            model: "digits".into()
        }
    );
    let answer = ExecResponse::Refused {
        code: "unknown_model".into(),
        message: "no such model".into(),
    };
    b.client.respond_exec(reply, answer.clone()).await.unwrap();
    assert_eq!(asking.await.unwrap().unwrap(), answer);

    // Sync: a heads request reaches B; B's answer comes back as an event on A.
    let mut a = a;
    a.client.request(b_id, SyncRequest::Heads).await.unwrap();
    let reply = next_event(&mut b, |e| match e {
        MeshEvent::SyncRequest { request, reply, .. } => {
            assert_eq!(request, SyncRequest::Heads);
            Some(reply)
        }
        _ => None,
    })
    .await;
    let heads = SyncResponse::Heads(vec![([7; 32], 3)]);
    b.client.respond(reply, heads.clone()).await.unwrap();
    let (from, got) = next_event(&mut a, |e| match e {
        MeshEvent::SyncResponse { from, response } => Some((from, response)),
        _ => None,
    })
    .await;
    assert_eq!((from, got), (b_id, heads));

    // An exec to a peer nobody can reach fails with an error naming it.
    let nobody: Peer = Keypair::generate().public().peer_id().parse().unwrap();
    let err = a
        .client
        .exec(
            nobody,
            ExecRequest::Describe {
                model: "digits".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MeshError::Request { peer, .. } if *peer == nobody),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_members_find_each_other_through_the_dht_and_gossip_stays_in_their_shard() {
    use fab_mesh::shard::Shards;
    let shards = Shards::new(2).unwrap();
    // Keys for one node of shard 0 (the bootstrap peer) and two of shard 1.
    let keys: Vec<Keypair> = (1..=255u8).map(|i| Keypair::from_secret([i; 32])).collect();
    let in_shard = |s: u16| keys.iter().filter(move |k| shards.of(&k.public()) == s);
    let a_key = in_shard(0).next().unwrap().clone();
    let mut ones = in_shard(1);
    let (b_key, c_key) = (ones.next().unwrap().clone(), ones.next().unwrap().clone());
    // B and C know only A (of the other shard). They find each other (Kademlia's own walks
    // may introduce them before their shard's provider record does; at this size both do).
    let set = |c: &mut MeshConfig| c.shards = shards;
    let a = node_with(a_key.clone(), "shards", port(), None, set).await;
    let b = node_with(b_key.clone(), "shards", port(), Some(&a), set).await;
    let mut c = node_with(c_key, "shards", port(), Some(&a), set).await;
    connected(&b, &c).await;
    assert!(net::in_scope(
        &fab_mesh::shard::Scope::of(shards, &b_key.public()),
        &c.client.peer_id()
    ));
    assert!(!net::in_scope(
        &fab_mesh::shard::Scope::of(shards, &b_key.public()),
        &a.client.peer_id()
    ));

    // B's entry goes out on shard 1's topic and reaches C.
    let body = |k: u64| EntryBody::Unknown {
        kind: 99,
        value: ciborium::Value::Integer(k.into()),
    };
    let entry = FeedWriter::resume(b_key.clone(), 0, None).append(body(1), 1);
    publish_when_ready(&b, GossipMsg::Entry(entry.encode()).encode()).await;
    let got = next_event(&mut c, |e| match e {
        MeshEvent::Valid { valid, .. } => Some(*valid),
        _ => None,
    })
    .await;
    assert!(matches!(got, Valid::Entry(e) if e.id() == entry.id()));
    // Nobody else is on shard 0's topic: A has no one to publish to.
    let mine = FeedWriter::resume(a_key.clone(), 0, None).append(body(2), 2);
    let r = a
        .client
        .publish_raw(GossipMsg::Entry(mine.encode()).encode())
        .await;
    assert!(r.is_err(), "shard 0 has no other member: {r:?}");
    // An entry of a shard-0 feed on shard 1's topic is refused, and its sender penalised.
    publish_when_ready(&b, GossipMsg::Entry(mine.encode()).encode()).await;
    let (from, reason) = next_event(&mut c, |e| match e {
        MeshEvent::Rejected { from, reason } => Some((from, reason)),
        _ => None,
    })
    .await;
    assert_eq!(from, b.client.peer_id());
    assert!(
        reason.contains("a feed of shard 0 on shard 1's topic"),
        "{reason}"
    );
}
