//! Bounded decompression, shared by the compute node (inline and archive inputs) and `job get`
//! (published results): a gzip stream is inflated straight to disk and stopped as soon as its output
//! exceeds a size cap, or exceeds `max_ratio` times the compressed bytes read so far (a zip bomb is
//! caught after reading a few kilobytes of it, not after filling the disk). A tar archive is unpacked
//! from the same bounded stream, keeping only regular files and directories inside the target.
//!
//! ```text
//! compressed ──Counting──▶ GzDecoder ──Bounded(max_bytes, max_ratio)──▶ file | tar entries
//! ```

use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// Default cap of compressed-to-inflated ratio (checked once the output passes `RATIO_FLOOR`). Text
/// compresses 3–10×, logs up to ~50×; past 100× the data is mostly one repeated byte.
pub const DEFAULT_MAX_RATIO: u64 = 100;
/// Output below this size is never refused for its ratio (a small file of zeros is not a bomb).
pub const RATIO_FLOOR: u64 = 16 << 20;
/// Most entries unpacked from one archive (each costs an inode and a syscall or three).
pub const MAX_ENTRIES: u64 = 100_000;

/// Caps of one inflation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes the inflated stream may hold.
    pub max_bytes: u64,
    /// Most inflated bytes per compressed byte past `RATIO_FLOOR`; 0 disables the ratio check.
    pub max_ratio: u64,
}

impl Limits {
    pub fn new(max_bytes: u64) -> Self {
        Limits {
            max_bytes,
            max_ratio: DEFAULT_MAX_RATIO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("it inflates past {limit} bytes (the limit of one input or result)")]
    TooLarge { limit: u64 },
    #[error(
        "it inflates more than {ratio}× ({inflated} bytes from {compressed}): refused as a decompression bomb"
    )]
    Ratio {
        ratio: u64,
        inflated: u64,
        compressed: u64,
    },
    #[error("it holds more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("its entry {0} would land outside the target directory")]
    Escapes(String),
    #[error("it is not valid gzip/tar data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
}

/// What an unpacking did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Whether the data was a tar archive (unpacked into a directory) rather than one file.
    pub archive: bool,
    pub files: u64,
    /// Entries that are neither regular files nor directories (links, devices), not created.
    pub skipped: u64,
    pub bytes: u64,
}

/// Counts the compressed bytes the decoder has pulled.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// The inflated stream, failing with an `ArchiveError` inside the `io::Error` once over a limit.
struct Bounded<R> {
    inner: R,
    out: u64,
    compressed: Rc<Cell<u64>>,
    limits: Limits,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Never hand out more than one byte past the cap, so the check below sees the overflow.
        let room = self
            .limits
            .max_bytes
            .saturating_sub(self.out)
            .saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.out += n as u64;
        if self.out > self.limits.max_bytes {
            return Err(io::Error::other(ArchiveError::TooLarge {
                limit: self.limits.max_bytes,
            }));
        }
        let compressed = self.compressed.get().max(1);
        if self.limits.max_ratio > 0
            && self.out > RATIO_FLOOR
            && self.out / compressed > self.limits.max_ratio
        {
            return Err(io::Error::other(ArchiveError::Ratio {
                ratio: self.limits.max_ratio,
                inflated: self.out,
                compressed,
            }));
        }
        Ok(n)
    }
}

/// The `ArchiveError` a limit raised, however deep the tar crate wrapped it.
fn limit_in(e: &(dyn std::error::Error + 'static)) -> Option<ArchiveError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<ArchiveError>() {
            return Some(found.clone());
        }
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref())
            && let Some(found) = limit_in(inner)
        {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

fn classify(e: io::Error) -> ArchiveError {
    if let Some(found) = limit_in(&e) {
        return found;
    }
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            ArchiveError::Corrupt(e.to_string())
        }
        _ => ArchiveError::Io(e.to_string()),
    }
}

/// A gzip stream inflated under `limits`.
pub fn gunzip_reader<'a, R: Read + 'a>(compressed: R, limits: Limits) -> impl Read + 'a {
    let count = Rc::new(Cell::new(0));
    let counting = Counting {
        inner: compressed,
        count: count.clone(),
    };
    Bounded {
        inner: flate2::read::GzDecoder::new(counting),
        out: 0,
        compressed: count,
        limits,
    }
}

fn is_tar(head: &[u8]) -> bool {
    head.len() >= 512 && head.get(257..262) == Some(b"ustar")
}

/// Inflates a gzip stream to `dest`: a tar archive is unpacked into the directory `dest`, anything
/// else written as the file `dest`. With `tar_only`, the data is read as tar whatever its header
/// (old v7 archives carry no `ustar` magic), and data that is not tar is refused.
pub fn inflate(
    compressed: impl Read,
    dest: &Path,
    limits: Limits,
    tar_only: bool,
) -> Result<Unpacked, ArchiveError> {
    let mut stream = gunzip_reader(compressed, limits);
    let mut head = Vec::with_capacity(512);
    (&mut stream)
        .take(512)
        .read_to_end(&mut head)
        .map_err(classify)?;
    let rest = io::Cursor::new(head.clone()).chain(stream);
    if tar_only || is_tar(&head) {
        std::fs::create_dir_all(dest)
            .map_err(|e| ArchiveError::Io(format!("creating {}: {e}", dest.display())))?;
        let mut unpacked = unpack_tar(rest, dest)?;
        unpacked.archive = true;
        return Ok(unpacked);
    }
    let bytes = write_file(rest, dest)?;
    Ok(Unpacked {
        archive: false,
        files: 1,
        skipped: 0,
        bytes,
    })
}

fn write_file(mut from: impl Read, dest: &Path) -> Result<u64, ArchiveError> {
    let mut file = std::fs::File::create(dest)
        .map_err(|e| ArchiveError::Io(format!("creating {}: {e}", dest.display())))?;
    let copied = io::copy(&mut from, &mut file);
    match copied {
        Ok(n) => Ok(n),
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(dest);
            Err(classify(e))
        }
    }
}

/// Unpacks a (bounded) tar stream into `dst`, keeping regular files and directories whose paths stay
/// inside it. Refuses the whole archive at the first entry that would escape.
pub fn unpack_tar(from: impl Read, dst: &Path) -> Result<Unpacked, ArchiveError> {
    let mut ar = tar::Archive::new(from);
    ar.set_preserve_permissions(false);
    ar.set_unpack_xattrs(false);
    let mut done = Unpacked {
        archive: true,
        ..Unpacked::default()
    };
    let mut entries = 0u64;
    for entry in ar.entries().map_err(classify)? {
        let mut entry = entry.map_err(classify)?;
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries);
        }
        let path: PathBuf = entry.path().map_err(classify)?.into_owned();
        if !stays_inside(&path) {
            return Err(ArchiveError::Escapes(path.display().to_string()));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            done.skipped += 1;
            continue;
        }
        if kind.is_file() {
            done.files += 1;
            done.bytes += entry.size();
        }
        entry.unpack_in(dst).map_err(classify)?;
    }
    Ok(done)
}

fn stays_inside(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// A gzip stream of `n` zero bytes, written without holding them in memory.
    fn zeros_gz(n: u64) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![0u8; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            enc.write_all(&chunk[..k]).unwrap();
            left -= k as u64;
        }
        enc.finish().unwrap()
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_gzip_file_inflates_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let got = inflate(&gz(b"hello")[..], &dest, Limits::new(1 << 20), false).unwrap();
        assert!(!got.archive);
        assert_eq!(got.bytes, 5);
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
    }

    #[test]
    fn a_gzip_tar_unpacks_into_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        let data = gz(&tar_of(&[("a.txt", b"A"), ("sub/b.txt", b"BB")]));
        let got = inflate(&data[..], &dest, Limits::new(1 << 20), false).unwrap();
        assert!(got.archive);
        assert_eq!((got.files, got.bytes), (2, 3));
        assert_eq!(std::fs::read(dest.join("sub/b.txt")).unwrap(), b"BB");
    }

    #[test]
    fn a_bomb_is_stopped_by_its_ratio_after_a_few_kilobytes() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("bomb");
        let bomb = zeros_gz(200 << 20); // ~200 KiB that inflate to 200 MiB
        let err = inflate(&bomb[..], &dest, Limits::new(1 << 30), false).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Ratio { ratio: 100, .. }),
            "{err}"
        );
        assert!(!dest.exists(), "the partial output is removed");
    }

    #[test]
    fn the_size_cap_holds_whatever_the_ratio() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 20,
            max_ratio: 0,
        };
        let err =
            inflate(&zeros_gz(2 << 20)[..], &dir.path().join("f"), limits, false).unwrap_err();
        assert_eq!(err, ArchiveError::TooLarge { limit: 1 << 20 });
        // The same cap applies inside an archive, whatever the headers claim.
        let data = gz(&tar_of(&[("big", &vec![7u8; 2 << 20])]));
        let err = inflate(&data[..], &dir.path().join("d"), limits, false).unwrap_err();
        assert_eq!(err, ArchiveError::TooLarge { limit: 1 << 20 });
    }

    #[test]
    fn small_files_of_zeros_are_not_bombs() {
        let dir = tempfile::tempdir().unwrap();
        let got = inflate(
            &zeros_gz(RATIO_FLOOR)[..],
            &dir.path().join("z"),
            Limits::new(1 << 30),
            false,
        )
        .unwrap();
        assert_eq!(got.bytes, RATIO_FLOOR);
    }

    #[test]
    fn entries_escaping_the_target_refuse_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        // `append_data` refuses `..`, so write the name into the header directly.
        h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../escape.tx");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = gz(&b.into_inner().unwrap());
        let err = inflate(
            &data[..],
            &dir.path().join("d"),
            Limits::new(1 << 20),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Escapes(_)), "{err}");
        assert!(!dir.path().join("escape.tx").exists());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = gz(b"some text that is long enough");
        data.truncate(data.len() - 6);
        let err = inflate(
            &data[..],
            &dir.path().join("f"),
            Limits::new(1 << 20),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt(_)), "{err}");
    }
}
