//! Everything survives closing and reopening the store directory.

use std::path::Path;

use caravel_raft_store::{ClusterState, LogStore, StateMachineStore};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, Vote};
use tempfile::TempDir;

use crate::fixtures::{self, log_id};

fn open(dir: &Path) -> (LogStore, StateMachineStore) {
    caravel_raft_store::open(dir).unwrap()
}

/// The state the pure model reaches on the fixture commands, without any store.
fn model_state() -> ClusterState {
    let mut s = ClusterState::default();
    for c in fixtures::commands() {
        s.apply(&c);
    }
    s
}

#[tokio::test]
async fn a_reopened_store_has_the_same_state_vote_and_log() {
    let dir = TempDir::new().unwrap();
    let entries = fixtures::entries();
    let last = entries.last().unwrap().log_id;
    let (before, applied_before) = {
        let (mut log, mut sm) = open(dir.path());
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(last)).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
        sm.apply(entries.clone()).await.unwrap();
        let state = sm.state().read().unwrap().clone();
        (state, sm.applied_state().await.unwrap())
    };

    let (mut log, mut sm) = open(dir.path());
    let after = sm.state().read().unwrap().clone();
    assert_eq!(
        after, before,
        "every job, execution, evaluation, node and history event is reloaded"
    );
    assert_eq!(after, model_state());
    assert_eq!(after.to_snapshot().unwrap(), before.to_snapshot().unwrap());
    assert_eq!(
        after.history_of("j-1").len(),
        before.history_of("j-1").len(),
        "indexes are rebuilt"
    );
    assert_eq!(sm.applied_state().await.unwrap(), applied_before);
    assert_eq!(sm.last_applied(), Some(last));
    assert_eq!(*sm.subscribe_applied().borrow(), last.index);

    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(4, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(last));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(last));
    let read = log.try_get_log_entries(0..=last.index).await.unwrap();
    assert_eq!(
        read,
        entries[1..].to_vec(),
        "the purged entry is gone, the rest are intact"
    );
}

#[tokio::test]
async fn applying_after_a_restart_continues_exactly_where_it_stopped() {
    let dir = TempDir::new().unwrap();
    let entries = fixtures::entries();
    {
        let (_log, mut sm) = open(dir.path());
        sm.apply(entries[..6].to_vec()).await.unwrap();
    }
    let (_log, mut sm) = open(dir.path());
    assert_eq!(sm.last_applied(), Some(entries[5].log_id));
    let responses = sm.apply(entries[6..].to_vec()).await.unwrap();
    assert_eq!(responses, fixtures::expected_responses()[6..].to_vec());
    let state = sm.state().read().unwrap().clone();
    assert_eq!(
        state.to_snapshot().unwrap(),
        model_state().to_snapshot().unwrap()
    );
}

#[tokio::test]
async fn truncation_and_purge_survive_a_restart() {
    let dir = TempDir::new().unwrap();
    let entries = fixtures::entries();
    {
        let (mut log, _sm) = open(dir.path());
        log.blocking_append(entries.clone()).await.unwrap();
        log.truncate(entries[8].log_id).await.unwrap();
        log.purge(entries[2].log_id).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(entries[2].log_id));
    assert_eq!(state.last_log_id, Some(entries[7].log_id));
    assert_eq!(
        log.try_get_log_entries(..).await.unwrap(),
        entries[3..8].to_vec()
    );
}

#[tokio::test]
async fn a_fully_purged_log_reports_the_purged_id_as_last() {
    let dir = TempDir::new().unwrap();
    let entries = fixtures::entries();
    let last = entries.last().unwrap().log_id;
    {
        let (mut log, _sm) = open(dir.path());
        log.blocking_append(entries).await.unwrap();
        log.purge(last).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (Some(last), Some(last))
    );
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
}

#[test]
fn a_corrupt_record_fails_the_open_with_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_log, mut sm) = open(dir.path());
        rt.block_on(sm.apply(fixtures::entries())).unwrap();
    }
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let db = rocksdb::DB::open_cf(
            &opts,
            dir.path(),
            ["raft_log", "raft_meta", "sm", "sm_meta"],
        )
        .unwrap();
        let mut key = vec![caravel_raft_store::Table::Execution as u8];
        key.extend_from_slice(b"x-1");
        db.put_cf(db.cf_handle("sm").unwrap(), key, [1u8, 0, 0xff, 0xff, 0xff])
            .unwrap();
    }
    let err = caravel_raft_store::open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, caravel_raft_store::Error::Decode { cf: "sm", .. }),
        "{err:?}"
    );
    assert!(msg.contains("sm/Execution/x-1"), "{msg}");
}

/// Start-up reads the records in ranges of tables side by side: a key below the first table or
/// past the last is still found and refused, not skipped.
#[test]
fn a_record_of_an_unknown_table_fails_the_open_wherever_its_key_sorts() {
    for table_byte in [0u8, 0xee] {
        let dir = TempDir::new().unwrap();
        {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let (_log, mut sm) = open(dir.path());
            rt.block_on(sm.apply(fixtures::entries())).unwrap();
        }
        {
            let db = rocksdb::DB::open_cf(
                &rocksdb::Options::default(),
                dir.path(),
                ["raft_log", "raft_meta", "sm", "sm_meta"],
            )
            .unwrap();
            db.put_cf(db.cf_handle("sm").unwrap(), [table_byte, b'x'], b"v")
                .unwrap();
        }
        let err = caravel_raft_store::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                caravel_raft_store::Error::BadKey {
                    cf: "sm",
                    reason: "unknown table byte",
                    ..
                }
            ),
            "table byte {table_byte:#x}: {err:?}"
        );
    }
}

#[tokio::test]
async fn the_closed_signal_fires_only_when_every_clone_is_dropped() {
    let dir = TempDir::new().unwrap();
    let (log, sm) = open(dir.path());
    let closed = log.closed();
    let reader = log.clone();
    drop((log, sm));
    assert!(!closed.is_closed(), "a clone still holds the database");
    assert!(
        caravel_raft_store::open(dir.path()).is_err(),
        "the directory is still locked"
    );
    drop(reader);
    tokio::time::timeout(std::time::Duration::from_secs(5), closed.clone().wait())
        .await
        .unwrap();
    assert!(closed.is_closed());
    open(dir.path());
}

#[tokio::test]
async fn a_flipped_byte_in_the_middle_of_the_wal_refuses_to_open_instead_of_dropping_entries() {
    let dir = TempDir::new().unwrap();
    let entries = fixtures::entries();
    {
        let (mut log, _sm) = open(dir.path());
        // One synced write per entry, so the WAL holds several records.
        for e in &entries {
            log.blocking_append(vec![e.clone()]).await.unwrap();
        }
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        let closed = log.closed();
        drop((log, _sm));
        closed.wait().await;
    }
    let wal = newest_wal(dir.path());
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(
        bytes.len() > 200,
        "the WAL holds the entries: {} bytes",
        bytes.len()
    );
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();
    let err = caravel_raft_store::open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.to_lowercase().contains("corrupt"), "{msg}");
    assert!(
        msg.contains("cluster remove") && msg.contains("cluster add"),
        "the message says how to recover: {msg}"
    );
}

/// The write-ahead log file RocksDB is writing (the highest-numbered `.log`).
fn newest_wal(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a WAL file")
}

/// A kill that lands while RocksDB writes a record in pieces leaves the record cut short at the end
/// of the WAL. Nothing in it was acknowledged: the member must start without it, with everything
/// synced before it (a SIGKILLed orchestrator refused to start, "Corruption: truncated record
/// body", until it was rebuilt from the others).
#[tokio::test]
async fn a_record_cut_short_at_the_end_of_the_wal_is_dropped_and_everything_before_it_kept() {
    let dir = TempDir::new().unwrap();
    let entries = fixtures::entries();
    let synced = {
        let (mut log, mut sm) = open(dir.path());
        for e in &entries {
            log.blocking_append(vec![e.clone()]).await.unwrap();
        }
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        let synced = std::fs::metadata(newest_wal(dir.path())).unwrap().len();
        // The last record: every entry applied, one unsynced batch.
        sm.apply(entries.clone()).await.unwrap();
        let closed = log.closed();
        drop((log, sm));
        closed.wait().await;
        synced
    };
    let wal = newest_wal(dir.path());
    let len = std::fs::metadata(&wal).unwrap().len();
    assert!(
        len > synced + 100,
        "the applied batch is the WAL's last record: {synced} → {len} bytes"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(synced + (len - synced) / 2)
        .unwrap();

    let (mut log, mut sm) = caravel_raft_store::open(dir.path())
        .expect("a record cut short at the end of the WAL does not stop the store from opening");
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(4, 1))
    );
    assert_eq!(
        log.try_get_log_entries(..).await.unwrap(),
        entries,
        "every synced entry is kept"
    );
    assert_eq!(
        sm.last_applied(),
        None,
        "the cut batch is dropped whole: openraft applies the entries again from the log"
    );
    let responses = sm.apply(entries.clone()).await.unwrap();
    assert_eq!(responses, fixtures::expected_responses());
    assert_eq!(
        sm.state().read().unwrap().to_snapshot().unwrap(),
        model_state().to_snapshot().unwrap()
    );
}
