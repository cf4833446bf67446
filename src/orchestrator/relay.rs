//! Logs and result downloads relayed between orchestrators, over the mutual-TLS peer transport.
//!
//! A client may ask any member for an execution's logs or results; only the member that holds the
//! node's compute session can ask the node. The member asked finds that member (`SESSION_AT`) and
//! opens a streamed peer call to it ([`caravel_net::rpc::Client::call_stream`]); the holder opens
//! the stream to the node and forwards each message as it comes. Nothing crosses between members
//! outside mutual TLS.
//!
//! ```text
//!  client ─HTTP─▶ member A ──call_stream(LOGS|RESULT)──▶ member B ──session──▶ compute node
//!                   ◀──── ToOrchestrator messages, one frame each ◀───────────────┘
//! ```

use std::time::Duration;

use caravel_model::wire::{ToCompute, ToOrchestrator};
use caravel_net::rpc;
use serde::{Deserialize, Serialize};

use super::Cluster;

/// What a member asks the member holding a node's session to stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RelayRequest {
    /// An execution's published results (the local publisher's tar.gz), in chunks.
    Result {
        node_id: String,
        execution_id: String,
    },
    /// An execution's logs: from byte offsets (`offsets`), or the tail.
    Logs {
        node_id: String,
        execution_id: String,
        follow: bool,
        tail: bool,
        offsets: Option<(u64, u64)>,
    },
}

impl RelayRequest {
    fn node_id(&self) -> &str {
        match self {
            RelayRequest::Result { node_id, .. } | RelayRequest::Logs { node_id, .. } => node_id,
        }
    }

    /// The command that asks the node, with the request id of the stream.
    fn command(&self, request_id: u64) -> ToCompute {
        match self.clone() {
            RelayRequest::Result { execution_id, .. } => ToCompute::FetchResult {
                request_id,
                execution_id,
            },
            RelayRequest::Logs {
                execution_id,
                follow,
                tail: true,
                offsets: None,
                ..
            } => ToCompute::Logs {
                request_id,
                execution_id,
                follow,
                tail: true,
            },
            RelayRequest::Logs {
                execution_id,
                follow,
                offsets,
                ..
            } => {
                let (o, e) = offsets.unwrap_or((0, 0));
                ToCompute::LogsFrom {
                    request_id,
                    execution_id,
                    follow,
                    stdout_offset: o,
                    stderr_offset: e,
                }
            }
        }
    }
}

/// Marks an answer that means "the node's session went away here": the asking member resumes
/// through wherever the session is now.
pub const SESSION_LOST: &str = "session was lost";

/// Whether a message ends its stream.
fn is_last(m: &ToOrchestrator) -> bool {
    matches!(
        m,
        ToOrchestrator::LogEnd { .. } | ToOrchestrator::ResultEnd { .. }
    )
}

/// The holder's side: opens the stream to the node and forwards every message.
pub async fn serve(cluster: Cluster, req: RelayRequest) -> Result<rpc::AnswerStream, String> {
    let mut stream = cluster
        .open_stream(req.node_id(), |id| req.command(id))
        .await
        .ok_or_else(|| format!("node {}'s {SESSION_LOST}", req.node_id()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = stream.rx.recv() => m,
                _ = tx.closed() => return,
            };
            let Some(msg) = msg else {
                let _ = tx.send(Err(SESSION_LOST.to_string())).await;
                return;
            };
            let last = is_last(&msg);
            let item = postcard::to_allocvec(&msg).map_err(|e| e.to_string());
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    Ok(rx)
}

/// The asking member's end of a relayed stream.
#[derive(Debug)]
pub struct Relayed {
    stream: rpc::CallStream,
}

/// What a relayed stream yields next.
#[derive(Debug)]
pub enum Relay {
    Message(ToOrchestrator),
    /// The stream ended normally after its last message.
    Ended,
    /// The holder lost the session, or the peer link failed: try again where the session is now.
    Lost(String),
}

impl Relayed {
    pub async fn next(&mut self) -> Relay {
        match self.stream.next().await {
            Some(Ok(b)) => match postcard::from_bytes::<ToOrchestrator>(&b) {
                Ok(m) => Relay::Message(m),
                Err(e) => Relay::Lost(format!("undecodable relayed message: {e}")),
            },
            Some(Err(e)) => Relay::Lost(e.to_string()),
            None => Relay::Ended,
        }
    }
}

/// Opens `req` through the member that holds the node's session, if another member holds it.
pub async fn open(cluster: &Cluster, req: &RelayRequest) -> Option<Relayed> {
    let client = cluster.peers()?.clone();
    let holder = cluster.locate_session(req.node_id()).await?;
    let body = postcard::to_allocvec(req).ok()?;
    let kind = match req {
        RelayRequest::Result { .. } => crate::raft::kind::RELAY_RESULT,
        RelayRequest::Logs { .. } => crate::raft::kind::RELAY_LOGS,
    };
    match client
        .call_stream(
            &holder.raft_addr,
            &holder.name,
            kind,
            &body,
            Duration::from_secs(5),
        )
        .await
    {
        Ok(stream) => Some(Relayed { stream }),
        Err(e) => {
            tracing::debug!(member = %holder.name, error = %e, "cannot relay through the member holding the session");
            None
        }
    }
}
