//! The `Executor` seam: what an engine (wasm, docker) is given to run one execution, and
//! what it answers. Inputs are already prepared on the host ([`crate::inputs`]); the executor only
//! maps them into the task's view, runs it, and reports its exit code or why it could not finish.

use std::collections::BTreeMap;
use std::path::PathBuf;

use caravel_model::quantity::format_bytes;
use caravel_model::spec::Task;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// An input the node has fetched: a host file or directory the task sees at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedInput {
    /// Host path of the file or directory.
    pub host_path: PathBuf,
    /// Absolute guest path (`InputSource.Target`).
    pub target: String,
    /// Whether the task may only read it (everything but `local` inputs with `ReadWrite` on an `:rw`
    /// allow-listed path).
    pub read_only: bool,
}

/// A writable result directory: a `ResultPath` `Name` backed by `host_dir`, seen by the task at
/// `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultDir {
    pub name: String,
    pub host_dir: PathBuf,
    pub guest_path: String,
}

/// Everything an executor needs to run one execution.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub execution_id: String,
    pub job_id: String,
    pub task: Task,
    /// Prepared inputs (read-only unless stated).
    pub inputs: Vec<PreparedInput>,
    /// One writable directory per `ResultPath`.
    pub results: Vec<ResultDir>,
    /// Where the task's stdout and stderr go (capped at `max_output_bytes` each).
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// Seconds before the run is stopped; 0 = no limit.
    pub timeout_secs: u64,
    /// Bytes of memory the task may use.
    pub memory_limit: u64,
    /// Bytes kept of each of stdout and stderr; the rest is dropped.
    pub max_output_bytes: u64,
    /// The task's environment (see [`task_env`]).
    pub env: BTreeMap<String, String>,
    /// The task's arguments, without argv\[0\] (see [`task_args`]).
    pub args: Vec<String>,
    /// A private scratch directory of this execution (the executor may stage files there).
    pub scratch_dir: PathBuf,
}

/// How a run ended when the task itself ran to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub exit_code: i32,
    /// Whether stdout / stderr hit the output cap and lost bytes.
    pub stdout_capped: bool,
    pub stderr_capped: bool,
}

/// Why an executor could not run a task to its end. The `Display` texts are what users see in
/// `job describe`, so they say what happened in plain words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("engine type {0:?} is not supported by this executor")]
    UnsupportedEngine(String),
    #[error(
        "image {image:?} is not on this node and cannot be pulled: {reason}; load it with docker load or docker import"
    )]
    ImageUnavailable { image: String, reason: String },
    #[error(
        "network type {0:?} is not supported by the docker executor of this node (supported: None, Default/Bridge, Host/Full); HTTP domain filtering needs a proxy Caravel does not run"
    )]
    NetworkUnsupported(String),
    #[error("the task asks for {requested} GPU(s) but this node has {available}")]
    NotEnoughGpus { requested: u64, available: u64 },
    #[error("docker engine error while {action}: {reason}")]
    Engine { action: String, reason: String },
    #[error(
        "wasm job has no EntryModule: set Engine.Params.EntryModule to the Target of the input that holds the module"
    )]
    NoEntryModule,
    #[error("module not found at {0}: no input has that Target")]
    ModuleNotFound(String),
    #[error("cannot load the module at {target}: {reason}")]
    InvalidModule { target: String, reason: String },
    #[error("entry point `{0}` not exported by the module")]
    EntryPointNotExported(String),
    #[error("entry point `{name}` has the wrong type: {reason}")]
    EntryPointSignature { name: String, reason: String },
    #[error("cannot link the module: {0}")]
    Link(String),
    #[error("invalid job parameters: {0}")]
    BadParams(String),
    #[error("trap: {0}")]
    Trap(String),
    #[error("execution timed out after {0} s")]
    Timeout(u64),
    #[error("memory limit of {} exceeded", format_bytes(*.0))]
    MemoryLimit(u64),
    #[error(
        "disk limit of {} exceeded: the task wrote {} to its result paths; raise Resources.Disk or write less",
        format_bytes(*.limit),
        format_bytes(*.used)
    )]
    DiskLimit { limit: u64, used: u64 },
    #[error("execution cancelled")]
    Cancelled,
    #[error("cannot set up the task's files: {0}")]
    Setup(String),
    #[error("internal executor error: {0}")]
    Internal(String),
}

/// An engine that runs tasks. Object safe: hold it as `Arc<dyn Executor>`.
pub trait Executor: Send + Sync {
    /// Engine names this executor runs (`Engine.Type`, lower case).
    fn engines(&self) -> Vec<String>;

    /// Runs one task to its end, or until `cancel` fires (then [`ExecError::Cancelled`]).
    fn run(
        &self,
        req: RunRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RunResult, ExecError>>;
}

/// What Bacalhau tells every task about itself (reference §3.8): the job's id, name, namespace and
/// type, the execution and node ids, the partition and the number of partitions.
pub fn system_env(
    job: &caravel_model::spec::Job,
    execution: &caravel_model::execution::Execution,
    node_id: &str,
) -> BTreeMap<String, String> {
    let job_id = if execution.job_id.is_empty() {
        job.id.as_str()
    } else {
        execution.job_id.as_str()
    };
    // Ops and daemon jobs run once per node: each is its own single partition.
    let count = if job.job_type().counts_executions() {
        job.count.max(1)
    } else {
        1
    };
    [
        ("BACALHAU_JOB_ID", job_id.to_string()),
        ("BACALHAU_JOB_NAME", job.name.clone()),
        ("BACALHAU_JOB_NAMESPACE", job.namespace.clone()),
        ("BACALHAU_JOB_TYPE", job.job_type().to_string()),
        ("BACALHAU_EXECUTION_ID", execution.id.clone()),
        ("BACALHAU_NODE_ID", node_id.to_string()),
        (
            "BACALHAU_PARTITION_INDEX",
            execution.partition_index.to_string(),
        ),
        ("BACALHAU_PARTITION_COUNT", count.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The ports of a task's network, as environment variables (Bacalhau v1.7+): for each port,
/// `BACALHAU_HOST_PORT_<NAME>` is the node's port (its `Static` one, else a free one the node
/// picks) and `BACALHAU_PORT_<NAME>` the port inside the container (its `Target`, else the host
/// port; with `Host` networking the same as the host port). The Docker executor maps them.
pub fn port_env(
    network: &caravel_model::spec::NetworkConfig,
) -> Result<BTreeMap<String, String>, String> {
    let host_net = caravel_model::spec::network_class(&network.kind) == Some("Host");
    let mut env = BTreeMap::new();
    for p in &network.ports {
        let ip: std::net::IpAddr = if p.host_network.is_empty() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            p.host_network.parse().map_err(|_| {
                format!(
                    "port {}: HostNetwork {:?} is not an IP address",
                    p.name, p.host_network
                )
            })?
        };
        let host = if p.static_ != 0 {
            p.static_
        } else {
            std::net::TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("port {}: no free port on {ip}: {e}", p.name))?
        };
        let inside = if host_net || p.target == 0 {
            host
        } else {
            p.target
        };
        let (port_var, host_var) = caravel_model::spec::port_env_names(&p.name);
        env.insert(port_var, inside.to_string());
        env.insert(host_var, host.to_string());
    }
    Ok(env)
}

/// The task's environment: its `Env`, then `Engine.Params.EnvironmentVariables` (a map or a list of
/// `K=V`), then the [`system_env`] (which nothing may override; at least `BACALHAU_EXECUTION_ID` and
/// `BACALHAU_JOB_ID`).
pub fn task_env(
    task: &Task,
    execution_id: &str,
    job_id: &str,
    system: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = task.env.clone();
    // Validated at submit; here a bad entry is left out rather than failing the run.
    if let Ok(vars) = caravel_model::params::environment_variables(&task.engine.params) {
        env.extend(vars);
    }
    env.insert("BACALHAU_EXECUTION_ID".into(), execution_id.to_string());
    env.insert("BACALHAU_JOB_ID".into(), job_id.to_string());
    env.extend(system.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Resolves `env:NAME` values from the node's own environment, as Bacalhau does (v1.7+), so a
/// secret stays on the node and out of the job spec. Only names the node's owner allows
/// (`Compute.Env.AllowList`: exact names, or `PREFIX*`) are read; any other `env:` value fails the
/// execution with the reason, as does an allowed variable that is not set.
pub fn resolve_host_env(
    mut env: BTreeMap<String, String>,
    allow_list: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let allowed = |name: &str| {
        allow_list.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    };
    for (key, value) in env.iter_mut() {
        let Some(name) = value.strip_prefix("env:") else {
            continue;
        };
        let name = name.trim().to_string();
        if !allowed(&name) {
            return Err(format!(
                "env {key}=env:{name}: this node does not let jobs read its variable {name} (its owner lists allowed names in Compute.Env.AllowList)"
            ));
        }
        *value = lookup(&name).ok_or_else(|| {
            format!("env {key}=env:{name}: the variable {name} is not set on this node")
        })?;
    }
    Ok(env)
}

/// The task's arguments (`Engine.Params.Parameters`), without argv\[0\].
pub fn task_args(task: &Task) -> Result<Vec<String>, ExecError> {
    caravel_model::params::words(&task.engine.params, &["Parameters"])
        .map_err(|e| ExecError::BadParams(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravel_model::spec::SpecConfig;

    #[test]
    fn env_values_read_only_allowed_host_variables() {
        let env: BTreeMap<String, String> = [
            ("PLAIN".to_string(), "x".to_string()),
            ("TOKEN".to_string(), "env:SERVICE_TOKEN".to_string()),
            ("REGION".to_string(), "env:AWS_REGION".to_string()),
        ]
        .into();
        let host = |n: &str| match n {
            "SERVICE_TOKEN" => Some("s3cr3t".to_string()),
            "AWS_REGION" => Some("eu-west-1".to_string()),
            _ => None,
        };
        let allow = vec!["SERVICE_*".to_string(), "AWS_REGION".to_string()];
        let out = resolve_host_env(env.clone(), &allow, &host).unwrap();
        assert_eq!(out["TOKEN"], "s3cr3t");
        assert_eq!(out["REGION"], "eu-west-1");
        assert_eq!(out["PLAIN"], "x");
        let e = resolve_host_env(env.clone(), &["AWS_REGION".into()], &host).unwrap_err();
        assert!(
            e.contains("SERVICE_TOKEN") && e.contains("Compute.Env.AllowList"),
            "{e}"
        );
        let e = resolve_host_env(
            [("A".to_string(), "env:MISSING".to_string())].into(),
            &["*".into()],
            &host,
        )
        .unwrap_err();
        assert!(e.contains("not set"), "{e}");
    }

    #[test]
    fn env_merges_task_env_params_and_ids() {
        let mut task = Task {
            engine: SpecConfig::new("wasm")
                .with("EnvironmentVariables", serde_json::json!(["A=1", "B=x=y"])),
            ..Default::default()
        };
        task.env.insert("A".into(), "0".into());
        task.env.insert("BACALHAU_JOB_ID".into(), "spoof".into());
        let env = task_env(&task, "e-1", "j-1", &BTreeMap::new());
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["BACALHAU_JOB_ID"], "j-1");
        assert_eq!(env["BACALHAU_EXECUTION_ID"], "e-1");
        let task = Task {
            engine: SpecConfig::new("wasm").with(
                "EnvironmentVariables",
                serde_json::json!({"K": "v", "N": 3}),
            ),
            ..Default::default()
        };
        let env = task_env(&task, "e", "j", &BTreeMap::new());
        assert_eq!((env["K"].as_str(), env["N"].as_str()), ("v", "3"));
    }

    #[test]
    fn args_must_be_a_list() {
        let task = Task {
            engine: SpecConfig::new("wasm").with("Parameters", serde_json::json!(["a", 2])),
            ..Default::default()
        };
        assert_eq!(task_args(&task).unwrap(), vec!["a", "2"]);
        let task = Task {
            engine: SpecConfig::new("wasm").with("Parameters", "a b"),
            ..Default::default()
        };
        assert!(
            task_args(&task)
                .unwrap_err()
                .to_string()
                .contains("list of strings")
        );
    }

    #[test]
    fn error_texts_are_plain() {
        assert_eq!(
            ExecError::MemoryLimit(64 << 20).to_string(),
            "memory limit of 64.0 MiB exceeded"
        );
        assert_eq!(
            ExecError::Timeout(2).to_string(),
            "execution timed out after 2 s"
        );
        assert_eq!(
            ExecError::EntryPointNotExported("foo".into()).to_string(),
            "entry point `foo` not exported by the module"
        );
    }
}
