//! Input preparation: turns a task's `InputSources` into host files and directories
//! ([`PreparedInput`]) before the executor runs.
//!
//! Supported source types (reference §3.4): `inline` (an RFC 2397 `data:` URL, base64 or
//! percent-encoded, gzip-compressed when its media type says gzip or its bytes start with the gzip
//! magic; a gzipped tar archive becomes a directory), `local` / `localDirectory` (a host path under
//! one of the node's allow-listed paths), `urlDownload` (http/https, streamed to disk with a size
//! cap, a timeout and at most 5 redirects), `s3` (an object, or every object under a prefix, through
//! [`crate::s3`] with the node's credentials; `Filter` is a regex on keys, `VersionID` picks a
//! version, `ChecksumSHA256` is verified), `s3PreSigned` (its `PreSignedURL` fetched as a URL,
//! the object named by `SourceSpec.Key`), and `ipfs` (`CID` fetched from the node's HTTP gateway,
//! `Compute.IPFSGateway`, as `GET {gateway}/ipfs/{CID}?format=tar`; refused when none is configured). Anything
//! else is refused with a clear error.
//!
//! Layouts, as Bacalhau's: an `s3` input is always a directory at the target holding each object by
//! its key below the key's directory (`Key: dir/in.txt`, `Target: /inputs` → `/inputs/in.txt`;
//! `Key: data/` → `/inputs/a.csv`, `/inputs/sub/b.csv`); `urlDownload` and `inline` give a file at
//! the target (a gzipped tar archive inline becomes a directory); `ipfs` gives a file for a file CID
//! and the directory tree for a directory CID; `local` mounts the host path itself (a file or a
//! directory) at the target.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use caravel_model::archive;
use caravel_model::quantity::format_bytes;
use caravel_model::sources::{CreateAs, LocalSource, S3Source, Source};
use caravel_model::spec::InputSource;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::executor::PreparedInput;
use crate::metrics::ComputeMetrics;
use crate::s3::{S3Error, S3Settings, S3Target, error_chain};

/// Source types every node can prepare (`ipfs` is added when a gateway is configured), as reported
/// in `NodeInfo`.
pub const SUPPORTED_SOURCES: &[&str] = &[
    "inline",
    "local",
    "localDirectory",
    "urlDownload",
    "s3",
    "s3PreSigned",
];
/// Default cap of one downloaded (or inline, decompressed) input.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 1 << 30;
/// Default timeout of one download.
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Redirects followed by `urlDownload`.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input source type {kind:?} is not supported on this node (supported: {supported})")]
    Unsupported { kind: String, supported: String },
    #[error("ipfs inputs are not supported on this node: set Compute.IPFSGateway")]
    IpfsNotConfigured,
    #[error(
        "invalid ipfs CID {0:?}: expected a CID such as bafy… or Qm…, optionally followed by /path"
    )]
    BadCid(String),
    #[error("s3 input: {0}")]
    S3(#[from] S3Error),
    #[error(
        "s3 input s3://{bucket}/{key}: its SHA-256 is {actual}, not the ChecksumSHA256 {expected} the job gave"
    )]
    ChecksumMismatch {
        bucket: String,
        key: String,
        expected: String,
        actual: String,
    },
    #[error("input target {target:?} is invalid: {reason}")]
    BadTarget { target: String, reason: String },
    #[error("{kind} input: {reason}")]
    BadParams { kind: String, reason: String },
    #[error("invalid data URL: {0}")]
    BadDataUrl(String),
    #[error(
        "local path {path} is not under an allow-listed path of this node (Compute.AllowListedLocalPaths: {allowed})"
    )]
    NotAllowed { path: String, allowed: String },
    #[error("local path {path} may only be read: its allow-list entry {entry} is not :rw")]
    ReadWriteNotAllowed { path: String, entry: String },
    #[error("invalid allow-listed local path {entry:?}: {reason}")]
    BadAllowList { entry: String, reason: String },
    #[error(
        "local path {0} does not exist (set CreateAs: dir or file, with ReadWrite, to create it)"
    )]
    NotFound(String),
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{what} is larger than the limit of {}", format_bytes(*.limit))]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InputError {
    let what = what.into();
    move |e| InputError::Io {
        what,
        reason: e.to_string(),
    }
}

/// One entry of `Compute.AllowListedLocalPaths`: `/path`, `/path:ro` or `/path:rw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPath {
    /// As configured (for messages).
    pub entry: String,
    pub path: PathBuf,
    pub read_write: bool,
}

impl AllowedPath {
    pub fn parse(entry: &str) -> Result<Self, InputError> {
        let e = entry.trim();
        let (path, rw) = if let Some(p) = e.strip_suffix(":rw") {
            (p, true)
        } else if let Some(p) = e.strip_suffix(":ro") {
            (p, false)
        } else {
            (e, false)
        };
        if !path.starts_with('/') {
            return Err(InputError::BadAllowList {
                entry: entry.into(),
                reason: "not an absolute path".into(),
            });
        }
        if Path::new(path)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return Err(InputError::BadAllowList {
                entry: entry.into(),
                reason: "contains `..`".into(),
            });
        }
        // Canonical when it exists, so symlinked roots compare with canonical sources.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
        Ok(AllowedPath {
            entry: e.to_string(),
            path,
            read_write: rw,
        })
    }
}

/// Settings of input preparation.
#[derive(Debug, Clone)]
pub struct InputOptions {
    pub allow_listed_local_paths: Vec<String>,
    pub max_download_bytes: u64,
    pub download_timeout: Duration,
    /// `Compute.IPFSGateway`: base URL of an IPFS HTTP gateway; `ipfs` inputs are refused without.
    pub ipfs_gateway: Option<String>,
    /// Credentials and defaults of `s3` inputs.
    pub s3: S3Settings,
    /// `Compute.Fetch.AllowPrivate`: what URL inputs may reach besides public addresses.
    pub allow_private: Vec<String>,
}

impl Default for InputOptions {
    fn default() -> Self {
        InputOptions {
            allow_listed_local_paths: Vec::new(),
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
            download_timeout: DEFAULT_DOWNLOAD_TIMEOUT,
            ipfs_gateway: None,
            s3: S3Settings::default(),
            allow_private: Vec::new(),
        }
    }
}

/// Prepares inputs. Build once per node; shares one HTTP client.
#[derive(Debug)]
pub struct InputPreparer {
    allow: Vec<AllowedPath>,
    max_download_bytes: u64,
    download_timeout: Duration,
    ipfs_gateway: Option<String>,
    s3: S3Settings,
    metrics: ComputeMetrics,
    /// The clients of `urlDownload` fetches and of the IPFS gateway, each with its guard: only the
    /// gateway's fetches may reach the gateway's host when it is local (a job's URL may not).
    client: OnceLock<Result<reqwest::Client, String>>,
    guard: std::sync::Arc<crate::fetch_guard::FetchGuard>,
    ipfs_client: OnceLock<Result<reqwest::Client, String>>,
    ipfs_guard: std::sync::Arc<crate::fetch_guard::FetchGuard>,
}

/// Which fetches a download is: a job's URL, or the node's IPFS gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Url,
    Gateway,
}

impl InputPreparer {
    pub fn new(opts: InputOptions) -> Result<Self, InputError> {
        let allow = opts
            .allow_listed_local_paths
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| AllowedPath::parse(e))
            .collect::<Result<_, _>>()?;
        let ipfs_gateway = opts
            .ipfs_gateway
            .map(|g| g.trim().trim_end_matches('/').to_string())
            .filter(|g| !g.is_empty());
        if let Some(g) = &ipfs_gateway
            && !(g.starts_with("http://") || g.starts_with("https://"))
        {
            return Err(InputError::Download {
                url: g.clone(),
                reason: "Compute.IPFSGateway must be an http:// or https:// URL".into(),
            });
        }
        // The configured IPFS gateway is the owner's choice: it may be a local daemon.
        let gateway_host = ipfs_gateway
            .as_deref()
            .and_then(caravel_model::admission::url_host);
        let guard = std::sync::Arc::new(crate::fetch_guard::FetchGuard::new(
            &opts.allow_private,
            None::<String>,
        ));
        let ipfs_guard = std::sync::Arc::new(crate::fetch_guard::FetchGuard::new(
            &opts.allow_private,
            gateway_host,
        ));
        Ok(InputPreparer {
            guard,
            ipfs_guard,
            ipfs_client: OnceLock::new(),
            allow,
            max_download_bytes: opts.max_download_bytes,
            download_timeout: opts.download_timeout,
            ipfs_gateway,
            s3: opts.s3,
            metrics: ComputeMetrics::new(),
            client: OnceLock::new(),
        })
    }

    /// Records input volume and time in `metrics` (the node's) instead of a private set.
    pub fn with_metrics(mut self, metrics: ComputeMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Source types this preparer handles, as reported in `NodeInfo`.
    pub fn supported_sources(&self) -> Vec<String> {
        let mut v: Vec<String> = SUPPORTED_SOURCES.iter().map(|s| s.to_string()).collect();
        if self.ipfs_gateway.is_some() {
            v.push("ipfs".into());
        }
        v
    }

    /// Prepares every input of a task under `dir` (one subdirectory per input), for partition
    /// `part` = (index, count) of its job: an s3 input with a `Partition` rule holds only the
    /// objects of that partition.
    pub async fn prepare(
        &self,
        inputs: &[InputSource],
        dir: &Path,
        part: (usize, usize),
    ) -> Result<Vec<PreparedInput>, InputError> {
        let mut out = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            out.push(
                self.prepare_part(input, &dir.join(i.to_string()), part)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Prepares one input into `dir` (created if needed; unused for `local`), whole.
    pub async fn prepare_one(
        &self,
        input: &InputSource,
        dir: &Path,
    ) -> Result<PreparedInput, InputError> {
        self.prepare_part(input, dir, (0, 1)).await
    }

    /// [`Self::prepare_one`] for partition (index, count) of the job.
    pub async fn prepare_part(
        &self,
        input: &InputSource,
        dir: &Path,
        part: (usize, usize),
    ) -> Result<PreparedInput, InputError> {
        let target = check_target(&input.target)?;
        let source = self.source_of(input)?;
        let started = Instant::now();
        let prepared = self.fetch(&source, dir, target, part).await?;
        if !matches!(source, Source::Local(_)) {
            let path = prepared.host_path.clone();
            let bytes = tokio::task::spawn_blocking(move || tree_size(&path))
                .await
                .unwrap_or(0);
            self.metrics
                .input_prepared(source.kind(), bytes, started.elapsed());
        }
        Ok(prepared)
    }

    /// The input's source, typed; a type this node does not handle is refused with the list.
    fn source_of(&self, input: &InputSource) -> Result<Source, InputError> {
        let unsupported = || InputError::Unsupported {
            kind: input.source.kind.clone(),
            supported: self.supported_sources().join(", "),
        };
        match Source::try_from(&input.source) {
            Ok(Source::Noop) => Err(unsupported()),
            Ok(s) => Ok(s),
            Err(errs) if errs.iter().any(|e| e.field == "Type") => Err(unsupported()),
            Err(errs) if errs.iter().any(|e| e.field == "CID") => Err(InputError::BadCid(
                input
                    .source
                    .params
                    .str("CID")
                    .unwrap_or_default()
                    .to_string(),
            )),
            Err(errs) => Err(InputError::BadParams {
                kind: input.source.kind.clone(),
                reason: errs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    async fn fetch(
        &self,
        source: &Source,
        dir: &Path,
        target: String,
        part: (usize, usize),
    ) -> Result<PreparedInput, InputError> {
        let read_only = |host_path| PreparedInput {
            host_path,
            target: target.clone(),
            read_only: true,
        };
        match source {
            Source::Inline { url } => {
                let (host_path, _) = self.inline(url, dir, &target).await?;
                Ok(read_only(host_path))
            }
            Source::Local(l) => self.local(l, target.clone()),
            Source::UrlDownload { url } => {
                let host_path = self.download(url, dir, &target, Via::Url).await?;
                Ok(read_only(host_path))
            }
            Source::S3PreSigned { url, key } => {
                // An S3 object through a URL someone with the credentials signed: fetched as a
                // URL (the node's own credentials are not used), laid out as an s3 input.
                let name = key
                    .rsplit('/')
                    .next()
                    .filter(|n| !n.is_empty() && *n != "." && *n != "..")
                    .unwrap_or("object");
                let dest = dir.join(file_name_of(&target));
                self.download(url, &dest, &format!("/{name}"), Via::Url)
                    .await?;
                Ok(read_only(dest))
            }
            Source::S3(s3) => {
                let host_path = self.s3(s3, dir, &target, part).await?;
                Ok(read_only(host_path))
            }
            Source::Ipfs { cid } => {
                let gateway = self
                    .ipfs_gateway
                    .as_deref()
                    .ok_or(InputError::IpfsNotConfigured)?;
                let host_path = self.ipfs(gateway, cid, dir, &target).await?;
                Ok(read_only(host_path))
            }
            Source::Noop => Err(InputError::Unsupported {
                kind: "noop".into(),
                supported: self.supported_sources().join(", "),
            }),
        }
    }

    /// An `s3` input: one object (a file), or the objects under a prefix (a directory).
    async fn s3(
        &self,
        src: &S3Source,
        dir: &Path,
        target: &str,
        (part_index, part_count): (usize, usize),
    ) -> Result<PathBuf, InputError> {
        let partition = src.partition.as_ref().filter(|_| part_count > 1);
        let bucket = src.bucket.as_str();
        let key = src.key.as_str();
        let version = src.version_id.as_deref();
        let checksum = src.checksum_sha256.as_deref();
        let filter = match &src.filter {
            Some(f) => Some(regex::Regex::new(f).map_err(|e| {
                S3Error::BadParams(format!(
                    "Filter {f:?} is not a valid regular expression: {e}"
                ))
            })?),
            None => None,
        };
        let t = S3Target::resolve(
            &self.s3,
            bucket,
            src.endpoint.as_deref(),
            src.region.as_deref(),
        );
        let store = crate::s3::store(&self.s3, &t)?;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let dest = dir.join(file_name_of(target));
        let limit = self.max_download_bytes;
        let work = async {
            // A key not ending in `/` names an object if one exists; otherwise it is a prefix.
            // (A partitioned input is always a listing: one object is in one partition.)
            if !key.is_empty() && !key.ends_with('/') && partition.is_none() {
                let opts = object_store::GetOptions {
                    version: version.map(String::from),
                    ..Default::default()
                };
                match store
                    .get_opts(&object_store::path::Path::from(key), opts)
                    .await
                {
                    Ok(res) => {
                        // As Bacalhau: a directory at the target, the object in it by its name
                        // (`Key: dir/in.txt`, `Target: /inputs` → `/inputs/in.txt`).
                        std::fs::create_dir_all(&dest)
                            .map_err(io(format!("creating {}", dest.display())))?;
                        let name = key.rsplit('/').next().unwrap_or(key);
                        if name.is_empty() || name == "." || name == ".." {
                            return Err(S3Error::BadParams(format!(
                                "Key {key:?} does not end in an object name"
                            ))
                            .into());
                        }
                        let sum = write_object(res, &dest.join(name), limit, &t, key).await?;
                        if let Some(expected) = checksum {
                            check_sha256(expected, &sum, &t.bucket, key)?;
                        }
                        return Ok(dest.clone());
                    }
                    Err(e) => match crate::s3::classify(&e, &t, key) {
                        S3Error::NoSuchKey { .. } if version.is_none() => {}
                        other => return Err(other.into()),
                    },
                }
            }
            if version.is_some() || checksum.is_some() {
                return Err(S3Error::BadParams(format!(
                    "VersionID and ChecksumSHA256 apply to a single object, and s3://{bucket}/{key} is not one"
                ))
                .into());
            }
            // Objects are listed under the key's directory and kept when their key starts with
            // the whole key (so `data/2024` matches `data/2024-01.csv` and `data/2024/x.csv`).
            let parent = match key.rfind('/') {
                Some(i) => &key[..i],
                None => "",
            };
            let list_prefix = (!parent.is_empty()).then(|| object_store::path::Path::from(parent));
            let mut listing = store.list(list_prefix.as_ref());
            let mut objects = Vec::new();
            // Objects under the key before partitioning: a partition may be empty, the key not.
            let mut matched = 0usize;
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| crate::s3::classify(&e, &t, key))?;
                let full = meta.location.as_ref().to_string();
                if !full.starts_with(key) {
                    continue;
                }
                if filter.as_ref().is_some_and(|f| !f.is_match(&full)) {
                    continue;
                }
                matched += 1;
                if partition
                    .as_ref()
                    .is_some_and(|r| !r.keeps(&full, key, part_index, part_count))
                {
                    continue;
                }
                let rel = if parent.is_empty() {
                    full.as_str()
                } else {
                    full.strip_prefix(parent)
                        .unwrap_or(&full)
                        .trim_start_matches('/')
                };
                if rel.is_empty()
                    || rel
                        .split('/')
                        .any(|c| c.is_empty() || c == "." || c == "..")
                {
                    tracing::warn!(key = %full, "s3 object skipped: its key is not a safe relative path");
                    continue;
                }
                objects.push((meta.location.clone(), rel.to_string()));
            }
            if matched == 0 {
                return Err(S3Error::NoSuchKey {
                    bucket: t.bucket.clone(),
                    key: key.to_string(),
                    endpoint: t.where_(),
                }
                .into());
            }
            std::fs::create_dir_all(&dest).map_err(io(format!("creating {}", dest.display())))?;
            let mut total: u64 = 0;
            for (loc, rel) in objects {
                let path = dest.join(&rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(io(format!("creating {}", parent.display())))?;
                }
                let res = store
                    .get(&loc)
                    .await
                    .map_err(|e| crate::s3::classify(&e, &t, loc.as_ref()))?;
                let remaining = limit.saturating_sub(total);
                write_object(res, &path, remaining, &t, loc.as_ref()).await?;
                total += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
            Ok(dest.clone())
        };
        match tokio::time::timeout(self.download_timeout, work).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => {
                let _ = std::fs::remove_dir_all(&dest).or_else(|_| std::fs::remove_file(&dest));
                Err(e)
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dest).or_else(|_| std::fs::remove_file(&dest));
                Err(S3Error::Unreachable {
                    bucket: t.bucket.clone(),
                    key: key.to_string(),
                    endpoint: t.where_(),
                    reason: format!("timed out after {} s", self.download_timeout.as_secs()),
                }
                .into())
            }
        }
    }

    async fn inline(
        &self,
        url: &str,
        dir: &Path,
        target: &str,
    ) -> Result<(PathBuf, bool), InputError> {
        let (mime, data) = decode_data_url(url)?;
        let gz = mime.to_ascii_lowercase().contains("gzip") || data.starts_with(&[0x1f, 0x8b]);
        let dir = dir.to_path_buf();
        let path = dir.join(file_name_of(target));
        let limits = archive::Limits::new(self.max_download_bytes);
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            if !gz {
                std::fs::write(&path, &data).map_err(io(format!("writing {}", path.display())))?;
                return Ok((path, false));
            }
            // Inflated straight to disk under the size and ratio caps, never into memory.
            let done = archive::inflate(&data[..], &path, limits, false).map_err(|e| match e {
                archive::ArchiveError::TooLarge { limit } => InputError::TooLarge {
                    what: "the decompressed inline input".into(),
                    limit,
                },
                other => InputError::BadDataUrl(format!("its gzip data: {other}")),
            })?;
            Ok((path, done.archive))
        })
        .await
        .map_err(|e| InputError::Io {
            what: "writing an inline input".into(),
            reason: e.to_string(),
        })?
    }

    fn local(&self, l: &LocalSource, target: String) -> Result<PreparedInput, InputError> {
        let src = l.source_path.as_str();
        let rw = l.read_write;
        if !src.starts_with('/') {
            return Err(InputError::NotAllowed {
                path: src.into(),
                allowed: self.allowed_text(),
            });
        }
        if Path::new(src)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return Err(InputError::NotAllowed {
                path: src.into(),
                allowed: self.allowed_text(),
            });
        }
        // Check the allow-list on the lexical path before touching the file system, then again on
        // the canonical path (symlinks must not lead out of the allowed tree).
        let lexical = self
            .allowed_entry(Path::new(src))
            .ok_or_else(|| InputError::NotAllowed {
                path: src.into(),
                allowed: self.allowed_text(),
            })?;
        if !Path::new(src).exists() {
            match l.create_as {
                CreateAs::Dir | CreateAs::File if rw => {
                    if !lexical.read_write {
                        return Err(InputError::ReadWriteNotAllowed {
                            path: src.into(),
                            entry: lexical.entry.clone(),
                        });
                    }
                    if l.create_as == CreateAs::Dir {
                        std::fs::create_dir_all(src).map_err(io(format!("creating {src}")))?;
                    } else {
                        if let Some(parent) = Path::new(src).parent() {
                            std::fs::create_dir_all(parent)
                                .map_err(io(format!("creating {}", parent.display())))?;
                        }
                        std::fs::File::create(src).map_err(io(format!("creating {src}")))?;
                    }
                }
                _ => return Err(InputError::NotFound(src.into())),
            }
        }
        let canonical = std::fs::canonicalize(src).map_err(io(format!("resolving {src}")))?;
        let entry = self
            .allowed_entry(&canonical)
            .ok_or_else(|| InputError::NotAllowed {
                path: format!("{src} (resolves to {})", canonical.display()),
                allowed: self.allowed_text(),
            })?;
        if rw && !entry.read_write {
            return Err(InputError::ReadWriteNotAllowed {
                path: src.into(),
                entry: entry.entry.clone(),
            });
        }
        Ok(PreparedInput {
            host_path: canonical,
            target,
            read_only: !rw,
        })
    }

    /// The most specific allow-list entry containing `path`.
    fn allowed_entry(&self, path: &Path) -> Option<&AllowedPath> {
        self.allow
            .iter()
            .filter(|a| path.starts_with(&a.path))
            .max_by_key(|a| a.path.components().count())
    }

    fn allowed_text(&self) -> String {
        if self.allow.is_empty() {
            "none configured".into()
        } else {
            self.allow
                .iter()
                .map(|a| a.entry.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn guard(&self, via: Via) -> &std::sync::Arc<crate::fetch_guard::FetchGuard> {
        match via {
            Via::Url => &self.guard,
            Via::Gateway => &self.ipfs_guard,
        }
    }

    fn client(&self, via: Via) -> Result<&reqwest::Client, InputError> {
        let cell = match via {
            Via::Url => &self.client,
            Via::Gateway => &self.ipfs_client,
        };
        let c = cell.get_or_init(|| {
            crate::install_crypto_provider();
            let guard = self.guard(via).clone();
            // Every hop: at most MAX_REDIRECTS, http(s) only, address literals checked here (names
            // are checked by the resolver, on the address actually connected to).
            let policy = reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                if !matches!(attempt.url().scheme(), "http" | "https") {
                    let s = attempt.url().scheme().to_string();
                    return attempt.error(format!("a redirect to a {s}: URL"));
                }
                match guard.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            });
            reqwest::Client::builder()
                .redirect(policy)
                // No proxy from the environment: a proxy would resolve and fetch the job's URL
                // itself, past the guard.
                .no_proxy()
                .dns_resolver(std::sync::Arc::new(crate::fetch_guard::GuardedResolver {
                    guard: self.guard(via).clone(),
                }))
                .connect_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| e.to_string())
        });
        c.as_ref().map_err(|e| InputError::Download {
            url: String::new(),
            reason: format!("cannot build the HTTP client: {e}"),
        })
    }

    /// Downloads `url` to the file named after `target` in `dir`.
    async fn download(
        &self,
        url: &str,
        dir: &Path,
        target: &str,
        via: Via,
    ) -> Result<PathBuf, InputError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let path = dir.join(file_name_of(target));
        self.get_to_file(url, &path, via, None).await?;
        Ok(path)
    }

    /// An `ipfs` input, laid out as Bacalhau lays it out: a file CID is a file at the target, a
    /// directory CID the directory tree. The gateway is asked for a TAR (`?format=tar`, the IPFS
    /// gateway spec's deserialized UnixFS, rooted at one entry named after the CID), unpacked with
    /// the limits of any archive (no entry may leave the target; only files and directories are
    /// kept). A gateway that predates TAR responses answers with the file's bytes, which are kept
    /// as the file.
    async fn ipfs(
        &self,
        gateway: &str,
        cid: &str,
        dir: &Path,
        target: &str,
    ) -> Result<PathBuf, InputError> {
        let url = format!("{gateway}/ipfs/{cid}?format=tar");
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let name = file_name_of(target);
        let dest = dir.join(&name);
        let fetched = dir.join(format!(".{name}.ipfs-fetch"));
        let kind = self
            .get_to_file(&url, &fetched, Via::Gateway, Some("application/x-tar"))
            .await?;
        let is_tar = kind.is_some_and(|k| {
            k.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-tar")
        });
        if !is_tar {
            std::fs::rename(&fetched, &dest).map_err(io(format!("writing {}", dest.display())))?;
            return Ok(dest);
        }
        let staging = dir.join(format!(".{name}.ipfs-unpack"));
        let (out, at) = (dest.clone(), url.clone());
        let unpacked = tokio::task::spawn_blocking(move || -> Result<(), InputError> {
            let cleanup = || {
                let _ = std::fs::remove_file(&fetched);
                let _ = std::fs::remove_dir_all(&staging);
            };
            let result = (|| {
                let file = std::fs::File::open(&fetched)
                    .map_err(io(format!("reading {}", fetched.display())))?;
                std::fs::create_dir_all(&staging)
                    .map_err(io(format!("creating {}", staging.display())))?;
                archive::unpack_tar(std::io::BufReader::new(file), &staging).map_err(|e| {
                    InputError::Download {
                        url: at.clone(),
                        reason: format!("the gateway's TAR {e}"),
                    }
                })?;
                // The root is the archive's one top-level entry (a file or a directory).
                let top: Vec<PathBuf> = std::fs::read_dir(&staging)
                    .map_err(io(format!("reading {}", staging.display())))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                let moved = match top.as_slice() {
                    [root] => std::fs::rename(root, &out),
                    _ => std::fs::rename(&staging, &out),
                };
                moved.map_err(io(format!("writing {}", out.display())))
            })();
            cleanup();
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&out).or_else(|_| std::fs::remove_file(&out));
            }
            result
        })
        .await
        .map_err(|e| InputError::Io {
            what: format!("unpacking {url}"),
            reason: e.to_string(),
        })?;
        unpacked.map(|()| dest)
    }

    /// Streams `url` into the file `path` under the size cap and the timeout; returns the
    /// answer's Content-Type. `accept` is sent as the Accept header.
    async fn get_to_file(
        &self,
        url: &str,
        path: &Path,
        via: Via,
        accept: Option<&str>,
    ) -> Result<Option<String>, InputError> {
        let derr = |reason: String| InputError::Download {
            url: url.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| derr(format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(derr(format!(
                "scheme {:?} is not supported (use http or https)",
                parsed.scheme()
            )));
        }
        self.guard(via).check_url(&parsed).map_err(derr)?;
        let client = self.client(via)?;
        let limit = self.max_download_bytes;
        let fetch = async {
            let mut req = client.get(parsed.clone());
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            let resp = req.send().await.map_err(|e| derr(error_chain(&e)))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(derr(format!("the server answered HTTP {status}")));
            }
            let kind = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            if resp.content_length().is_some_and(|n| n > limit) {
                return Err(InputError::TooLarge {
                    what: format!("download {url}"),
                    limit,
                });
            }
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(io(format!("creating {}", path.display())))?;
            let mut got: u64 = 0;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| derr(error_chain(&e)))?;
                got += chunk.len() as u64;
                if got > limit {
                    return Err(InputError::TooLarge {
                        what: format!("download {url}"),
                        limit,
                    });
                }
                file.write_all(&chunk)
                    .await
                    .map_err(io(format!("writing {}", path.display())))?;
            }
            file.flush()
                .await
                .map_err(io(format!("writing {}", path.display())))?;
            Ok(kind)
        };
        match tokio::time::timeout(self.download_timeout, fetch).await {
            Ok(Ok(kind)) => Ok(kind),
            Ok(Err(e)) => {
                let _ = tokio::fs::remove_file(path).await;
                Err(e)
            }
            Err(_) => {
                let _ = tokio::fs::remove_file(path).await;
                Err(derr(format!(
                    "timed out after {} s",
                    self.download_timeout.as_secs()
                )))
            }
        }
    }
}

/// Streams an object into `path` (at most `limit` bytes); returns the SHA-256 of its bytes.
async fn write_object(
    res: object_store::GetResult,
    path: &Path,
    limit: u64,
    t: &S3Target,
    key: &str,
) -> Result<[u8; 32], InputError> {
    if res.meta.size > limit {
        return Err(InputError::TooLarge {
            what: format!("s3://{}/{key}", t.bucket),
            limit,
        });
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(io(format!("creating {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    let mut body = res.into_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| crate::s3::classify(&e, t, key))?;
        got += chunk.len() as u64;
        if got > limit {
            return Err(InputError::TooLarge {
                what: format!("s3://{}/{key}", t.bucket),
                limit,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(io(format!("writing {}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(hasher.finalize().into())
}

/// Compares a SHA-256 with the job's `ChecksumSHA256`, given as base64 (as S3 reports it) or hex.
fn check_sha256(
    expected: &str,
    actual: &[u8; 32],
    bucket: &str,
    key: &str,
) -> Result<(), InputError> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(actual);
    let hex: String = actual.iter().map(|b| format!("{b:02x}")).collect();
    let e = expected.trim();
    if e == b64
        || e.trim_end_matches('=') == b64.trim_end_matches('=')
        || e.eq_ignore_ascii_case(&hex)
    {
        Ok(())
    } else {
        Err(InputError::ChecksumMismatch {
            bucket: bucket.into(),
            key: key.into(),
            expected: e.into(),
            actual: b64,
        })
    }
}

/// Bytes of a file, or of the files under a directory (symlinks not followed).
pub(crate) fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// An input target must be an absolute guest path without `..`.
pub fn check_target(target: &str) -> Result<String, InputError> {
    let t = target.trim();
    let bad = |reason: &str| InputError::BadTarget {
        target: target.into(),
        reason: reason.into(),
    };
    if t.is_empty() {
        return Err(bad(
            "it is empty; set Target to where the task should see the input, e.g. /inputs",
        ));
    }
    if !t.starts_with('/') {
        return Err(bad("it must be an absolute path"));
    }
    if t.split('/').any(|c| c == "..") {
        return Err(bad("it must not contain `..`"));
    }
    Ok(t.to_string())
}

fn file_name_of(target: &str) -> String {
    target
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty() && *s != ".")
        .unwrap_or("input")
        .to_string()
}

/// Decodes an RFC 2397 `data:` URL into its media type and bytes.
pub fn decode_data_url(url: &str) -> Result<(String, Vec<u8>), InputError> {
    let t = url.trim();
    let rest = match (t.get(..5), t.get(5..)) {
        (Some(scheme), Some(rest)) if scheme.eq_ignore_ascii_case("data:") => rest,
        _ => {
            return Err(InputError::BadDataUrl(
                "it does not start with data:".into(),
            ));
        }
    };
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| InputError::BadDataUrl("it has no comma before the data".into()))?;
    let is_b64 = meta
        .split(';')
        .any(|p| p.trim().eq_ignore_ascii_case("base64"));
    let mime = meta.split(';').next().unwrap_or("").trim().to_string();
    let data = if is_b64 {
        let cleaned: String = payload
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let cleaned = percent_decode(&cleaned).map_err(InputError::BadDataUrl)?;
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|e| e.decode(&cleaned).ok())
            .ok_or_else(|| InputError::BadDataUrl("its base64 data does not decode".into()))?
    } else {
        percent_decode(payload.as_bytes()).map_err(InputError::BadDataUrl)?
    };
    Ok((mime, data))
}

fn percent_decode(s: impl AsRef<[u8]>) -> Result<Vec<u8>, String> {
    let b = s.as_ref();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(v) => {
                    out.push(v);
                    i += 3;
                }
                None => return Err(format!("bad percent escape at byte {i}")),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_base64_and_percent_forms() {
        assert_eq!(
            decode_data_url("data:text/plain;base64,aGVsbG8=").unwrap(),
            ("text/plain".into(), b"hello".to_vec())
        );
        assert_eq!(decode_data_url("data:,a%20b").unwrap().1, b"a b".to_vec());
        assert_eq!(
            decode_data_url("data:;base64,aGVsbG8").unwrap().1,
            b"hello".to_vec()
        );
        assert!(decode_data_url("http://x").is_err());
        assert!(decode_data_url("data:text/plain").is_err());
    }

    #[test]
    fn targets_must_be_absolute_without_dotdot() {
        assert!(check_target("/inputs").is_ok());
        assert!(check_target("inputs").is_err());
        assert!(
            check_target("/inputs/../etc")
                .unwrap_err()
                .to_string()
                .contains("..")
        );
        assert!(check_target("").is_err());
    }

    #[test]
    fn allow_list_entries_parse_modes() {
        let a = AllowedPath::parse("/nonexistent-caravel/data:rw").unwrap();
        assert!(a.read_write);
        assert_eq!(a.path, PathBuf::from("/nonexistent-caravel/data"));
        assert!(!AllowedPath::parse("/x:ro").unwrap().read_write);
        assert!(AllowedPath::parse("rel").is_err());
    }
}
