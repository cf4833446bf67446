//! Job types with real processes: one orchestrator and compute-only nodes with different labels,
//! each a `caravel serve --compute` process on loopback. Ops jobs run on every node, a daemon
//! follows the fleet to a node started later, a service keeps its copies running through exits
//! and a killed node, a constrained job lands on the matching node only, a job lands on the node
//! that declares its input's data, a drain moves a service copy off a node and keeps new work away
//! until it ends.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use caravel_chaos_tests::cluster::{ComputeNode, Group, GroupOptions};
use serde_json::Value;

use crate::{bin, test_module};

/// A WASM job running the `sleep` test module for `secs` seconds.
fn spec(name: &str, header: &str, secs: u32) -> String {
    let module = std::fs::read(test_module("sleep")).expect("the sleep test module");
    let url = caravel_model::parse::data_url("application/wasm", &module);
    format!(
        "Name: {name}\n{header}Tasks:\n- Name: main\n  Engine:\n    Type: wasm\n    Params:\n      EntryModule: /m.wasm\n      Parameters: ['{secs}']\n  InputSources:\n  - Target: /m.wasm\n    Source: {{Type: inline, Params: {{URL: '{url}'}}}}\n"
    )
}

fn submit(g: &Group, dir: &std::path::Path, name: &str, text: &str) -> String {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    let (ok, out, err) = g.cli(
        0,
        &[
            "job",
            "run",
            file.to_str().unwrap(),
            "--id-only",
            "--wait=false",
        ],
    );
    assert!(ok, "submitting {name} failed: {err}");
    out.trim().to_string()
}

fn json(g: &Group, args: &[&str]) -> Option<Value> {
    let (ok, out, _) = g.cli(0, args);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

/// The job's executions: (node, compute state) of each.
fn executions(g: &Group, id: &str) -> Vec<(String, String)> {
    json(g, &["job", "executions", id, "--output", "json"])
        .and_then(|v| v["Items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["NodeID"].as_str().unwrap_or_default().to_string(),
                // Execution states travel as Bacalhau's numbers.
                serde_json::from_value::<caravel_model::ExecutionStateType>(
                    e["ComputeState"]["StateType"].clone(),
                )
                .map(|s| format!("{s:?}"))
                .unwrap_or_default(),
            )
        })
        .collect()
}

fn running_on(g: &Group, id: &str) -> BTreeSet<String> {
    executions(g, id)
        .into_iter()
        .filter(|(_, s)| s == "Running")
        .map(|(n, _)| n)
        .collect()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn connected(g: &Group) -> BTreeSet<String> {
    json(g, &["node", "list", "--output", "json"])
        .and_then(|v| v["Nodes"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|n| n["ConnectionState"]["Status"] == "CONNECTED")
        .filter(|n| n["Info"]["NodeType"] == "Compute")
        .filter_map(|n| n["Info"]["NodeID"].as_str().map(String::from))
        .collect()
}

fn names(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// A compute node in `zone` with room for eight executions at once: the daemon and the long
/// service copies hold slots for the whole test (the default is one per core, two here), and a
/// later job's execution would wait on the node for one.
fn start(g: &Group, id: &str, zone: &str, extra: &[&str]) -> ComputeNode {
    let labels = format!("Labels=zone={zone}");
    // A heartbeat a second: the orchestrator's 3 s disconnect timeout (below) then means three
    // missed beats, not a node marked DISCONNECTED between two 5 s beats of its default.
    let mut args = vec![
        "-c",
        &labels,
        "-c",
        "Compute.MaxConcurrent=8",
        "-c",
        "Compute.HeartbeatSecs=1",
    ];
    args.extend_from_slice(extra);
    g.start_compute_proxied(id, &args)
        .unwrap_or_else(|e| panic!("start {id}: {e}"))
}

#[test]
fn every_job_type_follows_its_semantics_across_real_compute_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = Group::start(
        &bin(),
        dir.path(),
        1,
        GroupOptions {
            // A killed node is DISCONNECTED after 3 s without a heartbeat.
            extra: vec!["-c".into(), "Orchestrator.DisconnectTimeoutSecs=3".into()],
            ..Default::default()
        },
    )
    .expect("start the orchestrator");
    g.wait_leader(Duration::from_secs(60)).expect("a leader");
    // Every node may read the data directory; edge-c declares it holds it (data locality).
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in.txt"), "near\n").unwrap();
    let readable = format!("Compute.AllowListedLocalPaths={}:ro", data.display());
    let declared = format!("Compute.Data={}", data.display());
    let mut procs = std::collections::BTreeMap::new();
    for (id, zone, extra) in [
        ("edge-a", "north", vec!["-c", readable.as_str()]),
        ("edge-b", "south", vec!["-c", readable.as_str()]),
        (
            "edge-c",
            "south",
            vec!["-c", readable.as_str(), "-c", declared.as_str()],
        ),
    ] {
        procs.insert(id.to_string(), start(&g, id, zone, &extra));
    }
    wait_until(
        "three compute nodes connected",
        Duration::from_secs(60),
        || (connected(&g) == names(&["edge-a", "edge-b", "edge-c"])).then_some(()),
    );

    // An ops job runs once on every node and completes.
    let ops = submit(&g, dir.path(), "ops", &spec("ops", "Type: ops\n", 1));
    wait_until("the ops job completed", Duration::from_secs(90), || {
        let e = executions(&g, &ops);
        (e.len() == 3 && e.iter().all(|(_, s)| s == "Completed")).then_some(())
    });
    let nodes: BTreeSet<String> = executions(&g, &ops).into_iter().map(|(n, _)| n).collect();
    assert_eq!(nodes, names(&["edge-a", "edge-b", "edge-c"]));

    // A constrained batch job lands on the one matching node.
    let header = "Type: batch\nConstraints:\n- {Key: zone, Operator: '=', Values: [north]}\n";
    let north = submit(&g, dir.path(), "north", &spec("north", header, 1));
    let e = wait_until(
        "the constrained job completed",
        Duration::from_secs(90),
        || {
            let e = executions(&g, &north);
            e.iter().any(|(_, s)| s == "Completed").then_some(e)
        },
    );
    assert!(e.iter().all(|(n, _)| n == "edge-a"), "{e:?}");

    // A job whose input is in the data edge-c declares lands there, and its history says why.
    let input = format!(
        "  - Target: /in.txt\n    Source: {{Type: local, Params: {{SourcePath: {}}}}}\n",
        data.join("in.txt").display()
    );
    let near = submit(
        &g,
        dir.path(),
        "near",
        &(spec("near", "Type: batch\n", 1) + &input),
    );
    let e = wait_until(
        "the job near its data completed",
        Duration::from_secs(90),
        || {
            let e = executions(&g, &near);
            e.iter().any(|(_, s)| s == "Completed").then_some(e)
        },
    );
    assert!(e.iter().all(|(n, _)| n == "edge-c"), "{e:?}");
    let (_, history, _) = g.cli(0, &["job", "history", &near]);
    assert!(history.contains("for data locality: it holds"), "{history}");

    // A daemon on the south zone: both south nodes, then a fourth node started later.
    let header = "Type: daemon\nConstraints:\n- {Key: zone, Operator: '=', Values: [south]}\n";
    let daemon = submit(&g, dir.path(), "daemon", &spec("daemon", header, 3600));
    wait_until(
        "the daemon on both south nodes",
        Duration::from_secs(90),
        || (running_on(&g, &daemon) == names(&["edge-b", "edge-c"])).then_some(()),
    );
    procs.insert("edge-d".to_string(), start(&g, "edge-d", "south", &[]));
    wait_until(
        "the daemon on the late joiner",
        Duration::from_secs(90),
        || (running_on(&g, &daemon) == names(&["edge-b", "edge-c", "edge-d"])).then_some(()),
    );

    // A service of two copies whose task exits after 2 s: each copy is restarted when it exits.
    let svc = submit(
        &g,
        dir.path(),
        "restarts",
        &spec("restarts", "Type: service\nCount: 2\n", 2),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e = executions(&g, &svc);
        let exited = e.iter().filter(|(_, s)| s == "Completed").count();
        // Copies that run 2 s and wait 1 s, 2 s, 4 s… between runs are seldom both up at once:
        // what shows the restarts is more executions than copies, after exits.
        if exited >= 2 && e.len() >= 4 {
            break;
        }
        if Instant::now() > deadline {
            let (_, history, _) = g.cli(0, &["job", "history", &svc]);
            panic!("copies not restarted after exiting within 120 s: {e:?}\n{history}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let job = json(&g, &["job", "describe", &svc, "--output", "json"]).unwrap();
    assert_eq!(job["Job"]["State"]["StateType"], "Running", "{job}");
    let (ok, out, err) = g.cli(0, &["job", "stop", &svc]);
    assert!(ok, "{out}{err}");

    // A service of two long-running copies: the copy on a killed node is replaced elsewhere (no
    // grace period). The node killed is not edge-a, the only north node.
    let header = "Type: service\nCount: 2\nMeta: {caravel.io/disconnect-grace: 0s}\n";
    let svc = submit(&g, dir.path(), "svc", &spec("svc", header, 3600));
    let victim = wait_until(
        "two copies, one off edge-a",
        Duration::from_secs(120),
        || {
            let r = running_on(&g, &svc);
            if r.len() == 2 {
                r.into_iter().find(|n| n != "edge-a")
            } else {
                None
            }
        },
    );
    procs.get_mut(&victim).unwrap().kill();
    wait_until(
        "the killed node marked disconnected",
        Duration::from_secs(60),
        || (!connected(&g).contains(&victim)).then_some(()),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = running_on(&g, &svc);
        if r.len() == 2 && !r.contains(&victim) {
            break;
        }
        if Instant::now() > deadline {
            let (_, history, _) = g.cli(0, &["job", "history", &svc]);
            let (_, nodes, _) = g.cli(0, &["node", "list"]);
            panic!(
                "two copies running without the killed node {victim} within 120 s: {:?}\n{history}\n{nodes}",
                executions(&g, &svc)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, out, err) = g.cli(0, &["job", "stop", &svc]);
    assert!(ok, "{out}{err}");

    // A drain: the service copy on the drained node moves, a daemon's copy stays, nothing new
    // lands there, `node list` says so; ending the drain lets work back.
    let moved = submit(
        &g,
        dir.path(),
        "moved",
        &spec("moved", "Type: service\nCount: 1\n", 3600),
    );
    let drained = wait_until("the copy to move running", Duration::from_secs(120), || {
        let r = running_on(&g, &moved);
        (r.len() == 1).then(|| r.into_iter().next().unwrap())
    });
    let (ok, out, err) = g.cli(
        0,
        &["node", "drain", &drained, "--deadline", "10m", "-m", "test"],
    );
    assert!(ok, "{out}{err}");
    assert!(err.contains("is draining"), "{err}");
    wait_until(
        "the service copy moved off the drained node",
        Duration::from_secs(120),
        || {
            let r = running_on(&g, &moved);
            (r.len() == 1 && !r.contains(&drained)).then_some(())
        },
    );
    let (_, table, _) = g.cli(0, &["node", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&drained) && l.contains("(draining)")),
        "{table}"
    );
    if ["edge-b", "edge-c", "edge-d"].contains(&drained.as_str()) {
        assert!(
            running_on(&g, &daemon).contains(&drained),
            "the daemon's copy stays on the drained node"
        );
    }
    let ops = submit(&g, dir.path(), "ops2", &spec("ops2", "Type: ops\n", 1));
    let e = wait_until(
        "the second ops job completed",
        Duration::from_secs(90),
        || {
            let e = executions(&g, &ops);
            (!e.is_empty() && e.iter().all(|(_, s)| s == "Completed")).then_some(e)
        },
    );
    assert!(
        e.iter().all(|(n, _)| *n != drained && *n != victim),
        "nothing new on the drained node: {e:?}"
    );
    let (ok, out, err) = g.cli(0, &["node", "drain", "--disable", &drained]);
    assert!(ok, "{out}{err}");
    let (_, table, _) = g.cli(0, &["node", "list"]);
    assert!(!table.contains("(draining)"), "{table}");
    let (ok, out, err) = g.cli(0, &["job", "stop", &moved]);
    assert!(ok, "{out}{err}");
    g.shutdown();
}
