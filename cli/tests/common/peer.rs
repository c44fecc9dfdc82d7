//! A scripted peer in the test process: real libp2p, the real protocols, behaviour chosen by
//! the test (silent, or answering what it is asked with whatever the test wants to send).

use std::future::Future;
use std::time::Duration;

use fab_ledger::Keypair;
use fab_mesh::net::{Addr, MeshClient, MeshConfig, MeshEvent};

pub fn join(network: &str, bootstrap: &str) -> (tokio::runtime::Runtime, MeshClient, Keypair) {
    join_with(network, bootstrap, |_| {})
}

/// Joins through `bootstrap` as a peer in this process, with `edit` applied to its config; it
/// answers nothing.
pub fn join_with(
    network: &str,
    bootstrap: &str,
    edit: impl FnOnce(&mut MeshConfig),
) -> (tokio::runtime::Runtime, MeshClient, Keypair) {
    join_answering(
        Keypair::generate(),
        network,
        bootstrap,
        edit,
        |_, _| async {},
    )
}

/// Joins like [`join_with`] as `key` and hands every mesh event (calls for bids, exec requests, ...)
/// to `answer`, one at a time, with a client to answer through.
pub fn join_answering<F, Fut>(
    key: Keypair,
    network: &str,
    bootstrap: &str,
    edit: impl FnOnce(&mut MeshConfig),
    answer: F,
) -> (tokio::runtime::Runtime, MeshClient, Keypair)
where
    F: Fn(MeshClient, MeshEvent) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = MeshConfig::new(network);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.mdns = false;
    config.bootstrap = vec![bootstrap.parse::<Addr>().unwrap()];
    edit(&mut config);
    let (client, mut events, event_loop) = {
        let _g = rt.enter();
        fab_mesh::net::start(&key, config).unwrap()
    };
    rt.spawn(event_loop.run());
    let c = client.clone();
    rt.spawn(async move {
        while let Some(e) = events.recv().await {
            answer(c.clone(), e).await;
        }
    });
    (rt, client, key)
}

/// Publishes once the peer it joined through has its subscription: the mesh exposes no
/// signal for that, so publishing is retried (every 50 ms, 10 s at most) while it fails for
/// want of subscribed peers.
pub async fn publish_when_subscribed<F, Fut>(mut publish: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), fab_mesh::net::MeshError>>,
{
    for _ in 0..200 {
        if publish().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the scripted peer could not publish");
}

/// A telemetry validator that accepts anything: a scripted peer with it subscribes to the
/// telemetry topic, so it can publish there.
pub fn any_telemetry(c: &mut MeshConfig) {
    c.telemetry_validator = Some(std::sync::Arc::new(|_: &fab_mesh::net::Peer, _: &[u8]| {
        Ok(Box::new(()) as Box<dyn std::any::Any + Send>)
    }));
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A job for `model` on `input` naming `requester`, signed by `signer` (the same key for an
/// honest job), due 20 s from now.
pub fn signed_job(
    signer: &Keypair,
    requester: &Keypair,
    nonce: u64,
    model: &str,
    digest: [u8; 32],
    input_name: &str,
    input: &fab_inference::Tensor,
) -> Vec<u8> {
    use fab_ledger::{ContentId, JobRequest, Signed};
    let now = now_ms();
    let request = JobRequest {
        requester: requester.public(),
        nonce,
        model: model.into(),
        model_digest: ContentId(digest),
        input_digest: ContentId(fab_inference::tensor::digest_named(&[(
            input_name.to_owned(),
            input.clone(),
        )])),
        input_bytes: input.byte_len() as u64,
        created_ms: now,
        deadline_ms: now + 20_000,
    };
    Signed::sign(request, signer).encode()
}

/// A plain call for bids for `model` from `requester` (key bytes): no SLA beyond a 30 s
/// deadline, one replica.
pub fn bid_call(requester: [u8; 32], model: [u8; 32]) -> fab_mesh::bid::BidRequest {
    fab_mesh::bid::BidRequest {
        job: [4; 32],
        requester,
        model_digest: model,
        input_bytes: 256,
        reference_latency_us: 1_000,
        deadline_us: 30_000_000,
        max_cost_micros: None,
        tiers: vec![],
        regions: vec![],
        labels: vec![],
        replicas: 1,
    }
}

/// `key`'s signed bid for `job` with `answer`.
pub fn signed_bid(
    key: &Keypair,
    job: [u8; 32],
    answer: Result<fab_mesh::bid::Offer, String>,
) -> fab_mesh::bid::SignedBid {
    let body = fab_mesh::bid::BidBody {
        job,
        bidder: key.public(),
        answer,
    };
    fab_ledger::Signed::sign(body, key)
}
