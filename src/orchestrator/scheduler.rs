//! The scheduler: a pure function from a [`StateView`] and an [`Evaluation`] to a [`Plan`] (Nomad's
//! scheduler reading a `State` and submitting a `Plan`). No I/O, no clock (`now` is an argument), ids
//! from an [`IdGen`]; the planner commits the plan through Raft, and a plan made from a stale view is
//! refused by the state machine (job revision check) and made again.
//!
//! Batch jobs: `Count` partitions; each partition needs one Completed execution of the current job
//! version. A partition whose execution failed is retried on a node that has not failed it yet; when no
//! node is left the job fails with the last error. Ops: one execution per matching node, complete when
//! all finish. Daemon: one per matching node, kept running. Service: `Count` on distinct nodes, kept.
//!
//! Capacity: a node takes an execution while what its live executions hold plus the job stays within
//! [`OVER_SUBSCRIPTION`] × its capacity (the surplus queues on the node); otherwise the job waits
//! (QueueTimeout) for room. Eligibility: an ineligible or draining node takes no new work; a
//! draining node's service copies move at once (each stops once its replacement is placed), its
//! batch executions when the drain's deadline comes; daemons and ops executions stay.

use std::collections::{BTreeMap, BTreeSet};

use caravel_model::command::{ExecutionChange, Plan};
use caravel_model::evaluation::{Evaluation, status, trigger};
use caravel_model::execution::{AllocatedResources, Execution, Resources};
use caravel_model::history::{Event, topic};
use caravel_model::ids::IdGen;
use caravel_model::node::{Eligibility, NodeState};
use caravel_model::spec::{Job, JobType};
use caravel_model::state::derived_eval_id;
use caravel_model::states::{
    ExecutionDesiredState, ExecutionStateType, JobStateType, NodeConnection, NodeMembership, State,
};
use caravel_model::view::StateView;

/// How long a queued job waits before it is evaluated again.
pub const QUEUE_BACKOFF_NS: i64 = 5_000_000_000;
/// A service copy's exits older than this no longer lengthen its restart delay.
const RESTART_WINDOW_NS: i64 = caravel_model::spec::RESTART_WINDOW_SECS * 1_000_000_000;

/// Plans one evaluation.
pub fn schedule(view: &dyn StateView, eval: &Evaluation, now: i64, ids: &mut dyn IdGen) -> Plan {
    let mut plan = Plan {
        eval_id: eval.id.clone(),
        job_id: eval.job_id.clone(),
        now,
        ..Default::default()
    };
    let Some(job) = view.job(&eval.job_id) else {
        plan.eval_status = status::CANCELED.into();
        plan.eval_comment = "job not found".into();
        return plan;
    };
    plan.job_revision = job.revision;
    let execs = view.executions_of(&job.id);

    // A terminal job keeps nothing running.
    if job.state.state_type.is_terminal() {
        let why = match job.state.state_type {
            JobStateType::Stopped => "job stopped",
            JobStateType::Failed => "job failed",
            _ => "job completed",
        };
        stop_all(
            &mut plan,
            execs.iter().copied().filter(|e| e.is_live()),
            why,
        );
        return plan;
    }
    // TotalTimeout bounds a batch or ops job's whole life, queueing and retries included (as
    // Bacalhau; long-running jobs have none): past it the job fails, and a timer evaluation is
    // set when the job is submitted so it fires with nothing else happening.
    let total = job.task().map_or(0, |t| t.timeouts.total_timeout);
    if total > 0 && job.is_batch_like() {
        let deadline = job
            .create_time
            .saturating_add(total.saturating_mul(1_000_000_000));
        if now >= deadline && !finished(job, &execs) {
            let why = format!(
                "the job timed out: it did not finish within its TotalTimeout of {}",
                format_grace(total.saturating_mul(1_000_000_000))
            );
            stop_all(
                &mut plan,
                execs.iter().copied().filter(|e| e.is_live()),
                &why,
            );
            plan.job_state = Some((JobStateType::Failed, why));
            return plan;
        }
        // Set on submission, and again by a timer that ran early; one id per deadline, so a
        // timer asked for twice is one evaluation.
        if now < deadline
            && matches!(
                eval.triggered_by.as_str(),
                trigger::JOB_REGISTER | trigger::JOB_UPDATE | trigger::JOB_TIMEOUT
            )
        {
            let id = derived_eval_id(trigger::JOB_TIMEOUT, "", deadline, &job.id);
            let mut timer = Evaluation::new(id, job, trigger::JOB_TIMEOUT, now);
            timer.wait_until = deadline;
            plan.new_evaluations.push(timer);
        }
    }
    // Executions of older versions make way for the new one: a service's or daemon's copies one
    // batch at a time (a rollout), a batch or ops job's at once (as Bacalhau).
    let old: Vec<&Execution> = execs
        .iter()
        .copied()
        .filter(|e| e.is_live() && e.job_version != job.version)
        .collect();
    let update = job.update_policy();
    let rollout = if !job.is_batch_like() && update.max_parallel > 0 && !old.is_empty() {
        Some(Rollout {
            old,
            policy: update,
        })
    } else {
        stop_all(&mut plan, old.into_iter(), "job updated to a new version");
        None
    };
    let current: Vec<&Execution> = execs
        .iter()
        .copied()
        .filter(|e| e.job_version == job.version)
        .collect();
    // Executions on DISCONNECTED nodes: kept for the job's grace period, then replaced.
    let lost = disconnected_executions(view, job, &current, &mut plan, eval, now, ids);
    let current: Vec<&Execution> = current
        .into_iter()
        .filter(|e| !lost.contains(e.id.as_str()))
        .collect();

    if job.job_type().counts_executions() {
        schedule_partitions(
            view,
            job,
            &current,
            rollout.as_ref(),
            &mut plan,
            eval,
            now,
            ids,
        )
    } else {
        schedule_per_node(view, job, &current, rollout.as_ref(), &mut plan, now, ids)
    }
    if let Some(r) = &rollout {
        r.look_again(job, &current, &mut plan, now);
    }
    plan
}

/// A service's or daemon's update under way (Nomad's rolling update): the live copies of older
/// versions keep running while the new version's are placed, at most `max_parallel` of those not
/// yet healthy at a time; an old copy stops once a new one has run `min_healthy` (a service: any
/// new copy; a daemon: the one on its node). A new version that never runs takes nothing down.
struct Rollout<'a> {
    old: Vec<&'a Execution>,
    policy: caravel_model::spec::UpdatePolicy,
}

impl Rollout<'_> {
    /// Running for at least the policy's min-healthy time.
    fn healthy(&self, e: &Execution, now: i64) -> bool {
        e.is_live()
            && e.compute_state.state_type == ExecutionStateType::Running
            && now >= e.modify_time.saturating_add(self.policy.min_healthy_ns)
    }

    /// Says in the job's history what the update does now.
    fn tell(&self, job: &Job, plan: &mut Plan, what: String, now: i64) {
        plan.events.push(Event::new(
            topic::SCHEDULING,
            format!(
                "update to version {}: {what} (at most {} new cop{} not yet healthy at a time; \
                 healthy after running {})",
                job.version,
                self.policy.max_parallel,
                if self.policy.max_parallel == 1 {
                    "y"
                } else {
                    "ies"
                },
                format_grace(self.policy.min_healthy_ns)
            ),
            now,
        ));
    }

    /// Asks for an evaluation when the first new copy not yet healthy may have become so: a
    /// running copy at its min-healthy time, one not yet running (its start asks for no
    /// evaluation) a min-healthy time from now; whole seconds, one id per job version and time,
    /// so evaluations asking for the same time make one.
    fn look_again(&self, job: &Job, current: &[&Execution], plan: &mut Plan, now: i64) {
        const SEC: i64 = 1_000_000_000;
        let wait = self.policy.min_healthy_ns.max(SEC);
        let at = current
            .iter()
            .copied()
            .filter(|e| e.is_live() && !self.healthy(e, now))
            .map(|e| {
                if e.compute_state.state_type == ExecutionStateType::Running {
                    e.modify_time.saturating_add(self.policy.min_healthy_ns)
                } else {
                    now.saturating_add(wait)
                }
            })
            .chain((!plan.new_executions.is_empty()).then(|| now.saturating_add(wait)))
            .min();
        if let Some(at) = at {
            let at = (at.max(now + 1).saturating_add(SEC - 1) / SEC) * SEC;
            let id = derived_eval_id(trigger::JOB_ROLLOUT, &job.version.to_string(), at, &job.id);
            let mut next = Evaluation::new(id, job, trigger::JOB_ROLLOUT, now);
            next.wait_until = at;
            plan.new_evaluations.push(next);
        }
    }
}

/// Marks lost the live executions whose node has been DISCONNECTED for longer than the job's grace
/// period (desired Stopped; compute Cancelled, or Failed for ops jobs, which run once per node), so
/// the rest of the plan replaces them; returns their ids. While a grace period is still running,
/// asks for an evaluation when it ends (once per disconnection: on the node-leave evaluation, or
/// again if a grace evaluation ran early).
fn disconnected_executions(
    view: &dyn StateView,
    job: &Job,
    execs: &[&Execution],
    plan: &mut Plan,
    eval: &Evaluation,
    now: i64,
    ids: &mut dyn IdGen,
) -> BTreeSet<String> {
    let grace = job.disconnect_grace_ns();
    let mut lost = BTreeSet::new();
    let mut next_expiry: Option<i64> = None;
    for e in execs.iter().filter(|e| e.is_live()) {
        // A node an operator rejected or deleted gets no grace period: it will not be back.
        let message = match view.node(&e.node_id) {
            None => format!(
                "lost: node {} was deleted by an operator; the execution is replaced",
                e.node_id
            ),
            Some(n) if n.membership == NodeMembership::Rejected => format!(
                "lost: node {} was rejected by an operator; the execution is replaced",
                e.node_id
            ),
            Some(n) if n.connection_state.status != NodeConnection::Disconnected => continue,
            Some(n) => {
                let since = n.connection_state.disconnected_since;
                let expiry = since.saturating_add(grace);
                if now < expiry {
                    next_expiry = Some(next_expiry.map_or(expiry, |x: i64| x.min(expiry)));
                    continue;
                }
                format!(
                    "lost: node {} has been DISCONNECTED since {} (grace period {}); the execution is replaced",
                    e.node_id,
                    caravel_model::time::rfc3339(since),
                    format_grace(grace)
                )
            }
        };
        plan.updates.push(ExecutionChange {
            execution_id: e.id.clone(),
            desired: ExecutionDesiredState::Stopped,
            compute: Some(if job.job_type() == JobType::Ops {
                ExecutionStateType::Failed
            } else {
                ExecutionStateType::Cancelled
            }),
            message: message.clone(),
        });
        plan.events.push(Event::new(
            topic::SCHEDULING,
            format!("Execution {} {message}", e.id),
            now,
        ));
        lost.insert(e.id.clone());
    }
    if let Some(at) = next_expiry
        && (eval.triggered_by == trigger::NODE_LEAVE || eval.triggered_by == trigger::NODE_GRACE)
    {
        let mut next = Evaluation::new(ids.evaluation_id(), job, trigger::NODE_GRACE, now);
        next.wait_until = at;
        plan.new_evaluations.push(next);
    }
    lost
}

/// Whether a batch or ops job's current version has done all it must (so a deadline reached
/// after its last execution finished does not fail it).
fn finished(job: &Job, execs: &[&Execution]) -> bool {
    let current: Vec<&&Execution> = execs
        .iter()
        .filter(|e| e.job_version == job.version)
        .collect();
    match job.job_type() {
        JobType::Batch => (0..job.count.max(0)).all(|p| {
            current.iter().any(|e| {
                e.partition_index == p
                    && e.compute_state.state_type == ExecutionStateType::Completed
            })
        }),
        JobType::Ops => {
            !current.is_empty()
                && current
                    .iter()
                    .all(|e| e.compute_state.state_type == ExecutionStateType::Completed)
        }
        _ => false,
    }
}

fn format_grace(ns: i64) -> String {
    let s = ns / 1_000_000_000;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

fn stop_all<'a>(plan: &mut Plan, execs: impl Iterator<Item = &'a Execution>, why: &str) {
    for e in execs {
        plan.updates.push(ExecutionChange {
            execution_id: e.id.clone(),
            desired: ExecutionDesiredState::Stopped,
            compute: Some(ExecutionStateType::Cancelled),
            message: why.to_string(),
        });
    }
}

fn failure_message(e: &Execution) -> String {
    let m = e
        .run_output
        .as_ref()
        .map(|o| o.error_msg.clone())
        .filter(|m| !m.is_empty());
    m.unwrap_or_else(|| e.compute_state.message.clone())
}

#[allow(clippy::too_many_arguments)]
fn schedule_partitions(
    view: &dyn StateView,
    job: &Job,
    execs: &[&Execution],
    rollout: Option<&Rollout>,
    plan: &mut Plan,
    eval: &Evaluation,
    now: i64,
    ids: &mut dyn IdGen,
) {
    let count = job.count.max(0);
    let service = job.job_type() == JobType::Service;
    let policy = job.retry_policy();
    let mut done: BTreeSet<i32> = BTreeSet::new();
    let mut live: BTreeMap<i32, Vec<&Execution>> = BTreeMap::new();
    // Per partition: failures per node, how many count towards the retry delay, the last one.
    let mut failed_on: BTreeMap<i32, BTreeMap<String, usize>> = BTreeMap::new();
    let mut failures: BTreeMap<i32, usize> = BTreeMap::new();
    let mut last_failure: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    for e in execs {
        let p = e.partition_index;
        let st = e.compute_state.state_type;
        let exited = match st {
            // A service runs until it is stopped: a copy that completes has exited, as Bacalhau
            // treats a long-running job's result as a failure.
            ExecutionStateType::Completed if !service => {
                done.insert(p);
                continue;
            }
            ExecutionStateType::Completed => true,
            ExecutionStateType::Failed
            | ExecutionStateType::AskForBidRejected
            | ExecutionStateType::BidRejected => true,
            _ => false,
        };
        if exited {
            *failed_on
                .entry(p)
                .or_default()
                .entry(e.node_id.clone())
                .or_default() += 1;
            // A service's restart delay grows with its recent exits only.
            if !service || e.modify_time >= now.saturating_sub(RESTART_WINDOW_NS) {
                *failures.entry(p).or_default() += 1;
            }
            let what = if st == ExecutionStateType::Completed {
                "exited".to_string()
            } else {
                format!("failed: {}", failure_message(e))
            };
            let msg = format!("execution {} on node {} {what}", e.id, e.node_id);
            if last_failure
                .get(&p)
                .is_none_or(|(t, _)| e.modify_time >= *t)
            {
                last_failure.insert(p, (e.modify_time, msg));
            }
        } else if e.is_live() {
            live.entry(p).or_default().push(e);
        }
    }
    // Surplus or finished partitions: stop extra live executions.
    for (p, es) in &live {
        let keep = if *p >= count || done.contains(p) {
            0
        } else {
            1
        };
        stop_all(
            plan,
            es.iter().skip(keep).copied(),
            "not needed: the partition is already served",
        );
    }
    if job.job_type() == JobType::Batch && (0..count).all(|p| done.contains(&p)) {
        plan.job_state = Some((JobStateType::Completed, String::new()));
        return;
    }
    // Partitions on a draining node move: a service's copy now (it stops once its replacement is
    // placed), a batch job's when the drain's deadline has come.
    // (Looked up for the nodes the job's live executions are on, not over the whole fleet.)
    let drains: BTreeMap<String, i64> = live
        .values()
        .flatten()
        .filter_map(|e| view.node(&e.node_id))
        .filter_map(|n| match n.eligibility() {
            Eligibility::Draining { deadline } => Some((n.id().to_string(), deadline)),
            _ => None,
        })
        .collect();
    let mut moving: BTreeMap<i32, &Execution> = BTreeMap::new();
    if !drains.is_empty() {
        for (p, es) in &live {
            if *p >= count || done.contains(p) {
                continue;
            }
            if let Some(e) = es.first()
                && let Some(deadline) = drains.get(&e.node_id)
                && (service || now >= *deadline)
            {
                moving.insert(*p, e);
            }
        }
    }
    let mut drain_retry = false;
    // Walked only when a partition is to be placed (most evaluations of a running job place
    // nothing: an execution's report, a timer). A batch job's first placements, with no failure
    // to steer away from, no data to be near and no drain, rank a sample of the nodes (Nomad's
    // batch scheduler does likewise); services, retries and locality rank every node.
    let mut pool: Option<NodePool> = None;
    let want = (0..count)
        .filter(|p| !done.contains(p) && live.get(p).is_none_or(|v| v.is_empty()))
        .count();
    let sampling = !service
        && rollout.is_none()
        && failed_on.is_empty()
        && moving.is_empty()
        // Bin-packing looks for the fullest node, which a sample would miss.
        && job.placement() == caravel_model::spec::Placement::Spread
        && caravel_model::locality::JobInputs::of(job).is_empty();
    let mut unplaced: Vec<(i32, String)> = Vec::new();
    let mut exhausted = false;
    let mut retry_at: Option<i64> = None;
    // Nodes holding a copy of a service, this plan's included, so copies spread.
    let mut holding: BTreeSet<String> = if service {
        live.values().flatten().map(|e| e.node_id.clone()).collect()
    } else {
        BTreeSet::new()
    };
    // An update under way: old copies stop as new ones become healthy; new copies are placed
    // while fewer than the policy's limit are not yet healthy, away from the old copies' nodes
    // where they can; `old_left` are those still running after this plan, oldest first.
    let mut budget = usize::MAX;
    let mut old_left: Vec<&Execution> = Vec::new();
    if let Some(r) = rollout {
        let new_live: Vec<&Execution> = live.values().flatten().copied().collect();
        let healthy = new_live.iter().filter(|e| r.healthy(e, now)).count();
        let keep = (count as usize).saturating_sub(healthy);
        let mut old = r.old.clone();
        old.sort_by_key(|e| (e.create_time, e.id.clone()));
        let stop = old.len().saturating_sub(keep);
        if stop > 0 {
            stop_all(
                plan,
                old[..stop].iter().copied(),
                &format!("replaced by version {}", job.version),
            );
            r.tell(
                job,
                plan,
                format!(
                    "{stop} old cop{} stopped, {healthy} of {count} new copies healthy",
                    if stop == 1 { "y" } else { "ies" }
                ),
                now,
            );
        }
        old_left = old[stop..].to_vec();
        holding.extend(old_left.iter().map(|e| e.node_id.clone()));
        budget = r
            .policy
            .max_parallel
            .saturating_sub(new_live.len() - healthy);
    }
    let mut placed_in_rollout = 0;
    for p in 0..count {
        let leaving = moving.get(&p).copied();
        if done.contains(&p) || leaving.is_none() && live.get(&p).is_some_and(|v| !v.is_empty()) {
            continue;
        }
        if let Some(old) = leaving {
            let why = format!("node {} is draining", old.node_id);
            let pool = pool.get_or_insert_with(|| NodePool::new(view, job));
            match pool.pick(&BTreeSet::new(), &holding) {
                Ok((node, _)) => {
                    plan.events.push(Event::new(
                        topic::SCHEDULING,
                        format!(
                            "partition {p} moves from node {} to node {}: {why}",
                            old.node_id,
                            node.id()
                        ),
                        now,
                    ));
                    stop_all(plan, std::iter::once(old), &why);
                    if service {
                        holding.insert(node.id().to_string());
                    }
                    plan.new_executions
                        .push(new_execution(job, node, p, &eval.id, now, ids));
                }
                // A service copy stays where it is until another node can take it.
                Err(NoPick::Full(r) | NoPick::NoNode(r) | NoPick::Excluded(r)) if service => {
                    plan.events.push(Event::new(
                        topic::SCHEDULING,
                        format!(
                            "partition {p} stays on node {} for now ({why}): {r}",
                            old.node_id
                        ),
                        now,
                    ));
                    drain_retry = true;
                }
                // The deadline has come: it stops, and waits or fails as any unplaced partition.
                Err(NoPick::Full(r) | NoPick::NoNode(r) | NoPick::Excluded(r)) => {
                    stop_all(plan, std::iter::once(old), &why);
                    unplaced.push((p, format!("{why} and {r}")));
                }
            }
            continue;
        }
        let failed = failures.get(&p).copied().unwrap_or(0);
        let per_node = failed_on.get(&p).cloned().unwrap_or_default();
        let total_failed: usize = per_node.values().sum();
        if let Some(max) = policy.attempts
            && total_failed >= max
        {
            let last = last_failure.get(&p).map(|(_, m)| m.as_str()).unwrap_or("");
            unplaced.push((
                p,
                format!("{last}; the partition failed {total_failed} times, its retry limit"),
            ));
            exhausted = true;
            continue;
        }
        // Retried (or restarted) after the policy's delay from the last failure.
        let delay = policy.delay_ns(failed);
        if let Some((at, msg)) = last_failure.get(&p).filter(|_| delay > 0) {
            let due = at.saturating_add(delay);
            if now < due {
                if retry_at.is_none_or(|r| due < r) {
                    retry_at = Some(due);
                }
                plan.events.push(Event::new(
                    topic::SCHEDULING,
                    format!(
                        "partition {p} {} in {:.1}s, after: {msg}",
                        if service { "restarts" } else { "is retried" },
                        (due - now) as f64 / 1e9
                    ),
                    now,
                ));
                continue;
            }
        }
        // A node that failed the partition too often is out; one that failed it less is a last
        // resort, as is a node already holding a copy of a service.
        let exclude: BTreeSet<String> = match policy.per_node {
            Some(limit) => per_node
                .iter()
                .filter(|(_, n)| **n >= limit)
                .map(|(node, _)| node.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        if budget == 0 {
            // The update's limit of copies not yet healthy is reached: later, as they become so.
            continue;
        }
        let mut avoid: BTreeSet<String> = per_node.keys().cloned().collect();
        avoid.extend(holding.iter().cloned());
        let pool = pool.get_or_insert_with(|| {
            if sampling {
                NodePool::sample(view, job, want, &eval.id)
            } else {
                NodePool::new(view, job)
            }
        });
        let mut picked = pool.pick(&exclude, &avoid);
        if picked.is_err() && pool.partial {
            // What a sample cannot place, or why, is the whole fleet's to answer.
            let mut all = NodePool::new(view, job);
            all.count_placed(&plan.new_executions);
            *pool = all;
            picked = pool.pick(&exclude, &avoid);
        }
        match picked {
            Ok((node, held)) => {
                if rollout.is_some() {
                    budget -= 1;
                    placed_in_rollout += 1;
                }
                if !held.is_empty() {
                    plan.events.push(Event::new(
                        topic::SCHEDULING,
                        format!(
                            "partition {p} placed on node {} for data locality: it holds {}",
                            node.id(),
                            held.join(", ")
                        ),
                        now,
                    ));
                }
                if let Some((_, msg)) = last_failure.get(&p) {
                    plan.events.push(Event::new(
                        topic::SCHEDULING,
                        format!(
                            "partition {p} {} on node {} after: {msg}",
                            if service { "restarted" } else { "retried" },
                            node.id()
                        ),
                        now,
                    ));
                }
                if service {
                    holding.insert(node.id().to_string());
                }
                plan.new_executions
                    .push(new_execution(job, node, p, &eval.id, now, ids));
                live.entry(p).or_default();
            }
            // Retries are exhausted only when nodes with room could run it but each has failed
            // it too often; with no node at all (gone, disconnected) or none with room, the job
            // waits as any other.
            Err(NoPick::Excluded(reason)) => {
                let why = match last_failure.get(&p) {
                    Some((_, f)) => {
                        exhausted = true;
                        format!(
                            "{f}; no node can retry it (each may fail a partition {} times)",
                            policy.per_node.unwrap_or(0)
                        )
                    }
                    None => reason,
                };
                unplaced.push((p, why));
            }
            // No room for the new version while old copies hold it: one stops to make room, and
            // an evaluation right after this plan places the new copy there.
            Err(NoPick::Full(reason)) if !old_left.is_empty() => {
                let old = old_left.remove(0);
                stop_all(
                    plan,
                    std::iter::once(old),
                    &format!("stopped to make room for version {}", job.version),
                );
                plan.new_evaluations.push(Evaluation::new(
                    ids.evaluation_id(),
                    job,
                    trigger::JOB_ROLLOUT,
                    now,
                ));
                budget -= 1;
                if let Some(r) = rollout {
                    r.tell(
                        job,
                        plan,
                        format!(
                            "no room for partition {p}'s new copy ({reason}): the old copy on \
                             node {} stops first",
                            old.node_id
                        ),
                        now,
                    );
                }
            }
            Err(NoPick::Full(reason) | NoPick::NoNode(reason)) => unplaced.push((p, reason)),
        }
    }
    if let Some(r) = rollout
        && placed_in_rollout > 0
    {
        r.tell(
            job,
            plan,
            format!(
                "{placed_in_rollout} new cop{} placed, {} old still running",
                if placed_in_rollout == 1 { "y" } else { "ies" },
                old_left.len()
            ),
            now,
        );
    }
    if drain_retry {
        let at = next_backoff_tick(now);
        let id = derived_eval_id(trigger::NODE_DRAIN, &job.version.to_string(), at, &job.id);
        let mut next = Evaluation::new(id, job, trigger::NODE_DRAIN, now);
        next.wait_until = at;
        plan.new_evaluations.push(next);
    }
    if let Some(at) = retry_at {
        // One evaluation per job version and retry time, however many evaluations ask for it.
        let id = derived_eval_id(trigger::EXEC_FAILURE, &job.version.to_string(), at, &job.id);
        let mut next = Evaluation::new(id, job, trigger::EXEC_FAILURE, now);
        next.wait_until = at;
        plan.new_evaluations.push(next);
    }
    if unplaced.is_empty() {
        return;
    }
    let reason = unplaced[0].1.clone();
    let queue_deadline = job.create_time.saturating_add(
        job.task()
            .map_or(0, |t| t.timeouts.queue_timeout)
            .saturating_mul(1_000_000_000),
    );
    // A service waits for a node however long it takes; a batch job until its QueueTimeout.
    if !exhausted && (service || now < queue_deadline) {
        if job.state.state_type != JobStateType::Queued {
            plan.job_state = Some((JobStateType::Queued, reason.clone()));
            plan.events.push(Event::new(
                topic::QUEUEING,
                format!("Job queued: {reason}"),
                now,
            ));
        }
        let mut next = Evaluation::new(ids.evaluation_id(), job, trigger::JOB_QUEUE, now);
        next.wait_until = if service {
            now + QUEUE_BACKOFF_NS
        } else {
            (now + QUEUE_BACKOFF_NS).min(queue_deadline)
        };
        plan.new_evaluations.push(next);
        return;
    }
    // Give up: fail the job and stop what still runs.
    let all_live: Vec<&Execution> = live.values().flatten().copied().collect();
    stop_all(plan, all_live.into_iter(), "job failed");
    plan.new_executions.clear();
    plan.new_evaluations.clear();
    plan.job_state = Some((JobStateType::Failed, reason));
}

fn schedule_per_node(
    view: &dyn StateView,
    job: &Job,
    execs: &[&Execution],
    rollout: Option<&Rollout>,
    plan: &mut Plan,
    now: i64,
    ids: &mut dyn IdGen,
) {
    let mut pool = NodePool::new(view, job);
    let daemon = job.job_type() == JobType::Daemon;
    let mut any_failed = None;
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    for e in execs {
        // A daemon's execution lost with its node runs there again when the node is back.
        if daemon && e.is_terminal() && e.compute_state.state_type == ExecutionStateType::Cancelled
        {
            continue;
        }
        covered.insert(&e.node_id);
        if e.compute_state.state_type == ExecutionStateType::Failed {
            any_failed = Some(format!(
                "execution {} on node {} failed: {}",
                e.id,
                e.node_id,
                failure_message(e)
            ));
        }
    }
    if job.job_type() == JobType::Ops
        && let Some(f) = any_failed
    {
        stop_all(
            plan,
            execs.iter().copied().filter(|e| e.is_live()),
            "job failed",
        );
        plan.job_state = Some((JobStateType::Failed, f));
        return;
    }
    // A daemon leaves the nodes that no longer match it (labels, engines, capacity changed).
    if daemon {
        stop_all(
            plan,
            execs
                .iter()
                .copied()
                .filter(|e| e.is_live() && pool.unfit.contains(e.node_id.as_str())),
            "the node no longer matches the job",
        );
    }
    // An update under way: a node's old copy stops once the new one there is healthy (at once
    // where the node no longer takes the job); a node still running only an old copy gets its
    // new one while fewer than the policy's limit are not yet healthy.
    let mut budget = usize::MAX;
    let mut replacing: BTreeSet<&str> = BTreeSet::new();
    if let Some(r) = rollout {
        let mut old_on: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
        for e in &r.old {
            old_on.entry(e.node_id.as_str()).or_default().push(e);
        }
        let mut new_on: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
        for e in execs.iter().copied().filter(|e| e.is_live()) {
            new_on.entry(e.node_id.as_str()).or_default().push(e);
        }
        let candidates = pool.candidate_ids();
        let (mut in_flight, mut replaced, mut gone) = (0, Vec::new(), Vec::new());
        let mut replaced_on = Vec::new();
        for (node, olds) in old_on {
            let new_here = new_on.get(node).map(Vec::as_slice).unwrap_or_default();
            if !candidates.contains(node) {
                gone.extend(olds);
            } else if new_here.iter().any(|e| r.healthy(e, now)) {
                replaced.extend(olds);
                replaced_on.push(node);
            } else if !new_here.is_empty() {
                in_flight += 1;
            } else {
                replacing.insert(node);
            }
        }
        if !replaced.is_empty() {
            stop_all(
                plan,
                replaced.iter().copied(),
                &format!("replaced by version {}", job.version),
            );
            r.tell(
                job,
                plan,
                format!(
                    "the old cop{} on {} stopped",
                    if replaced_on.len() == 1 { "y" } else { "ies" },
                    replaced_on.join(", ")
                ),
                now,
            );
        }
        stop_all(
            plan,
            gone.into_iter(),
            "the node no longer takes the job's new version",
        );
        budget = r.policy.max_parallel.saturating_sub(in_flight);
    }
    let mut placed = 0;
    for (n, _) in pool.with_room() {
        if covered.contains(n.id()) {
            continue;
        }
        if replacing.remove(n.id()) {
            if budget == 0 {
                continue;
            }
            budget -= 1;
        }
        plan.new_executions
            .push(new_execution(job, n, 0, &plan.eval_id.clone(), now, ids));
        placed += 1;
    }
    // A full node still running only an old copy: the old copy stops to make room, and an
    // evaluation right after this plan places the new one there.
    if let Some(r) = rollout {
        let full: Vec<&str> = replacing
            .iter()
            .copied()
            .filter(|n| pool.full.contains_key(*n))
            .take(budget)
            .collect();
        if !full.is_empty() {
            stop_all(
                plan,
                r.old
                    .iter()
                    .copied()
                    .filter(|e| full.contains(&e.node_id.as_str())),
                &format!("stopped to make room for version {}", job.version),
            );
            plan.new_evaluations.push(Evaluation::new(
                ids.evaluation_id(),
                job,
                trigger::JOB_ROLLOUT,
                now,
            ));
            r.tell(
                job,
                plan,
                format!(
                    "no room beside the old copies on {}: they stop first",
                    full.join(", ")
                ),
                now,
            );
        }
    }
    // A daemon reaches a matching node that had no room as soon as it has: it looks again after
    // the queue backoff while any such node is left without a copy.
    let waiting: Vec<&String> = pool
        .full
        .keys()
        .filter(|id| !covered.contains(id.as_str()))
        .collect();
    if daemon && !waiting.is_empty() {
        plan.events.push(Event::new(
            topic::QUEUEING,
            format!(
                "{} matching node{} without room for the daemon; it looks again in {} s: {}",
                waiting.len(),
                if waiting.len() == 1 { "" } else { "s" },
                QUEUE_BACKOFF_NS / 1_000_000_000,
                pool.why_none()
            ),
            now,
        ));
        let at = next_backoff_tick(now);
        let id = derived_eval_id(trigger::JOB_QUEUE, &job.version.to_string(), at, &job.id);
        let mut next = Evaluation::new(id, job, trigger::JOB_QUEUE, now);
        next.wait_until = at;
        plan.new_evaluations.push(next);
    }
    if job.job_type() == JobType::Ops && placed == 0 {
        if execs.is_empty() {
            plan.job_state = Some((JobStateType::Failed, pool.why_none()));
        } else if execs.iter().all(|e| e.is_terminal()) {
            plan.job_state = Some((JobStateType::Completed, String::new()));
        }
    }
}

fn new_execution(
    job: &Job,
    node: &NodeState,
    partition: i32,
    eval_id: &str,
    now: i64,
    ids: &mut dyn IdGen,
) -> Execution {
    let task = job.task().cloned().unwrap_or_default();
    let mut alloc = AllocatedResources::default();
    alloc
        .tasks
        .insert(task.name.clone(), Resources::from_config(&task.resources));
    Execution {
        id: ids.execution_id(),
        namespace: job.namespace.clone(),
        eval_id: eval_id.to_string(),
        name: job.name.clone(),
        node_id: node.id().to_string(),
        job_id: job.id.clone(),
        job: None,
        job_version: job.version,
        allocated_resources: alloc,
        desired_state: State::new(ExecutionDesiredState::Running),
        compute_state: State::new(ExecutionStateType::New),
        partition_index: partition,
        create_time: now,
        modify_time: now,
        ..Default::default()
    }
}

/// The state as the plans made so far in one batch leave it: their new executions count as live,
/// on their nodes and for their jobs, so plans committed together never give out the same room
/// twice. (Their stops are not applied: the room they free waits for the commit.)
pub struct PlanningView<'a> {
    base: &'a dyn StateView,
    added: Vec<Execution>,
    by_node: std::collections::HashMap<String, Vec<usize>>,
    by_job: std::collections::HashMap<String, Vec<usize>>,
}

impl<'a> PlanningView<'a> {
    pub fn new(base: &'a dyn StateView) -> Self {
        PlanningView {
            base,
            added: Vec::new(),
            by_node: Default::default(),
            by_job: Default::default(),
        }
    }

    /// Counts a plan's new executions as placed.
    pub fn add(&mut self, plan: &Plan) {
        for e in &plan.new_executions {
            let i = self.added.len();
            self.by_node.entry(e.node_id.clone()).or_default().push(i);
            self.by_job.entry(e.job_id.clone()).or_default().push(i);
            self.added.push(e.clone());
        }
    }

    fn added<'s>(
        &'s self,
        index: &std::collections::HashMap<String, Vec<usize>>,
        key: &str,
    ) -> impl Iterator<Item = &'s Execution> {
        index
            .get(key)
            .into_iter()
            .flatten()
            .map(|i| &self.added[*i])
    }
}

impl StateView for PlanningView<'_> {
    fn job(&self, id: &str) -> Option<&Job> {
        self.base.job(id)
    }
    fn executions_of(&self, job_id: &str) -> Vec<&Execution> {
        let mut v = self.base.executions_of(job_id);
        v.extend(self.added(&self.by_job, job_id));
        v
    }
    fn nodes(&self) -> Vec<&NodeState> {
        self.base.nodes()
    }
    fn node(&self, id: &str) -> Option<&NodeState> {
        self.base.node(id)
    }
    fn nodes_labelled(&self, key: &str, values: &[String]) -> Option<Vec<&str>> {
        // A plan places executions; it never changes a node's labels.
        self.base.nodes_labelled(key, values)
    }
    fn evaluation(&self, id: &str) -> Option<&Evaluation> {
        self.base.evaluation(id)
    }
    fn live_executions_on(&self, node_id: &str) -> Vec<&Execution> {
        let mut v = self.base.live_executions_on(node_id);
        v.extend(self.added(&self.by_node, node_id));
        v
    }
}

/// When a job that waits for room looks again: the next multiple of the queue backoff at least a
/// backoff away, so that every evaluation of the job in the same window asks for the same
/// (derived) evaluation and waiting never forks into several chains.
fn next_backoff_tick(now: i64) -> i64 {
    (now.saturating_add(2 * QUEUE_BACKOFF_NS - 1) / QUEUE_BACKOFF_NS) * QUEUE_BACKOFF_NS
}

/// How far past its capacity a node may be given work, which it then queues (Bacalhau's
/// OverSubscription ranker: allocated + queued + the job ≤ 1.5 × the node's capacity).
pub const OVER_SUBSCRIPTION: f64 = 1.5;

/// A node that can run a job, with what its live executions (running and queued) hold.
struct Candidate<'a> {
    node: &'a NodeState,
    /// Capacity not allocated to a live execution (this plan's included).
    free: Resources,
    /// Allocated to live executions (this plan's included), which may exceed the capacity.
    allocated: Resources,
    /// The most the node may hold: [`OVER_SUBSCRIPTION`] × its capacity.
    limit: Resources,
    load: usize,
    /// The job's inputs it holds (data locality).
    held: Vec<String>,
}

impl Candidate<'_> {
    /// The node's allocated share of its CPU or memory, whichever is higher, in millionths of
    /// its over-subscription limit (how bin-packing ranks it).
    fn fullness(&self) -> u64 {
        let share = |used: f64, limit: f64| {
            if limit > 0.0 {
                (used.max(0.0) / limit * 1e6) as u64
            } else {
                0
            }
        };
        share(self.allocated.cpu, self.limit.cpu).max(share(
            self.allocated.memory as f64,
            self.limit.memory as f64,
        ))
    }

    /// What the node holds plus `need` stays within its over-subscription limit.
    fn has_room_for(&self, need: &Resources) -> bool {
        let mut after = self.allocated.clone();
        after.add(need);
        after.fits_in(&self.limit)
    }
}

/// Why [`NodePool::pick`] placed nothing.
enum NoPick {
    /// Nodes can run the job but have no room now: it waits for capacity.
    Full(String),
    /// Every node that has room was ruled out by the partition's failures there.
    Excluded(String),
    /// No node can run the job at all.
    NoNode(String),
}

/// Why a node cannot run a job (its text made only when someone reads it).
enum Why {
    Draining,
    Ineligible,
    /// Not approved or not connected.
    Unschedulable,
    Engine,
    Publisher,
    /// The job's input source at this index.
    Source(usize),
    /// The job's constraint at this index.
    Constraint(usize),
    Admission(String),
    TooBig,
}

/// Nodes that can run a job, with the capacity each has left, ranked least-loaded first.
struct NodePool<'a> {
    candidates: Vec<Candidate<'a>>,
    rejected: Vec<(&'a NodeState, Why)>,
    /// Schedulable nodes the job does not fit (engine, sources, constraints, policy, capacity).
    unfit: BTreeSet<&'a str>,
    /// Candidates [`Self::with_room`] found without room, and why.
    full: BTreeMap<String, String>,
    need: Resources,
    /// Built by [`Self::sample`] and stopped before the last node: what it cannot place, or why,
    /// is not the whole fleet's answer.
    partial: bool,
    job: &'a Job,
    engine: String,
    publisher: String,
    sources: Vec<String>,
    placement: caravel_model::spec::Placement,
    /// Nodes the walk looked at: the cost of building the pool, which the tests check (a pure
    /// scheduler has no metrics of its own, and a plan is a persisted record).
    #[cfg_attr(not(test), allow(dead_code))]
    walked: usize,
}

impl<'a> NodePool<'a> {
    /// Every node that can run the job.
    fn new(view: &'a dyn StateView, job: &'a Job) -> Self {
        Self::build(view, job, None)
    }

    /// Enough of the nodes for `want` placements, as Nomad's batch scheduler, which ranks a few
    /// feasible nodes rather than all (the power of two choices, after Sparrow): the walk starts
    /// at a place derived from `seed` (the evaluation's id, so every replica's scheduler would
    /// choose alike) and stops once it has found `max(2 × want, log2 nodes)` nodes with room. The
    /// pool is `partial`: a placement it cannot make is tried again on every node.
    fn sample(view: &'a dyn StateView, job: &'a Job, want: usize, seed: &str) -> Self {
        Self::build(view, job, Some((want, seed)))
    }

    fn build(view: &'a dyn StateView, job: &'a Job, sample: Option<(usize, &str)>) -> Self {
        // What every node is checked against, worked out once per evaluation: a fleet of
        // thousands is walked once per job, so the walk must not parse or format per node.
        let task = job.task();
        let need = task.map_or_else(Resources::default, |t| Resources::from_config(&t.resources));
        let engine = task.map(|t| t.engine.kind_lower()).unwrap_or_default();
        let publisher = task.map(|t| t.publisher.kind_lower()).unwrap_or_default();
        let sources: Vec<String> = task
            .map(|t| t.input_sources.as_slice())
            .unwrap_or(&[])
            .iter()
            .map(|i| i.source.kind_lower())
            .collect();
        let inputs = caravel_model::locality::JobInputs::of(job);
        // Nodes that advertise no admission policy have the default one: one verdict for all.
        let default_verdict = caravel_model::admission::AdmissionPolicy::default()
            .check(job)
            .err();
        let mut candidates = Vec::new();
        let mut rejected = Vec::new();
        let mut unfit = BTreeSet::new();
        // A sample walks only the nodes the job's most selective `=`/`in` constraint admits (the
        // label index), so a job for a few nodes of a large fleet does not visit the rest; what
        // it cannot place is then asked of every node, as for any sample.
        let narrowed = sample.and_then(|_| {
            job.constraints
                .iter()
                .filter(|c| matches!(c.operator.to_ascii_lowercase().as_str(), "=" | "==" | "in"))
                .filter_map(|c| view.nodes_labelled(&c.key, &c.values))
                .min_by_key(Vec::len)
        });
        let narrowed_walk = narrowed.is_some();
        // The narrowed walk has ids, and looks up only the nodes it reaches.
        let (all, ids) = match narrowed {
            Some(ids) => (Vec::new(), ids),
            None => (view.nodes(), Vec::new()),
        };
        let len = if narrowed_walk { ids.len() } else { all.len() };
        let (start, enough) = match sample {
            Some((want, seed)) if len > 0 => {
                // FNV-1a: a stable spread of start points, not a secret.
                let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
                });
                let log2 = usize::BITS - len.leading_zeros();
                (
                    (h % len as u64) as usize,
                    Some((2 * want).max(log2 as usize).max(2)),
                )
            }
            _ => (0, None),
        };
        let mut with_room = 0;
        let mut partial = narrowed_walk;
        let mut walked = 0;
        for i in (start..len).chain(0..start) {
            if enough.is_some_and(|k| with_room >= k) {
                partial = true;
                break;
            }
            walked += 1;
            let n = if narrowed_walk {
                match view.node(ids[i]) {
                    Some(n) => n,
                    None => continue,
                }
            } else {
                all[i]
            };
            if n.info.node_type != "Compute" {
                continue;
            }
            let ci = &n.info.compute_node_info;
            let schedulable = n.is_schedulable();
            if schedulable {
                match n.eligibility() {
                    Eligibility::Eligible => {}
                    // Not unfit: what runs there (a daemon's copy, say) is not told to leave.
                    Eligibility::Draining { .. } => {
                        rejected.push((n, Why::Draining));
                        continue;
                    }
                    Eligibility::Ineligible => {
                        rejected.push((n, Why::Ineligible));
                        continue;
                    }
                }
            }
            let why = if !schedulable {
                Some(Why::Unschedulable)
            } else if !ci
                .execution_engines
                .iter()
                .any(|e| e.eq_ignore_ascii_case(&engine))
            {
                Some(Why::Engine)
            } else if !publisher.is_empty()
                && !ci
                    .publishers
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&publisher))
            {
                Some(Why::Publisher)
            } else if let Some(i) = sources
                .iter()
                .position(|s| !ci.storage_sources.iter().any(|x| x.eq_ignore_ascii_case(s)))
            {
                Some(Why::Source(i))
            } else if let Some(i) = job
                .constraints
                .iter()
                .position(|c| !c.matches(&n.info.labels))
            {
                Some(Why::Constraint(i))
            } else {
                // The node's own admission policy, as it advertises it (none: the defaults, which
                // refuse Host networking): the node would refuse.
                match caravel_model::admission::AdmissionPolicy::from_labels(&n.info.labels) {
                    Some(policy) => policy.check(job).err(),
                    None => default_verdict.clone(),
                }
                .map(Why::Admission)
            };
            if let Some(w) = why {
                if schedulable {
                    unfit.insert(n.id());
                }
                rejected.push((n, w));
                continue;
            }
            let limit = if ci.max_job_requirements == Resources::default() {
                &ci.max_capacity
            } else {
                &ci.max_job_requirements
            };
            if !need.fits_in(limit) {
                unfit.insert(n.id());
                rejected.push((n, Why::TooBig));
                continue;
            }
            let mut free = ci.max_capacity.clone();
            let mut allocated = Resources::default();
            let live = view.live_executions_on(n.id());
            for e in &live {
                for r in e.allocated_resources.tasks.values() {
                    free.sub(r);
                    allocated.add(r);
                }
            }
            let c = Candidate {
                node: n,
                free,
                allocated,
                limit: ci.max_capacity.scaled(OVER_SUBSCRIPTION),
                load: live.len(),
                held: inputs.held_by(&n.info.labels),
            };
            if c.has_room_for(&need) {
                with_room += 1;
            }
            candidates.push(c);
        }
        candidates.sort_by(|a, b| {
            a.load
                .cmp(&b.load)
                .then_with(|| a.node.id().cmp(b.node.id()))
        });
        NodePool {
            candidates,
            rejected,
            unfit,
            full: BTreeMap::new(),
            need,
            partial,
            job,
            engine,
            publisher,
            sources,
            placement: job.placement(),
            walked,
        }
    }

    /// Counts executions already placed by this plan (made with another pool) as held.
    fn count_placed(&mut self, placed: &[Execution]) {
        for e in placed {
            if let Some(c) = self
                .candidates
                .iter_mut()
                .find(|c| c.node.id() == e.node_id)
            {
                c.free.sub(&self.need);
                c.allocated.add(&self.need);
                c.load += 1;
            }
        }
    }

    /// Why each node that cannot run the job was rejected, as people read it.
    fn rejections(&self) -> BTreeMap<String, String> {
        self.rejected
            .iter()
            .map(|(n, w)| (n.id().to_string(), self.reason(n, w)))
            .collect()
    }

    fn reason(&self, n: &NodeState, w: &Why) -> String {
        match w {
            Why::Draining => "draining (an operator's `node drain`)".into(),
            Why::Ineligible => {
                "ineligible for new work (an operator's `node eligibility --disable`)".into()
            }
            Why::Unschedulable => format!(
                "{} / {}",
                n.membership.as_str(),
                n.connection_state.status.as_str()
            ),
            Why::Engine => format!("engine {} is not supported", self.engine),
            Why::Publisher => format!("publisher {} is not supported", self.publisher),
            Why::Source(i) => format!("input source {} is not supported", self.sources[*i]),
            Why::Constraint(i) => {
                let c = &self.job.constraints[*i];
                format!(
                    "does not match constraint {} {} {:?}",
                    c.key, c.operator, c.values
                )
            }
            Why::Admission(why) => format!("its admission policy refuses the job: {why}"),
            Why::TooBig => format!(
                "job needs more than the node's capacity (cpu {} mem {})",
                self.need.cpu, self.need.memory
            ),
        }
    }

    /// Whether the node may take one more execution of the job: what it holds plus the job stays
    /// within its over-subscription limit (the part past its capacity waits in its queue).
    fn has_room(&self, c: &Candidate) -> bool {
        c.has_room_for(&self.need)
    }

    fn full_reason(&self, c: &Candidate) -> String {
        format!(
            "no room: its live executions hold {} of its capacity {} (at most {OVER_SUBSCRIPTION}× \
             is given out, the rest queued) and the job needs {}",
            c.allocated, c.node.info.compute_node_info.max_capacity, self.need
        )
    }

    /// The nodes that can run the job (room or not).
    fn candidate_ids(&self) -> BTreeSet<&'a str> {
        self.candidates.iter().map(|c| c.node.id()).collect()
    }

    /// Nodes that can run the job and have room for one more execution of it, with the job's
    /// inputs each holds; the rest are added to the reasons [`Self::why_none`] gives.
    fn with_room(&mut self) -> Vec<(&'a NodeState, Vec<String>)> {
        let mut out = Vec::new();
        let mut full = Vec::new();
        for c in &self.candidates {
            if self.has_room(c) {
                out.push((c.node, c.held.clone()));
            } else {
                full.push((c.node.id().to_string(), self.full_reason(c)));
            }
        }
        self.full.extend(full);
        out
    }

    /// Picks the least-loaded node outside `exclude` with room for the job, preferring one
    /// outside `avoid` too (nodes that failed the partition, or already hold a copy of the
    /// service); a node whose free capacity is short but within its over-subscription limit
    /// takes the execution (the compute node queues it) only when no node has room.
    fn pick(
        &mut self,
        exclude: &BTreeSet<String>,
        avoid: &BTreeSet<String>,
    ) -> Result<(&'a NodeState, Vec<String>), NoPick> {
        // Nodes with room first, then those holding more of the job's inputs, then the least
        // loaded (spread) or the fullest (binpack); ties by id, so plans are deterministic.
        let binpack = self.placement == caravel_model::spec::Placement::Binpack;
        let best = |strict: bool| {
            self.candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    let id = c.node.id();
                    !(exclude.contains(id) || strict && avoid.contains(id)) && self.has_room(c)
                })
                .min_by_key(|(_, c)| {
                    let (first, then) = if binpack {
                        (-(c.fullness() as i64), -(c.load as i64))
                    } else {
                        (c.load as i64, 0)
                    };
                    (
                        !self.need.fits_in(&c.free),
                        std::cmp::Reverse(c.held.len()),
                        first,
                        then,
                        c.node.id(),
                    )
                })
                .map(|(i, _)| i)
        };
        if let Some(i) = best(true).or_else(|| best(false)) {
            let need = self.need.clone();
            let c = &mut self.candidates[i];
            c.free.sub(&need);
            c.allocated.add(&need);
            c.load += 1;
            return Ok((c.node, c.held.clone()));
        }
        // Nothing placed: nodes without room are why, unless failures rule out those with room.
        let mut rejections = self.rejections();
        let mut full = false;
        let mut excluded = false;
        for c in &self.candidates {
            if !self.has_room(c) {
                rejections.insert(c.node.id().to_string(), self.full_reason(c));
                full = true;
            } else if exclude.contains(c.node.id()) {
                excluded = true;
            }
        }
        let why = why_none(&rejections, self.rejected.len() + self.candidates.len());
        Err(if excluded {
            NoPick::Excluded(why)
        } else if full {
            NoPick::Full(why)
        } else {
            NoPick::NoNode(why)
        })
    }

    /// Why no node takes the job: per reason, how many nodes and which (at most 5 named).
    fn why_none(&self) -> String {
        let mut all = self.rejections();
        all.extend(self.full.iter().map(|(k, v)| (k.clone(), v.clone())));
        why_none(&all, self.rejected.len() + self.candidates.len())
    }
}

/// Why no node takes a job, from the reasons nodes were rejected (those without room included)
/// and how many nodes there are in all.
fn why_none(rejections: &BTreeMap<String, String>, total: usize) -> String {
    if total == 0 {
        return "no compute node is connected".into();
    }
    if rejections.is_empty() {
        return "every suitable node has already failed this job".into();
    }
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (n, w) in rejections {
        by_reason
            .entry(w.as_str())
            .or_default()
            .push(caravel_model::ids::short(n));
    }
    let mut groups: Vec<(&str, Vec<&str>)> = by_reason.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let parts: Vec<String> = groups
        .iter()
        .map(|(why, nodes)| {
            let mut names = nodes.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            if nodes.len() > 5 {
                names.push_str(&format!(", and {} more", nodes.len() - 5));
            }
            let n = nodes.len();
            format!("{n} node{}: {why} ({names})", if n == 1 { "" } else { "s" })
        })
        .collect();
    format!(
        "no node can run this job: {} of {total} rejected: {}",
        rejections.len(),
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravel_model::command::Command;
    use caravel_model::execution::ExecutionUpdate;
    use caravel_model::ids::SequentialIds;
    use caravel_model::node::NodeInfo;
    use caravel_model::state::ClusterState;

    fn node(id: &str, engines: &[&str]) -> NodeInfo {
        let mut n = NodeInfo {
            node_id: id.into(),
            node_type: "Compute".into(),
            ..Default::default()
        };
        n.compute_node_info.execution_engines = engines.iter().map(|s| s.to_string()).collect();
        n.compute_node_info.publishers = vec!["local".into(), "noop".into()];
        n.compute_node_info.storage_sources =
            vec!["inline".into(), "local".into(), "urlDownload".into()];
        n.compute_node_info.max_capacity = Resources {
            cpu: 2.0,
            memory: 4 << 30,
            disk: 10 << 30,
            gpu: 0,
        };
        n
    }

    /// A state with these compute nodes registered, each supporting one engine.
    fn cluster(nodes: &[(&str, &str)]) -> ClusterState {
        let mut s = ClusterState::default();
        for (id, engine) in nodes {
            s.apply(&Command::RegisterNode {
                info: node(id, &[engine]),
                now: 1,
            });
        }
        s
    }

    fn submit(s: &mut ClusterState, count: i32) -> (String, String) {
        let text = format!(
            "Name: t\nType: batch\nCount: {count}\nTasks:\n- Name: main\n  Engine: {{Type: wasm, Params: {{EntryModule: /m.wasm}}}}\n  InputSources:\n  - Target: /m.wasm\n    Source: {{Type: inline, Params: {{URL: 'data:,x'}}}}\n"
        );
        let mut job =
            caravel_model::parse::parse_job(text.as_bytes(), caravel_model::parse::Mode::Server)
                .unwrap()
                .job;
        job.id = "j-1".into();
        let eval = Evaluation::new("ev-1".into(), &job, trigger::JOB_REGISTER, 10);
        s.apply(&Command::SubmitJob {
            job,
            evaluation: eval,
            force: false,
            now: 10,
        });
        ("j-1".into(), "ev-1".into())
    }

    fn run_eval(s: &mut ClusterState, eval_id: &str, ids: &mut SequentialIds, now: i64) -> Plan {
        let eval = s.evaluations[eval_id].clone();
        let plan = schedule(s, &eval, now, ids);
        s.apply(&Command::ApplyPlan(plan.clone()));
        plan
    }

    fn report(
        s: &mut ClusterState,
        node: &str,
        seq: u64,
        exec: &str,
        st: ExecutionStateType,
        followup: &str,
    ) {
        report_at(s, node, seq, exec, st, followup, 100 + seq as i64);
    }

    /// As [`report`], applied at `now`.
    fn report_at(
        s: &mut ClusterState,
        node: &str,
        seq: u64,
        exec: &str,
        st: ExecutionStateType,
        followup: &str,
        now: i64,
    ) {
        let update = ExecutionUpdate {
            execution_id: exec.into(),
            state: st,
            message: "boom".into(),
            run_output: None,
            published_result: None,
            topic: String::new(),
            time: 0,
        };
        s.apply(&Command::UpdateExecution {
            node_id: node.into(),
            seq,
            update,
            followup_eval_id: followup.into(),
            now,
        });
    }

    #[test]
    fn a_batch_job_runs_count_partitions_on_the_least_loaded_nodes_and_completes() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let (job, ev) = submit(&mut s, 2);
        let mut ids = SequentialIds::default();
        let plan = run_eval(&mut s, &ev, &mut ids, 20);
        assert_eq!(plan.new_executions.len(), 2);
        let nodes: BTreeSet<_> = plan
            .new_executions
            .iter()
            .map(|e| e.node_id.clone())
            .collect();
        assert_eq!(nodes.len(), 2, "spread over both nodes");
        for (i, e) in plan.new_executions.iter().enumerate() {
            report(
                &mut s,
                &e.node_id,
                1,
                &e.id,
                ExecutionStateType::Running,
                "",
            );
            report(
                &mut s,
                &e.node_id,
                2,
                &e.id,
                ExecutionStateType::Completed,
                &format!("f-{i}"),
            );
        }
        assert_eq!(s.jobs[&job].state.state_type, JobStateType::Running);
        run_eval(&mut s, "f-0", &mut ids, 30);
        let p = run_eval(&mut s, "f-1", &mut ids, 31);
        assert!(p.new_executions.is_empty());
        assert_eq!(s.jobs[&job].state.state_type, JobStateType::Completed);
    }

    #[test]
    fn a_failed_execution_is_retried_elsewhere_first_then_on_the_same_nodes_then_the_job_fails() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let (job, ev) = submit(&mut s, 1);
        let mut ids = SequentialIds::default();
        let mut plan = run_eval(&mut s, &ev, &mut ids, 20);
        let mut nodes = Vec::new();
        // As Bacalhau: each node takes a partition at most twice, a node that has not failed it
        // first; four attempts on two nodes.
        for attempt in 1..=4u64 {
            assert_eq!(plan.new_executions.len(), 1, "attempt {attempt}: {plan:?}");
            let e = plan.new_executions[0].clone();
            nodes.push(e.node_id.clone());
            let f = format!("f-{attempt}");
            report(
                &mut s,
                &e.node_id,
                attempt,
                &e.id,
                ExecutionStateType::Failed,
                &f,
            );
            plan = run_eval(&mut s, &f, &mut ids, 20 + attempt as i64);
        }
        assert_ne!(nodes[0], nodes[1], "retried on the other node first");
        assert_eq!(
            nodes.iter().filter(|n| **n == nodes[0]).count(),
            2,
            "{nodes:?}"
        );
        assert!(plan.new_executions.is_empty());
        let j = &s.jobs[&job];
        assert_eq!(j.state.state_type, JobStateType::Failed);
        assert!(
            j.state.message.contains("boom") && j.state.message.contains("no node can retry it"),
            "{}",
            j.state.message
        );
        let history = s.history_of(&job);
        assert!(
            history
                .iter()
                .any(|h| h.event.message.contains("partition 0 retried on node")),
            "every retry is in the job's history with its reason"
        );
    }

    #[test]
    fn a_one_node_cluster_retries_a_failed_partition_on_its_only_node() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let (job, ev) = submit(&mut s, 1);
        let mut ids = SequentialIds::default();
        let first = run_eval(&mut s, &ev, &mut ids, 20).new_executions[0].clone();
        report(
            &mut s,
            "n-a",
            1,
            &first.id,
            ExecutionStateType::Failed,
            "f-1",
        );
        let p = run_eval(&mut s, "f-1", &mut ids, 21);
        assert_eq!(p.new_executions.len(), 1);
        assert_eq!(p.new_executions[0].node_id, "n-a");
        let second = p.new_executions[0].id.clone();
        report(&mut s, "n-a", 2, &second, ExecutionStateType::Running, "");
        report(
            &mut s,
            "n-a",
            3,
            &second,
            ExecutionStateType::Completed,
            "f-2",
        );
        run_eval(&mut s, "f-2", &mut ids, 22);
        assert_eq!(s.jobs[&job].state.state_type, JobStateType::Completed);
    }

    fn set_meta(s: &mut ClusterState, job: &str, pairs: &[(&str, &str)]) {
        let mut j = s.jobs[job].clone();
        for (k, v) in pairs {
            j.meta.insert(k.to_string(), v.to_string());
        }
        s.jobs.insert(job.to_string(), j);
    }

    #[test]
    fn a_jobs_retry_policy_sets_the_attempts_and_a_doubling_delay() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm"), ("n-c", "wasm")]);
        let (job, ev) = submit(&mut s, 1);
        set_meta(
            &mut s,
            &job,
            &[
                (caravel_model::spec::RETRY_ATTEMPTS_META, "3"),
                (caravel_model::spec::RETRY_DELAY_META, "10s"),
            ],
        );
        let mut ids = SequentialIds::default();
        let e1 = run_eval(&mut s, &ev, &mut ids, SEC).new_executions[0].clone();
        report(
            &mut s,
            &e1.node_id,
            1,
            &e1.id,
            ExecutionStateType::Failed,
            "f-1",
        );
        let failed_at = s.executions[&e1.id].modify_time;
        // Not before the delay: an evaluation waits for it, and the history says when.
        let p = run_eval(&mut s, "f-1", &mut ids, failed_at + SEC);
        assert!(p.new_executions.is_empty(), "{p:?}");
        assert_eq!(p.new_evaluations.len(), 1);
        assert_eq!(p.new_evaluations[0].wait_until, failed_at + 10 * SEC);
        assert!(
            p.events[0].message.contains("is retried in 9.0s"),
            "{:?}",
            p.events
        );
        let retry = p.new_evaluations[0].id.clone();
        let p = run_eval(&mut s, &retry, &mut ids, failed_at + 10 * SEC);
        let e2 = p.new_executions[0].clone();
        assert_ne!(e2.node_id, e1.node_id);
        report(
            &mut s,
            &e2.node_id,
            1,
            &e2.id,
            ExecutionStateType::Failed,
            "f-2",
        );
        let failed_at = s.executions[&e2.id].modify_time;
        // The second retry waits twice as long.
        let p = run_eval(&mut s, "f-2", &mut ids, failed_at);
        assert_eq!(p.new_evaluations[0].wait_until, failed_at + 20 * SEC);
        let retry = p.new_evaluations[0].id.clone();
        let e3 = run_eval(&mut s, &retry, &mut ids, failed_at + 20 * SEC).new_executions[0].clone();
        report(
            &mut s,
            &e3.node_id,
            1,
            &e3.id,
            ExecutionStateType::Failed,
            "f-3",
        );
        // Three failures: the limit, although a node remains that could take it.
        let p = run_eval(&mut s, "f-3", &mut ids, failed_at + 100 * SEC);
        assert!(p.new_executions.is_empty() && p.new_evaluations.is_empty());
        let j = &s.jobs[&job];
        assert_eq!(j.state.state_type, JobStateType::Failed);
        assert!(
            j.state.message.contains("failed 3 times, its retry limit"),
            "{}",
            j.state.message
        );
    }

    fn submit_text(s: &mut ClusterState, id: &str, body: &str, now: i64) -> String {
        submit_with_task(s, id, body, "", now)
    }

    /// As [`submit_text`], with `task` (indented YAML lines) added to the job's task.
    fn submit_with_task(
        s: &mut ClusterState,
        id: &str,
        body: &str,
        task: &str,
        now: i64,
    ) -> String {
        let text = format!(
            "Name: {id}\n{body}Tasks:\n- Name: main\n  Engine: {{Type: wasm, Params: {{EntryModule: /m.wasm}}}}\n  InputSources:\n  - Target: /m.wasm\n    Source: {{Type: inline, Params: {{URL: 'data:,x'}}}}\n{task}"
        );
        let mut job =
            caravel_model::parse::parse_job(text.as_bytes(), caravel_model::parse::Mode::Server)
                .unwrap()
                .job;
        job.id = id.into();
        job.create_time = now;
        submit_parsed(s, job, now)
    }

    /// Submits `job` (a new version of the job of the same name, if there is one).
    fn submit_parsed(s: &mut ClusterState, job: Job, now: i64) -> String {
        let id = job.id.clone();
        let eval_id = format!("ev-{id}");
        let eval = Evaluation::new(eval_id.clone(), &job, trigger::JOB_REGISTER, now);
        s.apply(&Command::SubmitJob {
            job,
            evaluation: eval,
            force: false,
            now,
        });
        eval_id
    }

    /// The pending evaluations of a job that are due at `now`, oldest first.
    fn due(s: &ClusterState, job: &str, now: i64) -> Vec<String> {
        let mut v: Vec<&Evaluation> = s
            .pending_evaluations()
            .into_iter()
            .filter(|e| e.job_id == job && e.wait_until <= now)
            .collect();
        v.sort_by_key(|e| (e.create_time, e.id.clone()));
        v.into_iter().map(|e| e.id.clone()).collect()
    }

    fn live_nodes(s: &ClusterState, job: &str) -> BTreeSet<String> {
        live_on(s, job).into_iter().collect()
    }

    /// A new version of job `name`: its spec with `meta` added, submitted at `now`; the update's
    /// evaluation id.
    fn update(s: &mut ClusterState, name: &str, meta: &[(&str, &str)], now: i64) -> String {
        let mut job = s.jobs[name].clone();
        for (k, v) in meta {
            job.meta.insert(k.to_string(), v.to_string());
        }
        job.id = format!("{name}-update-{now}");
        let eval = submit_parsed(s, job, now);
        assert_eq!(
            s.evaluations[&eval].triggered_by,
            trigger::JOB_UPDATE,
            "an update of {name}"
        );
        eval
    }

    /// Reports every live execution of `job` not yet running as Running at `now`.
    fn start_all(s: &mut ClusterState, job: &str, seq: &mut u64, now: i64) {
        let starting: Vec<(String, String)> = s
            .executions_of(job)
            .into_iter()
            .filter(|e| e.is_live() && e.compute_state.state_type != ExecutionStateType::Running)
            .map(|e| (e.node_id.clone(), e.id.clone()))
            .collect();
        for (node, id) in starting {
            *seq += 1;
            report_at(s, &node, *seq, &id, ExecutionStateType::Running, "", now);
        }
    }

    /// The live executions of `job` per version: (version, node) pairs, sorted.
    fn live_versions(s: &ClusterState, job: &str) -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = s
            .executions_of(job)
            .into_iter()
            .filter(|e| e.is_live())
            .map(|e| (e.job_version, e.node_id.clone()))
            .collect();
        v.sort();
        v
    }

    /// Runs the job's one pending rollout evaluation, which must be due at `at`.
    fn run_rollout(s: &mut ClusterState, job: &str, ids: &mut SequentialIds, at: i64) -> Plan {
        let (look, due) = rollout_eval(s, job);
        assert_eq!(due, at, "{job}'s rollout evaluation is due then");
        run_eval(s, &look, ids, at)
    }

    /// The job's one pending rollout evaluation and when it is due.
    fn rollout_eval(s: &ClusterState, job: &str) -> (String, i64) {
        let v: Vec<&Evaluation> = s
            .pending_evaluations()
            .into_iter()
            .filter(|e| e.job_id == job && e.triggered_by == trigger::JOB_ROLLOUT)
            .collect();
        assert_eq!(v.len(), 1, "one rollout evaluation: {v:?}");
        (v[0].id.clone(), v[0].wait_until)
    }

    #[test]
    fn a_service_update_replaces_one_copy_at_a_time_each_once_a_new_one_has_run_long_enough() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm"), ("n-c", "wasm")]);
        let mut ids = SequentialIds::default();
        let mut seq = 0;
        let ev = submit_text(&mut s, "svc", "Type: service\nCount: 2\n", SEC);
        run_eval(&mut s, &ev, &mut ids, SEC);
        start_all(&mut s, "svc", &mut seq, 2 * SEC);
        let old = live_versions(&s, "svc");
        assert_eq!(old.len(), 2);

        // The update: one new copy, off the old copies' nodes; both old copies keep running.
        let up = update(&mut s, "svc", &[("v", "2")], 10 * SEC);
        let p = run_eval(&mut s, &up, &mut ids, 10 * SEC);
        assert!(p.updates.is_empty(), "nothing stops yet: {:?}", p.updates);
        assert_eq!(p.new_executions.len(), 1);
        assert_eq!(
            p.new_executions[0].node_id, "n-c",
            "away from the old copies"
        );
        assert_eq!(live_versions(&s, "svc").len(), 3);
        // A min-healthy time (10 s) after the placement; running since 12 s, it is not healthy
        // at 20 s: nothing changes, it looks again at 22 s.
        start_all(&mut s, "svc", &mut seq, 12 * SEC);
        let p = run_rollout(&mut s, "svc", &mut ids, 20 * SEC);
        assert!(p.updates.is_empty() && p.new_executions.is_empty(), "{p:?}");

        // Healthy: the oldest old copy stops and the second new copy is placed.
        let p = run_rollout(&mut s, "svc", &mut ids, 22 * SEC);
        assert_eq!(p.updates.len(), 1, "{p:?}");
        assert!(p.updates[0].message.contains("replaced by version 2"));
        assert_eq!(p.new_executions.len(), 1);
        start_all(&mut s, "svc", &mut seq, 23 * SEC);
        // Its placement's timer (32 s) finds it running for 9 s only and asks again for 33 s.
        run_rollout(&mut s, "svc", &mut ids, 32 * SEC);
        run_rollout(&mut s, "svc", &mut ids, 33 * SEC);
        assert_eq!(
            live_versions(&s, "svc")
                .iter()
                .map(|(v, _)| *v)
                .collect::<Vec<_>>(),
            [2, 2],
            "the update is done: two copies of version 2"
        );
        let told: Vec<String> = s
            .history_of("svc")
            .iter()
            .map(|h| h.event.message.clone())
            .filter(|m| m.starts_with("update to version 2"))
            .collect();
        assert!(
            told.iter().any(
                |m| m.contains("1 old copy stopped, 1 of 2 new copies healthy")
                    && m.contains(
                        "at most 1 new copy not yet healthy at a time; healthy after running 10s"
                    )
            ),
            "{told:?}"
        );
    }

    #[test]
    fn an_update_whose_copies_never_run_takes_no_old_copy_down_and_zero_parallel_replaces_all_at_once()
     {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let mut ids = SequentialIds::default();
        let mut seq = 0;
        let ev = submit_text(&mut s, "svc", "Type: service\nCount: 2\n", SEC);
        run_eval(&mut s, &ev, &mut ids, SEC);
        start_all(&mut s, "svc", &mut seq, 2 * SEC);
        let up = update(&mut s, "svc", &[("v", "2")], 10 * SEC);
        let p = run_eval(&mut s, &up, &mut ids, 10 * SEC);
        let bad = p.new_executions[0].clone();
        seq += 1;
        report_at(
            &mut s,
            &bad.node_id,
            seq,
            &bad.id,
            ExecutionStateType::Failed,
            "f-bad",
            11 * SEC,
        );
        let p = run_eval(&mut s, "f-bad", &mut ids, 11 * SEC);
        assert!(p.updates.is_empty(), "{p:?}");
        assert_eq!(
            live_versions(&s, "svc")
                .iter()
                .filter(|(v, _)| *v == 1)
                .count(),
            2,
            "both old copies still run"
        );

        // Version 3 asks for all at once: the old copies stop, both new ones are placed.
        let up = update(
            &mut s,
            "svc",
            &[(caravel_model::spec::UPDATE_MAX_PARALLEL_META, "0")],
            20 * SEC,
        );
        let p = run_eval(&mut s, &up, &mut ids, 20 * SEC);
        assert_eq!(p.new_executions.len(), 2);
        assert!(
            p.updates
                .iter()
                .all(|u| u.message == "job updated to a new version")
        );
        assert_eq!(
            live_versions(&s, "svc")
                .iter()
                .map(|(v, _)| *v)
                .collect::<Vec<_>>(),
            [3, 3]
        );
    }

    #[test]
    fn an_update_without_room_beside_the_old_copy_stops_it_first() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let mut ids = SequentialIds::default();
        let mut seq = 0;
        // Two CPUs of the node's two: old and new together would exceed 1.5x its capacity.
        let task = "  Resources: {CPU: '2'}\n";
        let ev = submit_with_task(&mut s, "svc", "Type: service\nCount: 1\n", task, SEC);
        run_eval(&mut s, &ev, &mut ids, SEC);
        start_all(&mut s, "svc", &mut seq, 2 * SEC);
        let up = update(&mut s, "svc", &[("v", "2")], 10 * SEC);
        let p = run_eval(&mut s, &up, &mut ids, 10 * SEC);
        assert!(p.new_executions.is_empty());
        assert_eq!(p.updates.len(), 1);
        assert!(
            p.updates[0]
                .message
                .contains("stopped to make room for version 2")
        );
        assert!(
            p.events
                .iter()
                .any(|e| e.message.contains("the old copy on node n-a stops first"))
        );
        // Stopped, it holds nothing: the evaluation right after places the new copy.
        let (next, at) = rollout_eval(&s, "svc");
        assert_eq!(at, 0, "due at once");
        let p = run_eval(&mut s, &next, &mut ids, 10 * SEC);
        assert_eq!(p.new_executions.len(), 1, "{p:?}");
        assert_eq!(p.new_executions[0].job_version, 2);
    }

    #[test]
    fn a_daemon_update_replaces_node_by_node_each_old_copy_once_the_new_one_beside_it_is_healthy() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let mut ids = SequentialIds::default();
        let mut seq = 0;
        let ev = submit_text(&mut s, "d", "Type: daemon\n", SEC);
        run_eval(&mut s, &ev, &mut ids, SEC);
        start_all(&mut s, "d", &mut seq, 2 * SEC);
        let up = update(&mut s, "d", &[("v", "2")], 10 * SEC);
        let p = run_eval(&mut s, &up, &mut ids, 10 * SEC);
        assert!(p.updates.is_empty());
        assert_eq!(p.new_executions.len(), 1, "one node at a time");
        let first = p.new_executions[0].node_id.clone();
        start_all(&mut s, "d", &mut seq, 11 * SEC);
        // The placement's timer (20 s), then healthy at 21 s (running since 11 s).
        let p = run_rollout(&mut s, "d", &mut ids, 20 * SEC);
        assert!(p.updates.is_empty() && p.new_executions.is_empty(), "{p:?}");
        let p = run_rollout(&mut s, "d", &mut ids, 21 * SEC);
        assert_eq!(p.updates.len(), 1);
        let stopped = &s.executions[&p.updates[0].execution_id];
        assert_eq!(
            (stopped.job_version, stopped.node_id.as_str()),
            (1, first.as_str()),
            "the old copy beside the healthy new one"
        );
        assert_eq!(p.new_executions.len(), 1);
        assert_ne!(p.new_executions[0].node_id, first, "then the next node");
        start_all(&mut s, "d", &mut seq, 22 * SEC);
        run_rollout(&mut s, "d", &mut ids, 31 * SEC);
        run_rollout(&mut s, "d", &mut ids, 32 * SEC);
        assert_eq!(
            live_versions(&s, "d"),
            [(2, "n-a".to_string()), (2, "n-b".to_string())]
        );
    }

    /// A state with `n` compute nodes `n-000`…, each with the wasm engine.
    fn fleet(n: usize) -> ClusterState {
        let ids: Vec<String> = (0..n).map(|i| format!("n-{i:03}")).collect();
        let nodes: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "wasm")).collect();
        cluster(&nodes)
    }

    #[test]
    fn a_batch_job_ranks_a_sample_of_a_large_fleet_and_falls_back_to_every_node() {
        // Spread: 128 one-partition jobs over 64 nodes, each ranking a sample, load nodes evenly.
        let mut s = fleet(64);
        let mut ids = SequentialIds::default();
        for i in 0..128 {
            let ev = submit_text(&mut s, &format!("b{i}"), "Type: batch\n", SEC);
            assert_eq!(run_eval(&mut s, &ev, &mut ids, SEC).new_executions.len(), 1);
        }
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for e in s.executions.values() {
            *per_node.entry(e.node_id.clone()).or_default() += 1;
        }
        let most = per_node.values().max().copied().unwrap_or(0);
        assert!(
            per_node.len() >= 48 && most <= 4,
            "{} nodes used, at most {most} on one",
            per_node.len()
        );

        // Room on one node only: the sample's walk goes on until it finds it.
        let mut s = fleet(40);
        let task = "  Resources: {CPU: '1.5'}\n  Timeouts: {QueueTimeout: 600}\n";
        let fill = submit_with_task(&mut s, "fill", "Type: batch\nCount: 39\n", task, SEC);
        let p = run_eval(&mut s, &fill, &mut ids, SEC);
        let filled: BTreeSet<String> = p.new_executions.iter().map(|e| e.node_id.clone()).collect();
        assert_eq!(filled.len(), 39, "one per node");
        // 1.5 CPU held of 2 × 1.5: two more fit only on the node that holds nothing.
        let big = "  Resources: {CPU: '2'}\n  Timeouts: {QueueTimeout: 600}\n";
        let ev = submit_with_task(&mut s, "big", "Type: batch\n", big, SEC);
        let p = run_eval(&mut s, &ev, &mut ids, SEC);
        assert_eq!(p.new_executions.len(), 1, "{:?}", s.jobs["big"].state);
        assert!(!filled.contains(&p.new_executions[0].node_id));
        // No room anywhere: the reason counts every node, not a sample.
        let ev = submit_with_task(&mut s, "none", "Type: batch\n", big, SEC);
        run_eval(&mut s, &ev, &mut ids, SEC);
        let why = &s.jobs["none"].state.message;
        assert!(why.contains("40 of 40 rejected"), "{why}");
    }

    #[test]
    fn a_service_copy_that_exits_or_fails_is_restarted_with_a_growing_delay() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let ev = submit_text(&mut s, "svc", "Type: service\nCount: 1\n", SEC);
        let mut ids = SequentialIds::default();
        let mut e = run_eval(&mut s, &ev, &mut ids, SEC).new_executions[0].clone();
        let mut seq = 0;
        let mut t = 10 * SEC;
        for (i, (exit, delay)) in [
            (ExecutionStateType::Completed, 1),
            (ExecutionStateType::Failed, 2),
            (ExecutionStateType::Completed, 4),
        ]
        .into_iter()
        .enumerate()
        {
            seq += 1;
            report(&mut s, "n-a", seq, &e.id, ExecutionStateType::Running, "");
            seq += 1;
            let f = format!("f-{i}");
            report(&mut s, "n-a", seq, &e.id, exit, &f);
            let ended = s.executions[&e.id].modify_time;
            let p = run_eval(&mut s, &f, &mut ids, ended);
            assert!(p.new_executions.is_empty(), "restart {i} waits");
            assert_eq!(
                p.new_evaluations[0].wait_until,
                ended + delay * SEC,
                "restart {i}"
            );
            let restart = p.new_evaluations[0].id.clone();
            t = t.max(ended + delay * SEC);
            let p = run_eval(&mut s, &restart, &mut ids, t);
            assert_eq!(p.new_executions.len(), 1, "restart {i}: {p:?}");
            e = p.new_executions[0].clone();
            assert_eq!(e.node_id, "n-a", "its only node takes it again");
        }
        assert!(!s.jobs["svc"].state.state_type.is_terminal());
    }

    #[test]
    fn service_copies_spread_over_nodes_within_one_plan_and_share_when_they_must() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm"), ("n-c", "wasm")]);
        let ev = submit_text(&mut s, "svc", "Type: service\nCount: 3\n", SEC);
        let p = run_eval(&mut s, &ev, &mut SequentialIds::default(), SEC);
        let nodes: BTreeSet<_> = p.new_executions.iter().map(|e| e.node_id.clone()).collect();
        assert_eq!(nodes.len(), 3, "one copy per node");
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let ev = submit_text(&mut s, "svc", "Type: service\nCount: 3\n", SEC);
        let p = run_eval(&mut s, &ev, &mut SequentialIds::default(), SEC);
        assert_eq!(
            p.new_executions.len(),
            3,
            "more copies than nodes: some share"
        );
        assert_eq!(live_nodes(&s, "svc").len(), 2);
    }

    fn join(s: &mut ClusterState, id: &str, labels: &[(&str, &str)], now: i64) {
        let mut info = node(id, &["wasm"]);
        info.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            s.apply(&Command::RegisterNode { info, now }),
            caravel_model::command::CommandResponse::Ok
        );
    }

    #[test]
    fn a_daemon_follows_the_fleet_to_nodes_that_join_return_or_start_matching() {
        let mut s = ClusterState::default();
        join(&mut s, "n-a", &[("zone", "edge")], 1);
        join(&mut s, "n-b", &[("zone", "core")], 1);
        let body = "Type: daemon\nConstraints:\n- {Key: zone, Operator: '=', Values: [edge]}\n";
        let ev = submit_text(&mut s, "d", body, SEC);
        let mut ids = SequentialIds::default();
        run_eval(&mut s, &ev, &mut ids, SEC);
        assert_eq!(live_nodes(&s, "d"), BTreeSet::from(["n-a".to_string()]));
        // A node that joins later, matching: an evaluation, and the daemon runs there.
        join(&mut s, "n-c", &[("zone", "edge")], 10 * SEC);
        let evals = due(&s, "d", 10 * SEC);
        assert_eq!(evals.len(), 1);
        assert_eq!(s.evaluations[&evals[0]].triggered_by, trigger::NODE_JOIN);
        run_eval(&mut s, &evals[0], &mut ids, 10 * SEC);
        assert_eq!(live_nodes(&s, "d").len(), 2);
        // A node that starts matching (its labels change): it gets the daemon too.
        join(&mut s, "n-b", &[("zone", "edge")], 20 * SEC);
        let evals = due(&s, "d", 20 * SEC);
        run_eval(&mut s, &evals[0], &mut ids, 20 * SEC);
        assert_eq!(live_nodes(&s, "d").len(), 3);
        // One that stops matching: the daemon leaves it.
        join(&mut s, "n-a", &[("zone", "core")], 30 * SEC);
        let evals = due(&s, "d", 30 * SEC);
        let p = run_eval(&mut s, &evals[0], &mut ids, 30 * SEC);
        assert_eq!(p.updates.len(), 1);
        assert!(p.updates[0].message.contains("no longer matches"), "{p:?}");
        assert_eq!(
            live_nodes(&s, "d"),
            BTreeSet::from(["n-b".to_string(), "n-c".to_string()])
        );
        // A node lost past its grace period, back later: the daemon runs there again.
        let e = s
            .executions_of("d")
            .into_iter()
            .find(|e| e.is_live() && e.node_id == "n-c")
            .unwrap()
            .id
            .clone();
        disconnect(&mut s, "n-c", &["leave"], 40 * SEC);
        set_meta(
            &mut s,
            "d",
            &[(caravel_model::spec::DISCONNECT_GRACE_META, "0s")],
        );
        run_eval(&mut s, "leave", &mut ids, 40 * SEC);
        assert_eq!(
            s.executions[&e].compute_state.state_type,
            ExecutionStateType::Cancelled
        );
        join(&mut s, "n-c", &[("zone", "edge")], 50 * SEC);
        let evals = due(&s, "d", 50 * SEC);
        run_eval(&mut s, &evals[0], &mut ids, 50 * SEC);
        assert!(live_nodes(&s, "d").contains("n-c"));
        // A re-registration that changes nothing asks for no evaluation.
        let before = s.evaluations.len();
        join(&mut s, "n-c", &[("zone", "edge")], 60 * SEC);
        assert_eq!(s.evaluations.len(), before);
    }

    #[test]
    fn a_queued_job_is_placed_as_soon_as_a_node_joins_without_a_second_evaluation_chain() {
        let mut s = ClusterState::default();
        let body = "Type: batch\nCount: 1\n";
        let ev = submit_text(&mut s, "q", body, SEC);
        let mut j = s.jobs["q"].clone();
        j.tasks[0].timeouts.queue_timeout = 600;
        s.jobs.insert("q".into(), j);
        let mut ids = SequentialIds::default();
        let p = run_eval(&mut s, &ev, &mut ids, SEC);
        assert_eq!(s.jobs["q"].state.state_type, JobStateType::Queued);
        assert_eq!(p.new_evaluations[0].wait_until, SEC + QUEUE_BACKOFF_NS);
        let pending = s.pending_evaluations().len();
        join(&mut s, "n-a", &[], 2 * SEC);
        assert_eq!(
            s.pending_evaluations().len(),
            pending,
            "the waiting evaluation is brought forward, not doubled"
        );
        let evals = due(&s, "q", 2 * SEC);
        assert_eq!(evals.len(), 1);
        let p = run_eval(&mut s, &evals[0], &mut ids, 2 * SEC);
        assert_eq!(p.new_executions.len(), 1);
        assert_eq!(p.new_executions[0].node_id, "n-a");
    }

    #[test]
    fn an_ops_job_runs_once_on_every_matching_node_and_fails_if_one_fails() {
        let mut s = ClusterState::default();
        for n in ["n-a", "n-b", "n-c"] {
            join(&mut s, n, &[("role", "worker")], 1);
        }
        join(&mut s, "n-d", &[("role", "db")], 1);
        let body = "Type: ops\nConstraints:\n- {Key: role, Operator: '=', Values: [worker]}\n";
        let ev = submit_text(&mut s, "o", body, SEC);
        let mut ids = SequentialIds::default();
        let p = run_eval(&mut s, &ev, &mut ids, SEC);
        let nodes: BTreeSet<_> = p.new_executions.iter().map(|e| e.node_id.clone()).collect();
        assert_eq!(nodes.len(), 3);
        assert!(!nodes.contains("n-d"));
        let e = p.new_executions[0].clone();
        report(
            &mut s,
            &e.node_id,
            1,
            &e.id,
            ExecutionStateType::Failed,
            "f-1",
        );
        run_eval(&mut s, "f-1", &mut ids, 2 * SEC);
        assert_eq!(s.jobs["o"].state.state_type, JobStateType::Failed);
        assert!(live_nodes(&s, "o").is_empty(), "the others are stopped");
    }

    /// One node and a batch job "t" with a TotalTimeout of 60 s, submitted at 1 s.
    fn one_minute_job() -> (ClusterState, String) {
        let mut s = cluster(&[("n-a", "wasm")]);
        let ev = submit_text(&mut s, "t", "Type: batch\n", SEC);
        let mut j = s.jobs["t"].clone();
        j.tasks[0].timeouts.total_timeout = 60;
        s.jobs.insert("t".into(), j);
        (s, ev)
    }

    #[test]
    fn total_timeout_is_a_deadline_for_the_whole_job_with_its_own_timer() {
        let (mut s, ev) = one_minute_job();
        let mut ids = SequentialIds::default();
        let p = run_eval(&mut s, &ev, &mut ids, SEC);
        let e = p.new_executions[0].clone();
        let timer = p
            .new_evaluations
            .iter()
            .find(|e| e.triggered_by == trigger::JOB_TIMEOUT)
            .expect("a timer for the deadline")
            .clone();
        assert_eq!(timer.wait_until, 61 * SEC);
        report(&mut s, "n-a", 1, &e.id, ExecutionStateType::Running, "");
        let p = run_eval(&mut s, &timer.id, &mut ids, 61 * SEC);
        assert_eq!(p.updates.len(), 1, "the running execution is stopped");
        let j = &s.jobs["t"];
        assert_eq!(j.state.state_type, JobStateType::Failed);
        assert!(
            j.state.message.contains("TotalTimeout of 1m"),
            "{}",
            j.state.message
        );
    }

    #[test]
    fn a_job_lands_next_to_its_data_and_its_history_says_so() {
        let mut s = ClusterState::default();
        for (id, data) in [("n-a", ""), ("n-b", "s3://logs/2026/ /srv/x"), ("n-c", "")] {
            let mut info = node(id, &["wasm"]);
            info.compute_node_info.storage_sources.push("s3".into());
            if !data.is_empty() {
                info.labels
                    .insert(caravel_model::locality::DATA_LABEL.into(), data.into());
            }
            s.apply(&Command::RegisterNode { info, now: 1 });
        }
        // Every node runs a copy of a service: by load and id n-a would win, but n-b holds the data.
        let busy = submit_text(&mut s, "busy", "Type: service\nCount: 3\n", SEC);
        let mut ids = SequentialIds::default();
        run_eval(&mut s, &busy, &mut ids, SEC);
        let text = "Type: batch\n".to_string();
        let ev = submit_text(&mut s, "near", &text, 2 * SEC);
        let mut j = s.jobs["near"].clone();
        j.tasks[0]
            .input_sources
            .push(caravel_model::spec::InputSource {
                source: caravel_model::spec::SpecConfig::new("s3")
                    .with("Bucket", "logs")
                    .with("Key", "2026/12/01.csv"),
                target: "/logs".into(),
                ..Default::default()
            });
        s.jobs.insert("near".into(), j);
        let p = run_eval(&mut s, &ev, &mut ids, 2 * SEC);
        assert_eq!(p.new_executions[0].node_id, "n-b");
        assert!(
            p.events.iter().any(|e| e.message
                == "partition 0 placed on node n-b for data locality: it holds s3://logs/2026/12/01.csv (declares s3://logs/2026/)"),
            "{:?}",
            p.events
        );
    }

    #[test]
    fn timers_survive_joins_and_early_runs_and_a_deadline_after_completion_fails_nothing() {
        let (mut s, ev) = one_minute_job();
        let mut ids = SequentialIds::default();
        let p = run_eval(&mut s, &ev, &mut ids, SEC);
        let e = p.new_executions[0].clone();
        let timer = p.new_evaluations[0].id.clone();
        // The node re-registers with new labels: a join evaluation of its own; the timer keeps
        // its time.
        join(&mut s, "n-a", &[("zone", "x")], 2 * SEC);
        assert_eq!(s.evaluations[&timer].wait_until, 61 * SEC);
        assert_eq!(due(&s, "t", 2 * SEC).len(), 1);
        // A timer that runs early asks for the same timer again: one evaluation.
        let mut early = s.evaluations[&timer].clone();
        early.wait_until = 0;
        let p = schedule(&s, &early, 3 * SEC, &mut ids);
        assert_eq!(p.new_evaluations.len(), 1);
        assert_eq!(p.new_evaluations[0].id, timer);
        // Completed at 59 s, evaluated after the deadline: Completed, not timed out.
        report(&mut s, "n-a", 1, &e.id, ExecutionStateType::Running, "");
        report(&mut s, "n-a", 2, &e.id, ExecutionStateType::Completed, "");
        run_eval(&mut s, &timer, &mut ids, 61 * SEC);
        assert_eq!(s.jobs["t"].state.state_type, JobStateType::Completed);
    }

    #[test]
    fn retry_timers_asked_for_by_several_evaluations_are_one_and_a_lost_node_queues_a_service() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let ev = submit_text(&mut s, "svc", "Type: service\nCount: 1\n", SEC);
        let mut ids = SequentialIds::default();
        let e = run_eval(&mut s, &ev, &mut ids, SEC).new_executions[0].clone();
        report(&mut s, "n-a", 1, &e.id, ExecutionStateType::Running, "");
        report(&mut s, "n-a", 2, &e.id, ExecutionStateType::Failed, "f-1");
        let ended = s.executions[&e.id].modify_time;
        let a = schedule(&s, &s.evaluations["f-1"].clone(), ended, &mut ids);
        let b = schedule(&s, &s.evaluations["f-1"].clone(), ended + 1, &mut ids);
        assert_eq!(a.new_evaluations[0].id, b.new_evaluations[0].id);
        s.apply(&Command::ApplyPlan(a.clone()));
        // Its only node is gone when the restart is due: the service waits, it does not fail.
        disconnect(&mut s, "n-a", &[], 2 * SEC);
        let restart = a.new_evaluations[0].id.clone();
        run_eval(&mut s, &restart, &mut ids, 10 * SEC);
        assert_eq!(s.jobs["svc"].state.state_type, JobStateType::Queued);
        join(&mut s, "n-a", &[], 20 * SEC);
        let evals = due(&s, "svc", 20 * SEC);
        let p = run_eval(&mut s, &evals[0], &mut ids, 20 * SEC);
        assert_eq!(p.new_executions.len(), 1, "restarted once its node is back");
    }

    #[test]
    fn a_job_no_node_can_run_says_per_reason_how_many_nodes_and_which() {
        let mut s = ClusterState::default();
        for n in ["n-a", "n-b"] {
            let info = node(n, &["docker"]);
            s.apply(&Command::RegisterNode { info, now: 1 });
        }
        join(&mut s, "n-c", &[("zone", "core")], 1);
        let body = "Type: batch\nConstraints:\n- {Key: zone, Operator: '=', Values: [edge]}\n";
        let ev = submit_text(&mut s, "x", body, SEC);
        run_eval(&mut s, &ev, &mut SequentialIds::default(), SEC);
        let j = &s.jobs["x"];
        assert_eq!(j.state.state_type, JobStateType::Failed);
        assert_eq!(
            j.state.message,
            "no node can run this job: 3 of 3 rejected: 2 nodes: engine wasm is not supported (n-a, n-b); 1 node: does not match constraint zone = [\"edge\"] (n-c)"
        );
    }

    fn disconnect(s: &mut ClusterState, node: &str, eval_ids: &[&str], now: i64) {
        s.apply(&Command::SetNodeConnection {
            node_id: node.into(),
            status: NodeConnection::Disconnected,
            reason: "no heartbeat for 30s".into(),
            evaluation_ids: eval_ids.iter().map(|e| e.to_string()).collect(),
            now,
        });
    }

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn executions_on_a_disconnected_node_are_kept_for_the_grace_period_then_replaced_once() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let (job, ev) = submit(&mut s, 1);
        let mut ids = SequentialIds::default();
        let first = run_eval(&mut s, &ev, &mut ids, 20).new_executions[0].clone();
        report(
            &mut s,
            &first.node_id,
            1,
            &first.id,
            ExecutionStateType::Running,
            "",
        );
        let t0 = 100 * SEC;
        disconnect(&mut s, &first.node_id, &["leave"], t0);
        // Within the grace period (default 10 min): kept, and an evaluation waits for its end.
        let p = run_eval(&mut s, "leave", &mut ids, t0 + SEC);
        assert!(p.new_executions.is_empty() && p.updates.is_empty(), "{p:?}");
        assert_eq!(p.new_evaluations.len(), 1);
        let grace_eval = p.new_evaluations[0].clone();
        assert_eq!(grace_eval.triggered_by, trigger::NODE_GRACE);
        assert_eq!(grace_eval.wait_until, t0 + 600 * SEC);
        // Another evaluation of the job meanwhile asks for no second timer.
        let mut other = Evaluation::new("other".into(), &s.jobs[&job], trigger::EXEC_UPDATE, t0);
        other.wait_until = 0;
        let p = schedule(&s, &other, t0 + 2 * SEC, &mut ids);
        assert!(p.new_evaluations.is_empty() && p.new_executions.is_empty());
        // At the end of the grace period: the old one is lost, a replacement runs on the other node.
        let p = run_eval(&mut s, &grace_eval.id, &mut ids, t0 + 600 * SEC);
        assert_eq!(p.updates.len(), 1);
        assert!(
            p.updates[0].message.starts_with("lost: node"),
            "{}",
            p.updates[0].message
        );
        let old = &s.executions[&first.id];
        assert_eq!(old.compute_state.state_type, ExecutionStateType::Cancelled);
        assert_eq!(old.desired_state.state_type, ExecutionDesiredState::Stopped);
        assert_eq!(p.new_executions.len(), 1);
        let second = p.new_executions[0].clone();
        assert_ne!(second.node_id, first.node_id);
        // The old node comes back and reports its execution completed offline: refused (it was
        // replaced), so the partition completes once, through the replacement.
        report(
            &mut s,
            &first.node_id,
            2,
            &first.id,
            ExecutionStateType::Completed,
            "late",
        );
        assert_eq!(
            s.executions[&first.id].compute_state.state_type,
            ExecutionStateType::Cancelled
        );
        report(
            &mut s,
            &second.node_id,
            1,
            &second.id,
            ExecutionStateType::Running,
            "",
        );
        report(
            &mut s,
            &second.node_id,
            2,
            &second.id,
            ExecutionStateType::Completed,
            "f-2",
        );
        run_eval(&mut s, "f-2", &mut ids, t0 + 601 * SEC);
        assert_eq!(s.jobs[&job].state.state_type, JobStateType::Completed);
        let completed = s
            .executions
            .values()
            .filter(|e| e.compute_state.state_type == ExecutionStateType::Completed)
            .count();
        assert_eq!(completed, 1, "a batch job of count 1 completes once");
    }

    #[test]
    fn a_job_sets_its_own_grace_period_and_zero_replaces_at_once() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let (job, ev) = submit(&mut s, 1);
        let mut j = s.jobs[&job].clone();
        j.meta.insert(
            caravel_model::spec::DISCONNECT_GRACE_META.into(),
            "0s".into(),
        );
        s.jobs.insert(job.clone(), j);
        let mut ids = SequentialIds::default();
        let first = run_eval(&mut s, &ev, &mut ids, 20).new_executions[0].clone();
        disconnect(&mut s, &first.node_id, &["leave"], 50 * SEC);
        let p = run_eval(&mut s, "leave", &mut ids, 50 * SEC);
        assert_eq!(p.updates.len(), 1);
        assert_eq!(p.new_executions.len(), 1);
        assert!(
            p.updates[0].message.contains("grace period 0s"),
            "{}",
            p.updates[0].message
        );
    }

    #[test]
    fn executions_on_a_rejected_or_deleted_node_are_replaced_without_a_grace_period() {
        for delete in [false, true] {
            let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
            let (_job, ev) = submit(&mut s, 1);
            let mut ids = SequentialIds::default();
            let first = run_eval(&mut s, &ev, &mut ids, 20).new_executions[0].clone();
            let cmd = if delete {
                Command::DeleteNode {
                    node_id: first.node_id.clone(),
                    message: "retired".into(),
                    evaluation_ids: vec!["gone".into()],
                    now: 30,
                }
            } else {
                Command::SetNodeMembership {
                    node_id: first.node_id.clone(),
                    membership: caravel_model::states::NodeMembership::Rejected,
                    message: "key leaked".into(),
                    evaluation_ids: vec!["gone".into()],
                    now: 30,
                }
            };
            assert_eq!(s.apply(&cmd), caravel_model::command::CommandResponse::Ok);
            // Well inside the default 10-minute grace period: replaced anyway.
            let p = run_eval(&mut s, "gone", &mut ids, 31);
            assert_eq!(p.updates.len(), 1, "delete={delete}");
            let why = if delete {
                "was deleted"
            } else {
                "was rejected"
            };
            assert!(
                p.updates[0].message.contains(why),
                "{}",
                p.updates[0].message
            );
            assert_eq!(p.new_executions.len(), 1);
            assert_ne!(p.new_executions[0].node_id, first.node_id);
        }
    }

    #[test]
    fn a_node_back_within_the_grace_period_keeps_its_executions() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let (_job, ev) = submit(&mut s, 1);
        let mut ids = SequentialIds::default();
        let first = run_eval(&mut s, &ev, &mut ids, 20).new_executions[0].clone();
        disconnect(&mut s, &first.node_id, &["leave"], 100 * SEC);
        let p = run_eval(&mut s, "leave", &mut ids, 101 * SEC);
        let grace = p.new_evaluations[0].id.clone();
        s.apply(&Command::RegisterNode {
            info: node(&first.node_id, &["wasm"]),
            now: 200 * SEC,
        });
        let p = run_eval(&mut s, &grace, &mut ids, 700 * SEC);
        assert!(p.updates.is_empty() && p.new_executions.is_empty(), "{p:?}");
        assert!(s.executions[&first.id].is_live());
    }

    #[test]
    fn a_job_no_node_can_run_fails_at_once_with_the_reason() {
        let mut s = cluster(&[("n-a", "docker")]);
        let (job, ev) = submit(&mut s, 1);
        run_eval(&mut s, &ev, &mut SequentialIds::default(), 20);
        let j = &s.jobs[&job];
        assert_eq!(j.state.state_type, JobStateType::Failed);
        assert!(
            j.state.message.contains("engine wasm is not supported"),
            "{}",
            j.state.message
        );
    }

    #[test]
    fn stopping_a_job_cancels_its_live_executions() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let (job, ev) = submit(&mut s, 1);
        let mut ids = SequentialIds::default();
        let e = run_eval(&mut s, &ev, &mut ids, 20).new_executions[0].clone();
        s.apply(&Command::StopJob {
            job_id: job.clone(),
            reason: String::new(),
            evaluation_id: "stop".into(),
            now: 30,
        });
        let p = run_eval(&mut s, "stop", &mut ids, 31);
        assert_eq!(p.updates.len(), 1);
        assert_eq!(
            s.executions[&e.id].desired_state.state_type,
            ExecutionDesiredState::Stopped
        );
        assert_eq!(s.jobs[&job].state.state_type, JobStateType::Stopped);
    }

    #[test]
    fn a_plan_made_from_a_stale_view_is_refused_and_changes_nothing() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let (job, ev) = submit(&mut s, 1);
        let eval = s.evaluations[&ev].clone();
        let plan = schedule(&s, &eval, 20, &mut SequentialIds::default());
        s.apply(&Command::StopJob {
            job_id: job,
            reason: String::new(),
            evaluation_id: "stop".into(),
            now: 21,
        });
        let r = s.apply(&Command::ApplyPlan(plan));
        assert!(matches!(
            r,
            caravel_model::command::CommandResponse::Rejected { .. }
        ));
        assert!(s.executions.is_empty());
    }

    const ONE_CPU: &str = "  Resources: {CPU: '1'}\n  Timeouts: {QueueTimeout: 600}\n";

    /// Runs and completes one live execution of `job`; its follow-up evaluation is `followup`.
    fn finish_one(s: &mut ClusterState, job: &str, seq: u64, followup: &str) {
        let e = s
            .executions_of(job)
            .into_iter()
            .find(|e| e.is_live())
            .unwrap()
            .clone();
        report(s, &e.node_id, seq, &e.id, ExecutionStateType::Running, "");
        report(
            s,
            &e.node_id,
            seq + 1,
            &e.id,
            ExecutionStateType::Completed,
            followup,
        );
    }

    /// The nodes a plan placed new executions on, sorted.
    fn placed_on(p: &Plan) -> Vec<&str> {
        let mut on: Vec<&str> = p
            .new_executions
            .iter()
            .map(|e| e.node_id.as_str())
            .collect();
        on.sort();
        on
    }

    /// A job constrained to a few nodes of a large fleet walks only those (the label index), and
    /// what they cannot take is still explained from every node.
    #[test]
    fn a_sample_walks_only_the_nodes_a_constraint_admits_and_falls_back_to_every_node() {
        let mut s = ClusterState::default();
        for i in 0..300 {
            let mut info = node(&format!("n-{i:03}"), &["wasm"]);
            let zone = if i % 100 == 7 { "edge" } else { "core" };
            info.labels.insert("zone".into(), zone.into());
            s.apply(&Command::RegisterNode { info, now: SEC });
        }
        let ev = submit_text(
            &mut s,
            "edge",
            "Type: batch\nCount: 2\nConstraints: [{Key: zone, Operator: '=', Values: [edge]}]\n",
            SEC,
        );
        let job = s.jobs["edge"].clone();
        let pool = NodePool::sample(&s, &job, 2, &ev);
        assert_eq!(pool.walked, 3, "only the three edge nodes are walked");
        assert!(pool.partial);
        let mut ids = SequentialIds::default();
        let p = run_eval(&mut s, &ev, &mut ids, SEC);
        let mut got = placed_on(&p);
        got.dedup();
        assert_eq!(got.len(), 2, "{p:?}");
        assert!(
            got.iter().all(|n| ["n-007", "n-107", "n-207"].contains(n)),
            "{got:?}"
        );
        // A label no node has: nothing is walked, and the answer comes from the whole fleet.
        let ev = submit_text(
            &mut s,
            "nowhere",
            "Type: batch\nConstraints: [{Key: zone, Operator: in, Values: [moon]}]\n",
            2 * SEC,
        );
        let job = s.jobs["nowhere"].clone();
        assert_eq!(NodePool::sample(&s, &job, 1, &ev).walked, 0);
        run_eval(&mut s, &ev, &mut ids, 2 * SEC);
        let m = &s.jobs["nowhere"].state.message;
        assert!(
            m.contains("300 of 300 rejected") && m.contains("300 nodes: does not match constraint"),
            "{m}"
        );
    }

    /// `caravel.io/placement`: spread (the default) puts work on the least loaded nodes; binpack
    /// fills the fullest node that has room first, leaving whole nodes free.
    #[test]
    fn spread_places_on_the_least_loaded_nodes_and_binpack_on_the_fullest_with_room() {
        for (placement, want) in [("", ["n-b", "n-c"]), ("binpack", ["n-a", "n-b"])] {
            let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm"), ("n-c", "wasm")]);
            let mut ids = SequentialIds::default();
            let first = submit_with_task(&mut s, "first", "Type: batch\n", ONE_CPU, SEC);
            let p = run_eval(&mut s, &first, &mut ids, SEC);
            assert_eq!(p.new_executions[0].node_id, "n-a");
            let meta = if placement.is_empty() {
                String::new()
            } else {
                format!("Meta: {{caravel.io/placement: {placement}}}\n")
            };
            let ev = submit_with_task(
                &mut s,
                "second",
                &format!("Type: batch\nCount: 2\n{meta}"),
                ONE_CPU,
                2 * SEC,
            );
            let p = run_eval(&mut s, &ev, &mut ids, 2 * SEC);
            assert_eq!(placed_on(&p), want, "placement {placement:?}: {p:?}");
        }
        let bad = caravel_model::parse::parse_job(
            b"Name: x\nMeta: {caravel.io/placement: tightly}\nTasks: [{Engine: {Type: docker, Params: {Image: busybox}}}]\n",
            caravel_model::parse::Mode::Server,
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("Meta[caravel.io/placement]") && bad.contains("use spread"),
            "{bad}"
        );
    }

    #[test]
    fn a_node_takes_work_up_to_one_and_a_half_times_its_capacity_then_the_job_waits_for_room() {
        // 2 CPUs: two 1-CPU executions run, a third waits in the node's queue, a fourth waits
        // for room in the orchestrator's.
        let mut s = cluster(&[("n-a", "wasm")]);
        let ev = submit_with_task(&mut s, "big", "Type: batch\nCount: 4\n", ONE_CPU, SEC);
        let mut ids = SequentialIds::default();
        let p = run_eval(&mut s, &ev, &mut ids, SEC);
        assert_eq!(p.new_executions.len(), 3, "{p:?}");
        let j = &s.jobs["big"];
        assert_eq!(j.state.state_type, JobStateType::Queued);
        assert!(
            j.state.message.contains("1 node: no room")
                && j.state.message.contains("hold cpu 3, memory 0 B")
                && j.state.message.contains("(n-a)"),
            "{}",
            j.state.message
        );
        // Nothing has finished: the next try places nothing.
        let later = SEC + QUEUE_BACKOFF_NS;
        let next = due(&s, "big", later);
        assert_eq!(next.len(), 1);
        assert!(
            run_eval(&mut s, &next[0], &mut ids, later)
                .new_executions
                .is_empty()
        );
        // One finishes: its own evaluation gives the room to the fourth partition.
        finish_one(&mut s, "big", 1, "f-1");
        let p = run_eval(&mut s, "f-1", &mut ids, later + 1);
        assert_eq!(p.new_executions.len(), 1);
        assert_eq!(p.new_executions[0].partition_index, 3);
    }

    #[test]
    fn without_a_queue_timeout_a_job_that_does_not_fit_the_free_capacity_fails_at_once() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let task = "  Resources: {CPU: '1'}\n";
        let ev = submit_with_task(&mut s, "big", "Type: batch\nCount: 4\n", task, SEC);
        let p = run_eval(&mut s, &ev, &mut SequentialIds::default(), SEC);
        assert!(p.new_executions.is_empty(), "as Bacalhau: all or nothing");
        let j = &s.jobs["big"];
        assert_eq!(j.state.state_type, JobStateType::Failed);
        assert!(j.state.message.contains("no room"), "{}", j.state.message);
    }

    #[test]
    fn a_failed_partition_waits_for_room_on_a_full_node_instead_of_exhausting_its_retries() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let mut ids = SequentialIds::default();
        let ev = submit_with_task(&mut s, "x", "Type: batch\nCount: 1\n", ONE_CPU, SEC);
        let first = run_eval(&mut s, &ev, &mut ids, SEC).new_executions[0].clone();
        report(
            &mut s,
            "n-a",
            1,
            &first.id,
            ExecutionStateType::Failed,
            "f-1",
        );
        // Meanwhile other work fills the node.
        let fill = submit_with_task(&mut s, "fill", "Type: batch\nCount: 3\n", ONE_CPU, SEC);
        assert_eq!(
            run_eval(&mut s, &fill, &mut ids, SEC).new_executions.len(),
            3
        );
        let p = run_eval(&mut s, "f-1", &mut ids, 2 * SEC);
        assert!(p.new_executions.is_empty());
        let j = &s.jobs["x"];
        assert_eq!(
            j.state.state_type,
            JobStateType::Queued,
            "{}",
            j.state.message
        );
        assert!(j.state.message.contains("no room"), "{}", j.state.message);
        // Room again: the retry runs on the only node.
        finish_one(&mut s, "fill", 2, "f-2");
        run_eval(&mut s, "f-2", &mut ids, 3 * SEC);
        let next = due(&s, "x", 2 * SEC + QUEUE_BACKOFF_NS);
        let p = run_eval(&mut s, &next[0], &mut ids, 2 * SEC + QUEUE_BACKOFF_NS);
        assert_eq!(p.new_executions.len(), 1);
        assert_eq!(p.new_executions[0].node_id, "n-a");
    }

    #[test]
    fn a_daemon_reaches_a_full_node_once_it_has_room() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let mut ids = SequentialIds::default();
        let fill = submit_with_task(&mut s, "fill", "Type: batch\nCount: 3\n", ONE_CPU, SEC);
        assert_eq!(
            run_eval(&mut s, &fill, &mut ids, SEC).new_executions.len(),
            3
        );
        let ev = submit_with_task(&mut s, "d", "Type: daemon\n", ONE_CPU, SEC);
        let p = run_eval(&mut s, &ev, &mut ids, SEC);
        assert!(p.new_executions.is_empty());
        assert!(
            s.history_of("d")
                .iter()
                .any(|h| h.event.message.contains("without room for the daemon")),
            "the wait is in the job's history"
        );
        finish_one(&mut s, "fill", 1, "f-1");
        run_eval(&mut s, "f-1", &mut ids, 2 * SEC);
        let next = due(&s, "d", SEC + 2 * QUEUE_BACKOFF_NS);
        assert_eq!(next.len(), 1);
        let p = run_eval(&mut s, &next[0], &mut ids, SEC + 2 * QUEUE_BACKOFF_NS);
        assert_eq!(p.new_executions.len(), 1);
        assert_eq!(p.new_executions[0].node_id, "n-a");
        // Placed: no more looking.
        assert!(p.new_evaluations.is_empty(), "{:?}", p.new_evaluations);
    }

    fn set_eligibility(s: &mut ClusterState, node: &str, e: Eligibility, now: i64) {
        assert_eq!(
            s.apply(&Command::SetNodeEligibility {
                node_id: node.into(),
                eligibility: e,
                message: "maintenance".into(),
                now,
            }),
            caravel_model::command::CommandResponse::Ok
        );
    }

    /// The nodes of the job's live executions, one entry per execution.
    fn live_on(s: &ClusterState, job: &str) -> Vec<String> {
        s.executions_of(job)
            .into_iter()
            .filter(|e| e.is_live())
            .map(|e| e.node_id.clone())
            .collect()
    }

    #[test]
    fn an_ineligible_node_takes_no_new_work_keeps_what_runs_and_takes_work_again_once_eligible() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let mut ids = SequentialIds::default();
        let d = submit_text(&mut s, "d", "Type: daemon\n", SEC);
        assert_eq!(run_eval(&mut s, &d, &mut ids, SEC).new_executions.len(), 2);
        set_eligibility(&mut s, "n-a", Eligibility::Ineligible, 2 * SEC);
        for ev in due(&s, "d", 2 * SEC) {
            let p = run_eval(&mut s, &ev, &mut ids, 2 * SEC);
            assert!(p.updates.is_empty(), "the daemon stays: {p:?}");
        }
        let b = submit_text(&mut s, "b", "Type: batch\nCount: 2\n", 3 * SEC);
        let p = run_eval(&mut s, &b, &mut ids, 3 * SEC);
        assert!(p.new_executions.iter().all(|e| e.node_id == "n-b"), "{p:?}");
        // No node left: the reason names the operator's choice.
        set_eligibility(&mut s, "n-b", Eligibility::Ineligible, 4 * SEC);
        let q = submit_with_task(&mut s, "q", "Type: batch\n", ONE_CPU, 5 * SEC);
        run_eval(&mut s, &q, &mut ids, 5 * SEC);
        let j = &s.jobs["q"];
        assert_eq!(j.state.state_type, JobStateType::Queued);
        assert!(
            j.state.message.contains("2 nodes: ineligible for new work"),
            "{}",
            j.state.message
        );
        // Eligible again: the waiting job is placed at once.
        set_eligibility(&mut s, "n-b", Eligibility::Eligible, 6 * SEC);
        let next = due(&s, "q", 6 * SEC);
        assert_eq!(
            next.len(),
            1,
            "the queued job's next try is brought forward"
        );
        let p = run_eval(&mut s, &next[0], &mut ids, 6 * SEC);
        assert_eq!(p.new_executions.len(), 1);
        assert_eq!(p.new_executions[0].node_id, "n-b");
    }

    #[test]
    fn a_drain_moves_service_copies_now_batch_executions_at_its_deadline_and_leaves_daemons() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let mut ids = SequentialIds::default();
        for (id, body) in [
            ("svc", "Type: service\nCount: 1\n"),
            ("b", "Type: batch\nCount: 1\n"),
            ("d", "Type: daemon\n"),
        ] {
            let ev = submit_text(&mut s, id, body, SEC);
            run_eval(&mut s, &ev, &mut ids, SEC);
            assert_eq!(live_on(&s, id), ["n-a"]);
        }
        join(&mut s, "n-b", &[], 2 * SEC);
        for ev in due(&s, "d", 2 * SEC) {
            run_eval(&mut s, &ev, &mut ids, 2 * SEC);
        }
        let deadline = 60 * SEC;
        set_eligibility(&mut s, "n-a", Eligibility::Draining { deadline }, 3 * SEC);
        assert_eq!(
            s.nodes["n-a"].eligibility(),
            Eligibility::Draining { deadline }
        );
        for job in ["svc", "b", "d"] {
            for ev in due(&s, job, 3 * SEC) {
                run_eval(&mut s, &ev, &mut ids, 3 * SEC);
            }
        }
        assert_eq!(live_on(&s, "svc"), ["n-b"], "the service copy moved");
        assert_eq!(
            live_on(&s, "b"),
            ["n-a"],
            "the batch execution finishes there"
        );
        let mut d = live_on(&s, "d");
        d.sort();
        assert_eq!(d, ["n-a", "n-b"], "the daemon stays on the draining node");
        assert!(
            s.history_of("svc")
                .iter()
                .any(|h| h.event.message.contains("moves from node n-a to node n-b")),
            "the move is in the job's history"
        );
        // The deadline: the batch execution moves too.
        let at = due(&s, "b", deadline);
        assert_eq!(at.len(), 1, "one evaluation at the deadline");
        run_eval(&mut s, &at[0], &mut ids, deadline);
        assert_eq!(live_on(&s, "b"), ["n-b"]);
    }

    #[test]
    fn a_draining_service_copy_stays_until_another_node_can_take_it() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let mut ids = SequentialIds::default();
        let ev = submit_text(&mut s, "svc", "Type: service\nCount: 1\n", SEC);
        run_eval(&mut s, &ev, &mut ids, SEC);
        set_eligibility(
            &mut s,
            "n-a",
            Eligibility::Draining { deadline: 0 },
            2 * SEC,
        );
        for ev in due(&s, "svc", 2 * SEC) {
            let p = run_eval(&mut s, &ev, &mut ids, 2 * SEC);
            assert!(
                p.updates.is_empty(),
                "nowhere to go: it keeps running {p:?}"
            );
        }
        assert_eq!(live_on(&s, "svc"), ["n-a"]);
        join(&mut s, "n-b", &[], 3 * SEC);
        for ev in due(&s, "svc", 2 * SEC + 2 * QUEUE_BACKOFF_NS) {
            run_eval(&mut s, &ev, &mut ids, 2 * SEC + 2 * QUEUE_BACKOFF_NS);
        }
        assert_eq!(live_on(&s, "svc"), ["n-b"]);
    }

    #[test]
    fn eligibility_is_the_orchestrators_a_registration_neither_sets_nor_clears_it() {
        let mut s = ClusterState::default();
        join(
            &mut s,
            "n-a",
            &[(caravel_model::node::ELIGIBILITY_LABEL, "ineligible")],
            SEC,
        );
        assert_eq!(s.nodes["n-a"].eligibility(), Eligibility::Eligible);
        set_eligibility(
            &mut s,
            "n-a",
            Eligibility::Draining { deadline: 9 },
            2 * SEC,
        );
        join(&mut s, "n-a", &[("zone", "x")], 3 * SEC);
        let n = &s.nodes["n-a"];
        assert_eq!(n.eligibility(), Eligibility::Draining { deadline: 9 });
        assert_eq!(n.info.labels["zone"], "x");
    }

    #[test]
    fn plans_made_for_one_commit_never_give_out_the_same_room_twice_and_stand_alone() {
        let mut s = cluster(&[("n-a", "wasm")]);
        let mut ids = SequentialIds::default();
        let evs: Vec<String> = ["x", "y", "z"]
            .iter()
            .map(|j| submit_with_task(&mut s, j, "Type: batch\nCount: 2\n", ONE_CPU, SEC))
            .collect();
        let plans: Vec<Plan> = {
            let mut view = PlanningView::new(&s);
            evs.iter()
                .map(|ev| {
                    let eval = s.evaluations[ev].clone();
                    let p = schedule(&view, &eval, SEC, &mut ids);
                    view.add(&p);
                    p
                })
                .collect()
        };
        let placed: Vec<usize> = plans.iter().map(|p| p.new_executions.len()).collect();
        assert_eq!(placed, [2, 1, 0], "3 CPUs of room (1.5 × 2) given once");
        // z changed after its plan was made: its plan alone is refused.
        let mut z = s.jobs["z"].clone();
        z.revision += 1;
        s.jobs.insert("z".into(), z);
        let r = s.apply(&Command::ApplyPlans(plans));
        let caravel_model::command::CommandResponse::Plans(rs) = r else {
            panic!("{r:?}")
        };
        assert_eq!(rs.len(), 3);
        assert!(
            rs[..2]
                .iter()
                .all(|r| *r == caravel_model::command::CommandResponse::Ok)
        );
        assert!(matches!(
            rs[2],
            caravel_model::command::CommandResponse::Rejected { .. }
        ));
        assert_eq!(live_on(&s, "x").len(), 2);
        assert_eq!(live_on(&s, "y").len(), 1);
        assert_eq!(s.jobs["y"].state.state_type, JobStateType::Queued);
        assert!(
            s.evaluations[&evs[2]].status == status::PENDING,
            "z is evaluated again"
        );
    }
}
