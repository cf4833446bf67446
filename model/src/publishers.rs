//! Publishers (`Task.Publisher`) and the published results they leave on an execution
//! (`Execution.PublishedResult`), parsed once into types: by validation at submit, by the node that
//! publishes, and by the client that downloads (`job get`).
//!
//! ```text
//! Publisher      local {}   noop {}   s3 {Bucket, Key (template), Endpoint?, Region?, Encoding? (gzip|plain)}
//! Published      local {ExecutionID, NodeID}   s3 {Bucket, Key, Endpoint?, Region?, Encoding?}
//! ```
//! `s3managed` and `ipfs` are Bacalhau publishers Caravel refuses at submit, with the reason
//! ([`unsupported_publisher`]).

use crate::params::ParamError;
use crate::spec::{Params, SpecConfig};

/// Publisher types, lower-cased, as a spec may name them (two of them refused, see
/// [`unsupported_publisher`]).
pub const PUBLISHER_TYPES: &[&str] = &["local", "s3", "s3managed", "ipfs", "noop"];

/// Bacalhau publishers Caravel knows but does not offer, and why: refused at submit rather than
/// left to fail for want of a node (docs/compatibility.md).
pub fn unsupported_publisher(kind: &str) -> Option<&'static str> {
    match kind.to_ascii_lowercase().as_str() {
        "s3managed" => Some(
            "the s3managed publisher is not supported: Caravel's orchestrators hold no bucket to hand out pre-signed uploads",
        ),
        "ipfs" => Some(
            "the ipfs publisher is not supported: Caravel nodes read IPFS through a gateway but do not pin results",
        ),
        _ => None,
    }
}

/// How an `s3` publisher lays out the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum S3Encoding {
    /// One `.tar.gz` object (the default).
    #[default]
    Gzip,
    /// One object per file.
    Plain,
}

impl S3Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            S3Encoding::Gzip => "gzip",
            S3Encoding::Plain => "plain",
        }
    }
    fn parse(p: &Params) -> Result<Option<Self>, ParamError> {
        match text(p, "Encoding")
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            None => Ok(None),
            Some("gzip") => Ok(Some(S3Encoding::Gzip)),
            Some("plain") => Ok(Some(S3Encoding::Plain)),
            Some(other) => Err(ParamError::new(
                "Encoding",
                format!("{other:?} is not supported"),
                "use gzip (one .tar.gz object, the default) or plain (one object per file)",
            )),
        }
    }
}

/// An `s3` publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Publisher {
    pub bucket: String,
    /// The key template (`{jobID}`, `{executionID}`, `{nodeID}`, `{date}`, `{time}`), without a
    /// leading `/`.
    pub key: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub encoding: S3Encoding,
}

/// A task's publisher, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publisher {
    Local,
    Noop,
    S3(S3Publisher),
}

fn text(p: &Params, key: &str) -> Option<String> {
    p.str(key)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

impl Publisher {
    /// The publisher type, as in `Task.Publisher.Type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Publisher::Local => "local",
            Publisher::Noop => "noop",
            Publisher::S3(_) => "s3",
        }
    }

    /// Whether results are published (and the execution goes through `Publishing`).
    pub fn keeps_results(&self) -> bool {
        !matches!(self, Publisher::Noop)
    }
}

impl TryFrom<&SpecConfig> for Publisher {
    type Error = Vec<ParamError>;

    /// From `Task.Publisher` (an empty type means noop; the spec's normalisation makes it local).
    fn try_from(spec: &SpecConfig) -> Result<Self, Vec<ParamError>> {
        let p = &spec.params;
        match spec.kind_lower().trim() {
            "local" => Ok(Publisher::Local),
            "noop" | "" => Ok(Publisher::Noop),
            "s3" => {
                let mut errors = Vec::new();
                let mut need = |k: &str| {
                    text(p, k).unwrap_or_else(|| {
                        errors.push(ParamError::new(
                            k,
                            "is required for the s3 publisher",
                            format!("set {k}"),
                        ));
                        String::new()
                    })
                };
                let bucket = need("Bucket");
                let key = need("Key");
                let encoding = S3Encoding::parse(p).unwrap_or_else(|e| {
                    errors.push(e);
                    None
                });
                if !errors.is_empty() {
                    return Err(errors);
                }
                Ok(Publisher::S3(S3Publisher {
                    bucket,
                    key: key.trim_start_matches('/').to_string(),
                    endpoint: text(p, "Endpoint"),
                    region: text(p, "Region"),
                    encoding: encoding.unwrap_or_default(),
                }))
            }
            k => {
                let why = unsupported_publisher(k)
                    .map(String::from)
                    .unwrap_or_else(|| format!("unknown publisher type {:?}", spec.kind));
                Err(vec![ParamError::new(
                    "Type",
                    why,
                    "publish with s3 (Bucket and Key of your own), local (`caravel job get` downloads it) or noop",
                )])
            }
        }
    }
}

/// Where an `s3` publisher put an execution's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Published {
    pub bucket: String,
    pub key: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Caravel's addition; absent from a result written by Bacalhau, where a key ending in
    /// `.tar.gz` (or `.tgz`) is an archive and any other a prefix.
    pub encoding: Option<S3Encoding>,
}

impl S3Published {
    /// Archive or prefix, from `Encoding` or else from the key.
    pub fn encoding(&self) -> S3Encoding {
        self.encoding.unwrap_or(
            if self.key.ends_with(".tar.gz") || self.key.ends_with(".tgz") {
                S3Encoding::Gzip
            } else {
                S3Encoding::Plain
            },
        )
    }
}

/// An execution's published result, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Kept on the node, served through its session.
    Local {
        execution_id: String,
        node_id: String,
    },
    S3(S3Published),
}

impl Published {
    pub fn to_spec(&self) -> SpecConfig {
        match self {
            Published::Local {
                execution_id,
                node_id,
            } => SpecConfig::new("local")
                .with("ExecutionID", execution_id.as_str())
                .with("NodeID", node_id.as_str()),
            Published::S3(s) => {
                let mut c = SpecConfig::new("s3")
                    .with("Bucket", s.bucket.as_str())
                    .with("Key", s.key.as_str())
                    .with("Endpoint", s.endpoint.as_deref().unwrap_or_default())
                    .with("Region", s.region.as_deref().unwrap_or_default());
                if let Some(e) = s.encoding {
                    c = c.with("Encoding", e.as_str());
                }
                c
            }
        }
    }
}

impl TryFrom<&SpecConfig> for Published {
    type Error = ParamError;

    fn try_from(spec: &SpecConfig) -> Result<Self, ParamError> {
        let p = &spec.params;
        match spec.kind_lower().trim() {
            "local" => Ok(Published::Local {
                execution_id: text(p, "ExecutionID").unwrap_or_default(),
                node_id: text(p, "NodeID").unwrap_or_default(),
            }),
            "s3" => {
                let bucket = text(p, "Bucket").ok_or_else(|| {
                    ParamError::new(
                        "Bucket",
                        "is missing from the s3 result",
                        "`caravel job describe` shows where the execution published",
                    )
                })?;
                let s = S3Published {
                    bucket,
                    key: p.str("Key").unwrap_or_default().to_string(),
                    endpoint: text(p, "Endpoint"),
                    region: text(p, "Region"),
                    encoding: S3Encoding::parse(p)?,
                };
                if s.encoding() == S3Encoding::Gzip && (s.key.is_empty() || s.key.ends_with('/')) {
                    return Err(ParamError::new(
                        "Key",
                        format!(
                            "s3://{}/{} is a gzip archive without an object key",
                            s.bucket, s.key
                        ),
                        "`caravel job describe` shows where the execution published",
                    ));
                }
                Ok(Published::S3(s))
            }
            _ => Err(ParamError::new(
                "Type",
                format!(
                    "the published result type {:?} is not one this client reads",
                    spec.kind
                ),
                "this client downloads local and s3 results",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_publisher_params_are_checked() {
        let p = Publisher::try_from(
            &SpecConfig::new("S3")
                .with("bucket", "b")
                .with("Key", "/out/{jobID}/")
                .with("Encoding", "Plain"),
        )
        .unwrap();
        let Publisher::S3(s) = p else {
            panic!("not s3")
        };
        assert_eq!(
            (s.key.as_str(), s.encoding),
            ("out/{jobID}/", S3Encoding::Plain)
        );
        let bad: Vec<String> = Publisher::try_from(&SpecConfig::new("s3").with("Encoding", "zip"))
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(bad, ["Bucket", "Key", "Encoding"]);
        let why = Publisher::try_from(&SpecConfig::new("s3Managed")).unwrap_err();
        assert!(
            why[0]
                .message
                .contains("s3managed publisher is not supported")
        );
        assert_eq!(
            Publisher::try_from(&SpecConfig::default()).unwrap(),
            Publisher::Noop
        );
    }

    #[test]
    fn published_results_round_trip_and_read_bacalhau_keys() {
        let s3 = Published::S3(S3Published {
            bucket: "b".into(),
            key: "r/e1/".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: None,
            encoding: Some(S3Encoding::Plain),
        });
        assert_eq!(Published::try_from(&s3.to_spec()).unwrap(), s3);
        let local = Published::Local {
            execution_id: "e1".into(),
            node_id: "n1".into(),
        };
        assert_eq!(Published::try_from(&local.to_spec()).unwrap(), local);
        // Written by Bacalhau: no Encoding, the key tells.
        let Published::S3(b) = Published::try_from(
            &SpecConfig::new("s3")
                .with("Bucket", "b")
                .with("Key", "x.tgz"),
        )
        .unwrap() else {
            panic!("not s3")
        };
        assert_eq!(b.encoding(), S3Encoding::Gzip);
        assert!(
            Published::try_from(
                &SpecConfig::new("s3")
                    .with("Bucket", "b")
                    .with("Encoding", "gzip")
            )
            .is_err()
        );
    }
}
