//! Bacalhau's `-i/--input` grammar: `URI[:target]` or `src=URI,dst=PATH,opt=k=v,…`. Schemes: http(s)
//! → urlDownload, s3:// → s3, file:// → local, ipfs:// → ipfs, data: → inline. Default target
//! `/inputs`. Also `-p/--publisher` (`local`, `noop`, `s3://bucket/key,opt=…`) and `-o name:/path`.

use anyhow::{anyhow, bail};
use caravel_model::spec::{InputSource, ResultPath, SpecConfig};

pub fn parse_input(spec: &str) -> anyhow::Result<InputSource> {
    let mut src = String::new();
    let mut dst = String::new();
    let mut opts: Vec<(String, String)> = Vec::new();
    for (i, field) in spec.split(',').enumerate() {
        let lower = field.to_ascii_lowercase();
        if let Some(v) = ["src=", "source="]
            .iter()
            .find_map(|p| lower.starts_with(p).then(|| &field[p.len()..]))
        {
            src = v.to_string();
        } else if let Some(v) = ["dst=", "target=", "destination="]
            .iter()
            .find_map(|p| lower.starts_with(p).then(|| &field[p.len()..]))
        {
            dst = v.to_string();
        } else if let Some(v) = ["opt=", "option="]
            .iter()
            .find_map(|p| lower.starts_with(p).then(|| &field[p.len()..]))
        {
            let (k, v) = v
                .split_once('=')
                .ok_or_else(|| anyhow!("input option {v:?} is not key=value"))?;
            opts.push((k.to_string(), v.to_string()));
        } else if i == 0 {
            src = field.to_string();
        } else {
            bail!("cannot read {field:?} in input {spec:?}; use src=URI,dst=PATH,opt=key=value");
        }
    }
    // URI:target, where the target is an absolute path after the last ':' that is not part of scheme://
    if dst.is_empty()
        && let Some(pos) = src.rfind(':')
        && src[pos + 1..].starts_with('/')
        && !src[pos + 1..].starts_with("//")
    {
        dst = src[pos + 1..].to_string();
        src.truncate(pos);
    }
    if dst.is_empty() {
        dst = "/inputs".into();
    }
    let opt = |k: &str| {
        opts.iter()
            .find(|(x, _)| x.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let source = if src.starts_with("http://") || src.starts_with("https://") {
        SpecConfig::new("urlDownload").with("URL", src.clone())
    } else if let Some(rest) = src.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = SpecConfig::new("s3")
            .with("Bucket", bucket)
            .with("Key", key);
        for (k, name) in [
            ("endpoint", "Endpoint"),
            ("region", "Region"),
            ("versionid", "VersionID"),
            ("checksum-256", "ChecksumSHA256"),
            ("filter", "Filter"),
        ] {
            if let Some(v) = opt(k) {
                s = s.with(name, v);
            }
        }
        s
    } else if let Some(path) = src.strip_prefix("file://") {
        let mut s = SpecConfig::new("local").with("SourcePath", path);
        if opt("rw").is_some_and(|v| v == "true") {
            s = s.with("ReadWrite", true);
        }
        s
    } else if let Some(cid) = src.strip_prefix("ipfs://") {
        SpecConfig::new("ipfs").with("CID", cid)
    } else if src.starts_with("data:") {
        SpecConfig::new("inline").with("URL", src.clone())
    } else if src.starts_with("git") {
        bail!(
            "git inputs are not supported (as in Bacalhau); fetch the repository into an s3 bucket or a URL instead"
        );
    } else {
        bail!(
            "input {src:?} has no known scheme; use http(s)://, s3://, file://, ipfs:// or data:"
        );
    };
    Ok(InputSource {
        source,
        alias: String::new(),
        target: dst,
    })
}

pub fn parse_publisher(spec: &str) -> anyhow::Result<SpecConfig> {
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or_default().trim();
    let mut s = if let Some(rest) = head.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        SpecConfig::new("s3")
            .with("Bucket", bucket)
            .with("Key", key)
    } else {
        match head.to_ascii_lowercase().as_str() {
            "local" | "noop" | "ipfs" | "s3managed" => SpecConfig::new(&head.to_ascii_lowercase()),
            _ => bail!("unknown publisher {head:?}; use local, noop or s3://bucket/key"),
        }
    };
    for p in parts {
        let v = p
            .strip_prefix("opt=")
            .or_else(|| p.strip_prefix("option="))
            .ok_or_else(|| anyhow!("publisher option {p:?} must be opt=key=value"))?;
        let (k, v) = v
            .split_once('=')
            .ok_or_else(|| anyhow!("publisher option {v:?} is not key=value"))?;
        let name = match k.to_ascii_lowercase().as_str() {
            "endpoint" => "Endpoint",
            "region" => "Region",
            "encoding" => "Encoding",
            other => bail!("unknown publisher option {other:?}"),
        };
        s = s.with(name, v);
    }
    Ok(s)
}

/// `-o name:/path` (or Bacalhau v1's `name=/path`): a result directory published under `name`.
pub fn parse_result_path(spec: &str) -> anyhow::Result<ResultPath> {
    let (name, path) = spec
        .split_once([':', '='])
        .ok_or_else(|| anyhow!("output {spec:?} must be name:/path, e.g. outputs:/outputs"))?;
    let (name, path) = (name.trim(), path.trim());
    if name.is_empty() || name.contains('/') {
        bail!("output {spec:?} needs a plain name before ':', e.g. outputs:/outputs");
    }
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        bail!(
            "output {spec:?} needs an absolute path without '..' after ':', e.g. {name}:/outputs"
        );
    }
    Ok(ResultPath {
        name: name.into(),
        path: path.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_follow_bacalhaus_grammar() {
        let i = parse_input("https://example.org/a.txt:/data/a.txt").unwrap();
        assert_eq!(
            (i.source.kind.as_str(), i.target.as_str()),
            ("urlDownload", "/data/a.txt")
        );
        let i = parse_input(
            "s3://bucket/data/,opt=endpoint=http://127.0.0.1:9000,opt=region=us-east-1",
        )
        .unwrap();
        assert_eq!(i.source.params.str("Bucket"), Some("bucket"));
        assert_eq!(i.source.params.str("Key"), Some("data/"));
        assert_eq!(
            i.source.params.str("Endpoint"),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(i.target, "/inputs");
        let i = parse_input("src=file:///srv/data,dst=/mnt,opt=rw=true").unwrap();
        assert_eq!(i.source.kind, "local");
        assert_eq!(i.target, "/mnt");
        assert!(parse_input("git://x").is_err());
        assert_eq!(
            parse_publisher("s3://b/k/{jobID},opt=region=eu")
                .unwrap()
                .params
                .str("Region"),
            Some("eu")
        );
    }
}
