//! Ids like Bacalhau's: `j-<uuid>` for jobs, `e-<uuid>` for executions, a bare uuid for evaluations,
//! `n-<uuid>` for generated node names. Short ids are the first 10 characters (`j-` + 8 hex), as
//! Bacalhau's CLI prints them.

pub const JOB_PREFIX: &str = "j-";
pub const EXECUTION_PREFIX: &str = "e-";
pub const NODE_PREFIX: &str = "n-";

pub fn new_job_id() -> String {
    format!("{JOB_PREFIX}{}", uuid::Uuid::new_v4())
}

pub fn new_execution_id() -> String {
    format!("{EXECUTION_PREFIX}{}", uuid::Uuid::new_v4())
}

pub fn new_evaluation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn new_node_id() -> String {
    format!("{NODE_PREFIX}{}", uuid::Uuid::new_v4())
}

/// The short form the CLI prints in tables.
pub fn short(id: &str) -> &str {
    let n = if id.starts_with(JOB_PREFIX)
        || id.starts_with(EXECUTION_PREFIX)
        || id.starts_with(NODE_PREFIX)
    {
        10
    } else {
        8
    };
    id.get(..n).unwrap_or(id)
}

/// Makes ids for the scheduler and the API; a trait so tests can make them deterministic.
pub trait IdGen {
    fn execution_id(&mut self) -> String;
    fn evaluation_id(&mut self) -> String;
}

/// Random uuids: what a real orchestrator uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdGen for RandomIds {
    fn execution_id(&mut self) -> String {
        new_execution_id()
    }
    fn evaluation_id(&mut self) -> String {
        new_evaluation_id()
    }
}

/// Sequential ids (`e-0000…01`), for tests and simulations that must be reproducible.
#[derive(Debug, Default, Clone)]
pub struct SequentialIds {
    pub next: u64,
}

impl IdGen for SequentialIds {
    fn execution_id(&mut self) -> String {
        self.next += 1;
        format!(
            "{EXECUTION_PREFIX}00000000-0000-4000-8000-{:012x}",
            self.next
        )
    }
    fn evaluation_id(&mut self) -> String {
        self.next += 1;
        format!("00000000-0000-4000-9000-{:012x}", self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_bacalhau_prefixes_and_short_forms() {
        let j = new_job_id();
        assert!(j.starts_with("j-") && j.len() == 38);
        assert_eq!(short(&j).len(), 10);
        assert!(new_execution_id().starts_with("e-"));
    }
}
