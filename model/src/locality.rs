//! Data locality: a compute node declares the data it holds or is near (`Compute.Data`), and the
//! scheduler prefers, among the nodes that can run a job, those holding more of its inputs.
//!
//! A declaration is one of
//!
//! ```text
//! s3://BUCKET[/PREFIX]     s3 inputs of that bucket whose Key starts with PREFIX
//! /PATH                    local inputs whose SourcePath is PATH or below it
//! http(s)://HOST[/PATH]    urlDownload inputs whose URL starts with it
//! ipfs://CID               ipfs inputs of that CID
//! ```
//!
//! The node advertises them in its label `caravel.io/data`, separated by spaces. Besides, an s3
//! input with a `Region` is near a node whose `region` label (or `topology.kubernetes.io/region`)
//! is that region. The scheduler ranks by the number of a job's inputs a node holds, then by load;
//! the placement event in the job's history names what the chosen node holds.

use std::collections::BTreeMap;

use crate::sources::Source;
use crate::spec::Job;

/// The label a node declares its data in.
pub const DATA_LABEL: &str = "caravel.io/data";
/// Region labels an s3 input's `Region` is compared with.
pub const REGION_LABELS: &[&str] = &["region", "topology.kubernetes.io/region"];
/// Most declarations a node may make.
pub const MAX_DECLARATIONS: usize = 256;

/// Checks one declaration; the error says what is wrong.
pub fn check_declaration(d: &str) -> Result<(), String> {
    let ok = if let Some(rest) = d.strip_prefix("s3://") {
        rest.split('/').next().is_some_and(|b| !b.is_empty())
    } else if let Some(rest) = d
        .strip_prefix("https://")
        .or_else(|| d.strip_prefix("http://"))
    {
        rest.split('/').next().is_some_and(|h| !h.is_empty())
    } else if let Some(rest) = d.strip_prefix("ipfs://") {
        !rest.is_empty()
    } else {
        d.starts_with('/') && !d.split('/').any(|c| c == "..")
    };
    if !ok || d.chars().any(char::is_whitespace) {
        return Err(format!(
            "{d:?} is not s3://BUCKET[/PREFIX], /PATH, http(s)://HOST[/PATH] or ipfs://CID"
        ));
    }
    Ok(())
}

/// The label value for a node's declarations.
pub fn to_label(declarations: &[String]) -> String {
    declarations.join(" ")
}

/// What the inputs of `job` a node with these labels holds: one description per input held.
pub fn held_inputs(job: &Job, labels: &BTreeMap<String, String>) -> Vec<String> {
    JobInputs::of(job).held_by(labels)
}

/// A job's inputs that a node can hold or be near (S3 objects, local paths, URLs, IPFS CIDs),
/// parsed once to be matched against many nodes.
#[derive(Debug, Clone, Default)]
pub struct JobInputs(Vec<Source>);

impl JobInputs {
    pub fn of(job: &Job) -> Self {
        JobInputs(
            job.task()
                .map(|t| t.input_sources.as_slice())
                .unwrap_or(&[])
                .iter()
                .filter_map(|i| Source::try_from(&i.source).ok())
                .filter(|s| {
                    matches!(
                        s,
                        Source::S3(_)
                            | Source::Local(_)
                            | Source::UrlDownload { .. }
                            | Source::Ipfs { .. }
                    )
                })
                .collect(),
        )
    }

    /// Whether the job has no input a node could hold.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What of them a node with these labels holds: one description per input held.
    pub fn held_by(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let declared: Vec<&str> = labels
            .get(DATA_LABEL)
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default();
        let region = REGION_LABELS.iter().find_map(|k| labels.get(*k));
        let mut held = Vec::new();
        for source in &self.0 {
            held.extend(held_one(source, &declared, region));
        }
        held
    }
}

/// What a node that declares `declared` and lies in `region` holds of one input, described.
fn held_one(source: &Source, declared: &[&str], region: Option<&String>) -> Option<String> {
    match source {
        Source::S3(s) => {
            let url = format!("s3://{}/{}", s.bucket, s.key);
            let by_data = declared.iter().find(|d| {
                d.strip_prefix("s3://").is_some_and(|rest| {
                    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    bucket == s.bucket && s.key.starts_with(prefix)
                })
            });
            match (by_data, &s.region, region) {
                (Some(d), _, _) => Some(format!("{url} (declares {d})")),
                (None, Some(r), Some(nr)) if r == nr => Some(format!("{url} (in its region {r})")),
                _ => None,
            }
        }
        Source::Local(l) => declared
            .iter()
            .find(|d| {
                let root = if **d == "/" {
                    "/"
                } else {
                    d.trim_end_matches('/')
                };
                d.starts_with('/') && std::path::Path::new(&l.source_path).starts_with(root)
            })
            .map(|d| format!("{} (declares {d})", l.source_path)),
        Source::UrlDownload { url } => declared
            .iter()
            .find(|d| {
                (d.starts_with("http://") || d.starts_with("https://")) && url.starts_with(*d)
            })
            .map(|d| format!("{url} (declares {d})")),
        Source::Ipfs { cid } => declared
            .iter()
            .find(|d| {
                d.strip_prefix("ipfs://")
                    .is_some_and(|c| cid == c || cid.starts_with(&format!("{c}/")))
            })
            .map(|d| format!("ipfs://{cid} (declares {d})")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{InputSource, SpecConfig, Task};

    fn job(inputs: Vec<SpecConfig>) -> Job {
        Job {
            tasks: vec![Task {
                input_sources: inputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, source)| InputSource {
                        source,
                        target: format!("/in/{i}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_node_holds_the_inputs_its_declarations_cover() {
        let j = job(vec![
            SpecConfig::new("s3")
                .with("Bucket", "logs")
                .with("Key", "2026/12/")
                .with("Region", "eu-west-1"),
            SpecConfig::new("local").with("SourcePath", "/srv/data/x.csv"),
            SpecConfig::new("urlDownload").with("URL", "https://mirror.example/pkgs/a.tgz"),
            SpecConfig::new("ipfs").with("CID", "bafyabc/readme"),
        ]);
        let all = labels(&[(
            DATA_LABEL,
            "s3://logs/2026 /srv/data https://mirror.example/pkgs ipfs://bafyabc",
        )]);
        assert_eq!(
            held_inputs(&j, &all).len(),
            4,
            "{:?}",
            held_inputs(&j, &all)
        );
        let other_prefix = labels(&[(DATA_LABEL, "s3://logs/2025 /srv/database")]);
        assert!(held_inputs(&j, &other_prefix).is_empty());
        let same_region = labels(&[("region", "eu-west-1")]);
        assert_eq!(
            held_inputs(&j, &same_region),
            ["s3://logs/2026/12/ (in its region eu-west-1)"]
        );
        assert!(held_inputs(&j, &labels(&[])).is_empty());
    }

    #[test]
    fn declarations_are_checked() {
        for ok in ["s3://b", "s3://b/p/", "/data", "https://h/x", "ipfs://bafy"] {
            assert!(check_declaration(ok).is_ok(), "{ok}");
        }
        for bad in ["s3://", "data", "/a/../b", "http://", "ftp://x", "/a b"] {
            assert!(check_declaration(bad).is_err(), "{bad}");
        }
    }
}
