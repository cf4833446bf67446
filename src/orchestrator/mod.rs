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
pub mod relay;
pub mod scheduler;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use caravel_model::command::{Command, CommandResponse, ExecutionReport};
use caravel_model::state::ClusterState;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::raft::{self, LeaderError, Raft, SelfAddr};
use caravel_net::rpc;
use caravel_raft_store::{NodeAddr, StateMachineStore};

/// How long a write may wait for Raft before the API answers 503.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while the group has no leader (an election takes about a second).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

tokio::task_local! {
    /// Set by the API for requests that opted into stale reads (see `api::stale_requested`).
    pub static STALE_READS: bool;
}

/// Nanoseconds since the Unix epoch, from this machine's clock (never read inside `apply`).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error(
        "no orchestrator leads the group: {0} (the cluster has no quorum; retry when a majority of orchestrators is up)"
    )]
    NoLeader(String),
    #[error("the write was not committed within {0:?}: the cluster may have lost its quorum")]
    Timeout(Duration),
    #[error("the leader did not answer; the write may or may not have been applied: {0}")]
    Unknown(String),
    #[error("{0}")]
    Refused(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl From<LeaderError> for WriteError {
    fn from(e: LeaderError) -> Self {
        match e {
            LeaderError::NotLeader(l) => {
                WriteError::NoLeader(format!("the leader moved (now {l:?})"))
            }
            LeaderError::Timeout(ms) => WriteError::Timeout(Duration::from_millis(ms)),
            LeaderError::Refused(m) => WriteError::Refused(m),
            LeaderError::Fatal(m) => WriteError::Fatal(m),
            LeaderError::Unknown(m) => WriteError::Unknown(m),
        }
    }
}

/// A live compute session on this orchestrator: how to send to the node, and where the answers to
/// log and result requests go.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub tx: mpsc::Sender<ToCompute>,
    routes: Arc<Mutex<HashMap<u64, mpsc::Sender<ToOrchestrator>>>>,
    /// The QUIC connection's path statistics (none for in-process sessions).
    pub link: Option<caravel_net::session::LinkStats>,
    /// SHA-256 of the node's certificate (empty for in-process sessions).
    pub fingerprint: String,
}

impl SessionHandle {
    pub fn new(tx: mpsc::Sender<ToCompute>) -> Self {
        SessionHandle {
            tx,
            routes: Default::default(),
            link: None,
            fingerprint: String::new(),
        }
    }
    pub fn with_fingerprint(mut self, fingerprint: String) -> Self {
        self.fingerprint = fingerprint;
        self
    }
    pub fn with_link(mut self, link: Option<caravel_net::session::LinkStats>) -> Self {
        self.link = link;
        self
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
    /// The state machine, for per-node change notifications.
    changes: StateMachineStore,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    /// Last heartbeat seen per compute node (leader's liveness input), Unix ns.
    heartbeats: Mutex<HashMap<String, i64>>,
    next_request: AtomicU64,
    disconnect_timeout: Duration,
    /// Calls to other orchestrators (None: a group of one without TLS).
    peers: Option<rpc::Client>,
    me: SelfAddr,
    /// Compute reports, and job submissions, waiting for the Raft entry they will share.
    reports: Lane<Vec<ExecutionReport>>,
    submissions: Lane<Command>,
}

/// Who waits for the answers to an item of a group-commit lane: one per command it holds.
type Reply = tokio::sync::oneshot::Sender<Result<Vec<CommandResponse>, WriteError>>;

/// A group-commit lane: items waiting for the Raft entry they will share (started with the first).
struct Lane<T> {
    tx: std::sync::OnceLock<mpsc::Sender<(T, usize, Reply)>>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            tx: std::sync::OnceLock::new(),
        }
    }
}

/// How a lane fills its entries.
struct LaneRules<T> {
    /// What the lane's commands are called in errors.
    what: &'static str,
    /// Most commands in one entry.
    max_commands: usize,
    /// Most weight (roughly, encoded bytes) in one entry; a heavier item goes alone.
    max_weight: usize,
    /// Entries being committed at once.
    in_flight: usize,
    /// How many commands an item holds (each gets its own answer).
    commands: fn(&T) -> usize,
    /// The entry of the items gathered: answered, when it holds one command, as that command is,
    /// and otherwise with [`CommandResponse::Plans`], one answer per command in order.
    entry: fn(Vec<T>) -> Command,
    /// Records how many commands an entry carried.
    observe: fn(&Metrics, usize),
}

/// Most reports in one Raft entry.
pub const MAX_REPORTS_PER_ENTRY: usize = 256;
/// Most bytes of output and messages in one entry of reports (a report's `RunOutput` may be large).
pub const MAX_REPORT_BYTES_PER_ENTRY: usize = 1 << 20;
/// Entries of reports being committed at once.
const REPORT_ENTRIES_IN_FLIGHT: usize = 4;

/// The report lane's item: one session's reports, in the node's order (they are applied in it).
const REPORTS: LaneRules<Vec<ExecutionReport>> = LaneRules {
    what: "report",
    max_commands: MAX_REPORTS_PER_ENTRY,
    max_weight: MAX_REPORT_BYTES_PER_ENTRY,
    in_flight: REPORT_ENTRIES_IN_FLIGHT,
    commands: Vec::len,
    entry: |batches| {
        let mut all: Vec<ExecutionReport> = batches.into_iter().flatten().collect();
        if all.len() == 1 {
            all.remove(0).into_command()
        } else {
            Command::UpdateExecutions(all)
        }
    },
    observe: Metrics::observe_report_batch,
};

/// Most job submissions in one Raft entry.
pub const MAX_SUBMISSIONS_PER_ENTRY: usize = 128;
/// Most bytes of job specs in one entry of submissions (a spec may carry inline inputs; one larger
/// than this is an entry of its own, as before grouping).
pub const MAX_SUBMISSION_BYTES_PER_ENTRY: usize = 1 << 20;

const SUBMISSIONS: LaneRules<Command> = LaneRules {
    what: "submission",
    max_commands: MAX_SUBMISSIONS_PER_ENTRY,
    max_weight: MAX_SUBMISSION_BYTES_PER_ENTRY,
    in_flight: 4,
    commands: |_| 1,
    entry: |mut cmds| {
        if cmds.len() == 1 {
            cmds.remove(0)
        } else {
            Command::Batch(cmds)
        }
    },
    observe: Metrics::observe_submission_batch,
};

/// Roughly what a report adds to an entry.
pub(crate) fn update_weight(u: &caravel_model::execution::ExecutionUpdate) -> usize {
    let out = u
        .run_output
        .as_ref()
        .map_or(0, |o| o.stdout.len() + o.stderr.len());
    256 + out + u.message.len()
}

/// The answers to an entry of `n` commands: its own answer when it is one command, else one per
/// command of its [`CommandResponse::Plans`].
fn answers_of(
    what: &str,
    n: usize,
    answer: Result<CommandResponse, WriteError>,
) -> Result<Vec<CommandResponse>, WriteError> {
    match answer? {
        CommandResponse::Plans(rs) if rs.len() == n => Ok(rs),
        one if n == 1 && !matches!(one, CommandResponse::Plans(_)) => Ok(vec![one]),
        other => Err(WriteError::Fatal(format!(
            "{n} {what}s were answered with {other:?}, not one answer each"
        ))),
    }
}

/// Group commit: whatever the lane's writers sent while the previous entries were being committed
/// goes into one entry (up to the rules' commands, and weight unless the first item alone is
/// heavier), at most `in_flight` entries at a time; a lone command is written as the command it is.
/// Each writer gets its own commands' answers. Items keep their order within an entry; a writer
/// that needs its items applied in order waits for one before it sends the next. Holds only a weak
/// reference: it ends with the last handle.
async fn group_commit<T: Send + 'static>(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::Receiver<(T, usize, Reply)>,
    rules: &'static LaneRules<T>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(rules.in_flight));
    // An item that did not fit the last entry: the first of the next.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Gathered once an entry may go: what piled up meanwhile rides along.
        let (mut weight, mut commands) = (first.1, (rules.commands)(&first.0));
        let mut batch = vec![first];
        while commands < rules.max_commands {
            match rx.try_recv() {
                Ok(p)
                    if weight + p.1 > rules.max_weight
                        || commands + (rules.commands)(&p.0) > rules.max_commands =>
                {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    weight += p.1;
                    commands += (rules.commands)(&p.0);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let cluster = Cluster { inner };
        tokio::spawn(async move {
            let _permit = permit;
            let mut counts = Vec::with_capacity(batch.len());
            let mut items = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for (item, _, reply) in batch {
                counts.push((rules.commands)(&item));
                items.push(item);
                replies.push(reply);
            }
            (rules.observe)(&cluster.inner.metrics, commands);
            let answer = cluster.write((rules.entry)(items)).await;
            match answers_of(rules.what, commands, answer) {
                Ok(all) => {
                    let mut all = all.into_iter();
                    for (reply, n) in replies.into_iter().zip(counts) {
                        let _ = reply.send(Ok(all.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// What one attempt at a write came to.
enum Attempt {
    Done(CommandResponse),
    /// Surely not proposed: no leader known, a refused connection, a member that did not lead.
    NotProposed,
    /// Perhaps proposed: the leader died, moved or did not answer in time.
    Unknown(String),
}

/// How this orchestrator relates to the others and to compute nodes.
#[derive(Debug, Clone)]
pub struct Links {
    /// Without a heartbeat for this long a compute node is DISCONNECTED.
    pub disconnect_timeout: Duration,
    /// Calls to other orchestrators (None: a group of one without TLS).
    pub peers: Option<rpc::Client>,
    pub me: SelfAddr,
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
        changes: StateMachineStore,
        metrics: Arc<Metrics>,
        links: Links,
    ) -> Self {
        let applied = changes.subscribe_applied();
        let Links {
            disconnect_timeout,
            peers,
            me,
        } = links;
        Cluster {
            inner: Arc::new(Inner {
                raft,
                node_id,
                state,
                applied,
                changes,
                metrics,
                sessions: Default::default(),
                heartbeats: Default::default(),
                next_request: AtomicU64::new(1),
                disconnect_timeout,
                peers,
                me,
                reports: Lane::default(),
                submissions: Lane::default(),
            }),
        }
    }

    /// Writes reports of one compute node, in its order, in one Raft entry with the reports of
    /// other sessions waiting at the same time (a [`Command::UpdateExecutions`]); answers each as
    /// [`Cluster::write`] of its [`Command::UpdateExecution`] would. The node's next reports must
    /// wait for these answers: they are deduplicated by sequence number, so they must apply in order.
    pub async fn write_reports(
        &self,
        reports: Vec<ExecutionReport>,
    ) -> Result<Vec<CommandResponse>, WriteError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let weight = reports.iter().map(|r| update_weight(&r.update)).sum();
        self.write_in(&self.inner.reports, &REPORTS, reports, weight)
            .await
    }

    /// Writes a job submission (a [`Command::SubmitJob`]) in one Raft entry with the submissions
    /// of other clients waiting at the same time (a [`Command::Batch`]); `weight` is roughly its
    /// encoded size (the request body's). Answers as [`Cluster::write`] of the command would.
    pub async fn write_submission(
        &self,
        cmd: Command,
        weight: usize,
    ) -> Result<CommandResponse, WriteError> {
        let mut answers = self
            .write_in(&self.inner.submissions, &SUBMISSIONS, cmd, weight)
            .await?;
        answers
            .pop()
            .ok_or_else(|| WriteError::Fatal("a submission was answered with nothing".to_string()))
    }

    async fn write_in<T: Send + 'static>(
        &self,
        lane: &Lane<T>,
        rules: &'static LaneRules<T>,
        item: T,
        weight: usize,
    ) -> Result<Vec<CommandResponse>, WriteError> {
        let tx = lane.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4 * rules.max_commands);
            tokio::spawn(group_commit(Arc::downgrade(&self.inner), rx, rules));
            tx
        });
        let stopped = || WriteError::Fatal(format!("the {} writer stopped", rules.what));
        let (reply, answer) = tokio::sync::oneshot::channel();
        if tx.send((item, weight, reply)).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
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

    /// This member's addresses.
    pub fn me(&self) -> &SelfAddr {
        &self.inner.me
    }
    pub fn peers(&self) -> Option<&rpc::Client> {
        self.inner.peers.as_ref()
    }

    /// The leader's id and address, as this member knows them.
    pub fn leader(&self) -> Option<(u64, NodeAddr)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Waits until this replica has applied `index` (or `deadline` passes).
    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), WriteError> {
        let mut rx = self.inner.applied.clone();
        let wait = rx.wait_for(|a| *a >= index);
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(WriteError::Fatal("the state machine stopped".into())),
            Err(_) => Err(WriteError::Timeout(WRITE_TIMEOUT)),
        }
    }

    /// A linearizable read: the leader confirms its leadership with a quorum (read-index); this
    /// replica waits until it has applied that index, then reads. A follower asks the leader for
    /// the index over QUIC, so every member answers linearizably.
    pub async fn read_linearizable<R>(
        &self,
        f: impl FnOnce(&ClusterState) -> R,
    ) -> Result<R, WriteError> {
        if STALE_READS.try_with(|s| *s).unwrap_or(false) {
            return Ok(self.read(f));
        }
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let index = loop {
            let local = tokio::time::timeout_at(deadline, self.inner.raft.get_read_log_id()).await;
            let leader = match local {
                Err(_) => return Err(WriteError::Timeout(WRITE_TIMEOUT)),
                Ok(Ok((read, _))) => break read.map(|l| l.index).unwrap_or(0),
                Ok(Err(e)) => match e.forward_to_leader() {
                    Some(f) => f.leader_id,
                    None => return Err(WriteError::Fatal(e.to_string())),
                },
            };
            if let (Some(_), Some((_, node)), Some(client)) = (leader, self.leader(), self.peers())
            {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match raft::call_peer::<_, Result<u64, LeaderError>>(
                    client,
                    &node,
                    raft::kind::READ_INDEX,
                    &(),
                    left,
                )
                .await
                {
                    Ok(Ok(i)) => break i,
                    Ok(Err(LeaderError::NotLeader(_))) => {}
                    Ok(Err(e)) => return Err(e.into()),
                    Err(e) if e.is_unreachable() => {}
                    Err(rpc::Error::Timeout { .. }) => {
                        return Err(WriteError::Timeout(WRITE_TIMEOUT));
                    }
                    Err(e) => return Err(WriteError::Unknown(e.to_string())),
                }
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(WriteError::NoLeader(format!(
                    "no leader known after {WRITE_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        self.wait_applied(index, deadline).await?;
        self.inner.metrics.observe_read_index(started.elapsed());
        Ok(self.read(f))
    }

    /// Proposes a command and waits until it is committed and applied here. On a follower the
    /// command is forwarded to the leader over QUIC; the caller cannot tell the difference. A
    /// command is re-sent when it certainly was not proposed (no leader, a refused connection, a
    /// member that did not lead when asked), or when its outcome is unknown (its leader died or
    /// moved mid-write) and applying it twice changes nothing ([`Command::retry_safe`]: job
    /// submissions, compute reports); any other command whose outcome is unknown is answered
    /// [`WriteError::Unknown`]. A forward is abandoned as soon as this member sees the leader
    /// replaced, so a dead leader costs an election, not a timeout.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        let name = cmd.name();
        let started = std::time::Instant::now();
        let res = self.write_inner(cmd).await;
        self.inner.metrics.observe_write(name, started.elapsed());
        res
    }

    async fn write_inner(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let retry_safe = cmd.retry_safe();
        // Shared, not copied, by every attempt (a batch of job specs is large).
        let cmd = Arc::new(cmd);
        // Why an earlier attempt's outcome is unknown: running out of time must then not say
        // that the write surely was not applied.
        let mut unknown: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = match raft::propose(&self.inner.raft, cmd.clone(), left).await {
                Ok((resp, _)) => Attempt::Done(resp),
                Err(LeaderError::NotLeader(_)) => self.forward_once(&cmd, deadline).await?,
                Err(LeaderError::Unknown(m)) => Attempt::Unknown(m),
                Err(LeaderError::Timeout(_)) => return Err(WriteError::Timeout(WRITE_TIMEOUT)),
                Err(e) => return Err(e.into()),
            };
            match attempt {
                Attempt::Done(resp) => return Ok(resp),
                Attempt::NotProposed => {}
                Attempt::Unknown(m) if retry_safe => {
                    self.inner.metrics.unknown_outcome_write("resent");
                    unknown = Some(m);
                }
                Attempt::Unknown(m) => {
                    self.inner.metrics.unknown_outcome_write("unknown");
                    return Err(WriteError::Unknown(m));
                }
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(match unknown {
                    Some(m) => WriteError::Unknown(format!(
                        "{m}; sent again until {WRITE_TIMEOUT:?} had passed"
                    )),
                    None => WriteError::NoLeader(format!(
                        "no leader was reachable for {WRITE_TIMEOUT:?}"
                    )),
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Sends a write to the leader this member knows. Abandoned as soon as this member sees another
    /// leader, or none (a dead leader's QUIC connection may look open until its idle timeout, and
    /// the election that replaces it is what this member notices first).
    async fn forward_once(
        &self,
        cmd: &Command,
        deadline: tokio::time::Instant,
    ) -> Result<Attempt, WriteError> {
        let (Some((leader, node)), Some(client)) = (self.leader(), self.peers()) else {
            return Ok(Attempt::NotProposed);
        };
        if leader == self.inner.node_id {
            // Elected meanwhile: proposed here on the next attempt.
            return Ok(Attempt::NotProposed);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.inner.metrics.forwarded_write();
        let call = raft::call_peer::<_, raft::ForwardAnswer>(
            client,
            &node,
            raft::kind::FORWARD_WRITE,
            cmd,
            left,
        );
        let mut metrics = self.inner.raft.metrics();
        let moved = async move {
            let _ = metrics.wait_for(|m| m.current_leader != Some(leader)).await;
        };
        let answer = tokio::select! {
            biased;
            a = call => a,
            () = moved => {
                return Ok(Attempt::Unknown(format!(
                    "the leader {} was replaced with the write in flight; it may or may not be committed",
                    node.name
                )));
            }
        };
        Ok(match answer {
            Ok(Ok((resp, index))) => {
                // Read-your-writes on this member too.
                self.wait_applied(index, deadline).await?;
                Attempt::Done(resp)
            }
            Ok(Err(LeaderError::NotLeader(_))) | Err(rpc::Error::Connect { .. }) => {
                Attempt::NotProposed
            }
            Ok(Err(LeaderError::Unknown(m))) => Attempt::Unknown(m),
            Ok(Err(e)) => return Err(e.into()),
            Err(rpc::Error::Timeout { .. }) => Attempt::Unknown(format!(
                "no answer from the leader {} within {left:?}",
                node.name
            )),
            Err(e) => Attempt::Unknown(e.to_string()),
        })
    }

    /// Wakes whenever this replica applies new entries.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    /// Wakes when this replica applies an entry that changed an execution on `node_id` (or installs
    /// a snapshot).
    pub fn subscribe_node(&self, node_id: &str) -> watch::Receiver<u64> {
        self.inner.changes.subscribe_node(node_id)
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

    /// The QUIC sessions this member holds: (node, certificate fingerprint).
    pub fn session_fingerprints(&self) -> Vec<(String, String)> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, h)| h.link.is_some())
            .map(|(n, h)| (n.clone(), h.fingerprint.clone()))
            .collect()
    }

    /// Path statistics of the QUIC sessions this member holds, by node.
    pub fn session_links(&self) -> Vec<(String, caravel_net::session::LinkStats)> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(n, h)| h.link.clone().map(|l| (n.clone(), l)))
            .collect()
    }

    /// Records a heartbeat (keeps the latest when relayed ones arrive out of order).
    pub fn heartbeat(&self, node_id: &str, at: i64) {
        let mut m = self
            .inner
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let e = m.entry(node_id.to_string()).or_insert(at);
        *e = (*e).max(at);
    }

    /// Heartbeats of the compute nodes whose sessions this member holds, as (node, ms ago).
    pub fn local_heartbeats(&self) -> Vec<(String, u64)> {
        let sessions: Vec<String> = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let now = now_ns();
        sessions
            .into_iter()
            .filter_map(|n| {
                let at = self.last_heartbeat(&n)?;
                Some((n, ((now - at).max(0) / 1_000_000) as u64))
            })
            .collect()
    }
    pub fn last_heartbeat(&self, node_id: &str) -> Option<i64> {
        self.inner
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
    }

    /// Finds the other member that holds `node_id`'s compute session (to relay through it, see
    /// [`relay`]). Asks every member at once, each for at most a second.
    pub async fn locate_session(&self, node_id: &str) -> Option<NodeAddr> {
        let client = self.peers()?.clone();
        let me = self.node_id();
        let members: Vec<NodeAddr> = {
            let m = self.raft().metrics().borrow().clone();
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != me)
                .map(|(_, n)| n.clone())
                .collect()
        };
        let asks = members.into_iter().map(|n| {
            let client = client.clone();
            let node_id = node_id.to_string();
            async move {
                // The answer is the holder's API address (kept for older members); who answered
                // is what counts.
                crate::raft::call_peer::<_, Option<String>>(
                    &client,
                    &n,
                    crate::raft::kind::SESSION_AT,
                    &node_id,
                    Duration::from_secs(1),
                )
                .await
                .ok()
                .flatten()
                .map(|_| n)
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next()
    }

    /// Closes the compute session of `node_id` held here, with a reason the node logs (an operator
    /// rejected or deleted it). Returns whether there was one.
    pub fn close_session(&self, node_id: &str, reason: &str) -> bool {
        let h = self.session(node_id);
        match h.and_then(|h| h.link) {
            Some(link) => {
                link.close_revoked(reason);
                true
            }
            None => false,
        }
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
