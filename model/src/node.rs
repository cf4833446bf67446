//! `NodeInfo` and `NodeState` (reference §8.1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::execution::Resources;
use crate::states::{NodeConnection, NodeMembership};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BuildVersionInfo {
    #[serde(default)]
    pub major: String,
    #[serde(default)]
    pub minor: String,
    #[serde(default)]
    pub git_version: String,
    #[serde(default)]
    pub git_commit: String,
    #[serde(default)]
    pub build_date: String,
    #[serde(default, rename = "GOOS")]
    pub goos: String,
    #[serde(default, rename = "GOARCH")]
    pub goarch: String,
}

impl BuildVersionInfo {
    pub fn current() -> Self {
        let mut parts = crate::VERSION.split('.');
        BuildVersionInfo {
            major: parts.next().unwrap_or("0").into(),
            minor: parts.next().unwrap_or("0").into(),
            git_version: format!("v{}", crate::VERSION),
            git_commit: option_env!("CARAVEL_GIT_COMMIT").unwrap_or("").into(),
            build_date: String::new(),
            goos: std::env::consts::OS.into(),
            goarch: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            }
            .into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComputeNodeInfo {
    #[serde(default)]
    pub execution_engines: Vec<String>,
    #[serde(default)]
    pub publishers: Vec<String>,
    #[serde(default)]
    pub storage_sources: Vec<String>,
    #[serde(default)]
    pub max_capacity: Resources,
    #[serde(default, rename = "QueueCapacity")]
    pub queue_used_capacity: Resources,
    #[serde(default)]
    pub available_capacity: Resources,
    #[serde(default)]
    pub max_job_requirements: Resources,
    #[serde(default)]
    pub running_executions: u32,
    #[serde(default)]
    pub enqueued_executions: u32,
    #[serde(default, rename = "address")]
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeInfo {
    #[serde(default, rename = "NodeID")]
    pub node_id: String,
    /// `Compute` or `Requester`.
    #[serde(default)]
    pub node_type: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub supported_protocols: Vec<String>,
    #[serde(default)]
    pub compute_node_info: ComputeNodeInfo,
    #[serde(default)]
    pub bacalhau_version: BuildVersionInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectionState {
    #[serde(default)]
    pub status: NodeConnection,
    #[serde(default, with = "crate::time::as_rfc3339")]
    pub last_heartbeat: i64,
    #[serde(default, with = "crate::time::as_rfc3339")]
    pub connected_since: i64,
    #[serde(default, with = "crate::time::as_rfc3339")]
    pub disconnected_since: i64,
    #[serde(default)]
    pub last_error: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeState {
    #[serde(default)]
    pub info: NodeInfo,
    #[serde(default)]
    pub membership: NodeMembership,
    /// Legacy copy of `ConnectionState.Status`.
    #[serde(default)]
    pub connection: NodeConnection,
    #[serde(default)]
    pub connection_state: ConnectionState,
}

impl NodeState {
    pub fn id(&self) -> &str {
        &self.info.node_id
    }
    pub fn is_schedulable(&self) -> bool {
        self.info.node_type == "Compute"
            && self.membership == NodeMembership::Approved
            && self.connection_state.status == NodeConnection::Connected
    }
}

/// The label an orchestrator sets on a node an operator made ineligible or is draining
/// (`ineligible` or `draining`); absent: eligible. Owned by the orchestrators: a node's own
/// registration can neither set nor clear it (a label, so no persisted type changes, ADR 0001).
pub const ELIGIBILITY_LABEL: &str = "caravel.io/eligibility";
/// When a drain stops what still runs on the node: Unix nanoseconds.
pub const DRAIN_DEADLINE_LABEL: &str = "caravel.io/drain-deadline";
/// The labels only orchestrators write.
pub const ORCHESTRATOR_LABELS: [&str; 2] = [ELIGIBILITY_LABEL, DRAIN_DEADLINE_LABEL];

/// Whether a node takes new work, as Nomad's node eligibility and drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Eligibility {
    /// New work may be placed on it.
    #[default]
    Eligible,
    /// No new work; what runs there stays.
    Ineligible,
    /// No new work; service copies move to other nodes now, batch and ops executions finish
    /// there until `deadline` (Unix ns), when those still running are stopped and placed
    /// elsewhere. Daemons stay: they belong to every node.
    Draining { deadline: i64 },
}

impl Eligibility {
    pub fn as_str(&self) -> &'static str {
        match self {
            Eligibility::Eligible => "eligible",
            Eligibility::Ineligible => "ineligible",
            Eligibility::Draining { .. } => "draining",
        }
    }

    /// Read back from a node's labels.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Eligibility {
        match labels.get(ELIGIBILITY_LABEL).map(String::as_str) {
            None => Eligibility::Eligible,
            Some("draining") => Eligibility::Draining {
                deadline: labels
                    .get(DRAIN_DEADLINE_LABEL)
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0),
            },
            // Anything else an orchestrator wrote means no new work.
            Some(_) => Eligibility::Ineligible,
        }
    }

    /// Writes itself into a node's labels (and clears what it replaces).
    pub fn to_labels(self, labels: &mut BTreeMap<String, String>) {
        for k in ORCHESTRATOR_LABELS {
            labels.remove(k);
        }
        match self {
            Eligibility::Eligible => {}
            Eligibility::Ineligible => {
                labels.insert(ELIGIBILITY_LABEL.into(), "ineligible".into());
            }
            Eligibility::Draining { deadline } => {
                labels.insert(ELIGIBILITY_LABEL.into(), "draining".into());
                labels.insert(DRAIN_DEADLINE_LABEL.into(), deadline.to_string());
            }
        }
    }
}

impl NodeState {
    pub fn eligibility(&self) -> Eligibility {
        Eligibility::from_labels(&self.info.labels)
    }
}
