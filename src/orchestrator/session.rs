//! One compute session on the orchestrator side, whatever carries it (in-process today, QUIC next).
//!
//! Level-triggered: on every applied change to one of the node's executions (and once a second) the
//! handler recomputes what the node should run from the replicated desired state and sends what the
//! node has not been told yet in this session. Reports are committed by a task of their own
//! (`commit_reports`), so that the session goes on reading log lines, result chunks and heartbeats
//! while they commit: what the node sent meanwhile becomes one write, in the node's order (the
//! sequence number makes each apply once, and only in order), acknowledged once it committed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use caravel_model::command::{Command, CommandResponse, ExecutionReport};
use caravel_model::execution::ExecutionUpdate;
use caravel_model::state::ClusterState;
use caravel_model::states::{ExecutionDesiredState, ExecutionStateType};
use caravel_model::wire::{ToCompute, ToOrchestrator};
use caravel_net::OrchestratorEnd;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    Cluster, MAX_REPORT_BYTES_PER_ENTRY, MAX_REPORTS_PER_ENTRY, SessionHandle, WriteError, now_ns,
};

/// How long a new session may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many executions of one inventory are looked at (a bound on a peer's input).
const MAX_INVENTORY: usize = 100_000;
/// A node's record is rewritten at most this often: a node whose every heartbeat changes its labels
/// costs one Raft write per interval, the latest record winning.
pub const NODE_INFO_MIN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the node did not say Hello within {0:?}")]
    NoHello(Duration),
    #[error("the first message of a session must be Hello")]
    Protocol,
    #[error("the node closed the session")]
    Closed,
    #[error("registering the node failed: {0}")]
    Register(String),
}

/// Who the node on a session proved to be, for its registration.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// SHA-256 of its certificate (empty for the in-process node of a hybrid).
    pub fingerprint: String,
    /// A node new to the cluster waits as PENDING (`Orchestrator.NodeManager.ManualApproval`).
    pub manual_approval: bool,
}

/// Serves one session until it closes or `shutdown` fires.
pub async fn serve(
    cluster: Cluster,
    mut end: OrchestratorEnd,
    link: Option<caravel_net::session::LinkStats>,
    admission: Admission,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let first = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        m = tokio::time::timeout(HELLO_TIMEOUT, end.rx.recv()) => m.map_err(|_| Error::NoHello(HELLO_TIMEOUT))?,
    };
    let hello_at = std::time::Instant::now();
    let Some(ToOrchestrator::Hello { info, last_seq }) = first else {
        return Err(if first.is_none() {
            Error::Closed
        } else {
            Error::Protocol
        });
    };
    let node_id = info.node_id.clone();
    if cluster.read(|s| s.nodes.contains_key(&node_id)) {
        cluster.metrics().session_reconnects.inc();
    }
    register(&cluster, &info, &admission, &shutdown).await?;
    let handle = SessionHandle::new(end.tx.clone())
        .with_link(link)
        .with_fingerprint(admission.fingerprint.clone());
    cluster.register_session(&node_id, handle.clone());
    cluster.heartbeat(&node_id, now_ns());
    cluster.metrics().sessions_opened.inc();
    tracing::info!(node = %node_id, "compute session established");
    let committed = cluster.read(|s| s.last_report_seq(&node_id));
    let _ = end.tx.send(ToCompute::Ack { seq: committed }).await;
    // Resynchronised once every report the node had made when it said Hello is committed.
    let resync = Resync {
        hello_at,
        pending: (last_seq > committed).then_some(last_seq),
    };
    if resync.pending.is_none() {
        cluster
            .metrics()
            .session_resync
            .observe(hello_at.elapsed().as_secs_f64());
    } else {
        tracing::info!(node = %node_id, committed, node_last = last_seq, "replaying the node's outbox");
    }
    // Reports not committed when the session ends are dropped: the node replays what it was not
    // acknowledged, on whichever orchestrator it reaches next.
    let session_over = shutdown.child_token();
    let (reports, queued) = mpsc::channel(REPORTS_QUEUED);
    let report_bytes = Arc::new(Semaphore::new(REPORT_BYTES_QUEUED));
    tokio::spawn(commit_reports(
        cluster.clone(),
        node_id.clone(),
        queued,
        end.tx.clone(),
        resync,
        session_over.clone(),
    ));
    let _end_reports = session_over.drop_guard();

    // Only this node's executions matter here: waking on every applied entry cost 10,000 sessions
    // most of an orchestrator's CPU (docs/benchmarks.md).
    let mut applied = cluster.subscribe_node(&node_id);
    let mut told = Told::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_register = std::time::Instant::now();
    let mut pending_info: Option<Box<caravel_model::NodeInfo>> = None;
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            msg = end.rx.recv() => {
                let Some(msg) = msg else { break Err(Error::Closed) };
                match msg {
                    ToOrchestrator::Hello { info, .. } | ToOrchestrator::Heartbeat { info } => {
                        cluster.heartbeat(&node_id, now_ns());
                        // Heartbeats are not replicated (the API shows the latest one seen here);
                        // the node record is written only when it differs from the state, and at
                        // most once per NODE_INFO_MIN_INTERVAL (a later change waits for the tick).
                        if info.node_id != node_id {
                            break Err(Error::Register(format!("the session of node {node_id} sent the record of node {}", info.node_id)));
                        }
                        if registered(&cluster, &info, &admission.fingerprint) {
                            pending_info = None;
                        } else if last_register.elapsed() >= NODE_INFO_MIN_INTERVAL {
                            register(&cluster, &info, &admission, &shutdown).await?;
                            last_register = std::time::Instant::now();
                            pending_info = None;
                        } else {
                            pending_info = Some(info);
                        }
                    }
                    ToOrchestrator::Report { seq, update } => {
                        // Waits only when the reports are that far behind (in number or bytes): the
                        // node keeps them in its outbox meanwhile.
                        let weight = super::update_weight(&update).min(REPORT_BYTES_QUEUED) as u32;
                        let Ok(held) = report_bytes.clone().acquire_many_owned(weight).await else {
                            break Ok(());
                        };
                        if reports.send((seq, update, held)).await.is_err() {
                            break Ok(());
                        }
                    }
                    ToOrchestrator::Inventory { running } => {
                        reconcile(&cluster, &node_id, &end, &running, &mut told).await;
                    }
                    m @ ToOrchestrator::LogLine { request_id, .. }
                    | m @ ToOrchestrator::LogLineAt { request_id, .. }
                    | m @ ToOrchestrator::ResultChunk { request_id, .. } => {
                        handle.route(request_id, m, false).await;
                    }
                    m @ ToOrchestrator::LogEnd { request_id, .. } | m @ ToOrchestrator::ResultEnd { request_id, .. } => {
                        handle.route(request_id, m, true).await;
                    }
                }
            }
            r = applied.changed() => {
                if r.is_err() { break Ok(()) }
                dispatch(&cluster, &node_id, &end, &mut told).await;
            }
            _ = tick.tick() => {
                if pending_info.is_some() && last_register.elapsed() >= NODE_INFO_MIN_INTERVAL
                    && let Some(info) = pending_info.take()
                {
                    register(&cluster, &info, &admission, &shutdown).await?;
                    last_register = std::time::Instant::now();
                }
                dispatch(&cluster, &node_id, &end, &mut told).await
            }
        }
    };
    cluster.unregister_session(&node_id, &end.tx);
    tracing::info!(node = %node_id, ?result, "compute session ended");
    result
}

/// Reports waiting for the session's report task, and their bytes (roughly: messages and output);
/// beyond either the session stops reading the node until they commit (the node keeps them in its
/// outbox). A larger report waits until the queue is empty, so a peer's frames cannot pile up.
const REPORTS_QUEUED: usize = 2 * MAX_REPORTS_PER_ENTRY;
const REPORT_BYTES_QUEUED: usize = 2 * MAX_REPORT_BYTES_PER_ENTRY;

/// A report waiting to be written, with the share of the session's byte budget it holds.
type Queued = (u64, ExecutionUpdate, OwnedSemaphorePermit);

/// When the node's outbox, as it was at Hello, is committed.
struct Resync {
    hello_at: std::time::Instant,
    /// The node's last report at Hello, while not yet committed.
    pending: Option<u64>,
}

/// Commits one session's reports, in the node's order, until the session ends: whatever the node
/// sent while the last write was committing becomes the next write (up to an entry's reports and
/// bytes), and the node is acknowledged up to its last report once it committed. One write at a
/// time: a node's reports are deduplicated by sequence number, so a later one applied first would
/// make the earlier ones duplicates.
async fn commit_reports(
    cluster: Cluster,
    node_id: String,
    mut queued: mpsc::Receiver<Queued>,
    acks: mpsc::Sender<ToCompute>,
    mut resync: Resync,
    session_over: CancellationToken,
) {
    let metrics = cluster.metrics().clone();
    let mut running_since: HashMap<String, i64> = HashMap::new();
    // Received, not yet written: a write stops at an entry's reports or bytes.
    let mut backlog: VecDeque<Queued> = VecDeque::new();
    loop {
        if backlog.is_empty() {
            tokio::select! {
                _ = session_over.cancelled() => return,
                r = queued.recv() => match r {
                    Some(r) => backlog.push_back(r),
                    None => return,
                },
            }
        }
        while backlog.len() < MAX_REPORTS_PER_ENTRY {
            match queued.try_recv() {
                Ok(r) => backlog.push_back(r),
                Err(_) => break,
            }
        }
        let mut writes = Vec::new();
        // Given back once the write is answered.
        let mut held = Vec::new();
        let (mut weight, mut acked) = (0, 0);
        while let Some((_, update, _)) = backlog.front() {
            let w = super::update_weight(update);
            if writes.len() == MAX_REPORTS_PER_ENTRY
                || (!writes.is_empty() && weight + w > MAX_REPORT_BYTES_PER_ENTRY)
            {
                break;
            }
            let Some((seq, update, bytes)) = backlog.pop_front() else {
                break;
            };
            held.push(bytes);
            acked = seq;
            if resync.pending.is_some_and(|last| seq <= last) {
                metrics.replayed_reports.inc();
            }
            // A report about an execution this node does not hold is dropped without a Raft
            // write (acknowledged with the rest, so the node does not replay it forever).
            if let Some(why) = foreign_report(&cluster, &node_id, &update.execution_id).await {
                metrics.observe_report(why);
                tracing::warn!(node = %node_id, execution = %update.execution_id, reason = why, "report dropped");
                continue;
            }
            weight += w;
            writes.push(ExecutionReport {
                node_id: node_id.clone(),
                seq,
                update,
                followup_eval_id: caravel_model::ids::new_evaluation_id(),
                now: now_ns(),
            });
        }
        let Some(answers) = retrying(|| cluster.write_reports(writes.clone()), &session_over).await
        else {
            return;
        };
        for (report, answer) in writes.iter().zip(&answers) {
            metrics.observe_report(match answer {
                CommandResponse::Duplicate => "duplicate",
                CommandResponse::Rejected { .. } => "rejected",
                _ => "applied",
            });
            observe_run(&cluster, &mut running_since, &report.update);
        }
        drop(held);
        let _ = acks.send(ToCompute::Ack { seq: acked }).await;
        if resync.pending.is_some_and(|last| acked >= last) {
            resync.pending = None;
            let took = resync.hello_at.elapsed();
            metrics.session_resync.observe(took.as_secs_f64());
            tracing::info!(node = %node_id, ?took, "node resynchronised: its outbox is committed");
        }
    }
}

/// Records how long an execution ran, once its report that it ended is in.
fn observe_run(
    cluster: &Cluster,
    running_since: &mut HashMap<String, i64>,
    update: &ExecutionUpdate,
) {
    if update.state == ExecutionStateType::Running {
        running_since.insert(update.execution_id.clone(), update.time);
    }
    if update.state.is_terminal()
        && let Some(start) = running_since.remove(&update.execution_id)
    {
        let engine = cluster
            .read(|s| {
                s.executions
                    .get(&update.execution_id)
                    .and_then(|e| s.job_version(&e.job_id, e.job_version))
                    .map(|j| j.engine())
            })
            .unwrap_or_default();
        let secs = (update.time - start).max(0) as f64 / 1e9;
        cluster
            .metrics()
            .observe_run(&engine, update.state.as_str(), secs);
    }
}

/// Why a report of `node_id` about `execution_id` must not be written: the execution does not
/// exist (`unknown_execution`) or belongs to another node (`wrong_node`). Decided on this replica;
/// an execution it does not know yet is looked up again after a read-index round trip (a replica
/// that lags must not drop a real report).
async fn foreign_report(
    cluster: &Cluster,
    node_id: &str,
    execution_id: &str,
) -> Option<&'static str> {
    let owner = |s: &caravel_model::state::ClusterState| {
        s.executions.get(execution_id).map(|e| e.node_id.clone())
    };
    let found = match cluster.read(owner) {
        Some(o) => Some(o),
        None => cluster.read_linearizable(owner).await.ok()?,
    };
    match found {
        None => Some("unknown_execution"),
        Some(o) if o != node_id => Some("wrong_node"),
        Some(_) => None,
    }
}

/// Whether the replicated record of `info.node_id` already says what a registration would: the
/// node is CONNECTED with the same type, labels, engines, publishers, sources and capacity.
fn registered(cluster: &Cluster, info: &caravel_model::NodeInfo, fingerprint: &str) -> bool {
    cluster.read(|s| {
        let cert_known = fingerprint.is_empty()
            || s.security
                .node_certs
                .get(&info.node_id)
                .is_some_and(|c| c.contains(fingerprint));
        cert_known
            && s.nodes.get(&info.node_id).is_some_and(|n| {
                let (a, b) = (&n.info, info);
                let (ca, cb) = (&a.compute_node_info, &b.compute_node_info);
                n.connection_state.status == caravel_model::states::NodeConnection::Connected
                    && a.node_type == b.node_type
                    && a.labels == b.labels
                    && ca.execution_engines == cb.execution_engines
                    && ca.publishers == cb.publishers
                    && ca.storage_sources == cb.storage_sources
                    && ca.max_capacity == cb.max_capacity
            })
    })
}

/// Registers (or refreshes) the node unless the replicated state already has it so. Retries while
/// there is no leader, but never proposes again a registration that may still commit: before each
/// retry it checks whether the earlier attempt took effect (a retry storm of registrations once
/// starved an orchestrator holding thousands of sessions; see docs/benchmarks.md).
async fn register(
    cluster: &Cluster,
    info: &caravel_model::NodeInfo,
    admission: &Admission,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    caravel_model::validate::check_node_info(info).map_err(Error::Register)?;
    let mut delay = Duration::from_millis(100);
    let fp = admission.fingerprint.as_str();
    loop {
        if registered(cluster, info, fp) {
            return Ok(());
        }
        let cmd = if fp.is_empty() {
            Command::RegisterNode {
                info: info.clone(),
                now: now_ns(),
            }
        } else {
            Command::RegisterNodeWith {
                info: info.clone(),
                now: now_ns(),
                pending: admission.manual_approval,
                fingerprint: fp.to_string(),
            }
        };
        match cluster.write(cmd).await {
            Ok(CommandResponse::Rejected { message, .. }) => return Err(Error::Register(message)),
            Ok(_) => return Ok(()),
            Err(e @ WriteError::Timeout(_) | e @ WriteError::Unknown(_)) => {
                // It may still commit: wait for it to show up instead of proposing it again.
                tracing::warn!(node = %info.node_id, error = %e, "registration not confirmed yet; waiting for it");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while tokio::time::Instant::now() < deadline {
                    if registered(cluster, info, fp) {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(node = %info.node_id, error = %e, "cannot register the node; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Makes `attempt` (a write) until it is answered, retrying while there is no leader or no
/// quorum, backing off. `None` when shutting down.
async fn retrying<R, F: std::future::Future<Output = Result<R, WriteError>>>(
    mut attempt: impl FnMut() -> F,
    shutdown: &CancellationToken,
) -> Option<R> {
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(r) => return Some(r),
            Err(
                e @ (WriteError::NoLeader(_) | WriteError::Timeout(_) | WriteError::Unknown(_)),
            ) => {
                // Reports are deduplicated by (node, sequence), so re-sending one is safe.
                tracing::warn!(error = %e, "write from compute session failed; retrying");
            }
            Err(e) => {
                tracing::error!(error = %e, "write from compute session failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Sends the node what the replicated state wants of it and it was not told in this session.
async fn dispatch(cluster: &Cluster, node_id: &str, end: &OrchestratorEnd, told: &mut Told) {
    let out = cluster.read(|s| told.news(s, node_id));
    send_all(end, out).await;
}

/// Cancels what the node says it runs and the replicated state says must not run on it: stopped,
/// replaced after the disconnect grace period, finished, or placed on another node. Executions this
/// orchestrator does not know yet are left alone (its state may lag the one that placed them).
async fn reconcile(
    cluster: &Cluster,
    node_id: &str,
    end: &OrchestratorEnd,
    running: &[String],
    told: &mut Told,
) {
    let out = cluster.read(|s| told.reconcile(s, node_id, running));
    if !out.is_empty() {
        tracing::info!(node = %node_id, count = out.len(), "reconciling: stopping executions the cluster no longer wants on this node");
        cluster.metrics().reconcile_cancels.inc_by(out.len() as u64);
    }
    send_all(end, out).await;
}

async fn send_all(end: &OrchestratorEnd, out: Vec<ToCompute>) {
    for m in out {
        if end.tx.send(m).await.is_err() {
            return;
        }
    }
}

/// What this session has told its node, so that each `Run` and `Cancel` goes once per session.
///
/// It holds only what may still need a message: a `Run` is remembered while the execution is
/// wanted running, a `Cancel` while the node's inventory still lists the execution. A pass (on each
/// change to the node's executions and once a second) therefore costs the node's live executions,
/// not every execution it ran in this session: remembering them all made each pass of a node that
/// had run 100,000 jobs look up 100,000 executions, and the sets grew without bound.
#[derive(Debug, Default)]
struct Told {
    runs: HashSet<String>,
    cancels: HashSet<String>,
}

impl Told {
    /// The `Run`s and `Cancel`s the replicated state asks of `node_id` that it was not sent yet.
    fn news(&mut self, s: &ClusterState, node_id: &str) -> Vec<ToCompute> {
        use caravel_model::view::StateView;
        let mut out = Vec::new();
        for e in s.live_executions_on(node_id) {
            if e.desired_state.state_type == ExecutionDesiredState::Running
                && !self.runs.contains(&e.id)
                && let Some(job) = s.job_version(&e.job_id, e.job_version)
            {
                out.push(ToCompute::Run {
                    execution: Box::new(e.clone()),
                    job: Box::new(job.clone()),
                });
                self.runs.insert(e.id.clone());
            }
        }
        let Told { runs, cancels } = self;
        runs.retain(|id| {
            let Some(e) = s.executions.get(id) else {
                return false;
            };
            if e.desired_state.state_type == ExecutionDesiredState::Running {
                return true;
            }
            // No longer wanted (a wanted state never comes back): at most a Cancel is left to
            // send, and none when the node itself said it ended.
            let ended_there = matches!(
                e.compute_state.state_type,
                ExecutionStateType::Completed | ExecutionStateType::Failed
            );
            if !ended_there && cancels.insert(id.clone()) {
                out.push(ToCompute::Cancel {
                    execution_id: id.clone(),
                    reason: e.desired_state.message.clone(),
                });
            }
            false
        });
        out
    }

    /// `Cancel`s for what the node's inventory `running` lists and the replicated state says must
    /// not run on it (each once while the node keeps listing it); forgets the `Cancel`s of
    /// executions the node no longer lists.
    fn reconcile(&mut self, s: &ClusterState, node_id: &str, running: &[String]) -> Vec<ToCompute> {
        let running = &running[..running.len().min(MAX_INVENTORY)];
        let mut out = Vec::new();
        for id in running {
            if self.cancels.contains(id) {
                continue;
            }
            let Some(e) = s.executions.get(id) else {
                continue;
            };
            let why = if e.node_id != node_id {
                format!("execution {id} belongs to node {}", e.node_id)
            } else if e.desired_state.state_type == ExecutionDesiredState::Stopped {
                let m = &e.desired_state.message;
                if m.is_empty() {
                    "execution stopped".to_string()
                } else {
                    m.clone()
                }
            } else if e.compute_state.state_type.is_terminal() {
                let m = &e.compute_state.message;
                format!(
                    "execution is already {} here: {m}",
                    e.compute_state.state_type
                )
            } else {
                continue;
            };
            out.push(ToCompute::Cancel {
                execution_id: id.clone(),
                reason: why,
            });
            self.cancels.insert(id.clone());
        }
        // The node lists what it holds unfinished: a Cancel it no longer lists did its work. (An
        // inventory sent before the node read a Cancel may list it again: one Cancel more.)
        let listed: HashSet<&str> = running.iter().map(String::as_str).collect();
        self.cancels.retain(|id| listed.contains(id.as_str()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravel_model::Evaluation;
    use caravel_model::evaluation::trigger;
    use caravel_model::execution::ExecutionUpdate;
    use caravel_model::ids::SequentialIds;
    use caravel_model::node::NodeInfo;
    use caravel_model::view::StateView;

    /// A state with compute nodes `n1` and `n2`, each labelled `host` with its id.
    fn two_nodes() -> ClusterState {
        let mut s = ClusterState::default();
        for id in ["n1", "n2"] {
            let mut info = NodeInfo {
                node_id: id.into(),
                node_type: "Compute".into(),
                ..Default::default()
            };
            info.labels.insert("host".into(), id.into());
            let c = &mut info.compute_node_info;
            c.execution_engines = vec!["wasm".into()];
            c.publishers = vec!["local".into(), "noop".into()];
            c.storage_sources = vec!["inline".into()];
            c.max_capacity.cpu = 2.0;
            c.max_capacity.memory = 4 << 30;
            c.max_capacity.disk = 10 << 30;
            s.apply(&Command::RegisterNode { info, now: 1 });
        }
        s
    }

    /// Submits job `id` (one partition, constrained to `node`) and applies its plan: the new
    /// execution's id.
    fn place(s: &mut ClusterState, id: &str, node: &str, ids: &mut SequentialIds) -> String {
        let text = format!(
            "Name: {id}\nType: batch\nConstraints:\n- {{Key: host, Operator: '=', Values: [{node}]}}\nTasks:\n- Name: main\n  Engine: {{Type: wasm, Params: {{EntryModule: /m.wasm}}}}\n  InputSources:\n  - Target: /m.wasm\n    Source: {{Type: inline, Params: {{URL: 'data:,x'}}}}\n"
        );
        let mut job =
            caravel_model::parse::parse_job(text.as_bytes(), caravel_model::parse::Mode::Server)
                .unwrap()
                .job;
        job.id = id.into();
        let eval_id = format!("ev-{id}");
        let eval = Evaluation::new(eval_id.clone(), &job, trigger::JOB_REGISTER, 10);
        s.apply(&Command::SubmitJob {
            job,
            evaluation: eval,
            force: false,
            now: 10,
        });
        plan(s, &eval_id, ids);
        let execs = s.executions_of(id);
        let why = &s.evaluations[&eval_id].comment;
        assert_eq!(execs.len(), 1, "job {id} placed once: {why}");
        assert_eq!(execs[0].node_id, node);
        execs[0].id.clone()
    }

    fn plan(s: &mut ClusterState, eval_id: &str, ids: &mut SequentialIds) {
        use crate::orchestrator::scheduler;
        let eval = s.evaluations[eval_id].clone();
        let p = scheduler::schedule(s, &eval, 20, ids);
        s.apply(&Command::ApplyPlan(p));
    }

    fn report(s: &mut ClusterState, node: &str, seq: u64, exec: &str, st: ExecutionStateType) {
        let update = ExecutionUpdate {
            execution_id: exec.into(),
            state: st,
            message: String::new(),
            run_output: None,
            published_result: None,
            topic: String::new(),
            time: 0,
        };
        s.apply(&Command::UpdateExecution {
            node_id: node.into(),
            seq,
            update,
            followup_eval_id: format!("follow-{seq}"),
            now: 30,
        });
    }

    fn runs(out: &[ToCompute]) -> Vec<&str> {
        out.iter()
            .filter_map(|m| match m {
                ToCompute::Run { execution, .. } => Some(execution.id.as_str()),
                _ => None,
            })
            .collect()
    }

    fn cancels(out: &[ToCompute]) -> Vec<&str> {
        out.iter()
            .filter_map(|m| match m {
                ToCompute::Cancel { execution_id, .. } => Some(execution_id.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_run_is_told_once_and_a_finished_execution_is_forgotten() {
        let (mut s, mut ids, mut told) = (two_nodes(), SequentialIds::default(), Told::default());
        let mut seq = 0;
        // Many jobs through one node: what the session remembers follows the live executions.
        for i in 0..50 {
            let a = place(&mut s, &format!("a{i}"), "n1", &mut ids);
            let b = place(&mut s, &format!("b{i}"), "n1", &mut ids);
            let out = told.news(&s, "n1");
            let mut sent = runs(&out);
            sent.sort();
            let mut want = vec![a.as_str(), b.as_str()];
            want.sort();
            assert_eq!(sent, want, "job {i}: one Run per new execution");
            assert!(cancels(&out).is_empty());
            assert!(told.news(&s, "n1").is_empty(), "nothing is told twice");
            assert!(told.news(&s, "n2").is_empty(), "n2 runs nothing");
            for st in [ExecutionStateType::Running, ExecutionStateType::Completed] {
                seq += 1;
                report(&mut s, "n1", seq, &a, st);
            }
            seq += 1;
            report(&mut s, "n1", seq, &b, ExecutionStateType::Failed);
            assert!(
                told.news(&s, "n1").is_empty(),
                "the node's own end needs no Cancel"
            );
            assert!(told.runs.is_empty() && told.cancels.is_empty(), "{told:?}");
        }
    }

    #[test]
    fn a_stopped_execution_gets_one_cancel_kept_until_the_node_stops_listing_it() {
        let (mut s, mut ids, mut told) = (two_nodes(), SequentialIds::default(), Told::default());
        let a = place(&mut s, "a", "n1", &mut ids);
        assert_eq!(runs(&told.news(&s, "n1")), [a.as_str()]);
        report(&mut s, "n1", 1, &a, ExecutionStateType::Running);
        s.apply(&Command::StopJob {
            job_id: "a".into(),
            reason: "enough".into(),
            evaluation_id: "stop".into(),
            now: 40,
        });
        plan(&mut s, "stop", &mut ids);
        let out = told.news(&s, "n1");
        assert_eq!((runs(&out), cancels(&out)), (vec![], vec![a.as_str()]));
        assert!(told.news(&s, "n1").is_empty(), "one Cancel");
        assert!(told.runs.is_empty());
        // The node still lists it (stopping): no second Cancel; once it does not, forgotten.
        let listed = vec![a.clone()];
        assert!(told.reconcile(&s, "n1", &listed).is_empty());
        assert!(told.reconcile(&s, "n1", &[]).is_empty());
        assert!(told.cancels.is_empty(), "{told:?}");
        assert!(
            told.news(&s, "n1").is_empty(),
            "a stopped execution is never run again"
        );
    }

    #[test]
    fn an_inventory_gets_a_cancel_for_what_must_not_run_there_once_while_it_lists_it() {
        let (mut s, mut ids, mut told) = (two_nodes(), SequentialIds::default(), Told::default());
        let done = place(&mut s, "done", "n1", &mut ids);
        let other = place(&mut s, "other", "n2", &mut ids);
        let live = place(&mut s, "live", "n1", &mut ids);
        report(&mut s, "n1", 1, &done, ExecutionStateType::Running);
        report(&mut s, "n1", 2, &done, ExecutionStateType::Completed);
        let listed = vec![
            done.clone(),
            other.clone(),
            live.clone(),
            "e-not-known-here".to_string(),
        ];
        let out = told.reconcile(&s, "n1", &listed);
        let mut got = cancels(&out);
        got.sort();
        let mut want = vec![done.as_str(), other.as_str()];
        want.sort();
        assert_eq!(
            got, want,
            "finished here and placed elsewhere; live and unknown left alone"
        );
        assert!(
            told.reconcile(&s, "n1", &listed).is_empty(),
            "once per listing"
        );
        assert!(
            told.reconcile(&s, "n1", std::slice::from_ref(&live))
                .is_empty()
        );
        assert!(told.cancels.is_empty(), "{told:?}");
        // Listed again after it was dropped: told again.
        assert_eq!(
            cancels(&told.reconcile(&s, "n1", std::slice::from_ref(&done))),
            [done.as_str()]
        );
    }
}
