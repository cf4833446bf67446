//! S3 access shared by the `s3` input source and the `s3` publisher (object_store's S3 client).
//!
//! Credentials never come from a job: the node takes them from its own environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), with the default region from
//! `AWS_REGION` / `AWS_DEFAULT_REGION` and a default endpoint from `AWS_ENDPOINT_URL`. Without
//! credentials, requests go unsigned (public buckets). A job's `Endpoint` and `Region` override the
//! defaults; requests are path-style, and plain `http://` endpoints are allowed (S3-compatible
//! servers such as MinIO or moto).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

/// Region used when neither the job nor the node names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The node's S3 credentials and defaults.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Default region (`AWS_REGION`, else `AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// Default endpoint (`AWS_ENDPOINT_URL`); AWS itself when unset.
    pub endpoint: Option<String>,
    /// `Compute.S3.AllowedEndpoints`: other endpoints (URL patterns) a job may name; the node's
    /// credentials are sent to no other.
    pub allowed_endpoints: Vec<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allowed_endpoints", &self.allowed_endpoints)
            .finish()
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl S3Settings {
    /// From the node's environment.
    pub fn from_env() -> Self {
        S3Settings {
            access_key_id: env_var("AWS_ACCESS_KEY_ID"),
            secret_access_key: env_var("AWS_SECRET_ACCESS_KEY"),
            session_token: env_var("AWS_SESSION_TOKEN"),
            region: env_var("AWS_REGION").or_else(|| env_var("AWS_DEFAULT_REGION")),
            endpoint: env_var("AWS_ENDPOINT_URL"),
            allowed_endpoints: Vec::new(),
        }
    }

    /// Refuses a target whose endpoint may not get this node's credentials: AWS (no endpoint) and
    /// the node's own `AWS_ENDPOINT_URL` always may; any other only when `allowed_endpoints`
    /// lists it. Checked before any request is signed.
    pub fn check_endpoint(&self, t: &S3Target) -> Result<(), S3Error> {
        let e = t.endpoint.trim_end_matches('/');
        let own = self
            .endpoint
            .as_deref()
            .is_some_and(|o| o.trim_end_matches('/') == e);
        if e.is_empty()
            || own
            || self
                .allowed_endpoints
                .iter()
                .any(|p| caravel_model::admission::glob(p.trim().trim_end_matches('/'), e))
        {
            Ok(())
        } else {
            Err(S3Error::EndpointNotAllowed {
                endpoint: e.to_string(),
            })
        }
    }
}

/// Where a bucket lives: the job's `Endpoint`/`Region` resolved against the node's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    pub bucket: String,
    /// Empty for AWS.
    pub endpoint: String,
    pub region: String,
}

impl S3Target {
    pub fn resolve(
        settings: &S3Settings,
        bucket: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
    ) -> Self {
        let pick = |job: Option<&str>, node: &Option<String>| {
            job.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .or_else(|| node.clone())
        };
        S3Target {
            bucket: bucket.trim().to_string(),
            endpoint: pick(endpoint, &settings.endpoint)
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_default(),
            region: pick(region, &settings.region).unwrap_or_else(|| DEFAULT_REGION.into()),
        }
    }

    /// For messages: the endpoint, or AWS with its region.
    pub fn where_(&self) -> String {
        if self.endpoint.is_empty() {
            format!("AWS S3 ({})", self.region)
        } else {
            self.endpoint.clone()
        }
    }
}

/// What went wrong talking to S3, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    #[error(
        "S3 endpoint {endpoint} is not one this node sends its credentials to; its owner lists the allowed ones in Compute.S3.AllowedEndpoints (AWS and the node's AWS_ENDPOINT_URL are always allowed)"
    )]
    EndpointNotAllowed { endpoint: String },
    #[error("invalid s3 parameters: {0}")]
    BadParams(String),
    #[error("bucket {bucket:?} does not exist at {endpoint}; check Bucket, Endpoint and Region")]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error(
        "no object s3://{bucket}/{key} (and no object under that prefix) at {endpoint}; check Key (end it with / for a prefix) and Filter"
    )]
    NoSuchKey {
        bucket: String,
        key: String,
        endpoint: String,
    },
    #[error(
        "access to s3://{bucket}/{key} at {endpoint} was refused ({reason}); check the compute node's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and the bucket's policy"
    )]
    Denied {
        bucket: String,
        key: String,
        endpoint: String,
        reason: String,
    },
    #[error(
        "cannot reach S3 at {endpoint} for s3://{bucket}/{key}: {reason}; check Endpoint and the node's network"
    )]
    Unreachable {
        bucket: String,
        key: String,
        endpoint: String,
        reason: String,
    },
    #[error("s3://{bucket}/{key} at {endpoint}: {reason}")]
    Other {
        bucket: String,
        key: String,
        endpoint: String,
        reason: String,
    },
}

/// The full text of an error and its sources.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        cur = c.source();
    }
    s
}

/// The `<Code>` of an S3 XML error body, if the text holds one.
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(&text[start..end])
}

/// Maps an object_store error about `key` in `target` to an [`S3Error`].
pub fn classify(e: &object_store::Error, target: &S3Target, key: &str) -> S3Error {
    let text = error_chain(e);
    let (bucket, endpoint, key) = (target.bucket.clone(), target.where_(), key.to_string());
    let code = s3_code(&text).unwrap_or("");
    if code == "NoSuchBucket" || text.contains("NoSuchBucket") {
        return S3Error::NoSuchBucket { bucket, endpoint };
    }
    let denied_codes = [
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
    ];
    if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || denied_codes.contains(&code)
        || text.contains("403 Forbidden")
        || text.contains("401 Unauthorized")
    {
        let reason = if code.is_empty() {
            "HTTP 403".to_string()
        } else {
            code.to_string()
        };
        return S3Error::Denied {
            bucket,
            key,
            endpoint,
            reason,
        };
    }
    if matches!(e, object_store::Error::NotFound { .. }) || code == "NoSuchKey" {
        return S3Error::NoSuchKey {
            bucket,
            key,
            endpoint,
        };
    }
    let lower = text.to_ascii_lowercase();
    if [
        "error sending request",
        "connection refused",
        "dns error",
        "timed out",
        "connect error",
        "tcp connect",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
        return S3Error::Unreachable {
            bucket,
            key,
            endpoint,
            reason: text,
        };
    }
    S3Error::Other {
        bucket,
        key,
        endpoint,
        reason: text,
    }
}

/// An S3 client for one bucket.
pub fn store(settings: &S3Settings, target: &S3Target) -> Result<Arc<AmazonS3>, S3Error> {
    if target.bucket.is_empty() {
        return Err(S3Error::BadParams("Bucket is empty".into()));
    }
    settings.check_endpoint(target)?;
    crate::install_crypto_provider();
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&target.bucket)
        .with_region(&target.region)
        .with_virtual_hosted_style_request(false)
        // A missing object or bucket is an answer, not a reason to retry for minutes.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
        })
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(10))
                .with_timeout(Duration::from_secs(300))
                .with_allow_http(target.endpoint.starts_with("http://")),
        );
    if !target.endpoint.is_empty() {
        if !(target.endpoint.starts_with("http://") || target.endpoint.starts_with("https://")) {
            return Err(S3Error::BadParams(format!(
                "Endpoint {:?} must start with http:// or https://",
                target.endpoint
            )));
        }
        b = b.with_endpoint(&target.endpoint);
    }
    match (&settings.access_key_id, &settings.secret_access_key) {
        (Some(id), Some(secret)) => {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(t) = &settings.session_token {
                b = b.with_token(t);
            }
        }
        // No credentials on the node: anonymous requests (public buckets). Never fall back to
        // instance metadata, which blocks for seconds off EC2.
        _ => b = b.with_skip_signature(true),
    }
    b.build().map(Arc::new).map_err(|e| {
        S3Error::BadParams(format!(
            "cannot configure the S3 client for bucket {:?}: {}",
            target.bucket,
            error_chain(&e)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_job_values_over_node_defaults() {
        let node = S3Settings {
            region: Some("eu-west-1".into()),
            endpoint: Some("http://minio:9000/".into()),
            ..Default::default()
        };
        let t = S3Target::resolve(&node, "b", None, Some(" "));
        assert_eq!(
            (t.endpoint.as_str(), t.region.as_str()),
            ("http://minio:9000", "eu-west-1")
        );
        let t = S3Target::resolve(&node, "b", Some("http://x"), Some("us-west-2"));
        assert_eq!(
            (t.endpoint.as_str(), t.region.as_str()),
            ("http://x", "us-west-2")
        );
        let t = S3Target::resolve(&S3Settings::default(), "b", None, None);
        assert_eq!(t.where_(), "AWS S3 (us-east-1)");
    }

    #[test]
    fn credentials_go_only_to_aws_the_nodes_endpoint_and_allowed_ones() {
        let node = S3Settings {
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("secret".into()),
            endpoint: Some("http://minio.corp:9000".into()),
            allowed_endpoints: vec!["https://*.backup.corp".into()],
            ..Default::default()
        };
        let ok = |e: Option<&str>| store(&node, &S3Target::resolve(&node, "b", e, None)).is_ok();
        assert!(ok(None), "the node's own endpoint");
        assert!(ok(Some("http://minio.corp:9000/")));
        assert!(ok(Some("https://eu.backup.corp")));
        let aws = S3Settings {
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("secret".into()),
            ..Default::default()
        };
        assert!(
            store(&aws, &S3Target::resolve(&aws, "b", None, None)).is_ok(),
            "AWS"
        );
        let e = store(
            &node,
            &S3Target::resolve(&node, "b", Some("http://attacker.example:80"), None),
        )
        .unwrap_err();
        assert!(matches!(e, S3Error::EndpointNotAllowed { .. }), "{e}");
        assert!(e.to_string().contains("Compute.S3.AllowedEndpoints"), "{e}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = S3Settings {
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("very-secret".into()),
            ..Default::default()
        };
        let text = format!("{s:?}");
        assert!(
            text.contains("AKID") && !text.contains("very-secret"),
            "{text}"
        );
    }

    #[test]
    fn s3_codes_are_read_from_error_bodies() {
        assert_eq!(
            s3_code("... <Error><Code>NoSuchBucket</Code><Message>x</Message>"),
            Some("NoSuchBucket")
        );
        assert_eq!(s3_code("nothing"), None);
    }
}
