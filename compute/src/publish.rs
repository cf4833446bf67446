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

use std::io::Read;
use std::path::{Path, PathBuf};

use caravel_model::execution::{RUN_OUTPUT_PREVIEW, RunOutput};
use caravel_model::spec::SpecConfig;

/// Publisher types this node supports, as reported in `NodeInfo`.
pub const SUPPORTED_PUBLISHERS: &[&str] = &["local", "noop"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("publisher type {0:?} is not supported on this node (supported: local, noop)")]
    Unsupported(String),
    #[error("cannot publish the results: {0}")]
    Io(String),
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

/// A task's publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    Local,
    Noop,
}

impl Publisher {
    /// From `Task.Publisher` (an empty type means noop).
    pub fn from_spec(spec: &SpecConfig) -> Result<Self, PublishError> {
        match spec.kind.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Publisher::Local),
            "noop" | "" => Ok(Publisher::Noop),
            _ => Err(PublishError::Unsupported(spec.kind.clone())),
        }
    }

    /// Whether results are kept (and the execution goes through `Publishing`).
    pub fn keeps_results(self) -> bool {
        self == Publisher::Local
    }

    /// Publishes the results of a finished execution; returns the published result, if any.
    pub fn publish(
        self,
        paths: &ExecutionPaths,
        execution_id: &str,
        node_id: &str,
    ) -> Result<Option<SpecConfig>, PublishError> {
        match self {
            Publisher::Local => {
                tar_gz_dir(&paths.results, &paths.archive).map_err(|e| {
                    PublishError::Io(format!("archiving {}: {e}", paths.results.display()))
                })?;
                Ok(Some(
                    SpecConfig::new("local")
                        .with("ExecutionID", execution_id)
                        .with("NodeID", node_id),
                ))
            }
            Publisher::Noop => {
                // Keep only the log files.
                if let Ok(rd) = std::fs::read_dir(&paths.results) {
                    for e in rd.flatten() {
                        let p = e.path();
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            let _ = std::fs::remove_dir_all(&p);
                        }
                    }
                }
                Ok(None)
            }
        }
    }
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
    fn publishers_parse() {
        assert_eq!(
            Publisher::from_spec(&SpecConfig::new("Local")).unwrap(),
            Publisher::Local
        );
        assert_eq!(
            Publisher::from_spec(&SpecConfig::default()).unwrap(),
            Publisher::Noop
        );
        assert!(
            Publisher::from_spec(&SpecConfig::new("s3"))
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }
}
