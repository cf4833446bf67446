//! The outbox of execution reports: every state change gets the next per-node sequence number and
//! stays here until the orchestrator acknowledges it (after committing it through Raft). On a
//! reconnect the node replays [`Outbox::unacked_after`] the orchestrator's last committed number.
//!
//! In memory for now; the seam (`push` / `ack` / `unacked_after`) is what a durable version keeps.

use std::collections::BTreeMap;

use caravel_model::execution::ExecutionUpdate;

#[derive(Debug, Clone, Default)]
pub struct Outbox {
    last_seq: u64,
    acked: u64,
    pending: BTreeMap<u64, ExecutionUpdate>,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox::default()
    }

    /// An outbox whose numbering continues after `seq` (e.g. restored from disk).
    pub fn starting_after(seq: u64) -> Self {
        Outbox {
            last_seq: seq,
            acked: seq,
            pending: BTreeMap::new(),
        }
    }

    /// Queues a report; returns its sequence number (1, 2, 3, … per node).
    pub fn push(&mut self, update: ExecutionUpdate) -> u64 {
        self.last_seq += 1;
        self.pending.insert(self.last_seq, update);
        self.last_seq
    }

    /// Drops every report up to and including `seq`.
    pub fn ack(&mut self, seq: u64) {
        if seq <= self.acked {
            return;
        }
        self.acked = seq.min(self.last_seq);
        self.pending = self.pending.split_off(&(seq + 1));
    }

    /// The orchestrator's answer to `Hello`: it has committed every report up to `committed`. If that
    /// is beyond anything this outbox numbered, the node lost its outbox (a restart without a durable
    /// one): continue numbering after `committed`, renumbering what is pending, so no new report is
    /// mistaken for a duplicate. Otherwise it is a plain acknowledgement.
    pub fn rebase(&mut self, committed: u64) {
        if committed <= self.last_seq {
            self.ack(committed);
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.last_seq = committed;
        self.acked = committed;
        for (_, u) in pending {
            self.push(u);
        }
    }

    /// The reports after `seq` not yet acknowledged, in order.
    pub fn unacked_after(&self, seq: u64) -> Vec<(u64, ExecutionUpdate)> {
        self.pending
            .range(seq.saturating_add(1)..)
            .map(|(s, u)| (*s, u.clone()))
            .collect()
    }

    /// The number given to the last report pushed (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The highest acknowledged number.
    pub fn acked_seq(&self) -> u64 {
        self.acked
    }

    /// Reports not yet acknowledged.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravel_model::ExecutionStateType;

    fn upd(id: &str) -> ExecutionUpdate {
        ExecutionUpdate {
            execution_id: id.into(),
            state: ExecutionStateType::Running,
            message: String::new(),
            run_output: None,
            published_result: None,
            topic: String::new(),
            time: 0,
        }
    }

    #[test]
    fn a_node_that_lost_its_outbox_numbers_after_what_the_orchestrator_committed() {
        let mut o = Outbox::new();
        o.push(upd("a"));
        o.rebase(8);
        assert_eq!(
            o.unacked_after(o.acked_seq())
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            vec![9]
        );
        assert_eq!(o.push(upd("b")), 10);
    }

    #[test]
    fn a_normal_answer_is_an_acknowledgement() {
        let mut o = Outbox::new();
        o.push(upd("a"));
        o.push(upd("b"));
        o.rebase(1);
        assert_eq!(o.unacked_after(o.acked_seq()).len(), 1);
        assert_eq!(o.last_seq(), 2);
    }

    #[test]
    fn numbers_increase_and_acks_drop_prefixes() {
        let mut o = Outbox::new();
        assert_eq!(o.push(upd("a")), 1);
        assert_eq!(o.push(upd("b")), 2);
        assert_eq!(o.push(upd("c")), 3);
        assert_eq!(
            o.unacked_after(1)
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        o.ack(2);
        assert_eq!(o.len(), 1);
        assert_eq!(o.acked_seq(), 2);
        o.ack(1);
        assert_eq!(o.acked_seq(), 2, "an old ack changes nothing");
        assert_eq!(o.unacked_after(0)[0].1.execution_id, "c");
        o.ack(99);
        assert!(o.is_empty());
        assert_eq!(o.push(upd("d")), 4);
        let o = Outbox::starting_after(10);
        assert_eq!(o.last_seq(), 10);
    }
}
