//! Node configuration: one TOML file, then `FABNODE_*` environment variables, then flags.
//!
//! Every key has a documented default (see `fabnode config show`). The layers are merged as
//! TOML tables and deserialised once, so an error names the key. Unknown keys are refused:
//! a misspelt key silently ignored is a setting that silently does not apply.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The whole node configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub inference: InferenceConfig,
    pub limits: LimitsConfig,
    pub ledger: LedgerConfig,
    pub mesh: MeshSection,
    pub scheduler: SchedulerConfig,
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
}

/// What this node publishes about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// How often telemetry is published while the figures change (at once when the queue
    /// changes markedly; every `stale_ms` / 3 when nothing changes).
    pub every_ms: u64,
    /// Peers' telemetry older than this is not used.
    pub stale_ms: u64,
    /// Differential privacy for the published load figures (load and queue depth): Laplace
    /// noise of scale sensitivity / epsilon. 0 publishes them exactly.
    pub dp_epsilon: f64,
    /// Where the battery is read (Linux `power_supply` class: `type`, `status`, `capacity`).
    pub power_supply_dir: PathBuf,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            every_ms: 2_000,
            stale_ms: 15_000,
            dp_epsilon: 0.0,
            power_supply_dir: PathBuf::from("/sys/class/power_supply"),
        }
    }
}

/// Placement: what this node tells the mesh about itself, and how it chooses where jobs run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `device`, `edge` or `cloud`.
    pub tier: String,
    /// Free-form region name, matched by a job's allowed regions.
    pub region: String,
    /// Labels a job can require, e.g. `gpu`, `camera`.
    pub labels: Vec<String>,
    /// Price of one second of compute, micro-units.
    pub price_per_s_micros: u64,
    /// Power drawn while computing, milliwatts (energy estimates).
    pub power_mw: u64,
    /// Speed relative to the reference machine, permille, for models this node has not yet
    /// run; 0 measures it at start-up (a short fixed workload).
    pub speed_permille: u64,
    /// Scoring weights (integers).
    pub weight_time: u64,
    pub weight_cost: u64,
    pub weight_energy: u64,
    pub weight_cache: u64,
    pub weight_reliability: u64,
    pub weight_battery: u64,
    /// Wait for bids beyond the slowest asked peer's round trip.
    pub bid_window_ms: u64,
    /// Peers asked per job at most.
    pub bids_max: u64,
    /// Awards per job (and replica) at most.
    pub attempts_max: u64,
    /// At this queue depth the node stops bidding.
    pub queue_max: u64,
    /// Below this charge (permille) a node on battery stops bidding.
    pub battery_min_permille: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let w = crate::sched::Weights::default();
        SchedulerConfig {
            tier: "edge".into(),
            region: String::new(),
            labels: Vec::new(),
            price_per_s_micros: 0,
            power_mw: 5_000,
            speed_permille: 0,
            weight_time: w.time,
            weight_cost: w.cost,
            weight_energy: w.energy,
            weight_cache: w.cache,
            weight_reliability: w.reliability,
            weight_battery: w.battery,
            bid_window_ms: 50,
            bids_max: 8,
            attempts_max: 3,
            queue_max: 64,
            battery_min_permille: 200,
        }
    }
}

impl SchedulerConfig {
    pub fn tier(&self) -> crate::sched::Tier {
        crate::sched::Tier::parse(&self.tier).unwrap_or(crate::sched::Tier::Edge)
    }

    pub fn weights(&self) -> crate::sched::Weights {
        crate::sched::Weights {
            time: self.weight_time,
            cost: self.weight_cost,
            energy: self.weight_energy,
            cache: self.weight_cache,
            reliability: self.weight_reliability,
            battery: self.weight_battery,
        }
    }

    /// The auction's tunables from this section.
    pub fn auction(&self) -> crate::sched::AuctionConfig {
        crate::sched::AuctionConfig {
            weights: self.weights(),
            window: std::time::Duration::from_millis(self.bid_window_ms),
            bids_max: self.bids_max as usize,
            attempts_max: self.attempts_max as u32,
            ..Default::default()
        }
    }
}

/// Joining the mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MeshSection {
    /// Start libp2p and replicate ledgers with peers.
    pub enabled: bool,
    /// Multiaddrs to listen on (environment and flags: comma-separated).
    pub listen: Vec<String>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Multiaddrs of peers to dial at start, e.g. `/ip4/10.0.0.5/tcp/4001/p2p/12D3KooW...`.
    pub bootstrap: Vec<String>,
    /// Shards of the network (1 to 4096; every node of a network must use the same count).
    /// With 1, every node hears every node's telemetry and replicates every ledger. With S,
    /// a node belongs to one shard (from a hash of its key) and hears, places jobs among and
    /// replicates the ledgers of that shard's members only, so its traffic stays that of a
    /// few dozen peers however large the fleet. Recommended: 1 up to 64 nodes, then one shard
    /// per 32 nodes (docs/USER_GUIDE.md, "Large fleets").
    pub shards: u64,
}

impl Default for MeshSection {
    fn default() -> Self {
        MeshSection {
            enabled: true,
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".into(),
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
            ],
            mdns: true,
            bootstrap: Vec::new(),
            shards: 1,
        }
    }
}

/// The HTTP/JSON control API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the control API listens on. Loopback by default; a non-loopback address needs
    /// an API token (`fabnode api-token init`). Port 0 picks a free port (written to
    /// `<data dir>/api.addr`).
    pub listen: SocketAddr,
    /// Web origins (`scheme://host[:port]`) allowed to call the API from a browser; requests
    /// with any other `Origin` are refused.
    pub allowed_origins: Vec<String>,
    /// Host names, besides loopback ones, that requests may name in `Host` when no API token
    /// is in force (a defence against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Connections open at once, at most; more wait to be accepted.
    pub connections_max: u64,
    /// Longest a client may take to send a request's headers; also how long a connection may
    /// stay open with no request in flight.
    pub header_timeout_ms: u64,
    /// Longest a client may take to send a request's body.
    pub body_timeout_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish before their connections
    /// are closed.
    pub shutdown_grace_ms: u64,
}

/// Inference workers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Inference threads; each runs one job at a time with one thread of compute.
    pub workers: usize,
    /// Jobs that may wait for a worker before new ones are refused as busy.
    pub queue_depth: usize,
    /// Largest model file accepted.
    pub model_bytes_max: u64,
}

/// Bounds on what one client can ask of the node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest input tensor (raw element bytes).
    pub input_bytes_max: usize,
    /// Largest HTTP request body (JSON text of a tensor is ~3x its raw bytes).
    pub request_bytes_max: usize,
    /// Jobs accepted at once through the API, queued or running; more are refused as busy.
    /// Peers' jobs never take these slots.
    pub jobs_in_flight_max: usize,
    /// Requests from peers (`/fabnode/exec/1`) handled at once, from all peers together;
    /// beyond it a peer is told the node is busy before anything is started.
    pub remote_jobs_max: usize,
    /// Of those, from any one peer.
    pub remote_jobs_per_peer_max: usize,
    /// Deadline given to a job that does not name one.
    pub job_timeout_ms: u64,
}

/// The ledger writer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Most entries committed in one durable write transaction (group commit).
    pub batch_max: usize,
    /// Name of the mesh this node's ledger belongs to; part of every checkpoint's origin line
    /// (`fabnode/<network>/<PeerId>`).
    pub network: String,
}

/// Logging.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `error`, `warn`, `info`, `debug`, `trace`, or directives such as
    /// `info,fab_node=debug`.
    pub level: String,
    pub format: LogFormat,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

pub const DEFAULT_API_PORT: u16 = 7650;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            connections_max: 256,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            shutdown_grace_ms: 20_000,
        }
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        InferenceConfig {
            workers: cores,
            queue_depth: 64,
            model_bytes_max: 256 << 20,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            input_bytes_max: 4 << 20,
            request_bytes_max: 16 << 20,
            jobs_in_flight_max: 256,
            remote_jobs_max: 64,
            remote_jobs_per_peer_max: 32,
            job_timeout_ms: 30_000,
        }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_max: 256,
            network: "local".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Why the configuration is unusable.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}", path = path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {detail}", path = path.display())]
    Syntax { path: PathBuf, detail: String },
    #[error("{origin} sets unknown key `{key}`; known keys: {known}")]
    UnknownKey {
        origin: String,
        key: String,
        known: String,
    },
    #[error("{origin}: `{key}` = {value:?} is not valid: expected {expected}")]
    BadValue {
        origin: String,
        key: String,
        value: String,
        expected: String,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug)]
pub enum Origin {
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "config file {}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(k) => write!(f, "flag --{k}"),
        }
    }
}

/// The `(section, key)` pairs of the config, from its defaults.
pub fn known_keys() -> Vec<(String, String)> {
    let table = toml::Table::try_from(Config::default()).expect("the default config serialises");
    let mut out = Vec::new();
    for (section, value) in table {
        if let toml::Value::Table(t) = value {
            for key in t.keys() {
                out.push((section.clone(), key.clone()));
            }
        }
    }
    out
}

/// The environment variable for `section.key`, e.g. `FABNODE_API_LISTEN`.
pub fn env_name(section: &str, key: &str) -> String {
    format!("FABNODE_{}_{}", section.to_uppercase(), key.to_uppercase())
}

fn default_value(section: &str, key: &str) -> Option<toml::Value> {
    let table = toml::Table::try_from(Config::default()).ok()?;
    table.get(section)?.as_table()?.get(key).cloned()
}

/// Parses a string from the environment or a flag as the type of the key's default.
fn typed_value(
    origin: &Origin,
    section: &str,
    key: &str,
    raw: &str,
) -> Result<toml::Value, ConfigError> {
    let bad = |expected: &str| ConfigError::BadValue {
        origin: origin.to_string(),
        key: format!("{section}.{key}"),
        value: raw.to_owned(),
        expected: expected.to_owned(),
    };
    match default_value(section, key) {
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| bad("an integer")),
        Some(toml::Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| bad("a number")),
        Some(toml::Value::Boolean(_)) => raw
            .trim()
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| bad("true or false")),
        Some(toml::Value::Array(_)) => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        )),
        Some(_) => Ok(toml::Value::String(raw.to_owned())),
        None => Err(ConfigError::UnknownKey {
            origin: origin.to_string(),
            key: format!("{section}.{key}"),
            known: known_keys()
                .iter()
                .map(|(s, k)| format!("{s}.{k}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

impl Config {
    /// Merges the file (if any), the environment, and flag overrides (`section.key`, value),
    /// in increasing precedence, then validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.to_owned(),
                error,
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
            check_keys(&table, &Origin::File(path.to_owned()))?;
        }
        let keys = known_keys();
        let env: Vec<(String, String)> = env.into_iter().collect();
        for (section, key) in &keys {
            let name = env_name(section, key);
            if let Some((_, raw)) = env.iter().find(|(k, _)| *k == name) {
                let v = typed_value(&Origin::Env(name.clone()), section, key, raw)?;
                set(&mut table, section, key, v);
            }
        }
        for (path, raw) in flags {
            let (section, key) = path.split_once('.').unwrap_or(("", path));
            let v = typed_value(&Origin::Flag(path.replace('.', "-")), section, key, raw)?;
            set(&mut table, section, key, v);
        }
        let origin = file.map_or_else(
            || "the merged configuration".to_owned(),
            |p| {
                format!(
                    "configuration (file {} plus environment and flags)",
                    p.display()
                )
            },
        );
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    ConfigError::Invalid(format!("{origin}: {}", e.to_string().trim()))
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Range checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn range(key: &str, v: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::BadValue {
                    origin: "configuration".into(),
                    key: key.into(),
                    value: v.to_string(),
                    expected: format!("an integer from {lo} to {hi}"),
                })
            }
        }
        range("inference.workers", self.inference.workers as u64, 1, 256)?;
        range("api.connections_max", self.api.connections_max, 1, 65_536)?;
        range(
            "api.header_timeout_ms",
            self.api.header_timeout_ms,
            1,
            600_000,
        )?;
        range(
            "api.body_timeout_ms",
            self.api.body_timeout_ms,
            1,
            3_600_000,
        )?;
        range(
            "api.shutdown_grace_ms",
            self.api.shutdown_grace_ms,
            0,
            3_600_000,
        )?;
        for (key, names) in [
            ("api.allowed_origins", &self.api.allowed_origins),
            ("api.allowed_hosts", &self.api.allowed_hosts),
        ] {
            if let Some(bad) = names
                .iter()
                .find(|n| n.is_empty() || n.len() > 253 || n.contains(char::is_whitespace))
            {
                return Err(ConfigError::BadValue {
                    origin: "configuration".into(),
                    key: key.into(),
                    value: bad.clone(),
                    expected: "names of 1 to 253 characters without spaces".into(),
                });
            }
        }
        range(
            "inference.queue_depth",
            self.inference.queue_depth as u64,
            1,
            65_536,
        )?;
        range(
            "inference.model_bytes_max",
            self.inference.model_bytes_max,
            1,
            64 << 30,
        )?;
        range(
            "limits.input_bytes_max",
            self.limits.input_bytes_max as u64,
            1,
            1 << 30,
        )?;
        range(
            "limits.request_bytes_max",
            self.limits.request_bytes_max as u64,
            1024,
            4 << 30,
        )?;
        range(
            "limits.jobs_in_flight_max",
            self.limits.jobs_in_flight_max as u64,
            1,
            1 << 20,
        )?;
        range(
            "limits.remote_jobs_max",
            self.limits.remote_jobs_max as u64,
            1,
            1 << 16,
        )?;
        range(
            "limits.remote_jobs_per_peer_max",
            self.limits.remote_jobs_per_peer_max as u64,
            1,
            self.limits.remote_jobs_max as u64,
        )?;
        range(
            "limits.job_timeout_ms",
            self.limits.job_timeout_ms,
            1,
            24 * 3_600_000,
        )?;
        range("ledger.batch_max", self.ledger.batch_max as u64, 1, 65_536)?;
        range(
            "mesh.shards",
            self.mesh.shards,
            1,
            u64::from(fab_mesh::shard::SHARDS_MAX),
        )?;
        let sc = &self.scheduler;
        if crate::sched::Tier::parse(&sc.tier).is_none() {
            return Err(ConfigError::BadValue {
                origin: "configuration".into(),
                key: "scheduler.tier".into(),
                value: sc.tier.clone(),
                expected: "device, edge or cloud".into(),
            });
        }
        for (key, v) in [
            ("scheduler.weight_time", sc.weight_time),
            ("scheduler.weight_cost", sc.weight_cost),
            ("scheduler.weight_energy", sc.weight_energy),
            ("scheduler.weight_cache", sc.weight_cache),
            ("scheduler.weight_reliability", sc.weight_reliability),
            ("scheduler.weight_battery", sc.weight_battery),
        ] {
            range(key, v, 0, 1_000_000)?;
        }
        range("scheduler.bid_window_ms", sc.bid_window_ms, 1, 60_000)?;
        range("scheduler.bids_max", sc.bids_max, 1, 1_000)?;
        range("scheduler.attempts_max", sc.attempts_max, 1, 100)?;
        range("scheduler.queue_max", sc.queue_max, 1, 1 << 20)?;
        range(
            "scheduler.battery_min_permille",
            sc.battery_min_permille,
            0,
            1000,
        )?;
        range(
            "telemetry.every_ms",
            self.telemetry.every_ms,
            100,
            3_600_000,
        )?;
        range(
            "telemetry.stale_ms",
            self.telemetry.stale_ms,
            100,
            24 * 3_600_000,
        )?;
        let eps = self.telemetry.dp_epsilon;
        if !(eps.is_finite() && (0.0..=1000.0).contains(&eps)) {
            return Err(ConfigError::BadValue {
                origin: "configuration".into(),
                key: "telemetry.dp_epsilon".into(),
                value: eps.to_string(),
                expected: "a number from 0 (off) to 1000".into(),
            });
        }
        range("scheduler.power_mw", sc.power_mw, 0, 100_000_000)?;
        range(
            "scheduler.price_per_s_micros",
            sc.price_per_s_micros,
            0,
            crate::sched::telemetry::PRICE_PER_S_MICROS_MAX,
        )?;
        range("scheduler.speed_permille", sc.speed_permille, 0, 1_000_000)?;
        if sc.region.len() > crate::sched::telemetry::NAME_BYTES_MAX
            || sc.labels.len() > crate::sched::telemetry::LABELS_MAX
            || sc
                .labels
                .iter()
                .any(|l| l.is_empty() || l.len() > crate::sched::telemetry::NAME_BYTES_MAX)
        {
            return Err(ConfigError::BadValue {
                origin: "configuration".into(),
                key: "scheduler.region / scheduler.labels".into(),
                value: format!("{:?} / {:?}", sc.region, sc.labels),
                expected: format!(
                    "names of 1 to {} bytes, at most {} labels",
                    crate::sched::telemetry::NAME_BYTES_MAX,
                    crate::sched::telemetry::LABELS_MAX
                ),
            });
        }
        let net = &self.ledger.network;
        if net.is_empty()
            || net.len() > 64
            || !net
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(ConfigError::BadValue {
                origin: "configuration".into(),
                key: "ledger.network".into(),
                value: net.clone(),
                expected: "1 to 64 letters, digits, '-', '_' or '.'".into(),
            });
        }
        if tracing_filter_ok(&self.log.level).is_err() {
            return Err(ConfigError::BadValue {
                origin: "configuration".into(),
                key: "log.level".into(),
                value: self.log.level.clone(),
                expected: "error, warn, info, debug, trace, or tracing directives like info,fab_node=debug".into(),
            });
        }
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config serialises to TOML")
    }
}

fn tracing_filter_ok(level: &str) -> Result<(), ()> {
    let levels = ["error", "warn", "info", "debug", "trace", "off"];
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !levels.contains(&lvl.to_lowercase().as_str()) {
            return Err(());
        }
    }
    Ok(())
}

fn check_keys(table: &toml::Table, origin: &Origin) -> Result<(), ConfigError> {
    let keys = known_keys();
    let known = || {
        keys.iter()
            .map(|(s, k)| format!("{s}.{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (section, value) in table {
        match value.as_table() {
            Some(t) if keys.iter().any(|(s, _)| s == section) => {
                for key in t.keys() {
                    if !keys.iter().any(|(s, k)| s == section && k == key) {
                        return Err(ConfigError::UnknownKey {
                            origin: origin.to_string(),
                            key: format!("{section}.{key}"),
                            known: known(),
                        });
                    }
                }
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    origin: origin.to_string(),
                    key: section.clone(),
                    known: known(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[api]\nlisten = \"127.0.0.1:1000\"\n[inference]\nworkers = 3\n",
        )
        .unwrap();
        let env = vec![("FABNODE_API_LISTEN".to_owned(), "127.0.0.1:2000".to_owned())];
        let c = Config::load(Some(&file), env.clone(), &[]).unwrap();
        assert_eq!(c.api.listen.port(), 2000);
        assert_eq!(c.inference.workers, 3);
        let flags = vec![("api.listen".to_owned(), "127.0.0.1:3000".to_owned())];
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.api.listen.port(), 3000);
        assert_eq!(Config::load(None, vec![], &[]).unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_key_and_what_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let err = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::load(Some(&file), vec![], &[])
                .unwrap_err()
                .to_string()
        };
        let e = err("[api]\nlisten = \"not an address\"\n");
        assert!(e.contains("api.listen") || e.contains("listen"), "{e}");
        let e = err("[log]\nformat = \"xml\"\n");
        assert!(
            e.contains("format") && e.contains("text") && e.contains("json"),
            "{e}"
        );
        let e = err("[inference]\nworkerz = 2\n");
        assert!(
            e.contains("inference.workerz") && e.contains("inference.workers"),
            "{e}"
        );
        let e = err("[inference]\nworkers = 0\n");
        assert!(
            e.contains("inference.workers") && e.contains("from 1 to 256"),
            "{e}"
        );
        let e = err("[log]\nlevel = \"loud\"\n");
        assert!(e.contains("log.level") && e.contains("debug"), "{e}");
        let e = err("not toml at all [");
        assert!(e.contains("not valid TOML"), "{e}");

        let env = vec![("FABNODE_INFERENCE_WORKERS".to_owned(), "many".to_owned())];
        let e = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(
            e.contains("FABNODE_INFERENCE_WORKERS") && e.contains("an integer"),
            "{e}"
        );
    }

    #[test]
    fn mesh_shards_default_to_one_and_are_checked() {
        assert_eq!(Config::load(None, vec![], &[]).unwrap().mesh.shards, 1);
        let env = vec![("FABNODE_MESH_SHARDS".to_owned(), "32".to_owned())];
        assert_eq!(Config::load(None, env, &[]).unwrap().mesh.shards, 32);
        for bad in ["0", "4097"] {
            let env = vec![("FABNODE_MESH_SHARDS".to_owned(), bad.to_owned())];
            let e = Config::load(None, env, &[]).unwrap_err().to_string();
            assert!(
                e.contains("mesh.shards") && e.contains("from 1 to 4096"),
                "{e}"
            );
        }
    }

    #[test]
    fn scheduler_settings_come_from_env_and_are_checked() {
        let env = vec![
            ("FABNODE_SCHEDULER_TIER".to_owned(), "cloud".to_owned()),
            (
                "FABNODE_SCHEDULER_LABELS".to_owned(),
                "gpu, camera".to_owned(),
            ),
            ("FABNODE_SCHEDULER_WEIGHT_COST".to_owned(), "70".to_owned()),
        ];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.scheduler.tier(), crate::sched::Tier::Cloud);
        assert_eq!(c.scheduler.labels, ["gpu", "camera"]);
        assert_eq!(c.scheduler.weights().cost, 70);
        assert_eq!(c.scheduler.auction().bids_max, 8);
        let env = vec![("FABNODE_SCHEDULER_TIER".to_owned(), "moon".to_owned())];
        let e = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(
            e.contains("scheduler.tier") && e.contains("device, edge or cloud"),
            "{e}"
        );
        let env = vec![("FABNODE_TELEMETRY_DP_EPSILON".to_owned(), "0.5".to_owned())];
        assert_eq!(
            Config::load(None, env, &[]).unwrap().telemetry.dp_epsilon,
            0.5
        );
        let env = vec![("FABNODE_TELEMETRY_DP_EPSILON".to_owned(), "-1".to_owned())];
        let e = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(e.contains("telemetry.dp_epsilon"), "{e}");
        let env = vec![("FABNODE_SCHEDULER_BID_WINDOW_MS".to_owned(), "0".to_owned())];
        let e = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(e.contains("scheduler.bid_window_ms"), "{e}");
    }

    #[test]
    fn show_round_trips() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }
}
