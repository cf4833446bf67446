//! `Execution`: one run of a job on one node (reference §3.8).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{Job, SpecConfig};
use crate::states::{ExecutionDesiredState, ExecutionStateType, State};

/// Resources allocated to a task, in numbers: CPU cores, bytes, GPU count.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resources {
    #[serde(default, rename = "CPU")]
    pub cpu: f64,
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub disk: u64,
    #[serde(default, rename = "GPU")]
    pub gpu: u64,
}

impl Resources {
    /// From a task's quantity strings (already validated; bad values count as zero).
    pub fn from_config(c: &crate::spec::ResourcesConfig) -> Self {
        Resources {
            cpu: crate::quantity::parse_cpu(&c.cpu)
                .map(|m| m as f64 / 1000.0)
                .unwrap_or(0.0),
            memory: crate::quantity::parse_bytes(&c.memory).unwrap_or(0),
            disk: crate::quantity::parse_bytes(&c.disk).unwrap_or(0),
            gpu: c.gpu.parse().unwrap_or(0),
        }
    }
    pub fn fits_in(&self, avail: &Resources) -> bool {
        self.cpu <= avail.cpu + 1e-9
            && self.memory <= avail.memory
            && self.disk <= avail.disk
            && self.gpu <= avail.gpu
    }
    pub fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.disk += o.disk;
        self.gpu += o.gpu;
    }
    pub fn sub(&mut self, o: &Resources) {
        self.cpu = (self.cpu - o.cpu).max(0.0);
        self.memory = self.memory.saturating_sub(o.memory);
        self.disk = self.disk.saturating_sub(o.disk);
        self.gpu = self.gpu.saturating_sub(o.gpu);
    }
    /// Every dimension multiplied by `factor` (an over-subscription limit).
    pub fn scaled(&self, factor: f64) -> Resources {
        Resources {
            cpu: self.cpu * factor,
            memory: (self.memory as f64 * factor) as u64,
            disk: (self.disk as f64 * factor) as u64,
            gpu: (self.gpu as f64 * factor) as u64,
        }
    }
}

/// `cpu 1.5, memory 512.0 MiB, disk 0 B, gpu 0`: for messages.
impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu {}, memory {}, disk {}, gpu {}",
            (self.cpu * 1000.0).round() / 1000.0,
            crate::quantity::format_bytes(self.memory),
            crate::quantity::format_bytes(self.disk),
            self.gpu
        )
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocatedResources {
    #[serde(default)]
    pub tasks: BTreeMap<String, Resources>,
}

/// `RunCommandResult`: the first 2 KB of stdout/stderr, the exit code and an executor error.
/// Note Bacalhau's lower-case `stderr` JSON key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunOutput {
    #[serde(rename = "Stdout", default)]
    pub stdout: String,
    #[serde(rename = "StdoutTruncated", default)]
    pub stdout_truncated: bool,
    #[serde(rename = "stderr", alias = "Stderr", default)]
    pub stderr: String,
    #[serde(rename = "StderrTruncated", default)]
    pub stderr_truncated: bool,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
    #[serde(rename = "ErrorMsg", default)]
    pub error_msg: String,
}

/// Bytes of stdout/stderr kept in `RunOutput`, as Bacalhau.
pub const RUN_OUTPUT_PREVIEW: usize = 2048;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Execution {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default, rename = "EvalID")]
    pub eval_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "NodeID")]
    pub node_id: String,
    #[serde(default, rename = "JobID")]
    pub job_id: String,
    /// A copy of the job, filled in by the API (not stored with each execution).
    #[serde(default)]
    pub job: Option<Box<Job>>,
    #[serde(default)]
    pub job_version: u64,
    #[serde(default)]
    pub allocated_resources: AllocatedResources,
    #[serde(default)]
    pub desired_state: State<ExecutionDesiredState>,
    #[serde(default)]
    pub compute_state: State<ExecutionStateType>,
    #[serde(default)]
    pub published_result: SpecConfig,
    #[serde(default)]
    pub run_output: Option<RunOutput>,
    #[serde(default)]
    pub previous_execution: String,
    #[serde(default)]
    pub next_execution: String,
    #[serde(default, rename = "FollowupEvalID")]
    pub followup_eval_id: String,
    #[serde(default)]
    pub partition_index: i32,
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub create_time: i64,
    #[serde(default)]
    pub modify_time: i64,
}

impl Execution {
    pub fn is_terminal(&self) -> bool {
        self.compute_state.state_type.is_terminal()
    }
    /// Neither terminal on the node nor asked to stop.
    pub fn is_live(&self) -> bool {
        !self.is_terminal() && self.desired_state.state_type != ExecutionDesiredState::Stopped
    }
}

/// A compute node's report of an execution's new state (carried up the session, applied once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionUpdate {
    pub execution_id: String,
    pub state: ExecutionStateType,
    pub message: String,
    pub run_output: Option<RunOutput>,
    pub published_result: Option<SpecConfig>,
    /// Compute-side event topic for the history (`Running Execution`, `Publishing Results`, …).
    pub topic: String,
    /// When the node observed the change (Unix ns, from the node's clock).
    pub time: i64,
}
