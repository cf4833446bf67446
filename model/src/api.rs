//! Bodies of Bacalhau's v1 REST API (reference §2), shared by the server and the CLI's client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::evaluation::Evaluation;
use crate::execution::Execution;
use crate::history::JobHistory;
use crate::node::NodeState;
use crate::spec::{Job, SpecConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutJobRequest {
    pub job: serde_json::Value,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct PutJobResponse {
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(rename = "EvaluationID")]
    pub evaluation_id: String,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next_token: String,
}

impl<T> Page<T> {
    /// A complete page: every item, no next token.
    pub fn of(items: Vec<T>) -> Self {
        Page {
            items,
            next_token: String::new(),
        }
    }
}

pub type ListJobsResponse = Page<Job>;
pub type ListHistoryResponse = Page<JobHistory>;
pub type ListExecutionsResponse = Page<Execution>;
/// `GET /jobs/{id}/versions`: every version of a job, oldest first.
pub type ListJobVersionsResponse = Page<Job>;

/// `PUT /jobs/{id}/rerun`: runs a version of a job again (as a new version).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct RerunJobRequest {
    #[serde(rename = "JobIDOrName")]
    pub job_id_or_name: String,
    /// The version to run again; 0 = the latest.
    pub job_version: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RerunJobResponse {
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(default)]
    pub job_version: u64,
    #[serde(rename = "EvaluationID")]
    pub evaluation_id: String,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `PUT /jobs/diff`: what submitting the job would change in the version it would replace.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DiffJobResponse {
    /// A line diff of the two specs as YAML (`-` the submitted version, `+` this one); the whole
    /// spec as added when no job has this name.
    pub diff: String,
    #[serde(default)]
    pub warnings: Vec<String>,
}
pub type ListResultsResponse = Page<SpecConfig>;
pub type ListEvaluationsResponse = Page<Evaluation>;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetJobResponse {
    pub job: Job,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Page<JobHistory>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executions: Option<Page<Execution>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StopJobRequest {
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct StopJobResponse {
    #[serde(rename = "EvaluationID")]
    pub evaluation_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ListNodesResponse {
    pub nodes: Vec<NodeState>,
    #[serde(default)]
    pub next_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetNodeResponse {
    pub node: NodeState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliveResponse {
    pub status: String,
}

/// Bacalhau's `APIError` body.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    #[serde(default, rename = "RequestID")]
    pub request_id: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub component: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\nhint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// A frame of the logs WebSocket: `{"value": {"Type": 1|2, "Line": "…"}, "error": "…"}`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LogFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<LogLine>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct LogLine {
    #[serde(rename = "Type")]
    pub stream: u8,
    pub line: String,
    /// Byte offset just past this line in its stream (Caravel extension; resumes a stream exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The opaque `NextToken`: base64 of this JSON.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct PagingToken {
    pub sort_by: String,
    pub sort_reverse: bool,
    pub limit: u32,
    pub offset: u64,
}

impl PagingToken {
    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(self).unwrap_or_default())
    }
    pub fn decode(s: &str) -> Option<Self> {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&b).ok()
    }
}

/// `GET /api/v1/orchestrator/cluster` (Caravel): the orchestrator group as one member sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterStatus {
    /// Node id of the leader ("" when none is known).
    pub leader: String,
    pub term: u64,
    /// The member that answered.
    pub answered_by: String,
    /// Whether a membership change is in flight (joint configuration).
    pub changing: bool,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct MemberStatus {
    #[serde(rename = "ID")]
    pub id: String,
    pub raft_address: String,
    #[serde(rename = "APIAddress")]
    pub api_address: String,
    /// leader, follower, learner, candidate, or unreachable.
    pub role: String,
    pub voter: bool,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Entries behind the leader's last log index.
    pub lag: u64,
    pub reachable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AddMemberRequest {
    #[serde(rename = "ID")]
    pub id: String,
    pub raft_address: String,
    #[serde(default, rename = "APIAddress")]
    pub api_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AdminResponse {
    pub message: String,
}
