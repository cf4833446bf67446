//! Leader-only duties: the evaluation broker feeding the scheduler and the planner, and node liveness.
//! They start when this member becomes leader and stop (cancelled) when it stops being one; since
//! evaluations live in the replicated state, a new leader picks up exactly those still pending.

use std::time::Duration;

use caravel_model::command::{Command, CommandResponse};
use caravel_model::ids::RandomIds;
use caravel_model::states::NodeConnection;
use tokio_util::sync::CancellationToken;

use super::{Cluster, now_ns, scheduler};

/// Follows Raft's metrics and runs the duties while this member leads.
pub async fn run(cluster: Cluster, shutdown: CancellationToken) {
    let mut metrics = cluster.raft().metrics();
    let mut duty: Option<CancellationToken> = None;
    loop {
        let leading = {
            let m = metrics.borrow();
            m.current_leader == Some(cluster.node_id()) && m.state.is_leader()
        };
        match (leading, &duty) {
            (true, None) => {
                tracing::info!("became leader: starting evaluation broker and liveness checks");
                let t = shutdown.child_token();
                tokio::spawn(broker(cluster.clone(), t.clone()));
                tokio::spawn(liveness(cluster.clone(), t.clone()));
                duty = Some(t);
            }
            (false, Some(t)) => {
                tracing::info!("no longer leader: stopping leader duties");
                t.cancel();
                duty = None;
            }
            _ => {}
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = metrics.changed() => if r.is_err() { break },
        }
    }
    if let Some(t) = duty {
        t.cancel();
    }
}

/// Plans committed in one Raft entry at most (each evaluation's plan is small: its new executions
/// and changes).
const PLANS_PER_COMMIT: usize = 64;
/// New executions in one entry: once the batch's plans place this many, the rest waits.
const EXECUTIONS_PER_COMMIT: usize = 2_000;
/// Batches being committed at once: the broker plans the next while earlier ones replicate and
/// reach the disk (Raft appends entries that arrive together with one fsync).
const COMMITS_IN_FLIGHT: usize = 4;

/// A batch handed to Raft: its evaluations, and the answers (one per plan, in order).
type Committed = (
    u64,
    Vec<caravel_model::evaluation::Evaluation>,
    Vec<Result<CommandResponse, String>>,
);

/// The evaluation broker: hands every due pending evaluation to the scheduler and commits the
/// plans, up to [`PLANS_PER_COMMIT`] in one Raft entry and [`COMMITS_IN_FLIGHT`] entries at once.
/// A batch is planned against the state plus the plans still being committed (so no room is given
/// out twice), one evaluation per job, none of a job whose plan is being committed.
async fn broker(cluster: Cluster, stop: CancellationToken) {
    use std::collections::HashSet;
    let mut applied = cluster.subscribe();
    let mut ids = RandomIds;
    let mut commits: tokio::task::JoinSet<Committed> = tokio::task::JoinSet::new();
    let mut in_flight: Vec<(u64, Vec<caravel_model::command::Plan>)> = Vec::new();
    let mut next_batch = 0u64;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut failed = false;
        while let Some(done) = commits.try_join_next() {
            failed |= finish(&cluster, done, &mut in_flight);
        }
        let mut started = false;
        if !failed && in_flight.len() < COMMITS_IN_FLIGHT {
            let now = now_ns();
            let (evals, mut plans) = cluster.read(|s| {
                let busy_evals: HashSet<&str> = in_flight
                    .iter()
                    .flat_map(|(_, ps)| ps.iter().map(|p| p.eval_id.as_str()))
                    .collect();
                let busy_jobs: HashSet<&str> = in_flight
                    .iter()
                    .flat_map(|(_, ps)| ps.iter().map(|p| p.job_id.as_str()))
                    .collect();
                // Only a job's first due evaluation (by priority, age, id) can be planned now — a
                // job's evaluations are planned one at a time — and a batch holds at most
                // PLANS_PER_COMMIT: the state's index gives those, in that order, without walking
                // every job with work queued (sorting every pending evaluation on each applied
                // entry took a third of the leader's CPU with 20,000 pending; walking each queued
                // job's first cut placements to 10/s with 15,000 jobs queued).
                let due = s.first_due_evaluations(
                    now,
                    |job| busy_jobs.contains(job),
                    |eval| busy_evals.contains(eval),
                    PLANS_PER_COMMIT,
                );
                // Planned in order against one view that counts the plans being committed and
                // the batch's earlier ones; each plan is applied or refused on its own.
                let mut view = scheduler::PlanningView::new(s);
                for p in in_flight.iter().flat_map(|(_, ps)| ps) {
                    view.add(p);
                }
                let (mut evals, mut plans) = (Vec::new(), Vec::new());
                let mut jobs = HashSet::new();
                let mut placed = 0;
                for eval in due {
                    // The entry stays small: a big plan ends the batch (it is never split).
                    if plans.len() >= PLANS_PER_COMMIT || placed >= EXECUTIONS_PER_COMMIT {
                        break;
                    }
                    // One evaluation per job in a batch (a second one waits for the first's commit).
                    if !jobs.insert(eval.job_id.as_str()) {
                        continue;
                    }
                    let p = scheduler::schedule(&view, eval, now_ns(), &mut ids);
                    placed += p.new_executions.len();
                    view.add(&p);
                    plans.push(p);
                    evals.push(eval.clone());
                }
                (evals, plans)
            });
            if !plans.is_empty() {
                let batch = next_batch;
                next_batch += 1;
                in_flight.push((batch, plans.clone()));
                let cmd = if plans.len() == 1 {
                    Command::ApplyPlan(plans.remove(0))
                } else {
                    Command::ApplyPlans(plans)
                };
                let c = cluster.clone();
                commits.spawn(async move {
                    let n = evals.len();
                    let answers = match c.write(cmd).await {
                        Ok(CommandResponse::Plans(rs)) => rs.into_iter().map(Ok).collect(),
                        Ok(r) => vec![Ok(r)],
                        Err(e) => (0..n).map(|_| Err(e.to_string())).collect(),
                    };
                    (batch, evals, answers)
                });
                started = true;
            }
        }
        if started {
            continue;
        }
        // Nothing more to plan now (or a commit failed: a pause before trying again).
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            Some(done) = commits.join_next(), if !commits.is_empty() && !failed => {
                finish(&cluster, done, &mut in_flight);
            }
            r = applied.changed(), if !failed => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Records a committed batch's outcomes and forgets its plans; whether its commit failed.
fn finish(
    cluster: &Cluster,
    done: Result<Committed, tokio::task::JoinError>,
    in_flight: &mut Vec<(u64, Vec<caravel_model::command::Plan>)>,
) -> bool {
    let Ok((batch, evals, answers)) = done else {
        // A commit task that panicked or was cancelled: its plans are no longer counted; the
        // evaluations are still pending and are planned again.
        in_flight.clear();
        return true;
    };
    in_flight.retain(|(b, _)| *b != batch);
    let mut failed = false;
    for (eval, answer) in evals.iter().zip(answers) {
        let outcome = match answer {
            Ok(CommandResponse::Rejected { message, .. }) => {
                tracing::debug!(eval = %eval.id, %message, "plan refused; will evaluate again");
                "stale"
            }
            Ok(_) => {
                cluster
                    .metrics()
                    .scheduling_latency
                    .observe((now_ns() - eval.create_time).max(0) as f64 / 1e9);
                "planned"
            }
            Err(e) => {
                tracing::warn!(eval = %eval.id, error = %e, "could not commit plan");
                failed = true;
                "error"
            }
        };
        cluster.metrics().observe_eval(&eval.triggered_by, outcome);
    }
    failed
}

/// Marks compute nodes DISCONNECTED when their heartbeats stop.
async fn liveness(cluster: Cluster, stop: CancellationToken) {
    // A new leader gives every node a full timeout before judging it.
    let started = now_ns();
    let timeout = cluster.disconnect_timeout();
    let period = (timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let now = now_ns();
        let nodes: Vec<(String, usize)> = cluster.read(|s| {
            use caravel_model::view::StateView;
            s.nodes
                .values()
                .filter(|n| {
                    n.info.node_type == "Compute"
                        && n.connection_state.status == NodeConnection::Connected
                })
                .map(|n| (n.id().to_string(), s.live_executions_on(n.id()).len()))
                .collect()
        });
        for (node, live) in nodes {
            let seen = cluster
                .last_heartbeat(&node)
                .unwrap_or(started)
                .max(started);
            if now - seen > timeout.as_nanos() as i64 {
                let eval_ids = (0..live)
                    .map(|_| caravel_model::ids::new_evaluation_id())
                    .collect();
                let cmd = Command::SetNodeConnection {
                    node_id: node.clone(),
                    status: NodeConnection::Disconnected,
                    reason: format!("no heartbeat for {}s", timeout.as_secs()),
                    evaluation_ids: eval_ids,
                    now,
                };
                if let Err(e) = cluster.write(cmd).await {
                    tracing::warn!(%node, error = %e, "could not mark node disconnected");
                } else {
                    tracing::warn!(%node, "compute node marked DISCONNECTED");
                }
            }
        }
    }
}

/// On a follower: relays the heartbeats of the compute nodes connected here to the leader every
/// second, so the leader's liveness check sees every node whichever orchestrator it talks to.
pub async fn relay_heartbeats(cluster: Cluster, stop: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if cluster.is_leader() {
            continue;
        }
        let beats = cluster.local_heartbeats();
        if beats.is_empty() {
            continue;
        }
        if let (Some((_, node)), Some(client)) = (cluster.leader(), cluster.peers())
            && let Err(e) = crate::raft::call_peer::<_, ()>(
                client,
                &node,
                crate::raft::kind::HEARTBEATS,
                &beats,
                Duration::from_secs(2),
            )
            .await
        {
            tracing::debug!(leader = %node.name, error = %e, "cannot relay heartbeats");
        }
    }
}
