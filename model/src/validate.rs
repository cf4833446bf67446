//! Validation of a defaulted job. Every error names the field, says what is wrong and how to fix it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::quantity::{parse_bytes, parse_cpu};
use crate::spec::{InputSource, Job, SpecConfig, Task};

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SpecError {
    /// Path of the field, e.g. `Tasks[0].Resources.Memory`; empty for the whole spec.
    pub field: String,
    pub message: String,
    pub hint: String,
}

impl SpecError {
    pub fn new(field: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        SpecError {
            field: field.to_string(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.field, self.message)?;
        }
        if !self.hint.is_empty() {
            write!(f, " (hint: {})", self.hint)?;
        }
        Ok(())
    }
}

/// All problems found in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    pub fn one(e: SpecError) -> Self {
        SpecErrors(vec![e])
    }
}

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        write!(f, "invalid job spec: {}", parts.join("; "))
    }
}

impl std::error::Error for SpecErrors {}

pub const ENGINES: &[&str] = &["docker", "wasm", "noop"];
pub use crate::publishers::{PUBLISHER_TYPES as PUBLISHERS, unsupported_publisher};
pub use crate::sources::SOURCE_TYPES as SOURCES;
pub const NETWORKS: &[&str] = &["default", "none", "host", "full", "http", "bridge"];
pub const OPERATORS: &[&str] = &[
    "=",
    "==",
    "!=",
    "in",
    "notin",
    "exists",
    "!",
    "doesnotexist",
    "gt",
    "lt",
];
const MAX_NAME: usize = 256;

/// A duration in the job's `Meta` under `key`, if set: Go's syntax, at most `max` seconds (named
/// `max_text`); hints for a value too long and for one that is not a duration.
fn meta_duration(
    job: &Job,
    key: &str,
    (max, max_text): (f64, &str),
    (too_long, not_a_duration): (&str, &str),
    e: &mut Vec<SpecError>,
) {
    let Some(v) = job.meta.get(key) else {
        return;
    };
    let field = format!("Meta[{key}]");
    match crate::spec::parse_duration_secs(v) {
        Ok(s) if s > max => e.push(SpecError::new(
            &field,
            format!("{v:?} is longer than the limit of {max_text}"),
            too_long,
        )),
        Ok(_) => {}
        Err(m) => e.push(SpecError::new(&field, m, not_a_duration)),
    }
}

/// Validates a job after `normalize`.
pub fn validate_job(job: &Job) -> Result<(), SpecErrors> {
    let mut e = Vec::new();
    let job_type = job.kind.parse::<crate::spec::JobType>();
    if let Err(why) = &job_type {
        e.push(SpecError::new(
            "Type",
            why.clone(),
            "use batch, ops, daemon or service",
        ));
    }
    if job.name.len() > MAX_NAME {
        e.push(SpecError::new(
            "Name",
            format!(
                "is {} characters long, the limit is {MAX_NAME}",
                job.name.len()
            ),
            "use a shorter name",
        ));
    }
    if job.name.chars().any(|c| c.is_control()) {
        e.push(SpecError::new(
            "Name",
            "contains control characters",
            "use printable characters only",
        ));
    }
    if !job
        .namespace
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || job.namespace.len() > 64
    {
        e.push(SpecError::new(
            "Namespace",
            format!("{:?} is not a valid namespace", job.namespace),
            "use letters, digits, '-', '_' or '.' (at most 64)",
        ));
    }
    meta_duration(
        job,
        crate::spec::DISCONNECT_GRACE_META,
        (crate::spec::MAX_DISCONNECT_GRACE_SECS as f64, "7 days"),
        (
            "use a duration such as 10m or 2h",
            "use a duration such as 90s, 10m or 1h30m (0s replaces executions as soon as their node is DISCONNECTED)",
        ),
        &mut e,
    );
    if let Some(v) = job.meta.get(crate::spec::RETRY_ATTEMPTS_META) {
        let field = format!("Meta[{}]", crate::spec::RETRY_ATTEMPTS_META);
        match v.trim().parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => {}
            _ => e.push(SpecError::new(
                &field,
                format!("{v:?} is not a number of attempts from 1 to 1000"),
                "write how many failed executions a partition may have, e.g. \"3\"",
            )),
        }
    }
    let hint = "use a duration such as 10s or 1m (it doubles with each failure, up to 5m)";
    meta_duration(
        job,
        crate::spec::RETRY_DELAY_META,
        (crate::spec::MAX_RETRY_DELAY_SECS, "5m"),
        (hint, hint),
        &mut e,
    );
    if let Some(v) = job.meta.get(crate::spec::UPDATE_MAX_PARALLEL_META) {
        let field = format!("Meta[{}]", crate::spec::UPDATE_MAX_PARALLEL_META);
        if !v
            .trim()
            .parse::<usize>()
            .is_ok_and(|n| n <= crate::spec::MAX_UPDATE_MAX_PARALLEL)
        {
            e.push(SpecError::new(
                &field,
                format!("{v:?} is not a number of copies from 0 to 10000"),
                "write how many copies an update replaces at a time, e.g. \"1\" (0: all at once)",
            ));
        }
    }
    let hint =
        "use a duration such as 10s or 1m (how long a new copy runs before an old one stops)";
    meta_duration(
        job,
        crate::spec::UPDATE_MIN_HEALTHY_META,
        (crate::spec::MAX_UPDATE_MIN_HEALTHY_SECS, "1h"),
        (hint, hint),
        &mut e,
    );
    if let Some(v) = job.meta.get(crate::spec::PLACEMENT_META)
        && crate::spec::Placement::parse(v).is_none()
    {
        e.push(SpecError::new(
            &format!("Meta[{}]", crate::spec::PLACEMENT_META),
            format!("{v:?} is not a placement"),
            "use spread (the least loaded node first) or binpack (the fullest node with room first)",
        ));
    }
    if job.count < 0 {
        e.push(SpecError::new(
            "Count",
            format!("{} is negative", job.count),
            "use 1 or more (0 stops all executions)",
        ));
    }
    if job_type.is_ok_and(|t| !t.counts_executions()) && job.count > 1 {
        e.push(SpecError::new(
            "Count",
            format!("{} is not allowed for {} jobs", job.count, job.kind),
            "ops and daemon jobs run on every matching node; remove Count",
        ));
    }
    if job.count > 10_000 {
        e.push(SpecError::new(
            "Count",
            format!("{} is more than the limit of 10000", job.count),
            "split the work into several jobs",
        ));
    }
    for (i, c) in job.constraints.iter().enumerate() {
        let f = format!("Constraints[{i}]");
        let op = c.operator.to_ascii_lowercase();
        if c.key.is_empty() {
            e.push(SpecError::new(
                &format!("{f}.Key"),
                "is empty",
                "name the node label to match",
            ));
        }
        if !OPERATORS.contains(&op.as_str()) {
            e.push(SpecError::new(
                &format!("{f}.Operator"),
                format!("unknown operator {:?}", c.operator),
                "use one of =, ==, !=, in, notin, exists, !, gt, lt",
            ));
        } else if matches!(op.as_str(), "in" | "notin") && c.values.is_empty() {
            e.push(SpecError::new(
                &format!("{f}.Values"),
                format!("operator {} needs at least one value", c.operator),
                "add Values",
            ));
        } else if matches!(op.as_str(), "exists" | "!" | "doesnotexist") && !c.values.is_empty() {
            e.push(SpecError::new(
                &format!("{f}.Values"),
                format!("operator {} takes no values", c.operator),
                "remove Values",
            ));
        } else if matches!(op.as_str(), "=" | "==" | "!=" | "gt" | "lt") && c.values.len() != 1 {
            e.push(SpecError::new(
                &format!("{f}.Values"),
                format!("operator {} needs exactly one value", c.operator),
                "give one value",
            ));
        }
    }
    match job.tasks.first() {
        None => e.push(SpecError::new(
            "Tasks",
            "a job needs one task and has none",
            "add a task with an Engine, e.g. Tasks: [{Name: main, Engine: {Type: wasm, …}}]",
        )),
        Some(t) => validate_task(t, "Tasks[0]", &mut e),
    }
    if e.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(e))
    }
}

fn validate_task(t: &Task, f: &str, e: &mut Vec<SpecError>) {
    let engine = t.engine.kind_lower();
    if engine.is_empty() {
        e.push(SpecError::new(
            &format!("{f}.Engine.Type"),
            "is empty",
            "use docker or wasm",
        ));
    } else if !ENGINES.contains(&engine.as_str()) {
        e.push(SpecError::new(
            &format!("{f}.Engine.Type"),
            format!("unknown engine type {:?}", t.engine.kind),
            "use docker or wasm",
        ));
    }
    match engine.as_str() {
        "docker" => validate_docker(&t.engine, &format!("{f}.Engine.Params"), e),
        "wasm" => validate_wasm(
            &t.engine,
            &t.input_sources,
            &format!("{f}.Engine.Params"),
            e,
        ),
        _ => {}
    }
    if let Err(errs) = crate::publishers::Publisher::try_from(&t.publisher) {
        for pe in errs {
            let field = match pe.field.as_str() {
                "Type" => format!("{f}.Publisher.Type"),
                k => format!("{f}.Publisher.Params.{k}"),
            };
            e.push(SpecError::new(&field, pe.message, pe.hint));
        }
    }
    for (k, v) in &t.env {
        let field = format!("{f}.Env.{k}");
        if k.starts_with(crate::RESERVED_ENV_PREFIX) {
            e.push(SpecError::new(
                &field,
                format!(
                    "names starting with {} are reserved",
                    crate::RESERVED_ENV_PREFIX
                ),
                "rename the variable",
            ));
        } else if k.is_empty()
            || !k.starts_with(|c: char| c.is_ascii_uppercase())
            || !k
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            e.push(SpecError::new(
                &field,
                "is not a valid variable name",
                "use upper-case letters, digits and '_', starting with a letter",
            ));
        }
        if v.is_empty() {
            e.push(SpecError::new(
                &field,
                "has an empty value",
                "give a value, or env:NAME to forward one from the node",
            ));
        }
    }
    let mut targets = HashSet::new();
    let mut aliases = HashSet::new();
    for (i, input) in t.input_sources.iter().enumerate() {
        validate_input(
            input,
            &format!("{f}.InputSources[{i}]"),
            &mut targets,
            &mut aliases,
            e,
        );
    }
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, r) in t.result_paths.iter().enumerate() {
        let rf = format!("{f}.ResultPaths[{i}]");
        if r.name.is_empty() {
            e.push(SpecError::new(
                &format!("{rf}.Name"),
                "is empty",
                "name the result directory",
            ));
        } else if r.name.contains('/')
            || r.name == "."
            || r.name == ".."
            || ["stdout", "stderr", "exitcode"].contains(&r.name.to_ascii_lowercase().as_str())
        {
            e.push(SpecError::new(
                &format!("{rf}.Name"),
                format!("{:?} cannot be used as a result name", r.name),
                "use a plain name without '/' other than stdout, stderr or exitCode",
            ));
        } else if !names.insert(r.name.clone()) {
            e.push(SpecError::new(
                &format!("{rf}.Name"),
                format!("duplicate result name {:?}", r.name),
                "give each result path its own name",
            ));
        }
        check_abs_path(&r.path, &format!("{rf}.Path"), e);
        if !r.path.is_empty() && !paths.insert(r.path.trim_end_matches('/').to_string()) {
            e.push(SpecError::new(
                &format!("{rf}.Path"),
                format!("duplicate result path {:?}", r.path),
                "give each result path its own directory",
            ));
        }
    }
    let r = &t.resources;
    if !r.cpu.is_empty()
        && let Err(m) = parse_cpu(&r.cpu)
    {
        e.push(SpecError::new(
            &format!("{f}.Resources.CPU"),
            m,
            "use cores (1, 0.5) or millicores (500m)",
        ));
    }
    for (name, v) in [("Memory", &r.memory), ("Disk", &r.disk)] {
        if !v.is_empty()
            && let Err(m) = parse_bytes(v)
        {
            e.push(SpecError::new(
                &format!("{f}.Resources.{name}"),
                m,
                "use a size like 512Mb, 1Gb or 2GiB",
            ));
        }
    }
    if !r.gpu.is_empty() && r.gpu.parse::<u32>().is_err() {
        e.push(SpecError::new(
            &format!("{f}.Resources.GPU"),
            format!("{:?} is not a GPU count", r.gpu),
            "use a whole number such as 1",
        ));
    }
    let net = t.network.kind.to_ascii_lowercase();
    if !NETWORKS.contains(&net.as_str()) {
        e.push(SpecError::new(
            &format!("{f}.Network.Type"),
            format!("unknown network type {:?}", t.network.kind),
            "use None, Host, Full, HTTP, Bridge or Default",
        ));
    }
    if net == "http" {
        e.push(SpecError::new(
            &format!("{f}.Network.Type"),
            "HTTP (outbound HTTP to listed Domains only) is not supported: Caravel runs no filtering proxy",
            "use None, or Default/Bridge for outbound access through the engine's bridge (docs/compatibility.md)",
        ));
    } else if !t.network.domains.is_empty() {
        e.push(SpecError::new(
            &format!("{f}.Network.Domains"),
            "are only allowed with network type HTTP",
            "set Network.Type: HTTP or remove Domains",
        ));
    }
    let class = crate::spec::network_class(&net);
    let mut port_names = std::collections::BTreeSet::new();
    for (i, p) in t.network.ports.iter().enumerate() {
        let pf = format!("{f}.Network.Ports[{i}]");
        if !matches!(class, Some("Bridge" | "Host")) {
            e.push(SpecError::new(
                &pf,
                format!("ports need a network (Type is {:?})", t.network.kind),
                "set Network.Type: Bridge (or Default), or Host",
            ));
            break;
        }
        let name_ok = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && p.name.starts_with(|c: char| c.is_ascii_alphabetic());
        if !name_ok {
            e.push(SpecError::new(
                &format!("{pf}.Name"),
                format!("{:?} is not a port name", p.name),
                "name it with letters, digits, '-' or '_' (it becomes BACALHAU_PORT_<NAME>)",
            ));
        } else if !port_names.insert(p.name.to_ascii_uppercase().replace('-', "_")) {
            e.push(SpecError::new(
                &format!("{pf}.Name"),
                format!("{:?} is used by another port", p.name),
                "give each port its own name",
            ));
        }
        if p.static_ != 0 && p.static_ < 1024 {
            e.push(SpecError::new(
                &format!("{pf}.Static"),
                format!("{} is a privileged port", p.static_),
                "use a port from 1024 up, or leave Static out for one the node picks",
            ));
        }
        if !p.host_network.is_empty() && p.host_network.parse::<std::net::IpAddr>().is_err() {
            e.push(SpecError::new(
                &format!("{pf}.HostNetwork"),
                format!("{:?} is not an IP address", p.host_network),
                "give the node's address to listen on, e.g. 127.0.0.1, or leave it out",
            ));
        }
    }
    let to = &t.timeouts;
    for (name, v) in [
        ("ExecutionTimeout", to.execution_timeout),
        ("QueueTimeout", to.queue_timeout),
        ("TotalTimeout", to.total_timeout),
    ] {
        if v < 0 {
            e.push(SpecError::new(
                &format!("{f}.Timeouts.{name}"),
                format!("{v} is negative"),
                "use seconds ≥ 0 (0 = no limit)",
            ));
        } else if v > MAX_TIMEOUT_SECS {
            e.push(SpecError::new(
                &format!("{f}.Timeouts.{name}"),
                format!("{v} seconds is more than the limit of {MAX_TIMEOUT_SECS} (a year)"),
                "use seconds up to 31536000 (0 = no limit)",
            ));
        }
    }
    let in_range = |v: i64| (0..=MAX_TIMEOUT_SECS).contains(&v);
    if in_range(to.execution_timeout)
        && in_range(to.queue_timeout)
        && in_range(to.total_timeout)
        && to.total_timeout > 0
        && to.execution_timeout + to.queue_timeout > to.total_timeout
    {
        e.push(SpecError::new(
            &format!("{f}.Timeouts"),
            format!(
                "ExecutionTimeout ({}) + QueueTimeout ({}) exceed TotalTimeout ({})",
                to.execution_timeout, to.queue_timeout, to.total_timeout
            ),
            "raise TotalTimeout or lower the others",
        ));
    }
}

/// The longest timeout a spec may set: a year, so that every timeout fits in nanoseconds (i64)
/// with room to add it to a timestamp.
pub const MAX_TIMEOUT_SECS: i64 = 365 * 24 * 3600;

fn check_abs_path(p: &str, field: &str, e: &mut Vec<SpecError>) {
    if p.is_empty() {
        e.push(SpecError::new(
            field,
            "is empty",
            "give an absolute path such as /outputs",
        ));
    } else if !p.starts_with('/') {
        e.push(SpecError::new(
            field,
            format!("{p:?} is not an absolute path"),
            format!("use /{}", p.trim_start_matches("./")),
        ));
    } else if p.split('/').any(|c| c == "..") {
        e.push(SpecError::new(
            field,
            format!("{p:?} contains '..'"),
            "use a path without '..'",
        ));
    } else if p.contains('\0') {
        e.push(SpecError::new(field, "contains a NUL byte", "remove it"));
    }
}

fn validate_input(
    input: &InputSource,
    f: &str,
    targets: &mut HashSet<String>,
    aliases: &mut HashSet<String>,
    e: &mut Vec<SpecError>,
) {
    check_abs_path(&input.target, &format!("{f}.Target"), e);
    if !input.target.is_empty() && !targets.insert(input.target.trim_end_matches('/').to_string()) {
        e.push(SpecError::new(
            &format!("{f}.Target"),
            format!("duplicate target {:?}", input.target),
            "give each input its own target",
        ));
    }
    if !input.alias.is_empty() && !aliases.insert(input.alias.clone()) {
        e.push(SpecError::new(
            &format!("{f}.Alias"),
            format!("duplicate alias {:?}", input.alias),
            "give each input its own alias",
        ));
    }
    match crate::sources::Source::try_from(&input.source) {
        Ok(crate::sources::Source::Local(l)) => {
            check_abs_path(&l.source_path, &format!("{f}.Source.Params.SourcePath"), e)
        }
        Ok(_) => {}
        Err(errs) => {
            for pe in errs {
                let field = match pe.field.as_str() {
                    "Type" => format!("{f}.Source.Type"),
                    k => format!("{f}.Source.Params.{k}"),
                };
                e.push(SpecError::new(&field, pe.message, pe.hint));
            }
        }
    }
}

fn validate_docker(engine: &SpecConfig, f: &str, e: &mut Vec<SpecError>) {
    if let Err(errs) = crate::params::DockerParams::try_from(engine) {
        push_params(errs, f, e);
    }
}

fn push_params(errs: Vec<crate::params::ParamError>, f: &str, e: &mut Vec<SpecError>) {
    for pe in errs {
        e.push(SpecError::new(
            &format!("{f}.{}", pe.field),
            pe.message,
            pe.hint,
        ));
    }
}

/// A module path is an input's Target, or a path below the Target of an input that mounts a
/// directory (s3, local, urlDownload of an archive…); the node checks the file exists.
fn module_in_inputs(m: &str, inputs: &[InputSource]) -> bool {
    let m = m.trim_end_matches('/');
    inputs.iter().any(|i| {
        let t = i.target.trim_end_matches('/');
        t == m
            || m.strip_prefix(t).is_some_and(|r| r.starts_with('/'))
                && !m.split('/').any(|c| c == "..")
    })
}

fn validate_wasm(engine: &SpecConfig, inputs: &[InputSource], f: &str, e: &mut Vec<SpecError>) {
    let w = match crate::params::WasmParams::try_from(engine) {
        Ok(w) => w,
        Err(errs) => return push_params(errs, f, e),
    };
    let m = &w.entry_module;
    if !module_in_inputs(m, inputs) {
        e.push(SpecError::new(
            &format!("{f}.EntryModule"),
            format!("{m:?} is neither the Target of an InputSource nor a file below one"),
            "add an InputSource with that Target (inline, local, urlDownload, s3)",
        ));
    }
    for (i, m) in w.import_modules.iter().enumerate() {
        if !module_in_inputs(m, inputs) {
            e.push(SpecError::new(
                &format!("{f}.ImportModules[{i}]"),
                format!("{m:?} is not the Target of any InputSource"),
                "add an InputSource with that Target",
            ));
        }
    }
}

/// The largest job (encoded, as it is replicated and sent to a node in a `Run` message). A compute
/// session frame holds one `Run` — the job plus its execution — so the session's frame limit is
/// derived from this (`net::session::DEFAULT_MAX_FRAME` = this + 1 MiB), and several such entries
/// fit in one Raft append (its frames are 16 MiB; batches are cut by size below that).
pub const MAX_JOB_BYTES: usize = 3 << 20;

/// Refuses a job whose encoding exceeds [`MAX_JOB_BYTES`], naming the limit and what to do.
pub fn check_job_size(job: &crate::Job) -> Result<(), SpecError> {
    let size = crate::codec::encode(job)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_JOB_BYTES {
        return Err(SpecError::new(
            "",
            format!(
                "the job is {} bytes once encoded, more than the limit of {} bytes (3 MiB)",
                size, MAX_JOB_BYTES
            ),
            "move large inline inputs to an S3 or URL input, or split the job",
        ));
    }
    Ok(())
}

/// Most labels a node may advertise.
pub const MAX_NODE_LABELS: usize = 128;
/// Longest label key, and longest entry of a node's engine, publisher, source or protocol lists.
pub const MAX_NODE_NAME: usize = 256;
/// Longest label value (the admission policy label is the long one).
pub const MAX_NODE_LABEL_VALUE: usize = 16 << 10;
/// Most entries of each of a node's lists.
pub const MAX_NODE_LIST: usize = 64;
/// Largest encoded node record: every heartbeat that changes it is a Raft write, so it stays small.
pub const MAX_NODE_INFO_BYTES: usize = 64 << 10;

/// Refuses a node record a compute node may not make the cluster store: too many or too long labels
/// or list entries, or too large once encoded. The message names the field and the limit.
pub fn check_node_info(info: &crate::NodeInfo) -> Result<(), String> {
    if info.labels.len() > MAX_NODE_LABELS {
        return Err(format!(
            "the node advertises {} labels, more than the limit of {MAX_NODE_LABELS}",
            info.labels.len()
        ));
    }
    for (k, v) in &info.labels {
        if k.is_empty() || k.len() > MAX_NODE_NAME {
            return Err(format!(
                "the node label key {:?} is empty or longer than {MAX_NODE_NAME} bytes",
                k.chars().take(40).collect::<String>()
            ));
        }
        if v.len() > MAX_NODE_LABEL_VALUE {
            return Err(format!(
                "the node label {k:?} is {} bytes, more than the limit of {MAX_NODE_LABEL_VALUE}",
                v.len()
            ));
        }
    }
    let c = &info.compute_node_info;
    for (what, list) in [
        ("SupportedProtocols", &info.supported_protocols),
        ("ExecutionEngines", &c.execution_engines),
        ("Publishers", &c.publishers),
        ("StorageSources", &c.storage_sources),
    ] {
        if list.len() > MAX_NODE_LIST {
            return Err(format!(
                "the node lists {} {what}, more than the limit of {MAX_NODE_LIST}",
                list.len()
            ));
        }
        if let Some(long) = list.iter().find(|e| e.len() > MAX_NODE_NAME) {
            return Err(format!(
                "an entry of the node's {what} is {} bytes, more than the limit of {MAX_NODE_NAME}",
                long.len()
            ));
        }
    }
    let size = crate::codec::encode(info)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_NODE_INFO_BYTES {
        return Err(format!(
            "the node record is {size} bytes once encoded, more than the limit of {MAX_NODE_INFO_BYTES}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod node_info_tests {
    use super::*;

    fn node() -> crate::NodeInfo {
        crate::NodeInfo {
            node_id: "n-1".into(),
            node_type: "Compute".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_node_record_passes_and_each_bound_bites() {
        let mut n = node();
        n.labels.insert("region".into(), "eu".into());
        n.compute_node_info.execution_engines = vec!["wasm".into(), "docker".into()];
        check_node_info(&n).unwrap();

        let mut many = node();
        for i in 0..=MAX_NODE_LABELS {
            many.labels.insert(format!("k{i}"), "v".into());
        }
        assert!(check_node_info(&many).unwrap_err().contains("129 labels"));

        let mut long = node();
        long.labels
            .insert("k".into(), "v".repeat(MAX_NODE_LABEL_VALUE + 1));
        assert!(check_node_info(&long).unwrap_err().contains("\"k\""));

        let mut engines = node();
        engines.compute_node_info.execution_engines = vec!["e".into(); MAX_NODE_LIST + 1];
        assert!(
            check_node_info(&engines)
                .unwrap_err()
                .contains("ExecutionEngines")
        );

        // Within every per-field bound, but too large as a whole.
        let mut big = node();
        for i in 0..8 {
            big.labels
                .insert(format!("k{i}"), "v".repeat(MAX_NODE_LABEL_VALUE));
        }
        assert!(check_node_info(&big).unwrap_err().contains("once encoded"));
    }
}
