//! `wasm run MODULE [ARGS…]`: a WebAssembly job from the command line. A local module file is sent
//! inline; `MODULE` may also be a URL (`http(s)://`, `s3://`) or the target of an `-i` input.

use std::process::ExitCode;

use anyhow::{Context, bail};
use caravel_model::spec::{Job, SpecConfig};
use clap::{Args, Subcommand};

use crate::ApiClient;
use crate::input::parse_input;
use crate::jobflags::{JobFlags, env_pairs, submit};

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
    /// Environment variables KEY=VALUE for the module (repeatable; the task's Env).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Exported function to call.
    #[arg(long, default_value = "_start")]
    pub entry_point: String,
    /// Input targets holding modules to link (repeatable, or a comma list as Bacalhau takes it).
    #[arg(short = 'I', long, value_delimiter = ',')]
    pub import_modules: Vec<String>,
    #[command(flatten)]
    pub job: JobFlags,
}

pub async fn run(c: &ApiClient, cmd: WasmCommand) -> anyhow::Result<ExitCode> {
    let WasmCommand::Run(a) = cmd;
    let job = build_job(&a)?;
    submit(c, &job, &a.job.runtime).await
}

pub fn build_job(a: &WasmRunArgs) -> anyhow::Result<Job> {
    let mut task = a.job.task()?;
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
    for (k, v) in env_pairs(&a.env)? {
        task.env.insert(k, v);
    }
    a.job.job(task)
}
