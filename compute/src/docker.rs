//! The Docker executor: runs `docker` tasks (reference §3.3) as containers of the machine's Docker
//! engine, through bollard.
//!
//! ```text
//!  RunRequest ─▶ plan (pure: params, network, limits, mounts, labels) ─▶ image: local? else pull
//!      ─▶ create `caravel-<node>-<execution>` ─▶ attach ─▶ start ─▶ stdout/stderr files (capped)
//!      ─▶ wait ─▶ exit code (non-zero is a normal result) │ timeout / cancel ─▶ stop (grace) ─▶ kill
//!      ─▶ OOM-killed? ─▶ MemoryLimit                       └─ always: remove the container
//! ```
//!
//! * Params: `Image` (tag or digest), `Entrypoint` (replaces the image's), `Parameters` (the
//!   command), `EnvironmentVariables` (`K=V`; merged into the task env by [`crate::executor`]),
//!   `WorkingDirectory` (absolute).
//! * Image: used when the engine has it, otherwise pulled; when it is absent and no registry
//!   answers, the run fails at once saying how to load it.
//! * Limits: CPU as `NanoCpus`, memory as `Memory` = `MemorySwap` (no swap). GPUs through a device
//!   request (NVIDIA driver) only when the node has GPUs. Disk limits are **not** applied: the
//!   engine supports `--storage-opt size` only on overlay2-over-xfs-with-pquota, devicemapper, btrfs
//!   and zfs, and refuses to create the container elsewhere; the scheduler still counts disk.
//! * Network (`Task.Network.Type`), as Bacalhau v1.7+: None (and unset) → `none`, Default/Bridge →
//!   `bridge`, Host/Full → `host`; HTTP (domain allow-list through a proxy) is refused at submit.
//! * Inputs are bind-mounted at their targets, read-only unless the input says otherwise; each
//!   `ResultPath` directory is bind-mounted read-write.
//! * Containers carry [`LABEL_NODE`], [`LABEL_EXECUTION`] and [`LABEL_JOB`]; they are removed after
//!   the run (also on error and cancellation), and containers left by an earlier process of the same
//!   node are removed when the executor starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::AttachContainerResults;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::executor::{ExecError, Executor, RunRequest, RunResult};
use crate::metrics::{ComputeMetrics, PullOutcome};

/// Label holding the id of the node that created a container.
pub const LABEL_NODE: &str = "caravel.node-id";
/// Label holding the execution id of a container.
pub const LABEL_EXECUTION: &str = "caravel.execution-id";
/// Label holding the job id of a container.
pub const LABEL_JOB: &str = "caravel.job-id";
/// Seconds a container gets between SIGTERM and SIGKILL when a run is stopped.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest image pull.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the engine has to answer the availability probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the log copy may lag behind the container's exit.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of the Docker executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptions {
    /// Labels every container (and finds leftovers).
    pub node_id: String,
    pub stop_grace: Duration,
    pub pull_timeout: Duration,
    /// GPUs of the node (0: device requests are never made).
    pub gpus: u64,
    pub sandbox: Sandbox,
}

impl DockerOptions {
    pub fn new(node_id: impl Into<String>) -> Self {
        DockerOptions {
            node_id: node_id.into(),
            stop_grace: DEFAULT_STOP_GRACE,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            gpus: 0,
            sandbox: Sandbox::default(),
        }
    }
}

/// How containers are confined, besides what every container gets: `no-new-privileges`, every
/// capability dropped but [`CAPABILITIES`], no host path but the execution's inputs and results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Processes (threads included) one container may have; 0 = the engine's default (none).
    pub pids_limit: u64,
    /// `uid[:gid]` (or a name the image knows) to run as; empty = the image's user.
    pub user: String,
    /// A read-only root filesystem, with a small writable tmpfs at `/tmp`.
    pub read_only_rootfs: bool,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            pids_limit: 1024,
            user: String::new(),
            read_only_rootfs: false,
        }
    }
}

/// The capabilities a job container keeps (Docker's default set less NET_RAW, MKNOD, AUDIT_WRITE,
/// SYS_CHROOT, SETPCAP, SETFCAP, NET_BIND_SERVICE, KILL and FSETID): enough for an image that
/// runs as root to own and write its files and to drop to another user, nothing more.
pub const CAPABILITIES: &[&str] = &["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"];

/// Runs `docker` tasks. Cheap to clone.
#[derive(Clone)]
pub struct DockerExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    opts: DockerOptions,
    metrics: ComputeMetrics,
    /// Connected (and version-negotiated) on first use in the runtime that runs jobs.
    client: tokio::sync::OnceCell<Docker>,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("node_id", &self.inner.opts.node_id)
            .finish_non_exhaustive()
    }
}

fn engine_err(action: &str) -> impl FnOnce(bollard::errors::Error) -> ExecError + '_ {
    move |e| ExecError::Engine {
        action: action.to_string(),
        reason: describe(&e),
    }
}

/// A bollard error in plain words (the engine's own message when it sent one).
fn describe(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} (HTTP {status_code})", message.trim()),
        bollard::errors::Error::DockerStreamError { error } => error.trim().to_string(),
        other => crate::s3::error_chain(other),
    }
}

/// Connects to the engine named by `DOCKER_HOST` (default: the local socket), negotiates the API
/// version (older engines refuse bollard's default) and pings it.
async fn connect() -> Result<Docker, ExecError> {
    let docker = Docker::connect_with_defaults()
        .map_err(engine_err("connecting to the engine"))?
        .negotiate_version()
        .await
        .map_err(engine_err("negotiating the API version"))?;
    docker
        .ping()
        .await
        .map_err(engine_err("pinging the engine"))?;
    Ok(docker)
}

/// Removes every container labelled with `node_id`; returns how many there were.
async fn remove_node_containers(docker: &Docker, node_id: &str) -> Result<usize, ExecError> {
    let ids = list_node_containers(docker, node_id).await?;
    for id in &ids {
        let _ = docker
            .remove_container(
                id,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await;
    }
    Ok(ids.len())
}

async fn list_node_containers(docker: &Docker, node_id: &str) -> Result<Vec<String>, ExecError> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={node_id}")])]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(engine_err("listing containers"))?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}

impl DockerExecutor {
    /// Checks, without needing an async context, that a Docker engine answers, and removes
    /// containers an earlier process of this node left behind. `Err` says why Docker cannot be used.
    pub fn detect(opts: DockerOptions, metrics: ComputeMetrics) -> Result<Self, String> {
        let node = opts.node_id.clone();
        // A private runtime on its own thread: this may be called from inside another runtime.
        let probe = std::thread::Builder::new()
            .name("caravel-docker-probe".into())
            .spawn(move || -> Result<usize, String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime for the probe: {e}"))?;
                rt.block_on(async {
                    let docker = tokio::time::timeout(PROBE_TIMEOUT, connect())
                        .await
                        .map_err(|_| {
                            format!(
                                "the engine did not answer within {} s",
                                PROBE_TIMEOUT.as_secs()
                            )
                        })?
                        .map_err(|e| e.to_string())?;
                    remove_node_containers(&docker, &node)
                        .await
                        .map_err(|e| e.to_string())
                })
            })
            .map_err(|e| format!("cannot start the probe thread: {e}"))?;
        let removed = probe
            .join()
            .map_err(|_| "the docker probe panicked".to_string())??;
        if removed > 0 {
            tracing::info!(
                removed,
                node = %opts.node_id,
                "removed containers left by an earlier run of this node"
            );
        }
        Ok(DockerExecutor {
            inner: Arc::new(Inner {
                opts,
                metrics,
                client: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// Connects now (in the current runtime) and removes leftovers of this node.
    pub async fn connect(opts: DockerOptions, metrics: ComputeMetrics) -> Result<Self, ExecError> {
        let docker = connect().await?;
        let removed = remove_node_containers(&docker, &opts.node_id).await?;
        if removed > 0 {
            tracing::info!(removed, node = %opts.node_id, "removed leftover containers");
        }
        Ok(DockerExecutor {
            inner: Arc::new(Inner {
                opts,
                metrics,
                client: tokio::sync::OnceCell::new_with(Some(docker)),
            }),
        })
    }

    pub fn options(&self) -> &DockerOptions {
        &self.inner.opts
    }

    async fn client(&self) -> Result<&Docker, ExecError> {
        self.inner.client.get_or_try_init(connect).await
    }

    /// Ids of the containers labelled with this node's id (running or not).
    pub async fn node_containers(&self) -> Result<Vec<String>, ExecError> {
        let docker = self.client().await?;
        list_node_containers(docker, &self.inner.opts.node_id).await
    }

    /// Makes `image` available: the engine's copy, else a pull.
    async fn ensure_image(
        &self,
        docker: &Docker,
        image: &str,
        cancel: &CancellationToken,
    ) -> Result<(), ExecError> {
        let metrics = &self.inner.metrics;
        match docker.inspect_image(image).await {
            Ok(_) => {
                metrics.image_pull(PullOutcome::Local);
                return Ok(());
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(engine_err("inspecting the image")(e)),
        }
        let (repo, tag) = split_image(image);
        let opts = CreateImageOptionsBuilder::default()
            .from_image(&repo)
            .tag(&tag)
            .build();
        let pull = async {
            let mut progress = docker.create_image(Some(opts), None, None);
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok::<(), bollard::errors::Error>(())
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return Err(ExecError::Cancelled),
            r = tokio::time::timeout(self.inner.opts.pull_timeout, pull) => r,
        };
        let unavailable = |reason: String| ExecError::ImageUnavailable {
            image: image.to_string(),
            reason,
        };
        let result = match outcome {
            Ok(Ok(())) => match docker.inspect_image(image).await {
                Ok(_) => Ok(()),
                Err(e) => Err(unavailable(format!(
                    "the pull ended but the engine does not show the image: {}",
                    describe(&e)
                ))),
            },
            Ok(Err(e)) => Err(unavailable(describe(&e))),
            Err(_) => Err(unavailable(format!(
                "the pull did not finish within {} s",
                self.inner.opts.pull_timeout.as_secs()
            ))),
        };
        metrics.image_pull(if result.is_ok() {
            PullOutcome::Pulled
        } else {
            PullOutcome::Failed
        });
        result
    }

    async fn run_container(
        &self,
        req: RunRequest,
        cancel: CancellationToken,
    ) -> Result<RunResult, ExecError> {
        if cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let opts = &self.inner.opts;
        let plan = plan(&req, &opts.node_id, opts.gpus, &opts.sandbox)?;
        let docker = self.client().await?;
        self.ensure_image(docker, &plan.image, &cancel).await?;
        for r in &req.results {
            std::fs::create_dir_all(&r.host_dir)
                .map_err(|e| ExecError::Setup(format!("creating {}: {e}", r.host_dir.display())))?;
        }
        let name = container_name(&opts.node_id, &req.execution_id);
        // A container of the same execution from an earlier attempt would block the name.
        let _ = docker
            .remove_container(
                &name,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await;
        let started = Instant::now();
        docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                plan.body,
            )
            .await
            .map_err(engine_err("creating the container"))?;
        let mut removal = Removal {
            docker: docker.clone(),
            name: name.clone(),
            done: false,
        };
        // Attached before the start, as `docker run` does: following the logs of a container that
        // exits at once can miss its output on older engines.
        let attached = docker
            .attach_container(
                &name,
                Some(
                    AttachContainerOptionsBuilder::default()
                        .stream(true)
                        .stdout(true)
                        .stderr(true)
                        .build(),
                ),
            )
            .await
            .map_err(engine_err("attaching to the container"))?;
        let logs = tokio::spawn(copy_output(
            attached,
            req.stdout_path.clone(),
            req.stderr_path.clone(),
            req.max_output_bytes,
        ));
        if let Err(e) = docker.start_container(&name, None).await {
            logs.abort();
            removal.remove().await;
            return Err(engine_err("starting the container")(e));
        }
        self.inner.metrics.container_started(started.elapsed());

        let wait = async {
            let mut s = docker.wait_container(
                &name,
                Some(
                    WaitContainerOptionsBuilder::default()
                        .condition("not-running")
                        .build(),
                ),
            );
            s.next().await
        };
        let timeout = async {
            if req.timeout_secs == 0 {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(Duration::from_secs(req.timeout_secs)).await
            }
        };
        let ended = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(ExecError::Cancelled),
            _ = timeout => Err(ExecError::Timeout(req.timeout_secs)),
            w = wait => Ok(w),
        };
        let waited = match ended {
            Ok(w) => w,
            Err(stop) => {
                self.stop(docker, &name).await;
                let _ = tokio::time::timeout(LOG_DRAIN_TIMEOUT, logs).await;
                removal.remove().await;
                return Err(stop);
            }
        };
        let exit_code = match waited {
            Some(Ok(resp)) => resp.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => {
                logs.abort();
                removal.remove().await;
                return Err(engine_err("waiting for the container")(e));
            }
            None => {
                logs.abort();
                removal.remove().await;
                return Err(ExecError::Engine {
                    action: "waiting for the container".into(),
                    reason: "the engine ended the wait without an exit code".into(),
                });
            }
        };
        let capped = match tokio::time::timeout(LOG_DRAIN_TIMEOUT, logs).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ExecError::Internal(format!("the log copy failed: {e}"))),
            Err(_) => Err(ExecError::Internal(format!(
                "the container's logs did not end within {} s of its exit",
                LOG_DRAIN_TIMEOUT.as_secs()
            ))),
        };
        let oom = docker
            .inspect_container(&name, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
        removal.remove().await;
        let (stdout_capped, stderr_capped) = capped?;
        if oom {
            return Err(ExecError::MemoryLimit(req.memory_limit));
        }
        Ok(RunResult {
            exit_code: i32::try_from(exit_code).unwrap_or(-1),
            stdout_capped,
            stderr_capped,
        })
    }

    /// `docker stop` (SIGTERM, then SIGKILL after the grace period), then SIGKILL in case the stop
    /// request itself failed.
    async fn stop(&self, docker: &Docker, name: &str) {
        let grace = i32::try_from(self.inner.opts.stop_grace.as_secs()).unwrap_or(i32::MAX);
        if let Err(e) = docker
            .stop_container(
                name,
                Some(StopContainerOptionsBuilder::default().t(grace).build()),
            )
            .await
        {
            tracing::debug!(container = name, error = %describe(&e), "stop failed; killing");
        }
        let _ = docker
            .kill_container(
                name,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("SIGKILL")
                        .build(),
                ),
            )
            .await;
    }
}

impl Executor for DockerExecutor {
    fn engines(&self) -> Vec<String> {
        vec!["docker".into()]
    }

    fn run(
        &self,
        req: RunRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RunResult, ExecError>> {
        Box::pin(self.run_container(req, cancel))
    }
}

/// Removes a container when the run ends, including when the run's future is dropped.
struct Removal {
    docker: Docker,
    name: String,
    done: bool,
}

impl Removal {
    async fn remove(&mut self) {
        self.done = true;
        remove_container(&self.docker, &self.name).await;
    }
}

async fn remove_container(docker: &Docker, name: &str) {
    if let Err(e) = docker
        .remove_container(
            name,
            Some(
                RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
    {
        tracing::warn!(container = name, error = %describe(&e), "cannot remove the container; it is removed at the next start of this node");
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (docker, name) = (self.docker.clone(), std::mem::take(&mut self.name));
            rt.spawn(async move { remove_container(&docker, &name).await });
        }
    }
}

/// A file that keeps the first `cap` bytes written to it.
struct CappedFile {
    file: tokio::fs::File,
    left: u64,
    capped: bool,
    path: PathBuf,
}

impl CappedFile {
    async fn create(path: &Path, cap: u64) -> Result<Self, ExecError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ExecError::Setup(format!("creating {}: {e}", path.display())))?;
        Ok(CappedFile {
            file,
            left: cap,
            capped: false,
            path: path.to_path_buf(),
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ExecError> {
        let n = (data.len() as u64).min(self.left) as usize;
        if n < data.len() {
            self.capped = true;
        }
        if n > 0 {
            self.file
                .write_all(&data[..n])
                .await
                .map_err(|e| ExecError::Setup(format!("writing {}: {e}", self.path.display())))?;
            self.left -= n as u64;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<bool, ExecError> {
        self.file
            .flush()
            .await
            .map_err(|e| ExecError::Setup(format!("writing {}: {e}", self.path.display())))?;
        Ok(self.capped)
    }
}

/// Copies an attached container's output into the stdout and stderr files until it ends (when the
/// container stops); returns whether each was capped.
async fn copy_output(
    attached: AttachContainerResults,
    stdout: PathBuf,
    stderr: PathBuf,
    cap: u64,
) -> Result<(bool, bool), ExecError> {
    // Keep the (unused) input half open while reading, so the engine sees no early hang-up.
    let AttachContainerResults {
        output: mut stream,
        input: _input,
    } = attached;
    let mut out = CappedFile::create(&stdout, cap).await?;
    let mut err = CappedFile::create(&stderr, cap).await?;
    while let Some(item) = stream.next().await {
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                out.write(&message).await?
            }
            Ok(LogOutput::StdErr { message }) => err.write(&message).await?,
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => return Err(engine_err("reading the container's output")(e)),
        }
    }
    Ok((out.finish().await?, err.finish().await?))
}

/// A container to create.
#[derive(Debug, Clone)]
struct Plan {
    image: String,
    body: ContainerCreateBody,
}

/// `caravel-<node>-<execution>`, with characters Docker refuses in names replaced by `-`.
pub fn container_name(node_id: &str, execution_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!("caravel-{}-{}", clean(node_id), clean(execution_id))
}

/// `repo[:tag]` or `repo@digest` → (repo, tag or digest); no tag means `latest` (an empty tag
/// would pull every tag).
pub fn split_image(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            image[slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// The Docker network mode of a Bacalhau network type.
pub fn network_mode(kind: &str) -> Result<&'static str, ExecError> {
    match caravel_model::spec::network_class(kind) {
        Some("None") => Ok("none"),
        Some("Bridge") => Ok("bridge"),
        Some("Host") => Ok("host"),
        _ => Err(ExecError::NetworkUnsupported(kind.trim().to_string())),
    }
}

/// Everything about the container that follows from the request alone.
fn plan(
    req: &RunRequest,
    node_id: &str,
    node_gpus: u64,
    sandbox: &Sandbox,
) -> Result<Plan, ExecError> {
    let params =
        caravel_model::params::DockerParams::try_from(&req.task.engine).map_err(|errs| {
            ExecError::BadParams(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
    let image = params.image;
    let entrypoint = params.entrypoint;
    let working_dir = params.working_directory;
    let network = network_mode(&req.task.network.kind)?;
    let res = &req.task.resources;
    let nano_cpus = match caravel_model::quantity::parse_cpu(&res.cpu) {
        Ok(milli) if milli > 0 && !res.cpu.trim().is_empty() => {
            Some(i64::try_from(milli.saturating_mul(1_000_000)).unwrap_or(i64::MAX))
        }
        _ => None,
    };
    let gpus: u64 = res.gpu.trim().parse().unwrap_or(0);
    let device_requests = if gpus == 0 {
        None
    } else if gpus > node_gpus {
        return Err(ExecError::NotEnoughGpus {
            requested: gpus,
            available: node_gpus,
        });
    } else {
        Some(vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: Some(i64::try_from(gpus).unwrap_or(i64::MAX)),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }])
    };
    let memory =
        (req.memory_limit > 0).then(|| i64::try_from(req.memory_limit).unwrap_or(i64::MAX));
    let mut mounts = Vec::new();
    for i in &req.inputs {
        mounts.push(Mount {
            target: Some(i.target.clone()),
            source: Some(i.host_path.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(i.read_only),
            ..Default::default()
        });
    }
    for r in &req.results {
        mounts.push(Mount {
            target: Some(r.guest_path.clone()),
            source: Some(r.host_dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        });
    }
    // Ports (Bridge networking): each container port published on the host port the node chose
    // for it (see `executor::port_env`); with Host networking the task binds them itself.
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<bollard::models::PortBinding>>> = HashMap::new();
    if network == "bridge" {
        for p in &req.task.network.ports {
            let (port_var, host_var) = caravel_model::spec::port_env_names(&p.name);
            let (Some(inside), Some(host)) = (req.env.get(&port_var), req.env.get(&host_var))
            else {
                return Err(ExecError::BadParams(format!(
                    "port {} has no host port assigned",
                    p.name
                )));
            };
            let key = format!("{inside}/tcp");
            exposed.push(key.clone());
            bindings.insert(
                key,
                Some(vec![bollard::models::PortBinding {
                    host_ip: Some(if p.host_network.is_empty() {
                        "0.0.0.0".to_string()
                    } else {
                        p.host_network.clone()
                    }),
                    host_port: Some(host.clone()),
                }]),
            );
        }
    }
    let labels = HashMap::from([
        (LABEL_NODE.to_string(), node_id.to_string()),
        (LABEL_EXECUTION.to_string(), req.execution_id.clone()),
        (LABEL_JOB.to_string(), req.job_id.clone()),
    ]);
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        entrypoint: (!entrypoint.is_empty()).then_some(entrypoint),
        cmd: (!req.args.is_empty()).then(|| req.args.clone()),
        env: Some(req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir,
        labels: Some(labels),
        tty: Some(false),
        open_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            memory,
            memory_swap: memory,
            nano_cpus,
            network_mode: Some(network.to_string()),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            mounts: Some(mounts),
            device_requests,
            auto_remove: Some(false),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            pids_limit: (sandbox.pids_limit > 0)
                .then(|| i64::try_from(sandbox.pids_limit).unwrap_or(i64::MAX)),
            readonly_rootfs: Some(sandbox.read_only_rootfs),
            tmpfs: sandbox.read_only_rootfs.then(|| {
                HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev,size=256m".to_string())])
            }),
            privileged: Some(false),
            ..Default::default()
        }),
        user: (!sandbox.user.is_empty()).then(|| sandbox.user.clone()),
        ..Default::default()
    };
    Ok(Plan { image, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{PreparedInput, ResultDir};
    use caravel_model::spec::{SpecConfig, Task};

    fn request(task: Task) -> RunRequest {
        RunRequest {
            execution_id: "e-1".into(),
            job_id: "j-1".into(),
            task,
            inputs: vec![PreparedInput {
                host_path: "/data/in".into(),
                target: "/inputs".into(),
                read_only: true,
            }],
            results: vec![ResultDir {
                name: "outputs".into(),
                host_dir: "/data/out".into(),
                guest_path: "/outputs".into(),
            }],
            stdout_path: "/x/stdout".into(),
            stderr_path: "/x/stderr".into(),
            timeout_secs: 0,
            memory_limit: 64 << 20,
            max_output_bytes: 1 << 20,
            env: [("A".to_string(), "1".to_string())].into(),
            args: vec!["-c".into(), "echo hi".into()],
            scratch_dir: "/x/scratch".into(),
        }
    }

    #[test]
    fn image_references_split_into_repo_and_tag_or_digest() {
        assert_eq!(split_image("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_image("foo:1"), ("foo".into(), "1".into()));
        assert_eq!(
            split_image("localhost:5000/x/y:2"),
            ("localhost:5000/x/y".into(), "2".into())
        );
        assert_eq!(
            split_image("localhost:5000/x"),
            ("localhost:5000/x".into(), "latest".into())
        );
        assert_eq!(
            split_image("ubuntu@sha256:abc"),
            ("ubuntu".into(), "sha256:abc".into())
        );
    }

    #[test]
    fn network_types_map_to_modes_and_http_is_refused() {
        assert_eq!(network_mode("").unwrap(), "none");
        assert_eq!(network_mode("None").unwrap(), "none");
        assert_eq!(network_mode("Host").unwrap(), "host");
        assert_eq!(network_mode("Full").unwrap(), "host");
        assert_eq!(network_mode("Default").unwrap(), "bridge");
        assert_eq!(network_mode("bridge").unwrap(), "bridge");
        let e = network_mode("HTTP").unwrap_err().to_string();
        assert!(e.contains("\"HTTP\" is not supported"), "{e}");
    }

    #[test]
    fn the_plan_carries_params_limits_mounts_and_labels() {
        let mut task = Task {
            engine: SpecConfig::new("docker")
                .with("Image", "caravel-busybox:latest")
                .with("Entrypoint", serde_json::json!(["/bin/sh"]))
                .with("WorkingDirectory", "/work"),
            ..Default::default()
        };
        task.resources.cpu = "500m".into();
        let p = plan(&request(task), "n1", 0, &Sandbox::default()).unwrap();
        assert_eq!(p.image, "caravel-busybox:latest");
        let b = &p.body;
        assert_eq!(b.entrypoint.as_deref(), Some(&["/bin/sh".to_string()][..]));
        assert_eq!(b.cmd.as_ref().unwrap(), &vec!["-c", "echo hi"]);
        assert_eq!(b.env.as_ref().unwrap(), &vec!["A=1"]);
        assert_eq!(b.working_dir.as_deref(), Some("/work"));
        assert_eq!(b.labels.as_ref().unwrap()[LABEL_NODE], "n1");
        assert_eq!(b.labels.as_ref().unwrap()[LABEL_EXECUTION], "e-1");
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(64 << 20));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert!(h.device_requests.is_none());
        let m = h.mounts.as_ref().unwrap();
        assert_eq!(
            (m[0].target.as_deref(), m[0].read_only),
            (Some("/inputs"), Some(true))
        );
        assert_eq!(
            (m[1].source.as_deref(), m[1].read_only),
            (Some("/data/out"), Some(false))
        );
        // Confined by default: no new privileges, minimal capabilities, a PID limit.
        assert_eq!(
            h.security_opt.as_deref(),
            Some(&["no-new-privileges:true".to_string()][..])
        );
        assert_eq!(h.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(h.cap_add.as_ref().unwrap().len(), CAPABILITIES.len());
        assert_eq!(h.pids_limit, Some(1024));
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.readonly_rootfs, Some(false));
        assert!(b.user.is_none());
        assert_eq!(m.len(), 2, "no host path but the inputs and results");
        let strict = Sandbox {
            pids_limit: 64,
            user: "65534:65534".into(),
            read_only_rootfs: true,
        };
        let mut t2 = Task {
            engine: SpecConfig::new("docker").with("Image", "busybox"),
            ..Default::default()
        };
        t2.resources.memory = "8Mb".into();
        let p = plan(&request(t2), "n", 0, &strict).unwrap();
        let h = p.body.host_config.as_ref().unwrap();
        assert_eq!(p.body.user.as_deref(), Some("65534:65534"));
        assert_eq!((h.pids_limit, h.readonly_rootfs), (Some(64), Some(true)));
        assert!(h.tmpfs.as_ref().unwrap().contains_key("/tmp"));
    }

    #[test]
    fn bad_params_and_missing_gpus_are_refused() {
        let no_image = Task {
            engine: SpecConfig::new("docker"),
            ..Default::default()
        };
        assert!(
            plan(&request(no_image), "n", 0, &Sandbox::default())
                .unwrap_err()
                .to_string()
                .contains("Image is required for docker jobs")
        );
        let relative = Task {
            engine: SpecConfig::new("docker")
                .with("Image", "x")
                .with("WorkingDirectory", "work"),
            ..Default::default()
        };
        assert!(matches!(
            plan(&request(relative), "n", 0, &Sandbox::default()),
            Err(ExecError::BadParams(_))
        ));
        let mut gpu = Task {
            engine: SpecConfig::new("docker").with("Image", "x"),
            ..Default::default()
        };
        gpu.resources.gpu = "1".into();
        assert_eq!(
            plan(&request(gpu.clone()), "n", 0, &Sandbox::default()).unwrap_err(),
            ExecError::NotEnoughGpus {
                requested: 1,
                available: 0
            }
        );
        let p = plan(&request(gpu), "n", 2, &Sandbox::default()).unwrap();
        let dr = p.body.host_config.unwrap().device_requests.unwrap();
        assert_eq!(dr[0].count, Some(1));
    }

    #[test]
    fn container_names_are_docker_safe() {
        assert_eq!(container_name("n 1", "e/2"), "caravel-n-1-e-2");
    }
}
