//! Compute reports through a real orchestrator process and a real QUIC session: how a node's
//! reports become Raft entries and acknowledgements.

use std::collections::HashSet;
use std::time::Duration;

use caravel_chaos_tests::cluster::{Group, GroupOptions};
use caravel_model::execution::ExecutionUpdate;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use serde_json::json;

use crate::abuse::{metric_sum, put_job, rt, session_client, wait_until};
use crate::bin;

/// A node that can take every execution of the test's job (labelled `name=burst`).
fn burst_node() -> caravel_model::node::NodeInfo {
    use caravel_model::execution::Resources;
    use caravel_model::node::{BuildVersionInfo, ComputeNodeInfo, NodeInfo};
    let capacity = Resources {
        cpu: 64.0,
        memory: 64 << 30,
        disk: 1 << 40,
        gpu: 0,
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    NodeInfo {
        node_id: "burst".into(),
        node_type: "Compute".into(),
        labels: [("name".to_string(), "burst".to_string())].into(),
        compute_node_info: ComputeNodeInfo {
            execution_engines: s(&["wasm"]),
            publishers: s(&["noop", "local"]),
            storage_sources: s(&["inline"]),
            max_capacity: capacity.clone(),
            available_capacity: capacity.clone(),
            max_job_requirements: capacity,
            ..ComputeNodeInfo::default()
        },
        bacalhau_version: BuildVersionInfo::current(),
        ..NodeInfo::default()
    }
}

/// The reports a node sends together are committed together, in its order: a burst of Running
/// then Completed for each of 40 executions is applied in full (none taken for a duplicate, which
/// a later report committed before an earlier one would make it), in fewer Raft entries than
/// reports, and acknowledged up to its last report.
#[test]
fn a_burst_of_one_nodes_reports_is_committed_in_order_in_shared_entries() {
    const EXECUTIONS: usize = 40;
    const REPORTS: u64 = 2 * EXECUTIONS as u64;
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(
        &bin(),
        dir.path(),
        1,
        GroupOptions {
            auth: true,
            ..Default::default()
        },
    )
    .unwrap();
    let leader = g.wait_leader(Duration::from_secs(60)).unwrap();
    let rt = rt();
    let stop = tokio_util::sync::CancellationToken::new();
    let client = session_client(&g, leader, "burst");
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let s2 = stop.clone();
    rt.spawn(async move {
        let _ = client
            .run(s2, move |mut end, _connected| {
                let acked_tx = acked_tx.clone();
                Box::pin(async move {
                    let hello = ToOrchestrator::Hello {
                        info: Box::new(burst_node()),
                        last_seq: 0,
                    };
                    if end.outbox.send(hello).await.is_err() {
                        return;
                    }
                    let mut held = Vec::new();
                    let mut seen = HashSet::new();
                    while let Some(m) = end.inbox.recv().await {
                        match m {
                            ToCompute::Run { execution, .. }
                                if seen.insert(execution.id.clone()) =>
                            {
                                held.push(execution.id);
                                if held.len() < EXECUTIONS {
                                    continue;
                                }
                                // Every execution is here: all their reports at once.
                                let states = [
                                    caravel_model::ExecutionStateType::Running,
                                    caravel_model::ExecutionStateType::Completed,
                                ];
                                let mut seq = 0;
                                for state in states {
                                    for id in &held {
                                        seq += 1;
                                        let update = ExecutionUpdate {
                                            execution_id: id.clone(),
                                            state,
                                            message: String::new(),
                                            run_output: None,
                                            published_result: None,
                                            topic: String::new(),
                                            time: seq as i64,
                                        };
                                        let r = ToOrchestrator::Report { seq, update };
                                        if end.outbox.send(r).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                            ToCompute::Ack { seq } => {
                                let _ = acked_tx.send(seq);
                            }
                            _ => {}
                        }
                    }
                })
            })
            .await;
    });
    let http = g.http_client();
    let api = g.members[leader].api();
    wait_until("the node registered", Duration::from_secs(60), || {
        let (ok, out, _) = g.cli(leader, &["node", "list", "--output", "json"]);
        ok && out.contains("burst")
    });
    let scrape = || {
        let text = rt.block_on(async {
            http.get(format!("{api}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        let m = |name: &str, labels: &str| metric_sum(&text, name, labels);
        (
            m("caravel_compute_reports_total", "outcome=\"applied\""),
            m("caravel_compute_reports_total", "outcome=\"duplicate\""),
            m("caravel_compute_report_batch_reports_count", ""),
            m("caravel_compute_report_batch_reports_sum", ""),
        )
    };
    let before = scrape();
    let job = json!({"Name": "burst", "Type": "batch", "Count": EXECUTIONS,
        "Constraints": [{"Key": "name", "Operator": "=", "Values": ["burst"]}],
        "Tasks": [{"Name": "main",
            "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
            "InputSources": [{"Target": "/m.wasm", "Source": {"Type": "inline",
                "Params": {"URL": "data:application/wasm;base64,AGFzbQEAAAA="}}}],
            "Resources": {"CPU": "100m", "Memory": "64Mi"}}]});
    let (status, body) = rt.block_on(put_job(&http, &api, &job));
    assert_eq!(status, 200, "{body}");
    let job_id = body["JobID"].as_str().unwrap().to_string();
    let acks = rt.block_on(async {
        let mut acks = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while acks.last().is_none_or(|&a| a < REPORTS) {
            match tokio::time::timeout_at(deadline, acked_rx.recv()).await {
                Ok(Some(seq)) => acks.push(seq),
                other => panic!("the reports were not acknowledged: {other:?} after {acks:?}"),
            }
        }
        acks
    });
    let after = scrape();
    stop.cancel();
    eprintln!("acknowledgements: {acks:?}; metrics before {before:?}, after {after:?}");
    assert!(
        acks.windows(2).all(|w| w[0] <= w[1]),
        "acknowledgements go back: {acks:?}"
    );
    assert_eq!(after.0 - before.0, REPORTS as f64, "every report applied");
    assert_eq!(after.1 - before.1, 0.0, "no report taken for a duplicate");
    assert_eq!(after.3 - before.3, REPORTS as f64, "reports written");
    let entries = after.2 - before.2;
    assert!(
        entries < REPORTS as f64,
        "{REPORTS} reports sent together took {entries} Raft entries"
    );
    wait_until("the job Completed", Duration::from_secs(60), || {
        let (ok, out, _) = g.cli(leader, &["job", "describe", &job_id, "--output", "json"]);
        ok && serde_json::from_str::<serde_json::Value>(&out)
            .is_ok_and(|v| v["Job"]["State"]["StateType"] == "Completed")
    });
    g.shutdown();
}
