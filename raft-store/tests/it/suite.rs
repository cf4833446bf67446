//! openraft's own storage test suite, run against a fresh RocksDB store per case.

use caravel_raft_store::{LogStore, StateMachineStore, StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use tempfile::TempDir;

struct FreshStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FreshStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = caravel_raft_store::open(dir.path())
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

/// Runs every case of the suite (each in its own runtime, as the suite requires: not a tokio test).
#[test]
fn rocksdb_store_passes_the_openraft_storage_suite() {
    if let Err(e) = Suite::test_all(FreshStore) {
        panic!("openraft storage suite failed: {e}");
    }
}
