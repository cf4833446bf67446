//! `JobHistory` and `Event` (reference §3.9).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod topic {
    pub const SUBMISSION: &str = "Submission";
    pub const STATE_UPDATE: &str = "State Update";
    pub const SCHEDULING: &str = "Scheduling";
    pub const QUEUEING: &str = "Queueing";
    pub const EXECUTION: &str = "Execution";
    pub const RUNNING: &str = "Running Execution";
    pub const PUBLISHING: &str = "Publishing Results";
    pub const DOWNLOADING: &str = "Downloading Inputs";
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default, with = "crate::time::as_rfc3339")]
    pub timestamp: i64,
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl Event {
    pub fn new(topic: &str, message: impl Into<String>, timestamp: i64) -> Self {
        Event {
            message: message.into(),
            topic: topic.to_string(),
            timestamp,
            details: BTreeMap::new(),
        }
    }
    pub fn error(mut self) -> Self {
        self.details.insert("IsError".into(), "true".into());
        self
    }
    pub fn detail(mut self, k: &str, v: impl Into<String>) -> Self {
        self.details.insert(k.into(), v.into());
        self
    }
}

pub const JOB_LEVEL: &str = "JobLevel";
pub const EXECUTION_LEVEL: &str = "ExecutionLevel";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobHistory {
    #[serde(default)]
    pub seq_num: u64,
    #[serde(default, rename = "Type")]
    pub kind: String,
    #[serde(default, rename = "JobID")]
    pub job_id: String,
    #[serde(default)]
    pub job_version: u64,
    #[serde(default, rename = "ExecutionID")]
    pub execution_id: String,
    #[serde(default)]
    pub event: Event,
    #[serde(default, with = "crate::time::as_rfc3339")]
    pub time: i64,
}
