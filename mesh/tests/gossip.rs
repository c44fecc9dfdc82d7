//! Two real swarms on loopback TCP, in one process: a signed entry gossiped from one reaches the
//! other; a forged one is rejected, counted and not delivered; honest traffic keeps flowing.

use std::time::Duration;

use fab_ledger::{EntryBody, FeedWriter, Keypair, Signed, SignedEntry};
use fab_mesh::net::{MeshClient, MeshConfig, MeshEvent, start};
use fab_mesh::validate::Valid;
use fab_mesh::wire::GossipMsg;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

fn entry(w: &mut FeedWriter, n: u64) -> SignedEntry {
    let value = ciborium::Value::Array(vec![ciborium::Value::Integer(n.into())]);
    w.append(EntryBody::Unknown { kind: 99, value }, n)
}

fn node(secret: u8) -> (Keypair, MeshClient, mpsc::Receiver<MeshEvent>) {
    let key = Keypair::from_secret([secret; 32]);
    let mut cfg = MeshConfig::new("test");
    cfg.mdns = false;
    cfg.heartbeat = Duration::from_millis(100);
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let (client, events, ev) = start(&key, cfg).unwrap();
    tokio::spawn(ev.run());
    (key, client, events)
}

/// The first address `n` listens on, once it has one (5 s at most).
async fn listen_addr(n: &MeshClient) -> libp2p::Multiaddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(addr) = n.listen_addrs().await.unwrap().into_iter().next() {
            return addr;
        }
        assert!(Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries a publish until gossipsub has a peer for the topic (subscriptions travel after the
/// connection is up), bounded by a deadline.
async fn publish_when_meshed(c: &MeshClient, msg: GossipMsg) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.publish(msg.clone()).await {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("never meshed: {e}"),
        }
    }
}

async fn next_entry(events: &mut mpsc::Receiver<MeshEvent>) -> Result<SignedEntry, String> {
    loop {
        match timeout(Duration::from_secs(10), events.recv()).await {
            Err(_) => return Err("timed out".into()),
            Ok(None) => return Err("closed".into()),
            Ok(Some(MeshEvent::Valid { valid, .. })) => {
                if let Valid::Entry(e) = *valid {
                    return Ok(e);
                }
            }
            Ok(Some(MeshEvent::Rejected { reason, .. })) => return Err(reason),
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_gossip_forgeries_are_rejected_and_honest_traffic_flows() {
    let (a_key, a, _a_events) = node(1);
    let (_b_key, b, mut b_events) = node(2);
    b.dial(listen_addr(&a).await).await.unwrap();

    let mut w = FeedWriter::resume(a_key.clone(), 0, None);
    let first = entry(&mut w, 0);
    publish_when_meshed(&a, GossipMsg::Entry(first.encode())).await;
    assert_eq!(next_entry(&mut b_events).await.unwrap().id(), first.id());

    // A forged entry: A's next entry re-signed by another key.
    let next = entry(&mut w, 1);
    let forged = Signed::sign(next.body().clone(), &Keypair::from_secret([3; 32]));
    a.publish(GossipMsg::Entry(forged.encode())).await.unwrap();
    let err = next_entry(&mut b_events).await.unwrap_err();
    assert!(err.contains("signature"), "{err}");
    assert_eq!(b.stats().await.unwrap().rejected, 1);

    // Honest traffic still flows.
    a.publish(GossipMsg::Entry(next.encode())).await.unwrap();
    assert_eq!(next_entry(&mut b_events).await.unwrap().id(), next.id());

    // B knows A: agent version, and an RTT once a ping completed.
    let peers = b.peers().await.unwrap();
    let info = peers.get(&a.peer_id()).expect("A is a peer of B");
    assert_eq!(
        info.agent_version.as_deref(),
        Some(concat!("fabnode/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(a.peer_id().to_base58(), a_key.public().peer_id());
}

/// Publishes fresh entries from `w` on `from` until `to` delivers one of them (10 s at most).
async fn until_heard(from: &MeshClient, w: &mut FeedWriter, to: &mut mpsc::Receiver<MeshEvent>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "never heard");
        let e = entry(w, 0);
        // No peer subscribed yet is an error here; the loop retries.
        let _ = from.publish(GossipMsg::Entry(e.encode())).await;
        let until = Instant::now() + Duration::from_millis(100);
        while let Ok(Some(ev)) =
            timeout(until.saturating_duration_since(Instant::now()), to.recv()).await
        {
            if let MeshEvent::Valid { valid, .. } = ev
                && let Valid::Entry(got) = *valid
                && got.body().feed == e.body().feed
            {
                return;
            }
        }
    }
}

/// Collects every valid entry from `events` until `want` ids are all seen or 30 s pass.
async fn receive_all(
    events: &mut mpsc::Receiver<MeshEvent>,
    want: &std::collections::HashSet<fab_ledger::ContentId>,
) -> usize {
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < want.len() && Instant::now() < deadline {
        if let Ok(Some(MeshEvent::Valid { valid, .. })) =
            timeout(Duration::from_millis(500), events.recv()).await
            && let Valid::Entry(e) = *valid
            && want.contains(&e.id())
        {
            seen.insert(e.id());
        }
    }
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_thousands_of_messages_leaves_every_stream_working() {
    // Three nodes, all connected. A and B each publish 2,000 entries as fast as they can: the
    // gossip about them (IHAVE, IWANT, IDONTWANT batches) must stay within what peers accept,
    // or a refused frame closes a stream and the nodes stop hearing each other.
    let (a_key, a, mut a_events) = node(11);
    let (b_key, b, mut b_events) = node(12);
    let (_c_key, c, mut c_events) = node(13);
    let (a_addr, b_addr) = (listen_addr(&a).await, listen_addr(&b).await);
    b.dial(a_addr.clone()).await.unwrap();
    c.dial(a_addr).await.unwrap();
    c.dial(b_addr).await.unwrap();
    let mut wa = FeedWriter::resume(a_key, 0, None);
    let mut wb = FeedWriter::resume(b_key, 0, None);
    let mut wc = FeedWriter::resume(Keypair::from_secret([13; 32]), 0, None);
    // Every node hears every other before the burst (subscriptions travel after connecting).
    until_heard(&a, &mut wa, &mut b_events).await;
    until_heard(&a, &mut wa, &mut c_events).await;
    until_heard(&b, &mut wb, &mut a_events).await;
    until_heard(&b, &mut wb, &mut c_events).await;
    until_heard(&c, &mut wc, &mut a_events).await;
    until_heard(&c, &mut wc, &mut b_events).await;
    let burst = 2_000u64;
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    // Entries the size of real receipts (over gossipsub's 1,000-byte IDONTWANT threshold).
    let big = |w: &mut FeedWriter, n: u64| {
        let value = ciborium::Value::Bytes(vec![n as u8; 1_500]);
        w.append(EntryBody::Unknown { kind: 99, value }, n)
    };
    for n in 1..=burst {
        from_a.push(big(&mut wa, n));
        from_b.push(big(&mut wb, n - 1));
    }
    let accepted = |n: MeshClient| async move { n.stats().await.unwrap().accepted };
    let before = [
        accepted(a.clone()).await,
        accepted(b.clone()).await,
        accepted(c.clone()).await,
    ];
    for (ea, eb) in from_a.iter().zip(&from_b) {
        a.publish(GossipMsg::Entry(ea.encode())).await.unwrap();
        b.publish(GossipMsg::Entry(eb.encode())).await.unwrap();
    }
    // The whole burst arrives: A validates B's entries, B A's, C both.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = [
            accepted(a.clone()).await - before[0],
            accepted(b.clone()).await - before[1],
            accepted(c.clone()).await - before[2],
        ];
        if now[0] >= burst && now[1] >= burst && now[2] >= 2 * burst {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the burst did not reach every node: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And every node goes on hearing every other one after it.
    let (ta, tb, tc) = (
        entry(&mut wa, burst + 1),
        entry(&mut wb, burst),
        entry(&mut wc, burst),
    );
    a.publish(GossipMsg::Entry(ta.encode())).await.unwrap();
    b.publish(GossipMsg::Entry(tb.encode())).await.unwrap();
    c.publish(GossipMsg::Entry(tc.encode())).await.unwrap();
    let ids = |es: &[&SignedEntry]| es.iter().map(|e| e.id()).collect();
    assert_eq!(
        receive_all(&mut a_events, &ids(&[&tb, &tc])).await,
        2,
        "A hears B and C"
    );
    assert_eq!(
        receive_all(&mut b_events, &ids(&[&ta, &tc])).await,
        2,
        "B hears A and C"
    );
    assert_eq!(
        receive_all(&mut c_events, &ids(&[&ta, &tb])).await,
        2,
        "C hears A and B"
    );
}
