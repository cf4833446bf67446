//! Chaos scenarios for highly available orchestrators: real `caravel` processes on loopback, killed
//! (SIGKILL), paused (SIGSTOP) and cut off (UDP proxies in front of every Raft port) while clients
//! write through random members. Each scenario prints what it did and what it checked, and the
//! recorded client operations go through the linearizability checker.
//!
//! The binary under test is `CARAVEL_BIN`, else the `caravel` next to this test's own executable
//! (`cargo nextest run --workspace` builds it).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use caravel_chaos_tests::cluster::{Group, GroupOptions};
use caravel_chaos_tests::linearizability::{
    CheckResult, JobInput, JobOutput, JobStore, Recorder, check,
};
use caravel_chaos_tests::wasm::NOOP_WASM;
use serde_json::{Value, json};

fn bin() -> PathBuf {
    if let Ok(b) = std::env::var("CARAVEL_BIN") {
        return PathBuf::from(b);
    }
    let exe = std::env::current_exe().expect("current exe");
    // <target>/debug/deps/ha-<hash> → <target>/debug/caravel
    let b = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("caravel"))
        .expect("target dir");
    assert!(
        b.is_file(),
        "{} not found: build it (cargo build --bin caravel) or set CARAVEL_BIN",
        b.display()
    );
    b
}

fn job(name: &str) -> Value {
    use base64::Engine;
    let url = format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(NOOP_WASM)
    );
    json!({"Name": name, "Type": "batch", "Count": 1, "Tasks": [{"Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
        "InputSources": [{"Target": "/m.wasm", "Source": {"Type": "inline", "Params": {"URL": url}}}]}]})
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Submits through `api`, classifying the answer for the checker: 200 → Submitted, 4xx → Failed
/// (refused before proposing), anything else → unknown.
async fn submit(c: &reqwest::Client, api: &str, name: &str) -> Option<JobOutput> {
    let r = c
        .put(format!("{api}/api/v1/orchestrator/jobs"))
        .json(&json!({"Job": job(name)}))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.ok()?;
    match status {
        200 => Some(JobOutput::Submitted {
            job_id: body["JobID"].as_str()?.to_string(),
        }),
        400..=499 => Some(JobOutput::Failed),
        _ => None,
    }
}

/// Reads a job by name through `api` (linearizable): Found, NotFound, or unknown.
async fn get(c: &reqwest::Client, api: &str, name: &str) -> Option<JobOutput> {
    let r = c
        .get(format!("{api}/api/v1/orchestrator/jobs/{name}"))
        .send()
        .await
        .ok()?;
    match r.status().as_u16() {
        200 => {
            let v: Value = r.json().await.ok()?;
            Some(JobOutput::Found {
                job_id: v["Job"]["ID"].as_str()?.to_string(),
                version: v["Job"]["Version"].as_u64()?,
            })
        }
        404 => Some(JobOutput::NotFound),
        _ => None,
    }
}

/// Clients that submit `jobs` distinct jobs through random running members and read some back,
/// recording every operation. Returns the recorder when all are done.
fn load(
    rt: &tokio::runtime::Runtime,
    apis: Arc<std::sync::Mutex<Vec<String>>>,
    jobs: u64,
    clients: u64,
    prefix: &str,
) -> tokio::task::JoinHandle<Recorder<JobInput, JobOutput>> {
    let rec: Recorder<JobInput, JobOutput> = Recorder::new();
    let next = Arc::new(AtomicU64::new(0));
    let prefix = prefix.to_string();
    rt.spawn(async move {
        let mut tasks = Vec::new();
        for client in 0..clients {
            let (rec, next, apis, prefix) =
                (rec.clone(), next.clone(), apis.clone(), prefix.clone());
            tasks.push(tokio::spawn(async move {
                let c = http();
                let mut seed = client.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut pick = move |n: usize| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % n as u64) as usize
                };
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= jobs {
                        break;
                    }
                    let key = format!("{prefix}-{k}");
                    let api = {
                        let a = apis.lock().unwrap();
                        a[pick(a.len())].clone()
                    };
                    let inv = rec.invoke(client, JobInput::Submit { key: key.clone() });
                    match submit(&c, &api, &key).await {
                        Some(out) => {
                            inv.returned(out);
                        }
                        None => inv.unknown(),
                    }
                    // Read it back through another random member.
                    let api = {
                        let a = apis.lock().unwrap();
                        a[pick(a.len())].clone()
                    };
                    let inv = rec.invoke(client, JobInput::Get { key: key.clone() });
                    match get(&c, &api, &key).await {
                        Some(out) => {
                            inv.returned(out);
                        }
                        None => inv.unknown(),
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        rec
    })
}

fn check_history(rec: &Recorder<JobInput, JobOutput>) -> usize {
    let history = rec.history();
    let acked = history
        .iter()
        .filter(|op| {
            matches!(op.input, JobInput::Submit { .. })
                && matches!(
                    op.outcome,
                    caravel_chaos_tests::linearizability::Outcome::Returned {
                        output: JobOutput::Submitted { .. },
                        ..
                    }
                )
        })
        .count();
    let started = Instant::now();
    match check(&history, &JobStore, Duration::from_secs(120)) {
        CheckResult::Ok => eprintln!(
            "checked: {} operations ({acked} acknowledged submits) are linearizable ({:?})",
            history.len(),
            started.elapsed()
        ),
        other => panic!("history is not linearizable: {other:?}"),
    }
    acked
}

/// Every acknowledged job exists and, once terminal, completed exactly once.
fn check_jobs_completed_once(g: &Group, rec: &Recorder<JobInput, JobOutput>, timeout: Duration) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = http();
    let names: Vec<(String, String)> = rec
        .history()
        .into_iter()
        .filter_map(|op| match (op.input, op.outcome) {
            (
                JobInput::Submit { key },
                caravel_chaos_tests::linearizability::Outcome::Returned {
                    output: JobOutput::Submitted { job_id },
                    ..
                },
            ) => Some((key, job_id)),
            _ => None,
        })
        .collect();
    let api = g.members[g.leader().expect("a leader")].api();
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<(String, String)> = names.clone();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (name, id) in pending {
            let v: Option<Value> = rt.block_on(async {
                c.get(format!("{api}/api/v1/orchestrator/jobs/{id}/executions"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()
            });
            let Some(v) = v else {
                still.push((name, id));
                continue;
            };
            let execs = v["Items"].as_array().cloned().unwrap_or_default();
            let completed = execs
                .iter()
                .filter(|e| {
                    // Executions' states are numbers in Bacalhau's JSON (Completed = 9).
                    e["ComputeState"]["StateType"] == 9
                        || e["ComputeState"]["StateType"] == "Completed"
                })
                .count();
            assert!(
                completed <= 1,
                "job {name} ({id}) completed {completed} times: {v}"
            );
            if completed == 0 {
                still.push((name, id));
            }
        }
        pending = still;
        if Instant::now() > deadline {
            let (_, id) = pending[0].clone();
            let (_, describe, _) = g.cli(
                g.leader().unwrap_or(0),
                &["job", "describe", &id, "--output", "json"],
            );
            let (_, nodes, _) = g.cli(g.leader().unwrap_or(0), &["node", "list"]);
            panic!(
                "{} acknowledged jobs did not complete within {timeout:?}, e.g. {:?}:\n{describe}\nnodes:\n{nodes}",
                pending.len(),
                pending.first()
            );
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!(
        "checked: all {} acknowledged jobs exist and completed exactly once",
        names.len()
    );
}

fn running_apis(g: &Group, except: Option<usize>) -> Vec<String> {
    g.members
        .iter()
        .enumerate()
        .filter(|(i, m)| m.is_running() && Some(*i) != except)
        .map(|(_, m)| m.api())
        .collect()
}

fn jobs_from_env(default: u64) -> u64 {
    std::env::var("CARAVEL_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_killed_leader_loses_no_acknowledged_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(
        &bin(),
        dir.path(),
        3,
        GroupOptions {
            compute: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let jobs = jobs_from_env(1000);
    eprintln!(
        "did: a group of 3 hybrid orchestrators; {jobs} submits by 8 clients through random members; SIGKILL the leader every 2 s, restart it 0.5 s after a new leader is agreed"
    );
    let apis = Arc::new(std::sync::Mutex::new(running_apis(&g, None)));
    let started = Instant::now();
    let load = load(&rt, apis.clone(), jobs, 8, "kill");
    let mut kills = 0;
    while !load.is_finished() {
        std::thread::sleep(Duration::from_secs(2));
        if load.is_finished() {
            break;
        }
        let Some(l) = g.leader() else { continue };
        g.kill(l);
        kills += 1;
        let t = Instant::now();
        let new = g.wait_leader(Duration::from_secs(30)).unwrap();
        eprintln!(
            "killed leader {} (kill {kills}); {} leads after {:?}",
            g.members[l].id,
            g.members[new].id,
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
        g.restart(l).unwrap();
    }
    let rec = rt.block_on(load).unwrap();
    eprintln!(
        "did: {jobs} submits through random members with {kills} leader kills in {:?}",
        started.elapsed()
    );
    assert!(kills >= 1, "the load ended before any kill");
    let acked = check_history(&rec);
    assert!(
        acked as u64 >= jobs / 2,
        "only {acked} of {jobs} submits were acknowledged"
    );
    g.wait_leader(Duration::from_secs(30)).unwrap();
    check_jobs_completed_once(&g, &rec, Duration::from_secs(120));
}

#[test]
fn a_partitioned_leader_accepts_no_write_and_heals_into_one_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(
        &bin(),
        dir.path(),
        3,
        GroupOptions {
            proxied: true,
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = http();
    let old = g.wait_leader(Duration::from_secs(30)).unwrap();
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    g.isolate(old, true);
    eprintln!(
        "did: cut {} (the leader) off from both peers",
        g.members[old].id
    );
    // The majority elects a new leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let views: Vec<String> = majority
            .iter()
            .filter_map(|i| g.status(*i))
            .filter_map(|s| s["Leader"].as_str().map(String::from))
            .collect();
        if views.len() == 2
            && views[0] == views[1]
            && views[0] != g.members[old].id
            && !views[0].is_empty()
        {
            break views[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the majority elected no leader: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("checked: the majority elected {new}");
    // Writes through the majority succeed; the old leader accepts none.
    let apis = Arc::new(std::sync::Mutex::new(
        majority
            .iter()
            .map(|i| g.members[*i].api())
            .collect::<Vec<_>>(),
    ));
    let rec = rt.block_on(load(&rt, apis, 20, 2, "majority")).unwrap();
    let old_write = rt.block_on(submit(&c, &g.members[old].api(), "via-old-leader"));
    assert!(
        !matches!(old_write, Some(JobOutput::Submitted { .. })),
        "the cut-off leader acknowledged a write: {old_write:?}"
    );
    eprintln!("checked: the cut-off leader answered {old_write:?} (not acknowledged)");
    g.isolate(old, false);
    eprintln!("did: healed the partition");
    let l = g.wait_leader(Duration::from_secs(30)).unwrap();
    // One history: every member ends with the same jobs, the majority's writes included.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts: Vec<usize> = (0..3)
            .map(|i| {
                let (ok, out, _) = g.cli(
                    i,
                    &[
                        "job", "list", "--output", "json", "--limit", "1000", "--stale",
                    ],
                );
                if ok {
                    serde_json::from_str::<Value>(&out)
                        .ok()
                        .and_then(|v| v["Items"].as_array().map(|a| a.len()))
                        .unwrap_or(0)
                } else {
                    0
                }
            })
            .collect();
        if counts.iter().all(|c| *c == counts[0]) && counts[0] >= 20 {
            eprintln!(
                "checked: after healing all members hold the same {} jobs (leader {})",
                counts[0], g.members[l].id
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members did not converge: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The cut-off leader's entry never reached a majority, so the new leader's log replaced it.
    let via_old = rt.block_on(get(&c, &g.members[l].api(), "via-old-leader"));
    assert_eq!(
        via_old,
        Some(JobOutput::NotFound),
        "the write sent to the cut-off leader survived the heal"
    );
    eprintln!("checked: the write sent to the cut-off leader does not exist after healing");
    check_history(&rec);
}

#[test]
fn a_paused_leader_is_replaced_and_rejoins_as_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(&bin(), dir.path(), 3, GroupOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let old = g.wait_leader(Duration::from_secs(30)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let apis = Arc::new(std::sync::Mutex::new(running_apis(&g, Some(old))));
    let load = load(&rt, apis, 60, 4, "pause");
    g.pause(old);
    eprintln!("did: SIGSTOP {} (the leader)", g.members[old].id);
    let new = g.wait_leader(Duration::from_secs(30)).unwrap();
    assert_ne!(new, old);
    eprintln!("checked: {} took over", g.members[new].id);
    std::thread::sleep(Duration::from_secs(3));
    g.resume(old);
    eprintln!("did: SIGCONT {}", g.members[old].id);
    stop.store(true, Ordering::Relaxed);
    let rec = rt.block_on(load).unwrap();
    let l = g.wait_leader(Duration::from_secs(30)).unwrap();
    eprintln!("checked: one leader ({}) after the resume", g.members[l].id);
    check_history(&rec);
    // The resumed member catches up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = g.status(old);
        if let Some(s) = s
            && s["Members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["Lag"] == 0 && m["Reachable"] == true))
        {
            eprintln!(
                "checked: {} caught up (lag 0 everywhere)",
                g.members[old].id
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed member did not catch up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn members_are_replaced_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(&bin(), dir.path(), 3, GroupOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Load only through members that stay.
    let apis = Arc::new(std::sync::Mutex::new(vec![
        g.members[1].api(),
        g.members[2].api(),
    ]));
    let load = load(&rt, apis, 150, 4, "replace");
    let j = g.start_joiner("orch-4", false).unwrap();
    let addr = format!("orch-4@127.0.0.1:{}", g.members[j].raft_port);
    let (ok, out, err) = g.cli(1, &["cluster", "add", &addr]);
    assert!(ok, "add under load failed: {err}");
    eprintln!("did: {}", out.trim());
    let (ok, out, err) = g.cli(2, &["cluster", "remove", "orch-1"]);
    assert!(ok, "remove under load failed: {err}");
    eprintln!("did: {}", out.trim());
    g.kill(0);
    let rec = rt.block_on(load).unwrap();
    let acked = check_history(&rec);
    let (ok, out, err) = g.cli(j, &["job", "list", "--output", "json", "--limit", "1000"]);
    assert!(ok, "{err}");
    let n = serde_json::from_str::<Value>(&out).unwrap()["Items"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        n >= acked,
        "the new member has {n} jobs, {acked} were acknowledged"
    );
    eprintln!("checked: the new member orch-4 holds all {acked} acknowledged jobs ({n} in all)");
}
