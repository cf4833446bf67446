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

/// The evaluation broker: hands every due pending evaluation to the scheduler and commits the
/// plans, up to [`PLANS_PER_COMMIT`] in one Raft entry.
async fn broker(cluster: Cluster, stop: CancellationToken) {
    let mut applied = cluster.subscribe();
    let mut ids = RandomIds;
    loop {
        let now = now_ns();
        let due: Vec<_> = cluster.read(|s| {
            let mut v: Vec<_> = s
                .pending_evaluations()
                .into_iter()
                .filter(|e| e.wait_until <= now)
                .cloned()
                .collect();
            v.sort_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then(a.create_time.cmp(&b.create_time))
                    .then(a.id.cmp(&b.id))
            });
            v
        });
        let mut rest = due;
        while !rest.is_empty() {
            if stop.is_cancelled() {
                return;
            }
            // One evaluation per job in a batch (a second one waits for the first's commit).
            let mut batch = Vec::new();
            let mut later = Vec::new();
            let mut jobs = std::collections::HashSet::new();
            for e in rest {
                if batch.len() < PLANS_PER_COMMIT && jobs.insert(e.job_id.clone()) {
                    batch.push(e);
                } else {
                    later.push(e);
                }
            }
            rest = later;
            // Planned in order against one view that counts the batch's earlier placements, then
            // committed in one Raft entry; each plan is applied or refused on its own.
            let mut plans = cluster.read(|s| {
                let mut view = scheduler::PlanningView::new(s);
                let mut plans = Vec::new();
                let mut placed = 0;
                for eval in &batch {
                    // The entry stays small: a big plan ends the batch (it is never split).
                    if placed >= EXECUTIONS_PER_COMMIT {
                        break;
                    }
                    let p = scheduler::schedule(&view, eval, now_ns(), &mut ids);
                    placed += p.new_executions.len();
                    view.add(&p);
                    plans.push(p);
                }
                plans
            });
            // Evaluations left out wait for the next batch.
            let unplanned = batch.split_off(plans.len());
            rest.splice(0..0, unplanned);
            let cmd = if plans.len() == 1 {
                Command::ApplyPlan(plans.remove(0))
            } else {
                Command::ApplyPlans(plans)
            };
            let answers: Vec<Result<CommandResponse, String>> = match cluster.write(cmd).await {
                Ok(CommandResponse::Plans(rs)) => rs.into_iter().map(Ok).collect(),
                Ok(r) => vec![Ok(r)],
                Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
            };
            for (eval, answer) in batch.iter().zip(answers) {
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
                        "error"
                    }
                };
                cluster.metrics().observe_eval(&eval.triggered_by, outcome);
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
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
