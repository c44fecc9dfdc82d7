//! Publishes this node's signed telemetry every `telemetry.every_ms`, and at once when its queue
//! changes markedly; builds the report from the sampler, the configuration and the node's live
//! state, with optional Laplace noise on the load figures (`telemetry.dp_epsilon`).

use std::sync::Arc;
use std::time::Duration;

use fab_ledger::Signed;

use crate::jobs::NodeState;
use crate::ledger_writer::now_ms;
use crate::sched::telemetry::{SignedTelemetry, TelemetryReport, publish_due, queue_moved};
use crate::sched::{Host, Telemetry};

/// Jobs this node is running or about to run.
pub fn in_flight(st: &NodeState) -> usize {
    let local = st.config.limits.jobs_in_flight_max - st.job_slots.available_permits();
    // Peers' jobs hold no API slot: they are counted by the set that stops replays.
    let remote = st.remote_running.lock().map_or(0, |r| r.len());
    local + remote
}

/// This node's telemetry now.
fn current(st: &NodeState, in_flight: usize, host: Host, speed_permille: u32) -> Telemetry {
    use crate::sched::telemetry as limits;
    let sc = &st.config.scheduler;
    // Kept within the ranges every peer checks when it decodes a report, so this node's own
    // reports are never refused as implausible.
    Telemetry {
        tier: sc.tier(),
        region: sc.region.clone(),
        labels: sc.labels.iter().cloned().collect(),
        price_per_s_micros: sc.price_per_s_micros.min(limits::PRICE_PER_S_MICROS_MAX),
        queue_depth: u32::try_from(in_flight)
            .unwrap_or(u32::MAX)
            .min(limits::QUEUE_DEPTH_MAX),
        workers: (st.config.inference.workers as u32).clamp(1, limits::WORKERS_MAX),
        speed_permille: speed_permille.clamp(1, limits::SPEED_PERMILLE_MAX),
        power_mw: sc.power_mw.min(u64::from(limits::POWER_MW_MAX)) as u32,
        battery_permille: crate::sampler::battery_permille(&st.config.telemetry.power_supply_dir),
        model_latency_us: st
            .model_latency
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(d, l)| (*d, (*l).clamp(1, limits::LATENCY_US_MAX)))
                    .collect()
            })
            .unwrap_or_default(),
        host,
        at_ms: now_ms(),
    }
}

/// This node as a candidate for a job being placed now: the last published report (host figures
/// and calibrated speed) with the live queue and the latest model measurements.
pub fn now(st: &NodeState) -> Telemetry {
    let last = st
        .own_telemetry
        .lock()
        .ok()
        .and_then(|r| r.as_ref().map(|r| r.body().telemetry.clone()));
    let (host, speed) = match last {
        Some(t) => (t.host, t.speed_permille),
        None => (
            Host::default(),
            match st.config.scheduler.speed_permille {
                0 => 1000,
                s => s as u32,
            },
        ),
    };
    current(st, in_flight(st), host, speed)
}

/// Signs a report with the sequence number after `last` (never lower than the clock, so it keeps
/// increasing across restarts).
fn sign(st: &NodeState, last: &mut u64, telemetry: Telemetry) -> SignedTelemetry {
    let seq = (*last).max(telemetry.at_ms) + 1;
    *last = seq;
    Signed::sign(
        TelemetryReport {
            node: st.key.public(),
            seq,
            telemetry,
        },
        &st.key,
    )
}

/// Sensitivity of the published load figures: one job of queue depth, and 100 permille of load.
const QUEUE_SENSITIVITY: f64 = 1.0;
const LOAD_SENSITIVITY: f64 = 100.0;

/// A Laplace(0, scale) sample from `u`, uniform in (-0.5, 0.5).
pub fn laplace(u: f64, scale: f64) -> f64 {
    let u = u.clamp(-0.499_999_999, 0.499_999_999);
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
}

/// A uniform sample in (-0.5, 0.5) from the operating system's random source.
fn uniform() -> f64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if ok.is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// Adds noise to the figures that reveal how busy the node is, when `epsilon` > 0.
pub fn privatise(t: &mut Telemetry, epsilon: f64, mut draw: impl FnMut() -> f64) {
    if epsilon <= 0.0 {
        return;
    }
    let noisy = |v: u32, sensitivity: f64, u: f64| {
        (f64::from(v) + laplace(u, sensitivity / epsilon))
            .round()
            .clamp(0.0, f64::from(u32::MAX)) as u32
    };
    t.queue_depth = noisy(t.queue_depth, QUEUE_SENSITIVITY, draw());
    t.host.load_permille = noisy(t.host.load_permille, LOAD_SENSITIVITY, draw());
}

/// How often the queue is looked at between reports.
const QUEUE_CHECK: Duration = Duration::from_millis(100);

/// Publishes until the node stops (the task is aborted with the other mesh tasks).
pub async fn run(st: Arc<NodeState>) {
    let Some(mesh) = st.mesh.clone() else { return };
    let speed = match st.config.scheduler.speed_permille {
        0 => {
            let s = tokio::task::spawn_blocking(crate::sampler::calibrate_speed_permille)
                .await
                .unwrap_or(1000);
            tracing::info!(speed_permille = s, "speed calibrated");
            s
        }
        configured => configured as u32,
    };
    let every = Duration::from_millis(st.config.telemetry.every_ms);
    // With nothing changed, a report only keeps the node fresh in its peers' views: a third of
    // the staleness limit, so one lost report does not drop it. Each report costs every peer a
    // signature check and the mesh a round of forwarding, which is most of an idle mesh's CPU.
    let refresh = every.max(Duration::from_millis(st.config.telemetry.stale_ms / 3));
    let epsilon = st.config.telemetry.dp_epsilon;
    let mut check = tokio::time::interval(QUEUE_CHECK.min(every));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_at: Option<tokio::time::Instant> = None;
    let mut last_seq = 0u64;
    // The last published figures, before noise.
    let mut last: Option<Telemetry> = None;
    loop {
        check.tick().await;
        let queue = in_flight(&st);
        let elapsed = last_at.map(|t| t.elapsed());
        // The host is sampled only when a report may be due: the queue alone can say no.
        let last_queue = last.as_ref().map_or(0, |l| u64::from(l.queue_depth));
        if elapsed.is_some_and(|e| e < every) && !queue_moved(last_queue, queue as u64) {
            continue;
        }
        let host = tokio::task::spawn_blocking(crate::sampler::host)
            .await
            .unwrap_or_default();
        let mut t = current(&st, queue, host, speed);
        if !publish_due(last.as_ref().zip(elapsed), &t, every, refresh) {
            continue;
        }
        last = Some(t.clone());
        privatise(&mut t, epsilon, uniform);
        let report = sign(&st, &mut last_seq, t);
        last_at = Some(tokio::time::Instant::now());
        if let Ok(mut own) = st.own_telemetry.lock() {
            *own = Some(report.clone());
        }
        if let Err(e) = mesh.publish_telemetry(report.encode()).await {
            tracing::debug!(error = %e, "telemetry not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laplace_noise_has_the_right_scale_and_zero_epsilon_is_exact() {
        // Deterministic uniform grid: the mean absolute deviation of Laplace(0, b) is b.
        let n = 100_000;
        let b = 4.0;
        let mad: f64 = (0..n)
            .map(|i| laplace((i as f64 + 0.5) / n as f64 - 0.5, b).abs())
            .sum::<f64>()
            / n as f64;
        assert!((mad - b).abs() < 0.05, "{mad}");
        assert_eq!(laplace(0.0, b), 0.0);
        let mut t = Telemetry {
            tier: crate::sched::Tier::Edge,
            region: String::new(),
            labels: Default::default(),
            price_per_s_micros: 0,
            queue_depth: 5,
            workers: 1,
            speed_permille: 1000,
            power_mw: 0,
            battery_permille: None,
            model_latency_us: Default::default(),
            host: Host {
                load_permille: 500,
                ..Default::default()
            },
            at_ms: 0,
        };
        privatise(&mut t, 0.0, || 0.4);
        assert_eq!((t.queue_depth, t.host.load_permille), (5, 500));
        privatise(&mut t, 1.0, || 0.4);
        // u = 0.4: noise = -b ln(0.2) = 1.61 b.
        assert_eq!((t.queue_depth, t.host.load_permille), (7, 661));
        // Never negative.
        privatise(&mut t, 1.0, || -0.49);
        assert_eq!(t.queue_depth, 3);
    }
}
