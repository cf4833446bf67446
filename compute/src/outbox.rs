//! The outbox of execution reports: every state change gets the next per-node sequence number and
//! stays here until the orchestrator acknowledges it (after committing it through Raft). On a
//! reconnect the node replays [`Outbox::unacked_after`] the orchestrator's last committed number.
//!
//! # Durability
//!
//! [`Outbox::open`] keeps the outbox in `DIR/outbox.log`, so reports survive a restart (or a crash) of
//! the compute process: a report made while the link was down is delivered when the node is back,
//! whatever happened to the process meanwhile. The file is an append-only log of records
//!
//! ```text
//! [u32 LE length][u32 LE crc32 of the body][body: codec(Record)]
//! ```
//!
//! - `Push(seq, update)` is written and `fdatasync`ed before `push` returns (before the report is sent),
//!   so nothing the orchestrator may have seen is missing after a crash.
//! - `Ack(seq)` is written without a sync: losing an acknowledgement only replays reports the
//!   orchestrator already committed, and it deduplicates them by (node, sequence).
//! - `Base(seq)` starts a compacted file: numbering continues after `seq`.
//!
//! On open the log is replayed; a torn or corrupt tail (a crash mid-write, a bad sector) ends the
//! replay there, is reported in the log, and is cut off so new records follow valid ones. When the
//! file holds many more records than are pending, it is rewritten (`Base` + the pending pushes) to a
//! temporary file that is synced and renamed over the log (and the directory synced), so the file
//! stays proportional to what is unacknowledged.
//!
//! A write that fails (disk full, I/O error) is logged and counted in [`Outbox::write_errors`]; the
//! report is still kept in memory and sent — a failing disk must not stop a node from reporting.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use caravel_model::codec;
use caravel_model::execution::ExecutionUpdate;
use serde::{Deserialize, Serialize};

/// Name of the outbox file in its directory.
pub const OUTBOX_FILE: &str = "outbox.log";
/// Largest record accepted when reading the file back (a report with its run output fits easily).
const MAX_RECORD: usize = 16 << 20;
/// Rewrite the file when it holds this many records more than are pending.
const COMPACT_AFTER: u64 = 4096;

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Push(u64, Box<ExecutionUpdate>),
    Ack(u64),
    Base(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot open the outbox {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: File,
    /// Records in the file.
    records: u64,
}

#[derive(Debug, Default)]
pub struct Outbox {
    last_seq: u64,
    acked: u64,
    pending: BTreeMap<u64, ExecutionUpdate>,
    log: Option<LogFile>,
    write_errors: u64,
    /// What opening the file found wrong (a torn tail), for the node's log.
    recovered_note: Option<String>,
}

impl Outbox {
    /// An outbox in memory only (tests, or a node without a data dir).
    pub fn new() -> Self {
        Outbox::default()
    }

    /// An in-memory outbox whose numbering continues after `seq`.
    pub fn starting_after(seq: u64) -> Self {
        Outbox {
            last_seq: seq,
            acked: seq,
            ..Default::default()
        }
    }

    /// Opens (or creates) the durable outbox in `dir`, replaying what a previous process left.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        let path = dir.join(OUTBOX_FILE);
        let shown = path.display().to_string();
        let err = |source| OutboxError::Open {
            path: shown.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(err)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(err)?;
        let mut out = Outbox::new();
        let replay = out.replay(&data);
        if !replay.problems.is_empty() {
            out.recovered_note = Some(format!(
                "outbox {}: {}; kept every valid record ({} reports pending)",
                path.display(),
                replay.problems.join("; "),
                out.pending.len()
            ));
        }
        let damaged_middle = replay.skipped > 0;
        if replay.valid_end < data.len() && !damaged_middle {
            // Only a torn tail (a crash mid-append): cut it so new records follow valid ones.
            file.set_len(replay.valid_end as u64).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        let records = replay.records;
        out.log = Some(LogFile {
            path,
            file,
            records,
        });
        if damaged_middle {
            // Corrupt records between valid ones: rewrite the file from what was recovered, so it
            // is clean again (the bad bytes are reported above, not kept).
            out.compact().map_err(err)?;
        } else {
            out.maybe_compact();
        }
        Ok(out)
    }

    /// Applies every valid record in `data`. A record whose checksum or encoding is bad is skipped;
    /// a corrupt length is passed by searching for the next offset where a valid record starts,
    /// so one bad record never costs the valid ones after it. A torn record at the very end (a
    /// crash mid-append) ends the replay.
    fn replay(&mut self, data: &[u8]) -> Replay {
        let mut r = Replay::default();
        let mut at = 0;
        while at < data.len() {
            match read_record(&data[at..]) {
                RecordAt::Valid(len, rec) => {
                    self.apply_record(rec);
                    at += 8 + len;
                    r.records += 1;
                    r.valid_end = at;
                }
                RecordAt::Torn
                    if !data[at..].is_empty() && next_valid(&data[at + 1..]).is_none() =>
                {
                    r.problems.push(format!(
                        "a torn record at byte {at} (the last {} bytes)",
                        data.len() - at
                    ));
                    break;
                }
                RecordAt::Torn | RecordAt::Bad(_) => {
                    let why = match read_record(&data[at..]) {
                        RecordAt::Bad(why) => why,
                        _ => "a damaged record header".to_string(),
                    };
                    // Skip to where the next valid record starts.
                    match next_valid(&data[at + 1..]) {
                        Some(off) => {
                            r.problems
                                .push(format!("{why} at byte {at} ({} bytes skipped)", off + 1));
                            r.skipped += 1;
                            at += off + 1;
                        }
                        None => {
                            r.problems.push(format!(
                                "{why} at byte {at} (the last {} bytes)",
                                data.len() - at
                            ));
                            break;
                        }
                    }
                }
            }
        }
        r
    }

    fn apply_record(&mut self, rec: Record) {
        match rec {
            Record::Push(seq, u) => {
                self.last_seq = self.last_seq.max(seq);
                if seq > self.acked {
                    self.pending.insert(seq, *u);
                }
            }
            Record::Ack(seq) => {
                self.ack_in_memory(seq);
            }
            Record::Base(seq) => {
                self.last_seq = seq;
                self.acked = seq;
                self.pending.clear();
            }
        }
    }

    /// What opening found and repaired, if anything (log it).
    pub fn take_recovery_note(&mut self) -> Option<String> {
        self.recovered_note.take()
    }

    /// Writes that failed since start (the reports were kept in memory).
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    pub fn is_durable(&self) -> bool {
        self.log.is_some()
    }

    fn write(&mut self, rec: &Record, sync: bool) {
        let Some(log) = self.log.as_mut() else { return };
        let res = (|| -> std::io::Result<()> {
            let body = codec::encode(rec).map_err(std::io::Error::other)?;
            let mut buf = Vec::with_capacity(8 + body.len());
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
            log.file.write_all(&buf)?;
            if sync {
                log.file.sync_data()?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => log.records += 1,
            Err(e) => {
                self.write_errors += 1;
                tracing::error!(path = %log.path.display(), error = %e, "cannot write the report outbox; the report is kept in memory only");
            }
        }
    }

    /// Rewrites the file to `Base(acked)` + the pending reports when it has grown well past them.
    fn maybe_compact(&mut self) {
        let Some(log) = self.log.as_ref() else { return };
        if log.records < COMPACT_AFTER + self.pending.len() as u64 {
            return;
        }
        if let Err(e) = self.compact() {
            self.write_errors += 1;
            tracing::error!(error = %e, "cannot compact the report outbox");
        }
    }

    fn compact(&mut self) -> std::io::Result<()> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let tmp = log.path.with_extension("log.tmp");
        let mut buf = Vec::new();
        let mut records = 0u64;
        let mut put = |rec: &Record| -> std::io::Result<()> {
            let body = codec::encode(rec).map_err(std::io::Error::other)?;
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
            records += 1;
            Ok(())
        };
        put(&Record::Base(self.acked))?;
        for (seq, u) in &self.pending {
            put(&Record::Push(*seq, Box::new(u.clone())))?;
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &log.path)?;
        if let Some(dir) = log.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        log.file = OpenOptions::new().append(true).open(&log.path)?;
        log.records = records;
        Ok(())
    }

    /// Queues a report; returns its sequence number (1, 2, 3, … per node). Durable before it returns.
    pub fn push(&mut self, update: ExecutionUpdate) -> u64 {
        self.last_seq += 1;
        let seq = self.last_seq;
        self.write(&Record::Push(seq, Box::new(update.clone())), true);
        self.pending.insert(seq, update);
        seq
    }

    fn ack_in_memory(&mut self, seq: u64) -> bool {
        if seq <= self.acked {
            return false;
        }
        self.acked = seq.min(self.last_seq);
        self.pending = self.pending.split_off(&(seq + 1));
        true
    }

    /// Drops every report up to and including `seq`.
    pub fn ack(&mut self, seq: u64) {
        if self.ack_in_memory(seq) {
            self.write(&Record::Ack(self.acked), false);
            self.maybe_compact();
        }
    }

    /// The orchestrator's answer to `Hello`: it has committed every report up to `committed`. If that
    /// is beyond anything this outbox numbered, the node lost its outbox (a new data dir, or a node
    /// id reused): continue numbering after `committed`, renumbering what is pending, so no new
    /// report is mistaken for a duplicate. Otherwise it is a plain acknowledgement.
    pub fn rebase(&mut self, committed: u64) {
        if committed <= self.last_seq {
            self.ack(committed);
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.last_seq = committed;
        self.acked = committed;
        for (_, u) in pending {
            self.last_seq += 1;
            self.pending.insert(self.last_seq, u);
        }
        if self.log.is_some()
            && let Err(e) = self.compact()
        {
            self.write_errors += 1;
            tracing::error!(error = %e, "cannot rewrite the report outbox after renumbering");
        }
    }

    /// The reports after `seq` not yet acknowledged, in order.
    pub fn unacked_after(&self, seq: u64) -> Vec<(u64, ExecutionUpdate)> {
        self.pending
            .range(seq.saturating_add(1)..)
            .map(|(s, u)| (*s, u.clone()))
            .collect()
    }

    /// The number given to the last report pushed (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The highest acknowledged number.
    pub fn acked_seq(&self) -> u64 {
        self.acked
    }

    /// Reports not yet acknowledged.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// What replaying an outbox file found.
#[derive(Debug, Default)]
struct Replay {
    /// End of the last valid record.
    valid_end: usize,
    records: u64,
    /// Damaged records passed over between valid ones.
    skipped: u64,
    problems: Vec<String>,
}

/// One record at the front of a byte slice.
enum RecordAt {
    Valid(usize, Record),
    /// Shorter than its header says (or than a header).
    Torn,
    /// Complete but wrong (checksum, encoding, length).
    Bad(String),
}

fn read_record(rest: &[u8]) -> RecordAt {
    if rest.len() < 8 {
        return RecordAt::Torn;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len > MAX_RECORD {
        return RecordAt::Bad(format!("a record of {len} bytes (limit {MAX_RECORD})"));
    }
    if rest.len() < 8 + len {
        return RecordAt::Torn;
    }
    let body = &rest[8..8 + len];
    if crc32fast::hash(body) != crc {
        return RecordAt::Bad("a record with a bad checksum".into());
    }
    match codec::decode::<Record>(body) {
        Ok(rec) => RecordAt::Valid(len, rec),
        Err(e) => RecordAt::Bad(format!("an undecodable record ({e})")),
    }
}

/// The offset in `data` of the first valid record, if any.
fn next_valid(data: &[u8]) -> Option<usize> {
    (0..data.len()).find(|&i| matches!(read_record(&data[i..]), RecordAt::Valid(..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravel_model::ExecutionStateType;

    fn upd(id: &str) -> ExecutionUpdate {
        ExecutionUpdate {
            execution_id: id.into(),
            state: ExecutionStateType::Running,
            message: String::new(),
            run_output: None,
            published_result: None,
            topic: String::new(),
            time: 0,
        }
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        o.unacked_after(o.acked_seq())
            .iter()
            .map(|(s, _)| *s)
            .collect()
    }

    #[test]
    fn a_node_that_lost_its_outbox_numbers_after_what_the_orchestrator_committed() {
        let mut o = Outbox::new();
        o.push(upd("a"));
        o.rebase(8);
        assert_eq!(seqs(&o), vec![9]);
        assert_eq!(o.push(upd("b")), 10);
    }

    #[test]
    fn a_normal_answer_is_an_acknowledgement() {
        let mut o = Outbox::new();
        o.push(upd("a"));
        o.push(upd("b"));
        o.rebase(1);
        assert_eq!(o.unacked_after(o.acked_seq()).len(), 1);
        assert_eq!(o.last_seq(), 2);
    }

    #[test]
    fn numbers_increase_and_acks_drop_prefixes() {
        let mut o = Outbox::new();
        assert_eq!(o.push(upd("a")), 1);
        assert_eq!(o.push(upd("b")), 2);
        assert_eq!(o.push(upd("c")), 3);
        assert_eq!(
            o.unacked_after(1)
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        o.ack(2);
        assert_eq!(o.len(), 1);
        assert_eq!(o.acked_seq(), 2);
        o.ack(1);
        assert_eq!(o.acked_seq(), 2, "an old ack changes nothing");
        assert_eq!(o.unacked_after(0)[0].1.execution_id, "c");
        o.ack(99);
        assert!(o.is_empty());
        assert_eq!(o.push(upd("d")), 4);
        let o = Outbox::starting_after(10);
        assert_eq!(o.last_seq(), 10);
    }

    #[test]
    fn pending_reports_and_numbering_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Outbox::open(dir.path()).unwrap();
            assert!(o.is_durable());
            for id in ["a", "b", "c", "d"] {
                o.push(upd(id));
            }
            o.ack(2);
            // Dropped without any shutdown step, as a killed process would.
        }
        let mut o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.take_recovery_note(), None);
        assert_eq!(seqs(&o), vec![3, 4]);
        assert_eq!(o.unacked_after(0)[0].1.execution_id, "c");
        assert_eq!(o.push(upd("e")), 5, "numbering continues");
    }

    #[test]
    fn a_torn_tail_is_cut_and_what_precedes_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Outbox::open(dir.path()).unwrap();
            o.push(upd("a"));
            o.push(upd("b"));
        }
        let path = dir.path().join(OUTBOX_FILE);
        let full = std::fs::read(&path).unwrap();
        // Half of the second record, as a crash mid-write leaves it.
        let first_len = 8 + u32::from_le_bytes(full[0..4].try_into().unwrap()) as usize;
        std::fs::write(&path, &full[..first_len + (full.len() - first_len) / 2]).unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        let note = o.take_recovery_note().expect("the repair is reported");
        assert!(note.contains("torn"), "{note}");
        assert_eq!(seqs(&o), vec![1]);
        assert_eq!(o.push(upd("c")), 2);
        drop(o);
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!(seqs(&o), vec![1, 2], "records after the cut are readable");
        assert_eq!(o.unacked_after(1)[0].1.execution_id, "c");
    }

    #[test]
    fn a_corrupt_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Outbox::open(dir.path()).unwrap();
            o.push(upd("a"));
            o.push(upd("b"));
        }
        let path = dir.path().join(OUTBOX_FILE);
        let mut full = std::fs::read(&path).unwrap();
        let last = full.len() - 1;
        full[last] ^= 0xff;
        std::fs::write(&path, &full).unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        assert!(o.take_recovery_note().unwrap().contains("checksum"));
        assert_eq!(seqs(&o), vec![1]);
    }

    #[test]
    fn a_corrupt_record_in_the_middle_costs_only_itself() {
        for damage in ["a flipped byte in the body", "a corrupt length"] {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut o = Outbox::open(dir.path()).unwrap();
                for id in ["a", "b", "c", "d"] {
                    o.push(upd(id));
                }
            }
            let path = dir.path().join(OUTBOX_FILE);
            let mut full = std::fs::read(&path).unwrap();
            let first_len = 8 + u32::from_le_bytes(full[0..4].try_into().unwrap()) as usize;
            if damage.contains("length") {
                full[first_len..first_len + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            } else {
                full[first_len + 10] ^= 0xff;
            }
            std::fs::write(&path, &full).unwrap();
            let mut o = Outbox::open(dir.path()).unwrap();
            let note = o.take_recovery_note().expect("the damage is reported");
            assert!(note.contains("skipped"), "{damage}: {note}");
            assert_eq!(
                seqs(&o),
                vec![1, 3, 4],
                "{damage}: every valid record is kept"
            );
            assert_eq!(o.push(upd("e")), 5);
            drop(o);
            // The file was rewritten clean: nothing to report the next time.
            let mut o = Outbox::open(dir.path()).unwrap();
            assert!(o.take_recovery_note().is_none(), "{damage}");
            assert_eq!(seqs(&o), vec![1, 3, 4, 5]);
        }
    }

    #[test]
    fn the_file_is_compacted_and_renumbering_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Outbox::open(dir.path()).unwrap();
            for i in 0..(COMPACT_AFTER + 10) {
                let s = o.push(upd(&format!("e{i}")));
                o.ack(s);
            }
            o.push(upd("last"));
        }
        let size = std::fs::metadata(dir.path().join(OUTBOX_FILE))
            .unwrap()
            .len();
        assert!(size < 64 * 1024, "compacted: {size} bytes");
        let mut o = Outbox::open(dir.path()).unwrap();
        assert_eq!(seqs(&o), vec![COMPACT_AFTER + 11]);
        // The orchestrator knows more than this node (say its data dir was replaced).
        o.rebase(100_000);
        drop(o);
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!(seqs(&o), vec![100_001]);
        assert_eq!(o.unacked_after(0)[0].1.execution_id, "last");
        assert_eq!(o.last_seq(), 100_001);
    }
}

/// Golden outbox files as this version writes them (`tests/golden/<format>/`): every later version
/// must open every earlier one and find the same pending reports. `CARAVEL_BLESS=1` rewrites them.
#[cfg(test)]
mod golden {
    use super::*;
    use caravel_model::ExecutionStateType;

    const CURRENT: &str = "v1";

    fn update(id: &str, state: ExecutionStateType) -> ExecutionUpdate {
        ExecutionUpdate {
            execution_id: id.into(),
            state,
            message: format!("{id} is {state:?}"),
            run_output: None,
            published_result: None,
            topic: "Execution".into(),
            time: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn an_outbox_written_by_this_version_opens_with_its_pending_reports() {
        let golden = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(CURRENT)
            .join("outbox");
        if std::env::var_os("CARAVEL_BLESS").is_some() {
            let _ = std::fs::remove_dir_all(&golden);
            std::fs::create_dir_all(&golden).unwrap();
            let mut o = Outbox::open(&golden).unwrap();
            o.push(update("e-1", ExecutionStateType::Running));
            o.push(update("e-1", ExecutionStateType::Completed));
            o.push(update("e-2", ExecutionStateType::Failed));
            o.ack(1);
            o.rebase(1);
            return;
        }
        // Open a copy: opening may compact, and the fixture must stay as it was written.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(golden.join(OUTBOX_FILE), dir.path().join(OUTBOX_FILE)).unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.acked_seq(), 1);
        assert_eq!(o.last_seq(), 3);
        let pending = o.unacked_after(o.acked_seq());
        assert_eq!(
            pending,
            vec![
                (2, update("e-1", ExecutionStateType::Completed)),
                (3, update("e-2", ExecutionStateType::Failed)),
            ]
        );
    }
}
