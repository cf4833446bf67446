//! Caravel's compute node: runs executions next to the data and reports on them.
//!
//! Owns: the [`Executor`] trait and its engines ([`WasmExecutor`], wasmtime + WASI preview 1;
//! [`DockerExecutor`], the machine's Docker engine through bollard), input preparation
//! ([`inputs`]: inline, local, urlDownload, s3, ipfs through a gateway), the result layout and the
//! local/noop/s3 publishers ([`publish`]), S3 access ([`s3`], object_store), machine capacity
//! ([`capacity`]), metrics ([`metrics`]), the [`Outbox`] of numbered reports, and the node runtime
//! ([`ComputeNode`]) that speaks [`caravel_model::wire`] with an orchestrator session.
//!
//! Must not depend on `net`, `raft-store` or rocksdb: the session that carries the wire messages
//! (in-process channels or QUIC) is joined to this crate in the root package.
//!
//! ```text
//!  ToCompute::Run ──▶ ComputeNode ── queue (max_concurrent slots) ──▶ BidAccepted
//!                          │
//!                          ├─ inputs::prepare (inline / local / urlDownload / s3 / ipfs) ─▶ <exec>/inputs
//!                          ├─ Running ─▶ Executor::run, chosen by Engine.Type
//!                          │     wasm:   Store + WASI, epoch timeout/cancel, memory limit
//!                          │     docker: image (local or pulled), container with bind mounts,
//!                          │             limits, network mode; stop → kill on timeout/cancel
//!                          │   ─▶ <exec>/results/{stdout,stderr,<ResultPath>}
//!                          ├─ exitCode, RunOutput (first 2 KiB of stdout/stderr)
//!                          ├─ Publishing ─▶ local: <data_dir>/results/<exec>.tar.gz
//!                          │                s3: tar.gz or plain objects   (noop: none)
//!                          └─ Completed | Failed | Cancelled
//!  every state change ─▶ Outbox::push (seq) ─▶ ToOrchestrator::Report{seq} … until ToCompute::Ack{seq}
//! ```

pub mod admission;
pub mod capacity;
pub mod docker;
pub mod executor;
pub mod fetch_guard;
pub mod inputs;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod publish;
pub mod s3;
pub mod wasm;

pub use docker::{DockerExecutor, DockerOptions};
pub use executor::{ExecError, Executor, PreparedInput, ResultDir, RunRequest, RunResult};
pub use inputs::{InputError, InputOptions, InputPreparer};
pub use metrics::ComputeMetrics;
pub use node::{ComputeNode, ComputeOptions, NodeError};
pub use outbox::Outbox;
pub use publish::{ExecutionPaths, PublishError, Publisher};
pub use s3::{S3Error, S3Settings};
pub use wasm::WasmExecutor;

/// Installs rustls' ring provider as the process default if none is (the HTTP clients of inputs
/// and S3 are built without a bundled provider). Harmless when another thread won the race.
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
