//! Applying entries: responses, determinism, the applied-index watch.

use caravel_raft_store::{ClusterState, StateMachineStore};
use openraft::storage::RaftStateMachine;
use tempfile::TempDir;

use crate::fixtures;

fn fresh() -> (TempDir, StateMachineStore) {
    let dir = TempDir::new().unwrap();
    let (_log, sm) = caravel_raft_store::open(dir.path()).unwrap();
    (dir, sm)
}

fn snapshot_bytes(sm: &StateMachineStore) -> Vec<u8> {
    sm.state().read().unwrap().to_snapshot().unwrap()
}

#[tokio::test]
async fn applying_entries_answers_each_command_in_order() {
    let (_dir, mut sm) = fresh();
    let responses = sm.apply(fixtures::entries()).await.unwrap();
    assert_eq!(responses, fixtures::expected_responses());

    let state = sm.state();
    let state = state.read().unwrap();
    assert_eq!(state.jobs.len(), 2);
    assert_eq!(
        state.executions["x-1"].compute_state.state_type,
        caravel_model::ExecutionStateType::Completed
    );
    assert_eq!(state.last_report_seq("n-1"), 3);
    assert!(
        state.history_of("j-1").len() >= 4,
        "history: {:?}",
        state.history_of("j-1")
    );
}

#[tokio::test]
async fn the_same_entries_give_byte_identical_state_on_two_stores() {
    let (_d1, mut a) = fresh();
    let (_d2, mut b) = fresh();
    a.apply(fixtures::entries()).await.unwrap();
    // The second store gets the same log in batches of different sizes, as a follower may.
    let entries = fixtures::entries();
    for chunk in entries.chunks(3) {
        b.apply(chunk.to_vec()).await.unwrap();
    }
    let (sa, sb) = (snapshot_bytes(&a), snapshot_bytes(&b));
    assert!(!sa.is_empty());
    assert_eq!(sa, sb);
    assert_eq!(
        a.applied_state().await.unwrap(),
        b.applied_state().await.unwrap()
    );
}

#[tokio::test]
async fn the_applied_index_is_published_after_each_batch() {
    let (_dir, mut sm) = fresh();
    let mut rx = sm.subscribe_applied();
    assert_eq!(*rx.borrow_and_update(), 0);
    let entries = fixtures::entries();
    let last = entries.last().unwrap().log_id.index;
    sm.apply(entries[..4].to_vec()).await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), entries[3].log_id.index);
    sm.apply(entries[4..].to_vec()).await.unwrap();
    assert_eq!(*rx.borrow_and_update(), last);
    assert_eq!(sm.last_applied().map(|l| l.index), Some(last));
}

#[tokio::test]
async fn applying_nothing_changes_nothing() {
    let (_dir, mut sm) = fresh();
    let rx = sm.subscribe_applied();
    assert!(sm.apply(Vec::new()).await.unwrap().is_empty());
    assert!(!rx.has_changed().unwrap());
    assert_eq!(sm.last_applied(), None);
    assert_eq!(*sm.state().read().unwrap(), ClusterState::default());
}

#[tokio::test]
async fn a_node_is_woken_only_by_entries_that_change_its_executions_and_by_snapshots() {
    use openraft::RaftSnapshotBuilder;
    let (_dir, mut sm) = fresh();
    let mut n1 = sm.subscribe_node("n-1");
    let n2 = sm.subscribe_node("n-2");
    let entries = fixtures::entries();
    // Membership, blank, the node's registration, a job submission: no execution yet.
    sm.apply(entries[..4].to_vec()).await.unwrap();
    assert!(!n1.has_changed().unwrap());
    // The plan places x-1 on n-1.
    sm.apply(entries[4..5].to_vec()).await.unwrap();
    assert!(n1.has_changed().unwrap());
    assert_eq!(*n1.borrow_and_update(), entries[4].log_id.index);
    assert!(!n2.has_changed().unwrap());
    // n-1's reports change x-1.
    sm.apply(entries[5..8].to_vec()).await.unwrap();
    assert_eq!(*n1.borrow_and_update(), entries[7].log_id.index);
    assert!(!n2.has_changed().unwrap());
    // A duplicate report (whether it wakes n-1 is not the point), then another job submitted and
    // stopped without executions: nobody is woken.
    sm.apply(entries[8..9].to_vec()).await.unwrap();
    n1.borrow_and_update();
    sm.apply(entries[9..11].to_vec()).await.unwrap();
    assert!(!n1.has_changed().unwrap());
    assert!(!n2.has_changed().unwrap());
    // A subscriber that went away is forgotten; subscribing again starts at the applied index.
    drop(n1);
    sm.apply(entries[11..].to_vec()).await.unwrap();
    let last = entries.last().unwrap().log_id.index;
    assert_eq!(*sm.subscribe_node("n-1").borrow(), last);

    // A snapshot replaces the whole state: every subscriber is woken.
    let built = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (_d2, mut follower) = fresh();
    let mut f2 = follower.subscribe_node("n-2");
    let mut data = follower.begin_receiving_snapshot().await.unwrap();
    *data = *built.snapshot;
    follower.install_snapshot(&built.meta, data).await.unwrap();
    assert!(f2.has_changed().unwrap());
    assert_eq!(*f2.borrow_and_update(), last);
}
