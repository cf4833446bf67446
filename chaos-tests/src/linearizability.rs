//! A linearizability checker for histories recorded by clients of a Caravel cluster, in the style
//! of porcupine: the Wing & Gong search with Lowe's memoization of (linearized set, state) pairs,
//! run separately on each partition of the history (one per key), since operations on different
//! keys never constrain each other.
//!
//! ```text
//!  clients ──▶ Recorder (invoke / return timestamps from one Instant)
//!                 │ history: Vec<Operation<Input, Output>>
//!                 ▼
//!  check(history, &model, timeout)
//!     ├─ partition by Model::partition_key
//!     ├─ per partition: search for an order that respects real time and Model::step
//!     └─ Illegal ─▶ shrink the failing partition to a locally minimal failing set of operations
//! ```
//!
//! An operation whose outcome is unknown (a timeout, a broken connection) may have taken effect at
//! any time after its invocation, or never: it returns at +∞, its output is not checked
//! (`Model::step` gets `None`), and it need not be placed at all.
//!
//! [`JobStore`] is the model of Caravel's job store; [`Model`] is generic enough for others.
//! Depends on no crate of ours.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A sequential specification.
pub trait Model {
    /// What partitions the history (a job name, a register's name). `()` for no partitioning.
    type Key: Clone + Eq + Hash + fmt::Debug;
    type State: Clone + Eq + Hash + fmt::Debug;
    type Input: Clone + fmt::Debug;
    type Output: Clone + fmt::Debug;

    /// The state before any operation, the same for every partition.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state` if that can produce `output`: the new state, or `None` if the
    /// output is impossible in this state. `output` is `None` for an operation whose outcome is
    /// unknown: apply the input as if it succeeded, whatever it would have returned.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// The partition an operation belongs to. Operations in different partitions must commute.
    fn partition_key(&self, input: &Self::Input) -> Self::Key;
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// The client got an answer at `at` (nanoseconds, same clock as the invocation).
    Returned { at: u64, output: O },
    /// No answer (timeout, connection error): it may or may not have taken effect.
    Unknown,
}

/// One client operation: what it asked, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Who issued it (for the explanation only).
    pub client: u64,
    pub input: I,
    /// When it was invoked, nanoseconds since the recorder's start.
    pub invoke: u64,
    pub outcome: Outcome<O>,
}

impl<I, O> Operation<I, O> {
    pub fn returned(client: u64, input: I, invoke: u64, at: u64, output: O) -> Self {
        Operation {
            client,
            input,
            invoke,
            outcome: Outcome::Returned { at, output },
        }
    }

    pub fn unknown(client: u64, input: I, invoke: u64) -> Self {
        Operation {
            client,
            input,
            invoke,
            outcome: Outcome::Unknown,
        }
    }

    /// When it returned; `u64::MAX` (+∞) if unknown. A return before the invocation (a recorder
    /// bug) is read as a return at the invocation.
    fn returned_at(&self) -> u64 {
        match &self.outcome {
            Outcome::Returned { at, .. } => (*at).max(self.invoke),
            Outcome::Unknown => u64::MAX,
        }
    }

    fn output(&self) -> Option<&O> {
        match &self.outcome {
            Outcome::Returned { output, .. } => Some(output),
            Outcome::Unknown => None,
        }
    }
}

impl<I: fmt::Debug, O: fmt::Debug> fmt::Display for Operation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Returned { at, output } => write!(
                f,
                "client {} {:?} -> {:?}   [{} ns, {} ns]",
                self.client, self.input, output, self.invoke, at
            ),
            Outcome::Unknown => write!(
                f,
                "client {} {:?} -> unknown   [{} ns, ∞)",
                self.client, self.input, self.invoke
            ),
        }
    }
}

/// The operations of a model's history.
pub type OperationOf<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

/// The verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckResult<I, O> {
    /// Some order of the operations respects both real time and the model.
    Ok,
    /// None does; the explanation names the partition and a small failing set of operations.
    Illegal { explanation: Box<Explanation<I, O>> },
    /// The search ran out of time without finding a violation.
    Timeout,
}

impl<I, O> CheckResult<I, O> {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal { .. })
    }
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation<I, O> {
    /// The failing partition's key, as `Debug` prints it.
    pub key: String,
    /// How many operations that partition has.
    pub partition_len: usize,
    /// A failing subset of the partition from which no operation can be removed without the rest
    /// becoming linearizable (unless the time ran out while shrinking), by invocation time.
    pub ops: Vec<Operation<I, O>>,
    /// The longest order of `ops` the search could build, as indices into `ops` ...
    pub longest_prefix: Vec<usize>,
    /// ... the state it reached (`Debug`) ...
    pub state: String,
    /// ... and the operations (indices into `ops`) that could have come next by real time but
    /// that the model refused in that state.
    pub refused: Vec<usize>,
}

impl<I: fmt::Debug, O: fmt::Debug> fmt::Display for Explanation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "not linearizable: key {} ({} of its {} operations suffice):",
            self.key,
            self.ops.len(),
            self.partition_len
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  #{i} {op}")?;
        }
        let prefix: Vec<String> = self
            .longest_prefix
            .iter()
            .map(|i| format!("#{i}"))
            .collect();
        writeln!(
            f,
            "longest linearizable order: [{}] reaching state {}",
            prefix.join(", "),
            self.state
        )?;
        let refused: Vec<String> = self.refused.iter().map(|i| format!("#{i}")).collect();
        write!(
            f,
            "none of the operations that could come next is possible in that state: [{}]",
            refused.join(", ")
        )
    }
}

/// Checks `history` against `model` within `timeout` (for the whole check, shrinking included).
pub fn check<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    model: &M,
    timeout: Duration,
) -> CheckResult<M::Input, M::Output> {
    let deadline = Instant::now() + timeout;
    let mut keys: Vec<M::Key> = Vec::new();
    let mut partitions: HashMap<M::Key, Vec<OperationOf<M>>> = HashMap::new();
    for op in history {
        let key = model.partition_key(&op.input);
        partitions
            .entry(key.clone())
            .or_insert_with(|| {
                keys.push(key);
                Vec::new()
            })
            .push(op.clone());
    }
    let mut timed_out = false;
    for key in keys {
        let ops = &partitions[&key];
        match search(ops, model, deadline) {
            Search::Linearizable => {}
            Search::Timeout => timed_out = true,
            Search::Illegal(_) => {
                return CheckResult::Illegal {
                    explanation: Box::new(explain(&key, ops, model, deadline)),
                };
            }
        }
    }
    if timed_out {
        CheckResult::Timeout
    } else {
        CheckResult::Ok
    }
}

/// Shrinks a failing partition greedily (drop one operation at a time while it still fails) and
/// explains what is left.
fn explain<M: Model>(
    key: &M::Key,
    ops: &[Operation<M::Input, M::Output>],
    model: &M,
    deadline: Instant,
) -> Explanation<M::Input, M::Output> {
    let mut kept: Vec<Operation<M::Input, M::Output>> = ops.to_vec();
    kept.sort_by_key(|op| (op.invoke, op.returned_at()));
    let mut i = kept.len();
    while i > 0 && Instant::now() < deadline {
        i -= 1;
        let mut without = kept.clone();
        without.remove(i);
        if matches!(search(&without, model, deadline), Search::Illegal(_)) {
            kept = without;
        }
    }
    // The final search has no deadline: `kept` is known to fail, and failing is all it needs.
    let far = Instant::now() + Duration::from_secs(3600);
    let (longest_prefix, state) = match search(&kept, model, far) {
        Search::Illegal(best) => best,
        // Not reachable for a failing set; keep the explanation honest anyway.
        Search::Linearizable | Search::Timeout => (Vec::new(), model.init()),
    };
    let placed: HashSet<usize> = longest_prefix.iter().copied().collect();
    let open: Vec<usize> = (0..kept.len()).filter(|i| !placed.contains(i)).collect();
    let first_return = open
        .iter()
        .map(|&i| kept[i].returned_at())
        .min()
        .unwrap_or(u64::MAX);
    let refused = open
        .into_iter()
        .filter(|&i| kept[i].invoke <= first_return)
        .filter(|&i| {
            model
                .step(&state, &kept[i].input, kept[i].output())
                .is_none()
        })
        .collect();
    Explanation {
        key: format!("{key:?}"),
        partition_len: ops.len(),
        ops: kept,
        longest_prefix,
        state: format!("{state:?}"),
        refused,
    }
}

enum Search<S> {
    Linearizable,
    /// With the longest order found (indices into the ops) and the state after it.
    Illegal((Vec<usize>, S)),
    Timeout,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

const NIL: usize = usize::MAX;
/// Check the clock every this many steps.
const CLOCK_EVERY: u64 = 1024;

/// Wing & Gong with memoization over one partition.
fn search<M: Model>(
    ops: &[Operation<M::Input, M::Output>],
    model: &M,
    deadline: Instant,
) -> Search<M::State> {
    let n = ops.len();
    // Entries: one call and one return per operation, by time; at equal times calls come first,
    // so operations that merely touch count as concurrent (the lenient reading).
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        entries.push((op.invoke, false, i));
        entries.push((op.returned_at(), true, i));
    }
    entries.sort_unstable();
    // A doubly linked list over nodes 1..=2n; node 0 is the head.
    let nodes = 2 * n + 1;
    let mut next = vec![NIL; nodes];
    let mut prev = vec![NIL; nodes];
    let mut op_of = vec![0usize; nodes];
    let mut is_call = vec![false; nodes];
    let mut return_node = vec![0usize; n];
    for (k, &(_, is_return, i)) in entries.iter().enumerate() {
        let node = k + 1;
        prev[node] = k;
        next[k] = node;
        op_of[node] = i;
        is_call[node] = !is_return;
        if is_return {
            return_node[i] = node;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        next[prev[call]] = next[call];
        prev[next[call]] = prev[call];
        next[prev[ret]] = next[ret];
        if next[ret] != NIL {
            prev[next[ret]] = prev[ret];
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        next[prev[ret]] = ret;
        if next[ret] != NIL {
            prev[next[ret]] = ret;
        }
        next[prev[call]] = call;
        prev[next[call]] = call;
    };

    let mut remaining_known = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Returned { .. }))
        .count();
    let mut state = model.init();
    let mut linearized = Bitset::new(n);
    let mut seen: HashSet<(Bitset, M::State)> = HashSet::new();
    let mut calls: Vec<(usize, M::State)> = Vec::new();
    let mut best: (Vec<usize>, M::State) = (Vec::new(), state.clone());
    let mut entry = next[0];
    let mut steps = 0u64;
    loop {
        // Operations with unknown outcomes need not be placed: once every answered operation is,
        // the rest may simply never have happened.
        if remaining_known == 0 {
            return Search::Linearizable;
        }
        if steps.is_multiple_of(CLOCK_EVERY) && Instant::now() >= deadline {
            return Search::Timeout;
        }
        steps += 1;
        debug_assert!(entry != NIL, "the list always ends with a return");
        let i = op_of[entry];
        if is_call[entry] {
            let op = &ops[i];
            if let Some(after) = model.step(&state, &op.input, op.output()) {
                let mut with = linearized.clone();
                with.set(i);
                if seen.insert((with.clone(), after.clone())) {
                    calls.push((entry, std::mem::replace(&mut state, after)));
                    linearized = with;
                    lift(&mut next, &mut prev, entry, return_node[i]);
                    if matches!(op.outcome, Outcome::Returned { .. }) {
                        remaining_known -= 1;
                    }
                    if calls.len() > best.0.len() {
                        best = (
                            calls.iter().map(|&(c, _)| op_of[c]).collect(),
                            state.clone(),
                        );
                    }
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // An operation returned before we could place it: undo the last placement.
            let Some((call, before)) = calls.pop() else {
                return Search::Illegal(best);
            };
            let j = op_of[call];
            state = before;
            linearized.clear(j);
            unlift(&mut next, &mut prev, call, return_node[j]);
            if matches!(ops[j].outcome, Outcome::Returned { .. }) {
                remaining_known += 1;
            }
            entry = next[call];
        }
    }
}

/// Records operations as clients perform them, timestamped from one shared [`Instant`]. Cheap to
/// clone; every clone appends to the same history.
#[derive(Debug)]
pub struct Recorder<I, O> {
    start: Instant,
    ops: Arc<Mutex<Vec<Operation<I, O>>>>,
}

impl<I, O> Clone for Recorder<I, O> {
    fn clone(&self) -> Self {
        Recorder {
            start: self.start,
            ops: self.ops.clone(),
        }
    }
}

impl<I, O> Default for Recorder<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> Recorder<I, O> {
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Nanoseconds since the recorder was made.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Call just before sending the request; finish the returned invocation when the answer (or
    /// the lack of one) is known.
    pub fn invoke(&self, client: u64, input: I) -> Invocation<I, O> {
        Invocation {
            recorder: self.clone(),
            client,
            input,
            invoke: self.now(),
        }
    }

    pub fn record(&self, op: Operation<I, O>) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// The history so far.
    pub fn history(&self) -> Vec<Operation<I, O>>
    where
        I: Clone,
        O: Clone,
    {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An operation in progress.
#[derive(Debug)]
#[must_use = "finish it with returned() or unknown(), or it is not recorded"]
pub struct Invocation<I, O> {
    recorder: Recorder<I, O>,
    client: u64,
    input: I,
    invoke: u64,
}

impl<I, O> Invocation<I, O> {
    /// The client got `output`.
    pub fn returned(self, output: O) -> Operation<I, O>
    where
        I: Clone,
        O: Clone,
    {
        let op = Operation::returned(
            self.client,
            self.input,
            self.invoke,
            self.recorder.now(),
            output,
        );
        self.recorder.record(op.clone());
        op
    }

    /// The client got no answer it can trust (timeout, connection error).
    pub fn unknown(self)
    where
        I: Clone,
        O: Clone,
    {
        self.recorder
            .record(Operation::unknown(self.client, self.input, self.invoke));
    }
}

// --- Caravel's job store ------------------------------------------------------------------------

/// The sequential specification of Caravel's job store as clients see it, per job name:
///
/// - `Submit{key}` of a name that does not exist creates the job at version 1 with an id the
///   server chooses; of a name that exists, creates the next version under the **same job id**
///   (Bacalhau's rule), so it returns that id. `Failed` means the request was refused and
///   definitely not applied (validation, "no changes detected"): allowed in any state, changes
///   nothing. An unknown outcome applies the submit with an id nobody has seen yet; the first
///   read that returns one fixes it.
/// - `Get{key}` returns `Found{job_id, version}` of the latest version, or `NotFound`.
/// - `Stop{key}` of an existing job returns `Stopped` (stopping a stopped job too: Caravel answers
///   it without error), of a missing one `NotFound`; `Failed` (refused, e.g. the job had already
///   completed) is allowed in any state. Stopping changes no version, and a job is never deleted.
///
/// A harness must record an error as `Failed` only when the request definitely did not commit
/// (the server refused it before proposing it); anything else (timeouts, lost leadership,
/// connection errors) is an unknown outcome.
#[derive(Clone, Copy, Debug, Default)]
pub struct JobStore;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JobInput {
    Submit { key: String },
    Get { key: String },
    Stop { key: String },
}

impl JobInput {
    pub fn key(&self) -> &str {
        match self {
            JobInput::Submit { key } | JobInput::Get { key } | JobInput::Stop { key } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JobOutput {
    /// Submit: accepted, under this id.
    Submitted { job_id: String },
    /// Get: the latest version.
    Found { job_id: String, version: u64 },
    /// Get or Stop: no job by that name.
    NotFound,
    /// Stop: accepted.
    Stopped,
    /// Submit or Stop: refused, definitely not applied.
    Failed,
}

/// One name's record in the model. `job_id` is `None` while the only submits that could have
/// created the job had unknown outcomes and no read has revealed the id yet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobRecord {
    pub job_id: Option<String>,
    pub version: u64,
}

/// A history of job-store operations.
pub type JobOperation = Operation<JobInput, JobOutput>;

impl Model for JobStore {
    type Key = String;
    type State = Option<JobRecord>;
    type Input = JobInput;
    type Output = JobOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &JobInput,
        output: Option<&JobOutput>,
    ) -> Option<Self::State> {
        use JobOutput as Out;
        match (input, output) {
            (JobInput::Submit { .. } | JobInput::Stop { .. }, Some(Out::Failed)) => {
                Some(state.clone())
            }
            (JobInput::Submit { .. }, None) => Some(Some(match state {
                None => JobRecord {
                    job_id: None,
                    version: 1,
                },
                Some(r) => JobRecord {
                    job_id: r.job_id.clone(),
                    version: r.version + 1,
                },
            })),
            (JobInput::Submit { .. }, Some(Out::Submitted { job_id })) => match state {
                None => Some(Some(JobRecord {
                    job_id: Some(job_id.clone()),
                    version: 1,
                })),
                Some(r) if r.job_id.as_ref().is_none_or(|id| id == job_id) => {
                    Some(Some(JobRecord {
                        job_id: Some(job_id.clone()),
                        version: r.version + 1,
                    }))
                }
                Some(_) => None,
            },
            (JobInput::Get { .. } | JobInput::Stop { .. }, None) => Some(state.clone()),
            (JobInput::Get { .. }, Some(Out::Found { job_id, version })) => match state {
                Some(r)
                    if r.version == *version && r.job_id.as_ref().is_none_or(|id| id == job_id) =>
                {
                    Some(Some(JobRecord {
                        job_id: Some(job_id.clone()),
                        version: r.version,
                    }))
                }
                _ => None,
            },
            (JobInput::Get { .. } | JobInput::Stop { .. }, Some(Out::NotFound)) => {
                state.is_none().then_some(None)
            }
            (JobInput::Stop { .. }, Some(Out::Stopped)) => state.is_some().then(|| state.clone()),
            // An output the input cannot produce (a recorder bug) fits no state.
            _ => None,
        }
    }

    fn partition_key(&self, input: &JobInput) -> String {
        input.key().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(30);

    fn submit(key: &str) -> JobInput {
        JobInput::Submit { key: key.into() }
    }
    fn get(key: &str) -> JobInput {
        JobInput::Get { key: key.into() }
    }
    fn stop(key: &str) -> JobInput {
        JobInput::Stop { key: key.into() }
    }
    fn submitted(id: &str) -> JobOutput {
        JobOutput::Submitted { job_id: id.into() }
    }
    fn found(id: &str, version: u64) -> JobOutput {
        JobOutput::Found {
            job_id: id.into(),
            version,
        }
    }
    fn op(client: u64, input: JobInput, span: (u64, u64), output: JobOutput) -> JobOperation {
        Operation::returned(client, input, span.0, span.1, output)
    }

    fn verdict(history: &[JobOperation]) -> CheckResult<JobInput, JobOutput> {
        check(history, &JobStore, PATIENCE)
    }

    fn explanation(history: &[JobOperation]) -> Explanation<JobInput, JobOutput> {
        match verdict(history) {
            CheckResult::Illegal { explanation } => *explanation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn reads_overlapping_a_submit_may_see_before_or_after_it() {
        let history = [
            op(1, submit("a"), (0, 100), submitted("j1")),
            op(2, get("a"), (10, 50), JobOutput::NotFound),
            op(3, get("a"), (20, 120), found("j1", 1)),
            op(2, get("a"), (60, 90), found("j1", 1)),
        ];
        assert!(verdict(&history).is_ok());
    }

    #[test]
    fn concurrent_resubmits_share_the_job_id_and_bump_the_version() {
        let history = [
            op(1, submit("a"), (0, 10), submitted("j1")),
            op(1, submit("a"), (20, 60), submitted("j1")),
            op(2, submit("a"), (25, 70), submitted("j1")),
            op(3, get("a"), (30, 40), found("j1", 2)),
            op(3, get("a"), (80, 90), found("j1", 3)),
            op(2, stop("a"), (80, 95), JobOutput::Stopped),
        ];
        assert!(verdict(&history).is_ok());
    }

    #[test]
    fn a_read_of_a_job_never_submitted_is_illegal() {
        let history = [
            op(1, submit("a"), (0, 10), submitted("j1")),
            op(2, get("a"), (20, 30), found("ghost", 1)),
        ];
        let e = explanation(&history);
        assert_eq!(e.key, "\"a\"");
        assert_eq!(e.refused.len(), 1);
        assert_eq!(e.ops[e.refused[0]].input, get("a"));
    }

    #[test]
    fn a_stale_read_after_a_completed_resubmit_is_illegal() {
        let history = [
            op(1, submit("a"), (0, 10), submitted("j1")),
            op(1, submit("a"), (20, 30), submitted("j1")),
            op(2, get("a"), (40, 50), found("j1", 1)),
        ];
        assert!(verdict(&history).is_illegal());
    }

    #[test]
    fn losing_an_acknowledged_submit_is_illegal() {
        let history = [
            op(1, submit("a"), (0, 10), submitted("j1")),
            op(2, get("a"), (20, 30), JobOutput::NotFound),
        ];
        assert!(verdict(&history).is_illegal());
    }

    #[test]
    fn a_resubmit_under_a_new_id_is_illegal() {
        let history = [
            op(1, submit("a"), (0, 10), submitted("j1")),
            op(2, submit("a"), (20, 30), submitted("j2")),
        ];
        assert!(verdict(&history).is_illegal());
    }

    #[test]
    fn a_failed_submit_never_takes_effect() {
        let history = [
            op(1, submit("a"), (0, 10), JobOutput::Failed),
            op(2, get("a"), (5, 30), found("j1", 1)),
        ];
        assert!(verdict(&history).is_illegal());
    }

    #[test]
    fn an_unknown_submit_may_take_effect_later_and_reveal_its_id_then() {
        let history = [
            Operation::unknown(1, submit("a"), 0),
            op(2, get("a"), (10, 20), JobOutput::NotFound),
            op(2, get("a"), (30, 40), found("j9", 1)),
            op(3, submit("a"), (50, 60), submitted("j9")),
            op(2, get("a"), (70, 80), found("j9", 2)),
        ];
        assert!(verdict(&history).is_ok());
    }

    #[test]
    fn an_unknown_submit_may_never_take_effect() {
        let history = [
            Operation::unknown(1, submit("a"), 0),
            Operation::unknown(1, stop("a"), 5),
            op(2, get("a"), (10, 20), JobOutput::NotFound),
            op(2, stop("a"), (30, 40), JobOutput::NotFound),
        ];
        assert!(verdict(&history).is_ok());
    }

    #[test]
    fn an_unknown_submit_cannot_be_undone() {
        let history = [
            Operation::unknown(1, submit("a"), 0),
            op(2, get("a"), (10, 20), found("j9", 1)),
            op(2, get("a"), (30, 40), JobOutput::NotFound),
        ];
        assert!(verdict(&history).is_illegal());
    }

    #[test]
    fn an_unknown_submit_counts_towards_the_version_once_at_most() {
        let history = [
            op(1, submit("a"), (0, 10), submitted("j1")),
            Operation::unknown(1, submit("a"), 20),
            op(2, get("a"), (30, 40), found("j1", 2)),
            op(2, get("a"), (50, 60), found("j1", 3)),
        ];
        assert!(verdict(&history).is_illegal());
    }

    #[test]
    fn the_violation_is_reported_for_its_key_with_only_the_operations_that_matter() {
        let mut history = vec![
            op(1, submit("a"), (0, 10), submitted("ja")),
            op(2, get("a"), (20, 30), found("ja", 1)),
        ];
        for i in 0..10 {
            history.push(op(3, get("b"), (i * 10, i * 10 + 5), JobOutput::NotFound));
        }
        history.push(op(4, submit("b"), (200, 210), submitted("jb")));
        history.push(op(4, get("b"), (220, 230), found("jb", 1)));
        history.push(op(5, get("b"), (240, 250), JobOutput::NotFound));
        let e = explanation(&history);
        assert_eq!(e.key, "\"b\"");
        assert_eq!(e.partition_len, 13);
        // A submit acknowledged and then lost: the two operations alone fail.
        assert_eq!(e.ops.len(), 2, "{e}");
        assert_eq!(e.ops[0].input, submit("b"));
        assert_eq!(e.ops[1].output(), Some(&JobOutput::NotFound));
        let text = e.to_string();
        assert!(text.contains("key \"b\""), "{text}");
    }

    #[test]
    fn a_check_without_time_reports_a_timeout_not_a_verdict() {
        let history = [op(1, submit("a"), (0, 10), submitted("j1"))];
        assert_eq!(
            check(&history, &JobStore, Duration::ZERO),
            CheckResult::Timeout
        );
    }

    #[test]
    fn the_recorder_timestamps_from_one_clock() {
        let rec: Recorder<JobInput, JobOutput> = Recorder::new();
        let first = rec.invoke(1, submit("a")).returned(submitted("j1"));
        rec.invoke(2, get("a")).unknown();
        let history = rec.history();
        assert_eq!(history.len(), 2);
        assert!(history[1].invoke >= first.returned_at());
        assert_eq!(history[1].outcome, Outcome::Unknown);
        assert!(verdict(&history).is_ok());
    }

    /// A register with compare-and-set, to show the checker is not tied to the job store.
    struct Cas;
    #[derive(Clone, Debug)]
    enum CasInput {
        Write(u8),
        Cas(u8, u8),
        Read,
    }
    impl Model for Cas {
        type Key = ();
        type State = u8;
        type Input = CasInput;
        type Output = Option<u8>;
        fn init(&self) -> u8 {
            0
        }
        fn step(&self, s: &u8, input: &CasInput, out: Option<&Option<u8>>) -> Option<u8> {
            match (input, out) {
                (CasInput::Write(v), _) => Some(*v),
                (CasInput::Cas(from, to), None) => Some(if s == from { *to } else { *s }),
                (CasInput::Cas(from, to), Some(Some(1))) => (s == from).then_some(*to),
                (CasInput::Cas(from, _), Some(_)) => (s != from).then_some(*s),
                (CasInput::Read, None) => Some(*s),
                (CasInput::Read, Some(v)) => (*v == Some(*s)).then_some(*s),
            }
        }
        fn partition_key(&self, _: &CasInput) {}
    }

    #[test]
    fn the_checker_works_for_other_models() {
        let ok = [
            Operation::returned(1, CasInput::Write(1), 0, 10, None),
            Operation::returned(1, CasInput::Cas(1, 2), 20, 40, Some(1)),
            Operation::returned(2, CasInput::Cas(1, 3), 25, 45, Some(0)),
            Operation::returned(3, CasInput::Read, 50, 60, Some(2)),
        ];
        assert!(check(&ok, &Cas, PATIENCE).is_ok());
        let both_won = [
            Operation::returned(1, CasInput::Write(1), 0, 10, None),
            Operation::returned(1, CasInput::Cas(1, 2), 20, 40, Some(1)),
            Operation::returned(2, CasInput::Cas(1, 3), 25, 45, Some(1)),
        ];
        assert!(check(&both_won, &Cas, PATIENCE).is_illegal());
    }

    /// SplitMix64, for the generated histories.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A plain sequential job store, written independently of the model.
    #[derive(Default)]
    struct RealStore {
        jobs: HashMap<String, (String, u64)>,
        ids: u64,
    }
    impl RealStore {
        fn apply(&mut self, input: &JobInput) -> JobOutput {
            match input {
                JobInput::Submit { key } => {
                    let ids = &mut self.ids;
                    let job = self.jobs.entry(key.clone()).or_insert_with(|| {
                        *ids += 1;
                        (format!("job-{ids}"), 0)
                    });
                    job.1 += 1;
                    submitted(&job.0)
                }
                JobInput::Get { key } => match self.jobs.get(key) {
                    Some((id, v)) => found(id, *v),
                    None => JobOutput::NotFound,
                },
                JobInput::Stop { key } => {
                    if self.jobs.contains_key(key) {
                        JobOutput::Stopped
                    } else {
                        JobOutput::NotFound
                    }
                }
            }
        }
    }

    enum Fate {
        Answered,
        Refused,
        AppliedButUnknown,
        LostBeforeApplied,
    }

    /// Clients issue operations one at a time; each takes effect at a random point inside its
    /// interval, in that order, on a real sequential store. Such a history is linearizable by
    /// construction.
    fn generated_history(seed: u64) -> Vec<JobOperation> {
        let mut rng = Rng(seed);
        let keys = ["a", "b", "c"];
        let keys = &keys[..1 + rng.below(3) as usize];
        let clients = 1 + rng.below(5);
        let mut planned = Vec::new();
        for client in 0..clients {
            let mut t = rng.below(50);
            for _ in 0..(5 + rng.below(20)) {
                let key = keys[rng.below(keys.len() as u64) as usize];
                let input = match rng.below(100) {
                    0..40 => submit(key),
                    40..85 => get(key),
                    _ => stop(key),
                };
                let invoke = t;
                let takes_effect = invoke + 1 + rng.below(100);
                let ret = takes_effect + 1 + rng.below(100);
                t = ret + rng.below(30);
                let fate = match rng.below(100) {
                    0..8 if !matches!(input, JobInput::Get { .. }) => Fate::Refused,
                    8..12 => Fate::AppliedButUnknown,
                    12..15 => Fate::LostBeforeApplied,
                    _ => Fate::Answered,
                };
                planned.push((takes_effect, client, input, invoke, ret, fate));
            }
        }
        planned.sort_by_key(|p| (p.0, p.1));
        let mut store = RealStore::default();
        planned
            .into_iter()
            .map(|(_, client, input, invoke, ret, fate)| match fate {
                Fate::Answered => {
                    let out = store.apply(&input);
                    Operation::returned(client, input, invoke, ret, out)
                }
                Fate::Refused => Operation::returned(client, input, invoke, ret, JobOutput::Failed),
                Fate::AppliedButUnknown => {
                    store.apply(&input);
                    Operation::unknown(client, input, invoke)
                }
                Fate::LostBeforeApplied => Operation::unknown(client, input, invoke),
            })
            .collect()
    }

    #[test]
    fn histories_of_a_real_sequential_store_with_random_overlaps_are_linearizable() {
        for seed in 0..300 {
            let history = generated_history(seed);
            let v = verdict(&history);
            assert!(v.is_ok(), "seed {seed}: {v:?}");
        }
    }

    #[test]
    fn a_version_nobody_could_have_written_is_always_caught() {
        let mut caught = 0;
        for seed in 0..300 {
            let mut history = generated_history(seed);
            let Some(read) = history.iter_mut().find(|op| {
                matches!(
                    op.outcome,
                    Outcome::Returned {
                        output: JobOutput::Found { .. },
                        ..
                    }
                )
            }) else {
                continue;
            };
            if let Outcome::Returned {
                output: JobOutput::Found { version, .. },
                ..
            } = &mut read.outcome
            {
                *version = 1_000;
            }
            assert!(verdict(&history).is_illegal(), "seed {seed}");
            caught += 1;
        }
        assert!(
            caught > 100,
            "only {caught} histories had a read to corrupt"
        );
    }
}
