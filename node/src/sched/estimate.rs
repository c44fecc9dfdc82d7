//! What a node publishes about itself, and what it would take to run a job there.

use std::collections::{BTreeMap, BTreeSet};

/// Where a node sits in the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Device,
    Edge,
    Cloud,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Edge => "edge",
            Tier::Cloud => "cloud",
        }
    }

    /// The wire code (telemetry, calls for bids): 0 device, 1 edge, 2 cloud.
    pub fn code(self) -> u64 {
        match self {
            Tier::Device => 0,
            Tier::Edge => 1,
            Tier::Cloud => 2,
        }
    }

    pub fn from_code(c: u64) -> Option<Tier> {
        match c {
            0 => Some(Tier::Device),
            1 => Some(Tier::Edge),
            2 => Some(Tier::Cloud),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "device" => Some(Tier::Device),
            "edge" => Some(Tier::Edge),
            "cloud" => Some(Tier::Cloud),
            _ => None,
        }
    }
}

/// A node's published state (integers only: they decide placements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Telemetry {
    pub tier: Tier,
    pub region: String,
    pub labels: BTreeSet<String>,
    /// Price of one second of compute, in micro-units of the fleet's currency.
    pub price_per_s_micros: u64,
    /// Jobs waiting or running.
    pub queue_depth: u32,
    /// Inference workers.
    pub workers: u32,
    /// Calibrated speed relative to a reference machine, in permille (1000 = reference).
    pub speed_permille: u32,
    /// Power drawn while computing, milliwatts.
    pub power_mw: u32,
    /// On battery, and its charge in permille.
    pub battery_permille: Option<u32>,
    /// Measured latency per model digest (EWMA of runs), microseconds.
    pub model_latency_us: BTreeMap<[u8; 32], u64>,
    /// The machine: cores, load, memory, temperature.
    pub host: Host,
    /// When the node signed this (Unix ms).
    pub at_ms: u64,
}

/// What the sampler reads off the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Host {
    pub cores: u32,
    /// One-minute load average over the cores, permille (1000 = every core busy).
    pub load_permille: u32,
    /// Memory available for new work, MiB.
    pub mem_free_mib: u64,
    /// Hottest thermal zone, millidegrees Celsius, where the machine reports one.
    pub temp_max_mc: Option<u32>,
}

/// What the requester knows about the job before anyone runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobShape {
    pub model_digest: [u8; 32],
    pub input_bytes: u64,
    /// Reference latency of the model on a speed-1000 node, when no node has measured it.
    pub reference_latency_us: u64,
}

/// The link between requester and node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub rtt_us: u64,
    /// Bytes per millisecond (1 Gbit/s ≈ 125,000).
    pub bytes_per_ms: u64,
}

impl Link {
    /// The requester itself: no network.
    pub const LOCAL: Link = Link {
        rtt_us: 0,
        bytes_per_ms: u64::MAX,
    };

    /// Bandwidth assumed to a peer until it is measured: 100 Mbit/s, a modest LAN.
    pub const ASSUMED_BYTES_PER_MS: u64 = 12_500;

    /// A peer at `rtt_us` with the assumed bandwidth.
    pub fn assumed(rtt_us: u64) -> Link {
        Link {
            rtt_us,
            bytes_per_ms: Link::ASSUMED_BYTES_PER_MS,
        }
    }
}

/// Estimated cost of running a job on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    pub queue_us: u64,
    pub compute_us: u64,
    pub transfer_us: u64,
    pub cost_micros: u64,
    pub energy_uj: u64,
    /// The node has measured this model (it is loaded there).
    pub cached: bool,
}

impl Estimate {
    /// Expected time from award to result.
    pub fn completion_us(&self) -> u64 {
        self.queue_us
            .saturating_add(self.compute_us)
            .saturating_add(self.transfer_us)
    }
}

/// Estimates a job on a node: compute from the node's measured latency for the model (or the
/// reference latency scaled by its speed), queue from its queue depth over its workers,
/// transfer from the round trip and the input size, cost from its price, energy from its power.
pub fn estimate(t: &Telemetry, job: &JobShape, link: Link) -> Estimate {
    let measured = t.model_latency_us.get(&job.model_digest).copied();
    // At least 1 µs: no run is free, and a requester refuses a zero-time offer as implausible.
    let compute_us = measured
        .unwrap_or_else(|| {
            job.reference_latency_us.saturating_mul(1000) / u64::from(t.speed_permille.max(1))
        })
        .max(1);
    let queue_us =
        u64::from(t.queue_depth).saturating_mul(compute_us) / u64::from(t.workers.max(1));
    let transfer_us = link.rtt_us.saturating_add(
        job.input_bytes
            .saturating_mul(1000)
            .checked_div(link.bytes_per_ms)
            .unwrap_or(0),
    );
    let cost_micros = t.price_per_s_micros.saturating_mul(compute_us) / 1_000_000;
    let energy_uj = u64::from(t.power_mw).saturating_mul(compute_us) / 1000;
    Estimate {
        queue_us,
        compute_us,
        transfer_us,
        cost_micros,
        energy_uj,
        cached: measured.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn telemetry() -> Telemetry {
        Telemetry {
            tier: Tier::Edge,
            region: "eu".into(),
            labels: BTreeSet::new(),
            price_per_s_micros: 1_000_000,
            queue_depth: 0,
            workers: 2,
            speed_permille: 1000,
            power_mw: 5_000,
            battery_permille: None,
            model_latency_us: BTreeMap::new(),
            host: Host::default(),
            at_ms: 0,
        }
    }

    #[test]
    fn estimates_follow_speed_queue_link_price_and_measurements() {
        let job = JobShape {
            model_digest: [1; 32],
            input_bytes: 125_000,
            reference_latency_us: 2_000,
        };
        let link = Link {
            rtt_us: 300,
            bytes_per_ms: 125_000,
        };
        let mut t = telemetry();
        let e = estimate(&t, &job, link);
        assert_eq!((e.compute_us, e.queue_us, e.transfer_us), (2_000, 0, 1_300));
        assert_eq!(
            (e.cost_micros, e.energy_uj, e.cached),
            (2_000, 10_000, false)
        );
        // Twice as fast, four queued over two workers, a measured latency wins over the
        // reference.
        t.speed_permille = 2000;
        t.queue_depth = 4;
        assert_eq!(estimate(&t, &job, link).compute_us, 1_000);
        assert_eq!(estimate(&t, &job, link).queue_us, 2_000);
        t.model_latency_us.insert([1; 32], 700);
        let e = estimate(&t, &job, Link::LOCAL);
        assert_eq!((e.compute_us, e.transfer_us, e.cached), (700, 0, true));
        assert_eq!(e.completion_us(), 700 + 1_400);
    }
}
