//! Process-level harness for Caravel's end-to-end and chaos tests: real `caravel` processes on
//! loopback, each with its own data dir and ports, driven through the real CLI, killed for real
//! (SIGKILL) and restarted on the same data dir.
//!
//! Also here: the fault-injecting UDP proxy (`proxy`, and the `caravel-udp-proxy` binary), groups of
//! orchestrators and proxied compute nodes (`cluster`), the linearizability checker, and
//! `caravel-bench`. The library talks to the binary only, as a user would; `caravel-bench` and the
//! session tests also use `caravel-net` to play simulated or misbehaving compute nodes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One `caravel serve` process.
#[derive(Debug)]
pub struct NodeProcess {
    bin: PathBuf,
    child: Option<Child>,
    pub api_port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// The API key the CLI sends (`CARAVEL_API_KEY`), for a node with API users.
    pub api_key: Option<String>,
    /// Environment variables the node process gets beside the test's own (kept over restarts).
    envs: Vec<(String, String)>,
}

impl NodeProcess {
    /// Starts a hybrid node (orchestrator + compute) and waits until its compute node is connected.
    pub fn start_hybrid(bin: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_hybrid_as(bin, data_dir, extra, None)
    }

    /// [`NodeProcess::start_hybrid`] with environment variables for the node process (S3
    /// credentials and endpoint, variables a job's `env:` values name).
    pub fn start_hybrid_env(
        bin: &Path,
        data_dir: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut n = Self::prepare(bin, data_dir, true, extra)?;
        n.envs = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        n.spawn()?;
        n.wait_ready(Duration::from_secs(60))?;
        Ok(n)
    }

    /// [`NodeProcess::start_hybrid`] for a node with API users: the CLI sends `api_key`.
    pub fn start_hybrid_as(
        bin: &Path,
        data_dir: &Path,
        extra: &[&str],
        api_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::start_hybrid_on(bin, data_dir, "127.0.0.1", extra, api_key)
    }

    /// [`NodeProcess::start_hybrid_as`] with the API listening on `api_host` (e.g. `0.0.0.0`, for
    /// clients in another network namespace); the CLI still reaches it on 127.0.0.1.
    pub fn start_hybrid_on(
        bin: &Path,
        data_dir: &Path,
        api_host: &str,
        extra: &[&str],
        api_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut n = Self::prepare(bin, data_dir, true, extra)?;
        if let Some(i) = n.args.iter().position(|a| a == "--api-host") {
            n.args[i + 1] = api_host.to_string();
        }
        n.api_key = api_key.map(String::from);
        n.spawn()?;
        n.wait_ready(Duration::from_secs(60))?;
        Ok(n)
    }

    /// Starts an orchestrator-only node and waits until it leads its group (answers `job list`).
    pub fn start_orchestrator(bin: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut n = Self::prepare(bin, data_dir, false, extra)?;
        n.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = n.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("caravel exited with {status}; its log:\n{}", n.log_text());
            }
            if n.cli(&["job", "list"]).is_ok_and(|o| o.status.success()) {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!(
                    "caravel did not answer within 60 s; its log:\n{}",
                    n.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn prepare(bin: &Path, data_dir: &Path, compute: bool, extra: &[&str]) -> anyhow::Result<Self> {
        let api_port = free_port()?;
        let mut args: Vec<String> = vec!["serve".into(), "--orchestrator".into()];
        if compute {
            args.push("--compute".into());
        }
        args.extend([
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--api-host".into(),
            "127.0.0.1".into(),
            "--api-port".into(),
            api_port.to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok(NodeProcess {
            bin: bin.to_path_buf(),
            child: None,
            api_port,
            data_dir: data_dir.to_path_buf(),
            args,
            log: data_dir.join("node.log"),
            api_key: None,
            envs: Vec::new(),
        })
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the API answers and a compute node is CONNECTED.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "caravel exited with {status} during start-up; its log:\n{}",
                    self.log_text()
                );
            }
            let out = self.cli(&["node", "list", "--output", "json"]);
            if let Ok(o) = &out
                && o.status.success()
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout)
                && v["Nodes"].as_array().is_some_and(|a| {
                    a.iter().any(|n| {
                        n["Info"]["NodeType"] == "Compute"
                            && n["ConnectionState"]["Status"] == "CONNECTED"
                    })
                })
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "caravel was not ready after {timeout:?}; its log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli_in(args, None)
    }

    /// Runs the CLI against this node from a working directory.
    pub fn cli_in(&self, args: &[&str], cwd: Option<&Path>) -> anyhow::Result<Output> {
        let mut c = Command::new(&self.bin);
        c.args([
            "--api-host",
            "127.0.0.1",
            "--api-port",
            &self.api_port.to_string(),
        ])
        .args(args)
        .stdin(Stdio::null());
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        if let Some(k) = &self.api_key {
            c.env("CARAVEL_API_KEY", k);
        }
        c.output()
            .with_context(|| format!("cannot run {} {args:?}", self.bin.display()))
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (SIGKILL after 20 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    bail!("caravel did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Starts the same node again on the same data dir and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready(Duration::from_secs(60))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub mod cluster;
pub mod linearizability;
pub mod netns;
pub mod proxy;
pub mod wasm;
