//! Signed telemetry and the view a node keeps of its peers' (sans-IO).
//!
//! A node publishes `Signed<TelemetryReport>` (kind `telemetry`) on `fabnode/v1/telemetry`:
//!
//! ```text
//! [ version = 1, node key (32 bytes), seq, at_ms, tier (0 device, 1 edge, 2 cloud),
//!   region (text ≤ 64), [label (text ≤ 64), ...] (≤ 32), price_per_s_micros, queue_depth,
//!   workers, speed_permille, power_mw, battery_permille | null,
//!   [[model digest (32 bytes), latency_us], ...] (≤ 256),
//!   [cores, load_permille, mem_free_mib, temp_max_mc | null] ]
//! ```
//!
//! The view accepts a report only with a higher `seq` than the last one from that node
//! (replays and reordering are refused) and drops reports older than `stale_after`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ciborium::Value;
use fab_ledger::cbor::{self, Cbor, DecodeError, Fields};
use fab_ledger::{PublicKey, Signed, SignedBody};

use super::estimate::{Host, Telemetry, Tier};

/// Longest region or label.
pub const NAME_BYTES_MAX: usize = 64;
/// Most labels in a report.
pub const LABELS_MAX: usize = 32;
/// Most per-model latencies in a report.
pub const MODELS_MAX: usize = 256;
/// Fastest a node may claim to be: a thousand times the reference machine.
pub const SPEED_PERMILLE_MAX: u32 = 1_000_000;
/// Most inference workers a report may claim.
pub const WORKERS_MAX: u32 = 4096;
/// Deepest queue a report may claim.
pub const QUEUE_DEPTH_MAX: u32 = 1_000_000;
/// Most power a node may claim to draw while computing: 100 kW.
pub const POWER_MW_MAX: u32 = 100_000_000;
/// Highest price of a second of compute, in micro-units (a million units).
pub const PRICE_PER_S_MICROS_MAX: u64 = 1_000_000_000_000;
/// Longest measured latency of a model a report may claim: one day.
pub const LATENCY_US_MAX: u64 = 86_400_000_000;
/// Most cores a report may claim.
pub const CORES_MAX: u32 = 65_536;

/// One node's telemetry, as it signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryReport {
    pub node: PublicKey,
    /// Increases with every report of a node.
    pub seq: u64,
    pub telemetry: Telemetry,
}

pub type SignedTelemetry = Signed<TelemetryReport>;

const WHAT: &str = "telemetry report";

fn list(v: Value, field: &str, max: usize) -> Result<Vec<Value>, DecodeError> {
    match v {
        Value::Array(a) if a.len() <= max => Ok(a),
        _ => Err(DecodeError::invalid(
            WHAT,
            format!("{field}: expected a list of at most {max}"),
        )),
    }
}

impl Cbor for TelemetryReport {
    const WHAT: &'static str = WHAT;
    const BYTES_MAX: usize = 16 * 1024;

    fn to_value(&self) -> Value {
        let t = &self.telemetry;
        Value::Array(vec![
            cbor::uint(1),
            cbor::bytes(&self.node.to_bytes()),
            cbor::uint(self.seq),
            cbor::uint(t.at_ms),
            cbor::uint(t.tier.code()),
            cbor::text(&t.region),
            Value::Array(t.labels.iter().map(|l| cbor::text(l)).collect()),
            cbor::uint(t.price_per_s_micros),
            cbor::uint(u64::from(t.queue_depth)),
            cbor::uint(u64::from(t.workers)),
            cbor::uint(u64::from(t.speed_permille)),
            cbor::uint(u64::from(t.power_mw)),
            t.battery_permille
                .map_or(Value::Null, |b| cbor::uint(u64::from(b))),
            Value::Array(
                t.model_latency_us
                    .iter()
                    .map(|(d, l)| Value::Array(vec![cbor::bytes(d), cbor::uint(*l)]))
                    .collect(),
            ),
            Value::Array(vec![
                cbor::uint(u64::from(t.host.cores)),
                cbor::uint(u64::from(t.host.load_permille)),
                cbor::uint(t.host.mem_free_mib),
                t.host
                    .temp_max_mc
                    .map_or(Value::Null, |c| cbor::uint(u64::from(c))),
            ]),
        ])
    }

    fn from_value(value: Value) -> Result<Self, DecodeError> {
        let mut f = Fields::new(value, WHAT, 15)?;
        if f.u64("version")? != 1 {
            return Err(DecodeError::invalid(WHAT, "unsupported version"));
        }
        let node = PublicKey::from_bytes(&f.array("node")?)
            .ok_or_else(|| DecodeError::invalid(WHAT, "node is not a valid key"))?;
        let seq = f.u64("seq")?;
        let at_ms = f.u64("at_ms")?;
        let code = f.u64("tier")?;
        let tier = Tier::from_code(code)
            .ok_or_else(|| DecodeError::invalid(WHAT, format!("unknown tier {code}")))?;
        let region = f.text("region", NAME_BYTES_MAX)?;
        let mut labels = BTreeSet::new();
        for l in list(f.value("labels")?, "labels", LABELS_MAX)? {
            match l {
                Value::Text(t) if t.len() <= NAME_BYTES_MAX => {
                    labels.insert(t);
                }
                _ => return Err(DecodeError::invalid(WHAT, "labels: short texts expected")),
            }
        }
        let u32_field = |f: &mut Fields, name: &str| -> Result<u32, DecodeError> {
            u32::try_from(f.u64(name)?)
                .map_err(|_| DecodeError::invalid(WHAT, format!("{name} out of range")))
        };
        // Every figure feeds the requester's estimates and scores: each is range-checked here,
        // so an absurd claim (a node a million times faster than any, a price that overflows)
        // is refused with the report and its sender penalised, never scored.
        let in_range = |name: &str, v: u64, lo: u64, hi: u64| -> Result<u64, DecodeError> {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(DecodeError::invalid(
                    WHAT,
                    format!("{name} = {v} is outside {lo}..={hi}"),
                ))
            }
        };
        let small = |f: &mut Fields, name: &str, lo: u32, hi: u32| -> Result<u32, DecodeError> {
            let v = f.u64(name)?;
            in_range(name, v, u64::from(lo), u64::from(hi)).map(|v| v as u32)
        };
        let price_per_s_micros = in_range("price", f.u64("price")?, 0, PRICE_PER_S_MICROS_MAX)?;
        let queue_depth = small(&mut f, "queue_depth", 0, QUEUE_DEPTH_MAX)?;
        let workers = small(&mut f, "workers", 1, WORKERS_MAX)?;
        let speed_permille = small(&mut f, "speed_permille", 1, SPEED_PERMILLE_MAX)?;
        let power_mw = small(&mut f, "power_mw", 0, POWER_MW_MAX)?;
        let battery_permille = match f.value("battery")? {
            Value::Null => None,
            Value::Integer(i) => Some(
                u32::try_from(i128::from(i))
                    .ok()
                    .filter(|b| *b <= 1000)
                    .ok_or_else(|| DecodeError::invalid(WHAT, "battery out of range"))?,
            ),
            _ => return Err(DecodeError::invalid(WHAT, "battery: null or permille")),
        };
        let mut model_latency_us = BTreeMap::new();
        for m in list(f.value("models")?, "models", MODELS_MAX)? {
            let mut m = Fields::new(m, WHAT, 2)?;
            let digest = m.array("digest")?;
            let latency = in_range("latency_us", m.u64("latency_us")?, 1, LATENCY_US_MAX)?;
            model_latency_us.insert(digest, latency);
        }
        let mut h = Fields::new(f.value("host")?, WHAT, 4)?;
        let host = Host {
            cores: small(&mut h, "cores", 0, CORES_MAX)?,
            load_permille: u32_field(&mut h, "load_permille")?,
            mem_free_mib: h.u64("mem_free_mib")?,
            temp_max_mc: match h.value("temp_max_mc")? {
                Value::Null => None,
                Value::Integer(i) => Some(
                    u32::try_from(i128::from(i))
                        .map_err(|_| DecodeError::invalid(WHAT, "temperature out of range"))?,
                ),
                _ => return Err(DecodeError::invalid(WHAT, "temp_max_mc: null or integer")),
            },
        };
        Ok(TelemetryReport {
            node,
            seq,
            telemetry: Telemetry {
                tier,
                region,
                labels,
                price_per_s_micros,
                queue_depth,
                workers,
                speed_permille,
                power_mw,
                battery_permille,
                model_latency_us,
                host,
                at_ms,
            },
        })
    }
}

impl SignedBody for TelemetryReport {
    const KIND: &'static str = "telemetry";
    fn signer(&self) -> Result<PublicKey, DecodeError> {
        Ok(self.node)
    }
}

/// Why a report was not taken into the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not newer than the last report from that node: a replay or reordering.
    Stale { seq: u64, last: u64 },
    /// Signed further in the future than the allowed clock skew.
    FromTheFuture { at_ms: u64 },
}

/// The latest telemetry of every peer (signature-checked reports only), at most
/// `reports_max` nodes: a report from a node not yet in a full view first evicts stale
/// reports, then the least recent one (oldest `at_ms`, ties to the lowest key).
#[derive(Clone, Debug)]
pub struct TelemetryView {
    /// Reports older than this are not candidates.
    pub stale_after_ms: u64,
    /// Reports dated later than now plus this are refused.
    pub skew_ms: u64,
    /// Nodes whose report is kept, at most.
    pub reports_max: usize,
    latest: BTreeMap<[u8; 32], TelemetryReport>,
}

/// Default bound on the nodes a view keeps (a shard is ~32 nodes; a node connects to far
/// fewer than this).
pub const REPORTS_MAX: usize = 1024;

impl TelemetryView {
    pub fn new(stale_after_ms: u64) -> Self {
        TelemetryView {
            stale_after_ms,
            skew_ms: 60_000,
            reports_max: REPORTS_MAX,
            latest: BTreeMap::new(),
        }
    }

    /// Nodes with a report in the view, fresh or not.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// Drops `node`'s report (it disconnected).
    pub fn forget(&mut self, node: &PublicKey) {
        self.latest.remove(&node.to_bytes());
    }

    /// Takes a verified report received at `now_ms`.
    pub fn offer(&mut self, report: &SignedTelemetry, now_ms: u64) -> Result<(), Refused> {
        let r = report.body();
        if r.telemetry.at_ms > now_ms.saturating_add(self.skew_ms) {
            return Err(Refused::FromTheFuture {
                at_ms: r.telemetry.at_ms,
            });
        }
        let key = r.node.to_bytes();
        if let Some(last) = self.latest.get(&key)
            && r.seq <= last.seq
        {
            return Err(Refused::Stale {
                seq: r.seq,
                last: last.seq,
            });
        }
        if !self.latest.contains_key(&key) && self.latest.len() >= self.reports_max.max(1) {
            let stale_after = self.stale_after_ms;
            self.latest
                .retain(|_, l| now_ms.saturating_sub(l.telemetry.at_ms) <= stale_after);
            if self.latest.len() >= self.reports_max.max(1)
                && let Some(oldest) = self
                    .latest
                    .iter()
                    .min_by_key(|(k, l)| (l.telemetry.at_ms, **k))
                    .map(|(k, _)| *k)
            {
                self.latest.remove(&oldest);
            }
        }
        self.latest.insert(key, r.clone());
        Ok(())
    }

    /// Fresh reports at `now_ms`, in key order.
    pub fn fresh(&self, now_ms: u64) -> Vec<&TelemetryReport> {
        self.latest
            .values()
            .filter(|r| now_ms.saturating_sub(r.telemetry.at_ms) <= self.stale_after_ms)
            .collect()
    }
}

/// Whether `now` differs from the last published figures in what placement uses, enough to
/// publish before the refresh is due: the queue, the models measured or their latency (by a
/// fifth), or the battery (on or off it, or by 5 %). Load, memory and temperature are carried
/// but wait for the refresh: a load average decaying after a busy spell would otherwise
/// republish every `every_ms`.
pub fn changed(last: &Telemetry, now: &Telemetry) -> bool {
    let moved = |a: u64, b: u64, by: u64| a.abs_diff(b) >= by;
    last.queue_depth != now.queue_depth
        || last.model_latency_us.len() != now.model_latency_us.len()
        || now.model_latency_us.iter().any(|(d, l)| {
            last.model_latency_us
                .get(d)
                .is_none_or(|p| moved(*p, *l, (*p / 5).max(1)))
        })
        || last.battery_permille.is_some() != now.battery_permille.is_some()
        || moved(
            u64::from(last.battery_permille.unwrap_or(0)),
            u64::from(now.battery_permille.unwrap_or(0)),
            50,
        )
}

/// A marked change in the queue: at least 2 jobs and a quarter of what was published.
pub fn queue_moved(last: u64, now: u64) -> bool {
    now.abs_diff(last) >= 2.max(last / 4)
}

/// When a node publishes its telemetry: a marked queue change at once; otherwise at most every
/// `every`, and then only when [`changed`] says placement would see a difference or `refresh`
/// has passed since the last report (so peers never see it go stale). The node's telemetry
/// task and the simulator both follow this.
pub fn publish_due(
    last: Option<(&Telemetry, Duration)>,
    now: &Telemetry,
    every: Duration,
    refresh: Duration,
) -> bool {
    let Some((last, since)) = last else {
        return true;
    };
    let moved = queue_moved(u64::from(last.queue_depth), u64::from(now.queue_depth));
    if since < every && !moved {
        return false;
    }
    moved || since >= refresh || changed(last, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fab_ledger::Keypair;
    use fab_ledger::signed::SignedError;

    fn report(key: &Keypair, seq: u64, at_ms: u64) -> TelemetryReport {
        TelemetryReport {
            node: key.public(),
            seq,
            telemetry: Telemetry {
                tier: Tier::Device,
                region: "eu-west".into(),
                labels: ["camera".to_owned(), "arm64".to_owned()].into(),
                price_per_s_micros: 10,
                queue_depth: 3,
                workers: 2,
                speed_permille: 450,
                power_mw: 4_000,
                battery_permille: Some(870),
                model_latency_us: [([1; 32], 812)].into(),
                host: Host {
                    cores: 4,
                    load_permille: 250,
                    mem_free_mib: 1_900,
                    temp_max_mc: Some(61_500),
                },
                at_ms,
            },
        }
    }

    #[test]
    fn the_view_is_bounded_and_evicts_stale_then_least_recent_reports() {
        let mut v = TelemetryView::new(10_000);
        v.reports_max = 3;
        let keys: Vec<Keypair> = (1..=6u8).map(|i| Keypair::from_secret([i; 32])).collect();
        let signed = |k: &Keypair, at: u64| Signed::sign(report(k, 1, at), k);
        // Three reports; the first goes stale by the time a fourth node arrives.
        assert_eq!(v.offer(&signed(&keys[0], 1_000), 1_000), Ok(()));
        assert_eq!(v.offer(&signed(&keys[1], 9_000), 9_000), Ok(()));
        assert_eq!(v.offer(&signed(&keys[2], 9_500), 9_500), Ok(()));
        assert_eq!(v.offer(&signed(&keys[3], 12_000), 12_000), Ok(()));
        assert_eq!(v.len(), 3);
        assert!(v.fresh(12_000).iter().all(|r| r.node != keys[0].public()));
        // Nothing stale: the least recent report (keys[1], at 9,000) makes room.
        assert_eq!(v.offer(&signed(&keys[4], 12_500), 12_500), Ok(()));
        assert_eq!(v.len(), 3);
        assert!(v.fresh(12_500).iter().all(|r| r.node != keys[1].public()));
        // A flood of new nodes never grows the view.
        for i in 0..100u32 {
            let mut secret = [9u8; 32];
            secret[..4].copy_from_slice(&i.to_le_bytes());
            let k = Keypair::from_secret(secret);
            let _ = v.offer(&signed(&k, 13_000), 13_000);
            assert!(v.len() <= 3);
        }
        v.forget(&keys[4].public());
        assert!(v.fresh(13_000).iter().all(|r| r.node != keys[4].public()));
    }

    #[test]
    fn absurd_figures_are_refused_at_decode() {
        let key = Keypair::from_secret([3; 32]);
        let decode =
            |t: TelemetryReport| SignedTelemetry::decode_verified(&Signed::sign(t, &key).encode());
        assert!(decode(report(&key, 1, 1)).is_ok());
        type Edit = (&'static str, fn(&mut Telemetry));
        let edits: [Edit; 9] = [
            ("speed_permille", |t| {
                t.speed_permille = SPEED_PERMILLE_MAX + 1
            }),
            ("speed_permille", |t| t.speed_permille = 0),
            ("workers", |t| t.workers = 0),
            ("workers", |t| t.workers = u32::MAX),
            ("queue_depth", |t| t.queue_depth = u32::MAX),
            ("power_mw", |t| t.power_mw = u32::MAX),
            ("price", |t| t.price_per_s_micros = u64::MAX),
            ("latency_us", |t| {
                t.model_latency_us.insert([2; 32], 0);
            }),
            ("latency_us", |t| {
                t.model_latency_us.insert([2; 32], u64::MAX);
            }),
        ];
        for (field, edit) in edits {
            let mut r = report(&key, 1, 1);
            edit(&mut r.telemetry);
            let e = decode(r).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn reports_round_trip_and_forgeries_are_refused() {
        let key = Keypair::from_secret([3; 32]);
        let signed = Signed::sign(report(&key, 1, 1_000), &key);
        let back = SignedTelemetry::decode_verified(&signed.encode()).unwrap();
        assert_eq!(back.body(), signed.body());
        // Signed by someone else than the node it names.
        let forged = Signed::sign(report(&key, 1, 1_000), &Keypair::from_secret([4; 32]));
        assert!(matches!(
            SignedTelemetry::decode_verified(&forged.encode()),
            Err(SignedError::BadSignature { .. })
        ));
        // Every bit flip is refused.
        let wire = signed.encode();
        for i in (0..wire.len()).step_by(7) {
            let mut bad = wire.clone();
            bad[i] ^= 0x04;
            assert!(
                SignedTelemetry::decode_verified(&bad).is_err(),
                "flip at {i}"
            );
        }
        // Oversized lists are refused.
        let mut big = report(&key, 2, 1_000);
        big.telemetry.labels = (0..=LABELS_MAX).map(|i| format!("l{i}")).collect();
        let big = Signed::sign(big, &key);
        assert!(SignedTelemetry::decode_verified(&big.encode()).is_err());
    }

    #[test]
    fn the_view_keeps_the_newest_report_refuses_replays_and_drops_stale_ones() {
        let (a, b) = (Keypair::from_secret([5; 32]), Keypair::from_secret([6; 32]));
        let mut v = TelemetryView::new(10_000);
        let a2 = Signed::sign(report(&a, 2, 1_000), &a);
        assert_eq!(v.offer(&a2, 1_000), Ok(()));
        // The same report again, or an older one: refused.
        assert_eq!(v.offer(&a2, 1_500), Err(Refused::Stale { seq: 2, last: 2 }));
        let a1 = Signed::sign(report(&a, 1, 900), &a);
        assert_eq!(v.offer(&a1, 1_500), Err(Refused::Stale { seq: 1, last: 2 }));
        let future = Signed::sign(report(&b, 1, 100_000), &b);
        assert!(matches!(
            v.offer(&future, 1_000),
            Err(Refused::FromTheFuture { .. })
        ));
        let b1 = Signed::sign(report(&b, 1, 5_000), &b);
        assert_eq!(v.offer(&b1, 5_000), Ok(()));
        assert_eq!(v.fresh(6_000).len(), 2);
        // A's report is 10.001 s old at 11,001 ms: no longer a candidate.
        let fresh: Vec<u64> = v.fresh(11_001).iter().map(|r| r.telemetry.at_ms).collect();
        assert_eq!(fresh, [5_000]);
    }

    #[test]
    fn only_marked_changes_count_as_news() {
        let base = Telemetry {
            tier: crate::sched::Tier::Edge,
            region: String::new(),
            labels: Default::default(),
            price_per_s_micros: 0,
            queue_depth: 0,
            workers: 1,
            speed_permille: 1000,
            power_mw: 0,
            battery_permille: Some(800),
            model_latency_us: [([1; 32], 1000)].into(),
            host: Host {
                load_permille: 500,
                mem_free_mib: 1000,
                temp_max_mc: Some(40_000),
                ..Default::default()
            },
            at_ms: 0,
        };
        let with = |f: &dyn Fn(&mut Telemetry)| {
            let mut t = base.clone();
            f(&mut t);
            changed(&base, &t)
        };
        // Small drifts are not news.
        assert!(!with(&|t| t.at_ms = 5_000));
        assert!(!with(&|t| {
            t.model_latency_us.insert([1; 32], 1100);
        }));
        assert!(!with(&|t| t.battery_permille = Some(760)));
        assert!(!with(&|t| t.host.load_permille = 900));
        assert!(!with(&|t| t.host.mem_free_mib = 500));
        assert!(!with(&|t| t.host.temp_max_mc = Some(60_000)));
        // Marked ones are.
        assert!(with(&|t| t.queue_depth = 1));
        assert!(with(&|t| {
            t.model_latency_us.insert([1; 32], 1300);
        }));
        assert!(with(&|t| {
            t.model_latency_us.insert([2; 32], 10);
        }));
        assert!(with(&|t| t.battery_permille = None));
        assert!(with(&|t| t.battery_permille = Some(740)));
    }

    #[test]
    fn reports_go_out_on_marked_changes_and_at_least_every_refresh() {
        let t = |queue: u32| Telemetry {
            queue_depth: queue,
            ..report(&Keypair::from_secret([1; 32]), 1, 0).telemetry
        };
        let (every, refresh) = (Duration::from_secs(2), Duration::from_secs(5));
        let s = Duration::from_secs;
        assert!(publish_due(None, &t(3), every, refresh), "the first report");
        // Nothing changed: only the refresh.
        assert!(!publish_due(Some((&t(3), s(3))), &t(3), every, refresh));
        assert!(publish_due(Some((&t(3), s(5))), &t(3), every, refresh));
        // One more queued job is news, but not before `every`.
        assert!(!publish_due(Some((&t(3), s(1))), &t(4), every, refresh));
        assert!(publish_due(Some((&t(3), s(2))), &t(4), every, refresh));
        // A marked queue change goes out at once.
        assert!(publish_due(
            Some((&t(3), Duration::ZERO)),
            &t(8),
            every,
            refresh
        ));
    }
}
