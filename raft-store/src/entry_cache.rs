//! The log's most recent entries in memory, with their encodings.
//!
//! openraft 0.9 reads every entry back from the log right after appending it: once per follower
//! to replicate it, and once more to apply it. From RocksDB each read is a decode; then the
//! network encoded the entry again for every follower, and a follower decoded what it received
//! and encoded it once more for its own log. Under a write load that was a sixth of the leader's
//! CPU (docs/benchmarks.md). Here an entry is encoded once, where it enters a member's log (the
//! leader's proposal, or a follower's received bytes, see [`EntryCache::take_from_append`]): the
//! log stores those bytes, every append request is built from them, and reads return a clone of
//! the entry (its command is behind an `Arc`).
//!
//! ```text
//!  leader:   client_write ─▶ append: encode once ─▶ cache ─▶ read (clone) ─▶ request bytes ─▶ peers
//!  follower: request bytes ─▶ decode, keep each entry's bytes ─▶ append: store them ─▶ cache ─▶ apply
//! ```
//!
//! An entry never changes under its log id (term and index), so bytes are always looked up by log
//! id; the log's truncate and purge drop what they remove. Bounded by [`MAX_ENTRIES`] and
//! [`MAX_BYTES`]: the oldest go first, and a read that misses goes to RocksDB as before.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::{Entry, LogId};

/// Entries kept at most.
pub const MAX_ENTRIES: usize = 8192;
/// Encoded bytes kept at most (a job may carry megabytes of inline inputs).
pub const MAX_BYTES: usize = 64 << 20;

/// An entry and its postcard encoding (without the codec's version header).
#[derive(Clone)]
struct Cached {
    entry: Option<Entry>,
    bytes: Arc<[u8]>,
}

#[derive(Default)]
struct Inner {
    /// By log index; the log id inside says which entry it is.
    by_index: BTreeMap<u64, (LogId, Cached)>,
    bytes: usize,
}

/// Shared by the log store and the Raft network of one member. Cheap to clone.
#[derive(Clone, Default)]
pub struct EntryCache {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for EntryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.lock();
        f.debug_struct("EntryCache")
            .field("entries", &i.by_index.len())
            .field("bytes", &i.bytes)
            .finish()
    }
}

/// The postcard encoding of a value (no version header), as the network and the log carry it.
pub fn postcard_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(v)
}

impl EntryCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The encoding of the entry with this log id, if it is here.
    pub fn bytes_of(&self, log_id: &LogId) -> Option<Arc<[u8]>> {
        let i = self.lock();
        match i.by_index.get(&log_id.index) {
            Some((id, c)) if id == log_id => Some(c.bytes.clone()),
            _ => None,
        }
    }

    /// The encoding of `entry`: from here when known, else made now (and not kept: only the log
    /// decides what is kept).
    pub fn encode(&self, entry: &Entry) -> Result<Arc<[u8]>, postcard::Error> {
        match self.bytes_of(&entry.log_id) {
            Some(b) => Ok(b),
            None => Ok(postcard_bytes(entry)?.into()),
        }
    }

    /// Remembers the bytes a follower received for an entry, before the entry reaches its log
    /// (see [`decode_append_request`](crate::decode_append_request)).
    pub(crate) fn offer_bytes(&self, log_id: LogId, bytes: Arc<[u8]>) {
        let mut i = self.lock();
        if i.by_index
            .get(&log_id.index)
            .is_some_and(|(id, _)| *id == log_id)
        {
            return;
        }
        let c = Cached { entry: None, bytes };
        i.put(log_id, c);
    }

    /// Records an entry the log just wrote, with the bytes it wrote.
    pub(crate) fn appended(&self, entry: Entry, bytes: Arc<[u8]>) {
        let log_id = entry.log_id;
        self.lock().put(
            log_id,
            Cached {
                entry: Some(entry),
                bytes,
            },
        );
    }

    /// Entries `start..end` if every one of them is here (a read is served whole or not at all).
    pub(crate) fn range(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let i = self.lock();
        let n = end.checked_sub(start)?;
        if n == 0 || n > i.by_index.len() as u64 {
            return None;
        }
        let mut out = Vec::with_capacity(n as usize);
        for (idx, (_, c)) in i.by_index.range(start..end) {
            if *idx != start + out.len() as u64 {
                return None;
            }
            out.push(c.entry.clone()?);
        }
        (out.len() as u64 == n).then_some(out)
    }

    /// Forgets entries at `index` and after (the log was truncated there).
    pub(crate) fn truncate(&self, index: u64) {
        let mut i = self.lock();
        let gone = i.by_index.split_off(&index);
        i.bytes -= gone.values().map(|(_, c)| c.bytes.len()).sum::<usize>();
    }

    /// Forgets entries up to and including `index` (purged from the log).
    pub(crate) fn purge(&self, index: u64) {
        let mut i = self.lock();
        let keep = match index.checked_add(1) {
            Some(next) => i.by_index.split_off(&next),
            None => BTreeMap::new(),
        };
        let gone = std::mem::replace(&mut i.by_index, keep);
        i.bytes -= gone.values().map(|(_, c)| c.bytes.len()).sum::<usize>();
    }
}

impl Inner {
    fn put(&mut self, log_id: LogId, c: Cached) {
        self.bytes += c.bytes.len();
        if let Some((_, old)) = self.by_index.insert(log_id.index, (log_id, c)) {
            self.bytes -= old.bytes.len();
        }
        while self.by_index.len() > MAX_ENTRIES
            || (self.bytes > MAX_BYTES && self.by_index.len() > 1)
        {
            let Some((_, (_, old))) = self.by_index.pop_first() else {
                break;
            };
            self.bytes -= old.bytes.len();
        }
    }
}

/// The postcard encoding of an append-entries request, as `postcard::to_allocvec(req)` makes it,
/// with each entry's bytes taken from the cache where it has them (postcard writes a struct as its
/// fields one after the other and a sequence as its length, then its items).
pub fn encode_append_request(
    cache: &EntryCache,
    req: &openraft::raft::AppendEntriesRequest<crate::TypeConfig>,
) -> Result<Vec<u8>, postcard::Error> {
    let mut out = postcard::to_allocvec(&req.vote)?;
    out = postcard::to_extend(&req.prev_log_id, out)?;
    out = postcard::to_extend(&req.entries.len(), out)?;
    for e in &req.entries {
        match cache.bytes_of(&e.log_id) {
            Some(b) => out.extend_from_slice(&b),
            None => out = postcard::to_extend(e, out)?,
        }
    }
    postcard::to_extend(&req.leader_commit, out)
}

/// Decodes what [`encode_append_request`] (or `postcard::to_allocvec`) made, and offers each
/// entry's bytes to the cache, so that this member's log stores them without encoding the entry
/// again.
pub fn decode_append_request(
    cache: &EntryCache,
    bytes: &[u8],
) -> Result<openraft::raft::AppendEntriesRequest<crate::TypeConfig>, postcard::Error> {
    let (vote, rest) = postcard::take_from_bytes(bytes)?;
    let (prev_log_id, rest) = postcard::take_from_bytes(rest)?;
    let (n, mut rest): (usize, _) = postcard::take_from_bytes(rest)?;
    // Each entry takes at least a few bytes: a length that cannot fit is refused before any
    // allocation is made for it.
    if n > rest.len() {
        return Err(postcard::Error::DeserializeUnexpectedEnd);
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let (entry, after): (Entry, _) = postcard::take_from_bytes(rest)?;
        let used = &rest[..rest.len() - after.len()];
        cache.offer_bytes(entry.log_id, used.into());
        entries.push(entry);
        rest = after;
    }
    let (leader_commit, _) = postcard::take_from_bytes(rest)?;
    Ok(openraft::raft::AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    })
}
