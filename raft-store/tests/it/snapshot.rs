//! Building a snapshot on one store and installing it on another.

use caravel_model::NodeInfo;
use caravel_model::command::Command;
use caravel_model::security::JoinToken;
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
    assert_eq!(
        built.snapshot.get_ref(),
        &leader.state().read().unwrap().to_snapshot().unwrap(),
        "the snapshot made from the stored records is byte for byte the state's own encoding"
    );
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

#[tokio::test]
async fn a_snapshot_of_the_records_is_the_state_s_own_encoding_at_every_step() {
    let dir = TempDir::new().unwrap();
    let (log, mut sm) = caravel_raft_store::open(dir.path()).unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    // Empty: no counters record yet, every table empty.
    let empty = builder.build_snapshot().await.unwrap();
    assert_eq!(
        empty.snapshot.get_ref(),
        &caravel_raft_store::ClusterState::default()
            .to_snapshot()
            .unwrap()
    );
    // The shared fixtures, then a job updated by name (a superseded version in `JobVersion`) and
    // the security tables: a join token, a node registered with a certificate, a denial.
    let mut entries = fixtures::entries();
    let next = entries.len() as u64 + 1;
    // An update arrives as a new submission (a fresh id) with the same name.
    let mut updated = fixtures::job("j-9", "hello");
    updated.tasks[0].name = "changed".into();
    let extra = vec![
        Command::SubmitJob {
            job: updated,
            evaluation: fixtures::evaluation("e-9", "j-1"),
            force: false,
            now: fixtures::T0 + 20,
        },
        Command::CreateJoinToken {
            token: JoinToken {
                id: "t-1".into(),
                secret_sha256: "ab".repeat(32),
                created_at: fixtures::T0,
                expires_at: fixtures::T0 + 1_000_000_000_000,
                ..Default::default()
            },
        },
        Command::RegisterNodeWith {
            info: NodeInfo {
                node_id: "n-2".into(),
                node_type: "Compute".into(),
                ..Default::default()
            },
            now: fixtures::T0 + 21,
            pending: false,
            fingerprint: "cd".repeat(32),
        },
        Command::DenyCertificate {
            fingerprint: "ef".repeat(32),
            node_id: "n-3".into(),
            reason: "lost laptop".into(),
            now: fixtures::T0 + 22,
        },
    ];
    entries.extend(
        extra
            .into_iter()
            .enumerate()
            .map(|(i, c)| fixtures::normal(1, next + i as u64, c)),
    );
    for e in entries {
        sm.apply(vec![e]).await.unwrap();
        let built = builder.build_snapshot().await.unwrap();
        let state = sm.state().read().unwrap().clone();
        assert_eq!(built.snapshot.get_ref(), &state.to_snapshot().unwrap());
        assert_eq!(built.meta.last_log_id, sm.last_applied());
        assert_eq!(
            caravel_raft_store::ClusterState::from_snapshot(built.snapshot.get_ref()).unwrap(),
            state
        );
    }
    let state = sm.state().read().unwrap().clone();
    for (table, empty) in [
        ("job versions", state.job_versions.is_empty()),
        ("join tokens", state.security.join_tokens.is_empty()),
        ("node certificates", state.security.node_certs.is_empty()),
        ("denials", state.security.denied.is_empty()),
    ] {
        assert!(
            !empty,
            "{table}: every table was compared with something in it"
        );
    }
    // Every table reloaded from its records (start-up reads ranges of tables side by side).
    let closed = log.closed();
    drop((log, sm, builder));
    closed.wait().await;
    let (_log, sm) = caravel_raft_store::open(dir.path()).unwrap();
    assert_eq!(*sm.state().read().unwrap(), state);
}

/// Builds a snapshot of what `sm` has applied.
async fn build(
    sm: &mut caravel_raft_store::StateMachineStore,
) -> openraft::storage::Snapshot<caravel_raft_store::TypeConfig> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// Reopens the store in `dir` once the old halves are gone.
async fn reopen(
    dir: &std::path::Path,
    old: (
        caravel_raft_store::LogStore,
        caravel_raft_store::StateMachineStore,
    ),
) -> (
    caravel_raft_store::LogStore,
    caravel_raft_store::StateMachineStore,
) {
    let closed = old.0.closed();
    drop(old);
    closed.wait().await;
    caravel_raft_store::open(dir).unwrap()
}

/// A member keeps the snapshot it built in a file beside RocksDB's (a value of 100+ MB written
/// through RocksDB stalled every synced log append behind it) and the one it installed in RocksDB
/// with the state it replaced: the newer of the two is current, before and after a restart.
#[tokio::test]
async fn the_newer_of_the_built_and_the_installed_snapshot_is_current_across_restarts() {
    let (dl, df) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (_log_l, mut leader) = caravel_raft_store::open(dl.path()).unwrap();
    leader.apply(fixtures::entries()).await.unwrap();
    let from_leader = build(&mut leader).await;

    let (log, mut sm) = caravel_raft_store::open(df.path()).unwrap();
    sm.apply(fixtures::entries().into_iter().take(2))
        .await
        .unwrap();
    let own = build(&mut sm).await;
    assert!(
        own.meta.last_log_id.unwrap().index < from_leader.meta.last_log_id.unwrap().index,
        "the follower's own snapshot is the older"
    );
    let file = df.path().join("caravel-snapshot");
    assert!(file.is_file(), "a built snapshot is a file of its own");
    assert!(
        !df.path().join("caravel-snapshot.tmp").exists(),
        "written aside, then renamed"
    );

    let mut data = sm.begin_receiving_snapshot().await.unwrap();
    *data = *from_leader.snapshot.clone();
    sm.install_snapshot(&from_leader.meta, data).await.unwrap();
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        from_leader.meta,
        "the installed snapshot is newer than the file"
    );
    let (log, mut sm) = reopen(df.path(), (log, sm)).await;
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, from_leader.meta, "and still after a restart");
    assert_eq!(current.snapshot.get_ref(), from_leader.snapshot.get_ref());

    // A build after the install is the newest: it replaces the file and the installed one goes.
    let rebuilt = build(&mut sm).await;
    assert_eq!(rebuilt.meta.last_log_id, from_leader.meta.last_log_id);
    assert_ne!(rebuilt.meta.snapshot_id, from_leader.meta.snapshot_id);
    assert_eq!(rebuilt.snapshot.get_ref(), from_leader.snapshot.get_ref());
    let (_log, mut sm) = reopen(df.path(), (log, sm)).await;
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        rebuilt.meta
    );
}

#[tokio::test]
async fn a_damaged_snapshot_file_is_refused_naming_the_file_and_a_leftover_part_is_ignored() {
    let dir = TempDir::new().unwrap();
    let (log, mut sm) = caravel_raft_store::open(dir.path()).unwrap();
    sm.apply(fixtures::entries()).await.unwrap();
    // What a crash in the middle of writing a snapshot leaves: a part, never read.
    std::fs::write(dir.path().join("caravel-snapshot.tmp"), b"half a snap").unwrap();
    let built = build(&mut sm).await;
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        built.meta
    );

    let (_log, mut sm) = reopen(dir.path(), (log, sm)).await;
    let file = dir.path().join("caravel-snapshot");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, &bytes).unwrap();
    let err = sm.get_current_snapshot().await.unwrap_err().to_string();
    assert!(err.contains("caravel-snapshot"), "{err}");
}
