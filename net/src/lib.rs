//! The seam between orchestrators and compute nodes: a typed message stream, commands down
//! ([`caravel_model::wire::ToCompute`]) and reports up ([`caravel_model::wire::ToOrchestrator`]).
//!
//! ```text
//!   orchestrator side                         compute side
//!   OrchestratorEnd.tx ── ToCompute ───────▶  ComputeEnd.inbox
//!   OrchestratorEnd.rx ◀── ToOrchestrator ──  ComputeEnd.outbox
//! ```
//!
//! Today one transport implements it: [`inproc`], two bounded channels inside a hybrid node. The next
//! transport carries the same messages over mutual-TLS QUIC sessions (one connection per compute node,
//! multiplexed channels, reconnect-and-resync) and hands the orchestrator and the compute runtime the
//! same two ends, so neither side changes. Depends on `model` only; never on raft-store or compute.

pub mod frame;
pub mod inproc;
pub mod rpc;
pub mod session;
pub mod tls;

use caravel_model::wire::{ToCompute, ToOrchestrator};
use tokio::sync::mpsc;

/// What the orchestrator holds for one compute session.
#[derive(Debug)]
pub struct OrchestratorEnd {
    pub tx: mpsc::Sender<ToCompute>,
    pub rx: mpsc::Receiver<ToOrchestrator>,
}

/// What the compute node holds for its session.
#[derive(Debug)]
pub struct ComputeEnd {
    pub inbox: mpsc::Receiver<ToCompute>,
    pub outbox: mpsc::Sender<ToOrchestrator>,
}
