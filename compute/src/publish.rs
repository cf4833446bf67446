//! The result layout of an execution and the publishers.
//!
//! Layout (reference §3.6), under `<data_dir>/executions/<execution_id>/`:
//!
//! ```text
//! results/stdout  results/stderr  results/exitCode  results/<ResultPath.Name>/…   ← what is published
//! inputs/<n>/…    (prepared inputs)       scratch/…   (staging for the executor)
//! ```
//!
//! The `local` publisher keeps the results and archives them as `<data_dir>/results/<id>.tar.gz`
//! (the contents of `results/`); its published result is `{"Type": "local", "Params":
//! {"ExecutionID", "NodeID"}}`, which the orchestrator serves by fetching the archive through the
//! node's session. The `noop` publisher keeps nothing but the stdout/stderr files (for `job logs`).
//!
//! The `s3` publisher (reference §3.5) uploads the same layout to `Bucket` under `Key`, a template
//! of `{jobID}`, `{executionID}`, `{nodeID}`, `{date}` (UTC YYYYMMDD) and `{time}` (UTC HHMMSS):
//! with `Encoding: gzip` (the default) as one `.tar.gz` object at `Key` (a `Key` ending in `/` gets
//! `{executionID}.tar.gz` appended), with `Encoding: plain` as one object per file under `Key/`.
//! Its published result is `{"Type": "s3", "Params": {"Bucket", "Key", "Endpoint", "Region",
//! "Encoding"}}` (what `job get` downloads; `Encoding` is Caravel's addition so a client knows
//! whether `Key` is an archive or a prefix); afterwards only stdout, stderr and exitCode stay on the
//! node, as with `noop`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use caravel_model::execution::{RUN_OUTPUT_PREVIEW, RunOutput};
use caravel_model::spec::SpecConfig;
use object_store::ObjectStore;
use tokio::io::AsyncWriteExt;

use crate::s3::{S3Error, S3Settings, S3Target};

use caravel_model::publishers::{Published as PublishedResult, S3Published};
pub use caravel_model::publishers::{Publisher, S3Encoding, S3Publisher as S3Publish};

/// Publisher types this node supports, as reported in `NodeInfo`.
pub const SUPPORTED_PUBLISHERS: &[&str] = &["local", "noop", "s3"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("publisher type {0:?} is not supported on this node (supported: local, noop, s3)")]
    Unsupported(String),
    #[error("the publisher's {0}")]
    BadParams(String),
    #[error("cannot publish the results: {0}")]
    Io(String),
    #[error("cannot publish the results to s3: {0}")]
    S3(#[from] S3Error),
}

/// The directories and files of one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionPaths {
    pub root: PathBuf,
    pub results: PathBuf,
    pub inputs: PathBuf,
    pub scratch: PathBuf,
    /// `<data_dir>/results/<id>.tar.gz`, written by the local publisher.
    pub archive: PathBuf,
}

impl ExecutionPaths {
    pub fn new(data_dir: &Path, execution_id: &str) -> Self {
        let root = data_dir.join("executions").join(execution_id);
        ExecutionPaths {
            results: root.join("results"),
            inputs: root.join("inputs"),
            scratch: root.join("scratch"),
            archive: data_dir
                .join("results")
                .join(format!("{execution_id}.tar.gz")),
            root,
        }
    }
    pub fn stdout(&self) -> PathBuf {
        self.results.join("stdout")
    }
    pub fn stderr(&self) -> PathBuf {
        self.results.join("stderr")
    }
    pub fn exit_code(&self) -> PathBuf {
        self.results.join("exitCode")
    }
    pub fn result_dir(&self, name: &str) -> PathBuf {
        self.results.join(name)
    }
    /// Creates `results/`, `inputs/` and `scratch/`.
    pub fn create(&self) -> std::io::Result<()> {
        for d in [&self.results, &self.inputs, &self.scratch] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }
    /// Writes `results/exitCode` (the number as text, as Bacalhau).
    pub fn write_exit_code(&self, code: i32) -> std::io::Result<()> {
        std::fs::write(self.exit_code(), code.to_string())
    }
    /// Removes what a finished execution no longer needs: prepared inputs and scratch space.
    pub fn cleanup_work(&self) {
        let _ = std::fs::remove_dir_all(&self.inputs);
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The first [`RUN_OUTPUT_PREVIEW`] bytes of a file (cut back to a character boundary) and whether
/// there was more. A missing file reads as empty.
pub fn preview(path: &Path) -> (String, bool) {
    let Ok(f) = std::fs::File::open(path) else {
        return (String::new(), false);
    };
    let mut buf = Vec::with_capacity(RUN_OUTPUT_PREVIEW + 1);
    if f.take(RUN_OUTPUT_PREVIEW as u64 + 1)
        .read_to_end(&mut buf)
        .is_err()
    {
        return (String::new(), false);
    }
    let truncated = buf.len() > RUN_OUTPUT_PREVIEW;
    buf.truncate(RUN_OUTPUT_PREVIEW);
    let text = match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            // Cut an incomplete trailing character; replace real garbage.
            if bytes.len() - valid < 4 && std::str::from_utf8(&bytes[valid..]).is_err() && truncated
            {
                bytes.truncate(valid);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    (text, truncated)
}

/// `RunOutput` of an execution: previews of stdout and stderr, the exit code and an error.
pub fn run_output(
    paths: &ExecutionPaths,
    exit_code: i32,
    error_msg: &str,
    capped: (bool, bool),
) -> RunOutput {
    let (stdout, so_t) = preview(&paths.stdout());
    let (stderr, se_t) = preview(&paths.stderr());
    RunOutput {
        stdout,
        stdout_truncated: so_t || capped.0,
        stderr,
        stderr_truncated: se_t || capped.1,
        exit_code,
        error_msg: error_msg.to_string(),
    }
}

/// What the publisher needs to know about the execution.
#[derive(Debug, Clone)]
pub struct PublishContext<'a> {
    pub paths: &'a ExecutionPaths,
    pub execution_id: &'a str,
    pub job_id: &'a str,
    pub node_id: &'a str,
    pub s3: &'a S3Settings,
    /// When publishing started (for `{date}` and `{time}`).
    pub now: std::time::SystemTime,
}

/// A publisher's answer: the published result (if any) and the bytes it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub result: Option<SpecConfig>,
    pub bytes: u64,
}

/// The publisher of `Task.Publisher` (an empty type means noop), as this node runs it.
pub fn from_spec(spec: &SpecConfig) -> Result<Publisher, PublishError> {
    Publisher::try_from(spec).map_err(|errs| {
        if errs.iter().any(|e| e.field == "Type") {
            PublishError::Unsupported(spec.kind.clone())
        } else {
            PublishError::BadParams(
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
    })
}

/// Publishes the results of a finished execution; returns the published result, if any.
pub async fn publish(
    publisher: &Publisher,
    ctx: &PublishContext<'_>,
) -> Result<Published, PublishError> {
    match publisher {
        Publisher::Local => {
            let (results, archive) = (ctx.paths.results.clone(), ctx.paths.archive.clone());
            blocking(move || {
                tar_gz_dir(&results, &archive)
                    .map_err(|e| PublishError::Io(format!("archiving {}: {e}", results.display())))
            })
            .await?;
            Ok(Published {
                result: Some(
                    PublishedResult::Local {
                        execution_id: ctx.execution_id.to_string(),
                        node_id: ctx.node_id.to_string(),
                    }
                    .to_spec(),
                ),
                bytes: std::fs::metadata(&ctx.paths.archive)
                    .map(|m| m.len())
                    .unwrap_or(0),
            })
        }
        Publisher::Noop => {
            keep_only_logs(ctx.paths);
            Ok(Published {
                result: None,
                bytes: 0,
            })
        }
        Publisher::S3(spec) => {
            let out = publish_s3(spec, ctx).await;
            keep_only_logs(ctx.paths);
            out
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PublishError> + Send + 'static,
) -> Result<T, PublishError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PublishError::Io(format!("the publishing task failed: {e}")))?
}

/// Removes the result directories, keeping stdout, stderr and exitCode (for `job logs`).
fn keep_only_logs(paths: &ExecutionPaths) {
    if let Ok(rd) = std::fs::read_dir(&paths.results) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// `{jobID}`, `{executionID}`, `{nodeID}`, `{date}` (YYYYMMDD) and `{time}` (HHMMSS), in UTC.
pub fn render_key(
    template: &str,
    job_id: &str,
    execution_id: &str,
    node_id: &str,
    now: std::time::SystemTime,
) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let tod = secs % 86_400;
    template
        .replace("{jobID}", job_id)
        .replace("{executionID}", execution_id)
        .replace("{nodeID}", node_id)
        .replace("{date}", &format!("{y:04}{m:02}{d:02}"))
        .replace(
            "{time}",
            &format!("{:02}{:02}{:02}", tod / 3600, tod % 3600 / 60, tod % 60),
        )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

async fn publish_s3(spec: &S3Publish, ctx: &PublishContext<'_>) -> Result<Published, PublishError> {
    let target = S3Target::resolve(
        ctx.s3,
        &spec.bucket,
        spec.endpoint.as_deref(),
        spec.region.as_deref(),
    );
    let store: Arc<dyn ObjectStore> = crate::s3::store(ctx.s3, &target)?;
    let mut key = render_key(
        &spec.key,
        ctx.job_id,
        ctx.execution_id,
        ctx.node_id,
        ctx.now,
    );
    let mut bytes = 0;
    match spec.encoding {
        S3Encoding::Gzip => {
            if key.ends_with('/') {
                key.push_str(&format!("{}.tar.gz", ctx.execution_id));
            }
            let archive = ctx.paths.scratch.join("results.tar.gz");
            let (results, a) = (ctx.paths.results.clone(), archive.clone());
            blocking(move || {
                tar_gz_dir(&results, &a)
                    .map_err(|e| PublishError::Io(format!("archiving {}: {e}", results.display())))
            })
            .await?;
            bytes += upload_file(&store, &target, &archive, &key).await?;
            let _ = std::fs::remove_file(&archive);
        }
        S3Encoding::Plain => {
            if !key.ends_with('/') {
                key.push('/');
            }
            let results = ctx.paths.results.clone();
            let files = blocking(move || {
                let mut out = Vec::new();
                list_files(&results, "", &mut out)
                    .map_err(|e| PublishError::Io(format!("listing {}: {e}", results.display())))?;
                Ok(out)
            })
            .await?;
            for (path, rel) in files {
                bytes += upload_file(&store, &target, &path, &format!("{key}{rel}")).await?;
            }
        }
    }
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(Published {
        result: Some(
            PublishedResult::S3(S3Published {
                bucket: target.bucket.clone(),
                key,
                endpoint: some(&target.endpoint),
                region: some(&target.region),
                encoding: Some(spec.encoding),
            })
            .to_spec(),
        ),
        bytes,
    })
}

/// Regular files under `dir` (recursively, symlinks skipped) with their `/`-joined relative paths,
/// in name order.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<(PathBuf, String)>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        let t = e.file_type()?;
        if t.is_dir() {
            list_files(&e.path(), &format!("{rel}/"), out)?;
        } else if t.is_file() {
            out.push((e.path(), rel));
        }
    }
    Ok(())
}

/// Uploads one file (multipart when large); returns its size.
async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    target: &S3Target,
    path: &Path,
    key: &str,
) -> Result<u64, PublishError> {
    let location = object_store::path::Path::parse(key)
        .map_err(|e| S3Error::BadParams(format!("{key:?} is not a valid object key: {e}")))?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| PublishError::Io(format!("opening {}: {e}", path.display())))?;
    let mut w = object_store::buffered::BufWriter::new(store.clone(), location);
    let copied = tokio::io::copy(&mut file, &mut w).await;
    let result = match copied {
        Ok(n) => w.shutdown().await.map(|_| n),
        Err(e) => {
            let _ = w.abort().await;
            Err(e)
        }
    };
    result.map_err(|e| {
        // object_store errors come back wrapped in io::Error; keep their text for classification.
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<object_store::Error>())
        {
            Some(os) => PublishError::S3(crate::s3::classify(os, target, key)),
            None => PublishError::S3(S3Error::Other {
                bucket: target.bucket.clone(),
                key: key.to_string(),
                endpoint: target.where_(),
                reason: crate::s3::error_chain(&e),
            }),
        }
    })
}

/// Archives the contents of `src` (not `src` itself) as a gzipped tar at `dst`, atomically
/// (written beside it, then renamed). Symlinks are stored as links, never followed.
pub fn tar_gz_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = dst.with_extension("tmp");
    let file = std::fs::File::create(&tmp)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = e.path();
        if e.file_type()?.is_dir() {
            b.append_dir_all(&name, &path)?;
        } else {
            b.append_path_with_name(&path, &name)?;
        }
    }
    let gz = b.into_inner()?;
    let file = gz.finish()?;
    file.sync_all()?;
    std::fs::rename(&tmp, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_keeps_the_first_bytes_and_flags_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "short").unwrap();
        assert_eq!(preview(&p), ("short".into(), false));
        let long = "é".repeat(RUN_OUTPUT_PREVIEW);
        std::fs::write(&p, &long).unwrap();
        let (s, t) = preview(&p);
        assert!(t);
        assert_eq!(s.len(), RUN_OUTPUT_PREVIEW);
        assert!(s.chars().all(|c| c == 'é'));
        assert_eq!(preview(&dir.path().join("missing")), (String::new(), false));
    }

    #[test]
    fn key_templates_are_substituted_in_utc() {
        // 2026-11-28 04:42:49 UTC
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_840_969);
        assert_eq!(
            render_key(
                "r/{jobID}/{executionID}-{nodeID}/{date}T{time}",
                "j1",
                "e1",
                "n1",
                t
            ),
            "r/j1/e1-n1/20261128T044249"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn a_bad_publisher_is_named_by_what_is_wrong() {
        // The parameters themselves are checked in caravel_model::publishers.
        assert!(matches!(
            from_spec(&SpecConfig::new("s3").with("Key", "k")),
            Err(PublishError::BadParams(m)) if m.contains("Bucket is required")
        ));
        assert!(matches!(
            from_spec(&SpecConfig::new("gopher")),
            Err(PublishError::Unsupported(k)) if k == "gopher"
        ));
    }

    #[test]
    fn publishers_parse() {
        assert_eq!(
            from_spec(&SpecConfig::new("Local")).unwrap(),
            Publisher::Local
        );
        assert_eq!(from_spec(&SpecConfig::default()).unwrap(), Publisher::Noop);
        assert!(
            from_spec(&SpecConfig::new("ipfs"))
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }
}
