//! The state machine: applies committed entries to the in-memory [`ClusterState`], persists the
//! changed records, builds and installs snapshots (`RaftStateMachine` + `RaftSnapshotBuilder`).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use caravel_model::command::CommandResponse;
use caravel_model::state::{ClusterState, Table};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use rocksdb::{DB, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::db::{
    self, CF_SM, CF_SM_META, Db, KEY_LAST_APPLIED, KEY_LAST_MEMBERSHIP, KEY_SNAPSHOT,
    KEY_SNAPSHOT_COUNTER, StoreClosed,
};
use crate::{Entry, Error, LogId, NodeAddr, NodeId, StorageError, TypeConfig};

type Membership = StoredMembership<NodeId, NodeAddr>;
type Meta = SnapshotMeta<NodeId, NodeAddr>;

/// What the state machine has applied: kept next to the state, persisted in `sm_meta`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    last_applied: Option<LogId>,
    last_membership: Membership,
}

/// A snapshot as stored: openraft's meta and the `ClusterState::to_snapshot` bytes. One this
/// member built is the file [`SNAPSHOT_FILE`]; one it installed is kept in `sm_meta`, written with
/// the state it replaces in one synced batch. The newer of the two is the current snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: Meta,
    pub(crate) data: Vec<u8>,
}

struct Shared {
    db: Arc<Db>,
    /// Lock order: `state` before `applied`.
    state: Arc<RwLock<ClusterState>>,
    applied: Mutex<Applied>,
    applied_tx: watch::Sender<u64>,
    /// Per compute node: woken with the applied index when an entry changed one of its executions.
    node_tx: Mutex<HashMap<String, watch::Sender<u64>>>,
    snapshot_counter: AtomicU64,
    /// Held while a snapshot is built or installed: a build that ends after an install must not
    /// drop the installed snapshot for its own older one.
    snapshot_lock: tokio::sync::Mutex<()>,
}

/// The snapshot this member built last, in the store's directory beside RocksDB's files: a
/// `codec`-encoded [`StoredSnapshot`], replaced whole (written aside, synced, renamed). Not in
/// RocksDB: a snapshot is the whole state (100+ MB at a few hundred thousand jobs), and one write
/// that large went through RocksDB's single write path and write-ahead log, so every member's next
/// synced log append waited for it to reach the disk — 0.6–0.7 s without a heartbeat, every 10,000
/// entries, on all members at once: leader elections under a plain write load (docs/benchmarks.md).
pub(crate) const SNAPSHOT_FILE: &str = "caravel-snapshot";

/// Bytes of the snapshot file written between two syncs: the disk takes it in steps, not in one
/// burst that a synced log append would queue behind.
const SNAPSHOT_SYNC_BYTES: usize = 8 << 20;

fn snapshot_file_err(path: &Path, source: std::io::Error) -> Error {
    Error::SnapshotFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces the snapshot file in `dir` with `bytes`: written to a temporary file synced step by
/// step, renamed over the last one, and the directory synced, so a crash leaves the old snapshot
/// or the new one, never a part.
fn write_snapshot_file(dir: &Path, bytes: &[u8]) -> Result<(), Error> {
    let path = dir.join(SNAPSHOT_FILE);
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| snapshot_file_err(&tmp, e))?;
    for chunk in bytes.chunks(SNAPSHOT_SYNC_BYTES) {
        f.write_all(chunk)
            .and_then(|()| f.sync_data())
            .map_err(|e| snapshot_file_err(&tmp, e))?;
    }
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| snapshot_file_err(&path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| snapshot_file_err(dir, e))
}

/// The snapshot file in `dir`, if this member ever built one.
fn read_snapshot_file(dir: &Path) -> Result<Option<StoredSnapshot>, Error> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(snapshot_file_err(&path, e)),
    };
    caravel_model::codec::decode(&bytes)
        .map(Some)
        .map_err(|source| Error::Decode {
            cf: "snapshot file",
            key: path.display().to_string(),
            source,
        })
}

/// The state machine store. Cheap to clone; clones share the state (it is also the snapshot builder).
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("path", &self.shared.db.path())
            .field("last_applied", &self.last_applied())
            .finish()
    }
}

fn read_sm_err(e: Error) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn write_sm_err(e: Error) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn encode_err(e: caravel_model::codec::Error) -> Error {
    Error::Encode {
        what: "state machine record",
        source: e,
    }
}

/// `Job/abc`-style name of an `sm` key, for error messages.
/// A stored record's table and key (the bytes after the table byte).
fn record_key(k: &[u8]) -> Result<(Table, &[u8]), Error> {
    let (t, rest) = k.split_first().ok_or_else(|| bad_key(k, "empty key"))?;
    let table = Table::from_u8(*t).ok_or_else(|| bad_key(k, "unknown table byte"))?;
    Ok((table, rest))
}

fn bad_key(k: &[u8], reason: &'static str) -> Error {
    Error::BadKey {
        cf: CF_SM,
        key: show_sm_key(k),
        reason,
    }
}

fn show_sm_key(k: &[u8]) -> String {
    match k.split_first() {
        Some((t, rest)) => match Table::from_u8(*t) {
            Some(t) => format!("{t:?}/{}", String::from_utf8_lossy(rest)),
            None => format!("{k:02x?}"),
        },
        None => "<empty key>".into(),
    }
}

/// Where the start-up load splits the `sm` records (keys begin with their table's byte): one thread
/// per range, the tables that grow with the jobs each in a range of its own, the small ones and
/// any unknown table byte (an error) in the first and last.
const LOAD_SPLITS: [Table; 6] = [
    Table::JobVersion,
    Table::Execution,
    Table::Evaluation,
    Table::Node,
    Table::History,
    Table::NodeSeq,
];

/// Reads and decodes the `sm` records from key `[from]` (the start if None) up to `[to]`
/// (excluded; the end if None) into a state of their own: `(state, records, bytes)`.
fn load_range(
    db: &DB,
    cf: &rocksdb::ColumnFamily,
    from: Option<u8>,
    to: Option<u8>,
) -> Result<(ClusterState, usize, usize), Error> {
    let mut ro = rocksdb::ReadOptions::default();
    if let Some(f) = from {
        ro.set_iterate_lower_bound(vec![f]);
    }
    if let Some(t) = to {
        ro.set_iterate_upper_bound(vec![t]);
    }
    // Read once: the blocks would only push out what the block cache holds.
    ro.fill_cache(false);
    let mut state = ClusterState::default();
    let (mut records, mut bytes) = (0usize, 0usize);
    for item in db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
        let (k, v) = item.map_err(|source| Error::Rocks {
            op: "read state machine records",
            source,
        })?;
        let (table, rest) = record_key(&k)?;
        let key =
            String::from_utf8(rest.to_vec()).map_err(|_| bad_key(&k, "record key is not UTF-8"))?;
        state
            .load_record(table, key, &v)
            .map_err(|source| Error::Decode {
                cf: CF_SM,
                key: show_sm_key(&k),
                source,
            })?;
        records += 1;
        bytes += v.len();
    }
    Ok((state, records, bytes))
}

/// Adds the records `take_dirty` returned to `batch`.
fn put_records(
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
    records: Vec<(Table, String, Option<Vec<u8>>)>,
) {
    for (table, key, value) in records {
        let k = db::sm_key(table, &key);
        match value {
            Some(v) => batch.put_cf(cf, k, v),
            None => batch.delete_cf(cf, k),
        }
    }
}

fn put_applied(db: &DB, batch: &mut WriteBatch, applied: &Applied) -> Result<(), Error> {
    let cf = db::cf(db, CF_SM_META)?;
    batch.put_cf(
        cf,
        KEY_LAST_APPLIED,
        db::encode("last applied log id", &applied.last_applied)?,
    );
    batch.put_cf(
        cf,
        KEY_LAST_MEMBERSHIP,
        db::encode("last membership", &applied.last_membership)?,
    );
    Ok(())
}

impl StateMachineStore {
    /// Loads the state machine from the database: every `sm` record, then `sm_meta`. The records
    /// are read and decoded in ranges side by side ([`LOAD_SPLITS`]): a restarted member serves
    /// nothing until this is done.
    pub(crate) fn load(db: Arc<Db>) -> Result<Self, Error> {
        let started = std::time::Instant::now();
        let cf = db::cf(&db, CF_SM)?;
        let bounds: Vec<u8> = LOAD_SPLITS.iter().map(|t| *t as u8).collect();
        let ranges = std::iter::once(None)
            .chain(bounds.iter().map(Some))
            .zip(bounds.iter().map(Some).chain(std::iter::once(None)));
        let parts = std::thread::scope(|s| {
            let loads = ranges
                .map(|(from, to)| {
                    let db = &**db;
                    std::thread::Builder::new()
                        .name("caravel-load".into())
                        .spawn_scoped(s, move || load_range(db, cf, from.copied(), to.copied()))
                        .map_err(Error::Thread)
                })
                .collect::<Result<Vec<_>, Error>>()?;
            loads
                .into_iter()
                .map(|l| l.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<_>, Error>>()
        })?;
        // The last range holds the counters: the others are moved into it.
        let mut parts = parts.into_iter().rev();
        let (mut state, mut records, mut bytes) = parts.next().unwrap_or_default();
        for (part, n, b) in parts {
            state.absorb(part);
            records += n;
            bytes += b;
        }
        let read = started.elapsed();
        state.finish_load();
        let last_applied = db::get::<Option<LogId>>(&db, CF_SM_META, KEY_LAST_APPLIED)?.flatten();
        let last_membership =
            db::get::<Membership>(&db, CF_SM_META, KEY_LAST_MEMBERSHIP)?.unwrap_or_default();
        let counter = db::get::<u64>(&db, CF_SM_META, KEY_SNAPSHOT_COUNTER)?.unwrap_or(0);
        // A restarted member serves nothing until this is done: its cost grows with the state.
        tracing::info!(
            records,
            mib = bytes >> 20,
            read_ms = read.as_millis() as u64,
            indexes_ms = (started.elapsed() - read).as_millis() as u64,
            last_applied = ?last_applied.map(|l| l.index),
            "state machine loaded"
        );
        let (applied_tx, _) = watch::channel(last_applied.map(|l| l.index).unwrap_or(0));
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                db,
                state: Arc::new(RwLock::new(state)),
                applied: Mutex::new(Applied {
                    last_applied,
                    last_membership,
                }),
                applied_tx,
                node_tx: Mutex::new(HashMap::new()),
                snapshot_counter: AtomicU64::new(counter),
                snapshot_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Resolves once every clone of both store halves is dropped and the directory is unlocked.
    pub fn closed(&self) -> StoreClosed {
        self.shared.db.closed()
    }

    /// The replicated state, for readers (API, scheduler). Take the read lock briefly and never
    /// hold it across an `.await`: `apply` needs the write lock.
    pub fn state(&self) -> Arc<RwLock<ClusterState>> {
        self.shared.state.clone()
    }

    /// The index of the last applied log entry, updated after each applied batch and installed
    /// snapshot (0 before anything was applied). Wakes readers that wait for their write.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// Like [`Self::subscribe_applied`], but wakes only when an applied entry changed an execution
    /// placed on `node_id`, or a snapshot replaced the whole state: what a compute session waits on,
    /// so that 10,000 sessions are not all woken by every write.
    pub fn subscribe_node(&self, node_id: &str) -> watch::Receiver<u64> {
        let applied = *self.shared.applied_tx.borrow();
        let mut map = self.lock_nodes();
        match map.get(node_id) {
            // Another session of the same node (a reconnect racing the old one's end) shares it.
            Some(tx) if tx.receiver_count() > 0 => tx.subscribe(),
            _ => {
                let (tx, rx) = watch::channel(applied);
                map.insert(node_id.to_string(), tx);
                rx
            }
        }
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.shared
            .node_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the subscribers of `nodes` (all of them for `None`), and forgets nodes nobody waits on.
    fn publish_nodes(&self, nodes: Option<&BTreeSet<String>>, last: Option<LogId>) {
        let index = last.map(|l| l.index).unwrap_or(0);
        let mut map = self.lock_nodes();
        match nodes {
            None => map.retain(|_, tx| tx.send(index).is_ok()),
            Some(nodes) => {
                for n in nodes {
                    if let Some(tx) = map.get(n)
                        && tx.send(index).is_err()
                    {
                        map.remove(n);
                    }
                }
            }
        }
    }

    /// The last applied log id (`None` before anything was applied).
    pub fn last_applied(&self) -> Option<LogId> {
        self.lock_applied().ok().and_then(|a| a.last_applied)
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, ClusterState>, Error> {
        self.shared.state.read().map_err(|_| Error::Poisoned)
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, ClusterState>, Error> {
        self.shared.state.write().map_err(|_| Error::Poisoned)
    }

    fn lock_applied(&self) -> Result<std::sync::MutexGuard<'_, Applied>, Error> {
        self.shared.applied.lock().map_err(|_| Error::Poisoned)
    }

    fn publish_applied(&self, last: Option<LogId>) {
        self.shared
            .applied_tx
            .send_replace(last.map(|l| l.index).unwrap_or(0));
    }

    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<CommandResponse>, Error> {
        let db = &self.shared.db;
        let mut batch = WriteBatch::default();
        let mut responses = Vec::new();
        let nodes;
        let last = {
            let mut state = self.write_state()?;
            let mut applied = self.lock_applied()?;
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let resp = match entry.payload {
                    EntryPayload::Blank => CommandResponse::Ok,
                    EntryPayload::Normal(cmd) => state.apply(&cmd),
                    EntryPayload::Membership(m) => {
                        applied.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResponse::Ok
                    }
                };
                responses.push(resp);
            }
            if responses.is_empty() {
                return Ok(responses);
            }
            nodes = state.dirty_nodes();
            let records = state.take_dirty().map_err(encode_err)?;
            put_records(&mut batch, db::cf(db, CF_SM)?, records);
            put_applied(db, &mut batch, &applied)?;
            applied.last_applied
        };
        // Unsynced: see the crate docs (the log is synced; openraft re-applies what is missing).
        db.write(batch).map_err(|source| Error::Rocks {
            op: "write applied state",
            source,
        })?;
        self.publish_applied(last);
        self.publish_nodes(Some(&nodes), last);
        Ok(responses)
    }

    async fn build(&self) -> Result<Snapshot<TypeConfig>, Error> {
        let _building = self.shared.snapshot_lock.lock().await;
        // From the records on disk, under a RocksDB snapshot, on a blocking thread: the
        // in-memory state stays free for `apply` (encoding it under its lock stalled every write
        // for as long as the whole state took to encode: most of a second at a few hundred
        // thousand jobs, docs/benchmarks.md).
        let db = self.shared.db.clone();
        let from_records = tokio::task::spawn_blocking(move || snapshot_from_records(&db)).await?;
        let (data, applied) = match from_records {
            Ok(built) => built,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the snapshot from the stored records; encoding the state in memory instead");
                let state = self.read_state()?;
                let applied = self.lock_applied()?.clone();
                (
                    state.to_snapshot().map_err(|source| Error::Encode {
                        what: "snapshot",
                        source,
                    })?,
                    applied,
                )
            }
        };
        let counter = self.shared.snapshot_counter.fetch_add(1, Ordering::SeqCst) + 1;
        let snapshot_id = match &applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, counter),
            None => format!("none-{counter}"),
        };
        let meta = Meta {
            last_log_id: applied.last_applied,
            last_membership: applied.last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        let db = self.shared.db.clone();
        let stored = tokio::task::spawn_blocking(move || {
            write_snapshot_file(db.path(), &db::encode("snapshot", &stored)?)?;
            // The snapshot installed last, if any, is older than this one (both are made under
            // the snapshot lock): dropped. Not synced: should it survive a crash, the file is
            // still the newer. The counter is not synced either: the state itself is persisted
            // record by record, and the purge that follows a snapshot is synced.
            let mut batch = WriteBatch::default();
            let cf = db::cf(&db, CF_SM_META)?;
            batch.delete_cf(cf, KEY_SNAPSHOT);
            batch.put_cf(
                cf,
                KEY_SNAPSHOT_COUNTER,
                db::encode("snapshot counter", &counter)?,
            );
            db.write(batch).map_err(|source| Error::Rocks {
                op: "store the snapshot counter",
                source,
            })?;
            Ok::<_, Error>(stored)
        })
        .await??;
        tracing::info!(snapshot_id = %stored.meta.snapshot_id, bytes = stored.data.len(), "snapshot built");
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }

    async fn install(&self, meta: &Meta, data: Vec<u8>) -> Result<(), Error> {
        let _installing = self.shared.snapshot_lock.lock().await;
        let mut new_state = ClusterState::from_snapshot(&data).map_err(|source| Error::Decode {
            cf: "snapshot",
            key: meta.snapshot_id.clone(),
            source,
        })?;
        new_state.mark_all_dirty();
        let records = new_state.take_dirty().map_err(encode_err)?;
        let applied = Applied {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        let db = &self.shared.db;
        let mut batch = WriteBatch::default();
        let sm = db::cf(db, CF_SM)?;
        // Table bytes are 1..=8, so [0x00, 0xff) covers every record.
        batch.delete_range_cf(sm, [0x00u8], [0xffu8]);
        put_records(&mut batch, sm, records);
        put_applied(db, &mut batch, &applied)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        batch.put_cf(
            db::cf(db, CF_SM_META)?,
            KEY_SNAPSHOT,
            db::encode("snapshot", &stored)?,
        );
        db::write_synced(db, batch, "install a snapshot").await?;
        {
            let mut state = self.write_state()?;
            let mut a = self.lock_applied()?;
            *state = new_state;
            *a = applied;
        }
        self.publish_applied(meta.last_log_id);
        self.publish_nodes(None, meta.last_log_id);
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    /// The newer of the snapshot this member built (the file) and the one it installed last.
    async fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let db = self.shared.db.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let built = read_snapshot_file(db.path())?;
            let installed: Option<StoredSnapshot> = db::get(&db, CF_SM_META, KEY_SNAPSHOT)?;
            let index = |s: &StoredSnapshot| s.meta.last_log_id.map(|l| l.index);
            Ok::<_, Error>(match (built, installed) {
                (Some(b), Some(i)) if index(&i) > index(&b) => Some(i),
                (Some(b), _) => Some(b),
                (None, i) => i,
            })
        })
        .await??;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// The snapshot of the state the stored records hold (byte for byte what
/// [`ClusterState::to_snapshot`] makes of the same state), and what was applied to make it, read
/// under one RocksDB snapshot so that the two agree.
///
/// A snapshot is `(ClusterState, Security)` in postcard: its fields one after the other, in the
/// order of the [`Table`] bytes (each map as its length and then its entries in key order, the
/// counters as themselves), and a stored record is the codec's header followed by the value's
/// postcard bytes, keyed by table byte and key. So the snapshot is those bytes put together,
/// table by table, without decoding or encoding any record.
pub(crate) fn snapshot_from_records(db: &Db) -> Result<(Vec<u8>, Applied), Error> {
    use caravel_model::codec::FORMAT_VERSION;
    let snap = db.snapshot();
    fn read_meta<T: serde::de::DeserializeOwned>(
        db: &Db,
        snap: &rocksdb::Snapshot<'_>,
        key: &'static str,
    ) -> Result<Option<T>, Error> {
        let v = snap
            .get_cf(db::cf(db, CF_SM_META)?, key)
            .map_err(|source| Error::Rocks {
                op: "read the state machine's metadata",
                source,
            })?;
        v.map(|b| caravel_model::codec::decode(&b))
            .transpose()
            .map_err(|source| Error::Decode {
                cf: CF_SM_META,
                key: key.to_string(),
                source,
            })
    }
    let last_applied: Option<LogId> = read_meta(db, &snap, KEY_LAST_APPLIED)?.flatten();
    let last_membership: Membership =
        read_meta(db, &snap, KEY_LAST_MEMBERSHIP)?.unwrap_or_default();

    // Each table's entries, encoded as a map's entries, and how many.
    let mut tables: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new()); Table::ALL.len()];
    let mut counters: Option<Vec<u8>> = None;
    let header = FORMAT_VERSION.to_le_bytes();
    for item in snap.iterator_cf(db::cf(db, CF_SM)?, IteratorMode::Start) {
        let (k, v) = item.map_err(|source| Error::Rocks {
            op: "read state machine records",
            source,
        })?;
        let (table, key) = record_key(&k)?;
        let body = v
            .strip_prefix(&header[..])
            .ok_or_else(|| bad_key(&k, "a record of another format version"))?;
        if table == Table::Counters {
            counters = Some(body.to_vec());
            continue;
        }
        let slot = Table::ALL
            .iter()
            .position(|x| *x == table)
            .ok_or_else(|| bad_key(&k, "unknown table"))?;
        let (n, out) = &mut tables[slot];
        *n += 1;
        *out = postcard::to_extend(&key.len(), std::mem::take(out)).map_err(|source| {
            Error::Encode {
                what: "snapshot",
                source: caravel_model::codec::Error::Encode {
                    what: "snapshot",
                    source,
                },
            }
        })?;
        out.extend_from_slice(key);
        out.extend_from_slice(body);
    }
    let encode_err = |source| Error::Encode {
        what: "snapshot",
        source: caravel_model::codec::Error::Encode {
            what: "snapshot",
            source,
        },
    };
    let mut data = header.to_vec();
    for (table, (n, entries)) in Table::ALL.iter().zip(tables) {
        if *table == Table::Counters {
            match &counters {
                Some(c) => data.extend_from_slice(c),
                None => {
                    data = postcard::to_extend(&caravel_model::state::Counters::default(), data)
                        .map_err(encode_err)?
                }
            }
            continue;
        }
        data = postcard::to_extend(&n, data).map_err(encode_err)?;
        data.extend_from_slice(&entries);
    }
    Ok((
        data,
        Applied {
            last_applied,
            last_membership,
        },
    ))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.build()
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let a = self.lock_applied().map_err(read_sm_err)?;
        Ok((a.last_applied, a.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries).map_err(write_sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.current_snapshot()
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}
