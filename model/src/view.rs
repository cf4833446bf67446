//! `StateView`: the read side of the replicated state, all the scheduler may see.

use crate::evaluation::Evaluation;
use crate::execution::Execution;
use crate::node::NodeState;
use crate::spec::Job;

pub trait StateView {
    fn job(&self, id: &str) -> Option<&Job>;
    fn executions_of(&self, job_id: &str) -> Vec<&Execution>;
    fn nodes(&self) -> Vec<&NodeState>;
    /// One node, by id (a lookup, not a walk over [`Self::nodes`]).
    fn node(&self, id: &str) -> Option<&NodeState>;
    fn evaluation(&self, id: &str) -> Option<&Evaluation>;
    /// Live executions on a node (for capacity accounting).
    fn live_executions_on(&self, node_id: &str) -> Vec<&Execution>;
}
