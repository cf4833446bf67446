//! `wasm run MODULE [ARGS…]`: a WebAssembly job from the command line. A local module file is sent
//! inline; `MODULE` may also be a URL (`http(s)://`, `s3://`) or the target of an `-i` input.

use std::process::ExitCode;

use anyhow::{Context, bail};
use caravel_model::spec::{Job, SpecConfig, Task};
use clap::{Args, Subcommand};

use crate::ApiClient;
use crate::input::{parse_input, parse_publisher, parse_result_path};
use crate::job::{RuntimeArgs, submit_and_follow};

#[derive(Debug, Subcommand)]
pub enum WasmCommand {
    /// Run a WebAssembly (WASI preview 1) module.
    Run(WasmRunArgs),
}

#[derive(Debug, Args)]
pub struct WasmRunArgs {
    /// The module: a local .wasm file, a URL, or an input target path. `path:target` sets its target.
    pub module: String,
    /// Arguments passed to the module (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub count: i32,
    /// Labels key=value,…
    #[arg(short = 'l', long)]
    pub labels: Vec<String>,
    /// Environment variables KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Inputs (Bacalhau's grammar, e.g. https://host/file.txt:/inputs/file.txt).
    #[arg(short = 'i', long = "input")]
    pub inputs: Vec<String>,
    /// Result paths name:/path.
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Publisher: local, noop or s3://bucket/key.
    #[arg(short = 'p', long, default_value = "local")]
    pub publisher: String,
    /// Exported function to call.
    #[arg(long, default_value = "_start")]
    pub entry_point: String,
    /// Input targets holding modules to link.
    #[arg(short = 'I', long)]
    pub import_modules: Vec<String>,
    #[arg(long)]
    pub cpu: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    /// Execution timeout in seconds.
    #[arg(long)]
    pub timeout: Option<i64>,
    /// Seconds the job may wait for a node (0 = fail at once).
    #[arg(long)]
    pub queue_timeout: Option<i64>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub async fn run(c: &ApiClient, cmd: WasmCommand) -> anyhow::Result<ExitCode> {
    let WasmCommand::Run(a) = cmd;
    let job = build_job(&a)?;
    let mut value = serde_json::to_value(&job)?;
    if let Some(o) = value.as_object_mut() {
        for k in caravel_model::parse::SERVER_OWNED_KEYS {
            o.remove(*k);
        }
    }
    let text = serde_json::to_vec(&value)?;
    caravel_model::parse::parse_job(&text, caravel_model::parse::Mode::Server)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    submit_and_follow(c, value, &a.runtime).await
}

pub fn build_job(a: &WasmRunArgs) -> anyhow::Result<Job> {
    let mut task = Task {
        name: "main".into(),
        ..Default::default()
    };
    for i in &a.inputs {
        task.input_sources
            .push(parse_input(i).with_context(|| format!("-i {i}"))?);
    }
    let (module, target_override) = match a.module.rsplit_once(':') {
        Some((m, t))
            if t.starts_with('/')
                && !m.ends_with("http")
                && !m.ends_with("https")
                && !m.ends_with("s3") =>
        {
            (m.to_string(), Some(t.to_string()))
        }
        _ => (a.module.clone(), None),
    };
    let entry_target = if std::path::Path::new(&module).is_file() {
        let bytes =
            std::fs::read(&module).with_context(|| format!("cannot read module {module}"))?;
        let file = std::path::Path::new(&module)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("main.wasm")
            .to_string();
        let target = target_override.unwrap_or_else(|| format!("/{file}"));
        task.input_sources.push(caravel_model::parse::inline_input(
            &target,
            "application/wasm",
            &bytes,
        ));
        target
    } else if module.contains("://") {
        let mut input = parse_input(&module)?;
        input.target = target_override.unwrap_or_else(|| "/main.wasm".into());
        let t = input.target.clone();
        task.input_sources.push(input);
        t
    } else if module.starts_with('/') && task.input_sources.iter().any(|i| i.target == module) {
        module.clone()
    } else {
        bail!("module {module:?} is neither a local file, a URL, nor the target of an -i input");
    };
    let mut engine = SpecConfig::new("wasm")
        .with("EntryModule", entry_target)
        .with("Entrypoint", a.entry_point.clone())
        .with("Parameters", a.args.clone());
    if !a.import_modules.is_empty() {
        engine = engine.with("ImportModules", a.import_modules.clone());
    }
    task.engine = engine;
    task.publisher = parse_publisher(&a.publisher)?;
    for o in &a.outputs {
        task.result_paths.push(parse_result_path(o)?);
    }
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .with_context(|| format!("-e {e}: use KEY=VALUE"))?;
        task.env.insert(k.into(), v.into());
    }
    task.resources.cpu = a.cpu.clone().unwrap_or_default();
    task.resources.memory = a.memory.clone().unwrap_or_default();
    task.timeouts.execution_timeout = a.timeout.unwrap_or(0);
    task.timeouts.queue_timeout = a.queue_timeout.unwrap_or(0);
    let mut job = Job {
        name: a.name.clone().unwrap_or_default(),
        namespace: a.namespace.clone().unwrap_or_default(),
        kind: "batch".into(),
        count: a.count,
        tasks: vec![task],
        ..Default::default()
    };
    for l in a.labels.iter().flat_map(|l| l.split(',')) {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("label {l}: use key=value"))?;
        job.labels.insert(k.trim().into(), v.trim().into());
    }
    Ok(job)
}
