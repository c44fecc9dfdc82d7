//! Helpers for tests with several nodes on one mesh.

use std::time::{Duration, Instant};

use super::{RunningNode, TestDir};

pub const TCP: &str = "/ip4/127.0.0.1/tcp/0";
pub const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

pub fn mesh_env(network: &str) -> Vec<(String, String)> {
    mesh_env_on(network, TCP)
}

pub fn mesh_env_on(network: &str, listen: &str) -> Vec<(String, String)> {
    vec![
        ("FABNODE_MESH_ENABLED".into(), "true".into()),
        ("FABNODE_MESH_MDNS".into(), "false".into()),
        ("FABNODE_MESH_LISTEN".into(), listen.into()),
        ("FABNODE_LEDGER_NETWORK".into(), network.into()),
    ]
}

/// A node's first mesh listen address with its peer id: what others dial or bootstrap from.
pub fn dial_addr(n: &RunningNode) -> String {
    let info = n.api().node().unwrap();
    let listen = info.mesh.listen.unwrap_or_default();
    format!(
        "{}/p2p/{}",
        listen.first().expect("the node listens"),
        info.peer_id
    )
}

/// The peer id of `a`, and the environment for a node that listens on `listen` and bootstraps
/// from `a` (whose first listen address must use the same transport).
pub fn joining_env(
    a: &RunningNode,
    network: &str,
    listen: &str,
) -> (String, Vec<(String, String)>) {
    let addr = dial_addr(a);
    let transport = if listen == QUIC { "/quic-v1" } else { "/tcp/" };
    assert!(addr.contains(transport), "{addr} is not on {listen}");
    let mut env = mesh_env_on(network, listen);
    env.push(("FABNODE_MESH_BOOTSTRAP".into(), addr));
    (peer_id(a), env)
}

pub fn start(t: &TestDir, env: &[(String, String)]) -> RunningNode {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    t.start(&refs).unwrap()
}

/// Polls `check` until it holds or the deadline passes; returns how long it took.
pub fn wait_for(what: &str, limit: Duration, check: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    assert!(holds_within(limit, check), "timed out waiting for {what}");
    t0.elapsed()
}

/// Polls `check` until it holds (`true`) or `limit` passes (`false`).
pub fn holds_within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while !check() {
        if t0.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

pub fn peer_id(n: &RunningNode) -> String {
    n.api().node().unwrap().peer_id
}
