//! The flags every `<engine> run` command shares — Bacalhau's job, task and runtime settings
//! (reference §1.6) — and how they become a [`Job`]. `docker run` and `wasm run` add their engine's
//! flags, fill in the engine and submit through [`submit`], which validates the job with the parser
//! `job run` uses.
//!
//! ```text
//! flags ──JobFlags::task()──▶ Task ──(engine fills Engine)──▶ JobFlags::job() ──▶ Job ──submit()──▶ API
//! ```
//!
//! Every flag is checked here, before anything is sent, so a mistake is reported against the flag
//! the user typed rather than as a field of the spec.

use std::process::ExitCode;

use anyhow::{Context, bail};
use caravel_model::quantity::{parse_bytes, parse_cpu};
use caravel_model::spec::{Job, NetworkConfig, Task};
use clap::{Args, ValueEnum};

use crate::ApiClient;
use crate::input::{parse_input, parse_publisher, parse_result_path};
use crate::job::{RuntimeArgs, job_to_value, submit_and_follow};
use caravel_model::selector::parse_selector;

/// Where a job runs: `any` one matching node (a batch job) or `all` of them (an ops job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Target {
    #[default]
    Any,
    All,
}

/// Network types, spelt as Bacalhau writes them in a spec.
const NETWORKS: &[&str] = &["None", "Host", "Full", "HTTP", "Bridge", "Default"];

#[derive(Debug, Args)]
pub struct JobFlags {
    /// Job name (default: the job id). Submitting a name again updates that job.
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace (default `default`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Job priority.
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// How many executions of a batch job to run.
    #[arg(long, visible_alias = "concurrency", default_value_t = 1)]
    pub count: u32,
    /// `any`: one matching node runs it (a batch job); `all`: every matching node does (an ops job).
    #[arg(long, value_enum, default_value_t = Target::Any)]
    pub target: Target,
    /// Job labels key=value[,key=value…] (repeatable); a bare key gets an empty value.
    #[arg(short = 'l', long)]
    pub labels: Vec<String>,
    /// Nodes to run on, as a label selector: region=eu,gpu!=true, zone in (a,b), ssd, !spot, cores>4.
    #[arg(short = 's', long, visible_alias = "selector")]
    pub constraints: Option<String>,
    /// Name of the job's task.
    #[arg(long, default_value = "main")]
    pub task_name: String,
    /// Inputs (repeatable): URI[:/target] or src=URI,dst=/target,opt=key=value; URI is http(s)://,
    /// s3://bucket/key, file:///path, ipfs://CID or data:. Default target /inputs.
    #[arg(short = 'i', long = "input")]
    pub inputs: Vec<String>,
    /// Result directories name:/path (repeatable), published under `name`.
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Publisher: local, noop, s3://bucket/key[,opt=endpoint=…,opt=region=…,opt=encoding=plain].
    #[arg(short = 'p', long, default_value = "local")]
    pub publisher: String,
    /// CPU the job needs: cores (1, 0.5) or millicores (500m).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory the job needs, e.g. 512Mb, 1Gb, 2GiB.
    #[arg(long)]
    pub memory: Option<String>,
    /// Disk the job needs, e.g. 1Gb.
    #[arg(long)]
    pub disk: Option<String>,
    /// GPUs the job needs.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Network access: none (default), host, full or http (http needs --domain).
    #[arg(long, value_parser = parse_network)]
    pub network: Option<String>,
    /// A domain the job may reach with --network http (repeatable).
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// The job's total time, queueing included (Bacalhau's TotalTimeout; the execution timeout
    /// falls back to it): seconds or a duration such as 90s, 5m, 1h30m. 0 = the orchestrator's
    /// default.
    #[arg(long, value_parser = crate::job::go_secs)]
    pub timeout: Option<u64>,
    /// How long the job may wait for a node (seconds or a duration; 0 = fail at once if none fits).
    #[arg(long, value_parser = crate::job::go_secs)]
    pub queue_timeout: Option<u64>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl JobFlags {
    /// The task these flags describe, without its engine.
    pub fn task(&self) -> anyhow::Result<Task> {
        let mut task = Task {
            name: self.task_name.clone(),
            ..Default::default()
        };
        for i in &self.inputs {
            task.input_sources
                .push(parse_input(i).with_context(|| format!("-i {i}"))?);
        }
        for o in &self.outputs {
            task.result_paths
                .push(parse_result_path(o).with_context(|| format!("-o {o}"))?);
        }
        task.publisher =
            parse_publisher(&self.publisher).with_context(|| format!("-p {}", self.publisher))?;
        let r = &mut task.resources;
        r.cpu = quantity(
            "--cpu",
            &self.cpu,
            parse_cpu,
            "use cores (1, 0.5) or millicores (500m)",
        )?;
        let sizes = "use a size like 512Mb, 1Gb or 2GiB";
        r.memory = quantity("--memory", &self.memory, parse_bytes, sizes)?;
        r.disk = quantity("--disk", &self.disk, parse_bytes, sizes)?;
        r.gpu = quantity(
            "--gpu",
            &self.gpu,
            |g| {
                g.trim()
                    .parse::<u32>()
                    .map(u64::from)
                    .map_err(|_| format!("{g:?} is not a GPU count"))
            },
            "use a whole number such as 1",
        )?;
        task.network = self.network_config()?;
        let total = secs("--timeout", self.timeout)?;
        let queue = secs("--queue-timeout", self.queue_timeout)?;
        if total > 0 && queue > total {
            bail!(
                "--queue-timeout {queue} is longer than --timeout {total}: --timeout is the job's total time, queueing included; raise --timeout or lower --queue-timeout"
            );
        }
        task.timeouts.total_timeout = total;
        task.timeouts.queue_timeout = queue;
        Ok(task)
    }

    fn network_config(&self) -> anyhow::Result<NetworkConfig> {
        let kind = self.network.clone().unwrap_or_default();
        if kind == "HTTP" && self.domains.is_empty() {
            bail!(
                "--network http needs at least one --domain: the hosts the job may reach (e.g. --domain example.com)"
            );
        }
        if !self.domains.is_empty() && kind != "HTTP" {
            bail!("--domain is only for --network http; add --network http or drop --domain");
        }
        for d in &self.domains {
            if d.trim().is_empty() || d.contains("://") || d.contains('/') || d.contains(' ') {
                bail!(
                    "--domain {d:?} is not a host name; give one such as example.com or .example.com"
                );
            }
        }
        Ok(NetworkConfig {
            kind,
            domains: self.domains.clone(),
            ports: Vec::new(),
        })
    }

    /// The job around `task` (whose engine the caller has filled in).
    pub fn job(&self, task: Task) -> anyhow::Result<Job> {
        let mut job = Job {
            name: self.name.clone().unwrap_or_default(),
            namespace: self.namespace.clone().unwrap_or_default(),
            kind: match self.target {
                Target::Any => caravel_model::JobType::Batch.as_str(),
                Target::All => caravel_model::JobType::Ops.as_str(),
            }
            .into(),
            priority: self.priority,
            count: i32::try_from(self.count).context("--count is too large")?,
            tasks: vec![task],
            ..Default::default()
        };
        if let Some(c) = &self.constraints {
            job.constraints = parse_selector(c)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--constraints {c}"))?;
        }
        for l in self.labels.iter().flat_map(|l| l.split(',')) {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            if k.trim().is_empty() {
                bail!("-l {l}: the label has no key; write key=value or key");
            }
            job.labels.insert(k.trim().into(), v.trim().into());
        }
        Ok(job)
    }
}

/// `-e KEY=VALUE` flags as pairs, in order. The engine decides where they go.
pub fn env_pairs(env: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some(("", _)) => {
                bail!("-e {e}: the variable has no name; use KEY=VALUE")
            }
            Some((k, _)) if k.starts_with(caravel_model::RESERVED_ENV_PREFIX) => bail!(
                "-e {e}: names starting with {} are reserved for the variables Caravel sets",
                caravel_model::RESERVED_ENV_PREFIX
            ),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("-e {e}: use KEY=VALUE"),
        })
        .collect()
}

/// Validates `job` as `job run` would, then submits it (or prints it, with --dry-run).
pub async fn submit(c: &ApiClient, job: &Job, rt: &RuntimeArgs) -> anyhow::Result<ExitCode> {
    let value = job_to_value(job)?;
    submit_and_follow(c, value, rt).await
}

fn parse_network(s: &str) -> Result<String, String> {
    NETWORKS
        .iter()
        .find(|n| n.eq_ignore_ascii_case(s.trim()))
        .map(|n| n.to_string())
        .ok_or_else(|| format!("unknown network type {s:?}; use none, host, full or http"))
}

fn quantity(
    flag: &str,
    v: &Option<String>,
    parse: impl Fn(&str) -> Result<u64, String>,
    hint: &str,
) -> anyhow::Result<String> {
    match v {
        None => Ok(String::new()),
        Some(q) => match parse(q) {
            Ok(_) => Ok(q.trim().to_string()),
            Err(e) => bail!("{flag} {q}: {e}; {hint}"),
        },
    }
}

fn secs(flag: &str, v: Option<u64>) -> anyhow::Result<i64> {
    i64::try_from(v.unwrap_or(0)).with_context(|| format!("{flag} is too large"))
}
