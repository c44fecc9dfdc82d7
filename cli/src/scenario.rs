//! Scenario files for `fabnode simulate --scenario FILE`: TOML with any of the command's
//! settings and, optionally, the fleet's device classes, access links and models, replacing
//! the built-in ones. Unknown keys are refused, so a typo does not silently run the defaults.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fab_node::sched::Tier;
use fab_sims::fleet::{LinkProfile, Model, Profile};
use fab_sims::sim::{Arrivals, Config};
use serde::Deserialize;

/// Largest scenario file read.
const SCENARIO_BYTES_MAX: u64 = 1 << 20;

/// Settings over the defaults: a scenario file's, or the command line's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    pub(crate) peers: Option<usize>,
    pub(crate) seed: Option<u64>,
    pub(crate) duration_s: Option<u64>,
    pub(crate) recovery_s: Option<u64>,
    pub(crate) jobs_per_sec: Option<f64>,
    pub(crate) arrivals: Option<ArrivalsFile>,
    pub(crate) appends_per_sec: Option<u64>,
    pub(crate) cloud_only_permille: Option<u32>,
    pub(crate) two_replicas_permille: Option<u32>,
    pub(crate) faults: Option<Faults>,
    /// The nodes' `mesh.shards`.
    pub(crate) shards: Option<u64>,
    /// The nodes' `telemetry.every_ms` and `telemetry.stale_ms`.
    pub(crate) telemetry_every_ms: Option<u64>,
    pub(crate) telemetry_stale_ms: Option<u64>,
    #[serde(default)]
    pub(crate) profile: Vec<ProfileFile>,
    #[serde(default)]
    pub(crate) link: Vec<LinkFile>,
    #[serde(default)]
    pub(crate) model: Vec<ModelFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Faults {
    pub(crate) loss: Option<f64>,
    pub(crate) duplicate: Option<f64>,
    pub(crate) partition: Option<bool>,
    pub(crate) crashes: Option<usize>,
    pub(crate) clogged: Option<usize>,
    pub(crate) leaves: Option<usize>,
    pub(crate) joins: Option<usize>,
    pub(crate) equivocators: Option<usize>,
    pub(crate) forgers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "shape", rename_all = "lowercase")]
pub(crate) enum ArrivalsFile {
    Poisson,
    Bursts {
        every_s: f64,
        length_s: f64,
        factor: f64,
    },
    Diurnal {
        period_s: f64,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileFile {
    name: String,
    tier: String,
    speed_permille: u32,
    workers: u32,
    power_mw: u32,
    #[serde(default)]
    price_per_s_micros: u64,
    battery_mj: Option<u64>,
    cores: u32,
    mem_mib: u64,
    share_permille: u32,
    link: String,
    #[serde(default = "default_commit_us")]
    commit_us: u64,
}

fn default_commit_us() -> u64 {
    1_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkFile {
    name: String,
    one_way_us: [u64; 2],
    mbit_per_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelFile {
    name: String,
    reference_latency_us: u64,
    input_bytes: u64,
    share_permille: u32,
    deadline_ms: u64,
    #[serde(default)]
    mem_mib: u64,
}

/// The named arrival shapes of `--arrivals`.
pub fn arrivals(name: &str, fault_phase: Duration) -> Result<Arrivals> {
    Ok(match name {
        "poisson" => Arrivals::Poisson,
        "bursts" => Arrivals::Bursts {
            every: Duration::from_secs(10),
            length: Duration::from_secs(1),
            factor: 5.0,
        },
        "diurnal" => Arrivals::Diurnal {
            period: fault_phase,
        },
        other => bail!("unknown arrivals {other:?}: poisson, bursts or diurnal"),
    })
}

/// The name `--arrivals` takes for a shape, when it has one.
pub fn arrivals_name(a: &Arrivals) -> &'static str {
    match a {
        Arrivals::Poisson => "poisson",
        Arrivals::Bursts { .. } => "bursts",
        Arrivals::Diurnal { .. } => "diurnal",
    }
}

fn secs(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what}: {s} is not a duration"))
}

/// Reads a scenario file and applies it to `c`.
pub fn apply(path: &Path, c: &mut Config) -> Result<()> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading scenario {}", path.display()))?
        .len();
    if len > SCENARIO_BYTES_MAX {
        bail!(
            "scenario {} is {len} bytes; at most {SCENARIO_BYTES_MAX}",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading scenario {}", path.display()))?;
    let s: Scenario =
        toml::from_str(&text).with_context(|| format!("scenario {}", path.display()))?;
    overlay(s, c).with_context(|| format!("scenario {}", path.display()))
}

/// Applies the settings `s` gives over `c`.
pub(crate) fn overlay(s: Scenario, c: &mut Config) -> Result<()> {
    if let Some(v) = s.peers {
        c.peers = v;
    }
    if let Some(v) = s.seed {
        c.seed = v;
    }
    if let Some(v) = s.duration_s {
        c.fault_phase = Duration::from_secs(v);
    }
    if let Some(v) = s.recovery_s {
        c.recovery = Duration::from_secs(v);
    }
    if let Some(v) = s.jobs_per_sec {
        c.jobs_per_s = v;
    }
    if let Some(v) = s.appends_per_sec {
        c.appends_per_s = v;
    }
    if let Some(v) = s.shards {
        c.shards = Some(fab_sims::sim::Shards::new(v).map_err(anyhow::Error::msg)?);
    }
    if let Some(v) = s.telemetry_every_ms {
        c.telemetry_every = Duration::from_millis(v);
    }
    if let Some(v) = s.telemetry_stale_ms {
        c.telemetry_stale = Duration::from_millis(v);
    }
    if let Some(v) = s.cloud_only_permille {
        c.cloud_only_permille = v.min(1000);
    }
    if let Some(v) = s.two_replicas_permille {
        c.two_replicas_permille = v.min(1000);
    }
    if let Some(a) = s.arrivals {
        c.arrivals = match a {
            ArrivalsFile::Poisson => Arrivals::Poisson,
            ArrivalsFile::Bursts {
                every_s,
                length_s,
                factor,
            } => {
                if !(factor >= 1.0 && length_s <= every_s) {
                    bail!("arrivals: bursts need factor >= 1 and length_s <= every_s");
                }
                Arrivals::Bursts {
                    every: secs("arrivals.every_s", every_s)?,
                    length: secs("arrivals.length_s", length_s)?,
                    factor,
                }
            }
            ArrivalsFile::Diurnal { period_s } => Arrivals::Diurnal {
                period: secs("arrivals.period_s", period_s)?,
            },
        };
    }
    if let Some(f) = s.faults {
        if let Some(v) = f.loss {
            c.loss = v;
        }
        if let Some(v) = f.duplicate {
            c.duplicate = v;
        }
        if let Some(v) = f.partition {
            c.partition = v;
        }
        if let Some(v) = f.crashes {
            c.crashes = v;
        }
        if let Some(v) = f.clogged {
            c.clogged = v;
        }
        if let Some(v) = f.leaves {
            c.leaves = v;
        }
        if let Some(v) = f.joins {
            c.joins = v;
        }
        if let Some(v) = f.equivocators {
            c.equivocators = v;
        }
        if let Some(v) = f.forgers {
            c.forgers = v;
        }
    }
    if !s.link.is_empty() {
        c.links = s
            .link
            .into_iter()
            .map(|l| LinkProfile {
                name: l.name,
                one_way_us: (l.one_way_us[0], l.one_way_us[1]),
                bytes_per_ms: l.mbit_per_s.saturating_mul(125),
            })
            .collect();
    }
    if !s.profile.is_empty() {
        c.profiles = s
            .profile
            .into_iter()
            .map(|p| {
                let tier = Tier::parse(&p.tier).with_context(|| {
                    format!(
                        "profile {:?}: tier {:?} is not device, edge or cloud",
                        p.name, p.tier
                    )
                })?;
                Ok(Profile {
                    name: p.name,
                    tier,
                    speed_permille: p.speed_permille,
                    workers: p.workers,
                    power_mw: p.power_mw,
                    price_per_s_micros: p.price_per_s_micros,
                    battery_mj: p.battery_mj,
                    cores: p.cores,
                    mem_mib: p.mem_mib,
                    share_permille: p.share_permille,
                    link: p.link,
                    commit_us: p.commit_us,
                })
            })
            .collect::<Result<_>>()?;
    }
    if !s.model.is_empty() {
        c.models = s
            .model
            .into_iter()
            .map(|m| Model {
                digest: *blake3::hash(m.name.as_bytes()).as_bytes(),
                name: m.name,
                reference_latency_us: m.reference_latency_us,
                input_bytes: m.input_bytes,
                share_permille: m.share_permille,
                deadline_us: m.deadline_ms.saturating_mul(1000),
                mem_mib: m.mem_mib,
            })
            .collect();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let mut c = Config::default();
        let s: Scenario = toml::from_str(text)?;
        overlay(s, &mut c)?;
        c.check().map_err(|e| anyhow::anyhow!(e))?;
        Ok(c)
    }

    #[test]
    fn a_scenario_replaces_the_fleet_and_sets_faults_and_arrivals() {
        let c = parse(
            r#"
            peers = 30
            jobs_per_sec = 12.5
            arrivals = { shape = "bursts", every_s = 4, length_s = 0.5, factor = 6 }
            [faults]
            loss = 0.1
            partition = false
            leaves = 2
            [[link]]
            name = "lora"
            one_way_us = [100000, 400000]
            mbit_per_s = 1
            [[profile]]
            name = "sensor"
            tier = "device"
            speed_permille = 50
            workers = 1
            power_mw = 500
            cores = 1
            mem_mib = 512
            share_permille = 1000
            link = "lora"
            [[model]]
            name = "tiny"
            reference_latency_us = 100
            input_bytes = 16
            share_permille = 1000
            deadline_ms = 5000
            "#,
        )
        .unwrap();
        assert_eq!(
            (c.peers, c.jobs_per_s, c.loss, c.partition, c.leaves),
            (30, 12.5, 0.1, false, 2)
        );
        assert!(matches!(c.arrivals, Arrivals::Bursts { factor, .. } if factor == 6.0));
        assert_eq!(c.profiles.len(), 1);
        assert_eq!(c.links[0].bytes_per_ms, 125);
        assert_eq!(c.models[0].deadline_us, 5_000_000);
    }

    #[test]
    fn typos_unknown_tiers_and_dangling_links_are_refused() {
        let e = parse("peer = 3").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        let profile = |tier: &str, link: &str| {
            format!(
                "[[profile]]\nname = \"x\"\ntier = \"{tier}\"\nspeed_permille = 1\nworkers = 1\npower_mw = 1\ncores = 1\nmem_mib = 1\nshare_permille = 1000\nlink = \"{link}\"\n"
            )
        };
        let e = parse(&profile("fog", "lan")).unwrap_err();
        assert!(
            format!("{e:#}").contains("not device, edge or cloud"),
            "{e:#}"
        );
        let e = parse(&profile("edge", "carrier-pigeon")).unwrap_err();
        assert!(format!("{e:#}").contains("no link named"), "{e:#}");
        let e = parse("[faults]\nloss = 1.5").unwrap_err();
        assert!(format!("{e:#}").contains("probability"), "{e:#}");
    }
}
