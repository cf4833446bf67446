//! Input sources (`InputSources[].Source`), parsed once into types — by validation at submit, by
//! the node that fetches them — instead of being read by string key in each place. As with engine
//! parameters ([`crate::params`]), keys match in any case and `null` is absent.
//!
//! ```text
//! inline         {URL: data:[<mime>][;base64],<data>}
//! urlDownload    {URL: http(s)://…}
//! s3             {Bucket, Key?, Region?, Endpoint?, Filter? (regex), VersionID?, ChecksumSHA256?, Partition?}
//! s3PreSigned    {PreSignedURL: http(s)://…, SourceSpec?: {Key, …}}
//! local          {SourcePath (absolute), ReadWrite?, CreateAs? (noCreate|dir|file)}   (also localDirectory)
//! ipfs           {CID}   (ipfs://CID and /ipfs/CID/path accepted)
//! noop           {}
//! ```

use crate::params::ParamError;
use crate::partition::PartitionConfig;
use crate::spec::{Params, SpecConfig};

/// Source types, lower-cased, as the spec may name them.
pub const SOURCE_TYPES: &[&str] = &[
    "s3",
    "urldownload",
    "local",
    "localdirectory",
    "ipfs",
    "inline",
    "noop",
    "s3presigned",
];

/// An `s3` source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S3Source {
    pub bucket: String,
    /// An object's key, or a prefix (no leading `/`); empty for the whole bucket.
    pub key: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// A regular expression the keys listed under a prefix must match (checked at parse).
    pub filter: Option<String>,
    pub version_id: Option<String>,
    pub checksum_sha256: Option<String>,
    pub partition: Option<PartitionConfig>,
}

/// What a `local` source does when `SourcePath` does not exist (with `ReadWrite` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreateAs {
    #[default]
    NoCreate,
    Dir,
    File,
}

/// A `local` (or `localDirectory`) source: a path on the node, within its allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalSource {
    pub source_path: String,
    pub read_write: bool,
    pub create_as: CreateAs,
}

/// An input source, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Inline {
        url: String,
    },
    UrlDownload {
        url: String,
    },
    S3(Box<S3Source>),
    S3PreSigned {
        url: String,
        /// `SourceSpec.Key`: names the object in the input's directory (else `object`).
        key: String,
    },
    Local(LocalSource),
    /// The CID, without `ipfs://` or `/ipfs/`, possibly with a path below it.
    Ipfs {
        cid: String,
    },
    Noop,
}

impl Source {
    /// The type as Caravel's metrics and messages write it.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Inline { .. } => "inline",
            Source::UrlDownload { .. } => "urlDownload",
            Source::S3(_) => "s3",
            Source::S3PreSigned { .. } => "s3PreSigned",
            Source::Local(_) => "local",
            Source::Ipfs { .. } => "ipfs",
            Source::Noop => "noop",
        }
    }
}

fn text(p: &Params, keys: &[&str]) -> Option<String> {
    p.get_any(keys)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

fn required(p: &Params, key: &str, kind: &str, hint: &str) -> Result<String, ParamError> {
    text(p, &[key]).ok_or_else(|| {
        ParamError::new(
            key,
            format!("is required for {kind} sources"),
            hint.to_string(),
        )
    })
}

/// `"…"` of at most 60 characters, for messages about long values.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn http_url(
    p: &Params,
    key: &str,
    kind: &str,
    (missing, bad): (&str, &str),
) -> Result<String, ParamError> {
    let u = required(p, key, kind, missing)?;
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(u)
    } else {
        Err(ParamError::new(
            key,
            format!("{} is not an http(s) URL", shorten(&u)),
            bad,
        ))
    }
}

/// A boolean as mapstructure's weak decoding reads one: `true`/`false`, or a string Go's
/// `strconv.ParseBool` takes.
fn boolean(p: &Params, key: &str) -> Result<bool, ParamError> {
    match p.get(key) {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(false),
        Some(serde_json::Value::String(s)) => {
            crate::parse::go_parse_bool(s.trim()).ok_or_else(|| {
                ParamError::new(
                    key,
                    format!("{s:?} is not a boolean"),
                    "write true or false",
                )
            })
        }
        Some(other) => Err(ParamError::new(
            key,
            format!("{other} is not a boolean"),
            "write true or false",
        )),
    }
}

impl S3Source {
    /// Reads the parameters of an `s3` source (also the `SourceSpec` of an `s3PreSigned` one).
    pub fn from_params(p: &Params) -> Result<Self, Vec<ParamError>> {
        let mut errors = Vec::new();
        let bucket = required(p, "Bucket", "s3", "set Bucket").unwrap_or_else(|e| {
            errors.push(e);
            String::new()
        });
        let key = p
            .str("Key")
            .unwrap_or_default()
            .trim()
            .trim_start_matches('/')
            .to_string();
        let filter = text(p, &["Filter"]);
        if let Some(f) = &filter
            && let Err(e) = regex::Regex::new(f)
        {
            errors.push(ParamError::new(
                "Filter",
                format!("{f:?} is not a valid regular expression: {e}"),
                "write a regular expression the keys must match, e.g. \\.csv$",
            ));
        }
        let partition = PartitionConfig::from_params(p).unwrap_or_else(|why| {
            errors.push(ParamError::new(
                "Partition",
                why.trim_start_matches("Partition: ").to_string(),
                "Partition takes Type (none, object, regex, substring, date) with Pattern, StartIndex/EndIndex or DateFormat",
            ));
            None
        });
        let version_id = text(p, &["VersionID", "VersionId"]);
        let checksum_sha256 = text(p, &["ChecksumSHA256"]);
        if (version_id.is_some() || checksum_sha256.is_some())
            && (key.is_empty() || key.ends_with('/'))
        {
            errors.push(ParamError::new(
                if version_id.is_some() {
                    "VersionID"
                } else {
                    "ChecksumSHA256"
                },
                format!("applies to a single object, and Key {key:?} names none"),
                "set Key to the object's key, or drop VersionID and ChecksumSHA256",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(S3Source {
            bucket,
            key,
            region: text(p, &["Region"]),
            endpoint: text(p, &["Endpoint"]),
            filter,
            version_id,
            checksum_sha256,
            partition,
        })
    }
}

/// `ipfs://CID`, `/ipfs/CID/path` or `CID`: the CID and path, each part a plain name.
fn ipfs_cid(raw: &str) -> Result<String, ParamError> {
    let cid = raw
        .trim()
        .trim_start_matches("ipfs://")
        .trim_start_matches("/ipfs/");
    let valid = !cid.is_empty()
        && cid.split('/').all(|part| {
            !part.is_empty()
                && part != ".."
                && part != "."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if valid {
        Ok(cid.to_string())
    } else {
        Err(ParamError::new(
            "CID",
            format!("{} is not a CID", shorten(raw)),
            "write the content identifier, e.g. bafybeig… (optionally ipfs://CID/path)",
        ))
    }
}

impl TryFrom<&SpecConfig> for Source {
    type Error = Vec<ParamError>;

    /// The source of an input. An unknown type is an error on `Type` (the field is then the
    /// source's, not one of its parameters).
    fn try_from(source: &SpecConfig) -> Result<Self, Vec<ParamError>> {
        let p = &source.params;
        let one = |r: Result<Source, ParamError>| r.map_err(|e| vec![e]);
        match source.kind_lower().trim() {
            "inline" => one(
                required(p, "URL", "inline", "set URL to a data: URL").and_then(|u| {
                    if u.starts_with("data:") && u.contains(',') {
                        Ok(Source::Inline { url: u })
                    } else {
                        Err(ParamError::new(
                            "URL",
                            format!("{} is not a data: URL", shorten(&u)),
                            "use data:[<mime>][;base64],<data>",
                        ))
                    }
                }),
            ),
            "urldownload" => one(http_url(
                p,
                "URL",
                "urlDownload",
                ("set URL", "use http:// or https://"),
            )
            .map(|url| Source::UrlDownload { url })),
            "s3" => S3Source::from_params(p).map(|s| Source::S3(Box::new(s))),
            "s3presigned" => {
                let url = http_url(
                    p,
                    "PreSignedURL",
                    "s3PreSigned",
                    (
                        "set PreSignedURL (and SourceSpec.Key to name the object)",
                        "give the pre-signed https:// URL of the object",
                    ),
                )
                .map_err(|e| vec![e])?;
                let key = p
                    .get("SourceSpec")
                    .and_then(|v| v.as_object())
                    .and_then(|m| {
                        m.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("Key"))
                            .and_then(|(_, v)| v.as_str())
                    })
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                Ok(Source::S3PreSigned { url, key })
            }
            "local" | "localdirectory" => {
                let mut errors = Vec::new();
                let source_path = match text(p, &["SourcePath", "Source", "Path"]) {
                    Some(s) if s.starts_with('/') => s,
                    Some(s) => {
                        errors.push(ParamError::new(
                            "SourcePath",
                            format!("{} is not an absolute path", shorten(&s)),
                            "use an absolute path on the node, within its allow-list",
                        ));
                        s
                    }
                    None => {
                        errors.push(ParamError::new(
                            "SourcePath",
                            "is required for local sources",
                            "set SourcePath to an allow-listed path on the node",
                        ));
                        String::new()
                    }
                };
                let read_write = boolean(p, "ReadWrite").unwrap_or_else(|e| {
                    errors.push(e);
                    false
                });
                let create_as = match text(p, &["CreateAs"]).map(|s| s.to_ascii_lowercase()) {
                    None => CreateAs::NoCreate,
                    Some(s) if s == "nocreate" => CreateAs::NoCreate,
                    Some(s) if s == "dir" => CreateAs::Dir,
                    Some(s) if s == "file" => CreateAs::File,
                    Some(s) => {
                        errors.push(ParamError::new(
                            "CreateAs",
                            format!("{s:?} is not noCreate, dir or file"),
                            "write CreateAs: dir (or file, or noCreate)",
                        ));
                        CreateAs::NoCreate
                    }
                };
                if errors.is_empty() {
                    Ok(Source::Local(LocalSource {
                        source_path,
                        read_write,
                        create_as,
                    }))
                } else {
                    Err(errors)
                }
            }
            "ipfs" => one(required(p, "CID", "ipfs", "set CID")
                .and_then(|c| ipfs_cid(&c))
                .map(|cid| Source::Ipfs { cid })),
            "noop" => Ok(Source::Noop),
            "" => Err(vec![ParamError::new(
                "Type",
                "is empty",
                "use inline, local, urlDownload, s3 or ipfs",
            )]),
            _ => Err(vec![ParamError::new(
                "Type",
                format!("unknown input source type {:?}", source.kind),
                "use inline, local, urlDownload, s3 or ipfs",
            )]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(s: &SpecConfig) -> Vec<String> {
        Source::try_from(s)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn s3_sources_read_in_any_case() {
        let s = SpecConfig::new("S3")
            .with("bucket", " data ")
            .with("KEY", "/in/2024/")
            .with("Filter", "\\.csv$")
            .with("region", "eu-west-1")
            .with("Endpoint", serde_json::Value::Null)
            .with("partition", json!({"type": "object"}));
        let Source::S3(s3) = Source::try_from(&s).unwrap() else {
            panic!("not s3")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.key.as_str(), s3.region.as_deref()),
            ("data", "in/2024/", Some("eu-west-1"))
        );
        assert_eq!(s3.endpoint, None);
        assert_eq!(s3.partition.unwrap().kind, "object");
    }

    #[test]
    fn every_bad_s3_param_is_named() {
        let s = SpecConfig::new("s3")
            .with("Key", "dir/")
            .with("Filter", "(")
            .with("Partition", json!({"Type": "regex"}))
            .with("VersionID", "v1");
        assert_eq!(fields(&s), ["Bucket", "Filter", "Partition", "VersionID"]);
    }

    #[test]
    fn local_sources_take_go_booleans_and_create_modes() {
        let s = SpecConfig::new("localDirectory")
            .with("SourcePath", "/data/x")
            .with("ReadWrite", "True")
            .with("CreateAs", "DIR");
        assert_eq!(
            Source::try_from(&s).unwrap(),
            Source::Local(LocalSource {
                source_path: "/data/x".into(),
                read_write: true,
                create_as: CreateAs::Dir,
            })
        );
        let bad = SpecConfig::new("local")
            .with("SourcePath", "data")
            .with("ReadWrite", "yes")
            .with("CreateAs", "symlink");
        assert_eq!(fields(&bad), ["SourcePath", "ReadWrite", "CreateAs"]);
    }

    #[test]
    fn urls_cids_and_types_are_checked() {
        assert_eq!(
            fields(&SpecConfig::new("inline").with("URL", "hello")),
            ["URL"]
        );
        assert_eq!(
            fields(&SpecConfig::new("urlDownload").with("URL", "ftp://x")),
            ["URL"]
        );
        assert_eq!(fields(&SpecConfig::new("s3PreSigned")), ["PreSignedURL"]);
        assert_eq!(
            Source::try_from(&SpecConfig::new("ipfs").with("CID", "ipfs://bafy123/a.txt")).unwrap(),
            Source::Ipfs {
                cid: "bafy123/a.txt".into()
            }
        );
        assert_eq!(
            fields(&SpecConfig::new("ipfs").with("CID", "bafy/../etc")),
            ["CID"]
        );
        assert_eq!(fields(&SpecConfig::new("gopher")), ["Type"]);
        let pre = SpecConfig::new("s3presigned")
            .with("PreSignedURL", "https://b.s3/x?sig=1")
            .with("SourceSpec", json!({"key": "in/a.txt"}));
        assert_eq!(
            Source::try_from(&pre).unwrap(),
            Source::S3PreSigned {
                url: "https://b.s3/x?sig=1".into(),
                key: "in/a.txt".into()
            }
        );
    }
}
