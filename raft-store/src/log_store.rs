//! The Raft log, vote and committed id: openraft's `RaftLogReader` + `RaftLogStorage` (storage-v2).

use std::fmt;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::db::{self, CF_LOG, CF_META, Db, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, StoreClosed};
use crate::entry_cache::EntryCache;
use crate::{Entry, Error, LogId, NodeId, StorageError, TypeConfig};

/// The Raft log store. Cheap to clone (it is its own log reader); all clones share one database
/// and one cache of recent entries.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    /// The last committed index openraft told this store about (for the commit-index metric).
    committed: Arc<std::sync::atomic::AtomicU64>,
    cache: EntryCache,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.db.path())
            .finish()
    }
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        LogStore {
            db,
            committed: Arc::default(),
            cache: EntryCache::default(),
        }
    }

    /// The recent entries and their encodings, for the Raft network (see [`EntryCache`]).
    pub fn cache(&self) -> EntryCache {
        self.cache.clone()
    }

    /// The commit index as last saved by openraft, shared with every clone (0 before any).
    pub fn committed_index(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.committed.clone()
    }

    /// Resolves once every clone of both store halves is dropped and the directory is unlocked.
    pub fn closed(&self) -> StoreClosed {
        self.db.closed()
    }

    fn last_purged(&self) -> Result<Option<LogId>, Error> {
        Ok(db::get::<Option<LogId>>(&self.db, CF_META, KEY_LAST_PURGED)?.flatten())
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, Error> {
        let cf = db::cf(&self.db, CF_LOG)?;
        let Some(item) = self.db.iterator_cf(cf, IteratorMode::End).next() else {
            return Ok(None);
        };
        let (k, v) = item.map_err(|source| Error::Rocks {
            op: "read the last log entry",
            source,
        })?;
        Ok(Some(decode_entry(&k, &v)?.log_id))
    }

    /// Entries with `start <= index < end`, in order: from the cache when it holds them all.
    fn read_range(&self, start: u64, end: u64) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        // (An unbounded read, "everything from here", always goes to the database.)
        if end != u64::MAX
            && let Some(hit) = self.cache.range(start, end)
        {
            return Ok(hit);
        }
        let cf = db::cf(&self.db, CF_LOG)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(db::index_key(end).to_vec());
        let start_key = db::index_key(start);
        for item in
            self.db
                .iterator_cf_opt(cf, ro, IteratorMode::From(&start_key, Direction::Forward))
        {
            let (k, v) = item.map_err(|source| Error::Rocks {
                op: "read log entries",
                source,
            })?;
            out.push(decode_entry(&k, &v)?);
        }
        Ok(out)
    }
}

fn decode_entry(k: &[u8], v: &[u8]) -> Result<Entry, Error> {
    let index = db::key_index(k)?;
    caravel_model::codec::decode(v).map_err(|source| Error::Decode {
        cf: CF_LOG,
        key: format!("index {index}"),
        source,
    })
}

/// `[start, end)` of a range of log indexes.
fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

fn read_logs_err(e: Error) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_logs_err(e: Error) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.read_range(start, end).map_err(read_logs_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged().map_err(read_logs_err)?;
        let last_log_id = self
            .last_entry_id()
            .map_err(read_logs_err)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let res = async {
            let mut batch = WriteBatch::default();
            batch.put_cf(
                db::cf(&self.db, CF_META)?,
                KEY_VOTE,
                db::encode("vote", vote)?,
            );
            db::write_synced(&self.db, batch, "save the vote").await
        }
        .await;
        res.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        db::get(&self.db, CF_META, KEY_VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    /// Not synced: the committed id is a hint that lets a restarted node re-apply sooner; losing the
    /// latest one only delays that until the leader's next heartbeat.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed
                .store(c.index, std::sync::atomic::Ordering::Relaxed);
        }
        let res = (|| {
            let cf = db::cf(&self.db, CF_META)?;
            let v = db::encode("committed log id", &committed)?;
            self.db
                .put_cf(cf, KEY_COMMITTED, v)
                .map_err(|source| Error::Rocks {
                    op: "save the committed log id",
                    source,
                })
        })();
        res.map_err(write_logs_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(db::get::<Option<LogId>>(&self.db, CF_META, KEY_COMMITTED)
            .map_err(read_logs_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let res = async {
            let cf = db::cf(&self.db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            let mut written = Vec::new();
            for entry in entries {
                // Encoded once: a follower's received bytes, or the leader's encoding made here,
                // shared with the network (see `EntryCache`).
                let bytes = self.cache.encode(&entry).map_err(|source| Error::Encode {
                    what: "log entry",
                    source: caravel_model::codec::Error::Encode {
                        what: "log entry",
                        source,
                    },
                })?;
                batch.put_cf(
                    cf,
                    db::index_key(entry.log_id.index),
                    caravel_model::codec::with_header(&bytes),
                );
                written.push((entry, bytes));
            }
            let n = written.len();
            if n > 0 {
                db::write_synced(&self.db, batch, "append log entries").await?;
            }
            // Readable from the cache only once they are in the log.
            for (entry, bytes) in written {
                self.cache.appended(entry, bytes);
            }
            tracing::trace!(entries = n, "appended and synced");
            Ok::<_, Error>(())
        }
        .await;
        match res {
            Ok(()) => {
                // Only now is the batch on disk: tell openraft it may acknowledge it.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_logs_err(e))
            }
        }
    }

    /// Deletes `[log_id.index, ∞)`.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate the log");
        self.cache.truncate(log_id.index);
        let res = async {
            let cf = db::cf(&self.db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf, db::index_key(log_id.index), db::index_key(u64::MAX));
            batch.delete_cf(cf, db::index_key(u64::MAX));
            db::write_synced(&self.db, batch, "truncate the log").await
        }
        .await;
        res.map_err(write_logs_err)
    }

    /// Deletes `[0, log_id.index]`. `last_purged` is written first in the same synced batch, so it
    /// is never older than the entries actually gone.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge the log");
        self.cache.purge(log_id.index);
        let res = async {
            if let Some(prev) = self.last_purged()?
                && prev >= log_id
            {
                return Ok(());
            }
            let meta = db::cf(&self.db, CF_META)?;
            let cf = db::cf(&self.db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(
                meta,
                KEY_LAST_PURGED,
                db::encode("last purged log id", &Some(log_id))?,
            );
            match log_id.index.checked_add(1) {
                Some(end) => batch.delete_range_cf(cf, db::index_key(0), db::index_key(end)),
                None => {
                    batch.delete_range_cf(cf, db::index_key(0), db::index_key(u64::MAX));
                    batch.delete_cf(cf, db::index_key(u64::MAX));
                }
            }
            db::write_synced(&self.db, batch, "purge the log").await
        }
        .await;
        res.map_err(write_logs_err)
    }
}
