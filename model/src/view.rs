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
    /// The ids of the nodes whose label `key` has one of `values` (an index lookup: ids only, so
    /// that a caller that looks at a few of them does not look up all), value by value in order
    /// and each value's nodes in id order (the same order for the same state), or `None`
    /// when this view keeps no label index (the caller walks [`Self::nodes`]).
    fn nodes_labelled(&self, _key: &str, _values: &[String]) -> Option<Vec<&str>> {
        None
    }
    fn evaluation(&self, id: &str) -> Option<&Evaluation>;
    /// Live executions on a node (for capacity accounting).
    fn live_executions_on(&self, node_id: &str) -> Vec<&Execution>;
}
