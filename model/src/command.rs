//! The replicated commands: every change to the cluster's state is one of these, proposed to Raft by
//! the leader and applied by every orchestrator's state machine. Commands carry their own times and
//! ids so that `apply` needs no clock and no randomness.
//!
//! Wire rule (see `codec`): only append variants and never change a variant's fields; add a new variant
//! instead.

use serde::{Deserialize, Serialize};

use crate::evaluation::Evaluation;
use crate::execution::{Execution, ExecutionUpdate};
use crate::history::Event;
use crate::node::NodeInfo;
use crate::security::JoinToken;
use crate::spec::Job;
use crate::states::{
    ExecutionDesiredState, ExecutionStateType, JobStateType, NodeConnection, NodeMembership,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A new job, or a new version of the job with the same name and namespace.
    SubmitJob {
        job: Job,
        evaluation: Evaluation,
        force: bool,
        now: i64,
    },
    /// Stop a job at a user's request.
    StopJob {
        job_id: String,
        reason: String,
        evaluation_id: String,
        now: i64,
    },
    /// The scheduler's answer to an evaluation.
    ApplyPlan(Plan),
    /// A compute node's report, applied once per (node, seq).
    UpdateExecution {
        node_id: String,
        seq: u64,
        update: ExecutionUpdate,
        followup_eval_id: String,
        now: i64,
    },
    /// A compute node joined or refreshed its info.
    RegisterNode { info: NodeInfo, now: i64 },
    /// A node's connection changed (decided by the leader's liveness tracking).
    SetNodeConnection {
        node_id: String,
        status: NodeConnection,
        reason: String,
        evaluation_ids: Vec<String>,
        now: i64,
    },
    /// An operator created a one-time join token.
    CreateJoinToken { token: JoinToken },
    /// A compute node presented a join token. Applied once: refused when the token is unknown,
    /// used, expired, bound to another id, or its secret differs; otherwise marked used.
    ConsumeJoinToken {
        token_id: String,
        secret_sha256: String,
        node_id: String,
        now: i64,
    },
    /// An operator withdrew a join token.
    DeleteJoinToken { token_id: String },
    /// A compute node registered over a session authenticated by a certificate (whose fingerprint
    /// is recorded, so deleting the node revokes it); `pending`: it waits for approval.
    RegisterNodeWith {
        info: NodeInfo,
        now: i64,
        pending: bool,
        fingerprint: String,
    },
    /// An operator approved or rejected a node; a rejected node's certificates are refused and its
    /// executions replaced (one evaluation per affected job).
    SetNodeMembership {
        node_id: String,
        membership: NodeMembership,
        message: String,
        evaluation_ids: Vec<String>,
        now: i64,
    },
    /// An operator deleted a node: its record goes, the certificates it used are revoked, its
    /// executions are replaced. It may join again with a new certificate (a new token).
    DeleteNode {
        node_id: String,
        message: String,
        evaluation_ids: Vec<String>,
        now: i64,
    },
    /// An operator revoked one certificate by its SHA-256 fingerprint.
    DenyCertificate {
        fingerprint: String,
        node_id: String,
        reason: String,
        now: i64,
    },
    /// An operator made a node eligible or ineligible for new work, or started draining it: one
    /// evaluation per job with an execution there (and, for a drain, one at its deadline).
    SetNodeEligibility {
        node_id: String,
        eligibility: crate::node::Eligibility,
        message: String,
        now: i64,
    },
    /// Several plans in one entry (one Raft commit for many evaluations): each is applied, or
    /// refused as stale, on its own, in order; answered with [`CommandResponse::Plans`].
    ApplyPlans(Vec<Plan>),
    /// Reports of many compute nodes in one entry (one Raft commit for what every session sent
    /// meanwhile): each is applied, deduplicated by its (node, seq), on its own and in order, as a
    /// [`Command::UpdateExecution`] would be; answered with [`CommandResponse::Plans`], one answer
    /// per report.
    UpdateExecutions(Vec<ExecutionReport>),
    /// Independent commands in one entry (the group commit of job submissions: one Raft commit for
    /// what every API client sent meanwhile): each is applied on its own and in order, exactly as it
    /// would be as an entry of its own; answered with [`CommandResponse::Plans`], one answer per
    /// command. A batch inside a batch is refused (`Invalid`), the rest of the batch applied.
    Batch(Vec<Command>),
}

/// One compute node's report, as [`Command::UpdateExecution`] carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionReport {
    pub node_id: String,
    pub seq: u64,
    pub update: ExecutionUpdate,
    pub followup_eval_id: String,
    pub now: i64,
}

impl ExecutionReport {
    /// The report as a command of its own.
    pub fn into_command(self) -> Command {
        Command::UpdateExecution {
            node_id: self.node_id,
            seq: self.seq,
            update: self.update,
            followup_eval_id: self.followup_eval_id,
            now: self.now,
        }
    }
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::SubmitJob { .. } => "submit_job",
            Command::StopJob { .. } => "stop_job",
            Command::ApplyPlan(_) => "apply_plan",
            Command::UpdateExecution { .. } => "update_execution",
            Command::RegisterNode { .. } => "register_node",
            Command::SetNodeConnection { .. } => "set_node_connection",
            Command::CreateJoinToken { .. } => "create_join_token",
            Command::ConsumeJoinToken { .. } => "consume_join_token",
            Command::DeleteJoinToken { .. } => "delete_join_token",
            Command::RegisterNodeWith { .. } => "register_node",
            Command::SetNodeMembership { .. } => "set_node_membership",
            Command::DeleteNode { .. } => "delete_node",
            Command::DenyCertificate { .. } => "deny_certificate",
            Command::SetNodeEligibility { .. } => "set_node_eligibility",
            Command::ApplyPlans(_) => "apply_plans",
            Command::UpdateExecutions(_) => "update_executions",
            Command::Batch(_) => "batch",
        }
    }
}

impl Command {
    /// Whether applying the command a second time changes nothing and is acknowledged again, so
    /// that a write whose outcome is unknown (its leader died or moved mid-call) may be sent again:
    /// a submission (found by its evaluation id or job id: answered as the first time), a compute
    /// report (found by its node and sequence number: answered `Duplicate`), and batches of those.
    pub fn retry_safe(&self) -> bool {
        match self {
            Command::SubmitJob { .. }
            | Command::UpdateExecution { .. }
            | Command::UpdateExecutions(_) => true,
            Command::Batch(cmds) => cmds
                .iter()
                .all(|c| !matches!(c, Command::Batch(_)) && c.retry_safe()),
            _ => false,
        }
    }
}

/// What the scheduler wants done for one evaluation. Applied atomically, and only if the job has not
/// changed since the scheduler read it (`job_revision`), so a stale plan is refused, not half-applied.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    pub eval_id: String,
    pub job_id: String,
    pub job_revision: u64,
    pub new_executions: Vec<Execution>,
    pub updates: Vec<ExecutionChange>,
    pub job_state: Option<(JobStateType, String)>,
    pub eval_status: String,
    pub eval_comment: String,
    pub new_evaluations: Vec<Evaluation>,
    pub events: Vec<Event>,
    pub now: i64,
}

/// The orchestrator's change to an existing execution (stop, fail, mark lost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionChange {
    pub execution_id: String,
    pub desired: ExecutionDesiredState,
    pub compute: Option<ExecutionStateType>,
    pub message: String,
}

/// What applying a command produced, returned to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum CommandResponse {
    #[default]
    Ok,
    JobSubmitted {
        job_id: String,
        evaluation_id: String,
        version: u64,
    },
    JobStopped {
        evaluation_id: String,
    },
    /// The report was applied before (same node and sequence number): acknowledged, not re-applied.
    Duplicate,
    /// The command was refused; the state is unchanged.
    Rejected {
        code: RejectCode,
        message: String,
        hint: String,
    },
    /// A join token was accepted: the labels it gives the node.
    TokenAccepted {
        labels: std::collections::BTreeMap<String, String>,
    },
    /// The answer to [`Command::ApplyPlans`], [`Command::UpdateExecutions`] and
    /// [`Command::Batch`]: one per plan, report or command, in order.
    Plans(Vec<CommandResponse>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    NotFound,
    Conflict,
    NoChange,
    Stale,
    Invalid,
}
