//! Published results, laid out on this machine as `job get` writes them (reference §3.6): the files
//! `stdout`, `stderr`, `exitCode` and one directory per result path, straight in the output
//! directory (or under `raw/N` with `--raw`).
//!
//! ```text
//! urlDownload / s3PreSigned ──HTTP──▶ .tar.gz ──extract()──▶ DIR/
//! s3, Encoding gzip (Key *.tar.gz)  ──S3 GET──▶ .tar.gz ──extract()──▶ DIR/
//! s3, Encoding plain (Key = prefix) ──S3 LIST + GET──▶ DIR/<key below the prefix>
//! ```
//!
//! S3 results are read directly from the bucket with this machine's credentials (the usual `AWS_*`
//! environment variables), never through the orchestrator.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use caravel_model::archive::{ArchiveError, Limits};
use caravel_model::spec::SpecConfig;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::io::AsyncWriteExt;

/// Unpacks the tar.gz file `archive` into `target` under `limits` (inflated size and ratio), refusing
/// entries that would escape it; links and devices in the archive are not created.
pub fn extract(archive: &Path, target: &Path, limits: Limits) -> anyhow::Result<()> {
    let file = std::fs::File::open(archive)
        .with_context(|| format!("cannot open {}", archive.display()))?;
    let done = caravel_model::archive::inflate(std::io::BufReader::new(file), target, limits, true)
        .map_err(|e| match e {
            ArchiveError::TooLarge { .. } | ArchiveError::Ratio { .. } => {
                anyhow!("the results archive {e}; if you trust it, raise --max-size or --max-ratio (0 turns the ratio check off)")
            }
            ArchiveError::Escapes(p) => {
                anyhow!("refusing archive entry {p} outside the output directory")
            }
            other => anyhow!("the results archive: {other}"),
        })?;
    if done.skipped > 0 {
        eprintln!(
            "note: {} links or special files in the results were not created",
            done.skipped
        );
    }
    Ok(())
}

/// Downloads the archive at `url` next to `target` and unpacks it there, then removes the archive.
pub async fn fetch_archive(
    c: &crate::client::ApiClient,
    url: &str,
    target: &Path,
    timeout: Duration,
    limits: Limits,
) -> anyhow::Result<()> {
    let archive = target.join(".results.tar.gz");
    c.download_to(url, timeout, &archive, limits.max_bytes)
        .await
        .context("if you trust these results, raise --max-size")?;
    let unpacked = extract(&archive, target, limits);
    let _ = std::fs::remove_file(&archive);
    unpacked.with_context(|| format!("unpacking the results from {url}"))
}

fn stays_inside(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// How an S3 publisher stored the results (its `Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Layout {
    /// One `.tar.gz` object (`gzip`, Bacalhau's default).
    Archive,
    /// One object per file below a key prefix (`plain`).
    Prefix,
}

/// Where an execution's `s3` published result is: `{Bucket, Key, Endpoint?, Region?, Encoding?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Result {
    pub bucket: String,
    pub key: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub layout: S3Layout,
}

impl S3Result {
    /// Reads a published result. Without `Encoding`, a Key ending in `.tar.gz` (or `.tgz`) is an
    /// archive and any other Key a prefix.
    pub fn from_spec(spec: &SpecConfig) -> anyhow::Result<Self> {
        use caravel_model::publishers::{Published, S3Encoding};
        let s = match Published::try_from(spec) {
            Ok(Published::S3(s)) => s,
            Ok(Published::Local { .. }) => bail!("the result is kept on its node, not in S3"),
            Err(e) => bail!("the s3 result: {e}"),
        };
        Ok(S3Result {
            layout: match s.encoding() {
                S3Encoding::Gzip => S3Layout::Archive,
                S3Encoding::Plain => S3Layout::Prefix,
            },
            bucket: s.bucket,
            key: s.key,
            endpoint: s.endpoint,
            region: s.region,
        })
    }

    /// `s3://bucket/key`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Downloads the result into `target` (created if missing), laid out as a local result.
    pub async fn download(
        &self,
        target: &Path,
        timeout: Duration,
        limits: Limits,
    ) -> anyhow::Result<()> {
        check_credentials(|k| std::env::var(k).ok())?;
        let store = self.store(timeout)?;
        std::fs::create_dir_all(target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        match self.layout {
            S3Layout::Archive => {
                let archive = target.join(".results.tar.gz");
                let fetched = self
                    .fetch_object(
                        &store,
                        &ObjectPath::from(self.key.as_str()),
                        &archive,
                        limits,
                    )
                    .await;
                let unpacked = fetched.and_then(|()| {
                    extract(&archive, target, limits)
                        .with_context(|| format!("unpacking the results from {}", self.url()))
                });
                let _ = std::fs::remove_file(&archive);
                unpacked
            }
            S3Layout::Prefix => self.download_prefix(&store, target, limits).await,
        }
    }

    /// Streams one object into `dest`, refusing objects over `limits.max_bytes`.
    async fn fetch_object(
        &self,
        store: &AmazonS3,
        location: &ObjectPath,
        dest: &Path,
        limits: Limits,
    ) -> anyhow::Result<()> {
        let mut body = store
            .get(location)
            .await
            .map_err(|e| self.explain(e))?
            .into_stream();
        let mut file = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("cannot create {}", dest.display()))?;
        let mut written: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.explain(e))?;
            written += chunk.len() as u64;
            if written > limits.max_bytes {
                drop(file);
                let _ = tokio::fs::remove_file(dest).await;
                bail!(
                    "s3://{}/{location} is over {}; if you trust these results, raise --max-size",
                    self.bucket,
                    caravel_model::quantity::format_bytes(limits.max_bytes)
                );
            }
            file.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", dest.display()))?;
        }
        file.flush().await?;
        Ok(())
    }

    async fn download_prefix(
        &self,
        store: &AmazonS3,
        target: &Path,
        limits: Limits,
    ) -> anyhow::Result<()> {
        let prefix = ObjectPath::from(self.key.as_str());
        let mut listing = store.list(Some(&prefix));
        let mut files = 0usize;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.explain(e))?;
            let Some(rel) = relative_path(prefix.as_ref(), meta.location.as_ref())? else {
                continue;
            };
            let dest = target.join(rel);
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            self.fetch_object(store, &meta.location, &dest, limits)
                .await?;
            files += 1;
        }
        if files == 0 {
            bail!(
                "there are no objects under {}: the results were deleted or never uploaded",
                self.url()
            );
        }
        Ok(())
    }

    fn store(&self, timeout: Duration) -> anyhow::Result<AmazonS3> {
        // reqwest is built without a bundled TLS provider; the binary installs ring at start, and
        // this makes library callers (tests) work the same way. An already installed one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(timeout),
            )
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            });
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        b.build()
            .with_context(|| format!("cannot set up an S3 client for {}", self.url()))
    }

    fn explain(&self, e: object_store::Error) -> anyhow::Error {
        let at = match &self.endpoint {
            Some(ep) => format!("{} (endpoint {ep})", self.url()),
            None => self.url(),
        };
        match e {
            object_store::Error::NotFound { .. } => anyhow!(
                "{at} is gone: the object was deleted or expired, or the bucket does not exist"
            ),
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => anyhow!(
                "S3 refused this machine's credentials for {at}: check that AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials) are right and may read the bucket\ncause: {e}"
            ),
            other => anyhow!("downloading {at}: {other}"),
        }
    }
}

/// Refuses to go on without credentials in the environment: object_store would otherwise ask the
/// cloud instance-metadata service, which hangs off the cloud and says nothing useful.
pub fn check_credentials(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    let key_pair = set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY");
    let other = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|k| set(k));
    if key_pair || other {
        return Ok(());
    }
    let missing = if set("AWS_ACCESS_KEY_ID") {
        "AWS_SECRET_ACCESS_KEY is not set"
    } else if set("AWS_SECRET_ACCESS_KEY") {
        "AWS_ACCESS_KEY_ID is not set"
    } else {
        "no AWS credentials are set"
    };
    bail!(
        "the results are in S3 and {missing}: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION if the result names no Region) for an identity that may read the bucket, then run `caravel job get` again"
    )
}

/// Where the object `key` listed below `prefix` goes, relative to the output directory; `None` for a
/// directory marker (a key ending in `/`). Refuses keys that would leave the output directory.
pub fn relative_path(prefix: &str, key: &str) -> anyhow::Result<Option<PathBuf>> {
    let prefix = prefix.trim_matches('/');
    let rest = key
        .strip_prefix(prefix)
        .filter(|r| prefix.is_empty() || r.starts_with('/'))
        .ok_or_else(|| anyhow!("listed object {key:?} is not below the prefix {prefix:?}"))?;
    if rest.ends_with('/') {
        return Ok(None);
    }
    let rel: PathBuf = rest.split('/').filter(|p| !p.is_empty()).collect();
    if rel.as_os_str().is_empty() {
        return Ok(None);
    }
    if !stays_inside(&rel) {
        bail!("refusing object {key:?}: it would be written outside the output directory");
    }
    Ok(Some(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(params: &[(&str, &str)]) -> SpecConfig {
        params
            .iter()
            .fold(SpecConfig::new("s3"), |s, (k, v)| s.with(k, *v))
    }

    #[test]
    fn a_tar_gz_key_is_an_archive_and_other_keys_are_prefixes() {
        let r = S3Result::from_spec(&spec(&[
            ("Bucket", "b"),
            ("Key", "wc/j-1/e-1.tar.gz"),
            ("Endpoint", "http://127.0.0.1:5000"),
            ("Region", "eu-west-1"),
        ]))
        .unwrap();
        assert_eq!(r.layout, S3Layout::Archive);
        assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(r.region.as_deref(), Some("eu-west-1"));
        let r = S3Result::from_spec(&spec(&[("Bucket", "b"), ("Key", "wc/j-1/")])).unwrap();
        assert_eq!((r.layout, r.endpoint), (S3Layout::Prefix, None));
        let r = S3Result::from_spec(&spec(&[
            ("Bucket", "b"),
            ("Key", "wc/j-1/"),
            ("Encoding", "plain"),
        ]))
        .unwrap();
        assert_eq!(r.layout, S3Layout::Prefix);
        let e = S3Result::from_spec(&spec(&[("Key", "k")])).unwrap_err();
        assert!(e.to_string().contains("Bucket is missing"), "{e}");
        let e = S3Result::from_spec(&spec(&[("Bucket", "b"), ("Key", "k"), ("Encoding", "zip")]))
            .unwrap_err();
        assert!(
            e.to_string().contains("Encoding \"zip\" is not supported"),
            "{e}"
        );
    }

    #[test]
    fn prefix_objects_land_below_the_output_directory() {
        let rel = |p, k| relative_path(p, k).unwrap();
        assert_eq!(
            rel("wc/j-1/", "wc/j-1/stdout"),
            Some(PathBuf::from("stdout"))
        );
        assert_eq!(
            rel("wc/j-1", "wc/j-1/outputs/counts.txt"),
            Some(PathBuf::from("outputs/counts.txt"))
        );
        assert_eq!(rel("wc/j-1/", "wc/j-1/outputs/"), None);
        assert_eq!(rel("", "exitCode"), Some(PathBuf::from("exitCode")));
        assert!(relative_path("wc/j-1", "wc/j-10/stdout").is_err());
        assert!(relative_path("wc", "wc/../../etc/passwd").is_err());
    }

    #[test]
    fn missing_credentials_are_named_before_any_request() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = check_credentials(env(&[])).unwrap_err().to_string();
        assert!(
            e.contains("no AWS credentials") && e.contains("AWS_ACCESS_KEY_ID"),
            "{e}"
        );
        let e = check_credentials(env(&[("AWS_ACCESS_KEY_ID", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY is not set"), "{e}");
        check_credentials(env(&[
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "y"),
        ]))
        .unwrap();
    }

    #[test]
    fn archives_unpack_in_place_and_refuse_escaping_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, body) in [
            ("stdout", "hi\n"),
            ("exitCode", "0"),
            ("outputs/a.txt", "a"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        let gz = b.into_inner().unwrap().finish().unwrap();
        let file = dir.path().join("r.tar.gz");
        std::fs::write(&file, &gz).unwrap();
        extract(&file, dir.path(), Limits::new(1 << 20)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stdout")).unwrap(),
            "hi\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("outputs/a.txt")).unwrap(),
            "a"
        );
        // The tar crate will not write a `..` name, so set the header's bytes directly.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..11].copy_from_slice(b"../evil.txt");
        h.set_size(1);
        h.set_cksum();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        b.append(&h, &b"x"[..]).unwrap();
        let gz = b.into_inner().unwrap().finish().unwrap();
        let inner = dir.path().join("inner");
        std::fs::write(&file, &gz).unwrap();
        let e = extract(&file, &inner, Limits::new(1 << 20))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the output directory"), "{e}");
        assert!(!dir.path().join("evil.txt").exists());
    }
}
