//! The scheduler: a pure function from a [`StateView`] and an [`Evaluation`] to a [`Plan`] (Nomad's
//! scheduler reading a `State` and submitting a `Plan`). No I/O, no clock (`now` is an argument), ids
//! from an [`IdGen`]; the planner commits the plan through Raft, and a plan made from a stale view is
//! refused by the state machine (job revision check) and made again.
//!
//! Batch jobs: `Count` partitions; each partition needs one Completed execution of the current job
//! version. A partition whose execution failed is retried on a node that has not failed it yet; when no
//! node is left the job fails with the last error. Ops: one execution per matching node, complete when
//! all finish. Daemon: one per matching node, kept running. Service: `Count` on distinct nodes, kept.

use std::collections::{BTreeMap, BTreeSet};

use caravel_model::command::{ExecutionChange, Plan};
use caravel_model::evaluation::{Evaluation, status, trigger};
use caravel_model::execution::{AllocatedResources, Execution, Resources};
use caravel_model::history::{Event, topic};
use caravel_model::ids::IdGen;
use caravel_model::node::NodeState;
use caravel_model::spec::Job;
use caravel_model::states::{
    ExecutionDesiredState, ExecutionStateType, JobStateType, NodeConnection, NodeMembership, State,
};
use caravel_model::view::StateView;

/// How long a queued job waits before it is evaluated again.
pub const QUEUE_BACKOFF_NS: i64 = 5_000_000_000;

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
    // Executions of older versions make way for the new one.
    stop_all(
        &mut plan,
        execs
            .iter()
            .copied()
            .filter(|e| e.is_live() && e.job_version != job.version),
        "job updated to a new version",
    );
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

    match job.kind.as_str() {
        "batch" | "service" => schedule_partitions(view, job, &current, &mut plan, eval, now, ids),
        _ => schedule_per_node(view, job, &current, &mut plan, now, ids),
    }
    plan
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
    let nodes: BTreeMap<&str, &NodeState> = view.nodes().into_iter().map(|n| (n.id(), n)).collect();
    let mut lost = BTreeSet::new();
    let mut next_expiry: Option<i64> = None;
    for e in execs.iter().filter(|e| e.is_live()) {
        // A node an operator rejected or deleted gets no grace period: it will not be back.
        let message = match nodes.get(e.node_id.as_str()) {
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
            compute: Some(if job.kind == "ops" {
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

fn schedule_partitions(
    view: &dyn StateView,
    job: &Job,
    execs: &[&Execution],
    plan: &mut Plan,
    eval: &Evaluation,
    now: i64,
    ids: &mut dyn IdGen,
) {
    let count = job.count.max(0);
    let mut done: BTreeSet<i32> = BTreeSet::new();
    let mut live: BTreeMap<i32, Vec<&Execution>> = BTreeMap::new();
    let mut failed_on: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    let mut last_failure: BTreeMap<i32, String> = BTreeMap::new();
    for e in execs {
        let p = e.partition_index;
        match e.compute_state.state_type {
            ExecutionStateType::Completed => {
                done.insert(p);
            }
            ExecutionStateType::Failed
            | ExecutionStateType::AskForBidRejected
            | ExecutionStateType::BidRejected => {
                failed_on.entry(p).or_default().insert(e.node_id.clone());
                last_failure.insert(
                    p,
                    format!(
                        "execution {} on node {} failed: {}",
                        e.id,
                        e.node_id,
                        failure_message(e)
                    ),
                );
            }
            _ if e.is_live() => live.entry(p).or_default().push(e),
            _ => {}
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
    if job.kind == "batch" && (0..count).all(|p| done.contains(&p)) {
        plan.job_state = Some((JobStateType::Completed, String::new()));
        return;
    }
    let mut pool = NodePool::new(view, job);
    let mut unplaced: Vec<(i32, String)> = Vec::new();
    for p in 0..count {
        if done.contains(&p) || live.get(&p).is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let exclude = failed_on.get(&p).cloned().unwrap_or_default();
        let distinct: BTreeSet<String> = if job.kind == "service" {
            live.values().flatten().map(|e| e.node_id.clone()).collect()
        } else {
            BTreeSet::new()
        };
        match pool.pick(&exclude, &distinct) {
            Ok(node) => {
                plan.new_executions
                    .push(new_execution(job, &node, p, &eval.id, now, ids));
                live.entry(p).or_default();
            }
            Err(reason) => {
                let why = last_failure
                    .get(&p)
                    .map(|f| format!("{f}; no other node can retry it"))
                    .unwrap_or(reason);
                unplaced.push((p, why));
            }
        }
    }
    if unplaced.is_empty() {
        return;
    }
    let reason = unplaced[0].1.clone();
    let retry_exhausted = unplaced.iter().any(|(p, _)| failed_on.contains_key(p));
    let queue_deadline = job.create_time.saturating_add(
        job.task()
            .map_or(0, |t| t.timeouts.queue_timeout)
            .saturating_mul(1_000_000_000),
    );
    if !retry_exhausted && now < queue_deadline {
        if job.state.state_type != JobStateType::Queued {
            plan.job_state = Some((JobStateType::Queued, reason.clone()));
            plan.events.push(Event::new(
                topic::QUEUEING,
                format!("Job queued: {reason}"),
                now,
            ));
        }
        let mut next = Evaluation::new(ids.evaluation_id(), job, trigger::JOB_QUEUE, now);
        next.wait_until = (now + QUEUE_BACKOFF_NS).min(queue_deadline);
        plan.new_evaluations.push(next);
        return;
    }
    // Give up: fail the job and stop what still runs.
    let all_live: Vec<&Execution> = live.values().flatten().copied().collect();
    stop_all(plan, all_live.into_iter(), "job failed");
    plan.new_executions.clear();
    plan.job_state = Some((JobStateType::Failed, reason));
}

fn schedule_per_node(
    view: &dyn StateView,
    job: &Job,
    execs: &[&Execution],
    plan: &mut Plan,
    now: i64,
    ids: &mut dyn IdGen,
) {
    let pool = NodePool::new(view, job);
    let mut any_failed = None;
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    for e in execs {
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
    if job.kind == "ops"
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
    let mut placed = 0;
    for n in pool.eligible() {
        if !covered.contains(n.id()) {
            plan.new_executions
                .push(new_execution(job, n, 0, &plan.eval_id.clone(), now, ids));
            placed += 1;
        }
    }
    if job.kind == "ops" && placed == 0 {
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

/// Nodes that can run a job, with the capacity each has left, ranked least-loaded first.
struct NodePool<'a> {
    candidates: Vec<(&'a NodeState, Resources, usize)>,
    rejections: BTreeMap<String, String>,
    need: Resources,
}

impl<'a> NodePool<'a> {
    fn new(view: &'a dyn StateView, job: &Job) -> Self {
        let task = job.task().cloned().unwrap_or_default();
        let need = Resources::from_config(&task.resources);
        let engine = task.engine.kind_lower();
        let publisher = task.publisher.kind_lower();
        let mut candidates = Vec::new();
        let mut rejections = BTreeMap::new();
        for n in view.nodes() {
            if n.info.node_type != "Compute" {
                continue;
            }
            let ci = &n.info.compute_node_info;
            let why = if !n.is_schedulable() {
                Some(format!(
                    "node is {} / {}",
                    n.membership.as_str(),
                    n.connection_state.status.as_str()
                ))
            } else if !ci
                .execution_engines
                .iter()
                .any(|e| e.eq_ignore_ascii_case(&engine))
            {
                Some(format!("engine {engine} is not supported"))
            } else if !publisher.is_empty()
                && !ci
                    .publishers
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&publisher))
            {
                Some(format!("publisher {publisher} is not supported"))
            } else if let Some(src) = task
                .input_sources
                .iter()
                .map(|i| i.source.kind_lower())
                .find(|s| !ci.storage_sources.iter().any(|x| x.eq_ignore_ascii_case(s)))
            {
                Some(format!("input source {src} is not supported"))
            } else if let Some(c) = job.constraints.iter().find(|c| !c.matches(&n.info.labels)) {
                Some(format!(
                    "does not match constraint {} {} {:?}",
                    c.key, c.operator, c.values
                ))
            } else {
                // The node's own admission policy, as it advertises it (none: the defaults, which
                // refuse Host networking): the node would refuse.
                caravel_model::admission::AdmissionPolicy::from_labels(&n.info.labels)
                    .unwrap_or_default()
                    .check(job)
                    .err()
                    .map(|why| format!("its admission policy refuses the job: {why}"))
            };
            if let Some(w) = why {
                rejections.insert(n.id().to_string(), w);
                continue;
            }
            let mut free = ci.max_capacity.clone();
            let live = view.live_executions_on(n.id());
            for e in &live {
                for r in e.allocated_resources.tasks.values() {
                    free.sub(r);
                }
            }
            let limit = if ci.max_job_requirements == Resources::default() {
                &ci.max_capacity
            } else {
                &ci.max_job_requirements
            };
            if !need.fits_in(limit) {
                rejections.insert(
                    n.id().to_string(),
                    format!(
                        "job needs more than the node's capacity (cpu {} mem {})",
                        need.cpu, need.memory
                    ),
                );
                continue;
            }
            candidates.push((n, free, live.len()));
        }
        candidates.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.id().cmp(b.0.id())));
        NodePool {
            candidates,
            rejections,
            need,
        }
    }

    fn eligible(&self) -> impl Iterator<Item = &'a NodeState> + '_ {
        self.candidates.iter().map(|(n, _, _)| *n)
    }

    /// Picks the least-loaded node outside `exclude` and `distinct`; a node whose free capacity is
    /// short still takes the execution (the compute node queues it) unless nothing else fits.
    fn pick(
        &mut self,
        exclude: &BTreeSet<String>,
        distinct: &BTreeSet<String>,
    ) -> Result<NodeState, String> {
        let ok = |(n, _, _): &&(&NodeState, Resources, usize)| {
            !exclude.contains(n.id()) && !distinct.contains(n.id())
        };
        let idx = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| ok(c))
            .min_by_key(|(_, (n, free, load))| {
                (!self.need.fits_in(free), *load, n.id().to_string())
            })
            .map(|(i, _)| i);
        match idx {
            Some(i) => {
                let c = &mut self.candidates[i];
                c.1.sub(&self.need);
                c.2 += 1;
                Ok(c.0.clone())
            }
            None => Err(self.why_none()),
        }
    }

    fn why_none(&self) -> String {
        if self.rejections.is_empty() && self.candidates.is_empty() {
            return "no compute node is connected".into();
        }
        if self.rejections.is_empty() {
            return "every suitable node has already failed this job".into();
        }
        let reasons: Vec<String> = self
            .rejections
            .iter()
            .map(|(n, w)| format!("{}: {w}", caravel_model::ids::short(n)))
            .collect();
        format!("no node can run this job ({})", reasons.join("; "))
    }
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
            now: 100 + seq as i64,
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
    fn a_failed_execution_is_retried_elsewhere_then_the_job_fails_with_the_error() {
        let mut s = cluster(&[("n-a", "wasm"), ("n-b", "wasm")]);
        let (job, ev) = submit(&mut s, 1);
        let mut ids = SequentialIds::default();
        let first = run_eval(&mut s, &ev, &mut ids, 20).new_executions[0].clone();
        report(
            &mut s,
            &first.node_id,
            1,
            &first.id,
            ExecutionStateType::Failed,
            "f-1",
        );
        let second = run_eval(&mut s, "f-1", &mut ids, 21).new_executions[0].clone();
        assert_ne!(second.node_id, first.node_id, "retried on the other node");
        report(
            &mut s,
            &second.node_id,
            1,
            &second.id,
            ExecutionStateType::Failed,
            "f-2",
        );
        let last = run_eval(&mut s, "f-2", &mut ids, 22);
        assert!(last.new_executions.is_empty());
        let j = &s.jobs[&job];
        assert_eq!(j.state.state_type, JobStateType::Failed);
        assert!(j.state.message.contains("boom"), "{}", j.state.message);
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
}
