//! Commands and log entries shared by the tests, built from model types (ids and times are inside
//! the commands, as in production).

use caravel_model::command::{Command, CommandResponse, Plan};
use caravel_model::evaluation::{status, trigger};
use caravel_model::execution::ExecutionUpdate;
use caravel_model::spec::SpecConfig;
use caravel_model::states::{ExecutionDesiredState, ExecutionStateType, NodeConnection, State};
use caravel_model::{Evaluation, Execution, Job, NodeInfo, RunOutput, Task};
use caravel_raft_store::{Entry, LogId, NodeAddr};
use openraft::{CommittedLeaderId, EntryPayload, Membership};

pub const T0: i64 = 1_700_000_000_000_000_000;

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn normal(term: u64, index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(std::sync::Arc::new(cmd)),
    }
}

pub fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

pub fn membership(term: u64, index: u64) -> Entry {
    let nodes = [
        (1, NodeAddr::new("127.0.0.1:7001", "127.0.0.1:1234")),
        (2, NodeAddr::new("127.0.0.1:7002", "127.0.0.1:1235")),
        (3, NodeAddr::new("127.0.0.1:7003", "127.0.0.1:1236")),
    ];
    let voters = nodes.iter().map(|(id, _)| *id).collect();
    let m = Membership::new(
        vec![voters],
        nodes
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(m),
    }
}

pub fn job(id: &str, name: &str) -> Job {
    Job {
        id: id.into(),
        name: name.into(),
        namespace: "default".into(),
        kind: "batch".into(),
        count: 1,
        tasks: vec![Task {
            name: "main".into(),
            engine: SpecConfig::new("docker")
                .with("Image", "busybox")
                .with("Entrypoint", serde_json::json!(["echo", "hi"])),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn evaluation(id: &str, job_id: &str) -> Evaluation {
    Evaluation {
        id: id.into(),
        namespace: "default".into(),
        job_id: job_id.into(),
        triggered_by: trigger::JOB_REGISTER.into(),
        kind: "batch".into(),
        status: status::PENDING.into(),
        ..Default::default()
    }
}

fn report(seq: u64, state: ExecutionStateType, now: i64) -> Command {
    let done = state == ExecutionStateType::Completed;
    Command::UpdateExecution {
        node_id: "n-1".into(),
        seq,
        update: ExecutionUpdate {
            execution_id: "x-1".into(),
            state,
            message: format!("now {state}"),
            run_output: done.then(|| RunOutput {
                stdout: "hi\n".into(),
                exit_code: 0,
                ..Default::default()
            }),
            published_result: None,
            topic: String::new(),
            time: now,
        },
        followup_eval_id: if done { "e-2".into() } else { String::new() },
        now,
    }
}

/// A realistic sequence touching every table: a node joins, a job is submitted, planned, runs and
/// completes (with one duplicated report), a second job is submitted and stopped, the node leaves.
pub fn commands() -> Vec<Command> {
    let execution = Execution {
        id: "x-1".into(),
        namespace: "default".into(),
        eval_id: "e-1".into(),
        node_id: "n-1".into(),
        job_id: "j-1".into(),
        job_version: 1,
        desired_state: State::new(ExecutionDesiredState::Running),
        compute_state: State::new(ExecutionStateType::New),
        ..Default::default()
    };
    vec![
        Command::RegisterNode {
            info: NodeInfo {
                node_id: "n-1".into(),
                node_type: "Compute".into(),
                ..Default::default()
            },
            now: T0,
        },
        Command::SubmitJob {
            job: job("j-1", "hello"),
            evaluation: evaluation("e-1", "j-1"),
            force: false,
            now: T0 + 1,
        },
        Command::ApplyPlan(Plan {
            eval_id: "e-1".into(),
            job_id: "j-1".into(),
            job_revision: 1,
            new_executions: vec![execution],
            now: T0 + 2,
            ..Default::default()
        }),
        report(1, ExecutionStateType::BidAccepted, T0 + 3),
        report(2, ExecutionStateType::Running, T0 + 4),
        report(3, ExecutionStateType::Completed, T0 + 5),
        report(3, ExecutionStateType::Completed, T0 + 6),
        Command::SubmitJob {
            job: job("j-2", "other"),
            evaluation: evaluation("e-3", "j-2"),
            force: false,
            now: T0 + 7,
        },
        Command::StopJob {
            job_id: "j-2".into(),
            reason: String::new(),
            evaluation_id: "e-4".into(),
            now: T0 + 8,
        },
        Command::SetNodeConnection {
            node_id: "n-1".into(),
            status: NodeConnection::Disconnected,
            reason: "heartbeat missed".into(),
            evaluation_ids: vec![],
            now: T0 + 9,
        },
    ]
}

/// The log for [`commands`]: a membership entry at index 1, a leader's blank entry at 2, then one
/// entry per command from index 3.
pub fn entries() -> Vec<Entry> {
    let mut out = vec![membership(1, 1), blank(1, 2)];
    out.extend(
        commands()
            .into_iter()
            .enumerate()
            .map(|(i, c)| normal(1, 3 + i as u64, c)),
    );
    out
}

/// What applying [`entries`] must answer, entry by entry.
pub fn expected_responses() -> Vec<CommandResponse> {
    use CommandResponse::*;
    vec![
        Ok,
        Ok,
        Ok,
        JobSubmitted {
            job_id: "j-1".into(),
            evaluation_id: "e-1".into(),
            version: 1,
        },
        Ok,
        Ok,
        Ok,
        Ok,
        Duplicate,
        JobSubmitted {
            job_id: "j-2".into(),
            evaluation_id: "e-3".into(),
            version: 1,
        },
        JobStopped {
            evaluation_id: "e-4".into(),
        },
        Ok,
    ]
}
