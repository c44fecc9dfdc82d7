//! What the node says about itself: health probes, identity and mesh, telemetry, models,
//! Prometheus metrics.

use std::sync::atomic::Ordering;

use super::*;

/// Liveness: the process answers. For systemd watchdogs and Kubernetes liveness probes.
pub(super) async fn live() -> axum::Json<Value> {
    axum::Json(json!({"status": "live"}))
}

/// Readiness: the node serves jobs (its ledger answers; a stopped subsystem stops the node, so
/// a node that answers has all of them). 503 while it cannot.
pub(super) async fn health(State(st): State<Arc<NodeState>>) -> Response {
    let ledger = tokio::time::timeout(Duration::from_secs(1), st.ledger.head()).await;
    let (status, body) = match ledger {
        Ok((entries, _)) => (
            StatusCode::OK,
            json!({"status": "ready", "ledger_entries": entries,
                   "uptime_s": st.started.elapsed().as_secs(),
                   "mesh": st.mesh.is_some()}),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": "the ledger did not answer within 1 s"}),
        ),
    };
    (status, axum::Json(body)).into_response()
}

pub(super) async fn peers(State(st): State<Arc<NodeState>>) -> ApiResult {
    let Some(mesh) = &st.mesh else {
        return Ok(axum::Json(json!({"mesh": false, "peers": []})));
    };
    let peers = mesh
        .peers()
        .await
        .map_err(|e| ApiError::new(ApiCode::MeshUnavailable, e.to_string()))?;
    let list: Vec<Value> = peers
        .into_iter()
        .map(|(id, p)| {
            json!({"peer_id": id.to_base58(), "addresses": p.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                   "agent_version": p.agent_version, "protocols": p.protocols,
                   "rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1e3), "score": p.score, "transport": p.transport,
                   "role": if p.member { "node" } else if p.agent_version.is_some() { "observer" } else { "connecting" }})
        })
        .collect();
    Ok(axum::Json(json!({"mesh": true, "peers": list})))
}

pub(super) fn telemetry_json(t: &crate::sched::Telemetry, now: u64) -> Value {
    json!({
        "tier": t.tier.name(), "region": t.region, "labels": t.labels,
        "price_per_s_micros": t.price_per_s_micros, "queue_depth": t.queue_depth,
        "workers": t.workers, "speed_permille": t.speed_permille, "power_mw": t.power_mw,
        "battery_permille": t.battery_permille,
        "host": {"cores": t.host.cores, "load_permille": t.host.load_permille,
                 "mem_free_mib": t.host.mem_free_mib, "temp_max_mc": t.host.temp_max_mc},
        "models": t.model_latency_us.iter().map(|(d, l)| (hex::encode(d), json!(l))).collect::<serde_json::Map<_, _>>(),
        "at_ms": t.at_ms, "age_ms": now.saturating_sub(t.at_ms),
    })
}

/// This node's last report and every fresh peer report.
pub(super) async fn telemetry(State(st): State<Arc<NodeState>>) -> ApiResult {
    let now = now_ms();
    let own = st
        .own_telemetry
        .lock()
        .ok()
        .and_then(|o| o.as_ref().map(|r| telemetry_json(&r.body().telemetry, now)));
    let peers: Vec<Value> = st
        .telemetry
        .lock()
        .map(|v| {
            v.fresh(now)
                .into_iter()
                .map(|r| {
                    let mut j = telemetry_json(&r.telemetry, now);
                    j["peer_id"] = json!(r.node.peer_id());
                    j["seq"] = json!(r.seq);
                    j
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(axum::Json(json!({"self": own, "peers": peers})))
}

/// Prometheus text exposition of the node's counters.
pub(super) async fn metrics(State(st): State<Arc<NodeState>>) -> Response {
    use std::fmt::Write;
    let (entries, _) = st.ledger.head().await;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "fabnode_ledger_entries",
        "gauge",
        "Entries in this node's own ledger feed.",
        &[("", entries as f64)],
    );
    metric(
        "fabnode_jobs_in_flight",
        "gauge",
        "Jobs this node is running or has queued for its inference workers.",
        &[("", crate::telemetry_task::in_flight(&st) as f64)],
    );
    if st.placer.is_some() {
        metric(
            "fabnode_jobs_placed_total",
            "counter",
            "Jobs this node placed (the auction), by outcome.",
            &[
                (
                    "{outcome=\"ok\"}",
                    st.placed.ok.load(Ordering::Relaxed) as f64,
                ),
                (
                    "{outcome=\"failed\"}",
                    st.placed.failed.load(Ordering::Relaxed) as f64,
                ),
            ],
        );
    }
    if let Some(mesh) = &st.mesh {
        let stats = mesh.stats().await.unwrap_or_default();
        let peers = mesh.peers().await.map(|p| p.len()).unwrap_or(0);
        metric(
            "fabnode_gossip_messages_total",
            "counter",
            "Gossip messages received, by validation result; rejected senders are penalised.",
            &[
                ("{result=\"accepted\"}", stats.accepted as f64),
                ("{result=\"rejected\"}", stats.rejected as f64),
            ],
        );
        metric(
            "fabnode_gossip_entries_sent_total",
            "counter",
            "Own ledger entries published on the ledger topic, and the gossip messages that carried them (under load, entries committed close together go out as one batch).",
            &[
                (
                    "{unit=\"entries\"}",
                    st.entries_gossiped.entries.load(Ordering::Relaxed) as f64,
                ),
                (
                    "{unit=\"messages\"}",
                    st.entries_gossiped.messages.load(Ordering::Relaxed) as f64,
                ),
            ],
        );
        metric(
            "fabnode_peer_penalties_total",
            "counter",
            "Offences charged to peers outside gossip validation (malformed or implausible bids, exec or ledger-sync frames, replication violations); each lowers the peer's gossip score.",
            &[("", stats.penalties as f64)],
        );
        metric(
            "fabnode_mesh_events_dropped_total",
            "counter",
            "Mesh events dropped because the node fell behind (catch-up recovers them).",
            &[("", stats.events_dropped as f64)],
        );
        metric(
            "fabnode_mesh_peers",
            "gauge",
            "Connected peers of this network.",
            &[("", peers as f64)],
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

pub(super) async fn node_info(State(st): State<Arc<NodeState>>) -> ApiResult {
    let (entries, head) = st.ledger.head().await;
    let mesh = match &st.mesh {
        Some(m) => {
            let listen = m.listen_addrs().await.unwrap_or_default();
            let stats = m.stats().await.unwrap_or_default();
            // The config was validated at start: the count is in range.
            let shards = fab_mesh::shard::Shards::new(st.config.mesh.shards).unwrap_or_default();
            json!({"enabled": true, "peer_id": m.peer_id().to_base58(),
                   "shards": shards.count(), "shard": shards.of(&st.key.public()),
                   "listen": listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                   "gossip": {"accepted": stats.accepted, "rejected": stats.rejected,
                              "events_dropped": stats.events_dropped},
                   "penalties": stats.penalties})
        }
        None => json!({"enabled": false}),
    };
    Ok(axum::Json(json!({
        "peer_id": st.key.public().peer_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "data_dir": st.data_dir,
        "uptime_s": st.started.elapsed().as_secs(),
        "ledger": {"entries": entries, "head": head},
        "inference": {"workers": st.config.inference.workers, "queue_depth": st.config.inference.queue_depth},
        "models_loaded": st.models.loaded().iter().map(|m| &m.name).collect::<Vec<_>>(),
        "mesh": mesh,
    })))
}

pub(super) async fn list_models(State(st): State<Arc<NodeState>>) -> ApiResult {
    let dir = st.data_dir.clone();
    let registered = tokio::task::spawn_blocking(move || crate::models::list(&dir))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?
        .map_err(|e| ApiError::new(ApiCode::Registry, e.to_string()))?;
    let loaded = st.models.loaded();
    let models: Vec<Value> = registered
        .into_iter()
        .map(|(name, rec)| {
            let info = loaded
                .iter()
                .find(|m| m.name == name && m.digest == rec.digest)
                .map(|m| m.info().clone());
            json!({"name": name, "path": rec.path, "digest": rec.digest, "bytes": rec.bytes,
                   "engine": rec.engine, "loaded": info.is_some(), "facts": info})
        })
        .collect();
    Ok(axum::Json(json!({ "models": models })))
}
