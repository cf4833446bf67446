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
use crate::raft::{PeerHandler, PeerNetwork, Raft, RaftTiming, SelfAddr, raft_config, raft_id};

/// One `--peers` entry: `ID@HOST:PORT`.
pub fn parse_peer(entry: &str) -> anyhow::Result<(String, String)> {
    let (id, addr) = entry.trim().split_once('@').with_context(|| {
        format!("peer {entry:?} is not ID@HOST:PORT (e.g. orch-1@10.0.0.1:1235)")
    })?;
    caravel_net::tls::check_node_id(id).map_err(|e| anyhow::anyhow!("peer {entry:?}: {e}"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("peer {entry:?} has no port (ID@HOST:PORT)"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!("peer {entry:?}: {addr:?} is not HOST:PORT");
    }
    Ok((id.to_string(), addr.to_string()))
}

/// A running node.
pub struct RunningNode {
    pub api_addr: SocketAddr,
    pub node_name: String,
    pub cluster: Cluster,
    /// Where peers reach this orchestrator's Raft listener (None without TLS).
    pub raft_addr: Option<SocketAddr>,
    /// Where compute nodes dial their sessions (None without TLS).
    pub compute_addr: Option<SocketAddr>,
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
        if let Some(c) = self.cluster.peers() {
            c.close();
        }
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
    write_durably(&file, name.as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(name)
}

/// Writes a small state file so that a crash leaves the old content or the new, never a torn or
/// empty file: a temporary file beside it, fsync, rename over it, fsync of the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The API's authorizer from `API.Auth`, with the start-up warning for anonymous access.
fn authorizer(config: &Config) -> anyhow::Result<Arc<crate::api::auth::Authorizer>> {
    let a = crate::api::auth::Authorizer::new(&config.api.auth).context("API.Auth")?;
    if let Some(w) = a.warning() {
        tracing::warn!("{w}");
        eprintln!("Warning: {w}");
    }
    Ok(Arc::new(a))
}

/// Keeps the TLS deny list equal to the replicated one, and closes at once the sessions held here
/// of nodes that an operator rejected or deleted (or whose certificate was revoked).
async fn enforce_deny_list(
    cluster: Cluster,
    deny: caravel_net::tls::DenyList,
    shutdown: CancellationToken,
) {
    let mut applied = cluster.subscribe();
    let mut last = None;
    loop {
        let (denied, certs) = cluster.read(|s| (s.security.denied.clone(), s.security.deny_maps()));
        if last.as_ref() != Some(&denied) {
            let (fps, nodes) = certs;
            deny.replace(fps.into_iter().collect(), nodes.into_iter().collect());
            for (node, fingerprint) in cluster.session_fingerprints() {
                let why = cluster.read(|s| {
                    s.security
                        .denial(&node, &fingerprint)
                        .map(|d| d.reason.clone())
                });
                if let Some(reason) = why
                    && cluster.close_session(&node, &reason)
                {
                    tracing::warn!(%node, %reason, "closed the session of a revoked node");
                }
            }
            last = Some(denied);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
        }
    }
}

/// Plain HTTP, or HTTPS when `API.TLS.CertFile` is set (the certificate is re-read when renewed).
fn api_listener(
    tcp: tokio::net::TcpListener,
    config: &Config,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> anyhow::Result<crate::api::listener::ApiListener> {
    let t = &config.api.tls;
    if t.cert_file.is_empty() {
        return Ok(crate::api::listener::ApiListener::Plain(tcp));
    }
    let cert =
        crate::api::listener::ReloadingCert::load(Path::new(&t.cert_file), Path::new(&t.key_file))
            .context("API.TLS.CertFile / API.TLS.KeyFile")?;
    cert.clone().watch(shutdown.clone());
    metrics.track_api_certificate(cert.clone());
    Ok(crate::api::listener::ApiListener::tls(
        tcp,
        cert,
        shutdown.clone(),
    )?)
}

/// Starts a node from a config. The API listens on `config.api` (port 0 picks a free port).
pub async fn start(
    config: Config,
    orchestrator: bool,
    compute: bool,
    name: Option<&str>,
) -> anyhow::Result<RunningNode> {
    if !orchestrator {
        bail!("node::start runs an orchestrator; a compute-only node runs through serve_compute");
    }
    let data_dir = PathBuf::from(&config.data_dir);
    // From here to "database opened" and "state machine loaded": what a restart costs.
    tracing::info!(data_dir = %data_dir.display(), "starting");
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
    let authorizer = authorizer(&config)?;
    let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("cannot listen on {bind} for the API; is another node running? choose another with --api-port"))?;
    let api_addr = listener.local_addr()?;

    // Mutual TLS for QUIC: required as soon as there is more than one orchestrator.
    let tls = &config.tls;
    let identity = match (tls.ca.is_empty(), tls.cert.is_empty(), tls.key.is_empty()) {
        (true, true, true) => None,
        (false, false, false) => Some(
            caravel_net::tls::Identity::load(
                Path::new(&tls.ca),
                Path::new(&tls.cert),
                Path::new(&tls.key),
            )
            .context("cannot load the TLS identity")?,
        ),
        _ => bail!(
            "set all three of --tls-ca, --tls-cert and --tls-key (TLS.CA, TLS.Cert, TLS.Key), or none"
        ),
    };
    if let Some(id) = &identity {
        id.require_role(caravel_net::tls::Role::Orchestrator)?;
        id.watch(shutdown.clone());
    }
    let peers = config
        .orchestrator
        .peers
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| parse_peer(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !peers.is_empty() && identity.is_none() {
        bail!(
            "orchestrators talk over mutual-TLS QUIC: give --tls-ca, --tls-cert and --tls-key (make them with caravel cert ca and caravel cert issue)"
        );
    }
    let me_in_peers = peers.iter().find(|(id, _)| *id == node_name).cloned();

    let raft_dir = data_dir.join("orchestrator").join("raft");
    std::fs::create_dir_all(&raft_dir)?;
    let (log_store, sm_store) = caravel_raft_store::open(&raft_dir)
        .with_context(|| format!("cannot open the Raft store in {}", raft_dir.display()))?;
    let state = sm_store.state();
    let committed = log_store.committed_index();
    let changes = sm_store.clone();
    let o = &config.orchestrator;
    let timing = RaftTiming {
        heartbeat_ms: o.heartbeat_millis.max(10),
        election_min_ms: o
            .election_timeout_millis
            .max(3 * o.heartbeat_millis.max(10)),
        election_max_ms: 2 * o
            .election_timeout_millis
            .max(3 * o.heartbeat_millis.max(10)),
    };
    let raft_cfg = Arc::new(
        raft_config(timing)
            .validate()
            .context("invalid Raft configuration")?,
    );
    // One QUIC endpoint answers peers and calls them, from the advertised Raft port.
    let server = match &identity {
        Some(id) => {
            let bind: SocketAddr = format!("{}:{}", o.raft_host, o.raft_port)
                .parse()
                .with_context(|| {
                    format!(
                        "Orchestrator.RaftHost {:?} and RaftPort {} do not make an address",
                        o.raft_host, o.raft_port
                    )
                })?;
            Some(
                caravel_net::rpc::Server::bind(
                    bind,
                    id,
                    caravel_net::rpc::RAFT_ALPN,
                    caravel_net::rpc::TransportOptions::default(),
                )
                .with_context(|| {
                    format!(
                        "cannot listen for Raft on {bind} (UDP); is another orchestrator using --raft-port {}?",
                        bind.port()
                    )
                })?,
            )
        }
        None => None,
    };
    let client = server.as_ref().map(|s| s.client());
    let my_id = raft_id(&node_name);
    let entry_cache = log_store.cache();
    let contact = crate::raft::LeaderContact::default();
    let raft = Raft::new(
        my_id,
        raft_cfg,
        PeerNetwork::new(client.clone(), entry_cache.clone(), contact.clone()),
        log_store,
        sm_store,
    )
    .await
    .context("cannot start Raft")?;

    let cluster_slot = Arc::new(std::sync::OnceLock::new());
    let metrics = Arc::new(Metrics::new());
    let raft_addr = server.as_ref().map(|s| s.local_addr());
    let advertised = match (&me_in_peers, raft_addr) {
        (Some((_, a)), _) => a.clone(),
        (None, Some(local)) if local.ip().is_unspecified() => {
            format!("127.0.0.1:{}", local.port())
        }
        (None, Some(local)) => local.to_string(),
        (None, None) => String::new(),
    };
    if let Some(server) = &server {
        metrics.track_peers(server.stats());
        let handler = PeerHandler {
            raft: raft.clone(),
            me: SelfAddr {
                name: node_name.clone(),
                api_addr: api_addr.to_string(),
                raft_addr: advertised.clone(),
            },
            bootstrap_peers: peers.iter().map(|(id, _)| id.clone()).collect(),
            cluster: cluster_slot.clone(),
            contact: contact.clone(),
            cache: entry_cache.clone(),
        };
        server.serve(Arc::new(handler), shutdown.clone());
        crate::raft::election_watchdog(raft.clone(), contact, timing);
    }

    if !raft.is_initialized().await.context("reading Raft state")? {
        let mut members = std::collections::BTreeMap::new();
        if peers.is_empty() {
            members.insert(
                my_id,
                NodeAddr::named(&node_name, &advertised, api_addr.to_string()),
            );
        } else if me_in_peers.is_some() {
            // Every initial member proposes the same membership (API addresses are learnt later
            // through status requests), so their first log entries agree.
            for (id, addr) in &peers {
                members.insert(raft_id(id), NodeAddr::named(id, addr, ""));
            }
        }
        if members.is_empty() {
            eprintln!(
                "{node_name} is not in --peers: it starts empty and waits to be added.\nOn the running cluster: caravel cluster add {node_name}@{advertised}"
            );
        } else {
            match raft.initialize(members).await {
                Ok(()) => {}
                // A peer's vote request or append arrived first: the group is forming without us
                // proposing it, which is what initialising was for (openraft's docs).
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => return Err(e).context("cannot initialise the Raft group"),
            }
        }
    }
    metrics.track_commit_index(committed);
    tasks.spawn(metrics.clone().watch_raft(raft.clone(), shutdown.clone()));
    let cluster = Cluster::new(
        raft,
        my_id,
        state,
        changes,
        metrics,
        crate::orchestrator::Links {
            disconnect_timeout: Duration::from_secs(
                config.orchestrator.disconnect_timeout_secs.max(1),
            ),
            peers: client,
            me: SelfAddr {
                name: node_name.clone(),
                api_addr: api_addr.to_string(),
                raft_addr: advertised.clone(),
            },
        },
    );
    let _ = cluster_slot.set(cluster.clone());
    if let Some(id) = &identity {
        let leaf = id.clone();
        cluster
            .metrics()
            .track_certificate("node", Arc::new(move || Some(leaf.leaf_der())));
        let ca = id.ca_pem().to_string();
        cluster.metrics().track_certificate(
            "ca",
            Arc::new(move || caravel_net::tls::pem_certs(&ca).into_iter().next()),
        );
    }
    let deny = caravel_net::tls::DenyList::default();
    tasks.spawn(enforce_deny_list(
        cluster.clone(),
        deny.clone(),
        shutdown.clone(),
    ));
    // Compute nodes dial in over mutual-TLS QUIC (net::session); each session is served like the
    // in-process one.
    let mut compute_addr = None;
    if let Some(id) = &identity {
        let bind: SocketAddr = format!("{}:{}", o.raft_host, o.compute_port)
            .parse()
            .with_context(|| {
                format!("Orchestrator.ComputePort {} is not a port", o.compute_port)
            })?;
        let join = crate::join::Joiner::from_config(&config, &cluster)?;
        if join.is_some() {
            eprintln!(
                "joining by token is on (TLS.CAKey): compute nodes may join with caravel node token create"
            );
        }
        let security = caravel_net::session::SessionSecurity {
            deny: deny.clone(),
            join: join.map(|j| j as Arc<dyn caravel_net::session::JoinHandler>),
        };
        let (server, mut incoming) = caravel_net::session::SessionServer::start(
            bind,
            id,
            caravel_net::session::SessionOptions::default(),
            security,
            shutdown.clone(),
        )
        .with_context(|| {
            format!(
                "cannot listen for compute sessions on {bind} (UDP); choose another with --compute-port"
            )
        })?;
        compute_addr = Some(server.local_addr());
        cluster.metrics().track_sessions(server.stats());
        let c = cluster.clone();
        let s = shutdown.clone();
        let manual_approval = config.orchestrator.node_manager.manual_approval;
        tasks.spawn(async move {
            let _server = server;
            while let Some(session) = tokio::select! {
                biased;
                _ = s.cancelled() => None,
                i = incoming.recv() => i,
            } {
                let (c, s) = (c.clone(), s.clone());
                tracing::info!(node = %session.node_id, remote = %session.remote, "compute node connected over QUIC");
                let admission = session::Admission {
                    fingerprint: session.fingerprint.clone(),
                    manual_approval,
                };
                tokio::spawn(async move {
                    if let Err(e) = session::serve(c, session.end, Some(session.link), admission, s).await {
                        tracing::warn!(node = %session.node_id, error = %e, "compute session ended");
                    }
                });
            }
        });
    }
    tasks.spawn(leader::run(cluster.clone(), shutdown.clone()));
    tasks.spawn(leader::relay_heartbeats(cluster.clone(), shutdown.clone()));

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
        let compute_metrics = node.metrics();
        cluster
            .metrics()
            .register_with(|r| compute_metrics.register(r));
        orchestrator_info = node.node_info();
        orchestrator_info.node_type = "Hybrid".into();
        let (oend, cend) = caravel_net::inproc::pair(caravel_net::inproc::DEFAULT_CAPACITY);
        let c = cluster.clone();
        let s = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = session::serve(c, oend, None, session::Admission::default(), s).await {
                tracing::error!(error = %e, "in-process compute session ended");
            }
        });
        let s = shutdown.clone();
        tasks.spawn(async move { node.run(cend.inbox, cend.outbox, s).await });
    }

    let limits = Arc::new(crate::api::limits::Limits::new(&config.api));
    cluster.metrics().register_with(|r| {
        authorizer.register(r);
        limits.register(r);
    });
    let app = crate::api::router(crate::api::ApiState::new(crate::api::ApiShared {
        cluster: cluster.clone(),
        node_info: orchestrator_info,
        config: config.clone(),
        auth: authorizer,
        limits,
        ca_fingerprint: identity.as_ref().and_then(|i| i.ca_fingerprint().ok()),
    }));
    let listener = api_listener(listener, &config, &shutdown, cluster.metrics())?;
    let s = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<crate::api::auth::ClientAddr>(),
        )
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
        raft_addr,
        compute_addr,
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
    if let Some(id) = args.node_id.as_ref().or(args.name.as_ref()) {
        config.orchestrator.node_id = id.clone();
    }
    if !args.peers.is_empty() {
        config.orchestrator.peers = args.peers.clone();
    }
    if let Some(p) = args.raft_port {
        config.orchestrator.raft_port = p;
    }
    if let Some(p) = args.compute_port {
        config.orchestrator.compute_port = p;
    }
    if !args.orchestrators.is_empty() {
        config.compute.orchestrators = args.orchestrators.clone();
    }
    if let Some(a) = &args.metrics_addr {
        config.compute.metrics_addr = a.clone();
    }
    if let Some(t) = &args.join_token {
        config.compute.auth.token = t.clone();
    }
    for (flag, slot) in [
        (&args.tls_ca, &mut config.tls.ca),
        (&args.tls_cert, &mut config.tls.cert),
        (&args.tls_key, &mut config.tls.key),
    ] {
        if let Some(v) = flag {
            *slot = v.clone();
        }
    }
    let orchestrator = args.orchestrator
        || config.orchestrator.enabled
        || !(args.compute || config.compute.enabled);
    let compute = args.compute || config.compute.enabled;
    init_tracing(&config.logging.level);
    if !orchestrator {
        return serve_compute(
            config,
            args.node_id.as_ref().or(args.name.as_ref()).cloned(),
        )
        .await;
    }
    let name =
        (!config.orchestrator.node_id.is_empty()).then(|| config.orchestrator.node_id.clone());
    let node = start(config, orchestrator, compute, name.as_deref()).await?;
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

/// `caravel serve --compute` without `--orchestrator`: a compute-only node that dials the
/// orchestrators over mutual-TLS QUIC, moves to another when one fails, and resynchronises on every
/// (re)connection (Hello with its last report sequence; the orchestrator answers with the last one it
/// committed; the outbox is replayed past it). Executions keep running while it is disconnected.
pub async fn serve_compute(mut config: Config, name: Option<String>) -> anyhow::Result<ExitCode> {
    if config.compute.orchestrators.is_empty() {
        bail!(
            "give the orchestrators to dial: --orchestrators HOST:PORT[,HOST:PORT…] (their Orchestrator.ComputePort, default 4222)"
        );
    }
    let data_dir = PathBuf::from(&config.data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let node_name = node_name(&data_dir, name.as_deref(), &config.name_provider)?;
    let (ca, cert, key) = crate::join::certificate_files(&config, &data_dir, &node_name).await?;
    let identity = caravel_net::session::ClientIdentity::load(&ca, &cert, &key)
        .context("cannot load the TLS identity")?;
    identity
        .identity()
        .require_role(caravel_net::tls::Role::Compute)?;
    if let Some(id) = identity.node_id()
        && id != node_name
    {
        bail!(
            "the certificate {} is for node {id}, but this node is {node_name} (--node-id, or the name kept in {}): use the matching certificate or --node-id {id}",
            cert.display(),
            data_dir.display()
        );
    }
    for (k, v) in crate::join::joined_labels(&data_dir) {
        config.labels.entry(k).or_insert(v);
    }
    let opts = caravel_compute::ComputeOptions::from_config(node_name.clone(), &config)?;
    let node = opts.build().context("cannot start the compute node")?;
    let shutdown = CancellationToken::new();
    identity.identity().watch(shutdown.clone());
    eprintln!(
        "Caravel compute node {node_name} is running; orchestrators: {}",
        config.compute.orchestrators.join(", ")
    );
    let s = shutdown.clone();
    let congestion = config
        .compute
        .congestion_control
        .parse()
        .map_err(|e| anyhow::anyhow!("Compute.CongestionControl: {e}"))?;
    let client = caravel_net::session::SessionClient::new(
        config.compute.orchestrators.clone(),
        &identity,
        caravel_net::session::SessionOptions {
            congestion,
            ..Default::default()
        },
    )
    .context("invalid session settings")?;
    if !config.compute.metrics_addr.is_empty() {
        let addr = config.compute.metrics_addr.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr} (Compute.MetricsAddr)"))?;
        let metrics = std::sync::Arc::new(crate::metrics::NodeSessionMetrics::new(
            node.metrics(),
            client.stats(),
        ));
        let leaf = identity.identity().clone();
        metrics.track_certificate("node", Arc::new(move || Some(leaf.leaf_der())));
        // The same rules as the API: loopback only unless API.Auth.Users (read:metrics) or
        // AllowAnonymous say otherwise.
        let auth = authorizer(&config)?;
        let app = axum::Router::new()
            .route("/livez", axum::routing::get(crate::api::alive))
            .route(
                "/metrics",
                axum::routing::get(move |headers: axum::http::HeaderMap| {
                    let m = metrics.clone();
                    async move { crate::metrics::exposition::respond(&headers, m.render()) }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                auth,
                crate::api::auth::middleware,
            ));
        let s = shutdown.clone();
        eprintln!("metrics on http://{addr}/metrics");
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<crate::api::auth::ClientAddr>(),
            )
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
        });
    }
    let runner = tokio::spawn(async move {
        let n = node.clone();
        let s2 = s.clone();
        client
            .run(s, move |end, connected| {
                let (n, s) = (n.clone(), s2.clone());
                tracing::info!(orchestrator = %connected.orchestrator, server = %connected.server_id, "session established");
                Box::pin(async move { n.run(end.inbox, end.outbox, s).await })
            })
            .await
    });
    wait_for_signal().await;
    eprintln!("shutting down…");
    shutdown.cancel();
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(40), runner).await {
        return Err(e).context("compute sessions failed");
    }
    Ok(ExitCode::SUCCESS)
}
