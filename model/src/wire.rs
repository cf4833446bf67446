//! Messages between an orchestrator and a compute node: commands down, reports up. The in-process
//! seam (`net::inproc`) carries them as values; the QUIC sessions will carry them through
//! [`crate::codec`]. Append-only enums (see the codec's rules).

use serde::{Deserialize, Serialize};

use crate::execution::{Execution, ExecutionUpdate};
use crate::node::NodeInfo;
use crate::spec::Job;

/// Orchestrator → compute node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToCompute {
    /// Run this execution of this job version (idempotent on the execution id).
    Run {
        execution: Box<Execution>,
        job: Box<Job>,
    },
    /// Stop an execution (idempotent).
    Cancel {
        execution_id: String,
        reason: String,
    },
    /// Every report up to and including `seq` is committed; drop them from the outbox.
    Ack { seq: u64 },
    /// Stream an execution's logs (`follow`: until it ends), starting at byte `offset` of each stream.
    Logs {
        request_id: u64,
        execution_id: String,
        follow: bool,
        tail: bool,
    },
    /// Send an execution's published results (the local publisher's tar.gz).
    FetchResult {
        request_id: u64,
        execution_id: String,
    },
    /// The client went away; stop streaming for this request.
    CancelRequest { request_id: u64 },
    /// Stream an execution's logs from byte offsets of stdout and stderr (a resumed `Logs`: the
    /// offsets are the `end_offset`s of the last lines delivered). Answered with `LogLineAt`.
    LogsFrom {
        request_id: u64,
        execution_id: String,
        follow: bool,
        stdout_offset: u64,
        stderr_offset: u64,
    },
}

/// Compute node → orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToOrchestrator {
    /// First message of a session: who I am, what I hold, the last report sequence I sent.
    Hello { info: Box<NodeInfo>, last_seq: u64 },
    /// A state change, numbered per node.
    Report { seq: u64, update: ExecutionUpdate },
    /// Liveness and current capacity.
    Heartbeat { info: Box<NodeInfo> },
    /// A log line of a `Logs` request. `stream`: 1 stdout, 2 stderr (Bacalhau's numbering).
    LogLine {
        request_id: u64,
        stream: u8,
        line: String,
    },
    /// End of a `Logs` request, with an error if it failed.
    LogEnd { request_id: u64, error: String },
    /// A chunk of a `FetchResult` answer.
    ResultChunk { request_id: u64, data: Vec<u8> },
    /// End of a `FetchResult` answer.
    ResultEnd { request_id: u64, error: String },
    /// The executions this node holds and has not finished (its inventory), sent after `Hello` and
    /// with every heartbeat. The orchestrator cancels any of them the replicated state says must not
    /// run (stopped, replaced after the disconnect grace period, or unknown).
    Inventory { running: Vec<String> },
    /// A log line of a `LogsFrom` request, with the byte offset in its stream just past the line, so
    /// a request resumed from that offset neither repeats nor loses a line.
    LogLineAt {
        request_id: u64,
        stream: u8,
        line: String,
        end_offset: u64,
    },
}

/// A compute node without a certificate asks for one (ALPN `caravel-join/1` on the compute port;
/// one request frame, one answer frame).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// `cvj1.<id>.<secret>.<ca-sha256>`.
    pub token: String,
    pub node_id: String,
    /// A PKCS#10 request for the node's fresh key (only its public key is used).
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The orchestrator's answer to a [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JoinResponse {
    Accepted {
        /// PEM certificate of the node (role compute), and the cluster CA's.
        cert_pem: String,
        ca_pem: String,
        labels: std::collections::BTreeMap<String, String>,
    },
    Refused {
        reason: String,
    },
}
