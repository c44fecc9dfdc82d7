//! What the node says about itself: health probes, identity and mesh, telemetry, models,
//! Prometheus metrics.

use std::sync::atomic::Ordering;

use fab_client::types as api;

use super::*;

/// Liveness: the process answers. For systemd watchdogs and Kubernetes liveness probes.
pub(super) async fn live() -> axum::Json<api::Live> {
    axum::Json(api::Live {
        status: "live".to_owned(),
    })
}

/// Readiness: the node serves jobs (its ledger answers; a stopped subsystem stops the node, so
/// a node that answers has all of them). 503 while it cannot.
pub(super) async fn health(State(st): State<Arc<NodeState>>) -> Response {
    let ledger = tokio::time::timeout(Duration::from_secs(1), st.ledger.head()).await;
    let (status, body) = match ledger {
        Ok((entries, _)) => (
            StatusCode::OK,
            api::Health {
                status: "ready".to_owned(),
                ledger_entries: Some(entries),
                uptime_s: Some(st.started.elapsed().as_secs()),
                mesh: Some(st.mesh.is_some()),
                reason: None,
            },
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            api::Health {
                status: "not_ready".to_owned(),
                ledger_entries: None,
                uptime_s: None,
                mesh: None,
                reason: Some("the ledger did not answer within 1 s".to_owned()),
            },
        ),
    };
    (status, axum::Json(body)).into_response()
}

pub(super) async fn peers(State(st): State<Arc<NodeState>>) -> ApiResult<api::Peers> {
    let Some(mesh) = &st.mesh else {
        return Ok(axum::Json(api::Peers {
            mesh: false,
            peers: Vec::new(),
        }));
    };
    let peers = mesh
        .peers()
        .await
        .map_err(|e| ApiError::new(ApiCode::MeshUnavailable, e.to_string()))?;
    let peers = peers
        .into_iter()
        .map(|(id, p)| api::Peer {
            peer_id: id.to_base58(),
            addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
            role: if p.member {
                "node"
            } else if p.agent_version.is_some() {
                "observer"
            } else {
                "connecting"
            }
            .to_owned(),
            agent_version: p.agent_version,
            protocols: p.protocols,
            rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1e3),
            transport: p.transport.map(str::to_owned),
            score: p.score,
        })
        .collect();
    Ok(axum::Json(api::Peers { mesh: true, peers }))
}

/// A telemetry report as the API shows it.
pub(super) fn telemetry_view(t: &crate::sched::Telemetry, now: u64) -> api::Telemetry {
    api::Telemetry {
        peer_id: None,
        seq: None,
        tier: t.tier.name().to_owned(),
        region: t.region.clone(),
        labels: t.labels.iter().cloned().collect(),
        price_per_s_micros: t.price_per_s_micros,
        queue_depth: t.queue_depth.into(),
        workers: t.workers.into(),
        speed_permille: t.speed_permille.into(),
        power_mw: t.power_mw.into(),
        battery_permille: t.battery_permille.map(u64::from),
        host: api::HostInfo {
            cores: t.host.cores.into(),
            load_permille: t.host.load_permille.into(),
            mem_free_mib: t.host.mem_free_mib,
            temp_max_mc: t.host.temp_max_mc.map(u64::from),
        },
        models: t
            .model_latency_us
            .iter()
            .map(|(d, l)| (hex::encode(d), *l))
            .collect(),
        at_ms: t.at_ms,
        age_ms: now.saturating_sub(t.at_ms),
    }
}

/// This node's last report and every fresh peer report.
pub(super) async fn telemetry(
    State(st): State<Arc<NodeState>>,
) -> ApiResult<api::TelemetryReports> {
    let now = now_ms();
    let own = st
        .own_telemetry
        .lock()
        .ok()
        .and_then(|o| o.as_ref().map(|r| telemetry_view(&r.body().telemetry, now)));
    let peers = st
        .telemetry
        .lock()
        .map(|v| {
            v.fresh(now)
                .into_iter()
                .map(|r| api::Telemetry {
                    peer_id: Some(r.node.peer_id()),
                    seq: Some(r.seq),
                    ..telemetry_view(&r.telemetry, now)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(axum::Json(api::TelemetryReports { own, peers }))
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

pub(super) async fn node_info(State(st): State<Arc<NodeState>>) -> ApiResult<api::NodeInfo> {
    let (entries, head) = st.ledger.head().await;
    let mesh = match &st.mesh {
        Some(m) => {
            let listen = m.listen_addrs().await.unwrap_or_default();
            let stats = m.stats().await.unwrap_or_default();
            // The config was validated at start: the count is in range.
            let shards = fab_mesh::shard::Shards::new(st.config.mesh.shards).unwrap_or_default();
            api::MeshInfo {
                enabled: true,
                peer_id: Some(m.peer_id().to_base58()),
                listen: Some(listen.iter().map(|a| a.to_string()).collect()),
                shards: Some(shards.count().into()),
                shard: Some(shards.of(&st.key.public()).into()),
                gossip: Some(api::GossipCounts {
                    accepted: stats.accepted,
                    rejected: stats.rejected,
                    events_dropped: stats.events_dropped,
                }),
                penalties: Some(stats.penalties),
            }
        }
        None => api::MeshInfo::default(),
    };
    Ok(axum::Json(api::NodeInfo {
        peer_id: st.key.public().peer_id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        data_dir: st.data_dir.display().to_string(),
        uptime_s: st.started.elapsed().as_secs(),
        ledger: api::Head { entries, head },
        inference: api::InferenceInfo {
            workers: st.config.inference.workers as u64,
            queue_depth: st.config.inference.queue_depth as u64,
        },
        models_loaded: st.models.loaded().iter().map(|m| m.name.clone()).collect(),
        mesh,
    }))
}

pub(super) async fn list_models(State(st): State<Arc<NodeState>>) -> ApiResult<api::Models> {
    let dir = st.data_dir.clone();
    let registered = tokio::task::spawn_blocking(move || crate::models::list(&dir))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?
        .map_err(|e| ApiError::new(ApiCode::Registry, e.to_string()))?;
    let loaded = st.models.loaded();
    let models = registered
        .into_iter()
        .map(|(name, rec)| {
            let info = loaded
                .iter()
                .find(|m| m.name == name && m.digest == rec.digest)
                .map(|m| m.info().clone());
            api::ModelInfo {
                name,
                path: rec.path.display().to_string(),
                digest: rec.digest,
                bytes: rec.bytes,
                engine: rec.engine.clone(),
                loaded: info.is_some(),
                facts: info.and_then(|i| serde_json::to_value(i).ok()),
            }
        })
        .collect();
    Ok(axum::Json(api::Models { models }))
}
