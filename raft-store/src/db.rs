//! RocksDB helpers shared by the log and the state machine: opening, column family lookup, typed
//! reads, synced writes on a blocking thread.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use caravel_model::codec;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::Error;

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_META: &str = "raft_meta";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_SM_META: &str = "sm_meta";
const ALL_CFS: [&str; 4] = [CF_LOG, CF_META, CF_SM, CF_SM_META];

// raft_meta keys
pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_COMMITTED: &str = "committed";
// sm_meta keys
pub(crate) const KEY_LAST_APPLIED: &str = "last_applied";
pub(crate) const KEY_LAST_MEMBERSHIP: &str = "last_membership";
pub(crate) const KEY_SNAPSHOT: &str = "snapshot";
pub(crate) const KEY_SNAPSHOT_COUNTER: &str = "snapshot_counter";

/// The database, and a signal that fires once it is closed (when the last clone of the store halves
/// is dropped). Fields drop in order: the DB closes before the signal's sender goes away.
pub(crate) struct Db {
    db: DB,
    closed: watch::Sender<()>,
}

impl Deref for Db {
    type Target = DB;
    fn deref(&self) -> &DB {
        &self.db
    }
}

impl Db {
    pub(crate) fn closed(&self) -> StoreClosed {
        StoreClosed(self.closed.subscribe())
    }
}

/// Resolves once the store's database is closed and its directory unlocked, so that it can be
/// opened again in the same process (e.g. after `Raft::shutdown`, whose background tasks may still
/// hold clones of the store for a moment).
#[derive(Debug, Clone)]
pub struct StoreClosed(watch::Receiver<()>);

impl StoreClosed {
    pub async fn wait(mut self) {
        // `changed` fails once the sender (dropped right after the DB) is gone; nothing is ever sent.
        while self.0.changed().await.is_ok() {}
    }

    pub fn is_closed(&self) -> bool {
        self.0.has_changed().is_err()
    }
}

/// Bytes of one column family's memtable before it is flushed.
const MEMTABLE_BYTES: usize = 16 << 20;
/// Bytes of write-ahead log beyond which the column families holding its oldest file are flushed.
const MAX_WAL_BYTES: u64 = 32 << 20;

pub(crate) fn open_db(dir: &Path) -> Result<Db, Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    // Every log, vote and purge record is synced before openraft is told: a corrupt record in the
    // middle of the WAL means a disk problem, and the default recovery mode (PointInTimeRecovery)
    // would silently drop every synced record after it — acknowledged entries or this member's
    // vote. Refuse to open instead; the member is rebuilt from the others. But a record cut short
    // at the very end of the WAL is what a kill leaves when it lands while RocksDB writes a record
    // in several pieces (a large batch, synced or not): nothing in it was acknowledged, so it is
    // dropped and the member starts (AbsoluteConsistency refused to, and a SIGKILLed or OOM-killed
    // member never came back without being rebuilt).
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_paranoid_checks(true);
    // The state machine's records (`sm`) are written on every applied batch and read only when the
    // member starts: a vector memtable appends each record and sorts once at flush, where the
    // default skip list pays a cache miss per level on every insert of a random key (a fifth of a
    // follower's CPU under a write load, docs/benchmarks.md). Vector memtables take no concurrent
    // inserts, and the DB-wide switch must say so.
    opts.set_allow_concurrent_memtable_write(false);
    // What a restarted member replays from the write-ahead log before it serves: everything since
    // the oldest memtable not flushed yet (64 MiB memtables by default, and a column family written
    // rarely can hold old WAL files back for ever). Smaller memtables and a cap on the WAL keep the
    // replay short (docs/benchmarks.md, "what catch-up costs").
    opts.set_max_total_wal_size(MAX_WAL_BYTES);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_write_buffer_size(MEMTABLE_BYTES);
        if *name == CF_SM {
            cf_opts.set_memtable_factory(rocksdb::MemtableFactory::Vector);
        }
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| Error::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(Db {
        db,
        closed: watch::channel(()).0,
    })
}

pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, Error> {
    db.cf_handle(name).ok_or(Error::MissingColumnFamily(name))
}

pub(crate) fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, Error> {
    codec::encode(v).map_err(|source| Error::Encode { what, source })
}

/// Reads and decodes one value of a metadata column family.
pub(crate) fn get<T: DeserializeOwned>(
    db: &DB,
    cf_name: &'static str,
    key: &str,
) -> Result<Option<T>, Error> {
    let handle = cf(db, cf_name)?;
    let Some(bytes) = db
        .get_pinned_cf(handle, key)
        .map_err(|source| Error::Rocks { op: "read", source })?
    else {
        return Ok(None);
    };
    codec::decode(&bytes)
        .map(Some)
        .map_err(|source| Error::Decode {
            cf: cf_name,
            key: key.to_string(),
            source,
        })
}

/// Writes `batch` with `sync = true` on a blocking thread, so the fsync never stalls the runtime.
pub(crate) async fn write_synced(
    db: &Arc<Db>,
    batch: WriteBatch,
    op: &'static str,
) -> Result<(), Error> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo)
            .map_err(|source| Error::Rocks { op, source })
    })
    .await?
}

/// A raft_log key: the index, big-endian.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn key_index(key: &[u8]) -> Result<u64, Error> {
    let b: [u8; 8] = key.try_into().map_err(|_| Error::BadKey {
        cf: CF_LOG,
        key: format!("{key:02x?}"),
        reason: "a log key is 8 bytes",
    })?;
    Ok(u64::from_be_bytes(b))
}

/// An `sm` key: the table byte followed by the record key.
pub(crate) fn sm_key(table: caravel_model::state::Table, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(table as u8);
    k.extend_from_slice(key.as_bytes());
    k
}
