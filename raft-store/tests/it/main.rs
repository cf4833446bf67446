//! Integration tests of the Raft store: openraft's storage suite, determinism, restart, snapshots,
//! and a single-voter `openraft::Raft` running on the store.

mod entry_cache;
mod fixtures;
mod raft_node;
mod restart;
mod snapshot;
mod state_machine;
mod suite;
