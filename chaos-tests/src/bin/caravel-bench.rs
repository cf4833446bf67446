//! `caravel-bench`: the benchmarks of the HA and compute-session issues, one command each, each
//! printing a table.
//!
//! - `caravel-bench writes`: replicated-write throughput and latency of a 3-orchestrator Caravel
//!   group on loopback (mutual-TLS QUIC between members, fsync on), side by side with a 3-member
//!   etcd cluster from Debian's `etcd-server` package driven with the same load shape.
//! - `caravel-bench failover`: SIGKILL the leader under a steady write load, many times, and print
//!   the distribution of kill → new leader agreed and kill → first acknowledged write.
//! - `caravel-bench sessions`: one orchestrator process holding N compute sessions, each a
//!   simulated node in this process running the real session client (its own UDP socket and
//!   certificate) that says Hello and heartbeats; ramp-up rate, the orchestrator's RSS and CPU.
//! - `caravel-bench heal`: a compute-only node process behind the UDP proxy runs jobs through a
//!   blackhole cut; heal → node CONNECTED, → every piled-up report committed, → jobs Completed.
//! - `caravel-bench logs`: log-stream goodput through a compute session at several loss rates.
//! - `caravel-bench schedule`: batch placements per second through the real Raft path, to N
//!   simulated nodes (real sessions) whose simulated executor reports each execution Running then
//!   Completed; submit → placed latency, the orchestrator's CPU and RSS.
//! - `caravel-bench jobs`: trivial WASM jobs completed per second end to end by one hybrid node
//!   (real executor), submitted by concurrent clients.
//!
//! ```text
//!  bench process (tokio, N HTTP clients) ──PUT /api/v1/orchestrator/jobs──▶ orch-1..3 (caravel serve)
//!                                        └─POST /v3/kv/put (base64)────────▶ etcd e1..e3 (peer TLS)
//!
//!  sessions: bench (N × SessionClient, N UDP sockets) ══QUIC mTLS══▶ orch-1 (caravel serve)
//!  heal, logs: compute-1 (caravel serve --compute) ══QUIC══▶ UDP proxy (bench) ══▶ orch-1
//!                                       REST API / WebSocket ◀── bench
//! ```
//!
//! Not a test: it asserts nothing about timings and is run by hand (`docs/benchmarks.md`). Every
//! process it starts is SIGKILLed and every directory it made is removed on exit, on error and on
//! SIGINT/SIGTERM. Setup lines go to stderr; the tables (data) to stdout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use caravel_chaos_tests::cluster::{Group, GroupOptions};
use caravel_chaos_tests::proxy::{Faults, LinkFaults, Proxy};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "caravel-bench",
    about = "Caravel's benchmarks: replicated writes (vs etcd), leader failover, compute sessions \
             (scale, heal after a cut, log goodput under loss)"
)]
struct Cli {
    /// The `caravel` binary to run (default: $CARAVEL_BIN, else the `caravel` next to this binary).
    #[arg(long, global = true)]
    caravel_bin: Option<PathBuf>,
    /// Where to make the temporary data dirs (default: the system temp dir). Put it on the disk you
    /// want to measure: every member fsyncs there.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// `table` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Replicated-write throughput and latency: Caravel vs etcd, 3 members each, on loopback.
    Writes(WritesArgs),
    /// Leader failover: SIGKILL the leader under load, repeatedly; print the distribution.
    Failover(FailoverArgs),
    /// Compute sessions held by one orchestrator: N simulated nodes, ramp-up rate, RSS and CPU.
    Sessions(SessionsArgs),
    /// Link healed after a cut: heal → node CONNECTED and → piled-up reports committed.
    Heal(HealArgs),
    /// Log-stream goodput through a compute session at several datagram loss rates.
    Logs(LogsArgs),
    /// Batch placements per second through the real Raft path: N simulated compute nodes (real
    /// sessions, a simulated executor that reports each execution Running then Completed).
    Schedule(ScheduleArgs),
    /// Trivial WASM jobs completed per second end to end by one hybrid node (real orchestrator,
    /// real WASM executor), submitted by concurrent clients.
    Jobs(JobsArgs),
    /// Execution reports committed per second by one orchestrator: N simulated nodes each hold
    /// the executions placed on them, then all report them at once (Running, then Completed).
    Reports(ReportsArgs),
}

#[derive(Debug, clap::Args)]
struct ReportsArgs {
    /// Simulated compute nodes (as `schedule`'s: real QUIC sessions; `ulimit -n` above this).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Executions placed per node on average (schedule's job: zones z0–z2, so about three nodes
    /// in four hold them); two reports each.
    #[arg(long, default_value_t = 10)]
    per_node: usize,
    /// Handshakes in flight at once while the nodes connect.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Give up when a phase (placing, reporting) takes longer than this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Debug, clap::Args)]
struct JobsArgs {
    /// Jobs submitted: the no-op WASM module, inline, one partition each.
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Concurrent submitting clients, each sending its next job when the last is acknowledged.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Executions the node runs at once (`Compute.MaxConcurrent`; 0: the node's default, one per core).
    #[arg(long, default_value_t = 0)]
    max_concurrent: usize,
    /// Give up when not every job completed this many seconds after the first submission.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Debug, clap::Args)]
struct ScheduleArgs {
    /// Simulated compute nodes (2 CPU, 8 GiB, 100 GiB each, labels zone=z0..z3), each a QUIC
    /// session with its own UDP socket and certificate (`ulimit -n` above this).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Batch jobs submitted, each asking 100m CPU and 64 MiB and constrained to zones z0–z2.
    #[arg(long, default_value_t = 4000)]
    jobs: usize,
    /// Partitions per job (`Count`): one placement each.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Handshakes in flight at once while the nodes connect.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Give up when not every placement arrived this many seconds after the first submission.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Debug, clap::Args)]
struct SessionsArgs {
    /// Simulated compute nodes, each a QUIC session with its own UDP socket and certificate (needs
    /// about this many open files: `ulimit -n`).
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Seconds to hold every session after the ramp-up. Longer than a minute, so that the hold
    /// includes the orchestrator's periodic node-info refresh (one Raft write per node a minute).
    #[arg(long, default_value_t = 120)]
    hold_secs: u64,
    /// Handshakes in flight at once during the ramp-up (a node holds its slot until its Hello is
    /// acknowledged).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Seconds between a node's heartbeats (the compute node's default, Compute.HeartbeatSecs).
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// Seconds between samples of the orchestrator (RSS, CPU, /metrics).
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Stop waiting for the ramp-up after this long and hold whatever is up.
    #[arg(long, default_value_t = 1200)]
    ramp_timeout_secs: u64,
    /// Stop waiting for the ramp-up when no new session was established for this long.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
}

#[derive(Debug, clap::Args)]
struct HealArgs {
    /// Seconds the compute node's link is blackholed.
    #[arg(long, default_value_t = 60)]
    cut_secs: u64,
    /// Jobs Running on the node when the link is cut (all run at once).
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Seconds each job sleeps (it should end during the cut, so its reports pile up).
    #[arg(long, default_value_t = 10)]
    job_secs: u64,
    /// Cuts, one after the other, on the same processes.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// What-if rounds afterwards: a simulated node in this process (the real session client, no
    /// jobs) with the probe interval below instead of the default, cut and healed the same way;
    /// measures heal → session re-established. 0 skips them.
    #[arg(long, default_value_t = 3)]
    what_if_rounds: usize,
    /// What-if: the session client's probe interval (default of the product: 2,000). 10,000, the
    /// handshake timeout, keeps about one dial open at a time, as before dials overlapped.
    #[arg(long, default_value_t = 10_000)]
    what_if_probe_ms: u64,
    /// Docker image with /bin/sh and sleep (scripts/test-image.sh builds the default).
    #[arg(long, default_value = "caravel-busybox:latest")]
    image: String,
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    /// Lines the job prints (`seq 1 N`).
    #[arg(long, default_value_t = 200_000)]
    lines: u64,
    /// Datagram loss in percent on both directions of the node's link, one set of runs per value.
    #[arg(long, value_delimiter = ',', default_value = "0,5,20")]
    loss: Vec<f64>,
    /// Pad every line with this many characters (0: the bare numbers of `seq`, 1–7 bytes a line).
    #[arg(long, default_value_t = 0)]
    line_bytes: usize,
    /// Runs per loss value.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Give up one run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Docker image with /bin/sh and seq (scripts/test-image.sh builds the default).
    #[arg(long, default_value = "caravel-busybox:latest")]
    image: String,
    /// The node's QUIC congestion controller (`Compute.CongestionControl`): bbr, cubic or newreno.
    #[arg(long, default_value = "bbr")]
    congestion: String,
}

#[derive(Debug, clap::Args)]
struct WritesArgs {
    /// Measured seconds of each row (after a warm-up of a tenth of it, at most 2 s).
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Payload bytes of each write: a job's `Meta` value, an etcd value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Numbers of concurrent clients, one pair of rows (leader, any) per number.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Caravel only (no etcd rows).
    #[arg(long)]
    skip_etcd: bool,
    /// The `etcd` binary (Debian: `apt-get install -y etcd-server etcd-client`).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
}

#[derive(Debug, clap::Args)]
struct FailoverArgs {
    /// How many times to SIGKILL the leader.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Concurrent writers, each sending to a random running member.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Payload bytes of each write (a job's `Meta` value).
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Copy each member's log here at the end (`<member>.log`), to line a slow failover up with
    /// what the survivors did: the kill lines give each kill's UTC time. With
    /// `CARAVEL_LOG=info,openraft=info` the members log every vote too.
    #[arg(long)]
    logs: Option<PathBuf>,
}

/// Child processes to clean up, by kind.
type ChildPids = Vec<(&'static str, Vec<u32>)>;
/// One survivor's cluster-status answers: (when the poll was sent, the leader it named).
type LeaderViews = Vec<(Instant, String)>;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = caravel_bin(cli.caravel_bin.as_deref())?;
    let base = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("caravel-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot make a temp dir in {}", base.display()))?;
    // The bench's own clients; the group keeps its own small runtime (`Group::start`), so group calls
    // are made from this (non-runtime) thread only.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let reaper = Reaper::new(tmp.path().to_path_buf());
    rt.spawn(reaper.clone().on_signal());
    let res = match &cli.cmd {
        Cmd::Writes(a) => writes(&rt, &bin, tmp.path(), a, &reaper, cli.output),
        Cmd::Failover(a) => failover(&rt, &bin, tmp.path(), a, &reaper, cli.output),
        Cmd::Sessions(a) => sessions(&rt, &bin, tmp.path(), a, &reaper, cli.output),
        Cmd::Heal(a) => heal(&rt, &bin, tmp.path(), a, &reaper, cli.output),
        Cmd::Logs(a) => logs(&rt, &bin, tmp.path(), a, &reaper, cli.output),
        Cmd::Schedule(a) => schedule(&rt, &bin, tmp.path(), a, &reaper, cli.output),
        Cmd::Jobs(a) => jobs(&rt, &bin, tmp.path(), a, &reaper, cli.output),
        Cmd::Reports(a) => reports(&rt, &bin, tmp.path(), a, &reaper, cli.output),
    };
    drop(rt);
    res
}

fn caravel_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let b = match (flag, std::env::var_os("CARAVEL_BIN")) {
        (Some(b), _) => b.to_path_buf(),
        (None, Some(b)) => PathBuf::from(b),
        (None, None) => std::env::current_exe()?
            .parent()
            .map(|d| d.join("caravel"))
            .context("no directory around this executable")?,
    };
    if !b.is_file() {
        bail!(
            "{} not found: build it (cargo build --release --bin caravel) or pass --caravel-bin",
            b.display()
        );
    }
    Ok(b)
}

/// What to kill and remove if the bench is interrupted: children SIGKILLed, temp dir removed.
/// (On a normal exit `Group`, `EtcdCluster` and the `TempDir` clean up by `Drop`.)
#[derive(Clone)]
struct Reaper {
    /// The current pids of each kind of child (`caravel`, `etcd`).
    pids: Arc<Mutex<ChildPids>>,
    dir: PathBuf,
}

impl Reaper {
    fn new(dir: PathBuf) -> Reaper {
        Reaper {
            pids: Arc::new(Mutex::new(Vec::new())),
            dir,
        }
    }
    /// Replaces the pids of one kind of child (a restarted member has a new pid).
    fn track(&self, kind: &'static str, pids: Vec<u32>) {
        let mut p = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|(k, _)| *k != kind);
        p.push((kind, pids));
    }
    fn track_group(&self, g: &Group) {
        self.track(
            "caravel",
            g.members.iter().filter_map(|m| m.pid()).collect(),
        );
    }
    async fn on_signal(self) {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!(
            "interrupted: killing the benchmark's processes, removing {}",
            self.dir.display()
        );
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for pid in pids.into_iter().flat_map(|(_, p)| p) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        std::process::exit(130);
    }
}

// ---------------------------------------------------------------------------------------------
// Load generation

/// One kind of write.
#[derive(Clone)]
enum Workload {
    /// `PUT /api/v1/orchestrator/jobs` with a new batch job (unique name) carrying the payload in
    /// `Meta`.
    Caravel { value_bytes: usize },
    /// `POST /v3/kv/put` through etcd's gRPC-JSON gateway, unique key, base64 key and value.
    Etcd { value_bytes: usize },
}

fn payload(seed: &mut u64, n: usize) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..n)
        .map(|_| ALNUM[(xorshift(seed) % ALNUM.len() as u64) as usize] as char)
        .collect()
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn caravel_job(name: &str, payload: String) -> Value {
    json!({"Job": {"Name": name, "Type": "batch", "Count": 1,
        "Meta": {"bench-payload": payload},
        "Tasks": [{"Name": "main",
            "Engine": {"Type": "docker", "Params": {"Image": "busybox:1.36", "Entrypoint": ["true"]}}}]}})
}

impl Workload {
    fn request(
        &self,
        c: &reqwest::Client,
        base: &str,
        key: &str,
        seed: &mut u64,
    ) -> reqwest::RequestBuilder {
        match self {
            Workload::Caravel { value_bytes } => c
                .put(format!("{base}/api/v1/orchestrator/jobs"))
                .json(&caravel_job(key, payload(seed, *value_bytes))),
            Workload::Etcd { value_bytes } => {
                let b64 = &base64::engine::general_purpose::STANDARD;
                c.post(format!("{base}/v3/kv/put")).json(&json!({
                    "key": b64.encode(key),
                    "value": b64.encode(payload(seed, *value_bytes)),
                }))
            }
        }
    }
    /// Whether an answer acknowledges the write.
    fn acked(&self, status: u16, body: &[u8]) -> bool {
        if status != 200 {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        match self {
            Workload::Caravel { .. } => v["JobID"].as_str().is_some_and(|s| !s.is_empty()),
            Workload::Etcd { .. } => v["header"]["revision"].is_string(),
        }
    }
    /// Bytes of one request body, for the setup lines.
    fn body_bytes(&self) -> usize {
        let mut seed = 1;
        match self {
            Workload::Caravel { value_bytes } => {
                caravel_job("bench-w0-c0-0", payload(&mut seed, *value_bytes))
                    .to_string()
                    .len()
            }
            Workload::Etcd { value_bytes } => {
                let b64 = &base64::engine::general_purpose::STANDARD;
                json!({"key": b64.encode("bench/w0/c0/0"),
                       "value": b64.encode(payload(&mut seed, *value_bytes))})
                .to_string()
                .len()
            }
        }
    }
}

/// The same client settings for every system and every client: one connection pool per client
/// (so N clients hold N keep-alive connections), 10 s timeout (above Caravel's 5 s write timeout).
fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(1)
        .build()?)
}

/// Where each client sends its writes.
#[derive(Clone)]
enum Targets {
    /// Always this endpoint.
    Fixed(String),
    /// A random endpoint of the list at each write (the list may change while the load runs).
    Random(Arc<Mutex<Vec<String>>>),
}

impl Targets {
    fn pick(&self, seed: &mut u64) -> Option<String> {
        match self {
            Targets::Fixed(s) => Some(s.clone()),
            Targets::Random(l) => {
                let l = l.lock().unwrap_or_else(|e| e.into_inner());
                if l.is_empty() {
                    return None;
                }
                Some(l[(xorshift(seed) % l.len() as u64) as usize].clone())
            }
        }
    }
}

/// What one timed row measured.
#[derive(Debug, Default)]
struct Sample {
    /// Latencies of acknowledged writes started inside the window.
    lat: Vec<Duration>,
    errors: u64,
    window: Duration,
}

/// `clients` sequential writers for `warmup + secs`; writes started in the warm-up are not counted.
async fn timed_load(
    w: Workload,
    targets: Targets,
    clients: usize,
    warmup: Duration,
    secs: Duration,
    tag: String,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let deadline = measure_from + secs;
    let mut set = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (w, targets, tag) = (w.clone(), targets.clone(), tag.clone());
        let c = http()?;
        set.spawn(async move {
            let mut seed = (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let (mut lat, mut errors, mut last_end) = (Vec::new(), 0u64, measure_from);
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let Some(base) = targets.pick(&mut seed) else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let key = match w {
                    Workload::Caravel { .. } => format!("bench-{tag}-c{client}-{seq}"),
                    Workload::Etcd { .. } => format!("bench/{tag}/c{client}/{seq}"),
                };
                seq += 1;
                let ok = match w.request(&c, &base, &key, &mut seed).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.bytes().await {
                            Ok(b) => w.acked(status, &b),
                            Err(_) => false,
                        }
                    }
                    Err(_) => false,
                };
                let t1 = Instant::now();
                if t0 >= measure_from {
                    last_end = last_end.max(t1);
                    if ok {
                        lat.push(t1 - t0);
                    } else {
                        errors += 1;
                    }
                }
                if !ok {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (lat, errors, last_end)
        });
    }
    let mut out = Sample::default();
    let mut end = deadline;
    while let Some(r) = set.join_next().await {
        let (lat, errors, last_end) = r?;
        out.lat.extend(lat);
        out.errors += errors;
        end = end.max(last_end);
    }
    out.window = end - measure_from;
    Ok(out)
}

/// Nearest-rank percentile of sorted values, in ms.
fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// `writes`

#[derive(Debug, Serialize)]
struct WriteRow {
    system: String,
    clients: usize,
    target: String,
    writes: usize,
    errors: u64,
    secs: f64,
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn row(system: &str, clients: usize, target: &str, mut s: Sample) -> WriteRow {
    s.lat.sort_unstable();
    let secs = s.window.as_secs_f64();
    WriteRow {
        system: system.into(),
        clients,
        target: target.into(),
        writes: s.lat.len(),
        errors: s.errors,
        secs,
        writes_per_sec: s.lat.len() as f64 / secs,
        p50_ms: pct_ms(&s.lat, 50.0),
        p99_ms: pct_ms(&s.lat, 99.0),
        max_ms: pct_ms(&s.lat, 100.0),
    }
}

fn print_write_rows(rows: &[WriteRow]) {
    println!(
        "{:<8} {:>7} {:<6} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8}",
        "SYSTEM", "CLIENTS", "TARGET", "WRITES", "ERRORS", "WRITES/S", "P50 MS", "P99 MS", "MAX MS"
    );
    for r in rows {
        println!(
            "{:<8} {:>7} {:<6} {:>8} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.1}",
            r.system,
            r.clients,
            r.target,
            r.writes,
            r.errors,
            r.writes_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.max_ms
        );
    }
}

fn writes(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    a: &WritesArgs,
    reaper: &Reaper,
    output: Output,
) -> anyhow::Result<()> {
    if a.secs == 0 || a.clients.is_empty() || a.clients.contains(&0) {
        bail!("--secs and every --clients number must be at least 1");
    }
    let secs = Duration::from_secs(a.secs);
    let warmup = (secs / 10).min(Duration::from_secs(2));
    eprintln!(
        "machine: {} cores; data dirs under {}",
        cores(),
        dir.display()
    );
    eprintln!("caravel: {} ({})", bin.display(), caravel_version(bin));

    let mut group = Group::start(bin, &dir.join("caravel"), 3, GroupOptions::default())
        .context("cannot start the Caravel group")?;
    reaper.track_group(&group);
    let leader = group.wait_leader(Duration::from_secs(60))?;
    let c_apis: Vec<String> = group.members.iter().map(|m| m.api()).collect();
    eprintln!(
        "caravel group: 3 orchestrators (no compute node), mutual-TLS QUIC between them, fsync on; \
         APIs {}; leader {}",
        c_apis.join(" "),
        group.members[leader].id
    );
    let cw = Workload::Caravel {
        value_bytes: a.value_bytes,
    };
    eprintln!(
        "  a write: PUT /api/v1/orchestrator/jobs, a new batch job (unique name) with {} payload \
         bytes in Meta; request body {} bytes",
        a.value_bytes,
        cw.body_bytes()
    );

    let etcd = if a.skip_etcd {
        None
    } else {
        let e = EtcdCluster::start(&a.etcd_bin, &dir.join("etcd"), 3)?;
        reaper.track("etcd", e.pids());
        let l = rt.block_on(e.leader())?;
        eprintln!(
            "etcd {}: 3 members, peer links TLS (--peer-auto-tls), client API plain HTTP; \
             endpoints {}; leader {}",
            e.version,
            e.clients.join(" "),
            e.names[l]
        );
        Some((e, l))
    };
    let ew = Workload::Etcd {
        value_bytes: a.value_bytes,
    };
    if etcd.is_some() {
        eprintln!(
            "  a write: POST /v3/kv/put (gRPC-JSON gateway), unique key, {} value bytes; request \
             body {} bytes",
            a.value_bytes,
            ew.body_bytes()
        );
    }
    eprintln!(
        "load: per row, N clients each writing sequentially for {warmup:?} warm-up + {secs:?} \
         measured; client: reqwest, one keep-alive connection per client, 10 s timeout"
    );

    let mut rows = Vec::new();
    let mut n_row = 0;
    for &n in &a.clients {
        for target in ["leader", "any"] {
            n_row += 1;
            // Caravel: let the scheduler's writes from the previous row drain first.
            let settled = rt.block_on(settle(&c_apis[leader], Duration::from_secs(60)));
            let t = if target == "leader" {
                Targets::Fixed(c_apis[leader].clone())
            } else {
                Targets::Random(Arc::new(Mutex::new(c_apis.clone())))
            };
            eprintln!("row {n_row}: caravel, {n} client(s) → {target} (log settled: {settled}) …");
            let s = rt.block_on(timed_load(
                cw.clone(),
                t,
                n,
                warmup,
                secs,
                format!("w{n_row}"),
            ))?;
            let r = row("caravel", n, target, s);
            eprintln!("  {} writes, {:.0}/s", r.writes, r.writes_per_sec);
            rows.push(r);

            if let Some((e, l)) = &etcd {
                let t = if target == "leader" {
                    Targets::Fixed(e.clients[*l].clone())
                } else {
                    Targets::Random(Arc::new(Mutex::new(e.clients.clone())))
                };
                eprintln!("row {n_row}: etcd, {n} client(s) → {target} …");
                let s = rt.block_on(timed_load(
                    ew.clone(),
                    t,
                    n,
                    warmup,
                    secs,
                    format!("w{n_row}"),
                ))?;
                let r = row("etcd", n, target, s);
                eprintln!("  {} writes, {:.0}/s", r.writes, r.writes_per_sec);
                rows.push(r);
            }
        }
    }
    // The leader must not have moved during the run, or the "leader" rows were not to the leader.
    let leader_after = group.leader();
    if leader_after != Some(leader) {
        eprintln!(
            "warning: the Caravel leader changed during the run (now {:?}): the `leader` rows \
             were partly forwarded",
            leader_after.map(|i| group.members[i].id.clone())
        );
    }
    drop(etcd);
    drop(group);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            print_write_rows(&rows);
            println!(
                "note: a caravel write = one Raft entry (SubmitJob: job + evaluation), fsynced on a \
                 majority, applied on the leader (on the answering member too when forwarded); the \
                 scheduler then adds its own entries per job in the background (no compute node: the \
                 job is not placed). An etcd write = one put of one key."
            );
        }
    }
    Ok(())
}

/// Waits until the leader's last log index has not moved for 1 s (the scheduler's follow-up writes
/// of earlier jobs are done), at most `max`. Returns whether it settled.
async fn settle(api: &str, max: Duration) -> bool {
    let Ok(c) = http() else { return false };
    let deadline = Instant::now() + max;
    let (mut last, mut since) = (u64::MAX, Instant::now());
    while Instant::now() < deadline {
        if let Some(idx) = leader_last_index(&c, api).await {
            if idx != last {
                (last, since) = (idx, Instant::now());
            } else if since.elapsed() >= Duration::from_secs(1) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn cluster_status(c: &reqwest::Client, api: &str) -> Option<Value> {
    c.get(format!("{api}/api/v1/orchestrator/cluster"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The leader's last log index as a member reports it.
async fn leader_last_index(c: &reqwest::Client, api: &str) -> Option<u64> {
    let s = cluster_status(c, api).await?;
    s["Members"]
        .as_array()?
        .iter()
        .find(|m| m["Role"] == "leader")?["LastLogIndex"]
        .as_u64()
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

fn caravel_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "version unknown".into())
}

// ---------------------------------------------------------------------------------------------
// etcd

/// A 3-member etcd cluster on loopback ports, each member with its own data dir; SIGKILLed on drop.
struct EtcdCluster {
    names: Vec<String>,
    clients: Vec<String>,
    children: Vec<Child>,
    version: String,
}

fn tcp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Hold all listeners until every port is chosen, so the n ports differ.
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(ls
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

impl EtcdCluster {
    fn start(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<EtcdCluster> {
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .with_context(|| {
                format!(
                    "cannot run {}: install it (apt-get install -y etcd-server etcd-client), pass \
                     --etcd-bin, or use --skip-etcd",
                    bin.display()
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("etcd Version: "))
            .unwrap_or("?")
            .to_string();
        let ports = tcp_ports(2 * n)?;
        let names: Vec<String> = (1..=n).map(|i| format!("e{i}")).collect();
        let peer = |i: usize| format!("https://127.0.0.1:{}", ports[n + i]);
        let initial = (0..n)
            .map(|i| format!("{}={}", names[i], peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let clients: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", ports[i]))
            .collect();
        let mut e = EtcdCluster {
            names,
            clients,
            children: Vec::new(),
            version,
        };
        for i in 0..n {
            let data = dir.join(&e.names[i]);
            std::fs::create_dir_all(&data)?;
            let log = std::fs::File::create(dir.join(format!("{}.log", e.names[i])))?;
            let child = Command::new(bin)
                .args(["--name", &e.names[i]])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &e.clients[i]])
                .args(["--advertise-client-urls", &e.clients[i]])
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "caravel-bench"])
                .arg("--peer-auto-tls")
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // The Debian package reads ETCD_* variables; none of the caller's should leak in.
                .env_clear()
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            e.children.push(child);
        }
        Ok(e)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Waits until every member names the same leader; returns its index.
    async fn leader(&self) -> anyhow::Result<usize> {
        let c = http()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut ids = Vec::new();
            let mut leader = Vec::new();
            for url in &self.clients {
                let v: Option<Value> = async {
                    c.post(format!("{url}/v3/maintenance/status"))
                        .json(&json!({}))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()
                }
                .await;
                ids.push(
                    v.as_ref()
                        .and_then(|v| v["header"]["member_id"].as_str().map(String::from)),
                );
                leader.push(
                    v.as_ref()
                        .and_then(|v| v["leader"].as_str().map(String::from)),
                );
            }
            if let Some(Some(l)) = leader.first()
                && leader.iter().all(|x| x.as_ref() == Some(l))
                && let Some(i) = ids.iter().position(|id| id.as_ref() == Some(l))
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!(
                    "the etcd cluster agreed on no leader within 60 s (ids {ids:?}, leaders {leader:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `failover`

#[derive(Debug, Serialize)]
struct KillRecord {
    killed: String,
    new_leader: String,
    leader_agreed_ms: f64,
    first_write_ms: f64,
    catch_up_ms: f64,
    failed_writes: u64,
}

#[derive(Debug, Serialize)]
struct Dist {
    what: String,
    n: usize,
    min_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn dist(what: &str, v: impl Iterator<Item = f64>) -> Dist {
    let mut d: Vec<Duration> = v
        .filter(|x| x.is_finite())
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    d.sort_unstable();
    Dist {
        what: what.into(),
        n: d.len(),
        min_ms: pct_ms(&d, 0.0),
        p50_ms: pct_ms(&d, 50.0),
        p90_ms: pct_ms(&d, 90.0),
        p99_ms: pct_ms(&d, 99.0),
        max_ms: pct_ms(&d, 100.0),
    }
}

/// The continuous writers of the failover bench and what they report to it.
struct Writers {
    stop: Arc<AtomicBool>,
    /// The instant of the current kill, and the first ack of a write started after it.
    kill: Arc<Mutex<(Option<Instant>, Option<Instant>)>>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_ack: Arc<Mutex<Instant>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_writers(
    rt: &tokio::runtime::Runtime,
    apis: Arc<Mutex<Vec<String>>>,
    clients: usize,
    value_bytes: usize,
) -> anyhow::Result<Writers> {
    let w = Writers {
        stop: Arc::new(AtomicBool::new(false)),
        kill: Arc::new(Mutex::new((None, None))),
        acked: Arc::new(AtomicU64::new(0)),
        failed: Arc::new(AtomicU64::new(0)),
        last_ack: Arc::new(Mutex::new(Instant::now())),
        tasks: Vec::new(),
    };
    let work = Workload::Caravel { value_bytes };
    let mut tasks = Vec::new();
    for client in 0..clients {
        let c = http()?;
        let (stop, kill, acked, failed, last_ack, targets, work) = (
            w.stop.clone(),
            w.kill.clone(),
            w.acked.clone(),
            w.failed.clone(),
            w.last_ack.clone(),
            Targets::Random(apis.clone()),
            work.clone(),
        );
        tasks.push(rt.spawn(async move {
            let mut seed = (client as u64 + 7).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Some(base) = targets.pick(&mut seed) else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let key = format!("fo-c{client}-{seq}");
                seq += 1;
                let t0 = Instant::now();
                let ok = match work.request(&c, &base, &key, &mut seed).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        r.bytes().await.is_ok_and(|b| work.acked(status, &b))
                    }
                    Err(_) => false,
                };
                let t1 = Instant::now();
                if ok {
                    acked.fetch_add(1, Ordering::Relaxed);
                    *last_ack.lock().unwrap_or_else(|e| e.into_inner()) = t1;
                    let mut k = kill.lock().unwrap_or_else(|e| e.into_inner());
                    if let (Some(at), None) = (k.0, k.1)
                        && t0 >= at
                    {
                        k.1 = Some(t1);
                    }
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    Ok(Writers { tasks, ..w })
}

/// Polls the survivors' cluster status (what `caravel cluster status` shows) every 50 ms without
/// waiting for earlier answers, and returns the new leader and when it was agreed: for each survivor
/// the send time of the first poll from which on it always named that leader, the later of the two.
/// Answers are attributed to their send time because a member reads its leader first and then
/// probes its peers (up to 1.5 s for a dead one).
async fn watch_new_leader(
    apis: Vec<String>,
    old: String,
    timeout: Duration,
) -> anyhow::Result<(String, Instant)> {
    let c = http()?;
    let seen: Arc<Mutex<Vec<LeaderViews>>> = Arc::new(Mutex::new(vec![Vec::new(); apis.len()]));
    let deadline = Instant::now() + timeout;
    let mut polls = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if Instant::now() > deadline {
            bail!("no new leader agreed by {apis:?} within {timeout:?}");
        }
        while polls.try_join_next().is_some() {}
        if polls.len() < 200 {
            for (i, api) in apis.iter().enumerate() {
                let (c, api, seen) = (c.clone(), api.clone(), seen.clone());
                polls.spawn(async move {
                    let sent = Instant::now();
                    if let Some(s) = cluster_status(&c, &api).await {
                        let l = s["Leader"].as_str().unwrap_or_default().to_string();
                        seen.lock().unwrap_or_else(|e| e.into_inner())[i].push((sent, l));
                    }
                });
            }
        }
        // Decide once each survivor's latest 4 answers name the same new leader.
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut since = Vec::new();
        let mut agreed: Option<String> = None;
        for s in &mut seen {
            s.sort_by_key(|(t, _)| *t);
            let tail: Vec<&String> = s.iter().rev().take(4).map(|(_, l)| l).collect();
            if tail.len() < 4 || tail.iter().any(|l| *l != tail[0]) {
                break;
            }
            let l = tail[0].clone();
            if l.is_empty() || l == old || agreed.as_ref().is_some_and(|a| *a != l) {
                break;
            }
            // The first send time from which on this survivor always named `l`.
            let from = s.iter().rposition(|(_, x)| *x != l).map_or(0, |p| p + 1);
            since.push(s[from].0);
            agreed = Some(l);
        }
        if since.len() == apis.len()
            && let (Some(l), Some(t)) = (agreed, since.iter().max())
        {
            polls.abort_all();
            return Ok((l, *t));
        }
    }
}

/// Waits until member `api` has applied at least `index` (a restarted member caught up).
async fn wait_applied(api: &str, id: &str, index: u64, timeout: Duration) -> anyhow::Result<()> {
    let c = http()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = cluster_status(&c, api).await
            && let Some(me) = s["Members"]
                .as_array()
                .and_then(|a| a.iter().find(|m| m["ID"] == id))
            && me["AppliedIndex"].as_u64().is_some_and(|a| a >= index)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{id} did not apply index {index} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Now in UTC as the members' logs print it (`HH:MM:SS.mmm`).
fn utc_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    )
}

fn failover(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    a: &FailoverArgs,
    reaper: &Reaper,
    output: Output,
) -> anyhow::Result<()> {
    if a.kills == 0 || a.clients == 0 {
        bail!("--kills and --clients must be at least 1");
    }
    eprintln!(
        "machine: {} cores; data dirs under {}",
        cores(),
        dir.display()
    );
    eprintln!("caravel: {} ({})", bin.display(), caravel_version(bin));
    let mut group = Group::start(bin, &dir.join("caravel"), 3, GroupOptions::default())
        .context("cannot start the Caravel group")?;
    reaper.track_group(&group);
    let apis_all: Vec<String> = group.members.iter().map(|m| m.api()).collect();
    eprintln!(
        "caravel group: 3 orchestrators (no compute node), mutual-TLS QUIC, fsync on; APIs {}",
        apis_all.join(" ")
    );
    eprintln!(
        "load: {} clients, each writing sequentially (a new job per write, {} payload bytes) to a \
         random running member; a killed member leaves the list at the kill and returns once caught up",
        a.clients, a.value_bytes
    );
    let live = Arc::new(Mutex::new(apis_all.clone()));
    let writers = start_writers(rt, live.clone(), a.clients, a.value_bytes)?;
    let mut records = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for k in 1..=a.kills {
            // Steady state: one agreed leader, writes flowing.
            let leader = group.wait_leader(Duration::from_secs(60))?;
            let flowing = Instant::now() + Duration::from_secs(30);
            std::thread::sleep(Duration::from_secs(1));
            while writers
                .last_ack
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                > Duration::from_millis(200)
            {
                if Instant::now() > flowing {
                    bail!("writes are not being acknowledged before kill {k}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let old = group.members[leader].id.clone();
            let survivors: Vec<String> = (0..group.members.len())
                .filter(|&i| i != leader)
                .map(|i| group.members[i].api())
                .collect();
            let failed_before = writers.failed.load(Ordering::Relaxed);

            let at = Instant::now();
            let at_utc = utc_now();
            *writers.kill.lock().unwrap_or_else(|e| e.into_inner()) = (Some(at), None);
            live.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|x| *x != apis_all[leader]);
            group.kill(leader);

            let (new_leader, agreed) = rt.block_on(watch_new_leader(
                survivors.clone(),
                old.clone(),
                Duration::from_secs(60),
            ))?;
            let first = loop {
                if let Some(t) = writers.kill.lock().unwrap_or_else(|e| e.into_inner()).1 {
                    break t;
                }
                if at.elapsed() > Duration::from_secs(60) {
                    bail!("no write was acknowledged within 60 s of kill {k}");
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let failed = writers.failed.load(Ordering::Relaxed) - failed_before;

            // Restart the killed member and wait until it has applied what the leader had then.
            let target = rt
                .block_on(async {
                    let c = http().ok()?;
                    leader_last_index(&c, &survivors[0]).await
                })
                .context("the new leader's log index is unknown")?;
            let restarted = Instant::now();
            let restarted_utc = utc_now();
            group.restart(leader)?;
            reaper.track_group(&group);
            rt.block_on(wait_applied(
                &apis_all[leader],
                &old,
                target,
                Duration::from_secs(120),
            ))?;
            let caught_up = restarted.elapsed();
            live.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(apis_all[leader].clone());

            let r = KillRecord {
                killed: old,
                new_leader,
                leader_agreed_ms: (agreed - at).as_secs_f64() * 1e3,
                first_write_ms: (first - at).as_secs_f64() * 1e3,
                catch_up_ms: caught_up.as_secs_f64() * 1e3,
                failed_writes: failed,
            };
            eprintln!(
                "kill {k}/{} at {at_utc}: {} → leader {} agreed after {:.0} ms, first write acked \
                 after {:.0} ms ({} writes failed meanwhile); restarted at {restarted_utc}, caught up \
                 to index {target} in {:.0} ms",
                a.kills,
                r.killed,
                r.new_leader,
                r.leader_agreed_ms,
                r.first_write_ms,
                r.failed_writes,
                r.catch_up_ms
            );
            records.push(r);
        }
        Ok(())
    })();
    writers.stop.store(true, Ordering::Relaxed);
    for t in writers.tasks {
        t.abort();
    }
    let acked = writers.acked.load(Ordering::Relaxed);
    if let Some(to) = &a.logs {
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        for m in &group.members {
            let dest = to.join(format!("{}.log", m.id));
            std::fs::write(&dest, m.log_text())
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
        eprintln!("member logs copied to {}", to.display());
    }
    drop(group);
    result?;

    let dists = vec![
        dist(
            "kill → new leader agreed",
            records.iter().map(|r| r.leader_agreed_ms),
        ),
        dist(
            "kill → first acked write",
            records.iter().map(|r| r.first_write_ms),
        ),
        dist("restart → caught up", records.iter().map(|r| r.catch_up_ms)),
    ];
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"kills": records, "distributions": dists}))?
        ),
        Output::Table => {
            println!(
                "{:<26} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "MEASURE (ms)", "N", "MIN", "P50", "P90", "P99", "MAX"
            );
            for d in &dists {
                println!(
                    "{:<26} {:>5} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                    d.what, d.n, d.min_ms, d.p50_ms, d.p90_ms, d.p99_ms, d.max_ms
                );
            }
            println!(
                "note: {} writes acknowledged in all, {} failed (most while a leader was missing); \
                 \"first acked write\" counts only writes sent after the kill.",
                acked,
                records.iter().map(|r| r.failed_writes).sum::<u64>()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared by the session benchmarks: /proc sampling, /metrics, the REST API, a proxied compute node

/// Resident memory and CPU time of one process, read from `/proc`.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    rss_kib: u64,
    /// Peak resident memory (VmHWM).
    peak_kib: u64,
    /// User + system CPU time.
    cpu_secs: f64,
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`, 100 on Linux).
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn proc_stat(pid: u32, tck: f64) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces): field 3 (state) onwards; utime is field 14,
    // stime field 15 (proc(5)).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ProcStat {
        rss_kib: kib("VmRSS:")?,
        peak_kib: kib("VmHWM:")?,
        cpu_secs: ticks as f64 / tck,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The soft limit on open files of this process (`ulimit -n`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |k| k / 1024)
}

/// Sums the samples of metric `name` (exact name, `_total` included for counters) whose labels
/// contain every one of `labels` (`key="value"`). `None` if no sample matched.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = series.split_at(series.find('{').unwrap_or(series.len()));
        if n != name || !labels.iter().all(|x| l.contains(x)) {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

async fn get_text(c: &reqwest::Client, url: &str) -> Option<String> {
    let r = c.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

async fn get_json(c: &reqwest::Client, url: &str) -> Option<Value> {
    let r = c.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// A node's connection status as the orchestrator's API reports it (`CONNECTED`, `DISCONNECTED`).
async fn node_status(c: &reqwest::Client, api: &str, id: &str) -> Option<String> {
    let v = get_json(c, &format!("{api}/api/v1/orchestrator/nodes/{id}")).await?;
    v["Node"]["ConnectionState"]["Status"]
        .as_str()
        .map(String::from)
}

/// Job id → job state (`Running`, `Completed`, …) of up to 1,000 jobs.
async fn job_states(
    c: &reqwest::Client,
    api: &str,
) -> Option<std::collections::HashMap<String, String>> {
    let v = get_json(c, &format!("{api}/api/v1/orchestrator/jobs?limit=1000")).await?;
    Some(
        v["Items"]
            .as_array()?
            .iter()
            .filter_map(|j| {
                Some((
                    j["ID"].as_str()?.to_string(),
                    j["State"]["StateType"].as_str()?.to_string(),
                ))
            })
            .collect(),
    )
}

/// The compute states (`ExecutionStateType` numbers: 6 Running, 9 Completed) of a job's executions.
async fn execution_states(c: &reqwest::Client, api: &str, job: &str) -> Option<Vec<i64>> {
    let v = get_json(
        c,
        &format!("{api}/api/v1/orchestrator/jobs/{job}/executions"),
    )
    .await?;
    Some(
        v["Items"]
            .as_array()?
            .iter()
            .filter_map(|e| e["ComputeState"]["StateType"].as_i64())
            .collect(),
    )
}

const EXEC_RUNNING: i64 = 6;
const EXEC_COMPLETED: i64 = 9;

/// A batch job of one Docker task running `script` under `/bin/sh -c`, small enough that many fit
/// on one node.
fn docker_job(name: &str, image: &str, script: &str) -> Value {
    json!({"Job": {"Name": name, "Type": "batch", "Count": 1,
        "Tasks": [{"Name": "main",
            "Engine": {"Type": "docker", "Params": {"Image": image,
                "Entrypoint": ["/bin/sh", "-c"], "Parameters": [script]}},
            "Network": {"Type": "None"},
            "Resources": {"CPU": "100m", "Memory": "64Mb"},
            "Timeouts": {"ExecutionTimeout": 1800}}]}})
}

async fn submit(c: &reqwest::Client, api: &str, job: &Value) -> anyhow::Result<String> {
    let r = c
        .put(format!("{api}/api/v1/orchestrator/jobs"))
        .json(job)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    match v["JobID"].as_str() {
        Some(id) if status.is_success() && !id.is_empty() => Ok(id.to_string()),
        _ => bail!("job submission failed ({status}): {v}"),
    }
}

fn docker_image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A one-member orchestrator group and one compute-only node process (`caravel serve --compute`)
/// that dials the orchestrator through a fault-injecting UDP proxy:
///
/// ```text
///  compute-1 (caravel serve --compute) ──QUIC──▶ proxy (bench) ──▶ orch-1 compute port
///        └─ GET /metrics (direct, outbox)         blackhole / loss      └─ REST API (direct)
/// ```
struct ProxiedNode {
    group: Group,
    proxy: Proxy,
    compute: Option<Child>,
    node_id: String,
    node_dir: PathBuf,
    /// `http://127.0.0.1:PORT/metrics` of the compute node.
    node_metrics: String,
    api: String,
}

impl ProxiedNode {
    fn start(
        rt: &tokio::runtime::Runtime,
        bin: &Path,
        dir: &Path,
        reaper: &Reaper,
        extra: &[String],
    ) -> anyhow::Result<ProxiedNode> {
        let group = Group::start(bin, &dir.join("caravel"), 1, GroupOptions::default())
            .context("cannot start the orchestrator")?;
        reaper.track_group(&group);
        let m = &group.members[0];
        let api = m.api();
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], m.compute_port));
        let proxy = rt.block_on(Proxy::start("127.0.0.1:0".parse()?, upstream))?;
        let node_id = "compute-1".to_string();
        let certs = group.dir.join("certs");
        let certs_s = certs.to_string_lossy().into_owned();
        let o = Command::new(bin)
            .args(["cert", "issue", "--ca-dir", &certs_s, "--node-id", &node_id])
            .args(["--role", "compute"])
            .args(["--out-dir", &certs_s])
            .output()?;
        if !o.status.success() {
            bail!(
                "caravel cert issue failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let node_dir = dir.join(&node_id);
        std::fs::create_dir_all(&node_dir)?;
        let metrics_port = caravel_chaos_tests::free_port()?;
        let cert = |f: String| certs.join(f).to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--compute".into(),
            "--node-id".into(),
            node_id.clone(),
            "--orchestrators".into(),
            proxy.local_addr().to_string(),
            "--tls-ca".into(),
            cert("ca.crt".into()),
            "--tls-cert".into(),
            cert(format!("{node_id}.crt")),
            "--tls-key".into(),
            cert(format!("{node_id}.key")),
            "--data-dir".into(),
            node_dir.to_string_lossy().into_owned(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
        ];
        args.extend(extra.iter().cloned());
        let log = std::fs::File::create(node_dir.join("node.log"))?;
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_remove("CARAVEL_API_PORT")
            .env_remove("CARAVEL_API_HOST")
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        reaper.track("compute", vec![child.id()]);
        let mut n = ProxiedNode {
            group,
            proxy,
            compute: Some(child),
            node_id,
            node_dir,
            node_metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            api,
        };
        n.wait_connected(rt, Duration::from_secs(60))?;
        Ok(n)
    }

    /// Lines of the compute node's log that contain `pat`.
    fn count_in_log(&self, pat: &str) -> usize {
        std::fs::read_to_string(self.node_dir.join("node.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(pat))
            .count()
    }

    fn node_log(&self) -> String {
        let t = std::fs::read_to_string(self.node_dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Fails if the compute process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.compute.as_mut()
            && let Some(status) = c.try_wait()?
        {
            self.compute = None;
            bail!(
                "the compute node exited ({status}); its log:\n{}",
                self.node_log()
            );
        }
        Ok(())
    }

    /// Waits until the API shows the node CONNECTED with an empty outbox.
    fn wait_connected(
        &mut self,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let c = http()?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let (status, metrics) = rt.block_on(async {
                tokio::join!(
                    node_status(&c, &self.api, &self.node_id),
                    get_text(&c, &self.node_metrics)
                )
            });
            let pending = metrics
                .as_deref()
                .and_then(|m| metric_sum(m, "caravel_compute_outbox_pending", &[]));
            if status.as_deref() == Some("CONNECTED") && pending == Some(0.0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} is not CONNECTED with an empty outbox after {timeout:?} (status {status:?}, \
                     pending {pending:?}); its log:\n{}",
                    self.node_id,
                    self.node_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ProxiedNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.compute.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.group.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// `sessions`

/// A simulated node waits this long for the `Ack` of its `Hello`, then carries on without it
/// (compute/src/node.rs `HANDSHAKE_TIMEOUT`); it counts as up only once acknowledged.
const SIM_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// A simulated node that has no session this long after it was let through gives its handshake
/// slot back anyway (its client keeps retrying).
const SIM_SLOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the simulated nodes count, all together.
#[derive(Default)]
struct SimCounters {
    /// Sessions whose `Hello` was acknowledged and that have not ended.
    up: AtomicU64,
    /// Nodes whose first `Hello` was acknowledged.
    established: AtomicU64,
    /// `Hello`s acknowledged, reconnections included.
    sessions: AtomicU64,
    /// Acknowledged sessions that ended while the bench was not stopping.
    lost: AtomicU64,
    /// Sessions whose `Hello` got no `Ack` within [`SIM_ACK_TIMEOUT`] (they carry on, as a node does).
    no_ack: AtomicU64,
    heartbeats: AtomicU64,
    /// Control messages handed to the session (Heartbeat and Inventory).
    control_sent: AtomicU64,
    /// Anything but `Ack` from the orchestrator (none expected without an executor: no jobs).
    commands: AtomicU64,
}

struct SimShared {
    counters: SimCounters,
    /// (when, dial → Ack) of each node's first acknowledged `Hello`.
    firsts: Mutex<Vec<(Instant, Duration)>>,
    stop: tokio_util::sync::CancellationToken,
    heartbeat: Duration,
    /// `schedule`: the simulated executor's book; `None`: a node that runs nothing.
    executor: Option<SimExecutor>,
}

/// What the `schedule` bench's simulated executor records: when each job was submitted, when each
/// of its executions reached a node.
#[derive(Default)]
struct SimExecutor {
    /// Job name → when its submission was sent.
    submitted: Mutex<std::collections::HashMap<String, Instant>>,
    /// (arrival, submit → arrival) of each `Run`.
    placed: Mutex<Vec<(Instant, Duration)>>,
    /// `Run`s of jobs the bench did not submit, or repeated.
    strays: AtomicU64,
    /// `reports`: while this holds `false`, each node keeps the executions it was sent and reports
    /// nothing; once it turns `true`, every node reports all of them at once (Running, then
    /// Completed). `None`: report each execution as soon as it arrives.
    release: Option<tokio::sync::watch::Sender<bool>>,
    /// Nodes holding executions for the release.
    holders: Mutex<std::collections::HashSet<String>>,
}

/// Reports `execution` Running, then Completed, numbered after `seq`, as a node whose task ended at
/// once. False once the session is gone.
async fn report_ran(end: &caravel_net::ComputeEnd, seq: &AtomicU64, execution: &str) -> bool {
    use caravel_model::wire::ToOrchestrator;
    for state in [
        caravel_model::ExecutionStateType::Running,
        caravel_model::ExecutionStateType::Completed,
    ] {
        let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
        let update = caravel_model::execution::ExecutionUpdate {
            execution_id: execution.to_string(),
            state,
            message: String::new(),
            run_output: None,
            published_result: None,
            topic: String::new(),
            time: 0,
        };
        if end
            .outbox
            .send(ToOrchestrator::Report { seq, update })
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Until `release` turns true (forever without one).
async fn released(release: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match release {
        Some(r) => {
            if r.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// A handshake slot, given back when the node's first `Hello` is acknowledged.
type Slot = Arc<Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a compute node of this machine would advertise (compute/src/node.rs `node_info`).
fn sim_info(id: &str, bench: &str) -> caravel_model::node::NodeInfo {
    use caravel_model::execution::Resources;
    use caravel_model::node::{BuildVersionInfo, ComputeNodeInfo, NodeInfo};
    let capacity = Resources {
        cpu: 2.0,
        memory: 8 << 30,
        disk: 100 << 30,
        gpu: 0,
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // Four zones, for the `schedule` bench's constraint.
    let zone = format!("z{}", id.bytes().map(u64::from).sum::<u64>() % 4);
    NodeInfo {
        node_id: id.to_string(),
        node_type: "Compute".into(),
        labels: [
            ("os_type", std::env::consts::OS),
            ("os_arch", "amd64"),
            ("name", id),
            ("caravel-bench", bench),
            ("zone", &zone),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        compute_node_info: ComputeNodeInfo {
            execution_engines: s(&["docker", "wasm"]),
            publishers: s(&["local", "s3", "noop"]),
            storage_sources: s(&["inline", "localDirectory", "urlDownload", "s3", "ipfs"]),
            max_capacity: capacity.clone(),
            available_capacity: capacity.clone(),
            max_job_requirements: capacity,
            ..ComputeNodeInfo::default()
        },
        bacalhau_version: BuildVersionInfo::current(),
        ..NodeInfo::default()
    }
}

/// One simulated node: waits for a handshake slot, then runs the real session client
/// (`caravel_net::session`, its own UDP socket and certificate) until the bench stops.
/// Refuses to start `nodes` simulated nodes without the file descriptors for them: one UDP socket
/// each (each runs the real client, which owns its endpoint), plus the runtime's and the HTTP
/// clients'.
fn fd_room_for(nodes: usize) -> anyhow::Result<()> {
    let need = nodes as u64 + 512;
    if let Some(soft) = open_files_limit()
        && soft < need
    {
        bail!(
            "{nodes} simulated nodes need about {need} file descriptors (one UDP socket each) but \
             this shell allows {soft}: raise it first, e.g. `ulimit -n {need}` (at most the hard \
             limit, `ulimit -Hn`)"
        );
    }
    Ok(())
}

/// One task per simulated node, each labelled `caravel-bench=<bench>`.
fn spawn_sim_nodes(
    rt: &tokio::runtime::Runtime,
    clients: Vec<(String, caravel_net::session::SessionClient)>,
    bench: &str,
    gate: &Arc<tokio::sync::Semaphore>,
    sh: &Arc<SimShared>,
) -> Vec<tokio::task::JoinHandle<()>> {
    clients
        .into_iter()
        .map(|(id, client)| {
            rt.spawn(sim_node(
                client,
                sim_info(&id, bench),
                gate.clone(),
                sh.clone(),
            ))
        })
        .collect()
}

async fn sim_node(
    client: caravel_net::session::SessionClient,
    info: caravel_model::node::NodeInfo,
    gate: Arc<tokio::sync::Semaphore>,
    sh: Arc<SimShared>,
) {
    let Ok(permit) = gate.acquire_owned().await else {
        return;
    };
    let dialled = Instant::now();
    let slot: Slot = Arc::new(Mutex::new(Some(permit)));
    let first = Arc::new(AtomicBool::new(true));
    let info = Arc::new(info);
    let stop = sh.stop.clone();
    let release = {
        let (slot, stop) = (slot.clone(), stop.clone());
        async move {
            tokio::select! {
                _ = tokio::time::sleep(SIM_SLOT_TIMEOUT) => {}
                _ = stop.cancelled() => {}
            }
            lock(&slot).take();
        }
    };
    let seq = Arc::new(AtomicU64::new(0));
    let run = client.run(stop, move |end, _connected| {
        let (sh, info, slot, first) = (sh.clone(), info.clone(), slot.clone(), first.clone());
        Box::pin(sim_session(
            end,
            sh,
            info,
            slot,
            first,
            seq.clone(),
            dialled,
        ))
    });
    let _ = tokio::join!(run, release);
}

/// Counts an acknowledged session as up while it lives.
struct UpGuard(Arc<SimShared>);

impl Drop for UpGuard {
    fn drop(&mut self) {
        let c = &self.0.counters;
        c.up.fetch_sub(1, Ordering::Relaxed);
        if !self.0.stop.is_cancelled() {
            c.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One session of a simulated node, as compute/src/node.rs `run` does it: `Hello`, wait for the
/// `Ack` (at most [`SIM_ACK_TIMEOUT`], then carry on without it, as the node does), the (empty)
/// inventory, then a heartbeat and the inventory every interval.
async fn sim_session(
    mut end: caravel_net::ComputeEnd,
    sh: Arc<SimShared>,
    info: Arc<caravel_model::node::NodeInfo>,
    slot: Slot,
    first: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
    dialled: Instant,
) {
    use caravel_model::wire::{ToCompute, ToOrchestrator};
    let c = &sh.counters;
    // The simulated executor numbers its reports per node, across sessions, as a node does.
    let hello = ToOrchestrator::Hello {
        info: Box::new((*info).clone()),
        last_seq: seq.load(Ordering::Relaxed),
    };
    if end.outbox.send(hello).await.is_err() {
        return;
    }
    let inventory = || ToOrchestrator::Inventory {
        running: Vec::new(),
    };
    let ack_deadline = tokio::time::sleep(SIM_ACK_TIMEOUT);
    tokio::pin!(ack_deadline);
    // Heartbeats start once the handshake is over (acknowledged or timed out).
    let mut beating = false;
    let mut up: Option<UpGuard> = None;
    let mut tick = tokio::time::interval(sh.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut release = sh
        .executor
        .as_ref()
        .and_then(|e| e.release.as_ref())
        .map(|tx| tx.subscribe());
    let mut held: Vec<String> = Vec::new();
    'session: loop {
        tokio::select! {
            biased;
            _ = sh.stop.cancelled() => break,
            m = end.inbox.recv() => match m {
                None => break,
                Some(ToCompute::Ack { .. }) => {
                    if up.is_none() {
                        let now = Instant::now();
                        if first.swap(false, Ordering::AcqRel) {
                            c.established.fetch_add(1, Ordering::Relaxed);
                            lock(&sh.firsts).push((now, now - dialled));
                            lock(&slot).take();
                        }
                        c.sessions.fetch_add(1, Ordering::Relaxed);
                        c.up.fetch_add(1, Ordering::Relaxed);
                        up = Some(UpGuard(sh.clone()));
                    }
                    if !beating {
                        beating = true;
                        tick.reset();
                        if end.outbox.send(inventory()).await.is_err() {
                            break;
                        }
                        c.control_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(ToCompute::Run { execution, job }) if sh.executor.is_some() => {
                    let ex = sh.executor.as_ref().expect("checked");
                    let now = Instant::now();
                    match lock(&ex.submitted).get(&job.name) {
                        Some(t) => lock(&ex.placed).push((now, now - *t)),
                        None => {
                            ex.strays.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if release.as_ref().is_some_and(|r| !*r.borrow()) {
                        lock(&ex.holders).insert(info.node_id.clone());
                        held.push(execution.id.clone());
                        continue;
                    }
                    // Runs at once and ends at once.
                    if !report_ran(&end, &seq, &execution.id).await {
                        break;
                    }
                }
                Some(_) => {
                    c.commands.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ = released(&mut release), if !held.is_empty() => {
                for id in std::mem::take(&mut held) {
                    if !report_ran(&end, &seq, &id).await {
                        break 'session;
                    }
                }
            }
            _ = &mut ack_deadline, if !beating => {
                c.no_ack.fetch_add(1, Ordering::Relaxed);
                beating = true;
                tick.reset();
                if end.outbox.send(inventory()).await.is_err() {
                    break;
                }
                c.control_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = tick.tick(), if beating => {
                // Best effort, as the real node: a full channel means the link is busy.
                let hb = ToOrchestrator::Heartbeat { info: Box::new((*info).clone()) };
                if end.outbox.try_send(hb).is_ok() {
                    c.heartbeats.fetch_add(1, Ordering::Relaxed);
                    c.control_sent.fetch_add(1, Ordering::Relaxed);
                }
                if end.outbox.try_send(inventory()).is_ok() {
                    c.control_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    drop(up);
}

/// Issues `n` node certificates from the cluster CA (rcgen, in-process, on every core) and builds
/// one session client per node, each dialling `target`.
fn sim_clients(
    ca: &caravel_net::tls::PemPair,
    n: usize,
    target: &str,
) -> anyhow::Result<Vec<(String, caravel_net::session::SessionClient)>> {
    use caravel_net::session::{ClientIdentity, SessionClient, SessionOptions};
    let threads = cores().max(1);
    let chunk = n.div_ceil(threads).max(1);
    let ids: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> anyhow::Result<Vec<(String, SessionClient)>> {
                    part.iter()
                        .map(|id| {
                            let pair =
                                caravel_net::tls::issue(ca, id, caravel_net::tls::Role::Compute)?;
                            let identity =
                                ClientIdentity::from_pem(&ca.cert, &pair.cert, &pair.key)?;
                            let seed = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                            });
                            let client = SessionClient::new(
                                vec![target.to_string()],
                                &identity,
                                SessionOptions::default(),
                            )?
                            .with_seed(seed);
                            Ok((id.clone(), client))
                        })
                        .collect()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a certificate thread panicked"))??,
            );
        }
        Ok(out)
    })
}

#[derive(Debug, Serialize)]
struct SessionSample {
    phase: &'static str,
    t_secs: f64,
    /// Sessions up as the simulated nodes see them.
    bench_sessions: u64,
    /// `caravel_compute_sessions_connected` of the orchestrator.
    orch_sessions: Option<f64>,
    /// `caravel_nodes{state="CONNECTED"}` of the orchestrator (from its replicated state).
    nodes_connected: Option<f64>,
    orch_rss_mib: f64,
    /// CPU since the previous sample, in % of one core.
    orch_cpu_pct: f64,
    bench_rss_mib: f64,
    bench_cpu_pct: f64,
    /// Raft entries applied per second since the previous sample.
    raft_applied_per_sec: Option<f64>,
}

/// Samples the orchestrator and the bench process.
struct Sampler {
    orch: u32,
    tck: f64,
    metrics_url: String,
    http: reqwest::Client,
    start: Instant,
    /// (when, orchestrator CPU s, bench CPU s, Raft applied index) of the previous sample.
    last: (Instant, f64, f64, Option<f64>),
}

impl Sampler {
    fn new(orch: u32, api: &str) -> anyhow::Result<Sampler> {
        let tck = clk_tck();
        let o = proc_stat(orch, tck).context("cannot read the orchestrator's /proc entry")?;
        let b = proc_stat(std::process::id(), tck).context("cannot read /proc/self")?;
        let now = Instant::now();
        Ok(Sampler {
            orch,
            tck,
            metrics_url: format!("{api}/metrics"),
            http: http()?,
            start: now,
            last: (now, o.cpu_secs, b.cpu_secs, None),
        })
    }

    fn orch(&self) -> Option<ProcStat> {
        proc_stat(self.orch, self.tck)
    }

    fn metrics(&self, rt: &tokio::runtime::Runtime) -> Option<String> {
        rt.block_on(get_text(&self.http, &self.metrics_url))
    }

    fn sample(
        &mut self,
        rt: &tokio::runtime::Runtime,
        phase: &'static str,
        up: u64,
    ) -> anyhow::Result<SessionSample> {
        let m = self.metrics(rt);
        let now = Instant::now();
        let o = self.orch().context("the orchestrator is gone")?;
        let b = proc_stat(std::process::id(), self.tck).context("cannot read /proc/self")?;
        let dt = (now - self.last.0).as_secs_f64().max(1e-3);
        let applied = m
            .as_deref()
            .and_then(|m| metric_sum(m, "caravel_raft_applied_index", &[]));
        let s = SessionSample {
            phase,
            t_secs: (now - self.start).as_secs_f64(),
            bench_sessions: up,
            orch_sessions: m
                .as_deref()
                .and_then(|m| metric_sum(m, "caravel_compute_sessions_connected", &[])),
            nodes_connected: m
                .as_deref()
                .and_then(|m| metric_sum(m, "caravel_nodes", &["state=\"CONNECTED\""])),
            orch_rss_mib: mib(o.rss_kib),
            orch_cpu_pct: (o.cpu_secs - self.last.1) / dt * 100.0,
            bench_rss_mib: mib(b.rss_kib),
            bench_cpu_pct: (b.cpu_secs - self.last.2) / dt * 100.0,
            raft_applied_per_sec: match (self.last.3, applied) {
                (Some(x), Some(y)) => Some((y - x) / dt),
                _ => None,
            },
        };
        self.last = (now, o.cpu_secs, b.cpu_secs, applied.or(self.last.3));
        Ok(s)
    }
}

#[derive(Debug, Serialize)]
struct SessionsSummary {
    nodes: usize,
    established: u64,
    /// When the ramp-up was given up (stalled or timed out), seconds after it began.
    ramp_gave_up_secs: Option<f64>,
    certificates_secs: f64,
    ramp_secs: f64,
    handshakes_per_sec: f64,
    /// Slot granted → `Ack` of the first `Hello` (QUIC + TLS handshake, Hello, registration write).
    connect_p50_ms: f64,
    connect_p99_ms: f64,
    connect_max_ms: f64,
    /// The fastest 1-second window of the ramp-up.
    peak_handshakes_per_sec: f64,
    orch_rss_idle_mib: f64,
    orch_rss_end_mib: f64,
    orch_rss_peak_mib: f64,
    orch_rss_per_session_kib: f64,
    orch_cpu_ramp_pct: f64,
    orch_cpu_hold_pct: f64,
    hold_secs: f64,
    orch_sessions_end: Option<f64>,
    /// Dials the orchestrator refused because too many handshakes were in progress.
    dials_shed: Option<f64>,
    nodes_connected_end: Option<f64>,
    api_connected_end: Option<usize>,
    api_list_ms: Option<f64>,
    /// Control frames (Heartbeat, Inventory) the orchestrator received per second during the hold,
    /// and the rate the simulated nodes handed to their sessions.
    control_in_per_sec: Option<f64>,
    control_sent_per_sec: f64,
    sessions_lost: u64,
    sessions_total: u64,
    hello_without_ack: u64,
    unexpected_commands: u64,
    bench_rss_end_mib: f64,
    /// `RegisterNode` Raft writes over the whole run (Hello, info refresh, retries), and their mean
    /// time from proposal to apply.
    register_writes: Option<f64>,
    register_write_mean_ms: Option<f64>,
    /// Raft writes that timed out in the compute sessions' retry loop (orchestrator log).
    raft_last_index: Option<f64>,
}

fn sessions(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    a: &SessionsArgs,
    reaper: &Reaper,
    output: Output,
) -> anyhow::Result<()> {
    if a.nodes == 0 || a.in_flight == 0 || a.heartbeat_secs == 0 || a.sample_secs == 0 {
        bail!("--nodes, --in-flight, --heartbeat-secs and --sample-secs must be at least 1");
    }
    fd_room_for(a.nodes)?;
    eprintln!(
        "machine: {} cores, {} MiB RAM; data dirs under {}",
        cores(),
        mem_total_mib(),
        dir.display()
    );
    eprintln!("caravel: {} ({})", bin.display(), caravel_version(bin));
    let group = Group::start(bin, &dir.join("caravel"), 1, GroupOptions::default())
        .context("cannot start the orchestrator")?;
    reaper.track_group(&group);
    let m = &group.members[0];
    let pid = m.pid().context("the orchestrator has no pid")?;
    let api = m.api();
    let target = format!("127.0.0.1:{}", m.compute_port);
    eprintln!(
        "orchestrator {} (pid {pid}): one-member Raft group on RocksDB (fsync on), compute sessions \
         on UDP {target} (mutual TLS), API {api}",
        m.id
    );

    let ca = caravel_net::tls::read_ca(&group.dir.join("certs"))
        .context("cannot read the cluster CA")?;
    let t = Instant::now();
    let clients = sim_clients(&ca, a.nodes, &target)?;
    let certificates_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{} node certificates issued from the cluster CA (rcgen, in-process) and session clients \
         built in {certificates_secs:.1} s",
        a.nodes
    );
    eprintln!(
        "each simulated node: the real session client (caravel_net::session::SessionClient, default \
         SessionOptions: keep-alive 2 s, idle timeout 10 s), its own UDP socket and certificate; \
         Hello → Ack → Inventory, then Heartbeat + Inventory every {} s; at most {} handshakes in \
         flight during the ramp-up",
        a.heartbeat_secs, a.in_flight
    );

    let mut sampler = Sampler::new(pid, &api)?;
    let mut samples = Vec::new();
    std::thread::sleep(Duration::from_secs(2));
    samples.push(sampler.sample(rt, "idle", 0)?);
    let rss_idle = samples[0].orch_rss_mib;

    let sh = Arc::new(SimShared {
        counters: SimCounters::default(),
        firsts: Mutex::new(Vec::with_capacity(a.nodes)),
        stop: tokio_util::sync::CancellationToken::new(),
        heartbeat: Duration::from_secs(a.heartbeat_secs),
        executor: None,
    });
    let gate = Arc::new(tokio::sync::Semaphore::new(a.in_flight));
    let result = (|| -> anyhow::Result<SessionsSummary> {
        let cpu0 = sampler.orch().context("the orchestrator is gone")?.cpu_secs;
        let sample_every = Duration::from_secs(a.sample_secs);
        // Fails if the orchestrator is gone; samples it when `next` is due.
        let watch = |sampler: &mut Sampler,
                     samples: &mut Vec<SessionSample>,
                     phase: &'static str,
                     next: &mut Instant|
         -> anyhow::Result<()> {
            if sampler.orch().is_none() {
                bail!(
                    "the orchestrator exited during the {phase}; its log:\n{}",
                    tail_lines(&group.members[0].log_text(), 30)
                );
            }
            if Instant::now() >= *next {
                samples.push(sampler.sample(rt, phase, sh.counters.up.load(Ordering::Relaxed))?);
                *next += sample_every;
            }
            Ok(())
        };
        let ramp_start = Instant::now();
        let tasks = spawn_sim_nodes(rt, clients, "sessions", &gate, &sh);
        let c = &sh.counters;
        let ramp_deadline = ramp_start + Duration::from_secs(a.ramp_timeout_secs);
        let mut next_sample = Instant::now() + sample_every;
        let mut next_line = Instant::now() + Duration::from_secs(2);
        let (mut last_count, mut last_progress) = (0u64, Instant::now());
        let mut stalled = false;
        loop {
            let established = c.established.load(Ordering::Relaxed);
            if established as usize >= a.nodes {
                break;
            }
            if established != last_count {
                (last_count, last_progress) = (established, Instant::now());
            } else if last_progress.elapsed() > Duration::from_secs(a.stall_secs) {
                eprintln!(
                    "ramp-up stalled: {established} of {} sessions, none new for {} s; holding those",
                    a.nodes, a.stall_secs
                );
                stalled = true;
                break;
            }
            if Instant::now() > ramp_deadline {
                eprintln!(
                    "ramp-up: only {established} of {} sessions after {} s; holding those",
                    a.nodes, a.ramp_timeout_secs
                );
                break;
            }
            watch(&mut sampler, &mut samples, "ramp", &mut next_sample)?;
            if Instant::now() >= next_line {
                eprintln!(
                    "ramp-up: {established}/{} sessions after {:.0} s ({:.0}/s), orchestrator RSS \
                     {:.0} MiB",
                    a.nodes,
                    ramp_start.elapsed().as_secs_f64(),
                    established as f64 / ramp_start.elapsed().as_secs_f64(),
                    sampler.orch().map_or(0.0, |o| mib(o.rss_kib))
                );
                next_line += Duration::from_secs(5);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let firsts = lock(&sh.firsts).clone();
        let ramp_end = firsts.iter().map(|(t, _)| *t).max().unwrap_or(ramp_start);
        let ramp_gave_up_secs = (stalled || (established_now(c) as usize) < a.nodes)
            .then(|| ramp_start.elapsed().as_secs_f64());
        let ramp_secs = (ramp_end - ramp_start).as_secs_f64();
        let cpu_ramp = sampler.orch().context("the orchestrator is gone")?.cpu_secs - cpu0;
        let established = c.established.load(Ordering::Relaxed);
        let mut lat: Vec<Duration> = firsts.iter().map(|(_, d)| *d).collect();
        lat.sort_unstable();
        let mut per_sec = std::collections::BTreeMap::<u64, u64>::new();
        for (t, _) in &firsts {
            *per_sec.entry((*t - ramp_start).as_secs()).or_default() += 1;
        }
        let peak = per_sec.values().copied().max().unwrap_or(0);
        samples.push(sampler.sample(rt, "ramp end", c.up.load(Ordering::Relaxed))?);
        eprintln!(
            "ramp-up done: {established} sessions in {ramp_secs:.1} s; holding for {} s",
            a.hold_secs
        );

        // Hold.
        let hold_start = Instant::now();
        let cpu1 = sampler.orch().context("the orchestrator is gone")?.cpu_secs;
        let frames_in = |m: Option<String>| {
            m.as_deref().and_then(|m| {
                metric_sum(
                    m,
                    "caravel_compute_session_frames_total",
                    &["channel=\"control\"", "direction=\"in\""],
                )
            })
        };
        let control_in0 = frames_in(sampler.metrics(rt));
        let sent0 = c.control_sent.load(Ordering::Relaxed);
        let lost0 = c.lost.load(Ordering::Relaxed);
        let hold_end = hold_start + Duration::from_secs(a.hold_secs);
        let mut next_sample = hold_start + sample_every;
        while Instant::now() < hold_end {
            watch(&mut sampler, &mut samples, "hold", &mut next_sample)?;
            std::thread::sleep(Duration::from_millis(50));
        }
        let hold_secs = hold_start.elapsed().as_secs_f64();
        let cpu_hold = sampler.orch().context("the orchestrator is gone")?.cpu_secs - cpu1;
        let control_in1 = frames_in(sampler.metrics(rt));
        let sent1 = c.control_sent.load(Ordering::Relaxed);
        let end = sampler.sample(rt, "hold end", c.up.load(Ordering::Relaxed))?;
        let orch = sampler.orch().context("the orchestrator is gone")?;

        // The API's view: GET /nodes?filter-status=CONNECTED, timed.
        let http = http()?;
        let t = Instant::now();
        let listed = rt.block_on(get_json(
            &http,
            &format!("{api}/api/v1/orchestrator/nodes?filter-status=CONNECTED"),
        ));
        let api_list_ms = listed.as_ref().map(|_| t.elapsed().as_secs_f64() * 1e3);
        let api_connected = listed.as_ref().and_then(|v| {
            Some(
                v["Nodes"]
                    .as_array()?
                    .iter()
                    .filter(|n| {
                        n["Info"]["NodeID"]
                            .as_str()
                            .is_some_and(|id| id.starts_with("sim-"))
                    })
                    .count(),
            )
        });
        let final_metrics = sampler.metrics(rt);
        let fm = |name: &str, labels: &[&str]| {
            final_metrics
                .as_deref()
                .and_then(|m| metric_sum(m, name, labels))
        };
        let reg_count = fm(
            "caravel_raft_write_duration_seconds_count",
            &["command=\"register_node\""],
        );
        let reg_sum = fm(
            "caravel_raft_write_duration_seconds_sum",
            &["command=\"register_node\""],
        );
        let summary = SessionsSummary {
            nodes: a.nodes,
            established,
            ramp_gave_up_secs,
            certificates_secs,
            ramp_secs,
            handshakes_per_sec: established as f64 / ramp_secs.max(1e-3),
            connect_p50_ms: pct_ms(&lat, 50.0),
            connect_p99_ms: pct_ms(&lat, 99.0),
            connect_max_ms: pct_ms(&lat, 100.0),
            peak_handshakes_per_sec: peak as f64,
            orch_rss_idle_mib: rss_idle,
            orch_rss_end_mib: mib(orch.rss_kib),
            orch_rss_peak_mib: mib(orch.peak_kib),
            orch_rss_per_session_kib: (mib(orch.rss_kib) - rss_idle) * 1024.0
                / (end.bench_sessions.max(1) as f64),
            orch_cpu_ramp_pct: cpu_ramp / ramp_secs.max(1e-3) * 100.0,
            orch_cpu_hold_pct: cpu_hold / hold_secs.max(1e-3) * 100.0,
            hold_secs,
            orch_sessions_end: end.orch_sessions,
            dials_shed: fm("caravel_compute_session_shed_total", &[]),
            nodes_connected_end: end.nodes_connected,
            api_connected_end: api_connected,
            api_list_ms,
            control_in_per_sec: match (control_in0, control_in1) {
                (Some(x), Some(y)) => Some((y - x) / hold_secs.max(1e-3)),
                _ => None,
            },
            control_sent_per_sec: (sent1 - sent0) as f64 / hold_secs.max(1e-3),
            sessions_lost: c.lost.load(Ordering::Relaxed) - lost0,
            sessions_total: c.sessions.load(Ordering::Relaxed),
            hello_without_ack: c.no_ack.load(Ordering::Relaxed),
            unexpected_commands: c.commands.load(Ordering::Relaxed),
            bench_rss_end_mib: end.bench_rss_mib,
            register_writes: reg_count,
            register_write_mean_ms: match (reg_count, reg_sum) {
                (Some(n), Some(s)) if n > 0.0 => Some(s / n * 1e3),
                _ => None,
            },
            raft_last_index: fm("caravel_raft_last_log_index", &[]),
        };
        samples.push(end);

        // Let go: every client closes its connection.
        sh.stop.cancel();
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks))
                .await;
        });
        Ok(summary)
    })();
    sh.stop.cancel();
    drop(group);
    let s = result?;

    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"samples": samples, "summary": s}))?
        ),
        Output::Table => print_sessions(&samples, &s),
    }
    Ok(())
}

fn established_now(c: &SimCounters) -> u64 {
    c.established.load(Ordering::Relaxed)
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn print_sessions(samples: &[SessionSample], s: &SessionsSummary) {
    println!(
        "{:<9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8}",
        "PHASE",
        "T S",
        "BENCH UP",
        "ORCH UP",
        "NODES UP",
        "ORCH MIB",
        "ORCH CPU",
        "RAFT/S",
        "BENCH MIB",
        "BENCH CPU"
    );
    for x in samples {
        println!(
            "{:<9} {:>6.0} {:>9} {:>9} {:>9} {:>9.0} {:>7.0}% {:>8} {:>9.0} {:>8.0}%",
            x.phase,
            x.t_secs,
            x.bench_sessions,
            opt(x.orch_sessions, 0),
            opt(x.nodes_connected, 0),
            x.orch_rss_mib,
            x.orch_cpu_pct,
            opt(x.raft_applied_per_sec, 0),
            x.bench_rss_mib,
            x.bench_cpu_pct
        );
    }
    println!();
    let rows: Vec<(&str, String)> = vec![
        ("simulated nodes", s.nodes.to_string()),
        (
            "sessions established (Hello acknowledged)",
            s.established.to_string(),
        ),
        (
            "ramp-up, first dial → last Ack",
            match s.ramp_gave_up_secs {
                None => format!("{:.1} s", s.ramp_secs),
                Some(g) => format!("{:.1} s (incomplete: given up after {g:.0} s)", s.ramp_secs),
            },
        ),
        (
            "handshake rate, mean / best 1-s window",
            format!(
                "{:.0} /s / {:.0} /s",
                s.handshakes_per_sec, s.peak_handshakes_per_sec
            ),
        ),
        (
            "dial → Ack latency p50 / p99 / max",
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                s.connect_p50_ms, s.connect_p99_ms, s.connect_max_ms
            ),
        ),
        (
            "orchestrator RSS idle / end of hold / peak",
            format!(
                "{:.0} / {:.0} / {:.0} MiB",
                s.orch_rss_idle_mib, s.orch_rss_end_mib, s.orch_rss_peak_mib
            ),
        ),
        (
            "orchestrator RSS per session (end − idle)",
            format!("{:.0} KiB", s.orch_rss_per_session_kib),
        ),
        (
            "orchestrator CPU ramp-up / hold (one core = 100 %)",
            format!(
                "{:.0} % / {:.0} %",
                s.orch_cpu_ramp_pct, s.orch_cpu_hold_pct
            ),
        ),
        (
            "sessions, orchestrator /metrics at end of hold",
            opt(s.orch_sessions_end, 0),
        ),
        (
            "dials shed (> 256 handshakes in progress) in all",
            opt(s.dials_shed, 0),
        ),
        (
            "nodes CONNECTED, /metrics / API at end of hold",
            format!(
                "{} / {}",
                opt(s.nodes_connected_end, 0),
                s.api_connected_end.map_or("-".into(), |n| n.to_string())
            ),
        ),
        (
            "GET /api/v1/orchestrator/nodes?filter-status=CONNECTED",
            s.api_list_ms
                .map_or("failed".into(), |ms| format!("{ms:.0} ms")),
        ),
        (
            "control frames/s during hold, received / sent",
            format!(
                "{} / {:.0}",
                opt(s.control_in_per_sec, 0),
                s.control_sent_per_sec
            ),
        ),
        (
            "sessions lost during hold / acknowledged in all",
            format!("{} / {}", s.sessions_lost, s.sessions_total),
        ),
        (
            "Hello not acknowledged within 30 s / unexpected commands",
            format!("{} / {}", s.hello_without_ack, s.unexpected_commands),
        ),
        (
            "RegisterNode Raft writes in all / mean propose → apply",
            format!(
                "{} / {} ms",
                opt(s.register_writes, 0),
                opt(s.register_write_mean_ms, 0)
            ),
        ),
        (
            "orchestrator's last Raft log index",
            opt(s.raft_last_index, 0),
        ),
        (
            "bench process RSS at end of hold",
            format!("{:.0} MiB", s.bench_rss_end_mib),
        ),
        (
            "certificates issued + clients built (bench setup)",
            format!("{:.1} s", s.certificates_secs),
        ),
    ];
    println!("{:<56} VALUE", "MEASURE");
    for (k, v) in rows {
        println!("{k:<56} {v}");
    }
}

// ---------------------------------------------------------------------------------------------
// `heal`

#[derive(Debug, Serialize)]
struct HealRound {
    round: usize,
    cut_secs: f64,
    /// Cut → the API first showed the node DISCONNECTED (None: it never did during the cut).
    disconnected_after_secs: Option<f64>,
    /// Reports in the node's outbox just before the heal.
    pending_at_heal: Option<f64>,
    /// Jobs of the round Completed in the API before the heal (should be none).
    completed_before_heal: usize,
    heal_to_connected_ms: Option<f64>,
    /// Heal → the node's outbox is empty: every report committed and acknowledged.
    heal_to_reports_committed_ms: Option<f64>,
    heal_to_first_completed_ms: Option<f64>,
    heal_to_all_completed_ms: Option<f64>,
    jobs: usize,
    /// Executions of the round's jobs, and how many of them Completed.
    executions: usize,
    executions_completed: usize,
    /// Replayed reports the orchestrator recognised as already applied (harmless) during the round.
    duplicate_reports: f64,
    /// Session attempts of the node that failed during the round (its log).
    failed_attempts: usize,
    /// Dials the node started during the round (rounds + redials, its metrics).
    dials: Option<f64>,
    /// Datagrams the node sent into the cut per second (keep-alives, then handshake Initials).
    sent_into_cut_per_sec: f64,
}

/// Dials a compute-only node has started: connection rounds after the first plus redials.
fn dials_started(metrics: Option<&str>) -> Option<f64> {
    let m = metrics?;
    Some(
        metric_sum(m, "caravel_session_reconnect_attempts_total", &[])?
            + metric_sum(m, "caravel_session_redials_total", &[])?,
    )
}

/// What the session client logs when an attempt fails (net/src/session.rs).
const FAILED_ATTEMPT: &str = "cannot open a compute session";

/// Time since `since` in ms.
fn ms_since(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn heal(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    a: &HealArgs,
    reaper: &Reaper,
    output: Output,
) -> anyhow::Result<()> {
    if a.jobs == 0 || a.rounds == 0 || a.cut_secs == 0 {
        bail!("--jobs, --rounds and --cut-secs must be at least 1");
    }
    docker_bench_preamble(bin, dir, &a.image)?;
    let extra = vec![
        "-c".to_string(),
        format!("Compute.MaxConcurrent={}", a.jobs),
    ];
    let mut n = ProxiedNode::start(rt, bin, dir, reaper, &extra)?;
    eprintln!(
        "orchestrator {} (API {}), compute-only node {} dialling it through the UDP proxy {}; \
         product defaults (QUIC idle timeout 10 s, a new dial every 2 s while unanswered, reconnect backoff 250 ms × 2^n capped at 30 s after refusals, \
         Orchestrator.DisconnectTimeoutSecs 30)",
        n.group.members[0].id,
        n.api,
        n.node_id,
        n.proxy.local_addr()
    );
    if a.job_secs >= a.cut_secs {
        eprintln!(
            "note: --job-secs {} ≥ --cut-secs {}: the jobs end after the heal, so fewer reports \
             pile up during the cut",
            a.job_secs, a.cut_secs
        );
    }
    let c = http()?;
    let mut rounds = Vec::new();
    for round in 1..=a.rounds {
        n.wait_connected(rt, Duration::from_secs(120))?;
        // A session that lived longer than 30 s resets the node's reconnect backoff: cut a link
        // that has been up a while, not one that just came back from the previous round.
        std::thread::sleep(Duration::from_secs(31));
        let metrics0 = rt.block_on(get_text(&c, &format!("{}/metrics", n.api)));
        let dups = |m: Option<&str>| {
            m.and_then(|m| {
                metric_sum(
                    m,
                    "caravel_compute_reports_total",
                    &["outcome=\"duplicate\""],
                )
            })
            .unwrap_or(0.0)
        };
        // Jobs that are Running on the node when the link is cut and finish during the cut.
        let mut ids = Vec::new();
        for j in 0..a.jobs {
            let job = docker_job(
                &format!("heal-r{round}-j{j}"),
                &a.image,
                &format!("sleep {}", a.job_secs),
            );
            ids.push(rt.block_on(submit(&c, &n.api, &job))?);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            n.check_alive()?;
            let running = rt.block_on(async {
                let mut k = 0;
                for id in &ids {
                    if execution_states(&c, &n.api, id)
                        .await
                        .is_some_and(|s| s.contains(&EXEC_RUNNING))
                    {
                        k += 1;
                    }
                }
                k
            });
            if running == ids.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "round {round}: only {running} of {} jobs Running after 120 s; the node's log:\n{}",
                    ids.len(),
                    n.node_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }

        eprintln!(
            "round {round}/{}: {} jobs Running (sleep {} s each); cutting the link for {} s …",
            a.rounds, a.jobs, a.job_secs, a.cut_secs
        );
        let failed0 = n.count_in_log(FAILED_ATTEMPT);
        let dials0 = dials_started(rt.block_on(get_text(&c, &n.node_metrics)).as_deref());
        let cut = Instant::now();
        let probed0 = n.proxy.stats().to_upstream.dropped_blackhole;
        n.proxy.blackhole(true)?;
        let heal_at = cut + Duration::from_secs(a.cut_secs);
        let mut disconnected_after = None;
        while Instant::now() + Duration::from_millis(600) < heal_at {
            n.check_alive()?;
            if disconnected_after.is_none()
                && rt
                    .block_on(node_status(&c, &n.api, &n.node_id))
                    .is_some_and(|s| s == "DISCONNECTED")
            {
                disconnected_after = Some(cut.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let (states, node_m) = rt.block_on(async {
            tokio::join!(job_states(&c, &n.api), get_text(&c, &n.node_metrics))
        });
        let completed_before = ids
            .iter()
            .filter(|id| {
                states
                    .as_ref()
                    .and_then(|s| s.get(*id))
                    .is_some_and(|s| s == "Completed")
            })
            .count();
        let pending_at_heal = node_m
            .as_deref()
            .and_then(|m| metric_sum(m, "caravel_compute_outbox_pending", &[]));
        std::thread::sleep(heal_at.saturating_duration_since(Instant::now()));

        // Heal, then poll the API and the node every 10 ms.
        let probed = n.proxy.stats().to_upstream.dropped_blackhole - probed0;
        n.proxy.heal()?;
        let healed = Instant::now();
        let (mut connected, mut committed, mut first, mut all) = (None, None, None, None);
        let was_disconnected = disconnected_after.is_some();
        let guard = healed + Duration::from_secs(180);
        while all.is_none() || committed.is_none() || (was_disconnected && connected.is_none()) {
            if Instant::now() > guard {
                eprintln!(
                    "round {round}: not resynced 180 s after the heal (connected {connected:?}, \
                     reports committed {committed:?}, jobs completed {all:?})"
                );
                break;
            }
            let (status, states, node_m) = rt.block_on(async {
                tokio::join!(
                    node_status(&c, &n.api, &n.node_id),
                    job_states(&c, &n.api),
                    get_text(&c, &n.node_metrics)
                )
            });
            let t = ms_since(healed);
            if connected.is_none() && was_disconnected && status.as_deref() == Some("CONNECTED") {
                connected = Some(t);
            }
            if committed.is_none()
                && node_m
                    .as_deref()
                    .and_then(|m| metric_sum(m, "caravel_compute_outbox_pending", &[]))
                    == Some(0.0)
            {
                committed = Some(t);
            }
            let done = ids
                .iter()
                .filter(|id| {
                    states
                        .as_ref()
                        .and_then(|s| s.get(*id))
                        .is_some_and(|s| s == "Completed")
                })
                .count();
            if done > 0 && first.is_none() {
                first = Some(t);
            }
            if done == ids.len() && all.is_none() {
                all = Some(t);
            }
            n.check_alive()?;
            std::thread::sleep(Duration::from_millis(10));
        }
        let (execs, metrics1) = rt.block_on(async {
            let mut v = Vec::new();
            for id in &ids {
                v.extend(execution_states(&c, &n.api, id).await.unwrap_or_default());
            }
            (v, get_text(&c, &format!("{}/metrics", n.api)).await)
        });
        let r = HealRound {
            round,
            cut_secs: a.cut_secs as f64,
            disconnected_after_secs: disconnected_after,
            pending_at_heal,
            completed_before_heal: completed_before,
            heal_to_connected_ms: connected,
            heal_to_reports_committed_ms: committed,
            heal_to_first_completed_ms: first,
            heal_to_all_completed_ms: all,
            jobs: ids.len(),
            executions: execs.len(),
            executions_completed: execs.iter().filter(|s| **s == EXEC_COMPLETED).count(),
            duplicate_reports: dups(metrics1.as_deref()) - dups(metrics0.as_deref()),
            failed_attempts: n.count_in_log(FAILED_ATTEMPT) - failed0,
            dials: dials_started(rt.block_on(get_text(&c, &n.node_metrics)).as_deref())
                .zip(dials0)
                .map(|(b, a)| b - a),
            sent_into_cut_per_sec: probed as f64 / a.cut_secs as f64,
        };
        eprintln!(
            "round {round}: DISCONNECTED {} s into the cut; {} reports pending at the heal; heal → \
             CONNECTED {} ms, → reports committed {} ms, → all {} jobs Completed {} ms",
            opt(r.disconnected_after_secs, 1),
            opt(r.pending_at_heal, 0),
            opt(r.heal_to_connected_ms, 0),
            opt(r.heal_to_reports_committed_ms, 0),
            r.jobs,
            opt(r.heal_to_all_completed_ms, 0)
        );
        rounds.push(r);
    }
    let what_if = if a.what_if_rounds > 0 {
        what_if_rounds(rt, &n, a)?
    } else {
        Vec::new()
    };
    drop(n);

    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"rounds": rounds, "what_if": what_if}))?
        ),
        Output::Table => {
            println!(
                "{:>5} {:>5} {:>8} {:>7} {:>6} {:>12} {:>12} {:>12} {:>12} {:>9} {:>4} {:>8} {:>5} {:>6}",
                "ROUND",
                "CUT S",
                "DISC@ S",
                "PENDING",
                "DONE<H",
                "H→CONN MS",
                "H→REPORTS MS",
                "H→1ST JOB MS",
                "H→ALL JOB MS",
                "EXECS",
                "DUPS",
                "ATTEMPTS",
                "DIALS",
                "PKT/S"
            );
            for r in &rounds {
                println!(
                    "{:>5} {:>5.0} {:>8} {:>7} {:>6} {:>12} {:>12} {:>12} {:>12} {:>9} {:>4.0} {:>8} {:>5} {:>6.1}",
                    r.round,
                    r.cut_secs,
                    opt(r.disconnected_after_secs, 1),
                    opt(r.pending_at_heal, 0),
                    r.completed_before_heal,
                    opt(r.heal_to_connected_ms, 0),
                    opt(r.heal_to_reports_committed_ms, 0),
                    opt(r.heal_to_first_completed_ms, 0),
                    opt(r.heal_to_all_completed_ms, 0),
                    format!("{}/{}", r.executions_completed, r.executions),
                    r.duplicate_reports,
                    r.failed_attempts,
                    opt(r.dials, 0),
                    r.sent_into_cut_per_sec
                );
            }
            println!(
                "note: DISC@ = seconds into the cut when the API showed the node DISCONNECTED; \
                 PENDING = reports in the node's outbox at the heal; DONE<H = jobs Completed before \
                 the heal; H→REPORTS = heal → the node's outbox empty (every report committed and \
                 acknowledged); EXECS = Completed/all executions of the round's {} jobs; DUPS = \
                 replayed reports recognised as already applied; ATTEMPTS = connection rounds \
                 of the node that ended without a session (its log); DIALS = dials it started \
                 during the round (its metrics); PKT/S = datagrams the node sent into the cut per \
                 second (keep-alives until the idle timeout, then handshake Initials).",
                a.jobs
            );
            if !what_if.is_empty() {
                println!();
                println!(
                    "{:<44} {:>5} {:>5} {:>8} {:>12} {:>12}",
                    "WHAT-IF NODE (in-process session client)",
                    "ROUND",
                    "CUT S",
                    "DISC@ S",
                    "H→SESSION MS",
                    "H→CONN MS"
                );
                for r in &what_if {
                    println!(
                        "{:<44} {:>5} {:>5.0} {:>8} {:>12} {:>12}",
                        r.options,
                        r.round,
                        r.cut_secs,
                        opt(r.disconnected_after_secs, 1),
                        opt(r.heal_to_session_ms, 0),
                        opt(r.heal_to_connected_ms, 0)
                    );
                }
                println!(
                    "note: H→SESSION = heal → the simulated node's next Hello acknowledged; \
                     H→CONN = heal → the API shows it CONNECTED. Only the probe interval differs \
                     from the product's defaults."
                );
            }
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct WhatIfRound {
    options: String,
    round: usize,
    cut_secs: f64,
    disconnected_after_secs: Option<f64>,
    /// Heal → the next `Hello` acknowledged.
    heal_to_session_ms: Option<f64>,
    /// Heal → the API shows the node CONNECTED.
    heal_to_connected_ms: Option<f64>,
}

/// Cuts and heals a simulated node that runs the real session client with another probe interval,
/// through its own proxy to the same orchestrator: what that default would give.
fn what_if_rounds(
    rt: &tokio::runtime::Runtime,
    n: &ProxiedNode,
    a: &HealArgs,
) -> anyhow::Result<Vec<WhatIfRound>> {
    use caravel_model::wire::{ToCompute, ToOrchestrator};
    use caravel_net::session::{ClientIdentity, SessionClient, SessionOptions};
    let opts = SessionOptions {
        probe_interval: Duration::from_millis(a.what_if_probe_ms),
        ..SessionOptions::default()
    };
    opts.validate()?;
    let label = format!("probe interval {} ms", a.what_if_probe_ms);
    let m = &n.group.members[0];
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], m.compute_port));
    let proxy = rt.block_on(Proxy::start("127.0.0.1:0".parse()?, upstream))?;
    let ca = caravel_net::tls::read_ca(&n.group.dir.join("certs"))?;
    let id = "what-if-1";
    let pair = caravel_net::tls::issue(&ca, id, caravel_net::tls::Role::Compute)?;
    let identity = ClientIdentity::from_pem(&ca.cert, &pair.cert, &pair.key)?;
    let client = SessionClient::new(vec![proxy.local_addr().to_string()], &identity, opts)?;
    // When each Hello was acknowledged.
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let info = sim_info(id, "heal");
    let task = {
        let (acks, stop) = (acks.clone(), stop.clone());
        rt.spawn(client.run(stop, move |mut end, _| {
            let (acks, info) = (acks.clone(), info.clone());
            Box::pin(async move {
                let hello = ToOrchestrator::Hello {
                    info: Box::new(info.clone()),
                    last_seq: 0,
                };
                if end.outbox.send(hello).await.is_err() {
                    return;
                }
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                let mut acked = false;
                loop {
                    tokio::select! {
                        m = end.inbox.recv() => match m {
                            None => return,
                            Some(ToCompute::Ack { .. }) if !acked => {
                                acked = true;
                                lock(&acks).push(Instant::now());
                            }
                            Some(_) => {}
                        },
                        _ = tick.tick(), if acked => {
                            let hb = ToOrchestrator::Heartbeat { info: Box::new(info.clone()) };
                            let _ = end.outbox.try_send(hb);
                        }
                    }
                }
            })
        }))
    };
    let c = http()?;
    let connected = |timeout: Duration| -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while rt.block_on(node_status(&c, &n.api, id)).as_deref() != Some("CONNECTED") {
            if Instant::now() > deadline {
                bail!("the what-if node is not CONNECTED after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    let mut out = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        connected(Duration::from_secs(60))?;
        for round in 1..=a.what_if_rounds {
            connected(Duration::from_secs(120))?;
            // Let the session live past `backoff_reset_after` (30 s), as the product node's did.
            std::thread::sleep(Duration::from_secs(31));
            eprintln!(
                "what-if round {round}/{} ({label}): cutting the link for {} s …",
                a.what_if_rounds, a.cut_secs
            );
            let cut = Instant::now();
            proxy.blackhole(true)?;
            let heal_at = cut + Duration::from_secs(a.cut_secs);
            let mut disconnected_after = None;
            while Instant::now() + Duration::from_millis(600) < heal_at {
                if disconnected_after.is_none()
                    && rt
                        .block_on(node_status(&c, &n.api, id))
                        .is_some_and(|s| s == "DISCONNECTED")
                {
                    disconnected_after = Some(cut.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            std::thread::sleep(heal_at.saturating_duration_since(Instant::now()));
            proxy.heal()?;
            let healed = Instant::now();
            let (mut session, mut conn) = (None, None);
            let guard = healed + Duration::from_secs(120);
            while session.is_none() || (disconnected_after.is_some() && conn.is_none()) {
                if Instant::now() > guard {
                    break;
                }
                if session.is_none()
                    && let Some(t) = lock(&acks).iter().find(|t| **t >= healed)
                {
                    session = Some((*t - healed).as_secs_f64() * 1e3);
                }
                if conn.is_none()
                    && rt.block_on(node_status(&c, &n.api, id)).as_deref() == Some("CONNECTED")
                {
                    conn = Some(ms_since(healed));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let r = WhatIfRound {
                options: label.clone(),
                round,
                cut_secs: a.cut_secs as f64,
                disconnected_after_secs: disconnected_after,
                heal_to_session_ms: session,
                heal_to_connected_ms: conn.filter(|_| disconnected_after.is_some()),
            };
            eprintln!(
                "what-if round {round}: heal → session {} ms, → CONNECTED {} ms",
                opt(r.heal_to_session_ms, 0),
                opt(r.heal_to_connected_ms, 0)
            );
            out.push(r);
        }
        Ok(())
    })();
    stop.cancel();
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    });
    result?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// `logs`

#[derive(Debug, Serialize)]
struct LogsRow {
    loss_pct: f64,
    run: usize,
    lines: u64,
    /// Line payload bytes (each line with its newline).
    bytes: u64,
    secs: f64,
    lines_per_sec: f64,
    mb_per_sec: f64,
    complete: bool,
    /// Datagrams the proxy dropped during the run, both directions.
    dropped: u64,
    error: String,
}

/// Reads a job's logs through the orchestrator's WebSocket until it closes: (lines, bytes, error).
async fn fetch_logs(url: &str, timeout: Duration) -> anyhow::Result<(u64, u64, String)> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut ws, _) = tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(url))
        .await
        .context("no WebSocket handshake in time")??;
    let (mut lines, mut bytes, mut error) = (0u64, 0u64, String::new());
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("the log stream did not end within {timeout:?}"))?;
        match m {
            Some(Ok(Message::Text(t))) => {
                let f: caravel_model::api::LogFrame = serde_json::from_str(t.as_str())?;
                if let Some(v) = f.value {
                    lines += 1;
                    bytes += v.line.len() as u64 + u64::from(!v.line.ends_with('\n'));
                }
                if !f.error.is_empty() {
                    error = f.error;
                }
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok((lines, bytes, error))
}

fn logs(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    a: &LogsArgs,
    reaper: &Reaper,
    output: Output,
) -> anyhow::Result<()> {
    if a.lines == 0 || a.runs == 0 || a.loss.is_empty() {
        bail!("--lines, --runs and --loss must not be empty or zero");
    }
    if let Some(p) = a.loss.iter().find(|p| !(0.0..100.0).contains(*p)) {
        bail!("--loss {p}: give percentages in [0, 100)");
    }
    docker_bench_preamble(bin, dir, &a.image)?;
    let congestion = format!("Compute.CongestionControl={}", a.congestion);
    let n = ProxiedNode::start(rt, bin, dir, reaper, &["-c".to_string(), congestion])?;
    eprintln!("the node sends with congestion controller {}", a.congestion);
    let c = http()?;
    // busybox has printf, seq and sed.
    let script = if a.line_bytes == 0 {
        format!("seq 1 {}", a.lines)
    } else {
        format!(
            "pad=$(printf '%0{}d' 0); seq 1 {} | sed \"s/$/ $pad/\"",
            a.line_bytes, a.lines
        )
    };
    let job = docker_job("logs-bench", &a.image, &script);
    let id = rt.block_on(submit(&c, &n.api, &job))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = rt.block_on(job_states(&c, &n.api));
        match s.as_ref().and_then(|s| s.get(&id)).map(String::as_str) {
            Some("Completed") => break,
            Some("Failed") | Some("Stopped") => {
                bail!(
                    "the log job {id} did not complete; the node's log:\n{}",
                    n.node_log()
                )
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("the log job {id} did not complete within 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "job {id} (docker {}, `{script}`) Completed on {}; its stdout is streamed from the node's \
         disk through the session (one uni stream, a LogLine frame per line) and the orchestrator's \
         WebSocket (a JSON text message per line)",
        a.image, n.node_id
    );
    eprintln!(
        "each run: GET {}/api/v1/orchestrator/jobs/{id}/logs (WebSocket, follow=false) until it \
         closes; loss applied to both directions of the node's link by the UDP proxy",
        n.api
    );
    let url = format!(
        "{}/api/v1/orchestrator/jobs/{id}/logs",
        n.api.replacen("http://", "ws://", 1)
    );
    let mut rows = Vec::new();
    for (k, &loss) in a.loss.iter().enumerate() {
        let faults = if loss > 0.0 {
            Faults::both(LinkFaults::loss(loss / 100.0)).with_seed(7 + k as u64)
        } else {
            Faults::none()
        };
        n.proxy.set(faults)?;
        for run in 1..=a.runs {
            let s0 = n.proxy.stats();
            let t = Instant::now();
            let r = rt.block_on(fetch_logs(&url, Duration::from_secs(a.timeout_secs)));
            let secs = t.elapsed().as_secs_f64();
            let s1 = n.proxy.stats();
            let dropped = (s1.to_upstream.dropped + s1.to_client.dropped)
                - (s0.to_upstream.dropped + s0.to_client.dropped);
            let (lines, bytes, error) = match r {
                Ok(x) => x,
                Err(e) => (0, 0, format!("{e:#}")),
            };
            let row = LogsRow {
                loss_pct: loss,
                run,
                lines,
                bytes,
                secs,
                lines_per_sec: lines as f64 / secs,
                mb_per_sec: bytes as f64 / 1e6 / secs,
                complete: lines == a.lines,
                dropped,
                error,
            };
            eprintln!(
                "loss {loss} %, run {run}: {} lines, {:.2} MB in {:.2} s ({:.0} lines/s, {:.2} MB/s), \
                 {} datagrams dropped{}",
                row.lines,
                row.bytes as f64 / 1e6,
                row.secs,
                row.lines_per_sec,
                row.mb_per_sec,
                row.dropped,
                if row.error.is_empty() {
                    String::new()
                } else {
                    format!("; error: {}", row.error)
                }
            );
            rows.push(row);
        }
    }
    n.proxy.heal()?;
    drop(n);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            println!(
                "{:>6} {:>4} {:>9} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8}",
                "LOSS %", "RUN", "LINES", "MB", "SECONDS", "LINES/S", "MB/S", "DROPPED", "COMPLETE"
            );
            for r in &rows {
                println!(
                    "{:>6.0} {:>4} {:>9} {:>8.2} {:>8.2} {:>9.0} {:>7.2} {:>8} {:>8}",
                    r.loss_pct,
                    r.run,
                    r.lines,
                    r.bytes as f64 / 1e6,
                    r.secs,
                    r.lines_per_sec,
                    r.mb_per_sec,
                    r.dropped,
                    if r.complete { "yes" } else { "NO" }
                );
            }
            println!(
                "note: MB = line bytes with their newlines (10^6); SECONDS from the WebSocket dial \
                 to its close; DROPPED = datagrams the proxy dropped in both directions during the \
                 run; COMPLETE = all {} lines arrived.",
                a.lines
            );
            if rows.iter().any(|r| !r.complete) {
                println!(
                    "warning: some streams ended early (LINES < {}); the rates above are for what \
                     arrived. Check the node's log streaming of finished executions.",
                    a.lines
                );
            }
        }
    }
    Ok(())
}

/// What the Docker-based session benches check and print first: the test image is present, and
/// the machine and binary they measure.
fn docker_bench_preamble(bin: &Path, dir: &Path, image: &str) -> anyhow::Result<()> {
    if !docker_image_present(image) {
        bail!(
            "the Docker image {image} is missing: build it with scripts/test-image.sh (or pass --image)"
        );
    }
    eprintln!(
        "machine: {} cores, {} MiB RAM; data dirs under {}",
        cores(),
        mem_total_mib(),
        dir.display()
    );
    eprintln!("caravel: {} ({})", bin.display(), caravel_version(bin));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `schedule`

#[derive(Debug, Serialize)]
struct ScheduleSummary {
    nodes: usize,
    /// Nodes connected (sessions acknowledged) when the submissions started.
    nodes_connected: u64,
    jobs: usize,
    count: usize,
    clients: usize,
    /// Executions that reached a simulated node.
    placements: usize,
    /// First submission sent → last placement.
    secs: f64,
    placements_per_second: f64,
    /// Submissions acknowledged by the API per second, over the same window.
    submits_per_second: f64,
    submit_errors: u64,
    /// Submit sent → the execution's `Run` at a node (of every placement).
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    orch_cpu_pct: f64,
    orch_rss_start_mib: f64,
    orch_rss_end_mib: f64,
    /// `Run`s for jobs the bench did not submit (none expected).
    stray_runs: u64,
    /// Raft entries applied from the first submission to the last placement, per placement.
    entries_per_placement: Option<f64>,
    /// Compute reports per Raft entry of the report group commit (`None`: a binary without it).
    reports_per_entry: Option<f64>,
    /// Job submissions per Raft entry of the submission group commit (`None`: a binary without it).
    submissions_per_entry: Option<f64>,
    timed_out: bool,
}

/// The mean of a histogram's observations between two scrapes: (Δsum / Δcount), if any.
fn mean_between(
    before: (Option<f64>, Option<f64>),
    after: (Option<f64>, Option<f64>),
) -> Option<f64> {
    match (before, after) {
        ((Some(s0), Some(c0)), (Some(s1), Some(c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
        _ => None,
    }
}

/// A batch job of `count` partitions, each asking 100m CPU and 64 MiB, constrained to three of
/// the four zones (so feasibility, capacity and ranking all run).
fn schedule_job(name: &str, count: usize) -> Value {
    json!({"Job": {"Name": name, "Type": "batch", "Count": count,
        "Constraints": [{"Key": "zone", "Operator": "in", "Values": ["z0", "z1", "z2"]}],
        "Tasks": [{"Name": "main",
            "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
            "InputSources": [{"Target": "/m.wasm",
                "Source": {"Type": "inline", "Params": {"URL": "data:,x"}}}],
            "Resources": {"CPU": "100m", "Memory": "64Mi"},
            "Timeouts": {"QueueTimeout": 3600}}]}})
}

/// One orchestrator and simulated compute nodes running the simulated executor, every node
/// connected (its `Hello` acknowledged) and the registrations' evaluations drained: what
/// `schedule` and `reports` measure. The nodes stop, then the orchestrator, when it is dropped.
struct Fleet {
    sh: Arc<SimShared>,
    group: Group,
    pid: u32,
    api: String,
    tck: f64,
    /// Nodes connected when it was ready.
    connected: u64,
    _nodes: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// `sizing`: (nodes, handshakes in flight, seconds the nodes may take to connect).
    fn start(
        rt: &tokio::runtime::Runtime,
        bin: &Path,
        dir: &Path,
        reaper: &Reaper,
        (nodes, in_flight, timeout_secs): (usize, usize, u64),
        bench: &str,
        executor: SimExecutor,
    ) -> anyhow::Result<Fleet> {
        fd_room_for(nodes)?;
        eprintln!(
            "machine: {} cores, {} MiB RAM; caravel: {} ({})",
            cores(),
            mem_total_mib(),
            bin.display(),
            caravel_version(bin)
        );
        let group = Group::start(bin, &dir.join("caravel"), 1, GroupOptions::default())
            .context("cannot start the orchestrator")?;
        reaper.track_group(&group);
        let m = &group.members[0];
        let pid = m.pid().context("the orchestrator has no pid")?;
        let api = m.api();
        let target = format!("127.0.0.1:{}", m.compute_port);
        let ca = caravel_net::tls::read_ca(&group.dir.join("certs"))
            .context("cannot read the cluster CA")?;
        let clients = sim_clients(&ca, nodes, &target)?;
        let sh = Arc::new(SimShared {
            counters: SimCounters::default(),
            firsts: Mutex::new(Vec::with_capacity(nodes)),
            stop: tokio_util::sync::CancellationToken::new(),
            heartbeat: Duration::from_secs(5),
            executor: Some(executor),
        });
        let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let mut fleet = Fleet {
            _nodes: spawn_sim_nodes(rt, clients, bench, &gate, &sh),
            sh,
            group,
            pid,
            api,
            tck: clk_tck(),
            connected: 0,
        };
        // Every node registered (its Hello acknowledged), or as many as came in the time.
        let t = Instant::now();
        let mut next_line = t + Duration::from_secs(5);
        let established = |f: &Fleet| f.sh.counters.established.load(Ordering::Relaxed);
        while (established(&fleet) as usize) < nodes {
            if t.elapsed() > Duration::from_secs(timeout_secs) {
                bail!(
                    "only {} of {nodes} simulated nodes connected in {timeout_secs} s",
                    established(&fleet)
                );
            }
            fleet.alive()?;
            if Instant::now() >= next_line {
                eprintln!("connecting: {}/{nodes} nodes", established(&fleet));
                next_line += Duration::from_secs(5);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        fleet.connected = established(&fleet);
        eprintln!(
            "{} simulated nodes connected in {:.1} s",
            fleet.connected,
            t.elapsed().as_secs_f64()
        );
        // Let the registrations' node-join evaluations drain before measuring.
        std::thread::sleep(Duration::from_secs(2));
        Ok(fleet)
    }

    /// Fails, with the orchestrator's log, once it has exited.
    fn alive(&self) -> anyhow::Result<()> {
        if proc_stat(self.pid, self.tck).is_none() {
            bail!(
                "the orchestrator exited; its log:\n{}",
                tail_lines(&self.group.members[0].log_text(), 30)
            );
        }
        Ok(())
    }

    fn ex(&self) -> &SimExecutor {
        self.sh.executor.as_ref().expect("a fleet has an executor")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.sh.stop.cancel();
    }
}

fn schedule(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    a: &ScheduleArgs,
    reaper: &Reaper,
    output: Output,
) -> anyhow::Result<()> {
    if a.nodes == 0 || a.jobs == 0 || a.count == 0 || a.clients == 0 || a.in_flight == 0 {
        bail!("--nodes, --jobs, --count, --clients and --in-flight must be at least 1");
    }
    let fleet = Fleet::start(
        rt,
        bin,
        dir,
        reaper,
        (a.nodes, a.in_flight, a.timeout_secs),
        "schedule",
        SimExecutor::default(),
    )?;
    let (sh, pid, api, tck) = (&fleet.sh, fleet.pid, fleet.api.clone(), fleet.tck);
    let nodes_connected = fleet.connected;
    let result = (|| -> anyhow::Result<ScheduleSummary> {
        eprintln!(
            "submitting {} jobs × {} partitions from {} clients",
            a.jobs, a.count, a.clients
        );
        let alive = || fleet.alive();
        let ex = fleet.ex();
        let before = proc_stat(pid, tck).context("the orchestrator is gone")?;
        let http = http()?;
        let metrics_url = format!("{api}/metrics");
        let scrape = |name: &str| {
            rt.block_on(get_text(&http, &metrics_url))
                .and_then(|m| metric_sum(&m, name, &[]))
        };
        let applied_before = scrape("caravel_raft_applied_index");
        let batches_before = (
            scrape("caravel_compute_report_batch_reports_sum"),
            scrape("caravel_compute_report_batch_reports_count"),
        );
        let submissions_before = (
            scrape("caravel_api_submission_batch_jobs_sum"),
            scrape("caravel_api_submission_batch_jobs_count"),
        );
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let submitters: Vec<_> = (0..a.clients)
            .map(|_| {
                let (http, api, next, errors, acked) = (
                    http.clone(),
                    api.clone(),
                    next.clone(),
                    errors.clone(),
                    acked.clone(),
                );
                let sh = sh.clone();
                let (jobs, count) = (a.jobs as u64, a.count);
                rt.spawn(async move {
                    let ex = sh.executor.as_ref().expect("set above");
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= jobs {
                            return;
                        }
                        let name = format!("sched-{i:07}");
                        let body = schedule_job(&name, count);
                        lock(&ex.submitted).insert(name, Instant::now());
                        let r = http
                            .put(format!("{api}/api/v1/orchestrator/jobs"))
                            .json(&body)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        let want = a.jobs * a.count;
        let deadline = start + Duration::from_secs(a.timeout_secs);
        let mut next_line = start + Duration::from_secs(5);
        let mut timed_out = false;
        loop {
            let placed = lock(&ex.placed).len();
            let failed = errors.load(Ordering::Relaxed) as usize;
            if placed + failed * a.count >= want {
                break;
            }
            if Instant::now() > deadline {
                timed_out = true;
                eprintln!(
                    "gave up after {} s: {placed} of {want} placed",
                    a.timeout_secs
                );
                break;
            }
            alive()?;
            if Instant::now() >= next_line {
                eprintln!(
                    "{:.0} s: {} submitted, {placed} placed",
                    start.elapsed().as_secs_f64(),
                    acked.load(Ordering::Relaxed)
                );
                next_line += Duration::from_secs(5);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        rt.block_on(futures::future::join_all(submitters));
        let after = proc_stat(pid, tck).context("the orchestrator is gone")?;
        let applied_after = scrape("caravel_raft_applied_index");
        let batches_after = (
            scrape("caravel_compute_report_batch_reports_sum"),
            scrape("caravel_compute_report_batch_reports_count"),
        );
        let submissions_after = (
            scrape("caravel_api_submission_batch_jobs_sum"),
            scrape("caravel_api_submission_batch_jobs_count"),
        );
        let placed = lock(&ex.placed).clone();
        let last = placed.iter().map(|(t, _)| *t).max().unwrap_or(start);
        let secs = (last - start).as_secs_f64().max(1e-3);
        let mut lat: Vec<Duration> = placed.iter().map(|(_, d)| *d).collect();
        lat.sort_unstable();
        Ok(ScheduleSummary {
            nodes: a.nodes,
            nodes_connected,
            jobs: a.jobs,
            count: a.count,
            clients: a.clients,
            placements: placed.len(),
            secs,
            placements_per_second: placed.len() as f64 / secs,
            submits_per_second: acked.load(Ordering::Relaxed) as f64 / secs,
            submit_errors: errors.load(Ordering::Relaxed),
            p50_ms: pct_ms(&lat, 50.0),
            p99_ms: pct_ms(&lat, 99.0),
            max_ms: pct_ms(&lat, 100.0),
            orch_cpu_pct: (after.cpu_secs - before.cpu_secs) / start.elapsed().as_secs_f64()
                * 100.0,
            orch_rss_start_mib: mib(before.rss_kib),
            orch_rss_end_mib: mib(after.rss_kib),
            stray_runs: ex.strays.load(Ordering::Relaxed),
            entries_per_placement: applied_before
                .zip(applied_after)
                .filter(|_| !placed.is_empty())
                .map(|(a, b)| (b - a) / placed.len() as f64),
            reports_per_entry: mean_between(batches_before, batches_after),
            submissions_per_entry: mean_between(submissions_before, submissions_after),
            timed_out,
        })
    })();
    drop(fleet);
    let s = result?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Output::Table => {
            println!(
                "{:>6} {:>7} {:>5} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}",
                "NODES",
                "JOBS",
                "COUNT",
                "PLACEMENTS",
                "PLACED/S",
                "P50 MS",
                "P99 MS",
                "SUBMITS/S",
                "CPU %",
                "RSS MIB"
            );
            println!(
                "{:>6} {:>7} {:>5} {:>10} {:>8.0} {:>8.1} {:>8.1} {:>9.0} {:>8.0} {:>8.0}",
                s.nodes,
                s.jobs,
                s.count,
                s.placements,
                s.placements_per_second,
                s.p50_ms,
                s.p99_ms,
                s.submits_per_second,
                s.orch_cpu_pct,
                s.orch_rss_end_mib
            );
            let figure = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            println!(
                "raft entries per placement {}; compute reports per entry {}; submissions per entry {}",
                figure(s.entries_per_placement),
                figure(s.reports_per_entry),
                figure(s.submissions_per_entry)
            );
            if s.submit_errors > 0 || s.stray_runs > 0 || s.timed_out {
                println!(
                    "submit errors {}, stray runs {}, timed out {}",
                    s.submit_errors, s.stray_runs, s.timed_out
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// reports: execution reports committed per second by one orchestrator

#[derive(Debug, Serialize)]
struct ReportsSummary {
    nodes: usize,
    /// Nodes connected (sessions acknowledged) when the submissions started.
    nodes_connected: u64,
    /// Executions placed and held by the simulated nodes before the release.
    executions: usize,
    /// Nodes that held at least one of them: the nodes that report at once.
    nodes_reporting: usize,
    /// Reports expected: Running and Completed for each execution.
    reports: u64,
    /// Release → the last of them committed (counted applied by the orchestrator).
    secs: f64,
    reports_per_second: f64,
    /// Compute reports per Raft entry of the report group commit (`None`: a binary without it).
    reports_per_entry: Option<f64>,
    /// Raft entries applied over the window, per report.
    entries_per_report: Option<f64>,
    /// Jobs Completed at the end (of those submitted).
    jobs_completed: u64,
    jobs: usize,
    orch_cpu_pct: f64,
    orch_rss_end_mib: f64,
    timed_out: bool,
}

fn reports(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    a: &ReportsArgs,
    reaper: &Reaper,
    output: Output,
) -> anyhow::Result<()> {
    if a.nodes == 0 || a.per_node == 0 || a.in_flight == 0 {
        bail!("--nodes, --per-node and --in-flight must be at least 1");
    }
    let (release, _) = tokio::sync::watch::channel(false);
    let fleet = Fleet::start(
        rt,
        bin,
        dir,
        reaper,
        (a.nodes, a.in_flight, a.timeout_secs),
        "reports",
        SimExecutor {
            release: Some(release),
            ..SimExecutor::default()
        },
    )?;
    let result = (|| -> anyhow::Result<ReportsSummary> {
        use futures::StreamExt;
        let ex = fleet.ex();
        let http = http()?;
        let api = fleet.api.clone();
        // Placements first: jobs of up to 100 partitions (schedule's: zones z0–z2, so about
        // three nodes in four take them), until every execution has reached a node and is held.
        let want = a.nodes * a.per_node;
        let jobs: Vec<(String, usize)> = (0..want.div_ceil(100))
            .map(|i| (format!("reports-{i:05}"), (want - i * 100).min(100)))
            .collect();
        eprintln!(
            "placing {want} executions ({} jobs of up to 100 partitions); the nodes hold them",
            jobs.len()
        );
        let t = Instant::now();
        for (name, _) in &jobs {
            lock(&ex.submitted).insert(name.clone(), Instant::now());
        }
        let submitted: Vec<anyhow::Result<String>> = rt.block_on(
            futures::stream::iter(jobs.iter().map(|(name, count)| {
                let (http, api) = (&http, &api);
                async move { submit(http, api, &schedule_job(name, *count)).await }
            }))
            .buffer_unordered(8)
            .collect(),
        );
        if let Some(Err(e)) = submitted.into_iter().find(Result::is_err) {
            return Err(e.context("cannot submit the jobs to place"));
        }
        let deadline = t + Duration::from_secs(a.timeout_secs);
        while lock(&ex.placed).len() < want {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {want} executions were placed in {} s",
                    lock(&ex.placed).len(),
                    a.timeout_secs
                );
            }
            fleet.alive()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{want} executions placed in {:.1} s on {} nodes; releasing every report at once",
            t.elapsed().as_secs_f64(),
            lock(&ex.holders).len()
        );
        std::thread::sleep(Duration::from_secs(1));
        let metrics_url = format!("{api}/metrics");
        let scrape = |names: &[(&str, &[&str])]| -> Vec<Option<f64>> {
            let text = rt.block_on(get_text(&http, &metrics_url));
            names
                .iter()
                .map(|(n, l)| text.as_deref().and_then(|m| metric_sum(m, n, l)))
                .collect()
        };
        let figures: [(&str, &[&str]); 4] = [
            ("caravel_compute_reports_total", &["outcome=\"applied\""]),
            ("caravel_raft_applied_index", &[]),
            ("caravel_compute_report_batch_reports_sum", &[]),
            ("caravel_compute_report_batch_reports_count", &[]),
        ];
        let before = scrape(&figures);
        let cpu_before = proc_stat(fleet.pid, fleet.tck).context("the orchestrator is gone")?;
        let applied_before = before[0].unwrap_or(0.0);
        let reports = 2 * want as u64;
        let start = Instant::now();
        ex.release.as_ref().expect("set above").send_replace(true);
        let deadline = start + Duration::from_secs(a.timeout_secs);
        let mut next_line = start + Duration::from_secs(5);
        let mut timed_out = false;
        let (done_at, after) = loop {
            let now = scrape(&figures);
            let applied = now[0].unwrap_or(0.0) - applied_before;
            if applied >= reports as f64 {
                break (Instant::now(), now);
            }
            if Instant::now() > deadline {
                timed_out = true;
                eprintln!(
                    "gave up after {} s: {applied} of {reports} reports applied",
                    a.timeout_secs
                );
                break (Instant::now(), now);
            }
            fleet.alive()?;
            if Instant::now() >= next_line {
                eprintln!(
                    "{:.0} s: {applied} of {reports} reports applied",
                    start.elapsed().as_secs_f64()
                );
                next_line += Duration::from_secs(5);
            }
            // Not more often: rendering the metrics costs the orchestrator CPU (a scrape every
            // 20 ms was a tenth of it).
            std::thread::sleep(Duration::from_millis(100));
        };
        let cpu_after = proc_stat(fleet.pid, fleet.tck).context("the orchestrator is gone")?;
        let secs = (done_at - start).as_secs_f64().max(1e-3);
        let applied = after[0].unwrap_or(0.0) - applied_before;
        // The jobs' own view, once the reports are in (the metric counts jobs by state).
        let t = Instant::now();
        let mut completed = 0;
        while t.elapsed() < Duration::from_secs(30) {
            completed = count_jobs(rt, &http, &metrics_url).0;
            if completed as usize >= jobs.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(ReportsSummary {
            nodes: a.nodes,
            nodes_connected: fleet.connected,
            executions: want,
            nodes_reporting: lock(&ex.holders).len(),
            reports,
            secs,
            reports_per_second: applied / secs,
            reports_per_entry: mean_between((before[2], before[3]), (after[2], after[3])),
            entries_per_report: before[1]
                .zip(after[1])
                .filter(|_| applied > 0.0)
                .map(|(b, e)| (e - b) / applied),
            jobs_completed: completed,
            jobs: jobs.len(),
            orch_cpu_pct: (cpu_after.cpu_secs - cpu_before.cpu_secs) / secs * 100.0,
            orch_rss_end_mib: mib(cpu_after.rss_kib),
            timed_out,
        })
    })();
    drop(fleet);
    let s = result?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Output::Table => {
            println!(
                "{:>6} {:>10} {:>9} {:>8} {:>8} {:>10} {:>11} {:>8} {:>8}",
                "NODES",
                "EXECUTIONS",
                "REPORTING",
                "REPORTS",
                "SECS",
                "REPORTS/S",
                "PER ENTRY",
                "CPU %",
                "RSS MIB"
            );
            println!(
                "{:>6} {:>10} {:>9} {:>8} {:>8.2} {:>10.0} {:>11} {:>8.0} {:>8.0}",
                s.nodes,
                s.executions,
                s.nodes_reporting,
                s.reports,
                s.secs,
                s.reports_per_second,
                s.reports_per_entry
                    .map_or("-".to_string(), |v| format!("{v:.1}")),
                s.orch_cpu_pct,
                s.orch_rss_end_mib
            );
            println!(
                "jobs completed {} of {}{}",
                s.jobs_completed,
                s.jobs,
                if s.timed_out { "; TIMED OUT" } else { "" }
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// jobs: trivial WASM jobs end to end on one hybrid node

#[derive(Debug, Serialize)]
struct JobsSummary {
    jobs: usize,
    clients: usize,
    max_concurrent: usize,
    completed: u64,
    failed: u64,
    submit_errors: u64,
    /// First submission sent → the last job seen Completed (or Failed).
    secs: f64,
    completed_per_second: f64,
    submits_per_second: f64,
    /// Submit sent → acknowledged.
    submit_p50_ms: f64,
    submit_p99_ms: f64,
    node_cpu_pct: f64,
    node_rss_mib: f64,
    timed_out: bool,
}

fn jobs(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    a: &JobsArgs,
    reaper: &Reaper,
    output: Output,
) -> anyhow::Result<()> {
    if a.jobs == 0 || a.clients == 0 {
        bail!("--jobs and --clients must be at least 1");
    }
    eprintln!(
        "machine: {} cores, {} MiB RAM; caravel: {} ({})",
        cores(),
        mem_total_mib(),
        bin.display(),
        caravel_version(bin)
    );
    let mut extra = Vec::new();
    if a.max_concurrent > 0 {
        extra = vec![
            "-c".to_string(),
            format!("Compute.MaxConcurrent={}", a.max_concurrent),
        ];
    }
    let mut group = Group::start(
        bin,
        &dir.join("caravel"),
        1,
        GroupOptions {
            compute: 1,
            extra,
            ..Default::default()
        },
    )
    .context("cannot start the hybrid node")?;
    reaper.track_group(&group);
    group.wait_leader(Duration::from_secs(60))?;
    let m = &group.members[0];
    let pid = m.pid().context("the node has no pid")?;
    let api = m.api();
    let http = http()?;
    let metrics_url = format!("{api}/metrics");
    // The node's compute side registers once its session is up.
    let t = Instant::now();
    while rt
        .block_on(get_text(&http, &metrics_url))
        .and_then(|m| metric_sum(&m, "caravel_nodes", &["state=\"CONNECTED\""]))
        .unwrap_or(0.0)
        < 1.0
    {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the node's compute side did not connect within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(caravel_chaos_tests::wasm::NOOP_WASM)
    );
    eprintln!(
        "one hybrid node (orchestrator + compute, fsync on); {} no-op WASM jobs from {} clients",
        a.jobs, a.clients
    );
    let tck = clk_tck();
    let before = proc_stat(pid, tck).context("the node is gone")?;
    let completed_before = count_jobs(rt, &http, &metrics_url).0;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(a.jobs)));
    let start = Instant::now();
    let submitters: Vec<_> = (0..a.clients)
        .map(|_| {
            let (http, api, next, errors, acked, lat, url) = (
                http.clone(),
                api.clone(),
                next.clone(),
                errors.clone(),
                acked.clone(),
                lat.clone(),
                url.clone(),
            );
            let jobs = a.jobs as u64;
            rt.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        return;
                    }
                    let body = json!({"Job": {"Name": format!("noop-{i:07}"), "Type": "batch",
                        "Count": 1, "Tasks": [{"Name": "main",
                        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
                        "InputSources": [{"Target": "/m.wasm",
                            "Source": {"Type": "inline", "Params": {"URL": url}}}],
                        "Timeouts": {"QueueTimeout": 3600}}]}});
                    let t0 = Instant::now();
                    let r = http
                        .put(format!("{api}/api/v1/orchestrator/jobs"))
                        .json(&body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            lock(&lat).push(t0.elapsed());
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let deadline = start + Duration::from_secs(a.timeout_secs);
    let mut next_line = start + Duration::from_secs(5);
    let mut timed_out = false;
    let (mut completed, mut failed);
    loop {
        // One scrape every 250 ms: the gauge walks every job on the node being measured.
        let (c, f) = count_jobs(rt, &http, &metrics_url);
        (completed, failed) = (c.saturating_sub(completed_before), f);
        let errs = errors.load(Ordering::Relaxed);
        if completed + failed + errs >= a.jobs as u64 {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            eprintln!(
                "gave up after {} s: {completed} of {} completed",
                a.timeout_secs, a.jobs
            );
            break;
        }
        if proc_stat(pid, tck).is_none() {
            bail!(
                "the node exited; its log:\n{}",
                tail_lines(&group.members[0].log_text(), 30)
            );
        }
        if Instant::now() >= next_line {
            eprintln!(
                "{:.0} s: {} submitted, {completed} completed, {failed} failed",
                start.elapsed().as_secs_f64(),
                acked.load(Ordering::Relaxed)
            );
            next_line += Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    rt.block_on(futures::future::join_all(submitters));
    let after = proc_stat(pid, tck).context("the node is gone")?;
    let mut lat = lock(&lat).clone();
    lat.sort_unstable();
    let s = JobsSummary {
        jobs: a.jobs,
        clients: a.clients,
        max_concurrent: a.max_concurrent,
        completed,
        failed,
        submit_errors: errors.load(Ordering::Relaxed),
        secs,
        completed_per_second: completed as f64 / secs,
        submits_per_second: acked.load(Ordering::Relaxed) as f64 / secs,
        submit_p50_ms: pct_ms(&lat, 50.0),
        submit_p99_ms: pct_ms(&lat, 99.0),
        node_cpu_pct: (after.cpu_secs - before.cpu_secs) / secs * 100.0,
        node_rss_mib: mib(after.rss_kib),
        timed_out,
    };
    drop(group);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Output::Table => {
            println!(
                "{:>6} {:>7} {:>6} {:>9} {:>6} {:>11} {:>9} {:>10} {:>10} {:>6} {:>7}",
                "JOBS",
                "CLIENTS",
                "CONC",
                "COMPLETED",
                "FAILED",
                "COMPLETED/S",
                "SUBMITS/S",
                "SUBMIT P50",
                "SUBMIT P99",
                "CPU %",
                "RSS MIB"
            );
            println!(
                "{:>6} {:>7} {:>6} {:>9} {:>6} {:>11.0} {:>9.0} {:>10.1} {:>10.1} {:>6.0} {:>7.0}",
                s.jobs,
                s.clients,
                if s.max_concurrent == 0 {
                    "node".to_string()
                } else {
                    s.max_concurrent.to_string()
                },
                s.completed,
                s.failed,
                s.completed_per_second,
                s.submits_per_second,
                s.submit_p50_ms,
                s.submit_p99_ms,
                s.node_cpu_pct,
                s.node_rss_mib
            );
            if s.submit_errors > 0 || s.timed_out {
                println!(
                    "submit errors {}, timed out {}",
                    s.submit_errors, s.timed_out
                );
            }
        }
    }
    Ok(())
}

/// Jobs Completed and Failed by the node's `caravel_jobs` gauge (0 when it cannot be read).
fn count_jobs(rt: &tokio::runtime::Runtime, http: &reqwest::Client, url: &str) -> (u64, u64) {
    let text = rt.block_on(get_text(http, url)).unwrap_or_default();
    let count = |state: &str| {
        metric_sum(&text, "caravel_jobs", &[&format!("state=\"{state}\"")]).unwrap_or(0.0) as u64
    };
    (count("Completed"), count("Failed"))
}
