//! The log's cache of recent entries: what it serves is what the database holds, and the bytes it
//! shares with the network are exactly openraft's encoding.

use std::path::Path;

use caravel_model::codec;
use caravel_raft_store::{
    EntryCache, LogStore, StateMachineStore, decode_append_request, encode_append_request,
};
use openraft::raft::AppendEntriesRequest;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{RaftLogReader, Vote};
use tempfile::TempDir;

use crate::fixtures::{self, log_id};

fn open(dir: &Path) -> (LogStore, StateMachineStore) {
    caravel_raft_store::open(dir).unwrap()
}

fn request() -> AppendEntriesRequest<caravel_raft_store::TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(1, 0)),
        entries: fixtures::entries(),
        leader_commit: Some(log_id(1, 4)),
    }
}

#[test]
fn an_append_request_is_encoded_as_openraft_encodes_it_with_or_without_cached_entries() {
    let req = request();
    let whole = postcard::to_allocvec(&req).unwrap();
    let empty = EntryCache::default();
    assert_eq!(encode_append_request(&empty, &req).unwrap(), whole);

    // A member that received the request holds each entry's bytes: the same encoding again.
    let cache = EntryCache::default();
    let back = decode_append_request(&cache, &whole).unwrap();
    assert_eq!(back.entries, req.entries);
    assert_eq!((back.vote, back.prev_log_id), (req.vote, req.prev_log_id));
    assert_eq!(back.leader_commit, req.leader_commit);
    for e in &req.entries {
        assert_eq!(
            cache.bytes_of(&e.log_id).as_deref(),
            Some(postcard::to_allocvec(e).unwrap().as_slice()),
            "the bytes kept for {} are the entry's own",
            e.log_id
        );
    }
    assert_eq!(encode_append_request(&cache, &req).unwrap(), whole);

    // A heartbeat carries no entries.
    let hb = AppendEntriesRequest {
        entries: vec![],
        ..request()
    };
    let bytes = encode_append_request(&cache, &hb).unwrap();
    assert_eq!(bytes, postcard::to_allocvec(&hb).unwrap());
    assert!(
        decode_append_request(&cache, &bytes)
            .unwrap()
            .entries
            .is_empty()
    );
}

#[test]
fn a_malformed_append_request_is_refused_without_panicking() {
    let whole = postcard::to_allocvec(&request()).unwrap();
    let cache = EntryCache::default();
    for cut in [0, 1, 5, whole.len() / 2, whole.len() - 1] {
        assert!(
            decode_append_request(&cache, &whole[..cut]).is_err(),
            "{cut} of {} bytes",
            whole.len()
        );
    }
    // A sequence length far beyond the bytes that follow is refused before anything is allocated.
    let mut huge = postcard::to_allocvec(&Vote::<u64>::new_committed(3, 1)).unwrap();
    huge = postcard::to_extend(&None::<caravel_raft_store::LogId>, huge).unwrap();
    huge = postcard::to_extend(&(u32::MAX as usize), huge).unwrap();
    assert!(decode_append_request(&cache, &huge).is_err());
}

#[tokio::test]
async fn the_log_stores_the_received_bytes_and_reads_back_what_the_database_holds() {
    let dir = TempDir::new().unwrap();
    let (mut log, _sm) = open(dir.path());
    let req = request();
    let received = postcard::to_allocvec(&req).unwrap();
    let req = decode_append_request(&log.cache(), &received).unwrap();
    log.blocking_append(req.entries.clone()).await.unwrap();
    let last = req.entries.last().unwrap().log_id.index;

    // Served from the cache, and the same as a fresh store reading the database.
    let cached = log.try_get_log_entries(1..=last).await.unwrap();
    assert_eq!(cached, req.entries);
    drop(log);
    let closed = _sm.closed();
    drop(_sm);
    closed.wait().await;
    let (mut reopened, _sm) = open(dir.path());
    let from_db = reopened.try_get_log_entries(1..=last).await.unwrap();
    assert_eq!(from_db, req.entries);
    assert!(
        reopened.cache().bytes_of(&req.entries[2].log_id).is_none(),
        "a reopened store starts with an empty cache"
    );
    // What the log wrote is the codec's encoding of each entry.
    for e in &req.entries {
        let again = codec::encode(e).unwrap();
        assert_eq!(
            codec::decode::<caravel_raft_store::Entry>(&again).unwrap(),
            *e
        );
    }
}

#[tokio::test]
async fn truncated_and_purged_entries_are_never_read_from_the_cache() {
    let dir = TempDir::new().unwrap();
    let (mut log, _sm) = open(dir.path());
    let entries = fixtures::entries();
    log.blocking_append(entries.clone()).await.unwrap();
    let n = entries.len() as u64;

    // Truncated at 4, then a new term writes 4 and 5 again.
    log.truncate(log_id(1, 4)).await.unwrap();
    let cache = log.cache();
    assert!(cache.bytes_of(&log_id(1, 4)).is_none());
    let rewritten = vec![fixtures::blank(2, 4), fixtures::blank(2, 5)];
    log.blocking_append(rewritten.clone()).await.unwrap();
    let read = log.try_get_log_entries(1..6).await.unwrap();
    assert_eq!(read[..3], entries[..3]);
    assert_eq!(read[3..], rewritten[..]);
    assert!(log.try_get_log_entries(1..n).await.unwrap().len() == 5);

    // Purged entries are gone from both.
    log.purge(log_id(1, 2)).await.unwrap();
    assert!(cache.bytes_of(&log_id(1, 1)).is_none());
    let read = log.try_get_log_entries(0..6).await.unwrap();
    assert_eq!(read.first().map(|e| e.log_id.index), Some(3));

    // Bytes offered for an entry that never reached the log (a request whose append failed) do
    // not make a read of that index succeed from the cache.
    let other = postcard::to_allocvec(&AppendEntriesRequest::<caravel_raft_store::TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(2, 5)),
        entries: vec![fixtures::blank(3, 6)],
        leader_commit: None,
    })
    .unwrap();
    decode_append_request(&cache, &other).unwrap();
    assert!(log.try_get_log_entries(6..7).await.unwrap().is_empty());
}
