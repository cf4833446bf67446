//! Caravel's shared model: everything the API, the CLI, the scheduler, the Raft state machine and the
//! compute node agree on.
//!
//! Owns: Bacalhau's job spec ([`spec`]) and its parsing ([`parse`]) and validation ([`validate`]),
//! ids ([`ids`]), states ([`states`]), executions, evaluations, nodes, history events, the replicated
//! [`command::Command`]s and the deterministic state machine that applies them ([`state`]), the
//! [`view::StateView`] read trait, the orchestrator/compute wire messages ([`wire`]), API bodies
//! ([`api`]), and the one binary codec ([`codec`]).
//!
//! Must not depend on tokio, openraft, quinn, rocksdb, bollard or wasmtime: it is pure data and logic.
//!
//! ```text
//!  YAML/JSON ──parse──▶ Job ──validate──▶ SubmitJob command ──Raft──▶ ClusterState::apply
//!                                                                         │
//!                    scheduler reads a StateView ◀────────────────────────┘
//! ```

pub mod admission;
pub mod api;
pub mod archive;
pub mod codec;
pub mod command;
pub mod config;
pub mod diff;
pub mod evaluation;
pub mod execution;
pub mod history;
pub mod ids;
pub mod locality;
pub mod node;
pub mod normalize;
pub mod params;
pub mod parse;
pub mod partition;
pub mod publishers;
pub mod quantity;
pub mod security;
pub mod selector;
pub mod sources;
pub mod spec;
pub mod state;
pub mod states;
pub mod time;
pub mod validate;
pub mod view;
pub mod wire;

pub use evaluation::Evaluation;
pub use execution::{Execution, RunOutput};
pub use history::{Event, JobHistory};
pub use node::{NodeInfo, NodeState};
pub use spec::{Job, JobType, Task};
pub use states::{ExecutionDesiredState, ExecutionStateType, JobStateType};

/// Environment variable names starting with this prefix are reserved for the system.
pub const RESERVED_ENV_PREFIX: &str = "BACALHAU_";
/// Meta keys starting with this prefix are reserved for the system.
pub const RESERVED_META_PREFIX: &str = "bacalhau.org/";
/// Default namespace, as Bacalhau's.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The version of Caravel, reported by `agent version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
