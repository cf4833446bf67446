//! `caravel devstack --orchestrators N --compute M`: a cluster of real processes on loopback, so any
//! node can be killed, paused or restarted like in production.
//!
//! ```text
//!  DATA_DIR/certs/{ca.crt,ca.key,orch-1.crt,orch-1.key,…}   one cluster CA, one certificate per node
//!  DATA_DIR/orch-1/ … node.log                               each node's data dir and log
//!  DATA_DIR/devstack.json                                    IDs, roles, PIDs, addresses, argv
//!  caravel serve --orchestrator [--compute] --node-id orch-i --peers orch-1@…,orch-2@…,… (N processes)
//! ```
//!
//! Compute nodes `compute-1..M` are processes of their own (`caravel serve --compute --orchestrators
//! …`) that dial every orchestrator's compute port over mutual-TLS QUIC and move to another when one
//! fails. Ctrl-C (or SIGTERM) stops every node.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caravel_cli::{ApiClient, DevstackArgs, Global};
use caravel_model::api::ClusterStatus;
use serde::{Deserialize, Serialize};

/// One node in `devstack.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DevstackNode {
    #[serde(rename = "ID")]
    pub id: String,
    pub roles: Vec<String>,
    #[serde(rename = "PID")]
    pub pid: u32,
    #[serde(rename = "APIAddress")]
    pub api_address: String,
    /// host:port compute nodes dial (empty: compute sessions are in-process for now).
    pub compute_address: String,
    pub raft_address: String,
    pub data_dir: String,
    /// The argv that starts this node again.
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DevstackFile {
    pub nodes: Vec<DevstackNode>,
}

/// A TCP port for the API: `preferred` if free, else any.
fn tcp_port(preferred: u16) -> anyhow::Result<u16> {
    if preferred != 0 && TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free UDP port for Raft (QUIC).
fn udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes the cluster CA (kept if present, so more nodes can be issued later) and a certificate
/// per node under `dir/certs`.
fn certificates(dir: &Path, ids: &[(String, caravel_net::tls::Role)]) -> anyhow::Result<PathBuf> {
    use caravel_net::tls;
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let ca = match tls::read_ca(&certs) {
        Ok(ca) => ca,
        Err(_) => {
            let ca = tls::new_ca("caravel-devstack")?;
            tls::write_ca(&certs, &ca)?;
            ca
        }
    };
    for (id, role) in ids {
        if !certs.join(format!("{id}.crt")).exists() {
            tls::write_node(&certs, id, &tls::issue(&ca, id, *role)?)?;
        }
    }
    Ok(certs)
}

/// Starts `argv` with its output appended to `data/node.log`, free of the devstack's own API
/// environment (each node gets its addresses from its flags).
fn spawn_logged(argv: &[String], data: &Path) -> anyhow::Result<std::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("node.log"))?;
    Ok(std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env_remove("CARAVEL_API_PORT")
        .env_remove("CARAVEL_API_HOST")
        .spawn()?)
}

struct Child {
    node: DevstackNode,
    child: std::process::Child,
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops every node: SIGTERM, then SIGKILL after 10 s.
fn stop_all(children: &mut [Child]) {
    for c in children.iter() {
        signal(c.node.pid, "-TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut() {
        loop {
            match c.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = c.child.kill();
                    let _ = c.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

pub async fn run(global: &Global, args: &DevstackArgs) -> anyhow::Result<ExitCode> {
    let (n, m) = (args.orchestrators as usize, args.compute as usize);
    let dir = match &global.data_dir {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("caravel-devstack-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let ids: Vec<String> = (1..=n).map(|i| format!("orch-{i}")).collect();
    let compute_ids: Vec<String> = (1..=m).map(|i| format!("compute-{i}")).collect();
    let roles: Vec<(String, caravel_net::tls::Role)> = ids
        .iter()
        .map(|i| (i.clone(), caravel_net::tls::Role::Orchestrator))
        .chain(
            compute_ids
                .iter()
                .map(|i| (i.clone(), caravel_net::tls::Role::Compute)),
        )
        .collect();
    let certs = certificates(&dir, &roles)?;
    // Ports: the API of orch-i prefers 1234+i-1 (so `caravel` without flags reaches orch-1).
    let base = global.api_port.unwrap_or(1234);
    let mut api_ports = Vec::new();
    let mut raft_ports = Vec::new();
    let mut compute_ports = Vec::new();
    for i in 0..n {
        api_ports.push(tcp_port(if args.run.is_some() {
            0
        } else {
            base + i as u16
        })?);
        raft_ports.push(udp_port()?);
        compute_ports.push(udp_port()?);
    }
    let compute_addrs: Vec<String> = compute_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let peers = ids
        .iter()
        .zip(&raft_ports)
        .map(|(id, p)| format!("{id}@127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().context("cannot find the caravel binary")?;
    let mut children: Vec<Child> = Vec::new();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let data = dir.join(id);
        std::fs::create_dir_all(&data)?;
        let mut argv: Vec<String> = vec![
            exe.to_string_lossy().into_owned(),
            "serve".into(),
            "--orchestrator".into(),
        ];
        argv.extend([
            "--compute-port".into(),
            compute_ports[i].to_string(),
            "--node-id".into(),
            id.clone(),
            "--peers".into(),
            peers.clone(),
            "--raft-port".into(),
            raft_ports[i].to_string(),
            "--tls-ca".into(),
            certs.join("ca.crt").to_string_lossy().into_owned(),
            "--tls-cert".into(),
            certs
                .join(format!("{id}.crt"))
                .to_string_lossy()
                .into_owned(),
            "--tls-key".into(),
            certs
                .join(format!("{id}.key"))
                .to_string_lossy()
                .into_owned(),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
            "--api-host".into(),
            "127.0.0.1".into(),
            "--api-port".into(),
            api_ports[i].to_string(),
            "-c".into(),
            "Orchestrator.RaftHost=127.0.0.1".into(),
        ]);
        let child = spawn_logged(&argv, &data).with_context(|| format!("cannot start {id}"))?;
        children.push(Child {
            node: DevstackNode {
                id: id.clone(),
                roles: vec!["orchestrator".to_string()],
                pid: child.id(),
                api_address: format!("http://127.0.0.1:{}", api_ports[i]),
                compute_address: compute_addrs[i].clone(),
                raft_address: format!("127.0.0.1:{}", raft_ports[i]),
                data_dir: data.to_string_lossy().into_owned(),
                command: argv,
            },
            child,
        });
    }
    for id in &compute_ids {
        let data = dir.join(id);
        std::fs::create_dir_all(&data)?;
        let cert = |f: String| certs.join(f).to_string_lossy().into_owned();
        let argv: Vec<String> = vec![
            exe.to_string_lossy().into_owned(),
            "serve".into(),
            "--compute".into(),
            "--node-id".into(),
            id.clone(),
            "--orchestrators".into(),
            compute_addrs.join(","),
            "--tls-ca".into(),
            cert("ca.crt".into()),
            "--tls-cert".into(),
            cert(format!("{id}.crt")),
            "--tls-key".into(),
            cert(format!("{id}.key")),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
        ];
        let child = spawn_logged(&argv, &data).with_context(|| format!("cannot start {id}"))?;
        children.push(Child {
            node: DevstackNode {
                id: id.clone(),
                roles: vec!["compute".to_string()],
                pid: child.id(),
                api_address: String::new(),
                compute_address: String::new(),
                raft_address: String::new(),
                data_dir: data.to_string_lossy().into_owned(),
                command: argv,
            },
            child,
        });
    }
    let file = DevstackFile {
        nodes: children.iter().map(|c| c.node.clone()).collect(),
    };
    std::fs::write(dir.join("devstack.json"), serde_json::to_vec_pretty(&file)?)?;

    let ready = wait_ready(&mut children, m).await;
    if let Err(e) = ready {
        stop_all(&mut children);
        return Err(e.context(format!("see the node logs under {}", dir.display())));
    }
    eprintln!(
        "devstack: {n} orchestrators and {m} compute nodes ready in {:.1}s — data {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    let rows: Vec<Vec<String>> = file
        .nodes
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.roles.join("+"),
                d.pid.to_string(),
                d.api_address.clone(),
                d.raft_address.clone(),
                d.compute_address.clone(),
            ]
        })
        .collect();
    eprint!(
        "{}",
        caravel_cli::output::table(
            &["ID", "ROLES", "PID", "API", "RAFT", "COMPUTE"],
            &rows,
            false
        )
    );

    let code = match &args.run {
        Some(f) => {
            let client = ApiClient::new(&file.nodes[0].api_address);
            let r = crate::devstack::run_job_file(&client, f).await;
            stop_all(&mut children);
            if global.data_dir.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return r;
        }
        None => ExitCode::SUCCESS,
    };
    eprintln!(
        "\nexport CARAVEL_API_HOST=127.0.0.1 CARAVEL_API_PORT={}\ncaravel cluster status\nNodes: {}\nPress Ctrl-C to stop.",
        api_ports[0],
        dir.join("devstack.json").display()
    );
    crate::node::wait_for_signal().await;
    eprintln!("stopping {n} nodes…");
    stop_all(&mut children);
    Ok(code)
}

/// Waits until every orchestrator answers, one of them leads, and the compute nodes registered.
async fn wait_ready(children: &mut [Child], compute: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in children
        .iter_mut()
        .filter(|c| !c.node.api_address.is_empty())
    {
        let client = ApiClient::new(&c.node.api_address);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                bail!("{} exited early ({status})", c.node.id);
            }
            let ok = match client
                .get::<ClusterStatus>("/api/v1/orchestrator/cluster", &[])
                .await
            {
                Ok(s) => !s.leader.is_empty(),
                Err(_) => false,
            };
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not join a led group within 60 s", c.node.id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let client = ApiClient::new(&children[0].node.api_address);
    loop {
        let nodes = client
            .get::<caravel_model::api::ListNodesResponse>("/api/v1/orchestrator/nodes", &[])
            .await
            .map(|r| r.nodes)
            .unwrap_or_default();
        let connected = nodes
            .iter()
            .filter(|n| {
                !n.info.compute_node_info.execution_engines.is_empty()
                    && n.connection_state.status == caravel_model::states::NodeConnection::Connected
            })
            .count();
        if connected >= compute {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {connected} of {compute} compute nodes registered within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
