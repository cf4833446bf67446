//! `job run|list|describe|logs|get|stop|history|executions|validate`.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use caravel_model::api::*;
use caravel_model::execution::Execution;
use caravel_model::ids::short;
use caravel_model::parse::{Mode, parse_job};
use caravel_model::spec::Job;
use caravel_model::states::JobStateType;
use clap::{Args, Subcommand};
use futures::StreamExt;

use crate::output::{Format, OutputArgs, short_time};
use crate::{ApiClient, results};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job from a YAML or JSON file (or stdin) and follow it.
    Run(RunArgs),
    /// List jobs.
    List(ListArgs),
    /// Describe a job: state, executions, history and output.
    Describe(VersionedArgs),
    /// Print a job's logs.
    Logs(LogsArgs),
    /// Download a job's results.
    Get(GetArgs),
    /// Stop a job.
    Stop(StopArgs),
    /// A job's history events.
    History(HistoryArgs),
    /// A job's executions (of its latest version unless -v or --all-versions).
    Executions(VersionedArgs),
    /// Every version of a job.
    Versions(IdArgs),
    /// Run a version of a job again (the latest by default), as a new version.
    Rerun(RerunArgs),
    /// Check job specs without submitting them.
    Validate {
        files: Vec<String>,
        #[command(flatten)]
        template: TemplateArgs,
    },
}

/// A boolean flag's value as Go's `strconv.ParseBool` reads it (`--wait=false`, `--wait=0`, `--wait=F`).
pub fn go_bool(s: &str) -> Result<bool, String> {
    caravel_model::parse::go_parse_bool(s)
        .ok_or_else(|| format!("{s:?} is not a boolean; use true or false"))
}

/// A duration flag as Bacalhau takes it: a Go duration (`90s`, `5m`, `1h30m`) or a bare number of
/// seconds; a fraction of a second rounds up.
pub fn go_secs(s: &str) -> Result<u64, String> {
    let secs = caravel_model::spec::parse_duration_secs(s)?;
    if !secs.is_finite() || secs < 0.0 || secs > i64::MAX as f64 / 1e9 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(secs.ceil() as u64)
}

#[derive(Debug, Clone, Args, Default)]
pub struct RuntimeArgs {
    /// Wait for the job to finish (default true; --wait=false to return at once). Takes no value
    /// from the next word, as Go's boolean flags: `--wait IMAGE` waits and runs IMAGE.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_timeout_secs: u64,
    /// Print only the job id.
    #[arg(long)]
    pub id_only: bool,
    /// Stream the job's logs instead of showing progress.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print the job that would be submitted, without submitting it.
    #[arg(long)]
    pub dry_run: bool,
    /// Submit even if the spec is unchanged (a new version).
    #[arg(long)]
    pub force: bool,
    /// Leave out the follow-up commands (devstack prints its own).
    #[arg(skip)]
    pub no_hints: bool,
}

/// A spec is a template (Go's `{{ .name }}`), as Bacalhau's `job run` reads it.
#[derive(Debug, Clone, Args, Default)]
pub struct TemplateArgs {
    /// A template value key=value (repeatable, or a comma list): `{{ .key }}` in the spec.
    #[arg(short = 'V', long = "template-vars")]
    pub vars: Vec<String>,
    /// Environment variables whose names match this regex are template values too.
    #[arg(short = 'E', long = "template-envs")]
    pub envs: Option<String>,
    /// Send the spec as it is, `{{` and all.
    #[arg(long)]
    pub no_template: bool,
}

impl TemplateArgs {
    /// The spec text with its template rendered (unless --no-template).
    pub fn render(&self, text: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        if self.no_template {
            return Ok(text);
        }
        let Ok(s) = std::str::from_utf8(&text) else {
            return Ok(text);
        };
        if !s.contains("{{") && self.vars.is_empty() {
            return Ok(text);
        }
        let data =
            crate::template::template_data(&self.vars, self.envs.as_deref(), std::env::vars())?;
        Ok(crate::template::render(s, &data)
            .context("the spec is a template (Go's {{ .name }})")?
            .into_bytes())
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec file; `-` or nothing reads stdin.
    pub file: Option<String>,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, default_value_t = 10)]
    limit: u32,
    #[arg(long)]
    next_token: Option<String>,
    #[arg(long, default_value = "created_at")]
    order_by: String,
    #[arg(long)]
    order_reversed: bool,
    /// Label selector, e.g. env=prod.
    #[arg(long)]
    labels: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(long)]
    all_namespaces: bool,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Job id, unique id prefix, or name.
    pub id: String,
    #[arg(long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// Job id, unique id prefix, or name.
    pub id: String,
    #[arg(long)]
    pub namespace: Option<String>,
    /// The version to run again (default: the latest).
    #[arg(short = 'v', long = "version")]
    pub version: Option<u64>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// A job and one of its versions (`-v N`; the latest by default) or all of them.
#[derive(Debug, Args)]
pub struct VersionedArgs {
    /// Job id, unique id prefix, or name.
    pub id: String,
    #[arg(long)]
    pub namespace: Option<String>,
    /// The job version to show (default: the latest).
    #[arg(short = 'v', long = "version")]
    pub version: Option<u64>,
    /// Every version's executions and events (executions and history only).
    #[arg(long, conflicts_with = "version")]
    pub all_versions: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

impl VersionedArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = ns_query(&self.namespace);
        if let Some(v) = self.version {
            q.push(("job_version", v.to_string()));
        }
        if self.all_versions {
            q.push(("all_job_versions", "true".into()));
        }
        q
    }
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub id: String,
    #[arg(short = 'e', long)]
    pub execution_id: Option<String>,
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[arg(short = 't', long)]
    pub tail: bool,
    #[arg(long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub id: String,
    /// Where to write the results (default ./job-SHORT_ID).
    #[arg(long)]
    pub output_dir: Option<String>,
    #[arg(long, default_value_t = 300)]
    pub download_timeout_secs: u64,
    /// Most bytes one execution's results may take once unpacked (and as downloaded).
    #[arg(long, default_value = "10GiB")]
    pub max_size: String,
    /// Most unpacked bytes per compressed byte once past 16 MiB (0 turns the check off): stops a
    /// decompression bomb after a few kilobytes.
    #[arg(long, default_value_t = caravel_model::archive::DEFAULT_MAX_RATIO)]
    pub max_ratio: u64,
    /// Keep each execution's results apart under raw/N.
    #[arg(long)]
    pub raw: bool,
    #[arg(long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub id: String,
    #[arg(long)]
    pub quiet: bool,
    #[arg(long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub id: String,
    /// The job version whose events to show (default: the latest).
    #[arg(short = 'v', long = "version")]
    pub version: Option<u64>,
    /// Every version's events.
    #[arg(long, conflicts_with = "version")]
    pub all_versions: bool,
    /// all, job or execution.
    #[arg(long, default_value = "all")]
    pub event_type: String,
    #[arg(long)]
    pub execution_id: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

fn ns_query(ns: &Option<String>) -> Vec<(&'static str, String)> {
    ns.iter().map(|n| ("namespace", n.clone())).collect()
}

pub async fn run(c: &ApiClient, cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::Run(a) => {
            let (text, base) = read_spec(a.file.as_deref())?;
            let text = a.template.render(text)?;
            let value = spec_to_value(&text, &base)?;
            if a.runtime.dry_run {
                return dry_run_diff(c, value).await;
            }
            submit_and_follow(c, value, &a.runtime).await
        }
        JobCommand::Validate { files, template } => {
            if files.is_empty() {
                bail!("give one or more spec files");
            }
            let mut ok = true;
            for f in files {
                let (text, base) = read_spec(Some(&f))?;
                match template
                    .render(text)
                    .and_then(|text| spec_to_value(&text, &base))
                {
                    Ok(_) => println!("{f}: OK"),
                    Err(e) => {
                        ok = false;
                        println!("{f}: {e:#}");
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        JobCommand::List(a) => list(c, a).await,
        JobCommand::Describe(a) => describe(c, a).await,
        JobCommand::Versions(a) => {
            let r: ListJobVersionsResponse = c
                .get(
                    &format!("/api/v1/orchestrator/jobs/{}/versions", a.id),
                    &ns_query(&a.namespace),
                )
                .await?;
            if !a.out.structured(&r)? {
                let rows: Vec<Vec<String>> = r
                    .items
                    .iter()
                    .map(|j| vec![short_time(j.modify_time), j.version.to_string()])
                    .collect();
                print!("{}", a.out.table(&["created at", "job version"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Rerun(a) => {
            let started = Instant::now();
            let mut path = format!("/api/v1/orchestrator/jobs/{}/rerun", a.id);
            if let Some(ns) = &a.namespace {
                path.push_str(&format!(
                    "?namespace={}",
                    url::form_urlencoded::byte_serialize(ns.as_bytes()).collect::<String>()
                ));
            }
            let r: RerunJobResponse = c
                .put(
                    &path,
                    &RerunJobRequest {
                        job_id_or_name: a.id.clone(),
                        job_version: a.version.unwrap_or(0),
                        reason: "Rerun at user request".into(),
                    },
                )
                .await?;
            for w in &r.warnings {
                eprintln!("Warning: {w}");
            }
            if a.runtime.id_only {
                println!("{}", r.job_id);
            } else {
                eprintln!(
                    "Job {} is running again as version {}.",
                    r.job_id, r.job_version
                );
            }
            follow_submitted(c, &r.job_id, started, &a.runtime).await
        }
        JobCommand::Executions(a) => {
            let r: ListExecutionsResponse = c
                .get(
                    &format!("/api/v1/orchestrator/jobs/{}/executions", a.id),
                    &a.query(),
                )
                .await?;
            if !a.out.structured(&r)? {
                print!("{}", executions_table(&r.items, &a.out));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::History(a) => {
            let mut q = ns_query(&a.namespace);
            q.push(("event_type", a.event_type.clone()));
            if let Some(e) = &a.execution_id {
                q.push(("execution_id", e.clone()));
            }
            if let Some(v) = a.version {
                q.push(("job_version", v.to_string()));
            }
            q.push(("all_job_versions", a.all_versions.to_string()));
            let r: ListHistoryResponse = c
                .get(&format!("/api/v1/orchestrator/jobs/{}/history", a.id), &q)
                .await?;
            if !a.out.structured(&r)? {
                let rows: Vec<Vec<String>> = r
                    .items
                    .iter()
                    .map(|h| {
                        let level = if h.event.details.get("IsError").is_some_and(|v| v == "true") {
                            "Error"
                        } else {
                            "Info"
                        };
                        vec![
                            short_time(h.time),
                            level.into(),
                            h.job_version.to_string(),
                            a.out.id(&h.execution_id).to_string(),
                            h.event.topic.clone(),
                            h.event.message.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    a.out.table(
                        &["time", "level", "job version", "exec. id", "topic", "event"],
                        &rows,
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Stop(a) => {
            let job: GetJobResponse = c
                .get(
                    &format!("/api/v1/orchestrator/jobs/{}", a.id),
                    &ns_query(&a.namespace),
                )
                .await?;
            let r: StopJobResponse = c
                .delete(
                    &format!("/api/v1/orchestrator/jobs/{}", job.job.id),
                    &StopJobRequest {
                        reason: "Stopped at user request".into(),
                    },
                )
                .await?;
            if !a.quiet {
                eprintln!("Job {} stopped.", job.job.id);
            }
            if !r.evaluation_id.is_empty() && !a.quiet {
                println!("{}", r.evaluation_id);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Logs(a) => {
            let job: GetJobResponse = c
                .get(
                    &format!("/api/v1/orchestrator/jobs/{}", a.id),
                    &ns_query(&a.namespace),
                )
                .await?;
            stream_logs(c, &job.job.id, a.execution_id.as_deref(), a.follow, a.tail).await?;
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Get(a) => get(c, a).await,
    }
}

fn read_spec(file: Option<&str>) -> anyhow::Result<(Vec<u8>, std::path::PathBuf)> {
    match file {
        None | Some("-") => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .context("reading the spec from stdin")?;
            Ok((b, std::env::current_dir().unwrap_or_default()))
        }
        Some(f) => {
            let b = std::fs::read(f).with_context(|| format!("cannot read job spec {f}"))?;
            let base = std::path::Path::new(f)
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default();
            Ok((b, base))
        }
    }
}

/// Validates a spec on the client (strictly, as Bacalhau's CLI) and returns the JSON to submit.
/// Caravel extension: a `local` input whose `SourcePath` is relative names a file on the client,
/// relative to the spec file; it is sent inline (as `wasm run` sends a local module).
pub fn spec_to_value(text: &[u8], base: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    spec_to_value_reading(text, base, &|p| std::fs::read(p))
}

/// [`spec_to_value`] with the reader of client-side files given (tests stand in for build outputs).
pub fn spec_to_value_reading(
    text: &[u8],
    base: &std::path::Path,
    read: &dyn Fn(&std::path::Path) -> std::io::Result<Vec<u8>>,
) -> anyhow::Result<serde_json::Value> {
    // Inline client-side files first, so the strict parse below sees inline sources.
    let mut doc: Option<serde_json::Value> = std::str::from_utf8(text)
        .ok()
        .and_then(|t| serde_norway::from_str(t).ok());
    if let Some(v) = doc.as_mut().filter(|v| v.is_object()) {
        caravel_model::normalize::canonicalize_job(v);
        inline_relative_local_inputs(v, base, read)?;
    }
    let text = match &doc {
        Some(v) if v.is_object() => serde_json::to_vec(v)?,
        _ => text.to_vec(),
    };
    let parsed = parse_job(&text, Mode::Client).map_err(|e| anyhow!("{e}"))?;
    for w in &parsed.warnings {
        eprintln!("Warning: {w}");
    }
    let mut v = serde_json::to_value(&parsed.job)?;
    strip_server_owned(&mut v);
    Ok(v)
}

/// A job built from flags, checked and defaulted exactly as a spec file given to `job run`.
pub fn job_to_value(job: &Job) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(job)?;
    strip_server_owned(&mut v);
    let cwd = std::env::current_dir().unwrap_or_default();
    spec_to_value(&serde_json::to_vec(&v)?, &cwd)
}

fn strip_server_owned(v: &mut serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        for k in caravel_model::parse::SERVER_OWNED_KEYS {
            o.remove(*k);
        }
    }
}

fn inline_relative_local_inputs(
    v: &mut serde_json::Value,
    base: &std::path::Path,
    read: &dyn Fn(&std::path::Path) -> std::io::Result<Vec<u8>>,
) -> anyhow::Result<()> {
    let Some(tasks) = v.get_mut("Tasks").and_then(|t| t.as_array_mut()) else {
        return Ok(());
    };
    for task in tasks {
        let Some(inputs) = task.get_mut("InputSources").and_then(|i| i.as_array_mut()) else {
            continue;
        };
        for input in inputs {
            let kind = input["Source"]["Type"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if kind != "local" && kind != "localdirectory" {
                continue;
            }
            let params = &input["Source"]["Params"];
            let path = params
                .as_object()
                .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case("SourcePath")))
                .and_then(|(_, v)| v.as_str())
                .map(String::from);
            let Some(p) = path.filter(|p| !p.is_empty() && !p.starts_with('/')) else {
                continue;
            };
            let file = base.join(&p);
            let target = input["Target"].as_str().unwrap_or_default().to_string();
            let bytes = read(&file).with_context(|| {
                let mut m = format!("input {target} names the local file {} (a relative SourcePath is read on this machine and sent inline)", file.display());
                if p.contains("wasm32-wasip1") {
                    m.push_str(". Hint: this module is built by cargo for the wasm32-wasip1 target; run ./scripts/prereqs.sh (or `rustup target add wasm32-wasip1`) and build again");
                }
                m
            })?;
            input["Source"] = serde_json::to_value(
                caravel_model::parse::inline_input(&target, "application/octet-stream", &bytes)
                    .source,
            )?;
        }
    }
    Ok(())
}

/// What `--dry-run` prints: the job as YAML, ready for `caravel job run`.
pub fn dry_run_yaml(job: &serde_json::Value) -> anyhow::Result<String> {
    Ok(serde_norway::to_string(job)?)
}

pub async fn submit_and_follow(
    c: &ApiClient,
    job: serde_json::Value,
    rt: &RuntimeArgs,
) -> anyhow::Result<ExitCode> {
    if rt.dry_run {
        print!("{}", dry_run_yaml(&job)?);
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let r: PutJobResponse = c
        .put(
            "/api/v1/orchestrator/jobs",
            &PutJobRequest {
                job,
                force: rt.force,
            },
        )
        .await?;
    for w in &r.warnings {
        eprintln!("Warning: {w}");
    }
    if rt.id_only {
        println!("{}", r.job_id);
    } else {
        eprintln!("Job successfully submitted. Job ID: {}", r.job_id);
    }
    follow_submitted(c, &r.job_id, started, rt).await
}

/// `job run --dry-run`: what submitting would change in the job of the same name, from the
/// server (`PUT /jobs/diff`); the spec as YAML when no server answers.
async fn dry_run_diff(c: &ApiClient, job: serde_json::Value) -> anyhow::Result<ExitCode> {
    let yaml = dry_run_yaml(&job)?;
    match c
        .put::<_, DiffJobResponse>(
            "/api/v1/orchestrator/jobs/diff",
            &PutJobRequest { job, force: false },
        )
        .await
    {
        Ok(r) => {
            for w in &r.warnings {
                eprintln!("Warning: {w}");
            }
            if r.diff.is_empty() {
                eprintln!("No changes: the job of this name already has this spec.");
            } else {
                print!("{}", r.diff);
            }
        }
        Err(e) => {
            eprintln!(
                "Warning: cannot compare with the submitted version ({e:#}); the spec as it would be submitted:"
            );
            print!("{yaml}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// After a submission: waits for the job (or streams its logs) as the runtime flags say.
async fn follow_submitted(
    c: &ApiClient,
    job_id: &str,
    started: Instant,
    rt: &RuntimeArgs,
) -> anyhow::Result<ExitCode> {
    if !rt.wait && !rt.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = started + Duration::from_secs(rt.wait_timeout_secs.max(1));
    if rt.follow {
        // Wait for an execution to exist, then stream its logs live.
        loop {
            let j: GetJobResponse = c
                .get(
                    &format!("/api/v1/orchestrator/jobs/{}", job_id),
                    &[("include", "executions".into())],
                )
                .await?;
            if j.executions.as_ref().is_some_and(|e| !e.items.is_empty())
                || j.job.state.state_type.is_terminal()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for job {} to start", job_id);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stream_logs(c, job_id, None, true, false).await?;
    }
    let job = wait_for(c, job_id, deadline, !rt.id_only && !rt.follow).await?;
    let ok = job.state.state_type == JobStateType::Completed;
    if !rt.id_only {
        match job.state.state_type {
            JobStateType::Completed => eprintln!(
                "\nJob {} completed in {:.1}s.",
                job_id,
                started.elapsed().as_secs_f64()
            ),
            s => eprintln!("\nJob {} is {s}: {}", job_id, job.state.message),
        }
    }
    if !rt.id_only && !rt.no_hints {
        eprintln!(
            "\nTo get more details about the run, execute:\n\tcaravel job describe {}",
            job_id
        );
        eprintln!(
            "\nTo get more details about the run executions, execute:\n\tcaravel job executions {}",
            job_id
        );
        if ok {
            eprintln!(
                "\nTo download the results, execute:\n\tcaravel job get {}",
                job_id
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Polls until the job is terminal, showing progress (a spinner on a TTY, plain lines otherwise).
pub async fn wait_for(
    c: &ApiClient,
    id: &str,
    deadline: Instant,
    show: bool,
) -> anyhow::Result<Job> {
    let tty = std::io::stderr().is_terminal();
    let spinner = (show && tty).then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    if show && !tty {
        eprintln!("Checking job status... (Ctrl+C stops waiting; the job keeps running)");
    }
    let started = Instant::now();
    let mut last = None;
    let mut delay = Duration::from_millis(100);
    loop {
        let j: GetJobResponse = c
            .get(&format!("/api/v1/orchestrator/jobs/{id}"), &[])
            .await?;
        let st = j.job.state.state_type;
        if last != Some(st) {
            if let Some(s) = &spinner {
                s.set_message(format!(
                    "Job {} … {:.1}s",
                    st,
                    started.elapsed().as_secs_f64()
                ));
            } else if show {
                eprintln!(
                    "\t{:>10}  {:.1}s",
                    st.as_str(),
                    started.elapsed().as_secs_f64()
                );
            }
            last = Some(st);
        } else if let Some(s) = &spinner {
            s.set_message(format!(
                "Job {} … {:.1}s",
                st,
                started.elapsed().as_secs_f64()
            ));
        }
        if st.is_terminal() {
            if let Some(s) = spinner {
                s.finish_with_message(format!(
                    "Job {} after {:.1}s",
                    st,
                    started.elapsed().as_secs_f64()
                ));
            }
            return Ok(j.job);
        }
        if Instant::now() > deadline {
            if let Some(s) = spinner {
                s.abandon();
            }
            bail!(
                "job {id} is still {st} after waiting; it keeps running. Follow it with `caravel job describe {id}`"
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay + Duration::from_millis(50)).min(Duration::from_millis(500));
    }
}

async fn list(c: &ApiClient, a: ListArgs) -> anyhow::Result<ExitCode> {
    let mut q = vec![
        ("limit", a.limit.to_string()),
        ("order_by", a.order_by.clone()),
    ];
    if a.order_reversed {
        q.push(("reverse", "true".into()));
    }
    if let Some(t) = &a.next_token {
        q.push(("next_token", t.clone()));
    }
    if let Some(l) = &a.labels {
        q.push(("labels", l.clone()));
    }
    if a.all_namespaces {
        q.push(("namespace", "*".into()));
    } else if let Some(n) = &a.namespace {
        q.push(("namespace", n.clone()));
    }
    let r: ListJobsResponse = c.get("/api/v1/orchestrator/jobs", &q).await?;
    if !a.out.structured(&r)? {
        let rows: Vec<Vec<String>> = r
            .items
            .iter()
            .map(|j| {
                vec![
                    short_time(j.create_time),
                    a.out.id(&j.id).into(),
                    j.name.clone(),
                    j.engine(),
                    j.kind.clone(),
                    j.state.state_type.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            a.out
                .table(&["created", "id", "name", "job", "type", "state"], &rows)
        );
        if !r.next_token.is_empty() {
            eprintln!(
                "\nMore jobs: caravel job list --next-token {}",
                r.next_token
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn executions_table(execs: &[Execution], out: &OutputArgs) -> String {
    let rows: Vec<Vec<String>> = execs
        .iter()
        .map(|e| {
            vec![
                short_time(e.create_time),
                short_time(e.modify_time),
                out.id(&e.id).into(),
                e.job_version.to_string(),
                out.id(&e.node_id).into(),
                e.revision.to_string(),
                e.compute_state.state_type.to_string(),
                e.desired_state.state_type.to_string(),
            ]
        })
        .collect();
    out.table(
        &[
            "created",
            "modified",
            "id",
            "job version",
            "node id",
            "rev.",
            "state",
            "desired",
        ],
        &rows,
    )
}

async fn describe(c: &ApiClient, a: VersionedArgs) -> anyhow::Result<ExitCode> {
    let mut q = a.query();
    q.push(("include", "executions,history".into()));
    let r: GetJobResponse = c
        .get(&format!("/api/v1/orchestrator/jobs/{}", a.id), &q)
        .await?;
    if matches!(a.out.output, Format::Json | Format::Yaml) {
        a.out.structured(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    // The sections are tables for people, whatever else was asked.
    let sections = OutputArgs {
        wide: a.out.wide,
        ..Default::default()
    };
    let j = &r.job;
    let mut out = String::new();
    let kv = [
        ("ID", j.id.clone()),
        ("Name", j.name.clone()),
        ("Namespace", j.namespace.clone()),
        ("Type", j.kind.clone()),
        ("State", j.state.state_type.to_string()),
        ("Message", j.state.message.clone()),
        ("Count", j.count.to_string()),
        ("Created Time", caravel_model::time::rfc3339(j.create_time)),
        ("Modified Time", caravel_model::time::rfc3339(j.modify_time)),
        ("Version", j.version.to_string()),
    ];
    for (k, v) in kv {
        if !v.is_empty() {
            out.push_str(&format!("{k:<14} = {v}\n"));
        }
    }
    let execs = r.executions.map(|p| p.items).unwrap_or_default();
    out.push_str("\nExecutions\n");
    out.push_str(&executions_table(&execs, &sections));
    if let Some(h) = r.history {
        out.push_str("\nHistory\n");
        let rows: Vec<Vec<String>> = h
            .items
            .iter()
            .map(|h| {
                vec![
                    short_time(h.time),
                    sections.id(&h.execution_id).into(),
                    h.event.topic.clone(),
                    h.event.message.clone(),
                ]
            })
            .collect();
        out.push_str(&sections.table(&["time", "exec. id", "topic", "event"], &rows));
    }
    for e in &execs {
        if let Some(o) = &e.run_output {
            out.push_str(&format!("\nStandard Output ({})\n", short(&e.id)));
            out.push_str(&o.stdout);
            if o.stdout_truncated {
                out.push_str(
                    "\n[output truncated: `caravel job logs` or `caravel job get` for all of it]\n",
                );
            }
            if !o.stderr.is_empty() {
                out.push_str(&format!(
                    "\nStandard Error ({})\n{}",
                    short(&e.id),
                    o.stderr
                ));
            }
            if !o.error_msg.is_empty() {
                out.push_str(&format!("\nError: {}\n", o.error_msg));
            }
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Streams logs over the API's WebSocket: stdout lines to stdout, stderr lines to stderr.
pub async fn stream_logs(
    c: &ApiClient,
    job_id: &str,
    exec: Option<&str>,
    follow: bool,
    tail: bool,
) -> anyhow::Result<()> {
    let mut url = url::Url::parse(&c.ws_url(&format!("/api/v1/orchestrator/jobs/{job_id}/logs")))?;
    url.query_pairs_mut()
        .append_pair("follow", &follow.to_string())
        .append_pair("tail", &tail.to_string());
    if let Some(e) = exec {
        url.query_pairs_mut().append_pair("execution_id", e);
    }
    let mut ws = c
        .websocket(url.as_str())
        .await
        .with_context(|| format!("cannot open the logs stream at {url}"))?;
    use std::io::Write;
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| anyhow!("logs stream broke: {e}"))?;
        let text = match msg {
            tokio_tungstenite::tungstenite::Message::Text(t) => t.to_string(),
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => continue,
        };
        let frame: LogFrame =
            serde_json::from_str(&text).context("unexpected frame on the logs stream")?;
        if !frame.error.is_empty() {
            bail!("{}", frame.error);
        }
        if let Some(v) = frame.value {
            if v.stream == 2 {
                let _ = writeln!(std::io::stderr(), "{}", v.line);
            } else {
                let _ = writeln!(std::io::stdout(), "{}", v.line);
            }
        }
    }
    Ok(())
}

async fn get(c: &ApiClient, a: GetArgs) -> anyhow::Result<ExitCode> {
    let job: GetJobResponse = c
        .get(
            &format!("/api/v1/orchestrator/jobs/{}", a.id),
            &ns_query(&a.namespace),
        )
        .await?;
    let id = job.job.id.clone();
    let r: ListResultsResponse = c
        .get(
            &format!("/api/v1/orchestrator/jobs/{id}/results"),
            &ns_query(&a.namespace),
        )
        .await?;
    if r.items.is_empty() {
        bail!(
            "job {id} has no published results (state {}); results exist once an execution completes with a publisher",
            job.job.state.state_type
        );
    }
    let dir = std::path::PathBuf::from(
        a.output_dir
            .clone()
            .unwrap_or_else(|| format!("job-{}", short(&id))),
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let timeout = Duration::from_secs(a.download_timeout_secs);
    let limits = caravel_model::archive::Limits {
        max_bytes: caravel_model::quantity::parse_bytes(&a.max_size)
            .map_err(|e| anyhow!("--max-size: {e} (try 10GiB)"))?,
        max_ratio: a.max_ratio,
    };
    for (i, item) in r.items.iter().enumerate() {
        let target = if a.raw {
            dir.join("raw").join(format!("{i}"))
        } else {
            dir.clone()
        };
        std::fs::create_dir_all(&target)?;
        match item.kind.to_ascii_lowercase().as_str() {
            "urldownload" | "s3presigned" => {
                use caravel_model::sources::Source;
                let url = match Source::try_from(item) {
                    Ok(Source::UrlDownload { url } | Source::S3PreSigned { url, .. }) => url,
                    Ok(_) => unreachable!("the source type was matched above"),
                    Err(errors) => bail!(
                        "the orchestrator answered with a {} result this client cannot read: {}",
                        item.kind,
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                };
                results::fetch_archive(c, &url, &target, timeout, limits).await?;
            }
            "s3" => {
                results::S3Result::from_spec(item)?
                    .download(&target, timeout, limits)
                    .await?
            }
            other => bail!("results of type {other} cannot be downloaded by this client yet"),
        }
    }
    println!("{}", dir.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn job(words: &[&str]) -> JobCommand {
        let argv = ["caravel", "job"].iter().chain(words);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Job(c) => c,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn versioned(words: &[&str]) -> VersionedArgs {
        match job(words) {
            JobCommand::Describe(a) | JobCommand::Executions(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn describe_executions_and_history_ask_for_a_version_as_bacalhau_does() {
        for cmd in ["describe", "executions"] {
            let q = versioned(&[cmd, "j-1", "-v", "2"]).query();
            assert!(q.contains(&("job_version", "2".into())), "{cmd}: {q:?}");
            let q = versioned(&[cmd, "j-1", "--version", "3"]).query();
            assert!(q.contains(&("job_version", "3".into())), "{cmd}: {q:?}");
            let q = versioned(&[cmd, "j-1"]).query();
            assert!(
                q.iter().all(|(k, _)| *k != "job_version"),
                "{cmd}: the latest"
            );
        }
        let q = versioned(&["executions", "j-1", "--all-versions"]).query();
        assert!(q.contains(&("all_job_versions", "true".into())));
        match job(&["history", "j-1", "-v", "2"]) {
            JobCommand::History(a) => assert_eq!((a.version, a.all_versions), (Some(2), false)),
            other => panic!("parsed as {other:?}"),
        }
    }
}
