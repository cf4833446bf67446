//! Bacalhau's job spec (reference §3.1–§3.5), field for field, with PascalCase JSON names.
//!
//! The same types are persisted in the Raft log through the binary codec, so they follow its rules:
//! no `skip_serializing_if`, no `flatten`, no untagged enums. Free-form `Params` maps are carried as a
//! JSON string inside binary encodings (see [`Params`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

use crate::states::{JobStateType, State};

/// A free-form parameter map (`SpecConfig.Params`). In JSON/YAML it is a map; in binary encodings
/// (not self-describing) it travels as a JSON string so any value shape survives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params(pub serde_json::Map<String, serde_json::Value>);

impl Params {
    /// Case-insensitive lookup, as Bacalhau's mapstructure decoding.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key).or_else(|| {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
    }
    /// First key present among `keys`.
    pub fn get_any(&self, keys: &[&str]) -> Option<&serde_json::Value> {
        keys.iter().find_map(|k| self.get(k))
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }
    pub fn insert(&mut self, key: &str, v: impl Into<serde_json::Value>) {
        self.0.insert(key.to_string(), v.into());
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Params {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            let json = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&json)
        }
    }
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let v = Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)?;
            Ok(Params(v.unwrap_or_default()))
        } else {
            let s = String::deserialize(d)?;
            serde_json::from_str(&s)
                .map(Params)
                .map_err(D::Error::custom)
        }
    }
}

/// `SpecConfig`: `{Type, Params}` for engines, sources and publishers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SpecConfig {
    #[serde(default, rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub params: Params,
}

impl SpecConfig {
    pub fn new(kind: &str) -> Self {
        SpecConfig {
            kind: kind.to_string(),
            params: Params::default(),
        }
    }
    pub fn with(mut self, key: &str, v: impl Into<serde_json::Value>) -> Self {
        self.params.insert(key, v);
        self
    }
    pub fn is_empty(&self) -> bool {
        self.kind.is_empty()
    }
    /// The type, lower-cased, as Bacalhau compares it.
    pub fn kind_lower(&self) -> String {
        self.kind.to_ascii_lowercase()
    }
}

/// `InputSource`: where an input comes from and where the task sees it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InputSource {
    #[serde(default)]
    pub source: SpecConfig,
    #[serde(default)]
    pub alias: String,
    #[serde(default)]
    pub target: String,
}

/// `ResultPath`: a directory the task writes that is published under `Name`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResultPath {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: String,
}

/// `ResourcesConfig` (JSON `Resources`): quantities as strings, as the user wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourcesConfig {
    #[serde(default, rename = "CPU")]
    pub cpu: String,
    #[serde(default)]
    pub memory: String,
    #[serde(default)]
    pub disk: String,
    #[serde(default, rename = "GPU")]
    pub gpu: String,
}

/// `Network`: `{Type, Domains, Ports}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkConfig {
    #[serde(default, rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// What a network type gives a container, as Bacalhau v1.7+ defines the types: `None` (and an unset
/// type) no network, `Default` and `Bridge` the engine's bridge, `Host` and `Full` the node's own
/// network namespace, `HTTP` a domain-filtered proxy (Caravel runs none). The class names are
/// what an admission policy lists.
pub fn network_class(kind: &str) -> Option<&'static str> {
    match kind.trim().to_ascii_lowercase().as_str() {
        "" | "none" => Some("None"),
        "default" | "bridge" => Some("Bridge"),
        "host" | "full" => Some("Host"),
        "http" => Some("HTTP"),
        _ => None,
    }
}

/// The environment variables that tell a task where its port `name` is, as Bacalhau v1.7+ names
/// them: `BACALHAU_PORT_<NAME>` (inside the container) and `BACALHAU_HOST_PORT_<NAME>` (on the
/// node); the name upper-cased, `-` as `_`.
pub fn port_env_names(name: &str) -> (String, String) {
    let n = name.trim().to_ascii_uppercase().replace('-', "_");
    (
        format!("BACALHAU_PORT_{n}"),
        format!("BACALHAU_HOST_PORT_{n}"),
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortMapping {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "Static")]
    pub static_: u16,
    #[serde(default)]
    pub target: u16,
    #[serde(default)]
    pub host_network: String,
}

/// `Timeouts`, all in seconds. Caravel adds `DisconnectGrace` (seconds a disconnected node keeps its
/// executions before they are replaced; 0 = the orchestrator's default).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TimeoutConfig {
    #[serde(default)]
    pub execution_timeout: i64,
    #[serde(default)]
    pub queue_timeout: i64,
    #[serde(default)]
    pub total_timeout: i64,
}

impl TimeoutConfig {
    /// ExecutionTimeout, falling back to TotalTimeout as Bacalhau does.
    pub fn effective_execution_timeout(&self) -> i64 {
        if self.execution_timeout > 0 {
            self.execution_timeout
        } else {
            self.total_timeout
        }
    }
}

/// `LabelSelectorRequirement`: `{Key, Operator, Values}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LabelSelectorRequirement {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelectorRequirement {
    /// Whether a node with `labels` satisfies this requirement (k8s selector semantics).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.operator.to_ascii_lowercase().as_str() {
            "=" | "==" | "in" => v.is_some_and(|v| self.values.contains(v)),
            "!=" | "notin" => v.is_none_or(|v| !self.values.contains(v)),
            "exists" => v.is_some(),
            "!" | "doesnotexist" => v.is_none(),
            "gt" => v
                .and_then(|v| v.parse::<f64>().ok())
                .zip(self.values.first().and_then(|x| x.parse::<f64>().ok()))
                .is_some_and(|(a, b)| a > b),
            "lt" => v
                .and_then(|v| v.parse::<f64>().ok())
                .zip(self.values.first().and_then(|x| x.parse::<f64>().ok()))
                .is_some_and(|(a, b)| a < b),
            _ => false,
        }
    }
}

/// `Task`: the one unit of work of a job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub engine: SpecConfig,
    #[serde(default)]
    pub publisher: SpecConfig,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub input_sources: Vec<InputSource>,
    #[serde(default)]
    pub result_paths: Vec<ResultPath>,
    #[serde(default, rename = "Resources")]
    pub resources: ResourcesConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
}

/// `Job`: what a user submits, plus the fields the orchestrator maintains.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Job {
    #[serde(default, rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default, rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub count: i32,
    #[serde(default)]
    pub constraints: Vec<LabelSelectorRequirement>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub state: State<JobStateType>,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub create_time: i64,
    #[serde(default)]
    pub modify_time: i64,
}

/// Job types (`Job.Type`).
pub const JOB_TYPES: &[&str] = &["batch", "ops", "daemon", "service"];

/// A job's type (`Job.Type`, carried as its lower-case name so that any stored or submitted text
/// survives; [`Job::job_type`] reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JobType {
    /// `Count` partitions, each run to one success.
    #[default]
    Batch,
    /// Once on every matching node; fails if any fails.
    Ops,
    /// On every matching node, following the fleet, until stopped.
    Daemon,
    /// `Count` copies kept running until stopped.
    Service,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Batch => "batch",
            JobType::Ops => "ops",
            JobType::Daemon => "daemon",
            JobType::Service => "service",
        }
    }
    /// Batch and ops jobs run to completion; daemons and services run until stopped.
    pub fn runs_to_completion(self) -> bool {
        matches!(self, JobType::Batch | JobType::Ops)
    }
    /// Whether `Count` says how many executions run (batch, service) rather than the nodes
    /// (ops, daemon).
    pub fn counts_executions(self) -> bool {
        matches!(self, JobType::Batch | JobType::Service)
    }
}

impl std::fmt::Display for JobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobType {
    type Err = String;
    /// Any case, surrounding space ignored; empty is batch (Bacalhau's default).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "batch" => Ok(JobType::Batch),
            "ops" => Ok(JobType::Ops),
            "daemon" => Ok(JobType::Daemon),
            "service" => Ok(JobType::Service),
            _ => Err(format!("unknown job type {s:?}")),
        }
    }
}

/// Job `Meta` key: how long executions on a DISCONNECTED node are kept before they are replaced
/// (a duration such as `90s`, `10m`, `1h30m`; `0s` replaces them as soon as the node is marked
/// DISCONNECTED). Default [`DEFAULT_DISCONNECT_GRACE_SECS`].
pub const DISCONNECT_GRACE_META: &str = "caravel.io/disconnect-grace";
/// Default grace period of executions on a disconnected node: 10 minutes.
pub const DEFAULT_DISCONNECT_GRACE_SECS: u64 = 600;
/// Longest grace period accepted: 7 days.
pub const MAX_DISCONNECT_GRACE_SECS: u64 = 7 * 24 * 3600;

/// Job `Meta` key: how many failed executions a partition of a batch job may have before the job
/// fails (a whole number, at least 1). Unset: as Bacalhau, no total limit — each node takes a
/// partition at most [`ATTEMPTS_PER_NODE`] times, so the job fails when every node has.
pub const RETRY_ATTEMPTS_META: &str = "caravel.io/retry-attempts";
/// Job `Meta` key: the delay before a failed execution is retried (a duration), doubled for each
/// further failure of the same partition up to [`MAX_RETRY_DELAY_SECS`]. Default: none for batch
/// jobs (as Bacalhau), [`DEFAULT_RESTART_DELAY_SECS`] for services.
pub const RETRY_DELAY_META: &str = "caravel.io/retry-delay";
/// How often a batch partition may fail on one node: as Bacalhau's `PreviousExecutionsNodeRanker`,
/// a node that failed it once is still possible (ranked after the rest), twice is not.
pub const ATTEMPTS_PER_NODE: usize = 2;
/// A service's first restart delay: 1 s, doubled for each further exit within
/// [`RESTART_WINDOW_SECS`].
pub const DEFAULT_RESTART_DELAY_SECS: f64 = 1.0;
/// Longest retry or restart delay: 5 minutes.
pub const MAX_RETRY_DELAY_SECS: f64 = 300.0;
/// Exits of a service copy older than this no longer lengthen its restart delay: 10 minutes.
pub const RESTART_WINDOW_SECS: i64 = 600;

/// Job `Meta` key: how many copies of a service or daemon an update replaces at a time (a whole
/// number; `0` replaces them all at once, stopping the old version's copies first). Default
/// [`DEFAULT_UPDATE_MAX_PARALLEL`]. As Nomad's `update.max_parallel`; Bacalhau's spec has no
/// update block, so it lives in `Meta` as the other scheduling settings.
pub const UPDATE_MAX_PARALLEL_META: &str = "caravel.io/update-max-parallel";
/// Copies of a service or daemon replaced at a time by default: 1.
pub const DEFAULT_UPDATE_MAX_PARALLEL: usize = 1;
/// Job `Meta` key: how long a new version's copy must have been running before it counts as
/// healthy and an old copy stops for it (a duration). Default [`DEFAULT_UPDATE_MIN_HEALTHY_SECS`].
/// As Nomad's `update.min_healthy_time`.
pub const UPDATE_MIN_HEALTHY_META: &str = "caravel.io/update-min-healthy";
/// A new copy counts as healthy after running this long by default: 10 s.
pub const DEFAULT_UPDATE_MIN_HEALTHY_SECS: f64 = 10.0;
/// Longest min-healthy time accepted: 1 hour.
pub const MAX_UPDATE_MIN_HEALTHY_SECS: f64 = 3600.0;
/// Most copies an update may replace at a time.
pub const MAX_UPDATE_MAX_PARALLEL: usize = 10_000;

/// Job `Meta` key: how the scheduler chooses among the nodes with room — `spread` (the default:
/// the least loaded node first, so the load and a job's executions spread out) or `binpack` (the
/// fullest node that still has room first, by its allocated share of CPU or memory, so whole nodes
/// stay free for large jobs; as Nomad's `binpack` scheduler algorithm). Data locality comes first
/// either way.
pub const PLACEMENT_META: &str = "caravel.io/placement";

/// How the scheduler chooses among nodes with room ([`PLACEMENT_META`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    #[default]
    Spread,
    Binpack,
}

impl Placement {
    pub fn parse(v: &str) -> Option<Placement> {
        match v.trim().to_ascii_lowercase().as_str() {
            "spread" => Some(Placement::Spread),
            "binpack" | "bin-pack" => Some(Placement::Binpack),
            _ => None,
        }
    }
}

/// How an update replaces a service's or daemon's copies (read from its `Meta`; validation refuses
/// a bad value, so a bad one here means the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdatePolicy {
    /// New copies that may be not yet healthy at once; 0: all at once, the old stopped first.
    pub max_parallel: usize,
    /// How long a new copy runs before it counts as healthy, in nanoseconds.
    pub min_healthy_ns: i64,
}

/// How the scheduler retries a job's failed executions (read from its `Meta`; validation refuses
/// a bad value, so a bad one here means the default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Failed executions a partition may have before the job fails; `None`: no total limit.
    pub attempts: Option<usize>,
    /// Failures of one partition one node may have before it stops being a candidate for it;
    /// `None`: no limit (services: a copy is restarted wherever it fits).
    pub per_node: Option<usize>,
    /// The first retry's delay, in seconds (doubled for each further failure).
    pub delay_secs: f64,
}

impl RetryPolicy {
    /// The delay before the retry that follows `failures` failures (0 for the first placement).
    pub fn delay_ns(&self, failures: usize) -> i64 {
        if failures == 0 || self.delay_secs <= 0.0 {
            return 0;
        }
        let exp = (failures - 1).min(30) as i32;
        let secs = (self.delay_secs * 2f64.powi(exp)).min(MAX_RETRY_DELAY_SECS);
        (secs * 1e9) as i64
    }
}

/// Parses a duration as Go's `time.ParseDuration` writes them (`90s`, `10m`, `1h30m`, `500ms`, `1.5h`,
/// `250us`) or a bare number of seconds.
pub fn parse_duration_secs(s: &str) -> Result<f64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("is empty".into());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n as f64);
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?} lacks a unit after its last number (use s, m or h)"))?;
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration (examples: 90s, 10m, 1h30m)"
            ));
        }
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (examples: 90s, 10m, 1h30m)"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => {
                return Err(format!(
                    "{s:?} has an unknown unit {u:?} (use ms, s, m or h)"
                ));
            }
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

impl Job {
    /// How long this job's executions on a DISCONNECTED node are kept before they are replaced
    /// ([`DISCONNECT_GRACE_META`]); validation refuses a bad value, so a bad one here means default.
    pub fn disconnect_grace_ns(&self) -> i64 {
        let secs = self
            .meta
            .get(DISCONNECT_GRACE_META)
            .and_then(|v| parse_duration_secs(v).ok())
            .filter(|s| *s >= 0.0 && *s <= MAX_DISCONNECT_GRACE_SECS as f64)
            .unwrap_or(DEFAULT_DISCONNECT_GRACE_SECS as f64);
        (secs * 1e9) as i64
    }

    /// How the scheduler chooses among nodes with room ([`PLACEMENT_META`]).
    pub fn placement(&self) -> Placement {
        self.meta
            .get(PLACEMENT_META)
            .and_then(|v| Placement::parse(v))
            .unwrap_or_default()
    }

    /// How an update replaces this job's copies ([`UPDATE_MAX_PARALLEL_META`],
    /// [`UPDATE_MIN_HEALTHY_META`]).
    pub fn update_policy(&self) -> UpdatePolicy {
        let max_parallel = self
            .meta
            .get(UPDATE_MAX_PARALLEL_META)
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n <= MAX_UPDATE_MAX_PARALLEL)
            .unwrap_or(DEFAULT_UPDATE_MAX_PARALLEL);
        let secs = self
            .meta
            .get(UPDATE_MIN_HEALTHY_META)
            .and_then(|v| parse_duration_secs(v).ok())
            .filter(|s| *s >= 0.0 && *s <= MAX_UPDATE_MIN_HEALTHY_SECS)
            .unwrap_or(DEFAULT_UPDATE_MIN_HEALTHY_SECS);
        UpdatePolicy {
            max_parallel,
            min_healthy_ns: (secs * 1e9) as i64,
        }
    }

    /// How this job's failed executions are retried ([`RETRY_ATTEMPTS_META`], [`RETRY_DELAY_META`]).
    pub fn retry_policy(&self) -> RetryPolicy {
        let service = self.job_type() == JobType::Service;
        let attempts = self
            .meta
            .get(RETRY_ATTEMPTS_META)
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n >= 1);
        let delay_secs = self
            .meta
            .get(RETRY_DELAY_META)
            .and_then(|v| parse_duration_secs(v).ok())
            .filter(|s| *s >= 0.0 && *s <= MAX_RETRY_DELAY_SECS)
            .unwrap_or(if service {
                DEFAULT_RESTART_DELAY_SECS
            } else {
                0.0
            });
        RetryPolicy {
            attempts: if service { None } else { attempts },
            per_node: if service {
                None
            } else {
                Some(ATTEMPTS_PER_NODE)
            },
            delay_secs,
        }
    }

    pub fn task(&self) -> Option<&Task> {
        self.tasks.first()
    }
    pub fn is_batch_like(&self) -> bool {
        self.job_type().runs_to_completion()
    }
    /// The job's type; validation refuses an unknown one, so one here (from a state written by a
    /// newer version) is read as batch.
    pub fn job_type(&self) -> JobType {
        self.kind.parse().unwrap_or_default()
    }
    /// Engine type of the first task (`wasm`, `docker`, …) for tables and metrics.
    pub fn engine(&self) -> String {
        self.task()
            .map(|t| t.engine.kind_lower())
            .unwrap_or_default()
    }

    /// Applies Bacalhau's defaults to a submitted spec: Type batch, Count 1 for batch/service,
    /// Namespace default, Name = ID, task name `main`, a `local` publisher when none is set.
    /// `count_given` says whether the spec wrote `Count` (an explicit 0 stops all executions).
    pub fn normalize(&mut self, count_given: bool) {
        self.kind = match self.kind.parse::<JobType>() {
            Ok(t) => t.as_str().to_string(),
            Err(_) => self.kind.trim().to_ascii_lowercase(),
        };
        if self.namespace.trim().is_empty() {
            self.namespace = crate::DEFAULT_NAMESPACE.into();
        }
        let counts = self.kind.parse().map(JobType::counts_executions);
        if counts == Ok(true) && self.count == 0 && !count_given {
            self.count = 1;
        }
        if counts == Ok(false) && self.count <= 1 {
            self.count = 0;
        }
        if self.name.trim().is_empty() {
            self.name = self.id.clone();
        }
        for t in &mut self.tasks {
            if t.name.trim().is_empty() {
                t.name = "main".into();
            }
            t.engine.kind = t.engine.kind.trim().to_ascii_lowercase();
            for i in &mut t.input_sources {
                i.source.kind = i.source.kind.trim().to_string();
            }
            if t.publisher.kind.trim().is_empty() {
                t.publisher = SpecConfig::new("local");
            }
            t.publisher.kind = t.publisher.kind.trim().to_string();
            let r = &mut t.resources;
            for q in [&mut r.cpu, &mut r.memory, &mut r.disk, &mut r.gpu] {
                *q = q
                    .split_whitespace()
                    .collect::<String>()
                    .to_ascii_lowercase();
            }
            if t.network.kind.is_empty() {
                t.network.kind = "None".into();
            }
        }
    }
}
