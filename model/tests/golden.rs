//! Golden encodings of every persisted and wire type of the model, as this version writes them:
//! the Raft log's commands, the state machine's records and snapshots, the orchestrator↔compute
//! messages, the join protocol. Each lives in `tests/golden/<format>/NAME.bin`; every later version
//! must keep reading the files of every earlier format directory (add a new directory when a type
//! changes; never rewrite an old one). A fixture that no longer decodes to the value built here, or
//! that this version would encode differently, fails the test.
//!
//!   CARAVEL_BLESS=1 cargo test -p caravel-model --test golden   # (re)write this version's files

use std::collections::BTreeMap;
use std::path::PathBuf;

use caravel_model::codec;
use caravel_model::command::{
    Command, CommandResponse, ExecutionChange, ExecutionReport, Plan, RejectCode,
};
use caravel_model::evaluation::{Evaluation, trigger};
use caravel_model::execution::{Execution, ExecutionUpdate, RunOutput};
use caravel_model::history::Event;
use caravel_model::node::NodeInfo;
use caravel_model::security::{Denial, JoinToken};
use caravel_model::spec::{Job, SpecConfig};
use caravel_model::state::ClusterState;
use caravel_model::states::{
    ExecutionDesiredState, ExecutionStateType, JobStateType, NodeConnection, NodeMembership, State,
};
use caravel_model::wire::{JoinRequest, JoinResponse, ToCompute, ToOrchestrator};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The directory of this version's format ([`codec::FORMAT_VERSION`] 1, Caravel 0.1).
const CURRENT: &str = "v1";

fn dir(format: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format)
}

/// Checks `value` against its fixture: the file decodes to `value`, and `value` encodes to the
/// file's bytes. With `CARAVEL_BLESS=1`, writes the file instead.
fn golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let path = dir(CURRENT).join(format!("{name}.bin"));
    let bytes = codec::encode(value).unwrap();
    if std::env::var_os("CARAVEL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        return;
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run CARAVEL_BLESS=1 cargo test -p caravel-model --test golden for a NEW type",
            path.display()
        )
    });
    let decoded: T = codec::decode(&stored)
        .unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
    assert_eq!(
        &decoded,
        value,
        "{} decodes to another value",
        path.display()
    );
    assert_eq!(
        bytes,
        stored,
        "{name} encodes differently from {}: the wire or storage format changed; keep the old form readable and add a new format directory",
        path.display()
    );
}

fn job() -> Job {
    let text = br#"
Name: golden
Type: batch
Count: 2
Namespace: team-a
Labels: {env: prod}
Meta: {owner: ops}
Constraints: [{Key: region, Operator: "=", Values: [eu]}]
Tasks:
  - Name: main
    Engine: {Type: docker, Params: {Image: "busybox:1.36", Entrypoint: [sh, -c], Parameters: [echo hi]}}
    Env: {GREETING: hello, TOKEN: "env:SERVICE_TOKEN"}
    InputSources:
      - {Target: /inputs/a, Source: {Type: inline, Params: {URL: "data:,x"}}}
      - {Target: /inputs/b, Source: {Type: s3, Params: {Bucket: data, Key: "in/", Region: eu-west-1}}}
    ResultPaths: [{Name: out, Path: /outputs}]
    Publisher: {Type: s3, Params: {Bucket: results, Key: "{jobID}/"}}
    Resources: {CPU: 500m, Memory: 64Mb, Disk: 1Gb}
    Network: {Type: None}
    Timeouts: {ExecutionTimeout: 60, QueueTimeout: 5, TotalTimeout: 120}
"#;
    let mut job = caravel_model::parse::parse_job(text, caravel_model::parse::Mode::Server)
        .unwrap()
        .job;
    job.id = "j-00000000-0000-0000-0000-000000000001".into();
    job.create_time = 1_700_000_000_000_000_000;
    job.modify_time = 1_700_000_000_000_000_001;
    job
}

fn node_info() -> NodeInfo {
    let mut info = NodeInfo {
        node_id: "edge-1".into(),
        node_type: "Compute".into(),
        labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        supported_protocols: vec!["caravel/1".into()],
        ..Default::default()
    };
    info.compute_node_info.execution_engines = vec!["wasm".into(), "docker".into()];
    info.compute_node_info.publishers = vec!["local".into(), "s3".into()];
    info.compute_node_info.storage_sources = vec!["inline".into(), "s3".into()];
    info.compute_node_info.max_capacity.cpu = 4.0;
    info.compute_node_info.max_capacity.memory = 8 << 30;
    info
}

fn execution() -> Execution {
    Execution {
        id: "e-00000000-0000-0000-0000-000000000001".into(),
        namespace: "team-a".into(),
        eval_id: "ev-1".into(),
        name: "golden".into(),
        node_id: "edge-1".into(),
        job_id: job().id,
        job_version: 1,
        desired_state: State::new(ExecutionDesiredState::Running),
        compute_state: State::with_message(ExecutionStateType::Running, "started"),
        published_result: SpecConfig::new("s3").with("Bucket", "results"),
        partition_index: 1,
        revision: 3,
        create_time: 1_700_000_000_000_000_002,
        modify_time: 1_700_000_000_000_000_003,
        ..Default::default()
    }
}

fn update() -> ExecutionUpdate {
    ExecutionUpdate {
        execution_id: execution().id,
        state: ExecutionStateType::Completed,
        message: "done".into(),
        run_output: Some(RunOutput {
            stdout: "hi\n".into(),
            stderr: String::new(),
            exit_code: 0,
            ..Default::default()
        }),
        published_result: Some(SpecConfig::new("s3").with("Key", "j-1/e-1.tar.gz")),
        topic: "Execution Completed".into(),
        time: 1_700_000_000_000_000_004,
    }
}

fn token() -> JoinToken {
    JoinToken {
        id: "0123456789ab".into(),
        secret_sha256: "a".repeat(64),
        created_at: 1,
        expires_at: 3_600_000_000_001,
        labels: BTreeMap::from([("zone".to_string(), "edge".to_string())]),
        node_id: "edge-2".into(),
        description: "golden".into(),
        used_by: String::new(),
        used_at: 0,
    }
}

/// One value of every command, named so that a new variant cannot be forgotten.
fn commands() -> Vec<(&'static str, Command)> {
    let job = job();
    let eval = Evaluation::new("ev-1".into(), &job, trigger::JOB_REGISTER, 5);
    let all = vec![
        Command::SubmitJob {
            job: job.clone(),
            evaluation: eval.clone(),
            force: true,
            now: 5,
        },
        Command::StopJob {
            job_id: job.id.clone(),
            reason: "Stopped at user request".into(),
            evaluation_id: "ev-2".into(),
            now: 6,
        },
        Command::ApplyPlan(Plan {
            eval_id: "ev-1".into(),
            job_id: job.id.clone(),
            job_revision: 1,
            new_executions: vec![execution()],
            updates: vec![ExecutionChange {
                execution_id: "e-0".into(),
                desired: ExecutionDesiredState::Stopped,
                compute: Some(ExecutionStateType::Cancelled),
                message: "lost".into(),
            }],
            job_state: Some((JobStateType::Running, String::new())),
            eval_status: "complete".into(),
            eval_comment: "placed".into(),
            new_evaluations: vec![eval.clone()],
            events: vec![Event::new("Scheduling", "placed on edge-1", 7)],
            now: 7,
        }),
        Command::UpdateExecution {
            node_id: "edge-1".into(),
            seq: 42,
            update: update(),
            followup_eval_id: "ev-3".into(),
            now: 8,
        },
        Command::RegisterNode {
            info: node_info(),
            now: 9,
        },
        Command::SetNodeConnection {
            node_id: "edge-1".into(),
            status: NodeConnection::Disconnected,
            reason: "no heartbeat for 30s".into(),
            evaluation_ids: vec!["ev-4".into()],
            now: 10,
        },
        Command::CreateJoinToken { token: token() },
        Command::ConsumeJoinToken {
            token_id: token().id,
            secret_sha256: "a".repeat(64),
            node_id: "edge-2".into(),
            now: 11,
        },
        Command::DeleteJoinToken {
            token_id: token().id,
        },
        Command::RegisterNodeWith {
            info: node_info(),
            now: 12,
            pending: true,
            fingerprint: "b".repeat(64),
        },
        Command::SetNodeMembership {
            node_id: "edge-1".into(),
            membership: NodeMembership::Rejected,
            message: "key leaked".into(),
            evaluation_ids: vec!["ev-5".into()],
            now: 13,
        },
        Command::DeleteNode {
            node_id: "edge-1".into(),
            message: "retired".into(),
            evaluation_ids: vec![],
            now: 14,
        },
        Command::DenyCertificate {
            fingerprint: "c".repeat(64),
            node_id: "edge-1".into(),
            reason: "stolen".into(),
            now: 15,
        },
        Command::SetNodeEligibility {
            node_id: "edge-1".into(),
            eligibility: caravel_model::node::Eligibility::Draining { deadline: 17 },
            message: "kernel upgrade".into(),
            now: 16,
        },
        Command::ApplyPlans(vec![
            Plan {
                eval_id: "ev-6".into(),
                job_id: job.id.clone(),
                job_revision: 2,
                new_executions: vec![execution()],
                eval_status: "complete".into(),
                now: 18,
                ..Plan::default()
            },
            Plan {
                eval_id: "ev-7".into(),
                job_id: "j-2".into(),
                job_revision: 1,
                job_state: Some((JobStateType::Queued, "no room".into())),
                now: 18,
                ..Plan::default()
            },
        ]),
        Command::UpdateExecutions(vec![
            ExecutionReport {
                node_id: "edge-1".into(),
                seq: 43,
                update: update(),
                followup_eval_id: "ev-8".into(),
                now: 19,
            },
            ExecutionReport {
                node_id: "edge-2".into(),
                seq: 7,
                update: update(),
                followup_eval_id: "ev-9".into(),
                now: 19,
            },
        ]),
        Command::Batch(vec![
            Command::StopJob {
                job_id: "j-3".into(),
                reason: "done".into(),
                evaluation_id: "ev-10".into(),
                now: 20,
            },
            Command::DeleteJoinToken {
                token_id: "tok-2".into(),
            },
        ]),
    ];
    all.into_iter()
        .map(|c| {
            let name = match &c {
                Command::SubmitJob { .. } => "command_submit_job",
                Command::StopJob { .. } => "command_stop_job",
                Command::ApplyPlan(_) => "command_apply_plan",
                Command::UpdateExecution { .. } => "command_update_execution",
                Command::RegisterNode { .. } => "command_register_node",
                Command::SetNodeConnection { .. } => "command_set_node_connection",
                Command::CreateJoinToken { .. } => "command_create_join_token",
                Command::ConsumeJoinToken { .. } => "command_consume_join_token",
                Command::DeleteJoinToken { .. } => "command_delete_join_token",
                Command::RegisterNodeWith { .. } => "command_register_node_with",
                Command::SetNodeMembership { .. } => "command_set_node_membership",
                Command::DeleteNode { .. } => "command_delete_node",
                Command::DenyCertificate { .. } => "command_deny_certificate",
                Command::SetNodeEligibility { .. } => "command_set_node_eligibility",
                Command::ApplyPlans(_) => "command_apply_plans",
                Command::UpdateExecutions(_) => "command_update_executions",
                Command::Batch(_) => "command_batch",
            };
            (name, c)
        })
        .collect()
}

#[test]
fn every_command_of_the_raft_log_reads_back_from_its_golden_encoding() {
    let cmds = commands();
    assert_eq!(cmds.len(), 17, "a command without a fixture");
    for (name, c) in &cmds {
        golden(name, c);
    }
    let responses = [
        ("response_ok", CommandResponse::Ok),
        (
            "response_job_submitted",
            CommandResponse::JobSubmitted {
                job_id: "j-1".into(),
                evaluation_id: "ev-1".into(),
                version: 2,
            },
        ),
        (
            "response_job_stopped",
            CommandResponse::JobStopped {
                evaluation_id: "ev-2".into(),
            },
        ),
        ("response_duplicate", CommandResponse::Duplicate),
        (
            "response_rejected",
            CommandResponse::Rejected {
                code: RejectCode::Conflict,
                message: "no".into(),
                hint: "h".into(),
            },
        ),
        (
            "response_token_accepted",
            CommandResponse::TokenAccepted {
                labels: BTreeMap::from([("zone".to_string(), "edge".to_string())]),
            },
        ),
        (
            "response_plans",
            CommandResponse::Plans(vec![
                CommandResponse::Ok,
                CommandResponse::Rejected {
                    code: RejectCode::Stale,
                    message: "changed".into(),
                    hint: String::new(),
                },
            ]),
        ),
    ];
    for (name, r) in &responses {
        // Exhaustive: a new variant must get a fixture here.
        match r {
            CommandResponse::Ok
            | CommandResponse::JobSubmitted { .. }
            | CommandResponse::JobStopped { .. }
            | CommandResponse::Duplicate
            | CommandResponse::Rejected { .. }
            | CommandResponse::TokenAccepted { .. }
            | CommandResponse::Plans(_) => {}
        }
        golden(name, r);
    }
}

/// The state after applying every command in order (what a snapshot and the records hold).
fn state() -> ClusterState {
    let mut s = ClusterState::default();
    let job = job();
    let eval = Evaluation::new("ev-1".into(), &job, trigger::JOB_REGISTER, 5);
    s.apply(&Command::RegisterNode {
        info: node_info(),
        now: 1,
    });
    s.apply(&Command::SubmitJob {
        job: job.clone(),
        evaluation: eval,
        force: false,
        now: 5,
    });
    let mut e = execution();
    e.compute_state = State::new(ExecutionStateType::New);
    s.apply(&Command::ApplyPlan(Plan {
        eval_id: "ev-1".into(),
        job_id: job.id.clone(),
        job_revision: 1,
        new_executions: vec![e],
        now: 7,
        ..Default::default()
    }));
    s.apply(&Command::CreateJoinToken { token: token() });
    s.apply(&Command::RegisterNodeWith {
        info: NodeInfo {
            node_id: "edge-9".into(),
            node_type: "Compute".into(),
            ..Default::default()
        },
        now: 8,
        pending: false,
        fingerprint: "d".repeat(64),
    });
    s.apply(&Command::DenyCertificate {
        fingerprint: "c".repeat(64),
        node_id: "edge-3".into(),
        reason: "stolen".into(),
        now: 9,
    });
    s
}

#[test]
fn snapshots_and_state_records_read_back_from_their_golden_encodings() {
    let s = state();
    // The snapshot as written now: (ClusterState, Security).
    let path = dir(CURRENT).join("snapshot.bin");
    let bytes = s.to_snapshot().unwrap();
    if std::env::var_os("CARAVEL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
    } else {
        let stored = std::fs::read(&path).unwrap();
        let back = ClusterState::from_snapshot(&stored).unwrap();
        assert_eq!(back, s, "snapshot.bin decodes to another state");
        assert_eq!(bytes, stored, "the snapshot format changed");
        assert!(!back.security.join_tokens.is_empty() && !back.security.denied.is_empty());
    }
    // Every record a store keeps, one fixture per table.
    golden("record_job", &s.jobs.values().next().unwrap().clone());
    golden(
        "record_execution",
        &s.executions.values().next().unwrap().clone(),
    );
    golden(
        "record_evaluation",
        &s.evaluations.values().next().unwrap().clone(),
    );
    golden("record_node", &s.nodes["edge-1"].clone());
    golden(
        "record_history",
        &s.history.values().next().unwrap().clone(),
    );
    golden("record_counters", &s.counters.clone());
    golden("record_join_token", &token());
    golden(
        "record_denial",
        &s.security.denied.values().next().unwrap().clone(),
    );
    golden(
        "record_node_certs",
        &s.security.node_certs["edge-9"].clone(),
    );
    golden(
        "denial",
        &Denial {
            node_id: "edge-1".into(),
            fingerprint: String::new(),
            reason: "rejected".into(),
            at: 1,
        },
    );
}

#[test]
fn a_snapshot_written_before_the_security_tables_is_still_read() {
    // Caravel 0.1 before join tokens and the deny list wrote the state alone. Kept as it was.
    let path = dir(CURRENT).join("snapshot_before_security.bin");
    let mut s = state();
    s.security = Default::default();
    if std::env::var_os("CARAVEL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, codec::encode(&s).unwrap()).unwrap();
        return;
    }
    let stored = std::fs::read(&path).unwrap();
    let back = ClusterState::from_snapshot(&stored).unwrap();
    assert_eq!(back.jobs, s.jobs);
    assert_eq!(back.executions, s.executions);
    assert!(back.security.join_tokens.is_empty());
}

#[test]
fn a_snapshot_that_keeps_a_copy_of_each_current_version_is_still_read_the_same() {
    // Until the current version of a job was kept only in `jobs`, every version (the current one
    // too) had a copy in `job_versions`. Kept as it was: the job itself is its current version.
    let stored = std::fs::read(dir(CURRENT).join("snapshot_with_version_copies.bin")).unwrap();
    let back = ClusterState::from_snapshot(&stored).unwrap();
    let s = state();
    let id = &s.jobs.values().next().unwrap().id;
    assert_eq!(back.job_versions.len(), 1, "the old copy is there");
    assert!(
        s.job_versions.is_empty(),
        "a current version is not copied now"
    );
    assert_eq!(back.jobs, s.jobs);
    assert_eq!(back.job_version(id, 1), s.job_version(id, 1));
    assert_eq!(back.job_version(id, 1), s.jobs.get(id));
    assert_eq!(back.versions_of(id), s.versions_of(id));
    assert_eq!(
        back.versions_of(id).len(),
        1,
        "the copy is not a second version"
    );
}

#[test]
fn every_orchestrator_and_compute_message_reads_back_from_its_golden_encoding() {
    let down = vec![
        ToCompute::Run {
            execution: Box::new(execution()),
            job: Box::new(job()),
        },
        ToCompute::Cancel {
            execution_id: "e-1".into(),
            reason: "stopped".into(),
        },
        ToCompute::Ack { seq: 7 },
        ToCompute::Logs {
            request_id: 1,
            execution_id: "e-1".into(),
            follow: true,
            tail: false,
        },
        ToCompute::FetchResult {
            request_id: 2,
            execution_id: "e-1".into(),
        },
        ToCompute::CancelRequest { request_id: 2 },
        ToCompute::LogsFrom {
            request_id: 3,
            execution_id: "e-1".into(),
            follow: false,
            stdout_offset: 10,
            stderr_offset: 20,
        },
    ];
    for m in &down {
        let name = match m {
            ToCompute::Run { .. } => "to_compute_run",
            ToCompute::Cancel { .. } => "to_compute_cancel",
            ToCompute::Ack { .. } => "to_compute_ack",
            ToCompute::Logs { .. } => "to_compute_logs",
            ToCompute::FetchResult { .. } => "to_compute_fetch_result",
            ToCompute::CancelRequest { .. } => "to_compute_cancel_request",
            ToCompute::LogsFrom { .. } => "to_compute_logs_from",
        };
        golden(name, m);
    }
    let up = vec![
        ToOrchestrator::Hello {
            info: Box::new(node_info()),
            last_seq: 41,
        },
        ToOrchestrator::Report {
            seq: 42,
            update: update(),
        },
        ToOrchestrator::Heartbeat {
            info: Box::new(node_info()),
        },
        ToOrchestrator::LogLine {
            request_id: 1,
            stream: 1,
            line: "hello".into(),
        },
        ToOrchestrator::LogEnd {
            request_id: 1,
            error: String::new(),
        },
        ToOrchestrator::ResultChunk {
            request_id: 2,
            data: vec![0x1f, 0x8b, 8, 0],
        },
        ToOrchestrator::ResultEnd {
            request_id: 2,
            error: "gone".into(),
        },
        ToOrchestrator::Inventory {
            running: vec!["e-1".into()],
        },
        ToOrchestrator::LogLineAt {
            request_id: 3,
            stream: 2,
            line: "warn".into(),
            end_offset: 25,
        },
    ];
    for m in &up {
        let name = match m {
            ToOrchestrator::Hello { .. } => "to_orchestrator_hello",
            ToOrchestrator::Report { .. } => "to_orchestrator_report",
            ToOrchestrator::Heartbeat { .. } => "to_orchestrator_heartbeat",
            ToOrchestrator::LogLine { .. } => "to_orchestrator_log_line",
            ToOrchestrator::LogEnd { .. } => "to_orchestrator_log_end",
            ToOrchestrator::ResultChunk { .. } => "to_orchestrator_result_chunk",
            ToOrchestrator::ResultEnd { .. } => "to_orchestrator_result_end",
            ToOrchestrator::Inventory { .. } => "to_orchestrator_inventory",
            ToOrchestrator::LogLineAt { .. } => "to_orchestrator_log_line_at",
        };
        golden(name, m);
    }
    golden(
        "join_request",
        &JoinRequest {
            token: format!("cvj1.0123456789ab.{}.{}", "0".repeat(32), "f".repeat(64)),
            node_id: "edge-2".into(),
            csr_der: vec![0x30, 0x82, 1, 2],
        },
    );
    golden(
        "join_response_accepted",
        &JoinResponse::Accepted {
            cert_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            labels: BTreeMap::from([("zone".to_string(), "edge".to_string())]),
        },
    );
    golden(
        "join_response_refused",
        &JoinResponse::Refused {
            reason: "used".into(),
        },
    );
}

#[test]
fn data_of_another_format_version_is_refused_naming_both_versions() {
    let mut b = std::fs::read(dir(CURRENT).join("command_submit_job.bin")).unwrap();
    b[0] = 2;
    let e = codec::decode::<Command>(&b).unwrap_err().to_string();
    assert!(e.contains("version 2") && e.contains("upgrade"), "{e}");
}
