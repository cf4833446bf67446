//! Highly available orchestrators: real `caravel serve --orchestrator --peers …` processes with
//! mutual TLS on loopback. Any member serves the API (writes forwarded to the leader, reads
//! linearizable), a killed leader is replaced, members are added and removed, a full restart keeps
//! every job, a lost quorum answers 503, and a snapshot restores into a new group.

use std::time::{Duration, Instant};

use caravel_chaos_tests::cluster::{Group, GroupOptions};
use serde_json::Value;

use crate::{bin, test_module};

/// A group with API authentication on: every call of these tests carries the operator's key, as
/// a production cluster's clients do.
fn group(n: usize, compute: usize) -> (Group, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = Group::start(
        &bin(),
        dir.path(),
        n,
        GroupOptions {
            compute,
            auth: true,
            ..Default::default()
        },
    )
    .expect("start the group");
    (g, dir)
}

/// Submits the echo module through member `i` without waiting; returns the job id.
fn submit(g: &Group, i: usize, name: &str) -> String {
    let module = test_module("echo");
    let (ok, out, err) = g.cli(
        i,
        &[
            "wasm",
            "run",
            module.to_str().unwrap(),
            "--name",
            name,
            "--id-only",
            "--wait=false",
        ],
    );
    assert!(ok, "submit through {} failed: {err}", g.members[i].id);
    out.trim().to_string()
}

fn job_json(g: &Group, i: usize, id: &str) -> Option<Value> {
    let (ok, out, _) = g.cli(i, &["job", "describe", id, "--output", "json"]);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

fn wait_state(g: &Group, i: usize, id: &str, state: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(j) = job_json(g, i, id)
            && j["Job"]["State"]["StateType"] == state
        {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not {state} within {timeout:?} on {}: {:?}",
            g.members[i].id,
            job_json(g, i, id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn job_count(g: &Group, i: usize) -> usize {
    let (ok, out, err) = g.cli(i, &["job", "list", "--output", "json", "--limit", "1000"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["Items"].as_array().map(|a| a.len()).unwrap_or(0)
}

#[test]
fn any_member_serves_the_api_and_status_names_the_leader() {
    let (mut g, _d) = group(3, 1);
    let leader = g.wait_leader(Duration::from_secs(30)).unwrap();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    // A write through a follower is forwarded; a read through another follower sees it at once.
    let id = submit(&g, follower, "through-a-follower");
    assert!(
        job_json(&g, other, &id).is_some(),
        "read-your-writes across members"
    );
    let j = wait_state(&g, other, &id, "Completed", Duration::from_secs(60));
    assert_eq!(j["Job"]["Name"], "through-a-follower");

    let s = g.status(other).expect("status");
    assert_eq!(s["Leader"], g.members[leader].id.as_str(), "{s}");
    let members = s["Members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{s}");
    assert_eq!(
        members.iter().filter(|m| m["Role"] == "leader").count(),
        1,
        "{s}"
    );
    assert!(
        members
            .iter()
            .all(|m| m["Voter"] == true && m["Reachable"] == true),
        "{s}"
    );
    // The table names the leader too.
    let (ok, out, err) = g.cli(follower, &["cluster", "status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("leader") && err.contains(&g.members[leader].id),
        "{out}{err}"
    );
}

#[test]
fn killing_the_leader_elects_another_and_loses_nothing() {
    let (mut g, _d) = group(3, 0);
    let leader = g.wait_leader(Duration::from_secs(30)).unwrap();
    let ids: Vec<String> = (0..5)
        .map(|k| submit(&g, k % 3, &format!("before-{k}")))
        .collect();
    g.kill(leader);
    let killed_at = Instant::now();
    let new_leader = g.wait_leader(Duration::from_secs(30)).unwrap();
    assert_ne!(new_leader, leader);
    eprintln!(
        "new leader {} agreed {:?} after the kill",
        g.members[new_leader].id,
        killed_at.elapsed()
    );
    let survivor = (0..3).find(|i| *i != leader && *i != new_leader).unwrap();
    for id in &ids {
        assert!(job_json(&g, survivor, id).is_some(), "job {id} lost");
    }
    let after = submit(&g, survivor, "after-the-kill");
    // The old leader comes back as a follower and catches up.
    g.restart(leader).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while job_json(&g, leader, &after).is_none() {
        assert!(
            Instant::now() < deadline,
            "restarted member never caught up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(job_count(&g, leader), 6);
}

#[test]
fn a_member_is_added_and_another_removed_without_downtime() {
    let (mut g, _d) = group(3, 0);
    submit(&g, 0, "first");
    let j = g.start_joiner("orch-4", false).unwrap();
    let addr = format!("orch-4@127.0.0.1:{}", g.members[j].raft_port);
    let (ok, out, err) = g.cli(1, &["cluster", "add", &addr]);
    assert!(ok, "add failed: {err}");
    assert!(out.contains("orch-4"), "{out}");
    let s = g.status(0).unwrap();
    assert_eq!(s["Members"].as_array().unwrap().len(), 4, "{s}");
    // The newcomer has the state written before it joined.
    assert_eq!(job_count(&g, j), 1);
    // Adding it twice is refused with a reason.
    let (ok, _, err) = g.cli(0, &["cluster", "add", &addr]);
    assert!(!ok && err.contains("already a voting member"), "{err}");

    // Remove the current leader: the rest elect another and keep serving.
    let leader = g.wait_leader(Duration::from_secs(30)).unwrap();
    let asker = (0..4).find(|i| *i != leader).unwrap();
    let (ok, _, err) = g.cli(asker, &["cluster", "remove", &g.members[leader].id.clone()]);
    assert!(ok, "remove failed: {err}");
    g.kill(leader);
    let s = loop {
        let s = g.status(asker).unwrap();
        if s["Members"].as_array().unwrap().len() == 3 && !s["Leader"].as_str().unwrap().is_empty()
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        s["Members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["ID"] != g.members[leader].id.as_str()),
        "{s}"
    );
    submit(&g, asker, "after-the-change");
    assert_eq!(job_count(&g, asker), 2);
    let (ok, _, err) = g.cli(asker, &["cluster", "remove", "nobody"]);
    assert!(!ok && err.contains("no member named"), "{err}");
}

#[test]
fn the_last_voter_cannot_be_removed() {
    let (g, _d) = group(1, 0);
    let (ok, _, err) = g.cli(0, &["cluster", "remove", "orch-1"]);
    assert!(!ok, "removing the last voter must fail");
    assert!(err.contains("last voter"), "{err}");
}

#[test]
fn a_full_restart_keeps_every_job_and_a_lost_quorum_answers_503() {
    let (mut g, _d) = group(3, 0);
    let ids: Vec<String> = (0..4)
        .map(|k| submit(&g, k % 3, &format!("j{k}")))
        .collect();
    for i in 0..3 {
        g.kill(i);
    }
    for i in 0..3 {
        g.restart(i).unwrap();
    }
    g.wait_leader(Duration::from_secs(60)).unwrap();
    for id in &ids {
        assert!(
            job_json(&g, 2, id).is_some(),
            "job {id} lost in the restart"
        );
    }
    // Kill two of three: the survivor answers fast with 503 and Retry-After, never hangs.
    let leader = g.wait_leader(Duration::from_secs(30)).unwrap();
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            g.kill(i);
        }
    }
    let started = Instant::now();
    let (ok, _, err) = g.cli(survivor, &["job", "list"]);
    assert!(!ok, "a read without quorum must fail");
    assert!(err.contains("quorum") || err.contains("leader"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{}/api/v1/orchestrator/jobs", g.members[survivor].api());
    let (status, retry) = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = g.http_client().get(url).send().await.unwrap();
        (r.status().as_u16(), r.headers().get("retry-after").cloned())
    });
    assert_eq!(status, 503);
    assert!(retry.is_some(), "503 without Retry-After");
    // Stale reads are an explicit opt-in and still answer.
    let (ok, out, err) = g.cli(survivor, &["job", "list", "--output", "json", "--stale"]);
    assert!(ok, "stale read failed: {err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["Items"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn a_snapshot_saved_from_a_group_restores_into_a_new_one() {
    let (g, d) = group(3, 0);
    let ids: Vec<String> = (0..3).map(|k| submit(&g, k, &format!("s{k}"))).collect();
    let file = d.path().join("state.snap");
    let (ok, _, err) = g.cli(1, &["operator", "snapshot", "save", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let restored = d.path().join("restored");
    let o = std::process::Command::new(bin())
        .args([
            "operator",
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--node-id",
            "solo",
            "--data-dir",
            restored.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Restoring over an existing store is refused.
    let again = std::process::Command::new(bin())
        .args([
            "operator",
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--node-id",
            "solo",
            "--data-dir",
            restored.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let n = caravel_chaos_tests::NodeProcess::start_orchestrator(
        &bin(),
        &restored,
        &["--node-id", "solo"],
    )
    .expect("start the restored node");
    for id in &ids {
        let o = n.cli(&["job", "describe", id, "--output", "json"]).unwrap();
        assert!(o.status.success(), "job {id} missing after restore");
    }
}

#[test]
fn a_compute_only_node_runs_jobs_over_quic_and_survives_its_orchestrators_death() {
    let (mut g, _d) = group(3, 0);
    let mut edge = g.start_compute("edge-1").expect("start the compute node");
    let wait_connected = |g: &Group| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, _) = g.cli(
                g.leader().unwrap_or(1),
                &["node", "list", "--output", "json"],
            );
            if ok
                && out.contains("edge-1")
                && out.contains("CONNECTED")
                && !out.contains("DISCONNECTED")
            {
                return;
            }
            assert!(Instant::now() < deadline, "edge-1 never connected: {out}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_connected(&g);
    let id = submit(&g, 1, "over-quic");
    let j = wait_state(&g, 2, &id, "Completed", Duration::from_secs(60));
    assert_eq!(j["Job"]["Name"], "over-quic");
    // The node dials the first orchestrator in its list; kill it: the node moves to another.
    g.kill(0);
    g.wait_leader(Duration::from_secs(30)).unwrap();
    let id = submit(&g, 1, "after-failover");
    wait_state(&g, 2, &id, "Completed", Duration::from_secs(90));
    // Results come back through the session (the node accepts no inbound connection).
    let out = _d.path().join("got");
    let (ok, _, err) = g.cli(
        1,
        &["job", "get", &id, "--output-dir", out.to_str().unwrap()],
    );
    assert!(ok, "job get through the session failed: {err}");
    assert!(out.join("stdout").is_file());
    let _ = edge.kill();
    let _ = edge.wait();
}

/// Compute sessions held by member `i` (its `caravel_compute_sessions_connected` gauge).
fn sessions_held(g: &Group, i: usize) -> Option<u64> {
    metric(g, i, "caravel_compute_sessions_connected ").map(|v| v as u64)
}

/// The value of the first sample of member `i`'s `/metrics` whose line starts with `series`.
fn metric(g: &Group, i: usize, series: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", g.members[i].api_port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = g
        .bearer()
        .map(|b| format!("Authorization: {b}\r\n"))
        .unwrap_or_default();
    c.write_all(format!("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[test]
fn logs_and_results_reach_a_client_through_any_member_and_a_followed_log_survives_the_failover() {
    let (mut g, d) = group(3, 0);
    let mut edge = g.start_compute("edge-1").expect("start the compute node");
    // edge-1 dials the first member of its list first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sessions_held(&g, 0) != Some(1) {
        assert!(
            Instant::now() < deadline,
            "edge-1 never connected to orch-0"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let module = test_module("sleep");
    let (ok, out, err) = g.cli(
        2,
        &[
            "wasm",
            "run",
            "--name",
            "ticks",
            "--id-only",
            "--wait=false",
            module.to_str().unwrap(),
            "12",
        ],
    );
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    wait_state(&g, 2, &id, "Running", Duration::from_secs(60));
    // Follow the log through member 2, which does not hold the session (it relays from orch-0).
    let follower = std::process::Command::new(bin())
        .args(["job", "logs", "-f", &id])
        .env("CARAVEL_API_HOST", "127.0.0.1")
        .env("CARAVEL_API_PORT", g.members[2].api_port.to_string())
        .env("CARAVEL_API_KEY", g.api_key.as_deref().unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start job logs -f");
    std::thread::sleep(Duration::from_secs(3));
    // Kill the orchestrator holding the session mid-stream: the node moves to a survivor and the
    // followed log resumes at the offsets it had reached.
    g.kill(0);
    g.wait_leader(Duration::from_secs(30)).unwrap();
    let out = follower.wait_with_output().expect("job logs -f ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "job logs -f failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = vec!["sleeping 12 s".to_string()];
    want.extend((1..=12).map(|i| format!("tick {i}")));
    want.push("done".into());
    let got: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(got, want, "every line once, in order, across the failover");
    assert!(
        g.members[2]
            .log_text()
            .contains("log stream lost its node session"),
        "the stream was resumed, not served after the failover only"
    );
    println!(
        "checked: {} log lines through orch-2 across the death of orch-0, none lost or repeated",
        got.len()
    );
    wait_state(&g, 2, &id, "Completed", Duration::from_secs(90));
    // Results through a member that does not hold the session.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (holder, other) = loop {
        let held: Vec<Option<u64>> = (1..3).map(|i| sessions_held(&g, i)).collect();
        match held.as_slice() {
            [Some(1), Some(0)] => break (1, 2),
            [Some(0), Some(1)] => break (2, 1),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "edge-1 never reconnected: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let dir = d.path().join("results");
    let (ok, _, err) = g.cli(
        other,
        &["job", "get", &id, "--output-dir", dir.to_str().unwrap()],
    );
    assert!(
        ok,
        "job get through {} (session on {}): {err}",
        g.members[other].id, g.members[holder].id
    );
    let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap();
    assert!(stdout.contains("tick 12"), "{stdout}");
    let _ = edge.kill();
    let _ = edge.wait();
}

#[test]
fn the_cli_waits_out_a_cluster_without_a_leader_and_resends_only_what_was_not_applied() {
    let (mut g, _d) = group(3, 0);
    let leader = g.wait_leader(Duration::from_secs(60)).expect("a leader");
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    let other = (0..3).find(|i| *i != leader && *i != survivor).unwrap();
    g.kill(leader);
    g.kill(other);
    // Once the survivor knows it has no leader (before, it forwards to the dead one, whose
    // outcome it cannot know), a write through it is answered 503, not applied.
    let deadline = Instant::now() + Duration::from_secs(60);
    while g
        .status(survivor)
        .is_none_or(|s| s["Leader"].as_str().is_some_and(|l| !l.is_empty()))
    {
        assert!(
            Instant::now() < deadline,
            "the survivor still names a leader"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The survivor has no leader: a write through it is answered 503, not applied, and the CLI
    // sends it again once a leader is back.
    let module = test_module("echo");
    let mut cmd = std::process::Command::new(bin());
    cmd.args([
        "wasm",
        "run",
        module.to_str().unwrap(),
        "--name",
        "no-leader",
        "--id-only",
        "--wait=false",
    ])
    .env("CARAVEL_API_HOST", "127.0.0.1")
    .env("CARAVEL_API_PORT", g.members[survivor].api_port.to_string())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    if let Some(k) = &g.api_key {
        cmd.env("CARAVEL_API_KEY", k);
    }
    let child = cmd.spawn().expect("run the CLI");
    std::thread::sleep(Duration::from_secs(6));
    g.restart(leader).unwrap();
    g.restart(other).unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "the CLI gave up: {out}\n{err}");
    assert!(err.contains("no leader right now"), "{err}");
    let id = out.trim().to_string();
    g.wait_leader(Duration::from_secs(60)).unwrap();
    let j = job_json(&g, survivor, &id).expect("the job exists");
    assert_eq!(j["Job"]["Name"], "no-leader");
    assert_eq!(
        job_count(&g, survivor),
        1,
        "the write was applied once, not once per attempt"
    );
}

/// A submission forwarded to a leader that falls silent mid-call (SIGSTOP: its QUIC connection
/// still looks open) is abandoned once the survivors elect another leader and — a submission being
/// safe to apply twice — sent again to the new one: the client gets its job, applied once, and the
/// follower counts the resend. (Before, it waited out the forward's 5 s deadline and answered
/// "outcome unknown".)
#[test]
fn a_submission_forwarded_to_a_leader_that_falls_silent_is_resent_to_its_successor_and_applied_once()
 {
    let (mut g, _d) = group(3, 0);
    let leader = g.wait_leader(Duration::from_secs(60)).expect("a leader");
    let follower = (0..3).find(|i| *i != leader).unwrap();
    // The follower knows the leader and its connection to it is open.
    submit(&g, follower, "warm-up");
    let resent = r#"caravel_raft_unknown_outcome_writes_total{outcome="resent"}"#;
    let before = metric(&g, follower, resent).unwrap_or(0.0);
    g.pause(leader);
    let started = Instant::now();
    let id = submit(&g, follower, "through-a-silent-leader");
    let took = started.elapsed();
    g.resume(leader);
    eprintln!("answered after {took:?}");
    let j = job_json(&g, follower, &id).expect("the job exists");
    assert_eq!(j["Job"]["Name"], "through-a-silent-leader");
    assert_eq!(job_count(&g, follower), 2, "applied once");
    let after = metric(&g, follower, resent).unwrap_or(0.0);
    assert!(
        after > before,
        "the follower did not resend the abandoned forward ({before} → {after}):\n{}",
        g.members[follower].log_text()
    );
}
