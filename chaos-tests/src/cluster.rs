//! A group of real orchestrator processes on loopback (`caravel serve --orchestrator --peers …`
//! with mutual TLS), for HA tests: find the leader, SIGKILL / SIGSTOP / SIGCONT / restart members,
//! add and remove members, all through the binary's CLI and REST API.
//!
//! With `proxied`, every member's Raft port is fronted by a [`crate::proxy::Proxy`] and peers dial the
//! proxy, so a test can cut a member off (both directions: the member's one QUIC socket is also the
//! source of everything it sends, see `net::rpc::Server`).
//!
//! Compute-only nodes ([`Group::start_compute_proxied`]) dial the members' compute ports through
//! proxies of their own, one per member, so a test degrades or cuts a node's sessions without
//! touching Raft, and kills and restarts the node process on the same data dir:
//!
//! ```text
//!  ComputeNode (caravel serve --compute) ──▶ proxies[0] ──▶ orch-1 compute port
//!      one QUIC socket, --metrics-addr    ├─▶ proxies[1] ──▶ orch-2 compute port
//!                                         └─▶ proxies[2] ──▶ orch-3 compute port
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::free_port;

/// One orchestrator process.
#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub api_port: u16,
    /// The port its Raft endpoint binds.
    pub raft_port: u16,
    /// The port peers dial (the proxy's when proxied, else `raft_port`).
    pub dial_port: u16,
    /// The port compute nodes dial (QUIC sessions).
    pub compute_port: u16,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl Member {
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// Started by the harness and not killed by it (it may have exited on its own: see
    /// [`Group::exited`]).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    pub fn raft_socket(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.raft_port))
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("node.log")).unwrap_or_default()
    }
}

/// Options of a group.
#[derive(Debug, Clone, Default)]
pub struct GroupOptions {
    /// Members that also run a compute node (the first `compute` ones).
    pub compute: usize,
    /// Front each Raft port with a fault-injecting proxy.
    pub proxied: bool,
    /// Extra `serve` arguments for every member.
    pub extra: Vec<String>,
    /// Turn API authentication on: an operator key (`*` and `admin`) is written to
    /// `DIR/operator.key`, every member gets `API.Auth.Users` naming it, and [`Group::cli`] sends it.
    pub auth: bool,
}

/// A Raft group of orchestrator processes.
pub struct Group {
    bin: PathBuf,
    pub dir: PathBuf,
    pub members: Vec<Member>,
    pub proxies: Vec<Option<crate::proxy::Proxy>>,
    /// The operator's API key when [`GroupOptions::auth`] is on.
    pub api_key: Option<String>,
    /// `-c FILE` arguments every member gets (the auth config).
    config_args: Vec<String>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("members", &self.members)
            .finish()
    }
}

/// Starts `bin args` with its output appended to `data_dir/node.log`, free of the caller's API
/// environment (each node gets its addresses from its flags), without colours (tests read the log).
fn spawn_logged(bin: &Path, args: &[String], data_dir: &Path) -> anyhow::Result<Child> {
    std::fs::create_dir_all(data_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("node.log"))?;
    Ok(Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env_remove("CARAVEL_API_PORT")
        .env_remove("CARAVEL_API_HOST")
        .env("NO_COLOR", "1")
        .spawn()?)
}

/// `text` without ANSI escape sequences (`ESC [ … letter`), for logs written with colours.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=value` in a log line of `tracing`'s default format (`None` if absent).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Group {
    /// Starts `n` members `orch-1..n` in `dir` and waits until they form a led group.
    pub fn start(bin: &Path, dir: &Path, n: usize, opts: GroupOptions) -> anyhow::Result<Group> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut g = Group {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            members: Vec::new(),
            proxies: Vec::new(),
            api_key: None,
            config_args: Vec::new(),
            rt,
        };
        if opts.auth {
            std::fs::create_dir_all(dir)?;
            let key = format!(
                "ck-{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            let key_file = dir.join("operator.key");
            std::fs::write(&key_file, &key)?;
            let cfg = dir.join("auth.yaml");
            std::fs::write(
                &cfg,
                format!(
                    "API:\n  Auth:\n    Users:\n      - Alias: operator\n        APIKeyFile: {}\n        Capabilities:\n          - Actions: [\"*\", admin]\n",
                    key_file.display()
                ),
            )?;
            g.api_key = Some(key);
            g.config_args = vec!["-c".into(), cfg.to_string_lossy().into_owned()];
        }
        let certs = dir.join("certs");
        g.cli_ok(&["cert", "ca", "--out-dir", &certs.to_string_lossy()])?;
        let mut planned = Vec::new();
        for i in 1..=n {
            let id = format!("orch-{i}");
            let raft_port = udp_port()?;
            let dial_port = if opts.proxied {
                let p = g.rt.block_on(crate::proxy::Proxy::start(
                    "127.0.0.1:0".parse()?,
                    SocketAddr::from(([127, 0, 0, 1], raft_port)),
                ))?;
                let port = p.local_addr().port();
                g.proxies.push(Some(p));
                port
            } else {
                g.proxies.push(None);
                raft_port
            };
            planned.push((id, raft_port, dial_port));
        }
        let peers = planned
            .iter()
            .map(|(id, _, dial)| format!("{id}@127.0.0.1:{dial}"))
            .collect::<Vec<_>>()
            .join(",");
        for (i, (id, raft_port, dial_port)) in planned.into_iter().enumerate() {
            let m = g.member(
                &id,
                raft_port,
                dial_port,
                &peers,
                i < opts.compute,
                &opts.extra,
            )?;
            g.members.push(m);
        }
        for i in 0..g.members.len() {
            g.spawn(i)?;
        }
        g.wait_leader(Duration::from_secs(60))?;
        Ok(g)
    }

    fn member(
        &self,
        id: &str,
        raft_port: u16,
        dial_port: u16,
        peers: &str,
        compute: bool,
        extra: &[String],
    ) -> anyhow::Result<Member> {
        let certs = self.issue_cert_as(id, "orchestrator")?;
        let data_dir = self.dir.join(id);
        let api_port = free_port()?;
        let compute_port = udp_port()?;
        let mut args: Vec<String> = vec!["serve".into(), "--orchestrator".into()];
        if compute {
            args.push("--compute".into());
        }
        let cert = |f: String| certs.join(f).to_string_lossy().into_owned();
        args.extend([
            "--node-id".into(),
            id.to_string(),
            "--peers".into(),
            peers.to_string(),
            "--raft-port".into(),
            raft_port.to_string(),
            "--compute-port".into(),
            compute_port.to_string(),
            "--tls-ca".into(),
            cert("ca.crt".into()),
            "--tls-cert".into(),
            cert(format!("{id}.crt")),
            "--tls-key".into(),
            cert(format!("{id}.key")),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
            "--api-host".into(),
            "127.0.0.1".into(),
            "--api-port".into(),
            api_port.to_string(),
            "-c".into(),
            "Orchestrator.RaftHost=127.0.0.1".into(),
        ]);
        args.extend(self.config_args.iter().cloned());
        args.extend(extra.iter().cloned());
        Ok(Member {
            id: id.to_string(),
            api_port,
            raft_port,
            dial_port,
            compute_port,
            data_dir,
            args,
            child: None,
            paused: false,
        })
    }

    /// Starts a new member that joins later (`caravel cluster add`): not in the group's `--peers`.
    pub fn start_joiner(&mut self, id: &str, compute: bool) -> anyhow::Result<usize> {
        let raft_port = udp_port()?;
        let peers = self
            .members
            .iter()
            .map(|m| format!("{}@127.0.0.1:{}", m.id, m.dial_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = self.member(id, raft_port, raft_port, &peers, compute, &[])?;
        self.members.push(m);
        self.proxies.push(None);
        let i = self.members.len() - 1;
        self.spawn(i)?;
        Ok(i)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let child = spawn_logged(&self.bin, &m.args, &m.data_dir)
            .with_context(|| format!("cannot start {}", m.id))?;
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// The `Authorization` header value the operator sends (when auth is on).
    pub fn bearer(&self) -> Option<String> {
        self.api_key.as_ref().map(|k| format!("Bearer {k}"))
    }

    /// A reqwest client that carries the operator's key (when auth is on).
    pub fn http_client(&self) -> reqwest::Client {
        let mut h = reqwest::header::HeaderMap::new();
        if let Some(b) = self.bearer()
            && let Ok(v) = reqwest::header::HeaderValue::from_str(&b)
        {
            h.insert(reqwest::header::AUTHORIZATION, v);
        }
        reqwest::Client::builder()
            .default_headers(h)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap_or_default()
    }

    /// Issues `certs/ID.{crt,key}` for a compute node from the group's CA (`certs/ca.crt`);
    /// returns the certs dir.
    pub fn issue_cert(&self, id: &str) -> anyhow::Result<PathBuf> {
        self.issue_cert_as(id, "compute")
    }

    /// Issues `certs/ID.{crt,key}` with `role` (`orchestrator` or `compute`).
    pub fn issue_cert_as(&self, id: &str, role: &str) -> anyhow::Result<PathBuf> {
        let certs = self.dir.join("certs");
        self.cli_ok(&[
            "cert",
            "issue",
            "--ca-dir",
            &certs.to_string_lossy(),
            "--node-id",
            id,
            "--role",
            role,
            "--out-dir",
            &certs.to_string_lossy(),
        ])?;
        Ok(certs)
    }

    /// Runs the CLI (no node needed) and fails on a non-zero exit.
    fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = Command::new(&self.bin).args(args).output()?;
        if !o.status.success() {
            bail!(
                "caravel {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs the CLI against member `i`: (success, stdout, stderr).
    pub fn cli(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("CARAVEL_API_HOST", "127.0.0.1")
            .env("CARAVEL_API_PORT", self.members[i].api_port.to_string());
        if let Some(k) = &self.api_key {
            cmd.env("CARAVEL_API_KEY", k);
        }
        let o = cmd.output();
        match o {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(e) => (false, String::new(), e.to_string()),
        }
    }

    /// `cluster status` as member `i` answers it (None if it does not answer).
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let (ok, out, _) = self.cli(i, &["cluster", "status", "--output", "json"]);
        if !ok {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    /// The index of the member that leads, as a running, unpaused member reports it.
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if !m.is_running() || m.paused {
                continue;
            }
            if let Some(s) = self.status(i)
                && let Some(l) = s["Leader"].as_str()
                && !l.is_empty()
            {
                return self.members.iter().position(|m| m.id == l);
            }
        }
        None
    }

    /// Fails if a member the harness started has exited on its own (a crash is always a bug).
    pub fn exited(&mut self) -> anyhow::Result<()> {
        for m in &mut self.members {
            if let Some(c) = m.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                m.child = None;
                bail!(
                    "{} exited on its own ({status}); its log:\n{}",
                    m.id,
                    m.log_text()
                );
            }
        }
        Ok(())
    }

    /// Waits until some member is leader, as seen by every running member.
    pub fn wait_leader(&mut self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            self.exited()?;
            let views: Vec<Option<String>> = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.is_running() && !m.paused)
                .map(|(i, _)| {
                    self.status(i)
                        .and_then(|s| s["Leader"].as_str().map(String::from))
                        .filter(|l| !l.is_empty())
                })
                .collect();
            if let Some(Some(l)) = views.first()
                && views.iter().all(|v| v.as_deref() == Some(l))
                && let Some(i) = self.members.iter().position(|m| &m.id == l)
                && self.members[i].is_running()
                && !self.members[i].paused
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                let logs: String = self
                    .members
                    .iter()
                    .map(|m| {
                        let t = m.log_text();
                        let tail: String = t
                            .lines()
                            .rev()
                            .take(15)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join("\n");
                        format!("--- {} ---\n{tail}\n", m.id)
                    })
                    .collect();
                bail!("no agreed leader within {timeout:?} (views {views:?})\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(pid) = self.members[i].pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// SIGSTOP: the process stays, silent.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.members[i].paused = true;
    }
    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.members[i].paused = false;
    }

    /// Starts a killed member again on its data dir.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Cuts member `i` off from every peer, both ways (needs `proxied`): its own proxy drops
    /// everything, and the others' proxies drop what comes from its socket.
    pub fn isolate(&self, i: usize, cut: bool) {
        let me = self.members[i].raft_socket();
        for (j, p) in self.proxies.iter().enumerate() {
            let Some(p) = p else { continue };
            let mut f = p.faults();
            if j == i {
                f.blackhole = cut;
            } else if cut {
                if !f.blocked_sources.contains(&me) {
                    f.blocked_sources.push(me);
                }
            } else {
                f.blocked_sources.retain(|s| *s != me);
            }
            let _ = p.set(f);
        }
    }

    /// Starts a compute-only node `id` that dials every member's compute port (kill it with
    /// `Child::kill`). Its certificate is issued from the group's CA.
    pub fn start_compute(&self, id: &str) -> anyhow::Result<Child> {
        let orchestrators: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.compute_port))
            .collect();
        let (args, data_dir) = self.compute_args(id, &orchestrators)?;
        spawn_logged(&self.bin, &args, &data_dir)
    }

    /// `serve --compute` arguments of node `id` dialling `orchestrators`, with a certificate issued
    /// from the group's CA; and its data dir.
    fn compute_args(
        &self,
        id: &str,
        orchestrators: &[String],
    ) -> anyhow::Result<(Vec<String>, PathBuf)> {
        let certs = self.issue_cert(id)?;
        let data_dir = self.dir.join(id);
        let cert = |f: String| certs.join(f).to_string_lossy().into_owned();
        let args = vec![
            "serve".into(),
            "--compute".into(),
            "--node-id".into(),
            id.into(),
            "--orchestrators".into(),
            orchestrators.join(","),
            "--tls-ca".into(),
            cert("ca.crt".into()),
            "--tls-cert".into(),
            cert(format!("{id}.crt")),
            "--tls-key".into(),
            cert(format!("{id}.key")),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
        ];
        Ok((args, data_dir))
    }

    /// Starts a compute-only node `id` that dials every member's compute port through a proxy of
    /// its own (`proxies[i]` fronts member `i`, in member order, which is also the order the node
    /// tries them in), serves its metrics on `127.0.0.1:metrics_port`, and takes `extra` `serve`
    /// arguments (e.g. `-c Compute.MaxConcurrent=4`). Its certificate is issued from the group's CA.
    pub fn start_compute_proxied(&self, id: &str, extra: &[&str]) -> anyhow::Result<ComputeNode> {
        let mut proxies = Vec::new();
        for m in &self.members {
            let p = self.rt.block_on(crate::proxy::Proxy::start(
                "127.0.0.1:0".parse()?,
                SocketAddr::from(([127, 0, 0, 1], m.compute_port)),
            ))?;
            proxies.push(p);
        }
        let orchestrators: Vec<String> =
            proxies.iter().map(|p| p.local_addr().to_string()).collect();
        let metrics_port = free_port()?;
        let (mut args, data_dir) = self.compute_args(id, &orchestrators)?;
        args.push("--metrics-addr".into());
        args.push(format!("127.0.0.1:{metrics_port}"));
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut node = ComputeNode {
            id: id.to_string(),
            data_dir,
            metrics_port,
            proxies,
            bin: self.bin.clone(),
            args,
            child: None,
        };
        node.start()?;
        Ok(node)
    }

    /// Stops every member (SIGKILL) and every proxy.
    pub fn shutdown(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].paused {
                self.resume(i);
            }
            self.kill(i);
        }
        self.proxies.clear();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A compute-only `caravel serve --compute` process whose sessions go through one fault-injecting
/// proxy per orchestrator (see [`Group::start_compute_proxied`]). Killed (SIGKILL) when dropped.
pub struct ComputeNode {
    pub id: String,
    pub data_dir: PathBuf,
    /// Its `GET /metrics` port on 127.0.0.1 (session counters, outbox gauges).
    pub metrics_port: u16,
    /// `proxies[i]` fronts member `i`'s compute port; the node dials only these.
    pub proxies: Vec<crate::proxy::Proxy>,
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl std::fmt::Debug for ComputeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeNode")
            .field("id", &self.id)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ComputeNode {
    /// Starts the process (again) on its data dir, with the same arguments and proxies.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("compute node {} is already running", self.id);
        }
        let child = spawn_logged(&self.bin, &self.args, &self.data_dir)
            .with_context(|| format!("cannot start compute node {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, no goodbye: executions die with the process, the outbox stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then [`ComputeNode::start`] on the same data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Fails if the process exited on its own (a crash is always a bug).
    pub fn exited(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            self.child = None;
            bail!(
                "compute node {} exited on its own ({status}); its log:\n{}",
                self.id,
                self.log_text()
            );
        }
        Ok(())
    }

    /// Its log (all runs appended), without colours.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.data_dir.join("node.log")).unwrap_or_default())
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The orchestrator ids (from their certificates) of every session this node established, in
    /// order, from its log lines `session established … server=ID`.
    pub fn sessions(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("session established"))
            .filter_map(|l| log_field(l, "server").map(String::from))
            .collect()
    }

    /// Applies the same faults to every proxy (every orchestrator link).
    pub fn set_faults(&self, faults: crate::proxy::Faults) -> anyhow::Result<()> {
        for p in &self.proxies {
            p.set(faults.clone())?;
        }
        Ok(())
    }

    /// Cuts (`true`) or restores (`false`) every orchestrator link, leaving other faults as they are.
    pub fn cut(&self, on: bool) -> anyhow::Result<()> {
        for p in &self.proxies {
            p.blackhole(on)?;
        }
        Ok(())
    }

    /// All faults off on every link.
    pub fn heal(&self) -> anyhow::Result<()> {
        for p in &self.proxies {
            p.heal()?;
        }
        Ok(())
    }

    /// The proxies' counters, summed over every link.
    pub fn link_stats(&self) -> crate::proxy::ProxyStats {
        let mut sum = crate::proxy::ProxyStats::default();
        for p in &self.proxies {
            let s = p.stats();
            for (into, from) in [
                (&mut sum.to_upstream, &s.to_upstream),
                (&mut sum.to_client, &s.to_client),
            ] {
                into.received += from.received;
                into.forwarded += from.forwarded;
                into.duplicated += from.duplicated;
                into.reordered += from.reordered;
                into.dropped += from.dropped;
                into.dropped_loss += from.dropped_loss;
                into.dropped_blackhole += from.dropped_blackhole;
                into.dropped_bandwidth += from.dropped_bandwidth;
                into.dropped_overflow += from.dropped_overflow;
            }
            sum.clients += s.clients;
        }
        sum
    }

    /// Where the execution's files live on this node (`…/compute/executions/ID`).
    pub fn execution_dir(&self, execution_id: &str) -> PathBuf {
        self.data_dir
            .join("compute")
            .join("executions")
            .join(execution_id)
    }

    /// Whether the execution finished on this node (its `results/exitCode` is written), whatever
    /// the orchestrators know of it.
    pub fn finished_locally(&self, execution_id: &str) -> bool {
        self.execution_dir(execution_id)
            .join("results")
            .join("exitCode")
            .is_file()
    }
}

impl Drop for ComputeNode {
    fn drop(&mut self) {
        self.kill();
    }
}
