//! Golden encodings of everything this store writes to RocksDB (see the table in the crate docs):
//! log entries of each payload kind, the vote, committed / purged / applied log ids, the last
//! membership, the stored snapshot and its counter. Files in `tests/golden/<format>/`; every later
//! version must read every earlier directory. `CARAVEL_BLESS=1` rewrites this version's files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use caravel_model::codec;
use caravel_model::command::Command;
use openraft::{CommittedLeaderId, EntryPayload, Membership, SnapshotMeta, StoredMembership, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state_machine::StoredSnapshot;
use crate::{Entry, LogId, NodeAddr, NodeId};

const CURRENT: &str = "v1";

fn golden<T: Serialize + DeserializeOwned + std::fmt::Debug>(
    name: &str,
    value: &T,
    same: impl Fn(&T, &T) -> bool,
) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(CURRENT)
        .join(format!("{name}.bin"));
    let bytes = codec::encode(value).unwrap();
    if std::env::var_os("CARAVEL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        return;
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoded: T = codec::decode(&stored)
        .unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
    assert!(
        same(&decoded, value),
        "{} decodes to {decoded:?}",
        path.display()
    );
    assert_eq!(bytes, stored, "{name}: the storage format changed");
}

fn eq<T: PartialEq>(a: &T, b: &T) -> bool {
    a == b
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 7), index)
}

fn membership() -> Membership<NodeId, NodeAddr> {
    let nodes: BTreeMap<NodeId, NodeAddr> = [1u64, 2, 3]
        .into_iter()
        .map(|i| {
            (
                i,
                NodeAddr::named(format!("orch-{i}"), format!("10.0.0.{i}:1235"), ""),
            )
        })
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

#[test]
fn every_record_of_the_raft_store_reads_back_from_its_golden_encoding() {
    let entries = [
        (
            "log_entry_blank",
            Entry {
                log_id: log_id(2, 10),
                payload: EntryPayload::Blank,
            },
        ),
        (
            "log_entry_normal",
            Entry {
                log_id: log_id(2, 11),
                payload: EntryPayload::Normal(std::sync::Arc::new(Command::StopJob {
                    job_id: "j-1".into(),
                    reason: "Stopped at user request".into(),
                    evaluation_id: "ev-1".into(),
                    now: 5,
                })),
            },
        ),
        (
            "log_entry_membership",
            Entry {
                log_id: log_id(2, 12),
                payload: EntryPayload::Membership(membership()),
            },
        ),
    ];
    for (name, e) in &entries {
        // Exhaustive: a new payload kind must get a fixture here.
        match &e.payload {
            EntryPayload::Blank | EntryPayload::Normal(_) | EntryPayload::Membership(_) => {}
        }
        golden(name, e, |a, b| format!("{a:?}") == format!("{b:?}"));
    }
    golden("vote", &Vote::<NodeId>::new_committed(3, 2), eq);
    golden("committed", &Some(log_id(2, 11)), eq);
    golden("last_purged", &Some(log_id(1, 4)), eq);
    golden("last_applied", &Some(log_id(2, 11)), eq);
    golden(
        "last_membership",
        &StoredMembership::new(Some(log_id(2, 12)), membership()),
        eq,
    );
    golden(
        "snapshot",
        &StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(log_id(2, 11)),
                last_membership: StoredMembership::new(Some(log_id(2, 12)), membership()),
                snapshot_id: "2-11-1".into(),
            },
            data: caravel_model::state::ClusterState::default()
                .to_snapshot()
                .unwrap(),
        },
        |a, b| format!("{:?}/{:?}", a.meta, a.data) == format!("{:?}/{:?}", b.meta, b.data),
    );
    golden("snapshot_counter", &3u64, eq);
}
