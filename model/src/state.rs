//! `ClusterState`: the replicated state and its deterministic `apply`. Every orchestrator holds one,
//! fed by the same Raft log; applying the same commands in the same order gives byte-identical state
//! (no clock, no randomness, only ordered maps). The Raft store persists it record by record (see
//! [`ClusterState::take_dirty`]) and snapshots it whole.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{Command, CommandResponse, ExecutionChange, Plan, RejectCode};
use crate::evaluation::{Evaluation, status, trigger};
use crate::execution::{Execution, ExecutionUpdate};
use crate::history::{EXECUTION_LEVEL, Event, JOB_LEVEL, JobHistory, topic};
use crate::node::{NodeInfo, NodeState};
use crate::security::{Denial, JoinToken, Security};
use crate::spec::Job;
use crate::states::{
    ExecutionDesiredState, ExecutionStateType, JobStateType, NodeConnection, NodeMembership, State,
};
use crate::view::StateView;

/// Tables of the state, as stored by the Raft store (one byte in front of each key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Table {
    Job = 1,
    JobVersion = 2,
    Execution = 3,
    Evaluation = 4,
    Node = 5,
    History = 6,
    NodeSeq = 7,
    Counters = 8,
    JoinToken = 9,
    Denied = 10,
    NodeCert = 11,
}

impl Table {
    pub const ALL: [Table; 11] = [
        Table::Job,
        Table::JobVersion,
        Table::Execution,
        Table::Evaluation,
        Table::Node,
        Table::History,
        Table::NodeSeq,
        Table::Counters,
        Table::JoinToken,
        Table::Denied,
        Table::NodeCert,
    ];
    pub fn from_u8(b: u8) -> Option<Table> {
        Self::ALL.into_iter().find(|t| *t as u8 == b)
    }
}

/// A changed record: its table, its key, and its encoded value (`None` when deleted).
pub type DirtyRecord = (Table, String, Option<Vec<u8>>);

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    pub history_seq: u64,
}

/// Where a pending evaluation sorts among its job's: priority (highest first), age, id.
type PendingKey = (std::cmp::Reverse<i32>, i64, String);

fn pending_key(e: &Evaluation) -> PendingKey {
    (std::cmp::Reverse(e.priority), e.create_time, e.id.clone())
}

/// Derived lookups, rebuilt on load; never persisted.
#[derive(Debug, Clone, Default, PartialEq)]
struct Indexes {
    /// Job ids by namespace, then name (looked up by `&str`, without building a key).
    by_name: BTreeMap<String, BTreeMap<String, String>>,
    execs_by_job: BTreeMap<String, BTreeSet<String>>,
    /// Each node's executions that are not terminal: what the scheduler weighs against its
    /// capacity, without walking the node's whole history.
    live_by_node: BTreeMap<String, BTreeSet<String>>,
    /// The evaluations still pending, per job, in the broker's order (highest priority, then
    /// oldest, then id): the broker plans one evaluation of a job at a time, so it looks only at
    /// each job's first, without walking every evaluation ever made.
    pending_by_job: BTreeMap<String, BTreeSet<PendingKey>>,
    /// The pending evaluations due at once (no `wait_until`), per job in the broker's order.
    ready_by_job: BTreeMap<String, BTreeSet<PendingKey>>,
    /// Each job's first of those, in the broker's order across jobs: the broker reads the first
    /// few jobs it can plan, not every job with work queued nor every evaluation of one job.
    ready_heads: BTreeSet<(PendingKey, String)>,
    /// Every pending evaluation with a `wait_until` (retry delays, timers), by that time: the
    /// broker reads only those due.
    pending_timed: BTreeSet<(i64, PendingKey, String)>,
    /// Node ids by label key and value: the nodes a job's `key = value` or `key in (…)` constraint
    /// admits, without walking the fleet.
    nodes_by_label: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Indexes {
    fn add_pending(&mut self, e: &Evaluation) {
        let key = pending_key(e);
        if e.wait_until > 0 {
            self.pending_timed
                .insert((e.wait_until, key.clone(), e.job_id.clone()));
        } else {
            let set = self.ready_by_job.entry(e.job_id.clone()).or_default();
            let head = set.first().cloned();
            set.insert(key.clone());
            if head.as_ref().is_none_or(|h| key < *h) {
                if let Some(h) = head {
                    self.ready_heads.remove(&(h, e.job_id.clone()));
                }
                self.ready_heads.insert((key.clone(), e.job_id.clone()));
            }
        }
        self.pending_by_job
            .entry(e.job_id.clone())
            .or_default()
            .insert(key);
    }

    fn remove_pending(&mut self, e: &Evaluation) {
        let key = pending_key(e);
        if e.wait_until > 0 {
            self.pending_timed
                .remove(&(e.wait_until, key.clone(), e.job_id.clone()));
        } else if let Some(set) = self.ready_by_job.get_mut(&e.job_id) {
            if set.first() == Some(&key) {
                self.ready_heads.remove(&(key.clone(), e.job_id.clone()));
                set.remove(&key);
                if let Some(h) = set.first() {
                    self.ready_heads.insert((h.clone(), e.job_id.clone()));
                }
            } else {
                set.remove(&key);
            }
            if set.is_empty() {
                self.ready_by_job.remove(&e.job_id);
            }
        }
        if let Some(set) = self.pending_by_job.get_mut(&e.job_id) {
            set.remove(&key);
            if set.is_empty() {
                self.pending_by_job.remove(&e.job_id);
            }
        }
    }

    fn label_node(&mut self, id: &str, labels: &BTreeMap<String, String>) {
        for (k, v) in labels {
            self.nodes_by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(id.to_string());
        }
    }

    fn unlabel_node(&mut self, id: &str, labels: &BTreeMap<String, String>) {
        for (k, v) in labels {
            if let Some(values) = self.nodes_by_label.get_mut(k) {
                if let Some(ids) = values.get_mut(v) {
                    ids.remove(id);
                    if ids.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.nodes_by_label.remove(k);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub jobs: BTreeMap<String, Job>,
    pub job_versions: BTreeMap<String, Job>,
    pub executions: BTreeMap<String, Execution>,
    pub evaluations: BTreeMap<String, Evaluation>,
    pub nodes: BTreeMap<String, NodeState>,
    pub history: BTreeMap<String, JobHistory>,
    pub node_seq: BTreeMap<String, u64>,
    pub counters: Counters,
    /// Join tokens, the deny list, node certificates. Outside the struct's own encoding (which
    /// older snapshots have): a snapshot is `(ClusterState, Security)`, see [`Self::to_snapshot`].
    #[serde(skip)]
    pub security: Security,
    #[serde(skip)]
    idx: Indexes,
    #[serde(skip)]
    dirty: BTreeSet<(Table, String)>,
    /// History records written since the last [`Self::take_dirty`], already encoded: a record
    /// never changes once written, so it is encoded when it is made rather than looked up again.
    #[serde(skip)]
    fresh_history: Vec<DirtyRecord>,
}

impl PartialEq for ClusterState {
    fn eq(&self, o: &Self) -> bool {
        self.jobs == o.jobs
            && self.job_versions == o.job_versions
            && self.executions == o.executions
            && self.evaluations == o.evaluations
            && self.nodes == o.nodes
            && self.history == o.history
            && self.node_seq == o.node_seq
            && self.counters == o.counters
            && self.security == o.security
    }
}

fn version_key(id: &str, v: u64) -> String {
    format!("{id}/{v:020}")
}

fn reject(
    code: RejectCode,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> CommandResponse {
    CommandResponse::Rejected {
        code,
        message: message.into(),
        hint: hint.into(),
    }
}

impl ClusterState {
    // ---------- persistence hooks ----------

    /// The whole state as one blob (snapshots). Deterministic: ordered maps only.
    /// Since the security tables: the state, then [`Security`]. A snapshot written before them
    /// (the state alone) is still read, with empty security tables.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode(&(self, &self.security))
    }

    pub fn from_snapshot(b: &[u8]) -> Result<Self, codec::Error> {
        let mut s: ClusterState = match codec::decode::<(ClusterState, Security)>(b) {
            Ok((mut s, security)) => {
                s.security = security;
                s
            }
            Err(codec::Error::Decode { .. }) => codec::decode(b)?,
            Err(e) => return Err(e),
        };
        s.rebuild_indexes();
        Ok(s)
    }

    /// Records changed since the last call: `(table, key, Some(encoded) | None for deleted)`.
    pub fn take_dirty(&mut self) -> Result<Vec<DirtyRecord>, codec::Error> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = std::mem::take(&mut self.fresh_history);
        out.reserve(dirty.len());
        for (t, k) in dirty {
            let v = match t {
                Table::Job => self.jobs.get(&k).map(codec::encode).transpose()?,
                Table::JobVersion => self.job_versions.get(&k).map(codec::encode).transpose()?,
                Table::Execution => self.executions.get(&k).map(codec::encode).transpose()?,
                Table::Evaluation => self.evaluations.get(&k).map(codec::encode).transpose()?,
                Table::Node => self.nodes.get(&k).map(codec::encode).transpose()?,
                Table::History => self.history.get(&k).map(codec::encode).transpose()?,
                Table::NodeSeq => self.node_seq.get(&k).map(codec::encode).transpose()?,
                Table::Counters => Some(codec::encode(&self.counters)?),
                Table::JoinToken => self
                    .security
                    .join_tokens
                    .get(&k)
                    .map(codec::encode)
                    .transpose()?,
                Table::Denied => self
                    .security
                    .denied
                    .get(&k)
                    .map(codec::encode)
                    .transpose()?,
                Table::NodeCert => self
                    .security
                    .node_certs
                    .get(&k)
                    .map(codec::encode)
                    .transpose()?,
            };
            out.push((t, k, v));
        }
        Ok(out)
    }

    /// Loads one stored record (on start-up); call [`Self::finish_load`] after the last one.
    pub fn load_record(&mut self, t: Table, key: String, v: &[u8]) -> Result<(), codec::Error> {
        match t {
            Table::Job => {
                self.jobs.insert(key, codec::decode(v)?);
            }
            Table::JobVersion => {
                self.job_versions.insert(key, codec::decode(v)?);
            }
            Table::Execution => {
                self.executions.insert(key, codec::decode(v)?);
            }
            Table::Evaluation => {
                self.evaluations.insert(key, codec::decode(v)?);
            }
            Table::Node => {
                self.nodes.insert(key, codec::decode(v)?);
            }
            Table::History => {
                self.history.insert(key, codec::decode(v)?);
            }
            Table::NodeSeq => {
                self.node_seq.insert(key, codec::decode(v)?);
            }
            Table::Counters => self.counters = codec::decode(v)?,
            Table::JoinToken => {
                self.security.join_tokens.insert(key, codec::decode(v)?);
            }
            Table::Denied => {
                self.security.denied.insert(key, codec::decode(v)?);
            }
            Table::NodeCert => {
                self.security.node_certs.insert(key, codec::decode(v)?);
            }
        }
        Ok(())
    }

    /// Moves in the records of another state loaded from part of the store (start-up loads ranges
    /// of tables side by side, each into a state of its own). The counters are kept from `self`:
    /// absorb the others into the part that loaded them.
    pub fn absorb(&mut self, mut o: ClusterState) {
        self.jobs.append(&mut o.jobs);
        self.job_versions.append(&mut o.job_versions);
        self.executions.append(&mut o.executions);
        self.evaluations.append(&mut o.evaluations);
        self.nodes.append(&mut o.nodes);
        self.history.append(&mut o.history);
        self.node_seq.append(&mut o.node_seq);
        let sec = &mut self.security;
        sec.join_tokens.append(&mut o.security.join_tokens);
        sec.denied.append(&mut o.security.denied);
        sec.node_certs.append(&mut o.security.node_certs);
    }

    pub fn finish_load(&mut self) {
        self.rebuild_indexes();
        self.dirty.clear();
        self.fresh_history.clear();
    }

    /// The compute nodes whose executions changed since the last [`Self::take_dirty`]: whom a
    /// store must wake (each node's session recomputes what to send only when its own executions
    /// change, not on every applied entry). Call it before `take_dirty`.
    pub fn dirty_nodes(&self) -> BTreeSet<String> {
        self.dirty
            .iter()
            .filter(|(t, _)| *t == Table::Execution)
            .filter_map(|(_, k)| self.executions.get(k))
            .filter(|e| !e.node_id.is_empty())
            .map(|e| e.node_id.clone())
            .collect()
    }

    /// Marks every record dirty (after installing a snapshot, the store rewrites everything).
    pub fn mark_all_dirty(&mut self) {
        let mut d = BTreeSet::new();
        d.extend(self.jobs.keys().map(|k| (Table::Job, k.clone())));
        d.extend(
            self.job_versions
                .keys()
                .map(|k| (Table::JobVersion, k.clone())),
        );
        d.extend(
            self.executions
                .keys()
                .map(|k| (Table::Execution, k.clone())),
        );
        d.extend(
            self.evaluations
                .keys()
                .map(|k| (Table::Evaluation, k.clone())),
        );
        d.extend(self.nodes.keys().map(|k| (Table::Node, k.clone())));
        d.extend(self.history.keys().map(|k| (Table::History, k.clone())));
        d.extend(self.node_seq.keys().map(|k| (Table::NodeSeq, k.clone())));
        d.insert((Table::Counters, String::new()));
        let sec = &self.security;
        d.extend(
            sec.join_tokens
                .keys()
                .map(|k| (Table::JoinToken, k.clone())),
        );
        d.extend(sec.denied.keys().map(|k| (Table::Denied, k.clone())));
        d.extend(sec.node_certs.keys().map(|k| (Table::NodeCert, k.clone())));
        self.dirty = d;
    }

    fn rebuild_indexes(&mut self) {
        let mut idx = Indexes::default();
        for (id, j) in &self.jobs {
            idx.by_name
                .entry(j.namespace.clone())
                .or_default()
                .insert(j.name.clone(), id.clone());
        }
        for (id, e) in &self.executions {
            idx.execs_by_job
                .entry(e.job_id.clone())
                .or_default()
                .insert(id.clone());
            if !e.is_terminal() {
                idx.live_by_node
                    .entry(e.node_id.clone())
                    .or_default()
                    .insert(id.clone());
            }
        }
        for e in self
            .evaluations
            .values()
            .filter(|e| e.status == status::PENDING)
        {
            idx.add_pending(e);
        }
        for (id, n) in &self.nodes {
            idx.label_node(id, &n.info.labels);
        }
        self.idx = idx;
    }

    /// Stores a node, keeping the label index in step.
    fn put_node(&mut self, id: String, n: NodeState) {
        if let Some(old) = self.nodes.get(&id) {
            self.idx.unlabel_node(&id, &old.info.labels);
        }
        self.idx.label_node(&id, &n.info.labels);
        self.nodes.insert(id, n);
    }

    /// Removes a node, keeping the label index in step.
    fn remove_node(&mut self, id: &str) -> Option<NodeState> {
        let old = self.nodes.remove(id)?;
        self.idx.unlabel_node(id, &old.info.labels);
        Some(old)
    }

    // ---------- reads ----------

    /// Finds a job by exact id, unique id prefix, or name (within `namespace`).
    pub fn find_job(&self, namespace: &str, id_or_name: &str) -> Result<&Job, LookupError> {
        if let Some(j) = self.jobs.get(id_or_name) {
            return Ok(j);
        }
        if let Some(id) = self.job_id_by_name(namespace, id_or_name) {
            return self.jobs.get(id).ok_or(LookupError::NotFound);
        }
        if id_or_name.len() >= 2 {
            let mut matches = self
                .jobs
                .range(id_or_name.to_string()..)
                .take_while(|(k, _)| k.starts_with(id_or_name));
            if let Some((_, first)) = matches.next() {
                if matches.next().is_some() {
                    return Err(LookupError::Ambiguous);
                }
                return Ok(first);
            }
        }
        Err(LookupError::NotFound)
    }

    pub fn find_node(&self, id: &str) -> Result<&NodeState, LookupError> {
        if let Some(n) = self.nodes.get(id) {
            return Ok(n);
        }
        let mut matches = self
            .nodes
            .range(id.to_string()..)
            .take_while(|(k, _)| k.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, n)), None) if !id.is_empty() => Ok(n),
            (Some(_), Some(_)) => Err(LookupError::Ambiguous),
            _ => Err(LookupError::NotFound),
        }
    }

    fn job_id_by_name(&self, namespace: &str, name: &str) -> Option<&String> {
        self.idx.by_name.get(namespace)?.get(name)
    }

    /// A job's history, oldest first: its records' keys are `JOB_ID/SEQ` (SEQ zero-padded), so
    /// they lie together in key order.
    pub fn history_of(&self, job_id: &str) -> Vec<&JobHistory> {
        let prefix = format!("{job_id}/");
        self.history
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, h)| h)
            .collect()
    }

    /// A version of a job: the current one is the job itself, earlier ones as they ended.
    pub fn job_version(&self, job_id: &str, version: u64) -> Option<&Job> {
        match self.jobs.get(job_id) {
            Some(j) if j.version == version => Some(j),
            _ => self.job_versions.get(&version_key(job_id, version)),
        }
    }

    /// Every stored version of a job, oldest first, the current one last. (Stores written before
    /// the current version was kept only in `jobs` also hold a copy of it in `job_versions`, which
    /// the job itself supersedes.)
    pub fn versions_of(&self, job_id: &str) -> Vec<&Job> {
        let current = self.jobs.get(job_id);
        let prefix = format!("{job_id}/");
        let mut v: Vec<&Job> = self
            .job_versions
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, j)| j)
            .filter(|j| current.is_none_or(|c| j.version < c.version))
            .collect();
        v.extend(current);
        v
    }

    /// Every pending evaluation, job by job (each job's in the broker's order).
    pub fn pending_evaluations(&self) -> Vec<&Evaluation> {
        self.idx
            .pending_by_job
            .values()
            .flatten()
            .filter_map(|(_, _, id)| self.evaluations.get(id))
            .collect()
    }

    /// Each job's first pending evaluation (highest priority, then oldest, then id) that is due
    /// at `now` and not `busy_eval`, for the jobs that are not `busy_job`, in that order across
    /// jobs, at most `limit`: what the broker can plan now. Its cost follows `limit`, the busy
    /// jobs' evaluations and the timed ones due, not the jobs queued: walking every queued job on
    /// each applied entry cut placements to 10 a second with 15,000 jobs queued
    /// (docs/benchmarks.md).
    pub fn first_due_evaluations(
        &self,
        now: i64,
        busy_job: impl Fn(&str) -> bool,
        busy_eval: impl Fn(&str) -> bool,
        limit: usize,
    ) -> Vec<&Evaluation> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        use std::ops::Bound;
        // Two streams in the broker's order, merged: each job's first ready evaluation, and (in
        // a heap) the timed ones due plus, for a job whose first ready one is busy, its next.
        // The first of a job met is its first due.
        let mut others: BinaryHeap<Reverse<(&PendingKey, &str, bool)>> = self
            .idx
            .pending_timed
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .map(|(_, key, job)| Reverse((key, job.as_str(), false)))
            .collect();
        let mut heads = self
            .idx
            .ready_heads
            .iter()
            .map(|(key, job)| (key, job.as_str(), true))
            .peekable();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::new();
        while out.len() < limit {
            let next = match (heads.peek(), others.peek()) {
                (Some(h), Some(Reverse(o))) if o < h => others.pop().map(|Reverse(o)| o),
                (Some(_), _) => heads.next(),
                (None, _) => others.pop().map(|Reverse(o)| o),
            };
            let Some((key, job, ready)) = next else { break };
            if seen.contains(job) || busy_job(job) {
                continue;
            }
            if busy_eval(&key.2) {
                if ready
                    && let Some(k) =
                        self.idx.ready_by_job.get(job).and_then(|set| {
                            set.range((Bound::Excluded(key), Bound::Unbounded)).next()
                        })
                {
                    others.push(Reverse((k, job, true)));
                }
                continue;
            }
            if let Some(e) = self.evaluations.get(&key.2) {
                seen.insert(job);
                out.push(e);
            }
        }
        out
    }

    pub fn last_report_seq(&self, node_id: &str) -> u64 {
        self.node_seq.get(node_id).copied().unwrap_or(0)
    }

    // ---------- apply ----------

    /// Applies one command. Deterministic: everything it needs is in the command.
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::SubmitJob {
                job,
                evaluation,
                force,
                now,
            } => self.submit_job(job, evaluation, *force, *now),
            Command::StopJob {
                job_id,
                reason,
                evaluation_id,
                now,
            } => self.stop_job(job_id, reason, evaluation_id, *now),
            Command::ApplyPlan(plan) => self.apply_plan(plan),
            Command::ApplyPlans(plans) => {
                CommandResponse::Plans(plans.iter().map(|p| self.apply_plan(p)).collect())
            }
            Command::UpdateExecutions(reports) => CommandResponse::Plans(
                reports
                    .iter()
                    .map(|r| {
                        self.update_execution(
                            &r.node_id,
                            r.seq,
                            &r.update,
                            &r.followup_eval_id,
                            r.now,
                        )
                    })
                    .collect(),
            ),
            Command::Batch(cmds) => CommandResponse::Plans(
                cmds.iter()
                    .map(|c| match c {
                        Command::Batch(_) => reject(
                            RejectCode::Invalid,
                            "a batch of commands inside a batch",
                            "send the commands of the inner batch in the outer one",
                        ),
                        c => self.apply(c),
                    })
                    .collect(),
            ),
            Command::UpdateExecution {
                node_id,
                seq,
                update,
                followup_eval_id,
                now,
            } => self.update_execution(node_id, *seq, update, followup_eval_id, *now),
            Command::RegisterNode { info, now } => self.register_node(info, *now),
            Command::SetNodeConnection {
                node_id,
                status,
                reason,
                evaluation_ids,
                now,
            } => self.set_node_connection(node_id, *status, reason, evaluation_ids, *now),
            Command::CreateJoinToken { token } => self.create_join_token(token),
            Command::ConsumeJoinToken {
                token_id,
                secret_sha256,
                node_id,
                now,
            } => self.consume_join_token(token_id, secret_sha256, node_id, *now),
            Command::DeleteJoinToken { token_id } => {
                if self.security.join_tokens.remove(token_id).is_none() {
                    return reject(
                        RejectCode::NotFound,
                        format!("join token {token_id} not found"),
                        "list tokens with `caravel node token list`",
                    );
                }
                self.dirty.insert((Table::JoinToken, token_id.clone()));
                CommandResponse::Ok
            }
            Command::RegisterNodeWith {
                info,
                now,
                pending,
                fingerprint,
            } => self.register_node_with(info, *now, *pending, fingerprint),
            Command::SetNodeMembership {
                node_id,
                membership,
                message,
                evaluation_ids,
                now,
            } => self.set_node_membership(node_id, *membership, message, evaluation_ids, *now),
            Command::DeleteNode {
                node_id,
                message,
                evaluation_ids,
                now,
            } => self.delete_node(node_id, message, evaluation_ids, *now),
            Command::DenyCertificate {
                fingerprint,
                node_id,
                reason,
                now,
            } => {
                self.deny(Denial {
                    node_id: node_id.clone(),
                    fingerprint: fingerprint.clone(),
                    reason: reason.clone(),
                    at: *now,
                });
                CommandResponse::Ok
            }
            Command::SetNodeEligibility {
                node_id,
                eligibility,
                message,
                now,
            } => self.set_node_eligibility(node_id, *eligibility, message, *now),
        }
    }

    /// An operator's eligibility change or drain. Each job with a live execution on the node is
    /// told in its history and evaluated now (a drain moves service copies at once); a drain adds
    /// an evaluation at its deadline, when batch and ops executions still there are moved. A node
    /// made eligible again is offered to the jobs that want it, as on a join. Evaluation ids are
    /// derived (node, time, job), so every replica makes the same.
    fn set_node_eligibility(
        &mut self,
        node_id: &str,
        eligibility: crate::node::Eligibility,
        message: &str,
        now: i64,
    ) -> CommandResponse {
        use crate::node::Eligibility;
        let mut n = match self.known_node(node_id) {
            Ok(n) => n,
            Err(r) => return r,
        };
        if n.info.node_type != "Compute" {
            return reject(
                RejectCode::Invalid,
                format!("node {node_id} is not a compute node: it runs no work to drain"),
                "",
            );
        }
        let before = n.eligibility();
        if before == eligibility {
            return CommandResponse::Ok;
        }
        eligibility.to_labels(&mut n.info.labels);
        self.dirty.insert((Table::Node, node_id.to_string()));
        self.put_node(node_id.to_string(), n);
        let what = match eligibility {
            Eligibility::Eligible => "is eligible for new work again".to_string(),
            Eligibility::Ineligible => "takes no new work (made ineligible)".to_string(),
            Eligibility::Draining { deadline } => format!(
                "is draining: its service copies move now, what else runs there has until {}",
                crate::time::rfc3339(deadline)
            ),
        };
        let note = if message.is_empty() {
            String::new()
        } else {
            format!(" ({message})")
        };
        let jobs: BTreeSet<String> = self
            .live_executions_on(node_id)
            .into_iter()
            .map(|e| e.job_id.clone())
            .collect();
        for job_id in jobs {
            let Some(job) = self.jobs.get(&job_id).cloned() else {
                continue;
            };
            if job.state.state_type.is_terminal() {
                continue;
            }
            self.record(
                &job.id,
                job.version,
                "",
                Event::new(
                    topic::SCHEDULING,
                    format!("node {node_id} {what}{note}"),
                    now,
                ),
            );
            let id = derived_eval_id(trigger::NODE_DRAIN, node_id, now, &job.id);
            self.put_eval(Evaluation::new(id, &job, trigger::NODE_DRAIN, now));
            if let Eligibility::Draining { deadline } = eligibility
                && deadline > now
            {
                let id = derived_eval_id(trigger::NODE_DRAIN, node_id, deadline, &job.id);
                let mut e = Evaluation::new(id, &job, trigger::NODE_DRAIN, now);
                e.wait_until = deadline;
                self.put_eval(e);
            }
        }
        if eligibility == Eligibility::Eligible && self.nodes[node_id].is_schedulable() {
            self.evaluate_jobs_for_join(node_id, now);
        }
        CommandResponse::Ok
    }

    /// Stores a new job or a new version of one. The version it replaces, as it ended, is kept
    /// in `job_versions`; the current version is only in `jobs` (a job's state changes are
    /// written once, not twice).
    fn put_job(&mut self, job: Job) {
        let names = match self.idx.by_name.get_mut(&job.namespace) {
            Some(n) => n,
            None => self.idx.by_name.entry(job.namespace.clone()).or_default(),
        };
        names.insert(job.name.clone(), job.id.clone());
        self.dirty.insert((Table::Job, job.id.clone()));
        if let Some(old) = self.jobs.insert(job.id.clone(), job)
            && old.version != self.jobs[&old.id].version
        {
            let vk = version_key(&old.id, old.version);
            self.dirty.insert((Table::JobVersion, vk.clone()));
            self.job_versions.insert(vk, old);
        }
    }

    fn put_execution(&mut self, e: Execution) {
        self.idx
            .execs_by_job
            .entry(e.job_id.clone())
            .or_default()
            .insert(e.id.clone());
        if e.is_terminal() {
            if let Some(live) = self.idx.live_by_node.get_mut(&e.node_id) {
                live.remove(&e.id);
                if live.is_empty() {
                    self.idx.live_by_node.remove(&e.node_id);
                }
            }
        } else {
            self.idx
                .live_by_node
                .entry(e.node_id.clone())
                .or_default()
                .insert(e.id.clone());
        }
        self.dirty.insert((Table::Execution, e.id.clone()));
        self.executions.insert(e.id.clone(), e);
    }

    fn put_eval(&mut self, e: Evaluation) {
        let id = e.id.clone();
        self.dirty.insert((Table::Evaluation, id.clone()));
        if let Some(old) = self.evaluations.insert(id.clone(), e)
            && old.status == status::PENDING
        {
            self.idx.remove_pending(&old);
        }
        let new = &self.evaluations[&id];
        if new.status == status::PENDING {
            self.idx.add_pending(new);
        }
    }

    fn record(&mut self, job_id: &str, version: u64, execution_id: &str, event: Event) {
        self.counters.history_seq += 1;
        self.dirty.insert((Table::Counters, String::new()));
        let seq = self.counters.history_seq;
        let key = format!("{job_id}/{seq:020}");
        let h = JobHistory {
            seq_num: seq,
            kind: if execution_id.is_empty() {
                JOB_LEVEL
            } else {
                EXECUTION_LEVEL
            }
            .to_string(),
            job_id: job_id.to_string(),
            job_version: version,
            execution_id: execution_id.to_string(),
            time: event.timestamp,
            event,
        };
        // A record never changes: encoded now, for the store, instead of looked up again.
        match codec::encode(&h) {
            Ok(v) => self
                .fresh_history
                .push((Table::History, key.clone(), Some(v))),
            Err(_) => {
                self.dirty.insert((Table::History, key.clone()));
            }
        }
        self.history.insert(key, h);
    }

    fn set_job_state(&mut self, job_id: &str, new: JobStateType, message: &str, now: i64) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if job.state.state_type == new {
            return;
        }
        let prev = job.state.state_type;
        job.state = State::with_message(new, message);
        job.revision += 1;
        job.modify_time = now;
        let version = job.version;
        self.dirty.insert((Table::Job, job_id.to_string()));
        let mut text = format!("Job state changed from {prev} to {new}");
        if !message.is_empty() {
            text = format!("{text}: {message}");
        }
        let mut ev = Event::new(topic::STATE_UPDATE, text, now).detail("NewState", new.as_str());
        if new == JobStateType::Failed {
            ev = ev.error();
        }
        self.record(job_id, version, "", ev);
    }

    fn submit_job(
        &mut self,
        job: &Job,
        eval: &Evaluation,
        force: bool,
        now: i64,
    ) -> CommandResponse {
        if job.id.is_empty() || eval.id.is_empty() {
            return reject(
                RejectCode::Invalid,
                "job and evaluation ids are required",
                "",
            );
        }
        // The same submission applied again (a forward retried after its answer was lost), of a
        // new job or of a new version: its evaluation is here. Answered as the first time (with
        // the job's version now), changing nothing.
        if let Some(e) = self.evaluations.get(&eval.id)
            && let Some(j) = self.jobs.get(&e.job_id)
        {
            return CommandResponse::JobSubmitted {
                job_id: j.id.clone(),
                evaluation_id: e.id.clone(),
                version: j.version,
            };
        }
        if let Some(existing) = self.jobs.get(&job.id) {
            // The same job id again: answer as the first time if it is the same spec.
            return if same_spec(existing, job) {
                let eval_id = self
                    .evaluations
                    .get(&eval.id)
                    .map(|e| e.id.clone())
                    .unwrap_or_default();
                CommandResponse::JobSubmitted {
                    job_id: existing.id.clone(),
                    evaluation_id: eval_id,
                    version: existing.version,
                }
            } else {
                reject(
                    RejectCode::Conflict,
                    format!("job {} already exists with another spec", job.id),
                    "",
                )
            };
        }
        let mut new = job.clone();
        let mut eval = eval.clone();
        let message;
        match self
            .job_id_by_name(&job.namespace, &job.name)
            .and_then(|id| self.jobs.get(id))
        {
            Some(old) => {
                if !force && same_spec(old, job) {
                    return reject(
                        RejectCode::NoChange,
                        format!(
                            "no changes detected for new job spec; job {} is at version {}",
                            old.id, old.version
                        ),
                        "use the --force flag to submit it again as a new version",
                    );
                }
                new.id = old.id.clone();
                new.version = old.version + 1;
                new.revision = old.revision + 1;
                new.create_time = old.create_time;
                eval.job_id = old.id.clone();
                eval.triggered_by = trigger::JOB_UPDATE.into();
                message = "Job update requested by user";
            }
            None => {
                new.version = 1;
                new.revision = 1;
                new.create_time = now;
                message = "Job submitted";
            }
        }
        new.modify_time = now;
        new.state = State::new(JobStateType::Pending);
        let (id, version) = (new.id.clone(), new.version);
        self.put_job(new);
        eval.create_time = now;
        eval.modify_time = now;
        eval.status = status::PENDING.into();
        let eval_id = eval.id.clone();
        self.put_eval(eval);
        self.record(
            &id,
            version,
            "",
            Event::new(topic::SUBMISSION, message, now),
        );
        CommandResponse::JobSubmitted {
            job_id: id,
            evaluation_id: eval_id,
            version,
        }
    }

    fn stop_job(&mut self, job_id: &str, reason: &str, eval_id: &str, now: i64) -> CommandResponse {
        let Some(job) = self.jobs.get(job_id).cloned() else {
            return reject(
                RejectCode::NotFound,
                format!("job {job_id} not found"),
                "list jobs with `caravel job list`",
            );
        };
        match job.state.state_type {
            JobStateType::Completed => {
                return reject(
                    RejectCode::Conflict,
                    "cannot stop job in state Completed",
                    "the job has already finished",
                );
            }
            JobStateType::Stopped => {
                return CommandResponse::JobStopped {
                    evaluation_id: String::new(),
                };
            }
            _ => {}
        }
        let was_failed = job.state.state_type == JobStateType::Failed;
        let reason = if reason.is_empty() {
            "Stopped at user request"
        } else {
            reason
        };
        self.set_job_state(job_id, JobStateType::Stopped, reason, now);
        if was_failed || eval_id.is_empty() {
            return CommandResponse::JobStopped {
                evaluation_id: String::new(),
            };
        }
        let job = self.jobs[job_id].clone();
        self.put_eval(Evaluation::new(
            eval_id.to_string(),
            &job,
            trigger::JOB_CANCEL,
            now,
        ));
        CommandResponse::JobStopped {
            evaluation_id: eval_id.to_string(),
        }
    }

    fn apply_plan(&mut self, plan: &Plan) -> CommandResponse {
        match self.evaluations.get(&plan.eval_id) {
            Some(e) if e.status == status::PENDING => {}
            Some(e) => {
                return reject(
                    RejectCode::Stale,
                    format!("evaluation {} is already {}", e.id, e.status),
                    "",
                );
            }
            None => {
                return reject(
                    RejectCode::NotFound,
                    format!("evaluation {} not found", plan.eval_id),
                    "",
                );
            }
        }
        let now = plan.now;
        let Some((job_version, job_revision)) =
            self.jobs.get(&plan.job_id).map(|j| (j.version, j.revision))
        else {
            self.finish_eval(&plan.eval_id, status::CANCELED, "job no longer exists", now);
            return CommandResponse::Ok;
        };
        if job_revision != plan.job_revision {
            return reject(
                RejectCode::Stale,
                format!(
                    "job {} changed (revision {} → {}) since the plan was made",
                    plan.job_id, plan.job_revision, job_revision
                ),
                "the scheduler will evaluate again",
            );
        }
        for e in &plan.new_executions {
            if self.executions.contains_key(&e.id) {
                continue;
            }
            let mut e = e.clone();
            e.revision = 1;
            e.create_time = now;
            e.modify_time = now;
            e.job = None;
            let (jid, ver, eid, node) = (
                e.job_id.clone(),
                e.job_version,
                e.id.clone(),
                e.node_id.clone(),
            );
            self.put_execution(e);
            self.record(
                &jid,
                ver,
                &eid,
                Event::new(
                    topic::SCHEDULING,
                    format!("Execution created on node {node}"),
                    now,
                ),
            );
        }
        for ch in &plan.updates {
            self.change_execution(ch, now);
        }
        for ev in &plan.events {
            self.record(&plan.job_id, job_version, "", ev.clone());
        }
        if let Some((state, msg)) = &plan.job_state
            && !self.jobs[&plan.job_id].state.state_type.is_terminal()
        {
            self.set_job_state(&plan.job_id, *state, msg, now);
        }
        for e in &plan.new_evaluations {
            if !self.evaluations.contains_key(&e.id) {
                self.put_eval(e.clone());
            }
        }
        let st = if plan.eval_status.is_empty() {
            status::COMPLETE
        } else {
            plan.eval_status.as_str()
        };
        self.finish_eval(&plan.eval_id, st, &plan.eval_comment, now);
        CommandResponse::Ok
    }

    fn finish_eval(&mut self, id: &str, st: &str, comment: &str, now: i64) {
        let Some(e) = self.evaluations.get_mut(id) else {
            return;
        };
        if e.status == status::PENDING {
            self.idx.remove_pending(e);
        }
        e.status = st.to_string();
        e.comment = comment.to_string();
        e.modify_time = now;
        if e.status == status::PENDING {
            self.idx.add_pending(e);
        }
        self.dirty.insert((Table::Evaluation, id.to_string()));
    }

    fn change_execution(&mut self, ch: &ExecutionChange, now: i64) {
        let Some(mut e) = self.executions.get(&ch.execution_id).cloned() else {
            return;
        };
        let mut changed = false;
        if e.desired_state.state_type != ch.desired {
            e.desired_state = State::with_message(ch.desired, ch.message.clone());
            changed = true;
        }
        if let Some(c) = ch.compute
            && e.compute_state.state_type.can_transition_to(c)
            && e.compute_state.state_type != c
        {
            e.compute_state = State::with_message(c, ch.message.clone());
            changed = true;
        }
        if !changed {
            return;
        }
        e.revision += 1;
        e.modify_time = now;
        let (jid, ver, eid) = (e.job_id.clone(), e.job_version, e.id.clone());
        let text = format!("Execution {}: {}", e.compute_state.state_type, ch.message);
        self.put_execution(e);
        self.record(&jid, ver, &eid, Event::new(topic::EXECUTION, text, now));
    }

    fn update_execution(
        &mut self,
        node_id: &str,
        seq: u64,
        u: &ExecutionUpdate,
        followup: &str,
        now: i64,
    ) -> CommandResponse {
        if seq <= self.last_report_seq(node_id) {
            return CommandResponse::Duplicate;
        }
        self.node_seq.insert(node_id.to_string(), seq);
        self.dirty.insert((Table::NodeSeq, node_id.to_string()));
        let Some(mut e) = self.executions.get(&u.execution_id).cloned() else {
            return reject(
                RejectCode::NotFound,
                format!("execution {} not found", u.execution_id),
                "",
            );
        };
        if e.node_id != node_id {
            return reject(
                RejectCode::Invalid,
                format!("execution {} does not belong to node {node_id}", e.id),
                "",
            );
        }
        let from = e.compute_state.state_type;
        if from == u.state && u.run_output.is_none() {
            return CommandResponse::Ok;
        }
        if !from.can_transition_to(u.state) {
            return reject(
                RejectCode::Stale,
                format!("execution {} cannot go from {from} to {}", e.id, u.state),
                "",
            );
        }
        e.compute_state = State::with_message(u.state, u.message.clone());
        if let Some(o) = &u.run_output {
            e.run_output = Some(o.clone());
        }
        if let Some(p) = &u.published_result {
            e.published_result = p.clone();
        }
        e.revision += 1;
        e.modify_time = now;
        let terminal = u.state.is_terminal();
        let job_state = self.jobs.get(&e.job_id).map(|j| j.state.state_type);
        if terminal {
            e.desired_state =
                State::with_message(ExecutionDesiredState::Stopped, "execution finished");
            if job_state.is_some_and(|s| !s.is_terminal()) && !followup.is_empty() {
                e.followup_eval_id = followup.to_string();
            }
        }
        let (jid, ver, eid) = (e.job_id.clone(), e.job_version, e.id.clone());
        let fid = e.followup_eval_id.clone();
        self.put_execution(e);
        let topic = if u.topic.is_empty() {
            topic::EXECUTION
        } else {
            u.topic.as_str()
        };
        let mut text = format!("Execution {}", u.state);
        if !u.message.is_empty() {
            text = format!("{text}: {}", u.message);
        }
        let mut ev = Event::new(topic, text, now).detail("NewState", u.state.as_str());
        if u.state == ExecutionStateType::Failed {
            ev = ev.error();
        }
        self.record(&jid, ver, &eid, ev);
        if let Some(job_state) = job_state {
            if u.state == ExecutionStateType::Running
                && matches!(job_state, JobStateType::Pending | JobStateType::Queued)
            {
                self.set_job_state(&jid, JobStateType::Running, "", now);
            }
            if terminal && !fid.is_empty() && !self.evaluations.contains_key(&fid) {
                let j = &self.jobs[&jid];
                let trig = if u.state == ExecutionStateType::Failed {
                    trigger::EXEC_FAILURE
                } else {
                    trigger::EXEC_UPDATE
                };
                let ev = Evaluation::new(fid, j, trig, now);
                self.put_eval(ev);
            }
        }
        CommandResponse::Ok
    }

    fn create_join_token(&mut self, t: &JoinToken) -> CommandResponse {
        if t.id.is_empty() || t.secret_sha256.len() != 64 {
            return reject(RejectCode::Invalid, "malformed join token", "");
        }
        if self.security.join_tokens.contains_key(&t.id) {
            return reject(
                RejectCode::Conflict,
                format!("join token {} exists", t.id),
                "",
            );
        }
        self.security.join_tokens.insert(t.id.clone(), t.clone());
        self.dirty.insert((Table::JoinToken, t.id.clone()));
        CommandResponse::Ok
    }

    fn consume_join_token(
        &mut self,
        id: &str,
        secret_sha256: &str,
        node_id: &str,
        now: i64,
    ) -> CommandResponse {
        let refuse = |m: String| {
            reject(
                RejectCode::Invalid,
                m,
                "ask an operator for a new token: caravel node token create",
            )
        };
        let Some(t) = self.security.join_tokens.get(id) else {
            return refuse(format!(
                "join token {id} is not known (deleted, or never created here)"
            ));
        };
        // The id part of a token is not secret; the comparison of the secret's digest decides.
        if t.secret_sha256 != secret_sha256 {
            return refuse(format!("join token {id}: the secret does not match"));
        }
        if t.is_used() {
            return refuse(format!(
                "join token {id} was already used (by {} at {})",
                t.used_by,
                crate::time::rfc3339(t.used_at)
            ));
        }
        if now >= t.expires_at {
            return refuse(format!(
                "join token {id} expired at {}",
                crate::time::rfc3339(t.expires_at)
            ));
        }
        if !t.node_id.is_empty() && t.node_id != node_id {
            return refuse(format!(
                "join token {id} is for node {}, not {node_id}",
                t.node_id
            ));
        }
        if self.nodes.contains_key(node_id) {
            return reject(
                RejectCode::Conflict,
                format!("a node {node_id} is already registered"),
                "choose another --node-id, or delete the old node first (caravel node delete)",
            );
        }
        let mut t = t.clone();
        t.used_by = node_id.to_string();
        t.used_at = now;
        let labels = t.labels.clone();
        self.security.join_tokens.insert(id.to_string(), t);
        self.dirty.insert((Table::JoinToken, id.to_string()));
        CommandResponse::TokenAccepted { labels }
    }

    fn deny(&mut self, d: Denial) {
        let key = crate::security::denial_key(&d);
        self.security.denied.insert(key.clone(), d);
        self.dirty.insert((Table::Denied, key));
    }

    fn register_node_with(
        &mut self,
        info: &NodeInfo,
        now: i64,
        pending: bool,
        fingerprint: &str,
    ) -> CommandResponse {
        if let Some(d) = self.security.denial(&info.node_id, fingerprint) {
            return reject(
                RejectCode::Conflict,
                format!("node {} may not connect: {}", info.node_id, d.reason),
                "",
            );
        }
        if !self.nodes.contains_key(&info.node_id) && pending {
            let n = NodeState {
                membership: NodeMembership::Pending,
                ..Default::default()
            };
            self.put_node(info.node_id.clone(), n);
        }
        let r = self.register_node(info, now);
        if r == CommandResponse::Ok && !fingerprint.is_empty() {
            let certs = self
                .security
                .node_certs
                .entry(info.node_id.clone())
                .or_default();
            if certs.insert(fingerprint.to_string()) {
                self.dirty.insert((Table::NodeCert, info.node_id.clone()));
            }
        }
        r
    }

    /// One evaluation per job with a live execution on `node_id`, ids in job order.
    fn evaluate_jobs_on(&mut self, node_id: &str, trig: &str, eval_ids: &[String], now: i64) {
        let jobs: BTreeSet<String> = self
            .live_executions_on(node_id)
            .into_iter()
            .map(|e| e.job_id.clone())
            .filter(|j| {
                self.jobs
                    .get(j)
                    .is_some_and(|j| !j.state.state_type.is_terminal())
            })
            .collect();
        for (job_id, eval_id) in jobs.iter().zip(eval_ids) {
            let job = self.jobs[job_id].clone();
            self.put_eval(Evaluation::new(eval_id.clone(), &job, trig, now));
        }
    }

    /// A compute node became able to take work (registered, returned, approved or changed what it
    /// offers): one evaluation, with an id derived from the node, the time and the job (every
    /// replica derives the same), for each job that may now want it — every daemon still running
    /// (to follow the fleet), every job waiting in the queue, and every job with an execution on
    /// the node (to reconcile it). Ops jobs do not follow the fleet, as Bacalhau's.
    fn evaluate_jobs_for_join(&mut self, node_id: &str, now: i64) {
        let on_node: BTreeSet<String> = self
            .live_executions_on(node_id)
            .into_iter()
            .map(|e| e.job_id.clone())
            .collect();
        let jobs: Vec<Job> = self
            .jobs
            .values()
            .filter(|j| !j.state.state_type.is_terminal())
            .filter(|j| {
                j.job_type() == crate::spec::JobType::Daemon
                    || j.state.state_type == JobStateType::Queued
                    || on_node.contains(&j.id)
            })
            .cloned()
            .collect();
        // A queued job's waiting next try is brought forward instead, so joins never start a
        // second queue chain. Any other job gets its own evaluation: one already due may be
        // under way with a view from before the join, and timers (a grace period's end, a
        // TotalTimeout, a retry delay) must keep their time.
        let mut queued: BTreeMap<&str, &Evaluation> = BTreeMap::new();
        for e in self.evaluations.values().filter(|e| {
            e.status == status::PENDING
                && e.triggered_by == trigger::JOB_QUEUE
                && e.wait_until > now
        }) {
            queued.entry(e.job_id.as_str()).or_insert(e);
        }
        let mut due = Vec::new();
        for job in &jobs {
            match queued.get(job.id.as_str()) {
                Some(e) => {
                    let mut e = (*e).clone();
                    e.wait_until = now;
                    e.modify_time = now;
                    due.push(e);
                }
                None => {
                    let id = derived_eval_id(trigger::NODE_JOIN, node_id, now, &job.id);
                    if !self.evaluations.contains_key(&id) {
                        due.push(Evaluation::new(id, job, trigger::NODE_JOIN, now));
                    }
                }
            }
        }
        for e in due {
            self.put_eval(e);
        }
    }

    /// A copy of the node to change, or the refusal naming it as unknown.
    fn known_node(&self, node_id: &str) -> Result<NodeState, CommandResponse> {
        self.nodes.get(node_id).cloned().ok_or_else(|| {
            reject(
                RejectCode::NotFound,
                format!("node {node_id} not found"),
                "list nodes with `caravel node list`",
            )
        })
    }

    fn set_node_membership(
        &mut self,
        node_id: &str,
        membership: NodeMembership,
        message: &str,
        eval_ids: &[String],
        now: i64,
    ) -> CommandResponse {
        let mut n = match self.known_node(node_id) {
            Ok(n) => n,
            Err(r) => return r,
        };
        if n.membership == membership {
            return reject(
                RejectCode::Conflict,
                format!("node {node_id} is already {}", membership.as_str()),
                "",
            );
        }
        n.membership = membership;
        let key = format!("node/{node_id}");
        match membership {
            NodeMembership::Rejected => {
                n.connection_state.status = NodeConnection::Disconnected;
                n.connection = NodeConnection::Disconnected;
                n.connection_state.disconnected_since = now;
                n.connection_state.last_error = format!("rejected: {message}");
                self.deny(Denial {
                    node_id: node_id.to_string(),
                    fingerprint: String::new(),
                    reason: if message.is_empty() {
                        "rejected by an operator".into()
                    } else {
                        format!("rejected by an operator: {message}")
                    },
                    at: now,
                });
            }
            _ => {
                if self.security.denied.remove(&key).is_some() {
                    self.dirty.insert((Table::Denied, key));
                }
            }
        }
        self.dirty.insert((Table::Node, node_id.to_string()));
        self.put_node(node_id.to_string(), n);
        if membership == NodeMembership::Rejected {
            self.evaluate_jobs_on(node_id, trigger::NODE_LEAVE, eval_ids, now);
        } else if self.nodes[node_id].is_schedulable() {
            self.evaluate_jobs_for_join(node_id, now);
        }
        CommandResponse::Ok
    }

    fn delete_node(
        &mut self,
        node_id: &str,
        message: &str,
        eval_ids: &[String],
        now: i64,
    ) -> CommandResponse {
        if self.remove_node(node_id).is_none() {
            return reject(
                RejectCode::NotFound,
                format!("node {node_id} not found"),
                "list nodes with `caravel node list`",
            );
        }
        self.dirty.insert((Table::Node, node_id.to_string()));
        let reason = if message.is_empty() {
            "deleted by an operator".to_string()
        } else {
            format!("deleted by an operator: {message}")
        };
        let certs = self.security.node_certs.remove(node_id).unwrap_or_default();
        if !certs.is_empty() {
            self.dirty.insert((Table::NodeCert, node_id.to_string()));
        }
        for fingerprint in certs {
            self.deny(Denial {
                node_id: node_id.to_string(),
                fingerprint,
                reason: reason.clone(),
                at: now,
            });
        }
        // A deleted node's own rejection (if any) goes with it: it may join again as new.
        let key = format!("node/{node_id}");
        if self.security.denied.remove(&key).is_some() {
            self.dirty.insert((Table::Denied, key));
        }
        self.evaluate_jobs_on(node_id, trigger::NODE_LEAVE, eval_ids, now);
        CommandResponse::Ok
    }

    fn register_node(&mut self, info: &NodeInfo, now: i64) -> CommandResponse {
        if info.node_id.is_empty() {
            return reject(RejectCode::Invalid, "node id is required", "");
        }
        let mut n = self
            .nodes
            .get(&info.node_id)
            .cloned()
            .unwrap_or_else(|| NodeState {
                membership: NodeMembership::Approved,
                ..Default::default()
            });
        if n.membership == NodeMembership::Rejected {
            return reject(
                RejectCode::Conflict,
                format!("node {} was rejected", info.node_id),
                "",
            );
        }
        // What the scheduler sees of a node changed: it is new, back, or offers something else.
        let own_labels = |l: &BTreeMap<String, String>| -> Vec<(String, String)> {
            l.iter()
                .filter(|(k, _)| !crate::node::ORCHESTRATOR_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let joined = n.connection_state.status != NodeConnection::Connected
            || n.info.node_type != info.node_type
            || own_labels(&n.info.labels) != own_labels(&info.labels)
            || {
                let (a, b) = (&n.info.compute_node_info, &info.compute_node_info);
                a.execution_engines != b.execution_engines
                    || a.publishers != b.publishers
                    || a.storage_sources != b.storage_sources
                    || a.max_capacity != b.max_capacity
                    || a.max_job_requirements != b.max_job_requirements
            };
        // Eligibility is the orchestrators' to set: a registration neither sets nor clears it.
        let kept = n.eligibility();
        n.info = info.clone();
        kept.to_labels(&mut n.info.labels);
        if n.connection_state.status != NodeConnection::Connected {
            n.connection_state.connected_since = now;
        }
        n.connection_state.status = NodeConnection::Connected;
        n.connection_state.last_heartbeat = now;
        n.connection_state.last_error.clear();
        n.connection = NodeConnection::Connected;
        self.dirty.insert((Table::Node, info.node_id.clone()));
        let schedulable = n.is_schedulable();
        self.put_node(info.node_id.clone(), n);
        if joined && schedulable {
            self.evaluate_jobs_for_join(&info.node_id, now);
        }
        CommandResponse::Ok
    }

    fn set_node_connection(
        &mut self,
        node_id: &str,
        st: NodeConnection,
        reason: &str,
        eval_ids: &[String],
        now: i64,
    ) -> CommandResponse {
        let Some(mut n) = self.nodes.get(node_id).cloned() else {
            return reject(
                RejectCode::NotFound,
                format!("node {node_id} not found"),
                "",
            );
        };
        if n.connection_state.status == st {
            return CommandResponse::Ok;
        }
        n.connection_state.status = st;
        n.connection = st;
        match st {
            NodeConnection::Connected => n.connection_state.connected_since = now,
            NodeConnection::Disconnected => {
                n.connection_state.disconnected_since = now;
                n.connection_state.last_error = reason.to_string();
            }
        }
        self.dirty.insert((Table::Node, node_id.to_string()));
        self.put_node(node_id.to_string(), n);
        // One evaluation per affected job, ids handed out in job order (deterministic).
        if st == NodeConnection::Connected {
            if self.nodes[node_id].is_schedulable() {
                self.evaluate_jobs_for_join(node_id, now);
            }
        } else {
            self.evaluate_jobs_on(node_id, trigger::NODE_LEAVE, eval_ids, now);
        }
        CommandResponse::Ok
    }
}

/// An evaluation id every replica derives alike from what caused it (a UUID-shaped digest); the
/// scheduler uses it too, so that the same timer asked for twice is one evaluation.
pub fn derived_eval_id(trigger: &str, node_id: &str, now: i64, job_id: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [
        trigger.as_bytes(),
        node_id.as_bytes(),
        &now.to_be_bytes(),
        job_id.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // Marked as a version 8 (custom) UUID.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// Two specs are the same submission when everything a user writes is equal.
fn same_spec(a: &Job, b: &Job) -> bool {
    a.name == b.name
        && a.namespace == b.namespace
        && a.kind == b.kind
        && a.priority == b.priority
        && a.count == b.count
        && a.constraints == b.constraints
        && a.meta == b.meta
        && a.labels == b.labels
        && a.tasks == b.tasks
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("not found")]
    NotFound,
    #[error("the prefix matches more than one")]
    Ambiguous,
}

impl StateView for ClusterState {
    fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }
    fn executions_of(&self, job_id: &str) -> Vec<&Execution> {
        self.idx
            .execs_by_job
            .get(job_id)
            .map(|ids| ids.iter().filter_map(|i| self.executions.get(i)).collect())
            .unwrap_or_default()
    }
    fn nodes(&self) -> Vec<&NodeState> {
        self.nodes.values().collect()
    }
    fn node(&self, id: &str) -> Option<&NodeState> {
        self.nodes.get(id)
    }
    fn nodes_labelled(&self, key: &str, values: &[String]) -> Option<Vec<&str>> {
        let Some(by_value) = self.idx.nodes_by_label.get(key) else {
            return Some(Vec::new());
        };
        // A node has one value per key, so the values' sets are disjoint: their ids are put one
        // set after the other, the values in order (each once). Not merged into one id order nor
        // collected into a set and looked up node by node: with 750 of 1,000 nodes in a job's
        // zones, that was a fifth of a busy scheduler's CPU, for the ten or so nodes a sample
        // looks at.
        let mut values: Vec<&String> = values.iter().collect();
        values.sort_unstable();
        values.dedup();
        let sets: Vec<&BTreeSet<String>> = values.iter().filter_map(|v| by_value.get(*v)).collect();
        let mut ids = Vec::with_capacity(sets.iter().map(|s| s.len()).sum());
        for set in sets {
            ids.extend(set.iter().map(String::as_str));
        }
        Some(ids)
    }
    fn evaluation(&self, id: &str) -> Option<&Evaluation> {
        self.evaluations.get(id)
    }
    fn live_executions_on(&self, node_id: &str) -> Vec<&Execution> {
        self.idx
            .live_by_node
            .get(node_id)
            .map(|ids| ids.iter().filter_map(|i| self.executions.get(i)).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::ExecutionUpdate;

    #[test]
    fn each_jobs_first_due_evaluation_is_found_by_the_index_as_by_a_walk() {
        let mut s = ClusterState::default();
        let job = |id: &str, priority: i32| crate::Job {
            id: id.into(),
            priority,
            ..Default::default()
        };
        let eval = |id: &str, job: &crate::Job, at: i64, wait: i64| {
            let mut e = Evaluation::new(id.into(), job, trigger::EXEC_UPDATE, at);
            e.wait_until = wait;
            e
        };
        let (a, b, c) = (job("j-a", 0), job("j-b", 5), job("j-c", 0));
        // j-a: the older of two; j-b: a younger one of higher priority wins; j-c: its first is
        // not due yet, so its second is.
        for e in [
            eval("e-a2", &a, 20, 0),
            eval("e-a1", &a, 10, 0),
            eval("e-b1", &b, 10, 0),
            eval("e-c1", &c, 5, 1_000),
            eval("e-c2", &c, 30, 0),
        ] {
            s.put_eval(e);
        }
        let mut hi = eval("e-b2", &b, 40, 0);
        hi.priority = 9;
        s.put_eval(hi);
        // The broker's walk before the index: every pending evaluation, the first per job in order.
        let walk = |s: &ClusterState, now: i64, busy: &[&str]| {
            let mut best: BTreeMap<&str, &Evaluation> = BTreeMap::new();
            for e in s.pending_evaluations() {
                if e.wait_until > now || busy.contains(&e.job_id.as_str()) {
                    continue;
                }
                let key =
                    |e: &Evaluation| (std::cmp::Reverse(e.priority), e.create_time, e.id.clone());
                let cur = best.entry(e.job_id.as_str()).or_insert(e);
                if key(e) < key(cur) {
                    *cur = e;
                }
            }
            let mut ids: Vec<String> = best.values().map(|e| e.id.clone()).collect();
            ids.sort();
            ids
        };
        let index = |s: &ClusterState, now: i64, busy: &[&str]| {
            let mut ids: Vec<String> = s
                .first_due_evaluations(now, |j| busy.contains(&j), |_| false, usize::MAX)
                .iter()
                .map(|e| e.id.clone())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(index(&s, 100, &[]), vec!["e-a1", "e-b2", "e-c2"]);
        assert_eq!(index(&s, 2_000, &[]), vec!["e-a1", "e-b2", "e-c1"]);
        assert_eq!(index(&s, 100, &["j-b"]), vec!["e-a1", "e-c2"]);
        // In the broker's order across jobs (a timed one merged in), the first `limit` of them.
        let ordered = |s: &ClusterState, now: i64, busy_eval: &str, limit: usize| {
            s.first_due_evaluations(now, |_| false, |e| e == busy_eval, limit)
                .iter()
                .map(|e| e.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ordered(&s, 100, "", 9), ["e-b2", "e-a1", "e-c2"]);
        assert_eq!(ordered(&s, 2_000, "", 9), ["e-b2", "e-c1", "e-a1"]);
        assert_eq!(ordered(&s, 2_000, "", 2), ["e-b2", "e-c1"]);
        assert_eq!(ordered(&s, 100, "e-b2", 9), ["e-b1", "e-a1", "e-c2"]);
        for (now, busy) in [(100, vec![]), (2_000, vec![]), (100, vec!["j-a"])] {
            assert_eq!(index(&s, now, &busy), walk(&s, now, &busy));
        }
        // Completing an evaluation takes it out; the job's next one comes first.
        let mut done = s.evaluations["e-a1"].clone();
        done.status = status::COMPLETE.into();
        s.put_eval(done);
        assert_eq!(index(&s, 100, &[]), vec!["e-a2", "e-b2", "e-c2"]);
        // A state loaded from its records rebuilds the same index.
        let mut loaded = s.clone();
        loaded.idx = Indexes::default();
        loaded.rebuild_indexes();
        assert_eq!(loaded.idx, s.idx);
        for e in ["e-a2", "e-b1", "e-b2", "e-c1", "e-c2"] {
            let mut d = s.evaluations[e].clone();
            d.status = status::COMPLETE.into();
            s.put_eval(d);
        }
        assert!(
            s.first_due_evaluations(i64::MAX, |_| false, |_| false, usize::MAX)
                .is_empty()
        );
        assert!(s.idx.pending_by_job.is_empty(), "emptied sets are dropped");
        assert!(s.idx.ready_by_job.is_empty() && s.idx.ready_heads.is_empty());
        assert!(s.idx.pending_timed.is_empty());
        // Many evaluations per job, added and finished in a scrambled order: at every step the
        // index answers as the walk, in the walk's order, and equals the index rebuilt.
        let jobs: Vec<crate::Job> = (0..5).map(|i| job(&format!("j-{i}"), i % 2)).collect();
        let mut x: u64 = 7;
        let mut rand = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut live: Vec<String> = Vec::new();
        for step in 0..400 {
            if live.is_empty() || rand(3) > 0 {
                let j = &jobs[rand(5) as usize];
                let wait = if rand(4) == 0 {
                    1 + rand(300) as i64
                } else {
                    0
                };
                let mut e = eval(&format!("r-{step:03}"), j, rand(50) as i64, wait);
                e.priority = rand(3) as i32;
                live.push(e.id.clone());
                s.put_eval(e);
            } else {
                let id = live.swap_remove(rand(live.len() as u64) as usize);
                let mut d = s.evaluations[&id].clone();
                d.status = status::COMPLETE.into();
                s.put_eval(d);
            }
            let now = rand(400) as i64;
            let busy = [format!("j-{}", rand(7))];
            let busy: Vec<&str> = busy.iter().map(String::as_str).collect();
            assert_eq!(index(&s, now, &busy), walk(&s, now, &busy), "step {step}");
            let firsts = s.first_due_evaluations(now, |_| false, |_| false, usize::MAX);
            let keys: Vec<_> = firsts.iter().map(|e| pending_key(e)).collect();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "in order at step {step}"
            );
            let three = s.first_due_evaluations(now, |_| false, |_| false, 3);
            assert_eq!(three.len(), firsts.len().min(3));
            assert!(three.iter().zip(&firsts).all(|(a, b)| a.id == b.id));
            if step % 50 == 0 {
                let mut loaded = s.clone();
                loaded.idx = Indexes::default();
                loaded.rebuild_indexes();
                assert_eq!(loaded.idx, s.idx, "step {step}");
            }
        }
    }

    fn commands() -> Vec<Command> {
        let text = b"Name: d\nTasks:\n- Engine: {Type: wasm, Params: {EntryModule: /m}}\n  InputSources: [{Target: /m, Source: {Type: inline, Params: {URL: 'data:,x'}}}]\n";
        let mut job = crate::parse::parse_job(text, crate::parse::Mode::Server)
            .unwrap()
            .job;
        job.id = "j-1".into();
        let eval = Evaluation::new("ev-1".into(), &job, trigger::JOB_REGISTER, 5);
        let info = NodeInfo {
            node_id: "n-1".into(),
            node_type: "Compute".into(),
            ..Default::default()
        };
        let exec = Execution {
            id: "e-1".into(),
            job_id: "j-1".into(),
            node_id: "n-1".into(),
            job_version: 1,
            desired_state: State::new(ExecutionDesiredState::Running),
            compute_state: State::new(ExecutionStateType::New),
            ..Default::default()
        };
        let plan = Plan {
            eval_id: "ev-1".into(),
            job_id: "j-1".into(),
            job_revision: 1,
            new_executions: vec![exec],
            now: 7,
            ..Default::default()
        };
        let up = |s| ExecutionUpdate {
            execution_id: "e-1".into(),
            state: s,
            message: String::new(),
            run_output: None,
            published_result: None,
            topic: String::new(),
            time: 0,
        };
        vec![
            Command::RegisterNode { info, now: 1 },
            Command::SubmitJob {
                job,
                evaluation: eval,
                force: false,
                now: 5,
            },
            Command::ApplyPlan(plan),
            Command::UpdateExecution {
                node_id: "n-1".into(),
                seq: 1,
                update: up(ExecutionStateType::Running),
                followup_eval_id: "f-1".into(),
                now: 8,
            },
            Command::UpdateExecution {
                node_id: "n-1".into(),
                seq: 2,
                update: up(ExecutionStateType::Completed),
                followup_eval_id: "f-2".into(),
                now: 9,
            },
            // A replayed report: acknowledged, not applied again.
            Command::UpdateExecution {
                node_id: "n-1".into(),
                seq: 2,
                update: up(ExecutionStateType::Completed),
                followup_eval_id: "f-3".into(),
                now: 10,
            },
        ]
    }

    /// Reports in one entry are applied exactly as the same reports one entry each: the same
    /// answers, in order (a replayed one a Duplicate), and byte-identical state.
    #[test]
    fn reports_in_one_entry_apply_as_one_entry_each() {
        let cmds = commands();
        let (mut one_each, mut batched) = (ClusterState::default(), ClusterState::default());
        for c in &cmds[..3] {
            one_each.apply(c);
            batched.apply(c);
        }
        let each: Vec<CommandResponse> = cmds[3..].iter().map(|c| one_each.apply(c)).collect();
        let reports: Vec<crate::command::ExecutionReport> = cmds[3..]
            .iter()
            .map(|c| match c.clone() {
                Command::UpdateExecution {
                    node_id,
                    seq,
                    update,
                    followup_eval_id,
                    now,
                } => crate::command::ExecutionReport {
                    node_id,
                    seq,
                    update,
                    followup_eval_id,
                    now,
                },
                other => panic!("not a report: {other:?}"),
            })
            .collect();
        let r = batched.apply(&Command::UpdateExecutions(reports));
        assert_eq!(r, CommandResponse::Plans(each.clone()));
        assert_eq!(each.last(), Some(&CommandResponse::Duplicate));
        assert_eq!(
            one_each.to_snapshot().unwrap(),
            batched.to_snapshot().unwrap()
        );
    }

    /// A submission applied twice (a forward retried after its answer was lost) is answered the
    /// second time as the first and changes nothing: a new job, and a forced new version alike.
    #[test]
    fn a_submission_applied_again_is_answered_as_the_first_time() {
        let cmds = commands();
        let mut s = ClusterState::default();
        let first = s.apply(&cmds[1]);
        let before = s.to_snapshot().unwrap();
        assert_eq!(s.apply(&cmds[1]), first);
        assert_eq!(s.to_snapshot().unwrap(), before);

        let Command::SubmitJob { job, .. } = &cmds[1] else {
            panic!("not a submission")
        };
        let mut update = job.clone();
        update.id = "j-2".into();
        let update = Command::SubmitJob {
            evaluation: Evaluation::new("ev-2".into(), &update, trigger::JOB_REGISTER, 6),
            job: update,
            force: true,
            now: 6,
        };
        let answer = s.apply(&update);
        assert!(
            matches!(&answer, CommandResponse::JobSubmitted { job_id, version: 2, .. } if job_id == "j-1"),
            "a forced resubmission by name is version 2 of j-1: {answer:?}"
        );
        let before = s.to_snapshot().unwrap();
        assert_eq!(s.apply(&update), answer, "applied again: still version 2");
        assert_eq!(s.to_snapshot().unwrap(), before);
        assert_eq!(s.versions_of("j-1").len(), 2);
    }

    /// Commands in one `Batch` entry are applied exactly as the same commands one entry each: the
    /// same answers in order (a submission, a replayed report's Duplicate), byte-identical state;
    /// a batch inside the batch is refused on its own, the rest applied.
    #[test]
    fn a_batch_of_commands_applies_as_one_entry_each() {
        let cmds = commands();
        let (mut one_each, mut batched) = (ClusterState::default(), ClusterState::default());
        let each: Vec<CommandResponse> = cmds.iter().map(|c| one_each.apply(c)).collect();
        let mut inner = cmds.clone();
        inner.insert(2, Command::Batch(vec![cmds[0].clone()]));
        let r = batched.apply(&Command::Batch(inner));
        let CommandResponse::Plans(mut answers) = r else {
            panic!("a batch is answered one answer per command, not {r:?}");
        };
        let nested = answers.remove(2);
        assert!(
            matches!(
                &nested,
                CommandResponse::Rejected {
                    code: RejectCode::Invalid,
                    ..
                }
            ),
            "a nested batch is refused: {nested:?}"
        );
        assert_eq!(answers, each);
        assert!(matches!(answers[1], CommandResponse::JobSubmitted { .. }));
        assert_eq!(answers.last(), Some(&CommandResponse::Duplicate));
        assert_eq!(
            one_each.to_snapshot().unwrap(),
            batched.to_snapshot().unwrap()
        );
    }

    #[test]
    fn the_same_log_applied_twice_gives_byte_identical_state() {
        let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
        let ra: Vec<_> = commands().iter().map(|c| a.apply(c)).collect();
        let rb: Vec<_> = commands().iter().map(|c| b.apply(c)).collect();
        assert_eq!(ra, rb);
        assert_eq!(a.to_snapshot().unwrap(), b.to_snapshot().unwrap());
        assert_eq!(
            ra[5],
            CommandResponse::Duplicate,
            "a report is applied once per (node, seq)"
        );
        assert!(!a.evaluations.contains_key("f-3"));
        assert_eq!(
            a.executions["e-1"].compute_state.state_type,
            ExecutionStateType::Completed
        );
    }

    #[test]
    fn dirty_records_rebuild_the_same_state() {
        let mut a = ClusterState::default();
        let mut b = ClusterState::default();
        for c in commands() {
            a.apply(&c);
            for (t, k, v) in a.take_dirty().unwrap() {
                if let Some(v) = v {
                    b.load_record(t, k, &v).unwrap();
                }
            }
        }
        b.finish_load();
        assert_eq!(a, b);
        assert_eq!(
            b.find_job("default", "d").unwrap().id,
            "j-1",
            "indexes are rebuilt on load"
        );
        assert_eq!(b.history_of("j-1").len(), a.history_of("j-1").len());
        let snap = ClusterState::from_snapshot(&a.to_snapshot().unwrap()).unwrap();
        assert_eq!(snap, a);
    }

    /// The label index follows registrations, label changes, deletions and reloads.
    #[test]
    fn the_label_index_follows_each_nodes_labels_through_changes_and_reloads() {
        use crate::view::StateView;
        let mut s = ClusterState::default();
        let register = |s: &mut ClusterState, id: &str, zone: &str| {
            let mut info = crate::node::NodeInfo {
                node_id: id.into(),
                node_type: "Compute".into(),
                ..Default::default()
            };
            info.labels.insert("zone".into(), zone.into());
            s.apply(&Command::RegisterNode { info, now: 1 });
        };
        let zone = |s: &ClusterState, z: &[&str]| -> Vec<String> {
            let values: Vec<String> = z.iter().map(|v| v.to_string()).collect();
            s.nodes_labelled("zone", &values)
                .unwrap()
                .iter()
                .map(|id| id.to_string())
                .collect()
        };
        register(&mut s, "n-2", "a");
        register(&mut s, "n-1", "a");
        register(&mut s, "n-3", "b");
        assert_eq!(zone(&s, &["a"]), ["n-1", "n-2"]);
        assert_eq!(
            zone(&s, &["b", "a"]),
            ["n-1", "n-2", "n-3"],
            "by value, each value's nodes in id order"
        );
        assert_eq!(
            zone(&s, &["b", "a", "b"]),
            ["n-1", "n-2", "n-3"],
            "each id once"
        );
        register(&mut s, "n-2", "b");
        assert_eq!(zone(&s, &["a"]), ["n-1"]);
        assert_eq!(zone(&s, &["b"]), ["n-2", "n-3"]);
        s.apply(&Command::DeleteNode {
            node_id: "n-3".into(),
            message: String::new(),
            evaluation_ids: vec![],
            now: 2,
        });
        assert_eq!(zone(&s, &["b"]), ["n-2"]);
        assert!(zone(&s, &["c"]).is_empty());
        assert!(
            s.nodes_labelled("region", &["eu".into()])
                .unwrap()
                .is_empty()
        );
        let reloaded = ClusterState::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
        assert_eq!(zone(&reloaded, &["a", "b"]), ["n-1", "n-2"]);
    }

    #[test]
    fn a_nodes_live_executions_are_those_not_yet_terminal_also_after_a_reload() {
        let mut s = ClusterState::default();
        let live = |s: &ClusterState| -> Vec<String> {
            s.live_executions_on("n-1")
                .iter()
                .map(|e| e.id.clone())
                .collect()
        };
        let cmds = commands();
        for c in &cmds[..4] {
            s.apply(c);
        }
        assert_eq!(live(&s), ["e-1"], "placed, then running: live");
        let reloaded = ClusterState::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
        assert_eq!(live(&reloaded), ["e-1"]);
        s.apply(&cmds[4]);
        assert!(live(&s).is_empty(), "completed: no longer live");
        let reloaded = ClusterState::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
        assert!(live(&reloaded).is_empty());
        assert_eq!(
            reloaded.executions_of("j-1").len(),
            1,
            "still in the job's history"
        );
    }

    fn token(id: &str, expires_at: i64, node_id: &str) -> Command {
        Command::CreateJoinToken {
            token: crate::security::JoinToken {
                id: id.into(),
                secret_sha256: "a".repeat(64),
                created_at: 0,
                expires_at,
                labels: [("zone".to_string(), "edge".to_string())].into(),
                node_id: node_id.into(),
                ..Default::default()
            },
        }
    }

    fn consume(id: &str, secret: &str, node: &str, now: i64) -> CommandResponse {
        let mut s = ClusterState::default();
        s.apply(&token("t1", 100, ""));
        s.apply(&token("t2", 100, "edge-z"));
        s.apply(&Command::RegisterNode {
            info: NodeInfo {
                node_id: "edge-old".into(),
                ..Default::default()
            },
            now: 0,
        });
        s.apply(&Command::ConsumeJoinToken {
            token_id: id.into(),
            secret_sha256: secret.into(),
            node_id: node.into(),
            now,
        })
    }

    fn refusal(r: CommandResponse) -> String {
        match r {
            CommandResponse::Rejected { message, .. } => message,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn a_join_token_is_consumed_once_within_its_life_by_its_node_with_its_secret() {
        let a = "a".repeat(64);
        assert!(
            matches!(consume("t1", &a, "edge-1", 50), CommandResponse::TokenAccepted { labels } if labels["zone"] == "edge")
        );
        assert!(refusal(consume("t1", &"b".repeat(64), "edge-1", 50)).contains("does not match"));
        assert!(refusal(consume("t1", &a, "edge-1", 100)).contains("expired"));
        assert!(refusal(consume("t9", &a, "edge-1", 50)).contains("not known"));
        assert!(refusal(consume("t2", &a, "edge-1", 50)).contains("is for node edge-z"));
        assert!(refusal(consume("t1", &a, "edge-old", 50)).contains("already registered"));
        let mut s = ClusterState::default();
        s.apply(&token("t1", 100, ""));
        let use_it = |s: &mut ClusterState, node: &str| {
            s.apply(&Command::ConsumeJoinToken {
                token_id: "t1".into(),
                secret_sha256: a.clone(),
                node_id: node.into(),
                now: 10,
            })
        };
        assert!(matches!(
            use_it(&mut s, "edge-1"),
            CommandResponse::TokenAccepted { .. }
        ));
        assert!(refusal(use_it(&mut s, "edge-2")).contains("already used (by edge-1"));
    }

    fn registered(
        s: &mut ClusterState,
        id: &str,
        fingerprint: &str,
        pending: bool,
    ) -> CommandResponse {
        s.apply(&Command::RegisterNodeWith {
            info: NodeInfo {
                node_id: id.into(),
                node_type: "Compute".into(),
                ..Default::default()
            },
            now: 1,
            pending,
            fingerprint: fingerprint.into(),
        })
    }

    #[test]
    fn manual_approval_rejection_and_deletion_decide_who_may_connect() {
        let mut s = ClusterState::default();
        assert_eq!(registered(&mut s, "n-1", "f1", true), CommandResponse::Ok);
        assert_eq!(s.nodes["n-1"].membership, NodeMembership::Pending);
        assert!(
            !s.nodes["n-1"].is_schedulable(),
            "a pending node is never scheduled"
        );
        let member = |s: &mut ClusterState, m| {
            s.apply(&Command::SetNodeMembership {
                node_id: "n-1".into(),
                membership: m,
                message: "why".into(),
                evaluation_ids: vec![],
                now: 2,
            })
        };
        assert_eq!(
            member(&mut s, NodeMembership::Approved),
            CommandResponse::Ok
        );
        assert!(s.nodes["n-1"].is_schedulable());
        assert!(refusal(member(&mut s, NodeMembership::Approved)).contains("already APPROVED"));
        assert_eq!(
            member(&mut s, NodeMembership::Rejected),
            CommandResponse::Ok
        );
        assert!(
            s.security.denial("n-1", "any-cert").is_some(),
            "a rejected id is denied whatever its certificate"
        );
        assert!(refusal(registered(&mut s, "n-1", "f2", false)).contains("rejected"));
        assert_eq!(
            member(&mut s, NodeMembership::Approved),
            CommandResponse::Ok
        );
        assert!(
            s.security.denial("n-1", "f1").is_none(),
            "approval lifts the rejection"
        );
        // Deleting revokes every certificate the node used; a new certificate may join again.
        assert_eq!(registered(&mut s, "n-1", "f3", false), CommandResponse::Ok);
        s.apply(&Command::DeleteNode {
            node_id: "n-1".into(),
            message: "retired".into(),
            evaluation_ids: vec![],
            now: 3,
        });
        assert!(!s.nodes.contains_key("n-1"));
        for fp in ["f1", "f3"] {
            assert!(
                s.security
                    .denial("n-1", fp)
                    .is_some_and(|d| d.reason.contains("retired")),
                "{fp}"
            );
        }
        assert!(refusal(registered(&mut s, "n-1", "f1", false)).contains("may not connect"));
        assert_eq!(registered(&mut s, "n-1", "f4", false), CommandResponse::Ok);
        // One certificate revoked by hand.
        s.apply(&Command::DenyCertificate {
            fingerprint: "f4".into(),
            node_id: "n-1".into(),
            reason: "stolen".into(),
            now: 4,
        });
        assert!(refusal(registered(&mut s, "n-1", "f4", false)).contains("stolen"));
        // All of it survives the records and the snapshot.
        let snap = ClusterState::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
        assert_eq!(snap.security, s.security);
    }
}
