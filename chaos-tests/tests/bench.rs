//! Short smoke runs of the benchmarks CI can afford (the figures in docs/benchmarks.md are
//! measured by hand with release builds): the command works end to end and prints the fields
//! scripts read. Nothing here asserts a timing.

use std::process::Command;

use serde_json::Value;

/// Runs `caravel-bench --output json ARGS`; its JSON and its stderr (the progress lines).
fn bench_json(args: &[&str]) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_caravel-bench"))
        .args(["--output", "json"])
        .args(args)
        .output()
        .expect("run caravel-bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "caravel-bench failed:\n{stderr}");
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    (v, stderr)
}

#[test]
fn the_schedule_bench_places_every_partition_and_prints_its_figures_as_json() {
    let (v, stderr) = bench_json(&[
        "schedule",
        "--nodes",
        "20",
        "--jobs",
        "60",
        "--count",
        "2",
        "--clients",
        "4",
        "--timeout-secs",
        "300",
    ]);
    assert_eq!(v["nodes"], 20, "{v}");
    assert_eq!(v["nodes_connected"], 20, "{v}");
    assert_eq!(
        v["placements"], 120,
        "every partition reached a node: {v}\n{stderr}"
    );
    assert_eq!(v["submit_errors"], 0, "{v}");
    assert_eq!(v["stray_runs"], 0, "no execution twice, none unknown: {v}");
    assert_eq!(v["timed_out"], false, "{v}");
    for k in [
        "placements_per_second",
        "p50_ms",
        "p99_ms",
        "orch_cpu_pct",
        "orch_rss_end_mib",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
}

#[test]
fn the_reports_bench_commits_every_held_report_and_prints_its_figures_as_json() {
    let (v, stderr) = bench_json(&[
        "reports",
        "--nodes",
        "20",
        "--per-node",
        "5",
        "--timeout-secs",
        "300",
    ]);
    assert_eq!(v["nodes_connected"], 20, "{v}");
    assert_eq!(v["executions"], 100, "{v}");
    assert_eq!(v["reports"], 200, "Running and Completed for each: {v}");
    assert_eq!(
        v["timed_out"], false,
        "every report was applied: {v}\n{stderr}"
    );
    assert_eq!(v["jobs_completed"], v["jobs"], "{v}");
    assert!(v["nodes_reporting"].as_u64().is_some_and(|n| n >= 1), "{v}");
    for k in [
        "reports_per_second",
        "secs",
        "orch_cpu_pct",
        "orch_rss_end_mib",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
}
