//! The `caravel` root package: the single binary's server side. It joins the crates that never
//! depend on each other — `raft-store` (openraft on RocksDB), `net` (the orchestrator/compute seam),
//! `compute` (executors) — into an orchestrator and a node.
//!
//! ```text
//!  main ─▶ cli (client commands)          serve/devstack ─▶ node::start
//!                                                          ├─ raft-store + openraft  (raft.rs)
//!                                                          ├─ orchestrator::{leader, session, scheduler}
//!                                                          ├─ api (axum, Bacalhau v1) + metrics
//!                                                          └─ compute node ⇄ net::inproc ⇄ session
//! ```

pub mod api;
pub mod devstack;
pub mod devstack_cluster;
pub mod join;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod orchestrator;
pub mod raft;
