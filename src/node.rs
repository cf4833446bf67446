//! Starting a node: the orchestrator (Raft store, Raft, leader duties, API) and/or the compute node,
//! joined in a hybrid node by the in-process session seam.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use caravel_cli::{Global, ServeArgs};
use caravel_model::config::Config;
use caravel_raft_store::NodeAddr;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::orchestrator::{Cluster, leader, session};
use crate::raft::{PeerNetwork, Raft, raft_config};

/// This node's Raft id. A single-voter group uses 1; the HA issue assigns ids from `--node-id`.
pub const RAFT_NODE_ID: u64 = 1;

/// A running node.
pub struct RunningNode {
    pub api_addr: SocketAddr,
    pub node_name: String,
    pub cluster: Cluster,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("api_addr", &self.api_addr)
            .finish()
    }
}

impl RunningNode {
    /// Stops every task and Raft, then returns.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        let _ = self.cluster.raft().shutdown().await;
    }
}

/// The node's name: `--name`, else the one kept in the data dir, else a new `n-<uuid>`.
fn node_name(data_dir: &Path, requested: Option<&str>, provider: &str) -> anyhow::Result<String> {
    let file = data_dir.join("node_name");
    if let Ok(existing) = std::fs::read_to_string(&file) {
        let existing = existing.trim().to_string();
        if let Some(r) = requested
            && r != existing
        {
            eprintln!("Warning: this data dir belongs to node {existing}; ignoring --name {r}");
        }
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    let name = match (requested, provider) {
        (Some(r), _) => r.to_string(),
        (None, "hostname") => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| caravel_model::ids::new_node_id()),
        _ => caravel_model::ids::new_node_id(),
    };
    std::fs::write(&file, &name).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(name)
}

/// Starts a node from a config. The API listens on `config.api` (port 0 picks a free port).
pub async fn start(
    config: Config,
    orchestrator: bool,
    compute: bool,
    name: Option<&str>,
) -> anyhow::Result<RunningNode> {
    if !orchestrator {
        bail!(
            "a compute-only node needs the QUIC session transport, which is not built yet; run `caravel serve --orchestrator --compute` (a hybrid node) for now"
        );
    }
    let data_dir = PathBuf::from(&config.data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let node_name = node_name(&data_dir, name, &config.name_provider)?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let bind: SocketAddr = format!("{}:{}", config.api.host, config.api.port)
        .parse()
        .with_context(|| {
            format!(
                "API.Host {:?} and API.Port {} do not make an address",
                config.api.host, config.api.port
            )
        })?;
    let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("cannot listen on {bind} for the API; is another node running? choose another with --api-port"))?;
    let api_addr = listener.local_addr()?;

    let raft_dir = data_dir.join("orchestrator").join("raft");
    std::fs::create_dir_all(&raft_dir)?;
    let (log_store, sm_store) = caravel_raft_store::open(&raft_dir)
        .with_context(|| format!("cannot open the Raft store in {}", raft_dir.display()))?;
    let state = sm_store.state();
    let committed = log_store.committed_index();
    let applied = sm_store.subscribe_applied();
    let raft_cfg = Arc::new(
        raft_config()
            .validate()
            .context("invalid Raft configuration")?,
    );
    let raft = Raft::new(RAFT_NODE_ID, raft_cfg, PeerNetwork, log_store, sm_store)
        .await
        .context("cannot start Raft")?;
    if !raft.is_initialized().await.context("reading Raft state")? {
        let mut members = std::collections::BTreeMap::new();
        members.insert(
            RAFT_NODE_ID,
            NodeAddr {
                raft_addr: String::new(),
                api_addr: api_addr.to_string(),
            },
        );
        raft.initialize(members)
            .await
            .context("cannot initialise the Raft group")?;
    }
    let metrics = Arc::new(Metrics::new());
    metrics.track_commit_index(committed);
    let cluster = Cluster::new(
        raft,
        RAFT_NODE_ID,
        state,
        applied,
        metrics,
        Duration::from_secs(config.orchestrator.disconnect_timeout_secs.max(1)),
    );
    tasks.spawn(leader::run(cluster.clone(), shutdown.clone()));

    let mut orchestrator_info = caravel_model::NodeInfo {
        node_id: node_name.clone(),
        node_type: "Requester".into(),
        labels: config.labels.clone(),
        supported_protocols: vec!["caravel/1".into()],
        bacalhau_version: caravel_model::node::BuildVersionInfo::current(),
        ..Default::default()
    };

    if compute {
        let opts = caravel_compute::ComputeOptions::from_config(node_name.clone(), &config)?;
        let node = opts.build().context("cannot start the compute node")?;
        orchestrator_info = node.node_info();
        orchestrator_info.node_type = "Hybrid".into();
        let (oend, cend) = caravel_net::inproc::pair(caravel_net::inproc::DEFAULT_CAPACITY);
        let c = cluster.clone();
        let s = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = session::serve(c, oend, s).await {
                tracing::error!(error = %e, "in-process compute session ended");
            }
        });
        let s = shutdown.clone();
        tasks.spawn(async move { node.run(cend.inbox, cend.outbox, s).await });
    }

    let app = crate::api::router(crate::api::ApiState {
        cluster: cluster.clone(),
        node_info: orchestrator_info,
        config: config.clone(),
    });
    let s = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "API server failed");
        }
    });
    Ok(RunningNode {
        api_addr,
        node_name,
        cluster,
        shutdown,
        tasks,
    })
}

pub fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CARAVEL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},openraft=warn,wasmtime=warn,cranelift=warn"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `caravel serve`.
pub async fn serve(global: &Global, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = caravel_cli::config::load(global)?;
    if let Some(p) = global.api_port {
        config.api.port = p;
    }
    if let Some(h) = &global.api_host {
        config.api.host = h.clone();
    }
    let orchestrator = args.orchestrator
        || config.orchestrator.enabled
        || !(args.compute || config.compute.enabled);
    let compute = args.compute || config.compute.enabled;
    init_tracing(&config.logging.level);
    let node = start(config, orchestrator, compute, args.name.as_deref()).await?;
    eprintln!(
        "Caravel node {} is running ({}). API: http://{}\n\nTo use it:\n\texport CARAVEL_API_HOST={} CARAVEL_API_PORT={}\n\tcaravel node list",
        node.node_name,
        match (orchestrator, compute) {
            (true, true) => "orchestrator + compute",
            (true, false) => "orchestrator",
            _ => "compute",
        },
        node.api_addr,
        node.api_addr.ip(),
        node.api_addr.port()
    );
    wait_for_signal().await;
    eprintln!("shutting down…");
    node.stop().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
