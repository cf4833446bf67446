//! The orchestrator: a cheap-to-clone [`Cluster`] handle over the Raft node and the replicated state,
//! the leader-only duties ([`leader`]: evaluation broker + scheduler + planner, node liveness), the
//! per-compute-node session handler ([`session`]) and the pure [`scheduler`].
//!
//! ```text
//!  API ──write(Command)──▶ Raft (client_write) ──log──▶ ClusterState::apply (every orchestrator)
//!                                                        │ applied index (watch)
//!            leader: pending evaluations ──schedule()──▶ Plan ──write──┘
//!            session: desired state of node N ──▶ Run/Cancel ──▶ compute N ──Report──▶ UpdateExecution
//! ```

pub mod leader;
pub mod scheduler;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use caravel_model::command::{Command, CommandResponse};
use caravel_model::state::ClusterState;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::raft::Raft;

/// How long a write may wait for Raft before the API answers 503.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Nanoseconds since the Unix epoch, from this machine's clock (never read inside `apply`).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this orchestrator is not the Raft leader and cannot forward yet (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the write was not committed within {0:?}: no quorum?")]
    Timeout(Duration),
    #[error("raft stopped: {0}")]
    Fatal(String),
}

/// A live compute session on this orchestrator: how to send to the node, and where the answers to
/// log and result requests go.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub tx: mpsc::Sender<ToCompute>,
    routes: Arc<Mutex<HashMap<u64, mpsc::Sender<ToOrchestrator>>>>,
}

impl SessionHandle {
    pub fn new(tx: mpsc::Sender<ToCompute>) -> Self {
        SessionHandle {
            tx,
            routes: Default::default(),
        }
    }
    /// Delivers a streamed answer to whoever asked. A reader that does not keep up within a few
    /// seconds loses its stream (it must not stall the session's reports).
    pub async fn route(&self, request_id: u64, msg: ToOrchestrator, last: bool) -> bool {
        let tx = {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            if last {
                routes.remove(&request_id)
            } else {
                routes.get(&request_id).cloned()
            }
        };
        let Some(tx) = tx else { return false };
        match tokio::time::timeout(Duration::from_secs(5), tx.send(msg)).await {
            Ok(Ok(())) => true,
            _ => {
                self.routes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&request_id);
                let _ = self.tx.try_send(ToCompute::CancelRequest { request_id });
                false
            }
        }
    }
}

/// A request streamed from a compute node (logs, results). Dropping it tells the node to stop.
#[derive(Debug)]
pub struct NodeStream {
    pub rx: mpsc::Receiver<ToOrchestrator>,
    request_id: u64,
    session: SessionHandle,
}

impl Drop for NodeStream {
    fn drop(&mut self) {
        let removed = self
            .session
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.request_id);
        if removed.is_some() {
            let _ = self.session.tx.try_send(ToCompute::CancelRequest {
                request_id: self.request_id,
            });
        }
    }
}

struct Inner {
    raft: Raft,
    node_id: u64,
    state: Arc<RwLock<ClusterState>>,
    applied: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    /// Last heartbeat seen per compute node (leader's liveness input), Unix ns.
    heartbeats: Mutex<HashMap<String, i64>>,
    next_request: AtomicU64,
    disconnect_timeout: Duration,
}

/// The orchestrator's handle: cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

impl Cluster {
    pub fn new(
        raft: Raft,
        node_id: u64,
        state: Arc<RwLock<ClusterState>>,
        applied: watch::Receiver<u64>,
        metrics: Arc<Metrics>,
        disconnect_timeout: Duration,
    ) -> Self {
        Cluster {
            inner: Arc::new(Inner {
                raft,
                node_id,
                state,
                applied,
                metrics,
                sessions: Default::default(),
                heartbeats: Default::default(),
                next_request: AtomicU64::new(1),
                disconnect_timeout,
            }),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    pub fn disconnect_timeout(&self) -> Duration {
        self.inner.disconnect_timeout
    }

    /// Reads the local replica. Never hold the result across an `.await`.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        let s = self.inner.state.read().unwrap_or_else(|e| e.into_inner());
        f(&s)
    }

    /// A linearizable read: confirm leadership with a quorum (read-index), wait until this replica
    /// applied that index, then read.
    pub async fn read_linearizable<R>(
        &self,
        f: impl FnOnce(&ClusterState) -> R,
    ) -> Result<R, WriteError> {
        let fut = self.inner.raft.ensure_linearizable();
        match tokio::time::timeout(WRITE_TIMEOUT, fut).await {
            Err(_) => return Err(WriteError::Timeout(WRITE_TIMEOUT)),
            Ok(Err(e)) => {
                return Err(match e.forward_to_leader() {
                    Some(f) => WriteError::NotLeader {
                        leader: f.leader_id,
                    },
                    None => WriteError::Fatal(e.to_string()),
                });
            }
            Ok(Ok(_)) => {}
        }
        Ok(self.read(f))
    }

    /// Proposes a command and waits until it is committed and applied here.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        let name = cmd.name();
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(WRITE_TIMEOUT, self.inner.raft.client_write(cmd)).await;
        self.inner.metrics.observe_write(name, started.elapsed());
        match res {
            Err(_) => Err(WriteError::Timeout(WRITE_TIMEOUT)),
            Ok(Ok(r)) => Ok(r.data),
            Ok(Err(e)) => Err(match e.forward_to_leader() {
                Some(f) => WriteError::NotLeader {
                    leader: f.leader_id,
                },
                None => WriteError::Fatal(e.to_string()),
            }),
        }
    }

    /// Wakes whenever this replica applies new entries.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().current_leader == Some(self.inner.node_id)
    }

    pub fn register_session(&self, node_id: &str, h: SessionHandle) {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), h);
    }
    pub fn unregister_session(&self, node_id: &str, tx: &mpsc::Sender<ToCompute>) {
        let mut m = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if m.get(node_id).is_some_and(|h| h.tx.same_channel(tx)) {
            m.remove(node_id);
        }
    }
    pub fn session(&self, node_id: &str) -> Option<SessionHandle> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .cloned()
    }
    pub fn connected_nodes(&self) -> usize {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn heartbeat(&self, node_id: &str, at: i64) {
        self.inner
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), at);
    }
    pub fn last_heartbeat(&self, node_id: &str) -> Option<i64> {
        self.inner
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
    }

    /// Opens a streamed request to a compute node through its session.
    pub async fn open_stream(
        &self,
        node_id: &str,
        make: impl FnOnce(u64) -> ToCompute,
    ) -> Option<NodeStream> {
        let session = self.session(node_id)?;
        let request_id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(256);
        session
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request_id, tx);
        let stream = NodeStream {
            rx,
            request_id,
            session: session.clone(),
        };
        session.tx.send(make(request_id)).await.ok()?;
        Some(stream)
    }
}
