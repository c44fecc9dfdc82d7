//! Publishes this node's signed telemetry every `scheduler.telemetry_every_ms`, and builds the
//! report from the sampler, the configuration and the node's live state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fab_ledger::Signed;

use crate::api::AppState;
use crate::ledger_writer::now_ms;
use crate::sched::telemetry::{SignedTelemetry, TelemetryReport};
use crate::sched::{Host, Telemetry};

/// This node's telemetry now.
pub fn current(st: &AppState, host: Host, speed_permille: u32) -> Telemetry {
    let sc = &st.config.scheduler;
    let in_flight = st.config.limits.jobs_in_flight_max - st.job_slots.available_permits();
    Telemetry {
        tier: sc.tier(),
        region: sc.region.clone(),
        labels: sc.labels.iter().cloned().collect(),
        price_per_s_micros: sc.price_per_s_micros,
        queue_depth: in_flight as u32,
        workers: st.config.inference.workers as u32,
        speed_permille,
        power_mw: sc.power_mw.min(u64::from(u32::MAX)) as u32,
        battery_permille: crate::sampler::battery_permille(std::path::Path::new(
            "/sys/class/power_supply",
        )),
        model_latency_us: st
            .model_latency
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        host,
        at_ms: now_ms(),
    }
}

/// Signs a report with the next sequence number (never lower than the clock, so it keeps
/// increasing across restarts).
pub fn sign(st: &AppState, telemetry: Telemetry) -> SignedTelemetry {
    let seq = st
        .telemetry_seq
        .fetch_max(telemetry.at_ms, Ordering::Relaxed)
        .max(telemetry.at_ms)
        + 1;
    st.telemetry_seq.store(seq, Ordering::Relaxed);
    Signed::sign(
        TelemetryReport {
            node: st.key.public(),
            seq,
            telemetry,
        },
        &st.key,
    )
}

/// Publishes until the node stops (the task is aborted with the other mesh tasks).
pub async fn run(st: Arc<AppState>) {
    let Some(mesh) = st.mesh.clone() else { return };
    let speed = tokio::task::spawn_blocking(crate::sampler::calibrate_speed_permille)
        .await
        .unwrap_or(1000);
    st.speed_permille.store(u64::from(speed), Ordering::Relaxed);
    tracing::info!(speed_permille = speed, "speed calibrated");
    let every = Duration::from_millis(st.config.scheduler.telemetry_every_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let host = tokio::task::spawn_blocking(crate::sampler::host)
            .await
            .unwrap_or_default();
        let report = sign(&st, current(&st, host, speed));
        if let Ok(mut own) = st.own_telemetry.lock() {
            *own = Some(report.clone());
        }
        if let Err(e) = mesh.publish_telemetry(report.encode()).await {
            tracing::debug!(error = %e, "telemetry not published");
        }
    }
}
