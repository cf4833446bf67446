//! `config list|set`: the local configuration file (`<data-dir>/config.yaml`, or the `-c` file).

use std::process::ExitCode;

use anyhow::Context;
use caravel_model::config::{Config, set_in};
use clap::Subcommand;

use crate::Global;
use crate::output::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every key with its effective value and description.
    List(OutputArgs),
    /// Set key=value (or `key value`) in the config file.
    Set { assignment: Vec<String> },
}

/// The config file this command reads and writes.
pub fn config_file(g: &Global) -> String {
    if let Some(f) = g
        .config
        .iter()
        .rev()
        .find(|c| c.ends_with(".yaml") || c.ends_with(".yml"))
    {
        return f.clone();
    }
    let dir = g
        .data_dir
        .clone()
        .unwrap_or_else(caravel_model::config::default_data_dir);
    format!("{dir}/config.yaml")
}

/// Loads the effective config: defaults → config files → `CARAVEL_*` (or Bacalhau's
/// `BACALHAU_*`) env → `-c Key=Value`. A Bacalhau config file is read as Bacalhau would: the keys
/// Caravel has are used, each other key is named once in a warning on stderr.
pub fn load(g: &Global) -> anyhow::Result<Config> {
    let (config, warnings) = load_with_warnings(g)?;
    for w in warnings {
        eprintln!("Warning: {w}");
    }
    Ok(config)
}

/// [`load`], returning the warnings instead of printing them.
pub fn load_with_warnings(g: &Global) -> anyhow::Result<(Config, Vec<String>)> {
    let mut doc = serde_json::json!({});
    let mut files: Vec<String> = g
        .config
        .iter()
        .filter(|c| c.ends_with(".yaml") || c.ends_with(".yml"))
        .cloned()
        .collect();
    if files.is_empty() {
        files.push(config_file(g));
    }
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                let v: serde_json::Value = serde_norway::from_str(&text)
                    .with_context(|| format!("config file {f} is not valid YAML"))?;
                merge(&mut doc, v);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && g.config.iter().all(|c| c != f) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read config file {f}")),
        }
    }
    let warnings = caravel_model::config::adopt_bacalhau_keys(&mut doc)?;
    for (k, _) in caravel_model::config::KEYS {
        let name = k.replace('.', "_").to_ascii_uppercase();
        // Caravel's name wins when both are set.
        for env in [format!("CARAVEL_{name}"), format!("BACALHAU_{name}")] {
            if let Ok(v) = std::env::var(&env) {
                set_in(&mut doc, k, &v).with_context(|| format!("environment variable {env}"))?;
                break;
            }
        }
    }
    for c in g
        .config
        .iter()
        .filter(|c| !(c.ends_with(".yaml") || c.ends_with(".yml")))
    {
        let (k, v) = c.split_once('=').unwrap_or((c.as_str(), "true"));
        set_in(&mut doc, k, v).with_context(|| format!("-c {c}"))?;
    }
    if let Some(d) = &g.data_dir {
        set_in(&mut doc, "DataDir", d)?;
    }
    Ok((Config::from_value(doc)?, warnings))
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

pub fn run(g: &Global, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::List(out) => {
            // Never show passwords, API keys or join tokens.
            let c = load(g)?.redacted();
            if !out.structured(&c)? {
                let rows: Vec<Vec<String>> = c
                    .list()
                    .into_iter()
                    .map(|(k, v, d)| vec![k, v, d])
                    .collect();
                print!("{}", out.table(&["key", "value", "description"], &rows));
            }
        }
        ConfigCommand::Set { assignment } => {
            let (key, value) = match assignment.as_slice() {
                [kv] => kv
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .context("use `caravel config set Key=Value`")?,
                [k, v] => {
                    eprintln!("DEPRECATED: use `caravel config set {k}={v}`");
                    (k.clone(), v.clone())
                }
                _ => anyhow::bail!("use `caravel config set Key=Value`"),
            };
            let file = config_file(g);
            let mut doc: serde_json::Value = match std::fs::read_to_string(&file) {
                Ok(t) => serde_norway::from_str(&t)
                    .with_context(|| format!("config file {file} is not valid YAML"))?,
                Err(_) => serde_json::json!({}),
            };
            if doc.is_null() {
                doc = serde_json::json!({});
            }
            set_in(&mut doc, &key, &value)?;
            Config::from_value(doc.clone())?;
            if let Some(parent) = std::path::Path::new(&file).parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&file, serde_norway::to_string(&doc)?)
                .with_context(|| format!("cannot write {file}"))?;
            eprintln!("set {key} in {file}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
