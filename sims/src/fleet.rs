//! What the simulated fleet is made of: device classes, the models they run and the workload
//! submitted to them.
//!
//! Speeds are relative to the reference machine of `fabnode bench engine` (speed 1000: one
//! core of the 2-core x86-64 development VM, AVX2); model latencies are that machine's measured
//! medians (docs/BENCHMARKS.md). The device classes' speeds, power and prices are assumptions
//! until measured on the devices themselves; they are data, not code, so a scenario can replace
//! them.

use fab_node::sched::Tier;

/// A class of device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub tier: Tier,
    /// Compute speed relative to the reference machine, permille.
    pub speed_permille: u32,
    /// Inference workers (jobs run at once).
    pub workers: u32,
    /// Power drawn while computing, milliwatts.
    pub power_mw: u32,
    /// Price of one second of compute, micro-units.
    pub price_per_s_micros: u64,
    /// Battery capacity in millijoules, for devices that run on one.
    pub battery_mj: Option<u64>,
    pub cores: u32,
    pub mem_mib: u64,
    /// Share of the fleet, permille.
    pub share_permille: u32,
    /// How it reaches the network: a name in [`links`].
    pub link: String,
    /// A durable ledger commit (fsync of the node's redb file), microseconds: what a run
    /// waits for after it ends before its answer goes out.
    pub commit_us: u64,
}

/// A class of access link. A message between two nodes crosses both nodes' access links,
/// plus the wide area between regions when they differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkProfile {
    pub name: String,
    /// One-way latency of the access link, microseconds: a uniform range.
    pub one_way_us: (u64, u64),
    /// Bandwidth, bytes per millisecond (1 Gbit/s = 125,000).
    pub bytes_per_ms: u64,
}

/// The default access links: wired LAN, Wi-Fi, cellular, a datacenter's network.
pub fn links() -> Vec<LinkProfile> {
    vec![
        LinkProfile {
            name: "lan".into(),
            one_way_us: (50, 300),
            bytes_per_ms: 125_000,
        },
        LinkProfile {
            name: "wifi".into(),
            one_way_us: (500, 4_000),
            bytes_per_ms: 6_250,
        },
        LinkProfile {
            name: "cellular".into(),
            one_way_us: (15_000, 60_000),
            bytes_per_ms: 1_250,
        },
        LinkProfile {
            name: "datacenter".into(),
            one_way_us: (50, 200),
            bytes_per_ms: 1_250_000,
        },
    ]
}

/// One-way latency between regions, microseconds: a uniform range.
pub const WAN_ONE_WAY_US: (u64, u64) = (35_000, 60_000);

/// The default fleet: Raspberry Pi-class boards (some on battery), Jetson-class edge boxes,
/// laptops and cloud VMs.
pub fn profiles() -> Vec<Profile> {
    vec![
        Profile {
            name: "pi".into(),
            tier: Tier::Device,
            speed_permille: 170,
            workers: 1,
            power_mw: 4_000,
            price_per_s_micros: 0,
            // A 10,000 mAh pack at 3.7 V: 133 kJ.
            battery_mj: Some(133_000_000),
            cores: 4,
            mem_mib: 4_096,
            share_permille: 400,
            link: "wifi".into(),
            // SD card.
            commit_us: 8_000,
        },
        Profile {
            name: "jetson".into(),
            tier: Tier::Edge,
            speed_permille: 400,
            workers: 2,
            power_mw: 10_000,
            price_per_s_micros: 1_000,
            battery_mj: None,
            cores: 6,
            mem_mib: 8_192,
            share_permille: 250,
            link: "lan".into(),
            // eMMC.
            commit_us: 2_000,
        },
        Profile {
            name: "laptop".into(),
            tier: Tier::Edge,
            speed_permille: 900,
            workers: 4,
            power_mw: 25_000,
            price_per_s_micros: 2_000,
            battery_mj: None,
            cores: 8,
            mem_mib: 16_384,
            share_permille: 200,
            link: "wifi".into(),
            // NVMe.
            commit_us: 1_000,
        },
        Profile {
            name: "cloud".into(),
            tier: Tier::Cloud,
            speed_permille: 1_000,
            workers: 8,
            power_mw: 100_000,
            price_per_s_micros: 10_000,
            battery_mj: None,
            cores: 16,
            mem_mib: 65_536,
            share_permille: 150,
            link: "datacenter".into(),
            // network block storage.
            commit_us: 1_000,
        },
    ]
}

/// A model the fleet runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    pub digest: [u8; 32],
    /// Median latency on the reference machine, microseconds.
    pub reference_latency_us: u64,
    pub input_bytes: u64,
    /// Share of jobs, permille.
    pub share_permille: u32,
    /// The deadline its jobs ask for.
    pub deadline_us: u64,
    /// Memory a node needs to hold it, MiB: nodes with less decline its jobs.
    pub mem_mib: u64,
}

/// The models of the bundled fixtures, with their measured latencies: the digits MLP (tract,
/// `bench sched` "inference alone", 38-50 µs) and the spin model (219-230 ms per run in the
/// failover trials of `cli/tests/sched.rs`).
pub fn models() -> Vec<Model> {
    vec![
        Model {
            name: "digits".into(),
            digest: *blake3::hash(b"fixtures/digits/digits.onnx").as_bytes(),
            reference_latency_us: 45,
            input_bytes: 784 * 4,
            share_permille: 800,
            deadline_us: 2_000_000,
            mem_mib: 16,
        },
        Model {
            name: "spin".into(),
            digest: *blake3::hash(b"fixtures/spin/spin.onnx").as_bytes(),
            reference_latency_us: 220_000,
            input_bytes: 64,
            share_permille: 200,
            deadline_us: 10_000_000,
            mem_mib: 64,
        },
    ]
}

/// Picks an index by permille shares from a draw in `0..1000`.
pub fn pick(shares: impl IntoIterator<Item = u32>, draw: u64) -> usize {
    let mut acc = 0u64;
    let mut last = 0;
    for (i, s) in shares.into_iter().enumerate() {
        acc += u64::from(s);
        last = i;
        if draw < acc {
            return i;
        }
    }
    last
}

/// Gini coefficient of non-negative loads: 0 when equal, towards 1 when one node does it all.
pub fn gini(loads: &[u64]) -> f64 {
    let n = loads.len() as f64;
    let total: u64 = loads.iter().sum();
    if loads.is_empty() || total == 0 {
        return 0.0;
    }
    let mut sorted = loads.to_vec();
    sorted.sort_unstable();
    let weighted: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, x)| (i as f64 + 1.0) * *x as f64)
        .sum();
    (2.0 * weighted) / (n * total as f64) - (n + 1.0) / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_names_a_link() {
        let names: Vec<_> = links().into_iter().map(|l| l.name).collect();
        assert!(profiles().iter().all(|p| names.contains(&p.link)));
    }

    #[test]
    fn shares_add_up_and_pick_follows_them() {
        assert_eq!(
            profiles().iter().map(|p| p.share_permille).sum::<u32>(),
            1000
        );
        assert_eq!(models().iter().map(|m| m.share_permille).sum::<u32>(), 1000);
        let shares = [400, 250, 200, 150];
        assert_eq!(pick(shares, 0), 0);
        assert_eq!(pick(shares, 399), 0);
        assert_eq!(pick(shares, 400), 1);
        assert_eq!(pick(shares, 999), 3);
    }

    #[test]
    fn gini_is_zero_for_equal_loads_and_large_for_one_node() {
        assert_eq!(gini(&[5, 5, 5, 5]), 0.0);
        assert!((gini(&[0, 0, 0, 8]) - 0.75).abs() < 1e-9);
        assert_eq!(gini(&[]), 0.0);
    }
}
