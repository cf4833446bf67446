//! Node configuration with Bacalhau's key names (PascalCase, dot paths, case-insensitive):
//! defaults → `<data-dir>/config.yaml` (or `-c file.yaml`) → `CARAVEL_<KEY>` env → `-c Key=Value`
//! → flags, then [`Config::validate`]. Every key is listed in [`KEYS`] with its description, which
//! `caravel config list` prints and `deploy/config/example.yaml` documents.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Config {
    #[serde(rename = "API")]
    pub api: ApiConfig,
    pub data_dir: String,
    pub name_provider: String,
    pub labels: BTreeMap<String, String>,
    pub logging: LoggingConfig,
    pub orchestrator: OrchestratorConfig,
    pub compute: ComputeConfig,
    #[serde(rename = "TLS")]
    pub tls: TlsConfig,
}

/// Mutual TLS of the QUIC links (Raft between orchestrators, compute sessions): PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TlsConfig {
    #[serde(rename = "CA")]
    pub ca: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ApiConfig {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LoggingConfig {
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct OrchestratorConfig {
    pub enabled: bool,
    /// Seconds without a heartbeat before a compute node is marked DISCONNECTED.
    pub disconnect_timeout_secs: u64,
    /// This orchestrator's id in the Raft group (bound into its certificate).
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Initial members, `ID@HOST:PORT` (Raft addresses).
    pub peers: Vec<String>,
    pub raft_host: String,
    pub raft_port: u16,
    pub heartbeat_millis: u64,
    pub election_timeout_millis: u64,
    /// Port (QUIC/UDP) compute nodes dial for their sessions.
    pub compute_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ComputeConfig {
    pub enabled: bool,
    pub allow_listed_local_paths: Vec<String>,
    /// Executions run at once; 0 = one per core.
    pub max_concurrent: u32,
    /// Memory limit of a WASM execution whose job sets none.
    pub default_memory_limit: String,
    /// Heartbeat interval in seconds.
    pub heartbeat_secs: u64,
    /// Base URL of an IPFS HTTP gateway for `ipfs` inputs (`GET {gateway}/ipfs/{CID}`); empty = none.
    #[serde(rename = "IPFSGateway")]
    pub ipfs_gateway: String,
    /// Orchestrators a compute-only node dials, `HOST:PORT` (their `Orchestrator.ComputePort`).
    pub orchestrators: Vec<String>,
    /// Where a compute-only node serves `GET /metrics` (`HOST:PORT`); empty = nowhere (such a node
    /// listens on no port by default).
    pub metrics_addr: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api: ApiConfig {
                host: "0.0.0.0".into(),
                port: 1234,
            },
            data_dir: default_data_dir(),
            name_provider: "puuid".into(),
            labels: BTreeMap::new(),
            logging: LoggingConfig {
                level: "info".into(),
            },
            orchestrator: OrchestratorConfig {
                enabled: false,
                disconnect_timeout_secs: 30,
                node_id: String::new(),
                peers: vec![],
                raft_host: "0.0.0.0".into(),
                raft_port: 1235,
                heartbeat_millis: 250,
                election_timeout_millis: 750,
                compute_port: 4222,
            },
            compute: ComputeConfig {
                enabled: false,
                allow_listed_local_paths: vec![],
                max_concurrent: 0,
                default_memory_limit: "512Mi".into(),
                heartbeat_secs: 5,
                ipfs_gateway: String::new(),
                orchestrators: vec![],
                metrics_addr: String::new(),
            },
            tls: TlsConfig::default(),
        }
    }
}
impl Default for ApiConfig {
    fn default() -> Self {
        Config::default().api
    }
}
impl Default for LoggingConfig {
    fn default() -> Self {
        Config::default().logging
    }
}
impl Default for OrchestratorConfig {
    fn default() -> Self {
        Config::default().orchestrator
    }
}
impl Default for ComputeConfig {
    fn default() -> Self {
        Config::default().compute
    }
}

/// `~/.caravel`, or `$CARAVEL_DIR`.
pub fn default_data_dir() -> String {
    if let Ok(d) = std::env::var("CARAVEL_DIR")
        && !d.is_empty()
    {
        return d;
    }
    match std::env::var("HOME") {
        Ok(h) if !h.is_empty() => format!("{h}/.caravel"),
        _ => ".caravel".into(),
    }
}

/// Every settable key: (dot path, description).
pub const KEYS: &[(&str, &str)] = &[
    (
        "API.Host",
        "Host the API listens on (clients map 0.0.0.0 to 127.0.0.1)",
    ),
    ("API.Port", "Port of the REST API"),
    (
        "DataDir",
        "Directory holding the node's state (Raft store, executions, results)",
    ),
    (
        "NameProvider",
        "How a new node names itself: puuid (n-<uuid>) or hostname",
    ),
    ("Labels", "Node labels, key=value pairs separated by commas"),
    (
        "Logging.Level",
        "Log level: error, warn, info, debug, trace",
    ),
    ("Orchestrator.Enabled", "Run the orchestrator"),
    (
        "Orchestrator.DisconnectTimeoutSecs",
        "Seconds without heartbeat before a compute node is DISCONNECTED",
    ),
    (
        "Orchestrator.NodeID",
        "This orchestrator's id in the Raft group (must match the node id in its certificate)",
    ),
    (
        "Orchestrator.Peers",
        "Initial Raft members, ID@HOST:PORT comma separated (include this node to form a group; leave it out to join with caravel cluster add)",
    ),
    (
        "Orchestrator.RaftHost",
        "Address the Raft (QUIC/UDP) listener binds",
    ),
    (
        "Orchestrator.RaftPort",
        "Port of the Raft (QUIC/UDP) listener",
    ),
    (
        "Orchestrator.HeartbeatMillis",
        "Raft heartbeat interval in ms (also the timeout of one replication RPC)",
    ),
    (
        "Orchestrator.ElectionTimeoutMillis",
        "Minimum Raft election timeout in ms (the maximum is twice this)",
    ),
    (
        "Orchestrator.ComputePort",
        "Port of the compute-session (QUIC/UDP) listener compute nodes dial",
    ),
    (
        "Compute.Orchestrators",
        "Orchestrators a compute-only node dials, HOST:PORT comma separated (it moves to the next when one fails)",
    ),
    (
        "Compute.MetricsAddr",
        "HOST:PORT where a compute-only node serves GET /metrics (empty: it listens on no port)",
    ),
    ("TLS.CA", "PEM file of the cluster CA (caravel cert ca)"),
    (
        "TLS.Cert",
        "PEM file of this node's certificate (caravel cert issue)",
    ),
    ("TLS.Key", "PEM file of this node's private key"),
    ("Compute.Enabled", "Run the compute node"),
    (
        "Compute.AllowListedLocalPaths",
        "Host paths local inputs may read: /path, /path:ro or /path:rw, comma separated",
    ),
    (
        "Compute.MaxConcurrent",
        "Executions run at once (0 = one per core)",
    ),
    (
        "Compute.DefaultMemoryLimit",
        "Memory limit of a WASM execution whose job sets none (e.g. 512Mi)",
    ),
    (
        "Compute.HeartbeatSecs",
        "Seconds between compute heartbeats",
    ),
    (
        "Compute.IPFSGateway",
        "IPFS HTTP gateway for ipfs inputs, e.g. http://127.0.0.1:8080 (empty = ipfs inputs refused)",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown config key {key:?}; run `caravel config list` to see the keys")]
    UnknownKey { key: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
}

/// Canonical spelling of a key given in any case.
pub fn canonical_key(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|(k, _)| *k)
        .find(|k| k.eq_ignore_ascii_case(key.trim()))
}

fn key_kind(key: &str) -> &'static str {
    match key {
        "API.Port"
        | "Orchestrator.DisconnectTimeoutSecs"
        | "Compute.MaxConcurrent"
        | "Compute.HeartbeatSecs"
        | "Orchestrator.RaftPort"
        | "Orchestrator.HeartbeatMillis"
        | "Orchestrator.ElectionTimeoutMillis"
        | "Orchestrator.ComputePort" => "int",
        "Orchestrator.Enabled" | "Compute.Enabled" => "bool",
        "Compute.AllowListedLocalPaths" | "Orchestrator.Peers" | "Compute.Orchestrators" => "list",
        "Labels" => "map",
        _ => "string",
    }
}

/// Turns the text of a `Key=Value` into the JSON value for that key.
pub fn parse_value(key: &str, raw: &str) -> Result<Value, Error> {
    let bad = |m: &str| Error::Invalid {
        key: key.to_string(),
        message: m.to_string(),
    };
    Ok(match key_kind(key) {
        "int" => Value::from(
            raw.trim()
                .parse::<u64>()
                .map_err(|_| bad("expected a whole number"))?,
        ),
        "bool" => Value::from(match raw.trim().to_ascii_lowercase().as_str() {
            "" | "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad("expected true or false")),
        }),
        "list" => Value::from(
            raw.split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>(),
        ),
        "map" => {
            let mut m = serde_json::Map::new();
            for kv in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| bad("expected key=value pairs"))?;
                m.insert(k.trim().to_string(), Value::from(v.trim()));
            }
            Value::Object(m)
        }
        _ => Value::from(raw.to_string()),
    })
}

/// Sets `key` (any case) in a config document.
pub fn set_in(doc: &mut Value, key: &str, raw: &str) -> Result<(), Error> {
    let canon = canonical_key(key).ok_or_else(|| Error::UnknownKey {
        key: key.to_string(),
    })?;
    let value = parse_value(canon, raw)?;
    if !doc.is_object() {
        *doc = Value::Object(Default::default());
    }
    let mut cur = doc;
    let parts: Vec<&str> = canon.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        let obj = cur.as_object_mut().expect("objects all the way down");
        let existing = obj
            .keys()
            .find(|k| k.eq_ignore_ascii_case(p))
            .cloned()
            .unwrap_or_else(|| p.to_string());
        cur = obj
            .entry(existing)
            .or_insert_with(|| Value::Object(Default::default()));
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
    }
    let obj = cur.as_object_mut().expect("object");
    let last = parts[parts.len() - 1];
    let existing = obj
        .keys()
        .find(|k| k.eq_ignore_ascii_case(last))
        .cloned()
        .unwrap_or_else(|| last.to_string());
    obj.insert(existing, value);
    Ok(())
}

fn canonicalize(v: &mut Value, prefix: &str) {
    let Value::Object(map) = v else { return };
    let old = std::mem::take(map);
    for (k, mut val) in old {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let name = KEYS
            .iter()
            .filter_map(|(key, _)| {
                let parts: Vec<&str> = key.split('.').collect();
                let depth = prefix.split('.').filter(|s| !s.is_empty()).count();
                let pre = parts[..depth].join(".");
                (parts.len() > depth
                    && pre.eq_ignore_ascii_case(prefix)
                    && parts[depth].eq_ignore_ascii_case(&k))
                .then(|| parts[depth])
            })
            .next()
            .map(String::from)
            .unwrap_or(k);
        if name != "Labels" {
            canonicalize(
                &mut val,
                &if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                },
            );
        }
        let _ = path;
        map.insert(name, val);
    }
}

impl Config {
    /// Builds a config from a document (file contents merged with overrides); keys in any case.
    pub fn from_value(mut doc: Value) -> Result<Config, Error> {
        canonicalize(&mut doc, "");
        let c: Config = serde_path_to_error::deserialize(doc).map_err(|e| Error::Invalid {
            key: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.api.port == 0 {
            return Err(Error::Invalid {
                key: "API.Port".into(),
                message: "must be 1-65535".into(),
            });
        }
        crate::quantity::parse_bytes(&self.compute.default_memory_limit).map_err(|m| {
            Error::Invalid {
                key: "Compute.DefaultMemoryLimit".into(),
                message: m,
            }
        })?;
        let gw = self.compute.ipfs_gateway.trim();
        if !(gw.is_empty() || gw.starts_with("http://") || gw.starts_with("https://")) {
            return Err(Error::Invalid {
                key: "Compute.IPFSGateway".into(),
                message: format!("{gw:?} is not an http:// or https:// URL"),
            });
        }
        for p in &self.compute.allow_listed_local_paths {
            let path = p
                .rsplit_once(':')
                .filter(|(_, m)| *m == "ro" || *m == "rw")
                .map_or(p.as_str(), |(a, _)| a);
            if !path.starts_with('/') {
                return Err(Error::Invalid {
                    key: "Compute.AllowListedLocalPaths".into(),
                    message: format!("{p:?} is not an absolute path"),
                });
            }
        }
        if !["error", "warn", "info", "debug", "trace"]
            .contains(&self.logging.level.to_ascii_lowercase().as_str())
        {
            return Err(Error::Invalid {
                key: "Logging.Level".into(),
                message: format!("unknown level {:?}", self.logging.level),
            });
        }
        Ok(())
    }

    /// The effective value of every key, as text, for `config list`.
    pub fn list(&self) -> Vec<(String, String, String)> {
        let doc = serde_json::to_value(self).unwrap_or_default();
        KEYS.iter()
            .map(|(k, d)| {
                let mut cur = &doc;
                for p in k.split('.') {
                    cur = cur.get(p).unwrap_or(&Value::Null);
                }
                let text = match cur {
                    Value::String(s) => s.clone(),
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    Value::Object(m) => m
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(","),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.to_string(), text, d.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_set_in_any_case_land_on_the_canonical_path() {
        let mut doc = Value::Object(Default::default());
        set_in(&mut doc, "api.port", "4321").unwrap();
        set_in(
            &mut doc,
            "compute.allowlistedlocalpaths",
            "/data:ro,/scratch:rw",
        )
        .unwrap();
        set_in(&mut doc, "labels", "region=eu,tier=edge").unwrap();
        let c = Config::from_value(doc).unwrap();
        assert_eq!(c.api.port, 4321);
        assert_eq!(
            c.compute.allow_listed_local_paths,
            vec!["/data:ro", "/scratch:rw"]
        );
        assert_eq!(c.labels["region"], "eu");
        assert!(matches!(
            set_in(&mut Value::Null, "Nope.Key", "1"),
            Err(Error::UnknownKey { .. })
        ));
        assert!(set_in(&mut Value::Null, "API.Port", "http").is_err());
    }

    #[test]
    fn a_lower_case_file_is_read() {
        let doc: Value =
            serde_norway::from_str("api:\n  port: 9999\ncompute:\n  enabled: true\n").unwrap();
        let c = Config::from_value(doc).unwrap();
        assert_eq!(c.api.port, 9999);
        assert!(c.compute.enabled);
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_documented_example_config_parses_and_documents_every_key() {
        let text = include_str!("../../deploy/config/example.yaml");
        let doc: serde_json::Value = serde_norway::from_str(text).unwrap();
        let c = super::Config::from_value(doc).unwrap();
        assert_eq!(c.compute.allow_listed_local_paths, vec!["/srv/data:ro"]);
        for (key, _) in super::KEYS {
            let last = key.rsplit('.').next().unwrap();
            assert!(
                text.contains(&format!("{last}:")),
                "deploy/config/example.yaml does not document {key}"
            );
        }
    }
}
