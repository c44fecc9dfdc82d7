//! Integer scoring of a bid against the job's SLA and the requester's weights.

use std::collections::BTreeSet;

use super::estimate::{Estimate, Telemetry, Tier};

/// What a job asks of its placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sla {
    /// Time from submission to result.
    pub deadline_us: u64,
    pub max_cost_micros: Option<u64>,
    /// Allowed tiers; empty allows every tier.
    pub tiers: BTreeSet<Tier>,
    /// Allowed regions; empty allows every region.
    pub regions: BTreeSet<String>,
    /// Labels a node must carry, all of them.
    pub labels: BTreeSet<String>,
    /// Distinct nodes that must each run the job.
    pub replicas: u8,
}

impl Default for Sla {
    fn default() -> Self {
        Sla {
            deadline_us: 30_000_000,
            max_cost_micros: None,
            tiers: BTreeSet::new(),
            regions: BTreeSet::new(),
            labels: BTreeSet::new(),
            replicas: 1,
        }
    }
}

impl Sla {
    /// Why a node cannot take the job, if it cannot: checked on telemetry before any call for
    /// bids, and again on the bid.
    pub fn refuses(&self, t: &Telemetry, e: &Estimate) -> Option<String> {
        if !self.tiers.is_empty() && !self.tiers.contains(&t.tier) {
            return Some(format!("tier {} not allowed", t.tier.name()));
        }
        if !self.regions.is_empty() && !self.regions.contains(&t.region) {
            return Some(format!("region {:?} not allowed", t.region));
        }
        if let Some(missing) = self.labels.iter().find(|l| !t.labels.contains(*l)) {
            return Some(format!("lacks label {missing:?}"));
        }
        if e.completion_us() > self.deadline_us {
            return Some(format!(
                "estimated {} µs exceeds the deadline of {} µs",
                e.completion_us(),
                self.deadline_us
            ));
        }
        if let Some(max) = self.max_cost_micros
            && e.cost_micros > max
        {
            return Some(format!("cost {} exceeds the maximum {max}", e.cost_micros));
        }
        None
    }
}

/// How much each term counts (config `scheduler.weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    pub time: u64,
    pub cost: u64,
    pub energy: u64,
    pub cache: u64,
    pub reliability: u64,
    pub battery: u64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            time: 50,
            cost: 20,
            energy: 10,
            cache: 5,
            reliability: 10,
            battery: 5,
        }
    }
}

/// A bid's score: every term in 0..=1000 before weighting, and the weighted total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Score {
    pub time: u64,
    pub cost: u64,
    pub energy: u64,
    pub cache: u64,
    pub reliability: u64,
    pub battery: u64,
    pub total: u64,
}

/// A cost of this many micro-units scores 500.
const COST_HALF: u64 = 1_000;
/// An energy of this many microjoules scores 500.
const ENERGY_HALF_UJ: u64 = 10_000;

/// Scores an estimate. `time_half_us` is the completion time that scores 500 (the model's
/// reference latency: the scale of the job); `reliability_permille` is the requester's record
/// of the node. The SLA's deadline is a hard limit ([`Sla::refuses`]), not a scale.
pub fn score(
    e: &Estimate,
    t: &Telemetry,
    sla: &Sla,
    w: &Weights,
    time_half_us: u64,
    reliability_permille: u64,
) -> Score {
    // Every figure here may come from a hostile peer (a bid, a report): each term is computed
    // so that no value overflows, and each lands in 0..=1000 whatever its inputs.
    let half = time_half_us.max(1);
    let time = ratio_permille(half, e.completion_us());
    let cost = match sla.max_cost_micros {
        Some(max) => {
            let left = u128::from(max.saturating_sub(e.cost_micros));
            (left * 1000 / u128::from(max.max(1))) as u64
        }
        None => ratio_permille(COST_HALF, e.cost_micros),
    };
    let energy = ratio_permille(ENERGY_HALF_UJ, e.energy_uj);
    let cache = if e.cached { 1000 } else { 0 };
    let reliability = reliability_permille.min(1000);
    let battery = t.battery_permille.map_or(1000, |b| u64::from(b.min(1000)));
    let total = [
        (w.time, time),
        (w.cost, cost),
        (w.energy, energy),
        (w.cache, cache),
        (w.reliability, reliability),
        (w.battery, battery),
    ]
    .iter()
    .fold(0u64, |sum, (w, term)| {
        sum.saturating_add(w.saturating_mul(*term))
    });
    Score {
        time,
        cost,
        energy,
        cache,
        reliability,
        battery,
        total,
    }
}

/// `1000 * half / (half + x)`: 1000 at x = 0, 500 at x = half, towards 0 as x grows; exact for
/// every u64 input.
fn ratio_permille(half: u64, x: u64) -> u64 {
    let half = u128::from(half);
    (half * 1000 / (half + u128::from(x)).max(1)) as u64
}

/// Reliability from the requester's record: successes over attempts, with a prior of 4 of 5 so
/// an unknown node starts at 800.
pub fn reliability_permille(successes: u64, attempts: u64) -> u64 {
    let permille = (u128::from(successes) + 4) * 1000 / (u128::from(attempts) + 5);
    permille.min(1000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn t() -> Telemetry {
        Telemetry {
            tier: Tier::Edge,
            region: "eu".into(),
            labels: ["gpu".to_owned()].into(),
            price_per_s_micros: 0,
            queue_depth: 0,
            workers: 1,
            speed_permille: 1000,
            power_mw: 0,
            battery_permille: None,
            model_latency_us: BTreeMap::new(),
            host: Default::default(),
            at_ms: 0,
        }
    }

    fn e(completion: u64, cost: u64) -> Estimate {
        Estimate {
            compute_us: completion,
            cost_micros: cost,
            ..Default::default()
        }
    }

    #[test]
    fn terms_and_total_are_integers_in_range() {
        let sla = Sla::default();
        // Completion equal to the job's scale scores 500; three times it, 250.
        let s = score(
            &e(2_500, 1_000),
            &t(),
            &sla,
            &Weights::default(),
            2_500,
            800,
        );
        assert_eq!((s.time, s.cost, s.energy, s.cache), (500, 500, 1000, 0));
        assert_eq!(s.reliability, 800);
        assert_eq!(
            s.total,
            50 * 500 + 20 * 500 + 10 * 1000 + 10 * 800 + 5 * 1000
        );
        let w = Weights::default();
        assert_eq!(score(&e(7_500, 0), &t(), &sla, &w, 2_500, 0).time, 250);
        // A max cost scales the cost term.
        let sla = Sla {
            max_cost_micros: Some(2_000),
            ..Default::default()
        };
        let s = score(&e(5_000, 500), &t(), &sla, &w, 1, 1000);
        assert_eq!((s.time, s.cost), (0, 750));
        let mut on_battery = t();
        on_battery.battery_permille = Some(300);
        assert_eq!(score(&e(1, 0), &on_battery, &sla, &w, 1, 0).battery, 300);
    }

    #[test]
    fn the_sla_names_why_a_node_is_refused() {
        let mut sla = Sla::default();
        assert_eq!(sla.refuses(&t(), &e(1, 1)), None);
        sla.tiers = [Tier::Cloud].into();
        assert!(sla.refuses(&t(), &e(1, 1)).unwrap().contains("tier edge"));
        sla.tiers.clear();
        sla.regions = ["us".to_owned()].into();
        assert!(sla.refuses(&t(), &e(1, 1)).unwrap().contains("region"));
        sla.regions.clear();
        sla.labels = ["gpu".to_owned(), "fp16".to_owned()].into();
        assert!(sla.refuses(&t(), &e(1, 1)).unwrap().contains("fp16"));
        sla.labels.clear();
        sla.deadline_us = 10;
        assert!(sla.refuses(&t(), &e(11, 1)).unwrap().contains("deadline"));
        sla.deadline_us = 100;
        sla.max_cost_micros = Some(5);
        assert!(sla.refuses(&t(), &e(11, 6)).unwrap().contains("cost"));
    }

    #[test]
    fn extreme_figures_score_in_range_without_overflow() {
        let w = Weights {
            time: u64::MAX,
            cost: u64::MAX,
            energy: u64::MAX,
            cache: u64::MAX,
            reliability: u64::MAX,
            battery: u64::MAX,
        };
        let worst = Estimate {
            queue_us: u64::MAX,
            compute_us: u64::MAX,
            transfer_us: u64::MAX,
            cost_micros: u64::MAX,
            energy_uj: u64::MAX,
            cached: false,
        };
        for sla in [
            Sla::default(),
            Sla {
                max_cost_micros: Some(u64::MAX),
                ..Default::default()
            },
            Sla {
                max_cost_micros: Some(0),
                ..Default::default()
            },
        ] {
            let s = score(&worst, &t(), &sla, &w, u64::MAX, u64::MAX);
            assert!(
                s.time <= 1000 && s.cost <= 1000 && s.energy <= 1000,
                "{s:?}"
            );
            let s = score(&Estimate::default(), &t(), &sla, &w, u64::MAX, u64::MAX);
            assert_eq!(s.total, u64::MAX, "saturates instead of wrapping");
        }
        // An energy near u64::MAX used to wrap the denominator and score far above 1000.
        let e = Estimate {
            energy_uj: u64::MAX - 5_000,
            ..Default::default()
        };
        assert_eq!(
            score(&e, &t(), &Sla::default(), &Weights::default(), 1, 0).energy,
            0
        );
        assert_eq!(reliability_permille(u64::MAX, u64::MAX), 999);
        assert_eq!(reliability_permille(u64::MAX, 0), 1000);
    }

    #[test]
    fn reliability_starts_at_800_and_follows_the_record() {
        assert_eq!(reliability_permille(0, 0), 800);
        assert_eq!(reliability_permille(95, 95), 990);
        assert_eq!(reliability_permille(0, 5), 400);
    }
}
