//! Building a snapshot on one store and installing it on another.

use caravel_model::command::Command;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use tempfile::TempDir;

use crate::fixtures;

#[tokio::test]
async fn an_installed_snapshot_gives_the_same_state_and_replaces_the_old_one() {
    let (dl, df) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (_log_l, mut leader) = caravel_raft_store::open(dl.path()).unwrap();
    leader.apply(fixtures::entries()).await.unwrap();
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(built.meta.last_log_id, leader.last_applied());
    assert!(
        built
            .meta
            .snapshot_id
            .contains(&format!("-{}-", built.meta.last_log_id.unwrap().index)),
        "{}",
        built.meta.snapshot_id
    );
    let current = leader
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("the built snapshot is kept");
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());

    // The follower has diverging state of its own, which the snapshot must wipe out.
    {
        let (_log_f, mut follower) = caravel_raft_store::open(df.path()).unwrap();
        let stale = Command::SubmitJob {
            job: fixtures::job("j-9", "stale"),
            evaluation: fixtures::evaluation("e-9", "j-9"),
            force: false,
            now: fixtures::T0,
        };
        follower
            .apply(vec![fixtures::normal(1, 1, stale)])
            .await
            .unwrap();
        let mut rx = follower.subscribe_applied();
        rx.borrow_and_update();

        let mut data = follower.begin_receiving_snapshot().await.unwrap();
        *data = *current.snapshot.clone();
        follower
            .install_snapshot(&current.meta, data)
            .await
            .unwrap();

        assert_eq!(
            *follower.state().read().unwrap(),
            *leader.state().read().unwrap()
        );
        assert_eq!(
            follower.applied_state().await.unwrap(),
            leader.applied_state().await.unwrap()
        );
        assert_eq!(
            follower.get_current_snapshot().await.unwrap().unwrap().meta,
            built.meta
        );
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), built.meta.last_log_id.unwrap().index);
    }

    // And the follower's records on disk were rewritten: a restart loads the snapshot's state.
    let (_log_f, mut follower) = caravel_raft_store::open(df.path()).unwrap();
    let reloaded = follower.state().read().unwrap().clone();
    assert!(
        !reloaded.jobs.contains_key("j-9"),
        "the stale job is gone after the restart"
    );
    assert_eq!(reloaded, *leader.state().read().unwrap());
    assert_eq!(
        follower.applied_state().await.unwrap(),
        leader.applied_state().await.unwrap()
    );
}

#[tokio::test]
async fn snapshot_ids_are_unique_across_builds_and_restarts() {
    let dir = TempDir::new().unwrap();
    let first = {
        let (_log, mut sm) = caravel_raft_store::open(dir.path()).unwrap();
        sm.apply(fixtures::entries()).await.unwrap();
        let a = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let b = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_ne!(a.meta.snapshot_id, b.meta.snapshot_id);
        b
    };
    let (_log, mut sm) = caravel_raft_store::open(dir.path()).unwrap();
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        first.meta
    );
    let c = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_ne!(c.meta.snapshot_id, first.meta.snapshot_id);
    assert_eq!(
        c.snapshot.get_ref(),
        first.snapshot.get_ref(),
        "same state, same bytes"
    );
}
