//! Shared helpers: building the test modules once, job builders, a node harness, an HTTP server.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use caravel_compute::{ComputeNode, ComputeOptions};
use caravel_model::execution::ExecutionUpdate;
use caravel_model::node::NodeInfo;
use caravel_model::parse::inline_input;
use caravel_model::spec::{InputSource, Job, ResultPath, SpecConfig, Task};
use caravel_model::wire::{ToCompute, ToOrchestrator};
use caravel_model::{Execution, ExecutionStateType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Path of a test module (`echo`, `trap`, `spin`, `hog`, `exit3`, `sleep`, `fill`), building them on first use.
pub fn module(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let manifest = root.join("examples/test-modules/Cargo.toml");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("wasm");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--offline",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("run cargo to build the test modules");
        assert!(
            status.success(),
            "building examples/test-modules for wasm32-wasip1 failed"
        );
        target.join("wasm32-wasip1/release")
    });
    dir.join(format!("{name}.wasm"))
}

pub const MODULE_TARGET: &str = "/app/main.wasm";

/// A wasm task running test module `name` (inline), publishing locally.
pub fn wasm_task(name: &str, args: &[&str]) -> Task {
    let bytes = std::fs::read(module(name)).expect("read test module");
    Task {
        name: "main".into(),
        engine: SpecConfig::new("wasm")
            .with("EntryModule", MODULE_TARGET)
            .with("Parameters", serde_json::json!(args)),
        publisher: SpecConfig::new("local"),
        input_sources: vec![inline_input(MODULE_TARGET, "application/wasm", &bytes)],
        ..Default::default()
    }
}

pub fn with_outputs(mut t: Task) -> Task {
    t.result_paths.push(ResultPath {
        name: "outputs".into(),
        path: "/outputs".into(),
    });
    t
}

pub fn input(kind: &str, target: &str, params: &[(&str, serde_json::Value)]) -> InputSource {
    let mut s = SpecConfig::new(kind);
    for (k, v) in params {
        s = s.with(k, v.clone());
    }
    InputSource {
        source: s,
        alias: String::new(),
        target: target.into(),
    }
}

pub fn run_msg(exec_id: &str, task: Task) -> ToCompute {
    let job = Job {
        id: format!("j-{exec_id}"),
        name: "test".into(),
        kind: "batch".into(),
        count: 1,
        tasks: vec![task],
        ..Default::default()
    };
    let execution = Execution {
        id: exec_id.into(),
        job_id: job.id.clone(),
        node_id: "node-1".into(),
        ..Default::default()
    };
    ToCompute::Run {
        execution: Box::new(execution),
        job: Box::new(job),
    }
}

/// A node serving one session over channels.
pub struct Harness {
    pub node: ComputeNode,
    pub tx: mpsc::Sender<ToCompute>,
    pub rx: mpsc::Receiver<ToOrchestrator>,
    pub shutdown: CancellationToken,
    pub hello: NodeInfo,
    pub dir: tempfile::TempDir,
    pub handle: tokio::task::JoinHandle<()>,
    /// Messages received while waiting for something else.
    pub others: Vec<ToOrchestrator>,
    pub last_seq: u64,
}

pub async fn start(configure: impl FnOnce(&mut ComputeOptions, &std::path::Path)) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ComputeOptions::new("node-1", dir.path().join("data"));
    // Tests that want the docker engine turn it back on (see `crate::docker`).
    opts.docker = false;
    // The tests' HTTP and S3 servers live on this machine's loopback.
    opts.fetch_allow_private = vec!["127.0.0.1".into(), "localhost".into()];
    opts.s3.allowed_endpoints = vec!["http://127.0.0.1:*".into()];
    configure(&mut opts, dir.path());
    let node = opts.build().expect("build node");
    let (tx, inbox) = mpsc::channel(64);
    let (outbox, mut rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(node.clone().run(inbox, outbox, shutdown.clone()));
    let hello = match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(ToOrchestrator::Hello { info, last_seq })) => {
            assert_eq!(last_seq, 0);
            *info
        }
        other => panic!("expected Hello first, got {other:?}"),
    };
    // The orchestrator's answer: nothing committed yet.
    tx.send(ToCompute::Ack { seq: 0 })
        .await
        .expect("answer Hello");
    Harness {
        node,
        tx,
        rx,
        shutdown,
        hello,
        dir,
        handle,
        others: Vec::new(),
        last_seq: 0,
    }
}

impl Harness {
    pub async fn send(&self, m: ToCompute) {
        self.tx.send(m).await.expect("node inbox open");
    }

    /// The next message from the node (heartbeats skipped), checking that report sequence numbers
    /// increase in arrival order.
    async fn recv_any(&mut self, deadline: tokio::time::Instant, what: &str) -> ToOrchestrator {
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} in time"));
            match m {
                Some(ToOrchestrator::Heartbeat { .. }) => {}
                Some(m) => {
                    if let ToOrchestrator::Report { seq, .. } = &m {
                        assert!(
                            *seq > self.last_seq,
                            "sequence numbers increase: {seq} after {}",
                            self.last_seq
                        );
                        self.last_seq = *seq;
                    }
                    return m;
                }
                None => panic!("node closed its outbox"),
            }
        }
    }

    /// The next report of `exec_id`.
    pub async fn next_report(&mut self, exec_id: &str) -> (u64, ExecutionUpdate) {
        let is_it = |m: &ToOrchestrator| matches!(m, ToOrchestrator::Report { update, .. } if update.execution_id == exec_id);
        if let Some(i) = self.others.iter().position(is_it)
            && let ToOrchestrator::Report { seq, update } = self.others.remove(i)
        {
            return (seq, update);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            match self
                .recv_any(deadline, &format!("report for {exec_id}"))
                .await
            {
                ToOrchestrator::Report { seq, update } if update.execution_id == exec_id => {
                    return (seq, update);
                }
                m => self.others.push(m),
            }
        }
    }

    /// Runs a task and collects its reports up to a terminal state.
    pub async fn run(&mut self, exec_id: &str, task: Task) -> Vec<ExecutionUpdate> {
        self.send(run_msg(exec_id, task)).await;
        self.reports_until_terminal(exec_id).await
    }

    pub async fn reports_until_terminal(&mut self, exec_id: &str) -> Vec<ExecutionUpdate> {
        let mut out = Vec::new();
        loop {
            let (_, u) = self.next_report(exec_id).await;
            let done = u.state.is_terminal();
            out.push(u);
            if done {
                return out;
            }
        }
    }

    /// Messages of a stream request until its end message.
    pub async fn stream(&mut self, request_id: u64) -> Vec<ToOrchestrator> {
        let ours = |m: &ToOrchestrator| match m {
            ToOrchestrator::LogLine { request_id: r, .. }
            | ToOrchestrator::ResultChunk { request_id: r, .. }
            | ToOrchestrator::LogEnd { request_id: r, .. }
            | ToOrchestrator::ResultEnd { request_id: r, .. } => *r == request_id,
            _ => false,
        };
        let is_end = |m: &ToOrchestrator| {
            matches!(
                m,
                ToOrchestrator::LogEnd { .. } | ToOrchestrator::ResultEnd { .. }
            )
        };
        let mut out = Vec::new();
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.others)
            .into_iter()
            .partition(|m| ours(m));
        self.others = rest;
        for m in mine {
            let end = is_end(&m);
            out.push(m);
            if end {
                return out;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let m = self
                .recv_any(deadline, &format!("end of stream {request_id}"))
                .await;
            if ours(&m) {
                let end = is_end(&m);
                out.push(m);
                if end {
                    return out;
                }
            } else {
                self.others.push(m);
            }
        }
    }
}

pub fn states(reports: &[ExecutionUpdate]) -> Vec<ExecutionStateType> {
    reports.iter().map(|u| u.state).collect()
}

pub fn last(reports: &[ExecutionUpdate]) -> &ExecutionUpdate {
    reports.last().expect("at least one report")
}

/// A tiny HTTP/1.1 server on 127.0.0.1: `/data.txt` → 200 with a body, `/redirect` → 302 to
/// `/data.txt`, anything else → 404. Returns the base URL.
pub async fn http_server(body: &'static [u8]) -> String {
    serve_paths(vec![("/data.txt".into(), body.to_vec())]).await
}

/// A tiny HTTP/1.1 server on 127.0.0.1 answering 200 with a body for each of `routes`, 302 to the
/// first route for `/redirect`, and 404 otherwise. Returns the base URL.
pub async fn serve_paths(routes: Vec<(String, Vec<u8>)>) -> String {
    serve_typed(
        routes
            .into_iter()
            .map(|(p, body)| (p, "text/plain", body))
            .collect(),
    )
    .await
}

/// [`serve_paths`] with each route's Content-Type (an IPFS gateway's `application/x-tar`).
pub async fn serve_typed(routes: Vec<(String, &'static str, Vec<u8>)>) -> String {
    let routes = std::sync::Arc::new(routes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let found = routes.iter().find(|(p, _, _)| *p == path);
                let resp: Vec<u8> = match (found, path.as_str()) {
                    (Some((_, kind, body)), _) => {
                        let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: {kind}\r\nconnection: close\r\n\r\n", body.len()).into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    (None, "/redirect") => format!("HTTP/1.1 302 Found\r\nlocation: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", routes[0].0).into_bytes(),
                    // An absolute redirect to the server's own address literal (SSRF tests).
                    (None, "/redirect-to-literal") => format!("HTTP/1.1 302 Found\r\nlocation: http://{addr}{}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", routes[0].0).into_bytes(),
                    _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                };
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A name no other test (or earlier run) uses: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
