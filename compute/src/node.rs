//! The compute node runtime: takes commands from an orchestrator session ([`ToCompute`]), runs
//! executions through an [`Executor`], and reports state changes, logs and results
//! ([`ToOrchestrator`]).
//!
//! `ComputeNode` is cheap to clone (all clones share one node). [`ComputeNode::run`] serves one
//! session; executions keep running when a session ends, and a later `run` with new channels sends
//! `Hello` and replays the reports not yet acknowledged. Only `shutdown` stops executions (they are
//! reported Failed, as Bacalhau fails executions interrupted by a node restart).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use caravel_model::execution::{ExecutionUpdate, Resources, RunOutput};
use caravel_model::history::topic;
use caravel_model::node::{BuildVersionInfo, ComputeNodeInfo, NodeInfo};
use caravel_model::spec::{Job, SpecConfig, Task};
use caravel_model::states::ExecutionDesiredState;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use caravel_model::{Execution, ExecutionStateType};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity;
use crate::docker::{DockerExecutor, DockerOptions};
use crate::executor::{ExecError, Executor, ResultDir, RunRequest, task_args, task_env};
use crate::inputs::{InputError, InputOptions, InputPreparer, check_target};
use crate::metrics::ComputeMetrics;
use crate::outbox::Outbox;
use crate::publish::{ExecutionPaths, PublishContext, SUPPORTED_PUBLISHERS, run_output};
use crate::s3::S3Settings;
use crate::wasm::WasmExecutor;

/// Default memory limit of a task whose job sets none.
pub const DEFAULT_MEMORY_LIMIT: u64 = 512 << 20;
/// Default cap of each of stdout and stderr.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1 << 30;
/// Default interval between heartbeats.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Largest `ResultChunk`.
pub const RESULT_CHUNK_BYTES: usize = 256 * 1024;
/// Log and result streams a node serves at once by default (`Compute.MaxLogStreams`).
pub const DEFAULT_MAX_STREAMS: usize = 64;
/// Lines of each stream sent for a `Logs` request with `tail`.
pub const LOG_TAIL_LINES: usize = 100;
/// How long the node waits for the orchestrator's answer to `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a followed log is polled for new lines.
const LOG_POLL: Duration = Duration::from_millis(200);
/// A line longer than this is sent in pieces.
const MAX_LOG_LINE: usize = 64 * 1024;
/// Finished executions remembered (so a repeated `Run` is ignored, logs are served).
pub const REMEMBERED_FINISHED: usize = 10_000;
/// How long shutdown waits for cancelled executions to report.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid compute option {option}: {reason}")]
    BadOption { option: String, reason: String },
    #[error(transparent)]
    Executor(#[from] ExecError),
    #[error(transparent)]
    Inputs(#[from] InputError),
    #[error("cannot prepare the data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
}

/// Settings of a compute node.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeOptions {
    pub node_id: String,
    /// Executions live in `<data_dir>/executions/<id>/`, archives in `<data_dir>/results/`.
    pub data_dir: PathBuf,
    /// Extra node labels (besides `os_type`, `os_arch`, `name`).
    pub labels: BTreeMap<String, String>,
    /// `Compute.AllowListedLocalPaths`: `/path`, `/path:ro`, `/path:rw`.
    pub allow_listed_local_paths: Vec<String>,
    /// Executions run at once; 0 = one per core.
    pub max_concurrent: usize,
    /// Memory limit of a task whose job sets none, in bytes.
    pub default_memory_limit: u64,
    /// Bytes kept of each of stdout and stderr.
    pub max_output_bytes: u64,
    pub heartbeat_interval: Duration,
    /// Cap of one downloaded input.
    pub max_download_bytes: u64,
    pub download_timeout: Duration,
    /// Whether [`ComputeOptions::build`] looks for a Docker engine (and adds the `docker` engine
    /// when one answers).
    pub docker: bool,
    /// Grace between SIGTERM and SIGKILL when a container is stopped.
    pub docker_stop_grace: Duration,
    /// `Compute.IPFSGateway`: `ipfs` inputs are fetched as `GET {gateway}/ipfs/{CID}`.
    pub ipfs_gateway: Option<String>,
    /// S3 credentials and defaults (from the environment by default).
    pub s3: S3Settings,
    /// `Compute.Env.AllowList`: host variables a job may read through `env:NAME` values.
    pub env_allow_list: Vec<String>,
    /// What this node agrees to run (`Compute.Admission`, `JobAdmissionControl`).
    pub admission: caravel_model::admission::AdmissionPolicy,
    /// External admission probes (`JobAdmissionControl.ProbeHTTP` / `ProbeExec`).
    pub probes: crate::admission::Probes,
    /// Execution timeout of batch and ops jobs that set none (0 = none).
    pub default_execution_timeout_secs: u64,
    /// Confinement of containers.
    pub docker_sandbox: crate::docker::Sandbox,
    /// `Compute.Fetch.AllowPrivate`: what URL inputs may reach on non-public addresses.
    pub fetch_allow_private: Vec<String>,
    /// `Compute.MaxLogStreams`: log and result streams served at once (0 = no limit).
    pub max_streams: usize,
}

impl ComputeOptions {
    pub fn new(node_id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        ComputeOptions {
            node_id: node_id.into(),
            data_dir: data_dir.into(),
            labels: BTreeMap::new(),
            allow_listed_local_paths: Vec::new(),
            max_concurrent: 0,
            default_memory_limit: DEFAULT_MEMORY_LIMIT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            max_download_bytes: crate::inputs::DEFAULT_MAX_DOWNLOAD_BYTES,
            download_timeout: crate::inputs::DEFAULT_DOWNLOAD_TIMEOUT,
            docker: true,
            docker_stop_grace: crate::docker::DEFAULT_STOP_GRACE,
            ipfs_gateway: None,
            s3: S3Settings::from_env(),
            env_allow_list: Vec::new(),
            admission: Default::default(),
            probes: Default::default(),
            default_execution_timeout_secs: 0,
            docker_sandbox: Default::default(),
            fetch_allow_private: Vec::new(),
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }

    /// From the node's configuration (`Compute.*`, `Labels`, `DataDir`).
    pub fn from_config(
        node_id: impl Into<String>,
        cfg: &caravel_model::config::Config,
    ) -> Result<Self, NodeError> {
        let mut o = ComputeOptions::new(node_id, PathBuf::from(&cfg.data_dir).join("compute"));
        o.labels = cfg.labels.clone();
        if !cfg.compute.data.is_empty() {
            o.labels.insert(
                caravel_model::locality::DATA_LABEL.to_string(),
                caravel_model::locality::to_label(&cfg.compute.data),
            );
        }
        o.allow_listed_local_paths = cfg.compute.allow_listed_local_paths.clone();
        o.max_concurrent = cfg.compute.max_concurrent as usize;
        o.env_allow_list = cfg.compute.env.allow_list.clone();
        o.admission = cfg.admission_policy();
        o.probes = crate::admission::Probes {
            http: cfg.job_admission_control.probe_http.trim().to_string(),
            exec: cfg.job_admission_control.probe_exec.trim().to_string(),
        };
        o.default_execution_timeout_secs = cfg.compute.default_execution_timeout_secs;
        o.max_streams = cfg.compute.max_log_streams as usize;
        let d = &cfg.compute.docker;
        o.docker_sandbox = crate::docker::Sandbox {
            pids_limit: d.pids_limit,
            user: d.user.trim().to_string(),
            read_only_rootfs: d.read_only_rootfs,
        };
        o.fetch_allow_private = cfg.compute.fetch.allow_private.clone();
        o.s3.allowed_endpoints = cfg.compute.s3.allowed_endpoints.clone();
        if !cfg.compute.default_memory_limit.trim().is_empty() {
            o.default_memory_limit = caravel_model::quantity::parse_bytes(
                &cfg.compute.default_memory_limit,
            )
            .map_err(|reason| NodeError::BadOption {
                option: "Compute.DefaultMemoryLimit".into(),
                reason,
            })?;
        }
        if cfg.compute.heartbeat_secs > 0 {
            o.heartbeat_interval = Duration::from_secs(cfg.compute.heartbeat_secs);
        }
        let gateway = cfg.compute.ipfs_gateway.trim();
        if !gateway.is_empty() {
            o.ipfs_gateway = Some(gateway.to_string());
        }
        Ok(o)
    }

    /// A node with the wasm executor, plus the docker executor when [`ComputeOptions::docker`] is
    /// set and a Docker engine answers (otherwise the node runs wasm only, and says why in the log).
    pub fn build(self) -> Result<ComputeNode, NodeError> {
        let metrics = ComputeMetrics::new();
        let mut executors: Vec<Arc<dyn Executor>> = vec![Arc::new(WasmExecutor::new()?)];
        if self.docker {
            let mut d = DockerOptions::new(self.node_id.clone());
            d.stop_grace = self.docker_stop_grace;
            d.gpus = capacity::gpu_count();
            d.sandbox = self.docker_sandbox.clone();
            match DockerExecutor::detect(d, metrics.clone()) {
                Ok(exec) => executors.push(Arc::new(exec)),
                Err(why) => tracing::info!(
                    "docker engine not available ({why}); this node runs wasm jobs only"
                ),
            }
        }
        ComputeNode::with_executors(self, executors, metrics)
    }
}

/// One execution the node knows.
struct Entry {
    state: ExecutionStateType,
    cancel: CancellationToken,
    cancel_reason: String,
    done: watch::Sender<bool>,
    paths: ExecutionPaths,
    resources: Resources,
}

struct State {
    execs: HashMap<String, Entry>,
    outbox: Outbox,
    /// The current session's report channel.
    out: Option<mpsc::UnboundedSender<ToOrchestrator>>,
    streams: HashMap<u64, CancellationToken>,
    /// Finished executions, oldest first; the oldest are forgotten past [`REMEMBERED_FINISHED`].
    finished: std::collections::VecDeque<String>,
}

struct Shared {
    opts: ComputeOptions,
    /// Engines in order; the first that runs an engine type runs its tasks.
    executors: Vec<Arc<dyn Executor>>,
    inputs: InputPreparer,
    metrics: ComputeMetrics,
    capacity: Resources,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    tasks: TaskTracker,
    shutting_down: AtomicBool,
}

/// A compute node. Clones share the node.
#[derive(Clone)]
pub struct ComputeNode {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ComputeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeNode")
            .field("node_id", &self.shared.opts.node_id)
            .finish_non_exhaustive()
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Execution ids become directory names: only `[A-Za-z0-9._-]`, not starting with a dot.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_result_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "result path name {name:?} must be a plain directory name"
        ));
    }
    if matches!(name, "stdout" | "stderr" | "exitCode") {
        return Err(format!(
            "result path name {name:?} is reserved for the execution's own files"
        ));
    }
    Ok(())
}

impl ComputeNode {
    /// A node with the given executor only.
    pub fn with_executor(
        opts: ComputeOptions,
        executor: Arc<dyn Executor>,
    ) -> Result<Self, NodeError> {
        Self::with_executors(opts, vec![executor], ComputeMetrics::new())
    }

    /// A node with the given executors (dispatched by engine type), sharing `metrics`.
    pub fn with_executors(
        mut opts: ComputeOptions,
        executors: Vec<Arc<dyn Executor>>,
        metrics: ComputeMetrics,
    ) -> Result<Self, NodeError> {
        if opts.node_id.trim().is_empty() {
            return Err(NodeError::BadOption {
                option: "node_id".into(),
                reason: "is empty".into(),
            });
        }
        if opts.max_concurrent == 0 {
            opts.max_concurrent = capacity::cores();
        }
        if opts.default_memory_limit == 0 {
            opts.default_memory_limit = DEFAULT_MEMORY_LIMIT;
        }
        if opts.max_output_bytes == 0 {
            opts.max_output_bytes = DEFAULT_MAX_OUTPUT_BYTES;
        }
        if opts.heartbeat_interval.is_zero() {
            opts.heartbeat_interval = DEFAULT_HEARTBEAT;
        }
        for d in [
            opts.data_dir.join("executions"),
            opts.data_dir.join("results"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| NodeError::DataDir {
                path: d.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let inputs = InputPreparer::new(InputOptions {
            allow_listed_local_paths: opts.allow_listed_local_paths.clone(),
            max_download_bytes: opts.max_download_bytes,
            download_timeout: opts.download_timeout,
            ipfs_gateway: opts.ipfs_gateway.clone(),
            s3: opts.s3.clone(),
            allow_private: opts.fetch_allow_private.clone(),
        })?
        .with_metrics(metrics.clone());
        let outbox_dir = opts.data_dir.join("outbox");
        let mut outbox = Outbox::open(&outbox_dir).map_err(|e| NodeError::DataDir {
            path: outbox_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        if let Some(note) = outbox.take_recovery_note() {
            tracing::warn!("{note}");
        }
        if !outbox.is_empty() {
            tracing::info!(
                pending = outbox.len(),
                last_seq = outbox.last_seq(),
                "reports from before the restart are waiting for an orchestrator"
            );
        }
        metrics.outbox(outbox.len(), outbox.last_seq(), outbox.write_errors());
        let capacity = capacity::machine_capacity(&opts.data_dir);
        let slots = Arc::new(Semaphore::new(opts.max_concurrent));
        Ok(ComputeNode {
            shared: Arc::new(Shared {
                opts,
                executors,
                inputs,
                metrics,
                capacity,
                slots,
                state: Mutex::new(State {
                    execs: HashMap::new(),
                    outbox,
                    out: None,
                    streams: HashMap::new(),
                    finished: std::collections::VecDeque::new(),
                }),
                tasks: TaskTracker::new(),
                shutting_down: AtomicBool::new(false),
            }),
        })
    }

    pub fn options(&self) -> &ComputeOptions {
        &self.shared.opts
    }

    /// The node's metrics (register them with the process's registry).
    pub fn metrics(&self) -> ComputeMetrics {
        self.shared.metrics.clone()
    }

    /// Engine types this node runs, in executor order.
    pub fn engines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.shared.executors.iter().flat_map(|x| x.engines()) {
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    }

    fn executor_for(&self, engine: &str) -> Option<Arc<dyn Executor>> {
        self.shared
            .executors
            .iter()
            .find(|x| x.engines().iter().any(|e| e == engine))
            .cloned()
    }

    /// The paths an execution uses on this node.
    pub fn execution_paths(&self, execution_id: &str) -> ExecutionPaths {
        ExecutionPaths::new(&self.shared.opts.data_dir, execution_id)
    }

    /// The node's view of an execution's state.
    pub fn execution_state(&self, execution_id: &str) -> Option<ExecutionStateType> {
        self.lock().execs.get(execution_id).map(|e| e.state)
    }

    /// Number of the last report made, and how many are not yet acknowledged.
    pub fn outbox_status(&self) -> (u64, usize) {
        let st = self.lock();
        (st.outbox.last_seq(), st.outbox.len())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough data; keep serving.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `NodeInfo` with fresh capacity and counts.
    pub fn node_info(&self) -> NodeInfo {
        let o = &self.shared.opts;
        let (mut running, mut enqueued) = (0u32, 0u32);
        let mut used = Resources::default();
        let mut queued = Resources::default();
        for e in self.lock().execs.values() {
            if e.state == ExecutionStateType::New {
                enqueued += 1;
                queued.add(&e.resources);
            } else if e.state.is_executing() {
                running += 1;
                used.add(&e.resources);
            }
        }
        let mut available = self.shared.capacity.clone();
        available.sub(&used);
        let mut labels = capacity::default_labels(&o.node_id);
        labels.extend(o.labels.clone());
        // What the policy allows, so the scheduler avoids this node for jobs it would refuse.
        let policy = &o.admission;
        if !policy.is_open() {
            labels.insert(
                caravel_model::admission::POLICY_LABEL.to_string(),
                policy.to_label(),
            );
        }
        let allowed = |list: &[String], name: &str| {
            list.is_empty() || list.iter().any(|x| x.eq_ignore_ascii_case(name))
        };
        let mut max_job = self.shared.capacity.clone();
        if let Ok(c) = caravel_model::quantity::parse_cpu(&policy.max_cpu) {
            max_job.cpu = max_job.cpu.min(c as f64 / 1000.0);
        }
        if let Ok(m) = caravel_model::quantity::parse_bytes(&policy.max_memory) {
            max_job.memory = max_job.memory.min(m);
        }
        if let Ok(d) = caravel_model::quantity::parse_bytes(&policy.max_disk) {
            max_job.disk = max_job.disk.min(d);
        }
        if let Ok(g) = policy.max_gpu.trim().parse::<u64>() {
            max_job.gpu = max_job.gpu.min(g);
        }
        NodeInfo {
            node_id: o.node_id.clone(),
            node_type: "Compute".into(),
            labels,
            supported_protocols: Vec::new(),
            compute_node_info: ComputeNodeInfo {
                execution_engines: self.engines(),
                publishers: SUPPORTED_PUBLISHERS
                    .iter()
                    .filter(|p| allowed(&policy.publishers, p))
                    .map(|s| s.to_string())
                    .collect(),
                storage_sources: self
                    .shared
                    .inputs
                    .supported_sources()
                    .into_iter()
                    .filter(|s| allowed(&policy.input_types, s))
                    .collect(),
                max_capacity: self.shared.capacity.clone(),
                queue_used_capacity: queued,
                available_capacity: available,
                max_job_requirements: max_job,
                running_executions: running,
                enqueued_executions: enqueued,
                address: String::new(),
            },
            bacalhau_version: BuildVersionInfo::current(),
        }
    }

    /// The executions this node holds and has not finished, sorted.
    pub fn inventory(&self) -> ToOrchestrator {
        let mut running: Vec<String> = self
            .lock()
            .execs
            .iter()
            .filter(|(_, e)| !e.state.is_terminal())
            .map(|(id, _)| id.clone())
            .collect();
        running.sort();
        ToOrchestrator::Inventory { running }
    }

    /// Serves one orchestrator session until `inbox` closes, `outbox` closes or `shutdown` fires.
    /// Sends `Hello` first, then replays unacknowledged reports, then heartbeats. On `shutdown`,
    /// running executions are stopped and reported Failed before this returns.
    pub async fn run(
        self,
        mut inbox: mpsc::Receiver<ToCompute>,
        outbox: mpsc::Sender<ToOrchestrator>,
        shutdown: CancellationToken,
    ) {
        let last_seq = self.lock().outbox.last_seq();
        if outbox
            .send(ToOrchestrator::Hello {
                info: Box::new(self.node_info()),
                last_seq,
            })
            .await
            .is_err()
        {
            return;
        }
        // Wait for the orchestrator's answer (the last report sequence it committed) before sending
        // any report, so numbering continues after it even if this node lost its outbox.
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match inbox.recv().await {
                    Some(ToCompute::Ack { seq }) => return Some(seq),
                    Some(other) => self.handle(other, &outbox),
                    None => return None,
                }
            }
        });
        let committed = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = answer => a,
        };
        match committed {
            Ok(Some(seq)) => {
                let mut st = self.lock();
                st.outbox.rebase(seq);
                self.outbox_metrics(&st);
            }
            Ok(None) => return,
            Err(_) => tracing::warn!(
                "the orchestrator did not answer Hello within {HANDSHAKE_TIMEOUT:?}; sending reports anyway"
            ),
        }
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ToOrchestrator>();
        {
            let mut st = self.lock();
            for (seq, update) in st.outbox.unacked_after(st.outbox.acked_seq()) {
                let _ = out_tx.send(ToOrchestrator::Report { seq, update });
            }
            st.out = Some(out_tx.clone());
        }
        // After the replay: what this node still runs, so the orchestrator can stop what must not.
        let _ = out_tx.send(self.inventory());
        let fwd_sink = outbox.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if fwd_sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let mut heartbeat = tokio::time::interval(self.shared.opts.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = outbox.closed() => break,
                msg = inbox.recv() => match msg {
                    Some(m) => self.handle(m, &outbox),
                    None => break,
                },
                _ = heartbeat.tick() => {
                    // Best effort: a full channel means the peer is busy; the next beat will do.
                    let _ = outbox.try_send(ToOrchestrator::Heartbeat { info: Box::new(self.node_info()) });
                    let _ = outbox.try_send(self.inventory());
                }
            }
        }
        if shutdown.is_cancelled() {
            self.stop_all().await;
        }
        {
            let mut st = self.lock();
            if st.out.as_ref().is_some_and(|o| o.same_channel(&out_tx)) {
                st.out = None;
            }
        }
        drop(out_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), forwarder).await;
    }

    /// Stops every execution (node shutdown) and waits for their final reports.
    async fn stop_all(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        {
            let st = self.lock();
            for e in st.execs.values() {
                e.cancel.cancel();
            }
            for s in st.streams.values() {
                s.cancel();
            }
        }
        self.shared.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some executions did not stop within {SHUTDOWN_GRACE:?} of shutdown");
        }
    }

    fn handle(&self, msg: ToCompute, outbox: &mpsc::Sender<ToOrchestrator>) {
        match msg {
            ToCompute::Run { execution, job } => self.start(*execution, *job),
            ToCompute::Cancel {
                execution_id,
                reason,
            } => self.cancel(&execution_id, &reason),
            ToCompute::Ack { seq } => {
                let mut st = self.lock();
                st.outbox.ack(seq);
                self.outbox_metrics(&st);
            }
            ToCompute::Logs { request_id, .. }
            | ToCompute::LogsFrom { request_id, .. }
            | ToCompute::FetchResult { request_id, .. }
                if self.streams_full() =>
            {
                let error = format!(
                    "node {} is serving as many log and result streams as it may (Compute.MaxLogStreams = {}); try again later",
                    self.shared.opts.node_id, self.shared.opts.max_streams
                );
                tracing::warn!(request_id, "{error}");
                let end = if matches!(msg, ToCompute::FetchResult { .. }) {
                    ToOrchestrator::ResultEnd { request_id, error }
                } else {
                    ToOrchestrator::LogEnd { request_id, error }
                };
                let out = outbox.clone();
                self.shared.tasks.spawn(async move {
                    let _ = out.send(end).await;
                });
            }
            ToCompute::Logs {
                request_id,
                execution_id,
                follow,
                tail,
            } => {
                let token = self.register_stream(request_id);
                let (node, out) = (self.clone(), outbox.clone());
                let from = if tail {
                    LogStart::Tail
                } else {
                    LogStart::Beginning
                };
                self.shared.tasks.spawn(async move {
                    node.stream_logs(request_id, &execution_id, follow, from, &out, &token)
                        .await;
                    node.lock().streams.remove(&request_id);
                });
            }
            ToCompute::LogsFrom {
                request_id,
                execution_id,
                follow,
                stdout_offset,
                stderr_offset,
            } => {
                let token = self.register_stream(request_id);
                let (node, out) = (self.clone(), outbox.clone());
                let from = LogStart::Offsets(stdout_offset, stderr_offset);
                self.shared.tasks.spawn(async move {
                    node.stream_logs(request_id, &execution_id, follow, from, &out, &token)
                        .await;
                    node.lock().streams.remove(&request_id);
                });
            }
            ToCompute::FetchResult {
                request_id,
                execution_id,
            } => {
                let token = self.register_stream(request_id);
                let (node, out) = (self.clone(), outbox.clone());
                self.shared.tasks.spawn(async move {
                    node.send_result(request_id, &execution_id, &out, &token)
                        .await;
                    node.lock().streams.remove(&request_id);
                });
            }
            ToCompute::CancelRequest { request_id } => {
                if let Some(t) = self.lock().streams.remove(&request_id) {
                    t.cancel();
                }
            }
        }
    }

    fn outbox_metrics(&self, st: &State) {
        self.shared.metrics.outbox(
            st.outbox.len(),
            st.outbox.last_seq(),
            st.outbox.write_errors(),
        );
    }

    fn streams_full(&self) -> bool {
        let max = self.shared.opts.max_streams;
        max > 0 && self.lock().streams.len() >= max
    }

    fn register_stream(&self, request_id: u64) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some(old) = self.lock().streams.insert(request_id, token.clone()) {
            old.cancel();
        }
        token
    }

    /// Records and sends a state change of an execution. Refuses moves the state machine forbids
    /// (e.g. a second terminal state).
    fn report(
        &self,
        id: &str,
        state: ExecutionStateType,
        topic: &str,
        message: impl Into<String>,
        out: Option<RunOutput>,
        published: Option<SpecConfig>,
    ) {
        let mut st = self.lock();
        let mut newly_finished = false;
        if let Some(e) = st.execs.get_mut(id) {
            if e.state != state && !e.state.can_transition_to(state) {
                tracing::debug!(execution = id, from = %e.state, to = %state, "ignored an impossible state change");
                return;
            }
            e.state = state;
            if state.is_terminal() {
                e.done.send_replace(true);
                newly_finished = true;
            }
        }
        if newly_finished {
            st.finished.push_back(id.to_string());
            while st.finished.len() > REMEMBERED_FINISHED {
                if let Some(old) = st.finished.pop_front() {
                    st.execs.remove(&old);
                }
            }
        }
        let update = ExecutionUpdate {
            execution_id: id.to_string(),
            state,
            message: message.into(),
            run_output: out,
            published_result: published,
            topic: topic.to_string(),
            time: now_ns(),
        };
        let seq = st.outbox.push(update.clone());
        self.outbox_metrics(&st);
        tracing::debug!(execution = id, %state, seq, "report");
        if let Some(tx) = &st.out {
            let _ = tx.send(ToOrchestrator::Report { seq, update });
        }
    }

    fn cancel(&self, id: &str, reason: &str) {
        let mut st = self.lock();
        match st.execs.get_mut(id) {
            Some(e) if e.state.is_terminal() => {}
            Some(e) => {
                e.cancel_reason = reason.to_string();
                e.cancel.cancel();
            }
            None if !valid_id(id) => {}
            None => {
                // Remember it, so a late `Run` of the same execution is ignored.
                let (done, _) = watch::channel(true);
                let entry = Entry {
                    state: ExecutionStateType::New,
                    cancel: CancellationToken::new(),
                    cancel_reason: reason.to_string(),
                    done,
                    paths: ExecutionPaths::new(&self.shared.opts.data_dir, id),
                    resources: Resources::default(),
                };
                st.execs.insert(id.to_string(), entry);
                drop(st);
                self.report(
                    id,
                    ExecutionStateType::Cancelled,
                    topic::EXECUTION,
                    cancel_message(reason),
                    None,
                    None,
                );
            }
        }
    }

    fn start(&self, execution: Execution, job: Job) {
        let id = execution.id.clone();
        // The job version sent with the run; the execution's own copy only if that has no task.
        let task_opt = job
            .task()
            .cloned()
            .or_else(|| execution.job.as_ref().and_then(|j| j.task().cloned()));
        if !valid_id(&id) {
            // Never becomes a path on this node, and is not remembered.
            let msg = format!("invalid execution id {id:?}");
            self.report(
                &id,
                ExecutionStateType::Failed,
                topic::EXECUTION,
                msg.clone(),
                Some(failed_output(&msg)),
                None,
            );
            return;
        }
        let has_task = task_opt.is_some();
        let task = task_opt.unwrap_or_default();
        let resources = {
            let mut r = Resources::from_config(&task.resources);
            if let Some(a) = execution.allocated_resources.tasks.get(&task.name) {
                r = a.clone();
            }
            r
        };
        {
            let mut st = self.lock();
            if st.execs.contains_key(&id) {
                tracing::debug!(execution = %id, "run of a known execution ignored");
                return;
            }
            let (done, _) = watch::channel(false);
            st.execs.insert(
                id.clone(),
                Entry {
                    state: ExecutionStateType::New,
                    cancel: CancellationToken::new(),
                    cancel_reason: String::new(),
                    done,
                    paths: ExecutionPaths::new(&self.shared.opts.data_dir, &id),
                    resources: resources.clone(),
                },
            );
        }
        if matches!(
            execution.compute_state.state_type,
            ExecutionStateType::BidAccepted
                | ExecutionStateType::Running
                | ExecutionStateType::Publishing
        ) {
            // The orchestrator saw this node take it, and this node does not know it: the compute
            // process restarted (or its data dir was replaced) while it ran. Report it lost so the
            // scheduler places it again; never run it a second time under the same id.
            tracing::warn!(execution = %id, state = %execution.compute_state.state_type, "execution lost in a restart of this node");
            self.report(
                &id,
                ExecutionStateType::Cancelled,
                topic::EXECUTION,
                format!(
                    "lost: the compute node restarted while the execution was {}; it will be scheduled again",
                    execution.compute_state.state_type
                ),
                None,
                None,
            );
            return;
        }
        if execution.desired_state.state_type == ExecutionDesiredState::Stopped {
            self.report(
                &id,
                ExecutionStateType::Cancelled,
                topic::EXECUTION,
                "execution was asked to stop before it started",
                None,
                None,
            );
            return;
        }
        // Refuse what this node cannot run before it takes a slot.
        let refusal = if !has_task {
            Some("the job has no task".to_string())
        } else if self.executor_for(&task.engine.kind_lower()).is_none() {
            Some(format!(
                "engine type {:?} is not supported by this node (supported: {})",
                task.engine.kind,
                self.engines().join(", ")
            ))
        } else {
            crate::publish::from_spec(&task.publisher)
                .err()
                .map(|e| e.to_string())
        };
        if let Some(msg) = refusal {
            let out = failed_output(&msg);
            self.report(
                &id,
                ExecutionStateType::Failed,
                topic::EXECUTION,
                msg,
                Some(out),
                None,
            );
            return;
        }
        // The owner's policy, enforced here whatever the orchestrators decided: refused before
        // anything is fetched or started (the scheduler then tries another node).
        if let Err(why) = self.shared.opts.admission.check(&job) {
            self.refuse(&id, &why);
            return;
        }
        let mut task = task;
        let default_timeout = self.shared.opts.default_execution_timeout_secs;
        if default_timeout > 0
            && job.job_type().runs_to_completion()
            && task.timeouts.effective_execution_timeout() == 0
        {
            task.timeouts.execution_timeout = default_timeout as i64;
        }
        let node = self.clone();
        let probe_job = job.clone();
        let job_id = if execution.job_id.is_empty() {
            job.id.clone()
        } else {
            execution.job_id.clone()
        };
        let system = crate::executor::system_env(&job, &execution, &self.shared.opts.node_id);
        self.shared.tasks.spawn(async move {
            // External probes (JobAdmissionControl.ProbeHTTP / ProbeExec) decide before a slot.
            if let Err(why) = crate::admission::probe(
                &node.shared.opts.probes,
                &node.shared.opts.node_id,
                &probe_job,
            )
            .await
            {
                node.refuse(&id, &why);
                return;
            }
            node.execute(id, job_id, task, system).await
        });
    }

    /// Reports an execution refused by this node's policy (never started, nothing fetched).
    fn refuse(&self, id: &str, why: &str) {
        let msg = format!("refused by node {}: {why}", self.shared.opts.node_id);
        tracing::info!(execution = %id, reason = %why, "execution refused by the admission policy");
        self.shared.metrics.execution_refused();
        self.report(
            id,
            ExecutionStateType::BidRejected,
            topic::EXECUTION,
            msg,
            None,
            None,
        );
    }

    async fn execute(
        self,
        id: String,
        job_id: String,
        task: Task,
        system: BTreeMap<String, String>,
    ) {
        let Some((cancel, paths)) = self
            .lock()
            .execs
            .get(&id)
            .map(|e| (e.cancel.clone(), e.paths.clone()))
        else {
            return;
        };
        let permit = tokio::select! {
            p = self.shared.slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = cancel.cancelled() => {
                self.finish_cancelled(&id);
                return;
            }
        };
        self.report(
            &id,
            ExecutionStateType::BidAccepted,
            topic::EXECUTION,
            "",
            None,
            None,
        );
        let outcome = self
            .run_execution(&id, &job_id, &task, &system, &paths, &cancel)
            .await;
        // Clean up and free the slot before the final report, so whoever sees it sees the end state.
        let p = paths.clone();
        let _ = tokio::task::spawn_blocking(move || p.cleanup_work()).await;
        drop(permit);
        let engine = task.engine.kind_lower();
        let label = match &outcome {
            Outcome::Completed { .. } => "completed",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled => "cancelled",
        };
        self.shared.metrics.execution_finished(&engine, label);
        match outcome {
            Outcome::Completed { out, published } => {
                let msg = if out.exit_code == 0 {
                    String::new()
                } else {
                    format!("exited with code {}", out.exit_code)
                };
                self.report(
                    &id,
                    ExecutionStateType::Completed,
                    topic::EXECUTION,
                    msg,
                    Some(out),
                    published,
                );
            }
            Outcome::Failed {
                topic,
                message,
                out,
            } => {
                let out = out.unwrap_or_else(|| failed_output(&message));
                self.report(
                    &id,
                    ExecutionStateType::Failed,
                    topic,
                    message,
                    Some(out),
                    None,
                );
            }
            Outcome::Cancelled => self.finish_cancelled(&id),
        }
    }

    fn finish_cancelled(&self, id: &str) {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            let msg = "the compute node shut down during the execution";
            let out = failed_output(msg);
            self.report(
                id,
                ExecutionStateType::Failed,
                topic::EXECUTION,
                msg,
                Some(out),
                None,
            );
        } else {
            let reason = self
                .lock()
                .execs
                .get(id)
                .map(|e| e.cancel_reason.clone())
                .unwrap_or_default();
            self.report(
                id,
                ExecutionStateType::Cancelled,
                topic::EXECUTION,
                cancel_message(&reason),
                None,
                None,
            );
        }
    }

    async fn run_execution(
        &self,
        id: &str,
        job_id: &str,
        task: &Task,
        system: &BTreeMap<String, String>,
        paths: &ExecutionPaths,
        cancel: &CancellationToken,
    ) -> Outcome {
        let fail = |topic: &'static str, message: String| Outcome::Failed {
            topic,
            message,
            out: None,
        };
        if let Err(e) = paths.create() {
            return fail(
                topic::EXECUTION,
                format!(
                    "cannot create the execution directory {}: {e}",
                    paths.root.display()
                ),
            );
        }
        let publisher = match crate::publish::from_spec(&task.publisher) {
            Ok(p) => p,
            Err(e) => return fail(topic::EXECUTION, e.to_string()),
        };
        let inputs = tokio::select! {
            r = self.shared.inputs.prepare(&task.input_sources, &paths.inputs, partition_of(system)) => match r {
                Ok(i) => i,
                Err(e) => return fail(topic::DOWNLOADING, format!("preparing inputs: {e}")),
            },
            _ = cancel.cancelled() => return Outcome::Cancelled,
        };
        if task.engine.kind_lower() == "wasm" && !self.shared.opts.admission.wasm_modules.is_empty()
        {
            // The module the wasm executor will load (a relative EntryModule or one inside a
            // directory input included).
            let module = caravel_model::params::WasmParams::try_from(&task.engine)
                .ok()
                .and_then(|w| crate::wasm::module_file(&inputs, &w.entry_module).ok());
            let sha = match module {
                Some(path) => tokio::task::spawn_blocking(move || sha256_file(&path))
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            let verdict = match sha {
                Some(sha) => self.shared.opts.admission.check_module(&sha),
                None => Err("its WASM entry module could not be read to check its hash".into()),
            };
            if let Err(why) = verdict {
                self.shared.metrics.execution_refused();
                return fail(
                    topic::EXECUTION,
                    format!("refused by node {}: {why}", self.shared.opts.node_id),
                );
            }
        }
        let mut results = Vec::new();
        for rp in &task.result_paths {
            if let Err(m) = valid_result_name(&rp.name) {
                return fail(topic::EXECUTION, m);
            }
            let guest = match check_target(&rp.path) {
                Ok(g) => g,
                Err(e) => return fail(topic::EXECUTION, format!("result path {:?}: {e}", rp.name)),
            };
            results.push(ResultDir {
                name: rp.name.clone(),
                host_dir: paths.result_dir(&rp.name),
                guest_path: guest,
            });
        }
        let args = match task_args(task) {
            Ok(a) => a,
            Err(e) => return fail(topic::EXECUTION, e.to_string()),
        };
        let resources = self
            .lock()
            .execs
            .get(id)
            .map(|e| e.resources.clone())
            .unwrap_or_default();
        let memory_limit = if resources.memory > 0 {
            resources.memory
        } else {
            self.shared.opts.default_memory_limit
        };
        // Ports the task listens on: a host port for each (its Static one, or a free one),
        // named to the task as Bacalhau names them.
        let mut system = system.clone();
        match crate::executor::port_env(&task.network) {
            Ok(ports) => system.extend(ports),
            Err(why) => return fail(topic::EXECUTION, why),
        }
        let env = match crate::executor::resolve_host_env(
            task_env(task, id, job_id, &system),
            &self.shared.opts.env_allow_list,
            &|name| std::env::var(name).ok(),
        ) {
            Ok(env) => env,
            Err(why) => return fail(topic::EXECUTION, why),
        };
        let req = RunRequest {
            execution_id: id.to_string(),
            job_id: job_id.to_string(),
            task: task.clone(),
            inputs,
            results,
            stdout_path: paths.stdout(),
            stderr_path: paths.stderr(),
            timeout_secs: task.timeouts.effective_execution_timeout().max(0) as u64,
            memory_limit,
            max_output_bytes: self.shared.opts.max_output_bytes,
            env,
            args,
            scratch_dir: paths.scratch.clone(),
        };
        let Some(executor) = self.executor_for(&task.engine.kind_lower()) else {
            return fail(
                topic::EXECUTION,
                ExecError::UnsupportedEngine(task.engine.kind.clone()).to_string(),
            );
        };
        self.report(
            id,
            ExecutionStateType::Running,
            topic::RUNNING,
            "",
            None,
            None,
        );
        let disk_limit = resources.disk;
        let watched: Vec<PathBuf> = req.results.iter().map(|r| r.host_dir.clone()).collect();
        let result = if disk_limit == 0 || watched.is_empty() {
            executor.run(req, cancel.clone()).await
        } else {
            // What the task writes to its result paths, measured while it runs and once after:
            // past `Resources.Disk` it is stopped and fails (a container's own filesystem is
            // not counted: that needs a storage driver with quotas).
            let stop = cancel.child_token();
            let mut run = std::pin::pin!(executor.run(req, stop.clone()));
            let over = tokio::select! {
                r = &mut run => match disk_used(watched.clone()).await {
                    used if used > disk_limit => Err(used),
                    _ => Ok(r),
                },
                used = watch_disk(watched.clone(), disk_limit) => {
                    stop.cancel();
                    let _ = run.await;
                    Err(used)
                }
            };
            match over {
                Ok(r) => r,
                Err(_) if cancel.is_cancelled() => return Outcome::Cancelled,
                Err(used) => Err(ExecError::DiskLimit {
                    limit: disk_limit,
                    used,
                }),
            }
        };
        let r = match result {
            Ok(r) => r,
            Err(ExecError::Cancelled) => return Outcome::Cancelled,
            Err(e) => {
                let msg = e.to_string();
                let _ = paths.write_exit_code(-1);
                let out = run_output(paths, -1, &msg, (false, false));
                return Outcome::Failed {
                    topic: topic::RUNNING,
                    message: msg,
                    out: Some(out),
                };
            }
        };
        if let Err(e) = paths.write_exit_code(r.exit_code) {
            return fail(topic::EXECUTION, format!("cannot write the exit code: {e}"));
        }
        let out = run_output(paths, r.exit_code, "", (r.stdout_capped, r.stderr_capped));
        if publisher.keeps_results() {
            self.report(
                id,
                ExecutionStateType::Publishing,
                topic::PUBLISHING,
                "",
                None,
                None,
            );
        }
        let ctx = PublishContext {
            paths,
            execution_id: id,
            job_id,
            node_id: &self.shared.opts.node_id,
            s3: &self.shared.opts.s3,
            now: std::time::SystemTime::now(),
        };
        let started = std::time::Instant::now();
        let published = tokio::select! {
            r = crate::publish::publish(&publisher, &ctx) => r,
            _ = cancel.cancelled() => return Outcome::Cancelled,
        };
        match published {
            Ok(p) => {
                if publisher.keeps_results() {
                    self.shared
                        .metrics
                        .published(publisher.kind(), p.bytes, started.elapsed());
                }
                Outcome::Completed {
                    out,
                    published: p.result,
                }
            }
            Err(e) => Outcome::Failed {
                topic: topic::PUBLISHING,
                message: e.to_string(),
                out: Some(out),
            },
        }
    }

    async fn stream_logs(
        &self,
        request_id: u64,
        id: &str,
        follow: bool,
        from: LogStart,
        out: &mpsc::Sender<ToOrchestrator>,
        cancel: &CancellationToken,
    ) {
        if !valid_id(id) {
            let error = format!("invalid execution id {id:?}");
            let _ = out.send(ToOrchestrator::LogEnd { request_id, error }).await;
            return;
        }
        let found = self
            .lock()
            .execs
            .get(id)
            .map(|e| (e.paths.clone(), e.done.subscribe()));
        let (paths, mut done) = match found {
            Some(f) => f,
            None if valid_id(id) && self.execution_paths(id).stdout().exists() => {
                let (_tx, rx) = watch::channel(true);
                (self.execution_paths(id), rx)
            }
            None => {
                let error = format!(
                    "execution {id} is not known on node {}",
                    self.shared.opts.node_id
                );
                let _ = out.send(ToOrchestrator::LogEnd { request_id, error }).await;
                return;
            }
        };
        let mut readers = [
            LogReader::new(paths.stdout(), 1),
            LogReader::new(paths.stderr(), 2),
        ];
        let with_offsets = matches!(from, LogStart::Offsets(..));
        match from {
            LogStart::Beginning => {}
            LogStart::Tail => {
                for r in &mut readers {
                    r.seek_to_last_lines(LOG_TAIL_LINES).await;
                }
            }
            LogStart::Offsets(o, e) => {
                readers[0].offset = o;
                readers[1].offset = e;
            }
        }
        loop {
            let finished = *done.borrow_and_update();
            let mut all_read = true;
            for r in &mut readers {
                let (lines, at_end) = r.read_some(finished || !follow).await;
                all_read &= at_end;
                for (line, end_offset) in lines {
                    let msg = if with_offsets {
                        ToOrchestrator::LogLineAt {
                            request_id,
                            stream: r.stream,
                            line,
                            end_offset,
                        }
                    } else {
                        ToOrchestrator::LogLine {
                            request_id,
                            stream: r.stream,
                            line,
                        }
                    };
                    tokio::select! {
                        sent = out.send(msg) => if sent.is_err() { return },
                        _ = cancel.cancelled() => return,
                    }
                }
            }
            if !all_read {
                // More than one batch is waiting: read on without polling.
                continue;
            }
            if finished || !follow {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = done.changed() => {}
                _ = tokio::time::sleep(LOG_POLL) => {}
            }
        }
        let _ = out
            .send(ToOrchestrator::LogEnd {
                request_id,
                error: String::new(),
            })
            .await;
    }

    async fn send_result(
        &self,
        request_id: u64,
        id: &str,
        out: &mpsc::Sender<ToOrchestrator>,
        cancel: &CancellationToken,
    ) {
        let end = |error: String| ToOrchestrator::ResultEnd { request_id, error };
        if !valid_id(id) {
            let _ = out.send(end(format!("invalid execution id {id:?}"))).await;
            return;
        }
        let path = self.execution_paths(id).archive;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let msg = format!(
                    "execution {id} has no published results on node {} (it has not completed, or its publisher keeps none)",
                    self.shared.opts.node_id
                );
                let _ = out.send(end(msg)).await;
                return;
            }
            Err(e) => {
                let _ = out
                    .send(end(format!(
                        "cannot read the results of execution {id}: {e}"
                    )))
                    .await;
                return;
            }
        };
        let mut buf = vec![0u8; RESULT_CHUNK_BYTES];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = out
                        .send(end(format!("reading the results of execution {id}: {e}")))
                        .await;
                    return;
                }
            };
            let msg = ToOrchestrator::ResultChunk {
                request_id,
                data: buf[..n].to_vec(),
            };
            tokio::select! {
                sent = out.send(msg) => if sent.is_err() { return },
                _ = cancel.cancelled() => return,
            }
        }
        let _ = out.send(end(String::new())).await;
    }
}

/// `RunOutput` of an execution that failed before or outside its task: exit code -1, as Bacalhau.
/// The (index, count) partition of an execution, from its system environment.
fn partition_of(system: &BTreeMap<String, String>) -> (usize, usize) {
    let read = |k: &str| system.get(k).and_then(|v| v.parse::<usize>().ok());
    let count = read("BACALHAU_PARTITION_COUNT").unwrap_or(1).max(1);
    let index = read("BACALHAU_PARTITION_INDEX").unwrap_or(0).min(count - 1);
    (index, count)
}

fn failed_output(msg: &str) -> RunOutput {
    RunOutput {
        exit_code: -1,
        error_msg: msg.to_string(),
        ..Default::default()
    }
}

fn cancel_message(reason: &str) -> String {
    if reason.trim().is_empty() {
        "execution cancelled".into()
    } else {
        format!("execution cancelled: {reason}")
    }
}

enum Outcome {
    Completed {
        out: RunOutput,
        published: Option<SpecConfig>,
    },
    Failed {
        topic: &'static str,
        message: String,
        out: Option<RunOutput>,
    },
    Cancelled,
}

/// Reads complete lines appended to a log file.
/// Where a log request starts reading.
#[derive(Debug, Clone, Copy)]
enum LogStart {
    Beginning,
    /// The last [`LOG_TAIL_LINES`] lines of each stream.
    Tail,
    /// Byte offsets of stdout and stderr (a resumed request).
    Offsets(u64, u64),
}

struct LogReader {
    path: PathBuf,
    stream: u8,
    offset: u64,
    partial: Vec<u8>,
}

impl LogReader {
    fn new(path: PathBuf, stream: u8) -> Self {
        LogReader {
            path,
            stream,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Starts reading at the beginning of the last `n` lines.
    async fn seek_to_last_lines(&mut self, n: usize) {
        let path = self.path.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(path).ok()?;
            tail_start(&mut f, n).ok()
        })
        .await;
        if let Ok(Some(start)) = found {
            self.offset = start;
        }
    }

    /// New complete lines, each with the byte offset just past it in the file; with `flush`, a
    /// trailing line without a newline too.
    #[cfg(test)]
    async fn read_lines(&mut self, flush: bool) -> Vec<(String, u64)> {
        self.read_some(flush).await.0
    }

    /// Like [`LogReader::read_lines`], at most ~10,000 lines at a time; also says whether the end
    /// of the file was reached (a trailing partial line is flushed only then).
    async fn read_some(&mut self, flush: bool) -> (Vec<(String, u64)>, bool) {
        let mut lines = Vec::new();
        let mut at_end = true;
        if let Ok(mut f) = tokio::fs::File::open(&self.path).await
            && f.seek(std::io::SeekFrom::Start(self.offset)).await.is_ok()
        {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = f.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let base = self.offset;
                self.offset += n as u64;
                for (i, &b) in buf[..n].iter().enumerate() {
                    let end = base + i as u64 + 1;
                    if b == b'\n' {
                        lines.push((take_line(&mut self.partial), end));
                    } else {
                        self.partial.push(b);
                        if self.partial.len() >= MAX_LOG_LINE {
                            lines.push((take_line(&mut self.partial), end));
                        }
                    }
                }
                if lines.len() > 10_000 {
                    at_end = false;
                    break;
                }
            }
        }
        if at_end && flush && !self.partial.is_empty() {
            lines.push((take_line(&mut self.partial), self.offset));
        }
        (lines, at_end)
    }
}

fn take_line(partial: &mut Vec<u8>) -> String {
    let bytes = std::mem::take(partial);
    let bytes = bytes
        .strip_suffix(b"\r")
        .map(<[u8]>::to_vec)
        .unwrap_or(bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Where the last `n` lines of a file start, read backwards from its end in blocks: memory and I/O are
/// bounded by the lines wanted (at most `n` × the longest line sent, `MAX_LOG_LINE`), never by the
/// file's size. A line longer than that is cut at the bound, as `read_some` would cut it.
fn tail_start(f: &mut (impl std::io::Read + std::io::Seek), n: usize) -> std::io::Result<u64> {
    use std::io::SeekFrom;
    const BLOCK: u64 = 64 * 1024;
    let len = f.seek(SeekFrom::End(0))?;
    if n == 0 {
        return Ok(len);
    }
    let floor = len.saturating_sub((n as u64).saturating_mul(MAX_LOG_LINE as u64));
    let mut buf = vec![0u8; BLOCK as usize];
    let mut pos = len;
    let mut newlines = 0usize;
    // A final newline ends the last line rather than starting an empty one.
    let mut skip_last = true;
    while pos > floor {
        let from = pos.saturating_sub(BLOCK).max(floor);
        let chunk = &mut buf[..(pos - from) as usize];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            let at = from + i as u64;
            if *b != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last && at + 1 == len {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok(at + 1);
            }
        }
        pos = from;
    }
    Ok(floor)
}

/// The SHA-256 of a file, in hex (the admission check of WASM modules).
fn sha256_file(path: &std::path::Path) -> Option<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// How often a running task's result paths are measured against its disk limit.
const DISK_POLL: Duration = Duration::from_millis(500);

/// Resolves with the bytes used once the files under `dirs` hold more than `limit`.
async fn watch_disk(dirs: Vec<PathBuf>, limit: u64) -> u64 {
    loop {
        tokio::time::sleep(DISK_POLL).await;
        let used = disk_used(dirs.clone()).await;
        if used > limit {
            return used;
        }
    }
}

/// Bytes of the regular files under `dirs` (links not followed), walked off the runtime.
async fn disk_used(dirs: Vec<PathBuf>) -> u64 {
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        let mut stack = dirs;
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => {
                        total += e.metadata().map_or(0, |m| m.len());
                    }
                    _ => {}
                }
            }
        }
        total
    })
    .await
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of the last `n` lines, found the slow obvious way.
    fn naive_tail(data: &[u8], n: usize) -> u64 {
        let body = data.strip_suffix(b"\n").unwrap_or(data);
        let mut count = 0;
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                count += 1;
                if count == n {
                    return i as u64 + 1;
                }
            }
        }
        0
    }

    #[test]
    fn tail_start_matches_a_full_scan() {
        let samples: &[&[u8]] = &[
            b"",
            b"\n",
            b"one",
            b"one\n",
            b"a\nb\nc",
            b"a\nb\nc\n",
            b"\n\n\n\n",
            b"a\n\nb\n\n",
        ];
        for data in samples {
            for n in 1..6 {
                let got = tail_start(&mut std::io::Cursor::new(data), n).unwrap();
                assert_eq!(
                    got,
                    naive_tail(data, n),
                    "{:?} n={n}",
                    String::from_utf8_lossy(data)
                );
            }
        }
        // Across block boundaries.
        let big: Vec<u8> = (0..50_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for n in [1, 2, 100, 10_000] {
            assert_eq!(
                tail_start(&mut std::io::Cursor::new(&big), n).unwrap(),
                naive_tail(&big, n)
            );
        }
    }

    fn peak_rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Abuse: `--tail` of a 1 GiB log reads a few blocks from its end, not the file (which would
    /// raise the peak RSS by a gibibyte).
    #[tokio::test]
    async fn the_tail_of_a_gibibyte_log_is_read_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        {
            use std::io::Write;
            let f = std::fs::File::create(&path).unwrap();
            // A sparse gibibyte of earlier output (no newlines), then 300 real lines.
            f.set_len(1 << 30).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            for i in 0..300 {
                writeln!(f, "line {i}").unwrap();
            }
        }
        let before = peak_rss_kib();
        let mut r = LogReader::new(path.clone(), 1);
        r.seek_to_last_lines(LOG_TAIL_LINES).await;
        let (lines, at_end) = r.read_some(true).await;
        let grown = peak_rss_kib().saturating_sub(before);
        assert!(at_end);
        assert_eq!(lines.len(), LOG_TAIL_LINES);
        assert_eq!(lines[0].0, "line 200");
        assert_eq!(lines[99].0, "line 299");
        assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB");
    }

    #[test]
    fn ids_and_result_names_are_checked() {
        assert!(valid_id("e-0b5e2c7a-1f"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id(""));
        assert!(valid_result_name("outputs").is_ok());
        assert!(valid_result_name("a/b").is_err());
        assert!(valid_result_name("stdout").is_err());
    }

    #[tokio::test]
    async fn log_reader_returns_complete_lines_then_the_rest_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\r\nc").unwrap();
        let mut r = LogReader::new(p.clone(), 1);
        let l = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(s, o)| (s.to_string(), *o))
                .collect::<Vec<_>>()
        };
        assert_eq!(r.read_lines(false).await, l(&[("a", 2), ("b", 5)]));
        assert!(r.read_lines(false).await.is_empty());
        assert_eq!(r.read_lines(true).await, l(&[("c", 6)]));
        std::fs::write(&p, (0..10).map(|i| format!("l{i}\n")).collect::<String>()).unwrap();
        let mut r = LogReader::new(p.clone(), 1);
        r.seek_to_last_lines(3).await;
        assert_eq!(
            r.read_lines(true).await,
            l(&[("l7", 24), ("l8", 27), ("l9", 30)])
        );
        // A long log comes in batches; the last says it reached the end.
        let big = dir.path().join("big");
        std::fs::write(
            &big,
            (0..25_000).map(|i| format!("{i}\n")).collect::<String>(),
        )
        .unwrap();
        let mut r = LogReader::new(big, 1);
        let mut all = Vec::new();
        loop {
            let (lines, at_end) = r.read_some(true).await;
            all.extend(lines);
            if at_end {
                break;
            }
        }
        assert_eq!(all.len(), 25_000);
        assert_eq!(all.last().unwrap().0, "24999");
        // Resuming at a line's end offset continues with the next line, nothing repeated.
        let mut r = LogReader::new(p, 1);
        r.offset = 27;
        assert_eq!(r.read_lines(true).await, l(&[("l9", 30)]));
    }
}
