//! Integration tests of the Raft store.
