//! `Evaluation`: a reason to reconcile a job (reference §4.4). Evaluations live in the replicated
//! state, so none is lost or processed twice across a change of leader.

use serde::{Deserialize, Serialize};

pub mod status {
    pub const PENDING: &str = "pending";
    pub const COMPLETE: &str = "complete";
    pub const FAILED: &str = "failed";
    pub const CANCELED: &str = "canceled";
    pub const BLOCKED: &str = "blocked";
}

pub mod trigger {
    pub const JOB_REGISTER: &str = "job-register";
    pub const JOB_UPDATE: &str = "job-update";
    pub const JOB_CANCEL: &str = "job-cancel";
    pub const JOB_QUEUE: &str = "job-queue";
    /// A batch or ops job's TotalTimeout ends.
    pub const JOB_TIMEOUT: &str = "job-timeout";
    pub const EXEC_UPDATE: &str = "exec-update";
    pub const EXEC_FAILURE: &str = "exec-failure";
    pub const NODE_JOIN: &str = "node-join";
    pub const NODE_LEAVE: &str = "node-leave";
    /// The disconnect grace period of executions on a DISCONNECTED node ends.
    pub const NODE_GRACE: &str = "node-disconnect-grace";
    /// An operator changed a node's eligibility, or its drain deadline came.
    pub const NODE_DRAIN: &str = "node-drain";
    /// A service's or daemon's update looks again once a new copy may have become healthy.
    pub const JOB_ROLLOUT: &str = "job-rollout";
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Evaluation {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default, rename = "JobID")]
    pub job_id: String,
    #[serde(default)]
    pub triggered_by: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub comment: String,
    /// Unix ns before which the broker must not hand it out (delayed evaluations).
    #[serde(default)]
    pub wait_until: i64,
    #[serde(default)]
    pub create_time: i64,
    #[serde(default)]
    pub modify_time: i64,
}

impl Evaluation {
    pub fn new(id: String, job: &crate::Job, triggered_by: &str, now: i64) -> Self {
        Evaluation {
            id,
            namespace: job.namespace.clone(),
            job_id: job.id.clone(),
            triggered_by: triggered_by.to_string(),
            priority: job.priority,
            kind: job.kind.clone(),
            status: status::PENDING.to_string(),
            comment: String::new(),
            wait_until: 0,
            create_time: now,
            modify_time: now,
        }
    }
}
