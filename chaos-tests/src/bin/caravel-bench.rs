//! `caravel-bench`: the benchmarks of the HA issue, one command each, each printing a table.
//!
//! - `caravel-bench writes`: replicated-write throughput and latency of a 3-orchestrator Caravel
//!   group on loopback (mutual-TLS QUIC between members, fsync on), side by side with a 3-member
//!   etcd cluster from Debian's `etcd-server` package driven with the same load shape.
//! - `caravel-bench failover`: SIGKILL the leader under a steady write load, many times, and print
//!   the distribution of kill → new leader agreed and kill → first acknowledged write.
//!
//! ```text
//!  bench process (tokio, N HTTP clients) ──PUT /api/v1/orchestrator/jobs──▶ orch-1..3 (caravel serve)
//!                                        └─POST /v3/kv/put (base64)────────▶ etcd e1..e3 (peer TLS)
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
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "caravel-bench",
    about = "Caravel's HA benchmarks: replicated writes (vs etcd) and leader failover"
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
                "kill {k}/{}: {} → leader {} agreed after {:.0} ms, first write acked after {:.0} ms \
                 ({} writes failed meanwhile); restarted, caught up to index {target} in {:.0} ms",
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
