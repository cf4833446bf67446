//! The user's path through the CLI: submit, follow, describe, logs, get, stop.

use std::time::{Duration, Instant};

use crate::{describe, node, repo, run, test_module};

pub fn job_id(stderr: &str, stdout: &str) -> String {
    let all = format!("{stdout}\n{stderr}");
    all.split_whitespace()
        .find(|w| w.starts_with("j-"))
        .map(|w| w.trim_end_matches('.').to_string())
        .unwrap_or_else(|| panic!("no job id in:\n{all}"))
}

#[test]
fn the_wordcount_example_runs_from_yaml_and_its_results_download() {
    let (n, dir) = node();
    let started = Instant::now();
    let (ok, out, err) = run(
        &n,
        &["job", "run", "examples/wordcount.yaml"],
        Some(&repo()),
    );
    assert!(ok, "job run failed:\n{out}\n{err}\n{}", n.log_text());
    eprintln!("job run → Completed in {:?}", started.elapsed());
    let id = job_id(&err, &out);
    assert!(err.contains("completed"), "{err}");
    assert!(
        err.contains(&format!("caravel job get {id}")),
        "prints the follow-up commands: {err}"
    );

    let d = describe(&n, &id);
    assert_eq!(d["Job"]["State"]["StateType"], "Completed");
    let exec = &d["Executions"]["Items"][0];
    assert_eq!(
        exec["ComputeState"]["StateType"], 9,
        "execution states are integers on the wire"
    );
    let stdout = exec["RunOutput"]["Stdout"].as_str().unwrap();
    assert!(stdout.contains("the"), "{stdout}");

    let out_dir = dir.path().join("results");
    let (ok, _, err) = run(
        &n,
        &["job", "get", &id, "--output-dir", out_dir.to_str().unwrap()],
        None,
    );
    assert!(ok, "job get failed: {err}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("exitCode"))
            .unwrap()
            .trim(),
        "0"
    );
    let stdout = std::fs::read_to_string(out_dir.join("stdout")).unwrap();
    // The text has 354 words; "the" is its most frequent word, 23 times.
    let first = stdout.lines().nth(1).unwrap();
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        vec!["23", "the"],
        "{stdout}"
    );
    let counts = std::fs::read_to_string(out_dir.join("counts/counts.tsv")).unwrap();
    assert!(counts.lines().any(|l| l == "government\t4"), "{counts}");

    let (ok, logs, _) = run(&n, &["job", "logs", &id], None);
    assert!(ok && logs.contains("the"), "{logs}");
    let (ok, hist, _) = run(&n, &["job", "history", &id], None);
    assert!(
        ok && hist.contains("Job submitted") && hist.contains("Completed"),
        "{hist}"
    );
    let (ok, list, _) = run(&n, &["job", "list"], None);
    assert!(
        ok && list.contains("wordcount") && list.contains("Completed"),
        "{list}"
    );
}

#[test]
fn wasm_run_passes_args_and_env_and_sends_a_local_module_inline() {
    let (n, _dir) = node();
    let m = test_module("echo");
    let (ok, out, err) = run(
        &n,
        &[
            "wasm",
            "run",
            m.to_str().unwrap(),
            "-e",
            "GREETING=hello",
            "--id-only",
            "--",
            "alpha",
            "beta gamma",
        ],
        None,
    );
    assert!(ok, "{out}\n{err}");
    let id = out.trim().to_string();
    let d = describe(&n, &id);
    assert_eq!(d["Job"]["State"]["StateType"], "Completed", "{d}");
    let stdout = d["Executions"]["Items"][0]["RunOutput"]["Stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        stdout.contains("alpha") && stdout.contains("beta gamma"),
        "{stdout}"
    );
    assert!(stdout.contains("GREETING=hello"), "{stdout}");
}

fn failed_with(args: &[&str], want: &str) {
    let (n, _dir) = node();
    let (ok, out, err) = run(&n, args, None);
    assert!(!ok, "a failing job exits non-zero: {out}\n{err}");
    let id = job_id(&err, &out);
    let d = describe(&n, &id);
    assert_eq!(d["Job"]["State"]["StateType"], "Failed", "{d}");
    let msg = d["Job"]["State"]["Message"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        msg.contains(want),
        "job message {msg:?} should say {want:?}"
    );
    assert!(err.to_lowercase().contains(want), "the CLI says why: {err}");
}

#[test]
fn a_trapping_module_fails_with_the_trap() {
    failed_with(
        &["wasm", "run", test_module("trap").to_str().unwrap()],
        "trap",
    );
}

#[test]
fn an_endless_loop_fails_by_its_timeout() {
    failed_with(
        &[
            "wasm",
            "run",
            "--timeout",
            "2",
            test_module("spin").to_str().unwrap(),
        ],
        "timed out",
    );
}

#[test]
fn a_memory_hog_fails_by_its_memory_limit() {
    failed_with(
        &[
            "wasm",
            "run",
            "--memory",
            "64Mb",
            test_module("hog").to_str().unwrap(),
        ],
        "memory limit",
    );
}

#[test]
fn stopping_a_running_job_stops_it() {
    let (n, _dir) = node();
    let (ok, out, err) = run(
        &n,
        &[
            "wasm",
            "run",
            "--wait=false",
            "--id-only",
            test_module("spin").to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = describe(&n, &id);
        if d["Job"]["State"]["StateType"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "never ran: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, _, err) = run(&n, &["job", "stop", &id], None);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = describe(&n, &id);
        let exec = &d["Executions"]["Items"][0];
        if d["Job"]["State"]["StateType"] == "Stopped" && exec["ComputeState"]["StateType"] == 11 {
            break;
        }
        assert!(Instant::now() < deadline, "not stopped: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, _, err) = run(&n, &["job", "stop", &id], None);
    assert!(ok, "stopping a stopped job is fine: {err}");
}

#[test]
fn a_restarted_node_keeps_every_job_execution_and_event() {
    let (mut n, _dir) = node();
    let (ok, out, err) = run(
        &n,
        &[
            "wasm",
            "run",
            "--id-only",
            test_module("echo").to_str().unwrap(),
            "--",
            "persist",
        ],
        None,
    );
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    let before = describe(&n, &id);
    n.restart().expect("restart");
    let after = describe(&n, &id);
    assert_eq!(before["Job"], after["Job"]);
    assert_eq!(before["Executions"], after["Executions"]);
    assert_eq!(before["History"], after["History"]);
    // And it keeps working.
    let (ok, _, err) = run(
        &n,
        &["wasm", "run", test_module("echo").to_str().unwrap()],
        None,
    );
    assert!(ok, "{err}");
}
