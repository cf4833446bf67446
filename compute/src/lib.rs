//! Caravel's compute node: runs executions next to the data and reports on them.
//!
//! Owns: the [`Executor`] trait and its WebAssembly engine ([`WasmExecutor`], wasmtime + WASI
//! preview 1), input preparation ([`inputs`]: inline, local, urlDownload), the result layout and
//! the local/noop publishers ([`publish`]), machine capacity ([`capacity`]), the [`Outbox`] of
//! numbered reports, and the node runtime ([`ComputeNode`]) that speaks
//! [`caravel_model::wire`] with an orchestrator session.
//!
//! Must not depend on `net`, `raft-store` or rocksdb: the session that carries the wire messages
//! (in-process channels or QUIC) is joined to this crate in the root package.
//!
//! ```text
//!  ToCompute::Run ──▶ ComputeNode ── queue (max_concurrent slots) ──▶ BidAccepted
//!                          │
//!                          ├─ inputs::prepare (inline / local / urlDownload) ─▶ <exec>/inputs
//!                          ├─ Running ─▶ Executor::run (wasm: Store + WASI, epoch timeout/cancel,
//!                          │              memory limit) ─▶ <exec>/results/{stdout,stderr,<ResultPath>}
//!                          ├─ exitCode, RunOutput (first 2 KiB of stdout/stderr)
//!                          ├─ Publishing ─▶ local: <data_dir>/results/<exec>.tar.gz   (noop: none)
//!                          └─ Completed | Failed | Cancelled
//!  every state change ─▶ Outbox::push (seq) ─▶ ToOrchestrator::Report{seq} … until ToCompute::Ack{seq}
//! ```

pub mod capacity;
pub mod executor;
pub mod inputs;
pub mod node;
pub mod outbox;
pub mod publish;
pub mod wasm;

pub use executor::{ExecError, Executor, PreparedInput, ResultDir, RunRequest, RunResult};
pub use inputs::{InputError, InputOptions, InputPreparer};
pub use node::{ComputeNode, ComputeOptions, NodeError};
pub use outbox::Outbox;
pub use publish::{ExecutionPaths, PublishError, Publisher};
pub use wasm::WasmExecutor;
