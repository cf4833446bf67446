//! The node runtime end to end over channels: reports, layout, publishing, logs, results,
//! cancellation, concurrency, idempotency, acks, shutdown.

use std::io::{Read, Write};
use std::time::Duration;

use caravel_compute::node::RESULT_CHUNK_BYTES;
use caravel_model::ExecutionStateType::{self, *};
use caravel_model::execution::RUN_OUTPUT_PREVIEW;
use caravel_model::history::topic;
use caravel_model::parse::inline_input;
use caravel_model::spec::SpecConfig;
use caravel_model::wire::{ToCompute, ToOrchestrator};

use crate::support::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn echo_runs_with_args_env_inputs_and_outputs_and_publishes_locally() {
    install_crypto();
    let base = http_server(b"from http").await;
    let mut h = start(|o, dir| {
        std::fs::create_dir_all(dir.join("data-in")).unwrap();
        std::fs::write(dir.join("data-in/local.txt"), b"from local").unwrap();
        o.allow_listed_local_paths = vec![dir.join("data-in").display().to_string()];
    })
    .await;
    assert_eq!(h.hello.node_type, "Compute");
    assert_eq!(h.hello.compute_node_info.execution_engines, vec!["wasm"]);
    assert_eq!(
        h.hello.compute_node_info.publishers,
        vec!["local", "noop", "s3"]
    );
    assert_eq!(
        h.hello.compute_node_info.storage_sources,
        vec![
            "inline",
            "local",
            "localDirectory",
            "urlDownload",
            "s3",
            "s3PreSigned"
        ]
    );
    assert!(
        h.hello.compute_node_info.max_capacity.cpu >= 1.0
            && h.hello.compute_node_info.max_capacity.memory > 0
    );
    assert_eq!(h.hello.labels["name"], "node-1");
    assert!(h.hello.labels.contains_key("os_type") && h.hello.labels.contains_key("os_arch"));

    let mut task = with_outputs(wasm_task("echo", &["a", "b c", "--many-lines"]));
    task.env.insert("GREETING".into(), "hi".into());
    task.engine = task.engine.with(
        "EnvironmentVariables",
        serde_json::json!(["FROM_PARAMS=yes"]),
    );
    task.input_sources.push(inline_input(
        "/inputs/text.txt",
        "text/plain",
        b"hello text",
    ));
    task.input_sources.push(inline_input(
        "/inputs/b.txt",
        "application/gzip",
        &gzip(b"gzipped hello"),
    ));
    task.input_sources.push(input(
        "urlDownload",
        "/inputs/http.txt",
        &[("URL", format!("{base}/data.txt").into())],
    ));
    let local = h.dir.path().join("data-in/local.txt").display().to_string();
    task.input_sources.push(input(
        "local",
        "/inputs/local.txt",
        &[("SourcePath", local.into())],
    ));

    let reports = h.run("e-echo", task).await;
    assert_eq!(
        states(&reports),
        vec![BidAccepted, Running, Publishing, Completed]
    );
    assert_eq!(
        reports.iter().map(|u| u.topic.as_str()).collect::<Vec<_>>(),
        vec![
            topic::EXECUTION,
            topic::RUNNING,
            topic::PUBLISHING,
            topic::EXECUTION
        ]
    );
    assert!(reports.windows(2).all(|w| w[0].time <= w[1].time) && reports[0].time > 0);
    let done = last(&reports);
    let out = done.run_output.clone().expect("RunOutput on completion");
    assert_eq!(out.exit_code, 0);
    assert!(
        out.stdout
            .starts_with("args: main.wasm a b c --many-lines\n"),
        "{}",
        out.stdout
    );
    for want in [
        "env GREETING=hi",
        "env FROM_PARAMS=yes",
        "env BACALHAU_EXECUTION_ID=e-echo",
        "env BACALHAU_JOB_ID=j-e-echo",
        "input /inputs/b.txt: gzipped hello",
        "input /inputs/http.txt: from http",
        "input /inputs/local.txt: from local",
        "input /inputs/text.txt: hello text",
    ] {
        assert!(
            out.stdout.contains(want),
            "stdout lacks {want:?}:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout_truncated && out.stdout.len() <= RUN_OUTPUT_PREVIEW,
        "a long stdout is truncated to the preview"
    );
    assert_eq!(out.stderr, "to stderr\n");
    assert!(!out.stderr_truncated);
    let published = done.published_result.clone().expect("published result");
    assert_eq!(
        published,
        SpecConfig::new("local")
            .with("ExecutionID", "e-echo")
            .with("NodeID", "node-1")
    );

    // Result layout.
    let paths = h.node.execution_paths("e-echo");
    let stdout = std::fs::read_to_string(paths.stdout()).unwrap();
    assert!(
        stdout.contains("inputs are read-only"),
        "inputs are mounted read-only:\n{stdout}"
    );
    assert!(stdout.contains("line 499\n"));
    assert_eq!(
        std::fs::read_to_string(paths.stderr()).unwrap(),
        "to stderr\n"
    );
    assert_eq!(std::fs::read_to_string(paths.exit_code()).unwrap(), "0");
    assert!(
        std::fs::read_to_string(paths.result_dir("outputs").join("result.txt"))
            .unwrap()
            .starts_with("echo wrote this")
    );
    assert!(paths.archive.exists());
    assert!(
        !paths.inputs.exists() && !paths.scratch.exists(),
        "prepared inputs are cleaned up"
    );

    // Logs of a finished execution: every line, stdout then stderr, then the end.
    h.send(ToCompute::Logs {
        request_id: 7,
        execution_id: "e-echo".into(),
        follow: false,
        tail: false,
    })
    .await;
    let msgs = h.stream(7).await;
    let lines: Vec<(u8, String)> = msgs
        .iter()
        .filter_map(|m| match m {
            ToOrchestrator::LogLine { stream, line, .. } => Some((*stream, line.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines[0],
        (1, "args: main.wasm a b c --many-lines".to_string())
    );
    assert!(lines.contains(&(1, "line 499".to_string())));
    assert_eq!(lines.last().unwrap(), &(2, "to stderr".to_string()));
    assert!(matches!(msgs.last(), Some(ToOrchestrator::LogEnd { error, .. }) if error.is_empty()));

    // Tail: only the last lines.
    h.send(ToCompute::Logs {
        request_id: 8,
        execution_id: "e-echo".into(),
        follow: false,
        tail: true,
    })
    .await;
    let n = h
        .stream(8)
        .await
        .iter()
        .filter(|m| matches!(m, ToOrchestrator::LogLine { stream: 1, .. }))
        .count();
    assert_eq!(n, caravel_compute::node::LOG_TAIL_LINES);

    // Results: chunks then the end; a valid tar.gz with the layout.
    h.send(ToCompute::FetchResult {
        request_id: 9,
        execution_id: "e-echo".into(),
    })
    .await;
    let msgs = h.stream(9).await;
    let mut archive = Vec::new();
    for m in &msgs {
        if let ToOrchestrator::ResultChunk { data, .. } = m {
            assert!(data.len() <= RESULT_CHUNK_BYTES);
            archive.extend_from_slice(data);
        }
    }
    assert!(
        matches!(msgs.last(), Some(ToOrchestrator::ResultEnd { error, .. }) if error.is_empty())
    );
    let mut names = Vec::new();
    let mut exit_code = String::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        if name == "exitCode" {
            e.read_to_string(&mut exit_code).unwrap();
        }
        names.push(name);
    }
    for want in ["stdout", "stderr", "exitCode", "outputs/result.txt"] {
        assert!(
            names.iter().any(|n| n.trim_end_matches('/') == want),
            "{want} in {names:?}"
        );
    }
    assert_eq!(exit_code, "0");

    // Missing results are a clean error.
    h.send(ToCompute::FetchResult {
        request_id: 10,
        execution_id: "e-unknown".into(),
    })
    .await;
    assert!(
        matches!(h.stream(10).await.last(), Some(ToOrchestrator::ResultEnd { error, .. }) if error.contains("no published results"))
    );
    h.send(ToCompute::Logs {
        request_id: 11,
        execution_id: "e-unknown".into(),
        follow: true,
        tail: false,
    })
    .await;
    assert!(
        matches!(h.stream(11).await.last(), Some(ToOrchestrator::LogEnd { error, .. }) if error.contains("not known"))
    );

    // Run is idempotent on the execution id; acks empty the outbox.
    let (seq, pending) = h.node.outbox_status();
    assert_eq!((seq, pending), (4, 4));
    h.send(run_msg("e-echo", wasm_task("echo", &[]))).await;
    h.send(ToCompute::Ack { seq: 3 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.node.outbox_status(),
        (4, 1),
        "no new reports for a repeated Run; acked ones dropped"
    );
    h.send(ToCompute::Ack { seq: 4 }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.node.outbox_status(), (4, 0));
}

#[tokio::test]
async fn exit_codes_traps_timeouts_and_memory_limits() {
    let mut h = start(|_, _| {}).await;
    let r = h.run("e-exit3", wasm_task("exit3", &[])).await;
    assert_eq!(
        states(&r),
        vec![BidAccepted, Running, Publishing, Completed],
        "a non-zero exit code completes"
    );
    let d = last(&r);
    assert_eq!(d.run_output.as_ref().unwrap().exit_code, 3);
    assert_eq!(d.message, "exited with code 3");
    assert_eq!(
        std::fs::read_to_string(h.node.execution_paths("e-exit3").exit_code()).unwrap(),
        "3"
    );

    let r = h.run("e-trap", wasm_task("trap", &[])).await;
    assert_eq!(states(&r), vec![BidAccepted, Running, Failed]);
    let d = last(&r);
    assert!(
        d.message.starts_with("trap: ") && d.message.contains("unreachable"),
        "{}",
        d.message
    );
    let out = d.run_output.as_ref().unwrap();
    assert_eq!(out.error_msg, d.message);
    assert_eq!(
        out.stdout, "about to trap\n",
        "the output before the trap is kept"
    );

    let mut spin = wasm_task("spin", &[]);
    spin.timeouts.execution_timeout = 2;
    let t = std::time::Instant::now();
    let r = h.run("e-spin-timeout", spin).await;
    assert_eq!(states(&r), vec![BidAccepted, Running, Failed]);
    assert_eq!(last(&r).message, "execution timed out after 2 s");
    assert!(
        t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );

    let mut hog = wasm_task("hog", &[]);
    hog.resources.memory = "64Mi".into();
    let r = h.run("e-hog", hog).await;
    assert_eq!(states(&r), vec![BidAccepted, Running, Failed]);
    assert_eq!(last(&r).message, "memory limit of 64.0 MiB exceeded");
}

/// `Resources.Disk` holds at run time: a task that keeps writing to its result path is stopped once
/// it has written past its limit and fails saying so; one that stays within it completes and
/// publishes what it wrote.
#[tokio::test]
async fn a_task_that_writes_past_its_disk_limit_is_stopped_and_one_within_it_completes() {
    let mut h = start(|_, _| {}).await;
    let mut within = with_outputs(wasm_task("fill", &["3"]));
    within.resources.disk = "8Mi".into();
    let r = h.run("e-fill-within", within).await;
    assert_eq!(
        states(&r),
        vec![BidAccepted, Running, Publishing, Completed],
        "{:?}",
        last(&r).message
    );
    let written = h
        .node
        .execution_paths("e-fill-within")
        .result_dir("outputs")
        .join("fill.bin");
    assert_eq!(std::fs::metadata(&written).unwrap().len(), 3 << 20);

    let mut past = with_outputs(wasm_task("fill", &[]));
    past.resources.disk = "8Mi".into();
    let r = h.run("e-fill-past", past).await;
    assert_eq!(states(&r), vec![BidAccepted, Running, Failed]);
    let m = &last(&r).message;
    assert!(
        m.starts_with("disk limit of 8.0 MiB exceeded: the task wrote ")
            && m.contains("Resources.Disk"),
        "{m}"
    );
}

#[tokio::test]
async fn bad_inputs_and_unsupported_features_fail_clearly() {
    let mut h = start(|o, dir| {
        o.allow_listed_local_paths = vec![dir.join("allowed").display().to_string()]
    })
    .await;
    let mut t = wasm_task("echo", &[]);
    t.input_sources
        .push(input("local", "/inputs", &[("SourcePath", "/etc".into())]));
    let r = h.run("e-local", t).await;
    assert_eq!(states(&r), vec![BidAccepted, Failed]);
    assert_eq!(last(&r).topic, topic::DOWNLOADING);
    assert!(
        last(&r)
            .message
            .starts_with("preparing inputs: local path /etc is not under an allow-listed path"),
        "{}",
        last(&r).message
    );

    let mut t = wasm_task("echo", &[]);
    t.input_sources
        .push(input("ipfs", "/inputs", &[("CID", "Qm".into())]));
    let r = h.run("e-ipfs", t).await;
    assert!(
        last(&r)
            .message
            .contains("ipfs inputs are not supported on this node: set Compute.IPFSGateway"),
        "{}",
        last(&r).message
    );

    let mut t = wasm_task("echo", &[]);
    t.publisher = SpecConfig::new("s3");
    let r = h.run("e-s3", t).await;
    assert_eq!(states(&r), vec![Failed], "refused before taking a slot");
    assert!(
        last(&r)
            .message
            .contains("Bucket is required for the s3 publisher; set Bucket")
    );

    let mut t = wasm_task("echo", &[]);
    t.engine = SpecConfig::new("docker").with("Image", "busybox");
    let r = h.run("e-docker", t).await;
    assert_eq!(states(&r), vec![Failed]);
    assert!(
        last(&r)
            .message
            .contains("engine type \"docker\" is not supported")
    );

    let mut t = wasm_task("echo", &[]);
    t.engine = t.engine.with("EntryModule", "/nope.wasm");
    let r = h.run("e-nomod", t).await;
    assert_eq!(
        last(&r).message,
        "module not found at /nope.wasm: no input has that Target"
    );

    // Noop publisher: completes without Publishing and keeps no results.
    let mut t = with_outputs(wasm_task("echo", &[]));
    t.publisher = SpecConfig::new("noop");
    let r = h.run("e-noop", t).await;
    assert_eq!(states(&r), vec![BidAccepted, Running, Completed]);
    assert_eq!(last(&r).published_result, None);
    let p = h.node.execution_paths("e-noop");
    assert!(!p.archive.exists() && !p.result_dir("outputs").exists());
}

#[tokio::test]
async fn cancel_follow_logs_and_concurrency_limit() {
    let mut h = start(|o, _| o.max_concurrent = 1).await;
    h.send(run_msg("e-spin", wasm_task("spin", &[]))).await;
    assert_eq!(h.next_report("e-spin").await.1.state, BidAccepted);
    assert_eq!(h.next_report("e-spin").await.1.state, Running);

    // A second execution waits for the slot and reports nothing meanwhile.
    h.send(run_msg("e-queued", wasm_task("exit3", &[]))).await;
    // Follow the spinning execution's logs: its line arrives while it runs.
    h.send(ToCompute::Logs {
        request_id: 1,
        execution_id: "e-spin".into(),
        follow: true,
        tail: false,
    })
    .await;
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(30), h.rx.recv())
            .await
            .expect("a log line")
            .expect("open")
        {
            ToOrchestrator::LogLine {
                request_id: 1,
                stream,
                line,
            } => break (stream, line),
            ToOrchestrator::Heartbeat { .. } => {}
            other => panic!("unexpected while e-queued waits: {other:?}"),
        }
    };
    assert_eq!(first, (1, "spinning".to_string()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.node.execution_state("e-queued"),
        Some(ExecutionStateType::New)
    );
    assert_eq!(h.node.node_info().compute_node_info.enqueued_executions, 1);
    assert_eq!(h.node.node_info().compute_node_info.running_executions, 1);

    h.send(ToCompute::Cancel {
        execution_id: "e-spin".into(),
        reason: "user asked".into(),
    })
    .await;
    let (_, u) = h.next_report("e-spin").await;
    assert_eq!(
        (u.state, u.message.as_str()),
        (Cancelled, "execution cancelled: user asked")
    );
    // The followed log ends with the execution.
    let end = h.stream(1).await;
    assert!(matches!(end.last(), Some(ToOrchestrator::LogEnd { error, .. }) if error.is_empty()));
    // Now the queued one runs.
    let r = h.reports_until_terminal("e-queued").await;
    assert_eq!(
        states(&r),
        vec![BidAccepted, Running, Publishing, Completed]
    );

    // Cancelling a queued execution reports Cancelled without starting it.
    h.send(run_msg("e-spin2", wasm_task("spin", &[]))).await;
    assert_eq!(h.next_report("e-spin2").await.1.state, BidAccepted);
    assert_eq!(h.next_report("e-spin2").await.1.state, Running);
    h.send(run_msg("e-wait", wasm_task("exit3", &[]))).await;
    h.send(ToCompute::Cancel {
        execution_id: "e-wait".into(),
        reason: String::new(),
    })
    .await;
    let (_, u) = h.next_report("e-wait").await;
    assert_eq!(
        (u.state, u.message.as_str()),
        (Cancelled, "execution cancelled")
    );
    // Cancel of an unknown execution is remembered: a late Run is ignored.
    h.send(ToCompute::Cancel {
        execution_id: "e-never".into(),
        reason: String::new(),
    })
    .await;
    assert_eq!(h.next_report("e-never").await.1.state, Cancelled);
    h.send(run_msg("e-never", wasm_task("exit3", &[]))).await;

    // Shutdown stops the running execution and reports it Failed.
    h.shutdown.cancel();
    let (_, u) = h.next_report("e-spin2").await;
    assert_eq!(u.state, Failed);
    assert!(u.message.contains("shut down"), "{}", u.message);
    tokio::time::timeout(Duration::from_secs(30), &mut h.handle)
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert!(!h.others.iter().any(|m| matches!(m, ToOrchestrator::Report { update, .. } if update.execution_id == "e-never" && update.state != Cancelled)));
}

#[tokio::test]
async fn heartbeats_and_reconnect_replay_unacked_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = caravel_compute::ComputeOptions::new("node-1", dir.path());
    opts.heartbeat_interval = Duration::from_millis(100);
    let node = opts.build().unwrap();
    let (tx, inbox) = tokio::sync::mpsc::channel(16);
    let (outbox, mut rx) = tokio::sync::mpsc::channel(16);
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(node.clone().run(inbox, outbox, stop.clone()));
    assert!(matches!(
        rx.recv().await,
        Some(ToOrchestrator::Hello { last_seq: 0, .. })
    ));
    tx.send(ToCompute::Ack { seq: 0 }).await.unwrap();
    tx.send(run_msg("e-1", wasm_task("exit3", &[])))
        .await
        .unwrap();
    let mut seqs = Vec::new();
    let mut beats = 0;
    while seqs.len() < 4 || beats == 0 {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ToOrchestrator::Report { seq, .. } => seqs.push(seq),
            ToOrchestrator::Heartbeat { info } => {
                beats += 1;
                assert_eq!(info.node_id, "node-1");
            }
            ToOrchestrator::Inventory { running } => {
                assert!(running.iter().all(|r| r == "e-1"), "{running:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    tx.send(ToCompute::Ack { seq: 2 }).await.unwrap();
    // The session ends (inbox closed); the node keeps its state.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
    // A new session: Hello with the last number, then the unacknowledged reports again.
    let (tx, inbox) = tokio::sync::mpsc::channel(16);
    let (outbox, mut rx) = tokio::sync::mpsc::channel(16);
    let handle = tokio::spawn(node.clone().run(inbox, outbox, stop.clone()));
    assert!(matches!(
        rx.recv().await,
        Some(ToOrchestrator::Hello { last_seq: 4, .. })
    ));
    // The orchestrator answers with what it committed: 2.
    tx.send(ToCompute::Ack { seq: 2 }).await.unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        if let ToOrchestrator::Report { seq, update } = rx.recv().await.unwrap() {
            replayed.push((seq, update.state));
        }
    }
    assert_eq!(replayed, vec![(3, Publishing), (4, Completed)]);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
}

/// Reads reports (skipping heartbeats and inventories) until `n` have arrived.
async fn reports(
    rx: &mut tokio::sync::mpsc::Receiver<ToOrchestrator>,
    n: usize,
) -> Vec<(u64, caravel_model::execution::ExecutionUpdate)> {
    let mut got = Vec::new();
    while got.len() < n {
        if let ToOrchestrator::Report { seq, update } =
            tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("a report within 60 s")
                .expect("session open")
        {
            got.push((seq, update));
        }
    }
    got
}

#[tokio::test]
async fn reports_survive_a_restart_of_the_compute_process_and_a_lost_execution_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let made = {
        let node = caravel_compute::ComputeOptions::new("node-1", dir.path())
            .build()
            .unwrap();
        let (tx, inbox) = tokio::sync::mpsc::channel(16);
        let (outbox, mut rx) = tokio::sync::mpsc::channel(16);
        let stop = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(node.clone().run(inbox, outbox, stop.clone()));
        assert!(matches!(
            rx.recv().await,
            Some(ToOrchestrator::Hello { last_seq: 0, .. })
        ));
        tx.send(ToCompute::Ack { seq: 0 }).await.unwrap();
        tx.send(run_msg("e-1", wasm_task("exit3", &[])))
            .await
            .unwrap();
        // BidAccepted, Running, Publishing, Failed (exit code 3): none acknowledged.
        let got = reports(&mut rx, 4).await;
        assert_eq!(got.last().unwrap().1.state, ExecutionStateType::Completed);
        // The process dies: no shutdown step runs (the session and the node are dropped).
        handle.abort();
        got
    };
    let node = caravel_compute::ComputeOptions::new("node-1", dir.path())
        .build()
        .unwrap();
    assert_eq!(
        node.outbox_status(),
        (4, 4),
        "(last seq, pending) read back from disk"
    );
    let (tx, inbox) = tokio::sync::mpsc::channel(16);
    let (outbox, mut rx) = tokio::sync::mpsc::channel(16);
    let stop = tokio_util::sync::CancellationToken::new();
    let _handle = tokio::spawn(node.clone().run(inbox, outbox, stop.clone()));
    assert!(
        matches!(
            rx.recv().await,
            Some(ToOrchestrator::Hello { last_seq: 4, .. })
        ),
        "the new process continues the numbering"
    );
    // The orchestrator had committed the first one only.
    tx.send(ToCompute::Ack { seq: 1 }).await.unwrap();
    let replayed = reports(&mut rx, 3).await;
    assert_eq!(
        replayed,
        made[1..].to_vec(),
        "the same reports, same numbers"
    );
    // The orchestrator believes e-2 runs here (it saw it Running before the restart).
    let mut run = run_msg("e-2", wasm_task("exit3", &[]));
    if let ToCompute::Run { execution, .. } = &mut run {
        execution.compute_state = caravel_model::states::State::new(ExecutionStateType::Running);
    }
    tx.send(run).await.unwrap();
    let lost = reports(&mut rx, 1).await;
    assert_eq!(lost[0].0, 5);
    assert_eq!(lost[0].1.execution_id, "e-2");
    assert_eq!(lost[0].1.state, ExecutionStateType::Cancelled);
    assert!(
        lost[0]
            .1
            .message
            .starts_with("lost: the compute node restarted"),
        "{}",
        lost[0].1.message
    );
    stop.cancel();
}

#[tokio::test]
async fn the_owners_policy_refuses_before_anything_is_fetched_or_started() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // A server that counts requests: a refused job must not reach it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h2 = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            h2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut h = start(|o, _| {
        o.admission = caravel_model::admission::AdmissionPolicy {
            url_hosts: vec!["*.corp".into()],
            ..Default::default()
        };
    })
    .await;
    assert!(
        h.hello
            .labels
            .contains_key(caravel_model::admission::POLICY_LABEL),
        "the policy is advertised"
    );
    // A URL host outside the allow-list: refused with the reason, no request made.
    let mut t = wasm_task("echo", &[]);
    t.input_sources.push(input(
        "urlDownload",
        "/inputs/x",
        &[("URL", format!("http://{addr}/x").into())],
    ));
    let reports = h.run("e-host", t).await;
    assert_eq!(states(&reports), vec![BidRejected]);
    let msg = &reports[0].message;
    assert!(
        msg.contains("refused by node node-1") && msg.contains("URL host"),
        "{msg}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Host networking is refused by default, even by an open policy.
    let mut t = wasm_task("echo", &[]);
    t.network.kind = "Host".into();
    let reports = h.run("e-net", t).await;
    assert_eq!(states(&reports), vec![BidRejected]);
    assert!(
        reports[0].message.contains("network Host"),
        "{}",
        reports[0].message
    );

    // Modules by hash: an inline one is refused at once; one fetched from a URL once it is here.
    let bytes = std::fs::read(module("echo")).unwrap();
    let base = serve_paths(vec![("/m.wasm".into(), bytes.clone())]).await;
    let mut h = start(|o, _| {
        o.admission = caravel_model::admission::AdmissionPolicy {
            wasm_modules: vec!["0".repeat(64)],
            ..Default::default()
        };
    })
    .await;
    let reports = h.run("e-inline", wasm_task("echo", &[])).await;
    assert_eq!(states(&reports), vec![BidRejected]);
    assert!(
        reports[0].message.contains("allowed modules"),
        "{}",
        reports[0].message
    );
    let mut fetched = wasm_task("echo", &[]);
    fetched.input_sources = vec![input(
        "urlDownload",
        MODULE_TARGET,
        &[("URL", format!("{base}/m.wasm").into())],
    )];
    let reports = h.run("e-url", fetched).await;
    assert_eq!(states(&reports).last(), Some(&Failed));
    assert!(!states(&reports).contains(&Running), "never started");
    let last = reports.last().unwrap();
    assert!(
        last.message.contains("not in this node's allowed modules"),
        "{}",
        last.message
    );
}
