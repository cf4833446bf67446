//! Chaos scenarios for compute sessions: real `caravel` orchestrator processes and a real compute-only
//! node process (`caravel serve --compute`) whose QUIC sessions to the orchestrators go through
//! fault-injecting UDP proxies (loss, delay, blackholes, flapping), orchestrators and the node killed
//! with SIGKILL, and peers the orchestrators must refuse. Each scenario prints what it did (`did:`)
//! and what it verified (`checked:`), with figures.
//!
//! Jobs are WASM: a 33-byte no-op module, or `examples/test-modules` `sleep N` (prints a line a
//! second for N seconds), built once for wasm32-wasip1 into `<target>/wasm` and sent inline.
//!
//! The binary under test is `CARAVEL_BIN`, else the `caravel` next to this test's own executable
//! (`cargo build --bin caravel`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use caravel_chaos_tests::cluster::{ComputeNode, Group, GroupOptions, Member, strip_ansi};
use caravel_chaos_tests::proxy::{Faults, LinkFaults};
use caravel_chaos_tests::wasm::{NOOP_WASM, test_module};
use serde_json::{Value, json};

// Bacalhau's execution states are numbers in JSON.
const RUNNING: u64 = 6;
const COMPLETED: u64 = 9;
const FAILED: u64 = 10;
const CANCELLED: u64 = 11;

fn bin() -> PathBuf {
    if let Ok(b) = std::env::var("CARAVEL_BIN") {
        return PathBuf::from(b);
    }
    let b = target_profile_dir().join("caravel");
    assert!(
        b.is_file(),
        "{} not found: build it (cargo build --bin caravel) or set CARAVEL_BIN",
        b.display()
    );
    b
}

/// `<target>/debug` (this test is `<target>/debug/deps/sessions-<hash>`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .expect("target dir")
}

/// The bytes of test module `name`.
fn module(name: &str) -> Vec<u8> {
    let p = test_module(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// A batch job (count 1) running `wasm` inline with `params`.
fn wasm_job(name: &str, wasm: &[u8], params: &[String], meta: &[(&str, &str)]) -> Value {
    use base64::Engine;
    let url = format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(wasm)
    );
    let meta: serde_json::Map<String, Value> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({"Name": name, "Type": "batch", "Count": 1, "Meta": meta, "Tasks": [{"Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm", "Parameters": params}},
        "InputSources": [{"Target": "/m.wasm", "Source": {"Type": "inline", "Params": {"URL": url}}}]}]})
}

fn noop_job(name: &str) -> Value {
    wasm_job(name, NOOP_WASM, &[], &[])
}

fn sleep_job(name: &str, secs: u64) -> Value {
    static SLEEP: OnceLock<Vec<u8>> = OnceLock::new();
    wasm_job(
        name,
        SLEEP.get_or_init(|| module("sleep")),
        &[secs.to_string()],
        &[],
    )
}

/// Blocking HTTP over reqwest (the tests drive processes from plain threads).
struct Http {
    rt: tokio::runtime::Runtime,
    c: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            c: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        }
    }

    fn get(&self, url: &str) -> Option<Value> {
        self.rt.block_on(async {
            let r = self.c.get(url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json().await.ok()
        })
    }

    fn text(&self, url: &str) -> Option<String> {
        self.rt.block_on(async {
            let r = self.c.get(url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.text().await.ok()
        })
    }

    /// Submits a job through `api`, retrying while the group has no leader; returns its id.
    fn submit(&self, api: &str, job: &Value) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r: Option<(u16, Value)> = self.rt.block_on(async {
                let r = self
                    .c
                    .put(format!("{api}/api/v1/orchestrator/jobs"))
                    .json(&json!({ "Job": job }))
                    .send()
                    .await
                    .ok()?;
                Some((r.status().as_u16(), r.json().await.ok()?))
            });
            match r {
                Some((200, v)) if v["JobID"].is_string() => {
                    return v["JobID"].as_str().unwrap_or_default().to_string();
                }
                Some((s @ 400..=499, v)) => panic!("job {} was refused ({s}): {v}", job["Name"]),
                other => assert!(
                    Instant::now() < deadline,
                    "cannot submit job {} through {api}: {other:?}",
                    job["Name"]
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn executions(&self, api: &str, job_id: &str) -> Option<Vec<Value>> {
        let v = self.get(&format!(
            "{api}/api/v1/orchestrator/jobs/{job_id}/executions"
        ))?;
        Some(v["Items"].as_array().cloned().unwrap_or_default())
    }

    /// The node's `ConnectionState.Status` as `api` reports it.
    fn node_status(&self, api: &str, node: &str) -> Option<String> {
        let v = self.get(&format!("{api}/api/v1/orchestrator/nodes/{node}"))?;
        v["Node"]["ConnectionState"]["Status"]
            .as_str()
            .map(String::from)
    }

    /// Sum of the samples of `name` whose labels include every `labels` pair (None: no sample).
    fn metric(&self, url: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.text(url)?, name, labels)
    }
}

/// Sums the samples of metric `name` (OpenMetrics text) that carry every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l),
            None => (series, ""),
        };
        if n != name
            || !labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn state_of(e: &Value) -> u64 {
    e["ComputeState"]["StateType"].as_u64().unwrap_or(0)
}

fn count_state(execs: &[Value], state: u64) -> usize {
    execs.iter().filter(|e| state_of(e) == state).count()
}

fn orchestrator_metrics(m: &Member) -> String {
    format!("{}/metrics", m.api())
}

fn node_metrics(n: &ComputeNode) -> String {
    format!("http://127.0.0.1:{}/metrics", n.metrics_port)
}

fn log_tail(text: &str, n: usize) -> String {
    let t = strip_ansi(text);
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The lines of `text` (a log) that contain `needle`.
fn log_lines(text: &str, needle: &str) -> Vec<String> {
    strip_ansi(text)
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

fn running_apis(g: &Group) -> Vec<String> {
    g.members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| m.api())
        .collect()
}

/// Everything a scenario needs to explain a failure: the node's and every member's log tail.
fn diagnostics(g: &Group, node: &ComputeNode) -> String {
    let mut s = format!("--- {} (compute) ---\n{}\n", node.id, node.log_tail(40));
    for m in &g.members {
        s.push_str(&format!(
            "--- {} ---\n{}\n",
            m.id,
            log_tail(&m.log_text(), 25)
        ));
    }
    s
}

/// Waits until `node` has status `want` as the group reports it (through any running member).
fn wait_node_status(
    h: &Http,
    g: &mut Group,
    node: &mut ComputeNode,
    want: &str,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        g.exited().unwrap();
        node.exited().unwrap();
        if running_apis(g)
            .iter()
            .any(|api| h.node_status(api, &node.id).as_deref() == Some(want))
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{} was not {want} within {timeout:?}\n{}",
            node.id,
            diagnostics(g, node)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until every job has exactly one Completed execution, failing at once if one ever has two.
/// Returns each job's executions at the end.
fn wait_completed_once(
    h: &Http,
    g: &mut Group,
    node: &mut ComputeNode,
    jobs: &[(String, String)],
    timeout: Duration,
) -> HashMap<String, Vec<Value>> {
    let started = Instant::now();
    let mut done: HashMap<String, Vec<Value>> = HashMap::new();
    loop {
        g.exited().unwrap();
        node.exited().unwrap();
        let apis = running_apis(g);
        for (name, id) in jobs {
            if done.contains_key(id) {
                continue;
            }
            let Some(execs) = apis.iter().find_map(|api| h.executions(api, id)) else {
                continue;
            };
            let completed = count_state(&execs, COMPLETED);
            assert!(
                completed <= 1,
                "job {name} ({id}) has {completed} Completed executions: {execs:?}"
            );
            let failed = count_state(&execs, FAILED);
            assert!(
                failed == 0,
                "job {name} ({id}) has a Failed execution: {execs:?}"
            );
            if completed == 1 {
                done.insert(id.clone(), execs);
            }
        }
        if done.len() == jobs.len() {
            break;
        }
        if started.elapsed() > timeout {
            let pending: Vec<&(String, String)> = jobs
                .iter()
                .filter(|(_, id)| !done.contains_key(id))
                .collect();
            let execs = pending
                .first()
                .and_then(|(_, id)| apis.iter().find_map(|api| h.executions(api, id)));
            panic!(
                "{} of {} jobs did not complete within {timeout:?}, e.g. {:?} with executions {execs:?}\n{}",
                pending.len(),
                jobs.len(),
                pending.first(),
                diagnostics(g, node)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Settled: look once more, so an execution that completed twice late is caught too.
    let apis = running_apis(g);
    for (name, id) in jobs {
        let execs = apis
            .iter()
            .find_map(|api| h.executions(api, id))
            .expect("executions");
        assert_eq!(
            count_state(&execs, COMPLETED),
            1,
            "job {name} ({id}): {execs:?}"
        );
        done.insert(id.clone(), execs);
    }
    done
}

/// Waits until each of `job_ids` has an execution in one of `states`; returns their ids, in job
/// order.
fn wait_executions_in(
    h: &Http,
    g: &mut Group,
    node: &mut ComputeNode,
    job_ids: &[String],
    states: &[u64],
    timeout: Duration,
) -> Vec<String> {
    let started = Instant::now();
    loop {
        g.exited().unwrap();
        node.exited().unwrap();
        let apis = running_apis(g);
        let mut ids = Vec::new();
        for job in job_ids {
            if let Some(execs) = apis.iter().find_map(|api| h.executions(api, job))
                && let Some(e) = execs.iter().find(|e| states.contains(&state_of(e)))
            {
                ids.push(e["ID"].as_str().unwrap_or_default().to_string());
            }
        }
        if ids.len() == job_ids.len() {
            return ids;
        }
        assert!(
            started.elapsed() < timeout,
            "only {} of {} jobs reached a state in {states:?} within {timeout:?}\n{}",
            ids.len(),
            job_ids.len(),
            diagnostics(g, node)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the node's outbox is empty: every report it made is acknowledged (committed).
fn wait_outbox_empty(h: &Http, g: &Group, node: &mut ComputeNode, timeout: Duration) -> Duration {
    let started = Instant::now();
    let url = node_metrics(node);
    while h.metric(&url, "caravel_compute_outbox_pending", &[]) != Some(0.0) {
        node.exited().unwrap();
        assert!(
            started.elapsed() < timeout,
            "{}'s outbox was not emptied within {timeout:?}: {}",
            node.id,
            figures(h, g, node)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    started.elapsed()
}

/// A group of `n` orchestrators (no compute of their own) and one proxied compute-only node, CONNECTED.
fn setup(n: usize, node_id: &str, extra: &[&str]) -> (tempfile::TempDir, Group, ComputeNode, Http) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(&bin(), dir.path(), n, GroupOptions::default()).unwrap();
    let mut node = g.start_compute_proxied(node_id, extra).unwrap();
    let h = Http::new();
    let took = wait_node_status(&h, &mut g, &mut node, "CONNECTED", Duration::from_secs(90));
    eprintln!(
        "did: {n} orchestrator(s) and compute-only node {node_id} dialling them through UDP proxies; CONNECTED after {took:?}"
    );
    (dir, g, node, h)
}

fn figures(h: &Http, g: &Group, node: &ComputeNode) -> String {
    let mut s = String::new();
    for m in g.members.iter().filter(|m| m.is_running()) {
        let url = orchestrator_metrics(m);
        let text = h.text(&url).unwrap_or_default();
        let f = |name: &str, labels: &[(&str, &str)]| {
            metric(&text, name, labels).map_or("n/a".to_string(), |v| v.to_string())
        };
        s.push_str(&format!(
            "{}: reports applied {} duplicate {}; sessions opened {}, reconnects {}, replayed reports {}, reconcile cancels {}; ",
            m.id,
            // Labelled families have no sample until their first count.
            metric(&text, "caravel_compute_reports_total", &[("outcome", "applied")])
                .unwrap_or(0.0),
            metric(&text, "caravel_compute_reports_total", &[("outcome", "duplicate")])
                .unwrap_or(0.0),
            f("caravel_compute_sessions_opened_total", &[]),
            f("caravel_compute_session_reconnects_total", &[]),
            f("caravel_compute_session_replayed_reports_total", &[]),
            f("caravel_compute_session_reconcile_cancels_total", &[]),
        ));
    }
    let text = h.text(&node_metrics(node)).unwrap_or_default();
    let f = |name: &str| metric(&text, name, &[]).map_or("n/a".to_string(), |v| v.to_string());
    s.push_str(&format!(
        "{}: handshakes {}, handshake failures {}, reconnect attempts {}, redials {}, unanswered dials {}, outbox pending {}",
        node.id,
        f("caravel_session_handshakes_total"),
        f("caravel_session_handshake_failures_total"),
        f("caravel_session_reconnect_attempts_total"),
        f("caravel_session_redials_total"),
        f("caravel_session_unanswered_dials_total"),
        f("caravel_compute_outbox_pending"),
    ));
    s
}

// -------------------------------------------------------------------------------------------------
// (a) a lossy, slow link
// -------------------------------------------------------------------------------------------------

#[test]
fn jobs_complete_exactly_once_over_a_lossy_slow_link() {
    let (_dir, mut g, mut node, h) = setup(1, "edge-lossy", &["-c", "Compute.MaxConcurrent=8"]);
    let jobs_n: usize = std::env::var("CARAVEL_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let lossy = LinkFaults {
        loss: 0.2,
        delay: Duration::from_millis(200),
        ..LinkFaults::default()
    };
    node.set_faults(Faults::both(lossy).with_seed(0x5eed))
        .unwrap();
    eprintln!(
        "did: 20 % loss and 200 ms delay on the node's link, both directions (seeded); {jobs_n} no-op WASM jobs submitted"
    );
    let api = g.members[0].api();
    let started = Instant::now();
    let jobs: Vec<(String, String)> = (0..jobs_n)
        .map(|i| {
            let name = format!("lossy-{i}");
            let id = h.submit(&api, &noop_job(&name));
            (name, id)
        })
        .collect();
    let submitted = started.elapsed();
    let done = wait_completed_once(&h, &mut g, &mut node, &jobs, Duration::from_secs(600));
    let took = started.elapsed();
    let stats = node.link_stats();
    let executions: usize = done.values().map(|e| e.len()).sum();
    eprintln!(
        "checked: all {jobs_n} jobs have exactly one Completed execution ({executions} executions in all) after {took:?} (submitting took {submitted:?})"
    );
    eprintln!(
        "checked: the proxy dropped {} of {} datagrams to the orchestrator and {} of {} to the node",
        stats.to_upstream.dropped_loss,
        stats.to_upstream.received,
        stats.to_client.dropped_loss,
        stats.to_client.received
    );
    assert!(
        stats.to_upstream.dropped_loss > 0 && stats.to_client.dropped_loss > 0,
        "the link lost nothing: {stats:?}"
    );
    let acked = wait_outbox_empty(&h, &g, &mut node, Duration::from_secs(120));
    eprintln!(
        "checked: the node's outbox emptied (every report acknowledged) {acked:?} after the last job completed"
    );
    eprintln!("figures: {}", figures(&h, &g, &node));
}

// -------------------------------------------------------------------------------------------------
// (b) a node cut off while it runs jobs
// -------------------------------------------------------------------------------------------------

#[test]
fn a_node_cut_off_for_a_minute_finishes_its_jobs_offline_and_reports_them_once() {
    let (_dir, mut g, mut node, h) = setup(1, "edge-cut", &["-c", "Compute.MaxConcurrent=4"]);
    let api = g.members[0].api();
    let lengths = [20u64, 25, 30, 35];
    let jobs: Vec<(String, String)> = lengths
        .iter()
        .map(|s| {
            let name = format!("offline-{s}s");
            let mut job = sleep_job(&name, *s);
            // The default, spelt out: a node gone for a minute keeps its executions.
            job["Meta"]["caravel.io/disconnect-grace"] = json!("10m");
            let id = h.submit(&api, &job);
            (name, id)
        })
        .collect();
    let job_ids: Vec<String> = jobs.iter().map(|(_, id)| id.clone()).collect();
    let execs = wait_executions_in(
        &h,
        &mut g,
        &mut node,
        &job_ids,
        &[RUNNING],
        Duration::from_secs(120),
    );
    node.cut(true).unwrap();
    let cut_at = Instant::now();
    eprintln!(
        "did: {} sleep jobs ({lengths:?} s) Running on {}; cut the node's link (blackhole, both directions)",
        jobs.len(),
        node.id
    );
    let mut disconnected_after = None;
    let mut finished_offline_after = None;
    let mut pending_at_heal = None;
    loop {
        g.exited().unwrap();
        node.exited().unwrap();
        if disconnected_after.is_none()
            && h.node_status(&api, &node.id).as_deref() == Some("DISCONNECTED")
        {
            disconnected_after = Some(cut_at.elapsed());
        }
        // Nothing of the node reaches the orchestrators while the link is cut.
        for id in &job_ids {
            if let Some(e) = h.executions(&api, id) {
                assert!(
                    e.iter().all(|e| !matches!(state_of(e), COMPLETED | FAILED)),
                    "a job ended on the orchestrator while the node was cut off: {e:?}"
                );
                assert_eq!(
                    e.len(),
                    1,
                    "an execution was replaced during the cut: {e:?}"
                );
            }
        }
        if finished_offline_after.is_none() && execs.iter().all(|e| node.finished_locally(e)) {
            finished_offline_after = Some(cut_at.elapsed());
            pending_at_heal = h.metric(&node_metrics(&node), "caravel_compute_outbox_pending", &[]);
        }
        if cut_at.elapsed() >= Duration::from_secs(60)
            && disconnected_after.is_some()
            && finished_offline_after.is_some()
        {
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(240),
            "after 240 s of cut: DISCONNECTED seen after {disconnected_after:?}, finished offline after {finished_offline_after:?}\n{}",
            diagnostics(&g, &node)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let cut_for = cut_at.elapsed();
    eprintln!(
        "checked: during the cut the orchestrator marked {} DISCONNECTED ({:?} after the cut), saw no job end and replaced no execution; all {} executions finished on the node offline ({:?} after the cut; {} reports pending in its outbox)",
        node.id,
        disconnected_after.unwrap_or_default(),
        execs.len(),
        finished_offline_after.unwrap_or_default(),
        pending_at_heal.map_or("n/a".into(), |p| p.to_string())
    );
    let sessions_before = node.sessions().len();
    let resync_lines_before = log_lines(&g.members[0].log_text(), "node resynchronised").len();
    node.cut(false).unwrap();
    let healed_at = Instant::now();
    eprintln!("did: healed the link after {cut_for:?}");
    let connected_after =
        wait_node_status(&h, &mut g, &mut node, "CONNECTED", Duration::from_secs(120));
    let done = wait_completed_once(&h, &mut g, &mut node, &jobs, Duration::from_secs(120));
    let reports_after = healed_at.elapsed();
    for (name, id) in &jobs {
        let e = &done[id];
        assert_eq!(e.len(), 1, "job {name} was placed again: {e:?}");
        assert!(
            execs.contains(&e[0]["ID"].as_str().unwrap_or_default().to_string()),
            "job {name}'s completed execution is not the one that ran offline: {e:?}"
        );
    }
    // The results too: `job get` pulls the archive from the node through its new session.
    let (name, id) = jobs.last().expect("a job");
    let out = g.dir.join("got-results");
    let (ok, _, err) = g.cli(
        0,
        &["job", "get", id, "--output-dir", &out.to_string_lossy()],
    );
    assert!(ok, "job get {name} after the heal failed: {err}");
    let stdout = std::fs::read_to_string(out.join("stdout")).unwrap_or_default();
    assert!(
        stdout.contains("tick 35") && stdout.trim_end().ends_with("done"),
        "{name}'s results are not those of its full run: {stdout:?}"
    );
    let new_sessions = node.sessions().len() - sessions_before;
    let resync: Vec<String> = log_lines(&g.members[0].log_text(), "node resynchronised")
        .into_iter()
        .skip(resync_lines_before)
        .filter_map(|l| caravel_chaos_tests::cluster::log_field(&l, "took").map(String::from))
        .collect();
    eprintln!(
        "checked: after the heal {} is CONNECTED again ({connected_after:?}; {new_sessions} new session(s)) and every job Completed exactly once, with the execution that ran offline, {reports_after:?} after the heal (orchestrator resync after Hello: {resync:?}); {name}'s results (stdout of its 35 s run) came back through the session",
        node.id
    );
    eprintln!("figures: {}", figures(&h, &g, &node));
}

// -------------------------------------------------------------------------------------------------
// (c) the node's orchestrator dies
// -------------------------------------------------------------------------------------------------

#[test]
fn a_node_whose_orchestrator_is_killed_moves_to_a_survivor_and_its_jobs_complete() {
    let (_dir, mut g, mut node, h) = setup(3, "edge-failover", &["-c", "Compute.MaxConcurrent=2"]);
    let sessions = node.sessions();
    let server = sessions
        .last()
        .cloned()
        .expect("a session in the node's log");
    let victim = g
        .members
        .iter()
        .position(|m| m.id == server)
        .unwrap_or_else(|| panic!("the node's orchestrator {server} is not a member"));
    let leader = g.leader();
    let api = g.members[(victim + 1) % 3].api();
    let before: Vec<(String, String)> = (0..4)
        .map(|i| {
            let name = format!("before-kill-{i}");
            let id = h.submit(&api, &sleep_job(&name, 6));
            (name, id)
        })
        .collect();
    let before_ids: Vec<String> = before.iter().map(|(_, id)| id.clone()).collect();
    // At least one of them runs when its orchestrator dies.
    wait_executions_in(
        &h,
        &mut g,
        &mut node,
        &before_ids[..1],
        &[RUNNING],
        Duration::from_secs(120),
    );
    let sessions_before = node.sessions().len();
    g.kill(victim);
    let killed_at = Instant::now();
    eprintln!(
        "did: 4 sleep jobs (6 s each, 2 at a time) submitted; SIGKILL {server}, the orchestrator {} is connected to ({})",
        node.id,
        if leader == Some(victim) {
            "the leader"
        } else {
            "a follower"
        }
    );
    let new_leader = g.wait_leader(Duration::from_secs(60)).unwrap();
    // The node notices (idle timeout) and dials the next orchestrator in its list.
    let moved_to = loop {
        node.exited().unwrap();
        let s = node.sessions();
        if s.len() > sessions_before {
            break s[sessions_before..].to_vec();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(120),
            "{} found no other orchestrator within 120 s\n{}",
            node.id,
            diagnostics(&g, &node)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let failover = killed_at.elapsed();
    assert!(
        moved_to.iter().all(|s| s != &server),
        "the node reconnected to the killed orchestrator: {moved_to:?}"
    );
    let survivor = moved_to.last().cloned().unwrap_or_default();
    eprintln!(
        "checked: {} established a session with {survivor} {failover:?} after the kill ({} leads)",
        node.id, g.members[new_leader].id
    );
    let api = g.members[new_leader].api();
    let after: Vec<(String, String)> = (0..4)
        .map(|i| {
            let name = format!("after-kill-{i}");
            let id = h.submit(&api, &sleep_job(&name, 2));
            (name, id)
        })
        .collect();
    eprintln!("did: 4 more sleep jobs (2 s) submitted after the failover");
    let all: Vec<(String, String)> = before.iter().chain(after.iter()).cloned().collect();
    let done = wait_completed_once(&h, &mut g, &mut node, &all, Duration::from_secs(240));
    let executions: usize = done.values().map(|e| e.len()).sum();
    wait_node_status(&h, &mut g, &mut node, "CONNECTED", Duration::from_secs(60));
    let si = g
        .members
        .iter()
        .position(|m| m.id == survivor)
        .expect("survivor");
    let resync = log_lines(&g.members[si].log_text(), "node resynchronised");
    eprintln!(
        "checked: all 8 jobs (4 before, 4 after the kill) Completed exactly once ({executions} executions), {:?} after the kill; the node is CONNECTED; {survivor} logged resync: {:?}",
        killed_at.elapsed(),
        resync
            .iter()
            .filter_map(|l| caravel_chaos_tests::cluster::log_field(l, "took"))
            .collect::<Vec<_>>()
    );
    eprintln!("figures: {}", figures(&h, &g, &node));
}

// -------------------------------------------------------------------------------------------------
// (d) the compute process restarts mid-job
// -------------------------------------------------------------------------------------------------

#[test]
fn a_restarted_compute_process_delivers_its_outbox_and_its_lost_job_runs_again() {
    let (_dir, mut g, mut node, h) = setup(1, "edge-restart", &["-c", "Compute.MaxConcurrent=4"]);
    let api = g.members[0].api();
    let quick: Vec<(String, String)> = (0..3)
        .map(|i| {
            let name = format!("quick-{i}");
            let id = h.submit(&api, &sleep_job(&name, 8));
            (name, id)
        })
        .collect();
    let long_name = "long-45s".to_string();
    let long_id = h.submit(&api, &sleep_job(&long_name, 45));
    let quick_ids: Vec<String> = quick.iter().map(|(_, id)| id.clone()).collect();
    let mut all_ids = quick_ids.clone();
    all_ids.push(long_id.clone());
    let running = wait_executions_in(
        &h,
        &mut g,
        &mut node,
        &all_ids,
        // A quick job may already be over on a slow machine; `unseen` below checks that some are not.
        &[RUNNING, COMPLETED],
        Duration::from_secs(120),
    );
    node.cut(true).unwrap();
    let (quick_execs, long_exec) = (running[..3].to_vec(), running[3].clone());
    // Which quick jobs the orchestrator has not seen end (their Completed report will only exist
    // in the node's outbox).
    let unseen: Vec<String> = quick_ids
        .iter()
        .filter(|id| {
            h.executions(&api, id)
                .is_some_and(|e| count_state(&e, COMPLETED) == 0)
        })
        .cloned()
        .collect();
    assert!(
        !unseen.is_empty(),
        "every quick job completed before the cut (the machine is too slow for this scenario)"
    );
    eprintln!(
        "did: 3 sleep jobs (8 s) and 1 (45 s) Running on {}; cut its link",
        node.id
    );
    // The quick ones finish offline: their Completed reports go to the durable outbox only.
    let url = node_metrics(&node);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        node.exited().unwrap();
        let completed = h
            .metric(
                &url,
                "caravel_compute_executions_total",
                &[("outcome", "completed")],
            )
            .unwrap_or(0.0);
        if completed as usize >= quick.len() && quick_execs.iter().all(|e| node.finished_locally(e))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quick jobs did not finish offline\n{}",
            node.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The report is pushed right after the counter moves; leave it a moment to be written.
    std::thread::sleep(Duration::from_secs(1));
    let pending = h
        .metric(&url, "caravel_compute_outbox_pending", &[])
        .unwrap_or(0.0);
    assert!(
        !node.finished_locally(&long_exec),
        "the 45 s job already finished (the machine is too slow for this scenario)"
    );
    node.kill();
    eprintln!(
        "did: the 3 quick jobs finished offline ({pending} reports pending in the outbox); SIGKILL the compute process while the 45 s job runs; healed the link; started the process again on the same data dir"
    );
    node.heal().unwrap();
    let restarted_at = Instant::now();
    node.start().unwrap();
    // First the reports the killed process left in its outbox, then the job it lost.
    wait_completed_once(&h, &mut g, &mut node, &quick, Duration::from_secs(120));
    let delivered = restarted_at.elapsed();
    let done = wait_completed_once(
        &h,
        &mut g,
        &mut node,
        &quick
            .iter()
            .cloned()
            .chain([(long_name.clone(), long_id.clone())])
            .collect::<Vec<_>>(),
        Duration::from_secs(240),
    );
    for ((name, id), exec) in quick.iter().zip(&quick_execs) {
        let e = &done[id];
        assert_eq!(
            e.len(),
            1,
            "quick job {name} ran again instead of being reported from the outbox: {e:?}"
        );
        assert_eq!(e[0]["ID"].as_str(), Some(exec.as_str()));
    }
    let long = &done[&long_id];
    let lost = long
        .iter()
        .find(|e| e["ID"].as_str() == Some(long_exec.as_str()))
        .expect("the long job's first execution");
    assert_eq!(
        state_of(lost),
        CANCELLED,
        "the execution killed with the process is not Cancelled: {lost}"
    );
    let completed = long
        .iter()
        .find(|e| state_of(e) == COMPLETED)
        .expect("completed");
    assert_ne!(
        completed["ID"].as_str(),
        Some(long_exec.as_str()),
        "the killed execution itself completed"
    );
    eprintln!(
        "checked: the 3 quick jobs Completed once each with the execution that ran before the kill ({} of them reported only from the outbox), {delivered:?} after the restart",
        unseen.len()
    );
    eprintln!(
        "checked: the 45 s job's killed execution ended Cancelled ({:?}) and its replacement {} Completed, {:?} after the restart; {} executions for the long job in all",
        lost["ComputeState"]["Message"],
        completed["ID"],
        restarted_at.elapsed(),
        long.len()
    );
    wait_outbox_empty(&h, &g, &mut node, Duration::from_secs(60));
    eprintln!("checked: the restarted node's outbox is empty (every report acknowledged)");
    eprintln!("figures: {}", figures(&h, &g, &node));
}

// -------------------------------------------------------------------------------------------------
// (e) a flapping link
// -------------------------------------------------------------------------------------------------

/// Connection rounds (reconnect attempts) a node may start within one minute of a flapping link.
///
/// The reconnect delay is uniform in `[0, min(30 s, 250 ms × 2^n)]` (full jitter), `n` counting the
/// rounds since the last session that lived longer than 30 s. Even if every round failed at
/// once, k rounds in a run need the first k − 1 delays to sum up to less than the time available:
/// within 60 s that is 21 or more rounds with probability below 10⁻⁶, within 30 s 17 or more
/// (simulated, 2·10⁶ runs). A reset needs a session that lived over 30 s, so within 60 s there is
/// at most one, leaving two runs that share 30 s: at most 2 × 16 = 32.
const FLAP_ATTEMPT_BOUND: f64 = 32.0;

/// Redials a node may start within one minute: within a round they come at least 0.75 × the 2 s
/// probe interval apart, and a new round starts with a dial of its own, not a redial: at most
/// 60 s / 1.5 s = 40, plus one for a round that begins and ends inside the window.
const FLAP_REDIAL_BOUND: f64 = 41.0;

/// One phase of flapping: `cut_for` blackholed, `up_for` open, repeated for `total`, a no-op job
/// submitted at every toggle. Returns (toggles, [reconnect attempts the node started meanwhile,
/// sessions the node established, sessions the orchestrator accepted, redials the node started]).
fn flap(
    h: &Http,
    g: &Group,
    node: &mut ComputeNode,
    cut_for: Duration,
    up_for: Duration,
    total: Duration,
    jobs: &mut Vec<(String, String)>,
) -> (usize, [f64; 4]) {
    let api = g.members[0].api();
    let url = node_metrics(node);
    let orch = orchestrator_metrics(&g.members[0]);
    let counters = |h: &Http| {
        [
            h.metric(&url, "caravel_session_reconnect_attempts_total", &[]),
            h.metric(&url, "caravel_session_handshakes_total", &[]),
            h.metric(&orch, "caravel_compute_session_handshakes_total", &[]),
            h.metric(&url, "caravel_session_redials_total", &[]),
        ]
        .map(|v| v.expect("session counters"))
    };
    let before = counters(h);
    let started = Instant::now();
    let mut at = Duration::ZERO;
    let mut toggles = 0;
    let mut cut = false;
    while at < total {
        cut = !cut;
        node.cut(cut).unwrap();
        toggles += 1;
        let name = format!("flap-{}", jobs.len());
        jobs.push((name.clone(), h.submit(&api, &noop_job(&name))));
        // Toggle by the clock, whatever the submit took.
        at += if cut { cut_for } else { up_for };
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        node.exited().unwrap();
    }
    node.cut(false).unwrap();
    let after = counters(h);
    (toggles, std::array::from_fn(|i| after[i] - before[i]))
}

#[test]
fn a_flapping_link_does_not_storm_and_the_node_converges() {
    let (_dir, mut g, mut node, h) = setup(1, "edge-flap", &["-c", "Compute.MaxConcurrent=4"]);
    let mut jobs = Vec::new();
    // As asked: the link toggles every 2 s for a minute. A 2 s gap is well inside the session's
    // 10 s idle timeout, so QUIC rides it out; the session may survive it all.
    let (toggles, [attempts, node_sessions, orch_sessions, redials]) = flap(
        &h,
        &g,
        &mut node,
        Duration::from_secs(2),
        Duration::from_secs(2),
        Duration::from_secs(60),
        &mut jobs,
    );
    let dropped = |n: &ComputeNode| {
        let s = n.link_stats();
        s.to_upstream.dropped_blackhole + s.to_client.dropped_blackhole
    };
    eprintln!(
        "did: toggled a blackhole on the node's link every 2 s for 60 s ({toggles} toggles, {} datagrams dropped), a no-op job submitted at each toggle",
        dropped(&node)
    );
    assert!(
        attempts <= FLAP_ATTEMPT_BOUND,
        "{} started {attempts} connection attempts in a minute of flapping (bound {FLAP_ATTEMPT_BOUND}): a reconnect storm\n{}",
        node.id,
        node.log_tail(40)
    );
    assert!(
        redials <= FLAP_REDIAL_BOUND,
        "{} started {redials} redials in a minute of flapping (bound {FLAP_REDIAL_BOUND})\n{}",
        node.id,
        node.log_tail(40)
    );
    eprintln!(
        "checked: {attempts} reconnect attempts (bound {FLAP_ATTEMPT_BOUND}, from the backoff), {redials} redials (bound {FLAP_REDIAL_BOUND}), {node_sessions} new sessions by the node, {orch_sessions} accepted by the orchestrator"
    );
    // Then cuts longer than the idle timeout, so sessions do die and the node must reconnect, into a
    // link that is up only 2 s in 14.
    let dropped_before = dropped(&node);
    let (toggles, [attempts, node_sessions, orch_sessions, redials]) = flap(
        &h,
        &g,
        &mut node,
        Duration::from_secs(12),
        Duration::from_secs(2),
        Duration::from_secs(56),
        &mut jobs,
    );
    eprintln!(
        "did: then cut the link 12 s, opened it 2 s, for 56 s ({toggles} toggles, {} datagrams dropped)",
        dropped(&node) - dropped_before
    );
    assert!(
        attempts <= FLAP_ATTEMPT_BOUND,
        "{} started {attempts} connection attempts in 56 s of long flaps (bound {FLAP_ATTEMPT_BOUND}): a reconnect storm\n{}",
        node.id,
        node.log_tail(40)
    );
    assert!(
        redials <= FLAP_REDIAL_BOUND,
        "{} started {redials} redials in 56 s of long flaps (bound {FLAP_REDIAL_BOUND})\n{}",
        node.id,
        node.log_tail(40)
    );
    eprintln!(
        "checked: {attempts} reconnect attempts (bound {FLAP_ATTEMPT_BOUND}, from the backoff), {redials} redials (bound {FLAP_REDIAL_BOUND}), {node_sessions} new sessions by the node, {orch_sessions} accepted by the orchestrator"
    );
    let settled = Instant::now();
    let connected = wait_node_status(&h, &mut g, &mut node, "CONNECTED", Duration::from_secs(120));
    let done = wait_completed_once(&h, &mut g, &mut node, &jobs, Duration::from_secs(180));
    let url = node_metrics(&node);
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.metric(&url, "caravel_session_connected", &[]) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the node has no session up after the flapping\n{}",
            node.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let executions: usize = done.values().map(|e| e.len()).sum();
    eprintln!(
        "checked: after the flapping the node is CONNECTED ({connected:?} after the link settled) with a session up, and all {} jobs Completed exactly once ({executions} executions), {:?} after the link settled",
        jobs.len(),
        settled.elapsed()
    );
    eprintln!("figures: {}", figures(&h, &g, &node));
}

// -------------------------------------------------------------------------------------------------
// (f) peers the orchestrator refuses
// -------------------------------------------------------------------------------------------------

/// How a connection attempt ended, seen from the client.
#[derive(Debug)]
enum Refusal {
    /// The peer closed the connection at the application level (code, reason).
    Closed(u32, String),
    /// The QUIC/TLS handshake failed or the connection closed at the transport level.
    Transport(String),
}

impl Refusal {
    fn from(e: quinn::ConnectionError) -> Refusal {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => Refusal::Closed(
                c.error_code.into_inner() as u32,
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            other => Refusal::Transport(other.to_string()),
        }
    }
}

/// A rustls client config trusting `ca_pem` for the orchestrator's own name (`orch-1`), with
/// `client` (certificate chain PEM, key PEM) or no client certificate, offering `alpn`.
fn raw_client(ca_pem: &str, client: Option<(&str, &str)>, alpn: &[u8]) -> quinn::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ))
}

/// Connects with `cfg`; if the handshake succeeds, sends `first` (raw bytes) on a new control
/// stream and, with `want_ack`, reads the orchestrator's first control frame. Returns how the
/// connection ended (or the frame read).
async fn attempt(
    server: SocketAddr,
    server_name: &str,
    cfg: quinn::ClientConfig,
    first: Option<Vec<u8>>,
    want_ack: bool,
) -> Result<caravel_model::wire::ToCompute, Refusal> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        let conn = endpoint
            .connect_with(cfg, server, server_name)
            .unwrap()
            .await
            .map_err(Refusal::from)?;
        if let Some(bytes) = first {
            // Opening and writing may fail once the server has closed: the close says why.
            if let Ok((mut send, mut recv)) = conn.open_bi().await {
                let _ = send.write_all(&bytes).await;
                if want_ack {
                    let f = caravel_net::frame::read(&mut recv, 1 << 20).await;
                    if let Ok(Some(f)) = f {
                        let m = caravel_net::session::decode_to_compute(
                            caravel_net::session::Channel::Control,
                            &f,
                        )
                        .map_err(|e| Refusal::Transport(e.to_string()))?;
                        conn.close(0u32.into(), b"test done");
                        return Ok(m);
                    }
                }
            }
        }
        Err(Refusal::from(conn.closed().await))
    })
    .await
    .unwrap_or_else(|_| Err(Refusal::Transport("no answer within 30 s".into())));
    endpoint.close(0u32.into(), b"test done");
    result
}

fn hello(node_id: &str) -> Vec<u8> {
    let info = caravel_model::NodeInfo {
        node_id: node_id.to_string(),
        node_type: "Compute".into(),
        ..Default::default()
    };
    let m = caravel_model::wire::ToOrchestrator::Hello {
        info: Box::new(info),
        last_seq: 0,
    };
    caravel_net::session::encode_to_orchestrator(&m)
        .unwrap()
        .1
        .to_vec()
}

#[test]
fn the_orchestrator_refuses_foreign_anonymous_impostor_and_other_version_peers_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start(&bin(), dir.path(), 1, GroupOptions::default()).unwrap();
    let h = Http::new();
    let orch = &g.members[0];
    let server = SocketAddr::from(([127, 0, 0, 1], orch.compute_port));
    let certs = g.issue_cert("node-x").unwrap();
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let (ca, x_cert, x_key) = (read("ca.crt"), read("node-x.crt"), read("node-x.key"));
    let other_ca = caravel_net::tls::new_ca("another cluster").unwrap();
    let foreign =
        caravel_net::tls::issue(&other_ca, "node-x", caravel_net::tls::Role::Compute).unwrap();
    let opts = caravel_net::session::SessionOptions::default();
    let mx = orchestrator_metrics(orch);
    let counter = |name: &str| h.metric(&mx, name, &[]).unwrap_or(0.0);
    let counts = || {
        [
            "caravel_compute_session_handshakes_total",
            "caravel_compute_session_handshake_failures_total",
            "caravel_compute_session_refused_total",
            "caravel_compute_session_protocol_errors_total",
        ]
        .map(counter)
    };
    let before = counts();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session_cfg = |ca: &str, cert: &str, key: &str| {
        caravel_net::session::ClientIdentity::from_pem(ca, cert, key)
            .unwrap()
            .client_config(&opts)
            .unwrap()
    };
    let alpn = caravel_net::session::SESSION_ALPN;
    const SNI: &str = "caravel-orchestrator";

    // The control: node-x's own certificate and a Hello naming node-x is accepted (an Ack comes back).
    let ok = rt.block_on(attempt(
        server,
        SNI,
        session_cfg(&ca, &x_cert, &x_key),
        Some(hello("node-x")),
        true,
    ));
    assert!(
        matches!(ok, Ok(caravel_model::wire::ToCompute::Ack { .. })),
        "a valid node was not acknowledged: {ok:?}"
    );
    eprintln!(
        "checked: control: node-x with its own certificate and Hello is acknowledged ({ok:?})"
    );

    // 1. A certificate from another CA.
    let r = rt.block_on(attempt(
        server,
        SNI,
        session_cfg(&ca, &foreign.cert, &foreign.key),
        Some(hello("node-x")),
        false,
    ));
    eprintln!("did: a client with a certificate from another CA; it saw {r:?}");
    match &r {
        // TLS alert 48 (unknown_ca).
        Err(Refusal::Transport(e)) => assert!(
            e.contains("handshake failed") && e.contains("UnknownIssuer"),
            "another CA's certificate refused without its reason: {e}"
        ),
        other => {
            panic!("a certificate from another CA was not refused in the handshake: {other:?}")
        }
    }

    // 2. No client certificate.
    let r = rt.block_on(attempt(
        server,
        "orch-1",
        raw_client(&ca, None, alpn),
        Some(hello("node-x")),
        false,
    ));
    eprintln!("did: a client with no certificate; it saw {r:?}");
    match &r {
        // TLS alert 116 (certificate_required).
        Err(Refusal::Transport(e)) => assert!(
            e.contains("handshake failed") && e.contains("no certificates"),
            "a client without a certificate refused without its reason: {e}"
        ),
        other => {
            panic!("a client without a certificate was not refused in the handshake: {other:?}")
        }
    }

    // 3. node-x's certificate, a Hello claiming node-y.
    let r = rt.block_on(attempt(
        server,
        SNI,
        session_cfg(&ca, &x_cert, &x_key),
        Some(hello("node-y")),
        false,
    ));
    eprintln!("did: node-x's certificate with a Hello claiming node-y; it saw {r:?}");
    match &r {
        Err(Refusal::Closed(code, reason)) => {
            assert_eq!(*code, caravel_net::session::CLOSE_REFUSED, "{reason}");
            assert_eq!(reason, "certificate is for node-x, Hello claims node-y");
        }
        other => panic!("an impostor's Hello was not refused: {other:?}"),
    }

    // 4. A frame of protocol version 2 (the version is bytes 4..6 of the header; the checksum
    //    covers only kind and payload).
    let mut v2 = hello("node-x");
    v2[4..6].copy_from_slice(&2u16.to_be_bytes());
    let r = rt.block_on(attempt(
        server,
        SNI,
        session_cfg(&ca, &x_cert, &x_key),
        Some(v2),
        false,
    ));
    eprintln!("did: a Hello frame with protocol version 2; it saw {r:?}");
    match &r {
        Err(Refusal::Closed(code, reason)) => {
            assert_eq!(*code, caravel_net::session::CLOSE_PROTOCOL, "{reason}");
            assert!(
                reason.contains("version 2") && reason.contains("version 1"),
                "the close reason does not name both versions: {reason}"
            );
        }
        other => panic!("a frame of another version was not refused: {other:?}"),
    }

    // 5. ALPN caravel-session/2.
    let r = rt.block_on(attempt(
        server,
        "orch-1",
        raw_client(&ca, Some((&x_cert, &x_key)), b"caravel-session/2"),
        Some(hello("node-x")),
        false,
    ));
    eprintln!("did: a client offering only ALPN caravel-session/2; it saw {r:?}");
    match &r {
        // TLS alert 120 (no_application_protocol).
        Err(Refusal::Transport(e)) => assert!(
            e.contains("handshake failed") && e.contains("error 120"),
            "ALPN caravel-session/2 refused without its reason: {e}"
        ),
        other => panic!("ALPN caravel-session/2 was not refused in the handshake: {other:?}"),
    }

    // The orchestrator counted each refusal where it belongs and logged why.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after = counts();
        let d: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        if d[0] >= 1.0 && d[1] >= 3.0 && d[2] >= 1.0 && d[3] >= 1.0 {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "orchestrator counters moved by {d:?} (handshakes, handshake failures, refused, protocol errors); expected ≥ [1, 3, 1, 1]\n{}",
            log_tail(&orch.log_text(), 30)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        after[0], 1.0,
        "only the control session may be established: {after:?}"
    );
    assert_eq!(after[2], 1.0, "one impostor refused: {after:?}");
    assert_eq!(after[3], 1.0, "one protocol error: {after:?}");
    let log = orch.log_text();
    let failures = log_lines(&log, "handshake failed");
    let refused = log_lines(&log, "refusing the compute session");
    let closing = log_lines(&log, "closing the compute session");
    for why in ["UnknownIssuer", "no certificates", "error 120"] {
        assert!(
            failures.iter().any(|l| l.contains(why)),
            "the orchestrator did not log a handshake failure for {why:?}: {failures:?}"
        );
    }
    assert!(
        refused
            .iter()
            .any(|l| l.contains("certificate is for node-x, Hello claims node-y")),
        "the orchestrator did not log the impostor's refusal: {refused:?}"
    );
    assert!(
        closing.iter().any(|l| l.contains("version 2")),
        "the orchestrator did not log the version mismatch: {closing:?}"
    );
    eprintln!(
        "checked: the orchestrator counted handshakes +{}, handshake failures +{}, refused +{}, protocol errors +{}; its log says:",
        after[0], after[1], after[2], after[3]
    );
    for l in failures.iter().chain(&refused).chain(&closing) {
        eprintln!("  {l}");
    }
}

#[test]
fn a_restarted_orchestrator_resets_its_old_sessions_so_the_node_reconnects_at_once() {
    let (_dir, mut g, mut node, h) = setup(1, "edge-restart", &[]);
    let id = h.submit(&g.members[0].api(), &sleep_job("across-restart", 8));
    wait_executions_in(
        &h,
        &mut g,
        &mut node,
        std::slice::from_ref(&id),
        &[RUNNING],
        Duration::from_secs(120),
    );
    let sessions_before = node.sessions().len();
    g.restart(0).unwrap();
    let restarted_at = Instant::now();
    eprintln!(
        "did: SIGKILL the only orchestrator while a job runs, start it again on its data dir and port"
    );
    // The new process derives the same stateless-reset and connection-id keys from its TLS key:
    // the node's next packet (a keep-alive, every 2 s) is answered with a stateless reset.
    let lost = loop {
        node.exited().unwrap();
        let lines = log_lines(&node.log_text(), "compute session lost");
        if let Some(l) = lines.last() {
            break l.clone();
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(60),
            "the node never noticed the restart\n{}",
            diagnostics(&g, &node)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        lost.contains("stateless reset"),
        "the session ended by a stateless reset, not by the idle timeout: {lost}"
    );
    while node.sessions().len() <= sessions_before {
        node.exited().unwrap();
        assert!(
            restarted_at.elapsed() < Duration::from_secs(60),
            "no new session\n{}",
            diagnostics(&g, &node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = restarted_at.elapsed();
    eprintln!(
        "checked: session reset and re-established {took:?} after the restart (idle timeout: 10 s)"
    );
    wait_completed_once(
        &h,
        &mut g,
        &mut node,
        &[("across-restart".to_string(), id)],
        Duration::from_secs(120),
    );
    eprintln!("checked: the job running across the restart completed once");
}

// -------------------------------------------------------------------------------------------------
// (g) the leader killed again and again while a compute-only node runs every job
// -------------------------------------------------------------------------------------------------

/// The job's `State.StateType` (a name in Bacalhau's JSON: jobs' states are strings, executions'
/// numbers) and `State.Message` as `api` reports them.
fn job_state(h: &Http, api: &str, job_id: &str) -> Option<(String, String)> {
    let v = h.get(&format!("{api}/api/v1/orchestrator/jobs/{job_id}"))?;
    let s = &v["Job"]["State"];
    Some((
        s["StateType"].as_str()?.to_string(),
        s["Message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// What a nemesis client did: the jobs acknowledged (name, id), and how many submissions were not.
type ClientRecord = (Vec<(String, String)>, usize);

/// Clients that submit no-op jobs through random running members until `stop`; returns the
/// acknowledged ones (name, id). A submission whose answer is not 200 is not retried: its outcome
/// may be unknown, and only acknowledged jobs carry a promise.
fn nemesis_clients(
    clients: usize,
    apis: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<ClientRecord>> {
    use std::sync::atomic::Ordering;
    (0..clients)
        .map(|client| {
            let (apis, stop) = (apis.clone(), stop.clone());
            std::thread::spawn(move || {
                let h = Http::new();
                let (mut acked, mut refused) = (Vec::new(), 0);
                let mut seed = (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let api = {
                        let a = apis.lock().unwrap();
                        a[(seed % a.len() as u64) as usize].clone()
                    };
                    let name = format!("nemesis-{client}-{k}");
                    k += 1;
                    let job = noop_job(&name);
                    let answer: Option<(u16, Value)> = h.rt.block_on(async {
                        let r =
                            h.c.put(format!("{api}/api/v1/orchestrator/jobs"))
                                .json(&json!({ "Job": job }))
                                .send()
                                .await
                                .ok()?;
                        Some((r.status().as_u16(), r.json().await.ok()?))
                    });
                    match answer {
                        Some((200, v)) if v["JobID"].is_string() => {
                            acked.push((name, v["JobID"].as_str().unwrap_or_default().to_string()))
                        }
                        Some((s @ 400..=499, v)) if s != 429 => {
                            panic!("job {name} was refused ({s}): {v}")
                        }
                        _ => {
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    // Paced, so the node's backlog stays what a debug build clears in a minute.
                    std::thread::sleep(Duration::from_millis(200));
                }
                (acked, refused)
            })
        })
        .collect()
}

/// The nemesis of issue 11: 3 orchestrators and one compute-only node; the leader SIGKILLed every
/// 8 s and started again once a successor is agreed, for `CARAVEL_NEMESIS_SECS` (48) seconds, while 4
/// clients submit no-op jobs through random members. Every acknowledged job must end Completed,
/// with exactly one Completed execution and none Failed: a failover must never fail a job (the node
/// moving its session to a survivor is still a candidate within its heartbeat grace). Run it many
/// times to catch rare events: `cargo nextest run -p caravel-chaos-tests --test sessions
/// --stress-count 10 -E 'test(leader_kills)'`.
#[test]
fn leader_kills_fail_no_job_of_a_compute_only_node() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let secs: u64 = std::env::var("CARAVEL_NEMESIS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let (_dir, mut g, mut node, h) = setup(3, "edge-nemesis", &["-c", "Compute.MaxConcurrent=8"]);
    let apis = Arc::new(Mutex::new(running_apis(&g)));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = nemesis_clients(4, &apis, &stop);
    let started = Instant::now();
    let mut kills = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(8));
        let Some(l) = g.leader() else { continue };
        g.kill(l);
        let t = Instant::now();
        *apis.lock().unwrap() = running_apis(&g);
        let new = g.wait_leader(Duration::from_secs(30)).unwrap();
        kills.push((
            g.members[l].id.clone(),
            g.members[new].id.clone(),
            t.elapsed(),
        ));
        g.restart(l).unwrap();
        *apis.lock().unwrap() = running_apis(&g);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut jobs, mut unacked) = (Vec::new(), 0);
    for c in clients {
        let (a, r) = c.join().expect("a client panicked");
        jobs.extend(a);
        unacked += r;
    }
    eprintln!(
        "did: 3 orchestrators, compute-only node {}; {} leader kills in {:?} ({}), each restarted once a successor led; 4 clients: {} jobs acknowledged, {unacked} submissions not (member down or no leader)",
        node.id,
        kills.len(),
        started.elapsed(),
        kills
            .iter()
            .map(|(a, b, t)| format!("{a}→{b} {} ms", t.as_millis()))
            .collect::<Vec<_>>()
            .join(", "),
        jobs.len()
    );
    assert!(kills.len() >= 2, "fewer than 2 kills: {kills:?}");
    assert!(
        jobs.len() >= 20,
        "only {} jobs were acknowledged",
        jobs.len()
    );
    // Every acknowledged job ends Completed; one that failed fails the scenario at once. The node
    // works through the backlog at its own pace: the wait gives up only when nothing completes
    // for a minute and a half.
    let mut progress = Instant::now();
    let mut pending: Vec<&(String, String)> = jobs.iter().collect();
    while !pending.is_empty() {
        g.exited().unwrap();
        node.exited().unwrap();
        let apis = running_apis(&g);
        let before = pending.len();
        pending.retain(|(name, id)| {
            match apis.iter().find_map(|api| job_state(&h, api, id)) {
                Some((s, _)) if s == "Completed" => false,
                Some((s, msg)) if s == "Failed" || s == "Stopped" => panic!(
                    "acknowledged job {name} ({id}) ended in state {s}: {msg}; executions: {:?}\n{}",
                    apis.iter().find_map(|api| h.executions(api, id)),
                    diagnostics(&g, &node)
                ),
                _ => true,
            }
        });
        if pending.len() < before {
            progress = Instant::now();
        }
        assert!(
            progress.elapsed() < Duration::from_secs(90),
            "{} acknowledged jobs are not Completed and none completed for 90 s, e.g. {:?}\n{}",
            pending.len(),
            pending.first(),
            diagnostics(&g, &node)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let done = wait_completed_once(&h, &mut g, &mut node, &jobs, Duration::from_secs(60));
    let executions: usize = done.values().map(|e| e.len()).sum();
    eprintln!(
        "checked: all {} acknowledged jobs Completed, each with exactly one Completed execution and none Failed ({executions} executions)",
        jobs.len()
    );
    eprintln!("figures: {}", figures(&h, &g, &node));
}
