//! Caravel's Raft storage: the openraft type configuration ([`TypeConfig`]), the RocksDB-backed Raft
//! log ([`LogStore`]) and the state machine ([`StateMachineStore`]) that applies
//! [`caravel_model::command::Command`]s to a [`ClusterState`], with snapshots.
//!
//! Owns: the `declare_raft_types!` configuration and [`NodeAddr`], the on-disk layout, durability of
//! the log and vote (fsync before anything is acknowledged), persistence of the state machine record
//! by record, and snapshot build/install. Must not depend on `net`, `compute`, quinn or wasmtime: the
//! Raft network adapter and the orchestrator live in the root package.
//!
//! # On-disk layout
//!
//! One RocksDB database with four column families:
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `raft_log` | log index, `u64` big-endian (sorts numerically) | `codec`-encoded `Entry<TypeConfig>` |
//! | `raft_meta` | `vote`, `last_purged`, `committed` | `codec`-encoded `Vote` / `Option<LogId>` |
//! | `sm` | one table byte ([`Table`]) + the record key's UTF-8 bytes | the record, as `ClusterState::take_dirty` encodes it |
//! | `sm_meta` | `last_applied`, `last_membership`, `snapshot` (the last one installed), `snapshot_counter` | `codec`-encoded values |
//!
//! Beside RocksDB's files, `caravel-snapshot` holds the last snapshot this member built (a
//! `codec`-encoded snapshot, replaced whole); the newer of it and `sm_meta/snapshot` is current.
//!
//! # Durability
//!
//! * `append`, `save_vote`, `truncate`, `purge` and `install_snapshot` write one `WriteBatch` with
//!   `sync = true` on a blocking thread; `append` reports completion to openraft only afterwards.
//! * `apply` writes the changed records, `last_applied` and the last membership in one unsynced
//!   batch: RocksDB recovers a prefix of batches (one WAL for all column families), so the records
//!   and `last_applied` always agree, and openraft re-applies anything newer from the synced log.
//!   Logs are only purged behind a snapshot, and the synced purge also syncs every earlier WAL
//!   record, so an applied state is on disk before the logs that produced it disappear.
//!
//! The most recent entries are also kept in memory with their encodings ([`EntryCache`]), so
//! that what openraft reads back right after an append is neither read from RocksDB nor decoded,
//! and an entry is encoded once for the log and every follower.
//!
//! ```text
//!  openraft ──append/vote/truncate/purge──▶ LogStore ──▶ raft_log, raft_meta   (fsync)
//!           ──apply(entries)───────────────▶ StateMachineStore ──▶ ClusterState (RwLock, in memory)
//!                                                     └──▶ sm, sm_meta (one batch)  ──▶ watch<u64>
//! ```

mod db;
mod entry_cache;
#[cfg(test)]
mod golden;
mod log_store;
mod state_machine;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use caravel_model::codec;
use caravel_model::command::{Command, CommandResponse};
use serde::{Deserialize, Serialize};

pub use caravel_model::state::{ClusterState, Table};
pub use db::StoreClosed;
pub use entry_cache::{EntryCache, decode_append_request, encode_append_request};
pub use log_store::LogStore;
pub use state_machine::StateMachineStore;

openraft::declare_raft_types!(
    /// The openraft type configuration of Caravel's orchestrator group. A command is behind an
    /// `Arc` (encoded exactly as the command itself): openraft clones entries on their way to
    /// each follower and to the state machine, and the log keeps recent ones in memory.
    pub TypeConfig:
        D = std::sync::Arc<Command>,
        R = CommandResponse,
        NodeId = u64,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft node id type (`TypeConfig::NodeId`).
pub type NodeId = u64;
/// A Raft log entry of this configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of this configuration.
pub type LogId = openraft::LogId<NodeId>;
/// The storage error openraft's traits return.
pub type StorageError = openraft::StorageError<NodeId>;

/// Where a member of the orchestrator group is reached: its Raft (QUIC) address and its HTTP API
/// address. Stored in membership entries, so it is part of the replicated log's format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The member's node id (`--node-id`), bound into its certificate; its Raft id is derived from it.
    pub name: String,
    pub raft_addr: String,
    pub api_addr: String,
}

impl NodeAddr {
    pub fn new(raft_addr: impl Into<String>, api_addr: impl Into<String>) -> Self {
        NodeAddr {
            name: String::new(),
            raft_addr: raft_addr.into(),
            api_addr: api_addr.into(),
        }
    }
    pub fn named(
        name: impl Into<String>,
        raft_addr: impl Into<String>,
        api_addr: impl Into<String>,
    ) -> Self {
        NodeAddr {
            name: name.into(),
            raft_addr: raft_addr.into(),
            api_addr: api_addr.into(),
        }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// Errors of the store. Inside openraft's traits they are wrapped in a `StorageError` naming what
/// was being read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the Raft store at {path}: {source}{}", corruption_hint(.source))]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("RocksDB failed to {op}: {source}")]
    Rocks {
        op: &'static str,
        source: rocksdb::Error,
    },
    #[error("column family {0} is missing from the Raft store")]
    MissingColumnFamily(&'static str),
    #[error(
        "cannot decode {cf}/{key} in the Raft store (corrupt, or written by another Caravel version): {source}"
    )]
    Decode {
        cf: &'static str,
        key: String,
        source: codec::Error,
    },
    #[error("cannot encode {what} for the Raft store: {source}")]
    Encode {
        what: &'static str,
        source: codec::Error,
    },
    #[error("malformed key {key} in column family {cf}: {reason}")]
    BadKey {
        cf: &'static str,
        key: String,
        reason: &'static str,
    },
    #[error("the state machine lock was poisoned by an earlier panic")]
    Poisoned,
    #[error("a blocking storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot start a thread to load the state machine: {0}")]
    Thread(std::io::Error),
    #[error(
        "cannot write or read the snapshot file {path}: {source} (check the disk and the directory's permissions)"
    )]
    SnapshotFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Opens (or creates) the store in `dir` and returns its two halves, which share one database.
/// Loads the state machine's records, last applied log id and membership. Call it once per
/// directory: RocksDB locks the directory until both halves (and all their clones) are dropped;
/// to reopen it in the same process, await [`LogStore::closed`] first.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), Error> {
    let started = std::time::Instant::now();
    let db = Arc::new(db::open_db(dir)?);
    // Opening replays what the last process had not flushed from RocksDB's write-ahead log: after a
    // crash, a share of a restarted member's time before it serves.
    tracing::info!(
        open_ms = started.elapsed().as_millis() as u64,
        "database opened"
    );
    let log = LogStore::new(db.clone());
    let sm = StateMachineStore::load(db)?;
    Ok((log, sm))
}

/// What to do when RocksDB found the store damaged (it names the file in its message).
fn corruption_hint(e: &rocksdb::Error) -> &'static str {
    if matches!(e.kind(), rocksdb::ErrorKind::Corruption) || e.to_string().contains("Corruption") {
        "\nThe store is damaged (a disk error?) and is not opened, so no acknowledged entry is silently lost. \
         Recover this member from the others: on a healthy member `caravel cluster remove <this node id>`, \
         move this data dir aside, then start the node with an empty data dir and `caravel cluster add <id>@<raft address>`."
    } else {
        ""
    }
}
