//! Node configuration with Bacalhau's key names (PascalCase, dot paths, case-insensitive):
//! defaults → `<data-dir>/config.yaml` (or `-c file.yaml`) → `CARAVEL_<KEY>` env → `-c Key=Value`
//! → flags, then [`Config::validate`]. Every key is listed in [`KEYS`] with its description, which
//! `caravel config list` prints and `deploy/config/example.yaml` documents.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Config {
    #[serde(rename = "API")]
    pub api: ApiConfig,
    pub data_dir: String,
    pub name_provider: String,
    pub labels: BTreeMap<String, String>,
    pub logging: LoggingConfig,
    pub orchestrator: OrchestratorConfig,
    pub compute: ComputeConfig,
    #[serde(rename = "TLS")]
    pub tls: TlsConfig,
    pub job_admission_control: JobAdmissionControl,
    pub job_defaults: JobDefaults,
}

/// Mutual TLS of the QUIC links (Raft between orchestrators, compute sessions): PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TlsConfig {
    #[serde(rename = "CA")]
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// The cluster CA's private key, on orchestrators that sign the certificates of compute nodes
    /// joining with a token (`caravel node token create`); empty = joining by token is off.
    #[serde(rename = "CAKey")]
    pub ca_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ApiConfig {
    pub host: String,
    pub port: u16,
    #[serde(rename = "TLS")]
    pub tls: ApiTlsConfig,
    pub auth: AuthConfig,
    /// Requests served at once; more get 429 with `Retry-After` (0 = no limit).
    pub max_concurrent_requests: u32,
    /// Log WebSockets open at once on this API (0 = no limit).
    pub max_log_streams: u32,
    pub rate_limit: RateLimitConfig,
}

/// A token bucket per client address: `RequestsPerSecond` sustained, `Burst` at once; over it a
/// request gets 429 with `Retry-After`. Health probes are never limited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RateLimitConfig {
    /// 0 = no limit.
    pub requests_per_second: u32,
    pub burst: u32,
    /// Leave loopback clients (this host's scripts and operators) unlimited.
    pub exempt_loopback: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests_per_second: 200,
            burst: 400,
            exempt_loopback: true,
        }
    }
}

/// TLS of the REST API (Bacalhau's `API.TLS`): the server's `CertFile`/`KeyFile`; the client's
/// `UseTLS`, `CAFile` and `Insecure`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ApiTlsConfig {
    pub cert_file: String,
    pub key_file: String,
    #[serde(rename = "CAFile")]
    pub ca_file: String,
    #[serde(rename = "UseTLS")]
    pub use_tls: bool,
    pub insecure: bool,
}

/// Who may use the REST API (Bacalhau v1.7+ `API.Auth`, plus Caravel's `AllowAnonymous`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AuthConfig {
    pub users: Vec<AuthUser>,
    /// What clients without a credential may do from other hosts: "" (nothing: with no users, only
    /// loopback clients are served), "read", or "write" (read and write; never admin).
    pub allow_anonymous: String,
}

/// One API user: a username and password, or an API key; and what they may do.
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AuthUser {
    pub alias: String,
    pub username: String,
    /// Plain text (10-255 characters) or a bcrypt hash (`caravel auth hash-password`).
    pub password: String,
    /// A file holding the password (or its bcrypt hash), instead of `Password`.
    pub password_file: String,
    #[serde(rename = "APIKey")]
    pub api_key: String,
    /// A file holding the API key, instead of `APIKey`.
    #[serde(rename = "APIKeyFile")]
    pub api_key_file: String,
    pub capabilities: Vec<Capability>,
}

impl std::fmt::Debug for AuthUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthUser")
            .field("alias", &self.alias)
            .field("username", &self.username)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// Bacalhau's capability: a list of actions (`read:job`, `write:*`, `*`, Caravel's `admin`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Capability {
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LoggingConfig {
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct OrchestratorConfig {
    pub enabled: bool,
    /// Seconds without a heartbeat before a compute node is marked DISCONNECTED.
    pub disconnect_timeout_secs: u64,
    /// This orchestrator's id in the Raft group (bound into its certificate).
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Initial members, `ID@HOST:PORT` (Raft addresses).
    pub peers: Vec<String>,
    pub raft_host: String,
    pub raft_port: u16,
    pub heartbeat_millis: u64,
    pub election_timeout_millis: u64,
    /// Port (QUIC/UDP) compute nodes dial for their sessions.
    pub compute_port: u16,
    pub node_manager: NodeManagerConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeManagerConfig {
    /// New compute nodes wait as PENDING until `caravel node approve` (Bacalhau's key).
    pub manual_approval: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ComputeConfig {
    pub enabled: bool,
    pub allow_listed_local_paths: Vec<String>,
    /// Data this node holds or is near, preferred by the scheduler for jobs reading it
    /// (`s3://BUCKET[/PREFIX]`, `/PATH`, `http(s)://HOST[/PATH]`, `ipfs://CID`; see
    /// [`crate::locality`]).
    pub data: Vec<String>,
    /// Executions run at once; 0 = one per core.
    pub max_concurrent: u32,
    /// Memory limit of a WASM execution whose job sets none.
    pub default_memory_limit: String,
    /// Heartbeat interval in seconds.
    pub heartbeat_secs: u64,
    /// Base URL of an IPFS HTTP gateway for `ipfs` inputs (`GET {gateway}/ipfs/{CID}`); empty = none.
    #[serde(rename = "IPFSGateway")]
    pub ipfs_gateway: String,
    /// Orchestrators a compute-only node dials, `HOST:PORT` (their `Orchestrator.ComputePort`).
    pub orchestrators: Vec<String>,
    /// Where a compute-only node serves `GET /metrics` (`HOST:PORT`); empty = nowhere (such a node
    /// listens on no port by default).
    pub metrics_addr: String,
    pub auth: ComputeAuthConfig,
    pub env: ComputeEnvConfig,
    /// What this node agrees to run (see `admission`); `JobAdmissionControl` adds Bacalhau's keys.
    pub admission: AdmissionConfig,
    pub docker: DockerConfig,
    pub fetch: FetchConfig,
    #[serde(rename = "S3")]
    pub s3: S3Config,
    /// Execution timeout of a batch or ops job that sets none (0 = none).
    pub default_execution_timeout_secs: u64,
    /// Log streams this node serves at once (0 = no limit).
    pub max_log_streams: u32,
    /// The QUIC congestion controller of a compute-only node's session: `bbr` (default), `cubic`
    /// or `newreno` (`caravel_net::session::Congestion`).
    pub congestion_control: String,
}

/// Allow-lists of a compute node (empty = any). See `crate::admission::AdmissionPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AdmissionConfig {
    pub images: Vec<String>,
    pub wasm_modules: Vec<String>,
    pub required_labels: BTreeMap<String, String>,
    pub namespaces: Vec<String>,
    pub input_types: Vec<String>,
    #[serde(rename = "URLHosts")]
    pub url_hosts: Vec<String>,
    #[serde(rename = "S3Buckets")]
    pub s3_buckets: Vec<String>,
    pub publishers: Vec<String>,
    pub networks: Vec<String>,
    #[serde(rename = "MaxCPU")]
    pub max_cpu: String,
    pub max_memory: String,
    pub max_disk: String,
    #[serde(rename = "MaxGPU")]
    pub max_gpu: String,
}

/// Bacalhau's `JobAdmissionControl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobAdmissionControl {
    pub reject_stateless_jobs: bool,
    pub reject_networked_jobs: bool,
    /// `anywhere` or `local`.
    pub locality: String,
    /// A URL that gets the job (JSON POST) and answers whether this node should run it.
    #[serde(rename = "ProbeHTTP")]
    pub probe_http: String,
    /// A command that gets the job on stdin; exit 0 = run it.
    pub probe_exec: String,
}

impl Default for JobAdmissionControl {
    fn default() -> Self {
        JobAdmissionControl {
            reject_stateless_jobs: false,
            reject_networked_jobs: false,
            locality: "anywhere".into(),
            probe_http: String::new(),
            probe_exec: String::new(),
        }
    }
}

/// Bacalhau's `JobDefaults`: what the orchestrator that takes a submission fills in, per job type,
/// where the job leaves a field unset (so the stored job says what it runs with). Empty = nothing
/// is filled in (Bacalhau's own defaults are 500m CPU and 512Mb memory: set them here to match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDefaults {
    pub batch: BatchJobDefaults,
    pub ops: BatchJobDefaults,
    pub daemon: LongRunningJobDefaults,
    pub service: LongRunningJobDefaults,
}

/// `JobDefaults.Batch` and `JobDefaults.Ops`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct BatchJobDefaults {
    pub priority: i32,
    /// Caravel's: `Meta` `caravel.io/retry-attempts` of a job that sets none (empty = none).
    pub retry_attempts: String,
    /// Caravel's: `Meta` `caravel.io/retry-delay` of a job that sets none (empty = none).
    pub retry_delay: String,
    pub task: BatchTaskDefaults,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct BatchTaskDefaults {
    pub resources: crate::spec::ResourcesConfig,
    pub publisher: PublisherDefault,
    pub timeouts: TimeoutDefaults,
}

/// `JobDefaults.Daemon` and `JobDefaults.Service`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct LongRunningJobDefaults {
    pub priority: i32,
    /// As [`BatchJobDefaults::retry_attempts`].
    pub retry_attempts: String,
    /// As [`BatchJobDefaults::retry_delay`] (a service's first restart delay).
    pub retry_delay: String,
    pub task: LongRunningTaskDefaults,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct LongRunningTaskDefaults {
    pub resources: crate::spec::ResourcesConfig,
}

/// A default publisher: `Type` (empty = none) and its `Params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct PublisherDefault {
    #[serde(rename = "Type")]
    pub kind: String,
    pub params: BTreeMap<String, String>,
}

/// Default task timeouts, as Go durations (`30m`, `1h`; a bare number is seconds); empty = none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TimeoutDefaults {
    #[serde(deserialize_with = "go_duration_text")]
    pub execution_timeout: String,
    #[serde(deserialize_with = "go_duration_text")]
    pub total_timeout: String,
}

/// A Go `time.Duration` as a config file holds one: text (`30m`), or a number of nanoseconds (how
/// Go's own encoders write a Duration).
fn go_duration_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(t) => Ok(t),
        Value::Number(n) => Ok(format!("{n}ns")),
        Value::Null => Ok(String::new()),
        other => Err(serde::de::Error::custom(format!(
            "{other} is not a duration (examples: 30m, 1h)"
        ))),
    }
}

impl JobDefaults {
    /// Refuses a default that no job could carry, naming its key.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: String, message: String| Error::Invalid { key, message };
        let resources = |t: &str, r: &crate::spec::ResourcesConfig| -> Result<(), Error> {
            let key = |f: &str| format!("JobDefaults.{t}.Task.Resources.{f}");
            if !r.cpu.trim().is_empty() {
                crate::quantity::parse_cpu(&r.cpu).map_err(|m| bad(key("CPU"), m))?;
            }
            for (f, v) in [("Memory", &r.memory), ("Disk", &r.disk)] {
                if !v.trim().is_empty() {
                    crate::quantity::parse_bytes(v).map_err(|m| bad(key(f), m))?;
                }
            }
            if !r.gpu.trim().is_empty() && r.gpu.trim().parse::<u64>().is_err() {
                return Err(bad(
                    key("GPU"),
                    format!("{:?} is not a whole number", r.gpu),
                ));
            }
            Ok(())
        };
        let retry = |t: &str, attempts: &str, delay: &str| -> Result<(), Error> {
            if !attempts.trim().is_empty()
                && !attempts
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|n| (1..=1000).contains(&n))
            {
                return Err(bad(
                    format!("JobDefaults.{t}.RetryAttempts"),
                    format!("{attempts:?} is not a number of attempts from 1 to 1000"),
                ));
            }
            if !delay.trim().is_empty() {
                match crate::spec::parse_duration_secs(delay) {
                    Ok(d) if (0.0..=crate::spec::MAX_RETRY_DELAY_SECS).contains(&d) => {}
                    Ok(_) => {
                        return Err(bad(
                            format!("JobDefaults.{t}.RetryDelay"),
                            format!("{delay:?} is longer than 5m"),
                        ));
                    }
                    Err(m) => return Err(bad(format!("JobDefaults.{t}.RetryDelay"), m)),
                }
            }
            Ok(())
        };
        retry("Batch", &self.batch.retry_attempts, &self.batch.retry_delay)?;
        retry("Ops", &self.ops.retry_attempts, &self.ops.retry_delay)?;
        retry(
            "Daemon",
            &self.daemon.retry_attempts,
            &self.daemon.retry_delay,
        )?;
        retry(
            "Service",
            &self.service.retry_attempts,
            &self.service.retry_delay,
        )?;
        for (t, b) in [("Batch", &self.batch), ("Ops", &self.ops)] {
            resources(t, &b.task.resources)?;
            let p = &b.task.publisher;
            if !p.kind.trim().is_empty() {
                let key = format!("JobDefaults.{t}.Task.Publisher");
                if let Some(why) = crate::publishers::unsupported_publisher(p.kind.trim()) {
                    return Err(bad(format!("{key}.Type"), why.to_string()));
                }
                let mut spec = crate::spec::SpecConfig::new(p.kind.trim());
                for (k, v) in &p.params {
                    spec.params.0.insert(k.clone(), Value::String(v.clone()));
                }
                if !crate::publishers::PUBLISHER_TYPES.contains(&spec.kind_lower().trim()) {
                    return Err(bad(
                        format!("{key}.Type"),
                        format!("unknown publisher {:?}; use local, s3 or noop", p.kind),
                    ));
                }
                crate::publishers::Publisher::try_from(&spec).map_err(|errors| {
                    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                    bad(format!("{key}.Params"), text.join("; "))
                })?;
            }
            for (f, v) in [
                ("ExecutionTimeout", &b.task.timeouts.execution_timeout),
                ("TotalTimeout", &b.task.timeouts.total_timeout),
            ] {
                if !v.trim().is_empty() {
                    crate::spec::parse_duration_secs(v)
                        .map_err(|m| bad(format!("JobDefaults.{t}.Task.Timeouts.{f}"), m))?;
                }
            }
        }
        resources("Daemon", &self.daemon.task.resources)?;
        resources("Service", &self.service.task.resources)
    }

    /// Fills what `job` leaves unset with the defaults of its type: `Priority` when 0, each of a
    /// task's resources when empty, its publisher when it names none, its `ExecutionTimeout` and
    /// `TotalTimeout` when 0. Run before the job's own normalisation (which gives a job without a
    /// publisher the `local` one). Values are checked by [`Config::validate`].
    pub fn apply(&self, job: &mut crate::spec::Job) {
        use crate::spec::JobType;
        let empty_publisher = PublisherDefault::default();
        let empty_timeouts = TimeoutDefaults::default();
        let (priority, retry, resources, publisher, timeouts) =
            match job.kind.trim().parse::<JobType>().unwrap_or_default() {
                JobType::Batch => (
                    self.batch.priority,
                    [&self.batch.retry_attempts, &self.batch.retry_delay],
                    &self.batch.task.resources,
                    &self.batch.task.publisher,
                    &self.batch.task.timeouts,
                ),
                JobType::Ops => (
                    self.ops.priority,
                    [&self.ops.retry_attempts, &self.ops.retry_delay],
                    &self.ops.task.resources,
                    &self.ops.task.publisher,
                    &self.ops.task.timeouts,
                ),
                JobType::Daemon => (
                    self.daemon.priority,
                    [&self.daemon.retry_attempts, &self.daemon.retry_delay],
                    &self.daemon.task.resources,
                    &empty_publisher,
                    &empty_timeouts,
                ),
                JobType::Service => (
                    self.service.priority,
                    [&self.service.retry_attempts, &self.service.retry_delay],
                    &self.service.task.resources,
                    &empty_publisher,
                    &empty_timeouts,
                ),
            };
        if job.priority == 0 {
            job.priority = priority;
        }
        let metas = [
            crate::spec::RETRY_ATTEMPTS_META,
            crate::spec::RETRY_DELAY_META,
        ];
        for (key, value) in metas.into_iter().zip(retry) {
            if !value.trim().is_empty() && !job.meta.contains_key(key) {
                job.meta.insert(key.to_string(), value.trim().to_string());
            }
        }
        let secs = |t: &str| {
            crate::spec::parse_duration_secs(t)
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < i64::MAX as f64)
                .map(|s| s.ceil() as i64)
        };
        for t in &mut job.tasks {
            let r = &mut t.resources;
            for (have, default) in [
                (&mut r.cpu, &resources.cpu),
                (&mut r.memory, &resources.memory),
                (&mut r.disk, &resources.disk),
                (&mut r.gpu, &resources.gpu),
            ] {
                if have.trim().is_empty() && !default.trim().is_empty() {
                    *have = default.trim().to_string();
                }
            }
            if t.publisher.kind.trim().is_empty() && !publisher.kind.trim().is_empty() {
                let mut p = crate::spec::SpecConfig::new(publisher.kind.trim());
                for (k, v) in &publisher.params {
                    p.params.0.insert(k.clone(), Value::String(v.clone()));
                }
                t.publisher = p;
            }
            if t.timeouts.execution_timeout == 0
                && let Some(n) = secs(&timeouts.execution_timeout)
            {
                t.timeouts.execution_timeout = n;
            }
            if t.timeouts.total_timeout == 0
                && let Some(n) = secs(&timeouts.total_timeout)
            {
                t.timeouts.total_timeout = n;
            }
        }
    }
}

/// How containers are confined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerConfig {
    /// Processes one container may have (a fork bomb stops there); 0 = no limit.
    pub pids_limit: u64,
    /// Run containers as this user (`uid[:gid]` or a name in the image); empty = the image's.
    pub user: String,
    /// Mount the container's root filesystem read-only (with a writable /tmp).
    pub read_only_rootfs: bool,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            pids_limit: 1024,
            user: String::new(),
            read_only_rootfs: false,
        }
    }
}

/// Outbound fetches of inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct FetchConfig {
    /// Hosts (patterns) or CIDRs that `urlDownload` and IPFS fetches may reach although they are
    /// loopback, link-local, private or multicast addresses; `*` = all. Empty = none.
    pub allow_private: Vec<String>,
}

/// Where this node's S3 credentials may go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct S3Config {
    /// S3 endpoints (URL patterns, e.g. `http://minio.corp:9000`) a job may name; the node signs
    /// requests to them with its credentials. AWS's own endpoints are always allowed; a job naming
    /// any other endpoint is refused.
    pub allowed_endpoints: Vec<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ComputeAuthConfig {
    /// A one-time join token (`caravel node token create`), used once to obtain this node's
    /// certificate when it has none.
    pub token: String,
    /// A file holding the join token, instead of `Token`.
    pub token_file: String,
}

impl std::fmt::Debug for ComputeAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeAuthConfig")
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ComputeEnvConfig {
    /// Names of this node's environment variables a job may read with `env:NAME` values
    /// (Bacalhau's `Compute.Env.AllowList`; `*` and trailing-`*` patterns allowed).
    pub allow_list: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api: ApiConfig {
                host: "0.0.0.0".into(),
                port: 1234,
                tls: ApiTlsConfig::default(),
                auth: AuthConfig::default(),
                max_concurrent_requests: 512,
                max_log_streams: 256,
                rate_limit: RateLimitConfig::default(),
            },
            data_dir: default_data_dir(),
            name_provider: "puuid".into(),
            labels: BTreeMap::new(),
            logging: LoggingConfig {
                level: "info".into(),
            },
            orchestrator: OrchestratorConfig {
                enabled: false,
                disconnect_timeout_secs: 30,
                node_id: String::new(),
                peers: vec![],
                raft_host: "0.0.0.0".into(),
                raft_port: 1235,
                heartbeat_millis: 100,
                election_timeout_millis: 300,
                compute_port: 4222,
                node_manager: NodeManagerConfig::default(),
            },
            compute: ComputeConfig {
                enabled: false,
                allow_listed_local_paths: vec![],
                data: vec![],
                max_concurrent: 0,
                default_memory_limit: "512Mi".into(),
                heartbeat_secs: 5,
                ipfs_gateway: String::new(),
                orchestrators: vec![],
                metrics_addr: String::new(),
                auth: ComputeAuthConfig::default(),
                env: ComputeEnvConfig::default(),
                admission: AdmissionConfig::default(),
                docker: DockerConfig::default(),
                fetch: FetchConfig::default(),
                s3: S3Config::default(),
                default_execution_timeout_secs: 3600,
                max_log_streams: 64,
                congestion_control: "bbr".into(),
            },
            tls: TlsConfig::default(),
            job_admission_control: JobAdmissionControl::default(),
            job_defaults: JobDefaults::default(),
        }
    }
}
impl Default for ApiConfig {
    fn default() -> Self {
        Config::default().api
    }
}
impl Default for LoggingConfig {
    fn default() -> Self {
        Config::default().logging
    }
}
impl Default for OrchestratorConfig {
    fn default() -> Self {
        Config::default().orchestrator
    }
}
impl Default for ComputeConfig {
    fn default() -> Self {
        Config::default().compute
    }
}

/// `~/.caravel`, or `$CARAVEL_DIR`, or Bacalhau's `$BACALHAU_DIR`.
pub fn default_data_dir() -> String {
    for var in ["CARAVEL_DIR", "BACALHAU_DIR"] {
        if let Ok(d) = std::env::var(var)
            && !d.is_empty()
        {
            return d;
        }
    }
    match std::env::var("HOME") {
        Ok(h) if !h.is_empty() => format!("{h}/.caravel"),
        _ => ".caravel".into(),
    }
}

/// Every settable key: (dot path, description).
pub const KEYS: &[(&str, &str)] = &[
    (
        "API.Host",
        "Host the API listens on (clients map 0.0.0.0 to 127.0.0.1)",
    ),
    ("API.Port", "Port of the REST API"),
    (
        "API.TLS.CertFile",
        "PEM certificate the API serves HTTPS with (empty: plain HTTP)",
    ),
    ("API.TLS.KeyFile", "PEM private key of API.TLS.CertFile"),
    (
        "API.TLS.CAFile",
        "Client: PEM CA bundle to verify the API's certificate with (empty: the system's roots)",
    ),
    ("API.TLS.UseTLS", "Client: talk to the API over HTTPS"),
    (
        "API.TLS.Insecure",
        "Client: do not verify the API's certificate (tests only)",
    ),
    (
        "API.Auth.Users",
        "API users (config file only): Alias, Username + Password[File] or APIKey[File], Capabilities [{Actions: [read:job, write:*, admin, ...]}]",
    ),
    (
        "API.Auth.AllowAnonymous",
        "What clients without a credential may do from other hosts: empty (nothing), read, or write",
    ),
    (
        "API.MaxConcurrentRequests",
        "Requests the API serves at once; more get 429 with Retry-After (0: no limit)",
    ),
    (
        "API.MaxLogStreams",
        "Log WebSockets open at once on this API (0: no limit)",
    ),
    (
        "API.RateLimit.RequestsPerSecond",
        "Requests per second each client address may make, sustained; more get 429 with Retry-After (0: no limit)",
    ),
    (
        "API.RateLimit.Burst",
        "Requests each client address may make at once above the sustained rate",
    ),
    (
        "API.RateLimit.ExemptLoopback",
        "Leave loopback clients out of the per-client rate limit",
    ),
    (
        "DataDir",
        "Directory holding the node's state (Raft store, executions, results)",
    ),
    (
        "NameProvider",
        "How a new node names itself: puuid (n-<uuid>) or hostname",
    ),
    ("Labels", "Node labels, key=value pairs separated by commas"),
    (
        "Logging.Level",
        "Log level: error, warn, info, debug, trace",
    ),
    ("Orchestrator.Enabled", "Run the orchestrator"),
    (
        "Orchestrator.DisconnectTimeoutSecs",
        "Seconds without heartbeat before a compute node is DISCONNECTED",
    ),
    (
        "Orchestrator.NodeID",
        "This orchestrator's id in the Raft group (must match the node id in its certificate)",
    ),
    (
        "Orchestrator.Peers",
        "Initial Raft members, ID@HOST:PORT comma separated (include this node to form a group; leave it out to join with caravel cluster add)",
    ),
    (
        "Orchestrator.RaftHost",
        "Address the Raft (QUIC/UDP) listener binds",
    ),
    (
        "Orchestrator.RaftPort",
        "Port of the Raft (QUIC/UDP) listener",
    ),
    (
        "Orchestrator.HeartbeatMillis",
        "Raft heartbeat interval in ms (also the timeout of one replication RPC)",
    ),
    (
        "Orchestrator.ElectionTimeoutMillis",
        "Minimum Raft election timeout in ms (the maximum is twice this and is also the leader lease: a silent leader is replaced after about the maximum)",
    ),
    (
        "Orchestrator.ComputePort",
        "Port of the compute-session (QUIC/UDP) listener compute nodes dial",
    ),
    (
        "Compute.Orchestrators",
        "Orchestrators a compute-only node dials, HOST:PORT comma separated (it moves to the next when one fails)",
    ),
    (
        "Compute.MetricsAddr",
        "HOST:PORT where a compute-only node serves GET /metrics (empty: it listens on no port)",
    ),
    ("TLS.CA", "PEM file of the cluster CA (caravel cert ca)"),
    (
        "TLS.Cert",
        "PEM file of this node's certificate (caravel cert issue)",
    ),
    ("TLS.Key", "PEM file of this node's private key"),
    (
        "TLS.CAKey",
        "Orchestrators: PEM file of the cluster CA's key, to sign certificates of nodes joining by token (empty: joining by token is off)",
    ),
    (
        "Orchestrator.NodeManager.ManualApproval",
        "New compute nodes wait as PENDING until caravel node approve",
    ),
    (
        "Compute.Auth.Token",
        "One-time join token (caravel node token create) a compute node uses once to get its certificate",
    ),
    (
        "Compute.Auth.TokenFile",
        "File holding the join token, instead of Compute.Auth.Token",
    ),
    (
        "Compute.Admission.Images",
        "Docker images this node runs: repo, repo:tag, repo@sha256:..., * wildcards (empty: any)",
    ),
    (
        "Compute.Admission.WasmModules",
        "SHA-256 of the WASM entry modules this node runs (empty: any)",
    ),
    (
        "Compute.Admission.RequiredLabels",
        "Labels a job must carry to run here, key=value (value * = any)",
    ),
    (
        "Compute.Admission.Namespaces",
        "Namespaces whose jobs run here (empty: any)",
    ),
    (
        "Compute.Admission.InputTypes",
        "Input source types allowed (empty: all the node supports)",
    ),
    (
        "Compute.Admission.URLHosts",
        "Hosts urlDownload inputs may name, * wildcards (empty: any)",
    ),
    (
        "Compute.Admission.S3Buckets",
        "S3 buckets of inputs and the s3 publisher (empty: any)",
    ),
    (
        "Compute.Admission.Publishers",
        "Publisher types allowed (empty: all the node supports)",
    ),
    (
        "Compute.Admission.Networks",
        "Network modes allowed (empty: None and Bridge/Default; Host/Full only when listed)",
    ),
    (
        "Compute.Admission.MaxCPU",
        "Most CPU one execution may ask for",
    ),
    (
        "Compute.Admission.MaxMemory",
        "Most memory one execution may ask for",
    ),
    (
        "Compute.Admission.MaxDisk",
        "Most disk one execution may ask for",
    ),
    (
        "Compute.Admission.MaxGPU",
        "Most GPUs one execution may ask for",
    ),
    (
        "JobAdmissionControl.RejectStatelessJobs",
        "Refuse jobs without inputs (Bacalhau's key)",
    ),
    (
        "JobAdmissionControl.RejectNetworkedJobs",
        "Refuse jobs that ask for any network (Bacalhau's key)",
    ),
    (
        "JobAdmissionControl.Locality",
        "anywhere, or local: only jobs whose inputs are on this node (Bacalhau's key)",
    ),
    (
        "JobAdmissionControl.ProbeHTTP",
        "URL that gets each job (JSON POST) and answers {ShouldBid, Reason} (Bacalhau's key)",
    ),
    (
        "JobAdmissionControl.ProbeExec",
        "Command that gets each job on stdin; exit 0 runs it, else its output is the reason (Bacalhau's key)",
    ),
    (
        "Compute.Docker.PidsLimit",
        "Processes one container may have (0: no limit)",
    ),
    (
        "Compute.Docker.User",
        "Run containers as this user (uid[:gid]); empty: the image's user",
    ),
    (
        "Compute.Docker.ReadOnlyRootfs",
        "Mount containers' root filesystems read-only (a writable /tmp)",
    ),
    (
        "Compute.Fetch.AllowPrivate",
        "Hosts or CIDRs URL inputs may reach on loopback/private/link-local addresses (* = all; empty: none)",
    ),
    (
        "Compute.S3.AllowedEndpoints",
        "S3 endpoints (URL patterns) that get this node's credentials; AWS is always allowed",
    ),
    (
        "Compute.DefaultExecutionTimeoutSecs",
        "Execution timeout of batch and ops jobs that set none (0: none)",
    ),
    (
        "Compute.CongestionControl",
        "QUIC congestion controller of a compute-only node's session: bbr (default: keeps goodput on links that lose packets; quinn calls it experimental), cubic or newreno",
    ),
    (
        "Compute.MaxLogStreams",
        "Log streams this node serves at once; more are refused with a message (0: no limit)",
    ),
    (
        "Compute.Env.AllowList",
        "Host environment variables jobs may read as env:NAME values, comma separated (NAME or PREFIX*)",
    ),
    ("Compute.Enabled", "Run the compute node"),
    (
        "Compute.AllowListedLocalPaths",
        "Host paths local inputs may read: /path, /path:ro or /path:rw, comma separated",
    ),
    (
        "Compute.Data",
        "Data this node holds or is near, preferred by the scheduler for jobs reading it: s3://BUCKET[/PREFIX], /PATH, http(s)://HOST[/PATH] or ipfs://CID, comma separated",
    ),
    (
        "Compute.MaxConcurrent",
        "Executions run at once (0 = one per core)",
    ),
    (
        "Compute.DefaultMemoryLimit",
        "Memory limit of a WASM execution whose job sets none (e.g. 512Mi)",
    ),
    (
        "Compute.HeartbeatSecs",
        "Seconds between compute heartbeats",
    ),
    (
        "Compute.IPFSGateway",
        "IPFS HTTP gateway for ipfs inputs, e.g. http://127.0.0.1:8080 (empty = ipfs inputs refused)",
    ),
    (
        "JobDefaults.Batch.RetryAttempts",
        "Caravel's: failed executions a batch job's partition may have (Meta caravel.io/retry-attempts) when the job sets none (empty = none)",
    ),
    (
        "JobDefaults.Batch.RetryDelay",
        "Caravel's: delay before a retry, doubled per failure, up to 5m (Meta caravel.io/retry-delay) when the job sets none (empty = none)",
    ),
    (
        "JobDefaults.Batch.Priority",
        "Priority of a batch job that sets none (0)",
    ),
    (
        "JobDefaults.Batch.Task.Resources.CPU",
        "CPU of a batch job's task that asks none, e.g. 500m (empty = none)",
    ),
    (
        "JobDefaults.Batch.Task.Resources.Memory",
        "Memory of a batch job's task that asks none, e.g. 512Mb (empty = none)",
    ),
    (
        "JobDefaults.Batch.Task.Resources.Disk",
        "Disk of a batch job's task that asks none, e.g. 1Gb (empty = none)",
    ),
    (
        "JobDefaults.Batch.Task.Resources.GPU",
        "GPU of a batch job's task that asks none, e.g. 1 (empty = none)",
    ),
    (
        "JobDefaults.Batch.Task.Publisher.Type",
        "Publisher of a batch job's task that names none: local, s3 or noop (empty = local)",
    ),
    (
        "JobDefaults.Batch.Task.Publisher.Params",
        "Params of that default publisher, key=value pairs separated by commas",
    ),
    (
        "JobDefaults.Batch.Task.Timeouts.ExecutionTimeout",
        "ExecutionTimeout of a batch job's task that sets none, a duration such as 30m (empty = none)",
    ),
    (
        "JobDefaults.Batch.Task.Timeouts.TotalTimeout",
        "TotalTimeout of a batch job's task that sets none, a duration such as 2h (empty = none)",
    ),
    (
        "JobDefaults.Ops.RetryAttempts",
        "Caravel's: failed executions a ops job's partition may have (Meta caravel.io/retry-attempts) when the job sets none (empty = none)",
    ),
    (
        "JobDefaults.Ops.RetryDelay",
        "Caravel's: delay before a retry, doubled per failure, up to 5m (Meta caravel.io/retry-delay) when the job sets none (empty = none)",
    ),
    (
        "JobDefaults.Ops.Priority",
        "Priority of a ops job that sets none (0)",
    ),
    (
        "JobDefaults.Ops.Task.Resources.CPU",
        "CPU of a ops job's task that asks none, e.g. 500m (empty = none)",
    ),
    (
        "JobDefaults.Ops.Task.Resources.Memory",
        "Memory of a ops job's task that asks none, e.g. 512Mb (empty = none)",
    ),
    (
        "JobDefaults.Ops.Task.Resources.Disk",
        "Disk of a ops job's task that asks none, e.g. 1Gb (empty = none)",
    ),
    (
        "JobDefaults.Ops.Task.Resources.GPU",
        "GPU of a ops job's task that asks none, e.g. 1 (empty = none)",
    ),
    (
        "JobDefaults.Ops.Task.Publisher.Type",
        "Publisher of a ops job's task that names none: local, s3 or noop (empty = local)",
    ),
    (
        "JobDefaults.Ops.Task.Publisher.Params",
        "Params of that default publisher, key=value pairs separated by commas",
    ),
    (
        "JobDefaults.Ops.Task.Timeouts.ExecutionTimeout",
        "ExecutionTimeout of a ops job's task that sets none, a duration such as 30m (empty = none)",
    ),
    (
        "JobDefaults.Ops.Task.Timeouts.TotalTimeout",
        "TotalTimeout of a ops job's task that sets none, a duration such as 2h (empty = none)",
    ),
    (
        "JobDefaults.Daemon.RetryAttempts",
        "Caravel's: failed executions a daemon job's partition may have (Meta caravel.io/retry-attempts) when the job sets none (empty = none)",
    ),
    (
        "JobDefaults.Daemon.RetryDelay",
        "Caravel's: delay before a retry, doubled per failure, up to 5m (Meta caravel.io/retry-delay) when the job sets none (empty = none)",
    ),
    (
        "JobDefaults.Daemon.Priority",
        "Priority of a daemon job that sets none (0)",
    ),
    (
        "JobDefaults.Daemon.Task.Resources.CPU",
        "CPU of a daemon job's task that asks none, e.g. 500m (empty = none)",
    ),
    (
        "JobDefaults.Daemon.Task.Resources.Memory",
        "Memory of a daemon job's task that asks none, e.g. 512Mb (empty = none)",
    ),
    (
        "JobDefaults.Daemon.Task.Resources.Disk",
        "Disk of a daemon job's task that asks none, e.g. 1Gb (empty = none)",
    ),
    (
        "JobDefaults.Daemon.Task.Resources.GPU",
        "GPU of a daemon job's task that asks none, e.g. 1 (empty = none)",
    ),
    (
        "JobDefaults.Service.RetryAttempts",
        "Caravel's: failed executions a service job's partition may have (Meta caravel.io/retry-attempts) when the job sets none (empty = none)",
    ),
    (
        "JobDefaults.Service.RetryDelay",
        "Caravel's: delay before a retry, doubled per failure, up to 5m (Meta caravel.io/retry-delay) when the job sets none (empty = none)",
    ),
    (
        "JobDefaults.Service.Priority",
        "Priority of a service job that sets none (0)",
    ),
    (
        "JobDefaults.Service.Task.Resources.CPU",
        "CPU of a service job's task that asks none, e.g. 500m (empty = none)",
    ),
    (
        "JobDefaults.Service.Task.Resources.Memory",
        "Memory of a service job's task that asks none, e.g. 512Mb (empty = none)",
    ),
    (
        "JobDefaults.Service.Task.Resources.Disk",
        "Disk of a service job's task that asks none, e.g. 1Gb (empty = none)",
    ),
    (
        "JobDefaults.Service.Task.Resources.GPU",
        "GPU of a service job's task that asks none, e.g. 1 (empty = none)",
    ),
];

/// What secrets are shown as.
pub const REDACTED: &str = "<redacted>";

/// Resources of the API a capability names (Bacalhau's, plus Caravel's `cluster` and `metrics`).
pub const RESOURCES: &[&str] = &["job", "node", "agent", "cluster", "metrics"];

/// Whether `a` is an action a capability may list.
pub fn is_known_action(a: &str) -> bool {
    match a {
        "*" | "admin" => true,
        _ => a.split_once(':').is_some_and(|(verb, res)| {
            (verb == "read" || verb == "write") && (res == "*" || RESOURCES.contains(&res))
        }),
    }
}

/// What anonymous clients may do: `Some("")` nothing, `Some("read")`, `Some("write")`; `None` when
/// the setting is not understood.
pub fn anonymous_level(v: &str) -> Option<&'static str> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "none" => Some(""),
        "read" | "true" => Some("read"),
        "write" => Some("write"),
        _ => None,
    }
}

/// A plain password as Bacalhau accepts it (10-255 characters), or a bcrypt hash.
pub fn check_password(p: &str) -> Result<(), String> {
    if is_bcrypt_hash(p) || (10..=255).contains(&p.chars().count()) {
        Ok(())
    } else {
        Err(
            "a Password is 10-255 characters (or a bcrypt hash from `caravel auth hash-password`)"
                .into(),
        )
    }
}

pub fn is_bcrypt_hash(p: &str) -> bool {
    p.len() == 60
        && ["$2a$", "$2b$", "$2y$"]
            .iter()
            .any(|pre| p.starts_with(pre))
}

/// An API key as Bacalhau accepts it: 20-255 characters.
pub fn check_api_key(k: &str) -> Result<(), String> {
    if (20..=255).contains(&k.chars().count()) && !k.chars().any(char::is_whitespace) {
        Ok(())
    } else {
        Err("an APIKey is 20-255 characters without spaces".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown config key {key:?}; run `caravel config list` to see the keys")]
    UnknownKey { key: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
}

/// Canonical spelling of a key given in any case.
pub fn canonical_key(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|(k, _)| *k)
        .find(|k| k.eq_ignore_ascii_case(key.trim()))
}

fn key_kind(key: &str) -> &'static str {
    match key {
        "API.Port"
        | "Orchestrator.DisconnectTimeoutSecs"
        | "Compute.MaxConcurrent"
        | "Compute.HeartbeatSecs"
        | "Orchestrator.RaftPort"
        | "Orchestrator.HeartbeatMillis"
        | "Orchestrator.ElectionTimeoutMillis"
        | "Orchestrator.ComputePort"
        | "Compute.Docker.PidsLimit"
        | "Compute.DefaultExecutionTimeoutSecs"
        | "Compute.MaxLogStreams"
        | "API.MaxConcurrentRequests"
        | "API.MaxLogStreams"
        | "API.RateLimit.RequestsPerSecond"
        | "API.RateLimit.Burst"
        | "JobDefaults.Batch.Priority"
        | "JobDefaults.Ops.Priority"
        | "JobDefaults.Daemon.Priority"
        | "JobDefaults.Service.Priority" => "int",
        "Orchestrator.Enabled"
        | "Compute.Enabled"
        | "API.TLS.UseTLS"
        | "API.TLS.Insecure"
        | "Orchestrator.NodeManager.ManualApproval"
        | "JobAdmissionControl.RejectStatelessJobs"
        | "JobAdmissionControl.RejectNetworkedJobs"
        | "Compute.Docker.ReadOnlyRootfs"
        | "API.RateLimit.ExemptLoopback" => "bool",
        "Compute.AllowListedLocalPaths"
        | "Compute.Data"
        | "Orchestrator.Peers"
        | "Compute.Orchestrators"
        | "Compute.Env.AllowList"
        | "Compute.Admission.Images"
        | "Compute.Admission.WasmModules"
        | "Compute.Admission.Namespaces"
        | "Compute.Admission.InputTypes"
        | "Compute.Admission.URLHosts"
        | "Compute.Admission.S3Buckets"
        | "Compute.Admission.Publishers"
        | "Compute.Admission.Networks"
        | "Compute.Fetch.AllowPrivate"
        | "Compute.S3.AllowedEndpoints" => "list",
        "Labels"
        | "Compute.Admission.RequiredLabels"
        | "JobDefaults.Batch.Task.Publisher.Params"
        | "JobDefaults.Ops.Task.Publisher.Params" => "map",
        "API.Auth.Users" => "file-only",
        _ => "string",
    }
}

/// Turns the text of a `Key=Value` into the JSON value for that key.
pub fn parse_value(key: &str, raw: &str) -> Result<Value, Error> {
    let bad = |m: &str| Error::Invalid {
        key: key.to_string(),
        message: m.to_string(),
    };
    Ok(match key_kind(key) {
        "int" => Value::from(
            raw.trim()
                .parse::<u64>()
                .map_err(|_| bad("expected a whole number"))?,
        ),
        "bool" => Value::from(match raw.trim().to_ascii_lowercase().as_str() {
            "" | "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad("expected true or false")),
        }),
        "list" => Value::from(
            raw.split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>(),
        ),
        "map" => {
            let mut m = serde_json::Map::new();
            for kv in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| bad("expected key=value pairs"))?;
                m.insert(k.trim().to_string(), Value::from(v.trim()));
            }
            Value::Object(m)
        }
        "file-only" => {
            return Err(bad(
                "set it in a config file (-c file.yaml): it holds credentials, which never come from the command line",
            ));
        }
        _ => Value::from(raw.to_string()),
    })
}

/// Sets `key` (any case) in a config document.
pub fn set_in(doc: &mut Value, key: &str, raw: &str) -> Result<(), Error> {
    let canon = canonical_key(key).ok_or_else(|| Error::UnknownKey {
        key: key.to_string(),
    })?;
    let value = parse_value(canon, raw)?;
    if !doc.is_object() {
        *doc = Value::Object(Default::default());
    }
    let mut cur = doc;
    let parts: Vec<&str> = canon.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        let obj = cur.as_object_mut().expect("objects all the way down");
        let existing = obj
            .keys()
            .find(|k| k.eq_ignore_ascii_case(p))
            .cloned()
            .unwrap_or_else(|| p.to_string());
        cur = obj
            .entry(existing)
            .or_insert_with(|| Value::Object(Default::default()));
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
    }
    let obj = cur.as_object_mut().expect("object");
    let last = parts[parts.len() - 1];
    let existing = obj
        .keys()
        .find(|k| k.eq_ignore_ascii_case(last))
        .cloned()
        .unwrap_or_else(|| last.to_string());
    obj.insert(existing, value);
    Ok(())
}

fn canonicalize(v: &mut Value, prefix: &str) {
    let Value::Object(map) = v else { return };
    let old = std::mem::take(map);
    for (k, mut val) in old {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let name = KEYS
            .iter()
            .filter_map(|(key, _)| {
                let parts: Vec<&str> = key.split('.').collect();
                let depth = prefix.split('.').filter(|s| !s.is_empty()).count();
                if parts.len() <= depth {
                    return None;
                }
                let pre = parts[..depth].join(".");
                (pre.eq_ignore_ascii_case(prefix) && parts[depth].eq_ignore_ascii_case(&k))
                    .then(|| parts[depth])
            })
            .next()
            .map(String::from)
            .unwrap_or(k);
        if name == "Users" {
            canonicalize_users(&mut val);
        } else if !matches!(name.as_str(), "Labels" | "RequiredLabels" | "Params") {
            canonicalize(
                &mut val,
                &if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                },
            );
        }
        let _ = path;
        map.insert(name, val);
    }
}

/// `API.Auth.Users` entries with their keys in any case, as Bacalhau reads them.
fn canonicalize_users(v: &mut Value) {
    const USER_KEYS: &[&str] = &[
        "Alias",
        "Username",
        "Password",
        "PasswordFile",
        "APIKey",
        "APIKeyFile",
        "Capabilities",
    ];
    let rename = |m: &mut serde_json::Map<String, Value>, names: &[&str]| {
        let old = std::mem::take(m);
        for (k, v) in old {
            let name = names
                .iter()
                .find(|n| n.eq_ignore_ascii_case(&k))
                .map_or(k, |n| n.to_string());
            m.insert(name, v);
        }
    };
    for user in v.as_array_mut().into_iter().flatten() {
        let Some(m) = user.as_object_mut() else {
            continue;
        };
        rename(m, USER_KEYS);
        for cap in m
            .get_mut("Capabilities")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(c) = cap.as_object_mut() {
                rename(c, &["Actions"]);
            }
        }
    }
}

/// Bacalhau keys whose meaning Caravel has under another name: (Bacalhau key, Caravel key, whether
/// the value is a Go duration such as `15s` that Caravel takes in whole seconds).
const BACALHAU_RENAMES: &[(&str, &str, bool)] = &[
    ("Compute.Heartbeat.Interval", "Compute.HeartbeatSecs", true),
    (
        "Orchestrator.NodeManager.DisconnectTimeout",
        "Orchestrator.DisconnectTimeoutSecs",
        true,
    ),
    // Where compute nodes connect: Bacalhau's NATS port, Caravel's QUIC session port (both 4222).
    ("Orchestrator.Port", "Orchestrator.ComputePort", false),
];

/// Bacalhau keys Caravel has no use for but whose purpose it serves another way: what to set.
const BACALHAU_HINTS: &[(&str, &str)] = &[
    (
        "InputSources.Types.IPFS.Endpoint",
        "that is an IPFS API address; Caravel reads IPFS through an HTTP gateway: set Compute.IPFSGateway, e.g. http://127.0.0.1:8080",
    ),
    (
        "Compute.AllocatedCapacity",
        "a Caravel node offers its whole machine; cap what one job may ask with Compute.Admission.MaxCPU, MaxMemory, MaxDisk and MaxGPU",
    ),
    (
        "Orchestrator.Auth.Token",
        "Caravel's compute nodes authenticate with mutual TLS: give each a certificate, or a join token from `caravel node token create`",
    ),
];

/// Reads a config document as Bacalhau's `config.yaml` would be read: its keys that Caravel has
/// under another name are moved there (a Go duration becomes seconds; `nats://` orchestrator
/// addresses become `HOST:PORT`), and every key Caravel does not use is removed and named in the
/// returned warnings, once each, by its dot path. A value that cannot be converted is an error
/// naming the key.
pub fn adopt_bacalhau_keys(doc: &mut Value) -> Result<Vec<String>, Error> {
    let mut warnings = Vec::new();
    for (from, to, duration) in BACALHAU_RENAMES {
        let Some(v) = take_path(doc, from) else {
            continue;
        };
        let raw = if *duration {
            let secs = match &v {
                // Go's encoding of a time.Duration as a number is nanoseconds.
                Value::Number(n) => n.as_f64().map(|s| s / 1e9),
                Value::String(t) => crate::spec::parse_duration_secs(t).ok(),
                _ => None,
            }
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
            .ok_or_else(|| Error::Invalid {
                key: from.to_string(),
                message: format!("{v} is not a duration (examples: 15s, 5m)"),
            })?;
            (secs.ceil() as u64).to_string()
        } else {
            match &v {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            }
        };
        set_in(doc, to, &raw)?;
        warnings.push(format!("config key {from} is read as {to} = {raw}"));
    }
    if let Some(Value::Array(list)) = get_path_mut(doc, "Compute.Orchestrators") {
        for item in list.iter_mut() {
            if let Some(rest) = item.as_str().and_then(|t| t.strip_prefix("nats://")) {
                warnings.push(format!(
                    "Compute.Orchestrators: {item} is a NATS address; Caravel dials {rest} (the orchestrator's Orchestrator.ComputePort)"
                ));
                *item = Value::String(rest.trim_end_matches('/').to_string());
            }
        }
    }
    // The hints of the keys present, by lower-case path (an unknown section is named as a whole).
    let hints: Vec<(String, &str)> = BACALHAU_HINTS
        .iter()
        .filter(|(key, _)| get_path_mut(doc, key).is_some())
        .map(|(key, hint)| (key.to_ascii_lowercase(), *hint))
        .collect();
    let mut unknown = Vec::new();
    drop_unknown(doc, "", &mut unknown);
    for k in unknown {
        let lower = k.to_ascii_lowercase();
        let hint = hints
            .iter()
            .find(|(key, _)| *key == lower || key.starts_with(&format!("{lower}.")))
            .map_or("`caravel config list` shows the keys it reads", |(_, h)| h);
        warnings.push(format!(
            "config key {k} is not used by Caravel and was ignored ({hint})"
        ));
    }
    Ok(warnings)
}

/// The value at a dot path (any case), if there is one.
fn get_path_mut<'a>(doc: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut cur = doc;
    for p in path.split('.') {
        let obj = cur.as_object_mut()?;
        let key = obj.keys().find(|k| k.eq_ignore_ascii_case(p))?.clone();
        cur = obj.get_mut(&key)?;
    }
    Some(cur)
}

/// Removes the value at a dot path (any case), if there is one.
fn take_path(doc: &mut Value, path: &str) -> Option<Value> {
    let mut parts = path.split('.').peekable();
    let mut cur = doc;
    while let Some(p) = parts.next() {
        let obj = cur.as_object_mut()?;
        let key = obj.keys().find(|k| k.eq_ignore_ascii_case(p))?.clone();
        if parts.peek().is_none() {
            return obj.remove(&key);
        }
        cur = obj.get_mut(&key)?;
    }
    None
}

/// Removes every key that is neither a known key nor on the way to one, collecting their paths.
fn drop_unknown(v: &mut Value, prefix: &str, unknown: &mut Vec<String>) {
    let Value::Object(map) = v else { return };
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if canonical_key(&path).is_some() {
            continue;
        }
        let below = format!("{}.", path.to_ascii_lowercase());
        let on_the_way = KEYS
            .iter()
            .any(|(key, _)| key.to_ascii_lowercase().starts_with(&below));
        match map.get_mut(&k) {
            Some(child @ Value::Object(_)) if on_the_way => {
                drop_unknown(child, &path, unknown);
            }
            _ => {
                map.remove(&k);
                unknown.push(path);
            }
        }
    }
}

impl Config {
    /// Builds a config from a document (file contents merged with overrides); keys in any case.
    pub fn from_value(mut doc: Value) -> Result<Config, Error> {
        canonicalize(&mut doc, "");
        let c: Config = serde_path_to_error::deserialize(doc).map_err(|e| Error::Invalid {
            key: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.job_defaults.validate()?;
        if self.api.port == 0 {
            return Err(Error::Invalid {
                key: "API.Port".into(),
                message: "must be 1-65535".into(),
            });
        }
        crate::quantity::parse_bytes(&self.compute.default_memory_limit).map_err(|m| {
            Error::Invalid {
                key: "Compute.DefaultMemoryLimit".into(),
                message: m,
            }
        })?;
        if !matches!(
            self.compute
                .congestion_control
                .trim()
                .to_ascii_lowercase()
                .as_str(),
            "cubic" | "newreno" | "bbr"
        ) {
            return Err(Error::Invalid {
                key: "Compute.CongestionControl".into(),
                message: format!(
                    "{:?} is not a congestion controller: use cubic, newreno or bbr",
                    self.compute.congestion_control
                ),
            });
        }
        let gw = self.compute.ipfs_gateway.trim();
        if !(gw.is_empty() || gw.starts_with("http://") || gw.starts_with("https://")) {
            return Err(Error::Invalid {
                key: "Compute.IPFSGateway".into(),
                message: format!("{gw:?} is not an http:// or https:// URL"),
            });
        }
        if self.compute.data.len() > crate::locality::MAX_DECLARATIONS {
            return Err(Error::Invalid {
                key: "Compute.Data".into(),
                message: format!(
                    "{} entries, more than the limit of {}",
                    self.compute.data.len(),
                    crate::locality::MAX_DECLARATIONS
                ),
            });
        }
        for d in &self.compute.data {
            crate::locality::check_declaration(d).map_err(|message| Error::Invalid {
                key: "Compute.Data".into(),
                message,
            })?;
        }
        for p in &self.compute.allow_listed_local_paths {
            let path = p
                .rsplit_once(':')
                .filter(|(_, m)| *m == "ro" || *m == "rw")
                .map_or(p.as_str(), |(a, _)| a);
            if !path.starts_with('/') {
                return Err(Error::Invalid {
                    key: "Compute.AllowListedLocalPaths".into(),
                    message: format!("{p:?} is not an absolute path"),
                });
            }
        }
        self.validate_auth()?;
        self.admission_policy()
            .validate()
            .map_err(|(key, message)| Error::Invalid {
                key: format!("Compute.Admission.{key}"),
                message,
            })?;
        let t = &self.api.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            return Err(Error::Invalid {
                key: "API.TLS.CertFile".into(),
                message: "set both API.TLS.CertFile and API.TLS.KeyFile, or neither".into(),
            });
        }
        for name in &self.compute.env.allow_list {
            let base = name.strip_suffix('*').unwrap_or(name);
            if base.is_empty() && name != "*"
                || !base.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(Error::Invalid {
                    key: "Compute.Env.AllowList".into(),
                    message: format!(
                        "{name:?} is not an environment variable name or NAME* prefix"
                    ),
                });
            }
        }
        if !["error", "warn", "info", "debug", "trace"]
            .contains(&self.logging.level.to_ascii_lowercase().as_str())
        {
            return Err(Error::Invalid {
                key: "Logging.Level".into(),
                message: format!("unknown level {:?}", self.logging.level),
            });
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), Error> {
        let bad = |m: String| Error::Invalid {
            key: "API.Auth.Users".into(),
            message: m,
        };
        let mut aliases = BTreeSet::new();
        for (i, u) in self.api.auth.users.iter().enumerate() {
            let who = if u.alias.is_empty() {
                format!("user {i}")
            } else {
                format!("user {:?}", u.alias)
            };
            if !u.alias.is_empty() && !aliases.insert(u.alias.as_str()) {
                return Err(bad(format!("{who} appears twice")));
            }
            let has_password = !u.password.is_empty() || !u.password_file.is_empty();
            let has_key = !u.api_key.is_empty() || !u.api_key_file.is_empty();
            if !u.password.is_empty() && !u.password_file.is_empty() {
                return Err(bad(format!(
                    "{who}: set Password or PasswordFile, not both"
                )));
            }
            if !u.api_key.is_empty() && !u.api_key_file.is_empty() {
                return Err(bad(format!("{who}: set APIKey or APIKeyFile, not both")));
            }
            match (u.username.is_empty(), has_password, has_key) {
                (false, true, false) => {
                    if u.username.len() > 100
                        || !u.username.chars().all(|c| c.is_ascii_alphanumeric())
                    {
                        return Err(bad(format!(
                            "{who}: a Username is 1-100 letters and digits"
                        )));
                    }
                    if !u.password.is_empty() {
                        check_password(&u.password).map_err(|m| bad(format!("{who}: {m}")))?;
                    }
                }
                (true, false, true) => {
                    if !u.api_key.is_empty() {
                        check_api_key(&u.api_key).map_err(|m| bad(format!("{who}: {m}")))?;
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "{who} needs exactly one of Username + Password (or PasswordFile) and APIKey (or APIKeyFile)"
                    )));
                }
            }
            let actions: Vec<&String> = u.capabilities.iter().flat_map(|c| &c.actions).collect();
            if actions.is_empty() {
                return Err(bad(format!(
                    "{who} has no capabilities: give Capabilities: [{{Actions: [read:job, ...]}}]"
                )));
            }
            for a in actions {
                if !is_known_action(a) {
                    return Err(bad(format!(
                        "{who}: unknown action {a:?}; use read:job, write:job, read:node, write:node, read:agent, read:cluster, read:metrics, read:*, write:*, * or admin"
                    )));
                }
            }
        }
        if anonymous_level(&self.api.auth.allow_anonymous).is_none() {
            return Err(Error::Invalid {
                key: "API.Auth.AllowAnonymous".into(),
                message: format!(
                    "{:?} is not one of: empty (nobody), read, write",
                    self.api.auth.allow_anonymous
                ),
            });
        }
        Ok(())
    }

    /// The node's admission policy: `Compute.Admission` and `JobAdmissionControl` together.
    pub fn admission_policy(&self) -> crate::admission::AdmissionPolicy {
        let a = &self.compute.admission;
        let j = &self.job_admission_control;
        crate::admission::AdmissionPolicy {
            images: a.images.clone(),
            wasm_modules: a
                .wasm_modules
                .iter()
                .map(|m| m.trim().trim_start_matches("sha256:").to_ascii_lowercase())
                .collect(),
            required_labels: a.required_labels.clone(),
            namespaces: a.namespaces.clone(),
            input_types: a.input_types.clone(),
            url_hosts: a.url_hosts.clone(),
            s3_buckets: a.s3_buckets.clone(),
            publishers: a.publishers.clone(),
            networks: a.networks.clone(),
            max_cpu: a.max_cpu.clone(),
            max_memory: a.max_memory.clone(),
            max_disk: a.max_disk.clone(),
            max_gpu: a.max_gpu.clone(),
            reject_stateless_jobs: j.reject_stateless_jobs,
            reject_networked_jobs: j.reject_networked_jobs,
            locality: j.locality.clone(),
        }
    }

    /// The config with every secret replaced (`agent config`, `config list`, logs).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hide = |s: &mut String| {
            if !s.is_empty() {
                *s = REDACTED.into();
            }
        };
        for u in &mut c.api.auth.users {
            hide(&mut u.password);
            hide(&mut u.api_key);
        }
        hide(&mut c.compute.auth.token);
        c
    }

    /// The effective value of every key, as text, for `config list`.
    pub fn list(&self) -> Vec<(String, String, String)> {
        let doc = serde_json::to_value(self).unwrap_or_default();
        KEYS.iter()
            .map(|(k, d)| {
                let mut cur = &doc;
                for p in k.split('.') {
                    cur = cur.get(p).unwrap_or(&Value::Null);
                }
                let text = match cur {
                    Value::String(s) => s.clone(),
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str().or_else(|| x.get("Alias")?.as_str()))
                        .collect::<Vec<_>>()
                        .join(","),
                    Value::Object(m) => m
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(","),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.to_string(), text, d.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Bacalhau `config.yaml` as Bacalhau v1.7+ writes one: what Caravel has is used (under its
    /// own name where it has another), every other key is named once in a warning, nothing fails.
    const BACALHAU_CONFIG: &str = r#"
NameProvider: puuid
DataDir: /var/lib/bacalhau
API:
  Host: 0.0.0.0
  Port: 1235
  Auth:
    Users:
      - Alias: ci
        APIKey: ci-key-0123456789abcdef
        Capabilities:
          - Actions: ["read:job", "write:job"]
    Methods:
      ClientKey:
        Type: challenge
Labels:
  region: eu
Orchestrator:
  Enabled: true
  Host: 0.0.0.0
  Port: 4333
  NodeManager:
    DisconnectTimeout: 1m30s
    ManualApproval: true
  EvaluationBroker:
    VisibilityTimeout: 60s
Compute:
  Enabled: true
  Orchestrators: ["nats://10.0.0.1:4222"]
  Heartbeat:
    Interval: 15s
    InfoUpdateInterval: 1m
  AllowListedLocalPaths: ["/data:ro"]
JobAdmissionControl:
  RejectStatelessJobs: true
JobDefaults:
  Batch:
    Priority: 5
    Task:
      Resources: {CPU: 500m, Memory: 512Mb}
      Publisher: {Type: s3, Params: {Bucket: results, Key: "jobs/{jobID}/"}}
      Timeouts: {ExecutionTimeout: 30m, TotalTimeout: 2h}
  service:
    task:
      resources: {cpu: "1"}
InputSources:
  Types:
    IPFS:
      Endpoint: /ip4/127.0.0.1/tcp/5001
WebUI:
  Enabled: false
  Listen: 0.0.0.0:8438
Logging:
  Level: debug
  Mode: default
UpdateConfig:
  Interval: 24h
DisableAnalytics: true
"#;

    #[test]
    fn a_bacalhau_config_file_is_mapped_and_every_unused_key_is_named() {
        let mut doc: Value = serde_norway::from_str(BACALHAU_CONFIG).unwrap();
        let warnings = adopt_bacalhau_keys(&mut doc).unwrap();
        let c = Config::from_value(doc).unwrap();
        assert_eq!(c.api.port, 1235);
        assert_eq!(c.api.auth.users.len(), 1);
        assert_eq!(c.labels["region"], "eu");
        assert!(c.orchestrator.enabled && c.compute.enabled);
        assert_eq!(c.orchestrator.disconnect_timeout_secs, 90);
        assert_eq!(c.orchestrator.compute_port, 4333);
        assert!(c.orchestrator.node_manager.manual_approval);
        assert_eq!(c.compute.heartbeat_secs, 15);
        assert_eq!(c.compute.orchestrators, vec!["10.0.0.1:4222".to_string()]);
        assert!(c.job_admission_control.reject_stateless_jobs);
        assert_eq!(c.logging.level, "debug");
        let b = &c.job_defaults.batch;
        assert_eq!(b.priority, 5);
        assert_eq!(
            (
                b.task.resources.cpu.as_str(),
                b.task.resources.memory.as_str()
            ),
            ("500m", "512Mb")
        );
        assert_eq!(b.task.publisher.kind, "s3");
        assert_eq!(b.task.publisher.params["Bucket"], "results");
        assert_eq!(b.task.timeouts.execution_timeout, "30m");
        assert_eq!(c.job_defaults.service.task.resources.cpu, "1");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("InputSources is not used")
                    && w.contains("set Compute.IPFSGateway")),
            "{warnings:#?}"
        );
        let ignored: Vec<&str> = warnings
            .iter()
            .filter_map(|w| w.strip_prefix("config key "))
            .filter_map(|w| w.split_once(" is not used").map(|(k, _)| k))
            .collect();
        assert_eq!(
            ignored,
            [
                "API.Auth.Methods",
                "Compute.Heartbeat",
                "DisableAnalytics",
                "InputSources",
                "Logging.Mode",
                "Orchestrator.EvaluationBroker",
                "Orchestrator.Host",
                "UpdateConfig",
                "WebUI",
            ],
            "{warnings:#?}"
        );
        for mapped in [
            "Compute.Heartbeat.Interval is read as Compute.HeartbeatSecs = 15",
            "Orchestrator.NodeManager.DisconnectTimeout is read as Orchestrator.DisconnectTimeoutSecs = 90",
            "Orchestrator.Port is read as Orchestrator.ComputePort = 4333",
            "nats://10.0.0.1:4222",
        ] {
            assert!(
                warnings.iter().any(|w| w.contains(mapped)),
                "{mapped}: {warnings:#?}"
            );
        }
        // Each is named once, and a bad duration names its key.
        let mut again: Value = serde_norway::from_str(BACALHAU_CONFIG).unwrap();
        let twice = adopt_bacalhau_keys(&mut again).unwrap();
        assert_eq!(twice.len(), warnings.len());
        let mut bad: Value =
            serde_norway::from_str("Compute: {Heartbeat: {Interval: soon}}").unwrap();
        let e = adopt_bacalhau_keys(&mut bad).unwrap_err().to_string();
        assert!(e.contains("Compute.Heartbeat.Interval"), "{e}");
    }

    #[test]
    fn keys_set_in_any_case_land_on_the_canonical_path() {
        let mut doc = Value::Object(Default::default());
        set_in(&mut doc, "api.port", "4321").unwrap();
        set_in(
            &mut doc,
            "compute.allowlistedlocalpaths",
            "/data:ro,/scratch:rw",
        )
        .unwrap();
        set_in(&mut doc, "labels", "region=eu,tier=edge").unwrap();
        let c = Config::from_value(doc).unwrap();
        assert_eq!(c.api.port, 4321);
        assert_eq!(
            c.compute.allow_listed_local_paths,
            vec!["/data:ro", "/scratch:rw"]
        );
        assert_eq!(c.labels["region"], "eu");
        assert!(matches!(
            set_in(&mut Value::Null, "Nope.Key", "1"),
            Err(Error::UnknownKey { .. })
        ));
        assert!(set_in(&mut Value::Null, "API.Port", "http").is_err());
    }

    #[test]
    fn deeply_nested_unknown_keys_are_read_past_without_a_panic() {
        let doc: Value = serde_norway::from_str(
            "api:\n  auth:\n    nope:\n      deeper: {x: 1}\nfoo: {bar: {baz: 1}}\n",
        )
        .unwrap();
        // Keys nested deeper than any known one once panicked the walk; they are read past here
        // (naming each unused key is the start-up's job: a_bacalhau_config_file_is_mapped_…).
        let c = Config::from_value(doc);
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn the_congestion_controller_is_one_of_quinns_three() {
        for (raw, ok) in [
            ("bbr", true),
            ("NewReno", true),
            ("cubic", true),
            ("vegas", false),
        ] {
            let mut doc = Value::Object(Default::default());
            set_in(&mut doc, "compute.congestioncontrol", raw).unwrap();
            match Config::from_value(doc) {
                Ok(c) => {
                    assert!(ok, "{raw} was accepted");
                    assert_eq!(c.compute.congestion_control, raw);
                }
                Err(e) => {
                    assert!(!ok, "{raw}: {e}");
                    let e = e.to_string();
                    assert!(
                        e.contains("Compute.CongestionControl")
                            && e.contains("cubic, newreno or bbr"),
                        "{e}"
                    );
                }
            }
        }
        assert_eq!(Config::default().compute.congestion_control, "bbr");
    }

    #[test]
    fn a_lower_case_file_is_read() {
        let doc: Value =
            serde_norway::from_str("api:\n  port: 9999\ncompute:\n  enabled: true\n").unwrap();
        let c = Config::from_value(doc).unwrap();
        assert_eq!(c.api.port, 9999);
        assert!(c.compute.enabled);
    }
}

#[cfg(test)]
mod example_file {
    use super::{Config, KEYS};
    use serde_json::Value;
    use std::collections::BTreeSet;

    /// Keys whose value is a whole list or map (their contents are not keys).
    fn is_leaf_key(path: &str) -> bool {
        KEYS.iter().any(|(k, _)| *k == path)
    }

    /// Every leaf path of a serialised config: objects are followed, except into a key that is a
    /// leaf itself (Labels).
    fn leaf_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) if !is_leaf_key(prefix) || prefix.is_empty() => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaf_paths(v, &p, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn every_field_of_the_config_struct_is_a_key_and_every_key_a_field() {
        let mut fields = BTreeSet::new();
        leaf_paths(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut fields,
        );
        let keys: BTreeSet<String> = KEYS.iter().map(|(k, _)| k.to_string()).collect();
        let missing_keys: Vec<_> = fields.difference(&keys).collect();
        let missing_fields: Vec<_> = keys.difference(&fields).collect();
        assert!(
            missing_keys.is_empty(),
            "fields of Config without an entry in KEYS: {missing_keys:?}"
        );
        assert!(
            missing_fields.is_empty(),
            "KEYS entries that are no field of Config: {missing_fields:?}"
        );
    }

    /// (dot path, comment) of every key line of the example, by indentation.
    fn documented(text: &str) -> Vec<(String, String)> {
        let mut stack: Vec<(usize, String)> = Vec::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let body = line.trim_start();
            if body.is_empty() || body.starts_with('#') || body.starts_with("- ") {
                continue;
            }
            let indent = line.len() - body.len();
            let Some((key, rest)) = body.split_once(':') else {
                continue;
            };
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            let mut path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            path.push(key);
            let path = path.join(".");
            let comment = rest.split_once(" # ").map_or("", |(_, c)| c).to_string();
            stack.push((indent, key.to_string()));
            out.push((path, comment));
        }
        out
    }

    #[test]
    fn the_example_config_parses_and_documents_every_key_with_its_default() {
        let text = include_str!("../../deploy/config/example.yaml");
        let doc: Value = serde_norway::from_str(text).unwrap();
        let c = Config::from_value(doc).unwrap();
        assert_eq!(c.compute.allow_listed_local_paths, vec!["/srv/data:ro"]);
        let lines = documented(text);
        for (path, _) in &lines {
            let inside_a_leaf = KEYS.iter().any(|(k, _)| path.starts_with(&format!("{k}.")));
            let is_section = KEYS.iter().any(|(k, _)| k.starts_with(&format!("{path}.")));
            assert!(
                inside_a_leaf || is_section || is_leaf_key(path),
                "deploy/config/example.yaml has {path}, which is not a configuration key"
            );
        }
        let defaults = Config::default().list();
        for (key, value, _) in defaults {
            let (_, comment) = lines
                .iter()
                .find(|(p, _)| *p == key)
                .unwrap_or_else(|| panic!("deploy/config/example.yaml does not document {key}"));
            let expected: Vec<String> = match (key.as_str(), value.as_str()) {
                ("DataDir", _) => vec!["~/.caravel".into()],
                (_, "") => vec!["\"\"".into(), "[]".into(), "{}".into()],
                (_, v) => vec![v.to_string()],
            };
            assert!(
                expected
                    .iter()
                    .any(|e| comment.contains(&format!("(default: {e})"))),
                "deploy/config/example.yaml: {key} should say (default: {}) in its comment, says {comment:?}",
                expected[0]
            );
        }
    }

    #[test]
    fn secrets_are_redacted_and_credentials_never_come_from_the_command_line() {
        let text = include_str!("../../deploy/config/example.yaml");
        let mut doc: Value = serde_norway::from_str(text).unwrap();
        doc["API"]["Auth"]["Users"][0]["APIKey"] = "k".repeat(32).into();
        doc["API"]["Auth"]["Users"][0]["APIKeyFile"] = "".into();
        doc["Compute"]["Auth"]["Token"] = "cvjt1.secret".into();
        let c = Config::from_value(doc).unwrap();
        let shown = serde_json::to_string(&c.redacted()).unwrap();
        assert!(
            !shown.contains(&"k".repeat(32)) && !shown.contains("cvjt1.secret"),
            "{shown}"
        );
        assert!(shown.contains(super::REDACTED));
        let e = super::set_in(&mut Value::Null, "api.auth.users", "x").unwrap_err();
        assert!(e.to_string().contains("config file"), "{e}");
    }

    /// Bacalhau's `JobDefaults`: per job type, only what a job leaves unset is filled in, and a
    /// default no job could carry is refused at start-up, naming its key.
    #[test]
    fn job_defaults_fill_only_what_a_job_leaves_unset_per_type() {
        let c = Config::from_value(
            serde_norway::from_str(
                "JobDefaults:\n  Batch:\n    Priority: 3\n    RetryAttempts: '3'\n    RetryDelay: 10s\n    Task:\n      Resources: {CPU: 250m, Memory: 64Mb}\n      Publisher: {Type: noop}\n      Timeouts: {ExecutionTimeout: 5m, TotalTimeout: 600000000000}\n  Service:\n    Task:\n      Resources: {GPU: '1'}\n",
            )
            .unwrap(),
        )
        .unwrap();
        let d = &c.job_defaults;
        let job = |yaml: &str| {
            crate::parse::job_from_value_with(
                serde_norway::from_str(yaml).unwrap(),
                crate::parse::Mode::Server,
                d,
            )
            .unwrap()
            .job
        };
        let bare = "Tasks: [{Engine: {Type: docker, Params: {Image: busybox}}}]\n";
        let j = job(&format!("Name: a\n{bare}"));
        let t = &j.tasks[0];
        assert_eq!(j.priority, 3);
        assert_eq!(
            (t.resources.cpu.as_str(), t.resources.memory.as_str()),
            ("250m", "64mb")
        );
        assert_eq!(t.resources.gpu, "");
        assert_eq!(t.publisher.kind, "noop");
        assert_eq!(
            (t.timeouts.execution_timeout, t.timeouts.total_timeout),
            (300, 600)
        );
        assert_eq!(j.meta[crate::spec::RETRY_ATTEMPTS_META], "3");
        assert_eq!(j.meta[crate::spec::RETRY_DELAY_META], "10s");
        assert_eq!(j.retry_policy().attempts, Some(3));

        let j = job(
            "Name: b\nPriority: 7\nMeta: {caravel.io/retry-attempts: '1'}\nTasks: [{Engine: {Type: docker, Params: {Image: busybox}}, Resources: {CPU: '2'}, Publisher: {Type: local}, Timeouts: {ExecutionTimeout: 10}}]\n",
        );
        let t = &j.tasks[0];
        assert_eq!(j.priority, 7);
        assert_eq!(
            (t.resources.cpu.as_str(), t.resources.memory.as_str()),
            ("2", "64mb")
        );
        assert_eq!(t.publisher.kind, "local");
        assert_eq!(
            (t.timeouts.execution_timeout, t.timeouts.total_timeout),
            (10, 600)
        );
        assert_eq!(
            j.meta[crate::spec::RETRY_ATTEMPTS_META],
            "1",
            "the job's own wins"
        );

        let j = job(&format!("Name: s\nType: service\n{bare}"));
        let t = &j.tasks[0];
        assert_eq!(
            (
                j.priority,
                t.resources.gpu.as_str(),
                t.resources.cpu.as_str()
            ),
            (0, "1", "")
        );
        assert_eq!(
            t.publisher.kind, "local",
            "no default publisher for services"
        );
        assert_eq!(t.timeouts.execution_timeout, 0);
        let j = job(&format!("Name: o\nType: ops\n{bare}"));
        assert_eq!(
            j.tasks[0].resources,
            crate::spec::ResourcesConfig::default()
        );

        for (yaml, key) in [
            (
                "JobDefaults: {Batch: {Task: {Resources: {CPU: lots}}}}",
                "JobDefaults.Batch.Task.Resources.CPU",
            ),
            (
                "JobDefaults: {Daemon: {Task: {Resources: {Memory: 12 parsecs}}}}",
                "JobDefaults.Daemon.Task.Resources.Memory",
            ),
            (
                "JobDefaults: {Ops: {Task: {Publisher: {Type: ipfs}}}}",
                "JobDefaults.Ops.Task.Publisher.Type",
            ),
            (
                "JobDefaults: {Batch: {Task: {Publisher: {Type: s3}}}}",
                "JobDefaults.Batch.Task.Publisher.Params",
            ),
            (
                "JobDefaults: {Batch: {Task: {Publisher: {Type: carrier-pigeon}}}}",
                "JobDefaults.Batch.Task.Publisher.Type",
            ),
            (
                "JobDefaults: {Batch: {Task: {Timeouts: {TotalTimeout: soon}}}}",
                "JobDefaults.Batch.Task.Timeouts.TotalTimeout",
            ),
            (
                "JobDefaults: {Ops: {RetryAttempts: '0'}}",
                "JobDefaults.Ops.RetryAttempts",
            ),
            (
                "JobDefaults: {Service: {RetryDelay: 1h}}",
                "JobDefaults.Service.RetryDelay",
            ),
        ] {
            let e = Config::from_value(serde_norway::from_str(yaml).unwrap()).unwrap_err();
            assert!(e.to_string().contains(key), "{yaml}: {e}");
        }
        let mut doc = Value::Object(Default::default());
        super::set_in(&mut doc, "jobdefaults.batch.task.resources.cpu", "750m").unwrap();
        super::set_in(
            &mut doc,
            "JobDefaults.Batch.Task.Publisher.Params",
            "Bucket=b,Key=k",
        )
        .unwrap();
        let c = Config::from_value(doc).unwrap();
        assert_eq!(c.job_defaults.batch.task.resources.cpu, "750m");
        assert_eq!(c.job_defaults.batch.task.publisher.params["Key"], "k");
    }

    #[test]
    fn users_are_checked_as_bacalhau_checks_them() {
        let users = |u: Value| {
            let doc = serde_json::json!({"api": {"auth": {"users": [u]}}});
            Config::from_value(doc)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        // Keys in any case, as Bacalhau reads them.
        users(serde_json::json!({"alias": "a", "apikey": "k".repeat(20),
            "capabilities": [{"actions": ["read:job"]}]}))
        .unwrap();
        let e = users(serde_json::json!({"Alias": "a", "APIKey": "short",
            "Capabilities": [{"Actions": ["read:job"]}]}))
        .unwrap_err();
        assert!(e.contains("20-255"), "{e}");
        let e = users(
            serde_json::json!({"Alias": "a", "Username": "u", "Password": "p".repeat(12),
            "APIKey": "k".repeat(20), "Capabilities": [{"Actions": ["*"]}]}),
        )
        .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = users(serde_json::json!({"Alias": "a", "APIKey": "k".repeat(20)})).unwrap_err();
        assert!(e.contains("no capabilities"), "{e}");
        let e = users(serde_json::json!({"Alias": "a", "APIKey": "k".repeat(20),
            "Capabilities": [{"Actions": ["root"]}]}))
        .unwrap_err();
        assert!(e.contains("unknown action"), "{e}");
        let e = Config::from_value(serde_json::json!({"API": {"Auth": {"AllowAnonymous": "all"}}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AllowAnonymous"), "{e}");
    }
}
