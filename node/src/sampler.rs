//! Reads the machine for telemetry: cores, load, available memory, thermal zones, battery, and
//! a speed score calibrated at start-up. Linux `/proc` and `/sys`; where a file is missing (no
//! battery, no thermal zones, another OS) the figure is absent rather than guessed.

use std::path::Path;
use std::time::Instant;

use crate::sched::Host;

/// The machine's figures now.
pub fn host() -> Host {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let load_permille = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| parse_loadavg(&s, cores))
        .unwrap_or(0);
    let mem_free_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_available_mib(&s))
        .unwrap_or(0);
    Host {
        cores,
        load_permille,
        mem_free_mib,
        temp_max_mc: thermal_max_mc(Path::new("/sys/class/thermal")),
    }
}

/// One-minute load over the cores, permille.
pub fn parse_loadavg(s: &str, cores: u32) -> Option<u32> {
    let one: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(
        (one * 1000.0 / f64::from(cores.max(1)))
            .round()
            .clamp(0.0, 1e9) as u32,
    )
}

/// `MemAvailable` in MiB.
pub fn parse_meminfo_available_mib(s: &str) -> Option<u64> {
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The hottest `thermal_zone*/temp` under `dir`, millidegrees Celsius.
pub fn thermal_max_mc(dir: &Path) -> Option<u32> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<i64>().ok())
        .filter_map(|t| u32::try_from(t).ok())
        .max()
}

/// Charge in permille when the machine runs on a battery that is discharging; `None` on mains
/// power or without a battery.
pub fn battery_permille(dir: &Path) -> Option<u32> {
    for e in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let p = e.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).map(|s| s.trim().to_owned());
        if read("type").ok().as_deref() != Some("Battery") {
            continue;
        }
        if read("status").ok().as_deref() != Some("Discharging") {
            return None;
        }
        let capacity: u32 = read("capacity").ok()?.parse().ok()?;
        return Some(capacity.min(100) * 10);
    }
    None
}

/// Rounds of the calibration workload, and their time on the reference machine: one core of
/// the AMD EPYC development VM the benchmarks in docs/BENCHMARKS.md ran on (3.28 ms, optimised
/// build, 2026-11-26), which therefore scores 1000. Short, so a node's start is not delayed.
const CALIBRATION_ROUNDS: u64 = 1_000_000;
const REFERENCE_US: u64 = 3_280;

/// A speed score in permille of the reference machine: a fixed integer and floating-point
/// workload on one core, best of three runs.
pub fn calibrate_speed_permille() -> u32 {
    let best = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(workload(CALIBRATION_ROUNDS));
            t0.elapsed().as_micros().max(1) as u64
        })
        .min()
        .unwrap_or(REFERENCE_US);
    (REFERENCE_US * 1000 / best).clamp(1, 1_000_000) as u32
}

fn workload(rounds: u64) -> f64 {
    let (mut x, mut acc) = (0x9E37_79B9_7F4A_7C15u64, 0.0f64);
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = acc.mul_add(0.999_999, (x >> 11) as f64 * 1e-16);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_read_the_kernel_formats() {
        assert_eq!(parse_loadavg("1.50 0.90 0.40 2/345 6789\n", 2), Some(750));
        assert_eq!(parse_loadavg("garbage", 2), None);
        let meminfo = "MemTotal:  16384000 kB\nMemFree:  1000 kB\nMemAvailable:   2097152 kB\n";
        assert_eq!(parse_meminfo_available_mib(meminfo), Some(2048));
        assert_eq!(parse_meminfo_available_mib("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn thermal_zones_and_batteries_are_read_from_sysfs_layouts() {
        let dir = tempfile::tempdir().unwrap();
        for (zone, t) in [("thermal_zone0", "45000\n"), ("thermal_zone1", "61500\n")] {
            std::fs::create_dir(dir.path().join(zone)).unwrap();
            std::fs::write(dir.path().join(zone).join("temp"), t).unwrap();
        }
        std::fs::create_dir(dir.path().join("cooling_device0")).unwrap();
        assert_eq!(thermal_max_mc(dir.path()), Some(61_500));
        assert_eq!(thermal_max_mc(&dir.path().join("none")), None);

        let ps = tempfile::tempdir().unwrap();
        let bat = ps.path().join("BAT0");
        std::fs::create_dir(&bat).unwrap();
        std::fs::write(bat.join("type"), "Battery\n").unwrap();
        std::fs::write(bat.join("capacity"), "73\n").unwrap();
        std::fs::write(bat.join("status"), "Discharging\n").unwrap();
        assert_eq!(battery_permille(ps.path()), Some(730));
        std::fs::write(bat.join("status"), "Charging\n").unwrap();
        assert_eq!(battery_permille(ps.path()), None);
    }

    #[test]
    fn this_machine_reports_real_figures() {
        let h = host();
        assert!(h.cores >= 1);
        assert!(h.mem_free_mib > 0, "{h:?}");
        assert!(calibrate_speed_permille() > 0);
    }
}
