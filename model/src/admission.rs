//! A compute node's admission policy: what its owner lets it run, whatever the orchestrators
//! decide (Bacalhau's `JobAdmissionControl`, plus allow-lists). One pure decision, used twice:
//! by the node before it starts anything (authoritative), and by the scheduler from the policy
//! the node advertises (so it avoids nodes that would refuse). Probes (`ProbeHTTP`, `ProbeExec`)
//! and the hash of a WASM module that is not inline can only be checked by the node.
//!
//! Every list is an allow-list; empty means "any". Patterns may use `*` (any characters).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{Job, Task};

/// The label under which a node advertises its policy (compact JSON).
pub const POLICY_LABEL: &str = "caravel.io/admission";

/// Network modes a job may ask for when the node's owner says nothing: no network, or the
/// engine's bridge (`Default`, `Bridge`). `Host` and `Full` (the node's own network namespace)
/// must be allowed explicitly.
pub const DEFAULT_NETWORKS: &[&str] = &["None", "Bridge"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AdmissionPolicy {
    /// Docker images: `repo`, `repo:tag`, `repo@sha256:…`, with `*`; a pattern without a tag
    /// matches every tag of the repository.
    pub images: Vec<String>,
    /// SHA-256 (hex) of the WASM entry modules allowed.
    pub wasm_modules: Vec<String>,
    /// Labels a job must carry (`value` `*` = any value).
    pub required_labels: BTreeMap<String, String>,
    pub namespaces: Vec<String>,
    /// Input source types (`inline`, `urlDownload`, `s3`, `local`, …).
    pub input_types: Vec<String>,
    /// Hosts that `urlDownload` inputs may name.
    #[serde(rename = "URLHosts")]
    pub url_hosts: Vec<String>,
    /// Buckets of `s3` inputs and of the `s3` publisher.
    #[serde(rename = "S3Buckets")]
    pub s3_buckets: Vec<String>,
    pub publishers: Vec<String>,
    /// Network modes (`None`, `Bridge` (= `Default`), `Host` (= `Full`)); empty =
    /// [`DEFAULT_NETWORKS`].
    pub networks: Vec<String>,
    /// Most one execution may ask for (empty = the node's capacity).
    #[serde(rename = "MaxCPU")]
    pub max_cpu: String,
    pub max_memory: String,
    pub max_disk: String,
    #[serde(rename = "MaxGPU")]
    pub max_gpu: String,
    /// Bacalhau: refuse jobs without inputs.
    pub reject_stateless_jobs: bool,
    /// Bacalhau: refuse jobs that ask for any network.
    pub reject_networked_jobs: bool,
    /// Bacalhau: `anywhere`, or `local` (only jobs whose inputs are on this node).
    pub locality: String,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        AdmissionPolicy {
            images: vec![],
            wasm_modules: vec![],
            required_labels: BTreeMap::new(),
            namespaces: vec![],
            input_types: vec![],
            url_hosts: vec![],
            s3_buckets: vec![],
            publishers: vec![],
            networks: vec![],
            max_cpu: String::new(),
            max_memory: String::new(),
            max_disk: String::new(),
            max_gpu: String::new(),
            reject_stateless_jobs: false,
            reject_networked_jobs: false,
            locality: "anywhere".into(),
        }
    }
}

/// `*` matches any run of characters; everything else literally (ASCII case-insensitive).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

fn any_match(patterns: &[String], value: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob(p.trim(), value))
}

/// Whether image `image` is allowed by one of `patterns`.
pub fn image_allowed(patterns: &[String], image: &str) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let image = image.trim();
    // `repo@digest` and `repo:tag` both start with the repository.
    let repo = image
        .split('@')
        .next()
        .map(|r| match r.rfind(':') {
            Some(i) if !r[i..].contains('/') => &r[..i],
            _ => r,
        })
        .unwrap_or(image);
    patterns.iter().any(|p| {
        let p = p.trim();
        let has_tag =
            p.contains('@') || p.rsplit('/').next().is_some_and(|last| last.contains(':'));
        if has_tag {
            glob(p, image)
        } else {
            glob(p, repo)
        }
    })
}

/// The host of an `http(s)://host[:port]/…` URL, lower-cased.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?.to_string()
    } else {
        authority.split(':').next()?.to_string()
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The SHA-256 of an inline WASM entry module of `task` (what the scheduler can check).
fn inline_module_sha(task: &Task) -> Option<String> {
    let entry = crate::params::WasmParams::try_from(&task.engine)
        .ok()?
        .entry_module;
    let input = task
        .input_sources
        .iter()
        .find(|i| i.target.trim_end_matches('/') == entry.trim_end_matches('/'))?;
    let crate::sources::Source::Inline { url } =
        crate::sources::Source::try_from(&input.source).ok()?
    else {
        return None;
    };
    let data = crate::parse::data_url_bytes(&url)?;
    use sha2::Digest;
    Some(
        sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

impl AdmissionPolicy {
    /// Whether this policy restricts anything at all (an unrestricted node advertises nothing).
    pub fn is_open(&self) -> bool {
        *self == AdmissionPolicy::default()
    }

    /// The networks allowed, defaults applied.
    pub fn allowed_networks(&self) -> Vec<String> {
        if self.networks.is_empty() {
            DEFAULT_NETWORKS.iter().map(|s| s.to_string()).collect()
        } else {
            self.networks.clone()
        }
    }

    /// Checks a job against the policy; `Err` says what is refused and why, in words an operator
    /// and the job's author understand.
    pub fn check(&self, job: &Job) -> Result<(), String> {
        if !any_match(&self.namespaces, &job.namespace) {
            return Err(format!("namespace {:?} is not allowed here", job.namespace));
        }
        for (k, v) in &self.required_labels {
            match job.labels.get(k) {
                Some(have) if v == "*" || have == v => {}
                _ => {
                    return Err(format!("the job must carry the label {k}={v} on this node"));
                }
            }
        }
        for task in &job.tasks {
            self.check_task(task)?;
        }
        Ok(())
    }

    fn check_task(&self, t: &Task) -> Result<(), String> {
        let engine = t.engine.kind_lower();
        if engine == "docker" && !self.images.is_empty() {
            let image = crate::params::DockerParams::try_from(&t.engine)
                .map(|d| d.image)
                .unwrap_or_default();
            if !image_allowed(&self.images, &image) {
                return Err(format!(
                    "image {image:?} is not in this node's allowed images ({})",
                    self.images.join(", ")
                ));
            }
        }
        if engine == "wasm"
            && !self.wasm_modules.is_empty()
            && let Some(sha) = inline_module_sha(t)
        {
            self.check_module(&sha)?;
        }
        let net = if t.network.kind.is_empty() {
            "None".to_string()
        } else {
            t.network.kind.clone()
        };
        if self.reject_networked_jobs && !net.eq_ignore_ascii_case("none") {
            return Err(format!(
                "network {net} is refused: this node runs no networked jobs (RejectNetworkedJobs)"
            ));
        }
        let allowed = self.allowed_networks();
        let class = crate::spec::network_class(&net);
        if !allowed
            .iter()
            .any(|n| n.eq_ignore_ascii_case(&net) || crate::spec::network_class(n) == class)
        {
            return Err(format!(
                "network {net} is not allowed on this node (allowed: {})",
                allowed.join(", ")
            ));
        }
        if self.reject_stateless_jobs && t.input_sources.is_empty() {
            return Err("jobs without inputs are refused here (RejectStatelessJobs)".into());
        }
        for i in &t.input_sources {
            let kind = i.source.kind.as_str();
            if !self.input_types.is_empty()
                && !self
                    .input_types
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(kind))
            {
                return Err(format!("input type {kind} is not allowed here"));
            }
            if self.locality.eq_ignore_ascii_case("local")
                && !matches!(
                    kind.to_ascii_lowercase().as_str(),
                    "local" | "localdirectory" | "inline"
                )
            {
                return Err(format!(
                    "input {} is of type {kind}: this node runs only jobs whose data is local (Locality: local)",
                    i.target
                ));
            }
            // Unreadable params count as empty: a restricted node refuses what it cannot check.
            let source = crate::sources::Source::try_from(&i.source).ok();
            match kind.to_ascii_lowercase().as_str() {
                "urldownload" => {
                    let url = match &source {
                        Some(crate::sources::Source::UrlDownload { url }) => url.as_str(),
                        _ => "",
                    };
                    let host = url_host(url).unwrap_or_default();
                    if !any_match(&self.url_hosts, &host) {
                        return Err(format!("URL host {host:?} is not allowed here"));
                    }
                }
                "s3" => {
                    let bucket = match &source {
                        Some(crate::sources::Source::S3(s3)) => s3.bucket.as_str(),
                        _ => "",
                    };
                    if !any_match(&self.s3_buckets, bucket) {
                        return Err(format!("S3 bucket {bucket:?} is not allowed here"));
                    }
                }
                _ => {}
            }
        }
        let publisher = t.publisher.kind.as_str();
        if !publisher.is_empty() {
            if !self.publishers.is_empty()
                && !self
                    .publishers
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(publisher))
            {
                return Err(format!("publisher {publisher} is not allowed here"));
            }
            if publisher.eq_ignore_ascii_case("s3") {
                let bucket = match crate::publishers::Publisher::try_from(&t.publisher) {
                    Ok(crate::publishers::Publisher::S3(p)) => p.bucket,
                    _ => String::new(),
                };
                if !any_match(&self.s3_buckets, &bucket) {
                    return Err(format!("S3 bucket {bucket:?} is not allowed here"));
                }
            }
        }
        let r = &t.resources;
        let over = |what: &str, want: &str, max: &str, parse: fn(&str) -> Result<u64, String>| {
            if max.trim().is_empty() || want.trim().is_empty() {
                return Ok(());
            }
            match (parse(want), parse(max)) {
                (Ok(w), Ok(m)) if w > m => Err(format!(
                    "the job asks for {what} {want}, more than this node allows per execution ({max})"
                )),
                _ => Ok(()),
            }
        };
        over("CPU", &r.cpu, &self.max_cpu, crate::quantity::parse_cpu)?;
        over(
            "memory",
            &r.memory,
            &self.max_memory,
            crate::quantity::parse_bytes,
        )?;
        over(
            "disk",
            &r.disk,
            &self.max_disk,
            crate::quantity::parse_bytes,
        )?;
        over("GPU", &r.gpu, &self.max_gpu, |s| {
            s.trim().parse::<u64>().map_err(|e| e.to_string())
        })?;
        Ok(())
    }

    /// Checks the SHA-256 of a WASM entry module (the node, once it has the module).
    pub fn check_module(&self, sha256: &str) -> Result<(), String> {
        if self.wasm_modules.is_empty()
            || self
                .wasm_modules
                .iter()
                .any(|m| m.trim().eq_ignore_ascii_case(sha256))
        {
            Ok(())
        } else {
            Err(format!(
                "WASM module sha256:{sha256} is not in this node's allowed modules"
            ))
        }
    }

    /// The policy as a node advertises it.
    pub fn to_label(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A node's advertised policy (absent or unreadable: none).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<AdmissionPolicy> {
        labels
            .get(POLICY_LABEL)
            .and_then(|v| serde_json::from_str(v).ok())
    }

    /// Checks every pattern and quantity, naming the key at fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, q, parse) in [
            (
                "MaxCPU",
                &self.max_cpu,
                crate::quantity::parse_cpu as fn(&str) -> Result<u64, String>,
            ),
            ("MaxMemory", &self.max_memory, crate::quantity::parse_bytes),
            ("MaxDisk", &self.max_disk, crate::quantity::parse_bytes),
        ] {
            if !q.trim().is_empty() {
                parse(q).map_err(|m| (key.to_string(), m))?;
            }
        }
        if !self.max_gpu.trim().is_empty() && self.max_gpu.trim().parse::<u64>().is_err() {
            return Err(("MaxGPU".into(), "a whole number of GPUs".into()));
        }
        if !["anywhere", "local"].contains(&self.locality.to_ascii_lowercase().as_str()) {
            return Err(("Locality".into(), "anywhere or local".into()));
        }
        for m in &self.wasm_modules {
            let m = m.trim().trim_start_matches("sha256:");
            if m.len() != 64 || !m.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err((
                    "WasmModules".into(),
                    format!("{m:?} is not a SHA-256 in hex"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> Job {
        crate::parse::parse_job(yaml.as_bytes(), crate::parse::Mode::Server)
            .unwrap()
            .job
    }

    const DOCKER: &str = "Name: d\nLabels: {team: data}\nTasks:\n- Engine: {Type: docker, Params: {Image: 'registry.local/etl:1.2'}}\n  Network: {Type: Host}\n  Resources: {CPU: '2', Memory: 1Gb}\n  InputSources: [{Target: /in, Source: {Type: urlDownload, Params: {URL: 'http://10.0.0.1:8080/x'}}}]\n  Publisher: {Type: s3, Params: {Bucket: results, Key: out}}\n";

    #[test]
    fn globs_and_image_patterns_match_as_documented() {
        assert!(glob("*.corp", "files.corp") && !glob("*.corp", "files.corp.evil"));
        assert!(glob("a*b*c", "axxbyyc") && !glob("a*b", "ac"));
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(image_allowed(&p(&["busybox"]), "busybox:1.36"));
        assert!(image_allowed(&p(&["busybox"]), "busybox"));
        assert!(!image_allowed(&p(&["busybox:1.36"]), "busybox:latest"));
        assert!(image_allowed(
            &p(&["registry.local/*"]),
            "registry.local/etl:1.2"
        ));
        assert!(image_allowed(
            &p(&["registry.local:5000/etl"]),
            "registry.local:5000/etl:2"
        ));
        assert!(image_allowed(
            &p(&["alpine@sha256:*"]),
            "alpine@sha256:abcd"
        ));
        assert!(!image_allowed(&p(&["alpine@sha256:*"]), "alpine:3"));
        assert_eq!(
            url_host("https://User@Files.Corp:8443/a?b").as_deref(),
            Some("files.corp")
        );
        assert_eq!(url_host("http://[::1]:80/").as_deref(), Some("::1"));
    }

    #[test]
    fn an_open_policy_admits_all_but_host_networking() {
        let open = AdmissionPolicy::default();
        assert!(open.is_open());
        let e = open.check(&job(DOCKER)).unwrap_err();
        assert!(
            e.contains("network Host") && e.contains("None, Bridge"),
            "{e}"
        );
    }

    #[test]
    fn each_rule_admits_what_it_should_and_refuses_the_rest_with_the_reason() {
        let base = AdmissionPolicy {
            networks: vec!["Host".into()],
            ..Default::default()
        };
        assert!(base.check(&job(DOCKER)).is_ok());
        let refused = |p: AdmissionPolicy, needle: &str| {
            let e = p.check(&job(DOCKER)).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        let with = |f: &dyn Fn(&mut AdmissionPolicy)| {
            let mut p = base.clone();
            f(&mut p);
            p
        };
        refused(
            with(&|p| p.images = vec!["busybox".into()]),
            "not in this node's allowed images",
        );
        assert!(
            with(&|p| p.images = vec!["registry.local/*".into()])
                .check(&job(DOCKER))
                .is_ok()
        );
        refused(with(&|p| p.namespaces = vec!["prod".into()]), "namespace");
        refused(
            with(&|p| p.required_labels = [("env".into(), "*".into())].into()),
            "label env=*",
        );
        assert!(
            with(&|p| p.required_labels = [("team".into(), "data".into())].into())
                .check(&job(DOCKER))
                .is_ok()
        );
        refused(
            with(&|p| p.input_types = vec!["s3".into()]),
            "input type urlDownload",
        );
        refused(
            with(&|p| p.url_hosts = vec!["*.corp".into()]),
            "URL host \"10.0.0.1\"",
        );
        refused(
            with(&|p| p.s3_buckets = vec!["other".into()]),
            "bucket \"results\"",
        );
        refused(
            with(&|p| p.publishers = vec!["local".into()]),
            "publisher s3",
        );
        refused(with(&|p| p.max_cpu = "1".into()), "CPU 2");
        refused(
            with(&|p| p.max_memory = "512Mb".into()),
            "more than this node allows per execution (512Mb)",
        );
        refused(
            with(&|p| p.reject_networked_jobs = true),
            "RejectNetworkedJobs",
        );
        refused(with(&|p| p.locality = "local".into()), "Locality: local");
        let stateless = "Name: s\nTasks:\n- Engine: {Type: docker, Params: {Image: busybox}}\n";
        let e = with(&|p| {
            p.reject_stateless_jobs = true;
            p.networks = vec![];
        })
        .check(&job(stateless))
        .unwrap_err();
        assert!(e.contains("RejectStatelessJobs"), "{e}");
    }

    #[test]
    fn wasm_modules_are_checked_by_their_hash() {
        let wasm = "Name: w\nTasks:\n- Engine: {Type: wasm, Params: {EntryModule: /m.wasm}}\n  InputSources: [{Target: /m.wasm, Source: {Type: inline, Params: {URL: 'data:application/wasm;base64,AGFzbQEAAAA='}}}]\n";
        let sha = "93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476";
        let p = AdmissionPolicy {
            wasm_modules: vec![sha.into()],
            ..Default::default()
        };
        assert!(p.check(&job(wasm)).is_ok(), "{:?}", p.check(&job(wasm)));
        let q = AdmissionPolicy {
            wasm_modules: vec!["0".repeat(64)],
            ..Default::default()
        };
        assert!(q.check(&job(wasm)).unwrap_err().contains("sha256:93a4"));
        assert!(q.check_module(sha).is_err() && p.check_module(sha).is_ok());
    }

    #[test]
    fn the_advertised_policy_round_trips_through_a_label() {
        let p = AdmissionPolicy {
            images: vec!["busybox".into()],
            networks: vec!["None".into()],
            ..Default::default()
        };
        let labels = BTreeMap::from([(POLICY_LABEL.to_string(), p.to_label())]);
        assert_eq!(AdmissionPolicy::from_labels(&labels), Some(p));
        assert!(
            AdmissionPolicy {
                max_memory: "lots".into(),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
